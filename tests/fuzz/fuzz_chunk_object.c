/* libFuzzer target: chunk_object_peek() and chunk_object_open() on an object read back from shards.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <isa-l.h>

#include "common/chunk_object.h"
#include "common/crypto.h"
#include "fuzz.h"

/*
 * Each input is opened three times: as it is; with its header CRC32C made
 * right (random bytes rarely carry one), so that the protobuf header and the
 * length checks are reached; and, in addition, with the bytes after the
 * nonce encrypted and tagged under the fuzzer's own key, so that hostile
 * zstd frames reach the decompressor as if an authorised writer had sealed
 * them. The key, vault id and chunk id are fixed; fuzz_seeds seals its seeds
 * with the same ones (FUZZ_DATA_KEY).
 */

#include "fuzz_keys.h"

static struct chunk_ctx *ctx;
static struct chunk_key key;
static uint8_t *out;
static uint8_t gcm_key[CRYPTO_KEY_LEN];

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    FUZZ_CHECK(chunk_ctx_new(&ctx, NULL) == 0);
    FUZZ_CHECK(chunk_key_init(&key, fuzz_data_key, FUZZ_KEY_GENERATION, NULL) == 0);
    FUZZ_CHECK(crypto_derive(fuzz_data_key, CRYPTO_LABEL_CHUNK_OBJECT_KEY, gcm_key, sizeof gcm_key,
                             NULL) == 0);
    out = malloc(CHUNK_OBJECT_MAX_PLAINTEXT);
    FUZZ_CHECK(out != NULL);
    return 0;
}

static void open_one(const uint8_t *obj, size_t size)
{
    struct chunk_object_info info;
    struct err e;
    err_clear(&e);
    int peeked = chunk_object_peek(obj, size, &info, &e);
    if (peeked != 0) {
        fuzz_check_error(peeked, &e);
    } else {
        FUZZ_CHECK(info.plaintext_length <= CHUNK_OBJECT_MAX_PLAINTEXT);
    }
    size_t n = 0;
    err_clear(&e);
    int rc = chunk_object_open(ctx, &key, fuzz_vault_id, fuzz_chunk_id, obj, size, out,
                               CHUNK_OBJECT_MAX_PLAINTEXT, &n, &e);
    if (rc != 0) {
        fuzz_check_error(rc, &e);
        return;
    }
    /* Whatever opens passed every framing check, and has the length it announced. */
    FUZZ_CHECK(peeked == 0);
    FUZZ_CHECK(n == info.plaintext_length);
}

static uint32_t get_be16(const uint8_t *p)
{
    return (uint32_t)p[0] << 8 | p[1];
}

static void put_be32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    open_one(data, size);

    if (size < CHUNK_OBJECT_PREFIX_LEN) {
        return 0;
    }
    size_t hl = get_be16(data + 5);
    size_t crc_off = CHUNK_OBJECT_PREFIX_LEN + hl;
    size_t nonce_off = crc_off + CHUNK_OBJECT_CRC_LEN;
    size_t payload_off = nonce_off + CRYPTO_GCM_NONCE_LEN;
    if (size < nonce_off) {
        return 0;
    }
    uint8_t *copy = malloc(size);
    FUZZ_CHECK(copy != NULL);
    memcpy(copy, data, size);
    put_be32(copy + crc_off, ~crc32_iscsi(copy, (int)crc_off, 0xFFFFFFFFu));
    open_one(copy, size);

    if (size >= payload_off + CRYPTO_GCM_TAG_LEN) {
        /* Associated data: prefix and header, then the vault id and the chunk id. */
        size_t aad_len = crc_off + sizeof fuzz_vault_id + sizeof fuzz_chunk_id;
        uint8_t *aad = malloc(aad_len);
        FUZZ_CHECK(aad != NULL);
        memcpy(aad, copy, crc_off);
        memcpy(aad + crc_off, fuzz_vault_id, sizeof fuzz_vault_id);
        memcpy(aad + crc_off + sizeof fuzz_vault_id, fuzz_chunk_id, sizeof fuzz_chunk_id);
        size_t p = size - payload_off - CRYPTO_GCM_TAG_LEN;
        FUZZ_CHECK(crypto_gcm_encrypt(NULL, gcm_key, copy + nonce_off, aad, aad_len,
                                      copy + payload_off, p, copy + payload_off,
                                      copy + payload_off + p, NULL) == 0);
        free(aad);
        open_one(copy, size);
    }
    free(copy);
    return 0;
}
