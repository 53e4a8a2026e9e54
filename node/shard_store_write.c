/*
 * The shard store's writes: group-committed puts, deletes and compaction.
 *
 * Happy path of every write: append records to the open segment (rolling to
 * a new segment file when the next record would not fit), fdatasync each
 * segment touched once, fsync segments/ if a file was created, then one
 * synced RocksDB batch with the index entries, segment metadata and totals;
 * only then is the in-memory state updated and success returned.
 *
 * Puts are pipelined in two stages: the append stage (append_mu: filter
 * against the index, append) and the sync stage (sync_mu: fdatasync, index
 * batch, publish). A put takes sync_mu before it lets append_mu go, so the
 * next put appends while this one syncs and syncs run in append order; a
 * segment's write descriptor stays open while a put in flight has appended
 * to it (segment.pins). A put that would write a key the syncing put writes
 * waits for that put's outcome first, so a key is never indexed twice.
 *
 * Failure modes: an append or sync error means nothing of that call was
 * indexed: the segments are cut back to where the call started (new files
 * removed) and a segment whose sync failed is no longer appended to. When a
 * put's sync fails, the next put may already have appended behind it in the
 * same segment; the cut is then left to the next writer that holds both
 * locks (store->failed): that put cuts its own appends and the failed ones
 * back and appends again, to a new segment, before its own sync, so only the
 * failed put's records fail. An index write error leaves it unknown whether
 * RocksDB kept the batch, so nothing is cut (the data is synced and the index
 * may point at it): the store refuses writes (store->broken) and the next
 * open sorts it out.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/uio.h>
#include <unistd.h>

#include "common/alloc.h"
#include "common/log.h"
#include "node/shard_store.h"
#include "node/shard_store_internal.h"

/* iovecs gathered before one pwritev. */
#define APPEND_IOV 256
/* Records moved per synced index batch by compaction. */
#define COMPACT_ROUND_RECORDS 1024u

/* A segment written by the current writer call. */
struct touched {
    struct segment *seg;  /* the segment (pinned while the call is in flight), NULL once removed */
    uint64_t start;       /* its wpos when the call began */
    uint64_t end;         /* its wpos after the call's last record */
    uint64_t add_bytes;   /* record bytes appended by the call */
    uint64_t add_records; /* records appended by the call */
    bool created;         /* the call created its file */
};

/* Appends records for one writer call; see the file comment. */
struct appender {
    struct shard_store *s;        /* the store */
    struct touched *t;            /* segments written, in order; the last is s->open */
    size_t nt;                    /* entries in t */
    size_t cap;                   /* allocated entries in t */
    struct iovec iov[APPEND_IOV]; /* writes gathered for s->open, not yet issued */
    int niov;                     /* entries in iov */
    uint64_t iov_off;             /* file offset of iov[0] */
    bool created;                 /* a segment file was created */
    bool sync_failed;             /* an fdatasync failed: stop appending to those segments */
};

void shard_store_set_fdatasync(struct shard_store *s, store_fdatasync_fn fn, void *arg)
{
    s->fdatasync_fn = fn;
    s->fdatasync_arg = arg;
}

static int pwritev_all(int fd, struct iovec *iov, int n, uint64_t off)
{
    while (n > 0) {
        ssize_t w = pwritev(fd, iov, n > IOV_MAX ? IOV_MAX : n, (off_t)off);
        if (w < 0 && errno == EINTR) {
            continue;
        }
        if (w < 0) {
            return -errno;
        }
        off += (uint64_t)w;
        size_t adv = (size_t)w;
        while (n > 0 && adv >= iov->iov_len) {
            adv -= iov->iov_len;
            iov++;
            n--;
        }
        if (n > 0) {
            iov->iov_base = (uint8_t *)iov->iov_base + adv;
            iov->iov_len -= adv;
        }
    }
    return 0;
}

static int appender_flush(struct appender *a, struct err *e)
{
    if (a->niov == 0) {
        return 0;
    }
    struct segment *seg = a->s->open;
    int rc = pwritev_all(seg->wfd, a->iov, a->niov, a->iov_off);
    a->niov = 0;
    return rc != 0 ? err_set(e, rc, "segment %" PRIu64 ": write", seg->number) : 0;
}

/* Note that the call writes seg, pinning its write descriptor until appender_release. */
static int appender_touch(struct appender *a, struct segment *seg, bool created)
{
    if (a->nt == a->cap) {
        size_t cap = a->cap == 0 ? 4 : a->cap * 2;
        struct touched *t = hbc_realloc(a->t, cap * sizeof *t);
        if (t == NULL) {
            return HBC_ENOMEM;
        }
        a->t = t;
        a->cap = cap;
    }
    pthread_rwlock_wrlock(&a->s->seg_lock);
    seg->pins++;
    pthread_rwlock_unlock(&a->s->seg_lock);
    a->t[a->nt++] =
        (struct touched){.seg = seg, .start = seg->wpos, .end = seg->wpos, .created = created};
    return 0;
}

/* Close the open segment for appends and start a new segment file. */
static int appender_roll(struct appender *a, struct err *e)
{
    struct shard_store *s = a->s;
    int rc = appender_flush(a, e);
    if (rc != 0) {
        return rc;
    }
    struct segment *seg = store_segment_new(s->next_number);
    if (seg == NULL || appender_touch(a, seg, true) != 0) {
        hbc_free(seg);
        return err_set(e, HBC_ENOMEM, "new segment");
    }
    char name[32];
    snprintf(name, sizeof name, SHARD_STORE_SEGMENT_NAME_FMT, seg->number);
    seg->wfd = openat(s->seg_dirfd, name, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (seg->wfd < 0) {
        rc = err_set(e, -errno, "segment %" PRIu64 ": create", seg->number);
        a->nt--;
        hbc_free(seg);
        return rc;
    }
    s->next_number++;
    a->created = true;
    struct segment *old = s->open;
    pthread_rwlock_wrlock(&s->seg_lock);
    rc = store_segment_insert(s, seg);
    if (rc == 0) {
        s->open = seg;
        /* A segment a call in flight appended to keeps its descriptor until that call's sync. */
        if (old != NULL && old->pins == 0 && old->wfd >= 0) {
            close(old->wfd);
            old->wfd = -1;
        }
    }
    pthread_rwlock_unlock(&s->seg_lock);
    if (rc != 0) {
        a->nt--;
        close(seg->wfd);
        unlinkat(s->seg_dirfd, name, 0);
        hbc_free(seg);
        return err_set(e, rc, "segment table");
    }
    return 0;
}

/*
 * Queue one record (hdr, then len bytes of data; both must stay valid until
 * appender_flush) and say where it goes.
 */
static int appender_add(struct appender *a, const uint8_t *hdr, const void *data, uint32_t len,
                        uint64_t *segment, uint64_t *offset, struct err *e)
{
    struct shard_store *s = a->s;
    uint64_t rec = store_record_size(len);
    struct segment *o = s->open;
    int rc;
    /* A record bigger than a segment goes alone into a fresh one. */
    if (o == NULL || (o->wpos > 0 && o->wpos + rec > s->opts.segment_size)) {
        rc = appender_roll(a, e);
        if (rc != 0) {
            return rc;
        }
        o = s->open;
    } else if (a->nt == 0 || a->t[a->nt - 1].seg != o) {
        if (appender_touch(a, o, false) != 0) {
            return err_set(e, HBC_ENOMEM, "append");
        }
    }
    if (a->niov + 2 > APPEND_IOV) {
        rc = appender_flush(a, e);
        if (rc != 0) {
            return rc;
        }
    }
    if (a->niov == 0) {
        a->iov_off = o->wpos;
    }
    a->iov[a->niov++] = (struct iovec){(void *)hdr, SHARD_STORE_RECORD_HEADER_LEN};
    if (len > 0) {
        a->iov[a->niov++] = (struct iovec){(void *)data, len};
    }
    *segment = o->number;
    *offset = o->wpos;
    o->wpos += rec;
    a->t[a->nt - 1].end = o->wpos;
    a->t[a->nt - 1].add_bytes += rec;
    a->t[a->nt - 1].add_records++;
    return 0;
}

/* fdatasync every segment the call wrote, and fsync the directory if it created a file. */
static int appender_sync(struct appender *a, struct err *e)
{
    struct shard_store *s = a->s;
    int rc = 0;
    for (size_t i = 0; rc == 0 && i < a->nt; i++) {
        struct segment *seg = a->t[i].seg;
        if (a->t[i].add_records == 0) {
            continue;
        }
        atomic_fetch_add_explicit(&s->fdatasyncs, 1, memory_order_relaxed);
        int r = s->fdatasync_fn != NULL ? s->fdatasync_fn(seg->wfd, s->fdatasync_arg)
                                        : fdatasync(seg->wfd);
        if (r != 0) {
            a->sync_failed = true;
            rc = err_set(e, -errno, "segment %" PRIu64 ": fdatasync", seg->number);
        }
    }
    if (rc == 0 && a->created) {
        atomic_fetch_add_explicit(&s->dir_fsyncs, 1, memory_order_relaxed);
        if (fsync(s->seg_dirfd) != 0) {
            a->sync_failed = true;
            rc = err_set(e, -errno, "segments directory: fsync");
        }
    }
    /* The synced pages are clean: drop them (see shard_store_put_batch); advice, never fatal. */
    for (size_t i = 0; rc == 0 && !s->opts.cache_written && i < a->nt; i++) {
        const struct touched *t = &a->t[i];
        if (t->end > t->start) {
            (void)posix_fadvise(t->seg->wfd, (off_t)t->start, (off_t)(t->end - t->start),
                                POSIX_FADV_DONTNEED);
        }
    }
    return rc;
}

/* Issue what is gathered and sync it (a writer call that holds both locks). */
static int appender_finish(struct appender *a, struct err *e)
{
    int rc = appender_flush(a, e);
    return rc != 0 ? rc : appender_sync(a, e);
}

/*
 * Unpin the touched segments, closing the write descriptors of those no
 * longer open for appends that no other call in flight appended to.
 */
static void appender_release(struct appender *a)
{
    struct shard_store *s = a->s;
    pthread_rwlock_wrlock(&s->seg_lock);
    for (size_t i = 0; i < a->nt; i++) {
        struct segment *seg = a->t[i].seg;
        if (seg == NULL) {
            continue;
        }
        seg->pins--;
        if (seg->pins == 0 && seg != s->open && seg->wfd >= 0) {
            close(seg->wfd);
            seg->wfd = -1;
        }
    }
    pthread_rwlock_unlock(&s->seg_lock);
    hbc_free(a->t);
    a->t = NULL;
    a->nt = a->cap = 0;
}

/*
 * Nothing of the call was indexed: cut the touched segments back (with
 * anything appended behind the call) and drop the files it created. The
 * caller holds append_mu, and sync_mu too if a later call may have appended.
 */
static void appender_abort(struct appender *a)
{
    struct shard_store *s = a->s;
    a->niov = 0;
    pthread_rwlock_wrlock(&s->seg_lock);
    for (size_t i = a->nt; i-- > 0;) {
        struct touched *t = &a->t[i];
        struct segment *seg = t->seg;
        if (t->created) {
            char name[32];
            snprintf(name, sizeof name, SHARD_STORE_SEGMENT_NAME_FMT, seg->number);
            unlinkat(s->seg_dirfd, name, 0);
            store_segment_remove(s, seg);
            t->seg = NULL;
            continue;
        }
        if (ftruncate(seg->wfd, (off_t)t->start) != 0) {
            hbc_log(LOG_WARN, "event=store_cut_failed segment=%" PRIu64 " errno=%d", seg->number,
                    errno);
        }
        seg->wpos = t->start;
        /* After a failed fdatasync the page cache cannot be trusted: append elsewhere. */
        if (a->sync_failed && seg == s->open) {
            s->open = NULL;
        }
    }
    pthread_rwlock_unlock(&s->seg_lock);
    appender_release(a);
}

/* The index write failed and may or may not have happened: keep everything (writes are refused). */
static void appender_uncertain(struct appender *a)
{
    struct shard_store *s = a->s;
    pthread_rwlock_wrlock(&s->seg_lock);
    for (size_t i = 0; i < a->nt; i++) {
        struct segment *seg = a->t[i].seg;
        seg->disk_size = seg->disk_size > a->t[i].end ? seg->disk_size : a->t[i].end;
    }
    pthread_rwlock_unlock(&s->seg_lock);
    appender_release(a);
}

/* Add the touched segments' new metadata to wb. */
static void appender_batch_meta(struct appender *a, rocksdb_writebatch_t *wb)
{
    for (size_t i = 0; i < a->nt; i++) {
        const struct touched *t = &a->t[i];
        store_batch_segmeta(a->s, wb, t->seg->number, t->end, t->seg->live_bytes + t->add_bytes,
                            t->seg->live_records + t->add_records);
    }
}

/* The index has the call's records: publish them. Caller holds seg_lock for writing. */
static void appender_commit_locked(struct appender *a)
{
    for (size_t i = 0; i < a->nt; i++) {
        struct touched *t = &a->t[i];
        t->seg->hwm = t->end;
        t->seg->disk_size = t->seg->disk_size > t->end ? t->seg->disk_size : t->end;
        t->seg->live_bytes += t->add_bytes;
        t->seg->live_records += t->add_records;
        a->s->shard_count += t->add_records;
        a->s->used_bytes += t->add_bytes;
    }
}

static uint64_t appender_records(const struct appender *a)
{
    uint64_t n = 0;
    for (size_t i = 0; i < a->nt; i++) {
        n += a->t[i].add_records;
    }
    return n;
}

/* Cut back the appends of a put whose sync failed (see the file comment). Caller holds both locks.
 */
static void pipeline_cut_failed(struct shard_store *s)
{
    struct appender *f = s->failed;
    if (f != NULL) {
        s->failed = NULL;
        appender_abort(f);
        hbc_free(f);
    }
}

void store_pipeline_free(struct shard_store *s)
{
    if (s->failed != NULL) {
        hbc_free(s->failed->t);
        hbc_free(s->failed);
        s->failed = NULL;
    }
}

void store_writer_lock(struct shard_store *s)
{
    pthread_mutex_lock(&s->append_mu);
    pthread_mutex_lock(&s->sync_mu);
    pipeline_cut_failed(s);
}

void store_writer_unlock(struct shard_store *s)
{
    pthread_mutex_unlock(&s->sync_mu);
    pthread_mutex_unlock(&s->append_mu);
}

/* Writer calls are refused after an index write failed (see store_write_sync). */
static int check_writable(struct shard_store *s, struct err *e)
{
    if (s->broken) {
        return err_set(e, HBC_ESTORE, "an index write failed earlier; reopen the store");
    }
    return 0;
}

/* ---- put ---------------------------------------------------------------- */

/* Per-record state of a put batch. */
struct put_work {
    uint8_t key[SHARD_STORE_KEY_LEN];           /* encoded key */
    uint8_t hdr[SHARD_STORE_RECORD_HEADER_LEN]; /* record header */
    uint8_t sha[SHARD_STORE_SHA256_LEN];        /* SHA-256 of the data */
    uint64_t segment;                           /* where it was appended */
    uint64_t offset;                            /* record offset there */
    bool write;                                 /* to be appended and indexed */
};

/* Order of put records: by key, then by position, so the first of equal keys leads. */
static int cmp_put(const void *a, const void *b, void *arg)
{
    const struct put_work *w = arg;
    size_t i = *(const size_t *)a;
    size_t j = *(const size_t *)b;
    int c = memcmp(w[i].key, w[j].key, SHARD_STORE_KEY_LEN);
    return c != 0 ? c : (i > j) - (i < j);
}

/* Mark keys already indexed, or repeated within the batch, as not to be written. */
static int put_filter(struct shard_store *s, struct put_work *w, size_t n, int *results,
                      struct err *e)
{
    const char **keys = hbc_calloc(n, sizeof *keys);
    size_t *klens = hbc_calloc(n, sizeof *klens);
    char **vals = hbc_calloc(n, sizeof *vals);
    size_t *vlens = hbc_calloc(n, sizeof *vlens);
    char **errs = hbc_calloc(n, sizeof *errs);
    const rocksdb_column_family_handle_t **cfs = hbc_calloc(n, sizeof *cfs);
    size_t *order = hbc_calloc(n, sizeof *order);
    int rc = 0;
    if (keys == NULL || klens == NULL || vals == NULL || vlens == NULL || errs == NULL ||
        cfs == NULL || order == NULL) {
        rc = err_set(e, HBC_ENOMEM, "put batch of %zu", n);
        goto done;
    }
    for (size_t i = 0; i < n; i++) {
        keys[i] = (const char *)w[i].key;
        klens[i] = SHARD_STORE_KEY_LEN;
        cfs[i] = s->cf[CF_SHARDS];
        order[i] = i;
    }
    rocksdb_multi_get_cf(s->db, s->ro, cfs, n, keys, klens, vals, vlens, errs);
    for (size_t i = 0; i < n; i++) {
        if (errs[i] != NULL) {
            if (rc == 0) {
                rc = store_rocks_error(e, errs[i], "index: get");
            } else {
                rocksdb_free(errs[i]);
            }
            continue;
        }
        if (vals[i] == NULL || !w[i].write) {
            continue;
        }
        struct record_loc loc;
        if (store_loc_decode(vals[i], vlens[i], &loc, NULL) != 0) {
            /* An unreadable entry is kept rather than overwritten: report a conflict. */
            results[i] = HBC_EEXIST;
        } else {
            bool same = memcmp(loc.sha256, w[i].sha, SHARD_STORE_SHA256_LEN) == 0;
            results[i] = same ? SHARD_STORE_ALREADY : HBC_EEXIST;
        }
        w[i].write = false;
    }
    if (rc != 0) {
        goto done;
    }
    /* The same key twice in one batch: the first occurrence wins. */
    size_t m = 0;
    for (size_t i = 0; i < n; i++) {
        if (w[i].write) {
            order[m++] = i;
        }
    }
    qsort_r(order, m, sizeof *order, cmp_put, w);
    for (size_t i = 1, first = order[0]; i < m; i++) {
        size_t cur = order[i];
        if (memcmp(w[first].key, w[cur].key, SHARD_STORE_KEY_LEN) != 0) {
            first = cur;
            continue;
        }
        bool same = memcmp(w[first].sha, w[cur].sha, SHARD_STORE_SHA256_LEN) == 0;
        results[cur] = same ? SHARD_STORE_ALREADY : HBC_EEXIST;
        w[cur].write = false;
    }
done:
    if (vals != NULL) {
        for (size_t i = 0; i < n; i++) {
            rocksdb_free(vals[i]);
        }
    }
    hbc_free(keys);
    hbc_free(klens);
    hbc_free(vals);
    hbc_free(vlens);
    hbc_free(errs);
    hbc_free(cfs);
    hbc_free(order);
    return rc;
}

static void put_fail_results(const struct put_work *w, size_t n, int *results, int rc)
{
    for (size_t i = 0; i < n; i++) {
        if (w[i].write) {
            results[i] = rc;
        }
    }
}

/* Order of encoded keys, for bsearch. */
static int cmp_key(const void *a, const void *b)
{
    return memcmp(a, b, SHARD_STORE_KEY_LEN);
}

/* The keys of the records w still writes, sorted, into *keys (free with hbc_free; NULL if none). */
static int put_keys(const struct put_work *w, size_t n, uint8_t (**keys)[SHARD_STORE_KEY_LEN],
                    size_t *nk, struct err *e)
{
    *keys = NULL;
    *nk = 0;
    size_t m = 0;
    for (size_t i = 0; i < n; i++) {
        m += w[i].write;
    }
    if (m == 0) {
        return 0;
    }
    uint8_t(*k)[SHARD_STORE_KEY_LEN] = hbc_calloc(m, sizeof *k);
    if (k == NULL) {
        return err_set(e, HBC_ENOMEM, "put batch of %zu records", n);
    }
    for (size_t i = 0, j = 0; i < n; i++) {
        if (w[i].write) {
            memcpy(k[j++], w[i].key, SHARD_STORE_KEY_LEN);
        }
    }
    qsort(k, m, sizeof *k, cmp_key);
    *keys = k;
    *nk = m;
    return 0;
}

/* Whether the put in the sync stage writes any of keys (sorted). */
static bool put_overlaps_syncing(struct shard_store *s, const uint8_t (*keys)[SHARD_STORE_KEY_LEN],
                                 size_t nk)
{
    bool hit = false;
    pthread_mutex_lock(&s->pending_mu);
    for (size_t i = 0; !hit && i < nk && s->nsyncing > 0; i++) {
        hit = bsearch(keys[i], s->syncing_keys, s->nsyncing, SHARD_STORE_KEY_LEN, cmp_key) != NULL;
    }
    pthread_mutex_unlock(&s->pending_mu);
    return hit;
}

static void set_syncing(struct shard_store *s, const uint8_t (*keys)[SHARD_STORE_KEY_LEN],
                        size_t nk)
{
    pthread_mutex_lock(&s->pending_mu);
    s->syncing_keys = keys;
    s->nsyncing = nk;
    pthread_mutex_unlock(&s->pending_mu);
}

/* Append every record w still writes. Caller holds append_mu. */
static int put_append(struct appender *a, struct put_work *w, const struct shard_put *recs,
                      size_t n, struct err *e)
{
    int rc = 0;
    for (size_t i = 0; rc == 0 && i < n; i++) {
        if (w[i].write) {
            rc = appender_add(a, w[i].hdr, recs[i].data, (uint32_t)recs[i].len, &w[i].segment,
                              &w[i].offset, e);
        }
    }
    return rc != 0 ? rc : appender_flush(a, e);
}

/*
 * The append stage of a put (append_mu held): keep only records to write,
 * waiting for the syncing put when it writes one of the same keys, then
 * append them. On 0, *keys holds the sorted keys written (NULL: nothing to
 * write) and a the appends; on error nothing is appended.
 */
static int put_append_stage(struct shard_store *s, struct appender *a, struct put_work *w,
                            const struct shard_put *recs, size_t n, int *results,
                            uint8_t (**keys)[SHARD_STORE_KEY_LEN], size_t *nk, struct err *e)
{
    int rc = check_writable(s, e);
    if (rc == 0) {
        rc = put_keys(w, n, keys, nk, e);
    }
    /* Before the index is read: a key the syncing put writes is indexed before it leaves. */
    if (rc == 0 && put_overlaps_syncing(s, *keys, *nk)) {
        pthread_mutex_lock(&s->sync_mu);
        pthread_mutex_unlock(&s->sync_mu);
    }
    hbc_free(*keys);
    *keys = NULL;
    if (rc == 0) {
        rc = put_filter(s, w, n, results, e);
    }
    if (rc == 0) {
        rc = put_keys(w, n, keys, nk, e);
    }
    if (rc == 0 && *nk > 0) {
        rc = put_append(a, w, recs, n, e);
        if (rc != 0) {
            appender_abort(a);
        }
    }
    if (rc != 0) {
        hbc_free(*keys);
        *keys = NULL;
    }
    return rc;
}

/* Index the put's records in one synced batch. Caller holds sync_mu. */
static int put_index(struct shard_store *s, struct appender *a, const struct put_work *w,
                     const struct shard_put *recs, size_t n, struct err *e)
{
    rocksdb_writebatch_t *wb = rocksdb_writebatch_create();
    if (wb == NULL) {
        return err_set(e, HBC_ENOMEM, "index batch");
    }
    uint64_t now = store_now_ms();
    for (size_t i = 0; i < n; i++) {
        if (!w[i].write) {
            continue;
        }
        struct record_loc loc = {.segment = w[i].segment,
                                 .offset = w[i].offset,
                                 .length = (uint32_t)recs[i].len,
                                 .stored_at_ms = now};
        memcpy(loc.sha256, w[i].sha, sizeof loc.sha256);
        uint8_t v[LOC_LEN];
        store_loc_encode(&loc, v);
        rocksdb_writebatch_put_cf(wb, s->cf[CF_SHARDS], (const char *)w[i].key, SHARD_STORE_KEY_LEN,
                                  (const char *)v, sizeof v);
        uint8_t bk[BYSEG_KEY_LEN];
        uint8_t bv[BYSEG_VALUE_LEN];
        store_byseg_key(loc.segment, loc.offset, bk);
        memcpy(bv, w[i].key, SHARD_STORE_KEY_LEN);
        store_put_be32(bv + SHARD_STORE_KEY_LEN, (uint32_t)store_record_size(loc.length));
        rocksdb_writebatch_put_cf(wb, s->cf[CF_BY_SEGMENT], (const char *)bk, sizeof bk,
                                  (const char *)bv, sizeof bv);
    }
    appender_batch_meta(a, wb);
    uint64_t add_records = appender_records(a);
    uint64_t add_bytes = 0;
    for (size_t i = 0; i < a->nt; i++) {
        add_bytes += a->t[i].add_bytes;
    }
    store_batch_totals(s, wb, s->shard_count + add_records, s->used_bytes + add_bytes);
    int rc = store_write_sync(s, wb, e);
    rocksdb_writebatch_destroy(wb);
    return rc;
}

int shard_store_put_batch(struct shard_store *s, const struct shard_put *recs, size_t n,
                          int *results, struct err *e)
{
    if (n > SHARD_STORE_MAX_BATCH || (n > 0 && (recs == NULL || results == NULL))) {
        return err_set(e, HBC_EINVAL, "put batch of %zu records", n);
    }
    if (n == 0) {
        return 0;
    }
    struct put_work *w = hbc_calloc(n, sizeof *w);
    struct appender *a = hbc_calloc(1, sizeof *a);
    if (w == NULL || a == NULL) {
        hbc_free(w);
        hbc_free(a);
        for (size_t i = 0; i < n; i++) {
            results[i] = HBC_ENOMEM;
        }
        return err_set(e, HBC_ENOMEM, "put batch of %zu records", n);
    }
    a->s = s;
    /* Hash outside the writer locks. */
    int rc = 0;
    size_t to_write = 0;
    for (size_t i = 0; i < n; i++) {
        results[i] = 0;
        if (recs[i].len > s->opts.max_shard_size || (recs[i].len > 0 && recs[i].data == NULL)) {
            results[i] = recs[i].len > s->opts.max_shard_size ? HBC_ETOOBIG : HBC_EINVAL;
            continue;
        }
        store_key_encode(&recs[i].key, w[i].key);
        if (recs[i].sha256 != NULL) {
            memcpy(w[i].sha, recs[i].sha256, SHARD_STORE_SHA256_LEN);
        } else {
            rc = store_sha256(s, recs[i].len > 0 ? recs[i].data : "", recs[i].len, w[i].sha, e);
            if (rc != 0) {
                break;
            }
        }
        store_record_header(w[i].key, (uint32_t)recs[i].len, w[i].sha, w[i].hdr);
        w[i].write = true;
        to_write++;
    }
    if (rc != 0 || to_write == 0) {
        goto out;
    }

    /* Append stage. */
    uint8_t(*keys)[SHARD_STORE_KEY_LEN] = NULL;
    size_t nk = 0;
    pthread_mutex_lock(&s->append_mu);
    rc = put_append_stage(s, a, w, recs, n, results, &keys, &nk, e);
    if (rc != 0 || nk == 0) {
        pthread_mutex_unlock(&s->append_mu);
        goto out;
    }
    /* Into the sync stage, in append order; the next put may append once this one is in. */
    if (pthread_mutex_trylock(&s->sync_mu) != 0) {
        atomic_fetch_add_explicit(&s->pipelined_puts, 1, memory_order_relaxed);
        pthread_mutex_lock(&s->sync_mu);
    }
    if (s->failed != NULL) {
        /* The put before this one failed its sync after this one appended behind it. */
        appender_abort(a);
        pipeline_cut_failed(s);
        atomic_fetch_add_explicit(&s->reappended_puts, 1, memory_order_relaxed);
        *a = (struct appender){.s = s};
        rc = put_append(a, w, recs, n, e);
        if (rc != 0) {
            appender_abort(a);
            pthread_mutex_unlock(&s->sync_mu);
            pthread_mutex_unlock(&s->append_mu);
            hbc_free(keys);
            goto out;
        }
    }
    set_syncing(s, (const uint8_t(*)[SHARD_STORE_KEY_LEN])keys, nk);
    pthread_mutex_unlock(&s->append_mu);

    /* Sync stage. */
    rc = check_writable(s, e); /* the put before this one may have failed its index write */
    if (rc == 0) {
        rc = appender_sync(a, e);
        if (rc != 0) {
            /* A put may be appending behind this one: the next writer holding both locks cuts. */
            s->failed = a;
            a = NULL;
        }
    }
    if (rc == 0) {
        rc = put_index(s, a, w, recs, n, e);
        if (rc != 0) {
            appender_uncertain(a);
        }
    }
    if (rc == 0) {
        pthread_rwlock_wrlock(&s->seg_lock);
        appender_commit_locked(a);
        pthread_rwlock_unlock(&s->seg_lock);
        atomic_fetch_add_explicit(&s->put_batches, 1, memory_order_relaxed);
        atomic_fetch_add_explicit(&s->records_written, appender_records(a), memory_order_relaxed);
        appender_release(a);
    } else if (a != NULL && a->t != NULL) {
        /* Refused before its sync (an earlier index write failed): an unindexed tail. */
        appender_release(a);
    }
    set_syncing(s, NULL, 0);
    pthread_mutex_unlock(&s->sync_mu);
    hbc_free(keys);

out:
    hbc_free(a);
    if (rc != 0) {
        put_fail_results(w, n, results, rc);
        hbc_free(w);
        return err_wrap_code(e, rc, "put batch");
    }
    hbc_free(w);
    return 0;
}

/* ---- delete ------------------------------------------------------------- */

/* Bytes and records a call takes away from one segment. */
struct seg_delta {
    struct segment *seg; /* the segment */
    uint64_t bytes;      /* record bytes removed */
    uint64_t records;    /* records removed */
};

static struct seg_delta *delta_for(struct seg_delta *d, size_t *nd, struct segment *seg)
{
    /* Keys deleted together mostly share a segment: try the latest first. */
    if (*nd > 0 && d[*nd - 1].seg == seg) {
        return &d[*nd - 1];
    }
    for (size_t i = 0; i < *nd; i++) {
        if (d[i].seg == seg) {
            return &d[i];
        }
    }
    d[*nd] = (struct seg_delta){.seg = seg};
    return &d[(*nd)++];
}

/* Order of encoded keys (arg: the key array), then by position. */
static int cmp_keys(const void *a, const void *b, void *arg)
{
    const uint8_t(*k)[SHARD_STORE_KEY_LEN] = arg;
    size_t i = *(const size_t *)a;
    size_t j = *(const size_t *)b;
    int c = memcmp(k[i], k[j], SHARD_STORE_KEY_LEN);
    return c != 0 ? c : (i > j) - (i < j);
}

/* Remove key's index entries into wb; its bytes leave seg's live count. */
static void batch_unindex(struct shard_store *s, rocksdb_writebatch_t *wb,
                          const uint8_t key[SHARD_STORE_KEY_LEN], const struct record_loc *loc)
{
    uint8_t bk[BYSEG_KEY_LEN];
    store_byseg_key(loc->segment, loc->offset, bk);
    rocksdb_writebatch_delete_cf(wb, s->cf[CF_SHARDS], (const char *)key, SHARD_STORE_KEY_LEN);
    rocksdb_writebatch_delete_cf(wb, s->cf[CF_BY_SEGMENT], (const char *)bk, sizeof bk);
}

int shard_store_delete(struct shard_store *s, const struct shard_key *keys, size_t n, int *results,
                       struct err *e)
{
    if (n > SHARD_STORE_MAX_BATCH || (n > 0 && (keys == NULL || results == NULL))) {
        return err_set(e, HBC_EINVAL, "delete %zu keys", n);
    }
    if (n == 0) {
        return 0;
    }
    uint8_t(*k)[SHARD_STORE_KEY_LEN] = hbc_calloc(n, sizeof *k);
    size_t *order = hbc_calloc(n, sizeof *order);
    size_t *first = hbc_calloc(n, sizeof *first);
    struct seg_delta *d = hbc_calloc(n, sizeof *d);
    rocksdb_writebatch_t *wb = rocksdb_writebatch_create();
    size_t nd = 0;
    uint64_t del_records = 0;
    uint64_t del_bytes = 0;
    int rc = 0;
    if (k == NULL || order == NULL || first == NULL || d == NULL || wb == NULL) {
        rc = err_set(e, HBC_ENOMEM, "delete %zu keys", n);
        goto out;
    }
    /* first[i]: the earliest position holding the same key as position i. */
    for (size_t i = 0; i < n; i++) {
        store_key_encode(&keys[i], k[i]);
        order[i] = i;
    }
    qsort_r(order, n, sizeof *order, cmp_keys, k);
    for (size_t i = 0; i < n; i++) {
        bool same = i > 0 && memcmp(k[order[i]], k[order[i - 1]], SHARD_STORE_KEY_LEN) == 0;
        first[order[i]] = same ? first[order[i - 1]] : order[i];
    }
    store_writer_lock(s);
    rc = check_writable(s, e);
    for (size_t i = 0; rc == 0 && i < n; i++) {
        if (first[i] != i) {
            results[i] = results[first[i]];
            continue;
        }
        results[i] = HBC_ENOTFOUND;
        struct record_loc loc;
        int r = store_locate(s, k[i], &loc, e);
        if (r == HBC_ENOTFOUND) {
            continue;
        }
        if (r != 0) {
            rc = r;
            break;
        }
        /* No reader changes the table, and the writer is us: no lock needed to look. */
        struct segment *seg = store_segment_find(s, loc.segment);
        batch_unindex(s, wb, k[i], &loc);
        uint64_t rec = store_record_size(loc.length);
        if (seg != NULL) {
            struct seg_delta *sd = delta_for(d, &nd, seg);
            sd->bytes += rec;
            sd->records++;
        }
        del_records++;
        del_bytes += rec;
        results[i] = 0;
    }
    if (rc == 0 && del_records > 0) {
        for (size_t i = 0; i < nd; i++) {
            struct segment *seg = d[i].seg;
            store_batch_segmeta(s, wb, seg->number, seg->hwm, seg->live_bytes - d[i].bytes,
                                seg->live_records - d[i].records);
        }
        store_batch_totals(s, wb, s->shard_count - del_records, s->used_bytes - del_bytes);
        rc = store_write_sync(s, wb, e);
    }
    if (rc == 0 && del_records > 0) {
        pthread_rwlock_wrlock(&s->seg_lock);
        for (size_t i = 0; i < nd; i++) {
            d[i].seg->live_bytes -= d[i].bytes;
            d[i].seg->live_records -= d[i].records;
        }
        s->shard_count -= del_records;
        s->used_bytes -= del_bytes;
        pthread_rwlock_unlock(&s->seg_lock);
    }
    store_writer_unlock(s);
out:
    if (wb != NULL) {
        rocksdb_writebatch_destroy(wb);
    }
    hbc_free(k);
    hbc_free(order);
    hbc_free(first);
    hbc_free(d);
    if (rc != 0) {
        for (size_t i = 0; i < n; i++) {
            results[i] = rc;
        }
        return err_wrap_code(e, rc, "delete");
    }
    return 0;
}

/* ---- compaction --------------------------------------------------------- */

/* A live record of the segment being compacted. */
struct move {
    uint8_t key[SHARD_STORE_KEY_LEN]; /* its key */
    uint64_t offset;                  /* where it is now */
};

/* Collect up to max live records of segment at or after offset from, in offset order. */
static int compact_collect(struct shard_store *s, uint64_t segment, uint64_t from, struct move *m,
                           size_t max, size_t *n, struct err *e)
{
    uint8_t lo[BYSEG_KEY_LEN];
    uint8_t hi[8];
    store_byseg_key(segment, from, lo);
    store_put_be64(hi, segment + 1);
    rocksdb_readoptions_t *ro = rocksdb_readoptions_create();
    rocksdb_readoptions_set_iterate_upper_bound(ro, (const char *)hi, sizeof hi);
    rocksdb_iterator_t *it = rocksdb_create_iterator_cf(s->db, ro, s->cf[CF_BY_SEGMENT]);
    *n = 0;
    for (rocksdb_iter_seek(it, (const char *)lo, sizeof lo); *n < max && rocksdb_iter_valid(it);
         rocksdb_iter_next(it)) {
        size_t kn = 0;
        size_t vn = 0;
        const uint8_t *k = (const uint8_t *)rocksdb_iter_key(it, &kn);
        const uint8_t *v = (const uint8_t *)rocksdb_iter_value(it, &vn);
        if (kn != BYSEG_KEY_LEN || vn != BYSEG_VALUE_LEN) {
            continue;
        }
        memcpy(m[*n].key, v, SHARD_STORE_KEY_LEN);
        m[*n].offset = store_get_be64(k + 8);
        (*n)++;
    }
    char *errptr = NULL;
    rocksdb_iter_get_error(it, &errptr);
    rocksdb_iter_destroy(it);
    rocksdb_readoptions_destroy(ro);
    return errptr != NULL ? store_rocks_error(e, errptr, "index: read by_segment") : 0;
}

/* State of one compaction. */
struct compaction {
    struct shard_store *s;            /* the store */
    struct segment *src;              /* the segment being emptied */
    uint8_t *buf;                     /* one record: header, then data */
    size_t cap;                       /* bytes at buf */
    struct move *moves;               /* live records of this round */
    struct shard_compact_result *res; /* running totals */
};

/*
 * Move up to one round of src's live records (the first one at or after
 * *from) into the open segment, in one synced index batch. Sets *more when
 * records may remain.
 */
static int compact_round(struct compaction *c, uint64_t *from, bool *more, struct err *e)
{
    struct shard_store *s = c->s;
    size_t n = 0;
    int rc = compact_collect(s, c->src->number, *from, c->moves, COMPACT_ROUND_RECORDS, &n, e);
    *more = n == COMPACT_ROUND_RECORDS;
    if (rc != 0 || n == 0) {
        return rc;
    }
    *from = c->moves[n - 1].offset + 1;
    struct appender a = {.s = s};
    rocksdb_writebatch_t *wb = rocksdb_writebatch_create();
    uint64_t src_bytes = 0;
    uint64_t src_records = 0;
    uint64_t dropped_bytes = 0;
    uint64_t dropped = 0;
    for (size_t i = 0; rc == 0 && i < n; i++) {
        struct record_loc loc;
        rc = store_locate(s, c->moves[i].key, &loc, e);
        if (rc == HBC_ENOTFOUND ||
            (rc == 0 && (loc.segment != c->src->number || loc.offset != c->moves[i].offset))) {
            /* A stale by_segment entry: drop it, the record is not live here. */
            uint8_t bk[BYSEG_KEY_LEN];
            store_byseg_key(c->src->number, c->moves[i].offset, bk);
            rocksdb_writebatch_delete_cf(wb, s->cf[CF_BY_SEGMENT], (const char *)bk, sizeof bk);
            rc = 0;
            continue;
        }
        if (rc != 0) {
            break;
        }
        uint64_t rec = store_record_size(loc.length);
        if (rec > c->cap) {
            /* Written under a larger max_shard_size; loc.length is bounded by the decoder. */
            uint8_t *nb = hbc_realloc(c->buf, rec);
            if (nb == NULL) {
                rc = err_set(e, HBC_ENOMEM, "record of %" PRIu64 " bytes", rec);
                break;
            }
            c->buf = nb;
            c->cap = rec;
        }
        uint8_t *hdr = c->buf;
        uint8_t *data = c->buf + SHARD_STORE_RECORD_HEADER_LEN;
        rc = store_read_record(s, c->moves[i].key, &loc, data, e);
        src_bytes += rec;
        src_records++;
        if (rc == HBC_ECORRUPT) {
            /* Not copied and no longer indexed: repair rebuilds it from other shards. */
            batch_unindex(s, wb, c->moves[i].key, &loc);
            c->res->corrupt_records++;
            dropped++;
            dropped_bytes += rec;
            rc = 0;
            continue;
        }
        if (rc != 0) {
            break;
        }
        struct record_loc to = loc;
        store_record_header(c->moves[i].key, loc.length, loc.sha256, hdr);
        rc = appender_add(&a, hdr, data, loc.length, &to.segment, &to.offset, e);
        if (rc == 0) {
            rc = appender_flush(&a, e); /* the buffer is reused for the next record */
        }
        if (rc != 0) {
            break;
        }
        uint8_t v[LOC_LEN];
        store_loc_encode(&to, v);
        rocksdb_writebatch_put_cf(wb, s->cf[CF_SHARDS], (const char *)c->moves[i].key,
                                  SHARD_STORE_KEY_LEN, (const char *)v, sizeof v);
        uint8_t bk[BYSEG_KEY_LEN];
        uint8_t bv[BYSEG_VALUE_LEN];
        store_byseg_key(c->src->number, loc.offset, bk);
        rocksdb_writebatch_delete_cf(wb, s->cf[CF_BY_SEGMENT], (const char *)bk, sizeof bk);
        store_byseg_key(to.segment, to.offset, bk);
        memcpy(bv, c->moves[i].key, SHARD_STORE_KEY_LEN);
        store_put_be32(bv + SHARD_STORE_KEY_LEN, (uint32_t)rec);
        rocksdb_writebatch_put_cf(wb, s->cf[CF_BY_SEGMENT], (const char *)bk, sizeof bk,
                                  (const char *)bv, sizeof bv);
    }
    if (rc == 0) {
        rc = appender_finish(&a, e);
    }
    if (rc != 0) {
        appender_abort(&a);
        rocksdb_writebatch_destroy(wb);
        return rc;
    }
    struct segment *src = c->src;
    uint64_t copied = appender_records(&a);
    appender_batch_meta(&a, wb);
    store_batch_segmeta(s, wb, src->number, src->hwm, src->live_bytes - src_bytes,
                        src->live_records - src_records);
    store_batch_totals(s, wb, s->shard_count - dropped, s->used_bytes - dropped_bytes);
    rc = store_write_sync(s, wb, e);
    rocksdb_writebatch_destroy(wb);
    if (rc != 0) {
        appender_uncertain(&a);
        return rc;
    }
    pthread_rwlock_wrlock(&s->seg_lock);
    appender_commit_locked(&a);
    src->live_bytes -= src_bytes;
    src->live_records -= src_records;
    /* Copies were counted as new by the commit; the originals leave with src. */
    s->shard_count -= src_records;
    s->used_bytes -= src_bytes;
    pthread_rwlock_unlock(&s->seg_lock);
    atomic_fetch_add_explicit(&s->records_written, copied, memory_order_relaxed);
    c->res->copied_records += copied;
    c->res->copied_bytes += src_bytes - dropped_bytes;
    appender_release(&a);
    return 0;
}

/* Every record has left src: forget it in the index, then delete its file. */
static int compact_drop(struct compaction *c, struct err *e)
{
    struct shard_store *s = c->s;
    struct segment *src = c->src;
    uint8_t k[8];
    store_put_be64(k, src->number);
    rocksdb_writebatch_t *wb = rocksdb_writebatch_create();
    rocksdb_writebatch_delete_cf(wb, s->cf[CF_SEGMENTS], (const char *)k, sizeof k);
    int rc = store_write_sync(s, wb, e);
    rocksdb_writebatch_destroy(wb);
    if (rc != 0) {
        return rc;
    }
    char name[32];
    snprintf(name, sizeof name, SHARD_STORE_SEGMENT_NAME_FMT, src->number);
    uint64_t size = src->disk_size;
    bool missing = src->missing;
    pthread_rwlock_wrlock(&s->seg_lock);
    store_segment_remove(s, src);
    pthread_rwlock_unlock(&s->seg_lock);
    c->src = NULL;
    /* If this fails the file is unreferenced garbage that the next open removes. */
    if (!missing && unlinkat(s->seg_dirfd, name, 0) != 0) {
        return err_set(e, -errno, "unlink");
    }
    atomic_fetch_add_explicit(&s->dir_fsyncs, 1, memory_order_relaxed);
    if (fsync(s->seg_dirfd) != 0) {
        return err_set(e, -errno, "segments directory: fsync");
    }
    c->res->freed_bytes = size;
    return 0;
}

int shard_store_compact(struct shard_store *s, uint64_t segment, struct shard_compact_result *res,
                        struct err *e)
{
    struct shard_compact_result dummy;
    struct compaction c = {.s = s, .res = res != NULL ? res : &dummy};
    memset(c.res, 0, sizeof *c.res);
    c.cap = store_record_size(s->opts.max_shard_size);
    c.buf = hbc_malloc(c.cap);
    c.moves = hbc_calloc(COMPACT_ROUND_RECORDS, sizeof *c.moves);
    if (c.buf == NULL || c.moves == NULL) {
        hbc_free(c.buf);
        hbc_free(c.moves);
        return err_set(e, HBC_ENOMEM, "compact segment %" PRIu64, segment);
    }
    int rc = 0;
    store_writer_lock(s);
    rc = check_writable(s, e);
    c.src = rc == 0 ? store_segment_find(s, segment) : NULL;
    if (rc != 0) {
        goto out;
    }
    if (c.src == NULL) {
        rc = err_set(e, HBC_ENOTFOUND, "no such segment");
        goto out;
    }
    if (c.src == s->open) {
        pthread_rwlock_wrlock(&s->seg_lock);
        s->open = NULL;
        pthread_rwlock_unlock(&s->seg_lock);
        close(c.src->wfd);
        c.src->wfd = -1;
    }
    uint64_t from = 0;
    bool more = true;
    while (rc == 0 && more) {
        rc = compact_round(&c, &from, &more, e);
    }
    if (rc == 0) {
        rc = compact_drop(&c, e);
    }
    if (rc == 0) {
        hbc_log(LOG_INFO,
                "event=store_compact segment=%" PRIu64 " copied=%" PRIu64 " corrupt=%" PRIu64
                " freed_bytes=%" PRIu64,
                segment, c.res->copied_records, c.res->corrupt_records, c.res->freed_bytes);
    }
out:
    store_writer_unlock(s);
    hbc_free(c.buf);
    hbc_free(c.moves);
    return rc != 0 ? err_wrap_code(e, rc, "compact segment %" PRIu64, segment) : 0;
}
