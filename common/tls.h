/* Mutual TLS 1.3 over libuv TCP (OpenSSL through BIOs of our own): contexts and connections. */
#ifndef HBC_COMMON_TLS_H
#define HBC_COMMON_TLS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <openssl/types.h>
#include <uv.h>

#include "common/err.h"

/*
 * Both sides of every connection present a certificate issued by the one
 * cluster CA, and both check the other's: a server refuses a client without
 * a certificate, with an expired one or with one from another CA, and a
 * client refuses such a server (and, by default, one whose certificate does
 * not list the IP address it dialled). Only TLS 1.3 is spoken.
 *
 * Threads: a tls_ctx may be shared by several loop threads (its functions
 * lock); a tls_conn belongs to the thread running its loop, and every
 * tls_conn_* function must be called there.
 *
 * Memory per connection: about 1 KiB of our own, OpenSSL's connection
 * state and record buffers (some 50 KiB), and whatever the application has
 * written and the peer has not yet taken; the buffers for socket reads and
 * decrypted data (2 x TLS_READ_CHUNK) are shared by all connections of a
 * thread. A server should still cap its number of connections. That last part is the
 * caller's to bound: tls_conn_queued() reports it, and a writer should stop
 * above its own limit and go on from its write callbacks. Reading is bounded
 * by construction: at most one TLS_READ_CHUNK of ciphertext is taken from
 * the socket before it is decrypted and handed on, and tls_conn_read_stop()
 * stops taking any (the peer's writes then back up in TCP).
 */

/* Bytes read from the socket at a time, and the most plaintext one on_read carries from TLS's
 * buffer. */
#define TLS_READ_CHUNK ((size_t)64 << 10)
/* The most plaintext one tls_conn_write() takes (it becomes one socket write). */
#define TLS_WRITE_MAX ((size_t)1 << 30)
/* Default handshake timeout (TCP connect included, for a client). */
#define TLS_HANDSHAKE_TIMEOUT_MS_DEFAULT 10000u
/* Default time a graceful close waits for queued data to go out and the peer to hang up. */
#define TLS_CLOSE_TIMEOUT_MS_DEFAULT 5000u

/* How to build a context; the strings are copied. */
struct tls_ctx_opts {
    const char *ca_file;           /* PEM: the cluster CA, the only issuer peers may have */
    const char *cert_file;         /* PEM: this side's certificate (chain); NULL = none (tests) */
    const char *key_file;          /* PEM: its private key; NULL exactly when cert_file is */
    unsigned handshake_timeout_ms; /* 0 = TLS_HANDSHAKE_TIMEOUT_MS_DEFAULT */
    unsigned close_timeout_ms;     /* 0 = TLS_CLOSE_TIMEOUT_MS_DEFAULT */
    bool no_server_ip_check;       /* client: accept a server certificate without our IP */
};

/* A TLS configuration (OpenSSL SSL_CTX) for both roles: accept and connect. */
struct tls_ctx;

/*
 * Load the CA, certificate and key named in opts (borrowed) into a new
 * context *out. The same context serves accepted and dialled connections.
 * A certificate that is expired, not yet valid or not issued by the CA is
 * loaded anyway (peers will refuse it) with a warning logged
 * (event=tls_own_certificate_invalid). Returns 0, HBC_EINVAL (bad options),
 * HBC_ECONFIG (a file cannot be read or parsed, or the key does not match
 * the certificate; the message names the file and OpenSSL's reason) or
 * HBC_ENOMEM. Any thread.
 */
int tls_ctx_new(const struct tls_ctx_opts *opts, struct tls_ctx **out, struct err *e);

/*
 * Build a fresh SSL_CTX from the same files (after they were replaced, e.g.
 * on SIGHUP) and use it for connections created from now on; established
 * connections keep the old one until they close. On error the old context
 * stays in use and the codes are those of tls_ctx_new(). Any thread.
 */
int tls_ctx_reload(struct tls_ctx *ctx, struct err *e);

/*
 * Free ctx. Established connections are unaffected (each holds its own
 * reference to OpenSSL's context); no connection may be created from ctx
 * afterwards. NULL is a no-op.
 */
void tls_ctx_free(struct tls_ctx *ctx);

/* One TLS connection on a uv_tcp_t that it owns. */
struct tls_conn;

/*
 * The application's callbacks; each may be NULL. For every connection that
 * tls_accept() or tls_connect() created (returned 0):
 * - on_handshake fires exactly once: status 0 when the handshake succeeded
 *   and the peer's identity is available, otherwise the failure (see the
 *   codes below) just before the connection closes. If the application
 *   closes it first, status is HBC_ECANCELED, fired just before on_close.
 *   TLS 1.3 lets a client finish before the server has checked the client's
 *   certificate: a refused client sees status 0 and then on_close with the
 *   server's alert as the reason (e.g. "tlsv13 alert certificate required").
 * - on_read(c, data, len) delivers plaintext, only after a successful
 *   handshake and while reading is not stopped. data is borrowed until the
 *   callback returns; len is 1..TLS_READ_CHUNK, or up to the room the
 *   application gave (tls_conn_set_read_buffer()).
 * - on_close fires exactly once, last, after the socket is closed; the
 *   connection is freed when it returns. status 0 means a clean close by
 *   either side (close_notify); reason is a human-readable explanation,
 *   never NULL. Codes: HBC_ETLS (handshake or protocol failure: bad
 *   certificate, not TLS, an alert from the peer), HBC_ETRUNCATED (the peer
 *   hung up without close_notify), -ETIMEDOUT (handshake or close timeout),
 *   HBC_ECANCELED, HBC_ENOMEM, -errno from connect/read/write (e.g.
 *   -ECONNREFUSED, -ECONNRESET), or what the application gave tls_conn_close().
 * Every callback may call any tls_conn_* function on c, tls_conn_close()
 * included.
 */
struct tls_conn_cbs {
    void (*on_handshake)(struct tls_conn *c, int status);                 /* handshake outcome */
    void (*on_read)(struct tls_conn *c, const uint8_t *data, size_t n);   /* plaintext arrived */
    void (*on_close)(struct tls_conn *c, int status, const char *reason); /* closed; freed next */
};

/*
 * Accept a pending connection on the listening server (call it from the
 * uv_listen callback) and start the server side of the handshake. cbs is
 * copied; data is the application's pointer (tls_conn_data()). On success
 * *out (may be NULL) is the connection and the callbacks will fire. Returns
 * 0, -errno from uv_accept (nothing to accept) or HBC_ENOMEM/HBC_ETLS; on
 * error no callback fires. Loop thread.
 */
int tls_accept(uv_stream_t *server, struct tls_ctx *ctx, const struct tls_conn_cbs *cbs, void *data,
               struct tls_conn **out, struct err *e);

/*
 * Connect to addr ("a.b.c.d:port" or "[v6]:port", borrowed) on loop and run
 * the client side of the handshake; the handshake timeout covers the TCP
 * connect too. Unless the context says otherwise, the server's certificate
 * must list that IP address in its subjectAltName. Returns 0 (callbacks
 * will fire; a refused or failed connect arrives as on_handshake(-errno)),
 * HBC_EINVAL (addr is not an IP address and port), -errno from
 * uv_tcp_connect, or HBC_ENOMEM/HBC_ETLS; on error no callback fires. Loop
 * thread.
 */
int tls_connect(uv_loop_t *loop, struct tls_ctx *ctx, const char *addr,
                const struct tls_conn_cbs *cbs, void *data, struct tls_conn **out, struct err *e);

/* Called once per tls_conn_write() that returned 0: status 0 when the data went to the kernel. */
typedef void (*tls_write_cb)(struct tls_conn *c, int status, void *arg);

/*
 * Encrypt the plaintext in bufs[0..nbufs) now and queue it for sending, as
 * one socket write of coalesced TLS records. The buffers are borrowed for
 * the duration of the call only: the caller may reuse them at once. cb
 * (may be NULL) fires once, with 0 when the data was handed to the kernel,
 * HBC_ECANCELED if the connection closed first, or the write error; never
 * from inside this call. The bytes count in tls_conn_queued() until then.
 * Returns 0, HBC_EINVAL (nothing to write, or the handshake has not
 * completed), HBC_ETOOBIG (over TLS_WRITE_MAX), HBC_ECANCELED (the connection is closing),
 * HBC_ENOMEM or HBC_ETLS; on error cb does not fire and, for the last two, the connection is being
 * closed. Loop thread.
 */
int tls_conn_write(struct tls_conn *c, const uv_buf_t *bufs, unsigned nbufs, tls_write_cb cb,
                   void *arg, struct err *e);

/*
 * Where the application wants the next plaintext decrypted: a buffer of its
 * own and the bytes it may take there (*room), or NULL for TLS's buffer.
 * See tls_conn_set_read_buffer().
 */
typedef uint8_t *(*tls_read_buffer_fn)(struct tls_conn *c, size_t *room);

/*
 * Decrypt straight into the application's buffers (no copy through TLS's
 * own): before each batch of decryption while reading, fn(c, &room) is
 * asked for a destination; when it returns one (room > 0), plaintext is
 * decrypted there, at most room bytes, and on_read then gets data pointing
 * at that buffer (the bytes are in place: on_read must not copy them onto
 * themselves). When it returns NULL, plaintext goes to TLS's buffer as
 * without fn. The buffer must stay valid until that on_read returns (or, if
 * nothing arrives, until fn is next asked). fn NULL turns it off. Loop thread.
 */
void tls_conn_set_read_buffer(struct tls_conn *c, tls_read_buffer_fn fn);

/* Plaintext bytes accepted by tls_conn_write() whose write callback has not fired yet. */
size_t tls_conn_queued(const struct tls_conn *c);

/*
 * Stop delivering plaintext (and reading the socket) until
 * tls_conn_read_start(): the backpressure tool of a slow application. Takes
 * effect at once, also inside on_read. Returns 0 or HBC_ECANCELED (closing).
 */
int tls_conn_read_stop(struct tls_conn *c);

/*
 * Deliver plaintext again. Data already decrypted or received is delivered
 * from the loop soon after, never from inside this call. Returns 0,
 * HBC_ECANCELED (closing) or -errno from uv_read_start.
 */
int tls_conn_read_start(struct tls_conn *c);

/*
 * Close c. After a completed handshake the close is graceful: queued writes
 * go out, then close_notify and a TCP shutdown, then the connection waits
 * (at most close_timeout_ms) for the peer to hang up, discarding what it
 * still sends. Earlier, it closes at once and on_handshake gets
 * HBC_ECANCELED. status and reason (may be NULL; copied) are handed to
 * on_close: 0 for a normal close, or the application's error code (e.g.
 * HBC_EFORMAT after a malformed frame) so that one place logs why.
 * Writing is refused from now on. A second call does nothing. Loop thread.
 */
void tls_conn_close(struct tls_conn *c, int status, const char *reason);

/*
 * Close c at once, without close_notify and with a TCP reset: queued writes
 * are dropped (their callbacks get HBC_ECANCELED). For peers that are not
 * worth a graceful goodbye (abuse, shutdown of a node). status and reason
 * as for tls_conn_close(); on_handshake (if not yet fired) gets status, or
 * HBC_ECANCELED when status is 0. Does nothing once closing has finished
 * the socket. Loop thread.
 */
void tls_conn_abort(struct tls_conn *c, int status, const char *reason);

/* The application pointer given at creation or by tls_conn_set_data(). */
void *tls_conn_data(const struct tls_conn *c);
void tls_conn_set_data(struct tls_conn *c, void *data);

/* True once the handshake succeeded and until closing starts: writes are accepted. */
bool tls_conn_is_open(const struct tls_conn *c);

/* The peer's address, "a.b.c.d:port" or "[v6]:port"; never NULL. */
const char *tls_conn_peer_addr(const struct tls_conn *c);

/*
 * The verified peer's identity, valid after a successful handshake until
 * on_close returns ("" before):
 * - subject: the whole subject on one line, RFC 2253 escaping in the
 *   certificate's order, e.g. "CN=alice,OU=backup";
 * - cn: the common name (the node's name or the user), UTF-8. A peer
 *   certificate without one, or with a NUL byte in it, is refused.
 */
const char *tls_conn_peer_subject(const struct tls_conn *c);
const char *tls_conn_peer_cn(const struct tls_conn *c);

/* True if the peer's subject holds an OU equal to ou (how certificates carry roles). */
bool tls_conn_peer_has_ou(const struct tls_conn *c, const char *ou);

/* The peer's certificate, borrowed (NULL before the handshake): for checks beyond the above. */
X509 *tls_conn_peer_cert(const struct tls_conn *c);

/*
 * The TCP handle, for socket options (uv_send_buffer_size, keepalive). Do
 * not read, write or close it directly.
 */
uv_tcp_t *tls_conn_tcp(struct tls_conn *c);

#endif /* HBC_COMMON_TLS_H */
