/* Reference lists (format HBCR): encoding and decoding, shared by the client and the nodes' GC. */
#include "common/reflist.h"

#include <string.h>

#include "common/alloc.h"

static void put_be32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}

static uint32_t get_be32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

int reflist_encode(const uint8_t (*parts)[REFLIST_ID_LEN], size_t nparts,
                   const uint8_t (*ids)[REFLIST_ID_LEN], size_t n, uint8_t **out, size_t *len,
                   struct err *e)
{
    *out = NULL;
    *len = 0;
    if (n > REFLIST_PER_OBJECT || nparts > REFLIST_MAX_PARTS) {
        return err_set(e, HBC_EINVAL, "reference list: %zu ids and %zu parts", n, nparts);
    }
    for (size_t i = 1; i < n; i++) {
        if (memcmp(ids[i - 1], ids[i], REFLIST_ID_LEN) >= 0) {
            return err_set(e, HBC_EINVAL, "reference list: ids not strictly increasing at %zu", i);
        }
    }
    size_t total = REFLIST_HEADER + (nparts + n) * REFLIST_ID_LEN;
    uint8_t *b = hbc_malloc(total);
    if (b == NULL) {
        return err_set(e, HBC_ENOMEM, "reference list");
    }
    memcpy(b, REFLIST_MAGIC, 4);
    b[4] = REFLIST_VERSION;
    b[5] = b[6] = b[7] = 0;
    put_be32(b + 8, (uint32_t)nparts);
    put_be32(b + 12, (uint32_t)n);
    if (nparts > 0) {
        memcpy(b + REFLIST_HEADER, parts, nparts * REFLIST_ID_LEN);
    }
    if (n > 0) {
        memcpy(b + REFLIST_HEADER + nparts * REFLIST_ID_LEN, ids, n * REFLIST_ID_LEN);
    }
    *out = b;
    *len = total;
    return 0;
}

int reflist_decode(const uint8_t *data, size_t len, const uint8_t (**parts)[REFLIST_ID_LEN],
                   size_t *nparts, const uint8_t (**ids)[REFLIST_ID_LEN], size_t *n, struct err *e)
{
    if (len < REFLIST_HEADER) {
        return err_set(e, HBC_ETRUNCATED, "reference list of %zu bytes", len);
    }
    if (memcmp(data, REFLIST_MAGIC, 4) != 0) {
        return err_set(e, HBC_EFORMAT, "reference list: bad magic");
    }
    if (data[4] != REFLIST_VERSION) {
        return err_set(e, HBC_EVERSION, "reference list version %u", data[4]);
    }
    if (data[5] != 0 || data[6] != 0 || data[7] != 0) {
        return err_set(e, HBC_EFORMAT, "reference list: reserved bytes set");
    }
    size_t np = get_be32(data + 8);
    size_t ni = get_be32(data + 12);
    if (np > REFLIST_MAX_PARTS || ni > REFLIST_PER_OBJECT) {
        return err_set(e, HBC_EFORMAT, "reference list: %zu parts and %zu ids", np, ni);
    }
    if (len != REFLIST_HEADER + (np + ni) * REFLIST_ID_LEN) {
        return err_set(
            e, len < REFLIST_HEADER + (np + ni) * REFLIST_ID_LEN ? HBC_ETRUNCATED : HBC_EFORMAT,
            "reference list of %zu bytes for %zu parts and %zu ids", len, np, ni);
    }
    const uint8_t(*pp)[REFLIST_ID_LEN] = (const uint8_t(*)[REFLIST_ID_LEN])(data + REFLIST_HEADER);
    const uint8_t(*ip)[REFLIST_ID_LEN] = pp + np;
    for (size_t i = 1; i < ni; i++) {
        if (memcmp(ip[i - 1], ip[i], REFLIST_ID_LEN) >= 0) {
            return err_set(e, HBC_EFORMAT, "reference list: ids not increasing at %zu", i);
        }
    }
    *parts = pp;
    *nparts = np;
    *ids = ip;
    *n = ni;
    return 0;
}
