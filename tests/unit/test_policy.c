/* Unit tests for client/policy: rules honoured, determinism, spread, movement, the 3-2-1-1-0 check.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "client/policy.h"
#include "common/alloc.h"

#define MAXN 40
#define PINNED "9,6,3,0,0,3|10,1,4,7,1,10|5,8,2,11,2,8" /* chunk 7, built-in policy, unfitted */

/* A topology: node i is "n%02d", with its site, region, media and worm flag. */
struct topo {
    char ids[MAXN][24];             /* node ids */
    char sites[MAXN][16];           /* sites */
    char media[MAXN][16];           /* media classes */
    struct policy_node nodes[MAXN]; /* the list the policy sees */
    size_t n;                       /* how many */
};

static void topo_add(struct topo *t, const char *site, const char *media, bool worm)
{
    assert_true(t->n < MAXN);
    size_t i = t->n++;
    snprintf(t->ids[i], sizeof t->ids[i], "n%02zu", i);
    snprintf(t->sites[i], sizeof t->sites[i], "%s", site);
    snprintf(t->media[i], sizeof t->media[i], "%s", media);
    t->nodes[i] = (struct policy_node){.node_id = t->ids[i],
                                       .site = t->sites[i],
                                       .region = "eu",
                                       .media = t->media[i],
                                       .worm = worm,
                                       .up = true,
                                       .capacity = 64ull << 30};
}

/* 12 nodes: site-a 4 disk (home), site-b 4 tape, site-c 4 worm disk. */
static void topo_standard(struct topo *t)
{
    memset(t, 0, sizeof *t);
    for (int i = 0; i < 4; i++) {
        topo_add(t, "site-a", "disk", false);
        topo_add(t, "site-b", "tape", false);
        topo_add(t, "site-c", "disk", true);
    }
}

/* Deterministic pseudo-random 64-bit values (splitmix64). */
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

static const uint8_t vault[16] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16};

static struct policy builtin(void)
{
    struct policy p;
    assert_int_equal(policy_builtin(POLICY_BUILTIN, &p, NULL), 0);
    return p;
}

static void test_builtin_and_bounds(void **state)
{
    (void)state;
    struct policy p = builtin();
    assert_int_equal(p.ncopies, 3);
    assert_string_equal(p.copies[1].media, "different");
    assert_true(p.copies[2].immutable);
    assert_int_equal(policy_validate(&p, NULL), 0);
    struct err e;
    assert_int_equal(policy_builtin("4-3-2-1", &p, &e), HBC_ENOTFOUND);

    p = builtin();
    p.copies[1].k = 17;
    assert_int_equal(policy_validate(&p, &e), HBC_EINVAL);
    assert_non_null(strstr(e.msg, "copy 1"));
    p = builtin();
    p.copies[0].m = 9;
    assert_int_equal(policy_validate(&p, &e), HBC_EINVAL);
    p = builtin();
    p.ncopies = 9;
    assert_int_equal(policy_validate(&p, &e), HBC_EINVAL);
    p = builtin();
    p.copies[2].site[0] = '\0';
    assert_int_equal(policy_validate(&p, &e), HBC_EINVAL);

    /* Round trip through the stored form. */
    p = builtin();
    Hbc__VaultPolicy pb = HBC__VAULT_POLICY__INIT;
    Hbc__CopyRule rules[POLICY_MAX_COPIES];
    Hbc__CopyRule *ptrs[POLICY_MAX_COPIES];
    policy_to_proto(&p, &pb, rules, ptrs);
    size_t len = hbc__vault_policy__get_packed_size(&pb);
    uint8_t buf[512];
    assert_true(len <= sizeof buf);
    hbc__vault_policy__pack(&pb, buf);
    Hbc__VaultPolicy *back = hbc__vault_policy__unpack(NULL, len, buf);
    assert_non_null(back);
    struct policy q;
    assert_int_equal(policy_from_proto(back, &q, NULL), 0);
    assert_memory_equal(&p, &q, sizeof p);
    hbc__vault_policy__free_unpacked(back, NULL);
}

static void test_pinned_and_deterministic(void **state)
{
    (void)state;
    struct topo t;
    topo_standard(&t);
    struct policy p = builtin();
    unsigned a[POLICY_MAX_COPIES * POLICY_MAX_WIDTH] = {0};
    unsigned b[POLICY_MAX_COPIES * POLICY_MAX_WIDTH] = {0};
    uint8_t id[32];
    for (uint64_t i = 0; i < 200; i++) {
        chunk_id_of(i, id);
        assert_int_equal(policy_chunk_nodes(vault, id, &p, "site-a", t.nodes, t.n, a, NULL), 0);
        assert_int_equal(policy_chunk_nodes(vault, id, &p, "site-a", t.nodes, t.n, b, NULL), 0);
        assert_memory_equal(a, b, sizeof a);
    }
    /* The rule is a stored format: this answer must not change without a placement epoch. */
    chunk_id_of(7, id);
    assert_int_equal(policy_chunk_nodes(vault, id, &p, "site-a", t.nodes, t.n, a, NULL), 0);
    char got[256] = "";
    size_t off = 0;
    for (unsigned c = 0; c < 3; c++) {
        for (unsigned s = 0; s < 6; s++) {
            off +=
                (size_t)snprintf(got + off, sizeof got - off, "%u%s", a[c * POLICY_MAX_WIDTH + s],
                                 s == 5 ? (c == 2 ? "" : "|") : ",");
        }
    }
    printf("pinned placement of chunk 7: %s\n", got);
    assert_string_equal(got, PINNED);
}

/* Count of distinct nodes among a copy's shards. */
static unsigned distinct(const unsigned *idx, unsigned width)
{
    unsigned d = 0;
    for (unsigned s = 0; s < width; s++) {
        bool seen = false;
        for (unsigned q = 0; q < s; q++) {
            seen |= idx[q] == idx[s];
        }
        d += seen ? 0u : 1u;
    }
    return d;
}

static void test_rules_random_topologies(void **state)
{
    (void)state;
    static const char *sites[] = {"site-a", "site-b", "site-c", "site-d"};
    static const char *media[] = {"disk", "tape", "object"};
    uint64_t rng = 42;
    unsigned placed = 0, refused = 0;
    for (int round = 0; round < 1000; round++) {
        struct topo t;
        memset(&t, 0, sizeof t);
        size_t n = 3 + next(&rng) % 30;
        for (size_t i = 0; i < n; i++) {
            topo_add(&t, sites[next(&rng) % 4], media[next(&rng) % 3], next(&rng) % 3 == 0);
            t.nodes[i].capacity = (1 + next(&rng) % 8) << 30;
        }
        struct policy p = builtin();
        bool el[POLICY_MAX_COPIES * MAXN];
        assert_int_equal(policy_eligible(&p, "site-a", t.nodes, t.n, el, NULL), 0);
        struct policy fitted = p;
        struct err e;
        int rv = policy_fit(&fitted, "site-a", t.nodes, t.n, NULL, 0, &e);
        if (rv != 0) {
            assert_int_equal(rv, HBC_ETOOFEW);
            assert_non_null(strstr(e.msg, "copy "));
            refused++;
            continue;
        }
        placed++;
        for (uint64_t k = 0; k < 20; k++) {
            uint8_t id[32];
            chunk_id_of(k + (uint64_t)round * 100, id);
            unsigned idx[POLICY_MAX_COPIES * POLICY_MAX_WIDTH];
            assert_int_equal(
                policy_chunk_nodes(vault, id, &fitted, "site-a", t.nodes, t.n, idx, NULL), 0);
            for (unsigned c = 0; c < 3; c++) {
                unsigned w = fitted.copies[c].k + fitted.copies[c].m;
                for (unsigned s = 0; s < w; s++) {
                    const struct policy_node *x = &t.nodes[idx[c * POLICY_MAX_WIDTH + s]];
                    assert_true(el[c * t.n + idx[c * POLICY_MAX_WIDTH + s]]);
                    if (c == 0) {
                        assert_string_equal(x->site, "site-a");
                    } else {
                        assert_string_not_equal(x->site, "site-a");
                    }
                    if (c == 1) {
                        /* No media class any home node has. */
                        for (size_t j = 0; j < t.n; j++) {
                            if (strcmp(t.nodes[j].site, "site-a") == 0) {
                                assert_string_not_equal(x->media, t.nodes[j].media);
                            }
                        }
                    }
                    if (c == 2) {
                        assert_true(x->worm);
                    }
                }
                /* Fitted, so every shard of a copy has its own node. */
                assert_int_equal(distinct(idx + c * POLICY_MAX_WIDTH, w), w);
            }
        }
    }
    printf("random topologies: %u placed, %u refused with a reason\n", placed, refused);
    assert_true(placed > 50);
    assert_true(refused > 50);
}

static void test_distinct_when_enough(void **state)
{
    (void)state;
    /* One copy over 12 nodes of any site and media: 6 shards on 6 nodes, always. */
    struct topo t;
    topo_standard(&t);
    struct policy p = {.ncopies = 1};
    p.copies[0] = (struct policy_copy){.site = "any", .media = "any", .k = 8, .m = 4};
    unsigned idx[POLICY_MAX_COPIES * POLICY_MAX_WIDTH];
    for (uint64_t i = 0; i < 2000; i++) {
        uint8_t id[32];
        chunk_id_of(i, id);
        assert_int_equal(policy_chunk_nodes(vault, id, &p, "site-a", t.nodes, t.n, idx, NULL), 0);
        assert_int_equal(distinct(idx, 12), 12);
    }
}

#define SPREAD_CHUNKS 1000000

static void test_spread(void **state)
{
    (void)state;
    struct topo t;
    topo_standard(&t);
    struct policy p = builtin();
    uint64_t load[MAXN] = {0};
    unsigned idx[POLICY_MAX_COPIES * POLICY_MAX_WIDTH];
    uint64_t total = 0;
    for (uint64_t i = 0; i < SPREAD_CHUNKS; i++) {
        uint8_t id[32];
        chunk_id_of(i, id);
        assert_int_equal(policy_chunk_nodes(vault, id, &p, "site-a", t.nodes, t.n, idx, NULL), 0);
        for (unsigned c = 0; c < 3; c++) {
            for (unsigned s = 0; s < 6; s++) {
                load[idx[c * POLICY_MAX_WIDTH + s]]++;
                total++;
            }
        }
    }
    uint64_t max = 0;
    for (size_t i = 0; i < t.n; i++) {
        max = load[i] > max ? load[i] : max;
    }
    double avg = (double)total / (double)t.n;
    printf("spread: %d chunks, 12 nodes, built-in policy: most loaded node %.4f x the average\n",
           SPREAD_CHUNKS, (double)max / avg);
    assert_true((double)max <= avg * 1.10);

    /* One copy of 4+2 over all 12 nodes, unequal capacities (1..3 units). */
    struct policy one = {.ncopies = 1};
    one.copies[0] = (struct policy_copy){.site = "any", .media = "any", .k = 4, .m = 2};
    uint64_t cap_total = 0;
    for (size_t i = 0; i < t.n; i++) {
        t.nodes[i].capacity = (1 + i % 3) << 30;
        cap_total += t.nodes[i].capacity;
        load[i] = 0;
    }
    total = 0;
    for (uint64_t i = 0; i < SPREAD_CHUNKS / 4; i++) {
        uint8_t id[32];
        chunk_id_of(i, id);
        assert_int_equal(policy_chunk_nodes(vault, id, &one, "site-a", t.nodes, t.n, idx, NULL), 0);
        for (unsigned s = 0; s < 6; s++) {
            load[idx[s]]++;
            total++;
        }
    }
    double worst = 0;
    for (size_t i = 0; i < t.n; i++) {
        double share = (double)load[i] / (double)total;
        double want = (double)t.nodes[i].capacity / (double)cap_total;
        double ratio = share / want;
        worst = ratio > worst ? ratio : worst;
    }
    printf("spread: weighted 1:2:3 capacities, one 4+2 copy on 12 nodes: worst node %.4f x its "
           "capacity share\n",
           worst);
}

static void test_add_node_moves_ideal_share(void **state)
{
    (void)state;
    struct topo t;
    topo_standard(&t);
    /* What a vault on this topology stores: the built-in policy fitted to 2+2 per copy. */
    struct policy p = builtin();
    assert_int_equal(policy_fit(&p, "site-a", t.nodes, t.n, NULL, 0, NULL), 0);
    enum { CHUNKS = 200000, W = 4 };
    unsigned *before = malloc((size_t)CHUNKS * 3 * 6 * sizeof *before);
    assert_non_null(before);
    unsigned idx[POLICY_MAX_COPIES * POLICY_MAX_WIDTH];
    for (uint64_t i = 0; i < CHUNKS; i++) {
        uint8_t id[32];
        chunk_id_of(i, id);
        assert_int_equal(policy_chunk_nodes(vault, id, &p, "site-a", t.nodes, t.n, idx, NULL), 0);
        for (unsigned c = 0; c < 3; c++) {
            memcpy(before + i * 3 * W + c * W, idx + c * POLICY_MAX_WIDTH, W * sizeof *idx);
        }
    }
    /* A 13th node ("n12", sorts last) in site-b with tape: copy 1 grows from 4 to 5 nodes. */
    topo_add(&t, "site-b", "tape", false);
    uint64_t moved = 0;
    for (uint64_t i = 0; i < CHUNKS; i++) {
        uint8_t id[32];
        chunk_id_of(i, id);
        assert_int_equal(policy_chunk_nodes(vault, id, &p, "site-a", t.nodes, t.n, idx, NULL), 0);
        for (unsigned c = 0; c < 3; c++) {
            for (unsigned s = 0; s < W; s++) {
                moved += before[i * 3 * W + c * W + s] != idx[c * POLICY_MAX_WIDTH + s] ? 1u : 0u;
            }
        }
    }
    /* Ideal: the new node takes its share of copy 1 (4 shards over 5 nodes). */
    double ideal = (double)CHUNKS * W / 5.0;
    printf("add a node to copy 1's 4 (2+2 each): moved %llu shards, ideal %.0f, moved/ideal "
           "%.3f\n",
           (unsigned long long)moved, ideal, (double)moved / ideal);
    assert_true((double)moved >= ideal * 0.9);
    assert_true((double)moved <= ideal * 2.0);

    /* One copy of 4+2 over 12 nodes, add a 13th: ideal 6/13 shards per chunk. */
    struct topo u;
    topo_standard(&u);
    struct policy one = {.ncopies = 1};
    one.copies[0] = (struct policy_copy){.site = "any", .media = "any", .k = 4, .m = 2};
    for (uint64_t i = 0; i < CHUNKS; i++) {
        uint8_t id[32];
        chunk_id_of(i, id);
        assert_int_equal(policy_chunk_nodes(vault, id, &one, "site-a", u.nodes, u.n, idx, NULL), 0);
        memcpy(before + i * 6, idx, 6 * sizeof *idx);
    }
    topo_add(&u, "site-b", "tape", false);
    moved = 0;
    for (uint64_t i = 0; i < CHUNKS; i++) {
        uint8_t id[32];
        chunk_id_of(i, id);
        assert_int_equal(policy_chunk_nodes(vault, id, &one, "site-a", u.nodes, u.n, idx, NULL), 0);
        for (unsigned s = 0; s < 6; s++) {
            moved += before[i * 6 + s] != idx[s] ? 1u : 0u;
        }
    }
    ideal = (double)CHUNKS * 6.0 / 13.0;
    printf("add a 13th node to one 4+2 copy on 12: moved %llu shards, ideal %.0f, moved/ideal "
           "%.3f\n",
           (unsigned long long)moved, ideal, (double)moved / ideal);
    assert_true((double)moved >= ideal * 0.9);
    assert_true((double)moved <= ideal * 2.0);
    free(before);
}

static void test_check_all_pass(void **state)
{
    (void)state;
    struct topo t;
    topo_standard(&t);
    struct policy p = builtin();
    struct policy_restore r = {.known = true, .passed = true, .errors = 0};
    struct policy_report rep;
    assert_int_equal(policy_check(&p, "site-a", t.nodes, t.n, &r, &rep, NULL), 0);
    for (int d = 0; d < POLICY_DIGITS; d++) {
        printf("%-12s %s: %s\n", policy_digit_name((enum policy_digit)d),
               rep.pass[d] ? "pass" : "FAIL", rep.reason[d]);
        assert_true(rep.pass[d]);
    }
    assert_true(rep.all_pass);
    /* 4 nodes for 6 shards: two nodes hold two shards, so a copy survives 1 node, not 2. */
    assert_false(rep.copy[0].distinct);
    assert_int_equal(rep.copy[0].nodes_lost, 1);
    assert_int_equal(rep.copy[0].sites_lost, 0);

    /* Unknown restore test: the 0 digit fails with its reason. */
    assert_int_equal(policy_check(&p, "site-a", t.nodes, t.n, NULL, &rep, NULL), 0);
    assert_false(rep.pass[POLICY_DIGIT_ERRORS]);
    assert_string_equal(rep.reason[POLICY_DIGIT_ERRORS], "unknown: no restore test recorded");
    assert_false(rep.all_pass);
    r = (struct policy_restore){.known = true, .passed = false, .errors = 3};
    assert_int_equal(policy_check(&p, "site-a", t.nodes, t.n, &r, &rep, NULL), 0);
    assert_false(rep.pass[POLICY_DIGIT_ERRORS]);
    assert_non_null(strstr(rep.reason[POLICY_DIGIT_ERRORS], "3 errors"));

    /* Distinct nodes: a 4+2 copy over 6 home nodes survives 2 node losses. */
    struct topo w;
    memset(&w, 0, sizeof w);
    for (int i = 0; i < 6; i++) {
        topo_add(&w, i < 3 ? "site-a" : "site-a2", "disk", false);
    }
    struct policy one = {.ncopies = 1};
    one.copies[0] = (struct policy_copy){.site = "eu", .media = "any", .k = 4, .m = 2};
    assert_int_equal(policy_check(&one, "site-a", w.nodes, w.n, NULL, &rep, NULL), 0);
    assert_true(rep.copy[0].distinct);
    assert_int_equal(rep.copy[0].nodes_lost, 2);
    assert_int_equal(rep.copy[0].sites_lost, 0);
    assert_false(rep.pass[POLICY_DIGIT_COPIES]);
}

static void test_check_no_worm(void **state)
{
    (void)state;
    struct topo t;
    topo_standard(&t);
    for (size_t i = 0; i < t.n; i++) {
        t.nodes[i].worm = false;
    }
    struct policy p = builtin();
    struct policy_restore r = {.known = true, .passed = true};
    struct policy_report rep;
    assert_int_equal(policy_check(&p, "site-a", t.nodes, t.n, &r, &rep, NULL), 0);
    printf("no worm: %s\n", rep.reason[POLICY_DIGIT_IMMUTABLE]);
    assert_false(rep.pass[POLICY_DIGIT_IMMUTABLE]);
    assert_string_equal(rep.reason[POLICY_DIGIT_IMMUTABLE],
                        "copy 2 (offsite, immutable): no worm node outside site-a");
    assert_true(rep.pass[POLICY_DIGIT_MEDIA]);
    assert_true(rep.pass[POLICY_DIGIT_OFFSITE]);
    assert_false(rep.all_pass);

    /* vault create's refusal names the same rule. */
    struct err e;
    assert_int_equal(policy_fit(&p, "site-a", t.nodes, t.n, NULL, 0, &e), HBC_ETOOFEW);
    assert_string_equal(e.msg, "copy 2 (offsite, immutable): no worm node outside site-a");
}

static void test_check_one_site(void **state)
{
    (void)state;
    struct topo t;
    topo_standard(&t);
    for (size_t i = 0; i < t.n; i++) {
        snprintf(t.sites[i], sizeof t.sites[i], "site-a");
    }
    struct policy p = builtin();
    struct policy_restore r = {.known = true, .passed = true};
    struct policy_report rep;
    assert_int_equal(policy_check(&p, "site-a", t.nodes, t.n, &r, &rep, NULL), 0);
    printf("one site: %s\n", rep.reason[POLICY_DIGIT_OFFSITE]);
    assert_false(rep.pass[POLICY_DIGIT_OFFSITE]);
    assert_string_equal(rep.reason[POLICY_DIGIT_OFFSITE], "every node is in the home site site-a");
    assert_false(rep.pass[POLICY_DIGIT_COPIES]);
    assert_false(rep.all_pass);
}

static void test_fit_notes(void **state)
{
    (void)state;
    struct topo t;
    topo_standard(&t);
    struct policy p = builtin();
    char notes[512];
    assert_int_equal(policy_fit(&p, "site-a", t.nodes, t.n, notes, sizeof notes, NULL), 0);
    printf("fit: %s\n", notes);
    assert_int_equal(p.copies[0].k + p.copies[0].m, 4);
    assert_int_equal(p.copies[0].m, 2);
    assert_non_null(strstr(notes, "copy 0 (home): 4 eligible nodes: using 2+2 instead of 4+2"));
}

static void test_large_topology_and_no_memory(void **state)
{
    (void)state;
    /* 300 nodes (past the stack buffers): site-a disk, site-b tape, site-c worm object. */
    enum { N = 300 };
    static char ids[N][16], sites[N][16], media[N][16];
    static struct policy_node nodes[N];
    static const char *mnames[] = {"disk", "tape", "object"};
    for (int i = 0; i < N; i++) {
        snprintf(ids[i], sizeof ids[i], "node-%03d", i);
        snprintf(sites[i], sizeof sites[i], "site-%c", 'a' + i % 3);
        snprintf(media[i], sizeof media[i], "%s", mnames[i % 3]);
        nodes[i] = (struct policy_node){.node_id = ids[i],
                                        .site = sites[i],
                                        .region = "eu",
                                        .media = media[i],
                                        .worm = i % 3 == 2,
                                        .up = true,
                                        .capacity = 1ull << 40};
    }
    struct policy p = builtin();
    assert_int_equal(policy_fit(&p, "site-a", nodes, N, NULL, 0, NULL), 0);
    unsigned idx[POLICY_MAX_COPIES * POLICY_MAX_WIDTH];
    for (uint64_t i = 0; i < 200; i++) {
        uint8_t id[32];
        chunk_id_of(i, id);
        assert_int_equal(policy_chunk_nodes(vault, id, &p, "site-a", nodes, N, idx, NULL), 0);
        for (unsigned c = 0; c < 3; c++) {
            assert_int_equal(distinct(idx + c * POLICY_MAX_WIDTH, 6), 6);
        }
    }
    uint8_t id[32];
    chunk_id_of(1, id);
    struct err e;
    alloc_fault_after(0);
    assert_int_equal(policy_chunk_nodes(vault, id, &p, "site-a", nodes, N, idx, &e), HBC_ENOMEM);
    struct policy_report rep;
    assert_int_equal(policy_check(&p, "site-a", nodes, N, NULL, &rep, &e), HBC_ENOMEM);
    alloc_fault_reset();
    assert_int_equal(policy_check(&p, "site-a", nodes, N, NULL, &rep, &e), 0);
    assert_true(rep.copy[0].distinct);
    assert_int_equal(rep.copy[0].nodes_lost, 2);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_builtin_and_bounds),
        cmocka_unit_test(test_pinned_and_deterministic),
        cmocka_unit_test(test_rules_random_topologies),
        cmocka_unit_test(test_distinct_when_enough),
        cmocka_unit_test(test_spread),
        cmocka_unit_test(test_add_node_moves_ideal_share),
        cmocka_unit_test(test_check_all_pass),
        cmocka_unit_test(test_check_no_worm),
        cmocka_unit_test(test_check_one_site),
        cmocka_unit_test(test_fit_notes),
        cmocka_unit_test(test_large_topology_and_no_memory),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
