/* The customer's key encryption key (KEK) in a passphrase-protected key file, and vault keys
 * wrapped by it. */
#ifndef HBC_COMMON_KEYS_H
#define HBC_COMMON_KEYS_H

#include <stddef.h>
#include <stdint.h>

#include "common/crypto.h"
#include "common/err.h"

/*
 * Key file format, version 1: exactly KEYFILE_LEN (138) bytes, integers big-endian.
 *
 *   offset  size  field
 *   0       4     magic "HBCK"
 *   4       1     format version (1)
 *   5       1     scrypt log2(N)
 *   6       4     scrypt r
 *   10      4     scrypt p
 *   14      32    scrypt salt (random per write)
 *   46      12    GCM nonce (random per write)
 *   58      32    the KEK, encrypted with AES-256-GCM
 *   90      16    GCM tag; associated data = bytes 0..45 (magic to salt)
 *   106     32    SHA-256 of bytes 0..105: unkeyed, so that a damaged file is
 *                 told apart from a wrong passphrase
 *
 * The GCM key is HKDF(scrypt(passphrase, salt, N, r, p) [32 bytes],
 * CRYPTO_LABEL_KEYFILE_WRAP). Defaults: N = 2^15, r = 8, p = 1 (32 MiB, about
 * 0.1 s here). The checksum is always the file's last 32 bytes whatever the
 * version, so it is checked before anything else is trusted.
 *
 * Reading checks, in order:
 *   file larger than KEYFILE_MAX_READ                         HBC_ETOOBIG
 *   shorter than a whole v1 file (magic and version intact,
 *   or too short to tell)                                     HBC_ETRUNCATED
 *   SHA-256 mismatch (any flipped bit, anywhere)              HBC_ECORRUPT
 *   magic is not "HBCK"                                       HBC_EFORMAT
 *   version is not 1                                          HBC_EVERSION
 *   length is not 138 (bytes appended, checksum recomputed)   HBC_EFORMAT
 *   N, r or p is zero                                         HBC_EFORMAT
 *   scrypt parameters beyond KEYFILE_MAX_* (a hostile file
 *   asking for more memory or time than we grant)             HBC_ETOOBIG
 *   GCM tag fails                                             HBC_EPASSPHRASE
 *
 * Key material (the KEK, the scrypt output, derived keys) is wiped with
 * OPENSSL_cleanse before any buffer holding it is released; nothing here logs.
 */

#define KEYFILE_MAGIC "HBCK"
#define KEYFILE_VERSION 1
#define KEYFILE_LEN 138                        /* a version 1 file */
#define KEYFILE_MAX_READ 4096                  /* largest file we read at all */
#define KEYFILE_SALT_LEN 32                    /* scrypt salt */
#define KEYFILE_MAX_LOG2_N 24                  /* N at most 2^24 */
#define KEYFILE_MAX_R 32                       /* scrypt block size factor */
#define KEYFILE_MAX_P 16                       /* scrypt parallelism */
#define KEYFILE_MAX_MEMORY ((uint64_t)1 << 30) /* 128 * r * (N + p + 2) bytes, at most 1 GiB */
#define KEYFILE_MAX_WORK ((uint64_t)1 << 24)   /* N * r * p, 64 times the default */

/* scrypt cost parameters of a key file. */
struct keyfile_params {
    uint8_t log2_n; /* N = 2^log2_n; 1..KEYFILE_MAX_LOG2_N */
    uint32_t r;     /* block size factor; 1..KEYFILE_MAX_R */
    uint32_t p;     /* parallelism; 1..KEYFILE_MAX_P */
};

/* The parameters new key files get unless told otherwise: N = 2^15, r = 8, p = 1. */
#define KEYFILE_PARAMS_DEFAULT ((struct keyfile_params){.log2_n = 15, .r = 8, .p = 1})

/*
 * Check params against the bounds above: HBC_EINVAL for a zero, HBC_ETOOBIG
 * for a value, memory or work above its limit, else 0.
 */
int keyfile_params_check(const struct keyfile_params *params, struct err *e);

/*
 * Encode a key file holding kek (borrowed) under pass (pass_len bytes, 1 to
 * 65536, borrowed; any bytes) with params (NULL: KEYFILE_PARAMS_DEFAULT) into
 * out. Fresh salt and nonce each call. Returns 0, HBC_EINVAL, HBC_ETOOBIG or
 * HBC_ECRYPTO.
 */
int keyfile_encode(const uint8_t kek[CRYPTO_KEY_LEN], const void *pass, size_t pass_len,
                   const struct keyfile_params *params, uint8_t out[KEYFILE_LEN], struct err *e);

/*
 * Decode the key file in buf (len bytes, borrowed) with pass into kek.
 * Returns 0 or one of the codes listed above (kek is then wiped).
 */
int keyfile_decode(const uint8_t *buf, size_t len, const void *pass, size_t pass_len,
                   uint8_t kek[CRYPTO_KEY_LEN], struct err *e);

/*
 * Create a key file at path holding a new random KEK, protected by pass.
 * Atomic: written to a temporary file beside path with mode 0600, fsynced,
 * then renamed into place only if path does not exist (HBC_EEXIST otherwise:
 * an existing KEK is never overwritten), and the directory fsynced. If kek_out
 * is not NULL it receives the KEK. Returns 0, HBC_EEXIST, -errno for system
 * errors, or a code of keyfile_encode().
 */
int keyfile_create(const char *path, const void *pass, size_t pass_len,
                   const struct keyfile_params *params, uint8_t kek_out[CRYPTO_KEY_LEN],
                   struct err *e);

/*
 * Read the key file at path and decode it with pass into kek. Returns 0,
 * -errno (e.g. -ENOENT), or a code of keyfile_decode().
 */
int keyfile_load(const char *path, const void *pass, size_t pass_len, uint8_t kek[CRYPTO_KEY_LEN],
                 struct err *e);

/*
 * Re-protect the KEK in the key file at path under new_pass, with params
 * (NULL: KEYFILE_PARAMS_DEFAULT), after checking old_pass. The KEK itself is
 * unchanged, so every wrapped vault key stays valid. Atomic (temporary file,
 * fsync, rename over path, directory fsync): a crash leaves either the old or
 * the new file. Not safe against a concurrent change of the same file.
 * Returns 0, a code of keyfile_load() (HBC_EPASSPHRASE for a wrong old_pass),
 * or a code of keyfile_encode().
 */
int keyfile_change_passphrase(const char *path, const void *old_pass, size_t old_len,
                              const void *new_pass, size_t new_len,
                              const struct keyfile_params *params, struct err *e);

/*
 * Vault keys: each vault has one random 32-byte data key per key generation
 * and one random 32-byte chunk-id key. They are stored only wrapped by the
 * KEK with AES-256 key wrap with padding (RFC 5649), KEYS_WRAPPED_LEN bytes.
 */
#define KEYS_WRAPPED_LEN 40

/* A new random 32-byte key (a data key or a chunk-id key) into key. */
int keys_generate(uint8_t key[CRYPTO_KEY_LEN], struct err *e);

/* Wrap the 32-byte key with kek (RFC 5649) into wrapped. Returns 0 or HBC_ECRYPTO. */
int keys_wrap(const uint8_t kek[CRYPTO_KEY_LEN], const uint8_t key[CRYPTO_KEY_LEN],
              uint8_t wrapped[KEYS_WRAPPED_LEN], struct err *e);

/*
 * Unwrap wrapped (wrapped_len bytes, borrowed) with kek into key. Returns 0;
 * HBC_EFORMAT if wrapped_len is not KEYS_WRAPPED_LEN or the content is not a
 * 32-byte key; HBC_EWRONGKEY if the integrity check fails (a different KEK,
 * or a damaged wrapped key: RFC 5649 cannot tell them apart). key is wiped on
 * failure.
 */
int keys_unwrap(const uint8_t kek[CRYPTO_KEY_LEN], const uint8_t *wrapped, size_t wrapped_len,
                uint8_t key[CRYPTO_KEY_LEN], struct err *e);

#endif /* HBC_COMMON_KEYS_H */
