/* libFuzzer target: the data-plane frame reader on a byte stream from a peer, cut into any pieces.
 */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "common/alloc.h"
#include "common/frame.h"
#include "fuzz.h"

/*
 * Input: a first byte that seeds how the stream is cut into pieces (as TLS
 * records would cut it), then the stream. The body bound is small, so that
 * the fuzzer meets "too big" as easily as anything else.
 */
#define FUZZ_MAX_BODY (64u << 10)

/* Check that a frame survives encoding and decoding unchanged. */
static int second_cb(Hbc__Frame *f, void *arg)
{
    const uint8_t *want = ((const uint8_t *const *)arg)[0];
    size_t want_len = *((const size_t *const *)arg)[1];
    uint8_t *again = NULL;
    size_t again_len = 0;
    FUZZ_CHECK(frame_encode(f, &again, &again_len, NULL) == 0);
    FUZZ_CHECK(again_len == want_len && memcmp(again, want, want_len) == 0);
    hbc_free(again);
    frame_free(f);
    return 0;
}

static int frame_cb(Hbc__Frame *f, void *arg)
{
    (*(unsigned long long *)arg)++;
    FUZZ_CHECK(f->body_case != HBC__FRAME__BODY__NOT_SET);

    /* A delivered frame encodes, and its encoding reads back as the same frame. */
    uint8_t *enc = NULL;
    size_t enc_len = 0;
    FUZZ_CHECK(frame_encode(f, &enc, &enc_len, NULL) == 0);
    FUZZ_CHECK(enc_len == frame_encoded_size(f));
    const void *ctx[2] = {enc, &enc_len};
    struct frame_reader r2;
    frame_reader_init(&r2, 0, second_cb, ctx);
    FUZZ_CHECK(frame_reader_feed(&r2, enc, enc_len, NULL) == 0);
    FUZZ_CHECK(r2.frames == 1 && frame_reader_partial(&r2) == 0);
    frame_reader_release(&r2);
    hbc_free(enc);
    frame_free(f);
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1) {
        return 0;
    }
    uint32_t cut = data[0] * 2654435761u | 1;
    data++;
    size--;

    unsigned long long frames = 0;
    struct frame_reader r;
    frame_reader_init(&r, FUZZ_MAX_BODY, frame_cb, &frames);
    struct err e;
    err_clear(&e);
    int rc = 0;
    size_t pos = 0;
    while (pos < size && rc == 0) {
        cut = cut * 1103515245u + 12345u;
        size_t piece = 1 + (cut >> 16) % 64;
        piece = piece < size - pos ? piece : size - pos;
        rc = frame_reader_feed(&r, data + pos, piece, &e);
        pos += piece;
    }
    FUZZ_CHECK(r.frames == frames);
    if (rc != 0) {
        fuzz_check_error(rc, &e);
        /* Poisoned: it keeps refusing, with the same code, and delivers nothing more. */
        FUZZ_CHECK(frame_reader_feed(&r, "\0\0\0\1\0", 5, NULL) == rc);
        FUZZ_CHECK(r.frames == frames);
    } else {
        FUZZ_CHECK(frame_reader_partial(&r) <= size);
    }
    frame_reader_release(&r);
    return 0;
}
