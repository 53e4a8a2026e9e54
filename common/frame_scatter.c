/* A frame encoded as pieces that point at its large bytes fields (replies sent without a copy). */
#include "common/frame_scatter.h"

#include <stdbool.h>
#include <string.h>

#include "common/alloc.h"
#include "common/frame.h"

/* One piece while encoding: borrowed bytes, or a range of scratch (resolved at the end). */
struct piece {
    const uint8_t *borrowed; /* the bytes pointed at, or NULL for scratch */
    size_t off;              /* scratch: offset of the first byte */
    size_t len;              /* bytes */
};

/* protobuf-c's output: small appends go to scratch, large ones become borrowed pieces. */
struct scatter_buffer {
    ProtobufCBuffer base; /* append() (first member: protobuf-c calls it with this pointer) */
    uint8_t *scratch;     /* copied bytes */
    size_t used;          /* of scratch */
    size_t cap;           /* its size */
    struct piece *pieces; /* the pieces so far */
    size_t npieces;       /* how many */
    size_t pcap;          /* room */
    bool failed;          /* an allocation failed: everything after is dropped */
};

static bool piece_room(struct scatter_buffer *b)
{
    if (b->npieces < b->pcap) {
        return true;
    }
    size_t ncap = b->pcap == 0 ? 16 : b->pcap * 2;
    struct piece *np = hbc_realloc(b->pieces, ncap * sizeof *np);
    if (np == NULL) {
        return false;
    }
    b->pieces = np;
    b->pcap = ncap;
    return true;
}

static void scatter_append(ProtobufCBuffer *pb, size_t len, const uint8_t *data)
{
    struct scatter_buffer *b = (struct scatter_buffer *)pb;
    if (b->failed || len == 0) {
        return;
    }
    if (len >= FRAME_SCATTER_BORROW_MIN) {
        if (!piece_room(b)) {
            b->failed = true;
            return;
        }
        b->pieces[b->npieces++] = (struct piece){.borrowed = data, .len = len};
        return;
    }
    if (b->used + len > b->cap) {
        size_t ncap = b->cap * 2 > b->used + len ? b->cap * 2 : b->used + len + 256;
        uint8_t *ns = hbc_realloc(b->scratch, ncap);
        if (ns == NULL) {
            b->failed = true;
            return;
        }
        b->scratch = ns;
        b->cap = ncap;
    }
    /* Extend the open scratch piece, or open one. */
    struct piece *last = b->npieces > 0 ? &b->pieces[b->npieces - 1] : NULL;
    if (last == NULL || last->borrowed != NULL) {
        if (!piece_room(b)) {
            b->failed = true;
            return;
        }
        b->pieces[b->npieces++] = (struct piece){.off = b->used};
        last = &b->pieces[b->npieces - 1];
    }
    memcpy(b->scratch + b->used, data, len);
    b->used += len;
    last->len += len;
}

int frame_scatter_encode(const Hbc__Frame *f, struct frame_scatter *out, struct err *e)
{
    memset(out, 0, sizeof *out);
    if (f->body_case == HBC__FRAME__BODY__NOT_SET) {
        return err_set(e, HBC_EINVAL, "encode frame: no body");
    }
    size_t body = hbc__frame__get_packed_size(f);
    if (body > UINT32_MAX) {
        return err_set(e, HBC_ETOOBIG, "encode frame: %zu bytes", body);
    }
    struct scatter_buffer b = {.base = {.append = scatter_append}};
    uint8_t prefix[FRAME_PREFIX_LEN] = {(uint8_t)(body >> 24), (uint8_t)(body >> 16),
                                        (uint8_t)(body >> 8), (uint8_t)body};
    scatter_append(&b.base, sizeof prefix, prefix);
    size_t n = protobuf_c_message_pack_to_buffer(&f->base, &b.base);
    if (!b.failed) {
        out->bufs = hbc_calloc(b.npieces > 0 ? b.npieces : 1, sizeof *out->bufs);
    }
    if (b.failed || out->bufs == NULL) {
        hbc_free(b.scratch);
        hbc_free(b.pieces);
        memset(out, 0, sizeof *out);
        return err_set(e, HBC_ENOMEM, "encode frame: %zu bytes", body);
    }
    if (n != body) {
        hbc_free(b.scratch);
        hbc_free(b.pieces);
        hbc_free(out->bufs);
        memset(out, 0, sizeof *out);
        return err_set(e, HBC_EINTERNAL, "encode frame: packed %zu bytes, expected %zu", n, body);
    }
    for (size_t i = 0; i < b.npieces; i++) {
        const struct piece *p = &b.pieces[i];
        const uint8_t *base = p->borrowed != NULL ? p->borrowed : b.scratch + p->off;
        out->bufs[i] = uv_buf_init((char *)base, (unsigned)p->len);
    }
    out->nbufs = (unsigned)b.npieces;
    out->len = FRAME_PREFIX_LEN + body;
    out->scratch = b.scratch;
    hbc_free(b.pieces);
    return 0;
}

void frame_scatter_free(struct frame_scatter *s)
{
    if (s == NULL) {
        return;
    }
    hbc_free(s->bufs);
    hbc_free(s->scratch);
    memset(s, 0, sizeof *s);
}
