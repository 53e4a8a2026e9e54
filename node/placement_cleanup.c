/* Deleting the shards an older placement epoch left on this node (rules in placement_cleanup.h). */
#include "node/placement_cleanup.h"

#include <stdio.h>
#include <string.h>

#include "common/alloc.h"
#include "common/erasure.h"
#include "common/log.h"
#include "common/shard_scheme.h"
#include "node/fsm_placement.h"
#include "node/shard_store_list.h"

#define PCLEANUP_MAX_VAULTS 1024 /* vaults tracked at most (more wait their turn) */
#define PCLEANUP_PAGE 1024u      /* chunks listed per page */

/* What this node saw of one vault. */
struct vault_seen {
    uint8_t vault_id[16]; /* the vault */
    uint64_t epoch;       /* the epoch it was last seen settled in (0: not settled) */
    uint64_t since_ns;    /* since when (monotonic) */
    bool done;            /* cleaned up for epoch already */
};

struct pcleanup {
    uint64_t grace_ns;       /* settled this long before deleting (0: never) */
    struct vault_seen *seen; /* per vault */
    size_t nseen;            /* how many */
};

int pcleanup_new(uint32_t grace_s, struct pcleanup **out, struct err *e)
{
    struct pcleanup *pc = hbc_calloc(1, sizeof *pc);
    if (pc == NULL) {
        return err_set(e, HBC_ENOMEM, "placement cleanup");
    }
    pc->grace_ns = (uint64_t)grace_s * 1000000000ull;
    *out = pc;
    return 0;
}

void pcleanup_free(struct pcleanup *pc)
{
    if (pc != NULL) {
        hbc_free(pc->seen);
        hbc_free(pc);
    }
}

static struct vault_seen *seen_of(struct pcleanup *pc, const uint8_t vault_id[16])
{
    for (size_t i = 0; i < pc->nseen; i++) {
        if (memcmp(pc->seen[i].vault_id, vault_id, 16) == 0) {
            return &pc->seen[i];
        }
    }
    if (pc->nseen == PCLEANUP_MAX_VAULTS) {
        return NULL;
    }
    struct vault_seen *p = hbc_realloc(pc->seen, (pc->nseen + 1) * sizeof *p);
    if (p == NULL) {
        return NULL;
    }
    pc->seen = p;
    struct vault_seen *vs = &pc->seen[pc->nseen++];
    memset(vs, 0, sizeof *vs);
    memcpy(vs->vault_id, vault_id, 16);
    return vs;
}

/* Whether the stored shard 0 of chunk is a whole-object copy (k=1, m=0): a reference list. */
static bool plain_object(struct shard_store *s, const struct pmap_vault *v, const uint8_t chunk[32])
{
    struct shard_key key;
    memcpy(key.vault_id, v->vault_id, 16);
    memcpy(key.chunk_id, chunk, 32);
    key.index = 0;
    uint8_t *blob = NULL;
    size_t len = 0;
    struct err ge;
    struct erasure_shard_info info;
    bool plain = shard_store_get_alloc(s, &key, &blob, &len, &ge) == 0 && blob != NULL &&
                 erasure_shard_decode(blob, len, &info, NULL, NULL) == 0 && info.k == 1 &&
                 info.m == 0 && info.index == 0;
    hbc_free(blob);
    return plain;
}

/* One deletion batch, after checking that the epoch has not moved on. */
static int flush(struct shard_store *s, struct fsm *f, uint64_t epoch, struct shard_key *keys,
                 size_t *nkeys, uint64_t *deleted, struct err *e)
{
    if (*nkeys == 0) {
        return 0;
    }
    if (fsm_placement_current(f) != epoch) {
        *nkeys = 0;
        return HBC_ESTALEEPOCH; /* a newer epoch may assign these here again: stop */
    }
    int results[PCLEANUP_PAGE];
    int rv = shard_store_delete(s, keys, *nkeys, results, e);
    for (size_t i = 0; i < *nkeys && rv == 0; i++) {
        *deleted += results[i] == 0 ? 1 : 0;
    }
    *nkeys = 0;
    return rv;
}

/* Delete this node's shards of v that epoch ep (this node: me) does not assign it. */
static int sweep(struct shard_store *s, struct fsm *f, const struct pmap_vault *v,
                 const struct pmap_epoch *ep, unsigned me, uint64_t *deleted, struct err *e)
{
    struct pmap_scheme sch[PMAP_MAX_SCHEMES];
    const unsigned nsch = pmap_schemes(v, sch, NULL);
    struct shard_list_entry *page = hbc_calloc(PCLEANUP_PAGE, sizeof *page);
    struct shard_key *keys = hbc_calloc(PCLEANUP_PAGE, sizeof *keys);
    uint32_t *wanted = hbc_calloc((size_t)v->groups * PMAP_MAX_SCHEMES, sizeof *wanted);
    uint8_t *known = hbc_calloc(v->groups, 1);
    int rv = 0;
    if (page == NULL || keys == NULL || wanted == NULL || known == NULL) {
        rv = err_set(e, HBC_ENOMEM, "placement cleanup");
        goto out;
    }
    uint8_t after[32];
    bool has_after = false;
    size_t nkeys = 0;
    for (;;) {
        size_t n = 0;
        bool more = false;
        rv = shard_store_list_group(s, v->vault_id, has_after ? after : NULL, 0, 0, PCLEANUP_PAGE,
                                    page, &n, &more, e);
        if (rv != 0) {
            goto out;
        }
        for (size_t i = 0; i < n && rv == 0; i++) {
            const struct shard_list_entry *en = &page[i];
            uint32_t g = pmap_group_of(en->chunk_id, v->groups);
            uint32_t *w = wanted + (size_t)g * PMAP_MAX_SCHEMES;
            if (!known[g]) {
                rv = pmap_node_masks(v, ep, g, me, w, e);
                if (rv != 0) {
                    goto out;
                }
                known[g] = 1;
            }
            /* The base scheme's untagged slots, then each other scheme of the vault's. */
            for (unsigned x = 0; x < nsch && rv == 0; x++) {
                uint32_t held = 0;
                if (x == 0) {
                    held = en->mask;
                } else {
                    for (unsigned y = 0; y < en->nschemes; y++) {
                        if (en->schemes[y].k == sch[x].k && en->schemes[y].m == sch[x].m) {
                            held = en->schemes[y].mask;
                        }
                    }
                }
                uint32_t extra = held & ~w[x];
                if (x == 0 && (extra & 1) && v->k + v->m > 1 && plain_object(s, v, en->chunk_id)) {
                    extra &= ~(uint32_t)1; /* a reference list: every node keeps one */
                }
                for (unsigned b = 0; b < 32 && extra != 0; b++) {
                    if (!(extra & ((uint32_t)1 << b))) {
                        continue;
                    }
                    extra &= ~((uint32_t)1 << b);
                    memcpy(keys[nkeys].vault_id, v->vault_id, 16);
                    memcpy(keys[nkeys].chunk_id, en->chunk_id, 32);
                    keys[nkeys].index = shard_slot(v->k, v->m, sch[x].k, sch[x].m, b);
                    if (++nkeys == PCLEANUP_PAGE) {
                        rv = flush(s, f, ep->epoch, keys, &nkeys, deleted, e);
                    }
                }
            }
        }
        if (rv != 0 || !more || n == 0) {
            break;
        }
        memcpy(after, page[n - 1].chunk_id, 32);
        has_after = true;
    }
    if (rv == 0) {
        rv = flush(s, f, ep->epoch, keys, &nkeys, deleted, e);
    }
out:
    hbc_free(page);
    hbc_free(keys);
    hbc_free(wanted);
    hbc_free(known);
    return rv;
}

int pcleanup_vault(struct pcleanup *pc, struct fsm *f, struct shard_store *s, const char *node_id,
                   const struct pmap_vault *v, uint64_t now_ns, uint64_t *deleted, struct err *e)
{
    uint64_t count = 0;
    if (deleted != NULL) {
        *deleted = 0;
    }
    if (pc == NULL || pc->grace_ns == 0 || v->groups == 0) {
        return 0;
    }
    struct vault_seen *vs = seen_of(pc, v->vault_id);
    if (vs == NULL) {
        return 0;
    }
    uint64_t current = fsm_placement_current(f);
    Hbc__PlacementMapReply map;
    int rv = fsm_placement_map(f, v->vault_id, &map, e);
    if (rv != 0) {
        return rv;
    }
    bool settled = map.current == current && map.n_fallback == 0 && current > 0;
    fsm_placement_map_free(&map);
    if (!settled) {
        vs->epoch = 0; /* the timer starts again once it is settled */
        return 0;
    }
    if (vs->epoch != current) {
        vs->epoch = current;
        vs->since_ns = now_ns;
        vs->done = false;
        return 0;
    }
    if (vs->done || now_ns - vs->since_ns < pc->grace_ns) {
        return 0;
    }
    Hbc__PlacementEpoch *pe = NULL;
    rv = fsm_placement_epoch(f, current, &pe, e);
    if (rv != 0) {
        return rv;
    }
    struct pmap_epoch ep;
    rv = pmap_epoch_from_proto(pe, &ep, e);
    if (rv == 0) {
        unsigned me = PMAP_NONE;
        for (size_t i = 0; i < ep.n; i++) {
            if (strcmp(ep.pol[i].node_id, node_id) == 0) {
                me = (unsigned)i;
            }
        }
        /* Not in the epoch (draining or DOWN): keep everything; removal ends it. */
        if (me != PMAP_NONE) {
            rv = sweep(s, f, v, &ep, me, &count, e);
        }
        pmap_epoch_free(&ep);
    }
    fsm_record_free(pe);
    if (rv == HBC_ESTALEEPOCH) {
        vs->epoch = 0;
        rv = 0;
    } else if (rv == 0) {
        vs->done = true;
    }
    if (count > 0 || rv == 0) {
        char hex[9];
        snprintf(hex, sizeof hex, "%02x%02x%02x%02x", v->vault_id[0], v->vault_id[1],
                 v->vault_id[2], v->vault_id[3]);
        hbc_log(count > 0 ? LOG_INFO : LOG_DEBUG,
                "event=placement_cleanup vault=%s epoch=%llu count=%llu", hex,
                (unsigned long long)current, (unsigned long long)count);
    }
    if (deleted != NULL) {
        *deleted = count;
    }
    return rv;
}
