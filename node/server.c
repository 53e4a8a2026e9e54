/*
 * The data-plane server of hbcd: accepts mutual-TLS connections, reads
 * length-prefixed frames and answers put, get, have and status requests.
 *
 * Happy path of a put: a PutShards frame arrives on a connection and is
 * decoded in place (common/frame_view.h): the request owns the frame's body
 * buffer, and the shards' bytes are referenced there, never copied, until
 * the segment append has written them and the put is answered. On the
 * thread pool, every shard's format and SHA-256 trailer is checked and the
 * SHA-256 the store records is computed (put_check_work_cb: many requests at
 * once, beside the commit running); the checked request then joins the
 * commit queue. The queued puts (up to the configured shards and bytes)
 * become one group commit that runs on the thread pool: the store appends
 * them all, fdatasyncs each segment once and writes one synced index batch.
 * Only in the after-work callback, on the loop, are the puts acknowledged.
 * Up to COMMIT_PIPELINE commits run at once: the store appends the next
 * one's shards while this one syncs, and each is acknowledged after its own
 * sync. Puts checked meanwhile wait for a next commit, so one fsync covers
 * everything that arrived during the previous one, and the hashing of the
 * next commit's shards overlaps this one's writes and syncs instead of
 * lengthening the cycle.
 *
 * Gets and existence queries run on the thread pool too (the store checks
 * every record's SHA-256 before returning it); status is answered inline.
 *
 * Failure modes: a peer that fails the TLS handshake, sends a length above
 * max_frame, a frame that does not parse or has an unknown type, or stays
 * idle too long is closed with a logged reason; its requests already in a
 * commit still complete (their replies are dropped). A request with a bad
 * shard gets an error frame and stores nothing. A store error fails the
 * whole commit: every put in it gets an error frame, nothing is acknowledged.
 *
 * Memory: each connection's held bytes (requests read but not answered plus
 * replies not yet sent) are bounded by conn_buffer: above it the server
 * stops reading from that peer until half of it has drained.
 */
#include "node/server_internal.h"

/*
 * Puts in flight by the placement epoch the node was in when it accepted
 * them (epochs only grow, so the table is in epoch order). A full table
 * counts a newer epoch under its last, older entry: listings then vouch for
 * less, never more.
 */
void server_pending_add(struct server *s, uint64_t epoch)
{
    if (s->npend > 0 && (s->pend_epoch[s->npend - 1] >= epoch || s->npend == SERVER_PEND_EPOCHS)) {
        s->pend_count[s->npend - 1]++;
        return;
    }
    s->pend_epoch[s->npend] = epoch;
    s->pend_count[s->npend] = 1;
    s->npend++;
}

void server_pending_del(struct server *s, uint64_t epoch)
{
    size_t i = s->npend;
    while (i > 0 && s->pend_epoch[i - 1] > epoch) {
        i--;
    }
    if (i == 0) {
        i = 1; /* cannot happen: counted under the oldest entry */
    }
    if (s->npend > 0 && s->pend_count[i - 1] > 0) {
        s->pend_count[i - 1]--;
    }
    size_t drop = 0;
    while (drop < s->npend && s->pend_count[drop] == 0) {
        drop++;
    }
    if (drop > 0) {
        memmove(s->pend_epoch, s->pend_epoch + drop, (s->npend - drop) * sizeof *s->pend_epoch);
        memmove(s->pend_count, s->pend_count + drop, (s->npend - drop) * sizeof *s->pend_count);
        s->npend -= drop;
    }
}

static void conn_read_check(struct conn *c);

/* ---------------------------------------------------------------------- */
/* Connections                                                             */

static void conn_unref(struct conn *c)
{
    if (--c->refs > 0) {
        return;
    }
    frame_reader_release(&c->reader);
    frame_pool_unref(c->pool);
    hbc_free(c);
}

/* Take back bytes charged to c and resume reading if it paused. */
static void conn_release_bytes(struct conn *c, size_t n)
{
    c->held = c->held >= n ? c->held - n : 0;
    conn_read_check(c);
}

/* Pause or resume reading from c so that what it holds stays bounded. */
static void conn_read_check(struct conn *c)
{
    struct server *s = c->srv;
    if (c->tls == NULL || !c->handshaken) {
        return;
    }
    bool over = c->held > s->cfg->conn_buffer || c->inflight >= CONN_MAX_INFLIGHT;
    bool under = c->held <= s->cfg->conn_buffer / 2 && c->inflight < CONN_MAX_INFLIGHT / 2;
    if (!c->paused && (over || s->stopping)) {
        if (tls_conn_read_stop(c->tls) == 0) {
            c->paused = true;
        }
    } else if (c->paused && under && !s->stopping) {
        if (tls_conn_read_start(c->tls) == 0) {
            c->paused = false;
        }
    }
}

static void reply_written_cb(struct tls_conn *t, int status, void *arg)
{
    (void)t;
    (void)status;
    struct req *r = arg;
    struct conn *c = r->conn;
    conn_release_bytes(c, r->bytes);
    hbc_free(r);
    conn_unref(c);
}

static void req_free(struct req *r)
{
    if (r->body != NULL) {
        frame_view_release(r->frame, r->body, r->conn->pool);
        r->body = NULL;
    } else {
        frame_free(r->frame);
    }
    r->frame = NULL;
    hbc_free(r->keys);
    r->keys = NULL;
    hbc_free(r->datas);
    hbc_free(r->lens);
    hbc_free(r->results);
    hbc_free(r->present);
    hbc_free(r->list);
    r->list = NULL;
    hbc_free(r->shas);
    r->shas = NULL;
    hbc_free(r->gc_ids);
    hbc_free(r->gc_times);
    r->gc_ids = NULL;
    r->gc_times = NULL;
    if (r->epoch_counted) {
        server_pending_del(r->conn->srv, r->epoch_at);
        r->epoch_counted = false;
    }
    r->datas = NULL;
    r->lens = NULL;
    r->results = NULL;
    r->present = NULL;
}

/* Drop r without a reply (its connection is gone or the reply failed). */
static void req_drop(struct req *r)
{
    struct conn *c = r->conn;
    req_free(r);
    conn_release_bytes(c, r->bytes);
    hbc_free(r);
    conn_unref(c);
}

/*
 * Send reply (borrowed; it may point into r's request) for r, then release
 * r: the reply's bytes stay charged to the connection until written. The
 * reply is encrypted straight from its buffers (frame_scatter_encode: large
 * bytes fields such as shards are not first packed into one frame buffer);
 * TLS borrows them only during tls_conn_write(), and r's request is freed
 * after it. If the connection is gone the reply is dropped.
 */
void server_req_finish(struct req *r, const Hbc__Frame *reply)
{
    struct conn *c = r->conn;
    struct server *s = c->srv;
    c->inflight--;
    c->last_active = uv_now(s->loop);
    if (c->tls == NULL) {
        req_drop(r);
        return;
    }
    struct frame_scatter fs;
    struct err e;
    err_clear(&e);
    int rv = frame_scatter_encode(reply, &fs, &e);
    if (rv == 0) {
        /* The reply's size replaces the request's in what the connection holds. */
        c->held += fs.len;
        conn_release_bytes(c, r->bytes);
        r->bytes = fs.len;
        rv = tls_conn_write(c->tls, fs.bufs, fs.nbufs, reply_written_cb, r, &e);
        frame_scatter_free(&fs);
    }
    req_free(r);
    if (rv == 0) {
        return;
    }
    hbc_log(LOG_WARN, "event=reply_failed peer=%s reason=\"%s\"", c->peer, e.msg);
    req_drop(r);
}

static Hbc__ErrorCode error_code_for(int code)
{
    switch (code) {
    case HBC_ENOTFOUND:
        return HBC__ERROR_CODE__ERROR_NOT_FOUND;
    case HBC_ECORRUPT:
    case HBC_EVERSION:
    case HBC_ETRUNCATED:
        return HBC__ERROR_CODE__ERROR_CORRUPT;
    case -ENOSPC:
        return HBC__ERROR_CODE__ERROR_NO_SPACE;
    case HBC_ETOOBIG:
        return HBC__ERROR_CODE__ERROR_TOO_BIG;
    case HBC_EDENIED:
        return HBC__ERROR_CODE__ERROR_DENIED;
    case HBC_EUNAVAILABLE:
    case HBC_EBUSY:
        return HBC__ERROR_CODE__ERROR_UNAVAILABLE;
    case HBC_EINVAL:
    case HBC_EFORMAT:
    case HBC_EPROTO:
    case HBC_ESCHEME:
        return HBC__ERROR_CODE__ERROR_BAD_REQUEST;
    case HBC_ESTALEEPOCH:
        return HBC__ERROR_CODE__ERROR_STALE_EPOCH;
    default:
        return HBC__ERROR_CODE__ERROR_INTERNAL;
    }
}

/* Answer r with an error frame carrying code and msg. */
void server_req_fail(struct req *r, int code, const char *msg)
{
    Hbc__Frame f = HBC__FRAME__INIT;
    Hbc__Error err = HBC__ERROR__INIT;
    f.request_id = r->frame != NULL ? r->frame->request_id : 0;
    f.body_case = HBC__FRAME__BODY_ERROR;
    f.error = &err;
    err.code = error_code_for(code);
    err.message = (char *)msg;
    r->conn->srv->stats.bad_requests++;
    hbc_log(LOG_INFO, "event=request_failed peer=%s request=%llu code=%s reason=\"%s\"",
            r->conn->peer, (unsigned long long)f.request_id, hbc_errname(code), msg);
    server_req_finish(r, &f);
}

static void gc_run_reply_cb(void *ctx, const Hbc__Frame *reply)
{
    server_req_finish(ctx, reply);
}

/* Whether the peer may run GC: the admin role in the state machine, or OU=admin while none has it.
 */
static bool gc_peer_admin(struct server *s, struct conn *c)
{
    const char *subject = tls_conn_peer_subject(c->tls);
    uint32_t roles = 0;
    struct err e;
    if (s->raft != NULL && fsm_get_roles(raft_node_fsm(s->raft), subject, &roles, &e) == 0 &&
        (roles & (1u << HBC__ROLE__ROLE_ADMIN)) != 0) {
        return true;
    }
    return tls_conn_peer_has_ou(c->tls, "admin");
}

/* ---------------------------------------------------------------------- */
/* Requests                                                                */

static void answer_status(struct req *r)
{
    struct server *s = r->conn->srv;
    struct shard_store_stats st;
    shard_store_stats(s->store, &st);
    Hbc__Frame f = HBC__FRAME__INIT;
    Hbc__StatusReply rep = HBC__STATUS_REPLY__INIT;
    f.request_id = r->frame->request_id;
    f.body_case = HBC__FRAME__BODY_STATUS_REPLY;
    f.status_reply = &rep;
    rep.node_id = s->cfg->node_id;
    rep.version = (char *)hbc_version();
    rep.capacity_bytes = s->cfg->capacity;
    rep.used_bytes = st.used_bytes;
    rep.shard_count = st.shard_count;
    rep.site = s->cfg->site;
    rep.region = s->cfg->region;
    rep.media = s->cfg->media;
    rep.has_worm = true;
    rep.worm = s->cfg->worm;
    struct gc_node_stats gs = gc_node_stats(s->gc);
    /* Only a node with a state machine applies sweeps; a data-only node never deletes. */
    if (s->raft != NULL) {
        rep.has_gc_safe_index = true;
        rep.gc_safe_index = gc_node_safe_index(s->gc, fsm_applied_index(raft_node_fsm(s->raft)));
    }
    rep.has_gc_deleted_shards = true;
    rep.gc_deleted_shards = gs.deleted_shards;
    rep.has_gc_freed_bytes = true;
    rep.gc_freed_bytes = gs.freed_bytes;
    rep.has_bytes_on_disk = true;
    rep.bytes_on_disk = st.bytes_on_disk;
    server_req_finish(r, &f);
}

/* Check keys of a get request before any work is queued. */
static int check_get(const Hbc__GetShards *g, char *msg, size_t mlen)
{
    if (g->n_keys == 0 || g->n_keys > REQUEST_MAX_KEYS) {
        snprintf(msg, mlen, "get shards: %zu keys (1 to %d allowed)", g->n_keys, REQUEST_MAX_KEYS);
        return HBC_EINVAL;
    }
    for (size_t i = 0; i < g->n_keys; i++) {
        if (g->keys[i]->vault_id.len != 16 || g->keys[i]->chunk_id.len != 32) {
            snprintf(msg, mlen, "get shards: key %zu has a bad vault or chunk id length", i);
            return HBC_EINVAL;
        }
    }
    return 0;
}

static int check_have(const Hbc__HaveChunks *h, char *msg, size_t mlen)
{
    if (h->vault_id.len != 16) {
        snprintf(msg, mlen, "have chunks: vault id of %zu bytes (want 16)", h->vault_id.len);
        return HBC_EINVAL;
    }
    if (h->n_chunk_ids > REQUEST_MAX_KEYS) {
        snprintf(msg, mlen, "have chunks: %zu ids (at most %d)", h->n_chunk_ids, REQUEST_MAX_KEYS);
        return HBC_EINVAL;
    }
    for (size_t i = 0; i < h->n_chunk_ids; i++) {
        if (h->chunk_ids[i].len != 32) {
            snprintf(msg, mlen, "have chunks: id %zu has %zu bytes (want 32)", i,
                     h->chunk_ids[i].len);
            return HBC_EINVAL;
        }
    }
    return 0;
}

static void control_reply_cb(void *ctx, const Hbc__Frame *reply)
{
    server_req_finish(ctx, reply);
}

/*
 * Take a request frame (owned) from c. body is NULL when protobuf-c unpacked
 * the frame, or the body its bytes point into (a put decoded in place,
 * owned too): the request keeps it until answered, so the shards go from
 * the frame buffer to the segment file without another copy.
 */
static int conn_take_frame(struct conn *c, Hbc__Frame *frame, uint8_t *body)
{
    struct server *s = c->srv;
    struct req *r = hbc_calloc(1, sizeof *r);
    if (r == NULL) {
        if (body != NULL) {
            frame_view_release(frame, body, c->pool);
        } else {
            frame_free(frame);
        }
        return HBC_ENOMEM;
    }
    r->conn = c;
    r->frame = frame;
    r->body = body;
    r->bytes = hbc__frame__get_packed_size(frame);
    c->refs++;
    c->inflight++;
    c->held += r->bytes;
    c->last_active = uv_now(s->loop);
    int rv = 0;
    switch (frame->body_case) {
    case HBC__FRAME__BODY_PUT_SHARDS: {
        size_t n = frame->put_shards->n_shards;
        if (n == 0 || n > SHARD_STORE_MAX_BATCH) {
            snprintf(r->msg, sizeof r->msg, "put shards: %zu shards (1 to %u allowed)", n,
                     SHARD_STORE_MAX_BATCH);
            server_req_fail(r, HBC_EINVAL, r->msg);
            break;
        }
        if (s->stopping) {
            server_req_fail(r, HBC_EUNAVAILABLE, "node is shutting down");
            break;
        }
        /* The placement fence: a writer with an older epoch's map must reload it. */
        uint64_t epoch = s->raft != NULL ? fsm_placement_current(raft_node_fsm(s->raft)) : 0;
        if (frame->put_shards->has_epoch && frame->put_shards->epoch < epoch) {
            snprintf(r->msg, sizeof r->msg,
                     "put shards: placement epoch %llu is stale (current %llu)",
                     (unsigned long long)frame->put_shards->epoch, (unsigned long long)epoch);
            server_req_fail(r, HBC_ESTALEEPOCH, r->msg);
            break;
        }
        r->kind = REQ_PUT;
        r->epoch_at = epoch;
        r->epoch_counted = true;
        server_pending_add(s, epoch);
        r->work.data = r;
        rv = uv_queue_work(s->loop, &r->work, server_put_check_work_cb, server_put_check_after_cb);
        if (rv != 0) {
            server_req_fail(r, HBC_EUNAVAILABLE, "cannot queue work");
            rv = 0;
        } else {
            s->works++;
        }
        break;
    }
    case HBC__FRAME__BODY_GET_SHARDS:
    case HBC__FRAME__BODY_HAVE_CHUNKS: {
        bool get = frame->body_case == HBC__FRAME__BODY_GET_SHARDS;
        rv = get ? check_get(frame->get_shards, r->msg, sizeof r->msg)
                 : check_have(frame->have_chunks, r->msg, sizeof r->msg);
        if (rv != 0) {
            server_req_fail(r, rv, r->msg);
            rv = 0;
            break;
        }
        r->kind = get ? REQ_GET : REQ_HAVE;
        if (get && server_get_inline(r)) {
            break;
        }
        r->work.data = r;
        rv = uv_queue_work(s->loop, &r->work, get ? server_get_work_cb : server_have_work_cb,
                           get ? server_get_after_cb : server_have_after_cb);
        if (rv != 0) {
            server_req_fail(r, HBC_EUNAVAILABLE, "cannot queue work");
            rv = 0;
        } else {
            s->works++;
        }
        break;
    }
    case HBC__FRAME__BODY_STATUS:
        answer_status(r);
        break;
    case HBC__FRAME__BODY_PLACEMENT_LIST: {
        const Hbc__PlacementListRequest *q = frame->placement_list;
        if (!tls_conn_peer_has_ou(c->tls, "node")) {
            server_req_fail(r, HBC_EDENIED, "placement list: only nodes may list chunks");
            break;
        }
        if (q->vault_id.len != 16 || (q->has_after && q->after.len != 32)) {
            server_req_fail(r, HBC_EINVAL, "placement list: bad vault id or after");
            break;
        }
        r->kind = REQ_LIST;
        r->epoch_at = server_list_epoch(s);
        r->work.data = r;
        if (uv_queue_work(s->loop, &r->work, server_list_work_cb, server_list_after_cb) != 0) {
            server_req_fail(r, HBC_EUNAVAILABLE, "cannot queue work");
        } else {
            s->works++;
        }
        break;
    }
    case HBC__FRAME__BODY_CLOCK_REQUEST:
        /* The voters' clock exchange (node/clock_sync.h): node certificates only. */
        if (!tls_conn_peer_has_ou(c->tls, "node")) {
            server_req_fail(r, HBC_EDENIED, "clock requests need a node certificate (OU=node)");
        } else {
            Hbc__Frame f;
            Hbc__ClockReply cr;
            clock_sync_answer(frame->request_id, &f, &cr);
            server_req_finish(r, &f);
        }
        break;
    case HBC__FRAME__BODY_GC_LIST_CHUNKS:
        rv = server_gc_list_start(s, c, r);
        break;
    case HBC__FRAME__BODY_GC_RUN:
        if (s->gcl == NULL) {
            server_req_fail(r, HBC_EUNAVAILABLE, "this node runs no metadata plane or is stopping");
            break;
        }
        gc_leader_request(s->gcl, frame, gc_peer_admin(s, c), gc_run_reply_cb, r);
        break;
    default:
        if (control_is_request(frame)) {
            struct control_peer peer = {
                .subject = tls_conn_peer_subject(c->tls),
                .cn = tls_conn_peer_cn(c->tls),
                .is_node = tls_conn_peer_has_ou(c->tls, "node"),
                .is_admin = tls_conn_peer_has_ou(c->tls, "admin"),
            };
            control_handle(s->raft, frame, &peer, control_reply_cb, r);
            break;
        }
        /* A reply type sent to a server: the peer is confused; tell it and go on. */
        server_req_fail(r, HBC_EPROTO, "this frame type is a reply, not a request");
        break;
    }
    conn_read_check(c);
    return rv;
}

static int frame_cb(Hbc__Frame *frame, void *arg)
{
    return conn_take_frame(arg, frame, NULL);
}

static int frame_view_cb(Hbc__Frame *frame, uint8_t *body, void *arg)
{
    return conn_take_frame(arg, frame, body);
}

static void on_read(struct tls_conn *t, const uint8_t *data, size_t n)
{
    struct conn *c = tls_conn_data(t);
    struct err e;
    err_clear(&e);
    c->last_active = uv_now(c->srv->loop);
    int rv = frame_reader_feed(&c->reader, data, n, &e);
    if (rv != 0) {
        c->srv->stats.conns_refused++;
        tls_conn_abort(t, rv, e.msg);
    }
}

static void on_handshake(struct tls_conn *t, int status)
{
    struct conn *c = tls_conn_data(t);
    if (status != 0) {
        return; /* on_close follows and logs the reason */
    }
    c->handshaken = true;
    c->last_active = uv_now(c->srv->loop);
    hbc_log(LOG_DEBUG, "event=conn_open peer=%s subject=\"%s\"", c->peer, tls_conn_peer_subject(t));
    if (c->srv->stopping) {
        tls_conn_close(t, 0, "node is shutting down");
    }
}

static void on_close(struct tls_conn *t, int status, const char *reason)
{
    struct conn *c = tls_conn_data(t);
    struct server *s = c->srv;
    /* After a frame error the reader is poisoned and what it holds means nothing. */
    size_t partial = c->reader.poison == 0 ? frame_reader_partial(&c->reader) : 0;
    if ((status != 0 && status != HBC_ECANCELED) || partial > 0) {
        /* A peer that hangs up cleanly in the middle of a frame sent a truncated frame. */
        if (status == 0) {
            status = HBC_ETRUNCATED;
            reason = "the peer closed the connection in the middle of a frame";
        }
        if (!c->handshaken) {
            s->stats.conns_refused++;
        }
        hbc_log(LOG_WARN,
                "event=conn_closed peer=%s subject=\"%s\" code=%s reason=\"%s\" "
                "truncated_frame_bytes=%zu",
                c->peer, tls_conn_peer_subject(t), hbc_errname(status), reason, partial);
    } else {
        hbc_log(LOG_DEBUG, "event=conn_closed peer=%s reason=\"%s\"", c->peer, reason);
    }
    c->tls = NULL;
    if (c->prev != NULL) {
        c->prev->next = c->next;
    } else {
        s->conns = c->next;
    }
    if (c->next != NULL) {
        c->next->prev = c->prev;
    }
    s->stats.conns_open--;
    conn_unref(c);
    server_maybe_finish(s);
}

/*
 * Once a frame's length is known (and bounded by max_frame), TLS decrypts
 * the rest of its body straight into the reader's buffer: no copy of the
 * plaintext from TLS's buffer (about a third of the loop thread's copying).
 */
static uint8_t *read_room(struct tls_conn *t, size_t *room)
{
    struct conn *c = tls_conn_data(t);
    return frame_reader_room(&c->reader, room);
}

static const struct tls_conn_cbs conn_cbs = {
    .on_handshake = on_handshake,
    .on_read = on_read,
    .on_close = on_close,
};

static void on_connection(uv_stream_t *listener, int status)
{
    struct server *s = listener->data;
    if (status != 0) {
        hbc_log(LOG_WARN, "event=accept_failed reason=\"%s\"", uv_strerror(status));
        return;
    }
    struct conn *c = hbc_calloc(1, sizeof *c);
    if (c == NULL) {
        hbc_log(LOG_ERROR, "event=accept_failed reason=\"out of memory\"");
        return;
    }
    c->srv = s;
    c->refs = 1;
    frame_reader_init(&c->reader, s->cfg->max_frame, frame_cb, c);
    c->pool = s->pool;
    frame_pool_ref(c->pool);
    frame_reader_set_view_cb(&c->reader, frame_view_cb, c->pool);
    struct err e;
    int rv = tls_accept(listener, s->tls, &conn_cbs, c, &c->tls, &e);
    if (rv != 0) {
        hbc_log(LOG_WARN, "event=accept_failed reason=\"%s\"", e.msg);
        frame_pool_unref(c->pool);
        hbc_free(c);
        return;
    }
    tls_conn_set_read_buffer(c->tls, read_room);
    snprintf(c->peer, sizeof c->peer, "%s", tls_conn_peer_addr(c->tls));
    c->next = s->conns;
    if (s->conns != NULL) {
        s->conns->prev = c;
    }
    s->conns = c;
    s->stats.conns_open++;
    s->stats.conns_accepted++;
    c->last_active = uv_now(s->loop);
    if (s->stats.conns_open > s->cfg->max_connections) {
        /* Counted as refused once, in on_close (the handshake never happened). */
        tls_conn_abort(c->tls, HBC_EBUSY, "too many connections (data.max_connections)");
    }
}

/*
 * Close connections that have been idle (no request in flight) too long. One
 * still in its handshake is TLS's to time out (data.handshake_timeout), so
 * that the log names the right reason.
 */
static void sweep_cb(uv_timer_t *t)
{
    struct server *s = t->data;
    uint64_t now = uv_now(s->loop);
    mover_set_leader(s->mover, s->raft != NULL && raft_node_is_leader(s->raft));
    uint64_t limit = (uint64_t)s->cfg->idle_timeout * 1000;
    for (struct conn *c = s->conns; c != NULL; c = c->next) {
        if (c->tls != NULL && c->handshaken && c->inflight == 0 && now - c->last_active > limit) {
            tls_conn_close(c->tls, -ETIMEDOUT, "idle for longer than data.idle_timeout");
        }
    }
}

/* ---------------------------------------------------------------------- */
/* Start and stop                                                          */

int server_start(uv_loop_t *loop, const struct node_config *cfg, struct tls_ctx *tls,
                 struct shard_store *store, struct server **out, struct err *e)
{
    struct server *s = hbc_calloc(1, sizeof *s);
    if (s == NULL) {
        return err_set(e, HBC_ENOMEM, "start server");
    }
    s->loop = loop;
    s->cfg = cfg;
    s->tls = tls;
    s->store = store;
    /*
     * Frame buffers kept for reuse (common/frame_pool.h): as many as the
     * commits in flight give back at once. With one commit's worth, a third
     * of the put bytes still went into freshly faulted pages.
     */
    s->pool = frame_pool_new((size_t)cfg->commit_max_bytes * COMMIT_PIPELINE);
    if (s->pool == NULL) {
        hbc_free(s);
        return err_set(e, HBC_ENOMEM, "start server");
    }
    int grv = gc_node_new(loop, store, &s->gc, e);
    if (grv != 0) {
        frame_pool_unref(s->pool);
        hbc_free(s);
        return grv;
    }
    struct sockaddr_in addr;
    char host[64];
    unsigned port = 0;
    if (sscanf(cfg->listen, "%63[0-9.]:%u", host, &port) != 2 ||
        uv_ip4_addr(host, (int)port, &addr) != 0) {
        gc_node_free(s->gc);
        frame_pool_unref(s->pool);
        hbc_free(s);
        return err_setraw(e, HBC_ECONFIG, "data.listen: '%s' is not an IPv4 address and port",
                          cfg->listen);
    }
    uv_tcp_init(loop, &s->listener);
    s->listener.data = s;
    s->handles_open++;
    int rv = uv_tcp_bind(&s->listener, (const struct sockaddr *)&addr, 0);
    if (rv == 0) {
        rv = uv_listen((uv_stream_t *)&s->listener, 511, on_connection);
    }
    if (rv != 0) {
        uv_close((uv_handle_t *)&s->listener, NULL);
        uv_run(loop, UV_RUN_NOWAIT);
        gc_node_free(s->gc);
        frame_pool_unref(s->pool);
        hbc_free(s);
        return err_setraw(e, rv, "listen on %s: %s", cfg->listen, uv_strerror(rv));
    }
    uv_timer_init(loop, &s->sweep);
    s->sweep.data = s;
    s->handles_open++;
    uv_timer_start(&s->sweep, sweep_cb, SWEEP_INTERVAL_MS, SWEEP_INTERVAL_MS);
    pthread_mutex_init(&s->space_mu, NULL);
    *out = s;
    return 0;
}

static void handle_closed_cb(uv_handle_t *h)
{
    struct server *s = h->data;
    s->handles_open--;
    server_maybe_finish(s);
}

/*
 * During a stop: once every received put is committed and answered, close
 * the connections; once they are all gone, the server is done.
 */
void server_maybe_finish(struct server *s)
{
    if (!s->stopping) {
        return;
    }
    if (s->committing > 0 || s->queue_head != NULL || s->works > 0 || s->gc_stopping ||
        s->gcl_stopping) {
        return;
    }
    if (!s->stopped_conns) {
        s->stopped_conns = true;
        for (struct conn *c = s->conns; c != NULL;) {
            struct conn *next = c->next;
            if (c->tls != NULL) {
                tls_conn_close(c->tls, 0, "node is shutting down");
            }
            c = next;
        }
        /* With no connection left, no close callback will call again: go on now. */
        if (s->conns != NULL) {
            return;
        }
    }
    if (s->conns != NULL || s->handles_open > 0 || s->done == NULL) {
        return;
    }
    void (*done)(void *) = s->done;
    void *arg = s->done_arg;
    s->done = NULL;
    hbc_log(LOG_INFO, "event=server_stopped puts_acked=%llu commits=%llu",
            (unsigned long long)s->stats.puts_acked, (unsigned long long)s->stats.commits);
    pthread_mutex_destroy(&s->space_mu);
    gc_node_free(s->gc);
    frame_pool_unref(s->pool);
    hbc_free(s);
    done(arg);
}

static void gc_node_idle_cb(void *arg)
{
    struct server *s = arg;
    s->gc_stopping = false;
    server_maybe_finish(s);
}

static void gc_leader_stopped_cb(void *arg)
{
    struct server *s = arg;
    s->gcl_stopping = false;
    server_maybe_finish(s);
}

static void server_stop_gc_leader(struct server *s)
{
    if (s->gcl != NULL) {
        struct gc_leader *g = s->gcl;
        s->gcl = NULL;
        s->gcl_stopping = true;
        gc_leader_stop(g, gc_leader_stopped_cb, s);
    }
}

void server_stop(struct server *s, void (*done)(void *arg), void *arg)
{
    if (s->stopping) {
        return;
    }
    s->stopping = true;
    s->done = done;
    s->done_arg = arg;
    mover_stop(s->mover);
    s->mover = NULL;
    hbc_log(LOG_INFO, "event=server_stopping queued_shards=%zu commits_running=%u", s->queue_shards,
            s->committing);
    uv_close((uv_handle_t *)&s->listener, handle_closed_cb);
    server_stop_gc_leader(s);
    s->gc_stopping = true;
    gc_node_stop(s->gc, gc_node_idle_cb, s);
    uv_timer_stop(&s->sweep);
    uv_close((uv_handle_t *)&s->sweep, handle_closed_cb);
    for (struct conn *c = s->conns; c != NULL; c = c->next) {
        conn_read_check(c);
    }
    server_maybe_finish(s);
}

void server_set_raft(struct server *s, struct raft_node *rn)
{
    if (rn == NULL) {
        server_stop_gc_leader(s); /* Raft is gone: no more cycles */
    } else if (s->raft == NULL && !s->stopping) {
        gc_node_attach(s->gc, raft_node_fsm(rn), s->tls);
        fsm_set_gc_hook(raft_node_fsm(rn), gc_node_on_sweep, s->gc);
        struct err e;
        if (gc_leader_new(s->loop, s->cfg, s->tls, rn, &s->gcl, &e) != 0) {
            hbc_log(LOG_ERROR, "event=gc_start_failed reason=\"%s\"", e.msg);
            s->gcl = NULL;
        }
    }
    s->raft = rn;
    if (rn == NULL) {
        mover_stop(s->mover);
        s->mover = NULL;
        return;
    }
    if (s->mover == NULL && !s->stopping) {
        struct mover_opts mo = {.node_id = s->cfg->node_id,
                                .fsm = raft_node_fsm(rn),
                                .store = s->store,
                                .tls = s->tls,
                                .rate = s->cfg->move_rate,
                                .interval_ms =
                                    s->cfg->move_interval > 0 ? s->cfg->move_interval : 2000,
                                .down_after_s = s->cfg->down_after,
                                .cleanup_after_s = s->cfg->cleanup_after};
        struct err e;
        if (mover_start(&mo, &s->mover, &e) != 0) {
            hbc_log(LOG_ERROR, "event=mover_start_failed reason=\"%s\"", e.msg);
        }
    }
}

void server_get_stats(const struct server *s, struct server_stats *out)
{
    *out = s->stats;
}
