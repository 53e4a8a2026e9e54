/* The state machine's authority over deletion: roles, compliance clock, locks, holds, approvals. */
#include "node/fsm_internal.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/alloc.h"
#include "common/log.h"

/*
 * The rules (docs/retention.md has the whole story):
 * - Roles come from column family "users" (RoleAssign, admin only). A subject
 *   carrying OU=admin is an admin while no subject holds the admin role there
 *   (bootstrap); afterwards only the table counts.
 * - The compliance clock moves only through ClockTick, proposed by the leader
 *   itself, and only forward. A tick carrying the voters' clocks
 *   (node/clock_sync.c) needs reports from a majority of voters and the
 *   leader's clock within max_skew of their median; a tick that no second
 *   clock confirms moves the clock to at most anchor + elapsed + max_skew
 *   (the anchor: the committed clock when the leader started counting).
 *   A refused tick leaves the clock where it is and raises an alert.
 * - Time-dependent commands (forget, hold release and bypass requests,
 *   approvals) need a known clock and their own leader time within max_skew
 *   + FSM_CLOCK_STALE_MS of it; otherwise HBC_ECLOCK: fail closed.
 * - Forget needs: no legal hold and clock >= retain-until + margin. A
 *   governance lock may be bypassed by a request of one security officer and
 *   the approval of another within FSM_APPROVAL_TTL_MS on the clock; the
 *   approval performs the action. Lifting a legal hold works the same way.
 * Every command here is audited, refused or not (c->audit).
 */

#define ROLE_BIT(r) (1u << (unsigned)(r))

static void refuse(struct apply_ctx *c, int *code, int rc, const char *reason)
{
    *code = rc;
    c->reason = reason;
}

/* Whether subject carries the component OU=<ou> (RFC 2253 text: ',' and '+' separate, '\' escapes).
 */
static bool subject_has_ou(const char *subject, const char *ou)
{
    size_t want = strlen(ou);
    const char *p = subject;
    while (*p != '\0') {
        const char *start = p;
        while (*p != '\0' && *p != ',' && *p != '+') {
            if (*p == '\\' && p[1] != '\0') {
                p++;
            }
            p++;
        }
        size_t n = (size_t)(p - start);
        if (n == 3 + want && memcmp(start, "OU=", 3) == 0 && memcmp(start + 3, ou, want) == 0) {
            return true;
        }
        if (*p != '\0') {
            p++;
        }
    }
    return false;
}

static int admin_visit(const void *key, size_t klen, const void *val, size_t vlen, void *arg)
{
    (void)key;
    (void)klen;
    Hbc__RoleInfo *r = NULL;
    int rc = fsm_record_unpack(&hbc__role_info__descriptor, val, vlen, (void **)&r, arg);
    if (rc != 0) {
        return rc;
    }
    bool admin = (r->roles & ROLE_BIT(HBC__ROLE__ROLE_ADMIN)) != 0;
    fsm_record_free(r);
    return admin ? 1 : 0;
}

/* The roles of subject as of view/state: the table, plus the OU=admin bootstrap rule. */
static int roles_lookup(struct fsm *f, const char *subject, uint32_t *roles, struct err *e)
{
    *roles = 0;
    size_t n = strlen(subject);
    if (n > 0 && n <= FSM_PROPOSER_MAX) {
        void *v = NULL;
        size_t vlen = 0;
        int rc = meta_store_get(f->store, NULL, META_CF_USERS, subject, n, &v, &vlen, e);
        if (rc == 0) {
            Hbc__RoleInfo *r = NULL;
            rc = fsm_record_unpack(&hbc__role_info__descriptor, v, vlen, (void **)&r, e);
            if (rc == 0) {
                *roles = r->roles;
                fsm_record_free(r);
            }
        }
        hbc_free(v);
        if (rc != 0 && rc != HBC_ENOTFOUND) {
            return rc;
        }
    }
    if (subject_has_ou(subject, "admin")) {
        int rc = meta_store_scan(f->store, NULL, META_CF_USERS, NULL, 0, admin_visit, e, e);
        if (rc < 0) {
            return rc;
        }
        if (rc == 0) {
            *roles |= ROLE_BIT(HBC__ROLE__ROLE_ADMIN);
        }
    }
    return 0;
}

int fsm_get_roles(struct fsm *f, const char *subject, uint32_t *roles, struct err *e)
{
    return roles_lookup(f, subject, roles, e);
}

/* Whether the proposer holds one of the roles in mask: 0 (no), 1 (yes) or a local failure. */
static int proposer_has(struct apply_ctx *c, uint32_t mask, struct err *e)
{
    uint32_t roles = 0;
    int rc = roles_lookup(c->f, c->proposer, &roles, e);
    if (rc != 0) {
        return rc;
    }
    return (roles & mask) != 0 ? 1 : 0;
}

uint64_t fsm_retain_until(const Hbc__SnapshotInfo *s)
{
    if (s->has_retain_until_ms) {
        return s->retain_until_ms;
    }
    return s->committed_ms + 2192 * FSM_DAY_MS;
}

int fsm_forget_allowed(const Hbc__SnapshotInfo *s, uint64_t clock_ms)
{
    if (s->legal_hold) {
        return HBC_ELOCKED;
    }
    if (clock_ms == 0) {
        return HBC_ECLOCK;
    }
    uint64_t until = fsm_retain_until(s);
    uint64_t free_at =
        until > UINT64_MAX - FSM_EXPIRY_MARGIN_MS ? UINT64_MAX : until + FSM_EXPIRY_MARGIN_MS;
    return clock_ms >= free_at ? 0 : HBC_ELOCKED;
}

/* Load the snapshot named by id (16 bytes checked by the caller): 0, HBC_ENOTFOUND or a failure. */
static int load_snapshot(struct apply_ctx *c, const uint8_t *id, Hbc__SnapshotInfo **out,
                         struct err *e)
{
    uint8_t key[1 + FSM_ID_LEN];
    key[0] = FSM_SNAP_BY_ID;
    memcpy(key + 1, id, FSM_ID_LEN);
    return fsm_get_record(c, META_CF_SNAPSHOTS, key, sizeof key, &hbc__snapshot_info__descriptor,
                          (void **)out, e);
}

static int store_snapshot(struct apply_ctx *c, const Hbc__SnapshotInfo *s, struct err *e)
{
    uint8_t key[1 + FSM_ID_LEN];
    key[0] = FSM_SNAP_BY_ID;
    memcpy(key + 1, s->snapshot_id.data, FSM_ID_LEN);
    return fsm_put_record(c, META_CF_SNAPSHOTS, key, sizeof key, &s->base, e);
}

/* Remove a snapshot and its place in its vault's list. */
static void delete_snapshot(struct apply_ctx *c, const Hbc__SnapshotInfo *s)
{
    uint8_t key[1 + FSM_ID_LEN];
    key[0] = FSM_SNAP_BY_ID;
    memcpy(key + 1, s->snapshot_id.data, FSM_ID_LEN);
    meta_batch_delete(c->b, META_CF_SNAPSHOTS, key, sizeof key);
    uint8_t by_vault[1 + FSM_ID_LEN + 8];
    by_vault[0] = FSM_SNAP_BY_VAULT;
    memcpy(by_vault + 1, s->vault_id.data, FSM_ID_LEN);
    fsm_put_be64(by_vault + 1 + FSM_ID_LEN, s->commit_index);
    meta_batch_delete(c->b, META_CF_SNAPSHOTS, by_vault, sizeof by_vault);
    hbc_log(LOG_INFO, "event=snapshot_forgotten index=%llu by=\"%s\"", (unsigned long long)c->index,
            c->proposer);
}

/*
 * The checks every snapshot command starts with: a 16-byte id, the role,
 * the snapshot. *snap is set (caller frees) only when *code stays 0.
 */
static int snapshot_command(struct apply_ctx *c, const ProtobufCBinaryData *id, uint32_t roles,
                            const char *role_reason, Hbc__SnapshotInfo **snap, int *code,
                            struct err *e)
{
    *snap = NULL;
    if (id->len != FSM_ID_LEN) {
        refuse(c, code, HBC_EINVAL, "snapshot id is not 16 bytes");
        return 0;
    }
    c->audit_snapshot = id->data;
    int rc = proposer_has(c, roles, e);
    if (rc < 0) {
        return rc;
    }
    if (rc == 0) {
        refuse(c, code, HBC_EDENIED, role_reason);
        return 0;
    }
    rc = load_snapshot(c, id->data, snap, e);
    if (rc == HBC_ENOTFOUND) {
        refuse(c, code, HBC_ENOTFOUND, "no such snapshot");
        return 0;
    }
    return rc;
}

/* ---- roles ---- */

static int apply_role_assign(struct apply_ctx *c, const Hbc__RoleAssign *r, int *code,
                             struct err *e)
{
    if (!fsm_text_ok(r->subject, FSM_PROPOSER_MAX) || r->role < HBC__ROLE__ROLE_ADMIN ||
        r->role > HBC__ROLE__ROLE_SECURITY_OFFICER || strcmp(r->subject, FSM_PROPOSER_SELF) == 0) {
        refuse(c, code, HBC_EINVAL, "bad subject or role");
        return 0;
    }
    int rc = proposer_has(c, ROLE_BIT(HBC__ROLE__ROLE_ADMIN), e);
    if (rc < 0) {
        return rc;
    }
    if (rc == 0) {
        refuse(c, code, HBC_EDENIED, "only an admin may assign roles");
        return 0;
    }
    size_t klen = strlen(r->subject);
    Hbc__RoleInfo *old = NULL;
    rc = fsm_get_record(c, META_CF_USERS, r->subject, klen, &hbc__role_info__descriptor,
                        (void **)&old, e);
    if (rc != 0 && rc != HBC_ENOTFOUND) {
        return rc;
    }
    uint32_t roles = old != NULL ? old->roles : 0;
    fsm_record_free(old);
    roles = r->revoke ? roles & ~ROLE_BIT(r->role) : roles | ROLE_BIT(r->role);
    uint32_t both = ROLE_BIT(HBC__ROLE__ROLE_ADMIN) | ROLE_BIT(HBC__ROLE__ROLE_SECURITY_OFFICER);
    if ((roles & both) == both) {
        refuse(c, code, HBC_EDENIED,
               "separation of duties: a subject cannot be both admin and security officer");
        return 0;
    }
    if (roles == 0) {
        meta_batch_delete(c->b, META_CF_USERS, r->subject, klen);
        return 0;
    }
    Hbc__RoleInfo info = HBC__ROLE_INFO__INIT;
    info.subject = r->subject;
    info.roles = roles;
    info.updated_ms = c->time_ms;
    info.updated_by = (char *)c->proposer;
    return fsm_put_record(c, META_CF_USERS, r->subject, klen, &info.base, e);
}

/* ---- the compliance clock ---- */

static uint64_t sat_add(uint64_t a, uint64_t b)
{
    return a > UINT64_MAX - b ? UINT64_MAX : a + b;
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y ? 1 : 0;
}

/* Refuse a tick for its clock: ECLOCK, the reason (formatted) audited, an alert on every node. */
static void refuse_clock(struct apply_ctx *c, int *code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void refuse_clock(struct apply_ctx *c, int *code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(c->reason_buf, sizeof c->reason_buf, fmt, ap);
    va_end(ap);
    refuse(c, code, HBC_ECLOCK, c->reason_buf);
    hbc_log(LOG_ERROR, "event=alert kind=clock_skew index=%llu clock_ms=%llu reason=\"%s\"",
            (unsigned long long)c->index, (unsigned long long)c->f->clock_ms, c->reason_buf);
}

static int64_t diff_s(uint64_t a, uint64_t b)
{
    return a >= b ? (int64_t)((a - b) / 1000) : -(int64_t)((b - a) / 1000);
}

/*
 * The voter cross-check of a tick that carries one (t->has_voters): more
 * than half the voters reported, and the leader's wall clock is within
 * max_skew of the median of the reports. 0 when it passes (or the tick
 * carries none), else the refusal is set.
 */
static int check_voters(struct apply_ctx *c, const Hbc__ClockTick *t, uint64_t skew, int *code)
{
    if (!t->has_voters) {
        return 0;
    }
    size_t n = t->n_voter_clock_ms;
    if (t->voters == 0 || t->voters > FSM_CLOCK_VOTERS_MAX || n > t->voters) {
        refuse(c, code, HBC_EINVAL, "tick: voter count out of range");
        return 1;
    }
    if (2 * n <= t->voters) {
        refuse_clock(c, code,
                     "only %zu of %u voters reported their clocks: no majority to check the "
                     "leader's clock against",
                     n, t->voters);
        return 1;
    }
    uint64_t v[FSM_CLOCK_VOTERS_MAX];
    memcpy(v, t->voter_clock_ms, n * sizeof v[0]);
    qsort(v, n, sizeof v[0], cmp_u64);
    /* The lower median: with an even count, the smaller of the two middle values. */
    uint64_t median = v[(n - 1) / 2];
    uint64_t off = t->wall_ms > median ? t->wall_ms - median : median - t->wall_ms;
    if (off > skew) {
        refuse_clock(c, code,
                     "clock skew: leader clock %+lld s from the median of %zu voter clocks "
                     "(max_skew %llu s)",
                     (long long)diff_s(t->wall_ms, median), n, (unsigned long long)(skew / 1000));
        return 1;
    }
    return 0;
}

static int apply_clock_tick(struct apply_ctx *c, const Hbc__ClockTick *t, int *code)
{
    if (strcmp(c->proposer, FSM_PROPOSER_SELF) != 0) {
        refuse(c, code, HBC_EDENIED, "only the leader itself proposes clock ticks");
        return 0;
    }
    if (t->wall_ms == 0) {
        refuse(c, code, HBC_EINVAL, "tick without a time");
        return 0;
    }
    uint64_t skew = t->has_max_skew_ms ? t->max_skew_ms : FSM_MAX_SKEW_MS;
    if (skew < FSM_SKEW_MIN_MS || skew > FSM_SKEW_MAX_MS) {
        refuse(c, code, HBC_EINVAL, "tick: max_skew out of range");
        return 0;
    }
    if (check_voters(c, t, skew, code) != 0) {
        return 0;
    }
    /* Confirmed by a majority of at least two independent clocks. */
    bool confirmed = t->has_voters && t->n_voter_clock_ms >= 2;
    uint8_t sk[8];
    fsm_put_be64(sk, skew);
    uint64_t clock = c->f->clock_ms;
    if (clock == 0) {
        /* The first tick sets the clock: nothing to check it against but the voters. */
        c->clock_ms = t->wall_ms;
        c->audit = true;
        meta_batch_put(c->b, META_CF_META, FSM_META_CLOCK_SKEW, strlen(FSM_META_CLOCK_SKEW), sk, 8);
        hbc_log(LOG_INFO, "event=compliance_clock_started clock_ms=%llu voters=%zu",
                (unsigned long long)t->wall_ms, t->n_voter_clock_ms);
        return 0;
    }
    if (t->anchor_clock_ms == 0 || t->anchor_clock_ms > clock) {
        refuse_clock(c, code, "tick anchored on a clock value never committed");
        return 0;
    }
    /*
     * Without independent clocks to confirm it, the bound counts from the
     * leader's anchor, not from the last tick: were it per tick, a clock
     * running fast would gain max_skew on every tick. With a majority of
     * voters confirming, their median is the authority (a cluster that was
     * down for a while catches up).
     */
    uint64_t bound = sat_add(t->anchor_clock_ms, sat_add(t->elapsed_ms, skew));
    if (!confirmed && t->wall_ms > clock && t->wall_ms > bound) {
        refuse_clock(c, code,
                     "clock skew: tick %+lld s from the compliance clock runs ahead of anchor + "
                     "elapsed time + max_skew (%llu s)",
                     (long long)diff_s(t->wall_ms, clock), (unsigned long long)(skew / 1000));
        return 0;
    }
    if (t->wall_ms < clock && clock - t->wall_ms > skew) {
        refuse_clock(c, code,
                     "clock skew: leader clock %lld s behind the compliance clock (max_skew %llu "
                     "s)",
                     (long long)((clock - t->wall_ms) / 1000), (unsigned long long)(skew / 1000));
        return 0;
    }
    if (t->wall_ms > clock) {
        c->clock_ms = t->wall_ms;
    }
    meta_batch_put(c->b, META_CF_META, FSM_META_CLOCK_SKEW, strlen(FSM_META_CLOCK_SKEW), sk, 8);
    return 0;
}

/*
 * Whether a time-dependent command may use the clock: it is known, and the
 * command's own leader time is within max_skew + FSM_CLOCK_STALE_MS of it
 * (a leader whose clock is skewed, or a clock that stopped moving because
 * ticks are refused, fails closed). 0, 1 (refused: *code set) or a local failure.
 */
static int clock_check(struct apply_ctx *c, int *code, struct err *e)
{
    if (c->clock_ms == 0) {
        refuse(c, code, HBC_ECLOCK, "compliance clock unknown (no tick accepted yet): fail closed");
        return 1;
    }
    uint64_t skew = FSM_MAX_SKEW_MS;
    void *v = NULL;
    size_t n = 0;
    int rc = meta_store_get(c->f->store, NULL, META_CF_META, FSM_META_CLOCK_SKEW,
                            strlen(FSM_META_CLOCK_SKEW), &v, &n, e);
    if (rc == 0 && n == 8) {
        skew = fsm_get_be64(v);
    }
    hbc_free(v);
    if (rc != 0 && rc != HBC_ENOTFOUND) {
        return rc;
    }
    uint64_t t = c->cmd_time_ms;
    uint64_t off = t > c->clock_ms ? t - c->clock_ms : c->clock_ms - t;
    if (off > skew + FSM_CLOCK_STALE_MS) {
        snprintf(c->reason_buf, sizeof c->reason_buf,
                 "clock skew: the leader's clock is %+lld s from the compliance clock (max_skew "
                 "%llu s): the leader's clock is wrong or the clock stopped; fail closed",
                 (long long)diff_s(t, c->clock_ms), (unsigned long long)(skew / 1000));
        refuse(c, code, HBC_ECLOCK, c->reason_buf);
        return 1;
    }
    return 0;
}

/* ---- locks and holds ---- */

static int apply_lock_extend(struct apply_ctx *c, const Hbc__LockExtend *l, int *code,
                             struct err *e)
{
    Hbc__SnapshotInfo *s = NULL;
    int rc = snapshot_command(c, &l->snapshot_id,
                              ROLE_BIT(HBC__ROLE__ROLE_ADMIN) |
                                  ROLE_BIT(HBC__ROLE__ROLE_SECURITY_OFFICER),
                              "extending a lock needs an admin or a security officer", &s, code, e);
    if (rc != 0 || *code != 0) {
        return rc;
    }
    uint64_t until = fsm_retain_until(s);
    if (l->retain_until_ms < until) {
        refuse(c, code, HBC_ELOCKED, "a retention lock can only be extended, never shortened");
    } else if (l->retain_until_ms == until) {
        refuse(c, code, HBC_EEXIST, "already retained until then");
    } else {
        s->has_retain_until_ms = true;
        s->retain_until_ms = l->retain_until_ms;
        rc = store_snapshot(c, s, e);
    }
    fsm_record_free(s);
    return rc;
}

static int apply_snapshot_forget(struct apply_ctx *c, const Hbc__SnapshotForget *fg, int *code,
                                 struct err *e)
{
    Hbc__SnapshotInfo *s = NULL;
    int rc = snapshot_command(c, &fg->snapshot_id,
                              ROLE_BIT(HBC__ROLE__ROLE_ADMIN) | ROLE_BIT(HBC__ROLE__ROLE_BACKUP),
                              "forgetting a snapshot needs an admin or backup role", &s, code, e);
    if (rc != 0 || *code != 0) {
        return rc;
    }
    if (!s->legal_hold) {
        rc = clock_check(c, code, e);
        if (rc != 0) {
            fsm_record_free(s);
            return rc < 0 ? rc : 0;
        }
    }
    switch (fsm_forget_allowed(s, c->clock_ms)) {
    case 0:
        delete_snapshot(c, s);
        break;
    case HBC_ECLOCK:
        refuse(c, code, HBC_ECLOCK, "compliance clock unknown (no tick accepted yet): fail closed");
        break;
    default:
        refuse(c, code, HBC_ELOCKED,
               s->legal_hold ? "under legal hold"
                             : "retained: compliance clock before retain-until plus margin");
        break;
    }
    fsm_record_free(s);
    return rc;
}

static int apply_hold_set(struct apply_ctx *c, const Hbc__LegalHoldSet *h, int *code, struct err *e)
{
    if (h->case_ref != NULL && !fsm_text_ok(h->case_ref, 128)) {
        refuse(c, code, HBC_EINVAL, "case reference: 1..128 printable bytes");
        return 0;
    }
    Hbc__SnapshotInfo *s = NULL;
    int rc = snapshot_command(c, &h->snapshot_id, ROLE_BIT(HBC__ROLE__ROLE_SECURITY_OFFICER),
                              "a legal hold needs a security officer", &s, code, e);
    if (rc != 0 || *code != 0) {
        return rc;
    }
    if (s->legal_hold) {
        refuse(c, code, HBC_EEXIST, "already under legal hold");
    } else {
        s->has_legal_hold = true;
        s->legal_hold = true;
        s->hold_by = (char *)c->proposer;
        s->has_hold_ms = true;
        s->hold_ms = c->clock_ms;
        s->case_ref = h->case_ref;
        rc = store_snapshot(c, s, e);
        /* Do not let fsm_record_free() free strings that belong to the command. */
        s->hold_by = NULL;
        s->case_ref = NULL;
    }
    fsm_record_free(s);
    return rc;
}

/* Store a new pending request keyed by this entry's index. */
static int add_request(struct apply_ctx *c, Hbc__ApprovalKind kind, const Hbc__SnapshotInfo *s,
                       uint64_t retain_until, int *code, struct err *e)
{
    int rc = clock_check(c, code, e);
    if (rc != 0) {
        return rc < 0 ? rc : 0;
    }
    Hbc__ApprovalInfo a = HBC__APPROVAL_INFO__INIT;
    a.request_index = c->index;
    a.kind = kind;
    a.snapshot_id = s->snapshot_id;
    if (kind == HBC__APPROVAL_KIND__APPROVAL_BYPASS_SHORTEN) {
        a.has_retain_until_ms = true;
        a.retain_until_ms = retain_until;
    }
    a.requested_by = (char *)c->proposer;
    a.requested_clock_ms = c->clock_ms;
    a.expires_clock_ms = sat_add(c->clock_ms, FSM_APPROVAL_TTL_MS);
    a.state = HBC__APPROVAL_STATE__APPROVAL_PENDING;
    uint8_t key[8];
    fsm_put_be64(key, c->index);
    return fsm_put_record(c, META_CF_APPROVALS, key, sizeof key, &a.base, e);
}

static int apply_hold_release(struct apply_ctx *c, const Hbc__LegalHoldReleaseRequest *h, int *code,
                              struct err *e)
{
    Hbc__SnapshotInfo *s = NULL;
    int rc = snapshot_command(c, &h->snapshot_id, ROLE_BIT(HBC__ROLE__ROLE_SECURITY_OFFICER),
                              "releasing a legal hold needs a security officer", &s, code, e);
    if (rc != 0 || *code != 0) {
        return rc;
    }
    if (!s->legal_hold) {
        refuse(c, code, HBC_EINVAL, "no legal hold to release");
    } else {
        rc = add_request(c, HBC__APPROVAL_KIND__APPROVAL_HOLD_RELEASE, s, 0, code, e);
    }
    fsm_record_free(s);
    return rc;
}

static int apply_bypass(struct apply_ctx *c, const Hbc__GovernanceBypassRequest *g, int *code,
                        struct err *e)
{
    Hbc__SnapshotInfo *s = NULL;
    int rc = snapshot_command(c, &g->snapshot_id, ROLE_BIT(HBC__ROLE__ROLE_SECURITY_OFFICER),
                              "a governance bypass needs a security officer", &s, code, e);
    if (rc != 0 || *code != 0) {
        return rc;
    }
    Hbc__ApprovalKind kind = g->action == HBC__BYPASS_ACTION__BYPASS_SHORTEN
                                 ? HBC__APPROVAL_KIND__APPROVAL_BYPASS_SHORTEN
                                 : HBC__APPROVAL_KIND__APPROVAL_BYPASS_FORGET;
    if (s->lock_mode != HBC__LOCK_MODE__LOCK_GOVERNANCE) {
        refuse(c, code, HBC_ELOCKED, "compliance lock: no role may bypass it");
    } else if (s->legal_hold) {
        refuse(c, code, HBC_ELOCKED, "under legal hold");
    } else if (g->action != HBC__BYPASS_ACTION__BYPASS_FORGET &&
               g->action != HBC__BYPASS_ACTION__BYPASS_SHORTEN) {
        refuse(c, code, HBC_EINVAL, "unknown bypass action");
    } else if (kind == HBC__APPROVAL_KIND__APPROVAL_BYPASS_SHORTEN &&
               (!g->has_retain_until_ms || g->retain_until_ms >= fsm_retain_until(s))) {
        refuse(c, code, HBC_EINVAL, "shortening needs an earlier retain-until");
    } else {
        rc = add_request(c, kind, s, g->retain_until_ms, code, e);
    }
    fsm_record_free(s);
    return rc;
}

/* Perform an approved request on its snapshot s. */
static int perform(struct apply_ctx *c, const Hbc__ApprovalInfo *a, Hbc__SnapshotInfo *s, int *code,
                   struct err *e)
{
    switch (a->kind) {
    case HBC__APPROVAL_KIND__APPROVAL_HOLD_RELEASE:
        if (!s->legal_hold) {
            refuse(c, code, HBC_EINVAL, "no legal hold to release");
            return 0;
        }
        s->legal_hold = false;
        s->has_hold_ms = false;
        hbc_free(s->hold_by);
        s->hold_by = NULL;
        hbc_free(s->case_ref);
        s->case_ref = NULL;
        return store_snapshot(c, s, e);
    case HBC__APPROVAL_KIND__APPROVAL_BYPASS_FORGET:
    case HBC__APPROVAL_KIND__APPROVAL_BYPASS_SHORTEN:
        /* The state may have changed since the request: check again. */
        if (s->lock_mode != HBC__LOCK_MODE__LOCK_GOVERNANCE || s->legal_hold) {
            refuse(c, code, HBC_ELOCKED, "under legal hold or not a governance lock");
            return 0;
        }
        if (a->kind == HBC__APPROVAL_KIND__APPROVAL_BYPASS_FORGET) {
            delete_snapshot(c, s);
            return 0;
        }
        s->has_retain_until_ms = true;
        s->retain_until_ms = a->retain_until_ms;
        return store_snapshot(c, s, e);
    default:
        refuse(c, code, HBC_ECORRUPT, "unknown approval kind");
        return 0;
    }
}

static int apply_approval_grant(struct apply_ctx *c, const Hbc__ApprovalGrant *g, int *code,
                                struct err *e)
{
    int rc = proposer_has(c, ROLE_BIT(HBC__ROLE__ROLE_SECURITY_OFFICER), e);
    if (rc < 0) {
        return rc;
    }
    if (rc == 0) {
        refuse(c, code, HBC_EDENIED, "approvals need a security officer");
        return 0;
    }
    uint8_t key[8];
    fsm_put_be64(key, g->request_index);
    Hbc__ApprovalInfo *a = NULL;
    rc = fsm_get_record(c, META_CF_APPROVALS, key, sizeof key, &hbc__approval_info__descriptor,
                        (void **)&a, e);
    if (rc == HBC_ENOTFOUND) {
        refuse(c, code, HBC_ENOTFOUND, "no such request");
        return 0;
    }
    if (rc != 0) {
        return rc;
    }
    if (a->snapshot_id.len == FSM_ID_LEN) {
        memcpy(c->audit_id, a->snapshot_id.data, FSM_ID_LEN);
        c->audit_snapshot = c->audit_id;
    }
    Hbc__SnapshotInfo *s = NULL;
    if (a->state != HBC__APPROVAL_STATE__APPROVAL_PENDING) {
        refuse(c, code, HBC_EEXIST, "request already approved");
    } else if (strcmp(a->requested_by, c->proposer) == 0) {
        refuse(c, code, HBC_EDENIED, "the approval must come from a different security officer");
    } else if ((rc = clock_check(c, code, e)) != 0) {
        rc = rc < 0 ? rc : 0;
    } else if (c->clock_ms > a->expires_clock_ms) {
        refuse(c, code, HBC_EDENIED, "request expired: approvals must come within its time limit");
    } else if (a->snapshot_id.len != FSM_ID_LEN) {
        rc = err_set(e, HBC_ECORRUPT, "approval %llu: snapshot id of %zu bytes",
                     (unsigned long long)g->request_index, a->snapshot_id.len);
    } else {
        rc = load_snapshot(c, a->snapshot_id.data, &s, e);
        if (rc == HBC_ENOTFOUND) {
            rc = 0;
            refuse(c, code, HBC_ENOTFOUND, "the snapshot is gone");
        } else if (rc == 0) {
            rc = perform(c, a, s, code, e);
        }
        if (rc == 0 && *code == 0) {
            a->state = HBC__APPROVAL_STATE__APPROVAL_DONE;
            a->approved_by = (char *)c->proposer;
            a->has_approved_index = true;
            a->approved_index = c->index;
            rc = fsm_put_record(c, META_CF_APPROVALS, key, sizeof key, &a->base, e);
            a->approved_by = NULL;
        }
    }
    fsm_record_free(s);
    fsm_record_free(a);
    return rc;
}

int fsm_apply_locks(struct apply_ctx *c, const Hbc__Command *cmd, int *code, struct err *e)
{
    c->cmd_time_ms = cmd->leader_time_ms;
    switch (cmd->cmd_case) {
    case HBC__COMMAND__CMD_ROLE_ASSIGN:
        c->audit = true;
        return apply_role_assign(c, cmd->role_assign, code, e);
    case HBC__COMMAND__CMD_CLOCK_TICK:
        return apply_clock_tick(c, cmd->clock_tick, code);
    case HBC__COMMAND__CMD_LOCK_EXTEND:
        c->audit = true;
        return apply_lock_extend(c, cmd->lock_extend, code, e);
    case HBC__COMMAND__CMD_SNAPSHOT_FORGET:
        c->audit = true;
        return apply_snapshot_forget(c, cmd->snapshot_forget, code, e);
    case HBC__COMMAND__CMD_LEGAL_HOLD_SET:
        c->audit = true;
        return apply_hold_set(c, cmd->legal_hold_set, code, e);
    case HBC__COMMAND__CMD_LEGAL_HOLD_RELEASE:
        c->audit = true;
        return apply_hold_release(c, cmd->legal_hold_release, code, e);
    case HBC__COMMAND__CMD_GOVERNANCE_BYPASS:
        c->audit = true;
        return apply_bypass(c, cmd->governance_bypass, code, e);
    case HBC__COMMAND__CMD_APPROVAL_GRANT:
        c->audit = true;
        return apply_approval_grant(c, cmd->approval_grant, code, e);
    default:
        return 1;
    }
}
