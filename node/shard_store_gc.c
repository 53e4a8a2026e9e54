/* What garbage collection asks of the shard store: chunks listed by vault, old shards of a chunk.
 */
#include <string.h>

#include "common/alloc.h"
#include "node/shard_store_internal.h"

int shard_store_list_chunks(struct shard_store *s, const uint8_t vault_id[SHARD_STORE_VAULT_ID_LEN],
                            const uint8_t *after, size_t max,
                            uint8_t (*ids)[SHARD_STORE_CHUNK_ID_LEN], uint64_t *stored_at_ms,
                            size_t *n, bool *more, struct err *e)
{
    *n = 0;
    *more = false;
    if (max == 0) {
        return err_set(e, HBC_EINVAL, "list chunks: max 0");
    }
    uint8_t seek[SHARD_STORE_KEY_LEN];
    size_t seek_len = SHARD_STORE_VAULT_ID_LEN;
    memcpy(seek, vault_id, SHARD_STORE_VAULT_ID_LEN);
    if (after != NULL) {
        /* Just past every shard of `after`: its prefix followed by the largest index. */
        memcpy(seek + SHARD_STORE_VAULT_ID_LEN, after, SHARD_STORE_CHUNK_ID_LEN);
        store_put_be32(seek + CHUNK_PREFIX_LEN, UINT32_MAX);
        seek_len = SHARD_STORE_KEY_LEN;
    }
    rocksdb_iterator_t *it = rocksdb_create_iterator_cf(s->db, s->ro, s->cf[CF_SHARDS]);
    int rc = 0;
    for (rocksdb_iter_seek(it, (const char *)seek, seek_len); rocksdb_iter_valid(it);
         rocksdb_iter_next(it)) {
        size_t kn;
        size_t vn;
        const uint8_t *k = (const uint8_t *)rocksdb_iter_key(it, &kn);
        const char *v = rocksdb_iter_value(it, &vn);
        if (kn != SHARD_STORE_KEY_LEN || memcmp(k, vault_id, SHARD_STORE_VAULT_ID_LEN) != 0) {
            break;
        }
        const uint8_t *chunk = k + SHARD_STORE_VAULT_ID_LEN;
        if (after != NULL && memcmp(chunk, after, SHARD_STORE_CHUNK_ID_LEN) <= 0) {
            continue;
        }
        struct record_loc loc;
        if (store_loc_decode(v, vn, &loc, e) != 0) {
            rc = err_wrap(e, "list chunks");
            break;
        }
        if (*n > 0 && memcmp(ids[*n - 1], chunk, SHARD_STORE_CHUNK_ID_LEN) == 0) {
            if (loc.stored_at_ms > stored_at_ms[*n - 1]) {
                stored_at_ms[*n - 1] = loc.stored_at_ms;
            }
            continue;
        }
        if (*n == max) {
            *more = true;
            break;
        }
        memcpy(ids[*n], chunk, SHARD_STORE_CHUNK_ID_LEN);
        stored_at_ms[*n] = loc.stored_at_ms;
        (*n)++;
    }
    if (rc == 0) {
        char *errptr = NULL;
        rocksdb_iter_get_error(it, &errptr);
        if (errptr != NULL) {
            rc = store_rocks_error(e, errptr, "list chunks");
        }
    }
    rocksdb_iter_destroy(it);
    return rc;
}

int shard_store_delete_old(struct shard_store *s, const uint8_t vault_id[SHARD_STORE_VAULT_ID_LEN],
                           const uint8_t (*chunk_ids)[SHARD_STORE_CHUNK_ID_LEN], size_t n,
                           uint64_t cutoff_ms, uint64_t *deleted, uint64_t *kept_young,
                           uint64_t *bytes, struct err *e)
{
    *deleted = 0;
    *kept_young = 0;
    *bytes = 0;
    size_t cap = 64;
    struct shard_key *keys = hbc_malloc(cap * sizeof *keys);
    uint64_t *lens = hbc_malloc(cap * sizeof *lens);
    if (keys == NULL || lens == NULL) {
        hbc_free(keys);
        hbc_free(lens);
        return err_set(e, HBC_ENOMEM, "delete old shards");
    }
    size_t nkeys = 0;
    rocksdb_iterator_t *it = rocksdb_create_iterator_cf(s->db, s->ro, s->cf[CF_SHARDS]);
    int rc = 0;
    uint8_t prefix[CHUNK_PREFIX_LEN];
    memcpy(prefix, vault_id, SHARD_STORE_VAULT_ID_LEN);
    for (size_t i = 0; i < n && rc == 0; i++) {
        memcpy(prefix + SHARD_STORE_VAULT_ID_LEN, chunk_ids[i], SHARD_STORE_CHUNK_ID_LEN);
        for (rocksdb_iter_seek(it, (const char *)prefix, sizeof prefix); rocksdb_iter_valid(it);
             rocksdb_iter_next(it)) {
            size_t kn;
            size_t vn;
            const uint8_t *k = (const uint8_t *)rocksdb_iter_key(it, &kn);
            const char *v = rocksdb_iter_value(it, &vn);
            if (kn != SHARD_STORE_KEY_LEN || memcmp(k, prefix, sizeof prefix) != 0) {
                break;
            }
            struct record_loc loc;
            if (store_loc_decode(v, vn, &loc, e) != 0) {
                rc = err_wrap(e, "delete old shards");
                break;
            }
            if (loc.stored_at_ms >= cutoff_ms) {
                (*kept_young)++; /* this node stored it within the grace period: keep it */
                continue;
            }
            if (nkeys == cap) {
                struct shard_key *nk = hbc_realloc(keys, 2 * cap * sizeof *keys);
                uint64_t *nl = nk != NULL ? hbc_realloc(lens, 2 * cap * sizeof *lens) : NULL;
                if (nk != NULL) {
                    keys = nk;
                }
                if (nl == NULL) {
                    rc = err_set(e, HBC_ENOMEM, "delete old shards");
                    break;
                }
                lens = nl;
                cap *= 2;
            }
            memcpy(keys[nkeys].vault_id, vault_id, SHARD_STORE_VAULT_ID_LEN);
            memcpy(keys[nkeys].chunk_id, chunk_ids[i], SHARD_STORE_CHUNK_ID_LEN);
            keys[nkeys].index = store_get_be32(k + CHUNK_PREFIX_LEN);
            lens[nkeys] = store_record_size(loc.length);
            nkeys++;
        }
    }
    rocksdb_iter_destroy(it);
    int *results = rc == 0 && nkeys > 0 ? hbc_calloc(nkeys, sizeof *results) : NULL;
    if (rc == 0 && nkeys > 0 && results == NULL) {
        rc = err_set(e, HBC_ENOMEM, "delete old shards");
    }
    for (size_t done = 0; rc == 0 && done < nkeys;) {
        size_t batch = nkeys - done < SHARD_STORE_MAX_BATCH ? nkeys - done : SHARD_STORE_MAX_BATCH;
        rc = shard_store_delete(s, keys + done, batch, results + done, e);
        for (size_t j = done; rc == 0 && j < done + batch; j++) {
            if (results[j] == 0) {
                (*deleted)++;
                *bytes += lens[j];
            }
        }
        done += batch;
    }
    hbc_free(results);
    hbc_free(keys);
    hbc_free(lens);
    return rc;
}
