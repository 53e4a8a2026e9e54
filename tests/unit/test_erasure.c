/* Unit tests for Reed–Solomon erasure coding (common/erasure.c) and the shard format. */
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <openssl/evp.h>

#include "common/alloc.h"
#include "common/erasure.h"
#include "hbc.pb-c.h"

/* ------------------------------------------------------------------------ */
/* Seeded random data: HBC_TEST_SEED=n reproduces a run. */

static uint64_t rng_state = 0x48424345524153ULL;

static uint64_t rng_next(void)
{
    /* splitmix64 */
    uint64_t z = (rng_state += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

static void rng_fill(uint8_t *p, size_t n)
{
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        uint64_t v = rng_next();
        memcpy(p + i, &v, 8);
    }
    if (i < n) {
        uint64_t v = rng_next();
        memcpy(p + i, &v, n - i);
    }
}

static uint8_t *random_bytes(size_t n)
{
    uint8_t *p = malloc(n);
    assert_non_null(p);
    rng_fill(p, n);
    return p;
}

static int setup_seed(void **state)
{
    (void)state;
    const char *s = getenv("HBC_TEST_SEED");
    if (s != NULL) {
        rng_state = strtoull(s, NULL, 0);
    }
    print_message("erasure tests: HBC_TEST_SEED=%#llx\n", (unsigned long long)rng_state);
    return 0;
}

static const uint8_t vault_a[ERASURE_VAULT_ID_LEN] = "vault-aaaaaaaaaa";
static const uint8_t vault_b[ERASURE_VAULT_ID_LEN] = "vault-bbbbbbbbbb";
static const uint8_t chunk_a[ERASURE_CHUNK_ID_LEN] = "chunk-aaaaaaaaaaaaaaaaaaaaaaaaaa";
static const uint8_t chunk_b[ERASURE_CHUNK_ID_LEN] = "chunk-bbbbbbbbbbbbbbbbbbbbbbbbbb";

static unsigned popcount(uint32_t v)
{
    return (unsigned)__builtin_popcount(v);
}

/* A random set of `lost` distinct indices below n, as a bit mask. */
static uint32_t random_mask(unsigned n, unsigned lost)
{
    uint32_t mask = 0;
    while (popcount(mask) < lost) {
        mask |= UINT32_C(1) << (rng_next() % n);
    }
    return mask;
}

/* ------------------------------------------------------------------------ */
/* An encoded object whose shards were copied apart, as a reader receives them. */

struct coded {
    const struct erasure_scheme *s;      /* the scheme */
    uint8_t *object;                     /* the original object */
    size_t length;                       /* its length */
    size_t shard_length;                 /* bytes per shard */
    uint8_t *shards[ERASURE_MAX_SHARDS]; /* k+m separate copies of the shards */
    uint8_t *out;                        /* a buffer for the decoded object */
    uint8_t *rebuilt[ERASURE_MAX_M];     /* buffers for reconstructed shards */
};

static void coded_make(struct coded *c, unsigned k, unsigned m, size_t length)
{
    memset(c, 0, sizeof *c);
    assert_int_equal(erasure_scheme_get(k, m, &c->s, NULL), 0);
    c->object = random_bytes(length);
    c->length = length;
    struct erasure_stripe st = {0};
    struct err e;
    err_clear(&e);
    assert_int_equal(erasure_encode(c->s, c->object, length, &st, &e), 0);
    assert_int_equal(st.shard_length, erasure_shard_length(k, length));
    c->shard_length = st.shard_length;
    for (unsigned i = 0; i < k + m; i++) {
        c->shards[i] = malloc(c->shard_length);
        assert_non_null(c->shards[i]);
        memcpy(c->shards[i], st.shards[i], c->shard_length);
    }
    erasure_stripe_release(&st);
    c->out = malloc(length);
    assert_non_null(c->out);
    for (unsigned j = 0; j < m; j++) {
        c->rebuilt[j] = malloc(c->shard_length);
        assert_non_null(c->rebuilt[j]);
    }
}

static void coded_free(struct coded *c)
{
    for (unsigned i = 0; i < ERASURE_MAX_SHARDS; i++) {
        free(c->shards[i]);
    }
    for (unsigned j = 0; j < ERASURE_MAX_M; j++) {
        free(c->rebuilt[j]);
    }
    free(c->object);
    free(c->out);
}

/*
 * Lose the shards in mask; the object must decode to the exact bytes, and
 * every lost shard must be reconstructed exactly.
 */
static void check_lost(struct coded *c, uint32_t mask, bool reconstruct)
{
    unsigned k = c->s->k;
    unsigned n = k + c->s->m;
    const uint8_t *have[ERASURE_MAX_SHARDS];
    unsigned wanted[ERASURE_MAX_SHARDS];
    size_t count = 0;
    for (unsigned i = 0; i < n; i++) {
        bool lost = (mask >> i) & 1;
        have[i] = lost ? NULL : c->shards[i];
        if (lost) {
            wanted[count++] = i;
        }
    }
    struct err e;
    err_clear(&e);
    memset(c->out, (int)(0xA5 ^ mask), c->length);
    int rc = erasure_decode(c->s, c->length, have, c->out, &e);
    if (rc != 0 || memcmp(c->out, c->object, c->length) != 0) {
        print_error("RS(%u,%u) of %zu bytes, lost mask %#x: rc %d (%s), object %s\n", k, c->s->m,
                    c->length, mask, rc, e.msg,
                    memcmp(c->out, c->object, c->length) ? "differs" : "matches");
        fail();
    }
    if (!reconstruct || count == 0) {
        return;
    }
    for (size_t t = 0; t < count; t++) {
        memset(c->rebuilt[t], 0x5A, c->shard_length);
    }
    rc = erasure_reconstruct(c->s, c->shard_length, have, wanted, count, c->rebuilt, &e);
    assert_int_equal(rc, 0);
    for (size_t t = 0; t < count; t++) {
        if (memcmp(c->rebuilt[t], c->shards[wanted[t]], c->shard_length) != 0) {
            print_error("RS(%u,%u) of %zu bytes, lost mask %#x: shard %u rebuilt wrong\n", k,
                        c->s->m, c->length, mask, wanted[t]);
            fail();
        }
    }
}

/*
 * Every subset of at most m lost shards when `sampled` is false; otherwise
 * every subset of at most one lost shard and `per_size` random subsets of
 * each larger size.
 */
static void check_subsets(unsigned k, unsigned m, size_t length, bool sampled, unsigned per_size)
{
    struct coded c;
    coded_make(&c, k, m, length);
    unsigned n = k + m;
    unsigned tried = 0;
    if (!sampled) {
        assert_true(n <= 20);
        for (uint32_t mask = 0; mask < (UINT32_C(1) << n); mask++) {
            if (popcount(mask) <= m) {
                check_lost(&c, mask, true);
                tried++;
            }
        }
    } else {
        check_lost(&c, 0, true);
        tried++;
        for (unsigned i = 0; i < n && m > 0; i++) {
            check_lost(&c, UINT32_C(1) << i, true);
            tried++;
        }
        for (unsigned lost = 2; lost <= m; lost++) {
            for (unsigned r = 0; r < per_size; r++) {
                check_lost(&c, random_mask(n, lost), true);
                tried++;
            }
        }
    }
    assert_true(tried > 0);
    coded_free(&c);
}

static const size_t odd_sizes[] = {1, 2, 999, 65537, 1000003};
#define MIB ((size_t)1 << 20)

static void check_scheme_sizes(unsigned k, unsigned m, bool sample_large)
{
    for (size_t i = 0; i < sizeof odd_sizes / sizeof odd_sizes[0]; i++) {
        check_subsets(k, m, odd_sizes[i], false, 0);
    }
    check_subsets(k, m, 4 * MIB, sample_large, 24);
    /* A typical sealed chunk object: 4 MiB of plaintext plus header, nonce and tag. */
    check_subsets(k, m, 4 * MIB + 4099, true, 12);
}

static void test_rs_4_2_any_two_lost(void **state)
{
    (void)state;
    check_scheme_sizes(4, 2, false);
}

static void test_rs_8_3_any_three_lost(void **state)
{
    (void)state;
    check_scheme_sizes(8, 3, false);
}

static void test_rs_10_4_any_four_lost(void **state)
{
    (void)state;
    /* 1471 subsets: all of them for the small and odd sizes, a sample at 4 MiB. */
    check_scheme_sizes(10, 4, true);
}

static void test_edge_schemes(void **state)
{
    (void)state;
    static const size_t sizes[] = {1, 2, 5, 17, 1000, 4097};
    /* k=1 is replication-like, m=0 is plain striping, RS(2,8) has more parity than data. */
    static const unsigned small[][2] = {{1, 0},  {1, 1}, {1, 3}, {1, 8}, {4, 0},
                                        {16, 0}, {2, 8}, {3, 1}, {5, 3}, {7, 7}};
    for (size_t s = 0; s < sizeof small / sizeof small[0]; s++) {
        for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
            check_subsets(small[s][0], small[s][1], sizes[i], false, 0);
        }
    }
    /* The largest scheme: too many subsets to try them all. */
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
        check_subsets(16, 8, sizes[i], true, 40);
    }
    check_subsets(16, 8, 100003, true, 10);
    /* Every tiny length for a wide scheme, where several data shards are the same window. */
    for (size_t len = 1; len <= 40; len++) {
        check_subsets(6, 3, len, false, 0);
    }
}

/* ------------------------------------------------------------------------ */
/* The bytes on disk must follow the documented layout, independently of ISA-L. */

static uint8_t gf_mul_ref(uint8_t a, uint8_t b)
{
    uint8_t p = 0;
    while (b != 0) {
        if (b & 1) {
            p ^= a;
        }
        a = (uint8_t)((a << 1) ^ ((a & 0x80) ? 0x1d : 0));
        b >>= 1;
    }
    return p;
}

static uint8_t gf_inv_ref(uint8_t a)
{
    for (unsigned b = 1; b < 256; b++) {
        if (gf_mul_ref(a, (uint8_t)b) == 1) {
            return (uint8_t)b;
        }
    }
    fail_msg("%u has no inverse", a);
    return 0;
}

static void test_layout_matches_documentation(void **state)
{
    (void)state;
    static const unsigned schemes[][2] = {{1, 1}, {3, 2}, {4, 2}, {5, 3}, {10, 4}, {16, 8}};
    static const size_t sizes[] = {1, 7, 100, 1001, 4099};
    for (size_t si = 0; si < sizeof schemes / sizeof schemes[0]; si++) {
        unsigned k = schemes[si][0];
        unsigned m = schemes[si][1];
        const struct erasure_scheme *s;
        assert_int_equal(erasure_scheme_get(k, m, &s, NULL), 0);
        for (size_t zi = 0; zi < sizeof sizes / sizeof sizes[0]; zi++) {
            size_t len = sizes[zi];
            uint8_t *object = random_bytes(len);
            struct erasure_stripe st = {0};
            assert_int_equal(erasure_encode(s, object, len, &st, NULL), 0);
            size_t L = (len + k - 1) / k;
            assert_int_equal(st.shard_length, L);
            for (unsigned i = 0; i < k; i++) {
                size_t start = i * L <= len - L ? i * L : len - L;
                /* A plain slice of the object: no copy. */
                assert_ptr_equal(st.shards[i], object + start);
            }
            uint8_t *want = malloc(L);
            for (unsigned j = 0; j < m; j++) {
                memset(want, 0, L);
                for (unsigned i = 0; i < k; i++) {
                    uint8_t c = gf_inv_ref((uint8_t)((k + j) ^ i));
                    for (size_t x = 0; x < L; x++) {
                        want[x] ^= gf_mul_ref(c, st.shards[i][x]);
                    }
                }
                assert_memory_equal(st.shards[k + j], want, L);
            }
            free(want);
            erasure_stripe_release(&st);
            free(object);
        }
    }
}

static void test_healthy_read_uses_data_shards_only(void **state)
{
    (void)state;
    struct coded c;
    coded_make(&c, 4, 2, 1000003);
    /* Garbage parity cannot matter when every data shard is there. */
    rng_fill(c.shards[4], c.shard_length);
    rng_fill(c.shards[5], c.shard_length);
    check_lost(&c, 0, false);
    /* Nor can it when parity is absent altogether. */
    check_lost(&c, 0x30, false);
    coded_free(&c);
}

static void test_stripe_reuse(void **state)
{
    (void)state;
    const struct erasure_scheme *s;
    assert_int_equal(erasure_scheme_get(8, 3, &s, NULL), 0);
    static const size_t sizes[] = {4 * MIB, 10, 65537, 4 * MIB + 1, 1};
    struct erasure_stripe st = {0};
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
        uint8_t *object = random_bytes(sizes[i]);
        assert_int_equal(erasure_encode(s, object, sizes[i], &st, NULL), 0);
        assert_ptr_equal(st.scheme, s);
        assert_int_equal(st.object_length, sizes[i]);
        uint8_t *out = malloc(sizes[i]);
        const uint8_t *have[ERASURE_MAX_SHARDS];
        memcpy(have, st.shards, sizeof have);
        have[0] = have[3] = have[7] = NULL;
        assert_int_equal(erasure_decode(s, sizes[i], have, out, NULL), 0);
        assert_true(memcmp(out, object, sizes[i]) == 0);
        free(out);
        free(object);
    }
    erasure_stripe_release(&st);
    erasure_stripe_release(&st);
    erasure_stripe_release(NULL);
}

/* ------------------------------------------------------------------------ */
/* Too few shards. */

static void test_too_many_lost_is_toofew(void **state)
{
    (void)state;
    static const unsigned schemes[][2] = {{4, 2}, {8, 3}, {10, 4}, {1, 1}, {4, 0}, {16, 8}};
    for (size_t si = 0; si < sizeof schemes / sizeof schemes[0]; si++) {
        unsigned k = schemes[si][0];
        unsigned m = schemes[si][1];
        struct coded c;
        coded_make(&c, k, m, 65537);
        uint32_t masks[3] = {(UINT32_C(1) << (m + 1)) - 1,
                             ((UINT32_C(1) << (m + 1)) - 1) << (k - 1), random_mask(k + m, m + 1)};
        for (size_t mi = 0; mi < 3; mi++) {
            const uint8_t *have[ERASURE_MAX_SHARDS];
            for (unsigned i = 0; i < k + m; i++) {
                have[i] = (masks[mi] >> i) & 1 ? NULL : c.shards[i];
            }
            struct err e;
            err_clear(&e);
            assert_int_equal(erasure_decode(c.s, c.length, have, c.out, &e), HBC_ETOOFEW);
            char want[64];
            snprintf(want, sizeof want, "RS(%u,%u) needs %u shards, only %u present", k, m, k,
                     k - 1);
            assert_non_null(strstr(e.msg, want));
            unsigned wanted[1] = {0};
            for (unsigned i = 0; i < k + m; i++) {
                if (have[i] == NULL) {
                    wanted[0] = i;
                }
            }
            uint8_t *out[1] = {c.out};
            assert_int_equal(erasure_reconstruct(c.s, c.shard_length, have, wanted, 1, out, &e),
                             HBC_ETOOFEW);
        }
        coded_free(&c);
    }
}

/* ------------------------------------------------------------------------ */
/* Framed shards. */

struct blobs {
    unsigned n;                        /* k+m */
    uint8_t *blob[ERASURE_MAX_SHARDS]; /* encoded shards */
    size_t length[ERASURE_MAX_SHARDS]; /* their lengths */
};

static void blobs_make(struct blobs *b, const uint8_t *vault, const uint8_t *chunk, unsigned k,
                       unsigned m, const uint8_t *object, size_t length)
{
    struct err e;
    err_clear(&e);
    b->n = k + m;
    int rc = erasure_shards_encode(vault, chunk, k, m, object, length, b->blob, b->length, &e);
    if (rc != 0) {
        fail_msg("encode shards: %s", e.msg);
    }
}

static void blobs_free(struct blobs *b)
{
    for (unsigned i = 0; i < b->n; i++) {
        hbc_free(b->blob[i]);
        b->blob[i] = NULL;
    }
}

/* Rebuild from the given blobs and expect the object back. */
static void expect_rebuild(const uint8_t *const *blob, const size_t *length, size_t count,
                           const uint8_t *vault, const uint8_t *chunk, const uint8_t *object,
                           size_t object_length)
{
    struct err e;
    err_clear(&e);
    uint8_t *out = NULL;
    size_t out_length = 0;
    int rc = erasure_shards_rebuild(blob, length, count, vault, chunk, &out, &out_length, &e);
    if (rc != 0) {
        fail_msg("rebuild: %s", e.msg);
    }
    assert_int_equal(out_length, object_length);
    assert_true(memcmp(out, object, object_length) == 0);
    hbc_free(out);
}

static int expect_rebuild_error(const uint8_t *const *blob, const size_t *length, size_t count,
                                const uint8_t *vault, const uint8_t *chunk, struct err *e)
{
    uint8_t *out = NULL;
    size_t out_length = 0;
    err_clear(e);
    int rc = erasure_shards_rebuild(blob, length, count, vault, chunk, &out, &out_length, e);
    assert_int_not_equal(rc, 0);
    assert_int_equal(rc, e->code);
    assert_null(out);
    return rc;
}

static size_t header_length(const uint8_t *blob)
{
    return (size_t)blob[5] << 8 | blob[6];
}

static void test_shard_roundtrip(void **state)
{
    (void)state;
    size_t len = 1000003;
    uint8_t *object = random_bytes(len);
    struct blobs b;
    blobs_make(&b, vault_a, chunk_a, 8, 3, object, len);
    struct erasure_stripe st = {0};
    const struct erasure_scheme *s;
    assert_int_equal(erasure_scheme_get(8, 3, &s, NULL), 0);
    assert_int_equal(erasure_encode(s, object, len, &st, NULL), 0);
    for (unsigned i = 0; i < b.n; i++) {
        struct erasure_shard_info info;
        const uint8_t *payload = NULL;
        struct err e;
        err_clear(&e);
        assert_int_equal(erasure_shard_decode(b.blob[i], b.length[i], &info, &payload, &e), 0);
        assert_memory_equal(info.vault_id, vault_a, sizeof vault_a);
        assert_memory_equal(info.chunk_id, chunk_a, sizeof chunk_a);
        assert_int_equal(info.k, 8);
        assert_int_equal(info.m, 3);
        assert_int_equal(info.index, i);
        assert_int_equal(info.object_length, len);
        assert_int_equal(info.shard_length, st.shard_length);
        /* The documented layout: prefix, header, payload, SHA-256 of the rest. */
        assert_memory_equal(b.blob[i], "HBCS\x01", 5);
        size_t h = header_length(b.blob[i]);
        assert_true(h > 0 && h <= ERASURE_SHARD_MAX_HEADER);
        assert_int_equal(b.length[i], 7 + h + st.shard_length + 32);
        assert_ptr_equal(payload, b.blob[i] + 7 + h);
        assert_true(memcmp(payload, st.shards[i], st.shard_length) == 0);
        uint8_t md[32];
        assert_int_equal(EVP_Digest(b.blob[i], b.length[i] - 32, md, NULL, EVP_sha256(), NULL), 1);
        assert_memory_equal(md, b.blob[i] + b.length[i] - 32, 32);
        /* Verdict only. */
        assert_int_equal(erasure_shard_decode(b.blob[i], b.length[i], NULL, NULL, NULL), 0);
        /* With the whole blob's SHA-256, as a store records it. */
        uint8_t whole[32];
        uint8_t want[32];
        struct erasure_shard_info info2;
        assert_int_equal(
            erasure_shard_decode_sha256(b.blob[i], b.length[i], &info2, NULL, whole, &e), 0);
        assert_memory_equal(info2.vault_id, info.vault_id, sizeof info.vault_id);
        assert_memory_equal(info2.chunk_id, info.chunk_id, sizeof info.chunk_id);
        assert_int_equal(info2.k, info.k);
        assert_int_equal(info2.m, info.m);
        assert_int_equal(info2.index, info.index);
        assert_int_equal(info2.object_length, info.object_length);
        assert_int_equal(info2.shard_length, info.shard_length);
        assert_int_equal(EVP_Digest(b.blob[i], b.length[i], want, NULL, EVP_sha256(), NULL), 1);
        assert_memory_equal(whole, want, 32);
        assert_int_equal(erasure_shard_decode_sha256(b.blob[i], b.length[i], NULL, NULL, NULL, &e),
                         HBC_EINVAL);
    }
    /* Any order, every blob, and exactly k of them. */
    const uint8_t *order[ERASURE_MAX_SHARDS];
    size_t lengths[ERASURE_MAX_SHARDS];
    for (unsigned i = 0; i < b.n; i++) {
        order[i] = b.blob[b.n - 1 - i];
        lengths[i] = b.length[b.n - 1 - i];
    }
    expect_rebuild(order, lengths, b.n, vault_a, chunk_a, object, len);
    expect_rebuild(order, lengths, 8, NULL, NULL, object, len);
    erasure_stripe_release(&st);
    blobs_free(&b);
    free(object);
}

/* Codes a damaged shard may legitimately get: each names a failed check. */
static bool is_damage_code(int rc)
{
    return rc == HBC_ECORRUPT || rc == HBC_EFORMAT || rc == HBC_EVERSION || rc == HBC_ETOOBIG ||
           rc == HBC_ETRUNCATED;
}

/*
 * Flip bit `bit` of shard i: the shard must be rejected, and the rebuild
 * must treat it as lost and still return the object.
 */
static void flip_and_check(struct blobs *b, unsigned i, size_t bit, const uint8_t *object,
                           size_t length)
{
    b->blob[i][bit / 8] ^= (uint8_t)(1u << (bit % 8));
    struct err e;
    err_clear(&e);
    int rc = erasure_shard_decode(b->blob[i], b->length[i], NULL, NULL, &e);
    if (!is_damage_code(rc) || e.msg[0] == '\0') {
        fail_msg("shard %u bit %zu flipped: rc %d (%s)", i, bit, rc, e.msg);
    }
    uint8_t whole[32];
    assert_int_equal(erasure_shard_decode_sha256(b->blob[i], b->length[i], NULL, NULL, whole, NULL),
                     rc);
    expect_rebuild((const uint8_t *const *)b->blob, b->length, b->n, vault_a, chunk_a, object,
                   length);
    b->blob[i][bit / 8] ^= (uint8_t)(1u << (bit % 8));
}

/*
 * Shards with the trailer left to the receiver: the same bytes but a zero
 * trailer, refused by a reader as corrupt until filled in; filling them in
 * makes exactly the hashed encoding and the SHA-256 a store records.
 */
static void test_unhashed_shards_are_filled_in(void **state)
{
    (void)state;
    size_t len = 300007;
    uint8_t *object = random_bytes(len);
    struct blobs b;
    blobs_make(&b, vault_a, chunk_a, 2, 1, object, len);
    uint8_t *blobs[ERASURE_MAX_SHARDS] = {0};
    size_t lengths[ERASURE_MAX_SHARDS] = {0};
    struct err e;
    err_clear(&e);
    assert_int_equal(
        erasure_shards_encode_unhashed(vault_a, chunk_a, 2, 1, object, len, blobs, lengths, &e), 0);
    static const uint8_t zero[ERASURE_SHARD_TRAILER];
    for (unsigned i = 0; i < b.n; i++) {
        size_t body = lengths[i] - ERASURE_SHARD_TRAILER;
        assert_int_equal(lengths[i], b.length[i]);
        assert_memory_equal(blobs[i], b.blob[i], body);
        assert_memory_equal(blobs[i] + body, zero, ERASURE_SHARD_TRAILER);
        assert_int_equal(erasure_shard_decode(blobs[i], lengths[i], NULL, NULL, &e), HBC_ECORRUPT);

        uint8_t want_sha[ERASURE_SHARD_TRAILER], got_sha[ERASURE_SHARD_TRAILER];
        struct erasure_shard_info want_info, got_info;
        const uint8_t *want_payload, *got_payload;
        assert_int_equal(erasure_shard_decode_sha256(b.blob[i], b.length[i], &want_info,
                                                     &want_payload, want_sha, &e),
                         0);
        assert_int_equal(
            erasure_shard_fill_sha256(blobs[i], lengths[i], &got_info, &got_payload, got_sha, &e),
            0);
        assert_memory_equal(blobs[i], b.blob[i], lengths[i]);
        assert_memory_equal(got_sha, want_sha, sizeof want_sha);
        assert_int_equal(got_info.index, i);
        assert_int_equal(got_info.object_length, len);
        assert_int_equal(got_payload - blobs[i], want_payload - b.blob[i]);

        /* Filled in already (or sent with a trailer): refused, and left as it was. */
        err_clear(&e);
        assert_int_equal(erasure_shard_fill_sha256(blobs[i], lengths[i], NULL, NULL, got_sha, &e),
                         HBC_EFORMAT);
        assert_non_null(strstr(e.msg, "trailer to fill in is not zero"));
        assert_memory_equal(blobs[i], b.blob[i], lengths[i]);
    }
    /* The other checks still run before anything is written. */
    memset(blobs[0] + lengths[0] - ERASURE_SHARD_TRAILER, 0, ERASURE_SHARD_TRAILER);
    uint8_t sha[ERASURE_SHARD_TRAILER];
    assert_int_equal(erasure_shard_fill_sha256(blobs[0], lengths[0] - 1, NULL, NULL, sha, &e),
                     HBC_ETRUNCATED);
    blobs[0][0] = 'X';
    assert_int_equal(erasure_shard_fill_sha256(blobs[0], lengths[0], NULL, NULL, sha, &e),
                     HBC_EFORMAT);
    assert_int_equal(erasure_shard_fill_sha256(blobs[0], lengths[0], NULL, NULL, NULL, &e),
                     HBC_EINVAL);
    for (unsigned i = 0; i < b.n; i++) {
        hbc_free(blobs[i]);
    }
    blobs_free(&b);
    hbc_free(object);
}

static void test_bit_flips_are_caught(void **state)
{
    (void)state;
    /* Small shards: every bit of every shard. */
    size_t len = 999;
    uint8_t *object = random_bytes(len);
    struct blobs b;
    blobs_make(&b, vault_a, chunk_a, 4, 2, object, len);
    for (unsigned i = 0; i < b.n; i++) {
        for (size_t bit = 0; bit < b.length[i] * 8; bit++) {
            flip_and_check(&b, i, bit, object, len);
        }
    }

    /* Each failed check is named. */
    struct err e;
    size_t h = header_length(b.blob[1]);
    struct {
        size_t byte;      /* where to flip */
        uint8_t mask;     /* which bits */
        int code;         /* expected verdict */
        const char *says; /* expected words in the message */
    } named[] = {
        {0, 0x01, HBC_EFORMAT, "bad magic"},
        {4, 0x02, HBC_EVERSION, "format version 3"},
        {5, 0x80, HBC_ETOOBIG, "header length"},
        {7 + h + 10, 0x10, HBC_ECORRUPT, "SHA-256 mismatch"},
        {b.length[1] - 1, 0x01, HBC_ECORRUPT, "SHA-256 mismatch"},
    };
    for (size_t n = 0; n < sizeof named / sizeof named[0]; n++) {
        b.blob[1][named[n].byte] ^= named[n].mask;
        err_clear(&e);
        assert_int_equal(erasure_shard_decode(b.blob[1], b.length[1], NULL, NULL, &e),
                         named[n].code);
        assert_non_null(strstr(e.msg, named[n].says));
        b.blob[1][named[n].byte] ^= named[n].mask;
    }

    /* Damage in m+1 shards leaves too few: the message names each rejection. */
    b.blob[0][b.length[0] - 5] ^= 4;
    b.blob[2][0] ^= 4;
    b.blob[5][4] = 9;
    err_clear(&e);
    assert_int_equal(
        expect_rebuild_error((const uint8_t *const *)b.blob, b.length, b.n, vault_a, chunk_a, &e),
        HBC_ETOOFEW);
    assert_non_null(strstr(e.msg, "3 intact shards, RS(4,2) needs 4"));
    assert_non_null(strstr(e.msg, "missing: 0, 2, 5"));
    assert_non_null(strstr(e.msg, "blob 0 HBC_ECORRUPT"));
    assert_non_null(strstr(e.msg, "blob 2 HBC_EFORMAT"));
    assert_non_null(strstr(e.msg, "blob 5 HBC_EVERSION"));
    blobs_free(&b);
    free(object);

    /* Larger shards: every bit outside the payload, a sample inside it. */
    len = 65537;
    object = random_bytes(len);
    blobs_make(&b, vault_a, chunk_a, 8, 3, object, len);
    unsigned which[] = {0, 7, 9};
    for (size_t w = 0; w < sizeof which / sizeof which[0]; w++) {
        unsigned i = which[w];
        size_t payload_start = (7 + header_length(b.blob[i])) * 8;
        size_t trailer_start = (b.length[i] - 32) * 8;
        for (size_t bit = 0; bit < payload_start; bit++) {
            flip_and_check(&b, i, bit, object, len);
        }
        for (size_t bit = trailer_start; bit < b.length[i] * 8; bit++) {
            flip_and_check(&b, i, bit, object, len);
        }
        for (unsigned r = 0; r < 300; r++) {
            size_t bit = payload_start + rng_next() % (trailer_start - payload_start);
            flip_and_check(&b, i, bit, object, len);
        }
    }
    blobs_free(&b);
    free(object);
}

/* ------------------------------------------------------------------------ */
/* Malformed shards and bad arguments. */

/* Frame any header and payload (even inconsistent ones) with a correct SHA-256. */
static uint8_t *craft_blob(uint8_t version, const Hbc__ShardHeader *h, const uint8_t *payload,
                           size_t payload_length, size_t *out_length)
{
    size_t hl = hbc__shard_header__get_packed_size(h);
    size_t total = 7 + hl + payload_length + 32;
    uint8_t *p = hbc_malloc(total);
    assert_non_null(p);
    memcpy(p, "HBCS", 4);
    p[4] = version;
    p[5] = (uint8_t)(hl >> 8);
    p[6] = (uint8_t)hl;
    hbc__shard_header__pack(h, p + 7);
    memcpy(p + 7 + hl, payload, payload_length);
    assert_int_equal(EVP_Digest(p, total - 32, p + total - 32, NULL, EVP_sha256(), NULL), 1);
    *out_length = total;
    return p;
}

static Hbc__ShardHeader good_header(void)
{
    Hbc__ShardHeader h = HBC__SHARD_HEADER__INIT;
    h.vault_id.data = (uint8_t *)vault_a;
    h.vault_id.len = sizeof vault_a;
    h.chunk_id.data = (uint8_t *)chunk_a;
    h.chunk_id.len = sizeof chunk_a;
    h.k = 4;
    h.m = 2;
    h.index = 1;
    h.object_length = 40;
    h.shard_length = 10;
    return h;
}

static int decode_crafted(uint8_t version, const Hbc__ShardHeader *h, size_t payload_length,
                          struct err *e)
{
    uint8_t payload[64] = {0};
    assert_true(payload_length <= sizeof payload);
    size_t n;
    uint8_t *blob = craft_blob(version, h, payload, payload_length, &n);
    err_clear(e);
    int rc = erasure_shard_decode(blob, n, NULL, NULL, e);
    assert_int_equal(rc, e->code);
    hbc_free(blob);
    return rc;
}

static void test_malformed_shards(void **state)
{
    (void)state;
    struct err e;
    Hbc__ShardHeader h = good_header();
    assert_int_equal(decode_crafted(1, &h, 10, &e), 0);

    /* Unknown version. */
    assert_int_equal(decode_crafted(2, &h, 10, &e), HBC_EVERSION);
    assert_non_null(strstr(e.msg, "format version 2"));

    /* Inconsistent header fields, each with a correct checksum. */
    struct {
        const char *what;   /* the field made wrong */
        Hbc__ShardHeader h; /* the header */
        size_t payload;     /* payload bytes to frame */
        int code;           /* expected verdict */
        const char *says;   /* expected words in the message */
    } cases[] = {
        {"k 17", good_header(), 10, HBC_EFORMAT, "RS(17,2)"},
        {"k 0", good_header(), 10, HBC_EFORMAT, "RS(0,2)"},
        {"m 9", good_header(), 10, HBC_EFORMAT, "RS(4,9)"},
        {"index 6", good_header(), 10, HBC_EFORMAT, "index 6"},
        {"object length 0", good_header(), 10, HBC_EFORMAT, "object length 0"},
        {"object too long", good_header(), 10, HBC_ETOOBIG, "above the"},
        {"shard length", good_header(), 10, HBC_EFORMAT, "shard length 11"},
        {"payload short", good_header(), 9, HBC_ETRUNCATED, "header says"},
        {"payload long", good_header(), 11, HBC_EFORMAT, "more than its header says"},
        {"vault id", good_header(), 10, HBC_EFORMAT, "vault id of 15 bytes"},
        {"chunk id", good_header(), 10, HBC_EFORMAT, "chunk id of 0 bytes"},
    };
    cases[0].h.k = 17;
    cases[1].h.k = 0;
    cases[2].h.m = 9;
    cases[3].h.index = 6;
    cases[4].h.object_length = 0;
    cases[5].h.object_length = ERASURE_MAX_OBJECT + 1;
    cases[6].h.shard_length = 11;
    cases[9].h.vault_id.len = 15;
    cases[10].h.chunk_id.len = 0;
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        int rc = decode_crafted(1, &cases[i].h, cases[i].payload, &e);
        if (rc != cases[i].code || strstr(e.msg, cases[i].says) == NULL) {
            fail_msg("%s: rc %s, message \"%s\"", cases[i].what, hbc_errname(rc), e.msg);
        }
    }

    /* A header that is not protobuf, or is missing a required field. */
    uint8_t garbage[7 + 20 + 32];
    memcpy(garbage, "HBCS\x01\x00\x14", 7);
    memset(garbage + 7, 0xFF, 20);
    memset(garbage + 27, 0, 32);
    err_clear(&e);
    assert_int_equal(erasure_shard_decode(garbage, sizeof garbage, NULL, NULL, &e), HBC_EFORMAT);
    assert_non_null(strstr(e.msg, "does not parse"));
    /* Only field 3 (k = 4): the required ids are missing. */
    uint8_t nofields[7 + 2 + 32] = {'H', 'B', 'C', 'S', 1, 0, 2, 0x18, 0x04};
    err_clear(&e);
    assert_int_equal(erasure_shard_decode(nofields, sizeof nofields, NULL, NULL, &e), HBC_EFORMAT);
    assert_non_null(strstr(e.msg, "does not parse"));

    /* Truncation anywhere, a header length out of bounds, a bad magic. */
    uint8_t object[40];
    rng_fill(object, sizeof object);
    struct blobs b;
    blobs_make(&b, vault_a, chunk_a, 4, 2, object, sizeof object);
    size_t hl = header_length(b.blob[0]);
    size_t cuts[] = {0, 3, 6, 7, 7 + hl - 1, 7 + hl, 7 + hl + 5, b.length[0] - 32, b.length[0] - 1};
    for (size_t i = 0; i < sizeof cuts / sizeof cuts[0]; i++) {
        err_clear(&e);
        int rc = erasure_shard_decode(b.blob[0], cuts[i], NULL, NULL, &e);
        if (rc != HBC_ETRUNCATED) {
            fail_msg("cut at %zu: %s (%s)", cuts[i], hbc_errname(rc), e.msg);
        }
    }
    assert_int_equal(erasure_shard_decode(NULL, 0, NULL, NULL, NULL), HBC_ETRUNCATED);
    uint8_t *copy = malloc(b.length[0] + 1);
    memcpy(copy, b.blob[0], b.length[0]);
    copy[b.length[0]] = 0;
    assert_int_equal(erasure_shard_decode(copy, b.length[0] + 1, NULL, NULL, &e), HBC_EFORMAT);
    copy[5] = 0xFF;
    copy[6] = 0xFF;
    assert_int_equal(erasure_shard_decode(copy, b.length[0], NULL, NULL, &e), HBC_ETOOBIG);
    assert_non_null(strstr(e.msg, "header length 65535 above 256"));
    copy[5] = 1;
    copy[6] = 1;
    assert_int_equal(erasure_shard_decode(copy, b.length[0], NULL, NULL, &e), HBC_ETOOBIG);
    copy[5] = 0;
    copy[6] = 0;
    assert_int_equal(erasure_shard_decode(copy, b.length[0], NULL, NULL, &e), HBC_EFORMAT);
    assert_non_null(strstr(e.msg, "empty header"));
    memcpy(copy, "HBCX", 4);
    assert_int_equal(erasure_shard_decode(copy, b.length[0], NULL, NULL, &e), HBC_EFORMAT);
    free(copy);
    blobs_free(&b);
}

static void test_bad_arguments(void **state)
{
    (void)state;
    struct err e;
    const struct erasure_scheme *s = NULL;
    static const unsigned bad[][2] = {{0, 2}, {17, 2}, {4, 9}, {0, 0}, {100, 100}};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        err_clear(&e);
        assert_int_equal(erasure_scheme_get(bad[i][0], bad[i][1], &s, &e), HBC_EINVAL);
        assert_non_null(strstr(e.msg, "k must be 1..16 and m 0..8"));
    }
    assert_int_equal(erasure_scheme_get(4, 2, NULL, NULL), HBC_EINVAL);
    assert_int_equal(erasure_scheme_get(16, 8, &s, NULL), 0);
    assert_int_equal(erasure_scheme_get(1, 0, &s, NULL), 0);
    assert_int_equal(erasure_shard_length(4, 9), 3);
    assert_int_equal(erasure_shard_length(0, 9), 0);

    assert_int_equal(erasure_scheme_get(4, 2, &s, NULL), 0);
    uint8_t object[64];
    rng_fill(object, sizeof object);
    struct erasure_stripe st = {0};
    err_clear(&e);
    assert_int_equal(erasure_encode(s, object, 0, &st, &e), HBC_EINVAL);
    assert_non_null(strstr(e.msg, "empty object"));
    /* The length is checked before any byte is read. */
    assert_int_equal(erasure_encode(s, object, ERASURE_MAX_OBJECT + 1, &st, &e), HBC_ETOOBIG);
    assert_int_equal(erasure_encode(NULL, object, 10, &st, NULL), HBC_EINVAL);
    assert_int_equal(erasure_encode(s, NULL, 10, &st, NULL), HBC_EINVAL);
    assert_null(st.scheme);

    const uint8_t *shards[ERASURE_MAX_SHARDS] = {0};
    assert_int_equal(erasure_decode(s, 0, shards, object, NULL), HBC_EINVAL);
    assert_int_equal(erasure_decode(s, ERASURE_MAX_OBJECT + 1, shards, object, NULL), HBC_ETOOBIG);
    assert_int_equal(erasure_decode(s, 10, NULL, object, NULL), HBC_EINVAL);
    /* Every code comes back even with no err to fill. */
    assert_int_equal(erasure_decode(s, 10, shards, object, NULL), HBC_ETOOFEW);
    assert_int_equal(erasure_encode(s, object, ERASURE_MAX_OBJECT + 1, &st, NULL), HBC_ETOOBIG);
    assert_int_equal(erasure_reconstruct(s, 10, shards, NULL, 0, NULL, NULL), HBC_ETOOFEW);
    err_clear(&e);
    assert_int_equal(erasure_decode(s, 10, shards, object, &e), HBC_ETOOFEW);
    assert_non_null(strstr(e.msg, "lost: 0, 1, 2, 3, 4, 5"));

    /* Reconstruct only lost shards, each named once. */
    struct coded c;
    coded_make(&c, 4, 2, 1000);
    const uint8_t *have[ERASURE_MAX_SHARDS];
    memcpy(have, c.shards, sizeof have);
    have[1] = NULL;
    have[4] = NULL;
    unsigned present[] = {0};
    unsigned twice[] = {1, 1};
    unsigned beyond[] = {6};
    assert_int_equal(erasure_reconstruct(c.s, c.shard_length, have, present, 1, c.rebuilt, NULL),
                     HBC_EINVAL);
    assert_int_equal(erasure_reconstruct(c.s, c.shard_length, have, twice, 2, c.rebuilt, NULL),
                     HBC_EINVAL);
    assert_int_equal(erasure_reconstruct(c.s, c.shard_length, have, beyond, 1, c.rebuilt, NULL),
                     HBC_EINVAL);
    assert_int_equal(erasure_reconstruct(c.s, 0, have, twice, 1, c.rebuilt, NULL), HBC_EINVAL);
    assert_int_equal(erasure_reconstruct(c.s, c.shard_length, have, NULL, 0, NULL, NULL), 0);
    coded_free(&c);

    /* A shard header that cannot be written. */
    struct erasure_shard_info info = {
        .k = 4, .m = 2, .index = 6, .object_length = 40, .shard_length = 10};
    uint8_t *blob = NULL;
    size_t blob_length = 0;
    err_clear(&e);
    assert_int_equal(erasure_shard_encode(&info, object, &blob, &blob_length, &e), HBC_EINVAL);
    assert_non_null(strstr(e.msg, "index 6"));
    info.index = 0;
    info.shard_length = 11;
    assert_int_equal(erasure_shard_encode(&info, object, &blob, &blob_length, &e), HBC_EINVAL);
    info.shard_length = 10;
    info.k = 17;
    assert_int_equal(erasure_shard_encode(&info, object, &blob, &blob_length, &e), HBC_EINVAL);
    assert_null(blob);

    uint8_t *blobs[ERASURE_MAX_SHARDS];
    size_t lengths[ERASURE_MAX_SHARDS];
    assert_int_equal(erasure_shards_encode(vault_a, chunk_a, 4, 9, object, 10, blobs, lengths, &e),
                     HBC_EINVAL);
    assert_int_equal(erasure_shards_encode(vault_a, chunk_a, 4, 2, object, 0, blobs, lengths, &e),
                     HBC_EINVAL);
    for (unsigned i = 0; i < 6; i++) {
        assert_null(blobs[i]);
    }
    uint8_t *out = NULL;
    size_t out_length = 0;
    assert_int_equal(erasure_shards_rebuild(NULL, NULL, 0, NULL, NULL, &out, &out_length, &e),
                     HBC_ETOOFEW);
    assert_non_null(strstr(e.msg, "no intact shard among 0"));
    const uint8_t *many[49] = {0};
    size_t many_lengths[49] = {0};
    assert_int_equal(
        erasure_shards_rebuild(many, many_lengths, 49, NULL, NULL, &out, &out_length, &e),
        HBC_EINVAL);
    assert_int_equal(erasure_shards_rebuild(many, many_lengths, 4, NULL, NULL, NULL, NULL, &e),
                     HBC_EINVAL);
}

static void test_mismatched_shards(void **state)
{
    (void)state;
    struct err e;
    size_t len = 999;
    uint8_t *obj_a = random_bytes(len);
    uint8_t *obj_b = random_bytes(len);
    uint8_t *obj_c = random_bytes(len + 1);
    struct blobs a, b, v, c, d;
    blobs_make(&a, vault_a, chunk_a, 4, 2, obj_a, len);
    blobs_make(&b, vault_a, chunk_b, 4, 2, obj_b, len);
    blobs_make(&v, vault_b, chunk_a, 4, 2, obj_a, len);
    blobs_make(&c, vault_a, chunk_a, 4, 2, obj_c, len + 1); /* same ids, other length */
    blobs_make(&d, vault_a, chunk_a, 3, 3, obj_a, len);     /* same ids, other scheme */

    const uint8_t *mix[6];
    size_t mix_len[6];
    for (unsigned i = 0; i < 6; i++) {
        mix[i] = a.blob[i];
        mix_len[i] = a.length[i];
    }
    /* One shard of another chunk. */
    mix[2] = b.blob[2];
    mix_len[2] = b.length[2];
    assert_int_equal(expect_rebuild_error(mix, mix_len, 6, NULL, NULL, &e), HBC_ECHUNKID);
    assert_non_null(strstr(e.msg, "different chunks (blobs 0 and 2)"));
    /* With the ids asked for, it is just a lost shard. */
    expect_rebuild(mix, mix_len, 6, vault_a, chunk_a, obj_a, len);
    mix[1] = b.blob[1];
    mix_len[1] = b.length[1];
    mix[5] = b.blob[5];
    mix_len[5] = b.length[5];
    assert_int_equal(expect_rebuild_error(mix, mix_len, 6, vault_a, chunk_a, &e), HBC_ETOOFEW);
    assert_non_null(strstr(e.msg, "blob 1 of another chunk, blob 2 of another chunk"));
    /* Asking for chunk b finds three of its shards: still too few. */
    assert_int_equal(expect_rebuild_error(mix, mix_len, 6, vault_a, chunk_b, &e), HBC_ETOOFEW);

    /* Same chunk id in another vault. */
    mix[1] = a.blob[1];
    mix_len[1] = a.length[1];
    mix[2] = v.blob[2];
    mix_len[2] = v.length[2];
    mix[5] = a.blob[5];
    mix_len[5] = a.length[5];
    assert_int_equal(expect_rebuild_error(mix, mix_len, 6, NULL, NULL, &e), HBC_ECHUNKID);
    expect_rebuild(mix, mix_len, 6, vault_a, chunk_a, obj_a, len);

    /* Same ids, but shards disagree on the object length or the scheme. */
    mix[2] = c.blob[2];
    mix_len[2] = c.length[2];
    assert_int_equal(expect_rebuild_error(mix, mix_len, 6, vault_a, chunk_a, &e), HBC_EFORMAT);
    assert_non_null(strstr(e.msg, "999-byte object"));
    mix[2] = d.blob[2];
    mix_len[2] = d.length[2];
    assert_int_equal(expect_rebuild_error(mix, mix_len, 6, NULL, NULL, &e), HBC_EFORMAT);
    assert_non_null(strstr(e.msg, "RS(3,3)"));

    /* The same shard many times counts once. */
    const uint8_t *same[4] = {a.blob[0], a.blob[0], a.blob[0], a.blob[0]};
    size_t same_len[4] = {a.length[0], a.length[0], a.length[0], a.length[0]};
    assert_int_equal(expect_rebuild_error(same, same_len, 4, vault_a, chunk_a, &e), HBC_ETOOFEW);
    assert_non_null(strstr(e.msg, "1 intact shards"));
    /* Two copies of one stripe, some damaged in each, complement each other. */
    const uint8_t *two[12];
    size_t two_len[12];
    uint8_t *damaged[12];
    for (unsigned i = 0; i < 12; i++) {
        damaged[i] = malloc(a.length[i % 6]);
        memcpy(damaged[i], a.blob[i % 6], a.length[i % 6]);
        if ((i < 6 && i % 2 == 0) || (i >= 6 && i % 2 == 1) || i == 7) {
            damaged[i][a.length[i % 6] / 2] ^= 0x40;
        }
        two[i] = damaged[i];
        two_len[i] = a.length[i % 6];
    }
    expect_rebuild(two, two_len, 12, vault_a, chunk_a, obj_a, len);
    /* Not fetched at all. */
    two[3] = two[5] = NULL;
    two[6] = two[8] = two[10] = NULL;
    assert_int_equal(expect_rebuild_error(two, two_len, 12, vault_a, chunk_a, &e), HBC_ETOOFEW);
    assert_non_null(strstr(e.msg, "1 intact shards, RS(4,2) needs 4 (missing: 0, 2, 3, 4, 5; "
                                  "rejected: blob 0 HBC_ECORRUPT, blob 2 HBC_ECORRUPT"));
    two[1] = NULL;
    assert_int_equal(expect_rebuild_error(two, two_len, 12, vault_a, chunk_a, &e), HBC_ETOOFEW);
    assert_non_null(strstr(e.msg, "no intact shard among 6 fetched (rejected: blob 0"));
    two[0] = two[2] = two[4] = two[7] = two[9] = two[11] = NULL;
    assert_int_equal(expect_rebuild_error(two, two_len, 12, vault_a, chunk_a, &e), HBC_ETOOFEW);
    assert_non_null(strstr(e.msg, "no intact shard among 0 fetched"));
    for (unsigned i = 0; i < 12; i++) {
        free(damaged[i]);
    }

    blobs_free(&a);
    blobs_free(&b);
    blobs_free(&v);
    blobs_free(&c);
    blobs_free(&d);
    free(obj_a);
    free(obj_b);
    free(obj_c);
}

/* ------------------------------------------------------------------------ */
/* Out of memory: every allocation may fail, with HBC_ENOMEM and no leak. */

static void test_allocation_failures(void **state)
{
    (void)state;
    size_t len = 65537;
    uint8_t *object = random_bytes(len);
    const struct erasure_scheme *s;
    assert_int_equal(erasure_scheme_get(4, 2, &s, NULL), 0);
    struct erasure_stripe st = {0};
    struct err e;

    alloc_fault_after(0);
    assert_int_equal(erasure_encode(s, object, len, &st, &e), HBC_ENOMEM);
    alloc_fault_reset();
    assert_null(st.scheme);
    assert_null(st.work);
    /* Striping without parity allocates nothing. */
    assert_int_equal(erasure_scheme_get(4, 0, &s, NULL), 0);
    alloc_fault_after(0);
    assert_int_equal(erasure_encode(s, object, len, &st, &e), 0);
    alloc_fault_reset();
    erasure_stripe_release(&st);
    /* RS(1,1): the parity shard equals the data (coefficient 1), so nothing is coded or allocated.
     */
    assert_int_equal(erasure_scheme_get(1, 1, &s, NULL), 0);
    alloc_fault_after(0);
    assert_int_equal(erasure_encode(s, object, len, &st, &e), 0);
    alloc_fault_reset();
    assert_int_equal(st.shard_length, len);
    assert_memory_equal(st.shards[0], object, len);
    assert_memory_equal(st.shards[1], object, len);
    erasure_stripe_release(&st);

    uint8_t *blobs[ERASURE_MAX_SHARDS];
    size_t lengths[ERASURE_MAX_SHARDS];
    int rc = HBC_ENOMEM;
    long n;
    for (n = 0; rc == HBC_ENOMEM; n++) {
        alloc_fault_after(n);
        rc = erasure_shards_encode(vault_a, chunk_a, 4, 2, object, len, blobs, lengths, &e);
        alloc_fault_reset();
        if (rc == HBC_ENOMEM) {
            for (unsigned i = 0; i < 6; i++) {
                assert_null(blobs[i]);
            }
        }
    }
    assert_int_equal(rc, 0);
    assert_true(n > 6);

    alloc_fault_after(0);
    assert_int_equal(erasure_shard_decode(blobs[0], lengths[0], NULL, NULL, &e), HBC_ENOMEM);
    alloc_fault_reset();

    rc = HBC_ENOMEM;
    for (n = 0; rc == HBC_ENOMEM; n++) {
        uint8_t *out = NULL;
        size_t out_length = 0;
        alloc_fault_after(n);
        rc = erasure_shards_rebuild((const uint8_t *const *)blobs, lengths, 6, vault_a, chunk_a,
                                    &out, &out_length, &e);
        alloc_fault_reset();
        if (rc == 0) {
            assert_true(out_length == len && memcmp(out, object, len) == 0);
            hbc_free(out);
        } else {
            assert_int_equal(rc, HBC_ENOMEM);
            assert_null(out);
        }
    }
    assert_int_equal(rc, 0);
    for (unsigned i = 0; i < 6; i++) {
        hbc_free(blobs[i]);
    }
    free(object);
}

/* ------------------------------------------------------------------------ */
/* The scheme cache under concurrent first use. */

#define THREADS 4

struct worker {
    unsigned id;                                                        /* thread number */
    const struct erasure_scheme *got[ERASURE_MAX_K][ERASURE_MAX_M + 1]; /* schemes seen */
    unsigned failures;                                                  /* wrong results */
};

static void *worker_main(void *arg)
{
    struct worker *w = arg;
    uint8_t object[300];
    uint8_t out[300];
    for (size_t i = 0; i < sizeof object; i++) {
        object[i] = (uint8_t)(i * 7 + w->id);
    }
    for (unsigned x = 0; x < ERASURE_MAX_K * (ERASURE_MAX_M + 1); x++) {
        /* Each thread walks the schemes in its own order. */
        unsigned y = (x * 7 + w->id * 37) % (ERASURE_MAX_K * (ERASURE_MAX_M + 1));
        unsigned k = y / (ERASURE_MAX_M + 1) + 1;
        unsigned m = y % (ERASURE_MAX_M + 1);
        const struct erasure_scheme *s;
        if (erasure_scheme_get(k, m, &s, NULL) != 0 || s->k != k || s->m != m) {
            w->failures++;
            continue;
        }
        w->got[k - 1][m] = s;
        struct erasure_stripe st = {0};
        if (erasure_encode(s, object, sizeof object, &st, NULL) != 0) {
            w->failures++;
            continue;
        }
        const uint8_t *have[ERASURE_MAX_SHARDS];
        memcpy(have, st.shards, sizeof have);
        for (unsigned i = 0; i < m; i++) {
            have[(i * 5 + w->id) % (k + m)] = NULL;
        }
        if (erasure_decode(s, sizeof object, have, out, NULL) != 0 ||
            memcmp(out, object, sizeof object) != 0) {
            w->failures++;
        }
        erasure_stripe_release(&st);
    }
    return NULL;
}

static void test_concurrent_first_use(void **state)
{
    (void)state;
    pthread_t t[THREADS];
    static struct worker w[THREADS];
    memset(w, 0, sizeof w);
    for (unsigned i = 0; i < THREADS; i++) {
        w[i].id = i;
        assert_int_equal(pthread_create(&t[i], NULL, worker_main, &w[i]), 0);
    }
    for (unsigned i = 0; i < THREADS; i++) {
        assert_int_equal(pthread_join(t[i], NULL), 0);
    }
    for (unsigned i = 0; i < THREADS; i++) {
        assert_int_equal(w[i].failures, 0);
        for (unsigned k = 0; k < ERASURE_MAX_K; k++) {
            for (unsigned m = 0; m <= ERASURE_MAX_M; m++) {
                assert_non_null(w[i].got[k][m]);
                assert_ptr_equal(w[i].got[k][m], w[0].got[k][m]);
            }
        }
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        /* First, so that the schemes are built concurrently. */
        cmocka_unit_test(test_concurrent_first_use),
        cmocka_unit_test(test_layout_matches_documentation),
        cmocka_unit_test(test_rs_4_2_any_two_lost),
        cmocka_unit_test(test_rs_8_3_any_three_lost),
        cmocka_unit_test(test_rs_10_4_any_four_lost),
        cmocka_unit_test(test_edge_schemes),
        cmocka_unit_test(test_healthy_read_uses_data_shards_only),
        cmocka_unit_test(test_stripe_reuse),
        cmocka_unit_test(test_too_many_lost_is_toofew),
        cmocka_unit_test(test_shard_roundtrip),
        cmocka_unit_test(test_unhashed_shards_are_filled_in),
        cmocka_unit_test(test_bit_flips_are_caught),
        cmocka_unit_test(test_malformed_shards),
        cmocka_unit_test(test_bad_arguments),
        cmocka_unit_test(test_mismatched_shards),
        cmocka_unit_test(test_allocation_failures),
    };
    return cmocka_run_group_tests(tests, setup_seed, NULL);
}
