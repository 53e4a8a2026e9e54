/* Tests of node/fsm_gc.c: GcSweep's rules, the commit fence, short-retention vaults. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <ftw.h>

#include "hbc.pb-c.h"
#include "node/fsm.h"

#define NODE "CN=n1,OU=node"
#define ADMIN "CN=alice,OU=admin"
#define DAY FSM_DAY_MS
#define T0 1700000000000ull

struct st {
    char dir[64];        /* the state's directory */
    struct fsm *f;       /* the state machine */
    uint64_t index;      /* last index applied */
    unsigned hooks;      /* GC hook calls */
    uint64_t hook_index; /* index of the last */
    size_t hook_ids;     /* its chunk count */
    uint8_t vault[16];   /* the vault */
};

static int rm_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb;
    (void)flag;
    (void)ftw;
    return remove(path);
}

static void hook(void *arg, uint64_t index, const Hbc__GcSweep *sweep)
{
    struct st *s = arg;
    s->hooks++;
    s->hook_index = index;
    s->hook_ids = sweep->n_chunk_ids;
}

/* Apply cmd as proposer at time t at the next index; return its code. */
static int run(struct st *s, Hbc__Command *cmd, const char *proposer, uint64_t t)
{
    cmd->leader_time_ms = t;
    cmd->proposer = (char *)proposer;
    struct raft_buffer b;
    struct err e = {0};
    assert_int_equal(fsm_command_encode(cmd, &b, &e), 0);
    int code = 12345;
    assert_int_equal(fsm_apply_at(s->f, ++s->index, b.base, b.len, &code, &e), 0);
    raft_free(b.base);
    return code;
}

static int setup(void **state)
{
    struct st *s = calloc(1, sizeof *s);
    snprintf(s->dir, sizeof s->dir, "/tmp/hbc-test-fsm-gc-XXXXXX");
    assert_non_null(mkdtemp(s->dir));
    struct err e = {0};
    assert_int_equal(fsm_open(s->dir, &s->f, &e), 0);
    fsm_set_gc_hook(s->f, hook, s);
    memset(s->vault, 'V', sizeof s->vault);
    /* A node, a clock, a vault. */
    Hbc__NodeJoin j = HBC__NODE_JOIN__INIT;
    j.node_id = "n1";
    j.data_address = "127.0.0.1:1";
    j.raft_address = "127.0.0.1:2";
    j.raft_id = 1;
    j.site = "a";
    j.region = "r";
    j.media = "ssd";
    j.capacity_bytes = 1 << 30;
    Hbc__Command c = HBC__COMMAND__INIT;
    c.cmd_case = HBC__COMMAND__CMD_NODE_JOIN;
    c.node_join = &j;
    assert_int_equal(run(s, &c, NODE, T0), 0);
    Hbc__ClockTick tick = HBC__CLOCK_TICK__INIT;
    tick.wall_ms = T0;
    hbc__command__init(&c);
    c.cmd_case = HBC__COMMAND__CMD_CLOCK_TICK;
    c.clock_tick = &tick;
    assert_int_equal(run(s, &c, FSM_PROPOSER_SELF, T0), 0);
    assert_int_equal(fsm_compliance_clock_ms(s->f), T0);
    Hbc__VaultCreate v = HBC__VAULT_CREATE__INIT;
    v.vault_id = (ProtobufCBinaryData){16, s->vault};
    v.name = "short";
    v.copies = 1;
    v.k = 2;
    v.m = 1;
    v.has_retention_seconds = true;
    v.retention_seconds = 5;
    hbc__command__init(&c);
    c.cmd_case = HBC__COMMAND__CMD_VAULT_CREATE;
    c.vault_create = &v;
    assert_int_equal(run(s, &c, ADMIN, T0), 0);
    *state = s;
    return 0;
}

static int teardown(void **state)
{
    struct st *s = *state;
    fsm_close(s->f);
    assert_int_equal(nftw(s->dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS), 0);
    free(s);
    return 0;
}

static int commit(struct st *s, uint8_t n, uint64_t start, bool has_start)
{
    uint8_t sid[16], tree[32], ref[32];
    memset(sid, n, sizeof sid);
    memset(tree, n, sizeof tree);
    memset(ref, n + 1, sizeof ref);
    Hbc__SnapshotCommit sc = HBC__SNAPSHOT_COMMIT__INIT;
    sc.snapshot_id = (ProtobufCBinaryData){16, sid};
    sc.vault_id = (ProtobufCBinaryData){16, s->vault};
    sc.time_ms = T0;
    sc.root_tree_id = (ProtobufCBinaryData){32, tree};
    sc.ref_list_id = (ProtobufCBinaryData){32, ref};
    sc.has_gc_start_index = has_start;
    sc.gc_start_index = start;
    Hbc__Command c = HBC__COMMAND__INIT;
    c.cmd_case = HBC__COMMAND__CMD_SNAPSHOT_COMMIT;
    c.snapshot_commit = &sc;
    return run(s, &c, ADMIN, T0);
}

static int sweep(struct st *s, const char *proposer, uint64_t mark, uint64_t cutoff, size_t n,
                 size_t id_len)
{
    uint8_t ids[4][32];
    ProtobufCBinaryData b[4];
    for (size_t i = 0; i < n; i++) {
        memset(ids[i], (int)(0x40 + i), 32);
        b[i] = (ProtobufCBinaryData){id_len, ids[i]};
    }
    Hbc__GcSweep g = HBC__GC_SWEEP__INIT;
    g.vault_id = (ProtobufCBinaryData){16, s->vault};
    g.mark_index = mark;
    g.cutoff_ms = cutoff;
    g.chunk_ids = b;
    g.n_chunk_ids = n;
    Hbc__Command c = HBC__COMMAND__INIT;
    c.cmd_case = HBC__COMMAND__CMD_GC_SWEEP;
    c.gc_sweep = &g;
    return run(s, &c, proposer, T0);
}

static int audit_outcome(struct st *s, uint64_t index)
{
    Hbc__AuditRecord *r = NULL;
    struct err e = {0};
    assert_int_equal(fsm_get_audit(s->f, index, &r, &e), 0);
    int out = r->outcome;
    fsm_record_free(r);
    return out;
}

/* Only a node of the cluster sweeps, and only with a mark that saw every snapshot. */
static void test_sweep_rules(void **state)
{
    struct st *s = *state;
    assert_int_equal(commit(s, 1, 0, true), 0);
    uint64_t mark = s->index;
    /* Not a node, an unknown node, bad ids, a cutoff in the future, a mark not before it. */
    assert_int_equal(sweep(s, ADMIN, mark, T0 - 1, 2, 32), HBC_EDENIED);
    assert_int_equal(sweep(s, "CN=ghost,OU=node", mark, T0 - 1, 2, 32), HBC_EDENIED);
    assert_int_equal(sweep(s, NODE, mark, T0 - 1, 2, 31), HBC_EINVAL);
    assert_int_equal(sweep(s, NODE, mark, T0 + 1, 2, 32), HBC_EINVAL);
    assert_int_equal(sweep(s, NODE, s->index + 1, T0 - 1, 2, 32), HBC_EINVAL);
    assert_int_equal(s->hooks, 0);
    /* Accepted: recorded, audited, and the data plane is told. */
    assert_int_equal(sweep(s, NODE, mark, T0 - 1, 3, 32), 0);
    assert_int_equal(s->hooks, 1);
    assert_int_equal(s->hook_index, s->index);
    assert_int_equal(s->hook_ids, 3);
    assert_int_equal(audit_outcome(s, s->index), 0);
    uint64_t last = 0, sweeps = 0, swept = 0;
    struct err e = {0};
    assert_int_equal(fsm_get_gc_state(s->f, s->vault, &last, &sweeps, &swept, &e), 0);
    assert_int_equal(last, s->index);
    assert_int_equal(sweeps, 1);
    assert_int_equal(swept, 3);
    /* A snapshot committed after the mark: the same mark is stale now. */
    assert_int_equal(commit(s, 2, s->index, true), 0);
    assert_int_equal(sweep(s, NODE, mark, T0 - 1, 2, 32), HBC_EGCSTALE);
    assert_int_equal(audit_outcome(s, s->index), HBC_EGCSTALE);
    assert_int_equal(s->hooks, 1);
    assert_int_equal(sweep(s, NODE, s->index, T0 - 1, 2, 32), 0);
    assert_int_equal(s->hooks, 2);
}

/* A backup that started before a sweep cannot commit without checking its chunks again. */
static void test_commit_fence(void **state)
{
    struct st *s = *state;
    uint64_t start = s->index; /* the backup starts */
    assert_int_equal(commit(s, 1, 0, true), 0);
    assert_int_equal(sweep(s, NODE, s->index, T0 - 1, 1, 32), 0);
    uint64_t swept_at = s->index;
    assert_int_equal(commit(s, 2, start, true), HBC_EGCFENCE);
    assert_int_equal(audit_outcome(s, s->index), HBC_EGCFENCE);
    assert_int_equal(commit(s, 2, 0, false), HBC_EGCFENCE); /* absent counts as 0 */
    assert_int_equal(commit(s, 2, swept_at - 1, true), HBC_EGCFENCE);
    assert_int_equal(commit(s, 2, swept_at, true), 0);
    /* The refused attempts left nothing: the same id commits once. */
    assert_int_equal(commit(s, 2, swept_at, true), HBC_EEXIST);
}

/* retention_seconds: locked for those seconds, then forgettable after max_skew more. */
static void test_short_retention(void **state)
{
    struct st *s = *state;
    assert_int_equal(commit(s, 1, 0, true), 0);
    uint8_t sid[16];
    memset(sid, 1, sizeof sid);
    Hbc__SnapshotInfo *info = NULL;
    struct err e = {0};
    assert_int_equal(fsm_get_snapshot(s->f, sid, &info, &e), 0);
    assert_true(info->has_retain_until_ms);
    assert_int_equal(info->retain_until_ms, T0 + 5000);
    assert_true(info->has_expiry_margin_ms);
    assert_int_equal(info->expiry_margin_ms, FSM_MAX_SKEW_MS);
    assert_int_equal(fsm_forget_allowed(info, T0 + 5000), HBC_ELOCKED);
    assert_int_equal(fsm_forget_allowed(info, T0 + 5000 + FSM_MAX_SKEW_MS - 1), HBC_ELOCKED);
    assert_int_equal(fsm_forget_allowed(info, T0 + 5000 + FSM_MAX_SKEW_MS), 0);
    fsm_record_free(info);
    /* Out of range. */
    uint8_t vid[16];
    memset(vid, 'W', sizeof vid);
    Hbc__VaultCreate v = HBC__VAULT_CREATE__INIT;
    v.vault_id = (ProtobufCBinaryData){16, vid};
    v.name = "too-long";
    v.copies = 1;
    v.k = 2;
    v.m = 1;
    v.has_retention_seconds = true;
    v.retention_seconds = FSM_RETENTION_SECONDS_MAX + 1;
    Hbc__Command c = HBC__COMMAND__INIT;
    c.cmd_case = HBC__COMMAND__CMD_VAULT_CREATE;
    c.vault_create = &v;
    assert_int_equal(run(s, &c, ADMIN, T0), HBC_EINVAL);
    (void)DAY;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_sweep_rules, setup, teardown),
        cmocka_unit_test_setup_teardown(test_commit_fence, setup, teardown),
        cmocka_unit_test_setup_teardown(test_short_retention, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
