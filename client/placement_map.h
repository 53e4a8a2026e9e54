/* Placement groups and epochs: which nodes hold a vault's group in a given epoch (pure). */
#ifndef HBC_CLIENT_PLACEMENT_MAP_H
#define HBC_CLIENT_PLACEMENT_MAP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "client/placement.h"
#include "client/policy.h"
#include "common/err.h"
#include "hbc.pb-c.h"

/*
 * A vault created with placement groups (VaultInfo.placement_groups = G, a
 * power of two) places whole groups instead of single chunks. A chunk's group
 * is its first 8 bytes read big-endian, modulo G. A group's nodes in an epoch
 * are what policy_chunk_nodes() (or, without a policy, placement_chunk_nodes())
 * answers for the group key "HBCPGRP" 0x00 || be32 group || 20 zero bytes in
 * place of the chunk id, over the epoch's topology (PlacementEpoch.nodes:
 * the nodes that were UP, sorted by id). Every node and client computes the
 * same map from the replicated epoch records without asking anyone. Both the
 * node (state machine, mover) and the client link this file.
 */

#define PMAP_MAX_GROUPS 65536u    /* most groups per vault */
#define PMAP_DEFAULT_GROUPS 1024u /* groups a new vault gets */
#define PMAP_NONE UINT32_MAX      /* no node: the copy cannot be placed in that epoch */

/* A vault as placement sees it. */
struct pmap_vault {
    uint8_t vault_id[16];                /* its id */
    unsigned copies;                     /* copies */
    unsigned k;                          /* data shards of the base scheme (copy 0's) */
    unsigned m;                          /* parity shards of the base scheme */
    uint32_t groups;                     /* placement groups (0: per-chunk placement) */
    uint64_t created_epoch;              /* the epoch current when it was created */
    bool has_policy;                     /* placed by policy */
    struct policy policy;                /* the policy (has_policy) */
    char home_site[POLICY_SITE_MAX + 1]; /* its home site (has_policy) */
};

/* An epoch's topology, borrowing the strings of the PlacementEpoch it came from. */
struct pmap_epoch {
    uint64_t epoch;               /* its number */
    uint64_t previous;            /* the epoch before (0: none) */
    size_t n;                     /* nodes */
    struct policy_node *pol;      /* the nodes for policy placement (hbc_malloc'ed) */
    struct placement_node *plain; /* the same for placement without a policy (hbc_malloc'ed) */
};

/*
 * Fill *out from a vault record (borrowed; nothing kept). Returns 0,
 * HBC_EFORMAT (bad id, copies, k, m, groups not a power of two, or a policy
 * that does not validate).
 */
int pmap_vault_from_info(const Hbc__VaultInfo *v, struct pmap_vault *out, struct err *e);

/*
 * Fill *out from an epoch record, which must outlive *out (its strings are
 * borrowed). Free with pmap_epoch_free(). Returns 0, HBC_EFORMAT (nodes not
 * sorted by distinct ids), HBC_ENOMEM.
 */
int pmap_epoch_from_proto(const Hbc__PlacementEpoch *pe, struct pmap_epoch *out, struct err *e);

/*
 * Per-copy schemes (client/pmap_scheme.c). Copy c of a vault with a policy
 * uses its rule's k+m; without a policy every copy uses the record's. The
 * record's k+m (copy 0's) is the base scheme, whose shards keep their plain
 * index as slot (common/shard_scheme.h).
 */
#define PMAP_MAX_SCHEMES PLACEMENT_MAX_COPIES /* distinct schemes of a vault at most */

/* One erasure scheme. */
struct pmap_scheme {
    unsigned k; /* data shards */
    unsigned m; /* parity shards */
};

/* Copy c's data shards, parity shards, and width (k + m). */
unsigned pmap_copy_k(const struct pmap_vault *v, unsigned c);
unsigned pmap_copy_m(const struct pmap_vault *v, unsigned c);
unsigned pmap_copy_width(const struct pmap_vault *v, unsigned c);

/*
 * The stride of placement arrays: the widest copy's k + m (k + m when every
 * copy uses the base scheme). pmap_group_nodes() fills copy c's slots
 * s < pmap_copy_width(v, c) and sets the rest of its stride to PMAP_NONE.
 */
unsigned pmap_stride(const struct pmap_vault *v);

/* The store slot (common/shard_scheme.h) of copy c's shard s. */
uint32_t pmap_slot(const struct pmap_vault *v, unsigned c, unsigned s);

/*
 * The vault's distinct schemes into out (PMAP_MAX_SCHEMES entries, caller's),
 * the base scheme first, then in copy order; copy_scheme (may be NULL;
 * PMAP_MAX_SCHEMES entries) gets each copy's position in out. Returns how many.
 */
unsigned pmap_schemes(const struct pmap_vault *v, struct pmap_scheme *out,
                      unsigned copy_scheme[PMAP_MAX_SCHEMES]);

/*
 * Per scheme (in pmap_schemes() order), which shard indexes of a group node
 * `node` holds in the epoch: masks[x] bit s is set when some copy of scheme x
 * puts its shard s there. Returns 0 or as pmap_group_nodes().
 */
int pmap_node_masks(const struct pmap_vault *v, const struct pmap_epoch *ep, uint32_t group,
                    unsigned node, uint32_t masks[PMAP_MAX_SCHEMES], struct err *e);

/* Free what pmap_epoch_from_proto() allocated. NULL or zeroed: no-op. */
void pmap_epoch_free(struct pmap_epoch *ep);

/* The group of chunk_id among groups (a power of two). */
uint32_t pmap_group_of(const uint8_t chunk_id[32], uint32_t groups);

/*
 * The nodes of group `group` of vault v in epoch ep: out[c * width + s] is
 * the index into ep's nodes of copy c's shard s (c < v->copies, s <
 * pmap_copy_width(v, c); width must be pmap_stride(v), and the slots of a
 * copy past its own width are PMAP_NONE). A copy that the epoch's topology cannot place (no
 * eligible node) gets PMAP_NONE in every slot, and *placeable (may be NULL) becomes false. Returns
 * 0, HBC_EINVAL (width not pmap_stride(v)) or HBC_ENOMEM.
 */
int pmap_group_nodes(const struct pmap_vault *v, const struct pmap_epoch *ep, uint32_t group,
                     unsigned width, unsigned *out, bool *placeable, struct err *e);

/*
 * Which shard indexes of the base scheme a group node `node` (an index into
 * ep's nodes) holds in the epoch: bit s of the result is set when some copy
 * of the base scheme puts shard s there (pmap_node_masks() for every scheme). Returns 0 or as
 * pmap_group_nodes(); *mask 0 when it holds none.
 */
int pmap_node_mask(const struct pmap_vault *v, const struct pmap_epoch *ep, uint32_t group,
                   unsigned node, uint32_t *mask, struct err *e);

#endif /* HBC_CLIENT_PLACEMENT_MAP_H */
