/* List the chunks of one vault a shard store holds, with the shard indexes of each (the mover). */
#ifndef HBC_NODE_SHARD_STORE_LIST_H
#define HBC_NODE_SHARD_STORE_LIST_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/err.h"
#include "node/shard_store.h"

#define SHARD_STORE_LIST_MAX 4096u /* chunks per page at most */

#define SHARD_LIST_SCHEMES 7u /* other schemes than the base one per chunk (8 copies at most) */

/* The shards of a listed chunk in one scheme other than its vault's base scheme. */
struct shard_list_scheme {
    uint8_t k;     /* the scheme's data shards */
    uint8_t m;     /* its parity shards */
    uint32_t mask; /* bit s: its shard s is held */
};

/* One listed chunk. */
struct shard_list_entry {
    uint8_t chunk_id[SHARD_STORE_CHUNK_ID_LEN]; /* the chunk */
    uint32_t mask;     /* bit s: shard s of the base scheme (untagged slot s) is held */
    unsigned nschemes; /* entries in schemes */
    struct shard_list_scheme schemes[SHARD_LIST_SCHEMES]; /* tagged slots (common/shard_scheme.h),
                                                            by first appearance */
};

/*
 * The chunks of vault_id, in chunk id order, strictly after `after` (32
 * bytes, or NULL: from the first), at most limit (1..SHARD_STORE_LIST_MAX)
 * of them, into out (limit entries, caller's); *n gets how many and *more
 * whether more follow. Shards of every scheme are listed (a chunk with more
 * than SHARD_LIST_SCHEMES other schemes lists the first ones). With groups > 0 only chunks whose
 * placement group (client/placement_map.h) is `group` are listed. Any thread. Returns 0,
 * HBC_EINVAL, HBC_ESTORE.
 */
int shard_store_list_group(struct shard_store *s, const uint8_t vault_id[SHARD_STORE_VAULT_ID_LEN],
                           const uint8_t *after, uint32_t groups, uint32_t group, size_t limit,
                           struct shard_list_entry *out, size_t *n, bool *more, struct err *e);

/*
 * shard_store_exists_batch() counting only shards whose slot
 * (common/shard_scheme.h) lies in lo..hi: present[i] (n entries, caller's)
 * says whether chunk_ids[i] of vault_id has one. The base scheme is
 * 0..SHARD_SLOT_TAG-1, another scheme k+m shard_slot(.., k, m, 0)..that | 0xff.
 * Any thread. Returns 0 or HBC_ESTORE.
 */
int shard_store_exists_slots(struct shard_store *s,
                             const uint8_t vault_id[SHARD_STORE_VAULT_ID_LEN],
                             const uint8_t (*chunk_ids)[SHARD_STORE_CHUNK_ID_LEN], size_t n,
                             uint32_t lo, uint32_t hi, bool *present, struct err *e);

#endif /* HBC_NODE_SHARD_STORE_LIST_H */
