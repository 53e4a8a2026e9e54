/* A cache of large frame body buffers for one loop thread, so that their pages stay mapped. */
#ifndef HBC_COMMON_FRAME_POOL_H
#define HBC_COMMON_FRAME_POOL_H

#include <stddef.h>
#include <stdint.h>

/*
 * A put frame's body is gathered into a buffer of several MiB that lives
 * until the put is committed. Taken fresh from malloc each time, such a
 * buffer is a new mapping whose every page the kernel faults in and zeroes
 * while the frame is copied in: on hbcd's loop thread that cost more than
 * the copy itself. Buffers given back to the pool are handed out again
 * instead, up to max_bytes of them kept idle (the rest are freed).
 *
 * One thread only (no locking). Reference-counted, so that every
 * connection that may still give a buffer back can keep it alive.
 */
struct frame_pool;

/*
 * A new pool keeping at most max_bytes of idle buffers, with one reference.
 * Returns NULL when out of memory.
 */
struct frame_pool *frame_pool_new(size_t max_bytes);

/* Take another reference to p (NULL: nothing). */
void frame_pool_ref(struct frame_pool *p);

/* Drop a reference; the last frees p and its idle buffers. NULL is a no-op. */
void frame_pool_unref(struct frame_pool *p);

/*
 * A buffer of at least len bytes (its usable size in *cap), from the pool
 * when one fits, else new. p NULL: plain hbc_malloc(len). Returns NULL when
 * out of memory.
 */
uint8_t *frame_pool_get(struct frame_pool *p, size_t len, size_t *cap);

/*
 * Give back a buffer frame_pool_get(p, ...) returned (ownership passes). p
 * NULL: hbc_free(buf). NULL buf is a no-op.
 */
void frame_pool_put(struct frame_pool *p, uint8_t *buf);

#endif /* HBC_COMMON_FRAME_POOL_H */
