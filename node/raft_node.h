/* The metadata plane of hbcd: libraft on the node's loop, TLS transport, state machine. */
#ifndef HBC_NODE_RAFT_NODE_H
#define HBC_NODE_RAFT_NODE_H

#include <stdbool.h>
#include <stdint.h>

#include <raft.h>
#include <uv.h>

#include "common/err.h"
#include "common/tls.h"
#include "hbc.pb-c.h"
#include "node/config.h"
#include "node/fsm.h"

struct raft_node;

/*
 * Called once when a proposal, barrier or membership change finishes, on the
 * loop thread. code is 0 when committed and applied, a refusal of the state
 * machine (HBC_EEXIST, HBC_ENOTFOUND, HBC_EINVAL...), HBC_ENOTLEADER when this
 * node is not (or stopped being) the leader, HBC_EUNAVAILABLE while stopping,
 * or another error; msg explains (never NULL); index is the entry's Raft
 * index when it was committed.
 */
typedef void (*raft_node_cb)(void *arg, int code, uint64_t index, const char *msg);

/*
 * Start Raft for the node described by cfg (borrowed, outlives the node):
 * data under cfg->data_dir/raft, Raft traffic over TLS with tls (borrowed),
 * state applied to fsm (borrowed). Bootstraps a one-voter cluster when
 * cfg->raft_bootstrap is set and the log is empty. Returns 0 or an error
 * with a message. Loop thread.
 */
int raft_node_start(uv_loop_t *loop, const struct node_config *cfg, struct tls_ctx *tls,
                    struct fsm *fsm, struct raft_node **out, struct err *e);

/*
 * Stop: refuse new proposals, let the log writes in flight reach the disk
 * (libraft 0.15 can double-free when closed with several appends in flight),
 * close Raft and its transport, then call done(arg). The raft_node is freed
 * before done runs. Loop thread.
 */
void raft_node_stop(struct raft_node *rn, void (*done)(void *arg), void *arg);

/*
 * Propose cmd (borrowed; packed before return). The leader stamps its own
 * clock into leader_time_ms and proposer into the command. Returns 0 and
 * calls cb later exactly once, or returns an error without calling cb
 * (HBC_ENOTLEADER, HBC_EUNAVAILABLE, HBC_ETOOBIG, HBC_ENOMEM).
 */
int raft_node_propose(struct raft_node *rn, Hbc__Command *cmd, const char *proposer,
                      raft_node_cb cb, void *arg, struct err *e);

/* A Raft barrier: cb fires once every entry committed before it is applied here (leader only). */
int raft_node_barrier(struct raft_node *rn, raft_node_cb cb, void *arg, struct err *e);

/*
 * Admit the node described by join (borrowed): record it in the state
 * machine, add it to the Raft configuration and make it a voter while there
 * are fewer than max_voters, otherwise a standby (the leader promotes a
 * standby, preferring one in a site without a voter, when a voter goes).
 * A node already recorded (HBC_EEXIST: a restart or a wiped node rejoining)
 * keeps its record; only its configuration entry and role are fixed.
 * Membership changes run one at a time, queued. Leader only.
 */
int raft_node_join(struct raft_node *rn, const Hbc__NodeJoin *join, const char *proposer,
                   raft_node_cb cb, void *arg, struct err *e);

/* Remove node_id from the Raft configuration and the state machine. Leader only. */
int raft_node_remove(struct raft_node *rn, const char *node_id, const char *proposer,
                     raft_node_cb cb, void *arg, struct err *e);

/* True once this node holds a Raft configuration (bootstrapped or admitted). */
bool raft_node_is_member(const struct raft_node *rn);

/*
 * True when this node holds a Raft configuration that does not list it: it
 * was removed from the cluster (and learned it before it stopped).
 */
bool raft_node_removed(const struct raft_node *rn);

/* True if Raft id `id` is in the Raft configuration this node holds. */
bool raft_node_in_config(const struct raft_node *rn, raft_id id);

/* True if this node is the leader now. */
bool raft_node_is_leader(const struct raft_node *rn);

/*
 * The data-plane address of the leader as the state machine knows it, or
 * NULL when there is no known leader; valid until the next loop iteration.
 */
const char *raft_node_leader_data_address(struct raft_node *rn);

/* Fill reply (its strings and arrays are allocated with hbc_malloc; see raft_node_status_free). */
int raft_node_status(struct raft_node *rn, Hbc__ClusterStatusReply *reply, struct err *e);
void raft_node_status_free(Hbc__ClusterStatusReply *reply);

/* The state machine the node applies to (borrowed). */
struct fsm *raft_node_fsm(struct raft_node *rn);

#endif /* HBC_NODE_RAFT_NODE_H */
