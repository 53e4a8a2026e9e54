/* One request, one reply over mutual TLS, on a private loop, with a deadline. */
#include "common/rpc_call.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "common/alloc.h"
#include "common/frame.h"

struct call {
    const Hbc__Frame *req;      /* what to send */
    Hbc__Frame *reply;          /* what came back, or NULL */
    struct frame_reader reader; /* replies */
    struct tls_conn *conn;      /* the connection */
    uv_timer_t timer;           /* deadline */
    int status;                 /* outcome */
    char msg[512];              /* its explanation */
    const char *addr;           /* for messages */
};

static int reply_cb(Hbc__Frame *f, void *arg)
{
    struct call *c = arg;
    if (f->request_id != c->req->request_id || c->reply != NULL) {
        frame_free(f);
        return 0;
    }
    c->reply = f;
    c->status = 0;
    tls_conn_close(c->conn, 0, NULL);
    return 0;
}

static void on_handshake(struct tls_conn *t, int status)
{
    struct call *c = tls_conn_data(t);
    if (status != 0) {
        return;
    }
    uint8_t *buf;
    size_t len;
    struct err e;
    if (frame_encode(c->req, &buf, &len, &e) != 0) {
        c->status = e.code;
        snprintf(c->msg, sizeof c->msg, "%.500s", e.msg);
        tls_conn_close(t, 0, NULL);
        return;
    }
    uv_buf_t b = uv_buf_init((char *)buf, (unsigned)len);
    if (tls_conn_write(t, &b, 1, NULL, NULL, &e) != 0) {
        c->status = e.code;
        snprintf(c->msg, sizeof c->msg, "send: %.490s", e.msg);
        tls_conn_close(t, 0, NULL);
    }
    hbc_free(buf);
}

static void on_read(struct tls_conn *t, const uint8_t *data, size_t n)
{
    struct call *c = tls_conn_data(t);
    struct err e;
    if (frame_reader_feed(&c->reader, data, n, &e) != 0) {
        c->status = e.code;
        snprintf(c->msg, sizeof c->msg, "reply: %.490s", e.msg);
        tls_conn_close(t, 0, NULL);
    }
}

static void on_close(struct tls_conn *t, int status, const char *reason)
{
    struct call *c = tls_conn_data(t);
    c->conn = NULL;
    if (c->reply == NULL && c->status == HBC_EINTERNAL) {
        c->status = status != 0 ? status : HBC_EPROTO;
        snprintf(c->msg, sizeof c->msg, "%.500s", status != 0 ? reason : "closed before replying");
    }
    uv_timer_stop(&c->timer);
    uv_close((uv_handle_t *)&c->timer, NULL);
}

static void timeout_cb(uv_timer_t *t)
{
    struct call *c = t->data;
    c->status = -ETIMEDOUT;
    snprintf(c->msg, sizeof c->msg, "no reply in time");
    if (c->conn != NULL) {
        tls_conn_abort(c->conn, -ETIMEDOUT, "deadline");
    }
}

static const struct tls_conn_cbs call_cbs = {on_handshake, on_read, on_close};

int rpc_call(struct tls_ctx *tls, const char *addr, const Hbc__Frame *req, unsigned timeout_ms,
             Hbc__Frame **reply, struct err *e)
{
    uv_loop_t loop;
    struct call c;
    memset(&c, 0, sizeof c);
    c.req = req;
    c.addr = addr;
    c.status = HBC_EINTERNAL;
    *reply = NULL;
    if (uv_loop_init(&loop) != 0) {
        return err_setraw(e, HBC_EINTERNAL, "%s: cannot make an event loop", addr);
    }
    frame_reader_init(&c.reader, 256u << 20, reply_cb, &c);
    uv_timer_init(&loop, &c.timer);
    c.timer.data = &c;
    uv_timer_start(&c.timer, timeout_cb, timeout_ms, 0);
    struct err ce;
    int rv = tls_connect(&loop, tls, addr, &call_cbs, &c, &c.conn, &ce);
    if (rv != 0) {
        uv_close((uv_handle_t *)&c.timer, NULL);
        c.status = rv;
        snprintf(c.msg, sizeof c.msg, "%.500s", ce.msg);
    }
    uv_run(&loop, UV_RUN_DEFAULT);
    uv_loop_close(&loop);
    frame_reader_release(&c.reader);
    if (c.reply == NULL) {
        return err_setraw(e, c.status != 0 ? c.status : HBC_EPROTO, "%s: %s", addr, c.msg);
    }
    *reply = c.reply;
    return 0;
}
