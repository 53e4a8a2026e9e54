/* hbc: the HBC command-line client (global options, settings, dispatch). */
#include <errno.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <hbc/hbc.h>

#include "client/cli.h"
#include "client/client_config.h"
#include "common/alloc.h"
#include "common/frame.h"
#include "common/log.h"
#include "common/rpc_call.h"

static void usage(FILE *f)
{
    fprintf(
        f, "Usage: hbc [GLOBAL OPTIONS] COMMAND [ARGS]\n"
           "\n"
           "The HBC backup client.\n"
           "\n"
           "Commands:\n"
           "  cluster status            every member's role, site, term, indexes and last contact\n"
           "  cluster remove NODE [--force]  remove a drained node from the cluster (admin)\n"
           "  cluster drain NODE        move a node's shards elsewhere before removing it (admin)\n"
           "  key init [--keyfile F]    create a key file holding a new KEK (asks a passphrase)\n"
           "  key passwd [--keyfile F]  change the key file's passphrase\n"
           "  vault create NAME [--policy P] [--home-site SITE] [--copies N] [--k K] [--m M]\n"
           "                            create a vault (keys wrapped by the KEK; policy\n"
           "                            3-2-1-1-0 unless --policy none or --copies/--k/--m)\n"
           "  vault list                every vault and its scheme\n"
           "  policy check [VAULT]      the 3-2-1-1-0 digits of each vault's policy (exit 1 on a\n"
           "                            failing digit)\n"
           "  backup PATH...            back up files and directories as a snapshot of the vault\n"
           "         [--parent SNAP | --force-read] [--one-file-system] [--threads N]\n"
           "  snapshots                 the vault's snapshots, oldest first\n"
           "  ls SNAP [PATH]            what a snapshot holds (below PATH)\n"
           "  restore SNAP --target DIR [--include PATTERN]... [--verify]\n"
           "                            restore a snapshot (SNAP: an id prefix or latest)\n"
           "  restore SNAP --verify [--copy N]\n"
           "                            restore test: read and check everything, write nothing,\n"
           "                            record the result in the cluster\n"
           "  forget SNAP [--vault NAME] remove a snapshot whose lock has expired (the state\n"
           "                            machine says why when it refuses)\n"
           "  gc run [--vault NAME]     run one garbage collection cycle now (admin)\n"
           "  gc status                 the leader's last garbage collection cycle\n"
           "  (backup, snapshots, ls and restore also take --vault NAME and --keyfile FILE)\n"
           "  lock extend SNAP --until DATE   retain a snapshot longer (never shorter)\n"
           "  lock shorten SNAP --until DATE  ask to shorten a governance lock (two officers)\n"
           "  lock forget-early SNAP    ask to forget a governance-locked snapshot early\n"
           "  hold set SNAP [--case REF] | hold release SNAP\n"
           "                            legal hold; a release needs a second officer\n"
           "  approvals list [--all] | approvals approve N\n"
           "                            governance requests and their approval\n"
           "  role assign|revoke SUBJECT ROLE  map a certificate subject to a role (admin)\n"
           "  (each takes --help; see docs/cli.md and docs/retention.md)\n"
           "\n"
           "Global options:\n"
           "  --json                    machine-readable output (one JSON document on stdout)\n"
           "  --cluster ADDR[,ADDR...]  data-plane addresses of cluster nodes  [HBC_CLUSTER]\n"
           "  --ca FILE                 the cluster CA certificate              [HBC_CA]\n"
           "  --cert FILE               your client certificate                 [HBC_CERT]\n"
           "  --key FILE                its private key                         [HBC_KEY]\n"
           "  --timeout SECONDS         per request (default 10)                [HBC_TIMEOUT]\n"
           "  --config FILE             client config file                      [HBC_CONFIG]\n"
           "                            (default ~/.config/hbc/client.conf; see docs/cli.md)\n"
           "  key file and vault: --keyfile, HBC_KEYFILE, HBC_VAULT; passphrase: HBC_PASSPHRASE,\n"
           "                            HBC_PASSPHRASE_FILE or a prompt on the terminal\n"
           "  --help, --version\n"
           "\n"
           "Exit codes:\n"
           "  0  done\n"
           "  1  the command failed\n"
           "  2  bad command line or settings\n"
           "  3  done in part (some files skipped or some nodes unreachable)\n"
           "     (restore: any entry that could not be restored and checked exits 1)\n"
           "  4  the cluster could not be reached or has no leader\n");
}

/* Per-command help for the commands whose own parser has none (hbc CMD --help). */
static const struct {
    const char *cmd;  /* the command */
    const char *text; /* its help */
} command_help[] = {
    {"backup",
     "Usage: hbc backup PATH... [--vault NAME] [--keyfile FILE] [--parent SNAP | --force-read]\n"
     "                  [--one-file-system] [--threads N]\n"
     "Back up files and directories as one snapshot of the vault. Unchanged files (same size,\n"
     "mtime, inode and device as in the parent, by default the vault's latest snapshot) are\n"
     "not read again; --force-read reads everything. Data is chunked, deduplicated,\n"
     "compressed, encrypted and erasure-coded here; the snapshot is committed through Raft\n"
     "only once every chunk is durable under the vault's policy. Unreadable files are\n"
     "reported and skipped (exit 3). A live progress line on a terminal; --json: a summary.\n"},
    {"snapshots", "Usage: hbc snapshots [--vault NAME]\n"
                  "The vault's snapshots, oldest first: id, time, files, size, retain-until,\n"
                  "lock mode and legal hold. No key file is needed.\n"},
    {"ls", "Usage: hbc ls SNAP [PATH] [--vault NAME] [--keyfile FILE]\n"
           "What a snapshot holds (below PATH). SNAP: an id prefix (4+ hex digits) or latest.\n"},
    {"restore",
     "Usage: hbc restore SNAP --target DIR [--include PATTERN]... [--verify]\n"
     "       hbc restore SNAP --verify [--copy N]\n"
     "       (both take --vault NAME and --keyfile FILE)\n"
     "With --target: restore into DIR (each file written under a temporary name, then\n"
     "renamed; modes and times set; paths leaving DIR refused); --verify then reads back\n"
     "every file and compares its SHA-256. Without --target, --verify is a restore test:\n"
     "everything but writing, optionally from one copy, recorded in the cluster.\n"
     "Reads the nearest healthy copy, data shards first, and falls back to parity shards and\n"
     "other copies on any error.\n"},
    {"key", "Usage: hbc key init [--keyfile FILE]    create a key file with a new KEK\n"
            "       hbc key passwd [--keyfile FILE]  change its passphrase\n"
            "The passphrase comes from HBC_PASSPHRASE, HBC_PASSPHRASE_FILE or a prompt.\n"},
    {"vault", "Usage: hbc vault create NAME ... (hbc vault create --help)\n"
              "       hbc vault list   every vault, its scheme and policy\n"},
    {"policy", "Usage: hbc policy check [VAULT]\n"
               "One line per 3-2-1-1-0 digit of each vault's policy on the current topology,\n"
               "with pass or fail and the reason, and each copy's failure tolerance; exit 1 when\n"
               "any digit fails.\n"},
    {"cluster", "Usage: hbc cluster status           every member's role, site, term, indexes\n"
                "       hbc cluster remove NODE      remove a node from the cluster (admin)\n"
                "       hbc cluster drain NODE       empty a node before removing it (admin)\n"},
};

/* If argv asks for help (--help or -h) and cmd has an entry above, print it; true if printed. */
static bool command_wants_help(const char *cmd, int argc, char **argv)
{
    bool asked = false;
    for (int i = 0; i < argc; i++) {
        asked = asked || strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0;
    }
    if (!asked || (strcmp(cmd, "vault") == 0 && argc > 0 && strcmp(argv[0], "create") == 0)) {
        return false;
    }
    for (size_t i = 0; i < sizeof command_help / sizeof command_help[0]; i++) {
        if (strcmp(command_help[i].cmd, cmd) == 0) {
            fputs(command_help[i].text, stdout);
            return true;
        }
    }
    return false;
}

void cli_error(const char *fmt, ...)
{
    va_list ap;
    fputs("hbc: ", stderr);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
}

void cli_print_json(json_t *v)
{
    char *s = json_dumps(v, JSON_COMPACT | JSON_ENSURE_ASCII);
    if (s != NULL) {
        puts(s);
        free(s);
    }
    json_decref(v);
}

struct tls_ctx *cli_tls(struct cli *c)
{
    if (c->tls != NULL) {
        return c->tls;
    }
    if (c->ca == NULL || c->cert == NULL || c->key == NULL) {
        cli_error("connection settings missing: give --ca, --cert and --key (or HBC_CA, HBC_CERT, "
                  "HBC_KEY)");
        return NULL;
    }
    struct tls_ctx_opts o = {.ca_file = c->ca, .cert_file = c->cert, .key_file = c->key};
    struct err e;
    if (tls_ctx_new(&o, &c->tls, &e) != 0) {
        cli_error("%s", e.msg);
        return NULL;
    }
    return c->tls;
}

int cli_request(struct cli *c, Hbc__Frame *req, bool follow_leader, Hbc__Frame **reply,
                struct err *e)
{
    struct tls_ctx *tls = cli_tls(c);
    if (tls == NULL) {
        return err_setraw(e, HBC_ECONFIG, "no TLS settings");
    }
    if (c->naddrs == 0) {
        return err_setraw(e, HBC_ECONFIG,
                          "no cluster address: give --cluster ADDR (or HBC_CLUSTER)");
    }
    char leader[64] = "";
    int rv = HBC_EUNAVAILABLE;
    err_setraw(e, rv, "no node answered");
    for (int round = 0; round < 5; round++) {
        for (int i = 0; i < c->naddrs; i++) {
            const char *addr = leader[0] != '\0' ? leader : c->addrs[i];
            Hbc__Frame *r = NULL;
            rv = rpc_call(tls, addr, req, c->timeout_ms, &r, e);
            if (rv != 0) {
                leader[0] = '\0';
                continue;
            }
            if (follow_leader && r->body_case == HBC__FRAME__BODY_PROPOSE_REPLY &&
                r->propose_reply->code == HBC_ENOTLEADER) {
                if (r->propose_reply->leader_address != NULL &&
                    r->propose_reply->leader_address[0] != '\0') {
                    snprintf(leader, sizeof leader, "%s", r->propose_reply->leader_address);
                    frame_free(r);
                    i--; /* ask the leader next */
                    continue;
                }
                err_setraw(e, HBC_ENOTLEADER, "%s: %s", addr, r->propose_reply->message);
                frame_free(r);
                rv = HBC_ENOTLEADER;
                continue;
            }
            *reply = r;
            return 0;
        }
        /* No leader known yet (an election may be running): wait and try again. */
        struct timespec ts = {0, 300 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    return rv;
}

static int add_addrs(struct cli *c, const char *list)
{
    size_t used = 0;
    while (c->addrs[0] != NULL && used < sizeof c->addr_buf && c->addr_buf[used] != '\0') {
        used += strlen(c->addr_buf + used) + 1;
    }
    const char *p = list;
    while (*p != '\0') {
        const char *end = strchr(p, ',');
        size_t n = end != NULL ? (size_t)(end - p) : strlen(p);
        if (n > 0) {
            if (c->naddrs == CLI_MAX_ADDRS || used + n + 1 > sizeof c->addr_buf) {
                cli_error("too many cluster addresses");
                return -1;
            }
            memcpy(c->addr_buf + used, p, n);
            c->addr_buf[used + n] = '\0';
            c->addrs[c->naddrs++] = c->addr_buf + used;
            used += n + 1;
        }
        p += n + (end != NULL ? 1 : 0);
    }
    return 0;
}

int main(int argc, char **argv)
{
    static struct cli c;
    signal(SIGPIPE, SIG_IGN);
    log_level_current = LOG_ERROR;
    log_init_from_env();
    c.ca = getenv("HBC_CA");
    c.cert = getenv("HBC_CERT");
    c.key = getenv("HBC_KEY");
    c.timeout_ms = 10000;
    const char *t = getenv("HBC_TIMEOUT");
    if (t != NULL && atoi(t) > 0) {
        c.timeout_ms = (unsigned)atoi(t) * 1000;
    }
    const char *cl = getenv("HBC_CLUSTER");
    int i = 1;
    bool cluster_given = false;
    const char *config = NULL;
    for (; i < argc && argv[i][0] == '-'; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            usage(stdout);
            return CLI_OK;
        } else if (strcmp(a, "--version") == 0) {
            printf("hbc %s\n", hbc_version());
            return CLI_OK;
        } else if (strcmp(a, "--json") == 0) {
            c.json = true;
        } else if (v != NULL && strcmp(a, "--cluster") == 0) {
            if (add_addrs(&c, v) != 0) {
                return CLI_USAGE;
            }
            cluster_given = true;
            i++;
        } else if (v != NULL && strcmp(a, "--config") == 0) {
            config = argv[++i];
        } else if (v != NULL && strcmp(a, "--ca") == 0) {
            c.ca = argv[++i];
        } else if (v != NULL && strcmp(a, "--cert") == 0) {
            c.cert = argv[++i];
        } else if (v != NULL && strcmp(a, "--key") == 0) {
            c.key = argv[++i];
        } else if (v != NULL && strcmp(a, "--timeout") == 0) {
            if (atoi(v) <= 0) {
                cli_error("--timeout wants a number of seconds, not '%s'", v);
                return CLI_USAGE;
            }
            c.timeout_ms = (unsigned)atoi(argv[++i]) * 1000;
        } else {
            cli_error("unknown option '%s' (see hbc --help)", a);
            return CLI_USAGE;
        }
    }
    if (!cluster_given && cl != NULL && add_addrs(&c, cl) != 0) {
        return CLI_USAGE;
    }
    if (cli_config_apply(&c, config) != CLI_OK) {
        return CLI_USAGE;
    }
    if (i >= argc) {
        usage(stderr);
        return CLI_USAGE;
    }
    const char *cmd = argv[i];
    int rv;
    if (command_wants_help(cmd, argc - i - 1, argv + i + 1)) {
        rv = CLI_OK;
    } else if (strcmp(cmd, "cluster") == 0) {
        rv = cli_cluster(&c, argc - i - 1, argv + i + 1);
    } else if (strcmp(cmd, "backup") == 0) {
        rv = cli_backup(&c, argc - i - 1, argv + i + 1);
    } else if (strcmp(cmd, "snapshots") == 0) {
        rv = cli_snapshots(&c, argc - i - 1, argv + i + 1);
    } else if (strcmp(cmd, "ls") == 0) {
        rv = cli_ls(&c, argc - i - 1, argv + i + 1);
    } else if (strcmp(cmd, "restore") == 0) {
        rv = cli_restore(&c, argc - i - 1, argv + i + 1);
    } else if (strcmp(cmd, "key") == 0) {
        rv = cli_key(&c, argc - i - 1, argv + i + 1);
    } else if (strcmp(cmd, "gc") == 0) {
        rv = cli_gc(&c, argc - i - 1, argv + i + 1);
    } else if (strcmp(cmd, "forget") == 0) {
        rv = cli_forget(&c, argc - i - 1, argv + i + 1);
    } else if (strcmp(cmd, "vault") == 0) {
        rv = cli_vault(&c, argc - i - 1, argv + i + 1);
    } else if (strcmp(cmd, "policy") == 0) {
        rv = cli_policy(&c, argc - i - 1, argv + i + 1);
    } else if (strcmp(cmd, "lock") == 0 || strcmp(cmd, "hold") == 0 ||
               strcmp(cmd, "approvals") == 0 || strcmp(cmd, "role") == 0) {
        rv = cli_locks(&c, cmd, argc - i - 1, argv + i + 1);
    } else {
        cli_error("unknown command '%s' (see hbc --help)", cmd);
        rv = CLI_USAGE;
    }
    tls_ctx_free(c.tls);
    return rv;
}
