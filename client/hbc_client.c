/* libhbc's public API (include/hbc/hbc.h) on top of the vault, backup and restore modules. */
#include <hbc/hbc.h>

#include <string.h>

#include "client/backup.h"
#include "client/repo.h"
#include "client/restore.h"
#include "client/snapshot_io.h"
#include "common/alloc.h"

#define CLIENT_INFLIGHT_MB 64 /* shard bytes the vault connection keeps in flight */

struct hbc_client {
    struct repo *r; /* the open vault; NULL if opening failed */
    struct err err; /* the last failure */
};

static int fail(hbc_client *c, int rv)
{
    if (c->err.code == 0 && c->err.msg[0] == '\0') {
        err_set(&c->err, rv, "error");
    }
    c->err.code = rv;
    return rv;
}

int hbc_client_open(const struct hbc_settings *s, hbc_client **out)
{
    *out = NULL;
    hbc_client *c = hbc_calloc(1, sizeof *c);
    if (c == NULL) {
        return HBC_ENOMEM;
    }
    *out = c;
    struct repo_options o = {
        .addrs = s->cluster,
        .naddrs = s->ncluster,
        .ca_file = s->ca,
        .cert_file = s->cert,
        .key_file = s->key,
        .keyfile = s->keyfile,
        .passphrase = s->passphrase,
        .passphrase_len = s->passphrase_len,
        .vault = s->vault,
        .timeout_ms = s->timeout_ms,
        .max_inflight_mb = CLIENT_INFLIGHT_MB,
    };
    if (s->vault == NULL || s->vault[0] == '\0') {
        return fail(c,
                    err_setraw(&c->err, HBC_ECONFIG, "no vault given (--vault NAME or HBC_VAULT)"));
    }
    if (s->keyfile == NULL || s->passphrase == NULL) {
        return fail(c, err_setraw(&c->err, HBC_ECONFIG,
                                  "no key file or passphrase given (HBC_KEYFILE, HBC_PASSPHRASE)"));
    }
    int rv = repo_open(&o, &c->r, &c->err);
    if (rv != 0) {
        c->r = NULL;
        return fail(c, rv);
    }
    return 0;
}

void hbc_client_close(hbc_client *c)
{
    if (c == NULL) {
        return;
    }
    repo_close(c->r);
    hbc_free(c);
}

const char *hbc_client_errmsg(const hbc_client *c)
{
    return c != NULL ? c->err.msg : "out of memory";
}

static int ready(hbc_client *c)
{
    if (c->r == NULL) {
        return HBC_EINVAL;
    }
    err_clear(&c->err);
    return 0;
}

/* ------------------------------------------------------------------------- */

struct bridge {
    hbc_progress_cb progress; /* the application's */
    hbc_entry_error_cb error; /* the application's */
    void *arg;                /* its argument */
};

static void fill_rate(struct hbc_progress *p)
{
    p->rate = p->elapsed > 0 ? (double)p->bytes / p->elapsed : 0;
    p->eta = -1;
    if (p->totals_final && p->rate > 0 && p->bytes_total >= p->bytes) {
        p->eta = (double)(p->bytes_total - p->bytes) / p->rate;
    }
}

static void backup_progress_bridge(void *arg, const struct backup_progress *bp)
{
    struct bridge *b = arg;
    struct hbc_progress p = {
        .files = bp->files,
        .bytes = bp->bytes,
        .files_total = bp->files_total,
        .bytes_total = bp->bytes_total,
        .totals_final = bp->totals_final,
        .elapsed = bp->elapsed,
        .done = bp->done,
    };
    fill_rate(&p);
    b->progress(b->arg, &p);
}

static void error_bridge(void *arg, const char *path, int code, const char *msg)
{
    struct bridge *b = arg;
    if (b->error != NULL) {
        b->error(b->arg, path, code, msg);
    }
}

int hbc_backup(hbc_client *c, const struct hbc_backup_options *o, struct hbc_backup_summary *s)
{
    memset(s, 0, sizeof *s);
    if (ready(c) != 0) {
        return HBC_EINVAL;
    }
    struct bridge b = {.progress = o->progress, .error = o->skipped, .arg = o->arg};
    struct backup_options bo = {
        .paths = o->paths,
        .npaths = o->npaths,
        .parent = o->parent,
        .force_read = o->force_read != 0,
        .one_file_system = o->one_file_system != 0,
        .threads = o->threads,
        .progress = o->progress != NULL ? backup_progress_bridge : NULL,
        .skipped = error_bridge,
        .arg = &b,
    };
    struct backup_result res;
    int rv = backup_run(c->r, &bo, &res, &c->err);
    if (res.committed) {
        snap_id_hex(res.snapshot_id, s->snapshot);
    }
    if (res.has_parent) {
        snap_id_hex(res.parent_id, s->parent);
    }
    s->files = res.files;
    s->dirs = res.dirs;
    s->others = res.others;
    s->bytes = res.bytes;
    s->bytes_read = res.bytes_read;
    s->files_read = res.files_read;
    s->files_reused = res.files_reused;
    s->chunks = res.chunks;
    s->new_chunks = res.new_chunks;
    s->new_bytes = res.new_bytes;
    s->dedup_chunks = res.dedup_chunks;
    s->skipped = res.skipped;
    s->seconds = res.seconds;
    return rv != 0 ? fail(c, rv) : 0;
}

int hbc_snapshots(hbc_client *c, struct hbc_snapshot **out, size_t *n)
{
    *out = NULL;
    *n = 0;
    if (ready(c) != 0) {
        return HBC_EINVAL;
    }
    Hbc__SnapshotInfo **list = NULL;
    size_t count = 0;
    int rv = repo_snapshot_list(c->r, &list, &count, &c->err);
    if (rv != 0) {
        return fail(c, rv);
    }
    struct hbc_snapshot *s = hbc_calloc(count > 0 ? count : 1, sizeof *s);
    if (s == NULL) {
        rv = err_set(&c->err, HBC_ENOMEM, "snapshots");
    }
    for (size_t i = 0; i < count; i++) {
        if (s != NULL) {
            if (list[i]->snapshot_id.len == REPO_ID_LEN) {
                snap_id_hex(list[i]->snapshot_id.data, s[i].id);
            }
            s[i].time_ms = list[i]->time_ms;
            s[i].committed_ms = list[i]->committed_ms;
            s[i].files = list[i]->files;
            s[i].bytes = list[i]->bytes;
            s[i].chunks = list[i]->chunks;
            /* Records older than locks have no retain-until: 2192 days (docs/retention.md). */
            s[i].retain_until_ms = list[i]->has_retain_until_ms
                                       ? list[i]->retain_until_ms
                                       : list[i]->committed_ms + 2192ull * 86400000ull;
            s[i].governance = list[i]->lock_mode == HBC__LOCK_MODE__LOCK_GOVERNANCE;
            s[i].legal_hold = list[i]->legal_hold;
        }
        protobuf_c_message_free_unpacked(&list[i]->base, NULL);
    }
    hbc_free(list);
    if (rv != 0) {
        return fail(c, rv);
    }
    *out = s;
    *n = count;
    return 0;
}

void hbc_snapshots_free(struct hbc_snapshot *s)
{
    hbc_free(s);
}

/* ------------------------------------------------------------------------- */
/* ls                                                                        */

static const char *type_name(enum tree_type t)
{
    switch (t) {
    case TREE_FILE:
        return "file";
    case TREE_DIR:
        return "dir";
    case TREE_SYMLINK:
        return "symlink";
    case TREE_HARDLINK:
        return "hardlink";
    case TREE_FIFO:
        return "fifo";
    case TREE_CHAR:
        return "char";
    case TREE_BLOCK:
        return "block";
    case TREE_SOCKET:
        return "socket";
    }
    return "unknown";
}

struct ls {
    hbc_client *c; /* the client */
    hbc_ls_cb cb;  /* the application's */
    void *arg;     /* its argument */
    char *path;    /* TREE_MAX_PATH + 1 bytes: the current path */
};

static int ls_entry(struct ls *l, const struct tree_entry *en, const char *path)
{
    struct hbc_entry x = {
        .path = path,
        .type = type_name(en->type),
        .mode = en->mode,
        .uid = en->uid,
        .gid = en->gid,
        .mtime_ns = en->mtime_ns,
        .size = en->size,
        .target = en->type == TREE_SYMLINK    ? en->target
                  : en->type == TREE_HARDLINK ? en->link
                                              : NULL,
    };
    return l->cb(l->arg, &x) != 0 ? err_setraw(&l->c->err, HBC_ECANCELED, "listing stopped") : 0;
}

/* List the directory whose tree is id; l->path holds its path (plen bytes). */
static int ls_dir(struct ls *l, const uint8_t id[TREE_ID_LEN], size_t plen, unsigned depth)
{
    if (depth > 1024) {
        return err_set(&l->c->err, HBC_ETOOBIG, "directories nested too deep");
    }
    struct snap_dir *d;
    int rv = snap_dir_open(l->c->r, id, -1, NULL, &d, &l->c->err);
    if (rv != 0) {
        return rv;
    }
    const struct tree_entry *en;
    while ((rv = snap_dir_next(d, &en, &l->c->err)) == 1) {
        size_t nlen = strlen(en->name);
        if (plen + 1 + nlen > TREE_MAX_PATH) {
            rv = err_set(&l->c->err, HBC_ETOOBIG, "path too long");
            break;
        }
        size_t k = plen;
        if (plen > 0) {
            l->path[k++] = '/';
        }
        memcpy(l->path + k, en->name, nlen + 1);
        rv = ls_entry(l, en, l->path);
        if (rv == 0 && en->type == TREE_DIR) {
            uint8_t sub[TREE_ID_LEN];
            memcpy(sub, en->subtree, TREE_ID_LEN);
            rv = ls_dir(l, sub, k + nlen, depth + 1);
        }
        l->path[plen] = '\0';
        if (rv != 0) {
            break;
        }
    }
    snap_dir_close(d);
    return rv < 0 ? rv : 0;
}

int hbc_ls(hbc_client *c, const char *snapshot, const char *path, hbc_ls_cb cb, void *arg)
{
    if (ready(c) != 0) {
        return HBC_EINVAL;
    }
    Hbc__SnapshotInfo **list = NULL;
    size_t n = 0;
    int rv = repo_snapshot_list(c->r, &list, &n, &c->err);
    if (rv != 0) {
        return fail(c, rv);
    }
    uint8_t root[TREE_ID_LEN];
    const Hbc__SnapshotInfo *s;
    rv = snap_find(list, n, snapshot, &s, &c->err);
    if (rv == 0 && s->root_tree_id.len != TREE_ID_LEN) {
        rv = err_set(&c->err, HBC_EFORMAT, "snapshot record");
    }
    if (rv == 0) {
        memcpy(root, s->root_tree_id.data, TREE_ID_LEN);
    }
    for (size_t i = 0; i < n; i++) {
        protobuf_c_message_free_unpacked(&list[i]->base, NULL);
    }
    hbc_free(list);
    if (rv != 0) {
        return fail(c, rv);
    }
    struct ls l = {.c = c, .cb = cb, .arg = arg, .path = hbc_malloc(TREE_MAX_PATH + 1)};
    if (l.path == NULL) {
        return fail(c, err_set(&c->err, HBC_ENOMEM, "ls"));
    }
    /* Normalise path: no leading, trailing or doubled '/'. */
    size_t plen = 0;
    const char *p = path != NULL ? path : "";
    while (*p != '\0' && plen < TREE_MAX_PATH) {
        if (*p == '/' && (plen == 0 || l.path[plen - 1] == '/')) {
            p++;
            continue;
        }
        l.path[plen++] = *p++;
    }
    if (plen > 0 && l.path[plen - 1] == '/') {
        plen--;
    }
    l.path[plen] = '\0';
    if (plen == 0) {
        rv = ls_dir(&l, root, 0, 0);
    } else {
        /* The entry itself, from its parent directory, then what is below it. */
        char *slash = strrchr(l.path, '/');
        const char *name = slash != NULL ? slash + 1 : l.path;
        if (slash != NULL) {
            *slash = '\0';
        }
        enum tree_type type;
        uint8_t dir[TREE_ID_LEN];
        rv = snap_lookup(c->r, root, slash != NULL ? l.path : "", -1, &type, dir, &c->err);
        if (slash != NULL) {
            *slash = '/';
        }
        struct snap_dir *d = NULL;
        const struct tree_entry *en = NULL;
        if (rv == 1 && type == TREE_DIR) {
            rv = snap_dir_open(c->r, dir, -1, NULL, &d, &c->err);
            if (rv == 0) {
                rv = snap_dir_find(d, name, &en, &c->err);
            }
        } else if (rv == 1) {
            rv = 0;
        }
        if (rv == 0) {
            rv = err_setraw(&c->err, HBC_ENOTFOUND, "no such path in the snapshot");
        } else if (rv == 1) {
            rv = ls_entry(&l, en, l.path);
            if (rv == 0 && en->type == TREE_DIR) {
                uint8_t sub[TREE_ID_LEN];
                memcpy(sub, en->subtree, TREE_ID_LEN);
                rv = ls_dir(&l, sub, plen, 1);
            }
        }
        snap_dir_close(d);
    }
    hbc_free(l.path);
    return rv != 0 ? fail(c, rv) : 0;
}

/* ------------------------------------------------------------------------- */

static void restore_progress_bridge(void *arg, const struct restore_progress *rp)
{
    struct bridge *b = arg;
    struct hbc_progress p = {
        .files = rp->files,
        .bytes = rp->bytes,
        .bytes_total = rp->bytes_total,
        .totals_final = 1,
        .elapsed = rp->elapsed,
        .done = rp->done,
    };
    fill_rate(&p);
    b->progress(b->arg, &p);
}

int hbc_restore(hbc_client *c, const struct hbc_restore_options *o, struct hbc_restore_summary *s)
{
    memset(s, 0, sizeof *s);
    if (ready(c) != 0) {
        return HBC_EINVAL;
    }
    struct bridge b = {.progress = o->progress, .error = o->error, .arg = o->arg};
    struct restore_options ro = {
        .snapshot = o->snapshot,
        .target = o->target,
        .includes = o->includes,
        .nincludes = o->nincludes,
        .verify = o->verify != 0,
        .copy = o->copy,
        .fsync = o->fsync != 0,
        .record = o->no_record == 0,
        .threads = o->threads,
        .progress = o->progress != NULL ? restore_progress_bridge : NULL,
        .error = error_bridge,
        .arg = &b,
    };
    struct restore_result res;
    int rv = restore_run(c->r, &ro, &res, &c->err);
    if (res.files + res.dirs + res.others + res.errors > 0 || rv == 0) {
        snap_id_hex(res.snapshot_id, s->snapshot);
    }
    s->files = res.files;
    s->dirs = res.dirs;
    s->others = res.others;
    s->bytes = res.bytes;
    s->chunks = res.chunks;
    s->chunk_bytes = res.chunk_bytes;
    s->shards_read = res.shards_read;
    s->shard_errors = res.shard_errors;
    s->errors = res.errors;
    s->verified = res.verified;
    s->recorded = res.recorded;
    s->seconds = res.seconds;
    return rv != 0 ? fail(c, rv) : 0;
}
