/*
 * Restore and restore tests (see restore.h for the happy path and failure
 * modes).
 *
 * Threads: the caller's thread reads trees and queues chunk jobs; workers
 * fetch, write and hash. A file's chunks may complete in any order: each
 * is written at its offset at once, and its buffer is kept until every
 * earlier chunk has been hashed, so the SHA-256 is fed in order. Buffers
 * count against the in-flight budget until hashed; earlier chunks are
 * always queued first, so the budget never deadlocks. One mutex guards the
 * queue and the totals; each file has its own for its hashing state.
 */
#include "client/restore.h"

#include <fnmatch.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <openssl/evp.h>

#include "client/fs_restore.h"
#include "client/pack.h"
#include "client/snapshot_io.h"
#include "client/tree.h"
#include "common/alloc.h"

#define MAX_OPEN_FILES 128   /* files being written at once (descriptors) */
#define GROUP_MAX_FILES 4096 /* packed files restored by one job */
#define PREFETCH_THREADS 8   /* threads reading directory trees ahead of the walk */
#define PREFETCH_MAX 64      /* trees read ahead and not yet walked, at most */
/* File chunks read in one round trip hold at most this many plaintext bytes (replies stay far
 * below a node's smallest max_frame, and memory near what one chunk at a time took). */
#define BATCH_MAX_BYTES ((size_t)4 << 20)
#define DIR_WINDOW 32 /* subdirectories of one directory read ahead together */

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* A file being restored. */
struct rfile {
    char *path;                /* relative to the target */
    struct tree_entry meta;    /* its entry (pointers cleared) */
    struct fs_file *ff;        /* its temporary file; NULL in a restore test */
    struct tree_chunk *chunks; /* its chunks */
    size_t n;                  /* how many */
    uint8_t **pending;         /* fetched but not yet hashed, by index */
    size_t next;               /* next chunk to hash */
    size_t left;               /* chunks not yet done */
    EVP_MD_CTX *md;            /* SHA-256 so far */
    int err;                   /* first error (0: none) */
    struct err e;              /* its message */
    pthread_mutex_t mu;        /* guards the fields above from next on */
};

/* A packed file of a group. */
struct gfile {
    char *path;             /* relative to the target */
    struct tree_entry meta; /* its entry (pointers cleared) */
    struct tree_chunk c;    /* its slice of the pack */
};

/* Consecutive packed files of one pack: one job reads the pack once and restores them all. */
struct rgroup {
    uint8_t id[TREE_ID_LEN]; /* the pack */
    struct gfile *files;     /* the files, in walk order */
    size_t n;                /* how many */
    size_t cap;              /* allocated */
    size_t reserve;          /* budget bytes held: the largest offset + length */
};

struct rjob {
    struct rgroup *g;  /* a group of packed files (then f is NULL) */
    struct rfile *f;   /* the file */
    size_t idx;        /* which chunk */
    uint64_t off;      /* where it goes */
    struct rjob *next; /* queue link */
};

/* A directory tree read ahead of the walk by a prefetch thread. */
struct prefetch {
    uint8_t id[TREE_ID_LEN];   /* the directory's head */
    struct snap_dir *d;        /* the open directory (done, rv == 0) */
    int rv;                    /* result (done) */
    struct err e;              /* its message */
    struct repo_read_stats st; /* shards read */
    bool done;                 /* finished */
    bool waited;               /* the walk waits for it (pf_done is signalled only then) */
    struct prefetch *next;     /* queue link */
};

/* Done after every file: hard links, then directory metadata (post-order). */
struct deferred {
    char *path;             /* entry */
    char *link;             /* hard link: the first name */
    struct tree_entry meta; /* directory: its metadata (pointers cleared) */
};

struct restore {
    struct repo *r;                  /* the vault */
    const struct restore_options *o; /* options (borrowed) */
    struct restore_result *res;      /* totals (under mu) */
    struct fs_restore *fsr;          /* the target, or NULL */
    struct deferred *defs;           /* hard links and directories */
    size_t ndefs;                    /* used */
    size_t defs_cap;                 /* allocated */

    pthread_mutex_t mu;       /* guards everything below and res */
    pthread_cond_t work;      /* jobs queued or closing */
    pthread_cond_t room;      /* budget or files freed */
    struct rjob *head;        /* queue */
    struct rjob *tail;        /* queue end */
    size_t queued;            /* jobs in the queue */
    size_t inflight;          /* chunk bytes reserved */
    size_t budget;            /* inflight bound */
    size_t open_files;        /* files not finished */
    bool closing;             /* no more jobs */
    double t0;                /* start */
    double last_progress;     /* last progress call */
    struct pack_cache *packs; /* packs recently read */
    pthread_mutex_t pf_mu;    /* guards the prefetch fields below */
    pthread_cond_t pf_work;   /* prefetches queued or closing */
    pthread_cond_t pf_done;   /* a prefetch finished */
    struct prefetch *pf_head; /* prefetches not yet started */
    struct prefetch *pf_tail; /* queue end */
    size_t pf_outstanding;    /* prefetches started and not yet taken by the walk */
    size_t pf_queued;         /* prefetches in the queue */
    bool pf_closing;          /* prefetch threads are to stop */
    struct rgroup *group;     /* packed files being gathered (caller's thread) */
    uint64_t bytes_total;     /* for progress */
};

static void report(struct restore *rs, const char *path, int code, const char *msg)
{
    /* Called with rs->mu held. */
    rs->res->errors++;
    if (rs->o->error != NULL) {
        rs->o->error(rs->o->arg, path, code, msg);
    }
}

static void report_unlocked(struct restore *rs, const char *path, int code, const char *msg)
{
    pthread_mutex_lock(&rs->mu);
    report(rs, path, code, msg);
    pthread_mutex_unlock(&rs->mu);
}

static void progress(struct restore *rs, bool done)
{
    if (rs->o->progress == NULL) {
        return;
    }
    double t = now_s();
    pthread_mutex_lock(&rs->mu);
    if (!done && t - rs->last_progress < 0.2) {
        pthread_mutex_unlock(&rs->mu);
        return;
    }
    rs->last_progress = t;
    struct restore_progress p = {
        .files = rs->res->files + rs->res->dirs + rs->res->others,
        .bytes = rs->res->chunk_bytes,
        .bytes_total = rs->bytes_total,
        .elapsed = t - rs->t0,
        .done = done,
    };
    pthread_mutex_unlock(&rs->mu);
    rs->o->progress(rs->o->arg, &p);
}

static void rfile_free(struct rfile *f)
{
    if (f == NULL) {
        return;
    }
    if (f->pending != NULL) {
        for (size_t i = 0; i < f->n; i++) {
            hbc_free(f->pending[i]);
        }
    }
    hbc_free(f->pending);
    hbc_free(f->chunks);
    EVP_MD_CTX_free(f->md);
    fs_file_abort(f->ff);
    pthread_mutex_destroy(&f->mu);
    hbc_free(f->path);
    hbc_free(f);
}

/* The file's chunks are all in (or failed): check, commit, verify, free. */
static void rfile_finish(struct restore *rs, struct rfile *f)
{
    int rv = f->err;
    struct err e = f->e;
    uint8_t got[TREE_ID_LEN];
    unsigned int mdlen = 0;
    size_t unhashed = 0;
    for (size_t i = 0; f->pending != NULL && i < f->n; i++) {
        if (f->pending[i] != NULL) {
            unhashed += f->chunks[i].len;
        }
    }
    if (rv == 0 && EVP_DigestFinal_ex(f->md, got, &mdlen) != 1) {
        rv = err_openssl(&e, HBC_ECRYPTO, "SHA-256");
    }
    if (rv == 0 && (!f->meta.has_sha256 || !crypto_equal(got, f->meta.sha256, TREE_ID_LEN))) {
        rv = err_setraw(&e, HBC_ECORRUPT, "content does not match its SHA-256");
    }
    bool verified = false;
    if (f->ff != NULL) {
        struct fs_file *ff = f->ff;
        f->ff = NULL;
        if (rv != 0) {
            fs_file_abort(ff);
        } else {
            rv = fs_file_commit(ff, &f->meta, &e);
            if (rv == 0 && rs->o->verify) {
                rv = fs_restore_verify(rs->fsr, f->path, &f->meta, &e);
                verified = rv == 0;
            }
        }
    }
    pthread_mutex_lock(&rs->mu);
    if (rv != 0) {
        report(rs, f->path, rv, e.msg);
    } else {
        rs->res->files++;
        rs->res->bytes += f->meta.size;
        rs->res->verified += verified ? 1 : 0;
    }
    rs->inflight -= unhashed;
    rs->open_files--;
    pthread_cond_broadcast(&rs->room);
    pthread_mutex_unlock(&rs->mu);
    rfile_free(f);
}

static void meta_copy(struct tree_entry *dst, const struct tree_entry *src);

/* A packed slice of a file with several chunks: a copy of c's bytes of its pack into *out. */
static int slice_get(struct restore *rs, const struct tree_chunk *c, uint8_t **out,
                     struct repo_read_stats *st, struct err *e)
{
    struct pack_ref pr;
    bool fetched;
    int rv = pack_cache_get(rs->packs, c->id, &pr, &fetched, st, e);
    if (rv != 0) {
        return rv;
    }
    rv = tree_slice_check(c, pr.len, e);
    if (rv == 0) {
        *out = hbc_malloc(c->len);
        if (*out == NULL) {
            rv = err_set(e, HBC_ENOMEM, "packed slice");
        } else {
            memcpy(*out, pr.data + c->off, c->len);
        }
    }
    pack_cache_release(rs->packs, &pr);
    return rv;
}

static void group_free(struct rgroup *g)
{
    if (g == NULL) {
        return;
    }
    for (size_t i = 0; i < g->n; i++) {
        hbc_free(g->files[i].path);
    }
    hbc_free(g->files);
    hbc_free(g);
}

/* Restore (or test) one packed file from its pack's plaintext. */
static int gfile_restore(struct restore *rs, const struct gfile *gf, const struct pack_ref *pr,
                         bool *verified, struct err *e)
{
    int rv = tree_slice_check(&gf->c, pr->len, e);
    if (rv != 0) {
        return rv;
    }
    const uint8_t *data = pr->data + gf->c.off;
    uint8_t got[TREE_ID_LEN];
    if (EVP_Digest(data, gf->c.len, got, NULL, EVP_sha256(), NULL) != 1) {
        return err_openssl(e, HBC_ECRYPTO, "SHA-256");
    }
    if (!gf->meta.has_sha256 || !crypto_equal(got, gf->meta.sha256, TREE_ID_LEN)) {
        return err_setraw(e, HBC_ECORRUPT, "content does not match its SHA-256");
    }
    if (rs->fsr == NULL) {
        return 0;
    }
    struct fs_file *ff;
    rv = fs_restore_file_begin(rs->fsr, gf->path, &ff, e);
    if (rv != 0) {
        return rv;
    }
    rv = fs_file_write(ff, 0, data, gf->c.len, e);
    if (rv != 0) {
        fs_file_abort(ff);
        return rv;
    }
    rv = fs_file_commit(ff, &gf->meta, e);
    if (rv == 0 && rs->o->verify) {
        rv = fs_restore_verify(rs->fsr, gf->path, &gf->meta, e);
        *verified = rv == 0;
    }
    return rv;
}

/* A worker runs a group: read the pack once, restore every file in it. Frees g. */
static void group_run(struct restore *rs, struct rgroup *g)
{
    struct pack_ref pr;
    bool fetched = false;
    struct err e = {0};
    struct repo_read_stats st = {0};
    int rv = pack_cache_get(rs->packs, g->id, &pr, &fetched, &st, &e);
    uint64_t files = 0;
    uint64_t bytes = 0;
    uint64_t verified = 0;
    for (size_t i = 0; i < g->n; i++) {
        const struct gfile *gf = &g->files[i];
        struct err fe = e;
        int frv = rv;
        bool ver = false;
        if (frv == 0) {
            frv = gfile_restore(rs, gf, &pr, &ver, &fe);
        }
        if (frv != 0) {
            report_unlocked(rs, gf->path, frv, fe.msg);
        } else {
            files++;
            bytes += gf->meta.size;
            verified += ver ? 1 : 0;
        }
    }
    size_t plen = rv == 0 ? pr.len : 0;
    if (rv == 0) {
        pack_cache_release(rs->packs, &pr);
    }
    pthread_mutex_lock(&rs->mu);
    rs->res->files += files;
    rs->res->bytes += bytes;
    rs->res->verified += verified;
    rs->res->shards_read += st.shards_read;
    rs->res->shard_errors += st.shard_errors;
    if (fetched && rv == 0) {
        rs->res->chunks++;
        rs->res->chunk_bytes += plen;
    }
    rs->inflight -= g->reserve;
    pthread_cond_broadcast(&rs->room);
    pthread_mutex_unlock(&rs->mu);
    group_free(g);
}

/* Queue the group being gathered (caller's thread). */
static void group_dispatch(struct restore *rs)
{
    struct rgroup *g = rs->group;
    if (g == NULL) {
        return;
    }
    rs->group = NULL;
    struct rjob *j = hbc_calloc(1, sizeof *j);
    if (j == NULL) {
        for (size_t i = 0; i < g->n; i++) {
            report_unlocked(rs, g->files[i].path, HBC_ENOMEM, "out of memory");
        }
        group_free(g);
        return;
    }
    j->g = g;
    pthread_mutex_lock(&rs->mu);
    while (rs->inflight > 0 && rs->inflight + g->reserve > rs->budget) {
        pthread_cond_wait(&rs->room, &rs->mu);
    }
    rs->inflight += g->reserve;
    if (rs->tail != NULL) {
        rs->tail->next = j;
    } else {
        rs->head = j;
    }
    rs->tail = j;
    rs->queued++;
    pthread_cond_signal(&rs->work);
    pthread_mutex_unlock(&rs->mu);
}

/* Add a packed file (one slice, en->chunks[0]) to the group of its pack. */
static void group_add(struct restore *rs, const char *path, const struct tree_entry *en)
{
    const struct tree_chunk *c = &en->chunks[0];
    if (rs->group != NULL &&
        (memcmp(rs->group->id, c->id, TREE_ID_LEN) != 0 || rs->group->n >= GROUP_MAX_FILES)) {
        group_dispatch(rs);
    }
    struct rgroup *g = rs->group;
    if (g == NULL) {
        g = hbc_calloc(1, sizeof *g);
        if (g == NULL) {
            report_unlocked(rs, path, HBC_ENOMEM, "out of memory");
            return;
        }
        memcpy(g->id, c->id, TREE_ID_LEN);
        rs->group = g;
    }
    if (g->n == g->cap) {
        size_t ncap = g->cap == 0 ? 64 : g->cap * 2;
        struct gfile *nf = hbc_realloc(g->files, ncap * sizeof *nf);
        if (nf == NULL) {
            report_unlocked(rs, path, HBC_ENOMEM, "out of memory");
            return;
        }
        g->files = nf;
        g->cap = ncap;
    }
    struct gfile *gf = &g->files[g->n];
    gf->path = hbc_strdup(path);
    if (gf->path == NULL) {
        report_unlocked(rs, path, HBC_ENOMEM, "out of memory");
        return;
    }
    meta_copy(&gf->meta, en);
    gf->c = *c;
    g->n++;
    size_t end = (size_t)c->off + c->len; /* at most CHUNK_OBJECT_MAX_PLAINTEXT (tree.h) */
    if (end > g->reserve) {
        g->reserve = end;
    }
}

/* Whether j is one chunk of a file read on its own (not packed): those are read in batches. */
static bool job_batchable(const struct rjob *j)
{
    return j->g == NULL && !j->f->chunks[j->idx].packed;
}

/* Take the queue's first job. Caller holds rs->mu; the queue is not empty. */
static struct rjob *job_take(struct restore *rs)
{
    struct rjob *j = rs->head;
    rs->head = j->next;
    if (rs->head == NULL) {
        rs->tail = NULL;
    }
    rs->queued--;
    return j;
}

/* A chunk job's data is read (rv == 0: plain, len bytes; owned) or failed: write, hash, count. */
static void job_done(struct restore *rs, struct rjob *j, int rv, uint8_t *plain, size_t len,
                     const struct repo_read_stats *st, struct err *e)
{
    struct rfile *f = j->f;
    const struct tree_chunk *c = &f->chunks[j->idx];
    if (rv == 0 && f->ff != NULL) {
        rv = fs_file_write(f->ff, j->off, plain, len, e);
    }
    size_t released = 0;
    pthread_mutex_lock(&f->mu);
    if (rv != 0) {
        if (f->err == 0) {
            f->err = rv;
            f->e = *e;
        }
        hbc_free(plain);
        released += c->len;
    } else {
        f->pending[j->idx] = plain;
        while (f->next < f->n && f->pending[f->next] != NULL) {
            if (f->err == 0 &&
                EVP_DigestUpdate(f->md, f->pending[f->next], f->chunks[f->next].len) != 1) {
                f->err = err_openssl(&f->e, HBC_ECRYPTO, "SHA-256");
            }
            hbc_free(f->pending[f->next]);
            f->pending[f->next] = NULL;
            released += f->chunks[f->next].len;
            f->next++;
        }
    }
    bool last = --f->left == 0;
    pthread_mutex_unlock(&f->mu);
    hbc_free(j);

    pthread_mutex_lock(&rs->mu);
    rs->inflight -= released;
    rs->res->shards_read += st->shards_read;
    rs->res->shard_errors += st->shard_errors;
    if (rv == 0) {
        rs->res->chunks++;
        rs->res->chunk_bytes += len;
    }
    pthread_cond_broadcast(&rs->room);
    pthread_mutex_unlock(&rs->mu);
    if (last) {
        rfile_finish(rs, f);
    }
}

/*
 * Read the chunks of batch[0..n) (batchable jobs) in one round trip
 * (repo_get_chunks: one request per node for all of them), then finish
 * each job. A chunk the batch could not read was read alone, with every
 * fallback, inside repo_get_chunks().
 */
static void batch_run(struct restore *rs, struct rjob **batch, size_t n)
{
    uint8_t ids[REPO_GET_BATCH_CHUNKS][REPO_CHUNK_ID];
    uint8_t *plains[REPO_GET_BATCH_CHUNKS];
    size_t lens[REPO_GET_BATCH_CHUNKS];
    int results[REPO_GET_BATCH_CHUNKS];
    for (size_t i = 0; i < n; i++) {
        memcpy(ids[i], batch[i]->f->chunks[batch[i]->idx].id, REPO_CHUNK_ID);
    }
    struct repo_read_stats st = {0};
    struct err errs[REPO_GET_BATCH_CHUNKS];
    memset(errs, 0, sizeof errs);
    repo_get_chunks(rs->r, n, (const uint8_t(*)[REPO_CHUNK_ID])ids, rs->o->copy, plains, lens,
                    results, &st, errs);
    for (size_t i = 0; i < n; i++) {
        int rv = results[i];
        if (rv == 0) {
            rv = tree_slice_check(&batch[i]->f->chunks[batch[i]->idx], lens[i], &errs[i]);
            if (rv != 0) {
                hbc_free(plains[i]);
                plains[i] = NULL;
            }
        }
        /* The batch's reads are counted once, with its first job. */
        struct repo_read_stats none = {0};
        job_done(rs, batch[i], rv, plains[i], lens[i], i == 0 ? &st : &none, &errs[i]);
    }
}

static void *worker_main(void *arg)
{
    struct restore *rs = arg;
    pthread_mutex_lock(&rs->mu);
    for (;;) {
        while (rs->head == NULL && !rs->closing) {
            pthread_cond_wait(&rs->work, &rs->mu);
        }
        if (rs->head == NULL) {
            break;
        }
        struct rjob *j = job_take(rs);
        if (j->g == NULL && job_batchable(j)) {
            /*
             * More chunks read on their own go with it, up to half of what
             * is queued (the other workers keep theirs): one round trip
             * instead of one per chunk.
             */
            struct rjob *batch[REPO_GET_BATCH_CHUNKS];
            size_t n = 0;
            batch[n++] = j;
            size_t more = rs->queued / 2;
            size_t bytes = j->f->chunks[j->idx].len;
            while (n < REPO_GET_BATCH_CHUNKS && more > 0 && rs->head != NULL &&
                   job_batchable(rs->head) &&
                   bytes + rs->head->f->chunks[rs->head->idx].len <= BATCH_MAX_BYTES) {
                bytes += rs->head->f->chunks[rs->head->idx].len;
                batch[n++] = job_take(rs);
                more--;
            }
            pthread_mutex_unlock(&rs->mu);
            if (n > 1) {
                batch_run(rs, batch, n);
                progress(rs, false);
                pthread_mutex_lock(&rs->mu);
                continue;
            }
        } else {
            pthread_mutex_unlock(&rs->mu);
        }

        if (j->g != NULL) {
            group_run(rs, j->g);
            hbc_free(j);
            progress(rs, false);
            pthread_mutex_lock(&rs->mu);
            continue;
        }
        const struct tree_chunk *c = &j->f->chunks[j->idx];
        struct err e = {0};
        uint8_t *plain = NULL;
        size_t len = 0;
        struct repo_read_stats st = {0};
        int rv;
        if (c->packed) {
            rv = slice_get(rs, c, &plain, &st, &e);
            len = c->len;
        } else {
            rv = repo_get_chunk(rs->r, c->id, rs->o->copy, &plain, &len, &st, &e);
            if (rv == 0) {
                rv = tree_slice_check(c, len, &e);
            }
        }
        job_done(rs, j, rv, plain, len, &st, &e);
        progress(rs, false);
        pthread_mutex_lock(&rs->mu);
    }
    pthread_mutex_unlock(&rs->mu);
    return NULL;
}

/* ------------------------------------------------------------------------- */
/* The tree walk (caller's thread).                                          */

static void meta_copy(struct tree_entry *dst, const struct tree_entry *src)
{
    *dst = *src;
    dst->name = NULL;
    dst->user = NULL;
    dst->group = NULL;
    dst->target = NULL;
    dst->link = NULL;
    dst->chunks = NULL;
    dst->nchunks = 0;
    dst->lists = NULL;
    dst->nlists = 0;
}

static int defer(struct restore *rs, const char *path, const char *link,
                 const struct tree_entry *meta)
{
    if (rs->ndefs == rs->defs_cap) {
        size_t ncap = rs->defs_cap == 0 ? 64 : rs->defs_cap * 2;
        struct deferred *n = hbc_realloc(rs->defs, ncap * sizeof *n);
        if (n == NULL) {
            return HBC_ENOMEM;
        }
        rs->defs = n;
        rs->defs_cap = ncap;
    }
    struct deferred *d = &rs->defs[rs->ndefs];
    memset(d, 0, sizeof *d);
    d->path = hbc_strdup(path);
    d->link = link != NULL ? hbc_strdup(link) : NULL;
    if (d->path == NULL || (link != NULL && d->link == NULL)) {
        hbc_free(d->path);
        hbc_free(d->link);
        return HBC_ENOMEM;
    }
    if (meta != NULL) {
        meta_copy(&d->meta, meta);
    }
    rs->ndefs++;
    return 0;
}

/* Queue a file's chunks (or finish an empty file at once). */
static void restore_file(struct restore *rs, const char *path, const struct tree_entry *en)
{
    if (en->nchunks == 1 && en->nlists == 0 && en->chunks[0].packed) {
        group_add(rs, path, en);
        return;
    }
    struct err e = {0};
    struct rfile *f = hbc_calloc(1, sizeof *f);
    if (f == NULL) {
        report_unlocked(rs, path, HBC_ENOMEM, "out of memory");
        return;
    }
    pthread_mutex_init(&f->mu, NULL);
    meta_copy(&f->meta, en);
    f->path = hbc_strdup(path);
    f->md = EVP_MD_CTX_new();
    int rv = 0;
    if (f->path == NULL || f->md == NULL) {
        rv = err_set(&e, HBC_ENOMEM, "file");
    } else if (EVP_DigestInit_ex(f->md, EVP_sha256(), NULL) != 1) {
        rv = err_openssl(&e, HBC_ECRYPTO, "SHA-256");
    }
    if (rv == 0) {
        struct repo_read_stats st = {0};
        rv = snap_file_chunks(rs->r, en, rs->o->copy, &st, &f->chunks, &f->n, &e);
        pthread_mutex_lock(&rs->mu);
        rs->res->shards_read += st.shards_read;
        rs->res->shard_errors += st.shard_errors;
        rs->res->chunks += en->nlists;
        pthread_mutex_unlock(&rs->mu);
    }
    if (rv == 0) {
        f->pending = hbc_calloc(f->n > 0 ? f->n : 1, sizeof *f->pending);
        if (f->pending == NULL) {
            rv = err_set(&e, HBC_ENOMEM, "file");
        }
    }
    /* Wait for a free descriptor slot before opening the temporary file. */
    pthread_mutex_lock(&rs->mu);
    while (rv == 0 && rs->open_files >= MAX_OPEN_FILES) {
        pthread_cond_wait(&rs->room, &rs->mu);
    }
    rs->open_files++;
    pthread_mutex_unlock(&rs->mu);
    if (rv == 0 && rs->fsr != NULL) {
        rv = fs_restore_file_begin(rs->fsr, path, &f->ff, &e);
    }
    if (rv != 0 || f->n == 0) {
        f->err = rv;
        f->e = e;
        rfile_finish(rs, f);
        return;
    }
    /* Once the last job is queued a worker may finish and free f: read nothing of it after. */
    size_t n = f->n;
    f->left = n;
    uint64_t off = 0;
    for (size_t i = 0; i < n; i++) {
        struct rjob *j = hbc_malloc(sizeof *j);
        if (j == NULL) {
            /* Count the chunks never queued as failed, so the file still finishes. */
            pthread_mutex_lock(&f->mu);
            if (f->err == 0) {
                f->err = err_set(&f->e, HBC_ENOMEM, "restore job");
            }
            f->left -= n - i;
            bool last = f->left == 0;
            pthread_mutex_unlock(&f->mu);
            if (last) {
                rfile_finish(rs, f);
            }
            return;
        }
        j->g = NULL;
        j->f = f;
        j->idx = i;
        j->off = off;
        j->next = NULL;
        off += f->chunks[i].len;
        size_t len = f->chunks[i].len;
        pthread_mutex_lock(&rs->mu);
        while (rs->inflight > 0 && rs->inflight + len > rs->budget) {
            pthread_cond_wait(&rs->room, &rs->mu);
        }
        rs->inflight += len;
        if (rs->tail != NULL) {
            rs->tail->next = j;
        } else {
            rs->head = j;
        }
        rs->tail = j;
        rs->queued++;
        pthread_cond_signal(&rs->work);
        pthread_mutex_unlock(&rs->mu);
    }
}

/* ------------------------------------------------------------------------- */
/* Reading directory trees ahead of the walk.                                */

/* Read the trees of batch[0..n) in one round trip (repo_get_chunks), each into its cursor. */
static void prefetch_batch(struct restore *rs, struct prefetch **batch, size_t n)
{
    uint8_t ids[REPO_GET_BATCH_CHUNKS][REPO_CHUNK_ID];
    uint8_t *plains[REPO_GET_BATCH_CHUNKS];
    size_t lens[REPO_GET_BATCH_CHUNKS];
    int results[REPO_GET_BATCH_CHUNKS];
    struct err errs[REPO_GET_BATCH_CHUNKS];
    memset(errs, 0, sizeof errs);
    for (size_t i = 0; i < n; i++) {
        memcpy(ids[i], batch[i]->id, REPO_CHUNK_ID);
    }
    /* The batch's reads are counted with its first tree. */
    repo_get_chunks(rs->r, n, (const uint8_t(*)[REPO_CHUNK_ID])ids, rs->o->copy, plains, lens,
                    results, &batch[0]->st, errs);
    for (size_t i = 0; i < n; i++) {
        struct prefetch *p = batch[i];
        p->d = NULL;
        p->rv = results[i];
        if (p->rv == 0) {
            p->rv = snap_dir_open_plain(rs->r, plains[i], lens[i], rs->o->copy, &p->st, &p->d,
                                        &errs[i]);
        } else {
            err_wrap_code(&errs[i], p->rv, "read tree");
        }
        hbc_free(plains[i]);
        p->e = errs[i];
    }
}

static void *prefetch_main(void *arg)
{
    struct restore *rs = arg;
    pthread_mutex_lock(&rs->pf_mu);
    for (;;) {
        while (rs->pf_head == NULL && !rs->pf_closing) {
            pthread_cond_wait(&rs->pf_work, &rs->pf_mu);
        }
        if (rs->pf_head == NULL) {
            break;
        }
        /* The first tree queued, and up to half of the rest (the other threads take theirs). */
        struct prefetch *batch[REPO_GET_BATCH_CHUNKS];
        size_t n = 0;
        size_t more = (rs->pf_queued - 1) / 2;
        do {
            struct prefetch *p = rs->pf_head;
            rs->pf_head = p->next;
            if (rs->pf_head == NULL) {
                rs->pf_tail = NULL;
            }
            rs->pf_queued--;
            batch[n++] = p;
        } while (n < REPO_GET_BATCH_CHUNKS && n <= more && rs->pf_head != NULL);
        pthread_mutex_unlock(&rs->pf_mu);
        /* The cursor keeps &p->st: reads of the directory's parts (by the walk, later) count
         * there too, and the walk frees p only when it closes the directory. */
        if (n == 1) {
            struct prefetch *p = batch[0];
            struct err e = {0};
            p->d = NULL;
            p->rv = snap_dir_open(rs->r, p->id, rs->o->copy, &p->st, &p->d, &e);
            p->e = e;
        } else {
            prefetch_batch(rs, batch, n);
        }
        pthread_mutex_lock(&rs->pf_mu);
        bool wake = false;
        for (size_t i = 0; i < n; i++) {
            batch[i]->done = true;
            wake = wake || batch[i]->waited;
        }
        if (wake) {
            pthread_cond_broadcast(&rs->pf_done); /* no wake-up for trees read well ahead */
        }
    }
    pthread_mutex_unlock(&rs->pf_mu);
    return NULL;
}

/* Start reading directory id ahead; NULL if enough are read ahead already (or no memory). */
static struct prefetch *prefetch_start(struct restore *rs, const uint8_t id[TREE_ID_LEN])
{
    pthread_mutex_lock(&rs->pf_mu);
    if (rs->pf_outstanding >= PREFETCH_MAX) {
        pthread_mutex_unlock(&rs->pf_mu);
        return NULL;
    }
    struct prefetch *p = hbc_calloc(1, sizeof *p);
    if (p != NULL) {
        memcpy(p->id, id, TREE_ID_LEN);
        if (rs->pf_tail != NULL) {
            rs->pf_tail->next = p;
        } else {
            rs->pf_head = p;
        }
        rs->pf_tail = p;
        rs->pf_outstanding++;
        rs->pf_queued++;
        pthread_cond_signal(&rs->pf_work);
    }
    pthread_mutex_unlock(&rs->pf_mu);
    return p;
}

/* Wait for p and take its result (*d). p stays the caller's (its st counts the directory's reads)
 * until the directory is closed. Returns its code. */
static int prefetch_take(struct restore *rs, struct prefetch *p, struct snap_dir **d, struct err *e)
{
    pthread_mutex_lock(&rs->pf_mu);
    while (!p->done) {
        p->waited = true;
        pthread_cond_wait(&rs->pf_done, &rs->pf_mu);
    }
    rs->pf_outstanding--;
    pthread_mutex_unlock(&rs->pf_mu);
    *d = p->d;
    if (p->rv != 0 && e != NULL) {
        *e = p->e;
    }
    return p->rv;
}

/* Whether path is selected by the include patterns (or lies below a selected directory). */
static bool included(const struct restore *rs, const char *path)
{
    for (size_t i = 0; i < rs->o->nincludes; i++) {
        const char *p = rs->o->includes[i];
        while (*p == '/') {
            p++;
        }
        if (fnmatch(p, path, 0) == 0) {
            return true;
        }
    }
    return false;
}

/* A subdirectory met in the walk, waiting (with its tree read ahead) to be walked. */
struct subdir {
    char *path;              /* its path */
    struct tree_entry meta;  /* its entry (pointers cleared) */
    uint8_t id[TREE_ID_LEN]; /* its head */
    bool sel;                /* selected as a whole */
    struct prefetch *pf;     /* its tree being read ahead, or NULL */
};

static bool restore_dir(struct restore *rs, const uint8_t id[TREE_ID_LEN], const char *path,
                        bool all, unsigned depth, struct prefetch *pf);

/* A directory is closed: add the reads it counted to the totals, free its prefetch (if any). */
static void dir_done(struct restore *rs, const struct repo_read_stats *st, struct prefetch *pf)
{
    pthread_mutex_lock(&rs->mu);
    rs->res->shards_read += st->shards_read;
    rs->res->shard_errors += st->shard_errors;
    pthread_mutex_unlock(&rs->mu);
    hbc_free(pf);
}

/* Walk the subdirectories in w[0..n) in order, then free them; sets *any if one had content. */
static void subdirs_walk(struct restore *rs, struct subdir *w, size_t n, unsigned depth, bool *any)
{
    for (size_t i = 0; i < n; i++) {
        bool below = restore_dir(rs, w[i].id, w[i].path, w[i].sel, depth + 1, w[i].pf);
        if (w[i].sel || below) {
            *any = true;
            pthread_mutex_lock(&rs->mu);
            rs->res->dirs++;
            pthread_mutex_unlock(&rs->mu);
            if (rs->fsr != NULL && defer(rs, w[i].path, NULL, &w[i].meta) != 0) {
                report_unlocked(rs, w[i].path, HBC_ENOMEM, "out of memory");
            }
        }
        hbc_free(w[i].path);
    }
}

/*
 * Restore the directory whose head is id at path ("" for the root); pf,
 * if not NULL, is its tree being read ahead. all: everything below is
 * selected. Subdirectories are walked in windows of DIR_WINDOW, their trees
 * read ahead by the prefetch threads while the window fills. Returns
 * whether anything was restored below (so its metadata should be set);
 * errors are reported and counted.
 */
static bool restore_dir(struct restore *rs, const uint8_t id[TREE_ID_LEN], const char *path,
                        bool all, unsigned depth, struct prefetch *pf)
{
    struct err e = {0};
    struct snap_dir *d = NULL;
    struct repo_read_stats own = {0};
    struct repo_read_stats *st = pf != NULL ? &pf->st : &own; /* the cursor counts reads here */
    bool any = false;
    int rv;
    if (pf != NULL) {
        rv = prefetch_take(rs, pf, &d, &e);
    } else {
        rv = snap_dir_open(rs->r, id, rs->o->copy, st, &d, &e);
    }
    pthread_mutex_lock(&rs->mu);
    rs->res->chunks++;
    pthread_mutex_unlock(&rs->mu);
    if (rv == 0 && depth > 1024) {
        snap_dir_close(d);
        rv = err_setraw(&e, HBC_ETOOBIG, "directories nested too deep");
    }
    if (rv != 0) {
        report_unlocked(rs, path[0] != '\0' ? path : "/", rv, e.msg);
        dir_done(rs, st, pf);
        return false;
    }
    size_t plen = strlen(path);
    char *child = hbc_malloc(TREE_MAX_PATH + 1);
    struct subdir *win = hbc_malloc(DIR_WINDOW * sizeof *win);
    if (child == NULL || win == NULL) {
        hbc_free(child);
        hbc_free(win);
        snap_dir_close(d);
        report_unlocked(rs, path, HBC_ENOMEM, "out of memory");
        dir_done(rs, st, pf);
        return false;
    }
    size_t nwin = 0;
    const struct tree_entry *en;
    while ((rv = snap_dir_next(d, &en, &e)) == 1) {
        size_t nlen = strlen(en->name);
        if (plen + 1 + nlen > TREE_MAX_PATH) {
            report_unlocked(rs, path, HBC_ETOOBIG, "a path below is too long");
            continue;
        }
        if (plen > 0) {
            memcpy(child, path, plen);
            child[plen] = '/';
            memcpy(child + plen + 1, en->name, nlen + 1);
        } else {
            memcpy(child, en->name, nlen + 1);
        }
        bool sel = all || rs->o->nincludes == 0 || included(rs, child);
        struct err ee = {0};
        int erv = 0;
        if (en->type == TREE_DIR) {
            if (sel && rs->fsr != NULL) {
                erv = fs_restore_mkdir(rs->fsr, child, &ee);
            }
            if (erv != 0) {
                report_unlocked(rs, child, erv, ee.msg);
                continue;
            }
            if (nwin == DIR_WINDOW) {
                subdirs_walk(rs, win, nwin, depth, &any);
                nwin = 0;
            }
            struct subdir *w = &win[nwin];
            w->path = hbc_strdup(child);
            if (w->path == NULL) {
                report_unlocked(rs, child, HBC_ENOMEM, "out of memory");
                continue;
            }
            meta_copy(&w->meta, en);
            memcpy(w->id, en->subtree, TREE_ID_LEN);
            w->sel = sel;
            w->pf = prefetch_start(rs, w->id);
            nwin++;
            continue;
        }
        if (!sel) {
            continue;
        }
        any = true;
        if (en->type == TREE_FILE) {
            restore_file(rs, child, en);
            progress(rs, false);
            continue;
        }
        if (rs->fsr != NULL) {
            if (en->type == TREE_SYMLINK) {
                erv = fs_restore_symlink(rs->fsr, child, en, &ee);
            } else if (en->type == TREE_HARDLINK) {
                erv = defer(rs, child, en->link, NULL);
                if (erv != 0) {
                    err_set(&ee, erv, "hard link");
                }
            } else {
                erv = fs_restore_special(rs->fsr, child, en, &ee);
            }
        }
        if (erv != 0) {
            report_unlocked(rs, child, erv, ee.msg);
        } else if (en->type != TREE_HARDLINK || rs->fsr == NULL) {
            pthread_mutex_lock(&rs->mu);
            rs->res->others++;
            pthread_mutex_unlock(&rs->mu);
        }
    }
    if (rv < 0) {
        report_unlocked(rs, path[0] != '\0' ? path : "/", rv, e.msg);
    }
    /* The directory's own parts are read; walk what waits (their prefetches must be taken). */
    subdirs_walk(rs, win, nwin, depth, &any);
    hbc_free(win);
    hbc_free(child);
    snap_dir_close(d);
    dir_done(rs, st, pf);
    return any;
}

/* ------------------------------------------------------------------------- */

static unsigned default_threads(void)
{
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    if (n < 1) {
        n = 1;
    }
    return (unsigned)(n * 2 > RESTORE_MAX_THREADS ? RESTORE_MAX_THREADS : n * 2);
}

static int find_snapshot(struct repo *r, const char *spec, uint8_t id[REPO_ID_LEN],
                         uint8_t root[TREE_ID_LEN], uint64_t *bytes, struct err *e)
{
    Hbc__SnapshotInfo **list = NULL;
    size_t n = 0;
    int rv = repo_snapshot_list(r, &list, &n, e);
    if (rv != 0) {
        return err_wrap_code(e, rv, "list snapshots");
    }
    const Hbc__SnapshotInfo *s;
    rv = snap_find(list, n, spec, &s, e);
    if (rv == 0) {
        if (s->snapshot_id.len != REPO_ID_LEN || s->root_tree_id.len != TREE_ID_LEN) {
            rv = err_set(e, HBC_EFORMAT, "snapshot record");
        } else {
            memcpy(id, s->snapshot_id.data, REPO_ID_LEN);
            memcpy(root, s->root_tree_id.data, TREE_ID_LEN);
            *bytes = s->bytes;
        }
    }
    for (size_t i = 0; i < n; i++) {
        protobuf_c_message_free_unpacked(&list[i]->base, NULL);
    }
    hbc_free(list);
    return rv;
}

int restore_run(struct repo *r, const struct restore_options *o, struct restore_result *res,
                struct err *e)
{
    memset(res, 0, sizeof *res);
    if (o->threads > RESTORE_MAX_THREADS || o->nincludes > RESTORE_MAX_INCLUDES) {
        return err_setraw(e, HBC_EINVAL, "at most %u threads and %u include patterns",
                          RESTORE_MAX_THREADS, RESTORE_MAX_INCLUDES);
    }
    if (o->copy >= 0 && (unsigned)o->copy >= repo_copies(r)) {
        return err_setraw(e, HBC_EINVAL, "copy %d: the vault has copies 0 to %u", o->copy,
                          repo_copies(r) - 1);
    }
    struct restore *rs = hbc_calloc(1, sizeof *rs);
    if (rs == NULL) {
        return err_set(e, HBC_ENOMEM, "restore");
    }
    rs->r = r;
    rs->o = o;
    rs->res = res;
    rs->t0 = now_s();
    rs->budget = o->inflight_bytes != 0 ? o->inflight_bytes : RESTORE_INFLIGHT_DEFAULT;
    pthread_mutex_init(&rs->mu, NULL);
    pthread_cond_init(&rs->work, NULL);
    pthread_cond_init(&rs->room, NULL);
    pthread_mutex_init(&rs->pf_mu, NULL);
    pthread_cond_init(&rs->pf_work, NULL);
    pthread_cond_init(&rs->pf_done, NULL);
    unsigned nthreads = o->threads != 0 ? o->threads : default_threads();
    pthread_t *threads = hbc_calloc(nthreads, sizeof *threads);
    unsigned started = 0;
    uint8_t root[TREE_ID_LEN];
    int rv = threads == NULL ? err_set(e, HBC_ENOMEM, "restore") : 0;
    if (rv == 0) {
        rv = find_snapshot(r, o->snapshot, res->snapshot_id, root, &rs->bytes_total, e);
    }
    if (rv == 0 && o->target != NULL) {
        struct fs_restore_options fo;
        fs_restore_options_default(&fo);
        fo.fsync = o->fsync;
        rv = fs_restore_open(&rs->fsr, o->target, &fo, e);
        if (rv != 0) {
            err_wrap(e, "restore target");
        }
    }
    for (; rv == 0 && started < nthreads; started++) {
        if (pthread_create(&threads[started], NULL, worker_main, rs) != 0) {
            rv = err_set(e, HBC_ENOMEM, "start restore workers");
            break;
        }
    }
    if (rv == 0) {
        rv = pack_cache_new(&rs->packs, r, o->copy, e);
    }
    pthread_t pf_threads[PREFETCH_THREADS];
    unsigned pf_started = 0;
    for (; rv == 0 && pf_started < PREFETCH_THREADS; pf_started++) {
        if (pthread_create(&pf_threads[pf_started], NULL, prefetch_main, rs) != 0) {
            break; /* fewer read ahead; the walk reads the rest itself */
        }
    }
    if (rv == 0) {
        restore_dir(rs, root, "", o->nincludes == 0, 0, NULL);
        group_dispatch(rs);
    }
    pthread_mutex_lock(&rs->pf_mu);
    rs->pf_closing = true;
    pthread_cond_broadcast(&rs->pf_work);
    pthread_mutex_unlock(&rs->pf_mu);
    for (unsigned i = 0; i < pf_started; i++) {
        pthread_join(pf_threads[i], NULL);
    }
    pthread_mutex_lock(&rs->mu);
    rs->closing = true;
    pthread_cond_broadcast(&rs->work);
    pthread_mutex_unlock(&rs->mu);
    for (unsigned i = 0; i < started; i++) {
        pthread_join(threads[i], NULL);
    }
    /* Every file is in: hard links, then directory metadata, deepest first. */
    for (size_t i = 0; i < rs->ndefs; i++) {
        struct deferred *d = &rs->defs[i];
        struct err de = {0};
        int drv;
        if (d->link != NULL) {
            drv = fs_restore_hardlink(rs->fsr, d->path, d->link, &de);
            if (drv == 0) {
                res->others++;
            }
        } else {
            drv = fs_restore_dir_meta(rs->fsr, d->path, &d->meta, &de);
        }
        if (drv != 0) {
            report(rs, d->path, drv, de.msg);
        }
        hbc_free(d->path);
        hbc_free(d->link);
    }
    if (rs->fsr != NULL) {
        struct err se = {0};
        int srv = fs_restore_sync(rs->fsr, &se);
        if (srv != 0) {
            report(rs, "/", srv, se.msg);
        }
    }
    res->seconds = now_s() - rs->t0;
    if (rv == 0) {
        progress(rs, true);
    }
    if (rv == 0 && o->target == NULL && o->record) {
        Hbc__RestoreTestRecord t = HBC__RESTORE_TEST_RECORD__INIT;
        char copy[16] = "";
        if (o->copy >= 0) {
            snprintf(copy, sizeof copy, "%d", o->copy);
        }
        t.snapshot_id.data = res->snapshot_id;
        t.snapshot_id.len = REPO_ID_LEN;
        t.copy = copy;
        t.chunks = res->chunks;
        t.bytes = res->chunk_bytes;
        t.errors = res->errors;
        t.duration_ms = (uint64_t)(res->seconds * 1000);
        t.result = res->errors == 0 ? HBC__RESTORE_TEST_RESULT__RESTORE_TEST_PASSED
                                    : HBC__RESTORE_TEST_RESULT__RESTORE_TEST_FAILED;
        rv = repo_restore_test_record(r, &t, e);
        if (rv != 0) {
            err_wrap(e, "record the restore test");
        } else {
            res->recorded = true;
        }
    }
    if (rv == 0 && res->errors > 0) {
        rv = err_setraw(e, HBC_EPARTIAL, "%llu entries failed", (unsigned long long)res->errors);
    }
    fs_restore_close(rs->fsr);
    pack_cache_free(rs->packs);
    group_free(rs->group);
    hbc_free(rs->defs);
    hbc_free(threads);
    pthread_cond_destroy(&rs->pf_done);
    pthread_cond_destroy(&rs->pf_work);
    pthread_mutex_destroy(&rs->pf_mu);
    pthread_cond_destroy(&rs->room);
    pthread_cond_destroy(&rs->work);
    pthread_mutex_destroy(&rs->mu);
    hbc_free(rs);
    return rv;
}
