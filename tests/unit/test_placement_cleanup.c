/* Unit tests for node/placement_cleanup: deleting the shards the settled current epoch does not
 * assign to this node, after the grace, and nothing else. */
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

#include <raft.h>

#include "client/placement_map.h"
#include "common/alloc.h"
#include "common/erasure.h"
#include "node/fsm.h"
#include "node/fsm_placement.h"
#include "node/placement_cleanup.h"
#include "node/shard_store.h"

#define GROUPS 8
#define CHUNKS 16
#define SEC 1000000000ull

static const uint8_t VAULT[16] = {3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5, 8, 9, 7, 9, 3};

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)flag;
    (void)ftw;
    return remove(path);
}

struct world {
    char dir[64];            /* the test's directory */
    struct fsm *f;           /* the state machine */
    struct shard_store *s;   /* node a1's store */
    uint64_t index;          /* the last index applied */
    uint8_t ids[CHUNKS][32]; /* the chunks stored */
};

static int apply(struct world *w, Hbc__Command *c)
{
    c->leader_time_ms = 1000 + w->index;
    c->proposer = "CN=test";
    struct raft_buffer b;
    assert_int_equal(fsm_command_encode(c, &b, NULL), 0);
    int code = 0;
    struct err e;
    assert_int_equal(fsm_apply_at(w->f, ++w->index, b.base, b.len, &code, &e), 0);
    raft_free(b.base);
    return code;
}

static void join(struct world *w, const char *id, uint64_t raft_id)
{
    Hbc__NodeJoin j = HBC__NODE_JOIN__INIT;
    j.node_id = (char *)id;
    j.data_address = "127.0.0.1:1";
    j.raft_address = "127.0.0.1:2";
    j.raft_id = raft_id;
    j.site = "site-a";
    j.region = "eu";
    j.media = "ssd";
    j.capacity_bytes = 1ull << 40;
    j.has_state = true;
    j.state = HBC__NODE_STATE__NODE_UP;
    Hbc__Command c = HBC__COMMAND__INIT;
    c.cmd_case = HBC__COMMAND__CMD_NODE_JOIN;
    c.node_join = &j;
    assert_int_equal(apply(w, &c), 0);
}

/* Store every shard of a 2+1 stripe of chunk id on a1 (as if an older epoch had put them all). */
static void put_stripe(struct world *w, const uint8_t id[32])
{
    uint8_t obj[600];
    memset(obj, id[0], sizeof obj);
    uint8_t *blobs[ERASURE_MAX_SHARDS] = {0};
    size_t lens[ERASURE_MAX_SHARDS] = {0};
    assert_int_equal(erasure_shards_encode(VAULT, id, 2, 1, obj, sizeof obj, blobs, lens, NULL), 0);
    struct shard_put recs[3];
    int results[3];
    for (unsigned s = 0; s < 3; s++) {
        memset(&recs[s], 0, sizeof recs[s]);
        memcpy(recs[s].key.vault_id, VAULT, 16);
        memcpy(recs[s].key.chunk_id, id, 32);
        recs[s].key.index = s;
        recs[s].data = blobs[s];
        recs[s].len = lens[s];
    }
    assert_int_equal(shard_store_put_batch(w->s, recs, 3, results, NULL), 0);
    for (unsigned s = 0; s < 3; s++) {
        hbc_free(blobs[s]);
    }
}

/* A reference list: one whole-object shard (k=1, m=0, index 0), kept on every node. */
static void put_plain(struct world *w, const uint8_t id[32])
{
    uint8_t obj[100];
    memset(obj, 0x5a, sizeof obj);
    uint8_t *blobs[ERASURE_MAX_SHARDS] = {0};
    size_t lens[ERASURE_MAX_SHARDS] = {0};
    assert_int_equal(erasure_shards_encode(VAULT, id, 1, 0, obj, sizeof obj, blobs, lens, NULL), 0);
    struct shard_put rec = {.data = blobs[0], .len = lens[0]};
    memcpy(rec.key.vault_id, VAULT, 16);
    memcpy(rec.key.chunk_id, id, 32);
    int result = 0;
    assert_int_equal(shard_store_put_batch(w->s, &rec, 1, &result, NULL), 0);
    hbc_free(blobs[0]);
}

static bool held(struct world *w, const uint8_t id[32], unsigned s)
{
    struct shard_key key;
    memcpy(key.vault_id, VAULT, 16);
    memcpy(key.chunk_id, id, 32);
    key.index = s;
    struct shard_info info;
    struct err e;
    return shard_store_lookup(w->s, &key, &info, &e) == 0;
}

static void setup(struct world *w)
{
    snprintf(w->dir, sizeof w->dir, "/tmp/hbc-test-pclean-XXXXXX");
    assert_non_null(mkdtemp(w->dir));
    char sub[96];
    snprintf(sub, sizeof sub, "%s/fsm", w->dir);
    assert_int_equal(fsm_open(sub, &w->f, NULL), 0);
    snprintf(sub, sizeof sub, "%s/store", w->dir);
    assert_int_equal(shard_store_open(sub, NULL, &w->s, NULL), 0);
    /* Four UP nodes (epochs 1..4) and a vault of one 2+1 copy created in epoch 4: settled. */
    const char *ids[] = {"a1", "a2", "a3", "a4"};
    for (int i = 0; i < 4; i++) {
        join(w, ids[i], 100 + (uint64_t)i);
    }
    Hbc__VaultCreate vc = HBC__VAULT_CREATE__INIT;
    vc.vault_id.data = (uint8_t *)VAULT;
    vc.vault_id.len = 16;
    vc.name = "v";
    vc.copies = 1;
    vc.k = 2;
    vc.m = 1;
    vc.has_placement_groups = true;
    vc.placement_groups = GROUPS;
    Hbc__Command c = HBC__COMMAND__INIT;
    c.cmd_case = HBC__COMMAND__CMD_VAULT_CREATE;
    c.vault_create = &vc;
    assert_int_equal(apply(w, &c), 0);
    for (int i = 0; i < CHUNKS; i++) {
        memset(w->ids[i], 0, 32);
        w->ids[i][7] = (uint8_t)i; /* group i % 8 */
        w->ids[i][0] = (uint8_t)(0x10 + i);
        put_stripe(w, w->ids[i]);
    }
}

static void teardown(struct world *w)
{
    assert_int_equal(shard_store_close(w->s, NULL), 0);
    fsm_close(w->f);
    nftw(w->dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
}

/* The vault and current epoch as the cleanup sees them. */
static void vault_and_epoch(struct world *w, struct pmap_vault *v, struct pmap_epoch *ep,
                            Hbc__PlacementEpoch **pe, unsigned *me)
{
    Hbc__VaultInfo vi = HBC__VAULT_INFO__INIT;
    vi.vault_id.data = (uint8_t *)VAULT;
    vi.vault_id.len = 16;
    vi.name = "v";
    vi.copies = 1;
    vi.k = 2;
    vi.m = 1;
    vi.has_placement_groups = true;
    vi.placement_groups = GROUPS;
    vi.has_created_epoch = true;
    vi.created_epoch = 4;
    assert_int_equal(pmap_vault_from_info(&vi, v, NULL), 0);
    assert_int_equal(fsm_placement_epoch(w->f, fsm_placement_current(w->f), pe, NULL), 0);
    assert_int_equal(pmap_epoch_from_proto(*pe, ep, NULL), 0);
    *me = PMAP_NONE;
    for (size_t i = 0; i < ep->n; i++) {
        if (strcmp(ep->pol[i].node_id, "a1") == 0) {
            *me = (unsigned)i;
        }
    }
}

static void test_deletes_only_unassigned_after_grace(void **state)
{
    (void)state;
    struct world w = {0};
    setup(&w);
    uint8_t plain[32];
    memset(plain, 0, 32);
    plain[0] = 0xee;
    plain[7] = 1;
    put_plain(&w, plain);
    struct pmap_vault v;
    struct pmap_epoch ep;
    Hbc__PlacementEpoch *pe = NULL;
    unsigned me;
    vault_and_epoch(&w, &v, &ep, &pe, &me);
    assert_int_not_equal(me, PMAP_NONE);

    struct pcleanup *pc = NULL;
    assert_int_equal(pcleanup_new(10, &pc, NULL), 0);
    uint64_t deleted = 99;
    /* First look: the settled timer starts; nothing goes, nor before the grace has passed. */
    assert_int_equal(pcleanup_vault(pc, w.f, w.s, "a1", &v, 100 * SEC, &deleted, NULL), 0);
    assert_int_equal(deleted, 0);
    assert_int_equal(pcleanup_vault(pc, w.f, w.s, "a1", &v, 109 * SEC, &deleted, NULL), 0);
    assert_int_equal(deleted, 0);
    for (int i = 0; i < CHUNKS; i++) {
        for (unsigned s = 0; s < 3; s++) {
            assert_true(held(&w, w.ids[i], s));
        }
    }
    /* After it: exactly the shards epoch 4 does not give a1 go. */
    assert_int_equal(pcleanup_vault(pc, w.f, w.s, "a1", &v, 111 * SEC, &deleted, NULL), 0);
    uint64_t expect = 0;
    for (int i = 0; i < CHUNKS; i++) {
        uint32_t mask = 0;
        assert_int_equal(pmap_node_mask(&v, &ep, pmap_group_of(w.ids[i], GROUPS), me, &mask, NULL),
                         0);
        for (unsigned s = 0; s < 3; s++) {
            bool assigned = (mask >> s) & 1;
            assert_int_equal(held(&w, w.ids[i], s), assigned);
            expect += assigned ? 0 : 1;
        }
    }
    assert_true(expect > 0);
    assert_int_equal(deleted, expect);
    /* The reference list stays although no epoch assigns it. */
    assert_true(held(&w, plain, 0));
    /* Once per epoch: another look deletes nothing more. */
    assert_int_equal(pcleanup_vault(pc, w.f, w.s, "a1", &v, 200 * SEC, &deleted, NULL), 0);
    assert_int_equal(deleted, 0);

    pcleanup_free(pc);
    pmap_epoch_free(&ep);
    fsm_record_free(pe);
    teardown(&w);
}

static void test_unsettled_disabled_or_absent_deletes_nothing(void **state)
{
    (void)state;
    struct world w = {0};
    setup(&w);
    struct pmap_vault v;
    struct pmap_epoch ep;
    Hbc__PlacementEpoch *pe = NULL;
    unsigned me;
    vault_and_epoch(&w, &v, &ep, &pe, &me);
    struct shard_store_stats st;
    shard_store_stats(w.s, &st);
    const uint64_t all = st.shard_count;
    uint64_t deleted = 99;

    /* Grace 0: never. */
    struct pcleanup *off = NULL;
    assert_int_equal(pcleanup_new(0, &off, NULL), 0);
    assert_int_equal(pcleanup_vault(off, w.f, w.s, "a1", &v, 1 * SEC, &deleted, NULL), 0);
    assert_int_equal(pcleanup_vault(off, w.f, w.s, "a1", &v, 1000 * SEC, &deleted, NULL), 0);
    assert_int_equal(deleted, 0);
    pcleanup_free(off);

    /* A node that is not in the current epoch keeps everything. */
    struct pcleanup *pc = NULL;
    assert_int_equal(pcleanup_new(1, &pc, NULL), 0);
    assert_int_equal(pcleanup_vault(pc, w.f, w.s, "x9", &v, 1 * SEC, &deleted, NULL), 0);
    assert_int_equal(pcleanup_vault(pc, w.f, w.s, "x9", &v, 10 * SEC, &deleted, NULL), 0);
    assert_int_equal(deleted, 0);
    pcleanup_free(pc);

    /* A new epoch (a fifth node) that is not settled: the timer stops; nothing goes. */
    assert_int_equal(pcleanup_new(1, &pc, NULL), 0);
    assert_int_equal(pcleanup_vault(pc, w.f, w.s, "a1", &v, 1 * SEC, &deleted, NULL), 0);
    join(&w, "a5", 200);
    assert_int_equal(fsm_placement_current(w.f), 5);
    assert_int_equal(pcleanup_vault(pc, w.f, w.s, "a1", &v, 10 * SEC, &deleted, NULL), 0);
    assert_int_equal(pcleanup_vault(pc, w.f, w.s, "a1", &v, 20 * SEC, &deleted, NULL), 0);
    assert_int_equal(deleted, 0);
    shard_store_stats(w.s, &st);
    assert_int_equal(st.shard_count, all);
    pcleanup_free(pc);

    pmap_epoch_free(&ep);
    fsm_record_free(pe);
    teardown(&w);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_deletes_only_unassigned_after_grace),
        cmocka_unit_test(test_unsettled_disabled_or_absent_deletes_nothing),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
