/* Placeholder: the crypto unit tests replace this file. */
int main(void)
{
    return 0;
}
