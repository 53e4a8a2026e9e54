/* Unit tests for per-copy erasure schemes: shard slots, their wire form, placement per copy, and
 * the shard store's listing and garbage collection of every scheme of a chunk. */
#include <ftw.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "client/placement_map.h"
#include "client/policy.h"
#include "common/alloc.h"
#include "common/erasure.h"
#include "common/err.h"
#include "common/shard_scheme.h"
#include "node/shard_store.h"
#include "node/shard_store_list.h"

/* ---- slots and their wire form ---- */

static void test_base_scheme_keeps_plain_index(void **state)
{
    (void)state;
    for (unsigned s = 0; s < 6; s++) {
        uint32_t slot = shard_slot(4, 2, 4, 2, s);
        assert_int_equal(slot, s); /* exactly the key shards always had */
        assert_false(shard_slot_tagged(slot));
        assert_int_equal(shard_slot_index(slot), s);
        uint32_t index = 99, k = 99, m = 99;
        bool has = true;
        shard_slot_to_wire(slot, &index, &has, &k, &m);
        assert_int_equal(index, s);
        assert_false(has);
    }
}

static void test_other_scheme_round_trip(void **state)
{
    (void)state;
    /* Every scheme the bounds allow, every index: encode, to the wire, back, decode. */
    for (unsigned k = 1; k <= ERASURE_MAX_K; k++) {
        for (unsigned m = 0; m <= ERASURE_MAX_M; m++) {
            for (unsigned s = 0; s < k + m; s++) {
                uint32_t slot = shard_slot(4, 2, k, m, s);
                if (k == 4 && m == 2) {
                    assert_int_equal(slot, s);
                    continue;
                }
                assert_true(shard_slot_tagged(slot));
                assert_int_equal(shard_slot_index(slot), s);
                unsigned sk, sm, si;
                shard_slot_split(slot, &sk, &sm, &si);
                assert_int_equal(sk, k);
                assert_int_equal(sm, m);
                assert_int_equal(si, s);
                uint32_t wi, wk, wm;
                bool has = false;
                shard_slot_to_wire(slot, &wi, &has, &wk, &wm);
                assert_true(has);
                uint32_t back = 0;
                assert_int_equal(shard_slot_from_wire(wi, true, wk, true, wm, &back, NULL), 0);
                assert_int_equal(back, slot);
            }
        }
    }
    /* Two schemes of one chunk never share a slot, and a tagged slot never equals a plain one. */
    assert_int_not_equal(shard_slot(4, 2, 2, 1, 0), shard_slot(4, 2, 1, 1, 0));
    assert_int_not_equal(shard_slot(4, 2, 2, 1, 1), shard_slot(4, 2, 4, 2, 1));
}

static void test_wire_bounds(void **state)
{
    (void)state;
    struct err e;
    uint32_t slot = 7;
    /* One scheme field without the other. */
    assert_int_equal(shard_slot_from_wire(0, true, 2, false, 0, &slot, &e), HBC_ESCHEME);
    assert_non_null(strstr(e.msg, "scheme_k without scheme_m"));
    assert_int_equal(slot, 0);
    assert_int_equal(shard_slot_from_wire(0, false, 0, true, 1, &slot, &e), HBC_ESCHEME);
    /* k and m out of range (k 0, k 17, m 9, huge values that would overflow a shift). */
    assert_int_equal(shard_slot_from_wire(0, true, 0, true, 1, &slot, &e), HBC_ESCHEME);
    assert_non_null(strstr(e.msg, "scheme 0+1"));
    assert_int_equal(shard_slot_from_wire(0, true, 17, true, 1, &slot, &e), HBC_ESCHEME);
    assert_int_equal(shard_slot_from_wire(0, true, 2, true, 9, &slot, &e), HBC_ESCHEME);
    assert_int_equal(shard_slot_from_wire(0, true, UINT32_MAX, true, UINT32_MAX, &slot, &e),
                     HBC_ESCHEME);
    /* An index outside its scheme. */
    assert_int_equal(shard_slot_from_wire(3, true, 2, true, 1, &slot, &e), HBC_ESCHEME);
    assert_non_null(strstr(e.msg, "index 3 of a 2+1 scheme"));
    assert_int_equal(shard_slot_from_wire(2, true, 2, true, 1, &slot, &e), 0);
    assert_int_equal(slot, shard_slot(4, 2, 2, 1, 2));
    /* Without a scheme: a plain index below 24, never a tagged one smuggled in the index. */
    assert_int_equal(shard_slot_from_wire(23, false, 0, false, 0, &slot, &e), 0);
    assert_int_equal(slot, 23);
    assert_int_equal(shard_slot_from_wire(24, false, 0, false, 0, &slot, &e), HBC_ESCHEME);
    assert_int_equal(shard_slot_from_wire(shard_slot(4, 2, 2, 1, 0), false, 0, false, 0, &slot, &e),
                     HBC_ESCHEME);
}

/* ---- placement with per-copy schemes ---- */

static const char *NODE_IDS[] = {"a1", "a2", "a3", "a4", "b1", "b2", "b3", "c1", "c2"};

static struct pmap_vault scheme_vault(void)
{
    struct pmap_vault v;
    memset(&v, 0, sizeof v);
    memset(v.vault_id, 0x42, 16);
    v.copies = 3;
    v.k = 2;
    v.m = 2;
    v.groups = 64;
    v.has_policy = true;
    assert_int_equal(policy_builtin(POLICY_BUILTIN, &v.policy, NULL), 0);
    v.policy.copies[0].k = 2;
    v.policy.copies[0].m = 2;
    v.policy.copies[1].k = 2;
    v.policy.copies[1].m = 1;
    v.policy.copies[2].k = 1;
    v.policy.copies[2].m = 1;
    snprintf(v.home_site, sizeof v.home_site, "site-a");
    return v;
}

static void scheme_epoch(struct pmap_epoch *ep, struct policy_node *pol)
{
    memset(ep, 0, sizeof *ep);
    for (size_t i = 0; i < 9; i++) {
        bool a = i < 4, b = i >= 4 && i < 7;
        pol[i] = (struct policy_node){.node_id = NODE_IDS[i],
                                      .site = a   ? "site-a"
                                              : b ? "site-b"
                                                  : "site-c",
                                      .region = "",
                                      .media = b ? "hdd" : "ssd",
                                      .worm = !a && !b,
                                      .up = true,
                                      .capacity = 1};
    }
    ep->epoch = 1;
    ep->n = 9;
    ep->pol = pol;
}

static void test_placement_per_copy_width(void **state)
{
    (void)state;
    struct pmap_vault v = scheme_vault();
    struct policy_node pol[9];
    struct pmap_epoch ep;
    scheme_epoch(&ep, pol);
    assert_int_equal(pmap_stride(&v), 4);
    assert_int_equal(pmap_copy_width(&v, 0), 4);
    assert_int_equal(pmap_copy_width(&v, 1), 3);
    assert_int_equal(pmap_copy_width(&v, 2), 2);
    struct pmap_scheme sch[PMAP_MAX_SCHEMES];
    unsigned cs[PMAP_MAX_SCHEMES];
    assert_int_equal(pmap_schemes(&v, sch, cs), 3);
    assert_int_equal(sch[0].k, 2);
    assert_int_equal(sch[0].m, 2);
    assert_int_equal(cs[0], 0);
    assert_int_equal(cs[1], 1);
    assert_int_equal(cs[2], 2);
    assert_int_equal(pmap_slot(&v, 0, 3), 3);
    assert_int_equal(pmap_slot(&v, 1, 2), shard_slot(2, 2, 2, 1, 2));
    /* A wrong stride is refused. */
    unsigned out[PLACEMENT_MAX_COPIES * PLACEMENT_MAX_WIDTH];
    assert_int_equal(pmap_group_nodes(&v, &ep, 0, 3, out, NULL, NULL), HBC_EINVAL);
    for (uint32_t g = 0; g < v.groups; g++) {
        bool placeable = false;
        assert_int_equal(pmap_group_nodes(&v, &ep, g, 4, out, &placeable, NULL), 0);
        assert_true(placeable);
        for (unsigned c = 0; c < 3; c++) {
            unsigned used[9] = {0};
            for (unsigned s = 0; s < 4; s++) {
                unsigned n = out[c * 4 + s];
                if (s >= pmap_copy_width(&v, c)) {
                    assert_int_equal(n, PMAP_NONE); /* past the copy's width */
                    continue;
                }
                assert_true(n < 9);
                assert_int_equal(used[n]++, 0); /* each shard of a copy on its own node */
                assert_true(c == 0 ? n < 4 : c == 1 ? n >= 4 && n < 7 : n >= 7);
            }
        }
        /* The masks per scheme say the same. */
        for (unsigned node = 0; node < 9; node++) {
            uint32_t masks[PMAP_MAX_SCHEMES];
            assert_int_equal(pmap_node_masks(&v, &ep, g, node, masks, NULL), 0);
            for (unsigned c = 0; c < 3; c++) {
                for (unsigned s = 0; s < pmap_copy_width(&v, c); s++) {
                    bool here = out[c * 4 + s] == node;
                    assert_int_equal(here, (masks[c] >> s) & 1);
                }
            }
        }
    }
}

/* ---- the store: listing and garbage collection across schemes ---- */

static int rm_cb(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb;
    (void)flag;
    (void)ftw;
    return remove(path);
}

/* A real encoded shard of the given scheme, so that what is stored looks like what nodes hold. */
static void put_scheme(struct shard_store *st, const uint8_t vault[16], const uint8_t chunk[32],
                       unsigned base_k, unsigned base_m, unsigned k, unsigned m)
{
    uint8_t obj[1000];
    memset(obj, chunk[0] + (int)k, sizeof obj);
    uint8_t *blobs[ERASURE_MAX_SHARDS] = {0};
    size_t lens[ERASURE_MAX_SHARDS] = {0};
    assert_int_equal(erasure_shards_encode(vault, chunk, k, m, obj, sizeof obj, blobs, lens, NULL),
                     0);
    struct shard_put recs[ERASURE_MAX_SHARDS];
    int results[ERASURE_MAX_SHARDS];
    for (unsigned s = 0; s < k + m; s++) {
        memset(&recs[s], 0, sizeof recs[s]);
        memcpy(recs[s].key.vault_id, vault, 16);
        memcpy(recs[s].key.chunk_id, chunk, 32);
        recs[s].key.index = shard_slot(base_k, base_m, k, m, s);
        recs[s].data = blobs[s];
        recs[s].len = lens[s];
    }
    assert_int_equal(shard_store_put_batch(st, recs, k + m, results, NULL), 0);
    for (unsigned s = 0; s < k + m; s++) {
        assert_int_equal(results[s], 0);
        hbc_free(blobs[s]);
    }
}

static void test_store_every_scheme_lives_and_dies_with_its_chunk(void **state)
{
    (void)state;
    char dir[] = "/tmp/hbc-scheme-XXXXXX";
    assert_non_null(mkdtemp(dir));
    char sdir[64];
    snprintf(sdir, sizeof sdir, "%s/store", dir);
    struct shard_store *st = NULL;
    assert_int_equal(shard_store_open(sdir, NULL, &st, NULL), 0);
    uint8_t vault[16];
    memset(vault, 7, 16);
    uint8_t live[32], dead[32];
    memset(live, 0x11, 32);
    memset(dead, 0x22, 32);
    /* Both chunks hold their base scheme 2+2 and two others, 2+1 and 1+1. */
    for (int i = 0; i < 2; i++) {
        const uint8_t *c = i == 0 ? live : dead;
        put_scheme(st, vault, c, 2, 2, 2, 2);
        put_scheme(st, vault, c, 2, 2, 2, 1);
        put_scheme(st, vault, c, 2, 2, 1, 1);
    }
    struct shard_store_stats ss;
    shard_store_stats(st, &ss);
    assert_int_equal(ss.shard_count, 2 * (4 + 3 + 2));

    /* The mover's listing: each chunk once, every scheme's shards in its own mask. */
    struct shard_list_entry out[4];
    size_t n = 0;
    bool more = true;
    assert_int_equal(shard_store_list_group(st, vault, NULL, 0, 0, 4, out, &n, &more, NULL), 0);
    assert_int_equal(n, 2);
    assert_false(more);
    for (size_t i = 0; i < n; i++) {
        assert_int_equal(out[i].mask, 0xf);
        assert_int_equal(out[i].nschemes, 2);
        for (unsigned x = 0; x < 2; x++) {
            const struct shard_list_scheme *s = &out[i].schemes[x];
            assert_true((s->k == 2 && s->m == 1 && s->mask == 0x7) ||
                        (s->k == 1 && s->m == 1 && s->mask == 0x3));
        }
    }
    /* Garbage collection's listing: each chunk id once, whatever its schemes. */
    uint8_t ids[4][32];
    uint64_t at[4];
    assert_int_equal(shard_store_list_chunks(st, vault, NULL, 4, ids, at, &n, &more, NULL), 0);
    assert_int_equal(n, 2);
    assert_memory_equal(ids[0], live, 32);
    assert_memory_equal(ids[1], dead, 32);
    /* A sweep of `dead` removes the shards of all its schemes; `live` keeps all of its. */
    uint64_t deleted = 0, young = 0, bytes = 0;
    assert_int_equal(shard_store_delete_old(st, vault, (const uint8_t(*)[32])dead, 1, UINT64_MAX,
                                            &deleted, &young, &bytes, NULL),
                     0);
    assert_int_equal(deleted, 4 + 3 + 2);
    assert_int_equal(young, 0);
    shard_store_stats(st, &ss);
    assert_int_equal(ss.shard_count, 4 + 3 + 2);
    assert_int_equal(shard_store_list_group(st, vault, NULL, 0, 0, 4, out, &n, &more, NULL), 0);
    assert_int_equal(n, 1);
    assert_memory_equal(out[0].chunk_id, live, 32);
    assert_int_equal(out[0].nschemes, 2);
    for (unsigned x = 0; x < 3; x++) {
        unsigned k = x == 0 ? 2 : x == 1 ? 2 : 1, m = x == 0 ? 2 : 1;
        for (unsigned s = 0; s < k + m; s++) {
            struct shard_key key;
            memcpy(key.vault_id, vault, 16);
            struct shard_info info;
            key.index = shard_slot(2, 2, k, m, s);
            memcpy(key.chunk_id, live, 32);
            struct err le; /* lookup returns its code only with an err to wrap */
            assert_int_equal(shard_store_lookup(st, &key, &info, &le), 0);
            memcpy(key.chunk_id, dead, 32);
            assert_int_equal(shard_store_lookup(st, &key, &info, &le), HBC_ENOTFOUND);
        }
    }
    bool present = false;
    assert_int_equal(shard_store_exists(st, vault, dead, &present, NULL), 0);
    assert_false(present);
    assert_int_equal(shard_store_close(st, NULL), 0);
    nftw(dir, rm_cb, 16, FTW_DEPTH | FTW_PHYS);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_base_scheme_keeps_plain_index),
        cmocka_unit_test(test_other_scheme_round_trip),
        cmocka_unit_test(test_wire_bounds),
        cmocka_unit_test(test_placement_per_copy_width),
        cmocka_unit_test(test_store_every_scheme_lives_and_dies_with_its_chunk),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
