/* Restoring a snapshot into a directory, and restore tests (everything but the writing). */
#ifndef HBC_CLIENT_RESTORE_H
#define HBC_CLIENT_RESTORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "client/repo.h"
#include "common/err.h"

/*
 * The happy path: the calling thread reads the snapshot's trees depth
 * first (authenticated plaintext only: every object comes through
 * repo_get_chunk, which opens and checks it), while prefetch threads read
 * the trees of the next subdirectories ahead (up to 32 siblings, 64 trees
 * in all). It hands each file's chunks to worker threads, which fetch them
 * (repo_get_chunk: nearest copy, data shards first, parity and other
 * copies on any error), write them into the file's temporary name
 * (client/fs_restore.h) and feed the file's SHA-256 in order. When a
 * file's last chunk is in, its digest is compared with the tree's, the
 * file committed (renamed into place with its metadata) and, with verify,
 * read back and checked again. Hard links are made and
 * directory metadata set once every file is in (post-order).
 *
 * Packed small files (client/backup.h) that follow each other in the walk
 * and share a pack go to one worker as a group: it reads the pack once
 * (client/pack.h caches the last few), checks each file's slice and
 * SHA-256 and writes the files one by one.
 * Without a target it is a restore test: everything but the writing, for
 * one copy or any, and the result is recorded in the cluster
 * (repo_restore_test_record).
 *
 * Failure modes: an entry that cannot be fetched, decoded, written, or
 * whose digest differs is reported through error_cb and counted; the rest
 * goes on, and restore_run() returns HBC_EPARTIAL. A path that would leave
 * the target is refused by fs_restore (HBC_EDENIED) and counted the same
 * way. A tree that cannot be read stops only the directory it names.
 * Memory: chunk buffers in flight are bounded (inflight_bytes), whatever
 * the snapshot's size.
 */

#define RESTORE_INFLIGHT_DEFAULT ((size_t)96 << 20) /* chunk bytes in flight */
#define RESTORE_MAX_THREADS 64u                     /* workers at most */
#define RESTORE_MAX_INCLUDES 64u                    /* --include patterns */

/* Progress, about 5 times a second and once at the end. */
struct restore_progress {
    uint64_t files;       /* entries done */
    uint64_t bytes;       /* file bytes done */
    uint64_t bytes_total; /* file bytes of the snapshot (its record's total) */
    double elapsed;       /* seconds */
    bool done;            /* the last call */
};

typedef void (*restore_progress_cb)(void *arg, const struct restore_progress *p);

/* An entry that failed: path (borrowed, relative to the snapshot root), code, message. */
typedef void (*restore_error_cb)(void *arg, const char *path, int code, const char *msg);

/* What to restore. A plain option struct: zero it, then fill. */
struct restore_options {
    const char *snapshot;         /* "latest" or an id prefix */
    const char *target;           /* directory to restore into; NULL: a restore test */
    const char *const *includes;  /* fnmatch patterns of paths to restore (NULL: everything) */
    size_t nincludes;             /* how many */
    bool verify;                  /* with a target: read back each file and check its SHA-256 */
    int copy;                     /* -1: any copy; else only that copy (0-based) */
    bool fsync;                   /* fsync files and directories */
    bool record;                  /* restore test: record the result in the cluster */
    unsigned threads;             /* workers (0: 2 per core) */
    size_t inflight_bytes;        /* chunk bytes in flight (0: default) */
    restore_progress_cb progress; /* may be NULL */
    restore_error_cb error;       /* may be NULL */
    void *arg;                    /* for both */
};

/* What a restore did. */
struct restore_result {
    uint8_t snapshot_id[REPO_ID_LEN]; /* the snapshot restored */
    uint64_t files;                   /* regular files done */
    uint64_t dirs;                    /* directories */
    uint64_t others;                  /* symlinks, hard links, special files */
    uint64_t bytes;                   /* file bytes */
    uint64_t chunks;                  /* chunks fetched (trees included) */
    uint64_t chunk_bytes;             /* their bytes */
    uint64_t shards_read;             /* shards fetched */
    uint64_t shard_errors;            /* shards missing or bad, recovered from */
    uint64_t errors;                  /* entries that failed */
    uint64_t verified;                /* files read back and checked (verify) */
    bool recorded;                    /* a restore test result was recorded */
    double seconds;                   /* wall time */
};

/*
 * Restore (or test) o->snapshot from r's open vault as described above.
 * Returns 0 if every entry was restored and checked; HBC_EPARTIAL if some
 * failed (res->errors); HBC_ENOTFOUND / HBC_EINVAL for the snapshot; or the
 * error that stopped it (the target cannot be opened, the root tree cannot
 * be read, recording failed), with a message.
 */
int restore_run(struct repo *r, const struct restore_options *o, struct restore_result *res,
                struct err *e);

#endif /* HBC_CLIENT_RESTORE_H */
