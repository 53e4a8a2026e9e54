/* Zero-copy decoding of PutShards frames: the shards' bytes stay in the frame's body buffer. */
#ifndef HBC_COMMON_FRAME_VIEW_H
#define HBC_COMMON_FRAME_VIEW_H

#include <stddef.h>
#include <stdint.h>

#include "common/err.h"
#include "common/frame_pool.h"
#include "hbc.pb-c.h"

/*
 * protobuf-c copies every bytes field out of the buffer it unpacks, which
 * for a PutShards frame means copying every shard once more on the loop
 * thread. frame_view_parse() decodes such a frame into the same protobuf-c
 * structs (Hbc__Frame, Hbc__PutShards, Hbc__ShardBlob), but with every bytes
 * field pointing into the body, so the body must live as long as the frame.
 *
 * It is a fast path, never a second judge: it accepts only what protobuf-c
 * 1.4 accepts with the same result (unknown fields skipped, not kept) and
 * declines everything else, malformed input included, so that the caller
 * unpacks with protobuf-c, whose verdict and error codes stay the only ones.
 * It declines, among others: a frame whose body is not put_shards, a
 * missing required field, a field given twice (protobuf-c merges or keeps
 * the last), a second oneof member, packed or repeated scalars, a varint
 * longer than its type allows or wider than its field, group wire types,
 * field types it does not handle (strings, enums, signed and floating
 * types), a length beyond the end, nesting deeper than 8.
 *
 * The fields are read through protobuf-c's generated descriptors, so a
 * field added to ShardBlob, ShardKey or PutShards (or to Frame) is picked
 * up without code here when its type is one of: uint32, int32 (values
 * 0..2^31-1), uint64, int64, bool, fixed32, fixed64, bytes, or a message
 * made of those (optional, required or repeated). Any other type makes the
 * frames carrying it decline, which is correct, only slower.
 */

/*
 * Decode body[0..len) (borrowed; it must outlive *out) as an hbc.Frame with
 * a put_shards body. Returns 0 with *out set: a frame whose bytes fields
 * point into body (the owner of a writable body may write through them, as
 * into protobuf-c's copies), released with frame_view_free_frame(); 0 with
 * *out NULL:
 * declined, unpack it with protobuf-c instead; or HBC_ENOMEM. Any thread.
 */
int frame_view_parse(const uint8_t *body, size_t len, Hbc__Frame **out, struct err *e);

/*
 * Free a frame made by frame_view_parse(): its structs, never the bytes it
 * points to. NULL is a no-op. Not for frames protobuf-c unpacked
 * (frame_free()), nor the reverse.
 */
void frame_view_free_frame(Hbc__Frame *f);

/*
 * Release a frame and the body it points into, as a frame_reader_view_cb
 * receives them; pool is the reader's (frame_reader_set_view_cb()), or NULL.
 */
void frame_view_release(Hbc__Frame *frame, uint8_t *body, struct frame_pool *pool);

#endif /* HBC_COMMON_FRAME_VIEW_H */
