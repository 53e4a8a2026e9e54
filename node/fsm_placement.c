/* Placement epochs in the state machine: new epochs on topology changes, group confirmations. */
#include "node/fsm_placement.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "client/placement_map.h"
#include "common/alloc.h"
#include "common/log.h"
#include "node/fsm_internal.h"
#include "node/fsm_placement_internal.h"

#define KEY_EPOCH_LEN (2 + 8)
#define KEY_GROUP_LEN (2 + FSM_ID_LEN + 4 + 8)

static void epoch_key(uint64_t epoch, uint8_t key[KEY_EPOCH_LEN])
{
    key[0] = 'P';
    key[1] = 'e';
    fsm_put_be64(key + 2, epoch);
}

static void group_key(const uint8_t vault_id[FSM_ID_LEN], uint32_t group, uint64_t epoch,
                      uint8_t key[KEY_GROUP_LEN])
{
    key[0] = 'P';
    key[1] = 'g';
    memcpy(key + 2, vault_id, FSM_ID_LEN);
    key[2 + FSM_ID_LEN] = (uint8_t)(group >> 24);
    key[3 + FSM_ID_LEN] = (uint8_t)(group >> 16);
    key[4 + FSM_ID_LEN] = (uint8_t)(group >> 8);
    key[5 + FSM_ID_LEN] = (uint8_t)group;
    fsm_put_be64(key + 6 + FSM_ID_LEN, epoch);
}

uint64_t fsm_placement_current(struct fsm *f)
{
    void *v = NULL;
    size_t n = 0;
    uint64_t epoch = 0;
    struct err e;
    if (meta_store_get(f->store, NULL, META_CF_META, FSM_META_EPOCH, strlen(FSM_META_EPOCH), &v, &n,
                       &e) == 0 &&
        n == 8) {
        epoch = fsm_get_be64(v);
    }
    hbc_free(v);
    return epoch;
}

int fsm_placement_epoch(struct fsm *f, uint64_t epoch, Hbc__PlacementEpoch **out, struct err *e)
{
    uint8_t key[KEY_EPOCH_LEN];
    epoch_key(epoch, key);
    void *v = NULL;
    size_t n = 0;
    *out = NULL;
    int rc = meta_store_get(f->store, NULL, META_CF_META, key, sizeof key, &v, &n, e);
    if (rc != 0) {
        return rc;
    }
    rc = fsm_record_unpack(&hbc__placement_epoch__descriptor, v, n, (void **)out, e);
    hbc_free(v);
    return rc;
}

/* ---- new epochs ---- */

/* The UP nodes of the nodes column family, before this entry's batch. */
struct topo {
    Hbc__NodeInfo **nodes; /* unpacked records (fsm_record_free each) */
    size_t n;              /* how many */
    size_t cap;            /* allocated */
    struct err *e;         /* where a failure goes */
};

static int topo_visit(const void *key, size_t klen, const void *val, size_t vlen, void *arg)
{
    (void)key;
    (void)klen;
    struct topo *t = arg;
    Hbc__NodeInfo *n = NULL;
    int rc = fsm_record_unpack(&hbc__node_info__descriptor, val, vlen, (void **)&n, t->e);
    if (rc != 0) {
        return rc;
    }
    if (t->n == t->cap) {
        size_t cap = t->cap > 0 ? 2 * t->cap : 16;
        Hbc__NodeInfo **p = hbc_realloc(t->nodes, cap * sizeof *p);
        if (p == NULL) {
            fsm_record_free(n);
            return err_set(t->e, HBC_ENOMEM, "topology");
        }
        t->nodes = p;
        t->cap = cap;
    }
    t->nodes[t->n++] = n;
    return 0;
}

static void topo_free(struct topo *t)
{
    for (size_t i = 0; i < t->n; i++) {
        fsm_record_free(t->nodes[i]);
    }
    hbc_free(t->nodes);
}

static bool same_node(const Hbc__PlacementNode *a, const Hbc__PlacementNode *b)
{
    return strcmp(a->node_id, b->node_id) == 0 && strcmp(a->site, b->site) == 0 &&
           strcmp(a->region, b->region) == 0 && strcmp(a->media, b->media) == 0 &&
           a->worm == b->worm && a->capacity_bytes == b->capacity_bytes;
}

int fsm_placement_node_changed(struct apply_ctx *c, const char *node_id, const Hbc__NodeInfo *after,
                               const char *cause, struct err *e)
{
    struct topo t = {.e = e};
    int rc = meta_store_scan(c->f->store, NULL, META_CF_NODES, NULL, 0, topo_visit, &t, e);
    if (rc != 0) {
        topo_free(&t);
        return rc;
    }
    /* Nodes are keyed by id, so the scan is sorted; the change replaces or drops its entry. */
    Hbc__PlacementNode *pn = hbc_calloc(t.n + 1, sizeof *pn);
    Hbc__PlacementNode **pp = hbc_calloc(t.n + 1, sizeof *pp);
    Hbc__PlacementEpoch *cur = NULL;
    if (pn == NULL || pp == NULL) {
        rc = err_set(e, HBC_ENOMEM, "new epoch");
        goto out;
    }
    size_t n = 0;
    bool placed = after == NULL;
    for (size_t i = 0; i <= t.n; i++) {
        const Hbc__NodeInfo *ni = i < t.n ? t.nodes[i] : NULL;
        if (!placed && (ni == NULL || strcmp(after->node_id, ni->node_id) <= 0)) {
            placed = true;
            if (after->state == HBC__NODE_STATE__NODE_UP) {
                pn[n] = (Hbc__PlacementNode)HBC__PLACEMENT_NODE__INIT;
                pn[n].node_id = after->node_id;
                pn[n].site = after->site;
                pn[n].region = after->region;
                pn[n].media = after->media;
                pn[n].worm = after->worm;
                pn[n].capacity_bytes = after->capacity_bytes;
                pp[n] = &pn[n];
                n++;
            }
        }
        if (ni == NULL || strcmp(ni->node_id, node_id) == 0 ||
            ni->state != HBC__NODE_STATE__NODE_UP) {
            continue;
        }
        pn[n] = (Hbc__PlacementNode)HBC__PLACEMENT_NODE__INIT;
        pn[n].node_id = ni->node_id;
        pn[n].site = ni->site;
        pn[n].region = ni->region;
        pn[n].media = ni->media;
        pn[n].worm = ni->worm;
        pn[n].capacity_bytes = ni->capacity_bytes;
        pp[n] = &pn[n];
        n++;
    }
    uint64_t epoch = fsm_placement_current(c->f);
    if (epoch > 0) {
        rc = fsm_placement_epoch(c->f, epoch, &cur, e);
        if (rc != 0) {
            goto out;
        }
        bool same = cur->n_nodes == n;
        for (size_t i = 0; i < n && same; i++) {
            same = same_node(cur->nodes[i], pp[i]);
        }
        if (same) {
            goto out; /* an address or state change that moves nothing */
        }
    }
    Hbc__PlacementEpoch rec = HBC__PLACEMENT_EPOCH__INIT;
    rec.epoch = epoch + 1;
    rec.previous = epoch;
    rec.created_ms = c->time_ms;
    rec.created_index = c->index;
    rec.nodes = pp;
    rec.n_nodes = n;
    rec.cause = (char *)cause;
    uint8_t key[KEY_EPOCH_LEN];
    epoch_key(rec.epoch, key);
    rc = fsm_put_record(c, META_CF_META, key, sizeof key, &rec.base, e);
    if (rc == 0) {
        uint8_t v[8];
        fsm_put_be64(v, rec.epoch);
        meta_batch_put(c->b, META_CF_META, FSM_META_EPOCH, strlen(FSM_META_EPOCH), v, 8);
        hbc_log(LOG_INFO, "event=placement_epoch epoch=%llu nodes=%zu cause=\"%s\" index=%llu",
                (unsigned long long)rec.epoch, n, cause, (unsigned long long)c->index);
    }
out:
    fsm_record_free(cur);
    hbc_free(pn);
    hbc_free(pp);
    topo_free(&t);
    return rc;
}

/* ---- PlacementGroupDone ---- */

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

int fsm_apply_group_done(struct apply_ctx *c, const Hbc__PlacementGroupDone *d, int *code,
                         struct err *e)
{
    if (d->vault_id.len != FSM_ID_LEN || !fsm_text_ok(d->node_id, FSM_NAME_MAX) ||
        d->n_groups == 0 || d->n_groups > PMAP_MAX_GROUPS) {
        *code = HBC_EINVAL;
        c->reason = "placement group done: bad vault id, node id or group count";
        return 0;
    }
    uint64_t current = fsm_placement_current(c->f);
    if (d->epoch != current) {
        *code = HBC_ESTALEEPOCH;
        c->reason = "placement group done for an epoch that is not the current one";
        return 0;
    }
    uint8_t vkey[1 + FSM_ID_LEN];
    vkey[0] = FSM_VAULT_BY_ID;
    memcpy(vkey + 1, d->vault_id.data, FSM_ID_LEN);
    Hbc__VaultInfo *vi = NULL;
    Hbc__PlacementEpoch *pe = NULL;
    struct pmap_epoch ep = {0};
    int rc = fsm_get_record(c, META_CF_VAULTS, vkey, sizeof vkey, &hbc__vault_info__descriptor,
                            (void **)&vi, e);
    if (rc == HBC_ENOTFOUND) {
        *code = HBC_ENOTFOUND;
        return 0;
    }
    if (rc != 0) {
        return rc;
    }
    struct pmap_vault v;
    struct err ve;
    if (pmap_vault_from_info(vi, &v, &ve) != 0 || v.groups == 0) {
        *code = HBC_EINVAL;
        c->reason = "placement group done for a vault without placement groups";
        goto out;
    }
    rc = fsm_placement_epoch(c->f, current, &pe, e);
    if (rc == 0) {
        rc = pmap_epoch_from_proto(pe, &ep, e);
    }
    if (rc != 0) {
        goto out;
    }
    unsigned me = PMAP_NONE;
    for (size_t i = 0; i < ep.n; i++) {
        if (strcmp(ep.pol[i].node_id, d->node_id) == 0) {
            me = (unsigned)i;
        }
    }
    if (me == PMAP_NONE) {
        *code = HBC_EINVAL;
        c->reason = "placement group done from a node outside the current epoch";
        goto out;
    }
    const unsigned width = pmap_stride(&v);
    for (size_t gi = 0; gi < d->n_groups && rc == 0 && *code == 0; gi++) {
        uint32_t g = d->groups[gi];
        if (g >= v.groups) {
            *code = HBC_EINVAL;
            c->reason = "placement group done: group out of range";
            break;
        }
        unsigned place[PLACEMENT_MAX_COPIES * PLACEMENT_MAX_WIDTH];
        bool placeable = true;
        rc = pmap_group_nodes(&v, &ep, g, width, place, &placeable, e);
        if (rc != 0) {
            break;
        }
        uint8_t key[KEY_GROUP_LEN];
        group_key(v.vault_id, g, current, key);
        Hbc__PlacementGroupState *st = NULL;
        rc = fsm_get_record(c, META_CF_META, key, sizeof key,
                            &hbc__placement_group_state__descriptor, (void **)&st, e);
        if (rc == HBC_ENOTFOUND) {
            rc = 0;
        }
        if (rc != 0) {
            break;
        }
        size_t ndone = st != NULL ? st->n_done : 0;
        bool already = false;
        for (size_t i = 0; i < ndone; i++) {
            already |= strcmp(st->done[i], d->node_id) == 0;
        }
        if (already) {
            fsm_record_free(st);
            continue;
        }
        char **done = hbc_calloc(ndone + 1, sizeof *done);
        if (done == NULL) {
            fsm_record_free(st);
            rc = err_set(e, HBC_ENOMEM, "group done");
            break;
        }
        for (size_t i = 0; i < ndone; i++) {
            done[i] = st->done[i];
        }
        done[ndone++] = d->node_id;
        qsort(done, ndone, sizeof *done, cmp_str);
        bool confirmed = placeable;
        for (unsigned i = 0; i < v.copies * width && confirmed; i++) {
            if (place[i] == PMAP_NONE) {
                continue; /* past its copy's width (placeable: every real slot has a node) */
            }
            const char *target = ep.pol[place[i]].node_id;
            bool found = false;
            for (size_t j = 0; j < ndone && !found; j++) {
                found = strcmp(done[j], target) == 0;
            }
            confirmed = found;
        }
        Hbc__PlacementGroupState ns = HBC__PLACEMENT_GROUP_STATE__INIT;
        ns.done = done;
        ns.n_done = ndone;
        ns.confirmed = confirmed;
        rc = fsm_put_record(c, META_CF_META, key, sizeof key, &ns.base, e);
        hbc_free(done);
        fsm_record_free(st);
    }
out:
    pmap_epoch_free(&ep);
    fsm_record_free(pe);
    fsm_record_free(vi);
    return rc;
}

/* ---- the map query ---- */

struct settle_scan {
    uint64_t current;  /* the current epoch */
    uint64_t *settled; /* per group: latest confirmed epoch at or below current */
    uint32_t groups;   /* entries in settled */
    struct err *e;     /* where a failure goes */
};

static int settle_visit(const void *key, size_t klen, const void *val, size_t vlen, void *arg)
{
    struct settle_scan *s = arg;
    if (klen != KEY_GROUP_LEN) {
        return 0;
    }
    const uint8_t *k = key;
    uint32_t g = (uint32_t)k[2 + FSM_ID_LEN] << 24 | (uint32_t)k[3 + FSM_ID_LEN] << 16 |
                 (uint32_t)k[4 + FSM_ID_LEN] << 8 | k[5 + FSM_ID_LEN];
    uint64_t epoch = fsm_get_be64(k + 6 + FSM_ID_LEN);
    if (g >= s->groups || epoch > s->current || epoch <= s->settled[g]) {
        return 0;
    }
    Hbc__PlacementGroupState *st = NULL;
    int rc =
        fsm_record_unpack(&hbc__placement_group_state__descriptor, val, vlen, (void **)&st, s->e);
    if (rc != 0) {
        return rc;
    }
    if (st->confirmed) {
        s->settled[g] = epoch;
    }
    fsm_record_free(st);
    return 0;
}

int fsm_placement_settled(struct fsm *f, const Hbc__VaultInfo *vi, uint64_t current,
                          uint64_t *settled, struct err *e)
{
    uint32_t groups = vi->placement_groups;
    uint64_t base = vi->has_created_epoch ? vi->created_epoch : 0;
    for (uint32_t g = 0; g < groups; g++) {
        settled[g] = base;
    }
    struct settle_scan s = {.current = current, .settled = settled, .groups = groups, .e = e};
    uint8_t prefix[2 + FSM_ID_LEN] = {'P', 'g'};
    memcpy(prefix + 2, vi->vault_id.data, FSM_ID_LEN);
    return meta_store_scan(f->store, NULL, META_CF_META, prefix, sizeof prefix, settle_visit, &s,
                           e);
}

struct vault_list {
    Hbc__VaultInfo **v; /* records (fsm_record_free each) */
    size_t n;           /* how many */
    size_t cap;         /* allocated */
    int rc;             /* HBC_ENOMEM when one could not be kept */
    struct err e;       /* scratch for the copies */
};

static int vault_keep(const Hbc__VaultInfo *v, void *arg)
{
    struct vault_list *l = arg;
    if (!v->has_placement_groups || v->placement_groups == 0 ||
        v->placement_groups > PMAP_MAX_GROUPS || v->vault_id.len != FSM_ID_LEN) {
        return 0;
    }
    if (l->n == l->cap) {
        size_t cap = l->cap > 0 ? 2 * l->cap : 8;
        Hbc__VaultInfo **p = hbc_realloc(l->v, cap * sizeof *p);
        if (p == NULL) {
            l->rc = HBC_ENOMEM;
            return 1;
        }
        l->v = p;
        l->cap = cap;
    }
    uint8_t *buf = NULL;
    size_t len = 0;
    if (fsm_record_pack(&v->base, &buf, &len, &l->e) != 0) {
        l->rc = HBC_ENOMEM;
        return 1;
    }
    Hbc__VaultInfo *copy = NULL;
    int rc = fsm_record_unpack(&hbc__vault_info__descriptor, buf, len, (void **)&copy, &l->e);
    hbc_free(buf);
    if (rc != 0) {
        l->rc = HBC_ENOMEM;
        return 1;
    }
    l->v[l->n++] = copy;
    return 0;
}

struct node_list {
    Hbc__PlacementMapReply *out; /* where the copies go */
    struct err *e;               /* where a failure goes */
};

static int node_keep(const Hbc__NodeInfo *n, void *arg)
{
    struct node_list *l = arg;
    uint8_t *buf = NULL;
    size_t len = 0;
    int rc = fsm_record_pack(&n->base, &buf, &len, l->e);
    Hbc__NodeInfo *copy = NULL;
    if (rc == 0) {
        rc = fsm_record_unpack(&hbc__node_info__descriptor, buf, len, (void **)&copy, l->e);
    }
    hbc_free(buf);
    if (rc != 0) {
        return rc;
    }
    Hbc__NodeInfo **p = hbc_realloc(l->out->nodes, (l->out->n_nodes + 1) * sizeof *p);
    if (p == NULL) {
        fsm_record_free(copy);
        return err_set(l->e, HBC_ENOMEM, "placement map");
    }
    l->out->nodes = p;
    l->out->nodes[l->out->n_nodes++] = copy;
    return 0;
}

static void vault_list_free(struct vault_list *l)
{
    for (size_t i = 0; i < l->n; i++) {
        fsm_record_free(l->v[i]);
    }
    hbc_free(l->v);
}

int fsm_placement_map(struct fsm *f, const uint8_t *vault_id, Hbc__PlacementMapReply *out,
                      struct err *e)
{
    hbc__placement_map_reply__init(out);
    out->current = fsm_placement_current(f);
    out->applied_index = fsm_applied_index(f);
    struct vault_list l = {0};
    uint64_t *settled = NULL;
    uint64_t oldest = out->current;
    int rc = 0;
    if (vault_id != NULL) {
        Hbc__VaultInfo *vi = NULL;
        rc = fsm_get_vault(f, vault_id, &vi, e);
        if (rc != 0) {
            return rc;
        }
        if (vault_keep(vi, &l) != 0) {
            rc = err_set(e, HBC_ENOMEM, "placement map");
        }
        fsm_record_free(vi);
    } else {
        rc = fsm_list_vaults(f, vault_keep, &l, e);
        if (rc == 0 && l.rc != 0) {
            rc = err_set(e, l.rc, "placement map");
        }
    }
    if (rc == 0 && vault_id != NULL) {
        struct node_list nl = {.out = out, .e = e};
        rc = fsm_list_nodes(f, node_keep, &nl, e);
    }
    if (rc != 0 || out->current == 0) {
        goto out;
    }
    settled = hbc_calloc(PMAP_MAX_GROUPS, sizeof *settled);
    if (settled == NULL) {
        rc = err_set(e, HBC_ENOMEM, "placement map");
        goto out;
    }
    for (size_t i = 0; i < l.n && rc == 0; i++) {
        const Hbc__VaultInfo *vi = l.v[i];
        rc = fsm_placement_settled(f, vi, out->current, settled, e);
        for (uint32_t g = 0; g < vi->placement_groups && rc == 0; g++) {
            out->groups_total++;
            if (settled[g] >= out->current) {
                out->groups_confirmed++;
                continue;
            }
            if (vault_id == NULL) {
                continue;
            }
            if (out->n_fallback % 256 == 0) {
                Hbc__PlacementFallback **p =
                    hbc_realloc(out->fallback, (out->n_fallback + 256) * sizeof *p);
                if (p == NULL) {
                    rc = err_set(e, HBC_ENOMEM, "placement map");
                    break;
                }
                out->fallback = p;
            }
            Hbc__PlacementFallback *fb = hbc_malloc(sizeof *fb);
            if (fb == NULL) {
                rc = err_set(e, HBC_ENOMEM, "placement map");
                break;
            }
            hbc__placement_fallback__init(fb);
            fb->group = g;
            fb->settled_epoch = settled[g];
            out->fallback[out->n_fallback++] = fb;
            if (settled[g] < oldest) {
                oldest = settled[g];
            }
        }
    }
    if (oldest == 0) {
        oldest = 1;
    }
    /* The epochs, current first. */
    for (uint64_t ep = out->current; ep >= oldest && rc == 0; ep--) {
        Hbc__PlacementEpoch *pe = NULL;
        int r = fsm_placement_epoch(f, ep, &pe, e);
        if (r == HBC_ENOTFOUND) {
            continue;
        }
        if (r != 0) {
            rc = r;
            break;
        }
        Hbc__PlacementEpoch **p = hbc_realloc(out->epochs, (out->n_epochs + 1) * sizeof *p);
        if (p == NULL) {
            fsm_record_free(pe);
            rc = err_set(e, HBC_ENOMEM, "placement map");
            break;
        }
        out->epochs = p;
        out->epochs[out->n_epochs++] = pe;
        if (vault_id == NULL) {
            break; /* totals need only the current epoch */
        }
    }
out:
    hbc_free(settled);
    vault_list_free(&l);
    if (rc != 0) {
        fsm_placement_map_free(out);
    }
    return rc;
}

void fsm_placement_map_free(Hbc__PlacementMapReply *r)
{
    for (size_t i = 0; i < r->n_epochs; i++) {
        fsm_record_free(r->epochs[i]);
    }
    hbc_free(r->epochs);
    for (size_t i = 0; i < r->n_fallback; i++) {
        hbc_free(r->fallback[i]);
    }
    hbc_free(r->fallback);
    for (size_t i = 0; i < r->n_nodes; i++) {
        fsm_record_free(r->nodes[i]);
    }
    hbc_free(r->nodes);
    r->nodes = NULL;
    r->n_nodes = 0;
    r->epochs = NULL;
    r->n_epochs = 0;
    r->fallback = NULL;
    r->n_fallback = 0;
}

int fsm_placement_removable(struct fsm *f, const char *node_id, struct err *e)
{
    Hbc__NodeInfo *ni = NULL;
    int rc = fsm_get_node(f, node_id, &ni, e);
    if (rc != 0) {
        return rc;
    }
    bool up = ni->state == HBC__NODE_STATE__NODE_UP;
    fsm_record_free(ni);
    Hbc__PlacementMapReply m;
    rc = fsm_placement_map(f, NULL, &m, e);
    if (rc != 0) {
        return rc;
    }
    uint64_t total = m.groups_total;
    uint64_t left = m.groups_total - m.groups_confirmed;
    fsm_placement_map_free(&m);
    if (up && total > 0) {
        return err_setraw(e, HBC_ENOTDRAINED,
                          "node %s is up and may hold shards of %llu placement groups: drain it "
                          "first (hbc cluster drain %s), or remove it with --force",
                          node_id, (unsigned long long)total, node_id);
    }
    if (left > 0) {
        return err_setraw(e, HBC_ENOTDRAINED,
                          "node %s: %llu of %llu placement groups are not yet moved to the "
                          "current epoch; wait for the drain to finish (hbc cluster status)",
                          node_id, (unsigned long long)left, (unsigned long long)total);
    }
    return 0;
}

int fsm_placement_done_by(struct fsm *f, const uint8_t vault_id[FSM_ID_LEN], uint32_t group,
                          uint64_t epoch, const char *node_id, bool *done, struct err *e)
{
    *done = false;
    uint8_t key[KEY_GROUP_LEN];
    group_key(vault_id, group, epoch, key);
    void *v = NULL;
    size_t n = 0;
    int rc = meta_store_get(f->store, NULL, META_CF_META, key, sizeof key, &v, &n, e);
    if (rc == HBC_ENOTFOUND) {
        return 0;
    }
    if (rc != 0) {
        return rc;
    }
    Hbc__PlacementGroupState *st = NULL;
    rc = fsm_record_unpack(&hbc__placement_group_state__descriptor, v, n, (void **)&st, e);
    hbc_free(v);
    if (rc != 0) {
        return rc;
    }
    for (size_t i = 0; i < st->n_done; i++) {
        *done |= strcmp(st->done[i], node_id) == 0;
    }
    fsm_record_free(st);
    return 0;
}
