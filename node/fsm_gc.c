/*
 * Garbage collection in the state machine: applying GcSweep and the commit
 * fence (docs/retention.md, "Garbage collection").
 *
 * A sweep names chunks that the leader's mark found unreferenced by every
 * snapshot present at mark_index. It is accepted only if no snapshot of the
 * vault was committed after mark_index (the mark could not have seen its
 * references: HBC_EGCSTALE), the proposer is a node of the cluster, and the
 * compliance clock is known and not before the cutoff. Accepting records the
 * sweep's index per vault (key "gc" + vault id in "meta") and audits it;
 * every node's data plane then deletes what it holds of those chunks.
 *
 * The fence: a SnapshotCommit carries the index its backup started from
 * (gc_start_index); if a sweep of the vault was accepted after it, the
 * backup may have deduplicated against a swept chunk, and the commit is
 * refused with HBC_EGCFENCE so that the client checks its chunks again.
 */
#include <string.h>

#include "common/alloc.h"
#include "common/log.h"
#include "node/fsm_internal.h"

#define GC_KEY_PREFIX "gc" /* "meta" key: "gc" + vault id -> GcVaultState */

static void gc_key(const uint8_t vault_id[FSM_ID_LEN], uint8_t key[2 + FSM_ID_LEN])
{
    memcpy(key, GC_KEY_PREFIX, 2);
    memcpy(key + 2, vault_id, FSM_ID_LEN);
}

/* The vault's GC record into *out (zeroed when there is none): 0 or a local failure. */
static int gc_state_load(struct apply_ctx *c, const uint8_t *vault_id, Hbc__GcVaultState *out,
                         struct err *e)
{
    hbc__gc_vault_state__init(out);
    uint8_t key[2 + FSM_ID_LEN];
    gc_key(vault_id, key);
    Hbc__GcVaultState *st = NULL;
    int rc = fsm_get_record(c, META_CF_META, key, sizeof key, &hbc__gc_vault_state__descriptor,
                            (void **)&st, e);
    if (rc == HBC_ENOTFOUND) {
        return 0;
    }
    if (rc != 0) {
        return rc;
    }
    out->last_sweep_index = st->last_sweep_index;
    out->last_mark_index = st->last_mark_index;
    out->sweeps = st->sweeps;
    out->chunks_swept = st->chunks_swept;
    fsm_record_free(st);
    return 0;
}

int fsm_get_gc_state(struct fsm *f, const uint8_t vault_id[FSM_ID_LEN], uint64_t *last_sweep_index,
                     uint64_t *sweeps, uint64_t *chunks_swept, struct err *e)
{
    struct apply_ctx c = {.f = f};
    Hbc__GcVaultState st;
    int rc = gc_state_load(&c, vault_id, &st, e);
    if (rc == 0) {
        *last_sweep_index = st.last_sweep_index;
        *sweeps = st.sweeps;
        *chunks_swept = st.chunks_swept;
    }
    return rc;
}

/* The highest commit index among the vault's snapshots (keys 'v' + vault + be64 index). */
struct last_commit {
    uint64_t index; /* 0: none */
};

static int last_commit_cb(const void *key, size_t klen, const void *val, size_t vlen, void *arg)
{
    struct last_commit *lc = arg;
    (void)val;
    (void)vlen;
    if (klen == 1 + FSM_ID_LEN + 8) {
        uint64_t idx = fsm_get_be64((const uint8_t *)key + 1 + FSM_ID_LEN);
        lc->index = idx > lc->index ? idx : lc->index;
    }
    return 0;
}

/* Whether subject (RFC 2253, "CN=n1,OU=node") has attribute attr equal to value. */
static bool subject_has(const char *subject, const char *attr, const char *value, char *out,
                        size_t cap)
{
    size_t alen = strlen(attr);
    const char *p = subject;
    while (*p != '\0') {
        const char *end = strchr(p, ',');
        size_t len = end != NULL ? (size_t)(end - p) : strlen(p);
        if (len > alen && strncmp(p, attr, alen) == 0 && p[alen] == '=') {
            const char *v = p + alen + 1;
            size_t vlen = len - alen - 1;
            if (value != NULL && strlen(value) == vlen && strncmp(v, value, vlen) == 0) {
                return true;
            }
            if (value == NULL && out != NULL && vlen < cap) {
                memcpy(out, v, vlen);
                out[vlen] = '\0';
                return true;
            }
        }
        p = end != NULL ? end + 1 : p + len;
    }
    return false;
}

int fsm_apply_gc_sweep(struct apply_ctx *c, const Hbc__GcSweep *g, int *code, struct err *e)
{
    c->audit = true;
    if (g->vault_id.len != FSM_ID_LEN || g->n_chunk_ids == 0 || g->n_chunk_ids > FSM_GC_SWEEP_MAX ||
        g->mark_index == 0 || g->mark_index >= c->index) {
        *code = HBC_EINVAL;
        c->reason = "gc sweep: bad vault id, chunk count (1..1800) or mark index";
        return 0;
    }
    for (size_t i = 0; i < g->n_chunk_ids; i++) {
        if (g->chunk_ids[i].len != FSM_TREE_ID_LEN) {
            *code = HBC_EINVAL;
            c->reason = "gc sweep: a chunk id is not 32 bytes";
            return 0;
        }
    }
    /* Only the cluster's own nodes sweep: the proposer must be a node certificate of a known node.
     */
    char cn[FSM_NAME_MAX + 1];
    if (!subject_has(c->proposer, "OU", "node", NULL, 0) ||
        !subject_has(c->proposer, "CN", NULL, cn, sizeof cn)) {
        *code = HBC_EDENIED;
        c->reason = "gc sweep: only a node of the cluster may propose a sweep";
        return 0;
    }
    int rc = fsm_key_exists(c, META_CF_NODES, cn, strlen(cn), e);
    if (rc < 0) {
        return rc;
    }
    if (rc == 0) {
        *code = HBC_EDENIED;
        c->reason = "gc sweep: the proposer is not a node of the cluster";
        return 0;
    }
    uint8_t vkey[1 + FSM_ID_LEN];
    vkey[0] = FSM_VAULT_BY_ID;
    memcpy(vkey + 1, g->vault_id.data, FSM_ID_LEN);
    rc = fsm_key_exists(c, META_CF_VAULTS, vkey, sizeof vkey, e);
    if (rc < 0) {
        return rc;
    }
    if (rc == 0) {
        *code = HBC_ENOTFOUND;
        c->reason = "gc sweep: no such vault";
        return 0;
    }
    if (c->clock_ms == 0) {
        *code = HBC_ECLOCK;
        c->reason = "gc sweep: the compliance clock is unknown";
        return 0;
    }
    if (g->cutoff_ms > c->clock_ms) {
        *code = HBC_EINVAL;
        c->reason = "gc sweep: cutoff after the compliance clock";
        return 0;
    }
    /* The key rule: the mark saw every snapshot that exists now. */
    struct last_commit lc = {0};
    uint8_t prefix[1 + FSM_ID_LEN];
    prefix[0] = FSM_SNAP_BY_VAULT;
    memcpy(prefix + 1, g->vault_id.data, FSM_ID_LEN);
    rc = meta_store_scan(c->f->store, NULL, META_CF_SNAPSHOTS, prefix, sizeof prefix,
                         last_commit_cb, &lc, e);
    if (rc != 0) {
        return rc;
    }
    if (lc.index > g->mark_index) {
        hbc_log(LOG_INFO, "event=gc_sweep_stale index=%llu mark_index=%llu last_commit=%llu",
                (unsigned long long)c->index, (unsigned long long)g->mark_index,
                (unsigned long long)lc.index);
        *code = HBC_EGCSTALE;
        c->reason = "gc sweep: a snapshot was committed after the mark; mark again";
        return 0;
    }
    Hbc__GcVaultState st;
    rc = gc_state_load(c, g->vault_id.data, &st, e);
    if (rc != 0) {
        return rc;
    }
    st.last_sweep_index = c->index;
    st.last_mark_index = g->mark_index;
    st.sweeps++;
    st.chunks_swept += g->n_chunk_ids;
    uint8_t key[2 + FSM_ID_LEN];
    gc_key(g->vault_id.data, key);
    return fsm_put_record(c, META_CF_META, key, sizeof key, &st.base, e);
}

int fsm_gc_commit_fence(struct apply_ctx *c, const Hbc__SnapshotCommit *s, int *code, struct err *e)
{
    Hbc__GcVaultState st;
    int rc = gc_state_load(c, s->vault_id.data, &st, e);
    if (rc != 0) {
        return rc;
    }
    uint64_t start = s->has_gc_start_index ? s->gc_start_index : 0;
    if (st.last_sweep_index > start) {
        hbc_log(LOG_INFO, "event=gc_fence index=%llu gc_start_index=%llu last_sweep_index=%llu",
                (unsigned long long)c->index, (unsigned long long)start,
                (unsigned long long)st.last_sweep_index);
        *code = HBC_EGCFENCE;
        c->reason =
            "a garbage collection ran during this backup; check its chunks and commit again";
        c->audit_snapshot = s->snapshot_id.data;
    }
    return 0;
}

void fsm_set_gc_hook(struct fsm *f, fsm_gc_hook hook, void *arg)
{
    f->gc_hook = hook;
    f->gc_hook_arg = arg;
}
