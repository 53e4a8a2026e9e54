/* Unit tests for common/frame_scatter.c: a frame in pieces, byte for byte frame_encode(). */
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "common/alloc.h"
#include "common/frame.h"
#include "common/frame_scatter.h"

#define BLOBS 4

/* The pieces joined into one buffer (malloc). */
static uint8_t *flatten(const struct frame_scatter *fs)
{
    uint8_t *buf = malloc(fs->len > 0 ? fs->len : 1);
    assert_non_null(buf);
    size_t at = 0;
    for (unsigned i = 0; i < fs->nbufs; i++) {
        assert_true(at + fs->bufs[i].len <= fs->len);
        memcpy(buf + at, fs->bufs[i].base, fs->bufs[i].len);
        at += fs->bufs[i].len;
    }
    assert_int_equal(at, fs->len);
    return buf;
}

/* A GetShardsReply of blobs with data of the sizes given, and one missing key. */
struct reply {
    Hbc__Frame f;
    Hbc__GetShardsReply rep;
    Hbc__ShardBlob blobs[BLOBS];
    Hbc__ShardBlob *bp[BLOBS];
    Hbc__ShardKey miss;
    Hbc__ShardKey *mp[1];
    uint8_t vault[16];
    uint8_t chunk[32];
    uint8_t *data[BLOBS];
};

static void reply_make(struct reply *r, const size_t *sizes, size_t n)
{
    memset(r, 0, sizeof *r);
    hbc__frame__init(&r->f);
    hbc__get_shards_reply__init(&r->rep);
    memset(r->vault, 0xa5, sizeof r->vault);
    memset(r->chunk, 0x5a, sizeof r->chunk);
    for (size_t i = 0; i < n; i++) {
        hbc__shard_blob__init(&r->blobs[i]);
        r->data[i] = malloc(sizes[i] > 0 ? sizes[i] : 1);
        assert_non_null(r->data[i]);
        for (size_t j = 0; j < sizes[i]; j++) {
            r->data[i][j] = (uint8_t)(j * 7 + i);
        }
        r->blobs[i].vault_id = (ProtobufCBinaryData){16, r->vault};
        r->blobs[i].chunk_id = (ProtobufCBinaryData){32, r->chunk};
        r->blobs[i].index = (uint32_t)i;
        r->blobs[i].data = (ProtobufCBinaryData){sizes[i], r->data[i]};
        r->blobs[i].has_scheme_k = r->blobs[i].has_scheme_m = i == 1;
        r->blobs[i].scheme_k = 4;
        r->blobs[i].scheme_m = 2;
        r->bp[i] = &r->blobs[i];
    }
    hbc__shard_key__init(&r->miss);
    r->miss.vault_id = (ProtobufCBinaryData){16, r->vault};
    r->miss.chunk_id = (ProtobufCBinaryData){32, r->chunk};
    r->miss.index = 9;
    r->mp[0] = &r->miss;
    r->rep.shards = r->bp;
    r->rep.n_shards = n;
    r->rep.missing = r->mp;
    r->rep.n_missing = 1;
    r->f.request_id = 123456789;
    r->f.body_case = HBC__FRAME__BODY_GET_SHARDS_REPLY;
    r->f.get_shards_reply = &r->rep;
}

static void reply_free(struct reply *r)
{
    for (size_t i = 0; i < BLOBS; i++) {
        free(r->data[i]);
    }
}

/* Pieces equal frame_encode()'s bytes; large data is pointed at, not copied. */
static void test_same_bytes_as_frame_encode(void **state)
{
    (void)state;
    const size_t sets[][BLOBS] = {
        {0, 1, 1023, 1024},
        {200000, 5, 70000, 1},
        {4u << 20, 4096, 0, 3000},
    };
    for (size_t t = 0; t < sizeof sets / sizeof sets[0]; t++) {
        struct reply r;
        reply_make(&r, sets[t], BLOBS);
        uint8_t *want = NULL;
        size_t wlen = 0;
        struct err e = {0};
        assert_int_equal(frame_encode(&r.f, &want, &wlen, &e), 0);
        struct frame_scatter fs;
        assert_int_equal(frame_scatter_encode(&r.f, &fs, &e), 0);
        assert_int_equal(fs.len, wlen);
        uint8_t *got = flatten(&fs);
        assert_memory_equal(got, want, wlen);
        /* Every blob of FRAME_SCATTER_BORROW_MIN bytes or more is its own piece. */
        for (size_t i = 0; i < BLOBS; i++) {
            bool pointed = false;
            for (unsigned p = 0; p < fs.nbufs; p++) {
                pointed = pointed || (const uint8_t *)fs.bufs[p].base == r.data[i];
            }
            assert_int_equal(pointed, sets[t][i] >= FRAME_SCATTER_BORROW_MIN);
        }
        /* And it reads back as the reply it was. */
        Hbc__Frame *back =
            hbc__frame__unpack(NULL, wlen - FRAME_PREFIX_LEN, got + FRAME_PREFIX_LEN);
        assert_non_null(back);
        assert_int_equal(back->body_case, HBC__FRAME__BODY_GET_SHARDS_REPLY);
        assert_int_equal(back->get_shards_reply->n_shards, BLOBS);
        assert_int_equal(back->get_shards_reply->n_missing, 1);
        hbc__frame__free_unpacked(back, NULL);
        free(got);
        hbc_free(want);
        frame_scatter_free(&fs);
        frame_scatter_free(&fs); /* idempotent */
        reply_free(&r);
    }
}

/* A frame without a body is refused; an allocation failure leaves nothing behind. */
static void test_refusals(void **state)
{
    (void)state;
    Hbc__Frame f = HBC__FRAME__INIT;
    struct frame_scatter fs;
    struct err e = {0};
    assert_int_equal(frame_scatter_encode(&f, &fs, &e), HBC_EINVAL);
    assert_null(fs.bufs);
    assert_null(fs.scratch);

    const size_t sizes[BLOBS] = {5000, 10, 20000, 30};
    struct reply r;
    reply_make(&r, sizes, BLOBS);
    for (long n = 0; n < 6; n++) {
        alloc_fault_after(n);
        int rv = frame_scatter_encode(&r.f, &fs, &e);
        alloc_fault_reset();
        if (rv == 0) {
            frame_scatter_free(&fs);
            continue;
        }
        assert_int_equal(rv, HBC_ENOMEM);
        assert_null(fs.bufs);
        assert_null(fs.scratch);
        assert_int_equal(fs.nbufs, 0);
    }
    reply_free(&r);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_same_bytes_as_frame_encode),
        cmocka_unit_test(test_refusals),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
