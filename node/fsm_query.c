/* The replicated state machine's queries: nodes, vaults, snapshots, restore tests, locks, audit. */
#include "node/fsm_internal.h"

#include <string.h>

#include "common/alloc.h"

/* Which callback a scan feeds. */
enum record_kind {
    KIND_NODE,
    KIND_VAULT,
    KIND_SNAPSHOT,
    KIND_RESTORE_TEST,
    KIND_AUDIT,
    KIND_APPROVAL
};

struct visit {
    enum record_kind kind; /* record type, which selects the callback */
    union {
        fsm_node_fn node;         /* KIND_NODE */
        fsm_vault_fn vault;       /* KIND_VAULT */
        fsm_snapshot_fn snapshot; /* KIND_SNAPSHOT */
        fsm_restore_test_fn test; /* KIND_RESTORE_TEST */
        fsm_audit_fn audit;       /* KIND_AUDIT */
        fsm_approval_fn approval; /* KIND_APPROVAL */
    } fn;                         /* the caller's callback */
    void *arg;                    /* its argument */
    struct fsm *f;                /* for lookups through an index */
    const struct meta_view *view; /* the consistent view the scan reads */
    struct err *e;                /* where a local failure goes */
};

static const ProtobufCMessageDescriptor *descriptor_of(enum record_kind k)
{
    switch (k) {
    case KIND_NODE:
        return &hbc__node_info__descriptor;
    case KIND_VAULT:
        return &hbc__vault_info__descriptor;
    case KIND_SNAPSHOT:
        return &hbc__snapshot_info__descriptor;
    case KIND_AUDIT:
        return &hbc__audit_record__descriptor;
    case KIND_APPROVAL:
        return &hbc__approval_info__descriptor;
    default:
        return &hbc__restore_test_info__descriptor;
    }
}

/* Unpack one stored record and hand it to the caller's callback. */
static int deliver(struct visit *v, const void *val, size_t vlen)
{
    void *m = NULL;
    int rc = fsm_record_unpack(descriptor_of(v->kind), val, vlen, &m, v->e);
    if (rc != 0) {
        return rc;
    }
    switch (v->kind) {
    case KIND_NODE:
        rc = v->fn.node(m, v->arg);
        break;
    case KIND_VAULT:
        rc = v->fn.vault(m, v->arg);
        break;
    case KIND_SNAPSHOT:
        rc = v->fn.snapshot(m, v->arg);
        break;
    case KIND_RESTORE_TEST:
        rc = v->fn.test(m, v->arg);
        break;
    case KIND_AUDIT:
        rc = v->fn.audit(m, v->arg);
        break;
    case KIND_APPROVAL:
        rc = v->fn.approval(m, v->arg);
        break;
    }
    fsm_record_free(m);
    return rc;
}

static int record_visit(const void *key, size_t klen, const void *val, size_t vlen, void *arg)
{
    (void)key;
    (void)klen;
    return deliver(arg, val, vlen);
}

/* Scan with a view of our own so that every record comes from one state. */
static int scan_records(struct visit *v, enum meta_cf cf, const void *prefix, size_t plen,
                        meta_scan_fn fn)
{
    struct meta_view *view = NULL;
    int rc = meta_view_open(v->f->store, &view, v->e);
    if (rc != 0) {
        return rc;
    }
    v->view = view;
    rc = meta_store_scan(v->f->store, view, cf, prefix, plen, fn, v, v->e);
    meta_view_close(view);
    return rc;
}

static int get_record(struct fsm *f, const struct meta_view *view, enum meta_cf cf, const void *key,
                      size_t klen, enum record_kind kind, void **out, struct err *e)
{
    void *val = NULL;
    size_t n = 0;
    *out = NULL;
    int rc = meta_store_get(f->store, view, cf, key, klen, &val, &n, e);
    if (rc != 0) {
        return rc;
    }
    rc = fsm_record_unpack(descriptor_of(kind), val, n, out, e);
    hbc_free(val);
    return rc;
}

int fsm_list_nodes(struct fsm *f, fsm_node_fn fn, void *arg, struct err *e)
{
    struct visit v = {.kind = KIND_NODE, .fn.node = fn, .arg = arg, .f = f, .e = e};
    return scan_records(&v, META_CF_NODES, NULL, 0, record_visit);
}

int fsm_get_node(struct fsm *f, const char *node_id, Hbc__NodeInfo **out, struct err *e)
{
    return get_record(f, NULL, META_CF_NODES, node_id, strlen(node_id), KIND_NODE, (void **)out, e);
}

int fsm_list_vaults(struct fsm *f, fsm_vault_fn fn, void *arg, struct err *e)
{
    struct visit v = {.kind = KIND_VAULT, .fn.vault = fn, .arg = arg, .f = f, .e = e};
    uint8_t prefix = FSM_VAULT_BY_ID;
    return scan_records(&v, META_CF_VAULTS, &prefix, 1, record_visit);
}

int fsm_get_vault(struct fsm *f, const uint8_t vault_id[FSM_ID_LEN], Hbc__VaultInfo **out,
                  struct err *e)
{
    uint8_t key[1 + FSM_ID_LEN];
    key[0] = FSM_VAULT_BY_ID;
    memcpy(key + 1, vault_id, FSM_ID_LEN);
    return get_record(f, NULL, META_CF_VAULTS, key, sizeof key, KIND_VAULT, (void **)out, e);
}

int fsm_find_vault(struct fsm *f, const char *name, Hbc__VaultInfo **out, struct err *e)
{
    *out = NULL;
    size_t n = strlen(name);
    if (n == 0 || n > FSM_VAULT_NAME_MAX) {
        return err_set(e, HBC_ENOTFOUND, "vault \"%.64s\"", name);
    }
    uint8_t key[1 + FSM_VAULT_NAME_MAX];
    key[0] = FSM_VAULT_BY_NAME;
    memcpy(key + 1, name, n);
    struct meta_view *view = NULL;
    int rc = meta_view_open(f->store, &view, e);
    if (rc != 0) {
        return rc;
    }
    void *id = NULL;
    size_t id_len = 0;
    rc = meta_store_get(f->store, view, META_CF_VAULTS, key, 1 + n, &id, &id_len, e);
    if (rc == 0 && id_len != FSM_ID_LEN) {
        rc = err_set(e, HBC_ECORRUPT, "vault name index: %zu-byte id", id_len);
    }
    if (rc == 0) {
        uint8_t vkey[1 + FSM_ID_LEN];
        vkey[0] = FSM_VAULT_BY_ID;
        memcpy(vkey + 1, id, FSM_ID_LEN);
        rc = get_record(f, view, META_CF_VAULTS, vkey, sizeof vkey, KIND_VAULT, (void **)out, e);
    }
    hbc_free(id);
    meta_view_close(view);
    return rc;
}

/* 'v' + vault + index -> snapshot id: fetch the record it points at, from the same view. */
static int snapshot_index_visit(const void *key, size_t klen, const void *val, size_t vlen,
                                void *arg)
{
    (void)key;
    (void)klen;
    struct visit *v = arg;
    if (vlen != FSM_ID_LEN) {
        return err_set(v->e, HBC_ECORRUPT, "snapshot index: %zu-byte id", vlen);
    }
    uint8_t skey[1 + FSM_ID_LEN];
    skey[0] = FSM_SNAP_BY_ID;
    memcpy(skey + 1, val, FSM_ID_LEN);
    void *rec = NULL;
    size_t n = 0;
    int rc =
        meta_store_get(v->f->store, v->view, META_CF_SNAPSHOTS, skey, sizeof skey, &rec, &n, v->e);
    if (rc == HBC_ENOTFOUND) {
        rc = err_set(v->e, HBC_ECORRUPT, "snapshot index points at a missing snapshot");
    }
    if (rc == 0) {
        rc = deliver(v, rec, n);
    }
    hbc_free(rec);
    return rc;
}

int fsm_list_snapshots(struct fsm *f, const uint8_t vault_id[FSM_ID_LEN], fsm_snapshot_fn fn,
                       void *arg, struct err *e)
{
    Hbc__VaultInfo *vault = NULL;
    int rc = fsm_get_vault(f, vault_id, &vault, e);
    if (rc != 0) {
        return rc;
    }
    fsm_record_free(vault);
    struct visit v = {.kind = KIND_SNAPSHOT, .fn.snapshot = fn, .arg = arg, .f = f, .e = e};
    uint8_t prefix[1 + FSM_ID_LEN];
    prefix[0] = FSM_SNAP_BY_VAULT;
    memcpy(prefix + 1, vault_id, FSM_ID_LEN);
    return scan_records(&v, META_CF_SNAPSHOTS, prefix, sizeof prefix, snapshot_index_visit);
}

int fsm_get_snapshot(struct fsm *f, const uint8_t snapshot_id[FSM_ID_LEN], Hbc__SnapshotInfo **out,
                     struct err *e)
{
    uint8_t key[1 + FSM_ID_LEN];
    key[0] = FSM_SNAP_BY_ID;
    memcpy(key + 1, snapshot_id, FSM_ID_LEN);
    return get_record(f, NULL, META_CF_SNAPSHOTS, key, sizeof key, KIND_SNAPSHOT, (void **)out, e);
}

int fsm_list_restore_tests(struct fsm *f, const uint8_t *snapshot_id, fsm_restore_test_fn fn,
                           void *arg, struct err *e)
{
    struct visit v = {.kind = KIND_RESTORE_TEST, .fn.test = fn, .arg = arg, .f = f, .e = e};
    return scan_records(&v, META_CF_RESTORE_TESTS, snapshot_id,
                        snapshot_id != NULL ? FSM_ID_LEN : 0, record_visit);
}

/* Audit keys are be64 indexes: a scan from from_index visits them in order. */
struct audit_from {
    struct visit v;      /* the delivery */
    uint64_t from_index; /* first index wanted */
};

static int audit_visit(const void *key, size_t klen, const void *val, size_t vlen, void *arg)
{
    struct audit_from *a = arg;
    if (klen != 8) {
        return err_set(a->v.e, HBC_ECORRUPT, "audit key of %zu bytes", klen);
    }
    if (fsm_get_be64(key) < a->from_index) {
        return 0;
    }
    return deliver(&a->v, val, vlen);
}

int fsm_list_audit(struct fsm *f, uint64_t from_index, fsm_audit_fn fn, void *arg, struct err *e)
{
    struct audit_from a = {.v = {.kind = KIND_AUDIT, .fn.audit = fn, .arg = arg, .f = f, .e = e},
                           .from_index = from_index};
    return meta_store_scan(f->store, NULL, META_CF_AUDIT, NULL, 0, audit_visit, &a, e);
}

int fsm_get_audit(struct fsm *f, uint64_t index, Hbc__AuditRecord **out, struct err *e)
{
    uint8_t key[8];
    fsm_put_be64(key, index);
    return get_record(f, NULL, META_CF_AUDIT, key, sizeof key, KIND_AUDIT, (void **)out, e);
}

int fsm_list_approvals(struct fsm *f, fsm_approval_fn fn, void *arg, struct err *e)
{
    struct visit v = {.kind = KIND_APPROVAL, .fn.approval = fn, .arg = arg, .f = f, .e = e};
    return scan_records(&v, META_CF_APPROVALS, NULL, 0, record_visit);
}

int fsm_protected_until(struct fsm *f, const uint8_t *snapshot_ids, size_t n,
                        struct fsm_protection *out, struct err *e)
{
    memset(out, 0, sizeof *out);
    struct meta_view *view = NULL;
    int rc = meta_view_open(f->store, &view, e);
    if (rc != 0) {
        return rc;
    }
    for (size_t i = 0; i < n && rc == 0; i++) {
        uint8_t key[1 + FSM_ID_LEN];
        key[0] = FSM_SNAP_BY_ID;
        memcpy(key + 1, snapshot_ids + i * FSM_ID_LEN, FSM_ID_LEN);
        Hbc__SnapshotInfo *s = NULL;
        rc = get_record(f, view, META_CF_SNAPSHOTS, key, sizeof key, KIND_SNAPSHOT, (void **)&s, e);
        if (rc == HBC_ENOTFOUND) {
            rc = 0;
            continue;
        }
        if (rc != 0) {
            break;
        }
        out->present++;
        uint64_t until = fsm_retain_until(s);
        if (until > out->retain_until_ms) {
            out->retain_until_ms = until;
        }
        out->legal_hold = out->legal_hold || s->legal_hold;
        fsm_record_free(s);
    }
    meta_view_close(view);
    return rc;
}
