/* Data-plane framing: a 4-byte big-endian length, then one protobuf hbc.Frame. */
#ifndef HBC_COMMON_FRAME_H
#define HBC_COMMON_FRAME_H

#include <stddef.h>
#include <stdint.h>

#include "common/err.h"
#include "common/frame_pool.h"
#include "hbc.pb-c.h"

/* Bytes of the length prefix in front of every frame. */
#define FRAME_PREFIX_LEN 4

/*
 * Default bound on a frame's body (the value of the length prefix) on the
 * data plane: shards are at most 4 MiB, and a PutShards or GetShardsReply
 * batches several of them.
 */
#define FRAME_MAX_DEFAULT ((size_t)64 << 20)

/*
 * Encoding. A frame must have a body (f->body_case set); one without is
 * refused with HBC_EINVAL, since every peer would refuse it with HBC_EPROTO.
 * The body may not exceed 4 GiB - 1 bytes (HBC_ETOOBIG); a receiver applies
 * its own, smaller bound.
 */

/* The size of f on the wire, prefix included. */
size_t frame_encoded_size(const Hbc__Frame *f);

/*
 * Encode f (borrowed) into buf[0..cap), prefix first, and set *out_len to the
 * bytes written. Returns 0, HBC_EINVAL (no body), HBC_ETOOBIG (body over
 * 4 GiB - 1) or HBC_ETRUNCATED (cap smaller than frame_encoded_size(f)).
 */
int frame_encode_into(const Hbc__Frame *f, uint8_t *buf, size_t cap, size_t *out_len,
                      struct err *e);

/*
 * Encode f (borrowed) into a new buffer *out of *out_len bytes, prefix first;
 * the caller frees it with hbc_free(). Returns 0, HBC_EINVAL, HBC_ETOOBIG or
 * HBC_ENOMEM; *out is NULL on error.
 */
int frame_encode(const Hbc__Frame *f, uint8_t **out, size_t *out_len, struct err *e);

/* Free a frame delivered by a frame_reader. NULL is a no-op. */
void frame_free(Hbc__Frame *f);

/*
 * Called once per complete, valid frame. Ownership of frame passes to the
 * callback, which releases it with frame_free() (now or later, e.g. after
 * work on another thread). Return 0 to go on; any other value stops
 * frame_reader_feed(), which returns it, and poisons the reader.
 */
typedef int (*frame_reader_cb)(Hbc__Frame *frame, void *arg);

/*
 * Called instead of frame_reader_cb for a frame decoded without copying its
 * bytes (common/frame_view.h: a put_shards frame gathered in the reader's
 * buffer): frame's bytes fields point into body, the frame's whole body.
 * Ownership of both passes to the callback, which releases them with
 * frame_view_release(frame, body, pool) (now or later, on the reader's
 * thread when there is a pool), pool being the one the reader was given.
 * Return values as for frame_reader_cb.
 */
typedef int (*frame_reader_view_cb)(Hbc__Frame *frame, uint8_t *body, void *arg);

/*
 * An incremental reader: feed it the byte stream in pieces of any size (as
 * TLS delivers them) and it calls back with each complete frame. A frame's
 * body is gathered in one buffer sized from its length prefix (no
 * reallocation, no quadratic copying); a frame that arrives whole inside one
 * piece is decoded in place without copying. Memory held between frames is
 * at most FRAME_KEEP_BUFFER bytes; during a frame, its body length, which
 * max_len bounds before anything is allocated.
 *
 * After any error the reader is poisoned: every later feed returns the same
 * code. The stream is out of sync and its connection must be closed.
 *
 * Embed it in the connection's state; one thread at a time.
 */
struct frame_reader {
    size_t max_len;               /* largest body accepted, at most UINT32_MAX */
    frame_reader_cb cb;           /* receives each frame */
    frame_reader_view_cb view_cb; /* receives put frames decoded in place, or NULL */
    struct frame_pool *pool;      /* where view bodies come from (borrowed), or NULL: the heap */
    void *arg;                    /* passed to cb */
    uint8_t prefix[4];            /* length prefix gathered so far */
    size_t prefix_have;           /* bytes of prefix[] filled */
    uint8_t *buf;                 /* body being gathered (or kept for reuse), or NULL */
    size_t cap;                   /* allocated bytes at buf */
    size_t need;                  /* body length of the frame in progress; 0 between frames */
    size_t have;                  /* body bytes of that frame in buf */
    int poison;                   /* the error that stopped the reader, or 0 */
    unsigned long long frames;    /* frames delivered so far */
    unsigned long long bytes;     /* stream bytes consumed so far (for error messages) */
};

/* A body buffer up to this size is kept for the next frame; a larger one is freed. */
#define FRAME_KEEP_BUFFER ((size_t)64 << 10)

/*
 * Set up r to deliver frames to cb(frame, arg). max_len bounds the body
 * length; 0 means FRAME_MAX_DEFAULT, and values above UINT32_MAX are clamped.
 * Allocates nothing.
 */
void frame_reader_init(struct frame_reader *r, size_t max_len, frame_reader_cb cb, void *arg);

/*
 * Deliver put_shards frames whose body was gathered in the reader's buffer
 * to view_cb, without copying the shards out of that buffer: the buffer
 * goes with the frame (the next frame gets a new one). Frames the fast
 * parser declines, and every other frame, still go to cb, unpacked by
 * protobuf-c. NULL turns it off (the default). Call it before the first
 * feed. Body buffers are taken from pool (borrowed; it must outlive the
 * reader and every body handed over; NULL: the heap) and given back to it
 * when the reader is done with them.
 */
void frame_reader_set_view_cb(struct frame_reader *r, frame_reader_view_cb view_cb,
                              struct frame_pool *pool);

/*
 * Feed len bytes of data (borrowed; not kept after the call). Calls cb for
 * every frame completed by these bytes, in order. data may be the pointer
 * frame_reader_room() returned, with len at most its room: the bytes are
 * then already in place. Returns 0 when all bytes were consumed, or:
 *   HBC_ETOOBIG  a length prefix exceeds max_len (checked before allocating);
 *   HBC_EFORMAT  a zero length, or a body that does not unpack as hbc.Frame;
 *   HBC_EPROTO   a frame with no body set: an unknown frame type, e.g. from a
 *                newer peer;
 *   HBC_ENOMEM   out of memory;
 *   HBC_EINVAL   data in the body buffer but longer than the room left;
 *   the callback's nonzero return value;
 *   the earlier error if the reader is already poisoned.
 * Frames delivered before an error stay delivered.
 */
int frame_reader_feed(struct frame_reader *r, const void *data, size_t len, struct err *e);

/*
 * Where the next bytes of the stream belong when r is in the middle of a
 * frame's body: a pointer into the body's buffer, *room being the bytes
 * the body still lacks. The buffer is allocated here if it is not yet (from
 * the pool, like frame_reader_feed() does; the length was bounded by
 * max_len when the prefix arrived). A source that can write the stream
 * straight there (TLS decrypting into it) then calls frame_reader_feed()
 * with data pointing at those bytes, at most *room of them: they are not
 * copied again. Returns NULL (*room 0) between frames (the prefix is not
 * complete), after an error, or when out of memory (the reader is then
 * poisoned with HBC_ENOMEM, which the next feed returns). The pointer is
 * valid until the next feed or release.
 */
uint8_t *frame_reader_room(struct frame_reader *r, size_t *room);

/*
 * Bytes of an incomplete frame held (prefix included): nonzero when the
 * stream ended mid-frame, i.e. the peer sent a truncated frame.
 */
size_t frame_reader_partial(const struct frame_reader *r);

/* Free r's buffer. r may be initialised again afterwards. NULL is a no-op. */
void frame_reader_release(struct frame_reader *r);

#endif /* HBC_COMMON_FRAME_H */
