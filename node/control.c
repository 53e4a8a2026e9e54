/*
 * Control-plane requests on the data-plane port: proposals, joins and
 * removals (leader only; followers redirect), cluster status, and metadata
 * reads (optionally current: a Raft barrier on the leader first).
 *
 * Authorisation for now: a join must come from the joining node's own
 * certificate (OU=node, CN = the node id); removing a node needs OU=admin or
 * a node certificate; other commands need any certificate of the cluster CA.
 * The full role matrix arrives with the access-control issue.
 */
#include "node/control.h"

#include <stdio.h>
#include <string.h>

#include "common/alloc.h"
#include "common/log.h"
#include "node/fsm_placement.h"
#include "node/member_check.h"

/* A request waiting for Raft. */
struct pending {
    struct raft_node *rn;   /* the node */
    uint64_t request_id;    /* to answer */
    control_reply_fn reply; /* how */
    void *ctx;              /* its context */
    Hbc__Frame *frame;      /* a deep copy of the request (reads after a barrier) */
};

bool control_is_request(const Hbc__Frame *f)
{
    switch (f->body_case) {
    case HBC__FRAME__BODY_PROPOSE:
    case HBC__FRAME__BODY_JOIN:
    case HBC__FRAME__BODY_REMOVE:
    case HBC__FRAME__BODY_CLUSTER_STATUS:
    case HBC__FRAME__BODY_LIST_SNAPSHOTS:
    case HBC__FRAME__BODY_LIST_VAULTS:
    case HBC__FRAME__BODY_LIST_RESTORE_TESTS:
    case HBC__FRAME__BODY_LIST_APPROVALS:
    case HBC__FRAME__BODY_PLACEMENT_MAP:
        return true;
    default:
        return false;
    }
}

static void reply_propose(struct raft_node *rn, uint64_t request_id, int code, uint64_t index,
                          const char *msg, control_reply_fn reply, void *ctx)
{
    Hbc__Frame f = HBC__FRAME__INIT;
    Hbc__ProposeReply pr = HBC__PROPOSE_REPLY__INIT;
    f.request_id = request_id;
    f.body_case = HBC__FRAME__BODY_PROPOSE_REPLY;
    f.propose_reply = &pr;
    pr.code = code;
    pr.message = (char *)msg;
    if (index != 0) {
        pr.has_index = true;
        pr.index = index;
    }
    if (code == HBC_ENOTLEADER && rn != NULL) {
        pr.leader_address = (char *)raft_node_leader_data_address(rn);
    }
    reply(ctx, &f);
}

static void pending_done_cb(void *arg, int code, uint64_t index, const char *msg)
{
    struct pending *p = arg;
    reply_propose(p->rn, p->request_id, code, index, msg, p->reply, p->ctx);
    hbc_free(p);
}

static struct pending *pending_new(struct raft_node *rn, const Hbc__Frame *f,
                                   control_reply_fn reply, void *ctx)
{
    struct pending *p = hbc_calloc(1, sizeof *p);
    if (p != NULL) {
        p->rn = rn;
        p->request_id = f->request_id;
        p->reply = reply;
        p->ctx = ctx;
    }
    return p;
}

/* A deep copy of any message, through its wire form. */
static void *msg_dup(const ProtobufCMessage *m)
{
    size_t len = protobuf_c_message_get_packed_size(m);
    uint8_t *buf = hbc_malloc(len);
    if (buf == NULL) {
        return NULL;
    }
    protobuf_c_message_pack(m, buf);
    void *copy = protobuf_c_message_unpack(m->descriptor, NULL, len, buf);
    hbc_free(buf);
    return copy;
}

/* A growing array of copied records. */
struct collect {
    void **items; /* copies, owned */
    size_t n;     /* count */
    size_t cap;   /* room */
    int rv;       /* first failure */
};

static int collect_add(struct collect *c, const ProtobufCMessage *m)
{
    if (c->n == c->cap) {
        size_t cap = c->cap == 0 ? 64 : c->cap * 2;
        void **p = hbc_realloc(c->items, cap * sizeof *p);
        if (p == NULL) {
            c->rv = HBC_ENOMEM;
            return 1;
        }
        c->items = p;
        c->cap = cap;
    }
    void *copy = msg_dup(m);
    if (copy == NULL) {
        c->rv = HBC_ENOMEM;
        return 1;
    }
    c->items[c->n++] = copy;
    return 0;
}

static void collect_free(struct collect *c)
{
    for (size_t i = 0; i < c->n; i++) {
        protobuf_c_message_free_unpacked(c->items[i], NULL);
    }
    hbc_free(c->items);
}

static int snap_cb(const Hbc__SnapshotInfo *s, void *arg)
{
    return collect_add(arg, &s->base);
}

static int vault_cb(const Hbc__VaultInfo *v, void *arg)
{
    return collect_add(arg, &v->base);
}

/* Restore tests of one vault (vault_id) or of all (NULL). */
struct restore_filter {
    struct collect *c;       /* where they go */
    const uint8_t *vault_id; /* FSM_ID_LEN bytes, or NULL */
};

static int restore_cb(const Hbc__RestoreTestInfo *t, void *arg)
{
    struct restore_filter *rf = arg;
    if (rf->vault_id != NULL && (t->vault_id.len != FSM_ID_LEN ||
                                 memcmp(t->vault_id.data, rf->vault_id, FSM_ID_LEN) != 0)) {
        return 0;
    }
    return collect_add(rf->c, &t->base);
}

/* Approval requests, all or only the pending ones. */
struct approval_filter {
    struct collect *c; /* where they go */
    bool pending_only; /* leave out the done ones */
};

static int approval_cb(const Hbc__ApprovalInfo *a, void *arg)
{
    struct approval_filter *af = arg;
    if (af->pending_only && a->state != HBC__APPROVAL_STATE__APPROVAL_PENDING) {
        return 0;
    }
    return collect_add(af->c, &a->base);
}

static void reply_error(uint64_t request_id, int code, const char *msg, control_reply_fn reply,
                        void *ctx)
{
    Hbc__Frame f = HBC__FRAME__INIT;
    Hbc__Error err = HBC__ERROR__INIT;
    f.request_id = request_id;
    f.body_case = HBC__FRAME__BODY_ERROR;
    f.error = &err;
    err.code =
        code == HBC_ENOMEM ? HBC__ERROR_CODE__ERROR_INTERNAL : HBC__ERROR_CODE__ERROR_BAD_REQUEST;
    err.message = (char *)msg;
    reply(ctx, &f);
}

/* Answer a read from this node's applied state. */
static void answer_read(struct raft_node *rn, const Hbc__Frame *f, control_reply_fn reply,
                        void *ctx)
{
    struct fsm *fsm = raft_node_fsm(rn);
    struct collect c = {0};
    struct err e;
    err_clear(&e);
    Hbc__Frame out = HBC__FRAME__INIT;
    out.request_id = f->request_id;
    int rv = 0;
    if (f->body_case == HBC__FRAME__BODY_LIST_SNAPSHOTS) {
        Hbc__ListSnapshotsRequest *q = f->list_snapshots;
        if (q->has_vault_id) {
            if (q->vault_id.len != FSM_ID_LEN) {
                reply_error(f->request_id, HBC_EINVAL, "list snapshots: a vault id has 16 bytes",
                            reply, ctx);
                return;
            }
            rv = fsm_list_snapshots(fsm, q->vault_id.data, snap_cb, &c, &e);
        } else {
            struct collect vaults = {0};
            rv = fsm_list_vaults(fsm, vault_cb, &vaults, &e);
            for (size_t i = 0; rv == 0 && i < vaults.n; i++) {
                Hbc__VaultInfo *v = vaults.items[i];
                rv = fsm_list_snapshots(fsm, v->vault_id.data, snap_cb, &c, &e);
            }
            collect_free(&vaults);
        }
        Hbc__ListSnapshotsReply r = HBC__LIST_SNAPSHOTS_REPLY__INIT;
        r.snapshots = (Hbc__SnapshotInfo **)c.items;
        r.n_snapshots = c.n;
        r.applied_index = fsm_applied_index(fsm);
        out.body_case = HBC__FRAME__BODY_LIST_SNAPSHOTS_REPLY;
        out.list_snapshots_reply = &r;
        if (rv == 0 && c.rv == 0) {
            reply(ctx, &out);
        }
    } else if (f->body_case == HBC__FRAME__BODY_PLACEMENT_MAP) {
        Hbc__PlacementMapRequest *q = f->placement_map;
        if (q->has_vault_id && q->vault_id.len != FSM_ID_LEN) {
            reply_error(f->request_id, HBC_EINVAL, "placement map: a vault id has 16 bytes", reply,
                        ctx);
            return;
        }
        Hbc__PlacementMapReply r;
        rv = fsm_placement_map(fsm, q->has_vault_id ? q->vault_id.data : NULL, &r, &e);
        if (rv == 0) {
            out.body_case = HBC__FRAME__BODY_PLACEMENT_MAP_REPLY;
            out.placement_map_reply = &r;
            reply(ctx, &out);
            fsm_placement_map_free(&r);
        }
    } else if (f->body_case == HBC__FRAME__BODY_LIST_RESTORE_TESTS) {
        Hbc__ListRestoreTestsRequest *q = f->list_restore_tests;
        if (q->has_vault_id && q->vault_id.len != FSM_ID_LEN) {
            reply_error(f->request_id, HBC_EINVAL, "list restore tests: a vault id has 16 bytes",
                        reply, ctx);
            return;
        }
        struct restore_filter rf = {.c = &c, .vault_id = q->has_vault_id ? q->vault_id.data : NULL};
        rv = fsm_list_restore_tests(fsm, NULL, restore_cb, &rf, &e);
        Hbc__ListRestoreTestsReply r = HBC__LIST_RESTORE_TESTS_REPLY__INIT;
        r.tests = (Hbc__RestoreTestInfo **)c.items;
        r.n_tests = c.n;
        r.applied_index = fsm_applied_index(fsm);
        out.body_case = HBC__FRAME__BODY_LIST_RESTORE_TESTS_REPLY;
        out.list_restore_tests_reply = &r;
        if (rv == 0 && c.rv == 0) {
            reply(ctx, &out);
        }
    } else if (f->body_case == HBC__FRAME__BODY_LIST_APPROVALS) {
        Hbc__ListApprovalsRequest *q = f->list_approvals;
        struct approval_filter af = {.c = &c,
                                     .pending_only = q->has_pending_only && q->pending_only};
        rv = fsm_list_approvals(fsm, approval_cb, &af, &e);
        Hbc__ListApprovalsReply r = HBC__LIST_APPROVALS_REPLY__INIT;
        r.approvals = (Hbc__ApprovalInfo **)c.items;
        r.n_approvals = c.n;
        r.applied_index = fsm_applied_index(fsm);
        r.has_compliance_clock_ms = true;
        r.compliance_clock_ms = fsm_compliance_clock_ms(fsm);
        out.body_case = HBC__FRAME__BODY_LIST_APPROVALS_REPLY;
        out.list_approvals_reply = &r;
        if (rv == 0 && c.rv == 0) {
            reply(ctx, &out);
        }
    } else {
        rv = fsm_list_vaults(fsm, vault_cb, &c, &e);
        Hbc__ListVaultsReply r = HBC__LIST_VAULTS_REPLY__INIT;
        r.vaults = (Hbc__VaultInfo **)c.items;
        r.n_vaults = c.n;
        r.applied_index = fsm_applied_index(fsm);
        out.body_case = HBC__FRAME__BODY_LIST_VAULTS_REPLY;
        out.list_vaults_reply = &r;
        if (rv == 0 && c.rv == 0) {
            reply(ctx, &out);
        }
    }
    if (rv != 0 || c.rv != 0) {
        char msg[300];
        snprintf(msg, sizeof msg, "read metadata: %.280s", rv != 0 ? e.msg : "out of memory");
        reply_error(f->request_id, rv != 0 ? rv : c.rv, msg, reply, ctx);
    }
    collect_free(&c);
}

static void read_barrier_cb(void *arg, int code, uint64_t index, const char *msg)
{
    struct pending *p = arg;
    (void)index;
    if (code != 0) {
        reply_propose(p->rn, p->request_id, code, 0, msg, p->reply, p->ctx);
    } else {
        answer_read(p->rn, p->frame, p->reply, p->ctx);
    }
    protobuf_c_message_free_unpacked(&p->frame->base, NULL);
    hbc_free(p);
}

static void handle_read(struct raft_node *rn, const Hbc__Frame *f, control_reply_fn reply,
                        void *ctx)
{
    bool current = false;
    if (f->body_case == HBC__FRAME__BODY_LIST_SNAPSHOTS) {
        current = f->list_snapshots->has_current && f->list_snapshots->current;
    } else if (f->body_case == HBC__FRAME__BODY_LIST_RESTORE_TESTS) {
        current = f->list_restore_tests->has_current && f->list_restore_tests->current;
    } else if (f->body_case == HBC__FRAME__BODY_LIST_APPROVALS) {
        current = f->list_approvals->has_current && f->list_approvals->current;
    } else if (f->body_case == HBC__FRAME__BODY_PLACEMENT_MAP) {
        current = f->placement_map->has_current && f->placement_map->current;
    } else {
        current = f->list_vaults->has_current && f->list_vaults->current;
    }
    if (!current) {
        answer_read(rn, f, reply, ctx);
        return;
    }
    struct pending *p = pending_new(rn, f, reply, ctx);
    if (p == NULL || (p->frame = msg_dup(&f->base)) == NULL) {
        hbc_free(p);
        reply_error(f->request_id, HBC_ENOMEM, "read: out of memory", reply, ctx);
        return;
    }
    struct err e;
    int rv = raft_node_barrier(rn, read_barrier_cb, p, &e);
    if (rv != 0) {
        protobuf_c_message_free_unpacked(&p->frame->base, NULL);
        hbc_free(p);
        reply_propose(rn, f->request_id, rv, 0, e.msg, reply, ctx);
    }
}

void control_handle(struct raft_node *rn, const Hbc__Frame *f, const struct control_peer *peer,
                    control_reply_fn reply, void *ctx)
{
    if (rn == NULL) {
        reply_propose(NULL, f->request_id, HBC_EUNAVAILABLE, 0,
                      "this node runs no metadata plane (raft.listen is not set)", reply, ctx);
        return;
    }
    struct err e;
    err_clear(&e);
    int rv = 0;
    switch (f->body_case) {
    case HBC__FRAME__BODY_CLUSTER_STATUS: {
        Hbc__Frame out = HBC__FRAME__INIT;
        Hbc__ClusterStatusReply st;
        out.request_id = f->request_id;
        out.body_case = HBC__FRAME__BODY_CLUSTER_STATUS_REPLY;
        out.cluster_status_reply = &st;
        rv = raft_node_status(rn, &st, &e);
        if (rv != 0) {
            reply_error(f->request_id, rv, e.msg, reply, ctx);
            return;
        }
        reply(ctx, &out);
        raft_node_status_free(&st);
        return;
    }
    case HBC__FRAME__BODY_LIST_SNAPSHOTS:
    case HBC__FRAME__BODY_LIST_VAULTS:
    case HBC__FRAME__BODY_LIST_RESTORE_TESTS:
    case HBC__FRAME__BODY_LIST_APPROVALS:
    case HBC__FRAME__BODY_PLACEMENT_MAP:
        handle_read(rn, f, reply, ctx);
        return;
    case HBC__FRAME__BODY_PROPOSE: {
        Hbc__Command *cmd = f->propose->command;
        if (cmd->cmd_case == HBC__COMMAND__CMD_NODE_JOIN ||
            cmd->cmd_case == HBC__COMMAND__CMD_NODE_REMOVE ||
            cmd->cmd_case == HBC__COMMAND__CMD_NODE_UPDATE) {
            if (!peer->is_node && !peer->is_admin) {
                hbc_log(LOG_WARN,
                        "event=refused subject=\"%s\" reason=\"node commands need a node or admin "
                        "certificate\"",
                        peer->subject);
                reply_propose(rn, f->request_id, HBC_EDENIED, 0,
                              "node membership commands need a node or admin certificate", reply,
                              ctx);
                return;
            }
        }
        if (cmd->cmd_case == HBC__COMMAND__CMD_PLACEMENT_GROUP_DONE &&
            (!peer->is_node || strcmp(peer->cn, cmd->placement_group_done->node_id) != 0)) {
            reply_propose(rn, f->request_id, HBC_EDENIED, 0,
                          "placement group done comes only from that node's own certificate", reply,
                          ctx);
            return;
        }
        if (cmd->cmd_case == HBC__COMMAND__CMD_CLOCK_TICK) {
            /* The state machine refuses them too (proposer is not the leader itself). */
            hbc_log(LOG_WARN, "event=refused subject=\"%s\" reason=\"client clock tick\"",
                    peer->subject);
            reply_propose(rn, f->request_id, HBC_EDENIED, 0,
                          "clock ticks come only from the leader itself", reply, ctx);
            return;
        }
        struct pending *p = pending_new(rn, f, reply, ctx);
        if (p == NULL) {
            reply_propose(rn, f->request_id, HBC_ENOMEM, 0, "out of memory", reply, ctx);
            return;
        }
        rv = raft_node_propose(rn, cmd, peer->subject, pending_done_cb, p, &e);
        if (rv != 0) {
            hbc_free(p);
            reply_propose(rn, f->request_id, rv, 0, e.msg, reply, ctx);
        }
        return;
    }
    case HBC__FRAME__BODY_JOIN: {
        const Hbc__NodeJoin *nj = f->join->node;
        if (!peer->is_node || strcmp(peer->cn, nj->node_id) != 0) {
            char msg[200];
            snprintf(msg, sizeof msg,
                     "a join must come from the joining node's own certificate (CN=%.64s, OU=node)",
                     nj->node_id);
            hbc_log(LOG_WARN, "event=refused subject=\"%s\" reason=\"%s\"", peer->subject, msg);
            reply_propose(rn, f->request_id, HBC_EDENIED, 0, msg, reply, ctx);
            return;
        }
        struct pending *p = pending_new(rn, f, reply, ctx);
        if (p == NULL) {
            reply_propose(rn, f->request_id, HBC_ENOMEM, 0, "out of memory", reply, ctx);
            return;
        }
        if (f->join->has_member_check && f->join->member_check) {
            rv = member_check_answer(rn, nj, peer->subject, pending_done_cb, p, &e);
        } else {
            rv = raft_node_join(rn, nj, peer->subject, pending_done_cb, p, &e);
        }
        if (rv != 0) {
            hbc_free(p);
            reply_propose(rn, f->request_id, rv, 0, e.msg, reply, ctx);
        }
        return;
    }
    case HBC__FRAME__BODY_REMOVE: {
        if (!peer->is_admin && !peer->is_node) {
            reply_propose(rn, f->request_id, HBC_EDENIED, 0,
                          "removing a node needs an admin certificate", reply, ctx);
            return;
        }
        if (!(f->remove->has_force && f->remove->force)) {
            rv = fsm_placement_removable(raft_node_fsm(rn), f->remove->node_id, &e);
            if (rv == HBC_ENOTDRAINED) {
                hbc_log(LOG_WARN, "event=remove_refused node=%s reason=\"%s\"", f->remove->node_id,
                        e.msg);
                reply_propose(rn, f->request_id, rv, 0, e.msg, reply, ctx);
                return;
            }
        } else {
            hbc_log(LOG_WARN, "event=remove_forced node=%s subject=\"%s\"", f->remove->node_id,
                    peer->subject);
        }
        struct pending *p = pending_new(rn, f, reply, ctx);
        if (p == NULL) {
            reply_propose(rn, f->request_id, HBC_ENOMEM, 0, "out of memory", reply, ctx);
            return;
        }
        rv = raft_node_remove(rn, f->remove->node_id, peer->subject, pending_done_cb, p, &e);
        if (rv != 0) {
            hbc_free(p);
            reply_propose(rn, f->request_id, rv, 0, e.msg, reply, ctx);
        }
        return;
    }
    default:
        reply_error(f->request_id, HBC_EPROTO, "not a control request", reply, ctx);
        return;
    }
}
