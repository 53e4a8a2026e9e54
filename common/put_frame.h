/* A PutShards request frame encoded as pieces that point at the shard bytes (no copy). */
#ifndef HBC_COMMON_PUT_FRAME_H
#define HBC_COMMON_PUT_FRAME_H

#include <stddef.h>
#include <stdint.h>

#include <uv.h>

#include "common/err.h"
#include "common/node_client.h"

/*
 * The bytes of a data-plane frame (common/frame.h: 4-byte length, then a
 * Frame with request_id and a PutShards body) are those that frame_encode()
 * makes of the same message, byte for byte; they are described here as a
 * list of pieces so that TLS can encrypt them straight from where they lie.
 * Small parts (lengths, tags, ids, each shard's head) are written into one
 * scratch buffer; each shard's data becomes a piece of its own that points
 * at the caller's bytes.
 *
 * A shard (struct node_client_shard) is either a whole encoded shard at
 * data (head NULL), or, with head set, the encoded shard
 * head[0..head_len) || data[0..len) || 32 zero bytes: its prefix and
 * header, its payload, and a trailer left for the node to fill in
 * (ShardBlob.sha256_unset is then sent whatever sha256_unset says).
 */

/* One encoded frame: pieces in order; bufs and scratch are owned (put_frame_free). */
struct put_frame {
    uv_buf_t *bufs;   /* the pieces, in order (owned array; bases borrowed or in scratch) */
    unsigned nbufs;   /* how many */
    uint8_t *scratch; /* the small parts (owned) */
    size_t len;       /* total bytes of the frame, its 4-byte length included */
};

/*
 * Encode a PutShards frame with request_id, shards[0..n) (borrowed: the
 * pieces point into their data until the frame is sent) and, when epoch is
 * not 0, PutShards.epoch. On success *out owns its arrays (put_frame_free).
 * Returns 0; HBC_EINVAL (n is 0, a NULL id or data, head_len above
 * 7 + 256), HBC_ETOOBIG (the frame would exceed 4 GiB - 1), HBC_ENOMEM.
 * Any thread.
 */
int put_frame_encode(uint64_t request_id, const struct node_client_shard *shards, size_t n,
                     uint64_t epoch, struct put_frame *out, struct err *e);

/* Copy the frame's pieces into one new buffer of f->len bytes (hbc_free); NULL on ENOMEM. */
uint8_t *put_frame_flatten(const struct put_frame *f);

/* Free f's arrays and zero it. f may be NULL. */
void put_frame_free(struct put_frame *f);

#endif /* HBC_COMMON_PUT_FRAME_H */
