/* Unit tests for data-plane framing: encoder and incremental reader. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "common/alloc.h"
#include "common/frame.h"
#include "common/frame_view.h"

/* What the reader delivered: each frame packed again, to compare bytes. */
struct seen {
    size_t count;        /* frames delivered */
    uint8_t *bytes;      /* concatenated encodings of the delivered frames */
    size_t len;          /* bytes used at bytes */
    int stop_after;      /* return HBC_ECANCELED from this frame on (0 = never) */
    uint64_t last_id;    /* request id of the last frame */
    size_t last_shard_n; /* data length of its first shard, if a PutShards */
};

static int seen_cb(Hbc__Frame *f, void *arg)
{
    struct seen *s = arg;
    s->count++;
    s->last_id = f->request_id;
    s->last_shard_n = 0;
    if (f->body_case == HBC__FRAME__BODY_PUT_SHARDS && f->put_shards->n_shards > 0) {
        s->last_shard_n = f->put_shards->shards[0]->data.len;
    }
    uint8_t *enc;
    size_t n;
    assert_int_equal(frame_encode(f, &enc, &n, NULL), 0);
    s->bytes = realloc(s->bytes, s->len + n);
    assert_non_null(s->bytes);
    memcpy(s->bytes + s->len, enc, n);
    s->len += n;
    hbc_free(enc);
    frame_free(f);
    if (s->stop_after != 0 && (int)s->count >= s->stop_after) {
        return HBC_ECANCELED;
    }
    return 0;
}

static void seen_reset(struct seen *s)
{
    free(s->bytes);
    memset(s, 0, sizeof *s);
}

/* A stream of frames of several types, with shards of the given sizes; the caller frees it. */
static uint8_t *sample_stream_of(const size_t *sizes, size_t nsizes, size_t *len_out,
                                 size_t *frames_out)
{
    uint8_t *out = NULL;
    size_t len = 0;
    size_t frames = 0;
    static uint8_t vault[16] = {1, 2, 3};
    static uint8_t chunk[32] = {9, 8, 7};
    for (size_t i = 0; i < nsizes; i++) {
        Hbc__Frame f = HBC__FRAME__INIT;
        Hbc__PutShards put = HBC__PUT_SHARDS__INIT;
        Hbc__ShardBlob blob = HBC__SHARD_BLOB__INIT;
        Hbc__ShardBlob *blobs[1] = {&blob};
        Hbc__StatusRequest status = HBC__STATUS_REQUEST__INIT;
        uint8_t *data = malloc(sizes[i] + 1);
        assert_non_null(data);
        for (size_t j = 0; j < sizes[i]; j++) {
            data[j] = (uint8_t)(j * 31 + i);
        }
        f.request_id = 1000 + i;
        if (i % 2 == 0) {
            blob.vault_id = (ProtobufCBinaryData){sizeof vault, vault};
            blob.chunk_id = (ProtobufCBinaryData){sizeof chunk, chunk};
            blob.index = (uint32_t)i;
            blob.data = (ProtobufCBinaryData){sizes[i], data};
            put.n_shards = 1;
            put.shards = blobs;
            f.body_case = HBC__FRAME__BODY_PUT_SHARDS;
            f.put_shards = &put;
        } else {
            f.body_case = HBC__FRAME__BODY_STATUS;
            f.status = &status;
        }
        size_t n = frame_encoded_size(&f);
        out = realloc(out, len + n);
        assert_non_null(out);
        size_t wrote;
        assert_int_equal(frame_encode_into(&f, out + len, n, &wrote, NULL), 0);
        assert_int_equal(wrote, n);
        len += n;
        frames++;
        free(data);
    }
    *len_out = len;
    *frames_out = frames;
    return out;
}

/* The usual sample: put frames (even) and status frames (odd), one body of 70000 bytes. */
static uint8_t *sample_stream(size_t *len_out, size_t *frames_out)
{
    static const size_t sizes[] = {0, 1, 100, 70000, 5};
    return sample_stream_of(sizes, sizeof sizes / sizeof sizes[0], len_out, frames_out);
}

static void test_whole_stream_round_trips(void **state)
{
    (void)state;
    size_t len, frames;
    uint8_t *stream = sample_stream(&len, &frames);
    struct seen s = {0};
    struct frame_reader r;
    frame_reader_init(&r, 0, seen_cb, &s);
    assert_int_equal(r.max_len, FRAME_MAX_DEFAULT);
    assert_int_equal(frame_reader_feed(&r, stream, len, NULL), 0);
    assert_int_equal(s.count, frames);
    assert_int_equal(s.len, len);
    assert_memory_equal(s.bytes, stream, len);
    assert_int_equal(s.last_id, 1004);
    assert_int_equal(frame_reader_partial(&r), 0);
    frame_reader_release(&r);
    seen_reset(&s);
    free(stream);
}

static void test_split_feeding_equals_whole(void **state)
{
    (void)state;
    size_t len, frames;
    uint8_t *stream = sample_stream(&len, &frames);

    /* Byte by byte. */
    struct seen s = {0};
    struct frame_reader r;
    frame_reader_init(&r, 0, seen_cb, &s);
    for (size_t i = 0; i < len; i++) {
        assert_int_equal(frame_reader_feed(&r, stream + i, 1, NULL), 0);
    }
    assert_int_equal(s.count, frames);
    assert_int_equal(s.len, len);
    assert_memory_equal(s.bytes, stream, len);
    assert_int_equal(frame_reader_partial(&r), 0);
    frame_reader_release(&r);
    seen_reset(&s);

    /* Pieces of pseudo-random sizes, including empty ones, crossing every boundary. */
    for (unsigned seed = 1; seed <= 20; seed++) {
        frame_reader_init(&r, 0, seen_cb, &s);
        srand(seed);
        size_t off = 0;
        while (off < len) {
            size_t n = (size_t)rand() % (seed * 700);
            n = n < len - off ? n : len - off;
            assert_int_equal(frame_reader_feed(&r, stream + off, n, NULL), 0);
            off += n;
        }
        assert_int_equal(s.count, frames);
        assert_memory_equal(s.bytes, stream, len);
        frame_reader_release(&r);
        seen_reset(&s);
    }
    free(stream);
}

static void test_large_frame_in_pieces_keeps_no_buffer(void **state)
{
    (void)state;
    size_t n = (size_t)4 << 20;
    uint8_t *data = malloc(n);
    assert_non_null(data);
    for (size_t i = 0; i < n; i++) {
        data[i] = (uint8_t)(i ^ (i >> 9));
    }
    Hbc__Frame f = HBC__FRAME__INIT;
    Hbc__PutShards put = HBC__PUT_SHARDS__INIT;
    Hbc__ShardBlob blob = HBC__SHARD_BLOB__INIT;
    Hbc__ShardBlob *blobs[1] = {&blob};
    blob.data = (ProtobufCBinaryData){n, data};
    put.n_shards = 1;
    put.shards = blobs;
    f.request_id = 7;
    f.body_case = HBC__FRAME__BODY_PUT_SHARDS;
    f.put_shards = &put;
    uint8_t *enc;
    size_t len;
    assert_int_equal(frame_encode(&f, &enc, &len, NULL), 0);

    struct seen s = {0};
    struct frame_reader r;
    frame_reader_init(&r, 0, seen_cb, &s);
    for (size_t off = 0; off < len; off += 65536) {
        size_t piece = len - off < 65536 ? len - off : 65536;
        assert_int_equal(frame_reader_feed(&r, enc + off, piece, NULL), 0);
        if (off + piece < len) {
            assert_int_equal(s.count, 0);
            assert_int_equal(frame_reader_partial(&r), off + piece);
        }
    }
    assert_int_equal(s.count, 1);
    assert_int_equal(s.last_shard_n, n);
    assert_memory_equal(s.bytes, enc, len);
    /* A big body buffer is not kept between frames. */
    assert_null(r.buf);
    frame_reader_release(&r);
    seen_reset(&s);
    hbc_free(enc);
    free(data);
}

static void test_4gib_length_is_too_big_before_any_allocation(void **state)
{
    (void)state;
    struct seen s = {0};
    struct frame_reader r;
    struct err e;
    frame_reader_init(&r, 0, seen_cb, &s);
    static const uint8_t huge[] = {0xff, 0xff, 0xff, 0xff, 0x08, 0x01};
    /* Every allocation fails from here on: a reader that allocated would say HBC_ENOMEM. */
    alloc_fault_after(0);
    int rc = frame_reader_feed(&r, huge, sizeof huge, &e);
    alloc_fault_reset();
    assert_int_equal(rc, HBC_ETOOBIG);
    assert_int_equal(e.code, HBC_ETOOBIG);
    assert_non_null(strstr(e.msg, "length 4294967295 over the limit of 67108864"));
    assert_null(r.buf);
    assert_int_equal(s.count, 0);

    /* The same when the prefix arrives one byte at a time. */
    frame_reader_init(&r, 0, seen_cb, &s);
    alloc_fault_after(0);
    for (size_t i = 0; i < 3; i++) {
        assert_int_equal(frame_reader_feed(&r, huge + i, 1, NULL), 0);
    }
    rc = frame_reader_feed(&r, huge + 3, 1, NULL);
    alloc_fault_reset();
    assert_int_equal(rc, HBC_ETOOBIG);
    frame_reader_release(&r);
}

static void test_limit_is_inclusive(void **state)
{
    (void)state;
    Hbc__Frame f = HBC__FRAME__INIT;
    Hbc__StatusRequest status = HBC__STATUS_REQUEST__INIT;
    f.request_id = 1;
    f.body_case = HBC__FRAME__BODY_STATUS;
    f.status = &status;
    uint8_t buf[64];
    size_t len;
    assert_int_equal(frame_encode_into(&f, buf, sizeof buf, &len, NULL), 0);
    size_t body = len - FRAME_PREFIX_LEN;

    struct seen s = {0};
    struct frame_reader r;
    frame_reader_init(&r, body, seen_cb, &s);
    assert_int_equal(frame_reader_feed(&r, buf, len, NULL), 0);
    assert_int_equal(s.count, 1);
    frame_reader_release(&r);

    frame_reader_init(&r, body - 1, seen_cb, &s);
    assert_int_equal(frame_reader_feed(&r, buf, len, NULL), HBC_ETOOBIG);
    assert_int_equal(s.count, 1);
    frame_reader_release(&r);
    seen_reset(&s);
}

static void test_truncated_frame_is_never_delivered(void **state)
{
    (void)state;
    size_t len, frames;
    uint8_t *stream = sample_stream(&len, &frames);
    struct seen s = {0};
    struct frame_reader r;
    frame_reader_init(&r, 0, seen_cb, &s);
    /* All but the last byte: the last frame stays incomplete. */
    assert_int_equal(frame_reader_feed(&r, stream, len - 1, NULL), 0);
    assert_int_equal(s.count, frames - 1);
    assert_true(frame_reader_partial(&r) > 0);
    assert_int_equal(s.last_id, 1003);
    frame_reader_release(&r);
    seen_reset(&s);

    /* Only part of a prefix. */
    frame_reader_init(&r, 0, seen_cb, &s);
    assert_int_equal(frame_reader_feed(&r, stream, 3, NULL), 0);
    assert_int_equal(s.count, 0);
    assert_int_equal(frame_reader_partial(&r), 3);
    frame_reader_release(&r);
    free(stream);
}

static void test_unknown_frame_type_is_a_protocol_error(void **state)
{
    (void)state;
    struct seen s = {0};
    struct frame_reader r;
    struct err e;
    /* A newer peer's message: request_id = 5 and an unknown field 99 (length-delimited). */
    static const uint8_t newer[] = {0, 0, 0, 5, 0x08, 0x05, 0x9a, 0x06, 0x00};
    frame_reader_init(&r, 0, seen_cb, &s);
    assert_int_equal(frame_reader_feed(&r, newer, sizeof newer, &e), HBC_EPROTO);
    assert_non_null(strstr(e.msg, "unknown frame type"));
    assert_non_null(strstr(e.msg, "request 5"));
    assert_int_equal(s.count, 0);
    frame_reader_release(&r);

    /* A frame with no body at all (the encoder refuses to make one). */
    Hbc__Frame f = HBC__FRAME__INIT;
    f.request_id = 6;
    uint8_t buf[16];
    size_t len;
    assert_int_equal(frame_encode_into(&f, buf, sizeof buf, &len, NULL), HBC_EINVAL);
    size_t body = hbc__frame__pack(&f, buf + 4);
    buf[0] = buf[1] = buf[2] = 0;
    buf[3] = (uint8_t)body;
    frame_reader_init(&r, 0, seen_cb, &s);
    assert_int_equal(frame_reader_feed(&r, buf, 4 + body, NULL), HBC_EPROTO);
    assert_int_equal(s.count, 0);
    frame_reader_release(&r);
}

/*
 * Field number 0 spelled as a two-byte tag (0x85 0x00: field 0, 32-bit) inside
 * PutShards: protobuf-c 1.4 unpacks it as an unknown field but refuses the
 * one-byte tag it would write back (found by fuzz_frame_reader), so the reader
 * refuses it, and a valid unknown field still passes.
 */
static void test_field_number_zero_is_refused(void **state)
{
    (void)state;
    struct seen s = {0};
    struct frame_reader r;
    struct err e;
    static const uint8_t zero[] = {0,    0,    0,    10,   0x08, 0x01, 0x1a,
                                   0x06, 0x85, 0x00, 0x00, 0x00, 0x00, 0x00};
    frame_reader_init(&r, 0, seen_cb, &s);
    assert_int_equal(frame_reader_feed(&r, zero, sizeof zero, &e), HBC_EFORMAT);
    assert_non_null(strstr(e.msg, "field numbered 0"));
    assert_int_equal(s.count, 0);
    frame_reader_release(&r);
    /* The same with field 9 (0x4d: field 9, 32-bit) instead: delivered. */
    static const uint8_t nine[] = {0,    0,    0,    9,    0x08, 0x01, 0x1a,
                                   0x05, 0x4d, 0x00, 0x00, 0x00, 0x00};
    frame_reader_init(&r, 0, seen_cb, &s);
    assert_int_equal(frame_reader_feed(&r, nine, sizeof nine, &e), 0);
    assert_int_equal(s.count, 1);
    frame_reader_release(&r);
    seen_reset(&s);
}

static void test_garbage_is_a_format_error_and_poisons(void **state)
{
    (void)state;
    struct seen s = {0};
    struct frame_reader r;
    struct err e;

    static const uint8_t zero[] = {0, 0, 0, 0};
    frame_reader_init(&r, 0, seen_cb, &s);
    assert_int_equal(frame_reader_feed(&r, zero, sizeof zero, &e), HBC_EFORMAT);
    assert_non_null(strstr(e.msg, "zero length"));
    frame_reader_release(&r);

    static const uint8_t junk[] = {0, 0, 0, 6, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff};
    frame_reader_init(&r, 0, seen_cb, &s);
    assert_int_equal(frame_reader_feed(&r, junk, sizeof junk, &e), HBC_EFORMAT);
    assert_non_null(strstr(e.msg, "does not unpack"));

    /* Poisoned: a valid frame afterwards is not delivered. */
    size_t len, frames;
    uint8_t *stream = sample_stream(&len, &frames);
    assert_int_equal(frame_reader_feed(&r, stream, len, &e), HBC_EFORMAT);
    assert_non_null(strstr(e.msg, "earlier error"));
    assert_int_equal(s.count, 0);
    frame_reader_release(&r);

    /* Garbage after good frames: the good ones are delivered, then the error. */
    uint8_t *mixed = malloc(len + sizeof junk);
    assert_non_null(mixed);
    memcpy(mixed, stream, len);
    memcpy(mixed + len, junk, sizeof junk);
    frame_reader_init(&r, 0, seen_cb, &s);
    assert_int_equal(frame_reader_feed(&r, mixed, len + sizeof junk, NULL), HBC_EFORMAT);
    assert_int_equal(s.count, frames);
    frame_reader_release(&r);
    seen_reset(&s);
    free(mixed);
    free(stream);
}

static void test_callback_error_stops_the_reader(void **state)
{
    (void)state;
    size_t len, frames;
    uint8_t *stream = sample_stream(&len, &frames);
    struct seen s = {.stop_after = 2};
    struct frame_reader r;
    frame_reader_init(&r, 0, seen_cb, &s);
    assert_int_equal(frame_reader_feed(&r, stream, len, NULL), HBC_ECANCELED);
    assert_int_equal(s.count, 2);
    assert_int_equal(frame_reader_feed(&r, stream, len, NULL), HBC_ECANCELED);
    assert_int_equal(s.count, 2);
    frame_reader_release(&r);
    seen_reset(&s);
    free(stream);
}

static void test_out_of_memory_is_reported(void **state)
{
    (void)state;
    size_t len, frames;
    uint8_t *stream = sample_stream(&len, &frames);
    struct seen s = {0};
    struct frame_reader r;
    struct err e;

    /* Unpacking a frame that lies whole in the input. */
    frame_reader_init(&r, 0, seen_cb, &s);
    alloc_fault_after(0);
    int rc = frame_reader_feed(&r, stream, len, &e);
    alloc_fault_reset();
    assert_int_equal(rc, HBC_ENOMEM);
    assert_int_equal(s.count, 0);
    frame_reader_release(&r);

    /* The body buffer of a frame that arrives in pieces. */
    frame_reader_init(&r, 0, seen_cb, &s);
    alloc_fault_after(0);
    rc = frame_reader_feed(&r, stream, 6, &e);
    alloc_fault_reset();
    assert_int_equal(rc, HBC_ENOMEM);
    frame_reader_release(&r);

    /* The encoder. */
    Hbc__Frame f = HBC__FRAME__INIT;
    Hbc__StatusRequest status = HBC__STATUS_REQUEST__INIT;
    f.body_case = HBC__FRAME__BODY_STATUS;
    f.status = &status;
    uint8_t *out = (uint8_t *)&f;
    size_t n;
    alloc_fault_after(0);
    rc = frame_encode(&f, &out, &n, &e);
    alloc_fault_reset();
    assert_int_equal(rc, HBC_ENOMEM);
    assert_null(out);
    seen_reset(&s);
    free(stream);
}

static void test_encode_into_checks_the_buffer(void **state)
{
    (void)state;
    Hbc__Frame f = HBC__FRAME__INIT;
    Hbc__StatusRequest status = HBC__STATUS_REQUEST__INIT;
    f.request_id = 300;
    f.body_case = HBC__FRAME__BODY_STATUS;
    f.status = &status;
    size_t need = frame_encoded_size(&f);
    uint8_t buf[64];
    size_t len = 0;
    assert_int_equal(frame_encode_into(&f, buf, need - 1, &len, NULL), HBC_ETRUNCATED);
    assert_int_equal(frame_encode_into(&f, buf, sizeof buf, &len, NULL), 0);
    assert_int_equal(len, need);
    /* Big-endian prefix holding the body length. */
    assert_int_equal(buf[0], 0);
    assert_int_equal(buf[1], 0);
    assert_int_equal(buf[2], 0);
    assert_int_equal(buf[3], need - 4);
}

/* ---------------------------------------------------------------------- */
/* Bodies written in place (frame_reader_room), as TLS decrypts them       */

/* A put frame decoded in place: checked like any other, then given back. */
static int seen_view_cb(Hbc__Frame *f, uint8_t *body, void *arg)
{
    struct seen *s = arg;
    uint8_t *enc;
    size_t n;
    assert_int_equal(frame_encode(f, &enc, &n, NULL), 0);
    s->bytes = realloc(s->bytes, s->len + n);
    assert_non_null(s->bytes);
    memcpy(s->bytes + s->len, enc, n);
    s->len += n;
    s->count++;
    s->last_id = f->request_id;
    hbc_free(enc);
    frame_view_release(f, body, NULL);
    return 0;
}

/*
 * Deliver stream[0..len) the way TLS does with a read buffer: the bytes
 * arrive in records whose ends are given in cuts[0..ncuts) (then the rest);
 * of what has arrived, as much as the reader has room for is "decrypted"
 * straight into its buffer, anything else goes through a scratch buffer
 * of at most chunk bytes. Returns the first nonzero feed result, or 0.
 */
static int feed_like_tls(struct frame_reader *r, const uint8_t *stream, size_t len,
                         const size_t *cuts, size_t ncuts, size_t chunk, size_t *in_place)
{
    size_t pos = 0;
    uint8_t *scratch = malloc(chunk);
    assert_non_null(scratch);
    for (size_t c = 0; c <= ncuts; c++) {
        size_t arrived = c < ncuts ? cuts[c] : len;
        while (pos < arrived) {
            size_t room;
            uint8_t *dst = frame_reader_room(r, &room);
            size_t n = arrived - pos;
            int rc;
            if (dst != NULL && room > 0) {
                n = n < room ? n : room;
                memcpy(dst, stream + pos, n);
                *in_place += n;
                rc = frame_reader_feed(r, dst, n, NULL);
            } else {
                n = n < chunk ? n : chunk;
                memcpy(scratch, stream + pos, n);
                rc = frame_reader_feed(r, scratch, n, NULL);
            }
            if (rc != 0) {
                free(scratch);
                return rc;
            }
            pos += n;
        }
    }
    free(scratch);
    return 0;
}

static void test_room_split_at_every_byte_equals_whole(void **state)
{
    (void)state;
    static const size_t sizes[] = {0, 1, 100, 300, 5, 2};
    size_t len, frames;
    uint8_t *stream = sample_stream_of(sizes, sizeof sizes / sizeof sizes[0], &len, &frames);
    for (int view = 0; view < 2; view++) {
        for (size_t k = 0; k <= len; k++) {
            /* Two records cut at k, then the same with the scratch path taking 1 byte at a time. */
            for (size_t chunk = 1; chunk <= 64; chunk += 63) {
                struct seen s = {0};
                struct frame_reader r;
                frame_reader_init(&r, 0, seen_cb, &s);
                if (view) {
                    frame_reader_set_view_cb(&r, seen_view_cb, NULL);
                }
                size_t in_place = 0;
                assert_int_equal(feed_like_tls(&r, stream, len, &k, 1, chunk, &in_place), 0);
                assert_int_equal(s.count, frames);
                assert_int_equal(s.len, len);
                assert_memory_equal(s.bytes, stream, len);
                assert_int_equal(frame_reader_partial(&r), 0);
                if (chunk == 1) {
                    assert_true(in_place > 0);
                }
                frame_reader_release(&r);
                seen_reset(&s);
            }
        }
    }
    free(stream);
}

static void test_room_with_records_of_every_size(void **state)
{
    (void)state;
    static const size_t sizes[] = {0, 1, 100, 5, 70000, 7, 3};
    size_t len, frames;
    uint8_t *stream = sample_stream_of(sizes, sizeof sizes / sizeof sizes[0], &len, &frames);
    size_t *cuts = malloc((len + 1) * sizeof *cuts);
    assert_non_null(cuts);
    for (size_t rec = 1; rec <= 40; rec++) {
        size_t ncuts = 0;
        for (size_t at = rec; at < len; at += rec * 97) { /* a record of rec, then larger ones */
            cuts[ncuts++] = at;
        }
        struct seen s = {0};
        struct frame_reader r;
        frame_reader_init(&r, 0, seen_cb, &s);
        frame_reader_set_view_cb(&r, seen_view_cb, NULL);
        size_t in_place = 0;
        assert_int_equal(feed_like_tls(&r, stream, len, cuts, ncuts, 16384, &in_place), 0);
        assert_int_equal(s.count, frames);
        assert_memory_equal(s.bytes, stream, len);
        /* Most of the 70000-byte body was written in place. */
        assert_true(in_place > 50000);
        frame_reader_release(&r);
        seen_reset(&s);
    }
    free(cuts);
    free(stream);
}

static void test_room_only_inside_a_bounded_body(void **state)
{
    (void)state;
    struct seen s = {0};
    struct frame_reader r;
    struct err e;
    size_t room = 99;
    frame_reader_init(&r, 1000, seen_cb, &s);
    assert_null(frame_reader_room(&r, &room));
    assert_int_equal(room, 0);

    /* Half a prefix: still no room. */
    static const uint8_t at_limit[] = {0x00, 0x00, 0x03, 0xe8};
    assert_int_equal(frame_reader_feed(&r, at_limit, 2, NULL), 0);
    assert_null(frame_reader_room(&r, &room));
    /* The whole prefix of a body at the limit: room for exactly that body. */
    assert_int_equal(frame_reader_feed(&r, at_limit + 2, 2, NULL), 0);
    uint8_t *dst = frame_reader_room(&r, &room);
    assert_non_null(dst);
    assert_int_equal(room, 1000);
    /* Writing past the room is refused and poisons the reader. */
    assert_int_equal(frame_reader_feed(&r, dst, 1001, &e), HBC_EINVAL);
    assert_null(frame_reader_room(&r, &room));
    assert_int_equal(frame_reader_feed(&r, at_limit, 1, NULL), HBC_EINVAL);
    frame_reader_release(&r);

    /* One byte over the limit: refused from the prefix, before any allocation. */
    static const uint8_t over[] = {0x00, 0x00, 0x03, 0xe9};
    frame_reader_init(&r, 1000, seen_cb, &s);
    alloc_fault_after(0);
    int rc = frame_reader_feed(&r, over, sizeof over, &e);
    assert_null(frame_reader_room(&r, &room));
    alloc_fault_reset();
    assert_int_equal(rc, HBC_ETOOBIG);
    assert_null(r.buf);
    assert_int_equal(room, 0);
    frame_reader_release(&r);

    /* The same prefix arriving a byte at a time, each byte asking for room first. */
    frame_reader_init(&r, 1000, seen_cb, &s);
    alloc_fault_after(0);
    for (size_t i = 0; i < 3; i++) {
        assert_null(frame_reader_room(&r, &room));
        assert_int_equal(frame_reader_feed(&r, over + i, 1, NULL), 0);
    }
    rc = frame_reader_feed(&r, over + 3, 1, NULL);
    assert_null(frame_reader_room(&r, &room));
    alloc_fault_reset();
    assert_int_equal(rc, HBC_ETOOBIG);
    assert_null(r.buf);
    frame_reader_release(&r);

    /* No memory for the body: no room, and the next feed says why. */
    frame_reader_init(&r, 1000, seen_cb, &s);
    assert_int_equal(frame_reader_feed(&r, at_limit, sizeof at_limit, NULL), 0);
    alloc_fault_after(0);
    assert_null(frame_reader_room(&r, &room));
    alloc_fault_reset();
    static const uint8_t byte = 0x08;
    assert_int_equal(frame_reader_feed(&r, &byte, 1, &e), HBC_ENOMEM);
    assert_int_equal(s.count, 0);
    frame_reader_release(&r);
    seen_reset(&s);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_whole_stream_round_trips),
        cmocka_unit_test(test_split_feeding_equals_whole),
        cmocka_unit_test(test_large_frame_in_pieces_keeps_no_buffer),
        cmocka_unit_test(test_4gib_length_is_too_big_before_any_allocation),
        cmocka_unit_test(test_limit_is_inclusive),
        cmocka_unit_test(test_truncated_frame_is_never_delivered),
        cmocka_unit_test(test_unknown_frame_type_is_a_protocol_error),
        cmocka_unit_test(test_field_number_zero_is_refused),
        cmocka_unit_test(test_garbage_is_a_format_error_and_poisons),
        cmocka_unit_test(test_callback_error_stops_the_reader),
        cmocka_unit_test(test_out_of_memory_is_reported),
        cmocka_unit_test(test_encode_into_checks_the_buffer),
        cmocka_unit_test(test_room_split_at_every_byte_equals_whole),
        cmocka_unit_test(test_room_with_records_of_every_size),
        cmocka_unit_test(test_room_only_inside_a_bounded_body),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
