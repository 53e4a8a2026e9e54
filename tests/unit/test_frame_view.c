/* Unit tests for the zero-copy PutShards decoder, against protobuf-c's own encoder and decoder. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "common/alloc.h"
#include "common/frame.h"
#include "common/frame_pool.h"
#include "common/frame_view.h"
#include "pb_compare.h"

static uint64_t rng_state = 0x9e3779b97f4a7c15ULL;

static uint64_t rnd(void)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return rng_state;
}

static size_t rnd_below(size_t n)
{
    return n == 0 ? 0 : (size_t)(rnd() % n);
}

/* Storage of one random frame, freed by frame_gen_free(). */
struct frame_gen {
    Hbc__Frame frame;                        /* the frame */
    Hbc__PutShards put;                      /* its body */
    Hbc__ShardBlob blobs[12];                /* the shards */
    Hbc__ShardBlob *bp[12];                  /* pointers to them */
    uint8_t *bufs[64];                       /* heap buffers to free */
    size_t nbufs;                            /* entries in bufs */
    ProtobufCMessageUnknownField unk[3][16]; /* unknown fields: frame, put, per blob (shared) */
};

static uint8_t *gen_bytes(struct frame_gen *g, size_t n)
{
    uint8_t *p = malloc(n + 1);
    assert_non_null(p);
    for (size_t i = 0; i < n; i++) {
        p[i] = (uint8_t)rnd();
    }
    assert_true(g->nbufs < 64);
    g->bufs[g->nbufs++] = p;
    return p;
}

static size_t put_varint(uint8_t *p, uint64_t v)
{
    size_t n = 0;
    while (v >= 0x80) {
        p[n++] = (uint8_t)(v | 0x80);
        v >>= 7;
    }
    p[n++] = (uint8_t)v;
    return n;
}

/*
 * Fill u with n unknown fields for a message of type d: numbers it does not
 * know, every wire type protobuf-c scans (varint, 64-bit, 32-bit, bytes).
 */
static size_t gen_unknown(struct frame_gen *g, const ProtobufCMessageDescriptor *d,
                          ProtobufCMessageUnknownField *u, size_t n)
{
    static const ProtobufCWireType wires[] = {
        PROTOBUF_C_WIRE_TYPE_VARINT, PROTOBUF_C_WIRE_TYPE_64BIT, PROTOBUF_C_WIRE_TYPE_32BIT,
        PROTOBUF_C_WIRE_TYPE_LENGTH_PREFIXED};
    for (size_t i = 0; i < n; i++) {
        uint32_t tag;
        do {
            tag = (uint32_t)(1 + rnd_below(rnd() % 2 ? 30 : 100000));
        } while (protobuf_c_message_descriptor_get_field(d, tag) != NULL);
        u[i].tag = tag;
        u[i].wire_type = wires[rnd_below(4)];
        uint8_t *p = gen_bytes(g, 16 + 300);
        switch (u[i].wire_type) {
        case PROTOBUF_C_WIRE_TYPE_VARINT:
            u[i].len = put_varint(p, rnd() >> rnd_below(64));
            break;
        case PROTOBUF_C_WIRE_TYPE_64BIT:
            u[i].len = 8;
            break;
        case PROTOBUF_C_WIRE_TYPE_32BIT:
            u[i].len = 4;
            break;
        default: {
            size_t l = rnd_below(300);
            size_t h = put_varint(p, l);
            u[i].len = h + l; /* the rest of p is random already */
            break;
        }
        }
        u[i].data = p;
    }
    return n;
}

/* A random PutShards frame, the way a client would encode it (plus unknown fields). */
static void frame_gen(struct frame_gen *g, bool unknown)
{
    memset(g, 0, sizeof *g);
    hbc__frame__init(&g->frame);
    hbc__put_shards__init(&g->put);
    g->frame.request_id = rnd() >> rnd_below(64);
    g->frame.body_case = HBC__FRAME__BODY_PUT_SHARDS;
    g->frame.put_shards = &g->put;
    g->put.n_shards = rnd_below(13);
    g->put.shards = g->bp;
    if (rnd() % 2) {
        g->put.has_epoch = 1;
        g->put.epoch = rnd() >> rnd_below(64);
    }
    for (size_t i = 0; i < g->put.n_shards; i++) {
        Hbc__ShardBlob *b = &g->blobs[i];
        hbc__shard_blob__init(b);
        b->vault_id.len = rnd() % 8 ? 16 : rnd_below(40);
        b->vault_id.data = gen_bytes(g, b->vault_id.len);
        b->chunk_id.len = rnd() % 8 ? 32 : rnd_below(40);
        b->chunk_id.data = gen_bytes(g, b->chunk_id.len);
        b->index = (uint32_t)(rnd() % 4 ? rnd_below(20) : rnd());
        b->data.len = rnd() % 10 ? rnd_below(3000) : 0;
        b->data.data = gen_bytes(g, b->data.len);
        g->bp[i] = b;
    }
    if (unknown) {
        g->frame.base.n_unknown_fields =
            gen_unknown(g, &hbc__frame__descriptor, g->unk[0], rnd_below(3));
        g->frame.base.unknown_fields = g->unk[0];
        g->put.base.n_unknown_fields =
            gen_unknown(g, &hbc__put_shards__descriptor, g->unk[1], rnd_below(4));
        g->put.base.unknown_fields = g->unk[1];
        size_t nb = gen_unknown(g, &hbc__shard_blob__descriptor, g->unk[2], rnd_below(4));
        for (size_t i = 0; i < g->put.n_shards; i++) {
            if (rnd() % 2) {
                g->blobs[i].base.n_unknown_fields = nb;
                g->blobs[i].base.unknown_fields = g->unk[2];
            }
        }
    }
}

static void frame_gen_free(struct frame_gen *g)
{
    for (size_t i = 0; i < g->nbufs; i++) {
        free(g->bufs[i]);
    }
}

/* The body protobuf-c packs for g; the caller frees it. */
static uint8_t *frame_gen_pack(struct frame_gen *g, size_t *len)
{
    *len = hbc__frame__get_packed_size(&g->frame);
    uint8_t *body = malloc(*len + 1);
    assert_non_null(body);
    assert_int_equal(hbc__frame__pack(&g->frame, body), *len);
    return body;
}

/*
 * The property: whenever the fast parser accepts a body, protobuf-c accepts
 * it too and decodes the same fields. Returns 1 when the view accepted, 0
 * when it declined; counts protobuf-c's verdicts in accepted/refused.
 */
static int check_agrees(const uint8_t *body, size_t len, size_t *pc_accepted, size_t *pc_refused)
{
    Hbc__Frame *pc = hbc__frame__unpack(NULL, len, body);
    Hbc__Frame *v = NULL;
    assert_int_equal(frame_view_parse(body, len, &v, NULL), 0);
    if (pc != NULL) {
        (*pc_accepted)++;
    } else {
        (*pc_refused)++;
    }
    if (v != NULL) {
        assert_non_null(pc);
        assert_true(pb_compare(&pc->base, &v->base));
        assert_int_equal(v->body_case, HBC__FRAME__BODY_PUT_SHARDS);
    }
    if (pc != NULL) {
        hbc__frame__free_unpacked(pc, NULL);
    }
    frame_view_free_frame(v);
    return v != NULL;
}

static void test_random_puts_decode_in_place(void **state)
{
    (void)state;
    for (int iter = 0; iter < 400; iter++) {
        struct frame_gen g;
        frame_gen(&g, iter % 2 == 1);
        size_t len;
        uint8_t *body = frame_gen_pack(&g, &len);
        Hbc__Frame *pc = hbc__frame__unpack(NULL, len, body);
        assert_non_null(pc);
        Hbc__Frame *v = NULL;
        assert_int_equal(frame_view_parse(body, len, &v, NULL), 0);
        assert_non_null(v); /* what a client encodes always takes the fast path */
        assert_true(pb_compare(&pc->base, &v->base));
        assert_true(pb_compare(&g.frame.base, &v->base));
        for (size_t i = 0; i < v->put_shards->n_shards; i++) {
            const ProtobufCBinaryData *d = &v->put_shards->shards[i]->data;
            /* Zero copy: the shard's bytes are the body's. */
            if (d->len > 0) {
                assert_true(d->data >= body && d->data + d->len <= body + len);
            } else {
                assert_null(d->data);
            }
        }
        hbc__frame__free_unpacked(pc, NULL);
        frame_view_free_frame(v);
        free(body);
        frame_gen_free(&g);
    }
}

/* Change body in one of several hostile ways; returns the new length (body has room). */
static size_t mutate(uint8_t *body, size_t len, size_t room)
{
    size_t at = rnd_below(len + 1);
    switch (rnd_below(8)) {
    case 0: /* truncate */
        return at;
    case 1: /* flip a byte */
        if (len > 0) {
            body[rnd_below(len)] ^= (uint8_t)(1u << rnd_below(8));
        }
        return len;
    case 2: /* a byte set to a continuation or an extreme */
        if (len > 0) {
            static const uint8_t v[] = {0x80, 0xff, 0x00, 0x7f, 0x01};
            body[rnd_below(len)] = v[rnd_below(sizeof v)];
        }
        return len;
    case 3: { /* insert a field: any number (known ones too), any wire type, junk after */
        uint8_t f[24];
        size_t n = put_varint(f, (uint64_t)(rnd() % 3 ? 1 + rnd_below(6) : rnd_below(300)) << 3 |
                                     rnd_below(8));
        size_t extra = rnd_below(10);
        for (size_t i = 0; i < extra; i++) {
            f[n++] = (uint8_t)(rnd() % 2 ? rnd() : rnd_below(4));
        }
        if (len + n > room) {
            return len;
        }
        memmove(body + at + n, body + at, len - at);
        memcpy(body + at, f, n);
        return len + n;
    }
    case 4: { /* repeat a piece of the body (fields twice, nested messages twice) */
        size_t from = rnd_below(len + 1);
        size_t n = rnd_below(len - from + 1);
        if (len + n > room) {
            return len;
        }
        memmove(body + at + n, body + at, len - at);
        memmove(body + at, body + (from >= at ? from + n : from), n);
        return len + n;
    }
    case 5: /* delete a byte */
        if (at < len) {
            memmove(body + at, body + at + 1, len - at - 1);
            return len - 1;
        }
        return len;
    case 6: /* a length one too long or too short */
        if (len > 0) {
            size_t i = rnd_below(len);
            body[i] = (uint8_t)(body[i] + (rnd() % 2 ? 1 : -1));
        }
        return len;
    default: /* append the frame's own first bytes again */
        if (len + 8 <= room && len >= 8) {
            memcpy(body + len, body, 8);
            return len + 8;
        }
        return len;
    }
}

static void test_mutated_bodies_agree(void **state)
{
    (void)state;
    size_t accepted = 0, refused = 0, fast = 0;
    for (int iter = 0; iter < 300; iter++) {
        struct frame_gen g;
        frame_gen(&g, iter % 3 == 0);
        size_t len;
        uint8_t *packed = frame_gen_pack(&g, &len);
        size_t room = 2 * len + 64;
        uint8_t *body = malloc(room);
        assert_non_null(body);
        for (int m = 0; m < 30; m++) {
            memcpy(body, packed, len);
            size_t n = len;
            for (size_t k = 1 + rnd_below(3); k > 0; k--) {
                n = mutate(body, n, room);
            }
            fast += (size_t)check_agrees(body, n, &accepted, &refused);
        }
        free(body);
        free(packed);
        frame_gen_free(&g);
    }
    /* The mutations reach both verdicts and the fast path; otherwise this proves nothing. */
    assert_true(accepted > 500 && refused > 500 && fast > 200);
}

static void test_every_prefix_agrees(void **state)
{
    (void)state;
    struct frame_gen g;
    frame_gen(&g, true);
    g.put.n_shards = g.put.n_shards == 0 ? 1 : g.put.n_shards;
    hbc__shard_blob__init(&g.blobs[0]);
    g.blobs[0].vault_id.len = 16;
    g.blobs[0].vault_id.data = gen_bytes(&g, 16);
    g.blobs[0].chunk_id.len = 32;
    g.blobs[0].chunk_id.data = gen_bytes(&g, 32);
    g.blobs[0].data.len = 200;
    g.blobs[0].data.data = gen_bytes(&g, 200);
    g.bp[0] = &g.blobs[0];
    size_t len;
    uint8_t *body = frame_gen_pack(&g, &len);
    size_t accepted = 0, refused = 0;
    for (size_t n = 0; n <= len; n++) {
        uint8_t *copy = malloc(n + 1); /* exactly n bytes readable, for ASan */
        memcpy(copy, body, n);
        check_agrees(copy, n, &accepted, &refused);
        free(copy);
    }
    assert_true(refused > 0 && accepted > 0);
    free(body);
    frame_gen_free(&g);
}

/* Encode raw bytes: tag (field, wire) then the given bytes. */
static size_t field(uint8_t *p, uint32_t num, unsigned wire)
{
    return put_varint(p, (uint64_t)num << 3 | wire);
}

/* A ShardBlob body with the given index varint bytes (raw) and data length. */
static size_t blob_body(uint8_t *p, const uint8_t *index_raw, size_t index_len, size_t data_len)
{
    size_t n = 0;
    n += field(p + n, 1, 2);
    p[n++] = 16;
    memset(p + n, 0xaa, 16);
    n += 16;
    n += field(p + n, 2, 2);
    p[n++] = 32;
    memset(p + n, 0xbb, 32);
    n += 32;
    if (index_raw != NULL) {
        n += field(p + n, 3, 0);
        memcpy(p + n, index_raw, index_len);
        n += index_len;
    }
    n += field(p + n, 4, 2);
    n += put_varint(p + n, data_len);
    memset(p + n, 0xcc, data_len);
    return n + data_len;
}

/* A frame (request id 7) whose put_shards body is the given bytes. */
static size_t put_frame(uint8_t *out, const uint8_t *put, size_t put_len)
{
    size_t n = 0;
    n += field(out + n, 1, 0);
    out[n++] = 7;
    n += field(out + n, 3, 2);
    n += put_varint(out + n, put_len);
    memcpy(out + n, put, put_len);
    return n + put_len;
}

/* A put frame with one blob whose index is index_raw; returns its length. */
static size_t one_blob_frame(uint8_t *out, const uint8_t *index_raw, size_t index_len)
{
    uint8_t blob[200], put[220];
    size_t bl = blob_body(blob, index_raw, index_len, 5);
    size_t pl = field(put, 1, 2);
    pl += put_varint(put + pl, bl);
    memcpy(put + pl, blob, bl);
    return put_frame(out, put, pl + bl);
}

/* Expect: protobuf-c says pc_ok, and the fast path declines (or, with view_ok, accepts). */
static void expect(const uint8_t *body, size_t len, bool pc_ok, bool view_ok)
{
    Hbc__Frame *pc = hbc__frame__unpack(NULL, len, body);
    assert_int_equal(pc != NULL, pc_ok);
    Hbc__Frame *v;
    assert_int_equal(frame_view_parse(body, len, &v, NULL), 0);
    assert_int_equal(v != NULL, view_ok);
    if (v != NULL) {
        assert_true(pb_compare(&pc->base, &v->base));
    }
    if (pc != NULL) {
        hbc__frame__free_unpacked(pc, NULL);
    }
    frame_view_free_frame(v);
}

static void test_edge_cases(void **state)
{
    (void)state;
    uint8_t b[512];
    size_t n;

    n = one_blob_frame(b, (const uint8_t[]){5}, 1);
    expect(b, n, true, true);
    /* index 2^32 - 1 in 5 bytes: fine; 2^32 in 5 bytes: protobuf-c truncates, left to it */
    n = one_blob_frame(b, (const uint8_t[]){0xff, 0xff, 0xff, 0xff, 0x0f}, 5);
    expect(b, n, true, true);
    n = one_blob_frame(b, (const uint8_t[]){0x80, 0x80, 0x80, 0x80, 0x10}, 5);
    expect(b, n, true, false);
    /* an index varint of 11 bytes: protobuf-c refuses */
    n = one_blob_frame(
        b, (const uint8_t[]){0x81, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x00}, 11);
    expect(b, n, false, false);
    /* index missing: a required field */
    n = one_blob_frame(b, NULL, 0);
    expect(b, n, false, false);
    /* index sent as bytes (wire type 2): protobuf-c refuses */
    {
        uint8_t blob[200], put[220];
        size_t bl = blob_body(blob, (const uint8_t[]){1}, 1, 3);
        blob[bl++] = 3 << 3 | 2; /* a second index field, length-prefixed */
        blob[bl++] = 1;
        blob[bl++] = 9;
        size_t pl = field(put, 1, 2);
        pl += put_varint(put + pl, bl);
        memcpy(put + pl, blob, bl);
        n = put_frame(b, put, pl + bl);
        expect(b, n, false, false);
    }
    /* a group (wire type 3) as an unknown field: protobuf-c refuses */
    {
        uint8_t put[8] = {9 << 3 | 3, 9 << 3 | 4};
        n = put_frame(b, put, 2);
        expect(b, n, false, false);
    }
    /* a data length one past the end, and a 6-byte length prefix */
    {
        uint8_t blob[200], put[220];
        size_t bl = blob_body(blob, (const uint8_t[]){1}, 1, 3);
        blob[bl - 4]++;
        size_t pl = field(put, 1, 2);
        pl += put_varint(put + pl, bl);
        memcpy(put + pl, blob, bl);
        n = put_frame(b, put, pl + bl);
        expect(b, n, false, false);
        uint8_t big[16];
        size_t gl = field(big, 2, 2);
        memcpy(big + gl, (const uint8_t[]){0x80, 0x80, 0x80, 0x80, 0x80, 0x00}, 6);
        n = put_frame(b, big, gl + 6);
        expect(b, n, false, false);
    }
    /* put_shards twice: protobuf-c merges them; the fast path leaves that to it */
    {
        size_t one = one_blob_frame(b, (const uint8_t[]){5}, 1);
        size_t head = 2; /* request id field */
        memcpy(b + one, b + head, one - head);
        expect(b, one + one - head, true, false);
    }
    /* request id twice: the last wins in protobuf-c; declined */
    {
        n = one_blob_frame(b, (const uint8_t[]){5}, 1);
        b[n] = 1 << 3;
        b[n + 1] = 9;
        expect(b, n + 2, true, false);
    }
    /* no body at all, a get instead of a put, field number 0 */
    expect((const uint8_t[]){1 << 3, 7}, 2, true, false);
    expect((const uint8_t[]){1 << 3, 7, 5 << 3 | 2, 0}, 4, true, false);
    expect((const uint8_t[]){0 << 3, 7}, 2, false, false);
    /* an empty put (no shards) decodes; the server refuses it later, as before */
    expect((const uint8_t[]){1 << 3, 7, 3 << 3 | 2, 0}, 4, true, true);
}

static void test_out_of_memory(void **state)
{
    (void)state;
    struct frame_gen g;
    frame_gen(&g, false);
    g.put.n_shards = 11; /* makes the shard array grow once */
    for (size_t i = 0; i < 11; i++) {
        hbc__shard_blob__init(&g.blobs[i]);
        g.blobs[i].vault_id.len = 16;
        g.blobs[i].vault_id.data = gen_bytes(&g, 16);
        g.blobs[i].chunk_id.len = 32;
        g.blobs[i].chunk_id.data = gen_bytes(&g, 32);
        g.bp[i] = &g.blobs[i];
    }
    size_t len;
    uint8_t *body = frame_gen_pack(&g, &len);
    bool succeeded = false;
    for (long k = 0; k < 40 && !succeeded; k++) {
        Hbc__Frame *v = NULL;
        struct err e;
        err_clear(&e);
        alloc_fault_after(k);
        int rc = frame_view_parse(body, len, &v, &e);
        alloc_fault_reset();
        if (rc == 0) {
            assert_non_null(v);
            succeeded = true;
        } else {
            assert_int_equal(rc, HBC_ENOMEM);
            assert_int_equal(e.code, HBC_ENOMEM);
            assert_null(v);
        }
        frame_view_free_frame(v);
    }
    assert_true(succeeded);
    free(body);
    frame_gen_free(&g);
}

/* What a reader with views delivered, either way. */
struct got {
    size_t views;      /* frames through the view callback */
    size_t frames;     /* frames through the plain callback */
    uint8_t *enc;      /* their encodings, concatenated */
    size_t len;        /* bytes at enc */
    bool data_in_body; /* every view's shard bytes lay inside its body */
};

static void got_add(struct got *g, const Hbc__Frame *f)
{
    uint8_t *e;
    size_t n;
    assert_int_equal(frame_encode(f, &e, &n, NULL), 0);
    g->enc = realloc(g->enc, g->len + n);
    assert_non_null(g->enc);
    memcpy(g->enc + g->len, e, n);
    g->len += n;
    hbc_free(e);
}

static int got_frame_cb(Hbc__Frame *f, void *arg)
{
    struct got *g = arg;
    g->frames++;
    got_add(g, f);
    frame_free(f);
    return 0;
}

static int got_view_cb(Hbc__Frame *f, uint8_t *body, void *arg)
{
    struct got *g = arg;
    g->views++;
    got_add(g, f);
    for (size_t i = 0; i < f->put_shards->n_shards; i++) {
        const ProtobufCBinaryData *d = &f->put_shards->shards[i]->data;
        /* The body is at least the frame's encoding minus its prefix long. */
        if (d->len > 0 && (d->data < body || d->data > body + (1u << 24))) {
            g->data_in_body = false;
        }
    }
    frame_view_release(f, body, NULL);
    return 0;
}

static struct frame_pool *view_pool; /* the pool of the reader pool_view_cb serves */

static int pool_view_cb(Hbc__Frame *f, uint8_t *body, void *arg)
{
    struct got *g = arg;
    g->views++;
    got_add(g, f);
    frame_view_release(f, body, view_pool);
    return 0;
}

static void test_reader_hands_puts_over_in_place(void **state)
{
    (void)state;
    uint8_t *stream = NULL;
    size_t len = 0, puts = 0;
    for (int i = 0; i < 20; i++) {
        struct frame_gen g;
        frame_gen(&g, false);
        Hbc__GetShards get = HBC__GET_SHARDS__INIT;
        if (i % 4 == 3) {
            g.frame.body_case = HBC__FRAME__BODY_GET_SHARDS;
            g.frame.get_shards = &get;
        } else {
            puts++;
        }
        uint8_t *e;
        size_t n;
        assert_int_equal(frame_encode(&g.frame, &e, &n, NULL), 0);
        stream = realloc(stream, len + n);
        memcpy(stream + len, e, n);
        len += n;
        hbc_free(e);
        frame_gen_free(&g);
    }
    /* Fed in pieces (as TLS delivers): every put is gathered and handed over in place. */
    struct got a = {.data_in_body = true};
    struct frame_reader r;
    frame_reader_init(&r, 0, got_frame_cb, &a);
    frame_reader_set_view_cb(&r, got_view_cb, NULL);
    for (size_t off = 0; off < len; off += 7) {
        assert_int_equal(frame_reader_feed(&r, stream + off, len - off < 7 ? len - off : 7, NULL),
                         0);
    }
    frame_reader_release(&r);
    assert_int_equal(a.views, puts);
    assert_int_equal(a.frames, 20 - puts);
    assert_true(a.data_in_body);
    assert_int_equal(a.len, len);
    assert_memory_equal(a.enc, stream, len); /* the same frames, in order */
    free(a.enc);
    /* Fed whole: decoded where it lies, by protobuf-c (the input is only borrowed). */
    struct got b = {.data_in_body = true};
    frame_reader_init(&r, 0, got_frame_cb, &b);
    frame_reader_set_view_cb(&r, got_view_cb, NULL);
    assert_int_equal(frame_reader_feed(&r, stream, len, NULL), 0);
    frame_reader_release(&r);
    assert_int_equal(b.views, 0);
    assert_int_equal(b.frames, 20);
    assert_memory_equal(b.enc, stream, len);
    free(b.enc);
    free(stream);
}

/* Readers with and without views give the same verdict and frames on hostile streams. */
static void test_reader_same_verdict(void **state)
{
    (void)state;
    size_t both_ok = 0, both_refused = 0;
    for (int iter = 0; iter < 300; iter++) {
        struct frame_gen g;
        frame_gen(&g, iter % 2 == 0);
        size_t blen;
        uint8_t *packed = frame_gen_pack(&g, &blen);
        size_t room = 2 * blen + 64;
        uint8_t *stream = malloc(4 + room);
        size_t n = blen;
        memcpy(stream + 4, packed, blen);
        if (iter % 4 != 0) {
            n = mutate(stream + 4, blen, room);
        }
        stream[0] = (uint8_t)(n >> 24);
        stream[1] = (uint8_t)(n >> 16);
        stream[2] = (uint8_t)(n >> 8);
        stream[3] = (uint8_t)n;
        int rc[2];
        struct got got[2] = {{.data_in_body = true}, {.data_in_body = true}};
        for (int w = 0; w < 2; w++) {
            struct frame_reader r;
            frame_reader_init(&r, 0, got_frame_cb, &got[w]);
            if (w == 1) {
                frame_reader_set_view_cb(&r, got_view_cb, NULL);
            }
            rc[w] = 0;
            for (size_t off = 0; off < 4 + n && rc[w] == 0; off += 13) {
                size_t piece = 4 + n - off < 13 ? 4 + n - off : 13;
                rc[w] = frame_reader_feed(&r, stream + off, piece, NULL);
            }
            frame_reader_release(&r);
        }
        /* (Their encodings differ when protobuf-c kept unknown fields a view skips.) */
        assert_int_equal(rc[0], rc[1]);
        assert_int_equal(got[0].frames, got[1].frames + got[1].views);
        if (rc[0] == 0 && got[0].frames == 1) {
            both_ok++;
        } else if (rc[0] != 0) {
            both_refused++;
        }
        free(got[0].enc);
        free(got[1].enc);
        free(stream);
        free(packed);
        frame_gen_free(&g);
    }
    assert_true(both_ok > 50 && both_refused > 20);
}

static void test_pool_reuses_buffers_within_its_bound(void **state)
{
    (void)state;
    struct frame_pool *p = frame_pool_new(3u << 20);
    assert_non_null(p);
    size_t cap;
    uint8_t *a = frame_pool_get(p, 1000000, &cap);
    assert_non_null(a);
    assert_true(cap >= 1000000);
    memset(a, 1, cap); /* all of cap is usable */
    frame_pool_put(p, a);
    size_t cap2;
    uint8_t *b = frame_pool_get(p, 999000, &cap2);
    assert_ptr_equal(a, b); /* reused, not allocated again */
    assert_int_equal(cap2, cap);
    /* A buffer more than twice the size asked is not handed out for it. */
    frame_pool_put(p, b);
    uint8_t *c = frame_pool_get(p, 100000, &cap2);
    assert_ptr_not_equal(c, a);
    /* Beyond max_bytes idle, buffers given back are freed (ASan sees no leak either way). */
    uint8_t *d = frame_pool_get(p, 2u << 20, &cap2);
    uint8_t *e = frame_pool_get(p, 2u << 20, &cap2);
    frame_pool_put(p, c);
    frame_pool_put(p, d);
    frame_pool_put(p, e);
    /* A reference keeps it alive after its creator lets go. */
    frame_pool_ref(p);
    frame_pool_unref(p);
    uint8_t *f = frame_pool_get(p, 10, &cap2);
    assert_non_null(f);
    frame_pool_put(p, f);
    frame_pool_unref(p);
    /* Without a pool: the heap. */
    uint8_t *g = frame_pool_get(NULL, 10, &cap2);
    assert_int_equal(cap2, 10);
    frame_pool_put(NULL, g);
}

/* The reader with a pool: bodies come from it and go back to it. */
static void test_reader_with_pool(void **state)
{
    (void)state;
    struct frame_pool *pool = frame_pool_new(64u << 20);
    struct frame_reader r;
    for (int i = 0; i < 10; i++) {
        struct frame_gen g;
        frame_gen(&g, false);
        uint8_t *enc;
        size_t n;
        assert_int_equal(frame_encode(&g.frame, &enc, &n, NULL), 0);
        struct got b = {.data_in_body = true};
        frame_reader_init(&r, 0, got_frame_cb, &b);
        view_pool = pool;
        frame_reader_set_view_cb(&r, pool_view_cb, pool);
        for (size_t off = 0; off < n; off += 3) {
            assert_int_equal(frame_reader_feed(&r, enc + off, n - off < 3 ? n - off : 3, NULL), 0);
        }
        frame_reader_release(&r);
        assert_int_equal(b.views, 1);
        assert_memory_equal(b.enc, enc, n);
        free(b.enc);
        hbc_free(enc);
        frame_gen_free(&g);
    }
    frame_pool_unref(pool);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_random_puts_decode_in_place),
        cmocka_unit_test(test_mutated_bodies_agree),
        cmocka_unit_test(test_every_prefix_agrees),
        cmocka_unit_test(test_edge_cases),
        cmocka_unit_test(test_out_of_memory),
        cmocka_unit_test(test_reader_hands_puts_over_in_place),
        cmocka_unit_test(test_reader_same_verdict),
        cmocka_unit_test(test_pool_reuses_buffers_within_its_bound),
        cmocka_unit_test(test_reader_with_pool),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
