/* A PutShards request frame encoded as pieces that point at the shard bytes (no copy). */
#include "common/put_frame.h"

#include <string.h>

#include "common/alloc.h"
#include "common/erasure.h"
#include "common/frame.h"
#include "common/shard_scheme.h"

/* Protobuf tags (field number << 3 | wire type) of the fields written here. */
#define TAG_FRAME_REQUEST_ID 0x08u    /* Frame.request_id = 1, varint */
#define TAG_FRAME_PUT_SHARDS 0x1au    /* Frame.put_shards = 3, length-delimited */
#define TAG_PUT_SHARDS 0x0au          /* PutShards.shards = 1, length-delimited */
#define TAG_PUT_EPOCH (140u << 3)     /* PutShards.epoch = 140, varint */
#define TAG_BLOB_VAULT 0x0au          /* ShardBlob.vault_id = 1 */
#define TAG_BLOB_CHUNK 0x12u          /* ShardBlob.chunk_id = 2 */
#define TAG_BLOB_INDEX 0x18u          /* ShardBlob.index = 3, varint */
#define TAG_BLOB_DATA 0x22u           /* ShardBlob.data = 4 */
#define TAG_BLOB_UNSET (230u << 3)    /* ShardBlob.sha256_unset = 230, varint */
#define TAG_BLOB_SCHEME_K (200u << 3) /* ShardBlob.scheme_k = 200, varint */
#define TAG_BLOB_SCHEME_M (201u << 3) /* ShardBlob.scheme_m = 201, varint */
#define VAULT_LEN 16                  /* bytes of a vault id */
#define CHUNK_LEN 32                  /* bytes of a chunk id */
#define SMALL_PER_SHARD 128           /* more than a shard's tags, lengths, ids and flag */
#define HEAD_MAX (ERASURE_SHARD_PREFIX + ERASURE_SHARD_MAX_HEADER) /* longest head */

static size_t varint_len(uint64_t v)
{
    size_t n = 1;
    while (v >= 0x80) {
        v >>= 7;
        n++;
    }
    return n;
}

static uint8_t *put_varint(uint8_t *p, uint64_t v)
{
    while (v >= 0x80) {
        *p++ = (uint8_t)(v | 0x80);
        v >>= 7;
    }
    *p++ = (uint8_t)v;
    return p;
}

/* Bytes of a shard's ShardBlob message (without its own tag and length). */
static uint64_t blob_message_len(const struct node_client_shard *s, uint64_t *data_len, bool *flag)
{
    uint64_t d = (uint64_t)s->len + (s->head != NULL ? s->head_len + ERASURE_SHARD_TRAILER : 0);
    *data_len = d;
    *flag = s->head != NULL || s->sha256_unset;
    uint32_t index, k, m;
    bool tagged;
    shard_slot_to_wire(s->index, &index, &tagged, &k, &m);
    return (1 + 1 + VAULT_LEN) + (1 + 1 + CHUNK_LEN) + (1 + varint_len(index)) +
           (1 + varint_len(d) + d) + (*flag ? varint_len(TAG_BLOB_UNSET) + 1 : 0) +
           (tagged ? varint_len(TAG_BLOB_SCHEME_K) + varint_len(k) + varint_len(TAG_BLOB_SCHEME_M) +
                         varint_len(m)
                   : 0);
}

/* The builder: small bytes go to scratch, and a piece is closed before each borrowed one. */
struct builder {
    struct put_frame *f; /* the frame being built */
    uint8_t *p;          /* next free byte of scratch */
    uint8_t *start;      /* where the open small piece starts */
};

static void close_small(struct builder *b)
{
    if (b->p > b->start) {
        b->f->bufs[b->f->nbufs++] = uv_buf_init((char *)b->start, (unsigned)(b->p - b->start));
    }
    b->start = b->p;
}

static void borrowed(struct builder *b, const uint8_t *data, size_t len)
{
    if (len == 0) {
        return;
    }
    close_small(b);
    b->f->bufs[b->f->nbufs++] = uv_buf_init((char *)data, (unsigned)len);
}

int put_frame_encode(uint64_t request_id, const struct node_client_shard *shards, size_t n,
                     uint64_t epoch, struct put_frame *out, struct err *e)
{
    memset(out, 0, sizeof *out);
    if (n == 0 || shards == NULL) {
        return err_set(e, HBC_EINVAL, "put frame: no shards");
    }
    uint64_t put_len = 0;
    size_t heads = 0;
    for (size_t i = 0; i < n; i++) {
        const struct node_client_shard *s = &shards[i];
        if (s->vault_id == NULL || s->chunk_id == NULL || s->data == NULL) {
            return err_set(e, HBC_EINVAL, "put frame: shard %zu has no id or data", i);
        }
        if (s->head != NULL && (s->head_len == 0 || s->head_len > HEAD_MAX)) {
            return err_set(e, HBC_EINVAL, "put frame: shard %zu has a %zu-byte head (1 to %d)", i,
                           s->head_len, HEAD_MAX);
        }
        if (s->len > UINT32_MAX) {
            return err_set(e, HBC_ETOOBIG, "put frame: shard %zu of %zu bytes", i, s->len);
        }
        uint64_t data_len;
        bool flag;
        uint64_t m = blob_message_len(s, &data_len, &flag);
        put_len += 1 + varint_len(m) + m;
        heads += s->head != NULL ? s->head_len : 0;
    }
    if (epoch != 0) {
        put_len += varint_len(TAG_PUT_EPOCH) + varint_len(epoch);
    }
    uint64_t frame_len = 1 + varint_len(request_id) + 1 + varint_len(put_len) + put_len;
    if (frame_len > UINT32_MAX) {
        return err_set(e, HBC_ETOOBIG, "put frame: %llu bytes", (unsigned long long)frame_len);
    }
    out->scratch = hbc_malloc(64 + n * SMALL_PER_SHARD + heads + n * ERASURE_SHARD_TRAILER);
    out->bufs = hbc_calloc(2 * n + 2, sizeof *out->bufs);
    if (out->scratch == NULL || out->bufs == NULL) {
        put_frame_free(out);
        return err_set(e, HBC_ENOMEM, "put frame of %zu shards", n);
    }
    out->len = FRAME_PREFIX_LEN + (size_t)frame_len;
    struct builder b = {.f = out, .p = out->scratch, .start = out->scratch};
    b.p[0] = (uint8_t)(frame_len >> 24);
    b.p[1] = (uint8_t)(frame_len >> 16);
    b.p[2] = (uint8_t)(frame_len >> 8);
    b.p[3] = (uint8_t)frame_len;
    b.p += FRAME_PREFIX_LEN;
    *b.p++ = TAG_FRAME_REQUEST_ID;
    b.p = put_varint(b.p, request_id);
    *b.p++ = TAG_FRAME_PUT_SHARDS;
    b.p = put_varint(b.p, put_len);
    for (size_t i = 0; i < n; i++) {
        const struct node_client_shard *s = &shards[i];
        uint64_t data_len;
        bool flag;
        uint64_t m = blob_message_len(s, &data_len, &flag);
        *b.p++ = TAG_PUT_SHARDS;
        b.p = put_varint(b.p, m);
        *b.p++ = TAG_BLOB_VAULT;
        *b.p++ = VAULT_LEN;
        memcpy(b.p, s->vault_id, VAULT_LEN);
        b.p += VAULT_LEN;
        *b.p++ = TAG_BLOB_CHUNK;
        *b.p++ = CHUNK_LEN;
        memcpy(b.p, s->chunk_id, CHUNK_LEN);
        b.p += CHUNK_LEN;
        uint32_t index, sk, sm;
        bool tagged;
        shard_slot_to_wire(s->index, &index, &tagged, &sk, &sm);
        *b.p++ = TAG_BLOB_INDEX;
        b.p = put_varint(b.p, index);
        *b.p++ = TAG_BLOB_DATA;
        b.p = put_varint(b.p, data_len);
        if (s->head != NULL) {
            memcpy(b.p, s->head, s->head_len);
            b.p += s->head_len;
        }
        borrowed(&b, s->data, s->len);
        if (s->head != NULL) {
            memset(b.p, 0, ERASURE_SHARD_TRAILER);
            b.p += ERASURE_SHARD_TRAILER;
        }
        if (tagged) {
            b.p = put_varint(b.p, TAG_BLOB_SCHEME_K);
            b.p = put_varint(b.p, sk);
            b.p = put_varint(b.p, TAG_BLOB_SCHEME_M);
            b.p = put_varint(b.p, sm);
        }
        if (flag) {
            b.p = put_varint(b.p, TAG_BLOB_UNSET);
            *b.p++ = 1;
        }
    }
    if (epoch != 0) {
        b.p = put_varint(b.p, TAG_PUT_EPOCH);
        b.p = put_varint(b.p, epoch);
    }
    close_small(&b);
    return 0;
}

uint8_t *put_frame_flatten(const struct put_frame *f)
{
    uint8_t *buf = hbc_malloc(f->len);
    if (buf == NULL) {
        return NULL;
    }
    size_t at = 0;
    for (unsigned i = 0; i < f->nbufs; i++) {
        memcpy(buf + at, f->bufs[i].base, f->bufs[i].len);
        at += f->bufs[i].len;
    }
    return buf;
}

void put_frame_free(struct put_frame *f)
{
    if (f == NULL) {
        return;
    }
    hbc_free(f->bufs);
    hbc_free(f->scratch);
    memset(f, 0, sizeof *f);
}
