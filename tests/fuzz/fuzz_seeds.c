/* Writes the seed corpora of the binary formats with the real encoders, so seeds follow the
 * formats. */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "common/alloc.h"
#include "common/erasure.h"

/*
 * Usage: fuzz_seeds OUTDIR. Creates OUTDIR/NAME/ for each target that takes
 * binary input and writes a few small, valid inputs there. Text inputs (the
 * node configuration) are committed under tests/fuzz/corpus/ instead.
 */

static const char *outdir;

static void die(const char *what, const struct err *e)
{
    fprintf(stderr, "fuzz_seeds: %s: %s\n", what, e != NULL ? e->msg : strerror(errno));
    exit(1);
}

static void make_dir(const char *name)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", outdir, name);
    if (mkdir(outdir, 0755) != 0 && errno != EEXIST) {
        die(outdir, NULL);
    }
    if (mkdir(path, 0755) != 0 && errno != EEXIST) {
        die(path, NULL);
    }
}

static void write_seed(const char *target, const char *name, const uint8_t *data, size_t len)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/%s/%s", outdir, target, name);
    FILE *f = fopen(path, "wb");
    if (f == NULL || fwrite(data, 1, len, f) != len || fclose(f) != 0) {
        die(path, NULL);
    }
}

/* The shards of one small stripe of RS(k,m) over an object of n bytes. */
static void stripe(unsigned k, unsigned m, size_t n, uint8_t **blobs, size_t *lengths)
{
    uint8_t vault[ERASURE_VAULT_ID_LEN], chunk[ERASURE_CHUNK_ID_LEN], *object = hbc_malloc(n);
    struct err e;
    memset(vault, 0x11, sizeof vault);
    memset(chunk, 0x22, sizeof chunk);
    for (size_t i = 0; i < n; i++) {
        object[i] = (uint8_t)(i * 7 + 3);
    }
    if (erasure_shards_encode(vault, chunk, k, m, object, n, blobs, lengths, &e) != 0) {
        die("erasure_shards_encode", &e);
    }
    hbc_free(object);
}

static void erasure_seeds(void)
{
    static const unsigned schemes[][3] = {{1, 0, 1}, {2, 1, 5}, {4, 2, 100}, {8, 3, 301}};
    make_dir("shard_decode");
    make_dir("shards_rebuild");
    for (size_t s = 0; s < sizeof schemes / sizeof schemes[0]; s++) {
        unsigned k = schemes[s][0], m = schemes[s][1];
        uint8_t *blobs[ERASURE_MAX_SHARDS];
        size_t lengths[ERASURE_MAX_SHARDS];
        stripe(k, m, schemes[s][2], blobs, lengths);
        char name[64];
        /* One data and one parity shard for the single-shard decoder. */
        snprintf(name, sizeof name, "rs%u-%u-first", k, m);
        write_seed("shard_decode", name, blobs[0], lengths[0]);
        snprintf(name, sizeof name, "rs%u-%u-last", k, m);
        write_seed("shard_decode", name, blobs[k + m - 1], lengths[k + m - 1]);

        /* Whole stripes, and stripes missing their first m shards, for the rebuilder. */
        for (int missing = 0; missing < 2; missing++) {
            uint8_t buf[65536];
            size_t pos = 0;
            buf[pos++] = missing ? 3 : 1; /* fix checksums; second also passes the ids */
            for (unsigned i = missing ? m : 0; i < k + m; i++) {
                buf[pos++] = (uint8_t)(lengths[i] >> 8);
                buf[pos++] = (uint8_t)lengths[i];
                memcpy(buf + pos, blobs[i], lengths[i]);
                pos += lengths[i];
            }
            snprintf(name, sizeof name, "rs%u-%u-%s", k, m, missing ? "degraded" : "whole");
            write_seed("shards_rebuild", name, buf, pos);
        }
        for (unsigned i = 0; i < k + m; i++) {
            hbc_free(blobs[i]);
        }
    }
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: fuzz_seeds OUTDIR\n");
        return 2;
    }
    outdir = argv[1];
    erasure_seeds();
    return 0;
}
