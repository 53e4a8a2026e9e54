/*
 * Mutual TLS 1.3 over libuv TCP, with OpenSSL driven through a memory BIO
 * (reads) and a sink BIO (writes).
 *
 * Happy path: accept or connect → read ciphertext into a per-connection
 * buffer → BIO_write into the read BIO → SSL_do_handshake, then SSL_read
 * into a second buffer → on_read. Writes are encrypted at once by SSL_write
 * straight into one buffer per tls_conn_write() (sink_write), which becomes
 * one uv_write; what SSL writes at other times goes to a memory BIO drained
 * by conn_flush. Close: SSL_shutdown (close_notify), uv_shutdown once
 * queued writes are out, read and discard until the peer hangs up, uv_close
 * on both handles, on_close, free.
 *
 * Failure modes: a failed or stuck handshake (bad certificate, not TLS,
 * timeout) is logged as event=tls_handshake_failed with OpenSSL's reason
 * and closes the connection, after sending the alert when there is one; a
 * TLS error, a read or write error or an EOF without close_notify closes at
 * once; a peer that does not take our data during a graceful close is cut
 * off after close_timeout_ms. Every path ends in the same place
 * (conn_close_handles), so on_close fires exactly once and the memory is
 * freed only from the last handle's close callback.
 */
#include "common/tls.h"

#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include "common/alloc.h"
#include "common/log.h"

/* Plaintext handed to one SSL_write: bounds what the write BIO holds at a time. */
#define TLS_WRITE_PIECE ((size_t)64 << 10)
/* TLS 1.3 record: 5-byte header + content type + 16-byte AEAD tag; rounded up generously. */
#define TLS_RECORD_OVERHEAD 32
#define TLS_RECORD_MAX 16384
/* Room for a failure reason from OpenSSL. */
#define TLS_REASON_LEN 320

struct tls_ctx {
    pthread_mutex_t lock;          /* guards ssl against tls_ctx_reload on another thread */
    SSL_CTX *ssl;                  /* current OpenSSL context; connections hold their own ref */
    char *ca_file;                 /* copied from the options, for reloads */
    char *cert_file;               /* idem; NULL = no certificate */
    char *key_file;                /* idem */
    unsigned handshake_timeout_ms; /* given to each new connection */
    unsigned close_timeout_ms;     /* idem */
    bool no_server_ip_check;       /* client connections skip the IP SAN check */
};

/* Lifecycle; the order matters (comparisons below). */
enum tls_conn_state {
    TLS_CONNECTING,    /* client: TCP connect in flight */
    TLS_HANDSHAKING,   /* TLS handshake in progress */
    TLS_OPEN,          /* established: reads delivered, writes accepted */
    TLS_SHUTTING_DOWN, /* close_notify queued; waiting for writes to drain and the peer's EOF */
    TLS_CLOSING,       /* uv_close called on both handles; waiting for their callbacks */
};

struct tls_conn {
    uv_tcp_t tcp;                  /* the socket; data = this */
    uv_timer_t timer;              /* handshake timeout, close timeout or deferred delivery */
    uv_connect_t connect_req;      /* client connect */
    uv_shutdown_t shutdown_req;    /* graceful close */
    SSL *ssl;                      /* OpenSSL connection; owns rbio and sbio */
    BIO *rbio;                     /* ciphertext from the peer, fed by us */
    BIO *sbio;                     /* what SSL writes to: into *wtarget when set, else wbio */
    BIO *wbio;                     /* ciphertext to the peer outside a write, drained by us */
    struct tls_write **wtarget;    /* the write tls_conn_write() is filling, or NULL */
    enum tls_conn_state state;     /* see enum */
    bool is_client;                /* dialled (true) or accepted */
    bool want_read;                /* the application has not stopped reading */
    bool uv_reading;               /* uv_read_start is in effect */
    bool handshake_reported;       /* on_handshake has fired */
    bool shutdown_done;            /* uv_shutdown completed: our data and FIN are out */
    bool eof_seen;                 /* the peer hung up while we were shutting down */
    bool silent;                   /* creation failed: close without calling back */
    int open_handles;              /* handles initialised and not yet closed */
    size_t queued;                 /* plaintext bytes whose write callback is pending */
    struct tls_conn_cbs cbs;       /* the application's callbacks */
    void *data;                    /* the application's pointer */
    unsigned handshake_timeout_ms; /* from the context */
    unsigned close_timeout_ms;     /* from the context */
    struct err why;                /* status and reason for on_close; code 0 = clean */
    bool why_set;                  /* why holds the first cause */
    char peer_addr[64];            /* "ip:port" */
    char *peer_subject;            /* after the handshake; NULL before */
    char *peer_cn;                 /* idem */
    char bad_subject[256];         /* subject of a certificate that failed verification */
};

/*
 * Buffers for socket reads and decrypted plaintext, one pair per thread and
 * shared by its connections: a read is copied into the connection's read BIO
 * at once, and plaintext is handed to on_read and forgotten before anything
 * else runs on the loop, so no connection needs its own. Allocated with the
 * thread's first connection and freed with its last.
 */
struct tls_scratch {
    uint8_t *rbuf; /* TLS_READ_CHUNK bytes of ciphertext from the socket */
    uint8_t *pbuf; /* TLS_READ_CHUNK bytes of plaintext for on_read */
    size_t users;  /* live connections on this thread */
};

static _Thread_local struct tls_scratch scratch;

static int scratch_get(void)
{
    if (scratch.users == 0) {
        scratch.rbuf = hbc_malloc(2 * TLS_READ_CHUNK);
        if (scratch.rbuf == NULL) {
            return HBC_ENOMEM;
        }
        scratch.pbuf = scratch.rbuf + TLS_READ_CHUNK;
    }
    scratch.users++;
    return 0;
}

static void scratch_put(void)
{
    if (--scratch.users == 0) {
        hbc_free(scratch.rbuf);
        scratch.rbuf = NULL;
        scratch.pbuf = NULL;
    }
}

/* One uv_write of ciphertext, with the buffer inline. */
struct tls_write {
    uv_write_t req;        /* libuv request; data unused */
    struct tls_conn *conn; /* owner */
    size_t plain;          /* plaintext bytes it carries (0 for handshake and alerts) */
    tls_write_cb cb;       /* the application's callback, or NULL */
    void *arg;             /* its argument */
    size_t len;            /* ciphertext bytes in data */
    size_t cap;            /* room at data */
    uint8_t data[];        /* ciphertext */
};

static const char *const empty = "";

/* ------------------------------------------------------------------------ */
/* Small helpers                                                             */
/* ------------------------------------------------------------------------ */

/* Copy src into dst for a key="value" log field: no quotes, no control characters. */
static const char *log_safe(char *dst, size_t n, const char *src)
{
    size_t i = 0;
    for (; src != NULL && src[i] != '\0' && i + 1 < n; i++) {
        char ch = src[i];
        dst[i] = (ch == '"' || (unsigned char)ch < 0x20 || ch == 0x7f) ? '\'' : ch;
    }
    dst[i] = '\0';
    return dst;
}

/* The most telling reason for an OpenSSL failure on c; clears the error queue. */
static void ssl_reason(struct tls_conn *c, int ssl_err, char *buf, size_t n)
{
    unsigned long l = ERR_peek_error();
    const char *r = l != 0 ? ERR_reason_error_string(l) : NULL;
    char raw[160];
    if (l != 0 && r == NULL) {
        ERR_error_string_n(l, raw, sizeof raw);
        r = raw;
    }
    long v = SSL_get_verify_result(c->ssl);
    int k;
    if (v != X509_V_OK) {
        k = snprintf(buf, n, "%s: %s", r != NULL ? r : "certificate verify failed",
                     X509_verify_cert_error_string(v));
    } else if (r != NULL) {
        k = snprintf(buf, n, "%s", r);
    } else if (ssl_err == SSL_ERROR_SYSCALL) {
        k = snprintf(buf, n, "unexpected end of the TLS stream");
    } else {
        k = snprintf(buf, n, "TLS error %d", ssl_err);
    }
    (void)(k < 0 || (size_t)k >= n); /* a cut reason is still a reason */
    ERR_clear_error();
}

/* A name as one line, RFC 2253 escaping, in the certificate's order. NULL on error. */
static char *name_to_string(const X509_NAME *name)
{
    BIO *b = BIO_new(BIO_s_mem());
    if (b == NULL) {
        return NULL;
    }
    char *s = NULL;
    if (X509_NAME_print_ex(b, name, 0, XN_FLAG_RFC2253 & ~XN_FLAG_DN_REV) >= 0) {
        char *p;
        long n = BIO_get_mem_data(b, &p);
        s = hbc_malloc((size_t)n + 1);
        if (s != NULL) {
            memcpy(s, p, (size_t)n);
            s[n] = '\0';
        }
    }
    BIO_free(b);
    return s;
}

/* The UTF-8 value of a name entry; NULL if it cannot be converted or holds a NUL. */
static char *entry_utf8(const X509_NAME_ENTRY *entry)
{
    unsigned char *u = NULL;
    int n = ASN1_STRING_to_UTF8(&u, X509_NAME_ENTRY_get_data(entry));
    if (n < 0) {
        return NULL;
    }
    char *s = NULL;
    if (memchr(u, '\0', (size_t)n) == NULL) {
        s = hbc_malloc((size_t)n + 1);
        if (s != NULL) {
            memcpy(s, u, (size_t)n);
            s[n] = '\0';
        }
    }
    OPENSSL_free(u);
    return s;
}

/* ------------------------------------------------------------------------ */
/* Contexts                                                                  */
/* ------------------------------------------------------------------------ */

/* Remember the subject of the first certificate that fails verification, for the log. */
static int tls_verify_cb(int ok, X509_STORE_CTX *store)
{
    if (ok) {
        return ok;
    }
    SSL *ssl = X509_STORE_CTX_get_ex_data(store, SSL_get_ex_data_X509_STORE_CTX_idx());
    struct tls_conn *c = ssl != NULL ? SSL_get_app_data(ssl) : NULL;
    X509 *cert = X509_STORE_CTX_get_current_cert(store);
    if (c != NULL && cert != NULL && c->bad_subject[0] == '\0') {
        char *s = name_to_string(X509_get_subject_name(cert));
        if (s != NULL) {
            snprintf(c->bad_subject, sizeof c->bad_subject, "%s", s);
            hbc_free(s);
        }
    }
    return ok;
}

/* Warn when our own certificate would not pass the peers' checks. */
static void tls_check_own_cert(SSL_CTX *ssl, const char *cert_file)
{
    X509 *cert = SSL_CTX_get0_certificate(ssl);
    X509_STORE_CTX *vc = X509_STORE_CTX_new();
    if (cert == NULL || vc == NULL) {
        X509_STORE_CTX_free(vc);
        return;
    }
    if (X509_STORE_CTX_init(vc, SSL_CTX_get_cert_store(ssl), cert, NULL) == 1 &&
        X509_verify_cert(vc) != 1) {
        char file[256];
        hbc_log(LOG_WARN, "event=tls_own_certificate_invalid file=\"%s\" reason=\"%s\"",
                log_safe(file, sizeof file, cert_file),
                X509_verify_cert_error_string(X509_STORE_CTX_get_error(vc)));
    }
    X509_STORE_CTX_free(vc);
    ERR_clear_error();
}

/* A new OpenSSL context from ctx's files. */
static int tls_ctx_build(const struct tls_ctx *ctx, SSL_CTX **out, struct err *e)
{
    int rc;
    SSL_CTX *ssl = SSL_CTX_new(TLS_method());
    if (ssl == NULL) {
        return err_openssl(e, HBC_ENOMEM, "tls: new context");
    }
    if (SSL_CTX_set_min_proto_version(ssl, TLS1_3_VERSION) != 1 ||
        SSL_CTX_set_max_proto_version(ssl, TLS1_3_VERSION) != 1) {
        rc = err_openssl(e, HBC_ETLS, "tls: set TLS 1.3");
        goto fail;
    }
    if (SSL_CTX_load_verify_file(ssl, ctx->ca_file) != 1) {
        char what[400];
        snprintf(what, sizeof what, "tls: CA file %s", ctx->ca_file);
        rc = err_openssl(e, HBC_ECONFIG, what);
        goto fail;
    }
    /* Tell clients which CA we accept (helps a client holding several certificates). */
    STACK_OF(X509_NAME) *names = SSL_load_client_CA_file(ctx->ca_file);
    if (names != NULL) {
        SSL_CTX_set_client_CA_list(ssl, names);
    }
    if (ctx->cert_file != NULL) {
        char what[400];
        if (SSL_CTX_use_certificate_chain_file(ssl, ctx->cert_file) != 1) {
            snprintf(what, sizeof what, "tls: certificate file %s", ctx->cert_file);
            rc = err_openssl(e, HBC_ECONFIG, what);
            goto fail;
        }
        if (SSL_CTX_use_PrivateKey_file(ssl, ctx->key_file, SSL_FILETYPE_PEM) != 1) {
            snprintf(what, sizeof what, "tls: key file %s for certificate %s", ctx->key_file,
                     ctx->cert_file);
            rc = err_openssl(e, HBC_ECONFIG, what);
            goto fail;
        }
        if (SSL_CTX_check_private_key(ssl) != 1) {
            snprintf(what, sizeof what, "tls: key %s does not match certificate %s", ctx->key_file,
                     ctx->cert_file);
            rc = err_openssl(e, HBC_ECONFIG, what);
            goto fail;
        }
        tls_check_own_cert(ssl, ctx->cert_file);
    }
    /* Both roles: a server demands a client certificate; a client always checks the server's. */
    SSL_CTX_set_verify(ssl, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, tls_verify_cb);
    SSL_CTX_set_verify_depth(ssl, 4);
    /* No resumption: every connection proves its certificate again. */
    SSL_CTX_set_session_cache_mode(ssl, SSL_SESS_CACHE_OFF);
    SSL_CTX_set_num_tickets(ssl, 0);
    SSL_CTX_set_options(ssl, SSL_OP_NO_TICKET);
    /* Send exactly the chain in cert_file; peers already hold the CA. */
    SSL_CTX_set_mode(ssl, SSL_MODE_NO_AUTO_CHAIN);
    ERR_clear_error();
    *out = ssl;
    return 0;

fail:
    SSL_CTX_free(ssl);
    return rc;
}

void tls_ctx_free(struct tls_ctx *ctx)
{
    if (ctx == NULL) {
        return;
    }
    SSL_CTX_free(ctx->ssl);
    pthread_mutex_destroy(&ctx->lock);
    hbc_free(ctx->ca_file);
    hbc_free(ctx->cert_file);
    hbc_free(ctx->key_file);
    hbc_free(ctx);
}

int tls_ctx_new(const struct tls_ctx_opts *opts, struct tls_ctx **out, struct err *e)
{
    *out = NULL;
    if (opts->ca_file == NULL || (opts->cert_file == NULL) != (opts->key_file == NULL)) {
        return err_set(e, HBC_EINVAL, "tls: a CA file, and a certificate with its key, are needed");
    }
    struct tls_ctx *ctx = hbc_calloc(1, sizeof *ctx);
    if (ctx == NULL) {
        return err_set(e, HBC_ENOMEM, "tls: context");
    }
    if (pthread_mutex_init(&ctx->lock, NULL) != 0) {
        hbc_free(ctx);
        return err_set(e, HBC_ENOMEM, "tls: context lock");
    }
    ctx->handshake_timeout_ms = opts->handshake_timeout_ms != 0 ? opts->handshake_timeout_ms
                                                                : TLS_HANDSHAKE_TIMEOUT_MS_DEFAULT;
    ctx->close_timeout_ms =
        opts->close_timeout_ms != 0 ? opts->close_timeout_ms : TLS_CLOSE_TIMEOUT_MS_DEFAULT;
    ctx->no_server_ip_check = opts->no_server_ip_check;
    ctx->ca_file = hbc_strdup(opts->ca_file);
    if (opts->cert_file != NULL) {
        ctx->cert_file = hbc_strdup(opts->cert_file);
        ctx->key_file = hbc_strdup(opts->key_file);
    }
    if (ctx->ca_file == NULL || (opts->cert_file != NULL && ctx->cert_file == NULL) ||
        (opts->key_file != NULL && ctx->key_file == NULL)) {
        tls_ctx_free(ctx);
        return err_set(e, HBC_ENOMEM, "tls: context");
    }
    int rc = tls_ctx_build(ctx, &ctx->ssl, e);
    if (rc != 0) {
        tls_ctx_free(ctx);
        return rc;
    }
    *out = ctx;
    return 0;
}

int tls_ctx_reload(struct tls_ctx *ctx, struct err *e)
{
    SSL_CTX *fresh;
    int rc = tls_ctx_build(ctx, &fresh, e);
    if (rc != 0) {
        return err_wrap_code(e, rc, "tls: reload (keeping the old certificates)");
    }
    pthread_mutex_lock(&ctx->lock);
    SSL_CTX *old = ctx->ssl;
    ctx->ssl = fresh;
    pthread_mutex_unlock(&ctx->lock);
    SSL_CTX_free(old);
    hbc_log(LOG_INFO, "event=tls_reloaded cert=\"%s\"",
            ctx->cert_file != NULL ? ctx->cert_file : "none");
    return 0;
}

/* ------------------------------------------------------------------------ */
/* Closing                                                                   */
/* ------------------------------------------------------------------------ */

static void conn_free(struct tls_conn *c)
{
    scratch_put();
    SSL_free(c->ssl);
    BIO_free(c->wbio);
    hbc_free(c->peer_subject);
    hbc_free(c->peer_cn);
    hbc_free(c);
}

static void on_handle_closed(uv_handle_t *h)
{
    struct tls_conn *c = h->data;
    if (--c->open_handles > 0) {
        return;
    }
    if (!c->silent) {
        int status = c->why.code;
        if (!c->handshake_reported) {
            c->handshake_reported = true;
            if (c->cbs.on_handshake != NULL) {
                c->cbs.on_handshake(c, status != 0 ? status : HBC_ECANCELED);
            }
        }
        if (c->cbs.on_close != NULL) {
            c->cbs.on_close(c, status, c->why.msg[0] != '\0' ? c->why.msg : "closed");
        }
    }
    conn_free(c);
}

/*
 * The end of every path: close both handles; on_close follows from the last
 * callback. With reset, the peer gets a TCP RST instead of a FIN.
 */
static void conn_close_handles_how(struct tls_conn *c, bool reset)
{
    if (c->state == TLS_CLOSING) {
        return;
    }
    c->state = TLS_CLOSING;
    c->uv_reading = false;
    if (!uv_is_closing((uv_handle_t *)&c->tcp)) {
        /* close_reset refuses while a shutdown is pending: then a plain close does. */
        if (!reset || uv_tcp_close_reset(&c->tcp, on_handle_closed) != 0) {
            uv_close((uv_handle_t *)&c->tcp, on_handle_closed);
        }
    }
    if (!uv_is_closing((uv_handle_t *)&c->timer)) {
        uv_close((uv_handle_t *)&c->timer, on_handle_closed);
    }
}

static void conn_close_handles(struct tls_conn *c)
{
    conn_close_handles_how(c, false);
}

/* Record why the connection ends (for on_close), unless an earlier error already said. */
static void conn_why_set(struct tls_conn *c, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void conn_why_set(struct tls_conn *c, int code, const char *fmt, ...)
{
    if (c->why_set && c->why.code != 0) {
        return;
    }
    c->why_set = true;
    c->why.code = code;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(c->why.msg, sizeof c->why.msg, fmt, ap);
    va_end(ap);
}

static const char *conn_role(const struct tls_conn *c)
{
    return c->is_client ? "client" : "server";
}

static void conn_update_reading(struct tls_conn *c);
static int conn_flush(struct tls_conn *c);
static void on_shutdown(uv_shutdown_t *req, int status);
static void on_timer(uv_timer_t *t);

/*
 * Start the graceful end: send what the write BIO holds (close_notify or an
 * alert), shut down our direction once queued writes are out, and read and
 * discard until the peer hangs up or close_timeout_ms passes. Reading on
 * avoids a reset that could destroy the data (or alert) we just sent.
 */
static void conn_linger(struct tls_conn *c)
{
    c->state = TLS_SHUTTING_DOWN;
    if (conn_flush(c) != 0) {
        return;
    }
    c->shutdown_req.data = c;
    if (uv_shutdown(&c->shutdown_req, (uv_stream_t *)&c->tcp, on_shutdown) != 0) {
        conn_close_handles(c);
        return;
    }
    uv_timer_stop(&c->timer);
    uv_timer_start(&c->timer, on_timer, c->close_timeout_ms, 0);
    conn_update_reading(c);
}

/*
 * The connection failed with code: log it, tell the application (on_handshake
 * if it has not fired), and close. With linger, a pending alert is sent first.
 */
static void conn_fail(struct tls_conn *c, int code, bool linger, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static void conn_fail(struct tls_conn *c, int code, bool linger, const char *fmt, ...)
{
    if (c->state == TLS_CLOSING) {
        return;
    }
    char msg[sizeof c->why.msg];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    conn_why_set(c, code, "%s", msg);
    char reason[sizeof msg];
    log_safe(reason, sizeof reason, msg);
    if (!c->handshake_reported) {
        char subj[sizeof c->bad_subject];
        hbc_log(LOG_WARN, "event=tls_handshake_failed role=%s peer=%s code=%s reason=\"%s\"%s%s%s",
                conn_role(c), c->peer_addr, hbc_errname(code), reason,
                c->bad_subject[0] != '\0' ? " peer_subject=\"" : "",
                log_safe(subj, sizeof subj, c->bad_subject), c->bad_subject[0] != '\0' ? "\"" : "");
    } else {
        hbc_log(LOG_INFO, "event=tls_conn_failed role=%s peer=%s code=%s reason=\"%s\"",
                conn_role(c), c->peer_addr, hbc_errname(code), reason);
    }
    if (linger && c->state <= TLS_OPEN && c->state != TLS_CONNECTING &&
        BIO_ctrl_pending(c->wbio) > 0) {
        conn_linger(c);
    } else {
        conn_close_handles(c);
    }
    if (!c->handshake_reported) {
        c->handshake_reported = true;
        if (c->cbs.on_handshake != NULL) {
            c->cbs.on_handshake(c, code);
        }
    }
}

static void on_shutdown(uv_shutdown_t *req, int status)
{
    struct tls_conn *c = req->data;
    if (c->state != TLS_SHUTTING_DOWN) {
        return;
    }
    c->shutdown_done = true;
    if (status < 0) {
        conn_fail(c, status, false, "shutdown: %s", uv_strerror(status));
    } else if (c->eof_seen) {
        conn_close_handles(c);
    }
}

void tls_conn_close(struct tls_conn *c, int status, const char *reason)
{
    if (c->state >= TLS_SHUTTING_DOWN) {
        return;
    }
    if (c->state != TLS_OPEN) {
        conn_why_set(c, status != 0 ? status : HBC_ECANCELED, "%s",
                     reason != NULL ? reason : "closed before the handshake completed");
        conn_close_handles(c);
        return;
    }
    conn_why_set(c, status, "%s", reason != NULL ? reason : "closed by this side");
    ERR_clear_error();
    SSL_shutdown(c->ssl); /* queues close_notify; we do not wait for the peer's */
    ERR_clear_error();
    conn_linger(c);
}

void tls_conn_abort(struct tls_conn *c, int status, const char *reason)
{
    if (c->state == TLS_CLOSING) {
        return;
    }
    conn_why_set(c, status != 0 || c->state >= TLS_OPEN ? status : HBC_ECANCELED, "%s",
                 reason != NULL ? reason : "aborted by this side");
    conn_close_handles_how(c, c->state != TLS_CONNECTING);
}

/* ------------------------------------------------------------------------ */
/* Writing                                                                   */
/* ------------------------------------------------------------------------ */

/*
 * The BIO that SSL writes ciphertext to. Inside tls_conn_write() the records
 * go straight to the end of the write being built (*wtarget), which becomes
 * the uv_write: one copy of the ciphertext instead of three (into a memory
 * BIO, out of it, into the socket). Anything else SSL writes (handshake,
 * alerts, close_notify) goes to the memory BIO wbio, drained by conn_flush.
 */
static int sink_write(BIO *b, const char *data, int len)
{
    struct tls_conn *c = BIO_get_data(b);
    if (len <= 0) {
        return 0;
    }
    if (c->wtarget == NULL) {
        return BIO_write(c->wbio, data, len);
    }
    struct tls_write *w = *c->wtarget;
    if (w->len + (size_t)len > w->cap) {
        size_t cap = w->len + (size_t)len + TLS_WRITE_PIECE;
        struct tls_write *g = hbc_realloc(w, sizeof *w + cap);
        if (g == NULL) {
            return -1; /* SSL_write fails; the connection is closed */
        }
        g->cap = cap;
        *c->wtarget = w = g;
    }
    memcpy(w->data + w->len, data, (size_t)len);
    w->len += (size_t)len;
    return len;
}

static long sink_ctrl(BIO *b, int cmd, long num, void *ptr)
{
    (void)num;
    (void)ptr;
    struct tls_conn *c = BIO_get_data(b);
    switch (cmd) {
    case BIO_CTRL_FLUSH:
        return 1;
    case BIO_CTRL_PENDING:
    case BIO_CTRL_WPENDING:
        return c != NULL ? (long)BIO_ctrl_pending(c->wbio) : 0;
    default:
        return 0;
    }
}

static int sink_create(BIO *b)
{
    BIO_set_init(b, 1);
    return 1;
}

static BIO_METHOD *sink_method;
static pthread_once_t sink_once = PTHREAD_ONCE_INIT;

static void sink_method_init(void)
{
    BIO_METHOD *m = BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK, "hbc tls sink");
    if (m != NULL &&
        (BIO_meth_set_write(m, sink_write) != 1 || BIO_meth_set_ctrl(m, sink_ctrl) != 1 ||
         BIO_meth_set_create(m, sink_create) != 1)) {
        BIO_meth_free(m);
        m = NULL;
    }
    sink_method = m; /* kept for the process's life */
}

/* A sink BIO writing for c, or NULL. */
static BIO *sink_new(struct tls_conn *c)
{
    pthread_once(&sink_once, sink_method_init);
    BIO *b = sink_method != NULL ? BIO_new(sink_method) : NULL;
    if (b != NULL) {
        BIO_set_data(b, c);
    }
    return b;
}

static void on_write_done(uv_write_t *req, int status)
{
    struct tls_write *w = (struct tls_write *)req;
    struct tls_conn *c = w->conn;
    c->queued -= w->plain;
    if (status < 0 && status != UV_ECANCELED) {
        conn_fail(c, status, false, "write: %s", uv_strerror(status));
    }
    if (w->cb != NULL) {
        w->cb(c, status == UV_ECANCELED ? HBC_ECANCELED : status, w->arg);
    }
    hbc_free(w);
}

/* Move the write BIO's bytes to the end of w, growing w if needed (it is not yet submitted). */
static int write_drain(struct tls_write **wp, BIO *wbio)
{
    struct tls_write *w = *wp;
    size_t pending = BIO_ctrl_pending(wbio);
    if (w->len + pending > w->cap) {
        size_t cap = w->len + pending + TLS_WRITE_PIECE;
        struct tls_write *g = hbc_realloc(w, sizeof *w + cap);
        if (g == NULL) {
            return HBC_ENOMEM;
        }
        g->cap = cap;
        *wp = w = g;
    }
    int n = pending > 0 ? BIO_read(wbio, w->data + w->len, (int)pending) : 0;
    if (n < 0 || (size_t)n != pending) {
        return HBC_ETLS;
    }
    w->len += pending;
    return 0;
}

static struct tls_write *write_new(struct tls_conn *c, size_t cap)
{
    struct tls_write *w = hbc_malloc(sizeof *w + cap);
    if (w != NULL) {
        memset(w, 0, sizeof *w);
        w->conn = c;
        w->cap = cap;
    }
    return w;
}

static int write_submit(struct tls_conn *c, struct tls_write *w)
{
    uv_buf_t b = uv_buf_init((char *)w->data, (unsigned)w->len);
    int rc = uv_write(&w->req, (uv_stream_t *)&c->tcp, &b, 1, on_write_done);
    if (rc != 0) {
        hbc_free(w);
        return rc;
    }
    c->queued += w->plain;
    return 0;
}

/* Send whatever OpenSSL produced (handshake messages, alerts, close_notify). */
static int conn_flush(struct tls_conn *c)
{
    size_t pending = BIO_ctrl_pending(c->wbio);
    if (pending == 0) {
        return 0;
    }
    struct tls_write *w = write_new(c, pending);
    int rc = w != NULL ? write_drain(&w, c->wbio) : HBC_ENOMEM;
    if (rc == 0) {
        rc = write_submit(c, w);
        w = NULL;
    }
    if (rc != 0) {
        hbc_free(w);
        conn_fail(c, rc, false, "sending TLS data: %s", hbc_strerror(rc));
    }
    return rc;
}

int tls_conn_write(struct tls_conn *c, const uv_buf_t *bufs, unsigned nbufs, tls_write_cb cb,
                   void *arg, struct err *e)
{
    if (c->state > TLS_OPEN) {
        return err_set(e, HBC_ECANCELED, "tls write to %s: connection is closing", c->peer_addr);
    }
    if (c->state != TLS_OPEN) {
        return err_set(e, HBC_EINVAL, "tls write to %s: handshake not complete", c->peer_addr);
    }
    size_t total = 0;
    for (unsigned i = 0; i < nbufs; i++) {
        total += bufs[i].len;
        if (bufs[i].len > TLS_WRITE_MAX || total > TLS_WRITE_MAX) {
            return err_set(e, HBC_ETOOBIG, "tls write to %s: over %zu bytes in one call",
                           c->peer_addr, TLS_WRITE_MAX);
        }
    }
    if (total == 0) {
        return err_set(e, HBC_EINVAL, "tls write to %s: nothing to write", c->peer_addr);
    }
    /* Room for every record's overhead, so that the drains below do not reallocate. */
    size_t records = total / TLS_RECORD_MAX + total / TLS_WRITE_PIECE + nbufs + 1;
    size_t cap = BIO_ctrl_pending(c->wbio) + total + records * TLS_RECORD_OVERHEAD;
    struct tls_write *w = write_new(c, cap);
    if (w == NULL) {
        return err_set(e, HBC_ENOMEM, "tls write to %s: %zu bytes", c->peer_addr, cap);
    }
    w->plain = total;
    w->cb = cb;
    w->arg = arg;
    int rc = write_drain(&w, c->wbio);
    c->wtarget = &w; /* SSL_write appends its records to w (sink_write) */
    for (unsigned i = 0; i < nbufs && rc == 0; i++) {
        const char *p = bufs[i].base;
        size_t left = bufs[i].len;
        while (left > 0 && rc == 0) {
            size_t n = left < TLS_WRITE_PIECE ? left : TLS_WRITE_PIECE;
            ERR_clear_error();
            int r = SSL_write(c->ssl, p, (int)n);
            if (r <= 0 || (size_t)r != n) {
                c->wtarget = NULL;
                char reason[TLS_REASON_LEN];
                ssl_reason(c, SSL_get_error(c->ssl, r), reason, sizeof reason);
                hbc_free(w);
                conn_fail(c, HBC_ETLS, false, "encrypt: %s", reason);
                return err_set(e, HBC_ETLS, "tls write to %s: %s", c->peer_addr, reason);
            }
            p += n;
            left -= n;
        }
    }
    c->wtarget = NULL;
    if (rc == 0) {
        rc = write_drain(&w, c->wbio); /* anything SSL wrote outside the records (none expected) */
    }
    if (rc == 0) {
        rc = write_submit(c, w);
        w = NULL;
    }
    if (rc != 0) {
        /* Part of the stream may already be encrypted: it cannot go on. */
        hbc_free(w);
        conn_fail(c, rc, false, "queueing a write: %s", hbc_strerror(rc));
        return err_set(e, rc, "tls write to %s", c->peer_addr);
    }
    return 0;
}

size_t tls_conn_queued(const struct tls_conn *c)
{
    return c->queued;
}

/* ------------------------------------------------------------------------ */
/* Reading                                                                   */
/* ------------------------------------------------------------------------ */

/* Decrypt what the read BIO holds and hand it to the application while it wants it. */
static void conn_deliver(struct tls_conn *c)
{
    while (c->state == TLS_OPEN && c->want_read) {
        size_t n = 0;
        int err = SSL_ERROR_NONE;
        while (n < TLS_READ_CHUNK) {
            ERR_clear_error();
            int r = SSL_read(c->ssl, scratch.pbuf + n, (int)(TLS_READ_CHUNK - n));
            if (r <= 0) {
                err = SSL_get_error(c->ssl, r);
                break;
            }
            n += (size_t)r;
        }
        char reason[TLS_REASON_LEN] = "";
        if (err != SSL_ERROR_NONE && err != SSL_ERROR_WANT_READ && err != SSL_ERROR_ZERO_RETURN) {
            ssl_reason(c, err, reason, sizeof reason);
        }
        /* Reading can make OpenSSL answer (a key update): send that in order. */
        if (conn_flush(c) != 0) {
            return;
        }
        if (n > 0 && c->cbs.on_read != NULL) {
            c->cbs.on_read(c, scratch.pbuf, n);
        }
        if (c->state != TLS_OPEN || err == SSL_ERROR_WANT_READ) {
            return;
        }
        if (err == SSL_ERROR_ZERO_RETURN) {
            tls_conn_close(c, 0, "closed by the peer");
            return;
        }
        if (err != SSL_ERROR_NONE) {
            conn_fail(c, HBC_ETLS, false, "%s", reason);
            return;
        }
    }
}

/* Drive the handshake with what has arrived. */
static void conn_handshake(struct tls_conn *c)
{
    ERR_clear_error();
    int r = SSL_do_handshake(c->ssl);
    int err = r == 1 ? SSL_ERROR_NONE : SSL_get_error(c->ssl, r);
    if (err != SSL_ERROR_NONE && err != SSL_ERROR_WANT_READ) {
        char reason[TLS_REASON_LEN];
        ssl_reason(c, err, reason, sizeof reason);
        conn_fail(c, HBC_ETLS, true, "%s", reason);
        return;
    }
    if (conn_flush(c) != 0 || err == SSL_ERROR_WANT_READ) {
        return;
    }
    X509 *cert = SSL_get0_peer_certificate(c->ssl);
    if (cert == NULL) {
        conn_fail(c, HBC_ETLS, false, "peer presented no certificate");
        return;
    }
    X509_NAME *name = X509_get_subject_name(cert);
    int idx = X509_NAME_get_index_by_NID(name, NID_commonName, -1);
    c->peer_subject = name_to_string(name);
    c->peer_cn = idx >= 0 ? entry_utf8(X509_NAME_get_entry(name, idx)) : NULL;
    if (c->peer_subject == NULL || c->peer_cn == NULL) {
        conn_fail(c, HBC_ETLS, false,
                  "peer certificate has no usable common name (or out of memory)");
        return;
    }
    uv_timer_stop(&c->timer);
    c->state = TLS_OPEN;
    conn_update_reading(c);
    if (log_level_current <= LOG_DEBUG) {
        char subj[256];
        hbc_log(LOG_DEBUG, "event=tls_handshake_ok role=%s peer=%s subject=\"%s\" cipher=%s",
                conn_role(c), c->peer_addr, log_safe(subj, sizeof subj, c->peer_subject),
                SSL_get_cipher_name(c->ssl));
    }
    c->handshake_reported = true;
    if (c->cbs.on_handshake != NULL) {
        c->cbs.on_handshake(c, 0);
    }
    /* Application data may have come in the same read as the handshake's end. */
    conn_deliver(c);
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    (void)suggested;
    (void)h;
    *buf = uv_buf_init((char *)scratch.rbuf, (unsigned)TLS_READ_CHUNK);
}

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    struct tls_conn *c = s->data;
    if (nread == 0) {
        return;
    }
    if (c->state == TLS_SHUTTING_DOWN) {
        /* Discard until the peer hangs up; our own data may still be going out. */
        if (nread == UV_EOF) {
            c->eof_seen = true;
            if (c->shutdown_done) {
                conn_close_handles(c);
            }
        } else if (nread < 0) {
            conn_close_handles(c);
        }
        return;
    }
    if (nread < 0) {
        if (nread != UV_EOF) {
            conn_fail(c, (int)nread, false, "read: %s", uv_strerror((int)nread));
        } else if (c->state == TLS_HANDSHAKING) {
            conn_fail(c, HBC_ETLS, false, "peer hung up during the handshake");
        } else {
            conn_fail(c, HBC_ETRUNCATED, false, "peer hung up without close_notify");
        }
        return;
    }
    if (BIO_write(c->rbio, buf->base, (int)nread) != (int)nread) {
        conn_fail(c, HBC_ENOMEM, false, "buffering %zd received bytes", nread);
        return;
    }
    if (c->state == TLS_HANDSHAKING) {
        conn_handshake(c);
    } else {
        conn_deliver(c);
    }
}

/* Read the socket exactly when someone needs its bytes. */
static void conn_update_reading(struct tls_conn *c)
{
    bool want = c->state == TLS_HANDSHAKING || (c->state == TLS_SHUTTING_DOWN && !c->eof_seen) ||
                (c->state == TLS_OPEN && c->want_read);
    if (want && !c->uv_reading) {
        int rc = uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read);
        if (rc != 0) {
            conn_fail(c, rc, false, "start reading: %s", uv_strerror(rc));
            return;
        }
        c->uv_reading = true;
    } else if (!want && c->uv_reading) {
        uv_read_stop((uv_stream_t *)&c->tcp);
        c->uv_reading = false;
    }
}

int tls_conn_read_stop(struct tls_conn *c)
{
    if (c->state > TLS_OPEN) {
        return HBC_ECANCELED;
    }
    c->want_read = false;
    conn_update_reading(c);
    return 0;
}

int tls_conn_read_start(struct tls_conn *c)
{
    if (c->state > TLS_OPEN) {
        return HBC_ECANCELED;
    }
    if (c->want_read) {
        return 0;
    }
    c->want_read = true;
    conn_update_reading(c);
    if (c->state == TLS_CLOSING) {
        return c->why.code;
    }
    /* Bytes held back while stopped: deliver them from the loop, not from inside this call. */
    if (c->state == TLS_OPEN && (BIO_ctrl_pending(c->rbio) > 0 || SSL_has_pending(c->ssl))) {
        uv_timer_start(&c->timer, on_timer, 0, 0);
    }
    return 0;
}

/* ------------------------------------------------------------------------ */
/* Creating                                                                  */
/* ------------------------------------------------------------------------ */

static void on_timer(uv_timer_t *t)
{
    struct tls_conn *c = t->data;
    switch (c->state) {
    case TLS_CONNECTING:
    case TLS_HANDSHAKING:
        conn_fail(c, -ETIMEDOUT, false, "handshake timed out after %u ms", c->handshake_timeout_ms);
        break;
    case TLS_OPEN:
        conn_deliver(c);
        break;
    case TLS_SHUTTING_DOWN:
        if (!c->shutdown_done) {
            conn_fail(c, -ETIMEDOUT, false,
                      "close timed out after %u ms with %zu bytes not taken by the peer",
                      c->close_timeout_ms, c->queued);
        } else {
            conn_close_handles(c);
        }
        break;
    case TLS_CLOSING:
        break;
    }
}

/* A connection with its SSL object and both handles initialised, in state TLS_CONNECTING. */
static int conn_new(uv_loop_t *loop, struct tls_ctx *ctx, bool is_client,
                    const struct tls_conn_cbs *cbs, void *data, struct tls_conn **out,
                    struct err *e)
{
    struct tls_conn *c = hbc_calloc(1, sizeof *c);
    if (c == NULL) {
        return err_set(e, HBC_ENOMEM, "tls: connection");
    }
    if (scratch_get() != 0) {
        hbc_free(c);
        return err_set(e, HBC_ENOMEM, "tls: read buffers");
    }
    c->is_client = is_client;
    c->want_read = true;
    c->cbs = *cbs;
    c->data = data;
    c->handshake_timeout_ms = ctx->handshake_timeout_ms;
    c->close_timeout_ms = ctx->close_timeout_ms;
    snprintf(c->peer_addr, sizeof c->peer_addr, "?");
    pthread_mutex_lock(&ctx->lock);
    c->ssl = SSL_new(ctx->ssl); /* takes its own reference to the SSL_CTX */
    pthread_mutex_unlock(&ctx->lock);
    c->rbio = BIO_new(BIO_s_mem());
    c->wbio = BIO_new(BIO_s_mem());
    c->sbio = sink_new(c);
    if (c->ssl == NULL || c->rbio == NULL || c->wbio == NULL || c->sbio == NULL) {
        BIO_free(c->rbio);
        BIO_free(c->sbio);
        c->rbio = c->sbio = NULL;
        conn_free(c); /* frees wbio */
        return err_openssl(e, HBC_ENOMEM, "tls: new connection");
    }
    SSL_set_bio(c->ssl, c->rbio, c->sbio);
    SSL_set_app_data(c->ssl, c);
    if (is_client) {
        SSL_set_connect_state(c->ssl);
    } else {
        SSL_set_accept_state(c->ssl);
    }
    int rc = uv_tcp_init(loop, &c->tcp);
    if (rc != 0) {
        conn_free(c);
        return err_set(e, rc, "tls: tcp handle");
    }
    uv_timer_init(loop, &c->timer);
    c->tcp.data = c;
    c->timer.data = c;
    c->open_handles = 2;
    c->state = TLS_CONNECTING;
    *out = c;
    return 0;
}

/* Abandon a connection that never reached the application: no callbacks. */
static void conn_abandon(struct tls_conn *c)
{
    c->silent = true;
    conn_close_handles(c);
}

/* Start the handshake on a connected socket. */
static void conn_start(struct tls_conn *c)
{
    c->state = TLS_HANDSHAKING;
    uv_tcp_nodelay(&c->tcp, 1);
    conn_update_reading(c);
    if (c->state == TLS_HANDSHAKING && c->is_client) {
        conn_handshake(c); /* ClientHello */
    }
}

int tls_accept(uv_stream_t *server, struct tls_ctx *ctx, const struct tls_conn_cbs *cbs, void *data,
               struct tls_conn **out, struct err *e)
{
    struct tls_conn *c;
    int rc = conn_new(server->loop, ctx, false, cbs, data, &c, e);
    if (rc != 0) {
        return rc;
    }
    rc = uv_accept(server, (uv_stream_t *)&c->tcp);
    if (rc != 0) {
        conn_abandon(c);
        return err_set(e, rc, "tls: accept");
    }
    struct sockaddr_storage sa;
    int len = sizeof sa;
    if (uv_tcp_getpeername(&c->tcp, (struct sockaddr *)&sa, &len) == 0) {
        char ip[INET6_ADDRSTRLEN] = "?";
        if (sa.ss_family == AF_INET6) {
            const struct sockaddr_in6 *s6 = (const struct sockaddr_in6 *)&sa;
            uv_ip6_name(s6, ip, sizeof ip);
            snprintf(c->peer_addr, sizeof c->peer_addr, "[%s]:%u", ip, ntohs(s6->sin6_port));
        } else {
            const struct sockaddr_in *s4 = (const struct sockaddr_in *)&sa;
            uv_ip4_name(s4, ip, sizeof ip);
            snprintf(c->peer_addr, sizeof c->peer_addr, "%s:%u", ip, ntohs(s4->sin_port));
        }
    }
    uv_timer_start(&c->timer, on_timer, c->handshake_timeout_ms, 0);
    if (out != NULL) {
        *out = c;
    }
    conn_start(c);
    return 0;
}

static void on_connect(uv_connect_t *req, int status)
{
    struct tls_conn *c = req->data;
    if (c->state != TLS_CONNECTING) {
        return; /* closed meanwhile (status is UV_ECANCELED) */
    }
    if (status < 0) {
        conn_fail(c, status, false, "connect: %s", uv_strerror(status));
        return;
    }
    conn_start(c);
}

/* Split "ip:port" or "[ip]:port" into a socket address and the bare IP. */
static int parse_addr(const char *addr, struct sockaddr_storage *sa, char *ip, size_t iplen)
{
    const char *colon = strrchr(addr, ':');
    if (colon == NULL || colon == addr) {
        return HBC_EINVAL;
    }
    const char *host = addr;
    size_t hlen = (size_t)(colon - addr);
    bool v6 = false;
    if (addr[0] == '[') {
        if (colon[-1] != ']') {
            return HBC_EINVAL;
        }
        host = addr + 1;
        hlen -= 2;
        v6 = true;
    }
    if (hlen == 0 || hlen >= iplen) {
        return HBC_EINVAL;
    }
    memcpy(ip, host, hlen);
    ip[hlen] = '\0';
    char *end;
    errno = 0;
    unsigned long port = strtoul(colon + 1, &end, 10);
    if (colon[1] == '\0' || *end != '\0' || errno != 0 || port == 0 || port > 65535) {
        return HBC_EINVAL;
    }
    if (v6) {
        return uv_ip6_addr(ip, (int)port, (struct sockaddr_in6 *)sa) == 0 ? 0 : HBC_EINVAL;
    }
    return uv_ip4_addr(ip, (int)port, (struct sockaddr_in *)sa) == 0 ? 0 : HBC_EINVAL;
}

int tls_connect(uv_loop_t *loop, struct tls_ctx *ctx, const char *addr,
                const struct tls_conn_cbs *cbs, void *data, struct tls_conn **out, struct err *e)
{
    struct sockaddr_storage sa;
    char ip[INET6_ADDRSTRLEN];
    memset(&sa, 0, sizeof sa);
    if (parse_addr(addr, &sa, ip, sizeof ip) != 0) {
        return err_set(e, HBC_EINVAL, "tls: connect: '%.100s' is not ip:port", addr);
    }
    struct tls_conn *c;
    int rc = conn_new(loop, ctx, true, cbs, data, &c, e);
    if (rc != 0) {
        return rc;
    }
    snprintf(c->peer_addr, sizeof c->peer_addr, "%s", addr);
    if (!ctx->no_server_ip_check &&
        X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(c->ssl), ip) != 1) {
        conn_abandon(c);
        return err_openssl(e, HBC_ETLS, "tls: connect: expected server IP");
    }
    c->connect_req.data = c;
    rc = uv_tcp_connect(&c->connect_req, &c->tcp, (const struct sockaddr *)&sa, on_connect);
    if (rc != 0) {
        conn_abandon(c);
        return err_set(e, rc, "tls: connect to %s", addr);
    }
    uv_timer_start(&c->timer, on_timer, c->handshake_timeout_ms, 0);
    if (out != NULL) {
        *out = c;
    }
    return 0;
}

/* ------------------------------------------------------------------------ */
/* Accessors                                                                 */
/* ------------------------------------------------------------------------ */

void *tls_conn_data(const struct tls_conn *c)
{
    return c->data;
}

void tls_conn_set_data(struct tls_conn *c, void *data)
{
    c->data = data;
}

bool tls_conn_is_open(const struct tls_conn *c)
{
    return c->state == TLS_OPEN;
}

const char *tls_conn_peer_addr(const struct tls_conn *c)
{
    return c->peer_addr;
}

const char *tls_conn_peer_subject(const struct tls_conn *c)
{
    return c->peer_subject != NULL ? c->peer_subject : empty;
}

const char *tls_conn_peer_cn(const struct tls_conn *c)
{
    return c->peer_cn != NULL ? c->peer_cn : empty;
}

X509 *tls_conn_peer_cert(const struct tls_conn *c)
{
    return c->peer_subject != NULL ? SSL_get0_peer_certificate(c->ssl) : NULL;
}

bool tls_conn_peer_has_ou(const struct tls_conn *c, const char *ou)
{
    X509 *cert = tls_conn_peer_cert(c);
    if (cert == NULL) {
        return false;
    }
    X509_NAME *name = X509_get_subject_name(cert);
    bool found = false;
    for (int i = X509_NAME_get_index_by_NID(name, NID_organizationalUnitName, -1); i >= 0 && !found;
         i = X509_NAME_get_index_by_NID(name, NID_organizationalUnitName, i)) {
        char *v = entry_utf8(X509_NAME_get_entry(name, i));
        found = v != NULL && strcmp(v, ou) == 0;
        hbc_free(v);
    }
    return found;
}

uv_tcp_t *tls_conn_tcp(struct tls_conn *c)
{
    return &c->tcp;
}
