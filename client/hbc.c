/* hbc: the HBC command-line client. */
#include <stdio.h>
#include <string.h>

#include <hbc/hbc.h>

static void usage(FILE *f)
{
    fprintf(f, "Usage: hbc [--json] COMMAND [ARGS]\n"
               "       hbc --help | --version\n");
}

int main(int argc, char **argv)
{
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            usage(stdout);
            return 0;
        }
        if (strcmp(argv[i], "--version") == 0) {
            printf("hbc %s\n", hbc_version());
            return 0;
        }
    }
    usage(stderr);
    return 2;
}
