/*
 * Chunks on the cluster: ids, existence, put (seal, erasure-code once, send
 * the same shards to every copy's nodes) and get (data shards first, parity
 * and other copies on failure). Runs on the caller's thread; only the
 * network requests go to the network thread (repo_net.c).
 */
#include <stdio.h>
#include <string.h>

#include <openssl/crypto.h>

#include "client/repo_internal.h"
#include "common/alloc.h"
#include "common/erasure.h"
#include "common/frame.h"
#include "common/log.h"
#include "common/shard_scheme.h"

#define MAX_SLOTS (PLACEMENT_MAX_COPIES * PLACEMENT_MAX_WIDTH)

/*
 * Per-copy schemes: copy c's shards are RS(k_c, m_c) of the same sealed
 * object (pmap_copy_k/m); placement arrays have pmap_stride() slots per copy,
 * the ones past a copy's width PMAP_NONE. Copies of one scheme hold the same
 * shards, so a put encodes once per distinct scheme.
 */
static unsigned stride_of(const struct repo *r)
{
    return pmap_stride(&r->pv);
}

static unsigned copy_k(const struct repo *r, unsigned c)
{
    return pmap_copy_k(&r->pv, c);
}

static unsigned copy_width(const struct repo *r, unsigned c)
{
    return pmap_copy_width(&r->pv, c);
}

/* ---- pooled per-thread state and the in-flight budget ---- */

static int worker_take(struct repo *r, struct repo_worker **out, struct err *e)
{
    uv_mutex_lock(&r->mu);
    struct repo_worker *w = r->workers;
    if (w != NULL) {
        r->workers = w->next;
    }
    uv_mutex_unlock(&r->mu);
    if (w == NULL) {
        w = hbc_calloc(1, sizeof *w);
        if (w == NULL) {
            return err_set(e, HBC_ENOMEM, "worker");
        }
        int rv = chunk_ctx_new(&w->cc, e);
        if (rv == 0) {
            /* The keyed template is shared: copy it under the lock. */
            uv_mutex_lock(&r->mu);
            rv = crypto_hmac_dup(&w->hmac, r->hmac, e);
            uv_mutex_unlock(&r->mu);
        }
        if (rv != 0) {
            chunk_ctx_free(w->cc);
            hbc_free(w);
            return rv;
        }
    }
    *out = w;
    return 0;
}

static void worker_give(struct repo *r, struct repo_worker *w)
{
    uv_mutex_lock(&r->mu);
    w->next = r->workers;
    r->workers = w;
    uv_mutex_unlock(&r->mu);
}

void repo_workers_free(struct repo *r)
{
    while (r->workers != NULL) {
        struct repo_worker *w = r->workers;
        r->workers = w->next;
        chunk_ctx_free(w->cc);
        crypto_hmac_free(w->hmac);
        hbc_free(w->buf);
        hbc_free(w);
    }
}

/* Reserve bytes of the in-flight budget; a call larger than the budget runs alone. */
static void flow_acquire(struct repo *r, size_t bytes)
{
    uv_mutex_lock(&r->mu);
    while (r->inflight > 0 && r->inflight + bytes > r->max_inflight) {
        uv_cond_wait(&r->flow_cv, &r->mu);
    }
    r->inflight += bytes;
    uv_mutex_unlock(&r->mu);
}

static void flow_release(struct repo *r, size_t bytes)
{
    uv_mutex_lock(&r->mu);
    r->inflight -= bytes;
    uv_cond_broadcast(&r->flow_cv);
    uv_mutex_unlock(&r->mu);
}

static int need_vault(const struct repo *r, const char *what, struct err *e)
{
    if (!r->has_vault) {
        return err_setraw(e, HBC_EINVAL, "%s: no vault is open", what);
    }
    return 0;
}

/* Eight hex digits of an id for log lines and messages. */
static void short_hex(const uint8_t *id, char out[9])
{
    snprintf(out, 9, "%02x%02x%02x%02x", id[0], id[1], id[2], id[3]);
}

/* Shards copy c needs durable: k+1 when its shards sit on k+1 or more nodes, otherwise all. */
static unsigned copy_needs(const struct repo *r, unsigned c, const unsigned *slots)
{
    unsigned width = copy_width(r, c);
    unsigned k = copy_k(r, c);
    unsigned distinct = 0;
    for (unsigned s = 0; s < width; s++) {
        bool seen = false;
        for (unsigned t = 0; t < s && !seen; t++) {
            seen = slots[t] == slots[s];
        }
        distinct += seen ? 0 : 1;
    }
    return distinct >= k + 1 ? k + 1 : width;
}

int repo_chunk_id(struct repo *r, const void *plain, size_t len, uint8_t id[REPO_CHUNK_ID],
                  struct err *e)
{
    int rv = need_vault(r, "chunk id", e);
    if (rv != 0) {
        return rv;
    }
    struct repo_worker *w = NULL;
    rv = worker_take(r, &w, e);
    if (rv != 0) {
        return rv;
    }
    rv = crypto_hmac_compute(w->hmac, plain, len, id, e);
    worker_give(r, w);
    return rv;
}

/* ---- get ---- */

/* The shards fetched for one copy. */
struct fetch {
    Hbc__Frame *replies[PLACEMENT_MAX_WIDTH]; /* kept until the object is rebuilt */
    size_t nreplies;                          /* how many */
    const uint8_t *blob[PLACEMENT_MAX_WIDTH]; /* slot → encoded shard (inside a reply), or NULL */
    size_t len[PLACEMENT_MAX_WIDTH];          /* its length */
    char why[200];                            /* the first failure met */
};

static void fetch_free(struct fetch *f)
{
    for (size_t i = 0; i < f->nreplies; i++) {
        frame_free(f->replies[i]);
    }
    f->nreplies = 0;
}

/* Fetch the slots in mask of copy c whose nodes are slots[]; count what was read and missed. */
static void fetch_shards(struct repo *r, unsigned c, const uint8_t id[REPO_CHUNK_ID],
                         const unsigned *slots, uint32_t mask, struct fetch *f,
                         struct repo_read_stats *st)
{
    const unsigned width = copy_width(r, c);
    unsigned tnode[PLACEMENT_MAX_WIDTH];
    size_t ntargets = 0;
    struct node_client_key keys[PLACEMENT_MAX_WIDTH];
    struct repo_req reqs[PLACEMENT_MAX_WIDTH];
    size_t used = 0;
    /* Group the wanted slots by node, keys of one node contiguous. */
    for (unsigned s = 0; s < width; s++) {
        if (!(mask & ((uint32_t)1 << s)) || slots[s] == PMAP_NONE) {
            continue; /* PMAP_NONE: an older epoch's node that has left the cluster */
        }
        size_t t = 0;
        while (t < ntargets && tnode[t] != slots[s]) {
            t++;
        }
        if (t == ntargets) {
            tnode[ntargets++] = slots[s];
        }
    }
    for (size_t t = 0; t < ntargets; t++) {
        size_t first = used;
        for (unsigned s = 0; s < width; s++) {
            if ((mask & ((uint32_t)1 << s)) && slots[s] == tnode[t]) {
                keys[used++] = (struct node_client_key){
                    .vault_id = r->vault_id, .chunk_id = id, .index = pmap_slot(&r->pv, c, s)};
            }
        }
        reqs[t] = (struct repo_req){.addr = r->nodes[tnode[t]].addr,
                                    .node_id = r->nodes[tnode[t]].node_id,
                                    .kind = REPO_REQ_GET,
                                    .keys = &keys[first],
                                    .nkeys = used - first};
    }
    /* Budget: a chunk object is at most about CHUNK_OBJECT_MAX_PLAINTEXT; these slots' share. */
    size_t bytes = (chunk_object_max_sealed(CHUNK_OBJECT_MAX_PLAINTEXT) / copy_k(r, c) + 1) * used;
    flow_acquire(r, bytes);
    repo_net_run(r->net, reqs, ntargets);
    flow_release(r, bytes);
    for (size_t t = 0; t < ntargets; t++) {
        if (reqs[t].status != 0) {
            st->shard_errors += reqs[t].nkeys;
            if (f->why[0] == '\0') {
                snprintf(f->why, sizeof f->why, "%.199s", reqs[t].msg);
            }
            continue;
        }
        Hbc__Frame *reply = reqs[t].reply;
        f->replies[f->nreplies++] = reply;
        const Hbc__GetShardsReply *g = reply->get_shards_reply;
        for (size_t i = 0; i < g->n_shards; i++) {
            const Hbc__ShardBlob *b = g->shards[i];
            st->shards_read++;
            uint32_t slot = 0;
            if (b->index < width && f->blob[b->index] == NULL &&
                shard_slot_from_wire(b->index, b->has_scheme_k, b->scheme_k, b->has_scheme_m,
                                     b->scheme_m, &slot, NULL) == 0 &&
                slot == pmap_slot(&r->pv, c, b->index)) {
                f->blob[b->index] = b->data.data;
                f->len[b->index] = b->data.len;
            }
        }
        st->shard_errors += g->n_missing;
        if (g->n_missing > 0 && f->why[0] == '\0') {
            snprintf(f->why, sizeof f->why, "node %s: %zu shard(s) missing", reqs[t].node_id,
                     g->n_missing);
        }
    }
}

/* Drop the fetched blobs that fail their checks (counting them), so that only intact ones remain.
 */
static void drop_bad(struct repo *r, unsigned c, const uint8_t id[REPO_CHUNK_ID], struct fetch *f,
                     struct repo_read_stats *st)
{
    for (unsigned s = 0; s < copy_width(r, c); s++) {
        if (f->blob[s] == NULL) {
            continue;
        }
        struct erasure_shard_info info;
        struct err e;
        err_clear(&e);
        int rv = erasure_shard_decode(f->blob[s], f->len[s], &info, NULL, &e);
        if (rv == 0 &&
            (info.index != s || info.k != copy_k(r, c) || info.m != pmap_copy_m(&r->pv, c) ||
             memcmp(info.vault_id, r->vault_id, REPO_ID_LEN) != 0 ||
             memcmp(info.chunk_id, id, REPO_CHUNK_ID) != 0)) {
            rv = err_setraw(&e, HBC_EFORMAT, "shard %u is another stripe's", s);
        }
        if (rv != 0) {
            st->shard_errors++;
            if (f->why[0] == '\0') {
                snprintf(f->why, sizeof f->why, "%.199s", e.msg);
            }
            f->blob[s] = NULL;
        }
    }
}

/* Open (authenticate) the sealed object and check its chunk id; *plain is new (hbc_free). */
static int open_object(struct repo *r, struct repo_worker *w, const uint8_t id[REPO_CHUNK_ID],
                       const uint8_t *obj, size_t olen, uint8_t **plain, size_t *len, struct err *e)
{
    struct chunk_object_info info;
    int rv = chunk_object_peek(obj, olen, &info, e);
    if (rv != 0) {
        return rv;
    }
    uint8_t *out = hbc_malloc(info.plaintext_length > 0 ? info.plaintext_length : 1);
    if (out == NULL) {
        return err_set(e, HBC_ENOMEM, "%llu-byte chunk", (unsigned long long)info.plaintext_length);
    }
    size_t n = 0;
    rv = chunk_object_open(w->cc, &r->ckey, r->vault_id, id, obj, olen, out, info.plaintext_length,
                           &n, e);
    if (rv == 0) {
        rv = chunk_object_verify_id(w->hmac, out, n, id, e);
    }
    if (rv != 0) {
        OPENSSL_cleanse(out, info.plaintext_length);
        hbc_free(out);
        return rv;
    }
    *plain = out;
    *len = n;
    return 0;
}

/*
 * The healthy path: rebuild from f's blobs without their SHA-256 (their
 * headers are still checked), into the worker's scratch buffer, then open
 * and check the id. The AES-GCM tag authenticates every byte of the object
 * and the chunk id its plaintext, so when both pass the shards' checksums
 * could add nothing (and each node checks its own copy's SHA-256 when it
 * reads a shard). When either fails, the caller takes the checked way
 * (rebuild_open and what follows), which tells the bad shards by their
 * SHA-256 and counts them.
 */
static int fast_open(struct repo *r, struct repo_worker *w, unsigned c,
                     const uint8_t id[REPO_CHUNK_ID], struct fetch *f, uint8_t **plain, size_t *len,
                     struct err *e)
{
    const uint8_t *obj = NULL;
    size_t olen = 0;
    int rv = erasure_shards_rebuild_unverified(f->blob, f->len, copy_width(r, c), r->vault_id, id,
                                               &w->buf, &w->cap, &obj, &olen, e);
    if (rv == 0) {
        rv = open_object(r, w, id, obj, olen, plain, len, e);
    }
    return rv;
}

/* Rebuild the object from f's blobs, then open it and check the id. */
static int rebuild_open(struct repo *r, struct repo_worker *w, unsigned c,
                        const uint8_t id[REPO_CHUNK_ID], struct fetch *f, uint8_t **plain,
                        size_t *len, struct err *e)
{
    uint8_t *obj = NULL;
    size_t olen = 0;
    int rv =
        erasure_shards_rebuild(f->blob, f->len, copy_width(r, c), r->vault_id, id, &obj, &olen, e);
    if (rv == 0) {
        rv = open_object(r, w, id, obj, olen, plain, len, e);
    }
    hbc_free(obj);
    return rv;
}

/*
 * The rebuilt object did not authenticate although every shard passed its
 * SHA-256: one shard is intact as bytes but belongs to another seal (left by
 * a put that failed half-way) or was forged. With every shard of the copy at
 * hand, rebuild without each one in turn; the set that opens and matches the
 * chunk id wins. Only on this failure path: at most k+m extra rebuilds.
 */
static int leave_one_out(struct repo *r, struct repo_worker *w, unsigned c,
                         const uint8_t id[REPO_CHUNK_ID], const unsigned *slots, struct fetch *f,
                         bool have_parity, uint8_t **plain, size_t *len, struct repo_read_stats *st,
                         struct err *e)
{
    const unsigned width = copy_width(r, c);
    if (!have_parity) {
        fetch_shards(r, c, id, slots,
                     (((uint32_t)1 << width) - 1) & ~(((uint32_t)1 << copy_k(r, c)) - 1), f, st);
    }
    int rv = e != NULL && e->code != 0 ? e->code : HBC_EAUTH;
    for (unsigned x = 0; x < width; x++) {
        if (f->blob[x] == NULL) {
            continue;
        }
        struct fetch without = *f;
        without.blob[x] = NULL;
        struct err xe;
        err_clear(&xe);
        if (rebuild_open(r, w, c, id, &without, plain, len, &xe) == 0) {
            st->shard_errors++;
            char idhex[9];
            short_hex(id, idhex);
            hbc_log(LOG_WARN, "event=shard_foreign chunk=%s index=%u node=%s", idhex, x,
                    r->nodes[slots[x]].node_id);
            return 0;
        }
    }
    return rv;
}

/* Read one copy whose nodes are slots[]: data shards first, then parity, then leave-one-out. */
static int read_copy(struct repo *r, struct repo_worker *w, unsigned c,
                     const uint8_t id[REPO_CHUNK_ID], const unsigned *slots, struct fetch *f,
                     uint8_t **plain, size_t *len, struct repo_read_stats *st, struct err *ce)
{
    const unsigned width = copy_width(r, c);
    const unsigned k = copy_k(r, c);
    const uint32_t data_mask = ((uint32_t)1 << k) - 1;
    const uint32_t all_mask = ((uint32_t)1 << width) - 1;
    /* Data shards first: a healthy read needs nothing else and no decoding. */
    fetch_shards(r, c, id, slots, data_mask, f, st);
    int rv = fast_open(r, w, c, id, f, plain, len, ce);
    if (rv == 0 || rv == HBC_ENOMEM) {
        return rv;
    }
    /* Something is wrong: the same shards again, each checked by its SHA-256. */
    err_clear(ce);
    rv = rebuild_open(r, w, c, id, f, plain, len, ce);
    bool have_parity = false;
    if (rv == HBC_ETOOFEW && width > k) {
        drop_bad(r, c, id, f, st);
        fetch_shards(r, c, id, slots, all_mask & ~data_mask, f, st);
        have_parity = true;
        err_clear(ce);
        rv = rebuild_open(r, w, c, id, f, plain, len, ce);
    }
    if (rv != 0 && rv != HBC_ETOOFEW && rv != HBC_ENOMEM && width > k) {
        rv = leave_one_out(r, w, c, id, slots, f, have_parity, plain, len, st, ce);
    }
    return rv;
}

int repo_get_chunk(struct repo *r, const uint8_t id[REPO_CHUNK_ID], int copy, uint8_t **plain,
                   size_t *len, struct repo_read_stats *stats, struct err *e)
{
    *plain = NULL;
    *len = 0;
    int rv = need_vault(r, "get chunk", e);
    if (rv != 0) {
        return rv;
    }
    if (copy >= (int)r->copies) {
        return err_setraw(e, HBC_EINVAL, "get chunk: copy %d of a vault with %u copies", copy,
                          r->copies);
    }
    const unsigned width = stride_of(r);
    unsigned place[MAX_SLOTS];
    unsigned copies = copy >= 0 ? (unsigned)copy + 1 : r->copies;
    rv = repo_place(r, id, copies, width, place, e);
    if (rv != 0) {
        return err_wrap_code(e, rv, "get chunk");
    }
    struct repo_worker *w = NULL;
    rv = worker_take(r, &w, e);
    if (rv != 0) {
        return rv;
    }
    struct repo_read_stats st = {0};
    char idhex[9];
    short_hex(id, idhex);
    char why[400] = "";
    size_t why_len = 0;
    rv = HBC_ETOOFEW;
    unsigned older[MAX_SLOTS];
    for (unsigned c = copy >= 0 ? (unsigned)copy : 0; c < copies; c++) {
        const unsigned *slots = place + c * width;
        struct fetch f = {0};
        struct err ce;
        err_clear(&ce);
        /*
         * Epoch fallback: while the chunk's group has not settled in the
         * current epoch, its shards may still sit where an older epoch put
         * them; try those epochs, newest first, before the next copy.
         */
        for (size_t nth = 1;; nth++) {
            rv = read_copy(r, w, c, id, slots, &f, plain, len, &st, &ce);
            if (rv == 0 || rv == HBC_ENOMEM ||
                repo_place_epoch(r, id, nth, copies, width, older, NULL) != 0) {
                break;
            }
            hbc_log(LOG_DEBUG, "event=chunk_read_epoch_fallback chunk=%s copy=%u nth=%zu", idhex, c,
                    nth);
            fetch_free(&f);
            f = (struct fetch){0};
            err_clear(&ce);
            slots = older + c * width;
        }
        fetch_free(&f);
        if (rv == 0 || rv == HBC_ENOMEM) {
            if (rv == 0 && c > (copy >= 0 ? (unsigned)copy : 0)) {
                hbc_log(LOG_INFO, "event=chunk_read_fallback chunk=%s copy=%u", idhex, c);
            }
            if (rv == HBC_ENOMEM) {
                err_setraw(e, rv, "get chunk %s: %s", idhex, ce.msg);
            }
            break;
        }
        if (rv != HBC_ETOOFEW) {
            st.shard_errors++; /* the rebuilt object itself failed (forged or mixed shards) */
        }
        hbc_log(LOG_WARN, "event=chunk_copy_unreadable chunk=%s copy=%u status=%s", idhex, c,
                hbc_errname(rv));
        if (why_len < sizeof why - 1) {
            int k =
                snprintf(why + why_len, sizeof why - why_len, "%scopy %u: %s%s%s",
                         why_len > 0 ? "; " : "", c, ce.msg, f.why[0] != '\0' ? " — " : "", f.why);
            why_len += k > 0 ? (size_t)k : 0;
        }
        err_setraw(e, rv, "get chunk %s: no copy could be read (%s)", idhex, why);
    }
    if (stats != NULL) {
        stats->shards_read += st.shards_read;
        stats->shard_errors += st.shard_errors;
    }
    worker_give(r, w);
    return rv;
}

/*
 * The healthy path of n chunks in one round trip: copy c's data shards of
 * every chunk, one GetShards per node for the lot; each chunk that does not
 * rebuild, open and match its id that way is read alone by repo_get_chunk()
 * (every fallback). Shards are matched to chunks by the chunk id and index
 * the node's reply names (checked again in each shard's header).
 */
int repo_get_chunks(struct repo *r, size_t n, const uint8_t (*ids)[REPO_CHUNK_ID], int copy,
                    uint8_t **plains, size_t *lens, int *results, struct repo_read_stats *stats,
                    struct err *errs)
{
    struct err *e = errs; /* argument failures are told in the first chunk's */
    for (size_t i = 0; i < n; i++) {
        plains[i] = NULL;
        lens[i] = 0;
        results[i] = HBC_ETOOFEW;
    }
    int rv = need_vault(r, "get chunks", e);
    if (rv == 0 && (n == 0 || n > REPO_GET_BATCH_CHUNKS || copy >= (int)r->copies)) {
        rv = err_setraw(e, HBC_EINVAL, "get chunks: %zu chunks (1 to %d), copy %d of %u", n,
                        REPO_GET_BATCH_CHUNKS, copy, r->copies);
    }
    if (rv != 0) {
        for (size_t i = 0; i < n; i++) {
            results[i] = rv;
        }
        return rv;
    }
    const unsigned c = copy >= 0 ? (unsigned)copy : 0;
    const unsigned width = copy_width(r, c);
    const unsigned k = copy_k(r, c);
    const unsigned stride = stride_of(r);
    struct node_client_key keys[REPO_GET_BATCH_CHUNKS * PLACEMENT_MAX_WIDTH];
    unsigned knode[REPO_GET_BATCH_CHUNKS * PLACEMENT_MAX_WIDTH];
    size_t nkeys = 0;
    bool placed[REPO_GET_BATCH_CHUNKS] = {false};
    for (size_t i = 0; i < n; i++) {
        unsigned place[MAX_SLOTS];
        if (repo_place(r, ids[i], c + 1, stride, place, NULL) != 0) {
            continue; /* read alone below, which reports why */
        }
        bool whole = true;
        for (unsigned s = 0; s < k && whole; s++) {
            whole = place[c * stride + s] != PMAP_NONE;
        }
        if (!whole) {
            continue;
        }
        placed[i] = true;
        for (unsigned s = 0; s < k; s++) {
            knode[nkeys] = place[c * stride + s];
            keys[nkeys++] = (struct node_client_key){
                .vault_id = r->vault_id, .chunk_id = ids[i], .index = pmap_slot(&r->pv, c, s)};
        }
    }
    /* One request per node: its keys made contiguous (stable order). */
    struct node_client_key sorted[REPO_GET_BATCH_CHUNKS * PLACEMENT_MAX_WIDTH];
    struct repo_req reqs[REPO_GET_BATCH_CHUNKS * PLACEMENT_MAX_WIDTH];
    size_t nreqs = 0;
    size_t used = 0;
    bool taken[REPO_GET_BATCH_CHUNKS * PLACEMENT_MAX_WIDTH] = {false};
    for (size_t a = 0; a < nkeys; a++) {
        if (taken[a]) {
            continue;
        }
        size_t first = used;
        for (size_t b = a; b < nkeys; b++) {
            if (!taken[b] && knode[b] == knode[a]) {
                taken[b] = true;
                sorted[used++] = keys[b];
            }
        }
        reqs[nreqs++] = (struct repo_req){.addr = r->nodes[knode[a]].addr,
                                          .node_id = r->nodes[knode[a]].node_id,
                                          .kind = REPO_REQ_GET,
                                          .keys = &sorted[first],
                                          .nkeys = used - first};
    }
    struct repo_worker *w = NULL;
    rv = worker_take(r, &w, e);
    if (rv != 0) {
        for (size_t i = 0; i < n; i++) {
            results[i] = rv;
        }
        return rv;
    }
    struct repo_read_stats st = {0};
    if (nreqs > 0) {
        size_t bytes = (chunk_object_max_sealed(CHUNK_OBJECT_MAX_PLAINTEXT) / k + 1) * used;
        flow_acquire(r, bytes);
        repo_net_run(r->net, reqs, nreqs);
        flow_release(r, bytes);
    }
    for (size_t i = 0; i < n; i++) {
        if (!placed[i]) {
            continue;
        }
        struct fetch f = {0};
        for (size_t t = 0; t < nreqs; t++) {
            if (reqs[t].status != 0) {
                continue;
            }
            const Hbc__GetShardsReply *g = reqs[t].reply->get_shards_reply;
            for (size_t b = 0; b < g->n_shards; b++) {
                const Hbc__ShardBlob *sb = g->shards[b];
                uint32_t slot = 0;
                if (sb->chunk_id.len == REPO_CHUNK_ID &&
                    memcmp(sb->chunk_id.data, ids[i], REPO_CHUNK_ID) == 0 && sb->index < width &&
                    f.blob[sb->index] == NULL &&
                    shard_slot_from_wire(sb->index, sb->has_scheme_k, sb->scheme_k,
                                         sb->has_scheme_m, sb->scheme_m, &slot, NULL) == 0 &&
                    slot == pmap_slot(&r->pv, c, sb->index)) {
                    f.blob[sb->index] = sb->data.data;
                    f.len[sb->index] = sb->data.len;
                    st.shards_read++;
                }
            }
        }
        struct err ce;
        err_clear(&ce);
        results[i] = fast_open(r, w, c, ids[i], &f, &plains[i], &lens[i], &ce);
        if (results[i] != 0) {
            plains[i] = NULL;
            lens[i] = 0;
        }
    }
    for (size_t t = 0; t < nreqs; t++) {
        frame_free(reqs[t].reply);
    }
    worker_give(r, w);
    if (stats != NULL) {
        stats->shards_read += st.shards_read;
    }
    /* Whatever the healthy path did not give: the full read, alone, with every fallback. */
    int first = 0;
    for (size_t i = 0; i < n; i++) {
        if (results[i] != 0) {
            results[i] = repo_get_chunk(r, ids[i], copy, &plains[i], &lens[i], stats,
                                        errs != NULL ? &errs[i] : NULL);
            first = first != 0 ? first : results[i];
        }
    }
    return first;
}

/* ---- put ---- */

/*
 * A chunk id being put by some thread of this process, so that a second put
 * of the same id waits for the first instead of writing a different seal.
 */
static void busy_enter(struct repo *r, const uint8_t id[REPO_CHUNK_ID])
{
    uv_mutex_lock(&r->mu);
    for (;;) {
        bool busy = false;
        for (size_t i = 0; i < r->nbusy && !busy; i++) {
            busy = memcmp(r->busy[i], id, REPO_CHUNK_ID) == 0;
        }
        if (!busy && r->nbusy < REPO_MAX_BUSY) {
            break;
        }
        uv_cond_wait(&r->busy_cv, &r->mu);
    }
    memcpy(r->busy[r->nbusy++], id, REPO_CHUNK_ID);
    uv_mutex_unlock(&r->mu);
}

static void busy_leave(struct repo *r, const uint8_t id[REPO_CHUNK_ID])
{
    uv_mutex_lock(&r->mu);
    for (size_t i = 0; i < r->nbusy; i++) {
        if (memcmp(r->busy[i], id, REPO_CHUNK_ID) == 0) {
            memcpy(r->busy[i], r->busy[--r->nbusy], REPO_CHUNK_ID);
            break;
        }
    }
    uv_cond_broadcast(&r->busy_cv);
    uv_mutex_unlock(&r->mu);
}

/*
 * Erasure-code the sealed object obj once per scheme sch[0..nsch) (the
 * vault's distinct schemes, pmap_schemes()) that some copy uses
 * (copy_scheme[0..r->copies)) into st[x], and make each
 * shard's head (prefix and header) in heads[x][s]. Each shard then goes out
 * as its head, its payload (a slice of obj, or a parity shard in st) and a
 * zero trailer that the node fills in (ShardBlob.sha256_unset): no shard is
 * copied or hashed here. Returns 0 or the coding's error.
 */
static int code_object(const struct repo *r, const uint8_t id[REPO_CHUNK_ID],
                       const struct pmap_scheme *sch, unsigned nsch, const unsigned *copy_scheme,
                       const uint8_t *obj, size_t olen, struct erasure_stripe *st,
                       uint8_t (*heads)[ERASURE_MAX_SHARDS][ERASURE_SHARD_HEAD_MAX],
                       size_t (*head_lens)[ERASURE_MAX_SHARDS], struct err *e)
{
    int rv = 0;
    for (unsigned x = 0; x < nsch && rv == 0; x++) {
        bool used = false;
        for (unsigned c = 0; c < r->copies && !used; c++) {
            used = copy_scheme[c] == x; /* the base scheme may be no copy's */
        }
        if (!used) {
            continue;
        }
        const struct erasure_scheme *scheme = NULL;
        rv = erasure_scheme_get(sch[x].k, sch[x].m, &scheme, e);
        if (rv == 0) {
            rv = erasure_encode(scheme, obj, olen, &st[x], e);
        }
        struct erasure_shard_info info = {.k = sch[x].k,
                                          .m = sch[x].m,
                                          .object_length = olen,
                                          .shard_length = st[x].shard_length};
        memcpy(info.vault_id, r->vault_id, sizeof info.vault_id);
        memcpy(info.chunk_id, id, sizeof info.chunk_id);
        for (unsigned s = 0; s < sch[x].k + sch[x].m && rv == 0; s++) {
            info.index = s;
            rv = erasure_shard_head(&info, heads[x][s], &head_lens[x][s], e);
        }
    }
    return rv;
}

/*
 * Erasure-code the sealed object once per distinct scheme of the copies and
 * send each copy's shards to its nodes (place: copies x stride node
 * indexes); succeed when every copy has the shards it needs durable.
 */
static int put_object(struct repo *r, const uint8_t id[REPO_CHUNK_ID], const unsigned *place,
                      uint64_t epoch, const uint8_t *obj, size_t olen, struct err *e)
{
    const unsigned width = stride_of(r);
    const unsigned copies = r->copies;
    struct pmap_scheme sch[PMAP_MAX_SCHEMES];
    unsigned copy_scheme[PMAP_MAX_SCHEMES];
    const unsigned nsch = pmap_schemes(&r->pv, sch, copy_scheme);
    struct erasure_stripe st[PMAP_MAX_SCHEMES];
    uint8_t heads[PMAP_MAX_SCHEMES][ERASURE_MAX_SHARDS][ERASURE_SHARD_HEAD_MAX];
    size_t head_lens[PMAP_MAX_SCHEMES][ERASURE_MAX_SHARDS];
    struct repo_req *reqs = NULL;
    size_t ntargets = 0;
    char idhex[9];
    short_hex(id, idhex);
    memset(st, 0, sizeof st);
    memset(head_lens, 0, sizeof head_lens);
    int rv = code_object(r, id, sch, nsch, copy_scheme, obj, olen, st, heads, head_lens, e);
    if (rv != 0) {
        err_wrap(e, "put chunk: erasure code");
        goto out;
    }
    /* One request per node, carrying each shard (scheme, index) that any copy places there once. */
    unsigned tnode[MAX_SLOTS];
    uint32_t tmask[MAX_SLOTS][PMAP_MAX_SCHEMES];
    unsigned slot_target[MAX_SLOTS];
    for (unsigned i = 0; i < copies * width; i++) {
        unsigned c = i / width;
        if (i % width >= copy_width(r, c)) {
            continue; /* past this copy's width */
        }
        size_t t = 0;
        while (t < ntargets && tnode[t] != place[i]) {
            t++;
        }
        if (t == ntargets) {
            tnode[t] = place[i];
            memset(tmask[t], 0, sizeof tmask[t]);
            ntargets++;
        }
        tmask[t][copy_scheme[c]] |= (uint32_t)1 << (i % width);
        slot_target[i] = (unsigned)t;
    }
    struct node_client_shard flat[MAX_SLOTS];
    reqs = hbc_calloc(ntargets, sizeof *reqs);
    if (reqs == NULL) {
        rv = err_set(e, HBC_ENOMEM, "put chunk");
        goto out;
    }
    size_t used = 0;
    size_t bytes = 0;
    for (size_t t = 0; t < ntargets; t++) {
        size_t first = used;
        for (unsigned x = 0; x < nsch; x++) {
            for (unsigned s = 0; s < width; s++) {
                if (tmask[t][x] & ((uint32_t)1 << s)) {
                    flat[used++] = (struct node_client_shard){
                        .vault_id = r->vault_id,
                        .chunk_id = id,
                        .index = shard_slot(r->k, r->m, sch[x].k, sch[x].m, s),
                        .data = st[x].shards[s],
                        .len = st[x].shard_length,
                        .sha256_unset = true,
                        .head = heads[x][s],
                        .head_len = head_lens[x][s]};
                    bytes += head_lens[x][s] + st[x].shard_length + ERASURE_SHARD_TRAILER;
                }
            }
        }
        reqs[t] = (struct repo_req){.addr = r->nodes[tnode[t]].addr,
                                    .node_id = r->nodes[tnode[t]].node_id,
                                    .kind = REPO_REQ_PUT,
                                    .shards = &flat[first],
                                    .nshards = used - first,
                                    .epoch = epoch};
    }
    flow_acquire(r, bytes);
    repo_net_run(r->net, reqs, ntargets);
    flow_release(r, bytes);

    for (size_t t = 0; t < ntargets; t++) {
        if (reqs[t].status == HBC_ESTALEEPOCH) {
            /* The placement moved on while we wrote: the caller reloads the map and retries. */
            rv = err_setraw(e, HBC_ESTALEEPOCH, "put chunk %s: %s", idhex, reqs[t].msg);
            goto out;
        }
    }
    bool ok[MAX_SLOTS];
    size_t failed = 0;
    const struct repo_req *first_failure = NULL;
    for (size_t t = 0; t < ntargets; t++) {
        ok[t] = reqs[t].status == 0 &&
                reqs[t].reply->put_shards_reply->stored >= (uint32_t)reqs[t].nshards;
        if (!ok[t]) {
            failed++;
            if (first_failure == NULL) {
                first_failure = &reqs[t];
            }
            hbc_log(LOG_WARN, "event=shard_put_failed chunk=%s node=%s status=%s msg=\"%s\"", idhex,
                    reqs[t].node_id, hbc_errname(reqs[t].status),
                    reqs[t].status != 0 ? reqs[t].msg : "fewer shards stored than sent");
        }
    }
    rv = 0;
    bool degraded = false;
    for (unsigned c = 0; c < copies && rv == 0; c++) {
        unsigned durable = 0;
        const unsigned cw = copy_width(r, c);
        for (unsigned s = 0; s < cw; s++) {
            durable += ok[slot_target[c * width + s]] ? 1 : 0;
        }
        unsigned needs = copy_needs(r, c, place + c * width);
        if (durable < needs) {
            int code = HBC_EUNAVAILABLE;
            if (first_failure->status != 0 && first_failure->status != HBC_ECANCELED &&
                first_failure->status != HBC_EUNAVAILABLE) {
                code = first_failure->status; /* a node's refusal, e.g. -ENOSPC */
            }
            rv = err_setraw(e, code,
                            "put chunk %s: copy %u has %u of %u shards durable and needs %u (%zu "
                            "of %zu nodes failed; first: %s)",
                            idhex, c, durable, cw, needs, failed, ntargets,
                            first_failure->status != 0 ? first_failure->msg
                                                       : "fewer shards stored than sent");
        } else if (durable < cw) {
            degraded = true;
        }
    }
    if (rv == 0 && degraded) {
        /* Written degraded: the repair queue will take these once it exists. */
        hbc_log(LOG_WARN, "event=degraded chunk=%s failed_nodes=%zu", idhex, failed);
        uv_mutex_lock(&r->mu);
        r->degraded++;
        uv_mutex_unlock(&r->mu);
    }
out:
    for (size_t t = 0; t < ntargets && reqs != NULL; t++) {
        frame_free(reqs[t].reply);
    }
    hbc_free(reqs);
    for (unsigned x = 0; x < PMAP_MAX_SCHEMES; x++) {
        erasure_stripe_release(&st[x]);
    }
    return rv;
}

/*
 * Ask the nodes of every copy whether they hold the chunk: *enough when
 * every copy has what a put needs (as repo_have()), *any when some node has
 * some shard of it.
 */
static int presence(struct repo *r, const uint8_t id[REPO_CHUNK_ID], bool *enough, bool *any,
                    struct err *e);

/*
 * Some shards of the chunk exist but not enough: they come from an earlier
 * put that failed half-way, with another seal (another nonce) than a fresh
 * one would have, and nodes refuse a different shard under an existing key.
 * So rebuild that earlier object from its own shards (the copies of one
 * scheme hold the same ones; any scheme rebuilds the same object), check
 * that it opens under the vault key as this chunk, and send its shards
 * again: identical bytes are accepted where present and stored where missing.
 */
static int complete_existing(struct repo *r, struct repo_worker *w, const uint8_t id[REPO_CHUNK_ID],
                             const unsigned *place, uint64_t epoch, struct err *e)
{
    const unsigned width = stride_of(r);
    struct pmap_scheme sch[PMAP_MAX_SCHEMES];
    unsigned copy_scheme[PMAP_MAX_SCHEMES];
    const unsigned nsch = pmap_schemes(&r->pv, sch, copy_scheme);
    struct fetch f[PLACEMENT_MAX_COPIES];
    struct repo_read_stats st = {0};
    memset(f, 0, sizeof f);
    for (unsigned c = 0; c < r->copies; c++) {
        fetch_shards(r, c, id, place + c * width, ((uint32_t)1 << copy_width(r, c)) - 1, &f[c],
                     &st);
    }
    uint8_t *obj = NULL;
    size_t olen = 0;
    uint8_t *plain = NULL;
    size_t plen = 0;
    int rv = HBC_ETOOFEW;
    for (unsigned x = 0; x < nsch && rv != 0; x++) {
        struct fetch merged = {0};
        bool used = false;
        for (unsigned c = 0; c < r->copies; c++) {
            if (copy_scheme[c] != x) {
                continue;
            }
            used = true;
            for (unsigned s = 0; s < copy_width(r, c); s++) {
                if (merged.blob[s] == NULL && f[c].blob[s] != NULL) {
                    merged.blob[s] = f[c].blob[s];
                    merged.len[s] = f[c].len[s];
                }
            }
        }
        if (!used) {
            continue;
        }
        hbc_free(obj);
        obj = NULL;
        err_clear(e);
        rv = erasure_shards_rebuild(merged.blob, merged.len, sch[x].k + sch[x].m, r->vault_id, id,
                                    &obj, &olen, e);
        if (rv == 0) {
            rv = open_object(r, w, id, obj, olen, &plain, &plen, e);
        }
        if (plain != NULL) {
            OPENSSL_cleanse(plain, plen);
            hbc_free(plain);
            plain = NULL;
        }
    }
    if (rv == 0) {
        rv = put_object(r, id, place, epoch, obj, olen, e);
    }
    hbc_free(obj);
    for (unsigned c = 0; c < r->copies; c++) {
        fetch_free(&f[c]);
    }
    return rv;
}

/*
 * One attempt of repo_put_chunk() with the current placement map; with
 * absent, the caller has just seen no shard of id on any node, so the
 * nodes are not asked again.
 */
static int put_chunk_once(struct repo *r, const uint8_t id[REPO_CHUNK_ID], const void *plain,
                          size_t len, bool absent, struct err *e)
{
    int rv = need_vault(r, "put chunk", e);
    if (rv != 0) {
        return rv;
    }
    if (len > CHUNK_OBJECT_MAX_PLAINTEXT) {
        return err_set(e, HBC_ETOOBIG, "put chunk: %zu bytes (at most %zu)", len,
                       (size_t)CHUNK_OBJECT_MAX_PLAINTEXT);
    }
    unsigned place[MAX_SLOTS];
    uint64_t epoch = 0;
    rv = repo_place_current(r, id, r->copies, stride_of(r), place, &epoch, e);
    if (rv != 0) {
        return err_wrap_code(e, rv, "put chunk");
    }
    struct repo_worker *w = NULL;
    rv = worker_take(r, &w, e);
    if (rv != 0) {
        return rv;
    }
    busy_enter(r, id);
    char idhex[9];
    short_hex(id, idhex);
    bool enough = false, any = false;
    struct err pe;
    err_clear(&pe);
    if (!absent && presence(r, id, &enough, &any, &pe) == 0 && enough) {
        rv = 0; /* stored already: a put again costs one small round trip */
        goto out;
    }
    if (any) {
        err_clear(&pe);
        rv = complete_existing(r, w, id, place, epoch, &pe);
        if (rv == 0) {
            hbc_log(LOG_INFO, "event=chunk_completed chunk=%s", idhex);
            goto out;
        }
        hbc_log(LOG_WARN, "event=chunk_partial_unrecoverable chunk=%s status=%s msg=\"%s\"", idhex,
                hbc_errname(rv), pe.msg);
    }
    size_t cap = chunk_object_max_sealed(len);
    if (w->cap < cap) {
        uint8_t *p = hbc_realloc(w->buf, cap);
        if (p == NULL) {
            rv = err_set(e, HBC_ENOMEM, "put chunk: %zu-byte buffer", cap);
            goto out;
        }
        w->buf = p;
        w->cap = cap;
    }
    size_t olen = 0;
    rv = chunk_object_seal(w->cc, &r->ckey, r->vault_id, id, plain, len, w->buf, w->cap, &olen, e);
    if (rv != 0) {
        err_wrap(e, "put chunk: seal");
        goto out;
    }
    rv = put_object(r, id, place, epoch, w->buf, olen, e);
out:
    busy_leave(r, id);
    worker_give(r, w);
    return rv;
}

int repo_put_chunk(struct repo *r, const uint8_t id[REPO_CHUNK_ID], const void *plain, size_t len,
                   struct err *e)
{
    int rv = put_chunk_once(r, id, plain, len, false, e);
    /* A node in a later placement epoch refused the put: reload the map, place again. */
    for (int attempt = 0; rv == HBC_ESTALEEPOCH && attempt < 5; attempt++) {
        struct err re;
        int rr = repo_map_refresh(r, &re);
        if (rr != 0) {
            return err_setraw(e, rr, "put chunk: reload the placement map: %s", re.msg);
        }
        rv = put_chunk_once(r, id, plain, len, false, e);
    }
    return rv;
}

int repo_put_chunk_new(struct repo *r, const uint8_t id[REPO_CHUNK_ID], const void *plain,
                       size_t len, struct err *e)
{
    struct err fe;
    err_clear(&fe);
    int rv = put_chunk_once(r, id, plain, len, true, &fe);
    if (rv == 0) {
        return 0;
    }
    /* Refused or stale: the careful path asks the nodes, completes, re-places. */
    return repo_put_chunk(r, id, plain, len, e);
}

/* Distinct schemes a batched put codes a chunk with (more: the single path). */
#define BATCH_SCHEMES 4

/* One chunk of repo_put_chunks_new(). */
struct small_put {
    unsigned place[MAX_SLOTS];               /* copies x stride node indexes */
    uint64_t epoch;                          /* placement epoch */
    uint8_t *obj;                            /* sealed object (in the batch's buffer) */
    size_t olen;                             /* its length */
    struct erasure_stripe st[BATCH_SCHEMES]; /* its shards, per distinct scheme */
    uint8_t heads[BATCH_SCHEMES][ERASURE_MAX_SHARDS][ERASURE_SHARD_HEAD_MAX]; /* shard heads */
    size_t head_lens[BATCH_SCHEMES][ERASURE_MAX_SHARDS];                      /* their lengths */
    bool sent; /* its shards went out in the batch */
};

/*
 * The batch of repo_put_chunks_new(): seal and code each chunk, send every
 * shard in one request per node, and set done[i] for each chunk that every
 * node took (the others are left to the caller). Returns 0 or ENOMEM.
 */
static int put_batch(struct repo *r, size_t n, const uint8_t (*ids)[REPO_CHUNK_ID],
                     const void *const *plains, const size_t *lens, bool *done, struct err *e)
{
    const unsigned width = stride_of(r);
    const unsigned copies = r->copies;
    size_t cap = 0;
    for (size_t i = 0; i < n; i++) {
        done[i] = false;
        cap += chunk_object_max_sealed(lens[i]);
    }
    /* Not zeroed (about 1 MiB for 64 chunks): what is read is written first (stripes below). */
    struct small_put *sp = hbc_malloc(n * sizeof *sp);
    uint8_t *sealed = hbc_malloc(cap);
    struct node_client_shard *flat = hbc_malloc(n * MAX_SLOTS * sizeof *flat);
    unsigned *fnode = hbc_malloc(n * MAX_SLOTS * sizeof *fnode);
    for (size_t i = 0; sp != NULL && i < n; i++) {
        memset(sp[i].st, 0, sizeof sp[i].st);
        sp[i].sent = false;
    }
    /* Every index placement can return: the node list may grow under us (repo_map_refresh). */
    const size_t nn = r->nodes_cap > r->nnodes ? r->nodes_cap : r->nnodes;
    struct repo_req *reqs = hbc_calloc(nn > 0 ? nn : 1, sizeof *reqs);
    struct repo_worker *w = NULL;
    int rv = 0;
    if (sp == NULL || sealed == NULL || flat == NULL || fnode == NULL || reqs == NULL) {
        rv = err_set(e, HBC_ENOMEM, "put %zu chunks", n);
        goto out;
    }
    rv = worker_take(r, &w, e);
    if (rv != 0) {
        goto out;
    }
    /* Each chunk is coded once per distinct scheme of the copies (copy_scheme[c]). */
    struct pmap_scheme sch[PMAP_MAX_SCHEMES];
    unsigned copy_scheme[PMAP_MAX_SCHEMES];
    const unsigned nsch = pmap_schemes(&r->pv, sch, copy_scheme);
    if (nsch > BATCH_SCHEMES) {
        goto out; /* nothing sent: every chunk goes the single way */
    }
    /* Seal and code; a chunk that fails here is left to the single path. */
    size_t used = 0, nflat = 0;
    for (size_t i = 0; i < n; i++) {
        struct small_put *c = &sp[i];
        struct err ie;
        c->obj = sealed + used;
        if (repo_place_current(r, ids[i], copies, width, c->place, &c->epoch, &ie) != 0 ||
            c->epoch != sp[0].epoch ||
            chunk_object_seal(w->cc, &r->ckey, r->vault_id, ids[i], plains[i], lens[i], c->obj,
                              cap - used, &c->olen, &ie) != 0) {
            continue;
        }
        used += c->olen;
        bool ok = code_object(r, ids[i], sch, nsch, copy_scheme, c->obj, c->olen, c->st, c->heads,
                              c->head_lens, &ie) == 0;
        if (!ok) {
            continue;
        }
        /* Each shard (scheme, index) once to each node that some copy places it on. */
        uint32_t seen[MAX_SLOTS][BATCH_SCHEMES];
        memset(seen, 0, sizeof seen);
        unsigned nodes[MAX_SLOTS];
        size_t nd = 0;
        for (unsigned p = 0; p < copies * width; p++) {
            unsigned cp = p / width;
            unsigned s = p % width;
            if (s >= copy_width(r, cp)) {
                continue; /* past this copy's width */
            }
            unsigned x = copy_scheme[cp];
            size_t d = 0;
            while (d < nd && nodes[d] != c->place[p]) {
                d++;
            }
            if (d == nd) {
                nodes[nd++] = c->place[p];
            }
            if (seen[d][x] & ((uint32_t)1 << s)) {
                continue;
            }
            seen[d][x] |= (uint32_t)1 << s;
            fnode[nflat] = c->place[p];
            flat[nflat++] = (struct node_client_shard){.vault_id = r->vault_id,
                                                       .chunk_id = ids[i],
                                                       .index = pmap_slot(&r->pv, cp, s),
                                                       .data = c->st[x].shards[s],
                                                       .len = c->st[x].shard_length,
                                                       .sha256_unset = true,
                                                       .head = c->heads[x][s],
                                                       .head_len = c->head_lens[x][s]};
        }
        c->sent = true;
    }
    /* Group by node (stable: a node's shards keep the chunks' order). */
    struct node_client_shard *byn = hbc_malloc((nflat > 0 ? nflat : 1) * sizeof *byn);
    if (byn == NULL) {
        rv = err_set(e, HBC_ENOMEM, "put %zu chunks", n);
        goto out;
    }
    size_t ntargets = 0, pos = 0, bytes = 0;
    for (size_t node = 0; node < nn; node++) {
        size_t first = pos;
        for (size_t f = 0; f < nflat; f++) {
            if (fnode[f] == node) {
                byn[pos++] = flat[f];
                bytes += flat[f].head_len + flat[f].len + ERASURE_SHARD_TRAILER;
            }
        }
        if (pos > first) {
            reqs[ntargets++] = (struct repo_req){.addr = r->nodes[node].addr,
                                                 .node_id = r->nodes[node].node_id,
                                                 .kind = REPO_REQ_PUT,
                                                 .shards = &byn[first],
                                                 .nshards = pos - first,
                                                 .epoch = sp[0].epoch};
        }
    }
    if (ntargets > 0) {
        flow_acquire(r, bytes);
        repo_net_run(r->net, reqs, ntargets);
        flow_release(r, bytes);
    }
    /* A chunk is done when every node that got any of its shards stored them all. */
    for (size_t i = 0; i < n; i++) {
        done[i] = sp[i].sent;
    }
    for (size_t t = 0; t < ntargets; t++) {
        bool ok = reqs[t].status == 0 &&
                  reqs[t].reply->put_shards_reply->stored >= (uint32_t)reqs[t].nshards;
        for (size_t x = 0; x < reqs[t].nshards && !ok; x++) {
            for (size_t i = 0; i < n; i++) {
                if (reqs[t].shards[x].chunk_id == ids[i]) {
                    done[i] = false;
                }
            }
        }
        frame_free(reqs[t].reply);
    }
    hbc_free(byn);
out:
    if (w != NULL) {
        worker_give(r, w);
    }
    for (size_t i = 0; sp != NULL && i < n; i++) {
        for (unsigned x = 0; x < BATCH_SCHEMES; x++) {
            erasure_stripe_release(&sp[i].st[x]);
        }
    }
    hbc_free(sp);
    hbc_free(sealed);
    hbc_free(flat);
    hbc_free(fnode);
    hbc_free(reqs);
    return rv;
}

int repo_put_chunks_new(struct repo *r, size_t n, const uint8_t (*ids)[REPO_CHUNK_ID],
                        const void *const *plains, const size_t *lens, struct err *e)
{
    int rv = need_vault(r, "put chunks", e);
    for (size_t i = 0; rv == 0 && i < n; i++) {
        if (lens[i] > REPO_PUT_BATCH_MAX) {
            rv = err_set(e, HBC_EINVAL, "put chunks: chunk %zu of %zu bytes (at most %zu)", i,
                         lens[i], (size_t)REPO_PUT_BATCH_MAX);
        }
    }
    for (size_t at = 0; rv == 0 && at < n; at += REPO_PUT_BATCH_CHUNKS) {
        size_t cnt = n - at < REPO_PUT_BATCH_CHUNKS ? n - at : REPO_PUT_BATCH_CHUNKS;
        bool done[REPO_PUT_BATCH_CHUNKS];
        rv = put_batch(r, cnt, ids + at, plains + at, lens + at, done, e);
        for (size_t i = 0; rv == 0 && i < cnt; i++) {
            if (!done[i]) {
                /* Not taken whole by every node: the careful single path. */
                rv = repo_put_chunk(r, ids[at + i], plains[at + i], lens[at + i], e);
            }
        }
    }
    return rv;
}

/* ---- have ---- */

/*
 * The distinct (node, scheme) pairs holding some shard of some copy, as
 * node * nsch + scheme (out has room for MAX_SLOTS); PMAP_NONE slots skipped.
 */
static size_t distinct_pairs(const struct repo *r, const unsigned *place, const unsigned *scheme_of,
                             unsigned nsch, unsigned *out)
{
    const unsigned width = stride_of(r);
    size_t n = 0;
    for (unsigned c = 0; c < r->copies; c++) {
        for (unsigned s = 0; s < copy_width(r, c); s++) {
            unsigned node = place[c * width + s];
            if (node == PMAP_NONE) {
                continue;
            }
            unsigned pair = node * nsch + scheme_of[c];
            size_t j = 0;
            while (j < n && out[j] != pair) {
                j++;
            }
            if (j == n) {
                out[n++] = pair;
            }
        }
    }
    return n;
}

/* One (node, scheme)'s share of a have query. */
struct have_node {
    uint32_t *idx; /* indexes into ids, in order */
    size_t n;      /* how many */
    size_t cap;    /* room */
    bool *answer;  /* answers, one per idx (false when the node failed) */
    size_t cursor; /* reading position in the second pass */
};

/* A HaveChunks request of one (node, scheme), built here (the frame lives until the reply). */
struct have_frame {
    Hbc__Frame f;             /* the request */
    Hbc__HaveChunks h;        /* its body */
    ProtobufCBinaryData *ids; /* the ids (pointing into the caller's buffer) */
};

/*
 * repo_have(), and any[i] (when not NULL): some node holds some shard of
 * ids[i]. With several schemes each node is asked per scheme it holds shards
 * of (HaveChunks scheme fields), so that shards of one scheme never count
 * for a copy of another.
 */
static int have_core(struct repo *r, const uint8_t (*ids)[REPO_CHUNK_ID], size_t n, bool *present,
                     bool *any, struct err *e)
{
    int rv = need_vault(r, "have", e);
    if (rv != 0) {
        return rv;
    }
    for (size_t i = 0; i < n; i++) {
        present[i] = false;
        if (any != NULL) {
            any[i] = false;
        }
    }
    if (n == 0) {
        return 0;
    }
    if (n > UINT32_MAX) {
        return err_setraw(e, HBC_EINVAL, "have: %zu ids at once", n);
    }
    struct pmap_scheme sch[PMAP_MAX_SCHEMES];
    unsigned scheme_of[PMAP_MAX_SCHEMES];
    const unsigned nsch = pmap_schemes(&r->pv, sch, scheme_of);
    /* Every index placement can return: the node list may grow under us (repo_map_refresh). */
    const size_t nodes_n = r->nodes_cap > r->nnodes ? r->nodes_cap : r->nnodes;
    const size_t nn = nodes_n * nsch;
    const unsigned width = stride_of(r);
    const size_t nslots = (size_t)r->copies * width;
    struct have_node *hn = hbc_calloc(nn, sizeof *hn);
    uint8_t(*buf)[REPO_CHUNK_ID] = NULL;
    struct repo_req *reqs = NULL;
    struct have_frame *hf = NULL;
    size_t nreqs = 0;
    if (hn == NULL) {
        return err_set(e, HBC_ENOMEM, "have");
    }
    /*
     * Pass 1: every node holding a shard of an id is asked about it. The
     * placements are kept for pass 2: a map reload in between must not
     * change which answers an id reads.
     */
    unsigned *places = hbc_calloc(n * nslots, sizeof *places);
    if (places == NULL) {
        hbc_free(hn);
        return err_set(e, HBC_ENOMEM, "have");
    }
    unsigned pairs[MAX_SLOTS];
    for (size_t i = 0; i < n; i++) {
        unsigned *place = places + i * nslots;
        rv = repo_place(r, ids[i], r->copies, width, place, e);
        if (rv != 0) {
            goto out;
        }
        size_t nd = distinct_pairs(r, place, scheme_of, nsch, pairs);
        for (size_t d = 0; d < nd; d++) {
            struct have_node *h = &hn[pairs[d]];
            if (h->n == h->cap) {
                size_t cap = h->cap == 0 ? 64 : h->cap * 2;
                uint32_t *p = hbc_realloc(h->idx, cap * sizeof *p);
                if (p == NULL) {
                    rv = err_set(e, HBC_ENOMEM, "have");
                    goto out;
                }
                h->idx = p;
                h->cap = cap;
            }
            h->idx[h->n++] = (uint32_t)i;
        }
    }
    /* Requests of at most NODE_CLIENT_MAX_BATCH ids, each with its own copy of the ids. */
    size_t total = 0;
    for (size_t j = 0; j < nn; j++) {
        total += hn[j].n;
        nreqs += (hn[j].n + NODE_CLIENT_MAX_BATCH - 1) / NODE_CLIENT_MAX_BATCH;
        if (hn[j].n > 0) {
            hn[j].answer = hbc_calloc(hn[j].n, sizeof *hn[j].answer);
            if (hn[j].answer == NULL) {
                rv = err_set(e, HBC_ENOMEM, "have");
                goto out;
            }
        }
    }
    buf = hbc_malloc(total * sizeof *buf);
    reqs = hbc_calloc(nreqs, sizeof *reqs);
    hf = nsch > 1 ? hbc_calloc(nreqs, sizeof *hf) : NULL;
    if (buf == NULL || reqs == NULL || (nsch > 1 && hf == NULL)) {
        rv = err_set(e, HBC_ENOMEM, "have");
        goto out;
    }
    size_t q = 0, pos = 0;
    for (size_t j = 0; j < nn; j++) {
        const struct repo_node *node = &r->nodes[j / nsch];
        const struct pmap_scheme *x = &sch[j % nsch];
        for (size_t off = 0; off < hn[j].n; off += NODE_CLIENT_MAX_BATCH) {
            size_t cnt =
                hn[j].n - off < NODE_CLIENT_MAX_BATCH ? hn[j].n - off : NODE_CLIENT_MAX_BATCH;
            for (size_t y = 0; y < cnt; y++) {
                memcpy(buf[pos + y], ids[hn[j].idx[off + y]], REPO_CHUNK_ID);
            }
            if (nsch == 1) {
                /* One scheme: any shard of the chunk is one of its (as before schemes). */
                reqs[q] = (struct repo_req){.addr = node->addr,
                                            .node_id = node->node_id,
                                            .kind = REPO_REQ_HAVE,
                                            .vault_id = r->vault_id,
                                            .ids = (const uint8_t(*)[REPO_CHUNK_ID])(buf + pos),
                                            .nids = cnt};
            } else {
                struct have_frame *h = &hf[q];
                h->ids = hbc_calloc(cnt, sizeof *h->ids);
                if (h->ids == NULL) {
                    rv = err_set(e, HBC_ENOMEM, "have");
                    goto out;
                }
                for (size_t y = 0; y < cnt; y++) {
                    h->ids[y] = (ProtobufCBinaryData){REPO_CHUNK_ID, buf[pos + y]};
                }
                hbc__frame__init(&h->f);
                hbc__have_chunks__init(&h->h);
                h->h.vault_id = (ProtobufCBinaryData){REPO_ID_LEN, r->vault_id};
                h->h.chunk_ids = h->ids;
                h->h.n_chunk_ids = cnt;
                if (j % nsch == 0) {
                    h->h.has_base_scheme = true;
                    h->h.base_scheme = true;
                } else {
                    h->h.has_scheme_k = h->h.has_scheme_m = true;
                    h->h.scheme_k = x->k;
                    h->h.scheme_m = x->m;
                }
                h->f.body_case = HBC__FRAME__BODY_HAVE_CHUNKS;
                h->f.have_chunks = &h->h;
                reqs[q] = (struct repo_req){.addr = node->addr,
                                            .node_id = node->node_id,
                                            .kind = REPO_REQ_FRAME,
                                            .frame = &h->f,
                                            .expect = HBC__FRAME__BODY_HAVE_CHUNKS_REPLY,
                                            .nids = cnt};
            }
            q++;
            pos += cnt;
        }
    }
    repo_net_run(r->net, reqs, nreqs);
    size_t answered = 0;
    const struct repo_req *first_failure = NULL;
    q = 0;
    for (size_t j = 0; j < nn; j++) {
        for (size_t off = 0; off < hn[j].n; off += NODE_CLIENT_MAX_BATCH, q++) {
            if (reqs[q].status != 0) {
                first_failure = first_failure != NULL ? first_failure : &reqs[q];
                continue;
            }
            const Hbc__HaveChunksReply *h = reqs[q].reply->have_chunks_reply;
            answered++;
            for (size_t y = 0; y < reqs[q].nids && y < h->n_present; y++) {
                hn[j].answer[off + y] = h->present[y] != 0;
            }
        }
    }
    if (answered == 0) {
        rv = err_setraw(e, HBC_EUNAVAILABLE, "have: no node answered (first: %s)",
                        first_failure != NULL ? first_failure->msg : "none asked");
        goto out;
    }
    /*
     * Pass 2: an id is present when every copy has, on the nodes answering
     * yes for its scheme, at least the shards a put needs (k+1, or all on
     * small clusters): exactly what repo_put_chunk() guarantees, so a chunk
     * whose put failed half-way is sent again instead of being taken for
     * stored.
     */
    for (size_t i = 0; i < n; i++) {
        const unsigned *place = places + i * nslots;
        size_t nd = distinct_pairs(r, place, scheme_of, nsch, pairs);
        bool yes[MAX_SLOTS];
        for (size_t d = 0; d < nd; d++) {
            struct have_node *h = &hn[pairs[d]];
            yes[d] = h->answer[h->cursor++];
            if (any != NULL && yes[d]) {
                any[i] = true;
            }
        }
        bool all = true;
        for (unsigned c = 0; c < r->copies && all; c++) {
            unsigned count = 0;
            for (unsigned s = 0; s < copy_width(r, c); s++) {
                unsigned pair = place[c * width + s] * nsch + scheme_of[c];
                size_t d = 0;
                while (d < nd && pairs[d] != pair) {
                    d++;
                }
                count += d < nd && yes[d] ? 1 : 0;
            }
            all = count >= copy_needs(r, c, place + c * width);
        }
        present[i] = all;
    }
    rv = 0;
out:
    for (size_t y = 0; y < nreqs && reqs != NULL; y++) {
        frame_free(reqs[y].reply);
        if (hf != NULL) {
            hbc_free(hf[y].ids);
        }
    }
    hbc_free(hf);
    hbc_free(reqs);
    hbc_free(buf);
    for (size_t j = 0; j < nn; j++) {
        hbc_free(hn[j].idx);
        hbc_free(hn[j].answer);
    }
    hbc_free(hn);
    hbc_free(places);
    return rv;
}

int repo_have(struct repo *r, const uint8_t (*ids)[REPO_CHUNK_ID], size_t n, bool *present,
              struct err *e)
{
    return have_core(r, ids, n, present, NULL, e);
}

int repo_have_any(struct repo *r, const uint8_t (*ids)[REPO_CHUNK_ID], size_t n, bool *present,
                  bool *any, struct err *e)
{
    return have_core(r, ids, n, present, any, e);
}

static int presence(struct repo *r, const uint8_t id[REPO_CHUNK_ID], bool *enough, bool *any,
                    struct err *e)
{
    return have_core(r, (const uint8_t(*)[REPO_CHUNK_ID])id, 1, enough, any, e);
}
