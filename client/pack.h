/* Restore's cache of recently read packs: chunks holding many small files, read once, served to
 * each. */
#ifndef HBC_CLIENT_PACK_H
#define HBC_CLIENT_PACK_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "client/repo.h"
#include "common/err.h"

/*
 * A pack (see client/backup.h, docs/formats.md "Packs") is an ordinary
 * chunk whose plaintext holds many small files back to back; tree entries
 * name slices of it. A restore reads each pack once and serves every file
 * in it: the cache holds up to PACK_CACHE_SLOTS packs (at most
 * CHUNK_OBJECT_MAX_PLAINTEXT bytes each), reference counted; a pack being
 * fetched by one thread is waited for by others that want it. When every
 * slot is in use a pack is fetched without being cached.
 *
 * Thread-safe: any number of threads may get and release at once.
 */

#define PACK_CACHE_SLOTS 8u /* packs kept at most */

struct pack_cache;

/* A pack in use: its plaintext (borrowed until pack_cache_release). */
struct pack_ref {
    const uint8_t *data; /* plaintext */
    size_t len;          /* its bytes */
    void *slot;          /* internal: the cache slot, or NULL */
    uint8_t *owned;      /* internal: an uncached copy, or NULL */
};

/*
 * Make a cache reading from r (borrowed, must outlive the cache) with
 * copy (-1: any copy; as repo_get_chunk). Returns 0 or HBC_ENOMEM.
 */
int pack_cache_new(struct pack_cache **out, struct repo *r, int copy, struct err *e);

/* Free c (every ref released first). NULL is a no-op. */
void pack_cache_free(struct pack_cache *c);

/*
 * Get pack id into *ref: from the cache, or read through repo_get_chunk
 * (which authenticates it and checks its id). *fetched says whether this
 * call read it; stats (may be NULL) gets the read's counts added. A failed
 * read is not cached. Returns 0 or what repo_get_chunk returned.
 */
int pack_cache_get(struct pack_cache *c, const uint8_t id[REPO_CHUNK_ID], struct pack_ref *ref,
                   bool *fetched, struct repo_read_stats *stats, struct err *e);

/* Give back a ref got from pack_cache_get (it is cleared). */
void pack_cache_release(struct pack_cache *c, struct pack_ref *ref);

#endif /* HBC_CLIENT_PACK_H */
