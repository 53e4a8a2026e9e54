/*
 * TEST FAKE: an in-memory implementation of client/repo.h, used ONLY by the
 * backup and restore unit tests to run the pipelines without a cluster. It
 * is never linked into hbc or libhbc; the cluster tests use the real
 * client/repo.c. Objects live in a process-wide table so that a second
 * repo_open() sees the first one's snapshots.
 */
#include "tests/unit/repo_fake.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>

#include "client/repo.h"
#include "common/alloc.h"
#include "common/crypto.h"

#define BUCKETS 4096

struct obj {
    uint8_t id[REPO_CHUNK_ID]; /* chunk id */
    uint8_t *data;             /* plaintext */
    size_t len;                /* bytes */
    struct obj *next;          /* bucket chain */
};

struct repo {
    struct crypto_hmac *hmac; /* ids */
    pthread_mutex_t mu;       /* guards hmac */
};

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static struct obj *buckets[BUCKETS];
static uint8_t **snaps;   /* packed SnapshotInfo records */
static size_t *snap_lens; /* their lengths */
static size_t nsnaps;     /* how many */
static struct repo_fake_stats stats;
static long fail_puts_after = -1;
static size_t fail_get_len;
static size_t corrupt_len;
static const uint8_t vault_id[REPO_ID_LEN] = {0xfa, 0xce};
static const uint8_t id_key[32] = {1, 2, 3, 4, 5, 6, 7, 8};

void repo_fake_reset(void)
{
    pthread_mutex_lock(&mu);
    for (size_t i = 0; i < BUCKETS; i++) {
        while (buckets[i] != NULL) {
            struct obj *o = buckets[i];
            buckets[i] = o->next;
            free(o->data);
            free(o);
        }
    }
    for (size_t i = 0; i < nsnaps; i++) {
        free(snaps[i]);
    }
    free(snaps);
    free(snap_lens);
    snaps = NULL;
    snap_lens = NULL;
    nsnaps = 0;
    memset(&stats, 0, sizeof stats);
    fail_puts_after = -1;
    fail_get_len = 0;
    corrupt_len = 0;
    pthread_mutex_unlock(&mu);
}

struct repo_fake_stats repo_fake_stats(void)
{
    pthread_mutex_lock(&mu);
    struct repo_fake_stats s = stats;
    pthread_mutex_unlock(&mu);
    return s;
}

void repo_fake_fail_puts_after(long n)
{
    pthread_mutex_lock(&mu);
    fail_puts_after = n;
    pthread_mutex_unlock(&mu);
}

void repo_fake_fail_gets_of_len(size_t len)
{
    pthread_mutex_lock(&mu);
    fail_get_len = len;
    pthread_mutex_unlock(&mu);
}

void repo_fake_corrupt_len(size_t len)
{
    pthread_mutex_lock(&mu);
    corrupt_len = len;
    pthread_mutex_unlock(&mu);
}

static struct obj **find(const uint8_t id[REPO_CHUNK_ID])
{
    struct obj **p = &buckets[(id[0] | id[1] << 8) % BUCKETS];
    while (*p != NULL && memcmp((*p)->id, id, REPO_CHUNK_ID) != 0) {
        p = &(*p)->next;
    }
    return p;
}

int repo_open(const struct repo_options *o, struct repo **out, struct err *e)
{
    (void)o;
    struct repo *r = hbc_calloc(1, sizeof *r);
    if (r == NULL) {
        return err_set(e, HBC_ENOMEM, "fake repo");
    }
    pthread_mutex_init(&r->mu, NULL);
    int rv = crypto_hmac_new(&r->hmac, id_key, sizeof id_key, e);
    if (rv != 0) {
        hbc_free(r);
        return rv;
    }
    *out = r;
    return 0;
}

void repo_close(struct repo *r)
{
    if (r == NULL) {
        return;
    }
    crypto_hmac_free(r->hmac);
    pthread_mutex_destroy(&r->mu);
    hbc_free(r);
}

const uint8_t *repo_vault_id(const struct repo *r)
{
    (void)r;
    return vault_id;
}

unsigned repo_copies(const struct repo *r)
{
    (void)r;
    return 2;
}

int repo_id_hmac(struct repo *r, struct crypto_hmac **out, struct err *e)
{
    pthread_mutex_lock(&r->mu);
    int rv = crypto_hmac_dup(out, r->hmac, e);
    pthread_mutex_unlock(&r->mu);
    return rv;
}

int repo_chunk_id(struct repo *r, const void *plain, size_t len, uint8_t id[REPO_CHUNK_ID],
                  struct err *e)
{
    pthread_mutex_lock(&r->mu);
    int rv = crypto_hmac_compute(r->hmac, plain, len, id, e);
    pthread_mutex_unlock(&r->mu);
    return rv;
}

int repo_have(struct repo *r, const uint8_t (*ids)[REPO_CHUNK_ID], size_t n, bool *present,
              struct err *e)
{
    (void)r;
    (void)e;
    pthread_mutex_lock(&mu);
    stats.have_calls++;
    stats.have_ids += n;
    for (size_t i = 0; i < n; i++) {
        present[i] = *find(ids[i]) != NULL;
    }
    pthread_mutex_unlock(&mu);
    return 0;
}

int repo_have_any(struct repo *r, const uint8_t (*ids)[REPO_CHUNK_ID], size_t n, bool *present,
                  bool *any, struct err *e)
{
    int rv = repo_have(r, ids, n, present, e);
    for (size_t i = 0; rv == 0 && i < n; i++) {
        any[i] = present[i];
    }
    return rv;
}

int repo_put_chunk_new(struct repo *r, const uint8_t id[REPO_CHUNK_ID], const void *plain,
                       size_t len, struct err *e)
{
    return repo_put_chunk(r, id, plain, len, e);
}

int repo_put_chunks_new(struct repo *r, size_t n, const uint8_t (*ids)[REPO_CHUNK_ID],
                        const void *const *plains, const size_t *lens, struct err *e)
{
    int rv = 0;
    for (size_t i = 0; rv == 0 && i < n; i++) {
        rv = repo_put_chunk(r, ids[i], plains[i], lens[i], e);
    }
    return rv;
}

int repo_put_chunk(struct repo *r, const uint8_t id[REPO_CHUNK_ID], const void *plain, size_t len,
                   struct err *e)
{
    uint8_t check[REPO_CHUNK_ID];
    int rv = repo_chunk_id(r, plain, len, check, e);
    if (rv != 0) {
        return rv;
    }
    if (memcmp(check, id, REPO_CHUNK_ID) != 0) {
        return err_set(e, HBC_ECHUNKID, "fake put");
    }
    pthread_mutex_lock(&mu);
    if (fail_puts_after == 0) {
        pthread_mutex_unlock(&mu);
        return err_set(e, HBC_EUNAVAILABLE, "fake put");
    }
    if (fail_puts_after > 0) {
        fail_puts_after--;
    }
    stats.puts++;
    stats.put_bytes += len;
    struct obj **p = find(id);
    if (*p == NULL) {
        struct obj *o = calloc(1, sizeof *o);
        o->data = malloc(len > 0 ? len : 1);
        memcpy(o->data, plain, len);
        o->len = len;
        memcpy(o->id, id, REPO_CHUNK_ID);
        *p = o;
        stats.objects++;
    }
    pthread_mutex_unlock(&mu);
    return 0;
}

int repo_plain_id(const void *data, size_t len, uint8_t id[REPO_CHUNK_ID], struct err *e)
{
    unsigned int n = 0;
    if (EVP_Digest(data, len, id, &n, EVP_sha256(), NULL) != 1) {
        return err_set(e, HBC_ECRYPTO, "fake sha-256");
    }
    return 0;
}

/* Plain objects share the table with chunks (ids are SHA-256, chunks' are HMACs). */
int repo_put_plain(struct repo *r, const uint8_t id[REPO_CHUNK_ID], const void *data, size_t len,
                   unsigned *stored, struct err *e)
{
    (void)r;
    pthread_mutex_lock(&mu);
    if (fail_puts_after == 0) {
        pthread_mutex_unlock(&mu);
        return err_set(e, HBC_EUNAVAILABLE, "fake put");
    }
    if (fail_puts_after > 0) {
        fail_puts_after--;
    }
    stats.puts++;
    stats.put_bytes += len;
    struct obj **p = find(id);
    if (*p == NULL) {
        struct obj *o = calloc(1, sizeof *o);
        o->data = malloc(len > 0 ? len : 1);
        memcpy(o->data, data, len);
        o->len = len;
        memcpy(o->id, id, REPO_CHUNK_ID);
        *p = o;
        stats.objects++;
    }
    pthread_mutex_unlock(&mu);
    if (stored != NULL) {
        *stored = 1;
    }
    return 0;
}

int repo_get_plain(struct repo *r, const uint8_t id[REPO_CHUNK_ID], uint8_t **data, size_t *len,
                   struct err *e)
{
    return repo_get_chunk(r, id, -1, data, len, NULL, e);
}

int repo_get_chunks(struct repo *r, size_t n, const uint8_t (*ids)[REPO_CHUNK_ID], int copy,
                    uint8_t **plains, size_t *lens, int *results, struct repo_read_stats *st,
                    struct err *errs)
{
    int first = 0;
    pthread_mutex_lock(&mu);
    stats.batched_gets++;
    pthread_mutex_unlock(&mu);
    for (size_t i = 0; i < n; i++) {
        plains[i] = NULL;
        lens[i] = 0;
        results[i] = repo_get_chunk(r, ids[i], copy, &plains[i], &lens[i], st,
                                    errs != NULL ? &errs[i] : NULL);
        first = first != 0 ? first : results[i];
    }
    return first;
}

int repo_gc_safe_index(struct repo *r, uint64_t *index, struct err *e)
{
    (void)r;
    (void)e;
    *index = 0;
    return 0;
}

int repo_get_chunk(struct repo *r, const uint8_t id[REPO_CHUNK_ID], int copy, uint8_t **plain,
                   size_t *len, struct repo_read_stats *st, struct err *e)
{
    (void)r;
    (void)copy;
    pthread_mutex_lock(&mu);
    stats.gets++;
    struct obj *o = *find(id);
    if (o == NULL) {
        pthread_mutex_unlock(&mu);
        return err_set(e, HBC_ENOTFOUND, "fake get");
    }
    if (fail_get_len != 0 && o->len == fail_get_len) {
        pthread_mutex_unlock(&mu);
        return err_set(e, HBC_ETOOFEW, "fake get");
    }
    uint8_t *p = hbc_malloc(o->len > 0 ? o->len : 1);
    memcpy(p, o->data, o->len);
    if (corrupt_len != 0 && o->len == corrupt_len) {
        p[o->len / 2] ^= 1;
    }
    *plain = p;
    *len = o->len;
    if (st != NULL) {
        st->shards_read += 3;
    }
    pthread_mutex_unlock(&mu);
    return 0;
}

int repo_snapshot_commit(struct repo *r, const Hbc__SnapshotCommit *s, uint64_t *index,
                         struct err *e)
{
    (void)r;
    (void)e;
    Hbc__SnapshotInfo info = HBC__SNAPSHOT_INFO__INIT;
    info.snapshot_id = s->snapshot_id;
    info.vault_id = s->vault_id;
    info.time_ms = s->time_ms;
    info.root_tree_id = s->root_tree_id;
    info.ref_list_id = s->ref_list_id;
    info.files = s->files;
    info.bytes = s->bytes;
    info.chunks = s->chunks;
    pthread_mutex_lock(&mu);
    info.commit_index = nsnaps + 1;
    size_t len = hbc__snapshot_info__get_packed_size(&info);
    uint8_t *buf = malloc(len);
    hbc__snapshot_info__pack(&info, buf);
    snaps = realloc(snaps, (nsnaps + 1) * sizeof *snaps);
    snap_lens = realloc(snap_lens, (nsnaps + 1) * sizeof *snap_lens);
    snaps[nsnaps] = buf;
    snap_lens[nsnaps] = len;
    nsnaps++;
    stats.snapshots++;
    if (index != NULL) {
        *index = nsnaps;
    }
    pthread_mutex_unlock(&mu);
    return 0;
}

int repo_snapshot_list(struct repo *r, Hbc__SnapshotInfo ***out, size_t *n, struct err *e)
{
    (void)r;
    (void)e;
    pthread_mutex_lock(&mu);
    Hbc__SnapshotInfo **list = hbc_calloc(nsnaps > 0 ? nsnaps : 1, sizeof *list);
    for (size_t i = 0; i < nsnaps; i++) {
        list[i] = hbc__snapshot_info__unpack(NULL, snap_lens[i], snaps[i]);
    }
    *out = list;
    *n = nsnaps;
    pthread_mutex_unlock(&mu);
    return 0;
}

int repo_restore_test_record(struct repo *r, const Hbc__RestoreTestRecord *t, struct err *e)
{
    (void)r;
    (void)e;
    pthread_mutex_lock(&mu);
    stats.tests++;
    stats.last_test_errors = t->errors;
    stats.last_test_chunks = t->chunks;
    pthread_mutex_unlock(&mu);
    return 0;
}

int repo_vault_create(struct repo *r, const char *name, unsigned copies, unsigned k, unsigned m,
                      const Hbc__VaultPolicy *policy, const char *home_site,
                      uint8_t id[REPO_ID_LEN], struct err *e)
{
    (void)r;
    (void)name;
    (void)copies;
    (void)k;
    (void)m;
    (void)policy;
    (void)home_site;
    (void)id;
    return err_set(e, HBC_EINVAL, "fake repo: no vaults");
}

int repo_vault_list(struct repo *r, Hbc__VaultInfo ***out, size_t *n, struct err *e)
{
    (void)r;
    (void)out;
    (void)n;
    return err_set(e, HBC_EINVAL, "fake repo: no vaults");
}
