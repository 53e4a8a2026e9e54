/* codec_bench: one core's throughput of HBC's data codecs beside the primitives under them. */
#include <getopt.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <isa-l.h>
#include <jansson.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>

#include "common/alloc.h"
#include "common/chunk_object.h"
#include "common/chunker.h"
#include "common/crypto.h"
#include "common/erasure.h"
#include "common/err.h"

/*
 * How the figures are made (also printed in the output header):
 *
 * - Each row pairs a codec with the raw primitive under it, run on the very
 *   same buffers. A round runs the codec and then the primitive (odd rounds:
 *   the primitive first), so that whatever else the machine does at that
 *   moment hits both alike; the row reports the median of each side over
 *   the rounds and the median of the per-round ratios.
 * - One run repeats passes over the whole working set until it has used at
 *   least min_time seconds of this thread's CPU time (CLOCK_THREAD_CPUTIME_ID):
 *   MB/s is per core, and time the scheduler gives other processes on this
 *   shared machine is not counted. MB is 10^6 bytes.
 * - The working set defaults to 256 MiB, past the last-level cache here
 *   (memcpy falls from about 12 to 7 GB/s between 64 and 128 MiB), so data
 *   comes from memory as it does in a backup. Codecs that write a per-object
 *   scratch buffer that is reused in real use (the parity of a stripe) reuse
 *   one here too, on both sides.
 * - Before the timed rounds each side runs once untimed, and the results are
 *   checked (decoded objects, opened plaintexts), so a fast wrong codec
 *   cannot report a figure.
 */

#define MIB ((size_t)1 << 20)
#define SEAL_BUF MIB               /* plaintext bytes per seal/open call */
#define READ_BLOCK MIB             /* bytes per chunker_next() feed, as a file reader would */
#define DEFAULT_WORKING_SET (256u) /* MiB */
#define DEFAULT_ROUNDS 7
#define DEFAULT_MIN_TIME 0.25 /* seconds of CPU time per run */
#define MAX_ROUNDS 101

/* Keeps results alive so that the compiler cannot drop the work that made them. */
static volatile uint64_t sink;

struct bench;

/* One pass over the working set; *bytes receives the bytes it counts for MB/s. */
typedef int (*pass_fn)(struct bench *b, uint64_t *bytes);

/* One line of the table: a codec and its raw primitive. */
struct row {
    const char *name;     /* what the codec row measures */
    const char *raw_name; /* the primitive beside it */
    double target;        /* the ratio codec/raw to reach, 0 for none */
    unsigned k;           /* RS rows: data shards */
    unsigned m;           /* RS rows: parity shards */
    bool compressible;    /* seal/open rows: which working set */
    int (*setup)(struct bench *b, const struct row *r);
    pass_fn codec; /* the HBC codec */
    pass_fn raw;   /* the primitive under it */
    void (*teardown)(struct bench *b);
};

/* Medians of one row. */
struct result {
    double codec[MAX_ROUNDS]; /* MB/s of the codec, per round */
    double raw[MAX_ROUNDS];   /* MB/s of the primitive, per round */
    double ratio[MAX_ROUNDS]; /* codec/raw, per round */
    double codec_median;      /* MB/s */
    double raw_median;        /* MB/s */
    double ratio_median;      /* median of the per-round ratios */
    double ratio_min;         /* lowest per-round ratio */
    double ratio_max;         /* highest per-round ratio */
    double packed;            /* seal rows: sealed bytes / plaintext bytes, else 0 */
};

struct bench {
    bool quick;       /* --quick: short runs for a smoke test */
    bool json;        /* --json: machine-readable output */
    unsigned rounds;  /* timed rounds per row */
    double min_time;  /* CPU seconds per run at least */
    size_t ws;        /* working-set bytes */
    uint8_t *random;  /* ws incompressible bytes */
    uint8_t *text;    /* ws compressible bytes (word salad) */
    uint8_t *out;     /* output region */
    size_t out_cap;   /* bytes at out */
    struct err e;     /* the last failure */
    double packed;    /* set by a seal row's setup: sealed bytes / plaintext bytes */
    uint64_t counter; /* nonces of the raw AES side */

    /* chunk ids */
    uint64_t *cuts;           /* chunk end offsets in random */
    size_t ncuts;             /* entries in cuts */
    EVP_MD *sha256;           /* fetched once */
    struct crypto_hmac *hmac; /* keyed with a random chunk-id key */

    /* seal and open */
    const uint8_t *plain;   /* the working set of the current row */
    size_t nbuf;            /* SEAL_BUF buffers in it */
    struct chunk_ctx *cctx; /* the seal side's working state */
    struct chunk_key ckey;  /* the seal side's derived keys */
    uint8_t vault_id[16];   /* constant ids bound into the objects */
    uint8_t chunk_id[32];   /* (their value does not change the cost) */
    size_t sealed_stride;   /* chunk_object_max_sealed(SEAL_BUF) */
    uint8_t *sealed;        /* nbuf sealed objects, sealed_stride apart */
    size_t *sealed_len;     /* their lengths */
    uint8_t *rawct;         /* nbuf raw AES-GCM ciphertexts */
    uint8_t (*tags)[16];    /* their tags */
    EVP_CIPHER *aes;        /* AES-256-GCM, fetched once */
    EVP_CIPHER_CTX *evp;    /* the raw side's context, re-keyed per buffer */
    uint8_t aes_key[32];    /* the raw side's key */
    uint8_t data_key[32];   /* the vault data key of the seal side */

    /* Reed–Solomon */
    const struct erasure_scheme *scheme; /* the row's RS(k,m) */
    struct erasure_stripe stripe;        /* the codec's reused stripe */
    size_t rs_object;                    /* bytes per object: a sealed 1 MiB chunk */
    size_t nobj;                         /* rs_object-byte objects in random */
    size_t shard_len;                    /* bytes per shard */
    uint8_t **data_ptrs;                 /* nobj * k data shard pointers, from erasure_encode */
    uint8_t *parity;                     /* nobj * m stored parity shards (decode rows) */
    uint8_t *raw_parity;                 /* the raw side's reused parity buffer */
    uint8_t dec_tables[32 * ERASURE_MAX_K * ERASURE_MAX_M]; /* raw decode tables */
};

static double cpu_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static int fail(struct bench *b, const char *what)
{
    fprintf(stderr, "codec_bench: %s: %s\n", what, b->e.msg[0] ? b->e.msg : "failed");
    return -1;
}

static void *xalloc(size_t n)
{
    void *p = hbc_malloc(n);
    if (p == NULL) {
        fprintf(stderr, "codec_bench: out of memory (%zu bytes)\n", n);
        exit(1);
    }
    return p;
}

static uint64_t splitmix64(uint64_t *state)
{
    uint64_t z = (*state += 0x9e3779b97f4a7c15u);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9u;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebu;
    return z ^ (z >> 31);
}

/* Incompressible bytes: a fixed-seed PRNG, so every run measures the same data. */
static void fill_random(uint8_t *p, size_t n, uint64_t seed)
{
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        uint64_t v = splitmix64(&seed);
        memcpy(p + i, &v, 8);
    }
    for (; i < n; i++) {
        p[i] = (uint8_t)splitmix64(&seed);
    }
}

/*
 * Compressible bytes: words of 2 to 9 letters from a 4096-word vocabulary,
 * drawn with a skew towards the first ones, in lines of about 70 characters.
 * zstd level 1 packs it to roughly a third, like text, logs or CSV exports.
 */
static void fill_text(uint8_t *p, size_t n, uint64_t seed)
{
    enum { WORDS = 4096, WORD_MAX = 10 };
    static char vocab[WORDS][WORD_MAX];
    for (size_t w = 0; w < WORDS; w++) {
        size_t len = 2 + splitmix64(&seed) % 8;
        for (size_t c = 0; c < len; c++) {
            vocab[w][c] = (char)('a' + splitmix64(&seed) % 26);
        }
        vocab[w][len] = '\0';
    }
    size_t i = 0, line = 0;
    while (i < n) {
        uint64_t r = splitmix64(&seed);
        /* The product of two uniform numbers favours small indices. */
        size_t w = (size_t)(((r & 0xffff) * ((r >> 16) & 0xffff)) >> 20) % WORDS;
        const char *word = vocab[w];
        for (size_t c = 0; word[c] != '\0' && i < n; c++, line++) {
            p[i++] = (uint8_t)word[c];
        }
        if (i < n) {
            p[i++] = line > 70 ? '\n' : ' ';
            line = line > 70 ? 0 : line + 1;
        }
    }
}

/* ------------------------------------------------------------------------ */
/* Raw AES-256-GCM through EVP: key and nonce set per buffer, context reused. */

static int aes_setup(struct bench *b)
{
    if (b->aes != NULL) {
        return 0;
    }
    b->aes = EVP_CIPHER_fetch(NULL, "AES-256-GCM", NULL);
    b->evp = EVP_CIPHER_CTX_new();
    if (b->aes == NULL || b->evp == NULL ||
        !EVP_CipherInit_ex2(b->evp, b->aes, NULL, NULL, 1, NULL)) {
        return err_openssl(&b->e, 0, "AES-256-GCM");
    }
    fill_random(b->aes_key, sizeof b->aes_key, 7);
    return 0;
}

static void nonce_of(uint64_t n, uint8_t iv[12])
{
    memset(iv, 0, 12);
    memcpy(iv, &n, sizeof n);
}

static int aes_gcm(struct bench *b, int enc, uint64_t nonce, const uint8_t *in, size_t len,
                   uint8_t *out, uint8_t tag[16])
{
    uint8_t iv[12];
    int outl = 0, finl = 0;
    nonce_of(nonce, iv);
    if (!EVP_CipherInit_ex2(b->evp, NULL, b->aes_key, iv, enc, NULL) ||
        !EVP_CipherUpdate(b->evp, out, &outl, in, (int)len)) {
        return err_openssl(&b->e, 0, "AES-256-GCM update");
    }
    if (enc) {
        if (!EVP_CipherFinal_ex(b->evp, out + outl, &finl) ||
            !EVP_CIPHER_CTX_ctrl(b->evp, EVP_CTRL_AEAD_GET_TAG, 16, tag)) {
            return err_openssl(&b->e, 0, "AES-256-GCM final");
        }
    } else if (!EVP_CIPHER_CTX_ctrl(b->evp, EVP_CTRL_AEAD_SET_TAG, 16, tag) ||
               EVP_CipherFinal_ex(b->evp, out + outl, &finl) <= 0) {
        return err_openssl(&b->e, 0, "AES-256-GCM tag check");
    }
    return 0;
}

/* ------------------------------------------------------------------------ */
/* Chunking: FastCDC over the stream vs a plain gear-hash loop over every byte. */

static int chunking_codec(struct bench *b, uint64_t *bytes)
{
    struct chunker c;
    if (chunker_init(&c, NULL, &b->e) != 0) {
        return fail(b, "chunker_init");
    }
    uint64_t count = 0;
    for (size_t off = 0; off < b->ws; off += READ_BLOCK) {
        const uint8_t *p = b->random + off;
        size_t len = b->ws - off < READ_BLOCK ? b->ws - off : READ_BLOCK;
        size_t used;
        uint64_t chunk_len;
        while (chunker_next(&c, p, len, &used, &chunk_len)) {
            count += chunk_len;
            p += used;
            len -= used;
        }
    }
    count += chunker_finish(&c);
    if (count != b->ws) {
        fprintf(stderr, "codec_bench: chunks cover %" PRIu64 " of %zu bytes\n", count, b->ws);
        return -1;
    }
    sink += count;
    *bytes = b->ws;
    return 0;
}

/*
 * The primitive under a content-defined chunker: H = 2H + G[byte] on every
 * byte, with a mask test for a cut. FastCDC skips most of each chunk's
 * minimum size, so it can beat this loop.
 */
static int chunking_raw(struct bench *b, uint64_t *bytes)
{
    const uint64_t mask = (1u << 20) - 1;
    uint64_t h = 0, cuts = 0;
    for (size_t i = 0; i < b->ws; i++) {
        h = (h << 1) + chunker_gear[b->random[i]];
        cuts += (h & mask) == 0;
    }
    sink += cuts;
    *bytes = b->ws;
    return 0;
}

/* ------------------------------------------------------------------------ */
/* Chunk ids: HMAC-SHA-256 vs SHA-256 on the chunks the chunker cut. */

static int ids_setup(struct bench *b, const struct row *r)
{
    (void)r;
    if (chunker_split(NULL, b->random, b->ws, &b->cuts, &b->ncuts, &b->e) != 0) {
        return fail(b, "chunker_split");
    }
    uint8_t key[32];
    fill_random(key, sizeof key, 3);
    if (crypto_hmac_new(&b->hmac, key, sizeof key, &b->e) != 0) {
        return fail(b, "crypto_hmac_new");
    }
    struct crypto_hmac *h = b->hmac;
    b->sha256 = EVP_MD_fetch(NULL, "SHA256", NULL);
    if (b->sha256 == NULL) {
        return err_openssl(&b->e, 0, "fetch SHA256"), fail(b, "SHA-256");
    }
    /* The HMAC of a chunk is its SHA-256 under a key: check it is no constant. */
    uint8_t a[32], c[32];
    if (crypto_hmac_compute(h, b->random, (size_t)b->cuts[0], a, &b->e) != 0 ||
        crypto_hmac_compute(h, b->random + 1, (size_t)b->cuts[0], c, &b->e) != 0) {
        return fail(b, "crypto_hmac_compute");
    }
    if (memcmp(a, c, 32) == 0) {
        fprintf(stderr, "codec_bench: HMAC of different chunks is equal\n");
        return -1;
    }
    return 0;
}

static void ids_teardown(struct bench *b)
{
    hbc_free(b->cuts);
    b->cuts = NULL;
    crypto_hmac_free(b->hmac);
    b->hmac = NULL;
    EVP_MD_free(b->sha256);
    b->sha256 = NULL;
}

static int ids_codec(struct bench *b, uint64_t *bytes)
{
    uint64_t start = 0;
    uint8_t id[32];
    for (size_t i = 0; i < b->ncuts; i++) {
        if (crypto_hmac_compute(b->hmac, b->random + start, (size_t)(b->cuts[i] - start), id,
                                &b->e) != 0) {
            return fail(b, "crypto_hmac_compute");
        }
        sink += id[0];
        start = b->cuts[i];
    }
    *bytes = start;
    return 0;
}

static int ids_raw(struct bench *b, uint64_t *bytes)
{
    uint64_t start = 0;
    uint8_t md[32];
    for (size_t i = 0; i < b->ncuts; i++) {
        if (!EVP_Digest(b->random + start, (size_t)(b->cuts[i] - start), md, NULL, b->sha256,
                        NULL)) {
            return err_openssl(&b->e, 0, "EVP_Digest"), fail(b, "SHA-256");
        }
        sink += md[0];
        start = b->cuts[i];
    }
    *bytes = start;
    return 0;
}

/* ------------------------------------------------------------------------ */
/* Seal and open: chunk objects vs raw AES-256-GCM, 1 MiB buffers over the working set. */

static int seal_all(struct bench *b, uint8_t *dst, size_t *lens, uint64_t *total)
{
    *total = 0;
    for (size_t i = 0; i < b->nbuf; i++) {
        size_t n;
        if (chunk_object_seal(b->cctx, &b->ckey, b->vault_id, b->chunk_id, b->plain + i * SEAL_BUF,
                              SEAL_BUF, dst + i * b->sealed_stride, b->sealed_stride, &n,
                              &b->e) != 0) {
            return fail(b, "chunk_object_seal");
        }
        if (lens != NULL) {
            lens[i] = n;
        }
        *total += n;
    }
    return 0;
}

static int seal_setup(struct bench *b, const struct row *r)
{
    b->plain = r->compressible ? b->text : b->random;
    b->nbuf = b->ws / SEAL_BUF;
    b->sealed_stride = chunk_object_max_sealed(SEAL_BUF);
    if (aes_setup(b) != 0) {
        return fail(b, "raw AES");
    }
    if (chunk_ctx_new(&b->cctx, &b->e) != 0) {
        return fail(b, "chunk_ctx_new");
    }
    if (chunk_key_init(&b->ckey, b->data_key, 1, &b->e) != 0) {
        return fail(b, "chunk_key_init");
    }
    b->out_cap = b->nbuf * b->sealed_stride;
    b->out = xalloc(b->out_cap);
    b->sealed = xalloc(b->out_cap);
    b->sealed_len = xalloc(b->nbuf * sizeof *b->sealed_len);
    b->rawct = xalloc(b->nbuf * SEAL_BUF);
    b->tags = xalloc(b->nbuf * sizeof *b->tags);

    /* Objects for the open rows, and the packing ratio of this data. */
    uint64_t total;
    if (seal_all(b, b->sealed, b->sealed_len, &total) != 0) {
        return -1;
    }
    b->packed = (double)total / (double)(b->nbuf * SEAL_BUF);
    for (size_t i = 0; i < b->nbuf; i++) {
        if (aes_gcm(b, 1, i, b->plain + i * SEAL_BUF, SEAL_BUF, b->rawct + i * SEAL_BUF,
                    b->tags[i]) != 0) {
            return fail(b, "raw AES-256-GCM encrypt");
        }
    }
    /* Both sides must give back the plaintext they were handed. */
    size_t n;
    if (chunk_object_open(b->cctx, &b->ckey, b->vault_id, b->chunk_id, b->sealed, b->sealed_len[0],
                          b->out, b->out_cap, &n, &b->e) != 0) {
        return fail(b, "chunk_object_open");
    }
    if (n != SEAL_BUF || memcmp(b->out, b->plain, SEAL_BUF) != 0) {
        fprintf(stderr, "codec_bench: opened object differs from its plaintext\n");
        return -1;
    }
    if (aes_gcm(b, 0, 0, b->rawct, SEAL_BUF, b->out, b->tags[0]) != 0 ||
        memcmp(b->out, b->plain, SEAL_BUF) != 0) {
        fprintf(stderr, "codec_bench: raw AES-GCM round trip failed\n");
        return -1;
    }
    return 0;
}

static void seal_teardown(struct bench *b)
{
    chunk_ctx_free(b->cctx);
    b->cctx = NULL;
    chunk_key_clear(&b->ckey);
    hbc_free(b->out);
    hbc_free(b->sealed);
    hbc_free(b->sealed_len);
    hbc_free(b->rawct);
    hbc_free(b->tags);
    b->out = b->sealed = b->rawct = NULL;
    b->sealed_len = NULL;
    b->tags = NULL;
}

static int seal_codec(struct bench *b, uint64_t *bytes)
{
    uint64_t total;
    if (seal_all(b, b->out, NULL, &total) != 0) {
        return -1;
    }
    sink += total;
    *bytes = b->nbuf * SEAL_BUF;
    return 0;
}

static int seal_raw(struct bench *b, uint64_t *bytes)
{
    uint8_t tag[16];
    for (size_t i = 0; i < b->nbuf; i++) {
        if (aes_gcm(b, 1, ++b->counter, b->plain + i * SEAL_BUF, SEAL_BUF,
                    b->out + i * b->sealed_stride, tag) != 0) {
            return fail(b, "raw AES-256-GCM encrypt");
        }
        sink += tag[0];
    }
    *bytes = b->nbuf * SEAL_BUF;
    return 0;
}

static int open_codec(struct bench *b, uint64_t *bytes)
{
    for (size_t i = 0; i < b->nbuf; i++) {
        size_t n;
        if (chunk_object_open(b->cctx, &b->ckey, b->vault_id, b->chunk_id,
                              b->sealed + i * b->sealed_stride, b->sealed_len[i],
                              b->out + i * SEAL_BUF, SEAL_BUF, &n, &b->e) != 0) {
            return fail(b, "chunk_object_open");
        }
    }
    *bytes = b->nbuf * SEAL_BUF;
    return 0;
}

static int open_raw(struct bench *b, uint64_t *bytes)
{
    for (size_t i = 0; i < b->nbuf; i++) {
        if (aes_gcm(b, 0, i, b->rawct + i * SEAL_BUF, SEAL_BUF, b->out + i * SEAL_BUF,
                    b->tags[i]) != 0) {
            return fail(b, "raw AES-256-GCM decrypt");
        }
    }
    *bytes = b->nbuf * SEAL_BUF;
    return 0;
}

/* ------------------------------------------------------------------------ */
/* Reed–Solomon: erasure_encode/erasure_decode vs ec_encode_data on the same shards. */

static int rs_setup(struct bench *b, const struct row *r)
{
    if (erasure_scheme_get(r->k, r->m, &b->scheme, &b->e) != 0) {
        return fail(b, "erasure_scheme_get");
    }
    unsigned k = r->k, m = r->m;
    b->nobj = b->ws / b->rs_object;
    b->shard_len = erasure_shard_length(k, b->rs_object);
    b->data_ptrs = xalloc(b->nobj * k * sizeof *b->data_ptrs);
    b->parity = xalloc(b->nobj * m * b->shard_len);
    b->raw_parity = xalloc(m * b->shard_len);
    b->out_cap = b->nobj * b->rs_object;
    b->out = xalloc(b->out_cap);

    /* The data shards are slices of each object; keep them and the parity. */
    for (size_t i = 0; i < b->nobj; i++) {
        if (erasure_encode(b->scheme, b->random + i * b->rs_object, b->rs_object, &b->stripe,
                           &b->e) != 0) {
            return fail(b, "erasure_encode");
        }
        for (unsigned s = 0; s < k; s++) {
            b->data_ptrs[i * k + s] = (uint8_t *)b->stripe.shards[s];
        }
        for (unsigned s = 0; s < m; s++) {
            memcpy(b->parity + (i * m + s) * b->shard_len, b->stripe.shards[k + s], b->shard_len);
        }
    }
    /* The raw side's parity must be ISA-L's own: compare one object. */
    uint8_t *parity[ERASURE_MAX_M];
    for (unsigned s = 0; s < m; s++) {
        parity[s] = b->raw_parity + s * b->shard_len;
    }
    ec_encode_data((int)b->shard_len, (int)k, (int)m, (uint8_t *)b->scheme->tables, b->data_ptrs,
                   parity);
    if (memcmp(b->raw_parity, b->parity, m * b->shard_len) != 0) {
        fprintf(stderr, "codec_bench: erasure_encode parity differs from ISA-L's\n");
        return -1;
    }

    /*
     * Raw decode tables for the worst case the rows measure: data shards
     * 0..m-1 lost, rebuilt from the next k shards in index order (the same
     * ones erasure_decode picks), as NOTES-deps.md describes.
     */
    uint8_t sub[ERASURE_MAX_K * ERASURE_MAX_K], inv[ERASURE_MAX_K * ERASURE_MAX_K];
    for (unsigned row = 0; row < k; row++) {
        memcpy(&sub[row * k], &b->scheme->matrix[(m + row) * k], k);
    }
    if (gf_invert_matrix(sub, inv, (int)k) != 0) {
        fprintf(stderr, "codec_bench: decode matrix is singular\n");
        return -1;
    }
    ec_init_tables((int)k, (int)m, inv, b->dec_tables);
    return 0;
}

static void rs_teardown(struct bench *b)
{
    hbc_free(b->data_ptrs);
    hbc_free(b->parity);
    hbc_free(b->raw_parity);
    hbc_free(b->out);
    b->data_ptrs = NULL;
    b->parity = b->raw_parity = b->out = NULL;
    erasure_stripe_release(&b->stripe);
}

static int rs_encode_codec(struct bench *b, uint64_t *bytes)
{
    for (size_t i = 0; i < b->nobj; i++) {
        if (erasure_encode(b->scheme, b->random + i * b->rs_object, b->rs_object, &b->stripe,
                           &b->e) != 0) {
            return fail(b, "erasure_encode");
        }
        sink += b->stripe.shards[b->scheme->k][0];
    }
    *bytes = b->nobj * b->rs_object;
    return 0;
}

static int rs_encode_raw(struct bench *b, uint64_t *bytes)
{
    unsigned k = b->scheme->k, m = b->scheme->m;
    uint8_t *parity[ERASURE_MAX_M];
    for (unsigned s = 0; s < m; s++) {
        parity[s] = b->raw_parity + s * b->shard_len;
    }
    for (size_t i = 0; i < b->nobj; i++) {
        ec_encode_data((int)b->shard_len, (int)k, (int)m, (uint8_t *)b->scheme->tables,
                       &b->data_ptrs[i * k], parity);
        sink += parity[0][0];
    }
    *bytes = b->nobj * b->rs_object;
    return 0;
}

/* The k+m shards of object i with data shards 0..m-1 lost. */
static void rs_lost_view(struct bench *b, size_t i, const uint8_t **shards)
{
    unsigned k = b->scheme->k, m = b->scheme->m;
    for (unsigned s = 0; s < k; s++) {
        shards[s] = s < m ? NULL : b->data_ptrs[i * k + s];
    }
    for (unsigned s = 0; s < m; s++) {
        shards[k + s] = b->parity + (i * m + s) * b->shard_len;
    }
}

static int rs_decode_codec(struct bench *b, uint64_t *bytes)
{
    const uint8_t *shards[ERASURE_MAX_SHARDS];
    for (size_t i = 0; i < b->nobj; i++) {
        rs_lost_view(b, i, shards);
        if (erasure_decode(b->scheme, b->rs_object, shards, b->out + i * b->rs_object, &b->e) !=
            0) {
            return fail(b, "erasure_decode");
        }
    }
    *bytes = b->nobj * b->rs_object;
    return 0;
}

/* ISA-L alone: rebuild the m lost data shards into their place in the output. */
static int rs_decode_raw(struct bench *b, uint64_t *bytes)
{
    unsigned k = b->scheme->k, m = b->scheme->m;
    const uint8_t *shards[ERASURE_MAX_SHARDS];
    uint8_t *src[ERASURE_MAX_K], *dst[ERASURE_MAX_M];
    for (size_t i = 0; i < b->nobj; i++) {
        rs_lost_view(b, i, shards);
        for (unsigned s = 0; s < k; s++) {
            src[s] = (uint8_t *)shards[m + s];
        }
        for (unsigned s = 0; s < m; s++) {
            dst[s] = b->out + i * b->rs_object + s * b->shard_len;
        }
        ec_encode_data((int)b->shard_len, (int)k, (int)m, b->dec_tables, src, dst);
    }
    *bytes = b->nobj * b->rs_object;
    return 0;
}

/* After one untimed pass of each side: both rebuilt the objects. */
static int rs_decode_check(struct bench *b)
{
    size_t i = b->nobj - 1;
    if (memcmp(b->out, b->random, b->rs_object) != 0 ||
        memcmp(b->out + i * b->rs_object, b->random + i * b->rs_object, b->rs_object) != 0) {
        fprintf(stderr, "codec_bench: decoded object differs from the original\n");
        return -1;
    }
    return 0;
}

/* ------------------------------------------------------------------------ */

static const struct row rows[] = {
    {"chunking (FastCDC 256K/1M/4M)", "gear hash, every byte", 0, 0, 0, false, NULL, chunking_codec,
     chunking_raw, NULL},
    {"chunk ids (HMAC-SHA-256)", "SHA-256 (EVP_Digest)", 0, 0, 0, false, ids_setup, ids_codec,
     ids_raw, ids_teardown},
    {"seal, incompressible", "AES-256-GCM encrypt", 0.80, 0, 0, false, seal_setup, seal_codec,
     seal_raw, seal_teardown},
    {"open, incompressible", "AES-256-GCM decrypt", 0.80, 0, 0, false, seal_setup, open_codec,
     open_raw, seal_teardown},
    {"seal, compressible", "AES-256-GCM encrypt", 0, 0, 0, true, seal_setup, seal_codec, seal_raw,
     seal_teardown},
    {"open, compressible", "AES-256-GCM decrypt", 0, 0, 0, true, seal_setup, open_codec, open_raw,
     seal_teardown},
    {"RS(4,2) encode", "ec_encode_data", 0.90, 4, 2, false, rs_setup, rs_encode_codec,
     rs_encode_raw, rs_teardown},
    {"RS(4,2) decode, 2 data lost", "ec_encode_data (lost)", 0, 4, 2, false, rs_setup,
     rs_decode_codec, rs_decode_raw, rs_teardown},
    {"RS(8,3) encode", "ec_encode_data", 0.90, 8, 3, false, rs_setup, rs_encode_codec,
     rs_encode_raw, rs_teardown},
    {"RS(8,3) decode, 3 data lost", "ec_encode_data (lost)", 0, 8, 3, false, rs_setup,
     rs_decode_codec, rs_decode_raw, rs_teardown},
};

#define NROWS (sizeof rows / sizeof rows[0])

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double median(const double *v, unsigned n)
{
    double s[MAX_ROUNDS];
    memcpy(s, v, n * sizeof *v);
    qsort(s, n, sizeof *s, cmp_double);
    return n % 2 ? s[n / 2] : (s[n / 2 - 1] + s[n / 2]) / 2;
}

/* One run: passes until min_time of CPU time has gone by. */
static int timed_run(struct bench *b, pass_fn fn, double *mbps)
{
    uint64_t total = 0;
    double t0 = cpu_now(), t;
    do {
        uint64_t n = 0;
        if (fn(b, &n) != 0) {
            return -1;
        }
        total += n;
        t = cpu_now() - t0;
    } while (t < b->min_time);
    *mbps = (double)total / (t > 0 ? t : 1e-9) / 1e6;
    return 0;
}

/* Set up a row, check both sides' output, then time the rounds. */
static int run_row(struct bench *b, const struct row *r, struct result *res)
{
    memset(res, 0, sizeof *res);
    b->packed = 0;
    int rc = r->setup != NULL ? r->setup(b, r) : 0;
    if (rc != 0) {
        goto done;
    }
    /* Warm-up: fault the pages in, build lazy tables, and check the output. */
    uint64_t n;
    rc = r->codec(b, &n) != 0 || r->raw(b, &n) != 0 ? -1 : 0;
    if (rc == 0 && r->codec == rs_decode_codec) {
        /* The raw side rebuilt the lost shards over the codec's objects; now the codec alone. */
        rc = rs_decode_check(b);
        memset(b->out, 0, b->out_cap);
        rc = rc != 0 || r->codec(b, &n) != 0 || rs_decode_check(b) != 0 ? -1 : 0;
    }
    for (unsigned i = 0; rc == 0 && i < b->rounds; i++) {
        bool codec_first = i % 2 == 0;
        if (timed_run(b, codec_first ? r->codec : r->raw,
                      codec_first ? &res->codec[i] : &res->raw[i]) != 0 ||
            timed_run(b, codec_first ? r->raw : r->codec,
                      codec_first ? &res->raw[i] : &res->codec[i]) != 0) {
            rc = -1;
            break;
        }
        res->ratio[i] = res->codec[i] / res->raw[i];
    }
    if (rc == 0) {
        res->codec_median = median(res->codec, b->rounds);
        res->raw_median = median(res->raw, b->rounds);
        res->ratio_median = median(res->ratio, b->rounds);
        res->ratio_min = res->ratio_max = res->ratio[0];
        for (unsigned i = 1; i < b->rounds; i++) {
            res->ratio_min = res->ratio[i] < res->ratio_min ? res->ratio[i] : res->ratio_min;
            res->ratio_max = res->ratio[i] > res->ratio_max ? res->ratio[i] : res->ratio_max;
        }
        res->packed = b->packed;
    }
done:
    if (r->teardown != NULL) {
        r->teardown(b);
    }
    return rc;
}

/* ------------------------------------------------------------------------ */
/* Output */

static void cpu_model(char *buf, size_t cap)
{
    snprintf(buf, cap, "unknown");
    FILE *f = fopen("/proc/cpuinfo", "r");
    if (f == NULL) {
        return;
    }
    char line[512];
    while (fgets(line, sizeof line, f) != NULL) {
        if (strncmp(line, "model name", 10) == 0) {
            const char *v = strchr(line, ':');
            if (v != NULL) {
                v += 1 + (v[1] == ' ');
                snprintf(buf, cap, "%.*s", (int)strcspn(v, "\n"), v);
            }
            break;
        }
    }
    fclose(f);
}

static void cache_size(char *buf, size_t cap)
{
    snprintf(buf, cap, "unknown");
    FILE *f = fopen("/sys/devices/system/cpu/cpu0/cache/index3/size", "r");
    if (f == NULL) {
        return;
    }
    if (fgets(buf, (int)cap, f) != NULL) {
        buf[strcspn(buf, "\n")] = '\0';
    }
    fclose(f);
}

static const char *build_kind(void)
{
#if defined(__SANITIZE_ADDRESS__)
    return "sanitized (figures meaningless)";
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
    return "sanitized (figures meaningless)";
#endif
#endif
#ifdef __OPTIMIZE__
    return "optimized";
#else
    return "not optimized (figures meaningless)";
#endif
}

static const char *verdict(const struct row *r, const struct result *res)
{
    if (r->target <= 0) {
        return "";
    }
    return res->ratio_median >= r->target ? "PASS" : "BELOW";
}

static void print_header(const struct bench *b)
{
    char cpu[256], l3[64];
    cpu_model(cpu, sizeof cpu);
    cache_size(l3, sizeof l3);
    printf("codec_bench: HBC codecs beside the raw primitives under them, one thread\n");
    printf("machine:  %s, %ld cores online, L3 %s; %s; ISA-L %d.%d; %s build\n", cpu,
           sysconf(_SC_NPROCESSORS_ONLN), l3, OpenSSL_version(OPENSSL_VERSION), ISAL_MAJOR_VERSION,
           ISAL_MINOR_VERSION, build_kind());
    printf("method:   %zu MiB working set per row (incompressible: fixed-seed PRNG;"
           " compressible: word salad);\n",
           b->ws / MIB);
    printf("          %u rounds, codec and primitive alternating (AB, BA, ...), each run >= %.2f s"
           " of thread CPU time;\n",
           b->rounds, b->min_time);
    printf("          medians of MB/s per core (10^6 bytes of plaintext/object per CPU second);"
           " ratio = median of per-round codec/raw\n");
    printf("buffers:  chunking: one stream fed in 1 MiB reads; chunk ids: the chunks FastCDC cut;"
           "\n          seal/open: 1 MiB plaintexts cycled through the working set, raw AES-GCM"
           " re-keyed per buffer;\n          RS: objects of %zu bytes (a sealed 1 MiB chunk), "
           "parity into one"
           " reused stripe; decode rebuilds the first m data shards\n",
           b->rs_object);
    if (b->quick) {
        printf("          --quick: a smoke run, the figures mean little\n");
    }
    printf("\n%-30s %9s   %-22s %9s  %5s %11s  %s\n", "row", "MB/s", "raw primitive", "MB/s",
           "ratio", "range", "target");
}

static void print_row(const struct row *r, const struct result *res)
{
    char target[32] = "";
    if (r->target > 0) {
        snprintf(target, sizeof target, ">= %.2f %s", r->target, verdict(r, res));
    } else if (res->packed > 0) {
        snprintf(target, sizeof target, "(sealed %.0f%%)", res->packed * 100);
    }
    printf("%-30s %9.0f   %-22s %9.0f  %5.2f %5.2f-%4.2f  %s\n", r->name, res->codec_median,
           r->raw_name, res->raw_median, res->ratio_median, res->ratio_min, res->ratio_max, target);
    fflush(stdout);
}

static json_t *json_rounds(const double *v, unsigned n)
{
    json_t *a = json_array();
    for (unsigned i = 0; i < n; i++) {
        json_array_append_new(a, json_real(v[i]));
    }
    return a;
}

static json_t *json_row(const struct bench *b, const struct row *r, const struct result *res)
{
    json_t *o = json_object();
    json_object_set_new(o, "name", json_string(r->name));
    json_object_set_new(o, "mbps", json_real(res->codec_median));
    json_object_set_new(o, "raw_name", json_string(r->raw_name));
    json_object_set_new(o, "raw_mbps", json_real(res->raw_median));
    json_object_set_new(o, "ratio", json_real(res->ratio_median));
    json_object_set_new(o, "ratio_min", json_real(res->ratio_min));
    json_object_set_new(o, "ratio_max", json_real(res->ratio_max));
    json_object_set_new(o, "target", r->target > 0 ? json_real(r->target) : json_null());
    json_object_set_new(o, "verdict", r->target > 0 ? json_string(verdict(r, res)) : json_null());
    if (res->packed > 0) {
        json_object_set_new(o, "sealed_ratio", json_real(res->packed));
    }
    json_object_set_new(o, "mbps_rounds", json_rounds(res->codec, b->rounds));
    json_object_set_new(o, "raw_mbps_rounds", json_rounds(res->raw, b->rounds));
    return o;
}

static json_t *json_header(const struct bench *b)
{
    char cpu[256], l3[64];
    cpu_model(cpu, sizeof cpu);
    cache_size(l3, sizeof l3);
    json_t *o = json_object();
    json_object_set_new(o, "cpu", json_string(cpu));
    json_object_set_new(o, "cores", json_integer(sysconf(_SC_NPROCESSORS_ONLN)));
    json_object_set_new(o, "l3", json_string(l3));
    json_object_set_new(o, "openssl", json_string(OpenSSL_version(OPENSSL_VERSION)));
    json_object_set_new(o, "build", json_string(build_kind()));
    json_object_set_new(o, "quick", json_boolean(b->quick));
    json_object_set_new(o, "working_set_bytes", json_integer((json_int_t)b->ws));
    json_object_set_new(o, "rounds", json_integer(b->rounds));
    json_object_set_new(o, "rs_object_bytes", json_integer((json_int_t)b->rs_object));
    json_object_set_new(o, "min_time_s", json_real(b->min_time));
    json_object_set_new(o, "unit", json_string("MB/s = 10^6 bytes per second of thread CPU time"));
    json_object_set_new(o, "ratio",
                        json_string("median over rounds of codec/raw, runs alternating AB, BA"));
    return o;
}

/* The length of a sealed 1 MiB chunk of incompressible data: the size of the RS rows' objects. */
static int sealed_chunk_size(struct bench *b)
{
    size_t cap = chunk_object_max_sealed(SEAL_BUF);
    uint8_t *obj = xalloc(cap);
    struct chunk_ctx *c = NULL;
    struct chunk_key k;
    int rc = chunk_ctx_new(&c, &b->e);
    if (rc == 0) {
        rc = chunk_key_init(&k, b->data_key, 1, &b->e);
    }
    if (rc == 0) {
        rc = chunk_object_seal(c, &k, b->vault_id, b->chunk_id, b->random, SEAL_BUF, obj, cap,
                               &b->rs_object, &b->e);
        chunk_key_clear(&k);
    }
    chunk_ctx_free(c);
    hbc_free(obj);
    return rc != 0 ? fail(b, "sealing a 1 MiB chunk") : 0;
}

static void usage(FILE *f)
{
    fprintf(f,
            "usage: codec_bench [--quick] [--json] [--rounds N] [--working-set MIB]\n"
            "  --quick            short runs on an 8 MiB working set (a smoke test)\n"
            "  --json             print one JSON object instead of the table\n"
            "  --rounds N         timed rounds per row (default %d, at most %d)\n"
            "  --working-set MIB  bytes of data per row (default %u)\n",
            DEFAULT_ROUNDS, MAX_ROUNDS, DEFAULT_WORKING_SET);
}

int main(int argc, char **argv)
{
    static struct bench b;
    b.rounds = DEFAULT_ROUNDS;
    b.min_time = DEFAULT_MIN_TIME;
    size_t ws_mib = DEFAULT_WORKING_SET;
    bool rounds_set = false, ws_set = false;
    static const struct option longopts[] = {
        {"quick", no_argument, NULL, 'q'},        {"json", no_argument, NULL, 'j'},
        {"rounds", required_argument, NULL, 'r'}, {"working-set", required_argument, NULL, 'w'},
        {"help", no_argument, NULL, 'h'},         {NULL, 0, NULL, 0},
    };
    int c;
    while ((c = getopt_long(argc, argv, "qjr:w:h", longopts, NULL)) != -1) {
        char *end;
        switch (c) {
        case 'q':
            b.quick = true;
            break;
        case 'j':
            b.json = true;
            break;
        case 'r':
            b.rounds = (unsigned)strtoul(optarg, &end, 10);
            if (*end != '\0' || b.rounds < 1 || b.rounds > MAX_ROUNDS) {
                usage(stderr);
                return 2;
            }
            rounds_set = true;
            break;
        case 'w':
            ws_mib = strtoul(optarg, &end, 10);
            if (*end != '\0' || ws_mib < 8 || ws_mib > 4096) {
                fprintf(stderr, "codec_bench: --working-set takes 8..4096 (MiB)\n");
                return 2;
            }
            ws_set = true;
            break;
        case 'h':
            usage(stdout);
            return 0;
        default:
            usage(stderr);
            return 2;
        }
    }
    if (optind != argc) {
        usage(stderr);
        return 2;
    }
    if (b.quick) {
        b.min_time = 0;
        b.rounds = rounds_set ? b.rounds : 3;
        ws_mib = ws_set ? ws_mib : 8;
    }
    b.ws = ws_mib * MIB;
    b.random = xalloc(b.ws);
    b.text = xalloc(b.ws);
    fill_random(b.random, b.ws, 1);
    fill_text(b.text, b.ws, 2);
    memset(b.vault_id, 0x5a, sizeof b.vault_id);
    memset(b.chunk_id, 0xa5, sizeof b.chunk_id);
    fill_random(b.data_key, sizeof b.data_key, 11);
    if (sealed_chunk_size(&b) != 0) {
        return 1;
    }

    json_t *root = NULL, *jrows = NULL;
    if (b.json) {
        root = json_object();
        jrows = json_array();
        json_object_set_new(root, "header", json_header(&b));
    } else {
        print_header(&b);
    }
    int rc = 0;
    static struct result res;
    for (size_t i = 0; i < NROWS; i++) {
        if (run_row(&b, &rows[i], &res) != 0) {
            fprintf(stderr, "codec_bench: row '%s' failed\n", rows[i].name);
            rc = 1;
            break;
        }
        if (b.json) {
            json_array_append_new(jrows, json_row(&b, &rows[i], &res));
        } else {
            print_row(&rows[i], &res);
        }
    }
    if (b.json) {
        json_object_set_new(root, "rows", jrows);
        if (rc == 0) {
            json_dumpf(root, stdout, JSON_INDENT(2) | JSON_REAL_PRECISION(6));
            printf("\n");
        }
        json_decref(root);
    }
    EVP_CIPHER_CTX_free(b.evp);
    EVP_CIPHER_free(b.aes);
    hbc_free(b.random);
    hbc_free(b.text);
    return rc;
}
