/* Content-defined chunking (FastCDC, gear hash): where a backup stream is cut into chunks. */
#ifndef HBC_COMMON_CHUNKER_H
#define HBC_COMMON_CHUNKER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/err.h"

/*
 * THE CUT RULE. Chunk ids are computed over chunk contents, so where chunks
 * end decides what deduplicates against data already stored. Everything in
 * this comment is therefore a stored format: changing any of it (the table,
 * the thresholds, the zero-run rule) re-chunks every file and loses all
 * deduplication with existing backups. tests/unit/test_chunker.c pins it.
 *
 * Bytes x[0], x[1], ... of a stream. A boundary b (0 < b) means a chunk ends
 * after x[b-1].
 *
 * Gear hash: H[i] = 2 * H[i-1] + G[x[i]] (mod 2^64), H[-1] = 0, so H[i] is a
 * function of x[i-63..i] alone (older bytes are shifted out). G is
 * chunker_gear[]: G[0] = 0, and G[1..255] are the first 255 outputs of
 * SplitMix64 (state += 0x9e3779b97f4a7c15; z = state; z = (z ^ z >> 30) *
 * 0xbf58476d1ce4e5b9; z = (z ^ z >> 27) * 0x94d049bb133111eb; z ^ z >> 31)
 * started from the state 0x4842432d47454152 ("HBC-GEAR"). G[0] = 0 makes a
 * window of zeros hash to exactly 0, which the zero-run rule below uses.
 *
 * Zero runs: Z(b) is the number of consecutive zero bytes ending at x[b-1].
 * A run is long once Z >= CHUNKER_ZERO_RUN (64, one whole hash window).
 *
 * For a chunk starting at s, with min, avg, max from chunker_params and
 * len = b - s, the chunk ends at the smallest boundary b with
 * min <= len <= max at which one of these holds:
 *   (a) hash:    0 < H[b-1] < T, where T = (2^64 - 1) / (4 * avg) while
 *                len < avg and T = 4 * ((2^64 - 1) / avg) from avg on, in
 *                integer division (FastCDC normalized chunking, level 2);
 *   (b) lattice: Z(b) >= 64 and (Z(b) - 64) is a multiple of avg, but the
 *                first point of a run (Z(b) = 64) only once len >= avg;
 *   (c) run end: Z(b) >= 64, x[b] exists and is not zero, and len >= avg;
 *   (d) size:    len = max;
 * or at the end of the stream if that comes first (the last chunk may be
 * shorter than min).
 *
 * Why (b) and (c): inside a zero run the hash is constant, so rule (a) alone
 * either cuts every min bytes or only at max, and the cut positions inside
 * and after the run depend on where the chunk began; an edit before the run
 * then changes chunks far after it. The lattice is anchored at the run's own
 * start, and min <= avg <= max - min, so chunkers that entered a long run
 * at different offsets reach the same lattice points within two cuts and
 * then stay on them: a run of min + 2 * avg + 64 zeros resynchronises
 * the stream whatever came before, and so does a shorter run whose end both
 * cut at. Inside long runs chunks are exactly avg bytes of zeros (one
 * stored object). The skip of the first min - 64 bytes of each chunk
 * (FastCDC) is exact: nothing there can be a cut, and H needs only 64 bytes.
 * Runs of other constant patterns (0xff, a 16-bit padding value) get no
 * lattice; chunks there are cut by (a) or (d) as in plain FastCDC.
 */

#define CHUNKER_MIN_DEFAULT (256u * 1024)      /* default smallest chunk (bytes) */
#define CHUNKER_AVG_DEFAULT (1024u * 1024)     /* default average chunk (bytes) */
#define CHUNKER_MAX_DEFAULT (4u * 1024 * 1024) /* default largest chunk (bytes) */
#define CHUNKER_MIN_FLOOR 1024u                /* min_size may not be smaller */
#define CHUNKER_MAX_CEIL (64u * 1024 * 1024)   /* max_size may not be larger */
#define CHUNKER_ZERO_RUN 64u                   /* zero bytes that make a run long */

/* The gear table G (see above). Never change it. */
extern const uint64_t chunker_gear[256];

/* Chunk sizes. A plain option struct: fill it with chunker_params_default() and adjust. */
struct chunker_params {
    size_t min_size; /* no chunk but the last is shorter (bytes) */
    size_t avg_size; /* the average the cut rule aims for (bytes) */
    size_t max_size; /* no chunk is longer (bytes) */
};

/* Set p to 256 KiB / 1 MiB / 4 MiB, the sizes DESIGN.md fixes for stored data. */
void chunker_params_default(struct chunker_params *p);

/*
 * Check p: CHUNKER_MIN_FLOOR <= min_size < avg_size < max_size <=
 * CHUNKER_MAX_CEIL and min_size + avg_size <= max_size (the zero-run lattice
 * needs that room). Returns 0 or HBC_EINVAL with a message naming the value.
 */
int chunker_params_check(const struct chunker_params *p, struct err *e);

/*
 * A chunker for one stream. Independent objects share nothing (the gear table
 * is constant), so any number of threads may each run their own; one object
 * is used by one thread at a time. Embed it or put it on the stack: it owns
 * no memory and needs no freeing. The fields are private to chunker.c.
 */
struct chunker {
    uint64_t min_size;     /* from the params */
    uint64_t avg_size;     /* from the params; also the zero-run lattice step */
    uint64_t max_size;     /* from the params */
    uint64_t thresh_small; /* hash threshold while the chunk is shorter than avg */
    uint64_t thresh_large; /* hash threshold from avg on */
    uint64_t pos;          /* stream offset of the next byte to scan */
    uint64_t start;        /* stream offset where the current chunk began */
    uint64_t hash;         /* gear hash of the bytes before pos (once hashing has begun) */
    uint64_t zeros;        /* zero bytes immediately before pos (exact) */
    bool in_run;           /* zeros >= CHUNKER_ZERO_RUN: a long zero run is open */
};

/*
 * Prepare c for a new stream with params p (borrowed; NULL means the
 * defaults). Returns 0, or HBC_EINVAL (c untouched) if p fails
 * chunker_params_check().
 */
int chunker_init(struct chunker *c, const struct chunker_params *p, struct err *e);

/* Start a new stream with the same params, forgetting all position state. */
void chunker_reset(struct chunker *c);

/*
 * Scan the next len bytes of the stream (data, borrowed, never copied: the
 * caller keeps the bytes of chunks it has not finished). Feed sizes do not
 * matter: any split of a stream into calls yields the same chunks.
 *
 * Returns true when the current chunk ended: *used is then the number of
 * bytes of data that belong to it (the chunk ends just before data[*used]; 0
 * means it ended exactly where the previous call's data ended, which happens
 * when the end of a zero run is only seen in the next byte) and *chunk_len is
 * its length, which may cover earlier calls' data too. The next chunk starts
 * there: call again with data + *used.
 * Returns false when all len bytes were scanned and the chunk goes on
 * (*used = len, *chunk_len = 0). chunk_len may be NULL; len may be 0.
 * Typical use for each block read from a file, then chunker_finish() at EOF:
 *     while (chunker_next(c, p, len, &n, &clen)) {
 *         emit_chunk(clen); // its last n bytes are p[0..n), the rest came before
 *         p += n;
 *         len -= n;
 *     }
 * Cost: 1 to 2 CPU cycles per byte from min on; zero runs and the first
 * min - 64 bytes of each chunk are passed over at memory speed.
 */
bool chunker_next(struct chunker *c, const void *data, size_t len, size_t *used,
                  uint64_t *chunk_len);

/*
 * End the stream: returns the length of its last chunk (0 if the stream was
 * empty or ended exactly at a cut), and resets c for a new stream.
 */
uint64_t chunker_finish(struct chunker *c);

/* Bytes of the stream scanned so far. */
uint64_t chunker_offset(const struct chunker *c);

/* Stream offset where the current (unfinished) chunk began. */
uint64_t chunker_chunk_start(const struct chunker *c);

/*
 * Chunk one whole buffer: *ends receives a new array (free it with
 * hbc_free()) of *count chunk end offsets, increasing, the last equal to len
 * (no chunks and *ends = NULL when len = 0). p is borrowed; NULL means the
 * defaults. Returns 0, HBC_EINVAL for bad params or HBC_ENOMEM.
 */
int chunker_split(const struct chunker_params *p, const void *data, size_t len, uint64_t **ends,
                  size_t *count, struct err *e);

#endif /* HBC_COMMON_CHUNKER_H */
