/* Reed–Solomon k+m erasure coding of chunk objects (ISA-L) and the shard format. */
#include "common/erasure.h"

#include <assert.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>

#include <isa-l.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>

#include "common/alloc.h"
#include "hbc.pb-c.h"

static const uint8_t shard_magic[4] = {'H', 'B', 'C', 'S'};

/* Parity shards in a stripe's work buffer start on this boundary. */
#define WORK_ALIGN 64

/*
 * One scheme per (k,m), built on first use. The ready flag is read without
 * the lock (acquire) and set under it (release) after the tables are written,
 * so a reader that sees it set also sees the tables.
 */
static struct erasure_scheme scheme_cache[ERASURE_MAX_K][ERASURE_MAX_M + 1];
static atomic_bool scheme_ready[ERASURE_MAX_K][ERASURE_MAX_M + 1];
static pthread_mutex_t scheme_lock = PTHREAD_MUTEX_INITIALIZER;

/*
 * protobuf-c allocates through our wrapper, so allocation faults reach it
 * too; allocator_data points at a flag that tells such a fault apart from
 * bytes that do not parse (unpack returns NULL for both).
 */
static void *pb_alloc(void *data, size_t n)
{
    void *p = hbc_malloc(n);
    if (p == NULL) {
        *(bool *)data = true;
    }
    return p;
}

static void pb_free(void *data, void *p)
{
    (void)data;
    hbc_free(p);
}

static bool scheme_valid(unsigned k, unsigned m)
{
    return k >= 1 && k <= ERASURE_MAX_K && m <= ERASURE_MAX_M;
}

int erasure_scheme_get(unsigned k, unsigned m, const struct erasure_scheme **out, struct err *e)
{
    if (out == NULL) {
        return err_set(e, HBC_EINVAL, "erasure scheme: no output");
    }
    if (!scheme_valid(k, m)) {
        return err_set(e, HBC_EINVAL, "erasure scheme RS(%u,%u): k must be 1..%d and m 0..%d", k, m,
                       ERASURE_MAX_K, ERASURE_MAX_M);
    }
    struct erasure_scheme *s = &scheme_cache[k - 1][m];
    atomic_bool *ready = &scheme_ready[k - 1][m];
    if (!atomic_load_explicit(ready, memory_order_acquire)) {
        pthread_mutex_lock(&scheme_lock);
        if (!atomic_load_explicit(ready, memory_order_relaxed)) {
            s->k = k;
            s->m = m;
            gf_gen_cauchy1_matrix(s->matrix, (int)(k + m), (int)k);
            if (m > 0) {
                ec_init_tables((int)k, (int)m, &s->matrix[k * k], s->tables);
            }
            atomic_store_explicit(ready, true, memory_order_release);
        }
        pthread_mutex_unlock(&scheme_lock);
    }
    *out = s;
    return 0;
}

size_t erasure_shard_length(unsigned k, size_t object_length)
{
    if (k == 0) {
        return 0;
    }
    return object_length / k + (object_length % k != 0);
}

/* The checks every entry point makes on an object length. */
static int object_length_check(size_t object_length, struct err *e)
{
    if (object_length == 0) {
        return err_set(e, HBC_EINVAL, "empty object (a chunk object is never empty)");
    }
    if (object_length > ERASURE_MAX_OBJECT) {
        return err_set(e, HBC_ETOOBIG, "object of %zu bytes, above the %zu-byte limit",
                       object_length, ERASURE_MAX_OBJECT);
    }
    return 0;
}

static size_t round_up(size_t n, size_t to)
{
    return (n + to - 1) / to * to;
}

static void stripe_unset(struct erasure_stripe *st)
{
    st->scheme = NULL;
    st->object_length = 0;
    st->shard_length = 0;
    memset(st->shards, 0, sizeof st->shards);
}

/*
 * Where data shard i starts in an object: L-byte pieces from the front, but
 * never past object_length - len, so the last one ends at the object's end.
 */
static size_t shard_start(size_t i, size_t len, size_t object_length)
{
    size_t start = i * len;
    return start <= object_length - len ? start : object_length - len;
}

int erasure_encode(const struct erasure_scheme *scheme, const uint8_t *object, size_t object_length,
                   struct erasure_stripe *st, struct err *e)
{
    if (scheme == NULL || object == NULL || st == NULL) {
        return err_set(e, HBC_EINVAL, "encode: missing scheme, object or stripe");
    }
    stripe_unset(st);
    int rc = object_length_check(object_length, e);
    if (rc != 0) {
        err_wrap(e, "encode");
        return rc;
    }
    unsigned k = scheme->k;
    unsigned m = scheme->m;
    size_t len = erasure_shard_length(k, object_length);
    size_t stride = round_up(len, WORK_ALIGN);
    /* One data shard and parity rows of coefficient 1 (RS(1,1)): each parity shard is the data. */
    bool copies = k == 1;
    for (unsigned j = 0; j < m && copies; j++) {
        copies = scheme->matrix[k + j] == 1;
    }
    size_t need = m > 0 && !copies ? m * stride + WORK_ALIGN : 0;

    if (need > st->work_capacity) {
        hbc_free(st->work);
        st->work_capacity = 0;
        st->work = hbc_malloc(need);
        if (st->work == NULL) {
            return err_set(e, HBC_ENOMEM, "encode: %zu-byte parity buffer", need);
        }
        st->work_capacity = need;
    }

    uint8_t *data[ERASURE_MAX_K];
    uint8_t *parity[ERASURE_MAX_M];
    for (unsigned i = 0; i < k; i++) {
        data[i] = (uint8_t *)object + shard_start(i, len, object_length);
    }
    if (m > 0 && copies) {
        for (unsigned j = 0; j < m; j++) {
            parity[j] = data[0];
        }
    } else if (m > 0) {
        uint8_t *base = (uint8_t *)round_up((uintptr_t)st->work, WORK_ALIGN);
        for (unsigned j = 0; j < m; j++) {
            parity[j] = base + j * stride;
        }
        ec_encode_data((int)len, (int)k, (int)m, (uint8_t *)scheme->tables, data, parity);
    }

    st->scheme = scheme;
    st->object_length = object_length;
    st->shard_length = len;
    for (unsigned i = 0; i < k; i++) {
        st->shards[i] = data[i];
    }
    for (unsigned j = 0; j < m; j++) {
        st->shards[k + j] = parity[j];
    }
    return 0;
}

void erasure_stripe_release(struct erasure_stripe *st)
{
    if (st == NULL) {
        return;
    }
    hbc_free(st->work);
    memset(st, 0, sizeof *st);
}

/* Write "i, j, ..." for the lost shards (NULL entries) among n into buf. */
static void lost_list(const uint8_t *const *shards, unsigned n, char *buf, size_t size)
{
    size_t used = 0;
    buf[0] = '\0';
    for (unsigned i = 0; i < n && used < size; i++) {
        if (shards[i] == NULL) {
            int w = snprintf(buf + used, size - used, "%s%u", used > 0 ? ", " : "", i);
            if (w < 0) {
                return;
            }
            used += (size_t)w;
        }
    }
}

/*
 * Pick the first k present shards as sources. Returns the number present
 * (which may exceed k; only the first k are written).
 */
static unsigned pick_sources(const struct erasure_scheme *s, const uint8_t *const *shards,
                             unsigned *sources)
{
    unsigned present = 0;
    for (unsigned i = 0; i < s->k + s->m; i++) {
        if (shards[i] != NULL) {
            if (present < s->k) {
                sources[present] = i;
            }
            present++;
        }
    }
    return present;
}

static int too_few(const struct erasure_scheme *s, const uint8_t *const *shards, unsigned present,
                   struct err *e)
{
    char lost[128];
    lost_list(shards, s->k + s->m, lost, sizeof lost);
    return err_set(e, HBC_ETOOFEW, "RS(%u,%u) needs %u shards, only %u present (lost: %s)", s->k,
                   s->m, s->k, present, lost);
}

/*
 * Build ISA-L tables that compute the shards targets[0..count) from the k
 * shards sources[0..k). The rows of the encode matrix for the sources form
 * an invertible k x k matrix B (every square submatrix of the Cauchy part
 * is invertible); data shard t is row t of B^-1 applied to the sources, and
 * parity shard t is the encode row t times B^-1.
 */
static int decode_tables(const struct erasure_scheme *s, const unsigned *sources,
                         const unsigned *targets, unsigned count, uint8_t *tables, struct err *e)
{
    unsigned k = s->k;
    uint8_t b[ERASURE_MAX_K * ERASURE_MAX_K];
    uint8_t inv[ERASURE_MAX_K * ERASURE_MAX_K];
    uint8_t rows[ERASURE_MAX_M * ERASURE_MAX_K];

    assert(count <= s->m);
    for (unsigned r = 0; r < k; r++) {
        memcpy(&b[r * k], &s->matrix[sources[r] * k], k);
    }
    if (gf_invert_matrix(b, inv, (int)k) != 0) {
        return err_set(e, HBC_EINTERNAL, "RS(%u,%u): decode matrix is singular", k, s->m);
    }
    for (unsigned t = 0; t < count; t++) {
        if (targets[t] < k) {
            memcpy(&rows[t * k], &inv[targets[t] * k], k);
            continue;
        }
        const uint8_t *enc = &s->matrix[targets[t] * k];
        for (unsigned j = 0; j < k; j++) {
            uint8_t acc = 0;
            for (unsigned l = 0; l < k; l++) {
                acc ^= gf_mul(enc[l], inv[l * k + j]);
            }
            rows[t * k + j] = acc;
        }
    }
    ec_init_tables((int)k, (int)count, rows, tables);
    return 0;
}

int erasure_decode(const struct erasure_scheme *scheme, size_t object_length,
                   const uint8_t *const *shards, uint8_t *object, struct err *e)
{
    if (scheme == NULL || shards == NULL || object == NULL) {
        return err_set(e, HBC_EINVAL, "decode: missing scheme, shards or output");
    }
    int rc = object_length_check(object_length, e);
    if (rc != 0) {
        err_wrap(e, "decode");
        return rc;
    }
    unsigned k = scheme->k;
    unsigned sources[ERASURE_MAX_K];
    unsigned present = pick_sources(scheme, shards, sources);
    if (present < k) {
        rc = too_few(scheme, shards, present, e);
        err_wrap(e, "decode");
        return rc;
    }

    size_t len = erasure_shard_length(k, object_length);
    size_t used = object_length / len + (object_length % len != 0); /* data shards needed */
    unsigned targets[ERASURE_MAX_M];
    unsigned count = 0;

    /*
     * A healthy read ends here: data shard i brings object bytes
     * [i*len, min((i+1)*len, object_length)), found at i*len - start in it
     * (non-zero only for the last one, which overlaps its neighbour).
     */
    for (size_t i = 0; i < used; i++) {
        size_t from = i * len;
        size_t n = object_length - from < len ? object_length - from : len;
        if (shards[i] != NULL) {
            memcpy(object + from, shards[i] + (from - shard_start(i, len, object_length)), n);
        } else {
            assert(count < scheme->m);
            targets[count++] = (unsigned)i;
        }
    }
    if (count == 0) {
        return 0;
    }

    uint8_t tables[32 * ERASURE_MAX_K * ERASURE_MAX_M];
    rc = decode_tables(scheme, sources, targets, count, tables, e);
    if (rc != 0) {
        err_wrap(e, "decode");
        return rc;
    }
    uint8_t *src[ERASURE_MAX_K];
    uint8_t *dst[ERASURE_MAX_M];
    for (unsigned j = 0; j < k; j++) {
        src[j] = (uint8_t *)shards[sources[j]];
    }
    /*
     * Lost data shards are decoded straight into their place in the object.
     * Where two of them overlap, both write the same bytes.
     */
    for (unsigned t = 0; t < count; t++) {
        dst[t] = object + shard_start(targets[t], len, object_length);
    }
    ec_encode_data((int)len, (int)k, (int)count, tables, src, dst);
    return 0;
}

int erasure_reconstruct(const struct erasure_scheme *scheme, size_t shard_length,
                        const uint8_t *const *shards, const unsigned *wanted, size_t count,
                        uint8_t *const *out, struct err *e)
{
    if (scheme == NULL || shards == NULL || (count > 0 && (wanted == NULL || out == NULL))) {
        return err_set(e, HBC_EINVAL, "reconstruct: missing scheme, shards or outputs");
    }
    if (shard_length == 0 || shard_length > ERASURE_MAX_OBJECT) {
        return err_set(e, HBC_EINVAL, "reconstruct: shard length %zu outside 1..%zu", shard_length,
                       ERASURE_MAX_OBJECT);
    }
    unsigned k = scheme->k;
    unsigned n = k + scheme->m;
    unsigned sources[ERASURE_MAX_K];
    unsigned present = pick_sources(scheme, shards, sources);
    if (present < k) {
        int rc = too_few(scheme, shards, present, e);
        err_wrap(e, "reconstruct");
        return rc;
    }
    uint32_t seen = 0;
    unsigned targets[ERASURE_MAX_M];
    for (size_t t = 0; t < count; t++) {
        unsigned w = wanted[t];
        if (w >= n || shards[w] != NULL || (seen & (UINT32_C(1) << w)) != 0 || out[t] == NULL) {
            return err_set(e, HBC_EINVAL,
                           "reconstruct: wanted shard %u must be a lost shard of RS(%u,%u), named "
                           "once, with an output buffer",
                           w, k, scheme->m);
        }
        seen |= UINT32_C(1) << w;
        targets[t] = w; /* count <= lost shards <= m, so this fits */
    }
    if (count == 0) {
        return 0;
    }
    uint8_t tables[32 * ERASURE_MAX_K * ERASURE_MAX_M];
    int rc = decode_tables(scheme, sources, targets, (unsigned)count, tables, e);
    if (rc != 0) {
        err_wrap(e, "reconstruct");
        return rc;
    }
    uint8_t *src[ERASURE_MAX_K];
    for (unsigned j = 0; j < k; j++) {
        src[j] = (uint8_t *)shards[sources[j]];
    }
    ec_encode_data((int)shard_length, (int)k, (int)count, tables, src, (uint8_t **)out);
    return 0;
}

/*
 * The consistency checks a shard header must pass, whether we are about to
 * write it (code HBC_EINVAL: the caller's mistake) or have just read it
 * (code HBC_EFORMAT: bad data). An object above the limit is HBC_ETOOBIG.
 */
static int info_check(const struct erasure_shard_info *info, int code, struct err *e)
{
    if (!scheme_valid(info->k, info->m)) {
        return err_set(e, code, "RS(%u,%u): k must be 1..%d and m 0..%d", info->k, info->m,
                       ERASURE_MAX_K, ERASURE_MAX_M);
    }
    if (info->index >= info->k + info->m) {
        return err_set(e, code, "index %u outside 0..%u of RS(%u,%u)", info->index,
                       info->k + info->m - 1, info->k, info->m);
    }
    if (info->object_length == 0) {
        return err_set(e, code, "object length 0");
    }
    if (info->object_length > ERASURE_MAX_OBJECT) {
        return err_set(e, HBC_ETOOBIG, "object length %" PRIu64 " above the %zu-byte limit",
                       info->object_length, ERASURE_MAX_OBJECT);
    }
    uint64_t len = erasure_shard_length(info->k, (size_t)info->object_length);
    if (info->shard_length != len) {
        return err_set(e, code,
                       "shard length %" PRIu64 " but %" PRIu64 " for a %" PRIu64
                       "-byte object in RS(%u,%u)",
                       info->shard_length, len, info->object_length, info->k, info->m);
    }
    return 0;
}

static int sha256(const uint8_t *data, size_t n, uint8_t *md, struct err *e)
{
    if (EVP_Digest(data, n, md, NULL, EVP_sha256(), NULL) != 1) {
        return err_openssl(e, HBC_ECRYPTO, "SHA-256");
    }
    return 0;
}

int erasure_shard_head(const struct erasure_shard_info *info, uint8_t head[ERASURE_SHARD_HEAD_MAX],
                       size_t *head_len, struct err *e)
{
    if (info == NULL || head == NULL || head_len == NULL) {
        return err_set(e, HBC_EINVAL, "encode shard: missing header or output");
    }
    int rc = info_check(info, HBC_EINVAL, e);
    if (rc != 0) {
        err_wrap(e, "encode shard");
        return rc;
    }
    Hbc__ShardHeader h = HBC__SHARD_HEADER__INIT;
    h.vault_id.data = (uint8_t *)info->vault_id;
    h.vault_id.len = sizeof info->vault_id;
    h.chunk_id.data = (uint8_t *)info->chunk_id;
    h.chunk_id.len = sizeof info->chunk_id;
    h.k = info->k;
    h.m = info->m;
    h.index = info->index;
    h.object_length = info->object_length;
    h.shard_length = info->shard_length;
    size_t hlen = hbc__shard_header__get_packed_size(&h);
    /* Fixed-size ids and bounded integers keep the header near 100 bytes. */
    assert(hlen <= ERASURE_SHARD_MAX_HEADER);
    memcpy(head, shard_magic, sizeof shard_magic);
    head[4] = ERASURE_SHARD_VERSION;
    head[5] = (uint8_t)(hlen >> 8);
    head[6] = (uint8_t)hlen;
    hbc__shard_header__pack(&h, head + ERASURE_SHARD_PREFIX);
    *head_len = ERASURE_SHARD_PREFIX + hlen;
    return 0;
}

/* erasure_shard_encode(), with the trailer computed (hash) or left as zero bytes. */
static int shard_encode(const struct erasure_shard_info *info, const uint8_t *payload, bool hash,
                        uint8_t **out, size_t *out_length, struct err *e)
{
    if (info == NULL || payload == NULL || out == NULL || out_length == NULL) {
        return err_set(e, HBC_EINVAL, "encode shard: missing header, payload or output");
    }
    uint8_t head[ERASURE_SHARD_HEAD_MAX];
    size_t hl = 0;
    int rc = erasure_shard_head(info, head, &hl, e);
    if (rc != 0) {
        return rc;
    }
    size_t body = hl + (size_t)info->shard_length;
    size_t total = body + ERASURE_SHARD_TRAILER;
    uint8_t *buf = hbc_malloc(total);
    if (buf == NULL) {
        return err_set(e, HBC_ENOMEM, "encode shard: %zu bytes", total);
    }
    memcpy(buf, head, hl);
    memcpy(buf + hl, payload, (size_t)info->shard_length);
    if (!hash) {
        memset(buf + body, 0, ERASURE_SHARD_TRAILER);
    }
    rc = hash ? sha256(buf, body, buf + body, e) : 0;
    if (rc != 0) {
        hbc_free(buf);
        err_wrap(e, "encode shard");
        return rc;
    }
    *out = buf;
    *out_length = total;
    return 0;
}

int erasure_shard_encode(const struct erasure_shard_info *info, const uint8_t *payload,
                         uint8_t **out, size_t *out_length, struct err *e)
{
    return shard_encode(info, payload, true, out, out_length, e);
}

/*
 * SHA-256 of data[0..n) into md and, in the same pass, of data[0..n+extra)
 * into whole. md is written before data[n..n+extra) is read, so md may
 * be data + n: the trailer is then filled in and hashed as filled.
 */
static int sha256_and_whole(const uint8_t *data, size_t n, size_t extra, uint8_t *md,
                            uint8_t *whole, struct err *e)
{
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    EVP_MD_CTX *head = EVP_MD_CTX_new();
    bool ok = ctx != NULL && head != NULL && EVP_DigestInit_ex(ctx, EVP_sha256(), NULL) == 1 &&
              EVP_DigestUpdate(ctx, data, n) == 1 && EVP_MD_CTX_copy_ex(head, ctx) == 1 &&
              EVP_DigestFinal_ex(head, md, NULL) == 1 &&
              EVP_DigestUpdate(ctx, data + n, extra) == 1 &&
              EVP_DigestFinal_ex(ctx, whole, NULL) == 1;
    EVP_MD_CTX_free(ctx);
    EVP_MD_CTX_free(head);
    return ok ? 0 : err_openssl(e, HBC_ECRYPTO, "SHA-256");
}

/*
 * Every check of an encoded shard. With fill (the same bytes as blob, writable) the trailer
 * must be zero and is filled in with the SHA-256 instead of being compared; otherwise the
 * SHA-256 is compared only when check_sum (then also the whole blob's into whole, if not NULL).
 */
static int shard_decode(const uint8_t *blob, uint8_t *fill, size_t blob_length,
                        struct erasure_shard_info *info, const uint8_t **payload, bool check_sum,
                        uint8_t *whole, struct err *e)
{
    if (blob == NULL && blob_length > 0) {
        return err_set(e, HBC_EINVAL, "shard: no data");
    }
    if (blob_length < ERASURE_SHARD_PREFIX) {
        return err_set(e, HBC_ETRUNCATED, "shard: %zu bytes, shorter than its %d-byte prefix",
                       blob_length, ERASURE_SHARD_PREFIX);
    }
    if (memcmp(blob, shard_magic, sizeof shard_magic) != 0) {
        return err_set(e, HBC_EFORMAT, "shard: bad magic (not an HBC shard)");
    }
    if (blob[4] != ERASURE_SHARD_VERSION) {
        return err_set(e, HBC_EVERSION, "shard: format version %u, this build reads %d", blob[4],
                       ERASURE_SHARD_VERSION);
    }
    size_t hlen = (size_t)blob[5] << 8 | blob[6];
    if (hlen > ERASURE_SHARD_MAX_HEADER) {
        return err_set(e, HBC_ETOOBIG, "shard: header length %zu above %d", hlen,
                       ERASURE_SHARD_MAX_HEADER);
    }
    if (hlen == 0) {
        return err_set(e, HBC_EFORMAT, "shard: empty header");
    }
    if (blob_length < ERASURE_SHARD_PREFIX + hlen) {
        return err_set(e, HBC_ETRUNCATED, "shard: %zu bytes, cut inside its %zu-byte header",
                       blob_length, hlen);
    }
    bool oom = false;
    ProtobufCAllocator pb = {.alloc = pb_alloc, .free = pb_free, .allocator_data = &oom};
    Hbc__ShardHeader *h = hbc__shard_header__unpack(&pb, hlen, blob + ERASURE_SHARD_PREFIX);
    if (h == NULL && oom) {
        return err_set(e, HBC_ENOMEM, "shard: parsing the header");
    }
    if (h == NULL) {
        return err_set(e, HBC_EFORMAT, "shard: header does not parse as a ShardHeader");
    }
    if (h->vault_id.len != ERASURE_VAULT_ID_LEN || h->chunk_id.len != ERASURE_CHUNK_ID_LEN) {
        size_t v = h->vault_id.len;
        size_t c = h->chunk_id.len;
        hbc__shard_header__free_unpacked(h, &pb);
        return err_set(e, HBC_EFORMAT,
                       "shard: vault id of %zu bytes and chunk id of %zu bytes (want %d and %d)", v,
                       c, ERASURE_VAULT_ID_LEN, ERASURE_CHUNK_ID_LEN);
    }
    struct erasure_shard_info got;
    memcpy(got.vault_id, h->vault_id.data, sizeof got.vault_id);
    memcpy(got.chunk_id, h->chunk_id.data, sizeof got.chunk_id);
    got.k = h->k;
    got.m = h->m;
    got.index = h->index;
    got.object_length = h->object_length;
    got.shard_length = h->shard_length;
    hbc__shard_header__free_unpacked(h, &pb);
    int rc = info_check(&got, HBC_EFORMAT, e);
    if (rc != 0) {
        err_wrap(e, "shard: header");
        return rc;
    }

    /* shard_length is at most ERASURE_MAX_OBJECT now, so this cannot overflow. */
    size_t body = ERASURE_SHARD_PREFIX + hlen + (size_t)got.shard_length;
    size_t want = body + ERASURE_SHARD_TRAILER;
    if (blob_length < want) {
        return err_set(e, HBC_ETRUNCATED, "shard %u: %zu bytes, its header says %zu", got.index,
                       blob_length, want);
    }
    if (blob_length > want) {
        return err_set(e, HBC_EFORMAT, "shard %u: %zu bytes, %zu more than its header says",
                       got.index, blob_length, blob_length - want);
    }
    uint8_t md[ERASURE_SHARD_TRAILER];
    if (fill != NULL) {
        static const uint8_t zero[ERASURE_SHARD_TRAILER];
        if (memcmp(blob + body, zero, sizeof zero) != 0) {
            return err_set(e, HBC_EFORMAT, "shard %u: the trailer to fill in is not zero",
                           got.index);
        }
        rc = sha256_and_whole(fill, body, ERASURE_SHARD_TRAILER, fill + body, whole, e);
    } else if (check_sum) {
        rc = whole != NULL ? sha256_and_whole(blob, body, ERASURE_SHARD_TRAILER, md, whole, e)
                           : sha256(blob, body, md, e);
    }
    if (rc != 0) {
        err_wrap(e, "shard %u", got.index);
        return rc;
    }
    if (fill == NULL && check_sum && CRYPTO_memcmp(md, blob + body, sizeof md) != 0) {
        return err_set(e, HBC_ECORRUPT, "shard %u: SHA-256 mismatch", got.index);
    }
    if (info != NULL) {
        *info = got;
    }
    if (payload != NULL) {
        *payload = blob + ERASURE_SHARD_PREFIX + hlen;
    }
    return 0;
}

int erasure_shard_decode(const uint8_t *blob, size_t blob_length, struct erasure_shard_info *info,
                         const uint8_t **payload, struct err *e)
{
    return shard_decode(blob, NULL, blob_length, info, payload, true, NULL, e);
}

int erasure_shard_parse(const uint8_t *blob, size_t blob_length, struct erasure_shard_info *info,
                        const uint8_t **payload, struct err *e)
{
    return shard_decode(blob, NULL, blob_length, info, payload, false, NULL, e);
}

int erasure_shard_decode_sha256(const uint8_t *blob, size_t blob_length,
                                struct erasure_shard_info *info, const uint8_t **payload,
                                uint8_t blob_sha256[ERASURE_SHARD_TRAILER], struct err *e)
{
    if (blob_sha256 == NULL) {
        return err_set(e, HBC_EINVAL, "shard: no room for the SHA-256");
    }
    return shard_decode(blob, NULL, blob_length, info, payload, true, blob_sha256, e);
}

int erasure_shard_fill_sha256(uint8_t *blob, size_t blob_length, struct erasure_shard_info *info,
                              const uint8_t **payload, uint8_t blob_sha256[ERASURE_SHARD_TRAILER],
                              struct err *e)
{
    if (blob_sha256 == NULL) {
        return err_set(e, HBC_EINVAL, "shard: no room for the SHA-256");
    }
    return shard_decode(blob, blob, blob_length, info, payload, true, blob_sha256, e);
}

/* erasure_shards_encode() and erasure_shards_encode_unhashed(). */
static int shards_encode(const uint8_t *vault_id, const uint8_t *chunk_id, unsigned k, unsigned m,
                         const uint8_t *object, size_t object_length, bool hash, uint8_t **blobs,
                         size_t *lengths, struct err *e)
{
    if (vault_id == NULL || chunk_id == NULL || blobs == NULL || lengths == NULL) {
        return err_set(e, HBC_EINVAL, "encode shards: missing ids or outputs");
    }
    const struct erasure_scheme *scheme;
    int rc = erasure_scheme_get(k, m, &scheme, e);
    if (rc != 0) {
        err_wrap(e, "encode shards");
        return rc;
    }
    for (unsigned i = 0; i < k + m; i++) {
        blobs[i] = NULL;
    }
    struct erasure_stripe st = {0};
    rc = erasure_encode(scheme, object, object_length, &st, e);
    if (rc != 0) {
        goto fail;
    }
    struct erasure_shard_info info;
    memcpy(info.vault_id, vault_id, sizeof info.vault_id);
    memcpy(info.chunk_id, chunk_id, sizeof info.chunk_id);
    info.k = k;
    info.m = m;
    info.object_length = object_length;
    info.shard_length = st.shard_length;
    for (unsigned i = 0; i < k + m; i++) {
        info.index = i;
        rc = shard_encode(&info, st.shards[i], hash, &blobs[i], &lengths[i], e);
        if (rc != 0) {
            goto fail;
        }
    }
    erasure_stripe_release(&st);
    return 0;

fail:
    for (unsigned i = 0; i < k + m; i++) {
        hbc_free(blobs[i]);
        blobs[i] = NULL;
    }
    erasure_stripe_release(&st);
    err_wrap(e, "encode shards");
    return rc;
}

int erasure_shards_encode(const uint8_t *vault_id, const uint8_t *chunk_id, unsigned k, unsigned m,
                          const uint8_t *object, size_t object_length, uint8_t **blobs,
                          size_t *lengths, struct err *e)
{
    return shards_encode(vault_id, chunk_id, k, m, object, object_length, true, blobs, lengths, e);
}

int erasure_shards_encode_unhashed(const uint8_t *vault_id, const uint8_t *chunk_id, unsigned k,
                                   unsigned m, const uint8_t *object, size_t object_length,
                                   uint8_t **blobs, size_t *lengths, struct err *e)
{
    return shards_encode(vault_id, chunk_id, k, m, object, object_length, false, blobs, lengths, e);
}

/* Append printf-style text to a bounded message buffer, silently truncating. */
static void note(char *buf, size_t size, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void note(char *buf, size_t size, const char *fmt, ...)
{
    size_t used = strnlen(buf, size);
    if (used + 1 >= size) {
        return;
    }
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf + used, size - used, fmt, ap);
    va_end(ap);
}

/*
 * What both rebuilds share: accept the blobs (with or without their SHA-256), then either
 * allocate the object (object != NULL) or place it in the caller's buffer *buf of *cap bytes,
 * growing it, or point *view into the one blob that holds it all (k = 1).
 */
static int shards_rebuild(const uint8_t *const *blobs, const size_t *lengths, size_t count,
                          const uint8_t *vault_id, const uint8_t *chunk_id, bool check_sum,
                          uint8_t **object, uint8_t **buf, size_t *cap, const uint8_t **view,
                          size_t *object_length, struct err *e)
{
    if (count > 2 * ERASURE_MAX_SHARDS) {
        return err_set(e, HBC_EINVAL, "rebuild: %zu shards given, at most %d", count,
                       2 * ERASURE_MAX_SHARDS);
    }
    bool ids_given = vault_id != NULL && chunk_id != NULL;
    const uint8_t *payloads[ERASURE_MAX_SHARDS] = {0};
    struct erasure_shard_info ref;
    size_t ref_pos = 0;
    bool have_ref = false;
    unsigned intact = 0;
    size_t fetched = 0;
    char rejected[320] = "";

    for (size_t n = 0; n < count; n++) {
        if (blobs[n] == NULL) {
            continue;
        }
        fetched++;
        struct erasure_shard_info info;
        const uint8_t *payload;
        struct err why;
        int rc = shard_decode(blobs[n], NULL, lengths[n], &info, &payload, check_sum, NULL, &why);
        if (rc == HBC_ENOMEM) {
            return err_setraw(e, rc, "rebuild: %s", why.msg);
        }
        if (rc != 0) {
            note(rejected, sizeof rejected, "%sblob %zu %s", rejected[0] ? ", " : "", n,
                 hbc_errname(rc));
            continue;
        }
        if (ids_given) {
            if (memcmp(info.vault_id, vault_id, sizeof info.vault_id) != 0 ||
                memcmp(info.chunk_id, chunk_id, sizeof info.chunk_id) != 0) {
                note(rejected, sizeof rejected, "%sblob %zu of another chunk",
                     rejected[0] ? ", " : "", n);
                continue;
            }
        } else if (have_ref && (memcmp(info.vault_id, ref.vault_id, sizeof ref.vault_id) != 0 ||
                                memcmp(info.chunk_id, ref.chunk_id, sizeof ref.chunk_id) != 0)) {
            return err_set(e, HBC_ECHUNKID,
                           "rebuild: shards of different chunks (blobs %zu and %zu)", ref_pos, n);
        }
        if (!have_ref) {
            ref = info;
            ref_pos = n;
            have_ref = true;
        } else if (info.k != ref.k || info.m != ref.m || info.object_length != ref.object_length) {
            return err_set(e, HBC_EFORMAT,
                           "rebuild: blob %zu is RS(%u,%u) of a %" PRIu64
                           "-byte object, blob %zu RS(%u,%u) of %" PRIu64 " bytes",
                           ref_pos, ref.k, ref.m, ref.object_length, n, info.k, info.m,
                           info.object_length);
        }
        if (payloads[info.index] == NULL) {
            payloads[info.index] = payload;
            intact++;
        }
    }
    if (!have_ref) {
        return err_set(e, HBC_ETOOFEW, "rebuild: no intact shard among %zu fetched (rejected: %s)",
                       fetched, rejected[0] ? rejected : "none");
    }
    if (intact < ref.k) {
        char lost[128];
        lost_list(payloads, ref.k + ref.m, lost, sizeof lost);
        return err_set(e, HBC_ETOOFEW,
                       "rebuild: %u intact shards, RS(%u,%u) needs %u (missing: %s; rejected: %s)",
                       intact, ref.k, ref.m, ref.k, lost, rejected[0] ? rejected : "none");
    }

    const struct erasure_scheme *scheme;
    int rc = erasure_scheme_get(ref.k, ref.m, &scheme, e);
    if (rc != 0) {
        err_wrap(e, "rebuild");
        return rc;
    }
    size_t len = (size_t)ref.object_length;
    if (view != NULL && ref.k == 1 && payloads[0] != NULL) {
        *view = payloads[0]; /* the one data shard is the object: nothing to copy */
        *object_length = len;
        return 0;
    }
    uint8_t *out;
    if (object != NULL) {
        out = hbc_malloc(len);
    } else {
        if (*cap < len) {
            hbc_free(*buf);
            *cap = 0;
            *buf = hbc_malloc(len);
            if (*buf != NULL) {
                *cap = len;
            }
        }
        out = *buf;
    }
    if (out == NULL) {
        return err_set(e, HBC_ENOMEM, "rebuild: %zu-byte object", len);
    }
    rc = erasure_decode(scheme, len, payloads, out, e);
    if (rc != 0) {
        if (object != NULL) {
            hbc_free(out);
        }
        err_wrap(e, "rebuild");
        return rc;
    }
    if (object != NULL) {
        *object = out;
    } else {
        *view = out;
    }
    *object_length = len;
    return 0;
}

int erasure_shards_rebuild(const uint8_t *const *blobs, const size_t *lengths, size_t count,
                           const uint8_t *vault_id, const uint8_t *chunk_id, uint8_t **object,
                           size_t *object_length, struct err *e)
{
    if (object == NULL || object_length == NULL ||
        (count > 0 && (blobs == NULL || lengths == NULL))) {
        return err_set(e, HBC_EINVAL, "rebuild: missing shards or output");
    }
    return shards_rebuild(blobs, lengths, count, vault_id, chunk_id, true, object, NULL, NULL, NULL,
                          object_length, e);
}

int erasure_shards_rebuild_unverified(const uint8_t *const *blobs, const size_t *lengths,
                                      size_t count, const uint8_t *vault_id,
                                      const uint8_t *chunk_id, uint8_t **buf, size_t *cap,
                                      const uint8_t **object, size_t *object_length, struct err *e)
{
    if (buf == NULL || cap == NULL || object == NULL || object_length == NULL ||
        (count > 0 && (blobs == NULL || lengths == NULL))) {
        return err_set(e, HBC_EINVAL, "rebuild: missing shards or output");
    }
    return shards_rebuild(blobs, lengths, count, vault_id, chunk_id, false, NULL, buf, cap, object,
                          object_length, e);
}
