/* Sealing and opening chunk objects: optional zstd, then AES-256-GCM under the vault data key. */
#ifndef HBC_COMMON_CHUNK_OBJECT_H
#define HBC_COMMON_CHUNK_OBJECT_H

#include <stddef.h>
#include <stdint.h>

#include "common/crypto.h"
#include "common/err.h"

/*
 * Chunk object format, version 1 (integers big-endian):
 *
 *   offset        size  field
 *   0             4     magic "HBCO"
 *   4             1     format version (1)
 *   5             2     H = length of the protobuf header (1..CHUNK_OBJECT_MAX_HEADER)
 *   7             H     protobuf hbc.ChunkObjectHeader: key_generation, compression
 *                       (NONE or ZSTD), plaintext_length, packed_length, key_check
 *                       (8 bytes: HKDF(data key, CRYPTO_LABEL_KEY_CHECK))
 *   7+H           4     CRC32C (Castagnoli) of bytes 0..7+H: unkeyed, so that a damaged
 *                       header is told apart from a forged or mis-keyed object
 *   11+H          12    synthetic 96-bit GCM nonce (below)
 *   23+H          P     AES-256-GCM ciphertext of the packed payload (P = packed_length)
 *   23+H+P        16    GCM tag
 *
 * The GCM key is HKDF(data key, CRYPTO_LABEL_CHUNK_OBJECT_KEY). The associated
 * data is bytes 0..7+H (prefix and protobuf header) followed by the 16-byte
 * vault id and the 32-byte chunk id, so an object cannot be replayed under
 * another vault or chunk id. The packed payload is the zstd frame of the
 * plaintext when compression is ZSTD (kept only when strictly smaller than
 * the plaintext), otherwise the plaintext itself.
 *
 * The nonce is synthetic, not random: the first 12 bytes of
 * HMAC-SHA-256(nonce key, associated data || S), where the nonce key is
 * HKDF(data key, CRYPTO_LABEL_CHUNK_NONCE_KEY) and S is empty for an
 * uncompressed payload (the payload is then the plaintext, fixed by the chunk
 * id in the associated data) and SHA-256 of the packed payload for a zstd
 * one. Sealing the same chunk twice therefore gives the same object, byte for
 * byte, so two clients that write a new chunk at the same moment send
 * identical shards and a stripe can never mix shards of two different
 * encryptions (which would make it undecodable); and a nonce repeats only
 * with the same key, associated data and payload, i.e. for the same
 * ciphertext. What an observer learns is that two objects are equal, which
 * the chunk ids already tell. Opening does not depend on how the nonce was
 * made.
 *
 * Opening checks, in order, each with its own code:
 *   fewer bytes than the 7-byte prefix, the header and its CRC   HBC_ETRUNCATED
 *   magic is not "HBCO"                                          HBC_EFORMAT
 *   version is not 1                                             HBC_EVERSION
 *   H is 0 or above CHUNK_OBJECT_MAX_HEADER                      HBC_ETOOBIG (0: HBC_EFORMAT)
 *   CRC32C of the header does not match                          HBC_ECORRUPT
 *   protobuf does not parse, unknown compression, bad key_check  HBC_EFORMAT
 *   plaintext_length above CHUNK_OBJECT_MAX_PLAINTEXT, or
 *   packed_length impossible for it                              HBC_ETOOBIG
 *   object shorter than packed_length says                       HBC_ETRUNCATED
 *   object longer than packed_length says                        HBC_ETOOBIG
 *   key generation differs from the key offered                  HBC_EWRONGKEY
 *   key_check differs from the key offered                       HBC_EWRONGKEY
 *   GCM tag fails (ciphertext, header, vault id or chunk id
 *   altered; nonce or tag damaged)                               HBC_EAUTH
 *   zstd frame does not decode to plaintext_length bytes         HBC_ECOMPRESS
 *   (chunk_object_verify_id) HMAC of plaintext != chunk id       HBC_ECHUNKID
 * A bit flip in the version byte therefore reads as HBC_EVERSION and one in
 * the magic as HBC_EFORMAT: the version must be known before the layout is.
 *
 * Compression: chunks from files that are already compressed or encrypted
 * must not pay for zstd, so the seal first compresses a sample (the first
 * CHUNK_OBJECT_SAMPLE_LEN bytes) at CHUNK_OBJECT_ZSTD_LEVEL and compresses
 * the whole chunk only if the sample shrank to 15/16 or less. zstd gives up
 * on random data after about 7 us for a 64 KiB sample, against
 * about 220 us for AES-GCM over 1 MiB here. Level 1 is zstd's fastest
 * regular level: backups are CPU-bound on the client, and higher levels gain
 * a few percent of size for several times the time.
 */

#define CHUNK_OBJECT_MAGIC "HBCO"
#define CHUNK_OBJECT_VERSION 1
#define CHUNK_OBJECT_PREFIX_LEN 7           /* magic, version, header length */
#define CHUNK_OBJECT_CRC_LEN 4              /* CRC32C of prefix and header */
#define CHUNK_OBJECT_MAX_HEADER 256         /* largest protobuf header accepted when opening */
#define CHUNK_OBJECT_HEADER_MAX_PACKED 64   /* largest protobuf header we write (40 in practice) */
#define CHUNK_OBJECT_VAULT_ID_LEN 16        /* vault id in the associated data */
#define CHUNK_OBJECT_CHUNK_ID_LEN 32        /* chunk id (HMAC-SHA-256) in the associated data */
#define CHUNK_OBJECT_KEY_CHECK_LEN 8        /* key check in the header */
#define CHUNK_OBJECT_ZSTD_LEVEL 1           /* see above */
#define CHUNK_OBJECT_SAMPLE_LEN (64u << 10) /* bytes compressed to decide whether to compress */

/*
 * Largest plaintext a chunk object may hold: the chunker's 4 MiB maximum
 * plus 1 MiB of margin, so that a hostile length field cannot make a reader
 * allocate more, while trees and a future chunker may exceed 4 MiB a little.
 */
#define CHUNK_OBJECT_MAX_PLAINTEXT ((size_t)5 << 20)

enum chunk_compression {
    CHUNK_COMPRESSION_NONE = 0, /* payload is the plaintext */
    CHUNK_COMPRESSION_ZSTD = 1, /* payload is one zstd frame */
};

/*
 * What sealing and opening need from one vault data key, derived once
 * (two HKDF calls) so that sealing millions of chunks derives nothing. It is
 * read-only after chunk_key_init(), so any number of threads may share one.
 */
struct chunk_key {
    uint32_t generation;                           /* key generation of the data key */
    uint8_t gcm_key[CRYPTO_KEY_LEN];               /* HKDF(data key, "hbc v1 chunk object key") */
    uint8_t key_check[CHUNK_OBJECT_KEY_CHECK_LEN]; /* HKDF(data key, "hbc v1 key check") */
    uint8_t nonce_key[CRYPTO_KEY_LEN];             /* HKDF(data key, "hbc v1 chunk nonce key") */
};

/*
 * Fill k from the 32-byte vault data key of the given generation (borrowed;
 * not kept). Wipe k with chunk_key_clear() when done. Returns 0 or
 * HBC_ECRYPTO/HBC_ENOMEM.
 */
int chunk_key_init(struct chunk_key *k, const uint8_t data_key[CRYPTO_KEY_LEN], uint32_t generation,
                   struct err *e);

/* Wipe k's key material. */
void chunk_key_clear(struct chunk_key *k);

/*
 * Per-thread working state for sealing and opening: a GCM context, zstd
 * compression and decompression contexts and a scratch buffer that grows to
 * the largest chunk seen. It holds no key. Not shareable: give each worker
 * thread its own, and keep it for the thread's life so nothing is allocated
 * per chunk.
 */
struct chunk_ctx;

/* Allocate a context into *out. Returns 0, HBC_ENOMEM or HBC_ECRYPTO. */
int chunk_ctx_new(struct chunk_ctx **out, struct err *e);

/* Free c (and wipe its scratch buffer). NULL is a no-op. */
void chunk_ctx_free(struct chunk_ctx *c);

/* The header fields of a chunk object, as read by chunk_object_peek(). */
struct chunk_object_info {
    uint32_t key_generation;            /* generation of the data key that sealed it */
    enum chunk_compression compression; /* how the payload is packed */
    uint64_t plaintext_length;          /* bytes chunk_object_open() will return */
    uint64_t packed_length;             /* bytes of ciphertext */
    size_t object_length;               /* total bytes of the object, tag included */
};

/*
 * The most bytes chunk_object_seal() may write for a plaintext of
 * plaintext_len bytes; size output buffers with it (compression is kept only
 * when it shrinks the payload, so this is the uncompressed size plus overhead).
 */
size_t chunk_object_max_sealed(size_t plaintext_len);

/*
 * Seal plaintext (len bytes, borrowed; may be NULL when len is 0) into out
 * under key k for the given vault id and chunk id (both borrowed; bound into
 * the associated data). out_cap must be at least chunk_object_max_sealed(len);
 * *out_len receives the object's length. c (this thread's) holds the working
 * state; k is only read, so other threads may use it at the same time.
 *
 * Returns 0; HBC_ETOOBIG if len exceeds CHUNK_OBJECT_MAX_PLAINTEXT; HBC_EINVAL
 * if out_cap is short; HBC_ENOMEM, HBC_ECOMPRESS or HBC_ECRYPTO on library
 * failure.
 */
int chunk_object_seal(struct chunk_ctx *c, const struct chunk_key *k,
                      const uint8_t vault_id[CHUNK_OBJECT_VAULT_ID_LEN],
                      const uint8_t chunk_id[CHUNK_OBJECT_CHUNK_ID_LEN], const void *plaintext,
                      size_t len, uint8_t *out, size_t out_cap, size_t *out_len, struct err *e);

/*
 * Read and check an object's unauthenticated framing and header without any
 * key (everything up to, not including, the key and GCM checks), so that a
 * reader can pick the data key of info->key_generation and size its output
 * buffer from info->plaintext_length. Returns 0 or one of the framing codes
 * listed at the top of this file.
 */
int chunk_object_peek(const uint8_t *obj, size_t len, struct chunk_object_info *info,
                      struct err *e);

/*
 * Open the object (len bytes, borrowed) sealed for vault_id and chunk_id with
 * key k into out (out_cap bytes; at least the plaintext length, which
 * chunk_object_peek() gives, or CHUNK_OBJECT_MAX_PLAINTEXT). *out_len
 * receives the plaintext length. Every check listed at the top of this file
 * is made, with its own code and a message naming what failed; on any
 * failure no unauthenticated plaintext is left in out.
 *
 * Returns 0, one of the codes listed above, HBC_EINVAL if out_cap is short,
 * or HBC_ENOMEM/HBC_ECRYPTO on library failure.
 */
int chunk_object_open(struct chunk_ctx *c, const struct chunk_key *k,
                      const uint8_t vault_id[CHUNK_OBJECT_VAULT_ID_LEN],
                      const uint8_t chunk_id[CHUNK_OBJECT_CHUNK_ID_LEN], const uint8_t *obj,
                      size_t len, uint8_t *out, size_t out_cap, size_t *out_len, struct err *e);

/*
 * Check that chunk_id is HMAC-SHA-256 of plaintext under the vault's chunk-id
 * key (h, keyed with it; see crypto_hmac_new()). The comparison is constant
 * time. Returns 0, HBC_ECHUNKID if it differs, or HBC_ECRYPTO.
 */
int chunk_object_verify_id(struct crypto_hmac *h, const void *plaintext, size_t len,
                           const uint8_t chunk_id[CHUNK_OBJECT_CHUNK_ID_LEN], struct err *e);

#endif /* HBC_COMMON_CHUNK_OBJECT_H */
