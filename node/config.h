/* hbcd's configuration file: an INI file read with inih, every key checked. */
#ifndef HBC_NODE_CONFIG_H
#define HBC_NODE_CONFIG_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include "common/err.h"

/* The whole configuration of one node, defaults filled in. Strings are owned. */
struct node_config {
    char *node_id;              /* [node] id: unique name; matches the certificate CN */
    char *data_dir;             /* [node] data_dir: shard store, index and Raft data */
    char *site;                 /* [node] site: failure domain, e.g. a building */
    char *region;               /* [node] region: a group of sites */
    char *media;                /* [node] media: ssd, hdd, tape or object */
    bool worm;                  /* [node] worm: the node can hold immutable copies */
    uint64_t capacity;          /* [node] capacity: bytes the store may use */
    char *listen;               /* [data] listen: data-plane address, ip:port */
    uint64_t max_frame;         /* [data] max_frame: largest frame accepted, bytes */
    uint32_t max_connections;   /* [data] max_connections: open connections at most */
    uint32_t idle_timeout;      /* [data] idle_timeout: seconds before an idle peer is closed */
    uint32_t handshake_timeout; /* [data] handshake_timeout: seconds to finish TLS */
    uint64_t conn_buffer;  /* [data] conn_buffer: per-connection memory before reading pauses */
    char *tls_ca;          /* [tls] ca: the cluster CA certificate (PEM) */
    char *tls_cert;        /* [tls] cert: this node's certificate (PEM) */
    char *tls_key;         /* [tls] key: this node's private key (PEM) */
    uint64_t segment_size; /* [store] segment_size: bytes per segment file */
    uint64_t max_shard;    /* [store] max_shard: largest encoded shard accepted */
    uint32_t commit_max_shards; /* [store] commit_max_shards: puts per group commit at most */
    uint64_t commit_max_bytes;  /* [store] commit_max_bytes: bytes per group commit at most */
    char *raft_listen;          /* [raft] listen: Raft address, ip:port; NULL = data plane only */
    bool raft_bootstrap;        /* [raft] bootstrap: start a new cluster with this node as voter */
    char *raft_join;            /* [raft] join: data-plane address of a member to join through */
    uint32_t election_timeout; /* [raft] election_timeout: ms without a leader before an election */
    uint32_t heartbeat_timeout;  /* [raft] heartbeat_timeout: ms between leader heartbeats */
    uint32_t snapshot_threshold; /* [raft] snapshot_threshold: entries between Raft snapshots */
    uint32_t snapshot_trailing;  /* [raft] snapshot_trailing: entries kept after a snapshot */
    uint32_t max_voters;         /* [raft] max_voters: voters at most; later nodes are standbys */
    uint64_t raft_segment_size;  /* [raft] segment_size: bytes per Raft log segment */
    uint32_t max_skew;           /* [clock] max_skew: s the leader may differ from voters' median */
    uint32_t gc_grace;           /* [gc] grace: seconds an unreferenced chunk is kept at least */
    uint32_t gc_interval;        /* [gc] interval: seconds between GC cycles (0: on demand only) */
    uint64_t move_rate;          /* [placement] move_rate: mover bytes per second at most */
    uint32_t move_interval;      /* [placement] move_interval: ms between mover passes */
    uint32_t down_after;         /* [placement] down_after: s without contact before DOWN */
    uint32_t cleanup_after;      /* [placement] cleanup_after: s settled before old shards go */
};

/*
 * Read path into cfg (which is reset first). Unknown sections or keys, bad
 * values and missing required keys fail with HBC_ECONFIG and a message naming
 * the file, the line and the reason.
 */
int node_config_load(struct node_config *cfg, const char *path, struct err *e);

/* Free the strings in cfg; cfg itself is the caller's. */
void node_config_free(struct node_config *cfg);

/* Print every key with its default and meaning, as INI comments. */
void node_config_describe(FILE *out);

/* Parse "12", "64K", "8M", "2G", "1T" (powers of 1024) into *out. 0 or HBC_EINVAL. */
int config_parse_size(const char *s, uint64_t *out);

#endif /* HBC_NODE_CONFIG_H */
