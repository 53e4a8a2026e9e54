/* Restore's pack cache (see pack.h): a few slots, reference counted, one fetch per pack at a time.
 */
#include "client/pack.h"

#include <pthread.h>
#include <string.h>

#include "common/alloc.h"

enum slot_state {
    SLOT_EMPTY = 0,   /* holds nothing */
    SLOT_LOADING = 1, /* a thread is fetching id */
    SLOT_READY = 2,   /* data holds id's plaintext */
};

struct slot {
    uint8_t id[REPO_CHUNK_ID]; /* the pack */
    enum slot_state state;     /* what it holds */
    uint8_t *data;             /* READY: plaintext (owned) */
    size_t len;                /* its bytes */
    unsigned refs;             /* refs handed out */
    uint64_t used;             /* last use (for eviction) */
};

struct pack_cache {
    struct repo *r;                      /* where packs are read (borrowed) */
    int copy;                            /* which copy (-1: any) */
    pthread_mutex_t mu;                  /* guards everything below */
    pthread_cond_t loaded;               /* a slot left SLOT_LOADING */
    struct slot slots[PACK_CACHE_SLOTS]; /* the cache */
    uint64_t tick;                       /* use counter */
};

int pack_cache_new(struct pack_cache **out, struct repo *r, int copy, struct err *e)
{
    struct pack_cache *c = hbc_calloc(1, sizeof *c);
    if (c == NULL) {
        return err_set(e, HBC_ENOMEM, "pack cache");
    }
    c->r = r;
    c->copy = copy;
    pthread_mutex_init(&c->mu, NULL);
    pthread_cond_init(&c->loaded, NULL);
    *out = c;
    return 0;
}

void pack_cache_free(struct pack_cache *c)
{
    if (c == NULL) {
        return;
    }
    for (unsigned i = 0; i < PACK_CACHE_SLOTS; i++) {
        hbc_free(c->slots[i].data);
    }
    pthread_cond_destroy(&c->loaded);
    pthread_mutex_destroy(&c->mu);
    hbc_free(c);
}

/* The slot holding (or loading) id, or NULL. Called with mu held. */
static struct slot *find(struct pack_cache *c, const uint8_t id[REPO_CHUNK_ID])
{
    for (unsigned i = 0; i < PACK_CACHE_SLOTS; i++) {
        struct slot *s = &c->slots[i];
        if (s->state != SLOT_EMPTY && memcmp(s->id, id, REPO_CHUNK_ID) == 0) {
            return s;
        }
    }
    return NULL;
}

/* An empty slot, or the least recently used ready one nobody holds (emptied), or NULL. */
static struct slot *victim(struct pack_cache *c)
{
    struct slot *best = NULL;
    for (unsigned i = 0; i < PACK_CACHE_SLOTS; i++) {
        struct slot *s = &c->slots[i];
        if (s->state == SLOT_EMPTY) {
            return s;
        }
        if (s->state == SLOT_READY && s->refs == 0 && (best == NULL || s->used < best->used)) {
            best = s;
        }
    }
    if (best != NULL) {
        hbc_free(best->data);
        best->data = NULL;
        best->len = 0;
        best->state = SLOT_EMPTY;
    }
    return best;
}

int pack_cache_get(struct pack_cache *c, const uint8_t id[REPO_CHUNK_ID], struct pack_ref *ref,
                   bool *fetched, struct repo_read_stats *stats, struct err *e)
{
    memset(ref, 0, sizeof *ref);
    *fetched = false;
    pthread_mutex_lock(&c->mu);
    struct slot *s;
    while ((s = find(c, id)) != NULL && s->state == SLOT_LOADING) {
        pthread_cond_wait(&c->loaded, &c->mu);
    }
    if (s != NULL) {
        s->refs++;
        s->used = ++c->tick;
        ref->data = s->data;
        ref->len = s->len;
        ref->slot = s;
        pthread_mutex_unlock(&c->mu);
        return 0;
    }
    s = victim(c);
    if (s != NULL) {
        memcpy(s->id, id, REPO_CHUNK_ID);
        s->state = SLOT_LOADING;
    }
    pthread_mutex_unlock(&c->mu);

    uint8_t *plain = NULL;
    size_t len = 0;
    int rv = repo_get_chunk(c->r, id, c->copy, &plain, &len, stats, e);
    *fetched = true;
    if (s == NULL) {
        /* Every slot in use: serve this caller alone. */
        if (rv == 0) {
            ref->data = plain;
            ref->len = len;
            ref->owned = plain;
        }
        return rv;
    }
    pthread_mutex_lock(&c->mu);
    if (rv != 0) {
        s->state = SLOT_EMPTY; /* waiters try again themselves */
    } else {
        s->state = SLOT_READY;
        s->data = plain;
        s->len = len;
        s->refs = 1;
        s->used = ++c->tick;
        ref->data = plain;
        ref->len = len;
        ref->slot = s;
    }
    pthread_cond_broadcast(&c->loaded);
    pthread_mutex_unlock(&c->mu);
    return rv;
}

void pack_cache_release(struct pack_cache *c, struct pack_ref *ref)
{
    if (ref->owned != NULL) {
        hbc_free(ref->owned);
    } else if (ref->slot != NULL) {
        pthread_mutex_lock(&c->mu);
        ((struct slot *)ref->slot)->refs--;
        pthread_mutex_unlock(&c->mu);
    }
    memset(ref, 0, sizeof *ref);
}
