/* hbc gc run|status and hbc forget: garbage collection and forgetting snapshots. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "client/cli.h"
#include "client/client_config.h"
#include "client/snapshot_io.h"
#include "common/alloc.h"
#include "common/frame.h"

#define GC_RUN_TIMEOUT_MS 3600000u /* a cycle over a large vault takes a while */

static void hex(const uint8_t *p, size_t n, char *out)
{
    for (size_t i = 0; i < n; i++) {
        sprintf(out + 2 * i, "%02x", p[i]);
    }
    out[2 * n] = '\0';
}

/* The vault called name: its id into id. Returns 0 or an exit code (message printed). */
static int find_vault(struct cli *c, const char *name, uint8_t id[REPO_ID_LEN])
{
    Hbc__Frame req = HBC__FRAME__INIT;
    Hbc__ListVaultsRequest lv = HBC__LIST_VAULTS_REQUEST__INIT;
    req.request_id = 1;
    req.body_case = HBC__FRAME__BODY_LIST_VAULTS;
    req.list_vaults = &lv;
    Hbc__Frame *rep = NULL;
    struct err e;
    if (cli_request(c, &req, true, &rep, &e) != 0) {
        cli_error("%s", e.msg);
        return CLI_UNAVAILABLE;
    }
    int rv = CLI_FAILED;
    if (rep->body_case != HBC__FRAME__BODY_LIST_VAULTS_REPLY) {
        cli_error("list vaults: unexpected reply");
    } else {
        const Hbc__ListVaultsReply *l = rep->list_vaults_reply;
        for (size_t i = 0; i < l->n_vaults; i++) {
            if (strcmp(l->vaults[i]->name, name) == 0 &&
                l->vaults[i]->vault_id.len == REPO_ID_LEN) {
                memcpy(id, l->vaults[i]->vault_id.data, REPO_ID_LEN);
                rv = CLI_OK;
            }
        }
        if (rv != CLI_OK) {
            cli_error("no vault named '%s'", name);
        }
    }
    frame_free(rep);
    return rv;
}

static json_t *summary_json(const Hbc__GcVaultSummary *s)
{
    char id[2 * REPO_ID_LEN + 1] = "";
    if (s->vault_id.len == REPO_ID_LEN) {
        hex(s->vault_id.data, REPO_ID_LEN, id);
    }
    json_t *o = json_object();
    json_object_set_new(o, "vault", json_string(s->name));
    json_object_set_new(o, "vault_id", json_string(id));
    json_object_set_new(o, "code", json_integer(s->code));
    json_object_set_new(o, "message", json_string(s->message));
    json_object_set_new(o, "snapshots", json_integer((json_int_t)s->snapshots));
    json_object_set_new(o, "live_chunks", json_integer((json_int_t)s->live_chunks));
    json_object_set_new(o, "listed_chunks", json_integer((json_int_t)s->listed_chunks));
    json_object_set_new(o, "young_chunks", json_integer((json_int_t)s->young_chunks));
    json_object_set_new(o, "swept_chunks", json_integer((json_int_t)s->swept_chunks));
    json_object_set_new(o, "sweeps", json_integer((json_int_t)s->sweeps));
    json_object_set_new(o, "mark_index", json_integer((json_int_t)s->mark_index));
    json_object_set_new(o, "nodes_listed", json_integer((json_int_t)s->nodes_listed));
    return o;
}

static int gc_request(struct cli *c, const char *vault, bool status_only)
{
    Hbc__Frame req = HBC__FRAME__INIT;
    Hbc__GcRunRequest gr = HBC__GC_RUN_REQUEST__INIT;
    uint8_t vid[REPO_ID_LEN];
    if (vault != NULL) {
        int rv = find_vault(c, vault, vid);
        if (rv != CLI_OK) {
            return rv;
        }
        gr.has_vault_id = true;
        gr.vault_id = (ProtobufCBinaryData){REPO_ID_LEN, vid};
    }
    gr.has_status_only = true;
    gr.status_only = status_only;
    req.request_id = 1;
    req.body_case = HBC__FRAME__BODY_GC_RUN;
    req.gc_run = &gr;
    Hbc__Frame *rep = NULL;
    struct err e;
    unsigned saved = c->timeout_ms;
    if (!status_only && c->timeout_ms < GC_RUN_TIMEOUT_MS) {
        c->timeout_ms = GC_RUN_TIMEOUT_MS;
    }
    int rv = cli_request(c, &req, true, &rep, &e);
    c->timeout_ms = saved;
    if (rv != 0) {
        cli_error("%s", e.msg);
        return CLI_UNAVAILABLE;
    }
    if (rep->body_case == HBC__FRAME__BODY_ERROR) {
        cli_error("%s", rep->error->message);
        frame_free(rep);
        return CLI_FAILED;
    }
    if (rep->body_case != HBC__FRAME__BODY_GC_RUN_REPLY) {
        cli_error("gc: unexpected reply");
        frame_free(rep);
        return CLI_FAILED;
    }
    const Hbc__GcRunReply *r = rep->gc_run_reply;
    if (c->json) {
        json_t *o = json_object();
        json_object_set_new(o, "code", json_integer(r->code));
        json_object_set_new(o, "error", json_string(r->code != 0 ? hbc_errname(r->code) : ""));
        json_object_set_new(o, "message", json_string(r->message));
        json_object_set_new(o, "started_ms", json_integer((json_int_t)r->started_ms));
        json_object_set_new(o, "duration_ms", json_integer((json_int_t)r->duration_ms));
        json_object_set_new(o, "grace_ms", json_integer((json_int_t)r->grace_ms));
        json_t *a = json_array();
        for (size_t i = 0; i < r->n_vaults; i++) {
            json_array_append_new(a, summary_json(r->vaults[i]));
        }
        json_object_set_new(o, "vaults", a);
        cli_print_json(o);
    } else {
        printf("garbage collection: %s (%llu ms, grace %llu s)\n", r->message,
               (unsigned long long)r->duration_ms, (unsigned long long)(r->grace_ms / 1000));
        for (size_t i = 0; i < r->n_vaults; i++) {
            const Hbc__GcVaultSummary *s = r->vaults[i];
            printf("  %s: %llu snapshots, %llu live chunks, %llu listed, %llu young, %llu swept "
                   "(%llu sweeps)%s%s\n",
                   s->name, (unsigned long long)s->snapshots, (unsigned long long)s->live_chunks,
                   (unsigned long long)s->listed_chunks, (unsigned long long)s->young_chunks,
                   (unsigned long long)s->swept_chunks, (unsigned long long)s->sweeps,
                   s->code != 0 ? ": " : "", s->code != 0 ? s->message : "");
        }
    }
    int code = r->code;
    frame_free(rep);
    if (code == HBC_EDENIED || code == HBC_EINVAL || code == HBC_ENOTFOUND) {
        if (!c->json) {
            cli_error("gc: %s", hbc_strerror(code));
        }
        return CLI_FAILED;
    }
    return code == 0 ? CLI_OK : CLI_FAILED;
}

static const char gc_help[] =
    "Usage:\n"
    "  hbc gc run [--vault NAME]   run one garbage collection cycle now (admin): the\n"
    "                              leader marks every chunk a present snapshot references,\n"
    "                              and sweeps the rest that is older than [gc] grace\n"
    "  hbc gc status               the last cycle's summary per vault\n"
    "Nodes delete only for sweeps committed through Raft, after checking them against\n"
    "their own state (docs/retention.md). --json: one object per vault.\n";

static const char forget_help[] =
    "Usage:\n"
    "  hbc forget SNAP [--vault NAME]   remove a snapshot whose lock has expired (admin or\n"
    "                                   backup role); refused, with the state machine's\n"
    "                                   reason, while a retention lock or legal hold holds.\n"
    "Its chunks are freed by the next garbage collection (hbc gc run).\n"
    "SNAP: an id prefix (4+ hex digits) or latest.\n";

static bool wants_help(int argc, char **argv)
{
    for (int i = 0; i < argc; i++) {
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            return true;
        }
    }
    return false;
}

int cli_gc(struct cli *c, int argc, char **argv)
{
    const char *usage = "usage: hbc gc run [--vault NAME] | hbc gc status";
    if (wants_help(argc, argv)) {
        fputs(gc_help, stdout);
        return CLI_OK;
    }
    if (argc < 1 || (strcmp(argv[0], "run") != 0 && strcmp(argv[0], "status") != 0)) {
        cli_error("%s", usage);
        return CLI_USAGE;
    }
    bool status = strcmp(argv[0], "status") == 0;
    const char *vault = NULL;
    for (int i = 1; i < argc; i++) {
        if (!status && strcmp(argv[i], "--vault") == 0 && i + 1 < argc) {
            vault = argv[++i];
        } else {
            cli_error("unknown argument '%s' (%s)", argv[i], usage);
            return CLI_USAGE;
        }
    }
    if (cli_tls(c) == NULL) {
        return CLI_USAGE;
    }
    return gc_request(c, vault, status);
}

int cli_forget(struct cli *c, int argc, char **argv)
{
    const char *usage = "usage: hbc forget SNAP [--vault NAME]";
    if (wants_help(argc, argv)) {
        fputs(forget_help, stdout);
        return CLI_OK;
    }
    const char *spec = NULL;
    const char *vflag = NULL;
    for (int i = 0; i < argc; i++) {
        if (strcmp(argv[i], "--vault") == 0 && i + 1 < argc) {
            vflag = argv[++i];
        } else if (argv[i][0] != '-' && spec == NULL) {
            spec = argv[i];
        } else {
            cli_error("unknown argument '%s' (%s)", argv[i], usage);
            return CLI_USAGE;
        }
    }
    const char *vault = cli_vault_name(vflag);
    if (spec == NULL || vault == NULL) {
        cli_error("%s%s", usage,
                  vault == NULL ? " (no vault: give --vault NAME or HBC_VAULT)" : "");
        return CLI_USAGE;
    }
    if (cli_tls(c) == NULL) {
        return CLI_USAGE;
    }
    uint8_t vid[REPO_ID_LEN];
    int rv = find_vault(c, vault, vid);
    if (rv != CLI_OK) {
        return rv;
    }
    /* Find the snapshot (current read), then propose the forget; the state machine decides. */
    Hbc__Frame req = HBC__FRAME__INIT;
    Hbc__ListSnapshotsRequest ls = HBC__LIST_SNAPSHOTS_REQUEST__INIT;
    ls.has_vault_id = true;
    ls.vault_id = (ProtobufCBinaryData){REPO_ID_LEN, vid};
    ls.has_current = true;
    ls.current = true;
    req.request_id = 1;
    req.body_case = HBC__FRAME__BODY_LIST_SNAPSHOTS;
    req.list_snapshots = &ls;
    Hbc__Frame *rep = NULL;
    struct err e;
    if (cli_request(c, &req, true, &rep, &e) != 0) {
        cli_error("%s", e.msg);
        return CLI_UNAVAILABLE;
    }
    if (rep->body_case != HBC__FRAME__BODY_LIST_SNAPSHOTS_REPLY) {
        cli_error("list snapshots: unexpected reply");
        frame_free(rep);
        return CLI_FAILED;
    }
    const Hbc__ListSnapshotsReply *l = rep->list_snapshots_reply;
    const Hbc__SnapshotInfo *snap = NULL;
    if (snap_find(l->snapshots, l->n_snapshots, spec, &snap, &e) != 0) {
        cli_error("%s", e.msg);
        frame_free(rep);
        return CLI_FAILED;
    }
    uint8_t sid[REPO_ID_LEN];
    memcpy(sid, snap->snapshot_id.data, REPO_ID_LEN);
    frame_free(rep);
    char hexid[2 * REPO_ID_LEN + 1];
    hex(sid, REPO_ID_LEN, hexid);

    Hbc__SnapshotForget sf = HBC__SNAPSHOT_FORGET__INIT;
    sf.snapshot_id = (ProtobufCBinaryData){REPO_ID_LEN, sid};
    Hbc__Command cmd = HBC__COMMAND__INIT;
    cmd.cmd_case = HBC__COMMAND__CMD_SNAPSHOT_FORGET;
    cmd.snapshot_forget = &sf;
    Hbc__ProposeRequest pr = HBC__PROPOSE_REQUEST__INIT;
    pr.command = &cmd;
    hbc__frame__init(&req);
    req.request_id = 2;
    req.body_case = HBC__FRAME__BODY_PROPOSE;
    req.propose = &pr;
    if (cli_request(c, &req, true, &rep, &e) != 0) {
        cli_error("%s", e.msg);
        return CLI_UNAVAILABLE;
    }
    if (rep->body_case != HBC__FRAME__BODY_PROPOSE_REPLY) {
        cli_error("forget: unexpected reply");
        frame_free(rep);
        return CLI_FAILED;
    }
    int code = rep->propose_reply->code;
    const char *msg = rep->propose_reply->message;
    if (c->json) {
        json_t *o = json_object();
        json_object_set_new(o, "snapshot", json_string(hexid));
        json_object_set_new(o, "forgotten", json_boolean(code == 0));
        json_object_set_new(o, "code", json_integer(code));
        json_object_set_new(o, "error", json_string(code != 0 ? hbc_errname(code) : ""));
        json_object_set_new(o, "message", json_string(msg != NULL ? msg : ""));
        if (rep->propose_reply->has_index) {
            json_object_set_new(o, "index", json_integer((json_int_t)rep->propose_reply->index));
        }
        cli_print_json(o);
    } else if (code == 0) {
        printf("forgot snapshot %s; its chunks go at the next garbage collection unless another "
               "snapshot uses them\n",
               hexid);
    } else {
        cli_error("forget %s refused: %s", hexid, msg != NULL ? msg : hbc_strerror(code));
    }
    frame_free(rep);
    return code == 0 ? CLI_OK : code == HBC_EUNAVAILABLE ? CLI_UNAVAILABLE : CLI_FAILED;
}
