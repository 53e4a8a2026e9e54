/* Unit tests for common/chunk_object: round trips, and every damaged or forged object refused with
 * its own code. */
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <isa-l.h>
#include <zstd.h>

#include "common/alloc.h"
#include "common/chunk_object.h"
#include "common/crypto.h"
#include "hbc.pb-c.h"

#define MIB ((size_t)1 << 20)

struct fixture {
    struct chunk_ctx *ctx;                       /* this thread's working state */
    struct chunk_key key;                        /* generation 1 */
    uint8_t data_key[CRYPTO_KEY_LEN];            /* the vault data key behind key */
    struct crypto_hmac *ids;                     /* keyed with the chunk-id key */
    uint8_t vault_id[CHUNK_OBJECT_VAULT_ID_LEN]; /* random vault id */
};

static int setup(void **state)
{
    struct fixture *f = calloc(1, sizeof *f);
    assert_non_null(f);
    uint8_t id_key[CRYPTO_KEY_LEN];
    assert_int_equal(crypto_random(f->data_key, sizeof f->data_key, NULL), 0);
    assert_int_equal(crypto_random(id_key, sizeof id_key, NULL), 0);
    assert_int_equal(crypto_random(f->vault_id, sizeof f->vault_id, NULL), 0);
    assert_int_equal(chunk_ctx_new(&f->ctx, NULL), 0);
    assert_int_equal(chunk_key_init(&f->key, f->data_key, 1, NULL), 0);
    assert_int_equal(crypto_hmac_new(&f->ids, id_key, sizeof id_key, NULL), 0);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    struct fixture *f = *state;
    chunk_ctx_free(f->ctx);
    chunk_key_clear(&f->key);
    crypto_hmac_free(f->ids);
    free(f);
    return 0;
}

/* len bytes of random data. */
static uint8_t *random_data(size_t len)
{
    uint8_t *p = malloc(len + 1);
    assert_non_null(p);
    assert_int_equal(crypto_random(p, len, NULL), 0);
    return p;
}

/* len bytes of text-like data (words from a small vocabulary) that zstd shrinks well. */
static uint8_t *text_data(size_t len)
{
    static const char *words[] = {"patient ",  "record ", "2024-01-17 ", "INFO ",
                                  "admitted ", "ward ",   "12 ",         "radiology ",
                                  "normal ",   "\n",      "id=",         "sodium "};
    uint8_t *p = malloc(len + 1);
    assert_non_null(p);
    uint32_t s = 12345;
    size_t n = 0;
    while (n < len) {
        s = s * 1103515245u + 12345u;
        const char *w = words[(s >> 16) % 12];
        size_t l = strlen(w);
        if (l > len - n) {
            l = len - n;
        }
        memcpy(p + n, w, l);
        n += l;
    }
    return p;
}

/* Seal plain under f's key; the chunk id is its HMAC. Returns the object (malloc'ed). */
static uint8_t *seal(struct fixture *f, const uint8_t *plain, size_t len, uint8_t id[32],
                     size_t *obj_len)
{
    assert_int_equal(crypto_hmac_compute(f->ids, plain, len, id, NULL), 0);
    size_t cap = chunk_object_max_sealed(len);
    uint8_t *obj = malloc(cap);
    assert_non_null(obj);
    struct err e;
    err_clear(&e);
    int rc = chunk_object_seal(f->ctx, &f->key, f->vault_id, id, plain, len, obj, cap, obj_len, &e);
    if (rc != 0) {
        fail_msg("seal: %s", e.msg);
    }
    assert_true(*obj_len <= cap);
    return obj;
}

/* Open obj with f's key; return the code, and check that e carries a message on failure. */
static int open_obj(struct fixture *f, const uint8_t *obj, size_t len, const uint8_t id[32],
                    uint8_t *out, size_t out_cap, size_t *out_len, struct err *e)
{
    err_clear(e);
    int rc =
        chunk_object_open(f->ctx, &f->key, f->vault_id, id, obj, len, out, out_cap, out_len, e);
    if (rc != 0) {
        assert_int_equal(e->code, rc);
        assert_true(strlen(e->msg) > 10);
    }
    return rc;
}

/* ---- Round trips ---------------------------------------------------------- */

static void round_trip(struct fixture *f, const uint8_t *plain, size_t len, int compressible)
{
    uint8_t id[32];
    size_t obj_len;
    uint8_t *obj = seal(f, plain, len, id, &obj_len);
    struct chunk_object_info info;
    assert_int_equal(chunk_object_peek(obj, obj_len, &info, NULL), 0);
    assert_int_equal(info.key_generation, 1);
    assert_int_equal(info.plaintext_length, len);
    assert_int_equal(info.object_length, obj_len);
    if (info.compression == CHUNK_COMPRESSION_ZSTD) {
        assert_true(info.packed_length < len); /* zstd is kept only when it saves space */
    } else {
        assert_int_equal(info.packed_length, len);
    }
    if (compressible && len >= 4096) {
        assert_int_equal(info.compression, CHUNK_COMPRESSION_ZSTD);
        assert_true(info.packed_length < len / 2);
    }
    if (!compressible) {
        assert_int_equal(info.compression, CHUNK_COMPRESSION_NONE);
    }
    uint8_t *out = malloc(len + 1);
    size_t out_len = 0;
    struct err e;
    assert_int_equal(open_obj(f, obj, obj_len, id, out, len, &out_len, &e), 0);
    assert_int_equal(out_len, len);
    assert_memory_equal(out, plain, len);
    assert_int_equal(chunk_object_verify_id(f->ids, out, out_len, id, NULL), 0);
    free(out);
    free(obj);
}

static void test_round_trip_sizes(void **state)
{
    struct fixture *f = *state;
    static const size_t sizes[] = {0,
                                   1,
                                   31,
                                   32,
                                   33,
                                   1001,
                                   4097,
                                   65535,
                                   65536,
                                   65537,
                                   1 * MIB,
                                   4 * MIB,
                                   CHUNK_OBJECT_MAX_PLAINTEXT};
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
        uint8_t *r = random_data(sizes[i]);
        uint8_t *t = text_data(sizes[i]);
        round_trip(f, r, sizes[i], 0);
        round_trip(f, t, sizes[i], 1);
        free(r);
        free(t);
    }
}

static void test_compressible_tail_only_stays_uncompressed_or_smaller(void **state)
{
    struct fixture *f = *state;
    /* A random first 64 KiB hides a compressible rest: stored as is (the sample decides). */
    uint8_t *p = text_data(MIB);
    assert_int_equal(crypto_random(p, CHUNK_OBJECT_SAMPLE_LEN, NULL), 0);
    round_trip(f, p, MIB, 0);
    /* A compressible first 64 KiB before random data: compression is tried and kept only if
     * smaller. */
    uint8_t *q = random_data(MIB);
    uint8_t *t = text_data(CHUNK_OBJECT_SAMPLE_LEN);
    memcpy(q, t, CHUNK_OBJECT_SAMPLE_LEN);
    uint8_t id[32];
    size_t obj_len;
    uint8_t *obj = seal(f, q, MIB, id, &obj_len);
    struct chunk_object_info info;
    assert_int_equal(chunk_object_peek(obj, obj_len, &info, NULL), 0);
    assert_int_equal(info.compression, CHUNK_COMPRESSION_ZSTD);
    assert_true(info.packed_length < MIB);
    free(obj);
    free(t);
    free(q);
    free(p);
}

/* Nonce bytes of a sealed object (after prefix, header and CRC). */
static const uint8_t *nonce_of(const uint8_t *obj)
{
    size_t hl = ((size_t)obj[5] << 8) | obj[6];
    return obj + 11 + hl;
}

/*
 * Two clients sealing the same new chunk at once must produce the same
 * object, or a stripe could hold shards of two encryptions; other chunks,
 * vaults or keys must get other nonces. Both payload kinds: stored as is and
 * zstd-packed.
 */
static void test_seal_is_deterministic(void **state)
{
    struct fixture *f = *state;
    uint8_t *random = random_data(1000);
    uint8_t *text = malloc(200000);
    assert_non_null(text);
    for (size_t i = 0; i < 200000; i++) {
        text[i] = (uint8_t)("MSH|^~\\&|LAB|HOSP|PID|1||12345^^^MRN||DOE^JANE\r"[i % 45]);
    }
    const uint8_t *plains[2] = {random, text};
    size_t lens[2] = {1000, 200000};
    for (int k = 0; k < 2; k++) {
        uint8_t id[32];
        size_t l1, l2;
        uint8_t *a = seal(f, plains[k], lens[k], id, &l1);
        uint8_t *b = seal(f, plains[k], lens[k], id, &l2);
        assert_int_equal(l1, l2);
        assert_memory_equal(a, b, l1);
        struct chunk_object_info info;
        assert_int_equal(chunk_object_peek(a, l1, &info, NULL), 0);
        assert_int_equal(info.compression,
                         k == 0 ? CHUNK_COMPRESSION_NONE : CHUNK_COMPRESSION_ZSTD);

        /* Another vault: another nonce, and the object still opens only there. */
        uint8_t other_vault[CHUNK_OBJECT_VAULT_ID_LEN];
        memcpy(other_vault, f->vault_id, sizeof other_vault);
        other_vault[0] ^= 1;
        size_t cap = chunk_object_max_sealed(lens[k]), l3;
        uint8_t *c = malloc(cap);
        assert_non_null(c);
        assert_int_equal(chunk_object_seal(f->ctx, &f->key, other_vault, id, plains[k], lens[k], c,
                                           cap, &l3, NULL),
                         0);
        assert_memory_not_equal(nonce_of(a), nonce_of(c), 12);

        /* Another key (generation 2 of another data key): another nonce. */
        uint8_t dk[CRYPTO_KEY_LEN];
        assert_int_equal(crypto_random(dk, sizeof dk, NULL), 0);
        struct chunk_key k2;
        assert_int_equal(chunk_key_init(&k2, dk, 2, NULL), 0);
        assert_int_equal(
            chunk_object_seal(f->ctx, &k2, f->vault_id, id, plains[k], lens[k], c, cap, &l3, NULL),
            0);
        assert_memory_not_equal(nonce_of(a), nonce_of(c), 12);
        chunk_key_clear(&k2);
        free(c);
        free(a);
        free(b);
    }
    /* Another chunk: another nonce. */
    uint8_t id1[32], id2[32];
    size_t l1, l2;
    uint8_t *a = seal(f, random, 1000, id1, &l1);
    random[0] ^= 1;
    uint8_t *b = seal(f, random, 1000, id2, &l2);
    assert_memory_not_equal(nonce_of(a), nonce_of(b), 12);
    free(a);
    free(b);
    free(text);
    free(random);
}

/* ---- Keys, ids and vaults ------------------------------------------------- */

static void test_wrong_key_and_generation(void **state)
{
    struct fixture *f = *state;
    uint8_t *p = random_data(5000);
    uint8_t id[32];
    size_t obj_len, out_len;
    uint8_t *obj = seal(f, p, 5000, id, &obj_len);
    uint8_t out[5000];
    struct err e;

    uint8_t other[CRYPTO_KEY_LEN];
    assert_int_equal(crypto_random(other, sizeof other, NULL), 0);
    struct chunk_key wrong;
    assert_int_equal(chunk_key_init(&wrong, other, 1, NULL), 0);
    err_clear(&e);
    assert_int_equal(chunk_object_open(f->ctx, &wrong, f->vault_id, id, obj, obj_len, out,
                                       sizeof out, &out_len, &e),
                     HBC_EWRONGKEY);
    assert_non_null(strstr(e.msg, "key check"));

    struct chunk_key gen2;
    assert_int_equal(chunk_key_init(&gen2, f->data_key, 2, NULL), 0);
    err_clear(&e);
    assert_int_equal(chunk_object_open(f->ctx, &gen2, f->vault_id, id, obj, obj_len, out,
                                       sizeof out, &out_len, &e),
                     HBC_EWRONGKEY);
    assert_non_null(strstr(e.msg, "generation 1"));
    assert_non_null(strstr(e.msg, "generation 2"));
    chunk_key_clear(&wrong);
    chunk_key_clear(&gen2);
    free(obj);
    free(p);
}

static void test_wrong_vault_or_chunk_id(void **state)
{
    struct fixture *f = *state;
    uint8_t *p = text_data(100000);
    uint8_t id[32];
    size_t obj_len, out_len;
    uint8_t *obj = seal(f, p, 100000, id, &obj_len);
    uint8_t *out = malloc(100000);
    struct err e;

    uint8_t other_id[32];
    memcpy(other_id, id, sizeof id);
    other_id[31] ^= 1;
    memset(out, 0x55, 100000);
    assert_int_equal(open_obj(f, obj, obj_len, other_id, out, 100000, &out_len, &e), HBC_EAUTH);
    uint8_t vault[CHUNK_OBJECT_VAULT_ID_LEN];
    memcpy(vault, f->vault_id, sizeof vault);
    f->vault_id[0] ^= 0x80;
    assert_int_equal(open_obj(f, obj, obj_len, id, out, 100000, &out_len, &e), HBC_EAUTH);
    memcpy(f->vault_id, vault, sizeof vault);
    assert_int_equal(open_obj(f, obj, obj_len, id, out, 100000, &out_len, &e), 0);

    /* A plaintext whose HMAC is not the chunk id is told apart. */
    err_clear(&e);
    assert_int_equal(chunk_object_verify_id(f->ids, out, out_len, other_id, &e), HBC_ECHUNKID);
    assert_true(e.msg[0] != '\0');
    free(out);
    free(obj);
    free(p);
}

static void test_no_unauthenticated_plaintext_left(void **state)
{
    struct fixture *f = *state;
    uint8_t *p = random_data(3000);
    uint8_t id[32];
    size_t obj_len, out_len;
    uint8_t *obj = seal(f, p, 3000, id, &obj_len);
    obj[obj_len - 1] ^= 1; /* the tag */
    uint8_t out[3000];
    struct err e;
    assert_int_equal(open_obj(f, obj, obj_len, id, out, sizeof out, &out_len, &e), HBC_EAUTH);
    for (size_t i = 0; i < sizeof out; i++) {
        assert_int_equal(out[i], 0);
    }
    free(obj);
    free(p);
}

/* ---- Damage --------------------------------------------------------------- */

/* The code a damaged byte at offset i must give, for an object with an H-byte header. */
static void check_flip_code(int rc, size_t i, size_t hl)
{
    if (i < 4) {
        assert_int_equal(rc, HBC_EFORMAT);
    } else if (i == 4) {
        assert_int_equal(rc, HBC_EVERSION);
    } else if (i < CHUNK_OBJECT_PREFIX_LEN) {
        /* A changed header length moves the CRC: too big, too short, or a mismatch. */
        assert_true(rc == HBC_ETOOBIG || rc == HBC_ETRUNCATED || rc == HBC_ECORRUPT ||
                    rc == HBC_EFORMAT);
    } else if (i < CHUNK_OBJECT_PREFIX_LEN + hl + CHUNK_OBJECT_CRC_LEN) {
        assert_int_equal(rc, HBC_ECORRUPT);
    } else {
        assert_int_equal(rc, HBC_EAUTH);
    }
}

static size_t header_len_of(const uint8_t *obj)
{
    return (size_t)obj[5] << 8 | obj[6];
}

static void test_bit_flip_every_byte_small(void **state)
{
    struct fixture *f = *state;
    uint8_t *plains[2] = {random_data(200), text_data(600)};
    size_t lens[2] = {200, 600};
    for (int k = 0; k < 2; k++) {
        uint8_t id[32];
        size_t obj_len, out_len;
        uint8_t *obj = seal(f, plains[k], lens[k], id, &obj_len);
        size_t hl = header_len_of(obj);
        uint8_t out[600];
        struct err e;
        for (size_t i = 0; i < obj_len; i++) {
            for (int bit = 0; bit < 8; bit++) {
                obj[i] ^= (uint8_t)(1u << bit);
                int rc = open_obj(f, obj, obj_len, id, out, sizeof out, &out_len, &e);
                obj[i] ^= (uint8_t)(1u << bit);
                check_flip_code(rc, i, hl);
            }
        }
        assert_int_equal(open_obj(f, obj, obj_len, id, out, sizeof out, &out_len, &e), 0);
        free(obj);
        free(plains[k]);
    }
}

static void test_bit_flip_sampled_large(void **state)
{
    struct fixture *f = *state;
    uint8_t *plains[2] = {random_data(MIB), text_data(MIB)};
    uint8_t *out = malloc(MIB);
    for (int k = 0; k < 2; k++) {
        uint8_t id[32];
        size_t obj_len, out_len;
        uint8_t *obj = seal(f, plains[k], MIB, id, &obj_len);
        size_t hl = header_len_of(obj);
        struct err e;
        uint32_t s = 99;
        for (int n = 0; n < 300; n++) {
            size_t i;
            if (n < 100) {
                i = (size_t)n; /* all of the framing, header, CRC and nonce, and some payload */
            } else if (n < 120) {
                i = obj_len - 1 - (size_t)(n - 100); /* the tag and the payload's end */
            } else {
                s = s * 1103515245u + 12345u;
                i = ((size_t)s << 8 ^ (size_t)n) % obj_len;
            }
            obj[i] ^= (uint8_t)(1u << (n % 8));
            int rc = open_obj(f, obj, obj_len, id, out, MIB, &out_len, &e);
            obj[i] ^= (uint8_t)(1u << (n % 8));
            check_flip_code(rc, i, hl);
        }
        free(obj);
        free(plains[k]);
    }
    free(out);
}

static void test_truncated_at_every_length(void **state)
{
    struct fixture *f = *state;
    uint8_t *p = text_data(700);
    uint8_t id[32];
    size_t obj_len, out_len;
    uint8_t *obj = seal(f, p, 700, id, &obj_len);
    uint8_t out[700];
    struct err e;
    for (size_t n = 0; n < obj_len; n++) {
        /* A fresh allocation of exactly n bytes, so that ASan sees any read past the end. */
        uint8_t *cut = malloc(n + 1);
        memcpy(cut, obj, n);
        assert_int_equal(open_obj(f, n == 0 ? NULL : cut, n, id, out, sizeof out, &out_len, &e),
                         HBC_ETRUNCATED);
        free(cut);
    }
    free(obj);
    free(p);

    /* A large object, cut at sampled lengths. */
    uint8_t *big = random_data(MIB);
    obj = seal(f, big, MIB, id, &obj_len);
    uint8_t *bout = malloc(MIB);
    for (size_t n = 0; n < obj_len; n += 4099) {
        assert_int_equal(open_obj(f, obj, n, id, bout, MIB, &out_len, &e), HBC_ETRUNCATED);
    }
    assert_int_equal(open_obj(f, obj, obj_len - 1, id, bout, MIB, &out_len, &e), HBC_ETRUNCATED);
    free(bout);
    free(obj);
    free(big);
}

/* ---- Forged headers ------------------------------------------------------- */

/*
 * Build an object by hand from the documented format, with any header and
 * payload, sealed with k so that only the check under test can fail.
 */
static size_t build_object(const struct chunk_key *k, uint8_t version,
                           const Hbc__ChunkObjectHeader *h, const uint8_t *payload, size_t plen,
                           const uint8_t vault_id[16], const uint8_t chunk_id[32], uint8_t *out)
{
    size_t hl = hbc__chunk_object_header__get_packed_size(h);
    memcpy(out, "HBCO", 4);
    out[4] = version;
    out[5] = (uint8_t)(hl >> 8);
    out[6] = (uint8_t)hl;
    hbc__chunk_object_header__pack(h, out + 7);
    uint32_t crc = ~crc32_iscsi(out, (int)(7 + hl), 0xFFFFFFFFu);
    out[7 + hl] = (uint8_t)(crc >> 24);
    out[8 + hl] = (uint8_t)(crc >> 16);
    out[9 + hl] = (uint8_t)(crc >> 8);
    out[10 + hl] = (uint8_t)crc;
    uint8_t *nonce = out + 11 + hl;
    assert_int_equal(crypto_random(nonce, 12, NULL), 0);
    uint8_t ad[7 + 256 + 48];
    memcpy(ad, out, 7 + hl);
    memcpy(ad + 7 + hl, vault_id, 16);
    memcpy(ad + 23 + hl, chunk_id, 32);
    assert_int_equal(crypto_gcm_encrypt(NULL, k->gcm_key, nonce, ad, 55 + hl, payload, plen,
                                        out + 23 + hl, out + 23 + hl + plen, NULL),
                     0);
    return 23 + hl + plen + 16;
}

static Hbc__ChunkObjectHeader header_for(const struct chunk_key *k, int zstd, uint64_t plain,
                                         uint64_t packed)
{
    Hbc__ChunkObjectHeader h = HBC__CHUNK_OBJECT_HEADER__INIT;
    h.key_generation = k->generation;
    h.compression = zstd ? HBC__COMPRESSION__COMPRESSION_ZSTD : HBC__COMPRESSION__COMPRESSION_NONE;
    h.plaintext_length = plain;
    h.packed_length = packed;
    h.key_check.data = (uint8_t *)k->key_check;
    h.key_check.len = 8;
    return h;
}

/* One scenario's outcome, to check that the codes differ and carry messages. */
struct outcome {
    const char *what; /* scenario */
    int code;         /* what open returned */
    char msg[512];    /* its message */
};

static void record(struct outcome *o, const char *what, int rc, const struct err *e)
{
    o->what = what;
    o->code = rc;
    snprintf(o->msg, sizeof o->msg, "%s", e->msg);
    print_message("%-22s %-15s %s\n", what, hbc_errname(rc), e->msg);
}

static void test_forged_headers_and_distinct_codes(void **state)
{
    struct fixture *f = *state;
    uint8_t id[32];
    memset(id, 3, sizeof id);
    uint8_t payload[1000];
    for (size_t i = 0; i < sizeof payload; i++) {
        payload[i] = (uint8_t)(i * 7);
    }
    uint8_t *obj = malloc(8 * MIB);
    uint8_t out[4096];
    size_t n, out_len;
    struct err e;
    struct outcome o[12];
    int no = 0;

    /* The hand-built object of the documented format opens: the format is what the header says. */
    Hbc__ChunkObjectHeader h = header_for(&f->key, 0, sizeof payload, sizeof payload);
    n = build_object(&f->key, 1, &h, payload, sizeof payload, f->vault_id, id, obj);
    assert_int_equal(open_obj(f, obj, n, id, out, sizeof out, &out_len, &e), 0);
    assert_memory_equal(out, payload, sizeof payload);

    /* Unknown version. */
    n = build_object(&f->key, 2, &h, payload, sizeof payload, f->vault_id, id, obj);
    record(&o[no++], "version 2", open_obj(f, obj, n, id, out, sizeof out, &out_len, &e), &e);
    assert_int_equal(o[no - 1].code, HBC_EVERSION);

    /* Header length field at its maximum. */
    n = build_object(&f->key, 1, &h, payload, sizeof payload, f->vault_id, id, obj);
    obj[5] = 0xff;
    obj[6] = 0xff;
    record(&o[no++], "header length 65535", open_obj(f, obj, n, id, out, sizeof out, &out_len, &e),
           &e);
    assert_int_equal(o[no - 1].code, HBC_ETOOBIG);

    /* Plaintext length beyond the limit (the header's CRC is valid). */
    h = header_for(&f->key, 0, (uint64_t)CHUNK_OBJECT_MAX_PLAINTEXT + 1, sizeof payload);
    n = build_object(&f->key, 1, &h, payload, sizeof payload, f->vault_id, id, obj);
    assert_int_equal(open_obj(f, obj, n, id, out, sizeof out, &out_len, &e), HBC_ETOOBIG);
    h = header_for(&f->key, 0, UINT64_MAX, UINT64_MAX);
    n = build_object(&f->key, 1, &h, payload, sizeof payload, f->vault_id, id, obj);
    record(&o[no++], "plaintext 2^64-1", open_obj(f, obj, n, id, out, sizeof out, &out_len, &e),
           &e);
    assert_int_equal(o[no - 1].code, HBC_ETOOBIG);

    /* Packed length above the plaintext length, and beyond the object. */
    h = header_for(&f->key, 1, 10, sizeof payload);
    n = build_object(&f->key, 1, &h, payload, sizeof payload, f->vault_id, id, obj);
    assert_int_equal(open_obj(f, obj, n, id, out, sizeof out, &out_len, &e), HBC_ETOOBIG);
    h = header_for(&f->key, 0, 4000, 4000);
    n = build_object(&f->key, 1, &h, payload, sizeof payload, f->vault_id, id, obj);
    assert_int_equal(open_obj(f, obj, n, id, out, sizeof out, &out_len, &e), HBC_ETRUNCATED);
    h = header_for(&f->key, 0, 500, 500);
    n = build_object(&f->key, 1, &h, payload, sizeof payload, f->vault_id, id, obj);
    record(&o[no++], "packed < object", open_obj(f, obj, n, id, out, sizeof out, &out_len, &e), &e);
    assert_int_equal(o[no - 1].code, HBC_ETOOBIG);
    /* Bytes appended to a good object. */
    h = header_for(&f->key, 0, sizeof payload, sizeof payload);
    n = build_object(&f->key, 1, &h, payload, sizeof payload, f->vault_id, id, obj);
    assert_int_equal(open_obj(f, obj, n + 1, id, out, sizeof out, &out_len, &e), HBC_ETOOBIG);

    /* Truncated. */
    record(&o[no++], "truncated", open_obj(f, obj, n - 1, id, out, sizeof out, &out_len, &e), &e);
    assert_int_equal(o[no - 1].code, HBC_ETRUNCATED);

    /* Damaged header byte. */
    obj[8] ^= 0x10;
    record(&o[no++], "damaged header", open_obj(f, obj, n, id, out, sizeof out, &out_len, &e), &e);
    assert_int_equal(o[no - 1].code, HBC_ECORRUPT);
    obj[8] ^= 0x10;

    /* Malformed protobuf, unknown compression, short key check (all with valid CRCs). */
    Hbc__ChunkObjectHeader bad = header_for(&f->key, 0, sizeof payload, sizeof payload);
    bad.compression = (Hbc__Compression)7;
    n = build_object(&f->key, 1, &bad, payload, sizeof payload, f->vault_id, id, obj);
    assert_int_equal(open_obj(f, obj, n, id, out, sizeof out, &out_len, &e), HBC_EFORMAT);
    bad = header_for(&f->key, 0, sizeof payload, sizeof payload);
    bad.key_check.len = 4;
    n = build_object(&f->key, 1, &bad, payload, sizeof payload, f->vault_id, id, obj);
    assert_int_equal(open_obj(f, obj, n, id, out, sizeof out, &out_len, &e), HBC_EFORMAT);
    bad = header_for(&f->key, 1, sizeof payload, sizeof payload); /* zstd that saves nothing */
    n = build_object(&f->key, 1, &bad, payload, sizeof payload, f->vault_id, id, obj);
    assert_int_equal(open_obj(f, obj, n, id, out, sizeof out, &out_len, &e), HBC_EFORMAT);
    n = build_object(&f->key, 1, &h, payload, sizeof payload, f->vault_id, id, obj);
    obj[7] = 0xff; /* an invalid field key: protobuf refuses it; then make the CRC match */
    uint32_t crc = ~crc32_iscsi(obj, (int)(7 + header_len_of(obj)), 0xFFFFFFFFu);
    size_t hl = header_len_of(obj);
    obj[7 + hl] = (uint8_t)(crc >> 24);
    obj[8 + hl] = (uint8_t)(crc >> 16);
    obj[9 + hl] = (uint8_t)(crc >> 8);
    obj[10 + hl] = (uint8_t)crc;
    record(&o[no++], "malformed protobuf", open_obj(f, obj, n, id, out, sizeof out, &out_len, &e),
           &e);
    assert_int_equal(o[no - 1].code, HBC_EFORMAT);

    /* Wrong key generation. */
    Hbc__ChunkObjectHeader g = header_for(&f->key, 0, sizeof payload, sizeof payload);
    g.key_generation = 9;
    n = build_object(&f->key, 1, &g, payload, sizeof payload, f->vault_id, id, obj);
    record(&o[no++], "generation 9", open_obj(f, obj, n, id, out, sizeof out, &out_len, &e), &e);
    assert_int_equal(o[no - 1].code, HBC_EWRONGKEY);

    /* Altered ciphertext. */
    n = build_object(&f->key, 1, &h, payload, sizeof payload, f->vault_id, id, obj);
    obj[n - 100] ^= 4;
    record(&o[no++], "altered ciphertext", open_obj(f, obj, n, id, out, sizeof out, &out_len, &e),
           &e);
    assert_int_equal(o[no - 1].code, HBC_EAUTH);

    /* Authentic zstd payloads that do not decode to the promised plaintext. */
    Hbc__ChunkObjectHeader z = header_for(&f->key, 1, 2000, sizeof payload);
    n = build_object(&f->key, 1, &z, payload, sizeof payload, f->vault_id, id, obj);
    record(&o[no++], "garbage zstd", open_obj(f, obj, n, id, out, sizeof out, &out_len, &e), &e);
    assert_int_equal(o[no - 1].code, HBC_ECOMPRESS);
    uint8_t text[3000];
    memset(text, 'a', sizeof text);
    uint8_t frame[200];
    size_t fl = ZSTD_compress(frame, sizeof frame, text, sizeof text, 1);
    assert_false(ZSTD_isError(fl));
    z = header_for(&f->key, 1, 2000, fl); /* the frame holds 3000 bytes, not 2000 */
    n = build_object(&f->key, 1, &z, frame, fl, f->vault_id, id, obj);
    assert_int_equal(open_obj(f, obj, n, id, out, sizeof out, &out_len, &e), HBC_ECOMPRESS);
    z = header_for(&f->key, 1, 4000, fl); /* nor 4000 */
    n = build_object(&f->key, 1, &z, frame, fl, f->vault_id, id, obj);
    assert_int_equal(open_obj(f, obj, n, id, out, sizeof out, &out_len, &e), HBC_ECOMPRESS);
    z = header_for(&f->key, 1, 3000, fl); /* but 3000 is right */
    n = build_object(&f->key, 1, &z, frame, fl, f->vault_id, id, obj);
    assert_int_equal(open_obj(f, obj, n, id, out, sizeof out, &out_len, &e), 0);
    assert_memory_equal(out, text, sizeof text);

    /* Not a chunk object at all. */
    memcpy(obj, "HBCK", 4);
    record(&o[no++], "bad magic", open_obj(f, obj, n, id, out, sizeof out, &out_len, &e), &e);
    assert_int_equal(o[no - 1].code, HBC_EFORMAT);

    /* Chunk id check. */
    err_clear(&e);
    record(&o[no++], "chunk id", chunk_object_verify_id(f->ids, text, sizeof text, id, &e), &e);
    assert_int_equal(o[no - 1].code, HBC_ECHUNKID);

    /* Every scenario failed with a message; distinct kinds of failure have distinct codes. */
    static const int kinds[] = {HBC_ECORRUPT, HBC_EVERSION,  HBC_ETRUNCATED,
                                HBC_ETOOBIG,  HBC_EWRONGKEY, HBC_EAUTH,
                                HBC_EFORMAT,  HBC_ECOMPRESS, HBC_ECHUNKID};
    for (size_t a = 0; a < sizeof kinds / sizeof kinds[0]; a++) {
        int seen = 0;
        for (int i = 0; i < no; i++) {
            seen |= o[i].code == kinds[a];
        }
        assert_true(seen);
        for (size_t b = a + 1; b < sizeof kinds / sizeof kinds[0]; b++) {
            assert_int_not_equal(kinds[a], kinds[b]);
        }
    }
    for (int i = 0; i < no; i++) {
        assert_true(o[i].code < 0);
        assert_true(strlen(o[i].msg) > 10);
    }
    free(obj);
}

/* ---- Arguments, memory and threads ---------------------------------------- */

static void test_buffer_and_size_limits(void **state)
{
    struct fixture *f = *state;
    uint8_t *p = random_data(2000);
    uint8_t id[32];
    size_t obj_len, out_len;
    uint8_t *obj = seal(f, p, 2000, id, &obj_len);
    uint8_t out[2000];
    struct err e;
    assert_int_equal(open_obj(f, obj, obj_len, id, out, 1999, &out_len, &e), HBC_EINVAL);
    /* Codes do not depend on an error record being passed. */
    assert_int_equal(chunk_object_open(f->ctx, &f->key, f->vault_id, id, obj, obj_len - 1, out,
                                       sizeof out, &out_len, NULL),
                     HBC_ETRUNCATED);
    obj[obj_len - 1] ^= 1;
    assert_int_equal(chunk_object_open(f->ctx, &f->key, f->vault_id, id, obj, obj_len, out,
                                       sizeof out, &out_len, NULL),
                     HBC_EAUTH);
    obj[obj_len - 1] ^= 1;
    assert_int_equal(chunk_object_seal(f->ctx, &f->key, f->vault_id, id, p, 2000, obj,
                                       chunk_object_max_sealed(2000) - 1, &obj_len, NULL),
                     HBC_EINVAL);
    assert_int_equal(chunk_object_seal(f->ctx, &f->key, f->vault_id, id, p,
                                       CHUNK_OBJECT_MAX_PLAINTEXT + 1, obj, SIZE_MAX, &obj_len,
                                       NULL),
                     HBC_ETOOBIG);
    assert_int_equal(chunk_object_max_sealed(SIZE_MAX), SIZE_MAX);
    free(obj);
    free(p);
}

static void test_allocation_failures(void **state)
{
    (void)state;
    /* Every allocation the context makes can fail cleanly (ASan checks for leaks). */
    for (long n = 0; n < 8; n++) {
        struct chunk_ctx *c = NULL;
        alloc_fault_after(n);
        int rc = chunk_ctx_new(&c, NULL);
        alloc_fault_reset();
        if (rc == 0) {
            chunk_ctx_free(c);
            break;
        }
        assert_int_equal(rc, HBC_ENOMEM);
        assert_null(c);
    }
    /* The scratch buffer for compression. */
    struct fixture *f = *state;
    struct chunk_ctx *c;
    assert_int_equal(chunk_ctx_new(&c, NULL), 0);
    uint8_t *t = text_data(100000);
    uint8_t *obj = malloc(chunk_object_max_sealed(100000));
    size_t obj_len;
    uint8_t id[32] = {0};
    alloc_fault_after(0);
    int rc = chunk_object_seal(c, &f->key, f->vault_id, id, t, 100000, obj,
                               chunk_object_max_sealed(100000), &obj_len, NULL);
    alloc_fault_reset();
    assert_int_equal(rc, HBC_ENOMEM);
    chunk_ctx_free(c);
    free(obj);
    free(t);
}

struct worker {
    const struct fixture *f; /* shared key and vault id */
    int failures;            /* round trips that went wrong */
};

static void *worker_main(void *arg)
{
    struct worker *w = arg;
    struct chunk_ctx *c;
    if (chunk_ctx_new(&c, NULL) != 0) {
        w->failures++;
        return NULL;
    }
    size_t len = 300000;
    uint8_t *plain = text_data(len);
    uint8_t *obj = malloc(chunk_object_max_sealed(len));
    uint8_t *out = malloc(len);
    uint8_t id[32] = {0};
    for (int i = 0; i < 20; i++) {
        plain[i] ^= (uint8_t)i;
        size_t ol, pl;
        if (chunk_object_seal(c, &w->f->key, w->f->vault_id, id, plain, len, obj,
                              chunk_object_max_sealed(len), &ol, NULL) != 0 ||
            chunk_object_open(c, &w->f->key, w->f->vault_id, id, obj, ol, out, len, &pl, NULL) !=
                0 ||
            pl != len || memcmp(out, plain, len) != 0) {
            w->failures++;
        }
    }
    free(out);
    free(obj);
    free(plain);
    chunk_ctx_free(c);
    return NULL;
}

static void test_threads_share_a_key(void **state)
{
    struct fixture *f = *state;
    pthread_t t[3];
    struct worker w[3];
    for (int i = 0; i < 3; i++) {
        w[i] = (struct worker){.f = f};
        assert_int_equal(pthread_create(&t[i], NULL, worker_main, &w[i]), 0);
    }
    for (int i = 0; i < 3; i++) {
        assert_int_equal(pthread_join(t[i], NULL), 0);
        assert_int_equal(w[i].failures, 0);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_round_trip_sizes, setup, teardown),
        cmocka_unit_test_setup_teardown(test_compressible_tail_only_stays_uncompressed_or_smaller,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(test_seal_is_deterministic, setup, teardown),
        cmocka_unit_test_setup_teardown(test_wrong_key_and_generation, setup, teardown),
        cmocka_unit_test_setup_teardown(test_wrong_vault_or_chunk_id, setup, teardown),
        cmocka_unit_test_setup_teardown(test_no_unauthenticated_plaintext_left, setup, teardown),
        cmocka_unit_test_setup_teardown(test_bit_flip_every_byte_small, setup, teardown),
        cmocka_unit_test_setup_teardown(test_bit_flip_sampled_large, setup, teardown),
        cmocka_unit_test_setup_teardown(test_truncated_at_every_length, setup, teardown),
        cmocka_unit_test_setup_teardown(test_forged_headers_and_distinct_codes, setup, teardown),
        cmocka_unit_test_setup_teardown(test_buffer_and_size_limits, setup, teardown),
        cmocka_unit_test_setup_teardown(test_allocation_failures, setup, teardown),
        cmocka_unit_test_setup_teardown(test_threads_share_a_key, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
