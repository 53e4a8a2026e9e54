/* Vault policies: eligibility, fitting, placement and the 3-2-1-1-0 check (rules in policy.h). */
#include "client/policy.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

#include "client/hashmix.h"
#include "common/alloc.h"

#define POLICY_SALT 0x504f4c4943595631ull /* "POLICYV1" */
#define MAX_K 16                          /* ERASURE_MAX_K */
#define MAX_M 8                           /* ERASURE_MAX_M */

int policy_builtin(const char *name, struct policy *out, struct err *e)
{
    if (name == NULL || strcmp(name, POLICY_BUILTIN) != 0) {
        return err_set(e, HBC_ENOTFOUND, "policy '%s': the only built-in policy is %s",
                       name != NULL ? name : "", POLICY_BUILTIN);
    }
    memset(out, 0, sizeof *out);
    snprintf(out->name, sizeof out->name, "%s", POLICY_BUILTIN);
    out->ncopies = 3;
    out->copies[0] = (struct policy_copy){.site = "home", .media = "any", .k = 4, .m = 2};
    out->copies[1] = (struct policy_copy){.site = "offsite", .media = "different", .k = 4, .m = 2};
    out->copies[2] =
        (struct policy_copy){.site = "offsite", .media = "any", .immutable = true, .k = 4, .m = 2};
    return 0;
}

/* Text rules: 1..max bytes, no control characters (as the state machine's text_ok). */
static bool text_ok(const char *s, size_t max)
{
    if (s == NULL) {
        return false;
    }
    size_t n = strnlen(s, max + 1);
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

int policy_validate(const struct policy *p, struct err *e)
{
    if (p->ncopies < 1 || p->ncopies > POLICY_MAX_COPIES) {
        return err_set(e, HBC_EINVAL, "policy: %u copies (1..%d)", p->ncopies, POLICY_MAX_COPIES);
    }
    if (p->name[0] != '\0' && !text_ok(p->name, POLICY_NAME_MAX)) {
        return err_set(e, HBC_EINVAL, "policy: name must be 1..%d printable bytes",
                       POLICY_NAME_MAX);
    }
    for (unsigned c = 0; c < p->ncopies; c++) {
        const struct policy_copy *r = &p->copies[c];
        if (!text_ok(r->site, POLICY_SITE_MAX)) {
            return err_set(e, HBC_EINVAL,
                           "policy: copy %u: site rule must be 1..%d printable bytes", c,
                           POLICY_SITE_MAX);
        }
        if (!text_ok(r->media, POLICY_MEDIA_MAX)) {
            return err_set(e, HBC_EINVAL,
                           "policy: copy %u: media rule must be 1..%d printable bytes", c,
                           POLICY_MEDIA_MAX);
        }
        if (r->k < 1 || r->k > MAX_K || r->m > MAX_M) {
            return err_set(e, HBC_EINVAL, "policy: copy %u: k=%u m=%u (k 1..%d, m 0..%d)", c, r->k,
                           r->m, MAX_K, MAX_M);
        }
    }
    return 0;
}

int policy_from_proto(const Hbc__VaultPolicy *pb, struct policy *out, struct err *e)
{
    memset(out, 0, sizeof *out);
    if (pb->n_copies < 1 || pb->n_copies > POLICY_MAX_COPIES) {
        return err_set(e, HBC_EINVAL, "policy: %zu copies (1..%d)", pb->n_copies,
                       POLICY_MAX_COPIES);
    }
    if (pb->name != NULL && !text_ok(pb->name, POLICY_NAME_MAX)) {
        return err_set(e, HBC_EINVAL, "policy: name must be 1..%d printable bytes",
                       POLICY_NAME_MAX);
    }
    if (pb->name != NULL) {
        snprintf(out->name, sizeof out->name, "%s", pb->name);
    }
    out->ncopies = (unsigned)pb->n_copies;
    for (size_t c = 0; c < pb->n_copies; c++) {
        const Hbc__CopyRule *r = pb->copies[c];
        if (!text_ok(r->site, POLICY_SITE_MAX) || !text_ok(r->media, POLICY_MEDIA_MAX)) {
            return err_set(e, HBC_EINVAL, "policy: copy %zu: site or media rule too long or empty",
                           c);
        }
        struct policy_copy *o = &out->copies[c];
        snprintf(o->site, sizeof o->site, "%s", r->site);
        snprintf(o->media, sizeof o->media, "%s", r->media);
        o->immutable = r->immutable;
        o->k = r->k;
        o->m = r->m;
    }
    return policy_validate(out, e);
}

void policy_to_proto(const struct policy *p, Hbc__VaultPolicy *pb, Hbc__CopyRule *rules,
                     Hbc__CopyRule **ptrs)
{
    for (unsigned c = 0; c < p->ncopies; c++) {
        hbc__copy_rule__init(&rules[c]);
        rules[c].site = (char *)p->copies[c].site;
        rules[c].media = (char *)p->copies[c].media;
        rules[c].immutable = p->copies[c].immutable;
        rules[c].k = p->copies[c].k;
        rules[c].m = p->copies[c].m;
        ptrs[c] = &rules[c];
    }
    pb->n_copies = p->ncopies;
    pb->copies = ptrs;
    pb->name = p->name[0] != '\0' ? (char *)p->name : NULL;
}

static int check_nodes(const struct policy *p, const char *home_site,
                       const struct policy_node *nodes, size_t n, struct err *e)
{
    if (p->ncopies < 1 || p->ncopies > POLICY_MAX_COPIES) {
        return err_set(e, HBC_EINVAL, "policy: %u copies (1..%d)", p->ncopies, POLICY_MAX_COPIES);
    }
    if (n > POLICY_MAX_NODES) {
        return err_set(e, HBC_EINVAL, "policy: %zu nodes (at most %d)", n, POLICY_MAX_NODES);
    }
    if (home_site == NULL) {
        return err_set(e, HBC_EINVAL, "policy: no home site");
    }
    for (size_t i = 0; i < n; i++) {
        if (nodes[i].node_id == NULL || nodes[i].site == NULL || nodes[i].region == NULL ||
            nodes[i].media == NULL) {
            return err_set(e, HBC_EINVAL, "policy: node %zu lacks an id, site, region or media", i);
        }
        if (i > 0 && strcmp(nodes[i - 1].node_id, nodes[i].node_id) >= 0) {
            return err_set(e, HBC_EINVAL, "policy: nodes not sorted by distinct ids at %zu", i);
        }
    }
    return 0;
}

static bool site_ok(const struct policy_copy *r, const char *home, const struct policy_node *x)
{
    if (strcmp(r->site, "home") == 0) {
        return strcmp(x->site, home) == 0;
    }
    if (strcmp(r->site, "offsite") == 0) {
        return strcmp(x->site, home) != 0;
    }
    if (strcmp(r->site, "any") == 0) {
        return true;
    }
    return strcmp(x->site, r->site) == 0 || strcmp(x->region, r->site) == 0;
}

int policy_eligible(const struct policy *p, const char *home_site, const struct policy_node *nodes,
                    size_t n, bool *out, struct err *e)
{
    int rv = check_nodes(p, home_site, nodes, n, e);
    if (rv != 0) {
        return rv;
    }
    /* Media classes of nodes eligible for earlier copies, distinct (for "different"). */
    const char *seen_stack[64];
    const char **seen = seen_stack;
    size_t nseen = 0, seen_cap = 64;
    for (unsigned c = 0; c < p->ncopies && rv == 0; c++) {
        const struct policy_copy *r = &p->copies[c];
        bool any = strcmp(r->media, "any") == 0;
        bool different = strcmp(r->media, "different") == 0;
        for (size_t i = 0; i < n; i++) {
            const struct policy_node *x = &nodes[i];
            bool ok = site_ok(r, home_site, x) && (!r->immutable || x->worm);
            if (ok && different) {
                for (size_t q = 0; q < nseen && ok; q++) {
                    ok = strcmp(seen[q], x->media) != 0;
                }
            } else if (ok && !any) {
                ok = strcmp(x->media, r->media) == 0;
            }
            out[(size_t)c * n + i] = ok;
        }
        /* Add this copy's media classes for the copies after it. */
        for (size_t i = 0; i < n && c + 1 < p->ncopies; i++) {
            if (!out[(size_t)c * n + i]) {
                continue;
            }
            bool known = false;
            for (size_t q = 0; q < nseen && !known; q++) {
                known = strcmp(seen[q], nodes[i].media) == 0;
            }
            if (known) {
                continue;
            }
            if (nseen == seen_cap) {
                const char **more = hbc_malloc(2 * seen_cap * sizeof *more);
                if (more == NULL) {
                    rv = err_set(e, HBC_ENOMEM, "policy: media classes");
                    break;
                }
                memcpy(more, seen, nseen * sizeof *more);
                if (seen != seen_stack) {
                    hbc_free(seen);
                }
                seen = more;
                seen_cap *= 2;
            }
            seen[nseen++] = nodes[i].media;
        }
    }
    if (seen != seen_stack) {
        hbc_free(seen);
    }
    return rv;
}

/* "copy 2 (offsite, immutable): no worm node outside site-a" into buf. */
static void describe_missing(const struct policy *p, unsigned c, const char *home, const bool *elig,
                             const struct policy_node *nodes, size_t n, char *buf, size_t len)
{
    const struct policy_copy *r = &p->copies[c];
    char rule[160];
    snprintf(rule, sizeof rule, "%s%s%s%s", r->site, strcmp(r->media, "any") != 0 ? ", media " : "",
             strcmp(r->media, "any") != 0 ? r->media : "", r->immutable ? ", immutable" : "");
    char where[128] = "";
    if (strcmp(r->site, "home") == 0) {
        snprintf(where, sizeof where, " in %s", home);
    } else if (strcmp(r->site, "offsite") == 0) {
        snprintf(where, sizeof where, " outside %s", home);
    } else if (strcmp(r->site, "any") != 0) {
        snprintf(where, sizeof where, " in site or region %s", r->site);
    }
    char media[160] = "";
    if (strcmp(r->media, "different") == 0) {
        /* The media classes earlier copies use. */
        size_t off = (size_t)snprintf(media, sizeof media, " with a media other than");
        unsigned listed = 0;
        for (size_t j = 0; j < n && off < sizeof media; j++) {
            bool used = false, before = false;
            for (unsigned d = 0; d < c; d++) {
                used |= elig[(size_t)d * n + j];
            }
            for (size_t q = 0; q < j && used && !before; q++) {
                for (unsigned d = 0; d < c && !before; d++) {
                    before = elig[(size_t)d * n + q] && strcmp(nodes[q].media, nodes[j].media) == 0;
                }
            }
            if (used && !before) {
                off += (size_t)snprintf(media + off, sizeof media - off, "%s %s",
                                        listed > 0 ? "," : "", nodes[j].media);
                listed++;
            }
        }
        if (listed == 0) {
            media[0] = '\0';
        }
    }
    snprintf(buf, len, "copy %u (%s): no %s%s%snode%s%s", c, rule, r->immutable ? "worm " : "",
             strcmp(r->media, "any") != 0 && strcmp(r->media, "different") != 0 ? r->media : "",
             strcmp(r->media, "any") != 0 && strcmp(r->media, "different") != 0 ? " " : "", media,
             where);
}

/* Eligibility in a buffer of its own (stack for small topologies). */
struct elig_buf {
    bool stack[POLICY_MAX_COPIES * 128]; /* small topologies */
    bool *v;                             /* ncopies * n entries */
};

static int elig_get(struct elig_buf *b, const struct policy *p, const char *home,
                    const struct policy_node *nodes, size_t n, struct err *e)
{
    b->v = b->stack;
    if (n > 128) {
        b->v = hbc_malloc((size_t)POLICY_MAX_COPIES * n * sizeof *b->v);
        if (b->v == NULL) {
            return err_set(e, HBC_ENOMEM, "policy: %zu nodes", n);
        }
    }
    int rv = policy_eligible(p, home, nodes, n, b->v, e);
    if (rv != 0 && b->v != b->stack) {
        hbc_free(b->v);
        b->v = NULL;
    }
    return rv;
}

static void elig_put(struct elig_buf *b)
{
    if (b->v != b->stack) {
        hbc_free(b->v);
    }
}

static unsigned count_true(const bool *v, size_t n)
{
    unsigned k = 0;
    for (size_t i = 0; i < n; i++) {
        k += v[i] ? 1u : 0u;
    }
    return k;
}

int policy_fit(struct policy *p, const char *home_site, const struct policy_node *nodes, size_t n,
               char *notes, size_t notes_len, struct err *e)
{
    if (notes != NULL && notes_len > 0) {
        notes[0] = '\0';
    }
    struct elig_buf b;
    int rv = elig_get(&b, p, home_site, nodes, n, e);
    if (rv != 0) {
        return rv;
    }
    size_t off = 0;
    for (unsigned c = 0; c < p->ncopies && rv == 0; c++) {
        unsigned en = count_true(b.v + (size_t)c * n, n);
        struct policy_copy *r = &p->copies[c];
        if (en == 0) {
            char why[400];
            describe_missing(p, c, home_site, b.v, nodes, n, why, sizeof why);
            rv = err_setraw(e, HBC_ETOOFEW, "%s", why);
            break;
        }
        if (r->k + r->m > en) {
            unsigned nm = r->m < en / 2 ? r->m : en / 2;
            unsigned nk = en - nm < 1 ? 1 : en - nm;
            if (notes != NULL && off < notes_len) {
                int w = snprintf(notes + off, notes_len - off,
                                 "%scopy %u (%s): %u eligible node%s: using %u+%u instead of %u+%u",
                                 off > 0 ? "; " : "", c, r->site, en, en == 1 ? "" : "s", nk, nm,
                                 r->k, r->m);
                off += w > 0 ? (size_t)w : 0;
            }
            r->k = nk;
            r->m = nm;
        }
    }
    elig_put(&b);
    return rv;
}

int policy_chunk_nodes(const uint8_t vault_id[16], const uint8_t chunk_id[32],
                       const struct policy *p, const char *home_site,
                       const struct policy_node *nodes, size_t n, unsigned *out_idx, struct err *e)
{
    for (unsigned c = 0; c < p->ncopies && c < POLICY_MAX_COPIES; c++) {
        if (p->copies[c].k + p->copies[c].m > POLICY_MAX_WIDTH || p->copies[c].k == 0) {
            return err_set(e, HBC_EINVAL, "policy: copy %u: %u+%u shards", c, p->copies[c].k,
                           p->copies[c].m);
        }
    }
    struct elig_buf b;
    int rv = elig_get(&b, p, home_site, nodes, n, e);
    if (rv != 0) {
        return rv;
    }
    /* Per node: its key, earlier copies using it, and its marks in the current copy. */
    struct work {
        uint64_t key;    /* node key */
        uint8_t used;    /* earlier copies of this chunk on it */
        uint8_t in_pass; /* bit 0: in this pass; bit 1: in this copy */
    };
    struct work work_stack[128];
    struct work *wk = work_stack;
    if (n > 128) {
        wk = hbc_calloc(n, sizeof *wk);
        if (wk == NULL) {
            elig_put(&b);
            return err_set(e, HBC_ENOMEM, "policy: %zu nodes", n);
        }
    }
    for (size_t i = 0; i < n; i++) {
        wk[i] = (struct work){.key = hashmix_mix(hashmix_fnv(HASHMIX_FNV_OFFSET, nodes[i].node_id,
                                                             strlen(nodes[i].node_id)))};
    }
    bool equal = true;
    for (size_t i = 1; i < n; i++) {
        equal &= nodes[i].capacity == nodes[0].capacity;
    }
    uint64_t seed =
        hashmix_mix(hashmix_fnv(hashmix_fnv(HASHMIX_FNV_OFFSET, vault_id, 16), chunk_id, 32));
    for (unsigned c = 0; c < p->ncopies && rv == 0; c++) {
        const bool *el = b.v + (size_t)c * n;
        unsigned en = count_true(el, n);
        if (en == 0) {
            char why[400];
            describe_missing(p, c, home_site, b.v, nodes, n, why, sizeof why);
            rv = err_setraw(e, HBC_ETOOFEW, "%s", why);
            break;
        }
        unsigned width = p->copies[c].k + p->copies[c].m;
        for (size_t i = 0; i < n; i++) {
            wk[i].in_pass = 0;
        }
        unsigned passed = 0;
        for (unsigned s = 0; s < width; s++) {
            if (passed == en) {
                for (size_t i = 0; i < n; i++) {
                    wk[i].in_pass &= (uint8_t)~1u;
                }
                passed = 0;
            }
            uint64_t salt =
                hashmix_mix((((uint64_t)c * 64 + s + 1) * HASHMIX_GOLDEN) ^ POLICY_SALT);
            size_t best = n;
            unsigned btier = 0;
            uint64_t bbits = 0;
            double bd = 0;
            for (size_t i = 0; i < n; i++) {
                if (!el[i] || (wk[i].in_pass & 1u)) {
                    continue;
                }
                uint64_t x = hashmix_mix(seed ^ wk[i].key ^ salt);
                unsigned tier = wk[i].used;
                uint64_t bits = x >> 11;
                double d = 0;
                if (!equal) {
                    d = hashmix_draw(x, nodes[i].capacity == 0 ? 1.0 : (double)nodes[i].capacity);
                }
                bool better =
                    best == n || tier < btier || (tier == btier && (equal ? bits > bbits : d < bd));
                if (better) {
                    best = i;
                    btier = tier;
                    bbits = bits;
                    bd = d;
                }
            }
            out_idx[(size_t)c * POLICY_MAX_WIDTH + s] = (unsigned)best;
            wk[best].in_pass |= 3u;
            passed++;
        }
        for (size_t i = 0; i < n; i++) {
            wk[i].used += (wk[i].in_pass & 2u) ? 1u : 0u;
        }
    }
    if (wk != work_stack) {
        hbc_free(wk);
    }
    elig_put(&b);
    return rv;
}

const char *policy_digit_name(enum policy_digit d)
{
    switch (d) {
    case POLICY_DIGIT_COPIES:
        return "3 copies";
    case POLICY_DIGIT_MEDIA:
        return "2 media";
    case POLICY_DIGIT_OFFSITE:
        return "1 offsite";
    case POLICY_DIGIT_IMMUTABLE:
        return "1 immutable";
    case POLICY_DIGIT_ERRORS:
        return "0 errors";
    default:
        return "?";
    }
}

/* Worst-case tolerance of copy c on its own (see struct policy_tolerance). */
static void tolerance(const struct policy_copy *r, const bool *el, const struct policy_node *nodes,
                      size_t n, struct policy_tolerance *t)
{
    memset(t, 0, sizeof *t);
    t->width = r->k + r->m;
    t->k = r->k;
    t->eligible = count_true(el, n);
    if (t->eligible == 0) {
        return;
    }
    /* At most this many shards of one chunk on one node. */
    unsigned per_node = (t->width + t->eligible - 1) / t->eligible;
    t->distinct = per_node == 1;
    t->nodes_lost = r->m / per_node;
    /* Sites: the largest possible share of a site, lost largest first. */
    unsigned site_max[256];
    const char *site_name[256];
    unsigned ns = 0;
    for (size_t i = 0; i < n; i++) {
        if (!el[i]) {
            continue;
        }
        t->nodes_down += nodes[i].up ? 0u : 1u;
        unsigned s = 0;
        while (s < ns && strcmp(site_name[s], nodes[i].site) != 0) {
            s++;
        }
        if (s == ns) {
            if (ns == 256) {
                continue; /* more sites than counted: tolerance stays conservative */
            }
            site_name[ns] = nodes[i].site;
            site_max[ns] = 0;
            ns++;
        }
        site_max[s] += per_node;
    }
    t->sites = ns;
    /* Sort descending (few sites). */
    for (unsigned a = 0; a < ns; a++) {
        for (unsigned b2 = a + 1; b2 < ns; b2++) {
            if (site_max[b2] > site_max[a]) {
                unsigned x = site_max[a];
                site_max[a] = site_max[b2];
                site_max[b2] = x;
            }
        }
    }
    unsigned lost = 0;
    for (unsigned a = 0; a < ns; a++) {
        unsigned share = site_max[a] < t->width ? site_max[a] : t->width;
        if (lost + share > r->m) {
            break;
        }
        lost += share;
        t->sites_lost++;
    }
    t->restorable = t->nodes_down <= t->nodes_lost;
}

int policy_check(const struct policy *p, const char *home_site, const struct policy_node *nodes,
                 size_t n, const struct policy_restore *restore, struct policy_report *out,
                 struct err *e)
{
    memset(out, 0, sizeof *out);
    struct elig_buf b;
    int rv = elig_get(&b, p, home_site, nodes, n, e);
    if (rv != 0) {
        return rv;
    }
    out->ncopies = p->ncopies;
    for (unsigned c = 0; c < p->ncopies; c++) {
        tolerance(&p->copies[c], b.v + (size_t)c * n, nodes, n, &out->copy[c]);
    }

    /* 3: three copies, each restorable on its own. */
    unsigned ok = 0;
    int first_bad = -1;
    for (unsigned c = 0; c < p->ncopies; c++) {
        if (out->copy[c].eligible > 0 && out->copy[c].restorable) {
            ok++;
        } else if (first_bad < 0) {
            first_bad = (int)c;
        }
    }
    char *why = out->reason[POLICY_DIGIT_COPIES];
    size_t wl = sizeof out->reason[0];
    out->pass[POLICY_DIGIT_COPIES] = ok >= 3;
    if (p->ncopies < 3) {
        snprintf(why, wl, "the policy has %u cop%s (3 needed)", p->ncopies,
                 p->ncopies == 1 ? "y" : "ies");
    } else if (ok < 3) {
        const struct policy_tolerance *t = &out->copy[first_bad];
        if (t->eligible == 0) {
            describe_missing(p, (unsigned)first_bad, home_site, b.v, nodes, n, why, wl);
        } else {
            snprintf(why, wl,
                     "%u of %u copies restorable on their own; copy %d has %u of its %u "
                     "nodes down (it survives %u)",
                     ok, p->ncopies, first_bad, t->nodes_down, t->eligible, t->nodes_lost);
        }
    } else {
        snprintf(why, wl, "%u copies restorable on their own", ok);
    }

    /* 2: two copies whose nodes share no media class. */
    int ma = -1, mb = -1;
    for (unsigned a = 0; a < p->ncopies && ma < 0; a++) {
        for (unsigned c = a + 1; c < p->ncopies && ma < 0; c++) {
            const bool *ea = b.v + (size_t)a * n, *ec = b.v + (size_t)c * n;
            if (out->copy[a].eligible == 0 || out->copy[c].eligible == 0) {
                continue;
            }
            bool shared = false;
            for (size_t i = 0; i < n && !shared; i++) {
                for (size_t j = 0; j < n && ea[i] && !shared; j++) {
                    shared = ec[j] && strcmp(nodes[i].media, nodes[j].media) == 0;
                }
            }
            if (!shared) {
                ma = (int)a;
                mb = (int)c;
            }
        }
    }
    why = out->reason[POLICY_DIGIT_MEDIA];
    out->pass[POLICY_DIGIT_MEDIA] = ma >= 0;
    if (ma >= 0) {
        snprintf(why, wl, "copies %d and %d use disjoint media classes", ma, mb);
    } else {
        snprintf(why, wl,
                 "no two copies use disjoint media classes (a single media failure "
                 "reaches every copy pair)");
    }

    /* 1 offsite: a copy with every eligible node outside the home site. */
    int off = -1;
    for (unsigned c = 0; c < p->ncopies && off < 0; c++) {
        bool all_out = out->copy[c].eligible > 0;
        for (size_t i = 0; i < n && all_out; i++) {
            all_out = !b.v[(size_t)c * n + i] || strcmp(nodes[i].site, home_site) != 0;
        }
        off = all_out ? (int)c : -1;
    }
    why = out->reason[POLICY_DIGIT_OFFSITE];
    out->pass[POLICY_DIGIT_OFFSITE] = off >= 0;
    if (off >= 0) {
        snprintf(why, wl, "copy %d lies wholly outside %s", off, home_site);
    } else {
        bool any_out = false;
        for (size_t i = 0; i < n; i++) {
            any_out |= strcmp(nodes[i].site, home_site) != 0;
        }
        if (!any_out) {
            snprintf(why, wl, "every node is in the home site %s", home_site);
        } else {
            snprintf(why, wl, "no copy lies wholly outside the home site %s", home_site);
        }
    }

    /* 1 immutable: an immutable copy with worm nodes to use. */
    int imm = -1, imm_rule = -1;
    for (unsigned c = 0; c < p->ncopies && imm < 0; c++) {
        if (p->copies[c].immutable) {
            imm_rule = imm_rule < 0 ? (int)c : imm_rule;
            imm = out->copy[c].eligible > 0 ? (int)c : -1;
        }
    }
    why = out->reason[POLICY_DIGIT_IMMUTABLE];
    out->pass[POLICY_DIGIT_IMMUTABLE] = imm >= 0;
    if (imm >= 0) {
        snprintf(why, wl, "copy %d is immutable on %u worm node%s", imm, out->copy[imm].eligible,
                 out->copy[imm].eligible == 1 ? "" : "s");
    } else if (imm_rule >= 0) {
        describe_missing(p, (unsigned)imm_rule, home_site, b.v, nodes, n, why, wl);
    } else {
        snprintf(why, wl, "no copy is immutable");
    }

    /* 0: the latest restore test passed with no error. */
    why = out->reason[POLICY_DIGIT_ERRORS];
    if (restore == NULL || !restore->known) {
        out->pass[POLICY_DIGIT_ERRORS] = false;
        snprintf(why, wl, "unknown: no restore test recorded");
    } else if (!restore->passed || restore->errors > 0) {
        out->pass[POLICY_DIGIT_ERRORS] = false;
        snprintf(why, wl, "the latest restore test failed with %llu error%s",
                 (unsigned long long)restore->errors, restore->errors == 1 ? "" : "s");
    } else {
        out->pass[POLICY_DIGIT_ERRORS] = true;
        snprintf(why, wl, "the latest restore test passed with 0 errors");
    }

    out->all_pass = true;
    for (int d = 0; d < POLICY_DIGITS; d++) {
        out->all_pass &= out->pass[d];
    }
    elig_put(&b);
    return 0;
}
