/* Trees: deterministic encoding, splitting of large directories and files, checked decoding. */
#include "client/tree.h"

#include <string.h>

#include "common/alloc.h"
#include "hbc.pb-c.h"

/* Wire tags of Tree's fields: (field number << 3) | wire type. */
#define TAG_VERSION 0x08 /* field 1, varint */
#define TAG_ENTRIES 0x12 /* field 2, length-delimited */
#define TAG_PARTS 0x1a   /* field 3, length-delimited */

/* Bytes a part id takes in a head: tag, length, id. */
#define PART_ID_RECORD (2 + TREE_ID_LEN)

/* Room kept free in every part for the part ids a head may end up listing. */
#define PARTS_RESERVE ((size_t)TREE_MAX_PARTS * PART_ID_RECORD)

/*
 * A part ends by content after an entry whose name's FNV-1a hash has its top
 * CUT_BITS bits zero (one entry in 4096, so parts end about 600 KB past
 * TREE_PART_MIN for typical entries of 150 bytes).
 */
#define CUT_BITS 12

/* The C enum carries TreeEntryType's stored values. */
_Static_assert((int)TREE_FILE == (int)HBC__TREE_ENTRY_TYPE__TREE_ENTRY_FILE, "type values");
_Static_assert((int)TREE_DIR == (int)HBC__TREE_ENTRY_TYPE__TREE_ENTRY_DIR, "type values");
_Static_assert((int)TREE_SYMLINK == (int)HBC__TREE_ENTRY_TYPE__TREE_ENTRY_SYMLINK, "type values");
_Static_assert((int)TREE_HARDLINK == (int)HBC__TREE_ENTRY_TYPE__TREE_ENTRY_HARDLINK, "type values");
_Static_assert((int)TREE_FIFO == (int)HBC__TREE_ENTRY_TYPE__TREE_ENTRY_FIFO, "type values");
_Static_assert((int)TREE_CHAR == (int)HBC__TREE_ENTRY_TYPE__TREE_ENTRY_CHAR_DEVICE, "type values");
_Static_assert((int)TREE_BLOCK == (int)HBC__TREE_ENTRY_TYPE__TREE_ENTRY_BLOCK_DEVICE,
               "type values");
_Static_assert((int)TREE_SOCKET == (int)HBC__TREE_ENTRY_TYPE__TREE_ENTRY_SOCKET, "type values");

struct tree_builder {
    struct crypto_hmac *ids;           /* chunk-id key (borrowed) */
    tree_emit_cb emit;                 /* receives every object */
    void *arg;                         /* for emit */
    uint8_t *buf;                      /* the part being filled, version field first */
    size_t len;                        /* bytes at buf */
    size_t cap;                        /* TREE_PART_MAX */
    size_t nentries;                   /* entries in the part being filled */
    uint8_t (*parts)[TREE_ID_LEN];     /* ids of emitted parts (TREE_MAX_PARTS) */
    size_t nparts;                     /* ids at parts */
    char last[TREE_MAX_NAME + 1];      /* the previous name in this directory */
    size_t last_len;                   /* its length */
    bool have_last;                    /* a name was added since the last finish */
    Hbc__ChunkRef *refs;               /* scratch: TREE_LIST_CHUNKS refs */
    Hbc__ChunkRef **ref_ptrs;          /* scratch: pointers to refs */
    ProtobufCBinaryData *list_ids;     /* scratch: TREE_MAX_CHUNK_LISTS ids */
    uint8_t (*own_lists)[TREE_ID_LEN]; /* scratch: ids of lists emitted for one entry */
};

/* protobuf-c allocator over hbc_malloc, noting whether a failure was out of memory. */
static void *pb_alloc(void *data, size_t n)
{
    void *p = hbc_malloc(n);
    if (p == NULL) {
        *(bool *)data = true;
    }
    return p;
}

static void pb_free(void *data, void *p)
{
    (void)data;
    hbc_free(p);
}

static size_t varint_len(uint64_t v)
{
    size_t n = 1;
    while (v >= 0x80) {
        v >>= 7;
        n++;
    }
    return n;
}

static size_t varint_put(uint8_t *p, uint64_t v)
{
    size_t n = 0;
    while (v >= 0x80) {
        p[n++] = (uint8_t)(v | 0x80);
        v >>= 7;
    }
    p[n++] = (uint8_t)v;
    return n;
}

/* Bytewise order, a shorter prefix first (what sorting by memcmp means for names). */
static int name_cmp(const void *a, size_t alen, const void *b, size_t blen)
{
    int c = memcmp(a, b, alen < blen ? alen : blen);
    if (c != 0) {
        return c;
    }
    return alen < blen ? -1 : alen > blen ? 1 : 0;
}

static uint64_t fnv1a64(const void *p, size_t len)
{
    const uint8_t *s = p;
    uint64_t h = 0xcbf29ce484222325u;
    for (size_t i = 0; i < len; i++) {
        h ^= s[i];
        h *= 0x100000001b3u;
    }
    return h;
}

int tree_name_check(const uint8_t *name, size_t len, struct err *e)
{
    if (len == 0) {
        return err_set(e, HBC_EFORMAT, "empty name");
    }
    if (len > TREE_MAX_NAME) {
        return err_set(e, HBC_EFORMAT, "name of %zu bytes, above %u", len, TREE_MAX_NAME);
    }
    if ((len == 1 && name[0] == '.') || (len == 2 && name[0] == '.' && name[1] == '.')) {
        return err_set(e, HBC_EFORMAT, "name is \"%.*s\"", (int)len, (const char *)name);
    }
    if (memchr(name, '/', len) != NULL) {
        return err_set(e, HBC_EFORMAT, "name contains '/'");
    }
    if (memchr(name, '\0', len) != NULL) {
        return err_set(e, HBC_EFORMAT, "name contains NUL");
    }
    return 0;
}

int tree_path_check(const uint8_t *path, size_t len, struct err *e)
{
    if (len == 0 || len > TREE_MAX_PATH) {
        return err_set(e, HBC_EFORMAT, "path of %zu bytes (want 1..%u)", len, TREE_MAX_PATH);
    }
    size_t start = 0;
    unsigned index = 0;
    for (size_t i = 0; i <= len; i++) {
        if (i < len && path[i] != '/') {
            continue;
        }
        int rc = tree_name_check(path + start, i - start, e);
        if (rc != 0) {
            err_wrap(e, "path component %u", index);
            return rc;
        }
        start = i + 1;
        index++;
    }
    return 0;
}

void tree_entry_from_stat(struct tree_entry *en, const struct stat *st)
{
    memset(en, 0, sizeof *en);
    switch (st->st_mode & S_IFMT) {
    case S_IFDIR:
        en->type = TREE_DIR;
        break;
    case S_IFLNK:
        en->type = TREE_SYMLINK;
        break;
    case S_IFIFO:
        en->type = TREE_FIFO;
        break;
    case S_IFCHR:
        en->type = TREE_CHAR;
        en->rdev = (uint64_t)st->st_rdev;
        break;
    case S_IFBLK:
        en->type = TREE_BLOCK;
        en->rdev = (uint64_t)st->st_rdev;
        break;
    case S_IFSOCK:
        en->type = TREE_SOCKET;
        break;
    default:
        en->type = TREE_FILE;
        break;
    }
    en->mode = (uint32_t)(st->st_mode & 07777);
    en->uid = (uint32_t)st->st_uid;
    en->gid = (uint32_t)st->st_gid;
    en->mtime_ns = (int64_t)st->st_mtim.tv_sec * 1000000000 + st->st_mtim.tv_nsec;
    en->ctime_ns = (int64_t)st->st_ctim.tv_sec * 1000000000 + st->st_ctim.tv_nsec;
    en->size = st->st_size > 0 ? (uint64_t)st->st_size : 0;
    en->ino = (uint64_t)st->st_ino;
    en->dev = (uint64_t)st->st_dev;
}

bool tree_entry_unchanged(const struct tree_entry *old, const struct stat *st)
{
    int64_t mtime = (int64_t)st->st_mtim.tv_sec * 1000000000 + st->st_mtim.tv_nsec;
    return old->type == TREE_FILE && S_ISREG(st->st_mode) && st->st_size >= 0 &&
           old->size == (uint64_t)st->st_size && old->mtime_ns == mtime &&
           old->ino == (uint64_t)st->st_ino && old->dev == (uint64_t)st->st_dev;
}

/* ------------------------------------------------------------------------- */
/* Checks shared by the builder (HBC_EINVAL) and the decoder (HBC_EFORMAT).  */

static bool type_known(int t)
{
    return t >= TREE_FILE && t <= TREE_SOCKET;
}

static int chunk_len_check(uint32_t len, size_t i, int code, struct err *e)
{
    if (len == 0 || len > CHUNK_OBJECT_MAX_PLAINTEXT) {
        return err_set(e, code, "chunk %zu: length %u (want 1..%zu)", i, len,
                       (size_t)CHUNK_OBJECT_MAX_PLAINTEXT);
    }
    return 0;
}

/* A ref: its length, and for a packed slice, offset + length within the largest chunk. */
static int chunk_ref_check(const struct tree_chunk *c, size_t i, int code, struct err *e)
{
    int rc = chunk_len_check(c->len, i, code, e);
    if (rc != 0) {
        return rc;
    }
    if (!c->packed && c->off != 0) {
        return err_set(e, code, "chunk %zu: offset %u in a chunk that is not a pack", i, c->off);
    }
    if (c->packed && (uint64_t)c->off + c->len > CHUNK_OBJECT_MAX_PLAINTEXT) {
        return err_set(e, code,
                       "chunk %zu: packed slice at %u of %u bytes passes the largest pack (%zu)", i,
                       c->off, c->len, (size_t)CHUNK_OBJECT_MAX_PLAINTEXT);
    }
    return 0;
}

int tree_slice_check(const struct tree_chunk *c, size_t chunk_len, struct err *e)
{
    if (!c->packed) {
        if (chunk_len != c->len) {
            return err_set(e, HBC_EFORMAT, "chunk of %zu bytes where the tree says %u", chunk_len,
                           c->len);
        }
        return 0;
    }
    if ((uint64_t)c->off + c->len > chunk_len) {
        return err_set(
            e, HBC_EFORMAT,
            "packed file's slice at offset %u of %u bytes lies outside its pack of %zu bytes",
            c->off, c->len, chunk_len);
    }
    return 0;
}

/*
 * The rules every entry follows, on the parsed fields. has_* say which
 * optional fields are present; code is the error to report.
 */
struct entry_shape {
    int type;           /* TreeEntryType value */
    uint32_t mode;      /* permission bits */
    uint64_t size;      /* size field */
    uint64_t rdev;      /* rdev field (0 if absent) */
    bool has_target;    /* symlink_target present */
    size_t target_len;  /* its bytes */
    bool has_link;      /* hardlink_path present */
    bool has_sha256;    /* sha256 present */
    bool has_subtree;   /* subtree present */
    size_t nchunks;     /* inline chunks */
    size_t nlists;      /* chunk list ids */
    uint64_t chunk_sum; /* sum of inline chunk lengths */
};

static int shape_check(const struct entry_shape *s, int code, struct err *e)
{
    if (!type_known(s->type)) {
        return err_set(e, code, "unknown type %d", s->type);
    }
    if (s->mode > 07777) {
        return err_set(e, code, "mode %o has bits beyond 07777", s->mode);
    }
    bool file = s->type == TREE_FILE;
    bool content = file || s->type == TREE_HARDLINK; /* may carry chunks and a digest */
    if (s->has_target != (s->type == TREE_SYMLINK)) {
        return err_set(e, code, "symlink target %s",
                       s->has_target ? "on a non-symlink" : "missing");
    }
    if (s->has_target && (s->target_len == 0 || s->target_len > TREE_MAX_TARGET)) {
        return err_set(e, code, "symlink target of %zu bytes (want 1..%u)", s->target_len,
                       TREE_MAX_TARGET);
    }
    if (s->has_link != (s->type == TREE_HARDLINK)) {
        return err_set(e, code, "hard-link path %s", s->has_link ? "on a non-link" : "missing");
    }
    if (s->has_subtree != (s->type == TREE_DIR)) {
        return err_set(e, code, "subtree %s", s->has_subtree ? "on a non-directory" : "missing");
    }
    if (file && !s->has_sha256) {
        return err_set(e, code, "file without its SHA-256");
    }
    if (!content && (s->has_sha256 || s->nchunks > 0 || s->nlists > 0)) {
        return err_set(e, code, "content fields on an entry of type %d", s->type);
    }
    if (s->rdev != 0 && s->type != TREE_CHAR && s->type != TREE_BLOCK) {
        return err_set(e, code, "rdev on an entry of type %d", s->type);
    }
    if (s->nchunks > 0 && s->nlists > 0) {
        return err_set(e, code, "both inline chunks and chunk lists");
    }
    if (s->nchunks > TREE_INLINE_CHUNKS) {
        return err_set(e, code, "%zu inline chunks, above %u", s->nchunks, TREE_INLINE_CHUNKS);
    }
    if (s->nlists > TREE_MAX_CHUNK_LISTS) {
        return err_set(e, code, "%zu chunk lists, above %u", s->nlists, TREE_MAX_CHUNK_LISTS);
    }
    if (s->nlists == 0 && (s->nchunks > 0 || file) && s->chunk_sum != s->size) {
        return err_set(e, code, "chunk lengths do not add up to the size %llu",
                       (unsigned long long)s->size);
    }
    return 0;
}

/* ------------------------------------------------------------------------- */
/* Builder.                                                                  */

int tree_builder_new(struct tree_builder **out, struct crypto_hmac *ids, tree_emit_cb emit,
                     void *arg, struct err *e)
{
    *out = NULL;
    if (ids == NULL || emit == NULL) {
        return err_set(e, HBC_EINVAL, "tree builder: no key or no emit callback");
    }
    struct tree_builder *b = hbc_calloc(1, sizeof *b);
    if (b == NULL) {
        return err_set(e, HBC_ENOMEM, "tree builder");
    }
    b->ids = ids;
    b->emit = emit;
    b->arg = arg;
    b->cap = TREE_PART_MAX;
    b->buf = hbc_malloc(b->cap);
    b->parts = hbc_malloc(sizeof *b->parts * TREE_MAX_PARTS);
    if (b->buf == NULL || b->parts == NULL) {
        tree_builder_free(b);
        return err_set(e, HBC_ENOMEM, "tree builder: buffers");
    }
    b->buf[0] = TAG_VERSION;
    b->buf[1] = TREE_VERSION;
    b->len = 2;
    *out = b;
    return 0;
}

void tree_builder_free(struct tree_builder *b)
{
    if (b == NULL) {
        return;
    }
    hbc_free(b->buf);
    hbc_free(b->parts);
    hbc_free(b->refs);
    hbc_free(b->ref_ptrs);
    hbc_free(b->list_ids);
    hbc_free(b->own_lists);
    hbc_free(b);
}

/* Scratch arrays for packing chunk refs and list ids, allocated on first need. */
static int builder_scratch(struct tree_builder *b, struct err *e)
{
    if (b->refs != NULL) {
        return 0;
    }
    b->refs = hbc_malloc(sizeof *b->refs * TREE_LIST_CHUNKS);
    b->ref_ptrs = hbc_malloc(sizeof *b->ref_ptrs * TREE_LIST_CHUNKS);
    b->list_ids = hbc_malloc(sizeof *b->list_ids * TREE_MAX_CHUNK_LISTS);
    b->own_lists = hbc_malloc(sizeof *b->own_lists * TREE_MAX_CHUNK_LISTS);
    if (b->refs == NULL || b->ref_ptrs == NULL || b->list_ids == NULL || b->own_lists == NULL) {
        hbc_free(b->refs);
        hbc_free(b->ref_ptrs);
        hbc_free(b->list_ids);
        hbc_free(b->own_lists);
        b->refs = NULL;
        b->ref_ptrs = NULL;
        b->list_ids = NULL;
        b->own_lists = NULL;
        return err_set(e, HBC_ENOMEM, "tree builder: scratch");
    }
    return 0;
}

/* Point refs[0..n) at chunks[0..n) (the ids are borrowed, not copied). */
static void refs_fill(Hbc__ChunkRef *refs, Hbc__ChunkRef **ptrs, const struct tree_chunk *chunks,
                      size_t n)
{
    for (size_t i = 0; i < n; i++) {
        hbc__chunk_ref__init(&refs[i]);
        refs[i].id.data = (uint8_t *)chunks[i].id;
        refs[i].id.len = TREE_ID_LEN;
        refs[i].length = chunks[i].len;
        refs[i].has_pack_offset = chunks[i].packed;
        refs[i].pack_offset = chunks[i].packed ? chunks[i].off : 0;
        ptrs[i] = &refs[i];
    }
}

static int list_check(const struct tree_chunk *chunks, size_t n, struct err *e)
{
    if (n == 0 || n > TREE_LIST_CHUNKS) {
        return err_set(e, HBC_EINVAL, "chunk list of %zu refs (want 1..%u)", n, TREE_LIST_CHUNKS);
    }
    if (chunks == NULL) {
        return err_set(e, HBC_EINVAL, "chunk list: no chunks");
    }
    for (size_t i = 0; i < n; i++) {
        int rc = chunk_ref_check(&chunks[i], i, HBC_EINVAL, e);
        if (rc != 0) {
            return rc;
        }
    }
    return 0;
}

/* Pack a ChunkList of refs[0..n) into *out (hbc_malloc'ed). */
static int list_pack(Hbc__ChunkRef **ptrs, size_t n, uint8_t **out, size_t *out_len, struct err *e)
{
    Hbc__ChunkList cl;
    hbc__chunk_list__init(&cl);
    cl.n_chunks = n;
    cl.chunks = ptrs;
    size_t len = hbc__chunk_list__get_packed_size(&cl);
    uint8_t *buf = hbc_malloc(len);
    if (buf == NULL) {
        return err_set(e, HBC_ENOMEM, "chunk list: %zu bytes", len);
    }
    hbc__chunk_list__pack(&cl, buf);
    *out = buf;
    *out_len = len;
    return 0;
}

int tree_chunk_list_encode(const struct tree_chunk *chunks, size_t n, uint8_t **out,
                           size_t *out_len, struct err *e)
{
    *out = NULL;
    *out_len = 0;
    int rc = list_check(chunks, n, e);
    if (rc != 0) {
        return rc;
    }
    Hbc__ChunkRef *refs = hbc_malloc(sizeof *refs * n);
    Hbc__ChunkRef **ptrs = hbc_malloc(sizeof *ptrs * n);
    if (refs == NULL || ptrs == NULL) {
        hbc_free(refs);
        hbc_free(ptrs);
        return err_set(e, HBC_ENOMEM, "chunk list: %zu refs", n);
    }
    refs_fill(refs, ptrs, chunks, n);
    rc = list_pack(ptrs, n, out, out_len, e);
    hbc_free(refs);
    hbc_free(ptrs);
    return rc;
}

/* Hash data, hand it to emit. */
static int builder_emit(struct tree_builder *b, const uint8_t *data, size_t len,
                        uint8_t id[TREE_ID_LEN], struct err *e)
{
    int rc = crypto_hmac_compute(b->ids, data, len, id, e);
    if (rc != 0) {
        return rc;
    }
    return b->emit(b->arg, id, data, len, e);
}

/* Emit the part being filled (it has entries) and start the next. */
static int builder_flush_part(struct tree_builder *b, struct err *e)
{
    if (b->nparts == TREE_MAX_PARTS) {
        return err_set(e, HBC_ETOOBIG, "directory needs more than %u tree parts", TREE_MAX_PARTS);
    }
    int rc = builder_emit(b, b->buf, b->len, b->parts[b->nparts], e);
    if (rc != 0) {
        return rc;
    }
    b->nparts++;
    b->len = 2;
    b->nentries = 0;
    return 0;
}

/* Check en against the entry rules, as builder input. */
static int entry_input_check(const struct tree_builder *b, const struct tree_entry *en,
                             struct err *e)
{
    if (en->name == NULL) {
        return err_set(e, HBC_EINVAL, "entry without a name");
    }
    size_t nlen = strlen(en->name);
    if (tree_name_check((const uint8_t *)en->name, nlen, e) != 0) {
        return err_set(e, HBC_EINVAL, "entry name is not a valid path component");
    }
    if (b->have_last && name_cmp(b->last, b->last_len, en->name, nlen) >= 0) {
        return err_set(e, HBC_EINVAL, "entries out of order (names must strictly increase)");
    }
    struct entry_shape s = {
        .type = (int)en->type,
        .mode = en->mode,
        .size = en->size,
        .rdev = en->rdev,
        .has_target = en->target != NULL,
        .target_len = en->target != NULL ? strlen(en->target) : 0,
        .has_link = en->link != NULL,
        .has_sha256 = en->has_sha256,
        .has_subtree = en->has_subtree,
        .nchunks = en->nchunks,
        .nlists = en->nlists,
    };
    if (en->nchunks > 0 && en->chunks == NULL) {
        return err_set(e, HBC_EINVAL, "entry claims chunks but has none");
    }
    if (en->nlists > 0 && en->lists == NULL) {
        return err_set(e, HBC_EINVAL, "entry claims chunk lists but has none");
    }
    for (size_t i = 0; i < en->nchunks; i++) {
        int rc = chunk_ref_check(&en->chunks[i], i, HBC_EINVAL, e);
        if (rc != 0) {
            return rc;
        }
        s.chunk_sum += en->chunks[i].len; /* below 2^64: each length is below 2^23 */
    }
    /* Long inline lists go out of line; check the result's shape, not the input's. */
    if (s.nchunks > TREE_INLINE_CHUNKS) {
        if (s.nlists > 0) {
            return err_set(e, HBC_EINVAL, "both inline chunks and chunk lists");
        }
        if (s.chunk_sum != s.size) {
            return err_set(e, HBC_EINVAL, "chunk lengths do not add up to the size %llu",
                           (unsigned long long)s.size);
        }
        s.nlists = (s.nchunks + TREE_LIST_CHUNKS - 1) / TREE_LIST_CHUNKS;
        s.nchunks = 0;
    }
    if (s.has_link) {
        int rc = tree_path_check((const uint8_t *)en->link, strlen(en->link), e);
        if (rc != 0) {
            return err_set(e, HBC_EINVAL, "hard-link path is not a valid relative path");
        }
    }
    if (en->user != NULL && strlen(en->user) > TREE_MAX_OWNER) {
        return err_set(e, HBC_EINVAL, "user name above %u bytes", TREE_MAX_OWNER);
    }
    if (en->group != NULL && strlen(en->group) > TREE_MAX_OWNER) {
        return err_set(e, HBC_EINVAL, "group name above %u bytes", TREE_MAX_OWNER);
    }
    return shape_check(&s, HBC_EINVAL, e);
}

static ProtobufCBinaryData bytes_of(const void *p, size_t len)
{
    ProtobufCBinaryData d = {.len = len, .data = (uint8_t *)p};
    return d;
}

int tree_builder_add(struct tree_builder *b, const struct tree_entry *en, struct err *e)
{
    int rc = entry_input_check(b, en, e);
    if (rc != 0) {
        err_wrap(e, "tree entry");
        return rc;
    }
    size_t nlen = strlen(en->name);
    if (en->nchunks > 0 || en->nlists > 0) {
        rc = builder_scratch(b, e);
        if (rc != 0) {
            return rc;
        }
    }

    Hbc__TreeEntry te;
    hbc__tree_entry__init(&te);
    te.name = bytes_of(en->name, nlen);
    te.type = (Hbc__TreeEntryType)en->type;
    te.mode = en->mode;
    te.uid = en->uid;
    te.gid = en->gid;
    if (en->user != NULL) {
        te.has_user = 1;
        te.user = bytes_of(en->user, strlen(en->user));
    }
    if (en->group != NULL) {
        te.has_group = 1;
        te.group = bytes_of(en->group, strlen(en->group));
    }
    te.mtime_ns = en->mtime_ns;
    te.ctime_ns = en->ctime_ns;
    te.size = en->size;
    te.inode = en->ino;
    te.device = en->dev;
    if (en->rdev != 0) {
        te.has_rdev = 1;
        te.rdev = en->rdev;
    }
    if (en->target != NULL) {
        te.has_symlink_target = 1;
        te.symlink_target = bytes_of(en->target, strlen(en->target));
    }
    if (en->link != NULL) {
        te.has_hardlink_path = 1;
        te.hardlink_path = bytes_of(en->link, strlen(en->link));
    }
    if (en->has_sha256) {
        te.has_sha256 = 1;
        te.sha256 = bytes_of(en->sha256, TREE_ID_LEN);
    }
    if (en->has_subtree) {
        te.has_subtree = 1;
        te.subtree = bytes_of(en->subtree, TREE_ID_LEN);
    }
    if (en->nchunks > TREE_INLINE_CHUNKS) {
        /* Out of line: emit ChunkList objects of TREE_LIST_CHUNKS refs, then list their ids. */
        size_t nl = 0;
        for (size_t off = 0; off < en->nchunks; off += TREE_LIST_CHUNKS) {
            size_t n = en->nchunks - off < TREE_LIST_CHUNKS ? en->nchunks - off : TREE_LIST_CHUNKS;
            refs_fill(b->refs, b->ref_ptrs, en->chunks + off, n);
            uint8_t *blob;
            size_t blen;
            rc = list_pack(b->ref_ptrs, n, &blob, &blen, e);
            if (rc != 0) {
                return rc;
            }
            rc = builder_emit(b, blob, blen, b->own_lists[nl], e);
            hbc_free(blob);
            if (rc != 0) {
                return rc;
            }
            b->list_ids[nl] = bytes_of(b->own_lists[nl], TREE_ID_LEN);
            nl++;
        }
        te.n_chunk_lists = nl;
        te.chunk_lists = b->list_ids;
    } else if (en->nchunks > 0) {
        refs_fill(b->refs, b->ref_ptrs, en->chunks, en->nchunks);
        te.n_chunks = en->nchunks;
        te.chunks = b->ref_ptrs;
    } else if (en->nlists > 0) {
        for (size_t i = 0; i < en->nlists; i++) {
            b->list_ids[i] = bytes_of(en->lists[i], TREE_ID_LEN);
        }
        te.n_chunk_lists = en->nlists;
        te.chunk_lists = b->list_ids;
    }

    size_t elen = hbc__tree_entry__get_packed_size(&te);
    size_t rec = 1 + varint_len(elen) + elen;
    /* Every valid entry is far below a part (see the limits in tree.h); this is a backstop. */
    if (rec > TREE_PART_MAX - PARTS_RESERVE - 2) {
        return err_set(e, HBC_EINVAL, "tree entry: %zu bytes encoded, more than a part holds", rec);
    }
    if (b->nentries > 0 && b->len + rec > TREE_PART_MAX - PARTS_RESERVE) {
        rc = builder_flush_part(b, e);
        if (rc != 0) {
            return rc;
        }
    }
    b->buf[b->len++] = TAG_ENTRIES;
    b->len += varint_put(b->buf + b->len, elen);
    b->len += hbc__tree_entry__pack(&te, b->buf + b->len);
    b->nentries++;
    memcpy(b->last, en->name, nlen);
    b->last_len = nlen;
    b->have_last = true;

    if (b->len >= TREE_PART_MIN && fnv1a64(en->name, nlen) >> (64 - CUT_BITS) == 0) {
        return builder_flush_part(b, e);
    }
    return 0;
}

int tree_builder_finish(struct tree_builder *b, uint8_t id[TREE_ID_LEN], struct err *e)
{
    for (size_t i = 0; i < b->nparts; i++) {
        b->buf[b->len++] = TAG_PARTS;
        b->buf[b->len++] = TREE_ID_LEN;
        memcpy(b->buf + b->len, b->parts[i], TREE_ID_LEN);
        b->len += TREE_ID_LEN;
    }
    int rc = builder_emit(b, b->buf, b->len, id, e);
    b->len = 2;
    b->nentries = 0;
    b->nparts = 0;
    b->have_last = false;
    return rc;
}

/* ------------------------------------------------------------------------- */
/* Decoder.                                                                  */

static int ref_check(const Hbc__ChunkRef *r, size_t i, struct err *e)
{
    if (r->id.len != TREE_ID_LEN) {
        return err_set(e, HBC_EFORMAT, "chunk %zu: id of %zu bytes", i, r->id.len);
    }
    struct tree_chunk c = {.len = r->length, .off = r->pack_offset, .packed = r->has_pack_offset};
    return chunk_ref_check(&c, i, HBC_EFORMAT, e);
}

/* Copy a checked ref into c. */
static void ref_copy(struct tree_chunk *c, const Hbc__ChunkRef *r)
{
    memset(c, 0, sizeof *c); /* padding too: copies compare with memcmp */
    memcpy(c->id, r->id.data, TREE_ID_LEN);
    c->len = r->length;
    c->packed = r->has_pack_offset;
    c->off = r->has_pack_offset ? r->pack_offset : 0;
}

int tree_chunk_list_decode(const uint8_t *data, size_t len, struct tree_chunk **out, size_t *n,
                           struct err *e)
{
    *out = NULL;
    *n = 0;
    if (len > TREE_MAX_ENCODED) {
        return err_set(e, HBC_ETOOBIG, "chunk list: %zu bytes, above %zu", len,
                       (size_t)TREE_MAX_ENCODED);
    }
    bool oom = false;
    ProtobufCAllocator pb = {.alloc = pb_alloc, .free = pb_free, .allocator_data = &oom};
    Hbc__ChunkList *cl = hbc__chunk_list__unpack(&pb, len, data);
    if (cl == NULL) {
        return oom ? err_set(e, HBC_ENOMEM, "chunk list: parsing")
                   : err_set(e, HBC_EFORMAT, "chunk list: does not parse as a ChunkList");
    }
    int rc = 0;
    if (cl->n_chunks == 0 || cl->n_chunks > TREE_LIST_CHUNKS) {
        rc = err_set(e, HBC_EFORMAT, "chunk list: %zu refs (want 1..%u)", cl->n_chunks,
                     TREE_LIST_CHUNKS);
        goto done;
    }
    for (size_t i = 0; i < cl->n_chunks; i++) {
        rc = ref_check(cl->chunks[i], i, e);
        if (rc != 0) {
            err_wrap(e, "chunk list");
            goto done;
        }
    }
    struct tree_chunk *c = hbc_malloc(sizeof *c * cl->n_chunks);
    if (c == NULL) {
        rc = err_set(e, HBC_ENOMEM, "chunk list: %zu refs", cl->n_chunks);
        goto done;
    }
    for (size_t i = 0; i < cl->n_chunks; i++) {
        ref_copy(&c[i], cl->chunks[i]);
    }
    *out = c;
    *n = cl->n_chunks;
done:
    hbc__chunk_list__free_unpacked(cl, &pb);
    return rc;
}

/* Whether d holds a NUL byte (protobuf-c leaves data NULL for empty fields). */
static bool has_nul(const ProtobufCBinaryData *d)
{
    return d->len > 0 && memchr(d->data, '\0', d->len) != NULL;
}

/* Check one parsed entry; add the bytes its strings need to *strings. */
static int entry_parsed_check(const Hbc__TreeEntry *t, size_t *strings, struct err *e)
{
    int rc = tree_name_check(t->name.data, t->name.len, e);
    if (rc != 0) {
        return rc;
    }
    struct entry_shape s = {
        .type = (int)t->type,
        .mode = t->mode,
        .size = t->size,
        .rdev = t->has_rdev ? t->rdev : 0,
        .has_target = t->has_symlink_target,
        .target_len = t->symlink_target.len,
        .has_link = t->has_hardlink_path,
        .has_sha256 = t->has_sha256,
        .has_subtree = t->has_subtree,
        .nchunks = t->n_chunks,
        .nlists = t->n_chunk_lists,
    };
    if (t->has_rdev && t->rdev == 0) {
        return err_set(e, HBC_EFORMAT, "rdev present and zero");
    }
    if (t->has_symlink_target && has_nul(&t->symlink_target)) {
        return err_set(e, HBC_EFORMAT, "symlink target contains NUL");
    }
    if (t->has_hardlink_path) {
        rc = tree_path_check(t->hardlink_path.data, t->hardlink_path.len, e);
        if (rc != 0) {
            err_wrap(e, "hard-link path");
            return rc;
        }
    }
    if (t->has_sha256 && t->sha256.len != TREE_ID_LEN) {
        return err_set(e, HBC_EFORMAT, "SHA-256 of %zu bytes", t->sha256.len);
    }
    if (t->has_subtree && t->subtree.len != TREE_ID_LEN) {
        return err_set(e, HBC_EFORMAT, "subtree id of %zu bytes", t->subtree.len);
    }
    if (t->has_user && (t->user.len > TREE_MAX_OWNER || has_nul(&t->user))) {
        return err_set(e, HBC_EFORMAT, "user name of %zu bytes or with NUL", t->user.len);
    }
    if (t->has_group && (t->group.len > TREE_MAX_OWNER || has_nul(&t->group))) {
        return err_set(e, HBC_EFORMAT, "group name of %zu bytes or with NUL", t->group.len);
    }
    if (t->n_chunks > TREE_INLINE_CHUNKS || t->n_chunk_lists > TREE_MAX_CHUNK_LISTS) {
        return shape_check(&s, HBC_EFORMAT, e); /* reports the count over its limit */
    }
    for (size_t i = 0; i < t->n_chunks; i++) {
        rc = ref_check(t->chunks[i], i, e);
        if (rc != 0) {
            return rc;
        }
        s.chunk_sum += t->chunks[i]->length;
    }
    for (size_t i = 0; i < t->n_chunk_lists; i++) {
        if (t->chunk_lists[i].len != TREE_ID_LEN) {
            return err_set(e, HBC_EFORMAT, "chunk list id %zu of %zu bytes", i,
                           t->chunk_lists[i].len);
        }
    }
    rc = shape_check(&s, HBC_EFORMAT, e);
    if (rc != 0) {
        return rc;
    }
    *strings += t->name.len + 1;
    *strings += t->has_user ? t->user.len + 1 : 0;
    *strings += t->has_group ? t->group.len + 1 : 0;
    *strings += t->has_symlink_target ? t->symlink_target.len + 1 : 0;
    *strings += t->has_hardlink_path ? t->hardlink_path.len + 1 : 0;
    return 0;
}

/* Copy d into the string area at *p as a NUL-terminated string; advance *p. */
static const char *str_copy(char **p, const ProtobufCBinaryData *d)
{
    char *s = *p;
    if (d->len > 0) {
        memcpy(s, d->data, d->len);
    }
    s[d->len] = '\0';
    *p += d->len + 1;
    return s;
}

/* Round n up to the alignment of any of the arrays packed into one block. */
static size_t align_up(size_t n)
{
    return (n + 15) & ~(size_t)15;
}

int tree_decode(const uint8_t *data, size_t len, enum tree_kind kind, struct tree **out,
                struct err *e)
{
    *out = NULL;
    if (data == NULL && len > 0) {
        return err_set(e, HBC_EINVAL, "tree: no data");
    }
    if (len > TREE_MAX_ENCODED) {
        return err_set(e, HBC_ETOOBIG, "tree: %zu bytes, above %zu", len, (size_t)TREE_MAX_ENCODED);
    }
    bool oom = false;
    ProtobufCAllocator pb = {.alloc = pb_alloc, .free = pb_free, .allocator_data = &oom};
    Hbc__Tree *m = hbc__tree__unpack(&pb, len, data);
    if (m == NULL) {
        return oom ? err_set(e, HBC_ENOMEM, "tree: parsing")
                   : err_set(e, HBC_EFORMAT, "tree: does not parse as a Tree");
    }
    int rc = 0;
    struct tree *t = NULL;
    if (m->version != TREE_VERSION) {
        rc = err_set(e, HBC_EVERSION, "tree: version %u, this build reads %d", m->version,
                     TREE_VERSION);
        goto done;
    }
    if (kind == TREE_PART && (m->n_parts > 0 || m->n_entries == 0)) {
        rc = err_set(e, HBC_EFORMAT, "tree part: %s",
                     m->n_parts > 0 ? "lists parts of its own" : "has no entries");
        goto done;
    }
    if (m->n_parts > TREE_MAX_PARTS) {
        rc = err_set(e, HBC_ETOOBIG, "tree: %zu parts, above %u", m->n_parts, TREE_MAX_PARTS);
        goto done;
    }
    for (size_t i = 0; i < m->n_parts; i++) {
        if (m->parts[i].len != TREE_ID_LEN) {
            rc = err_set(e, HBC_EFORMAT, "tree: part id %zu of %zu bytes", i, m->parts[i].len);
            goto done;
        }
    }
    size_t strings = 0;
    size_t nchunks = 0;
    size_t nlists = 0;
    for (size_t i = 0; i < m->n_entries; i++) {
        const Hbc__TreeEntry *te = m->entries[i];
        rc = entry_parsed_check(te, &strings, e);
        if (rc != 0) {
            err_wrap(e, "tree: entry %zu", i);
            goto done;
        }
        if (i > 0) {
            const ProtobufCBinaryData *a = &m->entries[i - 1]->name;
            if (name_cmp(a->data, a->len, te->name.data, te->name.len) >= 0) {
                rc = err_set(e, HBC_EFORMAT, "tree: entry %zu: names out of order or repeated", i);
                goto done;
            }
        }
        nchunks += te->n_chunks;
        nlists += te->n_chunk_lists;
    }

    /* One block: struct tree, entries, part ids, chunks, list ids, strings. */
    size_t off_entries = align_up(sizeof *t);
    size_t off_parts = off_entries + align_up(sizeof *t->entries * m->n_entries);
    size_t off_chunks = off_parts + align_up((size_t)TREE_ID_LEN * m->n_parts);
    size_t off_lists = off_chunks + align_up(sizeof(struct tree_chunk) * nchunks);
    size_t off_strings = off_lists + align_up((size_t)TREE_ID_LEN * nlists);
    size_t total = off_strings + strings;
    uint8_t *mem = hbc_malloc(total);
    if (mem == NULL) {
        rc = err_set(e, HBC_ENOMEM, "tree: %zu bytes", total);
        goto done;
    }
    t = (struct tree *)mem;
    t->mem = mem;
    t->entries = (struct tree_entry *)(mem + off_entries);
    t->count = m->n_entries;
    t->parts = (uint8_t(*)[TREE_ID_LEN])(mem + off_parts);
    t->nparts = m->n_parts;
    for (size_t i = 0; i < m->n_parts; i++) {
        memcpy(t->parts[i], m->parts[i].data, TREE_ID_LEN);
    }
    struct tree_chunk *chunks = (struct tree_chunk *)(mem + off_chunks);
    uint8_t(*lists)[TREE_ID_LEN] = (uint8_t(*)[TREE_ID_LEN])(mem + off_lists);
    char *sp = (char *)(mem + off_strings);
    for (size_t i = 0; i < m->n_entries; i++) {
        const Hbc__TreeEntry *te = m->entries[i];
        struct tree_entry *en = &t->entries[i];
        memset(en, 0, sizeof *en);
        en->name = str_copy(&sp, &te->name);
        en->type = (enum tree_type)te->type;
        en->mode = te->mode;
        en->uid = te->uid;
        en->gid = te->gid;
        en->user = te->has_user ? str_copy(&sp, &te->user) : NULL;
        en->group = te->has_group ? str_copy(&sp, &te->group) : NULL;
        en->mtime_ns = te->mtime_ns;
        en->ctime_ns = te->ctime_ns;
        en->size = te->size;
        en->ino = te->inode;
        en->dev = te->device;
        en->rdev = te->has_rdev ? te->rdev : 0;
        en->target = te->has_symlink_target ? str_copy(&sp, &te->symlink_target) : NULL;
        en->link = te->has_hardlink_path ? str_copy(&sp, &te->hardlink_path) : NULL;
        if (te->n_chunks > 0) {
            en->chunks = chunks;
            en->nchunks = te->n_chunks;
            for (size_t c = 0; c < te->n_chunks; c++) {
                ref_copy(&chunks[c], te->chunks[c]);
            }
            chunks += te->n_chunks;
        }
        if (te->n_chunk_lists > 0) {
            en->lists = (const uint8_t(*)[TREE_ID_LEN])lists;
            en->nlists = te->n_chunk_lists;
            for (size_t c = 0; c < te->n_chunk_lists; c++) {
                memcpy(lists[c], te->chunk_lists[c].data, TREE_ID_LEN);
            }
            lists += te->n_chunk_lists;
        }
        en->has_sha256 = te->has_sha256;
        if (te->has_sha256) {
            memcpy(en->sha256, te->sha256.data, TREE_ID_LEN);
        }
        en->has_subtree = te->has_subtree;
        if (te->has_subtree) {
            memcpy(en->subtree, te->subtree.data, TREE_ID_LEN);
        }
    }
    *out = t;
done:
    hbc__tree__free_unpacked(m, &pb);
    return rc;
}

int tree_check_sequence(const struct tree *prev, const struct tree *next, struct err *e)
{
    if (prev->count == 0 || next->count == 0) {
        return 0;
    }
    const char *a = prev->entries[prev->count - 1].name;
    const char *b = next->entries[0].name;
    if (name_cmp(a, strlen(a), b, strlen(b)) >= 0) {
        return err_set(e, HBC_EFORMAT, "tree parts: names out of order or repeated across parts");
    }
    return 0;
}

void tree_free(struct tree *t)
{
    if (t != NULL) {
        hbc_free(t->mem);
    }
}
