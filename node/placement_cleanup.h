/* Deleting the shards an older placement epoch left on this node once the current one is settled.
 */
#ifndef HBC_NODE_PLACEMENT_CLEANUP_H
#define HBC_NODE_PLACEMENT_CLEANUP_H

#include <stdint.h>

#include "client/placement_map.h"
#include "common/err.h"
#include "node/fsm.h"
#include "node/shard_store.h"

/*
 * When a placement epoch moves a group's shards, the nodes of the older epoch
 * keep theirs (readers with an older map may still use them). Once every
 * group of a vault is settled in the current epoch E (no PlacementMap
 * fallback) and has stayed so for `grace` seconds as this node saw it, the
 * node deletes the shards of that vault it holds that E does not assign it:
 * for each held shard (every scheme, common/shard_scheme.h) of each chunk,
 * computed from this node's own applied state (the epoch record and vault
 * record in its state machine), never a shard E assigns it, and never a
 * reference list (kept whole on every node). The current epoch is checked
 * again before each delete batch: if it moved on, the pass stops. A node
 * that is not in E (draining, DOWN) deletes nothing. Log line:
 * event=placement_cleanup vault=... epoch=... count=...
 *
 * One tracker per node, used by the mover thread only.
 */

struct pcleanup;

/* A new tracker (grace_s seconds; 0 disables cleanup). Returns 0 or HBC_ENOMEM. */
int pcleanup_new(uint32_t grace_s, struct pcleanup **out, struct err *e);

/* Free a tracker. NULL is a no-op. */
void pcleanup_free(struct pcleanup *pc);

/*
 * One look at vault v (borrowed) at monotonic time now_ns: start or continue
 * its settled timer, and once grace has passed in the same settled epoch,
 * delete this node's unassigned shards of the vault (once per epoch).
 * *deleted (may be NULL) gets how many shards went. Returns 0, or the store's
 * or state machine's error (the next pass tries again).
 */
int pcleanup_vault(struct pcleanup *pc, struct fsm *f, struct shard_store *s, const char *node_id,
                   const struct pmap_vault *v, uint64_t now_ns, uint64_t *deleted, struct err *e);

#endif /* HBC_NODE_PLACEMENT_CLEANUP_H */
