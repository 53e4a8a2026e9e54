/* Reference lists (format HBCR): the sorted chunk ids a snapshot uses, readable by the cluster. */
#ifndef HBC_COMMON_REFLIST_H
#define HBC_COMMON_REFLIST_H

#include <stddef.h>
#include <stdint.h>

#include "common/err.h"

/*
 * THE REFERENCE LIST FORMAT (version 1). A snapshot's ref_list_id names the
 * head object of its reference list: every chunk id the snapshot uses (file
 * data, tree objects, chunk lists), sorted bytewise, without duplicates.
 *
 *   offset  size      field
 *   0       4         magic "HBCR"
 *   4       1         version 1
 *   5       3         zero
 *   8       4         P, number of part ids (big-endian); 0 in a part
 *   12      4         N, number of ids (big-endian)
 *   16      32 * P    ids of the earlier parts, in order (head only)
 *   16+32P  32 * N    ids, strictly increasing
 *
 * A list longer than REFLIST_PER_OBJECT ids is cut into parts of that many
 * ids; the head holds the last run and names the parts before it. Ids
 * increase strictly across parts and head in reading order (parts, then the
 * head).
 *
 * Storage. The objects are NOT encrypted: chunk ids are HMACs that reveal
 * nothing, and the nodes' garbage collector must read them. Each object's id
 * is the SHA-256 of its bytes (the reader checks it), and it is stored as one
 * shard (k = 1, m = 0, index 0, the whole object as payload) on every node
 * of the cluster that accepts it (client/snapshot_io.c).
 */

#define REFLIST_ID_LEN 32          /* chunk ids and object ids */
#define REFLIST_MAGIC "HBCR"       /* reference list objects */
#define REFLIST_VERSION 1          /* written and accepted */
#define REFLIST_HEADER 16          /* bytes before the ids */
#define REFLIST_PER_OBJECT 131000u /* ids in one object (about 4 MiB) */
#define REFLIST_MAX_PARTS 65536u   /* parts a head may name */

/*
 * Encode one object: parts[0..nparts) then ids[0..n) (ids strictly
 * increasing, n <= REFLIST_PER_OBJECT, nparts <= REFLIST_MAX_PARTS). On 0
 * *out (hbc_free) holds *len bytes. Returns 0, HBC_EINVAL or HBC_ENOMEM.
 */
int reflist_encode(const uint8_t (*parts)[REFLIST_ID_LEN], size_t nparts,
                   const uint8_t (*ids)[REFLIST_ID_LEN], size_t n, uint8_t **out, size_t *len,
                   struct err *e);

/*
 * Decode one object (data, len bytes, borrowed). On 0, *parts and *ids
 * point into data (*nparts and *n of them). Returns 0, HBC_ETRUNCATED,
 * HBC_EFORMAT (magic, counts, order) or HBC_EVERSION.
 */
int reflist_decode(const uint8_t *data, size_t len, const uint8_t (**parts)[REFLIST_ID_LEN],
                   size_t *nparts, const uint8_t (**ids)[REFLIST_ID_LEN], size_t *n, struct err *e);

#endif /* HBC_COMMON_REFLIST_H */
