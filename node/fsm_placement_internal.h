/* Inside the state machine: the placement hooks node/fsm_apply.c calls (node/fsm_placement.c). */
#ifndef HBC_NODE_FSM_PLACEMENT_INTERNAL_H
#define HBC_NODE_FSM_PLACEMENT_INTERNAL_H

#include <stdint.h>

#include "node/fsm_internal.h"

/*
 * A node command changed node node_id to `after` (NULL: removed). When the
 * UP nodes' topology differs from the current epoch's, add a new epoch
 * (cause is stored with it, borrowed) to c's batch. Returns 0 or a local
 * failure.
 */
int fsm_placement_node_changed(struct apply_ctx *c, const char *node_id, const Hbc__NodeInfo *after,
                               const char *cause, struct err *e);

/* Apply PlacementGroupDone (contract of struct apply_ctx's handlers). */
int fsm_apply_group_done(struct apply_ctx *c, const Hbc__PlacementGroupDone *d, int *code,
                         struct err *e);

/*
 * settled[g] (vi->placement_groups entries) receives group g's latest
 * settled epoch at or below current. Returns 0 or a local failure.
 */
int fsm_placement_settled(struct fsm *f, const Hbc__VaultInfo *vi, uint64_t current,
                          uint64_t *settled, struct err *e);

#endif /* HBC_NODE_FSM_PLACEMENT_INTERNAL_H */
