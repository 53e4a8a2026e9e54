/* Reed–Solomon k+m erasure coding of chunk objects (ISA-L) and the shard format. */
#ifndef HBC_COMMON_ERASURE_H
#define HBC_COMMON_ERASURE_H

#include <stddef.h>
#include <stdint.h>

#include "common/err.h"

/*
 * Two layers, kept apart so that each can be timed on its own:
 *
 * 1. The raw code (erasure_scheme_get, erasure_encode, erasure_decode,
 *    erasure_reconstruct): an object becomes k data shards and m parity
 *    shards of equal length; any k of the k+m rebuild it byte for byte.
 * 2. The shard format (erasure_shard_encode, erasure_shard_decode,
 *    erasure_shards_encode, erasure_shards_rebuild): one shard as stored on
 *    disk and sent on the wire, with a header and a SHA-256.
 *
 * Every function is reentrant and may run on any thread; nothing here does
 * I/O. Encoding or rebuilding a 4 MiB object is CPU work of about a
 * millisecond: run batches of them on uv_queue_work, not on a loop thread.
 *
 * ---------------------------------------------------------------------------
 * Striping (format version 1)
 *
 * Scheme RS(k,m) with 1 <= k <= 16 and 0 <= m <= 8. The object is 1 byte to
 * ERASURE_MAX_OBJECT (64 MiB) long. An empty object is refused (HBC_EINVAL):
 * a sealed chunk object always carries its header, nonce and tag, so length
 * 0 can only be a caller's mistake, and refusing it keeps every shard at
 * least one byte long.
 *
 * Every shard is L = ceil(object_length / k) bytes. Data shard i
 * (0 <= i < k) is the L object bytes that start at
 * min(i*L, object_length - L): the object cut into L-byte pieces from the
 * front, except that the last data shard ends exactly at the object's end
 * and so overlaps the one before it by k*L - object_length bytes (fewer
 * than k) instead of being padded with zeros. (For tiny objects, where
 * object_length < (k-1)*L, several trailing data shards are that same last
 * window.) Every data shard is thus a plain slice of the object: encoding
 * copies nothing, and a read that has the data shards concatenates
 * [i*L, min((i+1)*L, object_length)) from each. Why not zero padding:
 * ISA-L encodes at memory speed here (about 17 GB/s for RS(4,2) with
 * GFNI), so copying a padded last shard cost about a quarter of RS(4,2)'s
 * encode throughput. Parity shard k+j (0 <= j < m) is, byte by byte,
 *
 *     parity[k+j][x] = sum over i of C[j][i] * data[i][x]
 *
 * in GF(2^8) with the polynomial x^8+x^4+x^3+x^2+1 (0x11d), where
 * C[j][i] = 1 / ((k+j) XOR i): the rows below the identity of ISA-L's
 * gf_gen_cauchy1_matrix(a, k+m, k). Every k x k submatrix of that (k+m) x k
 * matrix is invertible, so any k shards determine the object. The code is
 * systematic: a read that finds all data shards only concatenates them.
 *
 * ---------------------------------------------------------------------------
 * Encoded shard (format version 1), as stored and sent; integers big-endian
 *
 *     offset    size  field
 *     0         4     magic "HBCS"
 *     4         1     format version: 1
 *     5         2     H, the length of the header that follows, 1..256
 *     7         H     ShardHeader (proto/hbc.proto), protobuf:
 *                       vault_id (16 bytes), chunk_id (32 bytes), k, m,
 *                       index (0..k+m-1; below k is a data shard),
 *                       object_length, shard_length (= L above)
 *     7+H       L     payload: the shard's bytes
 *     7+H+L     32    SHA-256 of bytes [0, 7+H+L)
 *
 * A reader checks, in this order, and stops at the first failure:
 * the 7-byte prefix is present (HBC_ETRUNCATED), the magic (HBC_EFORMAT),
 * the version (HBC_EVERSION), H <= 256 (HBC_ETOOBIG), the header is present
 * (HBC_ETRUNCATED), it parses (HBC_EFORMAT), its fields are consistent
 * (id lengths, k and m in range, index < k+m, 1 <= object_length,
 * shard_length = ceil(object_length/k): HBC_EFORMAT; object_length above
 * ERASURE_MAX_OBJECT: HBC_ETOOBIG), the total length is exactly
 * 7+H+L+32 (shorter: HBC_ETRUNCATED, longer: HBC_EFORMAT), and the SHA-256
 * (HBC_ECORRUPT). The SHA-256 covers every byte before it, so a changed bit
 * anywhere is caught by one of these checks. It detects damage, not forgery:
 * the chunk object's AES-GCM tag authenticates the rebuilt object.
 *
 * Trailer filled in by the receiver. A writer may send a shard whose
 * trailer is 32 zero bytes (erasure_shards_encode_unhashed) and flag it so
 * (ShardBlob.sha256_unset); the node that stores it runs every check above
 * except the SHA-256 comparison, and writes the SHA-256 into the trailer
 * instead (erasure_shard_fill_sha256), in the same pass as the hash of the
 * whole blob it records. The stored shard is byte for byte what
 * erasure_shard_encode() makes; only who computes the trailer differs (the
 * bytes in transit are protected by TLS, and the object by its GCM tag).
 */

#define ERASURE_MAX_K 16                                   /* most data shards in a scheme */
#define ERASURE_MAX_M 8                                    /* most parity shards in a scheme */
#define ERASURE_MAX_SHARDS (ERASURE_MAX_K + ERASURE_MAX_M) /* most shards in a stripe */
#define ERASURE_MAX_OBJECT ((size_t)64 << 20)              /* longest object accepted, in bytes */

#define ERASURE_SHARD_VERSION 1      /* format version written and read */
#define ERASURE_SHARD_PREFIX 7       /* magic, version and header length */
#define ERASURE_SHARD_MAX_HEADER 256 /* longest ShardHeader accepted, in bytes */
#define ERASURE_SHARD_TRAILER 32     /* the SHA-256 at the end */
#define ERASURE_VAULT_ID_LEN 16      /* bytes of a vault id */
#define ERASURE_CHUNK_ID_LEN 32      /* bytes of a chunk id */

/* The longest prefix and header of a shard (erasure_shard_head()). */
#define ERASURE_SHARD_HEAD_MAX (ERASURE_SHARD_PREFIX + ERASURE_SHARD_MAX_HEADER)

/*
 * An RS(k,m) code with its ISA-L encode tables. Schemes are built once per
 * process and never freed; the fields are public so that a benchmark can call
 * ISA-L with the very same tables. Treat them as read-only.
 */
struct erasure_scheme {
    unsigned k;                                         /* data shards, 1..16 */
    unsigned m;                                         /* parity shards, 0..8 */
    uint8_t matrix[ERASURE_MAX_SHARDS * ERASURE_MAX_K]; /* (k+m) x k encode matrix, row-major */
    uint8_t tables[32 * ERASURE_MAX_K * ERASURE_MAX_M]; /* ec_init_tables() of the m parity rows */
};

/*
 * Get the RS(k,m) scheme. The first call for a given (k,m) builds its tables
 * under a mutex; later calls return the same scheme without locking. *out is
 * valid for the life of the process (never free it).
 * Returns 0, or HBC_EINVAL if k is outside 1..16 or m outside 0..8.
 */
int erasure_scheme_get(unsigned k, unsigned m, const struct erasure_scheme **out, struct err *e);

/* ceil(object_length / k): the length of every shard of such an object (0 if k is 0). */
size_t erasure_shard_length(unsigned k, size_t object_length);

/*
 * The shards of one encoded object. Zero-initialise it before the first
 * erasure_encode() (`struct erasure_stripe st = {0};`) and keep it for the
 * next objects: its buffer is reused, so encoding a stream of objects of
 * similar size allocates nothing after the first. Release it with
 * erasure_stripe_release().
 */
struct erasure_stripe {
    const struct erasure_scheme *scheme;       /* the code used; borrowed, static */
    size_t object_length;                      /* bytes of the encoded object */
    size_t shard_length;                       /* bytes of every shard */
    const uint8_t *shards[ERASURE_MAX_SHARDS]; /* k+m payloads: data, then parity */
    uint8_t *work;                             /* owned: the parity shards */
    size_t work_capacity;                      /* bytes allocated at work */
};

/*
 * Encode object (object_length bytes, borrowed) into st. Afterwards
 * st->shards[0..k+m) point at the k+m shard payloads of st->shard_length
 * bytes each: the data shards are slices of object itself (nothing is
 * copied, so object must stay alive and unchanged while they are used) and
 * the parity shards lie in st->work (except where a parity shard equals
 * the data, as in RS(1,1): then it is object itself too, and nothing is
 * coded). The parity pointers stay valid until the next erasure_encode() or
 * erasure_stripe_release() on st.
 * Allocates only when st's buffer is too small for the m parity shards.
 * Returns 0; HBC_EINVAL (scheme or object NULL, object_length 0),
 * HBC_ETOOBIG (object_length above ERASURE_MAX_OBJECT), HBC_ENOMEM.
 * On error st keeps its buffer but its shards are unset.
 */
int erasure_encode(const struct erasure_scheme *scheme, const uint8_t *object, size_t object_length,
                   struct erasure_stripe *st, struct err *e);

/* Free st's buffer and reset it to zero. st may be NULL. */
void erasure_stripe_release(struct erasure_stripe *st);

/*
 * Rebuild an object of object_length bytes into object (a caller buffer of
 * at least object_length bytes) from its shards: shards[i] is shard i's
 * payload of erasure_shard_length(k, object_length) bytes, or NULL when that
 * shard is lost. shards has k+m entries and is borrowed.
 * At least k shards must be present. When every data shard that holds
 * object bytes is among them this only concatenates them (no decode);
 * otherwise it copies the data shards it has and decodes the lost ones
 * from the first k present shards, in index order, with tables built for
 * that set of lost shards, straight into their place in object.
 * Returns 0; HBC_ETOOFEW (fewer than k shards present; the message names
 * the lost ones), HBC_EINVAL, HBC_ETOOBIG (object_length too long).
 */
int erasure_decode(const struct erasure_scheme *scheme, size_t object_length,
                   const uint8_t *const *shards, uint8_t *object, struct err *e);

/*
 * Recompute lost shards, data or parity, for repair. shards has k+m entries
 * (payloads of shard_length bytes, NULL when lost; borrowed). For each of
 * the count indices in wanted (each must be a lost shard, no duplicates),
 * out[n] receives shard wanted[n]: a caller buffer of shard_length bytes.
 * Returns 0; HBC_ETOOFEW (fewer than k shards present), HBC_EINVAL
 * (shard_length 0 or above ERASURE_MAX_OBJECT, a wanted index out of range,
 * present or repeated).
 */
int erasure_reconstruct(const struct erasure_scheme *scheme, size_t shard_length,
                        const uint8_t *const *shards, const unsigned *wanted, size_t count,
                        uint8_t *const *out, struct err *e);

/* The ShardHeader of one shard, as plain C. */
struct erasure_shard_info {
    uint8_t vault_id[ERASURE_VAULT_ID_LEN]; /* the vault the chunk belongs to */
    uint8_t chunk_id[ERASURE_CHUNK_ID_LEN]; /* the chunk id (HMAC of the plaintext) */
    unsigned k;                             /* data shards of the scheme */
    unsigned m;                             /* parity shards of the scheme */
    unsigned index;                         /* this shard, 0..k+m-1; below k is a data shard */
    uint64_t object_length;                 /* bytes of the whole chunk object */
    uint64_t shard_length;                  /* payload bytes: ceil(object_length / k) */
};

/*
 * Encode one shard: info (borrowed) and payload (info->shard_length bytes,
 * borrowed) become the bytes described above. On success *out is a new
 * buffer of *out_length bytes that the caller frees with hbc_free().
 * Returns 0; HBC_EINVAL (info inconsistent: k, m, index, lengths),
 * HBC_ETOOBIG, HBC_ENOMEM, HBC_ECRYPTO.
 */
int erasure_shard_encode(const struct erasure_shard_info *info, const uint8_t *payload,
                         uint8_t **out, size_t *out_length, struct err *e);

/*
 * The first bytes of the shard that erasure_shard_encode() makes of info:
 * its prefix and ShardHeader (7 + H bytes, into head; *head_len gets how
 * many). The whole shard is head, then the info->shard_length payload
 * bytes, then the trailer: a writer may send these pieces without copying
 * the payload (with a zero trailer, for the node to fill in).
 * Returns 0 or HBC_EINVAL (info inconsistent, or a NULL argument).
 */
int erasure_shard_head(const struct erasure_shard_info *info, uint8_t head[ERASURE_SHARD_HEAD_MAX],
                       size_t *head_len, struct err *e);

/*
 * Verify an encoded shard (blob, blob_length bytes, borrowed) with every
 * check listed above. On success *info is filled and *payload points at the
 * info->shard_length payload bytes inside blob (valid as long as blob).
 * info and payload may be NULL when only the verdict matters.
 * Returns 0, or the code of the first failed check (HBC_ETRUNCATED,
 * HBC_EFORMAT, HBC_EVERSION, HBC_ETOOBIG, HBC_ECORRUPT) with a message
 * naming it; HBC_ENOMEM or HBC_ECRYPTO when the check itself could not run.
 */
int erasure_shard_decode(const uint8_t *blob, size_t blob_length, struct erasure_shard_info *info,
                         const uint8_t **payload, struct err *e);

/*
 * erasure_shard_decode() without the SHA-256: every other check (prefix,
 * magic, version, header, lengths) is made, so the payload pointer and the
 * info are safe to use, but a changed byte in the payload (or the trailer)
 * goes unnoticed. For readers that authenticate what they rebuild from the
 * payloads themselves (a chunk object's AES-GCM tag) and fall back to
 * erasure_shard_decode() when that fails. Same returns, never HBC_ECORRUPT.
 */
int erasure_shard_parse(const uint8_t *blob, size_t blob_length, struct erasure_shard_info *info,
                        const uint8_t **payload, struct err *e);

/*
 * erasure_shard_decode(), and also the SHA-256 of the whole blob (trailer
 * included) into blob_sha256 (caller's), computed in the same pass over the
 * bytes as the trailer check: what a store that keeps the blob records.
 * blob_sha256 is meaningful only on 0. Same returns, plus HBC_EINVAL for a
 * NULL blob_sha256.
 */
int erasure_shard_decode_sha256(const uint8_t *blob, size_t blob_length,
                                struct erasure_shard_info *info, const uint8_t **payload,
                                uint8_t blob_sha256[ERASURE_SHARD_TRAILER], struct err *e);

/*
 * erasure_shard_decode_sha256() for a shard whose trailer the sender left
 * as zero bytes: every check but the SHA-256 comparison, then the SHA-256
 * of bytes [0, 7+H+L) is written into the trailer (blob is modified in
 * place and is afterwards exactly what erasure_shard_encode() makes), and
 * blob_sha256 receives the SHA-256 of the whole filled-in blob.
 * Returns as erasure_shard_decode_sha256(), except that a trailer that is
 * not all zero is HBC_EFORMAT (blob unchanged), never HBC_ECORRUPT.
 */
int erasure_shard_fill_sha256(uint8_t *blob, size_t blob_length, struct erasure_shard_info *info,
                              const uint8_t **payload, uint8_t blob_sha256[ERASURE_SHARD_TRAILER],
                              struct err *e);

/*
 * Encode object (borrowed) with RS(k,m) and frame all k+m shards:
 * blobs[i] (a new buffer, caller frees each with hbc_free()) holds shard i
 * and lengths[i] its length; both arrays have room for k+m entries.
 * vault_id (16 bytes) and chunk_id (32 bytes) are borrowed.
 * On error nothing is left allocated (and once k and m are known to be
 * valid, blobs[0..k+m) are set to NULL).
 * Returns 0 or the codes of erasure_scheme_get, erasure_encode and
 * erasure_shard_encode.
 */
int erasure_shards_encode(const uint8_t *vault_id, const uint8_t *chunk_id, unsigned k, unsigned m,
                          const uint8_t *object, size_t object_length, uint8_t **blobs,
                          size_t *lengths, struct err *e);

/*
 * erasure_shards_encode(), but every shard's trailer is left as 32 zero
 * bytes for the receiving node to fill in (erasure_shard_fill_sha256): one
 * SHA-256 pass over (k+m)/k of the object less for the writer. Such blobs
 * fail erasure_shard_decode() until they are filled in. Same returns.
 */
int erasure_shards_encode_unhashed(const uint8_t *vault_id, const uint8_t *chunk_id, unsigned k,
                                   unsigned m, const uint8_t *object, size_t object_length,
                                   uint8_t **blobs, size_t *lengths, struct err *e);

/*
 * Rebuild an object from up to count encoded shards of one stripe, in any
 * order (blobs[n] of lengths[n] bytes, NULL when not fetched; all borrowed).
 * Each blob is verified; one that fails any check counts as lost (the
 * failure is named in the message if too few remain), but running out of
 * memory while checking one ends the call with HBC_ENOMEM. A later blob with the
 * index of an already accepted one is ignored.
 * vault_id (16 bytes) and chunk_id (32 bytes) are the ids the caller asked
 * for, or NULL: when given, an intact shard of another vault or chunk counts
 * as lost; when NULL, the first intact shard sets them and any other intact
 * shard that differs is an error (HBC_ECHUNKID).
 * All intact shards must agree on k, m and object_length (HBC_EFORMAT
 * otherwise: shards of different copies or encodings were mixed).
 * On success *object is a new buffer of *object_length bytes that the
 * caller frees with hbc_free().
 * Returns 0; HBC_ETOOFEW (fewer than k intact shards; the message says how
 * many were found, needed, and why each rejected blob was rejected),
 * HBC_ECHUNKID, HBC_EFORMAT, HBC_EINVAL (count above 2*ERASURE_MAX_SHARDS),
 * HBC_ENOMEM.
 */
int erasure_shards_rebuild(const uint8_t *const *blobs, const size_t *lengths, size_t count,
                           const uint8_t *vault_id, const uint8_t *chunk_id, uint8_t **object,
                           size_t *object_length, struct err *e);

/*
 * erasure_shards_rebuild() for the healthy read path: the blobs are checked
 * with erasure_shard_parse(), i.e. without their SHA-256 (one pass over the
 * bytes less), so a shard with a changed payload byte is used as it is and
 * the object comes out wrong. Use it only where the object is authenticated
 * next (chunk_object_open: the AES-GCM tag covers every byte of it); when
 * that fails, rebuild again with erasure_shards_rebuild(), whose SHA-256
 * checks find the bad shards. Same arguments and returns as
 * erasure_shards_rebuild() except the output: *object points at the object
 * (*object_length bytes), either inside *buf (the caller's buffer of *cap
 * bytes, reallocated when too small: the caller frees *buf with hbc_free()
 * once done with it, and may keep it for the next call) or, for k = 1,
 * straight at the payload inside the blob (nothing is copied). *object is
 * valid until the blobs are freed or *buf is reused.
 */
int erasure_shards_rebuild_unverified(const uint8_t *const *blobs, const size_t *lengths,
                                      size_t count, const uint8_t *vault_id,
                                      const uint8_t *chunk_id, uint8_t **buf, size_t *cap,
                                      const uint8_t **object, size_t *object_length, struct err *e);

#endif /* HBC_COMMON_ERASURE_H */
