/* Unit tests for node/fsm: the replicated state machine alone, and on libraft's raft_fixture. */
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

#include "common/alloc.h"
#include "common/crypto.h"
#include "node/fsm.h"

#define PROPOSER "CN=admin,O=Test Hospital"

/* ---- temporary directories ---- */

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)flag;
    (void)ftw;
    return remove(path);
}

static void make_tmpdir(char *out, size_t cap)
{
    snprintf(out, cap, "/tmp/hbc-test-fsm-XXXXXX");
    assert_non_null(mkdtemp(out));
}

static void rm_rf(const char *dir)
{
    assert_int_equal(nftw(dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS), 0);
}

/* ---- commands ---- */

/* A deterministic id: kind, number, then a fixed pattern. */
static void make_id(uint8_t *out, size_t len, uint8_t kind, uint32_t n)
{
    for (size_t i = 0; i < len; i++) {
        out[i] = (uint8_t)(0xa5 ^ (i * 7));
    }
    out[0] = kind;
    out[1] = (uint8_t)(n >> 24);
    out[2] = (uint8_t)(n >> 16);
    out[3] = (uint8_t)(n >> 8);
    out[4] = (uint8_t)n;
}

static struct raft_buffer encode(Hbc__Command *c, uint64_t t)
{
    c->leader_time_ms = t;
    c->proposer = PROPOSER;
    struct raft_buffer b;
    struct err e = {0};
    assert_int_equal(fsm_command_encode(c, &b, &e), 0);
    return b;
}

static struct raft_buffer cmd_node_join(uint64_t t, unsigned n, uint64_t raft_id)
{
    char id[32];
    char data[32];
    char raft[32];
    snprintf(id, sizeof id, "node-%u", n);
    snprintf(data, sizeof data, "10.0.%u.%u:7400", n / 250, n % 250 + 1);
    snprintf(raft, sizeof raft, "10.0.%u.%u:7401", n / 250, n % 250 + 1);
    Hbc__NodeJoin j = HBC__NODE_JOIN__INIT;
    j.node_id = id;
    j.data_address = data;
    j.raft_address = raft;
    j.raft_id = raft_id;
    j.site = n % 3 == 0 ? "site-a" : n % 3 == 1 ? "site-b" : "site-c";
    j.region = "eu-west";
    j.media = n % 2 == 0 ? "ssd" : "hdd";
    j.worm = n % 4 == 0;
    j.capacity_bytes = (uint64_t)(n + 1) << 40;
    Hbc__Command c = HBC__COMMAND__INIT;
    c.cmd_case = HBC__COMMAND__CMD_NODE_JOIN;
    c.node_join = &j;
    return encode(&c, t);
}

static struct raft_buffer cmd_node_update(uint64_t t, unsigned n, const char *site)
{
    char id[32];
    snprintf(id, sizeof id, "node-%u", n);
    Hbc__NodeUpdate u = HBC__NODE_UPDATE__INIT;
    u.node_id = id;
    u.site = (char *)site;
    u.has_state = true;
    u.state = HBC__NODE_STATE__NODE_UP;
    Hbc__Command c = HBC__COMMAND__INIT;
    c.cmd_case = HBC__COMMAND__CMD_NODE_UPDATE;
    c.node_update = &u;
    return encode(&c, t);
}

static struct raft_buffer cmd_node_remove(uint64_t t, unsigned n)
{
    char id[32];
    snprintf(id, sizeof id, "node-%u", n);
    Hbc__NodeRemove r = HBC__NODE_REMOVE__INIT;
    r.node_id = id;
    Hbc__Command c = HBC__COMMAND__INIT;
    c.cmd_case = HBC__COMMAND__CMD_NODE_REMOVE;
    c.node_remove = &r;
    return encode(&c, t);
}

static struct raft_buffer cmd_vault_create(uint64_t t, unsigned n, const char *name_override)
{
    uint8_t id[16];
    make_id(id, sizeof id, 'V', n);
    char name[32];
    snprintf(name, sizeof name, "vault-%u", n);
    Hbc__VaultCreate v = HBC__VAULT_CREATE__INIT;
    v.vault_id.data = id;
    v.vault_id.len = sizeof id;
    v.name = name_override != NULL ? (char *)name_override : name;
    v.copies = 3;
    v.k = 4;
    v.m = 2;
    Hbc__Command c = HBC__COMMAND__INIT;
    c.cmd_case = HBC__COMMAND__CMD_VAULT_CREATE;
    c.vault_create = &v;
    return encode(&c, t);
}

/* A vault with a policy of ncopies rules (home, any, 4+2); copy 1 gets k1 data shards. */
static struct raft_buffer cmd_vault_create_policy(uint64_t t, unsigned n, unsigned ncopies,
                                                  unsigned k1, const char *media)
{
    uint8_t id[16];
    make_id(id, sizeof id, 'V', n);
    char name[32];
    snprintf(name, sizeof name, "vault-%u", n);
    Hbc__CopyRule rules[9];
    Hbc__CopyRule *ptrs[9];
    for (unsigned c = 0; c < ncopies && c < 9; c++) {
        hbc__copy_rule__init(&rules[c]);
        rules[c].site = c == 0 ? "home" : "offsite";
        rules[c].media = (char *)media;
        rules[c].immutable = c == 2;
        rules[c].k = c == 1 ? k1 : 4;
        rules[c].m = 2;
        ptrs[c] = &rules[c];
    }
    Hbc__VaultPolicy pol = HBC__VAULT_POLICY__INIT;
    pol.n_copies = ncopies;
    pol.copies = ptrs;
    pol.name = "3-2-1-1-0";
    Hbc__VaultCreate v = HBC__VAULT_CREATE__INIT;
    v.vault_id.data = id;
    v.vault_id.len = sizeof id;
    v.name = name;
    v.copies = ncopies < 8 ? ncopies : 8;
    v.k = 4;
    v.m = 2;
    v.policy = &pol;
    v.home_site = "site-a";
    Hbc__Command c = HBC__COMMAND__INIT;
    c.cmd_case = HBC__COMMAND__CMD_VAULT_CREATE;
    c.vault_create = &v;
    return encode(&c, t);
}

/* variant changes the client fields, for a conflicting reuse of a snapshot id. */
static struct raft_buffer cmd_snapshot_commit(uint64_t t, unsigned vault, unsigned snap,
                                              unsigned variant)
{
    uint8_t sid[16];
    uint8_t vid[16];
    uint8_t root[32];
    uint8_t refs[32];
    make_id(sid, sizeof sid, 'S', snap);
    make_id(vid, sizeof vid, 'V', vault);
    make_id(root, sizeof root, 'T', snap);
    make_id(refs, sizeof refs, 'R', snap);
    Hbc__SnapshotCommit s = HBC__SNAPSHOT_COMMIT__INIT;
    s.snapshot_id.data = sid;
    s.snapshot_id.len = sizeof sid;
    s.vault_id.data = vid;
    s.vault_id.len = sizeof vid;
    s.time_ms = 1700000000000ull + snap;
    s.root_tree_id.data = root;
    s.root_tree_id.len = sizeof root;
    s.ref_list_id.data = refs;
    s.ref_list_id.len = sizeof refs;
    s.files = 1000 + snap + variant;
    s.bytes = (uint64_t)snap << 30;
    s.chunks = 10 * snap;
    Hbc__Command c = HBC__COMMAND__INIT;
    c.cmd_case = HBC__COMMAND__CMD_SNAPSHOT_COMMIT;
    c.snapshot_commit = &s;
    return encode(&c, t);
}

static struct raft_buffer cmd_restore_test(uint64_t t, unsigned snap, bool passed)
{
    uint8_t sid[16];
    make_id(sid, sizeof sid, 'S', snap);
    Hbc__RestoreTestRecord r = HBC__RESTORE_TEST_RECORD__INIT;
    r.snapshot_id.data = sid;
    r.snapshot_id.len = sizeof sid;
    r.copy = "copy-1";
    r.chunks = 77;
    r.bytes = 77u << 20;
    r.errors = passed ? 0 : 3;
    r.duration_ms = 4200;
    r.result = passed ? HBC__RESTORE_TEST_RESULT__RESTORE_TEST_PASSED
                      : HBC__RESTORE_TEST_RESULT__RESTORE_TEST_FAILED;
    Hbc__Command c = HBC__COMMAND__INIT;
    c.cmd_case = HBC__COMMAND__CMD_RESTORE_TEST_RECORD;
    c.restore_test_record = &r;
    return encode(&c, t);
}

/* A restore test record carrying the client's record id (id_byte repeated), or a bad-length id. */
static struct raft_buffer cmd_restore_test_id(uint64_t t, unsigned snap, uint8_t id_byte,
                                              size_t id_len, uint64_t errors)
{
    uint8_t sid[16];
    uint8_t rid[32];
    make_id(sid, sizeof sid, 'S', snap);
    memset(rid, id_byte, sizeof rid);
    Hbc__RestoreTestRecord r = HBC__RESTORE_TEST_RECORD__INIT;
    r.snapshot_id.data = sid;
    r.snapshot_id.len = sizeof sid;
    r.chunks = 5;
    r.bytes = 5000;
    r.errors = errors;
    r.duration_ms = 10;
    r.result = errors == 0 ? HBC__RESTORE_TEST_RESULT__RESTORE_TEST_PASSED
                           : HBC__RESTORE_TEST_RESULT__RESTORE_TEST_FAILED;
    r.has_record_id = true;
    r.record_id.data = rid;
    r.record_id.len = id_len;
    Hbc__Command c = HBC__COMMAND__INIT;
    c.cmd_case = HBC__COMMAND__CMD_RESTORE_TEST_RECORD;
    c.restore_test_record = &r;
    return encode(&c, t);
}

/* Apply b (freed here) at index without Raft; return the command's code. */
static int apply(struct fsm *f, uint64_t index, struct raft_buffer b)
{
    int code = 12345;
    struct err e = {0};
    int rc = fsm_apply_at(f, index, b.base, b.len, &code, &e);
    raft_free(b.base);
    if (rc != 0) {
        print_error("apply: %s\n", e.msg);
    }
    assert_int_equal(rc, 0);
    return code;
}

static void digest_of(struct fsm *f, uint8_t out[FSM_DIGEST_LEN])
{
    struct err e = {0};
    assert_int_equal(fsm_digest(f, out, &e), 0);
}

/* ---- query helpers ---- */

struct id_list {
    uint8_t ids[4096][16]; /* snapshot ids in listing order */
    uint64_t index[4096];  /* their commit index */
    size_t n;              /* how many */
};

static int collect_snapshot(const Hbc__SnapshotInfo *s, void *arg)
{
    struct id_list *l = arg;
    assert_true(l->n < 4096);
    assert_int_equal(s->snapshot_id.len, 16);
    memcpy(l->ids[l->n], s->snapshot_id.data, 16);
    l->index[l->n] = s->commit_index;
    l->n++;
    return 0;
}

static int count_cb_node(const Hbc__NodeInfo *n, void *arg)
{
    (void)n;
    (*(size_t *)arg)++;
    return 0;
}

static int count_cb_vault(const Hbc__VaultInfo *v, void *arg)
{
    (void)v;
    (*(size_t *)arg)++;
    return 0;
}

static int count_cb_test(const Hbc__RestoreTestInfo *t, void *arg)
{
    (void)t;
    (*(size_t *)arg)++;
    return 0;
}

static size_t count_nodes(struct fsm *f)
{
    size_t n = 0;
    assert_int_equal(fsm_list_nodes(f, count_cb_node, &n, NULL), 0);
    return n;
}

static size_t count_vaults(struct fsm *f)
{
    size_t n = 0;
    assert_int_equal(fsm_list_vaults(f, count_cb_vault, &n, NULL), 0);
    return n;
}

static size_t count_tests(struct fsm *f, const uint8_t *snap)
{
    size_t n = 0;
    assert_int_equal(fsm_list_restore_tests(f, snap, count_cb_test, &n, NULL), 0);
    return n;
}

/* ---- direct tests (no Raft) ---- */

struct one {
    char dir[64];  /* its RocksDB directory */
    struct fsm *f; /* the state machine */
};

static int one_setup(void **state)
{
    struct one *o = calloc(1, sizeof *o);
    assert_non_null(o);
    make_tmpdir(o->dir, sizeof o->dir);
    struct err e = {0};
    assert_int_equal(fsm_open(o->dir, &o->f, &e), 0);
    *state = o;
    return 0;
}

static int one_teardown(void **state)
{
    struct one *o = *state;
    fsm_close(o->f);
    rm_rf(o->dir);
    free(o);
    return 0;
}

/* Every command kind: the outcome a user sees, and what the queries then show. */
struct test_seen {
    size_t n;        /* restore tests seen */
    size_t with_id;  /* of which carry a record id */
    uint64_t errors; /* errors of the last one with id byte 0xA1 */
    uint64_t index;  /* its Raft index */
};

static int seen_test_cb(const Hbc__RestoreTestInfo *t, void *arg)
{
    struct test_seen *s = arg;
    s->n++;
    if (t->has_record_id) {
        s->with_id++;
        if (t->record_id.len == 16 && t->record_id.data[0] == 0xA1) {
            s->errors = t->errors;
            s->index = t->index;
        }
    }
    return 0;
}

/*
 * A restore test record retried after a lost reply (same record id) is stored
 * once: the second apply is a no-op that succeeds, even if its fields differ;
 * records without an id (older clients) are still stored and listed as before.
 */
static void test_restore_test_idempotent(void **state)
{
    struct fsm *f = ((struct one *)*state)->f;
    uint64_t i = 0;
    assert_int_equal(apply(f, ++i, cmd_vault_create(1000, 1, NULL)), 0);
    assert_int_equal(apply(f, ++i, cmd_snapshot_commit(1001, 1, 1, 0)), 0);
    assert_int_equal(apply(f, ++i, cmd_snapshot_commit(1002, 1, 2, 0)), 0);
    uint8_t sid[16];
    make_id(sid, sizeof sid, 'S', 1);

    uint64_t first = ++i;
    assert_int_equal(apply(f, first, cmd_restore_test_id(2000, 1, 0xA1, 16, 0)), 0);
    /* The retry: same id, applied later (and with other numbers): nothing changes. */
    assert_int_equal(apply(f, ++i, cmd_restore_test_id(2001, 1, 0xA1, 16, 9)), 0);
    struct test_seen s = {0};
    assert_int_equal(fsm_list_restore_tests(f, sid, seen_test_cb, &s, NULL), 0);
    assert_int_equal(s.n, 1);
    assert_int_equal(s.errors, 0);
    assert_int_equal(s.index, first);

    /* Another id, and the same id on another snapshot, are new records. */
    assert_int_equal(apply(f, ++i, cmd_restore_test_id(2002, 1, 0xB2, 16, 0)), 0);
    assert_int_equal(apply(f, ++i, cmd_restore_test_id(2003, 2, 0xA1, 16, 0)), 0);
    /* Old clients send no id: every record is stored. */
    assert_int_equal(apply(f, ++i, cmd_restore_test(2004, 1, true)), 0);
    assert_int_equal(apply(f, ++i, cmd_restore_test(2005, 1, true)), 0);
    /* An id that is not 16 bytes is refused. */
    assert_int_equal(apply(f, ++i, cmd_restore_test_id(2006, 1, 0xC3, 15, 0)), HBC_EINVAL);
    assert_int_equal(apply(f, ++i, cmd_restore_test_id(2007, 1, 0xC3, 17, 0)), HBC_EINVAL);
    memset(&s, 0, sizeof s);
    assert_int_equal(fsm_list_restore_tests(f, sid, seen_test_cb, &s, NULL), 0);
    assert_int_equal(s.n, 4);
    assert_int_equal(s.with_id, 2);
    assert_int_equal(count_tests(f, NULL), 5);
    /* A retry still finds its record among the others. */
    assert_int_equal(apply(f, ++i, cmd_restore_test_id(2008, 1, 0xB2, 16, 0)), 0);
    assert_int_equal(count_tests(f, NULL), 5);
    /* A retry of a record for a snapshot that does not exist is still refused. */
    assert_int_equal(apply(f, ++i, cmd_restore_test_id(2009, 99, 0xA1, 16, 0)), HBC_ENOTFOUND);
}

static void test_commands(void **state)
{
    struct fsm *f = ((struct one *)*state)->f;
    uint64_t i = 0;
    assert_int_equal(fsm_applied_index(f), 0);

    assert_int_equal(apply(f, ++i, cmd_node_join(1000, 1, 11)), 0);
    assert_int_equal(apply(f, ++i, cmd_node_join(1001, 2, 12)), 0);
    assert_int_equal(apply(f, ++i, cmd_node_join(1002, 1, 13)), HBC_EEXIST); /* same node id */
    assert_int_equal(apply(f, ++i, cmd_node_join(1003, 3, 12)), HBC_EEXIST); /* same raft id */
    assert_int_equal(apply(f, ++i, cmd_node_join(1004, 4, 0)), HBC_EINVAL);  /* raft id 0 */
    assert_int_equal(count_nodes(f), 2);

    Hbc__NodeInfo *node = NULL;
    assert_int_equal(fsm_get_node(f, "node-1", &node, NULL), 0);
    assert_string_equal(node->site, "site-b");
    assert_int_equal(node->state, HBC__NODE_STATE__NODE_JOINING);
    assert_int_equal(node->joined_ms, 1000);
    uint64_t capacity = node->capacity_bytes;
    fsm_record_free(node);

    /* A partial update changes only what it names. */
    assert_int_equal(apply(f, ++i, cmd_node_update(2000, 1, "site-z")), 0);
    assert_int_equal(fsm_get_node(f, "node-1", &node, NULL), 0);
    assert_string_equal(node->site, "site-z");
    assert_string_equal(node->region, "eu-west");
    assert_int_equal(node->capacity_bytes, capacity);
    assert_int_equal(node->state, HBC__NODE_STATE__NODE_UP);
    assert_int_equal(node->joined_ms, 1000);
    assert_int_equal(node->updated_ms, 2000);
    fsm_record_free(node);
    assert_int_equal(apply(f, ++i, cmd_node_update(2001, 9, "site-z")), HBC_ENOTFOUND);

    assert_int_equal(apply(f, ++i, cmd_node_remove(2002, 2)), 0);
    assert_int_equal(apply(f, ++i, cmd_node_remove(2003, 2)), HBC_ENOTFOUND);
    assert_int_equal(fsm_get_node(f, "node-2", &node, NULL), HBC_ENOTFOUND);
    assert_int_equal(count_nodes(f), 1);
    /* Its raft id is free again. */
    assert_int_equal(apply(f, ++i, cmd_node_join(2004, 5, 12)), 0);

    /* Vaults: unique id and unique name. */
    assert_int_equal(apply(f, ++i, cmd_vault_create(3000, 1, NULL)), 0);
    assert_int_equal(apply(f, ++i, cmd_vault_create(3001, 1, "other")), HBC_EEXIST);
    assert_int_equal(apply(f, ++i, cmd_vault_create(3002, 2, "vault-1")), HBC_EEXIST);
    assert_int_equal(apply(f, ++i, cmd_vault_create(3003, 2, "")), HBC_EINVAL);
    assert_int_equal(apply(f, ++i, cmd_vault_create(3004, 2, NULL)), 0);
    assert_int_equal(count_vaults(f), 2);
    Hbc__VaultInfo *vault = NULL;
    assert_int_equal(fsm_find_vault(f, "vault-2", &vault, NULL), 0);
    assert_int_equal(vault->created_ms, 3004);
    assert_int_equal(vault->created_index, i);
    assert_string_equal(vault->created_by, PROPOSER);
    assert_int_equal(vault->k, 4);
    fsm_record_free(vault);
    assert_int_equal(fsm_find_vault(f, "vault-9", &vault, NULL), HBC_ENOTFOUND);

    /* Policies: bounds checked, then stored with the vault. */
    assert_int_equal(apply(f, ++i, cmd_vault_create_policy(3005, 5, 3, 17, "any")), HBC_EINVAL);
    assert_int_equal(apply(f, ++i, cmd_vault_create_policy(3006, 5, 9, 4, "any")), HBC_EINVAL);
    assert_int_equal(apply(f, ++i, cmd_vault_create_policy(3007, 5, 0, 4, "any")), HBC_EINVAL);
    assert_int_equal(apply(f, ++i, cmd_vault_create_policy(3008, 5, 3, 4, "")), HBC_EINVAL);
    assert_int_equal(
        apply(f, ++i, cmd_vault_create_policy(3009, 5, 3, 4, "a-media-class-name-of-33-bytes...")),
        HBC_EINVAL);
    assert_int_equal(apply(f, ++i, cmd_vault_create_policy(3010, 5, 3, 4, "any")), 0);
    assert_int_equal(fsm_find_vault(f, "vault-5", &vault, NULL), 0);
    assert_non_null(vault->policy);
    assert_int_equal(vault->policy->n_copies, 3);
    assert_string_equal(vault->policy->copies[1]->site, "offsite");
    assert_true(vault->policy->copies[2]->immutable);
    assert_string_equal(vault->home_site, "site-a");
    fsm_record_free(vault);
    assert_int_equal(count_vaults(f), 3);

    /* Snapshots: the id is the idempotency key. */
    assert_int_equal(apply(f, ++i, cmd_snapshot_commit(4000, 1, 1, 0)), 0);
    uint64_t first_commit = i;
    assert_int_equal(apply(f, ++i, cmd_snapshot_commit(4001, 1, 1, 0)), HBC_EEXIST);
    assert_int_equal(apply(f, ++i, cmd_snapshot_commit(4002, 1, 1, 1)), HBC_EINVAL);
    assert_int_equal(apply(f, ++i, cmd_snapshot_commit(4003, 7, 2, 0)), HBC_ENOTFOUND);
    assert_int_equal(apply(f, ++i, cmd_snapshot_commit(4004, 2, 3, 0)), 0);
    assert_int_equal(apply(f, ++i, cmd_snapshot_commit(4005, 1, 4, 0)), 0);
    uint8_t vid[16];
    make_id(vid, sizeof vid, 'V', 1);
    struct id_list *l = calloc(1, sizeof *l);
    assert_non_null(l);
    assert_int_equal(fsm_list_snapshots(f, vid, collect_snapshot, l, NULL), 0);
    assert_int_equal(l->n, 2);
    uint8_t sid[16];
    make_id(sid, sizeof sid, 'S', 1);
    assert_memory_equal(l->ids[0], sid, 16);
    assert_int_equal(l->index[0], first_commit);
    make_id(sid, sizeof sid, 'S', 4);
    assert_memory_equal(l->ids[1], sid, 16);
    free(l);
    make_id(vid, sizeof vid, 'V', 7);
    assert_int_equal(fsm_list_snapshots(f, vid, collect_snapshot, NULL, NULL), HBC_ENOTFOUND);
    Hbc__SnapshotInfo *snap = NULL;
    make_id(sid, sizeof sid, 'S', 1);
    assert_int_equal(fsm_get_snapshot(f, sid, &snap, NULL), 0);
    assert_int_equal(snap->committed_ms, 4000);
    assert_int_equal(snap->files, 1001);
    fsm_record_free(snap);

    /* Restore tests belong to committed snapshots. */
    assert_int_equal(apply(f, ++i, cmd_restore_test(5000, 1, true)), 0);
    assert_int_equal(apply(f, ++i, cmd_restore_test(5001, 1, false)), 0);
    assert_int_equal(apply(f, ++i, cmd_restore_test(5002, 3, true)), 0);
    assert_int_equal(apply(f, ++i, cmd_restore_test(5003, 99, true)), HBC_ENOTFOUND);
    assert_int_equal(count_tests(f, sid), 2);
    assert_int_equal(count_tests(f, NULL), 3);

    /* Not a Command, an empty Command, an oversized entry: refused, index still advances. */
    struct fsm_stats before = fsm_stats(f);
    int code = 0;
    static const uint8_t junk[] = {0xff, 0xff, 0xff, 0xff, 0x0f};
    assert_int_equal(fsm_apply_at(f, ++i, junk, sizeof junk, &code, NULL), 0);
    assert_int_equal(code, HBC_EPROTO);
    Hbc__Command empty = HBC__COMMAND__INIT;
    empty.leader_time_ms = 6000;
    uint8_t packed[64];
    size_t plen = hbc__command__pack(&empty, packed + FSM_ENTRY_PREFIX);
    packed[3] = (uint8_t)plen; /* the length prefix of a Raft entry */
    plen += FSM_ENTRY_PREFIX;
    assert_int_equal(fsm_apply_at(f, ++i, packed, plen, &code, NULL), 0);
    assert_int_equal(code, HBC_EPROTO);
    uint8_t *big = calloc(1, FSM_COMMAND_MAX + 1);
    assert_non_null(big);
    assert_int_equal(fsm_apply_at(f, ++i, big, FSM_COMMAND_MAX + 1, &code, NULL), 0);
    assert_int_equal(code, HBC_ETOOBIG);
    free(big);
    assert_int_equal(fsm_applied_index(f), i);
    assert_int_equal(fsm_stats(f).refused, before.refused + 3);

    /* The encoder refuses what apply would refuse. */
    struct raft_buffer b;
    assert_int_equal(fsm_command_encode(&empty, &b, NULL), HBC_EINVAL);
}

/* Time comes from the command, and never goes back. */
static void test_leader_time(void **state)
{
    struct fsm *f = ((struct one *)*state)->f;
    assert_int_equal(apply(f, 1, cmd_vault_create(50000, 1, NULL)), 0);
    assert_int_equal(fsm_leader_time_ms(f), 50000);
    /* A new leader whose clock is behind: its commands are stamped with the last time seen. */
    assert_int_equal(apply(f, 2, cmd_vault_create(40000, 2, NULL)), 0);
    assert_int_equal(fsm_leader_time_ms(f), 50000);
    Hbc__VaultInfo *v = NULL;
    assert_int_equal(fsm_find_vault(f, "vault-2", &v, NULL), 0);
    assert_int_equal(v->created_ms, 50000);
    fsm_record_free(v);
    assert_int_equal(apply(f, 3, cmd_vault_create(60000, 3, NULL)), 0);
    assert_int_equal(fsm_leader_time_ms(f), 60000);
}

/* Replayed entries (libraft replays its log on start) are skipped; the state survives reopening. */
static void test_replay_after_reopen(void **state)
{
    struct one *o = *state;
    for (unsigned n = 1; n <= 20; n++) {
        assert_int_equal(apply(o->f, n, cmd_vault_create(1000 + n, n, NULL)), 0);
    }
    uint8_t before[FSM_DIGEST_LEN];
    digest_of(o->f, before);
    fsm_close(o->f);
    o->f = NULL;
    struct err e = {0};
    assert_int_equal(fsm_open(o->dir, &o->f, &e), 0);
    assert_int_equal(fsm_applied_index(o->f), 20);
    assert_int_equal(fsm_leader_time_ms(o->f), 1020);
    uint8_t after[FSM_DIGEST_LEN];
    digest_of(o->f, after);
    assert_memory_equal(before, after, FSM_DIGEST_LEN);

    /* The same entries again: no effect (and no EEXIST, which a first apply would give). */
    for (unsigned n = 1; n <= 20; n++) {
        assert_int_equal(apply(o->f, n, cmd_vault_create(1000 + n, n, NULL)), 0);
    }
    assert_int_equal(fsm_stats(o->f).skipped, 20);
    digest_of(o->f, after);
    assert_memory_equal(before, after, FSM_DIGEST_LEN);
    assert_int_equal(count_vaults(o->f), 20);
    /* The next entry applies. */
    assert_int_equal(apply(o->f, 21, cmd_vault_create(2000, 21, NULL)), 0);
    assert_int_equal(count_vaults(o->f), 21);
}

/* Two state machines fed the same entries agree byte for byte; a different order does not. */
static void test_digest_determinism(void **state)
{
    (void)state;
    char d[3][64];
    struct fsm *f[3];
    for (int k = 0; k < 3; k++) {
        make_tmpdir(d[k], sizeof d[k]);
        assert_int_equal(fsm_open(d[k], &f[k], NULL), 0);
    }
    for (int k = 0; k < 2; k++) {
        apply(f[k], 1, cmd_vault_create(10, 1, NULL));
        apply(f[k], 2, cmd_vault_create(11, 2, NULL));
        apply(f[k], 3, cmd_snapshot_commit(12, 1, 1, 0));
    }
    apply(f[2], 1, cmd_vault_create(10, 2, NULL));
    apply(f[2], 2, cmd_vault_create(11, 1, NULL));
    apply(f[2], 3, cmd_snapshot_commit(12, 1, 1, 0));
    uint8_t g[3][FSM_DIGEST_LEN];
    for (int k = 0; k < 3; k++) {
        digest_of(f[k], g[k]);
    }
    assert_memory_equal(g[0], g[1], FSM_DIGEST_LEN);
    assert_memory_not_equal(g[0], g[2], FSM_DIGEST_LEN);
    for (int k = 0; k < 3; k++) {
        fsm_close(f[k]);
        rm_rf(d[k]);
    }
}

/* Fill a state machine with some of everything, starting at index `from`. */
static uint64_t populate(struct fsm *f, uint64_t from, unsigned salt)
{
    uint64_t i = from;
    for (unsigned n = 0; n < 10; n++) {
        apply(f, i++, cmd_node_join(100 + n, salt * 100 + n, salt * 100 + n + 1));
        apply(f, i++, cmd_vault_create(200 + n, salt * 100 + n, NULL));
    }
    for (unsigned n = 0; n < 30; n++) {
        apply(f, i++, cmd_snapshot_commit(300 + n, salt * 100 + n % 10, salt * 1000 + n, 0));
        apply(f, i++, cmd_restore_test(400 + n, salt * 1000 + n, n % 5 != 0));
    }
    return i;
}

/* Snapshot, then restore into an empty machine and into one holding other state. */
static void test_snapshot_restore(void **state)
{
    struct fsm *a = ((struct one *)*state)->f;
    populate(a, 1, 1);
    void *snap = NULL;
    size_t len = 0;
    struct err e = {0};
    assert_int_equal(fsm_snapshot_take(a, &snap, &len, &e), 0);
    uint8_t da[FSM_DIGEST_LEN];
    digest_of(a, da);
    /* The digest is the snapshot's trailer. */
    assert_memory_equal(da, (uint8_t *)snap + len - FSM_DIGEST_LEN, FSM_DIGEST_LEN);

    char dir_b[64];
    char dir_c[64];
    struct fsm *b = NULL;
    struct fsm *c = NULL;
    make_tmpdir(dir_b, sizeof dir_b);
    make_tmpdir(dir_c, sizeof dir_c);
    assert_int_equal(fsm_open(dir_b, &b, NULL), 0);
    assert_int_equal(fsm_open(dir_c, &c, NULL), 0);

    assert_int_equal(fsm_snapshot_restore(b, snap, len, &e), 0);
    uint8_t db[FSM_DIGEST_LEN];
    digest_of(b, db);
    assert_memory_equal(da, db, FSM_DIGEST_LEN);
    assert_int_equal(fsm_applied_index(b), fsm_applied_index(a));
    assert_int_equal(fsm_leader_time_ms(b), fsm_leader_time_ms(a));

    /* c holds other records, and more of them: after restore none is left. */
    populate(c, 1, 2);
    populate(c, 200, 3);
    assert_int_equal(fsm_snapshot_restore(c, snap, len, &e), 0);
    uint8_t dc[FSM_DIGEST_LEN];
    digest_of(c, dc);
    assert_memory_equal(da, dc, FSM_DIGEST_LEN);
    assert_int_equal(count_nodes(c), 10);
    assert_int_equal(count_vaults(c), 10);
    assert_int_equal(fsm_applied_index(c), 80);

    /* Both continue identically from there. */
    assert_int_equal(apply(a, 81, cmd_vault_create(999, 77, NULL)), 0);
    assert_int_equal(apply(c, 81, cmd_vault_create(999, 77, NULL)), 0);
    digest_of(a, da);
    digest_of(c, dc);
    assert_memory_equal(da, dc, FSM_DIGEST_LEN);

    /* An empty machine's snapshot empties a full one. */
    char dir_d[64];
    struct fsm *d = NULL;
    make_tmpdir(dir_d, sizeof dir_d);
    assert_int_equal(fsm_open(dir_d, &d, NULL), 0);
    void *empty = NULL;
    size_t empty_len = 0;
    assert_int_equal(fsm_snapshot_take(d, &empty, &empty_len, NULL), 0);
    assert_int_equal(fsm_snapshot_restore(c, empty, empty_len, &e), 0);
    assert_int_equal(count_nodes(c), 0);
    assert_int_equal(fsm_applied_index(c), 0);
    uint8_t dd[FSM_DIGEST_LEN];
    digest_of(c, dc);
    digest_of(d, dd);
    assert_memory_equal(dc, dd, FSM_DIGEST_LEN);

    raft_free(empty);
    raft_free(snap);
    fsm_close(b);
    fsm_close(c);
    fsm_close(d);
    rm_rf(dir_b);
    rm_rf(dir_c);
    rm_rf(dir_d);
}

static void be32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}

/* Recompute the SHA-256 trailer after a deliberate change, to reach the parser. */
static void reseal(uint8_t *buf, size_t len)
{
    struct err e = {0};
    uint8_t h[32];
    assert_int_equal(crypto_sha256(buf, len - 32, h, &e), 0);
    memcpy(buf + len - 32, h, 32);
}

/* A damaged snapshot is refused with a distinct code and leaves the state as it was. */
static void test_restore_corrupt(void **state)
{
    struct fsm *f = ((struct one *)*state)->f;
    populate(f, 1, 1);
    void *snap = NULL;
    size_t len = 0;
    assert_int_equal(fsm_snapshot_take(f, &snap, &len, NULL), 0);
    uint8_t *s = snap;
    /* The target holds different state that must survive every failed restore. */
    char dir[64];
    struct fsm *t = NULL;
    make_tmpdir(dir, sizeof dir);
    assert_int_equal(fsm_open(dir, &t, NULL), 0);
    populate(t, 1, 4);
    uint8_t before[FSM_DIGEST_LEN];
    digest_of(t, before);

    uint8_t *copy = malloc(len + 64);
    assert_non_null(copy);
    struct err e = {0};

    /* One flipped bit anywhere: the trailer catches it. */
    for (size_t pos = 24; pos < len; pos += len / 37 + 1) {
        memcpy(copy, s, len);
        copy[pos] ^= 0x10;
        assert_int_equal(fsm_snapshot_restore(t, copy, len, &e), HBC_ECORRUPT);
    }
    /* Cut short. */
    assert_int_equal(fsm_snapshot_restore(t, s, len - 1, &e), HBC_ECORRUPT);
    assert_int_equal(fsm_snapshot_restore(t, s, 40, &e), HBC_ETRUNCATED);
    assert_int_equal(fsm_snapshot_restore(t, s, 0, &e), HBC_ETRUNCATED);
    /* Not a snapshot at all. */
    memcpy(copy, s, len);
    copy[0] = 'X';
    assert_int_equal(fsm_snapshot_restore(t, copy, len, &e), HBC_EFORMAT);
    /* A version from the future. */
    memcpy(copy, s, len);
    be32(copy + 8, 2);
    reseal(copy, len);
    assert_int_equal(fsm_snapshot_restore(t, copy, len, &e), HBC_EVERSION);
    /* Intact trailer, hostile lengths: the first key length claims 4 GiB. */
    memcpy(copy, s, len);
    size_t first_entry = 24 + 2 + strlen("default") + 1 + 2 + strlen("meta");
    assert_int_equal(copy[first_entry], 0x01);
    be32(copy + first_entry + 1, 0xffffffffu);
    reseal(copy, len);
    assert_int_equal(fsm_snapshot_restore(t, copy, len, &e), HBC_ETOOBIG);
    /* A value length running past the end. */
    memcpy(copy, s, len);
    uint32_t klen = (uint32_t)copy[first_entry + 1] << 24 | (uint32_t)copy[first_entry + 2] << 16 |
                    (uint32_t)copy[first_entry + 3] << 8 | copy[first_entry + 4];
    be32(copy + first_entry + 5 + klen, (uint32_t)len);
    reseal(copy, len);
    assert_int_equal(fsm_snapshot_restore(t, copy, len, &e), HBC_ETRUNCATED);
    /* Trailing bytes after the last column family. */
    memcpy(copy, s, len - 32);
    memset(copy + len - 32, 0, 8);
    reseal(copy, len + 8);
    assert_int_equal(fsm_snapshot_restore(t, copy, len + 8, &e), HBC_EFORMAT);
    /* Header applied index that disagrees with the meta record. */
    memcpy(copy, s, len);
    copy[23] ^= 1;
    reseal(copy, len);
    assert_int_equal(fsm_snapshot_restore(t, copy, len, &e), HBC_EFORMAT);

    uint8_t after[FSM_DIGEST_LEN];
    digest_of(t, after);
    assert_memory_equal(before, after, FSM_DIGEST_LEN);
    assert_int_equal(fsm_stats(t).restores, 0);

    /*
     * Through libraft's callback: on failure the buffer stays the caller's
     * (libraft frees it), on success the FSM frees it. ASan's leak and
     * double-free checks hold both sides to that.
     */
    struct raft_fsm *rf = fsm_raft_fsm(t);
    struct raft_buffer rb = {.base = raft_malloc(len), .len = len};
    assert_non_null(rb.base);
    memcpy(rb.base, s, len);
    ((uint8_t *)rb.base)[len / 2] ^= 1;
    assert_int_equal(rf->restore(rf, &rb), RAFT_CORRUPT);
    ((uint8_t *)rb.base)[len / 2] ^= 1;
    assert_int_equal(rf->restore(rf, &rb), 0);
    digest_of(t, after);
    uint8_t want[FSM_DIGEST_LEN];
    digest_of(f, want);
    assert_memory_equal(after, want, FSM_DIGEST_LEN);

    free(copy);
    raft_free(snap);
    fsm_close(t);
    rm_rf(dir);
}

/* A second process (or handle) on the same directory is refused, not shared. */
static void test_open_locked(void **state)
{
    struct one *o = *state;
    struct fsm *second = NULL;
    struct err e = {0};
    assert_int_equal(fsm_open(o->dir, &second, &e), HBC_ESTORE);
    assert_null(second);
    assert_non_null(strstr(e.msg, "state machine: open"));
}

/* The raft_fsm callbacks refuse to guess an index when no struct raft was set. */
static void test_apply_needs_raft(void **state)
{
    struct fsm *f = ((struct one *)*state)->f;
    struct raft_fsm *rf = fsm_raft_fsm(f);
    assert_int_equal(rf->version, 1);
    struct raft_buffer b = cmd_vault_create(1, 1, NULL);
    void *result = (void *)1;
    assert_int_equal(rf->apply(rf, &b, &result), RAFT_INVALID);
    assert_int_equal(fsm_applied_index(f), 0);
    raft_free(b.base);
}

/* Allocation failures inside apply are local failures: nothing is written, a retry succeeds. */
static void test_apply_alloc_fault(void **state)
{
    struct fsm *f = ((struct one *)*state)->f;
    assert_int_equal(apply(f, 1, cmd_vault_create(1, 1, NULL)), 0);
    uint8_t before[FSM_DIGEST_LEN];
    digest_of(f, before);
    struct raft_buffer b = cmd_snapshot_commit(2, 1, 1, 0);
    int failures = 0;
    for (long n = 0;; n++) {
        int code = 0;
        alloc_fault_after(n);
        int rc = fsm_apply_at(f, 2, b.base, b.len, &code, NULL);
        alloc_fault_reset();
        if (rc == 0) {
            assert_int_equal(code, 0);
            break;
        }
        assert_int_equal(rc, HBC_ENOMEM);
        failures++;
        uint8_t now[FSM_DIGEST_LEN];
        digest_of(f, now);
        assert_memory_equal(before, now, FSM_DIGEST_LEN);
        assert_int_equal(fsm_applied_index(f), 1);
    }
    assert_true(failures > 0);
    raft_free(b.base);
    assert_int_equal(fsm_applied_index(f), 2);
}

/* ---- on raft_fixture ---- */

struct proposal {
    struct raft_apply req; /* the libraft request (req.data points here) */
    bool submitted;        /* raft_apply returned 0 */
    bool done;             /* its callback fired */
    int status;            /* libraft's status */
    int code;              /* the state machine's code when status is 0 */
};

#define MAX_PROPOSALS 4096

struct cluster {
    struct raft_fixture f;                     /* the in-memory cluster */
    unsigned n;                                /* servers */
    char dirs[RAFT_FIXTURE_MAX_SERVERS][64];   /* each server's RocksDB */
    struct fsm *fsm[RAFT_FIXTURE_MAX_SERVERS]; /* each server's state machine */
    struct proposal *props;                    /* every request ever made (stable) */
    size_t n_props;                            /* how many used */
    uint64_t now_ms;                           /* leader clock for the next command */
};

static void cluster_add_server(struct cluster *c)
{
    unsigned i = c->n;
    make_tmpdir(c->dirs[i], sizeof c->dirs[i]);
    struct err e = {0};
    assert_int_equal(fsm_open(c->dirs[i], &c->fsm[i], &e), 0);
    assert_int_equal(raft_fixture_grow(&c->f, fsm_raft_fsm(c->fsm[i])), 0);
    fsm_set_raft(c->fsm[i], raft_fixture_get(&c->f, i));
    c->n++;
}

static struct cluster *cluster_start(unsigned n)
{
    struct cluster *c = calloc(1, sizeof *c);
    assert_non_null(c);
    c->props = calloc(MAX_PROPOSALS, sizeof *c->props);
    assert_non_null(c->props);
    c->now_ms = 1700000000000ull;
    assert_int_equal(raft_fixture_initialize(&c->f), 0);
    for (unsigned i = 0; i < n; i++) {
        cluster_add_server(c);
    }
    struct raft_configuration conf;
    assert_int_equal(raft_fixture_configuration(&c->f, n, &conf), 0);
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
        if (!raft_fixture_alive(f, i)) {
            continue;
        }
        struct raft *r = raft_fixture_get(f, i);
        if (raft_last_applied(r) < last || r->last_stored < last) {
            return false;
        }
    }
    return true;
}

static void cluster_stop(struct cluster *c)
{
    /* libraft 0.15 must not be closed with appends in flight (NOTES-deps.md). */
    assert_true(raft_fixture_step_until(&c->f, all_caught_up, NULL, 60000));
    raft_fixture_close(&c->f);
    for (unsigned i = 0; i < c->n; i++) {
        fsm_close(c->fsm[i]);
        rm_rf(c->dirs[i]);
    }
    free(c->props);
    free(c);
}

static void proposal_cb(struct raft_apply *req, int status, void *result)
{
    struct proposal *p = req->data;
    p->done = true;
    p->status = status;
    p->code = status == 0 ? fsm_result_code(result) : 0;
}

/* Propose b (ownership taken) to the current leader; returns the request to watch. */
static struct proposal *propose(struct cluster *c, struct raft_buffer b)
{
    assert_true(c->n_props < MAX_PROPOSALS);
    struct proposal *p = &c->props[c->n_props++];
    unsigned leader = raft_fixture_leader_index(&c->f);
    assert_true(leader < c->n);
    p->req.data = p;
    int rv = raft_apply(raft_fixture_get(&c->f, leader), &p->req, &b, 1, proposal_cb);
    if (rv != 0) {
        raft_free(b.base);
        p->done = true;
        p->status = rv;
        return p;
    }
    p->submitted = true;
    return p;
}

struct wait_set {
    struct proposal **p; /* requests to wait for */
    size_t n;            /* how many */
};

static bool all_done(struct raft_fixture *f, void *arg)
{
    (void)f;
    struct wait_set *w = arg;
    for (size_t i = 0; i < w->n; i++) {
        if (!w->p[i]->done) {
            return false;
        }
    }
    return true;
}

static bool no_leader(struct raft_fixture *f, void *arg)
{
    (void)arg;
    return raft_fixture_leader_index(f) >= raft_fixture_n(f);
}

struct stored_arg {
    unsigned leader;  /* the server whose followers are watched */
    raft_index index; /* the entry they must have stored */
};

static bool followers_stored(struct raft_fixture *f, void *arg)
{
    struct stored_arg *a = arg;
    for (unsigned i = 0; i < raft_fixture_n(f); i++) {
        if (i != a->leader && raft_fixture_alive(f, i) &&
            raft_fixture_get(f, i)->last_stored < a->index) {
            return false;
        }
    }
    return true;
}

/* Kill the leader and step until another one is stable. Returns the dead one's index. */
static unsigned kill_leader(struct cluster *c)
{
    unsigned old = raft_fixture_leader_index(&c->f);
    assert_true(old < c->n);
    raft_fixture_kill(&c->f, old);
    /* Step until the dead leader is no longer reported, then until a new one is. */
    assert_true(raft_fixture_step_until(&c->f, no_leader, NULL, 10000));
    assert_true(raft_fixture_step_until_has_leader(&c->f, 20000));
    assert_int_not_equal(raft_fixture_leader_index(&c->f), old);
    return old;
}

/* What the workload knows about each snapshot it tried to commit. */
struct snap_track {
    unsigned vault;    /* which vault */
    bool committed;    /* a commit was acknowledged (code 0 or EEXIST) */
    bool first_ok;     /* one attempt got code 0 */
    uint64_t index;    /* the Raft index of the attempt that got code 0 */
    unsigned attempts; /* how many times it was proposed */
};

/*
 * Commit snapshot s until an attempt is acknowledged: a proposal whose fate is
 * unknown (the leader died with it in flight, or lost leadership) is retried
 * on the current leader with the same snapshot id.
 */
static void commit_snapshot(struct cluster *c, struct snap_track *t, unsigned s)
{
    for (;;) {
        if (raft_fixture_leader_index(&c->f) >= c->n) {
            assert_true(raft_fixture_step_until_has_leader(&c->f, 20000));
        }
        t[s].attempts++;
        assert_true(t[s].attempts < 20);
        struct proposal *p = propose(c, cmd_snapshot_commit(c->now_ms++, t[s].vault, s, 0));
        struct wait_set w = {.p = &p, .n = 1};
        raft_fixture_step_until(&c->f, all_done, &w, 5000);
        if (p->done && p->status == 0) {
            assert_true(p->code == 0 || p->code == HBC_EEXIST);
            if (p->code == 0) {
                assert_false(t[s].first_ok);
                t[s].first_ok = true;
                t[s].index = p->req.index;
            }
            t[s].committed = true;
            return;
        }
    }
}

/* Propose a batch of commands at once (pipelined) and step until each has an answer. */
static void run_batch(struct cluster *c, struct raft_buffer *bufs, size_t n)
{
    struct proposal *ps[64];
    assert_true(n <= 64);
    for (size_t i = 0; i < n; i++) {
        ps[i] = propose(c, bufs[i]);
    }
    struct wait_set w = {.p = ps, .n = n};
    assert_true(raft_fixture_step_until(&c->f, all_done, &w, 20000));
    for (size_t i = 0; i < n; i++) {
        assert_int_equal(ps[i]->status, 0);
    }
}

/* Every live server has the same state, and every acknowledged snapshot exactly once, in order. */
static void check_cluster(struct cluster *c, struct snap_track *t, unsigned n_snaps,
                          unsigned n_vaults)
{
    assert_true(raft_fixture_step_until(&c->f, all_caught_up, NULL, 60000));
    uint8_t d0[FSM_DIGEST_LEN];
    digest_of(c->fsm[0], d0);
    for (unsigned i = 1; i < c->n; i++) {
        uint8_t di[FSM_DIGEST_LEN];
        digest_of(c->fsm[i], di);
        assert_memory_equal(d0, di, FSM_DIGEST_LEN);
        assert_int_equal(fsm_applied_index(c->fsm[i]), fsm_applied_index(c->fsm[0]));
    }
    struct id_list *l = calloc(1, sizeof *l);
    assert_non_null(l);
    bool *listed = calloc(n_snaps, sizeof *listed);
    assert_non_null(listed);
    for (unsigned i = 0; i < c->n; i++) {
        unsigned seen = 0;
        memset(listed, 0, n_snaps * sizeof *listed);
        for (unsigned v = 0; v < n_vaults; v++) {
            uint8_t vid[16];
            make_id(vid, sizeof vid, 'V', v);
            l->n = 0;
            assert_int_equal(fsm_list_snapshots(c->fsm[i], vid, collect_snapshot, l, NULL), 0);
            for (size_t k = 0; k < l->n; k++) {
                unsigned s = (unsigned)l->ids[k][1] << 24 | (unsigned)l->ids[k][2] << 16 |
                             (unsigned)l->ids[k][3] << 8 | l->ids[k][4];
                assert_true(s < n_snaps);
                assert_int_equal(t[s].vault, v);
                assert_true(t[s].committed);
                assert_false(listed[s]);
                listed[s] = true;
                /*
                 * Its commit index is the one the successful attempt was given
                 * (unknown when the attempt that landed was orphaned by a dead
                 * leader, and a retry got HBC_EEXIST).
                 */
                if (t[s].first_ok) {
                    assert_int_equal(l->index[k], t[s].index);
                }
                if (k > 0) {
                    assert_true(l->index[k] > l->index[k - 1]);
                }
                seen++;
            }
        }
        unsigned want = 0;
        for (unsigned s = 0; s < n_snaps; s++) {
            want += t[s].committed;
        }
        assert_int_equal(seen, want);
    }
    free(listed);
    free(l);
}

/*
 * Some of every command through the leader, killing the leader twice along
 * the way (reviving the first victim before the second kill), with snapshot
 * commits retried after every failover. A nonzero snapshot_threshold makes
 * every server take snapshots throughout (trailing a quarter of it).
 */
static void failover_workload(unsigned n_servers, unsigned snapshot_threshold)
{
    struct cluster *c = cluster_start(n_servers);
    if (snapshot_threshold > 0) {
        for (unsigned i = 0; i < c->n; i++) {
            raft_set_snapshot_threshold(raft_fixture_get(&c->f, i), snapshot_threshold);
            raft_set_snapshot_trailing(raft_fixture_get(&c->f, i), snapshot_threshold / 4);
        }
    }
    enum { N_NODES = 200, N_VAULTS = 40, N_SNAPS = 300, N_TESTS = 200 };
    struct snap_track *t = calloc(N_SNAPS, sizeof *t);
    assert_non_null(t);
    struct raft_buffer bufs[32];

    for (unsigned n = 0; n < N_NODES; n += 20) {
        for (unsigned k = 0; k < 20; k++) {
            bufs[k] = cmd_node_join(c->now_ms++, n + k, n + k + 100);
        }
        run_batch(c, bufs, 20);
    }
    for (unsigned n = 0; n < N_VAULTS; n += 20) {
        for (unsigned k = 0; k < 20; k++) {
            bufs[k] = cmd_vault_create(c->now_ms++, n + k, NULL);
        }
        run_batch(c, bufs, 20);
    }
    unsigned victim = c->n;
    for (unsigned s = 0; s < N_SNAPS; s++) {
        t[s].vault = s % N_VAULTS;
        if (s == N_SNAPS / 3) {
            /*
             * Kill the leader once its followers hold five proposals but before
             * it learns they are committed: the new leader commits them, and
             * the retries must come back HBC_EEXIST, not commit twice.
             */
            struct proposal *last = NULL;
            for (unsigned k = 0; k < 5; k++) {
                t[s + k].vault = (s + k) % N_VAULTS;
                t[s + k].attempts++;
                last = propose(c, cmd_snapshot_commit(c->now_ms++, t[s + k].vault, s + k, 0));
            }
            struct stored_arg a = {.leader = raft_fixture_leader_index(&c->f),
                                   .index = last->req.index};
            assert_true(raft_fixture_step_until(&c->f, followers_stored, &a, 5000));
            assert_false(last->done);
            victim = kill_leader(c);
        }
        if (s == 2 * N_SNAPS / 3) {
            raft_fixture_revive(&c->f, victim);
            assert_true(raft_fixture_step_until(&c->f, all_caught_up, NULL, 60000));
            for (unsigned k = 0; k < 5; k++) {
                t[s + k].vault = (s + k) % N_VAULTS;
                t[s + k].attempts++;
                propose(c, cmd_snapshot_commit(c->now_ms++, t[s + k].vault, s + k, 0));
            }
            /* This time the leader dies before sending them: they are lost, and retried. */
            victim = kill_leader(c);
        }
        commit_snapshot(c, t, s);
    }
    /* A retried commit of an already committed id is a no-op with its code. */
    struct proposal *p = propose(c, cmd_snapshot_commit(c->now_ms++, t[7].vault, 7, 0));
    struct wait_set w = {.p = &p, .n = 1};
    assert_true(raft_fixture_step_until(&c->f, all_done, &w, 20000));
    assert_int_equal(p->status, 0);
    assert_int_equal(p->code, HBC_EEXIST);

    for (unsigned n = 0; n < N_TESTS; n += 20) {
        for (unsigned k = 0; k < 20; k++) {
            bufs[k] = cmd_restore_test(c->now_ms++, n + k, k % 7 != 0);
        }
        run_batch(c, bufs, 20);
    }
    for (unsigned n = 0; n < N_NODES; n += 20) {
        for (unsigned k = 0; k < 20; k++) {
            bufs[k] = cmd_node_update(c->now_ms++, n + k, "site-moved");
        }
        run_batch(c, bufs, 20);
    }
    for (unsigned n = 0; n < N_NODES / 2; n += 20) {
        for (unsigned k = 0; k < 20; k++) {
            bufs[k] = cmd_node_remove(c->now_ms++, n + k);
        }
        run_batch(c, bufs, 20);
    }
    raft_fixture_revive(&c->f, victim);
    check_cluster(c, t, N_SNAPS, N_VAULTS);

    /* Every snapshot was eventually committed; some took more than one attempt. */
    unsigned retried = 0;
    for (unsigned s = 0; s < N_SNAPS; s++) {
        assert_true(t[s].committed);
        retried += t[s].attempts > 1;
    }
    assert_true(retried > 0);
    unsigned landed_orphans = 0;
    for (unsigned s = 0; s < N_SNAPS; s++) {
        landed_orphans += !t[s].first_ok;
    }
    assert_int_equal(landed_orphans, 5);
    if (snapshot_threshold > 0) {
        /* The second victim missed far more than the retained log: it got a snapshot. */
        assert_true(fsm_stats(c->fsm[victim]).restores >= 1);
    }
    for (unsigned i = 0; i < c->n; i++) {
        assert_int_equal(count_nodes(c->fsm[i]), N_NODES / 2);
        assert_int_equal(count_vaults(c->fsm[i]), N_VAULTS);
        assert_int_equal(count_tests(c->fsm[i], NULL), N_TESTS);
    }
    free(t);
    cluster_stop(c);
}

static void test_cluster_3(void **state)
{
    (void)state;
    failover_workload(3, 0);
}

static void test_cluster_5(void **state)
{
    (void)state;
    failover_workload(5, 64);
}

/*
 * libraft calls apply with last_applied at index - 1: the index each
 * acknowledged command was stored under equals the index raft_apply gave it.
 */
static void test_apply_index_matches_raft(void **state)
{
    (void)state;
    struct cluster *c = cluster_start(3);
    struct raft_buffer bufs[8];
    for (unsigned n = 0; n < 8; n++) {
        bufs[n] = cmd_vault_create(c->now_ms++, n, NULL);
    }
    run_batch(c, bufs, 8);
    assert_true(raft_fixture_step_until(&c->f, all_caught_up, NULL, 60000));
    for (size_t k = 0; k < c->n_props; k++) {
        Hbc__VaultInfo *v = NULL;
        char name[32];
        snprintf(name, sizeof name, "vault-%zu", k);
        assert_int_equal(fsm_find_vault(c->fsm[2], name, &v, NULL), 0);
        assert_int_equal(v->created_index, c->props[k].req.index);
        fsm_record_free(v);
    }
    for (unsigned i = 0; i < c->n; i++) {
        assert_int_equal(fsm_applied_index(c->fsm[i]), c->props[c->n_props - 1].req.index);
    }
    cluster_stop(c);
}

struct change {
    struct raft_change req; /* libraft request */
    bool done;              /* callback fired */
    int status;             /* its status */
};

static void change_cb(struct raft_change *req, int status)
{
    struct change *ch = req->data;
    ch->done = true;
    ch->status = status;
}

static bool change_done(struct raft_fixture *f, void *arg)
{
    (void)f;
    return ((struct change *)arg)->done;
}

/*
 * With a low snapshot threshold, a follower that was down while the log was
 * compacted, and a brand-new server, both catch up through InstallSnapshot
 * and end byte-identical.
 */
static void test_snapshot_install(void **state)
{
    (void)state;
    struct cluster *c = cluster_start(3);
    for (unsigned i = 0; i < c->n; i++) {
        raft_set_snapshot_threshold(raft_fixture_get(&c->f, i), 16);
        raft_set_snapshot_trailing(raft_fixture_get(&c->f, i), 4);
    }
    unsigned leader = raft_fixture_leader_index(&c->f);
    unsigned lagging = (leader + 1) % c->n;
    raft_fixture_kill(&c->f, lagging);

    struct raft_buffer bufs[20];
    for (unsigned n = 0; n < 40; n += 20) {
        for (unsigned k = 0; k < 20; k++) {
            bufs[k] = cmd_vault_create(c->now_ms++, n + k, NULL);
        }
        run_batch(c, bufs, 20);
    }
    for (unsigned n = 0; n < 120; n += 20) {
        for (unsigned k = 0; k < 20; k++) {
            bufs[k] = cmd_snapshot_commit(c->now_ms++, (n + k) % 40, n + k, 0);
        }
        run_batch(c, bufs, 20);
    }
    assert_int_equal(fsm_stats(c->fsm[lagging]).applied, 0);
    raft_fixture_revive(&c->f, lagging);
    assert_true(raft_fixture_step_until(&c->f, all_caught_up, NULL, 60000));
    assert_true(fsm_stats(c->fsm[lagging]).restores >= 1);
    assert_true(fsm_stats(c->fsm[leader]).snapshots >= 1);

    /* A new server joins as a voter and gets the state the same way. */
    unsigned fresh = c->n;
    cluster_add_server(c);
    struct raft *r_new = raft_fixture_get(&c->f, fresh);
    raft_set_snapshot_threshold(r_new, 16);
    raft_set_snapshot_trailing(r_new, 4);
    assert_int_equal(raft_start(r_new), 0);
    leader = raft_fixture_leader_index(&c->f);
    struct raft *r_leader = raft_fixture_get(&c->f, leader);
    struct change ch = {.req.data = &ch};
    char address[16];
    snprintf(address, sizeof address, "%u", fresh + 1);
    assert_int_equal(raft_add(r_leader, &ch.req, fresh + 1, address, change_cb), 0);
    assert_true(raft_fixture_step_until(&c->f, change_done, &ch, 20000));
    assert_int_equal(ch.status, 0);
    ch.done = false;
    assert_int_equal(raft_assign(r_leader, &ch.req, fresh + 1, RAFT_VOTER, change_cb), 0);
    assert_true(raft_fixture_step_until(&c->f, change_done, &ch, 60000));
    assert_int_equal(ch.status, 0);
    for (unsigned k = 0; k < 10; k++) {
        bufs[k] = cmd_restore_test(c->now_ms++, k, true);
    }
    run_batch(c, bufs, 10);

    assert_true(raft_fixture_step_until(&c->f, all_caught_up, NULL, 60000));
    assert_true(fsm_stats(c->fsm[fresh]).restores >= 1);
    uint8_t d0[FSM_DIGEST_LEN];
    digest_of(c->fsm[leader], d0);
    for (unsigned i = 0; i < c->n; i++) {
        uint8_t di[FSM_DIGEST_LEN];
        digest_of(c->fsm[i], di);
        assert_memory_equal(d0, di, FSM_DIGEST_LEN);
        assert_int_equal(count_vaults(c->fsm[i]), 40);
        assert_int_equal(count_tests(c->fsm[i], NULL), 10);
    }
    cluster_stop(c);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_commands, one_setup, one_teardown),
        cmocka_unit_test_setup_teardown(test_restore_test_idempotent, one_setup, one_teardown),
        cmocka_unit_test_setup_teardown(test_leader_time, one_setup, one_teardown),
        cmocka_unit_test_setup_teardown(test_replay_after_reopen, one_setup, one_teardown),
        cmocka_unit_test(test_digest_determinism),
        cmocka_unit_test_setup_teardown(test_snapshot_restore, one_setup, one_teardown),
        cmocka_unit_test_setup_teardown(test_restore_corrupt, one_setup, one_teardown),
        cmocka_unit_test_setup_teardown(test_open_locked, one_setup, one_teardown),
        cmocka_unit_test_setup_teardown(test_apply_needs_raft, one_setup, one_teardown),
        cmocka_unit_test_setup_teardown(test_apply_alloc_fault, one_setup, one_teardown),
        cmocka_unit_test(test_apply_index_matches_raft),
        cmocka_unit_test(test_cluster_3),
        cmocka_unit_test(test_cluster_5),
        cmocka_unit_test(test_snapshot_install),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
