/* The voters' clock exchange over the data plane (node/clock_sync.h). */
#include "node/clock_sync.h"

#include <stdio.h>
#include <string.h>
#include <time.h>

#include "common/alloc.h"
#include "common/log.h"
#include "common/node_client.h"

/* Largest wall clock a reply may carry (ms, about the year 10000); larger ones are dropped. */
#define CLOCK_SYNC_WALL_MAX_MS 253402300800000ull

/* One voter asked in the running round. */
struct ask {
    struct clock_sync *cs;  /* owner */
    struct clock_peer peer; /* whom */
    uint64_t sent_ns;       /* uv_hrtime() when asked */
    bool answered;          /* offset_ms is valid */
    int64_t offset_ms;      /* its clock minus ours */
    struct node_client *nc; /* its connection until closed, or NULL */
};

struct clock_sync {
    uv_loop_t *loop;      /* the node's loop */
    struct tls_ctx *tls;  /* borrowed */
    unsigned timeout_ms;  /* per voter */
    struct ask *asks;     /* the running round's voters (owned), or NULL */
    size_t n_asks;        /* how many */
    unsigned open;        /* connections not yet closed */
    clock_sync_cb cb;     /* the round's callback */
    void *arg;            /* its argument */
    bool closing;         /* clock_sync_close() was called */
    void (*done)(void *); /* its callback */
    void *done_arg;       /* its argument */
};

uint64_t clock_sync_wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

void clock_sync_answer(uint64_t request_id, Hbc__Frame *out, Hbc__ClockReply *cr)
{
    hbc__frame__init(out);
    hbc__clock_reply__init(cr);
    cr->wall_ms = clock_sync_wall_ms();
    out->request_id = request_id;
    out->body_case = HBC__FRAME__BODY_CLOCK_REPLY;
    out->clock_reply = cr;
}

int clock_sync_new(uv_loop_t *loop, struct tls_ctx *tls, unsigned timeout_ms,
                   struct clock_sync **out, struct err *e)
{
    *out = NULL;
    struct clock_sync *cs = hbc_calloc(1, sizeof *cs);
    if (cs == NULL) {
        return err_set(e, HBC_ENOMEM, "clock sync");
    }
    cs->loop = loop;
    cs->tls = tls;
    cs->timeout_ms = timeout_ms > 0 ? timeout_ms : 1;
    *out = cs;
    return 0;
}

bool clock_sync_busy(const struct clock_sync *cs)
{
    return cs->asks != NULL;
}

/* Every connection of the round is closed: report, then finish a close. */
static void round_end(struct clock_sync *cs)
{
    if (cs->open > 0 || cs->asks == NULL) {
        return;
    }
    struct ask *asks = cs->asks;
    size_t n = cs->n_asks;
    cs->asks = NULL;
    cs->n_asks = 0;
    if (!cs->closing) {
        int64_t offsets[CLOCK_SYNC_MAX_PEERS];
        size_t ok = 0;
        for (size_t i = 0; i < n; i++) {
            if (asks[i].answered) {
                offsets[ok++] = asks[i].offset_ms;
            }
        }
        hbc_free(asks);
        cs->cb(cs->arg, offsets, ok, n);
        return;
    }
    hbc_free(asks);
    void (*done)(void *) = cs->done;
    void *done_arg = cs->done_arg;
    hbc_free(cs);
    if (done != NULL) {
        done(done_arg);
    }
}

static void on_close(struct node_client *nc, int status, const char *reason)
{
    struct ask *a = node_client_data(nc);
    if (status != 0 && !a->answered && !a->cs->closing) {
        hbc_log(LOG_WARN, "event=clock_sync_failed node=%s addr=%s reason=\"%s\"", a->peer.node_id,
                a->peer.addr, reason);
    }
    a->nc = NULL;
    a->cs->open--;
    round_end(a->cs);
}

static void reply_cb(struct node_client *nc, struct node_client_result *res, void *arg)
{
    struct ask *a = arg;
    if (res->status == 0 && res->reply->body_case == HBC__FRAME__BODY_CLOCK_REPLY &&
        res->reply->clock_reply->wall_ms > CLOCK_SYNC_WALL_MAX_MS) {
        /* No real clock reads this (year 10000 and beyond): a broken or hostile peer. */
        hbc_log(
            LOG_WARN, "event=clock_sync_failed node=%s addr=%s reason=\"clock %llu out of range\"",
            a->peer.node_id, a->peer.addr, (unsigned long long)res->reply->clock_reply->wall_ms);
    } else if (res->status == 0 && res->reply->body_case == HBC__FRAME__BODY_CLOCK_REPLY) {
        uint64_t now_wall = clock_sync_wall_ms();
        uint64_t rtt = (uv_hrtime() - a->sent_ns) / 1000000;
        uint64_t theirs = res->reply->clock_reply->wall_ms + rtt / 2;
        a->offset_ms =
            theirs >= now_wall ? (int64_t)(theirs - now_wall) : -(int64_t)(now_wall - theirs);
        a->answered = true;
        hbc_log(LOG_DEBUG, "event=clock_sync_reply node=%s offset_ms=%lld rtt_ms=%llu",
                a->peer.node_id, (long long)a->offset_ms, (unsigned long long)rtt);
    } else if (res->status != 0) {
        hbc_log(LOG_WARN, "event=clock_sync_failed node=%s addr=%s code=%s reason=\"%s\"",
                a->peer.node_id, a->peer.addr, hbc_errname(res->status), res->message);
    }
    node_client_close(nc, 0, NULL);
}

int clock_sync_round(struct clock_sync *cs, const struct clock_peer *peers, size_t n,
                     clock_sync_cb cb, void *arg, struct err *e)
{
    if (cs->closing) {
        return err_set(e, HBC_ECANCELED, "clock sync is closing");
    }
    if (cs->asks != NULL) {
        return err_set(e, HBC_EBUSY, "a clock round is running");
    }
    if (n == 0 || n > CLOCK_SYNC_MAX_PEERS) {
        return err_set(e, HBC_EINVAL, "clock round of %zu voters (1..%d)", n, CLOCK_SYNC_MAX_PEERS);
    }
    struct ask *asks = hbc_calloc(n, sizeof *asks);
    if (asks == NULL) {
        return err_set(e, HBC_ENOMEM, "clock round");
    }
    cs->asks = asks;
    cs->n_asks = n;
    cs->cb = cb;
    cs->arg = arg;
    /* Count every connection before any can close, so the round cannot end early. */
    cs->open = 1;
    for (size_t i = 0; i < n; i++) {
        struct ask *a = &asks[i];
        a->cs = cs;
        a->peer = peers[i];
        a->peer.addr[sizeof a->peer.addr - 1] = '\0';
        a->peer.node_id[sizeof a->peer.node_id - 1] = '\0';
        struct node_client_opts o = {
            .max_requests = 1, .request_timeout_ms = cs->timeout_ms, .node_id = a->peer.node_id};
        struct node_client_cbs cbs = {.on_close = on_close};
        struct node_client *nc = NULL;
        struct err ce;
        if (node_client_connect(cs->loop, cs->tls, a->peer.addr, &o, &cbs, a, &nc, &ce) != 0) {
            hbc_log(LOG_WARN, "event=clock_sync_failed node=%s addr=%s reason=\"%s\"",
                    a->peer.node_id, a->peer.addr, ce.msg);
            continue;
        }
        cs->open++;
        a->nc = nc;
        Hbc__Frame f = HBC__FRAME__INIT;
        Hbc__ClockRequest q = HBC__CLOCK_REQUEST__INIT;
        f.body_case = HBC__FRAME__BODY_CLOCK_REQUEST;
        f.clock_request = &q;
        a->sent_ns = uv_hrtime();
        if (node_client_request(nc, &f, HBC__FRAME__BODY_CLOCK_REPLY, reply_cb, a, &ce) != 0) {
            node_client_close(nc, 0, NULL);
        }
    }
    /* Every close runs on the loop, so this cannot have ended the round. */
    cs->open--;
    if (cs->open == 0) {
        cs->asks = NULL;
        cs->n_asks = 0;
        hbc_free(asks);
        return err_set(e, HBC_EUNAVAILABLE, "no voter could be connected to");
    }
    return 0;
}

void clock_sync_close(struct clock_sync *cs, void (*done)(void *arg), void *arg)
{
    if (cs == NULL) {
        if (done != NULL) {
            done(arg);
        }
        return;
    }
    cs->closing = true;
    cs->done = done;
    cs->done_arg = arg;
    if (cs->asks == NULL) {
        hbc_free(cs);
        if (done != NULL) {
            done(arg);
        }
        return;
    }
    /* round_end() finishes the close once every connection is closed. */
    for (size_t i = 0; i < cs->n_asks; i++) {
        if (cs->asks[i].nc != NULL) {
            node_client_close(cs->asks[i].nc, HBC_ECANCELED, "node stopping");
        }
    }
}
