/*
 * Unit tests for mutual TLS over libuv: handshakes, refusals, framed echo,
 * backpressure, reload and closing. Everything runs in-process on one loop
 * over 127.0.0.1 with ephemeral ports; certificates come from scripts/dev-ca
 * (found through HBC_SOURCE_DIR) in a temporary directory.
 */
#include <errno.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "tests/unit/test_util.h"
#include <uv.h>

#include "common/alloc.h"
#include "common/frame.h"
#include "common/log.h"
#include "common/tls.h"

/* ------------------------------------------------------------------------ */
/* Certificates and log capture                                              */
/* ------------------------------------------------------------------------ */

static char pki_dir[256]; /* temporary directory holding ca/ and other/ */

/* Path of DIR/<ca>/<name>.<ext> in out. */
static const char *pki_path(char *out, size_t n, const char *ca, const char *name, const char *ext)
{
    snprintf(out, n, "%s/%s/%s.%s", pki_dir, ca, name, ext);
    return out;
}

static void assert_logged(const char *a, const char *b)
{
    /* Some line holds both a and b. */
    for (const char *line = log_lines; *line != '\0';) {
        const char *end = strchr(line, '\n');
        size_t n = end != NULL ? (size_t)(end - line) : strlen(line);
        char buf[4096];
        snprintf(buf, sizeof buf, "%.*s", (int)n, line);
        if (strstr(buf, a) != NULL && (b == NULL || strstr(buf, b) != NULL)) {
            return;
        }
        line += n + (end != NULL ? 1 : 0);
    }
    fail_msg("no log line with '%s' and '%s' in:\n%s", a, b != NULL ? b : "", log_lines);
}

static int group_setup(void **state)
{
    (void)state;
    const char *src = getenv("HBC_SOURCE_DIR");
    if (src == NULL) {
        fprintf(stderr, "HBC_SOURCE_DIR is not set (meson test sets it)\n");
        return -1;
    }
    const char *tmp = getenv("TMPDIR") != NULL ? getenv("TMPDIR") : "/tmp";
    snprintf(pki_dir, sizeof pki_dir, "%s/hbc-test-tls-XXXXXX", tmp);
    if (mkdtemp(pki_dir) == NULL) {
        return -1;
    }
    char dev_ca[512];
    snprintf(dev_ca, sizeof dev_ca, "'%s/scripts/dev-ca'", src);
    /* The cluster CA: servers, a good client, an expired client, a server with another IP. */
    sh("%s '%s/ca' init >/dev/null", dev_ca, pki_dir);
    sh("%s '%s/ca' node node1 127.0.0.1 >/dev/null", dev_ca, pki_dir);
    sh("%s '%s/ca' node node2 127.0.0.1 >/dev/null", dev_ca, pki_dir);
    sh("%s '%s/ca' node far 10.9.9.9 >/dev/null", dev_ca, pki_dir);
    sh("%s '%s/ca' client alice --role backup --role restore >/dev/null", dev_ca, pki_dir);
    sh("%s '%s/ca' client old --role backup --expired >/dev/null", dev_ca, pki_dir);
    /* Another CA, whose certificates nobody here trusts. */
    sh("%s '%s/other' init >/dev/null", dev_ca, pki_dir);
    sh("%s '%s/other' client mallory --role admin >/dev/null", dev_ca, pki_dir);
    sh("%s '%s/other' node evil 127.0.0.1 >/dev/null", dev_ca, pki_dir);
    log_set_sink(log_capture, NULL);
    return 0;
}

static int group_teardown(void **state)
{
    (void)state;
    log_set_sink(NULL, NULL);
    if (pki_dir[0] != '\0') {
        char cmd[512];
        snprintf(cmd, sizeof cmd, "rm -rf '%s'", pki_dir);
        if (system(cmd) != 0) {
            return -1;
        }
    }
    return 0;
}

/* A context trusting <ca>'s CA with <ca>/<name> as our certificate (name NULL: none). */
static struct tls_ctx *make_ctx_opts(const char *ca, const char *cert_ca, const char *name,
                                     unsigned handshake_ms, bool no_ip_check)
{
    char ca_file[512], cert[512], key[512];
    struct tls_ctx_opts o = {
        .ca_file = pki_path(ca_file, sizeof ca_file, ca, "ca", "crt"),
        .cert_file = name != NULL ? pki_path(cert, sizeof cert, cert_ca, name, "crt") : NULL,
        .key_file = name != NULL ? pki_path(key, sizeof key, cert_ca, name, "key") : NULL,
        .handshake_timeout_ms = handshake_ms,
        .close_timeout_ms = 0,
        .no_server_ip_check = no_ip_check,
    };
    struct tls_ctx *ctx = NULL;
    struct err e;
    int rc = tls_ctx_new(&o, &ctx, &e);
    if (rc != 0) {
        fail_msg("tls_ctx_new: %s", e.msg);
    }
    return ctx;
}

static struct tls_ctx *make_ctx(const char *name)
{
    return make_ctx_opts("ca", "ca", name, 0, false);
}

/* ------------------------------------------------------------------------ */
/* Loop helpers                                                              */
/* ------------------------------------------------------------------------ */

#define RUN_UNTIL(loop, cond)                                                                      \
    do {                                                                                           \
        while (!(cond)) {                                                                          \
            if (uv_run((loop), UV_RUN_ONCE) == 0 && !(cond)) {                                     \
                fail_msg("loop ran dry before: %s", #cond);                                        \
            }                                                                                      \
        }                                                                                          \
    } while (0)

static void finish_loop(uv_loop_t *loop)
{
    uv_run(loop, UV_RUN_DEFAULT);
    int rc = uv_loop_close(loop);
    if (rc != 0) {
        uv_print_all_handles(loop, stderr);
    }
    assert_int_equal(rc, 0);
}

/* Deterministic payload bytes: frame i, byte j. */
static void fill_pattern(uint8_t *p, size_t n, size_t i)
{
    uint32_t x = (uint32_t)(i * 2654435761u) | 1u;
    for (size_t j = 0; j < n; j++) {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        p[j] = (uint8_t)x;
    }
}

/* Stream byte at offset k of the flood test. */
static uint8_t flood_byte(size_t k)
{
    return (uint8_t)(k ^ (k >> 8) ^ (k >> 16) ^ 0x5a);
}

/* ------------------------------------------------------------------------ */
/* Test server                                                               */
/* ------------------------------------------------------------------------ */

enum server_mode {
    SERVER_ECHO,  /* echo every frame back */
    SERVER_FLOOD, /* send flood_total bytes, keeping at most flood_limit queued */
};

struct server;

struct sconn {
    struct server *srv;         /* owner */
    struct tls_conn *conn;      /* the connection */
    struct frame_reader reader; /* incoming frames (echo mode) */
    bool ok;                    /* its handshake succeeded */
    struct sconn *next;         /* in srv->conns */
};

struct server {
    uv_loop_t *loop;              /* the test's loop */
    uv_tcp_t listener;            /* 127.0.0.1:0 */
    struct tls_ctx *ctx;          /* server context */
    enum server_mode mode;        /* behaviour */
    char addr[64];                /* "127.0.0.1:port" */
    int accepted;                 /* connections accepted */
    int hs_ok;                    /* handshakes that succeeded */
    int hs_failed;                /* handshakes that failed */
    int hs_calls;                 /* on_handshake calls */
    int closed;                   /* on_close calls */
    int closed_ok;                /* on_close calls of connections whose handshake succeeded */
    int ok_close_status;          /* status of the last of those */
    char ok_close_reason[512];    /* its reason */
    int last_hs_status;           /* status of the last failed handshake */
    int last_close_status;        /* status of the last close */
    char last_close_reason[512];  /* its reason */
    char last_subject[256];       /* subject of the last verified client */
    char last_cn[128];            /* its CN */
    bool last_has_backup;         /* it has OU=backup */
    bool last_has_admin;          /* it has OU=admin */
    struct sconn *conns;          /* open connections */
    size_t flood_total;           /* bytes to send (flood mode) */
    size_t flood_limit;           /* stop writing above this many queued bytes */
    size_t flood_chunk;           /* bytes per write */
    size_t flood_sent;            /* bytes handed to tls_conn_write so far */
    size_t flood_max_queued;      /* highest tls_conn_queued() seen */
    size_t flood_max_uv_queue;    /* highest libuv write queue size seen */
    size_t flood_queued_at_close; /* tls_conn_queued() in on_close */
    uint8_t *flood_buf;           /* scratch chunk */
    struct tls_conn *flood_conn;  /* the connection being flooded */
};

static int server_frame_cb(Hbc__Frame *f, void *arg)
{
    struct sconn *sc = arg;
    uint8_t *buf;
    size_t len;
    struct err e;
    int rc = frame_encode(f, &buf, &len, &e);
    frame_free(f);
    if (rc != 0) {
        return rc;
    }
    uv_buf_t b = uv_buf_init((char *)buf, (unsigned)len);
    rc = tls_conn_write(sc->conn, &b, 1, NULL, NULL, &e);
    hbc_free(buf); /* borrowed only during the call */
    return rc;
}

static void flood_pump(struct server *srv);

static void flood_write_cb(struct tls_conn *c, int status, void *arg)
{
    (void)c;
    struct server *srv = arg;
    if (status == 0) {
        flood_pump(srv);
    }
}

static void flood_pump(struct server *srv)
{
    struct tls_conn *c = srv->flood_conn;
    while (srv->flood_sent < srv->flood_total && tls_conn_is_open(c) &&
           tls_conn_queued(c) < srv->flood_limit) {
        size_t n = srv->flood_total - srv->flood_sent;
        n = n < srv->flood_chunk ? n : srv->flood_chunk;
        for (size_t k = 0; k < n; k++) {
            srv->flood_buf[k] = flood_byte(srv->flood_sent + k);
        }
        uv_buf_t b = uv_buf_init((char *)srv->flood_buf, (unsigned)n);
        struct err e;
        assert_int_equal(tls_conn_write(c, &b, 1, flood_write_cb, srv, &e), 0);
        srv->flood_sent += n;
        size_t q = tls_conn_queued(c);
        size_t uq = uv_stream_get_write_queue_size((uv_stream_t *)tls_conn_tcp(c));
        srv->flood_max_queued = q > srv->flood_max_queued ? q : srv->flood_max_queued;
        srv->flood_max_uv_queue = uq > srv->flood_max_uv_queue ? uq : srv->flood_max_uv_queue;
    }
}

static void server_on_handshake(struct tls_conn *c, int status)
{
    struct sconn *sc = tls_conn_data(c);
    struct server *srv = sc->srv;
    srv->hs_calls++;
    if (status != 0) {
        srv->hs_failed++;
        srv->last_hs_status = status;
        return;
    }
    srv->hs_ok++;
    sc->ok = true;
    snprintf(srv->last_subject, sizeof srv->last_subject, "%s", tls_conn_peer_subject(c));
    snprintf(srv->last_cn, sizeof srv->last_cn, "%s", tls_conn_peer_cn(c));
    srv->last_has_backup = tls_conn_peer_has_ou(c, "backup");
    srv->last_has_admin = tls_conn_peer_has_ou(c, "admin");
    if (srv->mode == SERVER_FLOOD) {
        srv->flood_conn = c;
        uv_send_buffer_size((uv_handle_t *)tls_conn_tcp(c), &(int){65536});
        flood_pump(srv);
    }
}

static void server_on_read(struct tls_conn *c, const uint8_t *data, size_t n)
{
    struct sconn *sc = tls_conn_data(c);
    if (sc->srv->mode != SERVER_ECHO) {
        return;
    }
    struct err e;
    int rc = frame_reader_feed(&sc->reader, data, n, &e);
    if (rc != 0) {
        tls_conn_close(c, rc, e.msg);
    }
}

static void server_on_close(struct tls_conn *c, int status, const char *reason)
{
    struct sconn *sc = tls_conn_data(c);
    struct server *srv = sc->srv;
    srv->closed++;
    srv->last_close_status = status;
    snprintf(srv->last_close_reason, sizeof srv->last_close_reason, "%s", reason);
    if (sc->ok) {
        srv->closed_ok++;
        srv->ok_close_status = status;
        snprintf(srv->ok_close_reason, sizeof srv->ok_close_reason, "%s", reason);
    }
    if (c == srv->flood_conn) {
        srv->flood_queued_at_close = tls_conn_queued(c);
        srv->flood_conn = NULL;
    }
    for (struct sconn **p = &srv->conns; *p != NULL; p = &(*p)->next) {
        if (*p == sc) {
            *p = sc->next;
            break;
        }
    }
    frame_reader_release(&sc->reader);
    free(sc);
}

static const struct tls_conn_cbs server_cbs = {
    .on_handshake = server_on_handshake,
    .on_read = server_on_read,
    .on_close = server_on_close,
};

static void server_on_connection(uv_stream_t *listener, int status)
{
    struct server *srv = listener->data;
    assert_int_equal(status, 0);
    struct sconn *sc = calloc(1, sizeof *sc);
    assert_non_null(sc);
    sc->srv = srv;
    frame_reader_init(&sc->reader, 0, server_frame_cb, sc);
    struct err e;
    int rc = tls_accept(listener, srv->ctx, &server_cbs, sc, &sc->conn, &e);
    if (rc != 0) {
        fail_msg("tls_accept: %s", e.msg);
    }
    sc->next = srv->conns;
    srv->conns = sc;
    srv->accepted++;
}

static void server_start(struct server *srv, uv_loop_t *loop, struct tls_ctx *ctx,
                         enum server_mode mode)
{
    memset(srv, 0, sizeof *srv);
    srv->loop = loop;
    srv->ctx = ctx;
    srv->mode = mode;
    assert_int_equal(uv_tcp_init(loop, &srv->listener), 0);
    srv->listener.data = srv;
    struct sockaddr_in sa;
    assert_int_equal(uv_ip4_addr("127.0.0.1", 0, &sa), 0);
    assert_int_equal(uv_tcp_bind(&srv->listener, (const struct sockaddr *)&sa, 0), 0);
    assert_int_equal(uv_listen((uv_stream_t *)&srv->listener, 64, server_on_connection), 0);
    int len = sizeof sa;
    assert_int_equal(uv_tcp_getsockname(&srv->listener, (struct sockaddr *)&sa, &len), 0);
    snprintf(srv->addr, sizeof srv->addr, "127.0.0.1:%u", ntohs(sa.sin_port));
}

/* Stop listening and close every open connection. */
static void server_stop(struct server *srv)
{
    uv_close((uv_handle_t *)&srv->listener, NULL);
    for (struct sconn *sc = srv->conns; sc != NULL; sc = sc->next) {
        tls_conn_close(sc->conn, 0, "server stopping");
    }
}

/* ------------------------------------------------------------------------ */
/* Test client                                                               */
/* ------------------------------------------------------------------------ */

struct client {
    struct tls_conn *conn;      /* the connection (invalid after on_close) */
    int hs_calls;               /* on_handshake calls */
    int hs_status;              /* its status */
    int close_calls;            /* on_close calls */
    int close_status;           /* its status */
    char close_reason[512];     /* its reason */
    char subject[256];          /* server subject seen */
    char cn[128];               /* server CN seen */
    struct frame_reader reader; /* replies */
    const size_t *sizes;        /* payload size of each frame to send on handshake, or NULL */
    size_t n_frames;            /* entries in sizes */
    size_t next_reply;          /* index of the next reply expected */
    size_t echoed;              /* payload bytes that came back intact */
    int mismatch;               /* replies that differed */
    bool pause_on_handshake;    /* stop reading at once (flood test) */
    bool close_on_handshake;    /* close at once with status 0 */
    size_t flood_expect;        /* bytes the flood sends */
    size_t flood_got;           /* bytes received */
    size_t flood_bad;           /* bytes that differed */
    uv_timer_t *resume;         /* if set: stop in every on_read, resume from this timer */
    bool stopped;               /* reading is stopped */
    bool in_read_start;         /* inside tls_conn_read_start() */
    int bad_reads;              /* on_read while stopped or inside tls_conn_read_start() */
    int reads;                  /* on_read calls */
    uint8_t *into;              /* if set: flood bytes are asked to be decrypted here, in place */
    unsigned into_calls;        /* times TLS asked where */
    int in_place_reads;         /* on_read calls whose data was in into */
    int misplaced_reads;        /* ... at another place in into than asked */
};

static void client_send_frames(struct client *cl)
{
    static uint8_t vault[16] = {0x11};
    static uint8_t chunk[32] = {0x22};
    for (size_t i = 0; i < cl->n_frames; i++) {
        uint8_t *data = malloc(cl->sizes[i]);
        assert_non_null(data);
        fill_pattern(data, cl->sizes[i], i);
        Hbc__Frame f = HBC__FRAME__INIT;
        Hbc__PutShards put = HBC__PUT_SHARDS__INIT;
        Hbc__ShardBlob blob = HBC__SHARD_BLOB__INIT;
        Hbc__ShardBlob *blobs[1] = {&blob};
        blob.vault_id = (ProtobufCBinaryData){sizeof vault, vault};
        blob.chunk_id = (ProtobufCBinaryData){sizeof chunk, chunk};
        blob.index = (uint32_t)i;
        blob.data = (ProtobufCBinaryData){cl->sizes[i], data};
        put.n_shards = 1;
        put.shards = blobs;
        f.request_id = i;
        f.body_case = HBC__FRAME__BODY_PUT_SHARDS;
        f.put_shards = &put;
        uint8_t *buf;
        size_t len;
        assert_int_equal(frame_encode(&f, &buf, &len, NULL), 0);
        free(data);
        uv_buf_t b = uv_buf_init((char *)buf, (unsigned)len);
        struct err e;
        int rc = tls_conn_write(cl->conn, &b, 1, NULL, NULL, &e);
        hbc_free(buf);
        if (rc != 0) {
            fail_msg("write frame %zu: %s", i, e.msg);
        }
    }
}

static int client_frame_cb(Hbc__Frame *f, void *arg)
{
    struct client *cl = arg;
    size_t i = cl->next_reply++;
    bool ok = i < cl->n_frames && f->request_id == i &&
              f->body_case == HBC__FRAME__BODY_PUT_SHARDS && f->put_shards->n_shards == 1 &&
              f->put_shards->shards[0]->index == i &&
              f->put_shards->shards[0]->data.len == cl->sizes[i];
    if (ok) {
        uint8_t *want = malloc(cl->sizes[i]);
        assert_non_null(want);
        fill_pattern(want, cl->sizes[i], i);
        ok = memcmp(want, f->put_shards->shards[0]->data.data, cl->sizes[i]) == 0;
        free(want);
    }
    if (ok) {
        cl->echoed += cl->sizes[i];
    } else {
        cl->mismatch++;
    }
    frame_free(f);
    if (cl->next_reply == cl->n_frames) {
        tls_conn_close(cl->conn, 0, NULL);
    }
    return 0;
}

static void client_on_handshake(struct tls_conn *c, int status)
{
    struct client *cl = tls_conn_data(c);
    cl->hs_calls++;
    cl->hs_status = status;
    if (status != 0) {
        return;
    }
    snprintf(cl->subject, sizeof cl->subject, "%s", tls_conn_peer_subject(c));
    snprintf(cl->cn, sizeof cl->cn, "%s", tls_conn_peer_cn(c));
    if (cl->pause_on_handshake) {
        assert_int_equal(tls_conn_read_stop(c), 0);
        uv_recv_buffer_size((uv_handle_t *)tls_conn_tcp(c), &(int){65536});
    }
    if (cl->close_on_handshake) {
        tls_conn_close(c, 0, NULL);
    } else if (cl->sizes != NULL) {
        client_send_frames(cl);
    }
}

static void client_resume(uv_timer_t *t)
{
    struct client *cl = t->data;
    cl->stopped = false;
    cl->in_read_start = true;
    assert_int_equal(tls_conn_read_start(cl->conn), 0);
    cl->in_read_start = false;
}

static void client_on_read(struct tls_conn *c, const uint8_t *data, size_t n)
{
    struct client *cl = tls_conn_data(c);
    assert_true(n > 0 && n <= TLS_READ_CHUNK);
    cl->reads++;
    cl->bad_reads += cl->stopped || cl->in_read_start;
    if (cl->resume != NULL && cl->flood_got + n < cl->flood_expect) {
        assert_int_equal(tls_conn_read_stop(c), 0);
        cl->stopped = true;
        uv_timer_start(cl->resume, client_resume, 1, 0);
    }
    if (cl->flood_expect > 0) {
        if (cl->into != NULL && data >= cl->into && data < cl->into + cl->flood_expect) {
            cl->in_place_reads++;
            cl->misplaced_reads += data != cl->into + cl->flood_got;
        }
        for (size_t k = 0; k < n; k++) {
            cl->flood_bad += data[k] != flood_byte(cl->flood_got + k);
        }
        cl->flood_got += n;
        if (cl->flood_got >= cl->flood_expect) {
            tls_conn_close(c, 0, NULL);
        }
        return;
    }
    struct err e;
    int rc = frame_reader_feed(&cl->reader, data, n, &e);
    if (rc != 0) {
        tls_conn_close(c, rc, e.msg);
    }
}

static void client_on_close(struct tls_conn *c, int status, const char *reason)
{
    struct client *cl = tls_conn_data(c);
    cl->close_calls++;
    cl->close_status = status;
    snprintf(cl->close_reason, sizeof cl->close_reason, "%s", reason);
    frame_reader_release(&cl->reader);
    cl->conn = NULL;
}

static const struct tls_conn_cbs client_cbs = {
    .on_handshake = client_on_handshake,
    .on_read = client_on_read,
    .on_close = client_on_close,
};

/* Where the flood's next bytes go: the matching place in into, rooms of many sizes, or TLS's. */
static uint8_t *client_into(struct tls_conn *c, size_t *room)
{
    struct client *cl = tls_conn_data(c);
    cl->into_calls++;
    size_t left = cl->flood_expect - cl->flood_got;
    if (cl->into_calls % 3 == 0 || left == 0) {
        *room = 0;
        return NULL;
    }
    size_t r = (size_t)cl->into_calls * 7919 % 60000 + 1;
    *room = r < left ? r : left;
    return cl->into + cl->flood_got;
}

static void client_start(struct client *cl, uv_loop_t *loop, struct tls_ctx *ctx, const char *addr)
{
    frame_reader_init(&cl->reader, 0, client_frame_cb, cl);
    struct err e;
    int rc = tls_connect(loop, ctx, addr, &client_cbs, cl, &cl->conn, &e);
    if (rc != 0) {
        fail_msg("tls_connect: %s", e.msg);
    }
    if (cl->into != NULL) {
        tls_conn_set_read_buffer(cl->conn, client_into);
    }
}

/* ------------------------------------------------------------------------ */
/* Raw TCP client (not TLS)                                                  */
/* ------------------------------------------------------------------------ */

struct raw {
    uv_tcp_t tcp;        /* socket */
    uv_connect_t creq;   /* connect request */
    uv_write_t wreq;     /* the one write */
    const void *payload; /* bytes to send after connecting (borrowed), or NULL */
    size_t len;          /* their length */
    bool hangup;         /* shut down our direction after sending */
    uv_shutdown_t sreq;  /* that shutdown */
    size_t got;          /* bytes the server sent back */
    int end;             /* UV_EOF or the read error that ended it */
    bool done;           /* handle closed */
    char buf[4096];      /* read buffer */
};

static void raw_closed(uv_handle_t *h)
{
    ((struct raw *)h->data)->done = true;
}

static void raw_alloc(uv_handle_t *h, size_t s, uv_buf_t *b)
{
    (void)s;
    struct raw *r = h->data;
    *b = uv_buf_init(r->buf, sizeof r->buf);
}

static void raw_read(uv_stream_t *s, ssize_t n, const uv_buf_t *b)
{
    (void)b;
    struct raw *r = s->data;
    if (n > 0) {
        r->got += (size_t)n;
    } else if (n < 0) {
        r->end = (int)n;
        uv_close((uv_handle_t *)&r->tcp, raw_closed);
    }
}

static void raw_written(uv_write_t *w, int status)
{
    (void)w;
    (void)status;
}

static void raw_shut(uv_shutdown_t *req, int status)
{
    (void)req;
    (void)status;
}

static void raw_connected(uv_connect_t *req, int status)
{
    struct raw *r = req->data;
    assert_int_equal(status, 0);
    if (r->payload != NULL) {
        uv_buf_t b = uv_buf_init((char *)r->payload, (unsigned)r->len);
        assert_int_equal(uv_write(&r->wreq, (uv_stream_t *)&r->tcp, &b, 1, raw_written), 0);
    }
    if (r->hangup) {
        assert_int_equal(uv_shutdown(&r->sreq, (uv_stream_t *)&r->tcp, raw_shut), 0);
    }
    assert_int_equal(uv_read_start((uv_stream_t *)&r->tcp, raw_alloc, raw_read), 0);
}

static void raw_start(struct raw *r, uv_loop_t *loop, const char *addr, const void *payload,
                      size_t len, bool hangup)
{
    memset(r, 0, sizeof *r);
    r->payload = payload;
    r->len = len;
    r->hangup = hangup;
    const char *colon = strrchr(addr, ':');
    struct sockaddr_in sa;
    assert_int_equal(uv_ip4_addr("127.0.0.1", atoi(colon + 1), &sa), 0);
    assert_int_equal(uv_tcp_init(loop, &r->tcp), 0);
    r->tcp.data = r;
    r->creq.data = r;
    assert_int_equal(uv_tcp_connect(&r->creq, &r->tcp, (const struct sockaddr *)&sa, raw_connected),
                     0);
}

/* ------------------------------------------------------------------------ */
/* Tests                                                                     */
/* ------------------------------------------------------------------------ */

static void test_mutual_handshake_and_pipelined_echo(void **state)
{
    (void)state;
    uv_loop_t loop;
    assert_int_equal(uv_loop_init(&loop), 0);
    struct tls_ctx *sctx = make_ctx("node1");
    struct tls_ctx *cctx = make_ctx("alice");
    struct server srv;
    server_start(&srv, &loop, sctx, SERVER_ECHO);

    /* Edge sizes around TLS records and read chunks, 4 MiB shards, then many small ones. */
    static const size_t edges[] = {1,     2,       100,    16383,  16384,           16385,
                                   65535, 65536,   65537,  100000, (size_t)1 << 20, 4194304,
                                   7,     4194303, 300000, 2097152};
    size_t n_edges = sizeof edges / sizeof edges[0];
    size_t sizes[n_edges + 200];
    memcpy(sizes, edges, sizeof edges);
    srand(42);
    for (size_t i = n_edges; i < n_edges + 200; i++) {
        sizes[i] = 1 + (size_t)rand() % 70000;
    }
    size_t total = 0;
    for (size_t i = 0; i < n_edges + 200; i++) {
        total += sizes[i];
    }

    struct client cl = {.sizes = sizes, .n_frames = n_edges + 200};
    client_start(&cl, &loop, cctx, srv.addr);
    RUN_UNTIL(&loop, cl.close_calls == 1 && srv.closed == 1);

    assert_int_equal(cl.hs_calls, 1);
    assert_int_equal(cl.hs_status, 0);
    assert_int_equal(cl.mismatch, 0);
    assert_int_equal(cl.next_reply, cl.n_frames);
    assert_int_equal(cl.echoed, total);
    assert_int_equal(cl.close_status, 0);
    /* Each side saw the other's verified identity. */
    assert_string_equal(cl.cn, "node1");
    assert_string_equal(cl.subject, "CN=node1,OU=node");
    assert_string_equal(srv.last_cn, "alice");
    assert_string_equal(srv.last_subject, "CN=alice,OU=backup,OU=restore");
    assert_true(srv.last_has_backup);
    assert_false(srv.last_has_admin);
    assert_int_equal(srv.hs_ok, 1);
    assert_int_equal(srv.hs_calls, 1);
    /* The client's close_notify ended the server's side cleanly. */
    assert_int_equal(srv.last_close_status, 0);
    assert_string_equal(srv.last_close_reason, "closed by the peer");

    server_stop(&srv);
    finish_loop(&loop);
    tls_ctx_free(sctx);
    tls_ctx_free(cctx);
}

/* Run one refused TLS client against srv; returns after both sides closed it. */
static void refused_client(uv_loop_t *loop, struct server *srv, struct tls_ctx *ctx,
                           struct client *cl)
{
    int closed = srv->closed;
    int failed = srv->hs_failed;
    memset(cl, 0, sizeof *cl);
    log_clear();
    client_start(cl, loop, ctx, srv->addr);
    RUN_UNTIL(loop, cl->close_calls == 1 && srv->closed == closed + 1);
    assert_int_equal(srv->hs_failed, failed + 1);
    assert_int_equal(srv->last_hs_status, HBC_ETLS);
    assert_int_equal(cl->hs_calls, 1);
    /* TLS 1.3: the client may finish before the server refuses it; either way it is closed. */
    assert_int_not_equal(cl->close_status, 0);
}

static void refused_raw(uv_loop_t *loop, struct server *srv, const void *payload, size_t len,
                        bool hangup)
{
    int closed = srv->closed;
    int failed = srv->hs_failed;
    struct raw r;
    log_clear();
    raw_start(&r, loop, srv->addr, payload, len, hangup);
    RUN_UNTIL(loop, r.done && srv->closed == closed + 1);
    assert_int_equal(srv->hs_failed, failed + 1);
    /* The server hung up on it. */
    assert_true(r.end == UV_EOF || r.end == UV_ECONNRESET);
}

static void test_bad_clients_are_refused_and_server_keeps_serving(void **state)
{
    (void)state;
    signal(SIGPIPE, SIG_IGN);
    uv_loop_t loop;
    assert_int_equal(uv_loop_init(&loop), 0);
    struct tls_ctx *sctx = make_ctx("node1");
    struct server srv;
    server_start(&srv, &loop, sctx, SERVER_ECHO);
    struct client cl;

    /* No client certificate. */
    struct tls_ctx *nocert = make_ctx(NULL);
    refused_client(&loop, &srv, nocert, &cl);
    assert_logged("event=tls_handshake_failed role=server peer=127.0.0.1:",
                  "reason=\"peer did not return a certificate\"");
    assert_non_null(strstr(cl.close_reason, "alert"));
    tls_ctx_free(nocert);

    /* A certificate from another CA. */
    struct tls_ctx *other = make_ctx_opts("ca", "other", "mallory", 0, false);
    refused_client(&loop, &srv, other, &cl);
    assert_logged("event=tls_handshake_failed role=server",
                  "unable to get local issuer certificate");
    assert_logged("event=tls_handshake_failed role=server", "peer_subject=\"CN=mallory,OU=admin\"");
    assert_non_null(strstr(cl.close_reason, "alert"));
    tls_ctx_free(other);

    /* An expired certificate (the client's own context warns when loading it). */
    log_clear();
    struct tls_ctx *expired = make_ctx("old");
    assert_logged("event=tls_own_certificate_invalid", "certificate has expired");
    refused_client(&loop, &srv, expired, &cl);
    assert_logged("event=tls_handshake_failed role=server",
                  "reason=\"certificate verify failed: certificate has expired\"");
    assert_logged("event=tls_handshake_failed role=server", "peer_subject=\"CN=old,OU=backup\"");
    assert_non_null(strstr(cl.close_reason, "certificate expired"));
    tls_ctx_free(expired);

    /* A plaintext HTTP client, then random bytes. */
    static const char http[] = "GET / HTTP/1.0\r\n\r\n";
    refused_raw(&loop, &srv, http, sizeof http - 1, false);
    assert_logged("event=tls_handshake_failed role=server", "code=HBC_ETLS");
    uint8_t junk[4096];
    srand(7);
    for (size_t i = 0; i < sizeof junk; i++) {
        junk[i] = (uint8_t)rand();
    }
    refused_raw(&loop, &srv, junk, sizeof junk, false);
    assert_logged("event=tls_handshake_failed role=server", "code=HBC_ETLS");
    /* A TLS record header that promises more than it sends, then hangs up. */
    static const uint8_t partial[] = {0x16, 0x03, 0x01, 0x02, 0x00, 0x01};
    refused_raw(&loop, &srv, partial, sizeof partial, true);
    assert_logged("event=tls_handshake_failed role=server", "peer hung up during the handshake");

    /* After all that, a good client is served. */
    static const size_t one[] = {1000};
    struct tls_ctx *cctx = make_ctx("alice");
    memset(&cl, 0, sizeof cl);
    cl.sizes = one;
    cl.n_frames = 1;
    int closed = srv.closed;
    client_start(&cl, &loop, cctx, srv.addr);
    RUN_UNTIL(&loop, cl.close_calls == 1 && srv.closed == closed + 1);
    assert_int_equal(cl.hs_status, 0);
    assert_int_equal(cl.echoed, 1000);
    assert_int_equal(cl.close_status, 0);
    assert_int_equal(srv.hs_ok, 1);

    server_stop(&srv);
    finish_loop(&loop);
    tls_ctx_free(sctx);
    tls_ctx_free(cctx);
}

static void test_stuck_client_times_out(void **state)
{
    (void)state;
    uv_loop_t loop;
    assert_int_equal(uv_loop_init(&loop), 0);
    struct tls_ctx *sctx = make_ctx_opts("ca", "ca", "node1", 200, false);
    struct server srv;
    server_start(&srv, &loop, sctx, SERVER_ECHO);
    log_clear();
    /* Connects and says nothing. */
    refused_raw(&loop, &srv, NULL, 0, false);
    assert_int_equal(srv.last_hs_status, -ETIMEDOUT);
    assert_logged("event=tls_handshake_failed role=server", "handshake timed out after 200 ms");
    server_stop(&srv);
    finish_loop(&loop);
    tls_ctx_free(sctx);
}

static void test_client_refuses_bad_servers(void **state)
{
    (void)state;
    uv_loop_t loop;
    assert_int_equal(uv_loop_init(&loop), 0);
    struct tls_ctx *cctx = make_ctx("alice");

    /* A server whose certificate comes from another CA. */
    struct tls_ctx *evil_ctx = make_ctx_opts("other", "other", "evil", 0, false);
    struct server evil;
    server_start(&evil, &loop, evil_ctx, SERVER_ECHO);
    struct client cl = {0};
    log_clear();
    client_start(&cl, &loop, cctx, evil.addr);
    RUN_UNTIL(&loop, cl.close_calls == 1 && evil.closed == 1);
    assert_int_equal(cl.hs_status, HBC_ETLS);
    assert_int_equal(cl.close_status, HBC_ETLS);
    assert_non_null(strstr(cl.close_reason, "unable to get local issuer certificate"));
    assert_logged("event=tls_handshake_failed role=client", "peer_subject=\"CN=evil,OU=node\"");
    assert_string_equal(cl.cn, "");
    /* The server learnt why from the client's alert. */
    assert_int_equal(evil.hs_failed, 1);
    assert_non_null(strstr(evil.last_close_reason, "alert unknown ca"));
    server_stop(&evil);

    /* A server of our CA whose certificate is for another IP address. */
    struct tls_ctx *far_ctx = make_ctx("far");
    struct server far;
    server_start(&far, &loop, far_ctx, SERVER_ECHO);
    memset(&cl, 0, sizeof cl);
    client_start(&cl, &loop, cctx, far.addr);
    RUN_UNTIL(&loop, cl.close_calls == 1 && far.closed == 1);
    assert_int_equal(cl.hs_status, HBC_ETLS);
    assert_non_null(strstr(cl.close_reason, "IP address mismatch"));

    /* ...which a client told not to check the IP accepts. */
    struct tls_ctx *noip = make_ctx_opts("ca", "ca", "alice", 0, true);
    memset(&cl, 0, sizeof cl);
    cl.close_on_handshake = true;
    client_start(&cl, &loop, noip, far.addr);
    RUN_UNTIL(&loop, cl.close_calls == 1 && far.closed == 2);
    assert_int_equal(cl.hs_status, 0);
    assert_string_equal(cl.cn, "far");
    assert_int_equal(cl.close_status, 0);
    server_stop(&far);

    finish_loop(&loop);
    tls_ctx_free(cctx);
    tls_ctx_free(noip);
    tls_ctx_free(evil_ctx);
    tls_ctx_free(far_ctx);
}

/* Watches the flood: resumes the paused client once the server's progress has stopped. */
struct flood_watch {
    uv_timer_t timer;       /* ticks every few ms */
    struct server *srv;     /* the flooding server */
    struct client *cl;      /* the paused client */
    size_t last_progress;   /* bytes the server's writes had completed at the last tick */
    int still;              /* ticks in a row without progress */
    bool stalled;           /* the server was seen blocked by the client */
    size_t sent_at_stall;   /* bytes it had written then */
    size_t queued_at_stall; /* bytes queued then */
};

static void flood_tick(uv_timer_t *t)
{
    struct flood_watch *w = t->data;
    struct server *srv = w->srv;
    if (srv->flood_conn == NULL) {
        return; /* handshake not done yet */
    }
    size_t queued = tls_conn_queued(srv->flood_conn);
    size_t progress = srv->flood_sent - queued;
    w->still = progress == w->last_progress && queued > 0 ? w->still + 1 : 0;
    w->last_progress = progress;
    bool finished = srv->flood_sent == srv->flood_total && queued == 0;
    if (w->still >= 3 || finished) {
        w->stalled = !finished;
        w->sent_at_stall = srv->flood_sent;
        w->queued_at_stall = queued;
        uv_timer_stop(t);
        assert_int_equal(tls_conn_read_start(w->cl->conn), 0);
    }
}

static void test_backpressure_bounds_queued_bytes(void **state)
{
    (void)state;
    uv_loop_t loop;
    assert_int_equal(uv_loop_init(&loop), 0);
    struct tls_ctx *sctx = make_ctx("node1");
    struct tls_ctx *cctx = make_ctx("alice");
    struct server srv;
    server_start(&srv, &loop, sctx, SERVER_FLOOD);
    srv.flood_total = (size_t)32 << 20;
    srv.flood_limit = (size_t)1 << 20;
    srv.flood_chunk = (size_t)256 << 10;
    srv.flood_buf = malloc(srv.flood_chunk);
    assert_non_null(srv.flood_buf);

    struct client cl = {.pause_on_handshake = true, .flood_expect = srv.flood_total};
    client_start(&cl, &loop, cctx, srv.addr);
    struct flood_watch w = {.srv = &srv, .cl = &cl};
    uv_timer_init(&loop, &w.timer);
    w.timer.data = &w;
    uv_timer_start(&w.timer, flood_tick, 20, 20);

    RUN_UNTIL(&loop, cl.close_calls == 1 && srv.closed == 1);
    uv_close((uv_handle_t *)&w.timer, NULL);

    /* The client's stop held the server up before it had written everything... */
    assert_true(w.stalled);
    assert_true(w.sent_at_stall < srv.flood_total);
    assert_true(w.queued_at_stall > 0);
    /* ...while the bytes queued on its side stayed within its limit plus one write. */
    assert_true(srv.flood_max_queued >= srv.flood_limit);
    assert_true(srv.flood_max_queued <= srv.flood_limit + srv.flood_chunk);
    assert_true(srv.flood_max_uv_queue <= srv.flood_limit + srv.flood_chunk + 65536);
    /* After the client resumed, every byte arrived in order and nothing stayed queued. */
    assert_int_equal(cl.flood_got, srv.flood_total);
    assert_int_equal(cl.flood_bad, 0);
    assert_int_equal(srv.flood_queued_at_close, 0);
    assert_int_equal(cl.close_status, 0);
    assert_int_equal(srv.last_close_status, 0);

    server_stop(&srv);
    finish_loop(&loop);
    free(srv.flood_buf);
    tls_ctx_free(sctx);
    tls_ctx_free(cctx);
}

static void test_stop_and_resume_inside_on_read(void **state)
{
    (void)state;
    uv_loop_t loop;
    assert_int_equal(uv_loop_init(&loop), 0);
    struct tls_ctx *sctx = make_ctx("node1");
    struct tls_ctx *cctx = make_ctx("alice");
    struct server srv;
    server_start(&srv, &loop, sctx, SERVER_FLOOD);
    srv.flood_total = (size_t)3 << 20;
    srv.flood_limit = (size_t)8 << 20;
    srv.flood_chunk = (size_t)1 << 20;
    srv.flood_buf = malloc(srv.flood_chunk);
    assert_non_null(srv.flood_buf);
    uv_timer_t resume;
    uv_timer_init(&loop, &resume);
    struct client cl = {.flood_expect = srv.flood_total, .resume = &resume};
    resume.data = &cl;
    client_start(&cl, &loop, cctx, srv.addr);
    RUN_UNTIL(&loop, cl.close_calls == 1 && srv.closed == 1);
    uv_close((uv_handle_t *)&resume, NULL);

    /* Stopped means stopped, and a restart delivers from the loop, never from inside the call. */
    assert_int_equal(cl.bad_reads, 0);
    assert_true(cl.reads > 1);
    assert_int_equal(cl.flood_got, srv.flood_total);
    assert_int_equal(cl.flood_bad, 0);
    assert_int_equal(cl.close_status, 0);

    server_stop(&srv);
    finish_loop(&loop);
    free(srv.flood_buf);
    tls_ctx_free(sctx);
    tls_ctx_free(cctx);
}

static void test_read_buffer_gets_bytes_in_place(void **state)
{
    (void)state;
    for (int pause = 0; pause < 2; pause++) {
        uv_loop_t loop;
        assert_int_equal(uv_loop_init(&loop), 0);
        struct tls_ctx *sctx = make_ctx("node1");
        struct tls_ctx *cctx = make_ctx("alice");
        struct server srv;
        server_start(&srv, &loop, sctx, SERVER_FLOOD);
        srv.flood_total = (size_t)3 << 20;
        srv.flood_limit = (size_t)8 << 20;
        srv.flood_chunk = (size_t)1 << 20;
        srv.flood_buf = malloc(srv.flood_chunk);
        assert_non_null(srv.flood_buf);
        uv_timer_t resume;
        uv_timer_init(&loop, &resume);
        struct client cl = {.flood_expect = srv.flood_total, .resume = pause ? &resume : NULL};
        cl.into = malloc(srv.flood_total);
        assert_non_null(cl.into);
        resume.data = &cl;
        client_start(&cl, &loop, cctx, srv.addr);
        RUN_UNTIL(&loop, cl.close_calls == 1 && srv.closed == 1);
        uv_close((uv_handle_t *)&resume, NULL);

        /* Every byte arrived, in order, most of them where the application asked. */
        assert_int_equal(cl.flood_got, srv.flood_total);
        assert_int_equal(cl.flood_bad, 0);
        assert_int_equal(cl.bad_reads, 0);
        assert_true(cl.in_place_reads > 0);
        assert_true(cl.in_place_reads < cl.reads); /* and some through TLS's buffer */
        assert_int_equal(cl.misplaced_reads, 0);
        assert_int_equal(cl.close_status, 0);

        server_stop(&srv);
        finish_loop(&loop);
        free(cl.into);
        free(srv.flood_buf);
        tls_ctx_free(sctx);
        tls_ctx_free(cctx);
    }
}

static void copy_file(const char *from, const char *to)
{
    sh("cp '%s' '%s'", from, to);
}

static void test_reload_serves_new_certificate_to_new_connections(void **state)
{
    (void)state;
    uv_loop_t loop;
    assert_int_equal(uv_loop_init(&loop), 0);
    char a[512], b[512];
    copy_file(pki_path(a, sizeof a, "ca", "node1", "crt"),
              pki_path(b, sizeof b, "ca", "live", "crt"));
    copy_file(pki_path(a, sizeof a, "ca", "node1", "key"),
              pki_path(b, sizeof b, "ca", "live", "key"));
    struct tls_ctx *sctx = make_ctx("live");
    struct tls_ctx *cctx = make_ctx("alice");
    struct server srv;
    server_start(&srv, &loop, sctx, SERVER_ECHO);

    /* An old connection, kept open across the reload. */
    struct client old = {0};
    client_start(&old, &loop, cctx, srv.addr);
    RUN_UNTIL(&loop, old.hs_calls == 1 && srv.hs_ok == 1);
    assert_string_equal(old.cn, "node1");

    copy_file(pki_path(a, sizeof a, "ca", "node2", "crt"),
              pki_path(b, sizeof b, "ca", "live", "crt"));
    copy_file(pki_path(a, sizeof a, "ca", "node2", "key"),
              pki_path(b, sizeof b, "ca", "live", "key"));
    struct err e;
    assert_int_equal(tls_ctx_reload(sctx, &e), 0);

    struct client fresh = {.close_on_handshake = true};
    client_start(&fresh, &loop, cctx, srv.addr);
    RUN_UNTIL(&loop, fresh.close_calls == 1 && srv.closed == 1);
    assert_string_equal(fresh.cn, "node2");

    /* A broken file: the reload fails and the last good certificate stays in use. */
    sh("echo garbage > '%s'", pki_path(b, sizeof b, "ca", "live", "key"));
    assert_int_equal(tls_ctx_reload(sctx, &e), HBC_ECONFIG);
    assert_non_null(strstr(e.msg, "live.key"));
    assert_non_null(strstr(e.msg, "keeping the old certificates"));
    struct client third = {.close_on_handshake = true};
    client_start(&third, &loop, cctx, srv.addr);
    RUN_UNTIL(&loop, third.close_calls == 1 && srv.closed == 2);
    assert_string_equal(third.cn, "node2");

    /* The old connection still works. */
    static const size_t one[] = {5000};
    old.sizes = one;
    old.n_frames = 1;
    client_send_frames(&old);
    RUN_UNTIL(&loop, old.close_calls == 1 && srv.closed == 3);
    assert_int_equal(old.echoed, 5000);
    assert_int_equal(old.close_status, 0);

    server_stop(&srv);
    finish_loop(&loop);
    tls_ctx_free(sctx);
    tls_ctx_free(cctx);
}

static int close_order[8]; /* callbacks in the order they fired: 1 handshake, 2 close */
static int close_order_n;  /* entries used */

static void order_on_handshake(struct tls_conn *c, int status)
{
    struct client *cl = tls_conn_data(c);
    cl->hs_calls++;
    cl->hs_status = status;
    close_order[close_order_n++] = 1;
}

static void order_on_close(struct tls_conn *c, int status, const char *reason)
{
    struct client *cl = tls_conn_data(c);
    cl->close_calls++;
    cl->close_status = status;
    snprintf(cl->close_reason, sizeof cl->close_reason, "%s", reason);
    close_order[close_order_n++] = 2;
}

static void test_close_and_errors_call_back_exactly_once(void **state)
{
    (void)state;
    uv_loop_t loop;
    assert_int_equal(uv_loop_init(&loop), 0);
    struct tls_ctx *sctx = make_ctx("node1");
    struct tls_ctx *cctx = make_ctx("alice");
    struct server srv;
    server_start(&srv, &loop, sctx, SERVER_ECHO);
    const struct tls_conn_cbs order_cbs = {.on_handshake = order_on_handshake,
                                           .on_close = order_on_close};
    struct err e;

    /* Not an address: refused at once, no callback. */
    struct tls_conn *c = NULL;
    struct client cl = {0};
    assert_int_equal(tls_connect(&loop, cctx, "localhost:80", &order_cbs, &cl, &c, &e), HBC_EINVAL);
    assert_int_equal(tls_connect(&loop, cctx, "127.0.0.1:0", &order_cbs, &cl, &c, &e), HBC_EINVAL);
    assert_int_equal(tls_connect(&loop, cctx, "127.0.0.1", &order_cbs, &cl, &c, &e), HBC_EINVAL);

    /* Closed by the application before the handshake: canceled, once each, in order. */
    close_order_n = 0;
    assert_int_equal(tls_connect(&loop, cctx, srv.addr, &order_cbs, &cl, &c, &e), 0);
    uv_buf_t b = uv_buf_init("x", 1);
    assert_int_equal(tls_conn_write(c, &b, 1, NULL, NULL, &e), HBC_EINVAL);
    tls_conn_close(c, 0, NULL);
    tls_conn_close(c, 0, NULL);
    assert_int_equal(tls_conn_write(c, &b, 1, NULL, NULL, &e), HBC_ECANCELED);
    assert_int_equal(cl.hs_calls, 0); /* never from inside tls_conn_close */
    RUN_UNTIL(&loop, cl.close_calls == 1);
    assert_int_equal(cl.hs_calls, 1);
    assert_int_equal(cl.hs_status, HBC_ECANCELED);
    assert_int_equal(cl.close_status, HBC_ECANCELED);
    assert_int_equal(close_order_n, 2);
    assert_int_equal(close_order[0], 1);
    assert_int_equal(close_order[1], 2);

    /* Nobody listening: the connect error arrives through the callbacks. */
    uv_tcp_t probe;
    struct sockaddr_in sa;
    assert_int_equal(uv_tcp_init(&loop, &probe), 0);
    assert_int_equal(uv_ip4_addr("127.0.0.1", 0, &sa), 0);
    assert_int_equal(uv_tcp_bind(&probe, (const struct sockaddr *)&sa, 0), 0);
    int len = sizeof sa;
    assert_int_equal(uv_tcp_getsockname(&probe, (struct sockaddr *)&sa, &len), 0);
    char dead[64];
    snprintf(dead, sizeof dead, "127.0.0.1:%u", ntohs(sa.sin_port));
    uv_close((uv_handle_t *)&probe, NULL); /* bound but never listening: connections are refused */
    memset(&cl, 0, sizeof cl);
    close_order_n = 0;
    assert_int_equal(tls_connect(&loop, cctx, dead, &order_cbs, &cl, NULL, &e), 0);
    RUN_UNTIL(&loop, cl.close_calls == 1);
    assert_int_equal(cl.hs_calls, 1);
    assert_int_equal(cl.hs_status, -ECONNREFUSED);
    assert_int_equal(cl.close_status, -ECONNREFUSED);
    assert_int_equal(close_order_n, 2);

    /* Out of memory while creating: an error and no callback. */
    for (long n = 0;; n++) {
        memset(&cl, 0, sizeof cl);
        alloc_fault_after(n);
        int rc = tls_connect(&loop, cctx, srv.addr, &order_cbs, &cl, &c, &e);
        alloc_fault_reset();
        if (rc == 0) {
            tls_conn_close(c, 0, NULL);
            RUN_UNTIL(&loop, cl.close_calls == 1);
            break;
        }
        assert_int_equal(rc, HBC_ENOMEM);
        uv_run(&loop, UV_RUN_NOWAIT);
        assert_int_equal(cl.hs_calls + cl.close_calls, 0);
    }

    /* A malformed frame: the server closes with its own reason; the client sees a clean close. */
    memset(&cl, 0, sizeof cl);
    int closed_ok = srv.closed_ok;
    client_start(&cl, &loop, cctx, srv.addr);
    RUN_UNTIL(&loop, cl.hs_calls == 1);
    static const char zero[4] = {0};
    b = uv_buf_init((char *)zero, sizeof zero);
    assert_int_equal(tls_conn_write(cl.conn, &b, 1, NULL, NULL, &e), 0);
    RUN_UNTIL(&loop, cl.close_calls == 1 && srv.closed_ok == closed_ok + 1);
    assert_int_equal(srv.ok_close_status, HBC_EFORMAT);
    assert_non_null(strstr(srv.ok_close_reason, "zero length"));
    assert_int_equal(cl.close_status, 0);
    assert_string_equal(cl.close_reason, "closed by the peer");

    /* A peer that vanishes without close_notify: the survivor reports truncation. */
    memset(&cl, 0, sizeof cl);
    closed_ok = srv.closed_ok;
    client_start(&cl, &loop, cctx, srv.addr);
    RUN_UNTIL(&loop, cl.hs_calls == 1 && srv.hs_ok == 2);
    close_order_n = 0;
    tls_conn_abort(cl.conn, HBC_EPROTO, "test gives up");
    tls_conn_abort(cl.conn, HBC_EPROTO, "test gives up");
    RUN_UNTIL(&loop, cl.close_calls == 1 && srv.closed_ok == closed_ok + 1);
    assert_int_equal(cl.close_status, HBC_EPROTO);
    assert_string_equal(cl.close_reason, "test gives up");
    assert_true(srv.ok_close_status == -ECONNRESET || srv.ok_close_status == HBC_ETRUNCATED);

    server_stop(&srv);
    finish_loop(&loop);
    tls_ctx_free(sctx);
    tls_ctx_free(cctx);
}

static void test_context_errors(void **state)
{
    (void)state;
    char ca[512], cert[512], key[512];
    struct tls_ctx *ctx = NULL;
    struct err e;
    struct tls_ctx_opts o = {.ca_file = pki_path(ca, sizeof ca, "ca", "ca", "crt"),
                             .cert_file = pki_path(cert, sizeof cert, "ca", "node1", "crt")};
    assert_int_equal(tls_ctx_new(&o, &ctx, &e), HBC_EINVAL);
    assert_null(ctx);

    o.key_file = pki_path(key, sizeof key, "ca", "alice", "key");
    assert_int_equal(tls_ctx_new(&o, &ctx, &e), HBC_ECONFIG);
    assert_non_null(strstr(e.msg, "alice.key"));
    assert_non_null(strstr(e.msg, "mismatch"));

    o.key_file = pki_path(key, sizeof key, "ca", "node1", "key");
    o.ca_file = pki_path(ca, sizeof ca, "ca", "missing", "crt");
    assert_int_equal(tls_ctx_new(&o, &ctx, &e), HBC_ECONFIG);
    assert_non_null(strstr(e.msg, "missing.crt"));

    o.ca_file = pki_path(ca, sizeof ca, "ca", "ca", "crt");
    /* Every allocation failure is reported as such and leaks nothing (ASan checks). */
    long n = 0;
    for (;; n++) {
        alloc_fault_after(n);
        int rc = tls_ctx_new(&o, &ctx, &e);
        alloc_fault_reset();
        if (rc == 0) {
            break;
        }
        assert_int_equal(rc, HBC_ENOMEM);
        assert_null(ctx);
    }
    assert_true(n > 0);
    tls_ctx_free(ctx);
    tls_ctx_free(NULL);
}

int main(void)
{
    signal(SIGPIPE, SIG_IGN); /* the application's job, as libuv expects */
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_mutual_handshake_and_pipelined_echo),
        cmocka_unit_test(test_bad_clients_are_refused_and_server_keeps_serving),
        cmocka_unit_test(test_stuck_client_times_out),
        cmocka_unit_test(test_client_refuses_bad_servers),
        cmocka_unit_test(test_backpressure_bounds_queued_bytes),
        cmocka_unit_test(test_stop_and_resume_inside_on_read),
        cmocka_unit_test(test_read_buffer_gets_bytes_in_place),
        cmocka_unit_test(test_reload_serves_new_certificate_to_new_connections),
        cmocka_unit_test(test_close_and_errors_call_back_exactly_once),
        cmocka_unit_test(test_context_errors),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
