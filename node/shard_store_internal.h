/* Internals shared by the shard store's files: on-disk encodings, the handle, helpers. */
#ifndef HBC_NODE_SHARD_STORE_INTERNAL_H
#define HBC_NODE_SHARD_STORE_INTERNAL_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>

#include <openssl/evp.h>
#include <rocksdb/c.h>

#include "node/shard_store.h"

/* fdatasync(2) as the store calls it: 0, or -1 with errno set. */
typedef int (*store_fdatasync_fn)(int fd, void *arg);

struct appender;

/* Column families of the index; every one is named when opening. */
enum store_cf { CF_DEFAULT, CF_SHARDS, CF_SEGMENTS, CF_BY_SEGMENT, CF_COUNT };

/*
 * Record header in a segment (SHARD_STORE_RECORD_HEADER_LEN bytes, integers
 * big-endian): magic "HBSR" (4), version (1), zero (3), key (52), data
 * length (4), SHA-256 of the data (32).
 */
#define RECORD_MAGIC 0x48425352u
#define RECORD_VERSION 1
#define RECORD_KEY_AT 8
#define RECORD_LEN_AT (RECORD_KEY_AT + SHARD_STORE_KEY_LEN)
#define RECORD_SHA_AT (RECORD_LEN_AT + 4)

/* "shards" value: version (1), segment (8), offset (8), length (4), SHA-256 (32), time (8). */
#define LOC_VERSION 1
#define LOC_LEN 61
/* "segments" key: segment (8); value: version (1), hwm (8), live bytes (8), live records (8). */
#define SEGMETA_VERSION 1
#define SEGMETA_LEN 25
/* "by_segment" key: segment (8) || offset (8); value: key (52) || record length (4). */
#define BYSEG_KEY_LEN 16
#define BYSEG_VALUE_LEN (SHARD_STORE_KEY_LEN + 4)
/* "default" keys. */
#define META_FORMAT_KEY "format"
#define META_TOTALS_KEY "totals"
#define STORE_FORMAT_VERSION 1
/* Bytes of vault id || chunk id that prefix every key of one chunk. */
#define CHUNK_PREFIX_LEN (SHARD_STORE_VAULT_ID_LEN + SHARD_STORE_CHUNK_ID_LEN)

/* store_read_record(): the segment went away (compacted); look the key up again. */
#define STORE_SEGMENT_GONE 1
/* A read without blocking (shard_store_get_batch_nowait()) would have to wait. */
#define STORE_WOULD_BLOCK 4

/* A decoded "shards" value. */
struct record_loc {
    uint64_t segment;                       /* segment number */
    uint64_t offset;                        /* record header offset */
    uint32_t length;                        /* data bytes */
    uint8_t sha256[SHARD_STORE_SHA256_LEN]; /* SHA-256 of the data */
    uint64_t stored_at_ms;                  /* first stored, ms since the epoch */
};

/*
 * One segment file. Fields marked (lock) change only under seg_lock held for
 * writing and are read under it held for reading; (writer) fields are used by
 * the writer call in its append stage alone (see struct shard_store).
 */
struct segment {
    uint64_t number;           /* never reused within a process (lock: constant) */
    uint64_t hwm;              /* end of the last indexed record (lock) */
    uint64_t live_bytes;       /* bytes of indexed records, headers included (lock) */
    uint64_t live_records;     /* indexed records (lock) */
    uint64_t disk_size;        /* file size, unindexed bytes included (lock) */
    bool missing;              /* indexed but the file was absent at open (lock) */
    uint64_t wpos;             /* (writer) where the next append goes */
    int wfd;                   /* (writer) read-write descriptor while appending, else -1 */
    unsigned pins;             /* (lock) writer calls in flight that appended to it: wfd stays */
    _Atomic int rfd;           /* cached read-only descriptor or -1 (see store_segment_rfd) */
    _Atomic uint64_t last_use; /* use_clock at the last read, to close idle descriptors */
};

struct shard_store {
    char *dir;                                       /* the store directory */
    int seg_dirfd;                                   /* segments/ directory */
    struct shard_store_options opts;                 /* with defaults filled in */
    EVP_MD *sha256;                                  /* fetched once, shared by all threads */
    rocksdb_t *db;                                   /* the index */
    rocksdb_options_t *dbopts;                       /* options of the database and every CF */
    rocksdb_block_based_table_options_t *table_opts; /* bloom filters for point lookups */
    rocksdb_column_family_handle_t *cf[CF_COUNT];    /* in enum store_cf order */
    rocksdb_readoptions_t *ro;                       /* shared read options */
    rocksdb_readoptions_t *ro_cached;                /* the same, memtable and block cache only */
    rocksdb_writeoptions_t *wo;                      /* sync = true */
    /*
     * Writer calls. A put appends under append_mu, then takes sync_mu before
     * letting append_mu go, and fdatasyncs and indexes under sync_mu: so the
     * next put appends while this one syncs, and syncs run in append order.
     * Delete and compaction hold both (nothing in flight beside them).
     */
    pthread_mutex_t append_mu;                          /* the append stage */
    pthread_mutex_t sync_mu;                            /* the sync + index stage */
    pthread_mutex_t pending_mu;                         /* guards syncing_keys and nsyncing */
    const uint8_t (*syncing_keys)[SHARD_STORE_KEY_LEN]; /* sorted keys the syncing put writes */
    size_t nsyncing;                                    /* entries in syncing_keys */
    struct appender *failed;          /* (append_mu + sync_mu) appends of a put whose sync failed:
                                         cut back by the next writer that holds both locks */
    store_fdatasync_fn fdatasync_fn;  /* fdatasync, or a test's replacement */
    void *fdatasync_arg;              /* its argument */
    pthread_rwlock_t seg_lock;        /* the segment table and its (lock) fields */
    struct segment **segs;            /* sorted by number (lock) */
    size_t nsegs;                     /* entries in segs (lock) */
    size_t cap_segs;                  /* allocated entries in segs (lock) */
    struct segment *open;             /* append target or NULL (lock; changed by the writer) */
    uint64_t next_number;             /* (writer) number of the next segment created */
    _Atomic bool broken;              /* an index write failed: writes refused until reopened */
    uint64_t shard_count;             /* indexed shards (lock) */
    uint64_t used_bytes;              /* bytes of indexed records (lock) */
    uint64_t recovered_cut_bytes;     /* set by open */
    _Atomic int open_rfds;            /* read descriptors open */
    _Atomic uint64_t use_clock;       /* ticks once per read */
    _Atomic uint64_t corrupt_reads;   /* records that failed their checks */
    _Atomic uint64_t put_batches;     /* counters for stats */
    _Atomic uint64_t records_written; /* records appended */
    _Atomic uint64_t fdatasyncs;      /* segment fdatasync calls */
    _Atomic uint64_t dir_fsyncs;      /* directory fsync calls */
    _Atomic uint64_t index_syncs;     /* synced index batches */
    _Atomic uint64_t pipelined_puts;  /* puts that appended while another one synced */
    _Atomic uint64_t reappended_puts; /* puts appended again after an earlier put's sync failed */
};

static inline void store_put_be32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}

static inline void store_put_be64(uint8_t *p, uint64_t v)
{
    store_put_be32(p, (uint32_t)(v >> 32));
    store_put_be32(p + 4, (uint32_t)v);
}

static inline uint32_t store_get_be32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | (uint32_t)p[3];
}

static inline uint64_t store_get_be64(const uint8_t *p)
{
    return (uint64_t)store_get_be32(p) << 32 | store_get_be32(p + 4);
}

static inline uint64_t store_record_size(uint32_t data_len)
{
    return SHARD_STORE_RECORD_HEADER_LEN + (uint64_t)data_len;
}

/* Encodings (see the layouts above). The decoders bound every field. */
void store_key_encode(const struct shard_key *key, uint8_t out[SHARD_STORE_KEY_LEN]);
void store_loc_encode(const struct record_loc *loc, uint8_t out[LOC_LEN]);
int store_loc_decode(const char *v, size_t n, struct record_loc *loc, struct err *e);
void store_segmeta_encode(uint64_t hwm, uint64_t live_bytes, uint64_t live_records,
                          uint8_t out[SEGMETA_LEN]);
void store_byseg_key(uint64_t segment, uint64_t offset, uint8_t out[BYSEG_KEY_LEN]);
void store_record_header(const uint8_t key[SHARD_STORE_KEY_LEN], uint32_t len,
                         const uint8_t sha[SHARD_STORE_SHA256_LEN],
                         uint8_t out[SHARD_STORE_RECORD_HEADER_LEN]);

/* "vault=<hex> chunk=<hex> index=<n>" for log lines; out holds 160 bytes. */
void store_key_text(const uint8_t key[SHARD_STORE_KEY_LEN], char out[160]);

/* Take a RocksDB error string into e as HBC_ESTORE ("what: message"), free it, return the code. */
int store_rocks_error(struct err *e, char *errptr, const char *what);

/* SHA-256 of data into out. Returns 0 or HBC_ECRYPTO. */
int store_sha256(struct shard_store *s, const void *data, size_t len,
                 uint8_t out[SHARD_STORE_SHA256_LEN], struct err *e);

/* Milliseconds since the epoch. */
uint64_t store_now_ms(void);

/* The segment numbered number, or NULL. Caller holds seg_lock. */
struct segment *store_segment_find(struct shard_store *s, uint64_t number);

/* A new segment entry (not in the table) with no descriptors. Returns NULL on allocation failure.
 */
struct segment *store_segment_new(uint64_t number);

/* Add seg to the table, keeping it sorted. Caller holds seg_lock for writing. 0 or HBC_ENOMEM. */
int store_segment_insert(struct shard_store *s, struct segment *seg);

/* Take seg out of the table, close its descriptors and free it. Caller holds seg_lock for writing.
 */
void store_segment_remove(struct shard_store *s, struct segment *seg);

/* Close seg's descriptors and free it (not in the table). NULL is a no-op. */
void store_segment_free(struct shard_store *s, struct segment *seg);

/* Look key up in the index. Returns 0, HBC_ENOTFOUND, HBC_ECORRUPT (bad value), HBC_ESTORE. */
int store_locate(struct shard_store *s, const uint8_t key[SHARD_STORE_KEY_LEN],
                 struct record_loc *loc, struct err *e);

/*
 * Read the record at loc into data (loc->length bytes) and check its header
 * against key and loc and its SHA-256. Takes seg_lock for reading. Returns 0,
 * STORE_SEGMENT_GONE when the segment is no longer in the table, HBC_ECORRUPT
 * (logged, counted, data zeroed), -errno with context.
 */
int store_read_record(struct shard_store *s, const uint8_t key[SHARD_STORE_KEY_LEN],
                      const struct record_loc *loc, uint8_t *data, struct err *e);

/* Add the "segments" entry of a segment, or the totals, to a write batch. */
void store_batch_segmeta(struct shard_store *s, rocksdb_writebatch_t *wb, uint64_t number,
                         uint64_t hwm, uint64_t live_bytes, uint64_t live_records);
void store_batch_totals(struct shard_store *s, rocksdb_writebatch_t *wb, uint64_t shard_count,
                        uint64_t used_bytes);

/* Write wb with sync = true. Returns 0 or HBC_ESTORE ("index: write: ..."). */
int store_write_sync(struct shard_store *s, rocksdb_writebatch_t *wb, struct err *e);

/*
 * Writer calls other than put_batch (delete, compact, and any new one that
 * changes segments or the index) run between these: both writer locks are
 * taken, so no put is in flight beside the caller, and the appends of a put
 * whose sync failed are cut back first. (This replaces the former write_mu.)
 */
void store_writer_lock(struct shard_store *s);
void store_writer_unlock(struct shard_store *s);

/* Free what the put pipeline holds (a failed put's appends not yet cut back). */
void store_pipeline_free(struct shard_store *s);

/*
 * For tests: segment fdatasyncs call fn(fd, arg) instead (NULL restores
 * fdatasync), so that a test can hold a sync while another put appends, or
 * make it fail. Call before any writer call runs.
 */
void shard_store_set_fdatasync(struct shard_store *s, store_fdatasync_fn fn, void *arg);

#endif /* HBC_NODE_SHARD_STORE_INTERNAL_H */
