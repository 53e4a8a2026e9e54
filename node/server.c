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
#include "node/server.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/statvfs.h>

#include <hbc/hbc.h>

#include "common/alloc.h"
#include "common/erasure.h"
#include "common/frame.h"
#include "common/frame_scatter.h"
#include "common/frame_view.h"
#include "common/log.h"
#include "common/shard_scheme.h"
#include "node/clock_sync.h"
#include "node/control.h"
#include "node/fsm.h"
#include "node/gc.h"
#include "node/fsm_placement.h"
#include "node/mover.h"
#include "node/raft_node.h"
#include "node/shard_store_list.h"
#include "hbc.pb-c.h"

/* Requests a connection may have in flight before reading pauses. */
#define CONN_MAX_INFLIGHT 512
/* How often idle connections are looked for, ms. */
#define SWEEP_INTERVAL_MS 1000
/* Largest number of keys or ids in one get or have request. */
#define REQUEST_MAX_KEYS 4096
/* A get whose shards are all cached and add up to at most this is answered on the loop thread. */
#define GET_INLINE_MAX_BYTES (2u << 20)
/*
 * Bytes of free space a group commit leaves on the data directory's filesystem
 * for the index: a RocksDB write that meets ENOSPC leaves RocksDB read-only and
 * the shard store refusing writes until reopened (store_write_sync), while a
 * segment append that meets it is cut back and the node takes puts again as
 * soon as space returns. So puts fail with ENOSPC before the index can.
 */
#define SERVER_DISK_RESERVE (16ULL << 20)
/*
 * Group commits in flight at once: the shard store appends the next one's
 * shards while this one fdatasyncs and writes its index batch. A second
 * commit starts only with at least 1/COMMIT_SECOND_SHARE of a full commit
 * queued, so that what it appends is worth its own sync.
 */
#define COMMIT_PIPELINE 2
/* Distinct placement epochs of puts in flight tracked (list_epoch()). */
#define SERVER_PEND_EPOCHS 8
#define COMMIT_SECOND_SHARE 4

struct conn;

enum req_kind { REQ_PUT, REQ_GET, REQ_HAVE, REQ_LIST, REQ_GC_LIST };

/* One request being worked on: owns its frame until answered. */
struct req {
    enum req_kind kind;            /* what was asked */
    struct conn *conn;             /* who asked (holds a reference) */
    Hbc__Frame *frame;             /* the request, owned */
    uint8_t *body;                 /* put decoded in place: the frame's body, which frame's shard
                                      bytes point into (owned; freed after frame), else NULL */
    size_t bytes;                  /* bytes charged to the connection for it */
    int status;                    /* 0, or why it failed (for an error frame) */
    char msg[256];                 /* the failure's explanation */
    struct req *next;              /* commit queue / commit batch link */
    uv_work_t work;                /* for gets and haves */
    Hbc__Frame *reply;             /* get/have: the reply built on the worker */
    struct shard_key *keys;        /* get: the decoded keys (owned) */
    uint8_t **datas;               /* get: shard data per key (owned) */
    size_t *lens;                  /* get: their lengths */
    int *results;                  /* get: per-key results */
    protobuf_c_boolean *present;   /* have: per-id answer */
    uint8_t *shas;                 /* put: the shards' SHA-256s, 32 bytes each (owned) */
    struct shard_list_entry *list; /* placement list: the chunks found (owned) */
    size_t nlist;                  /* placement list: how many */
    bool list_more;                /* placement list: more follow */
    uint64_t epoch_at;             /* put: the node's epoch when it was accepted; list: the epoch
                                      the listing vouches for (list_epoch()) */
    bool epoch_counted;            /* put: counted in the server's pending epochs */
    uint8_t (*gc_ids)[32];         /* gc list: chunk ids found */
    uint64_t *gc_times;            /* gc list: their stored-at times */
    size_t gc_n;                   /* gc list: how many */
    bool gc_more;                  /* gc list: more follow */
};

/* One group commit on the thread pool. */
struct commit {
    struct server *srv; /* owner */
    uv_work_t work;     /* the thread-pool request */
    struct req *reqs;   /* the puts it covers, in arrival order */
    size_t nshards;     /* shards in it */
    int status;         /* 0 or the store's error for the whole batch */
    char msg[512];      /* its explanation */
};

struct conn {
    struct server *srv;         /* owner */
    struct tls_conn *tls;       /* the connection; NULL once closed */
    struct frame_reader reader; /* incoming frames */
    struct frame_pool *pool;    /* the server's body buffers (a reference, for reader and bodies) */
    struct conn *prev, *next;   /* the server's list */
    unsigned refs;              /* 1 while open + 1 per request in flight */
    unsigned inflight;          /* requests not yet answered */
    size_t held;                /* bytes held: requests in flight + unsent replies */
    bool paused;                /* reading stopped for backpressure */
    bool handshaken;            /* TLS handshake completed */
    uint64_t last_active;       /* uv_now of the last frame or reply */
    char peer[64];              /* peer address, for logs */
};

struct server {
    uv_loop_t *loop;                         /* the node's loop */
    const struct node_config *cfg;           /* borrowed */
    struct tls_ctx *tls;                     /* borrowed */
    struct shard_store *store;               /* borrowed */
    struct raft_node *raft;                  /* the metadata plane (borrowed), or NULL */
    struct mover *mover;                     /* moves shards between placement epochs, or NULL */
    uint64_t pend_epoch[SERVER_PEND_EPOCHS]; /* epochs of puts in flight, oldest first */
    uint64_t pend_count[SERVER_PEND_EPOCHS]; /* how many puts of each */
    size_t npend;                            /* entries in use */
    uv_tcp_t listener;                       /* the listening socket */
    uv_timer_t sweep;                        /* idle sweep */
    struct conn *conns;                      /* open connections */
    struct req *queue_head, *queue_tail;     /* puts waiting for the next commit */
    size_t queue_shards;                     /* shards in the queue */
    size_t queue_bytes;                      /* bytes of the requests in the queue */
    unsigned committing;                     /* group commits running (at most COMMIT_PIPELINE) */
    pthread_mutex_t space_mu;                /* guards space_reserved (commit workers) */
    uint64_t space_reserved;                 /* bytes of commits past the space check, not stored */
    unsigned works;                          /* get, have and put-check works running */
    unsigned handles_open;                   /* listener + sweep handles not yet closed */
    bool stopping;                           /* server_stop() was called */
    bool stopped_conns;                      /* connections were told to close */
    void (*done)(void *);                    /* server_stop()'s callback */
    void *done_arg;                          /* its argument */
    struct server_stats stats;               /* counters */
    struct frame_pool *pool;                 /* put frame bodies for reuse (connections share it) */
    struct gc_node *gc;                      /* deletions for accepted GC sweeps */
    struct gc_leader *gcl; /* GC cycles when leader (NULL without Raft or once stopped) */
    bool gcl_stopping;     /* gc_leader_stop() was called and has not finished */
    bool gc_stopping;      /* gc_node_stop() was called and has not finished */
};

/*
 * Puts in flight by the placement epoch the node was in when it accepted
 * them (epochs only grow, so the table is in epoch order). A full table
 * counts a newer epoch under its last, older entry: listings then vouch for
 * less, never more.
 */
static void pending_add(struct server *s, uint64_t epoch)
{
    if (s->npend > 0 && (s->pend_epoch[s->npend - 1] >= epoch || s->npend == SERVER_PEND_EPOCHS)) {
        s->pend_count[s->npend - 1]++;
        return;
    }
    s->pend_epoch[s->npend] = epoch;
    s->pend_count[s->npend] = 1;
    s->npend++;
}

static void pending_del(struct server *s, uint64_t epoch)
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
static void server_maybe_commit(struct server *s);
static void server_maybe_finish(struct server *s);

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
        pending_del(r->conn->srv, r->epoch_at);
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
 * r: the reply's bytes stay charged to the connection until written. If the
 * connection is gone the reply is dropped.
 */
static void req_finish(struct req *r, const Hbc__Frame *reply)
{
    struct conn *c = r->conn;
    struct server *s = c->srv;
    c->inflight--;
    c->last_active = uv_now(s->loop);
    if (c->tls == NULL) {
        req_drop(r);
        return;
    }
    uint8_t *buf = NULL;
    size_t len = 0;
    struct err e;
    err_clear(&e);
    int rv = frame_encode(reply, &buf, &len, &e);
    req_free(r);
    if (rv == 0) {
        /* The reply's size replaces the request's in what the connection holds. */
        c->held += len;
        conn_release_bytes(c, r->bytes);
        r->bytes = len;
        uv_buf_t b = uv_buf_init((char *)buf, (unsigned)len);
        rv = tls_conn_write(c->tls, &b, 1, reply_written_cb, r, &e);
        hbc_free(buf);
        if (rv == 0) {
            return;
        }
    }
    hbc_log(LOG_WARN, "event=reply_failed peer=%s reason=\"%s\"", c->peer, e.msg);
    req_drop(r);
}

/*
 * req_finish() for a reply with large bytes fields (shards): encrypted
 * straight from the message's buffers (frame_scatter_encode), without first
 * packing it into one frame buffer. Small fields are copied before r's
 * request is freed, so they may point into it; bytes fields of
 * FRAME_SCATTER_BORROW_MIN or more must be the caller's (freed on return).
 */
static void req_finish_scatter(struct req *r, const Hbc__Frame *reply)
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
    req_free(r);
    if (rv == 0) {
        c->held += fs.len;
        conn_release_bytes(c, r->bytes);
        r->bytes = fs.len;
        rv = tls_conn_write(c->tls, fs.bufs, fs.nbufs, reply_written_cb, r, &e);
        frame_scatter_free(&fs);
        if (rv == 0) {
            return;
        }
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
static void req_fail(struct req *r, int code, const char *msg)
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
    req_finish(r, &f);
}

/* ---------------------------------------------------------------------- */
/* Group commit                                                            */

/*
 * Check one shard blob of a put: bounded, well formed, and naming what it
 * claims; sha gets the SHA-256 of the whole blob that the store records
 * (computed in the same pass as the blob's own SHA-256 check).
 */
static int check_blob(const Hbc__ShardBlob *b, uint64_t max_shard,
                      uint8_t sha[SHARD_STORE_SHA256_LEN], char *msg, size_t mlen)
{
    if (b->vault_id.len != SHARD_STORE_VAULT_ID_LEN ||
        b->chunk_id.len != SHARD_STORE_CHUNK_ID_LEN) {
        snprintf(msg, mlen,
                 "shard key has a %zu-byte vault id and a %zu-byte chunk id (want 16 and 32)",
                 b->vault_id.len, b->chunk_id.len);
        return HBC_EINVAL;
    }
    if (b->data.len > max_shard) {
        snprintf(msg, mlen, "shard of %zu bytes exceeds the node's max_shard of %llu", b->data.len,
                 (unsigned long long)max_shard);
        return HBC_ETOOBIG;
    }
    struct erasure_shard_info info;
    const uint8_t *payload;
    struct err e;
    /* A client may leave the trailer to the node (ShardBlob.sha256_unset): fill it in. */
    int rv = b->has_sha256_unset && b->sha256_unset
                 ? erasure_shard_fill_sha256(b->data.data, b->data.len, &info, &payload, sha, &e)
                 : erasure_shard_decode_sha256(b->data.data, b->data.len, &info, &payload, sha, &e);
    if (rv != 0) {
        snprintf(msg, mlen, "shard %u: %.200s", b->index, e.msg);
        return rv;
    }
    if (memcmp(info.vault_id, b->vault_id.data, SHARD_STORE_VAULT_ID_LEN) != 0 ||
        memcmp(info.chunk_id, b->chunk_id.data, SHARD_STORE_CHUNK_ID_LEN) != 0 ||
        info.index != b->index) {
        snprintf(msg, mlen,
                 "shard %u: its header names another vault, chunk or index than the request",
                 b->index);
        return HBC_EINVAL;
    }
    /* A shard of another scheme than the vault's base one is stored under a tagged slot. */
    uint32_t slot = 0;
    rv = shard_slot_from_wire(b->index, b->has_scheme_k, b->scheme_k, b->has_scheme_m, b->scheme_m,
                              &slot, &e);
    if (rv == 0 && b->has_scheme_k && (info.k != b->scheme_k || info.m != b->scheme_m)) {
        rv = err_set(&e, HBC_ESCHEME, "its header says %u+%u, the request %u+%u", info.k, info.m,
                     b->scheme_k, b->scheme_m);
    }
    if (rv != 0) {
        snprintf(msg, mlen, "shard %u: %.200s", b->index, e.msg);
        return rv;
    }
    return 0;
}

/*
 * Check every shard of a put request and compute the SHA-256 the store
 * records for each (on the thread pool, outside the group commit).
 */
static void put_check_work_cb(uv_work_t *w)
{
    struct req *r = w->data;
    struct server *s = r->conn->srv;
    Hbc__PutShards *p = r->frame->put_shards;
    r->shas = hbc_calloc(p->n_shards, SHARD_STORE_SHA256_LEN);
    if (r->shas == NULL) {
        r->status = HBC_ENOMEM;
        snprintf(r->msg, sizeof r->msg, "put shards: out of memory");
        return;
    }
    for (size_t i = 0; i < p->n_shards && r->status == 0; i++) {
        r->status = check_blob(p->shards[i], s->cfg->max_shard,
                               r->shas + i * SHARD_STORE_SHA256_LEN, r->msg, sizeof r->msg);
    }
}

/* A checked put joins the commit queue; a bad one is answered now. */
static void put_check_after_cb(uv_work_t *w, int status)
{
    struct req *r = w->data;
    struct server *s = r->conn->srv;
    s->works--;
    if (status != 0 && r->status == 0) {
        r->status = HBC_ECANCELED;
        snprintf(r->msg, sizeof r->msg, "put shards: check cancelled");
    }
    if (r->status != 0) {
        req_fail(r, r->status, r->msg);
        server_maybe_finish(s);
        return;
    }
    if (s->queue_tail != NULL) {
        s->queue_tail->next = r;
    } else {
        s->queue_head = r;
    }
    s->queue_tail = r;
    s->queue_shards += r->frame->put_shards->n_shards;
    s->queue_bytes += r->bytes;
    server_maybe_commit(s);
    server_maybe_finish(s);
}

static void commit_work_cb(uv_work_t *w)
{
    struct commit *cm = w->data;
    struct server *s = cm->srv;
    struct shard_put *puts = hbc_calloc(cm->nshards, sizeof *puts);
    int *results = hbc_calloc(cm->nshards, sizeof *results);
    if (puts == NULL || results == NULL) {
        cm->status = HBC_ENOMEM;
        snprintf(cm->msg, sizeof cm->msg, "group commit: out of memory");
        goto out;
    }
    size_t n = 0;
    uint64_t bytes = 0;
    for (struct req *r = cm->reqs; r != NULL; r = r->next) {
        Hbc__PutShards *p = r->frame->put_shards;
        if (r->status != 0) {
            continue;
        }
        /* Checked and hashed by put_check_work_cb before the request was queued. */
        for (size_t i = 0; i < p->n_shards; i++) {
            Hbc__ShardBlob *b = p->shards[i];
            memcpy(puts[n].key.vault_id, b->vault_id.data, SHARD_STORE_VAULT_ID_LEN);
            memcpy(puts[n].key.chunk_id, b->chunk_id.data, SHARD_STORE_CHUNK_ID_LEN);
            /* Checked by check_blob(): the slot is valid. */
            (void)shard_slot_from_wire(b->index, b->has_scheme_k, b->scheme_k, b->has_scheme_m,
                                       b->scheme_m, &puts[n].key.index, NULL);
            puts[n].data = b->data.data;
            puts[n].len = b->data.len;
            puts[n].sha256 = r->shas + i * SHARD_STORE_SHA256_LEN;
            bytes += b->data.len + SHARD_STORE_RECORD_HEADER_LEN;
            n++;
        }
    }
    if (n == 0) {
        goto out;
    }
    /*
     * Another commit may be past this check and not yet stored: its bytes
     * are reserved, so that the two together fit (counted twice for a
     * moment once it is stored: refusing a little early, never too late).
     */
    pthread_mutex_lock(&s->space_mu);
    uint64_t reserved = s->space_reserved;
    struct shard_store_stats st;
    shard_store_stats(s->store, &st);
    if (st.used_bytes + reserved + bytes > s->cfg->capacity) {
        pthread_mutex_unlock(&s->space_mu);
        cm->status = -ENOSPC;
        snprintf(cm->msg, sizeof cm->msg,
                 "no space: the node is full ([node] capacity): %llu of %llu bytes used, %llu more "
                 "asked",
                 (unsigned long long)(st.used_bytes + reserved),
                 (unsigned long long)s->cfg->capacity, (unsigned long long)bytes);
        goto out;
    }
    /* Leave the index room to grow (see SERVER_DISK_RESERVE). */
    struct statvfs vfs;
    if (statvfs(s->cfg->data_dir, &vfs) == 0 &&
        (uint64_t)vfs.f_bavail * vfs.f_frsize < bytes + reserved + SERVER_DISK_RESERVE) {
        pthread_mutex_unlock(&s->space_mu);
        cm->status = -ENOSPC;
        snprintf(cm->msg, sizeof cm->msg,
                 "no space: %llu bytes free on the data directory's filesystem, %llu asked "
                 "plus %llu kept for the index",
                 (unsigned long long)vfs.f_bavail * vfs.f_frsize,
                 (unsigned long long)(bytes + reserved), (unsigned long long)SERVER_DISK_RESERVE);
        goto out;
    }
    s->space_reserved += bytes;
    pthread_mutex_unlock(&s->space_mu);
    struct err e;
    err_clear(&e);
    int rv = shard_store_put_batch(s->store, puts, n, results, &e);
    pthread_mutex_lock(&s->space_mu);
    s->space_reserved -= bytes;
    pthread_mutex_unlock(&s->space_mu);
    if (rv != 0) {
        cm->status = rv;
        snprintf(cm->msg, sizeof cm->msg, "group commit: %.480s", e.msg);
        goto out;
    }
    /* A different shard already stored under a key fails that request. */
    size_t k = 0;
    for (struct req *r = cm->reqs; r != NULL; r = r->next) {
        if (r->status != 0) {
            continue;
        }
        Hbc__PutShards *p = r->frame->put_shards;
        for (size_t i = 0; i < p->n_shards; i++, k++) {
            if (results[k] < 0 && r->status == 0) {
                r->status = results[k];
                snprintf(r->msg, sizeof r->msg, "shard %u: %s", p->shards[i]->index,
                         results[k] == HBC_EEXIST
                             ? "a different shard is already stored under this key"
                             : hbc_strerror(results[k]));
            }
        }
    }
out:
    hbc_free(puts);
    hbc_free(results);
}

static void commit_after_cb(uv_work_t *w, int status)
{
    struct commit *cm = w->data;
    struct server *s = cm->srv;
    (void)status;
    s->committing--;
    s->stats.commits++;
    struct req *r = cm->reqs;
    while (r != NULL) {
        struct req *next = r->next;
        if (cm->status != 0) {
            req_fail(r, cm->status, cm->msg);
        } else if (r->status != 0) {
            req_fail(r, r->status, r->msg);
        } else {
            Hbc__Frame f = HBC__FRAME__INIT;
            Hbc__PutShardsReply rep = HBC__PUT_SHARDS_REPLY__INIT;
            f.request_id = r->frame->request_id;
            f.body_case = HBC__FRAME__BODY_PUT_SHARDS_REPLY;
            f.put_shards_reply = &rep;
            rep.stored = (uint32_t)r->frame->put_shards->n_shards;
            s->stats.puts_acked += rep.stored;
            req_finish(r, &f);
        }
        r = next;
    }
    if (cm->status != 0) {
        hbc_log(LOG_ERROR, "event=commit_failed shards=%zu reason=\"%s\"", cm->nshards, cm->msg);
    }
    hbc_free(cm);
    server_maybe_commit(s);
    server_maybe_finish(s);
}

/* Start a group commit of the queued puts if fewer than COMMIT_PIPELINE are running. */
static void server_maybe_commit(struct server *s)
{
    if (s->committing >= COMMIT_PIPELINE || s->queue_head == NULL) {
        return;
    }
    if (s->committing > 0 && !s->stopping &&
        s->queue_shards < s->cfg->commit_max_shards / COMMIT_SECOND_SHARE &&
        s->queue_bytes < s->cfg->commit_max_bytes / COMMIT_SECOND_SHARE) {
        return; /* started when the running commit ends, or when more has queued */
    }
    struct commit *cm = hbc_calloc(1, sizeof *cm);
    if (cm == NULL) {
        return; /* retried when the next put arrives or a reply is sent */
    }
    cm->srv = s;
    size_t bytes = 0;
    struct req **tail = &cm->reqs;
    while (s->queue_head != NULL) {
        struct req *r = s->queue_head;
        size_t n = r->frame->put_shards->n_shards;
        if (cm->reqs != NULL && (cm->nshards + n > s->cfg->commit_max_shards ||
                                 bytes + r->bytes > s->cfg->commit_max_bytes)) {
            break;
        }
        s->queue_head = r->next;
        r->next = NULL;
        *tail = r;
        tail = &r->next;
        cm->nshards += n;
        bytes += r->bytes;
        s->queue_shards -= n;
        s->queue_bytes -= r->bytes;
    }
    if (s->queue_head == NULL) {
        s->queue_tail = NULL;
    }
    cm->work.data = cm;
    s->committing++;
    int rv = uv_queue_work(s->loop, &cm->work, commit_work_cb, commit_after_cb);
    if (rv != 0) {
        cm->status = rv;
        snprintf(cm->msg, sizeof cm->msg, "group commit: queue work: %s", uv_strerror(rv));
        commit_after_cb(&cm->work, rv);
    }
}

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

static void get_work_cb(uv_work_t *w)
{
    struct req *r = w->data;
    struct server *s = r->conn->srv;
    /* get_inline() may have prepared r already. */
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
        req_fail(r, r->status, r->msg);
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
        req_fail(r, HBC_ENOMEM, "get shards: out of memory");
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
        req_fail(r, HBC_ETOOBIG,
                 "get shards: the reply would exceed max_frame; ask for fewer shards at once");
    } else {
        req_finish_scatter(r, &f);
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
 * is prepared for get_work_cb.
 */
static bool get_inline(struct req *r)
{
    struct server *s = r->conn->srv;
    if (get_prepare(r) != 0) {
        get_reply(r); /* the failure, as get_work_cb would have reported it */
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

static void get_after_cb(uv_work_t *w, int status)
{
    struct req *r = w->data;
    struct server *s = r->conn->srv;
    (void)status;
    s->works--;
    get_reply(r);
    /* Only now, after the reply is queued, may a stopping server close the connections. */
    server_maybe_finish(s);
}

static void have_work_cb(uv_work_t *w)
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
        req_fail(r, r->status, r->msg);
        server_maybe_finish(s);
        return NULL;
    }
    return r;
}

static void have_after_cb(uv_work_t *w, int status)
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
    req_finish(r, &f);
    server_maybe_finish(s);
}

/*
 * The epoch a listing started now vouches for: the current one, or lower
 * while a put accepted in an older epoch is still queued or committing (its
 * shards may land after the index scan). The mover waits for an epoch at
 * least its own, so it never settles a group on a listing that misses them.
 */
static uint64_t list_epoch(const struct server *s)
{
    uint64_t epoch = s->raft != NULL ? fsm_placement_current(raft_node_fsm(s->raft)) : 0;
    if (s->npend > 0 && s->pend_epoch[0] < epoch) {
        epoch = s->pend_epoch[0];
    }
    return epoch;
}

/* PlacementList on the thread pool: one page of the vault's chunks (node/shard_store_list.h). */
static void list_work_cb(uv_work_t *w)
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

static void list_after_cb(uv_work_t *w, int status)
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
        req_fail(r, HBC_ENOMEM, "placement list: out of memory");
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
        req_fail(r, HBC_ENOMEM, "placement list: out of memory");
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
    req_finish(r, &f);
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
        req_fail(r, r->status, r->msg);
    } else {
        Hbc__Frame f = HBC__FRAME__INIT;
        Hbc__GcListChunksReply rep = HBC__GC_LIST_CHUNKS_REPLY__INIT;
        ProtobufCBinaryData *ids = hbc_calloc(r->gc_n > 0 ? r->gc_n : 1, sizeof *ids);
        if (ids == NULL) {
            req_fail(r, HBC_ENOMEM, "gc list chunks: out of memory");
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
            req_finish(r, &f);
            hbc_free(ids);
        }
    }
    server_maybe_finish(s);
}

/* GcListChunks: node certificates only (chunk ids are no secret, but listing is the GC's business).
 */
static int gc_list_start(struct server *s, struct conn *c, struct req *r)
{
    const Hbc__GcListChunks *q = r->frame->gc_list_chunks;
    if (!tls_conn_peer_has_ou(c->tls, "node")) {
        req_fail(r, HBC_EDENIED, "gc list chunks: only nodes of the cluster may list chunks");
        return 0;
    }
    if (q->vault_id.len != 16 || (q->has_after && q->after.len != 32)) {
        req_fail(r, HBC_EINVAL, "gc list chunks: a vault id has 16 bytes and a chunk id 32");
        return 0;
    }
    r->kind = REQ_GC_LIST;
    r->work.data = r;
    if (uv_queue_work(s->loop, &r->work, gc_list_work_cb, gc_list_after_cb) != 0) {
        req_fail(r, HBC_EUNAVAILABLE, "cannot queue work");
        return 0;
    }
    s->works++;
    return 0;
}

static void gc_run_reply_cb(void *ctx, const Hbc__Frame *reply)
{
    req_finish(ctx, reply);
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
    req_finish(r, &f);
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
    req_finish(ctx, reply);
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
            req_fail(r, HBC_EINVAL, r->msg);
            break;
        }
        if (s->stopping) {
            req_fail(r, HBC_EUNAVAILABLE, "node is shutting down");
            break;
        }
        /* The placement fence: a writer with an older epoch's map must reload it. */
        uint64_t epoch = s->raft != NULL ? fsm_placement_current(raft_node_fsm(s->raft)) : 0;
        if (frame->put_shards->has_epoch && frame->put_shards->epoch < epoch) {
            snprintf(r->msg, sizeof r->msg,
                     "put shards: placement epoch %llu is stale (current %llu)",
                     (unsigned long long)frame->put_shards->epoch, (unsigned long long)epoch);
            req_fail(r, HBC_ESTALEEPOCH, r->msg);
            break;
        }
        r->kind = REQ_PUT;
        r->epoch_at = epoch;
        r->epoch_counted = true;
        pending_add(s, epoch);
        r->work.data = r;
        rv = uv_queue_work(s->loop, &r->work, put_check_work_cb, put_check_after_cb);
        if (rv != 0) {
            req_fail(r, HBC_EUNAVAILABLE, "cannot queue work");
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
            req_fail(r, rv, r->msg);
            rv = 0;
            break;
        }
        r->kind = get ? REQ_GET : REQ_HAVE;
        if (get && get_inline(r)) {
            break;
        }
        r->work.data = r;
        rv = uv_queue_work(s->loop, &r->work, get ? get_work_cb : have_work_cb,
                           get ? get_after_cb : have_after_cb);
        if (rv != 0) {
            req_fail(r, HBC_EUNAVAILABLE, "cannot queue work");
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
            req_fail(r, HBC_EDENIED, "placement list: only nodes may list chunks");
            break;
        }
        if (q->vault_id.len != 16 || (q->has_after && q->after.len != 32)) {
            req_fail(r, HBC_EINVAL, "placement list: bad vault id or after");
            break;
        }
        r->kind = REQ_LIST;
        r->epoch_at = list_epoch(s);
        r->work.data = r;
        if (uv_queue_work(s->loop, &r->work, list_work_cb, list_after_cb) != 0) {
            req_fail(r, HBC_EUNAVAILABLE, "cannot queue work");
        } else {
            s->works++;
        }
        break;
    }
    case HBC__FRAME__BODY_CLOCK_REQUEST:
        /* The voters' clock exchange (node/clock_sync.h): node certificates only. */
        if (!tls_conn_peer_has_ou(c->tls, "node")) {
            req_fail(r, HBC_EDENIED, "clock requests need a node certificate (OU=node)");
        } else {
            Hbc__Frame f;
            Hbc__ClockReply cr;
            clock_sync_answer(frame->request_id, &f, &cr);
            req_finish(r, &f);
        }
        break;
    case HBC__FRAME__BODY_GC_LIST_CHUNKS:
        rv = gc_list_start(s, c, r);
        break;
    case HBC__FRAME__BODY_GC_RUN:
        if (s->gcl == NULL) {
            req_fail(r, HBC_EUNAVAILABLE, "this node runs no metadata plane or is stopping");
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
        req_fail(r, HBC_EPROTO, "this frame type is a reply, not a request");
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
static void server_maybe_finish(struct server *s)
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
