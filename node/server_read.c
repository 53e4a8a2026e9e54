/* hbcd's gets, existence queries and chunk listings (see server.c). */
#include "node/server_internal.h"

/* ---------------------------------------------------------------------- */
/* Gets and existence queries                                              */

/* Allocate r's result arrays and decode its keys into r->keys. Sets r->status on failure. */
static int get_prepare(struct req *r)
{
    Hbc__GetShards *g = r->frame->get_shards;
    size_t n = g->n_keys;
    r->keys = hbc_calloc(n, sizeof *r->keys);
    r->datas = hbc_calloc(n, sizeof *r->datas);
    r->lens = hbc_calloc(n, sizeof *r->lens);
    r->results = hbc_calloc(n, sizeof *r->results);
    if (r->keys == NULL || r->datas == NULL || r->lens == NULL || r->results == NULL) {
        r->status = HBC_ENOMEM;
        snprintf(r->msg, sizeof r->msg, "get shards: out of memory");
        return r->status;
    }
    for (size_t i = 0; i < n; i++) {
        Hbc__ShardKey *k = g->keys[i];
        memcpy(r->keys[i].vault_id, k->vault_id.data, SHARD_STORE_VAULT_ID_LEN);
        memcpy(r->keys[i].chunk_id, k->chunk_id.data, SHARD_STORE_CHUNK_ID_LEN);
        struct err se;
        int srv = shard_slot_from_wire(k->index, k->has_scheme_k, k->scheme_k, k->has_scheme_m,
                                       k->scheme_m, &r->keys[i].index, &se);
        if (srv != 0) {
            r->status = srv;
            snprintf(r->msg, sizeof r->msg, "get shards: %.220s", se.msg);
            return srv;
        }
    }
    return 0;
}

void server_get_work_cb(uv_work_t *w)
{
    struct req *r = w->data;
    struct server *s = r->conn->srv;
    /* server_get_inline() may have prepared r already. */
    if (r->keys == NULL && get_prepare(r) != 0) {
        return;
    }
    struct err e;
    int rv = shard_store_get_batch(s->store, r->keys, r->frame->get_shards->n_keys, r->datas,
                                   r->lens, r->results, &e);
    if (rv != 0) {
        r->status = rv;
        snprintf(r->msg, sizeof r->msg, "get shards: %.220s", e.msg);
    }
}

/* Answer a get whose store reads are done. */
static void get_reply(struct req *r)
{
    struct server *s = r->conn->srv;
    if (r->status != 0) {
        server_req_fail(r, r->status, r->msg);
        return;
    }
    Hbc__GetShards *g = r->frame->get_shards;
    size_t n = g->n_keys;
    Hbc__Frame f = HBC__FRAME__INIT;
    Hbc__GetShardsReply rep = HBC__GET_SHARDS_REPLY__INIT;
    Hbc__ShardBlob *blobs = hbc_calloc(n, sizeof *blobs);
    Hbc__ShardBlob **bp = hbc_calloc(n, sizeof *bp);
    Hbc__ShardKey **missing = hbc_calloc(n, sizeof *missing);
    if (blobs == NULL || bp == NULL || missing == NULL) {
        hbc_free(blobs);
        hbc_free(bp);
        hbc_free(missing);
        for (size_t i = 0; i < n; i++) {
            hbc_free(r->datas[i]);
        }
        server_req_fail(r, HBC_ENOMEM, "get shards: out of memory");
        return;
    }
    size_t total = 0;
    for (size_t i = 0; i < n; i++) {
        Hbc__ShardKey *k = g->keys[i];
        if (r->results[i] == 0) {
            hbc__shard_blob__init(&blobs[rep.n_shards]);
            blobs[rep.n_shards].vault_id = k->vault_id;
            blobs[rep.n_shards].chunk_id = k->chunk_id;
            blobs[rep.n_shards].index = k->index;
            blobs[rep.n_shards].has_scheme_k = k->has_scheme_k;
            blobs[rep.n_shards].scheme_k = k->scheme_k;
            blobs[rep.n_shards].has_scheme_m = k->has_scheme_m;
            blobs[rep.n_shards].scheme_m = k->scheme_m;
            blobs[rep.n_shards].data.data = r->datas[i];
            blobs[rep.n_shards].data.len = r->lens[i];
            bp[rep.n_shards] = &blobs[rep.n_shards];
            rep.n_shards++;
            total += r->lens[i] + 64;
        } else {
            if (r->results[i] == HBC_ECORRUPT) {
                hbc_log(LOG_ERROR, "event=corrupt_shard_not_served peer=%s index=%u", r->conn->peer,
                        k->index);
            }
            missing[rep.n_missing++] = k;
        }
    }
    rep.shards = bp;
    rep.missing = missing;
    f.request_id = r->frame->request_id;
    f.body_case = HBC__FRAME__BODY_GET_SHARDS_REPLY;
    f.get_shards_reply = &rep;
    s->stats.gets_served += rep.n_shards;
    uint8_t **datas = r->datas;
    r->datas = NULL;
    if (total + 1024 > s->cfg->max_frame) {
        server_req_fail(
            r, HBC_ETOOBIG,
            "get shards: the reply would exceed max_frame; ask for fewer shards at once");
    } else {
        server_req_finish(r, &f);
    }
    for (size_t i = 0; i < n; i++) {
        hbc_free(datas[i]);
    }
    hbc_free(datas);
    hbc_free(blobs);
    hbc_free(bp);
    hbc_free(missing);
}

/*
 * Answer a get on the loop thread when that needs no waiting: every index
 * entry in RocksDB's memory and every record in the page cache, at most
 * GET_INLINE_MAX_BYTES in all (their SHA-256 is computed here). Saves the
 * thread pool's two hand-offs per request, which cost more than the reads
 * of a few small cached shards. Returns whether r was answered; if not, r
 * is prepared for server_get_work_cb.
 */
bool server_get_inline(struct req *r)
{
    struct server *s = r->conn->srv;
    if (get_prepare(r) != 0) {
        get_reply(r); /* the failure, as server_get_work_cb would have reported it */
        return true;
    }
    struct err e;
    err_clear(&e);
    int rv = shard_store_get_batch_nowait(s->store, r->keys, r->frame->get_shards->n_keys,
                                          GET_INLINE_MAX_BYTES, r->datas, r->lens, r->results, &e);
    if (rv == HBC_EBUSY) {
        return false;
    }
    s->stats.gets_inline++;
    if (rv != 0) {
        r->status = rv;
        snprintf(r->msg, sizeof r->msg, "get shards: %.220s", e.msg);
    }
    get_reply(r);
    return true;
}

void server_get_after_cb(uv_work_t *w, int status)
{
    struct req *r = w->data;
    struct server *s = r->conn->srv;
    (void)status;
    s->works--;
    get_reply(r);
    /* Only now, after the reply is queued, may a stopping server close the connections. */
    server_maybe_finish(s);
}

void server_have_work_cb(uv_work_t *w)
{
    struct req *r = w->data;
    struct server *s = r->conn->srv;
    Hbc__HaveChunks *h = r->frame->have_chunks;
    size_t n = h->n_chunk_ids;
    uint8_t(*ids)[32] = hbc_calloc(n, 32);
    bool *present = hbc_calloc(n, sizeof *present);
    r->present = hbc_calloc(n, sizeof *r->present);
    if (ids == NULL || present == NULL || r->present == NULL) {
        r->status = HBC_ENOMEM;
        snprintf(r->msg, sizeof r->msg, "have chunks: out of memory");
        goto out;
    }
    for (size_t i = 0; i < n; i++) {
        memcpy(ids[i], h->chunk_ids[i].data, 32);
    }
    struct err e;
    int rv = 0;
    if (h->has_scheme_k || h->has_scheme_m) {
        /* Shards of one scheme other than the base one (common/shard_scheme.h). */
        uint32_t lo = 0;
        rv = shard_slot_from_wire(0, h->has_scheme_k, h->scheme_k, h->has_scheme_m, h->scheme_m,
                                  &lo, &e);
        if (rv == 0) {
            rv = shard_store_exists_slots(s->store, h->vault_id.data, (const uint8_t(*)[32])ids, n,
                                          lo, lo | 0xff, present, &e);
        }
    } else if (h->has_base_scheme && h->base_scheme) {
        rv = shard_store_exists_slots(s->store, h->vault_id.data, (const uint8_t(*)[32])ids, n, 0,
                                      SHARD_SLOT_TAG - 1, present, &e);
    } else {
        rv = shard_store_exists_batch(s->store, h->vault_id.data, (const uint8_t(*)[32])ids, n,
                                      present, &e);
    }
    if (rv != 0) {
        r->status = rv;
        snprintf(r->msg, sizeof r->msg, "have chunks: %.220s", e.msg);
        goto out;
    }
    for (size_t i = 0; i < n; i++) {
        r->present[i] = present[i];
    }
out:
    hbc_free(ids);
    hbc_free(present);
}

/*
 * Back on the loop after a thread-pool job: the request, or NULL when the
 * job failed (the failure is then answered and a stopping server may finish).
 */
static struct req *work_returned(uv_work_t *w)
{
    struct req *r = w->data;
    struct server *s = r->conn->srv;
    s->works--;
    if (r->status != 0) {
        server_req_fail(r, r->status, r->msg);
        server_maybe_finish(s);
        return NULL;
    }
    return r;
}

void server_have_after_cb(uv_work_t *w, int status)
{
    (void)status;
    struct req *r = work_returned(w);
    if (r == NULL) {
        return;
    }
    struct server *s = r->conn->srv;
    Hbc__Frame f = HBC__FRAME__INIT;
    Hbc__HaveChunksReply rep = HBC__HAVE_CHUNKS_REPLY__INIT;
    f.request_id = r->frame->request_id;
    f.body_case = HBC__FRAME__BODY_HAVE_CHUNKS_REPLY;
    f.have_chunks_reply = &rep;
    rep.n_present = r->frame->have_chunks->n_chunk_ids;
    rep.present = r->present;
    server_req_finish(r, &f);
    server_maybe_finish(s);
}

/*
 * The epoch a listing started now vouches for: the current one, or lower
 * while a put accepted in an older epoch is still queued or committing (its
 * shards may land after the index scan). The mover waits for an epoch at
 * least its own, so it never settles a group on a listing that misses them.
 */
uint64_t server_list_epoch(const struct server *s)
{
    uint64_t epoch = s->raft != NULL ? fsm_placement_current(raft_node_fsm(s->raft)) : 0;
    if (s->npend > 0 && s->pend_epoch[0] < epoch) {
        epoch = s->pend_epoch[0];
    }
    return epoch;
}

/* PlacementList on the thread pool: one page of the vault's chunks (node/shard_store_list.h). */
void server_list_work_cb(uv_work_t *w)
{
    struct req *r = w->data;
    struct server *s = r->conn->srv;
    const Hbc__PlacementListRequest *q = r->frame->placement_list;
    size_t limit = q->has_limit && q->limit > 0 && q->limit < SHARD_STORE_LIST_MAX
                       ? q->limit
                       : SHARD_STORE_LIST_MAX;
    r->list = hbc_calloc(limit, sizeof *r->list);
    if (r->list == NULL) {
        r->status = HBC_ENOMEM;
        snprintf(r->msg, sizeof r->msg, "placement list: out of memory");
        return;
    }
    struct err e;
    int rv = shard_store_list_group(s->store, q->vault_id.data, q->has_after ? q->after.data : NULL,
                                    q->has_groups ? q->groups : 0, q->has_group ? q->group : 0,
                                    limit, r->list, &r->nlist, &r->list_more, &e);
    if (rv != 0) {
        r->status = rv;
        snprintf(r->msg, sizeof r->msg, "placement list: %.220s", e.msg);
    }
}

void server_list_after_cb(uv_work_t *w, int status)
{
    (void)status;
    struct req *r = work_returned(w);
    if (r == NULL) {
        return;
    }
    struct server *s = r->conn->srv;
    Hbc__Frame f = HBC__FRAME__INIT;
    Hbc__PlacementListReply rep = HBC__PLACEMENT_LIST_REPLY__INIT;
    f.request_id = r->frame->request_id;
    f.body_case = HBC__FRAME__BODY_PLACEMENT_LIST_REPLY;
    f.placement_list_reply = &rep;
    ProtobufCBinaryData *ids = hbc_calloc(r->nlist + 1, sizeof *ids);
    uint32_t *masks = hbc_calloc(r->nlist + 1, sizeof *masks);
    if (ids == NULL || masks == NULL) {
        hbc_free(ids);
        hbc_free(masks);
        server_req_fail(r, HBC_ENOMEM, "placement list: out of memory");
        server_maybe_finish(s);
        return;
    }
    size_t nsch = 0;
    for (size_t i = 0; i < r->nlist; i++) {
        nsch += r->list[i].nschemes;
    }
    Hbc__ShardSchemeMask *sch = hbc_calloc(nsch + 1, sizeof *sch);
    Hbc__ShardSchemeMask **schp = hbc_calloc(nsch + 1, sizeof *schp);
    if (sch == NULL || schp == NULL) {
        hbc_free(ids);
        hbc_free(masks);
        hbc_free(sch);
        hbc_free(schp);
        server_req_fail(r, HBC_ENOMEM, "placement list: out of memory");
        server_maybe_finish(s);
        return;
    }
    nsch = 0;
    for (size_t i = 0; i < r->nlist; i++) {
        ids[i] = (ProtobufCBinaryData){SHARD_STORE_CHUNK_ID_LEN, r->list[i].chunk_id};
        masks[i] = r->list[i].mask;
        for (unsigned x = 0; x < r->list[i].nschemes; x++) {
            hbc__shard_scheme_mask__init(&sch[nsch]);
            sch[nsch].chunk = (uint32_t)i;
            sch[nsch].k = r->list[i].schemes[x].k;
            sch[nsch].m = r->list[i].schemes[x].m;
            sch[nsch].mask = r->list[i].schemes[x].mask;
            schp[nsch] = &sch[nsch];
            nsch++;
        }
    }
    rep.scheme_masks = schp;
    rep.n_scheme_masks = nsch;
    rep.chunk_ids = ids;
    rep.n_chunk_ids = r->nlist;
    rep.index_masks = masks;
    rep.n_index_masks = r->nlist;
    rep.more = r->list_more;
    rep.epoch = r->epoch_at;
    server_req_finish(r, &f);
    hbc_free(ids);
    hbc_free(masks);
    hbc_free(sch);
    hbc_free(schp);
    server_maybe_finish(s);
}

/* ---------------------------------------------------------------------- */
/* Garbage collection: chunk listings                                      */

static void gc_list_work_cb(uv_work_t *w)
{
    struct req *r = w->data;
    struct server *s = r->conn->srv;
    const Hbc__GcListChunks *q = r->frame->gc_list_chunks;
    size_t max = q->has_max && q->max > 0 && q->max < GC_LIST_PAGE ? q->max : GC_LIST_PAGE;
    r->gc_ids = hbc_malloc(max * 32);
    r->gc_times = hbc_malloc(max * sizeof *r->gc_times);
    if (r->gc_ids == NULL || r->gc_times == NULL) {
        r->status = HBC_ENOMEM;
        snprintf(r->msg, sizeof r->msg, "gc list chunks: out of memory");
        return;
    }
    struct err e;
    int rv =
        shard_store_list_chunks(s->store, q->vault_id.data, q->has_after ? q->after.data : NULL,
                                max, r->gc_ids, r->gc_times, &r->gc_n, &r->gc_more, &e);
    if (rv != 0) {
        r->status = rv;
        snprintf(r->msg, sizeof r->msg, "gc list chunks: %.220s", e.msg);
    }
}

static void gc_list_after_cb(uv_work_t *w, int status)
{
    struct req *r = w->data;
    struct server *s = r->conn->srv;
    (void)status;
    s->works--;
    if (r->status != 0) {
        server_req_fail(r, r->status, r->msg);
    } else {
        Hbc__Frame f = HBC__FRAME__INIT;
        Hbc__GcListChunksReply rep = HBC__GC_LIST_CHUNKS_REPLY__INIT;
        ProtobufCBinaryData *ids = hbc_calloc(r->gc_n > 0 ? r->gc_n : 1, sizeof *ids);
        if (ids == NULL) {
            server_req_fail(r, HBC_ENOMEM, "gc list chunks: out of memory");
        } else {
            for (size_t i = 0; i < r->gc_n; i++) {
                ids[i] = (ProtobufCBinaryData){32, r->gc_ids[i]};
            }
            rep.chunk_ids = ids;
            rep.n_chunk_ids = r->gc_n;
            rep.stored_at_ms = r->gc_times;
            rep.n_stored_at_ms = r->gc_n;
            rep.has_more = true;
            rep.more = r->gc_more;
            f.request_id = r->frame->request_id;
            f.body_case = HBC__FRAME__BODY_GC_LIST_CHUNKS_REPLY;
            f.gc_list_chunks_reply = &rep;
            server_req_finish(r, &f);
            hbc_free(ids);
        }
    }
    server_maybe_finish(s);
}

/* GcListChunks: node certificates only (chunk ids are no secret, but listing is the GC's business).
 */
int server_gc_list_start(struct server *s, struct conn *c, struct req *r)
{
    const Hbc__GcListChunks *q = r->frame->gc_list_chunks;
    if (!tls_conn_peer_has_ou(c->tls, "node")) {
        server_req_fail(r, HBC_EDENIED,
                        "gc list chunks: only nodes of the cluster may list chunks");
        return 0;
    }
    if (q->vault_id.len != 16 || (q->has_after && q->after.len != 32)) {
        server_req_fail(r, HBC_EINVAL, "gc list chunks: a vault id has 16 bytes and a chunk id 32");
        return 0;
    }
    r->kind = REQ_GC_LIST;
    r->work.data = r;
    if (uv_queue_work(s->loop, &r->work, gc_list_work_cb, gc_list_after_cb) != 0) {
        server_req_fail(r, HBC_EUNAVAILABLE, "cannot queue work");
        return 0;
    }
    s->works++;
    return 0;
}
