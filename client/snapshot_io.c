/* Reading and naming what snapshots hold: ids, "latest", directory cursors over trees, chunk and
 * reference lists. */
#include "client/snapshot_io.h"

#include <ctype.h>
#include <string.h>
#include <strings.h>

#include "common/alloc.h"
#include "common/reflist.h"

void snap_id_hex(const uint8_t id[REPO_ID_LEN], char out[SNAP_ID_HEX + 1])
{
    static const char digits[] = "0123456789abcdef";
    for (size_t i = 0; i < REPO_ID_LEN; i++) {
        out[2 * i] = digits[id[i] >> 4];
        out[2 * i + 1] = digits[id[i] & 15];
    }
    out[SNAP_ID_HEX] = '\0';
}

int snap_find(Hbc__SnapshotInfo *const *list, size_t n, const char *spec,
              const Hbc__SnapshotInfo **out, struct err *e)
{
    *out = NULL;
    if (spec == NULL || spec[0] == '\0') {
        return err_setraw(e, HBC_EINVAL, "no snapshot given (an id, a prefix of one, or latest)");
    }
    if (strcmp(spec, "latest") == 0) {
        if (n == 0) {
            return err_setraw(e, HBC_ENOTFOUND, "the vault has no snapshot yet");
        }
        *out = list[n - 1];
        return 0;
    }
    size_t len = strlen(spec);
    if (len < 4 || len > SNAP_ID_HEX) {
        return err_setraw(e, HBC_EINVAL,
                          "snapshot '%.40s': give 4 to %d hex digits of its id, or latest", spec,
                          SNAP_ID_HEX);
    }
    for (size_t i = 0; i < len; i++) {
        if (!isxdigit((unsigned char)spec[i])) {
            return err_setraw(e, HBC_EINVAL, "snapshot '%.40s' is not a hex id", spec);
        }
    }
    const Hbc__SnapshotInfo *found = NULL;
    size_t matches = 0;
    for (size_t i = 0; i < n; i++) {
        char hex[SNAP_ID_HEX + 1];
        if (list[i]->snapshot_id.len != REPO_ID_LEN) {
            continue;
        }
        snap_id_hex(list[i]->snapshot_id.data, hex);
        if (strncasecmp(hex, spec, len) == 0) {
            found = list[i];
            matches++;
        }
    }
    if (matches == 0) {
        return err_setraw(e, HBC_ENOTFOUND, "no snapshot %s in this vault", spec);
    }
    if (matches > 1) {
        return err_setraw(e, HBC_EINVAL,
                          "snapshot prefix %s matches %zu snapshots: give more digits", spec,
                          matches);
    }
    *out = found;
    return 0;
}

int snap_tree_fetch(struct repo *r, const uint8_t id[TREE_ID_LEN], enum tree_kind kind, int copy,
                    struct tree **out, struct repo_read_stats *stats, struct err *e)
{
    *out = NULL;
    uint8_t *plain = NULL;
    size_t len = 0;
    struct repo_read_stats st = {0};
    int rv = repo_get_chunk(r, id, copy, &plain, &len, &st, e);
    if (stats != NULL) {
        stats->shards_read += st.shards_read;
        stats->shard_errors += st.shard_errors;
    }
    if (rv != 0) {
        return err_wrap_code(e, rv, "read tree");
    }
    rv = tree_decode(plain, len, kind, out, e);
    hbc_free(plain);
    if (rv != 0) {
        return err_wrap_code(e, rv, "decode tree");
    }
    return 0;
}

/* ------------------------------------------------------------------------- */
/* Directory cursors.                                                        */

struct snap_dir {
    struct repo *r;                 /* where parts come from */
    int copy;                       /* which copy to read (-1: any) */
    struct repo_read_stats *stats;  /* accumulates reads, or NULL */
    struct tree *head;              /* the directory's head */
    struct tree *part;              /* the part being read, or NULL */
    size_t next_part;               /* index in head->parts of the next part to load */
    struct tree *cur;               /* head or part: the object being read */
    size_t pos;                     /* next entry of cur */
    struct tree *prev;              /* the previous object, kept for the order check */
    const struct tree_entry *ahead; /* snap_dir_find() looked at this one and left it */
};

/* A cursor on a directory whose head is decoded already (taken). */
static int dir_new(struct repo *r, int copy, struct repo_read_stats *stats, struct tree *head,
                   struct snap_dir **out, struct err *e)
{
    struct snap_dir *d = hbc_calloc(1, sizeof *d);
    if (d == NULL) {
        tree_free(head);
        return err_set(e, HBC_ENOMEM, "directory cursor");
    }
    d->r = r;
    d->copy = copy;
    d->stats = stats;
    d->head = head;
    d->cur = d->head->nparts > 0 ? NULL : d->head;
    *out = d;
    return 0;
}

int snap_dir_open(struct repo *r, const uint8_t head[TREE_ID_LEN], int copy,
                  struct repo_read_stats *stats, struct snap_dir **out, struct err *e)
{
    *out = NULL;
    struct tree *h = NULL;
    int rv = snap_tree_fetch(r, head, TREE_HEAD, copy, &h, stats, e);
    if (rv != 0) {
        return rv;
    }
    return dir_new(r, copy, stats, h, out, e);
}

int snap_dir_open_plain(struct repo *r, const uint8_t *plain, size_t len, int copy,
                        struct repo_read_stats *stats, struct snap_dir **out, struct err *e)
{
    *out = NULL;
    struct tree *h = NULL;
    int rv = tree_decode(plain, len, TREE_HEAD, &h, e);
    if (rv != 0) {
        return err_wrap_code(e, rv, "decode tree");
    }
    return dir_new(r, copy, stats, h, out, e);
}

void snap_dir_close(struct snap_dir *d)
{
    if (d == NULL) {
        return;
    }
    if (d->prev != d->head) {
        tree_free(d->prev);
    }
    if (d->part != d->prev) {
        tree_free(d->part);
    }
    tree_free(d->head);
    hbc_free(d);
}

/* Make the next object current: the next part, or the head after the last part. */
static int dir_advance(struct snap_dir *d, struct err *e)
{
    struct tree *old = d->cur;
    struct tree *next;
    if (d->next_part < d->head->nparts) {
        int rv = snap_tree_fetch(d->r, d->head->parts[d->next_part], TREE_PART, d->copy, &next,
                                 d->stats, e);
        if (rv != 0) {
            return rv;
        }
        d->next_part++;
    } else {
        next = d->head;
    }
    if (old != NULL) {
        int rv = tree_check_sequence(old, next, e);
        if (rv != 0) {
            if (next != d->head) {
                tree_free(next);
            }
            return err_wrap_code(e, rv, "directory");
        }
    }
    if (d->prev != NULL && d->prev != d->head) {
        tree_free(d->prev);
    }
    d->prev = old;
    d->part = next != d->head ? next : NULL;
    d->cur = next;
    d->pos = 0;
    return 0;
}

int snap_dir_next(struct snap_dir *d, const struct tree_entry **en, struct err *e)
{
    if (d->ahead != NULL) {
        *en = d->ahead;
        d->ahead = NULL;
        return 1;
    }
    for (;;) {
        if (d->cur != NULL && d->pos < d->cur->count) {
            *en = &d->cur->entries[d->pos++];
            return 1;
        }
        if (d->cur == d->head) {
            return 0;
        }
        int rv = dir_advance(d, e);
        if (rv != 0) {
            return rv;
        }
    }
}

int snap_dir_find(struct snap_dir *d, const char *name, const struct tree_entry **en, struct err *e)
{
    for (;;) {
        const struct tree_entry *x;
        int rv = snap_dir_next(d, &x, e);
        if (rv <= 0) {
            return rv;
        }
        int c = strcmp(x->name, name);
        if (c == 0) {
            *en = x;
            return 1;
        }
        if (c > 0) {
            d->ahead = x; /* later names may still ask for it */
            return 0;
        }
    }
}

int snap_file_chunks(struct repo *r, const struct tree_entry *en, int copy,
                     struct repo_read_stats *stats, struct tree_chunk **out, size_t *n,
                     struct err *e)
{
    *out = NULL;
    *n = 0;
    if (en->nlists == 0) {
        if (en->nchunks == 0) {
            return 0;
        }
        struct tree_chunk *c = hbc_malloc(en->nchunks * sizeof *c);
        if (c == NULL) {
            return err_set(e, HBC_ENOMEM, "chunk list");
        }
        memcpy(c, en->chunks, en->nchunks * sizeof *c);
        *out = c;
        *n = en->nchunks;
        return 0;
    }
    struct tree_chunk *all = NULL;
    size_t count = 0;
    uint64_t sum = 0;
    for (size_t i = 0; i < en->nlists; i++) {
        uint8_t *plain = NULL;
        size_t len = 0;
        struct repo_read_stats st = {0};
        int rv = repo_get_chunk(r, en->lists[i], copy, &plain, &len, &st, e);
        if (stats != NULL) {
            stats->shards_read += st.shards_read;
            stats->shard_errors += st.shard_errors;
        }
        if (rv != 0) {
            hbc_free(all);
            return err_wrap_code(e, rv, "read chunk list");
        }
        struct tree_chunk *part = NULL;
        size_t np = 0;
        rv = tree_chunk_list_decode(plain, len, &part, &np, e);
        hbc_free(plain);
        if (rv != 0) {
            hbc_free(all);
            return err_wrap_code(e, rv, "chunk list");
        }
        struct tree_chunk *grown = hbc_realloc(all, (count + np) * sizeof *all);
        if (grown == NULL) {
            hbc_free(part);
            hbc_free(all);
            return err_set(e, HBC_ENOMEM, "chunk list");
        }
        all = grown;
        memcpy(all + count, part, np * sizeof *part);
        for (size_t j = 0; j < np; j++) {
            sum += part[j].len;
        }
        count += np;
        hbc_free(part);
    }
    if (sum != en->size) {
        hbc_free(all);
        return err_set(e, HBC_EFORMAT, "chunk lists add up to %llu bytes, the entry says %llu",
                       (unsigned long long)sum, (unsigned long long)en->size);
    }
    *out = all;
    *n = count;
    return 0;
}

int snap_lookup(struct repo *r, const uint8_t root[TREE_ID_LEN], const char *path, int copy,
                enum tree_type *type, uint8_t dir[TREE_ID_LEN], struct err *e)
{
    uint8_t cur[TREE_ID_LEN];
    memcpy(cur, root, TREE_ID_LEN);
    *type = TREE_DIR;
    const char *p = path;
    while (*p != '\0') {
        while (*p == '/') {
            p++;
        }
        if (*p == '\0') {
            break;
        }
        const char *end = strchr(p, '/');
        size_t len = end != NULL ? (size_t)(end - p) : strlen(p);
        if (len > TREE_MAX_NAME) {
            return 0;
        }
        char name[TREE_MAX_NAME + 1];
        memcpy(name, p, len);
        name[len] = '\0';
        p += len;
        if (*type != TREE_DIR) {
            return 0; /* a component below a non-directory */
        }
        struct snap_dir *d;
        int rv = snap_dir_open(r, cur, copy, NULL, &d, e);
        if (rv != 0) {
            return rv;
        }
        const struct tree_entry *en;
        rv = snap_dir_find(d, name, &en, e);
        if (rv == 1) {
            *type = en->type;
            if (en->type == TREE_DIR) {
                memcpy(cur, en->subtree, TREE_ID_LEN);
            }
        }
        snap_dir_close(d);
        if (rv != 1) {
            return rv;
        }
    }
    if (*type == TREE_DIR) {
        memcpy(dir, cur, TREE_ID_LEN);
    }
    return 1;
}

/* ------------------------------------------------------------------------- */
/* Reference lists.                                                          */

int snap_reflist_encode(const uint8_t (*parts)[TREE_ID_LEN], size_t nparts,
                        const uint8_t (*ids)[TREE_ID_LEN], size_t n, uint8_t **out, size_t *len,
                        struct err *e)
{
    return reflist_encode(parts, nparts, ids, n, out, len, e);
}

int snap_reflist_decode(const uint8_t *data, size_t len, const uint8_t (**parts)[TREE_ID_LEN],
                        size_t *nparts, const uint8_t (**ids)[TREE_ID_LEN], size_t *n,
                        struct err *e)
{
    return reflist_decode(data, len, parts, nparts, ids, n, e);
}

static int reflist_put(struct repo *r, const uint8_t (*parts)[TREE_ID_LEN], size_t nparts,
                       const uint8_t (*ids)[TREE_ID_LEN], size_t n, uint8_t id[TREE_ID_LEN],
                       struct err *e)
{
    uint8_t *buf;
    size_t len;
    int rv = snap_reflist_encode(parts, nparts, ids, n, &buf, &len, e);
    if (rv != 0) {
        return rv;
    }
    /* Plaintext under its SHA-256, on every node: the cluster's GC reads it (common/reflist.h). */
    rv = repo_plain_id(buf, len, id, e);
    if (rv == 0) {
        rv = repo_put_plain(r, id, buf, len, NULL, e);
    }
    hbc_free(buf);
    return rv != 0 ? err_wrap_code(e, rv, "store reference list") : 0;
}

int snap_reflist_store(struct repo *r, const uint8_t (*ids)[TREE_ID_LEN], size_t n,
                       uint8_t head[TREE_ID_LEN], struct err *e)
{
    size_t nparts = n > SNAP_REFLIST_PER_OBJECT ? (n - 1) / SNAP_REFLIST_PER_OBJECT : 0;
    if (nparts > SNAP_REFLIST_MAX_PARTS) {
        return err_set(e, HBC_ETOOBIG, "reference list of %zu ids", n);
    }
    uint8_t(*parts)[TREE_ID_LEN] = NULL;
    if (nparts > 0) {
        parts = hbc_malloc(nparts * TREE_ID_LEN);
        if (parts == NULL) {
            return err_set(e, HBC_ENOMEM, "reference list");
        }
    }
    int rv = 0;
    for (size_t i = 0; i < nparts && rv == 0; i++) {
        rv = reflist_put(r, NULL, 0, ids + i * SNAP_REFLIST_PER_OBJECT, SNAP_REFLIST_PER_OBJECT,
                         parts[i], e);
    }
    if (rv == 0) {
        size_t done = nparts * SNAP_REFLIST_PER_OBJECT;
        rv = reflist_put(r, (const uint8_t(*)[TREE_ID_LEN])parts, nparts, ids + done, n - done,
                         head, e);
    }
    hbc_free(parts);
    return rv;
}

/* Append one object's ids to *all, checking that they continue the order. */
static int reflist_append(uint8_t (**all)[TREE_ID_LEN], size_t *count,
                          const uint8_t (*ids)[TREE_ID_LEN], size_t n, struct err *e)
{
    if (n == 0) {
        return 0;
    }
    if (*count > 0 && memcmp((*all)[*count - 1], ids[0], TREE_ID_LEN) >= 0) {
        return err_set(e, HBC_EFORMAT, "reference list: ids not increasing across objects");
    }
    uint8_t(*grown)[TREE_ID_LEN] = hbc_realloc(*all, (*count + n) * TREE_ID_LEN);
    if (grown == NULL) {
        return err_set(e, HBC_ENOMEM, "reference list");
    }
    memcpy(grown + *count, ids, n * TREE_ID_LEN);
    *all = grown;
    *count += n;
    return 0;
}

int snap_reflist_load(struct repo *r, const uint8_t head[TREE_ID_LEN], uint8_t (**ids)[TREE_ID_LEN],
                      size_t *n, struct err *e)
{
    *ids = NULL;
    *n = 0;
    uint8_t *hbuf = NULL;
    size_t hlen = 0;
    int rv = repo_get_plain(r, head, &hbuf, &hlen, e);
    if (rv != 0) {
        return err_wrap_code(e, rv, "read reference list");
    }
    const uint8_t(*parts)[TREE_ID_LEN];
    const uint8_t(*hids)[TREE_ID_LEN];
    size_t nparts;
    size_t nh;
    rv = snap_reflist_decode(hbuf, hlen, &parts, &nparts, &hids, &nh, e);
    uint8_t(*all)[TREE_ID_LEN] = NULL;
    size_t count = 0;
    for (size_t i = 0; rv == 0 && i < nparts; i++) {
        uint8_t *pbuf = NULL;
        size_t plen = 0;
        rv = repo_get_plain(r, parts[i], &pbuf, &plen, e);
        if (rv != 0) {
            err_wrap(e, "read reference list part");
            break;
        }
        const uint8_t(*pp)[TREE_ID_LEN];
        const uint8_t(*pids)[TREE_ID_LEN];
        size_t npp;
        size_t np;
        rv = snap_reflist_decode(pbuf, plen, &pp, &npp, &pids, &np, e);
        if (rv == 0 && npp != 0) {
            rv = err_set(e, HBC_EFORMAT, "reference list: a part names parts");
        }
        if (rv == 0) {
            rv = reflist_append(&all, &count, pids, np, e);
        }
        hbc_free(pbuf);
    }
    if (rv == 0) {
        rv = reflist_append(&all, &count, hids, nh, e);
    }
    hbc_free(hbuf);
    if (rv != 0) {
        hbc_free(all);
        return rv;
    }
    *ids = all;
    *n = count;
    return 0;
}

int snap_commit_fenced(struct repo *r, Hbc__SnapshotCommit *sc, const uint8_t (*ids)[TREE_ID_LEN],
                       size_t n, uint64_t *index, struct err *e)
{
    for (unsigned attempt = 0;; attempt++) {
        int rv = repo_snapshot_commit(r, sc, index, e);
        if (rv != HBC_EGCFENCE || attempt == SNAP_FENCE_RETRIES) {
            return rv;
        }
        /* The fresh index first: every later answer reflects the sweeps up to it. */
        uint64_t fresh = 0;
        rv = repo_gc_safe_index(r, &fresh, e);
        if (rv != 0) {
            return err_wrap_code(e, rv, "commit after a garbage collection");
        }
        bool *present = hbc_malloc(n > 0 ? n : 1);
        if (present == NULL) {
            return err_set(e, HBC_ENOMEM, "commit after a garbage collection");
        }
        rv = repo_have(r, (const uint8_t(*)[REPO_CHUNK_ID])ids, n, present, e);
        size_t missing = 0;
        for (size_t i = 0; rv == 0 && i < n; i++) {
            missing += present[i] ? 0 : 1;
        }
        hbc_free(present);
        if (rv != 0) {
            return err_wrap_code(e, rv, "commit after a garbage collection");
        }
        if (missing > 0) {
            return err_setraw(e, HBC_EGCFENCE,
                              "%zu of the %zu chunks this backup uses were removed by a garbage "
                              "collection that ran during it; run the backup again",
                              missing, n);
        }
        uint8_t head[TREE_ID_LEN];
        rv = snap_reflist_store(r, ids, n, head, e);
        if (rv != 0) {
            return rv;
        }
        if (sc->ref_list_id.len != TREE_ID_LEN ||
            memcmp(head, sc->ref_list_id.data, TREE_ID_LEN) != 0) {
            return err_setraw(e, HBC_EINTERNAL, "reference list changed between two stores");
        }
        sc->has_gc_start_index = true;
        sc->gc_start_index = fresh;
    }
}
