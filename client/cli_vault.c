/* hbc vault create|list: vaults, their policy (3-2-1-1-0 by default) and their wrapped keys. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "client/client_config.h"
#include "client/placement.h"
#include "client/policy.h"
#include "common/alloc.h"
#include "common/erasure.h"

/* --retention-seconds: a short-retention vault (tests, scratch data; docs/retention.md). */
static unsigned long retention_seconds;
/* --retention-days (-1: the default, 2192) and --lock-mode (0: compliance). */
static long retention_days = -1;
static int lock_mode;

#define VAULT_CREATE_USAGE                                                                         \
    "usage: hbc vault create NAME [--policy P] [--home-site SITE] [--copies N] [--k K] [--m M]\n"  \
    "                        [--retention-days D] [--lock-mode compliance|governance]\n"           \
    "                        [--retention-seconds S] [--keyfile FILE]\n"

static const char vault_create_help[] = VAULT_CREATE_USAGE
    "\n"
    "Create a vault: its keys (wrapped with your key file), its copy policy and\n"
    "the lock every snapshot in it gets.\n"
    "\n"
    "  --policy P            copy rules (default 3-2-1-1-0; 'none' with --copies/--k/--m)\n"
    "  --home-site SITE      the site 'home' and 'offsite' are measured from\n"
    "  --copies N --k K --m M  N copies of K data + M parity shards, no copy rules\n"
    "  --retention-days D    each snapshot is locked for D days (0..36500; default 2192,\n"
    "                        six years); retain-until can later only be extended\n"
    "  --lock-mode MODE      compliance (default: nobody may shorten or forget early) or\n"
    "                        governance (two different security officers may)\n"
    "  --retention-seconds S a lock of S seconds (1..86400) for tests and scratch data\n"
    "  --keyfile FILE        the key file (default from the client config)\n"
    "\n"
    "Refused when the cluster's topology cannot meet the policy (the error names the\n"
    "rule and what is missing). See docs/retention.md and docs/placement.md.\n";

static void hex(const uint8_t *p, size_t n, char *out)
{
    for (size_t i = 0; i < n; i++) {
        sprintf(out + 2 * i, "%02x", p[i]);
    }
}

/* A positive number option's value, or -1 (with a message). */
static long number(const char *opt, const char *v, long max)
{
    char *end = NULL;
    long n = v != NULL ? strtol(v, &end, 10) : -1;
    if (v == NULL || *v == '\0' || *end != '\0' || n < 0 || n > max) {
        cli_error("%s wants a number from 0 to %ld, not '%s'", opt, max, v != NULL ? v : "");
        return -1;
    }
    return n;
}

/*
 * Create vault name under the built-in policy policy_name: fit it to the
 * topology (refusing a policy the topology cannot meet, naming the rule),
 * store it with the home site (home_flag, else the site of the node that
 * answered first).
 */
static int vault_create_policy(struct cli *c, const char *name, const char *policy_name,
                               const char *home_flag, const char *keyfile_flag)
{
    struct err e;
    struct policy p;
    if (policy_builtin(policy_name, &p, &e) != 0) {
        cli_error("%s", e.msg);
        return CLI_USAGE;
    }
    /* The key file first: a wrong passphrase is the first thing to hear about. */
    struct repo *r = NULL;
    int rv = cli_repo_open(c, true, cli_keyfile(keyfile_flag), NULL, &r);
    if (rv != CLI_OK) {
        return rv;
    }
    struct cli_topology topo;
    rv = cli_topology_get(c, &topo, &e);
    if (rv != 0) {
        repo_close(r);
        cli_topology_free(&topo);
        cli_error("%s", e.msg);
        return cli_exit_code(rv);
    }
    const char *home = home_flag != NULL ? home_flag : topo.first_site;
    char home_site[POLICY_SITE_MAX + 1];
    snprintf(home_site, sizeof home_site, "%s", home);
    char notes[1024];
    rv = home_site[0] == '\0'
             ? err_setraw(&e, HBC_EINVAL, "no home site: give --home-site SITE")
             : policy_fit(&p, home_site, topo.nodes, topo.n, notes, sizeof notes, &e);
    size_t nodes = topo.n;
    cli_topology_free(&topo);
    if (rv != 0) {
        repo_close(r);
        cli_error("vault create: policy %s cannot be met with home site %s: %s", policy_name,
                  home_site, e.msg);
        return CLI_FAILED;
    }
    /* Each copy keeps its fitted scheme: the data path codes each copy with its own k+m. */
    if (notes[0] != '\0') {
        fprintf(stderr, "hbc: note: %s\n", notes);
    }
    Hbc__VaultPolicy pb = HBC__VAULT_POLICY__INIT;
    Hbc__CopyRule rules[POLICY_MAX_COPIES];
    Hbc__CopyRule *ptrs[POLICY_MAX_COPIES];
    policy_to_proto(&p, &pb, rules, ptrs);
    /* The vault's scheme fields carry copy 0's fitted scheme: the base scheme (shard_scheme.h). */
    uint8_t id[REPO_ID_LEN];
    repo_set_create_retention(r, (uint32_t)retention_seconds);
    repo_set_create_lock(r, retention_days, lock_mode);
    rv =
        repo_vault_create(r, name, p.ncopies, p.copies[0].k, p.copies[0].m, &pb, home_site, id, &e);
    repo_close(r);
    if (rv != 0) {
        cli_error("%s", e.msg);
        return cli_exit_code(rv);
    }
    char idhex[2 * REPO_ID_LEN + 1];
    hex(id, REPO_ID_LEN, idhex);
    if (c->json) {
        json_t *o = json_object();
        json_object_set_new(o, "name", json_string(name));
        json_object_set_new(o, "vault_id", json_string(idhex));
        json_object_set_new(o, "policy", json_string(p.name));
        json_object_set_new(o, "home_site", json_string(home_site));
        json_object_set_new(o, "copies", json_integer(p.ncopies));
        json_t *arr = json_array();
        for (unsigned i = 0; i < p.ncopies; i++) {
            json_t *x = json_object();
            json_object_set_new(x, "site", json_string(p.copies[i].site));
            json_object_set_new(x, "media", json_string(p.copies[i].media));
            json_object_set_new(x, "immutable", json_boolean(p.copies[i].immutable));
            json_object_set_new(x, "k", json_integer(p.copies[i].k));
            json_object_set_new(x, "m", json_integer(p.copies[i].m));
            json_array_append_new(arr, x);
        }
        json_object_set_new(o, "rules", arr);
        json_object_set_new(o, "nodes", json_integer((json_int_t)nodes));
        json_object_set_new(o, "adjusted", json_boolean(notes[0] != '\0'));
        cli_print_json(o);
    } else {
        printf("created vault %s (%s): policy %s, home site %s\n", name, idhex, p.name, home_site);
        for (unsigned i = 0; i < p.ncopies; i++) {
            printf("  copy %u: %s, media %s%s, %u+%u shards\n", i, p.copies[i].site,
                   p.copies[i].media, p.copies[i].immutable ? ", immutable" : "", p.copies[i].k,
                   p.copies[i].m);
        }
    }
    return CLI_OK;
}

static int vault_create(struct cli *c, int argc, char **argv)
{
    const char *name = NULL;
    const char *keyfile_flag = NULL;
    const char *policy_name = NULL;
    const char *home_flag = NULL;
    long copies = -1, k = -1, m = -1;
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            fputs(vault_create_help, stdout);
            return CLI_OK;
        } else if (strcmp(a, "--retention-days") == 0 && v != NULL) {
            char *end;
            retention_days = strtol(argv[++i], &end, 10);
            if (*end != '\0' || argv[i][0] == '\0' || retention_days < 0 ||
                retention_days > 36500) {
                cli_error("--retention-days wants 0..36500");
                return CLI_USAGE;
            }
        } else if (strcmp(a, "--lock-mode") == 0 && v != NULL) {
            i++;
            if (strcmp(argv[i], "compliance") == 0) {
                lock_mode = HBC__LOCK_MODE__LOCK_COMPLIANCE;
            } else if (strcmp(argv[i], "governance") == 0) {
                lock_mode = HBC__LOCK_MODE__LOCK_GOVERNANCE;
            } else {
                cli_error("--lock-mode wants compliance or governance, not '%s'", argv[i]);
                return CLI_USAGE;
            }
        } else if (strcmp(a, "--copies") == 0) {
            copies = number(a, v, PLACEMENT_MAX_COPIES);
            if (copies < 1) {
                if (copies == 0) {
                    cli_error("--copies must be at least 1");
                }
                return CLI_USAGE;
            }
            i++;
        } else if (strcmp(a, "--k") == 0) {
            k = number(a, v, ERASURE_MAX_K);
            if (k < 1) {
                if (k == 0) {
                    cli_error("--k must be at least 1");
                }
                return CLI_USAGE;
            }
            i++;
        } else if (strcmp(a, "--m") == 0) {
            m = number(a, v, ERASURE_MAX_M);
            if (m < 0) {
                return CLI_USAGE;
            }
            i++;
        } else if (strcmp(a, "--keyfile") == 0 && v != NULL) {
            keyfile_flag = argv[++i];
        } else if (strcmp(a, "--policy") == 0 && v != NULL) {
            policy_name = argv[++i];
        } else if (strcmp(a, "--home-site") == 0 && v != NULL) {
            home_flag = argv[++i];
        } else if (strcmp(a, "--retention-seconds") == 0 && v != NULL) {
            char *end;
            retention_seconds = strtoul(argv[++i], &end, 10);
            if (*end != '\0' || retention_seconds == 0 || retention_seconds > 86400) {
                cli_error("--retention-seconds wants 1..86400");
                return CLI_USAGE;
            }
        } else if (a[0] != '-' && name == NULL) {
            name = a;
        } else {
            cli_error("unknown argument '%s'\n" VAULT_CREATE_USAGE, a);
            return CLI_USAGE;
        }
    }
    if (name == NULL) {
        cli_error("%s", VAULT_CREATE_USAGE);
        return CLI_USAGE;
    }
    if (strlen(name) > 128) {
        cli_error("a vault name has at most 128 bytes");
        return CLI_USAGE;
    }
    bool legacy = copies > 0 || k > 0 || m >= 0;
    if (policy_name != NULL && strcmp(policy_name, "none") == 0) {
        legacy = true;
    } else if (policy_name != NULL && legacy) {
        cli_error("--policy and --copies/--k/--m exclude each other (--copies/--k/--m make a "
                  "vault without copy rules)");
        return CLI_USAGE;
    }
    if (home_flag != NULL && (strlen(home_flag) == 0 || strlen(home_flag) > POLICY_SITE_MAX)) {
        cli_error("--home-site wants 1..%d bytes", POLICY_SITE_MAX);
        return CLI_USAGE;
    }
    if (!legacy) {
        return vault_create_policy(c, name, policy_name != NULL ? policy_name : POLICY_BUILTIN,
                                   home_flag, keyfile_flag);
    }
    struct repo *r = NULL;
    int rv = cli_repo_open(c, true, cli_keyfile(keyfile_flag), NULL, &r);
    if (rv != CLI_OK) {
        return rv;
    }
    /* Defaults fit the cluster; explicit values must fit as given. */
    unsigned want_copies = copies > 0 ? (unsigned)copies : 3;
    unsigned want_k = k > 0 ? (unsigned)k : 4;
    unsigned want_m = m >= 0 ? (unsigned)m : 2;
    unsigned fc = want_copies, fk = want_k, fm = want_m;
    size_t nodes = repo_node_count(r);
    bool adjusted = placement_fit(nodes, &fc, &fk, &fm);
    if ((copies > 0 && fc != want_copies) || (k > 0 && fk != want_k) || (m >= 0 && fm != want_m)) {
        cli_error("%u copies of k=%u + m=%u do not fit a cluster of %zu nodes (each copy's k+m "
                  "shards need distinct nodes, and copies need a node each); it would fit %u "
                  "copies of %u+%u",
                  want_copies, want_k, want_m, nodes, fc, fk, fm);
        repo_close(r);
        return CLI_USAGE;
    }
    if (adjusted) {
        fprintf(stderr,
                "hbc: note: the cluster has %zu node%s: using %u cop%s of k=%u + m=%u instead of "
                "%u copies of %u+%u\n",
                nodes, nodes == 1 ? "" : "s", fc, fc == 1 ? "y" : "ies", fk, fm, want_copies,
                want_k, want_m);
    }
    uint8_t id[REPO_ID_LEN];
    struct err e;
    repo_set_create_retention(r, (uint32_t)retention_seconds);
    repo_set_create_lock(r, retention_days, lock_mode);
    rv = repo_vault_create(r, name, fc, fk, fm, NULL, NULL, id, &e);
    repo_close(r);
    if (rv != 0) {
        cli_error("%s", e.msg);
        return cli_exit_code(rv);
    }
    char idhex[2 * REPO_ID_LEN + 1];
    hex(id, REPO_ID_LEN, idhex);
    if (c->json) {
        json_t *o = json_object();
        json_object_set_new(o, "name", json_string(name));
        json_object_set_new(o, "vault_id", json_string(idhex));
        json_object_set_new(o, "copies", json_integer(fc));
        json_object_set_new(o, "k", json_integer(fk));
        json_object_set_new(o, "m", json_integer(fm));
        json_object_set_new(o, "nodes", json_integer((json_int_t)nodes));
        json_object_set_new(o, "adjusted", json_boolean(adjusted));
        cli_print_json(o);
    } else {
        printf("created vault %s (%s): %u cop%s of %u+%u shards\n", name, idhex, fc,
               fc == 1 ? "y" : "ies", fk, fm);
    }
    return CLI_OK;
}

static int vault_list(struct cli *c, int argc, char **argv)
{
    (void)argv;
    if (argc > 0) {
        cli_error("usage: hbc vault list");
        return CLI_USAGE;
    }
    struct repo *r = NULL;
    int rv = cli_repo_open(c, false, NULL, NULL, &r);
    if (rv != CLI_OK) {
        return rv;
    }
    Hbc__VaultInfo **v = NULL;
    size_t n = 0;
    struct err e;
    rv = repo_vault_list(r, &v, &n, &e);
    repo_close(r);
    if (rv != 0) {
        cli_error("%s", e.msg);
        return cli_exit_code(rv);
    }
    json_t *arr = json_array();
    if (!c->json) {
        printf("%-24s %-32s %6s %6s %-20s %s\n", "NAME", "ID", "COPIES", "SCHEME", "CREATED",
               "KEYS");
    }
    for (size_t i = 0; i < n; i++) {
        const Hbc__VaultInfo *x = v[i];
        char idhex[2 * REPO_ID_LEN + 1] = "";
        if (x->vault_id.len == REPO_ID_LEN) {
            hex(x->vault_id.data, REPO_ID_LEN, idhex);
        }
        bool keys = x->has_wrapped_data_key && x->has_wrapped_chunk_id_key;
        if (c->json) {
            json_t *o = json_object();
            json_object_set_new(o, "name", json_string(x->name));
            json_object_set_new(o, "vault_id", json_string(idhex));
            json_object_set_new(o, "copies", json_integer(x->copies));
            json_object_set_new(o, "k", json_integer(x->k));
            json_object_set_new(o, "m", json_integer(x->m));
            json_object_set_new(o, "created_ms", json_integer((json_int_t)x->created_ms));
            json_object_set_new(o, "created_index", json_integer((json_int_t)x->created_index));
            json_object_set_new(o, "created_by",
                                x->created_by != NULL ? json_string(x->created_by) : json_null());
            json_object_set_new(o, "policy",
                                x->policy == NULL         ? json_null()
                                : x->policy->name != NULL ? json_string(x->policy->name)
                                                          : json_string(""));
            json_object_set_new(o, "home_site",
                                x->home_site != NULL ? json_string(x->home_site) : json_null());
            json_object_set_new(o, "keys", json_boolean(keys));
            json_object_set_new(o, "key_generation",
                                keys ? json_integer(x->has_key_generation ? x->key_generation : 1)
                                     : json_null());
            json_array_append_new(arr, o);
        } else {
            char when[32] = "?";
            time_t t = (time_t)(x->created_ms / 1000);
            struct tm tm;
            if (gmtime_r(&t, &tm) != NULL) {
                strftime(when, sizeof when, "%Y-%m-%dT%H:%M:%SZ", &tm);
            }
            char scheme[16];
            snprintf(scheme, sizeof scheme, "%u+%u", x->k, x->m);
            printf("%-24s %-32s %6u %6s %-20s %s\n", x->name, idhex, x->copies, scheme, when,
                   keys ? "wrapped" : "none");
        }
        protobuf_c_message_free_unpacked(&v[i]->base, NULL);
    }
    hbc_free(v);
    if (c->json) {
        json_t *o = json_object();
        json_object_set_new(o, "vaults", arr);
        cli_print_json(o);
    } else {
        json_decref(arr);
    }
    return CLI_OK;
}

int cli_vault(struct cli *c, int argc, char **argv)
{
    if (argc >= 1 && strcmp(argv[0], "create") == 0) {
        return vault_create(c, argc - 1, argv + 1);
    }
    if (argc >= 1 && strcmp(argv[0], "list") == 0) {
        return vault_list(c, argc - 1, argv + 1);
    }
    cli_error("usage: hbc vault create NAME [--copies N] [--k K] [--m M] | hbc vault list");
    return CLI_USAGE;
}
