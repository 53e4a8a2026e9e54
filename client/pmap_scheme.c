/* Per-copy erasure schemes of a placed vault: widths, distinct schemes, shard slots
 * (placement_map.h). */
#include <string.h>

#include "client/placement_map.h"
#include "common/shard_scheme.h"

unsigned pmap_copy_k(const struct pmap_vault *v, unsigned c)
{
    return v->has_policy && c < v->policy.ncopies ? v->policy.copies[c].k : v->k;
}

unsigned pmap_copy_m(const struct pmap_vault *v, unsigned c)
{
    return v->has_policy && c < v->policy.ncopies ? v->policy.copies[c].m : v->m;
}

unsigned pmap_copy_width(const struct pmap_vault *v, unsigned c)
{
    return pmap_copy_k(v, c) + pmap_copy_m(v, c);
}

unsigned pmap_stride(const struct pmap_vault *v)
{
    unsigned w = v->k + v->m;
    for (unsigned c = 0; c < v->copies; c++) {
        unsigned cw = pmap_copy_width(v, c);
        w = cw > w ? cw : w;
    }
    return w;
}

uint32_t pmap_slot(const struct pmap_vault *v, unsigned c, unsigned s)
{
    return shard_slot(v->k, v->m, pmap_copy_k(v, c), pmap_copy_m(v, c), s);
}

unsigned pmap_schemes(const struct pmap_vault *v, struct pmap_scheme *out,
                      unsigned copy_scheme[PMAP_MAX_SCHEMES])
{
    unsigned n = 0;
    out[n++] = (struct pmap_scheme){.k = v->k, .m = v->m};
    for (unsigned c = 0; c < v->copies && c < PMAP_MAX_SCHEMES; c++) {
        unsigned k = pmap_copy_k(v, c), m = pmap_copy_m(v, c);
        unsigned x = 0;
        while (x < n && (out[x].k != k || out[x].m != m)) {
            x++;
        }
        if (x == n) {
            out[n++] = (struct pmap_scheme){.k = k, .m = m};
        }
        if (copy_scheme != NULL) {
            copy_scheme[c] = x;
        }
    }
    return n;
}

int pmap_node_masks(const struct pmap_vault *v, const struct pmap_epoch *ep, uint32_t group,
                    unsigned node, uint32_t masks[PMAP_MAX_SCHEMES], struct err *e)
{
    unsigned out[PLACEMENT_MAX_COPIES * PLACEMENT_MAX_WIDTH];
    struct pmap_scheme sch[PMAP_MAX_SCHEMES];
    unsigned copy_scheme[PMAP_MAX_SCHEMES];
    unsigned width = pmap_stride(v);
    memset(masks, 0, PMAP_MAX_SCHEMES * sizeof *masks);
    pmap_schemes(v, sch, copy_scheme);
    int rv = pmap_group_nodes(v, ep, group, width, out, NULL, e);
    if (rv != 0) {
        return rv;
    }
    for (unsigned c = 0; c < v->copies; c++) {
        for (unsigned s = 0; s < pmap_copy_width(v, c); s++) {
            if (out[c * width + s] == node) {
                masks[copy_scheme[c]] |= (uint32_t)1 << s;
            }
        }
    }
    return 0;
}
