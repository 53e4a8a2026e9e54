/* hbc cluster status|remove: membership and Raft health as every node sees it. */
#include <stdbool.h>
#include <stdio.h>
#include <string.h>

#include "client/cli.h"
#include "common/frame.h"
#include "common/rpc_call.h"

static void hex(const uint8_t *p, size_t n, char *out)
{
    for (size_t i = 0; i < n; i++) {
        sprintf(out + 2 * i, "%02x", p[i]);
    }
}

static const char *member_role(const Hbc__ClusterStatusReply *view, uint64_t raft_id)
{
    for (size_t i = 0; i < view->n_members; i++) {
        if (view->members[i]->raft_id == raft_id) {
            return view->members[i]->role;
        }
    }
    return "not a member";
}

static json_t *status_json(const Hbc__ClusterStatusReply *s, const Hbc__ClusterStatusReply *view,
                           const Hbc__NodeInfo *info)
{
    char digest[65];
    hex(s->state_digest.data, s->state_digest.len < 32 ? s->state_digest.len : 32, digest);
    json_t *o = json_object();
    json_object_set_new(o, "node", json_string(s->node_id));
    json_object_set_new(o, "raft_id", json_integer((json_int_t)s->raft_id));
    json_object_set_new(o, "role", json_string(member_role(view, s->raft_id)));
    json_object_set_new(o, "state", json_string(s->state));
    if (info != NULL) {
        json_object_set_new(o, "site", json_string(info->site));
        json_object_set_new(o, "region", json_string(info->region));
        json_object_set_new(o, "media", json_string(info->media));
        json_object_set_new(o, "worm", json_boolean(info->worm));
        json_object_set_new(o, "address", json_string(info->data_address));
        json_object_set_new(o, "raft_address", json_string(info->raft_address));
    }
    json_object_set_new(o, "term", json_integer((json_int_t)s->term));
    json_object_set_new(o, "commit_index", json_integer((json_int_t)s->commit_index));
    json_object_set_new(o, "applied_index", json_integer((json_int_t)s->applied_index));
    json_object_set_new(o, "last_index", json_integer((json_int_t)s->last_index));
    if (s->has_leader_raft_id) {
        json_object_set_new(o, "leader_raft_id", json_integer((json_int_t)s->leader_raft_id));
    }
    if (s->has_last_contact_ms) {
        json_object_set_new(o, "last_contact_ms", json_integer((json_int_t)s->last_contact_ms));
    }
    json_object_set_new(o, "state_digest", json_string(digest));
    return o;
}

static int ask_status(struct cli *c, const char *addr, Hbc__Frame **out, struct err *e)
{
    Hbc__Frame req = HBC__FRAME__INIT;
    Hbc__ClusterStatusRequest cs = HBC__CLUSTER_STATUS_REQUEST__INIT;
    req.request_id = 1;
    req.body_case = HBC__FRAME__BODY_CLUSTER_STATUS;
    req.cluster_status = &cs;
    int rv = rpc_call(cli_tls(c), addr, &req, c->timeout_ms, out, e);
    if (rv == 0 && (*out)->body_case != HBC__FRAME__BODY_CLUSTER_STATUS_REPLY) {
        const char *msg = (*out)->body_case == HBC__FRAME__BODY_PROPOSE_REPLY
                              ? (*out)->propose_reply->message
                          : (*out)->body_case == HBC__FRAME__BODY_ERROR ? (*out)->error->message
                                                                        : "unexpected reply";
        err_setraw(e, HBC_EUNAVAILABLE, "%s: %s", addr, msg);
        frame_free(*out);
        *out = NULL;
        return HBC_EUNAVAILABLE;
    }
    return rv;
}

/*
 * The placement epoch and how far the move to it has come (groups of every
 * grouped vault settled in it), and the nodes being drained; JSON null when
 * the cluster does not answer the request.
 */
static json_t *placement_json(struct cli *c, const Hbc__ClusterStatusReply *view)
{
    Hbc__Frame req = HBC__FRAME__INIT;
    Hbc__PlacementMapRequest q = HBC__PLACEMENT_MAP_REQUEST__INIT;
    req.request_id = 1;
    req.body_case = HBC__FRAME__BODY_PLACEMENT_MAP;
    req.placement_map = &q;
    Hbc__Frame *r = NULL;
    struct err e;
    if (cli_request(c, &req, false, &r, &e) != 0) {
        return json_null();
    }
    if (r->body_case != HBC__FRAME__BODY_PLACEMENT_MAP_REPLY) {
        frame_free(r);
        return json_null();
    }
    const Hbc__PlacementMapReply *p = r->placement_map_reply;
    json_t *o = json_object();
    json_object_set_new(o, "epoch", json_integer((json_int_t)p->current));
    json_object_set_new(o, "groups_total", json_integer((json_int_t)p->groups_total));
    json_object_set_new(o, "groups_confirmed", json_integer((json_int_t)p->groups_confirmed));
    json_object_set_new(o, "settled", json_boolean(p->groups_confirmed == p->groups_total));
    json_t *draining = json_array();
    for (size_t i = 0; i < view->n_nodes; i++) {
        if (view->nodes[i]->state == HBC__NODE_STATE__NODE_DRAINING) {
            json_array_append_new(draining, json_string(view->nodes[i]->node_id));
        }
    }
    json_object_set_new(o, "draining", draining);
    json_t *down = json_array();
    for (size_t i = 0; i < view->n_nodes; i++) {
        if (view->nodes[i]->state == HBC__NODE_STATE__NODE_DOWN) {
            json_array_append_new(down, json_string(view->nodes[i]->node_id));
        }
    }
    json_object_set_new(o, "down", down);
    frame_free(r);
    return o;
}

static int cluster_status(struct cli *c)
{
    if (cli_tls(c) == NULL) {
        return CLI_USAGE;
    }
    if (c->naddrs == 0) {
        cli_error("no cluster address: give --cluster ADDR (or HBC_CLUSTER)");
        return CLI_USAGE;
    }
    /* The first node that answers tells who the members are. */
    Hbc__Frame *first = NULL;
    struct err e;
    for (int i = 0; i < c->naddrs && first == NULL; i++) {
        if (ask_status(c, c->addrs[i], &first, &e) != 0) {
            cli_error("%s", e.msg);
        }
    }
    if (first == NULL) {
        cli_error("no node of the cluster answered");
        return CLI_UNAVAILABLE;
    }
    const Hbc__ClusterStatusReply *view = first->cluster_status_reply;
    json_t *nodes = json_array();
    json_t *unreachable = json_array();
    uint64_t leader = 0;
    /* Ask every known node, and every address given (a node may be a member the state machine has
     * not recorded). */
    uint64_t seen[256];
    size_t nseen = 0;
    size_t total = view->n_nodes + (size_t)c->naddrs;
    for (size_t i = 0; i < total && nseen < 256; i++) {
        const Hbc__NodeInfo *info = i < view->n_nodes ? view->nodes[i] : NULL;
        const char *addr = info != NULL ? info->data_address : c->addrs[i - view->n_nodes];
        Hbc__Frame *r = NULL;
        if (ask_status(c, addr, &r, &e) != 0) {
            if (info != NULL) {
                json_t *u = json_object();
                json_object_set_new(u, "node", json_string(info->node_id));
                json_object_set_new(u, "address", json_string(info->data_address));
                json_object_set_new(u, "error", json_string(e.msg));
                json_array_append_new(unreachable, u);
            }
            continue;
        }
        const Hbc__ClusterStatusReply *s = r->cluster_status_reply;
        bool dup = false;
        for (size_t k = 0; k < nseen; k++) {
            dup |= seen[k] == s->raft_id;
        }
        if (!dup) {
            seen[nseen++] = s->raft_id;
            if (strcmp(s->state, "leader") == 0) {
                leader = s->raft_id;
            }
            const Hbc__NodeInfo *own = info;
            for (size_t k = 0; own == NULL && k < view->n_nodes; k++) {
                if (view->nodes[k]->raft_id == s->raft_id) {
                    own = view->nodes[k];
                }
            }
            json_array_append_new(nodes, status_json(s, view, own));
        }
        frame_free(r);
    }
    int rv = json_array_size(unreachable) > 0 ? CLI_PARTIAL : CLI_OK;
    json_t *placement = placement_json(c, view);
    if (c->json) {
        json_t *o = json_object();
        json_object_set_new(o, "placement", placement);
        json_object_set_new(o, "leader_raft_id",
                            leader != 0 ? json_integer((json_int_t)leader) : json_null());
        json_object_set_new(o, "members", json_integer((json_int_t)view->n_members));
        json_object_set_new(o, "nodes", nodes);
        json_object_set_new(o, "unreachable", unreachable);
        cli_print_json(o);
    } else {
        printf("%-12s %-10s %-8s %-9s %-5s %6s %8s %8s %8s %s\n", "NODE", "SITE", "ROLE", "STATE",
               "MEDIA", "TERM", "COMMIT", "APPLIED", "CONTACT", "DIGEST");
        size_t k;
        json_t *n;
        json_array_foreach(nodes, k, n)
        {
            json_t *lc = json_object_get(n, "last_contact_ms");
            char contact[32] = "-";
            if (lc != NULL) {
                snprintf(contact, sizeof contact, "%lldms", (long long)json_integer_value(lc));
            }
            const char *site = json_string_value(json_object_get(n, "site"));
            const char *media = json_string_value(json_object_get(n, "media"));
            printf("%-12s %-10s %-8s %-9s %-5s %6lld %8lld %8lld %8s %.16s\n",
                   json_string_value(json_object_get(n, "node")), site != NULL ? site : "?",
                   json_string_value(json_object_get(n, "role")),
                   json_string_value(json_object_get(n, "state")), media != NULL ? media : "?",
                   (long long)json_integer_value(json_object_get(n, "term")),
                   (long long)json_integer_value(json_object_get(n, "commit_index")),
                   (long long)json_integer_value(json_object_get(n, "applied_index")), contact,
                   json_string_value(json_object_get(n, "state_digest")));
        }
        json_array_foreach(unreachable, k, n)
        {
            printf("%-12s unreachable: %s\n", json_string_value(json_object_get(n, "node")),
                   json_string_value(json_object_get(n, "error")));
        }
        if (leader == 0) {
            printf("no leader\n");
        }
        if (json_is_object(placement)) {
            printf("placement epoch %lld: %lld of %lld groups moved to it",
                   (long long)json_integer_value(json_object_get(placement, "epoch")),
                   (long long)json_integer_value(json_object_get(placement, "groups_confirmed")),
                   (long long)json_integer_value(json_object_get(placement, "groups_total")));
            size_t k2;
            json_t *d;
            json_array_foreach(json_object_get(placement, "draining"), k2, d)
            {
                printf("%s %s draining", k2 == 0 ? ";" : ",", json_string_value(d));
            }
            json_array_foreach(json_object_get(placement, "down"), k2, d)
            {
                printf("; %s down", json_string_value(d));
            }
            printf("\n");
        }
        json_decref(placement);
        json_decref(nodes);
        json_decref(unreachable);
    }
    frame_free(first);
    return leader == 0 ? CLI_UNAVAILABLE : rv;
}

/* Print a drain or remove outcome; returns the exit status. */
static int print_outcome(struct cli *c, const char *what, const char *node, Hbc__Frame *r)
{
    int code = r->body_case == HBC__FRAME__BODY_PROPOSE_REPLY ? r->propose_reply->code : HBC_EPROTO;
    const char *msg = r->body_case == HBC__FRAME__BODY_PROPOSE_REPLY ? r->propose_reply->message
                                                                     : "unexpected reply";
    if (c->json) {
        json_t *o = json_object();
        json_object_set_new(o, "node", json_string(node));
        json_object_set_new(o, what, json_boolean(code == 0));
        json_object_set_new(o, "code", json_string(hbc_errname(code)));
        json_object_set_new(o, "message", json_string(msg));
        cli_print_json(o);
    } else if (code == 0) {
        printf("%s %s\n", strcmp(what, "draining") == 0 ? "draining" : "removed", node);
    } else {
        cli_error("%s %s: %s (%s)", strcmp(what, "draining") == 0 ? "drain" : "remove", node, msg,
                  hbc_errname(code));
    }
    return code == 0 ? CLI_OK : CLI_FAILED;
}

/*
 * hbc cluster drain NODE: mark the node DRAINING. The state machine makes a
 * new placement epoch without it; the other nodes' movers copy or rebuild its
 * shards; `hbc cluster status` shows the groups moved; then remove it.
 */
static int cluster_drain(struct cli *c, const char *node)
{
    Hbc__Frame req = HBC__FRAME__INIT;
    Hbc__ProposeRequest pr = HBC__PROPOSE_REQUEST__INIT;
    Hbc__Command cmd = HBC__COMMAND__INIT;
    Hbc__NodeUpdate nu = HBC__NODE_UPDATE__INIT;
    nu.node_id = (char *)node;
    nu.has_state = true;
    nu.state = HBC__NODE_STATE__NODE_DRAINING;
    cmd.cmd_case = HBC__COMMAND__CMD_NODE_UPDATE;
    cmd.node_update = &nu;
    pr.command = &cmd;
    req.request_id = 1;
    req.body_case = HBC__FRAME__BODY_PROPOSE;
    req.propose = &pr;
    Hbc__Frame *r = NULL;
    struct err e;
    if (cli_request(c, &req, true, &r, &e) != 0) {
        cli_error("drain %s: %s", node, e.msg);
        return e.code == HBC_ECONFIG ? CLI_USAGE : CLI_UNAVAILABLE;
    }
    int rv = print_outcome(c, "draining", node, r);
    frame_free(r);
    return rv;
}

static int cluster_remove(struct cli *c, const char *node, bool force)
{
    Hbc__Frame req = HBC__FRAME__INIT;
    Hbc__RemoveRequest rr = HBC__REMOVE_REQUEST__INIT;
    rr.node_id = (char *)node;
    if (force) {
        rr.has_force = true;
        rr.force = true;
        fprintf(stderr,
                "hbc: warning: --force removes %s even if it still holds shards that "
                "the placement needs; copies may drop below their policy\n",
                node);
    }
    req.request_id = 1;
    req.body_case = HBC__FRAME__BODY_REMOVE;
    req.remove = &rr;
    Hbc__Frame *r = NULL;
    struct err e;
    if (cli_request(c, &req, true, &r, &e) != 0) {
        cli_error("remove %s: %s", node, e.msg);
        return e.code == HBC_ECONFIG ? CLI_USAGE : CLI_UNAVAILABLE;
    }
    int rv = print_outcome(c, "removed", node, r);
    frame_free(r);
    return rv;
}

int cli_cluster(struct cli *c, int argc, char **argv)
{
    if (argc >= 1 && strcmp(argv[0], "status") == 0) {
        return cluster_status(c);
    }
    if (argc == 2 && strcmp(argv[0], "drain") == 0) {
        return cluster_drain(c, argv[1]);
    }
    if ((argc == 2 || argc == 3) && strcmp(argv[0], "remove") == 0) {
        bool force = false;
        const char *node = NULL;
        for (int i = 1; i < argc; i++) {
            if (strcmp(argv[i], "--force") == 0) {
                force = true;
            } else {
                node = argv[i];
            }
        }
        if (node != NULL) {
            return cluster_remove(c, node, force);
        }
    }
    cli_error("usage: hbc cluster status | hbc cluster drain NODE | hbc cluster remove NODE "
              "[--force]");
    return CLI_USAGE;
}
