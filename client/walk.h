/* Walking the paths to back up: lstat-based, never following symlinks, sorted, errors reported. */
#ifndef HBC_CLIENT_WALK_H
#define HBC_CLIENT_WALK_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/stat.h>

#include "client/tree.h"
#include "common/err.h"

/*
 * walk_run() visits each root path, then everything below each directory,
 * depth first, the names of every directory in bytewise order (strcmp, the
 * order tree_builder_add() wants), so the same file system always gives the
 * same sequence. Each directory comes twice, WALK_ENTER before its contents
 * and WALK_LEAVE after them, so a caller can build trees bottom-up (a tree
 * builder per open directory; the child's tree id is ready at WALK_LEAVE).
 * An empty directory is an ENTER directly followed by its LEAVE.
 *
 * Nothing is followed: each name is examined with fstatat(AT_SYMLINK_NOFOLLOW)
 * relative to its parent's descriptor, directories are opened with
 * openat(O_DIRECTORY | O_NOFOLLOW) and files with openat(O_NOFOLLOW |
 * O_NONBLOCK | O_NOATIME), so a symlink anywhere below a root is reported as
 * a symlink and a name swapped for a symlink mid-walk fails to open rather
 * than leading elsewhere. Symlinks inside a root's own path (as the user
 * typed it) are followed by the kernel as usual; the root itself is lstat'ed.
 *
 * Hard links: the first name (in walk order) of a non-directory with
 * st_nlink > 1 is an ordinary entry; every later name of the same (st_dev,
 * st_ino) is a TREE_HARDLINK entry naming the first. A first name counts
 * only once its callback returned 0 (so a skipped or unreadable first name
 * never becomes a link target; the next name is then the first).
 *
 * Errors: a name that vanishes between readdir and lstat or open, a
 * directory or file that cannot be opened, one that changed type, a path or
 * depth beyond the bounds: error_cb gets the path and the code (-errno or
 * HBC_E*), the entry is left out (a directory with everything below it) and
 * the walk goes on. walk_run() then returns HBC_EPARTIAL. A vanished name
 * is ENOENT: callers may choose to treat that one as benign.
 *
 * Memory: the names of each directory on the current path (so bounded by
 * the largest directories times the depth) and one record per multiply
 * linked inode seen. Descriptors: one per directory level, plus a file's.
 * Single-threaded: every callback runs on the caller's thread, in order;
 * a callback that blocks (for back pressure) simply pauses the walk.
 */

#define WALK_DEFAULT_MAX_DEPTH 256   /* directory levels below a root */
#define WALK_DEFAULT_MAX_PATH 16384u /* bytes in a path (TREE_MAX_PATH) */
#define WALK_SKIP 1                  /* entry_cb's "leave this out" */

/* Which moment of the walk an entry is. */
enum walk_event {
    WALK_ENTER = 1, /* a directory, before its contents */
    WALK_LEAVE = 2, /* the same directory, after its contents */
    WALK_ITEM = 3,  /* anything that is not a directory */
};

/* What the callback is told about one entry. Everything is valid only during the call. */
struct walk_entry {
    enum walk_event event; /* ENTER, LEAVE or ITEM */
    enum tree_type type;   /* TREE_DIR for ENTER/LEAVE; TREE_HARDLINK for a later name */
    const char *path;      /* the root as given (trailing '/' removed), then "/name"... */
    const char *rel;       /* the part of path below its root ("" for the root itself) */
    const char *name;      /* the last component (for a root: its path) */
    size_t root;           /* index of the root in the paths given to walk_run() */
    unsigned depth;        /* 0 for a root, 1 for its children, ... */
    struct stat st;        /* lstat of the entry (a file: fstat of the opened descriptor) */
    int dirfd;             /* the parent's descriptor (AT_FDCWD for a root) for *at calls */
    const char *at_name;   /* the entry's name relative to dirfd (a root: its path) */
    int fd;                /* see below */
    const char *target;    /* TREE_SYMLINK: the target, verbatim; else NULL */
    size_t link_root;      /* TREE_HARDLINK: root index of the first name */
    const char *link_rel;  /* TREE_HARDLINK: the first name's path below its root */
    const char *link_path; /* TREE_HARDLINK: the first name's full path */
    bool mountpoint;       /* ENTER/LEAVE: on another file system, not descended */
};
/*
 * fd: for a TREE_FILE item when walk_options.open_files is set, a
 * descriptor open for reading (O_RDONLY | O_NOFOLLOW | O_NONBLOCK, which
 * regular files ignore; O_NOATIME where allowed). The walker closes it after
 * the callback unless the callback takes it by setting en->fd = -1 (it then
 * owns and closes it). For ENTER and LEAVE, the directory's own descriptor
 * (borrowed: never close or take it; -1 for a mount point not descended).
 * Otherwise -1.
 */

/*
 * Called for every entry. Return 0 to go on; WALK_SKIP to leave the entry
 * out (for ENTER: do not descend, and no LEAVE follows; for an item: it is
 * not a hard-link target); a negative code to stop the walk, which
 * walk_run() then returns.
 */
typedef int (*walk_entry_cb)(void *arg, struct walk_entry *en);

/*
 * Called for every entry that cannot be backed up: path (borrowed), code
 * (-errno or HBC_E*), and a message (borrowed; no file name in it beyond
 * path). Return 0 to go on, a negative code to stop the walk.
 */
typedef int (*walk_error_cb)(void *arg, const char *path, int code, const char *msg);

/* How to walk. A plain option struct: fill it with walk_options_default() and adjust. */
struct walk_options {
    bool one_file_system;   /* do not descend into directories on another device than the root */
    bool open_files;        /* open each regular file and hand over its descriptor */
    unsigned max_depth;     /* directory levels below a root; deeper is an error (HBC_ETOOBIG) */
    size_t max_path;        /* bytes in a path; longer is an error (-ENAMETOOLONG) */
    walk_entry_cb entry_cb; /* required */
    walk_error_cb error_cb; /* may be NULL: errors are then only counted */
    void (*race_cb)(void *arg, const char *path); /* tests: runs between lstat and open */
    void *arg;                                    /* for the callbacks */
};

/* Defaults: stay on no one file system, open files, WALK_DEFAULT_MAX_*, no callbacks. */
void walk_options_default(struct walk_options *o);

/*
 * Walk paths[0..n) (borrowed) in the order given, as described above.
 * Returns 0 if every entry was visited; HBC_EPARTIAL if errors were reported
 * through error_cb and the walk went on (e says how many); the negative code
 * a callback returned to stop it; HBC_EINVAL for bad options; HBC_ENOMEM.
 */
int walk_run(const char *const *paths, size_t n, const struct walk_options *o, struct err *e);

/*
 * Open the file en names (a TREE_FILE item, for callers walking with
 * open_files off, e.g. to read only files that changed) the way the walker
 * would, into *fd, and check it is still the regular file en->st describes
 * (same device and inode; HBC_EBUSY if not). Call it during the callback.
 * Returns 0, -errno or HBC_EBUSY.
 */
int walk_open_file(const struct walk_entry *en, int *fd, struct err *e);

#endif /* HBC_CLIENT_WALK_H */
