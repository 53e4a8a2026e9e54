/* FastCDC chunking with a gear hash and a zero-run rule; chunker.h specifies the cut rule. */
#include "common/chunker.h"

#include <string.h>

#include "common/alloc.h"

/* G: chunker.h says how it was made; test_chunker.c regenerates and compares it. */
const uint64_t chunker_gear[256] = {
    0x0000000000000000ULL, 0xe46bcccd66f121e6ULL, 0x4c018ad6555f26f8ULL, 0xada4ab2150259477ULL,
    0x012c032695b523abULL, 0x469237324bf9ca04ULL, 0x54baee17bab8ab12ULL, 0xb0f0e6333f14ee03ULL,
    0x612841f91e7b3412ULL, 0x34aefd7f5709a7baULL, 0xe800d401234c62a1ULL, 0x4b9accca2e75fce6ULL,
    0xaacbbd3c2b455a42ULL, 0x9357fb6a161db3efULL, 0x5afaa80cb5e1cd47ULL, 0x9f153ec8e17c3139ULL,
    0x71c635f1ec946c6cULL, 0xc046f2526cee0dc3ULL, 0xba034a815f3356dbULL, 0xe751690fc3ba374fULL,
    0x19b423b549ad16c9ULL, 0x35bf92c025d6a7b6ULL, 0x2596624ba8239774ULL, 0xcdda3a43552d52dfULL,
    0x2b2eb564bddeda63ULL, 0x8dc8d4e3f7499871ULL, 0x96c3873cf6a619feULL, 0x2fa95f4a2982c345ULL,
    0xa740c817adbee80fULL, 0xf8cd894527ae573eULL, 0xd1ada3710d5bddbfULL, 0xf49cf578008bc1d8ULL,
    0x301534cb92e0702aULL, 0x128705723c8a8570ULL, 0x10788c032eadcbe8ULL, 0x457ccb1134feb3d7ULL,
    0x45d43a8f4de9766cULL, 0x68360daed9679c30ULL, 0x60e4a09193f31988ULL, 0x5462994db190d98dULL,
    0xe84f18f4a96e1705ULL, 0xcf2a5c95dbef6e8fULL, 0xcb1ff523c4258f9cULL, 0x990b3260b79a8026ULL,
    0x604521ebd3ae89eaULL, 0xaf1624526b6ea90dULL, 0x7c89b3a266c89245ULL, 0xe8f5d6925eefbee8ULL,
    0x60e51f79f5df4467ULL, 0x5b6be68c9d56d2dfULL, 0x09fe26644bb725feULL, 0xb9c2810c304c6871ULL,
    0xaa0ce8a2ce0d77acULL, 0x8d8800f902ceede6ULL, 0x7f6dd5009b85893bULL, 0x5e2ff1a00aecd369ULL,
    0x9455908b2d706692ULL, 0x6ed5b19d5e3c6481ULL, 0x5eed5486999b8295ULL, 0x00659516a9980cbaULL,
    0x125f1fdf17530d7dULL, 0xbcd929376b5ce027ULL, 0xef83e356536e894fULL, 0xcede1d60a049bbf7ULL,
    0xe5d70e09e1a85171ULL, 0x4577e9d2568000e7ULL, 0xa3cef0a693f0b311ULL, 0x713586e6b5fd116fULL,
    0xbe795b0c2efbe1bcULL, 0x3e4a298709919f03ULL, 0x4c3d3fe5e0d5b255ULL, 0x6874f89c453c4cadULL,
    0xea450b915803fffaULL, 0xd2a5991e787a063eULL, 0xee19488d6fb6791fULL, 0xebe2e60fc4e061caULL,
    0x3b01914b1752601aULL, 0x5dcc1b992e6c9f46ULL, 0x819c17082d250b67ULL, 0xf53e906a2330983fULL,
    0xb4ec1a579e63ea86ULL, 0x6121aba3ea38d256ULL, 0x14a34b0a5cf463bdULL, 0x9dda3a06c7f23294ULL,
    0x469ccd0e81660708ULL, 0xf6ab041ec13eebc4ULL, 0x0352f9377e45cc0bULL, 0x34add9b721dcba0eULL,
    0x232bc0f5cfb1ea90ULL, 0x2479e8f529e34e40ULL, 0x5dd2c5449d3e1dd5ULL, 0xac546e39eace84a9ULL,
    0x03ada22e4a6b93beULL, 0x5ecdb88329684a8dULL, 0xec0fe9694ceadbfaULL, 0x9a6bb67c791565e7ULL,
    0x6eedb716ebf2e9a9ULL, 0x6a78c81c087f5009ULL, 0xf802f315cebc24c8ULL, 0xb45f187ec24db094ULL,
    0xcc08aeb519ac5fcdULL, 0x9894d6f6b5624d02ULL, 0x5a3cc96ede6a4273ULL, 0xd50397a8da1285adULL,
    0x7c802b368c49bb60ULL, 0x272f3594a5e13f05ULL, 0x80b2a28fca327bbbULL, 0x43a7918f9ee2e687ULL,
    0x8350e9ee38aa628eULL, 0x82323ec210928b15ULL, 0x14cba99764b0833eULL, 0x2b31e6d846e5eac4ULL,
    0x3cd2a3e8be06ee92ULL, 0xdc5948c3e74e47f4ULL, 0x273c9d239aafa27fULL, 0xffd845ad8ac1e2cbULL,
    0x5d0309b0e4b58947ULL, 0xb256ac2610d967d7ULL, 0x1f59e11f26aa161fULL, 0x5ccc928429c9112aULL,
    0x154a46672997acb5ULL, 0xfc5c5ae7566867c6ULL, 0x92c3b7dbe716262bULL, 0xe63532ac496ffcedULL,
    0xe6a2bf6c02d5dc9bULL, 0xe733d526e9bb8864ULL, 0xe099e09a8f686ea6ULL, 0x15a9c05cd15fa1dbULL,
    0x25957bfaafc100f8ULL, 0x5883312d12eb192cULL, 0xd973869b0f3b4099ULL, 0x2b85e61a09c59920ULL,
    0xbd11ac38edda5492ULL, 0xe297bf9f1e6ec7bfULL, 0x139a1b332d7d6b71ULL, 0x55c6118238d61d9aULL,
    0x48c7cb16f9ba4416ULL, 0x9589d776aa6e5f98ULL, 0xd25e4d3be7af3b20ULL, 0x396cd3a65da2782dULL,
    0x921f827242fe8b52ULL, 0x17a6635be4646f52ULL, 0x1ffbb51a55b99520ULL, 0xe2088613ec00bb05ULL,
    0x41d3355508c3b68dULL, 0xcbd8900778d3dff3ULL, 0xcac2fee0ef161955ULL, 0xbf90bed13ea4cda1ULL,
    0xf6f203148f30e7fbULL, 0xf2f61eccd73db69eULL, 0xabc6512fefa9be01ULL, 0x986f844106d8cf4cULL,
    0x11deee7a231b0e8dULL, 0x3205e924d94e2ec8ULL, 0x28289307dd6c85b6ULL, 0xe7a48f2642661ee8ULL,
    0x53a5d0fa83a97d6dULL, 0x36a1584801f9af9cULL, 0xd4e3169e177941ecULL, 0x9a37ea723b9c6060ULL,
    0x4f716dc96780ed29ULL, 0xb6e2797b4675ea0bULL, 0xbc06d1ed12742973ULL, 0x4fa2f25697aaeea7ULL,
    0xa098d65f94913a63ULL, 0x0158c9f75cfb7ba4ULL, 0x8dc025e9d12c6697ULL, 0x02be969fae8536d4ULL,
    0x48ddc873c8e4875dULL, 0x253dc1ef7656492aULL, 0x3435c4d9440f6d4aULL, 0xbb5f6d7a001cfb5aULL,
    0x5a8ee1208b88e616ULL, 0xd23e2faf0f4ac902ULL, 0xc1ea7947ee872d1eULL, 0xb8a60e4e1f02411cULL,
    0xfda10d27886e53ebULL, 0x98a7fbb9c6cd1284ULL, 0x9f3ef5d025ef2d01ULL, 0x375d367ee7beea13ULL,
    0x0eab471c7a4d6fceULL, 0x53c7d8f815c78115ULL, 0x011eacb131daaaddULL, 0x3edbd3c1f7730129ULL,
    0xcc1f28b8a9caa706ULL, 0x00495a1aaf7bfe4aULL, 0x0139445f3df90faeULL, 0x0dbf30b6e9c9d275ULL,
    0x14e27f382d2015a2ULL, 0x11fd783fc46265c2ULL, 0x3a84020ad396db00ULL, 0x0d52566a2c06dc35ULL,
    0x5a40774c906fc9aaULL, 0x56b954d1258a076cULL, 0xcd400dd7e1cd6b42ULL, 0xd1f0e924a1120de0ULL,
    0xb5e8b7957bd773acULL, 0x1ed1cba4e80a6932ULL, 0x403e161fb235800aULL, 0x7632c638a70287c5ULL,
    0x8654717053b34619ULL, 0x269d6fd743717952ULL, 0x060e81f693df19e3ULL, 0xde6018cbde8f47d1ULL,
    0x7402ad0e6eeb5606ULL, 0x67427eb9b0308f9bULL, 0xa6001e5d90bc5628ULL, 0x13babf5d20459e89ULL,
    0x19bdb65cd75eef16ULL, 0x217706b23f577ea8ULL, 0xd85e1671cea4086cULL, 0xa38d6288f2df2059ULL,
    0x25858c2f5aa079c2ULL, 0xbe0164bb8017b3bdULL, 0x3be20fe798a8843bULL, 0x22b0d3a98799541fULL,
    0xb99f31b87c3962e9ULL, 0x15461bdc3d4adff1ULL, 0x0a8888585a7c1a2dULL, 0x6a9b25826680c421ULL,
    0x20910d303d8f2f02ULL, 0xe31f7640dcab4199ULL, 0xd4d22db8de587ecdULL, 0xb9f9a12933899e67ULL,
    0x7dcc8b4e9ab3405bULL, 0xd3049b6e5eabdbaaULL, 0x22a126f2963cf21eULL, 0x2a1165e739ef441cULL,
    0x6c6e3371f3c82219ULL, 0xc5ae403b2560d53fULL, 0x6a633e2dd3b819d0ULL, 0x5085cbc7e3caed7cULL,
    0x6d0bce5c24473549ULL, 0x9ddd19db51445bf6ULL, 0xe8eb51f681da4687ULL, 0x7f8e8bf3e0b1c03cULL,
    0x27ee351aac1d0ae8ULL, 0x8a86f8e3fd1bf38bULL, 0x285b624924549bbfULL, 0x5df1fabdb534e664ULL,
    0x2e7f73da7ebab78eULL, 0x5086829366ce61c1ULL, 0xffde199a824aa6deULL, 0xdc94b1fc14d60a4cULL,
    0x03d195a37a66c9f9ULL, 0x9b95f93f2c7fdcc1ULL, 0x46447b44617fdf73ULL, 0xaea4f57e1f5b996aULL,
    0x49b6727f1dc1a522ULL, 0x6b6224529321d72aULL, 0x3ce82e2af9a7bd53ULL, 0x45f67e60f5dbbe27ULL,
    0x26bead8b5557e1f7ULL, 0xf50232f5db1cbbcdULL, 0x6fc6429763624f9aULL, 0x4755089a3d3417eeULL,
};

/* Bytes hashed before the first boundary that may be cut, so that H is exact there. */
#define WARM_UP 64u

void chunker_params_default(struct chunker_params *p)
{
    p->min_size = CHUNKER_MIN_DEFAULT;
    p->avg_size = CHUNKER_AVG_DEFAULT;
    p->max_size = CHUNKER_MAX_DEFAULT;
}

int chunker_params_check(const struct chunker_params *p, struct err *e)
{
    if (p == NULL) {
        return err_set(e, HBC_EINVAL, "chunker params: missing");
    }
    if (p->min_size < CHUNKER_MIN_FLOOR) {
        return err_set(e, HBC_EINVAL, "chunker params: min size %zu is below %u", p->min_size,
                       CHUNKER_MIN_FLOOR);
    }
    if (p->avg_size <= p->min_size) {
        return err_set(e, HBC_EINVAL, "chunker params: average size %zu is not above min size %zu",
                       p->avg_size, p->min_size);
    }
    if (p->max_size <= p->avg_size) {
        return err_set(e, HBC_EINVAL, "chunker params: max size %zu is not above average size %zu",
                       p->max_size, p->avg_size);
    }
    if (p->max_size > CHUNKER_MAX_CEIL) {
        return err_set(e, HBC_EINVAL, "chunker params: max size %zu is above %u", p->max_size,
                       CHUNKER_MAX_CEIL);
    }
    if (p->max_size - p->avg_size < p->min_size) {
        return err_set(e, HBC_EINVAL,
                       "chunker params: max size %zu is below min + average size (%zu)",
                       p->max_size, p->min_size + p->avg_size);
    }
    return 0;
}

int chunker_init(struct chunker *c, const struct chunker_params *p, struct err *e)
{
    struct chunker_params def;
    if (p == NULL) {
        chunker_params_default(&def);
        p = &def;
    }
    int rc = chunker_params_check(p, e);
    if (rc != 0) {
        return rc;
    }
    memset(c, 0, sizeof *c);
    c->min_size = p->min_size;
    c->avg_size = p->avg_size;
    c->max_size = p->max_size;
    c->thresh_small = UINT64_MAX / (4 * c->avg_size);
    c->thresh_large = 4 * (UINT64_MAX / c->avg_size);
    chunker_reset(c);
    return 0;
}

void chunker_reset(struct chunker *c)
{
    c->pos = 0;
    c->start = 0;
    c->hash = 0;
    c->zeros = 0;
    c->in_run = false;
}

uint64_t chunker_offset(const struct chunker *c)
{
    return c->pos;
}

uint64_t chunker_chunk_start(const struct chunker *c)
{
    return c->start;
}

/* Index of the first nonzero byte of p[0..n), or n. */
static size_t find_nonzero(const uint8_t *p, size_t n)
{
    size_t i = 0;
    for (; i + 32 <= n; i += 32) {
        uint64_t w[4];
        memcpy(w, p + i, sizeof w);
        if ((w[0] | w[1] | w[2] | w[3]) != 0) {
            break;
        }
    }
    for (; i < n; i++) {
        if (p[i] != 0) {
            return i;
        }
    }
    return n;
}

/* Number of zero bytes at the end of p[0..n). */
static size_t count_trailing_zeros(const uint8_t *p, size_t n)
{
    size_t i = n;
    if (i > 0 && p[i - 1] != 0) {
        return 0;
    }
    for (; i >= 32; i -= 32) {
        uint64_t w[4];
        memcpy(w, p + i - 32, sizeof w);
        if ((w[0] | w[1] | w[2] | w[3]) != 0) {
            break;
        }
    }
    while (i > 0 && p[i - 1] == 0) {
        i--;
    }
    return n - i;
}

/*
 * Hash p[0..n) into *hp; returns the index of the first byte after which the
 * hash is below t (leaving *hp at that hash), or n. This loop is where the
 * time goes: one table load, one lea and one compare per byte.
 */
static size_t gear_scan(const uint8_t *p, size_t n, uint64_t *hp, uint64_t t)
{
    uint64_t h = *hp;
    size_t i = 0;
#define GEAR_STEP_(k)                                                                              \
    h = (h << 1) + chunker_gear[p[i + (k)]];                                                       \
    if (__builtin_expect(h < t, 0)) {                                                              \
        i += (k);                                                                                  \
        goto found;                                                                                \
    }
    for (; i + 8 <= n; i += 8) {
        GEAR_STEP_(0)
        GEAR_STEP_(1)
        GEAR_STEP_(2)
        GEAR_STEP_(3)
        GEAR_STEP_(4)
        GEAR_STEP_(5)
        GEAR_STEP_(6)
        GEAR_STEP_(7)
    }
    for (; i < n; i++) {
        GEAR_STEP_(0)
    }
#undef GEAR_STEP_
    *hp = h;
    return n;
found:
    *hp = h;
    return i;
}

/* The current chunk ends after data[i - 1]. */
static bool cut(struct chunker *c, size_t i, size_t *used, uint64_t *chunk_len)
{
    *used = i;
    if (chunk_len != NULL) {
        *chunk_len = c->pos - c->start;
    }
    c->start = c->pos;
    c->hash = 0;
    return true;
}

static inline size_t min_avail(uint64_t want, size_t avail)
{
    return want < avail ? (size_t)want : avail;
}

/*
 * One pass of the loop below handles one stretch of the chunk, by where pos
 * (the next byte, which decides boundary pos + 1) lies: in an open long zero
 * run (only the next nonzero byte matters); in the first min - 64 bytes
 * (skipped: no boundary there may be cut, so only trailing zeros are
 * counted); in the next 63 (hashed byte by byte to warm the hash up); or from
 * the byte that ends a min-sized chunk on (gear_scan until a candidate).
 * Every decision depends on stream offsets and content only, never on where
 * a feed began or ended.
 */
bool chunker_next(struct chunker *c, const void *data, size_t len, size_t *used,
                  uint64_t *chunk_len)
{
    const uint8_t *p = data;
    size_t i = 0;

    for (;;) {
        uint64_t pos = c->pos;
        uint64_t min_end = c->start + c->min_size;
        uint64_t max_end = c->start + c->max_size;
        size_t avail = len - i;

        if (c->in_run) {
            /* Rules (b), (c) and (d): the next lattice point we may cut at, or max. */
            uint64_t first = pos - c->zeros + CHUNKER_ZERO_RUN;
            uint64_t from = pos > min_end ? pos : min_end;
            uint64_t point;
            if (from <= first) {
                point = first;
                if (point - c->start < c->avg_size) {
                    point += c->avg_size;
                }
            } else {
                uint64_t step = c->avg_size;
                point = first + (from - first + step - 1) / step * step;
            }
            uint64_t want = (point < max_end ? point : max_end) - pos;
            size_t n = min_avail(want, avail);
            size_t z = find_nonzero(p + i, n);
            i += z;
            c->pos += z;
            c->zeros += z;
            if (z < n) {
                /* data[i] is not zero: the run ends before it. */
                c->in_run = false;
                c->zeros = 0;
                c->hash = 0;
                if (c->pos - c->start >= c->avg_size) {
                    return cut(c, i, used, chunk_len);
                }
                continue;
            }
            if (z == want) {
                return cut(c, i, used, chunk_len);
            }
            break;
        }
        if (avail == 0) {
            break;
        }
        if (pos + WARM_UP < min_end) {
            /* No boundary here can be a cut: only count the zeros. */
            size_t n = min_avail(min_end - WARM_UP - pos, avail);
            size_t tz = count_trailing_zeros(p + i, n);
            c->zeros = tz == n ? c->zeros + n : tz;
            i += n;
            c->pos += n;
            c->in_run = c->zeros >= CHUNKER_ZERO_RUN;
            continue;
        }
        if (pos + 1 < min_end) {
            /* Warm the hash up: these bytes end boundaries shorter than min. */
            size_t n = min_avail(min_end - 1 - pos, avail);
            uint64_t h = c->hash;
            uint64_t zeros = c->zeros;
            size_t k = 0;
            while (k < n) {
                uint8_t x = p[i + k++];
                h = (h << 1) + chunker_gear[x];
                zeros = x != 0 ? 0 : zeros + 1;
                if (zeros >= CHUNKER_ZERO_RUN) {
                    c->in_run = true;
                    break;
                }
            }
            c->hash = h;
            c->zeros = zeros;
            i += k;
            c->pos += k;
            continue;
        }
        if (pos >= max_end) {
            return cut(c, i, used, chunk_len); /* rule (d) */
        }

        uint64_t t = c->thresh_large;
        uint64_t end = max_end;
        if (pos + 1 < c->start + c->avg_size) {
            t = c->thresh_small;
            end = c->start + c->avg_size - 1;
        }
        size_t n = min_avail(end - pos, avail);
        uint64_t h = c->hash;
        size_t k = gear_scan(p + i, n, &h, t);
        size_t scanned = k < n ? k + 1 : n;
        size_t tz = count_trailing_zeros(p + i, scanned);
        c->zeros = tz == scanned ? c->zeros + scanned : tz;
        c->hash = h;
        i += scanned;
        c->pos += scanned;
        if (k == n) {
            continue;
        }
        if (h != 0) {
            return cut(c, i, used, chunk_len); /* rule (a) */
        }
        /*
         * A zero hash: zeros, which keep it at 0 and are never hash
         * candidates. Skip to where the run becomes long (or max, or the
         * end of data).
         */
        if (c->zeros < CHUNKER_ZERO_RUN) {
            uint64_t want = CHUNKER_ZERO_RUN - c->zeros;
            if (max_end - c->pos < want) {
                want = max_end - c->pos;
            }
            size_t m = min_avail(want, len - i);
            size_t z = find_nonzero(p + i, m);
            i += z;
            c->pos += z;
            c->zeros += z;
        }
        c->in_run = c->zeros >= CHUNKER_ZERO_RUN;
    }
    *used = len;
    if (chunk_len != NULL) {
        *chunk_len = 0;
    }
    return false;
}

uint64_t chunker_finish(struct chunker *c)
{
    uint64_t last = c->pos - c->start;
    chunker_reset(c);
    return last;
}

int chunker_split(const struct chunker_params *p, const void *data, size_t len, uint64_t **ends,
                  size_t *count, struct err *e)
{
    struct chunker c;
    int rc = chunker_init(&c, p, e);
    if (rc != 0) {
        return rc;
    }
    *ends = NULL;
    *count = 0;
    if (len == 0) {
        return 0;
    }
    /* Every chunk but the last holds at least min bytes. */
    size_t cap = len / c.min_size + 1;
    uint64_t *v = hbc_malloc(cap * sizeof *v);
    if (v == NULL) {
        return err_set(e, HBC_ENOMEM, "chunker: %zu chunk ends", cap);
    }
    const uint8_t *b = data;
    size_t off = 0;
    size_t n = 0;
    size_t used;
    while (chunker_next(&c, b + off, len - off, &used, NULL)) {
        off += used;
        v[n++] = off;
    }
    if (chunker_finish(&c) > 0) {
        v[n++] = len;
    }
    *ends = v;
    *count = n;
    return 0;
}
