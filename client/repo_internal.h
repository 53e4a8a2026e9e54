/* Inside client/repo: the repo handle, the network thread and the calls handed to it. */
#ifndef HBC_CLIENT_REPO_INTERNAL_H
#define HBC_CLIENT_REPO_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <uv.h>

#include "client/placement.h"
#include "client/placement_map.h"
#include "client/policy.h"
#include "client/repo.h"
#include "common/chunk_object.h"
#include "common/crypto.h"
#include "common/node_client.h"
#include "common/tls.h"

/* ---- the network thread (repo_net.c) ---- */

/* What one request to one node asks. */
enum repo_req_kind {
    REPO_REQ_PUT,   /* PutShards: shards, nshards */
    REPO_REQ_GET,   /* GetShards: keys, nkeys */
    REPO_REQ_HAVE,  /* HaveChunks: vault_id, ids, nids */
    REPO_REQ_FRAME, /* any frame: frame, expect */
};

/*
 * One request to one node, filled by a caller thread, carried out on the
 * network thread, and read back by the caller once repo_net_run() returns.
 * Everything it points at is the caller's and must live until then.
 */
struct repo_req {
    /* Set by the caller. */
    const char *addr;                       /* the node's data-plane address */
    const char *node_id;                    /* its certificate's CN must equal this; NULL: any */
    enum repo_req_kind kind;                /* which request */
    const struct node_client_shard *shards; /* PUT: the shards */
    size_t nshards;                         /* PUT: how many */
    uint64_t epoch;                         /* PUT: the writer's placement epoch (0: none sent) */
    const struct node_client_key *keys;     /* GET: the keys */
    size_t nkeys;                           /* GET: how many */
    const uint8_t *vault_id;                /* HAVE: the vault */
    const uint8_t (*ids)[REPO_CHUNK_ID];    /* HAVE: the chunk ids */
    size_t nids;                            /* HAVE: how many */
    Hbc__Frame *frame;                      /* FRAME: the request */
    Hbc__Frame__BodyCase expect;            /* FRAME: the reply's body */
    /* Set by the network thread. */
    int status;        /* 0, the node's refusal, or why it failed */
    char msg[256];     /* status != 0: the explanation */
    Hbc__Frame *reply; /* status 0: the reply (caller frees: frame_free) */
    /* The network thread's own. */
    struct repo_call *call; /* the call it belongs to */
    struct repo_req *next;  /* in its connection's wait queue */
};

struct repo_net;

/* How the network thread connects. */
struct repo_net_opts {
    struct tls_ctx *tls; /* borrowed; outlives the thread */
    unsigned timeout_ms; /* an unanswered request this old fails its connection */
};

/* Start the network thread. Returns 0, HBC_ENOMEM or a libuv error (-errno). */
int repo_net_start(const struct repo_net_opts *o, struct repo_net **out, struct err *e);

/*
 * Close every connection, stop the thread and free net. No repo_net_run()
 * may be running. NULL is a no-op.
 */
void repo_net_stop(struct repo_net *net);

/*
 * Hand the n requests to the network thread and wait until each has its
 * status (0 with a reply, or an error with a message). Requests to one node
 * go out pipelined on that node's one connection, in order; requests to
 * different nodes go out in parallel. A node whose connection failed is not
 * dialled again before its backoff (0.25 s doubling to 5 s) ends: its
 * requests fail at once with HBC_EUNAVAILABLE. Any caller thread; several
 * at once.
 */
void repo_net_run(struct repo_net *net, struct repo_req *reqs, size_t n);

/* ---- the repo handle ---- */

/* Puts running at once at most (more wait): one per caller thread in practice. */
#define REPO_MAX_BUSY 256

/* One node of the cluster, as the state machine lists it. */
struct repo_node {
    char *node_id;     /* its id (and certificate CN) */
    char *addr;        /* data-plane address */
    char *site;        /* site */
    char *region;      /* region */
    char *media;       /* media class */
    bool worm;         /* write-once storage */
    uint64_t capacity; /* bytes */
};

/* Per-thread working state, pooled: a caller takes one for a call and gives it back. */
struct repo_worker {
    struct chunk_ctx *cc;     /* sealing and opening */
    struct crypto_hmac *hmac; /* chunk ids, keyed with the vault's chunk-id key */
    uint8_t *buf;             /* scratch for a sealed object */
    size_t cap;               /* its size */
    struct repo_worker *next; /* in the pool */
};

/* One placement epoch as the client uses it (repo_map.c). */
struct repo_epoch {
    struct pmap_epoch ep; /* its topology (borrowing the map's reply) */
    unsigned *to_node;    /* epoch node i -> index into repo.nodes, or PMAP_NONE (removed) */
};

/* The placement map of the open vault: epochs and unsettled groups (repo_map.c). */
struct repo_map {
    struct repo_map *next;     /* in repo.retired */
    Hbc__Frame *reply;         /* the PlacementMapReply frame the records live in (owned) */
    uint64_t current;          /* the current epoch */
    struct repo_epoch *epochs; /* current first, then older ones (descending) */
    size_t nepochs;            /* how many */
    uint64_t *settled;         /* per group: latest settled epoch (== current when settled) */
};

struct repo {
    struct tls_ctx *tls;           /* owned */
    struct repo_net *net;          /* owned */
    unsigned timeout_ms;           /* per request */
    size_t max_inflight;           /* bytes of shards in flight at most */
    char **addrs;                  /* the addresses given (owned copies) */
    size_t naddrs;                 /* how many */
    struct repo_node *nodes;       /* the cluster's nodes, sorted by id */
    struct placement_node *pnodes; /* the same for placement (pointing into nodes) */
    struct policy_node *polnodes;  /* the same for vault policies (pointing into nodes) */
    size_t nnodes;                 /* how many */

    bool has_kek;                /* a key file was opened */
    uint8_t kek[CRYPTO_KEY_LEN]; /* the KEK (wiped on close) */

    bool has_vault;                      /* a vault is open */
    uint8_t vault_id[REPO_ID_LEN];       /* its id */
    unsigned copies;                     /* its copies */
    unsigned k;                          /* data shards per copy */
    unsigned m;                          /* parity shards per copy */
    bool has_policy;                     /* the vault has a policy: place by it */
    struct policy policy;                /* its policy (every copy k+m, checked at open) */
    char home_site[POLICY_SITE_MAX + 1]; /* the site its policy calls home */
    struct pmap_vault pv;                /* its placement (pv.groups 0: per-chunk placement) */
    struct repo_map *map;     /* pv.groups > 0: its placement map (owned; guarded by mu) */
    struct repo_map *retired; /* older maps, kept until close (readers may hold them) */
    size_t nodes_cap;         /* entries allocated in nodes (appended to on reload) */
    struct chunk_key ckey;    /* its data key, derived (wiped on close) */
    struct crypto_hmac *hmac; /* keyed with its chunk-id key; duplicated per worker */

    uv_mutex_t mu;                              /* guards the fields below */
    uv_cond_t flow_cv;                          /* signalled when inflight drops */
    size_t inflight;                            /* bytes reserved by calls running now */
    struct repo_worker *workers;                /* idle workers */
    char leader[64];                            /* the last leader address heard of, or "" */
    uint8_t busy[REPO_MAX_BUSY][REPO_CHUNK_ID]; /* chunk ids being put now */
    size_t nbusy;                               /* how many */
    uv_cond_t busy_cv;                          /* signalled when one is done */
    uint64_t degraded;                          /* chunks written with some shard missing */
    uint32_t create_retention_seconds;          /* repo_set_create_retention(); 0: none */
    int64_t create_retention_days;              /* repo_set_create_lock(); -1: the default */
    int create_lock_mode;                       /* repo_set_create_lock(); 0: the default */
};

/* A control request (ProposeRequest, ListVaults, ...) with leader redirects and retries (repo.c).
 */
int repo_control(struct repo *r, Hbc__Frame *req, Hbc__Frame__BodyCase expect, Hbc__Frame **reply,
                 struct err *e);

/*
 * The nodes of copies 0..copies-1 of chunk id (out[c * width + s]): by the
 * vault's policy when it has one, else placement_chunk_nodes() (repo.c).
 * Returns as those do.
 */
int repo_place(const struct repo *r, const uint8_t id[REPO_CHUNK_ID], unsigned copies,
               unsigned width, unsigned *out, struct err *e);

/*
 * Load the placement map of the open vault (r->pv.groups > 0) into r->map.
 * Returns 0, HBC_EPROTO, HBC_ENOMEM or a control-request failure (repo_map.c).
 */
int repo_map_load(struct repo *r, struct err *e);

/* Free a map. NULL is a no-op. */
void repo_map_free(struct repo_map *m);

/* The current map (NULL for a vault without groups), read under r->mu. */
const struct repo_map *repo_map_current(struct repo *r);

/*
 * A node answered a put with HBC_ESTALEEPOCH: read the node list again
 * (appending nodes that joined) and the placement map. Any thread; several
 * at once reload once each. Returns 0 or as repo_map_load().
 */
int repo_map_refresh(struct repo *r, struct err *e);

/*
 * The nodes of copies 0..copies-1 of chunk id in the nth epoch a reader may
 * try (0: the current epoch; then older epochs while the chunk's group is
 * not settled): out[c * width + s], PMAP_NONE for a node no longer known.
 * Returns 0, HBC_ENOTFOUND when there is no nth epoch, or as repo_place().
 */
int repo_place_epoch(const struct repo *r, const uint8_t id[REPO_CHUNK_ID], size_t nth,
                     unsigned copies, unsigned width, unsigned *out, struct err *e);

/*
 * repo_place() that also says which placement epoch the answer is for
 * (*epoch, 0 for a vault without groups): puts carry it, so a node that has
 * moved on refuses them (HBC_ESTALEEPOCH).
 */
int repo_place_current(struct repo *r, const uint8_t id[REPO_CHUNK_ID], unsigned copies,
                       unsigned width, unsigned *out, uint64_t *epoch, struct err *e);

/* Free every pooled worker (repo_chunk.c). */
void repo_workers_free(struct repo *r);

#endif /* HBC_CLIENT_REPO_INTERNAL_H */
