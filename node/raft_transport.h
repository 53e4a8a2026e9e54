/* libraft's connections over mutual TLS 1.3: a custom struct raft_uv_transport. */
#ifndef HBC_NODE_RAFT_TRANSPORT_H
#define HBC_NODE_RAFT_TRANSPORT_H

#include <stdint.h>

#include <raft.h>
#include <raft/uv.h>
#include <uv.h>

#include "common/err.h"
#include "common/tls.h"
#include "node/raft_id.h"

/*
 * Every Raft connection is a TLS 1.3 connection (common/tls.h) with the
 * cluster's certificates; there is no plaintext Raft port. libraft gets, in
 * place of a TCP handle, one end of a socketpair(AF_UNIX) wrapped in a
 * raft_malloc()'ed uv_pipe_t; the transport pumps bytes between the other
 * end and the TLS connection, with bounded queues both ways.
 *
 * Identity (raft_id.h): a node's certificate has CN = its name and OU = node,
 * and its Raft id is raft_id_from_name(name).
 * - The dialling side (connect) checks, after the handshake, that the server
 *   it reached holds a node certificate whose id is the id it dialled;
 *   otherwise the connect fails with RAFT_NOCONNECTION and
 *   event=raft_peer_refused role=client ... is logged.
 * - The listening side reads the preamble and accepts the connection only if
 *   the peer holds a node certificate whose id equals the id the preamble
 *   claims; otherwise it closes it and logs
 *   event=raft_peer_refused peer=ADDR claimed_id=N cn=NAME reason="...".
 * (tls.h also requires the server's certificate to list the IP it was dialled at.)
 *
 * Preamble (version 1), after the TLS handshake, all integers big-endian:
 *   client -> server: 8 bytes magic "HBCRAFT" + version byte 0x01,
 *                     8 bytes the client's Raft id,
 *                     2 bytes address length L (1..RAFT_TRANSPORT_ADDR_MAX),
 *                     L bytes the client's Raft address ("a.b.c.d:port", no NUL);
 *   server -> client: the same 8 magic bytes, once the client is accepted.
 * The dialling side hands libraft its stream only after that reply, so a
 * refused client sees RAFT_NOCONNECTION (and retries) instead of a stream
 * that dies at the first write. libraft's own TCP transport sends
 * (protocol, id, address) little-endian in the clear; this is not
 * compatible with it, on purpose.
 *
 * Bounds: each connection holds at most about RAFT_TRANSPORT_QUEUE_MAX bytes
 * towards TLS (then it stops reading libraft's stream; libraft's writes wait
 * in its own stream) and about as much towards libraft (then it stops
 * reading TLS; the peer's writes back up in TCP). At most
 * RAFT_TRANSPORT_PENDING_MAX inbound connections may be in their handshake
 * or preamble at a time; more are closed at once. The preamble exchange must
 * end within RAFT_TRANSPORT_PREAMBLE_TIMEOUT_MS of the handshake's end
 * (event=raft_peer_timeout; a dialled connection then fails with
 * RAFT_NOCONNECTION). Per connection the transport itself holds a 64 KiB
 * read buffer besides the queues and what tls.h keeps.
 *
 * Threads: everything runs on the loop given to raft_transport_init(), the
 * loop libraft runs on.
 *
 * libraft 0.15's contract, as this transport meets it: init(t, id, address)
 * from raft_init(); listen(t, accept_cb) from raft_start(); connect(t, req,
 * id, address, cb) ends in exactly one cb(req, stream, 0) or cb(req, NULL,
 * RAFT_NOCONNECTION), or cb(req, NULL, RAFT_CANCELED) when the transport
 * closes first (never, when connect itself returns nonzero: RAFT_NOCONNECTION
 * for an unusable address, RAFT_NOMEM, RAFT_CANCELED once closing);
 * close(t, cb) from raft_close(), after which accept_cb never fires: it
 * fires the pending connect callbacks at once, closes every connection
 * (an open one gracefully, so it may wait up to the TLS context's close
 * timeout for a peer that does not hang up) and calls cb once all are gone
 * (synchronously if there was nothing to close). libraft owns each stream it is given (it
 * uv_close()s it and frees it with raft_free()), only writes on dialled streams and only reads
 * accepted ones; it keeps t->data for itself (our state is t->impl).
 *
 * SIGPIPE: writes to a socket whose peer has gone raise it; the process must
 * ignore it (signal(SIGPIPE, SIG_IGN)).
 */

/* Bytes a connection queues in one direction before it stops reading the other side. */
#define RAFT_TRANSPORT_QUEUE_MAX ((size_t)8 << 20)
/* Inbound connections allowed in handshake or preamble at once. */
#define RAFT_TRANSPORT_PENDING_MAX 32u
/* The longest Raft address a preamble may carry. */
#define RAFT_TRANSPORT_ADDR_MAX 255u
/* Default time allowed for the preamble and its reply after the TLS handshake. */
#define RAFT_TRANSPORT_PREAMBLE_TIMEOUT_MS 10000u
/* Preamble magic: "HBCRAFT" and the protocol version. */
#define RAFT_TRANSPORT_MAGIC "HBCRAFT\x01"
#define RAFT_TRANSPORT_MAGIC_LEN 8u

/* Counters since raft_transport_init(), for metrics and tests. */
struct raft_transport_stats {
    uint64_t accepted;         /* inbound connections handed to libraft */
    uint64_t refused;          /* inbound: bad preamble, or certificate not matching its id */
    uint64_t handshake_failed; /* inbound: TLS handshake failed (not TLS, bad certificate, ...) */
    uint64_t busy;             /* inbound: closed at once, RAFT_TRANSPORT_PENDING_MAX reached */
    uint64_t connected;        /* outbound: connections handed to libraft */
    uint64_t connect_failed;   /* outbound: failed (unreachable, refused, wrong identity) */
    uint64_t backpressure;     /* times a connection stopped reading because a queue was full */
    uint64_t queued_peak;      /* the most bytes one connection held in one queue */
};

/*
 * Make t a TLS transport on loop using tls (borrowed: it must outlive the
 * transport; its certificate must be this node's, CN = the node's name).
 * Fills t->impl, t->init, t->listen, t->connect and t->close, and leaves
 * t->data (libraft's) alone, so it may be called before or after
 * raft_uv_init(). Returns 0 or HBC_ENOMEM. Loop thread.
 */
int raft_transport_init(struct raft_uv_transport *t, uv_loop_t *loop, struct tls_ctx *tls,
                        struct err *e);

/*
 * Listen on bind_address ("a.b.c.d:port", copied) instead of the address
 * libraft was given (e.g. "0.0.0.0:PORT" in a container). The port should
 * be the same. Call before raft_start(). Returns 0, HBC_EINVAL (not an IPv4
 * address and port) or HBC_ENOMEM.
 */
int raft_transport_set_bind_address(struct raft_uv_transport *t, const char *bind_address,
                                    struct err *e);

/*
 * Allow ms (0 = RAFT_TRANSPORT_PREAMBLE_TIMEOUT_MS) for the preamble exchange
 * of connections made from now on. Loop thread.
 */
void raft_transport_set_preamble_timeout(struct raft_uv_transport *t, unsigned ms);

/*
 * Where to dial a peer: resolve(arg, id, out, len) writes the address to dial
 * for Raft id `id` into out (len bytes, NUL-terminated) and returns 1, or
 * returns 0 to dial the address libraft gave. libraft 0.15 keeps one client
 * per peer id with the address it first saw and never changes it (uv_send.c,
 * "TODO: handle a change in the address"), so a peer that restarted at a new
 * address is reachable only through this. NULL resolve: libraft's address.
 * Loop thread; resolve runs on it too, at every connection attempt.
 */
void raft_transport_set_resolver(struct raft_uv_transport *t,
                                 int (*resolve)(void *arg, raft_id id, char *out, size_t len),
                                 void *arg);

/* Copy t's counters into *out. Loop thread. */
void raft_transport_get_stats(const struct raft_uv_transport *t, struct raft_transport_stats *out);

/*
 * Free t's state. Call it after libraft has closed the transport (the
 * callback of raft_close() has fired; then every handle of the transport is
 * closed), or when libraft never called t->listen or t->connect (e.g.
 * raft_init() failed). t->impl is NULL afterwards. NULL impl: no-op.
 */
void raft_transport_release(struct raft_uv_transport *t);

#endif /* HBC_NODE_RAFT_TRANSPORT_H */
