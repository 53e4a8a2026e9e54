/* hbcd's puts: each shard checked on the thread pool, then group commits (see server.c). */
#include "node/server_internal.h"

/* ---------------------------------------------------------------------- */
/* Group commit                                                            */

/*
 * Check one shard blob of a put: bounded, well formed, and naming what it
 * claims; sha gets the SHA-256 of the whole blob that the store records
 * (computed in the same pass as the blob's own SHA-256 check).
 */
static int check_blob(const Hbc__ShardBlob *b, uint64_t max_shard,
                      uint8_t sha[SHARD_STORE_SHA256_LEN], char *msg, size_t mlen)
{
    if (b->vault_id.len != SHARD_STORE_VAULT_ID_LEN ||
        b->chunk_id.len != SHARD_STORE_CHUNK_ID_LEN) {
        snprintf(msg, mlen,
                 "shard key has a %zu-byte vault id and a %zu-byte chunk id (want 16 and 32)",
                 b->vault_id.len, b->chunk_id.len);
        return HBC_EINVAL;
    }
    if (b->data.len > max_shard) {
        snprintf(msg, mlen, "shard of %zu bytes exceeds the node's max_shard of %llu", b->data.len,
                 (unsigned long long)max_shard);
        return HBC_ETOOBIG;
    }
    struct erasure_shard_info info;
    const uint8_t *payload;
    struct err e;
    /* A client may leave the trailer to the node (ShardBlob.sha256_unset): fill it in. */
    int rv = b->has_sha256_unset && b->sha256_unset
                 ? erasure_shard_fill_sha256(b->data.data, b->data.len, &info, &payload, sha, &e)
                 : erasure_shard_decode_sha256(b->data.data, b->data.len, &info, &payload, sha, &e);
    if (rv != 0) {
        snprintf(msg, mlen, "shard %u: %.200s", b->index, e.msg);
        return rv;
    }
    if (memcmp(info.vault_id, b->vault_id.data, SHARD_STORE_VAULT_ID_LEN) != 0 ||
        memcmp(info.chunk_id, b->chunk_id.data, SHARD_STORE_CHUNK_ID_LEN) != 0 ||
        info.index != b->index) {
        snprintf(msg, mlen,
                 "shard %u: its header names another vault, chunk or index than the request",
                 b->index);
        return HBC_EINVAL;
    }
    /* A shard of another scheme than the vault's base one is stored under a tagged slot. */
    uint32_t slot = 0;
    rv = shard_slot_from_wire(b->index, b->has_scheme_k, b->scheme_k, b->has_scheme_m, b->scheme_m,
                              &slot, &e);
    if (rv == 0 && b->has_scheme_k && (info.k != b->scheme_k || info.m != b->scheme_m)) {
        rv = err_set(&e, HBC_ESCHEME, "its header says %u+%u, the request %u+%u", info.k, info.m,
                     b->scheme_k, b->scheme_m);
    }
    if (rv != 0) {
        snprintf(msg, mlen, "shard %u: %.200s", b->index, e.msg);
        return rv;
    }
    return 0;
}

/*
 * Check every shard of a put request and compute the SHA-256 the store
 * records for each (on the thread pool, outside the group commit).
 */
void server_put_check_work_cb(uv_work_t *w)
{
    struct req *r = w->data;
    struct server *s = r->conn->srv;
    Hbc__PutShards *p = r->frame->put_shards;
    r->shas = hbc_calloc(p->n_shards, SHARD_STORE_SHA256_LEN);
    if (r->shas == NULL) {
        r->status = HBC_ENOMEM;
        snprintf(r->msg, sizeof r->msg, "put shards: out of memory");
        return;
    }
    for (size_t i = 0; i < p->n_shards && r->status == 0; i++) {
        r->status = check_blob(p->shards[i], s->cfg->max_shard,
                               r->shas + i * SHARD_STORE_SHA256_LEN, r->msg, sizeof r->msg);
    }
}

/* A checked put joins the commit queue; a bad one is answered now. */
void server_put_check_after_cb(uv_work_t *w, int status)
{
    struct req *r = w->data;
    struct server *s = r->conn->srv;
    s->works--;
    if (status != 0 && r->status == 0) {
        r->status = HBC_ECANCELED;
        snprintf(r->msg, sizeof r->msg, "put shards: check cancelled");
    }
    if (r->status != 0) {
        server_req_fail(r, r->status, r->msg);
        server_maybe_finish(s);
        return;
    }
    if (s->queue_tail != NULL) {
        s->queue_tail->next = r;
    } else {
        s->queue_head = r;
    }
    s->queue_tail = r;
    s->queue_shards += r->frame->put_shards->n_shards;
    s->queue_bytes += r->bytes;
    server_maybe_commit(s);
    server_maybe_finish(s);
}

static void commit_work_cb(uv_work_t *w)
{
    struct commit *cm = w->data;
    struct server *s = cm->srv;
    struct shard_put *puts = hbc_calloc(cm->nshards, sizeof *puts);
    int *results = hbc_calloc(cm->nshards, sizeof *results);
    if (puts == NULL || results == NULL) {
        cm->status = HBC_ENOMEM;
        snprintf(cm->msg, sizeof cm->msg, "group commit: out of memory");
        goto out;
    }
    size_t n = 0;
    uint64_t bytes = 0;
    for (struct req *r = cm->reqs; r != NULL; r = r->next) {
        Hbc__PutShards *p = r->frame->put_shards;
        if (r->status != 0) {
            continue;
        }
        /* Checked and hashed by server_put_check_work_cb before the request was queued. */
        for (size_t i = 0; i < p->n_shards; i++) {
            Hbc__ShardBlob *b = p->shards[i];
            memcpy(puts[n].key.vault_id, b->vault_id.data, SHARD_STORE_VAULT_ID_LEN);
            memcpy(puts[n].key.chunk_id, b->chunk_id.data, SHARD_STORE_CHUNK_ID_LEN);
            /* Checked by check_blob(): the slot is valid. */
            (void)shard_slot_from_wire(b->index, b->has_scheme_k, b->scheme_k, b->has_scheme_m,
                                       b->scheme_m, &puts[n].key.index, NULL);
            puts[n].data = b->data.data;
            puts[n].len = b->data.len;
            puts[n].sha256 = r->shas + i * SHARD_STORE_SHA256_LEN;
            bytes += b->data.len + SHARD_STORE_RECORD_HEADER_LEN;
            n++;
        }
    }
    if (n == 0) {
        goto out;
    }
    /*
     * Another commit may be past this check and not yet stored: its bytes
     * are reserved, so that the two together fit (counted twice for a
     * moment once it is stored: refusing a little early, never too late).
     */
    pthread_mutex_lock(&s->space_mu);
    uint64_t reserved = s->space_reserved;
    struct shard_store_stats st;
    shard_store_stats(s->store, &st);
    if (st.used_bytes + reserved + bytes > s->cfg->capacity) {
        pthread_mutex_unlock(&s->space_mu);
        cm->status = -ENOSPC;
        snprintf(cm->msg, sizeof cm->msg,
                 "no space: the node is full ([node] capacity): %llu of %llu bytes used, %llu more "
                 "asked",
                 (unsigned long long)(st.used_bytes + reserved),
                 (unsigned long long)s->cfg->capacity, (unsigned long long)bytes);
        goto out;
    }
    /* Leave the index room to grow (see SERVER_DISK_RESERVE). */
    struct statvfs vfs;
    if (statvfs(s->cfg->data_dir, &vfs) == 0 &&
        (uint64_t)vfs.f_bavail * vfs.f_frsize < bytes + reserved + SERVER_DISK_RESERVE) {
        pthread_mutex_unlock(&s->space_mu);
        cm->status = -ENOSPC;
        snprintf(cm->msg, sizeof cm->msg,
                 "no space: %llu bytes free on the data directory's filesystem, %llu asked "
                 "plus %llu kept for the index",
                 (unsigned long long)vfs.f_bavail * vfs.f_frsize,
                 (unsigned long long)(bytes + reserved), (unsigned long long)SERVER_DISK_RESERVE);
        goto out;
    }
    s->space_reserved += bytes;
    pthread_mutex_unlock(&s->space_mu);
    struct err e;
    err_clear(&e);
    int rv = shard_store_put_batch(s->store, puts, n, results, &e);
    pthread_mutex_lock(&s->space_mu);
    s->space_reserved -= bytes;
    pthread_mutex_unlock(&s->space_mu);
    if (rv != 0) {
        cm->status = rv;
        snprintf(cm->msg, sizeof cm->msg, "group commit: %.480s", e.msg);
        goto out;
    }
    /* A different shard already stored under a key fails that request. */
    size_t k = 0;
    for (struct req *r = cm->reqs; r != NULL; r = r->next) {
        if (r->status != 0) {
            continue;
        }
        Hbc__PutShards *p = r->frame->put_shards;
        for (size_t i = 0; i < p->n_shards; i++, k++) {
            if (results[k] < 0 && r->status == 0) {
                r->status = results[k];
                snprintf(r->msg, sizeof r->msg, "shard %u: %s", p->shards[i]->index,
                         results[k] == HBC_EEXIST
                             ? "a different shard is already stored under this key"
                             : hbc_strerror(results[k]));
            }
        }
    }
out:
    hbc_free(puts);
    hbc_free(results);
}

static void commit_after_cb(uv_work_t *w, int status)
{
    struct commit *cm = w->data;
    struct server *s = cm->srv;
    (void)status;
    s->committing--;
    s->stats.commits++;
    struct req *r = cm->reqs;
    while (r != NULL) {
        struct req *next = r->next;
        if (cm->status != 0) {
            server_req_fail(r, cm->status, cm->msg);
        } else if (r->status != 0) {
            server_req_fail(r, r->status, r->msg);
        } else {
            Hbc__Frame f = HBC__FRAME__INIT;
            Hbc__PutShardsReply rep = HBC__PUT_SHARDS_REPLY__INIT;
            f.request_id = r->frame->request_id;
            f.body_case = HBC__FRAME__BODY_PUT_SHARDS_REPLY;
            f.put_shards_reply = &rep;
            rep.stored = (uint32_t)r->frame->put_shards->n_shards;
            s->stats.puts_acked += rep.stored;
            server_req_finish(r, &f);
        }
        r = next;
    }
    if (cm->status != 0) {
        hbc_log(LOG_ERROR, "event=commit_failed shards=%zu reason=\"%s\"", cm->nshards, cm->msg);
    }
    hbc_free(cm);
    server_maybe_commit(s);
    server_maybe_finish(s);
}

/* Start a group commit of the queued puts if fewer than COMMIT_PIPELINE are running. */
void server_maybe_commit(struct server *s)
{
    if (s->committing >= COMMIT_PIPELINE || s->queue_head == NULL) {
        return;
    }
    if (s->committing > 0 && !s->stopping &&
        s->queue_shards < s->cfg->commit_max_shards / COMMIT_SECOND_SHARE &&
        s->queue_bytes < s->cfg->commit_max_bytes / COMMIT_SECOND_SHARE) {
        return; /* started when the running commit ends, or when more has queued */
    }
    struct commit *cm = hbc_calloc(1, sizeof *cm);
    if (cm == NULL) {
        return; /* retried when the next put arrives or a reply is sent */
    }
    cm->srv = s;
    size_t bytes = 0;
    struct req **tail = &cm->reqs;
    while (s->queue_head != NULL) {
        struct req *r = s->queue_head;
        size_t n = r->frame->put_shards->n_shards;
        if (cm->reqs != NULL && (cm->nshards + n > s->cfg->commit_max_shards ||
                                 bytes + r->bytes > s->cfg->commit_max_bytes)) {
            break;
        }
        s->queue_head = r->next;
        r->next = NULL;
        *tail = r;
        tail = &r->next;
        cm->nshards += n;
        bytes += r->bytes;
        s->queue_shards -= n;
        s->queue_bytes -= r->bytes;
    }
    if (s->queue_head == NULL) {
        s->queue_tail = NULL;
    }
    cm->work.data = cm;
    s->committing++;
    int rv = uv_queue_work(s->loop, &cm->work, commit_work_cb, commit_after_cb);
    if (rv != 0) {
        cm->status = rv;
        snprintf(cm->msg, sizeof cm->msg, "group commit: queue work: %s", uv_strerror(rv));
        commit_after_cb(&cm->work, rv);
    }
}
