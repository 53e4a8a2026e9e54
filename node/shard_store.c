/* The shard store's lifecycle: open and crash recovery, close, stats, encodings and the segment
 * table. */
#include "node/shard_store.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <openssl/evp.h>

#include "common/alloc.h"
#include "common/log.h"
#include "node/shard_store_internal.h"

static const char *const cf_names[CF_COUNT] = {"default", "shards", "segments", "by_segment"};

/* ---- encodings ---------------------------------------------------------- */

void store_key_encode(const struct shard_key *key, uint8_t out[SHARD_STORE_KEY_LEN])
{
    memcpy(out, key->vault_id, SHARD_STORE_VAULT_ID_LEN);
    memcpy(out + SHARD_STORE_VAULT_ID_LEN, key->chunk_id, SHARD_STORE_CHUNK_ID_LEN);
    store_put_be32(out + CHUNK_PREFIX_LEN, key->index);
}

void store_loc_encode(const struct record_loc *loc, uint8_t out[LOC_LEN])
{
    out[0] = LOC_VERSION;
    store_put_be64(out + 1, loc->segment);
    store_put_be64(out + 9, loc->offset);
    store_put_be32(out + 17, loc->length);
    memcpy(out + 21, loc->sha256, SHARD_STORE_SHA256_LEN);
    store_put_be64(out + 53, loc->stored_at_ms);
}

int store_loc_decode(const char *v, size_t n, struct record_loc *loc, struct err *e)
{
    const uint8_t *p = (const uint8_t *)v;
    if (n != LOC_LEN || p[0] != LOC_VERSION) {
        return err_set(e, HBC_ECORRUPT, "index entry of %zu bytes, version %u", n,
                       n > 0 ? p[0] : 0);
    }
    loc->segment = store_get_be64(p + 1);
    loc->offset = store_get_be64(p + 9);
    loc->length = store_get_be32(p + 17);
    memcpy(loc->sha256, p + 21, SHARD_STORE_SHA256_LEN);
    loc->stored_at_ms = store_get_be64(p + 53);
    if (loc->length > SHARD_STORE_SHARD_SIZE_LIMIT || loc->offset > SHARD_STORE_MAX_SEGMENT_SIZE) {
        return err_set(e, HBC_ECORRUPT, "index entry: length %" PRIu32 " at offset %" PRIu64,
                       loc->length, loc->offset);
    }
    return 0;
}

void store_segmeta_encode(uint64_t hwm, uint64_t live_bytes, uint64_t live_records,
                          uint8_t out[SEGMETA_LEN])
{
    out[0] = SEGMETA_VERSION;
    store_put_be64(out + 1, hwm);
    store_put_be64(out + 9, live_bytes);
    store_put_be64(out + 17, live_records);
}

void store_byseg_key(uint64_t segment, uint64_t offset, uint8_t out[BYSEG_KEY_LEN])
{
    store_put_be64(out, segment);
    store_put_be64(out + 8, offset);
}

void store_record_header(const uint8_t key[SHARD_STORE_KEY_LEN], uint32_t len,
                         const uint8_t sha[SHARD_STORE_SHA256_LEN],
                         uint8_t out[SHARD_STORE_RECORD_HEADER_LEN])
{
    memset(out, 0, RECORD_KEY_AT);
    store_put_be32(out, RECORD_MAGIC);
    out[4] = RECORD_VERSION;
    memcpy(out + RECORD_KEY_AT, key, SHARD_STORE_KEY_LEN);
    store_put_be32(out + RECORD_LEN_AT, len);
    memcpy(out + RECORD_SHA_AT, sha, SHARD_STORE_SHA256_LEN);
}

void store_key_text(const uint8_t key[SHARD_STORE_KEY_LEN], char out[160])
{
    static const char hex[] = "0123456789abcdef";
    char v[2 * SHARD_STORE_VAULT_ID_LEN + 1];
    char c[2 * SHARD_STORE_CHUNK_ID_LEN + 1];
    for (size_t i = 0; i < SHARD_STORE_VAULT_ID_LEN; i++) {
        v[2 * i] = hex[key[i] >> 4];
        v[2 * i + 1] = hex[key[i] & 15];
    }
    v[sizeof v - 1] = '\0';
    for (size_t i = 0; i < SHARD_STORE_CHUNK_ID_LEN; i++) {
        uint8_t b = key[SHARD_STORE_VAULT_ID_LEN + i];
        c[2 * i] = hex[b >> 4];
        c[2 * i + 1] = hex[b & 15];
    }
    c[sizeof c - 1] = '\0';
    snprintf(out, 160, "vault=%s chunk=%s index=%" PRIu32, v, c,
             store_get_be32(key + CHUNK_PREFIX_LEN));
}

/* ---- small helpers ------------------------------------------------------ */

int store_rocks_error(struct err *e, char *errptr, const char *what)
{
    err_setraw(e, HBC_ESTORE, "%s: %s", what, errptr != NULL ? errptr : "unknown RocksDB error");
    rocksdb_free(errptr);
    return HBC_ESTORE;
}

int store_sha256(struct shard_store *s, const void *data, size_t len,
                 uint8_t out[SHARD_STORE_SHA256_LEN], struct err *e)
{
    unsigned int n = 0;
    if (EVP_Digest(data, len, out, &n, s->sha256, NULL) != 1 || n != SHARD_STORE_SHA256_LEN) {
        return err_openssl(e, HBC_ECRYPTO, "sha256");
    }
    return 0;
}

uint64_t store_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

void store_batch_segmeta(struct shard_store *s, rocksdb_writebatch_t *wb, uint64_t number,
                         uint64_t hwm, uint64_t live_bytes, uint64_t live_records)
{
    uint8_t k[8];
    uint8_t v[SEGMETA_LEN];
    store_put_be64(k, number);
    store_segmeta_encode(hwm, live_bytes, live_records, v);
    rocksdb_writebatch_put_cf(wb, s->cf[CF_SEGMENTS], (const char *)k, sizeof k, (const char *)v,
                              sizeof v);
}

void store_batch_totals(struct shard_store *s, rocksdb_writebatch_t *wb, uint64_t shard_count,
                        uint64_t used_bytes)
{
    uint8_t v[16];
    store_put_be64(v, shard_count);
    store_put_be64(v + 8, used_bytes);
    rocksdb_writebatch_put_cf(wb, s->cf[CF_DEFAULT], META_TOTALS_KEY, strlen(META_TOTALS_KEY),
                              (const char *)v, sizeof v);
}

int store_write_sync(struct shard_store *s, rocksdb_writebatch_t *wb, struct err *e)
{
    char *errptr = NULL;
    rocksdb_write(s->db, s->wo, wb, &errptr);
    if (errptr != NULL) {
        /* Whether RocksDB kept the batch is unknown, so the counters in memory may be wrong. */
        s->broken = true;
        return store_rocks_error(e, errptr, "index: write");
    }
    atomic_fetch_add_explicit(&s->index_syncs, 1, memory_order_relaxed);
    return 0;
}

/* ---- the segment table -------------------------------------------------- */

struct segment *store_segment_new(uint64_t number)
{
    struct segment *seg = hbc_calloc(1, sizeof *seg);
    if (seg == NULL) {
        return NULL;
    }
    seg->number = number;
    seg->wfd = -1;
    atomic_init(&seg->rfd, -1);
    atomic_init(&seg->last_use, 0);
    return seg;
}

static size_t segment_slot(struct shard_store *s, uint64_t number)
{
    size_t lo = 0;
    size_t hi = s->nsegs;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (s->segs[mid]->number < number) {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    return lo;
}

struct segment *store_segment_find(struct shard_store *s, uint64_t number)
{
    size_t i = segment_slot(s, number);
    return i < s->nsegs && s->segs[i]->number == number ? s->segs[i] : NULL;
}

int store_segment_insert(struct shard_store *s, struct segment *seg)
{
    if (s->nsegs == s->cap_segs) {
        size_t cap = s->cap_segs == 0 ? 64 : s->cap_segs * 2;
        struct segment **n = hbc_realloc(s->segs, cap * sizeof *n);
        if (n == NULL) {
            return HBC_ENOMEM;
        }
        s->segs = n;
        s->cap_segs = cap;
    }
    size_t i = segment_slot(s, seg->number);
    memmove(&s->segs[i + 1], &s->segs[i], (s->nsegs - i) * sizeof *s->segs);
    s->segs[i] = seg;
    s->nsegs++;
    return 0;
}

void store_segment_free(struct shard_store *s, struct segment *seg)
{
    if (seg == NULL) {
        return;
    }
    int rfd = atomic_exchange(&seg->rfd, -1);
    if (rfd >= 0) {
        close(rfd);
        atomic_fetch_sub(&s->open_rfds, 1);
    }
    if (seg->wfd >= 0) {
        close(seg->wfd);
    }
    hbc_free(seg);
}

void store_segment_remove(struct shard_store *s, struct segment *seg)
{
    size_t i = segment_slot(s, seg->number);
    if (i < s->nsegs && s->segs[i] == seg) {
        memmove(&s->segs[i], &s->segs[i + 1], (s->nsegs - i - 1) * sizeof *s->segs);
        s->nsegs--;
    }
    if (s->open == seg) {
        s->open = NULL;
    }
    store_segment_free(s, seg);
}

/* ---- open and recovery -------------------------------------------------- */

static int make_dir(const char *path, struct err *e)
{
    if (mkdir(path, 0700) != 0 && errno != EEXIST) {
        return err_set(e, -errno, "mkdir %s", path);
    }
    return 0;
}

static int fsync_path(const char *path, struct err *e)
{
    int fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) {
        return err_set(e, -errno, "open %s", path);
    }
    int rc = fsync(fd) != 0 ? err_set(e, -errno, "fsync %s", path) : 0;
    close(fd);
    return rc;
}

/* Create the store's directories if missing, durably. */
static int store_make_dirs(struct shard_store *s, char *path, size_t cap, struct err *e)
{
    struct stat st;
    int created = stat(s->dir, &st) != 0;
    int rc = make_dir(s->dir, e);
    const char *subs[] = {"segments", "index"};
    for (size_t i = 0; rc == 0 && i < 2; i++) {
        snprintf(path, cap, "%s/%s", s->dir, subs[i]);
        if (stat(path, &st) != 0) {
            created = 1;
        }
        rc = make_dir(path, e);
    }
    if (rc == 0 && created) {
        rc = fsync_path(s->dir, e);
    }
    return rc;
}

static int store_open_index(struct shard_store *s, const char *path, struct err *e)
{
    s->dbopts = rocksdb_options_create();
    s->table_opts = rocksdb_block_based_options_create();
    s->ro = rocksdb_readoptions_create();
    s->ro_cached = rocksdb_readoptions_create();
    s->wo = rocksdb_writeoptions_create();
    if (s->dbopts == NULL || s->table_opts == NULL || s->ro == NULL || s->ro_cached == NULL ||
        s->wo == NULL) {
        return err_set(e, HBC_ENOMEM, "index options");
    }
    rocksdb_readoptions_set_read_tier(s->ro_cached, 1); /* kBlockCacheTier: no file reads */
    rocksdb_block_based_options_set_filter_policy(s->table_opts,
                                                  rocksdb_filterpolicy_create_bloom_full(10));
    rocksdb_options_set_block_based_table_factory(s->dbopts, s->table_opts);
    rocksdb_options_set_create_if_missing(s->dbopts, 1);
    rocksdb_options_set_create_missing_column_families(s->dbopts, 1);
    rocksdb_options_set_info_log_level(s->dbopts, 2 /* WARN_LEVEL */);
    rocksdb_options_set_keep_log_file_num(s->dbopts, 4);
    rocksdb_options_set_max_open_files(s->dbopts, 512);
    rocksdb_writeoptions_set_sync(s->wo, 1);

    const rocksdb_options_t *cf_opts[CF_COUNT];
    for (int i = 0; i < CF_COUNT; i++) {
        cf_opts[i] = s->dbopts;
    }
    char *errptr = NULL;
    s->db =
        rocksdb_open_column_families(s->dbopts, path, CF_COUNT, cf_names, cf_opts, s->cf, &errptr);
    if (errptr != NULL || s->db == NULL) {
        s->db = NULL;
        memset(s->cf, 0, sizeof s->cf);
        return store_rocks_error(e, errptr, "index: open");
    }
    return 0;
}

static int store_get_meta(struct shard_store *s, const char *key, char **val, size_t *n,
                          struct err *e)
{
    char *errptr = NULL;
    *val = rocksdb_get_cf(s->db, s->ro, s->cf[CF_DEFAULT], key, strlen(key), n, &errptr);
    if (errptr != NULL) {
        return store_rocks_error(e, errptr, "index: read meta");
    }
    return 0;
}

/* Check the format version (writing it into a new index) and load the stored totals. */
static int store_load_meta(struct shard_store *s, rocksdb_writebatch_t *wb, uint64_t totals[2],
                           int *have_totals, bool *new_index, struct err *e)
{
    char *v = NULL;
    size_t n = 0;
    int rc = store_get_meta(s, META_FORMAT_KEY, &v, &n, e);
    if (rc != 0) {
        return rc;
    }
    *new_index = v == NULL;
    if (v == NULL) {
        uint8_t f[4];
        store_put_be32(f, STORE_FORMAT_VERSION);
        rocksdb_writebatch_put_cf(wb, s->cf[CF_DEFAULT], META_FORMAT_KEY, strlen(META_FORMAT_KEY),
                                  (const char *)f, sizeof f);
    } else {
        uint32_t version = n == 4 ? store_get_be32((const uint8_t *)v) : 0;
        rocksdb_free(v);
        if (version != STORE_FORMAT_VERSION) {
            return err_set(e, HBC_EVERSION, "index format %" PRIu32 " (this build reads %d)",
                           version, STORE_FORMAT_VERSION);
        }
    }
    rc = store_get_meta(s, META_TOTALS_KEY, &v, &n, e);
    if (rc != 0) {
        return rc;
    }
    *have_totals = 0;
    if (v != NULL) {
        if (n == 16) {
            totals[0] = store_get_be64((const uint8_t *)v);
            totals[1] = store_get_be64((const uint8_t *)v + 8);
            *have_totals = 1;
        }
        rocksdb_free(v);
    }
    return 0;
}

/* Build the segment table from the "segments" column family. */
static int store_load_segments(struct shard_store *s, struct err *e)
{
    rocksdb_iterator_t *it = rocksdb_create_iterator_cf(s->db, s->ro, s->cf[CF_SEGMENTS]);
    int rc = 0;
    for (rocksdb_iter_seek_to_first(it); rc == 0 && rocksdb_iter_valid(it); rocksdb_iter_next(it)) {
        size_t kn = 0;
        size_t vn = 0;
        const uint8_t *k = (const uint8_t *)rocksdb_iter_key(it, &kn);
        const uint8_t *v = (const uint8_t *)rocksdb_iter_value(it, &vn);
        if (kn != 8 || vn != SEGMETA_LEN || v[0] != SEGMETA_VERSION) {
            rc = err_set(e, HBC_ECORRUPT, "index: segment entry of %zu/%zu bytes", kn, vn);
            break;
        }
        struct segment *seg = store_segment_new(store_get_be64(k));
        if (seg == NULL) {
            rc = err_set(e, HBC_ENOMEM, "segment table");
            break;
        }
        seg->hwm = store_get_be64(v + 1);
        seg->live_bytes = store_get_be64(v + 9);
        seg->live_records = store_get_be64(v + 17);
        seg->missing = true; /* until its file is seen */
        rc = store_segment_insert(s, seg);
        if (rc != 0) {
            store_segment_free(s, seg);
            err_set(e, rc, "segment table");
        }
    }
    if (rc == 0) {
        char *errptr = NULL;
        rocksdb_iter_get_error(it, &errptr);
        if (errptr != NULL) {
            rc = store_rocks_error(e, errptr, "index: read segments");
        }
    }
    rocksdb_iter_destroy(it);
    return rc;
}

/*
 * Whether any "by_segment" entry names segment; when rebuild is set, also
 * recompute its metadata from them (for a segment file whose "segments" entry
 * is missing, which a consistent index never has).
 */
static int store_segment_refs(struct shard_store *s, uint64_t number, struct segment *rebuild,
                              int *referenced, struct err *e)
{
    uint8_t lo[8];
    uint8_t hi[8];
    store_put_be64(lo, number);
    store_put_be64(hi, number + 1);
    rocksdb_readoptions_t *ro = rocksdb_readoptions_create();
    rocksdb_readoptions_set_iterate_upper_bound(ro, (const char *)hi, sizeof hi);
    rocksdb_iterator_t *it = rocksdb_create_iterator_cf(s->db, ro, s->cf[CF_BY_SEGMENT]);
    *referenced = 0;
    for (rocksdb_iter_seek(it, (const char *)lo, sizeof lo); rocksdb_iter_valid(it);
         rocksdb_iter_next(it)) {
        size_t kn = 0;
        size_t vn = 0;
        const uint8_t *k = (const uint8_t *)rocksdb_iter_key(it, &kn);
        const uint8_t *v = (const uint8_t *)rocksdb_iter_value(it, &vn);
        *referenced = 1;
        if (rebuild == NULL) {
            break;
        }
        if (kn != BYSEG_KEY_LEN || vn != BYSEG_VALUE_LEN) {
            continue;
        }
        uint64_t rec = store_get_be32(v + SHARD_STORE_KEY_LEN);
        uint64_t end = store_get_be64(k + 8) + rec;
        rebuild->live_records++;
        rebuild->live_bytes += rec;
        rebuild->hwm = end > rebuild->hwm ? end : rebuild->hwm;
    }
    char *errptr = NULL;
    rocksdb_iter_get_error(it, &errptr);
    rocksdb_iter_destroy(it);
    rocksdb_readoptions_destroy(ro);
    return errptr != NULL ? store_rocks_error(e, errptr, "index: read by_segment") : 0;
}

static int cut_file(struct shard_store *s, const char *name, uint64_t size, struct err *e)
{
    int fd = openat(s->seg_dirfd, name, O_RDWR | O_CLOEXEC);
    if (fd < 0) {
        return err_set(e, -errno, "open");
    }
    int rc = 0;
    if (ftruncate(fd, (off_t)size) != 0) {
        rc = err_set(e, -errno, "ftruncate");
    } else if (fsync(fd) != 0) {
        rc = err_set(e, -errno, "fsync");
    }
    close(fd);
    return rc;
}

/* A segment file found in segments/. */
struct seg_file {
    uint64_t number; /* from its name */
    uint64_t size;   /* st_size */
};

static int parse_segment_name(const char *name, uint64_t *number)
{
    if (strlen(name) != 20 || strcmp(name + 16, ".seg") != 0) {
        return -1;
    }
    uint64_t n = 0;
    for (int i = 0; i < 16; i++) {
        char c = name[i];
        int d = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
        if (d < 0) {
            return -1;
        }
        n = n << 4 | (uint64_t)d;
    }
    *number = n;
    return 0;
}

static int list_segment_files(struct shard_store *s, struct seg_file **out, size_t *count,
                              struct err *e)
{
    int fd = dup(s->seg_dirfd);
    DIR *d = fd >= 0 ? fdopendir(fd) : NULL;
    if (d == NULL) {
        int rc = err_set(e, -errno, "segments directory: opendir");
        if (fd >= 0) {
            close(fd);
        }
        return rc;
    }
    rewinddir(d);
    struct seg_file *files = NULL;
    size_t n = 0;
    size_t cap = 0;
    int rc = 0;
    struct dirent *de;
    while (rc == 0 && (errno = 0, de = readdir(d)) != NULL) {
        uint64_t number;
        if (de->d_name[0] == '.') {
            continue;
        }
        if (parse_segment_name(de->d_name, &number) != 0) {
            hbc_log(LOG_WARN, "event=store_stray_file name=%s", de->d_name);
            continue;
        }
        struct stat st;
        if (fstatat(s->seg_dirfd, de->d_name, &st, 0) != 0) {
            rc = err_set(e, -errno, "segment %" PRIu64 ": stat", number);
            break;
        }
        if (n == cap) {
            cap = cap == 0 ? 64 : cap * 2;
            struct seg_file *nf = hbc_realloc(files, cap * sizeof *nf);
            if (nf == NULL) {
                rc = err_set(e, HBC_ENOMEM, "segment list");
                break;
            }
            files = nf;
        }
        files[n].number = number;
        files[n].size = (uint64_t)st.st_size;
        n++;
    }
    if (rc == 0 && errno != 0) {
        rc = err_set(e, -errno, "segments directory: readdir");
    }
    closedir(d);
    if (rc != 0) {
        hbc_free(files);
        return rc;
    }
    *out = files;
    *count = n;
    return 0;
}

/* Bring one segment file in line with the index (see store_recover). */
static int recover_file(struct shard_store *s, const struct seg_file *f, rocksdb_writebatch_t *wb,
                        int *unlinked, struct err *e)
{
    char name[32];
    snprintf(name, sizeof name, SHARD_STORE_SEGMENT_NAME_FMT, f->number);
    struct segment *seg = store_segment_find(s, f->number);
    int referenced = 0;
    int rc;
    if (seg == NULL) {
        struct segment rebuilt = {.number = f->number};
        rc = store_segment_refs(s, f->number, &rebuilt, &referenced, e);
        if (rc != 0) {
            return rc;
        }
        if (!referenced) {
            /* Created by a batch that never got indexed, or left by compaction. */
            if (unlinkat(s->seg_dirfd, name, 0) != 0) {
                return err_set(e, -errno, "unlink");
            }
            *unlinked = 1;
            s->recovered_cut_bytes += f->size;
            hbc_log(LOG_INFO,
                    "event=store_recover segment=%" PRIu64 " cut_bytes=%" PRIu64 " removed=1",
                    f->number, f->size);
            return 0;
        }
        hbc_log(LOG_ERROR, "event=store_segment_meta_rebuilt segment=%" PRIu64 " records=%" PRIu64,
                f->number, rebuilt.live_records);
        seg = store_segment_new(f->number);
        if (seg == NULL) {
            return err_set(e, HBC_ENOMEM, "segment table");
        }
        seg->hwm = rebuilt.hwm;
        seg->live_bytes = rebuilt.live_bytes;
        seg->live_records = rebuilt.live_records;
        rc = store_segment_insert(s, seg);
        if (rc != 0) {
            store_segment_free(s, seg);
            return err_set(e, rc, "segment table");
        }
        store_batch_segmeta(s, wb, seg->number, seg->hwm, seg->live_bytes, seg->live_records);
    }
    seg->missing = false;
    seg->disk_size = f->size;
    if (f->size > seg->hwm) {
        rc = cut_file(s, name, seg->hwm, e);
        if (rc != 0) {
            return rc;
        }
        s->recovered_cut_bytes += f->size - seg->hwm;
        hbc_log(LOG_INFO, "event=store_recover segment=%" PRIu64 " cut_bytes=%" PRIu64, f->number,
                f->size - seg->hwm);
        seg->disk_size = seg->hwm;
    } else if (f->size < seg->hwm) {
        hbc_log(LOG_ERROR,
                "event=store_segment_short segment=%" PRIu64 " size=%" PRIu64 " indexed=%" PRIu64,
                f->number, f->size, seg->hwm);
    }
    return 0;
}

/*
 * Recovery: the index is the truth. Every segment file is cut back to its
 * indexed high-water mark; files no index entry references (a batch that
 * crashed before its index write, a compacted segment whose unlink did not
 * happen) and segments whose records were all deleted are removed. Nothing
 * is scanned: the "segments" entries say everything.
 */
static int store_recover(struct shard_store *s, rocksdb_writebatch_t *wb, bool new_index,
                         struct err *e)
{
    struct seg_file *files = NULL;
    size_t nfiles = 0;
    int unlinked = 0;
    uint64_t max_number = 0;
    int rc = store_load_segments(s, e);
    if (rc == 0) {
        rc = list_segment_files(s, &files, &nfiles, e);
    }
    if (rc == 0 && new_index && nfiles > 0) {
        /* Recovery would delete every unreferenced segment: never do that to a lost index. */
        rc = err_set(e, HBC_ECORRUPT,
                     "the index is new but segments/ holds %zu segment files; restore the "
                     "index or move the segments away",
                     nfiles);
    }
    for (size_t i = 0; rc == 0 && i < nfiles; i++) {
        max_number = files[i].number > max_number ? files[i].number : max_number;
        rc = recover_file(s, &files[i], wb, &unlinked, e);
        if (rc != 0) {
            err_wrap(e, "segment %" PRIu64, files[i].number);
        }
    }
    hbc_free(files);
    /* Segments left without a live record, and indexed segments whose file is gone. */
    for (size_t i = 0; rc == 0 && i < s->nsegs;) {
        struct segment *seg = s->segs[i];
        max_number = seg->number > max_number ? seg->number : max_number;
        int referenced = 0;
        if (seg->live_records == 0) {
            rc = store_segment_refs(s, seg->number, NULL, &referenced, e);
        }
        if (rc != 0 || seg->live_records != 0 || referenced) {
            if (rc == 0 && seg->missing) {
                hbc_log(LOG_ERROR,
                        "event=store_segment_missing segment=%" PRIu64 " records=%" PRIu64,
                        seg->number, seg->live_records);
            }
            i++;
            continue;
        }
        char name[32];
        snprintf(name, sizeof name, SHARD_STORE_SEGMENT_NAME_FMT, seg->number);
        if (!seg->missing && unlinkat(s->seg_dirfd, name, 0) != 0) {
            rc = err_set(e, -errno, "segment %" PRIu64 ": unlink", seg->number);
            break;
        }
        unlinked |= !seg->missing;
        hbc_log(LOG_INFO, "event=store_segment_removed segment=%" PRIu64 " bytes=%" PRIu64,
                seg->number, seg->disk_size);
        uint8_t k[8];
        store_put_be64(k, seg->number);
        rocksdb_writebatch_delete_cf(wb, s->cf[CF_SEGMENTS], (const char *)k, sizeof k);
        store_segment_remove(s, seg);
    }
    if (rc == 0 && unlinked) {
        if (fsync(s->seg_dirfd) != 0) {
            rc = err_set(e, -errno, "segments directory: fsync");
        }
    }
    s->next_number = max_number + 1;
    return rc;
}

/* Reopen the last segment for appending if it has room. */
static int store_reopen_last(struct shard_store *s, struct err *e)
{
    if (s->nsegs == 0) {
        return 0;
    }
    struct segment *last = s->segs[s->nsegs - 1];
    if (last->missing || last->hwm >= s->opts.segment_size) {
        return 0;
    }
    char name[32];
    snprintf(name, sizeof name, SHARD_STORE_SEGMENT_NAME_FMT, last->number);
    last->wfd = openat(s->seg_dirfd, name, O_RDWR | O_CLOEXEC);
    if (last->wfd < 0) {
        return err_set(e, -errno, "segment %" PRIu64 ": open", last->number);
    }
    last->wpos = last->hwm;
    s->open = last;
    return 0;
}

static int check_options(const struct shard_store_options *in, struct shard_store_options *out,
                         struct err *e)
{
    struct shard_store_options o = {0};
    if (in != NULL) {
        o = *in;
    }
    if (o.segment_size == 0) {
        o.segment_size = SHARD_STORE_DEFAULT_SEGMENT_SIZE;
    }
    if (o.max_shard_size == 0) {
        o.max_shard_size = SHARD_STORE_DEFAULT_MAX_SHARD_SIZE;
    }
    if (o.max_open_segments == 0) {
        o.max_open_segments = SHARD_STORE_DEFAULT_MAX_OPEN_SEGMENTS;
    }
    if (o.segment_size < SHARD_STORE_MIN_SEGMENT_SIZE ||
        o.segment_size > SHARD_STORE_MAX_SEGMENT_SIZE) {
        return err_set(e, HBC_ECONFIG, "segment size %" PRIu64 " outside %llu..%llu",
                       o.segment_size, SHARD_STORE_MIN_SEGMENT_SIZE, SHARD_STORE_MAX_SEGMENT_SIZE);
    }
    if (o.max_shard_size > SHARD_STORE_SHARD_SIZE_LIMIT) {
        return err_set(e, HBC_ECONFIG, "max shard size %" PRIu32 " above %u", o.max_shard_size,
                       SHARD_STORE_SHARD_SIZE_LIMIT);
    }
    *out = o;
    return 0;
}

static void store_free(struct shard_store *s)
{
    store_pipeline_free(s);
    for (size_t i = 0; i < s->nsegs; i++) {
        store_segment_free(s, s->segs[i]);
    }
    hbc_free(s->segs);
    for (int i = 0; i < CF_COUNT; i++) {
        if (s->cf[i] != NULL) {
            rocksdb_column_family_handle_destroy(s->cf[i]);
        }
    }
    if (s->db != NULL) {
        rocksdb_close(s->db);
    }
    if (s->dbopts != NULL) {
        rocksdb_options_destroy(s->dbopts);
    }
    if (s->table_opts != NULL) {
        rocksdb_block_based_options_destroy(s->table_opts);
    }
    if (s->ro != NULL) {
        rocksdb_readoptions_destroy(s->ro);
    }
    if (s->ro_cached != NULL) {
        rocksdb_readoptions_destroy(s->ro_cached);
    }
    if (s->wo != NULL) {
        rocksdb_writeoptions_destroy(s->wo);
    }
    if (s->seg_dirfd >= 0) {
        close(s->seg_dirfd);
    }
    EVP_MD_free(s->sha256);
    pthread_rwlock_destroy(&s->seg_lock);
    pthread_mutex_destroy(&s->append_mu);
    pthread_mutex_destroy(&s->sync_mu);
    pthread_mutex_destroy(&s->pending_mu);
    hbc_free(s->dir);
    hbc_free(s);
}

int shard_store_open(const char *dir, const struct shard_store_options *opts,
                     struct shard_store **out, struct err *e)
{
    if (dir == NULL || out == NULL) {
        return err_set(e, HBC_EINVAL, "open store");
    }
    *out = NULL;
    struct shard_store_options o;
    int rc = check_options(opts, &o, e);
    if (rc != 0) {
        return err_wrap_code(e, rc, "open store");
    }
    struct shard_store *s = hbc_calloc(1, sizeof *s);
    if (s == NULL) {
        return err_set(e, HBC_ENOMEM, "open store");
    }
    s->opts = o;
    s->seg_dirfd = -1;
    atomic_init(&s->open_rfds, 0);
    atomic_init(&s->use_clock, 0);
    atomic_init(&s->corrupt_reads, 0);
    atomic_init(&s->put_batches, 0);
    atomic_init(&s->records_written, 0);
    atomic_init(&s->fdatasyncs, 0);
    atomic_init(&s->dir_fsyncs, 0);
    atomic_init(&s->index_syncs, 0);
    atomic_init(&s->pipelined_puts, 0);
    atomic_init(&s->reappended_puts, 0);
    atomic_init(&s->broken, false);
    pthread_mutex_init(&s->append_mu, NULL);
    pthread_mutex_init(&s->sync_mu, NULL);
    pthread_mutex_init(&s->pending_mu, NULL);
    /* Prefer the writer: a stream of reads must not starve compaction or a new segment. */
    pthread_rwlockattr_t attr;
    pthread_rwlockattr_init(&attr);
    pthread_rwlockattr_setkind_np(&attr, PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
    pthread_rwlock_init(&s->seg_lock, &attr);
    pthread_rwlockattr_destroy(&attr);

    size_t plen = strlen(dir) + 16;
    char *path = hbc_malloc(plen);
    s->dir = hbc_strdup(dir);
    s->sha256 = EVP_MD_fetch(NULL, "SHA256", NULL);
    rocksdb_writebatch_t *wb = rocksdb_writebatch_create();
    if (path == NULL || s->dir == NULL || wb == NULL) {
        rc = err_set(e, HBC_ENOMEM, "open store");
        goto fail;
    }
    if (s->sha256 == NULL) {
        rc = err_openssl(e, HBC_ECRYPTO, "open store: fetch SHA256");
        goto fail;
    }
    rc = store_make_dirs(s, path, plen, e);
    if (rc != 0) {
        goto fail_wrap;
    }
    snprintf(path, plen, "%s/segments", dir);
    s->seg_dirfd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (s->seg_dirfd < 0) {
        rc = err_set(e, -errno, "open %s", path);
        goto fail_wrap;
    }
    /* The index's lock also keeps a second process away from the segments. */
    snprintf(path, plen, "%s/index", dir);
    rc = store_open_index(s, path, e);
    if (rc != 0) {
        goto fail_wrap;
    }
    uint64_t totals[2] = {0, 0};
    int have_totals = 0;
    bool new_index = false;
    rc = store_load_meta(s, wb, totals, &have_totals, &new_index, e);
    if (rc == 0) {
        rc = store_recover(s, wb, new_index, e);
    }
    if (rc != 0) {
        goto fail_wrap;
    }
    for (size_t i = 0; i < s->nsegs; i++) {
        s->shard_count += s->segs[i]->live_records;
        s->used_bytes += s->segs[i]->live_bytes;
    }
    if (!have_totals || totals[0] != s->shard_count || totals[1] != s->used_bytes) {
        if (have_totals) {
            hbc_log(LOG_WARN,
                    "event=store_totals_fixed shards=%" PRIu64 " was=%" PRIu64 " used=%" PRIu64
                    " was=%" PRIu64,
                    s->shard_count, totals[0], s->used_bytes, totals[1]);
        }
        store_batch_totals(s, wb, s->shard_count, s->used_bytes);
    }
    if (rocksdb_writebatch_count(wb) > 0) {
        rc = store_write_sync(s, wb, e);
        if (rc != 0) {
            goto fail_wrap;
        }
    }
    rc = store_reopen_last(s, e);
    if (rc != 0) {
        goto fail_wrap;
    }
    hbc_log(LOG_INFO,
            "event=store_open segments=%zu shards=%" PRIu64 " used_bytes=%" PRIu64
            " cut_bytes=%" PRIu64,
            s->nsegs, s->shard_count, s->used_bytes, s->recovered_cut_bytes);
    rocksdb_writebatch_destroy(wb);
    hbc_free(path);
    *out = s;
    return 0;

fail_wrap:
    err_wrap(e, "open store");
fail:
    if (wb != NULL) {
        rocksdb_writebatch_destroy(wb);
    }
    hbc_free(path);
    store_free(s);
    return rc;
}

int shard_store_close(struct shard_store *s, struct err *e)
{
    if (s == NULL) {
        return 0;
    }
    int rc = 0;
    /* Every put was synced already; flushing spares the next open a long WAL replay. */
    rocksdb_flushoptions_t *fo = rocksdb_flushoptions_create();
    rocksdb_flushoptions_set_wait(fo, 1);
    for (int i = 0; i < CF_COUNT && rc == 0; i++) {
        char *errptr = NULL;
        rocksdb_flush_cf(s->db, fo, s->cf[i], &errptr);
        if (errptr != NULL) {
            rc = store_rocks_error(e, errptr, "close store: index: flush");
        }
    }
    rocksdb_flushoptions_destroy(fo);
    store_free(s);
    return rc;
}

/* ---- stats and segment listing ------------------------------------------ */

void shard_store_stats(struct shard_store *s, struct shard_store_stats *st)
{
    memset(st, 0, sizeof *st);
    pthread_rwlock_rdlock(&s->seg_lock);
    st->shard_count = s->shard_count;
    st->used_bytes = s->used_bytes;
    st->segment_count = s->nsegs;
    for (size_t i = 0; i < s->nsegs; i++) {
        st->bytes_on_disk += s->segs[i]->disk_size;
    }
    pthread_rwlock_unlock(&s->seg_lock);
    st->data_bytes = st->used_bytes - st->shard_count * SHARD_STORE_RECORD_HEADER_LEN;
    st->capacity = s->opts.capacity;
    st->recovered_cut_bytes = s->recovered_cut_bytes;
    st->corrupt_reads = atomic_load(&s->corrupt_reads);
    st->put_batches = atomic_load(&s->put_batches);
    st->records_written = atomic_load(&s->records_written);
    st->fdatasyncs = atomic_load(&s->fdatasyncs);
    st->dir_fsyncs = atomic_load(&s->dir_fsyncs);
    st->index_syncs = atomic_load(&s->index_syncs);
    st->pipelined_puts = atomic_load(&s->pipelined_puts);
    st->reappended_puts = atomic_load(&s->reappended_puts);
    uint64_t v = 0;
    if (rocksdb_property_int(s->db, "rocksdb.total-sst-files-size", &v) == 0) {
        st->index_bytes = v;
    }
}

int shard_store_segments(struct shard_store *s, struct shard_segment_info **out, size_t *n,
                         struct err *e)
{
    *out = NULL;
    *n = 0;
    pthread_rwlock_rdlock(&s->seg_lock);
    size_t count = s->nsegs;
    struct shard_segment_info *v = count > 0 ? hbc_calloc(count, sizeof *v) : NULL;
    if (count > 0 && v == NULL) {
        pthread_rwlock_unlock(&s->seg_lock);
        return err_set(e, HBC_ENOMEM, "list segments");
    }
    for (size_t i = 0; i < count; i++) {
        const struct segment *seg = s->segs[i];
        v[i].number = seg->number;
        v[i].size = seg->hwm;
        v[i].live_bytes = seg->live_bytes;
        v[i].live_records = seg->live_records;
        v[i].live_ratio = seg->hwm > 0 ? (double)seg->live_bytes / (double)seg->hwm : 1.0;
        v[i].open = seg == s->open;
    }
    pthread_rwlock_unlock(&s->seg_lock);
    *out = v;
    *n = count;
    return 0;
}
