/* libhbc: the public C API of the HBC backup client. */
#ifndef HBC_HBC_H
#define HBC_HBC_H

#include <stddef.h>
#include <stdint.h>

#include <hbc/error.h>

#ifdef __cplusplus
extern "C" {
#endif

/*
 * Conventions. Every function returns 0 or a negative code (an HBC_E* code
 * from <hbc/error.h>, or -errno); hbc_strerror() names the code and
 * hbc_client_errmsg() gives the message of the handle's last failure, with
 * its context ("restore target: /srv/x: Permission denied"). Strings and
 * arrays passed in are borrowed for the call. A handle may be used by one
 * thread at a time; callbacks run on threads the library starts or on the
 * caller's, never after the call that was given them has returned.
 */

/* The library's version string, e.g. "0.1.0". */
const char *hbc_version(void);

/* A connection to one vault of a cluster (opaque). */
typedef struct hbc_client hbc_client;

/* How to reach the cluster and unlock the vault. A plain option struct: zero it, then fill. */
struct hbc_settings {
    const char *const *cluster; /* data-plane addresses "ip:port" of any cluster members */
    size_t ncluster;            /* how many */
    const char *ca;             /* the cluster CA certificate (PEM file) */
    const char *cert;           /* your client certificate (PEM file) */
    const char *key;            /* its private key (PEM file) */
    const char *keyfile;        /* the key file holding the key encryption key */
    const char *passphrase;     /* its passphrase */
    size_t passphrase_len;      /* bytes */
    const char *vault;          /* the vault's name */
    unsigned timeout_ms;        /* per network request (0: 30 s) */
};

/*
 * Connect to the cluster, open the vault and unlock its keys with the key
 * file: a wrong passphrase (HBC_EPASSPHRASE) or key (HBC_EWRONGKEY) is
 * found here, before any data moves. On 0, *out is the handle. On failure
 * other than HBC_ENOMEM, *out is still a handle whose hbc_client_errmsg()
 * says what went wrong; it accepts nothing but hbc_client_close().
 * Returns 0, HBC_ECONFIG, HBC_EUNAVAILABLE, HBC_ENOTFOUND (no such vault),
 * HBC_EPASSPHRASE, HBC_EWRONGKEY, HBC_ECORRUPT (key file), HBC_ETLS, ...
 */
int hbc_client_open(const struct hbc_settings *s, hbc_client **out);

/* Close the connections and wipe the keys. NULL is a no-op. */
void hbc_client_close(hbc_client *c);

/* The message of c's last failure ("" if none); valid until the next call on c. */
const char *hbc_client_errmsg(const hbc_client *c);

/* Progress of a backup or restore, about five times a second and once at the end. */
struct hbc_progress {
    uint64_t files;       /* entries done */
    uint64_t bytes;       /* bytes done */
    uint64_t files_total; /* entries in all (backup: found so far) */
    uint64_t bytes_total; /* bytes in all (backup: found so far) */
    int totals_final;     /* nonzero once the totals are known for sure */
    double elapsed;       /* seconds since the start */
    double rate;          /* bytes per second so far */
    double eta;           /* seconds left, or -1 when unknown */
    int done;             /* nonzero on the last call */
};

/* Receives progress; arg is the options' arg. Keep it short: the pipeline waits. */
typedef void (*hbc_progress_cb)(void *arg, const struct hbc_progress *p);

/*
 * An entry that could not be backed up or restored: its path (a backup:
 * as on disk; a restore: relative to the snapshot's root), the code, and
 * a message without the path.
 */
typedef void (*hbc_entry_error_cb)(void *arg, const char *path, int code, const char *message);

#define HBC_ID_HEX 33 /* a snapshot id in hex, with its NUL */

/* What to back up. A plain option struct: zero it, then fill. */
struct hbc_backup_options {
    const char *const *paths;   /* files or directories, stored under their absolute paths */
    size_t npaths;              /* how many */
    const char *parent;         /* parent snapshot (id prefix or "latest"); NULL: the
                                   latest snapshot holding every path */
    int force_read;             /* nonzero: no parent, read every file */
    int one_file_system;        /* nonzero: stay on each path's file system */
    unsigned threads;           /* worker threads (0: the default, see docs/cli.md) */
    hbc_progress_cb progress;   /* may be NULL */
    hbc_entry_error_cb skipped; /* may be NULL */
    void *arg;                  /* for the callbacks */
};

/* What a backup did. */
struct hbc_backup_summary {
    char snapshot[HBC_ID_HEX]; /* the new snapshot's id ("" if none was committed) */
    char parent[HBC_ID_HEX];   /* the parent used ("" if none) */
    uint64_t files;            /* regular files in the snapshot */
    uint64_t dirs;             /* directories */
    uint64_t others;           /* symlinks, hard links, special files */
    uint64_t bytes;            /* bytes of regular files */
    uint64_t bytes_read;       /* bytes read from disk (unchanged files are not read) */
    uint64_t files_read;       /* files read */
    uint64_t files_reused;     /* unchanged files taken from the parent */
    uint64_t chunks;           /* unique chunks the snapshot uses */
    uint64_t new_chunks;       /* chunks this backup stored */
    uint64_t new_bytes;        /* their bytes (before compression) */
    uint64_t dedup_chunks;     /* chunks the vault already had */
    uint64_t skipped;          /* entries left out (reported through skipped) */
    double seconds;            /* wall time */
};

/*
 * Back up o->paths into the vault as one snapshot, committed through the
 * cluster's Raft log only once every chunk it names is durable. Returns 0;
 * HBC_EPARTIAL if some entries were unreadable and left out (the snapshot
 * is committed; s->skipped says how many); or the error that stopped it
 * (nothing committed). s is filled in every case.
 */
int hbc_backup(hbc_client *c, const struct hbc_backup_options *o, struct hbc_backup_summary *s);

/* One snapshot of the vault. */
struct hbc_snapshot {
    char id[HBC_ID_HEX];      /* its id in hex */
    uint64_t time_ms;         /* when it was taken (the client's clock), ms since the epoch */
    uint64_t committed_ms;    /* when the cluster committed it */
    uint64_t files;           /* regular files */
    uint64_t bytes;           /* their bytes */
    uint64_t chunks;          /* unique chunks */
    uint64_t retain_until_ms; /* end of its retention lock (compliance clock), ms since the epoch */
    int governance;           /* 1: governance lock (two officers may lift it), 0: compliance */
    int legal_hold;           /* 1: under legal hold */
};

/*
 * The vault's snapshots, oldest first, read current. On 0, *out (free with
 * hbc_snapshots_free) holds *n of them.
 */
int hbc_snapshots(hbc_client *c, struct hbc_snapshot **out, size_t *n);

/* Free what hbc_snapshots() returned. NULL is a no-op. */
void hbc_snapshots_free(struct hbc_snapshot *s);

/* One entry of a snapshot, for hbc_ls(). Pointers valid during the callback. */
struct hbc_entry {
    const char *path; /* relative to the snapshot root ('/'-joined) */
    const char *type; /* "file", "dir", "symlink", "hardlink", "fifo", "char", "block", "socket" */
    unsigned mode;    /* permission bits (07777) */
    uint32_t uid;     /* owner */
    uint32_t gid;     /* group */
    int64_t mtime_ns; /* modification time, ns since the epoch */
    uint64_t size;    /* bytes (files) */
    const char *target; /* symlinks: the target; hard links: the first name; else NULL */
};

/* Receives each entry; return 0 to go on, nonzero to stop (hbc_ls then returns HBC_ECANCELED). */
typedef int (*hbc_ls_cb)(void *arg, const struct hbc_entry *en);

/*
 * List snapshot's entries below path (NULL or "" for everything; an
 * absolute or relative path inside the snapshot), depth first in name
 * order, the entry path names itself first. Returns 0, HBC_ENOTFOUND (no
 * such snapshot or path), or an error.
 */
int hbc_ls(hbc_client *c, const char *snapshot, const char *path, hbc_ls_cb cb, void *arg);

/* What to restore. A plain option struct: zero it, then fill. */
struct hbc_restore_options {
    const char *snapshot;        /* an id prefix (4 or more hex digits) or "latest" */
    const char *target;          /* directory to restore into; NULL: a restore test */
    const char *const *includes; /* fnmatch patterns of paths to restore, NULL: all */
    size_t nincludes;            /* how many */
    int verify;                  /* nonzero with a target: read back and check each file */
    int copy;                    /* -1: any copy; else read only this copy (0-based) */
    int no_record;               /* restore test: do not record the result in the cluster */
    int fsync;                   /* nonzero: fsync what is written */
    unsigned threads;            /* worker threads (0: two per core) */
    hbc_progress_cb progress;    /* may be NULL */
    hbc_entry_error_cb error;    /* may be NULL */
    void *arg;                   /* for the callbacks */
};

/* What a restore did. */
struct hbc_restore_summary {
    char snapshot[HBC_ID_HEX]; /* the snapshot restored */
    uint64_t files;            /* regular files restored (or checked) */
    uint64_t dirs;             /* directories */
    uint64_t others;           /* symlinks, hard links, special files */
    uint64_t bytes;            /* bytes of files */
    uint64_t chunks;           /* chunks read (data, trees, lists) */
    uint64_t chunk_bytes;      /* bytes of data chunks read */
    uint64_t shards_read;      /* shards fetched from nodes */
    uint64_t shard_errors;     /* shards missing or corrupt, recovered from */
    uint64_t errors;           /* entries that failed (reported through error) */
    uint64_t verified;         /* files read back and checked */
    int recorded;              /* a restore test's result was recorded */
    double seconds;            /* wall time */
};

/*
 * Restore o->snapshot into o->target, or, without a target, run a restore
 * test (read and check everything, write nothing) and record its result in
 * the cluster. Every chunk is authenticated and its id checked, every file's
 * SHA-256 compared with the snapshot's; any entry whose path would leave
 * the target is refused (HBC_EDENIED). Returns 0 if everything was restored
 * and checked; HBC_EPARTIAL if some entries failed (s->errors); or the
 * error that stopped it. s is filled in every case.
 */
int hbc_restore(hbc_client *c, const struct hbc_restore_options *o, struct hbc_restore_summary *s);

#ifdef __cplusplus
}
#endif

#endif /* HBC_HBC_H */
