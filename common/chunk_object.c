/* Sealing and opening chunk objects (format and checks in chunk_object.h). */
#include "common/chunk_object.h"

#include <string.h>

#include <isa-l.h>
#include <zstd.h>

#include "common/alloc.h"
#include "hbc.pb-c.h"

/* Offset of the CRC, nonce and payload for a protobuf header of hl bytes. */
#define CRC_OFF(hl) (CHUNK_OBJECT_PREFIX_LEN + (hl))
#define NONCE_OFF(hl) (CRC_OFF(hl) + CHUNK_OBJECT_CRC_LEN)
#define PAYLOAD_OFF(hl) (NONCE_OFF(hl) + CRYPTO_GCM_NONCE_LEN)

/* Associated data: prefix, header, vault id, chunk id. */
#define AD_MAX                                                                                     \
    (CHUNK_OBJECT_PREFIX_LEN + CHUNK_OBJECT_MAX_HEADER + CHUNK_OBJECT_VAULT_ID_LEN +               \
     CHUNK_OBJECT_CHUNK_ID_LEN)

/* Bytes protobuf-c may take while parsing a header of at most CHUNK_OBJECT_MAX_HEADER bytes. */
#define ARENA_LEN 8192

struct chunk_ctx {
    struct crypto_gcm *gcm; /* AES-256-GCM state, re-keyed per call */
    ZSTD_CCtx *cctx;        /* level CHUNK_OBJECT_ZSTD_LEVEL, no frame checksum */
    ZSTD_DCtx *dctx;        /* decompression of ZSTD payloads */
    uint8_t *scratch;       /* compressed payload on seal, decrypted payload on open */
    size_t scratch_cap;     /* bytes at scratch */
    size_t scratch_dirty;   /* its first bytes that may have been written (wiped on free) */
};

/* One parsed and bounds-checked object (the result of object_parse). */
struct parsed {
    struct chunk_object_info info;                 /* header fields */
    size_t header_len;                             /* H: protobuf bytes */
    uint8_t key_check[CHUNK_OBJECT_KEY_CHECK_LEN]; /* from the header */
};

/* A bump allocator over a caller's buffer, so that parsing a header never calls malloc. */
struct arena {
    uint8_t *base; /* start of the buffer */
    size_t used;   /* bytes handed out */
    size_t cap;    /* bytes at base */
};

static void *arena_alloc(void *data, size_t size)
{
    struct arena *a = data;
    size_t off = (a->used + 15) & ~(size_t)15;
    if (off > a->cap || size > a->cap - off) {
        return NULL;
    }
    a->used = off + size;
    return a->base + off;
}

static void arena_free(void *data, void *p)
{
    (void)data;
    (void)p;
}

static uint32_t crc32c(const uint8_t *p, size_t n)
{
    return ~crc32_iscsi((unsigned char *)p, (int)n, 0xFFFFFFFFu);
}

static void put_be32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}

static uint32_t get_be32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

/* ---- Keys and contexts ---------------------------------------------------- */

int chunk_key_init(struct chunk_key *k, const uint8_t data_key[CRYPTO_KEY_LEN], uint32_t generation,
                   struct err *e)
{
    memset(k, 0, sizeof *k);
    k->generation = generation;
    int rc =
        crypto_derive(data_key, CRYPTO_LABEL_CHUNK_OBJECT_KEY, k->gcm_key, sizeof k->gcm_key, e);
    if (rc == 0) {
        rc = crypto_derive(data_key, CRYPTO_LABEL_KEY_CHECK, k->key_check, sizeof k->key_check, e);
    }
    if (rc == 0) {
        rc = crypto_derive(data_key, CRYPTO_LABEL_CHUNK_NONCE_KEY, k->nonce_key,
                           sizeof k->nonce_key, e);
    }
    if (rc != 0) {
        chunk_key_clear(k);
        err_wrap(e, "chunk key");
        return rc;
    }
    return 0;
}

void chunk_key_clear(struct chunk_key *k)
{
    crypto_wipe(k, sizeof *k);
}

int chunk_ctx_new(struct chunk_ctx **out, struct err *e)
{
    *out = NULL;
    struct chunk_ctx *c = hbc_calloc(1, sizeof *c);
    if (c == NULL) {
        return err_set(e, HBC_ENOMEM, "chunk context");
    }
    int rc = crypto_gcm_new(&c->gcm, e);
    if (rc != 0) {
        hbc_free(c);
        err_wrap(e, "chunk context");
        return rc;
    }
    c->cctx = ZSTD_createCCtx();
    c->dctx = ZSTD_createDCtx();
    if (c->cctx == NULL || c->dctx == NULL) {
        chunk_ctx_free(c);
        return err_set(e, HBC_ENOMEM, "chunk context: zstd context");
    }
    /* GCM authenticates the payload: a zstd checksum would only cost time. */
    if (ZSTD_isError(
            ZSTD_CCtx_setParameter(c->cctx, ZSTD_c_compressionLevel, CHUNK_OBJECT_ZSTD_LEVEL)) ||
        ZSTD_isError(ZSTD_CCtx_setParameter(c->cctx, ZSTD_c_checksumFlag, 0)) ||
        ZSTD_isError(ZSTD_CCtx_setParameter(c->cctx, ZSTD_c_contentSizeFlag, 1))) {
        chunk_ctx_free(c);
        return err_set(e, HBC_ECOMPRESS, "chunk context: zstd parameters");
    }
    *out = c;
    return 0;
}

void chunk_ctx_free(struct chunk_ctx *c)
{
    if (c == NULL) {
        return;
    }
    crypto_gcm_free(c->gcm);
    ZSTD_freeCCtx(c->cctx);
    ZSTD_freeDCtx(c->dctx);
    /* Only what was written: wiping pages never touched would fault them in. */
    crypto_wipe(c->scratch, c->scratch_dirty);
    hbc_free(c->scratch);
    hbc_free(c);
}

/* Make c's scratch buffer hold at least n bytes (its old contents are not kept). */
static int scratch_reserve(struct chunk_ctx *c, size_t n, struct err *e)
{
    if (c->scratch_cap >= n) {
        return 0;
    }
    if (n < CHUNK_OBJECT_SAMPLE_LEN) {
        n = CHUNK_OBJECT_SAMPLE_LEN;
    }
    uint8_t *p = hbc_malloc(n);
    if (p == NULL) {
        return err_set(e, HBC_ENOMEM, "chunk scratch buffer of %zu bytes", n);
    }
    crypto_wipe(c->scratch, c->scratch_dirty);
    hbc_free(c->scratch);
    c->scratch = p;
    c->scratch_cap = n;
    c->scratch_dirty = 0;
    return 0;
}

/* ---- Sealing -------------------------------------------------------------- */

size_t chunk_object_max_sealed(size_t plaintext_len)
{
    size_t overhead = PAYLOAD_OFF(CHUNK_OBJECT_HEADER_MAX_PACKED) + CRYPTO_GCM_TAG_LEN;
    return plaintext_len > SIZE_MAX - overhead ? SIZE_MAX : plaintext_len + overhead;
}

/*
 * zstd-compress src into c's scratch buffer if the result fits in cap bytes.
 * Returns the compressed size, or 0 when it does not fit (zstd reports "too
 * small" as soon as it knows, so hopeless data costs little).
 */
static size_t try_compress(struct chunk_ctx *c, const uint8_t *src, size_t len, size_t cap)
{
    c->scratch_dirty = cap > c->scratch_dirty ? cap : c->scratch_dirty;
    size_t r = ZSTD_compress2(c->cctx, c->scratch, cap, src, len);
    return ZSTD_isError(r) ? 0 : r;
}

/*
 * Decide how to pack plaintext: set *payload and *packed to the zstd frame in
 * c's scratch buffer when worth it (see chunk_object.h), otherwise leave them
 * at the plaintext and return NONE.
 */
static int pack_payload(struct chunk_ctx *c, const uint8_t *plain, size_t len,
                        enum chunk_compression *how, const uint8_t **payload, size_t *packed,
                        struct err *e)
{
    *how = CHUNK_COMPRESSION_NONE;
    *payload = plain;
    *packed = len;
    if (len < 32) {
        return 0; /* a zstd frame's own overhead is larger than anything it could save */
    }
    int rc = scratch_reserve(c, len, e);
    if (rc != 0) {
        return rc;
    }
    size_t sample = len < CHUNK_OBJECT_SAMPLE_LEN ? len : CHUNK_OBJECT_SAMPLE_LEN;
    size_t n = try_compress(c, plain, sample, sample - sample / 16);
    if (n == 0) {
        return 0;
    }
    if (sample < len) {
        n = try_compress(c, plain, len, len - 1);
        if (n == 0) {
            return 0;
        }
    }
    *how = CHUNK_COMPRESSION_ZSTD;
    *payload = c->scratch;
    *packed = n;
    return 0;
}

/* Write prefix, vault id and chunk id after each other into ad; return its length. */
static size_t build_ad(uint8_t *ad, const uint8_t *obj, size_t header_len,
                       const uint8_t vault_id[CHUNK_OBJECT_VAULT_ID_LEN],
                       const uint8_t chunk_id[CHUNK_OBJECT_CHUNK_ID_LEN])
{
    size_t n = CHUNK_OBJECT_PREFIX_LEN + header_len;
    memcpy(ad, obj, n);
    memcpy(ad + n, vault_id, CHUNK_OBJECT_VAULT_ID_LEN);
    n += CHUNK_OBJECT_VAULT_ID_LEN;
    memcpy(ad + n, chunk_id, CHUNK_OBJECT_CHUNK_ID_LEN);
    return n + CHUNK_OBJECT_CHUNK_ID_LEN;
}

/*
 * The nonce of an object (chunk_object.h): HMAC(nonce key, ad || SHA-256 of
 * the packed payload when packed is not NULL)[0..12). ad has room for the hash
 * after adl bytes.
 */
static int synthetic_nonce(const struct chunk_key *k, uint8_t *ad, size_t adl,
                           const uint8_t *packed, size_t packed_len,
                           uint8_t nonce[CRYPTO_GCM_NONCE_LEN], struct err *e)
{
    size_t n = adl;
    if (packed != NULL) {
        int rc = crypto_sha256(packed, packed_len, ad + adl, e);
        if (rc != 0) {
            return rc;
        }
        n += CRYPTO_SHA256_LEN;
    }
    uint8_t mac[CRYPTO_SHA256_LEN];
    int rc = crypto_hmac_sha256(k->nonce_key, sizeof k->nonce_key, ad, n, mac, e);
    if (rc == 0) {
        memcpy(nonce, mac, CRYPTO_GCM_NONCE_LEN);
    }
    return rc;
}

int chunk_object_seal(struct chunk_ctx *c, const struct chunk_key *k,
                      const uint8_t vault_id[CHUNK_OBJECT_VAULT_ID_LEN],
                      const uint8_t chunk_id[CHUNK_OBJECT_CHUNK_ID_LEN], const void *plaintext,
                      size_t len, uint8_t *out, size_t out_cap, size_t *out_len, struct err *e)
{
    if (len > CHUNK_OBJECT_MAX_PLAINTEXT) {
        return err_set(e, HBC_ETOOBIG, "seal chunk object: plaintext of %zu bytes exceeds %zu", len,
                       CHUNK_OBJECT_MAX_PLAINTEXT);
    }
    if (out_cap < chunk_object_max_sealed(len)) {
        return err_set(e, HBC_EINVAL, "seal chunk object: output buffer of %zu bytes, need %zu",
                       out_cap, chunk_object_max_sealed(len));
    }
    enum chunk_compression how;
    const uint8_t *payload;
    size_t packed;
    int rc = pack_payload(c, plaintext, len, &how, &payload, &packed, e);
    if (rc != 0) {
        err_wrap(e, "seal chunk object");
        return rc;
    }

    Hbc__ChunkObjectHeader h = HBC__CHUNK_OBJECT_HEADER__INIT;
    h.key_generation = k->generation;
    h.compression = how == CHUNK_COMPRESSION_ZSTD ? HBC__COMPRESSION__COMPRESSION_ZSTD
                                                  : HBC__COMPRESSION__COMPRESSION_NONE;
    h.plaintext_length = len;
    h.packed_length = packed;
    h.key_check.data = (uint8_t *)k->key_check;
    h.key_check.len = sizeof k->key_check;
    size_t hl = hbc__chunk_object_header__get_packed_size(&h);
    if (hl == 0 || hl > CHUNK_OBJECT_HEADER_MAX_PACKED) {
        return err_set(e, HBC_EINTERNAL, "seal chunk object: header of %zu bytes", hl);
    }
    memcpy(out, CHUNK_OBJECT_MAGIC, 4);
    out[4] = CHUNK_OBJECT_VERSION;
    out[5] = (uint8_t)(hl >> 8);
    out[6] = (uint8_t)hl;
    hbc__chunk_object_header__pack(&h, out + CHUNK_OBJECT_PREFIX_LEN);
    put_be32(out + CRC_OFF(hl), crc32c(out, CRC_OFF(hl)));
    uint8_t ad[AD_MAX + CRYPTO_SHA256_LEN];
    size_t adl = build_ad(ad, out, hl, vault_id, chunk_id);
    uint8_t *nonce = out + NONCE_OFF(hl);
    rc = synthetic_nonce(k, ad, adl, how == CHUNK_COMPRESSION_ZSTD ? payload : NULL, packed, nonce,
                         e);
    if (rc != 0) {
        err_wrap(e, "seal chunk object: nonce");
        return rc;
    }
    uint8_t *ct = out + PAYLOAD_OFF(hl);
    rc =
        crypto_gcm_encrypt(c->gcm, k->gcm_key, nonce, ad, adl, payload, packed, ct, ct + packed, e);
    if (rc != 0) {
        err_wrap(e, "seal chunk object");
        return rc;
    }
    *out_len = PAYLOAD_OFF(hl) + packed + CRYPTO_GCM_TAG_LEN;
    return 0;
}

/* ---- Opening -------------------------------------------------------------- */

/* Check the framing and header of obj (see chunk_object.h for the order) into p. */
static int object_parse(const uint8_t *obj, size_t len, struct parsed *p, struct err *e)
{
    memset(p, 0, sizeof *p);
    if (len < CHUNK_OBJECT_PREFIX_LEN) {
        return err_set(e, HBC_ETRUNCATED, "object of %zu bytes is shorter than its %d-byte prefix",
                       len, CHUNK_OBJECT_PREFIX_LEN);
    }
    if (memcmp(obj, CHUNK_OBJECT_MAGIC, 4) != 0) {
        return err_set(e, HBC_EFORMAT, "not a chunk object (bad magic)");
    }
    if (obj[4] != CHUNK_OBJECT_VERSION) {
        return err_set(e, HBC_EVERSION, "chunk object format version %u (this build reads %d)",
                       obj[4], CHUNK_OBJECT_VERSION);
    }
    size_t hl = (size_t)obj[5] << 8 | obj[6];
    if (hl == 0) {
        return err_set(e, HBC_EFORMAT, "header length is 0");
    }
    if (hl > CHUNK_OBJECT_MAX_HEADER) {
        return err_set(e, HBC_ETOOBIG, "header length %zu exceeds %d", hl, CHUNK_OBJECT_MAX_HEADER);
    }
    if (len < NONCE_OFF(hl)) {
        return err_set(e, HBC_ETRUNCATED, "object of %zu bytes ends inside its %zu-byte header",
                       len, hl);
    }
    uint32_t want = get_be32(obj + CRC_OFF(hl));
    uint32_t got = crc32c(obj, CRC_OFF(hl));
    if (want != got) {
        return err_set(e, HBC_ECORRUPT, "header CRC32C is %08x, computed %08x", want, got);
    }

    _Alignas(16) uint8_t mem[ARENA_LEN];
    struct arena a = {.base = mem, .cap = sizeof mem};
    ProtobufCAllocator alloc = {.alloc = arena_alloc, .free = arena_free, .allocator_data = &a};
    Hbc__ChunkObjectHeader *h =
        hbc__chunk_object_header__unpack(&alloc, hl, obj + CHUNK_OBJECT_PREFIX_LEN);
    if (h == NULL) {
        return err_set(e, HBC_EFORMAT, "header does not parse as ChunkObjectHeader");
    }
    if (h->compression != HBC__COMPRESSION__COMPRESSION_NONE &&
        h->compression != HBC__COMPRESSION__COMPRESSION_ZSTD) {
        return err_set(e, HBC_EFORMAT, "unknown compression %d", (int)h->compression);
    }
    if (h->key_check.len != CHUNK_OBJECT_KEY_CHECK_LEN) {
        return err_set(e, HBC_EFORMAT, "key check of %zu bytes (expected %d)", h->key_check.len,
                       CHUNK_OBJECT_KEY_CHECK_LEN);
    }
    if (h->plaintext_length > CHUNK_OBJECT_MAX_PLAINTEXT) {
        return err_set(e, HBC_ETOOBIG, "plaintext length %llu exceeds %zu",
                       (unsigned long long)h->plaintext_length, CHUNK_OBJECT_MAX_PLAINTEXT);
    }
    if (h->packed_length > h->plaintext_length) {
        return err_set(e, HBC_ETOOBIG, "packed length %llu exceeds plaintext length %llu",
                       (unsigned long long)h->packed_length,
                       (unsigned long long)h->plaintext_length);
    }
    int zstd = h->compression == HBC__COMPRESSION__COMPRESSION_ZSTD;
    if (zstd ? h->packed_length == h->plaintext_length : h->packed_length != h->plaintext_length) {
        return err_set(e, HBC_EFORMAT, "packed length %llu does not fit plaintext length %llu %s",
                       (unsigned long long)h->packed_length,
                       (unsigned long long)h->plaintext_length,
                       zstd ? "compressed" : "uncompressed");
    }
    size_t total = PAYLOAD_OFF(hl) + (size_t)h->packed_length + CRYPTO_GCM_TAG_LEN;
    if (len < total) {
        return err_set(e, HBC_ETRUNCATED, "object of %zu bytes, header says %zu", len, total);
    }
    if (len > total) {
        return err_set(e, HBC_ETOOBIG, "object of %zu bytes, header says %zu", len, total);
    }
    p->info.key_generation = h->key_generation;
    p->info.compression = zstd ? CHUNK_COMPRESSION_ZSTD : CHUNK_COMPRESSION_NONE;
    p->info.plaintext_length = h->plaintext_length;
    p->info.packed_length = h->packed_length;
    p->info.object_length = total;
    p->header_len = hl;
    memcpy(p->key_check, h->key_check.data, sizeof p->key_check);
    return 0;
}

int chunk_object_peek(const uint8_t *obj, size_t len, struct chunk_object_info *info, struct err *e)
{
    struct parsed p;
    int rc = object_parse(obj, len, &p, e);
    if (rc != 0) {
        err_wrap(e, "chunk object");
        return rc;
    }
    *info = p.info;
    return 0;
}

int chunk_object_open(struct chunk_ctx *c, const struct chunk_key *k,
                      const uint8_t vault_id[CHUNK_OBJECT_VAULT_ID_LEN],
                      const uint8_t chunk_id[CHUNK_OBJECT_CHUNK_ID_LEN], const uint8_t *obj,
                      size_t len, uint8_t *out, size_t out_cap, size_t *out_len, struct err *e)
{
    struct parsed p;
    int rc = object_parse(obj, len, &p, e);
    if (rc != 0) {
        err_wrap(e, "open chunk object");
        return rc;
    }
    size_t plain_len = (size_t)p.info.plaintext_length;
    size_t packed = (size_t)p.info.packed_length;
    if (out_cap < plain_len) {
        return err_set(e, HBC_EINVAL, "open chunk object: output buffer of %zu bytes, need %zu",
                       out_cap, plain_len);
    }
    if (p.info.key_generation != k->generation) {
        return err_set(e, HBC_EWRONGKEY,
                       "open chunk object: sealed with key generation %u, key offered is "
                       "generation %u",
                       p.info.key_generation, k->generation);
    }
    if (!crypto_equal(p.key_check, k->key_check, sizeof p.key_check)) {
        return err_set(e, HBC_EWRONGKEY,
                       "open chunk object: key check differs: not the data key of generation %u",
                       k->generation);
    }
    size_t hl = p.header_len;
    uint8_t ad[AD_MAX];
    size_t adl = build_ad(ad, obj, hl, vault_id, chunk_id);
    const uint8_t *nonce = obj + NONCE_OFF(hl);
    const uint8_t *ct = obj + PAYLOAD_OFF(hl);
    uint8_t *dst = out;
    if (p.info.compression == CHUNK_COMPRESSION_ZSTD) {
        rc = scratch_reserve(c, packed, e);
        if (rc != 0) {
            err_wrap(e, "open chunk object");
            return rc;
        }
        dst = c->scratch;
        c->scratch_dirty = packed > c->scratch_dirty ? packed : c->scratch_dirty;
    }
    rc = crypto_gcm_decrypt(c->gcm, k->gcm_key, nonce, ad, adl, ct, packed, dst, ct + packed, e);
    if (rc == HBC_EAUTH) {
        return err_set(e, HBC_EAUTH,
                       "open chunk object: GCM tag mismatch (object altered, or sealed for "
                       "another vault or chunk id)");
    }
    if (rc != 0) {
        err_wrap(e, "open chunk object");
        return rc;
    }
    if (p.info.compression == CHUNK_COMPRESSION_ZSTD) {
        size_t n = ZSTD_decompressDCtx(c->dctx, out, plain_len, c->scratch, packed);
        if (ZSTD_isError(n) || n != plain_len) {
            crypto_wipe(out, plain_len);
            return err_set(e, HBC_ECOMPRESS, "open chunk object: zstd payload: %s",
                           ZSTD_isError(n) ? ZSTD_getErrorName(n) : "wrong decompressed length");
        }
    }
    *out_len = plain_len;
    return 0;
}

int chunk_object_verify_id(struct crypto_hmac *h, const void *plaintext, size_t len,
                           const uint8_t chunk_id[CHUNK_OBJECT_CHUNK_ID_LEN], struct err *e)
{
    uint8_t id[CRYPTO_SHA256_LEN];
    int rc = crypto_hmac_compute(h, plaintext, len, id, e);
    if (rc != 0) {
        err_wrap(e, "verify chunk id");
        return rc;
    }
    if (!crypto_equal(id, chunk_id, sizeof id)) {
        return err_set(e, HBC_ECHUNKID, "chunk id is not the HMAC of the plaintext");
    }
    return 0;
}
