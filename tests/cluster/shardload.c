/*
 * hbc-shardload: drive one hbcd's data plane with many pipelined connections
 * (put, get, read-back, or check an acknowledgement log) and verify every byte.
 *
 * Shard number n (0..shards-1) is fully determined by (--seed, n): its chunk
 * id, shard index, payload size and payload bytes. So a later run with the
 * same seed regenerates and compares every byte, and an ack log names what
 * was acknowledged. Clients share one or more libuv loops (--threads); client
 * c handles the shard numbers n with n % clients == c.
 *
 * Happy path of a client: connect (node_client) → keep --pipeline requests in
 * flight, each a batch of up to --batch shards → log each acknowledged put →
 * (putget) read each acknowledged batch back → close. Failure modes: a
 * connection that closes cancels its requests; with --reconnect they are
 * retried on a new connection for up to that many seconds of outage,
 * otherwise they count as errors. A mismatch, a missing shard or an error
 * makes the exit code nonzero.
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <malloc.h>
#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>
#include <openssl/evp.h>
#include <uv.h>

#include "common/alloc.h"
#include "common/crypto.h"
#include "common/erasure.h"
#include "common/frame.h"
#include "common/log.h"
#include "common/node_client.h"
#include "common/tls.h"

/* The scheme every generated shard claims: RS(4,2), index n % 6. */
#define GEN_K 4
#define GEN_M 2
/* Most error messages printed on stderr. */
#define MAX_PRINTED_ERRORS 20
/* Delay between reconnection attempts, ms. */
#define RECONNECT_DELAY_MS 150

enum mode { MODE_PUT, MODE_GET, MODE_PUTGET, MODE_CHECK };

/* One line of an ack log: what was acknowledged. */
struct ack_entry {
    uint64_t num;         /* shard number */
    uint8_t vault_id[16]; /* key */
    uint8_t chunk_id[32]; /* key */
    uint32_t index;       /* key */
    uint32_t len;         /* encoded length */
    uint8_t sha256[32];   /* the encoded shard's SHA-256 (its trailer) */
};

/* Options and shared state of the whole run. */
struct load {
    const char *addr;            /* node address */
    const char *ca, *cert, *key; /* TLS files */
    unsigned clients;            /* connections */
    unsigned threads;            /* loops (threads) */
    uint64_t shards;             /* shard numbers 0..shards-1 */
    uint64_t min_size;           /* smallest payload */
    uint64_t max_size;           /* largest payload */
    unsigned pipeline;           /* requests in flight per client */
    unsigned batch;              /* shards per request at most */
    uint64_t batch_bytes;        /* encoded bytes per request at most */
    uint64_t seed;               /* data seed */
    enum mode mode;              /* what to do */
    const char *ack_path;        /* --ack-log */
    const char *check_path;      /* --check */
    bool json;                   /* JSON summary */
    bool allow_missing;          /* get: absent shards are not errors */
    unsigned reconnect_s;        /* seconds of outage tolerated, 0 = none */
    bool ack_fsync;              /* fsync the ack log after each batch */
    bool client_hash;            /* put whole shards with their trailer (old path) */
    uint8_t vault_id[16];        /* derived from the seed */
    double log_lo, log_hi;       /* ln(min_size), ln(max_size + 1) */
    struct tls_ctx *tls;         /* shared by all threads */
    FILE *ack;                   /* open ack log, or NULL */
    pthread_mutex_t ack_lock;    /* serialises ack log lines */
    struct ack_entry *entries;   /* check mode: the ack log */
    uint64_t nentries;           /* their number */
    atomic_int printed;          /* error messages printed so far */
};

static struct load L;
static atomic_bool stop_flag;    /* SIGINT or SIGTERM arrived */
static atomic_uint workers_done; /* worker threads whose loop has ended */

/* Counters of one thread, summed at the end. */
struct counters {
    uint64_t put_shards, put_bytes; /* acknowledged puts */
    uint64_t get_shards, get_bytes; /* shards read back and verified */
    uint64_t errors;                /* failed requests or shards */
    uint64_t mismatches;            /* shards whose bytes differ */
    uint64_t missing;               /* shards the node did not have */
    uint64_t retried;               /* shards re-sent after a lost connection */
    uint64_t reconnects;            /* connections made after the first */
    uint64_t abandoned;             /* shards not done because of a stop */
    uint64_t attempted_below;       /* every shard number put was below this */
};

/* A growable list of shard numbers (or ack entry indices). */
struct numvec {
    uint64_t *v; /* items */
    size_t n;    /* used */
    size_t cap;  /* allocated */
};

struct worker;

/* One connection and its share of the work. */
struct client {
    struct worker *w;         /* owner */
    unsigned id;              /* 0..clients-1 */
    struct node_client *nc;   /* the connection, or NULL between connections */
    bool closing;             /* node_client_close() was called */
    bool finished;            /* will not connect again */
    unsigned inflight;        /* requests in flight */
    uint64_t put_next;        /* next new shard number to put */
    struct numvec put_retry;  /* shard numbers to put again */
    uint64_t get_next;        /* next shard number (or entry) to get */
    struct numvec get_todo;   /* shard numbers (or entries) to get */
    uint64_t outage_start_ms; /* when the connection was lost, 0 when connected */
    uv_timer_t timer;         /* reconnection delay */
    bool connected_once;      /* a connection succeeded before */
};

/* One thread with its loop and clients. */
struct worker {
    pthread_t thread;       /* the thread */
    uv_loop_t loop;         /* its loop */
    uv_async_t wake;        /* stop notifications */
    struct client *clients; /* its clients */
    unsigned nclients;      /* how many */
    unsigned live;          /* clients not finished */
    struct counters k;      /* its counters */
    struct gen_scratch *gs; /* put batches are built here (reused; NULL until the first) */
};

/* One request in flight. */
struct op {
    struct client *c;       /* who sent it */
    bool get;               /* get (else put) */
    size_t n;               /* shards */
    uint64_t *nums;         /* their numbers (check mode: entry indices) */
    struct ack_entry *acks; /* put: what to log once acknowledged */
    uint64_t bytes;         /* encoded bytes */
};

static void client_pump(struct client *c);
static void client_connect(struct client *c);

/* ---------------------------------------------------------------------- */
/* Small helpers                                                           */

static void report(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void report(const char *fmt, ...)
{
    if (atomic_fetch_add(&L.printed, 1) >= MAX_PRINTED_ERRORS) {
        return;
    }
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "hbc-shardload: ");
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
}

static int vec_push(struct numvec *v, uint64_t x)
{
    if (v->n == v->cap) {
        size_t cap = v->cap ? v->cap * 2 : 64;
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

static uint64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static uint64_t splitmix64(uint64_t *x)
{
    uint64_t z = (*x += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

/* xoshiro256**: fast, good enough to make incompressible test payloads. */
struct xoshiro {
    uint64_t s[4]; /* state */
};

static uint64_t rotl(uint64_t x, int k)
{
    return (x << k) | (x >> (64 - k));
}

static uint64_t xoshiro_next(struct xoshiro *r)
{
    uint64_t *s = r->s;
    uint64_t out = rotl(s[1] * 5, 7) * 9;
    uint64_t t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return out;
}

static void hex(const uint8_t *p, size_t n, char *out)
{
    static const char d[] = "0123456789abcdef";
    for (size_t i = 0; i < n; i++) {
        out[2 * i] = d[p[i] >> 4];
        out[2 * i + 1] = d[p[i] & 15];
    }
    out[2 * n] = '\0';
}

static int unhex(const char *s, uint8_t *out, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        unsigned v;
        if (sscanf(s + 2 * i, "%2x", &v) != 1) {
            return -1;
        }
        out[i] = (uint8_t)v;
    }
    return s[2 * n] == '\0' || s[2 * n] == ' ' || s[2 * n] == '\n' ? 0 : -1;
}

/* ---------------------------------------------------------------------- */
/* Deterministic shards                                                    */

/* What shard number num is, without its payload. */
struct gen {
    uint8_t chunk_id[32]; /* key */
    uint32_t index;       /* key */
    size_t payload;       /* payload bytes */
};

static void gen_params(uint64_t num, struct gen *g)
{
    uint64_t x = L.seed ^ (num * 0xD1B54A32D192ED03ull);
    for (int i = 0; i < 4; i++) {
        uint64_t v = splitmix64(&x);
        memcpy(g->chunk_id + 8 * i, &v, 8);
    }
    /* The shard number in clear in the chunk id keeps keys distinct whatever the hash does. */
    memcpy(g->chunk_id, &num, sizeof num);
    g->index = (uint32_t)(num % (GEN_K + GEN_M));
    double u = (double)(splitmix64(&x) >> 11) * 0x1.0p-53;
    double size = floor(exp(L.log_lo + u * (L.log_hi - L.log_lo)));
    uint64_t s = size < (double)L.min_size ? L.min_size : (uint64_t)size;
    g->payload = s > L.max_size ? L.max_size : s;
}

/* Bytes of shard num once encoded (payload + format overhead, exact). */
static size_t gen_encoded_estimate(uint64_t num)
{
    struct gen g;
    gen_params(num, &g);
    return g.payload + ERASURE_SHARD_PREFIX + 80 + ERASURE_SHARD_TRAILER;
}

/* Room for shard num's payload: its length rounded up to whole 8-byte words. */
static size_t gen_payload_room(size_t payload)
{
    return (payload + 7) & ~(size_t)7;
}

/* Write shard num's payload (g->payload bytes, g from gen_params) into out (gen_payload_room). */
static void gen_payload(uint64_t num, const struct gen *g, uint8_t *out)
{
    struct xoshiro r;
    uint64_t x = L.seed ^ 0x5EEDull ^ (num * 0x9E3779B97F4A7C15ull);
    for (int i = 0; i < 4; i++) {
        r.s[i] = splitmix64(&x);
    }
    for (size_t i = 0; i < g->payload; i += 8) {
        uint64_t v = xoshiro_next(&r);
        memcpy(out + i, &v, 8);
    }
}

/* The ShardHeader of shard num (g from gen_params). */
static void gen_info(const struct gen *g, struct erasure_shard_info *info)
{
    memset(info, 0, sizeof *info);
    memcpy(info->vault_id, L.vault_id, 16);
    memcpy(info->chunk_id, g->chunk_id, 32);
    info->k = GEN_K;
    info->m = GEN_M;
    info->index = g->index;
    info->object_length = (uint64_t)g->payload * GEN_K;
    info->shard_length = g->payload;
}

/* Build shard num's encoded form into *blob (hbc_free it). */
static int gen_blob(uint64_t num, uint8_t **blob, size_t *len, struct gen *g, struct err *e)
{
    gen_params(num, g);
    uint8_t *payload = hbc_malloc(gen_payload_room(g->payload));
    if (payload == NULL) {
        return err_set(e, HBC_ENOMEM, "payload of %zu bytes", g->payload);
    }
    gen_payload(num, g, payload);
    struct erasure_shard_info info;
    gen_info(g, &info);
    int rv = erasure_shard_encode(&info, payload, blob, len, e);
    hbc_free(payload);
    return rv;
}

/*
 * What one put batch is built in, kept by its worker for the next batch:
 * the shards go out as pieces (common/put_frame.h) that TLS encrypts inside
 * node_client_put_shards_epoch(), so one set serves every request.
 */
struct gen_scratch {
    uint8_t *payloads;                        /* the batch's payloads, one after another */
    size_t cap;                               /* bytes at payloads */
    struct node_client_shard *sh;             /* L.batch shards */
    struct gen *g;                            /* L.batch shards' parameters */
    uint8_t (*heads)[ERASURE_SHARD_HEAD_MAX]; /* L.batch shard heads */
};

static void gen_scratch_free(struct gen_scratch *gs)
{
    if (gs != NULL) {
        hbc_free(gs->payloads);
        hbc_free(gs->sh);
        hbc_free(gs->g);
        hbc_free(gs->heads);
        hbc_free(gs);
    }
}

/* The SHA-256 of head || payload: the trailer the node writes, for the ack log. */
static int gen_trailer(const uint8_t *head, size_t head_len, const uint8_t *payload, size_t len,
                       uint8_t out[32], struct err *e)
{
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    unsigned n = 0;
    bool ok = ctx != NULL && EVP_DigestInit_ex(ctx, EVP_sha256(), NULL) == 1 &&
              EVP_DigestUpdate(ctx, head, head_len) == 1 &&
              EVP_DigestUpdate(ctx, payload, len) == 1 && EVP_DigestFinal_ex(ctx, out, &n) == 1;
    EVP_MD_CTX_free(ctx);
    return ok ? 0 : err_openssl(e, HBC_ECRYPTO, "SHA-256 of a shard");
}

/* ---------------------------------------------------------------------- */
/* Requests                                                                */

static void op_free(struct op *o)
{
    if (o == NULL) {
        return;
    }
    hbc_free(o->nums);
    hbc_free(o->acks);
    hbc_free(o);
}

/* Give o's shards back to its client's queues (after a lost connection or a busy client). */
static void op_requeue(struct op *o)
{
    struct client *c = o->c;
    for (size_t i = 0; i < o->n; i++) {
        if (vec_push(o->get ? &c->get_todo : &c->put_retry, o->nums[i]) != 0) {
            c->w->k.errors++;
        }
    }
}

static void ack_log_write(const struct op *o)
{
    if (L.ack == NULL) {
        return;
    }
    char vh[33], ch[65], sh[65];
    pthread_mutex_lock(&L.ack_lock);
    for (size_t i = 0; i < o->n; i++) {
        const struct ack_entry *a = &o->acks[i];
        hex(a->vault_id, 16, vh);
        hex(a->chunk_id, 32, ch);
        hex(a->sha256, 32, sh);
        fprintf(L.ack, "%" PRIu64 " %s %s %u %u %s\n", a->num, vh, ch, a->index, a->len, sh);
    }
    fflush(L.ack);
    if (L.ack_fsync) {
        fsync(fileno(L.ack));
    }
    pthread_mutex_unlock(&L.ack_lock);
}

/* A request failed as a whole with status: retry it, or count it. */
static void op_failed(struct op *o, struct node_client_result *res)
{
    struct client *c = o->c;
    if (res->status == HBC_ECANCELED && atomic_load(&stop_flag)) {
        c->w->k.abandoned += o->n;
    } else if (res->status == HBC_ECANCELED && L.reconnect_s > 0) {
        c->w->k.retried += o->n;
        op_requeue(o);
    } else {
        c->w->k.errors += o->n;
        report("client %u: %s of %zu shards: %s (%s)", c->id, o->get ? "get" : "put", o->n,
               res->message, hbc_errname(res->status));
    }
}

static void put_cb(struct node_client *nc, struct node_client_result *res, void *arg)
{
    (void)nc;
    struct op *o = arg;
    struct client *c = o->c;
    c->inflight--;
    if (res->status != 0) {
        op_failed(o, res);
    } else if (res->reply->put_shards_reply->stored != o->n) {
        c->w->k.errors += o->n;
        report("client %u: put of %zu shards acknowledged %u", c->id, o->n,
               res->reply->put_shards_reply->stored);
    } else {
        c->w->k.put_shards += o->n;
        c->w->k.put_bytes += o->bytes;
        ack_log_write(o);
        if (L.mode == MODE_PUTGET) {
            for (size_t i = 0; i < o->n; i++) {
                if (vec_push(&c->get_todo, o->nums[i]) != 0) {
                    c->w->k.errors++;
                }
            }
        }
    }
    op_free(o);
    client_pump(c);
}

/* Verify one returned shard against what was put; 0 when identical. */
static int verify_blob(uint64_t item, const Hbc__ShardBlob *b, char *why, size_t wlen)
{
    struct err e;
    err_clear(&e);
    if (L.mode == MODE_CHECK) {
        const struct ack_entry *a = &L.entries[item];
        if (b->data.len != a->len) {
            snprintf(why, wlen, "%zu bytes, %u acknowledged", b->data.len, a->len);
            return HBC_ECORRUPT;
        }
        int rv = erasure_shard_decode(b->data.data, b->data.len, NULL, NULL, &e);
        if (rv != 0) {
            snprintf(why, wlen, "%s", e.msg);
            return rv;
        }
        if (memcmp(b->data.data + b->data.len - 32, a->sha256, 32) != 0) {
            snprintf(why, wlen, "SHA-256 differs from the acknowledged one");
            return HBC_ECORRUPT;
        }
        return 0;
    }
    uint8_t *blob = NULL;
    size_t len = 0;
    struct gen g;
    int rv = gen_blob(item, &blob, &len, &g, &e);
    if (rv != 0) {
        snprintf(why, wlen, "regenerate: %s", e.msg);
        return rv;
    }
    if (len != b->data.len || memcmp(blob, b->data.data, len) != 0) {
        snprintf(why, wlen, "%zu bytes differ from the %zu bytes put", b->data.len, len);
        rv = HBC_ECORRUPT;
    }
    hbc_free(blob);
    return rv;
}

/* The key of item (shard number, or ack entry in check mode). */
static void item_key(uint64_t item, const uint8_t **vault, uint8_t chunk[32], uint32_t *index)
{
    if (L.mode == MODE_CHECK) {
        *vault = L.entries[item].vault_id;
        memcpy(chunk, L.entries[item].chunk_id, 32);
        *index = L.entries[item].index;
        return;
    }
    struct gen g;
    gen_params(item, &g);
    *vault = L.vault_id;
    memcpy(chunk, g.chunk_id, 32);
    *index = g.index;
}

static uint64_t item_num(uint64_t item)
{
    return L.mode == MODE_CHECK ? L.entries[item].num : item;
}

static void get_cb(struct node_client *nc, struct node_client_result *res, void *arg)
{
    (void)nc;
    struct op *o = arg;
    struct client *c = o->c;
    struct counters *k = &c->w->k;
    c->inflight--;
    if (res->status != 0) {
        op_failed(o, res);
        op_free(o);
        client_pump(c);
        return;
    }
    const Hbc__GetShardsReply *g = res->reply->get_shards_reply;
    size_t j = 0;
    for (size_t i = 0; i < o->n; i++) {
        const uint8_t *vault;
        uint8_t chunk[32];
        uint32_t index;
        item_key(o->nums[i], &vault, chunk, &index);
        const Hbc__ShardBlob *b = j < g->n_shards ? g->shards[j] : NULL;
        bool here = b != NULL && b->index == index && b->chunk_id.len == 32 &&
                    memcmp(b->chunk_id.data, chunk, 32) == 0 && b->vault_id.len == 16 &&
                    memcmp(b->vault_id.data, vault, 16) == 0;
        if (!here) {
            k->missing++;
            if (!L.allow_missing) {
                report("client %u: shard %" PRIu64 " is missing on the node", c->id,
                       item_num(o->nums[i]));
            }
            continue;
        }
        j++;
        char why[600];
        if (verify_blob(o->nums[i], b, why, sizeof why) != 0) {
            k->mismatches++;
            report("client %u: shard %" PRIu64 " MISMATCH: %s", c->id, item_num(o->nums[i]), why);
        } else {
            k->get_shards++;
            k->get_bytes += b->data.len;
        }
    }
    if (j != g->n_shards) {
        k->errors++;
        report("client %u: get reply holds %zu shards that were not asked for in that order", c->id,
               g->n_shards - j);
    }
    op_free(o);
    client_pump(c);
}

/* Next batch of a source (a to-do list, then a cursor over this client's share); NULL if none. */
static struct op *op_take(struct client *c, bool get, struct numvec *todo, uint64_t *next,
                          uint64_t limit)
{
    struct op *o = hbc_calloc(1, sizeof *o);
    if (o == NULL) {
        return NULL;
    }
    o->c = c;
    o->get = get;
    o->nums = hbc_calloc(L.batch, sizeof *o->nums);
    if (o->nums == NULL) {
        hbc_free(o);
        return NULL;
    }
    uint64_t bytes = 0;
    while (o->n < L.batch) {
        uint64_t item;
        bool from_todo = todo->n > 0;
        if (from_todo) {
            item = todo->v[todo->n - 1];
        } else if (*next < limit) {
            item = *next;
        } else {
            break;
        }
        uint64_t size = L.mode == MODE_CHECK ? L.entries[item].len : gen_encoded_estimate(item);
        if (o->n > 0 && bytes + size > L.batch_bytes) {
            break;
        }
        if (from_todo) {
            todo->n--;
        } else {
            *next += L.clients;
        }
        o->nums[o->n++] = item;
        bytes += size;
    }
    if (o->n == 0) {
        op_free(o);
        return NULL;
    }
    return o;
}

/*
 * Put o's shards as the client does since the node fills in trailers: each
 * shard is its head, its payload (generated into the worker's scratch) and a
 * zero trailer flagged ShardBlob.sha256_unset, encrypted straight from there.
 */
static int op_send_put_pieces(struct op *o, struct err *e)
{
    struct worker *w = o->c->w;
    if (w->gs == NULL) {
        w->gs = hbc_calloc(1, sizeof *w->gs);
        if (w->gs != NULL) {
            w->gs->sh = hbc_calloc(L.batch, sizeof *w->gs->sh);
            w->gs->g = hbc_calloc(L.batch, sizeof *w->gs->g);
            w->gs->heads = hbc_calloc(L.batch, sizeof *w->gs->heads);
        }
        if (w->gs == NULL || w->gs->sh == NULL || w->gs->g == NULL || w->gs->heads == NULL) {
            gen_scratch_free(w->gs);
            w->gs = NULL;
            return err_set(e, HBC_ENOMEM, "put batch");
        }
    }
    struct gen_scratch *gs = w->gs;
    o->acks = hbc_calloc(o->n, sizeof *o->acks);
    if (o->acks == NULL) {
        return err_set(e, HBC_ENOMEM, "put batch");
    }
    struct gen *g = gs->g;
    size_t room = 0;
    for (size_t i = 0; i < o->n; i++) {
        gen_params(o->nums[i], &g[i]);
        room += gen_payload_room(g[i].payload);
    }
    if (room > gs->cap) {
        hbc_free(gs->payloads);
        gs->payloads = hbc_malloc(room);
        gs->cap = gs->payloads != NULL ? room : 0;
        if (gs->payloads == NULL) {
            return err_set(e, HBC_ENOMEM, "put batch of %zu bytes", room);
        }
    }
    uint8_t *p = gs->payloads;
    for (size_t i = 0; i < o->n; i++) {
        gen_payload(o->nums[i], &g[i], p);
        struct erasure_shard_info info;
        gen_info(&g[i], &info);
        size_t head_len;
        int rv = erasure_shard_head(&info, gs->heads[i], &head_len, e);
        if (rv != 0) {
            return rv;
        }
        struct ack_entry *a = &o->acks[i];
        a->num = o->nums[i];
        memcpy(a->vault_id, L.vault_id, 16);
        memcpy(a->chunk_id, g[i].chunk_id, 32);
        a->index = g[i].index;
        a->len = (uint32_t)(head_len + g[i].payload + ERASURE_SHARD_TRAILER);
        if (L.ack != NULL) {
            rv = gen_trailer(gs->heads[i], head_len, p, g[i].payload, a->sha256, e);
            if (rv != 0) {
                return rv;
            }
        }
        gs->sh[i] = (struct node_client_shard){.vault_id = a->vault_id,
                                               .chunk_id = a->chunk_id,
                                               .index = a->index,
                                               .data = p,
                                               .len = g[i].payload,
                                               .sha256_unset = true,
                                               .head = gs->heads[i],
                                               .head_len = head_len};
        o->bytes += a->len;
        p += gen_payload_room(g[i].payload);
    }
    return node_client_put_shards_epoch(o->c->nc, gs->sh, o->n, 0, put_cb, o, e);
}

/* Put o's shards whole, each hashed here and copied into a protobuf-c frame (--client-hash). */
static int op_send_put(struct op *o, struct err *e)
{
    if (!L.client_hash) {
        return op_send_put_pieces(o, e);
    }
    struct node_client_shard *sh = hbc_calloc(o->n, sizeof *sh);
    uint8_t **blobs = hbc_calloc(o->n, sizeof *blobs);
    o->acks = hbc_calloc(o->n, sizeof *o->acks);
    int rv = HBC_ENOMEM;
    if (sh == NULL || blobs == NULL || o->acks == NULL) {
        err_set(e, rv, "put batch");
        goto out;
    }
    for (size_t i = 0; i < o->n; i++) {
        struct gen g;
        size_t len;
        rv = gen_blob(o->nums[i], &blobs[i], &len, &g, e);
        if (rv != 0) {
            goto out;
        }
        struct ack_entry *a = &o->acks[i];
        a->num = o->nums[i];
        memcpy(a->vault_id, L.vault_id, 16);
        memcpy(a->chunk_id, g.chunk_id, 32);
        a->index = g.index;
        a->len = (uint32_t)len;
        memcpy(a->sha256, blobs[i] + len - 32, 32);
        sh[i].vault_id = a->vault_id;
        sh[i].chunk_id = a->chunk_id;
        sh[i].index = a->index;
        sh[i].data = blobs[i];
        sh[i].len = len;
        o->bytes += len;
    }
    rv = node_client_put_shards(o->c->nc, sh, o->n, put_cb, o, e);
out:
    for (size_t i = 0; blobs != NULL && i < o->n; i++) {
        hbc_free(blobs[i]);
    }
    hbc_free(blobs);
    hbc_free(sh);
    return rv;
}

static int op_send_get(struct op *o, struct err *e)
{
    struct node_client_key *keys = hbc_calloc(o->n, sizeof *keys);
    uint8_t(*chunks)[32] = hbc_calloc(o->n, 32);
    int rv = HBC_ENOMEM;
    if (keys == NULL || chunks == NULL) {
        err_set(e, rv, "get batch");
        goto out;
    }
    for (size_t i = 0; i < o->n; i++) {
        item_key(o->nums[i], &keys[i].vault_id, chunks[i], &keys[i].index);
        keys[i].chunk_id = chunks[i];
    }
    rv = node_client_get_shards(o->c->nc, keys, o->n, get_cb, o, e);
out:
    hbc_free(keys);
    hbc_free(chunks);
    return rv;
}

static bool client_has_work(const struct client *c)
{
    bool puts = L.mode == MODE_PUT || L.mode == MODE_PUTGET;
    bool gets = L.mode == MODE_GET || L.mode == MODE_CHECK;
    uint64_t limit = L.mode == MODE_CHECK ? L.nentries : L.shards;
    return c->get_todo.n > 0 || c->put_retry.n > 0 || (puts && c->put_next < limit) ||
           (gets && c->get_next < limit);
}

/* Remaining work, counted when a client gives up. */
static uint64_t client_remaining(const struct client *c)
{
    uint64_t limit = L.mode == MODE_CHECK ? L.nentries : L.shards;
    uint64_t n = c->get_todo.n + c->put_retry.n;
    uint64_t next = (L.mode == MODE_PUT || L.mode == MODE_PUTGET) ? c->put_next : c->get_next;
    if (next < limit) {
        n += (limit - next + L.clients - 1) / L.clients;
    }
    return n;
}

static void client_finish(struct client *c)
{
    if (c->finished) {
        return;
    }
    c->finished = true;
    uv_timer_stop(&c->timer);
    uv_close((uv_handle_t *)&c->timer, NULL);
    if (--c->w->live == 0) {
        uv_close((uv_handle_t *)&c->w->wake, NULL);
    }
}

/* Keep the pipeline full; close the connection when everything is done. */
static void client_pump(struct client *c)
{
    if (c->nc == NULL || c->closing) {
        return;
    }
    bool stopping = atomic_load(&stop_flag);
    while (!stopping && c->inflight < L.pipeline && !node_client_full(c->nc)) {
        bool gets = L.mode == MODE_GET || L.mode == MODE_CHECK;
        uint64_t limit = L.mode == MODE_CHECK ? L.nentries : L.shards;
        struct op *o = op_take(c, true, &c->get_todo, &c->get_next, gets ? limit : 0);
        if (o == NULL && !gets) {
            o = op_take(c, false, &c->put_retry, &c->put_next, limit);
        }
        if (o == NULL) {
            break;
        }
        struct err e;
        err_clear(&e);
        int rv = o->get ? op_send_get(o, &e) : op_send_put(o, &e);
        if (rv == 0) {
            c->inflight++;
            continue;
        }
        op_requeue(o);
        op_free(o);
        if (rv == HBC_EBUSY || rv == HBC_ECANCELED) {
            break; /* on_drain or on_close goes on */
        }
        report("client %u: %s", c->id, e.msg);
        c->w->k.errors++;
        node_client_close(c->nc, rv, e.msg);
        c->closing = true;
        return;
    }
    if (c->inflight == 0 && (stopping || !client_has_work(c))) {
        c->closing = true;
        node_client_close(c->nc, 0, NULL);
    }
}

/* ---------------------------------------------------------------------- */
/* Connections                                                             */

static void on_connect(struct node_client *nc, int status)
{
    struct client *c = node_client_data(nc);
    if (status == 0) {
        if (c->connected_once) {
            c->w->k.reconnects++;
        }
        c->connected_once = true;
        c->outage_start_ms = 0;
        /* Requests issued before the handshake would be parked as flat copies. */
        client_pump(c);
    }
}

static void on_drain(struct node_client *nc)
{
    client_pump(node_client_data(nc));
}

static void reconnect_cb(uv_timer_t *t)
{
    client_connect(t->data);
}

static void on_close(struct node_client *nc, int status, const char *reason)
{
    struct client *c = node_client_data(nc);
    c->nc = NULL;
    c->closing = false;
    bool stopping = atomic_load(&stop_flag);
    if (stopping || !client_has_work(c)) {
        c->w->k.abandoned += client_has_work(c) ? client_remaining(c) : 0;
        client_finish(c);
        return;
    }
    uint64_t now = now_ms();
    if (c->outage_start_ms == 0) {
        c->outage_start_ms = now;
    }
    if (L.reconnect_s > 0 && now - c->outage_start_ms < (uint64_t)L.reconnect_s * 1000) {
        uv_timer_start(&c->timer, reconnect_cb, RECONNECT_DELAY_MS, 0);
        return;
    }
    uint64_t left = client_remaining(c);
    c->w->k.errors += left;
    report("client %u: connection to %s closed (%s: %s); %" PRIu64 " shards not done", c->id,
           L.addr, hbc_errname(status), reason, left);
    client_finish(c);
}

static void client_connect(struct client *c)
{
    if (atomic_load(&stop_flag)) {
        client_finish(c);
        return;
    }
    struct node_client_opts o = {
        .max_requests = L.pipeline,
        .max_bytes = (size_t)L.pipeline * L.batch_bytes,
        .max_frame = L.batch_bytes + ((size_t)1 << 20),
    };
    if (o.max_frame < FRAME_MAX_DEFAULT) {
        o.max_frame = FRAME_MAX_DEFAULT;
    }
    /*
     * Encrypt a request only once the one before it has gone to the kernel:
     * requests encrypted ahead wait in buffers whose fresh pages fault in (a
     * 512 MiB put at --pipeline 8 touched 512 MiB of them; now about 80 MiB,
     * and 0.15 instead of 0.35 CPU s of page faults). The pipeline of
     * requests at the node is unchanged.
     */
    o.max_queued = 1;
    struct node_client_cbs cbs = {
        .on_connect = on_connect, .on_drain = on_drain, .on_close = on_close};
    struct err e;
    int rv = node_client_connect(&c->w->loop, L.tls, L.addr, &o, &cbs, c, &c->nc, &e);
    if (rv != 0) {
        c->nc = NULL;
        uint64_t now = now_ms();
        if (c->outage_start_ms == 0) {
            c->outage_start_ms = now;
        }
        if (L.reconnect_s > 0 && now - c->outage_start_ms < (uint64_t)L.reconnect_s * 1000) {
            uv_timer_start(&c->timer, reconnect_cb, RECONNECT_DELAY_MS, 0);
            return;
        }
        c->w->k.errors += client_remaining(c);
        report("client %u: %s", c->id, e.msg);
        client_finish(c);
        return;
    }
}

static void wake_cb(uv_async_t *a)
{
    struct worker *w = a->data;
    for (unsigned i = 0; i < w->nclients; i++) {
        struct client *c = &w->clients[i];
        if (c->finished) {
            continue;
        }
        if (c->nc == NULL) {
            client_finish(c); /* waiting to reconnect: give up */
        } else {
            client_pump(c);
        }
    }
}

static void *worker_main(void *arg)
{
    struct worker *w = arg;
    for (unsigned i = 0; i < w->nclients; i++) {
        client_connect(&w->clients[i]);
    }
    uv_run(&w->loop, UV_RUN_DEFAULT);
    atomic_fetch_add(&workers_done, 1);
    return NULL;
}

static void on_signal(int sig)
{
    (void)sig;
    atomic_store(&stop_flag, true);
}

/* ---------------------------------------------------------------------- */
/* Ack log                                                                 */

static int load_ack_log(const char *path, struct err *e)
{
    FILE *f = fopen(path, "r");
    if (f == NULL) {
        return err_setraw(e, -errno, "open %s: %s", path, strerror(errno));
    }
    char line[512];
    uint64_t lineno = 0, cap = 0;
    int rv = 0;
    while (fgets(line, sizeof line, f) != NULL) {
        lineno++;
        size_t n = strlen(line);
        if (n == 0 || line[n - 1] != '\n') {
            /* Only the last line may be incomplete (the writer died mid-line): it was not acked. */
            if (fgets(line, sizeof line, f) != NULL) {
                rv = err_setraw(e, HBC_EFORMAT, "%s:%" PRIu64 ": line too long", path, lineno);
            }
            break;
        }
        if (L.nentries == cap) {
            cap = cap ? cap * 2 : 1024;
            struct ack_entry *p = hbc_realloc(L.entries, cap * sizeof *p);
            if (p == NULL) {
                rv = err_set(e, HBC_ENOMEM, "%s", path);
                break;
            }
            L.entries = p;
        }
        struct ack_entry *a = &L.entries[L.nentries];
        char vh[40], ch[72], sh[72];
        if (sscanf(line, "%" SCNu64 " %39s %71s %u %u %71s", &a->num, vh, ch, &a->index, &a->len,
                   sh) != 6 ||
            unhex(vh, a->vault_id, 16) != 0 || unhex(ch, a->chunk_id, 32) != 0 ||
            unhex(sh, a->sha256, 32) != 0) {
            rv = err_setraw(e, HBC_EFORMAT, "%s:%" PRIu64 ": not an ack log line", path, lineno);
            break;
        }
        L.nentries++;
    }
    fclose(f);
    return rv;
}

/* ---------------------------------------------------------------------- */
/* Options and main                                                        */

static void usage(FILE *f)
{
    fprintf(f,
            "Usage: hbc-shardload --addr IP:PORT --ca FILE --cert FILE --key FILE [options]\n"
            "\n"
            "Puts and gets erasure-coded test shards on one hbcd over mutual TLS, with many\n"
            "connections and pipelined requests, and verifies every byte it reads back.\n"
            "Shard n (0 <= n < --shards) is generated from (--seed, n): key, size and bytes, so\n"
            "a later run with the same seed checks what an earlier one wrote. Each is a real\n"
            "encoded shard (common/erasure.h, RS(4,2), index n %% 6) of a random payload.\n"
            "\n"
            "Options:\n"
            "  --mode MODE       put: store the shards; get: read them back and compare byte for\n"
            "                    byte; putget: put, and read each batch back once acknowledged;\n"
            "                    check: read every shard listed in --check FILE and verify its\n"
            "                    length and SHA-256 (default putget)\n"
            "  --clients N       connections (default 8); client c handles shards n %% N == c\n"
            "  --threads N       event-loop threads the clients are spread over (default 1)\n"
            "  --shards N        shards in the set (default 1000)\n"
            "  --min SIZE        smallest payload, bytes (default 1; K, M suffixes)\n"
            "  --max SIZE        largest payload (default 4M). Sizes are LOG-UNIFORM between\n"
            "                    min and max: each power of two is equally likely, so with the\n"
            "                    defaults the mean is about 270 KiB and the median about 2 KiB\n"
            "  --pipeline D      requests in flight per client (default 8)\n"
            "  --batch B         shards per put or get request at most (default 8)\n"
            "  --batch-bytes S   encoded bytes per request at most (default 32M; one shard is\n"
            "                    always allowed)\n"
            "  --seed S          data seed (default 1)\n"
            "  --ack-log FILE    append one line per acknowledged shard, flushed as soon as its\n"
            "                    put is acknowledged: 'n vault chunk index length sha256' (hex)\n"
            "  --ack-fsync       also fsync the ack log after each acknowledged batch\n"
            "  --client-hash     put each shard whole with its SHA-256 trailer computed here,\n"
            "                    in a frame packed by protobuf-c (the default, like hbc, sends\n"
            "                    the shard's head and payload without copies and a zero\n"
            "                    trailer flagged sha256_unset, which the node fills in)\n"
            "  --check FILE      the ack log that --mode check verifies\n"
            "  --allow-missing   get: shards the node does not have are counted, not errors\n"
            "                    (present ones must still match)\n"
            "  --reconnect SECS  when a connection is lost, reconnect and resend what was not\n"
            "                    acknowledged, for up to SECS seconds of outage (default 0: a\n"
            "                    lost connection fails its shards)\n"
            "  --json            print the summary as one JSON object: shards, bytes, seconds,\n"
            "                    mb_per_s, shards_per_s, errors, mismatches, missing, ...\n"
            "  --help            this text\n"
            "\n"
            "SIGINT or SIGTERM: stop issuing requests, wait for those in flight, print the\n"
            "summary. Exit status: 0 when every shard was done and matched, 1 on any error,\n"
            "mismatch or (without --allow-missing) missing shard, 2 on bad usage.\n"
            "MB/s counts 10^6 bytes of encoded shards.\n");
}

static int parse_size(const char *s, uint64_t *out)
{
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno != 0 || end == s || *s == '-') {
        return -1;
    }
    uint64_t m = 1;
    if (*end == 'K' || *end == 'k') {
        m = 1024, end++;
    } else if (*end == 'M' || *end == 'm') {
        m = 1024 * 1024, end++;
    } else if (*end == 'G' || *end == 'g') {
        m = 1024ull * 1024 * 1024, end++;
    }
    if (*end != '\0') {
        return -1;
    }
    *out = v * m;
    return 0;
}

static int parse_mode(const char *s, enum mode *m)
{
    static const char *const names[] = {"put", "get", "putget", "check"};
    for (int i = 0; i < 4; i++) {
        if (strcmp(s, names[i]) == 0) {
            *m = (enum mode)i;
            return 0;
        }
    }
    return -1;
}

static const char *mode_name(enum mode m)
{
    static const char *const names[] = {"put", "get", "putget", "check"};
    return names[m];
}

static int parse_args(int argc, char **argv)
{
    enum {
        O_ADDR = 256,
        O_CA,
        O_CERT,
        O_KEY,
        O_CLIENTS,
        O_THREADS,
        O_SHARDS,
        O_MIN,
        O_MAX,
        O_PIPELINE,
        O_BATCH,
        O_BATCH_BYTES,
        O_SEED,
        O_MODE,
        O_ACK,
        O_ACK_FSYNC,
        O_CLIENT_HASH,
        O_CHECK,
        O_ALLOW_MISSING,
        O_RECONNECT,
        O_JSON,
        O_HELP
    };
    static const struct option opts[] = {
        {"addr", required_argument, NULL, O_ADDR},
        {"ca", required_argument, NULL, O_CA},
        {"cert", required_argument, NULL, O_CERT},
        {"key", required_argument, NULL, O_KEY},
        {"clients", required_argument, NULL, O_CLIENTS},
        {"threads", required_argument, NULL, O_THREADS},
        {"shards", required_argument, NULL, O_SHARDS},
        {"min", required_argument, NULL, O_MIN},
        {"max", required_argument, NULL, O_MAX},
        {"pipeline", required_argument, NULL, O_PIPELINE},
        {"batch", required_argument, NULL, O_BATCH},
        {"batch-bytes", required_argument, NULL, O_BATCH_BYTES},
        {"seed", required_argument, NULL, O_SEED},
        {"mode", required_argument, NULL, O_MODE},
        {"ack-log", required_argument, NULL, O_ACK},
        {"ack-fsync", no_argument, NULL, O_ACK_FSYNC},
        {"client-hash", no_argument, NULL, O_CLIENT_HASH},
        {"check", required_argument, NULL, O_CHECK},
        {"allow-missing", no_argument, NULL, O_ALLOW_MISSING},
        {"reconnect", required_argument, NULL, O_RECONNECT},
        {"json", no_argument, NULL, O_JSON},
        {"help", no_argument, NULL, O_HELP},
        {NULL, 0, NULL, 0},
    };
    L.clients = 8;
    L.threads = 1;
    L.shards = 1000;
    L.min_size = 1;
    L.max_size = 4u << 20;
    L.pipeline = 8;
    L.batch = 8;
    L.batch_bytes = 32u << 20;
    L.seed = 1;
    L.mode = MODE_PUTGET;
    int ch;
    uint64_t v;
    while ((ch = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        bool bad = false;
        switch (ch) {
        case O_ADDR:
            L.addr = optarg;
            break;
        case O_CA:
            L.ca = optarg;
            break;
        case O_CERT:
            L.cert = optarg;
            break;
        case O_KEY:
            L.key = optarg;
            break;
        case O_CLIENTS:
        case O_THREADS:
        case O_PIPELINE:
        case O_BATCH:
        case O_RECONNECT:
            bad = parse_size(optarg, &v) != 0 || v > 100000 || (v == 0 && ch != O_RECONNECT);
            if (ch == O_CLIENTS) {
                L.clients = (unsigned)v;
            } else if (ch == O_THREADS) {
                L.threads = (unsigned)v;
            } else if (ch == O_PIPELINE) {
                L.pipeline = (unsigned)v;
            } else if (ch == O_BATCH) {
                bad = bad || v > NODE_CLIENT_MAX_BATCH;
                L.batch = (unsigned)v;
            } else {
                L.reconnect_s = (unsigned)v;
            }
            break;
        case O_SHARDS:
            bad = parse_size(optarg, &L.shards) != 0;
            break;
        case O_MIN:
            bad = parse_size(optarg, &L.min_size) != 0 || L.min_size == 0;
            break;
        case O_MAX:
            bad = parse_size(optarg, &L.max_size) != 0 || L.max_size > (16u << 20);
            break;
        case O_BATCH_BYTES:
            bad = parse_size(optarg, &L.batch_bytes) != 0 || L.batch_bytes == 0 ||
                  L.batch_bytes > (1u << 30);
            break;
        case O_SEED:
            bad = parse_size(optarg, &L.seed) != 0;
            break;
        case O_MODE:
            bad = parse_mode(optarg, &L.mode) != 0;
            break;
        case O_ACK:
            L.ack_path = optarg;
            break;
        case O_ACK_FSYNC:
            L.ack_fsync = true;
            break;
        case O_CLIENT_HASH:
            L.client_hash = true;
            break;
        case O_CHECK:
            L.check_path = optarg;
            break;
        case O_ALLOW_MISSING:
            L.allow_missing = true;
            break;
        case O_JSON:
            L.json = true;
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
            fprintf(stderr, "hbc-shardload: bad value '%s' for --%s\n", optarg,
                    opts[ch - O_ADDR].name);
            return -1;
        }
    }
    if (optind != argc || L.addr == NULL || L.ca == NULL || L.cert == NULL || L.key == NULL) {
        fprintf(stderr, "hbc-shardload: --addr, --ca, --cert and --key are required\n");
        return -1;
    }
    if (L.min_size > L.max_size) {
        fprintf(stderr, "hbc-shardload: --min is above --max\n");
        return -1;
    }
    if ((L.mode == MODE_CHECK) != (L.check_path != NULL)) {
        fprintf(stderr, "hbc-shardload: --check FILE goes with --mode check, and only with it\n");
        return -1;
    }
    if (L.threads > L.clients) {
        L.threads = L.clients;
    }
    return 0;
}

static void print_summary(const struct counters *t, double secs)
{
    uint64_t bytes = t->put_bytes + t->get_bytes;
    uint64_t shards = t->put_shards + t->get_shards;
    double mbps = secs > 0 ? (double)bytes / 1e6 / secs : 0;
    double sps = secs > 0 ? (double)shards / secs : 0;
    if (!L.json) {
        printf("%s: %" PRIu64 " shards put (%.1f MB), %" PRIu64 " read back (%.1f MB) in %.2f s: "
               "%.1f MB/s, %.0f shards/s; errors %" PRIu64 ", mismatches %" PRIu64
               ", missing %" PRIu64 ", retried %" PRIu64 ", reconnects %" PRIu64 "\n",
               mode_name(L.mode), t->put_shards, (double)t->put_bytes / 1e6, t->get_shards,
               (double)t->get_bytes / 1e6, secs, mbps, sps, t->errors, t->mismatches, t->missing,
               t->retried, t->reconnects);
        return;
    }
    json_t *j = json_pack(
        "{s:s, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:f, s:f, s:f, s:I, s:I, s:I, s:I, s:I, s:I, "
        "s:I, s:I, s:I}",
        "mode", mode_name(L.mode), "clients", (json_int_t)L.clients, "shards", (json_int_t)shards,
        "bytes", (json_int_t)bytes, "put_shards", (json_int_t)t->put_shards, "put_bytes",
        (json_int_t)t->put_bytes, "get_shards", (json_int_t)t->get_shards, "get_bytes",
        (json_int_t)t->get_bytes, "seconds", secs, "mb_per_s", mbps, "shards_per_s", sps, "errors",
        (json_int_t)t->errors, "mismatches", (json_int_t)t->mismatches, "missing",
        (json_int_t)t->missing, "retried", (json_int_t)t->retried, "reconnects",
        (json_int_t)t->reconnects, "abandoned", (json_int_t)t->abandoned, "attempted_below",
        (json_int_t)t->attempted_below, "pipeline", (json_int_t)L.pipeline, "batch",
        (json_int_t)L.batch);
    char *s = j != NULL ? json_dumps(j, JSON_COMPACT) : NULL;
    printf("%s\n", s != NULL ? s : "{}");
    free(s);
    json_decref(j);
}

int main(int argc, char **argv)
{
    /*
     * The load generator allocates and frees multi-MiB frames at a high rate;
     * above glibc's mmap threshold each is a fresh, zero-filled mmap. Keeping
     * them in the heap makes the generator cheaper, so that on a 2-core
     * machine it takes less CPU from the node it measures (shard_bench, 1 MiB
     * shards, 8 connections: puts about 250-265 -> 270-295 MB/s). glibc
     * refuses a threshold above 32 MiB (mallopt returns 0 and keeps 128 KiB,
     * no longer raised dynamically once M_TRIM_THRESHOLD is set), and the
     * worker threads' own arenas unmap free heaps whatever the trim
     * threshold: hence 32 MiB and one arena (the threads share it; they
     * spend their time in encryption and system calls, not in malloc).
     */
    mallopt(M_MMAP_THRESHOLD, 32 << 20);
    mallopt(M_TRIM_THRESHOLD, 256 << 20);
    mallopt(M_ARENA_MAX, 1);
    if (parse_args(argc, argv) != 0) {
        return 2;
    }
    log_init_from_env();
    signal(SIGPIPE, SIG_IGN);
    pthread_mutex_init(&L.ack_lock, NULL);
    L.log_lo = log((double)L.min_size);
    L.log_hi = log((double)L.max_size + 1);
    struct err e;
    err_clear(&e);
    uint8_t digest[32];
    uint64_t s = L.seed;
    if (crypto_sha256(&s, sizeof s, digest, &e) != 0) {
        fprintf(stderr, "hbc-shardload: %s\n", e.msg);
        return 1;
    }
    memcpy(L.vault_id, digest, 16);
    if (L.check_path != NULL && load_ack_log(L.check_path, &e) != 0) {
        fprintf(stderr, "hbc-shardload: %s\n", e.msg);
        return 1;
    }
    if (L.ack_path != NULL && (L.ack = fopen(L.ack_path, "a")) == NULL) {
        fprintf(stderr, "hbc-shardload: open %s: %s\n", L.ack_path, strerror(errno));
        return 1;
    }
    struct tls_ctx_opts to = {.ca_file = L.ca, .cert_file = L.cert, .key_file = L.key};
    if (tls_ctx_new(&to, &L.tls, &e) != 0) {
        fprintf(stderr, "hbc-shardload: %s\n", e.msg);
        return 1;
    }
    struct worker *ws = hbc_calloc(L.threads, sizeof *ws);
    struct client *cs = hbc_calloc(L.clients, sizeof *cs);
    if (ws == NULL || cs == NULL) {
        fprintf(stderr, "hbc-shardload: out of memory\n");
        return 1;
    }
    for (unsigned t = 0; t < L.threads; t++) {
        struct worker *w = &ws[t];
        uv_loop_init(&w->loop);
        uv_async_init(&w->loop, &w->wake, wake_cb);
        w->wake.data = w;
        w->clients = &cs[t * L.clients / L.threads];
        w->nclients = (t + 1) * L.clients / L.threads - t * L.clients / L.threads;
        w->live = w->nclients;
        for (unsigned i = 0; i < w->nclients; i++) {
            struct client *c = &w->clients[i];
            c->w = w;
            c->id = (unsigned)(c - cs);
            c->put_next = c->id;
            c->get_next = c->id;
            uv_timer_init(&w->loop, &c->timer);
            c->timer.data = c;
        }
    }
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);

    uint64_t t0 = now_ms();
    for (unsigned t = 0; t < L.threads; t++) {
        pthread_create(&ws[t].thread, NULL, worker_main, &ws[t]);
    }
    /*
     * The signal handler only sets stop_flag; this thread passes it on to the
     * loops, which may be waiting for replies, and waits for them to finish.
     */
    bool told = false;
    while (atomic_load(&workers_done) < L.threads) {
        if (atomic_load(&stop_flag) && !told) {
            told = true;
            for (unsigned t = 0; t < L.threads; t++) {
                uv_async_send(&ws[t].wake);
            }
        }
        usleep(20000);
    }
    for (unsigned t = 0; t < L.threads; t++) {
        pthread_join(ws[t].thread, NULL);
    }
    double secs = (double)(now_ms() - t0) / 1000.0;

    struct counters total = {0};
    for (unsigned t = 0; t < L.threads; t++) {
        struct counters *k = &ws[t].k;
        total.put_shards += k->put_shards;
        total.put_bytes += k->put_bytes;
        total.get_shards += k->get_shards;
        total.get_bytes += k->get_bytes;
        total.errors += k->errors;
        total.mismatches += k->mismatches;
        total.missing += k->missing;
        total.retried += k->retried;
        total.reconnects += k->reconnects;
        total.abandoned += k->abandoned;
        for (unsigned i = 0; i < ws[t].nclients; i++) {
            uint64_t next = ws[t].clients[i].put_next;
            next = next > L.shards ? L.shards : next;
            total.attempted_below = next > total.attempted_below ? next : total.attempted_below;
        }
        uv_run(&ws[t].loop, UV_RUN_DEFAULT);
        if (uv_loop_close(&ws[t].loop) != 0) {
            fprintf(stderr, "hbc-shardload: a loop still had handles at exit\n");
            total.errors++;
        }
    }
    print_summary(&total, secs);
    if (L.ack != NULL && fclose(L.ack) != 0) {
        fprintf(stderr, "hbc-shardload: close %s: %s\n", L.ack_path, strerror(errno));
        total.errors++;
    }
    tls_ctx_free(L.tls);
    for (unsigned i = 0; i < L.clients; i++) {
        hbc_free(cs[i].put_retry.v);
        hbc_free(cs[i].get_todo.v);
    }
    for (unsigned t = 0; t < L.threads; t++) {
        gen_scratch_free(ws[t].gs);
    }
    hbc_free(ws);
    hbc_free(cs);
    hbc_free(L.entries);
    bool ok = total.errors == 0 && total.mismatches == 0 && (L.allow_missing || total.missing == 0);
    return ok ? 0 : 1;
}
