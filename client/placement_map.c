/* Placement groups and epochs: the nodes of a vault's group in an epoch (rules in placement_map.h).
 */
#include "client/placement_map.h"

#include <stdio.h>
#include <string.h>

#include "common/alloc.h"

int pmap_vault_from_info(const Hbc__VaultInfo *v, struct pmap_vault *out, struct err *e)
{
    memset(out, 0, sizeof *out);
    if (v->vault_id.len != 16 || v->copies < 1 || v->copies > PLACEMENT_MAX_COPIES || v->k < 1 ||
        v->k + v->m > PLACEMENT_MAX_WIDTH) {
        return err_setraw(e, HBC_EFORMAT, "vault '%s': malformed record (copies %u, k %u, m %u)",
                          v->name, v->copies, v->k, v->m);
    }
    if (v->has_placement_groups &&
        (v->placement_groups == 0 || v->placement_groups > PMAP_MAX_GROUPS ||
         (v->placement_groups & (v->placement_groups - 1)) != 0)) {
        return err_setraw(e, HBC_EFORMAT, "vault '%s': %u placement groups (a power of two needed)",
                          v->name, v->placement_groups);
    }
    memcpy(out->vault_id, v->vault_id.data, 16);
    out->copies = v->copies;
    out->k = v->k;
    out->m = v->m;
    out->groups = v->has_placement_groups ? v->placement_groups : 0;
    out->created_epoch = v->has_created_epoch ? v->created_epoch : 0;
    if (v->policy != NULL) {
        struct err pe;
        if (policy_from_proto(v->policy, &out->policy, &pe) != 0) {
            return err_setraw(e, HBC_EFORMAT, "vault '%s': %s", v->name, pe.msg);
        }
        if (out->policy.ncopies != v->copies || v->home_site == NULL) {
            return err_setraw(e, HBC_EFORMAT, "vault '%s': policy copies or home site missing",
                              v->name);
        }
        for (unsigned c = 0; c < out->policy.ncopies; c++) {
            if (out->policy.copies[c].k + out->policy.copies[c].m > PLACEMENT_MAX_WIDTH) {
                return err_setraw(e, HBC_EFORMAT, "vault '%s': copy %u has %u+%u shards", v->name,
                                  c, out->policy.copies[c].k, out->policy.copies[c].m);
            }
        }
        snprintf(out->home_site, sizeof out->home_site, "%s", v->home_site);
        out->has_policy = true;
    }
    return 0;
}

int pmap_epoch_from_proto(const Hbc__PlacementEpoch *pe, struct pmap_epoch *out, struct err *e)
{
    memset(out, 0, sizeof *out);
    out->epoch = pe->epoch;
    out->previous = pe->previous;
    out->n = pe->n_nodes;
    if (pe->n_nodes == 0) {
        return 0;
    }
    if (pe->n_nodes > POLICY_MAX_NODES) {
        return err_setraw(e, HBC_EFORMAT, "epoch %llu: %zu nodes", (unsigned long long)pe->epoch,
                          pe->n_nodes);
    }
    out->pol = hbc_calloc(pe->n_nodes, sizeof *out->pol);
    out->plain = hbc_calloc(pe->n_nodes, sizeof *out->plain);
    if (out->pol == NULL || out->plain == NULL) {
        pmap_epoch_free(out);
        return err_set(e, HBC_ENOMEM, "epoch %llu", (unsigned long long)pe->epoch);
    }
    for (size_t i = 0; i < pe->n_nodes; i++) {
        const Hbc__PlacementNode *n = pe->nodes[i];
        if (i > 0 && strcmp(pe->nodes[i - 1]->node_id, n->node_id) >= 0) {
            pmap_epoch_free(out);
            return err_setraw(e, HBC_EFORMAT, "epoch %llu: nodes not sorted by distinct ids",
                              (unsigned long long)pe->epoch);
        }
        out->pol[i] = (struct policy_node){.node_id = n->node_id,
                                           .site = n->site,
                                           .region = n->region,
                                           .media = n->media,
                                           .worm = n->worm,
                                           .up = true,
                                           .capacity = n->capacity_bytes};
        out->plain[i] = (struct placement_node){
            .node_id = n->node_id, .site = n->site, .capacity = n->capacity_bytes};
    }
    return 0;
}

void pmap_epoch_free(struct pmap_epoch *ep)
{
    if (ep == NULL) {
        return;
    }
    hbc_free(ep->pol);
    hbc_free(ep->plain);
    ep->pol = NULL;
    ep->plain = NULL;
    ep->n = 0;
}

uint32_t pmap_group_of(const uint8_t chunk_id[32], uint32_t groups)
{
    uint64_t x = 0;
    for (int i = 0; i < 8; i++) {
        x = (x << 8) | chunk_id[i];
    }
    return groups > 0 ? (uint32_t)(x & (groups - 1)) : 0;
}

/* The key a group is placed under, in place of a chunk id. */
static void group_key(uint32_t group, uint8_t key[32])
{
    memset(key, 0, 32);
    memcpy(key, "HBCPGRP", 7);
    key[8] = (uint8_t)(group >> 24);
    key[9] = (uint8_t)(group >> 16);
    key[10] = (uint8_t)(group >> 8);
    key[11] = (uint8_t)group;
}

int pmap_group_nodes(const struct pmap_vault *v, const struct pmap_epoch *ep, uint32_t group,
                     unsigned width, unsigned *out, bool *placeable, struct err *e)
{
    if (width != pmap_stride(v) || width > PLACEMENT_MAX_WIDTH) {
        return err_setraw(e, HBC_EINVAL, "placement: width %u for %u+%u", width, v->k, v->m);
    }
    if (placeable != NULL) {
        *placeable = true;
    }
    for (size_t i = 0; i < (size_t)v->copies * width; i++) {
        out[i] = PMAP_NONE;
    }
    if (ep->n == 0) {
        if (placeable != NULL) {
            *placeable = false;
        }
        return 0;
    }
    uint8_t key[32];
    group_key(group, key);
    if (!v->has_policy) {
        return placement_chunk_nodes(v->vault_id, key, v->copies, width, ep->plain, ep->n, out, e);
    }
    /*
     * A copy's placement depends only on the copies before it, so when copy c
     * has no eligible node, copies 0..c-1 are placed as the whole policy would
     * place them and c onwards stay PMAP_NONE.
     */
    struct policy p = v->policy;
    unsigned all[POLICY_MAX_COPIES * POLICY_MAX_WIDTH];
    int rv = HBC_ETOOFEW;
    while (p.ncopies > 0) {
        struct err pe;
        rv = policy_chunk_nodes(v->vault_id, key, &p, v->home_site, ep->pol, ep->n, all, &pe);
        if (rv != HBC_ETOOFEW) {
            if (rv != 0) {
                return err_setraw(e, rv, "%s", pe.msg);
            }
            break;
        }
        p.ncopies--;
    }
    if (p.ncopies < v->copies && placeable != NULL) {
        *placeable = false;
    }
    for (unsigned c = 0; c < p.ncopies && rv == 0; c++) {
        memcpy(out + (size_t)c * width, all + (size_t)c * POLICY_MAX_WIDTH,
               pmap_copy_width(v, c) * sizeof *out);
    }
    return 0;
}

int pmap_node_mask(const struct pmap_vault *v, const struct pmap_epoch *ep, uint32_t group,
                   unsigned node, uint32_t *mask, struct err *e)
{
    uint32_t masks[PMAP_MAX_SCHEMES];
    int rv = pmap_node_masks(v, ep, group, node, masks, e);
    *mask = rv == 0 ? masks[0] : 0;
    return rv;
}
