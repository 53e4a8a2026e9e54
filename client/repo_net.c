/*
 * The repo's network thread: one libuv loop, one node_client per node, and
 * requests handed over from caller threads.
 *
 * Happy path: a caller fills repo_req's and calls repo_net_run(), which
 * queues them under the mutex, wakes the loop with uv_async_send() and
 * waits on the call's condition variable. The loop takes the queue, finds
 * (or dials) each request's connection and issues it; each reply's callback
 * stores the status and the reply frame; the last one marks the call done
 * and signals the caller.
 *
 * Failure modes: a node that refuses (error frame) fails only that request;
 * a connection that fails to connect, times out a request or is closed by
 * the node fails every request on it (HBC_ECANCELED from node_client, or
 * HBC_EUNAVAILABLE for those still waiting here) and is not dialled again
 * before its backoff ends (REPO_BACKOFF_MIN_MS doubling to
 * REPO_BACKOFF_MAX_MS); meanwhile its requests fail at once, so a dead node
 * costs callers nothing but the fallback they take. A node_client that is
 * full (HBC_EBUSY) keeps the request in the connection's wait queue until
 * on_drain.
 */
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "client/repo_internal.h"
#include "common/alloc.h"
#include "common/frame.h"
#include "common/log.h"

#define REPO_BACKOFF_MIN_MS 250u
#define REPO_BACKOFF_MAX_MS 5000u

/* A caller's batch of requests. */
struct repo_call {
    struct repo_net *net;   /* the thread it was handed to */
    struct repo_req *reqs;  /* the requests (the caller's) */
    size_t n;               /* how many */
    size_t pending;         /* not yet finished (network thread only) */
    bool done;              /* all finished (under mu) */
    uv_mutex_t mu;          /* guards done: the caller's and the network thread's alone */
    uv_cond_t cv;           /* signalled when done */
    struct repo_call *next; /* in the submission queue */
};

/* One node's connection (network thread only). */
struct repo_conn {
    struct repo_net *net;       /* owner */
    char addr[64];              /* data-plane address */
    char node_id[72];           /* expected certificate CN, or "" */
    struct node_client *nc;     /* the connection, or NULL */
    bool connected;             /* its handshake succeeded */
    uint64_t retry_at;          /* loop time before which it is not dialled again */
    unsigned backoff_ms;        /* the next backoff */
    char last_error[200];       /* why it last failed */
    struct repo_req *wait_head; /* requests waiting for room */
    struct repo_req *wait_tail; /* last of them */
};

struct repo_net {
    uv_loop_t loop;            /* the thread's loop */
    uv_async_t async;          /* wakes it */
    uv_thread_t thread;        /* runs it */
    uv_mutex_t mu;             /* guards the queue and stopping */
    struct repo_call *head;    /* submitted calls */
    struct repo_call *tail;    /* last of them */
    bool stopping;             /* repo_net_stop() was called */
    bool closed;               /* the loop thread closed everything */
    struct repo_net_opts opts; /* copied */
    struct repo_conn **conns;  /* connections (network thread only) */
    size_t nconns;             /* how many */
    size_t cap;                /* room */
};

static void req_finish(struct repo_req *r)
{
    struct repo_call *c = r->call;
    if (--c->pending == 0) {
        /* The caller may free the call as soon as it sees done: touch nothing after. Its own
         * mutex, not net->mu: the wake-up does not contend with other callers' submissions. */
        uv_mutex_lock(&c->mu);
        c->done = true;
        uv_cond_signal(&c->cv);
        uv_mutex_unlock(&c->mu);
    }
}

static void req_fail(struct repo_req *r, int status, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void req_fail(struct repo_req *r, int status, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(r->msg, sizeof r->msg, fmt, ap);
    va_end(ap);
    r->status = status;
    req_finish(r);
}

static void req_cb(struct node_client *nc, struct node_client_result *res, void *arg)
{
    (void)nc;
    struct repo_req *r = arg;
    r->status = res->status;
    if (res->status == 0) {
        r->reply = node_client_take_reply(res);
    } else {
        snprintf(r->msg, sizeof r->msg, "%.255s", res->message);
    }
    req_finish(r);
}

/* Issue r on c's open client: 0, HBC_EBUSY (keep it waiting) or another failure (r finished). */
static int conn_issue(struct repo_conn *c, struct repo_req *r)
{
    struct err e;
    err_clear(&e);
    int rv;
    switch (r->kind) {
    case REPO_REQ_PUT:
        /* Encrypted straight from the shards' bytes, with the epoch when there is one. */
        rv = node_client_put_shards_epoch(c->nc, r->shards, r->nshards, r->epoch, req_cb, r, &e);
        break;
    case REPO_REQ_GET:
        rv = node_client_get_shards(c->nc, r->keys, r->nkeys, req_cb, r, &e);
        break;
    case REPO_REQ_HAVE:
        rv = node_client_have_chunks(c->nc, r->vault_id, r->ids, r->nids, req_cb, r, &e);
        break;
    default:
        rv = node_client_request(c->nc, r->frame, r->expect, req_cb, r, &e);
        break;
    }
    if (rv != 0 && rv != HBC_EBUSY) {
        req_fail(r, rv, "node %s: %s", c->addr, e.msg);
    }
    return rv;
}

/* Issue waiting requests while the client has room. */
static void conn_pump(struct repo_conn *c)
{
    while (c->wait_head != NULL && c->nc != NULL) {
        struct repo_req *r = c->wait_head;
        if (conn_issue(c, r) == HBC_EBUSY) {
            return;
        }
        c->wait_head = r->next;
        if (c->wait_head == NULL) {
            c->wait_tail = NULL;
        }
    }
}

static void conn_enqueue(struct repo_conn *c, struct repo_req *r)
{
    r->next = NULL;
    if (c->wait_tail != NULL) {
        c->wait_tail->next = r;
    } else {
        c->wait_head = r;
    }
    c->wait_tail = r;
}

/* Fail every waiting request (the connection is gone). */
static void conn_fail_waiting(struct repo_conn *c, const char *why)
{
    while (c->wait_head != NULL) {
        struct repo_req *r = c->wait_head;
        c->wait_head = r->next;
        req_fail(r, HBC_EUNAVAILABLE, "node %s: %s", c->addr, why);
    }
    c->wait_tail = NULL;
}

static void conn_backoff(struct repo_conn *c, const char *why)
{
    snprintf(c->last_error, sizeof c->last_error, "%.199s", why);
    c->retry_at = uv_now(&c->net->loop) + c->backoff_ms;
    c->backoff_ms =
        c->backoff_ms * 2 > REPO_BACKOFF_MAX_MS ? REPO_BACKOFF_MAX_MS : c->backoff_ms * 2;
}

static void on_connect(struct node_client *nc, int status)
{
    struct repo_conn *c = node_client_data(nc);
    if (status == 0) {
        c->connected = true;
        c->backoff_ms = REPO_BACKOFF_MIN_MS;
    }
}

static void on_drain(struct node_client *nc)
{
    conn_pump(node_client_data(nc));
}

static void on_close(struct node_client *nc, int status, const char *reason)
{
    struct repo_conn *c = node_client_data(nc);
    c->nc = NULL;
    bool was_connected = c->connected;
    c->connected = false;
    if (status != 0 || !was_connected) {
        hbc_log(LOG_INFO, "event=node_connection_lost addr=%s status=%s reason=\"%s\"", c->addr,
                hbc_errname(status), reason);
        conn_backoff(c, reason);
    }
    conn_fail_waiting(c, reason);
}

/* Dial c: 0 or a failure (recorded, backoff started). */
static int conn_dial(struct repo_conn *c, struct err *e)
{
    struct repo_net *net = c->net;
    struct node_client_opts o = {
        .request_timeout_ms = net->opts.timeout_ms,
        .node_id = c->node_id[0] != '\0' ? c->node_id : NULL,
    };
    struct node_client_cbs cbs = {
        .on_connect = on_connect, .on_drain = on_drain, .on_close = on_close};
    c->connected = false;
    int rv = node_client_connect(&net->loop, net->opts.tls, c->addr, &o, &cbs, c, &c->nc, e);
    if (rv != 0) {
        c->nc = NULL;
        conn_backoff(c, e != NULL ? e->msg : "connect failed");
    }
    return rv;
}

static struct repo_conn *conn_find(struct repo_net *net, const char *addr, const char *node_id)
{
    for (size_t i = 0; i < net->nconns; i++) {
        if (strcmp(net->conns[i]->addr, addr) == 0) {
            return net->conns[i];
        }
    }
    if (strlen(addr) >= sizeof net->conns[0]->addr ||
        (node_id != NULL && strlen(node_id) >= sizeof net->conns[0]->node_id)) {
        return NULL;
    }
    if (net->nconns == net->cap) {
        size_t cap = net->cap == 0 ? 16 : net->cap * 2;
        struct repo_conn **p = hbc_realloc(net->conns, cap * sizeof *p);
        if (p == NULL) {
            return NULL;
        }
        net->conns = p;
        net->cap = cap;
    }
    struct repo_conn *c = hbc_calloc(1, sizeof *c);
    if (c == NULL) {
        return NULL;
    }
    c->net = net;
    snprintf(c->addr, sizeof c->addr, "%s", addr);
    snprintf(c->node_id, sizeof c->node_id, "%s", node_id != NULL ? node_id : "");
    c->backoff_ms = REPO_BACKOFF_MIN_MS;
    net->conns[net->nconns++] = c;
    return c;
}

static void dispatch(struct repo_net *net, struct repo_req *r)
{
    struct repo_conn *c = conn_find(net, r->addr, r->node_id);
    if (c == NULL) {
        req_fail(r, HBC_ENOMEM, "node %s: no memory for a connection (or address too long)",
                 r->addr);
        return;
    }
    if (c->nc == NULL) {
        uint64_t now = uv_now(&net->loop);
        if (now < c->retry_at) {
            req_fail(r, HBC_EUNAVAILABLE, "node %s unreachable (%s); next try in %llu ms", c->addr,
                     c->last_error, (unsigned long long)(c->retry_at - now));
            return;
        }
        struct err e;
        err_clear(&e);
        if (conn_dial(c, &e) != 0) {
            req_fail(r, HBC_EUNAVAILABLE, "node %s: %s", c->addr, e.msg);
            return;
        }
    }
    if (c->wait_head != NULL || conn_issue(c, r) == HBC_EBUSY) {
        conn_enqueue(c, r);
    }
}

static void close_all(struct repo_net *net)
{
    for (size_t i = 0; i < net->nconns; i++) {
        struct repo_conn *c = net->conns[i];
        conn_fail_waiting(c, "the repo is closing");
        if (c->nc != NULL) {
            node_client_close(c->nc, 0, "the repo is closing");
        }
    }
    uv_close((uv_handle_t *)&net->async, NULL);
}

static void async_cb(uv_async_t *a)
{
    struct repo_net *net = a->data;
    uv_mutex_lock(&net->mu);
    struct repo_call *calls = net->head;
    net->head = net->tail = NULL;
    bool stopping = net->stopping && !net->closed;
    if (stopping) {
        net->closed = true;
    }
    uv_mutex_unlock(&net->mu);
    /* uv_now is cached per loop iteration; backoffs compare against the real time. */
    uv_update_time(&net->loop);
    while (calls != NULL) {
        struct repo_call *c = calls;
        calls = c->next;
        /* Once its last request finishes the caller may return: read nothing of c after that. */
        struct repo_req *reqs = c->reqs;
        size_t n = c->n;
        for (size_t i = 0; i < n; i++) {
            if (stopping) {
                req_fail(&reqs[i], HBC_ECANCELED, "the repo is closing");
            } else {
                dispatch(net, &reqs[i]);
            }
        }
    }
    if (stopping) {
        close_all(net);
    }
}

static void thread_main(void *arg)
{
    struct repo_net *net = arg;
    /*
     * A write to a node that died raises SIGPIPE in the writing thread: keep
     * it blocked here (the write then fails with EPIPE) rather than asking
     * every application to ignore it process-wide.
     */
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGPIPE);
    pthread_sigmask(SIG_BLOCK, &set, NULL);
    uv_run(&net->loop, UV_RUN_DEFAULT);
}

int repo_net_start(const struct repo_net_opts *o, struct repo_net **out, struct err *e)
{
    struct repo_net *net = hbc_calloc(1, sizeof *net);
    if (net == NULL) {
        return err_set(e, HBC_ENOMEM, "network thread");
    }
    net->opts = *o;
    int rv = uv_loop_init(&net->loop);
    if (rv != 0) {
        hbc_free(net);
        return err_set(e, rv, "network thread: loop");
    }
    rv = uv_mutex_init(&net->mu);
    if (rv != 0) {
        goto fail_after_loop;
    }
    rv = uv_async_init(&net->loop, &net->async, async_cb);
    if (rv != 0) {
        goto fail_after_mutex;
    }
    net->async.data = net;
    rv = uv_thread_create(&net->thread, thread_main, net);
    if (rv != 0) {
        uv_close((uv_handle_t *)&net->async, NULL);
        uv_run(&net->loop, UV_RUN_DEFAULT);
        goto fail_after_mutex;
    }
    *out = net;
    return 0;

fail_after_mutex:
    uv_mutex_destroy(&net->mu);
fail_after_loop:
    uv_loop_close(&net->loop);
    hbc_free(net);
    return err_set(e, rv, "network thread");
}

void repo_net_stop(struct repo_net *net)
{
    if (net == NULL) {
        return;
    }
    uv_mutex_lock(&net->mu);
    net->stopping = true;
    uv_mutex_unlock(&net->mu);
    uv_async_send(&net->async);
    uv_thread_join(&net->thread);
    int rv = uv_loop_close(&net->loop);
    if (rv != 0) {
        hbc_log(LOG_ERROR, "event=repo_loop_close status=%s", hbc_errname(rv));
    }
    for (size_t i = 0; i < net->nconns; i++) {
        hbc_free(net->conns[i]);
    }
    hbc_free(net->conns);
    uv_mutex_destroy(&net->mu);
    hbc_free(net);
}

void repo_net_run(struct repo_net *net, struct repo_req *reqs, size_t n)
{
    if (n == 0) {
        return;
    }
    struct repo_call call = {.net = net, .reqs = reqs, .n = n, .pending = n};
    for (size_t i = 0; i < n; i++) {
        reqs[i].status = 0;
        reqs[i].msg[0] = '\0';
        reqs[i].reply = NULL;
        reqs[i].call = &call;
        reqs[i].next = NULL;
    }
    if (uv_mutex_init(&call.mu) != 0) {
        for (size_t i = 0; i < n; i++) {
            reqs[i].status = HBC_ENOMEM;
            snprintf(reqs[i].msg, sizeof reqs[i].msg, "no mutex");
        }
        return;
    }
    if (uv_cond_init(&call.cv) != 0) {
        uv_mutex_destroy(&call.mu);
        for (size_t i = 0; i < n; i++) {
            reqs[i].status = HBC_ENOMEM;
            snprintf(reqs[i].msg, sizeof reqs[i].msg, "no condition variable");
        }
        return;
    }
    uv_mutex_lock(&net->mu);
    if (net->stopping) {
        uv_mutex_unlock(&net->mu);
        for (size_t i = 0; i < n; i++) {
            reqs[i].status = HBC_ECANCELED;
            snprintf(reqs[i].msg, sizeof reqs[i].msg, "the repo is closing");
        }
        uv_cond_destroy(&call.cv);
        uv_mutex_destroy(&call.mu);
        return;
    }
    if (net->tail != NULL) {
        net->tail->next = &call;
    } else {
        net->head = &call;
    }
    net->tail = &call;
    uv_mutex_unlock(&net->mu);
    uv_async_send(&net->async);

    uv_mutex_lock(&call.mu);
    while (!call.done) {
        uv_cond_wait(&call.cv, &call.mu);
    }
    uv_mutex_unlock(&call.mu);
    uv_cond_destroy(&call.cv);
    uv_mutex_destroy(&call.mu);
}
