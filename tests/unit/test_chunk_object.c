/* Placeholder: the chunk_object unit tests replace this file. */
int main(void)
{
    return 0;
}
