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
