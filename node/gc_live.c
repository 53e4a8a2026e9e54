/* Sorted id sets for garbage collection and the live set kept across a cycle's sweeps (gc_live.h).
 */
#include "node/gc_live.h"

#include <stdlib.h>
#include <string.h>

#include "common/alloc.h"

int gc_idvec_push(struct gc_idvec *a, const uint8_t id[GC_ID_LEN])
{
    if (a->n == a->cap) {
        size_t cap = a->cap == 0 ? 1024 : a->cap * 2;
        uint8_t(*p)[GC_ID_LEN] = hbc_realloc(a->v, cap * GC_ID_LEN);
        if (p == NULL) {
            return HBC_ENOMEM;
        }
        a->v = p;
        a->cap = cap;
    }
    memcpy(a->v[a->n++], id, GC_ID_LEN);
    return 0;
}

static int id_cmp(const void *a, const void *b)
{
    return memcmp(a, b, GC_ID_LEN);
}

void gc_idvec_sort_unique(struct gc_idvec *a)
{
    if (a->n < 2) {
        return;
    }
    qsort(a->v, a->n, GC_ID_LEN, id_cmp);
    size_t w = 1;
    for (size_t i = 1; i < a->n; i++) {
        if (memcmp(a->v[i], a->v[w - 1], GC_ID_LEN) != 0) {
            memcpy(a->v[w++], a->v[i], GC_ID_LEN);
        }
    }
    a->n = w;
}

bool gc_idvec_has(const struct gc_idvec *a, const uint8_t id[GC_ID_LEN])
{
    return a->n > 0 && bsearch(id, a->v, a->n, GC_ID_LEN, id_cmp) != NULL;
}

int gc_idvec_merge(struct gc_idvec *a, const uint8_t (*ids)[GC_ID_LEN], size_t n)
{
    if (n == 0) {
        return 0;
    }
    uint8_t(*out)[GC_ID_LEN] = hbc_malloc((a->n + n) * GC_ID_LEN);
    if (out == NULL) {
        return HBC_ENOMEM;
    }
    size_t i = 0, j = 0, k = 0;
    while (i < a->n || j < n) {
        int c = i == a->n ? 1 : j == n ? -1 : memcmp(a->v[i], ids[j], GC_ID_LEN);
        if (c <= 0) {
            memcpy(out[k++], a->v[i++], GC_ID_LEN);
            if (c == 0) {
                j++;
            }
        } else {
            memcpy(out[k++], ids[j++], GC_ID_LEN);
        }
    }
    hbc_free(a->v);
    a->v = out;
    a->cap = a->n + n;
    a->n = k;
    return 0;
}

void gc_idvec_clear(struct gc_idvec *a)
{
    hbc_free(a->v);
    *a = (struct gc_idvec){0};
}

void gc_live_clear(struct gc_live *c)
{
    gc_idvec_clear(&c->heads);
    gc_idvec_clear(&c->live);
    c->valid = false;
}

/* Whether every id of the sorted *sub is in the sorted *set. */
static bool idvec_subset(const struct gc_idvec *sub, const struct gc_idvec *set)
{
    size_t j = 0;
    for (size_t i = 0; i < sub->n; i++) {
        while (j < set->n && memcmp(set->v[j], sub->v[i], GC_ID_LEN) < 0) {
            j++;
        }
        if (j == set->n || memcmp(set->v[j], sub->v[i], GC_ID_LEN) != 0) {
            return false;
        }
    }
    return true;
}

int gc_live_update(struct gc_live *c, const uint8_t vault[GC_VAULT_LEN],
                   const uint8_t (*heads)[GC_ID_LEN], size_t n, uint64_t now_ms,
                   uint64_t max_age_ms, gc_mark_fn mark, void *ctx, size_t *marked, struct err *e)
{
    if (marked != NULL) {
        *marked = 0;
    }
    struct gc_idvec cur = {0};
    int rv = 0;
    for (size_t i = 0; i < n && rv == 0; i++) {
        rv = gc_idvec_push(&cur, heads[i]);
    }
    if (rv != 0) {
        gc_idvec_clear(&cur);
        gc_live_clear(c);
        return err_set(e, rv, "reference-list heads");
    }
    gc_idvec_sort_unique(&cur);
    bool keep = c->valid && memcmp(c->vault, vault, GC_VAULT_LEN) == 0 && now_ms >= c->used_ms &&
                now_ms - c->used_ms <= max_age_ms && idvec_subset(&c->heads, &cur);
    if (!keep) {
        gc_live_clear(c);
        memcpy(c->vault, vault, GC_VAULT_LEN);
    }
    c->valid = false; /* until every head is marked */
    for (size_t i = 0; i < cur.n && rv == 0; i++) {
        if (gc_idvec_has(&c->heads, cur.v[i])) {
            continue;
        }
        rv = mark(ctx, cur.v[i], &c->live, e);
        if (rv == 0) {
            rv = gc_idvec_merge(&c->heads, (const uint8_t(*)[GC_ID_LEN])cur.v[i], 1);
            if (rv != 0) {
                err_set(e, rv, "reference-list heads");
            }
        }
        if (rv == 0 && marked != NULL) {
            (*marked)++;
        }
    }
    gc_idvec_clear(&cur);
    if (rv != 0) {
        gc_live_clear(c);
        return rv;
    }
    c->valid = true;
    c->used_ms = now_ms;
    return 0;
}
