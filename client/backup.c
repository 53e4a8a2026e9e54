/*
 * The backup pipeline (see backup.h for the happy path and failure modes).
 *
 * Threads: the caller's thread walks, reads, chunks and hashes, and owns
 * the level stack, the builders and the id set; worker threads own nothing
 * but the batch they took from the queue; one optional scanner thread
 * counts what is to come for the progress line. The queue (jobs, bytes in
 * flight, the first error) is guarded by one mutex.
 */
#include "client/backup.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <malloc.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <openssl/evp.h>

#include "client/snapshot_io.h"
#include "client/tree.h"
#include "client/walk.h"
#include "common/alloc.h"
#include "common/chunker.h"
#include "common/crypto.h"

#define BACKUP_MMAP_THRESHOLD ((size_t)32 << 20)  /* glibc's largest; above any chunk buffer */
#define BACKUP_TRIM_THRESHOLD ((size_t)128 << 20) /* free heap kept before trimming */
#define BACKUP_ARENAS 4                           /* malloc arenas the threads share */
#define READ_BUF (2 * BACKUP_READ_BLOCK) /* holds an unfinished chunk (< 4 MiB) and a block */
#define PARENT_CANDIDATES 16             /* snapshots tried when looking for a parent */

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* ------------------------------------------------------------------------- */
/* The set of chunk ids this snapshot uses (open addressing; ids are random). */

struct idset {
    uint8_t (*slots)[TREE_ID_LEN]; /* cap slots; all-zero means empty */
    size_t cap;                    /* a power of two */
    size_t count;                  /* ids held (the zero id included) */
    bool has_zero;                 /* the all-zero id is held (it marks empty slots) */
};

static const uint8_t zero_id[TREE_ID_LEN];

static size_t idset_slot(const uint8_t *id, size_t cap)
{
    uint64_t h;
    memcpy(&h, id, sizeof h);
    return (size_t)h & (cap - 1);
}

static int idset_grow(struct idset *s)
{
    size_t ncap = s->cap == 0 ? 4096 : s->cap * 2;
    uint8_t(*n)[TREE_ID_LEN] = hbc_calloc(ncap, TREE_ID_LEN);
    if (n == NULL) {
        return HBC_ENOMEM;
    }
    for (size_t i = 0; i < s->cap; i++) {
        if (memcmp(s->slots[i], zero_id, TREE_ID_LEN) != 0) {
            size_t j = idset_slot(s->slots[i], ncap);
            while (memcmp(n[j], zero_id, TREE_ID_LEN) != 0) {
                j = (j + 1) & (ncap - 1);
            }
            memcpy(n[j], s->slots[i], TREE_ID_LEN);
        }
    }
    hbc_free(s->slots);
    s->slots = n;
    s->cap = ncap;
    return 0;
}

/* Add id: 1 if it was new, 0 if already there, or HBC_ENOMEM. */
static int idset_add(struct idset *s, const uint8_t id[TREE_ID_LEN])
{
    if (memcmp(id, zero_id, TREE_ID_LEN) == 0) {
        if (s->has_zero) {
            return 0;
        }
        if (s->cap == 0 && idset_grow(s) != 0) {
            return HBC_ENOMEM; /* idset_sorted() needs a slot for it */
        }
        s->has_zero = true;
        s->count++;
        return 1;
    }
    if ((s->count + 1) * 10 > s->cap * 7 && idset_grow(s) != 0) {
        return HBC_ENOMEM;
    }
    size_t j = idset_slot(id, s->cap);
    while (memcmp(s->slots[j], zero_id, TREE_ID_LEN) != 0) {
        if (memcmp(s->slots[j], id, TREE_ID_LEN) == 0) {
            return 0;
        }
        j = (j + 1) & (s->cap - 1);
    }
    memcpy(s->slots[j], id, TREE_ID_LEN);
    s->count++;
    return 1;
}

static int id_cmp(const void *a, const void *b)
{
    return memcmp(a, b, TREE_ID_LEN);
}

/* Compact the set into a sorted array in place (the set is unusable afterwards). */
static size_t idset_sorted(struct idset *s)
{
    size_t n = 0;
    for (size_t i = 0; i < s->cap; i++) {
        if (memcmp(s->slots[i], zero_id, TREE_ID_LEN) != 0) {
            if (n != i) {
                memcpy(s->slots[n], s->slots[i], TREE_ID_LEN);
            }
            n++;
        }
    }
    if (n > 0) {
        qsort(s->slots, n, TREE_ID_LEN, id_cmp);
    }
    if (s->has_zero) {
        /* The zero id sorts first; the load factor leaves a free slot for it. */
        memmove(s->slots + 1, s->slots, n * TREE_ID_LEN);
        memset(s->slots[0], 0, TREE_ID_LEN);
        n++;
    }
    return n;
}

/* ------------------------------------------------------------------------- */
/* Jobs and workers.                                                         */

/*
 * A read buffer of READ_BUF bytes. The chunks cut from it go to the
 * workers as pointers into it, not as copies: each such job holds a
 * reference, and the reader holds one while it reads into it.
 */
struct rbuf {
    atomic_size_t refs; /* the reader's, plus one per queued or working job in it */
    uint8_t data[];     /* READ_BUF bytes */
};

static struct rbuf *rbuf_new(void)
{
    struct rbuf *b = hbc_malloc(sizeof *b + READ_BUF);
    if (b != NULL) {
        atomic_init(&b->refs, 1);
    }
    return b;
}

static void rbuf_release(struct rbuf *b)
{
    if (b != NULL && atomic_fetch_sub(&b->refs, 1) == 1) {
        hbc_free(b);
    }
}

struct job {
    uint8_t id[TREE_ID_LEN]; /* chunk id */
    uint8_t *data;           /* plaintext (owned, or inside owner) */
    size_t len;              /* bytes */
    struct rbuf *owner;      /* the read buffer data lies in (one reference), or NULL */
    struct job *next;        /* queue link */
};

static void job_free(struct job *j)
{
    if (j->owner != NULL) {
        rbuf_release(j->owner);
    } else {
        hbc_free(j->data);
    }
    hbc_free(j);
}

struct level {
    char *name;            /* its name in the parent level (NULL for the root) */
    struct stat st;        /* its stat, for its entry in the parent */
    struct snap_dir *pdir; /* the parent snapshot's same directory, or NULL */
    bool open;             /* in use */
};

struct backup {
    struct repo *r;                 /* the vault */
    const struct backup_options *o; /* options (borrowed) */
    struct backup_result *res;      /* totals */
    struct crypto_hmac *ids;        /* chunk-id key, for the tree builders */
    struct chunker ck;              /* the file chunker */
    struct rbuf *rb;                /* the read buffer (one reference) */
    uint8_t *buf;                   /* rb->data */
    size_t rb_used;                 /* bytes at buf that queued chunks may still use */
    struct idset set;               /* ids the snapshot uses */
    struct tree_chunk *chunks;      /* the current file's chunks */
    size_t nchunks;                 /* used */
    size_t chunks_cap;              /* allocated */

    char **roots;                   /* absolute, normalised, sorted (owned) */
    size_t nroots;                  /* how many */
    size_t cur_root;                /* root being walked (SIZE_MAX before the first) */
    struct level *levels;           /* levels[0] is "/" */
    struct tree_builder **builders; /* one per level index, kept for reuse */
    size_t nlevels;                 /* open levels */
    size_t levels_cap;              /* allocated */

    pthread_mutex_t mu;    /* guards everything below */
    pthread_cond_t work;   /* jobs queued or closing */
    pthread_cond_t room;   /* bytes in flight went down */
    struct job *head;      /* queue */
    struct job *tail;      /* queue end */
    size_t queued;         /* jobs in the queue */
    size_t inflight;       /* bytes of jobs not yet finished */
    size_t budget;         /* inflight bound */
    size_t batch_bytes;    /* a worker takes at most this many bytes of jobs at once */
    bool closing;          /* no more jobs will come */
    int failed;            /* first error of a worker (0: none) */
    struct err ferr;       /* its message */
    uint64_t new_chunks;   /* stored */
    uint64_t new_bytes;    /* their bytes */
    uint64_t dedup_chunks; /* found present */

    uint8_t *pack;       /* the open pack: BACKUP_PACK_MAX + pack_below bytes */
    size_t pack_used;    /* bytes in it */
    size_t pack_below;   /* files below this size are packed */
    struct op *ops_head; /* tree operations waiting for the open pack's id, in walk order */
    struct op *ops_tail; /* last of them */
    size_t nops;         /* how many */
    size_t ops_bytes;    /* their bytes */
    EVP_MD_CTX *md;      /* SHA-256 of files, reused */
    EVP_MD *sha256;      /* fetched once */

    struct err walk_err;             /* an error of the callbacks that stops the walk */
    bool partial;                    /* something was skipped */
    double t0;                       /* start */
    double last_progress;            /* time of the last progress call */
    uint64_t reused_bytes;           /* bytes of files taken from the parent */
    atomic_uint_fast64_t scan_files; /* scanner counts */
    atomic_uint_fast64_t scan_bytes; /* scanner counts */
    atomic_bool scan_done;           /* scanner finished */
    atomic_bool scan_stop;           /* ask the scanner to stop */
};

static void *worker_main(void *arg)
{
    struct backup *bk = arg;
    struct job *batch[BACKUP_HAVE_BATCH];
    uint8_t(*ids)[TREE_ID_LEN] = hbc_malloc(2 * BACKUP_HAVE_BATCH * TREE_ID_LEN);
    uint8_t(*small_ids)[TREE_ID_LEN] = ids + BACKUP_HAVE_BATCH; /* new small chunks, together */
    const void *small_data[BACKUP_HAVE_BATCH];
    size_t small_lens[BACKUP_HAVE_BATCH];
    bool present[BACKUP_HAVE_BATCH];
    bool any[BACKUP_HAVE_BATCH];
    bool batched[BACKUP_HAVE_BATCH];
    struct err e = {0};
    pthread_mutex_lock(&bk->mu);
    if (ids == NULL && bk->failed == 0) {
        bk->failed = err_set(&bk->ferr, HBC_ENOMEM, "backup worker");
    }
    for (;;) {
        while (bk->head == NULL && !bk->closing) {
            pthread_cond_wait(&bk->work, &bk->mu);
        }
        if (bk->head == NULL) {
            break;
        }
        /* Up to BACKUP_HAVE_BATCH ids (small objects), but no more than a fair share of the
         * bytes in flight, so that large chunks spread over every worker. */
        size_t n = 0;
        size_t taken = 0;
        while (bk->head != NULL && n < BACKUP_HAVE_BATCH &&
               (n == 0 || taken + bk->head->len <= bk->batch_bytes)) {
            taken += bk->head->len;
            batch[n++] = bk->head;
            bk->head = bk->head->next;
            bk->queued--;
        }
        if (bk->head == NULL) {
            bk->tail = NULL;
        }
        bool skip = bk->failed != 0;
        pthread_mutex_unlock(&bk->mu);

        int rv = 0;
        uint64_t stored = 0;
        uint64_t stored_bytes = 0;
        uint64_t found = 0;
        if (!skip) {
            for (size_t i = 0; i < n; i++) {
                memcpy(ids[i], batch[i]->id, TREE_ID_LEN);
            }
            rv = repo_have_any(bk->r, (const uint8_t(*)[TREE_ID_LEN])ids, n, present, any, &e);
            if (rv != 0) {
                err_wrap(&e, "ask which chunks exist");
            }
            /* New small chunks (trees, small files): sealed and sent together. */
            size_t nsmall = 0;
            uint64_t small_bytes = 0;
            for (size_t i = 0; rv == 0 && i < n; i++) {
                if (!present[i] && !any[i] && batch[i]->len <= REPO_PUT_BATCH_MAX) {
                    memcpy(small_ids[nsmall], batch[i]->id, TREE_ID_LEN);
                    small_data[nsmall] = batch[i]->data;
                    small_lens[nsmall++] = batch[i]->len;
                    small_bytes += batch[i]->len;
                    batched[i] = true;
                } else {
                    batched[i] = false;
                }
            }
            if (rv == 0 && nsmall > 0) {
                rv = repo_put_chunks_new(bk->r, nsmall, (const uint8_t(*)[TREE_ID_LEN])small_ids,
                                         small_data, small_lens, &e);
                if (rv != 0) {
                    err_wrap(&e, "store chunks");
                } else {
                    stored += nsmall;
                    stored_bytes += small_bytes;
                }
            }
            for (size_t i = 0; rv == 0 && i < n; i++) {
                if (present[i] || batched[i]) {
                    found += present[i] ? 1 : 0;
                    continue;
                }
                /* On no node at all (the usual case): put without asking the nodes again. */
                rv = any[i] ? repo_put_chunk(bk->r, batch[i]->id, batch[i]->data, batch[i]->len, &e)
                            : repo_put_chunk_new(bk->r, batch[i]->id, batch[i]->data, batch[i]->len,
                                                 &e);
                if (rv != 0) {
                    err_wrap(&e, "store chunk");
                } else {
                    stored++;
                    stored_bytes += batch[i]->len;
                }
            }
        }
        size_t bytes = 0;
        for (size_t i = 0; i < n; i++) {
            bytes += batch[i]->len;
            job_free(batch[i]);
        }
        pthread_mutex_lock(&bk->mu);
        bk->inflight -= bytes;
        bk->new_chunks += stored;
        bk->new_bytes += stored_bytes;
        bk->dedup_chunks += found;
        if (rv != 0 && bk->failed == 0) {
            bk->failed = rv;
            bk->ferr = e;
        }
        pthread_cond_broadcast(&bk->room);
    }
    pthread_mutex_unlock(&bk->mu);
    hbc_free(ids);
    return NULL;
}

/*
 * Note that the snapshot uses chunk id, and if this run has not seen it
 * yet, queue data (len bytes) to be stored. Waits for room. With owned
 * (*owned: the hbc_malloc'ed buffer at data) the buffer itself is taken,
 * no copy, and *owned set to NULL (it is freed if the backup has failed);
 * a known id takes nothing. Without owned, data is copied.
 */
static int submit_buf(struct backup *bk, const uint8_t id[TREE_ID_LEN], const void *data,
                      size_t len, uint8_t **owned, struct rbuf *ref, struct err *e)
{
    int fresh = idset_add(&bk->set, id);
    if (fresh < 0) {
        return err_set(e, HBC_ENOMEM, "chunk id set");
    }
    if (fresh == 0) {
        return 0;
    }
    struct job *j = hbc_malloc(sizeof *j);
    uint8_t *copy = owned != NULL ? *owned
                    : ref != NULL ? (uint8_t *)data
                                  : hbc_malloc(len > 0 ? len : 1);
    if (j == NULL || copy == NULL) {
        hbc_free(j);
        if (owned == NULL && ref == NULL) {
            hbc_free(copy);
        }
        return err_set(e, HBC_ENOMEM, "chunk buffer");
    }
    memcpy(j->id, id, TREE_ID_LEN);
    if (owned != NULL) {
        *owned = NULL;
    } else if (ref != NULL) {
        atomic_fetch_add(&ref->refs, 1);
    } else {
        memcpy(copy, data, len);
    }
    j->data = copy;
    j->len = len;
    j->owner = ref;
    j->next = NULL;
    pthread_mutex_lock(&bk->mu);
    while (bk->failed == 0 && bk->inflight > 0 && bk->inflight + len > bk->budget) {
        pthread_cond_wait(&bk->room, &bk->mu);
    }
    if (bk->failed != 0) {
        int rv = bk->failed;
        if (e != NULL) {
            *e = bk->ferr;
        }
        pthread_mutex_unlock(&bk->mu);
        job_free(j);
        return rv;
    }
    bk->inflight += len;
    if (bk->tail != NULL) {
        bk->tail->next = j;
    } else {
        bk->head = j;
    }
    bk->tail = j;
    bk->queued++;
    pthread_cond_signal(&bk->work);
    pthread_mutex_unlock(&bk->mu);
    return 0;
}

static int submit(struct backup *bk, const uint8_t id[TREE_ID_LEN], const void *data, size_t len,
                  struct err *e)
{
    return submit_buf(bk, id, data, len, NULL, NULL, e);
}

/* Trees, tree parts and chunk lists from the builders. */
static int emit_cb(void *arg, const uint8_t id[TREE_ID_LEN], const uint8_t *data, size_t len,
                   struct err *e)
{
    struct backup *bk = arg;
    bk->res->trees++;
    return submit(bk, id, data, len, e);
}

/* ------------------------------------------------------------------------- */
/* Tree operations, and the queue of those waiting for the open pack's id.   */

/*
 * One tree operation: add an entry to builders[li], or (finish) finish
 * builders[li] and add the directory's entry to builders[li - 1]. Queued
 * operations own copies of everything they point at (one allocation).
 */
struct op {
    struct op *next;      /* queue link */
    size_t li;            /* builder index */
    bool finish;          /* finish a directory (else add en) */
    bool pending;         /* en's one chunk is a slice of the open pack (id not known yet) */
    struct stat st;       /* finish: the directory's stat */
    struct tree_entry en; /* add: the entry; finish: its name only */
    size_t bytes;         /* the allocation's size */
};

static size_t str_size(const char *s)
{
    return s != NULL ? strlen(s) + 1 : 0;
}

/* Copy s into *p (advancing it); NULL stays NULL. */
static const char *str_put(char **p, const char *s)
{
    if (s == NULL) {
        return NULL;
    }
    size_t n = strlen(s) + 1;
    char *d = *p;
    memcpy(d, s, n);
    *p += n;
    return d;
}

static struct op *op_copy(size_t li, bool finish, const struct tree_entry *en,
                          const struct stat *st)
{
    size_t chunks = en->nchunks * sizeof *en->chunks;
    size_t lists = en->nlists * TREE_ID_LEN;
    size_t strs = str_size(en->name) + str_size(en->user) + str_size(en->group) +
                  str_size(en->target) + str_size(en->link);
    size_t bytes = sizeof(struct op) + chunks + lists + strs;
    struct op *o = hbc_malloc(bytes);
    if (o == NULL) {
        return NULL;
    }
    memset(o, 0, sizeof *o);
    o->li = li;
    o->finish = finish;
    o->bytes = bytes;
    if (st != NULL) {
        o->st = *st;
    }
    o->en = *en;
    uint8_t *p = (uint8_t *)(o + 1);
    if (chunks > 0) {
        memcpy(p, en->chunks, chunks);
        o->en.chunks = (const struct tree_chunk *)p;
        p += chunks;
    }
    if (lists > 0) {
        memcpy(p, en->lists, lists);
        o->en.lists = (const uint8_t(*)[TREE_ID_LEN])p;
        p += lists;
    }
    char *c = (char *)p;
    o->en.name = str_put(&c, en->name);
    o->en.user = str_put(&c, en->user);
    o->en.group = str_put(&c, en->group);
    o->en.target = str_put(&c, en->target);
    o->en.link = str_put(&c, en->link);
    return o;
}

/* Finish builders[li] (the directory name, st) and add its entry to builders[li - 1]. */
static int finish_now(struct backup *bk, size_t li, const char *name, const struct stat *st,
                      struct err *e)
{
    struct tree_entry en;
    tree_entry_from_stat(&en, st);
    en.type = TREE_DIR;
    en.name = name;
    en.has_subtree = true;
    int rv = tree_builder_finish(bk->builders[li], en.subtree, e);
    if (rv == 0) {
        rv = tree_builder_add(bk->builders[li - 1], &en, e);
    }
    return rv;
}

static int pack_close(struct backup *bk, struct err *e);

/* Queue o; close the pack when too much waits. */
static int op_queue(struct backup *bk, struct op *o, struct err *e)
{
    if (o == NULL) {
        return err_set(e, HBC_ENOMEM, "tree entry waiting for its pack");
    }
    if (bk->ops_tail != NULL) {
        bk->ops_tail->next = o;
    } else {
        bk->ops_head = o;
    }
    bk->ops_tail = o;
    bk->nops++;
    bk->ops_bytes += o->bytes;
    if (bk->nops >= BACKUP_PACK_MAX_OPS || bk->ops_bytes >= BACKUP_PACK_MAX_WAITING) {
        return pack_close(bk, e);
    }
    return 0;
}

/*
 * Add en to builders[li] (pending: its one chunk is a slice of the open
 * pack), now if nothing waits, else after what waits.
 */
static int tree_add(struct backup *bk, size_t li, const struct tree_entry *en, bool pending,
                    struct err *e)
{
    if (bk->ops_head == NULL && !pending) {
        return tree_builder_add(bk->builders[li], en, e);
    }
    struct op *o = op_copy(li, false, en, NULL);
    if (o != NULL) {
        o->pending = pending;
    }
    return op_queue(bk, o, e);
}

/* Finish directory li (see finish_now), now if nothing waits, else after what waits. */
static int dir_finish(struct backup *bk, size_t li, const char *name, const struct stat *st,
                      struct err *e)
{
    if (bk->ops_head == NULL) {
        return finish_now(bk, li, name, st, e);
    }
    struct tree_entry en = {.name = name};
    return op_queue(bk, op_copy(li, true, &en, st), e);
}

static void ops_free(struct backup *bk)
{
    while (bk->ops_head != NULL) {
        struct op *o = bk->ops_head;
        bk->ops_head = o->next;
        hbc_free(o);
    }
    bk->ops_tail = NULL;
    bk->nops = 0;
    bk->ops_bytes = 0;
}

/*
 * Close the open pack (if it holds anything): store it as one chunk, then
 * run every waiting operation in order, the pack's id filled in.
 */
static int pack_close(struct backup *bk, struct err *e)
{
    if (bk->pack_used == 0) {
        return 0;
    }
    uint8_t id[TREE_ID_LEN];
    int rv = repo_chunk_id(bk->r, bk->pack, bk->pack_used, id, e);
    if (rv == 0) {
        /* The job takes the pack's buffer (no copy); the next pack gets a new one. */
        rv = submit_buf(bk, id, bk->pack, bk->pack_used, &bk->pack, NULL, e);
    }
    if (rv == 0 && bk->pack == NULL) {
        bk->pack = hbc_malloc(BACKUP_PACK_MAX + bk->pack_below);
        if (bk->pack == NULL) {
            rv = err_set(e, HBC_ENOMEM, "pack buffer");
        }
    }
    bk->pack_used = 0;
    if (rv != 0) {
        ops_free(bk);
        return rv;
    }
    bk->res->packs++;
    while (rv == 0 && bk->ops_head != NULL) {
        struct op *o = bk->ops_head;
        bk->ops_head = o->next;
        if (o->finish) {
            rv = finish_now(bk, o->li, o->en.name, &o->st, e);
        } else {
            if (o->pending) {
                memcpy(((struct tree_chunk *)o->en.chunks)[0].id, id, TREE_ID_LEN);
            }
            rv = tree_builder_add(bk->builders[o->li], &o->en, e);
        }
        hbc_free(o);
    }
    bk->ops_tail = NULL;
    bk->nops = 0;
    bk->ops_bytes = 0;
    ops_free(bk); /* what is left after an error */
    return rv;
}

/* ------------------------------------------------------------------------- */
/* Progress and the scanner.                                                 */

static void progress(struct backup *bk, bool done)
{
    if (bk->o->progress == NULL) {
        return;
    }
    double t = now_s();
    if (!done && t - bk->last_progress < 0.2) {
        return;
    }
    bk->last_progress = t;
    struct backup_progress p = {
        .files = bk->res->files + bk->res->dirs + bk->res->others,
        .bytes = bk->reused_bytes + bk->res->bytes_read,
        .bytes_read = bk->res->bytes_read,
        .files_total = atomic_load(&bk->scan_files),
        .bytes_total = atomic_load(&bk->scan_bytes),
        .totals_final = atomic_load(&bk->scan_done),
        .elapsed = t - bk->t0,
        .done = done,
    };
    bk->o->progress(bk->o->arg, &p);
}

static int scan_cb(void *arg, struct walk_entry *en)
{
    struct backup *bk = arg;
    if (atomic_load(&bk->scan_stop)) {
        return HBC_ECANCELED;
    }
    if (en->event != WALK_LEAVE) {
        atomic_fetch_add(&bk->scan_files, 1);
    }
    if (en->event == WALK_ITEM && en->type == TREE_FILE) {
        atomic_fetch_add(&bk->scan_bytes, (uint64_t)en->st.st_size);
    }
    return 0;
}

static void *scanner_main(void *arg)
{
    struct backup *bk = arg;
    struct walk_options o;
    walk_options_default(&o);
    o.open_files = false;
    o.one_file_system = bk->o->one_file_system;
    o.entry_cb = scan_cb;
    o.arg = bk;
    walk_run((const char *const *)bk->roots, bk->nroots, &o, NULL);
    atomic_store(&bk->scan_done, true);
    return NULL;
}

static void skip(struct backup *bk, const char *path, int code, const char *msg);

/* ------------------------------------------------------------------------- */
/* Roots: absolute, normalised, sorted by components, nested ones dropped.   */

/* Compare two absolute paths component by component ('/' before any byte). */
static int path_cmp(const char *a, const char *b)
{
    for (;;) {
        while (*a == '/') {
            a++;
        }
        while (*b == '/') {
            b++;
        }
        if (*a == '\0' || *b == '\0') {
            return (*a != '\0') - (*b != '\0');
        }
        size_t la = strcspn(a, "/");
        size_t lb = strcspn(b, "/");
        int c = memcmp(a, b, la < lb ? la : lb);
        if (c != 0) {
            return c;
        }
        if (la != lb) {
            return la < lb ? -1 : 1;
        }
        a += la;
        b += lb;
    }
}

static int path_qsort_cmp(const void *a, const void *b)
{
    return path_cmp(*(char *const *)a, *(char *const *)b);
}

/* True if inner is outer or below it (both normalised). */
static bool path_within(const char *outer, const char *inner)
{
    if (strcmp(outer, "/") == 0) {
        return true;
    }
    size_t n = strlen(outer);
    return strncmp(outer, inner, n) == 0 && (inner[n] == '\0' || inner[n] == '/');
}

/* The absolute form of p: the directory above resolved (realpath), the last name kept. */
static int root_normalise(const char *p, char **out, struct err *e)
{
    *out = NULL;
    size_t len = strlen(p);
    if (len == 0 || len >= PATH_MAX) {
        return err_set(e, HBC_EINVAL, "a path to back up of %zu bytes", len);
    }
    char tmp[PATH_MAX];
    memcpy(tmp, p, len + 1);
    while (len > 1 && tmp[len - 1] == '/') {
        tmp[--len] = '\0';
    }
    char *slash = strrchr(tmp, '/');
    const char *base = slash != NULL ? slash + 1 : tmp;
    char resolved[PATH_MAX];
    if (strcmp(tmp, "/") == 0 || strcmp(base, ".") == 0 || strcmp(base, "..") == 0) {
        if (realpath(tmp, resolved) == NULL) {
            return err_set(e, -errno, "%s", p);
        }
        *out = hbc_strdup(resolved);
    } else {
        char dir[PATH_MAX];
        if (slash == NULL) {
            strcpy(dir, ".");
        } else if (slash == tmp) {
            strcpy(dir, "/");
        } else {
            memcpy(dir, tmp, (size_t)(slash - tmp));
            dir[slash - tmp] = '\0';
        }
        if (realpath(dir, resolved) == NULL) {
            return err_set(e, -errno, "%s", p);
        }
        size_t rl = strlen(resolved);
        size_t bl = strlen(base);
        if (rl + 1 + bl >= PATH_MAX) {
            return err_set(e, -ENAMETOOLONG, "%s", p);
        }
        char *s = hbc_malloc(rl + 1 + bl + 1);
        if (s != NULL) {
            memcpy(s, resolved, rl);
            size_t k = rl;
            if (rl > 1) {
                s[k++] = '/';
            }
            memcpy(s + k, base, bl + 1);
        }
        *out = s;
    }
    return *out != NULL ? 0 : err_set(e, HBC_ENOMEM, "paths");
}

static int roots_prepare(struct backup *bk, struct err *e)
{
    const struct backup_options *o = bk->o;
    if (o->npaths == 0 || o->npaths > BACKUP_MAX_PATHS) {
        return err_setraw(e, HBC_EINVAL, "give 1 to %u paths to back up", BACKUP_MAX_PATHS);
    }
    bk->roots = hbc_calloc(o->npaths, sizeof *bk->roots);
    if (bk->roots == NULL) {
        return err_set(e, HBC_ENOMEM, "paths");
    }
    for (size_t i = 0; i < o->npaths; i++) {
        struct err re = {0};
        int rv = root_normalise(o->paths[i], &bk->roots[bk->nroots], &re);
        if (rv == HBC_ENOMEM) {
            *e = re;
            return rv;
        }
        if (rv != 0) {
            skip(bk, o->paths[i], rv, re.msg); /* like a path the walk cannot open */
            continue;
        }
        bk->nroots++;
    }
    qsort(bk->roots, bk->nroots, sizeof *bk->roots, path_qsort_cmp);
    size_t k = 0;
    for (size_t i = 0; i < bk->nroots; i++) {
        if (k > 0 && path_within(bk->roots[k - 1], bk->roots[i])) {
            hbc_free(bk->roots[i]); /* inside the previous root, or the same */
            continue;
        }
        bk->roots[k++] = bk->roots[i];
    }
    bk->nroots = k;
    return 0;
}

/* Number of components of an absolute normalised path ("/" has none). */
static size_t path_ncomp(const char *p)
{
    size_t n = 0;
    for (const char *s = p; *s != '\0'; s++) {
        if (*s == '/' && s[1] != '\0') {
            n++;
        }
    }
    return n;
}

/* Copy component i of p (0-based) into name. */
static void path_comp(const char *p, size_t i, char name[TREE_MAX_NAME + 1])
{
    const char *s = p;
    for (size_t k = 0; k <= i; k++) {
        while (*s == '/') {
            s++;
        }
        size_t len = strcspn(s, "/");
        if (k == i) {
            size_t n = len > TREE_MAX_NAME ? TREE_MAX_NAME : len;
            memcpy(name, s, n);
            name[n] = '\0';
            return;
        }
        s += len;
    }
    name[0] = '\0';
}

/* ------------------------------------------------------------------------- */
/* Levels: one open directory each, bottom-up trees.                         */

static int level_push(struct backup *bk, const char *name, const struct stat *st, struct err *e)
{
    if (bk->nlevels == bk->levels_cap) {
        size_t ncap = bk->levels_cap == 0 ? 16 : bk->levels_cap * 2;
        struct level *nl = hbc_realloc(bk->levels, ncap * sizeof *nl);
        if (nl == NULL) {
            return err_set(e, HBC_ENOMEM, "directory levels");
        }
        bk->levels = nl;
        struct tree_builder **nb = hbc_realloc(bk->builders, ncap * sizeof *nb);
        if (nb == NULL) {
            return err_set(e, HBC_ENOMEM, "directory levels");
        }
        for (size_t i = bk->levels_cap; i < ncap; i++) {
            nb[i] = NULL;
        }
        bk->builders = nb;
        bk->levels_cap = ncap;
    }
    size_t i = bk->nlevels;
    if (bk->builders[i] == NULL) {
        int rv = tree_builder_new(&bk->builders[i], bk->ids, emit_cb, bk, e);
        if (rv != 0) {
            return rv;
        }
    }
    struct level *l = &bk->levels[i];
    memset(l, 0, sizeof *l);
    l->name = name != NULL ? hbc_strdup(name) : NULL;
    if (name != NULL && l->name == NULL) {
        return err_set(e, HBC_ENOMEM, "directory name");
    }
    if (st != NULL) {
        l->st = *st;
    }
    l->open = true;
    bk->nlevels++;
    if (i > 0 && bk->levels[i - 1].pdir != NULL) {
        const struct tree_entry *old;
        struct err pe = {0};
        int rv = snap_dir_find(bk->levels[i - 1].pdir, name, &old, &pe);
        if (rv == 1 && old->type == TREE_DIR) {
            uint8_t sub[TREE_ID_LEN];
            memcpy(sub, old->subtree, TREE_ID_LEN);
            rv = snap_dir_open(bk->r, sub, -1, NULL, &l->pdir, &pe);
        }
        if (rv < 0) {
            l->pdir = NULL; /* the parent cannot be read here: read the files instead */
        }
    }
    return 0;
}

/* Finish the top level and add its entry to the level below. */
static int level_pop(struct backup *bk, struct err *e)
{
    size_t i = bk->nlevels - 1;
    struct level *l = &bk->levels[i];
    int rv = dir_finish(bk, i, l->name, &l->st, e);
    snap_dir_close(l->pdir);
    hbc_free(l->name);
    l->open = false;
    bk->nlevels--;
    bk->res->dirs++;
    return rv;
}

/* Make the synthetic levels above root r (its path's directories) the open ones. */
static int sync_to_root(struct backup *bk, size_t r, struct err *e)
{
    const char *root = bk->roots[r];
    size_t n = path_ncomp(root);
    size_t want = n > 0 ? n - 1 : 0; /* synthetic levels wanted besides level 0 */
    size_t common = 0;
    while (common < want && common + 1 < bk->nlevels) {
        char name[TREE_MAX_NAME + 1];
        path_comp(root, common, name);
        if (strcmp(name, bk->levels[common + 1].name) != 0) {
            break;
        }
        common++;
    }
    while (bk->nlevels > common + 1) {
        int rv = level_pop(bk, e);
        if (rv != 0) {
            return rv;
        }
    }
    for (size_t i = common; i < want; i++) {
        char name[TREE_MAX_NAME + 1];
        path_comp(root, i, name);
        /* The prefix of root up to component i. */
        const char *s = root;
        for (size_t k = 0; k <= i; k++) {
            s++;
            s += strcspn(s, "/");
        }
        char dir[PATH_MAX];
        size_t len = (size_t)(s - root);
        memcpy(dir, root, len);
        dir[len] = '\0';
        struct stat st;
        if (lstat(dir, &st) != 0) {
            return err_set(e, -errno, "%s", dir);
        }
        int rv = level_push(bk, name, &st, e);
        if (rv != 0) {
            return rv;
        }
    }
    return 0;
}

/* ------------------------------------------------------------------------- */
/* Files.                                                                    */

static int chunk_push(struct backup *bk, const uint8_t id[TREE_ID_LEN], uint32_t len, struct err *e)
{
    if (bk->nchunks == bk->chunks_cap) {
        size_t ncap = bk->chunks_cap == 0 ? 64 : bk->chunks_cap * 2;
        struct tree_chunk *n = hbc_realloc(bk->chunks, ncap * sizeof *n);
        if (n == NULL) {
            return err_set(e, HBC_ENOMEM, "chunk list");
        }
        bk->chunks = n;
        bk->chunks_cap = ncap;
    }
    memcpy(bk->chunks[bk->nchunks].id, id, TREE_ID_LEN);
    bk->chunks[bk->nchunks].len = len;
    bk->chunks[bk->nchunks].off = 0;
    bk->chunks[bk->nchunks].packed = false;
    bk->nchunks++;
    return 0;
}

/* A chunk of the file being read (data lies in bk->rb): queued without a copy. */
static int emit_chunk(struct backup *bk, const uint8_t *data, size_t len, struct err *e)
{
    uint8_t id[TREE_ID_LEN];
    int rv = repo_chunk_id(bk->r, data, len, id, e);
    if (rv == 0) {
        rv = chunk_push(bk, id, (uint32_t)len, e);
    }
    if (rv == 0) {
        rv = submit_buf(bk, id, data, len, NULL, bk->rb, e);
    }
    return rv;
}

/*
 * Read fd to its end: chunks into bk->chunks (stored through submit),
 * SHA-256 into sha, bytes into *size. A read error is returned as -errno
 * with *io set (the file is skipped); other errors stop the backup.
 */
static int read_file(struct backup *bk, int fd, uint8_t sha[TREE_ID_LEN], uint64_t *size, bool *io,
                     struct err *e)
{
    *io = false;
    *size = 0;
    bk->nchunks = 0;
    chunker_reset(&bk->ck);
    EVP_MD_CTX *md = bk->md;
    if (EVP_DigestInit_ex(md, bk->sha256, NULL) != 1) {
        return err_openssl(e, HBC_ECRYPTO, "SHA-256");
    }
    /* Chunks of earlier files may still lie in buf: read on after them. */
    size_t used_before = atomic_load(&bk->rb->refs) > 1 ? bk->rb_used : 0;
    size_t start = used_before; /* where the current chunk begins in buf */
    size_t have = used_before;  /* bytes in buf */
    int rv = 0;
    for (;;) {
        if (have + BACKUP_READ_BLOCK > READ_BUF) {
            if (atomic_load(&bk->rb->refs) > 1) {
                /* Chunks in it are still queued: read on in a fresh buffer. */
                struct rbuf *nb = rbuf_new();
                if (nb == NULL) {
                    rv = err_set(e, HBC_ENOMEM, "read buffer");
                    break;
                }
                memcpy(nb->data, bk->buf + start, have - start);
                rbuf_release(bk->rb);
                bk->rb = nb;
                bk->buf = nb->data;
                bk->rb_used = 0;
            } else {
                memmove(bk->buf, bk->buf + start, have - start);
            }
            have -= start;
            start = 0;
        }
        ssize_t n = read(fd, bk->buf + have, BACKUP_READ_BLOCK);
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n < 0) {
            *io = true;
            rv = err_set(e, -errno, "read");
            break;
        }
        if (n == 0) {
            break;
        }
        if (EVP_DigestUpdate(md, bk->buf + have, (size_t)n) != 1) {
            rv = err_openssl(e, HBC_ECRYPTO, "SHA-256");
            break;
        }
        size_t scan = have;
        have += (size_t)n;
        *size += (uint64_t)n;
        bk->res->bytes_read += (uint64_t)n;
        size_t used;
        uint64_t clen;
        while (rv == 0 && chunker_next(&bk->ck, bk->buf + scan, have - scan, &used, &clen)) {
            scan += used;
            rv = emit_chunk(bk, bk->buf + start, (size_t)clen, e);
            start += (size_t)clen;
        }
        if (rv != 0) {
            break;
        }
        progress(bk, false);
    }
    uint64_t last = chunker_finish(&bk->ck);
    if (rv == 0 && last > 0) {
        rv = emit_chunk(bk, bk->buf + start, (size_t)last, e);
    }
    bk->rb_used = have;
    unsigned int mdlen = 0;
    if (rv == 0 && EVP_DigestFinal_ex(md, sha, &mdlen) != 1) {
        rv = err_openssl(e, HBC_ECRYPTO, "SHA-256");
    }
    return rv;
}

/*
 * Read a small file (expected st_size bytes, below pack_below) into the
 * open pack. On 0, *packed says whether it went in: *c is its slice (id
 * not known yet), sha its SHA-256, *size its length; an empty file is 0
 * bytes and not packed; a file that has grown to pack_below bytes or more
 * is not packed either (fd is rewound for read_file). A read error is
 * returned as -errno with *io set.
 */
static int read_small(struct backup *bk, int fd, uint64_t st_size, struct tree_chunk *c,
                      uint8_t sha[TREE_ID_LEN], uint64_t *size, bool *packed, bool *io,
                      struct err *e)
{
    *packed = false;
    *io = false;
    *size = 0;
    if (bk->pack_used + st_size > BACKUP_PACK_MAX) {
        int rv = pack_close(bk, e);
        if (rv != 0) {
            return rv;
        }
    }
    /* Room: pack_used + st_size <= BACKUP_PACK_MAX, and the pack has pack_below bytes more. */
    uint8_t *dst = bk->pack + bk->pack_used;
    size_t got = 0;
    while (got < bk->pack_below) {
        ssize_t n = read(fd, dst + got, bk->pack_below - got);
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n < 0) {
            *io = true;
            return err_set(e, -errno, "read");
        }
        if (n == 0) {
            break;
        }
        got += (size_t)n;
    }
    if (got >= bk->pack_below) {
        /* It grew: read it as a large file from the start. */
        if (lseek(fd, 0, SEEK_SET) != 0) {
            *io = true;
            return err_set(e, -errno, "seek");
        }
        return 0;
    }
    unsigned int mdlen = 0;
    if (EVP_DigestInit_ex(bk->md, bk->sha256, NULL) != 1 ||
        EVP_DigestUpdate(bk->md, dst, got) != 1 || EVP_DigestFinal_ex(bk->md, sha, &mdlen) != 1) {
        return err_openssl(e, HBC_ECRYPTO, "SHA-256");
    }
    *size = got;
    *packed = true;
    bk->res->bytes_read += got;
    if (got == 0) {
        return 0; /* emptied meanwhile: no chunk at all */
    }
    memset(c, 0, sizeof *c);
    c->len = (uint32_t)got;
    c->off = (uint32_t)bk->pack_used;
    c->packed = true;
    bk->pack_used += got;
    bk->res->files_packed++;
    return 0;
}

static void skip(struct backup *bk, const char *path, int code, const char *msg)
{
    bk->partial = true;
    bk->res->skipped++;
    if (bk->o->skipped != NULL) {
        bk->o->skipped(bk->o->arg, path, code, msg);
    }
}

/* A regular file: reuse the parent's entry if unchanged, else read it. */
static int do_file(struct backup *bk, struct walk_entry *we, size_t li, struct level *parent)
{
    struct err *e = &bk->walk_err;
    struct tree_entry en;
    struct tree_chunk slice;
    bool pending = false;
    tree_entry_from_stat(&en, &we->st);
    en.name = we->name;
    if (we->depth == 0) {
        en.name = strrchr(bk->roots[we->root], '/') + 1;
    }
    const struct tree_entry *old = NULL;
    if (parent->pdir != NULL) {
        struct err pe = {0};
        if (snap_dir_find(parent->pdir, en.name, &old, &pe) != 1) {
            old = NULL;
        }
    }
    if (old != NULL && tree_entry_unchanged(old, &we->st) && old->has_sha256) {
        en.chunks = old->chunks;
        en.nchunks = old->nchunks;
        en.lists = old->lists;
        en.nlists = old->nlists;
        en.has_sha256 = true;
        memcpy(en.sha256, old->sha256, TREE_ID_LEN);
        for (size_t i = 0; i < old->nchunks; i++) {
            if (idset_add(&bk->set, old->chunks[i].id) < 0) {
                return err_set(e, HBC_ENOMEM, "chunk id set");
            }
        }
        if (old->nlists > 0) {
            struct tree_chunk *all;
            size_t n;
            int rv = snap_file_chunks(bk->r, old, -1, NULL, &all, &n, e);
            if (rv != 0) {
                return err_wrap_code(e, rv, "parent snapshot");
            }
            for (size_t i = 0; i < n; i++) {
                if (idset_add(&bk->set, all[i].id) < 0) {
                    hbc_free(all);
                    return err_set(e, HBC_ENOMEM, "chunk id set");
                }
            }
            hbc_free(all);
            for (size_t i = 0; i < old->nlists; i++) {
                if (idset_add(&bk->set, old->lists[i]) < 0) {
                    return err_set(e, HBC_ENOMEM, "chunk id set");
                }
            }
        }
        bk->res->files_reused++;
        bk->reused_bytes += en.size;
    } else {
        int fd = -1;
        struct err fe = {0};
        int rv = walk_open_file(we, &fd, &fe);
        if (rv != 0) {
            skip(bk, we->path, rv, fe.msg);
            return WALK_SKIP;
        }
        uint64_t size = 0;
        bool io = false;
        bool packed = false;
        if (we->st.st_size > 0 && (uint64_t)we->st.st_size < bk->pack_below) {
            rv = read_small(bk, fd, (uint64_t)we->st.st_size, &slice, en.sha256, &size, &packed,
                            &io, &fe);
        }
        if (rv == 0 && !packed) {
            rv = read_file(bk, fd, en.sha256, &size, &io, &fe);
        }
        close(fd);
        if (rv != 0) {
            if (io) {
                skip(bk, we->path, rv, fe.msg);
                return WALK_SKIP;
            }
            *e = fe;
            return rv;
        }
        en.size = size;
        en.has_sha256 = true;
        if (packed) {
            pending = size > 0;
            en.chunks = pending ? &slice : NULL;
            en.nchunks = pending ? 1 : 0;
        } else {
            en.chunks = bk->chunks;
            en.nchunks = bk->nchunks;
        }
        bk->res->files_read++;
    }
    int rv = tree_add(bk, li, &en, pending, e);
    if (rv != 0) {
        return rv;
    }
    bk->res->files++;
    bk->res->bytes += en.size;
    return 0;
}

static int entry_cb(void *arg, struct walk_entry *we)
{
    struct backup *bk = arg;
    struct err *e = &bk->walk_err;
    int rv;
    if (we->root != bk->cur_root) {
        rv = sync_to_root(bk, we->root, e);
        if (rv != 0) {
            return rv;
        }
        bk->cur_root = we->root;
    }
    size_t n = path_ncomp(bk->roots[we->root]);
    const char *name = we->depth == 0 ? strrchr(bk->roots[we->root], '/') + 1 : we->name;
    if (we->event == WALK_ENTER) {
        if (n == 0 && we->depth == 0) {
            bk->levels[0].st = we->st;
            return 0;
        }
        if (bk->nlevels != n + we->depth) {
            return err_set(e, HBC_EINTERNAL, "walk levels out of step");
        }
        rv = level_push(bk, name, &we->st, e);
        progress(bk, false);
        return rv;
    }
    if (we->event == WALK_LEAVE) {
        if (n == 0 && we->depth == 0) {
            return 0;
        }
        return level_pop(bk, e);
    }
    size_t li = n + we->depth - 1;
    if (li + 1 != bk->nlevels) {
        return err_set(e, HBC_EINTERNAL, "walk levels out of step");
    }
    struct level *parent = &bk->levels[li];
    if (we->type == TREE_FILE) {
        rv = do_file(bk, we, li, parent);
        progress(bk, false);
        return rv;
    }
    struct tree_entry en;
    tree_entry_from_stat(&en, &we->st);
    en.name = name;
    char *link = NULL;
    if (we->type == TREE_SYMLINK) {
        en.target = we->target;
    } else if (we->type == TREE_HARDLINK) {
        const char *rroot = bk->roots[we->link_root] + 1; /* without the leading '/' */
        size_t a = strlen(rroot);
        size_t c = strlen(we->link_rel);
        link = hbc_malloc(a + c + 2);
        if (link == NULL) {
            return err_set(e, HBC_ENOMEM, "hard link");
        }
        memcpy(link, rroot, a);
        size_t k = a;
        if (a > 0 && c > 0) {
            link[k++] = '/';
        }
        memcpy(link + k, we->link_rel, c + 1);
        en.type = TREE_HARDLINK;
        en.link = link;
        en.rdev = 0;
    }
    rv = tree_add(bk, li, &en, false, e);
    hbc_free(link);
    if (rv == 0) {
        bk->res->others++;
    }
    return rv;
}

static int error_cb(void *arg, const char *path, int code, const char *msg)
{
    skip(arg, path, code, msg);
    return 0;
}

/* ------------------------------------------------------------------------- */
/* The parent snapshot.                                                      */

static int find_parent(struct backup *bk, uint8_t root_tree[TREE_ID_LEN], struct err *e)
{
    const struct backup_options *o = bk->o;
    if (o->force_read) {
        return 0;
    }
    Hbc__SnapshotInfo **list = NULL;
    size_t n = 0;
    int rv = repo_snapshot_list(bk->r, &list, &n, e);
    if (rv != 0) {
        return err_wrap_code(e, rv, "list snapshots");
    }
    const Hbc__SnapshotInfo *found = NULL;
    if (o->parent != NULL) {
        rv = snap_find(list, n, o->parent, &found, e);
        if (rv != 0) {
            err_wrap(e, "parent");
        }
    } else {
        for (size_t i = n; i-- > 0 && n - i <= PARENT_CANDIDATES && found == NULL;) {
            if (list[i]->root_tree_id.len != TREE_ID_LEN) {
                continue;
            }
            bool all = true;
            for (size_t k = 0; k < bk->nroots && all; k++) {
                enum tree_type type;
                uint8_t dir[TREE_ID_LEN];
                struct err le = {0};
                all = snap_lookup(bk->r, list[i]->root_tree_id.data, bk->roots[k], -1, &type, dir,
                                  &le) == 1;
            }
            if (all) {
                found = list[i];
            }
        }
    }
    if (rv == 0 && found != NULL) {
        if (found->root_tree_id.len != TREE_ID_LEN || found->snapshot_id.len != REPO_ID_LEN) {
            rv = err_set(e, HBC_EFORMAT, "parent snapshot record");
        } else {
            memcpy(root_tree, found->root_tree_id.data, TREE_ID_LEN);
            memcpy(bk->res->parent_id, found->snapshot_id.data, REPO_ID_LEN);
            bk->res->has_parent = true;
        }
    }
    for (size_t i = 0; i < n; i++) {
        protobuf_c_message_free_unpacked(&list[i]->base, NULL);
    }
    hbc_free(list);
    return rv;
}

/* ------------------------------------------------------------------------- */

static uint64_t wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static unsigned default_threads(void)
{
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    if (n < 1) {
        n = 1;
    }
    /* A put waits for its shards to be durable on the nodes (a group commit each), so the
     * workers mostly wait: several per core keep enough puts in flight, at the price of their
     * buffers (docs/performance.md, "Backup and restore"). */
    long want = n * BACKUP_THREADS_PER_CORE;
    return (unsigned)(want > BACKUP_MAX_THREADS ? BACKUP_MAX_THREADS : want);
}

int backup_run(struct repo *r, const struct backup_options *o, struct backup_result *res,
               struct err *e)
{
    memset(res, 0, sizeof *res);
    /*
     * Chunks, sealed objects, shards and frames are multi-MiB buffers made
     * and freed all the time. glibc's defaults give such buffers fresh
     * mmaps (or trim them back to the kernel) and every reuse page-faults
     * again; keep them in the heap instead (measured: a third of the
     * minor faults of a 3-2-1-1-0 backup, docs/performance.md). Each arena
     * keeps its own free heap, so the workers share a few arenas: with
     * glibc's default (8 per core) a 1 GB 3-2-1-1-0 backup peaked at 497 MiB,
     * with 4 at 415 MiB, at the same CPU.
     */
    mallopt(M_MMAP_THRESHOLD, (int)BACKUP_MMAP_THRESHOLD);
    mallopt(M_TRIM_THRESHOLD, (int)BACKUP_TRIM_THRESHOLD);
    mallopt(M_ARENA_MAX, BACKUP_ARENAS);
    if (o->threads > BACKUP_MAX_THREADS) {
        return err_setraw(e, HBC_EINVAL, "at most %u threads", BACKUP_MAX_THREADS);
    }
    struct backup *bk = hbc_calloc(1, sizeof *bk);
    if (bk == NULL) {
        return err_set(e, HBC_ENOMEM, "backup");
    }
    bk->r = r;
    bk->o = o;
    bk->res = res;
    bk->cur_root = SIZE_MAX;
    bk->t0 = now_s();
    bk->budget = o->inflight_bytes != 0 ? o->inflight_bytes : BACKUP_INFLIGHT_DEFAULT;
    pthread_mutex_init(&bk->mu, NULL);
    pthread_cond_init(&bk->work, NULL);
    pthread_cond_init(&bk->room, NULL);
    unsigned nthreads = o->threads != 0 ? o->threads : default_threads();
    bk->batch_bytes = bk->budget / (2 * (size_t)nthreads);
    pthread_t *threads = hbc_calloc(nthreads, sizeof *threads);
    pthread_t scanner;
    bool scanning = false;
    unsigned started = 0;
    uint8_t parent_root[TREE_ID_LEN];
    uint8_t root_id[TREE_ID_LEN];
    uint8_t ref_id[TREE_ID_LEN];
    int rv = 0;
    int walk_rv = 0;

    if (o->pack_below > BACKUP_PACK_BELOW_MAX) {
        rv = err_setraw(e, HBC_EINVAL, "pack_below above %zu", BACKUP_PACK_BELOW_MAX);
        goto done;
    }
    bk->pack_below = o->pack_below != 0 ? o->pack_below : BACKUP_PACK_BELOW_DEFAULT;
    bk->rb = rbuf_new();
    bk->buf = bk->rb != NULL ? bk->rb->data : NULL;
    bk->pack = hbc_malloc(BACKUP_PACK_MAX + bk->pack_below);
    bk->md = EVP_MD_CTX_new();
    bk->sha256 = EVP_MD_fetch(NULL, "SHA256", NULL);
    if (bk->md == NULL || bk->sha256 == NULL) {
        rv = err_openssl(e, HBC_ECRYPTO, "SHA-256");
        goto done;
    }
    if (threads == NULL || bk->buf == NULL || bk->pack == NULL) {
        rv = err_set(e, HBC_ENOMEM, "backup");
        goto done;
    }
    rv = chunker_init(&bk->ck, NULL, e);
    if (rv == 0) {
        rv = repo_id_hmac(r, &bk->ids, e);
    }
    if (rv == 0) {
        rv = roots_prepare(bk, e);
    }
    /* The GC fence: taken before the parent is read or any chunk is looked up (docs/retention.md).
     */
    uint64_t gc_start = 0;
    if (rv == 0) {
        rv = repo_gc_safe_index(r, &gc_start, e);
    }
    if (rv == 0) {
        rv = find_parent(bk, parent_root, e);
    }
    if (rv == 0) {
        rv = level_push(bk, NULL, NULL, e);
    }
    if (rv != 0) {
        goto done;
    }
    if (res->has_parent) {
        struct err pe = {0};
        if (snap_dir_open(r, parent_root, -1, NULL, &bk->levels[0].pdir, &pe) != 0) {
            bk->levels[0].pdir = NULL;
        }
    }
    for (; started < nthreads; started++) {
        if (pthread_create(&threads[started], NULL, worker_main, bk) != 0) {
            rv = err_set(e, HBC_ENOMEM, "start backup workers");
            goto drain;
        }
    }
    if (o->progress != NULL) {
        scanning = pthread_create(&scanner, NULL, scanner_main, bk) == 0;
    }

    struct walk_options wo;
    walk_options_default(&wo);
    wo.open_files = false;
    wo.one_file_system = o->one_file_system;
    wo.entry_cb = entry_cb;
    wo.error_cb = error_cb;
    wo.arg = bk;
    struct err we = {0};
    if (bk->nroots == 0) {
        rv = err_setraw(e, HBC_ENOTFOUND, "none of the paths to back up could be read");
        goto drain;
    }
    walk_rv = walk_run((const char *const *)bk->roots, bk->nroots, &wo, &we);
    if (walk_rv != 0 && walk_rv != HBC_EPARTIAL) {
        rv = walk_rv;
        *e = bk->walk_err.code != 0 ? bk->walk_err : we;
        if (e->code == 0) {
            err_set(e, rv, "walk");
        }
        goto drain;
    }
    if (bk->cur_root == SIZE_MAX) {
        /* Not one path could be read: an empty snapshot would only hide that. */
        rv = err_setraw(e, HBC_ENOTFOUND, "none of the paths to back up could be read");
        goto drain;
    }
    /* Store the last pack (running what waits for it), close the synthetic levels, finish the
     * root. */
    rv = pack_close(bk, e);
    while (bk->nlevels > 1 && rv == 0) {
        rv = level_pop(bk, e);
    }
    if (rv == 0) {
        rv = tree_builder_finish(bk->builders[0], root_id, e);
    }
    if (rv == 0) {
        res->dirs++; /* the root */
        rv = idset_add(&bk->set, root_id) < 0 ? err_set(e, HBC_ENOMEM, "chunk id set") : 0;
    }

drain:
    pthread_mutex_lock(&bk->mu);
    bk->closing = true;
    pthread_cond_broadcast(&bk->work);
    pthread_mutex_unlock(&bk->mu);
    for (unsigned i = 0; i < started; i++) {
        pthread_join(threads[i], NULL);
    }
    if (scanning) {
        atomic_store(&bk->scan_stop, true);
        pthread_join(scanner, NULL);
    }
    res->new_chunks = bk->new_chunks;
    res->new_bytes = bk->new_bytes;
    res->dedup_chunks = bk->dedup_chunks;
    if (rv == 0 && bk->failed != 0) {
        rv = bk->failed;
        *e = bk->ferr;
    }
    if (rv != 0) {
        goto done;
    }
    /* Every chunk and tree is durable: store the reference list, then commit. */
    size_t nids = idset_sorted(&bk->set);
    res->chunks = nids;
    rv = snap_reflist_store(r, (const uint8_t(*)[TREE_ID_LEN])bk->set.slots, nids, ref_id, e);
    if (rv != 0) {
        goto done;
    }
    Hbc__SnapshotCommit sc = HBC__SNAPSHOT_COMMIT__INIT;
    rv = crypto_random(res->snapshot_id, REPO_ID_LEN, e);
    if (rv != 0) {
        goto done;
    }
    sc.snapshot_id.data = res->snapshot_id;
    sc.snapshot_id.len = REPO_ID_LEN;
    sc.vault_id.data = (uint8_t *)repo_vault_id(r);
    sc.vault_id.len = REPO_ID_LEN;
    sc.time_ms = o->time_ms != 0 ? o->time_ms : wall_ms();
    sc.root_tree_id.data = root_id;
    sc.root_tree_id.len = TREE_ID_LEN;
    sc.ref_list_id.data = ref_id;
    sc.ref_list_id.len = TREE_ID_LEN;
    sc.files = res->files;
    sc.bytes = res->bytes;
    sc.chunks = res->chunks;
    sc.has_gc_start_index = true;
    sc.gc_start_index = gc_start;
    uint64_t index = 0;
    rv = snap_commit_fenced(r, &sc, (const uint8_t(*)[TREE_ID_LEN])bk->set.slots, nids, &index, e);
    if (rv != 0) {
        err_wrap(e, "commit snapshot");
        goto done;
    }
    res->committed = true;
    if (bk->partial) {
        rv = err_setraw(e, HBC_EPARTIAL, "%llu entries could not be read and were left out",
                        (unsigned long long)res->skipped);
    }

done:
    res->seconds = now_s() - bk->t0;
    if (rv == 0 || rv == HBC_EPARTIAL) {
        progress(bk, true);
    }
    for (size_t i = bk->nlevels; i-- > 0;) {
        snap_dir_close(bk->levels[i].pdir);
        hbc_free(bk->levels[i].name);
    }
    for (size_t i = 0; i < bk->levels_cap; i++) {
        tree_builder_free(bk->builders[i]);
    }
    hbc_free(bk->builders);
    hbc_free(bk->levels);
    for (size_t i = 0; i < bk->nroots; i++) {
        hbc_free(bk->roots[i]);
    }
    hbc_free(bk->roots);
    hbc_free(bk->set.slots);
    hbc_free(bk->chunks);
    rbuf_release(bk->rb);
    ops_free(bk);
    hbc_free(bk->pack);
    EVP_MD_CTX_free(bk->md);
    EVP_MD_free(bk->sha256);
    crypto_hmac_free(bk->ids);
    hbc_free(threads);
    pthread_cond_destroy(&bk->room);
    pthread_cond_destroy(&bk->work);
    pthread_mutex_destroy(&bk->mu);
    hbc_free(bk);
    return rv;
}
