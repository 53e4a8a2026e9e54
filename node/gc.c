/*
 * Garbage collection run by the cluster (node/gc.h, docs/retention.md).
 *
 * Node side, happy path: the state machine accepts a GcSweep, the hook copies
 * its ids into a job, the job runs on the thread pool (delete the shards this
 * node stored before the cutoff, compact segments that are mostly garbage),
 * and its after-callback counts and logs. Failure modes: a store error ends
 * the job (logged; the garbage stays for a later cycle, nothing live is
 * touched), a stop drops queued jobs the same way.
 *
 * Leader side, happy path: a request or the timer starts a cycle thread; the
 * thread reads state and proposes sweeps through its own node's data plane
 * (blocking rpc_call with the node certificate), then hands its summary to
 * the loop with uv_async_send. Failure modes: a node that does not answer
 * the listing is left out (it still deletes what a sweep names); a reference
 * list no node can return ends that vault's cycle before any sweep (fail
 * closed); a lost leadership or a refused sweep ends the vault's cycle.
 */
#include "node/gc.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/evp.h>

#include "common/alloc.h"
#include "common/erasure.h"
#include "common/frame.h"
#include "common/log.h"
#include "common/reflist.h"
#include "common/rpc_call.h"
#include "node/fsm.h"
#include "node/gc_live.h"

#define ID_LEN 32
#define VAULT_LEN 16
#define GC_RPC_TIMEOUT_MS 30000
#define GC_COMPACT_BELOW 0.5  /* compact segments whose live ratio is below this */
#define GC_MAX_REMARKS 100    /* re-marks after stale sweeps, per vault and cycle */
#define GC_LIVE_KEEP_MS 60000 /* a node keeps a vault's live set this long after a sweep */

/* ---------------------------------------------------------------------- */
/* Node side: deletions for accepted sweeps                                */

struct gc_job {
    struct gc_node *g;           /* owner */
    uv_work_t work;              /* on the thread pool */
    uint64_t index;              /* the sweep's Raft index */
    uint8_t vault_id[VAULT_LEN]; /* its vault */
    uint64_t cutoff_ms;          /* delete only shards stored before this */
    uint8_t (*ids)[ID_LEN];      /* its chunk ids (owned) */
    size_t n;                    /* how many */
    uint64_t deleted;            /* result: shards removed */
    uint64_t kept_young;         /* result: shards kept, stored after the cutoff */
    uint64_t freed;              /* result: bytes given back */
    uint64_t refused_live;       /* result: named chunks a present snapshot references */
    size_t marked;               /* result: reference lists loaded for this sweep */
    uint8_t (*refs)[ID_LEN];     /* reference-list heads of the vault's snapshots (owned) */
    size_t nrefs;                /* how many */
    struct gc_peer *peers;       /* nodes to fetch a reference list from (owned) */
    size_t npeers;               /* how many */
    int status;                  /* result: 0 or the store's error */
    char msg[256];               /* its explanation */
    struct gc_job *next;         /* queue link */
};

struct gc_node {
    uv_loop_t *loop;           /* the node's loop */
    struct shard_store *store; /* borrowed */
    struct fsm *fsm;     /* borrowed (gc_node_attach): the applied state sweeps are checked on */
    struct tls_ctx *tls; /* borrowed (gc_node_attach): to fetch reference lists from peers */
    struct gc_job *head, *tail; /* queued jobs, oldest first (head may be running) */
    bool running;               /* head is on the thread pool */
    bool stopping;              /* gc_node_stop() was called */
    void (*idle)(void *);       /* gc_node_stop()'s callback */
    void *idle_arg;             /* its argument */
    struct gc_node_stats stats; /* counters */
    struct gc_live live;        /* the live set between sweeps (job thread while running) */
    uv_timer_t *live_timer;     /* frees live once no sweep came for GC_LIVE_KEEP_MS, or NULL */
};

struct gc_peer;
static int live_filter(struct gc_job *j, struct err *e);

static void job_free(struct gc_job *j)
{
    if (j != NULL) {
        hbc_free(j->refs);
        hbc_free(j->peers);
        hbc_free(j->ids);
        hbc_free(j);
    }
}

static void job_work_cb(uv_work_t *w)
{
    struct gc_job *j = w->data;
    struct err e;
    err_clear(&e);
    uint64_t bytes = 0;
    int rv = live_filter(j, &e);
    if (rv != 0) {
        j->status = rv;
        snprintf(j->msg, sizeof j->msg,
                 "nothing deleted: cannot check the sweep against the "
                 "snapshots' reference lists: %.150s",
                 e.msg);
        return;
    }
    rv = shard_store_delete_old(j->g->store, j->vault_id, (const uint8_t(*)[ID_LEN])j->ids, j->n,
                                j->cutoff_ms, &j->deleted, &j->kept_young, &bytes, &e);
    if (rv != 0) {
        j->status = rv;
        snprintf(j->msg, sizeof j->msg, "%.250s", e.msg);
        return;
    }
    j->freed = bytes;
    if (j->deleted == 0) {
        return;
    }
    /* Give the space back: segments that are now mostly garbage are copied forward. */
    struct shard_segment_info *segs = NULL;
    size_t nsegs = 0;
    if (shard_store_segments(j->g->store, &segs, &nsegs, &e) != 0) {
        return;
    }
    for (size_t i = 0; i < nsegs; i++) {
        if (segs[i].size == 0 || segs[i].live_ratio >= GC_COMPACT_BELOW) {
            continue;
        }
        struct shard_compact_result res = {0};
        if (shard_store_compact(j->g->store, segs[i].number, &res, &e) == 0) {
            hbc_log(LOG_INFO, "event=gc_compact segment=%llu copied_records=%llu freed_bytes=%llu",
                    (unsigned long long)segs[i].number, (unsigned long long)res.copied_records,
                    (unsigned long long)res.freed_bytes);
        } else {
            hbc_log(LOG_WARN, "event=gc_compact_failed segment=%llu reason=\"%s\"",
                    (unsigned long long)segs[i].number, e.msg);
        }
    }
    hbc_free(segs);
}

static void job_start(struct gc_node *g);

static void live_timer_cb(uv_timer_t *t)
{
    struct gc_node *g = t->data;
    if (!g->running) {
        gc_live_clear(&g->live);
    }
}

/* Keep the live set for GC_LIVE_KEEP_MS more (the next sweep of the cycle reuses it), then free it.
 */
static void live_keep(struct gc_node *g)
{
    if (g->live_timer == NULL) {
        g->live_timer = hbc_malloc(sizeof *g->live_timer);
        if (g->live_timer == NULL) {
            gc_live_clear(&g->live);
            return;
        }
        uv_timer_init(g->loop, g->live_timer);
        uv_unref((uv_handle_t *)g->live_timer);
        g->live_timer->data = g;
    }
    uv_timer_start(g->live_timer, live_timer_cb, GC_LIVE_KEEP_MS, 0);
}

static void live_timer_closed_cb(uv_handle_t *h)
{
    struct gc_node *g = h->data;
    hbc_free(h);
    if (g->idle != NULL) {
        void (*idle)(void *) = g->idle;
        g->idle = NULL;
        idle(g->idle_arg);
    }
}

static void job_after_cb(uv_work_t *w, int status)
{
    struct gc_job *j = w->data;
    struct gc_node *g = j->g;
    (void)status;
    g->running = false;
    g->head = j->next;
    if (g->head == NULL) {
        g->tail = NULL;
    }
    if (j->status != 0) {
        hbc_log(LOG_ERROR, "event=gc_delete_failed sweep_index=%llu reason=\"%s\"",
                (unsigned long long)j->index, j->msg);
    } else {
        g->stats.sweeps++;
        g->stats.deleted_shards += j->deleted;
        g->stats.kept_young += j->kept_young;
        g->stats.freed_bytes += j->freed;
        if (j->refused_live > 0) {
            hbc_log(LOG_ERROR,
                    "event=gc_sweep_live_refused sweep_index=%llu chunks=%llu reason=\"the sweep "
                    "names chunks that snapshots present in this node's applied state reference; "
                    "they are kept\"",
                    (unsigned long long)j->index, (unsigned long long)j->refused_live);
        }
        hbc_log(LOG_INFO,
                "event=gc_delete sweep_index=%llu chunks=%zu deleted_shards=%llu kept_young=%llu "
                "freed_bytes=%llu reflists_loaded=%zu",
                (unsigned long long)j->index, j->n, (unsigned long long)j->deleted,
                (unsigned long long)j->kept_young, (unsigned long long)j->freed, j->marked);
    }
    job_free(j);
    job_start(g);
    if (!g->running && !g->stopping) {
        live_keep(g);
    }
}

static void job_start(struct gc_node *g)
{
    if (g->running) {
        return;
    }
    if (g->stopping) {
        while (g->head != NULL) {
            struct gc_job *j = g->head;
            g->head = j->next;
            job_free(j);
        }
        g->tail = NULL;
        gc_live_clear(&g->live);
        if (g->live_timer != NULL) {
            /* The idle callback runs once the timer is closed. */
            uv_timer_t *t = g->live_timer;
            g->live_timer = NULL;
            uv_close((uv_handle_t *)t, live_timer_closed_cb);
        } else if (g->idle != NULL) {
            void (*idle)(void *) = g->idle;
            g->idle = NULL;
            idle(g->idle_arg);
        }
        return;
    }
    struct gc_job *j = g->head;
    if (j == NULL) {
        return;
    }
    if (g->live_timer != NULL) {
        uv_timer_stop(g->live_timer);
    }
    j->work.data = j;
    if (uv_queue_work(g->loop, &j->work, job_work_cb, job_after_cb) != 0) {
        j->status = HBC_EUNAVAILABLE;
        snprintf(j->msg, sizeof j->msg, "cannot queue work");
        g->head = j->next;
        if (g->head == NULL) {
            g->tail = NULL;
        }
        hbc_log(LOG_ERROR, "event=gc_delete_failed sweep_index=%llu reason=\"%s\"",
                (unsigned long long)j->index, j->msg);
        job_free(j);
        return;
    }
    g->running = true;
}

int gc_node_new(uv_loop_t *loop, struct shard_store *store, struct gc_node **out, struct err *e)
{
    struct gc_node *g = hbc_calloc(1, sizeof *g);
    if (g == NULL) {
        return err_set(e, HBC_ENOMEM, "gc node");
    }
    g->loop = loop;
    g->store = store;
    *out = g;
    return 0;
}

void gc_node_attach(struct gc_node *g, struct fsm *fsm, struct tls_ctx *tls)
{
    g->fsm = fsm;
    g->tls = tls;
}

static int collect_refs(struct gc_node *g, struct gc_job *j, struct err *e);

void gc_node_on_sweep(void *arg, uint64_t index, const Hbc__GcSweep *sweep)
{
    struct gc_node *g = arg;
    if (g->stopping) {
        return;
    }
    struct gc_job *j = hbc_calloc(1, sizeof *j);
    if (j != NULL) {
        j->ids = hbc_malloc(sweep->n_chunk_ids * ID_LEN);
    }
    if (j == NULL || j->ids == NULL) {
        /* Fail safe: nothing is deleted; a later cycle finds the garbage again. */
        hbc_log(LOG_ERROR, "event=gc_delete_failed sweep_index=%llu reason=\"out of memory\"",
                (unsigned long long)index);
        job_free(j);
        return;
    }
    j->g = g;
    j->index = index;
    memcpy(j->vault_id, sweep->vault_id.data, VAULT_LEN);
    j->cutoff_ms = sweep->cutoff_ms;
    for (size_t i = 0; i < sweep->n_chunk_ids; i++) {
        memcpy(j->ids[i], sweep->chunk_ids[i].data, ID_LEN);
    }
    j->n = sweep->n_chunk_ids;
    /*
     * The fence: this node's applied state at the sweep decides what is still
     * referenced. Collect it now, on the loop thread inside the apply; the job
     * loads the reference lists and keeps every chunk they name.
     */
    struct err e;
    if (g->fsm == NULL || collect_refs(g, j, &e) != 0) {
        hbc_log(LOG_ERROR, "event=gc_delete_failed sweep_index=%llu reason=\"nothing deleted: %s\"",
                (unsigned long long)index, g->fsm == NULL ? "no state machine attached" : e.msg);
        job_free(j);
        return;
    }
    if (g->tail != NULL) {
        g->tail->next = j;
    } else {
        g->head = j;
    }
    g->tail = j;
    job_start(g);
}

uint64_t gc_node_safe_index(const struct gc_node *g, uint64_t applied)
{
    if (g != NULL && g->head != NULL && g->head->index - 1 < applied) {
        return g->head->index - 1;
    }
    return applied;
}

bool gc_node_busy(const struct gc_node *g)
{
    return g != NULL && g->running;
}

void gc_node_stop(struct gc_node *g, void (*idle)(void *arg), void *arg)
{
    g->stopping = true;
    g->idle = idle;
    g->idle_arg = arg;
    job_start(g);
}

struct gc_node_stats gc_node_stats(const struct gc_node *g)
{
    return g->stats;
}

void gc_node_free(struct gc_node *g)
{
    if (g == NULL) {
        return;
    }
    while (g->head != NULL) {
        struct gc_job *j = g->head;
        g->head = j->next;
        job_free(j);
    }
    gc_live_clear(&g->live);
    hbc_free(g);
}

/* ---------------------------------------------------------------------- */
/* Leader side: one cycle on a thread                                      */

struct cycle_out;

/* A node to ask. */
struct gc_peer {
    char id[FSM_NAME_MAX + 1];   /* node id */
    char addr[FSM_NAME_MAX + 1]; /* data-plane address */
};

/* A waiting request. */
struct gc_waiter {
    uint64_t request_id;    /* to answer */
    gc_reply_fn reply;      /* how */
    void *ctx;              /* its context */
    struct gc_waiter *next; /* the next waiter */
};

struct gc_leader {
    uv_loop_t *loop;               /* the node's loop */
    const struct node_config *cfg; /* borrowed */
    struct tls_ctx *tls;           /* borrowed: the node certificate */
    struct raft_node *rn;          /* borrowed */
    uv_timer_t timer;              /* the interval timer */
    uv_async_t async;              /* the cycle thread's "done" */
    unsigned handles;              /* handles not yet closed */
    pthread_t thread;              /* the cycle thread while running */
    bool running;                  /* a cycle thread exists */
    _Atomic bool cancel;           /* ask the cycle to stop */
    struct gc_waiter *waiters;     /* requests answered when the cycle ends */
    /* Inputs of the running cycle (set on the loop before the thread starts). */
    char self[FSM_NAME_MAX + 1]; /* this node's data-plane address */
    bool one_vault;              /* only vault_id */
    uint8_t vault_id[VAULT_LEN]; /* that vault */
    uint64_t clock_ms;           /* compliance clock at the start */
    uint64_t grace_ms;           /* the grace period */
    struct cycle_out *result;    /* the running cycle's output (thread writes, loop reads after) */
    struct cycle_out *last;      /* the last cycle's summary (loop), or NULL before the first */
    uint64_t started_ms;         /* wall clock of the cycle's start */
    void (*done)(void *);        /* gc_leader_stop()'s callback */
    void *done_arg;              /* its argument */
    bool stopping;               /* gc_leader_stop() was called */
};

static uint64_t wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static uint64_t next_request_id(void)
{
    static _Atomic uint64_t id = 1;
    return atomic_fetch_add(&id, 1);
}

/* One blocking request to addr; on 0 *reply has the body expect (frame_free). */
static int call_tls(struct tls_ctx *tls, const char *addr, Hbc__Frame *req,
                    Hbc__Frame__BodyCase expect, Hbc__Frame **reply, struct err *e)
{
    req->request_id = next_request_id();
    int rv = rpc_call(tls, addr, req, GC_RPC_TIMEOUT_MS, reply, e);
    if (rv != 0) {
        return rv;
    }
    if ((*reply)->body_case == HBC__FRAME__BODY_PROPOSE_REPLY &&
        expect != HBC__FRAME__BODY_PROPOSE_REPLY) {
        Hbc__ProposeReply *pr = (*reply)->propose_reply;
        rv = err_setraw(e, pr->code != 0 ? pr->code : HBC_EPROTO, "%s: %.200s", addr, pr->message);
        frame_free(*reply);
        *reply = NULL;
        return rv;
    }
    if ((*reply)->body_case == HBC__FRAME__BODY_ERROR) {
        rv = err_setraw(e, HBC_EPROTO, "%s: %.200s", addr, (*reply)->error->message);
        frame_free(*reply);
        *reply = NULL;
        return rv;
    }
    if ((*reply)->body_case != expect) {
        frame_free(*reply);
        *reply = NULL;
        return err_setraw(e, HBC_EPROTO, "%s: unexpected reply", addr);
    }
    return 0;
}

static int call(struct gc_leader *g, const char *addr, Hbc__Frame *req, Hbc__Frame__BodyCase expect,
                Hbc__Frame **reply, struct err *e)
{
    return call_tls(g->tls, addr, req, expect, reply, e);
}

/* A copy of the payload of blob if it is an intact reference-list shard id of vault; NULL if not.
 */
static uint8_t *reflist_payload(const uint8_t *blob, size_t blob_len,
                                const uint8_t vault[VAULT_LEN], const uint8_t id[ID_LEN],
                                size_t *len)
{
    struct erasure_shard_info info;
    const uint8_t *payload = NULL;
    uint8_t sum[ID_LEN];
    unsigned int sn = 0;
    if (erasure_shard_decode(blob, blob_len, &info, &payload, NULL) != 0 || info.k != 1 ||
        info.m != 0 || memcmp(info.vault_id, vault, VAULT_LEN) != 0 ||
        memcmp(info.chunk_id, id, ID_LEN) != 0 ||
        EVP_Digest(payload, (size_t)info.shard_length, sum, &sn, EVP_sha256(), NULL) != 1 ||
        memcmp(sum, id, ID_LEN) != 0) {
        return NULL;
    }
    uint8_t *copy = hbc_malloc(info.shard_length > 0 ? info.shard_length : 1);
    if (copy != NULL) {
        memcpy(copy, payload, info.shard_length);
        *len = info.shard_length;
    }
    return copy;
}

/*
 * Fetch one reference-list object (id): from store first when given (every
 * node keeps a copy of every reference list), then from the peers until one
 * copy checks out.
 */
static int fetch_reflist(struct tls_ctx *tls, struct shard_store *store,
                         const struct gc_peer *peers, size_t npeers, const uint8_t vault[VAULT_LEN],
                         const uint8_t id[ID_LEN], uint8_t **out, size_t *len, struct err *e)
{
    int last = HBC_ENOTFOUND;
    if (store != NULL) {
        struct shard_key key;
        memset(&key, 0, sizeof key);
        memcpy(key.vault_id, vault, VAULT_LEN);
        memcpy(key.chunk_id, id, ID_LEN);
        key.index = 0;
        uint8_t *blob = NULL;
        size_t blen = 0;
        if (shard_store_get_alloc(store, &key, &blob, &blen, NULL) == 0) {
            *out = reflist_payload(blob, blen, vault, id, len);
            hbc_free(blob);
            if (*out != NULL) {
                return 0;
            }
        }
    }
    for (size_t i = 0; i < npeers; i++) {
        Hbc__Frame req = HBC__FRAME__INIT;
        Hbc__GetShards gs = HBC__GET_SHARDS__INIT;
        Hbc__ShardKey key = HBC__SHARD_KEY__INIT;
        Hbc__ShardKey *kp = &key;
        key.vault_id = (ProtobufCBinaryData){VAULT_LEN, (uint8_t *)vault};
        key.chunk_id = (ProtobufCBinaryData){ID_LEN, (uint8_t *)id};
        key.index = 0;
        gs.keys = &kp;
        gs.n_keys = 1;
        req.body_case = HBC__FRAME__BODY_GET_SHARDS;
        req.get_shards = &gs;
        Hbc__Frame *rep = NULL;
        struct err ce;
        if (call_tls(tls, peers[i].addr, &req, HBC__FRAME__BODY_GET_SHARDS_REPLY, &rep, &ce) != 0) {
            last = ce.code;
            continue;
        }
        const Hbc__GetShardsReply *r = rep->get_shards_reply;
        if (r->n_shards == 1) {
            const ProtobufCBinaryData *b = &r->shards[0]->data;
            *out = reflist_payload(b->data, b->len, vault, id, len);
            if (*out != NULL) {
                frame_free(rep);
                return 0;
            }
            last = HBC_ECORRUPT;
            hbc_log(LOG_WARN, "event=gc_reflist_bad node=%s", peers[i].id);
        }
        frame_free(rep);
    }
    return err_setraw(e, last, "no node returned an intact copy of a reference list");
}

/* Add one snapshot's reference list (head and parts, and their own ids) to live. */
static int mark_snapshot(struct tls_ctx *tls, struct shard_store *store,
                         const struct gc_peer *peers, size_t npeers, const uint8_t vault[VAULT_LEN],
                         const uint8_t head[ID_LEN], struct gc_idvec *live, struct err *e)
{
    uint8_t *hbuf = NULL;
    size_t hlen = 0;
    int rv = fetch_reflist(tls, store, peers, npeers, vault, head, &hbuf, &hlen, e);
    if (rv != 0) {
        return rv;
    }
    const uint8_t(*parts)[ID_LEN];
    const uint8_t(*ids)[ID_LEN];
    size_t nparts;
    size_t n;
    rv = reflist_decode(hbuf, hlen, &parts, &nparts, &ids, &n, e);
    if (rv == 0) {
        rv = gc_idvec_merge(live, ids, n);
    }
    if (rv == 0) {
        rv = gc_idvec_merge(live, (const uint8_t(*)[ID_LEN])head, 1);
    }
    for (size_t i = 0; rv == 0 && i < nparts; i++) {
        uint8_t *pbuf = NULL;
        size_t plen = 0;
        rv = fetch_reflist(tls, store, peers, npeers, vault, parts[i], &pbuf, &plen, e);
        if (rv != 0) {
            break;
        }
        const uint8_t(*pp)[ID_LEN];
        const uint8_t(*pids)[ID_LEN];
        size_t npp;
        size_t np;
        rv = reflist_decode(pbuf, plen, &pp, &npp, &pids, &np, e);
        if (rv == 0) {
            rv = gc_idvec_merge(live, pids, np);
        }
        if (rv == 0) {
            rv = gc_idvec_merge(live, (const uint8_t(*)[ID_LEN])parts[i], 1);
        }
        hbc_free(pbuf);
    }
    hbc_free(hbuf);
    if (rv == HBC_ENOMEM) {
        err_set(e, rv, "live set");
    }
    return rv;
}

/* Ask one node for every chunk it holds in the vault; sort into listed, garbage, young. */
static int list_node(struct gc_leader *g, const struct gc_peer *p, const uint8_t vault[VAULT_LEN],
                     const struct gc_idvec *live, uint64_t cutoff, struct gc_idvec *listed,
                     struct gc_idvec *garbage, struct err *e)
{
    uint8_t after[ID_LEN];
    bool has_after = false;
    for (unsigned pages = 0; pages < 1000000; pages++) {
        if (atomic_load(&g->cancel)) {
            return err_setraw(e, HBC_ECANCELED, "stopping");
        }
        Hbc__Frame req = HBC__FRAME__INIT;
        Hbc__GcListChunks lc = HBC__GC_LIST_CHUNKS__INIT;
        lc.vault_id = (ProtobufCBinaryData){VAULT_LEN, (uint8_t *)vault};
        if (has_after) {
            lc.has_after = true;
            lc.after = (ProtobufCBinaryData){ID_LEN, after};
        }
        lc.has_max = true;
        lc.max = GC_LIST_PAGE;
        req.body_case = HBC__FRAME__BODY_GC_LIST_CHUNKS;
        req.gc_list_chunks = &lc;
        Hbc__Frame *rep = NULL;
        int rv = call(g, p->addr, &req, HBC__FRAME__BODY_GC_LIST_CHUNKS_REPLY, &rep, e);
        if (rv != 0) {
            return rv;
        }
        const Hbc__GcListChunksReply *r = rep->gc_list_chunks_reply;
        if (r->n_chunk_ids != r->n_stored_at_ms || r->n_chunk_ids > GC_LIST_PAGE) {
            frame_free(rep);
            return err_setraw(e, HBC_EPROTO, "%s: malformed chunk listing", p->addr);
        }
        for (size_t i = 0; i < r->n_chunk_ids && rv == 0; i++) {
            if (r->chunk_ids[i].len != ID_LEN) {
                rv = err_setraw(e, HBC_EPROTO, "%s: a listed id is not 32 bytes", p->addr);
                break;
            }
            const uint8_t *id = r->chunk_ids[i].data;
            rv = gc_idvec_push(listed, id);
            if (rv == 0 && !gc_idvec_has(live, id) && r->stored_at_ms[i] < cutoff) {
                rv = gc_idvec_push(garbage, id);
            }
        }
        bool more = r->has_more && r->more && r->n_chunk_ids > 0;
        if (more) {
            memcpy(after, r->chunk_ids[r->n_chunk_ids - 1].data, ID_LEN);
            has_after = true;
        }
        frame_free(rep);
        if (rv != 0) {
            return rv == HBC_ENOMEM ? err_set(e, rv, "chunk listing") : rv;
        }
        if (!more) {
            return 0;
        }
    }
    return err_setraw(e, HBC_ETOOBIG, "%s: too many pages", p->addr);
}

/* Propose one sweep; *code is the state machine's verdict. */
static int propose_sweep(struct gc_leader *g, const uint8_t vault[VAULT_LEN], uint64_t mark,
                         uint64_t cutoff, const uint8_t (*ids)[ID_LEN], size_t n, int *code,
                         char *msg, size_t mlen, struct err *e)
{
    ProtobufCBinaryData *b = hbc_calloc(n, sizeof *b);
    if (b == NULL) {
        return err_set(e, HBC_ENOMEM, "sweep");
    }
    for (size_t i = 0; i < n; i++) {
        b[i] = (ProtobufCBinaryData){ID_LEN, (uint8_t *)ids[i]};
    }
    Hbc__GcSweep sw = HBC__GC_SWEEP__INIT;
    sw.vault_id = (ProtobufCBinaryData){VAULT_LEN, (uint8_t *)vault};
    sw.mark_index = mark;
    sw.cutoff_ms = cutoff;
    sw.chunk_ids = b;
    sw.n_chunk_ids = n;
    Hbc__Command cmd = HBC__COMMAND__INIT;
    cmd.cmd_case = HBC__COMMAND__CMD_GC_SWEEP;
    cmd.gc_sweep = &sw;
    Hbc__ProposeRequest pr = HBC__PROPOSE_REQUEST__INIT;
    pr.command = &cmd;
    Hbc__Frame req = HBC__FRAME__INIT;
    req.body_case = HBC__FRAME__BODY_PROPOSE;
    req.propose = &pr;
    Hbc__Frame *rep = NULL;
    int rv = call(g, g->self, &req, HBC__FRAME__BODY_PROPOSE_REPLY, &rep, e);
    hbc_free(b);
    if (rv != 0) {
        return rv;
    }
    *code = rep->propose_reply->code;
    snprintf(msg, mlen, "%s", rep->propose_reply->message);
    frame_free(rep);
    return 0;
}

/*
 * The snapshots committed after *mark (a current read): merge their reference lists into live
 * and move *mark to the read's index. Returns 0 or an error.
 */
static int remark(struct gc_leader *g, const struct gc_peer *peers, size_t npeers,
                  const uint8_t vault[VAULT_LEN], uint64_t *mark, struct gc_idvec *live,
                  struct err *e)
{
    Hbc__Frame req = HBC__FRAME__INIT;
    Hbc__ListSnapshotsRequest ls = HBC__LIST_SNAPSHOTS_REQUEST__INIT;
    ls.has_vault_id = true;
    ls.vault_id = (ProtobufCBinaryData){VAULT_LEN, (uint8_t *)vault};
    ls.has_current = true;
    ls.current = true;
    req.body_case = HBC__FRAME__BODY_LIST_SNAPSHOTS;
    req.list_snapshots = &ls;
    Hbc__Frame *rep = NULL;
    int rv = call(g, g->self, &req, HBC__FRAME__BODY_LIST_SNAPSHOTS_REPLY, &rep, e);
    if (rv != 0) {
        return rv;
    }
    const Hbc__ListSnapshotsReply *l = rep->list_snapshots_reply;
    for (size_t i = 0; rv == 0 && i < l->n_snapshots; i++) {
        const Hbc__SnapshotInfo *sn = l->snapshots[i];
        if (sn->commit_index <= *mark) {
            continue;
        }
        if (sn->ref_list_id.len != ID_LEN) {
            rv = err_setraw(e, HBC_EFORMAT, "a snapshot without a reference list id");
            break;
        }
        rv = mark_snapshot(g->tls, NULL, peers, npeers, vault, sn->ref_list_id.data, live, e);
    }
    if (rv == 0) {
        *mark = l->applied_index;
    }
    frame_free(rep);
    return rv;
}

/* One vault's cycle into s (its strings owned by the caller's arena). */
static void collect_vault(struct gc_leader *g, const struct gc_peer *peers, size_t npeers,
                          const Hbc__VaultInfo *v, Hbc__GcVaultSummary *s, char *msg, size_t mlen)
{
    struct err e;
    err_clear(&e);
    struct gc_idvec live = {0}, listed = {0}, garbage = {0};
    uint64_t cutoff = g->clock_ms > g->grace_ms ? g->clock_ms - g->grace_ms : 0;
    int rv = 0;
    /* Mark: every present snapshot, read current; the read's index is the mark. */
    Hbc__Frame req = HBC__FRAME__INIT;
    Hbc__ListSnapshotsRequest ls = HBC__LIST_SNAPSHOTS_REQUEST__INIT;
    ls.has_vault_id = true;
    ls.vault_id = v->vault_id;
    ls.has_current = true;
    ls.current = true;
    req.body_case = HBC__FRAME__BODY_LIST_SNAPSHOTS;
    req.list_snapshots = &ls;
    Hbc__Frame *rep = NULL;
    rv = call(g, g->self, &req, HBC__FRAME__BODY_LIST_SNAPSHOTS_REPLY, &rep, &e);
    if (rv == 0) {
        const Hbc__ListSnapshotsReply *l = rep->list_snapshots_reply;
        s->mark_index = l->applied_index;
        s->snapshots = l->n_snapshots;
        for (size_t i = 0; rv == 0 && i < l->n_snapshots; i++) {
            if (atomic_load(&g->cancel)) {
                rv = err_setraw(&e, HBC_ECANCELED, "stopping");
                break;
            }
            if (l->snapshots[i]->ref_list_id.len != ID_LEN) {
                rv = err_setraw(&e, HBC_EFORMAT, "a snapshot without a reference list id");
                break;
            }
            rv = mark_snapshot(g->tls, NULL, peers, npeers, v->vault_id.data,
                               l->snapshots[i]->ref_list_id.data, &live, &e);
        }
        frame_free(rep);
    }
    s->live_chunks = live.n;
    /* Candidates: what the nodes hold, minus live, older than the cutoff. */
    for (size_t i = 0; rv == 0 && i < npeers; i++) {
        struct err le;
        err_clear(&le);
        int lr = list_node(g, &peers[i], v->vault_id.data, &live, cutoff, &listed, &garbage, &le);
        if (lr == 0) {
            s->nodes_listed++;
        } else if (lr == HBC_ECANCELED || lr == HBC_ENOMEM) {
            rv = lr;
            e = le;
        } else {
            hbc_log(LOG_WARN, "event=gc_list_failed node=%s reason=\"%s\"", peers[i].id, le.msg);
        }
    }
    gc_idvec_sort_unique(&listed);
    gc_idvec_sort_unique(&garbage);
    s->listed_chunks = listed.n;
    uint64_t unreferenced = 0;
    for (size_t i = 0; i < listed.n; i++) {
        unreferenced += gc_idvec_has(&live, listed.v[i]) ? 0 : 1;
    }
    s->young_chunks = unreferenced - garbage.n;
    /* Sweep through Raft, in batches the state machine checks one by one. */
    unsigned remarks = 0;
    for (size_t done = 0; rv == 0 && done < garbage.n;) {
        size_t n = garbage.n - done < FSM_GC_SWEEP_MAX ? garbage.n - done : FSM_GC_SWEEP_MAX;
        int code = 0;
        char why[256];
        rv = propose_sweep(g, v->vault_id.data, s->mark_index, cutoff,
                           (const uint8_t(*)[ID_LEN])garbage.v + done, n, &code, why, sizeof why,
                           &e);
        if (rv == 0 && code == HBC_EGCSTALE && remarks < GC_MAX_REMARKS) {
            /*
             * Backups committed since the mark: add their references to the live set,
             * drop what became live from the rest, and propose again with the new mark.
             * Forgotten snapshots only leave more marked than needed, never less.
             */
            remarks++;
            rv = remark(g, peers, npeers, v->vault_id.data, &s->mark_index, &live, &e);
            if (rv == 0) {
                size_t w = done;
                for (size_t i = done; i < garbage.n; i++) {
                    if (!gc_idvec_has(&live, garbage.v[i])) {
                        memcpy(garbage.v[w++], garbage.v[i], ID_LEN);
                    }
                }
                garbage.n = w;
                s->live_chunks = live.n;
            }
            continue;
        }
        if (rv == 0 && code != 0) {
            rv = err_setraw(&e, code, "sweep refused: %.200s", why);
        }
        if (rv == 0) {
            s->swept_chunks += n;
            s->sweeps++;
            done += n;
        }
    }
    s->code = rv;
    snprintf(msg, mlen, "%.250s", rv == 0 ? "ok" : e.msg);
    hbc_free(live.v);
    hbc_free(listed.v);
    hbc_free(garbage.v);
}

/* The whole cycle; builds g->last (heap, protobuf-c unpacked layout freed by gc_reply_free). */
struct cycle_out {
    Hbc__GcRunReply reply;                 /* the summary */
    Hbc__GcVaultSummary *sums;             /* per vault */
    Hbc__GcVaultSummary **sump;            /* pointers for reply.vaults */
    char (*names)[FSM_VAULT_NAME_MAX + 1]; /* vault names */
    char (*msgs)[256];                     /* per vault messages */
    uint8_t (*vids)[VAULT_LEN];            /* vault ids */
    char message[256];                     /* reply.message */
};

static void cycle_out_free(struct cycle_out *o)
{
    if (o != NULL) {
        hbc_free(o->sums);
        hbc_free(o->sump);
        hbc_free(o->names);
        hbc_free(o->msgs);
        hbc_free(o->vids);
        hbc_free(o);
    }
}

static struct cycle_out *cycle_run(struct gc_leader *g)
{
    struct cycle_out *o = hbc_calloc(1, sizeof *o);
    if (o == NULL) {
        return NULL;
    }
    hbc__gc_run_reply__init(&o->reply);
    o->reply.message = o->message;
    o->reply.has_started_ms = true;
    o->reply.started_ms = g->started_ms;
    o->reply.has_grace_ms = true;
    o->reply.grace_ms = g->grace_ms;
    struct err e;
    err_clear(&e);
    struct gc_peer *peers = NULL;
    size_t npeers = 0;
    Hbc__Frame *srep = NULL, *vrep = NULL;
    int rv = 0;
    if (g->clock_ms == 0) {
        rv = err_setraw(&e, HBC_ECLOCK, "the compliance clock is unknown: nothing is collected");
        goto out;
    }
    /* The nodes to ask, from the state machine. */
    Hbc__Frame req = HBC__FRAME__INIT;
    Hbc__ClusterStatusRequest cs = HBC__CLUSTER_STATUS_REQUEST__INIT;
    req.body_case = HBC__FRAME__BODY_CLUSTER_STATUS;
    req.cluster_status = &cs;
    rv = call(g, g->self, &req, HBC__FRAME__BODY_CLUSTER_STATUS_REPLY, &srep, &e);
    if (rv != 0) {
        goto out;
    }
    const Hbc__ClusterStatusReply *st = srep->cluster_status_reply;
    peers = hbc_calloc(st->n_nodes > 0 ? st->n_nodes : 1, sizeof *peers);
    if (peers == NULL) {
        rv = err_set(&e, HBC_ENOMEM, "gc");
        goto out;
    }
    for (size_t i = 0; i < st->n_nodes; i++) {
        const Hbc__NodeInfo *ni = st->nodes[i];
        if (strlen(ni->node_id) <= FSM_NAME_MAX && strlen(ni->data_address) <= FSM_NAME_MAX) {
            snprintf(peers[npeers].id, sizeof peers[npeers].id, "%s", ni->node_id);
            snprintf(peers[npeers].addr, sizeof peers[npeers].addr, "%s", ni->data_address);
            npeers++;
        }
    }
    Hbc__ListVaultsRequest lv = HBC__LIST_VAULTS_REQUEST__INIT;
    lv.has_current = true;
    lv.current = true;
    hbc__frame__init(&req);
    req.body_case = HBC__FRAME__BODY_LIST_VAULTS;
    req.list_vaults = &lv;
    rv = call(g, g->self, &req, HBC__FRAME__BODY_LIST_VAULTS_REPLY, &vrep, &e);
    if (rv != 0) {
        goto out;
    }
    const Hbc__ListVaultsReply *vl = vrep->list_vaults_reply;
    size_t nv = vl->n_vaults;
    o->sums = hbc_calloc(nv + 1, sizeof *o->sums);
    o->sump = hbc_calloc(nv + 1, sizeof *o->sump);
    o->names = hbc_calloc(nv + 1, sizeof *o->names);
    o->msgs = hbc_calloc(nv + 1, sizeof *o->msgs);
    o->vids = hbc_calloc(nv + 1, sizeof *o->vids);
    if (o->sums == NULL || o->sump == NULL || o->names == NULL || o->msgs == NULL ||
        o->vids == NULL) {
        rv = err_set(&e, HBC_ENOMEM, "gc");
        goto out;
    }
    bool found = !g->one_vault;
    for (size_t i = 0; i < nv && !atomic_load(&g->cancel); i++) {
        const Hbc__VaultInfo *v = vl->vaults[i];
        if (v->vault_id.len != VAULT_LEN ||
            (g->one_vault && memcmp(v->vault_id.data, g->vault_id, VAULT_LEN) != 0)) {
            continue;
        }
        found = true;
        size_t k = o->reply.n_vaults;
        Hbc__GcVaultSummary *s = &o->sums[k];
        hbc__gc_vault_summary__init(s);
        memcpy(o->vids[k], v->vault_id.data, VAULT_LEN);
        s->vault_id = (ProtobufCBinaryData){VAULT_LEN, o->vids[k]};
        snprintf(o->names[k], sizeof o->names[k], "%s", v->name);
        s->name = o->names[k];
        collect_vault(g, peers, npeers, v, s, o->msgs[k], sizeof o->msgs[k]);
        s->message = o->msgs[k];
        o->sump[k] = s;
        o->reply.n_vaults++;
        hbc_log(LOG_INFO,
                "event=gc_vault vault=%s code=%d snapshots=%llu live=%llu listed=%llu young=%llu "
                "swept=%llu sweeps=%llu mark_index=%llu nodes_listed=%llu reason=\"%s\"",
                s->name, s->code, (unsigned long long)s->snapshots,
                (unsigned long long)s->live_chunks, (unsigned long long)s->listed_chunks,
                (unsigned long long)s->young_chunks, (unsigned long long)s->swept_chunks,
                (unsigned long long)s->sweeps, (unsigned long long)s->mark_index,
                (unsigned long long)s->nodes_listed, s->message);
        if (s->code != 0 && rv == 0) {
            rv = err_setraw(&e, s->code, "vault %s: %.200s", s->name, s->message);
        }
    }
    o->reply.vaults = o->sump;
    if (!found && rv == 0) {
        rv = err_setraw(&e, HBC_ENOTFOUND, "no such vault");
    }
out:
    frame_free(srep);
    frame_free(vrep);
    hbc_free(peers);
    o->reply.code = rv;
    snprintf(o->message, sizeof o->message, "%.250s", rv == 0 ? "ok" : e.msg);
    o->reply.has_duration_ms = true;
    o->reply.duration_ms = wall_ms() - g->started_ms;
    return o;
}

static void *cycle_main(void *arg)
{
    struct gc_leader *g = arg;
    g->result = cycle_run(g);
    uv_async_send(&g->async);
    return NULL;
}

static void reply_summary(uint64_t request_id, int code, const char *msg,
                          const Hbc__GcRunReply *sum, gc_reply_fn reply, void *ctx)
{
    Hbc__Frame f = HBC__FRAME__INIT;
    Hbc__GcRunReply r = HBC__GC_RUN_REPLY__INIT;
    f.request_id = request_id;
    f.body_case = HBC__FRAME__BODY_GC_RUN_REPLY;
    if (sum != NULL) {
        r = *sum;
    } else {
        r.code = code;
        r.message = (char *)msg;
    }
    f.gc_run_reply = &r;
    reply(ctx, &f);
}

static void answer_waiters(struct gc_leader *g, int code, const char *msg)
{
    struct gc_waiter *w = g->waiters;
    g->waiters = NULL;
    while (w != NULL) {
        struct gc_waiter *next = w->next;
        reply_summary(w->request_id, code, msg,
                      code == 0 && g->last != NULL ? &g->last->reply : NULL, w->reply, w->ctx);
        hbc_free(w);
        w = next;
    }
}

static void handle_close_cb(uv_handle_t *h)
{
    struct gc_leader *g = h->data;
    if (--g->handles > 0) {
        return;
    }
    void (*done)(void *) = g->done;
    void *arg = g->done_arg;
    cycle_out_free(g->last);
    hbc_free(g);
    if (done != NULL) {
        done(arg);
    }
}

static void finish_stop(struct gc_leader *g)
{
    answer_waiters(g, HBC_EUNAVAILABLE, "node is shutting down");
    uv_close((uv_handle_t *)&g->timer, handle_close_cb);
    uv_close((uv_handle_t *)&g->async, handle_close_cb);
}

static void async_cb(uv_async_t *a)
{
    struct gc_leader *g = a->data;
    if (!g->running || g->result == NULL) {
        return;
    }
    pthread_join(g->thread, NULL);
    g->running = false;
    cycle_out_free(g->last);
    g->last = g->result;
    g->result = NULL;
    hbc_log(LOG_INFO, "event=gc_cycle code=%d vaults=%zu duration_ms=%llu reason=\"%s\"",
            g->last->reply.code, g->last->reply.n_vaults,
            (unsigned long long)g->last->reply.duration_ms, g->last->reply.message);
    answer_waiters(g, 0, NULL);
    if (g->stopping) {
        finish_stop(g);
    }
}

/* The address to reach this node's own data plane (0.0.0.0 means loopback). */
static void self_address(const struct node_config *cfg, char *out, size_t cap)
{
    if (strncmp(cfg->listen, "0.0.0.0:", 8) == 0) {
        snprintf(out, cap, "127.0.0.1:%s", cfg->listen + 8);
    } else {
        snprintf(out, cap, "%s", cfg->listen);
    }
}

/* Start a cycle thread; 0 or an error (nothing started). Loop thread. */
static int cycle_start(struct gc_leader *g, const uint8_t *vault_id, struct err *e)
{
    if (g->running) {
        return 0;
    }
    struct fsm *fsm = raft_node_fsm(g->rn);
    g->clock_ms = fsm_compliance_clock_ms(fsm);
    g->grace_ms = (uint64_t)g->cfg->gc_grace * 1000;
    g->one_vault = vault_id != NULL;
    if (vault_id != NULL) {
        memcpy(g->vault_id, vault_id, VAULT_LEN);
    }
    self_address(g->cfg, g->self, sizeof g->self);
    g->started_ms = wall_ms();
    atomic_store(&g->cancel, false);
    g->result = NULL;
    if (pthread_create(&g->thread, NULL, cycle_main, g) != 0) {
        return err_set(e, HBC_ENOMEM, "start the gc thread");
    }
    g->running = true;
    return 0;
}

static void timer_cb(uv_timer_t *t)
{
    struct gc_leader *g = t->data;
    if (g->stopping || g->running || !raft_node_is_leader(g->rn)) {
        return;
    }
    struct err e;
    err_clear(&e);
    if (cycle_start(g, NULL, &e) != 0) {
        hbc_log(LOG_ERROR, "event=gc_cycle_failed reason=\"%s\"", e.msg);
    }
}

int gc_leader_new(uv_loop_t *loop, const struct node_config *cfg, struct tls_ctx *tls,
                  struct raft_node *rn, struct gc_leader **out, struct err *e)
{
    struct gc_leader *g = hbc_calloc(1, sizeof *g);
    if (g == NULL) {
        return err_set(e, HBC_ENOMEM, "gc leader");
    }
    g->loop = loop;
    g->cfg = cfg;
    g->tls = tls;
    g->rn = rn;
    uv_timer_init(loop, &g->timer);
    g->timer.data = g;
    uv_async_init(loop, &g->async, async_cb);
    g->async.data = g;
    g->handles = 2;
    if (cfg->gc_interval > 0) {
        uint64_t ms = (uint64_t)cfg->gc_interval * 1000;
        uv_timer_start(&g->timer, timer_cb, ms, ms);
    }
    uv_unref((uv_handle_t *)&g->timer);
    *out = g;
    return 0;
}

void gc_leader_request(struct gc_leader *g, const Hbc__Frame *req, bool admin, gc_reply_fn reply,
                       void *ctx)
{
    const Hbc__GcRunRequest *q = req->gc_run;
    bool status_only = q->has_status_only && q->status_only;
    if (!status_only && !admin) {
        reply_summary(req->request_id, HBC_EDENIED,
                      "running garbage collection needs the admin role", NULL, reply, ctx);
        return;
    }
    if (g->stopping) {
        reply_summary(req->request_id, HBC_EUNAVAILABLE, "node is shutting down", NULL, reply, ctx);
        return;
    }
    if (!raft_node_is_leader(g->rn)) {
        /* A ProposeReply, so that clients follow it to the leader as they do for proposals. */
        Hbc__Frame f = HBC__FRAME__INIT;
        Hbc__ProposeReply pr = HBC__PROPOSE_REPLY__INIT;
        f.request_id = req->request_id;
        f.body_case = HBC__FRAME__BODY_PROPOSE_REPLY;
        f.propose_reply = &pr;
        pr.code = HBC_ENOTLEADER;
        pr.message = "garbage collection runs on the leader";
        pr.leader_address = (char *)raft_node_leader_data_address(g->rn);
        reply(ctx, &f);
        return;
    }
    if (status_only) {
        if (g->last == NULL) {
            reply_summary(req->request_id, HBC_ENOTFOUND,
                          "no garbage collection cycle has run since this leader started", NULL,
                          reply, ctx);
        } else {
            reply_summary(req->request_id, 0, NULL, &g->last->reply, reply, ctx);
        }
        return;
    }
    if (q->has_vault_id && q->vault_id.len != VAULT_LEN) {
        reply_summary(req->request_id, HBC_EINVAL, "a vault id has 16 bytes", NULL, reply, ctx);
        return;
    }
    struct gc_waiter *w = hbc_calloc(1, sizeof *w);
    if (w == NULL) {
        reply_summary(req->request_id, HBC_ENOMEM, "out of memory", NULL, reply, ctx);
        return;
    }
    struct err e;
    err_clear(&e);
    /* A request while a cycle runs joins it (its vault filter is the running one's). */
    if (cycle_start(g, q->has_vault_id ? q->vault_id.data : NULL, &e) != 0) {
        hbc_free(w);
        reply_summary(req->request_id, e.code, e.msg, NULL, reply, ctx);
        return;
    }
    w->request_id = req->request_id;
    w->reply = reply;
    w->ctx = ctx;
    w->next = g->waiters;
    g->waiters = w;
}

void gc_leader_stop(struct gc_leader *g, void (*done)(void *arg), void *arg)
{
    if (g->stopping) {
        return;
    }
    g->stopping = true;
    g->done = done;
    g->done_arg = arg;
    uv_timer_stop(&g->timer);
    atomic_store(&g->cancel, true);
    if (!g->running) {
        finish_stop(g);
    }
    /* else async_cb finishes once the thread has ended */
}

/* ---------------------------------------------------------------------- */
/* Node side: the fence on deletions                                       */

struct refs_ctx {
    struct gc_job *j; /* the job being filled */
    int rv;           /* first failure */
};

static int collect_snapshot_cb(const Hbc__SnapshotInfo *snap, void *arg)
{
    struct refs_ctx *c = arg;
    struct gc_job *j = c->j;
    if (snap->ref_list_id.len != ID_LEN) {
        return c->rv = HBC_ECORRUPT;
    }
    uint8_t(*p)[ID_LEN] = hbc_realloc(j->refs, (j->nrefs + 1) * ID_LEN);
    if (p == NULL) {
        return c->rv = HBC_ENOMEM;
    }
    j->refs = p;
    memcpy(j->refs[j->nrefs++], snap->ref_list_id.data, ID_LEN);
    return 0;
}

static int collect_node_cb(const Hbc__NodeInfo *node, void *arg)
{
    struct refs_ctx *c = arg;
    struct gc_job *j = c->j;
    if (node->state == HBC__NODE_STATE__NODE_JOINING) {
        return 0;
    }
    struct gc_peer *p = hbc_realloc(j->peers, (j->npeers + 1) * sizeof *p);
    if (p == NULL) {
        return c->rv = HBC_ENOMEM;
    }
    j->peers = p;
    snprintf(p[j->npeers].id, sizeof p[j->npeers].id, "%s", node->node_id);
    snprintf(p[j->npeers].addr, sizeof p[j->npeers].addr, "%s", node->data_address);
    j->npeers++;
    return 0;
}

/*
 * The reference-list heads of every snapshot of the sweep's vault present in
 * this node's applied state, and the nodes to fetch them from. Loop thread
 * (inside the sweep's apply).
 */
static int collect_refs(struct gc_node *g, struct gc_job *j, struct err *e)
{
    struct refs_ctx c = {.j = j, .rv = 0};
    int rv = fsm_list_snapshots(g->fsm, j->vault_id, collect_snapshot_cb, &c, e);
    if (rv == 0 && c.rv == 0) {
        rv = fsm_list_nodes(g->fsm, collect_node_cb, &c, e);
    }
    if (rv == 0 && c.rv != 0) {
        rv = err_set(e, c.rv, "snapshots and nodes of the swept vault");
    }
    return rv;
}

/*
 * Drop from j's chunk ids every chunk that a snapshot present in this node's
 * applied state references: a sweep proposed by a rogue or buggy node cannot
 * delete what a lock or hold protects. Thread pool. Fails (and nothing is
 * deleted) when a reference list cannot be loaded. The live set is kept in
 * g->live between the sweeps of a cycle (gc_live_update): only reference
 * lists not loaded before are fetched.
 */
/* mark_snapshot as a gc_mark_fn for the job's vault and peers. */
static int job_mark(void *ctx, const uint8_t head[GC_ID_LEN], struct gc_idvec *live, struct err *e)
{
    struct gc_job *j = ctx;
    return mark_snapshot(j->g->tls, j->g->store, j->peers, j->npeers, j->vault_id, head, live, e);
}

static int live_filter(struct gc_job *j, struct err *e)
{
    size_t marked = 0;
    int rv = gc_live_update(&j->g->live, j->vault_id, (const uint8_t(*)[GC_ID_LEN])j->refs,
                            j->nrefs, wall_ms(), GC_LIVE_KEEP_MS, job_mark, j, &marked, e);
    if (rv != 0) {
        return rv;
    }
    j->marked = marked;
    const struct gc_idvec *live = &j->g->live.live;
    size_t w = 0;
    for (size_t i = 0; i < j->n; i++) {
        if (gc_idvec_has(live, j->ids[i])) {
            j->refused_live++;
        } else {
            memmove(j->ids[w++], j->ids[i], ID_LEN);
        }
    }
    j->n = w;
    return 0;
}
