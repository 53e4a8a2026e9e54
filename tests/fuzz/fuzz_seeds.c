/* Writes the seed corpora of the binary formats with the real encoders, so seeds follow the
 * formats. */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "common/alloc.h"
#include "common/chunk_object.h"
#include "common/erasure.h"
#include "common/frame.h"
#include "common/keys.h"
#include "fuzz_keys.h"

/*
 * Usage: fuzz_seeds OUTDIR. Creates OUTDIR/NAME/ for each target that takes
 * binary input and writes a few small, valid inputs there. Text inputs (the
 * node configuration) are committed under tests/fuzz/corpus/ instead.
 */

static const char *outdir;

static void die(const char *what, const struct err *e)
{
    fprintf(stderr, "fuzz_seeds: %s: %s\n", what, e != NULL ? e->msg : strerror(errno));
    exit(1);
}

static void make_dir(const char *name)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", outdir, name);
    if (mkdir(outdir, 0755) != 0 && errno != EEXIST) {
        die(outdir, NULL);
    }
    if (mkdir(path, 0755) != 0 && errno != EEXIST) {
        die(path, NULL);
    }
}

static void write_seed(const char *target, const char *name, const uint8_t *data, size_t len)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/%s/%s", outdir, target, name);
    FILE *f = fopen(path, "wb");
    if (f == NULL || fwrite(data, 1, len, f) != len || fclose(f) != 0) {
        die(path, NULL);
    }
}

/* The shards of one small stripe of RS(k,m) over an object of n bytes. */
static void stripe(unsigned k, unsigned m, size_t n, uint8_t **blobs, size_t *lengths)
{
    uint8_t vault[ERASURE_VAULT_ID_LEN], chunk[ERASURE_CHUNK_ID_LEN], *object = hbc_malloc(n);
    struct err e;
    memset(vault, 0x11, sizeof vault);
    memset(chunk, 0x22, sizeof chunk);
    for (size_t i = 0; i < n; i++) {
        object[i] = (uint8_t)(i * 7 + 3);
    }
    if (erasure_shards_encode(vault, chunk, k, m, object, n, blobs, lengths, &e) != 0) {
        die("erasure_shards_encode", &e);
    }
    hbc_free(object);
}

static void erasure_seeds(void)
{
    static const unsigned schemes[][3] = {{1, 0, 1}, {2, 1, 5}, {4, 2, 100}, {8, 3, 301}};
    make_dir("shard_decode");
    make_dir("shards_rebuild");
    for (size_t s = 0; s < sizeof schemes / sizeof schemes[0]; s++) {
        unsigned k = schemes[s][0], m = schemes[s][1];
        uint8_t *blobs[ERASURE_MAX_SHARDS];
        size_t lengths[ERASURE_MAX_SHARDS];
        stripe(k, m, schemes[s][2], blobs, lengths);
        char name[64];
        /* One data and one parity shard for the single-shard decoder. */
        snprintf(name, sizeof name, "rs%u-%u-first", k, m);
        write_seed("shard_decode", name, blobs[0], lengths[0]);
        snprintf(name, sizeof name, "rs%u-%u-last", k, m);
        write_seed("shard_decode", name, blobs[k + m - 1], lengths[k + m - 1]);

        /* Whole stripes, and stripes missing their first m shards, for the rebuilder. */
        for (int missing = 0; missing < 2; missing++) {
            uint8_t buf[65536];
            size_t pos = 0;
            buf[pos++] = missing ? 3 : 1; /* fix checksums; second also passes the ids */
            for (unsigned i = missing ? m : 0; i < k + m; i++) {
                buf[pos++] = (uint8_t)(lengths[i] >> 8);
                buf[pos++] = (uint8_t)lengths[i];
                memcpy(buf + pos, blobs[i], lengths[i]);
                pos += lengths[i];
            }
            snprintf(name, sizeof name, "rs%u-%u-%s", k, m, missing ? "degraded" : "whole");
            write_seed("shards_rebuild", name, buf, pos);
        }
        for (unsigned i = 0; i < k + m; i++) {
            hbc_free(blobs[i]);
        }
    }
}

/* Append f's encoding to buf at *pos. */
static void frame_append(const Hbc__Frame *f, uint8_t *buf, size_t cap, size_t *pos)
{
    size_t n;
    struct err e;
    if (frame_encode_into(f, buf + *pos, cap - *pos, &n, &e) != 0) {
        die("frame_encode_into", &e);
    }
    *pos += n;
}

static void frame_seeds(void)
{
    make_dir("frame_reader");
    make_dir("frame_view");
    uint8_t vault[16] = {1}, chunk[32] = {2}, shard[64] = {3};
    uint8_t *ids[2] = {chunk, chunk};

    Hbc__StatusRequest status = HBC__STATUS_REQUEST__INIT;
    Hbc__ShardBlob blob = HBC__SHARD_BLOB__INIT;
    blob.vault_id = (ProtobufCBinaryData){sizeof vault, vault};
    blob.chunk_id = (ProtobufCBinaryData){sizeof chunk, chunk};
    blob.index = 1;
    blob.data = (ProtobufCBinaryData){sizeof shard, shard};
    Hbc__ShardBlob *blobs[1] = {&blob};
    Hbc__PutShards put = HBC__PUT_SHARDS__INIT;
    put.n_shards = 1;
    put.shards = blobs;
    Hbc__ShardKey key = HBC__SHARD_KEY__INIT;
    key.vault_id = blob.vault_id;
    key.chunk_id = blob.chunk_id;
    Hbc__ShardKey *keys[1] = {&key};
    Hbc__GetShards get = HBC__GET_SHARDS__INIT;
    get.n_keys = 1;
    get.keys = keys;
    Hbc__HaveChunks have = HBC__HAVE_CHUNKS__INIT;
    have.vault_id = blob.vault_id;
    ProtobufCBinaryData id_list[2] = {{32, ids[0]}, {32, ids[1]}};
    have.n_chunk_ids = 2;
    have.chunk_ids = id_list;
    Hbc__StatusReply reply = HBC__STATUS_REPLY__INIT;
    reply.node_id = "n1";
    reply.version = "0.1.0";
    reply.site = "s1";

    Hbc__Frame frames[5];
    for (int i = 0; i < 5; i++) {
        hbc__frame__init(&frames[i]);
        frames[i].request_id = (uint64_t)i + 1;
    }
    frames[0].body_case = HBC__FRAME__BODY_STATUS;
    frames[0].status = &status;
    frames[1].body_case = HBC__FRAME__BODY_PUT_SHARDS;
    frames[1].put_shards = &put;
    frames[2].body_case = HBC__FRAME__BODY_GET_SHARDS;
    frames[2].get_shards = &get;
    frames[3].body_case = HBC__FRAME__BODY_HAVE_CHUNKS;
    frames[3].have_chunks = &have;
    frames[4].body_case = HBC__FRAME__BODY_STATUS_REPLY;
    frames[4].status_reply = &reply;

    /* Each frame alone, then all five in one stream; byte 0 sets how it is cut. */
    uint8_t all[4096];
    size_t all_len = 1;
    all[0] = 7;
    for (int i = 0; i < 5; i++) {
        uint8_t one[1024];
        size_t len = 1;
        one[0] = (uint8_t)(i * 37);
        frame_append(&frames[i], one, sizeof one, &len);
        frame_append(&frames[i], all, sizeof all, &all_len);
        char name[32];
        snprintf(name, sizeof name, "frame-%d", i);
        write_seed("frame_reader", name, one, len);
        /* The bodies alone (no cut byte, no prefix) for the zero-copy decoder. */
        write_seed("frame_view", name, one + 1 + FRAME_PREFIX_LEN, len - 1 - FRAME_PREFIX_LEN);
    }
    write_seed("frame_reader", "stream", all, all_len);
}

static void chunk_object_seeds(void)
{
    make_dir("chunk_object");
    struct chunk_ctx *ctx = NULL;
    struct chunk_key key;
    struct err e;
    if (chunk_ctx_new(&ctx, &e) != 0 ||
        chunk_key_init(&key, fuzz_data_key, FUZZ_KEY_GENERATION, &e) != 0) {
        die("chunk key", &e);
    }
    static uint8_t plain[4096], obj[8192];
    for (size_t i = 0; i < sizeof plain; i++) {
        plain[i] = i < 100 ? (uint8_t)(i * 131 + 7) : (uint8_t)("hello world "[i % 12]);
    }
    /* Empty, 100 incompressible bytes, 4 KiB that zstd packs. */
    static const size_t lens[][2] = {{0, 0}, {0, 100}, {100, sizeof plain - 100}};
    static const char *names[] = {"empty", "stored", "zstd"};
    for (int i = 0; i < 3; i++) {
        size_t n;
        if (chunk_object_seal(ctx, &key, fuzz_vault_id, fuzz_chunk_id, plain + lens[i][0],
                              lens[i][1], obj, sizeof obj, &n, &e) != 0) {
            die("chunk_object_seal", &e);
        }
        write_seed("chunk_object", names[i], obj, n);

        /*
         * The same object with its payload decrypted in place: the target
         * encrypts and tags that region itself in its third attempt, so the
         * fuzzer starts from a payload (a zstd frame) that opens.
         */
        size_t crc_off = CHUNK_OBJECT_PREFIX_LEN + ((size_t)obj[5] << 8 | obj[6]);
        size_t payload_off = crc_off + CHUNK_OBJECT_CRC_LEN + CRYPTO_GCM_NONCE_LEN;
        size_t p = n - payload_off - CRYPTO_GCM_TAG_LEN;
        uint8_t aad[CHUNK_OBJECT_PREFIX_LEN + CHUNK_OBJECT_MAX_HEADER + 48];
        memcpy(aad, obj, crc_off);
        memcpy(aad + crc_off, fuzz_vault_id, sizeof fuzz_vault_id);
        memcpy(aad + crc_off + sizeof fuzz_vault_id, fuzz_chunk_id, sizeof fuzz_chunk_id);
        if (crypto_gcm_decrypt(NULL, key.gcm_key, obj + crc_off + CHUNK_OBJECT_CRC_LEN, aad,
                               crc_off + 48, obj + payload_off, p, obj + payload_off,
                               obj + payload_off + p, &e) != 0) {
            die("crypto_gcm_decrypt", &e);
        }
        char name[32];
        snprintf(name, sizeof name, "%s-clear", names[i]);
        write_seed("chunk_object", name, obj, n);
    }
    chunk_key_clear(&key);
    chunk_ctx_free(ctx);
}

static void keyfile_seeds(void)
{
    make_dir("keyfile");
    uint8_t kek[CRYPTO_KEY_LEN] = {9}, file[KEYFILE_LEN];
    struct keyfile_params cheap = {.log2_n = 10, .r = 8, .p = 1};
    struct err e;
    if (keyfile_encode(kek, FUZZ_PASSPHRASE, FUZZ_PASSPHRASE_LEN, &cheap, file, &e) != 0) {
        die("keyfile_encode", &e);
    }
    write_seed("keyfile", "valid", file, sizeof file);
    if (keyfile_encode(kek, "other", 5, &cheap, file, &e) != 0) {
        die("keyfile_encode", &e);
    }
    write_seed("keyfile", "other-passphrase", file, sizeof file);
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: fuzz_seeds OUTDIR\n");
        return 2;
    }
    outdir = argv[1];
    erasure_seeds();
    frame_seeds();
    chunk_object_seeds();
    keyfile_seeds();
    return 0;
}
