/* hbc-placement-audit: check that every shard of a vault sits where the current placement epoch
 * says. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "client/placement_map.h"
#include "client/repo_internal.h"
#include "common/alloc.h"
#include "common/frame.h"
#include "common/tls.h"

/*
 * Usage: hbc-placement-audit --cluster A,B,... --ca F --cert F --key F --vault NAME
 * The certificate must be a node certificate (PlacementList is for nodes).
 * Lists every node's chunks of the vault, then checks each chunk's shards
 * against the current epoch's map, each copy with its own erasure scheme
 * (shards of a scheme other than the base one are listed under tagged
 * slots, common/shard_scheme.h). Prints one JSON object (per copy too); exits 0 when every
 * expected shard is where the map says and every group is settled, 1 otherwise,
 * 2 on usage or connection errors.
 */

struct held {
    uint8_t chunk[32];               /* chunk id */
    uint32_t node;                   /* index into the node list */
    uint32_t mask[PMAP_MAX_SCHEMES]; /* per scheme (pmap_schemes() order): shard indexes held */
};

static struct repo_net *net;

static Hbc__Frame *ask(const char *addr, Hbc__Frame *req, Hbc__Frame__BodyCase expect)
{
    struct repo_req q = {.addr = addr, .kind = REPO_REQ_FRAME, .frame = req, .expect = expect};
    repo_net_run(net, &q, 1);
    if (q.status != 0) {
        fprintf(stderr, "placement-audit: %s: %s\n", addr, q.msg);
        return NULL;
    }
    if (q.reply->body_case != expect) {
        fprintf(stderr, "placement-audit: %s: unexpected reply %d\n", addr, q.reply->body_case);
        frame_free(q.reply);
        return NULL;
    }
    return q.reply;
}

static int held_cmp(const void *a, const void *b)
{
    return memcmp(((const struct held *)a)->chunk, ((const struct held *)b)->chunk, 32);
}

int main(int argc, char **argv)
{
    const char *cluster = NULL, *ca = NULL, *cert = NULL, *key = NULL, *vault = NULL;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (strcmp(argv[i], "--cluster") == 0) {
            cluster = argv[i + 1];
        } else if (strcmp(argv[i], "--ca") == 0) {
            ca = argv[i + 1];
        } else if (strcmp(argv[i], "--cert") == 0) {
            cert = argv[i + 1];
        } else if (strcmp(argv[i], "--key") == 0) {
            key = argv[i + 1];
        } else if (strcmp(argv[i], "--vault") == 0) {
            vault = argv[i + 1];
        }
    }
    if (cluster == NULL || ca == NULL || cert == NULL || key == NULL || vault == NULL) {
        fprintf(stderr, "usage: hbc-placement-audit --cluster A,B --ca F --cert F --key F "
                        "--vault NAME\n");
        return 2;
    }
    struct tls_ctx *tls = NULL;
    struct tls_ctx_opts to = {.ca_file = ca, .cert_file = cert, .key_file = key};
    struct err e;
    if (tls_ctx_new(&to, &tls, &e) != 0) {
        fprintf(stderr, "placement-audit: %s\n", e.msg);
        return 2;
    }
    struct repo_net_opts no = {.tls = tls, .timeout_ms = 20000};
    if (repo_net_start(&no, &net, &e) != 0) {
        fprintf(stderr, "placement-audit: %s\n", e.msg);
        return 2;
    }
    char first[128];
    snprintf(first, sizeof first, "%s", cluster);
    char *comma = strchr(first, ',');
    if (comma != NULL) {
        *comma = '\0';
    }
    int rc = 2;
    Hbc__Frame *st = NULL, *vl = NULL, *mp = NULL;
    struct held *held = NULL;
    size_t nheld = 0, cap = 0;
    struct pmap_epoch ep = {0};
    Hbc__Frame req = HBC__FRAME__INIT;
    Hbc__ClusterStatusRequest csr = HBC__CLUSTER_STATUS_REQUEST__INIT;
    req.body_case = HBC__FRAME__BODY_CLUSTER_STATUS;
    req.cluster_status = &csr;
    st = ask(first, &req, HBC__FRAME__BODY_CLUSTER_STATUS_REPLY);
    Hbc__ListVaultsRequest lv = HBC__LIST_VAULTS_REQUEST__INIT;
    req.body_case = HBC__FRAME__BODY_LIST_VAULTS;
    req.list_vaults = &lv;
    vl = st != NULL ? ask(first, &req, HBC__FRAME__BODY_LIST_VAULTS_REPLY) : NULL;
    if (vl == NULL) {
        goto out;
    }
    const Hbc__VaultInfo *vi = NULL;
    for (size_t i = 0; i < vl->list_vaults_reply->n_vaults; i++) {
        if (strcmp(vl->list_vaults_reply->vaults[i]->name, vault) == 0) {
            vi = vl->list_vaults_reply->vaults[i];
        }
    }
    struct pmap_vault v;
    if (vi == NULL || pmap_vault_from_info(vi, &v, &e) != 0 || v.groups == 0) {
        fprintf(stderr, "placement-audit: vault %s not found or not placed by groups\n", vault);
        goto out;
    }
    struct pmap_scheme sch[PMAP_MAX_SCHEMES];
    unsigned copy_scheme[PMAP_MAX_SCHEMES];
    unsigned nsch = pmap_schemes(&v, sch, copy_scheme);
    Hbc__PlacementMapRequest pm = HBC__PLACEMENT_MAP_REQUEST__INIT;
    pm.has_vault_id = true;
    pm.vault_id = vi->vault_id;
    req.body_case = HBC__FRAME__BODY_PLACEMENT_MAP;
    req.placement_map = &pm;
    mp = ask(first, &req, HBC__FRAME__BODY_PLACEMENT_MAP_REPLY);
    if (mp == NULL || mp->placement_map_reply->n_epochs == 0 ||
        pmap_epoch_from_proto(mp->placement_map_reply->epochs[0], &ep, &e) != 0) {
        goto out;
    }
    const Hbc__ClusterStatusReply *cs = st->cluster_status_reply;
    /* Every node's chunks of the vault. */
    for (size_t n = 0; n < cs->n_nodes; n++) {
        uint8_t after[32];
        bool has_after = false;
        for (;;) {
            Hbc__PlacementListRequest pl = HBC__PLACEMENT_LIST_REQUEST__INIT;
            pl.vault_id = vi->vault_id;
            if (has_after) {
                pl.has_after = true;
                pl.after.data = after;
                pl.after.len = 32;
            }
            req.body_case = HBC__FRAME__BODY_PLACEMENT_LIST;
            req.placement_list = &pl;
            Hbc__Frame *r =
                ask(cs->nodes[n]->data_address, &req, HBC__FRAME__BODY_PLACEMENT_LIST_REPLY);
            if (r == NULL) {
                break; /* a node that is gone holds nothing the map can need */
            }
            const Hbc__PlacementListReply *l = r->placement_list_reply;
            for (size_t i = 0; i < l->n_chunk_ids && i < l->n_index_masks; i++) {
                if (nheld == cap) {
                    cap = cap > 0 ? 2 * cap : 4096;
                    held = realloc(held, cap * sizeof *held);
                    if (held == NULL) {
                        frame_free(r);
                        goto out;
                    }
                }
                memcpy(held[nheld].chunk, l->chunk_ids[i].data, 32);
                held[nheld].node = (uint32_t)n;
                memset(held[nheld].mask, 0, sizeof held[nheld].mask);
                held[nheld].mask[0] = l->index_masks[i];
                for (size_t j = 0; j < l->n_scheme_masks; j++) {
                    const Hbc__ShardSchemeMask *sm = l->scheme_masks[j];
                    for (unsigned x = 1; x < nsch && sm->chunk == i; x++) {
                        if (sch[x].k == sm->k && sch[x].m == sm->m) {
                            held[nheld].mask[x] |= sm->mask;
                        }
                    }
                }
                nheld++;
            }
            bool more = l->more && l->n_chunk_ids > 0;
            if (more) {
                memcpy(after, l->chunk_ids[l->n_chunk_ids - 1].data, 32);
                has_after = true;
            }
            frame_free(r);
            if (!more) {
                break;
            }
        }
    }
    qsort(held, nheld, sizeof *held, held_cmp);
    size_t chunks = 0, expected = 0, missing = 0, plain = 0;
    json_t *examples = json_array();
    const unsigned width = pmap_stride(&v);
    size_t copy_expected[PLACEMENT_MAX_COPIES] = {0}, copy_missing[PLACEMENT_MAX_COPIES] = {0};
    size_t extra = 0;
    size_t *node_held = calloc(cs->n_nodes + 1, sizeof *node_held);
    if (node_held == NULL) {
        goto out;
    }
    for (size_t i = 0; i < nheld;) {
        size_t j = i;
        while (j < nheld && memcmp(held[j].chunk, held[i].chunk, 32) == 0) {
            j++;
        }
        /* Reference lists (GC) are whole copies at shard 0 on every node, not striped. */
        bool only0 = v.k + v.m > 1;
        for (size_t h = i; h < j && only0; h++) {
            only0 = held[h].mask[0] == 1;
            for (unsigned x = 1; x < nsch; x++) {
                only0 = only0 && held[h].mask[x] == 0;
            }
        }
        if (only0) {
            plain++;
            i = j;
            continue;
        }
        chunks++;
        unsigned place[PLACEMENT_MAX_COPIES * PLACEMENT_MAX_WIDTH];
        uint32_t g = pmap_group_of(held[i].chunk, v.groups);
        if (pmap_group_nodes(&v, &ep, g, width, place, NULL, &e) != 0) {
            goto out;
        }
        for (unsigned x = 0; x < v.copies * width; x++) {
            unsigned c = x / width;
            if (x % width >= pmap_copy_width(&v, c)) {
                continue; /* past this copy's width */
            }
            expected++;
            copy_expected[c]++;
            const char *want = place[x] != PMAP_NONE ? ep.pol[place[x]].node_id : NULL;
            bool found = false;
            for (size_t h = i; h < j && want != NULL && !found; h++) {
                found = strcmp(cs->nodes[held[h].node]->node_id, want) == 0 &&
                        (held[h].mask[copy_scheme[c]] & ((uint32_t)1 << (x % width)));
            }
            if (!found) {
                missing++;
                copy_missing[c]++;

                if (json_array_size(examples) < 10) {
                    char hex[17];
                    for (int b = 0; b < 8; b++) {
                        sprintf(hex + 2 * b, "%02x", held[i].chunk[b]);
                    }
                    json_array_append_new(examples,
                                          json_pack("{s:s, s:i, s:i, s:s}", "chunk", hex, "copy",
                                                    (int)(x / width), "shard", (int)(x % width),
                                                    "node", want != NULL ? want : "(none)"));
                }
            }
        }
        /* Shards held that the current epoch does not assign to their node (older epochs'). */
        for (size_t h = i; h < j; h++) {
            const char *id = cs->nodes[held[h].node]->node_id;
            uint32_t want[PMAP_MAX_SCHEMES] = {0};
            for (unsigned x = 0; x < v.copies * width; x++) {
                unsigned c = x / width;
                if (x % width < pmap_copy_width(&v, c) && place[x] != PMAP_NONE &&
                    strcmp(ep.pol[place[x]].node_id, id) == 0) {
                    want[copy_scheme[c]] |= (uint32_t)1 << (x % width);
                }
            }
            for (unsigned y = 0; y < nsch; y++) {
                node_held[held[h].node] += (size_t)__builtin_popcount(held[h].mask[y]);
                extra += (size_t)__builtin_popcount(held[h].mask[y] & ~want[y]);
            }
        }
        i = j;
    }
    json_t *nodes_held = json_object();
    for (size_t n = 0; n < cs->n_nodes; n++) {
        json_object_set_new(nodes_held, cs->nodes[n]->node_id,
                            json_integer((json_int_t)node_held[n]));
    }
    free(node_held);
    json_t *per_copy = json_array();
    for (unsigned c = 0; c < v.copies; c++) {
        json_array_append_new(per_copy,
                              json_pack("{s:i, s:i, s:i, s:I, s:I}", "copy", (int)c, "k",
                                        (int)pmap_copy_k(&v, c), "m", (int)pmap_copy_m(&v, c),
                                        "shards_expected", (json_int_t)copy_expected[c],
                                        "shards_missing", (json_int_t)copy_missing[c]));
    }
    json_t *o =
        json_pack("{s:I, s:I, s:I, s:I, s:I, s:I, s:o, s:o}", "plain_objects", (json_int_t)plain,
                  "epoch", (json_int_t)mp->placement_map_reply->current, "unsettled_groups",
                  (json_int_t)mp->placement_map_reply->n_fallback, "chunks", (json_int_t)chunks,
                  "shards_expected", (json_int_t)expected, "shards_missing", (json_int_t)missing,
                  "examples", examples, "copies", per_copy);
    json_object_set_new(o, "shards_extra", json_integer((json_int_t)extra));
    json_object_set_new(o, "shards_held", nodes_held);
    char *s = json_dumps(o, JSON_COMPACT);
    printf("%s\n", s);
    free(s);
    json_decref(o);
    rc = missing == 0 && mp->placement_map_reply->n_fallback == 0 ? 0 : 1;
out:
    pmap_epoch_free(&ep);
    free(held);
    frame_free(st);
    frame_free(vl);
    frame_free(mp);
    repo_net_stop(net);
    tls_ctx_free(tls);
    return rc;
}
