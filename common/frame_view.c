/* Zero-copy decoding of PutShards frames, driven by protobuf-c's descriptors (see frame_view.h). */
#include "common/frame_view.h"

#include <limits.h>
#include <stdbool.h>
#include <string.h>

#include "common/alloc.h"

/* How deep messages may nest (Frame → PutShards → ShardBlob is 3). */
#define VIEW_MAX_DEPTH 8
/* Fields a message may have for the fast path (Frame has about 60). */
#define VIEW_MAX_FIELDS 256
/* First capacity of a repeated field's array; it doubles from there. */
#define VIEW_REPEATED_FIRST 8

/* What a parse step says: go on, leave the body to protobuf-c, or out of memory. */
enum { VIEW_OK = 0, VIEW_DECLINE = 1 };

/* A read position in the body: [p, end). */
struct view_in {
    const uint8_t *p;   /* next byte */
    const uint8_t *end; /* one past the last byte */
};

/*
 * A varint of at most max bytes; its byte count goes to *nbytes. Declines
 * when it is longer or runs past the end.
 */
static int view_varint(struct view_in *in, unsigned max, uint64_t *v, unsigned *nbytes)
{
    uint64_t x = 0;
    for (unsigned i = 0; i < max && in->p + i < in->end; i++) {
        uint8_t b = in->p[i];
        x |= (uint64_t)(b & 0x7f) << (7 * i);
        if ((b & 0x80) == 0) {
            if (i == 9 && b > 1) {
                return VIEW_DECLINE; /* bits beyond 64: protobuf-c drops them */
            }
            in->p += i + 1;
            *v = x;
            *nbytes = i + 1;
            return VIEW_OK;
        }
    }
    return VIEW_DECLINE;
}

/* Skip an unknown field's value as protobuf-c's scan does; groups and bad wire types decline. */
static int view_skip(struct view_in *in, unsigned wire)
{
    uint64_t v;
    unsigned nb;
    size_t left = (size_t)(in->end - in->p);
    switch (wire) {
    case PROTOBUF_C_WIRE_TYPE_VARINT:
        return view_varint(in, 10, &v, &nb);
    case PROTOBUF_C_WIRE_TYPE_64BIT:
        if (left < 8) {
            return VIEW_DECLINE;
        }
        in->p += 8;
        return VIEW_OK;
    case PROTOBUF_C_WIRE_TYPE_32BIT:
        if (left < 4) {
            return VIEW_DECLINE;
        }
        in->p += 4;
        return VIEW_OK;
    case PROTOBUF_C_WIRE_TYPE_LENGTH_PREFIXED:
        if (view_varint(in, 5, &v, &nb) != VIEW_OK || v > INT_MAX ||
            v > (uint64_t)(in->end - in->p)) {
            return VIEW_DECLINE;
        }
        in->p += v;
        return VIEW_OK;
    default:
        return VIEW_DECLINE;
    }
}

static void view_free_message(ProtobufCMessage *m);

static int view_message(const ProtobufCMessageDescriptor *d, const uint8_t *p, size_t len,
                        unsigned depth, uint32_t only_oneof, ProtobufCMessage **out);

/* Parse one known, non-repeated scalar or bytes field into member. */
static int view_scalar(const ProtobufCFieldDescriptor *f, unsigned wire, struct view_in *in,
                       void *member)
{
    uint64_t v;
    unsigned nb;
    switch (f->type) {
    case PROTOBUF_C_TYPE_UINT32:
    case PROTOBUF_C_TYPE_INT32:
        if (wire != PROTOBUF_C_WIRE_TYPE_VARINT || view_varint(in, 5, &v, &nb) != VIEW_OK ||
            v > (f->type == PROTOBUF_C_TYPE_UINT32 ? UINT32_MAX : INT32_MAX)) {
            return VIEW_DECLINE;
        }
        *(uint32_t *)member = (uint32_t)v;
        return VIEW_OK;
    case PROTOBUF_C_TYPE_UINT64:
    case PROTOBUF_C_TYPE_INT64:
        if (wire != PROTOBUF_C_WIRE_TYPE_VARINT || view_varint(in, 10, &v, &nb) != VIEW_OK) {
            return VIEW_DECLINE;
        }
        *(uint64_t *)member = v;
        return VIEW_OK;
    case PROTOBUF_C_TYPE_BOOL:
        if (wire != PROTOBUF_C_WIRE_TYPE_VARINT || view_varint(in, 1, &v, &nb) != VIEW_OK ||
            v > 1) {
            return VIEW_DECLINE;
        }
        *(protobuf_c_boolean *)member = (protobuf_c_boolean)v;
        return VIEW_OK;
    case PROTOBUF_C_TYPE_FIXED32:
        if (wire != PROTOBUF_C_WIRE_TYPE_32BIT || in->end - in->p < 4) {
            return VIEW_DECLINE;
        }
        *(uint32_t *)member = (uint32_t)in->p[0] | (uint32_t)in->p[1] << 8 |
                              (uint32_t)in->p[2] << 16 | (uint32_t)in->p[3] << 24;
        in->p += 4;
        return VIEW_OK;
    case PROTOBUF_C_TYPE_FIXED64:
        if (wire != PROTOBUF_C_WIRE_TYPE_64BIT || in->end - in->p < 8) {
            return VIEW_DECLINE;
        }
        v = 0;
        for (int i = 7; i >= 0; i--) {
            v = v << 8 | in->p[i];
        }
        *(uint64_t *)member = v;
        in->p += 8;
        return VIEW_OK;
    case PROTOBUF_C_TYPE_BYTES: {
        if (wire != PROTOBUF_C_WIRE_TYPE_LENGTH_PREFIXED ||
            view_varint(in, 5, &v, &nb) != VIEW_OK || v > INT_MAX ||
            v > (uint64_t)(in->end - in->p)) {
            return VIEW_DECLINE;
        }
        ProtobufCBinaryData *bd = member;
        bd->len = (size_t)v;
        bd->data = v > 0 ? (uint8_t *)in->p : NULL; /* as protobuf-c leaves an empty field */
        in->p += v;
        return VIEW_OK;
    }
    default:
        return VIEW_DECLINE; /* strings, enums, signed and floating types: protobuf-c's */
    }
}

/* The sub-message of a length-prefixed field at in, parsed into *out. */
static int view_submessage(const ProtobufCFieldDescriptor *f, unsigned wire, struct view_in *in,
                           unsigned depth, ProtobufCMessage **out)
{
    uint64_t v;
    unsigned nb;
    if (wire != PROTOBUF_C_WIRE_TYPE_LENGTH_PREFIXED || view_varint(in, 5, &v, &nb) != VIEW_OK ||
        v > INT_MAX || v > (uint64_t)(in->end - in->p)) {
        return VIEW_DECLINE;
    }
    const uint8_t *sub = in->p;
    in->p += v;
    return view_message(f->descriptor, sub, (size_t)v, depth + 1, 0, out);
}

/* Append m to the repeated message field of f in msg (arrays grow by doubling). */
static int view_append(ProtobufCMessage *msg, const ProtobufCFieldDescriptor *f,
                       ProtobufCMessage *m)
{
    size_t *n = (size_t *)((uint8_t *)msg + f->quantifier_offset);
    ProtobufCMessage ***arr = (ProtobufCMessage ***)((uint8_t *)msg + f->offset);
    if (*n == 0 || (*n >= VIEW_REPEATED_FIRST && (*n & (*n - 1)) == 0)) {
        size_t cap = *n == 0 ? VIEW_REPEATED_FIRST : *n * 2;
        ProtobufCMessage **grown = hbc_realloc(*arr, cap * sizeof *grown);
        if (grown == NULL) {
            return HBC_ENOMEM;
        }
        *arr = grown;
    }
    (*arr)[(*n)++] = m;
    return VIEW_OK;
}

/*
 * Parse len bytes at p as a message of type d into a new *out. At depth 0,
 * only_oneof (nonzero) is the one oneof member allowed. Returns VIEW_OK,
 * VIEW_DECLINE or HBC_ENOMEM; on anything but VIEW_OK nothing is left
 * allocated.
 */
static int view_message(const ProtobufCMessageDescriptor *d, const uint8_t *p, size_t len,
                        unsigned depth, uint32_t only_oneof, ProtobufCMessage **out)
{
    *out = NULL;
    if (depth >= VIEW_MAX_DEPTH || d->n_fields > VIEW_MAX_FIELDS) {
        return VIEW_DECLINE;
    }
    ProtobufCMessage *msg = hbc_malloc(d->sizeof_message);
    if (msg == NULL) {
        return HBC_ENOMEM;
    }
    protobuf_c_message_init(d, msg);
    uint64_t seen[VIEW_MAX_FIELDS / 64] = {0};
    struct view_in in = {p, p + len};
    int rc = VIEW_OK;
    while (rc == VIEW_OK && in.p < in.end) {
        /* A tag of at most 3 bytes (field numbers below 2^18), canonical, never field 0. */
        uint64_t tag;
        unsigned nb;
        if (view_varint(&in, 3, &tag, &nb) != VIEW_OK || (nb > 1 && in.p[-1] == 0) ||
            (tag >> 3) == 0) {
            rc = VIEW_DECLINE;
            break;
        }
        unsigned wire = (unsigned)(tag & 7);
        const ProtobufCFieldDescriptor *f =
            protobuf_c_message_descriptor_get_field(d, (unsigned)(tag >> 3));
        if (f == NULL) {
            rc = view_skip(&in, wire); /* protobuf-c keeps unknown fields; a view skips them */
            continue;
        }
        size_t fi = (size_t)(f - d->fields);
        void *member = (uint8_t *)msg + f->offset;
        if (f->label == PROTOBUF_C_LABEL_REPEATED) {
            ProtobufCMessage *m;
            if (f->type != PROTOBUF_C_TYPE_MESSAGE || (f->flags & PROTOBUF_C_FIELD_FLAG_PACKED)) {
                rc = VIEW_DECLINE;
            } else if ((rc = view_submessage(f, wire, &in, depth, &m)) == VIEW_OK &&
                       (rc = view_append(msg, f, m)) != VIEW_OK) {
                view_free_message(m);
            }
            continue;
        }
        /* A field given twice is merged or replaced by protobuf-c: left to it. */
        if (f->label == PROTOBUF_C_LABEL_NONE || (seen[fi / 64] >> (fi % 64) & 1)) {
            rc = VIEW_DECLINE;
            break;
        }
        seen[fi / 64] |= UINT64_C(1) << (fi % 64);
        if (f->flags & PROTOBUF_C_FIELD_FLAG_ONEOF) {
            uint32_t *which = (uint32_t *)((uint8_t *)msg + f->quantifier_offset);
            if (*which != 0 || f->type != PROTOBUF_C_TYPE_MESSAGE ||
                (depth == 0 && only_oneof != 0 && f->id != only_oneof)) {
                rc = VIEW_DECLINE;
                break;
            }
            if ((rc = view_submessage(f, wire, &in, depth, (ProtobufCMessage **)member)) ==
                VIEW_OK) {
                *which = f->id;
            }
            continue;
        }
        if (f->type == PROTOBUF_C_TYPE_MESSAGE) {
            rc = view_submessage(f, wire, &in, depth, (ProtobufCMessage **)member);
            continue;
        }
        rc = view_scalar(f, wire, &in, member);
        if (rc == VIEW_OK && f->label == PROTOBUF_C_LABEL_OPTIONAL &&
            f->type != PROTOBUF_C_TYPE_MESSAGE) {
            *(protobuf_c_boolean *)((uint8_t *)msg + f->quantifier_offset) = 1;
        }
    }
    /* A missing required field makes protobuf-c refuse: let it say so. */
    for (unsigned i = 0; rc == VIEW_OK && i < d->n_fields; i++) {
        if (d->fields[i].label == PROTOBUF_C_LABEL_REQUIRED && !(seen[i / 64] >> (i % 64) & 1)) {
            rc = VIEW_DECLINE;
        }
    }
    if (rc != VIEW_OK) {
        view_free_message(msg);
        return rc;
    }
    *out = msg;
    return VIEW_OK;
}

/* Free msg's sub-messages and arrays, then msg; the bytes point into the body and stay. */
static void view_free_message(ProtobufCMessage *msg)
{
    if (msg == NULL) {
        return;
    }
    const ProtobufCMessageDescriptor *d = msg->descriptor;
    for (unsigned i = 0; i < d->n_fields; i++) {
        const ProtobufCFieldDescriptor *f = &d->fields[i];
        if (f->type != PROTOBUF_C_TYPE_MESSAGE) {
            continue;
        }
        void *member = (uint8_t *)msg + f->offset;
        if (f->label == PROTOBUF_C_LABEL_REPEATED) {
            size_t n = *(size_t *)((uint8_t *)msg + f->quantifier_offset);
            ProtobufCMessage **arr = *(ProtobufCMessage ***)member;
            for (size_t j = 0; j < n; j++) {
                view_free_message(arr[j]);
            }
            hbc_free(arr);
        } else if (!(f->flags & PROTOBUF_C_FIELD_FLAG_ONEOF) ||
                   *(uint32_t *)((uint8_t *)msg + f->quantifier_offset) == f->id) {
            view_free_message(*(ProtobufCMessage **)member);
        }
    }
    hbc_free(msg);
}

int frame_view_parse(const uint8_t *body, size_t len, Hbc__Frame **out, struct err *e)
{
    ProtobufCMessage *m;
    *out = NULL;
    int rc = view_message(&hbc__frame__descriptor, body, len, 0, HBC__FRAME__BODY_PUT_SHARDS, &m);
    if (rc == HBC_ENOMEM) {
        return err_set(e, HBC_ENOMEM, "decoding a %zu-byte put frame", len);
    }
    if (rc == VIEW_OK) {
        Hbc__Frame *f = (Hbc__Frame *)m;
        if (f->body_case == HBC__FRAME__BODY_PUT_SHARDS) {
            *out = f;
        } else {
            view_free_message(m); /* no body (protobuf-c's reader refuses it) */
        }
    }
    return 0;
}

void frame_view_free_frame(Hbc__Frame *f)
{
    view_free_message(f != NULL ? &f->base : NULL);
}

void frame_view_release(Hbc__Frame *frame, uint8_t *body, struct frame_pool *pool)
{
    frame_view_free_frame(frame);
    frame_pool_put(pool, body);
}
