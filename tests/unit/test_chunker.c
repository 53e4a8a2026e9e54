/* Unit tests for the content-defined chunker: the frozen cut rule, feed sizes, resynchronisation.
 */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <openssl/evp.h>

#include "common/alloc.h"
#include "common/chunker.h"
#include "common/err.h"

#define KIB ((size_t)1024)
#define MIB (1024 * KIB)

/* Small sizes so that short inputs hold many chunks and every rule fires. */
static const struct chunker_params small_params = {4 * KIB, 16 * KIB, 64 * KIB};

/* ---- Deterministic data ---- */

/* xorshift64: fast, seeded, the same on every machine. */
static uint64_t rng_next(uint64_t *s)
{
    uint64_t x = *s;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    *s = x;
    return x;
}

static void fill_random(uint8_t *p, size_t n, uint64_t *s)
{
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        uint64_t v = rng_next(s);
        memcpy(p + i, &v, 8);
    }
    for (; i < n; i++) {
        p[i] = (uint8_t)rng_next(s);
    }
}

static uint8_t *random_buffer(size_t n, uint64_t seed)
{
    uint8_t *p = malloc(n + 1);
    assert_non_null(p);
    fill_random(p, n, &seed);
    return p;
}

/* A uniform value in [lo, hi). */
static size_t rng_range(uint64_t *s, size_t lo, size_t hi)
{
    return lo + (size_t)(rng_next(s) % (hi - lo));
}

/*
 * Noise with zero runs of every length that matters to the zero-run rule:
 * around 64 (the long-run threshold), around multiples of avg (the lattice
 * step) and past max.
 */
static uint8_t *mixed_buffer(size_t n, size_t avg, uint64_t seed)
{
    uint8_t *p = random_buffer(n, seed);
    const size_t special[] = {1,   63,      64,       65,       127,         128,         avg - 1,
                              avg, avg + 1, avg + 63, avg + 64, 2 * avg + 1, 5 * avg + 7, 9 * avg};
    uint64_t s = seed ^ 0xabcdef;
    size_t off = rng_range(&s, 0, 3 * avg);
    for (size_t k = 0; off < n; k++) {
        size_t run = k % 3 == 2 ? rng_range(&s, 1, 12 * avg)
                                : special[k % (sizeof special / sizeof special[0])];
        if (run > n - off) {
            run = n - off;
        }
        memset(p + off, 0, run);
        off += run + rng_range(&s, 1, 3 * avg);
    }
    return p;
}

/*
 * Imaging-like data (a CT series with black borders): zero runs of 4 KiB to
 * 8 MiB between noise of 1 KiB to 4 MiB (log-uniform, most of it short),
 * noise being 12-bit little-endian samples. segs[] receives each segment's
 * start; zero runs are the even segments.
 */
static size_t imaging_fill(uint8_t *p, size_t n, uint64_t seed, size_t *segs, size_t max_segs)
{
    uint64_t s = seed;
    size_t off = 0;
    size_t k = 0;
    while (off < n) {
        size_t len;
        if (k % 2 == 0) {
            len = rng_range(&s, 4 * KIB, 8 * MIB);
        } else {
            double u = (double)(rng_next(&s) >> 11) / 9007199254740992.0;
            len = (size_t)exp(log(1024.0) + u * (log(4.0 * MIB) - log(1024.0)));
        }
        if (len > n - off) {
            len = n - off;
        }
        assert_true(k < max_segs);
        segs[k] = off;
        if (k % 2 == 0) {
            memset(p + off, 0, len);
        } else {
            fill_random(p + off, len, &s);
            for (size_t i = off + 1; i < off + len; i += 2) {
                p[i] &= 0x0f;
            }
        }
        off += len;
        k++;
    }
    return k;
}

/* ---- Ways to chunk ---- */

struct ends {
    uint64_t *v; /* chunk end offsets */
    size_t n;    /* how many */
};

static struct ends split_whole(const struct chunker_params *p, const uint8_t *data, size_t len)
{
    struct ends r;
    struct err e;
    assert_int_equal(chunker_split(p, data, len, &r.v, &r.n, &e), 0);
    return r;
}

/*
 * Stream data through one chunker in feeds of feed bytes (0: random sizes
 * from 0 to 2 MiB, some of them empty), as a backup pipeline reading blocks
 * would; check each reported chunk length against the offsets.
 */
static struct ends split_fed(const struct chunker_params *p, const uint8_t *data, size_t len,
                             size_t feed, uint64_t seed)
{
    struct chunker c;
    assert_int_equal(chunker_init(&c, p, NULL), 0);
    struct ends r = {malloc((len / p->min_size + 2) * sizeof(uint64_t)), 0};
    assert_non_null(r.v);
    uint64_t prev_end = 0;
    size_t off = 0;
    while (off < len) {
        size_t n = feed;
        if (feed == 0) {
            n = rng_next(&seed) % 4 == 0 ? 0 : (size_t)(rng_next(&seed) % (2 * MIB));
        }
        if (n > len - off) {
            n = len - off;
        }
        const uint8_t *b = data + off;
        size_t left = n;
        size_t used;
        uint64_t chunk_len;
        while (chunker_next(&c, b, left, &used, &chunk_len)) {
            assert_true(used <= left);
            b += used;
            left -= used;
            uint64_t end = (uint64_t)(b - data);
            assert_int_equal(chunk_len, end - prev_end);
            assert_int_equal(chunker_chunk_start(&c), end);
            r.v[r.n++] = end;
            prev_end = end;
        }
        assert_int_equal(chunk_len, 0);
        assert_int_equal(used, left);
        off += n;
        assert_int_equal(chunker_offset(&c), off);
    }
    uint64_t last = chunker_finish(&c);
    assert_int_equal(last, len - prev_end);
    if (last > 0) {
        r.v[r.n++] = len;
    }
    return r;
}

/*
 * The cut rule of chunker.h evaluated literally, one boundary at a time, with
 * no skipping: an independent statement of the format that the fast code
 * must match.
 */
static struct ends split_reference(const struct chunker_params *p, const uint8_t *x, size_t len)
{
    struct ends r = {malloc((len / p->min_size + 2) * sizeof(uint64_t)), 0};
    assert_non_null(r.v);
    uint64_t small = UINT64_MAX / (4 * p->avg_size);
    uint64_t large = 4 * (UINT64_MAX / p->avg_size);
    uint64_t h = 0;
    uint64_t z = 0;
    size_t start = 0;
    for (size_t b = 1; b <= len; b++) {
        h = 2 * h + chunker_gear[x[b - 1]];
        z = x[b - 1] == 0 ? z + 1 : 0;
        size_t n = b - start;
        if (n < p->min_size) {
            continue;
        }
        bool hash = h != 0 && h < (n < p->avg_size ? small : large);
        bool lattice = z >= 64 && (z - 64) % p->avg_size == 0 && (z > 64 || n >= p->avg_size);
        bool run_end = z >= 64 && b < len && x[b] != 0 && n >= p->avg_size;
        if (hash || lattice || run_end || n == p->max_size) {
            r.v[r.n++] = b;
            start = b;
        }
    }
    if (start < len) {
        r.v[r.n++] = len;
    }
    return r;
}

static void assert_ends_equal(struct ends a, struct ends b)
{
    assert_int_equal(a.n, b.n);
    for (size_t i = 0; i < a.n; i++) {
        if (a.v[i] != b.v[i]) {
            fail_msg("chunk %zu ends at %llu, expected %llu", i, (unsigned long long)a.v[i],
                     (unsigned long long)b.v[i]);
        }
    }
}

static void ends_free(struct ends *r)
{
    free(r->v);
    r->v = NULL;
}

/* Every chunk within [min, max], but the last, which is at least 1 and at most max. */
static void assert_sizes(const struct chunker_params *p, struct ends r, size_t len)
{
    uint64_t prev = 0;
    assert_true(r.n > 0);
    for (size_t i = 0; i < r.n; i++) {
        uint64_t n = r.v[i] - prev;
        if (i + 1 < r.n) {
            if (n < p->min_size || n > p->max_size) {
                fail_msg("chunk %zu of %zu has %llu bytes", i, r.n, (unsigned long long)n);
            }
        } else {
            assert_true(n >= 1 && n <= p->max_size);
        }
        prev = r.v[i];
    }
    assert_int_equal(prev, len);
}

/* ---- Comparing versions by chunk content ---- */

struct digest {
    uint8_t d[32]; /* SHA-256 of a chunk */
};

static int digest_cmp(const void *a, const void *b)
{
    return memcmp(a, b, sizeof(struct digest));
}

static struct digest *chunk_digests(const uint8_t *data, struct ends r)
{
    struct digest *d = malloc(r.n * sizeof *d + 1);
    assert_non_null(d);
    uint64_t prev = 0;
    for (size_t i = 0; i < r.n; i++) {
        unsigned int len = 0;
        assert_int_equal(EVP_Digest(data + prev, r.v[i] - prev, d[i].d, &len, EVP_sha256(), NULL),
                         1);
        prev = r.v[i];
    }
    return d;
}

/* Bytes of the new version in chunks whose content the old version does not have. */
static uint64_t new_bytes(struct digest *old, size_t old_n, const uint8_t *data, struct ends r)
{
    qsort(old, old_n, sizeof *old, digest_cmp);
    struct digest *d = chunk_digests(data, r);
    uint64_t prev = 0;
    uint64_t fresh = 0;
    for (size_t i = 0; i < r.n; i++) {
        if (bsearch(&d[i], old, old_n, sizeof *old, digest_cmp) == NULL) {
            fresh += r.v[i] - prev;
        }
        prev = r.v[i];
    }
    free(d);
    return fresh;
}

/* ---- Tests ---- */

/* G is SplitMix64 from "HBC-GEAR" with G[0] = 0, as chunker.h says; it may never change. */
static void test_gear_table_is_the_documented_one(void **state)
{
    (void)state;
    uint64_t s = 0x4842432d47454152ULL;
    assert_int_equal(chunker_gear[0], 0);
    for (int b = 1; b < 256; b++) {
        s += 0x9e3779b97f4a7c15ULL;
        uint64_t z = s;
        z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
        z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
        z ^= z >> 31;
        assert_int_equal(chunker_gear[b], z);
        for (int a = 0; a < b; a++) {
            assert_int_not_equal(chunker_gear[a], chunker_gear[b]);
        }
    }
}

/*
 * Stored data was cut with this rule: boundaries of a fixed input with the
 * default sizes, pinned. If this fails, the change would break deduplication
 * against every existing backup.
 */
static void test_default_boundaries_are_pinned(void **state)
{
    (void)state;
    static const uint64_t expected[] = {
        1115226,  1542785,  2139462,  3418821,  4562129,  5634136,  7607170,  8655746,  9704322,
        10752898, 11801474, 12850050, 13898626, 14947202, 16850729, 18189987, 19284008, 20689824,
        21905393, 23803918, 24852494, 29046798, 31457344, 32755889, 33051893, 33554432,
    };
    size_t len = 32 * MIB;
    uint8_t *data = mixed_buffer(len, CHUNKER_AVG_DEFAULT, 2024);
    /* A run of one nonzero byte keeps the hash constant and nonzero: cuts at max. */
    memset(data + 24 * MIB, 0xff, 6 * MIB);
    struct ends r = split_whole(NULL, data, len);
    if (getenv("HBC_PRINT_PINNED") != NULL) {
        for (size_t i = 0; i < r.n; i++) {
            printf("%llu,%s", (unsigned long long)r.v[i], i % 6 == 5 ? "\n" : " ");
        }
        printf("\n");
    }
    struct ends want = {(uint64_t *)expected, sizeof expected / sizeof expected[0]};
    assert_ends_equal(r, want);
    hbc_free(r.v);
    free(data);
}

/* The optimised chunker cuts exactly where the literal rule says, zero runs included. */
static void test_matches_the_literal_rule(void **state)
{
    (void)state;
    struct chunker_params def;
    chunker_params_default(&def);
    struct {
        const struct chunker_params *p;
        size_t len;
        uint64_t seed;
    } cases[] = {
        {&small_params, 6 * MIB, 1},
        {&small_params, 6 * MIB, 2},
        {&def, 40 * MIB, 3},
    };
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        uint8_t *data = mixed_buffer(cases[k].len, cases[k].p->avg_size, cases[k].seed);
        struct ends got = split_whole(cases[k].p, data, cases[k].len);
        struct ends want = split_reference(cases[k].p, data, cases[k].len);
        assert_ends_equal(got, want);
        assert_sizes(cases[k].p, got, cases[k].len);
        hbc_free(got.v);
        ends_free(&want);
        free(data);
    }
}

/* A stream of zeros is cut on the lattice: avg + 64, then every avg. */
static void test_zeros_fall_on_the_lattice(void **state)
{
    (void)state;
    size_t len = 10 * MIB + 5;
    uint8_t *data = calloc(1, len);
    assert_non_null(data);
    struct ends r = split_whole(NULL, data, len);
    assert_int_equal(r.n, 10);
    for (size_t i = 0; i + 1 < r.n; i++) {
        assert_int_equal(r.v[i], (i + 1) * MIB + 64);
    }
    assert_int_equal(r.v[r.n - 1], len);
    hbc_free(r.v);
    free(data);
}

/* Test 1: the same boundaries whatever the feed sizes. */
static void test_feed_sizes_do_not_matter(void **state)
{
    (void)state;
    /* Byte by byte, on a smaller input with small sizes. */
    size_t small_len = 3 * MIB;
    uint8_t *small = mixed_buffer(small_len, small_params.avg_size, 11);
    struct ends whole = split_whole(&small_params, small, small_len);
    assert_true(whole.n > 50);
    const size_t small_feeds[] = {1, 7, 4096, 0};
    for (size_t k = 0; k < sizeof small_feeds / sizeof small_feeds[0]; k++) {
        struct ends fed = split_fed(&small_params, small, small_len, small_feeds[k], 5 + k);
        assert_ends_equal(fed, whole);
        ends_free(&fed);
    }
    hbc_free(whole.v);
    free(small);

    /* Default sizes on noise with long zero runs, and on plain noise. */
    size_t len = 48 * MIB;
    for (int kind = 0; kind < 2; kind++) {
        uint8_t *data =
            kind == 0 ? mixed_buffer(len, CHUNKER_AVG_DEFAULT, 12) : random_buffer(len, 13);
        whole = split_whole(NULL, data, len);
        struct chunker_params def;
        chunker_params_default(&def);
        const size_t feeds[] = {7, 4096, MIB + 3, 8 * MIB, 0};
        for (size_t k = 0; k < sizeof feeds / sizeof feeds[0]; k++) {
            struct ends fed = split_fed(&def, data, len, feeds[k], 17 + k);
            assert_ends_equal(fed, whole);
            ends_free(&fed);
        }
        hbc_free(whole.v);
        free(data);
    }
}

/* Test 2: one byte inserted near the start changes only the chunk around it. */
static void test_insert_keeps_later_chunks(void **state)
{
    (void)state;
    size_t len = 64 * MIB;
    uint8_t *old = random_buffer(len, 21);
    struct ends r_old = split_whole(NULL, old, len);
    struct digest *d_old = chunk_digests(old, r_old);

    uint8_t *edited = malloc(len + 1);
    assert_non_null(edited);
    memcpy(edited, old, 1000);
    edited[1000] = 0x5a;
    memcpy(edited + 1001, old + 1000, len - 1000);
    struct ends r_new = split_whole(NULL, edited, len + 1);
    uint64_t fresh = new_bytes(d_old, r_old.n, edited, r_new);
    double kept = 100.0 * (double)(len + 1 - fresh) / (double)(len + 1);
    printf("insert at 1000 into 64 MiB of noise: %zu chunks (mean %.0f KiB), %.2f%% of bytes "
           "in unchanged chunks\n",
           r_new.n, (double)len / KIB / (double)r_new.n, kept);
    assert_true(kept >= 95.0);
    /* The cut after the edit moved by exactly the inserted byte. */
    assert_int_equal(r_new.v[1], r_old.v[1] + 1);

    hbc_free(r_old.v);
    hbc_free(r_new.v);
    free(d_old);
    free(old);
    free(edited);
}

/* Test 3: chunk sizes stay within [min, max] on every kind of data. */
static void test_chunk_sizes_within_bounds(void **state)
{
    (void)state;
    struct chunker_params def;
    chunker_params_default(&def);
    size_t len = 64 * MIB + 12345;
    uint8_t *data = random_buffer(len, 31);
    struct ends r = split_whole(NULL, data, len);
    assert_sizes(&def, r, len);
    /* The normalised rule keeps the mean near avg (within a factor of 1.5). */
    double mean = (double)len / (double)r.n;
    assert_true(mean > CHUNKER_AVG_DEFAULT / 1.5 && mean < CHUNKER_AVG_DEFAULT * 1.5);
    hbc_free(r.v);
    free(data);

    data = mixed_buffer(len, def.avg_size, 32);
    r = split_whole(NULL, data, len);
    assert_sizes(&def, r, len);
    hbc_free(r.v);
    free(data);

    data = mixed_buffer(2 * MIB, small_params.avg_size, 33);
    r = split_whole(&small_params, data, 2 * MIB);
    assert_sizes(&small_params, r, 2 * MIB);
    hbc_free(r.v);
    free(data);

    /* Short streams: one chunk; empty: none. */
    data = random_buffer(1000, 34);
    r = split_whole(NULL, data, 1000);
    assert_int_equal(r.n, 1);
    assert_int_equal(r.v[0], 1000);
    hbc_free(r.v);
    r = split_whole(NULL, data, 0);
    assert_int_equal(r.n, 0);
    assert_null(r.v);
    free(data);
}

/*
 * Test 4: an imaging-like file edited in place at two places: the chunks of
 * the new version that the old one lacks cover little more than the edits.
 */
static void test_imaging_edit_resynchronises(void **state)
{
    (void)state;
    size_t len = 200 * 1000 * 1000;
    uint8_t *data = malloc(len);
    assert_non_null(data);
    size_t segs[1000];
    size_t nsegs = imaging_fill(data, len, 41, segs, 1000);

    struct chunker_params def;
    chunker_params_default(&def);
    struct ends r_old = split_whole(NULL, data, len);
    assert_sizes(&def, r_old, len);
    struct digest *d_old = chunk_digests(data, r_old);

    /* One edit inside a noise region past 50 MB, one straddling zeros and noise past 120 MB. */
    size_t inside = 0;
    size_t straddle = 0;
    for (size_t k = 1; k + 1 < nsegs; k += 2) {
        if (inside == 0 && segs[k] > 50 * MIB && segs[k + 1] - segs[k] > 3 * MIB / 2) {
            inside = segs[k] + (segs[k + 1] - segs[k] - MIB) / 2;
        }
        if (straddle == 0 && segs[k] > 120 * MIB && segs[k] - segs[k - 1] > MIB) {
            straddle = segs[k] - MIB / 2;
        }
    }
    assert_true(inside != 0 && straddle != 0);
    uint64_t s = 42;
    fill_random(data + inside, MIB, &s);
    fill_random(data + straddle, MIB, &s);

    struct ends r_new = split_whole(NULL, data, len);
    assert_sizes(&def, r_new, len);
    uint64_t fresh = new_bytes(d_old, r_old.n, data, r_new);
    printf("imaging-like 200 MB, %zu segments, %zu chunks (mean %.0f KiB), two 1 MiB edits: "
           "%.2f MiB in new chunks\n",
           nsegs, r_new.n, (double)len / KIB / (double)r_new.n, (double)fresh / MIB);
    assert_true(fresh >= 2 * MIB);
    assert_true(fresh <= 12 * MIB);

    hbc_free(r_old.v);
    hbc_free(r_new.v);
    free(d_old);
    free(data);
}

/* Test 5: bad sizes are refused with HBC_EINVAL and a message. */
static void test_bad_params_rejected(void **state)
{
    (void)state;
    const struct chunker_params bad[] = {
        {0, 1 * MIB, 4 * MIB},                  /* min below the floor */
        {512, 4 * KIB, 16 * KIB},               /* min below the floor */
        {MIB, MIB, 4 * MIB},                    /* avg not above min */
        {MIB, 512 * KIB, 4 * MIB},              /* avg below min */
        {256 * KIB, 4 * MIB, 4 * MIB},          /* max not above avg */
        {256 * KIB, MIB, 1200 * KIB},           /* max below min + avg */
        {256 * KIB, MIB, 128 * MIB},            /* max above the ceiling */
        {SIZE_MAX / 2, SIZE_MAX - 1, SIZE_MAX}, /* absurd */
    };
    for (size_t k = 0; k < sizeof bad / sizeof bad[0]; k++) {
        struct err e;
        err_clear(&e);
        assert_int_equal(chunker_params_check(&bad[k], &e), HBC_EINVAL);
        assert_int_equal(e.code, HBC_EINVAL);
        assert_non_null(strstr(e.msg, "chunker params"));

        struct chunker c;
        memset(&c, 0x77, sizeof c);
        assert_int_equal(chunker_init(&c, &bad[k], NULL), HBC_EINVAL);
        assert_int_equal(c.pos, 0x7777777777777777ULL);

        uint64_t *ends = NULL;
        size_t n = 0;
        assert_int_equal(chunker_split(&bad[k], "abc", 3, &ends, &n, NULL), HBC_EINVAL);
    }
    struct err e;
    assert_int_equal(chunker_params_check(NULL, &e), HBC_EINVAL);

    /* The defaults and the edges of the bounds are fine. */
    struct chunker_params ok;
    chunker_params_default(&ok);
    assert_int_equal(chunker_params_check(&ok, NULL), 0);
    assert_int_equal(ok.min_size, 256 * KIB);
    assert_int_equal(ok.avg_size, MIB);
    assert_int_equal(ok.max_size, 4 * MIB);
    ok = (struct chunker_params){CHUNKER_MIN_FLOOR, 2 * KIB, 3 * KIB};
    assert_int_equal(chunker_params_check(&ok, NULL), 0);
    ok = (struct chunker_params){16 * MIB, 32 * MIB, CHUNKER_MAX_CEIL};
    assert_int_equal(chunker_params_check(&ok, NULL), 0);
}

/* chunker_split reports an allocation failure instead of crashing. */
static void test_split_out_of_memory(void **state)
{
    (void)state;
    uint8_t *data = random_buffer(MIB, 51);
    uint64_t *ends = NULL;
    size_t n = 0;
    struct err e;
    err_clear(&e);
    alloc_fault_after(0);
    int rc = chunker_split(NULL, data, MIB, &ends, &n, &e);
    alloc_fault_reset();
    assert_int_equal(rc, HBC_ENOMEM);
    assert_int_equal(e.code, HBC_ENOMEM);
    assert_null(ends);
    free(data);
}

/* chunker_reset and chunker_finish start a new stream: the same input gives the same cuts. */
static void test_reuse_after_finish(void **state)
{
    (void)state;
    size_t len = 2 * MIB;
    uint8_t *data = mixed_buffer(len, small_params.avg_size, 61);
    struct ends whole = split_whole(&small_params, data, len);
    struct chunker c;
    assert_int_equal(chunker_init(&c, &small_params, NULL), 0);
    size_t used;
    assert_true(chunker_next(&c, data, len, &used, NULL));
    chunker_reset(&c);
    for (int round = 0; round < 2; round++) {
        size_t off = 0;
        size_t n = 0;
        while (chunker_next(&c, data + off, len - off, &used, NULL)) {
            off += used;
            assert_true(n < whole.n);
            assert_int_equal(off, whole.v[n++]);
        }
        assert_int_equal(chunker_finish(&c), len - off);
        assert_int_equal(chunker_offset(&c), 0);
    }
    hbc_free(whole.v);
    free(data);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_gear_table_is_the_documented_one),
        cmocka_unit_test(test_default_boundaries_are_pinned),
        cmocka_unit_test(test_matches_the_literal_rule),
        cmocka_unit_test(test_zeros_fall_on_the_lattice),
        cmocka_unit_test(test_feed_sizes_do_not_matter),
        cmocka_unit_test(test_insert_keeps_later_chunks),
        cmocka_unit_test(test_chunk_sizes_within_bounds),
        cmocka_unit_test(test_imaging_edit_resynchronises),
        cmocka_unit_test(test_bad_params_rejected),
        cmocka_unit_test(test_split_out_of_memory),
        cmocka_unit_test(test_reuse_after_finish),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
