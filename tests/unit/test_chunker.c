/* Placeholder: the chunker unit tests replace this file. */
int main(void)
{
    return 0;
}
