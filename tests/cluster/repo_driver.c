/*
 * hbc-repo-driver: drives client/repo.h against a real cluster for the
 * cluster tests and for measuring put/get throughput. Chunks are generated
 * from a seed, so a later run regenerates and compares them byte for byte.
 * Every command prints one JSON line on stdout; on an error it prints
 * {"error": "HBC_E...", "message": "..."} and exits 1.
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <jansson.h>

#include "client/repo.h"
#include "client/repo_internal.h"
#include "common/alloc.h"
#include "common/crypto.h"
#include "common/frame.h"
#include "common/keys.h"

#define MAX_CHUNK ((size_t)4 << 20)

static struct {
    const char *addrs[64]; /* --cluster, split */
    size_t naddrs;         /* how many */
    const char *ca;        /* --ca */
    const char *cert;      /* --cert */
    const char *key;       /* --key */
    const char *keyfile;   /* --keyfile */
    const char *vault;     /* --vault */
    unsigned threads;      /* --threads */
    int copy;              /* --copy (get) */
    unsigned timeout_s;    /* --timeout */
    size_t bench_size;     /* --chunk-size (bench) */
} opt = {.threads = 1, .copy = -1};

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int fail(int code, const char *msg)
{
    json_t *o = json_object();
    json_object_set_new(o, "error", json_string(hbc_errname(code)));
    json_object_set_new(o, "message", json_string(msg));
    char *s = json_dumps(o, JSON_COMPACT);
    puts(s);
    free(s);
    json_decref(o);
    return 1;
}

static void print(json_t *o)
{
    char *s = json_dumps(o, JSON_COMPACT);
    puts(s);
    fflush(stdout);
    free(s);
    json_decref(o);
}

/* xorshift64* stream. */
static uint64_t rnd(uint64_t *s)
{
    *s ^= *s >> 12;
    *s ^= *s << 25;
    *s ^= *s >> 27;
    return *s * 0x2545f4914f6cdd1dull;
}

/*
 * Chunk i of seed: every 20th is the chunker's maximum (4 MiB), the next a
 * single byte, every 10th from the third on compressible text; the others
 * random bytes of 1 KiB to 256 KiB. In bench mode every chunk is random and
 * bench_size long.
 */
static size_t chunk_make(uint64_t seed, uint64_t i, uint8_t *buf)
{
    uint64_t s = (seed * 0x9e3779b97f4a7c15ull) ^ (i + 1) * 0xbf58476d1ce4e5b9ull;
    s = s != 0 ? s : 1;
    size_t len;
    bool text = false;
    if (opt.bench_size > 0) {
        len = opt.bench_size;
    } else if (i % 20 == 0) {
        len = MAX_CHUNK;
    } else if (i % 20 == 1) {
        len = 1;
    } else {
        text = i % 10 == 2;
        len = 1024 + (size_t)(rnd(&s) % (255 * 1024));
    }
    if (text) {
        static const char words[] = "PID|12345|DOE^JANE|19700101|F|OBX|1|NM|GLUCOSE|5.4|mmol/L\r";
        for (size_t k = 0; k < len; k++) {
            buf[k] = (uint8_t)words[(k + (size_t)(rnd(&s) % 3 == 0)) % (sizeof words - 1)];
        }
    } else {
        for (size_t k = 0; k < len; k += 8) {
            uint64_t x = rnd(&s);
            memcpy(buf + k, &x, len - k < 8 ? len - k : 8);
        }
    }
    return len;
}

/* A worker thread's share: chunks first, first + step, ... below n. */
struct job {
    struct repo *r;            /* shared */
    const char *cmd;           /* "put" or "get" */
    uint64_t seed;             /* data seed */
    uint64_t n;                /* chunks */
    uint64_t first;            /* this thread's first */
    uint64_t step;             /* thread count */
    uint64_t bytes;            /* plaintext bytes done */
    uint64_t mismatches;       /* get: chunks that differ */
    struct repo_read_stats st; /* get: shard counters */
    int rv;                    /* first error */
    char msg[600];             /* its message */
};

static void *job_run(void *arg)
{
    struct job *j = arg;
    uint8_t *buf = hbc_malloc(MAX_CHUNK + 8);
    if (buf == NULL) {
        j->rv = HBC_ENOMEM;
        return NULL;
    }
    for (uint64_t i = j->first; i < j->n && j->rv == 0; i += j->step) {
        size_t len = chunk_make(j->seed, i, buf);
        uint8_t id[REPO_CHUNK_ID];
        struct err e;
        err_clear(&e);
        int rv = repo_chunk_id(j->r, buf, len, id, &e);
        if (rv == 0 && strcmp(j->cmd, "put") == 0) {
            rv = repo_put_chunk(j->r, id, buf, len, &e);
        } else if (rv == 0) {
            uint8_t *plain = NULL;
            size_t plen = 0;
            rv = repo_get_chunk(j->r, id, opt.copy, &plain, &plen, &j->st, &e);
            if (rv == 0 && (plen != len || memcmp(plain, buf, len) != 0)) {
                j->mismatches++;
            }
            hbc_free(plain);
        }
        if (rv != 0) {
            j->rv = rv;
            snprintf(j->msg, sizeof j->msg, "chunk %llu: %s", (unsigned long long)i, e.msg);
        }
        j->bytes += len;
    }
    hbc_free(buf);
    return NULL;
}

static int run_jobs(struct repo *r, const char *cmd, uint64_t seed, uint64_t n)
{
    unsigned t = opt.threads;
    struct job *jobs = hbc_calloc(t, sizeof *jobs);
    pthread_t *th = hbc_calloc(t, sizeof *th);
    double t0 = now_s();
    for (unsigned i = 0; i < t; i++) {
        jobs[i] = (struct job){.r = r, .cmd = cmd, .seed = seed, .n = n, .first = i, .step = t};
        pthread_create(&th[i], NULL, job_run, &jobs[i]);
    }
    uint64_t bytes = 0, mismatches = 0, read = 0, errors = 0;
    int rv = 0;
    const char *msg = "";
    for (unsigned i = 0; i < t; i++) {
        pthread_join(th[i], NULL);
        bytes += jobs[i].bytes;
        mismatches += jobs[i].mismatches;
        read += jobs[i].st.shards_read;
        errors += jobs[i].st.shard_errors;
        if (rv == 0 && jobs[i].rv != 0) {
            rv = jobs[i].rv;
            msg = jobs[i].msg;
        }
    }
    double secs = now_s() - t0;
    if (rv != 0) {
        int x = fail(rv, msg);
        hbc_free(jobs);
        hbc_free(th);
        return x;
    }
    json_t *o = json_object();
    json_object_set_new(o, "command", json_string(cmd));
    json_object_set_new(o, "chunks", json_integer((json_int_t)n));
    json_object_set_new(o, "bytes", json_integer((json_int_t)bytes));
    json_object_set_new(o, "seconds", json_real(secs));
    json_object_set_new(o, "mb_s", json_real((double)bytes / 1e6 / (secs > 0 ? secs : 1e-9)));
    json_object_set_new(o, "threads", json_integer(t));
    if (strcmp(cmd, "get") == 0) {
        json_object_set_new(o, "mismatches", json_integer((json_int_t)mismatches));
        json_object_set_new(o, "shards_read", json_integer((json_int_t)read));
        json_object_set_new(o, "shard_errors", json_integer((json_int_t)errors));
    }
    print(o);
    hbc_free(jobs);
    hbc_free(th);
    return mismatches == 0 ? 0 : 1;
}

static int cmd_have(struct repo *r, uint64_t seed, uint64_t n, uint64_t absent)
{
    uint8_t(*ids)[REPO_CHUNK_ID] = hbc_calloc(n + absent, REPO_CHUNK_ID);
    bool *present = hbc_calloc(n + absent, sizeof *present);
    uint8_t *buf = hbc_malloc(MAX_CHUNK + 8);
    struct err e;
    for (uint64_t i = 0; i < n + absent; i++) {
        /* The absent ones come from another seed. */
        size_t len = chunk_make(i < n ? seed : seed + 1000003, i < n ? i : i - n, buf);
        int rv = repo_chunk_id(r, buf, len, ids[i], &e);
        if (rv != 0) {
            return fail(rv, e.msg);
        }
    }
    int rv = repo_have(r, (const uint8_t(*)[REPO_CHUNK_ID])ids, n + absent, present, &e);
    if (rv != 0) {
        return fail(rv, e.msg);
    }
    uint64_t yes = 0, false_yes = 0;
    for (uint64_t i = 0; i < n + absent; i++) {
        yes += i < n && present[i];
        false_yes += i >= n && present[i];
    }
    json_t *o = json_object();
    json_object_set_new(o, "present", json_integer((json_int_t)yes));
    json_object_set_new(o, "asked", json_integer((json_int_t)n));
    json_object_set_new(o, "absent_reported_present", json_integer((json_int_t)false_yes));
    print(o);
    hbc_free(ids);
    hbc_free(present);
    hbc_free(buf);
    return 0;
}

/* Propose a VaultCreate whose wrapped key is one byte short: the state machine must refuse it. */
static int cmd_badkeys(struct repo *r)
{
    uint8_t id[REPO_ID_LEN] = {0xba, 0xd0};
    uint8_t wrapped[KEYS_WRAPPED_LEN] = {0};
    Hbc__Command cmd = HBC__COMMAND__INIT;
    Hbc__VaultCreate vc = HBC__VAULT_CREATE__INIT;
    vc.vault_id = (ProtobufCBinaryData){REPO_ID_LEN, id};
    vc.name = "bad-keys";
    vc.copies = 1;
    vc.k = 1;
    vc.m = 0;
    vc.has_wrapped_data_key = true;
    vc.wrapped_data_key = (ProtobufCBinaryData){KEYS_WRAPPED_LEN - 1, wrapped};
    vc.has_wrapped_chunk_id_key = true;
    vc.wrapped_chunk_id_key = (ProtobufCBinaryData){KEYS_WRAPPED_LEN, wrapped};
    cmd.cmd_case = HBC__COMMAND__CMD_VAULT_CREATE;
    cmd.vault_create = &vc;
    Hbc__Frame req = HBC__FRAME__INIT;
    Hbc__ProposeRequest pr = HBC__PROPOSE_REQUEST__INIT;
    pr.command = &cmd;
    req.body_case = HBC__FRAME__BODY_PROPOSE;
    req.propose = &pr;
    Hbc__Frame *reply = NULL;
    struct err e;
    int rv = repo_control(r, &req, HBC__FRAME__BODY_PROPOSE_REPLY, &reply, &e);
    if (rv != 0) {
        return fail(rv, e.msg);
    }
    json_t *o = json_object();
    json_object_set_new(o, "code", json_string(hbc_errname(reply->propose_reply->code)));
    print(o);
    frame_free(reply);
    return 0;
}

/* Commit a snapshot, commit it again (idempotent), list, record a restore test. */
static int cmd_snapshot(struct repo *r)
{
    uint8_t snap[REPO_ID_LEN], root[32], refs[32];
    struct err e;
    int rv = crypto_random(snap, sizeof snap, &e);
    if (rv != 0) {
        return fail(rv, e.msg);
    }
    memset(root, 0x11, sizeof root);
    memset(refs, 0x22, sizeof refs);
    Hbc__SnapshotCommit s = HBC__SNAPSHOT_COMMIT__INIT;
    s.snapshot_id = (ProtobufCBinaryData){sizeof snap, snap};
    s.vault_id = (ProtobufCBinaryData){REPO_ID_LEN, (uint8_t *)repo_vault_id(r)};
    s.time_ms = 1700000000000ull;
    s.root_tree_id = (ProtobufCBinaryData){32, root};
    s.ref_list_id = (ProtobufCBinaryData){32, refs};
    s.files = 3;
    s.bytes = 300;
    s.chunks = 2;
    uint64_t index = 0, index2 = 0;
    rv = repo_snapshot_commit(r, &s, &index, &e);
    if (rv == 0) {
        rv = repo_snapshot_commit(r, &s, &index2, &e);
    }
    if (rv != 0) {
        return fail(rv, e.msg);
    }
    Hbc__SnapshotInfo **list = NULL;
    size_t n = 0;
    rv = repo_snapshot_list(r, &list, &n, &e);
    if (rv != 0) {
        return fail(rv, e.msg);
    }
    bool found = false;
    for (size_t i = 0; i < n; i++) {
        found |= list[i]->snapshot_id.len == sizeof snap &&
                 memcmp(list[i]->snapshot_id.data, snap, sizeof snap) == 0;
        protobuf_c_message_free_unpacked(&list[i]->base, NULL);
    }
    hbc_free(list);
    Hbc__RestoreTestRecord t = HBC__RESTORE_TEST_RECORD__INIT;
    t.snapshot_id = s.snapshot_id;
    t.chunks = 2;
    t.bytes = 300;
    t.result = HBC__RESTORE_TEST_RESULT__RESTORE_TEST_PASSED;
    rv = repo_restore_test_record(r, &t, &e);
    if (rv != 0) {
        return fail(rv, e.msg);
    }
    json_t *o = json_object();
    json_object_set_new(o, "index", json_integer((json_int_t)index));
    json_object_set_new(o, "snapshots", json_integer((json_int_t)n));
    json_object_set_new(o, "found", json_boolean(found));
    print(o);
    return 0;
}

static void usage(void)
{
    fprintf(stderr,
            "usage: hbc-repo-driver --cluster A[,B...] --ca F --cert F --key F [--keyfile F] "
            "[--vault NAME]\n"
            "       [--threads N] [--copy C] [--timeout S] [--chunk-size BYTES] COMMAND\n"
            "commands: open | put N SEED | get N SEED | have N SEED ABSENT | badkeys | snapshot\n"
            "passphrase: HBC_PASSPHRASE\n");
}

int main(int argc, char **argv)
{
    char addr_buf[4096] = "";
    int i = 1;
    for (; i < argc && argv[i][0] == '-'; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (v == NULL) {
            usage();
            return 2;
        }
        i++;
        if (strcmp(a, "--cluster") == 0) {
            snprintf(addr_buf, sizeof addr_buf, "%s", v);
            for (char *tok = strtok(addr_buf, ","); tok != NULL && opt.naddrs < 64;
                 tok = strtok(NULL, ",")) {
                opt.addrs[opt.naddrs++] = tok;
            }
        } else if (strcmp(a, "--ca") == 0) {
            opt.ca = v;
        } else if (strcmp(a, "--cert") == 0) {
            opt.cert = v;
        } else if (strcmp(a, "--key") == 0) {
            opt.key = v;
        } else if (strcmp(a, "--keyfile") == 0) {
            opt.keyfile = v;
        } else if (strcmp(a, "--vault") == 0) {
            opt.vault = v;
        } else if (strcmp(a, "--threads") == 0) {
            opt.threads = (unsigned)atoi(v) > 0 ? (unsigned)atoi(v) : 1;
        } else if (strcmp(a, "--copy") == 0) {
            opt.copy = atoi(v);
        } else if (strcmp(a, "--timeout") == 0) {
            opt.timeout_s = (unsigned)atoi(v);
        } else if (strcmp(a, "--chunk-size") == 0) {
            opt.bench_size = (size_t)strtoull(v, NULL, 10);
            if (opt.bench_size == 0 || opt.bench_size > MAX_CHUNK) {
                usage();
                return 2;
            }
        } else {
            usage();
            return 2;
        }
    }
    if (i >= argc) {
        usage();
        return 2;
    }
    const char *cmd = argv[i];
    const char *pass = getenv("HBC_PASSPHRASE");
    struct repo_options o = {.addrs = opt.addrs,
                             .naddrs = opt.naddrs,
                             .ca_file = opt.ca,
                             .cert_file = opt.cert,
                             .key_file = opt.key,
                             .keyfile = opt.keyfile,
                             .passphrase = pass,
                             .passphrase_len = pass != NULL ? strlen(pass) : 0,
                             .vault = opt.vault,
                             .timeout_ms = opt.timeout_s * 1000};
    struct repo *r = NULL;
    struct err e;
    int rv = repo_open(&o, &r, &e);
    if (rv != 0) {
        return fail(rv, e.msg);
    }
    int x;
    uint64_t n = i + 1 < argc ? strtoull(argv[i + 1], NULL, 10) : 0;
    uint64_t seed = i + 2 < argc ? strtoull(argv[i + 2], NULL, 10) : 1;
    if (strcmp(cmd, "open") == 0) {
        json_t *j = json_object();
        json_object_set_new(j, "nodes", json_integer(repo_node_count(r)));
        json_object_set_new(j, "copies", json_integer(repo_copies(r)));
        print(j);
        x = 0;
    } else if (strcmp(cmd, "put") == 0 || strcmp(cmd, "get") == 0) {
        x = run_jobs(r, cmd, seed, n);
    } else if (strcmp(cmd, "have") == 0) {
        x = cmd_have(r, seed, n, i + 3 < argc ? strtoull(argv[i + 3], NULL, 10) : 0);
    } else if (strcmp(cmd, "badkeys") == 0) {
        x = cmd_badkeys(r);
    } else if (strcmp(cmd, "snapshot") == 0) {
        x = cmd_snapshot(r);
    } else {
        usage();
        x = 2;
    }
    repo_close(r);
    return x;
}
