/* A cache of large frame body buffers for one loop thread (see frame_pool.h). */
#include "common/frame_pool.h"

#include <stdalign.h>

#include "common/alloc.h"

/* Buffers are sized in steps of this, so that frames of similar sizes share them. */
#define POOL_STEP ((size_t)64 << 10)
/* Idle buffers kept at most, whatever their bytes. */
#define POOL_MAX_IDLE 64

/* What sits in front of every buffer the pool hands out. */
struct pool_hdr {
    alignas(max_align_t) size_t cap; /* usable bytes after the header */
};

struct frame_pool {
    size_t max_bytes;                     /* idle bytes kept at most */
    size_t idle_bytes;                    /* idle bytes kept now */
    unsigned refs;                        /* references */
    size_t nidle;                         /* entries in idle */
    struct pool_hdr *idle[POOL_MAX_IDLE]; /* idle buffers */
};

struct frame_pool *frame_pool_new(size_t max_bytes)
{
    struct frame_pool *p = hbc_calloc(1, sizeof *p);
    if (p != NULL) {
        p->max_bytes = max_bytes;
        p->refs = 1;
    }
    return p;
}

void frame_pool_ref(struct frame_pool *p)
{
    if (p != NULL) {
        p->refs++;
    }
}

void frame_pool_unref(struct frame_pool *p)
{
    if (p == NULL || --p->refs > 0) {
        return;
    }
    for (size_t i = 0; i < p->nidle; i++) {
        hbc_free(p->idle[i]);
    }
    hbc_free(p);
}

uint8_t *frame_pool_get(struct frame_pool *p, size_t len, size_t *cap)
{
    if (p == NULL) {
        *cap = len;
        return hbc_malloc(len > 0 ? len : 1);
    }
    /* An idle buffer that fits without wasting more than half of it. */
    for (size_t i = p->nidle; i-- > 0;) {
        struct pool_hdr *h = p->idle[i];
        if (h->cap >= len && h->cap / 2 <= len) {
            p->idle[i] = p->idle[--p->nidle];
            p->idle_bytes -= h->cap;
            *cap = h->cap;
            return (uint8_t *)(h + 1);
        }
    }
    size_t want = len + POOL_STEP - 1 < len ? len : (len + POOL_STEP - 1) / POOL_STEP * POOL_STEP;
    if (want > SIZE_MAX - sizeof(struct pool_hdr)) {
        return NULL;
    }
    struct pool_hdr *h = hbc_malloc(sizeof *h + want);
    if (h == NULL) {
        return NULL;
    }
    h->cap = want;
    *cap = want;
    return (uint8_t *)(h + 1);
}

void frame_pool_put(struct frame_pool *p, uint8_t *buf)
{
    if (buf == NULL) {
        return;
    }
    if (p == NULL) {
        hbc_free(buf);
        return;
    }
    struct pool_hdr *h = (struct pool_hdr *)buf - 1;
    if (p->nidle == POOL_MAX_IDLE || p->idle_bytes + h->cap > p->max_bytes) {
        hbc_free(h);
        return;
    }
    p->idle[p->nidle++] = h;
    p->idle_bytes += h->cap;
}
