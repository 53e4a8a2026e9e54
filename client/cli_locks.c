/* hbc lock|hold|approvals|role: retention locks, legal holds, governance approvals and roles. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "client/cli.h"
#include "client/snapshot_io.h"
#include "common/alloc.h"
#include "common/frame.h"

/*
 * Every command here is one Raft command proposed to the leader
 * (cli_request() follows redirects); the state machine decides and says
 * why when it refuses (node/fsm_locks.c). Output: a line for people on
 * stdout, or with --json one document {"ok":..., "code":..., "message":...,
 * ...}; a refusal goes to stderr as "hbc: COMMAND: refused: REASON (CODE)"
 * too. Exit codes: 0 done, 1 refused or failed, 2 bad command line, 4 no
 * leader reachable.
 */

#define MS_PER_DAY 86400000ll

static const char *const role_names[] = {NULL,      "admin",   "backup",
                                         "restore", "auditor", "security-officer"};

static void hex(const uint8_t *p, size_t n, char *out)
{
    for (size_t i = 0; i < n; i++) {
        sprintf(out + 2 * i, "%02x", p[i]);
    }
    out[2 * n] = '\0';
}

/* "2026-12-31", "2026-12-31T12:00:00Z", "+30d", "+12h" (from this machine's clock), "@MS". */
static int parse_date(const char *s, uint64_t *out)
{
    char *end = NULL;
    errno = 0;
    if (s[0] == '@') {
        unsigned long long v = strtoull(s + 1, &end, 10);
        if (errno != 0 || end == s + 1 || *end != '\0' || v == 0) {
            return -1;
        }
        *out = v;
        return 0;
    }
    if (s[0] == '+') {
        long long n = strtoll(s + 1, &end, 10);
        if (errno != 0 || end == s + 1 || n < 0 || n > 36500LL * 24 ||
            (strcmp(end, "d") != 0 && strcmp(end, "h") != 0)) {
            return -1;
        }
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        uint64_t now = (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
        *out = now + (uint64_t)n * (uint64_t)(*end == 'd' ? MS_PER_DAY : MS_PER_DAY / 24);
        return 0;
    }
    struct tm tm;
    memset(&tm, 0, sizeof tm);
    const char *rest = strptime(s, "%Y-%m-%d", &tm);
    if (rest == NULL) {
        return -1;
    }
    if (*rest == 'T') {
        rest = strptime(rest + 1, "%H:%M:%S", &tm);
        if (rest == NULL || (*rest != 'Z' && *rest != '\0') || (*rest == 'Z' && rest[1] != '\0')) {
            return -1;
        }
    } else if (*rest != '\0') {
        return -1;
    }
    time_t t = timegm(&tm);
    if (t <= 0) {
        return -1;
    }
    *out = (uint64_t)t * 1000;
    return 0;
}

static void time_text(uint64_t ms, char *out, size_t cap)
{
    time_t t = (time_t)(ms / 1000);
    struct tm tm;
    if (ms == 0 || gmtime_r(&t, &tm) == NULL) {
        snprintf(out, cap, "-");
        return;
    }
    strftime(out, cap, "%Y-%m-%dT%H:%M:%SZ", &tm);
}

/*
 * Find the snapshot spec names (an id prefix of at least 4 hex digits, or
 * "latest") among every vault's snapshots; id gets its 16 bytes. Prints why
 * and returns an exit code on failure.
 */
static int snapshot_resolve(struct cli *c, const char *spec, uint8_t id[16])
{
    Hbc__Frame req = HBC__FRAME__INIT;
    Hbc__ListSnapshotsRequest q = HBC__LIST_SNAPSHOTS_REQUEST__INIT;
    q.has_current = true;
    q.current = true;
    req.request_id = 1;
    req.body_case = HBC__FRAME__BODY_LIST_SNAPSHOTS;
    req.list_snapshots = &q;
    Hbc__Frame *r = NULL;
    struct err e;
    int rv = cli_request(c, &req, true, &r, &e);
    if (rv != 0) {
        cli_error("list snapshots: %s", e.msg);
        return rv == HBC_ECONFIG ? CLI_USAGE : CLI_UNAVAILABLE;
    }
    if (r->body_case != HBC__FRAME__BODY_LIST_SNAPSHOTS_REPLY) {
        cli_error("list snapshots: %s",
                  r->body_case == HBC__FRAME__BODY_PROPOSE_REPLY ? r->propose_reply->message
                  : r->body_case == HBC__FRAME__BODY_ERROR       ? r->error->message
                                                                 : "unexpected reply");
        frame_free(r);
        return CLI_UNAVAILABLE;
    }
    Hbc__ListSnapshotsReply *l = r->list_snapshots_reply;
    const Hbc__SnapshotInfo *s = NULL;
    rv = snap_find(l->snapshots, l->n_snapshots, spec, &s, &e);
    if (rv == 0 && s->snapshot_id.len != 16) {
        rv = err_setraw(&e, HBC_ECORRUPT, "snapshot id of %zu bytes", s->snapshot_id.len);
    }
    if (rv != 0) {
        cli_error("snapshot %s: %s", spec, e.msg);
        frame_free(r);
        return rv == HBC_ENOTFOUND ? CLI_FAILED : CLI_USAGE;
    }
    memcpy(id, s->snapshot_id.data, 16);
    frame_free(r);
    return CLI_OK;
}

/*
 * Propose cmd and report the outcome under the name what; extra (owned,
 * may be NULL) is merged into the JSON document. *index gets the Raft index
 * on success (may be NULL). Returns the exit code.
 */
static int propose(struct cli *c, const char *what, Hbc__Command *cmd, json_t *extra,
                   uint64_t *index)
{
    Hbc__Frame req = HBC__FRAME__INIT;
    Hbc__ProposeRequest pr = HBC__PROPOSE_REQUEST__INIT;
    pr.command = cmd;
    req.request_id = 1;
    req.body_case = HBC__FRAME__BODY_PROPOSE;
    req.propose = &pr;
    Hbc__Frame *r = NULL;
    struct err e;
    int rv = cli_request(c, &req, true, &r, &e);
    int code;
    const char *msg;
    uint64_t idx = 0;
    if (rv != 0) {
        code = rv;
        msg = e.msg;
    } else if (r->body_case == HBC__FRAME__BODY_PROPOSE_REPLY) {
        code = r->propose_reply->code;
        msg = r->propose_reply->message;
        idx = r->propose_reply->has_index ? r->propose_reply->index : 0;
    } else if (r->body_case == HBC__FRAME__BODY_ERROR) {
        code = HBC_EPROTO;
        msg = r->error->message;
    } else {
        code = HBC_EPROTO;
        msg = "unexpected reply";
    }
    /* The state machine's reason comes as "refused by the state machine: REASON". */
    const char *reason = msg;
    const char *p = strstr(msg, "refused by the state machine: ");
    if (p != NULL) {
        reason = p + strlen("refused by the state machine: ");
    }
    if (c->json) {
        json_t *o = json_object();
        json_object_set_new(o, "command", json_string(what));
        json_object_set_new(o, "ok", json_boolean(code == 0));
        json_object_set_new(o, "code", json_string(code == 0 ? "OK" : hbc_errname(code)));
        json_object_set_new(o, "message", json_string(code == 0 ? "" : reason));
        if (idx != 0) {
            json_object_set_new(o, "index", json_integer((json_int_t)idx));
        }
        if (extra != NULL) {
            json_object_update(o, extra);
        }
        cli_print_json(o);
    }
    json_decref(extra);
    if (code != 0) {
        cli_error("%s: refused: %s (%s)", what, reason, hbc_errname(code));
    }
    if (index != NULL) {
        *index = idx;
    }
    frame_free(r);
    if (code == 0) {
        return CLI_OK;
    }
    if (rv != 0) {
        return rv == HBC_ECONFIG ? CLI_USAGE : CLI_UNAVAILABLE;
    }
    return code == HBC_ENOTLEADER || code == HBC_EUNAVAILABLE ? CLI_UNAVAILABLE : CLI_FAILED;
}

static bool wants_help(int argc, char **argv)
{
    for (int i = 0; i < argc; i++) {
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            return true;
        }
    }
    return false;
}

/* SNAP [--until DATE] [--case REF]; flags not wanted are refused. Returns -1 on a usage error. */
struct snap_args {
    const char *snap;  /* the snapshot spec */
    const char *until; /* --until */
    const char *cref;  /* --case */
};

static int snap_args(int argc, char **argv, bool until, bool cref, struct snap_args *a)
{
    memset(a, 0, sizeof *a);
    for (int i = 0; i < argc; i++) {
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (until && strcmp(argv[i], "--until") == 0 && v != NULL) {
            a->until = argv[++i];
        } else if (cref && strcmp(argv[i], "--case") == 0 && v != NULL) {
            a->cref = argv[++i];
        } else if (strcmp(argv[i], "--json") == 0) {
            continue;
        } else if (argv[i][0] != '-' && a->snap == NULL) {
            a->snap = argv[i];
        } else {
            cli_error("unknown argument '%s'", argv[i]);
            return -1;
        }
    }
    if (a->snap == NULL || (until && a->until == NULL)) {
        return -1;
    }
    return 0;
}

static bool json_flag(int argc, char **argv)
{
    for (int i = 0; i < argc; i++) {
        if (strcmp(argv[i], "--json") == 0) {
            return true;
        }
    }
    return false;
}

/* ---- hbc lock ---- */

static const char lock_usage[] =
    "Usage:\n"
    "  hbc lock extend SNAP --until DATE      retain SNAP until a later DATE (admin or\n"
    "                                         security officer; earlier dates are refused)\n"
    "  hbc lock shorten SNAP --until DATE     ask to set an earlier retain-until on a\n"
    "                                         governance-locked SNAP (security officer); a\n"
    "                                         different officer must approve it\n"
    "  hbc lock forget-early SNAP             ask to forget a governance-locked SNAP before\n"
    "                                         its retain-until (security officer; a different\n"
    "                                         officer must approve)\n"
    "SNAP: an id prefix (4+ hex digits) or latest. DATE: 2027-01-31, 2027-01-31T12:00:00Z\n"
    "(UTC), +30d or +12h (from this machine's clock) or @MS (ms since the epoch).\n"
    "Requests print their request number: approve with `hbc approvals approve N`.\n";

/* ---- hbc hold ---- */

static const char hold_usage[] =
    "Usage:\n"
    "  hbc hold set SNAP [--case REF]   put SNAP under legal hold (security officer)\n"
    "  hbc hold release SNAP            ask to lift the hold (security officer); a\n"
    "                                   different officer must approve the request\n"
    "SNAP: an id prefix (4+ hex digits) or latest.\n";

/* One subcommand of hbc lock or hbc hold: a Raft command about one snapshot. */
struct snap_action {
    const char *group;              /* "lock" or "hold" */
    const char *sub;                /* its subcommand */
    const char *name;               /* "lock extend": messages and the JSON "command" */
    bool until;                     /* takes (and needs) --until DATE */
    bool cref;                      /* takes --case REF */
    Hbc__Command__CmdCase cmd_case; /* the command proposed */
    Hbc__BypassAction bypass;       /* with CMD_GOVERNANCE_BYPASS: which bypass */
};

static const struct snap_action snap_actions[] = {
    {"lock", "extend", "lock extend", true, false, HBC__COMMAND__CMD_LOCK_EXTEND, 0},
    {"lock", "shorten", "lock shorten", true, false, HBC__COMMAND__CMD_GOVERNANCE_BYPASS,
     HBC__BYPASS_ACTION__BYPASS_SHORTEN},
    {"lock", "forget-early", "lock forget-early", false, false, HBC__COMMAND__CMD_GOVERNANCE_BYPASS,
     HBC__BYPASS_ACTION__BYPASS_FORGET},
    {"hold", "set", "hold set", false, true, HBC__COMMAND__CMD_LEGAL_HOLD_SET, 0},
    {"hold", "release", "hold release", false, false, HBC__COMMAND__CMD_LEGAL_HOLD_RELEASE, 0},
};

/* The command bodies a snap_action may propose (one at a time). */
union snap_body {
    Hbc__LockExtend extend;               /* lock extend */
    Hbc__GovernanceBypassRequest bypass;  /* lock shorten, lock forget-early */
    Hbc__LegalHoldSet hold;               /* hold set */
    Hbc__LegalHoldReleaseRequest release; /* hold release */
};

/* Point cmd at body, filled for act on snapshot id (borrowed; both must outlive cmd). */
static void snap_command(const struct snap_action *act, uint8_t id[16], uint64_t until,
                         const char *cref, union snap_body *body, Hbc__Command *cmd)
{
    ProtobufCBinaryData sid = {.data = id, .len = 16};
    cmd->cmd_case = act->cmd_case;
    switch (act->cmd_case) {
    case HBC__COMMAND__CMD_LOCK_EXTEND:
        body->extend = (Hbc__LockExtend)HBC__LOCK_EXTEND__INIT;
        body->extend.snapshot_id = sid;
        body->extend.retain_until_ms = until;
        cmd->lock_extend = &body->extend;
        break;
    case HBC__COMMAND__CMD_GOVERNANCE_BYPASS:
        body->bypass = (Hbc__GovernanceBypassRequest)HBC__GOVERNANCE_BYPASS_REQUEST__INIT;
        body->bypass.snapshot_id = sid;
        body->bypass.action = act->bypass;
        if (act->bypass == HBC__BYPASS_ACTION__BYPASS_SHORTEN) {
            body->bypass.has_retain_until_ms = true;
            body->bypass.retain_until_ms = until;
        }
        cmd->governance_bypass = &body->bypass;
        break;
    case HBC__COMMAND__CMD_LEGAL_HOLD_SET:
        body->hold = (Hbc__LegalHoldSet)HBC__LEGAL_HOLD_SET__INIT;
        body->hold.snapshot_id = sid;
        body->hold.case_ref = (char *)cref;
        cmd->legal_hold_set = &body->hold;
        break;
    default: /* the table holds no other command */
        body->release = (Hbc__LegalHoldReleaseRequest)HBC__LEGAL_HOLD_RELEASE_REQUEST__INIT;
        body->release.snapshot_id = sid;
        cmd->legal_hold_release = &body->release;
        break;
    }
}

/* The line for people once act was done: index is the request number of an approval. */
static void snap_print(const struct snap_action *act, const char *idhex, const char *when,
                       uint64_t index)
{
    unsigned long long n = (unsigned long long)index;
    switch (act->cmd_case) {
    case HBC__COMMAND__CMD_LOCK_EXTEND:
        printf("snapshot %s retained until %s\n", idhex, when);
        break;
    case HBC__COMMAND__CMD_GOVERNANCE_BYPASS: {
        bool shorten = act->bypass == HBC__BYPASS_ACTION__BYPASS_SHORTEN;
        printf("request %llu: %s snapshot %s%s%s; a different security officer must run "
               "`hbc approvals approve %llu`\n",
               n, shorten ? "shorten the lock of" : "forget", idhex, shorten ? " to " : "",
               shorten ? when : "", n);
        break;
    }
    case HBC__COMMAND__CMD_LEGAL_HOLD_SET:
        printf("snapshot %s is under legal hold\n", idhex);
        break;
    default:
        printf("request %llu: release the legal hold on %s; a different security officer must "
               "run `hbc approvals approve %llu`\n",
               n, idhex, n);
        break;
    }
}

/*
 * With no arguments print usage to stderr (*rv CLI_USAGE), with --help to
 * stdout (*rv CLI_OK); returns whether it did either.
 */
static bool usage_or_help(int argc, char **argv, const char *usage, int *rv)
{
    if (argc >= 1 && !wants_help(argc, argv)) {
        return false;
    }
    fputs(usage, argc < 1 ? stderr : stdout);
    *rv = argc < 1 ? CLI_USAGE : CLI_OK;
    return true;
}

/* hbc lock|hold SUB SNAP [--until DATE] [--case REF]: the subcommands of snap_actions[]. */
static int snap_cmd(struct cli *c, const char *group, const char *usage, int argc, char **argv)
{
    int rv;
    if (usage_or_help(argc, argv, usage, &rv)) {
        return rv;
    }
    c->json = c->json || json_flag(argc, argv);
    const struct snap_action *act = NULL;
    for (size_t i = 0; i < sizeof snap_actions / sizeof snap_actions[0]; i++) {
        if (strcmp(snap_actions[i].group, group) == 0 &&
            strcmp(snap_actions[i].sub, argv[0]) == 0) {
            act = &snap_actions[i];
        }
    }
    struct snap_args a;
    if (act == NULL || snap_args(argc - 1, argv + 1, act->until, act->cref, &a) != 0) {
        fputs(usage, stderr);
        return CLI_USAGE;
    }
    uint64_t until = 0;
    if (a.until != NULL && parse_date(a.until, &until) != 0) {
        cli_error("--until: '%s' is not a date (2027-01-31, 2027-01-31T12:00:00Z, +30d, @MS)",
                  a.until);
        return CLI_USAGE;
    }
    if (a.cref != NULL && (strlen(a.cref) == 0 || strlen(a.cref) > 128)) {
        cli_error("--case wants 1..128 bytes");
        return CLI_USAGE;
    }
    uint8_t id[16];
    rv = snapshot_resolve(c, a.snap, id);
    if (rv != CLI_OK) {
        return rv;
    }
    char idhex[33];
    hex(id, 16, idhex);
    char when[32];
    time_text(until, when, sizeof when);
    json_t *extra = json_pack("{s:s}", "snapshot", idhex);
    if (until != 0) {
        json_object_set_new(extra, "retain_until", json_string(when));
        json_object_set_new(extra, "retain_until_ms", json_integer((json_int_t)until));
    }
    union snap_body body;
    Hbc__Command cmd = HBC__COMMAND__INIT;
    snap_command(act, id, until, a.cref, &body, &cmd);
    uint64_t index = 0;
    rv = propose(c, act->name, &cmd, extra, &index);
    if (rv == CLI_OK && !c->json) {
        snap_print(act, idhex, when, index);
    }
    return rv;
}

/* ---- hbc approvals ---- */

static const char approvals_usage[] =
    "Usage:\n"
    "  hbc approvals list [--all]       pending governance requests (--all: approved ones too)\n"
    "  hbc approvals approve N          approve request N (a security officer other than the\n"
    "                                   one who asked); approving performs the request\n";

static const char *kind_name(Hbc__ApprovalKind k)
{
    switch (k) {
    case HBC__APPROVAL_KIND__APPROVAL_HOLD_RELEASE:
        return "hold-release";
    case HBC__APPROVAL_KIND__APPROVAL_BYPASS_FORGET:
        return "forget-early";
    case HBC__APPROVAL_KIND__APPROVAL_BYPASS_SHORTEN:
        return "shorten";
    default:
        return "unknown";
    }
}

static int approvals_list(struct cli *c, bool all)
{
    Hbc__Frame req = HBC__FRAME__INIT;
    Hbc__ListApprovalsRequest q = HBC__LIST_APPROVALS_REQUEST__INIT;
    q.has_current = true;
    q.current = true;
    q.has_pending_only = true;
    q.pending_only = !all;
    req.request_id = 1;
    req.body_case = HBC__FRAME__BODY_LIST_APPROVALS;
    req.list_approvals = &q;
    Hbc__Frame *r = NULL;
    struct err e;
    int rv = cli_request(c, &req, true, &r, &e);
    if (rv != 0) {
        cli_error("approvals list: %s", e.msg);
        return rv == HBC_ECONFIG ? CLI_USAGE : CLI_UNAVAILABLE;
    }
    if (r->body_case != HBC__FRAME__BODY_LIST_APPROVALS_REPLY) {
        cli_error("approvals list: %s",
                  r->body_case == HBC__FRAME__BODY_PROPOSE_REPLY ? r->propose_reply->message
                  : r->body_case == HBC__FRAME__BODY_ERROR       ? r->error->message
                                                                 : "unexpected reply");
        frame_free(r);
        return CLI_UNAVAILABLE;
    }
    Hbc__ListApprovalsReply *l = r->list_approvals_reply;
    json_t *arr = json_array();
    if (!c->json) {
        printf("%-8s %-13s %-32s %-9s %-20s %-20s %s\n", "REQUEST", "KIND", "SNAPSHOT", "STATE",
               "EXPIRES (UTC)", "UNTIL (UTC)", "REQUESTED BY");
    }
    for (size_t i = 0; i < l->n_approvals; i++) {
        const Hbc__ApprovalInfo *a = l->approvals[i];
        char idhex[33] = "";
        if (a->snapshot_id.len == 16) {
            hex(a->snapshot_id.data, 16, idhex);
        }
        char exp[32], until[32];
        time_text(a->expires_clock_ms, exp, sizeof exp);
        time_text(a->has_retain_until_ms ? a->retain_until_ms : 0, until, sizeof until);
        bool pending = a->state == HBC__APPROVAL_STATE__APPROVAL_PENDING;
        if (c->json) {
            json_t *o =
                json_pack("{s:I, s:s, s:s, s:s, s:s, s:I, s:I}", "request",
                          (json_int_t)a->request_index, "kind", kind_name(a->kind), "snapshot",
                          idhex, "state", pending ? "pending" : "done", "requested_by",
                          a->requested_by, "requested_clock_ms", (json_int_t)a->requested_clock_ms,
                          "expires_clock_ms", (json_int_t)a->expires_clock_ms);
            if (a->has_retain_until_ms) {
                json_object_set_new(o, "retain_until_ms",
                                    json_integer((json_int_t)a->retain_until_ms));
            }
            if (a->approved_by != NULL) {
                json_object_set_new(o, "approved_by", json_string(a->approved_by));
            }
            json_array_append_new(arr, o);
        } else {
            printf("%-8llu %-13s %-32s %-9s %-20s %-20s %s\n", (unsigned long long)a->request_index,
                   kind_name(a->kind), idhex, pending ? "pending" : "done", exp, until,
                   a->requested_by);
        }
    }
    if (c->json) {
        json_t *o = json_object();
        json_object_set_new(o, "approvals", arr);
        json_object_set_new(o, "compliance_clock_ms",
                            json_integer((json_int_t)l->compliance_clock_ms));
        cli_print_json(o);
    } else {
        json_decref(arr);
    }
    frame_free(r);
    return CLI_OK;
}

static int approvals_cmd(struct cli *c, int argc, char **argv)
{
    int help_rv;
    if (usage_or_help(argc, argv, approvals_usage, &help_rv)) {
        return help_rv;
    }
    c->json = c->json || json_flag(argc, argv);
    if (strcmp(argv[0], "list") == 0) {
        bool all = false;
        for (int i = 1; i < argc; i++) {
            if (strcmp(argv[i], "--all") == 0) {
                all = true;
            } else if (strcmp(argv[i], "--json") != 0) {
                fputs(approvals_usage, stderr);
                return CLI_USAGE;
            }
        }
        return approvals_list(c, all);
    }
    if (strcmp(argv[0], "approve") == 0) {
        const char *n = NULL;
        for (int i = 1; i < argc; i++) {
            if (strcmp(argv[i], "--json") == 0) {
                continue;
            }
            if (n != NULL) {
                fputs(approvals_usage, stderr);
                return CLI_USAGE;
            }
            n = argv[i];
        }
        char *end = NULL;
        errno = 0;
        unsigned long long idx = n != NULL ? strtoull(n, &end, 10) : 0;
        if (n == NULL || errno != 0 || *end != '\0' || idx == 0) {
            cli_error("approvals approve wants a request number (see hbc approvals list)");
            return CLI_USAGE;
        }
        Hbc__ApprovalGrant g = HBC__APPROVAL_GRANT__INIT;
        g.request_index = idx;
        Hbc__Command cmd = HBC__COMMAND__INIT;
        cmd.cmd_case = HBC__COMMAND__CMD_APPROVAL_GRANT;
        cmd.approval_grant = &g;
        int rv = propose(c, "approvals approve", &cmd,
                         json_pack("{s:I}", "request", (json_int_t)idx), NULL);
        if (rv == CLI_OK && !c->json) {
            printf("request %llu approved and performed\n", idx);
        }
        return rv;
    }
    fputs(approvals_usage, stderr);
    return CLI_USAGE;
}

/* ---- hbc role ---- */

static const char role_usage[] =
    "Usage:\n"
    "  hbc role assign SUBJECT ROLE     give the certificate subject a role (admin only)\n"
    "  hbc role revoke SUBJECT ROLE     take it away\n"
    "SUBJECT: the whole certificate subject as hbcd logs it, e.g.\n"
    "\"CN=alice,OU=security-officer\". ROLE: admin, backup, restore, auditor,\n"
    "security-officer. Nobody may be both admin and security officer.\n";

static int role_cmd(struct cli *c, int argc, char **argv)
{
    int help_rv;
    if (usage_or_help(argc, argv, role_usage, &help_rv)) {
        return help_rv;
    }
    c->json = c->json || json_flag(argc, argv);
    bool assign = strcmp(argv[0], "assign") == 0;
    bool revoke = strcmp(argv[0], "revoke") == 0;
    const char *pos[2] = {NULL, NULL};
    int npos = 0;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--json") == 0) {
            continue;
        }
        if (npos == 2) {
            npos = 3;
            break;
        }
        pos[npos++] = argv[i];
    }
    if ((!assign && !revoke) || npos != 2) {
        fputs(role_usage, stderr);
        return CLI_USAGE;
    }
    int role = 0;
    for (int r = 1; r < (int)(sizeof role_names / sizeof role_names[0]); r++) {
        if (strcmp(pos[1], role_names[r]) == 0) {
            role = r;
        }
    }
    if (role == 0) {
        cli_error("unknown role '%s' (admin, backup, restore, auditor, security-officer)", pos[1]);
        return CLI_USAGE;
    }
    Hbc__RoleAssign ra = HBC__ROLE_ASSIGN__INIT;
    ra.subject = (char *)pos[0];
    ra.role = (Hbc__Role)role;
    ra.has_revoke = revoke;
    ra.revoke = revoke;
    Hbc__Command cmd = HBC__COMMAND__INIT;
    cmd.cmd_case = HBC__COMMAND__CMD_ROLE_ASSIGN;
    cmd.role_assign = &ra;
    int rv = propose(c, assign ? "role assign" : "role revoke", &cmd,
                     json_pack("{s:s, s:s}", "subject", pos[0], "role", pos[1]), NULL);
    if (rv == CLI_OK && !c->json) {
        printf("%s: %s %s\n", pos[0], assign ? "now holds" : "no longer holds", pos[1]);
    }
    return rv;
}

int cli_locks(struct cli *c, const char *cmd, int argc, char **argv)
{
    if (strcmp(cmd, "lock") == 0) {
        return snap_cmd(c, "lock", lock_usage, argc, argv);
    }
    if (strcmp(cmd, "hold") == 0) {
        return snap_cmd(c, "hold", hold_usage, argc, argv);
    }
    if (strcmp(cmd, "approvals") == 0) {
        return approvals_cmd(c, argc, argv);
    }
    return role_cmd(c, argc, argv);
}
