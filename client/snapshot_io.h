/* Reading and naming what snapshots hold: ids, "latest", directory cursors over trees, chunk and
 * reference lists. */
#ifndef HBC_CLIENT_SNAPSHOT_IO_H
#define HBC_CLIENT_SNAPSHOT_IO_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "client/repo.h"
#include "client/tree.h"
#include "common/err.h"
#include "common/reflist.h"
#include "hbc.pb-c.h"

/*
 * Snapshot layout. A snapshot's root tree is the tree of "/": each path
 * given to a backup is stored under its absolute path, the directories
 * above it being directory entries of their own (with the metadata those
 * directories had), as restic and borg do. So two paths never collide, a
 * restore recreates the same layout below its target, and "the same paths"
 * can be found again by looking them up.
 *
 * Reference lists: the format is in common/reflist.h. Each object is stored
 * in plaintext under the SHA-256 of its bytes, as one whole-object shard
 * (k = 1, m = 0) on every node that accepts it (at least a majority of the
 * cluster's nodes), so that the cluster's garbage collector can read it.
 */

#define SNAP_ID_HEX (REPO_ID_LEN * 2)              /* hex digits of a snapshot id */
#define SNAP_REFLIST_MAGIC REFLIST_MAGIC           /* reference list objects */
#define SNAP_REFLIST_VERSION REFLIST_VERSION       /* written and accepted */
#define SNAP_REFLIST_HEADER REFLIST_HEADER         /* bytes before the ids */
#define SNAP_REFLIST_PER_OBJECT REFLIST_PER_OBJECT /* ids in one object (about 4 MiB) */
#define SNAP_REFLIST_MAX_PARTS REFLIST_MAX_PARTS   /* parts a head may name */

/* Write id as SNAP_ID_HEX lowercase hex digits and a NUL into out. */
void snap_id_hex(const uint8_t id[REPO_ID_LEN], char out[SNAP_ID_HEX + 1]);

/*
 * Find the snapshot spec names among list[0..n) (borrowed): "latest" (the
 * last in commit order), or a hex prefix of its id (at least 4 digits,
 * case-insensitive). On 0, *out points into list. Returns HBC_ENOTFOUND,
 * HBC_EINVAL (not hex, too short, or a prefix matching several snapshots;
 * the message says which).
 */
int snap_find(Hbc__SnapshotInfo *const *list, size_t n, const char *spec,
              const Hbc__SnapshotInfo **out, struct err *e);

/*
 * Read and decode one tree object by id (a chunk of the vault) through
 * repo_get_chunk(); copy as there; stats (may be NULL) accumulates. On 0
 * *out is the tree (tree_free). Returns what repo_get_chunk() or
 * tree_decode() returns, wrapped.
 */
int snap_tree_fetch(struct repo *r, const uint8_t id[TREE_ID_LEN], enum tree_kind kind, int copy,
                    struct tree **out, struct repo_read_stats *stats, struct err *e);

/*
 * A cursor over one directory of a snapshot: its entries in name order,
 * across the head and its parts, holding at most two decoded objects at a
 * time (the head and the current part). One thread at a time.
 */
struct snap_dir;

/*
 * Open the directory whose head tree is head (borrowed) into *out. copy and
 * stats as for snap_tree_fetch() (stats, if set, must outlive the cursor).
 * Returns 0 or what snap_tree_fetch() returns.
 */
int snap_dir_open(struct repo *r, const uint8_t head[TREE_ID_LEN], int copy,
                  struct repo_read_stats *stats, struct snap_dir **out, struct err *e);

/*
 * snap_dir_open() of a head already read: plain (borrowed, len bytes) is the
 * head tree's plaintext as repo_get_chunk() or repo_get_chunks() returned it
 * (opened and its id checked). Decodes it with every tree check. Returns 0,
 * what tree_decode() returns (wrapped "decode tree"), or HBC_ENOMEM.
 */
int snap_dir_open_plain(struct repo *r, const uint8_t *plain, size_t len, int copy,
                        struct repo_read_stats *stats, struct snap_dir **out, struct err *e);

/*
 * The next entry into *en (valid until the next call on d). Returns 1 with
 * an entry, 0 at the end, or an error (fetching a part, or HBC_EFORMAT if
 * names do not increase across objects).
 */
int snap_dir_next(struct snap_dir *d, const struct tree_entry **en, struct err *e);

/*
 * Move forward to the entry called name and return it in *en (valid until
 * the next call on d). Forward only: names asked for must increase from call
 * to call. Returns 1 if found, 0 if not (the cursor then stands before the
 * first later name), or an error.
 */
int snap_dir_find(struct snap_dir *d, const char *name, const struct tree_entry **en,
                  struct err *e);

/* Free d. NULL is a no-op. */
void snap_dir_close(struct snap_dir *d);

/*
 * The file en describes (a TREE_FILE, borrowed) as one array of chunks:
 * its inline chunks, or the chunks of its ChunkList objects fetched through
 * r, checked to add up to en->size. On 0 *out (hbc_free; NULL when the file
 * is empty) holds *n chunks. Returns 0, HBC_EFORMAT, or a fetch error.
 */
int snap_file_chunks(struct repo *r, const struct tree_entry *en, int copy,
                     struct repo_read_stats *stats, struct tree_chunk **out, size_t *n,
                     struct err *e);

/*
 * Look up path ('/'-joined components, "" or "/" for the root; leading and
 * repeated '/' ignored) below the root tree root. On 1, *type is the
 * entry's type (TREE_DIR for the root) and, for a directory, dir its tree
 * id. Returns 1 if found, 0 if not (or a component above is not a
 * directory), or an error.
 */
int snap_lookup(struct repo *r, const uint8_t root[TREE_ID_LEN], const char *path, int copy,
                enum tree_type *type, uint8_t dir[TREE_ID_LEN], struct err *e);

/*
 * Encode one reference-list object: parts[0..nparts) then ids[0..n), as
 * described above (ids strictly increasing, n <= SNAP_REFLIST_PER_OBJECT,
 * nparts <= SNAP_REFLIST_MAX_PARTS). On 0 *out (hbc_free) holds *len bytes.
 * Returns 0, HBC_EINVAL or HBC_ENOMEM.
 */
int snap_reflist_encode(const uint8_t (*parts)[TREE_ID_LEN], size_t nparts,
                        const uint8_t (*ids)[TREE_ID_LEN], size_t n, uint8_t **out, size_t *len,
                        struct err *e);

/*
 * Decode one reference-list object (data, len bytes, borrowed). On 0,
 * *parts and *ids point into data (*nparts and *n of them). Returns 0,
 * HBC_ETRUNCATED, HBC_EFORMAT (magic, counts, order) or HBC_EVERSION.
 */
int snap_reflist_decode(const uint8_t *data, size_t len, const uint8_t (**parts)[TREE_ID_LEN],
                        size_t *nparts, const uint8_t (**ids)[TREE_ID_LEN], size_t *n,
                        struct err *e);

/*
 * Store the reference list ids[0..n) (sorted, unique; borrowed) as objects
 * through repo_put_plain() and return the head's id in head. Returns 0 or
 * an error from encoding or storing.
 */
int snap_reflist_store(struct repo *r, const uint8_t (*ids)[TREE_ID_LEN], size_t n,
                       uint8_t head[TREE_ID_LEN], struct err *e);

/*
 * Read the reference list whose head is head back into *ids (hbc_free), *n
 * ids, checking order across objects. Returns 0 or an error.
 */
int snap_reflist_load(struct repo *r, const uint8_t head[TREE_ID_LEN], uint8_t (**ids)[TREE_ID_LEN],
                      size_t *n, struct err *e);

/*
 * Commit sc (its gc_start_index set from repo_gc_safe_index() before the
 * backup read anything) through repo_snapshot_commit(). When the state
 * machine answers HBC_EGCFENCE (a garbage collection swept the vault
 * during the backup), take a fresh fence index, check with repo_have()
 * that every id of ids[0..n) (the snapshot's reference list, borrowed) is
 * still stored, store the reference list again, and commit with the fresh
 * index; at most SNAP_FENCE_RETRIES times. Returns 0, HBC_EGCFENCE with the
 * number of chunks that are gone (the backup must run again), or an error
 * of the calls above.
 */
#define SNAP_FENCE_RETRIES 3
int snap_commit_fenced(struct repo *r, Hbc__SnapshotCommit *sc, const uint8_t (*ids)[TREE_ID_LEN],
                       size_t n, uint64_t *index, struct err *e);

#endif /* HBC_CLIENT_SNAPSHOT_IO_H */
