/*
 * Whole plaintext objects replicated on every node (reference lists), and the
 * cluster's GC fence index. The happy path: one PutShards of a k=1, m=0 shard
 * to each node in parallel; a get asks the nodes in turn until one returns a
 * copy whose SHA-256 is its id. Failure modes: nodes that refuse or do not
 * answer (a put needs a majority), copies that fail their checks (skipped).
 */
#include <stdio.h>
#include <string.h>

#include <openssl/evp.h>

#include "client/repo_internal.h"
#include "common/alloc.h"
#include "common/erasure.h"
#include "common/frame.h"

/* SHA-256 of data into out. */
static int sha256(const void *data, size_t len, uint8_t out[REPO_CHUNK_ID], struct err *e)
{
    unsigned int n = 0;
    if (EVP_Digest(data, len, out, &n, EVP_sha256(), NULL) != 1 || n != REPO_CHUNK_ID) {
        return err_openssl(e, HBC_ECRYPTO, "sha-256");
    }
    return 0;
}

int repo_plain_id(const void *data, size_t len, uint8_t id[REPO_CHUNK_ID], struct err *e)
{
    return sha256(data, len, id, e);
}

int repo_put_plain(struct repo *r, const uint8_t id[REPO_CHUNK_ID], const void *data, size_t len,
                   unsigned *stored, struct err *e)
{
    if (stored != NULL) {
        *stored = 0;
    }
    if (!r->has_vault) {
        return err_setraw(e, HBC_EINVAL, "put plain object: no vault is open");
    }
    if (r->nnodes == 0) {
        return err_setraw(e, HBC_EUNAVAILABLE, "put plain object: the cluster lists no node");
    }
    struct erasure_shard_info info = {
        .k = 1, .m = 0, .index = 0, .object_length = len, .shard_length = len};
    memcpy(info.vault_id, r->vault_id, REPO_ID_LEN);
    memcpy(info.chunk_id, id, REPO_CHUNK_ID);
    uint8_t *blob = NULL;
    size_t blen = 0;
    int rv = erasure_shard_encode(&info, data, &blob, &blen, e);
    if (rv != 0) {
        return err_wrap_code(e, rv, "put plain object");
    }
    struct node_client_shard sh = {
        .vault_id = r->vault_id, .chunk_id = id, .index = 0, .data = blob, .len = blen};
    struct repo_req *q = hbc_calloc(r->nnodes, sizeof *q);
    if (q == NULL) {
        hbc_free(blob);
        return err_set(e, HBC_ENOMEM, "put plain object");
    }
    for (size_t i = 0; i < r->nnodes; i++) {
        q[i].addr = r->nodes[i].addr;
        q[i].node_id = r->nodes[i].node_id;
        q[i].kind = REPO_REQ_PUT;
        q[i].shards = &sh;
        q[i].nshards = 1;
    }
    repo_net_run(r->net, q, r->nnodes);
    unsigned ok = 0;
    const char *why = "no node answered";
    for (size_t i = 0; i < r->nnodes; i++) {
        if (q[i].status == 0) {
            ok++;
        } else {
            why = q[i].msg;
        }
        frame_free(q[i].reply);
    }
    size_t need = r->nnodes / 2 + 1;
    if (ok < need) {
        rv = err_setraw(e, HBC_EUNAVAILABLE,
                        "put plain object: stored on %u of %zu nodes, %zu needed (%.200s)", ok,
                        r->nnodes, need, why);
    }
    if (stored != NULL) {
        *stored = ok;
    }
    hbc_free(q);
    hbc_free(blob);
    return rv;
}

int repo_get_plain(struct repo *r, const uint8_t id[REPO_CHUNK_ID], uint8_t **data, size_t *len,
                   struct err *e)
{
    *data = NULL;
    *len = 0;
    if (!r->has_vault) {
        return err_setraw(e, HBC_EINVAL, "get plain object: no vault is open");
    }
    struct node_client_key key = {.vault_id = r->vault_id, .chunk_id = id, .index = 0};
    int last = HBC_ENOTFOUND;
    char why[256] = "no node holds it";
    for (size_t i = 0; i < r->nnodes; i++) {
        struct repo_req q = {.addr = r->nodes[i].addr,
                             .node_id = r->nodes[i].node_id,
                             .kind = REPO_REQ_GET,
                             .keys = &key,
                             .nkeys = 1};
        repo_net_run(r->net, &q, 1);
        if (q.status != 0) {
            last = q.status;
            snprintf(why, sizeof why, "%s", q.msg);
            continue;
        }
        const Hbc__GetShardsReply *g = q.reply->get_shards_reply;
        if (g == NULL || g->n_shards != 1) {
            frame_free(q.reply);
            continue;
        }
        struct erasure_shard_info info;
        const uint8_t *payload = NULL;
        struct err de;
        uint8_t sum[REPO_CHUNK_ID];
        const ProtobufCBinaryData *b = &g->shards[0]->data;
        if (erasure_shard_decode(b->data, b->len, &info, &payload, &de) != 0 || info.k != 1 ||
            info.m != 0 || memcmp(info.vault_id, r->vault_id, REPO_ID_LEN) != 0 ||
            memcmp(info.chunk_id, id, REPO_CHUNK_ID) != 0 ||
            sha256(payload, (size_t)info.shard_length, sum, &de) != 0 ||
            memcmp(sum, id, REPO_CHUNK_ID) != 0) {
            last = HBC_ECORRUPT;
            snprintf(why, sizeof why, "node %s returned a copy that fails its checks",
                     r->nodes[i].node_id);
            frame_free(q.reply);
            continue;
        }
        uint8_t *out = hbc_malloc(info.shard_length > 0 ? (size_t)info.shard_length : 1);
        if (out == NULL) {
            frame_free(q.reply);
            return err_set(e, HBC_ENOMEM, "get plain object");
        }
        memcpy(out, payload, (size_t)info.shard_length);
        *data = out;
        *len = (size_t)info.shard_length;
        frame_free(q.reply);
        return 0;
    }
    return err_setraw(e, last, "get plain object: %s", why);
}

int repo_gc_safe_index(struct repo *r, uint64_t *index, struct err *e)
{
    *index = 0;
    if (r->nnodes == 0) {
        return err_setraw(e, HBC_EUNAVAILABLE, "gc fence: the cluster lists no node");
    }
    struct repo_req *q = hbc_calloc(r->nnodes, sizeof *q);
    Hbc__Frame *reqs = hbc_calloc(r->nnodes, sizeof *reqs);
    Hbc__StatusRequest st = HBC__STATUS_REQUEST__INIT;
    if (q == NULL || reqs == NULL) {
        hbc_free(q);
        hbc_free(reqs);
        return err_set(e, HBC_ENOMEM, "gc fence");
    }
    for (size_t i = 0; i < r->nnodes; i++) {
        hbc__frame__init(&reqs[i]);
        reqs[i].body_case = HBC__FRAME__BODY_STATUS;
        reqs[i].status = &st;
        q[i].addr = r->nodes[i].addr;
        q[i].node_id = r->nodes[i].node_id;
        q[i].kind = REPO_REQ_FRAME;
        q[i].frame = &reqs[i];
        q[i].expect = HBC__FRAME__BODY_STATUS_REPLY;
    }
    repo_net_run(r->net, q, r->nnodes);
    uint64_t min = UINT64_MAX;
    size_t answered = 0;
    for (size_t i = 0; i < r->nnodes; i++) {
        if (q[i].status == 0) {
            answered++;
            /* A node without a state machine reports none: it applies no sweep, deletes nothing. */
            const Hbc__StatusReply *s = q[i].reply->status_reply;
            if (s->has_gc_safe_index && s->gc_safe_index < min) {
                min = s->gc_safe_index;
            }
        }
        frame_free(q[i].reply);
    }
    hbc_free(q);
    hbc_free(reqs);
    if (answered == 0) {
        return err_setraw(e, HBC_EUNAVAILABLE, "gc fence: no node answered a status request");
    }
    *index = min == UINT64_MAX ? 0 : min;
    return 0;
}
