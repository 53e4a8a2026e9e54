/* Cryptographic primitives over OpenSSL 3 EVP: random, SHA-256, HMAC, HKDF, scrypt, AES-GCM, key
 * wrap. */
#ifndef HBC_COMMON_CRYPTO_H
#define HBC_COMMON_CRYPTO_H

#include <stddef.h>
#include <stdint.h>

#include "common/err.h"

/*
 * Everything here goes through OpenSSL's EVP interfaces (EVP_CIPHER, EVP_MAC,
 * EVP_KDF, EVP_MD) with the default library context and no property query, so
 * a configuration file that loads the FIPS provider and sets
 * `default_properties = fips=yes` switches every algorithm to it without a
 * code change. No deprecated low-level call (AES_*, SHA256_*, HMAC_*) is used.
 *
 * Thread safety: every function is reentrant and keeps no global mutable
 * state beyond OpenSSL's own. The context objects (struct crypto_gcm,
 * struct crypto_hmac) may be used by one thread at a time; give each worker
 * thread its own (crypto_hmac_dup() copies a keyed one).
 *
 * Return codes: 0 on success; HBC_EINVAL for a length or argument outside
 * what the function accepts; HBC_EAUTH when authenticated data does not
 * verify (GCM tag, key-wrap integrity check, HMAC tag); HBC_ENOMEM when
 * OpenSSL cannot allocate a context; HBC_ECRYPTO for any other OpenSSL
 * failure (the message carries OpenSSL's error text). Every function takes
 * `struct err *e` (may be NULL) last.
 */

#define CRYPTO_KEY_LEN 32       /* every symmetric key we hold: AES-256 and HMAC keys */
#define CRYPTO_SHA256_LEN 32    /* SHA-256 and HMAC-SHA-256 output */
#define CRYPTO_GCM_NONCE_LEN 12 /* AES-GCM nonce: 96 bits, the only size we use */
#define CRYPTO_GCM_TAG_LEN 16   /* AES-GCM tag: 128 bits, never truncated */
#define CRYPTO_KW_BLOCK 8       /* RFC 3394/5649 semiblock; a wrap adds one */
#define CRYPTO_HKDF_MAX_OUT (255 * CRYPTO_SHA256_LEN) /* RFC 5869 limit for SHA-256 */

/*
 * HKDF labels (the `info` input), one per purpose, so that no two uses of a
 * key ever share derived material. A label is never reused for another
 * purpose; a new purpose gets a new label, a changed construction a new "v".
 *
 *   CRYPTO_LABEL_KEY_CHECK         8-byte key check stored in a chunk object's
 *                                  header, derived from the vault data key, to
 *                                  tell "wrong key" apart from "altered data".
 *   CRYPTO_LABEL_CHUNK_OBJECT_KEY  the AES-256-GCM key that seals chunk objects,
 *                                  derived from the vault data key.
 *   CRYPTO_LABEL_KEYFILE_WRAP      the AES-256-GCM key that seals the KEK in a
 *                                  key file, derived from the scrypt output.
 *
 * Not derived, on purpose: the chunk-id key is used directly as the
 * HMAC-SHA-256 key (its only use), and the KEK is used directly as the
 * RFC 5649 wrapping key (its only use), so that a PKCS#11 token holding the
 * KEK can perform the same CKM_AES_KEY_WRAP_KWP operation itself.
 */
#define CRYPTO_LABEL_KEY_CHECK "hbc v1 key check"
#define CRYPTO_LABEL_CHUNK_OBJECT_KEY "hbc v1 chunk object key"
#define CRYPTO_LABEL_CHUNK_NONCE_KEY "hbc v1 chunk nonce key"
#define CRYPTO_LABEL_KEYFILE_WRAP "hbc v1 keyfile wrap"

/* Fill buf with len bytes from OpenSSL's DRBG (RAND_bytes). */
int crypto_random(void *buf, size_t len, struct err *e);

/* out = SHA-256(data). data may be NULL when len is 0. */
int crypto_sha256(const void *data, size_t len, uint8_t out[CRYPTO_SHA256_LEN], struct err *e);

/*
 * out = HMAC-SHA-256(key, data), one-shot. key_len must be at least 1.
 * For many messages under one key use struct crypto_hmac instead.
 */
int crypto_hmac_sha256(const uint8_t *key, size_t key_len, const void *data, size_t len,
                       uint8_t out[CRYPTO_SHA256_LEN], struct err *e);

/*
 * Check a possibly truncated HMAC-SHA-256 tag (its first tag_len bytes, 16 to
 * 32) in constant time. Returns 0 if it matches, HBC_EAUTH if not, HBC_EINVAL
 * for a tag_len outside 16..32.
 */
int crypto_hmac_sha256_verify(const uint8_t *key, size_t key_len, const void *data, size_t len,
                              const uint8_t *tag, size_t tag_len, struct err *e);

/*
 * HKDF-SHA-256 (RFC 5869, extract then expand) through EVP_KDF "HKDF".
 * ikm_len must be at least 1; salt and info may be empty (salt NULL/0 means
 * the RFC's all-zero salt). out_len is 1..CRYPTO_HKDF_MAX_OUT (HBC_EINVAL
 * otherwise).
 */
int crypto_hkdf_sha256(const uint8_t *ikm, size_t ikm_len, const uint8_t *salt, size_t salt_len,
                       const uint8_t *info, size_t info_len, uint8_t *out, size_t out_len,
                       struct err *e);

/*
 * Derive out_len bytes for one purpose from a 32-byte key: HKDF-SHA-256 with
 * no salt and info = label (one of the CRYPTO_LABEL_* strings, without its NUL).
 */
int crypto_derive(const uint8_t key[CRYPTO_KEY_LEN], const char *label, uint8_t *out,
                  size_t out_len, struct err *e);

/*
 * scrypt (RFC 7914) through EVP_KDF "SCRYPT": out = scrypt(pass, salt, N, r, p).
 * maxmem bounds the memory OpenSSL may use (bytes); parameters needing more
 * fail with HBC_ECRYPTO. The caller bounds N, r and p first (keys.c does).
 */
int crypto_scrypt(const void *pass, size_t pass_len, const uint8_t *salt, size_t salt_len,
                  uint64_t n, uint32_t r, uint32_t p, uint64_t maxmem, uint8_t *out, size_t out_len,
                  struct err *e);

/*
 * Reusable AES-256-GCM working state: the fetched cipher and one
 * EVP_CIPHER_CTX, so that sealing many buffers allocates nothing per call.
 * It holds no key between calls. One thread at a time.
 */
struct crypto_gcm;

/* Allocate a GCM context into *out. Free with crypto_gcm_free(). */
int crypto_gcm_new(struct crypto_gcm **out, struct err *e);

/* Free g and cleanse its state. NULL is a no-op. */
void crypto_gcm_free(struct crypto_gcm *g);

/*
 * AES-256-GCM encryption with a 96-bit nonce and a 16-byte tag:
 * out (len bytes) = ciphertext of in, tag = tag over aad and ciphertext.
 * g may be NULL (a temporary context is used). out may equal in; aad and
 * in may be NULL when their length is 0. The caller guarantees that a nonce
 * is never reused under one key (random nonces: at most 2^32 seals per key).
 */
int crypto_gcm_encrypt(struct crypto_gcm *g, const uint8_t key[CRYPTO_KEY_LEN],
                       const uint8_t nonce[CRYPTO_GCM_NONCE_LEN], const void *aad, size_t aad_len,
                       const void *in, size_t len, void *out, uint8_t tag[CRYPTO_GCM_TAG_LEN],
                       struct err *e);

/*
 * AES-256-GCM decryption: out (len bytes) = plaintext of in if tag verifies
 * over aad and in. Returns HBC_EAUTH if it does not; out is then wiped, so
 * unauthenticated plaintext never escapes. g may be NULL; out may equal in.
 */
int crypto_gcm_decrypt(struct crypto_gcm *g, const uint8_t key[CRYPTO_KEY_LEN],
                       const uint8_t nonce[CRYPTO_GCM_NONCE_LEN], const void *aad, size_t aad_len,
                       const void *in, size_t len, void *out, const uint8_t tag[CRYPTO_GCM_TAG_LEN],
                       struct err *e);

/*
 * AES-256 key wrap, RFC 3394 (EVP "AES-256-WRAP"). in_len must be a multiple
 * of 8 and at least 16; the output is in_len + 8 bytes. out_cap is checked.
 */
int crypto_kw_wrap(const uint8_t kek[CRYPTO_KEY_LEN], const uint8_t *in, size_t in_len,
                   uint8_t *out, size_t out_cap, size_t *out_len, struct err *e);

/*
 * RFC 3394 unwrap. in_len must be a multiple of 8 and at least 24 (HBC_EINVAL
 * otherwise); out receives in_len - 8 bytes (out_cap at least that). A failed
 * integrity check (wrong KEK or altered input) returns HBC_EAUTH with out wiped.
 */
int crypto_kw_unwrap(const uint8_t kek[CRYPTO_KEY_LEN], const uint8_t *in, size_t in_len,
                     uint8_t *out, size_t out_cap, size_t *out_len, struct err *e);

/* Length of the RFC 5649 wrapping of in_len bytes: in_len rounded up to 8, plus 8. */
size_t crypto_kwp_wrapped_len(size_t in_len);

/*
 * AES-256 key wrap with padding, RFC 5649 (EVP "AES-256-WRAP-PAD"). in_len
 * is 1 to 2^31 - 1; out_cap must be at least crypto_kwp_wrapped_len(in_len).
 */
int crypto_kwp_wrap(const uint8_t kek[CRYPTO_KEY_LEN], const uint8_t *in, size_t in_len,
                    uint8_t *out, size_t out_cap, size_t *out_len, struct err *e);

/*
 * RFC 5649 unwrap. in_len must be a multiple of 8 and at least 16 (HBC_EINVAL
 * otherwise); out_cap must be at least in_len - 8, and *out_len receives the
 * unpadded length. A failed integrity or padding check returns HBC_EAUTH
 * with out wiped.
 */
int crypto_kwp_unwrap(const uint8_t kek[CRYPTO_KEY_LEN], const uint8_t *in, size_t in_len,
                      uint8_t *out, size_t out_cap, size_t *out_len, struct err *e);

/*
 * An HMAC-SHA-256 context bound to one key, initialised once (EVP_MAC) and
 * re-initialised cheaply per message, for chunk ids:
 *
 *     chunk id = HMAC-SHA-256(vault chunk-id key, chunk plaintext)
 *
 * One thread at a time; crypto_hmac_dup() gives another thread its own copy.
 */
struct crypto_hmac;

/* Key a new context with key (key_len >= 1; copied) into *out. */
int crypto_hmac_new(struct crypto_hmac **out, const uint8_t *key, size_t key_len, struct err *e);

/* A copy of h, with the same key, for use by another thread. */
int crypto_hmac_dup(struct crypto_hmac **out, const struct crypto_hmac *h, struct err *e);

/* Free h and cleanse its key state. NULL is a no-op. */
void crypto_hmac_free(struct crypto_hmac *h);

/* out = HMAC-SHA-256(h's key, data). data may be NULL when len is 0. */
int crypto_hmac_compute(struct crypto_hmac *h, const void *data, size_t len,
                        uint8_t out[CRYPTO_SHA256_LEN], struct err *e);

/* Constant-time comparison: 1 if the n bytes at a and b are equal, else 0. */
int crypto_equal(const void *a, const void *b, size_t n);

/* Overwrite n bytes at p with zeros in a way the compiler keeps (OPENSSL_cleanse). */
void crypto_wipe(void *p, size_t n);

#endif /* HBC_COMMON_CRYPTO_H */
