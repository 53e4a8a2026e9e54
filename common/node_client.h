/* A client's connection to one node's data plane: pipelined requests over mutual TLS. */
#ifndef HBC_COMMON_NODE_CLIENT_H
#define HBC_COMMON_NODE_CLIENT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <uv.h>

#include "common/err.h"
#include "common/tls.h"
#include "hbc.pb-c.h"

/*
 * One node_client is one TLS connection to one hbcd, on one libuv loop. It
 * sends requests (frames with increasing request ids) without waiting for
 * earlier replies, matches each reply to its request by id, and calls each
 * request's callback exactly once:
 * - with status 0 and the reply frame;
 * - with the node's refusal: the error frame's code mapped back to an HBC_E*
 *   code (node_client_error_code()) and its message;
 * - with HBC_EPROTO if the node answered with the wrong kind of reply;
 * - with HBC_ECANCELED when the connection closes first (for any reason:
 *   node_client_close(), a failed connect or handshake, the node hanging up,
 *   a request timeout), the message then saying why. The outcome is then
 *   unknown: a cancelled put may or may not be stored (sending it again is
 *   safe: the node answers an identical shard already stored as stored).
 * A request function that returns nonzero never calls its callback.
 *
 * Requests may be issued right after node_client_connect(): they are
 * encoded at once and sent when the handshake completes.
 *
 * Bounded memory: at most opts.max_requests requests and about
 * opts.max_bytes bytes of encoded requests are in flight (sent or waiting
 * for the handshake, not yet answered). A request is accepted while the
 * client is not full (node_client_full()) and refused with HBC_EBUSY
 * otherwise; the one that makes it full is accepted whole, so a single
 * request larger than max_bytes still goes out when nothing else is in
 * flight. on_drain tells a caller that was refused, or that filled the
 * client, when there is room again. With opts.max_queued set, the client
 * is also full while that many bytes of accepted requests are encrypted but
 * not yet taken by the kernel (tls_conn_queued()), and on_drain follows the
 * write that brings them below: a caller that keeps the client full then
 * encrypts each request just before the socket can take it, instead of
 * holding up to max_bytes of ciphertext in fresh memory. The encoded request is handed to TLS
 * inside the request call (TLS encrypts it there), so the caller's shard
 * buffers are borrowed only for the duration of that call. Replies are
 * read one frame at a time, each bounded by opts.max_frame before it is
 * allocated; a caller that keeps reply frames (node_client_take_reply())
 * bounds that memory itself.
 *
 * Ownership and lifetime: node_client_connect() returns the client; it
 * stays valid until its on_close callback returns, and is freed right
 * after. The caller ends it with node_client_close() (or waits for the
 * node to end it) and must not use the pointer after on_close. Nothing the
 * caller passes in is kept after a call returns unless stated.
 *
 * Threads: every function must be called on the thread running the loop,
 * and every callback runs there. The tls_ctx may be shared between clients
 * and threads. Callbacks may call any node_client function, including
 * issuing new requests and node_client_close().
 *
 * Happy path: connect → handshake → on_connect(0) → requests and replies →
 * node_client_close() → pending requests canceled → on_close(0). Failure
 * modes: connect or handshake failure (on_connect(code), then on_close),
 * the node closing or resetting the connection, a malformed or unknown reply
 * (the connection is closed with HBC_EFORMAT, HBC_ETOOBIG or HBC_EPROTO), a
 * request unanswered for request_timeout_ms (closed with -ETIMEDOUT).
 */

/* Default bound on requests in flight. */
#define NODE_CLIENT_DEFAULT_REQUESTS 64u
/* Default bound on bytes of encoded requests in flight. */
#define NODE_CLIENT_DEFAULT_BYTES ((size_t)128 << 20)
/* Most shards, keys or chunk ids in one request (the node's own limit for gets and haves). */
#define NODE_CLIENT_MAX_BATCH 4096u

struct node_client;

/* How to connect; zero fields take the defaults. Strings are copied. */
struct node_client_opts {
    unsigned max_requests; /* requests in flight at most; 0 = NODE_CLIENT_DEFAULT_REQUESTS */
    size_t max_bytes;      /* encoded request bytes in flight; 0 = NODE_CLIENT_DEFAULT_BYTES */
    size_t max_frame;      /* largest frame sent or accepted; 0 = FRAME_MAX_DEFAULT */
    size_t max_queued; /* full while this many request bytes wait for the kernel; 0 = no bound */
    unsigned
        request_timeout_ms; /* an unanswered request this old closes the connection; 0 = never */
    const char *node_id;    /* if set, the node's certificate CN must equal it */
};

/* The connection's own events; each may be NULL. */
struct node_client_cbs {
    /* The handshake's outcome: 0, or why it failed (on_close follows at once). */
    void (*on_connect)(struct node_client *nc, int status);
    /* The client was full (or refused a request with HBC_EBUSY) and has room again. */
    void (*on_drain)(struct node_client *nc);
    /*
     * Last callback, after every request's callback has fired: status 0 for a
     * clean close, otherwise the reason's code (tls.h lists them, plus
     * HBC_EPROTO, HBC_EFORMAT, HBC_ETOOBIG, -ETIMEDOUT, HBC_EAUTH). reason is
     * never NULL. nc is freed when this returns.
     */
    void (*on_close)(struct node_client *nc, int status, const char *reason);
};

/* What a request's callback receives. */
struct node_client_result {
    int status;          /* 0, the node's refusal as HBC_E* / -ENOSPC, HBC_EPROTO, HBC_ECANCELED */
    const char *message; /* "" on success, else the explanation (borrowed for the callback) */
    Hbc__Frame *reply;   /* status 0: the reply, borrowed for the callback; NULL otherwise */
};

/*
 * A request's callback; fires exactly once per accepted request, on the loop
 * thread. res is borrowed for the duration of the callback. For
 * node_client_put_shards() the reply's body is put_shards_reply, for
 * node_client_get_shards() get_shards_reply (its shards + missing account for
 * every key asked), for node_client_have_chunks() have_chunks_reply (one
 * answer per id), for node_client_status() status_reply.
 */
typedef void (*node_client_cb)(struct node_client *nc, struct node_client_result *res, void *arg);

/*
 * One shard to put: its key and its encoded form (common/erasure.h), all
 * borrowed for the call. With head set (node_client_put_shards_epoch()
 * only), the encoded shard is head || data || 32 zero bytes (its prefix and
 * header, its payload, a trailer for the node to fill in), sent without
 * being copied into one buffer first.
 */
struct node_client_shard {
    const uint8_t *vault_id; /* 16 bytes */
    const uint8_t *chunk_id; /* 32 bytes */
    uint32_t index;          /* shard slot: the index, tagged with its scheme (shard_scheme.h) */
    const uint8_t *data;     /* the encoded shard, or with head its payload */
    size_t len;              /* its length */
    bool sha256_unset;       /* trailer left zero for the node to fill in */
    const uint8_t *head;     /* NULL, or the shard's prefix and header (see above) */
    size_t head_len;         /* bytes at head */
};

/* One shard to get, borrowed for the call. */
struct node_client_key {
    const uint8_t *vault_id; /* 16 bytes */
    const uint8_t *chunk_id; /* 32 bytes */
    uint32_t index;          /* shard slot: the index, tagged with its scheme (shard_scheme.h) */
};

/* Counters of one client (node_client_stats()). */
struct node_client_stats {
    unsigned requests_inflight; /* accepted and not yet answered */
    size_t bytes_inflight;      /* their encoded bytes */
    size_t tls_queued;          /* bytes handed to TLS and not yet taken by the kernel */
    uint64_t requests_sent;     /* accepted since connect */
    uint64_t replies;           /* answered since connect (errors from the node included) */
    uint64_t node_errors;       /* answered with an error frame */
};

/*
 * Connect to the node at addr ("a.b.c.d:port", borrowed) on loop with the
 * TLS context tls (borrowed; must outlive the client). opts may be NULL
 * (defaults) and is copied; cbs is copied; data is the caller's pointer
 * (node_client_data()). On success *out is the client and its callbacks
 * will fire (on_connect, then eventually on_close). Returns 0, HBC_EINVAL
 * (bad address or options), HBC_ENOMEM, or the codes of tls_connect(); on
 * error no callback fires and nothing is left allocated. Loop thread.
 */
int node_client_connect(uv_loop_t *loop, struct tls_ctx *tls, const char *addr,
                        const struct node_client_opts *opts, const struct node_client_cbs *cbs,
                        void *data, struct node_client **out, struct err *e);

/*
 * Put n shards (1..NODE_CLIENT_MAX_BATCH; borrowed for the call only) in one
 * PutShards request; the node acknowledges only once all are durable.
 * Returns 0 (cb will fire), HBC_EINVAL (n out of range, a NULL id or data),
 * HBC_ETOOBIG (the frame would exceed max_frame), HBC_EBUSY (full: wait for
 * on_drain), HBC_ECANCELED (closing), HBC_ENOMEM, or a TLS write error (the
 * connection then closes). Loop thread.
 */
int node_client_put_shards(struct node_client *nc, const struct node_client_shard *shards, size_t n,
                           node_client_cb cb, void *arg, struct err *e);

/*
 * node_client_put_shards(), with PutShards.epoch when epoch is not 0, and
 * shards that may be given in pieces (head set): the frame is encrypted
 * straight from the shards' bytes (common/put_frame.h), with no encoded
 * copy of the request. Same returns.
 */
int node_client_put_shards_epoch(struct node_client *nc, const struct node_client_shard *shards,
                                 size_t n, uint64_t epoch, node_client_cb cb, void *arg,
                                 struct err *e);

/*
 * Get n shards (1..NODE_CLIENT_MAX_BATCH keys, borrowed for the call only).
 * The reply lists the shards found, in request order, and the keys missing
 * (absent, or failing the node's SHA-256 check and so not served). The
 * caller should keep the expected reply under max_frame (the node refuses a
 * larger one with HBC_ETOOBIG). Returns as node_client_put_shards().
 */
int node_client_get_shards(struct node_client *nc, const struct node_client_key *keys, size_t n,
                           node_client_cb cb, void *arg, struct err *e);

/*
 * Ask which of n chunk ids (each 32 bytes, 0..NODE_CLIENT_MAX_BATCH of them)
 * of vault_id (16 bytes) have any shard on the node; all borrowed for the
 * call. Returns as node_client_put_shards().
 */
int node_client_have_chunks(struct node_client *nc, const uint8_t *vault_id,
                            const uint8_t (*chunk_ids)[32], size_t n, node_client_cb cb, void *arg,
                            struct err *e);

/* Ask for the node's status (id, version, capacity, use). Returns as node_client_put_shards(). */
int node_client_status(struct node_client *nc, node_client_cb cb, void *arg, struct err *e);

/*
 * Send any request frame (borrowed for the call; its request_id is set here)
 * and expect a reply whose body is expect (an error frame is always
 * accepted; for a list-vaults or list-snapshots read, so is a ProposeReply:
 * that is how a node refuses a current read, e.g. HBC_ENOTLEADER with the
 * leader's address). For requests the helpers above do not cover. Returns as
 * node_client_put_shards(), or HBC_EINVAL if frame has no body.
 */
int node_client_request(struct node_client *nc, Hbc__Frame *frame, Hbc__Frame__BodyCase expect,
                        node_client_cb cb, void *arg, struct err *e);

/*
 * Keep the reply of a result: returns res->reply (NULL if none) and clears
 * it, so that it outlives the callback; the caller frees it with
 * frame_free(). Saves copying shard data out of a get reply.
 */
Hbc__Frame *node_client_take_reply(struct node_client_result *res);

/* True when a new request would be refused with HBC_EBUSY. */
bool node_client_full(const struct node_client *nc);

/* True once the handshake succeeded and until closing starts. */
bool node_client_is_open(const struct node_client *nc);

/* Fill *out with the client's counters. */
void node_client_stats(const struct node_client *nc, struct node_client_stats *out);

/* The address given to node_client_connect(); never NULL. */
const char *node_client_addr(const struct node_client *nc);

/* The caller's pointer given at connect or by node_client_set_data(). */
void *node_client_data(const struct node_client *nc);
void node_client_set_data(struct node_client *nc, void *data);

/*
 * Close nc. No request is accepted any more; every request not yet answered
 * gets HBC_ECANCELED from the loop (never from inside this call), then
 * on_close(status, reason) fires and nc is freed after it. status 0 closes
 * gracefully (TLS close_notify, queued writes go out first); a nonzero
 * status (the caller's reason, e.g. -ETIMEDOUT) drops the connection at
 * once with a TCP reset. reason may be NULL (copied). A second call does
 * nothing. Loop thread.
 */
void node_client_close(struct node_client *nc, int status, const char *reason);

/*
 * The HBC_E* code for a node's error frame code: NOT_FOUND → HBC_ENOTFOUND,
 * CORRUPT → HBC_ECORRUPT, NO_SPACE → -ENOSPC, TOO_BIG → HBC_ETOOBIG,
 * DENIED → HBC_EDENIED, UNAVAILABLE → HBC_EUNAVAILABLE, BAD_REQUEST →
 * HBC_EINVAL, anything else → HBC_EINTERNAL.
 */
int node_client_error_code(Hbc__ErrorCode code);

#endif /* HBC_COMMON_NODE_CLIENT_H */
