/* The replicated state machine's libraft glue: open, close, the raft_fsm callbacks, encoding. */
#include "node/fsm_internal.h"

#include <string.h>

#include "common/alloc.h"
#include "common/log.h"

static void *pb_alloc(void *data, size_t n)
{
    void *p = hbc_malloc(n);
    if (p == NULL && data != NULL) {
        *(bool *)data = true;
    }
    return p;
}

static void pb_free(void *data, void *p)
{
    (void)data;
    hbc_free(p);
}

ProtobufCAllocator fsm_pb_allocator(bool *oom)
{
    *oom = false;
    return (ProtobufCAllocator){.alloc = pb_alloc, .free = pb_free, .allocator_data = oom};
}

ProtobufCAllocator fsm_pb_records = {.alloc = pb_alloc, .free = pb_free, .allocator_data = NULL};

int fsm_record_unpack(const ProtobufCMessageDescriptor *d, const void *buf, size_t len, void **out,
                      struct err *e)
{
    bool oom = false;
    ProtobufCAllocator a = fsm_pb_allocator(&oom);
    ProtobufCMessage *m = protobuf_c_message_unpack(d, &a, len, buf);
    *out = NULL;
    if (m == NULL && oom) {
        return err_set(e, HBC_ENOMEM, "%s", d->short_name);
    }
    if (m == NULL) {
        return err_set(e, HBC_ECORRUPT, "stored %s does not parse", d->short_name);
    }
    *out = m;
    return 0;
}

int fsm_record_pack(const ProtobufCMessage *m, uint8_t **out, size_t *len, struct err *e)
{
    size_t n = protobuf_c_message_get_packed_size(m);
    uint8_t *p = hbc_malloc(n > 0 ? n : 1);
    if (p == NULL) {
        return err_set(e, HBC_ENOMEM, "pack %s", m->descriptor->short_name);
    }
    protobuf_c_message_pack(m, p);
    *out = p;
    *len = n;
    return 0;
}

void fsm_record_free(void *record)
{
    if (record != NULL) {
        protobuf_c_message_free_unpacked(record, &fsm_pb_records);
    }
}

/* Read one big-endian 64-bit meta value; absent means 0. */
static int load_u64(struct fsm *f, const char *key, uint64_t *out, struct err *e)
{
    void *v = NULL;
    size_t n = 0;
    int rc = meta_store_get(f->store, NULL, META_CF_META, key, strlen(key), &v, &n, e);
    if (rc == HBC_ENOTFOUND) {
        *out = 0;
        return 0;
    }
    if (rc != 0) {
        return rc;
    }
    if (n != 8) {
        hbc_free(v);
        return err_set(e, HBC_ECORRUPT, "meta %s: %zu bytes, want 8", key, n);
    }
    *out = fsm_get_be64(v);
    hbc_free(v);
    return 0;
}

int fsm_load_meta(struct fsm *f, struct err *e)
{
    int rc = load_u64(f, FSM_META_APPLIED, &f->applied, e);
    if (rc == 0) {
        rc = load_u64(f, FSM_META_LEADER_TIME, &f->leader_time_ms, e);
    }
    if (rc == 0) {
        rc = load_u64(f, FSM_META_CLOCK, &f->clock_ms, e);
    }
    if (rc != 0) {
        return rc;
    }
    void *v = NULL;
    size_t n = 0;
    rc = meta_store_get(f->store, NULL, META_CF_META, FSM_META_CHAIN, strlen(FSM_META_CHAIN), &v,
                        &n, e);
    if (rc == HBC_ENOTFOUND) {
        memset(f->chain, 0, sizeof f->chain);
        return 0;
    }
    if (rc != 0) {
        return rc;
    }
    if (n != sizeof f->chain) {
        hbc_free(v);
        return err_set(e, HBC_ECORRUPT, "meta chain: %zu bytes, want %zu", n, sizeof f->chain);
    }
    memcpy(f->chain, v, sizeof f->chain);
    hbc_free(v);
    return 0;
}

/* Map a local failure to the RAFT_* code a libraft callback must return. */
static int raft_code(int rc)
{
    switch (rc) {
    case HBC_ENOMEM:
        return RAFT_NOMEM;
    case HBC_ECORRUPT:
    case HBC_ETRUNCATED:
    case HBC_EFORMAT:
    case HBC_EVERSION:
        return RAFT_CORRUPT;
    default:
        return RAFT_IOERR;
    }
}

/*
 * libraft calls apply for each committed command entry, in index order, with
 * raft->last_applied still at the previous entry (barriers and configuration
 * changes advance last_applied without calling us).
 */
static int fsm_raft_apply(struct raft_fsm *rf, const struct raft_buffer *buf, void **result)
{
    struct fsm *f = rf->data;
    *result = NULL;
    if (f->raft == NULL) {
        err_set(&f->last_err, HBC_EINVAL, "apply: fsm_set_raft() was not called");
        hbc_log(LOG_ERROR, "event=fsm_apply_failed error=\"%s\"", f->last_err.msg);
        return RAFT_INVALID;
    }
    uint64_t index = raft_last_applied(f->raft) + 1;
    int code = 0;
    int rc = fsm_apply_at(f, index, buf->base, buf->len, &code, &f->last_err);
    if (rc != 0) {
        hbc_log(LOG_ERROR, "event=fsm_apply_failed index=%llu error=\"%s\"",
                (unsigned long long)index, f->last_err.msg);
        return raft_code(rc);
    }
    *result = (void *)(intptr_t)code;
    return 0;
}

/* libraft frees the array and each base once it has stored them. */
static int fsm_raft_snapshot(struct raft_fsm *rf, struct raft_buffer *bufs[], unsigned *n_bufs)
{
    struct fsm *f = rf->data;
    void *data = NULL;
    size_t len = 0;
    int rc = fsm_snapshot_take(f, &data, &len, &f->last_err);
    if (rc != 0) {
        hbc_log(LOG_ERROR, "event=fsm_snapshot_failed error=\"%s\"", f->last_err.msg);
        return raft_code(rc);
    }
    struct raft_buffer *b = raft_malloc(sizeof *b);
    if (b == NULL) {
        raft_free(data);
        return RAFT_NOMEM;
    }
    b->base = data;
    b->len = len;
    *bufs = b;
    *n_bufs = 1;
    return 0;
}

/*
 * The base becomes ours only when restore succeeds: on a nonzero return
 * libraft 0.15 frees it itself (installSnapshotCb's discard path and
 * raft_start's snapshotDestroy), so freeing it here too would be a double free.
 */
static int fsm_raft_restore(struct raft_fsm *rf, struct raft_buffer *buf)
{
    struct fsm *f = rf->data;
    int rc = fsm_snapshot_restore(f, buf->base, buf->len, &f->last_err);
    if (rc != 0) {
        hbc_log(LOG_ERROR, "event=fsm_restore_failed error=\"%s\"", f->last_err.msg);
        return raft_code(rc);
    }
    hbc_log(LOG_INFO, "event=fsm_restored bytes=%zu applied_index=%llu", buf->len,
            (unsigned long long)fsm_applied_index(f));
    raft_free(buf->base);
    return 0;
}

int fsm_open(const char *dir, struct fsm **out, struct err *e)
{
    *out = NULL;
    struct fsm *f = hbc_calloc(1, sizeof *f);
    if (f == NULL) {
        return err_set(e, HBC_ENOMEM, "fsm");
    }
    int rc = meta_store_open(dir, &f->store, e);
    if (rc != 0) {
        goto fail;
    }
    rc = fsm_load_meta(f, e);
    if (rc != 0) {
        goto fail;
    }
    f->raft_fsm.version = 1;
    f->raft_fsm.data = f;
    f->raft_fsm.apply = fsm_raft_apply;
    f->raft_fsm.snapshot = fsm_raft_snapshot;
    f->raft_fsm.restore = fsm_raft_restore;
    *out = f;
    return 0;
fail:
    meta_store_close(f->store);
    hbc_free(f);
    err_wrap(e, "state machine");
    return rc;
}

void fsm_close(struct fsm *f)
{
    if (f == NULL) {
        return;
    }
    meta_store_close(f->store);
    hbc_free(f);
}

struct raft_fsm *fsm_raft_fsm(struct fsm *f)
{
    return &f->raft_fsm;
}

void fsm_set_raft(struct fsm *f, struct raft *r)
{
    f->raft = r;
}

int fsm_command_encode(const Hbc__Command *cmd, struct raft_buffer *out, struct err *e)
{
    out->base = NULL;
    out->len = 0;
    if (cmd->cmd_case == HBC__COMMAND__CMD__NOT_SET) {
        return err_set(e, HBC_EINVAL, "command: none set");
    }
    size_t n = hbc__command__get_packed_size(cmd);
    if (n > FSM_COMMAND_MAX) {
        return err_set(e, HBC_ETOOBIG, "command: %zu bytes, limit %d", n, FSM_COMMAND_MAX);
    }
    /*
     * Entry layout: a 4-byte big-endian length, the protobuf, zeros up to a
     * multiple of 8. libraft's libuv I/O pads entries to 8 bytes on the wire
     * and on disk, so a follower sees the padded length: padding here makes
     * every node see the same bytes, and the length finds the protobuf.
     */
    size_t total = (FSM_ENTRY_PREFIX + n + 7) & ~(size_t)7;
    if (total > FSM_COMMAND_MAX) {
        return err_set(e, HBC_ETOOBIG, "command: %zu bytes, limit %d", total, FSM_COMMAND_MAX);
    }
    uint8_t *p = raft_malloc(total);
    if (p == NULL) {
        return err_set(e, HBC_ENOMEM, "command");
    }
    memset(p, 0, total);
    p[0] = (uint8_t)(n >> 24);
    p[1] = (uint8_t)(n >> 16);
    p[2] = (uint8_t)(n >> 8);
    p[3] = (uint8_t)n;
    hbc__command__pack(cmd, p + FSM_ENTRY_PREFIX);
    out->base = p;
    out->len = total;
    return 0;
}

uint64_t fsm_applied_index(const struct fsm *f)
{
    return f->applied;
}

uint64_t fsm_leader_time_ms(const struct fsm *f)
{
    return f->leader_time_ms;
}

uint64_t fsm_compliance_clock_ms(const struct fsm *f)
{
    return f->clock_ms;
}

struct fsm_stats fsm_stats(const struct fsm *f)
{
    return f->stats;
}

const struct err *fsm_last_error(const struct fsm *f)
{
    return &f->last_err;
}
