/* The storage node's durable, log-structured shard store (DESIGN.md "Data plane"). */
#ifndef HBC_NODE_SHARD_STORE_H
#define HBC_NODE_SHARD_STORE_H

#include <inttypes.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/err.h"

/*
 * Layout under the store directory:
 *
 *   segments/  append-only segment files named SHARD_STORE_SEGMENT_NAME_FMT
 *              (16 hex digits of the segment number, ".seg"); each holds
 *              records = a SHARD_STORE_RECORD_HEADER_LEN-byte header (magic,
 *              version, key, data length, SHA-256 of the data) + the data.
 *   index/     a RocksDB database, the only truth about what is stored:
 *              "shards"     key (52 bytes) -> segment, offset, length, SHA-256,
 *                           stored-at time;
 *              "by_segment" segment || offset -> key, record length (so that
 *                           compaction finds a segment's live records without a
 *                           scan);
 *              "segments"   segment -> high-water mark (end of the last indexed
 *                           record), live bytes, live records;
 *              "default"    format version and totals (shard count, used bytes).
 *
 * A put is durable before it returns: the records are appended, every segment
 * touched is fdatasync'ed once (and the directory fsync'ed when a segment file
 * was created), then one synced RocksDB batch indexes them. After a crash,
 * shard_store_open() cuts every segment back to its indexed high-water mark
 * and removes segments that nothing references, so nothing unindexed is ever
 * served. Reads check the record header and the SHA-256 before returning data.
 *
 * Threads: every function may be called from any thread (the server calls
 * them from uv_queue_work workers). Writer calls (put_batch, delete, compact)
 * are serialised by internal locks, except that put_batch calls are
 * pipelined: while one fdatasyncs and writes its index batch, the next one
 * appends its records; each still returns only after its own records are
 * synced and indexed, syncs happen in append order, and a put whose sync
 * fails fails alone (a put that appended after it, to the same segment, is
 * appended again to a new segment before it syncs). Reads (lookup, get*,
 * exists*, stats, segments) run concurrently with each other and with the
 * writers.
 */

#define SHARD_STORE_VAULT_ID_LEN 16
#define SHARD_STORE_CHUNK_ID_LEN 32
#define SHARD_STORE_SHA256_LEN 32
/* Encoded key: vault id || chunk id || shard index (u32 big-endian). */
#define SHARD_STORE_KEY_LEN (SHARD_STORE_VAULT_ID_LEN + SHARD_STORE_CHUNK_ID_LEN + 4)
/* Bytes of the header written before each shard's data in a segment. */
#define SHARD_STORE_RECORD_HEADER_LEN 96

#define SHARD_STORE_DEFAULT_SEGMENT_SIZE (64ull << 20)
#define SHARD_STORE_MIN_SEGMENT_SIZE (4096ull)
#define SHARD_STORE_MAX_SEGMENT_SIZE (1ull << 40)
#define SHARD_STORE_DEFAULT_MAX_SHARD_SIZE (8u << 20)
/* The largest shard any configuration accepts; longer lengths on disk are corrupt. */
#define SHARD_STORE_SHARD_SIZE_LIMIT (256u << 20)
#define SHARD_STORE_DEFAULT_MAX_OPEN_SEGMENTS 256u
/* The most records one put_batch, delete or get_batch call takes. */
#define SHARD_STORE_MAX_BATCH 16384u

/* printf format of a segment file name under segments/, from its uint64_t number. */
#define SHARD_STORE_SEGMENT_NAME_FMT "%016" PRIx64 ".seg"

/* Per-record put result: an identical shard (same SHA-256) was already stored. */
#define SHARD_STORE_ALREADY 1

struct shard_store;

/* What names a shard. */
struct shard_key {
    uint8_t vault_id[SHARD_STORE_VAULT_ID_LEN]; /* the vault the chunk belongs to */
    uint8_t chunk_id[SHARD_STORE_CHUNK_ID_LEN]; /* the chunk id (HMAC of the plaintext) */
    uint32_t index;                             /* the shard's index within the stripe */
};

/* Options for shard_store_open(); zero fields take the defaults. */
struct shard_store_options {
    uint64_t segment_size;      /* target segment size in bytes (0: 64 MiB) */
    uint32_t max_shard_size;    /* largest shard accepted by put (0: 8 MiB) */
    uint64_t capacity;          /* bytes this node offers; only reported in stats */
    uint32_t max_open_segments; /* read descriptors kept open at most (0: 256) */
    bool cache_written;         /* keep records in the page cache once synced (false: drop) */
};

/* One record for shard_store_put_batch(). */
struct shard_put {
    struct shard_key key; /* the shard's name */
    const void *data;     /* the encoded shard, borrowed for the call */
    size_t len;           /* bytes at data (0 allowed) */
    /*
     * SHA-256 of the len bytes at data, already computed by the caller (so
     * that hashing can happen outside the group commit), or NULL: the store
     * computes it. Borrowed for the call. The caller vouches for it: a wrong
     * digest is stored as given and every read of the shard then fails as
     * HBC_ECORRUPT.
     */
    const uint8_t *sha256;
};

/* Where and what a stored shard is (shard_store_lookup()). */
struct shard_info {
    uint64_t segment;                       /* segment number */
    uint64_t offset;                        /* offset of the record header in the segment */
    uint32_t length;                        /* data bytes (the header not included) */
    uint8_t sha256[SHARD_STORE_SHA256_LEN]; /* SHA-256 of the data */
    uint64_t stored_at_ms;                  /* when it was first stored, ms since the epoch */
};

/* Counters and sizes (shard_store_stats()). */
struct shard_store_stats {
    uint64_t shard_count;         /* shards indexed */
    uint64_t used_bytes;          /* bytes of live records, headers included */
    uint64_t data_bytes;          /* bytes of live shard data alone */
    uint64_t bytes_on_disk;       /* size of all segment files */
    uint64_t index_bytes;         /* RocksDB SST files (approximate) */
    uint64_t segment_count;       /* segment files */
    uint64_t capacity;            /* as configured */
    uint64_t recovered_cut_bytes; /* unindexed bytes cut off or removed by the last open */
    uint64_t corrupt_reads;       /* records that failed their checks since open */
    uint64_t put_batches;         /* put_batch calls that wrote something, since open */
    uint64_t records_written;     /* records appended by puts and compaction since open */
    uint64_t fdatasyncs;          /* segment fdatasync calls since open */
    uint64_t dir_fsyncs;          /* segments/ directory fsync calls since open */
    uint64_t index_syncs;         /* synced RocksDB batches since open */
    uint64_t pipelined_puts;      /* put_batch calls that appended while another one synced */
    uint64_t reappended_puts; /* put_batch calls that appended again after another's sync failed */
};

/* One segment as seen by a garbage collector (shard_store_segments()). */
struct shard_segment_info {
    uint64_t number;       /* segment number */
    uint64_t size;         /* high-water mark: end of the last indexed record */
    uint64_t live_bytes;   /* bytes of live records */
    uint64_t live_records; /* live records */
    double live_ratio;     /* live_bytes / size (1.0 for an empty segment) */
    bool open;             /* the segment new records are appended to */
};

/* What shard_store_compact() did. */
struct shard_compact_result {
    uint64_t copied_records;  /* live records copied forward */
    uint64_t copied_bytes;    /* their bytes, headers included */
    uint64_t corrupt_records; /* records that failed their checks: logged, unindexed, not copied */
    uint64_t freed_bytes;     /* size of the removed segment file */
};

/*
 * Open (creating if missing) the store in dir, whose parent must exist, and
 * recover it: every segment is cut back to its indexed high-water mark (log
 * line event=store_recover, counted in stats.recovered_cut_bytes), segments
 * that no index entry references are removed, and the last segment is reopened
 * for appending. opts may be NULL (defaults); it is copied. On success *out
 * is the store, to be closed with shard_store_close().
 * Returns 0; HBC_ECONFIG for bad options; HBC_ESTORE for a RocksDB error
 * (another process holding the store included); HBC_EVERSION for an index of
 * an unknown format; HBC_ECORRUPT when segments/ holds files but the index is
 * new (lost): nothing is deleted then; HBC_ENOMEM; -errno with context for
 * file errors.
 */
int shard_store_open(const char *dir, const struct shard_store_options *opts,
                     struct shard_store **out, struct err *e);

/*
 * Flush the index and close everything; s is freed even on error. NULL is a
 * no-op. No other call may be running or start on s. Returns 0 or HBC_ESTORE
 * if the index could not be flushed (everything put was already durable).
 */
int shard_store_close(struct shard_store *s, struct err *e);

/*
 * Store n records durably, as one group commit: append, one fdatasync per
 * segment touched, one synced index batch; only then return. data is only
 * read during the call. The SHA-256 of records without a caller's digest is
 * computed before the writer lock is taken, so concurrent calls hash in
 * parallel and only append, sync and index one at a time; each call returns
 * once its own records are synced and indexed, and a call that fails (say a
 * failed fdatasync) fails only its own records. Once synced, the records'
 * pages are dropped from the page cache (POSIX_FADV_DONTNEED) unless
 * opts.cache_written: shards are cold once written (they are read back for
 * a restore or a repair, much later), so keeping them would only evict what
 * is read (the index), and the next commit's copy reuses the freed pages
 * instead of faulting in new ones. results (n entries, caller's) gets, per record: 0
 * stored now; SHARD_STORE_ALREADY an identical shard was already there (or
 * earlier in this batch); HBC_EEXIST a different shard is stored under that
 * key and was kept; HBC_ETOOBIG data longer than max_shard_size; HBC_EINVAL
 * data NULL with len > 0.
 * Returns 0 when the batch went through (see results), or a negative code
 * when nothing of it was indexed: -errno from the disk with context ("put
 * batch: segment 3: fdatasync: No space left on device"), HBC_ESTORE,
 * HBC_ENOMEM, HBC_ECRYPTO, HBC_EINVAL (n > SHARD_STORE_MAX_BATCH, NULL
 * arguments); results of the records that would have been written then hold
 * the same code. Writer call.
 */
int shard_store_put_batch(struct shard_store *s, const struct shard_put *recs, size_t n,
                          int *results, struct err *e);

/*
 * Where key is stored, without reading the data. Returns 0 and fills *info,
 * HBC_ENOTFOUND, HBC_ECORRUPT for an unreadable index entry, or HBC_ESTORE.
 */
int shard_store_lookup(struct shard_store *s, const struct shard_key *key, struct shard_info *info,
                       struct err *e);

/*
 * Read key's data into buf (cap bytes, caller's) and set *len. The record
 * header and the SHA-256 are checked before returning: HBC_ECORRUPT (logged,
 * counted, buf zeroed) if anything does not match, so torn or corrupt data is
 * never returned. With buf NULL or cap too small, sets *len to the shard's
 * length and returns HBC_ETOOBIG (a size query). Other returns: 0,
 * HBC_ENOTFOUND, HBC_ESTORE, -errno with context.
 */
int shard_store_get(struct shard_store *s, const struct shard_key *key, void *buf, size_t cap,
                    size_t *len, struct err *e);

/*
 * Like shard_store_get() into a new buffer: on 0, *data (free with hbc_free)
 * holds *len bytes. On error *data is NULL.
 */
int shard_store_get_alloc(struct shard_store *s, const struct shard_key *key, uint8_t **data,
                          size_t *len, struct err *e);

/*
 * shard_store_get_alloc() for n keys (at most SHARD_STORE_MAX_BATCH). datas,
 * lens and results are caller arrays of n entries; results[i] is what
 * shard_store_get_alloc() returned for keys[i] and datas[i] (free each with
 * hbc_free) is NULL unless it is 0. Returns 0, or HBC_EINVAL for bad
 * arguments; e describes the last per-key failure.
 */
int shard_store_get_batch(struct shard_store *s, const struct shard_key *keys, size_t n,
                          uint8_t **datas, size_t *lens, int *results, struct err *e);

/*
 * shard_store_get_batch() without blocking, for an event loop thread: every
 * index lookup is answered from RocksDB's memtables and block cache, every
 * record read from the page cache (preadv2 RWF_NOWAIT), and seg_lock is
 * only tried. The records' headers and SHA-256 are checked exactly as by
 * shard_store_get(). Returns 0 with datas/lens/results as
 * shard_store_get_batch() fills them; HBC_EBUSY when any step would wait or
 * the shards found add up to more than max_bytes (nothing is returned then:
 * every datas[i] NULL; run shard_store_get_batch() on a thread that may
 * block); HBC_EINVAL for bad arguments; HBC_ENOMEM; -errno from a read.
 */
int shard_store_get_batch_nowait(struct shard_store *s, const struct shard_key *keys, size_t n,
                                 size_t max_bytes, uint8_t **datas, size_t *lens, int *results,
                                 struct err *e);

/*
 * Set *present to whether any shard of (vault_id, chunk_id) is stored.
 * Returns 0 or HBC_ESTORE.
 */
int shard_store_exists(struct shard_store *s, const uint8_t vault_id[SHARD_STORE_VAULT_ID_LEN],
                       const uint8_t chunk_id[SHARD_STORE_CHUNK_ID_LEN], bool *present,
                       struct err *e);

/*
 * shard_store_exists() for n chunk ids of one vault (the HaveChunks request);
 * present is a caller array of n entries. Returns 0 or HBC_ESTORE.
 */
int shard_store_exists_batch(struct shard_store *s,
                             const uint8_t vault_id[SHARD_STORE_VAULT_ID_LEN],
                             const uint8_t (*chunk_ids)[SHARD_STORE_CHUNK_ID_LEN], size_t n,
                             bool *present, struct err *e);

/*
 * Remove n keys from the index in one synced batch and count their bytes as
 * garbage of their segments (shard_store_compact() gives the space back).
 * results[i]: 0 removed, HBC_ENOTFOUND not stored. Returns 0 or a negative
 * code with nothing removed (HBC_ESTORE, HBC_EINVAL, HBC_ENOMEM). Writer call.
 *
 * This exists for garbage collection and tests. In the cluster, a node
 * removes a shard only for a sweep committed in the Raft log, after checking
 * the locks against its own applied state (DESIGN.md); the caller enforces
 * that, not this store.
 */
int shard_store_delete(struct shard_store *s, const struct shard_key *keys, size_t n, int *results,
                       struct err *e);

/*
 * Garbage collection (node/shard_store_gc.c). List the distinct chunk ids
 * stored in vault_id, in increasing order, after `after` (32 bytes, or NULL
 * from the start): at most max into ids and, per id, the latest
 * stored_at_ms of its shards into stored_at_ms (caller arrays of max
 * entries); *more says whether more follow. Returns 0, HBC_EINVAL,
 * HBC_ECORRUPT (a bad index value) or HBC_ESTORE. Any thread.
 */
int shard_store_list_chunks(struct shard_store *s, const uint8_t vault_id[SHARD_STORE_VAULT_ID_LEN],
                            const uint8_t *after, size_t max,
                            uint8_t (*ids)[SHARD_STORE_CHUNK_ID_LEN], uint64_t *stored_at_ms,
                            size_t *n, bool *more, struct err *e);

/*
 * Delete every shard of the n chunks (borrowed) of vault_id that this store
 * indexed before cutoff_ms (its own stored_at_ms); shards stored at or after
 * it are kept and counted in *kept_young. *deleted and *bytes (records with
 * their headers) say what went. Only for a committed, accepted GcSweep (the
 * caller's duty). Returns 0 or what shard_store_delete() returns. Writer call.
 */
int shard_store_delete_old(struct shard_store *s, const uint8_t vault_id[SHARD_STORE_VAULT_ID_LEN],
                           const uint8_t (*chunk_ids)[SHARD_STORE_CHUNK_ID_LEN], size_t n,
                           uint64_t cutoff_ms, uint64_t *deleted, uint64_t *kept_young,
                           uint64_t *bytes, struct err *e);

/*
 * Copy segment's live records forward into the open segment (checking each
 * record's header and SHA-256 on the way: a corrupt one is logged, removed
 * from the index and not copied), fdatasync, move their index entries in
 * synced batches, and only then delete the segment file. A crash at any
 * point leaves a consistent store: copies not yet indexed are an unindexed
 * tail, a segment whose records were all moved is unreferenced, and open
 * removes both. Compacting the open segment first closes it for appends.
 * res (may be NULL) says what was done. Returns 0, HBC_ENOTFOUND (no such
 * segment), HBC_ESTORE, HBC_ENOMEM, -errno with context. Writer call.
 */
int shard_store_compact(struct shard_store *s, uint64_t segment, struct shard_compact_result *res,
                        struct err *e);

/*
 * List every segment with its live ratio, by increasing number, so that a
 * garbage collector can choose what to compact. On 0, *out (free with
 * hbc_free; NULL when *n is 0) holds *n entries. Returns 0 or HBC_ENOMEM.
 */
int shard_store_segments(struct shard_store *s, struct shard_segment_info **out, size_t *n,
                         struct err *e);

/* Fill *st (caller's). Never fails. */
void shard_store_stats(struct shard_store *s, struct shard_store_stats *st);

#endif /* HBC_NODE_SHARD_STORE_H */
