/* Shard identity across erasure schemes (rules in shard_scheme.h). */
#include "common/shard_scheme.h"

#include "common/erasure.h"

uint32_t shard_slot(unsigned base_k, unsigned base_m, unsigned k, unsigned m, unsigned index)
{
    if (k == base_k && m == base_m) {
        return index;
    }
    return SHARD_SLOT_TAG | (uint32_t)(k & 0xff) << 16 | (uint32_t)(m & 0xff) << 8 |
           (uint32_t)(index & 0xff);
}

bool shard_slot_tagged(uint32_t slot)
{
    return (slot & SHARD_SLOT_TAG) != 0;
}

unsigned shard_slot_index(uint32_t slot)
{
    return shard_slot_tagged(slot) ? slot & 0xff : slot;
}

void shard_slot_split(uint32_t slot, unsigned *k, unsigned *m, unsigned *index)
{
    if (shard_slot_tagged(slot)) {
        *k = (slot >> 16) & 0xff;
        *m = (slot >> 8) & 0xff;
        *index = slot & 0xff;
    } else {
        *k = 0;
        *m = 0;
        *index = slot;
    }
}

int shard_slot_from_wire(uint32_t index, bool has_k, uint32_t k, bool has_m, uint32_t m,
                         uint32_t *slot, struct err *e)
{
    *slot = 0;
    if (has_k != has_m) {
        return err_set(e, HBC_ESCHEME, "shard %u names scheme_%s without scheme_%s", index,
                       has_k ? "k" : "m", has_k ? "m" : "k");
    }
    if (!has_k) {
        if (index >= ERASURE_MAX_SHARDS) {
            return err_set(e, HBC_ESCHEME, "shard index %u (at most %d)", index,
                           ERASURE_MAX_SHARDS - 1);
        }
        *slot = index;
        return 0;
    }
    if (k < 1 || k > ERASURE_MAX_K || m > ERASURE_MAX_M) {
        return err_set(e, HBC_ESCHEME, "shard scheme %u+%u (k 1..%d, m 0..%d)", k, m, ERASURE_MAX_K,
                       ERASURE_MAX_M);
    }
    if (index >= k + m) {
        return err_set(e, HBC_ESCHEME, "shard index %u of a %u+%u scheme", index, k, m);
    }
    *slot = SHARD_SLOT_TAG | k << 16 | m << 8 | index;
    return 0;
}

void shard_slot_to_wire(uint32_t slot, uint32_t *index, bool *has_scheme, uint32_t *k, uint32_t *m)
{
    unsigned sk, sm, si;
    shard_slot_split(slot, &sk, &sm, &si);
    *index = si;
    *has_scheme = shard_slot_tagged(slot);
    *k = sk;
    *m = sm;
}
