/* The RocksDB database under the replicated state machine: column families, batches, scans. */
#include "node/meta_store.h"

#include <stdint.h>
#include <string.h>

#include <rocksdb/c.h>

#include "common/alloc.h"

static const char *const cf_names[META_CF_COUNT] = {
    [META_CF_DEFAULT] = "default",     [META_CF_META] = "meta",
    [META_CF_NODES] = "nodes",         [META_CF_VAULTS] = "vaults",
    [META_CF_SNAPSHOTS] = "snapshots", [META_CF_RESTORE_TESTS] = "restore_tests",
    [META_CF_USERS] = "users",         [META_CF_APPROVALS] = "approvals",
    [META_CF_AUDIT] = "audit",
};

struct meta_store {
    rocksdb_t *db;                                     /* the open database */
    rocksdb_options_t *options;                        /* database and column family options */
    rocksdb_column_family_handle_t *cf[META_CF_COUNT]; /* one handle per column family */
    rocksdb_writeoptions_t *write_sync;                /* sync=true: fsync the WAL */
    rocksdb_writeoptions_t *write_nosync;              /* sync=false: WAL in the page cache */
    rocksdb_readoptions_t *read;                       /* reads of the latest state */
};

struct meta_view {
    struct meta_store *store;       /* the database it reads */
    const rocksdb_snapshot_t *snap; /* the RocksDB snapshot */
    rocksdb_readoptions_t *read;    /* read options bound to snap */
};

struct meta_batch {
    struct meta_store *store; /* where it will be written */
    rocksdb_writebatch_t *wb; /* the operations */
};

const char *meta_cf_name(enum meta_cf cf)
{
    if ((unsigned)cf >= META_CF_COUNT) {
        return "?";
    }
    return cf_names[cf];
}

/* Turn a RocksDB error string into HBC_ESTORE with its text, and free it. */
static int store_err(struct err *e, char *rerr, const char *what)
{
    int rc = err_setraw(e, HBC_ESTORE, "%s: %s", what, rerr != NULL ? rerr : "unknown error");
    rocksdb_free(rerr);
    return rc;
}

int meta_store_open(const char *dir, struct meta_store **out, struct err *e)
{
    *out = NULL;
    struct meta_store *s = hbc_calloc(1, sizeof *s);
    if (s == NULL) {
        return err_set(e, HBC_ENOMEM, "meta store");
    }
    s->options = rocksdb_options_create();
    rocksdb_options_set_create_if_missing(s->options, 1);
    rocksdb_options_set_create_missing_column_families(s->options, 1);
    /* Metadata is small: keep RocksDB's own log files few. */
    rocksdb_options_set_keep_log_file_num(s->options, 2);
    rocksdb_options_set_max_open_files(s->options, 256);
    s->write_sync = rocksdb_writeoptions_create();
    rocksdb_writeoptions_set_sync(s->write_sync, 1);
    s->write_nosync = rocksdb_writeoptions_create();
    rocksdb_writeoptions_set_sync(s->write_nosync, 0);
    s->read = rocksdb_readoptions_create();

    const rocksdb_options_t *cf_opts[META_CF_COUNT];
    for (int i = 0; i < META_CF_COUNT; i++) {
        cf_opts[i] = s->options;
    }
    char *rerr = NULL;
    s->db = rocksdb_open_column_families(s->options, dir, META_CF_COUNT, cf_names, cf_opts, s->cf,
                                         &rerr);
    if (rerr != NULL) {
        int rc = store_err(e, rerr, "open");
        s->db = NULL;
        meta_store_close(s);
        return rc;
    }
    *out = s;
    return 0;
}

void meta_store_close(struct meta_store *s)
{
    if (s == NULL) {
        return;
    }
    for (int i = 0; i < META_CF_COUNT; i++) {
        if (s->cf[i] != NULL) {
            rocksdb_column_family_handle_destroy(s->cf[i]);
        }
    }
    if (s->db != NULL) {
        rocksdb_close(s->db);
    }
    rocksdb_readoptions_destroy(s->read);
    rocksdb_writeoptions_destroy(s->write_nosync);
    rocksdb_writeoptions_destroy(s->write_sync);
    rocksdb_options_destroy(s->options);
    hbc_free(s);
}

static const rocksdb_readoptions_t *read_opts(struct meta_store *s, const struct meta_view *view)
{
    return view != NULL ? view->read : s->read;
}

int meta_store_get(struct meta_store *s, const struct meta_view *view, enum meta_cf cf,
                   const void *key, size_t klen, void **val, size_t *len, struct err *e)
{
    *val = NULL;
    *len = 0;
    char *rerr = NULL;
    size_t n = 0;
    char *v = rocksdb_get_cf(s->db, read_opts(s, view), s->cf[cf], key, klen, &n, &rerr);
    if (rerr != NULL) {
        return store_err(e, rerr, "get");
    }
    if (v == NULL) {
        return err_set(e, HBC_ENOTFOUND, "%s: no such key", cf_names[cf]);
    }
    uint8_t *copy = hbc_malloc(n + 1);
    if (copy == NULL) {
        rocksdb_free(v);
        return err_set(e, HBC_ENOMEM, "get");
    }
    memcpy(copy, v, n);
    copy[n] = 0;
    rocksdb_free(v);
    *val = copy;
    *len = n;
    return 0;
}

int meta_store_scan(struct meta_store *s, const struct meta_view *view, enum meta_cf cf,
                    const void *prefix, size_t plen, meta_scan_fn fn, void *arg, struct err *e)
{
    rocksdb_iterator_t *it = rocksdb_create_iterator_cf(s->db, read_opts(s, view), s->cf[cf]);
    if (plen > 0) {
        rocksdb_iter_seek(it, prefix, plen);
    } else {
        rocksdb_iter_seek_to_first(it);
    }
    int rc = 0;
    for (; rocksdb_iter_valid(it); rocksdb_iter_next(it)) {
        size_t klen = 0;
        size_t vlen = 0;
        const char *k = rocksdb_iter_key(it, &klen);
        if (plen > 0 && (klen < plen || memcmp(k, prefix, plen) != 0)) {
            break;
        }
        const char *v = rocksdb_iter_value(it, &vlen);
        rc = fn(k, klen, v, vlen, arg);
        if (rc != 0) {
            break;
        }
    }
    char *rerr = NULL;
    rocksdb_iter_get_error(it, &rerr);
    rocksdb_iter_destroy(it);
    if (rerr != NULL) {
        return store_err(e, rerr, "scan");
    }
    return rc;
}

int meta_view_open(struct meta_store *s, struct meta_view **out, struct err *e)
{
    *out = NULL;
    struct meta_view *v = hbc_calloc(1, sizeof *v);
    if (v == NULL) {
        return err_set(e, HBC_ENOMEM, "view");
    }
    v->store = s;
    v->snap = rocksdb_create_snapshot(s->db);
    v->read = rocksdb_readoptions_create();
    rocksdb_readoptions_set_snapshot(v->read, v->snap);
    *out = v;
    return 0;
}

void meta_view_close(struct meta_view *v)
{
    if (v == NULL) {
        return;
    }
    rocksdb_readoptions_destroy(v->read);
    rocksdb_release_snapshot(v->store->db, v->snap);
    hbc_free(v);
}

int meta_batch_new(struct meta_store *s, struct meta_batch **out, struct err *e)
{
    *out = NULL;
    struct meta_batch *b = hbc_calloc(1, sizeof *b);
    if (b == NULL) {
        return err_set(e, HBC_ENOMEM, "batch");
    }
    b->store = s;
    b->wb = rocksdb_writebatch_create();
    *out = b;
    return 0;
}

void meta_batch_free(struct meta_batch *b)
{
    if (b == NULL) {
        return;
    }
    rocksdb_writebatch_destroy(b->wb);
    hbc_free(b);
}

void meta_batch_clear(struct meta_batch *b)
{
    rocksdb_writebatch_clear(b->wb);
}

void meta_batch_put(struct meta_batch *b, enum meta_cf cf, const void *key, size_t klen,
                    const void *val, size_t vlen)
{
    rocksdb_writebatch_put_cf(b->wb, b->store->cf[cf], key, klen, val, vlen);
}

void meta_batch_delete(struct meta_batch *b, enum meta_cf cf, const void *key, size_t klen)
{
    rocksdb_writebatch_delete_cf(b->wb, b->store->cf[cf], key, klen);
}

int meta_batch_delete_all(struct meta_batch *b, enum meta_cf cf, struct err *e)
{
    struct meta_store *s = b->store;
    rocksdb_iterator_t *it = rocksdb_create_iterator_cf(s->db, s->read, s->cf[cf]);
    uint8_t *first = NULL;
    size_t first_len = 0;
    int rc = 0;
    rocksdb_iter_seek_to_first(it);
    if (rocksdb_iter_valid(it)) {
        const char *k = rocksdb_iter_key(it, &first_len);
        first = hbc_malloc(first_len + 1);
        if (first == NULL) {
            rc = err_set(e, HBC_ENOMEM, "delete all");
            goto done;
        }
        memcpy(first, k, first_len);
        rocksdb_iter_seek_to_last(it);
        if (rocksdb_iter_valid(it)) {
            size_t last_len = 0;
            const char *last = rocksdb_iter_key(it, &last_len);
            /* The range end is exclusive: delete the last key on its own. */
            rocksdb_writebatch_delete_range_cf(b->wb, s->cf[cf], (const char *)first, first_len,
                                               last, last_len);
            rocksdb_writebatch_delete_cf(b->wb, s->cf[cf], last, last_len);
        }
    }
done:;
    char *rerr = NULL;
    rocksdb_iter_get_error(it, &rerr);
    rocksdb_iter_destroy(it);
    hbc_free(first);
    if (rerr != NULL) {
        return store_err(e, rerr, "delete all");
    }
    return rc;
}

int meta_batch_write(struct meta_batch *b, bool sync, struct err *e)
{
    struct meta_store *s = b->store;
    char *rerr = NULL;
    rocksdb_write(s->db, sync ? s->write_sync : s->write_nosync, b->wb, &rerr);
    if (rerr != NULL) {
        return store_err(e, rerr, "write");
    }
    return 0;
}
