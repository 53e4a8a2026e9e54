/* Where each shard of a chunk goes: weighted rendezvous hashing (the rule is in placement.h). */
#include "client/placement.h"

#include <math.h>
#include <string.h>

#include "client/hashmix.h"
#include "common/alloc.h"

#define SITE_SALT 0x5349544553495445ull /* "SITESITE" */
/* Nodes whose working arrays fit on the stack; larger lists allocate. */
#define STACK_NODES 128

/* One candidate's rank: lower tier first, then the race (see placement.h). */
struct rank {
    unsigned tier; /* preference class; lower wins */
    uint64_t bits; /* x >> 11, used when weights are equal (larger wins) */
    double d;      /* draw, used when weights differ (smaller wins) */
};

static bool rank_better(const struct rank *a, const struct rank *b, bool equal_weights)
{
    if (a->tier != b->tier) {
        return a->tier < b->tier;
    }
    return equal_weights ? a->bits > b->bits : a->d < b->d;
}

/* What one call knows of a node. */
struct pnode {
    uint64_t key;  /* node key */
    double w;      /* weight */
    unsigned site; /* site number (order of first appearance) */
    unsigned used; /* earlier copies of this chunk using the node */
    bool in_copy;  /* used by the current copy (any pass) */
    bool in_pass;  /* used by the current copy in the current pass */
};

/* What one call knows of a site. */
struct psite {
    const char *name; /* borrowed from the node list */
    double w;         /* summed weight of its nodes */
    struct rank r;    /* its race for this chunk */
    bool picked;      /* already given a rank */
};

static int check_args(unsigned copies, unsigned width, const struct placement_node *nodes, size_t n,
                      struct err *e)
{
    if (n == 0 || n > PLACEMENT_MAX_NODES) {
        return err_set(e, HBC_EINVAL, "placement: %zu nodes (1..%u)", n, PLACEMENT_MAX_NODES);
    }
    if (width == 0 || width > PLACEMENT_MAX_WIDTH) {
        return err_set(e, HBC_EINVAL, "placement: %u shards per copy (1..%u)", width,
                       PLACEMENT_MAX_WIDTH);
    }
    if (copies == 0 || copies > PLACEMENT_MAX_COPIES) {
        return err_set(e, HBC_EINVAL, "placement: %u copies (1..%u)", copies, PLACEMENT_MAX_COPIES);
    }
    for (size_t i = 0; i < n; i++) {
        if (nodes[i].node_id == NULL || nodes[i].site == NULL) {
            return err_set(e, HBC_EINVAL, "placement: node %zu has no id or site", i);
        }
        if (i > 0 && strcmp(nodes[i - 1].node_id, nodes[i].node_id) >= 0) {
            return err_set(e, HBC_EINVAL, "placement: nodes not sorted by distinct ids at %zu", i);
        }
    }
    return 0;
}

/* Place copies 0..copies-1 with the working arrays pn and ps (n entries each). */
static void place(uint64_t seed, unsigned copies, unsigned width,
                  const struct placement_node *nodes, size_t n, struct pnode *pn, struct psite *ps,
                  unsigned *out_idx)
{
    /* Nodes: keys, weights, sites. */
    size_t nsites = 0;
    bool equal_nodes = true;
    for (size_t i = 0; i < n; i++) {
        const char *id = nodes[i].node_id;
        pn[i].key = hashmix_mix(hashmix_fnv(HASHMIX_FNV_OFFSET, id, strlen(id)));
        pn[i].w = nodes[i].capacity == 0 ? 1.0 : (double)nodes[i].capacity;
        pn[i].used = 0;
        equal_nodes &= nodes[i].capacity == nodes[0].capacity;
        size_t s = 0;
        while (s < nsites && strcmp(ps[s].name, nodes[i].site) != 0) {
            s++;
        }
        if (s == nsites) {
            ps[s].name = nodes[i].site;
            ps[s].w = 0;
            ps[s].picked = false;
            nsites++;
        }
        pn[i].site = (unsigned)s;
        ps[s].w += pn[i].w;
    }

    /* Sites: each one's race; home sites are handed out in race order. */
    bool equal_sites = true;
    for (size_t s = 0; s < nsites; s++) {
        equal_sites &= ps[s].w == ps[0].w;
    }
    for (size_t s = 0; s < nsites; s++) {
        uint64_t x = hashmix_mix(
            seed ^ hashmix_mix(hashmix_fnv(HASHMIX_FNV_OFFSET, ps[s].name, strlen(ps[s].name)) ^
                               SITE_SALT));
        ps[s].r = (struct rank){.tier = 0, .bits = x >> 11, .d = hashmix_draw(x, ps[s].w)};
    }
    unsigned home_of[PLACEMENT_MAX_COPIES];
    size_t ranked = nsites < copies ? nsites : copies;
    for (size_t r = 0; r < ranked; r++) {
        size_t best = nsites;
        for (size_t s = 0; s < nsites; s++) {
            if (!ps[s].picked &&
                (best == nsites || rank_better(&ps[s].r, &ps[best].r, equal_sites))) {
                best = s;
            }
        }
        ps[best].picked = true;
        home_of[r] = (unsigned)best;
    }

    for (unsigned c = 0; c < copies; c++) {
        unsigned home = home_of[c % ranked];
        for (size_t i = 0; i < n; i++) {
            pn[i].in_copy = false;
            pn[i].in_pass = false;
        }
        size_t in_pass = 0;
        for (unsigned s = 0; s < width; s++) {
            if (in_pass == n) {
                for (size_t i = 0; i < n; i++) {
                    pn[i].in_pass = false;
                }
                in_pass = 0;
            }
            uint64_t salt = hashmix_mix(((uint64_t)c * 64 + s + 1) * HASHMIX_GOLDEN);
            size_t best = n;
            struct rank br = {0};
            for (size_t i = 0; i < n; i++) {
                if (pn[i].in_pass) {
                    continue;
                }
                uint64_t x = hashmix_mix(seed ^ pn[i].key ^ salt);
                struct rank r = {.tier = 2 * pn[i].used + (pn[i].site != home ? 1u : 0u),
                                 .bits = x >> 11,
                                 .d = equal_nodes ? 0 : hashmix_draw(x, pn[i].w)};
                if (best == n || rank_better(&r, &br, equal_nodes)) {
                    best = i;
                    br = r;
                }
            }
            out_idx[(size_t)c * width + s] = (unsigned)best;
            pn[best].in_pass = true;
            pn[best].in_copy = true;
            in_pass++;
        }
        for (size_t i = 0; i < n; i++) {
            pn[i].used += pn[i].in_copy ? 1u : 0u;
        }
    }
}

int placement_chunk_nodes(const uint8_t vault_id[16], const uint8_t chunk_id[32], unsigned copies,
                          unsigned width, const struct placement_node *nodes, size_t n,
                          unsigned *out_idx, struct err *e)
{
    int rv = check_args(copies, width, nodes, n, e);
    if (rv != 0) {
        return rv;
    }
    struct pnode pn_stack[STACK_NODES];
    struct psite ps_stack[STACK_NODES];
    struct pnode *pn = pn_stack;
    struct psite *ps = ps_stack;
    if (n > STACK_NODES) {
        pn = hbc_malloc(n * sizeof *pn);
        ps = hbc_malloc(n * sizeof *ps);
        if (pn == NULL || ps == NULL) {
            hbc_free(pn);
            hbc_free(ps);
            return err_set(e, HBC_ENOMEM, "placement: %zu nodes", n);
        }
    }
    uint64_t seed =
        hashmix_mix(hashmix_fnv(hashmix_fnv(HASHMIX_FNV_OFFSET, vault_id, 16), chunk_id, 32));
    place(seed, copies, width, nodes, n, pn, ps, out_idx);
    if (pn != pn_stack) {
        hbc_free(pn);
        hbc_free(ps);
    }
    return 0;
}

int placement_shard_nodes(const uint8_t vault_id[16], const uint8_t chunk_id[32], unsigned copy,
                          unsigned width, const struct placement_node *nodes, size_t n,
                          unsigned *out_idx, struct err *e)
{
    if (copy >= PLACEMENT_MAX_COPIES || width == 0 || width > PLACEMENT_MAX_WIDTH) {
        return err_set(e, HBC_EINVAL, "placement: copy %u, %u shards per copy", copy, width);
    }
    unsigned all[PLACEMENT_MAX_COPIES * PLACEMENT_MAX_WIDTH];
    int rv = placement_chunk_nodes(vault_id, chunk_id, copy + 1, width, nodes, n, all, e);
    if (rv == 0) {
        memcpy(out_idx, all + (size_t)copy * width, width * sizeof *out_idx);
    }
    return rv;
}

bool placement_fit(size_t n, unsigned *copies, unsigned *k, unsigned *m)
{
    bool changed = false;
    if (n == 0) {
        return false;
    }
    if ((size_t)*k + *m > n) {
        unsigned half = (unsigned)(n / 2);
        unsigned nm = *m < half ? *m : half;
        unsigned nk = (unsigned)n - nm;
        changed = nm != *m || nk != *k;
        *m = nm;
        *k = nk < 1 ? 1 : nk;
    }
    if (*copies > n) {
        *copies = (unsigned)n;
        changed = true;
    }
    return changed;
}
