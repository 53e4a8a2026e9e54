/* A frame encoded as pieces that point at its large bytes fields (replies sent without a copy). */
#ifndef HBC_COMMON_FRAME_SCATTER_H
#define HBC_COMMON_FRAME_SCATTER_H

#include <stddef.h>
#include <stdint.h>

#include <uv.h>

#include "common/err.h"
#include "hbc.pb-c.h"

/* Bytes fields at least this long are pointed at rather than copied. */
#define FRAME_SCATTER_BORROW_MIN 1024

/*
 * A frame on the wire as bufs[0..nbufs): the length prefix and every small
 * field in scratch, each bytes field of FRAME_SCATTER_BORROW_MIN bytes or
 * more as a piece pointing into the message it came from (borrowed: the
 * message's buffers must outlive every use of bufs). len is the total.
 */
struct frame_scatter {
    uv_buf_t *bufs;   /* the pieces, in order (owned array) */
    unsigned nbufs;   /* how many */
    size_t len;       /* bytes in all, prefix included */
    uint8_t *scratch; /* the copied small bytes (owned) */
};

/*
 * Encode f (borrowed) as frame_encode() would, byte for byte, but without
 * copying its large bytes fields (protobuf-c's pack_to_buffer hands each one
 * over as it is). Returns 0, HBC_EINVAL (no body), HBC_ETOOBIG (body over
 * 4 GiB - 1) or HBC_ENOMEM; on error *out is empty. Any thread.
 */
int frame_scatter_encode(const Hbc__Frame *f, struct frame_scatter *out, struct err *e);

/* Free what frame_scatter_encode() allocated (not the borrowed bytes). NULL-safe, idempotent. */
void frame_scatter_free(struct frame_scatter *s);

#endif /* HBC_COMMON_FRAME_SCATTER_H */
