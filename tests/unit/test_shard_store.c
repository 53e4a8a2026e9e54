/* Unit tests for the shard store: durability, recovery, checksums, compaction. */
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <poll.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <linux/magic.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/statfs.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "common/alloc.h"
#include "common/err.h"
#include "common/log.h"
#include "node/shard_store.h"
#include "node/shard_store_internal.h"

#define KiB 1024u
#define MiB (1024u * 1024u)

/* ---- helpers ------------------------------------------------------------ */

#define assert_ok(expr, e)                                                                         \
    do {                                                                                           \
        int rc_ = (expr);                                                                          \
        if (rc_ != 0) {                                                                            \
            print_error("%s = %d (%s): %s\n", #expr, rc_, hbc_errname(rc_), (e)->msg);             \
        }                                                                                          \
        assert_int_equal(rc_, 0);                                                                  \
    } while (0)

static uint64_t splitmix(uint64_t *x)
{
    uint64_t z = (*x += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* Deterministic content for a record, so that any reader can check it. */
static void fill(uint8_t *p, size_t len, uint64_t seed)
{
    uint64_t x = seed * 0x2545f4914f6cdd1dull + 1;
    size_t i = 0;
    for (; i + 8 <= len; i += 8) {
        uint64_t v = splitmix(&x);
        memcpy(p + i, &v, 8);
    }
    uint64_t v = splitmix(&x);
    memcpy(p + i, &v, len - i);
}

static struct shard_key make_key(uint8_t vault, uint64_t n, uint32_t index)
{
    struct shard_key k;
    memset(k.vault_id, vault, sizeof k.vault_id);
    uint64_t x = n;
    for (size_t i = 0; i < sizeof k.chunk_id; i += 8) {
        uint64_t v = splitmix(&x);
        memcpy(k.chunk_id + i, &v, 8);
    }
    k.index = index;
    return k;
}

/* One test record: its key, length and content seed. */
struct rec {
    struct shard_key key; /* the key */
    size_t len;           /* data bytes */
    uint64_t seed;        /* content seed for fill() */
};

static uint8_t *rec_data(const struct rec *r)
{
    uint8_t *p = malloc(r->len > 0 ? r->len : 1);
    assert_non_null(p);
    fill(p, r->len, r->seed);
    return p;
}

/* Put recs[0..n) in one batch; every result must be 0. */
static void put_recs(struct shard_store *s, const struct rec *recs, size_t n)
{
    struct shard_put *p = calloc(n, sizeof *p);
    int *res = calloc(n, sizeof *res);
    assert_non_null(p);
    assert_non_null(res);
    for (size_t i = 0; i < n; i++) {
        p[i].key = recs[i].key;
        p[i].len = recs[i].len;
        p[i].data = rec_data(&recs[i]);
    }
    struct err e = {0};
    assert_ok(shard_store_put_batch(s, p, n, res, &e), &e);
    for (size_t i = 0; i < n; i++) {
        assert_int_equal(res[i], 0);
        free((void *)p[i].data);
    }
    free(p);
    free(res);
}

/* The record is stored and byte-exact (read both ways). */
static void check_rec(struct shard_store *s, const struct rec *r)
{
    struct err e = {0};
    uint8_t *want = rec_data(r);
    uint8_t *got = NULL;
    size_t len = 0;
    assert_ok(shard_store_get_alloc(s, &r->key, &got, &len, &e), &e);
    assert_int_equal(len, r->len);
    assert_memory_equal(got, want, r->len);
    hbc_free(got);
    /* Size query, then into the caller's buffer. */
    assert_int_equal(shard_store_get(s, &r->key, NULL, 0, &len, &e), HBC_ETOOBIG);
    assert_int_equal(len, r->len);
    uint8_t *buf = malloc(len + 1);
    assert_non_null(buf);
    assert_ok(shard_store_get(s, &r->key, buf, len + 1, &len, &e), &e);
    assert_int_equal(len, r->len);
    assert_memory_equal(buf, want, r->len);
    free(buf);
    free(want);
}

static void check_gone(struct shard_store *s, const struct rec *r)
{
    struct err e = {0};
    uint8_t *got = (uint8_t *)&e;
    size_t len = 0;
    assert_int_equal(shard_store_get_alloc(s, &r->key, &got, &len, &e), HBC_ENOTFOUND);
    assert_null(got);
}

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)flag;
    (void)ftw;
    return remove(path);
}

/* Each test gets a fresh directory under /tmp as its state, removed even when it fails. */
static int setup_tmpdir(void **state)
{
    char tmpl[] = "/tmp/hbc-store-XXXXXX";
    if (mkdtemp(tmpl) == NULL) {
        return -1;
    }
    *state = strdup(tmpl);
    return *state != NULL ? 0 : -1;
}

static int teardown_tmpdir(void **state)
{
    int rc = nftw(*state, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
    free(*state);
    return rc;
}

/* The store lives in dir/store so that tests can also see a missing directory created. */
static struct shard_store *open_store(const char *dir, const struct shard_store_options *o)
{
    char path[256];
    snprintf(path, sizeof path, "%s/store", dir);
    struct shard_store *s = NULL;
    struct err e = {0};
    assert_ok(shard_store_open(path, o, &s, &e), &e);
    return s;
}

static void close_store(struct shard_store *s)
{
    struct err e = {0};
    assert_ok(shard_store_close(s, &e), &e);
}

static void segment_path(const char *dir, uint64_t number, char *out, size_t cap)
{
    char name[32];
    snprintf(name, sizeof name, SHARD_STORE_SEGMENT_NAME_FMT, number);
    snprintf(out, cap, "%s/store/segments/%s", dir, name);
}

static uint64_t file_size(const char *path)
{
    struct stat st;
    assert_int_equal(stat(path, &st), 0);
    return (uint64_t)st.st_size;
}

static uint64_t open_segment(struct shard_store *s)
{
    struct shard_segment_info *v = NULL;
    size_t n = 0;
    struct err e = {0};
    assert_ok(shard_store_segments(s, &v, &n, &e), &e);
    uint64_t num = 0;
    for (size_t i = 0; i < n; i++) {
        if (v[i].open) {
            num = v[i].number;
        }
    }
    hbc_free(v);
    assert_true(num != 0);
    return num;
}

static void flip_byte(const char *path, uint64_t off)
{
    int fd = open(path, O_RDWR);
    assert_true(fd >= 0);
    uint8_t b;
    assert_int_equal(pread(fd, &b, 1, (off_t)off), 1);
    b ^= 0x40;
    assert_int_equal(pwrite(fd, &b, 1, (off_t)off), 1);
    close(fd);
}

static void append_bytes(const char *path, const void *p, size_t n)
{
    int fd = open(path, O_WRONLY | O_APPEND | O_CREAT, 0600);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, p, n), (ssize_t)n);
    close(fd);
}

/* ---- 1. round trip ------------------------------------------------------ */

static void test_round_trip_across_segments_and_reopen(void **state)
{
    const char *dir = *state;
    /* Small segments and few read descriptors, so that rolling and eviction both happen. */
    struct shard_store_options o = {
        .segment_size = 8 * MiB, .max_open_segments = 2, .capacity = 1ull << 30};
    struct shard_store *s = open_store(dir, &o);
    enum { N = 48, BATCH = 8 };
    struct rec recs[N];
    uint64_t x = 1;
    uint64_t used = 0;
    for (size_t i = 0; i < N; i++) {
        size_t len;
        switch (i % 3) {
        case 0:
            len = 1 + splitmix(&x) % 1024;
            break;
        case 1:
            len = 1024 + splitmix(&x) % (256 * KiB);
            break;
        default:
            len = 256 * KiB + splitmix(&x) % (4 * MiB - 256 * KiB + 1);
        }
        if (i == 0) {
            len = 1;
        }
        if (i == N - 1) {
            len = 4 * MiB;
        }
        recs[i] = (struct rec){.key = make_key(1, i, (uint32_t)i % 6), .len = len, .seed = i};
        used += len + SHARD_STORE_RECORD_HEADER_LEN;
    }
    for (size_t b = 0; b < N; b += BATCH) {
        put_recs(s, &recs[b], BATCH);
        for (size_t i = 0; i <= b + BATCH - 1; i += 5) {
            check_rec(s, &recs[i]);
        }
    }
    struct shard_store_stats st;
    shard_store_stats(s, &st);
    assert_int_equal(st.shard_count, N);
    assert_int_equal(st.used_bytes, used);
    assert_int_equal(st.bytes_on_disk, used);
    assert_int_equal(st.capacity, 1ull << 30);
    assert_true(st.segment_count >= 4);
    assert_int_equal(st.put_batches, N / BATCH);
    /* One fdatasync per segment touched: one per batch plus one per roll. */
    assert_true(st.fdatasyncs <= N / BATCH + st.segment_count);
    assert_int_equal(st.index_syncs, N / BATCH + 1);

    struct shard_info info;
    struct err e = {0};
    assert_ok(shard_store_lookup(s, &recs[7].key, &info, &e), &e);
    assert_int_equal(info.length, recs[7].len);
    assert_true(info.stored_at_ms > 1600000000000ull);
    close_store(s);

    s = open_store(dir, &o);
    shard_store_stats(s, &st);
    assert_int_equal(st.shard_count, N);
    assert_int_equal(st.used_bytes, used);
    assert_int_equal(st.recovered_cut_bytes, 0);
    for (size_t i = 0; i < N; i++) {
        check_rec(s, &recs[i]);
    }
    /* Appending continues in the reopened last segment. */
    struct rec more = {.key = make_key(1, 1000, 0), .len = 1000, .seed = 1000};
    put_recs(s, &more, 1);
    check_rec(s, &more);
    close_store(s);
}

/* ---- 2. idempotent and conflicting puts ---------------------------------- */

static void test_reput_is_idempotent_and_conflict_keeps_original(void **state)
{
    const char *dir = *state;
    struct shard_store *s = open_store(dir, NULL);
    struct rec r[3] = {
        {.key = make_key(2, 1, 0), .len = 5000, .seed = 1},
        {.key = make_key(2, 1, 1), .len = 0, .seed = 2},
        {.key = make_key(2, 2, 0), .len = 70000, .seed = 3},
    };
    put_recs(s, r, 3);
    struct shard_store_stats before;
    shard_store_stats(s, &before);

    /* The same records again, and one with different data under r[2]'s key. */
    uint8_t *d0 = rec_data(&r[0]);
    uint8_t *d2 = rec_data(&r[2]);
    uint8_t *other = malloc(70000);
    assert_non_null(other);
    fill(other, 70000, 99);
    struct shard_put p[4] = {
        {.key = r[0].key, .data = d0, .len = r[0].len},
        {.key = r[1].key, .data = NULL, .len = 0},
        {.key = r[2].key, .data = other, .len = 70000},
        {.key = r[2].key, .data = d2, .len = r[2].len},
    };
    int res[4];
    struct err e = {0};
    assert_ok(shard_store_put_batch(s, p, 4, res, &e), &e);
    assert_int_equal(res[0], SHARD_STORE_ALREADY);
    assert_int_equal(res[1], SHARD_STORE_ALREADY);
    assert_int_equal(res[2], HBC_EEXIST);
    assert_int_equal(res[3], SHARD_STORE_ALREADY);
    struct shard_store_stats after;
    shard_store_stats(s, &after);
    assert_int_equal(after.shard_count, before.shard_count);
    assert_int_equal(after.bytes_on_disk, before.bytes_on_disk);
    assert_int_equal(after.fdatasyncs, before.fdatasyncs); /* nothing was written */
    for (int i = 0; i < 3; i++) {
        check_rec(s, &r[i]);
    }

    /* Repeats inside one batch: the first occurrence wins. */
    struct rec y = {.key = make_key(2, 3, 0), .len = 300, .seed = 4};
    uint8_t *dy = rec_data(&y);
    struct shard_put q[4] = {
        {.key = y.key, .data = dy, .len = y.len},
        {.key = y.key, .data = other, .len = 300},
        {.key = y.key, .data = dy, .len = y.len},
        {.key = make_key(2, 4, 0), .data = other, .len = 10},
    };
    assert_ok(shard_store_put_batch(s, q, 4, res, &e), &e);
    assert_int_equal(res[0], 0);
    assert_int_equal(res[1], HBC_EEXIST);
    assert_int_equal(res[2], SHARD_STORE_ALREADY);
    assert_int_equal(res[3], 0);
    check_rec(s, &y);
    shard_store_stats(s, &after);
    assert_int_equal(after.shard_count, before.shard_count + 2);

    close_store(s);
    s = open_store(dir, NULL);
    check_rec(s, &y);
    check_rec(s, &r[2]);
    close_store(s);
    free(d0);
    free(d2);
    free(dy);
    free(other);
}

/* ---- 3. torn tail ------------------------------------------------------- */

static void test_torn_tail_is_cut_on_open(void **state)
{
    const char *dir = *state;
    struct shard_store_options o = {.segment_size = 1 * MiB};
    struct shard_store *s = open_store(dir, &o);
    enum { N = 30 };
    struct rec r[N];
    for (size_t i = 0; i < N; i++) {
        r[i] = (struct rec){.key = make_key(3, i, 0), .len = 20000 + i * 1000, .seed = 300 + i};
    }
    for (size_t i = 0; i < N; i += 10) {
        put_recs(s, &r[i], 10);
    }
    uint64_t last = open_segment(s);
    close_store(s);

    /* A crash between the append and the index write: a real header, then part of the data. */
    char path[512];
    segment_path(dir, last, path, sizeof path);
    uint64_t size = file_size(path);
    uint8_t hdr[SHARD_STORE_RECORD_HEADER_LEN];
    int fd = open(path, O_RDONLY);
    assert_true(fd >= 0);
    assert_int_equal(pread(fd, hdr, sizeof hdr, 0), (ssize_t)sizeof hdr);
    close(fd);
    uint8_t junk[1000];
    fill(junk, sizeof junk, 7);
    append_bytes(path, hdr, sizeof hdr);
    append_bytes(path, junk, sizeof junk);
    /* And a segment file created by a batch that never got indexed. */
    char extra[512];
    segment_path(dir, last + 1, extra, sizeof extra);
    uint8_t junk2[5000];
    fill(junk2, sizeof junk2, 8);
    append_bytes(extra, junk2, sizeof junk2);

    s = open_store(dir, &o);
    struct shard_store_stats st;
    shard_store_stats(s, &st);
    assert_int_equal(st.recovered_cut_bytes, sizeof hdr + sizeof junk + sizeof junk2);
    assert_int_equal(file_size(path), size);
    assert_int_equal(access(extra, F_OK), -1);
    assert_int_equal(st.shard_count, N);
    for (size_t i = 0; i < N; i++) {
        check_rec(s, &r[i]);
    }
    struct rec more = {.key = make_key(3, 100, 0), .len = 4321, .seed = 9};
    put_recs(s, &more, 1);
    check_rec(s, &more);
    close_store(s);

    s = open_store(dir, &o);
    shard_store_stats(s, &st);
    assert_int_equal(st.recovered_cut_bytes, 0);
    check_rec(s, &more);
    close_store(s);

    /* A lost index must not make recovery delete every segment as unreferenced. */
    size = file_size(path);
    char index[512];
    snprintf(index, sizeof index, "%s/store/index", dir);
    assert_int_equal(nftw(index, rm_entry, 16, FTW_DEPTH | FTW_PHYS), 0);
    snprintf(index, sizeof index, "%s/store", dir);
    struct err e = {0};
    assert_int_equal(shard_store_open(index, &o, &s, &e), HBC_ECORRUPT);
    assert_null(s);
    assert_int_equal(file_size(path), size);
}

/* ---- 4. crash while putting --------------------------------------------- */

enum { CRASH_BATCH = 8, CRASH_MAX_BATCHES = 400 };

static struct rec crash_rec(int round, uint32_t batch, uint32_t j)
{
    uint64_t n = (uint64_t)round << 32 | ((uint64_t)batch * CRASH_BATCH + j);
    uint64_t x = n;
    return (struct rec){.key = make_key(4, n, j), .len = 1 + splitmix(&x) % (256 * KiB), .seed = n};
}

/* One writer of a crash child: batches first, first + step, ... */
struct crash_writer {
    pthread_t th;          /* the thread */
    struct shard_store *s; /* the store */
    int round;             /* the test round (part of every key) */
    uint32_t first;        /* its first batch */
    uint32_t step;         /* writers in all */
    int fd;                /* where acknowledged batch numbers go */
    int rc;                /* 0 or the child's exit status for a failure */
};

static void *crash_writer_main(void *arg)
{
    struct crash_writer *w = arg;
    struct shard_put p[CRASH_BATCH];
    uint8_t *bufs[CRASH_BATCH];
    int res[CRASH_BATCH];
    struct err e = {0};
    for (uint32_t b = w->first; b < CRASH_MAX_BATCHES && w->rc == 0; b += w->step) {
        for (uint32_t j = 0; j < CRASH_BATCH; j++) {
            struct rec r = crash_rec(w->round, b, j);
            bufs[j] = malloc(r.len);
            if (bufs[j] == NULL) {
                w->rc = 4;
                return NULL;
            }
            fill(bufs[j], r.len, r.seed);
            p[j] = (struct shard_put){.key = r.key, .data = bufs[j], .len = r.len};
        }
        if (shard_store_put_batch(w->s, p, CRASH_BATCH, res, &e) != 0) {
            fprintf(stderr, "crash child: %s\n", e.msg);
            w->rc = 5;
        }
        for (uint32_t j = 0; j < CRASH_BATCH; j++) {
            free(bufs[j]);
        }
        /* A pipe write of 4 bytes is atomic: writers do not interleave within one. */
        if (w->rc == 0 && write(w->fd, &b, sizeof b) != (ssize_t)sizeof b) {
            w->rc = 6;
        }
    }
    return NULL;
}

/*
 * The child (this program run again with --crash-child, so that it starts
 * without the parent's RocksDB threads): writers threads put batches until
 * killed, writing each acknowledged batch's number to fd.
 */
static int crash_child(const char *dir, int round, int fd, int writers)
{
    char path[256];
    snprintf(path, sizeof path, "%s/store", dir);
    struct shard_store_options o = {.segment_size = 2 * MiB};
    struct shard_store *s = NULL;
    struct err e = {0};
    if (writers < 1 || writers > 4) {
        return 2;
    }
    if (shard_store_open(path, &o, &s, &e) != 0) {
        fprintf(stderr, "crash child: %s\n", e.msg);
        return 3;
    }
    struct crash_writer w[4];
    for (int k = 0; k < writers; k++) {
        w[k] = (struct crash_writer){
            .s = s, .round = round, .first = (uint32_t)k, .step = (uint32_t)writers, .fd = fd};
        if (pthread_create(&w[k].th, NULL, crash_writer_main, &w[k]) != 0) {
            return 7;
        }
    }
    int rc = 0;
    for (int k = 0; k < writers; k++) {
        pthread_join(w[k].th, NULL);
        rc = rc != 0 ? rc : w[k].rc;
    }
    shard_store_close(s, NULL);
    return rc;
}

/* Read one acknowledged batch number; 0 on end of file or after timeout_ms. */
static int read_ack(int fd, uint32_t *b, int timeout_ms)
{
    struct pollfd pfd = {.fd = fd, .events = POLLIN};
    if (poll(&pfd, 1, timeout_ms) != 1) {
        return 0;
    }
    return read(fd, b, sizeof *b) == (ssize_t)sizeof *b;
}

static void test_crash_loses_nothing_acknowledged(void **state)
{
    char *dir = *state; /* execv takes char *const[] */
    uint64_t x = 42;
    uint64_t present_total = 0;
    enum { ROUNDS = 5 };
    for (int round = 0; round < ROUNDS; round++) {
        int fds[2];
        assert_int_equal(pipe2(fds, O_CLOEXEC), 0);
        char round_arg[16];
        char fd_arg[16];
        snprintf(round_arg, sizeof round_arg, "%d", round);
        snprintf(fd_arg, sizeof fd_arg, "%d", fds[1]);
        char *argv[] = {"test_shard_store", "--crash-child", dir, round_arg, fd_arg, NULL};
        fflush(NULL);
        pid_t pid = fork();
        assert_true(pid >= 0);
        if (pid == 0) {
            fcntl(fds[1], F_SETFD, 0);
            execv("/proc/self/exe", argv);
            _exit(127);
        }
        close(fds[1]);
        /* Let it acknowledge a few batches, then kill it at a random moment. */
        uint32_t want = 1 + (uint32_t)(splitmix(&x) % 6);
        uint32_t acked = 0;
        uint32_t b;
        while (acked < want && read_ack(fds[0], &b, 60000)) {
            acked = b + 1;
        }
        struct timespec ts = {0, (long)(splitmix(&x) % 20000) * 1000};
        nanosleep(&ts, NULL);
        kill(pid, SIGKILL);
        int status = 0;
        assert_int_equal(waitpid(pid, &status, 0), pid);
        assert_true(WIFSIGNALED(status) || (WIFEXITED(status) && WEXITSTATUS(status) == 0));
        assert_true(acked > 0);
        while (read_ack(fds[0], &b, 1000)) {
            acked = b + 1;
        }
        close(fds[0]);

        struct shard_store *s =
            open_store(dir, &(struct shard_store_options){.segment_size = 2 * MiB});
        for (uint32_t bb = 0; bb < acked; bb++) {
            for (uint32_t j = 0; j < CRASH_BATCH; j++) {
                struct rec r = crash_rec(round, bb, j);
                check_rec(s, &r);
            }
        }
        present_total += (uint64_t)acked * CRASH_BATCH;
        /* A batch past the last acknowledged one may or may not be there, but never torn. */
        for (uint32_t bb = acked; bb < acked + 2; bb++) {
            uint32_t here = 0;
            for (uint32_t j = 0; j < CRASH_BATCH; j++) {
                struct rec r = crash_rec(round, bb, j);
                uint8_t *got = NULL;
                size_t len = 0;
                struct err e = {0};
                int rc = shard_store_get_alloc(s, &r.key, &got, &len, &e);
                assert_true(rc == 0 || rc == HBC_ENOTFOUND);
                if (rc == 0) {
                    uint8_t *want_data = rec_data(&r);
                    assert_int_equal(len, r.len);
                    assert_memory_equal(got, want_data, len);
                    free(want_data);
                    hbc_free(got);
                    here++;
                }
            }
            assert_true(here == 0 || here == CRASH_BATCH); /* one batch is one index write */
            present_total += here;
        }
        struct shard_store_stats st;
        shard_store_stats(s, &st);
        assert_int_equal(st.shard_count, present_total);
        assert_int_equal(st.corrupt_reads, 0);
        close_store(s);
    }
}

/*
 * The same with two writers, so that puts are pipelined (one appends while
 * the other syncs) when the kill lands: every acknowledged batch is there and
 * intact, any other batch is all there or not at all, nothing torn is served.
 */
static void test_crash_with_pipelined_puts_loses_nothing_acknowledged(void **state)
{
    char *dir = *state;
    uint64_t x = 4242;
    uint64_t present_total = 0;
    enum { ROUNDS = 3, WRITERS = 2 };
    for (int round = 0; round < ROUNDS; round++) {
        int fds[2];
        assert_int_equal(pipe2(fds, O_CLOEXEC), 0);
        char round_arg[16];
        char fd_arg[16];
        char writers_arg[16];
        snprintf(round_arg, sizeof round_arg, "%d", 100 + round);
        snprintf(fd_arg, sizeof fd_arg, "%d", fds[1]);
        snprintf(writers_arg, sizeof writers_arg, "%d", WRITERS);
        char *argv[] = {
            "test_shard_store", "--crash-child", dir, round_arg, fd_arg, writers_arg, NULL};
        fflush(NULL);
        pid_t pid = fork();
        assert_true(pid >= 0);
        if (pid == 0) {
            fcntl(fds[1], F_SETFD, 0);
            execv("/proc/self/exe", argv);
            _exit(127);
        }
        close(fds[1]);
        bool acked[CRASH_MAX_BATCHES] = {false};
        uint32_t nacked = 0;
        uint32_t want = 2 + (uint32_t)(splitmix(&x) % 8);
        uint32_t b;
        while (nacked < want && read_ack(fds[0], &b, 60000)) {
            assert_true(b < CRASH_MAX_BATCHES);
            nacked += !acked[b];
            acked[b] = true;
        }
        struct timespec ts = {0, (long)(splitmix(&x) % 20000) * 1000};
        nanosleep(&ts, NULL);
        kill(pid, SIGKILL);
        int status = 0;
        assert_int_equal(waitpid(pid, &status, 0), pid);
        assert_true(WIFSIGNALED(status) || (WIFEXITED(status) && WEXITSTATUS(status) == 0));
        while (read_ack(fds[0], &b, 1000)) {
            assert_true(b < CRASH_MAX_BATCHES);
            nacked += !acked[b];
            acked[b] = true;
        }
        close(fds[0]);
        assert_true(nacked > 0);

        struct shard_store *s =
            open_store(dir, &(struct shard_store_options){.segment_size = 2 * MiB});
        for (uint32_t bb = 0; bb < CRASH_MAX_BATCHES; bb++) {
            uint32_t here = 0;
            for (uint32_t j = 0; j < CRASH_BATCH; j++) {
                struct rec r = crash_rec(100 + round, bb, j);
                uint8_t *got = NULL;
                size_t len = 0;
                struct err e = {0};
                int rc = shard_store_get_alloc(s, &r.key, &got, &len, &e);
                assert_true(rc == 0 || rc == HBC_ENOTFOUND);
                if (rc == 0) {
                    uint8_t *want_data = rec_data(&r);
                    assert_int_equal(len, r.len);
                    assert_memory_equal(got, want_data, len);
                    free(want_data);
                    hbc_free(got);
                    here++;
                }
            }
            if (acked[bb]) {
                assert_int_equal(here, CRASH_BATCH);
            }
            assert_true(here == 0 || here == CRASH_BATCH); /* one batch is one index write */
            present_total += here;
        }
        struct shard_store_stats st;
        shard_store_stats(s, &st);
        assert_int_equal(st.shard_count, present_total);
        assert_int_equal(st.corrupt_reads, 0);
        close_store(s);
    }
}

/*
 * The loop thread's get: cached shards come back checked, exactly as from
 * shard_store_get_batch(); anything that would wait, or is over the byte
 * limit, or is not found, returns HBC_EBUSY with nothing allocated (the
 * caller then asks the blocking way), and a corrupt cached record is never
 * served.
 */
static void test_get_batch_nowait(void **state)
{
    const char *dir = *state;
    struct shard_store *s = open_store(dir, NULL);
    struct rec r[3];
    for (size_t i = 0; i < 3; i++) {
        r[i] = (struct rec){.key = make_key(7, i, (uint32_t)i), .len = 9000 + i, .seed = 700 + i};
    }
    put_recs(s, r, 3);
    struct shard_key keys[3] = {r[0].key, r[1].key, r[2].key};
    uint8_t *datas[3];
    size_t lens[3];
    int results[3];
    struct err e = {0};
    /* A blocking read of each brings the records into the page cache (and opens the segment). */
    int rv = HBC_EBUSY;
    for (int attempt = 0; attempt < 5 && rv == HBC_EBUSY; attempt++) {
        for (size_t i = 0; i < 3; i++) {
            check_rec(s, &r[i]);
        }
        rv = shard_store_get_batch_nowait(s, keys, 3, 1u << 20, datas, lens, results, &e);
    }
    assert_ok(rv, &e);
    for (size_t i = 0; i < 3; i++) {
        assert_int_equal(results[i], 0);
        assert_int_equal(lens[i], r[i].len);
        uint8_t *want = rec_data(&r[i]);
        assert_memory_equal(datas[i], want, r[i].len);
        free(want);
        hbc_free(datas[i]);
    }

    /* Over the byte limit: nothing is read. */
    assert_int_equal(shard_store_get_batch_nowait(s, keys, 3, 20000, datas, lens, results, &e),
                     HBC_EBUSY);
    for (size_t i = 0; i < 3; i++) {
        assert_null(datas[i]);
    }
    /* A key that is not stored: the blocking lookup is to say so. */
    struct shard_key absent[2] = {r[0].key, make_key(7, 99, 0)};
    assert_int_equal(shard_store_get_batch_nowait(s, absent, 2, 1u << 20, datas, lens, results, &e),
                     HBC_EBUSY);
    assert_null(datas[0]);
    assert_null(datas[1]);
    /* Too many keys. */
    assert_int_equal(shard_store_get_batch_nowait(s, keys, SHARD_STORE_MAX_BATCH + 1, 1u << 20,
                                                  datas, lens, results, &e),
                     HBC_EINVAL);

    /* A flipped byte in r[1]'s cached data: reported corrupt, the others served. */
    struct shard_info info;
    assert_ok(shard_store_lookup(s, &r[1].key, &info, &e), &e);
    char path[512];
    segment_path(dir, info.segment, path, sizeof path);
    flip_byte(path, info.offset + SHARD_STORE_RECORD_HEADER_LEN + 100);
    rv = shard_store_get_batch_nowait(s, keys, 3, 1u << 20, datas, lens, results, &e);
    if (rv == 0) {
        assert_int_equal(results[0], 0);
        assert_int_equal(results[1], HBC_ECORRUPT);
        assert_null(datas[1]);
        assert_int_equal(results[2], 0);
        hbc_free(datas[0]);
        hbc_free(datas[2]);
    } else {
        assert_int_equal(rv, HBC_EBUSY); /* the page was dropped meanwhile */
    }
    uint8_t *got = NULL;
    size_t len = 0;
    assert_int_equal(shard_store_get_alloc(s, &r[1].key, &got, &len, &e), HBC_ECORRUPT);
    assert_null(got);
    close_store(s);
}

/* ---- 5. corruption ------------------------------------------------------ */

static void test_corrupt_record_is_never_served(void **state)
{
    const char *dir = *state;
    struct shard_store *s = open_store(dir, NULL);
    struct rec r[4];
    for (size_t i = 0; i < 4; i++) {
        r[i] = (struct rec){.key = make_key(5, i, 0), .len = 10000, .seed = 500 + i};
    }
    put_recs(s, r, 4);
    struct shard_info info[4];
    struct err e = {0};
    for (size_t i = 0; i < 4; i++) {
        assert_ok(shard_store_lookup(s, &r[i].key, &info[i], &e), &e);
    }
    char path[512];
    segment_path(dir, info[0].segment, path, sizeof path);
    /* A flipped bit in r[0]'s data and in r[1]'s header (its key). */
    flip_byte(path, info[0].offset + SHARD_STORE_RECORD_HEADER_LEN + 5000);
    flip_byte(path, info[1].offset + 20);

    uint8_t *got = NULL;
    size_t len = 0;
    assert_int_equal(shard_store_get_alloc(s, &r[0].key, &got, &len, &e), HBC_ECORRUPT);
    assert_null(got);
    assert_non_null(strstr(e.msg, "SHA-256 mismatch"));
    uint8_t *buf = malloc(10000);
    assert_non_null(buf);
    uint8_t *want = rec_data(&r[0]);
    assert_int_equal(shard_store_get(s, &r[0].key, buf, 10000, &len, &e), HBC_ECORRUPT);
    assert_memory_not_equal(buf, want, 10000); /* the caller's buffer is wiped */
    assert_int_equal(shard_store_get_alloc(s, &r[1].key, &got, &len, &e), HBC_ECORRUPT);
    assert_null(got);
    check_rec(s, &r[2]);
    check_rec(s, &r[3]);
    struct shard_store_stats st;
    shard_store_stats(s, &st);
    assert_int_equal(st.corrupt_reads, 3);

    /* get_batch reports each key on its own. */
    struct shard_key keys[2] = {r[0].key, r[2].key};
    uint8_t *datas[2];
    size_t lens[2];
    int results[2];
    assert_ok(shard_store_get_batch(s, keys, 2, datas, lens, results, &e), &e);
    assert_int_equal(results[0], HBC_ECORRUPT);
    assert_null(datas[0]);
    assert_int_equal(results[1], 0);
    assert_int_equal(lens[1], r[2].len);
    hbc_free(datas[1]);

    /* Compaction copies the intact records and drops the corrupt ones. */
    struct shard_compact_result cr;
    assert_ok(shard_store_compact(s, info[0].segment, &cr, &e), &e);
    assert_int_equal(cr.copied_records, 2);
    assert_int_equal(cr.corrupt_records, 2);
    check_gone(s, &r[0]);
    check_gone(s, &r[1]);
    check_rec(s, &r[2]);
    check_rec(s, &r[3]);
    shard_store_stats(s, &st);
    assert_int_equal(st.shard_count, 2);
    assert_int_equal(access(path, F_OK), -1);

    /* A segment cut short under the index: the record is reported, not served. */
    assert_ok(shard_store_lookup(s, &r[3].key, &info[3], &e), &e);
    segment_path(dir, info[3].segment, path, sizeof path);
    assert_int_equal(truncate(path, (off_t)(info[3].offset + 100)), 0);
    assert_int_equal(shard_store_get_alloc(s, &r[3].key, &got, &len, &e), HBC_ECORRUPT);
    close_store(s);
    s = open_store(dir, NULL);
    assert_int_equal(shard_store_get_alloc(s, &r[3].key, &got, &len, &e), HBC_ECORRUPT);
    check_rec(s, &r[2]);
    close_store(s);
    free(buf);
    free(want);
}

/* ---- 6. delete and compact ---------------------------------------------- */

static void test_delete_and_compact_reclaim_space(void **state)
{
    const char *dir = *state;
    struct shard_store_options o = {.segment_size = 1 * MiB};
    struct shard_store *s = open_store(dir, &o);
    enum { N = 160 };
    struct rec r[N];
    bool dead[N];
    uint64_t x = 6;
    for (size_t i = 0; i < N; i++) {
        r[i] = (struct rec){
            .key = make_key(6, i, 1), .len = 16 * KiB + splitmix(&x) % (32 * KiB), .seed = 600 + i};
        dead[i] = splitmix(&x) % 10 < 7;
    }
    for (size_t i = 0; i < N; i += 20) {
        put_recs(s, &r[i], 20);
    }
    struct shard_store_stats st0;
    shard_store_stats(s, &st0);
    assert_true(st0.segment_count >= 4);

    /* Delete about 70%, in two batches; the second names some keys twice. */
    struct shard_key keys[N];
    size_t nk = 0;
    for (size_t i = 0; i < N; i++) {
        if (dead[i]) {
            keys[nk++] = r[i].key;
        }
    }
    int res[N];
    struct err e = {0};
    assert_ok(shard_store_delete(s, keys, nk / 2, res, &e), &e);
    for (size_t i = 0; i < nk / 2; i++) {
        assert_int_equal(res[i], 0);
    }
    assert_ok(shard_store_delete(s, keys, nk, res, &e), &e);
    for (size_t i = 0; i < nk; i++) {
        assert_int_equal(res[i], i < nk / 2 ? HBC_ENOTFOUND : 0);
    }
    struct shard_store_stats st;
    shard_store_stats(s, &st);
    assert_int_equal(st.shard_count, N - nk);
    assert_int_equal(st.bytes_on_disk, st0.bytes_on_disk); /* deleting frees nothing yet */

    /* Keep a copy of one segment's file to play a compaction that crashed before unlinking. */
    struct shard_segment_info *v = NULL;
    size_t nv = 0;
    assert_ok(shard_store_segments(s, &v, &nv, &e), &e);
    assert_false(v[0].open);
    assert_true(v[0].live_ratio < 0.7);
    char kept_path[512];
    segment_path(dir, v[0].number, kept_path, sizeof kept_path);
    uint64_t kept_size = file_size(kept_path);
    uint8_t *kept = malloc(kept_size);
    assert_non_null(kept);
    int fd = open(kept_path, O_RDONLY);
    assert_int_equal(pread(fd, kept, kept_size, 0), (ssize_t)kept_size);
    close(fd);

    /* Compact every segment, the open one included (it is closed for appends first). */
    uint64_t freed = 0;
    for (size_t i = 0; i < nv; i++) {
        struct shard_compact_result cr;
        assert_ok(shard_store_compact(s, v[i].number, &cr, &e), &e);
        if (v[i].open) {
            /* It received the copies from the segments compacted before it. */
            assert_true(cr.copied_records >= v[i].live_records);
        } else {
            assert_int_equal(cr.copied_records, v[i].live_records);
        }
        assert_int_equal(cr.corrupt_records, 0);
        freed += cr.freed_bytes;
    }
    hbc_free(v);
    assert_true(freed >= st0.bytes_on_disk);
    shard_store_stats(s, &st);
    assert_int_equal(st.shard_count, N - nk);
    assert_int_equal(st.bytes_on_disk, st.used_bytes); /* nothing dead is left */
    assert_true(st.bytes_on_disk < st0.bytes_on_disk / 2);
    for (size_t i = 0; i < N; i++) {
        if (dead[i]) {
            check_gone(s, &r[i]);
        } else {
            check_rec(s, &r[i]);
        }
    }
    assert_int_equal(shard_store_compact(s, 999999, NULL, &e), HBC_ENOTFOUND);
    close_store(s);

    append_bytes(kept_path, kept, kept_size);
    free(kept);
    s = open_store(dir, &o);
    struct shard_store_stats st2;
    shard_store_stats(s, &st2);
    assert_int_equal(st2.recovered_cut_bytes, kept_size);
    assert_int_equal(access(kept_path, F_OK), -1);
    assert_int_equal(st2.shard_count, st.shard_count);
    assert_int_equal(st2.used_bytes, st.used_bytes);
    assert_int_equal(st2.bytes_on_disk, st.bytes_on_disk);
    for (size_t i = 0; i < N; i++) {
        if (dead[i]) {
            check_gone(s, &r[i]);
        } else {
            check_rec(s, &r[i]);
        }
    }

    /* Delete the rest: open removes the segments nothing references any more. */
    nk = 0;
    for (size_t i = 0; i < N; i++) {
        if (!dead[i]) {
            keys[nk++] = r[i].key;
        }
    }
    assert_ok(shard_store_delete(s, keys, nk, res, &e), &e);
    close_store(s);
    s = open_store(dir, &o);
    shard_store_stats(s, &st);
    assert_int_equal(st.shard_count, 0);
    assert_int_equal(st.used_bytes, 0);
    assert_int_equal(st.segment_count, 0);
    assert_int_equal(st.bytes_on_disk, 0);
    put_recs(s, r, 1);
    check_rec(s, &r[0]);
    close_store(s);
}

/* ---- 7. limits ---------------------------------------------------------- */

static void test_oversized_record_rejected(void **state)
{
    const char *dir = *state;
    struct shard_store_options o = {.max_shard_size = 64 * KiB};
    struct shard_store *s = open_store(dir, &o);
    uint8_t *big = calloc(1, 64 * KiB + 1);
    assert_non_null(big);
    struct shard_put p[3] = {
        {.key = make_key(7, 1, 0), .data = big, .len = 10},
        {.key = make_key(7, 2, 0), .data = big, .len = 64 * KiB + 1},
        {.key = make_key(7, 3, 0), .data = big, .len = 64 * KiB},
    };
    int res[3];
    struct err e = {0};
    assert_ok(shard_store_put_batch(s, p, 3, res, &e), &e);
    assert_int_equal(res[0], 0);
    assert_int_equal(res[1], HBC_ETOOBIG);
    assert_int_equal(res[2], 0);
    uint8_t *got = NULL;
    size_t len = 0;
    assert_int_equal(shard_store_get_alloc(s, &p[1].key, &got, &len, &e), HBC_ENOTFOUND);
    assert_ok(shard_store_get_alloc(s, &p[2].key, &got, &len, &e), &e);
    assert_int_equal(len, 64 * KiB);
    hbc_free(got);
    assert_int_equal(shard_store_put_batch(s, p, SHARD_STORE_MAX_BATCH + 1, res, &e), HBC_EINVAL);
    close_store(s);
    free(big);

    struct shard_store *bad = NULL;
    o = (struct shard_store_options){.segment_size = 100};
    assert_int_equal(shard_store_open(dir, &o, &bad, &e), HBC_ECONFIG);
    o = (struct shard_store_options){.max_shard_size = SHARD_STORE_SHARD_SIZE_LIMIT + 1};
    assert_int_equal(shard_store_open(dir, &o, &bad, &e), HBC_ECONFIG);
    assert_null(bad);
}

/* ---- 8. exists ---------------------------------------------------------- */

static void test_exists_by_chunk(void **state)
{
    const char *dir = *state;
    struct shard_store *s = open_store(dir, NULL);
    struct rec r[3] = {
        {.key = make_key(8, 1, 0), .len = 100, .seed = 1},
        {.key = make_key(8, 1, 3), .len = 100, .seed = 2},
        {.key = make_key(8, 2, 5), .len = 100, .seed = 3},
    };
    put_recs(s, r, 3);
    struct err e = {0};
    bool present = false;
    assert_ok(shard_store_exists(s, r[0].key.vault_id, r[0].key.chunk_id, &present, &e), &e);
    assert_true(present);
    struct shard_key other_vault = make_key(9, 1, 0);
    assert_ok(shard_store_exists(s, other_vault.vault_id, r[0].key.chunk_id, &present, &e), &e);
    assert_false(present);

    uint8_t ids[5][SHARD_STORE_CHUNK_ID_LEN];
    memcpy(ids[0], r[0].key.chunk_id, sizeof ids[0]);
    memcpy(ids[1], r[2].key.chunk_id, sizeof ids[1]);
    memcpy(ids[2], make_key(8, 3, 0).chunk_id, sizeof ids[2]);
    memcpy(ids[3], r[0].key.chunk_id, sizeof ids[3]);
    ids[3][SHARD_STORE_CHUNK_ID_LEN - 1] ^= 1; /* a neighbour in key order */
    memset(ids[4], 0xff, sizeof ids[4]);       /* past every key */
    bool pr[5];
    assert_ok(shard_store_exists_batch(s, r[0].key.vault_id, (const uint8_t(*)[32])ids, 5, pr, &e),
              &e);
    assert_true(pr[0]);
    assert_true(pr[1]);
    assert_false(pr[2]);
    assert_false(pr[3]);
    assert_false(pr[4]);

    int res[2];
    struct shard_key del[2] = {r[0].key, r[1].key};
    assert_ok(shard_store_delete(s, del, 2, res, &e), &e);
    assert_ok(shard_store_exists(s, r[0].key.vault_id, r[0].key.chunk_id, &present, &e), &e);
    assert_false(present);
    close_store(s);
}

/* ---- write errors ------------------------------------------------------- */

static void test_write_error_indexes_nothing(void **state)
{
    const char *dir = *state;
    struct shard_store *s = open_store(dir, NULL);
    struct rec first = {.key = make_key(10, 1, 0), .len = 100 * KiB, .seed = 1};
    put_recs(s, &first, 1);

    /* A file size limit makes the segment write fail part-way, as a full disk would. */
    uint8_t *big = malloc(2 * MiB);
    assert_non_null(big);
    fill(big, 2 * MiB, 2);
    struct shard_put p[2] = {
        {.key = make_key(10, 2, 0), .data = big, .len = MiB},
        {.key = make_key(10, 3, 0), .data = big + MiB, .len = MiB},
    };
    int res[2];
    struct err e = {0};
    struct rlimit old;
    assert_int_equal(getrlimit(RLIMIT_FSIZE, &old), 0);
    signal(SIGXFSZ, SIG_IGN);
    struct rlimit lim = {.rlim_cur = 1 * MiB, .rlim_max = old.rlim_max};
    assert_int_equal(setrlimit(RLIMIT_FSIZE, &lim), 0);
    int rc = shard_store_put_batch(s, p, 2, res, &e);
    assert_int_equal(setrlimit(RLIMIT_FSIZE, &old), 0);
    signal(SIGXFSZ, SIG_DFL);
    assert_int_equal(rc, -EFBIG);
    assert_int_equal(res[0], -EFBIG);
    assert_int_equal(res[1], -EFBIG);
    assert_string_equal(e.msg, "put batch: segment 1: write: File too large");

    uint8_t *got = NULL;
    size_t len = 0;
    assert_int_equal(shard_store_get_alloc(s, &p[0].key, &got, &len, &e), HBC_ENOTFOUND);
    struct shard_store_stats st;
    shard_store_stats(s, &st);
    assert_int_equal(st.shard_count, 1);
    assert_int_equal(st.bytes_on_disk, first.len + SHARD_STORE_RECORD_HEADER_LEN);
    /* The store goes on working. */
    assert_ok(shard_store_put_batch(s, p, 2, res, &e), &e);
    assert_ok(shard_store_get_alloc(s, &p[1].key, &got, &len, &e), &e);
    assert_memory_equal(got, big + MiB, MiB);
    hbc_free(got);
    check_rec(s, &first);
    close_store(s);
    free(big);
}

/* ---- concurrency -------------------------------------------------------- */

/* What a reader thread checks. */
struct reader_arg {
    struct shard_store *s;  /* the store */
    const struct rec *recs; /* records that stay stored throughout */
    size_t n;               /* entries in recs */
    atomic_bool *stop;      /* set when the writer is done */
    atomic_int bad;         /* reads that failed or returned wrong data */
    atomic_int reads;       /* reads done */
};

static void *reader_main(void *p)
{
    struct reader_arg *a = p;
    uint64_t x = (uint64_t)(uintptr_t)a;
    while (!atomic_load(a->stop)) {
        const struct rec *r = &a->recs[splitmix(&x) % a->n];
        uint8_t *got = NULL;
        size_t len = 0;
        struct err e = {0};
        int rc = shard_store_get_alloc(a->s, &r->key, &got, &len, &e);
        uint8_t *want = malloc(r->len);
        if (want == NULL) {
            atomic_fetch_add(&a->bad, 1);
            break;
        }
        fill(want, r->len, r->seed);
        if (rc != 0 || len != r->len || memcmp(got, want, len) != 0) {
            fprintf(stderr, "reader: %s\n", e.msg);
            atomic_fetch_add(&a->bad, 1);
        }
        free(want);
        hbc_free(got);
        atomic_fetch_add(&a->reads, 1);
    }
    return NULL;
}

static void test_reads_run_during_puts_and_compaction(void **state)
{
    const char *dir = *state;
    struct shard_store_options o = {.segment_size = 256 * KiB, .max_open_segments = 2};
    struct shard_store *s = open_store(dir, &o);
    enum { N = 60 };
    struct rec r[N];
    for (size_t i = 0; i < N; i++) {
        r[i] = (struct rec){.key = make_key(11, i, 0), .len = 10 * KiB + i * 100, .seed = 1100 + i};
    }
    put_recs(s, r, N);
    /* Readers read the even records while odd ones are deleted and segments compacted. */
    struct rec keep[N / 2];
    struct shard_key del[N / 2];
    for (size_t i = 0; i < N / 2; i++) {
        keep[i] = r[2 * i];
        del[i] = r[2 * i + 1].key;
    }
    atomic_bool stop = false;
    struct reader_arg a[2];
    pthread_t th[2];
    for (int i = 0; i < 2; i++) {
        a[i] = (struct reader_arg){.s = s, .recs = keep, .n = N / 2, .stop = &stop};
        atomic_init(&a[i].bad, 0);
        atomic_init(&a[i].reads, 0);
        assert_int_equal(pthread_create(&th[i], NULL, reader_main, &a[i]), 0);
    }
    int res[N / 2];
    struct err e = {0};
    assert_ok(shard_store_delete(s, del, N / 2, res, &e), &e);
    for (int round = 0; round < 3; round++) {
        struct rec more[4];
        for (size_t i = 0; i < 4; i++) {
            more[i] = (struct rec){.key = make_key(12, round * 4 + i, 0),
                                   .len = 30 * KiB,
                                   .seed = 1200 + round * 4 + i};
        }
        put_recs(s, more, 4);
        struct shard_segment_info *v = NULL;
        size_t nv = 0;
        assert_ok(shard_store_segments(s, &v, &nv, &e), &e);
        for (size_t i = 0; i < nv; i++) {
            if (!v[i].open) {
                assert_ok(shard_store_compact(s, v[i].number, NULL, &e), &e);
            }
        }
        hbc_free(v);
    }
    atomic_store(&stop, true);
    for (int i = 0; i < 2; i++) {
        assert_int_equal(pthread_join(th[i], NULL), 0);
        assert_int_equal(atomic_load(&a[i].bad), 0);
        assert_true(atomic_load(&a[i].reads) > 0);
    }
    for (size_t i = 0; i < N / 2; i++) {
        check_rec(s, &keep[i]);
    }
    close_store(s);
}

/* ---- the put pipeline ---------------------------------------------------- */

/*
 * A test's fdatasync: once armed, the first call waits until the test
 * releases it and then succeeds or fails with EIO; every call is counted.
 */
struct sync_gate {
    pthread_mutex_t mu;  /* guards the fields below */
    pthread_cond_t cond; /* signalled on every change */
    bool armed;          /* the next call is held */
    bool holding;        /* a call is held now */
    bool released;       /* the held call may go on */
    bool fail;           /* the held call fails with EIO */
    int calls;           /* calls so far */
};

static int gate_fdatasync(int fd, void *arg)
{
    struct sync_gate *g = arg;
    pthread_mutex_lock(&g->mu);
    g->calls++;
    bool held = g->armed;
    g->armed = false;
    if (held) {
        g->holding = true;
        pthread_cond_broadcast(&g->cond);
        while (!g->released) {
            pthread_cond_wait(&g->cond, &g->mu);
        }
        g->holding = false;
    }
    bool fail = held && g->fail;
    pthread_mutex_unlock(&g->mu);
    if (fail) {
        errno = EIO;
        return -1;
    }
    return fdatasync(fd);
}

static void gate_init(struct sync_gate *g, bool fail)
{
    memset(g, 0, sizeof *g);
    pthread_mutex_init(&g->mu, NULL);
    pthread_cond_init(&g->cond, NULL);
    g->armed = true;
    g->fail = fail;
}

/* Wait (at most a minute) until a put is held in its fdatasync. */
static void gate_wait_holding(struct sync_gate *g)
{
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += 60;
    pthread_mutex_lock(&g->mu);
    int rc = 0;
    while (!g->holding && rc == 0) {
        rc = pthread_cond_timedwait(&g->cond, &g->mu, &until);
    }
    bool holding = g->holding;
    pthread_mutex_unlock(&g->mu);
    assert_true(holding);
}

static void gate_release(struct sync_gate *g)
{
    pthread_mutex_lock(&g->mu);
    g->released = true;
    pthread_cond_broadcast(&g->cond);
    pthread_mutex_unlock(&g->mu);
}

static void gate_destroy(struct sync_gate *g)
{
    pthread_mutex_destroy(&g->mu);
    pthread_cond_destroy(&g->cond);
}

/* One put_batch on its own thread. */
struct put_thread {
    pthread_t th;           /* the thread */
    struct shard_store *s;  /* the store */
    const struct rec *recs; /* what it puts */
    size_t n;               /* entries in recs */
    int rc;                 /* what put_batch returned */
    int res[8];             /* per-record results */
    atomic_bool done;       /* put_batch has returned */
    char msg[512];          /* its error message */
};

static void *put_thread_main(void *p)
{
    struct put_thread *t = p;
    struct shard_put puts[8];
    for (size_t i = 0; i < t->n; i++) {
        puts[i] = (struct shard_put){
            .key = t->recs[i].key, .data = rec_data(&t->recs[i]), .len = t->recs[i].len};
    }
    struct err e = {0};
    t->rc = shard_store_put_batch(t->s, puts, t->n, t->res, &e);
    snprintf(t->msg, sizeof t->msg, "%s", e.msg);
    for (size_t i = 0; i < t->n; i++) {
        free((void *)puts[i].data);
    }
    atomic_store(&t->done, true);
    return NULL;
}

static void put_thread_start(struct put_thread *t, struct shard_store *s, const struct rec *recs,
                             size_t n)
{
    assert_true(n <= 8);
    memset(t, 0, sizeof *t);
    t->s = s;
    t->recs = recs;
    t->n = n;
    atomic_init(&t->done, false);
    assert_int_equal(pthread_create(&t->th, NULL, put_thread_main, t), 0);
}

/* Wait (at most a minute) until a put has appended and waits for the sync stage. */
static void wait_pipelined(struct shard_store *s, uint64_t want)
{
    struct shard_store_stats st;
    for (int i = 0; i < 60000; i++) {
        shard_store_stats(s, &st);
        if (st.pipelined_puts >= want) {
            return;
        }
        struct timespec ts = {0, 1000000};
        nanosleep(&ts, NULL);
    }
    fail_msg("no put reached the sync stage behind another");
}

static bool is_stored(struct shard_store *s, const struct rec *r)
{
    struct shard_info info;
    struct err e = {0};
    int rc = shard_store_lookup(s, &r->key, &info, &e);
    assert_true(rc == 0 || rc == HBC_ENOTFOUND);
    return rc == 0;
}

static void test_put_behind_a_sync_is_acknowledged_after_its_own(void **state)
{
    const char *dir = *state;
    struct shard_store *s = open_store(dir, NULL);
    struct rec a[2] = {{make_key(20, 1, 0), 40 * KiB, 2001}, {make_key(20, 2, 0), 3 * KiB, 2002}};
    struct rec b[2] = {{make_key(21, 1, 0), 50 * KiB, 2101}, {make_key(21, 2, 1), 7, 2102}};
    struct sync_gate g;
    gate_init(&g, false);
    shard_store_set_fdatasync(s, gate_fdatasync, &g);
    struct put_thread ta, tb;
    put_thread_start(&ta, s, a, 2);
    gate_wait_holding(&g);
    /* a is in its sync: b appends behind it, then must wait. */
    put_thread_start(&tb, s, b, 2);
    wait_pipelined(s, 1);
    assert_false(atomic_load(&tb.done));
    assert_false(atomic_load(&ta.done));
    for (int i = 0; i < 2; i++) {
        assert_false(is_stored(s, &a[i]));
        assert_false(is_stored(s, &b[i]));
    }
    gate_release(&g);
    assert_int_equal(pthread_join(ta.th, NULL), 0);
    assert_int_equal(pthread_join(tb.th, NULL), 0);
    assert_int_equal(ta.rc, 0);
    assert_int_equal(tb.rc, 0);
    for (int i = 0; i < 2; i++) {
        assert_int_equal(ta.res[i], 0);
        assert_int_equal(tb.res[i], 0);
        check_rec(s, &a[i]);
        check_rec(s, &b[i]);
    }
    /* Each put synced its own records: two fdatasyncs, two index batches. */
    struct shard_store_stats st;
    shard_store_stats(s, &st);
    assert_int_equal(g.calls, 2);
    assert_int_equal(st.put_batches, 2);
    assert_int_equal(st.shard_count, 4);
    assert_int_equal(st.reappended_puts, 0);
    shard_store_set_fdatasync(s, NULL, NULL);
    close_store(s);
    gate_destroy(&g);
    s = open_store(dir, NULL);
    for (int i = 0; i < 2; i++) {
        check_rec(s, &a[i]);
        check_rec(s, &b[i]);
    }
    shard_store_stats(s, &st);
    assert_int_equal(st.recovered_cut_bytes, 0);
    close_store(s);
}

static void test_failed_sync_fails_only_its_own_puts(void **state)
{
    const char *dir = *state;
    struct shard_store *s = open_store(dir, NULL);
    struct rec first = {make_key(22, 0, 0), 20 * KiB, 2200};
    put_recs(s, &first, 1);
    uint64_t seg_before = open_segment(s);
    struct rec a[2] = {{make_key(22, 1, 0), 40 * KiB, 2201}, {make_key(22, 2, 0), 1, 2202}};
    struct rec b[2] = {{make_key(23, 1, 0), 30 * KiB, 2301}, {make_key(23, 2, 0), 5 * KiB, 2302}};
    struct sync_gate g;
    gate_init(&g, true);
    shard_store_set_fdatasync(s, gate_fdatasync, &g);
    struct put_thread ta, tb;
    put_thread_start(&ta, s, a, 2);
    gate_wait_holding(&g);
    /* b appends behind a in the same segment; then a's sync fails. */
    put_thread_start(&tb, s, b, 2);
    wait_pipelined(s, 1);
    gate_release(&g);
    assert_int_equal(pthread_join(ta.th, NULL), 0);
    assert_int_equal(pthread_join(tb.th, NULL), 0);
    assert_int_equal(ta.rc, -EIO);
    assert_non_null(strstr(ta.msg, "fdatasync"));
    assert_int_equal(tb.rc, 0);
    for (int i = 0; i < 2; i++) {
        assert_int_equal(ta.res[i], -EIO);
        assert_int_equal(tb.res[i], 0);
        check_gone(s, &a[i]);
        check_rec(s, &b[i]);
    }
    check_rec(s, &first);
    /* b was appended again, to a new segment: the failed one takes no more appends. */
    struct shard_store_stats st;
    shard_store_stats(s, &st);
    assert_int_equal(st.reappended_puts, 1);
    assert_int_equal(st.shard_count, 3);
    struct shard_info info;
    struct err e = {0};
    assert_ok(shard_store_lookup(s, &b[0].key, &info, &e), &e);
    assert_true(info.segment > seg_before);
    assert_true(open_segment(s) != seg_before);
    /* The failed put's bytes were cut off its segment. */
    char path[512];
    segment_path(dir, seg_before, path, sizeof path);
    assert_int_equal(file_size(path), (uint64_t)SHARD_STORE_RECORD_HEADER_LEN + first.len);
    /* Later puts go through, and everything is as acknowledged after a reopen. */
    struct rec c = {make_key(24, 1, 0), 9 * KiB, 2401};
    put_recs(s, &c, 1);
    shard_store_set_fdatasync(s, NULL, NULL);
    close_store(s);
    gate_destroy(&g);
    s = open_store(dir, NULL);
    check_rec(s, &first);
    check_rec(s, &c);
    for (int i = 0; i < 2; i++) {
        check_gone(s, &a[i]);
        check_rec(s, &b[i]);
    }
    shard_store_stats(s, &st);
    assert_int_equal(st.shard_count, 4);
    assert_int_equal(st.recovered_cut_bytes, 0);
    close_store(s);
}

/* A put of a key the syncing put writes waits for its outcome instead of writing it twice. */
static void test_same_key_behind_a_sync_waits_for_it(void **state)
{
    const char *dir = *state;
    struct shard_store *s = open_store(dir, NULL);
    for (int failing = 0; failing < 2; failing++) {
        struct rec a = {make_key(25, (uint64_t)failing, 0), 12 * KiB, 2500u + (uint64_t)failing};
        struct sync_gate g;
        gate_init(&g, failing != 0);
        shard_store_set_fdatasync(s, gate_fdatasync, &g);
        struct put_thread ta, tb;
        put_thread_start(&ta, s, &a, 1);
        gate_wait_holding(&g);
        put_thread_start(&tb, s, &a, 1);
        /* Give b a moment to reach the wait (the outcome is the same if it has not). */
        struct timespec ts = {0, 20000000};
        nanosleep(&ts, NULL);
        assert_false(atomic_load(&tb.done));
        gate_release(&g);
        assert_int_equal(pthread_join(ta.th, NULL), 0);
        assert_int_equal(pthread_join(tb.th, NULL), 0);
        assert_int_equal(tb.rc, 0);
        if (failing) {
            assert_int_equal(ta.rc, -EIO);
            assert_int_equal(tb.res[0], 0); /* b stored it itself */
        } else {
            assert_int_equal(ta.rc, 0);
            assert_int_equal(tb.res[0], SHARD_STORE_ALREADY);
        }
        check_rec(s, &a);
        shard_store_set_fdatasync(s, NULL, NULL);
        gate_destroy(&g);
    }
    struct shard_store_stats st;
    shard_store_stats(s, &st);
    assert_int_equal(st.shard_count, 2);
    close_store(s);
    s = open_store(dir, NULL);
    shard_store_stats(s, &st);
    assert_int_equal(st.shard_count, 2);
    close_store(s);
}

/* Pages of bytes [from, to) of path (to: its size) in the page cache. */
static size_t resident_pages(const char *path, size_t from, size_t len)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    assert_true(fd >= 0);
    void *m = mmap(NULL, len, PROT_READ, MAP_SHARED, fd, 0);
    assert_true(m != MAP_FAILED);
    size_t page = (size_t)sysconf(_SC_PAGESIZE);
    size_t np = (len + page - 1) / page;
    unsigned char *vec = malloc(np);
    assert_non_null(vec);
    assert_int_equal(mincore(m, len, vec), 0);
    size_t n = 0;
    for (size_t i = from / page; i < np; i++) {
        n += vec[i] & 1;
    }
    free(vec);
    munmap(m, len);
    close(fd);
    return n;
}

/* Synced records leave the page cache unless cache_written asks to keep them. */
static void test_synced_records_leave_the_page_cache(void **state)
{
    const char *dir = *state;
    struct statfs fs;
    assert_int_equal(statfs(dir, &fs), 0);
    if (fs.f_type == TMPFS_MAGIC) {
        skip(); /* tmpfs pages are the file itself: nothing to drop */
    }
    for (int keep = 0; keep < 2; keep++) {
        struct shard_store_options o = {.cache_written = keep != 0};
        struct shard_store *s = open_store(dir, &o);
        struct rec r = {make_key(26, (uint64_t)keep, 0), 1 * MiB, 2600u + (uint64_t)keep};
        put_recs(s, &r, 1);
        struct shard_info info;
        struct err e = {0};
        assert_ok(shard_store_lookup(s, &r.key, &info, &e), &e);
        char path[512];
        segment_path(dir, info.segment, path, sizeof path);
        /* Only this record's pages: the one before was read back. */
        size_t len = (size_t)file_size(path);
        size_t page = (size_t)sysconf(_SC_PAGESIZE);
        size_t pages = (len + page - 1) / page - (size_t)info.offset / page;
        size_t resident = resident_pages(path, (size_t)info.offset, len);
        if (keep) {
            assert_int_equal(resident, pages);
        } else {
            assert_true(resident <= 1); /* at most the page the next record continues */
        }
        check_rec(s, &r); /* and it reads back from the disk */
        close_store(s);
    }
}

/* ---- allocation failures ------------------------------------------------- */

static void test_allocation_failures_are_reported(void **state)
{
    const char *dir = *state;
    char path[256];
    snprintf(path, sizeof path, "%s/store", dir);
    struct rec r = {.key = make_key(13, 1, 0), .len = 1000, .seed = 13};
    uint8_t *data = rec_data(&r);
    int succeeded = 0;
    for (long n = 0; n < 200 && !succeeded; n++) {
        struct shard_store *s = NULL;
        struct err e = {0};
        alloc_fault_after(n);
        int rc = shard_store_open(path, NULL, &s, &e);
        if (rc == 0) {
            struct shard_put p = {.key = r.key, .data = data, .len = r.len};
            int res;
            rc = shard_store_put_batch(s, &p, 1, &res, &e);
            uint8_t *got = NULL;
            size_t len;
            if (rc == 0) {
                rc = shard_store_get_alloc(s, &r.key, &got, &len, &e);
                hbc_free(got);
            }
            alloc_fault_reset();
            assert_ok(shard_store_close(s, &e), &e);
            succeeded = rc == 0;
        }
        alloc_fault_reset();
        assert_true(rc == 0 || rc == HBC_ENOMEM);
    }
    assert_true(succeeded);
    struct shard_store *s = open_store(dir, NULL);
    check_rec(s, &r);
    close_store(s);
    free(data);
}

int main(int argc, char **argv)
{
    log_init_from_env();
    if ((argc == 5 || argc == 6) && strcmp(argv[1], "--crash-child") == 0) {
        return crash_child(argv[2], atoi(argv[3]), atoi(argv[4]), argc == 6 ? atoi(argv[5]) : 1);
    }
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_round_trip_across_segments_and_reopen, setup_tmpdir,
                                        teardown_tmpdir),
        cmocka_unit_test_setup_teardown(test_reput_is_idempotent_and_conflict_keeps_original,
                                        setup_tmpdir, teardown_tmpdir),
        cmocka_unit_test_setup_teardown(test_torn_tail_is_cut_on_open, setup_tmpdir,
                                        teardown_tmpdir),
        cmocka_unit_test_setup_teardown(test_crash_loses_nothing_acknowledged, setup_tmpdir,
                                        teardown_tmpdir),
        cmocka_unit_test_setup_teardown(test_crash_with_pipelined_puts_loses_nothing_acknowledged,
                                        setup_tmpdir, teardown_tmpdir),
        cmocka_unit_test_setup_teardown(test_corrupt_record_is_never_served, setup_tmpdir,
                                        teardown_tmpdir),
        cmocka_unit_test_setup_teardown(test_get_batch_nowait, setup_tmpdir, teardown_tmpdir),
        cmocka_unit_test_setup_teardown(test_delete_and_compact_reclaim_space, setup_tmpdir,
                                        teardown_tmpdir),
        cmocka_unit_test_setup_teardown(test_oversized_record_rejected, setup_tmpdir,
                                        teardown_tmpdir),
        cmocka_unit_test_setup_teardown(test_exists_by_chunk, setup_tmpdir, teardown_tmpdir),
        cmocka_unit_test_setup_teardown(test_write_error_indexes_nothing, setup_tmpdir,
                                        teardown_tmpdir),
        cmocka_unit_test_setup_teardown(test_reads_run_during_puts_and_compaction, setup_tmpdir,
                                        teardown_tmpdir),
        cmocka_unit_test_setup_teardown(test_allocation_failures_are_reported, setup_tmpdir,
                                        teardown_tmpdir),
        cmocka_unit_test_setup_teardown(test_put_behind_a_sync_is_acknowledged_after_its_own,
                                        setup_tmpdir, teardown_tmpdir),
        cmocka_unit_test_setup_teardown(test_failed_sync_fails_only_its_own_puts, setup_tmpdir,
                                        teardown_tmpdir),
        cmocka_unit_test_setup_teardown(test_same_key_behind_a_sync_waits_for_it, setup_tmpdir,
                                        teardown_tmpdir),
        cmocka_unit_test_setup_teardown(test_synced_records_leave_the_page_cache, setup_tmpdir,
                                        teardown_tmpdir),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
