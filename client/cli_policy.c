/* hbc policy check: the 3-2-1-1-0 digits of each vault's policy on the cluster's topology. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "client/cli.h"
#include "client/client_config.h"
#include "client/policy.h"
#include "common/alloc.h"
#include "common/frame.h"

static int node_cmp(const void *a, const void *b)
{
    const struct policy_node *x = a, *y = b;
    return strcmp(x->node_id, y->node_id);
}

void cli_topology_free(struct cli_topology *t)
{
    hbc_free(t->nodes);
    if (t->reply != NULL) {
        frame_free(t->reply);
    }
    memset(t, 0, sizeof *t);
}

int cli_topology_get(struct cli *c, struct cli_topology *t, struct err *e)
{
    memset(t, 0, sizeof *t);
    t->first_site = "";
    Hbc__Frame req = HBC__FRAME__INIT;
    Hbc__ClusterStatusRequest cs = HBC__CLUSTER_STATUS_REQUEST__INIT;
    req.request_id = 1;
    req.body_case = HBC__FRAME__BODY_CLUSTER_STATUS;
    req.cluster_status = &cs;
    int rv = cli_request(c, &req, false, &t->reply, e);
    if (rv != 0) {
        return rv;
    }
    if (t->reply->body_case != HBC__FRAME__BODY_CLUSTER_STATUS_REPLY) {
        return err_setraw(e, HBC_EPROTO, "cluster status: unexpected reply");
    }
    const Hbc__ClusterStatusReply *s = t->reply->cluster_status_reply;
    if (s->n_nodes > POLICY_MAX_NODES) {
        return err_setraw(e, HBC_EPROTO, "cluster status: %zu nodes (at most %d)", s->n_nodes,
                          POLICY_MAX_NODES);
    }
    t->nodes = hbc_calloc(s->n_nodes + 1, sizeof *t->nodes);
    if (t->nodes == NULL) {
        return err_set(e, HBC_ENOMEM, "node list");
    }
    for (size_t i = 0; i < s->n_nodes; i++) {
        const Hbc__NodeInfo *x = s->nodes[i];
        if (strcmp(x->node_id, s->node_id) == 0) {
            t->first_site = x->site;
        }
        /* The current placement epoch's topology: draining nodes are leaving it. */
        if (x->state == HBC__NODE_STATE__NODE_JOINING ||
            x->state == HBC__NODE_STATE__NODE_DRAINING) {
            continue; /* placement leaves joining nodes out */
        }
        t->nodes[t->n++] = (struct policy_node){.node_id = x->node_id,
                                                .site = x->site,
                                                .region = x->region,
                                                .media = x->media,
                                                .worm = x->worm,
                                                .up = x->state == HBC__NODE_STATE__NODE_UP,
                                                .capacity = x->capacity_bytes};
    }
    qsort(t->nodes, t->n, sizeof *t->nodes, node_cmp);
    for (size_t i = 1; i < t->n; i++) {
        if (strcmp(t->nodes[i - 1].node_id, t->nodes[i].node_id) == 0) {
            return err_setraw(e, HBC_EPROTO, "the node list names %s twice", t->nodes[i].node_id);
        }
    }
    return 0;
}

/* The policy of vault v: its own, or for an older vault copies of k+m with no rules. */
static int vault_policy(const Hbc__VaultInfo *v, struct policy *p, struct err *e)
{
    if (v->policy != NULL) {
        return policy_from_proto(v->policy, p, e);
    }
    memset(p, 0, sizeof *p);
    p->ncopies = v->copies;
    for (unsigned c = 0; c < v->copies && c < POLICY_MAX_COPIES; c++) {
        p->copies[c] = (struct policy_copy){.site = "any", .media = "any", .k = v->k, .m = v->m};
    }
    return policy_validate(p, e);
}

/* The latest restore test of vault v among the listed ones (tests may be NULL: none known). */
static struct policy_restore latest_restore(const Hbc__ListRestoreTestsReply *tests,
                                            const Hbc__VaultInfo *v)
{
    struct policy_restore out = {0};
    uint64_t best = 0;
    for (size_t i = 0; tests != NULL && i < tests->n_tests; i++) {
        const Hbc__RestoreTestInfo *t = tests->tests[i];
        if (t->vault_id.len != v->vault_id.len ||
            memcmp(t->vault_id.data, v->vault_id.data, v->vault_id.len) != 0) {
            continue;
        }
        if (!out.known || t->index > best) {
            best = t->index;
            out.known = true;
            out.passed = t->result == HBC__RESTORE_TEST_RESULT__RESTORE_TEST_PASSED;
            out.errors = t->errors;
        }
    }
    return out;
}

static json_t *report_json(const Hbc__VaultInfo *v, const struct policy *p, const char *home,
                           const struct policy_report *r)
{
    json_t *o = json_object();
    json_object_set_new(o, "vault", json_string(v->name));
    json_object_set_new(o, "policy", p->name[0] != '\0' ? json_string(p->name) : json_null());
    json_object_set_new(o, "home_site", json_string(home));
    json_object_set_new(o, "pass", json_boolean(r->all_pass));
    json_t *digits = json_array();
    for (int d = 0; d < POLICY_DIGITS; d++) {
        json_t *x = json_object();
        json_object_set_new(x, "digit", json_string(policy_digit_name((enum policy_digit)d)));
        json_object_set_new(x, "pass", json_boolean(r->pass[d]));
        json_object_set_new(x, "reason", json_string(r->reason[d]));
        json_array_append_new(digits, x);
    }
    json_object_set_new(o, "digits", digits);
    json_t *copies = json_array();
    for (unsigned c = 0; c < r->ncopies; c++) {
        const struct policy_tolerance *t = &r->copy[c];
        json_t *x = json_object();
        json_object_set_new(x, "site", json_string(p->copies[c].site));
        json_object_set_new(x, "media", json_string(p->copies[c].media));
        json_object_set_new(x, "immutable", json_boolean(p->copies[c].immutable));
        json_object_set_new(x, "k", json_integer(p->copies[c].k));
        json_object_set_new(x, "m", json_integer(p->copies[c].m));
        json_object_set_new(x, "eligible_nodes", json_integer(t->eligible));
        json_object_set_new(x, "sites", json_integer(t->sites));
        json_object_set_new(x, "distinct_nodes", json_boolean(t->distinct));
        json_object_set_new(x, "survives_nodes", json_integer(t->nodes_lost));
        json_object_set_new(x, "survives_sites", json_integer(t->sites_lost));
        json_object_set_new(x, "nodes_down", json_integer(t->nodes_down));
        json_object_set_new(x, "restorable", json_boolean(t->restorable));
        json_array_append_new(copies, x);
    }
    json_object_set_new(o, "copies", copies);
    return o;
}

static void report_text(const Hbc__VaultInfo *v, const struct policy *p, const char *home,
                        const struct policy_report *r)
{
    printf("vault %s: policy %s, home site %s: %s\n", v->name,
           p->name[0] != '\0' ? p->name : "(none: copies without rules)", home,
           r->all_pass ? "PASS" : "FAIL");
    for (int d = 0; d < POLICY_DIGITS; d++) {
        printf("  %-12s %s  %s\n", policy_digit_name((enum policy_digit)d),
               r->pass[d] ? "pass" : "FAIL", r->reason[d]);
    }
    for (unsigned c = 0; c < r->ncopies; c++) {
        const struct policy_tolerance *t = &r->copy[c];
        printf("  copy %u (%s, media %s%s, %u+%u): %u node%s in %u site%s, survives %u node%s "
               "and %u site%s%s\n",
               c, p->copies[c].site, p->copies[c].media,
               p->copies[c].immutable ? ", immutable" : "", p->copies[c].k, p->copies[c].m,
               t->eligible, t->eligible == 1 ? "" : "s", t->sites, t->sites == 1 ? "" : "s",
               t->nodes_lost, t->nodes_lost == 1 ? "" : "s", t->sites_lost,
               t->sites_lost == 1 ? "" : "s", t->nodes_down > 0 ? " (nodes down now)" : "");
    }
}

static int policy_check_cmd(struct cli *c, int argc, char **argv)
{
    const char *name = NULL;
    for (int i = 0; i < argc; i++) {
        if (strcmp(argv[i], "--json") == 0) {
            c->json = true;
        } else if (argv[i][0] != '-' && name == NULL) {
            name = argv[i];
        } else {
            cli_error("usage: hbc policy check [VAULT] [--json]");
            return CLI_USAGE;
        }
    }
    if (name == NULL) {
        name = cli_vault_name(NULL); /* HBC_VAULT; NULL: every vault */
    }
    struct err e;
    struct cli_topology topo;
    int rv = cli_topology_get(c, &topo, &e);
    if (rv != 0) {
        cli_topology_free(&topo);
        cli_error("%s", e.msg);
        return cli_exit_code(rv);
    }
    Hbc__Frame req = HBC__FRAME__INIT;
    Hbc__ListVaultsRequest lv = HBC__LIST_VAULTS_REQUEST__INIT;
    lv.has_current = true;
    lv.current = true;
    req.request_id = 2;
    req.body_case = HBC__FRAME__BODY_LIST_VAULTS;
    req.list_vaults = &lv;
    Hbc__Frame *reply = NULL;
    rv = cli_request(c, &req, true, &reply, &e);
    if (rv == 0 && reply->body_case != HBC__FRAME__BODY_LIST_VAULTS_REPLY) {
        rv = err_setraw(&e, HBC_EPROTO, "list vaults: unexpected reply");
    }
    if (rv != 0) {
        if (reply != NULL) {
            frame_free(reply);
        }
        cli_topology_free(&topo);
        cli_error("%s", e.msg);
        return cli_exit_code(rv);
    }
    const Hbc__ListVaultsReply *vs = reply->list_vaults_reply;
    /* Restore tests: a node that cannot list them leaves the 0 digit unknown. */
    Hbc__ListRestoreTestsRequest lr = HBC__LIST_RESTORE_TESTS_REQUEST__INIT;
    lr.has_current = true;
    lr.current = true;
    req.request_id = 3;
    req.body_case = HBC__FRAME__BODY_LIST_RESTORE_TESTS;
    req.list_restore_tests = &lr;
    Hbc__Frame *tests = NULL;
    struct err te;
    if (cli_request(c, &req, true, &tests, &te) != 0) {
        tests = NULL;
    }
    const Hbc__ListRestoreTestsReply *tr =
        tests != NULL && tests->body_case == HBC__FRAME__BODY_LIST_RESTORE_TESTS_REPLY
            ? tests->list_restore_tests_reply
            : NULL;
    json_t *arr = json_array();
    int exit = CLI_OK;
    size_t checked = 0;
    for (size_t i = 0; i < vs->n_vaults; i++) {
        const Hbc__VaultInfo *v = vs->vaults[i];
        if (name != NULL && strcmp(v->name, name) != 0) {
            continue;
        }
        checked++;
        struct policy p;
        const char *home = v->home_site != NULL ? v->home_site : topo.first_site;
        struct policy_report r;
        rv = vault_policy(v, &p, &e);
        if (rv == 0) {
            struct policy_restore rt = latest_restore(tr, v);
            rv = policy_check(&p, home, topo.nodes, topo.n, &rt, &r, &e);
        }
        if (rv != 0) {
            cli_error("vault %s: %s", v->name, e.msg);
            exit = CLI_FAILED;
            continue;
        }
        if (c->json) {
            json_array_append_new(arr, report_json(v, &p, home, &r));
        } else {
            report_text(v, &p, home, &r);
        }
        if (!r.all_pass) {
            exit = CLI_FAILED;
        }
    }
    if (name != NULL && checked == 0) {
        cli_error("no vault named '%s'", name);
        exit = CLI_FAILED;
    }
    if (c->json) {
        json_t *o = json_object();
        json_object_set_new(o, "vaults", arr);
        cli_print_json(o);
    } else {
        json_decref(arr);
    }
    if (tests != NULL) {
        frame_free(tests);
    }
    frame_free(reply);
    cli_topology_free(&topo);
    return exit;
}

int cli_policy(struct cli *c, int argc, char **argv)
{
    if (argc >= 1 && strcmp(argv[0], "check") == 0) {
        return policy_check_cmd(c, argc - 1, argv + 1);
    }
    cli_error("usage: hbc policy check [VAULT] [--json]");
    return CLI_USAGE;
}
