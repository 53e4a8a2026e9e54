/* The backup pipeline: walk, chunk, id, dedup, store chunks and trees, commit the snapshot. */
#ifndef HBC_CLIENT_BACKUP_H
#define HBC_CLIENT_BACKUP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "client/repo.h"
#include "common/err.h"

/*
 * The happy path: the calling thread walks the paths (client/walk.h) and
 * reads each new or changed file in large blocks, cuts it with the
 * streaming chunker, hashes the whole file (SHA-256) and each chunk
 * (repo_chunk_id). A chunk whose id this run has not seen yet is copied
 * into a job; worker threads take jobs in batches, ask the vault which ids
 * exist (repo_have, up to BACKUP_HAVE_BATCH ids at a time) and store the
 * rest (repo_put_chunk). Trees are built bottom-up, one tree_builder per
 * open directory, and their objects (and chunk lists) go through the same
 * jobs. When the walk ends and every job has returned, the reference list
 * (every chunk id the snapshot uses, sorted) is stored, and only then is the
 * snapshot committed through Raft (repo_snapshot_commit): nothing a
 * snapshot names can be missing from the vault.
 *
 * Memory: job buffers are bounded by inflight_bytes (the reader waits for
 * room), the read buffer is 8 MiB, the open pack about 4 MiB, tree entries
 * waiting for it at most BACKUP_PACK_MAX_WAITING, each worker holds one
 * sealed object and its shards while its put is in flight, and the per-run
 * id set costs about 48 bytes per unique chunk. Measured: a peak of about
 * 360 MiB with the default 12 workers of a 2-core machine (1 GB backup,
 * docs/performance.md); it stays below 512 MiB for any data size short of
 * millions of chunks.
 *
 * Small files: a file of fewer than pack_below bytes is not a chunk of its
 * own: its content is appended to a pack, one chunk of up to
 * BACKUP_PACK_MAX bytes holding many small files back to back, stored like
 * any chunk (id: HMAC of the pack's plaintext), and its entry names a slice
 * of the pack (tree.h, docs/formats.md "Packs"). Since a pack's id is known
 * only once it is full, tree entries (and directory finishes) that come
 * after the first file of the open pack wait in a queue, in walk order,
 * and are added to their builders when the pack closes; a pack also closes
 * when BACKUP_PACK_MAX_OPS entries or BACKUP_PACK_MAX_WAITING bytes of
 * them wait, and at the end of the walk. Packing is deterministic (the
 * same files in the same order make the same packs), so a forced re-read
 * of unchanged data stores nothing new; but a small file that appears
 * again elsewhere, or among other changed files, is stored again in a new
 * pack instead of deduplicated.
 *
 * Incremental: with a parent snapshot, a regular file whose size,
 * modification time, inode and device equal its entry in the parent
 * (tree_entry_unchanged) is not read: the parent's chunk list and SHA-256
 * are reused. The parent's directories are read alongside the walk with
 * cursors, one per open directory.
 *
 * Failure modes: a file or directory that cannot be read, vanishes or
 * changes type is reported through skip_cb and left out; the snapshot is
 * committed with the rest and backup_run() returns HBC_EPARTIAL. Any
 * failure to store (a put, a have, a tree) stops the backup before the
 * commit: no snapshot is recorded, and the chunks already stored are
 * garbage for the cluster's GC to collect.
 */

#define BACKUP_HAVE_BATCH 256u                        /* ids per repo_have() */
#define BACKUP_READ_BLOCK ((size_t)4 << 20)           /* bytes per read() */
#define BACKUP_INFLIGHT_DEFAULT ((size_t)96 << 20)    /* job bytes in flight */
#define BACKUP_MAX_THREADS 64u                        /* workers at most */
#define BACKUP_THREADS_PER_CORE 6                     /* default workers per core */
#define BACKUP_MAX_PATHS 1024u                        /* paths per backup */
#define BACKUP_PACK_BELOW_DEFAULT ((size_t)256 << 10) /* files below this size are packed */
#define BACKUP_PACK_BELOW_MAX ((size_t)1 << 20)       /* largest pack_below accepted */
#define BACKUP_PACK_MAX ((size_t)4 << 20)             /* a pack closes before passing this */
#define BACKUP_PACK_MAX_OPS 16384u                    /* tree entries waiting for one pack */
#define BACKUP_PACK_MAX_WAITING ((size_t)32 << 20)    /* their bytes */

/* Progress, as often as about 5 times a second and once at the end. */
struct backup_progress {
    uint64_t files;       /* entries done */
    uint64_t bytes;       /* bytes of files done (read or reused) */
    uint64_t bytes_read;  /* bytes actually read */
    uint64_t files_total; /* entries found by the scanner so far */
    uint64_t bytes_total; /* bytes of files found by the scanner so far */
    bool totals_final;    /* the scanner has finished: the totals are final */
    double elapsed;       /* seconds since the start */
    bool done;            /* the last call */
};

/* Called on the walking thread; must not block for long. */
typedef void (*backup_progress_cb)(void *arg, const struct backup_progress *p);

/* Called for each entry left out: path (borrowed), code, message (borrowed, no path in it). */
typedef void (*backup_skip_cb)(void *arg, const char *path, int code, const char *msg);

/* What to back up and how. A plain option struct: zero it, then fill. */
struct backup_options {
    const char *const *paths;    /* what to back up (borrowed), 1..BACKUP_MAX_PATHS */
    size_t npaths;               /* how many */
    const char *parent;          /* parent snapshot ("latest" or an id prefix), NULL: the latest
                                    snapshot holding every path, if any */
    bool force_read;             /* no parent: read every file */
    bool one_file_system;        /* do not descend into other file systems */
    unsigned threads;            /* worker threads (0: BACKUP_THREADS_PER_CORE per core), at most
                                    BACKUP_MAX_THREADS */
    size_t inflight_bytes;       /* job bytes in flight (0: BACKUP_INFLIGHT_DEFAULT) */
    size_t pack_below;           /* pack files smaller than this (0: BACKUP_PACK_BELOW_DEFAULT;
                                    1: pack nothing), at most BACKUP_PACK_BELOW_MAX */
    uint64_t time_ms;            /* snapshot time (0: now) */
    backup_progress_cb progress; /* may be NULL (then no scanner runs) */
    backup_skip_cb skipped;      /* may be NULL */
    void *arg;                   /* for both callbacks */
};

/* What a backup did. */
struct backup_result {
    uint8_t snapshot_id[REPO_ID_LEN]; /* the committed snapshot (when committed) */
    bool committed;                   /* a snapshot was committed */
    bool has_parent;                  /* a parent snapshot was used */
    uint8_t parent_id[REPO_ID_LEN];   /* which */
    uint64_t files;                   /* regular files in the snapshot */
    uint64_t dirs;                    /* directories */
    uint64_t others;                  /* symlinks, hard links, special files */
    uint64_t bytes;                   /* bytes of regular files in the snapshot */
    uint64_t bytes_read;              /* bytes read from files (not reused) */
    uint64_t files_read;              /* files read */
    uint64_t files_reused;            /* files whose parent entry was reused */
    uint64_t chunks;                  /* unique chunk ids the snapshot uses */
    uint64_t new_chunks;              /* chunks stored by this run */
    uint64_t new_bytes;               /* their plaintext bytes */
    uint64_t dedup_chunks;            /* chunks found already stored by repo_have */
    uint64_t trees;                   /* tree and chunk-list objects made */
    uint64_t packs;                   /* packs made (each a chunk holding small files) */
    uint64_t files_packed;            /* files read into packs */
    uint64_t skipped;                 /* entries left out */
    double seconds;                   /* wall time */
};

/*
 * Back up o->paths (see the top of this file) into r's open vault and fill
 * res. Returns 0; HBC_EPARTIAL (committed, some entries skipped);
 * HBC_EINVAL for bad options; HBC_ENOTFOUND if not one path could be read
 * (nothing committed); or the error that stopped it (nothing committed),
 * with a message.
 */
int backup_run(struct repo *r, const struct backup_options *o, struct backup_result *res,
               struct err *e);

#endif /* HBC_CLIENT_BACKUP_H */
