/* Shard identity across erasure schemes: the slot number that names a shard in keys and stores. */
#ifndef HBC_COMMON_SHARD_SCHEME_H
#define HBC_COMMON_SHARD_SCHEME_H

#include <stdbool.h>
#include <stdint.h>

#include "common/err.h"

/*
 * A vault's copies may use different Reed-Solomon schemes (docs/placement.md,
 * "Per-copy schemes"). Copies with the same scheme hold identical shards; two
 * schemes of one chunk hold different ones, so a shard is named by (vault,
 * chunk, scheme, index). The vault's base scheme (copy 0's, the vault
 * record's k and m) keeps the name shards always had, so existing data and
 * vaults with one scheme are unchanged; another scheme's shards get a tagged
 * slot:
 *
 *   base scheme:  slot = index                                 (0..23)
 *   other scheme: slot = 0x80000000 | k << 16 | m << 8 | index (k 1..16, m 0..8, index < k+m)
 *
 * The slot is the u32 the node's store key ends with (vault id || chunk id ||
 * be32 slot), so every shard of a chunk, whatever its scheme, shares the
 * 48-byte chunk prefix that garbage collection lists and sweeps by. On the
 * wire (ShardKey, ShardBlob) index stays the plain index and the optional
 * scheme_k/scheme_m fields carry the scheme of a tagged slot.
 */

#define SHARD_SLOT_TAG 0x80000000u /* set in every tagged slot */

/* The slot of shard `index` of scheme k+m in a vault whose base scheme is base_k+base_m. */
uint32_t shard_slot(unsigned base_k, unsigned base_m, unsigned k, unsigned m, unsigned index);

/* Whether slot names a shard of a scheme other than its vault's base scheme. */
bool shard_slot_tagged(uint32_t slot);

/* The plain shard index of a slot (0..23). */
unsigned shard_slot_index(uint32_t slot);

/*
 * The scheme and index of a tagged slot; for an untagged slot *k and *m are 0
 * (the base scheme, which only the vault record knows) and *index the slot.
 */
void shard_slot_split(uint32_t slot, unsigned *k, unsigned *m, unsigned *index);

/*
 * The slot named by a ShardKey or ShardBlob's index and optional scheme
 * fields (untrusted). Returns 0 and sets *slot; HBC_ESCHEME when only one of
 * the scheme fields is present, k is outside 1..16, m outside 0..8, or the
 * index is not below k+m (without a scheme: not below 24), with a message
 * naming what was wrong.
 */
int shard_slot_from_wire(uint32_t index, bool has_k, uint32_t k, bool has_m, uint32_t m,
                         uint32_t *slot, struct err *e);

/* The wire fields of a slot: *index, and *has_scheme with *k, *m for a tagged one. */
void shard_slot_to_wire(uint32_t slot, uint32_t *index, bool *has_scheme, uint32_t *k, uint32_t *m);

#endif /* HBC_COMMON_SHARD_SCHEME_H */
