/* Unit tests for client/placement_map: groups, epochs, balance and movement of the group map. */
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "client/placement_map.h"
#include "common/alloc.h"

#define MAXN 40
#define CHUNKS 1000000
#define GROUPS PMAP_DEFAULT_GROUPS

/* An epoch record built in memory: node i is "n%02d". */
struct topo {
    char ids[MAXN][24];             /* node ids */
    char sites[MAXN][16];           /* sites */
    char media[MAXN][16];           /* media classes */
    bool worm[MAXN];                /* worm flags */
    Hbc__PlacementNode nodes[MAXN]; /* the records */
    Hbc__PlacementNode *ptrs[MAXN]; /* pointers to them */
    Hbc__PlacementEpoch rec;        /* the epoch */
    size_t n;                       /* nodes */
};

static void topo_add(struct topo *t, const char *site, const char *media, bool worm)
{
    assert_true(t->n < MAXN);
    size_t i = t->n++;
    snprintf(t->ids[i], sizeof t->ids[i], "n%02zu", i);
    snprintf(t->sites[i], sizeof t->sites[i], "%s", site);
    snprintf(t->media[i], sizeof t->media[i], "%s", media);
    hbc__placement_node__init(&t->nodes[i]);
    t->nodes[i].node_id = t->ids[i];
    t->nodes[i].site = t->sites[i];
    t->nodes[i].region = "eu";
    t->nodes[i].media = t->media[i];
    t->nodes[i].worm = worm;
    t->nodes[i].capacity_bytes = 64ull << 30;
    t->ptrs[i] = &t->nodes[i];
    t->rec.nodes = t->ptrs;
    t->rec.n_nodes = t->n;
}

/* 12 nodes: site-a 4 disk (home), site-b 4 tape, site-c 4 worm disk. */
static void topo_standard(struct topo *t, uint64_t epoch)
{
    memset(t, 0, sizeof *t);
    hbc__placement_epoch__init(&t->rec);
    t->rec.epoch = epoch;
    for (int i = 0; i < 4; i++) {
        topo_add(t, "site-a", "disk", false);
        topo_add(t, "site-b", "tape", false);
        topo_add(t, "site-c", "disk", true);
    }
}

static uint64_t next(uint64_t *x)
{
    uint64_t z = (*x += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static void chunk_id_of(uint64_t i, uint8_t id[32])
{
    uint64_t x = i * 7919 + 1;
    for (int w = 0; w < 4; w++) {
        uint64_t z = next(&x);
        memcpy(id + 8 * w, &z, 8);
    }
}

/* A vault of the built-in policy (unfitted, 4+2 per copy) or one plain 4+2 copy. */
static struct pmap_vault vault_of(bool policy, uint32_t groups)
{
    struct pmap_vault v;
    memset(&v, 0, sizeof v);
    for (int i = 0; i < 16; i++) {
        v.vault_id[i] = (uint8_t)(i + 1);
    }
    v.groups = groups;
    v.k = 4;
    v.m = 2;
    if (policy) {
        assert_int_equal(policy_builtin(POLICY_BUILTIN, &v.policy, NULL), 0);
        v.has_policy = true;
        v.copies = 3;
        snprintf(v.home_site, sizeof v.home_site, "site-a");
    } else {
        v.copies = 1;
    }
    return v;
}

/* Chunks per group for CHUNKS ids. */
static uint32_t *group_counts(uint32_t groups)
{
    uint32_t *count = calloc(groups, sizeof *count);
    assert_non_null(count);
    for (uint64_t i = 0; i < CHUNKS; i++) {
        uint8_t id[32];
        chunk_id_of(i, id);
        uint32_t g = pmap_group_of(id, groups);
        assert_true(g < groups);
        count[g]++;
    }
    return count;
}

static void test_group_of(void **state)
{
    (void)state;
    uint8_t id[32] = {0};
    id[7] = 5;
    assert_int_equal(pmap_group_of(id, 1024), 5);
    id[6] = 1; /* 0x0105: bit 8 counts too */
    assert_int_equal(pmap_group_of(id, 1024), 0x105);
    assert_int_equal(pmap_group_of(id, 1), 0);
    id[0] = 0xff; /* high bytes beyond the group count do not matter */
    assert_int_equal(pmap_group_of(id, 1024), 0x105);
}

static void test_balance_by_groups(void **state)
{
    (void)state;
    struct topo t;
    topo_standard(&t, 1);
    struct pmap_epoch ep;
    assert_int_equal(pmap_epoch_from_proto(&t.rec, &ep, NULL), 0);
    struct pmap_vault v = vault_of(true, GROUPS);
    uint32_t *count = group_counts(GROUPS);
    uint64_t load[MAXN] = {0};
    uint64_t total = 0;
    unsigned out[PLACEMENT_MAX_COPIES * PLACEMENT_MAX_WIDTH];
    for (uint32_t g = 0; g < GROUPS; g++) {
        bool placeable = false;
        assert_int_equal(pmap_group_nodes(&v, &ep, g, 6, out, &placeable, NULL), 0);
        assert_true(placeable);
        for (unsigned i = 0; i < 18; i++) {
            assert_true(out[i] < t.n);
            load[out[i]] += count[g];
            total += count[g];
        }
    }
    uint64_t max = 0;
    for (size_t i = 0; i < t.n; i++) {
        max = load[i] > max ? load[i] : max;
    }
    double avg = (double)total / (double)t.n;
    printf("groups: %d chunks in %u groups, 12 nodes, built-in policy: most loaded node %.4f x "
           "the average\n",
           CHUNKS, GROUPS, (double)max / avg);
    assert_true((double)max <= avg * 1.10);
    free(count);
    pmap_epoch_free(&ep);
}

static void test_add_node_moves_ideal_share(void **state)
{
    (void)state;
    struct topo t;
    topo_standard(&t, 1);
    struct pmap_epoch before;
    assert_int_equal(pmap_epoch_from_proto(&t.rec, &before, NULL), 0);
    struct topo u;
    topo_standard(&u, 2);
    topo_add(&u, "site-b", "tape", false);
    struct pmap_epoch after;
    assert_int_equal(pmap_epoch_from_proto(&u.rec, &after, NULL), 0);
    /* One 4+2 copy with no rule (site any, media any), as test_policy.c measures per chunk. */
    struct pmap_vault v = vault_of(false, GROUPS);
    v.has_policy = true;
    v.policy.ncopies = 1;
    v.policy.copies[0] = (struct policy_copy){.site = "any", .media = "any", .k = 4, .m = 2};
    snprintf(v.home_site, sizeof v.home_site, "site-a");
    uint32_t *count = group_counts(GROUPS);
    uint64_t moved = 0;
    unsigned a[PLACEMENT_MAX_WIDTH];
    unsigned b[PLACEMENT_MAX_WIDTH];
    for (uint32_t g = 0; g < GROUPS; g++) {
        assert_int_equal(pmap_group_nodes(&v, &before, g, 6, a, NULL, NULL), 0);
        assert_int_equal(pmap_group_nodes(&v, &after, g, 6, b, NULL, NULL), 0);
        for (unsigned s = 0; s < 6; s++) {
            /* Node ids n00..n11 keep their indexes; n12 is new. */
            moved += a[s] != b[s] ? count[g] : 0;
        }
    }
    double ideal = (double)CHUNKS * 6.0 / 13.0;
    printf("groups: add a 13th node to one 4+2 copy on 12: moved %llu shards of %d chunks, ideal "
           "%.0f, moved/ideal %.3f\n",
           (unsigned long long)moved, CHUNKS, ideal, (double)moved / ideal);
    assert_true((double)moved >= ideal * 0.8);
    assert_true((double)moved <= ideal * 2.0);
    free(count);
    pmap_epoch_free(&before);
    pmap_epoch_free(&after);
}

static void test_unplaceable_copy(void **state)
{
    (void)state;
    /* No worm node: copy 2 (offsite, immutable) cannot be placed; copies 0 and 1 are. */
    struct topo t;
    memset(&t, 0, sizeof t);
    hbc__placement_epoch__init(&t.rec);
    t.rec.epoch = 3;
    for (int i = 0; i < 4; i++) {
        topo_add(&t, "site-a", "disk", false);
        topo_add(&t, "site-b", "tape", false);
    }
    struct pmap_epoch ep;
    assert_int_equal(pmap_epoch_from_proto(&t.rec, &ep, NULL), 0);
    struct pmap_vault v = vault_of(true, GROUPS);
    unsigned out[PLACEMENT_MAX_COPIES * PLACEMENT_MAX_WIDTH];
    bool placeable = true;
    assert_int_equal(pmap_group_nodes(&v, &ep, 17, 6, out, &placeable, NULL), 0);
    assert_false(placeable);
    for (unsigned s = 0; s < 6; s++) {
        assert_true(out[s] < t.n && strcmp(t.sites[out[s]], "site-a") == 0);
        assert_true(out[6 + s] < t.n && strcmp(t.sites[out[6 + s]], "site-b") == 0);
        assert_int_equal(out[12 + s], PMAP_NONE);
    }
    /* A node's mask agrees with the map. */
    uint32_t mask = 0;
    assert_int_equal(pmap_node_mask(&v, &ep, 17, out[0], &mask, NULL), 0);
    assert_true(mask & 1u);
    pmap_epoch_free(&ep);
}

static void test_records_checked(void **state)
{
    (void)state;
    struct topo t;
    topo_standard(&t, 1);
    /* Unsorted nodes are refused. */
    Hbc__PlacementNode *tmp = t.ptrs[0];
    t.ptrs[0] = t.ptrs[1];
    t.ptrs[1] = tmp;
    struct pmap_epoch ep;
    struct err e;
    assert_int_equal(pmap_epoch_from_proto(&t.rec, &ep, &e), HBC_EFORMAT);
    assert_non_null(strstr(e.msg, "sorted"));
    /* A group count that is not a power of two is refused. */
    Hbc__VaultInfo vi = HBC__VAULT_INFO__INIT;
    uint8_t id[16] = {1};
    vi.vault_id.data = id;
    vi.vault_id.len = 16;
    vi.name = "v";
    vi.copies = 1;
    vi.k = 2;
    vi.m = 1;
    vi.has_placement_groups = true;
    vi.placement_groups = 1000;
    struct pmap_vault v;
    assert_int_equal(pmap_vault_from_info(&vi, &v, &e), HBC_EFORMAT);
    vi.placement_groups = 1024;
    assert_int_equal(pmap_vault_from_info(&vi, &v, &e), 0);
    assert_int_equal(v.groups, 1024);
    /* Out of memory is reported, not a crash. */
    topo_standard(&t, 1);
    alloc_fault_after(0);
    assert_int_equal(pmap_epoch_from_proto(&t.rec, &ep, &e), HBC_ENOMEM);
    alloc_fault_after(-1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_group_of),
        cmocka_unit_test(test_balance_by_groups),
        cmocka_unit_test(test_add_node_moves_ideal_share),
        cmocka_unit_test(test_unplaceable_copy),
        cmocka_unit_test(test_records_checked),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
