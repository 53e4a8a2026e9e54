/* Placement epochs in the state machine: records, the group-done command and the map query. */
#ifndef HBC_NODE_FSM_PLACEMENT_H
#define HBC_NODE_FSM_PLACEMENT_H

#include <stdbool.h>
#include <stdint.h>

#include "common/err.h"
#include "hbc.pb-c.h"
#include "node/fsm.h"

/*
 * Epochs (docs/placement.md). The topology of an epoch is every node in state
 * UP (id, site, region, media, worm, capacity), sorted by id. Applying a
 * NodeJoin, NodeUpdate or NodeRemove that changes that list makes a new
 * epoch: record "Pe" + be64 epoch in column family meta, and meta key
 * FSM_META_EPOCH holds the current number. A node that is DRAINING or DOWN
 * is not in the topology, so the new epoch places nothing on it.
 *
 * Groups. For a vault with placement groups, a group is settled in epoch E
 * when E is the vault's created_epoch or every target node of the group in E
 * reported PlacementGroupDone for E (record "Pg" + vault id + be32 group +
 * be64 E, PlacementGroupState.confirmed). Readers use the current epoch and
 * fall back to every older epoch down to the group's latest settled one.
 */

#define FSM_META_EPOCH "placement_epoch" /* meta: be64 current placement epoch (absent: 0) */

/* The current placement epoch, 0 before the first node joined. Any thread. */
uint64_t fsm_placement_current(struct fsm *f);

/*
 * The record of epoch `epoch` (free with fsm_record_free()). Any thread.
 * Returns 0, HBC_ENOTFOUND, HBC_ECORRUPT, HBC_ENOMEM, HBC_ESTORE.
 */
int fsm_placement_epoch(struct fsm *f, uint64_t epoch, Hbc__PlacementEpoch **out, struct err *e);

/*
 * The placement map: for vault_id (16 bytes, borrowed) its unsettled groups
 * and the epochs they need; for NULL, group totals over every grouped vault.
 * out is filled with allocated members; free them with fsm_placement_map_free().
 * Any thread. Returns 0, HBC_ENOTFOUND (no such vault), HBC_ECORRUPT, HBC_ENOMEM,
 * HBC_ESTORE.
 */
int fsm_placement_map(struct fsm *f, const uint8_t *vault_id, Hbc__PlacementMapReply *out,
                      struct err *e);

/* Free what fsm_placement_map() put into r (not r itself). */
void fsm_placement_map_free(Hbc__PlacementMapReply *r);

/*
 * Whether node_id may be removed: 0 when it is in no epoch's topology that a
 * group still needs (it is not UP and every group of every vault is settled
 * in the current epoch), HBC_ENOTDRAINED with a message (how many groups
 * remain, or that it is UP and vaults exist) otherwise. Any thread.
 */
int fsm_placement_removable(struct fsm *f, const char *node_id, struct err *e);

/*
 * Whether node_id has reported group `group` of vault_id done in epoch
 * `epoch` (*done). Any thread. Returns 0 or a local failure.
 */
int fsm_placement_done_by(struct fsm *f, const uint8_t vault_id[FSM_ID_LEN], uint32_t group,
                          uint64_t epoch, const char *node_id, bool *done, struct err *e);

#endif /* HBC_NODE_FSM_PLACEMENT_H */
