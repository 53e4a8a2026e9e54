/* Trees: one directory's entries, encoded deterministically as protobuf and stored as chunks. */
#ifndef HBC_CLIENT_TREE_H
#define HBC_CLIENT_TREE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/stat.h>

#include "common/chunk_object.h"
#include "common/crypto.h"
#include "common/err.h"

/*
 * THE TREE FORMAT (version 1). A snapshot's root tree id names a tree; a
 * tree lists one directory's entries (messages Tree, TreeEntry, ChunkRef and
 * ChunkList in proto/hbc.proto). Each tree object is the plaintext of one
 * chunk object: its id is HMAC-SHA-256 under the vault's chunk-id key, like
 * file data, and it is sealed and erasure-coded like file data.
 *
 * Encoding. Entries are sorted by name, bytewise (memcmp, a shorter prefix
 * first), with no duplicates. A tree object is written field by field in
 * field-number order: `version`, then each entry as a length-delimited
 * TreeEntry packed by protobuf-c (which writes fields in number order and
 * optional fields only when set), then the `parts` ids. The same entries
 * therefore always give the same bytes and the same id, so an unchanged
 * directory dedups against every earlier snapshot.
 *
 * Large directories. A chunk object holds at most CHUNK_OBJECT_MAX_PLAINTEXT
 * (5 MiB), so a directory whose encoding would pass TREE_PART_MAX is split
 * into parts, each a Tree object of its own. The builder streams: it emits a
 * part as soon as it is full, and the part that the parent directory names
 * (the head) comes last and lists the earlier parts' ids in `parts`, in
 * order. Reading a directory means: its parts' entries in `parts` order,
 * then the head's own entries; names increase strictly across all of them.
 * Parts never list parts. Where a part ends is content-defined (after an
 * entry whose name hashes to a rare value once the part has TREE_PART_MIN
 * bytes, or when the next entry would not fit), so adding a name to a huge
 * directory changes one or two parts, not all that follow.
 *
 * Small files. A ChunkRef may name a slice of a chunk instead of all of
 * it (`pack_offset` set): the backup packs small files' contents into one
 * chunk (a pack) and each such file's entry lists one ref (pack id, offset,
 * length) and its own SHA-256 (see docs/formats.md, "Packs").
 *
 * Large files. A file with at most TREE_INLINE_CHUNKS chunks lists them in
 * its entry. A longer list is cut into ChunkList objects of at most
 * TREE_LIST_CHUNKS refs each (stored as chunks, ids in `chunk_lists`), so
 * that no entry is larger than a part.
 *
 * What an entry keeps: name, type, mode (st_mode & 07777), uid, gid, user
 * and group names (optional), mtime and ctime in ns, size, inode and device
 * (kept so that the next backup can reuse an unchanged file's chunks
 * without reading it: same size, mtime, inode and device), rdev for devices,
 * symlink targets verbatim, for hard links the path of the first name, for
 * files the chunks and the SHA-256 of the whole content, for directories the
 * id of the child tree. Access times are not kept: they change on every read
 * and would defeat tree dedup.
 *
 * Decoding checks every field against hostile input (HBC_EFORMAT unless
 * said): the object is at most CHUNK_OBJECT_MAX_PLAINTEXT bytes
 * (HBC_ETOOBIG), parses, has version 1 (HBC_EVERSION), names are valid path
 * components (tree_name_check) in strictly increasing order, types are
 * known and carry the fields they need and no others, ids and digests are 32
 * bytes, chunk lengths are 1..CHUNK_OBJECT_MAX_PLAINTEXT, a packed slice's
 * offset + length is at most CHUNK_OBJECT_MAX_PLAINTEXT, a file's inline
 * chunk lengths add up to its size, counts stay within the limits below.
 * A hard-link path is validated component by component. None of this makes
 * a restore safe on its own: client/fs_restore.h refuses, again, any path
 * that would leave the restore target.
 */

#define TREE_VERSION 1                              /* Tree.version written and accepted */
#define TREE_ID_LEN CRYPTO_SHA256_LEN               /* chunk ids, tree ids, SHA-256 digests */
#define TREE_PART_MIN ((size_t)1 << 20)             /* a part may end by content from here on */
#define TREE_PART_MAX ((size_t)4 << 20)             /* largest tree object the builder writes */
#define TREE_MAX_ENCODED CHUNK_OBJECT_MAX_PLAINTEXT /* largest tree object decoded */
#define TREE_MAX_PARTS 256u                         /* parts of one directory besides its head */
#define TREE_INLINE_CHUNKS 1024u                    /* chunks listed inline in an entry */
#define TREE_LIST_CHUNKS 65536u                     /* chunks per ChunkList object (~2.7 MB) */
#define TREE_MAX_CHUNK_LISTS 16384u                 /* ChunkList ids in one entry */
#define TREE_MAX_NAME 255u                          /* bytes in a name (Linux NAME_MAX) */
#define TREE_MAX_TARGET 4095u                       /* bytes in a symlink target */
#define TREE_MAX_PATH 16384u                        /* bytes in a hard-link path */
#define TREE_MAX_OWNER 256u                         /* bytes in a user or group name */

/* What an entry is (the values are TreeEntryType's, stored). */
enum tree_type {
    TREE_FILE = 1,     /* regular file */
    TREE_DIR = 2,      /* directory */
    TREE_SYMLINK = 3,  /* symbolic link */
    TREE_HARDLINK = 4, /* another name of an earlier non-directory */
    TREE_FIFO = 5,     /* named pipe */
    TREE_CHAR = 6,     /* character device */
    TREE_BLOCK = 7,    /* block device */
    TREE_SOCKET = 8,   /* Unix socket */
};

/*
 * One chunk of a file, or (packed) a slice of a pack: a chunk holding
 * several small files back to back. A packed ref names bytes
 * [off, off + len) of chunk id, with off + len <= CHUNK_OBJECT_MAX_PLAINTEXT;
 * whether that lies within the pack can only be checked once the pack is
 * read (tree_slice_check).
 */
struct tree_chunk {
    uint8_t id[TREE_ID_LEN]; /* chunk id (of the pack, when packed) */
    uint32_t len;            /* plaintext bytes, 1..CHUNK_OBJECT_MAX_PLAINTEXT */
    uint32_t off;            /* packed: offset of the slice in the pack; else 0 */
    bool packed;             /* a slice of a pack (ChunkRef.pack_offset present) */
};

/*
 * One directory entry. As builder input every pointer is borrowed for the
 * call; as decoder output it points into the struct tree that holds it.
 * Strings are NUL-terminated (no valid name, target or path contains NUL).
 */
struct tree_entry {
    const char *name;                /* one path component (tree_name_check) */
    enum tree_type type;             /* what it is */
    uint32_t mode;                   /* st_mode & 07777 */
    uint32_t uid;                    /* owner */
    uint32_t gid;                    /* group */
    const char *user;                /* owner's name, or NULL */
    const char *group;               /* group's name, or NULL */
    int64_t mtime_ns;                /* modification time, ns since the epoch */
    int64_t ctime_ns;                /* status change time, ns since the epoch */
    uint64_t size;                   /* files: content bytes; others: st_size as seen */
    uint64_t ino;                    /* st_ino (incremental check) */
    uint64_t dev;                    /* st_dev (incremental check) */
    uint64_t rdev;                   /* TREE_CHAR and TREE_BLOCK: st_rdev; else 0 */
    const char *target;              /* TREE_SYMLINK: target verbatim; else NULL */
    const char *link;                /* TREE_HARDLINK: first name's path, '/'-joined; else NULL */
    const struct tree_chunk *chunks; /* TREE_FILE: chunks in file order (may be NULL if none) */
    size_t nchunks;                  /* entries at chunks */
    const uint8_t (*lists)[TREE_ID_LEN]; /* TREE_FILE: ChunkList ids instead of chunks, or NULL */
    size_t nlists;                       /* ids at lists */
    bool has_sha256;                     /* sha256 is set (files, hard links may carry it too) */
    uint8_t sha256[TREE_ID_LEN];         /* SHA-256 of the whole content */
    bool has_subtree;                    /* subtree is set (directories: always) */
    uint8_t subtree[TREE_ID_LEN];        /* TREE_DIR: id of the child directory's tree */
};

/*
 * Fill the stat-derived fields of en (type, mode, uid, gid, times, size,
 * ino, dev, rdev) from st; every other field is cleared. The type follows
 * st->st_mode (hard links are the caller's to mark).
 */
void tree_entry_from_stat(struct tree_entry *en, const struct stat *st);

/*
 * The incremental check: true if the file st describes can reuse old's
 * chunks without being read: old is a TREE_FILE with the same size,
 * modification time, inode and device.
 */
bool tree_entry_unchanged(const struct tree_entry *old, const struct stat *st);

/*
 * Check that name[0..len) is a valid path component: 1..TREE_MAX_NAME
 * bytes, not "." or "..", no '/' and no NUL. Returns 0 or HBC_EFORMAT with
 * a message saying what is wrong (the name itself is not put in the
 * message: names are PHI).
 */
int tree_name_check(const uint8_t *name, size_t len, struct err *e);

/*
 * Check a '/'-joined relative path of valid components (as hard-link paths
 * are): 1..TREE_MAX_PATH bytes, no empty component (so no leading, trailing
 * or doubled '/'). Returns 0 or HBC_EFORMAT.
 */
int tree_path_check(const uint8_t *path, size_t len, struct err *e);

/*
 * Receives each object the builder makes (tree parts, tree heads, chunk
 * lists): its id (HMAC-SHA-256 under the builder's key) and its plaintext,
 * both borrowed for the call. The receiver seals and stores it (or copies
 * it to do so later). Return 0, or a negative code that the builder
 * returns to its caller (the builder is then to be freed).
 */
typedef int (*tree_emit_cb)(void *arg, const uint8_t id[TREE_ID_LEN], const uint8_t *data,
                            size_t len, struct err *e);

/*
 * Builds one directory's tree from entries given in sorted order, emitting
 * full parts as it goes, so memory stays within about one part whatever the
 * directory's size. One thread at a time. Reusable: after
 * tree_builder_finish() it starts a new directory.
 */
struct tree_builder;

/*
 * Make a builder. ids (borrowed; must outlive the builder, used by it alone
 * while it runs) is keyed with the vault's chunk-id key; emit and arg
 * receive every object. Returns 0 or HBC_ENOMEM.
 */
int tree_builder_new(struct tree_builder **out, struct crypto_hmac *ids, tree_emit_cb emit,
                     void *arg, struct err *e);

/* Free b. NULL is a no-op. */
void tree_builder_free(struct tree_builder *b);

/*
 * Add en (borrowed; copied into the encoding) to the directory being built.
 * Names must come in strictly increasing bytewise order. A file with more
 * than TREE_INLINE_CHUNKS chunks has its list emitted as ChunkList objects
 * here; a caller may instead pass lists (ids it emitted itself with
 * tree_chunk_list_encode()) and no chunks.
 *
 * Returns 0; HBC_EINVAL for an entry that breaks the rules (order, a bad
 * name, a field its type does not allow, a count over a limit; the message
 * says which); HBC_ETOOBIG if the directory needs more than TREE_MAX_PARTS
 * parts; HBC_ENOMEM, HBC_ECRYPTO, or what emit returned.
 */
int tree_builder_add(struct tree_builder *b, const struct tree_entry *en, struct err *e);

/*
 * Finish the directory: emit the head (the tree object that lists any parts)
 * and store its id in id, then reset b for the next directory. An empty
 * directory is a head with no entries. Returns 0, HBC_ENOMEM, HBC_ECRYPTO or
 * what emit returned.
 */
int tree_builder_finish(struct tree_builder *b, uint8_t id[TREE_ID_LEN], struct err *e);

/*
 * Encode chunks[0..n) (1..TREE_LIST_CHUNKS refs) as one ChunkList object
 * into *out (hbc_malloc'ed, the caller frees with hbc_free), *out_len bytes.
 * For callers that emit a huge file's list while reading it.
 * Returns 0, HBC_EINVAL or HBC_ENOMEM.
 */
int tree_chunk_list_encode(const struct tree_chunk *chunks, size_t n, uint8_t **out,
                           size_t *out_len, struct err *e);

/*
 * Decode one ChunkList object (len bytes at data, borrowed) into *out
 * (hbc_malloc'ed array, caller frees with hbc_free) and *n. Checks as for
 * trees: at most TREE_MAX_ENCODED bytes (HBC_ETOOBIG), 1..TREE_LIST_CHUNKS
 * refs, 32-byte ids, lengths 1..CHUNK_OBJECT_MAX_PLAINTEXT (HBC_EFORMAT).
 */
int tree_chunk_list_decode(const uint8_t *data, size_t len, struct tree_chunk **out, size_t *n,
                           struct err *e);

/*
 * Check that ref c can be served from its chunk's plaintext of chunk_len
 * bytes: a whole chunk must be exactly c->len bytes, a packed slice must
 * lie within the pack (off + len <= chunk_len). Returns 0 or HBC_EFORMAT
 * with a message giving the offsets ("packed file's slice ... lies outside
 * its pack of N bytes").
 */
int tree_slice_check(const struct tree_chunk *c, size_t chunk_len, struct err *e);

/* One decoded tree object: a directory's head, or one of its parts. */
struct tree {
    struct tree_entry *entries;    /* count entries, sorted by name */
    size_t count;                  /* entries */
    uint8_t (*parts)[TREE_ID_LEN]; /* heads only: ids of earlier parts, in order */
    size_t nparts;                 /* ids at parts */
    void *mem;                     /* the one allocation behind everything above */
};

/* Which kind of tree object a decode expects. */
enum tree_kind {
    TREE_HEAD = 0, /* what a directory entry or snapshot names: may list parts */
    TREE_PART = 1, /* one of a head's parts: must not list parts, must not be empty */
};

/*
 * Decode one tree object (len bytes at data, borrowed) into *out (free with
 * tree_free()), with every check listed at the top of this file. Returns 0,
 * HBC_ETOOBIG, HBC_EFORMAT, HBC_EVERSION (each with a message naming what
 * was wrong and the entry's index) or HBC_ENOMEM.
 */
int tree_decode(const uint8_t *data, size_t len, enum tree_kind kind, struct tree **out,
                struct err *e);

/*
 * Check that next's names all come after prev's (prev, next: consecutive
 * objects of one directory, in reading order; see the top of this file).
 * Returns 0 or HBC_EFORMAT.
 */
int tree_check_sequence(const struct tree *prev, const struct tree *next, struct err *e);

/* Free t. NULL is a no-op. */
void tree_free(struct tree *t);

#endif /* HBC_CLIENT_TREE_H */
