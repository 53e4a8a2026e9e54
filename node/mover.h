/* The mover: copies or rebuilds the shards a new placement epoch gives this node, in the
 * background. */
#ifndef HBC_NODE_MOVER_H
#define HBC_NODE_MOVER_H

#include <stdbool.h>
#include <stdint.h>

#include "common/err.h"
#include "common/tls.h"
#include "node/fsm.h"
#include "node/shard_store.h"

/*
 * Happy path: every move_interval ms the mover thread reads the placement
 * map from this node's state machine. For each vault group not settled in
 * the current epoch E whose E-nodes include this node, it lists the group's
 * chunks on the nodes of the older epochs down to the group's settled one
 * (PlacementListRequest, node certificate), fetches each shard index E gives
 * it that it lacks from a node that holds it (GetShards), or else rebuilds it
 * from any k shards of the stripe (shards are ciphertext: no keys needed),
 * stores it locally, and finally proposes PlacementGroupDone for the groups
 * it completed. When every target node of a group did, the group is settled
 * and readers stop falling back for it.
 *
 * Failure modes: a source that does not answer, lists with an older epoch
 * (it has not applied E yet: its fence is not up) or misses a shard only
 * delays the group to a later pass; nothing is reported done unless every
 * chunk the listings named is complete here. Bytes copied or rebuilt are
 * paced to move_rate bytes per second. Shards the node no longer owns are
 * not deleted here (garbage collection's job, once the group is settled).
 *
 * Threads: its own thread and its own network thread (client/repo_net.c);
 * it reads the state machine and the shard store, both thread-safe.
 */

struct mover;

/* What the mover works with; everything borrowed and outliving the mover. */
struct mover_opts {
    const char *node_id;       /* this node (its certificate's CN) */
    struct fsm *fsm;           /* the state machine (read only) */
    struct shard_store *store; /* this node's shards */
    struct tls_ctx *tls;       /* the node's TLS context (dials with its node certificate) */
    uint64_t rate;             /* bytes per second at most (0: unlimited) */
    unsigned interval_ms;      /* ms between passes */
    unsigned down_after_s;     /* leader: mark a node DOWN after this long unreachable (0: never) */
    unsigned cleanup_after_s;  /* delete shards the settled current epoch does not assign here
                                  this long after it settled (0: never; placement_cleanup.h) */
};

/* Start the mover thread. Returns 0, HBC_ENOMEM or a thread/libuv error. */
int mover_start(const struct mover_opts *o, struct mover **out, struct err *e);

/*
 * Tell the mover whether this node leads (the loop thread knows; call it on
 * every change or periodically). The leader's mover also probes every node
 * (StatusRequest) each pass and proposes NodeUpdate state DOWN for a node
 * unreachable for down_after_s seconds, and state UP when a DOWN node answers
 * again: both are topology changes, so each makes a new placement epoch.
 */
void mover_set_leader(struct mover *m, bool leader);

/* Stop the thread (finishing the request in flight) and free m. NULL is a no-op. */
void mover_stop(struct mover *m);

#endif /* HBC_NODE_MOVER_H */
