/* The mover: copies or rebuilds the shards a new placement epoch gives this node (see mover.h). */
#include "node/mover.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "client/placement_map.h"
#include "client/repo_internal.h"
#include "common/alloc.h"
#include "common/erasure.h"
#include "common/frame.h"
#include "common/log.h"
#include "common/shard_scheme.h"
#include "node/fsm_placement.h"
#include "node/placement_cleanup.h"
#include "node/shard_store_list.h"

#define MOVER_TIMEOUT_MS 15000 /* per request to a peer */
#define MOVER_MAX_SOURCES 255  /* peers listed per vault at most */
#define MOVER_DONE_BATCH 4096  /* groups per PlacementGroupDone */

/* A peer from the state machine's node list. */
struct peer {
    char *id;   /* node id */
    char *addr; /* data-plane address */
};

/* Leader bookkeeping of one node's reachability. */
struct seen {
    char id[65];    /* node id */
    uint64_t ok_ns; /* when it last answered a status probe (or when we started watching) */
};

/* One (chunk, source) row of the listings. */
struct entry {
    uint8_t chunk[32]; /* the chunk */
    uint32_t group;    /* its group */
    /* Per scheme (pmap_schemes() order): the shard indexes the source holds. */
    uint32_t mask[PMAP_MAX_SCHEMES];
    uint8_t src; /* index into the vault pass's sources */
};

/* The vault's schemes for one pass. */
struct schemes {
    struct pmap_scheme s[PMAP_MAX_SCHEMES]; /* base first (pmap_schemes()) */
    unsigned n;                             /* how many */
};

/* The store slot of shard `index` of scheme x. */
static uint32_t slot_of(const struct pmap_vault *v, const struct pmap_scheme *x, unsigned index)
{
    return shard_slot(v->k, v->m, x->k, x->m, index);
}

struct mover {
    struct mover_opts o;   /* options (node_id copied) */
    char *node_id;         /* our copy of o.node_id */
    struct repo_net *net;  /* the network thread */
    pthread_t thread;      /* the mover thread */
    pthread_mutex_t mu;    /* guards stop */
    pthread_cond_t cv;     /* signalled on stop */
    bool stop;             /* mover_stop() was called */
    uint64_t next_ns;      /* pacing: when the budget allows the next byte */
    char leader[64];       /* last leader heard of, or "" */
    struct peer *peers;    /* this pass's node list */
    size_t npeers;         /* how many */
    uint64_t moved_bytes;  /* shard bytes stored so far (logged) */
    uint64_t moved_shards; /* shards stored so far (logged) */
    _Atomic bool leads;    /* this node leads (set by the loop thread) */
    struct seen *seen;     /* leader: when each node last answered */
    size_t nseen;          /* how many */
    struct pcleanup *pc;   /* old-epoch shard deletion (placement_cleanup.h) */
};

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* Sleep until the monotonic time t_ns or until stopped; returns true when stopped. */
static bool sleep_until(struct mover *m, uint64_t t_ns)
{
    pthread_mutex_lock(&m->mu);
    while (!m->stop && now_ns() < t_ns) {
        struct timespec ts = {.tv_sec = (time_t)(t_ns / 1000000000ull),
                              .tv_nsec = (long)(t_ns % 1000000000ull)};
        pthread_cond_timedwait(&m->cv, &m->mu, &ts);
    }
    bool stop = m->stop;
    pthread_mutex_unlock(&m->mu);
    return stop;
}

static bool stopping(struct mover *m)
{
    pthread_mutex_lock(&m->mu);
    bool stop = m->stop;
    pthread_mutex_unlock(&m->mu);
    return stop;
}

/* Pace to o.rate bytes per second: a token bucket of one second's worth. */
static void pace(struct mover *m, size_t bytes)
{
    if (m->o.rate == 0) {
        return;
    }
    uint64_t now = now_ns();
    uint64_t floor = now > 1000000000ull ? now - 1000000000ull : 0;
    if (m->next_ns < floor) {
        m->next_ns = floor;
    }
    m->next_ns += (uint64_t)((double)bytes * 1e9 / (double)m->o.rate);
    if (m->next_ns > now) {
        sleep_until(m, m->next_ns);
    }
}

static const struct peer *peer_find(const struct mover *m, const char *id)
{
    for (size_t i = 0; i < m->npeers; i++) {
        if (strcmp(m->peers[i].id, id) == 0) {
            return &m->peers[i];
        }
    }
    return NULL;
}

static void peers_free(struct mover *m)
{
    for (size_t i = 0; i < m->npeers; i++) {
        hbc_free(m->peers[i].id);
        hbc_free(m->peers[i].addr);
    }
    hbc_free(m->peers);
    m->peers = NULL;
    m->npeers = 0;
}

static int peer_visit(const Hbc__NodeInfo *n, void *arg)
{
    struct mover *m = arg;
    struct peer *p = hbc_realloc(m->peers, (m->npeers + 1) * sizeof *p);
    if (p == NULL) {
        return HBC_ENOMEM;
    }
    m->peers = p;
    p[m->npeers].id = hbc_strdup(n->node_id);
    p[m->npeers].addr = hbc_strdup(n->data_address);
    m->npeers++;
    return p[m->npeers - 1].id == NULL || p[m->npeers - 1].addr == NULL ? HBC_ENOMEM : 0;
}

/* Propose cmd through the leader (redirects followed). Returns the outcome code. */
static int propose(struct mover *m, Hbc__Command *cmd, char *msg, size_t mlen)
{
    Hbc__Frame req = HBC__FRAME__INIT;
    Hbc__ProposeRequest pr = HBC__PROPOSE_REQUEST__INIT;
    pr.command = cmd;
    req.body_case = HBC__FRAME__BODY_PROPOSE;
    req.propose = &pr;
    int last = HBC_EUNAVAILABLE;
    snprintf(msg, mlen, "no node answered");
    for (size_t attempt = 0; attempt < m->npeers + 4; attempt++) {
        const char *addr = m->leader[0] != '\0' ? m->leader : m->peers[attempt % m->npeers].addr;
        struct repo_req q = {.addr = addr,
                             .kind = REPO_REQ_FRAME,
                             .frame = &req,
                             .expect = HBC__FRAME__BODY_PROPOSE_REPLY};
        repo_net_run(m->net, &q, 1);
        if (q.status != 0) {
            last = q.status;
            snprintf(msg, mlen, "%s", q.msg);
            m->leader[0] = '\0';
            continue;
        }
        const Hbc__ProposeReply *p = q.reply->propose_reply;
        last = p->code;
        snprintf(msg, mlen, "%s", p->message);
        if (p->code == HBC_ENOTLEADER && p->leader_address != NULL &&
            p->leader_address[0] != '\0') {
            snprintf(m->leader, sizeof m->leader, "%s", p->leader_address);
            frame_free(q.reply);
            continue;
        }
        if (p->code == HBC_ENOTLEADER || p->code == HBC_EUNAVAILABLE) {
            m->leader[0] = '\0';
            frame_free(q.reply);
            continue;
        }
        snprintf(m->leader, sizeof m->leader, "%s", addr);
        frame_free(q.reply);
        return last;
    }
    return last;
}

/* Which of want's shard indexes of scheme x this node's store lacks; *have gets those it holds. */
static uint32_t local_missing(struct mover *m, const struct pmap_vault *v,
                              const struct pmap_scheme *x, const uint8_t chunk[32], uint32_t want,
                              uint32_t *have)
{
    *have = 0;
    for (unsigned s = 0; s < x->k + x->m; s++) {
        struct shard_key key;
        memcpy(key.vault_id, v->vault_id, 16);
        memcpy(key.chunk_id, chunk, 32);
        key.index = slot_of(v, x, s);
        struct shard_info info;
        struct err le;
        if (shard_store_lookup(m->o.store, &key, &info, &le) == 0) {
            *have |= (uint32_t)1 << s;
        }
    }
    return want & ~*have;
}

/* The stripe of one chunk as gathered: blobs by shard index (borrowed from replies or owned). */
struct stripe {
    const uint8_t *blob[PLACEMENT_MAX_WIDTH]; /* index -> encoded shard, or NULL */
    size_t len[PLACEMENT_MAX_WIDTH];          /* its length */
    Hbc__Frame *replies[MOVER_MAX_SOURCES];   /* replies the blobs live in */
    size_t nreplies;                          /* how many */
    uint8_t *local[PLACEMENT_MAX_WIDTH];      /* blobs read from the local store (owned) */
};

static void stripe_free(struct stripe *st)
{
    for (size_t i = 0; i < st->nreplies; i++) {
        frame_free(st->replies[i]);
    }
    for (size_t i = 0; i < PLACEMENT_MAX_WIDTH; i++) {
        hbc_free(st->local[i]);
    }
}

/* Whether blob is an intact shard `index` of (vault, chunk) with scheme x. */
static bool blob_ok(const uint8_t *blob, size_t len, const struct pmap_vault *v,
                    const struct pmap_scheme *x, const uint8_t chunk[32], unsigned index)
{
    struct erasure_shard_info info;
    struct err de;
    if (erasure_shard_decode(blob, len, &info, NULL, &de) != 0) {
        return false;
    }
    return info.index == index && info.k == x->k && info.m == x->m &&
           memcmp(info.vault_id, v->vault_id, 16) == 0 && memcmp(info.chunk_id, chunk, 32) == 0;
}

/* Fetch the indexes in mask of scheme x of chunk from source addr/id into st. */
static void fetch(struct mover *m, const struct pmap_vault *v, const struct pmap_scheme *x,
                  const uint8_t chunk[32], const struct peer *p, uint32_t mask, struct stripe *st)
{
    struct node_client_key keys[PLACEMENT_MAX_WIDTH];
    size_t n = 0;
    for (unsigned s = 0; s < x->k + x->m; s++) {
        if ((mask & ((uint32_t)1 << s)) && st->blob[s] == NULL) {
            keys[n++] = (struct node_client_key){
                .vault_id = v->vault_id, .chunk_id = chunk, .index = slot_of(v, x, s)};
        }
    }
    if (n == 0 || st->nreplies == MOVER_MAX_SOURCES) {
        return;
    }
    struct repo_req q = {
        .addr = p->addr, .node_id = p->id, .kind = REPO_REQ_GET, .keys = keys, .nkeys = n};
    repo_net_run(m->net, &q, 1);
    if (q.status != 0) {
        hbc_log(LOG_DEBUG, "event=mover_fetch_failed node=%s reason=\"%s\"", p->id, q.msg);
        return;
    }
    st->replies[st->nreplies++] = q.reply;
    const Hbc__GetShardsReply *g = q.reply->get_shards_reply;
    for (size_t i = 0; i < g->n_shards; i++) {
        const Hbc__ShardBlob *b = g->shards[i];
        if (b->index < x->k + x->m && st->blob[b->index] == NULL &&
            blob_ok(b->data.data, b->data.len, v, x, chunk, b->index)) {
            st->blob[b->index] = b->data.data;
            st->len[b->index] = b->data.len;
        }
    }
}

/* Whether blob is a whole-object copy (k=1, m=0) of (vault, chunk): how reference lists are kept.
 */
static bool blob_plain(const uint8_t *blob, size_t len, const struct pmap_vault *v,
                       const uint8_t chunk[32])
{
    struct erasure_shard_info info;
    return erasure_shard_decode(blob, len, &info, NULL, NULL) == 0 && info.index == 0 &&
           info.k == 1 && info.m == 0 && memcmp(info.vault_id, v->vault_id, 16) == 0 &&
           memcmp(info.chunk_id, chunk, 32) == 0;
}

/*
 * Objects the placement map does not place: reference lists (GC) are stored
 * whole (k=1, m=0, shard 0) on every node rather than striped by the vault's
 * scheme. When every source lists only shard 0 of chunk and that shard is
 * such a copy, make sure this node holds one too (a node that joined later
 * gets the reference lists it lacks) and report true: nothing to stripe.
 */
static bool plain_object(struct mover *m, const struct pmap_vault *v, const uint8_t chunk[32],
                         uint32_t have, const struct entry *rows, size_t nrows,
                         const struct peer *const *srcs)
{
    if (v->k + v->m == 1) {
        return false; /* the vault's own scheme is whole copies: placed as usual */
    }
    for (size_t r = 0; r < nrows; r++) {
        if (rows[r].mask[0] != 1) {
            return false;
        }
        for (unsigned x = 1; x < PMAP_MAX_SCHEMES; x++) {
            if (rows[r].mask[x] != 0) {
                return false;
            }
        }
    }
    struct shard_key key;
    memcpy(key.vault_id, v->vault_id, 16);
    memcpy(key.chunk_id, chunk, 32);
    key.index = 0;
    if (have == 1) {
        uint8_t *blob = NULL;
        size_t len = 0;
        bool plain = shard_store_get_alloc(m->o.store, &key, &blob, &len, NULL) == 0 &&
                     blob_plain(blob, len, v, chunk);
        hbc_free(blob);
        return plain;
    }
    for (size_t r = 0; r < nrows; r++) {
        struct node_client_key k0 = {.vault_id = v->vault_id, .chunk_id = chunk, .index = 0};
        const struct peer *p = srcs[rows[r].src];
        struct repo_req q = {
            .addr = p->addr, .node_id = p->id, .kind = REPO_REQ_GET, .keys = &k0, .nkeys = 1};
        repo_net_run(m->net, &q, 1);
        if (q.status != 0) {
            continue;
        }
        const Hbc__GetShardsReply *g = q.reply->get_shards_reply;
        bool plain = g->n_shards == 1 && g->shards[0]->index == 0 &&
                     blob_plain(g->shards[0]->data.data, g->shards[0]->data.len, v, chunk);
        if (plain) {
            struct shard_put rec = {
                .key = key, .data = g->shards[0]->data.data, .len = g->shards[0]->data.len};
            int result = 0;
            if (shard_store_put_batch(m->o.store, &rec, 1, &result, NULL) == 0 &&
                (result == 0 || result == SHARD_STORE_ALREADY)) {
                m->moved_bytes += rec.len;
                m->moved_shards++;
            }
        }
        frame_free(q.reply);
        if (plain) {
            return true;
        }
    }
    return false;
}

/*
 * Gather every shard of scheme x of chunk that anyone has (this node's store
 * too) into st, fetching the ones st lacks.
 */
static void gather(struct mover *m, const struct pmap_vault *v, const struct pmap_scheme *x,
                   unsigned xi, const uint8_t chunk[32], const struct entry *rows, size_t nrows,
                   const struct peer *const *srcs, struct stripe *st)
{
    uint32_t have = 0;
    local_missing(m, v, x, chunk, 0, &have);
    for (unsigned s = 0; s < x->k + x->m; s++) {
        if ((have & ((uint32_t)1 << s)) && st->blob[s] == NULL) {
            struct shard_key key;
            memcpy(key.vault_id, v->vault_id, 16);
            memcpy(key.chunk_id, chunk, 32);
            key.index = slot_of(v, x, s);
            size_t len = 0;
            struct err ge;
            if (shard_store_get_alloc(m->o.store, &key, &st->local[s], &len, &ge) == 0 &&
                blob_ok(st->local[s], len, v, x, chunk, s)) {
                st->blob[s] = st->local[s];
                st->len[s] = len;
            }
        }
    }
    for (size_t r = 0; r < nrows; r++) {
        if (rows[r].mask[xi] != 0) {
            fetch(m, v, x, chunk, srcs[rows[r].src], rows[r].mask[xi], st);
        }
    }
}

/*
 * Make shards `need` of scheme sc->s[xi] of chunk present locally: fetch each
 * from a source that lists it, else rebuild the object from any k shards of
 * that scheme or, failing that, of another scheme of the vault (every scheme
 * codes the same sealed object), and encode it again. rows[0..nrows) are the
 * chunk's listing rows (one per source). Returns 0 or why not.
 */
static int complete_chunk(struct mover *m, const struct pmap_vault *v, const struct schemes *sc,
                          unsigned xi, const uint8_t chunk[32], uint32_t need,
                          const struct entry *rows, size_t nrows, const struct peer *const *srcs)
{
    const struct pmap_scheme *x = &sc->s[xi];
    const unsigned width = x->k + x->m;
    struct stripe st = {0};
    int rv = 0;
    uint8_t *built[PLACEMENT_MAX_WIDTH] = {0};
    size_t built_len[PLACEMENT_MAX_WIDTH] = {0};
    for (size_t r = 0; r < nrows; r++) {
        uint32_t still = 0;
        for (unsigned s = 0; s < width; s++) {
            still |= (need & ((uint32_t)1 << s)) && st.blob[s] == NULL ? (uint32_t)1 << s : 0;
        }
        if ((rows[r].mask[xi] & still) != 0) {
            fetch(m, v, x, chunk, srcs[rows[r].src], rows[r].mask[xi] & still, &st);
        }
    }
    uint32_t missing = 0;
    for (unsigned s = 0; s < width; s++) {
        missing |= (need & ((uint32_t)1 << s)) && st.blob[s] == NULL ? (uint32_t)1 << s : 0;
    }
    if (missing != 0) {
        /* Rebuild: gather every shard anyone has (ours too), decode, encode again. */
        uint8_t *obj = NULL;
        size_t olen = 0;
        struct err e;
        gather(m, v, x, xi, chunk, rows, nrows, srcs, &st);
        rv = erasure_shards_rebuild(st.blob, st.len, width, v->vault_id, chunk, &obj, &olen, &e);
        for (unsigned y = 0; y < sc->n && rv != 0; y++) {
            if (y == xi) {
                continue;
            }
            struct stripe other = {0};
            struct err oe;
            gather(m, v, &sc->s[y], y, chunk, rows, nrows, srcs, &other);
            if (erasure_shards_rebuild(other.blob, other.len, sc->s[y].k + sc->s[y].m, v->vault_id,
                                       chunk, &obj, &olen, &oe) == 0) {
                rv = 0;
                hbc_log(LOG_INFO, "event=mover_rebuild_other_scheme scheme=%u+%u from=%u+%u", x->k,
                        x->m, sc->s[y].k, sc->s[y].m);
            }
            stripe_free(&other);
        }
        if (rv == 0) {
            rv = erasure_shards_encode(v->vault_id, chunk, x->k, x->m, obj, olen, built, built_len,
                                       &e);
            hbc_free(obj);
        }
        if (rv != 0) {
            hbc_log(LOG_WARN, "event=mover_rebuild_failed scheme=%u+%u code=%s reason=\"%s\"", x->k,
                    x->m, hbc_errname(rv), e.msg);
            goto out;
        }
        for (unsigned s = 0; s < width; s++) {
            if (missing & ((uint32_t)1 << s)) {
                st.blob[s] = built[s];
                st.len[s] = built_len[s];
            }
        }
    }
    struct shard_put recs[PLACEMENT_MAX_WIDTH];
    int results[PLACEMENT_MAX_WIDTH];
    size_t n = 0;
    size_t bytes = 0;
    for (unsigned s = 0; s < width; s++) {
        if (need & ((uint32_t)1 << s)) {
            memcpy(recs[n].key.vault_id, v->vault_id, 16);
            memcpy(recs[n].key.chunk_id, chunk, 32);
            recs[n].key.index = slot_of(v, x, s);
            recs[n].data = st.blob[s];
            recs[n].len = st.len[s];
            recs[n].sha256 = NULL;
            bytes += st.len[s];
            n++;
        }
    }
    struct err e;
    rv = shard_store_put_batch(m->o.store, recs, n, results, &e);
    for (size_t i = 0; i < n && rv == 0; i++) {
        if (results[i] != 0 && results[i] != SHARD_STORE_ALREADY) {
            rv = results[i];
        }
    }
    if (rv != 0) {
        hbc_log(LOG_WARN, "event=mover_store_failed code=%s", hbc_errname(rv));
        goto out;
    }
    m->moved_bytes += bytes;
    m->moved_shards += n;
    pace(m, bytes);
out:
    for (unsigned s = 0; s < width; s++) {
        hbc_free(built[s]);
    }
    stripe_free(&st);
    return rv;
}

static int entry_cmp(const void *a, const void *b)
{
    const struct entry *x = a;
    const struct entry *y = b;
    int c = memcmp(x->chunk, y->chunk, 32);
    return c != 0 ? c : (int)x->src - (int)y->src;
}

/* List every chunk of the vault on source p, keeping rows of the wanted groups. */
static int list_source(struct mover *m, const struct pmap_vault *v, const struct schemes *sc,
                       const struct peer *p, uint8_t src, uint64_t epoch, const uint32_t *want,
                       struct entry **rows, size_t *nrows, size_t *cap)
{
    uint8_t after[32];
    bool has_after = false;
    for (int page = 0; page < 100000; page++) {
        if (stopping(m)) {
            return HBC_ECANCELED;
        }
        Hbc__Frame req = HBC__FRAME__INIT;
        Hbc__PlacementListRequest q = HBC__PLACEMENT_LIST_REQUEST__INIT;
        q.vault_id.data = (uint8_t *)v->vault_id;
        q.vault_id.len = 16;
        if (has_after) {
            q.has_after = true;
            q.after.data = after;
            q.after.len = 32;
        }
        req.body_case = HBC__FRAME__BODY_PLACEMENT_LIST;
        req.placement_list = &q;
        struct repo_req r = {.addr = p->addr,
                             .node_id = p->id,
                             .kind = REPO_REQ_FRAME,
                             .frame = &req,
                             .expect = HBC__FRAME__BODY_PLACEMENT_LIST_REPLY};
        repo_net_run(m->net, &r, 1);
        if (r.status != 0) {
            hbc_log(LOG_DEBUG, "event=mover_list_failed node=%s reason=\"%s\"", p->id, r.msg);
            return r.status;
        }
        const Hbc__PlacementListReply *l = r.reply->placement_list_reply;
        if (l->epoch < epoch || l->n_index_masks != l->n_chunk_ids) {
            /* It has not applied this epoch yet: its writers' fence is not up. Later. */
            frame_free(r.reply);
            return HBC_EBUSY;
        }
        size_t *en_index = hbc_malloc((l->n_chunk_ids + 1) * sizeof *en_index);
        if (en_index == NULL) {
            frame_free(r.reply);
            return HBC_ENOMEM;
        }
        for (size_t i = 0; i < l->n_chunk_ids; i++) {
            en_index[i] = SIZE_MAX;
        }
        for (size_t i = 0; i < l->n_chunk_ids; i++) {
            if (l->chunk_ids[i].len != 32) {
                continue;
            }
            uint32_t g = pmap_group_of(l->chunk_ids[i].data, v->groups);
            bool wanted = false;
            for (unsigned x = 0; x < sc->n && !wanted; x++) {
                wanted = want[(size_t)g * PMAP_MAX_SCHEMES + x] != 0;
            }
            if (!wanted) {
                continue;
            }
            if (*nrows == *cap) {
                size_t nc = *cap > 0 ? 2 * *cap : 1024;
                struct entry *p2 = hbc_realloc(*rows, nc * sizeof *p2);
                if (p2 == NULL) {
                    hbc_free(en_index);
                    frame_free(r.reply);
                    return HBC_ENOMEM;
                }
                *rows = p2;
                *cap = nc;
            }
            struct entry *en = &(*rows)[(*nrows)++];
            memcpy(en->chunk, l->chunk_ids[i].data, 32);
            en->group = g;
            memset(en->mask, 0, sizeof en->mask);
            en->mask[0] = l->index_masks[i];
            en->src = src;
            en_index[i] = *nrows - 1;
        }
        /* Shards of the other schemes (tagged slots), matched to the vault's schemes. */
        for (size_t j = 0; j < l->n_scheme_masks; j++) {
            const Hbc__ShardSchemeMask *sm = l->scheme_masks[j];
            if (sm->chunk >= l->n_chunk_ids || en_index[sm->chunk] == SIZE_MAX) {
                continue;
            }
            for (unsigned x = 1; x < sc->n; x++) {
                if (sc->s[x].k == sm->k && sc->s[x].m == sm->m) {
                    (*rows)[en_index[sm->chunk]].mask[x] |= sm->mask;
                }
            }
        }
        hbc_free(en_index);
        hbc_log(LOG_DEBUG, "event=mover_listed node=%s chunks=%zu rows=%zu more=%d", p->id,
                l->n_chunk_ids, *nrows, l->more);
        bool more = l->more && l->n_chunk_ids > 0;
        if (more) {
            memcpy(after, l->chunk_ids[l->n_chunk_ids - 1].data, 32);
            has_after = true;
        }
        frame_free(r.reply);
        if (!more) {
            return 0;
        }
    }
    return 0;
}

/* Report the groups in done[0..n) of vault v settled here for epoch. */
static void report_done(struct mover *m, const struct pmap_vault *v, uint64_t epoch, uint32_t *done,
                        size_t n)
{
    for (size_t at = 0; at < n; at += MOVER_DONE_BATCH) {
        size_t k = n - at < MOVER_DONE_BATCH ? n - at : MOVER_DONE_BATCH;
        Hbc__Command cmd = HBC__COMMAND__INIT;
        Hbc__PlacementGroupDone d = HBC__PLACEMENT_GROUP_DONE__INIT;
        d.vault_id.data = (uint8_t *)v->vault_id;
        d.vault_id.len = 16;
        d.epoch = epoch;
        d.node_id = m->node_id;
        d.groups = done + at;
        d.n_groups = k;
        cmd.cmd_case = HBC__COMMAND__CMD_PLACEMENT_GROUP_DONE;
        cmd.placement_group_done = &d;
        char msg[256];
        int code = propose(m, &cmd, msg, sizeof msg);
        if (code == 0) {
            hbc_log(LOG_INFO,
                    "event=mover_groups_done epoch=%llu groups=%zu moved_shards=%llu "
                    "moved_bytes=%llu",
                    (unsigned long long)epoch, k, (unsigned long long)m->moved_shards,
                    (unsigned long long)m->moved_bytes);
        } else {
            hbc_log(LOG_INFO, "event=mover_groups_done_refused epoch=%llu code=%s msg=\"%s\"",
                    (unsigned long long)epoch, hbc_errname(code), msg);
        }
    }
}

/* One pass over one vault with placement groups. */
static void move_vault(struct mover *m, const struct pmap_vault *v, uint64_t current)
{
    Hbc__PlacementMapReply map;
    struct err e;
    if (fsm_placement_map(m->o.fsm, v->vault_id, &map, &e) != 0) {
        hbc_log(LOG_WARN, "event=mover_map_failed reason=\"%s\"", e.msg);
        return;
    }
    struct pmap_epoch eps[64];
    size_t neps = 0;
    uint32_t *want = NULL;
    uint8_t *failed = NULL;
    uint32_t *done = NULL;
    struct entry *rows = NULL;
    size_t nrows = 0;
    size_t cap = 0;
    const struct peer *srcs[MOVER_MAX_SOURCES];
    size_t nsrcs = 0;
    if (map.n_fallback == 0 || map.current != current || map.n_epochs == 0) {
        goto out;
    }
    for (size_t i = 0; i < map.n_epochs && neps < 64; i++) {
        if (pmap_epoch_from_proto(map.epochs[i], &eps[neps], &e) != 0) {
            goto out;
        }
        neps++;
    }
    unsigned me = PMAP_NONE;
    for (size_t i = 0; i < eps[0].n; i++) {
        if (strcmp(eps[0].pol[i].node_id, m->node_id) == 0) {
            me = (unsigned)i;
        }
    }
    if (me == PMAP_NONE) {
        goto out; /* not in this epoch (draining): nothing comes here */
    }
    struct schemes sc;
    sc.n = pmap_schemes(v, sc.s, NULL);
    want = hbc_calloc((size_t)v->groups * PMAP_MAX_SCHEMES, sizeof *want);
    failed = hbc_calloc(v->groups, 1);
    done = hbc_calloc(v->groups, sizeof *done);
    if (want == NULL || failed == NULL || done == NULL) {
        goto out;
    }
    size_t ncand = 0;
    for (size_t i = 0; i < map.n_fallback; i++) {
        uint32_t g = map.fallback[i]->group;
        if (g >= v->groups) {
            continue;
        }
        uint32_t masks[PMAP_MAX_SCHEMES];
        uint32_t any = 0;
        bool already = false;
        if (pmap_node_masks(v, &eps[0], g, me, masks, &e) != 0) {
            continue;
        }
        for (unsigned x = 0; x < sc.n; x++) {
            any |= masks[x];
        }
        if (any == 0 ||
            fsm_placement_done_by(m->o.fsm, v->vault_id, g, current, m->node_id, &already, &e) !=
                0 ||
            already) {
            continue;
        }
        memcpy(want + (size_t)g * PMAP_MAX_SCHEMES, masks, sizeof masks);
        ncand++;
    }
    if (ncand == 0) {
        goto out;
    }
    /* Sources: every other node of the epochs a fallback may need that has an address. */
    for (size_t i = 0; i < neps; i++) {
        for (size_t j = 0; j < eps[i].n; j++) {
            const char *id = eps[i].pol[j].node_id;
            const struct peer *p = strcmp(id, m->node_id) != 0 ? peer_find(m, id) : NULL;
            bool seen = false;
            for (size_t x = 0; x < nsrcs && !seen; x++) {
                seen = srcs[x] == p;
            }
            if (p != NULL && !seen && nsrcs < MOVER_MAX_SOURCES) {
                srcs[nsrcs++] = p;
            }
        }
    }
    size_t listed = 0;
    for (size_t s = 0; s < nsrcs; s++) {
        int rv = list_source(m, v, &sc, srcs[s], (uint8_t)s, current, want, &rows, &nrows, &cap);
        if (rv == HBC_ECANCELED || rv == HBC_ENOMEM || rv == HBC_EBUSY) {
            goto out; /* stopping, out of memory, or a source behind: try the whole vault later */
        }
        listed += rv == 0 ? 1 : 0;
    }
    if (listed == 0 && nsrcs > 0) {
        goto out;
    }
    qsort(rows, nrows, sizeof *rows, entry_cmp);
    size_t chunks = 0;
    for (size_t i = 0; i < nrows && !stopping(m);) {
        size_t j = i;
        while (j < nrows && memcmp(rows[j].chunk, rows[i].chunk, 32) == 0) {
            j++;
        }
        uint32_t g = rows[i].group;
        uint32_t need[PMAP_MAX_SCHEMES] = {0};
        uint32_t have0 = 0;
        bool any = false;
        for (unsigned x = 0; x < sc.n; x++) {
            uint32_t have = 0;
            need[x] = local_missing(m, v, &sc.s[x], rows[i].chunk,
                                    want[(size_t)g * PMAP_MAX_SCHEMES + x], &have);
            have0 = x == 0 ? have : have0;
            any |= need[x] != 0;
        }
        /* A reference list is kept whole on every node, not striped by any scheme. */
        if (any && !failed[g] && !plain_object(m, v, rows[i].chunk, have0, rows + i, j - i, srcs)) {
            for (unsigned x = 0; x < sc.n && !failed[g]; x++) {
                if (need[x] != 0 && complete_chunk(m, v, &sc, x, rows[i].chunk, need[x], rows + i,
                                                   j - i, srcs) != 0) {
                    failed[g] = 1;
                }
            }
            chunks++;
        }
        i = j;
    }
    if (stopping(m)) {
        goto out;
    }
    size_t ndone = 0;
    for (uint32_t g = 0; g < v->groups; g++) {
        bool wanted = false;
        for (unsigned x = 0; x < sc.n && !wanted; x++) {
            wanted = want[(size_t)g * PMAP_MAX_SCHEMES + x] != 0;
        }
        if (wanted && !failed[g]) {
            done[ndone++] = g;
        }
    }
    hbc_log(LOG_INFO,
            "event=mover_pass epoch=%llu groups=%zu chunks_completed=%zu groups_done=%zu "
            "sources=%zu listed=%zu",
            (unsigned long long)current, ncand, chunks, ndone, nsrcs, listed);
    if (ndone > 0) {
        report_done(m, v, current, done, ndone);
    }
out:
    for (size_t i = 0; i < neps; i++) {
        pmap_epoch_free(&eps[i]);
    }
    hbc_free(want);
    hbc_free(failed);
    hbc_free(done);
    hbc_free(rows);
    fsm_placement_map_free(&map);
}

struct vault_set {
    struct pmap_vault *v; /* grouped vaults */
    size_t n;             /* how many */
};

static int vault_visit(const Hbc__VaultInfo *vi, void *arg)
{
    struct vault_set *s = arg;
    struct pmap_vault pv;
    struct err e;
    if (pmap_vault_from_info(vi, &pv, &e) != 0 || pv.groups == 0) {
        return 0;
    }
    struct pmap_vault *p = hbc_realloc(s->v, (s->n + 1) * sizeof *p);
    if (p == NULL) {
        return HBC_ENOMEM;
    }
    s->v = p;
    s->v[s->n++] = pv;
    return 0;
}

static struct seen *seen_get(struct mover *m, const char *id, uint64_t now)
{
    for (size_t i = 0; i < m->nseen; i++) {
        if (strcmp(m->seen[i].id, id) == 0) {
            return &m->seen[i];
        }
    }
    struct seen *p = hbc_realloc(m->seen, (m->nseen + 1) * sizeof *p);
    if (p == NULL) {
        return NULL;
    }
    m->seen = p;
    struct seen *s = &m->seen[m->nseen++];
    snprintf(s->id, sizeof s->id, "%s", id);
    s->ok_ns = now;
    return s;
}

/* Propose a node state change (DOWN or UP) as the leader's mover. */
static void set_state(struct mover *m, const char *id, Hbc__NodeState state, uint64_t quiet_s)
{
    Hbc__Command cmd = HBC__COMMAND__INIT;
    Hbc__NodeUpdate u = HBC__NODE_UPDATE__INIT;
    u.node_id = (char *)id;
    u.has_state = true;
    u.state = state;
    cmd.cmd_case = HBC__COMMAND__CMD_NODE_UPDATE;
    cmd.node_update = &u;
    char msg[256];
    int code = propose(m, &cmd, msg, sizeof msg);
    hbc_log(code == 0 ? LOG_WARN : LOG_INFO,
            "event=node_%s node=%s unreachable_s=%llu code=%s msg=\"%s\"",
            state == HBC__NODE_STATE__NODE_DOWN ? "down" : "up_again", id,
            (unsigned long long)quiet_s, hbc_errname(code), msg);
}

struct probe_node {
    char id[65];          /* node id */
    char addr[65];        /* data address */
    Hbc__NodeState state; /* its state */
};

static int probe_visit(const Hbc__NodeInfo *n, void *arg)
{
    struct probe_node **pp = arg;
    size_t count = 0;
    while ((*pp)[count].id[0] != '\0') {
        count++;
    }
    struct probe_node *p = hbc_realloc(*pp, (count + 2) * sizeof *p);
    if (p == NULL) {
        return HBC_ENOMEM;
    }
    *pp = p;
    snprintf(p[count].id, sizeof p[count].id, "%s", n->node_id);
    snprintf(p[count].addr, sizeof p[count].addr, "%s", n->data_address);
    p[count].state = n->state;
    p[count + 1].id[0] = '\0';
    return 0;
}

/* Leader: probe every UP or DOWN node; mark DOWN after down_after_s, UP when back. */
static void watch_nodes(struct mover *m)
{
    if (!atomic_load(&m->leads) || m->o.down_after_s == 0) {
        m->nseen = 0; /* a new leader starts its watch afresh */
        return;
    }
    struct probe_node *nodes = hbc_calloc(1, sizeof *nodes);
    struct err e;
    if (nodes == NULL || fsm_list_nodes(m->o.fsm, probe_visit, &nodes, &e) != 0) {
        hbc_free(nodes);
        return;
    }
    size_t n = 0;
    while (nodes[n].id[0] != '\0') {
        n++;
    }
    struct repo_req *reqs = hbc_calloc(n + 1, sizeof *reqs);
    Hbc__Frame *frames = hbc_calloc(n + 1, sizeof *frames);
    Hbc__StatusRequest sr = HBC__STATUS_REQUEST__INIT;
    if (reqs == NULL || frames == NULL) {
        goto out;
    }
    for (size_t i = 0; i < n; i++) {
        hbc__frame__init(&frames[i]);
        frames[i].body_case = HBC__FRAME__BODY_STATUS;
        frames[i].status = &sr;
        reqs[i] = (struct repo_req){.addr = nodes[i].addr,
                                    .node_id = nodes[i].id,
                                    .kind = REPO_REQ_FRAME,
                                    .frame = &frames[i],
                                    .expect = HBC__FRAME__BODY_STATUS_REPLY};
    }
    repo_net_run(m->net, reqs, n);
    uint64_t now = now_ns();
    for (size_t i = 0; i < n; i++) {
        bool ok = reqs[i].status == 0;
        frame_free(reqs[i].reply);
        if (strcmp(nodes[i].id, m->node_id) == 0) {
            continue;
        }
        struct seen *s = seen_get(m, nodes[i].id, now);
        if (s == NULL) {
            continue;
        }
        uint64_t quiet_s = (now - s->ok_ns) / 1000000000ull;
        if (ok) {
            s->ok_ns = now;
            if (nodes[i].state == HBC__NODE_STATE__NODE_DOWN) {
                set_state(m, nodes[i].id, HBC__NODE_STATE__NODE_UP, 0);
            }
        } else if (nodes[i].state == HBC__NODE_STATE__NODE_UP && quiet_s >= m->o.down_after_s) {
            set_state(m, nodes[i].id, HBC__NODE_STATE__NODE_DOWN, quiet_s);
        }
    }
out:
    hbc_free(reqs);
    hbc_free(frames);
    hbc_free(nodes);
}

void mover_set_leader(struct mover *m, bool leader)
{
    if (m != NULL) {
        atomic_store(&m->leads, leader);
    }
}

static void mover_pass(struct mover *m)
{
    uint64_t current = fsm_placement_current(m->o.fsm);
    if (current == 0) {
        return;
    }
    struct vault_set vs = {0};
    peers_free(m);
    struct err e;
    if (fsm_list_nodes(m->o.fsm, peer_visit, m, &e) != 0 ||
        fsm_list_vaults(m->o.fsm, vault_visit, &vs, &e) != 0 || m->npeers == 0) {
        peers_free(m);
        hbc_free(vs.v);
        return;
    }
    watch_nodes(m);
    for (size_t i = 0; i < vs.n && !stopping(m); i++) {
        move_vault(m, &vs.v[i], current);
    }
    for (size_t i = 0; i < vs.n && !stopping(m); i++) {
        if (pcleanup_vault(m->pc, m->o.fsm, m->o.store, m->node_id, &vs.v[i], now_ns(), NULL, &e) !=
            0) {
            hbc_log(LOG_WARN, "event=placement_cleanup_failed reason=\"%s\"", e.msg);
        }
    }
    hbc_free(vs.v);
}

static void *mover_main(void *arg)
{
    struct mover *m = arg;
    hbc_log(LOG_INFO, "event=mover_started rate=%llu interval_ms=%u", (unsigned long long)m->o.rate,
            m->o.interval_ms);
    while (!stopping(m)) {
        mover_pass(m);
        if (sleep_until(m, now_ns() + (uint64_t)m->o.interval_ms * 1000000ull)) {
            break;
        }
    }
    peers_free(m);
    return NULL;
}

int mover_start(const struct mover_opts *o, struct mover **out, struct err *e)
{
    struct mover *m = hbc_calloc(1, sizeof *m);
    if (m == NULL || (m->node_id = hbc_strdup(o->node_id)) == NULL) {
        hbc_free(m);
        return err_set(e, HBC_ENOMEM, "mover");
    }
    m->o = *o;
    m->o.node_id = m->node_id;
    int rv = pcleanup_new(o->cleanup_after_s, &m->pc, e);
    if (rv != 0) {
        hbc_free(m->node_id);
        hbc_free(m);
        return rv;
    }
    struct repo_net_opts no = {.tls = o->tls, .timeout_ms = MOVER_TIMEOUT_MS};
    rv = repo_net_start(&no, &m->net, e);
    if (rv != 0) {
        pcleanup_free(m->pc);
        hbc_free(m->node_id);
        hbc_free(m);
        return rv;
    }
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&m->cv, &ca);
    pthread_condattr_destroy(&ca);
    pthread_mutex_init(&m->mu, NULL);
    rv = pthread_create(&m->thread, NULL, mover_main, m);
    if (rv != 0) {
        repo_net_stop(m->net);
        pthread_cond_destroy(&m->cv);
        pthread_mutex_destroy(&m->mu);
        pcleanup_free(m->pc);
        hbc_free(m->node_id);
        hbc_free(m);
        return err_set(e, -rv, "mover thread");
    }
    *out = m;
    return 0;
}

void mover_stop(struct mover *m)
{
    if (m == NULL) {
        return;
    }
    pthread_mutex_lock(&m->mu);
    m->stop = true;
    pthread_cond_broadcast(&m->cv);
    pthread_mutex_unlock(&m->mu);
    pthread_join(m->thread, NULL);
    repo_net_stop(m->net);
    pcleanup_free(m->pc);
    hbc_free(m->seen);
    pthread_cond_destroy(&m->cv);
    pthread_mutex_destroy(&m->mu);
    hbc_free(m->node_id);
    hbc_free(m);
}
