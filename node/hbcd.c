/* hbcd: the HBC storage node. */
#include <stdio.h>
#include <string.h>

#include <hbc/hbc.h>

static void usage(FILE *f)
{
    fprintf(f, "Usage: hbcd --config FILE\n"
               "       hbcd --help | --version\n"
               "\n"
               "Runs one HBC storage node. See docs/operations.md for the configuration keys.\n");
}

int main(int argc, char **argv)
{
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            usage(stdout);
            return 0;
        }
        if (strcmp(argv[i], "--version") == 0) {
            printf("hbcd %s\n", hbc_version());
            return 0;
        }
    }
    usage(stderr);
    return 2;
}
