/* The shard store's reads: index lookups, checked record reads, existence queries. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/uio.h>
#include <unistd.h>

#include "common/alloc.h"
#include "common/log.h"
#include "node/shard_store.h"
#include "node/shard_store_internal.h"

/* Times a read looks its key up again after the segment it pointed to was compacted away. */
#define READ_ATTEMPTS 4
/* read_record_bytes(): the segment file is missing; the record is cut short. */
#define READ_MISSING 2
#define READ_TRUNCATED 3

/* store_locate() with read options ro; with the cache-only ones, HBC_EBUSY when it would read a
 * file. */
static int locate_with(struct shard_store *s, const rocksdb_readoptions_t *ro,
                       const uint8_t key[SHARD_STORE_KEY_LEN], struct record_loc *loc,
                       struct err *e)
{
    char *errptr = NULL;
    size_t n = 0;
    char *v = rocksdb_get_cf(s->db, ro, s->cf[CF_SHARDS], (const char *)key, SHARD_STORE_KEY_LEN,
                             &n, &errptr);
    if (errptr != NULL && ro == s->ro_cached && strncmp(errptr, "Result incomplete", 17) == 0) {
        rocksdb_free(errptr);
        return HBC_EBUSY; /* not in the memtable or block cache */
    }
    if (errptr != NULL) {
        return store_rocks_error(e, errptr, "index: get");
    }
    if (v == NULL) {
        return err_set(e, HBC_ENOTFOUND, "shard");
    }
    int rc = store_loc_decode(v, n, loc, e);
    rocksdb_free(v);
    return rc;
}

int store_locate(struct shard_store *s, const uint8_t key[SHARD_STORE_KEY_LEN],
                 struct record_loc *loc, struct err *e)
{
    return locate_with(s, s->ro, key, loc, e);
}

/*
 * Read descriptors are opened on first use and cached; when more than
 * max_open_segments are open, the least recently read are closed (under
 * seg_lock held for writing, so no reader is using them).
 */
static int segment_rfd(struct shard_store *s, struct segment *seg)
{
    int fd = atomic_load(&seg->rfd);
    if (fd >= 0) {
        return fd;
    }
    char name[32];
    snprintf(name, sizeof name, SHARD_STORE_SEGMENT_NAME_FMT, seg->number);
    int nfd = openat(s->seg_dirfd, name, O_RDONLY | O_CLOEXEC);
    if (nfd < 0) {
        return -errno;
    }
    int expected = -1;
    if (atomic_compare_exchange_strong(&seg->rfd, &expected, nfd)) {
        atomic_fetch_add(&s->open_rfds, 1);
        return nfd;
    }
    close(nfd); /* another reader opened it first */
    return expected;
}

static int cmp_last_use(const void *a, const void *b)
{
    uint64_t x = atomic_load(&(*(struct segment *const *)a)->last_use);
    uint64_t y = atomic_load(&(*(struct segment *const *)b)->last_use);
    return x < y ? -1 : x > y;
}

static void store_evict_rfds(struct shard_store *s)
{
    if ((uint32_t)atomic_load(&s->open_rfds) <= s->opts.max_open_segments) {
        return;
    }
    pthread_rwlock_wrlock(&s->seg_lock);
    int keep = (int)(s->opts.max_open_segments - s->opts.max_open_segments / 4);
    struct segment **v = NULL;
    size_t n = 0;
    if (atomic_load(&s->open_rfds) > (int)s->opts.max_open_segments) {
        v = hbc_malloc(s->nsegs * sizeof *v);
    }
    if (v != NULL) {
        for (size_t i = 0; i < s->nsegs; i++) {
            if (atomic_load(&s->segs[i]->rfd) >= 0) {
                v[n++] = s->segs[i];
            }
        }
        qsort(v, n, sizeof *v, cmp_last_use);
        for (size_t i = 0; i < n && atomic_load(&s->open_rfds) > keep; i++) {
            int fd = atomic_exchange(&v[i]->rfd, -1);
            if (fd >= 0) {
                close(fd);
                atomic_fetch_sub(&s->open_rfds, 1);
            }
        }
        hbc_free(v);
    }
    pthread_rwlock_unlock(&s->seg_lock);
}

static int report_corrupt(struct shard_store *s, const uint8_t key[SHARD_STORE_KEY_LEN],
                          const struct record_loc *loc, uint8_t *data, const char *what,
                          struct err *e)
{
    char k[160];
    store_key_text(key, k);
    atomic_fetch_add(&s->corrupt_reads, 1);
    hbc_log(LOG_ERROR,
            "event=store_corrupt segment=%" PRIu64 " offset=%" PRIu64 " reason=\"%s\" %s",
            loc->segment, loc->offset, what, k);
    if (data != NULL) {
        memset(data, 0, loc->length);
    }
    return err_set(e, HBC_ECORRUPT, "segment %" PRIu64 " offset %" PRIu64 ": %s", loc->segment,
                   loc->offset, what);
}

static int check_record(struct shard_store *s, const uint8_t key[SHARD_STORE_KEY_LEN],
                        const struct record_loc *loc, const uint8_t *hdr, uint8_t *data,
                        struct err *e)
{
    const char *bad = NULL;
    if (store_get_be32(hdr) != RECORD_MAGIC || hdr[4] != RECORD_VERSION) {
        bad = "bad record magic or version";
    } else if (memcmp(hdr + RECORD_KEY_AT, key, SHARD_STORE_KEY_LEN) != 0) {
        bad = "record belongs to another key";
    } else if (store_get_be32(hdr + RECORD_LEN_AT) != loc->length) {
        bad = "record length differs from the index";
    } else if (memcmp(hdr + RECORD_SHA_AT, loc->sha256, SHARD_STORE_SHA256_LEN) != 0) {
        bad = "record checksum differs from the index";
    }
    if (bad == NULL) {
        uint8_t sha[SHARD_STORE_SHA256_LEN];
        int rc = store_sha256(s, data, loc->length, sha, e);
        if (rc != 0) {
            memset(data, 0, loc->length);
            return rc;
        }
        if (memcmp(sha, loc->sha256, SHARD_STORE_SHA256_LEN) != 0) {
            bad = "SHA-256 mismatch";
        }
    }
    return bad != NULL ? report_corrupt(s, key, loc, data, bad, e) : 0;
}

/*
 * Read the record at loc: its header into hdr, its data into data. With
 * nowait, only from the page cache (preadv2 RWF_NOWAIT) and only if seg_lock
 * is free now: STORE_WOULD_BLOCK otherwise. Returns 0, STORE_SEGMENT_GONE,
 * READ_MISSING (the segment file is missing), READ_TRUNCATED (the record is
 * cut short), or -errno with context.
 */
static int read_record_bytes(struct shard_store *s, const struct record_loc *loc,
                             uint8_t hdr[SHARD_STORE_RECORD_HEADER_LEN], uint8_t *data, bool nowait,
                             struct err *e)
{
    struct iovec iov[2] = {{hdr, SHARD_STORE_RECORD_HEADER_LEN}, {data, loc->length}};
    int nio = loc->length > 0 ? 2 : 1;
    uint64_t off = loc->offset;
    size_t want = SHARD_STORE_RECORD_HEADER_LEN + (size_t)loc->length;
    size_t got = 0;
    int rc = 0;

    if (nowait) {
        if (pthread_rwlock_tryrdlock(&s->seg_lock) != 0) {
            return STORE_WOULD_BLOCK;
        }
    } else {
        pthread_rwlock_rdlock(&s->seg_lock);
    }
    struct segment *seg = store_segment_find(s, loc->segment);
    if (seg == NULL) {
        pthread_rwlock_unlock(&s->seg_lock);
        return STORE_SEGMENT_GONE;
    }
    if (seg->missing) {
        pthread_rwlock_unlock(&s->seg_lock);
        return nowait ? STORE_WOULD_BLOCK : READ_MISSING;
    }
    if (nowait && atomic_load(&seg->rfd) < 0) {
        pthread_rwlock_unlock(&s->seg_lock);
        return STORE_WOULD_BLOCK; /* opened (and old descriptors closed) by a blocking read */
    }
    int fd = segment_rfd(s, seg);
    if (fd < 0) {
        pthread_rwlock_unlock(&s->seg_lock);
        return err_set(e, fd, "segment %" PRIu64 ": open", loc->segment);
    }
    while (got < want) {
        ssize_t r = preadv2(fd, iov, nio, (off_t)(off + got), nowait ? RWF_NOWAIT : 0);
        if (r < 0 && errno == EINTR) {
            continue;
        }
        if (r < 0 && nowait && (errno == EAGAIN || errno == EOPNOTSUPP)) {
            rc = STORE_WOULD_BLOCK;
            break;
        }
        if (r < 0) {
            rc = err_set(e, -errno, "segment %" PRIu64 ": read", loc->segment);
            break;
        }
        if (r == 0) {
            rc = READ_TRUNCATED; /* end of file inside the record */
            break;
        }
        got += (size_t)r;
        if (nowait && got < want) {
            rc = STORE_WOULD_BLOCK; /* part of it is not cached: the blocking read decides */
            break;
        }
        /* Advance the iovecs past what was read. */
        size_t adv = (size_t)r;
        while (nio > 0 && adv >= iov[0].iov_len) {
            adv -= iov[0].iov_len;
            iov[0] = iov[1];
            nio--;
        }
        if (nio > 0) {
            iov[0].iov_base = (uint8_t *)iov[0].iov_base + adv;
            iov[0].iov_len -= adv;
        }
    }
    atomic_store(&seg->last_use, atomic_fetch_add(&s->use_clock, 1) + 1);
    pthread_rwlock_unlock(&s->seg_lock);
    if (!nowait) {
        store_evict_rfds(s); /* may wait for seg_lock */
    }
    return rc;
}

int store_read_record(struct shard_store *s, const uint8_t key[SHARD_STORE_KEY_LEN],
                      const struct record_loc *loc, uint8_t *data, struct err *e)
{
    uint8_t hdr[SHARD_STORE_RECORD_HEADER_LEN];
    int rc = read_record_bytes(s, loc, hdr, data, false, e);
    if (rc == STORE_SEGMENT_GONE) {
        return rc;
    }
    if (rc == READ_MISSING) {
        return report_corrupt(s, key, loc, data, "segment file is missing", e);
    }
    if (rc == READ_TRUNCATED) {
        return report_corrupt(s, key, loc, data, "record truncated", e);
    }
    if (rc != 0) {
        memset(data, 0, loc->length);
        return rc;
    }
    return check_record(s, key, loc, hdr, data, e);
}

int shard_store_lookup(struct shard_store *s, const struct shard_key *key, struct shard_info *info,
                       struct err *e)
{
    uint8_t k[SHARD_STORE_KEY_LEN];
    struct record_loc loc;
    store_key_encode(key, k);
    int rc = store_locate(s, k, &loc, e);
    if (rc != 0) {
        return err_wrap_code(e, rc, "lookup");
    }
    info->segment = loc.segment;
    info->offset = loc.offset;
    info->length = loc.length;
    memcpy(info->sha256, loc.sha256, sizeof info->sha256);
    info->stored_at_ms = loc.stored_at_ms;
    return 0;
}

/*
 * Read key into buf, or into a new buffer when buf is NULL and want_alloc is
 * set. A record moved by compaction between the lookup and the read sends us
 * back to the index.
 */
static int store_get(struct shard_store *s, const struct shard_key *key, uint8_t *buf, size_t cap,
                     uint8_t **alloc_out, size_t *len, struct err *e)
{
    uint8_t k[SHARD_STORE_KEY_LEN];
    store_key_encode(key, k);
    uint64_t gone = UINT64_MAX;
    for (int attempt = 0; attempt < READ_ATTEMPTS; attempt++) {
        struct record_loc loc;
        int rc = store_locate(s, k, &loc, e);
        if (rc != 0) {
            return rc;
        }
        if (loc.segment == gone) {
            break;
        }
        uint8_t *dst = buf;
        if (alloc_out != NULL) {
            dst = hbc_malloc(loc.length > 0 ? loc.length : 1);
            if (dst == NULL) {
                return err_set(e, HBC_ENOMEM, "buffer of %" PRIu32 " bytes", loc.length);
            }
        } else if (buf == NULL || cap < loc.length) {
            *len = loc.length;
            return err_set(e, HBC_ETOOBIG, "buffer of %zu bytes for a shard of %" PRIu32, cap,
                           loc.length);
        }
        rc = store_read_record(s, k, &loc, dst, e);
        if (rc == STORE_SEGMENT_GONE) {
            gone = loc.segment;
            if (alloc_out != NULL) {
                hbc_free(dst);
            }
            continue;
        }
        if (rc != 0) {
            if (alloc_out != NULL) {
                hbc_free(dst);
            }
            return rc;
        }
        if (alloc_out != NULL) {
            *alloc_out = dst;
        }
        *len = loc.length;
        return 0;
    }
    return err_set(e, HBC_ECORRUPT, "index points to segment %" PRIu64 ", which does not exist",
                   gone);
}

int shard_store_get(struct shard_store *s, const struct shard_key *key, void *buf, size_t cap,
                    size_t *len, struct err *e)
{
    int rc = store_get(s, key, buf, cap, NULL, len, e);
    return rc != 0 ? err_wrap_code(e, rc, "get") : 0;
}

int shard_store_get_alloc(struct shard_store *s, const struct shard_key *key, uint8_t **data,
                          size_t *len, struct err *e)
{
    *data = NULL;
    int rc = store_get(s, key, NULL, 0, data, len, e);
    return rc != 0 ? err_wrap_code(e, rc, "get") : 0;
}

int shard_store_get_batch(struct shard_store *s, const struct shard_key *keys, size_t n,
                          uint8_t **datas, size_t *lens, int *results, struct err *e)
{
    if (n > SHARD_STORE_MAX_BATCH ||
        (n > 0 && (keys == NULL || datas == NULL || lens == NULL || results == NULL))) {
        return err_set(e, HBC_EINVAL, "get batch of %zu", n);
    }
    for (size_t i = 0; i < n; i++) {
        lens[i] = 0;
        results[i] = shard_store_get_alloc(s, &keys[i], &datas[i], &lens[i], e);
    }
    return 0;
}

int shard_store_get_batch_nowait(struct shard_store *s, const struct shard_key *keys, size_t n,
                                 size_t max_bytes, uint8_t **datas, size_t *lens, int *results,
                                 struct err *e)
{
    if (n > SHARD_STORE_MAX_BATCH ||
        (n > 0 && (keys == NULL || datas == NULL || lens == NULL || results == NULL))) {
        return err_set(e, HBC_EINVAL, "get batch of %zu", n);
    }
    struct record_loc *locs = hbc_malloc((n > 0 ? n : 1) * sizeof *locs);
    uint8_t(*hdrs)[SHARD_STORE_RECORD_HEADER_LEN] = hbc_malloc((n > 0 ? n : 1) * sizeof *hdrs);
    uint8_t(*k)[SHARD_STORE_KEY_LEN] = hbc_malloc((n > 0 ? n : 1) * sizeof *k);
    int rc = 0;
    if (locs == NULL || hdrs == NULL || k == NULL) {
        rc = err_set(e, HBC_ENOMEM, "get batch of %zu", n);
        goto out;
    }
    for (size_t i = 0; i < n; i++) {
        datas[i] = NULL;
        lens[i] = 0;
    }
    /* Every lookup first, from memory only, so that nothing is read when one would block. */
    size_t total = 0;
    for (size_t i = 0; i < n && rc == 0; i++) {
        store_key_encode(&keys[i], k[i]);
        struct err le;
        results[i] = locate_with(s, s->ro_cached, k[i], &locs[i], &le);
        if (results[i] == HBC_EBUSY || results[i] == HBC_ENOTFOUND) {
            rc = HBC_EBUSY; /* not-found is rare: let the full lookup say it */
        } else if (results[i] == 0) {
            total += locs[i].length;
            rc = total > max_bytes ? HBC_EBUSY : 0;
        } else {
            /* Not found or a bad entry: what shard_store_get_alloc() returns, with its message. */
            err_setraw(e, results[i], "get: %s", le.msg);
        }
    }
    /* Then every read from the page cache, then every check. */
    for (size_t i = 0; i < n && rc == 0; i++) {
        if (results[i] != 0) {
            continue;
        }
        datas[i] = hbc_malloc(locs[i].length > 0 ? locs[i].length : 1);
        if (datas[i] == NULL) {
            rc = err_set(e, HBC_ENOMEM, "buffer of %" PRIu32 " bytes", locs[i].length);
            break;
        }
        int r = read_record_bytes(s, &locs[i], hdrs[i], datas[i], true, e);
        if (r == STORE_WOULD_BLOCK || r == STORE_SEGMENT_GONE || r == READ_TRUNCATED) {
            rc = HBC_EBUSY; /* the blocking read looks again, or reports it */
        } else if (r != 0) {
            rc = r;
        }
    }
    for (size_t i = 0; i < n && rc == 0; i++) {
        if (results[i] == 0) {
            results[i] = check_record(s, k[i], &locs[i], hdrs[i], datas[i], e);
            if (results[i] != 0) {
                err_wrap_code(e, results[i], "get");
                hbc_free(datas[i]);
                datas[i] = NULL;
            } else {
                lens[i] = locs[i].length;
            }
        }
    }
    if (rc != 0) {
        for (size_t i = 0; i < n; i++) {
            hbc_free(datas[i]);
            datas[i] = NULL;
            lens[i] = 0;
        }
    }
out:
    hbc_free(locs);
    hbc_free(hdrs);
    hbc_free(k);
    return rc;
}

/* Whether any key starting with prefix (vault || chunk) is indexed, using an open iterator. */
static int chunk_present(rocksdb_iterator_t *it, const uint8_t prefix[CHUNK_PREFIX_LEN],
                         bool *present, struct err *e)
{
    rocksdb_iter_seek(it, (const char *)prefix, CHUNK_PREFIX_LEN);
    *present = false;
    if (rocksdb_iter_valid(it)) {
        size_t kn = 0;
        const char *k = rocksdb_iter_key(it, &kn);
        *present = kn >= CHUNK_PREFIX_LEN && memcmp(k, prefix, CHUNK_PREFIX_LEN) == 0;
        return 0;
    }
    char *errptr = NULL;
    rocksdb_iter_get_error(it, &errptr);
    return errptr != NULL ? store_rocks_error(e, errptr, "index: seek") : 0;
}

int shard_store_exists_batch(struct shard_store *s,
                             const uint8_t vault_id[SHARD_STORE_VAULT_ID_LEN],
                             const uint8_t (*chunk_ids)[SHARD_STORE_CHUNK_ID_LEN], size_t n,
                             bool *present, struct err *e)
{
    if (n == 0) {
        return 0;
    }
    rocksdb_iterator_t *it = rocksdb_create_iterator_cf(s->db, s->ro, s->cf[CF_SHARDS]);
    int rc = 0;
    uint8_t prefix[CHUNK_PREFIX_LEN];
    memcpy(prefix, vault_id, SHARD_STORE_VAULT_ID_LEN);
    for (size_t i = 0; i < n && rc == 0; i++) {
        memcpy(prefix + SHARD_STORE_VAULT_ID_LEN, chunk_ids[i], SHARD_STORE_CHUNK_ID_LEN);
        rc = chunk_present(it, prefix, &present[i], e);
    }
    rocksdb_iter_destroy(it);
    return rc != 0 ? err_wrap_code(e, rc, "exists") : 0;
}

int shard_store_exists(struct shard_store *s, const uint8_t vault_id[SHARD_STORE_VAULT_ID_LEN],
                       const uint8_t chunk_id[SHARD_STORE_CHUNK_ID_LEN], bool *present,
                       struct err *e)
{
    const uint8_t(*ids)[SHARD_STORE_CHUNK_ID_LEN] =
        (const uint8_t(*)[SHARD_STORE_CHUNK_ID_LEN])chunk_id;
    return shard_store_exists_batch(s, vault_id, ids, 1, present, e);
}
