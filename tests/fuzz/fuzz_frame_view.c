/* libFuzzer target: the zero-copy PutShards decoder against protobuf-c on the same frame body. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "../unit/pb_compare.h"
#include "common/alloc.h"
#include "common/frame.h"
#include "common/frame_view.h"
#include "fuzz.h"

/* Frames each reader delivered, either way. */
struct counts {
    unsigned long long plain; /* through the plain callback */
    unsigned long long views; /* through the view callback */
};

static int plain_cb(Hbc__Frame *f, void *arg)
{
    ((struct counts *)arg)->plain++;
    frame_free(f);
    return 0;
}

static int view_cb(Hbc__Frame *f, uint8_t *body, void *arg)
{
    ((struct counts *)arg)->views++;
    FUZZ_CHECK(f->body_case == HBC__FRAME__BODY_PUT_SHARDS);
    frame_view_release(f, body, NULL);
    return 0;
}

/*
 * Input: a frame body. Whenever the fast parser accepts it, protobuf-c must
 * accept it too and decode the same fields, each shard's bytes lying inside
 * the body; and a reader with views must give the same verdict and number of
 * frames as one without, for the body behind a length prefix, fed in pieces.
 */
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    Hbc__Frame *pc = hbc__frame__unpack(NULL, size, data);
    Hbc__Frame *v = NULL;
    FUZZ_CHECK(frame_view_parse(data, size, &v, NULL) == 0);
    if (v != NULL) {
        FUZZ_CHECK(pc != NULL);
        FUZZ_CHECK(pb_compare(&pc->base, &v->base));
        for (size_t i = 0; i < v->put_shards->n_shards; i++) {
            const ProtobufCBinaryData *d = &v->put_shards->shards[i]->data;
            FUZZ_CHECK(d->len == 0 || (d->data >= data && d->data + d->len <= data + size));
        }
    }
    if (pc != NULL) {
        hbc__frame__free_unpacked(pc, NULL);
    }
    frame_view_free_frame(v);

    if (size == 0 || size > (1u << 20)) {
        return 0;
    }
    uint8_t *stream = malloc(size + 4);
    FUZZ_CHECK(stream != NULL);
    stream[0] = (uint8_t)(size >> 24);
    stream[1] = (uint8_t)(size >> 16);
    stream[2] = (uint8_t)(size >> 8);
    stream[3] = (uint8_t)size;
    memcpy(stream + 4, data, size);
    int rc[2];
    struct counts c[2] = {{0, 0}, {0, 0}};
    for (int w = 0; w < 2; w++) {
        struct frame_reader r;
        frame_reader_init(&r, 0, plain_cb, &c[w]);
        if (w == 1) {
            frame_reader_set_view_cb(&r, view_cb, NULL);
        }
        rc[w] = 0;
        size_t piece = 1 + size % 61;
        for (size_t off = 0; off < size + 4 && rc[w] == 0; off += piece) {
            rc[w] = frame_reader_feed(&r, stream + off,
                                      size + 4 - off < piece ? size + 4 - off : piece, NULL);
        }
        frame_reader_release(&r);
    }
    FUZZ_CHECK(rc[0] == rc[1]);
    FUZZ_CHECK(c[0].views == 0 && c[0].plain == c[1].plain + c[1].views);
    free(stream);
    return 0;
}
