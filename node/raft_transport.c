/*
 * libraft's connections over mutual TLS 1.3 (see raft_transport.h for the
 * identity rule and the preamble).
 *
 * Happy path, dialling: connect() → tls_connect → handshake → the server's
 * certificate names the dialled id → send the preamble → the server's reply
 * arrives → socketpair: libraft gets one end (a uv_pipe_t), we keep the other
 * → connect callback with the stream → pump: what libraft writes is read
 * from our end and written to TLS, what TLS delivers is written to our end.
 * Accepting: a TCP connection arrives → tls_accept → handshake → the
 * preamble arrives and the peer's certificate names the id it claims →
 * socketpair → reply → accept callback with the stream → pump.
 *
 * Failure modes: a failed handshake (not TLS, bad certificate, timeout) or a
 * refused identity closes the connection; a dialled one ends in the connect
 * callback with RAFT_NOCONNECTION, an accepted one is never shown to
 * libraft. A preamble that is malformed or late is refused the same way.
 * Once open, when either side ends (libraft closes its stream, the peer
 * closes TLS, a read or write fails) the other is closed too; bytes not yet
 * taken by the other side are dropped, as TCP would on a reset. Closing the
 * transport fires every pending connect callback with RAFT_CANCELED, closes
 * every connection (gracefully once open: close_notify, then at most the TLS
 * close timeout for the peer to hang up), and fires the close callback once
 * all of them and the listener are gone.
 *
 * Backpressure: a connection stops reading libraft's stream while TLS holds
 * more than RAFT_TRANSPORT_QUEUE_MAX unsent bytes, and stops reading TLS
 * while our end of the socketpair holds more than that; each resumes from
 * its write callbacks once the queue is below half of it.
 */
#include "node/raft_transport.h"

#include <assert.h>
#include <errno.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <unistd.h>

#include "common/alloc.h"
#include "common/log.h"

/* Bytes read from libraft's stream at a time. */
#define RT_READ_CHUNK ((size_t)64 << 10)
/*
 * A Raft connection whose sent bytes stay unacknowledged this long is
 * aborted by the kernel (TCP_USER_TIMEOUT), and one idle this long gets
 * keepalive probes. Without it a connection across a healed partition waits
 * out TCP's exponential retransmission backoff (measured 9-17 s before the
 * follower caught up); with it libraft redials within its retry delay.
 */
#define RT_TCP_USER_TIMEOUT_MS 3000u
#define RT_TCP_KEEPALIVE_S 2u
/* Fixed part of the preamble: magic, id, address length. */
#define RT_HELLO_FIXED (RAFT_TRANSPORT_MAGIC_LEN + 8u + 2u)
/* Resume reading once a full queue is below this. */
#define RT_QUEUE_LOW (RAFT_TRANSPORT_QUEUE_MAX / 2)

enum rt_conn_state {
    RT_HANDSHAKE, /* TLS handshake (dialling: the TCP connect too) */
    RT_HELLO,     /* preamble: dialled, sent and awaiting the reply; accepted, awaiting it */
    RT_OPEN,      /* pumping between libraft's stream and TLS */
    RT_CLOSING,   /* closing: waiting for TLS's on_close and our handles' close callbacks */
};

struct rt_conn;

/* The transport's state, in t->impl. */
struct rt {
    struct raft_uv_transport *t;         /* the transport we implement */
    uv_loop_t *loop;                     /* libraft's loop */
    struct tls_ctx *tls;                 /* borrowed */
    raft_id id;                          /* our Raft id, from init */
    char *address;                       /* our Raft address, from init */
    char *bind_address;                  /* where to listen; NULL = address */
    raft_uv_accept_cb accept_cb;         /* libraft's, from listen */
    uv_tcp_t listener;                   /* the Raft port; data = this */
    bool listener_inited;                /* listener needs uv_close */
    bool listener_closed;                /* its close callback has fired */
    bool closing;                        /* close() was called */
    raft_uv_transport_close_cb close_cb; /* libraft's, until it fires */
    struct rt_conn *conns;               /* every connection not yet freed */
    unsigned pending_inbound;            /* inbound connections in handshake or preamble */
    unsigned preamble_timeout_ms;        /* for the preamble exchange */
    struct raft_transport_stats stats;   /* counters */
    int (*resolve)(void *, raft_id, char *, size_t); /* where to dial an id, or NULL */
    void *resolve_arg;                               /* its argument */
};

/* One Raft connection: TLS on one side, a socketpair towards libraft on the other. */
struct rt_conn {
    struct rt *rt;               /* owner */
    struct rt_conn *prev;        /* in rt->conns */
    struct rt_conn *next;        /* idem */
    enum rt_conn_state state;    /* see enum */
    bool inbound;                /* accepted (true) or dialled */
    bool counted_pending;        /* counts in rt->pending_inbound */
    struct tls_conn *tls;        /* NULL before tls_* created it and after its on_close */
    uv_timer_t timer;            /* preamble deadline; data = this */
    uv_pipe_t pipe;              /* our end of the socketpair, when pipe_inited; data = this */
    bool pipe_inited;            /* pipe needs uv_close */
    uv_pipe_t *raft_stream;      /* libraft's end until handed over (raft_malloc'ed) */
    bool pipe_reading;           /* reading our end (towards TLS) */
    bool tls_stopped;            /* TLS reading stopped because our end's queue is full */
    int handles;                 /* our handles not yet closed (timer, pipe, raft_stream) */
    raft_id peer_id;             /* dialled id, or the id the preamble claims */
    struct raft_uv_connect *req; /* dialled: libraft's request until its callback fires */
    char peer_addr[64];          /* TCP peer "ip:port", for logs */
    size_t hello_len;            /* preamble (or reply) bytes received */
    uint8_t hello[RT_HELLO_FIXED + RAFT_TRANSPORT_ADDR_MAX + 1]; /* them; room for a NUL */
    uint8_t rbuf[RT_READ_CHUNK];                                 /* reads from our end */
};

/* One write to our end of the socketpair, data inline. */
struct rt_write {
    uv_write_t req;    /* libuv request */
    struct rt_conn *c; /* owner */
    size_t len;        /* bytes in data */
    uint8_t data[];    /* what TLS delivered and the socket did not take at once */
};

static void conn_close(struct rt_conn *c, int status, const char *reason);
static void on_tls_handshake(struct tls_conn *tc, int status);
static void on_tls_read(struct tls_conn *tc, const uint8_t *data, size_t n);
static void on_tls_close(struct tls_conn *tc, int status, const char *reason);

static const struct tls_conn_cbs rt_tls_cbs = {
    .on_handshake = on_tls_handshake,
    .on_read = on_tls_read,
    .on_close = on_tls_close,
};

/* ------------------------------------------------------------------------ */
/* Helpers                                                                   */
/* ------------------------------------------------------------------------ */

/* A name for a log field: letters, digits and ._-@: kept, anything else '?', cut at n-1. */
static const char *log_name(char *dst, size_t n, const char *src)
{
    size_t i = 0;
    for (; src != NULL && src[i] != '\0' && i + 1 < n; i++) {
        char ch = src[i];
        bool ok = (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') ||
                  (ch >= '0' && ch <= '9') || ch == '.' || ch == '_' || ch == '-' || ch == '@' ||
                  ch == ':';
        dst[i] = ok ? ch : '?';
    }
    dst[i] = '\0';
    if (i == 0 && n > 1) {
        snprintf(dst, n, "-");
    }
    return dst;
}

/* A Raft address as a preamble may carry it: 1..ADDR_MAX of [0-9A-Za-z.:[]_-]. */
static bool address_ok(const char *a, size_t len)
{
    if (len == 0 || len > RAFT_TRANSPORT_ADDR_MAX) {
        return false;
    }
    for (size_t i = 0; i < len; i++) {
        char ch = a[i];
        bool ok = (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') ||
                  (ch >= '0' && ch <= '9') || ch == '.' || ch == ':' || ch == '[' || ch == ']' ||
                  ch == '_' || ch == '-';
        if (!ok) {
            return false;
        }
    }
    return true;
}

/* Parse "a.b.c.d:port" (what libraft uses) into sa. */
static int parse_ipv4(const char *addr, struct sockaddr_in *sa)
{
    const char *colon = strrchr(addr, ':');
    char ip[INET_ADDRSTRLEN];
    size_t n = colon != NULL ? (size_t)(colon - addr) : 0;
    if (colon == NULL || n == 0 || n >= sizeof ip) {
        return HBC_EINVAL;
    }
    memcpy(ip, addr, n);
    ip[n] = '\0';
    char *end;
    errno = 0;
    unsigned long port = strtoul(colon + 1, &end, 10);
    if (colon[1] == '\0' || *end != '\0' || errno != 0 || port > 65535) {
        return HBC_EINVAL;
    }
    return uv_ip4_addr(ip, (int)port, sa) == 0 ? 0 : HBC_EINVAL;
}

static void put_be(uint8_t *p, uint64_t v, int n)
{
    for (int i = n - 1; i >= 0; i--) {
        p[i] = (uint8_t)v;
        v >>= 8;
    }
}

static uint64_t get_be(const uint8_t *p, int n)
{
    uint64_t v = 0;
    for (int i = 0; i < n; i++) {
        v = v << 8 | p[i];
    }
    return v;
}

static void note_peak(struct rt *rt, size_t queued)
{
    if (queued > rt->stats.queued_peak) {
        rt->stats.queued_peak = queued;
    }
}

/* ------------------------------------------------------------------------ */
/* Connection lifetime                                                       */
/* ------------------------------------------------------------------------ */

static void rt_maybe_closed(struct rt *rt)
{
    if (!rt->closing || rt->close_cb == NULL || rt->conns != NULL ||
        (rt->listener_inited && !rt->listener_closed)) {
        return;
    }
    raft_uv_transport_close_cb cb = rt->close_cb;
    rt->close_cb = NULL;
    cb(rt->t);
}

static struct rt_conn *conn_new(struct rt *rt, bool inbound)
{
    struct rt_conn *c = hbc_malloc(sizeof *c);
    if (c == NULL) {
        return NULL;
    }
    memset(c, 0, offsetof(struct rt_conn, rbuf));
    c->rt = rt;
    c->inbound = inbound;
    c->state = RT_HANDSHAKE;
    snprintf(c->peer_addr, sizeof c->peer_addr, "?");
    uv_timer_init(rt->loop, &c->timer);
    c->timer.data = c;
    c->handles = 1;
    c->next = rt->conns;
    if (rt->conns != NULL) {
        rt->conns->prev = c;
    }
    rt->conns = c;
    return c;
}

/* Free c once TLS has reported its end and our handles are closed. */
static void conn_maybe_free(struct rt_conn *c)
{
    if (c->state != RT_CLOSING || c->tls != NULL || c->handles > 0) {
        return;
    }
    struct rt *rt = c->rt;
    if (c->prev != NULL) {
        c->prev->next = c->next;
    } else {
        rt->conns = c->next;
    }
    if (c->next != NULL) {
        c->next->prev = c->prev;
    }
    hbc_free(c);
    rt_maybe_closed(rt);
}

static void on_handle_closed(uv_handle_t *h)
{
    struct rt_conn *c = h->data;
    c->handles--;
    conn_maybe_free(c);
}

static void on_raft_stream_closed(uv_handle_t *h)
{
    struct rt_conn *c = h->data;
    raft_free(h);
    c->handles--;
    conn_maybe_free(c);
}

/* c no longer counts as an inbound connection in handshake or preamble. */
static void conn_unpend(struct rt_conn *c)
{
    if (c->counted_pending) {
        c->counted_pending = false;
        c->rt->pending_inbound--;
    }
}

/* Fire a dialled connection's callback (once). */
static void conn_connect_done(struct rt_conn *c, uv_stream_t *stream, int status)
{
    struct raft_uv_connect *req = c->req;
    if (req == NULL) {
        return;
    }
    c->req = NULL;
    if (status == 0) {
        c->rt->stats.connected++;
    } else if (status != RAFT_CANCELED) {
        c->rt->stats.connect_failed++;
    }
    req->cb(req, stream, status);
}

/*
 * End c: fail a pending connect, close TLS (gracefully once open), our end of
 * the socketpair, libraft's end if we still own it, and the timer. c is
 * freed from the last callback. A second call does nothing.
 */
static void conn_close(struct rt_conn *c, int status, const char *reason)
{
    if (c->state == RT_CLOSING) {
        return;
    }
    c->state = RT_CLOSING;
    struct rt *rt = c->rt;
    conn_unpend(c);
    if (c->tls != NULL) {
        tls_conn_close(c->tls, status, reason);
    }
    if (c->raft_stream != NULL) {
        uv_close((uv_handle_t *)c->raft_stream, on_raft_stream_closed);
        c->raft_stream = NULL;
    }
    if (c->pipe_inited) {
        uv_close((uv_handle_t *)&c->pipe, on_handle_closed);
        c->pipe_inited = false;
    }
    uv_close((uv_handle_t *)&c->timer, on_handle_closed);
    conn_connect_done(c, NULL, rt->closing ? RAFT_CANCELED : RAFT_NOCONNECTION);
}

static void on_timer(uv_timer_t *timer)
{
    struct rt_conn *c = timer->data;
    if (c->state != RT_HELLO) {
        return;
    }
    char reason[128];
    snprintf(reason, sizeof reason, "no preamble %s within %u ms",
             c->inbound ? "received" : "reply", c->rt->preamble_timeout_ms);
    hbc_log(LOG_WARN, "event=raft_peer_timeout role=%s peer=%s reason=\"%s\"",
            c->inbound ? "server" : "client", c->peer_addr, reason);
    conn_close(c, -ETIMEDOUT, reason);
}

/* ------------------------------------------------------------------------ */
/* The pump                                                                  */
/* ------------------------------------------------------------------------ */

static void on_pipe_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    (void)suggested;
    struct rt_conn *c = h->data;
    *buf = uv_buf_init((char *)c->rbuf, (unsigned)sizeof c->rbuf);
}

static void pipe_set_reading(struct rt_conn *c, bool on);

static void on_tls_written(struct tls_conn *tc, int status, void *arg)
{
    (void)status; /* a failed write closes the TLS connection, which tells us */
    struct rt_conn *c = arg;
    if (c->state == RT_OPEN && !c->pipe_reading && tls_conn_queued(tc) <= RT_QUEUE_LOW) {
        pipe_set_reading(c, true);
    }
}

/* libraft wrote: forward to TLS. */
static void on_pipe_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    struct rt_conn *c = s->data;
    if (nread == 0 || c->state != RT_OPEN) {
        return;
    }
    if (nread < 0) {
        if (nread == UV_EOF) {
            conn_close(c, 0, "libraft closed the connection");
        } else {
            conn_close(c, (int)nread, "reading libraft's stream failed");
        }
        return;
    }
    uv_buf_t b = uv_buf_init(buf->base, (unsigned)nread);
    struct err e;
    int rc = tls_conn_write(c->tls, &b, 1, on_tls_written, c, &e);
    if (rc != 0) {
        conn_close(c, rc, e.msg);
        return;
    }
    size_t q = tls_conn_queued(c->tls);
    note_peak(c->rt, q);
    if (q > RAFT_TRANSPORT_QUEUE_MAX) {
        c->rt->stats.backpressure++;
        pipe_set_reading(c, false);
    }
}

static void pipe_set_reading(struct rt_conn *c, bool on)
{
    if (on == c->pipe_reading) {
        return;
    }
    if (!on) {
        uv_read_stop((uv_stream_t *)&c->pipe);
        c->pipe_reading = false;
        return;
    }
    int rc = uv_read_start((uv_stream_t *)&c->pipe, on_pipe_alloc, on_pipe_read);
    if (rc != 0) {
        conn_close(c, rc, "start reading libraft's stream");
        return;
    }
    c->pipe_reading = true;
}

static void on_pipe_written(uv_write_t *req, int status)
{
    struct rt_write *w = (struct rt_write *)req;
    struct rt_conn *c = w->c;
    hbc_free(w);
    if (c->state != RT_OPEN) {
        return;
    }
    if (status < 0) {
        conn_close(c, status, "writing to libraft's stream failed");
        return;
    }
    if (c->tls_stopped && uv_stream_get_write_queue_size((uv_stream_t *)&c->pipe) <= RT_QUEUE_LOW) {
        c->tls_stopped = false;
        if (tls_conn_read_start(c->tls) != 0) {
            conn_close(c, HBC_ECANCELED, "resume reading TLS");
        }
    }
}

/* TLS delivered: forward to libraft, copying only what the socket does not take at once. */
static void pipe_write(struct rt_conn *c, const uint8_t *data, size_t n)
{
    uv_stream_t *s = (uv_stream_t *)&c->pipe;
    if (uv_stream_get_write_queue_size(s) == 0) {
        uv_buf_t b = uv_buf_init((char *)data, (unsigned)n);
        int r = uv_try_write(s, &b, 1);
        if (r < 0 && r != UV_EAGAIN) {
            conn_close(c, r, "writing to libraft's stream failed");
            return;
        }
        if (r > 0) {
            data += r;
            n -= (size_t)r;
        }
    }
    if (n == 0) {
        return;
    }
    struct rt_write *w = hbc_malloc(sizeof *w + n);
    if (w == NULL) {
        conn_close(c, HBC_ENOMEM, "buffering for libraft");
        return;
    }
    w->c = c;
    w->len = n;
    memcpy(w->data, data, n);
    uv_buf_t b = uv_buf_init((char *)w->data, (unsigned)n);
    int rc = uv_write(&w->req, s, &b, 1, on_pipe_written);
    if (rc != 0) {
        hbc_free(w);
        conn_close(c, rc, "writing to libraft's stream failed");
        return;
    }
    size_t q = uv_stream_get_write_queue_size(s);
    note_peak(c->rt, q);
    if (q > RAFT_TRANSPORT_QUEUE_MAX && !c->tls_stopped) {
        c->rt->stats.backpressure++;
        c->tls_stopped = true;
        tls_conn_read_stop(c->tls);
    }
}

/*
 * Make the socketpair: c->pipe on our end, c->raft_stream (for libraft) on
 * the other. On error the handles made so far are closed by conn_close().
 */
static int conn_make_pair(struct rt_conn *c)
{
    int fds[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds) != 0) {
        return -errno;
    }
    uv_loop_t *loop = c->rt->loop;
    c->raft_stream = raft_malloc(sizeof *c->raft_stream);
    if (c->raft_stream == NULL) {
        close(fds[0]);
        close(fds[1]);
        return HBC_ENOMEM;
    }
    uv_pipe_init(loop, c->raft_stream, 0);
    c->raft_stream->data = c;
    uv_pipe_init(loop, &c->pipe, 0);
    c->pipe.data = c;
    c->pipe_inited = true;
    c->handles += 2;
    int rc = uv_pipe_open(&c->pipe, fds[1]);
    if (rc != 0) {
        close(fds[0]);
        close(fds[1]);
        return rc;
    }
    rc = uv_pipe_open(c->raft_stream, fds[0]);
    if (rc != 0) {
        close(fds[0]);
        return rc;
    }
    return 0;
}

/* Hand libraft's end over: from now on libraft closes and frees it. */
static uv_stream_t *conn_hand_over(struct rt_conn *c)
{
    uv_stream_t *s = (uv_stream_t *)c->raft_stream;
    c->raft_stream = NULL;
    c->handles--;
    s->data = NULL;
    return s;
}

/* ------------------------------------------------------------------------ */
/* Preamble                                                                  */
/* ------------------------------------------------------------------------ */

/* Close an inbound connection whose preamble or certificate is not acceptable. */
static void conn_refuse(struct rt_conn *c, int code, const char *reason)
{
    char cn[80];
    const char *peer_cn = c->tls != NULL ? tls_conn_peer_cn(c->tls) : "";
    hbc_log(LOG_WARN, "event=raft_peer_refused peer=%s claimed_id=%llu cn=%s reason=\"%s\"",
            c->peer_addr, (unsigned long long)c->peer_id, log_name(cn, sizeof cn, peer_cn), reason);
    c->rt->stats.refused++;
    conn_close(c, code, reason);
}

/* The peer holds a node certificate whose name gives id; otherwise why not, in reason. */
static bool peer_is(struct tls_conn *tc, raft_id id, const char **reason)
{
    if (!tls_conn_peer_has_ou(tc, "node")) {
        *reason = "certificate is not a node certificate (no OU=node)";
        return false;
    }
    if (raft_id_from_name(tls_conn_peer_cn(tc)) != id) {
        *reason = "certificate CN does not name this raft id";
        return false;
    }
    return true;
}

/* Accepted side: the preamble is complete and well-formed; check who sent it. */
static void conn_accept(struct rt_conn *c, const char *address)
{
    struct rt *rt = c->rt;
    const char *why;
    if (!peer_is(c->tls, c->peer_id, &why)) {
        conn_refuse(c, HBC_EAUTH, why);
        return;
    }
    int rc = conn_make_pair(c);
    if (rc != 0) {
        hbc_log(LOG_ERROR, "event=raft_accept_failed peer=%s reason=\"socketpair: %s\"",
                c->peer_addr, hbc_strerror(rc));
        conn_close(c, rc, "socketpair");
        return;
    }
    uv_buf_t ack = uv_buf_init(RAFT_TRANSPORT_MAGIC, RAFT_TRANSPORT_MAGIC_LEN);
    struct err e;
    rc = tls_conn_write(c->tls, &ack, 1, NULL, NULL, &e);
    if (rc != 0) {
        conn_close(c, rc, e.msg);
        return;
    }
    c->state = RT_OPEN;
    conn_unpend(c);
    uv_timer_stop(&c->timer);
    pipe_set_reading(c, true);
    if (c->state != RT_OPEN) {
        return;
    }
    char cn[80];
    hbc_log(LOG_INFO, "event=raft_peer_accepted peer=%s id=%llu cn=%s address=%s", c->peer_addr,
            (unsigned long long)c->peer_id, log_name(cn, sizeof cn, tls_conn_peer_cn(c->tls)),
            address);
    rt->stats.accepted++;
    rt->accept_cb(rt->t, c->peer_id, address, conn_hand_over(c));
}

/* Accepted side: take preamble bytes; act once it is complete. */
static void hello_feed(struct rt_conn *c, const uint8_t *data, size_t n)
{
    size_t want = RT_HELLO_FIXED;
    if (c->hello_len >= RT_HELLO_FIXED) {
        want += (size_t)get_be(c->hello + RAFT_TRANSPORT_MAGIC_LEN + 8, 2);
    }
    while (n > 0) {
        size_t take = want - c->hello_len < n ? want - c->hello_len : n;
        memcpy(c->hello + c->hello_len, data, take);
        c->hello_len += take;
        data += take;
        n -= take;
        if (c->hello_len < want) {
            return;
        }
        if (want == RT_HELLO_FIXED) {
            /* The fixed part is in: check it before waiting for the address. */
            if (memcmp(c->hello, RAFT_TRANSPORT_MAGIC, RAFT_TRANSPORT_MAGIC_LEN - 1) != 0) {
                conn_refuse(c, HBC_EPROTO, "not a raft preamble");
                return;
            }
            if (c->hello[RAFT_TRANSPORT_MAGIC_LEN - 1] !=
                (uint8_t)RAFT_TRANSPORT_MAGIC[RAFT_TRANSPORT_MAGIC_LEN - 1]) {
                char reason[64];
                snprintf(reason, sizeof reason, "unsupported preamble version %u",
                         c->hello[RAFT_TRANSPORT_MAGIC_LEN - 1]);
                conn_refuse(c, HBC_EVERSION, reason);
                return;
            }
            c->peer_id = (raft_id)get_be(c->hello + RAFT_TRANSPORT_MAGIC_LEN, 8);
            size_t alen = (size_t)get_be(c->hello + RAFT_TRANSPORT_MAGIC_LEN + 8, 2);
            if (c->peer_id == 0) {
                conn_refuse(c, HBC_EPROTO, "preamble claims raft id 0");
                return;
            }
            if (alen == 0 || alen > RAFT_TRANSPORT_ADDR_MAX) {
                conn_refuse(c, HBC_EPROTO, "preamble address length out of range");
                return;
            }
            want += alen;
            continue;
        }
        if (n > 0) {
            /* The client must wait for our reply before libraft may write. */
            conn_refuse(c, HBC_EPROTO, "data after the preamble before the reply");
            return;
        }
        const char *address = (const char *)c->hello + RT_HELLO_FIXED;
        size_t alen = c->hello_len - RT_HELLO_FIXED;
        if (!address_ok(address, alen)) {
            conn_refuse(c, HBC_EPROTO, "preamble address has characters not allowed");
            return;
        }
        c->hello[c->hello_len] = '\0';
        conn_accept(c, address);
        return;
    }
}

/* Dialling side: take the server's reply; hand the stream to libraft once it is in. */
static void reply_feed(struct rt_conn *c, const uint8_t *data, size_t n)
{
    size_t take = RAFT_TRANSPORT_MAGIC_LEN - c->hello_len;
    if (n > take) {
        conn_close(c, HBC_EPROTO, "server sent data after the preamble reply");
        return;
    }
    memcpy(c->hello + c->hello_len, data, n);
    c->hello_len += n;
    if (c->hello_len < RAFT_TRANSPORT_MAGIC_LEN) {
        return;
    }
    if (memcmp(c->hello, RAFT_TRANSPORT_MAGIC, RAFT_TRANSPORT_MAGIC_LEN) != 0) {
        hbc_log(LOG_WARN, "event=raft_connect_failed peer=%s id=%llu reason=\"bad preamble reply\"",
                c->peer_addr, (unsigned long long)c->peer_id);
        conn_close(c, HBC_EPROTO, "bad preamble reply");
        return;
    }
    int rc = conn_make_pair(c);
    if (rc != 0) {
        hbc_log(LOG_ERROR, "event=raft_connect_failed peer=%s reason=\"socketpair: %s\"",
                c->peer_addr, hbc_strerror(rc));
        conn_close(c, rc, "socketpair");
        return;
    }
    c->state = RT_OPEN;
    uv_timer_stop(&c->timer);
    pipe_set_reading(c, true);
    if (c->state != RT_OPEN) {
        return;
    }
    hbc_log(LOG_DEBUG, "event=raft_peer_connected peer=%s id=%llu", c->peer_addr,
            (unsigned long long)c->peer_id);
    conn_connect_done(c, conn_hand_over(c), 0);
}

/* ------------------------------------------------------------------------ */
/* TLS callbacks                                                             */
/* ------------------------------------------------------------------------ */

/* Make a dead peer show up in seconds, not minutes (RT_TCP_USER_TIMEOUT_MS). */
static void set_liveness(struct rt_conn *c)
{
    uv_tcp_t *tcp = tls_conn_tcp(c->tls);
    uv_os_fd_t fd;
    unsigned timeout = RT_TCP_USER_TIMEOUT_MS;
    if (uv_tcp_keepalive(tcp, 1, RT_TCP_KEEPALIVE_S) != 0 ||
        uv_fileno((uv_handle_t *)tcp, &fd) != 0 ||
        setsockopt(fd, IPPROTO_TCP, TCP_USER_TIMEOUT, &timeout, sizeof timeout) != 0) {
        hbc_log(LOG_WARN, "event=raft_socket_option peer=%s reason=\"%s\"", c->peer_addr,
                strerror(errno));
    }
}

static void on_tls_handshake(struct tls_conn *tc, int status)
{
    struct rt_conn *c = tls_conn_data(tc);
    if (c->state != RT_HANDSHAKE) {
        return; /* we closed it first */
    }
    if (status != 0) {
        if (c->inbound) {
            c->rt->stats.handshake_failed++;
        }
        conn_close(c, status, NULL);
        return;
    }
    c->state = RT_HELLO;
    uv_timer_start(&c->timer, on_timer, c->rt->preamble_timeout_ms, 0);
    set_liveness(c);
    if (c->inbound) {
        return;
    }
    const char *why;
    if (!peer_is(tc, c->peer_id, &why)) {
        char cn[80];
        hbc_log(LOG_WARN,
                "event=raft_peer_refused role=client peer=%s dialled_id=%llu cn=%s reason=\"%s\"",
                c->peer_addr, (unsigned long long)c->peer_id,
                log_name(cn, sizeof cn, tls_conn_peer_cn(tc)), why);
        conn_close(c, HBC_EAUTH, why);
        return;
    }
    struct rt *rt = c->rt;
    size_t alen = strlen(rt->address);
    uint8_t hello[RT_HELLO_FIXED];
    memcpy(hello, RAFT_TRANSPORT_MAGIC, RAFT_TRANSPORT_MAGIC_LEN);
    put_be(hello + RAFT_TRANSPORT_MAGIC_LEN, rt->id, 8);
    put_be(hello + RAFT_TRANSPORT_MAGIC_LEN + 8, alen, 2);
    uv_buf_t bufs[2] = {uv_buf_init((char *)hello, sizeof hello),
                        uv_buf_init(rt->address, (unsigned)alen)};
    struct err e;
    int rc = tls_conn_write(tc, bufs, 2, NULL, NULL, &e);
    if (rc != 0) {
        conn_close(c, rc, e.msg);
    }
}

static void on_tls_read(struct tls_conn *tc, const uint8_t *data, size_t n)
{
    struct rt_conn *c = tls_conn_data(tc);
    switch (c->state) {
    case RT_HELLO:
        if (c->inbound) {
            hello_feed(c, data, n);
        } else {
            reply_feed(c, data, n);
        }
        break;
    case RT_OPEN:
        pipe_write(c, data, n);
        break;
    case RT_HANDSHAKE:
    case RT_CLOSING:
        break;
    }
}

static void on_tls_close(struct tls_conn *tc, int status, const char *reason)
{
    struct rt_conn *c = tls_conn_data(tc);
    c->tls = NULL;
    if (c->state == RT_OPEN) {
        hbc_log(LOG_INFO, "event=raft_peer_closed role=%s peer=%s id=%llu code=%s reason=\"%s\"",
                c->inbound ? "server" : "client", c->peer_addr, (unsigned long long)c->peer_id,
                status != 0 ? hbc_errname(status) : "0", reason);
    } else if (c->state == RT_HELLO && !c->inbound) {
        /* Refused by the server, most likely: it closes without a reply. */
        hbc_log(LOG_WARN, "event=raft_connect_failed peer=%s id=%llu reason=\"%s\"", c->peer_addr,
                (unsigned long long)c->peer_id, reason);
    }
    conn_close(c, status, reason);
    conn_maybe_free(c);
}

/* ------------------------------------------------------------------------ */
/* struct raft_uv_transport methods                                          */
/* ------------------------------------------------------------------------ */

static int rt_init(struct raft_uv_transport *t, raft_id id, const char *address)
{
    struct rt *rt = t->impl;
    size_t n = strlen(address);
    if (id == 0 || !address_ok(address, n)) {
        snprintf(t->errmsg, sizeof t->errmsg, "raft transport: bad id or address '%.64s'", address);
        return RAFT_INVALID;
    }
    char *copy = hbc_strdup(address);
    if (copy == NULL) {
        snprintf(t->errmsg, sizeof t->errmsg, "raft transport: out of memory");
        return RAFT_NOMEM;
    }
    hbc_free(rt->address);
    rt->address = copy;
    rt->id = id;
    return 0;
}

static void on_connection(uv_stream_t *server, int status)
{
    struct rt *rt = server->data;
    if (status < 0) {
        hbc_log(LOG_WARN, "event=raft_accept_failed reason=\"%s\"", uv_strerror(status));
        return;
    }
    if (rt->closing) {
        return;
    }
    struct rt_conn *c = conn_new(rt, true);
    if (c == NULL) {
        hbc_log(LOG_ERROR, "event=raft_accept_failed reason=\"out of memory\"");
        return;
    }
    struct err e;
    int rc = tls_accept(server, rt->tls, &rt_tls_cbs, c, &c->tls, &e);
    if (rc != 0) {
        c->tls = NULL;
        hbc_log(LOG_WARN, "event=raft_accept_failed reason=\"%s\"", e.msg);
        conn_close(c, rc, NULL);
        return;
    }
    snprintf(c->peer_addr, sizeof c->peer_addr, "%s", tls_conn_peer_addr(c->tls));
    if (c->state != RT_HANDSHAKE) {
        return; /* failed at once; on_close follows */
    }
    c->counted_pending = true;
    rt->pending_inbound++;
    if (rt->pending_inbound > RAFT_TRANSPORT_PENDING_MAX) {
        rt->stats.busy++;
        hbc_log(LOG_WARN, "event=raft_accept_busy peer=%s pending=%u", c->peer_addr,
                rt->pending_inbound - 1);
        conn_close(c, HBC_EBUSY, "too many raft connections in handshake");
    }
}

static int rt_listen(struct raft_uv_transport *t, raft_uv_accept_cb cb)
{
    struct rt *rt = t->impl;
    const char *addr = rt->bind_address != NULL ? rt->bind_address : rt->address;
    struct sockaddr_in sa;
    if (addr == NULL || parse_ipv4(addr, &sa) != 0) {
        snprintf(t->errmsg, sizeof t->errmsg, "raft transport: listen: '%.64s' is not a.b.c.d:port",
                 addr != NULL ? addr : "");
        return RAFT_INVALID;
    }
    if (rt->listener_inited) {
        snprintf(t->errmsg, sizeof t->errmsg, "raft transport: already listening");
        return RAFT_INVALID;
    }
    rt->accept_cb = cb;
    uv_tcp_init(rt->loop, &rt->listener);
    rt->listener.data = rt;
    rt->listener_inited = true;
    int rc = uv_tcp_bind(&rt->listener, (const struct sockaddr *)&sa, 0);
    if (rc == 0) {
        rc = uv_listen((uv_stream_t *)&rt->listener, 128, on_connection);
    }
    if (rc != 0) {
        snprintf(t->errmsg, sizeof t->errmsg, "raft transport: listen on %s: %s", addr,
                 uv_strerror(rc));
        hbc_log(LOG_ERROR, "event=raft_listen_failed address=%s reason=\"%s\"", addr,
                uv_strerror(rc));
        return RAFT_IOERR;
    }
    hbc_log(LOG_INFO, "event=raft_listening address=%s id=%llu", addr, (unsigned long long)rt->id);
    return 0;
}

static int rt_connect(struct raft_uv_transport *t, struct raft_uv_connect *req, raft_id id,
                      const char *address, raft_uv_connect_cb cb)
{
    struct rt *rt = t->impl;
    if (rt->closing) {
        return RAFT_CANCELED;
    }
    if (rt->address == NULL) {
        snprintf(t->errmsg, sizeof t->errmsg, "raft transport: connect before init");
        return RAFT_INVALID;
    }
    struct rt_conn *c = conn_new(rt, false);
    if (c == NULL) {
        snprintf(t->errmsg, sizeof t->errmsg, "raft transport: out of memory");
        return RAFT_NOMEM;
    }
    c->peer_id = id;
    char resolved[64];
    if (rt->resolve != NULL && rt->resolve(rt->resolve_arg, id, resolved, sizeof resolved) == 1 &&
        strcmp(resolved, address) != 0) {
        /* The peer moved since libraft first dialled it: the state machine knows where. */
        hbc_log(LOG_DEBUG, "event=raft_peer_readdressed id=%llu from=%s to=%s",
                (unsigned long long)id, address, resolved);
        address = resolved;
    }
    snprintf(c->peer_addr, sizeof c->peer_addr, "%s", address);
    struct err e;
    int rc = tls_connect(rt->loop, rt->tls, address, &rt_tls_cbs, c, &c->tls, &e);
    if (rc != 0) {
        c->tls = NULL;
        snprintf(t->errmsg, sizeof t->errmsg, "raft transport: %.200s", e.msg);
        conn_close(c, rc, NULL); /* no request yet: no callback */
        return rc == HBC_ENOMEM ? RAFT_NOMEM : RAFT_NOCONNECTION;
    }
    req->cb = cb;
    c->req = req;
    return 0;
}

static void on_listener_closed(uv_handle_t *h)
{
    struct rt *rt = h->data;
    rt->listener_closed = true;
    rt_maybe_closed(rt);
}

static void rt_close(struct raft_uv_transport *t, raft_uv_transport_close_cb cb)
{
    struct rt *rt = t->impl;
    rt->closing = true;
    rt->close_cb = cb;
    if (rt->listener_inited && !uv_is_closing((uv_handle_t *)&rt->listener)) {
        uv_close((uv_handle_t *)&rt->listener, on_listener_closed);
    }
    /* Connections are freed only from callbacks, so the list stays intact here. */
    for (struct rt_conn *c = rt->conns; c != NULL; c = c->next) {
        conn_close(c, 0, "raft transport closing");
    }
    rt_maybe_closed(rt);
}

/* ------------------------------------------------------------------------ */
/* Public API                                                                */
/* ------------------------------------------------------------------------ */

int raft_transport_init(struct raft_uv_transport *t, uv_loop_t *loop, struct tls_ctx *tls,
                        struct err *e)
{
    struct rt *rt = hbc_calloc(1, sizeof *rt);
    if (rt == NULL) {
        return err_set(e, HBC_ENOMEM, "raft transport");
    }
    rt->t = t;
    rt->loop = loop;
    rt->tls = tls;
    rt->preamble_timeout_ms = RAFT_TRANSPORT_PREAMBLE_TIMEOUT_MS;
    t->impl = rt;
    t->errmsg[0] = '\0';
    t->init = rt_init;
    t->listen = rt_listen;
    t->connect = rt_connect;
    t->close = rt_close;
    return 0;
}

int raft_transport_set_bind_address(struct raft_uv_transport *t, const char *bind_address,
                                    struct err *e)
{
    struct rt *rt = t->impl;
    struct sockaddr_in sa;
    if (bind_address == NULL || parse_ipv4(bind_address, &sa) != 0) {
        return err_set(e, HBC_EINVAL, "raft transport: bind address '%.64s' is not a.b.c.d:port",
                       bind_address != NULL ? bind_address : "");
    }
    char *copy = hbc_strdup(bind_address);
    if (copy == NULL) {
        return err_set(e, HBC_ENOMEM, "raft transport: bind address");
    }
    hbc_free(rt->bind_address);
    rt->bind_address = copy;
    return 0;
}

void raft_transport_set_preamble_timeout(struct raft_uv_transport *t, unsigned ms)
{
    struct rt *rt = t->impl;
    rt->preamble_timeout_ms = ms != 0 ? ms : RAFT_TRANSPORT_PREAMBLE_TIMEOUT_MS;
}

void raft_transport_set_resolver(struct raft_uv_transport *t,
                                 int (*resolve)(void *arg, raft_id id, char *out, size_t len),
                                 void *arg)
{
    struct rt *rt = t->impl;
    rt->resolve = resolve;
    rt->resolve_arg = arg;
}

void raft_transport_get_stats(const struct raft_uv_transport *t, struct raft_transport_stats *out)
{
    const struct rt *rt = t->impl;
    *out = rt->stats;
}

void raft_transport_release(struct raft_uv_transport *t)
{
    struct rt *rt = t->impl;
    if (rt == NULL) {
        return;
    }
    /* Only after close() has finished, or when nothing was ever opened. */
    assert(rt->conns == NULL && (!rt->listener_inited || rt->listener_closed));
    hbc_free(rt->address);
    hbc_free(rt->bind_address);
    hbc_free(rt);
    t->impl = NULL;
}
