/* Placeholder: the shard_store unit tests replace this file. */
int main(void)
{
    return 0;
}
