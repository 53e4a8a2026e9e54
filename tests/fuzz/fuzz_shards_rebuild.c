/* libFuzzer target: erasure_shards_rebuild() on a set of shards fetched from several nodes. */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>

#include "common/alloc.h"
#include "common/erasure.h"
#include "fuzz.h"

/*
 * Input: a first byte of flags, then blobs, each a 2-byte big-endian length
 * and that many bytes (a short last blob takes what is left). Flag bit 0:
 * make each blob's trailing SHA-256 right, so that blobs get past the
 * checksum and the rebuild logic itself is exercised. Flag bit 1: pass the
 * vault and chunk ids of the first blob as the ids asked for.
 */
#define MAX_BLOBS (2 * ERASURE_MAX_SHARDS)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1) {
        return 0;
    }
    uint8_t flags = data[0];
    uint8_t *blobs[MAX_BLOBS];
    size_t lengths[MAX_BLOBS];
    size_t count = 0, pos = 1;
    while (pos + 2 <= size && count < MAX_BLOBS) {
        size_t len = (size_t)data[pos] << 8 | data[pos + 1];
        pos += 2;
        len = len < size - pos ? len : size - pos;
        blobs[count] = malloc(len > 0 ? len : 1);
        FUZZ_CHECK(blobs[count] != NULL);
        memcpy(blobs[count], data + pos, len);
        if ((flags & 1) && len >= ERASURE_SHARD_TRAILER) {
            size_t body = len - ERASURE_SHARD_TRAILER;
            FUZZ_CHECK(
                EVP_Digest(blobs[count], body, blobs[count] + body, NULL, EVP_sha256(), NULL) == 1);
        }
        lengths[count++] = len;
        pos += len;
    }

    struct erasure_shard_info first;
    bool have_ids = (flags & 2) && count > 0 &&
                    erasure_shard_decode(blobs[0], lengths[0], &first, NULL, NULL) == 0;
    uint8_t *object = NULL;
    size_t object_length = 0;
    struct err e;
    err_clear(&e);
    int rc = erasure_shards_rebuild((const uint8_t *const *)blobs, lengths, count,
                                    have_ids ? first.vault_id : NULL,
                                    have_ids ? first.chunk_id : NULL, &object, &object_length, &e);
    if (rc == 0) {
        FUZZ_CHECK(object != NULL);
        FUZZ_CHECK(object_length >= 1 && object_length <= ERASURE_MAX_OBJECT);
        /* Touch every byte, so that ASan sees a short buffer. */
        volatile uint8_t x = 0;
        for (size_t i = 0; i < object_length; i++) {
            x ^= object[i];
        }
        (void)x;
        hbc_free(object);
    } else {
        fuzz_check_error(rc, &e);
    }
    for (size_t i = 0; i < count; i++) {
        free(blobs[i]);
    }
    return 0;
}
