/* Unit tests for common/put_frame.c: a PutShards frame in pieces, byte for byte frame_encode(). */
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "common/alloc.h"
#include "common/crypto.h"
#include "common/erasure.h"
#include "common/frame.h"
#include "common/put_frame.h"
#include "common/shard_scheme.h"

#define SHARDS 5

/* The same request through protobuf-c: each shard's data is head || data || trailer. */
static uint8_t *reference(uint64_t id, const struct node_client_shard *sh, size_t n, uint64_t epoch,
                          size_t *len)
{
    Hbc__ShardBlob blobs[SHARDS];
    Hbc__ShardBlob *bp[SHARDS];
    uint8_t *whole[SHARDS] = {0};
    for (size_t i = 0; i < n; i++) {
        hbc__shard_blob__init(&blobs[i]);
        blobs[i].vault_id = (ProtobufCBinaryData){16, (uint8_t *)sh[i].vault_id};
        blobs[i].chunk_id = (ProtobufCBinaryData){32, (uint8_t *)sh[i].chunk_id};
        bool tagged = false;
        shard_slot_to_wire(sh[i].index, &blobs[i].index, &tagged, &blobs[i].scheme_k,
                           &blobs[i].scheme_m);
        blobs[i].has_scheme_k = blobs[i].has_scheme_m = tagged;
        if (sh[i].head != NULL) {
            size_t total = sh[i].head_len + sh[i].len + ERASURE_SHARD_TRAILER;
            whole[i] = hbc_calloc(1, total);
            assert_non_null(whole[i]);
            memcpy(whole[i], sh[i].head, sh[i].head_len);
            memcpy(whole[i] + sh[i].head_len, sh[i].data, sh[i].len);
            blobs[i].data = (ProtobufCBinaryData){total, whole[i]};
        } else {
            blobs[i].data = (ProtobufCBinaryData){sh[i].len, (uint8_t *)sh[i].data};
        }
        if (sh[i].head != NULL || sh[i].sha256_unset) {
            blobs[i].has_sha256_unset = true;
            blobs[i].sha256_unset = true;
        }
        bp[i] = &blobs[i];
    }
    Hbc__Frame f = HBC__FRAME__INIT;
    Hbc__PutShards put = HBC__PUT_SHARDS__INIT;
    put.n_shards = n;
    put.shards = bp;
    put.has_epoch = epoch != 0;
    put.epoch = epoch;
    f.request_id = id;
    f.body_case = HBC__FRAME__BODY_PUT_SHARDS;
    f.put_shards = &put;
    uint8_t *out = NULL;
    assert_int_equal(frame_encode(&f, &out, len, NULL), 0);
    for (size_t i = 0; i < n; i++) {
        hbc_free(whole[i]);
    }
    return out;
}

/*
 * Pieces concatenated equal frame_encode() of the same request, with and without heads, epoch
 * and scheme-tagged slots.
 */
static void test_pieces_match_frame_encode(void **state)
{
    (void)state;
    uint8_t vault[16], chunk[32];
    crypto_random(vault, sizeof vault, NULL);
    crypto_random(chunk, sizeof chunk, NULL);
    size_t sizes[SHARDS] = {1, 127, 128, 70000, 300001};
    uint8_t *data[SHARDS];
    uint8_t heads[SHARDS][ERASURE_SHARD_HEAD_MAX];
    size_t head_lens[SHARDS];
    for (size_t i = 0; i < SHARDS; i++) {
        data[i] = hbc_malloc(sizes[i]);
        assert_non_null(data[i]);
        crypto_random(data[i], sizes[i], NULL);
        struct erasure_shard_info info = {.k = 4,
                                          .m = 1,
                                          .index = (unsigned)i,
                                          .object_length = 4 * sizes[i],
                                          .shard_length = sizes[i]};
        memcpy(info.vault_id, vault, 16);
        memcpy(info.chunk_id, chunk, 32);
        assert_int_equal(erasure_shard_head(&info, heads[i], &head_lens[i], NULL), 0);
    }
    uint64_t ids[] = {0, 1, 127, 128, UINT64_MAX};
    uint64_t epochs[] = {0, 1, 300, UINT64_MAX};
    for (int mode = 0; mode < 3; mode++) {
        struct node_client_shard sh[SHARDS];
        for (size_t i = 0; i < SHARDS; i++) {
            bool head = mode == 2 || (mode == 1 && i % 2 == 0);
            sh[i] = (struct node_client_shard){
                .vault_id = vault,
                .chunk_id = chunk,
                /* mode 1: some shards of another scheme */
                .index = mode == 1 && i % 2 == 1 ? shard_slot(4, 1, 2, 1, (unsigned)(i % 3))
                                                 : (uint32_t)(i * 70),
                .data = data[i],
                .len = sizes[i],
                .sha256_unset = mode == 1 && i == 1,
                .head = head ? heads[i] : NULL,
                .head_len = head ? head_lens[i] : 0};
        }
        for (size_t a = 0; a < sizeof ids / sizeof ids[0]; a++) {
            for (size_t b = 0; b < sizeof epochs / sizeof epochs[0]; b++) {
                size_t n = 1 + (a + b) % SHARDS;
                size_t want_len = 0;
                uint8_t *want = reference(ids[a], sh, n, epochs[b], &want_len);
                struct put_frame pf;
                struct err e;
                assert_int_equal(put_frame_encode(ids[a], sh, n, epochs[b], &pf, &e), 0);
                assert_int_equal(pf.len, want_len);
                uint8_t *got = put_frame_flatten(&pf);
                assert_non_null(got);
                assert_memory_equal(got, want, want_len);
                /* Shard data is pointed at, never copied. */
                size_t borrowed = 0;
                for (unsigned p = 0; p < pf.nbufs; p++) {
                    for (size_t i = 0; i < n; i++) {
                        borrowed += pf.bufs[p].base == (char *)data[i] ? 1 : 0;
                    }
                }
                assert_int_equal(borrowed, n);
                hbc_free(got);
                hbc_free(want);
                put_frame_free(&pf);
            }
        }
    }
    for (size_t i = 0; i < SHARDS; i++) {
        hbc_free(data[i]);
    }
}

static void test_bad_requests_are_refused(void **state)
{
    (void)state;
    uint8_t vault[16] = {0}, chunk[32] = {0}, byte = 7;
    uint8_t head[ERASURE_SHARD_HEAD_MAX + 1] = {0};
    struct put_frame pf;
    struct err e;
    struct node_client_shard sh = {.vault_id = vault, .chunk_id = chunk, .data = &byte, .len = 1};
    assert_int_equal(put_frame_encode(1, &sh, 0, 0, &pf, &e), HBC_EINVAL);
    assert_int_equal(put_frame_encode(1, NULL, 1, 0, &pf, &e), HBC_EINVAL);
    sh.data = NULL;
    assert_int_equal(put_frame_encode(1, &sh, 1, 0, &pf, &e), HBC_EINVAL);
    sh.data = &byte;
    sh.head = head;
    sh.head_len = sizeof head;
    assert_int_equal(put_frame_encode(1, &sh, 1, 0, &pf, &e), HBC_EINVAL);
    assert_non_null(strstr(e.msg, "head"));
    assert_null(pf.bufs);
    alloc_fault_after(0);
    sh.head_len = 10;
    assert_int_equal(put_frame_encode(1, &sh, 1, 0, &pf, &e), HBC_ENOMEM);
    alloc_fault_after(-1);
    assert_null(pf.bufs);
    assert_null(pf.scratch);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_pieces_match_frame_encode),
        cmocka_unit_test(test_bad_requests_are_refused),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
