/*
 * hbc-gc-probe: what garbage collection tests look at, read from real nodes.
 *
 *   --status              the node's StatusReply (shards, bytes, GC counters) as JSON
 *   --list VAULT          every chunk id the node holds in the vault (GcListChunks; needs a
 *                         node certificate)
 *   --live VAULT          every id the vault's present snapshots reference: their reference
 *                         lists (read from the node at --addr) and the lists' own object ids
 *
 * Output: one JSON document on stdout. Exit 0, or 1 with a message on stderr.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>
#include <openssl/evp.h>

#include "common/alloc.h"
#include "common/erasure.h"
#include "common/frame.h"
#include "common/reflist.h"
#include "common/rpc_call.h"
#include "common/tls.h"

static struct tls_ctx *tls;
static const char *addr;
static uint64_t next_id = 1;

static void hex(const uint8_t *p, size_t n, char *out)
{
    for (size_t i = 0; i < n; i++) {
        sprintf(out + 2 * i, "%02x", p[i]);
    }
    out[2 * n] = '\0';
}

static Hbc__Frame *call(Hbc__Frame *req, Hbc__Frame__BodyCase expect)
{
    struct err e;
    Hbc__Frame *rep = NULL;
    req->request_id = next_id++;
    if (rpc_call(tls, addr, req, 30000, &rep, &e) != 0) {
        fprintf(stderr, "hbc-gc-probe: %s\n", e.msg);
        exit(1);
    }
    if (rep->body_case != expect) {
        fprintf(stderr, "hbc-gc-probe: unexpected reply %d (%s)\n", rep->body_case,
                rep->body_case == HBC__FRAME__BODY_ERROR ? rep->error->message : "");
        exit(1);
    }
    return rep;
}

static void vault_id(const char *name, uint8_t out[16])
{
    Hbc__Frame req = HBC__FRAME__INIT;
    Hbc__ListVaultsRequest lv = HBC__LIST_VAULTS_REQUEST__INIT;
    req.body_case = HBC__FRAME__BODY_LIST_VAULTS;
    req.list_vaults = &lv;
    Hbc__Frame *rep = call(&req, HBC__FRAME__BODY_LIST_VAULTS_REPLY);
    for (size_t i = 0; i < rep->list_vaults_reply->n_vaults; i++) {
        Hbc__VaultInfo *v = rep->list_vaults_reply->vaults[i];
        if (strcmp(v->name, name) == 0) {
            memcpy(out, v->vault_id.data, 16);
            frame_free(rep);
            return;
        }
    }
    fprintf(stderr, "hbc-gc-probe: no vault %s\n", name);
    exit(1);
}

static void status(void)
{
    Hbc__Frame req = HBC__FRAME__INIT;
    Hbc__StatusRequest st = HBC__STATUS_REQUEST__INIT;
    req.body_case = HBC__FRAME__BODY_STATUS;
    req.status = &st;
    Hbc__Frame *rep = call(&req, HBC__FRAME__BODY_STATUS_REPLY);
    const Hbc__StatusReply *s = rep->status_reply;
    json_t *o = json_pack("{s:s, s:I, s:I, s:I, s:I, s:I, s:I}", "node", s->node_id, "used_bytes",
                          (json_int_t)s->used_bytes, "shard_count", (json_int_t)s->shard_count,
                          "bytes_on_disk", (json_int_t)s->bytes_on_disk, "gc_safe_index",
                          (json_int_t)s->gc_safe_index, "gc_deleted_shards",
                          (json_int_t)s->gc_deleted_shards, "gc_freed_bytes",
                          (json_int_t)s->gc_freed_bytes);
    json_dumpf(o, stdout, JSON_COMPACT);
    printf("\n");
    json_decref(o);
    frame_free(rep);
}

static void list(const char *name)
{
    uint8_t vid[16];
    vault_id(name, vid);
    json_t *ids = json_array();
    uint8_t after[32];
    bool has_after = false;
    for (;;) {
        Hbc__Frame req = HBC__FRAME__INIT;
        Hbc__GcListChunks lc = HBC__GC_LIST_CHUNKS__INIT;
        lc.vault_id = (ProtobufCBinaryData){16, vid};
        if (has_after) {
            lc.has_after = true;
            lc.after = (ProtobufCBinaryData){32, after};
        }
        req.body_case = HBC__FRAME__BODY_GC_LIST_CHUNKS;
        req.gc_list_chunks = &lc;
        Hbc__Frame *rep = call(&req, HBC__FRAME__BODY_GC_LIST_CHUNKS_REPLY);
        const Hbc__GcListChunksReply *r = rep->gc_list_chunks_reply;
        for (size_t i = 0; i < r->n_chunk_ids; i++) {
            char h[65];
            hex(r->chunk_ids[i].data, 32, h);
            json_array_append_new(ids, json_string(h));
        }
        bool more = r->has_more && r->more && r->n_chunk_ids > 0;
        if (more) {
            memcpy(after, r->chunk_ids[r->n_chunk_ids - 1].data, 32);
            has_after = true;
        }
        frame_free(rep);
        if (!more) {
            break;
        }
    }
    json_t *o = json_pack("{s:o}", "chunks", ids);
    json_dumpf(o, stdout, JSON_COMPACT);
    printf("\n");
    json_decref(o);
}

/* One reference-list object, checked against its id; exits on failure. */
static uint8_t *fetch(const uint8_t vid[16], const uint8_t id[32], size_t *len)
{
    Hbc__Frame req = HBC__FRAME__INIT;
    Hbc__GetShards gs = HBC__GET_SHARDS__INIT;
    Hbc__ShardKey key = HBC__SHARD_KEY__INIT;
    Hbc__ShardKey *kp = &key;
    key.vault_id = (ProtobufCBinaryData){16, (uint8_t *)vid};
    key.chunk_id = (ProtobufCBinaryData){32, (uint8_t *)id};
    gs.keys = &kp;
    gs.n_keys = 1;
    req.body_case = HBC__FRAME__BODY_GET_SHARDS;
    req.get_shards = &gs;
    Hbc__Frame *rep = call(&req, HBC__FRAME__BODY_GET_SHARDS_REPLY);
    if (rep->get_shards_reply->n_shards != 1) {
        fprintf(stderr, "hbc-gc-probe: the node does not hold a reference list\n");
        exit(1);
    }
    struct erasure_shard_info info;
    const uint8_t *payload;
    struct err e;
    const ProtobufCBinaryData *b = &rep->get_shards_reply->shards[0]->data;
    uint8_t sum[32];
    unsigned int sn = 0;
    if (erasure_shard_decode(b->data, b->len, &info, &payload, &e) != 0 ||
        EVP_Digest(payload, info.shard_length, sum, &sn, EVP_sha256(), NULL) != 1 ||
        memcmp(sum, id, 32) != 0) {
        fprintf(stderr, "hbc-gc-probe: a reference list fails its checks\n");
        exit(1);
    }
    uint8_t *out = malloc(info.shard_length);
    memcpy(out, payload, info.shard_length);
    *len = info.shard_length;
    frame_free(rep);
    return out;
}

static void add_ids(json_t *set, const uint8_t (*ids)[32], size_t n)
{
    for (size_t i = 0; i < n; i++) {
        char h[65];
        hex(ids[i], 32, h);
        json_object_set_new(set, h, json_true());
    }
}

static void live(const char *name)
{
    uint8_t vid[16];
    vault_id(name, vid);
    Hbc__Frame req = HBC__FRAME__INIT;
    Hbc__ListSnapshotsRequest ls = HBC__LIST_SNAPSHOTS_REQUEST__INIT;
    ls.has_vault_id = true;
    ls.vault_id = (ProtobufCBinaryData){16, vid};
    req.body_case = HBC__FRAME__BODY_LIST_SNAPSHOTS;
    req.list_snapshots = &ls;
    Hbc__Frame *rep = call(&req, HBC__FRAME__BODY_LIST_SNAPSHOTS_REPLY);
    json_t *set = json_object();
    json_t *snaps = json_array();
    for (size_t i = 0; i < rep->list_snapshots_reply->n_snapshots; i++) {
        const Hbc__SnapshotInfo *s = rep->list_snapshots_reply->snapshots[i];
        char sh[33];
        hex(s->snapshot_id.data, 16, sh);
        json_array_append_new(snaps, json_string(sh));
        size_t len;
        uint8_t *buf = fetch(vid, s->ref_list_id.data, &len);
        const uint8_t(*parts)[32];
        const uint8_t(*ids)[32];
        size_t np, n;
        struct err e;
        if (reflist_decode(buf, len, &parts, &np, &ids, &n, &e) != 0) {
            fprintf(stderr, "hbc-gc-probe: %s\n", e.msg);
            exit(1);
        }
        add_ids(set, ids, n);
        add_ids(set, (const uint8_t(*)[32])s->ref_list_id.data, 1);
        for (size_t p = 0; p < np; p++) {
            size_t plen;
            uint8_t *pb = fetch(vid, parts[p], &plen);
            const uint8_t(*pp)[32];
            const uint8_t(*pids)[32];
            size_t npp, pn;
            if (reflist_decode(pb, plen, &pp, &npp, &pids, &pn, &e) != 0) {
                fprintf(stderr, "hbc-gc-probe: %s\n", e.msg);
                exit(1);
            }
            add_ids(set, pids, pn);
            add_ids(set, (const uint8_t(*)[32])parts[p], 1);
            free(pb);
        }
        free(buf);
    }
    frame_free(rep);
    json_t *arr = json_array();
    const char *k;
    json_t *v;
    json_object_foreach(set, k, v)
    {
        json_array_append_new(arr, json_string(k));
    }
    json_decref(set);
    json_t *o = json_pack("{s:o, s:o}", "snapshots", snaps, "chunks", arr);
    json_dumpf(o, stdout, JSON_COMPACT);
    printf("\n");
    json_decref(o);
}

int main(int argc, char **argv)
{
    const char *ca = NULL, *cert = NULL, *key = NULL, *mode = NULL, *vault = NULL;
    for (int i = 1; i < argc; i++) {
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (strcmp(argv[i], "--addr") == 0 && v) {
            addr = argv[++i];
        } else if (strcmp(argv[i], "--ca") == 0 && v) {
            ca = argv[++i];
        } else if (strcmp(argv[i], "--cert") == 0 && v) {
            cert = argv[++i];
        } else if (strcmp(argv[i], "--key") == 0 && v) {
            key = argv[++i];
        } else if (strcmp(argv[i], "--status") == 0) {
            mode = "status";
        } else if ((strcmp(argv[i], "--list") == 0 || strcmp(argv[i], "--live") == 0) && v) {
            mode = argv[i] + 2;
            vault = argv[++i];
        } else {
            fprintf(stderr, "usage: hbc-gc-probe --addr A --ca F --cert F --key F "
                            "(--status | --list VAULT | --live VAULT)\n");
            return 2;
        }
    }
    if (addr == NULL || ca == NULL || cert == NULL || key == NULL || mode == NULL) {
        fprintf(stderr, "hbc-gc-probe: --addr, --ca, --cert, --key and a mode are required\n");
        return 2;
    }
    struct tls_ctx_opts to = {.ca_file = ca, .cert_file = cert, .key_file = key};
    struct err e;
    if (tls_ctx_new(&to, &tls, &e) != 0) {
        fprintf(stderr, "hbc-gc-probe: %s\n", e.msg);
        return 1;
    }
    if (strcmp(mode, "status") == 0) {
        status();
    } else if (strcmp(mode, "list") == 0) {
        list(vault);
    } else {
        live(vault);
    }
    tls_ctx_free(tls);
    return 0;
}
