/*
 * The client's view of one vault on the cluster: keys, placement, and
 * chunk objects stored as erasure-coded shards on the nodes.
 *
 * Every function here is BLOCKING and THREAD-SAFE: backup and restore
 * pipelines call them from several worker threads at once. Inside, one
 * network thread runs a libuv loop with a node_client (common/node_client.h)
 * per node; calls hand their work to it and wait.
 */
#ifndef HBC_CLIENT_REPO_H
#define HBC_CLIENT_REPO_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/err.h"
#include "hbc.pb-c.h"

#define REPO_ID_LEN 16   /* vault and snapshot ids */
#define REPO_CHUNK_ID 32 /* chunk ids (HMAC-SHA-256) */

struct repo;

/* How to reach the cluster and unlock the vault; strings borrowed for repo_open(). */
struct repo_options {
    const char *const *addrs; /* data-plane addresses of cluster nodes (any members) */
    size_t naddrs;            /* how many */
    const char *ca_file;      /* cluster CA */
    const char *cert_file;    /* the user's client certificate */
    const char *key_file;     /* its private key */
    const char *keyfile;      /* the KEK key file (common/keys.h) */
    const char *passphrase;   /* its passphrase */
    size_t passphrase_len;    /* bytes */
    const char *vault;        /* vault name; NULL for cluster-only operations (vault create/list) */
    unsigned timeout_ms;      /* per network request (0: 30 s) */
    unsigned max_inflight_mb; /* bytes of shards in flight at most (0: 256 MiB) */
};

/*
 * Connect, read the cluster's node list and (when o->vault is set) the
 * vault, unwrap its keys with the KEK. Returns 0 or an error with a
 * message: HBC_EPASSPHRASE, HBC_ECORRUPT (key file), HBC_ENOTFOUND (no such
 * vault), HBC_EWRONGKEY (the vault's keys were wrapped by another KEK),
 * HBC_EUNAVAILABLE (no node answered), HBC_ECONFIG.
 */
int repo_open(const struct repo_options *o, struct repo **out, struct err *e);

/* Close connections and wipe keys. NULL is a no-op. */
void repo_close(struct repo *r);

/*
 * Create a vault: random data key (generation 1) and chunk-id key, wrapped by
 * the KEK, committed through Raft. Needs the key file (HBC_ECONFIG without).
 * policy and home_site (borrowed, each may be NULL) are stored with the
 * vault as given (client/policy.h); copies, k and m stay the vault's scheme.
 * Returns 0 with vault_id set, HBC_EEXIST (the name is taken), HBC_EINVAL,
 * HBC_EUNAVAILABLE (no leader within the timeout).
 */
int repo_vault_create(struct repo *r, const char *name, unsigned copies, unsigned k, unsigned m,
                      const Hbc__VaultPolicy *policy, const char *home_site,
                      uint8_t vault_id[REPO_ID_LEN], struct err *e);

/*
 * Make later repo_vault_create() calls on r create short-retention vaults:
 * each snapshot locked for seconds (1..86400) instead of retention_days,
 * with an expiry margin of max_skew (docs/retention.md). 0: the default.
 */
void repo_set_create_retention(struct repo *r, uint32_t seconds);

/*
 * Make later repo_vault_create() calls on r give each snapshot a lock of
 * retention_days (0..36500; -1: the state machine's default, 2192) in
 * lock_mode (HBC__LOCK_MODE__LOCK_COMPLIANCE or _GOVERNANCE; 0: compliance).
 */
void repo_set_create_lock(struct repo *r, int64_t retention_days, int lock_mode);

/*
 * Every vault (records owned by the caller; free each with
 * protobuf_c_message_free_unpacked(..., NULL) and the array with hbc_free).
 */
int repo_vault_list(struct repo *r, Hbc__VaultInfo ***out, size_t *n, struct err *e);

/* The open vault's id. */
const uint8_t *repo_vault_id(const struct repo *r);

/* The chunk id of plaintext (HMAC-SHA-256 under the vault's chunk-id key). */
int repo_chunk_id(struct repo *r, const void *plain, size_t len, uint8_t id[REPO_CHUNK_ID],
                  struct err *e);

/*
 * A new HMAC context keyed with the open vault's chunk-id key, for callers
 * that need ids computed by another module (tree_builder_new() takes one).
 * The caller owns *out (crypto_hmac_free) and uses it from one thread.
 * Returns 0, HBC_EINVAL (no vault open) or HBC_ENOMEM.
 */
struct crypto_hmac;
int repo_id_hmac(struct repo *r, struct crypto_hmac **out, struct err *e);

/* Which of ids are already stored in the vault (present[i]); asks the nodes holding them. */
int repo_have(struct repo *r, const uint8_t (*ids)[REPO_CHUNK_ID], size_t n, bool *present,
              struct err *e);

/*
 * Store one chunk (plain, len bytes, borrowed) under id: seal (zstd when it
 * pays, AES-256-GCM), erasure-code once, and send the same shards to every
 * copy's nodes; return once every copy has at least k+1 shards durable (or
 * all k+m when fewer nodes exist). Idempotent: storing an id again is cheap.
 */
int repo_put_chunk(struct repo *r, const uint8_t id[REPO_CHUNK_ID], const void *plain, size_t len,
                   struct err *e);

/*
 * repo_have(), and any[i]: some node holds some shard of ids[i] (with
 * present[i] false: a put that failed half-way, which repo_put_chunk()
 * completes). Same returns.
 */
int repo_have_any(struct repo *r, const uint8_t (*ids)[REPO_CHUNK_ID], size_t n, bool *present,
                  bool *any, struct err *e);

/*
 * repo_put_chunk() for an id that repo_have_any() has just found on no node
 * (any[i] false): puts without asking the nodes again first (one round trip
 * less per chunk). Should that put fail (another writer came in between,
 * a node refused), it is retried as repo_put_chunk(). Same returns.
 */
int repo_put_chunk_new(struct repo *r, const uint8_t id[REPO_CHUNK_ID], const void *plain,
                       size_t len, struct err *e);

#define REPO_PUT_BATCH_MAX ((size_t)64 << 10) /* largest chunk of repo_put_chunks_new() */
#define REPO_PUT_BATCH_CHUNKS 64u             /* chunks sealed and sent together */

/*
 * repo_put_chunk_new() for n small chunks (each at most REPO_PUT_BATCH_MAX
 * bytes) that repo_have_any() has just found on no node: up to
 * REPO_PUT_BATCH_CHUNKS at a time are sealed and coded, and all their
 * shards go out in one request per node (one round trip for the lot instead
 * of one per chunk). A chunk that some node did not take whole is put again
 * alone with repo_put_chunk(). ids, plains and lens (n entries each) are
 * borrowed. Returns 0, HBC_EINVAL (a chunk too large; nothing was put), or
 * the first error of repo_put_chunk() (chunks before it are stored).
 */
int repo_put_chunks_new(struct repo *r, size_t n, const uint8_t (*ids)[REPO_CHUNK_ID],
                        const void *const *plains, const size_t *lens, struct err *e);

/*
 * Read one chunk: nearest copy first, data shards first; fall back to parity
 * and to other copies on any error or checksum mismatch; rebuild, open
 * (authenticate) and check the chunk id. On 0, *plain (hbc_free) holds *len
 * bytes. copy >= 0 reads only that copy (restore tests). stats (may be NULL)
 * counts shards read and errors met along the way: this call's counts are
 * ADDED to it, so one struct can total a whole restore.
 */
struct repo_read_stats {
    uint64_t shards_read;  /* shards fetched */
    uint64_t shard_errors; /* missing or corrupt shards met (recovered from) */
};
int repo_get_chunk(struct repo *r, const uint8_t id[REPO_CHUNK_ID], int copy, uint8_t **plain,
                   size_t *len, struct repo_read_stats *stats, struct err *e);

/* Chunks repo_get_chunks() reads in one call at most. */
#define REPO_GET_BATCH_CHUNKS 8

/*
 * repo_get_chunk() for n chunks (1 to REPO_GET_BATCH_CHUNKS) in one round
 * trip on the healthy path: the data shards of all of them in one request
 * per node; a chunk that cannot be read that way is read alone by
 * repo_get_chunk(), with every fallback. ids (n entries) are borrowed;
 * plains, lens, results and errs (may be NULL) are caller arrays of n: on
 * results[i] == 0, plains[i] (hbc_free) holds lens[i] bytes, otherwise it
 * is NULL and results[i] and errs[i] are what repo_get_chunk() returned.
 * stats as repo_get_chunk()'s. Returns 0 when every chunk was read, else
 * the first failure; HBC_EINVAL for bad arguments (every results[i] set to
 * it, the message in errs[0]).
 */
int repo_get_chunks(struct repo *r, size_t n, const uint8_t (*ids)[REPO_CHUNK_ID], int copy,
                    uint8_t **plains, size_t *lens, int *results, struct repo_read_stats *stats,
                    struct err *errs);

/* Commit a snapshot record through Raft (idempotent on snapshot_id). */
int repo_snapshot_commit(struct repo *r, const Hbc__SnapshotCommit *s, uint64_t *index,
                         struct err *e);

/*
 * The vault's snapshots in commit order, read current (Raft barrier). Free
 * each record (protobuf_c_message_free_unpacked(..., NULL)) and the array (hbc_free).
 */
int repo_snapshot_list(struct repo *r, Hbc__SnapshotInfo ***out, size_t *n, struct err *e);

/*
 * Record a restore test's result through Raft (t borrowed). Without
 * t->record_id a random one is drawn here, once: the retries after a lost
 * reply carry it, and the state machine applies a record whose id it holds
 * already as a no-op that succeeds.
 */
int repo_restore_test_record(struct repo *r, const Hbc__RestoreTestRecord *t, struct err *e);

/* Copies of the open vault (for --copy N). */
unsigned repo_copies(const struct repo *r);

/* Nodes in the cluster's node list (those placement spreads shards over). */
unsigned repo_node_count(const struct repo *r);

/*
 * Plaintext objects replicated whole (reference lists; common/reflist.h).
 * repo_plain_id() is the SHA-256 of data. repo_put_plain() stores data
 * (borrowed) under id as one shard (k = 1, m = 0) on every node of the
 * cluster, in parallel; *stored (may be NULL) counts the nodes that have it.
 * Returns 0 once a majority of the nodes hold it, HBC_EUNAVAILABLE otherwise.
 * repo_get_plain() asks the nodes in turn until one returns a copy whose
 * SHA-256 is id; on 0 *data (hbc_free) holds *len bytes. Returns 0,
 * HBC_ENOTFOUND, HBC_ECORRUPT (every copy failed its checks), or a network
 * error.
 */
int repo_plain_id(const void *data, size_t len, uint8_t id[REPO_CHUNK_ID], struct err *e);
int repo_put_plain(struct repo *r, const uint8_t id[REPO_CHUNK_ID], const void *data, size_t len,
                   unsigned *stored, struct err *e);
int repo_get_plain(struct repo *r, const uint8_t id[REPO_CHUNK_ID], uint8_t **data, size_t *len,
                   struct err *e);

/*
 * The GC fence index for a backup starting now (docs/retention.md): the
 * smallest gc_safe_index the nodes report (every sweep at or below it is
 * fully carried out on that node). Nodes that do not answer, and nodes
 * without a state machine (they report none and never delete), are left out.
 * Returns 0, HBC_EUNAVAILABLE (no node answered) or HBC_ENOMEM.
 */
int repo_gc_safe_index(struct repo *r, uint64_t *index, struct err *e);

#endif /* HBC_CLIENT_REPO_H */
