/*
 * The chunk read path's shard handling (client/repo_chunk.c, read_copy): the healthy path
 * rebuilds a sealed chunk object from its data shards without their SHA-256
 * (erasure_shards_rebuild_unverified) and lets AES-GCM authenticate it; a bad shard makes the
 * open fail, and the checked rebuild then tells which shard is bad.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>

#include "common/alloc.h"
#include "common/chunk_object.h"
#include "common/crypto.h"
#include "common/erasure.h"

#define K 2
#define M 1
#define PLAIN_LEN ((size_t)300000)

struct fixture {
    struct chunk_ctx *ctx;                       /* this thread's working state */
    struct chunk_key key;                        /* generation 1 */
    uint8_t vault_id[CHUNK_OBJECT_VAULT_ID_LEN]; /* random vault id */
    uint8_t chunk_id[CHUNK_OBJECT_CHUNK_ID_LEN]; /* random chunk id */
    uint8_t *plain;                              /* the chunk's plaintext, PLAIN_LEN bytes */
    uint8_t *blobs[K + M];                       /* its encoded shards */
    size_t lengths[K + M];                       /* their lengths */
};

static int setup(void **state)
{
    struct fixture *f = calloc(1, sizeof *f);
    assert_non_null(f);
    uint8_t data_key[CRYPTO_KEY_LEN];
    assert_int_equal(crypto_random(data_key, sizeof data_key, NULL), 0);
    assert_int_equal(crypto_random(f->vault_id, sizeof f->vault_id, NULL), 0);
    assert_int_equal(crypto_random(f->chunk_id, sizeof f->chunk_id, NULL), 0);
    assert_int_equal(chunk_ctx_new(&f->ctx, NULL), 0);
    assert_int_equal(chunk_key_init(&f->key, data_key, 1, NULL), 0);
    f->plain = malloc(PLAIN_LEN);
    assert_non_null(f->plain);
    assert_int_equal(crypto_random(f->plain, PLAIN_LEN, NULL), 0);
    size_t cap = chunk_object_max_sealed(PLAIN_LEN);
    uint8_t *obj = malloc(cap);
    assert_non_null(obj);
    size_t olen = 0;
    assert_int_equal(chunk_object_seal(f->ctx, &f->key, f->vault_id, f->chunk_id, f->plain,
                                       PLAIN_LEN, obj, cap, &olen, NULL),
                     0);
    assert_int_equal(erasure_shards_encode(f->vault_id, f->chunk_id, K, M, obj, olen, f->blobs,
                                           f->lengths, NULL),
                     0);
    free(obj);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    struct fixture *f = *state;
    for (unsigned i = 0; i < K + M; i++) {
        hbc_free(f->blobs[i]);
    }
    chunk_ctx_free(f->ctx);
    chunk_key_clear(&f->key);
    free(f->plain);
    free(f);
    return 0;
}

/* Open obj as the fixture's chunk; on success its plaintext must be the fixture's. */
static int open_chunk(struct fixture *f, const uint8_t *obj, size_t olen)
{
    uint8_t *out = malloc(PLAIN_LEN);
    assert_non_null(out);
    size_t n = 0;
    int rc = chunk_object_open(f->ctx, &f->key, f->vault_id, f->chunk_id, obj, olen, out, PLAIN_LEN,
                               &n, NULL);
    if (rc == 0) {
        assert_int_equal(n, PLAIN_LEN);
        assert_memory_equal(out, f->plain, PLAIN_LEN);
    }
    free(out);
    return rc;
}

/* The slots whose blob fails erasure_shard_decode (what drop_bad in repo_chunk.c drops). */
static uint32_t bad_shards(const uint8_t *const *blobs, const size_t *lengths, unsigned n)
{
    uint32_t bad = 0;
    for (unsigned s = 0; s < n; s++) {
        if (blobs[s] != NULL && erasure_shard_decode(blobs[s], lengths[s], NULL, NULL, NULL) != 0) {
            bad |= UINT32_C(1) << s;
        }
    }
    return bad;
}

/* Flip the middle payload byte of blob s; with fix_trailer, recompute its SHA-256 too. */
static void corrupt(struct fixture *f, unsigned s, bool fix_trailer)
{
    struct erasure_shard_info info;
    const uint8_t *payload;
    assert_int_equal(erasure_shard_decode(f->blobs[s], f->lengths[s], &info, &payload, NULL), 0);
    size_t at = (size_t)(payload - f->blobs[s]) + (size_t)info.shard_length / 2;
    f->blobs[s][at] ^= 0x01;
    /* The header still parses and is consistent: only the payload (and the trailer) differ. */
    assert_int_equal(erasure_shard_parse(f->blobs[s], f->lengths[s], NULL, NULL, NULL), 0);
    if (fix_trailer) {
        size_t body = f->lengths[s] - ERASURE_SHARD_TRAILER;
        assert_int_equal(
            EVP_Digest(f->blobs[s], body, f->blobs[s] + body, NULL, EVP_sha256(), NULL), 1);
        assert_int_equal(erasure_shard_decode(f->blobs[s], f->lengths[s], NULL, NULL, NULL), 0);
    }
}

static void test_healthy_path_rebuilds_without_checksums(void **state)
{
    struct fixture *f = *state;
    const uint8_t *data[K + M] = {f->blobs[0], f->blobs[1], NULL}; /* data shards only */
    uint8_t *buf = NULL;
    size_t cap = 0;
    const uint8_t *obj = NULL;
    size_t olen = 0;
    assert_int_equal(erasure_shards_rebuild_unverified(data, f->lengths, K + M, f->vault_id,
                                                       f->chunk_id, &buf, &cap, &obj, &olen, NULL),
                     0);
    assert_ptr_equal(obj, buf);
    assert_true(cap >= olen);
    assert_int_equal(open_chunk(f, obj, olen), 0);
    /* The next object of the same size reuses the buffer. */
    uint8_t *first = buf;
    assert_int_equal(erasure_shards_rebuild_unverified(data, f->lengths, K + M, f->vault_id,
                                                       f->chunk_id, &buf, &cap, &obj, &olen, NULL),
                     0);
    assert_ptr_equal(buf, first);
    assert_int_equal(open_chunk(f, obj, olen), 0);
    /* The same as the checked rebuild gives. */
    uint8_t *checked = NULL;
    size_t clen = 0;
    assert_int_equal(erasure_shards_rebuild(data, f->lengths, K + M, f->vault_id, f->chunk_id,
                                            &checked, &clen, NULL),
                     0);
    assert_int_equal(clen, olen);
    assert_memory_equal(checked, obj, olen);
    hbc_free(checked);
    /* A lost data shard is decoded from parity on this path too. */
    const uint8_t *degraded[K + M] = {NULL, f->blobs[1], f->blobs[2]};
    assert_int_equal(erasure_shards_rebuild_unverified(degraded, f->lengths, K + M, f->vault_id,
                                                       f->chunk_id, &buf, &cap, &obj, &olen, NULL),
                     0);
    assert_int_equal(open_chunk(f, obj, olen), 0);
    hbc_free(buf);
}

static void test_one_data_shard_is_used_in_place(void **state)
{
    struct fixture *f = *state;
    /* RS(1,1): the object is shard 0's payload; nothing is copied. */
    uint8_t *obj = NULL;
    size_t olen = 0;
    assert_int_equal(erasure_shards_rebuild((const uint8_t *const *)f->blobs, f->lengths, K,
                                            f->vault_id, f->chunk_id, &obj, &olen, NULL),
                     0);
    uint8_t *b[2];
    size_t l[2];
    assert_int_equal(erasure_shards_encode(f->vault_id, f->chunk_id, 1, 1, obj, olen, b, l, NULL),
                     0);
    const uint8_t *only[2] = {b[0], NULL};
    uint8_t *buf = NULL;
    size_t cap = 0;
    const uint8_t *view = NULL;
    size_t vlen = 0;
    assert_int_equal(erasure_shards_rebuild_unverified(only, l, 2, f->vault_id, f->chunk_id, &buf,
                                                       &cap, &view, &vlen, NULL),
                     0);
    assert_null(buf);
    assert_true(view > b[0] && view + vlen <= b[0] + l[0]);
    assert_int_equal(vlen, olen);
    assert_int_equal(open_chunk(f, view, vlen), 0);
    hbc_free(b[0]);
    hbc_free(b[1]);
    hbc_free(obj);
}

/*
 * A node serves data shard 1 with one payload byte flipped (what tests/cluster's
 * hbc-corrupt-shard makes: header intact, the node's own record checksum valid). The healthy
 * path does not look at the shard's SHA-256, so it rebuilds a wrong object: AES-GCM refuses
 * it. The checked rebuild then names shard 1 alone, and the parity shard repairs the object.
 */
static void test_flipped_payload_is_caught_by_gcm_then_found(void **state)
{
    struct fixture *f = *state;
    corrupt(f, 1, false);
    const uint8_t *data[K + M] = {f->blobs[0], f->blobs[1], NULL};
    uint8_t *buf = NULL;
    size_t cap = 0;
    const uint8_t *obj = NULL;
    size_t olen = 0;
    assert_int_equal(erasure_shards_rebuild_unverified(data, f->lengths, K + M, f->vault_id,
                                                       f->chunk_id, &buf, &cap, &obj, &olen, NULL),
                     0);
    assert_int_equal(open_chunk(f, obj, olen), HBC_EAUTH);

    /* The fallback: the same shards, checked, fail and name the bad one. */
    uint8_t *checked = NULL;
    size_t clen = 0;
    struct err e;
    assert_int_equal(erasure_shards_rebuild(data, f->lengths, K + M, f->vault_id, f->chunk_id,
                                            &checked, &clen, &e),
                     HBC_ETOOFEW);
    assert_non_null(strstr(e.msg, "blob 1 HBC_ECORRUPT"));
    assert_int_equal(bad_shards(data, f->lengths, K + M), UINT32_C(1) << 1);

    /* Drop it, add the parity shard: the object opens and is the original. */
    const uint8_t *repaired[K + M] = {f->blobs[0], NULL, f->blobs[2]};
    assert_int_equal(erasure_shards_rebuild(repaired, f->lengths, K + M, f->vault_id, f->chunk_id,
                                            &checked, &clen, NULL),
                     0);
    assert_int_equal(open_chunk(f, checked, clen), 0);
    hbc_free(checked);
    hbc_free(buf);
}

/*
 * Worse: the flipped shard's own SHA-256 was recomputed too, so every check but AES-GCM
 * passes. Only leaving one shard out at a time (repo_chunk.c's leave_one_out) finds it:
 * exactly one choice opens, the one without shard 1.
 */
static void test_valid_looking_bad_shard_found_by_leaving_one_out(void **state)
{
    struct fixture *f = *state;
    corrupt(f, 1, true);
    const uint8_t *all[K + M] = {f->blobs[0], f->blobs[1], f->blobs[2]};
    assert_int_equal(bad_shards(all, f->lengths, K + M), 0);
    uint8_t *buf = NULL;
    size_t cap = 0;
    const uint8_t *obj = NULL;
    size_t olen = 0;
    assert_int_equal(erasure_shards_rebuild_unverified(all, f->lengths, K + M, f->vault_id,
                                                       f->chunk_id, &buf, &cap, &obj, &olen, NULL),
                     0);
    assert_int_equal(open_chunk(f, obj, olen), HBC_EAUTH);
    unsigned opened = 0;
    unsigned which = K + M;
    for (unsigned x = 0; x < K + M; x++) {
        const uint8_t *without[K + M] = {f->blobs[0], f->blobs[1], f->blobs[2]};
        without[x] = NULL;
        uint8_t *o = NULL;
        size_t ol = 0;
        assert_int_equal(erasure_shards_rebuild(without, f->lengths, K + M, f->vault_id,
                                                f->chunk_id, &o, &ol, NULL),
                         0);
        if (open_chunk(f, o, ol) == 0) {
            opened++;
            which = x;
        }
        hbc_free(o);
    }
    assert_int_equal(opened, 1);
    assert_int_equal(which, 1);
    hbc_free(buf);
}

/* A header that does not parse or names another chunk still counts the shard as lost. */
static void test_unverified_rebuild_still_checks_headers(void **state)
{
    struct fixture *f = *state;
    uint8_t other[CHUNK_OBJECT_CHUNK_ID_LEN];
    memcpy(other, f->chunk_id, sizeof other);
    other[0] ^= 1;
    const uint8_t *data[K + M] = {f->blobs[0], f->blobs[1], NULL};
    uint8_t *buf = NULL;
    size_t cap = 0;
    const uint8_t *obj = NULL;
    size_t olen = 0;
    struct err e;
    assert_int_equal(erasure_shards_rebuild_unverified(data, f->lengths, K + M, f->vault_id, other,
                                                       &buf, &cap, &obj, &olen, &e),
                     HBC_ETOOFEW);
    f->blobs[0][0] = 'X'; /* magic */
    assert_int_equal(erasure_shards_rebuild_unverified(data, f->lengths, K + M, f->vault_id,
                                                       f->chunk_id, &buf, &cap, &obj, &olen, &e),
                     HBC_ETOOFEW);
    assert_non_null(strstr(e.msg, "blob 0 HBC_EFORMAT"));
    assert_int_equal(erasure_shards_rebuild_unverified(data, NULL, K + M, f->vault_id, f->chunk_id,
                                                       &buf, &cap, &obj, &olen, NULL),
                     HBC_EINVAL);
    hbc_free(buf);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_healthy_path_rebuilds_without_checksums, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_one_data_shard_is_used_in_place, setup, teardown),
        cmocka_unit_test_setup_teardown(test_flipped_payload_is_caught_by_gcm_then_found, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_valid_looking_bad_shard_found_by_leaving_one_out,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(test_unverified_rebuild_still_checks_headers, setup,
                                        teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
