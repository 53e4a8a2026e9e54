/* The RocksDB database under the replicated state machine: column families, batches, scans. */
#ifndef HBC_NODE_META_STORE_H
#define HBC_NODE_META_STORE_H

#include <stdbool.h>
#include <stddef.h>

#include "common/err.h"

/*
 * One RocksDB database (C API) with a fixed set of column families. The state
 * machine (node/fsm*.c) is its only writer; every change goes through one
 * write batch so that a command's records and the applied index land
 * together or not at all.
 *
 * Thread safety: RocksDB itself is thread-safe, so reads (get, scan) may run
 * on any thread while the owner writes. A batch belongs to one thread.
 *
 * Errors: RocksDB's error strings become HBC_ESTORE with RocksDB's text in
 * the message; allocation failures are HBC_ENOMEM.
 */

/*
 * Column families, in the canonical order used by snapshots and digests. New
 * ones are appended, so a snapshot from an older version (fewer families, same
 * order) still restores.
 */
enum meta_cf {
    META_CF_DEFAULT = 0,   /* "default": RocksDB's own; unused, kept empty */
    META_CF_META,          /* "meta": applied index, leader time, command chain */
    META_CF_NODES,         /* "nodes": node id -> NodeInfo */
    META_CF_VAULTS,        /* "vaults": 'i'+vault id -> VaultInfo, 'n'+name -> vault id */
    META_CF_SNAPSHOTS,     /* "snapshots": 's'+id -> SnapshotInfo, 'v'+vault+index -> id */
    META_CF_RESTORE_TESTS, /* "restore_tests": snapshot id+index -> RestoreTestInfo */
    META_CF_USERS,         /* "users": certificate subject -> RoleInfo */
    META_CF_APPROVALS,     /* "approvals": be64 request index -> ApprovalInfo */
    META_CF_AUDIT,         /* "audit": be64 Raft index -> AuditRecord */
    META_CF_COUNT          /* number of column families */
};

#define META_KEY_MAX 1024            /* longest key the store accepts or restores */
#define META_VALUE_MAX (1024 * 1024) /* longest value the store accepts or restores */
#define META_CF_COUNT_V1 6           /* families of the first version (up to restore_tests) */

/* The RocksDB name of a column family ("nodes"); never NULL for a valid cf. */
const char *meta_cf_name(enum meta_cf cf);

struct meta_store;
struct meta_batch;
struct meta_view;

/*
 * Open (creating if needed) the database in directory dir, with every column
 * family above, into *out. dir's parent must exist. Returns 0, HBC_ENOMEM or
 * HBC_ESTORE (e.g. the directory is locked by another process, or the
 * database holds a column family this version does not know).
 */
int meta_store_open(const char *dir, struct meta_store **out, struct err *e);

/* Close the database and free s. NULL is a no-op. No view may be open. */
void meta_store_close(struct meta_store *s);

/*
 * Read the value of key in cf into *val (hbc_malloc'ed, the caller frees it
 * with hbc_free; one spare NUL byte follows the value) and *len. view may be
 * NULL for the latest state. Returns 0, HBC_ENOTFOUND when the key is
 * absent, HBC_ENOMEM or HBC_ESTORE.
 */
int meta_store_get(struct meta_store *s, const struct meta_view *view, enum meta_cf cf,
                   const void *key, size_t klen, void **val, size_t *len, struct err *e);

/*
 * Called for each key/value of a scan, in key order. key and val are
 * borrowed until the callback returns. Return 0 to continue; any other
 * value stops the scan and is returned by meta_store_scan().
 */
typedef int (*meta_scan_fn)(const void *key, size_t klen, const void *val, size_t vlen, void *arg);

/*
 * Visit every key of cf that starts with prefix (plen may be 0 for all keys),
 * in key order, as of view (NULL: a consistent view taken now). Returns 0
 * after the last key, the callback's nonzero value if it stopped the scan,
 * or HBC_ENOMEM / HBC_ESTORE.
 */
int meta_store_scan(struct meta_store *s, const struct meta_view *view, enum meta_cf cf,
                    const void *prefix, size_t plen, meta_scan_fn fn, void *arg, struct err *e);

/* A consistent read-only view of the whole database (a RocksDB snapshot). */
int meta_view_open(struct meta_store *s, struct meta_view **out, struct err *e);

/* Release a view. NULL is a no-op. */
void meta_view_close(struct meta_view *v);

/* A new, empty write batch for s. */
int meta_batch_new(struct meta_store *s, struct meta_batch **out, struct err *e);

/* Free a batch without writing it. NULL is a no-op. */
void meta_batch_free(struct meta_batch *b);

/* Drop every operation added so far. */
void meta_batch_clear(struct meta_batch *b);

/* Add a put (key and value copied into the batch). */
void meta_batch_put(struct meta_batch *b, enum meta_cf cf, const void *key, size_t klen,
                    const void *val, size_t vlen);

/* Add a delete of one key. */
void meta_batch_delete(struct meta_batch *b, enum meta_cf cf, const void *key, size_t klen);

/*
 * Add deletes that remove every key cf holds now (a range delete from its
 * first to its last key, and the last key itself). Later puts in the same
 * batch win over these deletes.
 */
int meta_batch_delete_all(struct meta_batch *b, enum meta_cf cf, struct err *e);

/*
 * Write the batch atomically. sync=true waits for the RocksDB write-ahead log
 * to reach the disk (fsync); sync=false leaves it in the OS page cache, which
 * survives a process crash but not a power loss. The batch stays allocated
 * (and keeps its operations) until meta_batch_free() or meta_batch_clear().
 */
int meta_batch_write(struct meta_batch *b, bool sync, struct err *e);

#endif /* HBC_NODE_META_STORE_H */
