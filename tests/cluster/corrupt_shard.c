/*
 * hbc-corrupt-shard: rewrites one shard in a stopped node's shard store with one byte of its
 * payload flipped, stored through the store itself so that the record header and the index
 * carry the SHA-256 of the corrupted bytes: the node then serves the shard as sound, and only
 * the client's own checks (the shard's trailing SHA-256, AES-GCM) can catch it. For the
 * cluster tests (test_backup_edges.py); never for a live node.
 *
 *   hbc-corrupt-shard STORE_DIR KEY_HEX [OFFSET]
 *
 * KEY_HEX is the 52-byte shard key (vault id || chunk id || index, u32 big-endian) in hex;
 * OFFSET the payload byte to flip (default: the middle). Prints one JSON line
 * {"length", "offset", "old_sha256", "new_sha256"}; exit 0 done, 3 no such shard, 1 error.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/alloc.h"
#include "common/err.h"
#include "node/shard_store.h"

static int parse_hex(const char *s, uint8_t *out, size_t n)
{
    if (strlen(s) != 2 * n) {
        return -1;
    }
    for (size_t i = 0; i < n; i++) {
        unsigned v;
        if (sscanf(s + 2 * i, "%2x", &v) != 1) {
            return -1;
        }
        out[i] = (uint8_t)v;
    }
    return 0;
}

static void print_hex(const uint8_t *p, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        printf("%02x", p[i]);
    }
}

int main(int argc, char **argv)
{
    uint8_t raw[SHARD_STORE_KEY_LEN];
    if (argc < 3 || argc > 4 || parse_hex(argv[2], raw, sizeof raw) != 0) {
        fprintf(stderr, "usage: hbc-corrupt-shard STORE_DIR KEY_HEX(%d bytes) [OFFSET]\n",
                SHARD_STORE_KEY_LEN);
        return 2;
    }
    struct shard_key key;
    memcpy(key.vault_id, raw, SHARD_STORE_VAULT_ID_LEN);
    memcpy(key.chunk_id, raw + SHARD_STORE_VAULT_ID_LEN, SHARD_STORE_CHUNK_ID_LEN);
    const uint8_t *ix = raw + SHARD_STORE_VAULT_ID_LEN + SHARD_STORE_CHUNK_ID_LEN;
    key.index = (uint32_t)ix[0] << 24 | (uint32_t)ix[1] << 16 | (uint32_t)ix[2] << 8 | ix[3];

    struct err e = {0};
    struct shard_store *s = NULL;
    struct shard_info before, after;
    uint8_t *data = NULL;
    size_t len = 0;
    int result = 0;
    int rc = shard_store_open(argv[1], NULL, &s, &e);
    if (rc == 0) {
        rc = shard_store_lookup(s, &key, &before, &e);
    }
    if (rc == HBC_ENOTFOUND) {
        fprintf(stderr, "hbc-corrupt-shard: no such shard in %s\n", argv[1]);
        shard_store_close(s, NULL);
        return 3;
    }
    if (rc == 0) {
        rc = shard_store_get_alloc(s, &key, &data, &len, &e);
    }
    size_t off = argc == 4 ? strtoull(argv[3], NULL, 10) : len / 2;
    if (rc == 0 && off >= len) {
        rc = err_set(&e, HBC_EINVAL, "offset %zu is beyond the shard's %zu bytes", off, len);
    }
    if (rc == 0) {
        data[off] ^= 0x5a;
        rc = shard_store_delete(s, &key, 1, &result, &e);
    }
    if (rc == 0 && result == 0) {
        struct shard_put put = {.key = key, .data = data, .len = len};
        rc = shard_store_put_batch(s, &put, 1, &result, &e);
    }
    if (rc == 0 && result != 0) {
        rc = err_set(&e, result < 0 ? result : HBC_ESTORE, "rewriting the shard gave %d", result);
    }
    if (rc == 0) {
        rc = shard_store_lookup(s, &key, &after, &e);
    }
    hbc_free(data);
    int crc = shard_store_close(s, rc == 0 ? &e : NULL);
    if (rc == 0) {
        rc = crc;
    }
    if (rc != 0) {
        fprintf(stderr, "hbc-corrupt-shard: %s\n", e.msg);
        return 1;
    }
    printf("{\"length\": %zu, \"offset\": %zu, \"old_sha256\": \"", len, off);
    print_hex(before.sha256, sizeof before.sha256);
    printf("\", \"new_sha256\": \"");
    print_hex(after.sha256, sizeof after.sha256);
    printf("\"}\n");
    return 0;
}
