/* Unit tests for client/tree: round trips, determinism, splitting, and hostile trees refused. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "client/tree.h"
#include "common/alloc.h"
#include "common/crypto.h"
#include "hbc.pb-c.h"

/* One object the builder emitted. */
struct blob {
    uint8_t id[TREE_ID_LEN]; /* its id */
    uint8_t *data;           /* a copy of its bytes */
    size_t len;              /* bytes at data */
};

/* Everything the builder emitted, in order. */
struct store {
    struct blob *blobs; /* count blobs */
    size_t count;       /* blobs */
    size_t cap;         /* room */
    int fail_after;     /* emit fails (HBC_ESTORE) once this many were taken; -1 never */
};

struct fixture {
    struct crypto_hmac *ids; /* keyed with a random chunk-id key */
    struct store store;      /* what was emitted */
};

static int emit(void *arg, const uint8_t id[TREE_ID_LEN], const uint8_t *data, size_t len,
                struct err *e)
{
    struct store *s = arg;
    if (s->fail_after >= 0 && s->count >= (size_t)s->fail_after) {
        return err_set(e, HBC_ESTORE, "test store refuses");
    }
    if (s->count == s->cap) {
        s->cap = s->cap == 0 ? 16 : s->cap * 2;
        s->blobs = realloc(s->blobs, s->cap * sizeof *s->blobs);
        assert_non_null(s->blobs);
    }
    struct blob *b = &s->blobs[s->count++];
    memcpy(b->id, id, TREE_ID_LEN);
    b->data = malloc(len == 0 ? 1 : len);
    assert_non_null(b->data);
    memcpy(b->data, data, len);
    b->len = len;
    return 0;
}

static void store_clear(struct store *s)
{
    for (size_t i = 0; i < s->count; i++) {
        free(s->blobs[i].data);
    }
    free(s->blobs);
    memset(s, 0, sizeof *s);
    s->fail_after = -1;
}

static const struct blob *store_find(const struct store *s, const uint8_t id[TREE_ID_LEN])
{
    for (size_t i = 0; i < s->count; i++) {
        if (memcmp(s->blobs[i].id, id, TREE_ID_LEN) == 0) {
            return &s->blobs[i];
        }
    }
    return NULL;
}

static int setup(void **state)
{
    struct fixture *f = calloc(1, sizeof *f);
    assert_non_null(f);
    uint8_t key[CRYPTO_KEY_LEN];
    assert_int_equal(crypto_random(key, sizeof key, NULL), 0);
    assert_int_equal(crypto_hmac_new(&f->ids, key, sizeof key, NULL), 0);
    f->store.fail_after = -1;
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    struct fixture *f = *state;
    store_clear(&f->store);
    crypto_hmac_free(f->ids);
    free(f);
    alloc_fault_reset();
    return 0;
}

static void fill(uint8_t *p, size_t n, uint8_t seed)
{
    for (size_t i = 0; i < n; i++) {
        p[i] = (uint8_t)(seed * 31 + i * 7);
    }
}

/* A sample directory: one entry of every type, with odd names and edge values. */
#define SAMPLE_COUNT 10
static struct tree_chunk sample_chunks[3];

static void sample_entries(struct tree_entry *en)
{
    for (int i = 0; i < 3; i++) {
        fill(sample_chunks[i].id, TREE_ID_LEN, (uint8_t)(i + 1));
    }
    sample_chunks[0].len = 1048576;
    sample_chunks[1].len = CHUNK_OBJECT_MAX_PLAINTEXT;
    sample_chunks[2].len = 1;
    memset(en, 0, sizeof *en * SAMPLE_COUNT);
    /* Sorted bytewise: "-", "Zed", "a", "a b", "b", "dir", "empty", "fifo", "link", "\xc3\xa9\xff"
     */
    en[0] = (struct tree_entry){.name = "-", .type = TREE_SOCKET, .mode = 0755};
    en[1] = (struct tree_entry){.name = "Zed",
                                .type = TREE_CHAR,
                                .mode = 0620,
                                .rdev = 0x0503,
                                .uid = 0,
                                .gid = 5,
                                .user = "root",
                                .group = "tty"};
    en[2] = (struct tree_entry){.name = "a",
                                .type = TREE_FILE,
                                .mode = 04755,
                                .uid = 1000,
                                .gid = 1000,
                                .user = "alice",
                                .group = "staff",
                                .mtime_ns = 1700000000123456789,
                                .ctime_ns = 1700000001000000001,
                                .size = 1048576 + CHUNK_OBJECT_MAX_PLAINTEXT + 1,
                                .ino = 12345678901234,
                                .dev = 0xfd01,
                                .chunks = sample_chunks,
                                .nchunks = 3,
                                .has_sha256 = true};
    fill(en[2].sha256, TREE_ID_LEN, 9);
    en[3] = (struct tree_entry){.name = "a b",
                                .type = TREE_SYMLINK,
                                .mode = 0777,
                                .target = "../../etc/passwd",
                                .size = 16};
    en[4] = (struct tree_entry){.name = "b",
                                .type = TREE_HARDLINK,
                                .mode = 04755,
                                .link = "dir/sub/a",
                                .size = 1048576 + CHUNK_OBJECT_MAX_PLAINTEXT + 1};
    en[5] = (struct tree_entry){.name = "dir",
                                .type = TREE_DIR,
                                .mode = 01777,
                                .mtime_ns = -1,
                                /* before the epoch */ .has_subtree = true};
    fill(en[5].subtree, TREE_ID_LEN, 5);
    en[6] =
        (struct tree_entry){.name = "empty", .type = TREE_FILE, .mode = 0600, .has_sha256 = true};
    fill(en[6].sha256, TREE_ID_LEN, 6);
    en[7] = (struct tree_entry){.name = "fifo", .type = TREE_FIFO, .mode = 0644, .user = ""};
    en[8] = (struct tree_entry){.name = "link", .type = TREE_BLOCK, .mode = 0660, .rdev = 0x0801};
    en[9] = (struct tree_entry){.name = "\xc3\xa9\xff",
                                .type = TREE_FILE,
                                .mode = 0,
                                .chunks = &sample_chunks[2],
                                .nchunks = 1,
                                .size = 1,
                                .has_sha256 = true,
                                .mtime_ns = INT64_MIN,
                                .ctime_ns = INT64_MAX};
}

static void assert_str_or_null(const char *a, const char *b)
{
    if (a == NULL || b == NULL) {
        assert_ptr_equal(a, b);
    } else {
        assert_string_equal(a, b);
    }
}

static void assert_entry_equal(const struct tree_entry *a, const struct tree_entry *b)
{
    assert_string_equal(a->name, b->name);
    assert_int_equal(a->type, b->type);
    assert_int_equal(a->mode, b->mode);
    assert_int_equal(a->uid, b->uid);
    assert_int_equal(a->gid, b->gid);
    assert_str_or_null(a->user, b->user);
    assert_str_or_null(a->group, b->group);
    assert_true(a->mtime_ns == b->mtime_ns);
    assert_true(a->ctime_ns == b->ctime_ns);
    assert_true(a->size == b->size);
    assert_true(a->ino == b->ino);
    assert_true(a->dev == b->dev);
    assert_true(a->rdev == b->rdev);
    assert_str_or_null(a->target, b->target);
    assert_str_or_null(a->link, b->link);
    assert_int_equal(a->nchunks, b->nchunks);
    for (size_t i = 0; i < a->nchunks; i++) {
        assert_memory_equal(a->chunks[i].id, b->chunks[i].id, TREE_ID_LEN);
        assert_int_equal(a->chunks[i].len, b->chunks[i].len);
        assert_int_equal(a->chunks[i].packed, b->chunks[i].packed);
        assert_int_equal(a->chunks[i].off, b->chunks[i].off);
    }
    assert_int_equal(a->nlists, b->nlists);
    for (size_t i = 0; i < a->nlists; i++) {
        assert_memory_equal(a->lists[i], b->lists[i], TREE_ID_LEN);
    }
    assert_int_equal(a->has_sha256, b->has_sha256);
    if (a->has_sha256) {
        assert_memory_equal(a->sha256, b->sha256, TREE_ID_LEN);
    }
    assert_int_equal(a->has_subtree, b->has_subtree);
    if (a->has_subtree) {
        assert_memory_equal(a->subtree, b->subtree, TREE_ID_LEN);
    }
}

/* Build entries[0..n) into f's store; return the head blob. */
static const struct blob *build(struct fixture *f, const struct tree_entry *en, size_t n)
{
    struct tree_builder *b;
    assert_int_equal(tree_builder_new(&b, f->ids, emit, &f->store, NULL), 0);
    struct err e = {0};
    for (size_t i = 0; i < n; i++) {
        int rc = tree_builder_add(b, &en[i], &e);
        if (rc != 0) {
            fail_msg("add %zu: %s", i, e.msg);
        }
    }
    uint8_t id[TREE_ID_LEN];
    assert_int_equal(tree_builder_finish(b, id, &e), 0);
    tree_builder_free(b);
    const struct blob *head = store_find(&f->store, id);
    assert_non_null(head);
    return head;
}

static void test_round_trip_every_type(void **state)
{
    struct fixture *f = *state;
    struct tree_entry en[SAMPLE_COUNT];
    sample_entries(en);
    const struct blob *head = build(f, en, SAMPLE_COUNT);
    assert_int_equal(f->store.count, 1);

    /* The id is the HMAC of the bytes, as for any chunk. */
    uint8_t id[TREE_ID_LEN];
    assert_int_equal(crypto_hmac_compute(f->ids, head->data, head->len, id, NULL), 0);
    assert_memory_equal(id, head->id, TREE_ID_LEN);

    struct tree *t;
    struct err e = {0};
    int rc = tree_decode(head->data, head->len, TREE_HEAD, &t, &e);
    if (rc != 0) {
        fail_msg("decode: %s", e.msg);
    }
    assert_int_equal(t->count, SAMPLE_COUNT);
    assert_int_equal(t->nparts, 0);
    for (size_t i = 0; i < SAMPLE_COUNT; i++) {
        assert_entry_equal(&t->entries[i], &en[i]);
    }

    /* Decoded entries go back into a builder and give the same bytes. */
    struct store again = {.fail_after = -1};
    struct tree_builder *b;
    assert_int_equal(tree_builder_new(&b, f->ids, emit, &again, NULL), 0);
    for (size_t i = 0; i < t->count; i++) {
        assert_int_equal(tree_builder_add(b, &t->entries[i], NULL), 0);
    }
    assert_int_equal(tree_builder_finish(b, id, NULL), 0);
    assert_int_equal(again.count, 1);
    assert_int_equal(again.blobs[0].len, head->len);
    assert_memory_equal(again.blobs[0].data, head->data, head->len);
    assert_memory_equal(id, head->id, TREE_ID_LEN);
    tree_builder_free(b);
    store_clear(&again);
    tree_free(t);

    /* protobuf-c's own packing of the decoded message is the same encoding. */
    Hbc__Tree *m = hbc__tree__unpack(NULL, head->len, head->data);
    assert_non_null(m);
    uint8_t *re = malloc(head->len);
    assert_non_null(re);
    assert_int_equal(hbc__tree__get_packed_size(m), head->len);
    hbc__tree__pack(m, re);
    assert_memory_equal(re, head->data, head->len);
    free(re);
    hbc__tree__free_unpacked(m, NULL);
}

static void test_same_input_same_bytes(void **state)
{
    struct fixture *f = *state;
    struct tree_entry en[SAMPLE_COUNT];
    sample_entries(en);
    const struct blob *one = build(f, en, SAMPLE_COUNT);
    const struct blob *two = build(f, en, SAMPLE_COUNT);
    assert_int_equal(f->store.count, 2);
    assert_int_equal(one->len, two->len);
    assert_memory_equal(one->data, two->data, one->len);

    /* Any change to any field changes the id. */
    size_t before = f->store.count;
    en[2].mtime_ns++;
    build(f, en, SAMPLE_COUNT);
    assert_int_equal(f->store.count, before + 1);
    assert_memory_not_equal(f->store.blobs[before].id, f->store.blobs[0].id, TREE_ID_LEN);

    /* An empty directory is a valid head with no entries; all empty dirs share one id. */
    const struct blob *e1 = build(f, NULL, 0);
    const struct blob *e2 = build(f, NULL, 0);
    assert_memory_equal(e1->id, e2->id, TREE_ID_LEN);
    struct tree *t;
    assert_int_equal(tree_decode(e1->data, e1->len, TREE_HEAD, &t, NULL), 0);
    assert_int_equal(t->count, 0);
    tree_free(t);
    /* ...but not a valid part. */
    assert_int_equal(tree_decode(e1->data, e1->len, TREE_PART, &t, NULL), HBC_EFORMAT);
}

static void test_builder_refuses_bad_entries(void **state)
{
    struct fixture *f = *state;
    struct tree_builder *b;
    assert_int_equal(tree_builder_new(&b, f->ids, emit, &f->store, NULL), 0);
    uint8_t sha[TREE_ID_LEN] = {0};
    struct tree_entry ok = {.name = "m", .type = TREE_FIFO, .mode = 0600};
    assert_int_equal(tree_builder_add(b, &ok, NULL), 0);

    struct err e = {0};
    struct tree_entry x = ok;
    x.name = "a"; /* before "m" */
    assert_int_equal(tree_builder_add(b, &x, &e), HBC_EINVAL);
    assert_non_null(strstr(e.msg, "out of order"));
    x.name = "m"; /* a duplicate */
    assert_int_equal(tree_builder_add(b, &x, NULL), HBC_EINVAL);
    const char *bad_names[] = {"", ".", "..", "a/b", "/"};
    for (size_t i = 0; i < sizeof bad_names / sizeof *bad_names; i++) {
        x.name = bad_names[i];
        assert_int_equal(tree_builder_add(b, &x, NULL), HBC_EINVAL);
    }
    char long_name[TREE_MAX_NAME + 2];
    memset(long_name, 'z', sizeof long_name - 1);
    long_name[sizeof long_name - 1] = '\0';
    x.name = long_name;
    assert_int_equal(tree_builder_add(b, &x, NULL), HBC_EINVAL);

    x = (struct tree_entry){.name = "n1", .type = TREE_FILE}; /* no SHA-256 */
    assert_int_equal(tree_builder_add(b, &x, NULL), HBC_EINVAL);
    x = (struct tree_entry){.name = "n2", .type = TREE_FILE, .has_sha256 = true, .size = 5};
    memcpy(x.sha256, sha, sizeof sha); /* size without chunks */
    assert_int_equal(tree_builder_add(b, &x, &e), HBC_EINVAL);
    assert_non_null(strstr(e.msg, "add up"));
    x = (struct tree_entry){.name = "n3", .type = TREE_DIR}; /* no subtree */
    assert_int_equal(tree_builder_add(b, &x, NULL), HBC_EINVAL);
    x = (struct tree_entry){.name = "n4", .type = TREE_SYMLINK}; /* no target */
    assert_int_equal(tree_builder_add(b, &x, NULL), HBC_EINVAL);
    x = (struct tree_entry){.name = "n5", .type = TREE_HARDLINK, .link = "../etc/passwd"};
    assert_int_equal(tree_builder_add(b, &x, NULL), HBC_EINVAL);
    x = (struct tree_entry){.name = "n6", .type = TREE_FIFO, .target = "x"};
    assert_int_equal(tree_builder_add(b, &x, NULL), HBC_EINVAL);
    x = (struct tree_entry){.name = "n7", .type = 99};
    assert_int_equal(tree_builder_add(b, &x, NULL), HBC_EINVAL);
    x = (struct tree_entry){.name = "n8", .type = TREE_FIFO, .mode = 010000};
    assert_int_equal(tree_builder_add(b, &x, NULL), HBC_EINVAL);
    struct tree_chunk zero = {.len = 0};
    x = (struct tree_entry){
        .name = "n9", .type = TREE_FILE, .has_sha256 = true, .chunks = &zero, .nchunks = 1};
    assert_int_equal(tree_builder_add(b, &x, NULL), HBC_EINVAL);

    /* Nothing refused reached the encoding: the directory still holds just "m". */
    uint8_t id[TREE_ID_LEN];
    assert_int_equal(tree_builder_finish(b, id, NULL), 0);
    struct tree *t;
    const struct blob *head = store_find(&f->store, id);
    assert_int_equal(tree_decode(head->data, head->len, TREE_HEAD, &t, NULL), 0);
    assert_int_equal(t->count, 1);
    assert_string_equal(t->entries[0].name, "m");
    tree_free(t);
    tree_builder_free(b);
}

/* Entry i of a big directory: a file with one chunk. */
static void big_entry(struct tree_entry *en, struct tree_chunk *c, char *name, size_t cap,
                      unsigned i, unsigned salt)
{
    snprintf(name, cap, "record-%08u-%s.hl7", i, salt != 0 && i >= salt ? "x" : "");
    *c = (struct tree_chunk){0};
    fill(c->id, TREE_ID_LEN, (uint8_t)i);
    memcpy(c->id, &i, sizeof i);
    c->len = 1000 + i % 5000;
    *en = (struct tree_entry){.name = name,
                              .type = TREE_FILE,
                              .mode = 0640,
                              .uid = 1000,
                              .gid = 1000,
                              .mtime_ns = 1700000000000000000 + (int64_t)i,
                              .ctime_ns = 1700000000000000000 + (int64_t)i,
                              .size = c->len,
                              .ino = 100000 + i,
                              .dev = 64769,
                              .chunks = c,
                              .nchunks = 1,
                              .has_sha256 = true};
    memcpy(en->sha256, c->id, TREE_ID_LEN);
}

/* Build a directory of n generated entries; entry `insert` (if not 0) gets an extra sibling. */
static const struct blob *build_big(struct fixture *f, unsigned n, unsigned insert)
{
    struct tree_builder *b;
    assert_int_equal(tree_builder_new(&b, f->ids, emit, &f->store, NULL), 0);
    for (unsigned i = 0; i < n; i++) {
        struct tree_entry en;
        struct tree_chunk c;
        char name[64];
        big_entry(&en, &c, name, sizeof name, i, 0);
        assert_int_equal(tree_builder_add(b, &en, NULL), 0);
        if (insert != 0 && i == insert) {
            snprintf(name, sizeof name, "record-%08u-new.hl7", i);
            assert_int_equal(tree_builder_add(b, &en, NULL), 0);
        }
    }
    uint8_t id[TREE_ID_LEN];
    assert_int_equal(tree_builder_finish(b, id, NULL), 0);
    tree_builder_free(b);
    return store_find(&f->store, id);
}

/* Decode a directory (head and parts) from f's store; return its entry count and check order. */
static size_t read_dir(struct fixture *f, const struct blob *head, uint8_t (**parts)[TREE_ID_LEN],
                       size_t *nparts)
{
    struct tree *h;
    struct err e = {0};
    int rc = tree_decode(head->data, head->len, TREE_HEAD, &h, &e);
    if (rc != 0) {
        fail_msg("head: %s", e.msg);
    }
    size_t total = 0;
    struct tree *prev = NULL;
    for (size_t i = 0; i < h->nparts; i++) {
        const struct blob *p = store_find(&f->store, h->parts[i]);
        assert_non_null(p);
        assert_true(p->len <= TREE_PART_MAX);
        struct tree *t;
        assert_int_equal(tree_decode(p->data, p->len, TREE_PART, &t, NULL), 0);
        /* A part is never a head with parts of its own, and a head is not a valid part. */
        assert_int_equal(t->nparts, 0);
        if (prev != NULL) {
            assert_int_equal(tree_check_sequence(prev, t, NULL), 0);
            assert_int_equal(tree_check_sequence(t, prev, NULL), HBC_EFORMAT);
        }
        total += t->count;
        tree_free(prev);
        prev = t;
    }
    if (prev != NULL) {
        assert_int_equal(tree_check_sequence(prev, h, NULL), 0);
        tree_free(prev);
    }
    total += h->count;
    if (parts != NULL) {
        *parts = malloc(h->nparts * TREE_ID_LEN + 1);
        memcpy(*parts, h->parts, h->nparts * TREE_ID_LEN);
        *nparts = h->nparts;
    }
    tree_free(h);
    return total;
}

static void test_large_directory_splits_into_parts(void **state)
{
    struct fixture *f = *state;
    const unsigned n = 60000; /* about 8 MB encoded */
    const struct blob *head = build_big(f, n, 0);
    assert_true(head->len <= TREE_PART_MAX);
    uint8_t(*a)[TREE_ID_LEN];
    size_t na;
    assert_int_equal(read_dir(f, head, &a, &na), n);
    assert_true(na >= 2);
    print_message("60000 entries: %zu objects, head %zu bytes\n", f->store.count, head->len);

    /* One new name in the middle changes few parts: boundaries are content-defined. */
    const struct blob *head2 = build_big(f, n, n / 2);
    uint8_t(*b)[TREE_ID_LEN];
    size_t nb;
    assert_int_equal(read_dir(f, head2, &b, &nb), n + 1);
    size_t shared = 0;
    for (size_t i = 0; i < nb; i++) {
        for (size_t j = 0; j < na; j++) {
            if (memcmp(b[i], a[j], TREE_ID_LEN) == 0) {
                shared++;
                break;
            }
        }
    }
    print_message("after one insertion: %zu of %zu parts shared\n", shared, nb);
    assert_true(shared + 2 >= na);
    free(a);
    free(b);
}

static void test_long_chunk_lists_go_out_of_line(void **state)
{
    struct fixture *f = *state;
    size_t n = 2 * TREE_LIST_CHUNKS + 5;
    struct tree_chunk *c = calloc(n, sizeof *c);
    assert_non_null(c);
    uint64_t size = 0;
    for (size_t i = 0; i < n; i++) {
        memset(c[i].id, 0, TREE_ID_LEN);
        memcpy(c[i].id, &i, sizeof i);
        c[i].len = 262144 + (uint32_t)(i % 1000);
        size += c[i].len;
    }
    struct tree_entry en[2] = {
        {.name = "image.dcm",
         .type = TREE_FILE,
         .mode = 0644,
         .size = size,
         .chunks = c,
         .nchunks = n,
         .has_sha256 = true},
        /* Exactly the inline limit stays inline. */
        {.name = "image2.dcm",
         .type = TREE_FILE,
         .mode = 0644,
         .chunks = c,
         .nchunks = TREE_INLINE_CHUNKS,
         .has_sha256 = true},
    };
    for (size_t i = 0; i < TREE_INLINE_CHUNKS; i++) {
        en[1].size += c[i].len;
    }
    const struct blob *head = build(f, en, 2);
    assert_int_equal(f->store.count, 4); /* three chunk lists, then the head */
    struct tree *t;
    assert_int_equal(tree_decode(head->data, head->len, TREE_HEAD, &t, NULL), 0);
    assert_int_equal(t->entries[0].nchunks, 0);
    assert_int_equal(t->entries[0].nlists, 3);
    assert_int_equal(t->entries[1].nchunks, TREE_INLINE_CHUNKS);
    assert_int_equal(t->entries[1].nlists, 0);
    size_t at = 0;
    for (size_t l = 0; l < 3; l++) {
        const struct blob *b = store_find(&f->store, t->entries[0].lists[l]);
        assert_non_null(b);
        assert_true(b->len <= TREE_PART_MAX);
        struct tree_chunk *got;
        size_t ng;
        assert_int_equal(tree_chunk_list_decode(b->data, b->len, &got, &ng, NULL), 0);
        assert_int_equal(ng, l < 2 ? TREE_LIST_CHUNKS : 5);
        assert_memory_equal(got, c + at, ng * sizeof *got);
        at += ng;
        hbc_free(got);
    }
    assert_int_equal(at, n);
    tree_free(t);

    /* A caller may give the list ids itself. */
    uint8_t *blob;
    size_t blen;
    assert_int_equal(tree_chunk_list_encode(c, 10, &blob, &blen, NULL), 0);
    uint8_t lid[1][TREE_ID_LEN];
    assert_int_equal(crypto_hmac_compute(f->ids, blob, blen, lid[0], NULL), 0);
    hbc_free(blob);
    struct tree_entry pre = {.name = "x",
                             .type = TREE_FILE,
                             .size = 12345,
                             .lists = lid,
                             .nlists = 1,
                             .has_sha256 = true};
    build(f, &pre, 1);
    assert_int_equal(tree_chunk_list_encode(c, 0, &blob, &blen, NULL), HBC_EINVAL);
    assert_int_equal(tree_chunk_list_encode(c, TREE_LIST_CHUNKS + 1, &blob, &blen, NULL),
                     HBC_EINVAL);
    free(c);
}

/* ---- hostile trees -------------------------------------------------------- */

/* A well-formed single-entry message to corrupt one field at a time. */
struct crafted {
    Hbc__Tree tree;          /* the message */
    Hbc__TreeEntry entry;    /* its one entry */
    Hbc__TreeEntry *ptrs[2]; /* entries pointers */
    Hbc__ChunkRef ref;       /* one chunk */
    Hbc__ChunkRef *refs[1];  /* chunks pointers */
    uint8_t id[TREE_ID_LEN]; /* bytes for ids and digests */
    uint8_t buf[4096];       /* the packed result */
};

static void crafted_init(struct crafted *c)
{
    memset(c, 0, sizeof *c);
    hbc__tree__init(&c->tree);
    hbc__tree_entry__init(&c->entry);
    hbc__chunk_ref__init(&c->ref);
    fill(c->id, TREE_ID_LEN, 3);
    c->tree.version = TREE_VERSION;
    c->ptrs[0] = &c->entry;
    c->tree.entries = c->ptrs;
    c->tree.n_entries = 1;
    c->entry.name.data = (uint8_t *)"file";
    c->entry.name.len = 4;
    c->entry.type = HBC__TREE_ENTRY_TYPE__TREE_ENTRY_FILE;
    c->entry.mode = 0644;
    c->entry.size = 10;
    c->ref.id.data = c->id;
    c->ref.id.len = TREE_ID_LEN;
    c->ref.length = 10;
    c->refs[0] = &c->ref;
    c->entry.chunks = c->refs;
    c->entry.n_chunks = 1;
    c->entry.has_sha256 = 1;
    c->entry.sha256.data = c->id;
    c->entry.sha256.len = TREE_ID_LEN;
}

/* Pack c and decode it as kind; return the code (and free any result). */
static int crafted_decode(struct crafted *c, enum tree_kind kind, struct err *e)
{
    size_t len = hbc__tree__get_packed_size(&c->tree);
    assert_true(len <= sizeof c->buf);
    hbc__tree__pack(&c->tree, c->buf);
    struct tree *t = NULL;
    int rc = tree_decode(c->buf, len, kind, &t, e);
    assert_true((rc == 0) == (t != NULL));
    tree_free(t);
    return rc;
}

static void expect_name_refused(const char *name, size_t len)
{
    struct crafted c;
    crafted_init(&c);
    c.entry.name.data = (uint8_t *)name;
    c.entry.name.len = len;
    struct err e = {0};
    assert_int_equal(crafted_decode(&c, TREE_HEAD, &e), HBC_EFORMAT);
    assert_non_null(strstr(e.msg, "entry 0"));
}

static void test_hostile_names_refused(void **state)
{
    (void)state;
    struct crafted c;
    crafted_init(&c);
    assert_int_equal(crafted_decode(&c, TREE_HEAD, NULL), 0); /* the baseline is valid */
    expect_name_refused("", 0);
    expect_name_refused(".", 1);
    expect_name_refused("..", 2);
    expect_name_refused("../etc", 6);
    expect_name_refused("a/b", 3);
    expect_name_refused("/", 1);
    expect_name_refused("/etc/passwd", 11);
    expect_name_refused("a\0b", 3);
    expect_name_refused("\0", 1);
    static char longname[TREE_MAX_NAME + 1];
    memset(longname, 'n', sizeof longname);
    expect_name_refused(longname, sizeof longname);
    /* 255 bytes is fine, and so is "..." or a name starting with dots. */
    struct crafted ok;
    crafted_init(&ok);
    ok.entry.name.data = (uint8_t *)longname;
    ok.entry.name.len = TREE_MAX_NAME;
    assert_int_equal(crafted_decode(&ok, TREE_HEAD, NULL), 0);
    ok.entry.name.data = (uint8_t *)"...";
    ok.entry.name.len = 3;
    assert_int_equal(crafted_decode(&ok, TREE_HEAD, NULL), 0);

    /* Two entries: out of order, or the same name twice. */
    Hbc__TreeEntry second;
    crafted_init(&c);
    second = c.entry;
    c.ptrs[1] = &second;
    c.tree.n_entries = 2;
    assert_int_equal(crafted_decode(&c, TREE_HEAD, NULL), HBC_EFORMAT); /* duplicate */
    second.name.data = (uint8_t *)"filf";
    assert_int_equal(crafted_decode(&c, TREE_HEAD, NULL), 0);
    second.name.data = (uint8_t *)"fild";
    assert_int_equal(crafted_decode(&c, TREE_HEAD, NULL), HBC_EFORMAT);
    second.name.data = (uint8_t *)"fil";
    second.name.len = 3; /* a prefix sorts first */
    assert_int_equal(crafted_decode(&c, TREE_HEAD, NULL), HBC_EFORMAT);

    /* Hard-link paths are checked component by component. */
    const char *bad_links[] = {"../x", "a/../../x", "/etc/passwd", "a//b", "a/", ".", "a/./b"};
    for (size_t i = 0; i < sizeof bad_links / sizeof *bad_links; i++) {
        crafted_init(&c);
        c.entry.type = HBC__TREE_ENTRY_TYPE__TREE_ENTRY_HARDLINK;
        c.entry.has_hardlink_path = 1;
        c.entry.hardlink_path.data = (uint8_t *)bad_links[i];
        c.entry.hardlink_path.len = strlen(bad_links[i]);
        assert_int_equal(crafted_decode(&c, TREE_HEAD, NULL), HBC_EFORMAT);
        c.entry.hardlink_path.data = (uint8_t *)"a/b/file";
        c.entry.hardlink_path.len = 8;
        assert_int_equal(crafted_decode(&c, TREE_HEAD, NULL), 0);
    }
}

static void test_hostile_fields_refused(void **state)
{
    (void)state;
    struct crafted c;
    struct err e = {0};

    crafted_init(&c);
    c.tree.version = 2;
    assert_int_equal(crafted_decode(&c, TREE_HEAD, &e), HBC_EVERSION);

    crafted_init(&c);
    c.entry.type = 0;
    assert_int_equal(crafted_decode(&c, TREE_HEAD, NULL), HBC_EFORMAT);
    c.entry.type = 9;
    assert_int_equal(crafted_decode(&c, TREE_HEAD, NULL), HBC_EFORMAT);

    crafted_init(&c);
    c.entry.mode = 0100644; /* type bits do not belong in mode */
    assert_int_equal(crafted_decode(&c, TREE_HEAD, NULL), HBC_EFORMAT);

    crafted_init(&c);
    c.entry.has_sha256 = 0;
    assert_int_equal(crafted_decode(&c, TREE_HEAD, NULL), HBC_EFORMAT);
    crafted_init(&c);
    c.entry.sha256.len = 31;
    assert_int_equal(crafted_decode(&c, TREE_HEAD, NULL), HBC_EFORMAT);

    crafted_init(&c);
    c.ref.id.len = 33;
    assert_int_equal(crafted_decode(&c, TREE_HEAD, NULL), HBC_EFORMAT);
    crafted_init(&c);
    c.ref.length = 0;
    assert_int_equal(crafted_decode(&c, TREE_HEAD, NULL), HBC_EFORMAT);
    crafted_init(&c);
    c.ref.length = (uint32_t)CHUNK_OBJECT_MAX_PLAINTEXT + 1;
    c.entry.size = c.ref.length;
    assert_int_equal(crafted_decode(&c, TREE_HEAD, NULL), HBC_EFORMAT);
    crafted_init(&c);
    c.entry.size = 11; /* chunks add up to 10 */
    assert_int_equal(crafted_decode(&c, TREE_HEAD, &e), HBC_EFORMAT);
    assert_non_null(strstr(e.msg, "add up"));

    /* Fields that do not belong to the type. */
    crafted_init(&c);
    c.entry.type = HBC__TREE_ENTRY_TYPE__TREE_ENTRY_DIR; /* has chunks and no subtree */
    assert_int_equal(crafted_decode(&c, TREE_HEAD, NULL), HBC_EFORMAT);
    c.entry.n_chunks = 0;
    c.entry.has_sha256 = 0;
    assert_int_equal(crafted_decode(&c, TREE_HEAD, NULL), HBC_EFORMAT); /* still no subtree */
    c.entry.has_subtree = 1;
    c.entry.subtree.data = c.id;
    c.entry.subtree.len = TREE_ID_LEN;
    assert_int_equal(crafted_decode(&c, TREE_HEAD, NULL), 0);
    c.entry.subtree.len = 16;
    assert_int_equal(crafted_decode(&c, TREE_HEAD, NULL), HBC_EFORMAT);

    crafted_init(&c);
    c.entry.type = HBC__TREE_ENTRY_TYPE__TREE_ENTRY_SYMLINK;
    c.entry.n_chunks = 0;
    c.entry.has_sha256 = 0;
    assert_int_equal(crafted_decode(&c, TREE_HEAD, NULL), HBC_EFORMAT); /* no target */
    c.entry.has_symlink_target = 1;
    c.entry.symlink_target.data = (uint8_t *)"/etc/passwd"; /* kept verbatim: allowed */
    c.entry.symlink_target.len = 11;
    assert_int_equal(crafted_decode(&c, TREE_HEAD, NULL), 0);
    c.entry.symlink_target.data = (uint8_t *)"a\0b";
    c.entry.symlink_target.len = 3;
    assert_int_equal(crafted_decode(&c, TREE_HEAD, NULL), HBC_EFORMAT);
    c.entry.symlink_target.len = 0;
    assert_int_equal(crafted_decode(&c, TREE_HEAD, NULL), HBC_EFORMAT);

    crafted_init(&c);
    c.entry.has_rdev = 1; /* rdev on a file */
    c.entry.rdev = 5;
    assert_int_equal(crafted_decode(&c, TREE_HEAD, NULL), HBC_EFORMAT);

    crafted_init(&c);
    ProtobufCBinaryData lid = {.len = TREE_ID_LEN, .data = c.id};
    c.entry.chunk_lists = &lid; /* both inline chunks and lists */
    c.entry.n_chunk_lists = 1;
    assert_int_equal(crafted_decode(&c, TREE_HEAD, NULL), HBC_EFORMAT);
    c.entry.n_chunks = 0;
    assert_int_equal(crafted_decode(&c, TREE_HEAD, NULL), 0);
    lid.len = 2;
    assert_int_equal(crafted_decode(&c, TREE_HEAD, NULL), HBC_EFORMAT);

    /* Parts: only heads list them, ids are 32 bytes, a part is never empty. */
    crafted_init(&c);
    ProtobufCBinaryData pids[TREE_MAX_PARTS + 1];
    for (size_t i = 0; i <= TREE_MAX_PARTS; i++) {
        pids[i] = (ProtobufCBinaryData){.len = TREE_ID_LEN, .data = c.id};
    }
    c.tree.parts = pids;
    c.tree.n_parts = 1;
    assert_int_equal(crafted_decode(&c, TREE_HEAD, NULL), 0);
    assert_int_equal(crafted_decode(&c, TREE_PART, NULL), HBC_EFORMAT);
    pids[0].len = 31;
    assert_int_equal(crafted_decode(&c, TREE_HEAD, NULL), HBC_EFORMAT);
    pids[0].len = TREE_ID_LEN;
    c.tree.n_parts = TREE_MAX_PARTS + 1;
    size_t len = hbc__tree__get_packed_size(&c.tree);
    uint8_t *big = malloc(len);
    hbc__tree__pack(&c.tree, big);
    struct tree *t;
    assert_int_equal(tree_decode(big, len, TREE_HEAD, &t, NULL), HBC_ETOOBIG);
    free(big);

    /* Garbage, truncation, size. */
    uint8_t junk[64];
    fill(junk, sizeof junk, 77);
    assert_int_equal(tree_decode(junk, sizeof junk, TREE_HEAD, &t, NULL), HBC_EFORMAT);
    crafted_init(&c);
    len = hbc__tree__get_packed_size(&c.tree);
    hbc__tree__pack(&c.tree, c.buf);
    for (size_t cut = 0; cut < len; cut++) {
        /* Cut right after the version field, the prefix is a valid empty tree (protobuf has no
         * end marker; the chunk object's GCM tag is what rules truncation out). */
        t = NULL;
        int rc = tree_decode(c.buf, cut, TREE_HEAD, &t, NULL);
        assert_int_equal(rc == 0, cut == 2);
        if (rc == 0) {
            assert_int_equal(t->count, 0);
        }
        tree_free(t);
    }
    assert_int_equal(tree_decode(c.buf, TREE_MAX_ENCODED + 1, TREE_HEAD, &t, &e), HBC_ETOOBIG);
    uint8_t empty_list[1];
    struct tree_chunk *got;
    size_t ng;
    assert_int_equal(tree_chunk_list_decode(empty_list, 0, &got, &ng, NULL), HBC_EFORMAT);
}

/* Every single-bit flip of a valid tree decodes or fails cleanly (ASan watches). */
/* Packed small files: slices of one pack round-trip; a slice outside its pack is refused. */
static void test_packed_slices(void **state)
{
    struct fixture *f = *state;
    enum { N = 300 };
    struct tree_entry en[N];
    struct tree_chunk c[N];
    char names[N][32];
    uint8_t pack_id[TREE_ID_LEN];
    fill(pack_id, TREE_ID_LEN, 77);
    uint32_t off = 0;
    for (unsigned i = 0; i < N; i++) {
        big_entry(&en[i], &c[i], names[i], sizeof names[i], i, 0);
        memcpy(c[i].id, pack_id, TREE_ID_LEN); /* every file a slice of the same pack */
        c[i].packed = true;
        c[i].off = off;
        off += c[i].len;
    }
    const struct blob *head = build(f, en, N);
    struct tree *t;
    struct err e = {0};
    assert_int_equal(tree_decode(head->data, head->len, TREE_HEAD, &t, &e), 0);
    assert_int_equal(t->count, N);
    for (unsigned i = 0; i < N; i++) {
        assert_entry_equal(&t->entries[i], &en[i]);
        assert_int_equal(tree_slice_check(&t->entries[i].chunks[0], off, &e), 0);
    }
    /* The pack turns out shorter than the last slice needs: refused, saying why. */
    const struct tree_chunk *last = &t->entries[N - 1].chunks[0];
    assert_int_equal(tree_slice_check(last, off - 1, &e), HBC_EFORMAT);
    assert_non_null(strstr(e.msg, "outside its pack"));
    /* A whole chunk must be exactly its length. */
    struct tree_chunk whole = {.len = 10};
    assert_int_equal(tree_slice_check(&whole, 10, NULL), 0);
    assert_int_equal(tree_slice_check(&whole, 11, NULL), HBC_EFORMAT);
    tree_free(t);

    /* Offsets that pass the largest chunk: refused by the builder and the decoder. */
    struct tree_builder *b;
    assert_int_equal(tree_builder_new(&b, f->ids, emit, &f->store, NULL), 0);
    c[0].off = (uint32_t)CHUNK_OBJECT_MAX_PLAINTEXT - c[0].len + 1;
    assert_int_equal(tree_builder_add(b, &en[0], &e), HBC_EINVAL);
    assert_non_null(strstr(e.msg, "packed slice"));
    c[0].packed = false;
    c[0].off = 5; /* an offset in a chunk that is not a pack */
    assert_int_equal(tree_builder_add(b, &en[0], NULL), HBC_EINVAL);
    tree_builder_free(b);

    struct crafted cr;
    crafted_init(&cr);
    cr.ref.has_pack_offset = 1;
    cr.ref.pack_offset = 12345;
    assert_int_equal(crafted_decode(&cr, TREE_HEAD, NULL), 0);
    cr.ref.pack_offset = (uint32_t)CHUNK_OBJECT_MAX_PLAINTEXT - 9; /* 10 bytes: one too many */
    assert_int_equal(crafted_decode(&cr, TREE_HEAD, &e), HBC_EFORMAT);
    assert_non_null(strstr(e.msg, "packed slice"));
    cr.ref.pack_offset = UINT32_MAX;
    assert_int_equal(crafted_decode(&cr, TREE_HEAD, NULL), HBC_EFORMAT);
}

static void test_bit_flips_never_crash(void **state)
{
    struct fixture *f = *state;
    struct tree_entry en[SAMPLE_COUNT];
    sample_entries(en);
    const struct blob *head = build(f, en, SAMPLE_COUNT);
    uint8_t *copy = malloc(head->len);
    assert_non_null(copy);
    size_t ok = 0;
    for (size_t i = 0; i < head->len * 8; i++) {
        memcpy(copy, head->data, head->len);
        copy[i / 8] ^= (uint8_t)(1u << (i % 8));
        struct tree *t = NULL;
        int rc = tree_decode(copy, head->len, TREE_HEAD, &t, NULL);
        assert_true(rc == 0 || rc == HBC_EFORMAT || rc == HBC_EVERSION || rc == HBC_ETOOBIG);
        if (rc == 0) {
            /* Whatever decoded obeys the rules a restore relies on. */
            for (size_t k = 0; k < t->count; k++) {
                const char *n = t->entries[k].name;
                assert_int_equal(tree_name_check((const uint8_t *)n, strlen(n), NULL), 0);
            }
            ok++;
        }
        tree_free(t);
    }
    print_message("%zu of %zu bit flips still decode (times, sizes, ids)\n", ok, head->len * 8);
    free(copy);
}

static void test_allocation_failures(void **state)
{
    struct fixture *f = *state;
    struct tree_entry en[SAMPLE_COUNT];
    sample_entries(en);
    const struct blob *head = build(f, en, SAMPLE_COUNT);
    bool succeeded = false;
    for (long n = 0; n < 200 && !succeeded; n++) {
        struct tree *t = NULL;
        alloc_fault_after(n);
        int rc = tree_decode(head->data, head->len, TREE_HEAD, &t, NULL);
        alloc_fault_reset();
        assert_true(rc == 0 || rc == HBC_ENOMEM);
        succeeded = rc == 0;
        tree_free(t);
    }
    assert_true(succeeded);

    succeeded = false;
    for (long n = 0; n < 50 && !succeeded; n++) {
        struct store s = {.fail_after = -1};
        struct tree_builder *b = NULL;
        uint8_t id[TREE_ID_LEN];
        alloc_fault_after(n);
        int rc = tree_builder_new(&b, f->ids, emit, &s, NULL);
        for (size_t i = 0; rc == 0 && i < SAMPLE_COUNT; i++) {
            rc = tree_builder_add(b, &en[i], NULL);
        }
        if (rc == 0) {
            rc = tree_builder_finish(b, id, NULL);
        }
        alloc_fault_reset();
        assert_true(rc == 0 || rc == HBC_ENOMEM || rc == HBC_ECRYPTO);
        succeeded = rc == 0;
        tree_builder_free(b);
        store_clear(&s);
    }
    assert_true(succeeded);

    /* A failing store stops the builder with the store's code. */
    f->store.fail_after = 0;
    struct tree_builder *b;
    uint8_t id[TREE_ID_LEN];
    assert_int_equal(tree_builder_new(&b, f->ids, emit, &f->store, NULL), 0);
    assert_int_equal(tree_builder_add(b, &en[0], NULL), 0);
    struct err e = {0};
    assert_int_equal(tree_builder_finish(b, id, &e), HBC_ESTORE);
    tree_builder_free(b);
}

static void test_entry_from_stat_and_incremental_check(void **state)
{
    (void)state;
    char dir[] = "/tmp/hbc-tree-XXXXXX";
    assert_non_null(mkdtemp(dir));
    char path[64];
    snprintf(path, sizeof path, "%s/f", dir);
    FILE *fp = fopen(path, "w");
    assert_non_null(fp);
    fputs("hello", fp);
    fclose(fp);
    assert_int_equal(chmod(path, 04750), 0);
    struct stat st;
    assert_int_equal(lstat(path, &st), 0);
    struct tree_entry en;
    tree_entry_from_stat(&en, &st);
    assert_int_equal(en.type, TREE_FILE);
    assert_int_equal(en.mode, 04750);
    assert_int_equal(en.size, 5);
    assert_true(en.ino == st.st_ino);
    assert_true(en.mtime_ns == (int64_t)st.st_mtim.tv_sec * 1000000000 + st.st_mtim.tv_nsec);
    assert_true(tree_entry_unchanged(&en, &st));

    struct stat changed = st;
    changed.st_mtim.tv_nsec ^= 1;
    assert_false(tree_entry_unchanged(&en, &changed));
    changed = st;
    changed.st_size = 6;
    assert_false(tree_entry_unchanged(&en, &changed));
    changed = st;
    changed.st_ino++;
    assert_false(tree_entry_unchanged(&en, &changed));
    changed = st;
    changed.st_dev++;
    assert_false(tree_entry_unchanged(&en, &changed));
    changed = st;
    changed.st_ctim.tv_sec++; /* ctime alone does not force a re-read */
    assert_true(tree_entry_unchanged(&en, &changed));

    assert_int_equal(lstat(dir, &st), 0);
    tree_entry_from_stat(&en, &st);
    assert_int_equal(en.type, TREE_DIR);
    assert_false(tree_entry_unchanged(&en, &st));
    assert_int_equal(unlink(path), 0);
    assert_int_equal(rmdir(dir), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_round_trip_every_type, setup, teardown),
        cmocka_unit_test_setup_teardown(test_same_input_same_bytes, setup, teardown),
        cmocka_unit_test_setup_teardown(test_builder_refuses_bad_entries, setup, teardown),
        cmocka_unit_test_setup_teardown(test_large_directory_splits_into_parts, setup, teardown),
        cmocka_unit_test_setup_teardown(test_long_chunk_lists_go_out_of_line, setup, teardown),
        cmocka_unit_test_setup_teardown(test_hostile_names_refused, setup, teardown),
        cmocka_unit_test_setup_teardown(test_hostile_fields_refused, setup, teardown),
        cmocka_unit_test_setup_teardown(test_packed_slices, setup, teardown),
        cmocka_unit_test_setup_teardown(test_bit_flips_never_crash, setup, teardown),
        cmocka_unit_test_setup_teardown(test_allocation_failures, setup, teardown),
        cmocka_unit_test_setup_teardown(test_entry_from_stat_and_incremental_check, setup,
                                        teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
