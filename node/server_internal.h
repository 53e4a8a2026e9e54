/* Internals of hbcd's data-plane server shared by server.c (connections, dispatch, start and stop),
 * server_put.c (checks and group commits) and server_read.c (gets, existence queries, listings). */
#ifndef HBC_NODE_SERVER_INTERNAL_H
#define HBC_NODE_SERVER_INTERNAL_H

#include "node/server.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/statvfs.h>

#include <hbc/hbc.h>

#include "common/alloc.h"
#include "common/erasure.h"
#include "common/frame.h"
#include "common/frame_scatter.h"
#include "common/frame_view.h"
#include "common/log.h"
#include "common/shard_scheme.h"
#include "node/clock_sync.h"
#include "node/control.h"
#include "node/fsm.h"
#include "node/gc.h"
#include "node/fsm_placement.h"
#include "node/mover.h"
#include "node/raft_node.h"
#include "node/shard_store_list.h"
#include "hbc.pb-c.h"

/* Requests a connection may have in flight before reading pauses. */
#define CONN_MAX_INFLIGHT 512
/* How often idle connections are looked for, ms. */
#define SWEEP_INTERVAL_MS 1000
/* Largest number of keys or ids in one get or have request. */
#define REQUEST_MAX_KEYS 4096
/* A get whose shards are all cached and add up to at most this is answered on the loop thread. */
#define GET_INLINE_MAX_BYTES (2u << 20)
/*
 * Bytes of free space a group commit leaves on the data directory's filesystem
 * for the index: a RocksDB write that meets ENOSPC leaves RocksDB read-only and
 * the shard store refusing writes until reopened (store_write_sync), while a
 * segment append that meets it is cut back and the node takes puts again as
 * soon as space returns. So puts fail with ENOSPC before the index can.
 */
#define SERVER_DISK_RESERVE (16ULL << 20)
/*
 * Group commits in flight at once: the shard store appends the next one's
 * shards while this one fdatasyncs and writes its index batch. A second
 * commit starts only with at least 1/COMMIT_SECOND_SHARE of a full commit
 * queued, so that what it appends is worth its own sync.
 */
#define COMMIT_PIPELINE 2
/* Distinct placement epochs of puts in flight tracked (server_list_epoch()). */
#define SERVER_PEND_EPOCHS 8
#define COMMIT_SECOND_SHARE 4

struct conn;

enum req_kind { REQ_PUT, REQ_GET, REQ_HAVE, REQ_LIST, REQ_GC_LIST };

/* One request being worked on: owns its frame until answered. */
struct req {
    enum req_kind kind;            /* what was asked */
    struct conn *conn;             /* who asked (holds a reference) */
    Hbc__Frame *frame;             /* the request, owned */
    uint8_t *body;                 /* put decoded in place: the frame's body, which frame's shard
                                      bytes point into (owned; freed after frame), else NULL */
    size_t bytes;                  /* bytes charged to the connection for it */
    int status;                    /* 0, or why it failed (for an error frame) */
    char msg[256];                 /* the failure's explanation */
    struct req *next;              /* commit queue / commit batch link */
    uv_work_t work;                /* for gets and haves */
    Hbc__Frame *reply;             /* get/have: the reply built on the worker */
    struct shard_key *keys;        /* get: the decoded keys (owned) */
    uint8_t **datas;               /* get: shard data per key (owned) */
    size_t *lens;                  /* get: their lengths */
    int *results;                  /* get: per-key results */
    protobuf_c_boolean *present;   /* have: per-id answer */
    uint8_t *shas;                 /* put: the shards' SHA-256s, 32 bytes each (owned) */
    struct shard_list_entry *list; /* placement list: the chunks found (owned) */
    size_t nlist;                  /* placement list: how many */
    bool list_more;                /* placement list: more follow */
    uint64_t epoch_at;             /* put: the node's epoch when it was accepted; list: the epoch
                                      the listing vouches for (server_list_epoch()) */
    bool epoch_counted;            /* put: counted in the server's pending epochs */
    uint8_t (*gc_ids)[32];         /* gc list: chunk ids found */
    uint64_t *gc_times;            /* gc list: their stored-at times */
    size_t gc_n;                   /* gc list: how many */
    bool gc_more;                  /* gc list: more follow */
};

/* One group commit on the thread pool. */
struct commit {
    struct server *srv; /* owner */
    uv_work_t work;     /* the thread-pool request */
    struct req *reqs;   /* the puts it covers, in arrival order */
    size_t nshards;     /* shards in it */
    int status;         /* 0 or the store's error for the whole batch */
    char msg[512];      /* its explanation */
};

struct conn {
    struct server *srv;         /* owner */
    struct tls_conn *tls;       /* the connection; NULL once closed */
    struct frame_reader reader; /* incoming frames */
    struct frame_pool *pool;    /* the server's body buffers (a reference, for reader and bodies) */
    struct conn *prev, *next;   /* the server's list */
    unsigned refs;              /* 1 while open + 1 per request in flight */
    unsigned inflight;          /* requests not yet answered */
    size_t held;                /* bytes held: requests in flight + unsent replies */
    bool paused;                /* reading stopped for backpressure */
    bool handshaken;            /* TLS handshake completed */
    uint64_t last_active;       /* uv_now of the last frame or reply */
    char peer[64];              /* peer address, for logs */
};

struct server {
    uv_loop_t *loop;                         /* the node's loop */
    const struct node_config *cfg;           /* borrowed */
    struct tls_ctx *tls;                     /* borrowed */
    struct shard_store *store;               /* borrowed */
    struct raft_node *raft;                  /* the metadata plane (borrowed), or NULL */
    struct mover *mover;                     /* moves shards between placement epochs, or NULL */
    uint64_t pend_epoch[SERVER_PEND_EPOCHS]; /* epochs of puts in flight, oldest first */
    uint64_t pend_count[SERVER_PEND_EPOCHS]; /* how many puts of each */
    size_t npend;                            /* entries in use */
    uv_tcp_t listener;                       /* the listening socket */
    uv_timer_t sweep;                        /* idle sweep */
    struct conn *conns;                      /* open connections */
    struct req *queue_head, *queue_tail;     /* puts waiting for the next commit */
    size_t queue_shards;                     /* shards in the queue */
    size_t queue_bytes;                      /* bytes of the requests in the queue */
    unsigned committing;                     /* group commits running (at most COMMIT_PIPELINE) */
    pthread_mutex_t space_mu;                /* guards space_reserved (commit workers) */
    uint64_t space_reserved;                 /* bytes of commits past the space check, not stored */
    unsigned works;                          /* get, have and put-check works running */
    unsigned handles_open;                   /* listener + sweep handles not yet closed */
    bool stopping;                           /* server_stop() was called */
    bool stopped_conns;                      /* connections were told to close */
    void (*done)(void *);                    /* server_stop()'s callback */
    void *done_arg;                          /* its argument */
    struct server_stats stats;               /* counters */
    struct frame_pool *pool;                 /* put frame bodies for reuse (connections share it) */
    struct gc_node *gc;                      /* deletions for accepted GC sweeps */
    struct gc_leader *gcl; /* GC cycles when leader (NULL without Raft or once stopped) */
    bool gcl_stopping;     /* gc_leader_stop() was called and has not finished */
    bool gc_stopping;      /* gc_node_stop() was called and has not finished */
};

/* server.c: answering requests */

/* Encode reply (borrowed until return; large bytes fields are sent from where they are), send it on
 * r's connection and free r's request (r itself is freed once the reply is written). */
void server_req_finish(struct req *r, const Hbc__Frame *reply);

/* Answer r with an error frame of code (an HBC_ code) and msg, and free its request. */
void server_req_fail(struct req *r, int code, const char *msg);

/* Count, or stop counting, one put in flight under the placement epoch it was accepted in. */
void server_pending_add(struct server *s, uint64_t epoch);
void server_pending_del(struct server *s, uint64_t epoch);

/* Finish a stop once nothing is in flight (no-op otherwise). */
void server_maybe_finish(struct server *s);

/* server_put.c: puts */

/* Thread pool: check every shard of put request w (format, bounds, SHA-256 trailer) and compute
 * the SHA-256 the store records; the after-callback queues it for a group commit or fails it. */
void server_put_check_work_cb(uv_work_t *w);
void server_put_check_after_cb(uv_work_t *w, int status);

/* Start a group commit of the checked puts if the pipeline has room. Loop thread. */
void server_maybe_commit(struct server *s);

/* server_read.c: gets, existence queries and listings */

/* Answer get r on the loop thread if everything it needs is cached (returns true), else prepare
 * it for server_get_work_cb (returns false). */
bool server_get_inline(struct req *r);
void server_get_work_cb(uv_work_t *w);
void server_get_after_cb(uv_work_t *w, int status);
void server_have_work_cb(uv_work_t *w);
void server_have_after_cb(uv_work_t *w, int status);

/* The placement epoch a listing vouches for: the oldest with puts still in flight. */
uint64_t server_list_epoch(const struct server *s);
void server_list_work_cb(uv_work_t *w);
void server_list_after_cb(uv_work_t *w, int status);

/* Start a GcListChunks request r from connection c (only the cluster's own nodes may ask). */
int server_gc_list_start(struct server *s, struct conn *c, struct req *r);

#endif /* HBC_NODE_SERVER_INTERNAL_H */
