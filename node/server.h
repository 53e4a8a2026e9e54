/* The data-plane server of hbcd: mutual TLS, frames, group-committed shard puts. */
#ifndef HBC_NODE_SERVER_H
#define HBC_NODE_SERVER_H

#include <stdbool.h>
#include <stdint.h>

#include <uv.h>

#include "common/err.h"
#include "common/tls.h"
#include "node/config.h"
#include "node/shard_store.h"

struct server;

/* Counters for status replies, logs and tests. */
struct server_stats {
    uint64_t conns_accepted; /* connections accepted since start */
    uint64_t conns_refused;  /* closed for a handshake failure, a bad frame or a limit */
    uint64_t conns_open;     /* connections open now */
    uint64_t puts_acked;     /* shards acknowledged as durable */
    uint64_t commits;        /* group commits (one fdatasync + one synced index batch each) */
    uint64_t gets_served;    /* shards sent */
    uint64_t gets_inline;    /* get requests answered on the loop thread (all cached) */
    uint64_t bad_requests;   /* requests answered with an error frame */
};

/*
 * Start serving on cfg->listen with the store and TLS context given (all
 * borrowed; they must outlive the server). Runs on loop; call uv_run
 * afterwards. Returns 0, or -errno from bind/listen with a message.
 */
int server_start(uv_loop_t *loop, const struct node_config *cfg, struct tls_ctx *tls,
                 struct shard_store *store, struct server **out, struct err *e);

/*
 * Stop gracefully: stop accepting, stop reading new requests, finish and
 * acknowledge the puts already received, send the replies, close every
 * connection, then call done(arg) from the loop. The server is freed after
 * done returns. A second call does nothing. Loop thread.
 */
void server_stop(struct server *s, void (*done)(void *arg), void *arg);

struct raft_node;

/* Answer control-plane requests with rn (borrowed; NULL: no metadata plane). Loop thread. */
void server_set_raft(struct server *s, struct raft_node *rn);

/* A copy of the counters. Loop thread. */
void server_get_stats(const struct server *s, struct server_stats *out);

#endif /* HBC_NODE_SERVER_H */
