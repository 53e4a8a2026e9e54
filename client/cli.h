/* Shared state of the hbc command: global options, connection settings, output. */
#ifndef HBC_CLIENT_CLI_H
#define HBC_CLIENT_CLI_H

#include <stdbool.h>
#include <stdio.h>

#include <jansson.h>

#include "common/err.h"
#include "common/tls.h"
#include "hbc.pb-c.h"

/* Exit codes of hbc, documented in `hbc --help` and docs/cli.md. */
enum cli_exit {
    CLI_OK = 0,          /* everything asked for was done */
    CLI_FAILED = 1,      /* the command failed */
    CLI_USAGE = 2,       /* bad command line or configuration */
    CLI_PARTIAL = 3,     /* done in part (some files skipped, some nodes unreachable) */
    CLI_UNAVAILABLE = 4, /* the cluster could not be reached or has no leader */
};

#define CLI_MAX_ADDRS 64

/* Global options and connection settings. */
struct cli {
    bool json;                        /* --json: machine-readable output on stdout */
    const char *addrs[CLI_MAX_ADDRS]; /* cluster data-plane addresses to try */
    int naddrs;                       /* how many */
    char addr_buf[4096];              /* storage for addresses parsed from a list */
    const char *ca;                   /* CA certificate */
    const char *cert;                 /* client certificate */
    const char *key;                  /* client key */
    unsigned timeout_ms;              /* per request */
    struct tls_ctx *tls;              /* made on first use */
};

/* Print an error for a person on stderr ("hbc: ..."). */
void cli_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* The TLS context from the settings; prints why and returns NULL when it cannot be made. */
struct tls_ctx *cli_tls(struct cli *c);

/*
 * Send req to the cluster: try each address, follow HBC_ENOTLEADER
 * redirects (ProposeReply.leader_address) up to a few times, and return the
 * reply (free with frame_free). Returns 0 or an error with a message.
 */
int cli_request(struct cli *c, Hbc__Frame *req, bool follow_leader, Hbc__Frame **reply,
                struct err *e);

/* Print a JSON value on stdout (compact, one line) and free it. */
void cli_print_json(json_t *v);

/* Subcommands: argc/argv start at the subcommand's own arguments. */
int cli_cluster(struct cli *c, int argc, char **argv);
int cli_policy(struct cli *c, int argc, char **argv);

struct policy_node;

/* The cluster's topology as vault policies see it (cli_policy.c). */
struct cli_topology {
    Hbc__Frame *reply;         /* the ClusterStatus reply the strings point into (owned) */
    struct policy_node *nodes; /* nodes not joining, sorted by node id (owned array) */
    size_t n;                  /* how many */
    const char *first_site;    /* the site of the node that answered ("" if unknown) */
};

/*
 * Ask the cluster for its node list (ClusterStatus) into *t. Returns 0 or an
 * error with a message; free with cli_topology_free() either way.
 */
int cli_topology_get(struct cli *c, struct cli_topology *t, struct err *e);

/* Free what cli_topology_get() made; a zeroed *t is fine. */
void cli_topology_free(struct cli_topology *t);
int cli_backup(struct cli *c, int argc, char **argv);    /* client/cli_backup.c */
int cli_snapshots(struct cli *c, int argc, char **argv); /* client/cli_backup.c */
int cli_ls(struct cli *c, int argc, char **argv);        /* client/cli_backup.c */
int cli_restore(struct cli *c, int argc, char **argv);   /* client/cli_backup.c */
/* hbc lock|hold|approvals|role (client/cli_locks.c): cmd is the command's name. */
int cli_locks(struct cli *c, const char *cmd, int argc, char **argv);

#endif /* HBC_CLIENT_CLI_H */
