/* libFuzzer target: erasure_shard_decode() on one shard as read from disk or the network. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>

#include "common/erasure.h"
#include "fuzz.h"

/* Check one decode's outcome: either an error with a message or a consistent shard. */
static void decode_one(const uint8_t *blob, size_t size)
{
    struct erasure_shard_info info;
    const uint8_t *payload = NULL;
    struct err e;
    err_clear(&e);
    int rc = erasure_shard_decode(blob, size, &info, &payload, &e);
    if (rc != 0) {
        fuzz_check_error(rc, &e);
        return;
    }
    FUZZ_CHECK(info.k >= 1 && info.k <= ERASURE_MAX_K && info.m <= ERASURE_MAX_M);
    FUZZ_CHECK(info.index < info.k + info.m);
    FUZZ_CHECK(info.object_length >= 1 && info.object_length <= ERASURE_MAX_OBJECT);
    FUZZ_CHECK(info.shard_length == erasure_shard_length(info.k, (size_t)info.object_length));
    FUZZ_CHECK(payload >= blob && info.shard_length <= size &&
               (size_t)(payload - blob) <= size - info.shard_length);
    /* The verdict alone must agree with the full decode. */
    FUZZ_CHECK(erasure_shard_decode(blob, size, NULL, NULL, NULL) == 0);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    decode_one(data, size);

    /*
     * Again with the trailing SHA-256 made right: random bytes almost never
     * carry a valid checksum, and this lets inputs reach every check and
     * the success path.
     */
    if (size >= ERASURE_SHARD_TRAILER) {
        uint8_t *copy = malloc(size);
        FUZZ_CHECK(copy != NULL);
        memcpy(copy, data, size);
        size_t body = size - ERASURE_SHARD_TRAILER;
        FUZZ_CHECK(EVP_Digest(copy, body, copy + body, NULL, EVP_sha256(), NULL) == 1);
        decode_one(copy, size);
        free(copy);
    }
    return 0;
}
