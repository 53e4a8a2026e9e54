/* A restarting member checks in with the leader: address changes and removal. */
#ifndef HBC_NODE_MEMBER_CHECK_H
#define HBC_NODE_MEMBER_CHECK_H

#include <stddef.h>

#include "common/err.h"
#include "hbc.pb-c.h"
#include "node/fsm.h"
#include "node/raft_id.h"
#include "node/raft_node.h"

/*
 * The Raft address the state machine records for raft id `id`, for the Raft
 * transport's resolver (raft_transport_set_resolver): writes it to out (len
 * bytes) and returns 1, or returns 0 when the state machine has no record of
 * that id. arg is the struct fsm (borrowed). Loop thread.
 */
int member_check_resolve(void *arg, raft_id id, char *out, size_t len);

/*
 * Answer a member check (a JoinRequest with member_check set) from the node
 * described by nj (borrowed; copied). Leader only. After a barrier (so that a
 * new leader has applied every entry of its predecessors), the node is:
 * - not in the Raft configuration, or with no record in the state machine:
 *   cb(HBC_EREMOVED) — it was removed and must not be admitted again silently;
 * - recorded with the addresses nj gives: cb(0), nothing is proposed;
 * - recorded with other addresses: a NodeUpdate with nj's data and Raft
 *   addresses is proposed and cb gets its result.
 * Returns 0 and calls cb once later, or an error without calling cb
 * (HBC_ENOTLEADER, HBC_EINVAL for a raft id not derived from the node id,
 * HBC_ENOMEM, HBC_EUNAVAILABLE).
 */
int member_check_answer(struct raft_node *rn, const Hbc__NodeJoin *nj, const char *proposer,
                        raft_node_cb cb, void *arg, struct err *e);

/*
 * Whether rec (a node record) names other addresses than data_address and
 * raft_address: then a NodeUpdate is due.
 */
bool member_check_moved(const Hbc__NodeInfo *rec, const char *data_address,
                        const char *raft_address);

/*
 * Propose a NodeUpdate of node_id's data and Raft addresses (borrowed) as
 * proposer; cb as raft_node_propose(). Leader only.
 */
int member_check_propose_update(struct raft_node *rn, const char *node_id, const char *data_address,
                                const char *raft_address, const char *proposer, raft_node_cb cb,
                                void *arg, struct err *e);

#endif /* HBC_NODE_MEMBER_CHECK_H */
