/* The replicated state machine's snapshots: serialise the whole state, restore it, digest it. */
#include "node/fsm_internal.h"

#include <string.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>

#include "common/alloc.h"

/*
 * Snapshot format, version 1 (all integers big-endian):
 *
 *   "HBCFSNAP"            8 bytes magic
 *   version               u32 (1)
 *   column families       u32 (META_CF_COUNT)
 *   applied index         u64 (equal to the meta applied_index record, 0 if none)
 *   for each column family, in enum meta_cf order:
 *     name length         u16, then the name ("default", "meta", ...)
 *     entries in key order, each:
 *       0x01, key length u32, key, value length u32, value
 *     0x00                end of this column family
 *   SHA-256               32 bytes over everything before it
 *
 * Key lengths are 1..META_KEY_MAX and value lengths 0..META_VALUE_MAX, on
 * both sides. The same byte stream, hashed instead of stored, is the digest.
 */

#define SNAP_MAGIC "HBCFSNAP"
#define SNAP_MAGIC_LEN 8
#define SNAP_VERSION 1
#define SNAP_HEADER_LEN (SNAP_MAGIC_LEN + 4 + 4 + 8)
#define SNAP_TRAILER_LEN 32
#define SNAP_ENTRY 0x01
#define SNAP_END 0x00
#define SNAP_INITIAL_CAP (64 * 1024)

/* Where the serialised stream goes: always a hash, and a raft_malloc'ed buffer when buffered. */
struct sink {
    EVP_MD_CTX *md; /* SHA-256 of everything written */
    bool buffered;  /* whether bytes are also kept */
    uint8_t *buf;   /* raft_malloc'ed output (buffered only) */
    size_t len;     /* bytes in buf */
    size_t cap;     /* allocated bytes of buf */
    int rc;         /* first failure (sticky), 0 while fine */
    struct err *e;  /* where a failure is described */
};

static void sink_write(struct sink *s, const void *p, size_t n)
{
    if (s->rc != 0 || n == 0) {
        return;
    }
    if (EVP_DigestUpdate(s->md, p, n) != 1) {
        s->rc = err_openssl(s->e, HBC_ECRYPTO, "snapshot digest");
        return;
    }
    if (!s->buffered) {
        return;
    }
    if (s->cap - s->len < n) {
        size_t cap = s->cap > 0 ? s->cap : SNAP_INITIAL_CAP;
        while (cap - s->len < n) {
            cap *= 2;
        }
        uint8_t *p2 = raft_realloc(s->buf, cap);
        if (p2 == NULL) {
            s->rc = err_set(s->e, HBC_ENOMEM, "snapshot of %zu bytes", cap);
            return;
        }
        s->buf = p2;
        s->cap = cap;
    }
    memcpy(s->buf + s->len, p, n);
    s->len += n;
}

static void sink_u8(struct sink *s, uint8_t v)
{
    sink_write(s, &v, 1);
}

static void sink_u16(struct sink *s, uint16_t v)
{
    uint8_t b[2] = {(uint8_t)(v >> 8), (uint8_t)v};
    sink_write(s, b, 2);
}

static void sink_u32(struct sink *s, uint32_t v)
{
    uint8_t b[4] = {(uint8_t)(v >> 24), (uint8_t)(v >> 16), (uint8_t)(v >> 8), (uint8_t)v};
    sink_write(s, b, 4);
}

static void sink_u64(struct sink *s, uint64_t v)
{
    uint8_t b[8];
    fsm_put_be64(b, v);
    sink_write(s, b, 8);
}

static int entry_visit(const void *key, size_t klen, const void *val, size_t vlen, void *arg)
{
    struct sink *s = arg;
    if (klen == 0 || klen > META_KEY_MAX || vlen > META_VALUE_MAX) {
        s->rc =
            err_set(s->e, HBC_ETOOBIG, "snapshot: key of %zu or value of %zu bytes", klen, vlen);
        return s->rc;
    }
    sink_u8(s, SNAP_ENTRY);
    sink_u32(s, (uint32_t)klen);
    sink_write(s, key, klen);
    sink_u32(s, (uint32_t)vlen);
    sink_write(s, val, vlen);
    return s->rc;
}

/* Write the whole stream (without its trailer) from one consistent view, and finish the hash. */
static int serialise(struct fsm *f, struct sink *s, uint8_t trailer[SNAP_TRAILER_LEN],
                     struct err *e)
{
    struct meta_view *view = NULL;
    s->e = e;
    s->md = EVP_MD_CTX_new();
    if (s->md == NULL || EVP_DigestInit_ex(s->md, EVP_sha256(), NULL) != 1) {
        EVP_MD_CTX_free(s->md);
        s->md = NULL;
        return err_openssl(e, HBC_ECRYPTO, "snapshot digest");
    }
    int rc = meta_view_open(f->store, &view, e);
    if (rc != 0) {
        goto out;
    }
    uint64_t applied = 0;
    void *v = NULL;
    size_t n = 0;
    rc = meta_store_get(f->store, view, META_CF_META, FSM_META_APPLIED, strlen(FSM_META_APPLIED),
                        &v, &n, e);
    if (rc == 0 && n == 8) {
        applied = fsm_get_be64(v);
    } else if (rc == 0) {
        rc = err_set(e, HBC_ECORRUPT, "meta applied index of %zu bytes", n);
    } else if (rc == HBC_ENOTFOUND) {
        rc = 0;
    }
    hbc_free(v);
    if (rc != 0) {
        goto out;
    }
    sink_write(s, SNAP_MAGIC, SNAP_MAGIC_LEN);
    sink_u32(s, SNAP_VERSION);
    sink_u32(s, META_CF_COUNT);
    sink_u64(s, applied);
    for (int cf = 0; cf < META_CF_COUNT && s->rc == 0; cf++) {
        const char *name = meta_cf_name(cf);
        sink_u16(s, (uint16_t)strlen(name));
        sink_write(s, name, strlen(name));
        rc = meta_store_scan(f->store, view, cf, NULL, 0, entry_visit, s, e);
        if (rc != 0) {
            goto out;
        }
        sink_u8(s, SNAP_END);
    }
    rc = s->rc;
    if (rc != 0) {
        goto out;
    }
    unsigned int dl = 0;
    if (EVP_DigestFinal_ex(s->md, trailer, &dl) != 1 || dl != SNAP_TRAILER_LEN) {
        rc = err_openssl(e, HBC_ECRYPTO, "snapshot digest");
    }
out:
    meta_view_close(view);
    EVP_MD_CTX_free(s->md);
    s->md = NULL;
    return rc;
}

int fsm_snapshot_take(struct fsm *f, void **out, size_t *len, struct err *e)
{
    *out = NULL;
    *len = 0;
    struct sink s = {.buffered = true};
    uint8_t trailer[SNAP_TRAILER_LEN];
    int rc = serialise(f, &s, trailer, e);
    if (rc == 0 && s.cap - s.len < SNAP_TRAILER_LEN) {
        uint8_t *p = raft_realloc(s.buf, s.len + SNAP_TRAILER_LEN);
        if (p == NULL) {
            rc = err_set(e, HBC_ENOMEM, "snapshot trailer");
        } else {
            s.buf = p;
            s.cap = s.len + SNAP_TRAILER_LEN;
        }
    }
    if (rc != 0) {
        raft_free(s.buf);
        err_wrap(e, "snapshot");
        return rc;
    }
    memcpy(s.buf + s.len, trailer, SNAP_TRAILER_LEN);
    *out = s.buf;
    *len = s.len + SNAP_TRAILER_LEN;
    f->stats.snapshots++;
    return 0;
}

int fsm_digest(struct fsm *f, uint8_t out[FSM_DIGEST_LEN], struct err *e)
{
    struct sink s = {.buffered = false};
    int rc = serialise(f, &s, out, e);
    if (rc != 0) {
        err_wrap(e, "digest");
        return rc;
    }
    return 0;
}

/* A bounded reader over the snapshot body. */
struct reader {
    const uint8_t *p; /* next byte */
    size_t left;      /* bytes left before the trailer */
};

static int rd(struct reader *r, size_t n, const uint8_t **out, struct err *e)
{
    if (r->left < n) {
        return err_set(e, HBC_ETRUNCATED, "snapshot: %zu bytes wanted, %zu left", n, r->left);
    }
    *out = r->p;
    r->p += n;
    r->left -= n;
    return 0;
}

static int rd_u32(struct reader *r, uint32_t *v, struct err *e)
{
    const uint8_t *p = NULL;
    int rc = rd(r, 4, &p, e);
    if (rc == 0) {
        *v = (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
    }
    return rc;
}

/* Parse the body after the header, adding a put per entry to b. */
static int parse_body(struct reader *r, uint64_t applied, uint32_t n_cf, struct meta_batch *b,
                      struct err *e)
{
    bool saw_applied = false;
    for (int cf = 0; cf < (int)n_cf; cf++) {
        const char *want = meta_cf_name(cf);
        const uint8_t *p = NULL;
        int rc = rd(r, 2, &p, e);
        if (rc != 0) {
            return rc;
        }
        size_t name_len = (size_t)p[0] << 8 | p[1];
        rc = rd(r, name_len, &p, e);
        if (rc != 0) {
            return rc;
        }
        if (name_len != strlen(want) || memcmp(p, want, name_len) != 0) {
            return err_set(e, HBC_EFORMAT, "snapshot: column family %d is not \"%s\"", cf, want);
        }
        for (;;) {
            const uint8_t *tag = NULL;
            rc = rd(r, 1, &tag, e);
            if (rc != 0) {
                return rc;
            }
            if (*tag == SNAP_END) {
                break;
            }
            if (*tag != SNAP_ENTRY) {
                return err_set(e, HBC_EFORMAT, "snapshot: %s: bad entry tag 0x%02x", want, *tag);
            }
            uint32_t klen = 0;
            uint32_t vlen = 0;
            const uint8_t *key = NULL;
            const uint8_t *val = NULL;
            rc = rd_u32(r, &klen, e);
            if (rc == 0 && (klen == 0 || klen > META_KEY_MAX)) {
                rc = err_set(e, HBC_ETOOBIG, "snapshot: %s: key of %u bytes", want, klen);
            }
            if (rc == 0) {
                rc = rd(r, klen, &key, e);
            }
            if (rc == 0) {
                rc = rd_u32(r, &vlen, e);
            }
            if (rc == 0 && vlen > META_VALUE_MAX) {
                rc = err_set(e, HBC_ETOOBIG, "snapshot: %s: value of %u bytes", want, vlen);
            }
            if (rc == 0) {
                rc = rd(r, vlen, &val, e);
            }
            if (rc != 0) {
                return rc;
            }
            if (cf == META_CF_META && klen == strlen(FSM_META_APPLIED) &&
                memcmp(key, FSM_META_APPLIED, klen) == 0) {
                if (vlen != 8 || fsm_get_be64(val) != applied) {
                    return err_set(e, HBC_EFORMAT,
                                   "snapshot: applied index record disagrees with the header");
                }
                saw_applied = true;
            }
            meta_batch_put(b, cf, key, klen, val, vlen);
        }
    }
    if (r->left != 0) {
        return err_set(e, HBC_EFORMAT, "snapshot: %zu bytes after the last column family", r->left);
    }
    if (applied != 0 && !saw_applied) {
        return err_set(e, HBC_EFORMAT, "snapshot: header index %llu without its record",
                       (unsigned long long)applied);
    }
    return 0;
}

int fsm_snapshot_restore(struct fsm *f, const void *buf, size_t len, struct err *e)
{
    const uint8_t *in = buf;
    if (buf == NULL || len < SNAP_HEADER_LEN + SNAP_TRAILER_LEN) {
        return err_set(e, HBC_ETRUNCATED, "restore: snapshot of %zu bytes", len);
    }
    if (memcmp(in, SNAP_MAGIC, SNAP_MAGIC_LEN) != 0) {
        return err_set(e, HBC_EFORMAT, "restore: not an HBC state snapshot");
    }
    struct reader r = {.p = in + SNAP_MAGIC_LEN, .left = len - SNAP_MAGIC_LEN - SNAP_TRAILER_LEN};
    uint32_t version = 0;
    uint32_t n_cf = 0;
    rd_u32(&r, &version, e);
    rd_u32(&r, &n_cf, e);
    if (version != SNAP_VERSION) {
        return err_set(e, HBC_EVERSION, "restore: snapshot version %u, this node reads %d", version,
                       SNAP_VERSION);
    }
    uint8_t digest[SNAP_TRAILER_LEN];
    unsigned int dl = 0;
    if (EVP_Digest(in, len - SNAP_TRAILER_LEN, digest, &dl, EVP_sha256(), NULL) != 1) {
        return err_openssl(e, HBC_ECRYPTO, "restore: digest");
    }
    if (CRYPTO_memcmp(digest, in + len - SNAP_TRAILER_LEN, SNAP_TRAILER_LEN) != 0) {
        return err_set(e, HBC_ECORRUPT, "restore: snapshot trailer");
    }
    /* An older snapshot has fewer families (new ones are appended); those stay empty. */
    if (n_cf < META_CF_COUNT_V1 || n_cf > META_CF_COUNT) {
        return err_set(e, HBC_EFORMAT, "restore: %u column families, want %d..%d", n_cf,
                       META_CF_COUNT_V1, META_CF_COUNT);
    }
    const uint8_t *p = NULL;
    rd(&r, 8, &p, e);
    uint64_t applied = fsm_get_be64(p);

    struct meta_batch *b = NULL;
    int rc = meta_batch_new(f->store, &b, e);
    for (int cf = 0; cf < META_CF_COUNT && rc == 0; cf++) {
        rc = meta_batch_delete_all(b, cf, e);
    }
    if (rc == 0) {
        rc = parse_body(&r, applied, n_cf, b, e);
    }
    if (rc == 0) {
        /* Synced: once libraft moves past this snapshot it will not replay what it covers. */
        rc = meta_batch_write(b, true, e);
    }
    meta_batch_free(b);
    if (rc == 0) {
        rc = fsm_load_meta(f, e);
    }
    if (rc != 0) {
        err_wrap(e, "restore");
        return rc;
    }
    f->stats.restores++;
    return 0;
}
