/* Sorted id sets for garbage collection, and the live set a node keeps across the sweeps of a
 * cycle. */
#ifndef HBC_NODE_GC_LIVE_H
#define HBC_NODE_GC_LIVE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/err.h"

#define GC_ID_LEN 32    /* chunk ids and reference-list object ids */
#define GC_VAULT_LEN 16 /* vault ids */

/* A sorted, unique array of ids (after gc_idvec_sort_unique, or built by gc_idvec_merge). */
struct gc_idvec {
    uint8_t (*v)[GC_ID_LEN]; /* ids (owned) */
    size_t n;                /* how many */
    size_t cap;              /* room */
};

/* Append one id (unsorted until gc_idvec_sort_unique). Returns 0 or HBC_ENOMEM. */
int gc_idvec_push(struct gc_idvec *a, const uint8_t id[GC_ID_LEN]);

/* Sort bytewise and drop duplicates. */
void gc_idvec_sort_unique(struct gc_idvec *a);

/* Whether the sorted *a holds id (binary search). */
bool gc_idvec_has(const struct gc_idvec *a, const uint8_t id[GC_ID_LEN]);

/* Merge the sorted ids[0..n) into the sorted, unique *a (linear). Returns 0 or HBC_ENOMEM. */
int gc_idvec_merge(struct gc_idvec *a, const uint8_t (*ids)[GC_ID_LEN], size_t n);

/* Free the ids; *a is empty afterwards. */
void gc_idvec_clear(struct gc_idvec *a);

/*
 * Add what one snapshot references to live: the reference list whose head
 * object is head (every chunk id it names, and the ids of its own objects).
 * Returns 0 or the error that stopped it (live may then hold part of it).
 */
typedef int (*gc_mark_fn)(void *ctx, const uint8_t head[GC_ID_LEN], struct gc_idvec *live,
                          struct err *e);

/*
 * The live set of one vault that a node checks sweeps against: the union of
 * what the reference lists in heads name. A cycle proposes a sweep per 1,800
 * chunk ids, and each is checked against every snapshot present when it is
 * applied, so the set is kept between sweeps and only extended while the
 * snapshots stay the same or grow. Reference lists are immutable (their id is
 * the SHA-256 of their bytes), so marking a head again would add nothing.
 */
struct gc_live {
    bool valid;                  /* live and heads describe vault */
    uint8_t vault[GC_VAULT_LEN]; /* whose */
    struct gc_idvec heads;       /* reference-list heads marked into live (sorted) */
    struct gc_idvec live;        /* the union of what they name (sorted) */
    uint64_t used_ms;            /* when it was last brought up to date */
};

/*
 * Bring c up to date for vault and the snapshots whose reference-list heads
 * are heads[0..n) (any order, duplicates allowed), calling mark for each head
 * not yet marked. The set is kept and extended when c is valid for the same
 * vault, no older than max_age_ms at now_ms, and every head marked before is
 * still in heads; otherwise (another vault, a snapshot gone, too old) it is
 * built again from nothing, so that what a forgotten snapshot named does not
 * stay live. *marked (may be NULL) gets how many heads were marked now. On
 * any error c is cleared (the next call starts over) and the error returned:
 * HBC_ENOMEM or mark's. Thread: any, one at a time.
 */
int gc_live_update(struct gc_live *c, const uint8_t vault[GC_VAULT_LEN],
                   const uint8_t (*heads)[GC_ID_LEN], size_t n, uint64_t now_ms,
                   uint64_t max_age_ms, gc_mark_fn mark, void *ctx, size_t *marked, struct err *e);

/* Free c's sets and mark it invalid. */
void gc_live_clear(struct gc_live *c);

#endif /* HBC_NODE_GC_LIVE_H */
