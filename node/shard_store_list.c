/* List the chunks of one vault a shard store holds: an index scan by vault id prefix. */
#include "node/shard_store_list.h"

#include <string.h>

#include "client/placement_map.h"
#include "common/shard_scheme.h"
#include "node/shard_store_internal.h"

/* Count slot (common/shard_scheme.h) into the entry of its chunk. */
static void list_add(struct shard_list_entry *en, uint32_t slot)
{
    unsigned k, m, index;
    shard_slot_split(slot, &k, &m, &index);
    if (index >= 32) {
        return;
    }
    if (!shard_slot_tagged(slot)) {
        en->mask |= (uint32_t)1 << index;
        return;
    }
    unsigned x = 0;
    while (x < en->nschemes && (en->schemes[x].k != k || en->schemes[x].m != m)) {
        x++;
    }
    if (x == SHARD_LIST_SCHEMES) {
        return;
    }
    if (x == en->nschemes) {
        en->schemes[x] = (struct shard_list_scheme){.k = (uint8_t)k, .m = (uint8_t)m};
        en->nschemes++;
    }
    en->schemes[x].mask |= (uint32_t)1 << index;
}

int shard_store_list_group(struct shard_store *s, const uint8_t vault_id[SHARD_STORE_VAULT_ID_LEN],
                           const uint8_t *after, uint32_t groups, uint32_t group, size_t limit,
                           struct shard_list_entry *out, size_t *n, bool *more, struct err *e)
{
    *n = 0;
    *more = false;
    if (limit == 0 || limit > SHARD_STORE_LIST_MAX ||
        (groups > 0 && ((groups & (groups - 1)) != 0 || group >= groups))) {
        return err_set(e, HBC_EINVAL, "list chunks: limit %zu, group %u of %u", limit, group,
                       groups);
    }
    rocksdb_iterator_t *it = rocksdb_create_iterator_cf(s->db, s->ro, s->cf[CF_SHARDS]);
    uint8_t seek[SHARD_STORE_KEY_LEN];
    memcpy(seek, vault_id, SHARD_STORE_VAULT_ID_LEN);
    size_t seek_len = SHARD_STORE_VAULT_ID_LEN;
    if (after != NULL) {
        /* Past every index of `after`: its 32 bytes then the largest index. */
        memcpy(seek + SHARD_STORE_VAULT_ID_LEN, after, SHARD_STORE_CHUNK_ID_LEN);
        memset(seek + CHUNK_PREFIX_LEN, 0xff, 4);
        seek_len = SHARD_STORE_KEY_LEN;
    }
    rocksdb_iter_seek(it, (const char *)seek, seek_len);
    if (after != NULL && rocksdb_iter_valid(it)) {
        size_t klen = 0;
        const char *k = rocksdb_iter_key(it, &klen);
        if (klen == seek_len && memcmp(k, seek, seek_len) == 0) {
            rocksdb_iter_next(it);
        }
    }
    for (; rocksdb_iter_valid(it); rocksdb_iter_next(it)) {
        size_t klen = 0;
        const uint8_t *k = (const uint8_t *)rocksdb_iter_key(it, &klen);
        if (klen != SHARD_STORE_KEY_LEN || memcmp(k, vault_id, SHARD_STORE_VAULT_ID_LEN) != 0) {
            break;
        }
        const uint8_t *chunk = k + SHARD_STORE_VAULT_ID_LEN;
        uint32_t index = store_get_be32(k + CHUNK_PREFIX_LEN);
        if (groups > 0 && pmap_group_of(chunk, groups) != group) {
            continue;
        }
        if (*n == 0 || memcmp(out[*n - 1].chunk_id, chunk, SHARD_STORE_CHUNK_ID_LEN) != 0) {
            if (*n == limit) {
                *more = true;
                break;
            }
            memset(&out[*n], 0, sizeof out[*n]);
            memcpy(out[*n].chunk_id, chunk, SHARD_STORE_CHUNK_ID_LEN);
            (*n)++;
        }
        list_add(&out[*n - 1], index);
    }
    char *errptr = NULL;
    rocksdb_iter_get_error(it, &errptr);
    rocksdb_iter_destroy(it);
    return errptr != NULL ? store_rocks_error(e, errptr, "list chunks") : 0;
}

int shard_store_exists_slots(struct shard_store *s,
                             const uint8_t vault_id[SHARD_STORE_VAULT_ID_LEN],
                             const uint8_t (*chunk_ids)[SHARD_STORE_CHUNK_ID_LEN], size_t n,
                             uint32_t lo, uint32_t hi, bool *present, struct err *e)
{
    rocksdb_iterator_t *it = rocksdb_create_iterator_cf(s->db, s->ro, s->cf[CF_SHARDS]);
    uint8_t seek[SHARD_STORE_KEY_LEN];
    memcpy(seek, vault_id, SHARD_STORE_VAULT_ID_LEN);
    store_put_be32(seek + CHUNK_PREFIX_LEN, lo);
    for (size_t i = 0; i < n; i++) {
        memcpy(seek + SHARD_STORE_VAULT_ID_LEN, chunk_ids[i], SHARD_STORE_CHUNK_ID_LEN);
        rocksdb_iter_seek(it, (const char *)seek, sizeof seek);
        present[i] = false;
        if (rocksdb_iter_valid(it)) {
            size_t kn = 0;
            const uint8_t *k = (const uint8_t *)rocksdb_iter_key(it, &kn);
            present[i] = kn == SHARD_STORE_KEY_LEN && memcmp(k, seek, CHUNK_PREFIX_LEN) == 0 &&
                         store_get_be32(k + CHUNK_PREFIX_LEN) <= hi;
        }
    }
    char *errptr = NULL;
    rocksdb_iter_get_error(it, &errptr);
    rocksdb_iter_destroy(it);
    return errptr != NULL ? store_rocks_error(e, errptr, "exists") : 0;
}
