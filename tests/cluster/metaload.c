/*
 * hbc-metaload: commit snapshot records through the metadata plane (Raft) with
 * several concurrent clients, riding out leader changes, and dump one node's
 * view of them for comparison.
 *
 * Commit mode. Each client thread runs its own loop and one connection
 * (node_client) and commits one record at a time: a ProposeRequest carrying
 * a SnapshotCommit with a fresh random 16-byte snapshot id. Happy path:
 * send → ProposeReply code 0 → log the ack (id, Raft index, client) → next.
 * Failure modes: HBC_ENOTLEADER with a leader address → go there and resend;
 * without one (election in progress) or HBC_EUNAVAILABLE → wait and resend
 * at the next address; a lost connection or a request timeout → resend the
 * SAME record at the next address (the snapshot id is the idempotency key, so
 * an HBC_EEXIST answer to a resend means the first attempt was committed: it
 * counts as acknowledged). Each record has bounded attempts and time; the
 * run has a total deadline. Any other refusal is an error.
 *
 * Dump mode (--dump ADDR): print one node's cluster status (applied index,
 * state digest, the node records of its state machine) and its snapshots of
 * the vault, as the node has applied them (no barrier unless --current), as
 * one JSON object.
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>
#include <uv.h>

#include "common/alloc.h"
#include "common/crypto.h"
#include "common/frame.h"
#include "common/log.h"
#include "common/node_client.h"
#include "common/rpc_call.h"
#include "common/tls.h"

#define MAX_ADDRS 32
#define ADDR_LEN 64
/* Delay before resending after a lost connection or while there is no leader, ms. */
#define RETRY_DELAY_MS 100
/* Most error messages printed on stderr. */
#define MAX_PRINTED_ERRORS 30
/* Setup requests (vault lookup and creation): attempts and delay between them. */
#define SETUP_ATTEMPTS 150
#define SETUP_DELAY_MS 200

/* Options and shared state of the run. */
struct metaload {
    const char *addrs[MAX_ADDRS]; /* cluster addresses to try, in order */
    unsigned naddrs;              /* how many */
    char addr_buf[4096];          /* storage for the parsed list */
    const char *ca, *cert, *key;  /* TLS files */
    unsigned clients;             /* concurrent committers */
    uint64_t commits;             /* records to commit in total */
    const char *vault_name;       /* vault the records go to */
    const char *ack_path;         /* --ack-log */
    uint64_t seed;                /* seeds the record fields (not the ids) */
    bool json;                    /* JSON summary */
    const char *dump_addr;        /* --dump: the node to describe */
    bool current;                 /* --dump --current: read through a barrier */
    unsigned request_timeout_ms;  /* a request unanswered this long is resent elsewhere */
    unsigned max_attempts;        /* sends per record at most */
    unsigned commit_timeout_ms;   /* time per record at most */
    unsigned timeout_s;           /* the whole run at most */
    unsigned rate;                /* records started per second at most, 0 = no limit */
    uint64_t start_ms;            /* monotonic start of the commits */
    struct tls_ctx *tls;          /* shared by all threads */
    uint8_t vault_id[16];         /* resolved or created */
    FILE *ack;                    /* open ack log, or NULL */
    pthread_mutex_t ack_lock;     /* serialises ack lines */
    atomic_uint_fast64_t next;    /* next record number to take */
    atomic_int printed;           /* error messages printed so far */
    uint64_t deadline_ms;         /* monotonic end of the run */
};

static struct metaload M;
static atomic_bool stop_flag;

/* Counters of one client, summed at the end. */
struct counters {
    uint64_t acked;        /* records acknowledged (code 0 or HBC_EEXIST on a resend) */
    uint64_t acked_exists; /* of which answered HBC_EEXIST on a resend */
    uint64_t failed;       /* records given up (attempts, time) or refused */
    uint64_t resent;       /* sends after the first, all records */
    uint64_t redirects;    /* HBC_ENOTLEADER answers with a leader address */
    uint64_t no_leader;    /* HBC_ENOTLEADER without one, or HBC_EUNAVAILABLE */
    uint64_t conn_errors;  /* requests lost with their connection or timed out */
    uint64_t connects;     /* connections opened */
};

/* A growable array of u64. */
struct u64vec {
    uint64_t *v; /* items */
    size_t n;    /* used */
    size_t cap;  /* allocated */
};

/* One committer: a thread with its loop and connection. */
struct client {
    unsigned id;                   /* 0..clients-1 */
    pthread_t thread;              /* its thread */
    uv_loop_t loop;                /* its loop */
    uv_timer_t timer;              /* resend delay */
    struct node_client *nc;        /* the connection, or NULL */
    char addr[ADDR_LEN];           /* where the connection goes */
    unsigned addr_idx;             /* position in M.addrs of the last listed address used */
    bool active;                   /* a record is being committed */
    uint8_t snapshot_id[16];       /* the record: idempotency key */
    uint8_t root[32];              /* root tree id */
    uint8_t refs[32];              /* reference list id */
    uint64_t time_ms;              /* its time */
    uint64_t files, bytes, chunks; /* its totals */
    unsigned attempts;             /* sends of this record */
    uint64_t started_ms;           /* first send of this record */
    uint64_t rng;                  /* field generator */
    struct counters k;             /* counters */
    struct u64vec latency;         /* ms from first send to ack, per record */
    struct u64vec ack_times;       /* monotonic ms of each ack */
};

static void client_next(struct client *c);
static void client_send(struct client *c);
static void client_begin(struct client *c);

/* ---------------------------------------------------------------------- */
/* Small helpers                                                           */

static void report(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void report(const char *fmt, ...)
{
    if (atomic_fetch_add(&M.printed, 1) >= MAX_PRINTED_ERRORS) {
        return;
    }
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "hbc-metaload: ");
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
}

static uint64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static uint64_t wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static void sleep_ms(unsigned ms)
{
    struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (long)(ms % 1000) * 1000000};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
}

static uint64_t splitmix64(uint64_t *x)
{
    uint64_t z = (*x += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static void fill(uint64_t *rng, uint8_t *out, size_t n)
{
    for (size_t i = 0; i < n; i += 8) {
        uint64_t v = splitmix64(rng);
        memcpy(out + i, &v, n - i < 8 ? n - i : 8);
    }
}

static void hex(const uint8_t *p, size_t n, char *out)
{
    for (size_t i = 0; i < n; i++) {
        sprintf(out + 2 * i, "%02x", p[i]);
    }
    out[2 * n] = '\0';
}

static int vec_push(struct u64vec *v, uint64_t x)
{
    if (v->n == v->cap) {
        size_t cap = v->cap ? v->cap * 2 : 256;
        uint64_t *p = hbc_realloc(v->v, cap * sizeof *p);
        if (p == NULL) {
            return HBC_ENOMEM;
        }
        v->v = p;
        v->cap = cap;
    }
    v->v[v->n++] = x;
    return 0;
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

/* ---------------------------------------------------------------------- */
/* Committing (client threads)                                             */

/* Go to the next listed address (after a failure at the current one). */
static void client_rotate(struct client *c)
{
    c->addr_idx = (c->addr_idx + 1) % M.naddrs;
    snprintf(c->addr, sizeof c->addr, "%s", M.addrs[c->addr_idx]);
}

/* Drop the connection (if any) so that the next send connects to c->addr. */
static void client_disconnect(struct client *c, int status, const char *why)
{
    if (c->nc != NULL) {
        struct node_client *nc = c->nc;
        c->nc = NULL;
        node_client_close(nc, status, why);
    }
}

static void resend_cb(uv_timer_t *t)
{
    client_send(t->data);
}

static void client_retry_later(struct client *c, unsigned delay_ms)
{
    uv_timer_start(&c->timer, resend_cb, delay_ms, 0);
}

static void client_ack(struct client *c, uint64_t index, bool exists)
{
    uint64_t now = now_ms();
    c->k.acked++;
    c->k.acked_exists += exists;
    vec_push(&c->latency, now - c->started_ms);
    vec_push(&c->ack_times, now);
    if (M.ack != NULL) {
        char h[33];
        hex(c->snapshot_id, 16, h);
        pthread_mutex_lock(&M.ack_lock);
        /* Index 0: acknowledged as already committed (HBC_EEXIST on a resend). */
        fprintf(M.ack, "%s %" PRIu64 " %u\n", h, exists ? 0 : index, c->id);
        fflush(M.ack);
        pthread_mutex_unlock(&M.ack_lock);
    }
    c->active = false;
    client_next(c);
}

static void client_fail(struct client *c, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static void client_fail(struct client *c, const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    char h[33];
    hex(c->snapshot_id, 16, h);
    report("client %u: record %s not committed after %u attempts: %s", c->id, h, c->attempts, msg);
    c->k.failed++;
    c->active = false;
    client_next(c);
}

static void propose_cb(struct node_client *nc, struct node_client_result *res, void *arg)
{
    struct client *c = arg;
    (void)nc;
    if (res->status != 0) {
        if (res->status == HBC_ECANCELED || res->status == HBC_EUNAVAILABLE ||
            res->status == HBC_EINTERNAL || res->status == HBC_EBUSY) {
            /* The connection went (node died, timeout) or the node could not take it: elsewhere. */
            c->k.conn_errors++;
            if (nc == c->nc) {
                client_disconnect(c, 0, NULL);
            }
            client_rotate(c);
            client_retry_later(c, RETRY_DELAY_MS);
            return;
        }
        client_fail(c, "%s: %s", hbc_errname(res->status), res->message);
        return;
    }
    const Hbc__ProposeReply *r = res->reply->propose_reply;
    switch (r->code) {
    case 0:
        client_ack(c, r->has_index ? r->index : 0, false);
        return;
    case HBC_EEXIST:
        if (c->attempts > 1) {
            client_ack(c, 0, true);
        } else {
            client_fail(c, "a fresh snapshot id was refused as existing: %s", r->message);
        }
        return;
    case HBC_ENOTLEADER:
        if (r->leader_address != NULL && r->leader_address[0] != '\0' &&
            strlen(r->leader_address) < ADDR_LEN && strcmp(r->leader_address, c->addr) != 0) {
            c->k.redirects++;
            client_disconnect(c, 0, NULL);
            snprintf(c->addr, sizeof c->addr, "%s", r->leader_address);
            client_retry_later(c, 0);
            return;
        }
        /* No leader known (an election), or the node names itself while it steps down. */
        c->k.no_leader++;
        client_disconnect(c, 0, NULL);
        client_rotate(c);
        client_retry_later(c, RETRY_DELAY_MS);
        return;
    case HBC_EUNAVAILABLE:
    case HBC_EBUSY:
    case HBC_ENOMEM:
        c->k.no_leader++;
        client_disconnect(c, 0, NULL);
        client_rotate(c);
        client_retry_later(c, RETRY_DELAY_MS);
        return;
    default:
        client_fail(c, "%s: %s", hbc_errname(r->code), r->message);
        return;
    }
}

static void on_close(struct node_client *nc, int status, const char *reason)
{
    struct client *c = node_client_data(nc);
    (void)status;
    (void)reason;
    if (c->nc == nc) {
        c->nc = NULL;
    }
}

static void client_send(struct client *c)
{
    uint64_t now = now_ms();
    if (c->attempts >= M.max_attempts || now - c->started_ms >= M.commit_timeout_ms ||
        now >= M.deadline_ms) {
        client_fail(c, "out of attempts or time (%" PRIu64 " ms)", now - c->started_ms);
        return;
    }
    struct err e;
    err_clear(&e);
    if (c->nc == NULL) {
        struct node_client_opts o = {.request_timeout_ms = M.request_timeout_ms};
        struct node_client_cbs cbs = {.on_close = on_close};
        if (node_client_connect(&c->loop, M.tls, c->addr, &o, &cbs, c, &c->nc, &e) != 0) {
            c->nc = NULL;
            c->attempts++;
            c->k.conn_errors++;
            client_rotate(c);
            client_retry_later(c, RETRY_DELAY_MS);
            return;
        }
        c->k.connects++;
    }
    Hbc__SnapshotCommit sc = HBC__SNAPSHOT_COMMIT__INIT;
    sc.snapshot_id = (ProtobufCBinaryData){16, c->snapshot_id};
    sc.vault_id = (ProtobufCBinaryData){16, M.vault_id};
    sc.time_ms = c->time_ms;
    sc.root_tree_id = (ProtobufCBinaryData){32, c->root};
    sc.ref_list_id = (ProtobufCBinaryData){32, c->refs};
    sc.files = c->files;
    sc.bytes = c->bytes;
    sc.chunks = c->chunks;
    Hbc__Command cmd = HBC__COMMAND__INIT;
    cmd.cmd_case = HBC__COMMAND__CMD_SNAPSHOT_COMMIT;
    cmd.snapshot_commit = &sc;
    Hbc__ProposeRequest pr = HBC__PROPOSE_REQUEST__INIT;
    pr.command = &cmd;
    Hbc__Frame f = HBC__FRAME__INIT;
    f.body_case = HBC__FRAME__BODY_PROPOSE;
    f.propose = &pr;
    c->attempts++;
    c->k.resent += c->attempts > 1;
    int rv = node_client_request(c->nc, &f, HBC__FRAME__BODY_PROPOSE_REPLY, propose_cb, c, &e);
    if (rv != 0) {
        c->k.conn_errors++;
        client_disconnect(c, 0, NULL);
        client_rotate(c);
        client_retry_later(c, RETRY_DELAY_MS);
    }
}

static void client_begin(struct client *c)
{
    c->started_ms = now_ms();
    client_send(c);
}

static void begin_cb(uv_timer_t *t)
{
    client_begin(t->data);
}

/* Take the next record, or wind the client down when there is none. */
static void client_next(struct client *c)
{
    uint64_t n = atomic_load(&stop_flag) || now_ms() >= M.deadline_ms
                     ? M.commits
                     : atomic_fetch_add(&M.next, 1);
    if (n >= M.commits) {
        client_disconnect(c, 0, NULL);
        if (!uv_is_closing((uv_handle_t *)&c->timer)) {
            uv_close((uv_handle_t *)&c->timer, NULL);
        }
        return;
    }
    struct err e;
    if (crypto_random(c->snapshot_id, sizeof c->snapshot_id, &e) != 0) {
        report("client %u: %s", c->id, e.msg);
        c->k.failed++;
        client_disconnect(c, 0, NULL);
        uv_close((uv_handle_t *)&c->timer, NULL);
        return;
    }
    fill(&c->rng, c->root, sizeof c->root);
    fill(&c->rng, c->refs, sizeof c->refs);
    c->time_ms = wall_ms();
    c->files = splitmix64(&c->rng) % 100000;
    c->chunks = c->files + splitmix64(&c->rng) % 100000;
    c->bytes = c->chunks * (splitmix64(&c->rng) % (4u << 20));
    c->attempts = 0;
    c->active = true;
    if (M.rate > 0) {
        /* Record n starts no earlier than n / rate seconds into the run. */
        uint64_t due = M.start_ms + n * 1000 / M.rate;
        uint64_t now = now_ms();
        if (due > now) {
            uv_timer_start(&c->timer, begin_cb, due - now, 0);
            return;
        }
    }
    client_begin(c);
}

static void *client_main(void *arg)
{
    struct client *c = arg;
    client_next(c);
    uv_run(&c->loop, UV_RUN_DEFAULT);
    return NULL;
}

static void on_signal(int sig)
{
    (void)sig;
    atomic_store(&stop_flag, true);
}

/* ---------------------------------------------------------------------- */
/* Setup and dump (main thread, blocking calls)                            */

/* One call with a deadline; *reply is the frame or NULL. */
static int call(const char *addr, Hbc__Frame *req, Hbc__Frame **reply, struct err *e)
{
    static uint64_t request_id;
    req->request_id = ++request_id;
    return rpc_call(M.tls, addr, req, M.request_timeout_ms, reply, e);
}

/* The vault's id as addr has applied it: 0, HBC_ENOTFOUND, or a call error. */
static int vault_lookup(const char *addr, const char *name, uint8_t id[16], struct err *e)
{
    Hbc__Frame req = HBC__FRAME__INIT;
    Hbc__ListVaultsRequest lv = HBC__LIST_VAULTS_REQUEST__INIT;
    req.body_case = HBC__FRAME__BODY_LIST_VAULTS;
    req.list_vaults = &lv;
    Hbc__Frame *r = NULL;
    int rv = call(addr, &req, &r, e);
    if (rv != 0) {
        return rv;
    }
    if (r->body_case != HBC__FRAME__BODY_LIST_VAULTS_REPLY) {
        rv = err_setraw(e, HBC_EPROTO, "%s: list vaults: %s", addr,
                        r->body_case == HBC__FRAME__BODY_PROPOSE_REPLY ? r->propose_reply->message
                        : r->body_case == HBC__FRAME__BODY_ERROR       ? r->error->message
                                                                       : "unexpected reply");
        frame_free(r);
        return rv;
    }
    rv = HBC_ENOTFOUND;
    for (size_t i = 0; i < r->list_vaults_reply->n_vaults; i++) {
        const Hbc__VaultInfo *v = r->list_vaults_reply->vaults[i];
        if (strcmp(v->name, name) == 0 && v->vault_id.len == 16) {
            memcpy(id, v->vault_id.data, 16);
            rv = 0;
        }
    }
    frame_free(r);
    if (rv != 0) {
        err_setraw(e, rv, "%s: no vault named '%s'", addr, name);
    }
    return rv;
}

/* Find the vault on any node, or create it (tolerating HBC_EEXIST from a concurrent creator). */
static int vault_setup(struct err *e)
{
    uint8_t fresh[16];
    int rv = crypto_random(fresh, sizeof fresh, e);
    if (rv != 0) {
        return rv;
    }
    char addr[ADDR_LEN];
    unsigned idx = 0;
    snprintf(addr, sizeof addr, "%s", M.addrs[0]);
    bool created = false;
    for (unsigned attempt = 0; attempt < SETUP_ATTEMPTS; attempt++) {
        if (vault_lookup(addr, M.vault_name, M.vault_id, e) == 0) {
            return 0;
        }
        if (created) {
            /* Committed, not applied at this node yet, or answered elsewhere: look again. */
            idx = (idx + 1) % M.naddrs;
            snprintf(addr, sizeof addr, "%s", M.addrs[idx]);
            sleep_ms(SETUP_DELAY_MS);
            continue;
        }
        Hbc__VaultCreate vc = HBC__VAULT_CREATE__INIT;
        vc.vault_id = (ProtobufCBinaryData){16, fresh};
        vc.name = (char *)M.vault_name;
        vc.copies = 1;
        vc.k = 4;
        vc.m = 2;
        Hbc__Command cmd = HBC__COMMAND__INIT;
        cmd.cmd_case = HBC__COMMAND__CMD_VAULT_CREATE;
        cmd.vault_create = &vc;
        Hbc__ProposeRequest pr = HBC__PROPOSE_REQUEST__INIT;
        pr.command = &cmd;
        Hbc__Frame req = HBC__FRAME__INIT;
        req.body_case = HBC__FRAME__BODY_PROPOSE;
        req.propose = &pr;
        Hbc__Frame *r = NULL;
        if (call(addr, &req, &r, e) != 0) {
            idx = (idx + 1) % M.naddrs;
            snprintf(addr, sizeof addr, "%s", M.addrs[idx]);
            sleep_ms(SETUP_DELAY_MS);
            continue;
        }
        int code =
            r->body_case == HBC__FRAME__BODY_PROPOSE_REPLY ? r->propose_reply->code : HBC_EPROTO;
        if (code == 0) {
            memcpy(M.vault_id, fresh, 16);
            frame_free(r);
            return 0;
        }
        if (code == HBC_EEXIST) {
            created = true; /* someone else made it (or our lost first try did) */
        } else if (code == HBC_ENOTLEADER && r->propose_reply->leader_address != NULL &&
                   r->propose_reply->leader_address[0] != '\0') {
            snprintf(addr, sizeof addr, "%s", r->propose_reply->leader_address);
        } else if (code == HBC_ENOTLEADER || code == HBC_EUNAVAILABLE) {
            idx = (idx + 1) % M.naddrs;
            snprintf(addr, sizeof addr, "%s", M.addrs[idx]);
            sleep_ms(SETUP_DELAY_MS);
        } else {
            rv = err_setraw(e, code, "create vault '%s': %s", M.vault_name,
                            r->body_case == HBC__FRAME__BODY_PROPOSE_REPLY
                                ? r->propose_reply->message
                                : "unexpected reply");
            frame_free(r);
            return rv;
        }
        frame_free(r);
    }
    return err_setraw(e, HBC_EUNAVAILABLE, "vault '%s': not found or created in time (%s)",
                      M.vault_name, e->msg);
}

/* Print one node's view: status, digest, the vault's snapshots. 0, 1 (error or refusal). */
static int dump(void)
{
    struct err e;
    err_clear(&e);
    json_t *o = json_object();
    int status = 0;
    Hbc__Frame req = HBC__FRAME__INIT;
    Hbc__ClusterStatusRequest cs = HBC__CLUSTER_STATUS_REQUEST__INIT;
    req.body_case = HBC__FRAME__BODY_CLUSTER_STATUS;
    req.cluster_status = &cs;
    Hbc__Frame *r = NULL;
    json_object_set_new(o, "address", json_string(M.dump_addr));
    if (call(M.dump_addr, &req, &r, &e) != 0 ||
        r->body_case != HBC__FRAME__BODY_CLUSTER_STATUS_REPLY) {
        json_object_set_new(o, "error",
                            json_string(r == NULL ? e.msg : "cluster status: unexpected reply"));
        json_object_set_new(o, "error_code",
                            json_string(hbc_errname(r == NULL ? e.code : HBC_EPROTO)));
        status = 1;
        goto out;
    }
    const Hbc__ClusterStatusReply *s = r->cluster_status_reply;
    char digest[65];
    hex(s->state_digest.data, s->state_digest.len < 32 ? s->state_digest.len : 32, digest);
    json_object_set_new(o, "node", json_string(s->node_id));
    json_object_set_new(o, "raft_id", json_integer((json_int_t)s->raft_id));
    json_object_set_new(o, "state", json_string(s->state));
    json_object_set_new(o, "term", json_integer((json_int_t)s->term));
    json_object_set_new(o, "commit_index", json_integer((json_int_t)s->commit_index));
    json_object_set_new(o, "applied_index", json_integer((json_int_t)s->applied_index));
    json_object_set_new(o, "last_index", json_integer((json_int_t)s->last_index));
    json_object_set_new(o, "leader_raft_id",
                        s->has_leader_raft_id ? json_integer((json_int_t)s->leader_raft_id)
                                              : json_null());
    json_object_set_new(o, "members", json_integer((json_int_t)s->n_members));
    json_object_set_new(o, "state_digest", json_string(digest));
    /* The state machine's node records, as this node has applied them. */
    json_t *nodes = json_array();
    for (size_t i = 0; i < s->n_nodes; i++) {
        const Hbc__NodeInfo *n = s->nodes[i];
        json_array_append_new(nodes, json_pack("{s:s, s:I, s:s, s:s, s:s, s:i, s:I, s:I}", "node",
                                               n->node_id, "raft_id", (json_int_t)n->raft_id,
                                               "data_address", n->data_address, "raft_address",
                                               n->raft_address, "site", n->site, "state",
                                               (int)n->state, "joined_ms", (json_int_t)n->joined_ms,
                                               "updated_ms", (json_int_t)n->updated_ms));
    }
    json_object_set_new(o, "nodes", nodes);
    frame_free(r);
    r = NULL;

    if (M.vault_name == NULL) {
        goto out;
    }
    uint8_t vid[16];
    int rv = vault_lookup(M.dump_addr, M.vault_name, vid, &e);
    if (rv == HBC_ENOTFOUND) {
        json_object_set_new(o, "vault_id", json_null());
        json_object_set_new(o, "snapshots", json_array());
        goto out;
    }
    if (rv != 0) {
        json_object_set_new(o, "error", json_string(e.msg));
        json_object_set_new(o, "error_code", json_string(hbc_errname(rv)));
        status = 1;
        goto out;
    }
    char vh[33];
    hex(vid, 16, vh);
    json_object_set_new(o, "vault_id", json_string(vh));
    Hbc__ListSnapshotsRequest ls = HBC__LIST_SNAPSHOTS_REQUEST__INIT;
    ls.has_vault_id = true;
    ls.vault_id = (ProtobufCBinaryData){16, vid};
    ls.has_current = M.current;
    ls.current = M.current;
    Hbc__Frame lreq = HBC__FRAME__INIT;
    lreq.body_case = HBC__FRAME__BODY_LIST_SNAPSHOTS;
    lreq.list_snapshots = &ls;
    if (call(M.dump_addr, &lreq, &r, &e) != 0) {
        json_object_set_new(o, "error", json_string(e.msg));
        json_object_set_new(o, "error_code", json_string(hbc_errname(e.code)));
        status = 1;
        goto out;
    }
    if (r->body_case != HBC__FRAME__BODY_LIST_SNAPSHOTS_REPLY) {
        int code =
            r->body_case == HBC__FRAME__BODY_PROPOSE_REPLY ? r->propose_reply->code : HBC_EPROTO;
        const char *msg = r->body_case == HBC__FRAME__BODY_PROPOSE_REPLY ? r->propose_reply->message
                          : r->body_case == HBC__FRAME__BODY_ERROR       ? r->error->message
                                                                         : "unexpected reply";
        json_object_set_new(o, "error", json_string(msg));
        json_object_set_new(o, "error_code", json_string(hbc_errname(code)));
        if (code == HBC_ENOTLEADER && r->propose_reply->leader_address != NULL) {
            json_object_set_new(o, "leader_address", json_string(r->propose_reply->leader_address));
        }
        status = 1;
        goto out;
    }
    const Hbc__ListSnapshotsReply *l = r->list_snapshots_reply;
    json_object_set_new(o, "snapshots_applied_index", json_integer((json_int_t)l->applied_index));
    json_t *arr = json_array();
    for (size_t i = 0; i < l->n_snapshots; i++) {
        const Hbc__SnapshotInfo *si = l->snapshots[i];
        char h[33] = "";
        if (si->snapshot_id.len == 16) {
            hex(si->snapshot_id.data, 16, h);
        }
        json_array_append_new(arr, json_pack("[s,I]", h, (json_int_t)si->commit_index));
    }
    json_object_set_new(o, "snapshots", arr);
out:
    frame_free(r);
    char *text = json_dumps(o, JSON_COMPACT);
    printf("%s\n", text != NULL ? text : "{}");
    free(text);
    json_decref(o);
    return status;
}

/* ---------------------------------------------------------------------- */
/* Options and main                                                        */

static void usage(FILE *f)
{
    fprintf(
        f,
        "Usage: hbc-metaload --cluster ADDR[,ADDR...] --ca FILE --cert FILE --key FILE\n"
        "                    --vault-name NAME [options]\n"
        "       hbc-metaload --dump ADDR --ca FILE --cert FILE --key FILE [--vault-name NAME]\n"
        "                    [--current]\n"
        "\n"
        "Commits snapshot records (SnapshotCommit, each with a fresh random 16-byte id)\n"
        "through the cluster's metadata plane with concurrent clients, following leader\n"
        "redirects and resending the same record elsewhere when a node is lost.\n"
        "\n"
        "Options:\n"
        "  --cluster LIST          data-plane addresses of members, comma-separated\n"
        "  --clients N             concurrent committers, one record in flight each (default 4)\n"
        "  --commits N             records to commit in total (default 1000)\n"
        "  --vault-name NAME       the vault (created with VaultCreate if missing)\n"
        "  --ack-log FILE          append 'snapshot-id-hex raft-index client' per acknowledged\n"
        "                          record, flushed at once; index 0 means it was answered\n"
        "                          HBC_EEXIST on a resend (committed by an earlier attempt)\n"
        "  --seed S                seeds the record fields other than the id (default: time)\n"
        "  --request-timeout MS    resend elsewhere after this long without a reply (5000)\n"
        "  --attempts N            sends per record at most (default 300)\n"
        "  --commit-timeout MS     time per record at most (default 60000)\n"
        "  --timeout S             the whole run at most (default 900)\n"
        "  --rate N                start at most N records per second in all (default: no\n"
        "                          limit), to spread a run over a known time\n"
        "  --json                  print the summary as one JSON object\n"
        "  --dump ADDR             print ADDR's status (applied index, state digest) and its\n"
        "                          snapshots of --vault-name as one JSON object; exit 1 when\n"
        "                          the node cannot be asked or refuses\n"
        "  --current               with --dump: list through a Raft barrier (leader only)\n"
        "  --help                  this text\n"
        "\n"
        "SIGINT or SIGTERM: take no new records, finish the ones in flight, print the\n"
        "summary. Exit status: 0 when every record was acknowledged, 1 otherwise, 2 on\n"
        "bad usage.\n");
}

static int parse_u64(const char *s, uint64_t *out)
{
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno != 0 || end == s || *end != '\0' || *s == '-') {
        return -1;
    }
    *out = v;
    return 0;
}

static int parse_addrs(const char *list)
{
    if (strlen(list) >= sizeof M.addr_buf) {
        return -1;
    }
    snprintf(M.addr_buf, sizeof M.addr_buf, "%s", list);
    char *save = NULL;
    for (char *t = strtok_r(M.addr_buf, ",", &save); t != NULL; t = strtok_r(NULL, ",", &save)) {
        if (M.naddrs == MAX_ADDRS || strlen(t) >= ADDR_LEN) {
            return -1;
        }
        M.addrs[M.naddrs++] = t;
    }
    return M.naddrs > 0 ? 0 : -1;
}

static int parse_args(int argc, char **argv)
{
    enum {
        O_CLUSTER = 256,
        O_CA,
        O_CERT,
        O_KEY,
        O_CLIENTS,
        O_COMMITS,
        O_VAULT,
        O_ACK,
        O_SEED,
        O_REQ_TIMEOUT,
        O_ATTEMPTS,
        O_COMMIT_TIMEOUT,
        O_TIMEOUT,
        O_JSON,
        O_DUMP,
        O_CURRENT,
        O_RATE,
        O_HELP
    };
    static const struct option opts[] = {
        {"cluster", required_argument, NULL, O_CLUSTER},
        {"ca", required_argument, NULL, O_CA},
        {"cert", required_argument, NULL, O_CERT},
        {"key", required_argument, NULL, O_KEY},
        {"clients", required_argument, NULL, O_CLIENTS},
        {"commits", required_argument, NULL, O_COMMITS},
        {"vault-name", required_argument, NULL, O_VAULT},
        {"ack-log", required_argument, NULL, O_ACK},
        {"seed", required_argument, NULL, O_SEED},
        {"request-timeout", required_argument, NULL, O_REQ_TIMEOUT},
        {"attempts", required_argument, NULL, O_ATTEMPTS},
        {"commit-timeout", required_argument, NULL, O_COMMIT_TIMEOUT},
        {"timeout", required_argument, NULL, O_TIMEOUT},
        {"json", no_argument, NULL, O_JSON},
        {"dump", required_argument, NULL, O_DUMP},
        {"current", no_argument, NULL, O_CURRENT},
        {"rate", required_argument, NULL, O_RATE},
        {"help", no_argument, NULL, O_HELP},
        {NULL, 0, NULL, 0},
    };
    M.clients = 4;
    M.commits = 1000;
    M.seed = wall_ms();
    M.request_timeout_ms = 5000;
    M.max_attempts = 300;
    M.commit_timeout_ms = 60000;
    M.timeout_s = 900;
    int ch;
    uint64_t v = 0;
    while ((ch = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        bool bad = false;
        switch (ch) {
        case O_CLUSTER:
            bad = parse_addrs(optarg) != 0;
            break;
        case O_CA:
            M.ca = optarg;
            break;
        case O_CERT:
            M.cert = optarg;
            break;
        case O_KEY:
            M.key = optarg;
            break;
        case O_VAULT:
            bad = strlen(optarg) == 0 || strlen(optarg) > 128;
            M.vault_name = optarg;
            break;
        case O_ACK:
            M.ack_path = optarg;
            break;
        case O_DUMP:
            bad = strlen(optarg) >= ADDR_LEN;
            M.dump_addr = optarg;
            break;
        case O_CURRENT:
            M.current = true;
            break;
        case O_JSON:
            M.json = true;
            break;
        case O_SEED:
            bad = parse_u64(optarg, &M.seed) != 0;
            break;
        case O_COMMITS:
            bad = parse_u64(optarg, &M.commits) != 0 || M.commits > 100000000;
            break;
        case O_CLIENTS:
        case O_REQ_TIMEOUT:
        case O_ATTEMPTS:
        case O_COMMIT_TIMEOUT:
        case O_TIMEOUT:
        case O_RATE:
            bad = parse_u64(optarg, &v) != 0 || v == 0 || v > 86400000;
            if (ch == O_CLIENTS) {
                bad = bad || v > 256;
                M.clients = (unsigned)v;
            } else if (ch == O_REQ_TIMEOUT) {
                M.request_timeout_ms = (unsigned)v;
            } else if (ch == O_ATTEMPTS) {
                M.max_attempts = (unsigned)v;
            } else if (ch == O_COMMIT_TIMEOUT) {
                M.commit_timeout_ms = (unsigned)v;
            } else if (ch == O_RATE) {
                M.rate = (unsigned)v;
            } else {
                M.timeout_s = (unsigned)v;
            }
            break;
        case O_HELP:
        case 'h':
            usage(stdout);
            exit(0);
        default:
            usage(stderr);
            return -1;
        }
        if (bad) {
            fprintf(stderr, "hbc-metaload: bad value '%s' for --%s\n", optarg,
                    opts[ch - O_CLUSTER].name);
            return -1;
        }
    }
    if (optind != argc || M.ca == NULL || M.cert == NULL || M.key == NULL) {
        fprintf(stderr, "hbc-metaload: --ca, --cert and --key are required\n");
        return -1;
    }
    if (M.dump_addr == NULL && (M.naddrs == 0 || M.vault_name == NULL)) {
        fprintf(stderr, "hbc-metaload: --cluster and --vault-name are required (or --dump)\n");
        return -1;
    }
    return 0;
}

/* Summed counters and figures of all clients. */
static void print_summary(struct client *cs, double secs)
{
    struct counters t = {0};
    struct u64vec lat = {0}, times = {0};
    for (unsigned i = 0; i < M.clients; i++) {
        struct counters *k = &cs[i].k;
        t.acked += k->acked;
        t.acked_exists += k->acked_exists;
        t.failed += k->failed;
        t.resent += k->resent;
        t.redirects += k->redirects;
        t.no_leader += k->no_leader;
        t.conn_errors += k->conn_errors;
        t.connects += k->connects;
        for (size_t j = 0; j < cs[i].latency.n; j++) {
            vec_push(&lat, cs[i].latency.v[j]);
        }
        for (size_t j = 0; j < cs[i].ack_times.n; j++) {
            vec_push(&times, cs[i].ack_times.v[j]);
        }
    }
    qsort(lat.v, lat.n, sizeof *lat.v, cmp_u64);
    qsort(times.v, times.n, sizeof *times.v, cmp_u64);
    uint64_t p50 = lat.n ? lat.v[lat.n / 2] : 0;
    uint64_t p99 = lat.n ? lat.v[(lat.n * 99) / 100 < lat.n ? (lat.n * 99) / 100 : lat.n - 1] : 0;
    uint64_t max = lat.n ? lat.v[lat.n - 1] : 0;
    uint64_t gap = 0;
    for (size_t i = 1; i < times.n; i++) {
        gap = times.v[i] - times.v[i - 1] > gap ? times.v[i] - times.v[i - 1] : gap;
    }
    double cps = secs > 0 ? (double)t.acked / secs : 0;
    uint64_t unattempted = M.commits - t.acked - t.failed;
    if (M.json) {
        json_t *j = json_pack(
            "{s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:f, s:f, s:I, s:I, s:I, "
            "s:I}",
            "clients", (json_int_t)M.clients, "commits", (json_int_t)M.commits, "acked",
            (json_int_t)t.acked, "acked_exists", (json_int_t)t.acked_exists, "failed",
            (json_int_t)t.failed, "not_attempted", (json_int_t)unattempted, "resent",
            (json_int_t)t.resent, "redirects", (json_int_t)t.redirects, "no_leader",
            (json_int_t)t.no_leader, "conn_errors", (json_int_t)t.conn_errors, "connects",
            (json_int_t)t.connects, "seconds", secs, "commits_per_s", cps, "latency_p50_ms",
            (json_int_t)p50, "latency_p99_ms", (json_int_t)p99, "latency_max_ms", (json_int_t)max,
            "max_ack_gap_ms", (json_int_t)gap);
        char *s = j != NULL ? json_dumps(j, JSON_COMPACT) : NULL;
        printf("%s\n", s != NULL ? s : "{}");
        free(s);
        json_decref(j);
    } else {
        printf("%" PRIu64 " of %" PRIu64 " records acknowledged (%" PRIu64
               " as already committed) in %.2f s: %.0f commits/s; failed %" PRIu64
               ", resent %" PRIu64 ", redirects %" PRIu64 ", no leader %" PRIu64
               ", connection errors %" PRIu64 "; latency p50 %" PRIu64 " ms, p99 %" PRIu64
               " ms, max %" PRIu64 " ms; longest gap between acks %" PRIu64 " ms\n",
               t.acked, M.commits, t.acked_exists, secs, cps, t.failed, t.resent, t.redirects,
               t.no_leader, t.conn_errors, p50, p99, max, gap);
    }
    hbc_free(lat.v);
    hbc_free(times.v);
}

int main(int argc, char **argv)
{
    if (parse_args(argc, argv) != 0) {
        return 2;
    }
    log_init_from_env();
    signal(SIGPIPE, SIG_IGN);
    struct err e;
    err_clear(&e);
    struct tls_ctx_opts to = {
        .ca_file = M.ca, .cert_file = M.cert, .key_file = M.key, .handshake_timeout_ms = 3000};
    if (tls_ctx_new(&to, &M.tls, &e) != 0) {
        fprintf(stderr, "hbc-metaload: %s\n", e.msg);
        return 1;
    }
    if (M.dump_addr != NULL) {
        int rv = dump();
        tls_ctx_free(M.tls);
        return rv;
    }
    M.deadline_ms = now_ms() + (uint64_t)M.timeout_s * 1000;
    if (vault_setup(&e) != 0) {
        fprintf(stderr, "hbc-metaload: %s\n", e.msg);
        tls_ctx_free(M.tls);
        return 1;
    }
    if (M.ack_path != NULL && (M.ack = fopen(M.ack_path, "a")) == NULL) {
        fprintf(stderr, "hbc-metaload: open %s: %s\n", M.ack_path, strerror(errno));
        tls_ctx_free(M.tls);
        return 1;
    }
    pthread_mutex_init(&M.ack_lock, NULL);
    struct client *cs = hbc_calloc(M.clients, sizeof *cs);
    if (cs == NULL) {
        fprintf(stderr, "hbc-metaload: out of memory\n");
        return 1;
    }
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);

    uint64_t t0 = now_ms();
    M.start_ms = t0;
    for (unsigned i = 0; i < M.clients; i++) {
        struct client *c = &cs[i];
        c->id = i;
        c->rng = M.seed * 1000003u + i;
        c->addr_idx = i % M.naddrs;
        snprintf(c->addr, sizeof c->addr, "%s", M.addrs[c->addr_idx]);
        uv_loop_init(&c->loop);
        uv_timer_init(&c->loop, &c->timer);
        c->timer.data = c;
        pthread_create(&c->thread, NULL, client_main, c);
    }
    bool loops_clean = true;
    for (unsigned i = 0; i < M.clients; i++) {
        pthread_join(cs[i].thread, NULL);
        if (uv_loop_close(&cs[i].loop) != 0) {
            loops_clean = false;
        }
    }
    double secs = (double)(now_ms() - t0) / 1000.0;
    print_summary(cs, secs);
    uint64_t acked = 0;
    for (unsigned i = 0; i < M.clients; i++) {
        acked += cs[i].k.acked;
        hbc_free(cs[i].latency.v);
        hbc_free(cs[i].ack_times.v);
    }
    bool ok = acked == M.commits && loops_clean;
    if (!loops_clean) {
        fprintf(stderr, "hbc-metaload: a loop still had handles at exit\n");
    }
    if (M.ack != NULL && fclose(M.ack) != 0) {
        fprintf(stderr, "hbc-metaload: close %s: %s\n", M.ack_path, strerror(errno));
        ok = false;
    }
    hbc_free(cs);
    tls_ctx_free(M.tls);
    return ok ? 0 : 1;
}
