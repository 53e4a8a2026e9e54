/*
 * Unit tests for node/raft_node: a real one-node Raft group (libraft, our TLS
 * transport, the RocksDB state machine) on one loop over 127.0.0.1, and a node
 * that is not a member of any group. Certificates come from scripts/dev-ca
 * (found through HBC_SOURCE_DIR) in a temporary directory.
 */
#include <ftw.h>
#include <netinet/in.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "tests/unit/test_util.h"
#include <uv.h>

#include "common/alloc.h"
#include "common/log.h"
#include "common/tls.h"
#include "node/config.h"
#include "node/fsm.h"
#include "node/raft_node.h"

static char tmp_dir[256]; /* ca/ (the cluster CA and node certificates) and one folder per node */

static int group_setup(void **state)
{
    (void)state;
    signal(SIGPIPE, SIG_IGN);
    const char *src = getenv("HBC_SOURCE_DIR");
    if (src == NULL) {
        fprintf(stderr, "HBC_SOURCE_DIR is not set (meson test sets it)\n");
        return -1;
    }
    const char *tmp = getenv("TMPDIR") != NULL ? getenv("TMPDIR") : "/tmp";
    snprintf(tmp_dir, sizeof tmp_dir, "%s/hbc-test-raftnode-XXXXXX", tmp);
    if (mkdtemp(tmp_dir) == NULL) {
        return -1;
    }
    sh("'%s/scripts/dev-ca' '%s/ca' init >/dev/null", src, tmp_dir);
    sh("'%s/scripts/dev-ca' '%s/ca' node n1 127.0.0.1 >/dev/null", src, tmp_dir);
    sh("'%s/scripts/dev-ca' '%s/ca' node n2 127.0.0.1 >/dev/null", src, tmp_dir);
    sh("'%s/scripts/dev-ca' '%s/ca' node n3 127.0.0.1 >/dev/null", src, tmp_dir);
    if (getenv("HBC_TEST_VERBOSE") == NULL) {
        log_level_current = LOG_ERROR;
    }
    return 0;
}

static int group_teardown(void **state)
{
    (void)state;
    if (tmp_dir[0] != '\0') {
        sh("rm -rf '%s'", tmp_dir);
    }
    return 0;
}

/* A TCP port on 127.0.0.1 that nothing listens on right now. */
static int free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(fd >= 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = 0};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(bind(fd, (struct sockaddr *)&sa, sizeof sa), 0);
    socklen_t len = sizeof sa;
    assert_int_equal(getsockname(fd, (struct sockaddr *)&sa, &len), 0);
    close(fd);
    return ntohs(sa.sin_port);
}

#define RUN_UNTIL(loop, cond)                                                                      \
    do {                                                                                           \
        while (!(cond)) {                                                                          \
            if (uv_run((loop), UV_RUN_ONCE) == 0 && !(cond)) {                                     \
                fail_msg("loop ran dry before: %s", #cond);                                        \
            }                                                                                      \
        }                                                                                          \
    } while (0)

/* One node: its configuration, TLS context, state machine and Raft. */
struct test_node {
    struct node_config cfg; /* strings point into the buffers below */
    char dir[512];          /* data_dir */
    char listen[32];        /* data-plane address (only recorded, nothing listens) */
    char raft_listen[32];   /* Raft address */
    char name[8];           /* node id */
    struct tls_ctx *tls;    /* its certificate */
    struct fsm *fsm;        /* its state */
    struct raft_node *rn;   /* its Raft */
    bool stopped;           /* raft_node_stop's callback ran */
};

static void node_start(uv_loop_t *loop, struct test_node *n, const char *name, bool bootstrap)
{
    memset(n, 0, sizeof *n);
    snprintf(n->name, sizeof n->name, "%s", name);
    snprintf(n->dir, sizeof n->dir, "%s/%s", tmp_dir, name);
    assert_int_equal(mkdir(n->dir, 0700), 0);
    snprintf(n->listen, sizeof n->listen, "127.0.0.1:%d", free_port());
    snprintf(n->raft_listen, sizeof n->raft_listen, "127.0.0.1:%d", free_port());
    n->cfg.node_id = n->name;
    n->cfg.data_dir = n->dir;
    n->cfg.site = "site-a";
    n->cfg.region = "region-1";
    n->cfg.media = "ssd";
    n->cfg.capacity = 1 << 30;
    n->cfg.listen = n->listen;
    n->cfg.raft_listen = n->raft_listen;
    n->cfg.raft_bootstrap = bootstrap;
    n->cfg.election_timeout = 150;
    n->cfg.heartbeat_timeout = 30;
    n->cfg.snapshot_threshold = 1024;
    n->cfg.snapshot_trailing = 128;
    n->cfg.max_voters = 5;
    n->cfg.raft_segment_size = 1 << 20;

    char ca[512], cert[512], key[512], meta[600];
    snprintf(ca, sizeof ca, "%s/ca/ca.crt", tmp_dir);
    snprintf(cert, sizeof cert, "%s/ca/%s.crt", tmp_dir, name);
    snprintf(key, sizeof key, "%s/ca/%s.key", tmp_dir, name);
    struct tls_ctx_opts o = {.ca_file = ca, .cert_file = cert, .key_file = key};
    struct err e;
    if (tls_ctx_new(&o, &n->tls, &e) != 0) {
        fail_msg("tls_ctx_new: %s", e.msg);
    }
    snprintf(meta, sizeof meta, "%s/meta", n->dir);
    if (fsm_open(meta, &n->fsm, &e) != 0) {
        fail_msg("fsm_open: %s", e.msg);
    }
    if (raft_node_start(loop, &n->cfg, n->tls, n->fsm, &n->rn, &e) != 0) {
        fail_msg("raft_node_start: %s", e.msg);
    }
}

static void stopped_cb(void *arg)
{
    struct test_node *n = arg;
    n->stopped = true;
}

static void node_stop(uv_loop_t *loop, struct test_node *n)
{
    raft_node_stop(n->rn, stopped_cb, n);
    RUN_UNTIL(loop, n->stopped);
    fsm_close(n->fsm);
    tls_ctx_free(n->tls);
}

static void finish_loop(uv_loop_t *loop)
{
    uv_run(loop, UV_RUN_DEFAULT);
    int rc = uv_loop_close(loop);
    if (rc != 0) {
        uv_print_all_handles(loop, stderr);
    }
    assert_int_equal(rc, 0);
}

/* What a raft_node_cb reported. */
struct outcome {
    bool done;            /* it fired */
    int code;             /* its code */
    uint64_t index;       /* its index */
    uint64_t fsm_applied; /* the state machine's applied index when it fired */
    struct fsm *fsm;      /* to read that from */
    char msg[256];        /* its message */
};

static void outcome_cb(void *arg, int code, uint64_t index, const char *msg)
{
    struct outcome *o = arg;
    (void)msg;
    o->done = true;
    o->code = code;
    o->index = index;
    o->fsm_applied = fsm_applied_index(o->fsm);
    snprintf(o->msg, sizeof o->msg, "%s", msg);
}

/*
 * A proposal made with a command that belongs to a received frame: the
 * command must come back as it was (its proposer string is the frame's to
 * free), and the callback must name the entry's own Raft index, which is
 * where the state machine recorded it.
 */
static void test_propose_keeps_the_command_and_reports_its_index(void **state)
{
    (void)state;
    uv_loop_t loop;
    uv_loop_init(&loop);
    struct test_node n;
    node_start(&loop, &n, "n1", true);
    RUN_UNTIL(&loop, raft_node_is_leader(n.rn));

    uint8_t vault_id[16] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16};
    char callers_proposer[] = "set by the caller";
    Hbc__VaultCreate vc = HBC__VAULT_CREATE__INIT;
    vc.vault_id = (ProtobufCBinaryData){16, vault_id};
    vc.name = "v";
    vc.copies = 1;
    vc.k = 4;
    vc.m = 2;
    Hbc__Command cmd = HBC__COMMAND__INIT;
    cmd.cmd_case = HBC__COMMAND__CMD_VAULT_CREATE;
    cmd.vault_create = &vc;
    cmd.leader_time_ms = 7;
    cmd.proposer = callers_proposer;
    struct outcome o = {.fsm = n.fsm};
    struct err e;
    assert_int_equal(raft_node_propose(n.rn, &cmd, "CN=alice,OU=admin", outcome_cb, &o, &e), 0);
    assert_ptr_equal(cmd.proposer, callers_proposer);
    assert_int_equal(cmd.leader_time_ms, 7);
    RUN_UNTIL(&loop, o.done);
    assert_int_equal(o.code, 0);
    assert_true(o.index > 0);
    assert_int_equal(o.index, o.fsm_applied);
    Hbc__VaultInfo *v = NULL;
    assert_int_equal(fsm_get_vault(n.fsm, vault_id, &v, &e), 0);
    assert_int_equal(v->created_index, o.index);
    assert_string_equal(v->created_by, "CN=alice,OU=admin");
    fsm_record_free(v);

    /* The same again: refused as existing, still at its own index. */
    struct outcome again = {.fsm = n.fsm};
    assert_int_equal(raft_node_propose(n.rn, &cmd, "CN=alice,OU=admin", outcome_cb, &again, &e), 0);
    RUN_UNTIL(&loop, again.done);
    assert_int_equal(again.code, HBC_EEXIST);
    assert_int_equal(again.index, again.fsm_applied);
    assert_true(again.index > o.index);

    node_stop(&loop, &n);
    finish_loop(&loop);
}

static uint64_t wall_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/*
 * The leader starts the compliance clock by itself (a ClockTick from its
 * timer), and a refusal's reply carries the reason the state machine recorded.
 */
static void test_leader_ticks_and_refusals_carry_reasons(void **state)
{
    (void)state;
    uv_loop_t loop;
    uv_loop_init(&loop);
    struct test_node n;
    uint64_t before = wall_now_ms();
    node_start(&loop, &n, "n3", true);
    RUN_UNTIL(&loop, fsm_compliance_clock_ms(n.fsm) != 0);
    uint64_t clock = fsm_compliance_clock_ms(n.fsm);
    assert_true(clock >= before);
    assert_true(clock <= wall_now_ms());

    /* A client's tick is refused by the state machine: only the leader itself ticks. */
    Hbc__ClockTick t = HBC__CLOCK_TICK__INIT;
    t.wall_ms = clock + 365ull * 86400000;
    t.elapsed_ms = 365ull * 86400000;
    Hbc__Command cmd = HBC__COMMAND__INIT;
    cmd.cmd_case = HBC__COMMAND__CMD_CLOCK_TICK;
    cmd.clock_tick = &t;
    struct outcome o = {.fsm = n.fsm};
    struct err e;
    assert_int_equal(raft_node_propose(n.rn, &cmd, "CN=mallory,OU=admin", outcome_cb, &o, &e), 0);
    RUN_UNTIL(&loop, o.done);
    assert_int_equal(o.code, HBC_EDENIED);
    assert_non_null(strstr(o.msg, "only the leader itself proposes clock ticks"));
    assert_true(fsm_compliance_clock_ms(n.fsm) < t.wall_ms);

    /* Forgetting without a role: refused, with the reason. */
    uint8_t sid[16] = {9};
    Hbc__SnapshotForget f = HBC__SNAPSHOT_FORGET__INIT;
    f.snapshot_id = (ProtobufCBinaryData){16, sid};
    cmd.cmd_case = HBC__COMMAND__CMD_SNAPSHOT_FORGET;
    cmd.snapshot_forget = &f;
    struct outcome o2 = {.fsm = n.fsm};
    assert_int_equal(raft_node_propose(n.rn, &cmd, "CN=bob,OU=backup", outcome_cb, &o2, &e), 0);
    RUN_UNTIL(&loop, o2.done);
    assert_int_equal(o2.code, HBC_EDENIED);
    assert_non_null(strstr(o2.msg, "needs an admin or backup role"));

    node_stop(&loop, &n);
    finish_loop(&loop);
}

/* A node in no Raft configuration yet (never bootstrapped or admitted) reports its status. */
static void test_status_without_configuration(void **state)
{
    (void)state;
    uv_loop_t loop;
    uv_loop_init(&loop);
    struct test_node n;
    node_start(&loop, &n, "n2", false);
    assert_false(raft_node_is_member(n.rn));
    for (int i = 0; i < 3; i++) {
        Hbc__ClusterStatusReply r;
        struct err e;
        assert_int_equal(raft_node_status(n.rn, &r, &e), 0);
        assert_int_equal(r.n_members, 0);
        assert_string_equal(r.node_id, "n2");
        assert_false(r.has_leader_raft_id);
        assert_int_equal(r.state_digest.len, FSM_DIGEST_LEN);
        raft_node_status_free(&r); /* under LeakSanitizer: nothing may be left */
        uv_run(&loop, UV_RUN_NOWAIT);
    }
    node_stop(&loop, &n);
    finish_loop(&loop);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_propose_keeps_the_command_and_reports_its_index),
        cmocka_unit_test(test_status_without_configuration),
        cmocka_unit_test(test_leader_ticks_and_refusals_carry_reasons),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
