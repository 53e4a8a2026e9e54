/* hbcd's configuration file: a table of keys, parsed by inih, every value checked. */
#include "node/config.h"

#include <errno.h>
#include <limits.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include <ini.h>

#include "common/alloc.h"

enum key_type { KEY_STRING, KEY_BOOL, KEY_SIZE, KEY_U32, KEY_ADDR, KEY_MEDIA, KEY_OPTADDR };

struct key_spec {
    const char *section; /* INI section */
    const char *name;    /* key within the section */
    enum key_type type;  /* how the value is parsed */
    size_t offset;       /* where it goes in struct node_config */
    const char *def;     /* default as text, NULL when the key is required */
    uint64_t min, max;   /* bounds for numbers */
    const char *help;    /* one line for --print-config and docs/operations.md */
};

#define OFF(f) offsetof(struct node_config, f)
#define KiB (1024ULL)
#define MiB (1024ULL * 1024)
#define GiB (1024ULL * 1024 * 1024)

static const struct key_spec keys[] = {
    {"node", "id", KEY_STRING, OFF(node_id), NULL, 1, 64,
     "unique node name (also its certificate CN)"},
    {"node", "data_dir", KEY_STRING, OFF(data_dir), NULL, 1, PATH_MAX,
     "directory for shards, index and Raft data"},
    {"node", "site", KEY_STRING, OFF(site), NULL, 1, 64, "site (failure domain) the node is in"},
    {"node", "region", KEY_STRING, OFF(region), "default", 1, 64, "region the site belongs to"},
    {"node", "media", KEY_MEDIA, OFF(media), "ssd", 0, 0, "media class: ssd, hdd, tape or object"},
    {"node", "worm", KEY_BOOL, OFF(worm), "false", 0, 0,
     "true if the node can hold immutable (WORM) copies"},
    {"node", "capacity", KEY_SIZE, OFF(capacity), "1T", 16 * MiB, 1ULL << 60,
     "bytes of shards the node may store"},
    {"data", "listen", KEY_ADDR, OFF(listen), NULL, 0, 0, "data-plane address, IPv4 ip:port"},
    {"data", "max_frame", KEY_SIZE, OFF(max_frame), "64M", 64 * KiB, 1 * GiB,
     "largest frame accepted from a peer"},
    {"data", "max_connections", KEY_U32, OFF(max_connections), "4096", 1, 1000000,
     "open connections at most"},
    {"data", "idle_timeout", KEY_U32, OFF(idle_timeout), "300", 1, 86400,
     "seconds before an idle connection is closed"},
    {"data", "handshake_timeout", KEY_U32, OFF(handshake_timeout), "10", 1, 600,
     "seconds a peer has to finish the TLS handshake"},
    {"data", "conn_buffer", KEY_SIZE, OFF(conn_buffer), "96M", 1 * MiB, 4 * GiB,
     "memory per connection before the node stops reading from it"},
    {"tls", "ca", KEY_STRING, OFF(tls_ca), NULL, 1, PATH_MAX, "cluster CA certificate (PEM)"},
    {"tls", "cert", KEY_STRING, OFF(tls_cert), NULL, 1, PATH_MAX, "this node's certificate (PEM)"},
    {"tls", "key", KEY_STRING, OFF(tls_key), NULL, 1, PATH_MAX, "this node's private key (PEM)"},
    {"store", "segment_size", KEY_SIZE, OFF(segment_size), "64M", 1 * MiB, 4 * GiB,
     "bytes per shard segment file"},
    {"store", "max_shard", KEY_SIZE, OFF(max_shard), "8M", 4 * KiB, 256 * MiB,
     "largest encoded shard accepted"},
    {"store", "commit_max_shards", KEY_U32, OFF(commit_max_shards), "1024", 1, 100000,
     "puts covered by one group commit at most"},
    {"store", "commit_max_bytes", KEY_SIZE, OFF(commit_max_bytes), "64M", 1 * MiB, 4 * GiB,
     "bytes covered by one group commit at most"},
    {"raft", "listen", KEY_OPTADDR, OFF(raft_listen), NULL, 0, 0,
     "Raft address, IPv4 ip:port (unset: data plane only, no metadata plane)"},
    {"raft", "bootstrap", KEY_BOOL, OFF(raft_bootstrap), "false", 0, 0,
     "true on the first node only: start a new cluster with it as the one voter"},
    {"raft", "join", KEY_OPTADDR, OFF(raft_join), NULL, 0, 0,
     "data-plane address of a member to ask for admission (new nodes)"},
    {"raft", "election_timeout", KEY_U32, OFF(election_timeout), "1000", 100, 60000,
     "ms without a leader before an election (randomised up to 2x)"},
    {"raft", "heartbeat_timeout", KEY_U32, OFF(heartbeat_timeout), "100", 10, 10000,
     "ms between the leader's heartbeats"},
    {"raft", "snapshot_threshold", KEY_U32, OFF(snapshot_threshold), "4096", 2, 10000000,
     "log entries between Raft snapshots"},
    {"raft", "snapshot_trailing", KEY_U32, OFF(snapshot_trailing), "1024", 1, 10000000,
     "log entries kept after a snapshot, for lagging followers"},
    {"raft", "max_voters", KEY_U32, OFF(max_voters), "5", 1, 9,
     "voters at most, spread over the sites; later nodes are standbys"},
    {"raft", "segment_size", KEY_SIZE, OFF(raft_segment_size), "8M", 64 * KiB, 1 * GiB,
     "bytes per Raft log segment file"},
    {"clock", "max_skew", KEY_U32, OFF(max_skew), "60", 1, 3600,
     "seconds the leader's clock may differ from the voters' median before ticks are refused"},
    {"gc", "grace", KEY_U32, OFF(gc_grace), "86400", 0, 31536000,
     "seconds a chunk stays after it was stored even when nothing references it"},
    {"gc", "interval", KEY_U32, OFF(gc_interval), "21600", 0, 31536000,
     "seconds between garbage collection cycles run by the leader (0: only on demand)"},
    {"placement", "move_rate", KEY_SIZE, OFF(move_rate), "64M", 64 * KiB, 1ULL << 40,
     "bytes per second the mover copies or rebuilds at most (docs/placement.md)"},
    {"placement", "move_interval", KEY_U32, OFF(move_interval), "2000", 50, 600000,
     "ms between the mover's passes over the unsettled placement groups"},
    {"placement", "down_after", KEY_U32, OFF(down_after), "600", 5, 604800,
     "seconds without contact before the leader marks a node DOWN (a new epoch)"},
    {"placement", "cleanup_after", KEY_U32, OFF(cleanup_after), "86400", 0, 31536000,
     "seconds a vault's groups stay settled in the current epoch before a node deletes the "
     "shards older epochs left on it (0: never)"},
};

#define NKEYS (sizeof keys / sizeof keys[0])

int config_parse_size(const char *s, uint64_t *out)
{
    char *end;
    errno = 0;
    if (*s == '-' || *s == '\0') {
        return HBC_EINVAL;
    }
    unsigned long long v = strtoull(s, &end, 10);
    if (errno != 0 || end == s) {
        return HBC_EINVAL;
    }
    uint64_t mult = 1;
    switch (*end) {
    case '\0':
        break;
    case 'K':
    case 'k':
        mult = KiB;
        end++;
        break;
    case 'M':
    case 'm':
        mult = MiB;
        end++;
        break;
    case 'G':
    case 'g':
        mult = GiB;
        end++;
        break;
    case 'T':
    case 't':
        mult = 1024 * GiB;
        end++;
        break;
    default:
        return HBC_EINVAL;
    }
    if (*end == 'i' || *end == 'B') { /* accept "8MiB", "8MB" */
        end += (*end == 'i' && end[1] == 'B') ? 2 : 1;
    }
    if (*end != '\0' || (v != 0 && mult > UINT64_MAX / v)) {
        return HBC_EINVAL;
    }
    *out = v * mult;
    return 0;
}

static int parse_addr(const char *s)
{
    unsigned a, b, c, d, port;
    char tail;
    if (sscanf(s, "%u.%u.%u.%u:%u%c", &a, &b, &c, &d, &port, &tail) != 5) {
        return HBC_EINVAL;
    }
    if (a > 255 || b > 255 || c > 255 || d > 255 || port == 0 || port > 65535) {
        return HBC_EINVAL;
    }
    return 0;
}

struct parse_state {
    struct node_config *cfg; /* being filled */
    bool seen[NKEYS];        /* which keys the file set */
    char reason[256];        /* why the handler refused a line */
};

static int set_value(struct node_config *cfg, const struct key_spec *k, const char *value,
                     char *reason, size_t rlen)
{
    char *base = (char *)cfg + k->offset;
    uint64_t n;
    switch (k->type) {
    case KEY_STRING:
    case KEY_ADDR:
    case KEY_OPTADDR:
    case KEY_MEDIA: {
        size_t len = strlen(value);
        if (len < k->min || (k->max != 0 && len > k->max)) {
            snprintf(reason, rlen, "%s.%s: length must be %llu to %llu characters", k->section,
                     k->name, (unsigned long long)k->min, (unsigned long long)k->max);
            return HBC_EINVAL;
        }
        if ((k->type == KEY_ADDR || k->type == KEY_OPTADDR) && parse_addr(value) != 0) {
            snprintf(reason, rlen, "%s.%s: '%s' is not an IPv4 address with a port (a.b.c.d:port)",
                     k->section, k->name, value);
            return HBC_EINVAL;
        }
        if (k->type == KEY_MEDIA && strcmp(value, "ssd") != 0 && strcmp(value, "hdd") != 0 &&
            strcmp(value, "tape") != 0 && strcmp(value, "object") != 0) {
            snprintf(reason, rlen, "%s.%s: '%s' is not one of ssd, hdd, tape, object", k->section,
                     k->name, value);
            return HBC_EINVAL;
        }
        char *copy = hbc_strdup(value);
        if (copy == NULL) {
            snprintf(reason, rlen, "out of memory");
            return HBC_ENOMEM;
        }
        char **slot = (char **)base;
        hbc_free(*slot);
        *slot = copy;
        return 0;
    }
    case KEY_BOOL:
        if (strcmp(value, "true") == 0 || strcmp(value, "yes") == 0 || strcmp(value, "1") == 0) {
            *(bool *)base = true;
        } else if (strcmp(value, "false") == 0 || strcmp(value, "no") == 0 ||
                   strcmp(value, "0") == 0) {
            *(bool *)base = false;
        } else {
            snprintf(reason, rlen, "%s.%s: '%s' is not true or false", k->section, k->name, value);
            return HBC_EINVAL;
        }
        return 0;
    case KEY_SIZE:
    case KEY_U32:
        if (config_parse_size(value, &n) != 0 ||
            (k->type == KEY_U32 && strpbrk(value, "KkMmGgTt") != NULL)) {
            snprintf(reason, rlen, "%s.%s: '%s' is not a %s", k->section, k->name, value,
                     k->type == KEY_SIZE ? "size (e.g. 512K, 64M, 2T)" : "whole number");
            return HBC_EINVAL;
        }
        if (n < k->min || n > k->max) {
            snprintf(reason, rlen, "%s.%s: %s is out of range [%llu, %llu]", k->section, k->name,
                     value, (unsigned long long)k->min, (unsigned long long)k->max);
            return HBC_EINVAL;
        }
        if (k->type == KEY_U32) {
            *(uint32_t *)base = (uint32_t)n;
        } else {
            *(uint64_t *)base = n;
        }
        return 0;
    }
    return HBC_EINVAL;
}

static int ini_cb(void *user, const char *section, const char *name, const char *value)
{
    struct parse_state *st = user;
    for (size_t i = 0; i < NKEYS; i++) {
        if (strcmp(keys[i].section, section) == 0 && strcmp(keys[i].name, name) == 0) {
            if (st->seen[i]) {
                snprintf(st->reason, sizeof st->reason, "%s.%s is set twice", section, name);
                return 0;
            }
            st->seen[i] = true;
            return set_value(st->cfg, &keys[i], value, st->reason, sizeof st->reason) == 0;
        }
    }
    bool known_section = false;
    for (size_t i = 0; i < NKEYS; i++) {
        known_section |= strcmp(keys[i].section, section) == 0;
    }
    if (!known_section) {
        snprintf(st->reason, sizeof st->reason, "unknown section [%s]", section);
    } else {
        snprintf(st->reason, sizeof st->reason, "unknown key '%s' in [%s]", name, section);
    }
    return 0;
}

int node_config_load(struct node_config *cfg, const char *path, struct err *e)
{
    struct parse_state st;
    memset(cfg, 0, sizeof *cfg);
    memset(&st, 0, sizeof st);
    st.cfg = cfg;
    for (size_t i = 0; i < NKEYS; i++) {
        if (keys[i].def != NULL) {
            int rv = set_value(cfg, &keys[i], keys[i].def, st.reason, sizeof st.reason);
            if (rv != 0) {
                node_config_free(cfg);
                return err_setraw(e, HBC_ECONFIG, "%s: default: %s", path, st.reason);
            }
        }
    }
    FILE *f = fopen(path, "r");
    if (f == NULL) {
        int saved = errno;
        node_config_free(cfg);
        return err_setraw(e, -saved, "%s: cannot open: %s", path, strerror(saved));
    }
    int line = ini_parse_file(f, ini_cb, &st);
    fclose(f);
    if (line != 0) {
        node_config_free(cfg);
        if (line < 0) {
            return err_setraw(e, HBC_ECONFIG, "%s: cannot read the file", path);
        }
        return err_setraw(
            e, HBC_ECONFIG, "%s:%d: %s", path, line,
            st.reason[0] != '\0' ? st.reason : "syntax error (expected [section] or key = value)");
    }
    for (size_t i = 0; i < NKEYS; i++) {
        if (keys[i].def == NULL && keys[i].type != KEY_OPTADDR && !st.seen[i]) {
            node_config_free(cfg);
            return err_setraw(e, HBC_ECONFIG, "%s: required key %s.%s is missing (%s)", path,
                              keys[i].section, keys[i].name, keys[i].help);
        }
    }
    if (cfg->max_shard + 4096 > cfg->max_frame) {
        uint64_t max_frame = cfg->max_frame, max_shard = cfg->max_shard;
        node_config_free(cfg);
        return err_setraw(e, HBC_ECONFIG,
                          "%s: data.max_frame (%llu) must exceed store.max_shard (%llu) by 4K",
                          path, (unsigned long long)max_frame, (unsigned long long)max_shard);
    }
    if (cfg->raft_bootstrap && cfg->raft_join != NULL) {
        node_config_free(cfg);
        return err_setraw(e, HBC_ECONFIG, "%s: raft.bootstrap and raft.join exclude each other",
                          path);
    }
    if ((cfg->raft_bootstrap || cfg->raft_join != NULL) && cfg->raft_listen == NULL) {
        node_config_free(cfg);
        return err_setraw(e, HBC_ECONFIG, "%s: raft.bootstrap or raft.join needs raft.listen",
                          path);
    }
    if (cfg->heartbeat_timeout * 5 > cfg->election_timeout) {
        node_config_free(cfg);
        return err_setraw(
            e, HBC_ECONFIG,
            "%s: raft.heartbeat_timeout must be at most a fifth of raft.election_timeout", path);
    }
    return 0;
}

void node_config_free(struct node_config *cfg)
{
    for (size_t i = 0; i < NKEYS; i++) {
        if (keys[i].type == KEY_STRING || keys[i].type == KEY_ADDR || keys[i].type == KEY_MEDIA ||
            keys[i].type == KEY_OPTADDR) {
            char **slot = (char **)((char *)cfg + keys[i].offset);
            hbc_free(*slot);
            *slot = NULL;
        }
    }
}

void node_config_describe(FILE *out)
{
    const char *section = "";
    for (size_t i = 0; i < NKEYS; i++) {
        if (strcmp(section, keys[i].section) != 0) {
            section = keys[i].section;
            fprintf(out, "%s[%s]\n", i == 0 ? "" : "\n", section);
        }
        fprintf(out, "# %s\n", keys[i].help);
        if (keys[i].def == NULL && keys[i].type == KEY_OPTADDR) {
            fprintf(out, "# %s = (unset)\n", keys[i].name);
        } else if (keys[i].def == NULL) {
            fprintf(out, "# %s = (required)\n", keys[i].name);
        } else {
            fprintf(out, "# %s = %s\n", keys[i].name, keys[i].def);
        }
    }
}
