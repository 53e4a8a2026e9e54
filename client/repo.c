/*
 * The repo handle: opening (key file, cluster node list, vault keys), vault
 * creation and listing, and the metadata requests (snapshots, restore
 * tests) that go through Raft with leader redirects and retries.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/crypto.h>

#include "client/repo_internal.h"
#include "common/alloc.h"
#include "common/erasure.h"
#include "common/frame.h"
#include "common/keys.h"
#include "common/log.h"

#define REPO_DEFAULT_TIMEOUT_MS 30000u
#define REPO_DEFAULT_INFLIGHT_MB 256u
/* Pause between rounds over every address while no leader is known. */
#define REPO_RETRY_PAUSE_MS 250

static uint64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static void sleep_ms(unsigned ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* A deep copy of any message through its wire form, freeable with
 * protobuf_c_message_free_unpacked(). */
static void *msg_dup(const ProtobufCMessage *m)
{
    size_t len = protobuf_c_message_get_packed_size(m);
    uint8_t *buf = hbc_malloc(len > 0 ? len : 1);
    if (buf == NULL) {
        return NULL;
    }
    protobuf_c_message_pack(m, buf);
    void *copy = protobuf_c_message_unpack(m->descriptor, NULL, len, buf);
    hbc_free(buf);
    return copy;
}

/* Statuses after which another node may well answer. */
static bool retryable(int status)
{
    return status == HBC_ECANCELED || status == HBC_EUNAVAILABLE || status == HBC_ETLS ||
           status == HBC_EBUSY || status == HBC_ENOTLEADER || status == -ETIMEDOUT ||
           status == -ECONNREFUSED || status == -ECONNRESET;
}

/* The addresses to try for control requests: the nodes, then the addresses given. */
static size_t control_targets(const struct repo *r, const char **out, size_t cap)
{
    size_t n = 0;
    for (size_t i = 0; i < r->nnodes && n < cap; i++) {
        out[n++] = r->nodes[i].addr;
    }
    for (size_t i = 0; i < r->naddrs && n < cap; i++) {
        bool dup = false;
        for (size_t j = 0; j < n && !dup; j++) {
            dup = strcmp(out[j], r->addrs[i]) == 0;
        }
        if (!dup) {
            out[n++] = r->addrs[i];
        }
    }
    return n;
}

int repo_control(struct repo *r, Hbc__Frame *req, Hbc__Frame__BodyCase expect, Hbc__Frame **reply,
                 struct err *e)
{
    const char *targets[256];
    size_t ntargets = control_targets(r, targets, 256);
    uint64_t deadline = mono_ms() + r->timeout_ms;
    size_t next = 0;
    int last = HBC_EUNAVAILABLE;
    char why[300] = "no node answered";
    unsigned redirects = 0;
    *reply = NULL;
    while (ntargets > 0) {
        char addr[64];
        uv_mutex_lock(&r->mu);
        snprintf(addr, sizeof addr, "%s", r->leader[0] != '\0' ? r->leader : targets[next]);
        bool from_hint = r->leader[0] != '\0';
        uv_mutex_unlock(&r->mu);
        if (!from_hint) {
            next++;
        }
        struct repo_req q = {.addr = addr, .kind = REPO_REQ_FRAME, .frame = req, .expect = expect};
        repo_net_run(r->net, &q, 1);
        bool forget = false;
        if (q.status != 0) {
            last = q.status;
            snprintf(why, sizeof why, "%s", q.msg);
            if (!retryable(q.status)) {
                return err_setraw(e, q.status, "%s", q.msg);
            }
            forget = true;
        } else if (q.reply->body_case == HBC__FRAME__BODY_PROPOSE_REPLY &&
                   (q.reply->propose_reply->code == HBC_ENOTLEADER ||
                    q.reply->propose_reply->code == HBC_EUNAVAILABLE)) {
            const Hbc__ProposeReply *p = q.reply->propose_reply;
            last = p->code;
            snprintf(why, sizeof why, "%s: %s", addr, p->message);
            forget = true;
            if (p->code == HBC_ENOTLEADER && p->leader_address != NULL &&
                p->leader_address[0] != '\0' && strcmp(p->leader_address, addr) != 0 &&
                redirects < 8) {
                uv_mutex_lock(&r->mu);
                snprintf(r->leader, sizeof r->leader, "%s", p->leader_address);
                uv_mutex_unlock(&r->mu);
                redirects++;
                forget = false;
            }
            frame_free(q.reply);
        } else {
            if (expect == HBC__FRAME__BODY_PROPOSE_REPLY || q.reply->body_case == expect) {
                /* Whoever answered a proposal or a current read is the leader (or was). */
                if (expect == HBC__FRAME__BODY_PROPOSE_REPLY ||
                    expect == HBC__FRAME__BODY_LIST_VAULTS_REPLY ||
                    expect == HBC__FRAME__BODY_LIST_SNAPSHOTS_REPLY) {
                    uv_mutex_lock(&r->mu);
                    snprintf(r->leader, sizeof r->leader, "%s", addr);
                    uv_mutex_unlock(&r->mu);
                }
                *reply = q.reply;
                return 0;
            }
            /* A refusal in a ProposeReply for a read (not leader handled above). */
            const char *msg = q.reply->body_case == HBC__FRAME__BODY_PROPOSE_REPLY
                                  ? q.reply->propose_reply->message
                                  : "unexpected reply";
            int code = q.reply->body_case == HBC__FRAME__BODY_PROPOSE_REPLY
                           ? q.reply->propose_reply->code
                           : HBC_EPROTO;
            err_setraw(e, code != 0 ? code : HBC_EPROTO, "%s: %s", addr, msg);
            frame_free(q.reply);
            return e != NULL ? e->code : (code != 0 ? code : HBC_EPROTO);
        }
        if (forget) {
            uv_mutex_lock(&r->mu);
            if (strcmp(r->leader, addr) == 0) {
                r->leader[0] = '\0';
            }
            uv_mutex_unlock(&r->mu);
        }
        if (mono_ms() >= deadline) {
            break;
        }
        if (next >= ntargets) {
            /* Every node tried: an election may be running. */
            next = 0;
            redirects = 0;
            sleep_ms(REPO_RETRY_PAUSE_MS);
        }
    }
    return err_setraw(e, last == HBC_ENOTLEADER ? HBC_EUNAVAILABLE : last,
                      "no leader answered within %u ms (last: %s)", r->timeout_ms, why);
}

/* Propose cmd; on 0 *code is the state machine's answer and *index its Raft index. */
static int propose(struct repo *r, Hbc__Command *cmd, int *code, char *msg, size_t msg_len,
                   uint64_t *index, struct err *e)
{
    Hbc__Frame req = HBC__FRAME__INIT;
    Hbc__ProposeRequest pr = HBC__PROPOSE_REQUEST__INIT;
    pr.command = cmd;
    req.body_case = HBC__FRAME__BODY_PROPOSE;
    req.propose = &pr;
    Hbc__Frame *reply = NULL;
    int rv = repo_control(r, &req, HBC__FRAME__BODY_PROPOSE_REPLY, &reply, e);
    if (rv != 0) {
        return rv;
    }
    if (reply->body_case != HBC__FRAME__BODY_PROPOSE_REPLY) {
        frame_free(reply);
        return err_setraw(e, HBC_EPROTO, "proposal answered with the wrong kind of reply");
    }
    *code = reply->propose_reply->code;
    snprintf(msg, msg_len, "%s", reply->propose_reply->message);
    if (index != NULL) {
        *index = reply->propose_reply->has_index ? reply->propose_reply->index : 0;
    }
    frame_free(reply);
    return 0;
}

/* Read every vault (current: through the leader's barrier). reply holds them; frame_free it. */
static int list_vaults(struct repo *r, Hbc__Frame **reply, struct err *e)
{
    Hbc__Frame req = HBC__FRAME__INIT;
    Hbc__ListVaultsRequest lv = HBC__LIST_VAULTS_REQUEST__INIT;
    lv.has_current = true;
    lv.current = true;
    req.body_case = HBC__FRAME__BODY_LIST_VAULTS;
    req.list_vaults = &lv;
    int rv = repo_control(r, &req, HBC__FRAME__BODY_LIST_VAULTS_REPLY, reply, e);
    if (rv != 0) {
        err_wrap(e, "list vaults");
    }
    return rv;
}

static int node_cmp(const void *a, const void *b)
{
    return strcmp(((const struct repo_node *)a)->node_id, ((const struct repo_node *)b)->node_id);
}

/* Take the node list from the first address that answers a cluster status request. */
static int load_nodes(struct repo *r, struct err *e)
{
    char why[300] = "no address given";
    int last = HBC_EUNAVAILABLE;
    for (size_t a = 0; a < r->naddrs; a++) {
        Hbc__Frame req = HBC__FRAME__INIT;
        Hbc__ClusterStatusRequest cs = HBC__CLUSTER_STATUS_REQUEST__INIT;
        req.body_case = HBC__FRAME__BODY_CLUSTER_STATUS;
        req.cluster_status = &cs;
        struct repo_req q = {.addr = r->addrs[a],
                             .kind = REPO_REQ_FRAME,
                             .frame = &req,
                             .expect = HBC__FRAME__BODY_CLUSTER_STATUS_REPLY};
        repo_net_run(r->net, &q, 1);
        if (q.status != 0) {
            last = q.status;
            snprintf(why, sizeof why, "%s", q.msg);
            continue;
        }
        if (q.reply->body_case != HBC__FRAME__BODY_CLUSTER_STATUS_REPLY) {
            snprintf(why, sizeof why, "%s: %s", r->addrs[a],
                     q.reply->body_case == HBC__FRAME__BODY_PROPOSE_REPLY
                         ? q.reply->propose_reply->message
                         : "unexpected reply");
            frame_free(q.reply);
            continue;
        }
        const Hbc__ClusterStatusReply *s = q.reply->cluster_status_reply;
        size_t n = 0;
        /* Room for nodes that join while the vault is open (repo_map_refresh appends). */
        r->nodes_cap = s->n_nodes + 256;
        r->nodes = hbc_calloc(r->nodes_cap, sizeof *r->nodes);
        if (r->nodes == NULL) {
            frame_free(q.reply);
            return err_set(e, HBC_ENOMEM, "node list");
        }
        for (size_t i = 0; i < s->n_nodes; i++) {
            const Hbc__NodeInfo *ni = s->nodes[i];
            /* Nodes still joining hold nothing yet; every other node keeps its place. */
            if (ni->state == HBC__NODE_STATE__NODE_JOINING) {
                continue;
            }
            struct repo_node *rn = &r->nodes[n];
            rn->node_id = hbc_strdup(ni->node_id);
            rn->addr = hbc_strdup(ni->data_address);
            rn->site = hbc_strdup(ni->site);
            rn->region = hbc_strdup(ni->region);
            rn->media = hbc_strdup(ni->media);
            rn->worm = ni->worm;
            rn->capacity = ni->capacity_bytes;
            n++;
            if (rn->node_id == NULL || rn->addr == NULL || rn->site == NULL || rn->region == NULL ||
                rn->media == NULL) {
                r->nnodes = n;
                frame_free(q.reply);
                return err_set(e, HBC_ENOMEM, "node list");
            }
        }
        r->nnodes = n;
        frame_free(q.reply);
        if (n == 0) {
            last = HBC_EUNAVAILABLE;
            snprintf(why, sizeof why, "%s knows no member nodes (is the metadata plane running?)",
                     r->addrs[a]);
            continue;
        }
        qsort(r->nodes, n, sizeof *r->nodes, node_cmp);
        for (size_t i = 1; i < n; i++) {
            if (strcmp(r->nodes[i - 1].node_id, r->nodes[i].node_id) == 0) {
                return err_setraw(e, HBC_EPROTO, "the node list names %s twice",
                                  r->nodes[i].node_id);
            }
        }
        r->pnodes = hbc_calloc(n, sizeof *r->pnodes);
        r->polnodes = hbc_calloc(n, sizeof *r->polnodes);
        if (r->pnodes == NULL || r->polnodes == NULL) {
            return err_set(e, HBC_ENOMEM, "node list");
        }
        for (size_t i = 0; i < n; i++) {
            r->pnodes[i] = (struct placement_node){.node_id = r->nodes[i].node_id,
                                                   .site = r->nodes[i].site,
                                                   .capacity = r->nodes[i].capacity};
            r->polnodes[i] = (struct policy_node){.node_id = r->nodes[i].node_id,
                                                  .site = r->nodes[i].site,
                                                  .region = r->nodes[i].region,
                                                  .media = r->nodes[i].media,
                                                  .worm = r->nodes[i].worm,
                                                  .up = true,
                                                  .capacity = r->nodes[i].capacity};
        }
        return 0;
    }
    (void)last;
    return err_setraw(e, HBC_EUNAVAILABLE, "no node of the cluster answered (last: %s)", why);
}

static void hex(const uint8_t *p, size_t n, char *out)
{
    for (size_t i = 0; i < n; i++) {
        sprintf(out + 2 * i, "%02x", p[i]);
    }
}

/* Find the vault called name and unwrap its keys with the KEK. */
static int open_vault(struct repo *r, const char *name, struct err *e)
{
    Hbc__Frame *reply = NULL;
    int rv = list_vaults(r, &reply, e);
    if (rv != 0) {
        return rv;
    }
    const Hbc__ListVaultsReply *l = reply->list_vaults_reply;
    const Hbc__VaultInfo *v = NULL;
    for (size_t i = 0; i < l->n_vaults && v == NULL; i++) {
        if (strcmp(l->vaults[i]->name, name) == 0) {
            v = l->vaults[i];
        }
    }
    uint8_t data_key[CRYPTO_KEY_LEN];
    uint8_t id_key[CRYPTO_KEY_LEN];
    if (v == NULL) {
        rv = err_setraw(e, HBC_ENOTFOUND, "no vault named '%s' (see hbc vault list)", name);
        goto out;
    }
    if (v->vault_id.len != REPO_ID_LEN || v->copies < 1 || v->copies > PLACEMENT_MAX_COPIES ||
        v->k < 1 || v->k > ERASURE_MAX_K || v->m > ERASURE_MAX_M) {
        rv = err_setraw(e, HBC_EFORMAT, "vault '%s': malformed record (copies %u, k %u, m %u)",
                        name, v->copies, v->k, v->m);
        goto out;
    }
    if (!v->has_wrapped_data_key || !v->has_wrapped_chunk_id_key) {
        rv = err_setraw(e, HBC_EFORMAT, "vault '%s' has no keys on record", name);
        goto out;
    }
    if (v->policy != NULL) {
        struct err pe;
        rv = policy_from_proto(v->policy, &r->policy, &pe);
        if (rv != 0) {
            rv = err_setraw(e, HBC_EFORMAT, "vault '%s': %s", name, pe.msg);
            goto out;
        }
        /* Each copy has its own scheme (client/repo_scheme.c); the record's k+m is copy 0's. */
        if (r->policy.ncopies != v->copies || v->home_site == NULL) {
            rv = err_setraw(e, HBC_EFORMAT,
                            "vault '%s': its policy has %u copies for %u on record, or no home "
                            "site",
                            name, r->policy.ncopies, v->copies);
            goto out;
        }
        snprintf(r->home_site, sizeof r->home_site, "%s", v->home_site);
        r->has_policy = true;
    }
    uint32_t generation = v->has_key_generation ? v->key_generation : 1;
    rv = keys_unwrap(r->kek, v->wrapped_data_key.data, v->wrapped_data_key.len, data_key, e);
    if (rv == 0) {
        rv = keys_unwrap(r->kek, v->wrapped_chunk_id_key.data, v->wrapped_chunk_id_key.len, id_key,
                         e);
        if (rv != 0) {
            OPENSSL_cleanse(data_key, sizeof data_key);
        }
    }
    if (rv == HBC_EWRONGKEY) {
        rv = err_setraw(e, HBC_EWRONGKEY,
                        "vault '%s': its keys were wrapped by another key file (KEK); use the key "
                        "file the vault was created with",
                        name);
        goto out;
    }
    if (rv != 0) {
        err_wrap(e, "vault '%s': unwrap keys", name);
        goto out;
    }
    rv = chunk_key_init(&r->ckey, data_key, generation, e);
    if (rv == 0) {
        rv = crypto_hmac_new(&r->hmac, id_key, sizeof id_key, e);
    }
    OPENSSL_cleanse(data_key, sizeof data_key);
    OPENSSL_cleanse(id_key, sizeof id_key);
    if (rv != 0) {
        goto out;
    }
    memcpy(r->vault_id, v->vault_id.data, REPO_ID_LEN);
    rv = pmap_vault_from_info(v, &r->pv, e);
    if (rv == 0 && r->pv.groups > 0) {
        rv = repo_map_load(r, e);
    }
    if (rv != 0) {
        goto out;
    }
    r->copies = v->copies;
    r->k = v->k;
    r->m = v->m;
    r->has_vault = true;
    char idhex[2 * REPO_ID_LEN + 1];
    hex(r->vault_id, REPO_ID_LEN, idhex);
    hbc_log(LOG_DEBUG, "event=vault_open vault=%s copies=%u k=%u m=%u nodes=%zu", idhex, r->copies,
            r->k, r->m, r->nnodes);
out:
    frame_free(reply);
    return rv;
}

int repo_open(const struct repo_options *o, struct repo **out, struct err *e)
{
    *out = NULL;
    if (o->naddrs == 0 || o->addrs == NULL) {
        return err_setraw(e, HBC_ECONFIG, "no cluster address given");
    }
    if (o->ca_file == NULL || o->cert_file == NULL || o->key_file == NULL) {
        return err_setraw(e, HBC_ECONFIG, "the CA, client certificate and its key are all needed");
    }
    if (o->vault != NULL && o->keyfile == NULL) {
        return err_setraw(e, HBC_ECONFIG, "opening vault '%s' needs the key file", o->vault);
    }
    struct repo *r = hbc_calloc(1, sizeof *r);
    if (r == NULL) {
        return err_set(e, HBC_ENOMEM, "repo");
    }
    r->create_retention_days = -1;
    int rv = uv_mutex_init(&r->mu);
    if (rv != 0) {
        hbc_free(r);
        return err_set(e, rv, "repo mutex");
    }
    rv = uv_cond_init(&r->flow_cv);
    if (rv == 0) {
        rv = uv_cond_init(&r->busy_cv);
        if (rv != 0) {
            uv_cond_destroy(&r->flow_cv);
        }
    }
    if (rv != 0) {
        uv_mutex_destroy(&r->mu);
        hbc_free(r);
        return err_set(e, rv, "repo condition variable");
    }
    r->timeout_ms = o->timeout_ms != 0 ? o->timeout_ms : REPO_DEFAULT_TIMEOUT_MS;
    r->max_inflight =
        (size_t)(o->max_inflight_mb != 0 ? o->max_inflight_mb : REPO_DEFAULT_INFLIGHT_MB) << 20;

    /* The key file first: a wrong passphrase must stop us before any data moves. */
    if (o->keyfile != NULL) {
        rv = keyfile_load(o->keyfile, o->passphrase != NULL ? o->passphrase : "",
                          o->passphrase != NULL ? o->passphrase_len : 0, r->kek, e);
        if (rv != 0) {
            err_wrap(e, "key file %s", o->keyfile);
            goto fail;
        }
        r->has_kek = true;
    }
    r->addrs = hbc_calloc(o->naddrs, sizeof *r->addrs);
    if (r->addrs == NULL) {
        rv = err_set(e, HBC_ENOMEM, "repo");
        goto fail;
    }
    for (size_t i = 0; i < o->naddrs; i++) {
        r->addrs[i] = hbc_strdup(o->addrs[i]);
        if (r->addrs[i] == NULL) {
            rv = err_set(e, HBC_ENOMEM, "repo");
            goto fail;
        }
        r->naddrs++;
    }
    struct tls_ctx_opts to = {.ca_file = o->ca_file,
                              .cert_file = o->cert_file,
                              .key_file = o->key_file,
                              .handshake_timeout_ms = r->timeout_ms};
    rv = tls_ctx_new(&to, &r->tls, e);
    if (rv != 0) {
        goto fail;
    }
    struct repo_net_opts no = {.tls = r->tls, .timeout_ms = r->timeout_ms};
    rv = repo_net_start(&no, &r->net, e);
    if (rv != 0) {
        goto fail;
    }
    rv = load_nodes(r, e);
    if (rv != 0) {
        goto fail;
    }
    if (o->vault != NULL) {
        rv = open_vault(r, o->vault, e);
        if (rv != 0) {
            goto fail;
        }
    }
    *out = r;
    return 0;
fail:
    repo_close(r);
    return rv;
}

void repo_close(struct repo *r)
{
    if (r == NULL) {
        return;
    }
    repo_net_stop(r->net);
    tls_ctx_free(r->tls);
    repo_workers_free(r);
    crypto_hmac_free(r->hmac);
    chunk_key_clear(&r->ckey);
    OPENSSL_cleanse(r->kek, sizeof r->kek);
    for (size_t i = 0; i < r->nnodes; i++) {
        hbc_free(r->nodes[i].node_id);
        hbc_free(r->nodes[i].addr);
        hbc_free(r->nodes[i].site);
        hbc_free(r->nodes[i].region);
        hbc_free(r->nodes[i].media);
    }
    repo_map_free(r->map);
    while (r->retired != NULL) {
        struct repo_map *next = r->retired->next;
        repo_map_free(r->retired);
        r->retired = next;
    }
    hbc_free(r->nodes);
    hbc_free(r->pnodes);
    hbc_free(r->polnodes);
    for (size_t i = 0; i < r->naddrs; i++) {
        hbc_free(r->addrs[i]);
    }
    hbc_free(r->addrs);
    if (r->degraded > 0) {
        hbc_log(LOG_WARN, "event=repo_degraded_total chunks=%llu", (unsigned long long)r->degraded);
    }
    uv_cond_destroy(&r->busy_cv);
    uv_cond_destroy(&r->flow_cv);
    uv_mutex_destroy(&r->mu);
    hbc_free(r);
}

/* Whether the vault called name already exists with this id (a retried create that landed). */
static bool vault_is_ours(struct repo *r, const char *name, const uint8_t id[REPO_ID_LEN])
{
    Hbc__Frame *reply = NULL;
    if (list_vaults(r, &reply, NULL) != 0) {
        return false;
    }
    bool ours = false;
    const Hbc__ListVaultsReply *l = reply->list_vaults_reply;
    for (size_t i = 0; i < l->n_vaults; i++) {
        const Hbc__VaultInfo *v = l->vaults[i];
        if (strcmp(v->name, name) == 0 && v->vault_id.len == REPO_ID_LEN &&
            memcmp(v->vault_id.data, id, REPO_ID_LEN) == 0) {
            ours = true;
        }
    }
    frame_free(reply);
    return ours;
}

int repo_place_current(struct repo *r, const uint8_t id[REPO_CHUNK_ID], unsigned copies,
                       unsigned width, unsigned *out, uint64_t *epoch, struct err *e)
{
    const struct repo_map *m = repo_map_current(r);
    *epoch = 0;
    if (m == NULL) {
        return repo_place(r, id, copies, width, out, e);
    }
    /* Writers use the current epoch only, and every shard needs a node. */
    uint32_t g = pmap_group_of(id, r->pv.groups);
    const struct repo_epoch *re = &m->epochs[0];
    unsigned all[PLACEMENT_MAX_COPIES * PLACEMENT_MAX_WIDTH];
    int rv = pmap_group_nodes(&r->pv, &re->ep, g, width, all, NULL, e);
    for (unsigned i = 0; i < copies * width && rv == 0; i++) {
        out[i] = all[i] == PMAP_NONE ? PMAP_NONE : re->to_node[all[i]];
        if (out[i] == PMAP_NONE && i % width < pmap_copy_width(&r->pv, i / width)) {
            unsigned c = i / width;
            return err_setraw(e, HBC_ETOOFEW,
                              "placement epoch %llu cannot place copy %u (%s): no eligible node up",
                              (unsigned long long)m->current, c,
                              r->has_policy ? r->policy.copies[c].site : "any");
        }
    }
    *epoch = m->current;
    return rv;
}

int repo_place(const struct repo *r, const uint8_t id[REPO_CHUNK_ID], unsigned copies,
               unsigned width, unsigned *out, struct err *e)
{
    if (r->pv.groups > 0) {
        uint64_t epoch = 0;
        return repo_place_current((struct repo *)r, id, copies, width, out, &epoch, e);
    }
    if (!r->has_policy) {
        return placement_chunk_nodes(r->vault_id, id, copies, width, r->pnodes, r->nnodes, out, e);
    }
    unsigned all[POLICY_MAX_COPIES * POLICY_MAX_WIDTH];
    int rv = policy_chunk_nodes(r->vault_id, id, &r->policy, r->home_site, r->polnodes, r->nnodes,
                                all, e);
    for (unsigned c = 0; c < copies && c < r->policy.ncopies && rv == 0; c++) {
        unsigned cw = pmap_copy_width(&r->pv, c);
        memcpy(out + (size_t)c * width, all + (size_t)c * POLICY_MAX_WIDTH, cw * sizeof *out);
        for (unsigned s = cw; s < width; s++) {
            out[(size_t)c * width + s] = PMAP_NONE;
        }
    }
    return rv;
}

int repo_vault_create(struct repo *r, const char *name, unsigned copies, unsigned k, unsigned m,
                      const Hbc__VaultPolicy *policy, const char *home_site,
                      uint8_t vault_id[REPO_ID_LEN], struct err *e)
{
    if (!r->has_kek) {
        return err_setraw(e, HBC_ECONFIG, "creating a vault needs the key file (KEK)");
    }
    size_t name_len = name != NULL ? strlen(name) : 0;
    if (name_len == 0 || name_len > 128) {
        return err_setraw(e, HBC_EINVAL, "a vault name has 1 to 128 bytes");
    }
    if (copies < 1 || copies > PLACEMENT_MAX_COPIES || k < 1 || k > ERASURE_MAX_K ||
        m > ERASURE_MAX_M) {
        return err_setraw(e, HBC_EINVAL,
                          "copies must be 1..%d, k 1..%d and m 0..%d (asked %u, %u, %u)",
                          PLACEMENT_MAX_COPIES, ERASURE_MAX_K, ERASURE_MAX_M, copies, k, m);
    }
    uint8_t data_key[CRYPTO_KEY_LEN];
    uint8_t id_key[CRYPTO_KEY_LEN];
    uint8_t wrapped_data[KEYS_WRAPPED_LEN];
    uint8_t wrapped_id[KEYS_WRAPPED_LEN];
    int rv = crypto_random(vault_id, REPO_ID_LEN, e);
    if (rv == 0) {
        rv = keys_generate(data_key, e);
    }
    if (rv == 0) {
        rv = keys_generate(id_key, e);
    }
    if (rv == 0) {
        rv = keys_wrap(r->kek, data_key, wrapped_data, e);
    }
    if (rv == 0) {
        rv = keys_wrap(r->kek, id_key, wrapped_id, e);
    }
    /* Only the wrapped forms leave this function. */
    OPENSSL_cleanse(data_key, sizeof data_key);
    OPENSSL_cleanse(id_key, sizeof id_key);
    if (rv != 0) {
        return err_wrap_code(e, rv, "vault keys");
    }
    Hbc__Command cmd = HBC__COMMAND__INIT;
    Hbc__VaultCreate vc = HBC__VAULT_CREATE__INIT;
    vc.vault_id = (ProtobufCBinaryData){REPO_ID_LEN, vault_id};
    vc.name = (char *)name;
    vc.copies = copies;
    vc.k = k;
    vc.m = m;
    vc.policy = (Hbc__VaultPolicy *)policy;
    vc.home_site = (char *)home_site;
    if (r->create_retention_days >= 0) {
        vc.has_retention_days = true;
        vc.retention_days = (uint32_t)r->create_retention_days;
    }
    if (r->create_lock_mode != 0) {
        vc.has_lock_mode = true;
        vc.lock_mode = (Hbc__LockMode)r->create_lock_mode;
    }
    if (r->create_retention_seconds > 0) {
        vc.has_retention_seconds = true;
        vc.retention_seconds = r->create_retention_seconds;
        vc.has_retention_days = true;
        vc.retention_days = 0;
    }
    /* Every new vault is placed by groups and epochs (client/placement_map.h). */
    vc.has_placement_groups = true;
    vc.placement_groups = PMAP_DEFAULT_GROUPS;
    vc.has_wrapped_data_key = true;
    vc.wrapped_data_key = (ProtobufCBinaryData){KEYS_WRAPPED_LEN, wrapped_data};
    vc.has_wrapped_chunk_id_key = true;
    vc.wrapped_chunk_id_key = (ProtobufCBinaryData){KEYS_WRAPPED_LEN, wrapped_id};
    vc.has_key_generation = true;
    vc.key_generation = 1;
    cmd.cmd_case = HBC__COMMAND__CMD_VAULT_CREATE;
    cmd.vault_create = &vc;
    int code = 0;
    char msg[256];
    rv = propose(r, &cmd, &code, msg, sizeof msg, NULL, e);
    if (rv != 0) {
        return err_wrap_code(e, rv, "create vault '%s'", name);
    }
    if (code == HBC_EEXIST && vault_is_ours(r, name, vault_id)) {
        code = 0; /* our own create, retried after a lost answer */
    }
    if (code == HBC_EEXIST) {
        return err_setraw(e, HBC_EEXIST, "a vault named '%s' already exists", name);
    }
    if (code != 0) {
        return err_setraw(e, code, "create vault '%s': %s", name, msg);
    }
    return 0;
}

int repo_vault_list(struct repo *r, Hbc__VaultInfo ***out, size_t *n, struct err *e)
{
    *out = NULL;
    *n = 0;
    Hbc__Frame *reply = NULL;
    int rv = list_vaults(r, &reply, e);
    if (rv != 0) {
        return rv;
    }
    const Hbc__ListVaultsReply *l = reply->list_vaults_reply;
    Hbc__VaultInfo **v = hbc_calloc(l->n_vaults > 0 ? l->n_vaults : 1, sizeof *v);
    if (v == NULL) {
        frame_free(reply);
        return err_set(e, HBC_ENOMEM, "vault list");
    }
    for (size_t i = 0; i < l->n_vaults; i++) {
        v[i] = msg_dup(&l->vaults[i]->base);
        if (v[i] == NULL) {
            for (size_t j = 0; j < i; j++) {
                protobuf_c_message_free_unpacked(&v[j]->base, NULL);
            }
            hbc_free(v);
            frame_free(reply);
            return err_set(e, HBC_ENOMEM, "vault list");
        }
    }
    *out = v;
    *n = l->n_vaults;
    frame_free(reply);
    return 0;
}

const uint8_t *repo_vault_id(const struct repo *r)
{
    return r->has_vault ? r->vault_id : NULL;
}

unsigned repo_copies(const struct repo *r)
{
    return r->has_vault ? r->copies : 0;
}

unsigned repo_node_count(const struct repo *r)
{
    return (unsigned)r->nnodes;
}

void repo_set_create_retention(struct repo *r, uint32_t seconds)
{
    r->create_retention_seconds = seconds;
}

void repo_set_create_lock(struct repo *r, int64_t retention_days, int lock_mode)
{
    r->create_retention_days = retention_days;
    r->create_lock_mode = lock_mode;
}

int repo_snapshot_commit(struct repo *r, const Hbc__SnapshotCommit *s, uint64_t *index,
                         struct err *e)
{
    Hbc__Command cmd = HBC__COMMAND__INIT;
    cmd.cmd_case = HBC__COMMAND__CMD_SNAPSHOT_COMMIT;
    cmd.snapshot_commit = (Hbc__SnapshotCommit *)s;
    int code = 0;
    char msg[256];
    uint64_t idx = 0;
    int rv = propose(r, &cmd, &code, msg, sizeof msg, &idx, e);
    if (rv != 0) {
        return err_wrap_code(e, rv, "commit snapshot");
    }
    /* The snapshot id is the idempotency key: an equal record already there is our retry. */
    if (code != 0 && code != HBC_EEXIST) {
        return err_setraw(e, code, "commit snapshot: %s", msg);
    }
    if (index != NULL) {
        *index = idx;
    }
    return 0;
}

int repo_snapshot_list(struct repo *r, Hbc__SnapshotInfo ***out, size_t *n, struct err *e)
{
    *out = NULL;
    *n = 0;
    if (!r->has_vault) {
        return err_setraw(e, HBC_EINVAL, "list snapshots: no vault is open");
    }
    Hbc__Frame req = HBC__FRAME__INIT;
    Hbc__ListSnapshotsRequest ls = HBC__LIST_SNAPSHOTS_REQUEST__INIT;
    ls.has_vault_id = true;
    ls.vault_id = (ProtobufCBinaryData){REPO_ID_LEN, r->vault_id};
    ls.has_current = true;
    ls.current = true;
    req.body_case = HBC__FRAME__BODY_LIST_SNAPSHOTS;
    req.list_snapshots = &ls;
    Hbc__Frame *reply = NULL;
    int rv = repo_control(r, &req, HBC__FRAME__BODY_LIST_SNAPSHOTS_REPLY, &reply, e);
    if (rv != 0) {
        return err_wrap_code(e, rv, "list snapshots");
    }
    const Hbc__ListSnapshotsReply *l = reply->list_snapshots_reply;
    Hbc__SnapshotInfo **s = hbc_calloc(l->n_snapshots > 0 ? l->n_snapshots : 1, sizeof *s);
    if (s == NULL) {
        frame_free(reply);
        return err_set(e, HBC_ENOMEM, "snapshot list");
    }
    for (size_t i = 0; i < l->n_snapshots; i++) {
        s[i] = msg_dup(&l->snapshots[i]->base);
        if (s[i] == NULL) {
            for (size_t j = 0; j < i; j++) {
                protobuf_c_message_free_unpacked(&s[j]->base, NULL);
            }
            hbc_free(s);
            frame_free(reply);
            return err_set(e, HBC_ENOMEM, "snapshot list");
        }
    }
    *out = s;
    *n = l->n_snapshots;
    frame_free(reply);
    return 0;
}

int repo_restore_test_record(struct repo *r, const Hbc__RestoreTestRecord *t, struct err *e)
{
    /* One id for every try of this record: the state machine applies a retry as a no-op. */
    Hbc__RestoreTestRecord rec = *t;
    uint8_t record_id[REPO_ID_LEN];
    if (!rec.has_record_id) {
        int rv = crypto_random(record_id, sizeof record_id, e);
        if (rv != 0) {
            return err_wrap_code(e, rv, "record restore test");
        }
        rec.has_record_id = true;
        rec.record_id.data = record_id;
        rec.record_id.len = sizeof record_id;
    }
    Hbc__Command cmd = HBC__COMMAND__INIT;
    cmd.cmd_case = HBC__COMMAND__CMD_RESTORE_TEST_RECORD;
    cmd.restore_test_record = &rec;
    int code = 0;
    char msg[256];
    int rv = propose(r, &cmd, &code, msg, sizeof msg, NULL, e);
    if (rv != 0) {
        return err_wrap_code(e, rv, "record restore test");
    }
    if (code != 0) {
        return err_setraw(e, code, "record restore test: %s", msg);
    }
    return 0;
}

int repo_id_hmac(struct repo *r, struct crypto_hmac **out, struct err *e)
{
    *out = NULL;
    if (!r->has_vault || r->hmac == NULL) {
        return err_set(e, HBC_EINVAL, "no vault open");
    }
    /* The keyed template is shared with the workers: copy it under the lock. */
    uv_mutex_lock(&r->mu);
    int rv = crypto_hmac_dup(out, r->hmac, e);
    uv_mutex_unlock(&r->mu);
    return rv;
}
