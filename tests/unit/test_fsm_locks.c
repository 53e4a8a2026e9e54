/* Unit tests for node/fsm_locks.c: roles, compliance clock, retention locks, legal holds, audit. */
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
#include <raft/fixture.h>

#include <openssl/evp.h>

#include "node/fsm.h"

/* Certificate subjects as the leader stamps them (tls_conn_peer_subject). */
#define BOOT "CN=boot,OU=admin"   /* bootstrap admin by OU, until an admin is assigned */
#define ADMIN "CN=alice,OU=ops"   /* assigned admin */
#define BACKUP "CN=bob,OU=ops"    /* backup role */
#define RESTORE "CN=carol,OU=ops" /* restore role */
#define SO1 "CN=sam,OU=security"  /* security officer 1 */
#define SO2 "CN=sue,OU=security"  /* security officer 2 */
#define NODE "CN=n1,OU=node"      /* a node's own certificate */
#define SELF FSM_PROPOSER_SELF    /* the leader itself */

#define T0 1700000000000ull /* leader wall clock at the start of each test */

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)flag;
    (void)ftw;
    return remove(path);
}

/* ---- a 3-server cluster on raft_fixture ---- */

#define N_SERVERS 3

struct proposal {
    struct raft_apply req; /* libraft's request */
    bool done;             /* its callback fired */
    int status;            /* libraft's status */
    int code;              /* the state machine's code */
};

struct cl {
    struct raft_fixture f;      /* the in-memory cluster */
    char dirs[N_SERVERS][64];   /* each server's RocksDB */
    struct fsm *fsm[N_SERVERS]; /* each server's state machine */
    uint64_t now;               /* leader wall clock for the next command */
    unsigned refusals;          /* refused commands seen (each checked in audit) */
};

static struct cl *cl_start(void)
{
    struct cl *c = calloc(1, sizeof *c);
    assert_non_null(c);
    c->now = T0;
    assert_int_equal(raft_fixture_initialize(&c->f), 0);
    for (unsigned i = 0; i < N_SERVERS; i++) {
        snprintf(c->dirs[i], sizeof c->dirs[i], "/tmp/hbc-test-locks-XXXXXX");
        assert_non_null(mkdtemp(c->dirs[i]));
        assert_int_equal(fsm_open(c->dirs[i], &c->fsm[i], NULL), 0);
        assert_int_equal(raft_fixture_grow(&c->f, fsm_raft_fsm(c->fsm[i])), 0);
        fsm_set_raft(c->fsm[i], raft_fixture_get(&c->f, i));
    }
    struct raft_configuration conf;
    assert_int_equal(raft_fixture_configuration(&c->f, N_SERVERS, &conf), 0);
    assert_int_equal(raft_fixture_bootstrap(&c->f, &conf), 0);
    raft_configuration_close(&conf);
    assert_int_equal(raft_fixture_start(&c->f), 0);
    assert_true(raft_fixture_step_until_has_leader(&c->f, 10000));
    return c;
}

static bool all_caught_up(struct raft_fixture *f, void *arg)
{
    (void)arg;
    unsigned leader = raft_fixture_leader_index(f);
    if (leader >= raft_fixture_n(f)) {
        return false;
    }
    raft_index last = raft_last_index(raft_fixture_get(f, leader));
    for (unsigned i = 0; i < raft_fixture_n(f); i++) {
        struct raft *r = raft_fixture_get(f, i);
        if (raft_last_applied(r) < last || r->last_stored < last) {
            return false;
        }
    }
    return true;
}

/* Every server at the same index with byte-identical state, then close. */
static void cl_stop(struct cl *c)
{
    assert_true(raft_fixture_step_until(&c->f, all_caught_up, NULL, 60000));
    uint8_t d0[FSM_DIGEST_LEN];
    assert_int_equal(fsm_digest(c->fsm[0], d0, NULL), 0);
    for (unsigned i = 1; i < N_SERVERS; i++) {
        uint8_t di[FSM_DIGEST_LEN];
        assert_int_equal(fsm_digest(c->fsm[i], di, NULL), 0);
        assert_memory_equal(d0, di, FSM_DIGEST_LEN);
        assert_int_equal(fsm_applied_index(c->fsm[i]), fsm_applied_index(c->fsm[0]));
        assert_int_equal(fsm_compliance_clock_ms(c->fsm[i]), fsm_compliance_clock_ms(c->fsm[0]));
    }
    raft_fixture_close(&c->f);
    for (unsigned i = 0; i < N_SERVERS; i++) {
        fsm_close(c->fsm[i]);
        assert_int_equal(nftw(c->dirs[i], rm_entry, 16, FTW_DEPTH | FTW_PHYS), 0);
    }
    free(c);
}

static void proposal_cb(struct raft_apply *req, int status, void *result)
{
    struct proposal *p = req->data;
    p->done = true;
    p->status = status;
    p->code = status == 0 ? fsm_result_code(result) : 0;
}

static bool all_done(struct raft_fixture *f, void *arg)
{
    (void)f;
    struct proposal *p = arg;
    return p->done;
}

static struct fsm *leader_fsm(struct cl *c)
{
    unsigned l = raft_fixture_leader_index(&c->f);
    assert_true(l < N_SERVERS);
    return c->fsm[l];
}

/*
 * Propose cmd as `who` at the leader, stamped with c->now, and wait for it.
 * Returns the state machine's code. A refusal must have left an audit record
 * with that outcome and a reason, on the leader.
 */
static int run_at(struct cl *c, Hbc__Command *cmd, const char *who, uint64_t *index)
{
    cmd->leader_time_ms = c->now;
    cmd->proposer = (char *)who;
    struct raft_buffer b;
    assert_int_equal(fsm_command_encode(cmd, &b, NULL), 0);
    struct proposal *p = calloc(1, sizeof *p);
    assert_non_null(p);
    p->req.data = p;
    unsigned l = raft_fixture_leader_index(&c->f);
    assert_true(l < N_SERVERS);
    assert_int_equal(raft_apply(raft_fixture_get(&c->f, l), &p->req, &b, 1, proposal_cb), 0);
    assert_true(raft_fixture_step_until(&c->f, all_done, p, 20000));
    assert_int_equal(p->status, 0);
    int code = p->code;
    uint64_t idx = p->req.index;
    free(p);
    if (code != 0) {
        Hbc__AuditRecord *rec = NULL;
        assert_int_equal(fsm_get_audit(leader_fsm(c), idx, &rec, NULL), 0);
        assert_int_equal(rec->outcome, code);
        assert_int_equal(rec->index, idx);
        assert_string_equal(rec->proposer, who);
        assert_true(strlen(rec->reason) > 0);
        fsm_record_free(rec);
        c->refusals++;
    }
    if (index != NULL) {
        *index = idx;
    }
    return code;
}

static int run(struct cl *c, Hbc__Command *cmd, const char *who)
{
    return run_at(c, cmd, who, NULL);
}

/* ---- commands ---- */

static void make_id(uint8_t out[16], uint8_t kind, unsigned n)
{
    memset(out, 0x5a, 16);
    out[0] = kind;
    out[1] = (uint8_t)(n >> 8);
    out[2] = (uint8_t)n;
}

static int role_assign(struct cl *c, const char *who, const char *subject, Hbc__Role role,
                       bool revoke)
{
    Hbc__RoleAssign r = HBC__ROLE_ASSIGN__INIT;
    r.subject = (char *)subject;
    r.role = role;
    r.has_revoke = revoke;
    r.revoke = revoke;
    Hbc__Command cmd = HBC__COMMAND__INIT;
    cmd.cmd_case = HBC__COMMAND__CMD_ROLE_ASSIGN;
    cmd.role_assign = &r;
    return run(c, &cmd, who);
}

static int tick_at(struct cl *c, const char *who, uint64_t wall, uint64_t elapsed, uint64_t anchor)
{
    Hbc__ClockTick t = HBC__CLOCK_TICK__INIT;
    t.wall_ms = wall;
    t.elapsed_ms = elapsed;
    t.anchor_clock_ms = anchor;
    Hbc__Command cmd = HBC__COMMAND__INIT;
    cmd.cmd_case = HBC__COMMAND__CMD_CLOCK_TICK;
    cmd.clock_tick = &t;
    return run(c, &cmd, who);
}

/* A tick anchored on the clock as it is now (what a leader elected just now sends). */
static int tick_as(struct cl *c, const char *who, uint64_t wall, uint64_t elapsed)
{
    return tick_at(c, who, wall, elapsed, fsm_compliance_clock_ms(leader_fsm(c)));
}

/* A tick carrying the voters' clocks (what node/clock_sync.c gathers) and the voter count. */
static int tick_voters(struct cl *c, uint64_t wall, const uint64_t *clocks, size_t n,
                       uint32_t voters, uint64_t elapsed)
{
    Hbc__ClockTick t = HBC__CLOCK_TICK__INIT;
    t.wall_ms = wall;
    t.elapsed_ms = elapsed;
    t.anchor_clock_ms = fsm_compliance_clock_ms(leader_fsm(c));
    t.voter_clock_ms = (uint64_t *)clocks;
    t.n_voter_clock_ms = n;
    t.has_voters = true;
    t.voters = voters;
    t.has_max_skew_ms = true;
    t.max_skew_ms = FSM_MAX_SKEW_MS;
    Hbc__Command cmd = HBC__COMMAND__INIT;
    cmd.cmd_case = HBC__COMMAND__CMD_CLOCK_TICK;
    cmd.clock_tick = &t;
    return run(c, &cmd, SELF);
}

/* Let `ms` pass: the leader's wall clock moves and a tick reports it honestly. */
static void pass_time(struct cl *c, uint64_t ms)
{
    c->now += ms;
    assert_int_equal(tick_as(c, SELF, c->now, ms), 0);
    assert_int_equal(fsm_compliance_clock_ms(leader_fsm(c)), c->now);
}

static int vault_create(struct cl *c, unsigned n, uint32_t days, Hbc__LockMode mode)
{
    uint8_t id[16];
    make_id(id, 'V', n);
    char name[32];
    snprintf(name, sizeof name, "vault-%u", n);
    Hbc__VaultCreate v = HBC__VAULT_CREATE__INIT;
    v.vault_id.data = id;
    v.vault_id.len = 16;
    v.name = name;
    v.copies = 1;
    v.k = 4;
    v.m = 2;
    if (days != 0) {
        v.has_retention_days = true;
        v.retention_days = days;
    }
    if (mode != 0) {
        v.has_lock_mode = true;
        v.lock_mode = mode;
    }
    Hbc__Command cmd = HBC__COMMAND__INIT;
    cmd.cmd_case = HBC__COMMAND__CMD_VAULT_CREATE;
    cmd.vault_create = &v;
    return run(c, &cmd, ADMIN);
}

static int snapshot_commit(struct cl *c, unsigned vault, unsigned snap)
{
    uint8_t sid[16];
    uint8_t vid[16];
    uint8_t tree[32] = {1};
    uint8_t refs[32] = {2};
    make_id(sid, 'S', snap);
    make_id(vid, 'V', vault);
    Hbc__SnapshotCommit s = HBC__SNAPSHOT_COMMIT__INIT;
    s.snapshot_id.data = sid;
    s.snapshot_id.len = 16;
    s.vault_id.data = vid;
    s.vault_id.len = 16;
    s.time_ms = c->now;
    s.root_tree_id.data = tree;
    s.root_tree_id.len = 32;
    s.ref_list_id.data = refs;
    s.ref_list_id.len = 32;
    Hbc__Command cmd = HBC__COMMAND__INIT;
    cmd.cmd_case = HBC__COMMAND__CMD_SNAPSHOT_COMMIT;
    cmd.snapshot_commit = &s;
    return run(c, &cmd, BACKUP);
}

static int forget(struct cl *c, const char *who, unsigned snap)
{
    uint8_t sid[16];
    make_id(sid, 'S', snap);
    Hbc__SnapshotForget f = HBC__SNAPSHOT_FORGET__INIT;
    f.snapshot_id.data = sid;
    f.snapshot_id.len = 16;
    Hbc__Command cmd = HBC__COMMAND__INIT;
    cmd.cmd_case = HBC__COMMAND__CMD_SNAPSHOT_FORGET;
    cmd.snapshot_forget = &f;
    return run(c, &cmd, who);
}

static int lock_extend(struct cl *c, const char *who, unsigned snap, uint64_t until)
{
    uint8_t sid[16];
    make_id(sid, 'S', snap);
    Hbc__LockExtend l = HBC__LOCK_EXTEND__INIT;
    l.snapshot_id.data = sid;
    l.snapshot_id.len = 16;
    l.retain_until_ms = until;
    Hbc__Command cmd = HBC__COMMAND__INIT;
    cmd.cmd_case = HBC__COMMAND__CMD_LOCK_EXTEND;
    cmd.lock_extend = &l;
    return run(c, &cmd, who);
}

static int hold_set(struct cl *c, const char *who, unsigned snap)
{
    uint8_t sid[16];
    make_id(sid, 'S', snap);
    Hbc__LegalHoldSet h = HBC__LEGAL_HOLD_SET__INIT;
    h.snapshot_id.data = sid;
    h.snapshot_id.len = 16;
    h.case_ref = "case 2026-17";
    Hbc__Command cmd = HBC__COMMAND__INIT;
    cmd.cmd_case = HBC__COMMAND__CMD_LEGAL_HOLD_SET;
    cmd.legal_hold_set = &h;
    return run(c, &cmd, who);
}

static int hold_release(struct cl *c, const char *who, unsigned snap, uint64_t *index)
{
    uint8_t sid[16];
    make_id(sid, 'S', snap);
    Hbc__LegalHoldReleaseRequest h = HBC__LEGAL_HOLD_RELEASE_REQUEST__INIT;
    h.snapshot_id.data = sid;
    h.snapshot_id.len = 16;
    Hbc__Command cmd = HBC__COMMAND__INIT;
    cmd.cmd_case = HBC__COMMAND__CMD_LEGAL_HOLD_RELEASE;
    cmd.legal_hold_release = &h;
    return run_at(c, &cmd, who, index);
}

static int bypass(struct cl *c, const char *who, unsigned snap, Hbc__BypassAction action,
                  uint64_t until, uint64_t *index)
{
    uint8_t sid[16];
    make_id(sid, 'S', snap);
    Hbc__GovernanceBypassRequest g = HBC__GOVERNANCE_BYPASS_REQUEST__INIT;
    g.snapshot_id.data = sid;
    g.snapshot_id.len = 16;
    g.action = action;
    if (action == HBC__BYPASS_ACTION__BYPASS_SHORTEN) {
        g.has_retain_until_ms = true;
        g.retain_until_ms = until;
    }
    Hbc__Command cmd = HBC__COMMAND__INIT;
    cmd.cmd_case = HBC__COMMAND__CMD_GOVERNANCE_BYPASS;
    cmd.governance_bypass = &g;
    return run_at(c, &cmd, who, index);
}

static int approve(struct cl *c, const char *who, uint64_t request)
{
    Hbc__ApprovalGrant a = HBC__APPROVAL_GRANT__INIT;
    a.request_index = request;
    Hbc__Command cmd = HBC__COMMAND__INIT;
    cmd.cmd_case = HBC__COMMAND__CMD_APPROVAL_GRANT;
    cmd.approval_grant = &a;
    return run(c, &cmd, who);
}

/* The snapshot as the leader has it, or NULL when it is gone. */
static Hbc__SnapshotInfo *snapshot_get(struct cl *c, unsigned snap)
{
    uint8_t sid[16];
    make_id(sid, 'S', snap);
    Hbc__SnapshotInfo *s = NULL;
    int rc = fsm_get_snapshot(leader_fsm(c), sid, &s, NULL);
    assert_true(rc == 0 || rc == HBC_ENOTFOUND);
    return s;
}

static uint64_t retain_until(struct cl *c, unsigned snap)
{
    Hbc__SnapshotInfo *s = snapshot_get(c, snap);
    assert_non_null(s);
    assert_true(s->has_retain_until_ms);
    uint64_t v = s->retain_until_ms;
    fsm_record_free(s);
    return v;
}

static bool present(struct cl *c, unsigned snap)
{
    Hbc__SnapshotInfo *s = snapshot_get(c, snap);
    fsm_record_free(s);
    return s != NULL;
}

/* The roles every test starts from: BOOT (OU=admin) makes ALICE admin, she assigns the rest. */
static void setup_roles(struct cl *c)
{
    assert_int_equal(role_assign(c, BOOT, ADMIN, HBC__ROLE__ROLE_ADMIN, false), 0);
    assert_int_equal(role_assign(c, ADMIN, BACKUP, HBC__ROLE__ROLE_BACKUP, false), 0);
    assert_int_equal(role_assign(c, ADMIN, RESTORE, HBC__ROLE__ROLE_RESTORE, false), 0);
    assert_int_equal(role_assign(c, ADMIN, SO1, HBC__ROLE__ROLE_SECURITY_OFFICER, false), 0);
    assert_int_equal(role_assign(c, ADMIN, SO2, HBC__ROLE__ROLE_SECURITY_OFFICER, false), 0);
}

/* ---- tests ---- */

static void test_roles(void **state)
{
    (void)state;
    struct cl *c = cl_start();
    /* Nobody without OU=admin can bootstrap roles. */
    assert_int_equal(role_assign(c, BACKUP, BACKUP, HBC__ROLE__ROLE_ADMIN, false), HBC_EDENIED);
    assert_int_equal(role_assign(c, NODE, NODE, HBC__ROLE__ROLE_ADMIN, false), HBC_EDENIED);
    setup_roles(c);
    uint32_t roles = 0;
    assert_int_equal(fsm_get_roles(leader_fsm(c), SO1, &roles, NULL), 0);
    assert_int_equal(roles, 1u << HBC__ROLE__ROLE_SECURITY_OFFICER);
    /* Once an admin is assigned, OU=admin alone no longer makes an admin. */
    assert_int_equal(role_assign(c, BOOT, BACKUP, HBC__ROLE__ROLE_ADMIN, false), HBC_EDENIED);
    assert_int_equal(fsm_get_roles(leader_fsm(c), BOOT, &roles, NULL), 0);
    assert_int_equal(roles, 0);
    /* Non-admins cannot grant themselves anything. */
    assert_int_equal(role_assign(c, SO1, SO1, HBC__ROLE__ROLE_ADMIN, false), HBC_EDENIED);
    assert_int_equal(role_assign(c, BACKUP, BACKUP, HBC__ROLE__ROLE_SECURITY_OFFICER, false),
                     HBC_EDENIED);
    /* Separation of duties: an admin cannot also be a security officer. */
    assert_int_equal(role_assign(c, ADMIN, ADMIN, HBC__ROLE__ROLE_SECURITY_OFFICER, false),
                     HBC_EDENIED);
    assert_int_equal(role_assign(c, ADMIN, SO2, HBC__ROLE__ROLE_ADMIN, false), HBC_EDENIED);
    /* Revoke. */
    assert_int_equal(role_assign(c, ADMIN, RESTORE, HBC__ROLE__ROLE_RESTORE, true), 0);
    assert_int_equal(fsm_get_roles(leader_fsm(c), RESTORE, &roles, NULL), 0);
    assert_int_equal(roles, 0);
    cl_stop(c);
}

static void test_clock(void **state)
{
    (void)state;
    struct cl *c = cl_start();
    setup_roles(c);
    assert_int_equal(vault_create(c, 1, 0, 0), 0);
    assert_int_equal(snapshot_commit(c, 1, 1), 0);
    assert_int_equal(hold_set(c, SO1, 1), 0);
    /* Before the first tick time is unknown: time-dependent commands fail closed. */
    assert_int_equal(fsm_compliance_clock_ms(leader_fsm(c)), 0);
    assert_int_equal(hold_release(c, SO1, 1, NULL), HBC_ECLOCK);
    assert_int_equal(vault_create(c, 2, 1, HBC__LOCK_MODE__LOCK_GOVERNANCE), 0);
    assert_int_equal(snapshot_commit(c, 2, 2), 0);
    assert_int_equal(forget(c, ADMIN, 2), HBC_ECLOCK);
    assert_int_equal(bypass(c, SO1, 2, HBC__BYPASS_ACTION__BYPASS_FORGET, 0, NULL), HBC_ECLOCK);

    /* Only the leader itself ticks. */
    assert_int_equal(tick_as(c, ADMIN, c->now, 0), HBC_EDENIED);
    assert_int_equal(tick_as(c, NODE, c->now, 0), HBC_EDENIED);
    assert_int_equal(fsm_compliance_clock_ms(leader_fsm(c)), 0);

    /* The first tick sets it. */
    assert_int_equal(tick_as(c, SELF, c->now, 0), 0);
    uint64_t clock = c->now;
    assert_int_equal(fsm_compliance_clock_ms(leader_fsm(c)), clock);

    /* A leader a year ahead: refused, and so on every later try. */
    uint64_t year = 365 * FSM_DAY_MS;
    assert_int_equal(tick_as(c, SELF, clock + year, 10000), HBC_ECLOCK);
    assert_int_equal(tick_as(c, SELF, clock + year + 10000, 20000), HBC_ECLOCK);
    assert_int_equal(fsm_compliance_clock_ms(leader_fsm(c)), clock);
    /* A jump of more than elapsed + max_skew is refused; at the bound it is accepted. */
    assert_int_equal(tick_as(c, SELF, clock + 10000 + FSM_MAX_SKEW_MS + 1, 10000), HBC_ECLOCK);
    assert_int_equal(tick_as(c, SELF, clock + 10000 + FSM_MAX_SKEW_MS, 10000), 0);
    clock += 10000 + FSM_MAX_SKEW_MS;
    assert_int_equal(fsm_compliance_clock_ms(leader_fsm(c)), clock);
    /* It never goes back: a little behind is a no-op, far behind is refused. */
    assert_int_equal(tick_as(c, SELF, clock - 1000, 10000), 0);
    assert_int_equal(fsm_compliance_clock_ms(leader_fsm(c)), clock);
    assert_int_equal(tick_as(c, SELF, clock - 3600000, 10000), HBC_ECLOCK);
    assert_int_equal(tick_as(c, SELF, 1, 10000), HBC_ECLOCK);
    assert_int_equal(fsm_compliance_clock_ms(leader_fsm(c)), clock);
    /* The anchor must be a clock value the cluster reached. */
    assert_int_equal(tick_at(c, SELF, clock + 1000, 1000, clock + 1), HBC_ECLOCK);
    assert_int_equal(tick_at(c, SELF, clock + 1000, 1000, 0), HBC_ECLOCK);
    /*
     * A leader whose clock runs twice as fast: it keeps its anchor, so it gains
     * at most max_skew in all, not max_skew per tick.
     */
    uint64_t anchor = clock;
    unsigned accepted = 0;
    for (uint64_t k = 1; k <= 20; k++) {
        if (tick_at(c, SELF, anchor + 20000 * k, 10000 * k, anchor) == 0) {
            accepted++;
        }
    }
    assert_int_equal(accepted, FSM_MAX_SKEW_MS / 10000);
    clock = anchor + 20000 * accepted;
    assert_int_equal(fsm_compliance_clock_ms(leader_fsm(c)), clock);
    /* Every server holds the same committed clock (and state: cl_stop compares digests). */
    assert_true(raft_fixture_step_until(&c->f, all_caught_up, NULL, 60000));
    for (unsigned i = 0; i < N_SERVERS; i++) {
        assert_int_equal(fsm_compliance_clock_ms(c->fsm[i]), clock);
    }
    cl_stop(c);
}

/* Count audit records and refusals among them. */
struct audit_count {
    unsigned records;  /* every record */
    unsigned refusals; /* records with a nonzero outcome */
    bool reasons_ok;   /* every refusal has a reason */
};

static int audit_count_cb(const Hbc__AuditRecord *r, void *arg)
{
    struct audit_count *a = arg;
    a->records++;
    if (r->outcome != 0) {
        a->refusals++;
        a->reasons_ok = a->reasons_ok && r->reason[0] != '\0';
    }
    return 0;
}

/*
 * 1,000 attempts by every role (admin, backup, restore, security officers, a
 * node's certificate, the bootstrap OU=admin subject) to forget, shorten,
 * bypass or make the clock jump, against compliance-locked and held
 * snapshots: none succeeds, and each is refused with its reason in "audit".
 */
static void test_compliance_randomised(void **state)
{
    (void)state;
    struct cl *c = cl_start();
    setup_roles(c);
    assert_int_equal(vault_create(c, 1, 0, 0), 0); /* defaults: 2192 days, compliance */
    for (unsigned s = 1; s <= 3; s++) {
        assert_int_equal(snapshot_commit(c, 1, s), 0);
    }
    assert_int_equal(hold_set(c, SO1, 3), 0);
    pass_time(c, 1000);
    uint64_t until[4];
    for (unsigned s = 1; s <= 3; s++) {
        until[s] = retain_until(c, s);
        assert_true(until[s] >= T0 + 2192 * FSM_DAY_MS);
    }
    struct audit_count before = {.reasons_ok = true};
    assert_int_equal(fsm_list_audit(leader_fsm(c), 0, audit_count_cb, &before, NULL), 0);

    static const char *const who[] = {ADMIN, BACKUP, RESTORE, SO1, SO2, NODE, BOOT};
    const unsigned n_who = sizeof who / sizeof who[0];
    srand(7);
    unsigned refused = 0;
    unsigned attempts = 1000;
    for (unsigned i = 0; i < attempts; i++) {
        const char *w = who[(unsigned)rand() % n_who];
        unsigned snap = 1 + (unsigned)rand() % 3;
        int code = 0;
        switch (rand() % 6) {
        case 0:
            code = forget(c, w, snap);
            break;
        case 1: /* shorten by any amount, down to "now" */
            code = lock_extend(c, w, snap, until[snap] - 1 - (uint64_t)rand() % until[snap]);
            break;
        case 2:
            code = bypass(c, w, snap, HBC__BYPASS_ACTION__BYPASS_FORGET, 0, NULL);
            break;
        case 3:
            code = bypass(c, w, snap, HBC__BYPASS_ACTION__BYPASS_SHORTEN, c->now, NULL);
            break;
        case 4: /* a clock tick far ahead, as a client would have to send it */
            code = tick_as(c, w, c->now + (uint64_t)(1 + rand() % 7) * 365 * FSM_DAY_MS, 10000);
            break;
        default: /* escalate: make oneself admin, or (the admin) a security officer */
            code = role_assign(c, w, w,
                               strcmp(w, ADMIN) == 0 ? HBC__ROLE__ROLE_SECURITY_OFFICER
                                                     : HBC__ROLE__ROLE_ADMIN,
                               false);
            break;
        }
        assert_int_not_equal(code, 0);
        assert_true(code == HBC_EDENIED || code == HBC_ELOCKED || code == HBC_ECLOCK);
        refused++;
    }
    for (unsigned s = 1; s <= 3; s++) {
        assert_true(present(c, s));
        assert_int_equal(retain_until(c, s), until[s]);
    }
    Hbc__SnapshotInfo *held = snapshot_get(c, 3);
    assert_true(held->legal_hold);
    fsm_record_free(held);
    assert_int_equal(fsm_compliance_clock_ms(leader_fsm(c)), c->now);
    struct audit_count after = {.reasons_ok = true};
    assert_int_equal(fsm_list_audit(leader_fsm(c), 0, audit_count_cb, &after, NULL), 0);
    assert_int_equal(after.refusals - before.refusals, refused);
    assert_true(after.reasons_ok);
    printf("# %u attempts, %u refused, 0 succeeded\n", refused, refused);
    cl_stop(c);
}

static void test_hold(void **state)
{
    (void)state;
    struct cl *c = cl_start();
    setup_roles(c);
    pass_time(c, 1);
    assert_int_equal(vault_create(c, 1, 1, 0), 0); /* 1 day, compliance */
    assert_int_equal(snapshot_commit(c, 1, 1), 0);
    assert_int_equal(hold_set(c, ADMIN, 1), HBC_EDENIED);
    assert_int_equal(hold_set(c, SO1, 1), 0);
    assert_int_equal(hold_set(c, SO2, 1), HBC_EEXIST);
    /* Past retain-until plus margin: the hold still blocks forget. */
    pass_time(c, 3 * FSM_DAY_MS);
    assert_int_equal(forget(c, ADMIN, 1), HBC_ELOCKED);
    assert_int_equal(forget(c, BACKUP, 1), HBC_ELOCKED);
    /* The same officer cannot approve her own release. */
    uint64_t req = 0;
    assert_int_equal(hold_release(c, SO1, 1, &req), 0);
    assert_int_equal(approve(c, SO1, req), HBC_EDENIED);
    assert_int_equal(approve(c, ADMIN, req), HBC_EDENIED);
    /* An approval after the time limit is refused. */
    pass_time(c, FSM_APPROVAL_TTL_MS + 1);
    assert_int_equal(approve(c, SO2, req), HBC_EDENIED);
    assert_int_equal(forget(c, ADMIN, 1), HBC_ELOCKED);
    /* A fresh request, approved by a different officer in time: released. */
    assert_int_equal(hold_release(c, SO1, 1, &req), 0);
    pass_time(c, 1000);
    assert_int_equal(approve(c, SO2, req), 0);
    assert_int_equal(approve(c, SO2, req), HBC_EEXIST);
    Hbc__SnapshotInfo *s = snapshot_get(c, 1);
    assert_false(s->legal_hold);
    fsm_record_free(s);
    assert_int_equal(forget(c, RESTORE, 1), HBC_EDENIED);
    assert_int_equal(forget(c, BACKUP, 1), 0);
    assert_false(present(c, 1));
    assert_int_equal(forget(c, BACKUP, 1), HBC_ENOTFOUND);
    cl_stop(c);
}

static void test_compliance_expiry(void **state)
{
    (void)state;
    struct cl *c = cl_start();
    setup_roles(c);
    pass_time(c, 1);
    assert_int_equal(vault_create(c, 1, 2, HBC__LOCK_MODE__LOCK_COMPLIANCE), 0);
    assert_int_equal(snapshot_commit(c, 1, 1), 0);
    uint64_t until = retain_until(c, 1);
    assert_int_equal(until, c->now + 2 * FSM_DAY_MS);
    /* Extending works, shortening never, by anyone. */
    assert_int_equal(lock_extend(c, BACKUP, 1, until + FSM_DAY_MS), HBC_EDENIED);
    assert_int_equal(lock_extend(c, SO1, 1, until + FSM_DAY_MS), 0);
    until += FSM_DAY_MS;
    assert_int_equal(lock_extend(c, ADMIN, 1, until), HBC_EEXIST);
    assert_int_equal(lock_extend(c, ADMIN, 1, until - 1), HBC_ELOCKED);
    assert_int_equal(bypass(c, SO1, 1, HBC__BYPASS_ACTION__BYPASS_FORGET, 0, NULL), HBC_ELOCKED);
    /* Up to retain-until plus the margin, the lock holds. */
    pass_time(c, until + FSM_EXPIRY_MARGIN_MS - 1 - c->now);
    assert_int_equal(forget(c, ADMIN, 1), HBC_ELOCKED);
    pass_time(c, 1);
    assert_int_equal(forget(c, ADMIN, 1), 0);
    assert_false(present(c, 1));
    cl_stop(c);
}

static void test_governance(void **state)
{
    (void)state;
    struct cl *c = cl_start();
    setup_roles(c);
    pass_time(c, 1);
    assert_int_equal(vault_create(c, 1, 30, HBC__LOCK_MODE__LOCK_GOVERNANCE), 0);
    assert_int_equal(snapshot_commit(c, 1, 1), 0);
    assert_int_equal(snapshot_commit(c, 1, 2), 0);
    assert_int_equal(forget(c, ADMIN, 1), HBC_ELOCKED);
    assert_int_equal(lock_extend(c, SO1, 1, c->now), HBC_ELOCKED);
    /* Requests need an officer. */
    assert_int_equal(bypass(c, ADMIN, 1, HBC__BYPASS_ACTION__BYPASS_FORGET, 0, NULL), HBC_EDENIED);
    uint64_t req = 0;
    assert_int_equal(bypass(c, SO1, 1, HBC__BYPASS_ACTION__BYPASS_FORGET, 0, &req), 0);
    /* One officer alone, or an admin, cannot approve. */
    assert_int_equal(approve(c, SO1, req), HBC_EDENIED);
    assert_int_equal(approve(c, ADMIN, req), HBC_EDENIED);
    assert_true(present(c, 1));
    assert_int_equal(approve(c, SO2, req), 0);
    assert_false(present(c, 1));
    /* Shorten: only to an earlier time, then it expires on the clock. */
    uint64_t until = retain_until(c, 2);
    assert_int_equal(bypass(c, SO2, 2, HBC__BYPASS_ACTION__BYPASS_SHORTEN, until, NULL),
                     HBC_EINVAL);
    assert_int_equal(bypass(c, SO2, 2, HBC__BYPASS_ACTION__BYPASS_SHORTEN, c->now, &req), 0);
    assert_int_equal(approve(c, SO2, req), HBC_EDENIED);
    assert_int_equal(approve(c, SO1, req), 0);
    assert_int_equal(retain_until(c, 2), c->now);
    /* A hold stops a bypass even in governance mode. */
    assert_int_equal(hold_set(c, SO1, 2), 0);
    assert_int_equal(bypass(c, SO2, 2, HBC__BYPASS_ACTION__BYPASS_FORGET, 0, NULL), HBC_ELOCKED);
    pass_time(c, FSM_EXPIRY_MARGIN_MS);
    assert_int_equal(forget(c, ADMIN, 2), HBC_ELOCKED);
    struct audit_count a = {.reasons_ok = true};
    assert_int_equal(fsm_list_audit(leader_fsm(c), 0, audit_count_cb, &a, NULL), 0);
    assert_int_equal(a.refusals, c->refusals);
    assert_true(a.reasons_ok);
    cl_stop(c);
}

/*
 * The dedup trap: a chunk first written by an old, short-lived snapshot and
 * shared by one locked today lives as long as today's lock.
 */
static void test_dedup_trap(void **state)
{
    (void)state;
    struct cl *c = cl_start();
    setup_roles(c);
    pass_time(c, 1);
    assert_int_equal(vault_create(c, 1, 1, 0), 0);
    assert_int_equal(snapshot_commit(c, 1, 1), 0); /* wrote chunk X first */
    pass_time(c, 10 * FSM_DAY_MS);
    assert_int_equal(snapshot_commit(c, 1, 2), 0); /* references X too */
    uint64_t long_lock = c->now + 6 * 365 * FSM_DAY_MS;
    assert_int_equal(lock_extend(c, SO1, 2, long_lock), 0);
    /* Chunk X is referenced by both: protected by the later lock. */
    uint8_t ids[2 * 16];
    make_id(ids, 'S', 1);
    make_id(ids + 16, 'S', 2);
    struct fsm_protection p;
    assert_int_equal(fsm_protected_until(leader_fsm(c), ids, 2, &p, NULL), 0);
    assert_int_equal(p.present, 2);
    assert_int_equal(p.retain_until_ms, long_lock);
    /* The old snapshot expires and goes; X is still protected by today's lock. */
    assert_int_equal(forget(c, BACKUP, 1), 0);
    for (unsigned i = 0; i < N_SERVERS; i++) {
        assert_true(raft_fixture_step_until(&c->f, all_caught_up, NULL, 60000));
        assert_int_equal(fsm_protected_until(c->fsm[i], ids, 2, &p, NULL), 0);
        assert_int_equal(p.present, 1);
        assert_int_equal(p.retain_until_ms, long_lock);
        assert_false(p.legal_hold);
    }
    /* A chunk only the old snapshot referenced is referenced by nothing present. */
    assert_int_equal(fsm_protected_until(leader_fsm(c), ids, 1, &p, NULL), 0);
    assert_int_equal(p.present, 0);
    cl_stop(c);
}

/* Bad fields are refused as invalid, with a reason in "audit", and change nothing. */
static void test_bad_input(void **state)
{
    (void)state;
    struct cl *c = cl_start();
    setup_roles(c);
    pass_time(c, 1);
    assert_int_equal(vault_create(c, 1, FSM_RETENTION_DAYS_MAX + 1, 0), HBC_EINVAL);
    assert_int_equal(vault_create(c, 1, 10, (Hbc__LockMode)7), HBC_EINVAL);
    assert_int_equal(vault_create(c, 1, 10, HBC__LOCK_MODE__LOCK_GOVERNANCE), 0);
    assert_int_equal(snapshot_commit(c, 1, 1), 0);
    assert_int_equal(role_assign(c, ADMIN, BACKUP, (Hbc__Role)9, false), HBC_EINVAL);
    assert_int_equal(role_assign(c, ADMIN, SELF, HBC__ROLE__ROLE_ADMIN, false), HBC_EINVAL);
    assert_int_equal(role_assign(c, ADMIN, "", HBC__ROLE__ROLE_ADMIN, false), HBC_EINVAL);
    assert_int_equal(bypass(c, SO1, 1, (Hbc__BypassAction)9, 0, NULL), HBC_EINVAL);
    assert_int_equal(approve(c, SO2, 999999), HBC_ENOTFOUND);
    assert_int_equal(tick_as(c, SELF, 0, 0), HBC_EINVAL);
    assert_int_equal(forget(c, ADMIN, 77), HBC_ENOTFOUND);
    /* A 5-byte snapshot id. */
    uint8_t sid[5] = {1, 2, 3, 4, 5};
    Hbc__SnapshotForget f = HBC__SNAPSHOT_FORGET__INIT;
    f.snapshot_id.data = sid;
    f.snapshot_id.len = sizeof sid;
    Hbc__Command cmd = HBC__COMMAND__INIT;
    cmd.cmd_case = HBC__COMMAND__CMD_SNAPSHOT_FORGET;
    cmd.snapshot_forget = &f;
    assert_int_equal(run(c, &cmd, ADMIN), HBC_EINVAL);
    assert_true(present(c, 1));
    cl_stop(c);
}

static void sha256(const uint8_t *p, size_t n, uint8_t out[32])
{
    unsigned int len = 0;
    assert_int_equal(EVP_Digest(p, n, out, &len, EVP_sha256(), NULL), 1);
}

/*
 * Locks, holds, roles, approvals, audit and the clock travel in Raft
 * snapshots; and a snapshot of the first version (six column families)
 * still restores, with the new families empty.
 */
static void test_restore_keeps_locks(void **state)
{
    (void)state;
    struct cl *c = cl_start();
    setup_roles(c);
    pass_time(c, 1);
    assert_int_equal(vault_create(c, 1, 0, 0), 0);
    assert_int_equal(snapshot_commit(c, 1, 1), 0);
    assert_int_equal(hold_set(c, SO1, 1), 0);
    assert_int_equal(forget(c, ADMIN, 1), HBC_ELOCKED);
    assert_true(raft_fixture_step_until(&c->f, all_caught_up, NULL, 60000));
    struct fsm *src = c->fsm[0];
    void *snap = NULL;
    size_t len = 0;
    assert_int_equal(fsm_snapshot_take(src, &snap, &len, NULL), 0);

    char dir[64];
    snprintf(dir, sizeof dir, "/tmp/hbc-test-locks-XXXXXX");
    assert_non_null(mkdtemp(dir));
    struct fsm *f = NULL;
    assert_int_equal(fsm_open(dir, &f, NULL), 0);
    assert_int_equal(fsm_snapshot_restore(f, snap, len, NULL), 0);
    uint8_t d0[FSM_DIGEST_LEN], d1[FSM_DIGEST_LEN];
    assert_int_equal(fsm_digest(src, d0, NULL), 0);
    assert_int_equal(fsm_digest(f, d1, NULL), 0);
    assert_memory_equal(d0, d1, FSM_DIGEST_LEN);
    assert_int_equal(fsm_compliance_clock_ms(f), c->now);
    uint32_t roles = 0;
    assert_int_equal(fsm_get_roles(f, SO2, &roles, NULL), 0);
    assert_int_equal(roles, 1u << HBC__ROLE__ROLE_SECURITY_OFFICER);
    uint8_t sid[16];
    make_id(sid, 'S', 1);
    Hbc__SnapshotInfo *s = NULL;
    assert_int_equal(fsm_get_snapshot(f, sid, &s, NULL), 0);
    assert_true(s->legal_hold);
    assert_string_equal(s->hold_by, SO1);
    fsm_record_free(s);

    /*
     * Make a first-version snapshot: the new families are the last ones and
     * hold entries here, so build it from a fresh state's stream instead:
     * its three new families are each u16 name length, name, 0x00.
     */
    struct fsm *empty = NULL;
    char dir2[64];
    snprintf(dir2, sizeof dir2, "/tmp/hbc-test-locks-XXXXXX");
    assert_non_null(mkdtemp(dir2));
    assert_int_equal(fsm_open(dir2, &empty, NULL), 0);
    void *e_snap = NULL;
    size_t e_len = 0;
    assert_int_equal(fsm_snapshot_take(empty, &e_snap, &e_len, NULL), 0);
    size_t tail = 0;
    const char *names[] = {"users", "approvals", "audit"};
    for (unsigned i = 0; i < 3; i++) {
        tail += 2 + strlen(names[i]) + 1;
    }
    uint8_t *old = malloc(e_len);
    assert_non_null(old);
    size_t old_len = e_len - 32 - tail;
    memcpy(old, e_snap, old_len);
    old[8 + 4 + 3] = 6; /* the column family count */
    sha256(old, old_len, old + old_len);
    old_len += 32;
    assert_int_equal(fsm_snapshot_restore(f, old, old_len, NULL), 0);
    assert_int_equal(fsm_compliance_clock_ms(f), 0);
    assert_int_equal(fsm_get_snapshot(f, sid, &s, NULL), HBC_ENOTFOUND);
    /* Four families is too few. */
    old[8 + 4 + 3] = 4;
    sha256(old, old_len - 32, old + old_len - 32);
    assert_int_equal(fsm_snapshot_restore(f, old, old_len, NULL), HBC_EFORMAT);
    free(old);
    raft_free(e_snap);
    raft_free(snap);
    fsm_close(empty);
    fsm_close(f);
    assert_int_equal(nftw(dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS), 0);
    assert_int_equal(nftw(dir2, rm_entry, 16, FTW_DEPTH | FTW_PHYS), 0);
    cl_stop(c);
}

/*
 * The voters' cross-check: a leader far from the median of the voters'
 * clocks is refused, even on the first tick; without a majority of reports
 * nothing moves; a confirmed tick may catch up after downtime, where the
 * anchor bound alone refuses. Time-dependent commands fail closed when the
 * proposing leader's clock is far from the committed clock.
 */
static void test_clock_voters(void **state)
{
    (void)state;
    struct cl *c = cl_start();
    setup_roles(c);
    assert_int_equal(vault_create(c, 1, 0, HBC__LOCK_MODE__LOCK_GOVERNANCE), 0);
    assert_int_equal(snapshot_commit(c, 1, 1), 0);
    uint64_t year = 365 * FSM_DAY_MS;
    uint64_t now = c->now;
    /* A leader a year ahead, on the very first tick: refused by the median of three. */
    uint64_t v1[] = {now + year, now, now + 200};
    assert_int_equal(tick_voters(c, now + year, v1, 3, 3, 0), HBC_ECLOCK);
    assert_int_equal(fsm_compliance_clock_ms(leader_fsm(c)), 0);
    /* One report of three voters: no majority, nothing moves. */
    uint64_t v2[] = {now};
    assert_int_equal(tick_voters(c, now, v2, 1, 3, 0), HBC_ECLOCK);
    assert_int_equal(fsm_compliance_clock_ms(leader_fsm(c)), 0);
    /* Bad counts and bounds are invalid, not clock refusals. */
    assert_int_equal(tick_voters(c, now, v1, 3, 2, 0), HBC_EINVAL);
    assert_int_equal(tick_voters(c, now, v1, 0, 0, 0), HBC_EINVAL);
    /* Two of three agree with the leader (the skewed one is outvoted): accepted. */
    uint64_t v3[] = {now, now + year, now - 300};
    assert_int_equal(tick_voters(c, now, v3, 3, 3, 0), 0);
    assert_int_equal(fsm_compliance_clock_ms(leader_fsm(c)), now);
    /* A leader whose commands carry a time a year ahead: time-dependent commands fail closed. */
    c->now = now + year;
    assert_int_equal(forget(c, ADMIN, 1), HBC_ECLOCK);
    assert_int_equal(bypass(c, SO1, 1, HBC__BYPASS_ACTION__BYPASS_FORGET, 0, NULL), HBC_ECLOCK);
    c->now = now;
    assert_int_equal(forget(c, ADMIN, 1), HBC_ELOCKED);
    /* The cluster was down an hour: the anchor bound alone refuses the jump... */
    c->now = now + 3600000;
    assert_int_equal(forget(c, ADMIN, 1), HBC_ECLOCK); /* the clock is stale meanwhile */
    assert_int_equal(tick_as(c, SELF, c->now, 1000), HBC_ECLOCK);
    assert_int_equal(fsm_compliance_clock_ms(leader_fsm(c)), now);
    /* ... a majority of voters confirming it lets the clock catch up. */
    uint64_t v4[] = {c->now, c->now + 40};
    assert_int_equal(tick_voters(c, c->now, v4, 2, 3, 1000), 0);
    assert_int_equal(fsm_compliance_clock_ms(leader_fsm(c)), c->now);
    assert_int_equal(forget(c, ADMIN, 1), HBC_ELOCKED);
    /* Still never backwards beyond max_skew, confirmed or not. */
    uint64_t v5[] = {c->now - 3600000, c->now - 3600000};
    assert_int_equal(tick_voters(c, c->now - 3600000, v5, 2, 3, 1000), HBC_ECLOCK);
    /* Every server holds the same clock. */
    assert_true(raft_fixture_step_until(&c->f, all_caught_up, NULL, 60000));
    for (unsigned i = 0; i < N_SERVERS; i++) {
        assert_int_equal(fsm_compliance_clock_ms(c->fsm[i]), c->now);
    }
    cl_stop(c);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_roles),
        cmocka_unit_test(test_clock),
        cmocka_unit_test(test_compliance_randomised),
        cmocka_unit_test(test_hold),
        cmocka_unit_test(test_compliance_expiry),
        cmocka_unit_test(test_governance),
        cmocka_unit_test(test_dedup_trap),
        cmocka_unit_test(test_bad_input),
        cmocka_unit_test(test_restore_keeps_locks),
        cmocka_unit_test(test_clock_voters),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
