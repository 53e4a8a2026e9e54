/*
 * Unit tests for the TLS Raft transport: the id rule, the preamble and its
 * identity checks, backpressure, connect and close semantics, and three real
 * libraft instances electing a leader and committing entries over it.
 * Everything runs in-process on one loop over 127.0.0.1; certificates come
 * from scripts/dev-ca (found through HBC_SOURCE_DIR) in a temporary directory.
 */
#include <errno.h>
#include <netinet/in.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "tests/unit/test_util.h"
#include <raft.h>
#include <raft/uv.h>
#include <uv.h>

#include "common/alloc.h"
#include "common/log.h"
#include "common/tls.h"
#include "node/raft_id.h"
#include "node/raft_transport.h"

#define MiB ((size_t)1 << 20)

/* ------------------------------------------------------------------------ */
/* Certificates, temporary files and log capture                             */
/* ------------------------------------------------------------------------ */

static char tmp_dir[256]; /* holds ca/ (the cluster CA), users/ (same CA) and raft data */

/* Some log line holds a, b and c (b, c may be NULL). */
static void assert_logged(const char *a, const char *b, const char *c)
{
    for (const char *line = log_lines; *line != '\0';) {
        const char *end = strchr(line, '\n');
        size_t n = end != NULL ? (size_t)(end - line) : strlen(line);
        char buf[4096];
        snprintf(buf, sizeof buf, "%.*s", (int)n, line);
        if (strstr(buf, a) != NULL && (b == NULL || strstr(buf, b) != NULL) &&
            (c == NULL || strstr(buf, c) != NULL)) {
            return;
        }
        line += n + (end != NULL ? 1 : 0);
    }
    fail_msg("no log line with '%s', '%s' and '%s' in:\n%s", a, b != NULL ? b : "",
             c != NULL ? c : "", log_lines);
}

static int group_setup(void **state)
{
    (void)state;
    signal(SIGPIPE, SIG_IGN);
    const char *src = getenv("HBC_SOURCE_DIR");
    if (src == NULL) {
        fprintf(stderr, "HBC_SOURCE_DIR is not set (meson test sets it)\n");
        return -1;
    }
    const char *tmp = getenv("TMPDIR") != NULL ? getenv("TMPDIR") : "/tmp";
    snprintf(tmp_dir, sizeof tmp_dir, "%s/hbc-test-rtrans-XXXXXX", tmp);
    if (mkdtemp(tmp_dir) == NULL) {
        return -1;
    }
    char dev_ca[512];
    snprintf(dev_ca, sizeof dev_ca, "'%s/scripts/dev-ca'", src);
    sh("%s '%s/ca' init >/dev/null", dev_ca, tmp_dir);
    for (int i = 1; i <= 4; i++) {
        sh("%s '%s/ca' node node%d 127.0.0.1 >/dev/null", dev_ca, tmp_dir, i);
    }
    /* A user certificate from the same CA whose CN looks like a node's name. */
    sh("mkdir -p '%s/users' && cp '%s/ca/ca.crt' '%s/ca/ca.key' '%s/users/'", tmp_dir, tmp_dir,
       tmp_dir, tmp_dir);
    sh("%s '%s/users' client node2 --role backup >/dev/null", dev_ca, tmp_dir);
    log_set_sink(log_capture, NULL);
    return 0;
}

static int group_teardown(void **state)
{
    (void)state;
    log_set_sink(NULL, NULL);
    if (tmp_dir[0] != '\0') {
        sh("rm -rf '%s'", tmp_dir);
    }
    return 0;
}

/* A TLS context trusting the cluster CA with <dir>/<name> as our certificate. */
static struct tls_ctx *make_ctx_in(const char *dir, const char *name)
{
    char ca_file[512], cert[512], key[512];
    snprintf(ca_file, sizeof ca_file, "%s/ca/ca.crt", tmp_dir);
    snprintf(cert, sizeof cert, "%s/%s/%s.crt", tmp_dir, dir, name);
    snprintf(key, sizeof key, "%s/%s/%s.key", tmp_dir, dir, name);
    struct tls_ctx_opts o = {.ca_file = ca_file, .cert_file = cert, .key_file = key};
    struct tls_ctx *ctx = NULL;
    struct err e;
    if (tls_ctx_new(&o, &ctx, &e) != 0) {
        fail_msg("tls_ctx_new: %s", e.msg);
    }
    return ctx;
}

static struct tls_ctx *make_ctx(const char *name)
{
    return make_ctx_in("ca", name);
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

/* A TCP port on 127.0.0.1 that nothing listens on right now. */
static int free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(fd >= 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = 0};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(bind(fd, (struct sockaddr *)&sa, sizeof sa), 0);
    socklen_t len = sizeof sa;
    assert_int_equal(getsockname(fd, (struct sockaddr *)&sa, &len), 0);
    close(fd);
    return ntohs(sa.sin_port);
}

static void free_raft_handle(uv_handle_t *h)
{
    raft_free(h);
}

/* ------------------------------------------------------------------------ */
/* The transport alone, driven as libraft drives it                          */
/* ------------------------------------------------------------------------ */

#define FAKE_MAX_ACCEPTED 4

/* One side: a transport with libraft's callbacks replaced by the test's. */
struct fake {
    struct raft_uv_transport t;                /* the transport; t.data = this */
    struct tls_ctx *tls;                       /* its certificate */
    raft_id id;                                /* the id it was initialised with */
    char addr[32];                             /* its address */
    int n_accepted;                            /* accept callbacks */
    raft_id accepted_id[FAKE_MAX_ACCEPTED];    /* their ids */
    char accepted_addr[FAKE_MAX_ACCEPTED][64]; /* their addresses */
    uv_stream_t *accepted[FAKE_MAX_ACCEPTED];  /* their streams, until closed */
    bool closed;                               /* the close callback fired */
    int close_order;                           /* event number of the close callback */
};

static int event_counter; /* orders callbacks across objects */

static void fake_accept_cb(struct raft_uv_transport *t, raft_id id, const char *address,
                           uv_stream_t *stream)
{
    struct fake *f = t->data;
    assert_true(f->n_accepted < FAKE_MAX_ACCEPTED);
    assert_false(f->closed);
    f->accepted_id[f->n_accepted] = id;
    snprintf(f->accepted_addr[f->n_accepted], sizeof f->accepted_addr[0], "%s", address);
    f->accepted[f->n_accepted] = stream;
    f->n_accepted++;
}

static void fake_close_cb(struct raft_uv_transport *t)
{
    struct fake *f = t->data;
    f->closed = true;
    f->close_order = ++event_counter;
}

/* Start f listening with <cert>'s certificate, claiming raft id id, on a free port. */
static void fake_up(struct fake *f, uv_loop_t *loop, const char *cert, raft_id id)
{
    memset(f, 0, sizeof *f);
    f->tls = make_ctx(cert);
    f->id = id;
    snprintf(f->addr, sizeof f->addr, "127.0.0.1:%d", free_port());
    struct err e;
    assert_int_equal(raft_transport_init(&f->t, loop, f->tls, &e), 0);
    f->t.data = f;
    assert_int_equal(f->t.init(&f->t, id, f->addr), 0);
    assert_int_equal(f->t.listen(&f->t, fake_accept_cb), 0);
}

static void fake_down(struct fake *f, uv_loop_t *loop)
{
    for (int i = 0; i < f->n_accepted; i++) {
        if (f->accepted[i] != NULL) {
            uv_close((uv_handle_t *)f->accepted[i], free_raft_handle);
            f->accepted[i] = NULL;
        }
    }
    f->t.close(&f->t, fake_close_cb);
    RUN_UNTIL(loop, f->closed);
    raft_transport_release(&f->t);
    assert_null(f->t.impl);
    tls_ctx_free(f->tls);
}

static struct raft_transport_stats stats_of(struct fake *f)
{
    struct raft_transport_stats s;
    raft_transport_get_stats(&f->t, &s);
    return s;
}

/* One connect request. */
struct dial {
    struct raft_uv_connect req; /* req.data = this */
    bool done;                  /* the callback fired */
    int calls;                  /* how often */
    int status;                 /* its status */
    uv_stream_t *stream;        /* its stream */
    int order;                  /* event number of the callback */
};

static void dial_cb(struct raft_uv_connect *req, uv_stream_t *stream, int status)
{
    struct dial *d = req->data;
    d->done = true;
    d->calls++;
    d->status = status;
    d->stream = stream;
    d->order = ++event_counter;
    assert_true(status == 0 ? stream != NULL : stream == NULL);
}

static void dial(struct fake *f, struct dial *d, raft_id id, const char *addr)
{
    memset(d, 0, sizeof *d);
    d->req.data = d;
    assert_int_equal(f->t.connect(&f->t, &d->req, id, addr, dial_cb), 0);
}

/* Reads a stream the way libraft's receiving side does, checking the flood pattern. */
struct reader {
    uint64_t got;       /* bytes read */
    bool eof;           /* EOF or an error was seen */
    bool bad;           /* a byte did not match */
    char text[64];      /* the first bytes, NUL-terminated */
    uint8_t buf[65536]; /* read buffer */
};

static void reader_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    (void)suggested;
    struct reader *r = h->data;
    *buf = uv_buf_init((char *)r->buf, sizeof r->buf);
}

/* Byte k of the flood: the little-endian bytes of k / 8, so that any slip shows. */
static uint8_t flood_byte(uint64_t k)
{
    return (uint8_t)((k / 8) >> (8 * (k % 8)));
}

static void reader_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf)
{
    struct reader *r = s->data;
    if (n < 0) {
        r->eof = true;
        uv_read_stop(s);
        return;
    }
    for (ssize_t i = 0; i < n; i++) {
        uint64_t k = r->got + (uint64_t)i;
        if (k + 1 < sizeof r->text) {
            r->text[k] = buf->base[i];
        }
        if ((uint8_t)buf->base[i] != flood_byte(k)) {
            r->bad = true;
        }
    }
    r->got += (uint64_t)n;
}

static void reader_start(struct reader *r, uv_stream_t *s)
{
    s->data = r;
    assert_int_equal(uv_read_start(s, reader_alloc, reader_read), 0);
}

/* A write on a libraft-side stream. */
struct wreq {
    uv_write_t req; /* libuv request */
    int *done;      /* incremented by the callback */
    int *failed;    /* idem, when the status is not 0 */
};

static void wreq_cb(uv_write_t *req, int status)
{
    struct wreq *w = (struct wreq *)req;
    (*w->done)++;
    if (status != 0) {
        (*w->failed)++;
    }
    free(w);
}

static void stream_write(uv_stream_t *s, const void *data, size_t n, int *done, int *failed)
{
    struct wreq *w = calloc(1, sizeof *w);
    assert_non_null(w);
    w->done = done;
    w->failed = failed;
    uv_buf_t b = uv_buf_init((char *)data, (unsigned)n);
    assert_int_equal(uv_write(&w->req, s, &b, 1, wreq_cb), 0);
}

/* ------------------------------------------------------------------------ */
/* Tests: the id rule                                                        */
/* ------------------------------------------------------------------------ */

static void test_raft_id_rule(void **state)
{
    (void)state;
    /*
     * Known answers, computed outside C with:
     *   printf 'hbc raft id v1\0NAME' | sha256sum  → first 16 hex digits, top bit cleared
     */
    assert_int_equal(raft_id_from_name("node1"), 9146565120620350843ull);
    assert_int_equal(raft_id_from_name("node2"), 4546155360044415927ull);
    assert_int_equal(raft_id_from_name("node3"), 6945025682470913793ull);
    assert_int_equal(raft_id_from_name("node4"), 7012988581899772890ull);
    assert_int_equal(raft_id_from_name(NULL), 0);
    /* Every id is valid for raft (not 0) and fits 63 bits; names give distinct ids. */
    raft_id seen[200];
    for (int i = 0; i < 200; i++) {
        char name[32];
        snprintf(name, sizeof name, "site%d-node%d", i % 7, i);
        raft_id id = raft_id_from_name(name);
        assert_true(id != 0);
        assert_true(id < (1ull << 63));
        for (int j = 0; j < i; j++) {
            assert_true(seen[j] != id);
        }
        seen[i] = id;
    }
}

/* ------------------------------------------------------------------------ */
/* Tests: the transport alone                                                */
/* ------------------------------------------------------------------------ */

static void test_connect_accept_and_stream_bytes(void **state)
{
    (void)state;
    uv_loop_t loop;
    uv_loop_init(&loop);
    struct fake a, b;
    fake_up(&a, &loop, "node1", raft_id_from_name("node1"));
    fake_up(&b, &loop, "node2", raft_id_from_name("node2"));

    struct dial d;
    dial(&b, &d, a.id, a.addr);
    RUN_UNTIL(&loop, d.done && a.n_accepted == 1);
    assert_int_equal(d.status, 0);
    assert_int_equal(a.accepted_id[0], b.id);
    assert_string_equal(a.accepted_addr[0], b.addr);

    /* libraft writes on the dialled stream and reads the accepted one. */
    struct reader *r = calloc(1, sizeof *r);
    assert_non_null(r);
    reader_start(r, a.accepted[0]);
    uint8_t msg[4096];
    for (size_t k = 0; k < sizeof msg; k++) {
        msg[k] = flood_byte(k);
    }
    int done = 0, failed = 0;
    stream_write(d.stream, msg, sizeof msg, &done, &failed);
    RUN_UNTIL(&loop, r->got == sizeof msg && done == 1);
    assert_false(r->bad);
    assert_int_equal(failed, 0);

    /* libraft closes its dialled stream: the accepted side sees the end. */
    uv_close((uv_handle_t *)d.stream, free_raft_handle);
    RUN_UNTIL(&loop, r->eof);
    assert_int_equal(r->got, sizeof msg);

    struct raft_transport_stats sa = stats_of(&a), sb = stats_of(&b);
    assert_int_equal(sa.accepted, 1);
    assert_int_equal(sa.refused + sa.handshake_failed, 0);
    assert_int_equal(sb.connected, 1);
    assert_int_equal(sb.connect_failed, 0);
    assert_int_equal(d.calls, 1);
    fake_down(&a, &loop);
    fake_down(&b, &loop);
    finish_loop(&loop);
    free(r);
}

static void test_backpressure_bounds_both_directions(void **state)
{
    (void)state;
    uv_loop_t loop;
    uv_loop_init(&loop);
    struct fake a, b;
    fake_up(&a, &loop, "node1", raft_id_from_name("node1"));
    fake_up(&b, &loop, "node2", raft_id_from_name("node2"));
    struct dial d;
    dial(&b, &d, a.id, a.addr);
    RUN_UNTIL(&loop, d.done && a.n_accepted == 1);
    assert_int_equal(d.status, 0);

    /*
     * libraft on b writes 64 MiB while libraft on a reads nothing: a's end of
     * the socketpair fills, then TCP (at most about 36 MiB with Linux's
     * autotuning here), then b's TLS queue. Both connections must stop
     * reading at their bound instead of buffering the rest.
     */
    size_t total = 64 * MiB;
    uint8_t *data = malloc(total);
    assert_non_null(data);
    for (size_t k = 0; k < total; k++) {
        data[k] = flood_byte(k);
    }
    int done = 0, failed = 0;
    int writes = 0;
    for (size_t off = 0; off < total; off += MiB, writes++) {
        stream_write(d.stream, data + off, MiB, &done, &failed);
    }
    /* Without backpressure every write would complete, the transport holding the rest. */
    RUN_UNTIL(&loop,
              (stats_of(&a).backpressure >= 1 && stats_of(&b).backpressure >= 1) || done == writes);
    assert_true(stats_of(&a).backpressure >= 1);
    assert_true(stats_of(&b).backpressure >= 1);
    size_t bound = RAFT_TRANSPORT_QUEUE_MAX + TLS_READ_CHUNK;
    assert_true(stats_of(&a).queued_peak <= bound);
    assert_true(stats_of(&b).queued_peak <= bound);
    assert_true(done < writes); /* libraft's own writes are held back, not ours */

    /* Now libraft on a reads: everything arrives, in order, and every write completes. */
    struct reader *r = calloc(1, sizeof *r);
    assert_non_null(r);
    reader_start(r, a.accepted[0]);
    RUN_UNTIL(&loop, r->got == total && done == writes);
    assert_false(r->bad);
    assert_int_equal(failed, 0);
    assert_true(stats_of(&a).queued_peak <= bound);
    assert_true(stats_of(&b).queued_peak <= bound);
    print_message("backpressure: peak queued a=%llu b=%llu bytes, stops a=%llu b=%llu\n",
                  (unsigned long long)stats_of(&a).queued_peak,
                  (unsigned long long)stats_of(&b).queued_peak,
                  (unsigned long long)stats_of(&a).backpressure,
                  (unsigned long long)stats_of(&b).backpressure);

    uv_close((uv_handle_t *)d.stream, free_raft_handle);
    RUN_UNTIL(&loop, r->eof);
    fake_down(&a, &loop);
    fake_down(&b, &loop);
    finish_loop(&loop);
    free(r);
    free(data);
}

static void test_dialler_refuses_server_with_other_id(void **state)
{
    (void)state;
    log_clear();
    uv_loop_t loop;
    uv_loop_init(&loop);
    struct fake a, b;
    fake_up(&a, &loop, "node1", raft_id_from_name("node1"));
    fake_up(&b, &loop, "node2", raft_id_from_name("node2"));

    /* b believes node3 lives at a's address; a's certificate says node1. */
    raft_id id3 = raft_id_from_name("node3");
    struct dial d;
    dial(&b, &d, id3, a.addr);
    RUN_UNTIL(&loop, d.done);
    assert_int_equal(d.status, RAFT_NOCONNECTION);
    assert_null(d.stream);
    char want[64];
    snprintf(want, sizeof want, "dialled_id=%llu", id3);
    assert_logged("event=raft_peer_refused role=client", want, "cn=node1");
    assert_int_equal(stats_of(&b).connect_failed, 1);
    assert_int_equal(stats_of(&b).connected, 0);

    fake_down(&a, &loop);
    fake_down(&b, &loop);
    assert_int_equal(a.n_accepted, 0);
    assert_int_equal(d.calls, 1);
    finish_loop(&loop);
}

static void test_listener_refuses_certificate_not_naming_claimed_id(void **state)
{
    (void)state;
    log_clear();
    uv_loop_t loop;
    uv_loop_init(&loop);
    struct fake a, impostor;
    fake_up(&a, &loop, "node1", raft_id_from_name("node1"));
    /* node4's certificate, claiming node2's id. */
    raft_id id2 = raft_id_from_name("node2");
    fake_up(&impostor, &loop, "node4", id2);

    struct dial d;
    dial(&impostor, &d, a.id, a.addr);
    RUN_UNTIL(&loop, d.done);
    assert_int_equal(d.status, RAFT_NOCONNECTION);
    assert_int_equal(a.n_accepted, 0);
    assert_int_equal(stats_of(&a).refused, 1);
    char want[64];
    snprintf(want, sizeof want, "claimed_id=%llu cn=node4 reason=", id2);
    assert_logged("event=raft_peer_refused peer=127.0.0.1:", want, "does not name");

    /* A user certificate with CN=node2 from the same CA is not a node certificate. */
    log_clear();
    struct tls_ctx *user = make_ctx_in("users", "node2");
    struct fake u;
    memset(&u, 0, sizeof u);
    u.tls = user;
    snprintf(u.addr, sizeof u.addr, "127.0.0.1:%d", free_port());
    struct err e;
    assert_int_equal(raft_transport_init(&u.t, &loop, user, &e), 0);
    u.t.data = &u;
    assert_int_equal(u.t.init(&u.t, id2, u.addr), 0);
    struct dial du;
    dial(&u, &du, a.id, a.addr);
    RUN_UNTIL(&loop, du.done);
    assert_int_equal(du.status, RAFT_NOCONNECTION);
    assert_int_equal(a.n_accepted, 0);
    assert_int_equal(stats_of(&a).refused, 2);
    assert_logged("event=raft_peer_refused", "cn=node2", "no OU=node");

    fake_down(&a, &loop);
    fake_down(&impostor, &loop);
    fake_down(&u, &loop); /* never listened: closes at once */
    finish_loop(&loop);
}

/* A hand-made client speaking TLS with <cert>, sending one preamble. */
struct raw_tls {
    const uint8_t *send; /* bytes to send after the handshake */
    size_t send_len;     /* how many */
    bool handshake_ok;   /* the handshake succeeded */
    bool closed;         /* on_close fired */
    size_t got;          /* bytes received (the server's reply, if any) */
};

static void raw_tls_handshake(struct tls_conn *c, int status)
{
    struct raw_tls *r = tls_conn_data(c);
    if (status != 0) {
        return;
    }
    r->handshake_ok = true;
    if (r->send_len > 0) {
        uv_buf_t b = uv_buf_init((char *)r->send, (unsigned)r->send_len);
        assert_int_equal(tls_conn_write(c, &b, 1, NULL, NULL, NULL), 0);
    }
}

static void raw_tls_read(struct tls_conn *c, const uint8_t *data, size_t n)
{
    (void)data;
    struct raw_tls *r = tls_conn_data(c);
    r->got += n;
}

static void raw_tls_close(struct tls_conn *c, int status, const char *reason)
{
    (void)status;
    (void)reason;
    struct raw_tls *r = tls_conn_data(c);
    r->closed = true;
}

static size_t make_preamble(uint8_t *p, const char *magic, uint64_t id, size_t alen,
                            const char *addr)
{
    memcpy(p, magic, 8);
    for (int i = 0; i < 8; i++) {
        p[8 + i] = (uint8_t)(id >> (56 - 8 * i));
    }
    p[16] = (uint8_t)(alen >> 8);
    p[17] = (uint8_t)alen;
    size_t n = strlen(addr);
    memcpy(p + 18, addr, n);
    return 18 + n;
}

static void test_listener_refuses_malformed_preambles(void **state)
{
    (void)state;
    uv_loop_t loop;
    uv_loop_init(&loop);
    struct fake a;
    fake_up(&a, &loop, "node1", raft_id_from_name("node1"));
    struct tls_ctx *node2 = make_ctx("node2");
    uint64_t id2 = raft_id_from_name("node2");
    char long_addr[301];
    memset(long_addr, '1', 300);
    long_addr[300] = '\0';

    struct {
        const char *magic;
        uint64_t id;
        size_t alen; /* SIZE_MAX: strlen(addr) */
        const char *addr;
        const char *extra; /* sent after the preamble, or NULL */
        const char *why;   /* expected in the log */
    } cases[] = {
        {"GET / HT", id2, SIZE_MAX, "TP/1.1\r\nHost: x\r\n", NULL, "not a raft preamble"},
        {"HBCRAFT\x02", id2, SIZE_MAX, "127.0.0.1:1", NULL, "unsupported preamble version 2"},
        {RAFT_TRANSPORT_MAGIC, 0, SIZE_MAX, "127.0.0.1:1", NULL, "claims raft id 0"},
        {RAFT_TRANSPORT_MAGIC, id2, 0, "", NULL, "address length out of range"},
        {RAFT_TRANSPORT_MAGIC, id2, SIZE_MAX, long_addr, NULL, "address length out of range"},
        {RAFT_TRANSPORT_MAGIC, id2, SIZE_MAX, "127.0.0.1:1 x", NULL, "characters not allowed"},
        {RAFT_TRANSPORT_MAGIC, id2, SIZE_MAX, "127.0.0.1:1", "early", "data after the preamble"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        log_clear();
        uint8_t buf[512];
        size_t alen = cases[i].alen == SIZE_MAX ? strlen(cases[i].addr) : cases[i].alen;
        size_t n = make_preamble(buf, cases[i].magic, cases[i].id, alen, cases[i].addr);
        if (cases[i].extra != NULL) {
            memcpy(buf + n, cases[i].extra, strlen(cases[i].extra));
            n += strlen(cases[i].extra);
        }
        struct raw_tls r = {.send = buf, .send_len = n};
        struct tls_conn_cbs cbs = {raw_tls_handshake, raw_tls_read, raw_tls_close};
        assert_int_equal(tls_connect(&loop, node2, a.addr, &cbs, &r, NULL, NULL), 0);
        RUN_UNTIL(&loop, r.closed);
        assert_true(r.handshake_ok);
        assert_int_equal(r.got, 0); /* no reply: the server closed */
        assert_int_equal(stats_of(&a).refused, i + 1);
        assert_logged("event=raft_peer_refused", "cn=node2", cases[i].why);
    }
    assert_int_equal(a.n_accepted, 0);
    fake_down(&a, &loop);
    tls_ctx_free(node2);
    finish_loop(&loop);
}

/* A plain TCP client: connects, writes its bytes, reads until the server hangs up. */
struct plain {
    uv_tcp_t tcp;      /* the socket */
    uv_connect_t conn; /* connect request */
    uv_write_t write;  /* its one write */
    uv_buf_t out;      /* what it writes */
    bool ended;        /* EOF or an error */
    bool closed;       /* handle closed */
    char in[4096];     /* read buffer */
};

static void plain_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    (void)suggested;
    struct plain *p = h->data;
    *buf = uv_buf_init(p->in, sizeof p->in);
}

static void plain_closed(uv_handle_t *h)
{
    struct plain *p = h->data;
    p->closed = true;
}

static void plain_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf)
{
    (void)buf;
    struct plain *p = s->data;
    if (n < 0) {
        p->ended = true;
        uv_close((uv_handle_t *)s, plain_closed);
    }
}

static void plain_written(uv_write_t *req, int status)
{
    (void)req;
    (void)status; /* a reset may come first */
}

static void plain_connected(uv_connect_t *req, int status)
{
    struct plain *p = req->data;
    assert_int_equal(status, 0);
    if (p->out.len > 0) {
        assert_int_equal(uv_write(&p->write, (uv_stream_t *)&p->tcp, &p->out, 1, plain_written), 0);
    }
    assert_int_equal(uv_read_start((uv_stream_t *)&p->tcp, plain_alloc, plain_read), 0);
}

static void plain_connect(struct plain *p, uv_loop_t *loop, const char *addr, const void *data,
                          size_t n)
{
    memset(p, 0, sizeof *p);
    char ip[32];
    const char *colon = strrchr(addr, ':');
    snprintf(ip, sizeof ip, "%.*s", (int)(colon - addr), addr);
    struct sockaddr_in sa;
    assert_int_equal(uv_ip4_addr(ip, atoi(colon + 1), &sa), 0);
    uv_tcp_init(loop, &p->tcp);
    p->tcp.data = p;
    p->conn.data = p;
    p->out = uv_buf_init((char *)data, (unsigned)n);
    assert_int_equal(uv_tcp_connect(&p->conn, &p->tcp, (struct sockaddr *)&sa, plain_connected), 0);
}

/* libraft's own TCP handshake, as a plaintext libraft node would send it. */
static size_t libraft_tcp_hello(uint8_t *p, uint64_t id, const char *addr)
{
    /* protocol 1, id, address buffer length (padded to 8), address; little-endian. */
    size_t alen = (strlen(addr) + 1 + 7) / 8 * 8;
    uint64_t words[3] = {1, id, alen};
    for (int w = 0; w < 3; w++) {
        for (int i = 0; i < 8; i++) {
            p[8 * w + i] = (uint8_t)(words[w] >> (8 * i));
        }
    }
    memset(p + 24, 0, alen);
    memcpy(p + 24, addr, strlen(addr));
    return 24 + alen;
}

static void test_plaintext_client_is_refused(void **state)
{
    (void)state;
    log_clear();
    uv_loop_t loop;
    uv_loop_init(&loop);
    struct fake a, b;
    fake_up(&a, &loop, "node1", raft_id_from_name("node1"));
    fake_up(&b, &loop, "node2", raft_id_from_name("node2"));
    uint8_t hello[64];
    size_t n = libraft_tcp_hello(hello, raft_id_from_name("node2"), b.addr);
    struct plain p;
    plain_connect(&p, &loop, a.addr, hello, n);
    RUN_UNTIL(&loop, p.closed && stats_of(&a).handshake_failed == 1);
    assert_true(p.ended);
    assert_int_equal(a.n_accepted, 0);
    assert_logged("event=tls_handshake_failed role=server", NULL, NULL);

    /* The listener still serves real peers. */
    struct dial d;
    dial(&b, &d, a.id, a.addr);
    RUN_UNTIL(&loop, d.done && a.n_accepted == 1);
    assert_int_equal(d.status, 0);
    uv_close((uv_handle_t *)d.stream, free_raft_handle);
    fake_down(&a, &loop);
    fake_down(&b, &loop);
    finish_loop(&loop);
}

static void test_connect_to_dead_address_fails(void **state)
{
    (void)state;
    uv_loop_t loop;
    uv_loop_init(&loop);
    struct fake b;
    fake_up(&b, &loop, "node2", raft_id_from_name("node2"));
    char dead[32];
    snprintf(dead, sizeof dead, "127.0.0.1:%d", free_port());
    struct dial d;
    dial(&b, &d, raft_id_from_name("node1"), dead);
    RUN_UNTIL(&loop, d.done);
    assert_int_equal(d.status, RAFT_NOCONNECTION);
    assert_int_equal(stats_of(&b).connect_failed, 1);

    /* Not an address at all: refused at once, no callback. */
    struct raft_uv_connect req = {0};
    assert_int_equal(b.t.connect(&b.t, &req, raft_id_from_name("node1"), "nowhere", dial_cb),
                     RAFT_NOCONNECTION);
    assert_true(strstr(b.t.errmsg, "nowhere") != NULL);
    fake_down(&b, &loop);
    assert_int_equal(d.calls, 1);
    finish_loop(&loop);
}

/* The resolver of test_resolver_redirects_a_moved_peer: where node1 is now. */
struct moved {
    raft_id id;    /* the peer that moved */
    char addr[32]; /* its address now */
    int asked;     /* times the transport asked */
};

static int moved_resolve(void *arg, raft_id id, char *out, size_t len)
{
    struct moved *m = arg;
    m->asked++;
    if (id != m->id) {
        return 0;
    }
    snprintf(out, len, "%s", m->addr);
    return 1;
}

/*
 * libraft dials a peer at the address it first knew (a dead one, after the
 * peer restarted elsewhere): with a resolver the transport dials where the
 * resolver says; ids the resolver does not know keep libraft's address.
 */
static void test_resolver_redirects_a_moved_peer(void **state)
{
    (void)state;
    uv_loop_t loop;
    uv_loop_init(&loop);
    struct fake a, b;
    fake_up(&a, &loop, "node1", raft_id_from_name("node1"));
    fake_up(&b, &loop, "node2", raft_id_from_name("node2"));
    char dead[32];
    snprintf(dead, sizeof dead, "127.0.0.1:%d", free_port());
    struct moved m = {.id = a.id};
    snprintf(m.addr, sizeof m.addr, "%s", a.addr);
    raft_transport_set_resolver(&b.t, moved_resolve, &m);

    struct dial d;
    dial(&b, &d, a.id, dead);
    RUN_UNTIL(&loop, d.done && a.n_accepted == 1);
    assert_int_equal(d.status, 0);
    assert_int_equal(a.accepted_id[0], b.id);
    assert_int_equal(m.asked, 1);
    uv_close((uv_handle_t *)d.stream, free_raft_handle);

    /* An id the resolver does not know: libraft's (dead) address is dialled. */
    struct dial d2;
    dial(&b, &d2, raft_id_from_name("node3"), dead);
    RUN_UNTIL(&loop, d2.done);
    assert_int_equal(d2.status, RAFT_NOCONNECTION);
    assert_int_equal(m.asked, 2);
    fake_down(&a, &loop);
    fake_down(&b, &loop);
    finish_loop(&loop);
}

/* A TCP listener that accepts and then says nothing. */
struct mute {
    uv_tcp_t listener; /* 127.0.0.1:port */
    uv_tcp_t conn[4];  /* the accepted connections */
    int accepted;      /* how many of conn[] are in use */
    char addr[32];     /* "127.0.0.1:port" */
};

static void mute_on_connection(uv_stream_t *server, int status)
{
    struct mute *m = server->data;
    assert_int_equal(status, 0);
    assert_true(m->accepted < 4);
    uv_tcp_init(server->loop, &m->conn[m->accepted]);
    assert_int_equal(uv_accept(server, (uv_stream_t *)&m->conn[m->accepted]), 0);
    m->accepted++;
}

static void test_close_cancels_pending_connects(void **state)
{
    (void)state;
    uv_loop_t loop;
    uv_loop_init(&loop);
    struct mute m;
    memset(&m, 0, sizeof m);
    uv_tcp_init(&loop, &m.listener);
    m.listener.data = &m;
    struct sockaddr_in sa;
    uv_ip4_addr("127.0.0.1", 0, &sa);
    assert_int_equal(uv_tcp_bind(&m.listener, (struct sockaddr *)&sa, 0), 0);
    assert_int_equal(uv_listen((uv_stream_t *)&m.listener, 4, mute_on_connection), 0);
    int len = sizeof sa;
    uv_tcp_getsockname(&m.listener, (struct sockaddr *)&sa, &len);
    snprintf(m.addr, sizeof m.addr, "127.0.0.1:%d", ntohs(sa.sin_port));

    struct fake b;
    fake_up(&b, &loop, "node2", raft_id_from_name("node2"));
    /* Two connects stuck in their handshakes (the second perhaps still in its TCP connect). */
    struct dial d1, d2;
    dial(&b, &d1, raft_id_from_name("node1"), m.addr);
    RUN_UNTIL(&loop, m.accepted == 1);
    dial(&b, &d2, raft_id_from_name("node3"), m.addr);
    assert_false(d1.done);
    assert_false(d2.done);
    event_counter = 0;
    b.t.close(&b.t, fake_close_cb);
    RUN_UNTIL(&loop, b.closed);
    assert_int_equal(d1.status, RAFT_CANCELED);
    assert_int_equal(d2.status, RAFT_CANCELED);
    assert_int_equal(d1.calls, 1);
    assert_int_equal(d2.calls, 1);
    assert_true(d1.order < b.close_order && d2.order < b.close_order);
    /* After close, connect is refused. */
    struct raft_uv_connect req = {0};
    assert_int_equal(b.t.connect(&b.t, &req, 1, m.addr, dial_cb), RAFT_CANCELED);
    raft_transport_release(&b.t);
    tls_ctx_free(b.tls);
    for (int i = 0; i < m.accepted; i++) {
        uv_close((uv_handle_t *)&m.conn[i], NULL);
    }
    uv_close((uv_handle_t *)&m.listener, NULL);
    finish_loop(&loop);
}

/* A TLS server with node1's certificate that completes handshakes and then says nothing. */
struct mute_tls {
    uv_tcp_t listener;     /* 127.0.0.1:port */
    struct tls_ctx *tls;   /* node1's certificate */
    struct tls_conn *conn; /* the accepted connection, until its on_close */
    char addr[32];         /* "127.0.0.1:port" */
};

static void mute_tls_close(struct tls_conn *c, int status, const char *reason)
{
    (void)status;
    (void)reason;
    struct mute_tls *m = tls_conn_data(c);
    m->conn = NULL;
}

static void mute_tls_on_connection(uv_stream_t *server, int status)
{
    struct mute_tls *m = server->data;
    assert_int_equal(status, 0);
    assert_null(m->conn);
    struct tls_conn_cbs cbs = {NULL, NULL, mute_tls_close};
    assert_int_equal(tls_accept(server, m->tls, &cbs, m, &m->conn, NULL), 0);
}

static void test_preamble_must_come_in_time(void **state)
{
    (void)state;
    log_clear();
    uv_loop_t loop;
    uv_loop_init(&loop);
    struct fake a;
    fake_up(&a, &loop, "node1", raft_id_from_name("node1"));
    raft_transport_set_preamble_timeout(&a.t, 100);

    /* A peer that completes the handshake and never sends its preamble is cut off. */
    struct tls_ctx *node2 = make_ctx("node2");
    struct raw_tls r = {.send = NULL, .send_len = 0};
    struct tls_conn_cbs cbs = {raw_tls_handshake, raw_tls_read, raw_tls_close};
    assert_int_equal(tls_connect(&loop, node2, a.addr, &cbs, &r, NULL, NULL), 0);
    RUN_UNTIL(&loop, r.closed);
    assert_true(r.handshake_ok);
    assert_logged("event=raft_peer_timeout role=server", "no preamble received within 100 ms",
                  NULL);
    assert_int_equal(a.n_accepted, 0);

    /* A server that never answers our preamble: the connect fails. */
    struct mute_tls m;
    memset(&m, 0, sizeof m);
    m.tls = make_ctx("node1");
    uv_tcp_init(&loop, &m.listener);
    m.listener.data = &m;
    struct sockaddr_in sa;
    uv_ip4_addr("127.0.0.1", 0, &sa);
    assert_int_equal(uv_tcp_bind(&m.listener, (struct sockaddr *)&sa, 0), 0);
    assert_int_equal(uv_listen((uv_stream_t *)&m.listener, 4, mute_tls_on_connection), 0);
    int len = sizeof sa;
    uv_tcp_getsockname(&m.listener, (struct sockaddr *)&sa, &len);
    snprintf(m.addr, sizeof m.addr, "127.0.0.1:%d", ntohs(sa.sin_port));
    struct fake b;
    fake_up(&b, &loop, "node2", raft_id_from_name("node2"));
    raft_transport_set_preamble_timeout(&b.t, 100);
    struct dial d;
    dial(&b, &d, raft_id_from_name("node1"), m.addr);
    RUN_UNTIL(&loop, d.done);
    assert_int_equal(d.status, RAFT_NOCONNECTION);
    assert_logged("event=raft_peer_timeout role=client", "no preamble reply within 100 ms", NULL);

    fake_down(&a, &loop);
    fake_down(&b, &loop);
    RUN_UNTIL(&loop, m.conn == NULL); /* b's close_notify ends it */
    uv_close((uv_handle_t *)&m.listener, NULL);
    tls_ctx_free(m.tls);
    tls_ctx_free(node2);
    finish_loop(&loop);
}

static void test_pending_inbound_connections_are_bounded(void **state)
{
    (void)state;
    log_clear();
    uv_loop_t loop;
    uv_loop_init(&loop);
    struct fake a, b;
    fake_up(&a, &loop, "node1", raft_id_from_name("node1"));
    fake_up(&b, &loop, "node2", raft_id_from_name("node2"));

    /* Silent TCP clients hold handshakes open; the one past the bound is closed at once. */
    unsigned n = RAFT_TRANSPORT_PENDING_MAX + 1;
    struct plain *p = calloc(n, sizeof *p);
    assert_non_null(p);
    for (unsigned i = 0; i < n; i++) {
        plain_connect(&p[i], &loop, a.addr, NULL, 0);
    }
    RUN_UNTIL(&loop, stats_of(&a).busy == 1);
    unsigned ended = 0;
    for (;;) {
        ended = 0;
        for (unsigned i = 0; i < n; i++) {
            ended += p[i].closed ? 1u : 0u;
        }
        if (ended > 0) {
            break;
        }
        uv_run(&loop, UV_RUN_ONCE);
    }
    assert_int_equal(ended, 1);
    assert_logged("event=raft_accept_busy", NULL, NULL);

    /* While they hold the slots, a real peer is turned away too... */
    struct dial d;
    dial(&b, &d, a.id, a.addr);
    RUN_UNTIL(&loop, d.done);
    assert_int_equal(d.status, RAFT_NOCONNECTION);
    assert_int_equal(stats_of(&a).busy, 2);

    /* ...and once they are gone it gets through. */
    for (unsigned i = 0; i < n; i++) {
        if (!p[i].closed) {
            uv_close((uv_handle_t *)&p[i].tcp, plain_closed);
        }
    }
    RUN_UNTIL(&loop, stats_of(&a).handshake_failed == RAFT_TRANSPORT_PENDING_MAX);
    dial(&b, &d, a.id, a.addr);
    RUN_UNTIL(&loop, d.done && a.n_accepted == 1);
    assert_int_equal(d.status, 0);
    uv_close((uv_handle_t *)d.stream, free_raft_handle);
    fake_down(&a, &loop);
    fake_down(&b, &loop);
    finish_loop(&loop);
    free(p);
}

/* ------------------------------------------------------------------------ */
/* Real libraft over the transport                                           */
/* ------------------------------------------------------------------------ */

#define CLUSTER 3

/* One libraft server with its transport and a state machine that digests what it applies. */
struct rnode {
    char name[16];              /* node name = certificate CN */
    raft_id id;                 /* Raft id it runs with */
    char addr[32];              /* Raft address */
    char dir[512];              /* data directory */
    struct tls_ctx *tls;        /* its certificate */
    struct raft_uv_transport t; /* our transport */
    struct raft_io io;          /* libraft's uv I/O */
    struct raft_fsm fsm;        /* the state machine; data = this */
    struct raft r;              /* the server; data = this */
    uint64_t applied;           /* entries applied */
    uint64_t digest;            /* FNV-1a over the applied payloads, in order */
    bool closed;                /* raft_close's callback fired */
};

static int fsm_apply(struct raft_fsm *fsm, const struct raft_buffer *buf, void **result)
{
    struct rnode *n = fsm->data;
    uint64_t h = n->digest != 0 ? n->digest : 1469598103934665603ull;
    for (size_t i = 0; i < buf->len; i++) {
        h = (h ^ ((const uint8_t *)buf->base)[i]) * 1099511628211ull;
    }
    n->digest = h;
    n->applied++;
    *result = NULL;
    return 0;
}

static int fsm_snapshot(struct raft_fsm *fsm, struct raft_buffer *bufs[], unsigned *n_bufs)
{
    struct rnode *n = fsm->data;
    *bufs = raft_malloc(sizeof **bufs);
    if (*bufs == NULL) {
        return RAFT_NOMEM;
    }
    (*bufs)[0].len = 16;
    (*bufs)[0].base = raft_malloc(16);
    if ((*bufs)[0].base == NULL) {
        raft_free(*bufs);
        return RAFT_NOMEM;
    }
    memcpy((*bufs)[0].base, &n->applied, 8);
    memcpy((uint8_t *)(*bufs)[0].base + 8, &n->digest, 8);
    *n_bufs = 1;
    return 0;
}

static int fsm_restore(struct raft_fsm *fsm, struct raft_buffer *buf)
{
    struct rnode *n = fsm->data;
    if (buf->len != 16) {
        return RAFT_MALFORMED;
    }
    memcpy(&n->applied, buf->base, 8);
    memcpy(&n->digest, (uint8_t *)buf->base + 8, 8);
    raft_free(buf->base);
    return 0;
}

/*
 * Start n as raft id `id` with <cert>'s certificate, bootstrapped with the
 * configuration ids/addrs (count entries), and the given election timeout.
 */
static void rnode_start(struct rnode *n, uv_loop_t *loop, const char *test, const char *cert,
                        raft_id id, const char *addr, const raft_id *ids, char (*addrs)[32],
                        int count, unsigned election_ms)
{
    memset(n, 0, sizeof *n);
    snprintf(n->name, sizeof n->name, "%s", cert);
    n->id = id;
    snprintf(n->addr, sizeof n->addr, "%s", addr);
    snprintf(n->dir, sizeof n->dir, "%s/%s-%s", tmp_dir, test, cert);
    assert_int_equal(mkdir(n->dir, 0700), 0);
    n->tls = make_ctx(cert);
    struct err e;
    assert_int_equal(raft_transport_init(&n->t, loop, n->tls, &e), 0);
    assert_int_equal(raft_uv_init(&n->io, loop, n->dir, &n->t), 0);
    raft_uv_set_segment_size(&n->io, 256 * 1024);
    raft_uv_set_connect_retry_delay(&n->io, 50);
    n->fsm.version = 1;
    n->fsm.data = n;
    n->fsm.apply = fsm_apply;
    n->fsm.snapshot = fsm_snapshot;
    n->fsm.restore = fsm_restore;
    int rc = raft_init(&n->r, &n->io, &n->fsm, id, addr);
    if (rc != 0) {
        fail_msg("raft_init: %s", raft_errmsg(&n->r));
    }
    n->r.data = n;
    struct raft_configuration conf;
    raft_configuration_init(&conf);
    for (int i = 0; i < count; i++) {
        assert_int_equal(raft_configuration_add(&conf, ids[i], addrs[i], RAFT_VOTER), 0);
    }
    assert_int_equal(raft_bootstrap(&n->r, &conf), 0);
    raft_configuration_close(&conf);
    raft_set_election_timeout(&n->r, election_ms);
    raft_set_heartbeat_timeout(&n->r, election_ms / 10);
    rc = raft_start(&n->r);
    if (rc != 0) {
        fail_msg("raft_start: %s (transport: %s)", raft_errmsg(&n->r), n->t.errmsg);
    }
}

static void rnode_closed(struct raft *r)
{
    struct rnode *n = r->data;
    n->closed = true;
}

/* Nothing appended is still being written: safe to close (libraft 0.15's close crash). */
static bool rnode_quiet(struct rnode *n)
{
    return n->r.last_stored >= raft_last_index(&n->r);
}

static void rnodes_stop(struct rnode *nodes, int count, uv_loop_t *loop)
{
    for (int i = 0; i < count; i++) {
        RUN_UNTIL(loop, rnode_quiet(&nodes[i]));
    }
    for (int i = 0; i < count; i++) {
        raft_close(&nodes[i].r, rnode_closed);
    }
    for (int i = 0; i < count; i++) {
        RUN_UNTIL(loop, nodes[i].closed);
        raft_uv_close(&nodes[i].io);
        raft_transport_release(&nodes[i].t);
        tls_ctx_free(nodes[i].tls);
    }
}

/* A three-node cluster node1..node3. */
struct cluster {
    struct rnode n[CLUSTER]; /* the servers */
    raft_id ids[CLUSTER];    /* their ids */
    char addrs[CLUSTER][32]; /* their addresses */
};

static void cluster_start(struct cluster *c, uv_loop_t *loop, const char *test)
{
    for (int i = 0; i < CLUSTER; i++) {
        char name[16];
        snprintf(name, sizeof name, "node%d", i + 1);
        c->ids[i] = raft_id_from_name(name);
        snprintf(c->addrs[i], sizeof c->addrs[i], "127.0.0.1:%d", free_port());
    }
    for (int i = 0; i < CLUSTER; i++) {
        char name[16];
        snprintf(name, sizeof name, "node%d", i + 1);
        rnode_start(&c->n[i], loop, test, name, c->ids[i], c->addrs[i], c->ids, c->addrs, CLUSTER,
                    1000);
    }
}

static struct rnode *cluster_leader(struct cluster *c, uv_loop_t *loop)
{
    struct rnode *leader = NULL;
    while (leader == NULL) {
        for (int i = 0; i < CLUSTER; i++) {
            if (raft_state(&c->n[i].r) == RAFT_LEADER) {
                leader = &c->n[i];
            }
        }
        if (leader == NULL) {
            uv_run(loop, UV_RUN_ONCE);
        }
    }
    return leader;
}

/* One proposal. */
struct proposal {
    struct raft_apply req; /* req.data = this */
    bool done;             /* the callback fired */
    int status;            /* its status */
};

static void proposal_cb(struct raft_apply *req, int status, void *result)
{
    (void)result;
    struct proposal *p = req->data;
    p->done = true;
    p->status = status;
}

/* Commit count entries through the leader; every node applies them, with the same digest. */
static void cluster_commit(struct cluster *c, uv_loop_t *loop, int count)
{
    struct rnode *leader = cluster_leader(c, loop);
    uint64_t before = leader->applied;
    struct proposal *p = calloc((size_t)count, sizeof *p);
    assert_non_null(p);
    for (int i = 0; i < count; i++) {
        struct raft_buffer buf = {.len = 32, .base = raft_malloc(32)};
        assert_non_null(buf.base);
        memset(buf.base, 0, 32);
        snprintf(buf.base, 32, "entry %llu", (unsigned long long)(before + (uint64_t)i));
        p[i].req.data = &p[i];
        int rc = raft_apply(&leader->r, &p[i].req, &buf, 1, proposal_cb);
        if (rc != 0) {
            raft_free(buf.base);
            fail_msg("raft_apply: %s", raft_strerror(rc));
        }
    }
    for (int i = 0; i < count; i++) {
        RUN_UNTIL(loop, p[i].done);
        assert_int_equal(p[i].status, 0);
    }
    free(p);
    uint64_t want = before + (uint64_t)count;
    for (int i = 0; i < CLUSTER; i++) {
        RUN_UNTIL(loop, c->n[i].applied >= want);
        assert_int_equal(c->n[i].applied, want);
        assert_int_equal(c->n[i].digest, leader->digest);
    }
}

static void test_three_raft_servers_elect_and_commit(void **state)
{
    (void)state;
    uv_loop_t loop;
    uv_loop_init(&loop);
    struct cluster c;
    cluster_start(&c, &loop, "commit");
    cluster_commit(&c, &loop, 100);
    uint64_t accepted = 0;
    for (int i = 0; i < CLUSTER; i++) {
        struct raft_transport_stats s;
        raft_transport_get_stats(&c.n[i].t, &s);
        accepted += s.accepted;
        assert_int_equal(s.refused, 0);
        assert_int_equal(s.handshake_failed, 0);
        assert_int_equal(c.n[i].applied, 100);
    }
    assert_true(accepted >= 2); /* the leader reached both followers over TLS */
    rnodes_stop(c.n, CLUSTER, &loop);
    finish_loop(&loop);
}

static void test_raft_impostor_cannot_reach_the_cluster(void **state)
{
    (void)state;
    log_clear();
    uv_loop_t loop;
    uv_loop_init(&loop);
    struct cluster c;
    cluster_start(&c, &loop, "impostor");
    cluster_commit(&c, &loop, 10);
    struct rnode *leader = cluster_leader(&c, &loop);
    raft_term term = leader->r.current_term;

    /*
     * A fourth server holds node4's certificate but runs as node2's id, in a
     * configuration where "node2" lives at its own address. It campaigns
     * quickly; if its RequestVote reached anyone, their term would rise.
     */
    struct rnode imp;
    raft_id ids[CLUSTER];
    char addrs[CLUSTER][32];
    memcpy(ids, c.ids, sizeof ids);
    memcpy(addrs, c.addrs, sizeof addrs);
    snprintf(addrs[1], sizeof addrs[1], "127.0.0.1:%d", free_port());
    rnode_start(&imp, &loop, "impostor", "node4", c.ids[1], addrs[1], ids, addrs, CLUSTER, 100);
    RUN_UNTIL(&loop, imp.r.current_term >= term + 3);

    struct raft_transport_stats si;
    raft_transport_get_stats(&imp.t, &si);
    assert_int_equal(si.connected, 0);
    assert_true(si.connect_failed >= 2);
    uint64_t refused = 0;
    for (int i = 0; i < CLUSTER; i++) {
        struct raft_transport_stats s;
        raft_transport_get_stats(&c.n[i].t, &s);
        refused += s.refused;
        assert_int_equal(c.n[i].r.current_term, term);
    }
    assert_true(refused >= 2);
    assert_int_equal(raft_state(&leader->r), RAFT_LEADER);
    char want[64];
    snprintf(want, sizeof want, "claimed_id=%llu cn=node4", c.ids[1]);
    assert_logged("event=raft_peer_refused", want, NULL);

    /* The cluster goes on committing. */
    cluster_commit(&c, &loop, 10);
    rnodes_stop(&imp, 1, &loop);
    rnodes_stop(c.n, CLUSTER, &loop);
    finish_loop(&loop);
}

static void test_plaintext_raft_port_is_refused_while_cluster_runs(void **state)
{
    (void)state;
    log_clear();
    uv_loop_t loop;
    uv_loop_init(&loop);
    struct cluster c;
    cluster_start(&c, &loop, "plain");
    cluster_commit(&c, &loop, 10);

    /* libraft's plaintext TCP handshake, and then an AppendEntries-sized blob, at every node. */
    for (int i = 0; i < CLUSTER; i++) {
        uint8_t msg[1024];
        size_t n = libraft_tcp_hello(msg, c.ids[(i + 1) % CLUSTER], c.addrs[(i + 1) % CLUSTER]);
        memset(msg + n, 0xab, sizeof msg - n);
        struct plain p;
        plain_connect(&p, &loop, c.addrs[i], msg, sizeof msg);
        RUN_UNTIL(&loop, p.closed);
        assert_true(p.ended);
        struct raft_transport_stats s;
        RUN_UNTIL(&loop, (raft_transport_get_stats(&c.n[i].t, &s), s.handshake_failed == 1));
    }
    assert_logged("event=tls_handshake_failed role=server", NULL, NULL);
    cluster_commit(&c, &loop, 10);
    rnodes_stop(c.n, CLUSTER, &loop);
    finish_loop(&loop);
}

int main(void)
{
    log_init_from_env();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_raft_id_rule),
        cmocka_unit_test(test_connect_accept_and_stream_bytes),
        cmocka_unit_test(test_backpressure_bounds_both_directions),
        cmocka_unit_test(test_dialler_refuses_server_with_other_id),
        cmocka_unit_test(test_listener_refuses_certificate_not_naming_claimed_id),
        cmocka_unit_test(test_listener_refuses_malformed_preambles),
        cmocka_unit_test(test_plaintext_client_is_refused),
        cmocka_unit_test(test_connect_to_dead_address_fails),
        cmocka_unit_test(test_resolver_redirects_a_moved_peer),
        cmocka_unit_test(test_close_cancels_pending_connects),
        cmocka_unit_test(test_preamble_must_come_in_time),
        cmocka_unit_test(test_pending_inbound_connections_are_bounded),
        cmocka_unit_test(test_three_raft_servers_elect_and_commit),
        cmocka_unit_test(test_raft_impostor_cannot_reach_the_cluster),
        cmocka_unit_test(test_plaintext_raft_port_is_refused_while_cluster_runs),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
