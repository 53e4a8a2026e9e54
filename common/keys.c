/* Key files (scrypt + AES-256-GCM around the KEK) and RFC 5649 wrapping of vault keys (see keys.h).
 */
#include "common/keys.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/alloc.h"

/* Field offsets of a version 1 key file. */
#define OFF_VERSION 4
#define OFF_LOG2_N 5
#define OFF_R 6
#define OFF_P 10
#define OFF_SALT 14
#define OFF_NONCE (OFF_SALT + KEYFILE_SALT_LEN)
#define OFF_CT (OFF_NONCE + CRYPTO_GCM_NONCE_LEN)
#define OFF_TAG (OFF_CT + CRYPTO_KEY_LEN)
#define OFF_SUM (OFF_TAG + CRYPTO_GCM_TAG_LEN)
#define MIN_CHECKED (OFF_VERSION + 1 + CRYPTO_SHA256_LEN) /* shortest buffer worth a checksum */
#define MAX_PASS 65536

_Static_assert(OFF_SUM + CRYPTO_SHA256_LEN == KEYFILE_LEN, "key file layout");

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

/* Bytes scrypt needs for these parameters (OpenSSL's own count: V plus B). */
static uint64_t scrypt_memory(const struct keyfile_params *params)
{
    uint64_t n = (uint64_t)1 << params->log2_n;
    return 128 * (uint64_t)params->r * (n + 2 + params->p);
}

int keyfile_params_check(const struct keyfile_params *params, struct err *e)
{
    if (params->log2_n == 0 || params->r == 0 || params->p == 0) {
        return err_set(e, HBC_EINVAL, "scrypt log2(N) %u, r %u, p %u: none may be 0",
                       params->log2_n, params->r, params->p);
    }
    if (params->log2_n > KEYFILE_MAX_LOG2_N || params->r > KEYFILE_MAX_R ||
        params->p > KEYFILE_MAX_P) {
        return err_set(e, HBC_ETOOBIG, "scrypt log2(N) %u, r %u, p %u: limits are %d, %d and %d",
                       params->log2_n, params->r, params->p, KEYFILE_MAX_LOG2_N, KEYFILE_MAX_R,
                       KEYFILE_MAX_P);
    }
    uint64_t mem = scrypt_memory(params);
    if (mem > KEYFILE_MAX_MEMORY) {
        return err_set(e, HBC_ETOOBIG, "scrypt parameters need %llu MiB, limit %llu MiB",
                       (unsigned long long)(mem >> 20),
                       (unsigned long long)(KEYFILE_MAX_MEMORY >> 20));
    }
    uint64_t work = ((uint64_t)1 << params->log2_n) * params->r * params->p;
    if (work > KEYFILE_MAX_WORK) {
        return err_set(e, HBC_ETOOBIG, "scrypt work N*r*p = %llu exceeds %llu",
                       (unsigned long long)work, (unsigned long long)KEYFILE_MAX_WORK);
    }
    return 0;
}

static int check_pass(size_t pass_len, struct err *e)
{
    if (pass_len == 0 || pass_len > MAX_PASS) {
        return err_set(e, HBC_EINVAL, "passphrase of %zu bytes (1 to %d accepted)", pass_len,
                       MAX_PASS);
    }
    return 0;
}

/* The AES-256-GCM key that seals the KEK: HKDF(scrypt(pass, salt), "hbc v1 keyfile wrap"). */
static int wrap_key(const void *pass, size_t pass_len, const uint8_t *salt,
                    const struct keyfile_params *params, uint8_t key[CRYPTO_KEY_LEN], struct err *e)
{
    uint8_t stretched[CRYPTO_KEY_LEN];
    int rc = crypto_scrypt(pass, pass_len, salt, KEYFILE_SALT_LEN, (uint64_t)1 << params->log2_n,
                           params->r, params->p, scrypt_memory(params) + (64u << 10), stretched,
                           sizeof stretched, e);
    if (rc == 0) {
        rc = crypto_derive(stretched, CRYPTO_LABEL_KEYFILE_WRAP, key, CRYPTO_KEY_LEN, e);
    }
    crypto_wipe(stretched, sizeof stretched);
    return rc;
}

int keyfile_encode(const uint8_t kek[CRYPTO_KEY_LEN], const void *pass, size_t pass_len,
                   const struct keyfile_params *params, uint8_t out[KEYFILE_LEN], struct err *e)
{
    struct keyfile_params def = KEYFILE_PARAMS_DEFAULT;
    if (params == NULL) {
        params = &def;
    }
    int rc = check_pass(pass_len, e);
    if (rc == 0) {
        rc = keyfile_params_check(params, e);
    }
    if (rc != 0) {
        err_wrap(e, "encode key file");
        return rc;
    }
    memcpy(out, KEYFILE_MAGIC, 4);
    out[OFF_VERSION] = KEYFILE_VERSION;
    out[OFF_LOG2_N] = params->log2_n;
    put_be32(out + OFF_R, params->r);
    put_be32(out + OFF_P, params->p);
    uint8_t key[CRYPTO_KEY_LEN];
    rc = crypto_random(out + OFF_SALT, KEYFILE_SALT_LEN + CRYPTO_GCM_NONCE_LEN, e);
    if (rc == 0) {
        rc = wrap_key(pass, pass_len, out + OFF_SALT, params, key, e);
    }
    if (rc == 0) {
        rc = crypto_gcm_encrypt(NULL, key, out + OFF_NONCE, out, OFF_NONCE, kek, CRYPTO_KEY_LEN,
                                out + OFF_CT, out + OFF_TAG, e);
    }
    if (rc == 0) {
        rc = crypto_sha256(out, OFF_SUM, out + OFF_SUM, e);
    }
    crypto_wipe(key, sizeof key);
    if (rc != 0) {
        crypto_wipe(out, KEYFILE_LEN);
        err_wrap(e, "encode key file");
    }
    return rc;
}

/* The framing and checksum checks of keyfile_decode (no passphrase needed). */
static int keyfile_check(const uint8_t *buf, size_t len, struct keyfile_params *params,
                         struct err *e)
{
    if (len > KEYFILE_MAX_READ) {
        return err_set(e, HBC_ETOOBIG, "%zu bytes, more than any key file (%d)", len,
                       KEYFILE_MAX_READ);
    }
    int looks_v1 = len > OFF_VERSION && memcmp(buf, KEYFILE_MAGIC, 4) == 0 &&
                   buf[OFF_VERSION] == KEYFILE_VERSION;
    if (len < MIN_CHECKED || (looks_v1 && len < KEYFILE_LEN)) {
        return err_set(e, HBC_ETRUNCATED, "%zu bytes, a key file has %d", len, KEYFILE_LEN);
    }
    uint8_t sum[CRYPTO_SHA256_LEN];
    int rc = crypto_sha256(buf, len - CRYPTO_SHA256_LEN, sum, e);
    if (rc != 0) {
        return rc;
    }
    if (!crypto_equal(sum, buf + len - CRYPTO_SHA256_LEN, sizeof sum)) {
        return err_set(e, HBC_ECORRUPT, "checksum mismatch: the file is damaged");
    }
    if (memcmp(buf, KEYFILE_MAGIC, 4) != 0) {
        return err_set(e, HBC_EFORMAT, "not an HBC key file (bad magic)");
    }
    if (buf[OFF_VERSION] != KEYFILE_VERSION) {
        return err_set(e, HBC_EVERSION, "key file format version %u (this build reads %d)",
                       buf[OFF_VERSION], KEYFILE_VERSION);
    }
    if (len != KEYFILE_LEN) {
        return err_set(e, HBC_EFORMAT, "%zu bytes, a version %d key file has %d", len,
                       KEYFILE_VERSION, KEYFILE_LEN);
    }
    params->log2_n = buf[OFF_LOG2_N];
    params->r = get_be32(buf + OFF_R);
    params->p = get_be32(buf + OFF_P);
    rc = keyfile_params_check(params, e);
    if (rc == HBC_EINVAL) {
        rc = err_set(e, HBC_EFORMAT, "scrypt parameter of 0 in the file");
    }
    return rc;
}

int keyfile_decode(const uint8_t *buf, size_t len, const void *pass, size_t pass_len,
                   uint8_t kek[CRYPTO_KEY_LEN], struct err *e)
{
    struct keyfile_params params;
    int rc = check_pass(pass_len, e);
    if (rc == 0) {
        rc = keyfile_check(buf, len, &params, e);
    }
    if (rc != 0) {
        crypto_wipe(kek, CRYPTO_KEY_LEN);
        err_wrap(e, "key file");
        return rc;
    }
    uint8_t key[CRYPTO_KEY_LEN];
    rc = wrap_key(pass, pass_len, buf + OFF_SALT, &params, key, e);
    if (rc == 0) {
        rc = crypto_gcm_decrypt(NULL, key, buf + OFF_NONCE, buf, OFF_NONCE, buf + OFF_CT,
                                CRYPTO_KEY_LEN, kek, buf + OFF_TAG, e);
        if (rc == HBC_EAUTH) {
            rc = err_set(e, HBC_EPASSPHRASE, "the passphrase does not open this key file");
        }
    }
    crypto_wipe(key, sizeof key);
    if (rc != 0) {
        crypto_wipe(kek, CRYPTO_KEY_LEN);
        err_wrap(e, "key file");
    }
    return rc;
}

/* ---- Files ---------------------------------------------------------------- */

static int write_all(int fd, const uint8_t *p, size_t n)
{
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w < 0) {
            if (errno == EINTR) {
                continue;
            }
            return -errno;
        }
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

/* fsync the directory holding path, so that a rename in it is durable. */
static int sync_parent(const char *path, struct err *e)
{
    char dir[PATH_MAX];
    const char *slash = strrchr(path, '/');
    if (slash == NULL) {
        snprintf(dir, sizeof dir, ".");
    } else if (slash == path) {
        snprintf(dir, sizeof dir, "/");
    } else {
        snprintf(dir, sizeof dir, "%.*s", (int)(slash - path), path);
    }
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) {
        return err_set(e, -errno, "open directory %s", dir);
    }
    int rc = fsync(fd) == 0 ? 0 : -errno;
    close(fd);
    return rc == 0 ? 0 : err_set(e, rc, "fsync directory %s", dir);
}

/*
 * Write data to path atomically: a 0600 temporary file beside it, fsync,
 * rename (over path if replace, else only if path does not exist), fsync of
 * the directory. The temporary file is removed on failure.
 */
static int write_atomic(const char *path, const uint8_t *data, size_t len, int replace,
                        struct err *e)
{
    char tmp[PATH_MAX];
    if ((size_t)snprintf(tmp, sizeof tmp, "%s.tmp-XXXXXX", path) >= sizeof tmp) {
        return err_set(e, -ENAMETOOLONG, "key file path");
    }
    int fd = mkostemp(tmp, O_CLOEXEC);
    if (fd < 0) {
        return err_set(e, -errno, "create temporary file for %s", path);
    }
    int rc = fchmod(fd, 0600) == 0 ? 0 : -errno;
    if (rc == 0) {
        rc = write_all(fd, data, len);
    }
    if (rc == 0 && fsync(fd) != 0) {
        rc = -errno;
    }
    if (close(fd) != 0 && rc == 0) {
        rc = -errno;
    }
    if (rc != 0) {
        unlink(tmp);
        return err_set(e, rc, "write %s", tmp);
    }
    if (replace) {
        rc = rename(tmp, path) == 0 ? 0 : -errno;
    } else {
        rc = renameat2(AT_FDCWD, tmp, AT_FDCWD, path, RENAME_NOREPLACE) == 0 ? 0 : -errno;
        if (rc == -EINVAL || rc == -ENOSYS) {
            /* The filesystem lacks RENAME_NOREPLACE: link() refuses an existing name too. */
            rc = link(tmp, path) == 0 ? 0 : -errno;
        }
    }
    unlink(tmp); /* after a rename it is gone already; after link() it is the second name */
    if (rc == -EEXIST) {
        return err_set(e, HBC_EEXIST, "key file %s", path);
    }
    if (rc != 0) {
        return err_set(e, rc, "rename %s", tmp);
    }
    return sync_parent(path, e);
}

/* Read the whole file at path (at most KEYFILE_MAX_READ bytes) into buf. */
static int read_file(const char *path, uint8_t buf[KEYFILE_MAX_READ + 1], size_t *len,
                     struct err *e)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        return err_set(e, -errno, "open key file %s", path);
    }
    size_t n = 0;
    int rc = 0;
    /* Read one byte past the limit, to know that a file exceeds it. */
    while (n < KEYFILE_MAX_READ + 1) {
        ssize_t r = read(fd, buf + n, KEYFILE_MAX_READ + 1 - n);
        if (r < 0) {
            if (errno == EINTR) {
                continue;
            }
            rc = err_set(e, -errno, "read key file %s", path);
            break;
        }
        if (r == 0) {
            break;
        }
        n += (size_t)r;
    }
    close(fd);
    *len = n;
    return rc;
}

int keyfile_create(const char *path, const void *pass, size_t pass_len,
                   const struct keyfile_params *params, uint8_t kek_out[CRYPTO_KEY_LEN],
                   struct err *e)
{
    uint8_t kek[CRYPTO_KEY_LEN];
    uint8_t file[KEYFILE_LEN];
    int rc = keys_generate(kek, e);
    if (rc == 0) {
        rc = keyfile_encode(kek, pass, pass_len, params, file, e);
    }
    if (rc == 0) {
        rc = write_atomic(path, file, sizeof file, 0, e);
    }
    if (rc == 0 && kek_out != NULL) {
        memcpy(kek_out, kek, sizeof kek);
    }
    crypto_wipe(kek, sizeof kek);
    if (rc != 0) {
        err_wrap(e, "create key file");
    }
    return rc;
}

int keyfile_load(const char *path, const void *pass, size_t pass_len, uint8_t kek[CRYPTO_KEY_LEN],
                 struct err *e)
{
    uint8_t buf[KEYFILE_MAX_READ + 1];
    size_t len = 0;
    int rc = read_file(path, buf, &len, e);
    if (rc == 0) {
        rc = keyfile_decode(buf, len, pass, pass_len, kek, e);
        if (rc != 0) {
            err_wrap(e, "%s", path);
        }
    }
    if (rc != 0) {
        err_wrap(e, "load key file");
    }
    return rc;
}

int keyfile_change_passphrase(const char *path, const void *old_pass, size_t old_len,
                              const void *new_pass, size_t new_len,
                              const struct keyfile_params *params, struct err *e)
{
    uint8_t kek[CRYPTO_KEY_LEN];
    uint8_t file[KEYFILE_LEN];
    int rc = keyfile_load(path, old_pass, old_len, kek, e);
    if (rc == 0) {
        rc = keyfile_encode(kek, new_pass, new_len, params, file, e);
    }
    if (rc == 0) {
        rc = write_atomic(path, file, sizeof file, 1, e);
    }
    crypto_wipe(kek, sizeof kek);
    if (rc != 0) {
        err_wrap(e, "change passphrase");
    }
    return rc;
}

/* ---- Vault keys ----------------------------------------------------------- */

int keys_generate(uint8_t key[CRYPTO_KEY_LEN], struct err *e)
{
    int rc = crypto_random(key, CRYPTO_KEY_LEN, e);
    if (rc != 0) {
        err_wrap(e, "generate key");
    }
    return rc;
}

int keys_wrap(const uint8_t kek[CRYPTO_KEY_LEN], const uint8_t key[CRYPTO_KEY_LEN],
              uint8_t wrapped[KEYS_WRAPPED_LEN], struct err *e)
{
    size_t n = 0;
    int rc = crypto_kwp_wrap(kek, key, CRYPTO_KEY_LEN, wrapped, KEYS_WRAPPED_LEN, &n, e);
    if (rc == 0 && n != KEYS_WRAPPED_LEN) {
        rc = err_set(e, HBC_EINTERNAL, "wrapped key of %zu bytes", n);
    }
    if (rc != 0) {
        err_wrap(e, "wrap key");
    }
    return rc;
}

int keys_unwrap(const uint8_t kek[CRYPTO_KEY_LEN], const uint8_t *wrapped, size_t wrapped_len,
                uint8_t key[CRYPTO_KEY_LEN], struct err *e)
{
    if (wrapped_len != KEYS_WRAPPED_LEN) {
        crypto_wipe(key, CRYPTO_KEY_LEN);
        return err_set(e, HBC_EFORMAT, "unwrap key: wrapped key of %zu bytes (expected %d)",
                       wrapped_len, KEYS_WRAPPED_LEN);
    }
    size_t n = 0;
    int rc = crypto_kwp_unwrap(kek, wrapped, wrapped_len, key, CRYPTO_KEY_LEN, &n, e);
    if (rc == HBC_EAUTH) {
        rc = err_set(e, HBC_EWRONGKEY,
                     "unwrap key: integrity check failed (another KEK, or a damaged wrapped key)");
    } else if (rc == 0 && n != CRYPTO_KEY_LEN) {
        rc = err_set(e, HBC_EFORMAT, "unwrap key: unwrapped %zu bytes, not a 32-byte key", n);
    } else if (rc != 0) {
        err_wrap(e, "unwrap key");
    }
    if (rc != 0) {
        crypto_wipe(key, CRYPTO_KEY_LEN);
    }
    return rc;
}
