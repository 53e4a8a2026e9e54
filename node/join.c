/*
 * A new node asks the cluster to admit it: it connects to raft.join (any
 * member's data plane) with its own node certificate and sends a
 * JoinRequest; a follower answers HBC_ENOTLEADER with the leader's address
 * and the request goes there instead.
 *
 * Happy path: connect, handshake, JoinRequest, ProposeReply code 0, done.
 * Failure modes: the member is down or there is no leader yet (retried
 * every JOIN_RETRY_MS, forever, with a log line each time, since an operator
 * adding a node expects it to get in once the cluster can take it); a
 * refusal such as HBC_EDENIED (logged as an error and retried more slowly:
 * the operator must fix the certificate or the configuration).
 *
 * A member check (join_member_check) is the same exchange with
 * JoinRequest.member_check set, through a list of members tried in turn; the
 * leader's HBC_EREMOVED ends it (node/member_check.c).
 */
#include "node/join.h"

#include <stdio.h>
#include <string.h>

#include "common/alloc.h"
#include "common/frame.h"
#include "common/log.h"
#include "node/raft_id.h"

#define JOIN_RETRY_MS 1000
#define JOIN_REFUSED_RETRY_MS 5000

struct join {
    uv_loop_t *loop;               /* the node's loop */
    struct tls_ctx *tls;           /* the node's TLS context */
    const struct node_config *cfg; /* borrowed */
    char addr[64];                 /* where to ask next */
    bool member_check;             /* a restarting member checking in, not a new node */
    char via[JOIN_MAX_VIA][64];    /* member check: the members to ask, in turn */
    size_t n_via;                  /* how many */
    size_t next_via;               /* the one after addr */
    struct tls_conn *conn;         /* the connection, or NULL */
    struct frame_reader reader;    /* replies */
    uv_timer_t timer;              /* retry timer */
    unsigned attempts;             /* tries so far */
    bool done;                     /* admitted */
    bool canceled;                 /* join_cancel() was called */
    bool timer_closed;             /* the timer's close callback ran */
    int retry_ms;                  /* delay before the next try */
    void (*done_cb)(void *, int);  /* caller's callback */
    void *arg;                     /* its argument */
};

static void join_try(struct join *j);
static void join_next_via(struct join *j);

static void retry_cb(uv_timer_t *t)
{
    join_try(t->data);
}

static void join_schedule(struct join *j, int ms)
{
    if (!j->canceled && !j->done) {
        uv_timer_start(&j->timer, retry_cb, (uint64_t)ms, 0);
    }
}

static int reply_cb(Hbc__Frame *f, void *arg)
{
    struct join *j = arg;
    int code = HBC_EPROTO;
    const char *msg = "unexpected reply";
    if (f->body_case == HBC__FRAME__BODY_PROPOSE_REPLY) {
        code = f->propose_reply->code;
        msg = f->propose_reply->message;
    } else if (f->body_case == HBC__FRAME__BODY_ERROR) {
        msg = f->error->message;
    }
    if (j->member_check && (code == 0 || code == HBC_EREMOVED)) {
        hbc_log(code == 0 ? LOG_INFO : LOG_ERROR, "event=member_checked via=%s code=%s msg=\"%s\"",
                j->addr, hbc_errname(code), msg);
        j->done = true;
        frame_free(f);
        if (j->done_cb != NULL) {
            j->done_cb(j->arg, code);
        }
        return 1;
    }
    if (code == 0) {
        hbc_log(LOG_INFO, "event=joined via=%s msg=\"%s\"", j->addr, msg);
        j->done = true;
        frame_free(f);
        if (j->done_cb != NULL) {
            j->done_cb(j->arg, 0);
        }
        return 1; /* stop reading; the connection closes below */
    }
    if (code == HBC_ENOTLEADER && f->propose_reply->leader_address != NULL &&
        f->propose_reply->leader_address[0] != '\0') {
        hbc_log(LOG_INFO, "event=join_redirect from=%s to=%s", j->addr,
                f->propose_reply->leader_address);
        snprintf(j->addr, sizeof j->addr, "%s", f->propose_reply->leader_address);
        j->retry_ms = 100;
    } else {
        hbc_log(code == HBC_EDENIED ? LOG_ERROR : LOG_WARN,
                "event=join_refused via=%s code=%s msg=\"%s\"", j->addr, hbc_errname(code), msg);
        j->retry_ms = code == HBC_EDENIED ? JOIN_REFUSED_RETRY_MS : JOIN_RETRY_MS;
    }
    frame_free(f);
    return 1;
}

static void on_handshake(struct tls_conn *c, int status)
{
    struct join *j = tls_conn_data(c);
    if (status != 0) {
        return;
    }
    const struct node_config *cfg = j->cfg;
    Hbc__Frame f = HBC__FRAME__INIT;
    Hbc__JoinRequest jr = HBC__JOIN_REQUEST__INIT;
    Hbc__NodeJoin nj = HBC__NODE_JOIN__INIT;
    nj.node_id = cfg->node_id;
    nj.data_address = cfg->listen;
    nj.raft_address = cfg->raft_listen;
    nj.raft_id = raft_id_from_name(cfg->node_id);
    nj.site = cfg->site;
    nj.region = cfg->region;
    nj.media = cfg->media;
    nj.worm = cfg->worm;
    nj.capacity_bytes = cfg->capacity;
    jr.node = &nj;
    if (j->member_check) {
        jr.has_member_check = true;
        jr.member_check = true;
    }
    f.request_id = ++j->attempts;
    f.body_case = HBC__FRAME__BODY_JOIN;
    f.join = &jr;
    uint8_t *buf;
    size_t len;
    struct err e;
    if (frame_encode(&f, &buf, &len, &e) != 0 ||
        tls_conn_write(c, &(uv_buf_t){.base = (char *)buf, .len = len}, 1, NULL, NULL, &e) != 0) {
        hbc_log(LOG_WARN, "event=join_send_failed reason=\"%s\"", e.msg);
        tls_conn_close(c, 0, NULL);
    }
    hbc_free(buf);
}

static void on_read(struct tls_conn *c, const uint8_t *data, size_t n)
{
    struct join *j = tls_conn_data(c);
    if (frame_reader_feed(&j->reader, data, n, NULL) != 0) {
        tls_conn_close(c, 0, NULL);
    }
}

static void on_close(struct tls_conn *c, int status, const char *reason)
{
    struct join *j = tls_conn_data(c);
    j->conn = NULL;
    frame_reader_release(&j->reader);
    if (status != 0 && !j->done) {
        hbc_log(LOG_WARN, "event=join_connect_failed via=%s reason=\"%s\"", j->addr, reason);
        join_next_via(j);
    }
    if (j->canceled) {
        if (j->timer_closed) {
            hbc_free(j);
        }
        return;
    }
    join_schedule(j, j->retry_ms);
}

static const struct tls_conn_cbs join_cbs = {on_handshake, on_read, on_close};

/* A member check whose member failed to answer asks the next one. */
static void join_next_via(struct join *j)
{
    if (j->n_via > 0) {
        snprintf(j->addr, sizeof j->addr, "%s", j->via[j->next_via]);
        j->next_via = (j->next_via + 1) % j->n_via;
    }
}

static void join_try(struct join *j)
{
    if (j->canceled || j->done || j->conn != NULL) {
        return;
    }
    j->retry_ms = JOIN_RETRY_MS;
    frame_reader_init(&j->reader, 1 << 20, reply_cb, j);
    struct err e;
    if (tls_connect(j->loop, j->tls, j->addr, &join_cbs, j, &j->conn, &e) != 0) {
        hbc_log(LOG_WARN, "event=join_connect_failed via=%s reason=\"%s\"", j->addr, e.msg);
        j->conn = NULL;
        join_next_via(j);
        join_schedule(j, JOIN_RETRY_MS);
    }
}

int join_start(uv_loop_t *loop, struct tls_ctx *tls, const struct node_config *cfg,
               void (*done)(void *, int), void *arg, struct join **out, struct err *e)
{
    struct join *j = hbc_calloc(1, sizeof *j);
    if (j == NULL) {
        return err_setraw(e, HBC_ENOMEM, "join: out of memory");
    }
    j->loop = loop;
    j->tls = tls;
    j->cfg = cfg;
    j->done_cb = done;
    j->arg = arg;
    snprintf(j->addr, sizeof j->addr, "%s", cfg->raft_join);
    uv_timer_init(loop, &j->timer);
    j->timer.data = j;
    hbc_log(LOG_INFO, "event=join_start via=%s", j->addr);
    join_try(j);
    *out = j;
    return 0;
}

int join_member_check(uv_loop_t *loop, struct tls_ctx *tls, const struct node_config *cfg,
                      const char *const *via, size_t n, void (*done)(void *, int), void *arg,
                      struct join **out, struct err *e)
{
    if (n == 0) {
        return err_setraw(e, HBC_EINVAL, "member check: no member to ask");
    }
    struct join *j = hbc_calloc(1, sizeof *j);
    if (j == NULL) {
        return err_setraw(e, HBC_ENOMEM, "member check: out of memory");
    }
    j->loop = loop;
    j->tls = tls;
    j->cfg = cfg;
    j->done_cb = done;
    j->arg = arg;
    j->member_check = true;
    for (size_t i = 0; i < n && i < JOIN_MAX_VIA; i++) {
        snprintf(j->via[i], sizeof j->via[i], "%s", via[i]);
        j->n_via++;
    }
    snprintf(j->addr, sizeof j->addr, "%s", j->via[0]);
    j->next_via = 1 % j->n_via;
    uv_timer_init(loop, &j->timer);
    j->timer.data = j;
    hbc_log(LOG_INFO, "event=member_check_start via=%s members=%zu", j->addr, j->n_via);
    join_try(j);
    *out = j;
    return 0;
}

static void timer_closed_cb(uv_handle_t *h)
{
    struct join *j = h->data;
    j->timer_closed = true;
    if (j->conn == NULL) {
        hbc_free(j);
    }
}

void join_cancel(struct join *j)
{
    if (j == NULL || j->canceled) {
        return;
    }
    j->canceled = true;
    if (j->conn != NULL) {
        tls_conn_abort(j->conn, HBC_ECANCELED, "node is stopping");
    }
    uv_timer_stop(&j->timer);
    uv_close((uv_handle_t *)&j->timer, timer_closed_cb);
}
