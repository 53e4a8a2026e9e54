/* Unit tests for common/keys: key files (create, load, damage, hostile parameters, passphrase
 * change) and vault key wrapping. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "common/crypto.h"
#include "common/keys.h"

/* Cheap scrypt parameters so that tests (and ASan runs) stay quick; the defaults are tested once.
 */
static const struct keyfile_params small = {.log2_n = 4, .r = 1, .p = 1};

#define PASS "correct horse battery staple"

struct fixture {
    char dir[64];   /* a fresh temporary directory */
    char path[128]; /* dir/kek */
};

static int setup(void **state)
{
    struct fixture *f = calloc(1, sizeof *f);
    assert_non_null(f);
    snprintf(f->dir, sizeof f->dir, "/tmp/hbc-test-keys-XXXXXX");
    assert_non_null(mkdtemp(f->dir));
    snprintf(f->path, sizeof f->path, "%s/kek", f->dir);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    struct fixture *f = *state;
    DIR *d = opendir(f->dir);
    assert_non_null(d);
    struct dirent *de;
    char p[512];
    while ((de = readdir(d)) != NULL) {
        if (strcmp(de->d_name, ".") != 0 && strcmp(de->d_name, "..") != 0) {
            snprintf(p, sizeof p, "%s/%s", f->dir, de->d_name);
            unlink(p);
        }
    }
    closedir(d);
    assert_int_equal(rmdir(f->dir), 0);
    free(f);
    return 0;
}

static int files_in(const char *dir)
{
    DIR *d = opendir(dir);
    assert_non_null(d);
    int n = 0;
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        n += strcmp(de->d_name, ".") != 0 && strcmp(de->d_name, "..") != 0;
    }
    closedir(d);
    return n;
}

static size_t read_whole(const char *path, uint8_t *buf, size_t cap)
{
    FILE *fp = fopen(path, "rb");
    assert_non_null(fp);
    size_t n = fread(buf, 1, cap, fp);
    fclose(fp);
    return n;
}

static void write_whole(const char *path, const uint8_t *buf, size_t len)
{
    FILE *fp = fopen(path, "wb");
    assert_non_null(fp);
    assert_int_equal(fwrite(buf, 1, len, fp), len);
    assert_int_equal(fclose(fp), 0);
}

/* Recompute the trailing SHA-256 of a key file image, as a forger would. */
static void reseal_checksum(uint8_t *buf, size_t len)
{
    assert_int_equal(crypto_sha256(buf, len - 32, buf + len - 32, NULL), 0);
}

static int decode(const uint8_t *buf, size_t len, const char *pass, struct err *e)
{
    uint8_t kek[CRYPTO_KEY_LEN];
    err_clear(e);
    int rc = keyfile_decode(buf, len, pass, strlen(pass), kek, e);
    if (rc != 0) {
        assert_int_equal(e->code, rc);
        assert_true(strlen(e->msg) > 10);
    }
    return rc;
}

/* ---- Key files ------------------------------------------------------------ */

static void test_create_and_load(void **state)
{
    struct fixture *f = *state;
    uint8_t kek[CRYPTO_KEY_LEN], loaded[CRYPTO_KEY_LEN];
    struct err e;
    err_clear(&e);
    assert_int_equal(keyfile_create(f->path, PASS, strlen(PASS), &small, kek, &e), 0);
    assert_int_equal(keyfile_load(f->path, PASS, strlen(PASS), loaded, &e), 0);
    assert_memory_equal(kek, loaded, sizeof kek);

    struct stat st;
    assert_int_equal(stat(f->path, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0600);
    assert_int_equal(st.st_size, KEYFILE_LEN);
    assert_int_equal(files_in(f->dir), 1); /* no temporary file left behind */

    /* The KEK is not in the file in the clear. */
    uint8_t buf[KEYFILE_LEN];
    assert_int_equal(read_whole(f->path, buf, sizeof buf), KEYFILE_LEN);
    assert_null(memmem(buf, sizeof buf, kek, 8));
    assert_memory_equal(buf, "HBCK", 4);

    /* An existing key file is never overwritten. */
    uint8_t other[CRYPTO_KEY_LEN];
    err_clear(&e);
    assert_int_equal(keyfile_create(f->path, "x", 1, &small, other, &e), HBC_EEXIST);
    assert_true(e.msg[0] != '\0');
    assert_int_equal(files_in(f->dir), 1);
    assert_int_equal(keyfile_load(f->path, PASS, strlen(PASS), loaded, NULL), 0);
    assert_memory_equal(kek, loaded, sizeof kek);
}

static void test_default_parameters(void **state)
{
    struct fixture *f = *state;
    uint8_t kek[CRYPTO_KEY_LEN], loaded[CRYPTO_KEY_LEN];
    assert_int_equal(keyfile_create(f->path, PASS, strlen(PASS), NULL, kek, NULL), 0);
    uint8_t buf[KEYFILE_LEN];
    assert_int_equal(read_whole(f->path, buf, sizeof buf), KEYFILE_LEN);
    assert_int_equal(buf[5], 15); /* log2 N */
    assert_memory_equal(buf + 6, "\0\0\0\x08", 4);
    assert_memory_equal(buf + 10, "\0\0\0\x01", 4);
    assert_int_equal(keyfile_load(f->path, PASS, strlen(PASS), loaded, NULL), 0);
    assert_memory_equal(kek, loaded, sizeof kek);
    assert_int_equal(keyfile_load(f->path, "wrong", 5, loaded, NULL), HBC_EPASSPHRASE);
}

static void test_wrong_passphrase(void **state)
{
    struct fixture *f = *state;
    uint8_t kek[CRYPTO_KEY_LEN];
    assert_int_equal(keyfile_create(f->path, PASS, strlen(PASS), &small, NULL, NULL), 0);
    struct err e;
    err_clear(&e);
    memset(kek, 0x5a, sizeof kek);
    assert_int_equal(keyfile_load(f->path, PASS "!", strlen(PASS) + 1, kek, &e), HBC_EPASSPHRASE);
    assert_non_null(strstr(e.msg, "passphrase"));
    for (size_t i = 0; i < sizeof kek; i++) {
        assert_int_equal(kek[i], 0); /* wiped, not half-decrypted */
    }
    /* Passphrases are bytes: an embedded NUL is part of it. */
    static const char bin[] = {'a', '\0', 'b'};
    uint8_t file[KEYFILE_LEN];
    assert_int_equal(keyfile_encode(kek, bin, 3, &small, file, NULL), 0);
    assert_int_equal(keyfile_decode(file, sizeof file, bin, 3, kek, NULL), 0);
    assert_int_equal(keyfile_decode(file, sizeof file, bin, 1, kek, NULL), HBC_EPASSPHRASE);
    assert_int_equal(keyfile_encode(kek, "", 0, &small, file, NULL), HBC_EINVAL);
    err_clear(&e);
    assert_int_equal(keyfile_load(f->path, "", 0, kek, &e), HBC_EINVAL);
}

static void test_flipped_bit_anywhere_is_corrupt(void **state)
{
    (void)state;
    uint8_t kek[CRYPTO_KEY_LEN], file[KEYFILE_LEN];
    assert_int_equal(crypto_random(kek, sizeof kek, NULL), 0);
    assert_int_equal(keyfile_encode(kek, PASS, strlen(PASS), &small, file, NULL), 0);
    struct err e;
    for (size_t i = 0; i < sizeof file; i++) {
        for (int bit = 0; bit < 8; bit++) {
            file[i] ^= (uint8_t)(1u << bit);
            assert_int_equal(decode(file, sizeof file, PASS, &e), HBC_ECORRUPT);
            file[i] ^= (uint8_t)(1u << bit);
        }
    }
    assert_int_equal(decode(file, sizeof file, PASS, &e), 0);
}

static void test_flipped_bit_in_file_on_disk(void **state)
{
    struct fixture *f = *state;
    uint8_t kek[CRYPTO_KEY_LEN], buf[KEYFILE_LEN];
    assert_int_equal(keyfile_create(f->path, PASS, strlen(PASS), &small, NULL, NULL), 0);
    assert_int_equal(read_whole(f->path, buf, sizeof buf), KEYFILE_LEN);
    buf[70] ^= 0x04; /* inside the encrypted KEK */
    write_whole(f->path, buf, sizeof buf);
    struct err e;
    err_clear(&e);
    assert_int_equal(keyfile_load(f->path, PASS, strlen(PASS), kek, &e), HBC_ECORRUPT);
    assert_non_null(strstr(e.msg, f->path));
}

static void test_truncated(void **state)
{
    struct fixture *f = *state;
    uint8_t kek[CRYPTO_KEY_LEN], file[KEYFILE_LEN];
    assert_int_equal(crypto_random(kek, sizeof kek, NULL), 0);
    assert_int_equal(keyfile_encode(kek, PASS, strlen(PASS), &small, file, NULL), 0);
    struct err e;
    for (size_t n = 0; n < sizeof file; n++) {
        uint8_t *cut = malloc(n + 1); /* exactly n bytes, so that ASan sees over-reads */
        memcpy(cut, file, n);
        assert_int_equal(decode(cut, n, PASS, &e), HBC_ETRUNCATED);
        free(cut);
    }
    /* On disk, and an empty file. */
    write_whole(f->path, file, 100);
    assert_int_equal(keyfile_load(f->path, PASS, strlen(PASS), kek, NULL), HBC_ETRUNCATED);
    write_whole(f->path, file, 0);
    assert_int_equal(keyfile_load(f->path, PASS, strlen(PASS), kek, NULL), HBC_ETRUNCATED);
}

static void test_hostile_files(void **state)
{
    struct fixture *f = *state;
    uint8_t kek[CRYPTO_KEY_LEN], good[KEYFILE_LEN], buf[KEYFILE_LEN + 8];
    assert_int_equal(crypto_random(kek, sizeof kek, NULL), 0);
    assert_int_equal(keyfile_encode(kek, PASS, strlen(PASS), &small, good, NULL), 0);
    struct err e;

    /* Absurd scrypt parameters, with a valid checksum: refused before any work is done. */
    static const struct {
        uint8_t log2_n; /* N */
        uint32_t r;     /* r */
        uint32_t p;     /* p */
    } absurd[] = {
        {60, 8, 1},          /* N = 2^60 */
        {25, 1, 1},          /* just above the N limit */
        {20, 32, 1},         /* 4 GiB */
        {15, 0x80000000, 1}, /* r = 2^31 */
        {15, 8, 1000000},    /* p = 10^6 */
        {21, 2, 8},          /* 512 MiB is fine, but N*r*p = 2^25 */
    };
    for (size_t i = 0; i < sizeof absurd / sizeof absurd[0]; i++) {
        memcpy(buf, good, KEYFILE_LEN);
        buf[5] = absurd[i].log2_n;
        buf[6] = (uint8_t)(absurd[i].r >> 24);
        buf[7] = (uint8_t)(absurd[i].r >> 16);
        buf[8] = (uint8_t)(absurd[i].r >> 8);
        buf[9] = (uint8_t)absurd[i].r;
        buf[10] = (uint8_t)(absurd[i].p >> 24);
        buf[11] = (uint8_t)(absurd[i].p >> 16);
        buf[12] = (uint8_t)(absurd[i].p >> 8);
        buf[13] = (uint8_t)absurd[i].p;
        reseal_checksum(buf, KEYFILE_LEN);
        assert_int_equal(decode(buf, KEYFILE_LEN, PASS, &e), HBC_ETOOBIG);
    }
    /* Zero parameters. */
    memcpy(buf, good, KEYFILE_LEN);
    buf[5] = 0;
    reseal_checksum(buf, KEYFILE_LEN);
    assert_int_equal(decode(buf, KEYFILE_LEN, PASS, &e), HBC_EFORMAT);
    /* Another version, another magic, bytes appended: all with valid checksums. */
    memcpy(buf, good, KEYFILE_LEN);
    buf[4] = 2;
    reseal_checksum(buf, KEYFILE_LEN);
    assert_int_equal(decode(buf, KEYFILE_LEN, PASS, &e), HBC_EVERSION);
    memcpy(buf, good, KEYFILE_LEN);
    buf[3] = 'O';
    reseal_checksum(buf, KEYFILE_LEN);
    assert_int_equal(decode(buf, KEYFILE_LEN, PASS, &e), HBC_EFORMAT);
    memcpy(buf, good, KEYFILE_LEN);
    memset(buf + KEYFILE_LEN, 0, 8);
    reseal_checksum(buf, sizeof buf);
    assert_int_equal(decode(buf, sizeof buf, PASS, &e), HBC_EFORMAT);
    /* A parameter change without the passphrase: checksum fine, GCM refuses. */
    memcpy(buf, good, KEYFILE_LEN);
    buf[5] = 5;
    reseal_checksum(buf, KEYFILE_LEN);
    assert_int_equal(decode(buf, KEYFILE_LEN, PASS, &e), HBC_EPASSPHRASE);

    /* A huge file is not read whole. */
    uint8_t *big = calloc(1, 1 << 20);
    write_whole(f->path, big, 1 << 20);
    free(big);
    assert_int_equal(keyfile_load(f->path, PASS, strlen(PASS), kek, NULL), HBC_ETOOBIG);
    assert_int_equal(keyfile_load("/nonexistent/kek", PASS, strlen(PASS), kek, NULL), -ENOENT);

    /* Creating with out-of-range parameters is refused too. */
    uint8_t out[KEYFILE_LEN];
    struct keyfile_params p = {.log2_n = 30, .r = 8, .p = 1};
    assert_int_equal(keyfile_encode(kek, PASS, strlen(PASS), &p, out, NULL), HBC_ETOOBIG);
    p = (struct keyfile_params){.log2_n = 15, .r = 0, .p = 1};
    assert_int_equal(keyfile_encode(kek, PASS, strlen(PASS), &p, out, NULL), HBC_EINVAL);
}

static void test_change_passphrase(void **state)
{
    struct fixture *f = *state;
    uint8_t kek[CRYPTO_KEY_LEN], loaded[CRYPTO_KEY_LEN];
    assert_int_equal(keyfile_create(f->path, PASS, strlen(PASS), &small, kek, NULL), 0);
    struct err e;

    /* A wrong old passphrase changes nothing. */
    uint8_t before[KEYFILE_LEN], after[KEYFILE_LEN];
    assert_int_equal(read_whole(f->path, before, sizeof before), KEYFILE_LEN);
    err_clear(&e);
    assert_int_equal(keyfile_change_passphrase(f->path, "nope", 4, "new", 3, &small, &e),
                     HBC_EPASSPHRASE);
    assert_true(e.msg[0] != '\0');
    assert_int_equal(read_whole(f->path, after, sizeof after), KEYFILE_LEN);
    assert_memory_equal(before, after, KEYFILE_LEN);

    struct keyfile_params p2 = {.log2_n = 5, .r = 2, .p = 1};
    assert_int_equal(
        keyfile_change_passphrase(f->path, PASS, strlen(PASS), "new pass", 8, &p2, NULL), 0);
    assert_int_equal(keyfile_load(f->path, PASS, strlen(PASS), loaded, NULL), HBC_EPASSPHRASE);
    assert_int_equal(keyfile_load(f->path, "new pass", 8, loaded, NULL), 0);
    assert_memory_equal(kek, loaded, sizeof kek); /* the same KEK: wrapped keys stay valid */
    assert_int_equal(read_whole(f->path, after, sizeof after), KEYFILE_LEN);
    assert_int_equal(after[5], 5);
    struct stat st;
    assert_int_equal(stat(f->path, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0600);
    assert_int_equal(files_in(f->dir), 1);
}

/* ---- Vault keys ----------------------------------------------------------- */

static void test_wrap_unwrap(void **state)
{
    (void)state;
    uint8_t kek[CRYPTO_KEY_LEN], other[CRYPTO_KEY_LEN];
    uint8_t data_key[CRYPTO_KEY_LEN], id_key[CRYPTO_KEY_LEN], out[CRYPTO_KEY_LEN];
    uint8_t w1[KEYS_WRAPPED_LEN], w2[KEYS_WRAPPED_LEN];
    assert_int_equal(keys_generate(kek, NULL), 0);
    assert_int_equal(keys_generate(other, NULL), 0);
    assert_int_equal(keys_generate(data_key, NULL), 0);
    assert_int_equal(keys_generate(id_key, NULL), 0);
    assert_memory_not_equal(data_key, id_key, CRYPTO_KEY_LEN);

    assert_int_equal(keys_wrap(kek, data_key, w1, NULL), 0);
    assert_int_equal(keys_wrap(kek, id_key, w2, NULL), 0);
    assert_int_equal(keys_unwrap(kek, w1, sizeof w1, out, NULL), 0);
    assert_memory_equal(out, data_key, CRYPTO_KEY_LEN);
    assert_int_equal(keys_unwrap(kek, w2, sizeof w2, out, NULL), 0);
    assert_memory_equal(out, id_key, CRYPTO_KEY_LEN);

    struct err e;
    err_clear(&e);
    assert_int_equal(keys_unwrap(other, w1, sizeof w1, out, &e), HBC_EWRONGKEY);
    assert_true(e.msg[0] != '\0');
    for (size_t i = 0; i < sizeof out; i++) {
        assert_int_equal(out[i], 0);
    }
    for (size_t i = 0; i < sizeof w1; i++) {
        w1[i] ^= 0x20;
        assert_int_equal(keys_unwrap(kek, w1, sizeof w1, out, NULL), HBC_EWRONGKEY);
        w1[i] ^= 0x20;
    }
    assert_int_equal(keys_unwrap(kek, w1, sizeof w1 - 8, out, NULL), HBC_EFORMAT);
    assert_int_equal(keys_unwrap(kek, w1, 0, out, NULL), HBC_EFORMAT);

    /* A 40-byte wrapping of something that is not a 32-byte key. */
    uint8_t short_key[30] = {1, 2, 3};
    size_t wl;
    assert_int_equal(crypto_kwp_wrap(kek, short_key, sizeof short_key, w1, sizeof w1, &wl, NULL),
                     0);
    assert_int_equal(wl, KEYS_WRAPPED_LEN);
    assert_int_equal(keys_unwrap(kek, w1, wl, out, NULL), HBC_EFORMAT);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_create_and_load, setup, teardown),
        cmocka_unit_test_setup_teardown(test_default_parameters, setup, teardown),
        cmocka_unit_test_setup_teardown(test_wrong_passphrase, setup, teardown),
        cmocka_unit_test_setup_teardown(test_flipped_bit_anywhere_is_corrupt, setup, teardown),
        cmocka_unit_test_setup_teardown(test_flipped_bit_in_file_on_disk, setup, teardown),
        cmocka_unit_test_setup_teardown(test_truncated, setup, teardown),
        cmocka_unit_test_setup_teardown(test_hostile_files, setup, teardown),
        cmocka_unit_test_setup_teardown(test_change_passphrase, setup, teardown),
        cmocka_unit_test(test_wrap_unwrap),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
