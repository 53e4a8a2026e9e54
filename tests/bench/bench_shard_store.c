/* Shard store put/get throughput with real fsyncs: prints figures, asserts nothing. */
#include <ftw.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/alloc.h"
#include "common/err.h"
#include "node/shard_store.h"

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)flag;
    (void)ftw;
    return remove(path);
}

static void usage(void)
{
    fprintf(stderr, "Usage: bench_shard_store [BATCHES [SHARDS_PER_BATCH [SHARD_KIB [WRITERS]]]]\n"
                    "Puts BATCHES batches (default 64) of SHARDS_PER_BATCH shards (32) of\n"
                    "SHARD_KIB KiB (256) into a store under /tmp, then reads them all back.\n"
                    "WRITERS threads (default 1, at most 16) share the batches: with two or more,\n"
                    "one put appends while another syncs (the store's put pipeline).\n");
}

/* One writer thread: puts batches first, first + step, ... below batches. */
struct writer {
    pthread_t th;          /* the thread */
    struct shard_store *s; /* the store */
    size_t first;          /* its first batch number */
    size_t step;           /* writers in all */
    size_t batches;        /* batches in all */
    size_t per;            /* shards per batch */
    size_t len;            /* bytes per shard */
    int rc;                /* 0 or the first failure */
    struct err e;          /* its message */
};

static void *writer_main(void *arg)
{
    struct writer *w = arg;
    struct shard_put *p = calloc(w->per, sizeof *p);
    int *res = calloc(w->per, sizeof *res);
    uint8_t *data = malloc(w->per * w->len);
    if (p == NULL || res == NULL || data == NULL) {
        w->rc = HBC_ENOMEM;
        snprintf(w->e.msg, sizeof w->e.msg, "out of memory");
    }
    for (size_t i = 0; w->rc == 0 && i < w->per * w->len; i++) {
        data[i] = (uint8_t)(i * 2654435761u >> 13);
    }
    for (size_t b = w->first; b < w->batches && w->rc == 0; b += w->step) {
        for (size_t i = 0; i < w->per; i++) {
            memset(&p[i].key, 0, sizeof p[i].key);
            memcpy(p[i].key.chunk_id, &b, sizeof b);
            memcpy(p[i].key.chunk_id + 8, &i, sizeof i);
            /* Different bytes per shard so that no two records are equal. */
            memcpy(data + i * w->len, &b, sizeof b);
            p[i].data = data + i * w->len;
            p[i].len = w->len;
        }
        w->rc = shard_store_put_batch(w->s, p, w->per, res, &w->e);
    }
    free(p);
    free(res);
    free(data);
    return NULL;
}

int main(int argc, char **argv)
{
    if (argc > 5 || (argc > 1 && argv[1][0] == '-')) {
        usage();
        return 2;
    }
    size_t batches = argc > 1 ? strtoul(argv[1], NULL, 10) : 64;
    size_t per = argc > 2 ? strtoul(argv[2], NULL, 10) : 32;
    size_t kib = argc > 3 ? strtoul(argv[3], NULL, 10) : 256;
    size_t nw = argc > 4 ? strtoul(argv[4], NULL, 10) : 1;
    if (batches == 0 || per == 0 || per > SHARD_STORE_MAX_BATCH || kib == 0 || kib > 8192 ||
        nw == 0 || nw > 16) {
        usage();
        return 2;
    }
    size_t len = kib * 1024;
    char dir[] = "/tmp/hbc-bench-store-XXXXXX";
    if (mkdtemp(dir) == NULL) {
        perror("mkdtemp");
        return 1;
    }
    char path[64];
    snprintf(path, sizeof path, "%s/store", dir);
    struct err e = {0};
    struct shard_store *s = NULL;
    int rc = shard_store_open(path, NULL, &s, &e);
    if (rc != 0) {
        fprintf(stderr, "setup: %s\n", e.msg);
        return 1;
    }
    struct shard_store_stats st0;
    shard_store_stats(s, &st0);
    struct writer w[16];
    double t0 = now_s();
    for (size_t k = 0; k < nw; k++) {
        w[k] = (struct writer){
            .s = s, .first = k, .step = nw, .batches = batches, .per = per, .len = len};
        if (pthread_create(&w[k].th, NULL, writer_main, &w[k]) != 0) {
            fprintf(stderr, "setup: cannot start a writer thread\n");
            return 1;
        }
    }
    for (size_t k = 0; k < nw; k++) {
        pthread_join(w[k].th, NULL);
        if (w[k].rc != 0 && rc == 0) {
            rc = w[k].rc;
            e = w[k].e;
        }
    }
    double t1 = now_s();
    if (rc != 0) {
        fprintf(stderr, "put: %s\n", e.msg);
        return 1;
    }
    struct shard_store_stats st;
    shard_store_stats(s, &st);
    double mb = (double)(batches * per * len) / 1e6;
    printf("put: %zu batches x %zu shards x %zu KiB, %zu writer%s: %.1f MB in %.3f s = %.1f MB/s, "
           "%.0f shards/s, %.2f ms per batch\n",
           batches, per, kib, nw, nw > 1 ? "s" : "", mb, t1 - t0, mb / (t1 - t0),
           (double)(batches * per) / (t1 - t0), (t1 - t0) * 1e3 / (double)batches);
    printf("per batch: %.2f fdatasync, %.2f directory fsync, %.2f synced index writes "
           "(segments: %" PRIu64 ")\n",
           (double)(st.fdatasyncs - st0.fdatasyncs) / (double)batches,
           (double)(st.dir_fsyncs - st0.dir_fsyncs) / (double)batches,
           (double)(st.index_syncs - st0.index_syncs) / (double)batches, st.segment_count);
    printf("pipelined: %" PRIu64 " of %zu batches appended while another synced\n",
           st.pipelined_puts - st0.pipelined_puts, batches);

    uint8_t *buf = malloc(len);
    double t2 = now_s();
    for (size_t b = 0; b < batches && rc == 0 && buf != NULL; b++) {
        for (size_t i = 0; i < per && rc == 0; i++) {
            struct shard_key k;
            memset(&k, 0, sizeof k);
            memcpy(k.chunk_id, &b, sizeof b);
            memcpy(k.chunk_id + 8, &i, sizeof i);
            size_t got = 0;
            rc = shard_store_get(s, &k, buf, len, &got, &e);
        }
    }
    double t3 = now_s();
    if (rc != 0 || buf == NULL) {
        fprintf(stderr, "get: %s\n", buf == NULL ? "out of memory" : e.msg);
        return 1;
    }
    printf("get (page cache, SHA-256 checked): %.1f MB/s, %.0f shards/s\n", mb / (t3 - t2),
           (double)(batches * per) / (t3 - t2));
    free(buf);
    rc = shard_store_close(s, &e);
    nftw(dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
    return rc != 0;
}
