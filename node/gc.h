/* Garbage collection run by the cluster: the leader's mark and sweep, and each node's deletions. */
#ifndef HBC_NODE_GC_H
#define HBC_NODE_GC_H

#include <stdbool.h>
#include <stdint.h>

#include <uv.h>

#include "common/err.h"
#include "common/tls.h"
#include "hbc.pb-c.h"
#include "node/config.h"
#include "node/raft_node.h"
#include "node/shard_store.h"

/*
 * The rules are in docs/retention.md ("Garbage collection"). In short:
 *
 * Leader (struct gc_leader). One cycle, on a thread of its own because every
 * step blocks on the network: read the vaults and, per vault, the snapshots
 * present (a Raft barrier first; the applied index of that read is the mark
 * index); fetch every snapshot's reference list from the nodes (plaintext,
 * checked against its SHA-256 id) and merge them into one sorted live set;
 * ask every node for the chunk ids it holds in the vault (GcListChunks);
 * garbage = listed - live, stored before cutoff = compliance clock - grace;
 * propose GcSweep commands of at most FSM_GC_SWEEP_MAX ids. The state
 * machine refuses a sweep if a snapshot of the vault was committed after
 * the mark. Memory, for the vault being collected: 32 bytes per distinct
 * live id, per id each node lists (all nodes' listings are kept, then
 * sorted and deduplicated) and per garbage id, plus one reference-list
 * object (at most about 4 MiB) and one listing page at a time.
 *
 * Node (struct gc_node). When this node's state machine accepts a GcSweep,
 * the hook queues a deletion job: on the thread pool, every shard of the
 * swept chunks that this node stored before the sweep's cutoff is removed
 * from the index, then segments mostly garbage are compacted. Jobs run one
 * at a time, in index order. gc_node_safe_index() is the fence index that
 * backups start from: every sweep at or below it is fully carried out here.
 */

#define GC_LIST_PAGE 8192 /* chunk ids in one GcListChunks reply at most */

struct gc_node;
struct gc_leader;

/* Counters of one node's deletions since start. */
struct gc_node_stats {
    uint64_t sweeps;         /* sweep jobs done */
    uint64_t deleted_shards; /* shards removed */
    uint64_t kept_young;     /* shards of swept chunks kept: stored after the cutoff */
    uint64_t freed_bytes;    /* bytes of deleted records plus segment bytes compaction gave back */
};

/*
 * A node's deleter over store (borrowed; must outlive it), on loop. Returns
 * 0 or HBC_ENOMEM. Loop thread.
 */
int gc_node_new(uv_loop_t *loop, struct shard_store *store, struct gc_node **out, struct err *e);

/*
 * Give g the state machine and TLS context its deletions need (borrowed;
 * both outlive g): before deleting, a node keeps every swept chunk that a
 * snapshot present in its own applied state references, loading the
 * reference lists from its own store or from peers. Without them (or when a
 * reference list cannot be loaded) nothing is deleted. Loop thread.
 */
void gc_node_attach(struct gc_node *g, struct fsm *fsm, struct tls_ctx *tls);

/* The state machine's GC hook (fsm_gc_hook): queue the deletions of an accepted sweep. */
void gc_node_on_sweep(void *arg, uint64_t index, const Hbc__GcSweep *sweep);

/* min(applied, index of the oldest sweep not yet carried out - 1). Loop thread. */
uint64_t gc_node_safe_index(const struct gc_node *g, uint64_t applied);

/* True while a deletion job runs on the thread pool. Loop thread. */
bool gc_node_busy(const struct gc_node *g);

/* Drop queued jobs (their garbage stays for a later cycle) and call idle(arg) once none runs. */
void gc_node_stop(struct gc_node *g, void (*idle)(void *arg), void *arg);

/* A copy of the counters. Loop thread. */
struct gc_node_stats gc_node_stats(const struct gc_node *g);

/* Free g; no job may run (gc_node_busy() false). NULL is a no-op. */
void gc_node_free(struct gc_node *g);

/*
 * The leader side, on loop with the node's configuration, TLS context (its
 * node certificate: the proposer of sweeps) and Raft node (all borrowed).
 * Starts the cfg->gc_interval timer. Returns 0 or HBC_ENOMEM. Loop thread.
 */
int gc_leader_new(uv_loop_t *loop, const struct node_config *cfg, struct tls_ctx *tls,
                  struct raft_node *rn, struct gc_leader **out, struct err *e);

/* Called once with the reply frame (borrowed for the call) to a GcRunRequest. */
typedef void (*gc_reply_fn)(void *ctx, const Hbc__Frame *reply);

/*
 * Answer a GcRunRequest (req borrowed for the call): start a cycle (or join
 * the running one) and reply when it ends, or reply at once with the last
 * summary (status_only), HBC_ENOTLEADER (with the leader's address in the
 * message) or HBC_EDENIED (admin false). Loop thread.
 */
void gc_leader_request(struct gc_leader *g, const Hbc__Frame *req, bool admin, gc_reply_fn reply,
                       void *ctx);

/*
 * Stop: the timer stops, waiting requests are answered HBC_EUNAVAILABLE, a
 * running cycle is told to stop and done(arg) is called once its thread has
 * ended; g is freed before done runs. Loop thread.
 */
void gc_leader_stop(struct gc_leader *g, void (*done)(void *arg), void *arg);

#endif /* HBC_NODE_GC_H */
