/* The replicated state machine's commands: validate each, then add its records to one batch. */
#include "common/log.h"
#include "node/fsm_internal.h"
#include "node/fsm_placement.h"
#include "node/fsm_placement_internal.h"

#include <string.h>

#include <openssl/evp.h>

#include "common/alloc.h"
#include "common/erasure.h"
#include "common/keys.h"

/* Text fields: 1..max bytes, no control characters (UTF-8 passes). */
bool fsm_text_ok(const char *s, size_t max)
{
    if (s == NULL) {
        return false;
    }
    size_t n = strlen(s);
    if (n == 0 || n > max) {
        return false;
    }
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)s[i];
        if (ch < 0x20 || ch == 0x7f) {
            return false;
        }
    }
    return true;
}

/* Node ids appear in keys, logs and file names: letters, digits, '.', '_', '-'. */
static bool node_id_ok(const char *s)
{
    if (!fsm_text_ok(s, FSM_NAME_MAX)) {
        return false;
    }
    for (const char *p = s; *p != '\0'; p++) {
        char ch = *p;
        bool ok = (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') ||
                  (ch >= '0' && ch <= '9') || ch == '.' || ch == '_' || ch == '-';
        if (!ok) {
            return false;
        }
    }
    return true;
}

static bool node_state_ok(Hbc__NodeState s)
{
    return s == HBC__NODE_STATE__NODE_JOINING || s == HBC__NODE_STATE__NODE_UP ||
           s == HBC__NODE_STATE__NODE_DRAINING || s == HBC__NODE_STATE__NODE_DOWN;
}

/* Store m under key in cf (packed). */
int fsm_put_record(struct apply_ctx *c, enum meta_cf cf, const void *key, size_t klen,
                   const ProtobufCMessage *m, struct err *e)
{
    uint8_t *v = NULL;
    size_t n = 0;
    int rc = fsm_record_pack(m, &v, &n, e);
    if (rc != 0) {
        return rc;
    }
    meta_batch_put(c->b, cf, key, klen, v, n);
    hbc_free(v);
    return 0;
}

/* Load and unpack the record under key: 0, HBC_ENOTFOUND, or a local failure. */
int fsm_get_record(struct apply_ctx *c, enum meta_cf cf, const void *key, size_t klen,
                   const ProtobufCMessageDescriptor *d, void **out, struct err *e)
{
    void *v = NULL;
    size_t n = 0;
    *out = NULL;
    int rc = meta_store_get(c->f->store, NULL, cf, key, klen, &v, &n, e);
    if (rc != 0) {
        return rc;
    }
    rc = fsm_record_unpack(d, v, n, out, e);
    hbc_free(v);
    return rc;
}

/* Whether key exists in cf: 0 (no), 1 (yes) or a local failure. */
int fsm_key_exists(struct apply_ctx *c, enum meta_cf cf, const void *key, size_t klen,
                   struct err *e)
{
    void *v = NULL;
    size_t n = 0;
    int rc = meta_store_get(c->f->store, NULL, cf, key, klen, &v, &n, e);
    hbc_free(v);
    if (rc == HBC_ENOTFOUND) {
        return 0;
    }
    return rc == 0 ? 1 : rc;
}

/* ---- nodes ---- */

struct raft_id_search {
    uint64_t raft_id; /* the id looked for */
    struct err *e;    /* where a local failure goes */
};

static int raft_id_visit(const void *key, size_t klen, const void *val, size_t vlen, void *arg)
{
    (void)key;
    (void)klen;
    struct raft_id_search *s = arg;
    Hbc__NodeInfo *n = NULL;
    int rc = fsm_record_unpack(&hbc__node_info__descriptor, val, vlen, (void **)&n, s->e);
    if (rc != 0) {
        return rc;
    }
    bool same = n->raft_id == s->raft_id;
    fsm_record_free(n);
    return same ? 1 : 0;
}

static int apply_node_join(struct apply_ctx *c, const Hbc__NodeJoin *j, int *code, struct err *e)
{
    if (!node_id_ok(j->node_id) || !fsm_text_ok(j->data_address, FSM_NAME_MAX) ||
        !fsm_text_ok(j->raft_address, FSM_NAME_MAX) || j->raft_id == 0 ||
        !fsm_text_ok(j->site, FSM_NAME_MAX) || !fsm_text_ok(j->region, FSM_NAME_MAX) ||
        !fsm_text_ok(j->media, FSM_NAME_MAX) || !node_state_ok(j->state)) {
        *code = HBC_EINVAL;
        return 0;
    }
    size_t klen = strlen(j->node_id);
    int rc = fsm_key_exists(c, META_CF_NODES, j->node_id, klen, e);
    if (rc < 0) {
        return rc;
    }
    if (rc == 1) {
        *code = HBC_EEXIST;
        return 0;
    }
    struct raft_id_search s = {.raft_id = j->raft_id, .e = e};
    rc = meta_store_scan(c->f->store, NULL, META_CF_NODES, NULL, 0, raft_id_visit, &s, e);
    if (rc < 0) {
        return rc;
    }
    if (rc == 1) {
        *code = HBC_EEXIST;
        return 0;
    }
    Hbc__NodeInfo n = HBC__NODE_INFO__INIT;
    n.node_id = j->node_id;
    n.data_address = j->data_address;
    n.raft_address = j->raft_address;
    n.raft_id = j->raft_id;
    n.site = j->site;
    n.region = j->region;
    n.media = j->media;
    n.worm = j->worm;
    n.capacity_bytes = j->capacity_bytes;
    n.state = j->state;
    n.joined_ms = c->time_ms;
    n.updated_ms = c->time_ms;
    rc = fsm_put_record(c, META_CF_NODES, j->node_id, klen, &n.base, e);
    if (rc == 0) {
        rc = fsm_placement_node_changed(c, j->node_id, &n, "join", e);
    }
    return rc;
}

static int apply_node_update(struct apply_ctx *c, const Hbc__NodeUpdate *u, int *code,
                             struct err *e)
{
    if (!node_id_ok(u->node_id) ||
        (u->data_address != NULL && !fsm_text_ok(u->data_address, FSM_NAME_MAX)) ||
        (u->raft_address != NULL && !fsm_text_ok(u->raft_address, FSM_NAME_MAX)) ||
        (u->site != NULL && !fsm_text_ok(u->site, FSM_NAME_MAX)) ||
        (u->region != NULL && !fsm_text_ok(u->region, FSM_NAME_MAX)) ||
        (u->media != NULL && !fsm_text_ok(u->media, FSM_NAME_MAX)) ||
        (u->has_state && !node_state_ok(u->state))) {
        *code = HBC_EINVAL;
        return 0;
    }
    size_t klen = strlen(u->node_id);
    Hbc__NodeInfo *n = NULL;
    int rc = fsm_get_record(c, META_CF_NODES, u->node_id, klen, &hbc__node_info__descriptor,
                            (void **)&n, e);
    if (rc == HBC_ENOTFOUND) {
        *code = HBC_ENOTFOUND;
        return 0;
    }
    if (rc != 0) {
        return rc;
    }
    /* Point the unpacked record at the update's strings; it is freed before u is. */
    Hbc__NodeInfo m = *n;
    m.data_address = u->data_address != NULL ? u->data_address : n->data_address;
    m.raft_address = u->raft_address != NULL ? u->raft_address : n->raft_address;
    m.site = u->site != NULL ? u->site : n->site;
    m.region = u->region != NULL ? u->region : n->region;
    m.media = u->media != NULL ? u->media : n->media;
    if (u->has_worm) {
        m.worm = u->worm;
    }
    if (u->has_capacity_bytes) {
        m.capacity_bytes = u->capacity_bytes;
    }
    if (u->has_state) {
        m.state = u->state;
    }
    m.updated_ms = c->time_ms;
    rc = fsm_put_record(c, META_CF_NODES, u->node_id, klen, &m.base, e);
    if (rc == 0) {
        rc = fsm_placement_node_changed(
            c, u->node_id, &m,
            u->has_state && u->state == HBC__NODE_STATE__NODE_DRAINING ? "drain" : "update", e);
    }
    fsm_record_free(n);
    return rc;
}

static int apply_node_remove(struct apply_ctx *c, const Hbc__NodeRemove *r, int *code,
                             struct err *e)
{
    if (!node_id_ok(r->node_id)) {
        *code = HBC_EINVAL;
        return 0;
    }
    size_t klen = strlen(r->node_id);
    int rc = fsm_key_exists(c, META_CF_NODES, r->node_id, klen, e);
    if (rc < 0) {
        return rc;
    }
    if (rc == 0) {
        *code = HBC_ENOTFOUND;
        return 0;
    }
    meta_batch_delete(c->b, META_CF_NODES, r->node_id, klen);
    return fsm_placement_node_changed(c, r->node_id, NULL, "remove", e);
}

/* ---- vaults ---- */

/*
 * A vault policy's bounds (client/policy.h states the same): 1..FSM_MAX_COPIES
 * copy rules, k 1..ERASURE_MAX_K, m 0..ERASURE_MAX_M, site rules 1..64 bytes,
 * media rules 1..32, name 1..64, no control characters. Returns NULL when p
 * is valid, otherwise the reason (for the log; the refusal is HBC_EINVAL).
 */
static const char *policy_problem(const Hbc__VaultPolicy *p)
{
    if (p->n_copies < 1 || p->n_copies > FSM_MAX_COPIES) {
        return "policy copies not 1..8";
    }
    if (p->name != NULL && !fsm_text_ok(p->name, FSM_POLICY_RULE_MAX)) {
        return "policy name not 1..64 printable bytes";
    }
    for (size_t i = 0; i < p->n_copies; i++) {
        const Hbc__CopyRule *r = p->copies[i];
        if (!fsm_text_ok(r->site, FSM_POLICY_RULE_MAX)) {
            return "copy rule site not 1..64 printable bytes";
        }
        if (!fsm_text_ok(r->media, FSM_POLICY_MEDIA_MAX)) {
            return "copy rule media not 1..32 printable bytes";
        }
        if (r->k < 1 || r->k > ERASURE_MAX_K) {
            return "copy rule k not 1..16";
        }
        if (r->m > ERASURE_MAX_M) {
            return "copy rule m not 0..8";
        }
    }
    return NULL;
}

static int apply_vault_create(struct apply_ctx *c, const Hbc__VaultCreate *v, int *code,
                              struct err *e)
{
    if (v->vault_id.len != FSM_ID_LEN || !fsm_text_ok(v->name, FSM_VAULT_NAME_MAX) ||
        v->copies < 1 || v->copies > FSM_MAX_COPIES || v->k < 1 || v->k > ERASURE_MAX_K ||
        v->m > ERASURE_MAX_M) {
        *code = HBC_EINVAL;
        return 0;
    }
    /* Wrapped keys: both or neither, each exactly one RFC 5649 wrap of a 32-byte key. */
    bool keys = v->has_wrapped_data_key || v->has_wrapped_chunk_id_key;
    if (keys && (!v->has_wrapped_data_key || !v->has_wrapped_chunk_id_key ||
                 v->wrapped_data_key.len != KEYS_WRAPPED_LEN ||
                 v->wrapped_chunk_id_key.len != KEYS_WRAPPED_LEN)) {
        *code = HBC_EINVAL;
        return 0;
    }
    if (v->has_key_generation && (!keys || v->key_generation == 0)) {
        *code = HBC_EINVAL;
        return 0;
    }
    if (v->retention_days > FSM_RETENTION_DAYS_MAX ||
        (v->has_retention_seconds && v->retention_seconds > FSM_RETENTION_SECONDS_MAX) ||
        (v->lock_mode != HBC__LOCK_MODE__LOCK_COMPLIANCE &&
         v->lock_mode != HBC__LOCK_MODE__LOCK_GOVERNANCE)) {
        *code = HBC_EINVAL;
        c->reason = "retention_days above 36500, retention_seconds above 86400 or an unknown lock "
                    "mode";
        return 0;
    }
    const char *why = v->policy != NULL ? policy_problem(v->policy) : NULL;
    if (why == NULL && v->home_site != NULL && !fsm_text_ok(v->home_site, FSM_NAME_MAX)) {
        why = "home site not 1..64 printable bytes";
    }
    if (why == NULL && v->has_placement_groups &&
        (v->placement_groups == 0 || v->placement_groups > 65536 ||
         (v->placement_groups & (v->placement_groups - 1)) != 0)) {
        why = "placement groups not a power of two 1..65536";
    }
    if (why != NULL) {
        hbc_log(LOG_WARN, "event=vault_create_refused index=%llu reason=\"%s\"",
                (unsigned long long)c->index, why);
        *code = HBC_EINVAL;
        c->reason = why;
        return 0;
    }
    uint8_t id_key[1 + FSM_ID_LEN];
    id_key[0] = FSM_VAULT_BY_ID;
    memcpy(id_key + 1, v->vault_id.data, FSM_ID_LEN);
    size_t name_len = strlen(v->name);
    uint8_t name_key[1 + FSM_VAULT_NAME_MAX];
    name_key[0] = FSM_VAULT_BY_NAME;
    memcpy(name_key + 1, v->name, name_len);

    int rc = fsm_key_exists(c, META_CF_VAULTS, id_key, sizeof id_key, e);
    if (rc == 0) {
        rc = fsm_key_exists(c, META_CF_VAULTS, name_key, 1 + name_len, e);
    }
    if (rc < 0) {
        return rc;
    }
    if (rc == 1) {
        *code = HBC_EEXIST;
        return 0;
    }
    Hbc__VaultInfo info = HBC__VAULT_INFO__INIT;
    info.vault_id = v->vault_id;
    info.name = v->name;
    info.copies = v->copies;
    info.k = v->k;
    info.m = v->m;
    info.created_ms = c->time_ms;
    info.created_index = c->index;
    info.created_by = (char *)c->proposer;
    /* Stored explicitly, so a later change of the defaults never changes this vault. */
    info.has_retention_days = true;
    info.retention_days = v->retention_days;
    if (v->has_retention_seconds && v->retention_seconds > 0) {
        info.has_retention_seconds = true;
        info.retention_seconds = v->retention_seconds;
    }
    info.has_lock_mode = true;
    info.lock_mode = v->lock_mode;
    info.policy = v->policy;
    info.home_site = v->home_site;
    if (v->has_placement_groups) {
        info.has_placement_groups = true;
        info.placement_groups = v->placement_groups;
        info.has_created_epoch = true;
        info.created_epoch = fsm_placement_current(c->f);
    }
    if (keys) {
        info.has_wrapped_data_key = true;
        info.wrapped_data_key = v->wrapped_data_key;
        info.has_wrapped_chunk_id_key = true;
        info.wrapped_chunk_id_key = v->wrapped_chunk_id_key;
        info.has_key_generation = true;
        info.key_generation = v->has_key_generation ? v->key_generation : 1;
    }
    rc = fsm_put_record(c, META_CF_VAULTS, id_key, sizeof id_key, &info.base, e);
    if (rc == 0) {
        meta_batch_put(c->b, META_CF_VAULTS, name_key, 1 + name_len, v->vault_id.data, FSM_ID_LEN);
    }
    return rc;
}

/* ---- snapshots ---- */

/* Whether a stored snapshot carries exactly the client fields of commit s. */
static bool same_snapshot(const Hbc__SnapshotInfo *a, const Hbc__SnapshotCommit *s)
{
    return a->vault_id.len == s->vault_id.len &&
           memcmp(a->vault_id.data, s->vault_id.data, s->vault_id.len) == 0 &&
           a->time_ms == s->time_ms && a->root_tree_id.len == s->root_tree_id.len &&
           memcmp(a->root_tree_id.data, s->root_tree_id.data, s->root_tree_id.len) == 0 &&
           a->ref_list_id.len == s->ref_list_id.len &&
           memcmp(a->ref_list_id.data, s->ref_list_id.data, s->ref_list_id.len) == 0 &&
           a->files == s->files && a->bytes == s->bytes && a->chunks == s->chunks;
}

static int apply_snapshot_commit(struct apply_ctx *c, const Hbc__SnapshotCommit *s, int *code,
                                 struct err *e)
{
    if (s->snapshot_id.len != FSM_ID_LEN || s->vault_id.len != FSM_ID_LEN ||
        s->root_tree_id.len != FSM_TREE_ID_LEN || s->ref_list_id.len != FSM_TREE_ID_LEN) {
        *code = HBC_EINVAL;
        return 0;
    }
    uint8_t snap_key[1 + FSM_ID_LEN];
    snap_key[0] = FSM_SNAP_BY_ID;
    memcpy(snap_key + 1, s->snapshot_id.data, FSM_ID_LEN);
    Hbc__SnapshotInfo *old = NULL;
    int rc = fsm_get_record(c, META_CF_SNAPSHOTS, snap_key, sizeof snap_key,
                            &hbc__snapshot_info__descriptor, (void **)&old, e);
    if (rc == 0) {
        /* The idempotency key: a retried commit changes nothing. */
        *code = same_snapshot(old, s) ? HBC_EEXIST : HBC_EINVAL;
        fsm_record_free(old);
        return 0;
    }
    if (rc != HBC_ENOTFOUND) {
        return rc;
    }
    uint8_t vault_key[1 + FSM_ID_LEN];
    vault_key[0] = FSM_VAULT_BY_ID;
    memcpy(vault_key + 1, s->vault_id.data, FSM_ID_LEN);
    Hbc__VaultInfo *vault = NULL;
    rc = fsm_get_record(c, META_CF_VAULTS, vault_key, sizeof vault_key,
                        &hbc__vault_info__descriptor, (void **)&vault, e);
    if (rc == HBC_ENOTFOUND) {
        *code = HBC_ENOTFOUND;
        return 0;
    }
    if (rc != 0) {
        return rc;
    }
    /*
     * The lock starts at the later of the compliance clock and the leader's
     * time: a leader clock running behind cannot shorten it, and one running
     * ahead only lengthens it. No tick is needed: a commit only adds protection.
     */
    uint64_t base = c->clock_ms > c->time_ms ? c->clock_ms : c->time_ms;
    uint64_t retain_until = base + (uint64_t)vault->retention_days * FSM_DAY_MS;
    bool short_retention = vault->has_retention_seconds && vault->retention_seconds > 0;
    if (short_retention) {
        retain_until = base + (uint64_t)vault->retention_seconds * 1000;
    }
    Hbc__LockMode mode = vault->lock_mode;
    fsm_record_free(vault);
    rc = fsm_gc_commit_fence(c, s, code, e);
    if (rc != 0 || *code != 0) {
        return rc;
    }
    Hbc__SnapshotInfo info = HBC__SNAPSHOT_INFO__INIT;
    info.snapshot_id = s->snapshot_id;
    info.vault_id = s->vault_id;
    info.time_ms = s->time_ms;
    info.root_tree_id = s->root_tree_id;
    info.ref_list_id = s->ref_list_id;
    info.files = s->files;
    info.bytes = s->bytes;
    info.chunks = s->chunks;
    info.committed_ms = c->time_ms;
    info.commit_index = c->index;
    info.committed_by = (char *)c->proposer;
    info.has_retain_until_ms = true;
    info.retain_until_ms = retain_until;
    info.has_lock_mode = true;
    info.lock_mode = mode;
    if (short_retention) {
        info.has_expiry_margin_ms = true;
        info.expiry_margin_ms = FSM_MAX_SKEW_MS;
    }
    rc = fsm_put_record(c, META_CF_SNAPSHOTS, snap_key, sizeof snap_key, &info.base, e);
    if (rc != 0) {
        return rc;
    }
    /* The vault's list, ordered by commit index. */
    uint8_t by_vault[1 + FSM_ID_LEN + 8];
    by_vault[0] = FSM_SNAP_BY_VAULT;
    memcpy(by_vault + 1, s->vault_id.data, FSM_ID_LEN);
    fsm_put_be64(by_vault + 1 + FSM_ID_LEN, c->index);
    meta_batch_put(c->b, META_CF_SNAPSHOTS, by_vault, sizeof by_vault, s->snapshot_id.data,
                   FSM_ID_LEN);
    return 0;
}

struct restore_test_find {
    const uint8_t *record_id; /* the id looked for (FSM_ID_LEN bytes) */
    struct err *e;            /* where a local failure goes */
};

static int restore_test_visit(const void *key, size_t klen, const void *val, size_t vlen, void *arg)
{
    (void)key;
    (void)klen;
    struct restore_test_find *s = arg;
    Hbc__RestoreTestInfo *t = NULL;
    int rc = fsm_record_unpack(&hbc__restore_test_info__descriptor, val, vlen, (void **)&t, s->e);
    if (rc != 0) {
        return rc;
    }
    bool same = t->has_record_id && t->record_id.len == FSM_ID_LEN &&
                memcmp(t->record_id.data, s->record_id, FSM_ID_LEN) == 0;
    fsm_record_free(t);
    return same ? 1 : 0;
}

static int apply_restore_test(struct apply_ctx *c, const Hbc__RestoreTestRecord *t, int *code,
                              struct err *e)
{
    if (t->has_record_id) {
        /* Idempotency: a retried record (same client id) is a no-op that succeeds again. */
        if (t->record_id.len != FSM_ID_LEN || t->snapshot_id.len != FSM_ID_LEN) {
            *code = HBC_EINVAL;
            return 0;
        }
        struct restore_test_find s = {.record_id = t->record_id.data, .e = e};
        int rc = meta_store_scan(c->f->store, NULL, META_CF_RESTORE_TESTS, t->snapshot_id.data,
                                 FSM_ID_LEN, restore_test_visit, &s, e);
        if (rc < 0) {
            return rc;
        }
        if (rc == 1) {
            return 0;
        }
    }
    if (t->snapshot_id.len != FSM_ID_LEN ||
        (t->copy != NULL && t->copy[0] != '\0' && !fsm_text_ok(t->copy, FSM_NAME_MAX)) ||
        (t->result != HBC__RESTORE_TEST_RESULT__RESTORE_TEST_PASSED &&
         t->result != HBC__RESTORE_TEST_RESULT__RESTORE_TEST_FAILED)) {
        *code = HBC_EINVAL;
        return 0;
    }
    uint8_t snap_key[1 + FSM_ID_LEN];
    snap_key[0] = FSM_SNAP_BY_ID;
    memcpy(snap_key + 1, t->snapshot_id.data, FSM_ID_LEN);
    Hbc__SnapshotInfo *snap = NULL;
    int rc = fsm_get_record(c, META_CF_SNAPSHOTS, snap_key, sizeof snap_key,
                            &hbc__snapshot_info__descriptor, (void **)&snap, e);
    if (rc == HBC_ENOTFOUND) {
        *code = HBC_ENOTFOUND;
        return 0;
    }
    if (rc != 0) {
        return rc;
    }
    Hbc__RestoreTestInfo info = HBC__RESTORE_TEST_INFO__INIT;
    info.snapshot_id = t->snapshot_id;
    info.vault_id = snap->vault_id;
    info.copy = t->copy;
    info.chunks = t->chunks;
    info.bytes = t->bytes;
    info.errors = t->errors;
    info.duration_ms = t->duration_ms;
    info.result = t->result;
    info.recorded_ms = c->time_ms;
    info.index = c->index;
    info.recorded_by = (char *)c->proposer;
    info.has_record_id = t->has_record_id;
    info.record_id = t->record_id;
    uint8_t key[FSM_ID_LEN + 8];
    memcpy(key, t->snapshot_id.data, FSM_ID_LEN);
    fsm_put_be64(key + FSM_ID_LEN, c->index);
    rc = fsm_put_record(c, META_CF_RESTORE_TESTS, key, sizeof key, &info.base, e);
    fsm_record_free(snap);
    return rc;
}

static int dispatch(struct apply_ctx *c, const Hbc__Command *cmd, int *code, struct err *e)
{
    if (cmd->proposer != NULL && cmd->proposer[0] != '\0' &&
        !fsm_text_ok(cmd->proposer, FSM_PROPOSER_MAX)) {
        *code = HBC_EINVAL;
        return 0;
    }
    int rc = fsm_apply_locks(c, cmd, code, e);
    if (rc != 1) {
        return rc;
    }
    switch (cmd->cmd_case) {
    case HBC__COMMAND__CMD_NODE_JOIN:
        return apply_node_join(c, cmd->node_join, code, e);
    case HBC__COMMAND__CMD_NODE_UPDATE:
        return apply_node_update(c, cmd->node_update, code, e);
    case HBC__COMMAND__CMD_NODE_REMOVE:
        return apply_node_remove(c, cmd->node_remove, code, e);
    case HBC__COMMAND__CMD_VAULT_CREATE:
        return apply_vault_create(c, cmd->vault_create, code, e);
    case HBC__COMMAND__CMD_SNAPSHOT_COMMIT:
        return apply_snapshot_commit(c, cmd->snapshot_commit, code, e);
    case HBC__COMMAND__CMD_RESTORE_TEST_RECORD:
        return apply_restore_test(c, cmd->restore_test_record, code, e);
    case HBC__COMMAND__CMD_GC_SWEEP:
        return fsm_apply_gc_sweep(c, cmd->gc_sweep, code, e);
    case HBC__COMMAND__CMD_PLACEMENT_GROUP_DONE:
        return fsm_apply_group_done(c, cmd->placement_group_done, code, e);
    default:
        /* No command, or one a newer version added: refused the same way everywhere. */
        *code = HBC_EPROTO;
        return 0;
    }
}

/*
 * Record an entry in "audit": every refusal (with its reason) and every
 * command of the locks family. Refusals must leave a trace even though their
 * effect is dropped, so this goes into the batch after it was cleared.
 */
static int audit_record(struct apply_ctx *c, const Hbc__Command *cmd, int outcome, struct err *e)
{
    Hbc__AuditRecord r = HBC__AUDIT_RECORD__INIT;
    r.index = c->index;
    r.leader_time_ms = c->time_ms;
    r.compliance_clock_ms = c->clock_ms;
    r.proposer = (char *)(c->proposer != NULL ? c->proposer : "");
    r.command = cmd != NULL ? (uint32_t)cmd->cmd_case : 0;
    r.outcome = outcome;
    r.reason = (char *)(outcome == 0 ? "" : c->reason != NULL ? c->reason : hbc_strerror(outcome));
    if (c->audit_snapshot != NULL) {
        r.has_snapshot_id = true;
        r.snapshot_id.data = (uint8_t *)c->audit_snapshot;
        r.snapshot_id.len = FSM_ID_LEN;
    }
    uint8_t key[8];
    fsm_put_be64(key, c->index);
    return fsm_put_record(c, META_CF_AUDIT, key, sizeof key, &r.base, e);
}

/* next = SHA-256(prev || be64 index || entry): the order and content of every entry applied. */
static int chain_next(const uint8_t prev[32], uint64_t index, const void *buf, size_t len,
                      uint8_t next[32], struct err *e)
{
    uint8_t idx[8];
    fsm_put_be64(idx, index);
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    unsigned int n = 0;
    bool ok = md != NULL && EVP_DigestInit_ex(md, EVP_sha256(), NULL) == 1 &&
              EVP_DigestUpdate(md, prev, 32) == 1 && EVP_DigestUpdate(md, idx, 8) == 1 &&
              (len == 0 || EVP_DigestUpdate(md, buf, len) == 1) &&
              EVP_DigestFinal_ex(md, next, &n) == 1 && n == 32;
    EVP_MD_CTX_free(md);
    if (!ok) {
        return err_openssl(e, HBC_ECRYPTO, "command chain");
    }
    return 0;
}

int fsm_apply_at(struct fsm *f, uint64_t index, const void *buf, size_t len, int *code,
                 struct err *e)
{
    *code = 0;
    if (index == 0 || (buf == NULL && len > 0)) {
        return err_set(e, HBC_EINVAL, "apply: index 0 or no buffer");
    }
    if (index <= f->applied) {
        /* A replay after a restart: RocksDB already holds this entry's effect. */
        f->stats.skipped++;
        return 0;
    }
    struct meta_batch *b = NULL;
    int rc = meta_batch_new(f->store, &b, e);
    if (rc != 0) {
        err_wrap(e, "apply %llu", (unsigned long long)index);
        return rc;
    }
    struct apply_ctx c = {
        .f = f, .b = b, .index = index, .time_ms = f->leader_time_ms, .clock_ms = f->clock_ms};
    Hbc__Command *cmd = NULL;
    int outcome = 0;
    bool oom = false;
    ProtobufCAllocator alloc = fsm_pb_allocator(&oom);
    /* The entry: length prefix, protobuf, zero padding to 8 bytes (fsm_command_encode). */
    const uint8_t *eb = buf;
    size_t plen = len >= FSM_ENTRY_PREFIX
                      ? ((size_t)eb[0] << 24 | (size_t)eb[1] << 16 | (size_t)eb[2] << 8 | eb[3])
                      : 0;
    bool padding_ok = len >= FSM_ENTRY_PREFIX && plen <= len - FSM_ENTRY_PREFIX &&
                      len - FSM_ENTRY_PREFIX - plen < 8;
    for (size_t i = FSM_ENTRY_PREFIX + plen; padding_ok && i < len; i++) {
        padding_ok = eb[i] == 0;
    }
    if (len > FSM_COMMAND_MAX) {
        outcome = HBC_ETOOBIG;
    } else if (!padding_ok) {
        outcome = HBC_EPROTO;
    } else {
        cmd = hbc__command__unpack(&alloc, plen, eb + FSM_ENTRY_PREFIX);
        if (cmd == NULL && oom) {
            rc = err_set(e, HBC_ENOMEM, "unpack command");
            goto out;
        }
        if (cmd == NULL) {
            outcome = HBC_EPROTO;
        }
    }
    if (cmd != NULL) {
        if (cmd->leader_time_ms > c.time_ms) {
            c.time_ms = cmd->leader_time_ms;
        }
        c.proposer = cmd->proposer != NULL ? cmd->proposer : "";
        rc = dispatch(&c, cmd, &outcome, e);
        if (rc != 0) {
            goto out;
        }
    }
    if (outcome != 0) {
        meta_batch_clear(b);
        c.clock_ms = f->clock_ms;
    }
    if (outcome != 0 || c.audit) {
        rc = audit_record(&c, cmd, outcome, e);
        if (rc != 0) {
            goto out;
        }
    }

    uint8_t chain[32];
    rc = chain_next(f->chain, index, buf, len, chain, e);
    if (rc != 0) {
        goto out;
    }
    uint8_t applied[8];
    uint8_t time[8];
    fsm_put_be64(applied, index);
    fsm_put_be64(time, c.time_ms);
    meta_batch_put(b, META_CF_META, FSM_META_APPLIED, strlen(FSM_META_APPLIED), applied, 8);
    meta_batch_put(b, META_CF_META, FSM_META_LEADER_TIME, strlen(FSM_META_LEADER_TIME), time, 8);
    meta_batch_put(b, META_CF_META, FSM_META_CHAIN, strlen(FSM_META_CHAIN), chain, 32);
    if (c.clock_ms != f->clock_ms) {
        uint8_t clock[8];
        fsm_put_be64(clock, c.clock_ms);
        meta_batch_put(b, META_CF_META, FSM_META_CLOCK, strlen(FSM_META_CLOCK), clock, 8);
    }
    /* sync=false: the Raft log is the durable record (see fsm.h). */
    rc = meta_batch_write(b, false, e);
    if (rc != 0) {
        goto out;
    }
    f->applied = index;
    f->leader_time_ms = c.time_ms;
    f->clock_ms = c.clock_ms;
    memcpy(f->chain, chain, 32);
    f->stats.applied++;
    if (outcome != 0) {
        f->stats.refused++;
    }
    *code = outcome;
    if (outcome == 0 && cmd != NULL && cmd->cmd_case == HBC__COMMAND__CMD_GC_SWEEP &&
        f->gc_hook != NULL) {
        f->gc_hook(f->gc_hook_arg, index, cmd->gc_sweep);
    }
out:
    if (cmd != NULL) {
        hbc__command__free_unpacked(cmd, &alloc);
    }
    meta_batch_free(b);
    if (rc != 0) {
        err_wrap(e, "apply %llu", (unsigned long long)index);
    }
    return rc;
}
