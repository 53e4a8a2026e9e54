/* The client's placement map: epochs and unsettled groups of the open vault, and placing by them.
 */
#include <string.h>

#include "client/repo_internal.h"
#include "common/alloc.h"
#include "common/frame.h"
#include "common/log.h"

void repo_map_free(struct repo_map *m)
{
    if (m == NULL) {
        return;
    }
    for (size_t i = 0; i < m->nepochs; i++) {
        pmap_epoch_free(&m->epochs[i].ep);
        hbc_free(m->epochs[i].to_node);
    }
    hbc_free(m->epochs);
    hbc_free(m->settled);
    frame_free(m->reply);
    hbc_free(m);
}

/* Index of node_id in r->nodes (sorted at open, then appended to), or PMAP_NONE. */
static unsigned node_index(const struct repo *r, size_t n, const char *node_id)
{
    for (size_t i = 0; i < n; i++) {
        if (strcmp(r->nodes[i].node_id, node_id) == 0) {
            return (unsigned)i;
        }
    }
    return PMAP_NONE;
}

const struct repo_map *repo_map_current(struct repo *r)
{
    uv_mutex_lock(&r->mu);
    const struct repo_map *m = r->map;
    uv_mutex_unlock(&r->mu);
    return m;
}

/*
 * Append the nodes of the map's node list that r->nodes lacks (nodes that
 * joined since the vault was opened). Entries never move, so indexes other
 * threads hold stay valid.
 */
static int append_nodes(struct repo *r, Hbc__NodeInfo *const *nodes, size_t n, struct err *e)
{
    int rv = 0;
    uv_mutex_lock(&r->mu);
    for (size_t i = 0; i < n && rv == 0; i++) {
        const Hbc__NodeInfo *ni = nodes[i];
        if (ni->state == HBC__NODE_STATE__NODE_JOINING ||
            node_index(r, r->nnodes, ni->node_id) != PMAP_NONE) {
            continue;
        }
        if (r->nnodes == r->nodes_cap) {
            hbc_log(LOG_WARN, "event=node_list_full node=%s", ni->node_id);
            continue;
        }
        struct repo_node *rn = &r->nodes[r->nnodes];
        rn->node_id = hbc_strdup(ni->node_id);
        rn->addr = hbc_strdup(ni->data_address);
        rn->site = hbc_strdup(ni->site);
        rn->region = hbc_strdup(ni->region);
        rn->media = hbc_strdup(ni->media);
        rn->worm = ni->worm;
        rn->capacity = ni->capacity_bytes;
        if (rn->node_id == NULL || rn->addr == NULL || rn->site == NULL || rn->region == NULL ||
            rn->media == NULL) {
            hbc_free(rn->node_id);
            hbc_free(rn->addr);
            hbc_free(rn->site);
            hbc_free(rn->region);
            hbc_free(rn->media);
            *rn = (struct repo_node){0};
            rv = err_set(e, HBC_ENOMEM, "node list");
            break;
        }
        r->nnodes++;
    }
    uv_mutex_unlock(&r->mu);
    return rv;
}

int repo_map_load(struct repo *r, struct err *e)
{
    Hbc__Frame req = HBC__FRAME__INIT;
    Hbc__PlacementMapRequest q = HBC__PLACEMENT_MAP_REQUEST__INIT;
    q.has_vault_id = true;
    q.vault_id.data = r->vault_id;
    q.vault_id.len = REPO_ID_LEN;
    q.has_current = true;
    q.current = true;
    req.body_case = HBC__FRAME__BODY_PLACEMENT_MAP;
    req.placement_map = &q;
    struct repo_map *m = hbc_calloc(1, sizeof *m);
    if (m == NULL) {
        return err_set(e, HBC_ENOMEM, "placement map");
    }
    int rv = repo_control(r, &req, HBC__FRAME__BODY_PLACEMENT_MAP_REPLY, &m->reply, e);
    if (rv != 0) {
        hbc_free(m);
        return err_wrap_code(e, rv, "placement map");
    }
    const Hbc__PlacementMapReply *p = m->reply->placement_map_reply;
    m->current = p->current;
    if (p->n_epochs == 0 || p->epochs[0]->epoch != p->current) {
        repo_map_free(m);
        return err_setraw(e, HBC_EPROTO, "placement map: no record of the current epoch %llu",
                          (unsigned long long)p->current);
    }
    rv = append_nodes(r, p->nodes, p->n_nodes, e);
    if (rv != 0) {
        repo_map_free(m);
        return rv;
    }
    m->epochs = hbc_calloc(p->n_epochs, sizeof *m->epochs);
    m->settled = hbc_calloc(r->pv.groups, sizeof *m->settled);
    if (m->epochs == NULL || m->settled == NULL) {
        repo_map_free(m);
        return err_set(e, HBC_ENOMEM, "placement map");
    }
    for (size_t i = 0; i < p->n_epochs; i++) {
        struct repo_epoch *re = &m->epochs[i];
        rv = pmap_epoch_from_proto(p->epochs[i], &re->ep, e);
        m->nepochs = i + 1;
        if (rv != 0) {
            repo_map_free(m);
            return rv;
        }
        re->to_node = hbc_calloc(re->ep.n > 0 ? re->ep.n : 1, sizeof *re->to_node);
        if (re->to_node == NULL) {
            repo_map_free(m);
            return err_set(e, HBC_ENOMEM, "placement map");
        }
        uv_mutex_lock(&r->mu);
        size_t nnodes = r->nnodes;
        uv_mutex_unlock(&r->mu);
        for (size_t j = 0; j < re->ep.n; j++) {
            re->to_node[j] = node_index(r, nnodes, re->ep.pol[j].node_id);
        }
    }
    for (uint32_t g = 0; g < r->pv.groups; g++) {
        m->settled[g] = m->current;
    }
    for (size_t i = 0; i < p->n_fallback; i++) {
        if (p->fallback[i]->group < r->pv.groups) {
            m->settled[p->fallback[i]->group] = p->fallback[i]->settled_epoch;
        }
    }
    hbc_log(LOG_DEBUG, "event=placement_map epoch=%llu epochs=%zu unsettled=%zu",
            (unsigned long long)m->current, m->nepochs, p->n_fallback);
    uv_mutex_lock(&r->mu);
    if (r->map != NULL) {
        r->map->next = r->retired;
        r->retired = r->map;
    }
    r->map = m;
    uv_mutex_unlock(&r->mu);
    return 0;
}

int repo_map_refresh(struct repo *r, struct err *e)
{
    if (r->pv.groups == 0) {
        return 0;
    }
    int rv = repo_map_load(r, e);
    if (rv == 0) {
        hbc_log(LOG_INFO, "event=placement_map_reloaded epoch=%llu nodes=%zu",
                (unsigned long long)repo_map_current(r)->current, r->nnodes);
    }
    return rv;
}

int repo_place_epoch(const struct repo *r, const uint8_t id[REPO_CHUNK_ID], size_t nth,
                     unsigned copies, unsigned width, unsigned *out, struct err *e)
{
    const struct repo_map *m = repo_map_current((struct repo *)r);
    if (m == NULL) {
        return nth == 0 ? repo_place(r, id, copies, width, out, e) : HBC_ENOTFOUND;
    }
    uint32_t g = pmap_group_of(id, r->pv.groups);
    if (nth >= m->nepochs || (nth > 0 && m->epochs[nth].ep.epoch < m->settled[g])) {
        return HBC_ENOTFOUND;
    }
    const struct repo_epoch *re = &m->epochs[nth];
    unsigned all[PLACEMENT_MAX_COPIES * PLACEMENT_MAX_WIDTH];
    bool placeable = true;
    int rv = pmap_group_nodes(&r->pv, &re->ep, g, width, all, &placeable, e);
    if (rv != 0) {
        return rv;
    }
    for (unsigned i = 0; i < copies * width; i++) {
        out[i] = all[i] == PMAP_NONE ? PMAP_NONE : re->to_node[all[i]];
    }
    return 0;
}
