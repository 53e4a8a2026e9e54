/* Writing restored entries into a target directory, never outside it, atomically per file. */
#ifndef HBC_CLIENT_FS_RESTORE_H
#define HBC_CLIENT_FS_RESTORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "client/tree.h"
#include "common/err.h"

/*
 * Every entry is named by a relative path: tree names joined with '/'
 * ("dir/sub/file"). Before anything is written the path is checked:
 *
 *   absolute ("/etc/passwd"), or a ".." component       HBC_EDENIED
 *   empty, an empty component ("a//b", "a/"), ".",
 *   a component above TREE_MAX_NAME bytes, or the
 *   whole path above TREE_MAX_PATH bytes                  HBC_EINVAL
 *
 * with the message "refusing 'PATH': path leaves the restore target" (or
 * says what is malformed). Then the parent directory is reached from the
 * target's descriptor without following any symlink: openat2() with
 * RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS where the
 * kernel has it (Linux 5.6+; detected once at fs_restore_open()), else one
 * openat(O_DIRECTORY | O_NOFOLLOW) per component. A parent component that
 * is a symlink (say "a" restored earlier as a symlink to /etc, then "a/passwd")
 * is refused with HBC_EDENIED; one that is another non-directory gives
 * -ENOTDIR. Missing parents are created (mode 0700 until their own metadata
 * is set). The last component is then created with *at calls relative to
 * that parent, never following a symlink there either: so no entry, however
 * crafted, is written outside the target, and nothing outside is touched.
 *
 * Files are written to a temporary name in their directory (".hbc-" and 16
 * random hex digits, O_CREAT | O_EXCL, mode 0600), then sized (unless the
 * writes ended exactly at the size: no trailing hole), optionally fsynced,
 * given their owner, mode and times, and renamed over the final name: a
 * reader never sees a half-written file, and an existing entry of that name
 * (a file or symlink, never a directory) is replaced. A crash may leave
 * ".hbc-*" files behind. Symlinks, hard links and special files go through
 * a temporary name and a rename as well.
 *
 * Metadata: owners are set with fchown (before the mode, so setuid bits
 * survive); running as root a failure is an error, otherwise it is ignored
 * (an ordinary user restores files as their own). Modes are set exactly
 * (st_mode & 07777). The modification time is set from the entry; the
 * access time is left as the restore made it (trees do not keep it).
 * Directories are created 0700 so their contents can be written, and get
 * their mode, owner and times from fs_restore_dir_meta(), which the caller
 * calls after the directory's contents (post-order), since writing into a
 * directory changes its mtime.
 *
 * Threads: a struct fs_restore is read-only after fs_restore_open(), so any
 * number of threads may restore different entries at once; a struct
 * fs_file belongs to one thread at a time.
 */

/*
 * Durability (the fsync option): each file's data is flushed before it gets
 * its final name, so a final name never holds unflushed content; the
 * directories are flushed once each, after their contents, by
 * fs_restore_dir_meta(), and the target by fs_restore_sync() (not once per
 * entry). When both have returned 0 every restored entry is on stable
 * storage; a crash before then may lose entries renamed since the last
 * flush of their directory, never leave one half-written. Without it
 * (the default, as restic and borg do) the page cache decides.
 */

/* Options. A plain struct: fill with fs_restore_options_default() and adjust. */
struct fs_restore_options {
    bool fsync;      /* fsync each file before its rename, directories once (see above) */
    bool sparse;     /* skip writing aligned all-zero 4 KiB blocks, leaving holes */
    bool no_openat2; /* never use openat2 (tests the fallback) */
};

/* Defaults: no fsync, sparse, openat2 when available. */
void fs_restore_options_default(struct fs_restore_options *o);

/* A restore target: its directory descriptor and the options. */
struct fs_restore;

/*
 * Open target (borrowed), creating it (mode 0700) if it does not exist but
 * its parent does, into *out. o may be NULL for the defaults. Returns 0,
 * -errno (with the path in e), or HBC_ENOMEM.
 */
int fs_restore_open(struct fs_restore **out, const char *target, const struct fs_restore_options *o,
                    struct err *e);

/* Close r. NULL is a no-op. Every fs_file of r must be committed or aborted first. */
void fs_restore_close(struct fs_restore *r);

/*
 * With the fsync option, flush the target directory itself (its own entries);
 * call once everything is restored and every directory's metadata set.
 * Without it, does nothing. Returns 0 or -errno.
 */
int fs_restore_sync(struct fs_restore *r, struct err *e);

/* Whether r resolves parents with openat2 (false: component by component). */
bool fs_restore_uses_openat2(const struct fs_restore *r);

/*
 * Create directory path (mode 0700 for now), or accept it if it already is
 * a directory (not a symlink to one: HBC_EDENIED; another kind: -EEXIST).
 * Returns 0 or a code listed at the top of this file.
 */
int fs_restore_mkdir(struct fs_restore *r, const char *path, struct err *e);

/*
 * Give directory path its owner, mode and modification time from meta
 * (borrowed). Call after everything inside it is restored.
 */
int fs_restore_dir_meta(struct fs_restore *r, const char *path, const struct tree_entry *meta,
                        struct err *e);

/* A file being restored under a temporary name. */
struct fs_file;

/*
 * Start restoring a regular file at path: create its temporary file into
 * *out. Returns 0 or a code listed at the top of this file.
 */
int fs_restore_file_begin(struct fs_restore *r, const char *path, struct fs_file **out,
                          struct err *e);

/*
 * Write len bytes at buf (borrowed) at offset off of the file. Chunks may be
 * written in any order. With the sparse option, aligned 4 KiB blocks of
 * zeros are skipped (fs_file_commit() sets the size, so they read as
 * zeros). Returns 0 or -errno.
 */
int fs_file_write(struct fs_file *f, uint64_t off, const void *buf, size_t len, struct err *e);

/*
 * Finish the file: size it to meta->size, fsync (if asked), set owner, mode
 * and modification time from meta (borrowed), rename it to its final name.
 * Always consumes f: on failure the temporary file is removed. Returns 0,
 * -errno, or -EISDIR if the final name is a directory.
 */
int fs_file_commit(struct fs_file *f, const struct tree_entry *meta, struct err *e);

/* Give up on f: remove its temporary file and free it. NULL is a no-op. */
void fs_file_abort(struct fs_file *f);

/*
 * Create symlink path with target meta->target, stored verbatim and never
 * followed, with meta's owner and modification time (symlinks have no mode
 * of their own on Linux). Returns 0, HBC_EINVAL for a missing target, or a
 * code listed at the top of this file.
 */
int fs_restore_symlink(struct fs_restore *r, const char *path, const struct tree_entry *meta,
                       struct err *e);

/*
 * Make path another name of first (a path restored earlier in this target,
 * e.g. a TREE_HARDLINK entry's link). Both paths are checked and resolved
 * as described above; first is linked itself, never followed. Returns 0,
 * -ENOENT if first is not there (not restored, e.g. excluded), or a code
 * listed at the top of this file.
 */
int fs_restore_hardlink(struct fs_restore *r, const char *path, const char *first, struct err *e);

/*
 * Create a FIFO, socket, or (usually root only) character or block device
 * at path, from meta's type, rdev, owner, mode and modification time.
 * Returns 0, HBC_EINVAL for another type, -EPERM where devices may not be
 * made, or a code listed at the top of this file.
 */
int fs_restore_special(struct fs_restore *r, const char *path, const struct tree_entry *meta,
                       struct err *e);

/*
 * Read the regular file at path (resolved as above) and return its SHA-256
 * in out and its length in *size (may be NULL). Returns 0, -errno,
 * HBC_EINVAL if it is not a regular file, or HBC_ECRYPTO.
 */
int fs_restore_sha256(struct fs_restore *r, const char *path, uint8_t out[TREE_ID_LEN],
                      uint64_t *size, struct err *e);

/*
 * The --verify check: read the file at path back and compare its length and
 * SHA-256 with meta's (a TREE_FILE entry with has_sha256). Returns 0,
 * HBC_ECORRUPT with the path in the message if either differs, or what
 * fs_restore_sha256() returns.
 */
int fs_restore_verify(struct fs_restore *r, const char *path, const struct tree_entry *meta,
                      struct err *e);

/*
 * SHA-256 of everything readable from fd (borrowed; read from its current
 * offset to the end) into out, the byte count into *size (may be NULL).
 * Returns 0, -errno or HBC_ECRYPTO.
 */
int fs_sha256_fd(int fd, uint8_t out[TREE_ID_LEN], uint64_t *size, struct err *e);

#endif /* HBC_CLIENT_FS_RESTORE_H */
