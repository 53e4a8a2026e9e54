/* Where each shard of a chunk goes: weighted rendezvous hashing over the cluster's node list. */
#ifndef HBC_CLIENT_PLACEMENT_H
#define HBC_CLIENT_PLACEMENT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/err.h"

/*
 * Until the 3-2-1-1-0 placement map exists, this one function decides, for
 * every shard the client writes or reads, which node holds it. Nothing else
 * chooses a node, so the placement issue replaces this file alone.
 *
 * The rule is a stored format: a reader finds shards only where the writer
 * put them, so any change to it (hashes, tiers, order) strands existing data
 * unless a placement epoch records the change. The tests pin it.
 *
 * Inputs. The nodes are those the state machine lists (except nodes still
 * joining), sorted by node id with strcmp, each with its site and capacity.
 * Nodes that are down keep their place: their shards fail and readers fall
 * back. The weight of a node is its capacity in bytes (0 counts as 1).
 *
 * Hashes (all 64-bit, little-endian where bytes become integers):
 *   fnv(b)        FNV-1a 64 of the bytes b
 *   mix(x)        the splitmix64 finaliser: x ^= x >> 30; x *= 0xbf58476d1ce4e5b9;
 *                 x ^= x >> 27; x *= 0x94d049bb133111eb; x ^= x >> 31
 *   seed          mix(fnv(vault id (16 bytes) || chunk id (32 bytes)))
 *   node key      mix(fnv(node id))       site key   mix(fnv(site) ^ SITE_SALT)
 *   slot salt     mix((copy * 64 + slot + 1) * 0x9e3779b97f4a7c15)
 *   draw(x)       u = ((x >> 11) + 0.5) / 2^53 in (0, 1), then -ln(u) / weight
 *                 (IEEE double, libm's log)
 * A draw is an exponential race: among candidates the smallest draw wins,
 * and a node of weight w wins a single pick with probability w / (sum of w).
 * When every node (or every site) has the same weight the draws compare
 * exactly as the integers x >> 11 do (the largest wins), and that integer
 * comparison is what runs, so the common case involves no floating point.
 * Ties (never seen in practice) go to the lower node index.
 *
 * Sites. Each site's weight is the sum of its nodes' weights; the sites are
 * ranked by draw(mix(seed ^ site key)) and copy c's home site is the site at
 * rank c mod (number of sites), so the copies of a chunk start in different
 * sites whenever there are enough of them.
 *
 * Shards. Copies are placed in order 0, 1, ...; within a copy, slots (shard
 * indexes) 0..width-1 in order. For copy c, slot s, every node not yet used
 * by this copy (in this pass) is a candidate, and the winner is the smallest
 * (tier, draw(mix(seed ^ node key ^ slot salt))), where
 *     tier = 2 * (how many earlier copies of this chunk use the node)
 *          + (1 if the node is outside the copy's home site)
 * So a copy takes distinct nodes, first those no other copy uses in its home
 * site, then such nodes elsewhere, and reuses other copies' nodes only when
 * it must. When the copy has used every node (fewer nodes than width), a new
 * pass starts and the next slots wrap around onto nodes again, in the same
 * order of preference.
 *
 * Why per-slot draws rather than one ranking cut into slices: adding a node
 * then moves only the slots it wins (about width/(n+1) of a copy's slots,
 * plus a few that follow from tiers), instead of shifting every later slot.
 */

#define PLACEMENT_MAX_COPIES 8   /* copies of a chunk (the state machine's limit) */
#define PLACEMENT_MAX_WIDTH 24   /* shards per copy (ERASURE_MAX_SHARDS) */
#define PLACEMENT_MAX_NODES 4096 /* nodes in the list */

/* One node as placement sees it; the strings are borrowed for the call. */
struct placement_node {
    const char *node_id; /* unique; the array is sorted by it (strcmp), which is checked */
    const char *site;    /* the node's site (any string; "" is a site like any other) */
    uint64_t capacity;   /* bytes; the weight (0 counts as 1) */
};

/*
 * The nodes holding the width shards of copy `copy` of chunk chunk_id in
 * vault vault_id: out_idx[s] (width entries) receives the index into nodes
 * of shard s's node. Deterministic: the same inputs always give the same
 * answer, on any machine. All arrays are borrowed. Any thread.
 * Returns 0, or HBC_EINVAL when n is 0 or above PLACEMENT_MAX_NODES, width is
 * 0 or above PLACEMENT_MAX_WIDTH, copy is PLACEMENT_MAX_COPIES or more, or the
 * nodes are not sorted by distinct node ids.
 */
int placement_shard_nodes(const uint8_t vault_id[16], const uint8_t chunk_id[32], unsigned copy,
                          unsigned width, const struct placement_node *nodes, size_t n,
                          unsigned *out_idx, struct err *e);

/*
 * The same for copies 0..copies-1 at once (what placement_shard_nodes()
 * computes on the way): out_idx[c * width + s] is shard s of copy c.
 * Returns as placement_shard_nodes() (copies 1..PLACEMENT_MAX_COPIES).
 */
int placement_chunk_nodes(const uint8_t vault_id[16], const uint8_t chunk_id[32], unsigned copies,
                          unsigned width, const struct placement_node *nodes, size_t n,
                          unsigned *out_idx, struct err *e);

/*
 * The erasure scheme and copy count a vault created on a cluster of n nodes
 * gets when asked for copies, k and m, so that a stripe fits on distinct
 * nodes: when k + m > n, m becomes min(m, n / 2) and k becomes n - m (at
 * least 1); copies becomes at most n. Returns true if anything changed.
 */
bool placement_fit(size_t n, unsigned *copies, unsigned *k, unsigned *m);

#endif /* HBC_CLIENT_PLACEMENT_H */
