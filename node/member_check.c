/*
 * A restarting member checks in with the leader (a JoinRequest with
 * member_check set, sent by node/join.c): a node that restarts with a new
 * data or Raft address gets its state-machine record updated (NodeUpdate),
 * and a node that was removed learns it (HBC_EREMOVED) instead of waiting
 * forever for a leader that no longer talks to it.
 *
 * The Raft configuration keeps the address a node was admitted with: libraft
 * 0.15 cannot change a server's address (only remove and add it again, which
 * shrinks the quorum for a while) and, worse, keeps dialling the first
 * address it saw for an id until the process restarts. So the state machine
 * is the authority: the Raft transport dials the address the state machine
 * records for an id (member_check_resolve), and cluster status reports it.
 *
 * Happy path: barrier, the record matches, cb(0). Failure modes: leadership
 * lost during the barrier or the update (HBC_ENOTLEADER: the node asks again),
 * the node stopping (HBC_EUNAVAILABLE).
 */
#include "node/member_check.h"

#include <stdio.h>
#include <string.h>

#include "common/alloc.h"
#include "common/log.h"

struct resolve_find {
    raft_id id; /* the id looked for */
    char *out;  /* where its Raft address goes */
    size_t len; /* room there */
    int found;  /* 1 once found */
};

static int resolve_cb(const Hbc__NodeInfo *n, void *arg)
{
    struct resolve_find *rf = arg;
    if (n->raft_id != rf->id || n->raft_address == NULL) {
        return 0;
    }
    snprintf(rf->out, rf->len, "%s", n->raft_address);
    rf->found = 1;
    return 1;
}

int member_check_resolve(void *arg, raft_id id, char *out, size_t len)
{
    struct resolve_find rf = {.id = id, .out = out, .len = len};
    if (fsm_list_nodes(arg, resolve_cb, &rf, NULL) < 0) {
        return 0;
    }
    return rf.found;
}

bool member_check_moved(const Hbc__NodeInfo *rec, const char *data_address,
                        const char *raft_address)
{
    return strcmp(rec->data_address, data_address) != 0 ||
           strcmp(rec->raft_address, raft_address) != 0;
}

int member_check_propose_update(struct raft_node *rn, const char *node_id, const char *data_address,
                                const char *raft_address, const char *proposer, raft_node_cb cb,
                                void *arg, struct err *e)
{
    Hbc__Command cmd = HBC__COMMAND__INIT;
    Hbc__NodeUpdate nu = HBC__NODE_UPDATE__INIT;
    nu.node_id = (char *)node_id;
    nu.data_address = (char *)data_address;
    nu.raft_address = (char *)raft_address;
    cmd.cmd_case = HBC__COMMAND__CMD_NODE_UPDATE;
    cmd.node_update = &nu;
    return raft_node_propose(rn, &cmd, proposer, cb, arg, e);
}

/* One member check waiting for its barrier. */
struct check {
    struct raft_node *rn;  /* the leader */
    char node_id[72];      /* the node checking in */
    char data_address[72]; /* its data address now */
    char raft_address[72]; /* its Raft address now */
    char proposer[256];    /* the certificate subject that asked */
    raft_id id;            /* its Raft id */
    raft_node_cb cb;       /* caller's callback */
    void *arg;             /* its argument */
};

static void update_done_cb(void *arg, int code, uint64_t index, const char *msg)
{
    struct check *c = arg;
    hbc_log(code == 0 ? LOG_INFO : LOG_WARN,
            "event=node_readdressed node=%s data_address=%s raft_address=%s code=%s", c->node_id,
            c->data_address, c->raft_address, hbc_errname(code));
    c->cb(c->arg, code, index, msg);
    hbc_free(c);
}

static void barrier_cb(void *arg, int code, uint64_t index, const char *msg)
{
    struct check *c = arg;
    if (code != 0) {
        c->cb(c->arg, code, index, msg);
        hbc_free(c);
        return;
    }
    Hbc__NodeInfo *rec = NULL;
    struct err e;
    err_clear(&e);
    int rc = fsm_get_node(raft_node_fsm(c->rn), c->node_id, &rec, &e);
    if (rc == HBC_ENOTFOUND || (rc == 0 && !raft_node_in_config(c->rn, c->id))) {
        char why[200];
        snprintf(why, sizeof why,
                 "node %s is not a member of this cluster (it was removed): wipe its data "
                 "directory and start it with raft.join to add it again",
                 c->node_id);
        hbc_log(LOG_WARN, "event=member_check_refused node=%s reason=\"removed\"", c->node_id);
        fsm_record_free(rec);
        c->cb(c->arg, HBC_EREMOVED, 0, why);
        hbc_free(c);
        return;
    }
    if (rc != 0) {
        c->cb(c->arg, rc, 0, e.msg);
        hbc_free(c);
        return;
    }
    bool moved = member_check_moved(rec, c->data_address, c->raft_address);
    fsm_record_free(rec);
    if (!moved) {
        c->cb(c->arg, 0, index, "a member; addresses unchanged");
        hbc_free(c);
        return;
    }
    rc = member_check_propose_update(c->rn, c->node_id, c->data_address, c->raft_address,
                                     c->proposer, update_done_cb, c, &e);
    if (rc != 0) {
        c->cb(c->arg, rc, 0, e.msg);
        hbc_free(c);
    }
}

int member_check_answer(struct raft_node *rn, const Hbc__NodeJoin *nj, const char *proposer,
                        raft_node_cb cb, void *arg, struct err *e)
{
    if (nj->raft_id != raft_id_from_name(nj->node_id)) {
        return err_setraw(e, HBC_EINVAL,
                          "member check: raft id %llu is not the one derived from node id '%s'",
                          (unsigned long long)nj->raft_id, nj->node_id);
    }
    if (strlen(nj->node_id) >= sizeof((struct check *)0)->node_id ||
        strlen(nj->data_address) >= sizeof((struct check *)0)->data_address ||
        strlen(nj->raft_address) >= sizeof((struct check *)0)->raft_address) {
        return err_setraw(e, HBC_EINVAL, "member check: node id or address too long");
    }
    struct check *c = hbc_calloc(1, sizeof *c);
    if (c == NULL) {
        return err_setraw(e, HBC_ENOMEM, "member check: out of memory");
    }
    c->rn = rn;
    c->id = nj->raft_id;
    c->cb = cb;
    c->arg = arg;
    snprintf(c->node_id, sizeof c->node_id, "%s", nj->node_id);
    snprintf(c->data_address, sizeof c->data_address, "%s", nj->data_address);
    snprintf(c->raft_address, sizeof c->raft_address, "%s", nj->raft_address);
    snprintf(c->proposer, sizeof c->proposer, "%s", proposer != NULL ? proposer : "");
    int rc = raft_node_barrier(rn, barrier_cb, c, e);
    if (rc != 0) {
        hbc_free(c);
        return err_wrap_code(e, rc, "member check %s", nj->node_id);
    }
    return 0;
}
