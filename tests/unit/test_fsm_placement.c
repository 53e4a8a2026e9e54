/* Unit tests for node/fsm_placement: epochs on topology changes, group confirmation, the map. */
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
#include "node/fsm.h"
#include "node/fsm_placement.h"

#define GROUPS 8

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)flag;
    (void)ftw;
    return remove(path);
}

struct world {
    char dir[64];   /* the state's directory */
    struct fsm *f;  /* the state machine */
    uint64_t index; /* the last index applied */
};

/* Apply c at the next index; returns the refusal code (0: applied). */
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

static int join(struct world *w, const char *id, const char *site, uint64_t raft_id)
{
    Hbc__NodeJoin j = HBC__NODE_JOIN__INIT;
    j.node_id = (char *)id;
    j.data_address = "127.0.0.1:1";
    j.raft_address = "127.0.0.1:2";
    j.raft_id = raft_id;
    j.site = (char *)site;
    j.region = "eu";
    j.media = "ssd";
    j.worm = false;
    j.capacity_bytes = 1ull << 40;
    j.has_state = true;
    j.state = HBC__NODE_STATE__NODE_UP;
    Hbc__Command c = HBC__COMMAND__INIT;
    c.cmd_case = HBC__COMMAND__CMD_NODE_JOIN;
    c.node_join = &j;
    return apply(w, &c);
}

static int update(struct world *w, const char *id, const char *addr, int state)
{
    Hbc__NodeUpdate u = HBC__NODE_UPDATE__INIT;
    u.node_id = (char *)id;
    u.data_address = (char *)addr;
    if (state != 0) {
        u.has_state = true;
        u.state = (Hbc__NodeState)state;
    }
    Hbc__Command c = HBC__COMMAND__INIT;
    c.cmd_case = HBC__COMMAND__CMD_NODE_UPDATE;
    c.node_update = &u;
    return apply(w, &c);
}

static const uint8_t VAULT[16] = {7, 7, 7, 7, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12};

static int group_done(struct world *w, const char *node, uint64_t epoch, uint32_t *groups, size_t n)
{
    Hbc__PlacementGroupDone d = HBC__PLACEMENT_GROUP_DONE__INIT;
    d.vault_id.data = (uint8_t *)VAULT;
    d.vault_id.len = 16;
    d.epoch = epoch;
    d.node_id = (char *)node;
    d.groups = groups;
    d.n_groups = n;
    Hbc__Command c = HBC__COMMAND__INIT;
    c.cmd_case = HBC__COMMAND__CMD_PLACEMENT_GROUP_DONE;
    c.placement_group_done = &d;
    return apply(w, &c);
}

static void test_epochs_and_confirmation(void **state)
{
    (void)state;
    struct world w = {0};
    snprintf(w.dir, sizeof w.dir, "/tmp/hbc-test-fsmp-XXXXXX");
    assert_non_null(mkdtemp(w.dir));
    assert_int_equal(fsm_open(w.dir, &w.f, NULL), 0);
    assert_int_equal(fsm_placement_current(w.f), 0);

    /* Each join of an UP node is a topology change: epochs 1..4. */
    const char *ids[] = {"a1", "a2", "b1", "c1"};
    const char *sites[] = {"site-a", "site-a", "site-b", "site-c"};
    for (int i = 0; i < 4; i++) {
        assert_int_equal(join(&w, ids[i], sites[i], 100 + (uint64_t)i), 0);
    }
    assert_int_equal(fsm_placement_current(w.f), 4);
    Hbc__PlacementEpoch *pe = NULL;
    assert_int_equal(fsm_placement_epoch(w.f, 4, &pe, NULL), 0);
    assert_int_equal(pe->n_nodes, 4);
    assert_int_equal(pe->previous, 3);
    fsm_record_free(pe);
    /* An address change moves nothing: no new epoch. */
    assert_int_equal(update(&w, "b1", "127.0.0.1:9", 0), 0);
    assert_int_equal(fsm_placement_current(w.f), 4);

    /* A vault of 8 groups, 1 copy of 2+1, created in epoch 4: every group settled. */
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
    assert_int_equal(apply(&w, &c), 0);
    Hbc__PlacementMapReply m;
    assert_int_equal(fsm_placement_map(w.f, VAULT, &m, NULL), 0);
    assert_int_equal(m.current, 4);
    assert_int_equal(m.n_fallback, 0);
    assert_int_equal(m.groups_confirmed, GROUPS);
    fsm_placement_map_free(&m);
    /* A group count that is not a power of two is refused. */
    uint8_t other[16];
    memcpy(other, VAULT, 16);
    other[0] = 9;
    vc.vault_id.data = other;
    vc.placement_groups = 6;
    vc.name = "w";
    assert_int_equal(apply(&w, &c), HBC_EINVAL);

    /* Draining b1 makes epoch 5 without it; every group falls back to epoch 4. */
    struct err e;
    assert_int_equal(fsm_placement_removable(w.f, "b1", &e), HBC_ENOTDRAINED);
    assert_non_null(strstr(e.msg, "drain it first"));
    assert_int_equal(update(&w, "b1", NULL, HBC__NODE_STATE__NODE_DRAINING), 0);
    assert_int_equal(fsm_placement_current(w.f), 5);
    assert_int_equal(fsm_placement_map(w.f, VAULT, &m, NULL), 0);
    assert_int_equal(m.n_fallback, GROUPS);
    assert_int_equal(m.fallback[0]->settled_epoch, 4);
    assert_int_equal(m.n_epochs, 2);
    assert_int_equal(m.epochs[0]->epoch, 5);
    assert_int_equal(m.epochs[0]->n_nodes, 3);
    assert_int_equal(m.epochs[1]->epoch, 4);
    fsm_placement_map_free(&m);
    assert_int_equal(fsm_placement_removable(w.f, "b1", &e), HBC_ENOTDRAINED);
    assert_non_null(strstr(e.msg, "8 of 8"));

    /* Refusals: a stale epoch, a node outside the epoch. */
    uint32_t all[GROUPS];
    for (uint32_t g = 0; g < GROUPS; g++) {
        all[g] = g;
    }
    assert_int_equal(group_done(&w, "a1", 4, all, GROUPS), HBC_ESTALEEPOCH);
    assert_int_equal(group_done(&w, "b1", 5, all, GROUPS), HBC_EINVAL);

    /* Every node of epoch 5 reports done: a group is confirmed once all its targets have. */
    assert_int_equal(group_done(&w, "a1", 5, all, GROUPS), 0);
    assert_int_equal(group_done(&w, "a2", 5, all, GROUPS), 0);
    assert_int_equal(fsm_placement_map(w.f, VAULT, &m, NULL), 0);
    uint64_t after_two = m.groups_confirmed;
    fsm_placement_map_free(&m);
    assert_true(after_two < GROUPS); /* 2+1 over 3 nodes: c1 holds a shard of every group */
    assert_int_equal(group_done(&w, "c1", 5, all, GROUPS), 0);
    assert_int_equal(fsm_placement_map(w.f, VAULT, &m, NULL), 0);
    assert_int_equal(m.groups_confirmed, GROUPS);
    assert_int_equal(m.n_fallback, 0);
    fsm_placement_map_free(&m);
    assert_int_equal(fsm_placement_removable(w.f, "b1", &e), 0);

    /* Removing b1 changes nothing more (it is no longer in the topology). */
    Hbc__NodeRemove nr = HBC__NODE_REMOVE__INIT;
    nr.node_id = "b1";
    c = (Hbc__Command)HBC__COMMAND__INIT;
    c.cmd_case = HBC__COMMAND__CMD_NODE_REMOVE;
    c.node_remove = &nr;
    assert_int_equal(apply(&w, &c), 0);
    assert_int_equal(fsm_placement_current(w.f), 5);

    fsm_close(w.f);
    assert_int_equal(nftw(w.dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_epochs_and_confirmation),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
