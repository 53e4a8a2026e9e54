/*
 * hbc-lock-setup: propose the raw metadata commands the lock tests need and
 * that no hbc command sends: a vault with a given retention and lock mode,
 * a snapshot record in it (no data), and SnapshotForget. Prints one JSON
 * line {"code": "OK"|"HBC_E...", "message": ..., "index": N, ...}; exits 0
 * when a node answered (whatever the state machine decided), 1 otherwise.
 *
 *   hbc-lock-setup ADDR[,ADDR...] CA CERT KEY vault NAME DAYS compliance|governance
 *   hbc-lock-setup ADDR[,ADDR...] CA CERT KEY snapshot VAULT_HEX
 *   hbc-lock-setup ADDR[,ADDR...] CA CERT KEY forget SNAPSHOT_HEX
 *   hbc-lock-setup ADDR CA CERT KEY clock        (a ClockRequest: {"code", "wall_ms"})
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/rand.h>

#include "common/frame.h"
#include "common/node_client.h"
#include "common/rpc_call.h"
#include "common/tls.h"
#include "hbc.pb-c.h"

static void hex(const uint8_t *p, size_t n, char *out)
{
    for (size_t i = 0; i < n; i++) {
        sprintf(out + 2 * i, "%02x", p[i]);
    }
    out[2 * n] = '\0';
}

static int unhex(const char *s, uint8_t *out, size_t n)
{
    if (strlen(s) != 2 * n) {
        return -1;
    }
    for (size_t i = 0; i < n; i++) {
        unsigned v;
        if (sscanf(s + 2 * i, "%2x", &v) != 1) {
            return -1;
        }
        out[i] = (uint8_t)v;
    }
    return 0;
}

/* Propose cmd at the leader (following redirects, a bounded number of tries). */
static int propose(struct tls_ctx *tls, char *addrs, Hbc__Command *cmd, const char *extra)
{
    const char *list[16];
    int n = 0;
    for (char *p = strtok(addrs, ","); p != NULL && n < 16; p = strtok(NULL, ",")) {
        list[n++] = p;
    }
    Hbc__Frame req = HBC__FRAME__INIT;
    Hbc__ProposeRequest pr = HBC__PROPOSE_REQUEST__INIT;
    pr.command = cmd;
    req.request_id = 1;
    req.body_case = HBC__FRAME__BODY_PROPOSE;
    req.propose = &pr;
    char leader[64] = "";
    for (int attempt = 0; attempt < 60; attempt++) {
        const char *addr = leader[0] != '\0' ? leader : list[attempt % n];
        Hbc__Frame *r = NULL;
        struct err e;
        if (rpc_call(tls, addr, &req, 5000, &r, &e) != 0) {
            leader[0] = '\0';
            struct timespec ts = {0, 200 * 1000 * 1000};
            nanosleep(&ts, NULL);
            continue;
        }
        if (r->body_case != HBC__FRAME__BODY_PROPOSE_REPLY) {
            printf("{\"code\": \"HBC_EPROTO\", \"message\": \"unexpected reply\"}\n");
            frame_free(r);
            return 1;
        }
        Hbc__ProposeReply *p = r->propose_reply;
        if (p->code == HBC_ENOTLEADER) {
            snprintf(leader, sizeof leader, "%s", p->leader_address ? p->leader_address : "");
            frame_free(r);
            struct timespec ts = {0, 200 * 1000 * 1000};
            nanosleep(&ts, NULL);
            continue;
        }
        /* The message goes out as JSON: escape what JSON needs. */
        printf("{\"code\": \"%s\", \"message\": \"", p->code == 0 ? "OK" : hbc_errname(p->code));
        for (const char *m = p->message; *m != '\0'; m++) {
            if (*m == '"' || *m == '\\') {
                putchar('\\');
            }
            putchar((unsigned char)*m < 0x20 ? ' ' : *m);
        }
        printf("\", \"index\": %llu%s}\n", (unsigned long long)(p->has_index ? p->index : 0),
               extra);
        frame_free(r);
        return 0;
    }
    fprintf(stderr, "hbc-lock-setup: no leader answered\n");
    return 1;
}

/* Ask the node at addr for its clock, as a leader does (node/clock_sync.c). */
static int ask_clock(struct tls_ctx *tls, const char *addr)
{
    Hbc__Frame req = HBC__FRAME__INIT;
    Hbc__ClockRequest q = HBC__CLOCK_REQUEST__INIT;
    req.request_id = 1;
    req.body_case = HBC__FRAME__BODY_CLOCK_REQUEST;
    req.clock_request = &q;
    Hbc__Frame *r = NULL;
    struct err e;
    if (rpc_call(tls, addr, &req, 5000, &r, &e) != 0) {
        fprintf(stderr, "hbc-lock-setup: %s\n", e.msg);
        return 1;
    }
    if (r->body_case == HBC__FRAME__BODY_CLOCK_REPLY) {
        printf("{\"code\": \"OK\", \"wall_ms\": %llu}\n",
               (unsigned long long)r->clock_reply->wall_ms);
    } else if (r->body_case == HBC__FRAME__BODY_ERROR) {
        printf("{\"code\": \"%s\", \"message\": \"%s\"}\n",
               hbc_errname(node_client_error_code(r->error->code)), r->error->message);
    } else {
        printf("{\"code\": \"HBC_EPROTO\"}\n");
    }
    frame_free(r);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc == 6 && strcmp(argv[5], "clock") == 0) {
        struct tls_ctx_opts o = {.ca_file = argv[2], .cert_file = argv[3], .key_file = argv[4]};
        struct tls_ctx *tls = NULL;
        struct err e;
        if (tls_ctx_new(&o, &tls, &e) != 0) {
            fprintf(stderr, "hbc-lock-setup: %s\n", e.msg);
            return 2;
        }
        int rv = ask_clock(tls, argv[1]);
        tls_ctx_free(tls);
        return rv;
    }
    if (argc < 7) {
        fprintf(stderr, "usage: see the top of tests/cluster/lock_setup.c\n");
        return 2;
    }
    struct tls_ctx_opts o = {.ca_file = argv[2], .cert_file = argv[3], .key_file = argv[4]};
    struct tls_ctx *tls = NULL;
    struct err e;
    if (tls_ctx_new(&o, &tls, &e) != 0) {
        fprintf(stderr, "hbc-lock-setup: %s\n", e.msg);
        return 2;
    }
    Hbc__Command cmd = HBC__COMMAND__INIT;
    char extra[128] = "";
    uint8_t id[16];
    uint8_t other[16];
    char idhex[33];
    int rv = 2;
    if (RAND_bytes(id, sizeof id) != 1) {
        return 2;
    }
    hex(id, 16, idhex);
    if (strcmp(argv[5], "vault") == 0 && argc == 9) {
        Hbc__VaultCreate v = HBC__VAULT_CREATE__INIT;
        v.vault_id.data = id;
        v.vault_id.len = 16;
        v.name = argv[6];
        v.copies = 1;
        v.k = 1;
        v.m = 0;
        v.has_retention_days = true;
        v.retention_days = (uint32_t)atoi(argv[7]);
        v.has_lock_mode = true;
        v.lock_mode = strcmp(argv[8], "governance") == 0 ? HBC__LOCK_MODE__LOCK_GOVERNANCE
                                                         : HBC__LOCK_MODE__LOCK_COMPLIANCE;
        cmd.cmd_case = HBC__COMMAND__CMD_VAULT_CREATE;
        cmd.vault_create = &v;
        snprintf(extra, sizeof extra, ", \"vault_id\": \"%s\"", idhex);
        rv = propose(tls, argv[1], &cmd, extra);
    } else if (strcmp(argv[5], "snapshot") == 0 && argc == 7 && unhex(argv[6], other, 16) == 0) {
        uint8_t zero[32] = {0};
        Hbc__SnapshotCommit s = HBC__SNAPSHOT_COMMIT__INIT;
        s.snapshot_id.data = id;
        s.snapshot_id.len = 16;
        s.vault_id.data = other;
        s.vault_id.len = 16;
        s.time_ms = (uint64_t)time(NULL) * 1000;
        s.root_tree_id.data = zero;
        s.root_tree_id.len = 32;
        s.ref_list_id.data = zero;
        s.ref_list_id.len = 32;
        cmd.cmd_case = HBC__COMMAND__CMD_SNAPSHOT_COMMIT;
        cmd.snapshot_commit = &s;
        snprintf(extra, sizeof extra, ", \"snapshot_id\": \"%s\"", idhex);
        rv = propose(tls, argv[1], &cmd, extra);
    } else if (strcmp(argv[5], "forget") == 0 && argc == 7 && unhex(argv[6], other, 16) == 0) {
        Hbc__SnapshotForget f = HBC__SNAPSHOT_FORGET__INIT;
        f.snapshot_id.data = other;
        f.snapshot_id.len = 16;
        cmd.cmd_case = HBC__COMMAND__CMD_SNAPSHOT_FORGET;
        cmd.snapshot_forget = &f;
        rv = propose(tls, argv[1], &cmd, "");
    } else {
        fprintf(stderr, "usage: see the top of tests/cluster/lock_setup.c\n");
    }
    tls_ctx_free(tls);
    return rv;
}
