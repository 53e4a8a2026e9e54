/* Vault policies (3-2-1-1-0): copy rules, the nodes each copy may use, placement and the check. */
#ifndef HBC_CLIENT_POLICY_H
#define HBC_CLIENT_POLICY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/err.h"
#include "hbc.pb-c.h"

/*
 * A vault policy is a list of copy rules (proto VaultPolicy, stored in the
 * vault's record). Copy c's rule decides which nodes it may use (its
 * eligible set); placement then picks, per chunk, the copy's k+m nodes among
 * them by weighted rendezvous. Everything here is a pure function of its
 * arguments, so every client and node computes the same answer.
 *
 * Eligibility of a node for copy c (all three must hold):
 *   site rule   "home": node.site == home site; "offsite": node.site != home
 *               site; "any": every node; otherwise a name, matching
 *               node.site or node.region.
 *   media rule  "any": every media; "different": node.media is not the media
 *               of any node eligible for an earlier copy; otherwise node.media
 *               equals the rule.
 *   immutable   when set, node.worm must be true.
 *
 * Placement of a chunk (a stored format: changing it strands data unless a
 * placement epoch records the change; tests/unit/test_policy.c pins it).
 * With placement.h's hashes, seed = mix(fnv(vault id || chunk id)) and node
 * key = mix(fnv(node id)); for copy c, slot s (0..k+m-1) in order, the
 * candidates are the copy's eligible nodes not yet used in the current pass,
 * and the winner is the smallest (tier, draw(mix(seed ^ node key ^ salt))) with
 * salt = mix(((c * 64 + s + 1) * 0x9e3779b97f4a7c15) ^ POLICY_SALT) and tier =
 * how many earlier copies of this chunk use the node. Equal weights compare
 * as integers (as in placement.h). A pass ends when every eligible node has a
 * slot; the next slot starts a new pass, so shards of a copy share nodes only
 * when the copy has fewer than k+m eligible nodes.
 *
 * Vaults without a policy keep placement_chunk_nodes() unchanged.
 */

#define POLICY_MAX_COPIES 8        /* copies in a policy (FSM_MAX_COPIES) */
#define POLICY_SITE_MAX 64         /* longest site rule, bytes */
#define POLICY_MEDIA_MAX 32        /* longest media rule, bytes */
#define POLICY_NAME_MAX 64         /* longest policy name, bytes */
#define POLICY_MAX_NODES 4096      /* nodes in a topology */
#define POLICY_MAX_WIDTH 24        /* shards per copy (ERASURE_MAX_SHARDS) */
#define POLICY_BUILTIN "3-2-1-1-0" /* the built-in policy every vault gets by default */

/* One copy's rule (proto CopyRule). */
struct policy_copy {
    char site[POLICY_SITE_MAX + 1];   /* "home", "offsite", "any", or a site or region name */
    char media[POLICY_MEDIA_MAX + 1]; /* "any", "different", or a media class */
    bool immutable;                   /* worm nodes only */
    unsigned k;                       /* data shards, 1..16 */
    unsigned m;                       /* parity shards, 0..8 */
};

/* A policy (proto VaultPolicy). */
struct policy {
    char name[POLICY_NAME_MAX + 1];               /* "" when unnamed */
    unsigned ncopies;                             /* 1..POLICY_MAX_COPIES */
    struct policy_copy copies[POLICY_MAX_COPIES]; /* the rules, copy 0 first */
};

/* One node as the policy sees it; strings borrowed for the call. */
struct policy_node {
    const char *node_id; /* unique; the array is sorted by it (strcmp), which is checked */
    const char *site;    /* its site */
    const char *region;  /* its region ("" if none) */
    const char *media;   /* its media class ("disk", "tape", ...) */
    bool worm;           /* write-once storage */
    bool up;             /* reachable now (policy_check only; placement ignores it) */
    uint64_t capacity;   /* bytes; the weight (0 counts as 1) */
};

/*
 * The built-in policy called name into *out. Only POLICY_BUILTIN exists:
 * copy 0 home/any, copy 1 offsite/different, copy 2 offsite/any/immutable,
 * each 4+2. Returns 0 or HBC_ENOTFOUND.
 */
int policy_builtin(const char *name, struct policy *out, struct err *e);

/*
 * Check the bounds of a policy (1..8 copies, k 1..16, m 0..8, rule strings
 * 1..max bytes without control characters). Returns 0 or HBC_EINVAL naming
 * the first problem. The state machine applies the same bounds.
 */
int policy_validate(const struct policy *p, struct err *e);

/* Copy a stored policy into *out and validate it; pb is borrowed. Returns 0 or HBC_EINVAL. */
int policy_from_proto(const Hbc__VaultPolicy *pb, struct policy *out, struct err *e);

/*
 * Fill pb (which must be HBC__VAULT_POLICY__INIT'd by the caller) from p:
 * rules[] (POLICY_MAX_COPIES entries) and ptrs[] are the caller's storage for
 * the copy rules, and every string points into p, so p, rules and ptrs must
 * outlive pb. Cannot fail.
 */
void policy_to_proto(const struct policy *p, Hbc__VaultPolicy *pb, Hbc__CopyRule *rules,
                     Hbc__CopyRule **ptrs);

/*
 * Which nodes each copy may use: out[c * n + i] is true when node i is
 * eligible for copy c (ncopies * n entries). Borrowed arrays. Returns 0 or
 * HBC_EINVAL (bad sizes, nodes not sorted by distinct ids, NULL strings).
 */
int policy_eligible(const struct policy *p, const char *home_site, const struct policy_node *nodes,
                    size_t n, bool *out, struct err *e);

/*
 * Fit each copy's k+m to its eligible nodes (m becomes min(m, E/2), k becomes
 * E - m, as placement_fit does) so a copy's shards land on distinct nodes.
 * Notes for a person about each change go into notes (NUL-terminated, may be
 * NULL). Returns 0; HBC_ETOOFEW when a copy has no eligible node, naming the
 * rule and what is missing ("copy 2 (offsite, immutable): no worm node outside
 * site-a"); HBC_EINVAL as policy_eligible().
 */
int policy_fit(struct policy *p, const char *home_site, const struct policy_node *nodes, size_t n,
               char *notes, size_t notes_len, struct err *e);

/*
 * The nodes of every shard of chunk chunk_id in vault vault_id:
 * out_idx[c * POLICY_MAX_WIDTH + s] receives the index into nodes of copy c's
 * shard s, for s < k + m of that copy. Deterministic. Returns 0, HBC_ETOOFEW
 * when a copy has no eligible node (message as policy_fit()), HBC_EINVAL as
 * policy_eligible() or when a copy's k+m exceeds POLICY_MAX_WIDTH, HBC_ENOMEM.
 */
int policy_chunk_nodes(const uint8_t vault_id[16], const uint8_t chunk_id[32],
                       const struct policy *p, const char *home_site,
                       const struct policy_node *nodes, size_t n, unsigned *out_idx, struct err *e);

/* The five digits of 3-2-1-1-0, in order. */
enum policy_digit {
    POLICY_DIGIT_COPIES,    /* 3: three copies, each restorable on its own */
    POLICY_DIGIT_MEDIA,     /* 2: two copies on disjoint media classes */
    POLICY_DIGIT_OFFSITE,   /* 1: one copy wholly outside the home site */
    POLICY_DIGIT_IMMUTABLE, /* 1: one immutable copy on worm nodes */
    POLICY_DIGIT_ERRORS,    /* 0: the latest restore test found no error */
    POLICY_DIGITS,          /* how many digits */
};

/* The latest restore test of the vault, as far as the caller knows. */
struct policy_restore {
    bool known;      /* a restore test is recorded */
    bool passed;     /* it passed */
    uint64_t errors; /* errors it found */
};

/* How much one copy survives on its own (worst case over chunks). */
struct policy_tolerance {
    unsigned eligible;   /* nodes the copy may use */
    unsigned sites;      /* sites among them */
    unsigned width;      /* k + m */
    unsigned k;          /* shards needed to read */
    bool distinct;       /* every shard on its own node (eligible >= k + m) */
    unsigned nodes_lost; /* any this many of its nodes may fail */
    unsigned sites_lost; /* any this many of its sites may fail */
    unsigned nodes_down; /* eligible nodes down now */
    bool restorable;     /* readable now on its own (nodes down within nodes_lost) */
};

/* What policy_check() finds. */
struct policy_report {
    bool pass[POLICY_DIGITS];                        /* each digit */
    char reason[POLICY_DIGITS][256];                 /* why, for a person */
    unsigned ncopies;                                /* copies in the policy */
    struct policy_tolerance copy[POLICY_MAX_COPIES]; /* per copy */
    bool all_pass;                                   /* every digit passes */
};

/* The name of a digit ("3 copies", "2 media", "1 offsite", "1 immutable", "0 errors"). */
const char *policy_digit_name(enum policy_digit d);

/*
 * Judge policy p on the topology (nodes, n; home_site) and the latest
 * restore test (restore may be NULL: unknown, which fails the 0 digit),
 * into *out. Pure. Returns 0 or HBC_EINVAL as policy_eligible() (a topology
 * the policy cannot meet is a failing digit, not an error).
 */
int policy_check(const struct policy *p, const char *home_site, const struct policy_node *nodes,
                 size_t n, const struct policy_restore *restore, struct policy_report *out,
                 struct err *e);

#endif /* HBC_CLIENT_POLICY_H */
