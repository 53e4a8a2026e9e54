/*
 * The metadata plane of hbcd: libraft with its libuv I/O on the node's loop,
 * Raft traffic over the mutual-TLS transport, commands applied to the
 * RocksDB state machine.
 *
 * Happy path of a proposal: the leader stamps the command with its clock
 * and the proposer, packs it, raft_apply()s it; libraft replicates it, the
 * state machine applies it on every node, and the apply callback on the
 * leader reports the state machine's code to the caller.
 *
 * Membership: a new node sends a JoinRequest through any member (the
 * control plane forwards it to the leader by redirect). The leader records
 * the node (NodeJoin), then runs raft_add and raft_assign, one change at a
 * time from a queue, since libraft refuses a second change while one is
 * pending (RAFT_CANTCHANGE). A removal takes the node out of the
 * configuration, then out of the state machine (NodeRemove). When voters
 * fall below max_voters, the leader promotes a standby, preferring one in a
 * site without a voter.
 *
 * Failure modes: losing leadership fails pending proposals with
 * HBC_ENOTLEADER (libraft's RAFT_LEADERSHIPLOST) — the caller retries at
 * the new leader, and SnapshotCommit's id makes that retry harmless.
 * Stopping hands leadership over first (raft_transfer), then waits until
 * libraft has stored every entry it appended (bounded wait), because libraft
 * 0.15 double-frees when closed with several appends in flight.
 */
#include "node/raft_node.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "common/alloc.h"
#include "common/log.h"
#include "node/clock_sync.h"
#include "node/member_check.h"
#include "node/raft_id.h"
#include "node/raft_transport.h"

/* How often stop checks whether the log writes in flight have landed, ms. */
#define STOP_POLL_MS 10
/* How long stop waits for them at most, ms. */
#define STOP_WAIT_MAX_MS 5000
/* How long a voter has to tell the leader its clock, ms. */
#define CLOCK_ASK_TIMEOUT_MS 2000

enum member_op_kind { OP_JOIN, OP_REMOVE, OP_PROMOTE };

/* One queued membership change (leader only). */
struct member_op {
    struct raft_node *rn;     /* owner */
    enum member_op_kind kind; /* join, remove or promote */
    raft_id id;               /* the server */
    char address[64];         /* its Raft address (join) */
    char node_id[72];         /* its node id */
    char site[72];            /* its site (join), for voter spreading */
    int step;                 /* 0: add/remove, 1: assign */
    struct raft_change req;   /* libraft's request */
    raft_node_cb cb;          /* caller's callback */
    void *arg;                /* its argument */
    uint64_t index;           /* Raft index of the state-machine record */
    struct member_op *next;   /* queue link */
};

/* One proposal in flight. */
struct proposal {
    struct raft_apply req; /* libraft's request (first: cast back in the callback) */
    struct raft_node *rn;  /* owner */
    raft_node_cb cb;       /* caller's callback */
    void *arg;             /* its argument */
};

struct barrier {
    struct raft_barrier req; /* libraft's request */
    struct raft_node *rn;    /* owner */
    raft_node_cb cb;         /* caller's callback */
    void *arg;               /* its argument */
};

struct raft_node {
    uv_loop_t *loop;                       /* the node's loop */
    const struct node_config *cfg;         /* borrowed */
    struct fsm *fsm;                       /* borrowed */
    struct raft raft;                      /* libraft's instance */
    struct raft_io io;                     /* libraft's libuv I/O */
    struct raft_uv_transport transport;    /* our TLS transport */
    raft_id id;                            /* this node's Raft id */
    char dir[PATH_MAX];                    /* Raft data directory */
    struct member_op *ops_head, *ops_tail; /* membership changes waiting */
    struct member_op *op_running;          /* the change libraft is working on */
    unsigned inflight;                     /* proposals and barriers not yet called back */
    bool stopping;                         /* raft_node_stop() was called */
    uv_timer_t stop_timer;                 /* polls last_stored during stop */
    uv_timer_t self_timer;                 /* registers this node in the state machine */
    uv_timer_t clock_timer;                /* proposes ClockTicks while leader */
    uint64_t clock_seen;                   /* the anchor: a committed compliance clock value */
    uint64_t clock_seen_at;                /* uv_now when it was seen applied (or start) */
    uint64_t tick_sent_at;                 /* uv_now of our last ClockTick proposal */
    bool tick_inflight;                    /* a ClockTick is not yet called back */
    unsigned short seen_state;             /* raft state at the last role check (0: none yet) */
    raft_id seen_leader;                   /* leader id at the last role check */
    struct clock_sync *clock_sync;         /* asks the voters for their clocks (leader) */
    unsigned tick_voters;                  /* voters in the configuration at the round's start */
    struct raft_transfer transfer;         /* hands leadership over during stop */
    bool transferring;                     /* transfer started, its callback not yet run */
    uint64_t stop_started;                 /* uv_now when stop began */
    void (*done)(void *);                  /* stop's callback */
    void *done_arg;                        /* its argument */
    unsigned handles_open;                 /* our timers not yet closed */
    bool raft_closed;                      /* raft_close finished */
    char leader_addr[64];                  /* cache for raft_node_leader_data_address */
    bool self_update_inflight;             /* a NodeUpdate of our own addresses is pending */
};

static void member_next(struct raft_node *rn);
static void member_remove_record(struct member_op *op);

static uint64_t wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* Map a libraft error to ours. */
static int code_from_raft(int rv)
{
    switch (rv) {
    case 0:
        return 0;
    case RAFT_NOTLEADER:
    case RAFT_LEADERSHIPLOST:
        return HBC_ENOTLEADER;
    case RAFT_NOMEM:
        return HBC_ENOMEM;
    case RAFT_CANCELED:
    case RAFT_SHUTDOWN:
        return HBC_EUNAVAILABLE;
    case RAFT_CANTCHANGE:
        return HBC_EBUSY;
    case RAFT_DUPLICATEID:
    case RAFT_DUPLICATEADDRESS:
        return HBC_EEXIST;
    case RAFT_BADID:
    case RAFT_NOTFOUND:
        return HBC_ENOTFOUND;
    case RAFT_TOOBIG:
        return HBC_ETOOBIG;
    default:
        return HBC_EINTERNAL;
    }
}

bool raft_node_is_leader(const struct raft_node *rn)
{
    return rn->raft.state == RAFT_LEADER;
}

bool raft_node_is_member(const struct raft_node *rn)
{
    return rn->raft.configuration.n > 0;
}

bool raft_node_in_config(const struct raft_node *rn, raft_id id)
{
    for (unsigned i = 0; i < rn->raft.configuration.n; i++) {
        if (rn->raft.configuration.servers[i].id == id) {
            return true;
        }
    }
    return false;
}

bool raft_node_removed(const struct raft_node *rn)
{
    if (rn->raft.configuration.n == 0) {
        return false;
    }
    for (unsigned i = 0; i < rn->raft.configuration.n; i++) {
        if (rn->raft.configuration.servers[i].id == rn->id) {
            return false;
        }
    }
    return true;
}

struct fsm *raft_node_fsm(struct raft_node *rn)
{
    return rn->fsm;
}

/* ---------------------------------------------------------------------- */
/* Proposals                                                               */

static void apply_done_cb(struct raft_apply *req, int status, void *result)
{
    struct proposal *p = (struct proposal *)req;
    struct raft_node *rn = p->rn;
    int code = status != 0 ? code_from_raft(status) : fsm_result_code(result);
    char msg[256];
    if (status != 0) {
        snprintf(msg, sizeof msg, "not committed: %s", raft_strerror(status));
    } else if (code != 0) {
        /* The reason the state machine recorded with the refusal, when it left one. */
        Hbc__AuditRecord *rec = NULL;
        if (fsm_get_audit(rn->fsm, req->index, &rec, NULL) == 0 && rec->reason[0] != '\0') {
            snprintf(msg, sizeof msg, "refused by the state machine: %s", rec->reason);
        } else {
            snprintf(msg, sizeof msg, "refused by the state machine: %s", hbc_strerror(code));
        }
        fsm_record_free(rec);
    } else {
        snprintf(msg, sizeof msg, "committed");
    }
    rn->inflight--;
    /* libraft sets last_applied only after this callback: the entry's own index is req->index. */
    p->cb(p->arg, code, status == 0 ? req->index : 0, msg);
    hbc_free(p);
}

int raft_node_propose(struct raft_node *rn, Hbc__Command *cmd, const char *proposer,
                      raft_node_cb cb, void *arg, struct err *e)
{
    if (rn->stopping) {
        return err_setraw(e, HBC_EUNAVAILABLE, "propose: the node is stopping");
    }
    if (rn->raft.state != RAFT_LEADER) {
        return err_setraw(e, HBC_ENOTLEADER, "propose: this node is not the leader");
    }
    /*
     * Stamp, pack and put the caller's fields back: cmd is borrowed, and is
     * often part of a received frame whose free would otherwise free the
     * proposer string (the connection's certificate subject) too.
     */
    uint64_t caller_time = cmd->leader_time_ms;
    char *caller_proposer = cmd->proposer;
    cmd->leader_time_ms = wall_ms();
    cmd->proposer = (char *)(proposer != NULL ? proposer : "");
    struct raft_buffer buf;
    int rv = fsm_command_encode(cmd, &buf, e);
    cmd->leader_time_ms = caller_time;
    cmd->proposer = caller_proposer;
    if (rv != 0) {
        return err_wrap_code(e, rv, "propose");
    }
    struct proposal *p = hbc_calloc(1, sizeof *p);
    if (p == NULL) {
        raft_free(buf.base);
        return err_setraw(e, HBC_ENOMEM, "propose: out of memory");
    }
    p->rn = rn;
    p->cb = cb;
    p->arg = arg;
    rv = raft_apply(&rn->raft, &p->req, &buf, 1, apply_done_cb);
    if (rv != 0) {
        raft_free(buf.base);
        hbc_free(p);
        return err_setraw(e, code_from_raft(rv), "propose: %s", raft_strerror(rv));
    }
    rn->inflight++;
    return 0;
}

static void barrier_done_cb(struct raft_barrier *req, int status)
{
    struct barrier *b = (struct barrier *)req;
    struct raft_node *rn = b->rn;
    rn->inflight--;
    b->cb(b->arg, code_from_raft(status), status == 0 ? req->index : 0,
          status == 0 ? "current" : raft_strerror(status));
    hbc_free(b);
}

int raft_node_barrier(struct raft_node *rn, raft_node_cb cb, void *arg, struct err *e)
{
    if (rn->stopping) {
        return err_setraw(e, HBC_EUNAVAILABLE, "barrier: the node is stopping");
    }
    if (rn->raft.state != RAFT_LEADER) {
        return err_setraw(e, HBC_ENOTLEADER, "barrier: this node is not the leader");
    }
    struct barrier *b = hbc_calloc(1, sizeof *b);
    if (b == NULL) {
        return err_setraw(e, HBC_ENOMEM, "barrier: out of memory");
    }
    b->rn = rn;
    b->cb = cb;
    b->arg = arg;
    b->req.data = b;
    int rv = raft_barrier(&rn->raft, &b->req, barrier_done_cb);
    if (rv != 0) {
        hbc_free(b);
        return err_setraw(e, code_from_raft(rv), "barrier: %s", raft_strerror(rv));
    }
    rn->inflight++;
    return 0;
}

/* ---------------------------------------------------------------------- */
/* Membership                                                              */

static const struct raft_server *config_find(const struct raft_node *rn, raft_id id)
{
    for (unsigned i = 0; i < rn->raft.configuration.n; i++) {
        if (rn->raft.configuration.servers[i].id == id) {
            return &rn->raft.configuration.servers[i];
        }
    }
    return NULL;
}

/*
 * The role for a new member: a voter while there are fewer than max_voters,
 * otherwise a standby (it replicates the log but does not vote).
 */
static int choose_role(struct raft_node *rn, const struct member_op *op)
{
    unsigned voters = 0;
    for (unsigned i = 0; i < rn->raft.configuration.n; i++) {
        const struct raft_server *s = &rn->raft.configuration.servers[i];
        if (s->role == RAFT_VOTER && s->id != op->id) {
            voters++;
        }
    }
    return voters < rn->cfg->max_voters ? RAFT_VOTER : RAFT_STANDBY;
}

static void member_finish(struct member_op *op, int code, const char *msg)
{
    struct raft_node *rn = op->rn;
    rn->op_running = NULL;
    hbc_log(code == 0 ? LOG_INFO : LOG_WARN,
            "event=membership_change kind=%s node=%s raft_id=%llu code=%s msg=\"%s\"",
            op->kind == OP_JOIN     ? "join"
            : op->kind == OP_REMOVE ? "remove"
                                    : "promote",
            op->node_id, (unsigned long long)op->id, hbc_errname(code), msg);
    if (op->cb != NULL) {
        op->cb(op->arg, code, op->index, msg);
    }
    hbc_free(op);
    member_next(rn);
}

static void change_cb(struct raft_change *req, int status)
{
    struct member_op *op = req->data;
    struct raft_node *rn = op->rn;
    if (status != 0) {
        char msg[128];
        snprintf(msg, sizeof msg, "membership change failed: %s", raft_strerror(status));
        member_finish(op, code_from_raft(status), msg);
        return;
    }
    if (op->kind == OP_JOIN && op->step == 0) {
        op->step = 1;
        int role = choose_role(rn, op);
        int rv = raft_assign(&rn->raft, &op->req, op->id, role, change_cb);
        if (rv != 0) {
            char msg[128];
            snprintf(msg, sizeof msg, "assign role: %s", raft_strerror(rv));
            member_finish(op, code_from_raft(rv), msg);
        }
        return;
    }
    if (op->kind == OP_REMOVE) {
        /* Out of the configuration; now out of the state machine (whose nodes status lists). */
        member_remove_record(op);
        return;
    }
    member_finish(op, 0, op->kind == OP_JOIN ? "joined" : "promoted to voter");
}

static void member_record_cb(void *arg, int code, uint64_t index, const char *msg);

/* A removal's last step: drop the node's state-machine record (member_record_cb finishes op). */
static void member_remove_record(struct member_op *op)
{
    Hbc__Command cmd = HBC__COMMAND__INIT;
    Hbc__NodeRemove nr = HBC__NODE_REMOVE__INIT;
    nr.node_id = op->node_id;
    cmd.cmd_case = HBC__COMMAND__CMD_NODE_REMOVE;
    cmd.node_remove = &nr;
    struct err e;
    int rv = raft_node_propose(op->rn, &cmd, "hbcd", member_record_cb, op, &e);
    if (rv != 0) {
        member_finish(op, rv, e.msg);
    }
}

/* Run the next queued membership change, if none is running. */
static void member_next(struct raft_node *rn)
{
    while (rn->op_running == NULL && rn->ops_head != NULL) {
        struct member_op *op = rn->ops_head;
        rn->ops_head = op->next;
        if (rn->ops_head == NULL) {
            rn->ops_tail = NULL;
        }
        op->next = NULL;
        rn->op_running = op;
        if (rn->stopping || rn->raft.state != RAFT_LEADER) {
            member_finish(op, rn->stopping ? HBC_EUNAVAILABLE : HBC_ENOTLEADER,
                          rn->stopping ? "the node is stopping"
                                       : "this node is no longer the leader");
            continue;
        }
        op->req.data = op;
        int rv;
        if (op->kind == OP_PROMOTE) {
            const struct raft_server *s = config_find(rn, op->id);
            if (s == NULL || s->role == RAFT_VOTER) {
                member_finish(op, 0, "nothing to promote");
                continue;
            }
            rv = raft_assign(&rn->raft, &op->req, op->id, RAFT_VOTER, change_cb);
        } else if (op->kind == OP_JOIN) {
            const struct raft_server *s = config_find(rn, op->id);
            if (s != NULL) {
                /* Already a member (a restart or a wiped node rejoining): only fix its role. */
                op->step = 1;
                int role = s->role == RAFT_VOTER ? RAFT_VOTER : choose_role(rn, op);
                if (role == s->role) {
                    member_finish(op, 0, "already a member");
                    continue;
                }
                rv = raft_assign(&rn->raft, &op->req, op->id, role, change_cb);
            } else {
                rv = raft_add(&rn->raft, &op->req, op->id, op->address, change_cb);
            }
        } else {
            if (config_find(rn, op->id) == NULL) {
                /* Not in the configuration: only the state-machine record goes. */
                member_remove_record(op);
                continue;
            }
            rv = raft_remove(&rn->raft, &op->req, op->id, change_cb);
        }
        if (rv != 0) {
            char msg[128];
            snprintf(msg, sizeof msg, "%s", raft_strerror(rv));
            member_finish(op, code_from_raft(rv), msg);
        }
    }
}

static void member_enqueue(struct raft_node *rn, struct member_op *op)
{
    if (rn->ops_tail != NULL) {
        rn->ops_tail->next = op;
    } else {
        rn->ops_head = op;
    }
    rn->ops_tail = op;
    member_next(rn);
}

/* After the state machine recorded a join (or refused it as a duplicate), change the configuration.
 */
static void member_record_cb(void *arg, int code, uint64_t index, const char *msg)
{
    struct member_op *op = arg;
    struct raft_node *rn = op->rn;
    op->index = index;
    if (op->kind == OP_REMOVE) {
        /* The removal's last step: the record went (or was already gone). */
        member_finish(op, code == HBC_ENOTFOUND ? 0 : code, code == 0 ? "removed" : msg);
        return;
    }
    if (code != 0 && code != HBC_EEXIST) {
        if (op->cb != NULL) {
            op->cb(op->arg, code, index, msg);
        }
        hbc_free(op);
        return;
    }
    member_enqueue(rn, op);
}

int raft_node_join(struct raft_node *rn, const Hbc__NodeJoin *join, const char *proposer,
                   raft_node_cb cb, void *arg, struct err *e)
{
    if (join->raft_id != raft_id_from_name(join->node_id)) {
        return err_setraw(e, HBC_EINVAL,
                          "join: raft id %llu is not the one derived from node id '%s'",
                          (unsigned long long)join->raft_id, join->node_id);
    }
    struct member_op *op = hbc_calloc(1, sizeof *op);
    if (op == NULL) {
        return err_setraw(e, HBC_ENOMEM, "join: out of memory");
    }
    op->rn = rn;
    op->kind = OP_JOIN;
    op->id = join->raft_id;
    snprintf(op->address, sizeof op->address, "%s", join->raft_address);
    snprintf(op->node_id, sizeof op->node_id, "%s", join->node_id);
    snprintf(op->site, sizeof op->site, "%s", join->site);
    op->cb = cb;
    op->arg = arg;
    Hbc__Command cmd = HBC__COMMAND__INIT;
    Hbc__NodeJoin copy = *join;
    copy.has_state = true;
    copy.state = HBC__NODE_STATE__NODE_UP;
    cmd.cmd_case = HBC__COMMAND__CMD_NODE_JOIN;
    cmd.node_join = &copy;
    int rv = raft_node_propose(rn, &cmd, proposer, member_record_cb, op, e);
    if (rv != 0) {
        hbc_free(op);
        return err_wrap_code(e, rv, "join %s", join->node_id);
    }
    return 0;
}

int raft_node_remove(struct raft_node *rn, const char *node_id, const char *proposer,
                     raft_node_cb cb, void *arg, struct err *e)
{
    (void)proposer;
    if (rn->raft.state != RAFT_LEADER) {
        return err_setraw(e, HBC_ENOTLEADER, "remove: this node is not the leader");
    }
    if (strlen(node_id) == 0 || strlen(node_id) > FSM_NAME_MAX) {
        return err_setraw(e, HBC_EINVAL, "remove: bad node id");
    }
    raft_id id = raft_id_from_name(node_id);
    if (id == rn->id) {
        return err_setraw(
            e, HBC_EINVAL,
            "remove: the leader cannot remove itself; stop it and remove it from another node");
    }
    struct member_op *op = hbc_calloc(1, sizeof *op);
    if (op == NULL) {
        return err_setraw(e, HBC_ENOMEM, "remove: out of memory");
    }
    op->rn = rn;
    op->kind = OP_REMOVE;
    op->id = id;
    snprintf(op->node_id, sizeof op->node_id, "%s", node_id);
    op->cb = cb;
    op->arg = arg;
    member_enqueue(rn, op);
    return 0;
}

/* What member_promote_maybe() learns of the nodes from the state machine. */
struct site_scan {
    struct raft_node *rn;    /* the node */
    raft_id candidate;       /* a standby to promote, 0 if none */
    bool candidate_new_site; /* the candidate's site has no voter */
    char candidate_name[72]; /* its node id */
    char voter_sites[8][72]; /* sites that hold a voter (the first 8) */
    unsigned n_voter_sites;  /* how many of them */
};

static int voter_site_cb(const Hbc__NodeInfo *n, void *arg)
{
    struct site_scan *sc = arg;
    const struct raft_server *s = config_find(sc->rn, n->raft_id);
    if (s != NULL && s->role == RAFT_VOTER && sc->n_voter_sites < 8) {
        snprintf(sc->voter_sites[sc->n_voter_sites++], sizeof sc->voter_sites[0], "%s", n->site);
    }
    return 0;
}

static int standby_cb(const Hbc__NodeInfo *n, void *arg)
{
    struct site_scan *sc = arg;
    const struct raft_server *s = config_find(sc->rn, n->raft_id);
    if (s == NULL || s->role != RAFT_STANDBY) {
        return 0;
    }
    bool new_site = true;
    for (unsigned i = 0; i < sc->n_voter_sites; i++) {
        new_site &= strcmp(sc->voter_sites[i], n->site) != 0;
    }
    if (sc->candidate == 0 || (new_site && !sc->candidate_new_site)) {
        sc->candidate = n->raft_id;
        sc->candidate_new_site = new_site;
        snprintf(sc->candidate_name, sizeof sc->candidate_name, "%s", n->node_id);
    }
    return 0;
}

/*
 * Keep max_voters voters: when there are fewer (a voter was removed) and a
 * standby exists, queue its promotion, preferring a standby in a site that
 * has no voter. Leader only, while no membership change is under way.
 */
static void member_promote_maybe(struct raft_node *rn)
{
    if (rn->stopping || rn->raft.state != RAFT_LEADER || rn->op_running != NULL ||
        rn->ops_head != NULL) {
        return;
    }
    unsigned voters = 0, standbys = 0;
    for (unsigned i = 0; i < rn->raft.configuration.n; i++) {
        voters += rn->raft.configuration.servers[i].role == RAFT_VOTER;
        standbys += rn->raft.configuration.servers[i].role == RAFT_STANDBY;
    }
    if (voters >= rn->cfg->max_voters || standbys == 0) {
        return;
    }
    struct site_scan sc = {.rn = rn};
    if (fsm_list_nodes(rn->fsm, voter_site_cb, &sc, NULL) != 0 ||
        fsm_list_nodes(rn->fsm, standby_cb, &sc, NULL) != 0 || sc.candidate == 0) {
        return; /* a standby the state machine does not know yet: next time */
    }
    struct member_op *op = hbc_calloc(1, sizeof *op);
    if (op == NULL) {
        return;
    }
    op->rn = rn;
    op->kind = OP_PROMOTE;
    op->id = sc.candidate;
    snprintf(op->node_id, sizeof op->node_id, "%s", sc.candidate_name);
    member_enqueue(rn, op);
}

/* ---------------------------------------------------------------------- */
/* Self registration                                                       */

static void self_record_cb(void *arg, int code, uint64_t index, const char *msg)
{
    (void)arg;
    (void)index;
    if (code != 0 && code != HBC_EEXIST) {
        hbc_log(LOG_WARN, "event=self_register_failed code=%s msg=\"%s\"", hbc_errname(code), msg);
    }
}

static void self_update_cb(void *arg, int code, uint64_t index, const char *msg)
{
    struct raft_node *rn = arg;
    (void)index;
    rn->self_update_inflight = false;
    hbc_log(code == 0 ? LOG_INFO : LOG_WARN,
            "event=node_readdressed node=%s data_address=%s raft_address=%s code=%s msg=\"%s\"",
            rn->cfg->node_id, rn->cfg->listen, rn->cfg->raft_listen, hbc_errname(code), msg);
}

/*
 * The bootstrap node has no one to join through: once it leads, it records
 * itself in the state machine. Any leader also does this for itself if its
 * record is missing, which makes the record survive a lost join reply. Once
 * recorded, the leader keeps the number of voters up (member_promote_maybe).
 */
static void self_timer_cb(uv_timer_t *t)
{
    struct raft_node *rn = t->data;
    if (rn->stopping || rn->raft.state != RAFT_LEADER) {
        return;
    }
    const struct node_config *c = rn->cfg;
    Hbc__NodeInfo *info = NULL;
    if (fsm_get_node(rn->fsm, rn->cfg->node_id, &info, NULL) == 0) {
        /* A leader restarted at new addresses updates its own record (others check in). */
        bool moved = member_check_moved(info, c->listen, c->raft_listen);
        fsm_record_free(info);
        if (moved && !rn->self_update_inflight) {
            struct err e;
            if (member_check_propose_update(rn, c->node_id, c->listen, c->raft_listen, "hbcd",
                                            self_update_cb, rn, &e) == 0) {
                rn->self_update_inflight = true;
            }
        }
        member_promote_maybe(rn);
        return;
    }
    Hbc__Command cmd = HBC__COMMAND__INIT;
    Hbc__NodeJoin nj = HBC__NODE_JOIN__INIT;
    nj.node_id = c->node_id;
    nj.data_address = c->listen;
    nj.raft_address = c->raft_listen;
    nj.raft_id = rn->id;
    nj.site = c->site;
    nj.region = c->region;
    nj.media = c->media;
    nj.worm = c->worm;
    nj.capacity_bytes = c->capacity;
    nj.has_state = true;
    nj.state = HBC__NODE_STATE__NODE_UP;
    cmd.cmd_case = HBC__COMMAND__CMD_NODE_JOIN;
    cmd.node_join = &nj;
    struct err e;
    if (raft_node_propose(rn, &cmd, "hbcd", self_record_cb, rn, &e) != 0) {
        hbc_log(LOG_DEBUG, "event=self_register_deferred reason=\"%s\"", e.msg);
    }
}

/* ---------------------------------------------------------------------- */
/* Compliance clock                                                        */

static void tick_done_cb(void *arg, int code, uint64_t index, const char *msg)
{
    struct raft_node *rn = arg;
    rn->tick_inflight = false;
    if (code == HBC_ECLOCK) {
        hbc_log(LOG_ERROR, "event=clock_alert index=%llu reason=\"%s\"", (unsigned long long)index,
                msg);
    } else if (code != 0) {
        hbc_log(LOG_WARN, "event=clock_tick_refused index=%llu code=%s msg=\"%s\"",
                (unsigned long long)index, hbc_errname(code), msg);
    }
}

/* Propose a tick with our clock and the voters' (ours + offsets_ms[0..n)). */
static void tick_propose(struct raft_node *rn, const int64_t *offsets_ms, size_t n)
{
    if (rn->stopping || rn->raft.state != RAFT_LEADER || rn->tick_inflight) {
        return;
    }
    uint64_t now = uv_now(rn->loop);
    uint64_t voter_clock[CLOCK_SYNC_MAX_PEERS + 1];
    Hbc__Command cmd = HBC__COMMAND__INIT;
    Hbc__ClockTick tick = HBC__CLOCK_TICK__INIT;
    tick.wall_ms = wall_ms();
    tick.elapsed_ms = now - rn->clock_seen_at;
    tick.anchor_clock_ms = rn->clock_seen;
    voter_clock[0] = tick.wall_ms;
    size_t k = 1;
    for (size_t i = 0; i < n && k < FSM_CLOCK_VOTERS_MAX; i++) {
        int64_t v = (int64_t)tick.wall_ms + offsets_ms[i];
        voter_clock[k++] = v > 0 ? (uint64_t)v : 1;
    }
    tick.n_voter_clock_ms = k;
    tick.voter_clock_ms = voter_clock;
    tick.has_voters = true;
    tick.voters = rn->tick_voters > 0 ? rn->tick_voters : 1;
    tick.has_max_skew_ms = true;
    /* 0: a configuration not read by node_config_load (tests): the default. */
    tick.max_skew_ms = rn->cfg->max_skew > 0 ? (uint64_t)rn->cfg->max_skew * 1000 : FSM_MAX_SKEW_MS;
    cmd.cmd_case = HBC__COMMAND__CMD_CLOCK_TICK;
    cmd.clock_tick = &tick;
    struct err e;
    if (raft_node_propose(rn, &cmd, FSM_PROPOSER_SELF, tick_done_cb, rn, &e) == 0) {
        rn->tick_inflight = true;
    } else {
        hbc_log(LOG_DEBUG, "event=clock_tick_deferred reason=\"%s\"", e.msg);
    }
}

static void clock_round_cb(void *arg, const int64_t *offsets_ms, size_t n_ok, size_t n_asked)
{
    struct raft_node *rn = arg;
    if (n_ok < n_asked) {
        hbc_log(LOG_WARN, "event=clock_sync_partial answered=%zu asked=%zu", n_ok, n_asked);
    }
    tick_propose(rn, offsets_ms, n_ok);
}

/* Where the voters other than us are: peers[], as the state machine records them. */
struct voter_find {
    struct raft_node *rn;                          /* us */
    struct clock_peer peers[CLOCK_SYNC_MAX_PEERS]; /* found */
    size_t n;                                      /* how many */
};

static int voter_find_cb(const Hbc__NodeInfo *node, void *arg)
{
    struct voter_find *vf = arg;
    struct raft_node *rn = vf->rn;
    if (node->raft_id == rn->id || vf->n == CLOCK_SYNC_MAX_PEERS) {
        return 0;
    }
    for (unsigned i = 0; i < rn->raft.configuration.n; i++) {
        const struct raft_server *s = &rn->raft.configuration.servers[i];
        if (s->id == node->raft_id && s->role == RAFT_VOTER) {
            snprintf(vf->peers[vf->n].addr, sizeof vf->peers[0].addr, "%s", node->data_address);
            snprintf(vf->peers[vf->n].node_id, sizeof vf->peers[0].node_id, "%s", node->node_id);
            vf->n++;
            break;
        }
    }
    return 0;
}

/*
 * Every node keeps an anchor: a committed compliance clock value and the
 * moment, on its own monotonic clock, it saw it applied. A follower moves its
 * anchor whenever the clock moves; a leader freezes it while it leads, so its
 * own ticks cannot compound a fast clock's gain. Every FSM_TICK_INTERVAL_MS
 * the leader asks the other voters for their clocks (node/clock_sync.c),
 * then proposes a tick with its wall clock, the voters' clocks, the anchor
 * and the monotonic time elapsed since it; the state machine checks it
 * against the voters' median and the anchor (node/fsm_locks.c). A node that
 * just started counts from its start, which underestimates the elapsed
 * time: it refuses more, never less.
 */
static const char *state_name(int state);

/*
 * Log this node's Raft role and the leader it knows whenever either changed
 * since the last check (once a second, from the clock timer: libraft 0.15 has
 * no state callback), so operators can follow elections in the log.
 */
static void log_role_change(struct raft_node *rn)
{
    raft_id lid = 0;
    const char *laddr = NULL;
    raft_leader(&rn->raft, &lid, &laddr);
    if (rn->raft.state == rn->seen_state && lid == rn->seen_leader) {
        return;
    }
    rn->seen_state = rn->raft.state;
    rn->seen_leader = lid;
    hbc_log(LOG_INFO, "event=raft_role role=%s term=%llu leader=%llu leader_address=%s",
            state_name(rn->raft.state), (unsigned long long)rn->raft.current_term,
            (unsigned long long)lid, laddr != NULL ? laddr : "-");
}

static void clock_timer_cb(uv_timer_t *t)
{
    struct raft_node *rn = t->data;
    log_role_change(rn);
    uint64_t now = uv_now(rn->loop);
    uint64_t clock = fsm_compliance_clock_ms(rn->fsm);
    bool leader = rn->raft.state == RAFT_LEADER;
    if (clock != rn->clock_seen && (!leader || rn->clock_seen == 0)) {
        rn->clock_seen = clock;
        rn->clock_seen_at = now;
    }
    if (rn->stopping || !leader || rn->tick_inflight || clock_sync_busy(rn->clock_sync) ||
        now - rn->tick_sent_at < FSM_TICK_INTERVAL_MS) {
        return;
    }
    rn->tick_sent_at = now;
    unsigned voters = 0;
    for (unsigned i = 0; i < rn->raft.configuration.n; i++) {
        voters += rn->raft.configuration.servers[i].role == RAFT_VOTER;
    }
    rn->tick_voters = voters;
    struct voter_find *vf = hbc_calloc(1, sizeof *vf);
    struct err e;
    err_clear(&e);
    if (vf == NULL) {
        return;
    }
    vf->rn = rn;
    if (voters > 1 && fsm_list_nodes(rn->fsm, voter_find_cb, vf, &e) != 0) {
        hbc_log(LOG_WARN, "event=clock_sync_failed reason=\"%s\"", e.msg);
        vf->n = 0;
    }
    size_t n = vf->n;
    int rv = n > 0 ? clock_sync_round(rn->clock_sync, vf->peers, n, clock_round_cb, rn, &e) : 0;
    hbc_free(vf);
    if (n == 0 || rv != 0) {
        if (rv != 0) {
            hbc_log(LOG_WARN, "event=clock_sync_failed reason=\"%s\"", e.msg);
        }
        /* Our clock alone: enough for a single voter, refused (fail closed) otherwise. */
        tick_propose(rn, NULL, 0);
    }
}

/* ---------------------------------------------------------------------- */
/* Status                                                                  */

struct leader_find {
    raft_id id; /* the leader's Raft id */
    char *out;  /* where its data address goes */
    size_t len; /* room there */
    bool found; /* whether it was found */
};

static int leader_find_cb(const Hbc__NodeInfo *n, void *arg)
{
    struct leader_find *lf = arg;
    if (n->raft_id == lf->id) {
        snprintf(lf->out, lf->len, "%s", n->data_address);
        lf->found = true;
    }
    return 0;
}

const char *raft_node_leader_data_address(struct raft_node *rn)
{
    raft_id id = 0;
    const char *addr = NULL;
    raft_leader(&rn->raft, &id, &addr);
    if (id == 0) {
        return NULL;
    }
    if (id == rn->id) {
        return rn->cfg->listen;
    }
    struct leader_find lf = {.id = id, .out = rn->leader_addr, .len = sizeof rn->leader_addr};
    fsm_list_nodes(rn->fsm, leader_find_cb, &lf, NULL);
    return lf.found ? rn->leader_addr : NULL;
}

static const char *state_name(int state)
{
    switch (state) {
    case RAFT_LEADER:
        return "leader";
    case RAFT_FOLLOWER:
        return "follower";
    case RAFT_CANDIDATE:
        return "candidate";
    default:
        return "unavailable";
    }
}

static const char *role_name(int role)
{
    switch (role) {
    case RAFT_VOTER:
        return "voter";
    case RAFT_STANDBY:
        return "standby";
    default:
        return "spare";
    }
}

struct node_collect {
    Hbc__NodeInfo **nodes; /* collected (owned) */
    size_t n, cap;         /* count and room */
    int rv;                /* allocation failure */
};

static int node_collect_cb(const Hbc__NodeInfo *n, void *arg)
{
    struct node_collect *nc = arg;
    if (nc->n == nc->cap) {
        size_t cap = nc->cap == 0 ? 8 : nc->cap * 2;
        Hbc__NodeInfo **p = hbc_realloc(nc->nodes, cap * sizeof *p);
        if (p == NULL) {
            nc->rv = HBC_ENOMEM;
            return 1;
        }
        nc->nodes = p;
        nc->cap = cap;
    }
    size_t len = hbc__node_info__get_packed_size(n);
    uint8_t *buf = hbc_malloc(len);
    if (buf == NULL) {
        nc->rv = HBC_ENOMEM;
        return 1;
    }
    hbc__node_info__pack(n, buf);
    Hbc__NodeInfo *copy = hbc__node_info__unpack(NULL, len, buf);
    hbc_free(buf);
    if (copy == NULL) {
        nc->rv = HBC_ENOMEM;
        return 1;
    }
    nc->nodes[nc->n++] = copy;
    return 0;
}

int raft_node_status(struct raft_node *rn, Hbc__ClusterStatusReply *r, struct err *e)
{
    hbc__cluster_status_reply__init(r);
    r->node_id = rn->cfg->node_id;
    r->raft_id = rn->id;
    r->state = (char *)state_name(rn->raft.state);
    r->term = rn->raft.current_term;
    r->commit_index = rn->raft.commit_index;
    r->applied_index = raft_last_applied(&rn->raft);
    r->last_index = raft_last_index(&rn->raft);
    raft_id lid = 0;
    const char *laddr = NULL;
    raft_leader(&rn->raft, &lid, &laddr);
    if (lid != 0) {
        r->has_leader_raft_id = true;
        r->leader_raft_id = lid;
        r->leader_address = (char *)raft_node_leader_data_address(rn);
    }
    if (rn->raft.state == RAFT_FOLLOWER && lid != 0) {
        r->has_last_contact_ms = true;
        raft_time now = rn->io.time(&rn->io);
        r->last_contact_ms =
            now >= rn->raft.election_timer_start ? now - rn->raft.election_timer_start : 0;
    } else if (rn->raft.state == RAFT_LEADER) {
        r->has_last_contact_ms = true;
        r->last_contact_ms = 0;
    }
    uint8_t *digest = hbc_malloc(FSM_DIGEST_LEN);
    struct node_collect nc = {0};
    fsm_list_nodes(rn->fsm, node_collect_cb, &nc, NULL);
    unsigned n = rn->raft.configuration.n;
    Hbc__ClusterMember **members = hbc_calloc(n + 1, sizeof *members);
    /*
     * The members live in one array that raft_node_status_free() finds through
     * members[0]: none at all when there is no configuration (a node not yet
     * admitted, or one whose Raft is closing).
     */
    Hbc__ClusterMember *mem = n > 0 ? hbc_calloc(n, sizeof *mem) : NULL;
    if (digest == NULL || members == NULL || (n > 0 && mem == NULL) || nc.rv != 0) {
        hbc_free(digest);
        hbc_free(members);
        hbc_free(mem);
        r->nodes = nc.nodes;
        r->n_nodes = nc.n;
        raft_node_status_free(r);
        return err_setraw(e, HBC_ENOMEM, "cluster status: out of memory");
    }
    int rv = fsm_digest(rn->fsm, digest, e);
    if (rv != 0) {
        memset(digest, 0, FSM_DIGEST_LEN);
    }
    r->state_digest.data = digest;
    r->state_digest.len = FSM_DIGEST_LEN;
    r->nodes = nc.nodes;
    r->n_nodes = nc.n;
    for (unsigned i = 0; i < n; i++) {
        const struct raft_server *s = &rn->raft.configuration.servers[i];
        hbc__cluster_member__init(&mem[i]);
        mem[i].raft_id = s->id;
        mem[i].raft_address = s->address;
        mem[i].role = (char *)role_name(s->role);
        for (size_t j = 0; j < nc.n; j++) {
            if (nc.nodes[j]->raft_id == s->id) {
                mem[i].info = nc.nodes[j];
                /* Where the transport dials it (member_check.c): the record, not the admission. */
                mem[i].raft_address = nc.nodes[j]->raft_address;
            }
        }
        members[i] = &mem[i];
    }
    if (n == 0) {
        /* Not in any configuration yet (a node still joining): raft_node_status_free()
         * frees the members through members[0], so nothing may stay allocated here. */
        hbc_free(mem);
        hbc_free(members);
        members = NULL;
    }
    r->members = members;
    r->n_members = n;
    return 0;
}

void raft_node_status_free(Hbc__ClusterStatusReply *r)
{
    for (size_t i = 0; i < r->n_nodes; i++) {
        hbc__node_info__free_unpacked(r->nodes[i], NULL);
    }
    hbc_free(r->nodes);
    if (r->n_members > 0) {
        hbc_free(r->members[0]);
    }
    hbc_free(r->members);
    hbc_free(r->state_digest.data);
    r->nodes = NULL;
    r->members = NULL;
    r->state_digest.data = NULL;
}

/* ---------------------------------------------------------------------- */
/* Start and stop                                                          */

int raft_node_start(uv_loop_t *loop, const struct node_config *cfg, struct tls_ctx *tls,
                    struct fsm *fsm, struct raft_node **out, struct err *e)
{
    struct raft_node *rn = hbc_calloc(1, sizeof *rn);
    if (rn == NULL) {
        return err_setraw(e, HBC_ENOMEM, "start raft: out of memory");
    }
    rn->loop = loop;
    rn->cfg = cfg;
    rn->fsm = fsm;
    rn->id = raft_id_from_name(cfg->node_id);
    snprintf(rn->dir, sizeof rn->dir, "%s/raft", cfg->data_dir);
    if (mkdir(rn->dir, 0700) != 0 && errno != EEXIST) {
        int saved = errno;
        hbc_free(rn);
        return err_setraw(e, -saved, "create %s: %s", rn->dir, strerror(saved));
    }
    int rv = raft_transport_init(&rn->transport, loop, tls, e);
    if (rv != 0) {
        hbc_free(rn);
        return err_wrap_code(e, rv, "raft transport");
    }
    rv = raft_uv_init(&rn->io, loop, rn->dir, &rn->transport);
    if (rv != 0) {
        raft_transport_release(&rn->transport);
        hbc_free(rn);
        return err_setraw(e, HBC_EIO, "raft io %s: %s", rn->dir, raft_strerror(rv));
    }
    raft_uv_set_segment_size(&rn->io, (size_t)cfg->raft_segment_size);
    raft_transport_set_resolver(&rn->transport, member_check_resolve, fsm);
    rv = raft_init(&rn->raft, &rn->io, fsm_raft_fsm(fsm), rn->id, cfg->raft_listen);
    if (rv != 0) {
        raft_uv_close(&rn->io);
        raft_transport_release(&rn->transport);
        hbc_free(rn);
        return err_setraw(e, HBC_EINTERNAL, "raft init: %s", raft_strerror(rv));
    }
    fsm_set_raft(fsm, &rn->raft);
    rn->raft.data = rn;
    if (cfg->raft_bootstrap) {
        struct raft_configuration conf;
        raft_configuration_init(&conf);
        raft_configuration_add(&conf, rn->id, cfg->raft_listen, RAFT_VOTER);
        rv = raft_bootstrap(&rn->raft, &conf);
        raft_configuration_close(&conf);
        if (rv == 0) {
            hbc_log(LOG_INFO, "event=raft_bootstrapped node=%s raft_id=%llu", cfg->node_id,
                    (unsigned long long)rn->id);
        } else if (rv != RAFT_CANTBOOTSTRAP) {
            hbc_log(LOG_ERROR, "event=raft_bootstrap_failed reason=\"%s\"", raft_strerror(rv));
        }
    }
    raft_set_election_timeout(&rn->raft, cfg->election_timeout);
    raft_set_heartbeat_timeout(&rn->raft, cfg->heartbeat_timeout);
    raft_set_snapshot_threshold(&rn->raft, cfg->snapshot_threshold);
    raft_set_snapshot_trailing(&rn->raft, cfg->snapshot_trailing);
    raft_set_pre_vote(&rn->raft, true);
    rv = clock_sync_new(loop, tls, CLOCK_ASK_TIMEOUT_MS, &rn->clock_sync, e);
    if (rv != 0) {
        /* raft_close would need the loop; the caller exits on this error. */
        *out = NULL;
        return rv;
    }
    rv = raft_start(&rn->raft);
    if (rv != 0) {
        clock_sync_close(rn->clock_sync, NULL, NULL);
        char msg[256];
        snprintf(msg, sizeof msg, "%s", raft_errmsg(&rn->raft));
        /* raft_close would need the loop; the caller exits on this error. */
        *out = NULL;
        return err_setraw(e, HBC_EIO, "raft start on %s: %s%s%s", cfg->raft_listen,
                          raft_strerror(rv), msg[0] != '\0' ? ": " : "", msg);
    }
    uv_timer_init(loop, &rn->self_timer);
    rn->self_timer.data = rn;
    rn->handles_open++;
    uv_timer_start(&rn->self_timer, self_timer_cb, 200, 500);
    rn->handles_open++; /* the clock exchange, closed in raft_node_stop() */
    uv_timer_init(loop, &rn->clock_timer);
    rn->clock_timer.data = rn;
    rn->handles_open++;
    rn->clock_seen = fsm_compliance_clock_ms(fsm);
    rn->clock_seen_at = uv_now(loop);
    rn->tick_sent_at = uv_now(loop) - FSM_TICK_INTERVAL_MS;
    uv_timer_start(&rn->clock_timer, clock_timer_cb, 1000, 1000);
    hbc_log(LOG_INFO, "event=raft_started node=%s raft_id=%llu listen=%s", cfg->node_id,
            (unsigned long long)rn->id, cfg->raft_listen);
    *out = rn;
    return 0;
}

static void stop_maybe_done(struct raft_node *rn)
{
    if (!rn->raft_closed || rn->handles_open > 0 || rn->done == NULL) {
        return;
    }
    void (*done)(void *) = rn->done;
    void *arg = rn->done_arg;
    rn->done = NULL;
    raft_transport_release(&rn->transport);
    hbc_free(rn);
    done(arg);
}

static void timer_closed_cb(uv_handle_t *h)
{
    struct raft_node *rn = h->data;
    rn->handles_open--;
    stop_maybe_done(rn);
}

static void clock_sync_closed_cb(void *arg)
{
    struct raft_node *rn = arg;
    rn->clock_sync = NULL;
    rn->handles_open--;
    stop_maybe_done(rn);
}

static void raft_closed_cb(struct raft *r)
{
    struct raft_node *rn = r->data;
    rn->raft_closed = true;
    raft_uv_close(&rn->io);
    hbc_log(LOG_INFO, "event=raft_stopped");
    stop_maybe_done(rn);
}

static void transfer_done_cb(struct raft_transfer *req)
{
    struct raft_node *rn = req->data;
    rn->transferring = false;
    raft_id id = 0;
    const char *addr = NULL;
    raft_leader(&rn->raft, &id, &addr);
    hbc_log(LOG_INFO, "event=raft_leadership_handed_over to=%llu ok=%d", (unsigned long long)id,
            id != 0 && id != rn->id);
}

static void stop_timer_cb(uv_timer_t *t)
{
    struct raft_node *rn = t->data;
    raft_index last = raft_last_index(&rn->raft);
    bool settled = rn->raft.last_stored >= last && !rn->transferring;
    uint64_t waited = uv_now(rn->loop) - rn->stop_started;
    if (!settled && waited < STOP_WAIT_MAX_MS) {
        return;
    }
    if (!settled) {
        hbc_log(LOG_WARN, "event=raft_stop_unsettled last_stored=%llu last_index=%llu",
                (unsigned long long)rn->raft.last_stored, (unsigned long long)last);
    }
    uv_timer_stop(t);
    uv_close((uv_handle_t *)t, timer_closed_cb);
    raft_close(&rn->raft, raft_closed_cb);
}

void raft_node_stop(struct raft_node *rn, void (*done)(void *arg), void *arg)
{
    if (rn->stopping) {
        return;
    }
    rn->stopping = true;
    rn->done = done;
    rn->done_arg = arg;
    rn->stop_started = uv_now(rn->loop);
    uv_timer_stop(&rn->self_timer);
    uv_close((uv_handle_t *)&rn->self_timer, timer_closed_cb);
    uv_timer_stop(&rn->clock_timer);
    uv_close((uv_handle_t *)&rn->clock_timer, timer_closed_cb);
    clock_sync_close(rn->clock_sync, clock_sync_closed_cb, rn);
    /* Queued membership changes are refused; the running one ends with raft_close. */
    while (rn->ops_head != NULL) {
        struct member_op *op = rn->ops_head;
        rn->ops_head = op->next;
        if (op->cb != NULL) {
            op->cb(op->arg, HBC_EUNAVAILABLE, 0, "the node is stopping");
        }
        hbc_free(op);
    }
    rn->ops_tail = NULL;
    /*
     * A leader hands over first (libraft picks the most up-to-date voter), so
     * the others need not wait an election timeout to go on without it.
     */
    unsigned voters = 0;
    for (unsigned i = 0; i < rn->raft.configuration.n; i++) {
        voters += rn->raft.configuration.servers[i].role == RAFT_VOTER;
    }
    if (rn->raft.state == RAFT_LEADER && voters > 1) {
        rn->transfer.data = rn;
        rn->transferring = raft_transfer(&rn->raft, &rn->transfer, 0, transfer_done_cb) == 0;
    }
    uv_timer_init(rn->loop, &rn->stop_timer);
    rn->stop_timer.data = rn;
    rn->handles_open++;
    uv_timer_start(&rn->stop_timer, stop_timer_cb, 0, STOP_POLL_MS);
}
