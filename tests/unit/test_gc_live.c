/* Unit tests for node/gc_live.c: sorted id sets and the live set kept across a cycle's sweeps. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "common/alloc.h"
#include "node/gc_live.h"

/*
 * A fake world of reference lists: head h (its first byte) names the chunk
 * ids (h, 0..h % 4 + 1) and itself. mark() records every head it loads and
 * fails for the head whose first byte is fail_at.
 */
struct world {
    unsigned calls;     /* heads loaded */
    uint8_t loaded[64]; /* first byte of each head loaded, in order */
    int fail_at;        /* a head that cannot be loaded, or -1 */
};

static void id_of(uint8_t id[GC_ID_LEN], uint8_t a, uint8_t b)
{
    memset(id, 0, GC_ID_LEN);
    id[0] = a;
    id[1] = b;
}

static int mark(void *ctx, const uint8_t head[GC_ID_LEN], struct gc_idvec *live, struct err *e)
{
    struct world *w = ctx;
    if (head[0] == w->fail_at) {
        return err_set(e, HBC_ENOTFOUND, "reference list %u", head[0]);
    }
    w->loaded[w->calls++ % 64] = head[0];
    uint8_t ids[8][GC_ID_LEN];
    size_t n = 0;
    for (uint8_t b = 1; b <= head[0] % 4 + 1; b++) {
        id_of(ids[n++], head[0], b);
    }
    int rv = gc_idvec_merge(live, (const uint8_t(*)[GC_ID_LEN])ids, n);
    return rv != 0 ? rv : gc_idvec_merge(live, (const uint8_t(*)[GC_ID_LEN])head, 1);
}

static bool is_live(const struct gc_live *c, uint8_t a, uint8_t b)
{
    uint8_t id[GC_ID_LEN];
    id_of(id, a, b);
    return gc_idvec_has(&c->live, id);
}

static const uint8_t VAULT_A[GC_VAULT_LEN] = {0xa};
static const uint8_t VAULT_B[GC_VAULT_LEN] = {0xb};

static void heads_of(uint8_t (*heads)[GC_ID_LEN], const uint8_t *firsts, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        id_of(heads[i], firsts[i], 0);
    }
}

/* The sweeps of one cycle load each reference list once; a new snapshot adds only its own. */
static void test_kept_and_extended(void **state)
{
    (void)state;
    struct world w = {.fail_at = -1};
    struct gc_live c = {0};
    uint8_t heads[4][GC_ID_LEN];
    heads_of(heads, (const uint8_t[]){3, 1, 2}, 3);
    size_t marked = 0;
    struct err e;
    assert_int_equal(gc_live_update(&c, VAULT_A, (const uint8_t(*)[GC_ID_LEN])heads, 3, 1000, 60000,
                                    mark, &w, &marked, &e),
                     0);
    assert_int_equal(marked, 3);
    assert_true(is_live(&c, 3, 4) && is_live(&c, 1, 2) && is_live(&c, 2, 3) && is_live(&c, 3, 0));
    assert_false(is_live(&c, 1, 3));
    assert_false(is_live(&c, 4, 1));
    /* The next sweep, same snapshots (another order, a duplicate): nothing loaded again. */
    heads_of(heads, (const uint8_t[]){2, 3, 1, 2}, 4);
    assert_int_equal(gc_live_update(&c, VAULT_A, (const uint8_t(*)[GC_ID_LEN])heads, 4, 2000, 60000,
                                    mark, &w, &marked, &e),
                     0);
    assert_int_equal(marked, 0);
    assert_int_equal(w.calls, 3);
    /* A backup committed meanwhile: only its list is loaded, and what it names is live. */
    heads_of(heads, (const uint8_t[]){1, 2, 3, 4}, 4);
    assert_int_equal(gc_live_update(&c, VAULT_A, (const uint8_t(*)[GC_ID_LEN])heads, 4, 3000, 60000,
                                    mark, &w, &marked, &e),
                     0);
    assert_int_equal(marked, 1);
    assert_int_equal(w.loaded[3], 4);
    assert_true(is_live(&c, 4, 1) && is_live(&c, 3, 4));
    gc_live_clear(&c);
}

/* A forgotten snapshot, another vault or an old set: built again, so nothing stays live for
 * nothing. */
static void test_rebuilt(void **state)
{
    (void)state;
    struct world w = {.fail_at = -1};
    struct gc_live c = {0};
    uint8_t heads[4][GC_ID_LEN];
    size_t marked = 0;
    struct err e;
    heads_of(heads, (const uint8_t[]){1, 2, 3}, 3);
    assert_int_equal(gc_live_update(&c, VAULT_A, (const uint8_t(*)[GC_ID_LEN])heads, 3, 1000, 60000,
                                    mark, &w, &marked, &e),
                     0);
    /* Snapshot 2 forgotten: its chunks must become deletable. */
    heads_of(heads, (const uint8_t[]){1, 3}, 2);
    assert_int_equal(gc_live_update(&c, VAULT_A, (const uint8_t(*)[GC_ID_LEN])heads, 2, 2000, 60000,
                                    mark, &w, &marked, &e),
                     0);
    assert_int_equal(marked, 2);
    assert_false(is_live(&c, 2, 1));
    assert_true(is_live(&c, 1, 2) && is_live(&c, 3, 4));
    /* The same heads in another vault. */
    assert_int_equal(gc_live_update(&c, VAULT_B, (const uint8_t(*)[GC_ID_LEN])heads, 2, 3000, 60000,
                                    mark, &w, &marked, &e),
                     0);
    assert_int_equal(marked, 2);
    /* Too old, and a clock that went back. */
    assert_int_equal(gc_live_update(&c, VAULT_B, (const uint8_t(*)[GC_ID_LEN])heads, 2, 63001,
                                    60000, mark, &w, &marked, &e),
                     0);
    assert_int_equal(marked, 2);
    assert_int_equal(gc_live_update(&c, VAULT_B, (const uint8_t(*)[GC_ID_LEN])heads, 2, 5000, 60000,
                                    mark, &w, &marked, &e),
                     0);
    assert_int_equal(marked, 2);
    /* No snapshots at all: an empty live set. */
    assert_int_equal(gc_live_update(&c, VAULT_B, NULL, 0, 6000, 60000, mark, &w, &marked, &e), 0);
    assert_int_equal(marked, 0);
    assert_int_equal(c.live.n, 0);
    gc_live_clear(&c);
}

/* A list that cannot be loaded fails the update and leaves nothing half-built for the next. */
static void test_failure_clears(void **state)
{
    (void)state;
    struct world w = {.fail_at = 2};
    struct gc_live c = {0};
    uint8_t heads[3][GC_ID_LEN];
    size_t marked = 0;
    struct err e;
    heads_of(heads, (const uint8_t[]){1, 2, 3}, 3);
    assert_int_equal(gc_live_update(&c, VAULT_A, (const uint8_t(*)[GC_ID_LEN])heads, 3, 1000, 60000,
                                    mark, &w, &marked, &e),
                     HBC_ENOTFOUND);
    assert_non_null(strstr(e.msg, "reference list 2"));
    assert_false(c.valid);
    assert_int_equal(c.live.n, 0);
    w.fail_at = -1;
    assert_int_equal(gc_live_update(&c, VAULT_A, (const uint8_t(*)[GC_ID_LEN])heads, 3, 2000, 60000,
                                    mark, &w, &marked, &e),
                     0);
    assert_int_equal(marked, 3);
    /* Out of memory while marking: the same. */
    heads_of(heads, (const uint8_t[]){1, 2, 5}, 3);
    alloc_fault_after(1); /* the heads array, then fail inside mark */
    int rv = gc_live_update(&c, VAULT_A, (const uint8_t(*)[GC_ID_LEN])heads, 3, 3000, 60000, mark,
                            &w, &marked, &e);
    alloc_fault_reset();
    assert_int_equal(rv, HBC_ENOMEM);
    assert_false(c.valid);
    gc_live_clear(&c);
}

/* Merging keeps the set sorted and unique, and room for pushes afterwards is real. */
static void test_idvec(void **state)
{
    (void)state;
    struct gc_idvec a = {0};
    uint8_t ids[3][GC_ID_LEN];
    id_of(ids[0], 1, 0);
    id_of(ids[1], 5, 0);
    id_of(ids[2], 9, 0);
    assert_int_equal(gc_idvec_merge(&a, (const uint8_t(*)[GC_ID_LEN])ids, 3), 0);
    id_of(ids[0], 5, 0);
    id_of(ids[1], 7, 0);
    assert_int_equal(gc_idvec_merge(&a, (const uint8_t(*)[GC_ID_LEN])ids, 2), 0);
    assert_int_equal(a.n, 4);
    assert_true(a.cap >= a.n);
    for (uint8_t i = 20; i < 30; i++) {
        uint8_t id[GC_ID_LEN];
        id_of(id, i, 0);
        assert_int_equal(gc_idvec_push(&a, id), 0);
    }
    id_of(ids[0], 7, 0);
    assert_int_equal(gc_idvec_push(&a, ids[0]), 0);
    gc_idvec_sort_unique(&a);
    assert_int_equal(a.n, 14);
    for (size_t i = 1; i < a.n; i++) {
        assert_true(memcmp(a.v[i - 1], a.v[i], GC_ID_LEN) < 0);
    }
    assert_true(gc_idvec_has(&a, ids[0]));
    gc_idvec_clear(&a);
    assert_false(gc_idvec_has(&a, ids[0]));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_kept_and_extended),
        cmocka_unit_test(test_rebuilt),
        cmocka_unit_test(test_failure_clears),
        cmocka_unit_test(test_idvec),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
