/* What node/fsm*.c share: the state machine's struct and small helpers. Not for other modules. */
#ifndef HBC_NODE_FSM_INTERNAL_H
#define HBC_NODE_FSM_INTERNAL_H

#include <stdbool.h>
#include <stdint.h>

#include <protobuf-c/protobuf-c.h>

#include "node/fsm.h"
#include "node/meta_store.h"

/* Keys of the "meta" column family. */
#define FSM_META_APPLIED "applied_index"      /* 8 bytes big-endian: last command index */
#define FSM_META_LEADER_TIME "leader_time_ms" /* 8 bytes big-endian: highest leader time */
#define FSM_META_CHAIN "chain" /* 32 bytes: SHA-256 chain over every applied command */
#define FSM_META_CLOCK "compliance_clock_ms"    /* 8 bytes big-endian: the compliance clock */
#define FSM_META_CLOCK_SKEW "clock_max_skew_ms" /* 8 bytes: max_skew of the last accepted tick */

/* Key prefixes inside the column families that hold more than one kind of key. */
#define FSM_VAULT_BY_ID 'i'   /* vaults: 'i' + vault id -> VaultInfo */
#define FSM_VAULT_BY_NAME 'n' /* vaults: 'n' + name -> vault id */
#define FSM_SNAP_BY_ID 's'    /* snapshots: 's' + snapshot id -> SnapshotInfo */
#define FSM_SNAP_BY_VAULT 'v' /* snapshots: 'v' + vault id + be64 index -> snapshot id */

struct fsm {
    struct meta_store *store; /* the RocksDB database */
    struct raft *raft;        /* the instance that drives us (borrowed), for the entry index */
    struct raft_fsm raft_fsm; /* what libraft calls */
    uint64_t applied;         /* cache of meta applied_index */
    uint64_t leader_time_ms;  /* cache of meta leader_time_ms */
    uint64_t clock_ms;        /* cache of meta compliance_clock_ms (0: unknown) */
    uint8_t chain[32];        /* cache of meta chain */
    struct fsm_stats stats;   /* counters */
    struct err last_err;      /* last local failure inside a libraft callback */
};

/* Big-endian integers in keys and meta values. */
static inline void fsm_put_be64(uint8_t *p, uint64_t v)
{
    for (int i = 7; i >= 0; i--) {
        p[i] = (uint8_t)v;
        v >>= 8;
    }
}

static inline uint64_t fsm_get_be64(const uint8_t *p)
{
    uint64_t v = 0;
    for (int i = 0; i < 8; i++) {
        v = (v << 8) | p[i];
    }
    return v;
}

/*
 * Every handler follows one contract: it reads the current state, decides,
 * and sets *code to 0 (and adds its records to c->batch) or to a refusal
 * (and adds nothing). It returns nonzero only for a local failure (RocksDB,
 * memory, a stored record that does not parse), which must never become a
 * refusal: other nodes would decide differently.
 */
struct apply_ctx {
    struct fsm *f;                 /* the state machine */
    struct meta_batch *b;          /* the one batch this entry writes */
    uint64_t index;                /* the entry's Raft index */
    uint64_t time_ms;              /* the command's time: leader time, never earlier than before */
    const char *proposer;          /* who asked ("" if unknown) */
    uint64_t clock_ms;             /* compliance clock after this entry (0: unknown) */
    bool audit;                    /* record this command in "audit" even when applied */
    const char *reason;            /* why it was refused (static text), NULL for the code's text */
    const uint8_t *audit_snapshot; /* the snapshot it concerned (16 bytes), or NULL */
    uint8_t audit_id[FSM_ID_LEN];  /* storage for audit_snapshot when it must be copied */
    uint64_t cmd_time_ms;          /* this command's own leader_time_ms (fsm_locks.c) */
    char reason_buf[224];          /* storage for a reason made up at apply time */
};

/* Text fields: 1..max bytes, no control characters (UTF-8 passes). */
bool fsm_text_ok(const char *s, size_t max);

/* Store m under key in cf (packed) through c's batch. */
int fsm_put_record(struct apply_ctx *c, enum meta_cf cf, const void *key, size_t klen,
                   const ProtobufCMessage *m, struct err *e);

/* Load and unpack the record under key: 0, HBC_ENOTFOUND, or a local failure. */
int fsm_get_record(struct apply_ctx *c, enum meta_cf cf, const void *key, size_t klen,
                   const ProtobufCMessageDescriptor *d, void **out, struct err *e);

/* Whether key exists in cf: 0 (no), 1 (yes) or a local failure. */
int fsm_key_exists(struct apply_ctx *c, enum meta_cf cf, const void *key, size_t klen,
                   struct err *e);

/*
 * The commands of node/fsm_locks.c (roles, compliance clock, retention locks,
 * legal holds, approvals): apply cmd if it is one of them. Returns 1 when
 * cmd is not one of them (nothing done), else the handler's result.
 */
int fsm_apply_locks(struct apply_ctx *c, const Hbc__Command *cmd, int *code, struct err *e);

/* A snapshot's retain-until, with the default for records older than locks. */
uint64_t fsm_retain_until(const Hbc__SnapshotInfo *s);

/* A protobuf-c allocator over hbc_malloc; *oom is set when an allocation fails. */
ProtobufCAllocator fsm_pb_allocator(bool *oom);

/* The allocator for records handed to callers (fsm_record_free() frees with it). */
extern ProtobufCAllocator fsm_pb_records;

/*
 * Unpack a stored record of descriptor d into *out (free with fsm_record_free()).
 * Returns 0, HBC_ENOMEM, or HBC_ECORRUPT when the bytes do not parse.
 */
int fsm_record_unpack(const ProtobufCMessageDescriptor *d, const void *buf, size_t len, void **out,
                      struct err *e);

/* Pack m into *out (hbc_malloc'ed) and *len. Returns 0 or HBC_ENOMEM. */
int fsm_record_pack(const ProtobufCMessage *m, uint8_t **out, size_t *len, struct err *e);

/* Reload the cached meta values (applied index, leader time, chain) from the store. */
int fsm_load_meta(struct fsm *f, struct err *e);

#endif /* HBC_NODE_FSM_INTERNAL_H */
