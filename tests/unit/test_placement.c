/* Unit tests for client/placement: determinism, distinct nodes, copies apart, spread, movement. */
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "client/placement.h"

#define MAXN 32

/* A node list of n nodes "n00".."n(n-1)" spread round-robin over `sites` sites. */
struct cluster {
    char ids[MAXN][24];                /* node ids */
    char sites[MAXN][32];              /* their sites */
    struct placement_node nodes[MAXN]; /* the list placement sees */
    size_t n;                          /* how many */
};

static void cluster_make(struct cluster *c, size_t n, size_t sites, uint64_t capacity)
{
    assert_true(n <= MAXN);
    c->n = n;
    for (size_t i = 0; i < n; i++) {
        snprintf(c->ids[i], sizeof c->ids[i], "n%02zu", i);
        snprintf(c->sites[i], sizeof c->sites[i], "site-%zu", i % sites);
        c->nodes[i] = (struct placement_node){
            .node_id = c->ids[i], .site = c->sites[i], .capacity = capacity};
    }
}

/* Deterministic pseudo-random chunk ids (splitmix64). */
static void chunk_id_of(uint64_t i, uint8_t id[32])
{
    uint64_t x = i * 0x9e3779b97f4a7c15ull + 12345;
    for (int w = 0; w < 4; w++) {
        x += 0x9e3779b97f4a7c15ull;
        uint64_t z = x;
        z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
        z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
        z ^= z >> 31;
        memcpy(id + 8 * w, &z, 8);
    }
}

static const uint8_t vault[16] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16};

static void test_pinned(void **state)
{
    (void)state;
    /* The rule is a stored format: these answers must never change without a placement epoch. */
    struct cluster c;
    cluster_make(&c, 12, 3, 64ull << 30);
    uint8_t id[32];
    chunk_id_of(7, id);
    unsigned out[3 * 6];
    assert_int_equal(placement_chunk_nodes(vault, id, 3, 6, c.nodes, c.n, out, NULL), 0);
    static const unsigned pinned[3 * 6] = {10, 1, 7, 4, 9, 5, 2, 8, 11, 0, 3, 6, 0, 6, 9, 3, 7, 8};
    assert_memory_equal(out, pinned, sizeof out);

    /* Unequal weights take the floating-point path; pin it too. */
    c.nodes[5].capacity = 128ull << 30;
    c.nodes[11].capacity = 16ull << 30;
    c.nodes[7].capacity = 1ull << 30;
    assert_int_equal(placement_chunk_nodes(vault, id, 3, 6, c.nodes, c.n, out, NULL), 0);
    static const unsigned pinned_w[3 * 6] = {10, 1, 4, 7, 9, 5, 2, 8, 11,
                                             0,  3, 6, 0, 6, 9, 3, 5, 8};
    assert_memory_equal(out, pinned_w, sizeof out);
}

static void test_deterministic(void **state)
{
    (void)state;
    struct cluster a, b;
    cluster_make(&a, 9, 2, 1000);
    cluster_make(&b, 9, 2, 1000); /* same content, other memory */
    for (uint64_t i = 0; i < 200; i++) {
        uint8_t id[32];
        chunk_id_of(i, id);
        unsigned x[4 * 5], y[4 * 5];
        assert_int_equal(placement_chunk_nodes(vault, id, 4, 5, a.nodes, a.n, x, NULL), 0);
        assert_int_equal(placement_chunk_nodes(vault, id, 4, 5, b.nodes, b.n, y, NULL), 0);
        assert_memory_equal(x, y, sizeof x);
        /* One copy asked alone is the same as that copy of the whole chunk. */
        for (unsigned copy = 0; copy < 4; copy++) {
            unsigned one[5];
            assert_int_equal(placement_shard_nodes(vault, id, copy, 5, a.nodes, a.n, one, NULL), 0);
            assert_memory_equal(one, x + copy * 5, sizeof one);
        }
    }
    /* Another vault places the same chunk id elsewhere (most of the time). */
    uint8_t other[16] = {0};
    size_t differ = 0;
    for (uint64_t i = 0; i < 100; i++) {
        uint8_t id[32];
        chunk_id_of(i, id);
        unsigned x[5], y[5];
        assert_int_equal(placement_shard_nodes(vault, id, 0, 5, a.nodes, a.n, x, NULL), 0);
        assert_int_equal(placement_shard_nodes(other, id, 0, 5, a.nodes, a.n, y, NULL), 0);
        differ += memcmp(x, y, sizeof x) != 0;
    }
    assert_true(differ > 90);
}

static void test_distinct(void **state)
{
    (void)state;
    struct cluster c;
    for (size_t n = 1; n <= 20; n++) {
        cluster_make(&c, n, 3, 100);
        for (uint64_t i = 0; i < 300; i++) {
            uint8_t id[32];
            chunk_id_of(i, id);
            unsigned out[3 * 6];
            assert_int_equal(placement_chunk_nodes(vault, id, 3, 6, c.nodes, n, out, NULL), 0);
            for (unsigned copy = 0; copy < 3; copy++) {
                unsigned count[MAXN] = {0};
                for (unsigned s = 0; s < 6; s++) {
                    assert_true(out[copy * 6 + s] < n);
                    count[out[copy * 6 + s]]++;
                }
                /* Distinct when there are enough nodes; otherwise an even wrap-around. */
                for (size_t k = 0; k < n; k++) {
                    assert_true(count[k] >= 6 / n && count[k] <= (6 + n - 1) / n);
                }
            }
            /* With room for every shard of every copy, no node holds two. */
            if (n >= 18) {
                unsigned seen[MAXN] = {0};
                for (unsigned s = 0; s < 18; s++) {
                    assert_int_equal(seen[out[s]]++, 0);
                }
            }
        }
    }
}

static void test_copies_in_different_sites(void **state)
{
    (void)state;
    /* 3 sites of 6 nodes and 3 copies of 4+2: each copy lives in a site of its own. */
    struct cluster c;
    cluster_make(&c, 18, 3, 100);
    for (uint64_t i = 0; i < 500; i++) {
        uint8_t id[32];
        chunk_id_of(i, id);
        unsigned out[3 * 6];
        assert_int_equal(placement_chunk_nodes(vault, id, 3, 6, c.nodes, c.n, out, NULL), 0);
        bool site_used[3] = {false};
        for (unsigned copy = 0; copy < 3; copy++) {
            unsigned site = out[copy * 6] % 3;
            for (unsigned s = 0; s < 6; s++) {
                assert_int_equal(out[copy * 6 + s] % 3, site);
            }
            assert_false(site_used[site]);
            site_used[site] = true;
        }
    }
    /* 3 sites of 2 nodes: every copy needs all 6 nodes, and its two home-site nodes come first. */
    cluster_make(&c, 6, 3, 100);
    for (uint64_t i = 0; i < 500; i++) {
        uint8_t id[32];
        chunk_id_of(i, id);
        unsigned out[3 * 6];
        assert_int_equal(placement_chunk_nodes(vault, id, 3, 6, c.nodes, c.n, out, NULL), 0);
        for (unsigned copy = 0; copy < 3; copy++) {
            assert_int_equal(out[copy * 6] % 3, out[copy * 6 + 1] % 3);
        }
        assert_true(out[0] % 3 != out[6] % 3 && out[6] % 3 != out[12] % 3 &&
                    out[0] % 3 != out[12] % 3);
    }
}

static void test_spread(void **state)
{
    (void)state;
    struct cluster c;
    cluster_make(&c, 12, 1, 64ull << 30);
    enum { CHUNKS = 100000, COPIES = 3, WIDTH = 6 };
    static unsigned load[MAXN], first[MAXN];
    memset(load, 0, sizeof load);
    memset(first, 0, sizeof first);
    for (uint64_t i = 0; i < CHUNKS; i++) {
        uint8_t id[32];
        chunk_id_of(i, id);
        unsigned out[COPIES * WIDTH];
        assert_int_equal(placement_chunk_nodes(vault, id, COPIES, WIDTH, c.nodes, c.n, out, NULL),
                         0);
        for (unsigned s = 0; s < COPIES * WIDTH; s++) {
            load[out[s]]++;
        }
        first[out[0]]++;
    }
    double avg = (double)CHUNKS * COPIES * WIDTH / (double)c.n;
    unsigned max = 0, max_first = 0;
    for (size_t i = 0; i < c.n; i++) {
        max = load[i] > max ? load[i] : max;
        max_first = first[i] > max_first ? first[i] : max_first;
    }
    printf("spread: 12 nodes, %d chunks, %d copies of %d: most loaded %.4f of average; "
           "shard 0 of copy 0 (reads) %.4f\n",
           CHUNKS, COPIES, WIDTH, max / avg, max_first / ((double)CHUNKS / c.n));
    assert_true(max <= 1.10 * avg);
    assert_true(max_first <= 1.10 * ((double)CHUNKS / c.n));
}

static void test_weighted(void **state)
{
    (void)state;
    /* 24 nodes, one copy of 2+1: the node with twice the capacity takes clearly more. */
    struct cluster c;
    cluster_make(&c, 24, 1, 1000);
    c.nodes[7].capacity = 2000;
    static unsigned load[MAXN];
    memset(load, 0, sizeof load);
    enum { CHUNKS = 30000 };
    for (uint64_t i = 0; i < CHUNKS; i++) {
        uint8_t id[32];
        chunk_id_of(i, id);
        unsigned out[3];
        assert_int_equal(placement_chunk_nodes(vault, id, 1, 3, c.nodes, c.n, out, NULL), 0);
        for (unsigned s = 0; s < 3; s++) {
            load[out[s]]++;
        }
    }
    double others = 0;
    for (size_t i = 0; i < c.n; i++) {
        others += i == 7 ? 0 : load[i];
    }
    others /= (double)(c.n - 1);
    printf("weighted: double capacity node holds %.2f times the others' average\n",
           load[7] / others);
    assert_true(load[7] > 1.6 * others);
}

static void test_node_added(void **state)
{
    (void)state;
    /* 12 → 13 nodes: count the shards whose node changes against the ideal (the new node's share).
     */
    struct cluster before, after;
    cluster_make(&before, 12, 1, 100);
    cluster_make(&after, 13, 1, 100);
    enum { CHUNKS = 20000, COPIES = 3, WIDTH = 6 };
    size_t moved = 0, to_new = 0;
    for (uint64_t i = 0; i < CHUNKS; i++) {
        uint8_t id[32];
        chunk_id_of(i, id);
        unsigned x[COPIES * WIDTH], y[COPIES * WIDTH];
        assert_int_equal(
            placement_chunk_nodes(vault, id, COPIES, WIDTH, before.nodes, before.n, x, NULL), 0);
        assert_int_equal(
            placement_chunk_nodes(vault, id, COPIES, WIDTH, after.nodes, after.n, y, NULL), 0);
        for (unsigned s = 0; s < COPIES * WIDTH; s++) {
            moved += x[s] != y[s];
            to_new += y[s] == 12;
        }
    }
    double ideal = (double)CHUNKS * COPIES * WIDTH / 13.0;
    printf("node added (12 -> 13, %d copies of %d): moved %zu shards, ideal %.0f, moved/ideal "
           "%.2f; %zu went to the new node\n",
           COPIES, WIDTH, moved, ideal, moved / ideal, to_new);
    assert_true(moved >= to_new);
    double crowded = moved / ideal;

    /* With room for every copy on distinct nodes (24 → 25), movement is close to ideal. */
    cluster_make(&before, 24, 1, 100);
    cluster_make(&after, 25, 1, 100);
    moved = 0;
    for (uint64_t i = 0; i < CHUNKS; i++) {
        uint8_t id[32];
        chunk_id_of(i, id);
        unsigned x[COPIES * WIDTH], y[COPIES * WIDTH];
        assert_int_equal(
            placement_chunk_nodes(vault, id, COPIES, WIDTH, before.nodes, before.n, x, NULL), 0);
        assert_int_equal(
            placement_chunk_nodes(vault, id, COPIES, WIDTH, after.nodes, after.n, y, NULL), 0);
        for (unsigned s = 0; s < COPIES * WIDTH; s++) {
            moved += x[s] != y[s];
        }
    }
    ideal = (double)CHUNKS * COPIES * WIDTH / 25.0;
    printf("node added (24 -> 25): moved/ideal %.2f\n", moved / ideal);
    /* Cutting one ranking into slices would instead shift every slot after the new node. */
    assert_true(crowded < 4.0);
    assert_true(moved < 2.5 * ideal);
}

static void test_bad_arguments(void **state)
{
    (void)state;
    struct cluster c;
    cluster_make(&c, 4, 1, 1);
    uint8_t id[32] = {0};
    unsigned out[PLACEMENT_MAX_COPIES * PLACEMENT_MAX_WIDTH];
    struct err e;
    assert_int_equal(placement_chunk_nodes(vault, id, 1, 6, c.nodes, 0, out, &e), HBC_EINVAL);
    assert_int_equal(placement_chunk_nodes(vault, id, 1, 0, c.nodes, 4, out, &e), HBC_EINVAL);
    assert_int_equal(
        placement_chunk_nodes(vault, id, 1, PLACEMENT_MAX_WIDTH + 1, c.nodes, 4, out, &e),
        HBC_EINVAL);
    assert_int_equal(placement_chunk_nodes(vault, id, 0, 6, c.nodes, 4, out, &e), HBC_EINVAL);
    assert_int_equal(placement_shard_nodes(vault, id, PLACEMENT_MAX_COPIES, 6, c.nodes, 4, out, &e),
                     HBC_EINVAL);
    /* Unsorted and duplicate node ids. */
    struct placement_node swapped = c.nodes[1];
    c.nodes[1] = c.nodes[2];
    c.nodes[2] = swapped;
    assert_int_equal(placement_chunk_nodes(vault, id, 1, 2, c.nodes, 4, out, &e), HBC_EINVAL);
    assert_non_null(strstr(e.msg, "sorted"));
    cluster_make(&c, 4, 1, 1);
    c.nodes[2].node_id = c.nodes[1].node_id;
    assert_int_equal(placement_chunk_nodes(vault, id, 1, 2, c.nodes, 4, out, &e), HBC_EINVAL);
}

static void test_fit(void **state)
{
    (void)state;
    struct {
        size_t n;
        unsigned copies, k, m; /* asked */
        unsigned rc, rk, rm;   /* given */
        bool changed;
    } cases[] = {
        {1, 3, 4, 2, 1, 1, 0, true},   {2, 3, 4, 2, 2, 1, 1, true},  {3, 3, 4, 2, 3, 2, 1, true},
        {4, 3, 4, 2, 3, 2, 2, true},   {5, 3, 4, 2, 3, 3, 2, true},  {6, 3, 4, 2, 3, 4, 2, false},
        {12, 3, 4, 2, 3, 4, 2, false}, {7, 2, 10, 2, 2, 5, 2, true}, {4, 1, 3, 0, 1, 3, 0, false},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        unsigned copies = cases[i].copies, k = cases[i].k, m = cases[i].m;
        assert_int_equal(placement_fit(cases[i].n, &copies, &k, &m), cases[i].changed);
        assert_int_equal(copies, cases[i].rc);
        assert_int_equal(k, cases[i].rk);
        assert_int_equal(m, cases[i].rm);
        assert_true(k + m <= cases[i].n);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_pinned),     cmocka_unit_test(test_deterministic),
        cmocka_unit_test(test_distinct),   cmocka_unit_test(test_copies_in_different_sites),
        cmocka_unit_test(test_spread),     cmocka_unit_test(test_weighted),
        cmocka_unit_test(test_node_added), cmocka_unit_test(test_bad_arguments),
        cmocka_unit_test(test_fit),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
