/* Cryptographic primitives over OpenSSL 3 EVP (see crypto.h for the contract). */
#include "common/crypto.h"

#include <limits.h>
#include <string.h>

#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/kdf.h>
#include <openssl/params.h>
#include <openssl/rand.h>

#include "common/alloc.h"

/* EVP update calls take an int length: feed larger buffers in pieces of this size. */
#define CRYPTO_PIECE ((size_t)1 << 30)

struct crypto_gcm {
    EVP_CIPHER *cipher;  /* "AES-256-GCM", fetched once */
    EVP_CIPHER_CTX *ctx; /* re-keyed by every call */
};

struct crypto_hmac {
    EVP_MAC_CTX *ctx; /* keyed once; EVP_MAC_init(ctx, NULL, ...) restarts it per message */
};

int crypto_equal(const void *a, const void *b, size_t n)
{
    return CRYPTO_memcmp(a, b, n) == 0;
}

void crypto_wipe(void *p, size_t n)
{
    if (p != NULL && n > 0) {
        OPENSSL_cleanse(p, n);
    }
}

int crypto_random(void *buf, size_t len, struct err *e)
{
    uint8_t *p = buf;
    while (len > 0) {
        size_t n = len < CRYPTO_PIECE ? len : CRYPTO_PIECE;
        if (RAND_bytes(p, (int)n) != 1) {
            return err_openssl(e, HBC_ECRYPTO, "random bytes");
        }
        p += n;
        len -= n;
    }
    return 0;
}

int crypto_sha256(const void *data, size_t len, uint8_t out[CRYPTO_SHA256_LEN], struct err *e)
{
    static const uint8_t empty[1];
    size_t n = 0;
    if (!EVP_Q_digest(NULL, "SHA256", NULL, len > 0 ? data : empty, len, out, &n) ||
        n != CRYPTO_SHA256_LEN) {
        return err_openssl(e, HBC_ECRYPTO, "SHA-256");
    }
    return 0;
}

/* ---- HMAC ---------------------------------------------------------------- */

int crypto_hmac_new(struct crypto_hmac **out, const uint8_t *key, size_t key_len, struct err *e)
{
    *out = NULL;
    if (key == NULL || key_len == 0) {
        return err_set(e, HBC_EINVAL, "HMAC key is empty");
    }
    struct crypto_hmac *h = hbc_calloc(1, sizeof *h);
    if (h == NULL) {
        return err_set(e, HBC_ENOMEM, "HMAC context");
    }
    EVP_MAC *mac = EVP_MAC_fetch(NULL, "HMAC", NULL);
    if (mac == NULL) {
        hbc_free(h);
        return err_openssl(e, HBC_ECRYPTO, "fetch HMAC");
    }
    h->ctx = EVP_MAC_CTX_new(mac);
    EVP_MAC_free(mac); /* the context keeps its own reference */
    if (h->ctx == NULL) {
        hbc_free(h);
        return err_openssl(e, HBC_ENOMEM, "HMAC context");
    }
    OSSL_PARAM params[] = {
        OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, (char *)"SHA256", 0),
        OSSL_PARAM_construct_end(),
    };
    if (!EVP_MAC_init(h->ctx, key, key_len, params)) {
        crypto_hmac_free(h);
        return err_openssl(e, HBC_ECRYPTO, "HMAC init");
    }
    *out = h;
    return 0;
}

int crypto_hmac_dup(struct crypto_hmac **out, const struct crypto_hmac *h, struct err *e)
{
    *out = NULL;
    struct crypto_hmac *d = hbc_calloc(1, sizeof *d);
    if (d == NULL) {
        return err_set(e, HBC_ENOMEM, "HMAC context copy");
    }
    d->ctx = EVP_MAC_CTX_dup(h->ctx);
    if (d->ctx == NULL) {
        hbc_free(d);
        return err_openssl(e, HBC_ENOMEM, "HMAC context copy");
    }
    *out = d;
    return 0;
}

void crypto_hmac_free(struct crypto_hmac *h)
{
    if (h == NULL) {
        return;
    }
    EVP_MAC_CTX_free(h->ctx); /* the provider cleanses its key state */
    hbc_free(h);
}

int crypto_hmac_compute(struct crypto_hmac *h, const void *data, size_t len,
                        uint8_t out[CRYPTO_SHA256_LEN], struct err *e)
{
    size_t n = 0;
    /* A NULL key restarts the MAC from its stored keyed state: no key schedule per call. */
    if (!EVP_MAC_init(h->ctx, NULL, 0, NULL) || (len > 0 && !EVP_MAC_update(h->ctx, data, len)) ||
        !EVP_MAC_final(h->ctx, out, &n, CRYPTO_SHA256_LEN) || n != CRYPTO_SHA256_LEN) {
        return err_openssl(e, HBC_ECRYPTO, "HMAC-SHA-256");
    }
    return 0;
}

int crypto_hmac_sha256(const uint8_t *key, size_t key_len, const void *data, size_t len,
                       uint8_t out[CRYPTO_SHA256_LEN], struct err *e)
{
    struct crypto_hmac *h;
    int rc = crypto_hmac_new(&h, key, key_len, e);
    if (rc == 0) {
        rc = crypto_hmac_compute(h, data, len, out, e);
        crypto_hmac_free(h);
    }
    return rc;
}

int crypto_hmac_sha256_verify(const uint8_t *key, size_t key_len, const void *data, size_t len,
                              const uint8_t *tag, size_t tag_len, struct err *e)
{
    if (tag_len < 16 || tag_len > CRYPTO_SHA256_LEN) {
        return err_set(e, HBC_EINVAL, "HMAC tag of %zu bytes (16 to 32 accepted)", tag_len);
    }
    uint8_t mac[CRYPTO_SHA256_LEN];
    int rc = crypto_hmac_sha256(key, key_len, data, len, mac, e);
    if (rc == 0 && !crypto_equal(mac, tag, tag_len)) {
        rc = err_set(e, HBC_EAUTH, "HMAC-SHA-256 tag mismatch");
    }
    crypto_wipe(mac, sizeof mac);
    return rc;
}

/* ---- KDFs ---------------------------------------------------------------- */

/* Run the EVP_KDF named name with params into out. */
static int kdf_run(const char *name, OSSL_PARAM *params, uint8_t *out, size_t out_len,
                   struct err *e)
{
    EVP_KDF *kdf = EVP_KDF_fetch(NULL, name, NULL);
    if (kdf == NULL) {
        return err_openssl(e, HBC_ECRYPTO, name);
    }
    EVP_KDF_CTX *ctx = EVP_KDF_CTX_new(kdf);
    EVP_KDF_free(kdf);
    if (ctx == NULL) {
        return err_openssl(e, HBC_ENOMEM, name);
    }
    int rc = 0;
    if (EVP_KDF_derive(ctx, out, out_len, params) <= 0) {
        crypto_wipe(out, out_len);
        rc = err_openssl(e, HBC_ECRYPTO, name);
    }
    EVP_KDF_CTX_free(ctx);
    return rc;
}

int crypto_hkdf_sha256(const uint8_t *ikm, size_t ikm_len, const uint8_t *salt, size_t salt_len,
                       const uint8_t *info, size_t info_len, uint8_t *out, size_t out_len,
                       struct err *e)
{
    if (ikm == NULL || ikm_len == 0) {
        return err_set(e, HBC_EINVAL, "HKDF input key is empty");
    }
    if (out_len == 0 || out_len > CRYPTO_HKDF_MAX_OUT) {
        return err_set(e, HBC_EINVAL, "HKDF output of %zu bytes (1 to %d accepted)", out_len,
                       CRYPTO_HKDF_MAX_OUT);
    }
    OSSL_PARAM params[5];
    OSSL_PARAM *p = params;
    *p++ = OSSL_PARAM_construct_utf8_string(OSSL_KDF_PARAM_DIGEST, (char *)"SHA256", 0);
    *p++ = OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_KEY, (void *)ikm, ikm_len);
    if (salt_len > 0) {
        *p++ = OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_SALT, (void *)salt, salt_len);
    }
    if (info_len > 0) {
        *p++ = OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_INFO, (void *)info, info_len);
    }
    *p = OSSL_PARAM_construct_end();
    return kdf_run("HKDF", params, out, out_len, e);
}

int crypto_derive(const uint8_t key[CRYPTO_KEY_LEN], const char *label, uint8_t *out,
                  size_t out_len, struct err *e)
{
    return crypto_hkdf_sha256(key, CRYPTO_KEY_LEN, NULL, 0, (const uint8_t *)label, strlen(label),
                              out, out_len, e);
}

int crypto_scrypt(const void *pass, size_t pass_len, const uint8_t *salt, size_t salt_len,
                  uint64_t n, uint32_t r, uint32_t p, uint64_t maxmem, uint8_t *out, size_t out_len,
                  struct err *e)
{
    OSSL_PARAM params[7];
    OSSL_PARAM *q = params;
    *q++ = OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_PASSWORD, (void *)pass, pass_len);
    *q++ = OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_SALT, (void *)salt, salt_len);
    *q++ = OSSL_PARAM_construct_uint64(OSSL_KDF_PARAM_SCRYPT_N, &n);
    *q++ = OSSL_PARAM_construct_uint32(OSSL_KDF_PARAM_SCRYPT_R, &r);
    *q++ = OSSL_PARAM_construct_uint32(OSSL_KDF_PARAM_SCRYPT_P, &p);
    *q++ = OSSL_PARAM_construct_uint64(OSSL_KDF_PARAM_SCRYPT_MAXMEM, &maxmem);
    *q = OSSL_PARAM_construct_end();
    return kdf_run("SCRYPT", params, out, out_len, e);
}

/* ---- AES-256-GCM --------------------------------------------------------- */

int crypto_gcm_new(struct crypto_gcm **out, struct err *e)
{
    *out = NULL;
    struct crypto_gcm *g = hbc_calloc(1, sizeof *g);
    if (g == NULL) {
        return err_set(e, HBC_ENOMEM, "GCM context");
    }
    g->cipher = EVP_CIPHER_fetch(NULL, "AES-256-GCM", NULL);
    if (g->cipher == NULL) {
        hbc_free(g);
        return err_openssl(e, HBC_ECRYPTO, "fetch AES-256-GCM");
    }
    g->ctx = EVP_CIPHER_CTX_new();
    if (g->ctx == NULL) {
        crypto_gcm_free(g);
        return err_openssl(e, HBC_ENOMEM, "GCM context");
    }
    *out = g;
    return 0;
}

void crypto_gcm_free(struct crypto_gcm *g)
{
    if (g == NULL) {
        return;
    }
    EVP_CIPHER_CTX_free(g->ctx); /* cleanses the key schedule */
    EVP_CIPHER_free(g->cipher);
    hbc_free(g);
}

/* Feed len bytes through EVP_CipherUpdate in int-sized pieces; out NULL means AAD. */
static int gcm_update(EVP_CIPHER_CTX *ctx, uint8_t *out, const uint8_t *in, size_t len)
{
    while (len > 0) {
        size_t n = len < CRYPTO_PIECE ? len : CRYPTO_PIECE;
        int outl = 0;
        if (!EVP_CipherUpdate(ctx, out, &outl, in, (int)n) || (out != NULL && (size_t)outl != n)) {
            return 0;
        }
        in += n;
        if (out != NULL) {
            out += n;
        }
        len -= n;
    }
    return 1;
}

/* Encrypt (enc = 1) or decrypt with ctx; on decrypt, tag is checked by the final call. */
static int gcm_run(struct crypto_gcm *g, int enc, const uint8_t key[CRYPTO_KEY_LEN],
                   const uint8_t nonce[CRYPTO_GCM_NONCE_LEN], const void *aad, size_t aad_len,
                   const void *in, size_t len, void *out, uint8_t tag[CRYPTO_GCM_TAG_LEN],
                   struct err *e)
{
    struct crypto_gcm *tmp = NULL;
    if (g == NULL) {
        int rc = crypto_gcm_new(&tmp, e);
        if (rc != 0) {
            return rc;
        }
        g = tmp;
    }
    int rc = 0;
    int outl = 0;
    uint8_t last[16];
    if (!EVP_CipherInit_ex2(g->ctx, g->cipher, key, nonce, enc, NULL)) {
        rc = err_openssl(e, HBC_ECRYPTO, "GCM init");
        goto done;
    }
    if (!gcm_update(g->ctx, NULL, aad, aad_len) || !gcm_update(g->ctx, out, in, len)) {
        rc = err_openssl(e, HBC_ECRYPTO, enc ? "GCM encrypt" : "GCM decrypt");
        goto done;
    }
    if (enc) {
        if (!EVP_CipherFinal_ex(g->ctx, last, &outl) ||
            !EVP_CIPHER_CTX_ctrl(g->ctx, EVP_CTRL_AEAD_GET_TAG, CRYPTO_GCM_TAG_LEN, tag)) {
            rc = err_openssl(e, HBC_ECRYPTO, "GCM tag");
        }
        goto done;
    }
    if (!EVP_CIPHER_CTX_ctrl(g->ctx, EVP_CTRL_AEAD_SET_TAG, CRYPTO_GCM_TAG_LEN, tag)) {
        rc = err_openssl(e, HBC_ECRYPTO, "GCM set tag");
        goto done;
    }
    if (EVP_CipherFinal_ex(g->ctx, last, &outl) <= 0) {
        ERR_clear_error();
        crypto_wipe(out, len);
        rc = err_set(e, HBC_EAUTH, "AES-GCM tag mismatch");
    }
done:
    crypto_gcm_free(tmp);
    return rc;
}

int crypto_gcm_encrypt(struct crypto_gcm *g, const uint8_t key[CRYPTO_KEY_LEN],
                       const uint8_t nonce[CRYPTO_GCM_NONCE_LEN], const void *aad, size_t aad_len,
                       const void *in, size_t len, void *out, uint8_t tag[CRYPTO_GCM_TAG_LEN],
                       struct err *e)
{
    return gcm_run(g, 1, key, nonce, aad, aad_len, in, len, out, tag, e);
}

int crypto_gcm_decrypt(struct crypto_gcm *g, const uint8_t key[CRYPTO_KEY_LEN],
                       const uint8_t nonce[CRYPTO_GCM_NONCE_LEN], const void *aad, size_t aad_len,
                       const void *in, size_t len, void *out, const uint8_t tag[CRYPTO_GCM_TAG_LEN],
                       struct err *e)
{
    uint8_t t[CRYPTO_GCM_TAG_LEN];
    memcpy(t, tag, sizeof t); /* EVP wants a writable tag pointer */
    return gcm_run(g, 0, key, nonce, aad, aad_len, in, len, out, t, e);
}

/* ---- AES key wrap (RFC 3394, RFC 5649) ----------------------------------- */

/*
 * Run one wrap or unwrap with the named EVP cipher. OpenSSL 3's provider
 * ciphers need no EVP_CIPHER_CTX_FLAG_WRAP_ALLOW (checked on 3.0: only the
 * pre-3.0 code path tested it), so it is not set.
 */
static int wrap_run(const char *name, int enc, const uint8_t kek[CRYPTO_KEY_LEN], const uint8_t *in,
                    size_t in_len, uint8_t *out, size_t *out_len, size_t max_out, struct err *e)
{
    int rc = 0;
    int outl = 0;
    int finl = 0;
    EVP_CIPHER_CTX *ctx = NULL;
    EVP_CIPHER *cipher = EVP_CIPHER_fetch(NULL, name, NULL);
    if (cipher == NULL) {
        return err_openssl(e, HBC_ECRYPTO, name);
    }
    ctx = EVP_CIPHER_CTX_new();
    if (ctx == NULL) {
        rc = err_openssl(e, HBC_ENOMEM, name);
        goto done;
    }
    if (!EVP_CipherInit_ex2(ctx, cipher, kek, NULL, enc, NULL)) {
        rc = err_openssl(e, HBC_ECRYPTO, name);
        goto done;
    }
    if (EVP_CipherUpdate(ctx, out, &outl, in, (int)in_len) <= 0 || outl <= 0 ||
        (size_t)outl > max_out || EVP_CipherFinal_ex(ctx, out + outl, &finl) <= 0 || finl != 0) {
        if (enc) {
            rc = err_openssl(e, HBC_ECRYPTO, name);
        } else {
            ERR_clear_error();
            crypto_wipe(out, max_out);
            rc = err_set(e, HBC_EAUTH, "key unwrap: integrity check failed");
        }
        goto done;
    }
    *out_len = (size_t)outl;
done:
    EVP_CIPHER_CTX_free(ctx);
    EVP_CIPHER_free(cipher);
    return rc;
}

int crypto_kw_wrap(const uint8_t kek[CRYPTO_KEY_LEN], const uint8_t *in, size_t in_len,
                   uint8_t *out, size_t out_cap, size_t *out_len, struct err *e)
{
    if (in_len < 16 || in_len % CRYPTO_KW_BLOCK != 0 || in_len > INT_MAX - 16) {
        return err_set(e, HBC_EINVAL, "RFC 3394 wrap of %zu bytes (a multiple of 8, at least 16)",
                       in_len);
    }
    if (out_cap < in_len + CRYPTO_KW_BLOCK) {
        return err_set(e, HBC_EINVAL, "key wrap output buffer of %zu bytes, need %zu", out_cap,
                       in_len + CRYPTO_KW_BLOCK);
    }
    return wrap_run("AES-256-WRAP", 1, kek, in, in_len, out, out_len, in_len + CRYPTO_KW_BLOCK, e);
}

int crypto_kw_unwrap(const uint8_t kek[CRYPTO_KEY_LEN], const uint8_t *in, size_t in_len,
                     uint8_t *out, size_t out_cap, size_t *out_len, struct err *e)
{
    if (in_len < 24 || in_len % CRYPTO_KW_BLOCK != 0 || in_len > INT_MAX - 16) {
        return err_set(e, HBC_EINVAL, "RFC 3394 unwrap of %zu bytes (a multiple of 8, at least 24)",
                       in_len);
    }
    if (out_cap < in_len - CRYPTO_KW_BLOCK) {
        return err_set(e, HBC_EINVAL, "key unwrap output buffer of %zu bytes, need %zu", out_cap,
                       in_len - CRYPTO_KW_BLOCK);
    }
    return wrap_run("AES-256-WRAP", 0, kek, in, in_len, out, out_len, in_len - CRYPTO_KW_BLOCK, e);
}

size_t crypto_kwp_wrapped_len(size_t in_len)
{
    return (in_len + CRYPTO_KW_BLOCK - 1) / CRYPTO_KW_BLOCK * CRYPTO_KW_BLOCK + CRYPTO_KW_BLOCK;
}

int crypto_kwp_wrap(const uint8_t kek[CRYPTO_KEY_LEN], const uint8_t *in, size_t in_len,
                    uint8_t *out, size_t out_cap, size_t *out_len, struct err *e)
{
    if (in_len == 0 || in_len > INT_MAX - 16) {
        return err_set(e, HBC_EINVAL, "RFC 5649 wrap of %zu bytes", in_len);
    }
    size_t need = crypto_kwp_wrapped_len(in_len);
    if (out_cap < need) {
        return err_set(e, HBC_EINVAL, "key wrap output buffer of %zu bytes, need %zu", out_cap,
                       need);
    }
    return wrap_run("AES-256-WRAP-PAD", 1, kek, in, in_len, out, out_len, need, e);
}

int crypto_kwp_unwrap(const uint8_t kek[CRYPTO_KEY_LEN], const uint8_t *in, size_t in_len,
                      uint8_t *out, size_t out_cap, size_t *out_len, struct err *e)
{
    if (in_len < 16 || in_len % CRYPTO_KW_BLOCK != 0 || in_len > INT_MAX - 16) {
        return err_set(e, HBC_EINVAL, "RFC 5649 unwrap of %zu bytes (a multiple of 8, at least 16)",
                       in_len);
    }
    if (out_cap < in_len - CRYPTO_KW_BLOCK) {
        return err_set(e, HBC_EINVAL, "key unwrap output buffer of %zu bytes, need %zu", out_cap,
                       in_len - CRYPTO_KW_BLOCK);
    }
    return wrap_run("AES-256-WRAP-PAD", 0, kek, in, in_len, out, out_len, in_len - CRYPTO_KW_BLOCK,
                    e);
}
