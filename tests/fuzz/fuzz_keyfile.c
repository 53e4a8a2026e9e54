/* libFuzzer target: keyfile_load() and keyfile_decode() on a key file from disk. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <openssl/evp.h>

#include "common/keys.h"
#include "fuzz.h"
#include "fuzz_keys.h"

/*
 * Each input is loaded from a file as it is, then decoded once more with
 * its trailing SHA-256 made right (random bytes never carry one), so that
 * the format, parameter and passphrase checks are reached. That second
 * decode is skipped when the file asks for scrypt work that the bounds allow
 * but that would take more than a few milliseconds: the point is to fuzz the
 * parser, not to run scrypt at N = 2^20 a million times.
 */

static char path[64];
static int fd = -1;

static void remove_file(void)
{
    if (fd >= 0) {
        close(fd);
        unlink(path);
    }
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    const char *dir = getenv("TMPDIR");
    snprintf(path, sizeof path, "%s/hbc-fuzz-keyfile-XXXXXX", dir != NULL ? dir : "/tmp");
    fd = mkstemp(path);
    FUZZ_CHECK(fd >= 0);
    atexit(remove_file);
    return 0;
}

static uint32_t get_be32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

/* True when decoding buf costs little: scrypt is cheap or the bounds refuse it first. */
static int cheap(const uint8_t *buf, size_t len)
{
    if (len < 14) {
        return 1;
    }
    unsigned log2_n = buf[5];
    uint64_t r = get_be32(buf + 6), p = get_be32(buf + 10);
    if (log2_n == 0 || r == 0 || p == 0 || log2_n > KEYFILE_MAX_LOG2_N || r > KEYFILE_MAX_R ||
        p > KEYFILE_MAX_P) {
        return 1;
    }
    uint64_t n = (uint64_t)1 << log2_n;
    uint64_t memory = 128 * r * (n + p + 2), work = n * r * p;
    if (memory > KEYFILE_MAX_MEMORY || work > KEYFILE_MAX_WORK) {
        return 1;
    }
    return work <= ((uint64_t)1 << 14);
}

static void check(int rc, const struct err *e, const uint8_t *kek)
{
    if (rc != 0) {
        fuzz_check_error(rc, e);
        /* A failed read leaves no key behind (kek starts zeroed, and wiping zeroes it). */
        static const uint8_t zero[CRYPTO_KEY_LEN];
        FUZZ_CHECK(memcmp(kek, zero, CRYPTO_KEY_LEN) == 0);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    FUZZ_CHECK(ftruncate(fd, 0) == 0);
    FUZZ_CHECK(pwrite(fd, data, size, 0) == (ssize_t)size);

    uint8_t kek[CRYPTO_KEY_LEN] = {0};
    struct err e;
    err_clear(&e);
    int rc = keyfile_load(path, FUZZ_PASSPHRASE, FUZZ_PASSPHRASE_LEN, kek, &e);
    check(rc, &e, kek);

    if (size < CRYPTO_SHA256_LEN || size > KEYFILE_MAX_READ) {
        return 0;
    }
    uint8_t *copy = malloc(size);
    FUZZ_CHECK(copy != NULL);
    memcpy(copy, data, size);
    size_t body = size - CRYPTO_SHA256_LEN;
    FUZZ_CHECK(EVP_Digest(copy, body, copy + body, NULL, EVP_sha256(), NULL) == 1);
    if (cheap(copy, size)) {
        err_clear(&e);
        memset(kek, 0, sizeof kek);
        rc = keyfile_decode(copy, size, FUZZ_PASSPHRASE, FUZZ_PASSPHRASE_LEN, kek, &e);
        check(rc, &e, kek);
    }
    free(copy);
    return 0;
}
