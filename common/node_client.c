/*
 * A client's connection to one node's data plane: pipelined requests over
 * mutual TLS, replies matched by request id.
 *
 * Happy path: node_client_connect() starts tls_connect(); requests issued
 * meanwhile are encoded and parked; on the handshake they are written in
 * order. Each request is in a hash table by id (for replies, which may come
 * in any order: gets run on the node's thread pool, puts wait for a group
 * commit) and in a list by age (for the timeout and for cancelling on
 * close). A reply unlinks its request and fires its callback.
 *
 * Failure modes: the TLS connection closing for any reason cancels every
 * request from its on_close, and only then is the caller's on_close called
 * (after the timer handle is closed too, so that nothing refers to the
 * client when it is freed). A reply that does not parse, is too long, has an
 * unknown type or an unknown request id closes the connection: the stream
 * can no longer be trusted.
 */
#include "common/node_client.h"

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "common/alloc.h"
#include "common/frame.h"
#include "common/log.h"
#include "common/put_frame.h"
#include "common/shard_scheme.h"

/* nc_req.count of a request whose reply is not checked for a count. */
#define NO_COUNT SIZE_MAX

enum nc_state {
    NC_CONNECTING, /* TCP connect and TLS handshake under way */
    NC_OPEN,       /* requests flow */
    NC_CLOSING,    /* node_client_close() or a failure: waiting for TLS to finish */
    NC_CLOSED,     /* TLS is gone; waiting for the timer handle to close */
};

/* One request in flight. */
struct nc_req {
    uint64_t id;                 /* the frame's request_id */
    Hbc__Frame__BodyCase expect; /* the reply's body type */
    size_t count;                /* keys or ids asked (checked against the reply), or NO_COUNT */
    node_client_cb cb;           /* the caller's callback */
    void *arg;                   /* its argument */
    size_t bytes;                /* encoded request bytes charged */
    uint8_t *pending;            /* encoded frame waiting for the handshake (owned), or NULL */
    uint64_t issued_ms;          /* uv_now() when accepted, for the timeout */
    struct nc_req *hnext;        /* hash chain */
    struct nc_req *prev, *next;  /* age list, oldest first */
};

struct node_client {
    uv_loop_t *loop;              /* the loop everything runs on */
    struct tls_conn *conn;        /* the connection; NULL once TLS closed it */
    struct node_client_opts opts; /* defaults filled in; node_id points at node_id below */
    char *node_id;                /* expected certificate CN (owned), or NULL */
    struct node_client_cbs cbs;   /* the caller's callbacks */
    void *data;                   /* the caller's pointer */
    char addr[64];                /* the node's address, for messages */
    enum nc_state state;          /* see enum nc_state */
    bool connect_reported;        /* on_connect has fired */
    bool want_drain;              /* on_drain is owed once there is room */
    struct frame_reader reader;   /* reply frames */
    uv_timer_t timer;             /* request timeout checks */
    uint64_t next_id;             /* request id of the next request */
    struct nc_req **buckets;      /* hash table by id (owned) */
    size_t nbuckets;              /* a power of two */
    struct nc_req *oldest;        /* age list head */
    struct nc_req *newest;        /* age list tail */
    unsigned inflight;            /* requests in the table */
    size_t bytes;                 /* their encoded bytes */
    uint64_t sent;                /* requests accepted */
    uint64_t replies;             /* replies matched */
    uint64_t node_errors;         /* error frames received */
    int close_status;             /* what TLS's on_close said */
    char close_reason[256];       /* and why */
};

int node_client_error_code(Hbc__ErrorCode code)
{
    switch (code) {
    case HBC__ERROR_CODE__ERROR_NOT_FOUND:
        return HBC_ENOTFOUND;
    case HBC__ERROR_CODE__ERROR_CORRUPT:
        return HBC_ECORRUPT;
    case HBC__ERROR_CODE__ERROR_NO_SPACE:
        return -ENOSPC;
    case HBC__ERROR_CODE__ERROR_TOO_BIG:
        return HBC_ETOOBIG;
    case HBC__ERROR_CODE__ERROR_DENIED:
        return HBC_EDENIED;
    case HBC__ERROR_CODE__ERROR_UNAVAILABLE:
        return HBC_EUNAVAILABLE;
    case HBC__ERROR_CODE__ERROR_BAD_REQUEST:
        return HBC_EINVAL;
    case HBC__ERROR_CODE__ERROR_STALE_EPOCH:
        return HBC_ESTALEEPOCH;
    default:
        return HBC_EINTERNAL;
    }
}

/* ---------------------------------------------------------------------- */
/* The request table                                                       */

static void req_link(struct node_client *nc, struct nc_req *r)
{
    size_t b = (size_t)r->id & (nc->nbuckets - 1);
    r->hnext = nc->buckets[b];
    nc->buckets[b] = r;
    r->prev = nc->newest;
    r->next = NULL;
    if (nc->newest != NULL) {
        nc->newest->next = r;
    } else {
        nc->oldest = r;
    }
    nc->newest = r;
    nc->inflight++;
    nc->bytes += r->bytes;
}

/* Find and unlink the request with id; NULL if there is none. */
static struct nc_req *req_take(struct node_client *nc, uint64_t id)
{
    struct nc_req **pp = &nc->buckets[(size_t)id & (nc->nbuckets - 1)];
    while (*pp != NULL && (*pp)->id != id) {
        pp = &(*pp)->hnext;
    }
    struct nc_req *r = *pp;
    if (r == NULL) {
        return NULL;
    }
    *pp = r->hnext;
    if (r->prev != NULL) {
        r->prev->next = r->next;
    } else {
        nc->oldest = r->next;
    }
    if (r->next != NULL) {
        r->next->prev = r->prev;
    } else {
        nc->newest = r->prev;
    }
    nc->inflight--;
    nc->bytes -= r->bytes;
    return r;
}

bool node_client_full(const struct node_client *nc)
{
    return nc->inflight >= nc->opts.max_requests || nc->bytes >= nc->opts.max_bytes ||
           (nc->opts.max_queued > 0 && nc->conn != NULL &&
            tls_conn_queued(nc->conn) >= nc->opts.max_queued);
}

/* Fire on_drain if it is owed and there is room now. */
static void maybe_drain(struct node_client *nc)
{
    if (nc->want_drain && nc->state <= NC_OPEN && !node_client_full(nc)) {
        nc->want_drain = false;
        if (nc->cbs.on_drain != NULL) {
            nc->cbs.on_drain(nc);
        }
    }
}

/* A request's bytes went to the kernel (or not): with max_queued, that may make room. */
static void request_written(struct tls_conn *t, int status, void *arg)
{
    (void)t;
    if (status == 0) {
        maybe_drain(arg);
    }
}

/* Complete r (already unlinked) with an error and free it. */
static void req_fail(struct node_client *nc, struct nc_req *r, int status, const char *msg)
{
    struct node_client_result res = {.status = status, .message = msg, .reply = NULL};
    r->cb(nc, &res, r->arg);
    hbc_free(r->pending);
    hbc_free(r);
}

/* ---------------------------------------------------------------------- */
/* Replies                                                                 */

/* Check that a successful reply answers what r asked; 0 or HBC_EPROTO with msg set. */
static int reply_check(const struct nc_req *r, const Hbc__Frame *f, char *msg, size_t mlen)
{
    /* A node answers a read it cannot serve (a current read on a follower, no leader) with a
     * ProposeReply naming the code and the leader: the caller redirects on it. */
    bool refused_read = f->body_case == HBC__FRAME__BODY_PROPOSE_REPLY &&
                        (r->expect == HBC__FRAME__BODY_LIST_VAULTS_REPLY ||
                         r->expect == HBC__FRAME__BODY_LIST_SNAPSHOTS_REPLY);
    if (f->body_case != r->expect && !refused_read) {
        snprintf(msg, mlen, "request %llu: the node answered with frame type %d, not %d",
                 (unsigned long long)r->id, (int)f->body_case, (int)r->expect);
        return HBC_EPROTO;
    }
    if (r->count == NO_COUNT) {
        return 0;
    }
    if (f->body_case == HBC__FRAME__BODY_GET_SHARDS_REPLY) {
        const Hbc__GetShardsReply *g = f->get_shards_reply;
        if (g->n_shards + g->n_missing != r->count) {
            snprintf(msg, mlen,
                     "request %llu: get reply accounts for %zu shards + %zu missing, "
                     "but %zu were asked",
                     (unsigned long long)r->id, g->n_shards, g->n_missing, r->count);
            return HBC_EPROTO;
        }
    } else if (f->body_case == HBC__FRAME__BODY_HAVE_CHUNKS_REPLY) {
        if (f->have_chunks_reply->n_present != r->count) {
            snprintf(msg, mlen, "request %llu: have reply with %zu answers for %zu ids",
                     (unsigned long long)r->id, f->have_chunks_reply->n_present, r->count);
            return HBC_EPROTO;
        }
    }
    return 0;
}

static int reply_cb(Hbc__Frame *frame, void *arg)
{
    struct node_client *nc = arg;
    if (nc->state != NC_OPEN) {
        frame_free(frame);
        return HBC_ECANCELED; /* closing: what is left gets cancelled */
    }
    struct nc_req *r = req_take(nc, frame->request_id);
    if (r == NULL) {
        snprintf(nc->close_reason, sizeof nc->close_reason,
                 "reply to request %llu, which is not in flight",
                 (unsigned long long)frame->request_id);
        frame_free(frame);
        return HBC_EPROTO;
    }
    nc->replies++;
    char msg[640] = "";
    struct node_client_result res = {.status = 0, .message = msg, .reply = frame};
    if (frame->body_case == HBC__FRAME__BODY_ERROR) {
        nc->node_errors++;
        res.status = node_client_error_code(frame->error->code);
        res.reply = NULL;
        snprintf(msg, sizeof msg, "node %s: %s", nc->addr, frame->error->message);
    } else {
        res.status = reply_check(r, frame, msg, sizeof msg);
        if (res.status != 0) {
            res.reply = NULL;
        }
    }
    r->cb(nc, &res, r->arg);
    if (res.status != 0 || res.reply != NULL) {
        frame_free(frame);
    }
    hbc_free(r);
    maybe_drain(nc);
    return 0;
}

Hbc__Frame *node_client_take_reply(struct node_client_result *res)
{
    Hbc__Frame *f = res->reply;
    res->reply = NULL;
    return f;
}

/* ---------------------------------------------------------------------- */
/* TLS events                                                              */

static void on_read(struct tls_conn *t, const uint8_t *data, size_t n)
{
    struct node_client *nc = tls_conn_data(t);
    struct err e;
    err_clear(&e);
    nc->close_reason[0] = '\0';
    int rv = frame_reader_feed(&nc->reader, data, n, &e);
    if (rv == 0 || nc->state != NC_OPEN) {
        return;
    }
    char reason[600];
    snprintf(reason, sizeof reason, "bad reply from the node: %s",
             nc->close_reason[0] != '\0' ? nc->close_reason : e.msg);
    hbc_log(LOG_WARN, "event=node_client_protocol_error node=%s code=%s reason=\"%s\"", nc->addr,
            hbc_errname(rv), reason);
    nc->state = NC_CLOSING;
    tls_conn_abort(t, rv, reason);
}

/* Write the requests parked while the handshake ran, oldest first. */
static void flush_pending(struct node_client *nc)
{
    for (struct nc_req *r = nc->oldest; r != NULL && nc->state == NC_OPEN; r = r->next) {
        if (r->pending == NULL) {
            continue;
        }
        uv_buf_t b = uv_buf_init((char *)r->pending, (unsigned)r->bytes);
        struct err e;
        int rv = tls_conn_write(nc->conn, &b, 1, request_written, nc, &e);
        hbc_free(r->pending);
        r->pending = NULL;
        if (rv != 0) {
            /* The connection is closing; on_close cancels every request. */
            nc->state = NC_CLOSING;
            tls_conn_abort(nc->conn, rv, e.msg);
            return;
        }
    }
}

static void on_handshake(struct tls_conn *t, int status)
{
    struct node_client *nc = tls_conn_data(t);
    if (status == 0 && nc->node_id != NULL && strcmp(tls_conn_peer_cn(t), nc->node_id) != 0) {
        char reason[256];
        snprintf(reason, sizeof reason, "the node's certificate names '%.64s', not '%.64s'",
                 tls_conn_peer_cn(t), nc->node_id);
        status = HBC_EAUTH;
        nc->state = NC_CLOSING;
        tls_conn_abort(t, status, reason);
    }
    if (status == 0 && nc->state == NC_CONNECTING) {
        nc->state = NC_OPEN;
        flush_pending(nc);
    }
    if (!nc->connect_reported) {
        nc->connect_reported = true;
        if (nc->cbs.on_connect != NULL) {
            nc->cbs.on_connect(nc,
                               nc->state == NC_OPEN ? 0 : (status != 0 ? status : HBC_ECANCELED));
        }
    }
}

static void timer_closed_cb(uv_handle_t *h)
{
    struct node_client *nc = h->data;
    if (nc->cbs.on_close != NULL) {
        nc->cbs.on_close(nc, nc->close_status, nc->close_reason);
    }
    frame_reader_release(&nc->reader);
    hbc_free(nc->buckets);
    hbc_free(nc->node_id);
    hbc_free(nc);
}

static void on_close(struct tls_conn *t, int status, const char *reason)
{
    struct node_client *nc = tls_conn_data(t);
    nc->conn = NULL;
    nc->state = NC_CLOSED;
    nc->close_status = status;
    snprintf(nc->close_reason, sizeof nc->close_reason, "%s", reason);
    if (nc->oldest != NULL) {
        char msg[400];
        snprintf(msg, sizeof msg, "connection to %s closed before the reply: %s", nc->addr,
                 nc->close_reason);
        struct nc_req *r;
        while ((r = nc->oldest) != NULL) {
            req_take(nc, r->id);
            req_fail(nc, r, HBC_ECANCELED, msg);
        }
    }
    uv_close((uv_handle_t *)&nc->timer, timer_closed_cb);
}

/* A reply's body is decrypted straight into the reader's buffer once its length is known. */
static uint8_t *reply_room(struct tls_conn *t, size_t *room)
{
    struct node_client *nc = tls_conn_data(t);
    return frame_reader_room(&nc->reader, room);
}

static const struct tls_conn_cbs nc_tls_cbs = {
    .on_handshake = on_handshake,
    .on_read = on_read,
    .on_close = on_close,
};

/* Close the connection when its oldest request has waited too long. */
static void timer_cb(uv_timer_t *t)
{
    struct node_client *nc = t->data;
    struct nc_req *r = nc->oldest;
    if (r == NULL || nc->state > NC_OPEN || nc->conn == NULL) {
        return;
    }
    uint64_t age = uv_now(nc->loop) - r->issued_ms;
    if (age >= nc->opts.request_timeout_ms) {
        char reason[160];
        snprintf(reason, sizeof reason, "request %llu unanswered after %llu ms",
                 (unsigned long long)r->id, (unsigned long long)age);
        hbc_log(LOG_WARN, "event=node_client_timeout node=%s reason=\"%s\"", nc->addr, reason);
        nc->state = NC_CLOSING;
        tls_conn_abort(nc->conn, -ETIMEDOUT, reason);
    }
}

/* ---------------------------------------------------------------------- */
/* Connecting and closing                                                  */

int node_client_connect(uv_loop_t *loop, struct tls_ctx *tls, const char *addr,
                        const struct node_client_opts *opts, const struct node_client_cbs *cbs,
                        void *data, struct node_client **out, struct err *e)
{
    if (loop == NULL || tls == NULL || addr == NULL || out == NULL) {
        return err_set(e, HBC_EINVAL, "node client: loop, TLS context, address and out needed");
    }
    if (strlen(addr) >= sizeof((struct node_client *)0)->addr) {
        return err_set(e, HBC_EINVAL, "node client: address '%.80s' too long", addr);
    }
    struct node_client *nc = hbc_calloc(1, sizeof *nc);
    if (nc == NULL) {
        return err_set(e, HBC_ENOMEM, "node client %s", addr);
    }
    nc->loop = loop;
    if (opts != NULL) {
        nc->opts = *opts;
    }
    if (nc->opts.max_requests == 0) {
        nc->opts.max_requests = NODE_CLIENT_DEFAULT_REQUESTS;
    }
    if (nc->opts.max_bytes == 0) {
        nc->opts.max_bytes = NODE_CLIENT_DEFAULT_BYTES;
    }
    if (nc->opts.max_frame == 0 || nc->opts.max_frame > UINT32_MAX) {
        nc->opts.max_frame = nc->opts.max_frame == 0 ? FRAME_MAX_DEFAULT : UINT32_MAX;
    }
    if (cbs != NULL) {
        nc->cbs = *cbs;
    }
    nc->data = data;
    nc->next_id = 1;
    snprintf(nc->addr, sizeof nc->addr, "%s", addr);
    int rv = HBC_ENOMEM;
    if (opts != NULL && opts->node_id != NULL &&
        (nc->node_id = hbc_strdup(opts->node_id)) == NULL) {
        err_set(e, HBC_ENOMEM, "node client %s", addr);
        goto fail;
    }
    nc->opts.node_id = nc->node_id;
    nc->nbuckets = 16;
    while (nc->nbuckets < 2 * (size_t)nc->opts.max_requests && nc->nbuckets < ((size_t)1 << 20)) {
        nc->nbuckets *= 2;
    }
    nc->buckets = hbc_calloc(nc->nbuckets, sizeof *nc->buckets);
    if (nc->buckets == NULL) {
        err_set(e, HBC_ENOMEM, "node client %s: request table", addr);
        goto fail;
    }
    frame_reader_init(&nc->reader, nc->opts.max_frame, reply_cb, nc);
    rv = tls_connect(loop, tls, addr, &nc_tls_cbs, nc, &nc->conn, e);
    if (rv != 0) {
        err_wrap(e, "node client %s", addr);
        goto fail;
    }
    tls_conn_set_read_buffer(nc->conn, reply_room);
    uv_timer_init(loop, &nc->timer);
    nc->timer.data = nc;
    if (nc->opts.request_timeout_ms > 0) {
        uint64_t every = nc->opts.request_timeout_ms / 4;
        every = every < 50 ? 50 : every;
        uv_timer_start(&nc->timer, timer_cb, every, every);
    }
    *out = nc;
    return 0;

fail:
    hbc_free(nc->buckets);
    hbc_free(nc->node_id);
    hbc_free(nc);
    return rv;
}

void node_client_close(struct node_client *nc, int status, const char *reason)
{
    if (nc->state >= NC_CLOSING) {
        return;
    }
    nc->state = NC_CLOSING;
    if (status == 0) {
        tls_conn_close(nc->conn, 0, reason != NULL ? reason : "closed by the client");
    } else {
        tls_conn_abort(nc->conn, status, reason != NULL ? reason : "aborted by the client");
    }
}

/* ---------------------------------------------------------------------- */
/* Requests                                                                */

/* Encode f with the next request id and send it (or park it until the handshake). */
static int submit(struct node_client *nc, Hbc__Frame *f, Hbc__Frame__BodyCase expect, size_t count,
                  node_client_cb cb, void *arg, struct err *e)
{
    if (cb == NULL || f->body_case == HBC__FRAME__BODY__NOT_SET) {
        return err_set(e, HBC_EINVAL, "node %s: request without a callback or a body", nc->addr);
    }
    if (nc->state > NC_OPEN) {
        return err_set(e, HBC_ECANCELED, "node %s: the connection is closing", nc->addr);
    }
    if (node_client_full(nc)) {
        nc->want_drain = true;
        return err_setraw(e, HBC_EBUSY, "node %s: %u requests and %zu bytes in flight", nc->addr,
                          nc->inflight, nc->bytes);
    }
    f->request_id = nc->next_id;
    size_t size = frame_encoded_size(f);
    if (size - FRAME_PREFIX_LEN > nc->opts.max_frame) {
        return err_set(e, HBC_ETOOBIG, "node %s: a request of %zu bytes exceeds max_frame (%zu)",
                       nc->addr, size, nc->opts.max_frame);
    }
    struct nc_req *r = hbc_calloc(1, sizeof *r);
    if (r == NULL) {
        return err_set(e, HBC_ENOMEM, "node %s: request", nc->addr);
    }
    uint8_t *buf = NULL;
    size_t len = 0;
    int rv = frame_encode(f, &buf, &len, e);
    if (rv != 0) {
        hbc_free(r);
        return err_wrap_code(e, rv, "node %s", nc->addr);
    }
    if (nc->state == NC_OPEN) {
        uv_buf_t b = uv_buf_init((char *)buf, (unsigned)len);
        rv = tls_conn_write(nc->conn, &b, 1, request_written, nc, e);
        hbc_free(buf);
        buf = NULL;
        if (rv != 0) {
            hbc_free(r);
            return rv;
        }
    }
    r->id = nc->next_id++;
    r->expect = expect;
    r->count = count;
    r->cb = cb;
    r->arg = arg;
    r->bytes = len;
    r->pending = buf;
    r->issued_ms = uv_now(nc->loop);
    req_link(nc, r);
    nc->sent++;
    if (node_client_full(nc)) {
        nc->want_drain = true;
    }
    return 0;
}

static int check_ids(const struct node_client *nc, const uint8_t *vault_id, const uint8_t *chunk_id,
                     struct err *e)
{
    if (vault_id == NULL || chunk_id == NULL) {
        return err_set(e, HBC_EINVAL, "node %s: a shard key without a vault or chunk id", nc->addr);
    }
    return 0;
}

int node_client_put_shards(struct node_client *nc, const struct node_client_shard *shards, size_t n,
                           node_client_cb cb, void *arg, struct err *e)
{
    if (n == 0 || n > NODE_CLIENT_MAX_BATCH || shards == NULL) {
        return err_set(e, HBC_EINVAL, "node %s: put of %zu shards (1 to %u)", nc->addr, n,
                       NODE_CLIENT_MAX_BATCH);
    }
    Hbc__ShardBlob *blobs = hbc_calloc(n, sizeof *blobs);
    Hbc__ShardBlob **bp = hbc_calloc(n, sizeof *bp);
    int rv = HBC_ENOMEM;
    if (blobs == NULL || bp == NULL) {
        err_set(e, rv, "node %s: put of %zu shards", nc->addr, n);
        goto out;
    }
    for (size_t i = 0; i < n; i++) {
        const struct node_client_shard *s = &shards[i];
        rv = check_ids(nc, s->vault_id, s->chunk_id, e);
        if (rv == 0 && s->data == NULL) {
            rv = err_set(e, HBC_EINVAL, "node %s: shard %zu has no data", nc->addr, i);
        }
        if (rv != 0) {
            goto out;
        }
        hbc__shard_blob__init(&blobs[i]);
        blobs[i].vault_id.data = (uint8_t *)s->vault_id;
        blobs[i].vault_id.len = 16;
        blobs[i].chunk_id.data = (uint8_t *)s->chunk_id;
        blobs[i].chunk_id.len = 32;
        bool tagged = false;
        shard_slot_to_wire(s->index, &blobs[i].index, &tagged, &blobs[i].scheme_k,
                           &blobs[i].scheme_m);
        blobs[i].has_scheme_k = blobs[i].has_scheme_m = tagged;
        blobs[i].data.data = (uint8_t *)s->data;
        blobs[i].data.len = s->len;
        blobs[i].has_sha256_unset = s->sha256_unset;
        blobs[i].sha256_unset = s->sha256_unset;
        bp[i] = &blobs[i];
    }
    Hbc__Frame f = HBC__FRAME__INIT;
    Hbc__PutShards put = HBC__PUT_SHARDS__INIT;
    put.n_shards = n;
    put.shards = bp;
    f.body_case = HBC__FRAME__BODY_PUT_SHARDS;
    f.put_shards = &put;
    rv = submit(nc, &f, HBC__FRAME__BODY_PUT_SHARDS_REPLY, NO_COUNT, cb, arg, e);
out:
    hbc_free(blobs);
    hbc_free(bp);
    return rv;
}

int node_client_put_shards_epoch(struct node_client *nc, const struct node_client_shard *shards,
                                 size_t n, uint64_t epoch, node_client_cb cb, void *arg,
                                 struct err *e)
{
    if (n == 0 || n > NODE_CLIENT_MAX_BATCH || shards == NULL || cb == NULL) {
        return err_set(e, HBC_EINVAL, "node %s: put of %zu shards (1 to %u) or no callback",
                       nc->addr, n, NODE_CLIENT_MAX_BATCH);
    }
    if (nc->state > NC_OPEN) {
        return err_set(e, HBC_ECANCELED, "node %s: the connection is closing", nc->addr);
    }
    if (node_client_full(nc)) {
        nc->want_drain = true;
        return err_setraw(e, HBC_EBUSY, "node %s: %u requests and %zu bytes in flight", nc->addr,
                          nc->inflight, nc->bytes);
    }
    struct put_frame pf;
    int rv = put_frame_encode(nc->next_id, shards, n, epoch, &pf, e);
    if (rv != 0) {
        return err_wrap_code(e, rv, "node %s", nc->addr);
    }
    if (pf.len - FRAME_PREFIX_LEN > nc->opts.max_frame) {
        put_frame_free(&pf);
        return err_set(e, HBC_ETOOBIG, "node %s: a request of %zu bytes exceeds max_frame (%zu)",
                       nc->addr, pf.len, nc->opts.max_frame);
    }
    struct nc_req *r = hbc_calloc(1, sizeof *r);
    uint8_t *pending = NULL;
    if (r != NULL && nc->state != NC_OPEN) {
        pending = put_frame_flatten(&pf); /* parked until the handshake completes */
    }
    if (r == NULL || (nc->state != NC_OPEN && pending == NULL)) {
        hbc_free(r);
        put_frame_free(&pf);
        return err_set(e, HBC_ENOMEM, "node %s: request", nc->addr);
    }
    if (nc->state == NC_OPEN) {
        /* Encrypted straight from the shards' bytes. */
        rv = tls_conn_write(nc->conn, pf.bufs, pf.nbufs, request_written, nc, e);
        if (rv != 0) {
            hbc_free(r);
            put_frame_free(&pf);
            return rv;
        }
    }
    r->id = nc->next_id++;
    r->expect = HBC__FRAME__BODY_PUT_SHARDS_REPLY;
    r->count = NO_COUNT;
    r->cb = cb;
    r->arg = arg;
    r->bytes = pf.len;
    r->pending = pending;
    r->issued_ms = uv_now(nc->loop);
    put_frame_free(&pf);
    req_link(nc, r);
    nc->sent++;
    if (node_client_full(nc)) {
        nc->want_drain = true;
    }
    return 0;
}

int node_client_get_shards(struct node_client *nc, const struct node_client_key *keys, size_t n,
                           node_client_cb cb, void *arg, struct err *e)
{
    if (n == 0 || n > NODE_CLIENT_MAX_BATCH || keys == NULL) {
        return err_set(e, HBC_EINVAL, "node %s: get of %zu shards (1 to %u)", nc->addr, n,
                       NODE_CLIENT_MAX_BATCH);
    }
    Hbc__ShardKey *ks = hbc_calloc(n, sizeof *ks);
    Hbc__ShardKey **kp = hbc_calloc(n, sizeof *kp);
    int rv = HBC_ENOMEM;
    if (ks == NULL || kp == NULL) {
        err_set(e, rv, "node %s: get of %zu shards", nc->addr, n);
        goto out;
    }
    for (size_t i = 0; i < n; i++) {
        rv = check_ids(nc, keys[i].vault_id, keys[i].chunk_id, e);
        if (rv != 0) {
            goto out;
        }
        hbc__shard_key__init(&ks[i]);
        ks[i].vault_id.data = (uint8_t *)keys[i].vault_id;
        ks[i].vault_id.len = 16;
        ks[i].chunk_id.data = (uint8_t *)keys[i].chunk_id;
        ks[i].chunk_id.len = 32;
        bool tagged = false;
        shard_slot_to_wire(keys[i].index, &ks[i].index, &tagged, &ks[i].scheme_k, &ks[i].scheme_m);
        ks[i].has_scheme_k = ks[i].has_scheme_m = tagged;
        kp[i] = &ks[i];
    }
    Hbc__Frame f = HBC__FRAME__INIT;
    Hbc__GetShards get = HBC__GET_SHARDS__INIT;
    get.n_keys = n;
    get.keys = kp;
    f.body_case = HBC__FRAME__BODY_GET_SHARDS;
    f.get_shards = &get;
    rv = submit(nc, &f, HBC__FRAME__BODY_GET_SHARDS_REPLY, n, cb, arg, e);
out:
    hbc_free(ks);
    hbc_free(kp);
    return rv;
}

int node_client_have_chunks(struct node_client *nc, const uint8_t *vault_id,
                            const uint8_t (*chunk_ids)[32], size_t n, node_client_cb cb, void *arg,
                            struct err *e)
{
    if (vault_id == NULL || n > NODE_CLIENT_MAX_BATCH || (n > 0 && chunk_ids == NULL)) {
        return err_set(e, HBC_EINVAL, "node %s: have of %zu ids (0 to %u, with a vault id)",
                       nc->addr, n, NODE_CLIENT_MAX_BATCH);
    }
    ProtobufCBinaryData *ids = hbc_calloc(n > 0 ? n : 1, sizeof *ids);
    if (ids == NULL) {
        return err_set(e, HBC_ENOMEM, "node %s: have of %zu ids", nc->addr, n);
    }
    for (size_t i = 0; i < n; i++) {
        ids[i].data = (uint8_t *)chunk_ids[i];
        ids[i].len = 32;
    }
    Hbc__Frame f = HBC__FRAME__INIT;
    Hbc__HaveChunks have = HBC__HAVE_CHUNKS__INIT;
    have.vault_id.data = (uint8_t *)vault_id;
    have.vault_id.len = 16;
    have.n_chunk_ids = n;
    have.chunk_ids = ids;
    f.body_case = HBC__FRAME__BODY_HAVE_CHUNKS;
    f.have_chunks = &have;
    int rv = submit(nc, &f, HBC__FRAME__BODY_HAVE_CHUNKS_REPLY, n, cb, arg, e);
    hbc_free(ids);
    return rv;
}

int node_client_status(struct node_client *nc, node_client_cb cb, void *arg, struct err *e)
{
    Hbc__Frame f = HBC__FRAME__INIT;
    Hbc__StatusRequest st = HBC__STATUS_REQUEST__INIT;
    f.body_case = HBC__FRAME__BODY_STATUS;
    f.status = &st;
    return submit(nc, &f, HBC__FRAME__BODY_STATUS_REPLY, NO_COUNT, cb, arg, e);
}

int node_client_request(struct node_client *nc, Hbc__Frame *frame, Hbc__Frame__BodyCase expect,
                        node_client_cb cb, void *arg, struct err *e)
{
    if (frame == NULL) {
        return err_set(e, HBC_EINVAL, "node %s: no frame", nc->addr);
    }
    return submit(nc, frame, expect, NO_COUNT, cb, arg, e);
}

/* ---------------------------------------------------------------------- */
/* Accessors                                                               */

bool node_client_is_open(const struct node_client *nc)
{
    return nc->state == NC_OPEN;
}

void node_client_stats(const struct node_client *nc, struct node_client_stats *out)
{
    out->requests_inflight = nc->inflight;
    out->bytes_inflight = nc->bytes;
    out->tls_queued = nc->conn != NULL ? tls_conn_queued(nc->conn) : 0;
    out->requests_sent = nc->sent;
    out->replies = nc->replies;
    out->node_errors = nc->node_errors;
}

const char *node_client_addr(const struct node_client *nc)
{
    return nc->addr;
}

void *node_client_data(const struct node_client *nc)
{
    return nc->data;
}

void node_client_set_data(struct node_client *nc, void *data)
{
    nc->data = data;
}
