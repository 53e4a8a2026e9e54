/* hbc policy check: the 3-2-1-1-0 digits of a vault's policy on the cluster's topology. */
#include "client/cli.h"

int cli_policy(struct cli *c, int argc, char **argv)
{
    (void)c;
    (void)argc;
    (void)argv;
    return CLI_USAGE;
}
