/* The client's placement map: epochs and unsettled groups of the open vault, and placing by them. */
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

/* Index of node_id in r->nodes (sorted by id), or PMAP_NONE. */
static unsigned node_index(const struct repo *r, const char *node_id)
{
    size_t lo = 0;
    size_t hi = r->nnodes;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int c = strcmp(r->nodes[mid].node_id, node_id);
        if (c == 0) {
            return (unsigned)mid;
        }
        if (c < 0) {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    return PMAP_NONE;
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
        return err_wrap(e, "placement map");
    }
    const Hbc__PlacementMapReply *p = m->reply->placement_map_reply;
    m->current = p->current;
    if (p->n_epochs == 0 || p->epochs[0]->epoch != p->current) {
        repo_map_free(m);
        return err_setraw(e, HBC_EPROTO, "placement map: no record of the current epoch %llu",
                          (unsigned long long)p->current);
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
        for (size_t j = 0; j < re->ep.n; j++) {
            re->to_node[j] = node_index(r, re->ep.pol[j].node_id);
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
    repo_map_free(r->map);
    r->map = m;
    return 0;
}

int repo_place_epoch(const struct repo *r, const uint8_t id[REPO_CHUNK_ID], size_t nth,
                     unsigned copies, unsigned width, unsigned *out, struct err *e)
{
    const struct repo_map *m = r->map;
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
