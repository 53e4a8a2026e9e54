/* Data-plane framing: encoder and incremental reader of length-prefixed hbc.Frame messages. */
#include "common/frame.h"

#include <stdbool.h>
#include <string.h>

#include "common/alloc.h"
#include "common/frame_view.h"

/* protobuf-c allocations go through hbc_malloc, and a failure is told apart from bad input. */
struct frame_alloc_state {
    bool failed; /* an allocation failed during this unpack */
};

static void *frame_pb_alloc(void *data, size_t size)
{
    void *p = hbc_malloc(size);
    if (p == NULL && data != NULL) {
        ((struct frame_alloc_state *)data)->failed = true;
    }
    return p;
}

static void frame_pb_free(void *data, void *p)
{
    (void)data;
    hbc_free(p);
}

static ProtobufCAllocator frame_free_allocator = {frame_pb_alloc, frame_pb_free, NULL};

static void put_be32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}

static uint32_t get_be32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | (uint32_t)p[3];
}

size_t frame_encoded_size(const Hbc__Frame *f)
{
    return FRAME_PREFIX_LEN + hbc__frame__get_packed_size(f);
}

/* Check f before encoding; on success *body is its packed size. */
static int frame_check(const Hbc__Frame *f, size_t *body, struct err *e)
{
    if (f->body_case == HBC__FRAME__BODY__NOT_SET) {
        return err_set(e, HBC_EINVAL, "encode frame (request %llu): no body set",
                       (unsigned long long)f->request_id);
    }
    *body = hbc__frame__get_packed_size(f);
    if (*body > UINT32_MAX) {
        return err_set(e, HBC_ETOOBIG, "encode frame (request %llu): body of %zu bytes",
                       (unsigned long long)f->request_id, *body);
    }
    return 0;
}

int frame_encode_into(const Hbc__Frame *f, uint8_t *buf, size_t cap, size_t *out_len, struct err *e)
{
    size_t body;
    int rc = frame_check(f, &body, e);
    if (rc != 0) {
        return rc;
    }
    if (cap < FRAME_PREFIX_LEN + body) {
        return err_set(e, HBC_ETRUNCATED, "encode frame: buffer of %zu bytes for a %zu-byte frame",
                       cap, FRAME_PREFIX_LEN + body);
    }
    put_be32(buf, (uint32_t)body);
    size_t n = hbc__frame__pack(f, buf + FRAME_PREFIX_LEN);
    if (n != body) {
        return err_set(e, HBC_EINTERNAL, "encode frame: packed %zu bytes, expected %zu", n, body);
    }
    *out_len = FRAME_PREFIX_LEN + body;
    return 0;
}

int frame_encode(const Hbc__Frame *f, uint8_t **out, size_t *out_len, struct err *e)
{
    *out = NULL;
    size_t body;
    int rc = frame_check(f, &body, e);
    if (rc != 0) {
        return rc;
    }
    uint8_t *buf = hbc_malloc(FRAME_PREFIX_LEN + body);
    if (buf == NULL) {
        return err_set(e, HBC_ENOMEM, "encode frame: %zu bytes", FRAME_PREFIX_LEN + body);
    }
    rc = frame_encode_into(f, buf, FRAME_PREFIX_LEN + body, out_len, e);
    if (rc != 0) {
        hbc_free(buf);
        return rc;
    }
    *out = buf;
    return 0;
}

void frame_free(Hbc__Frame *f)
{
    if (f != NULL) {
        hbc__frame__free_unpacked(f, &frame_free_allocator);
    }
}

void frame_reader_init(struct frame_reader *r, size_t max_len, frame_reader_cb cb, void *arg)
{
    memset(r, 0, sizeof *r);
    if (max_len == 0) {
        max_len = FRAME_MAX_DEFAULT;
    }
    r->max_len = max_len > UINT32_MAX ? UINT32_MAX : max_len;
    r->cb = cb;
    r->arg = arg;
}

/* Free r's body buffer, back to the pool it came from. */
static void frame_reader_drop_buf(struct frame_reader *r)
{
    frame_pool_put(r->pool, r->buf);
    r->buf = NULL;
    r->cap = 0;
}

void frame_reader_release(struct frame_reader *r)
{
    if (r != NULL) {
        frame_reader_drop_buf(r);
        r->need = 0;
        r->have = 0;
        r->prefix_have = 0;
    }
}

size_t frame_reader_partial(const struct frame_reader *r)
{
    return r->need != 0 ? FRAME_PREFIX_LEN + r->have : r->prefix_have;
}

static int frame_reader_fail(struct frame_reader *r, int code)
{
    r->poison = code;
    return code;
}

/* A complete length prefix n arrived: bound it before anything is allocated. */
static int frame_reader_start(struct frame_reader *r, uint32_t n, struct err *e)
{
    if (n == 0) {
        err_set(e, HBC_EFORMAT, "frame %llu at stream byte %llu: zero length", r->frames + 1,
                r->bytes - FRAME_PREFIX_LEN);
        return frame_reader_fail(r, HBC_EFORMAT);
    }
    if (n > r->max_len) {
        err_set(e, HBC_ETOOBIG, "frame %llu at stream byte %llu: length %lu over the limit of %zu",
                r->frames + 1, r->bytes - FRAME_PREFIX_LEN, (unsigned long)n, r->max_len);
        return frame_reader_fail(r, HBC_ETOOBIG);
    }
    r->need = n;
    r->have = 0;
    return 0;
}

void frame_reader_set_view_cb(struct frame_reader *r, frame_reader_view_cb view_cb,
                              struct frame_pool *pool)
{
    r->view_cb = view_cb;
    r->pool = view_cb != NULL ? pool : NULL;
}

/*
 * Try to hand the body gathered in r->buf to the view callback, the buffer
 * with it. Returns 0 with *taken set when it did (or the callback's error),
 * 0 with *taken false when the fast parser declined, or HBC_ENOMEM.
 */
static int frame_reader_deliver_view(struct frame_reader *r, size_t len, bool *taken, struct err *e)
{
    *taken = false;
    Hbc__Frame *f;
    int rc = frame_view_parse(r->buf, len, &f, e);
    if (rc != 0) {
        return frame_reader_fail(r, rc);
    }
    if (f == NULL) {
        return 0;
    }
    uint8_t *body = r->buf;
    r->buf = NULL;
    r->cap = 0;
    r->frames++;
    r->need = 0;
    r->have = 0;
    *taken = true;
    rc = r->view_cb(f, body, r->arg);
    if (rc != 0) {
        err_set(e, rc, "frame %llu: handler", r->frames);
        return frame_reader_fail(r, rc);
    }
    return 0;
}

/*
 * Whether m or a message inside it kept an unknown field numbered 0.
 * protobuf-c 1.4 accepts such a field when its tag is a non-canonical
 * varint (0x85 0x00 is field 0, wire type 5) but refuses the canonical
 * encoding it writes back, so a frame carrying one would not survive being
 * encoded again; field number 0 is invalid in protobuf. Depth is bounded
 * by protobuf-c's own nesting limit on what it unpacked.
 */
static bool has_field_zero(const ProtobufCMessage *m)
{
    for (unsigned i = 0; i < m->n_unknown_fields; i++) {
        if (m->unknown_fields[i].tag == 0) {
            return true;
        }
    }
    const ProtobufCMessageDescriptor *d = m->descriptor;
    for (unsigned i = 0; i < d->n_fields; i++) {
        const ProtobufCFieldDescriptor *f = &d->fields[i];
        if (f->type != PROTOBUF_C_TYPE_MESSAGE) {
            continue;
        }
        const char *member = (const char *)m + f->offset;
        if (f->label == PROTOBUF_C_LABEL_REPEATED) {
            size_t n = *(const size_t *)((const char *)m + f->quantifier_offset);
            ProtobufCMessage *const *items = *(ProtobufCMessage *const *const *)member;
            for (size_t j = 0; j < n; j++) {
                if (items[j] != NULL && has_field_zero(items[j])) {
                    return true;
                }
            }
            continue;
        }
        if ((f->flags & PROTOBUF_C_FIELD_FLAG_ONEOF) &&
            *(const uint32_t *)((const char *)m + f->quantifier_offset) != f->id) {
            continue; /* another member of the oneof is set */
        }
        const ProtobufCMessage *sub = *(const ProtobufCMessage *const *)member;
        if (sub != NULL && has_field_zero(sub)) {
            return true;
        }
    }
    return false;
}

/* Unpack a complete body and hand it to the callback. */
static int frame_reader_deliver(struct frame_reader *r, const uint8_t *body, size_t len,
                                struct err *e)
{
    if (r->view_cb != NULL && body == r->buf) {
        bool taken;
        int rc = frame_reader_deliver_view(r, len, &taken, e);
        if (rc != 0 || taken) {
            return rc;
        }
    }
    struct frame_alloc_state st = {.failed = false};
    ProtobufCAllocator a = {frame_pb_alloc, frame_pb_free, &st};
    Hbc__Frame *f = hbc__frame__unpack(&a, len, body);
    if (f == NULL) {
        if (st.failed) {
            err_set(e, HBC_ENOMEM, "frame %llu: unpacking %zu bytes", r->frames + 1, len);
            return frame_reader_fail(r, HBC_ENOMEM);
        }
        err_set(e, HBC_EFORMAT, "frame %llu: %zu-byte body does not unpack as hbc.Frame",
                r->frames + 1, len);
        return frame_reader_fail(r, HBC_EFORMAT);
    }
    if (has_field_zero(&f->base)) {
        err_set(e, HBC_EFORMAT, "frame %llu: %zu-byte body has a field numbered 0", r->frames + 1,
                len);
        frame_free(f);
        return frame_reader_fail(r, HBC_EFORMAT);
    }
    if (f->body_case == HBC__FRAME__BODY__NOT_SET) {
        err_set(e, HBC_EPROTO, "frame %llu (request %llu): unknown frame type", r->frames + 1,
                (unsigned long long)f->request_id);
        frame_free(f);
        return frame_reader_fail(r, HBC_EPROTO);
    }
    r->frames++;
    r->need = 0;
    r->have = 0;
    int rc = r->cb(f, r->arg);
    if (rc != 0) {
        err_set(e, rc, "frame %llu: handler", r->frames);
        return frame_reader_fail(r, rc);
    }
    return 0;
}

/* Make sure r->buf can hold the body in progress (nothing in it yet to keep). */
static int frame_reader_alloc(struct frame_reader *r, struct err *e)
{
    if (r->cap >= r->need) {
        return 0;
    }
    /* Sized once from the prefix; nothing to keep, so no realloc copy. */
    frame_reader_drop_buf(r);
    r->buf = frame_pool_get(r->pool, r->need, &r->cap);
    if (r->buf == NULL) {
        r->cap = 0;
        err_set(e, HBC_ENOMEM, "frame %llu: %zu-byte body", r->frames + 1, r->need);
        return frame_reader_fail(r, HBC_ENOMEM);
    }
    return 0;
}

uint8_t *frame_reader_room(struct frame_reader *r, size_t *room)
{
    *room = 0;
    if (r->poison != 0 || r->need == 0) {
        return NULL;
    }
    if (r->have == 0 && frame_reader_alloc(r, NULL) != 0) {
        return NULL;
    }
    *room = r->need - r->have;
    return r->buf + r->have;
}

int frame_reader_feed(struct frame_reader *r, const void *data, size_t len, struct err *e)
{
    if (r->poison != 0) {
        return err_set(e, r->poison, "frame reader: stopped by an earlier error");
    }
    const uint8_t *p = data;
    if (r->need != 0 && r->buf != NULL && len > 0 && p == r->buf + r->have &&
        len > r->need - r->have) {
        err_set(e, HBC_EINVAL, "frame %llu: %zu bytes written in place where %zu were left",
                r->frames + 1, len, r->need - r->have);
        return frame_reader_fail(r, HBC_EINVAL);
    }
    while (len > 0) {
        int rc;
        if (r->need == 0) {
            /* Between frames: gather the prefix, straight from the input when it is all there. */
            uint32_t n;
            if (r->prefix_have == 0 && len >= FRAME_PREFIX_LEN) {
                n = get_be32(p);
                p += FRAME_PREFIX_LEN;
                len -= FRAME_PREFIX_LEN;
                r->bytes += FRAME_PREFIX_LEN;
            } else {
                size_t take = FRAME_PREFIX_LEN - r->prefix_have;
                take = take < len ? take : len;
                memcpy(r->prefix + r->prefix_have, p, take);
                r->prefix_have += take;
                r->bytes += take;
                p += take;
                len -= take;
                if (r->prefix_have < FRAME_PREFIX_LEN) {
                    break;
                }
                r->prefix_have = 0;
                n = get_be32(r->prefix);
            }
            if ((rc = frame_reader_start(r, n, e)) != 0) {
                return rc;
            }
            continue;
        }
        if (r->have == 0 && len >= r->need && p != r->buf) {
            /* The whole body is in this piece: decode it where it lies. */
            size_t n = r->need;
            rc = frame_reader_deliver(r, p, n, e);
            r->bytes += n;
            p += n;
            len -= n;
            if (rc != 0) {
                return rc;
            }
            continue;
        }
        if (r->have == 0 && (rc = frame_reader_alloc(r, e)) != 0) {
            return rc;
        }
        size_t take = r->need - r->have;
        take = take < len ? take : len;
        if (p != r->buf + r->have) {
            memcpy(r->buf + r->have, p, take);
        }
        r->have += take;
        r->bytes += take;
        p += take;
        len -= take;
        if (r->have == r->need) {
            rc = frame_reader_deliver(r, r->buf, r->need, e);
            if (r->cap > FRAME_KEEP_BUFFER) {
                frame_reader_drop_buf(r);
            }
            if (rc != 0) {
                return rc;
            }
        }
    }
    return 0;
}
