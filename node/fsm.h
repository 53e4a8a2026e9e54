/* The replicated state machine: Raft commands applied to RocksDB, snapshots, queries. */
#ifndef HBC_NODE_FSM_H
#define HBC_NODE_FSM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <raft.h>

#include "common/err.h"
#include "hbc.pb-c.h"

/*
 * Every node runs one struct fsm behind libraft (a `struct raft_fsm`, version
 * 1). Its state lives in a RocksDB database (node/meta_store.h) with column
 * families meta, nodes, vaults, snapshots, restore_tests, users, approvals and
 * audit. Retention locks, legal holds, roles and the compliance clock are
 * described in docs/retention.md and applied by node/fsm_locks.c.
 *
 * Applying. Each committed Raft entry carries one protobuf hbc.Command. Its
 * effect and the meta records (applied index, leader time, command chain) go
 * into ONE RocksDB write batch. A command that the state forbids (a duplicate,
 * a missing vault, a malformed field) still advances the applied index and is
 * answered with a refusal code; only a local failure (RocksDB error, out of
 * memory) makes apply fail, and then nothing was written and libraft retries
 * the same entry later. Every node reaches the same refusal for the same
 * entry, so refusals are part of the replicated state, and so is the time:
 * the command's leader_time_ms, never this node's clock.
 *
 * Durability. Batches are written with sync=false: the Raft log is the
 * durable record, and libraft replays it on start. A process crash loses
 * nothing (the RocksDB WAL is in the page cache); a power loss may lose the
 * last batches, which are then applied again from the log. To make replays
 * harmless, apply skips every entry whose index is at or below the applied
 * index stored in RocksDB. libraft's apply callback is not given the entry's
 * index: it calls apply with raft->last_applied equal to index - 1 (checked
 * by tests/unit/test_fsm.c), so the FSM keeps a pointer to its struct raft
 * (fsm_set_raft()) and reads raft_last_applied(). Restore writes synced.
 * On start libraft restores its last snapshot when it has one (the state is
 * rewritten to that snapshot, then the entries after it are applied again);
 * without one it replays its log from index 1 and apply skips what RocksDB
 * already holds. Either way the state ends where the log says.
 *
 * The RocksDB directory and the Raft data directory are one unit: wiping one
 * without the other makes this node skip or miss entries. Wipe both.
 *
 * Results. apply's `void *result` carries the code itself, cast through
 * intptr_t (fsm_result_code()), never heap memory: libraft discards a
 * follower's result. 0 means applied; HBC_EEXIST, HBC_ENOTFOUND, HBC_EINVAL,
 * HBC_EPROTO (not a Command), HBC_ETOOBIG (entry too long), HBC_EDENIED (the
 * proposer lacks the role), HBC_ELOCKED (a lock or hold protects it) and
 * HBC_ECLOCK (compliance clock unknown or the tick skewed) are refusals. Every
 * refusal leaves an AuditRecord (column family "audit") with its reason.
 *
 * Snapshots. A snapshot is the whole state serialised from one consistent
 * RocksDB view: a header, each column family as a stream of length-prefixed
 * key/value pairs, and a SHA-256 trailer (docs in fsm_snapshot.c). Restore
 * checks the trailer and every length, then replaces the whole state in one
 * synced batch. fsm_digest() is that same trailer computed without building
 * the buffer, so two nodes at the same applied index have equal digests
 * exactly when their states are byte-identical.
 *
 * Threads. apply, snapshot and restore run on the thread that drives libraft
 * (the node's loop). The queries may run on any thread (RocksDB reads are
 * thread-safe); fsm_applied_index() and fsm_leader_time_ms() read cached
 * values and belong to the loop thread.
 */

#define FSM_ID_LEN 16          /* vault and snapshot ids */
#define FSM_TREE_ID_LEN 32     /* root tree and reference list ids */
#define FSM_COMMAND_MAX 65536  /* longest Command entry accepted */
#define FSM_NAME_MAX 64        /* longest node id, address, site, region, media */
#define FSM_VAULT_NAME_MAX 128 /* longest vault name */
#define FSM_PROPOSER_MAX 256   /* longest proposer (certificate subject) */
#define FSM_MAX_COPIES 8       /* most copies in a vault policy */
#define FSM_DIGEST_LEN 32      /* SHA-256 */
/* Retention locks, legal holds and the compliance clock (docs/retention.md). */
#define FSM_DAY_MS 86400000ull          /* one day in ms */
#define FSM_RETENTION_DAYS_MAX 36500    /* longest vault retention accepted */
#define FSM_EXPIRY_MARGIN_MS FSM_DAY_MS /* forget needs clock >= retain_until + this */
#define FSM_MAX_SKEW_MS 60000ull        /* a tick may run ahead of elapsed time by this */
#define FSM_APPROVAL_TTL_MS FSM_DAY_MS  /* a request must be approved within this */
#define FSM_TICK_INTERVAL_MS 10000      /* how often the leader proposes a ClockTick */
#define FSM_SKEW_MIN_MS 1000ull         /* ClockTick.max_skew_ms: smallest accepted */
#define FSM_SKEW_MAX_MS 3600000ull      /* ClockTick.max_skew_ms: largest accepted */
#define FSM_CLOCK_VOTERS_MAX 64         /* ClockTick.voter_clock_ms: most entries */
#define FSM_PROPOSER_SELF "hbcd"        /* proposer of the leader's own commands */
#define FSM_POLICY_RULE_MAX 64          /* longest policy name or copy rule site */
#define FSM_POLICY_MEDIA_MAX 32         /* longest copy rule media */
/* A time-dependent command needs its leader time within max_skew + this of the clock. */
#define FSM_CLOCK_STALE_MS (3 * FSM_TICK_INTERVAL_MS)
/* Length prefix of a Command in a Raft entry (see fsm_command_encode). */
#define FSM_ENTRY_PREFIX 4

struct fsm;

/* Counters for tests and metrics (this node only, not replicated). */
struct fsm_stats {
    uint64_t applied;   /* entries applied (including refused ones) */
    uint64_t refused;   /* entries applied with a nonzero code */
    uint64_t skipped;   /* entries at or below the stored applied index */
    uint64_t snapshots; /* snapshots taken for libraft */
    uint64_t restores;  /* snapshots restored */
};

/*
 * Open the state in directory dir (created if missing; its parent must
 * exist) into *out. Returns 0, HBC_ENOMEM, HBC_ESTORE, or HBC_ECORRUPT when
 * the meta records do not parse.
 */
int fsm_open(const char *dir, struct fsm **out, struct err *e);

/* Close the database and free f. NULL is a no-op. Raft must be closed first. */
void fsm_close(struct fsm *f);

/*
 * The struct raft_fsm to hand to raft_init() (owned by f, valid until
 * fsm_close()). Call fsm_set_raft() with the same struct raft before
 * raft_start(): apply reads the entry's index from it.
 */
struct raft_fsm *fsm_raft_fsm(struct fsm *f);

/* Tell f which struct raft drives it (borrowed; must outlive f's use by raft). */
void fsm_set_raft(struct fsm *f, struct raft *r);

/* The refusal code that libraft's apply result carries (0 when applied). */
static inline int fsm_result_code(const void *result)
{
    return (int)(intptr_t)result;
}

/*
 * Pack cmd into a raft_malloc'ed buffer ready for raft_apply() (on success
 * raft_apply takes it; if raft_apply fails, raft_free(out->base)). Returns 0,
 * HBC_ETOOBIG above FSM_COMMAND_MAX, HBC_EINVAL when no command is set, or
 * HBC_ENOMEM.
 */
int fsm_command_encode(const Hbc__Command *cmd, struct raft_buffer *out, struct err *e);

/*
 * Apply one entry (len bytes at buf, borrowed) at Raft index `index` without
 * libraft: what the apply callback does. *code receives 0 or the refusal.
 * An index at or below the applied index is skipped (*code = 0). Returns 0,
 * or a local failure (HBC_ENOMEM, HBC_ESTORE, HBC_ECORRUPT for a stored record
 * that does not parse) after which nothing changed.
 */
int fsm_apply_at(struct fsm *f, uint64_t index, const void *buf, size_t len, int *code,
                 struct err *e);

/*
 * Serialise the whole state into *out (raft_malloc'ed; the caller owns it,
 * raft_free() it) and *len. Returns 0, HBC_ENOMEM or HBC_ESTORE.
 */
int fsm_snapshot_take(struct fsm *f, void **out, size_t *len, struct err *e);

/*
 * Replace the whole state by the snapshot at buf (len bytes, borrowed).
 * Nothing changes unless the snapshot is intact. Returns 0, HBC_ETRUNCATED,
 * HBC_EFORMAT, HBC_EVERSION, HBC_ECORRUPT (trailer mismatch), HBC_ENOMEM or
 * HBC_ESTORE.
 */
int fsm_snapshot_restore(struct fsm *f, const void *buf, size_t len, struct err *e);

/* SHA-256 of a canonical serialisation of the whole state (equal to a snapshot's trailer). */
int fsm_digest(struct fsm *f, uint8_t out[FSM_DIGEST_LEN], struct err *e);

/* Index of the last command entry applied (0 before any). Loop thread. */
uint64_t fsm_applied_index(const struct fsm *f);

/* Highest leader_time_ms applied so far: the cluster's notion of now. Loop thread. */
uint64_t fsm_leader_time_ms(const struct fsm *f);

/*
 * The committed compliance clock (ms since the epoch; 0 while no tick has been
 * accepted): the only time that expiry and approval deadlines are measured
 * on. It never goes back. Loop thread.
 */
uint64_t fsm_compliance_clock_ms(const struct fsm *f);

/* What protects a chunk (or a snapshot) from deletion, as of the applied state. */
struct fsm_protection {
    uint64_t retain_until_ms; /* latest retain-until among the snapshots found (0: none) */
    bool legal_hold;          /* one of them is under legal hold */
    unsigned present;         /* how many of the snapshots asked about still exist */
};

/*
 * The dedup trap: a chunk lives as long as the most protected snapshot that
 * references it, not as long as the one that first wrote it. Given the ids of
 * every snapshot whose reference list names a chunk (n ids of FSM_ID_LEN
 * bytes, borrowed), fill *out with the latest retain-until and whether any is
 * held; forgotten snapshots are skipped. A chunk with out->present == 0 is
 * referenced by no present snapshot and is a GC candidate (after the grace
 * period). Any thread. Returns 0, HBC_ECORRUPT, HBC_ENOMEM or HBC_ESTORE.
 */
int fsm_protected_until(struct fsm *f, const uint8_t *snapshot_ids, size_t n,
                        struct fsm_protection *out, struct err *e);

/*
 * Whether snapshot s may be forgotten at compliance clock clock_ms: 0 if so,
 * HBC_ELOCKED (held, or clock_ms < retain-until + FSM_EXPIRY_MARGIN_MS) or
 * HBC_ECLOCK (clock_ms is 0: unknown). Pure; GC re-checks with this on its
 * own applied state before deleting.
 */
int fsm_forget_allowed(const Hbc__SnapshotInfo *s, uint64_t clock_ms);

/* The roles (bit 1 << HBC__ROLE__*) a subject holds in the state machine, 0 if none. */
int fsm_get_roles(struct fsm *f, const char *subject, uint32_t *roles, struct err *e);

/* A copy of the counters. */
struct fsm_stats fsm_stats(const struct fsm *f);

/*
 * The last local failure inside a libraft callback (which can only return a
 * RAFT_* code), for logging. Loop thread.
 */
const struct err *fsm_last_error(const struct fsm *f);

/*
 * Queries. Records come unpacked; the visit callbacks borrow them until they
 * return (return nonzero to stop: the query returns that value). The get
 * functions return a record the caller frees with fsm_record_free(). All
 * return 0, HBC_ENOTFOUND (get only), HBC_ECORRUPT (a stored record does not
 * parse), HBC_ENOMEM or HBC_ESTORE.
 */
typedef int (*fsm_node_fn)(const Hbc__NodeInfo *node, void *arg);
typedef int (*fsm_vault_fn)(const Hbc__VaultInfo *vault, void *arg);
typedef int (*fsm_snapshot_fn)(const Hbc__SnapshotInfo *snap, void *arg);
typedef int (*fsm_restore_test_fn)(const Hbc__RestoreTestInfo *test, void *arg);
typedef int (*fsm_audit_fn)(const Hbc__AuditRecord *rec, void *arg);
typedef int (*fsm_approval_fn)(const Hbc__ApprovalInfo *req, void *arg);

/* Audit records in index order, from from_index on. */
int fsm_list_audit(struct fsm *f, uint64_t from_index, fsm_audit_fn fn, void *arg, struct err *e);

/* The audit record of entry index (HBC_ENOTFOUND when that entry left none). */
int fsm_get_audit(struct fsm *f, uint64_t index, Hbc__AuditRecord **out, struct err *e);

/* Every approval request (pending and done) in request order. */
int fsm_list_approvals(struct fsm *f, fsm_approval_fn fn, void *arg, struct err *e);

/* Every node, by node id. */
int fsm_list_nodes(struct fsm *f, fsm_node_fn fn, void *arg, struct err *e);

int fsm_get_node(struct fsm *f, const char *node_id, Hbc__NodeInfo **out, struct err *e);

/* Every vault, by vault id. */
int fsm_list_vaults(struct fsm *f, fsm_vault_fn fn, void *arg, struct err *e);

int fsm_get_vault(struct fsm *f, const uint8_t vault_id[FSM_ID_LEN], Hbc__VaultInfo **out,
                  struct err *e);

int fsm_find_vault(struct fsm *f, const char *name, Hbc__VaultInfo **out, struct err *e);

/* A vault's snapshots in commit order (HBC_ENOTFOUND if the vault does not exist). */
int fsm_list_snapshots(struct fsm *f, const uint8_t vault_id[FSM_ID_LEN], fsm_snapshot_fn fn,
                       void *arg, struct err *e);

int fsm_get_snapshot(struct fsm *f, const uint8_t snapshot_id[FSM_ID_LEN], Hbc__SnapshotInfo **out,
                     struct err *e);

/*
 * Restore tests of one snapshot (snapshot_id) or of all (NULL), by snapshot id
 * and then in record order.
 */
int fsm_list_restore_tests(struct fsm *f, const uint8_t *snapshot_id, fsm_restore_test_fn fn,
                           void *arg, struct err *e);

/* Free a record returned by a get function. NULL is a no-op. */
void fsm_record_free(void *record);

#endif /* HBC_NODE_FSM_H */
