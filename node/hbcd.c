/* hbcd: the HBC storage node (configuration, signals, store, data-plane server). */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>

#include <uv.h>

#include <hbc/hbc.h>

#include "common/alloc.h"
#include "common/log.h"
#include "common/tls.h"
#include "node/config.h"
#include "node/fsm.h"
#include "node/join.h"
#include "node/raft_node.h"
#include "node/server.h"
#include "node/shard_store.h"

/* Everything the node runs, owned by main(). */
struct node {
    uv_loop_t loop;            /* the node's one event loop */
    struct node_config cfg;    /* from --config */
    struct tls_ctx *tls;       /* cluster CA, node certificate and key */
    struct shard_store *store; /* shards and their index */
    struct server *server;     /* the data plane */
    struct fsm *fsm;           /* the replicated state (metadata plane only) */
    struct raft_node *raft;    /* the metadata plane, or NULL */
    struct join *join;         /* asking to be admitted, or NULL */
    uv_signal_t sigterm;       /* graceful stop */
    uv_signal_t sigint;        /* graceful stop (terminal) */
    uv_signal_t sighup;        /* reload certificates */
    bool stopping;             /* a stop was asked for */
    struct err fail;           /* why the node stops by itself (code 0: it does not) */
};

static void usage(FILE *f)
{
    fprintf(f, "Usage: hbcd --config FILE [--join ADDR]\n"
               "       hbcd --print-config | --help | --version\n"
               "\n"
               "Runs one HBC storage node: a mutual-TLS data plane that stores erasure-coded\n"
               "shards durably (group commit: one fdatasync and one synced index batch per\n"
               "commit, acknowledged only after both).\n"
               "\n"
               "Options:\n"
               "  --config FILE    the node's INI configuration (see docs/operations.md)\n"
               "  --join ADDR      ask the member at ADDR (data plane) to admit this node;\n"
               "                   the same as raft.join in the configuration\n"
               "  --print-config   print every configuration key with its default and exit\n"
               "  --help           this text\n"
               "  --version        the version\n"
               "\n"
               "Signals: SIGTERM or SIGINT stop gracefully (puts in flight are finished and\n"
               "acknowledged first); SIGHUP reloads the TLS certificate, key and CA.\n"
               "Environment: HBC_LOG=debug|info|warn|error sets the log level (default info).\n"
               "Exit codes: 0 clean stop, 1 runtime failure, 2 usage or configuration error.\n");
}

static void close_walk_cb(uv_handle_t *h, void *arg)
{
    (void)arg;
    if (!uv_is_closing(h)) {
        uv_close(h, NULL);
    }
}

/* Everything has stopped: the loop ends once the signal handles are closed. */
static void server_done_cb(void *arg)
{
    struct node *n = arg;
    n->server = NULL;
    uv_close((uv_handle_t *)&n->sigterm, NULL);
    uv_close((uv_handle_t *)&n->sigint, NULL);
    uv_close((uv_handle_t *)&n->sighup, NULL);
}

/*
 * Raft has stopped: every proposal, read barrier and membership change it
 * held has called back, so every control request has been answered while
 * its connection was still open. Then the data plane drains and stops.
 */
static void raft_done_cb(void *arg)
{
    struct node *n = arg;
    n->raft = NULL;
    server_set_raft(n->server, NULL); /* later control requests: "no metadata plane" */
    server_stop(n->server, server_done_cb, n);
}

static void joined_cb(void *arg, int status)
{
    struct node *n = arg;
    (void)status;
    join_cancel(n->join); /* admitted: release the connection and timer */
    n->join = NULL;
}

static void stop_signal_cb(uv_signal_t *h, int signum)
{
    struct node *n = h->data;
    if (n->stopping) {
        hbc_log(LOG_WARN, "event=signal signal=%d reason=\"already stopping\"", signum);
        return;
    }
    n->stopping = true;
    hbc_log(LOG_INFO, "event=stopping signal=%d", signum);
    join_cancel(n->join);
    n->join = NULL;
    /*
     * Raft first: the server frees itself once its connections are gone, and
     * a control request waiting for Raft holds its connection's reply path.
     */
    if (n->raft != NULL) {
        raft_node_stop(n->raft, raft_done_cb, n);
    } else {
        server_stop(n->server, server_done_cb, n);
    }
}

/* Stop as a signal would, then exit with fail's code (main() logs it). */
static void node_fail(struct node *n, int code, const char *msg)
{
    err_setraw(&n->fail, code, "%s", msg);
    stop_signal_cb(&n->sigterm, 0);
}

static void removed_msg(const struct node *n, char *out, size_t len)
{
    snprintf(out, len,
             "node %s was removed from the cluster (hbc cluster remove); to add it again, stop it, "
             "wipe its data directory %s and start it with raft.join = a member's data address "
             "(or hbcd --join ADDR)",
             n->cfg.node_id, n->cfg.data_dir);
}

static void member_checked_cb(void *arg, int status)
{
    struct node *n = arg;
    join_cancel(n->join);
    n->join = NULL;
    if (status == HBC_EREMOVED && !n->stopping) {
        char msg[400];
        removed_msg(n, msg, sizeof msg);
        hbc_log(LOG_ERROR, "event=node_removed node=%s reason=\"%s\"", n->cfg.node_id, msg);
        node_fail(n, HBC_EREMOVED, msg);
    }
}

/* Data addresses of the members other than this node, as the state machine records them. */
struct via_list {
    const char *self;               /* this node's id */
    char addrs[JOIN_MAX_VIA][64];   /* found */
    const char *ptrs[JOIN_MAX_VIA]; /* pointers into addrs */
    size_t n;                       /* how many */
};

static int via_cb(const Hbc__NodeInfo *ni, void *arg)
{
    struct via_list *v = arg;
    if (strcmp(ni->node_id, v->self) != 0 && v->n < JOIN_MAX_VIA) {
        snprintf(v->addrs[v->n], sizeof v->addrs[0], "%s", ni->data_address);
        v->ptrs[v->n] = v->addrs[v->n];
        v->n++;
    }
    return 0;
}

/*
 * A member that restarts checks in with the leader through the other members:
 * its record follows new addresses, and a removal it did not see is found.
 */
static int member_check_start(struct node *n, struct err *e)
{
    struct via_list v = {.self = n->cfg.node_id};
    if (n->cfg.raft_join != NULL) {
        snprintf(v.addrs[0], sizeof v.addrs[0], "%s", n->cfg.raft_join);
        v.ptrs[0] = v.addrs[0];
        v.n = 1;
    }
    fsm_list_nodes(n->fsm, via_cb, &v, NULL);
    if (v.n == 0) {
        return 0; /* a cluster of one: nobody to ask, nothing to check */
    }
    return join_member_check(&n->loop, n->tls, &n->cfg, v.ptrs, v.n, member_checked_cb, n, &n->join,
                             e);
}

static void hup_signal_cb(uv_signal_t *h, int signum)
{
    struct node *n = h->data;
    struct err e;
    (void)signum;
    if (tls_ctx_reload(n->tls, &e) != 0) {
        hbc_log(LOG_ERROR,
                "event=tls_reload_failed reason=\"%s\" note=\"old certificates stay in use\"",
                e.msg);
    } else {
        hbc_log(LOG_INFO, "event=tls_reloaded");
    }
}

/*
 * Every connection holds a descriptor, and Debian's default soft limit (1024)
 * is below the default data.max_connections: raise the soft limit to the hard
 * one, and say so if even that is too low for the configured connections.
 */
static void raise_nofile_limit(const struct node_config *cfg)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0) {
        return;
    }
    if (rl.rlim_cur < rl.rlim_max) {
        rlim_t old = rl.rlim_cur;
        rl.rlim_cur = rl.rlim_max;
        if (setrlimit(RLIMIT_NOFILE, &rl) != 0) {
            rl.rlim_cur = old;
        }
    }
    /* The store, RocksDB and the listener need descriptors of their own too. */
    if (rl.rlim_cur != RLIM_INFINITY && rl.rlim_cur < (rlim_t)cfg->max_connections + 512) {
        hbc_log(LOG_WARN,
                "event=fd_limit_low limit=%llu max_connections=%u note=\"connections beyond the "
                "limit will fail to be accepted; raise LimitNOFILE\"",
                (unsigned long long)rl.rlim_cur, cfg->max_connections);
    }
}

static int make_dir(const char *path, struct err *e)
{
    if (mkdir(path, 0700) != 0 && errno != EEXIST) {
        return err_setraw(e, -errno, "create %s: %s", path, strerror(errno));
    }
    return 0;
}

static int node_run(struct node *n, struct err *e)
{
    char path[4096];
    int rv = make_dir(n->cfg.data_dir, e);
    if (rv != 0) {
        return rv;
    }
    snprintf(path, sizeof path, "%s/shards", n->cfg.data_dir);
    struct shard_store_options so = {
        .segment_size = n->cfg.segment_size,
        .max_shard_size = (uint32_t)n->cfg.max_shard,
        .capacity = n->cfg.capacity,
    };
    rv = shard_store_open(path, &so, &n->store, e);
    if (rv != 0) {
        return err_wrap_code(e, rv, "open shard store %s", path);
    }
    struct tls_ctx_opts to = {
        .ca_file = n->cfg.tls_ca,
        .cert_file = n->cfg.tls_cert,
        .key_file = n->cfg.tls_key,
        .handshake_timeout_ms = n->cfg.handshake_timeout * 1000,
    };
    rv = tls_ctx_new(&to, &n->tls, e);
    if (rv != 0) {
        goto close_store;
    }
    if (n->cfg.raft_listen != NULL) {
        snprintf(path, sizeof path, "%s/meta", n->cfg.data_dir);
        rv = fsm_open(path, &n->fsm, e);
        if (rv != 0) {
            err_wrap(e, "open state machine %s", path);
            goto close_tls;
        }
        rv = raft_node_start(&n->loop, &n->cfg, n->tls, n->fsm, &n->raft, e);
        if (rv != 0) {
            goto close_fsm;
        }
    }
    rv = server_start(&n->loop, &n->cfg, n->tls, n->store, &n->server, e);
    if (rv != 0) {
        goto close_fsm;
    }
    server_set_raft(n->server, n->raft);
    if (n->raft != NULL && n->cfg.raft_join != NULL && !raft_node_is_member(n->raft)) {
        rv = join_start(&n->loop, n->tls, &n->cfg, joined_cb, n, &n->join, e);
        if (rv != 0) {
            goto close_fsm;
        }
    } else if (n->raft != NULL && raft_node_is_member(n->raft) && !raft_node_removed(n->raft)) {
        rv = member_check_start(n, e);
        if (rv != 0) {
            goto close_fsm;
        }
    }
    uv_signal_init(&n->loop, &n->sigterm);
    uv_signal_init(&n->loop, &n->sigint);
    uv_signal_init(&n->loop, &n->sighup);
    n->sigterm.data = n->sigint.data = n->sighup.data = n;
    uv_signal_start(&n->sigterm, stop_signal_cb, SIGTERM);
    uv_signal_start(&n->sigint, stop_signal_cb, SIGINT);
    uv_signal_start(&n->sighup, hup_signal_cb, SIGHUP);
    if (n->raft != NULL && raft_node_removed(n->raft)) {
        /* Its own Raft configuration no longer lists it: it saw its removal. */
        char msg[400];
        removed_msg(n, msg, sizeof msg);
        hbc_log(LOG_ERROR, "event=node_removed node=%s reason=\"%s\"", n->cfg.node_id, msg);
        node_fail(n, HBC_EREMOVED, msg);
    }

    struct shard_store_stats st;
    shard_store_stats(n->store, &st);
    hbc_log(LOG_INFO,
            "event=hbcd_started version=%s node=%s site=%s region=%s media=%s worm=%d listen=%s "
            "shards=%llu "
            "recovered_cut_bytes=%llu",
            hbc_version(), n->cfg.node_id, n->cfg.site, n->cfg.region, n->cfg.media, n->cfg.worm,
            n->cfg.listen, (unsigned long long)st.shard_count,
            (unsigned long long)st.recovered_cut_bytes);

    uv_run(&n->loop, UV_RUN_DEFAULT);
    if (n->fail.code != 0) {
        *e = n->fail;
        rv = n->fail.code;
    }

close_fsm:
    /* On a start failure Raft may hold the loop's handles: they close with the loop. */
    fsm_close(n->fsm);
    n->fsm = NULL;
close_tls:
    tls_ctx_free(n->tls);
close_store : {
    struct err ce;
    if (shard_store_close(n->store, &ce) != 0) {
        hbc_log(LOG_ERROR, "event=store_close_failed reason=\"%s\"", ce.msg);
        if (rv == 0) {
            *e = ce;
            rv = ce.code;
        }
    }
}
    return rv;
}

int main(int argc, char **argv)
{
    const char *config = NULL;
    const char *join = NULL;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            usage(stdout);
            return 0;
        }
        if (strcmp(argv[i], "--version") == 0) {
            printf("hbcd %s\n", hbc_version());
            return 0;
        }
        if (strcmp(argv[i], "--print-config") == 0) {
            node_config_describe(stdout);
            return 0;
        }
        if (strcmp(argv[i], "--config") == 0 && i + 1 < argc) {
            config = argv[++i];
        } else if (strcmp(argv[i], "--join") == 0 && i + 1 < argc) {
            join = argv[++i];
        } else if (strncmp(argv[i], "--config=", 9) == 0) {
            config = argv[i] + 9;
        } else {
            fprintf(stderr, "hbcd: unknown argument '%s'\n\n", argv[i]);
            usage(stderr);
            return 2;
        }
    }
    if (config == NULL) {
        fprintf(stderr, "hbcd: --config FILE is required\n\n");
        usage(stderr);
        return 2;
    }
    log_init_from_env();
    signal(SIGPIPE, SIG_IGN);

    static struct node n;
    struct err e;
    err_clear(&e);
    if (node_config_load(&n.cfg, config, &e) != 0) {
        fprintf(stderr, "hbcd: %s\n", e.msg);
        return 2;
    }
    raise_nofile_limit(&n.cfg);
    if (join != NULL) {
        if (n.cfg.raft_listen == NULL || n.cfg.raft_bootstrap) {
            fprintf(stderr, "hbcd: --join needs raft.listen and excludes raft.bootstrap in %s\n",
                    config);
            node_config_free(&n.cfg);
            return 2;
        }
        char *copy = hbc_strdup(join);
        unsigned a, b, c, d, port;
        char tail;
        if (copy == NULL || sscanf(join, "%u.%u.%u.%u:%u%c", &a, &b, &c, &d, &port, &tail) != 5) {
            fprintf(stderr, "hbcd: --join '%s' is not an IPv4 address with a port\n", join);
            hbc_free(copy);
            node_config_free(&n.cfg);
            return 2;
        }
        hbc_free(n.cfg.raft_join);
        n.cfg.raft_join = copy;
    }
    uv_loop_init(&n.loop);
    int rv = node_run(&n, &e);
    if (rv != 0) {
        hbc_log(LOG_ERROR, "event=hbcd_failed reason=\"%s\"", e.msg);
        fprintf(stderr, "hbcd: %s\n", e.msg);
    } else {
        hbc_log(LOG_INFO, "event=hbcd_stopped");
    }
    uv_walk(&n.loop, close_walk_cb, NULL);
    uv_run(&n.loop, UV_RUN_DEFAULT);
    uv_loop_close(&n.loop);
    node_config_free(&n.cfg);
    return rv == 0 ? 0 : (rv == HBC_ECONFIG ? 2 : 1);
}
