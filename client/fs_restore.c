/* Writing restored entries into a target directory (rules in fs_restore.h). */
#include "client/fs_restore.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <linux/openat2.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>

#include "common/alloc.h"

#define SPARSE_BLOCK 4096u         /* holes are made in blocks of this size */
#define HASH_BUF ((size_t)1 << 20) /* bytes read per step when hashing a file */
#define TMP_PREFIX ".hbc-"         /* temporary names: prefix and 16 hex digits */
#define TMP_TRIES 16               /* fresh random names tried before giving up */
#define RND_POOL 4096              /* random bytes fetched at once for temporary names */

struct fs_restore {
    int fd;                 /* the target directory */
    bool root;              /* running as root: chown failures are errors */
    bool fsync;             /* options */
    bool sparse;            /* options */
    atomic_bool openat2;    /* openat2 works here (cleared if it turns out not to) */
    pthread_mutex_t rnd_mu; /* guards the pool below */
    uint8_t rnd[RND_POOL];  /* random bytes for temporary names */
    size_t rnd_used;        /* bytes of rnd already taken (RND_POOL: refill) */
};

/* An entry's parent directory, reached safely, and its last component. */
struct place {
    int dirfd;        /* the parent, owned; -1 if none */
    char *buf;        /* a copy of the path, owned */
    const char *leaf; /* the last component, inside buf */
};

struct fs_file {
    struct fs_restore *r;             /* the target */
    struct place at;                  /* parent and final name */
    int fd;                           /* the temporary file, open for writing */
    uint64_t end;                     /* end of the bytes written so far (highest offset) */
    char tmp[sizeof TMP_PREFIX + 16]; /* its name */
    char *path;                       /* the entry's path, for messages (owned copy) */
};

void fs_restore_options_default(struct fs_restore_options *o)
{
    memset(o, 0, sizeof *o);
    o->sparse = true;
}

static int sys_openat2(int dirfd, const char *path, uint64_t flags, uint64_t resolve)
{
    struct open_how how = {.flags = flags, .mode = 0, .resolve = resolve};
    return (int)syscall(SYS_openat2, dirfd, path, &how, sizeof how);
}

#define RESOLVE_SAFE (RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS)

int fs_restore_open(struct fs_restore **out, const char *target, const struct fs_restore_options *o,
                    struct err *e)
{
    *out = NULL;
    struct fs_restore_options def;
    if (o == NULL) {
        fs_restore_options_default(&def);
        o = &def;
    }
    if (target == NULL || target[0] == '\0') {
        return err_set(e, HBC_EINVAL, "restore target: empty path");
    }
    if (mkdir(target, 0700) != 0 && errno != EEXIST) {
        int code = -errno;
        return err_set(e, code, "restore target '%s': mkdir", target);
    }
    int fd = open(target, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) {
        int code = -errno;
        return err_set(e, code, "restore target '%s': open", target);
    }
    struct fs_restore *r = hbc_calloc(1, sizeof *r);
    if (r == NULL) {
        close(fd);
        return err_set(e, HBC_ENOMEM, "restore target");
    }
    r->fd = fd;
    pthread_mutex_init(&r->rnd_mu, NULL);
    r->rnd_used = RND_POOL;
    r->root = geteuid() == 0;
    r->fsync = o->fsync;
    r->sparse = o->sparse;
    bool have = false;
    if (!o->no_openat2) {
        int t = sys_openat2(fd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC, RESOLVE_SAFE);
        if (t >= 0) {
            close(t);
            have = true;
        }
    }
    atomic_init(&r->openat2, have);
    *out = r;
    return 0;
}

void fs_restore_close(struct fs_restore *r)
{
    if (r != NULL) {
        close(r->fd);
        pthread_mutex_destroy(&r->rnd_mu);
        OPENSSL_cleanse(r->rnd, sizeof r->rnd);
        hbc_free(r);
    }
}

int fs_restore_sync(struct fs_restore *r, struct err *e)
{
    if (r->fsync && fsync(r->fd) != 0) {
        int code = -errno;
        return err_set(e, code, "restore target: fsync");
    }
    return 0;
}

bool fs_restore_uses_openat2(const struct fs_restore *r)
{
    return atomic_load(&((struct fs_restore *)r)->openat2);
}

/* The checks at the top of fs_restore.h, before any system call. */
static int path_check(const char *path, struct err *e)
{
    if (path == NULL || path[0] == '\0') {
        return err_set(e, HBC_EINVAL, "refusing an empty path");
    }
    if (path[0] == '/') {
        return err_setraw(e, HBC_EDENIED, "refusing '%s': absolute path leaves the restore target",
                          path);
    }
    size_t len = strlen(path);
    /* ".." anywhere is refused as an escape before any other complaint about the path. */
    for (const char *c = path; c < path + len;) {
        const char *s = strchr(c, '/');
        size_t n = s != NULL ? (size_t)(s - c) : strlen(c);
        if (n == 2 && c[0] == '.' && c[1] == '.') {
            return err_setraw(e, HBC_EDENIED, "refusing '%s': path leaves the restore target",
                              path);
        }
        c += n + 1;
    }
    if (len > TREE_MAX_PATH) {
        return err_set(e, HBC_EINVAL, "refusing a path of %zu bytes (above %u)", len,
                       TREE_MAX_PATH);
    }
    struct err sub;
    if (tree_path_check((const uint8_t *)path, len, &sub) != 0) {
        return err_set(e, HBC_EINVAL, "refusing '%s': malformed path (%s)", path, sub.msg);
    }
    return 0;
}

/*
 * Whether name in dirfd is a symlink, after opening it with O_NOFOLLOW failed
 * with code (-ELOOP, or -ENOTDIR when O_DIRECTORY was also given).
 */
static bool is_symlink(int dirfd, const char *name, int code)
{
    struct stat st;
    return code == -ELOOP ||
           (fstatat(dirfd, name, &st, AT_SYMLINK_NOFOLLOW) == 0 && S_ISLNK(st.st_mode));
}

/*
 * Reach the parent of path component by component from the target, never
 * following a symlink, creating missing directories if create is set.
 * parent is the path without its last component (non-empty).
 */
static int walk_parent(struct fs_restore *r, const char *path, const char *parent, bool create,
                       int *out, struct err *e)
{
    int fd = fcntl(r->fd, F_DUPFD_CLOEXEC, 0);
    if (fd < 0) {
        int code = -errno;
        return err_set(e, code, "restore '%s': dup", path);
    }
    char comp[TREE_MAX_NAME + 1];
    for (const char *c = parent; *c != '\0';) {
        const char *s = strchr(c, '/');
        size_t n = s != NULL ? (size_t)(s - c) : strlen(c);
        memcpy(comp, c, n);
        comp[n] = '\0';
        int upto = (int)(c + n - parent); /* bytes of parent up to this component, for messages */
        c += s != NULL ? n + 1 : n;
        int next = openat(fd, comp, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
        if (next < 0 && errno == ENOENT && create) {
            if (mkdirat(fd, comp, 0700) != 0 && errno != EEXIST) {
                int code = -errno;
                close(fd);
                return err_set(e, code, "restore '%s': mkdir '%.*s'", path, upto, parent);
            }
            next = openat(fd, comp, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
        }
        if (next < 0) {
            int code = -errno;
            bool link = is_symlink(fd, comp, code);
            close(fd);
            if (link) {
                return err_setraw(e, HBC_EDENIED,
                                  "refusing '%s': '%.*s' is a symlink: path leaves the restore "
                                  "target",
                                  path, upto, parent);
            }
            return err_set(e, code, "restore '%s': open '%.*s'", path, upto, parent);
        }
        close(fd);
        fd = next;
    }
    *out = fd;
    return 0;
}

/* Check path and open its parent safely (create: make missing parents). */
static int place_get(struct fs_restore *r, const char *path, bool create, struct place *p,
                     struct err *e)
{
    p->dirfd = -1;
    p->buf = NULL;
    p->leaf = NULL;
    int rc = path_check(path, e);
    if (rc != 0) {
        return rc;
    }
    size_t len = strlen(path);
    p->buf = hbc_malloc(len + 1);
    if (p->buf == NULL) {
        return err_set(e, HBC_ENOMEM, "restore '%s'", path);
    }
    memcpy(p->buf, path, len + 1);
    char *slash = strrchr(p->buf, '/');
    if (slash == NULL) {
        p->leaf = p->buf;
        p->dirfd = fcntl(r->fd, F_DUPFD_CLOEXEC, 0);
        if (p->dirfd < 0) {
            int code = -errno;
            return err_set(e, code, "restore '%s': dup", path);
        }
        return 0;
    }
    *slash = '\0';
    p->leaf = slash + 1;
    const char *parent = p->buf;
    if (atomic_load_explicit(&r->openat2, memory_order_relaxed)) {
        int fd = sys_openat2(r->fd, parent, O_RDONLY | O_DIRECTORY | O_CLOEXEC, RESOLVE_SAFE);
        if (fd >= 0) {
            p->dirfd = fd;
            return 0;
        }
        switch (errno) {
        case ENOENT:
            if (!create) {
                return err_set(e, -ENOENT, "restore '%s': parent directory", path);
            }
            break; /* the component walk creates what is missing */
        case ELOOP:
        case EXDEV:
        case EAGAIN:
            /* A symlink on the way, an escape, or a rename race: the component walk decides,
             * and names the component. */
            break;
        case ENOSYS:
        case EPERM:
        case EINVAL:
        case E2BIG:
            atomic_store(&r->openat2, false); /* filtered or unsupported here */
            break;
        case ENOTDIR:
            break; /* the component walk tells a symlink from another non-directory */
        default: {
            int code = -errno;
            return err_set(e, code, "restore '%s': open parent", path);
        }
        }
    }
    return walk_parent(r, path, parent, create, &p->dirfd, e);
}

static void place_done(struct place *p)
{
    if (p->dirfd >= 0) {
        close(p->dirfd);
    }
    hbc_free(p->buf);
    p->dirfd = -1;
    p->buf = NULL;
}

/*
 * A fresh temporary name in tmp (at least sizeof TMP_PREFIX + 16 bytes): 64 random bits, taken
 * from a pool refilled by one getrandom() per 512 names rather than one call per file.
 */
static int tmp_name(struct fs_restore *r, char *tmp, size_t cap)
{
    uint8_t rnd[8];
    pthread_mutex_lock(&r->rnd_mu);
    if (r->rnd_used + sizeof rnd > RND_POOL) {
        if (getrandom(r->rnd, sizeof r->rnd, 0) != (ssize_t)sizeof r->rnd) {
            int code = -errno;
            pthread_mutex_unlock(&r->rnd_mu);
            return code != 0 ? code : -EIO;
        }
        r->rnd_used = 0;
    }
    memcpy(rnd, r->rnd + r->rnd_used, sizeof rnd);
    r->rnd_used += sizeof rnd;
    pthread_mutex_unlock(&r->rnd_mu);
    snprintf(tmp, cap, TMP_PREFIX "%02x%02x%02x%02x%02x%02x%02x%02x", rnd[0], rnd[1], rnd[2],
             rnd[3], rnd[4], rnd[5], rnd[6], rnd[7]);
    return 0;
}

static struct timespec ns_to_ts(int64_t ns)
{
    struct timespec ts = {.tv_sec = (time_t)(ns / 1000000000), .tv_nsec = (long)(ns % 1000000000)};
    if (ts.tv_nsec < 0) {
        ts.tv_nsec += 1000000000;
        ts.tv_sec--;
    }
    return ts;
}

/*
 * Apply owner, mode and mtime to fd (name NULL) or to name in directory fd
 * (never following it). set_mode is false for symlinks.
 */
static int meta_apply(struct fs_restore *r, int fd, const char *name, const struct tree_entry *m,
                      bool set_mode, const char *path, struct err *e)
{
    int rc = name == NULL ? fchown(fd, m->uid, m->gid)
                          : fchownat(fd, name, m->uid, m->gid, AT_SYMLINK_NOFOLLOW);
    if (rc != 0 && r->root) {
        int code = -errno;
        return err_set(e, code, "restore '%s': chown to %u:%u", path, m->uid, m->gid);
    }
    if (set_mode) {
        if (name == NULL) {
            rc = fchmod(fd, (mode_t)m->mode);
        } else {
            rc = fchmodat(fd, name, (mode_t)m->mode, AT_SYMLINK_NOFOLLOW);
            if (rc != 0 && (errno == ENOTSUP || errno == EOPNOTSUPP)) {
                rc = fchmodat(fd, name, (mode_t)m->mode, 0); /* our own fresh temporary name */
            }
        }
        if (rc != 0) {
            int code = -errno;
            return err_set(e, code, "restore '%s': chmod %04o", path, m->mode);
        }
    }
    struct timespec ts[2] = {{.tv_sec = 0, .tv_nsec = UTIME_OMIT}, ns_to_ts(m->mtime_ns)};
    rc = name == NULL ? futimens(fd, ts) : utimensat(fd, name, ts, AT_SYMLINK_NOFOLLOW);
    if (rc != 0) {
        int code = -errno;
        return err_set(e, code, "restore '%s': set times", path);
    }
    return 0;
}

/*
 * Rename tmp to leaf in dirfd. alias: tmp is a new name of an existing inode (a hard link),
 * which leaf may already name. With the fsync option the directory is not flushed here, once
 * per entry, but once in all: fs_restore_dir_meta() (each directory, after its contents) and
 * fs_restore_sync() (the target itself).
 */
static int put_in_place(struct place *p, const char *tmp, bool alias, const char *path,
                        struct err *e)
{
    if (renameat(p->dirfd, tmp, p->dirfd, p->leaf) != 0) {
        int code = -errno;
        return err_set(e, code, "restore '%s': rename into place", path);
    }
    /*
     * rename() of two names of one inode does nothing: make sure tmp is gone. Only a hard
     * link can be such a pair; a file, symlink or node we just made under a fresh name
     * (O_EXCL) is an inode of its own.
     */
    if (alias) {
        (void)unlinkat(p->dirfd, tmp, 0);
    }
    return 0;
}

int fs_restore_mkdir(struct fs_restore *r, const char *path, struct err *e)
{
    struct place p;
    int rc = place_get(r, path, true, &p, e);
    if (rc != 0) {
        place_done(&p);
        return rc;
    }
    if (mkdirat(p.dirfd, p.leaf, 0700) != 0) {
        if (errno != EEXIST) {
            rc = err_set(e, -errno, "restore '%s': mkdir", path);
            goto done;
        }
        int fd = openat(p.dirfd, p.leaf, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
        if (fd >= 0) {
            close(fd);
            goto done;
        }
        if (is_symlink(p.dirfd, p.leaf, -errno)) {
            rc = err_setraw(e, HBC_EDENIED,
                            "refusing '%s': it exists as a symlink: path leaves the restore "
                            "target",
                            path);
        } else {
            rc = err_set(e, -EEXIST, "restore '%s': exists and is not a directory", path);
        }
    }
done:
    place_done(&p);
    return rc;
}

int fs_restore_dir_meta(struct fs_restore *r, const char *path, const struct tree_entry *meta,
                        struct err *e)
{
    struct place p;
    int rc = place_get(r, path, false, &p, e);
    if (rc != 0) {
        place_done(&p);
        return rc;
    }
    int fd = openat(p.dirfd, p.leaf, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0) {
        int code = -errno;
        if (is_symlink(p.dirfd, p.leaf, code)) {
            rc = err_setraw(e, HBC_EDENIED,
                            "refusing '%s': it is a symlink: path leaves the restore target", path);
        } else {
            rc = err_set(e, code, "restore '%s': open directory", path);
        }
        place_done(&p);
        return rc;
    }
    rc = meta_apply(r, fd, NULL, meta, true, path, e);
    if (rc == 0 && r->fsync && fsync(fd) != 0) {
        rc = err_set(e, -errno, "restore '%s': fsync directory", path);
    }
    close(fd);
    place_done(&p);
    return rc;
}

int fs_restore_file_begin(struct fs_restore *r, const char *path, struct fs_file **out,
                          struct err *e)
{
    *out = NULL;
    struct fs_file *f = hbc_calloc(1, sizeof *f);
    if (f == NULL) {
        return err_set(e, HBC_ENOMEM, "restore file");
    }
    f->r = r;
    f->fd = -1;
    int rc = place_get(r, path, true, &f->at, e);
    if (rc != 0) {
        goto fail;
    }
    f->path = hbc_strdup(path);
    if (f->path == NULL) {
        rc = err_set(e, HBC_ENOMEM, "restore '%s'", path);
        goto fail;
    }
    for (int i = 0; i < TMP_TRIES && f->fd < 0; i++) {
        rc = tmp_name(r, f->tmp, sizeof f->tmp);
        if (rc != 0) {
            err_set(e, rc, "restore '%s': random name", path);
            goto fail;
        }
        f->fd =
            openat(f->at.dirfd, f->tmp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
        if (f->fd < 0 && errno != EEXIST) {
            rc = err_set(e, -errno, "restore '%s': create temporary file", path);
            goto fail;
        }
    }
    if (f->fd < 0) {
        rc = err_set(e, -EEXIST, "restore '%s': no free temporary name", path);
        goto fail;
    }
    *out = f;
    return 0;
fail:
    place_done(&f->at);
    hbc_free(f->path);
    hbc_free(f);
    return rc;
}

static int pwrite_all(int fd, const uint8_t *p, size_t len, uint64_t off)
{
    if (len == 0) {
        return 0;
    }
    while (len > 0) {
        ssize_t n = pwrite(fd, p, len, (off_t)off);
        if (n < 0) {
            if (errno == EINTR) {
                continue;
            }
            return -errno;
        }
        p += n;
        len -= (size_t)n;
        off += (uint64_t)n;
    }
    return 0;
}

/* pwrite_all() into f, noting where the written bytes end (skipped zeros are holes). */
static int write_at(struct fs_file *f, const uint8_t *p, size_t len, uint64_t off)
{
    int rc = pwrite_all(f->fd, p, len, off);
    if (rc == 0 && len > 0 && off + len > f->end) {
        f->end = off + len;
    }
    return rc;
}

static bool all_zero(const uint8_t *p, size_t n)
{
    return n == 0 || (p[0] == 0 && memcmp(p, p + 1, n - 1) == 0);
}

int fs_file_write(struct fs_file *f, uint64_t off, const void *buf, size_t len, struct err *e)
{
    const uint8_t *p = buf;
    if (len > 0 && off > (uint64_t)INT64_MAX - len) {
        return err_set(e, HBC_EINVAL, "restore '%s': write beyond the largest offset", f->path);
    }
    if (!f->r->sparse) {
        int rc = write_at(f, p, len, off);
        return rc != 0 ? err_set(e, rc, "restore '%s': write", f->path) : 0;
    }
    /* Write runs of blocks, skipping whole aligned blocks of zeros (holes read as zeros). */
    size_t run = 0; /* start of the pending run in p */
    size_t i = 0;
    while (i < len) {
        uint64_t pos = off + i;
        size_t n = SPARSE_BLOCK - (size_t)(pos % SPARSE_BLOCK);
        if (n > len - i) {
            n = len - i;
        }
        if (n == SPARSE_BLOCK && all_zero(p + i, n)) {
            int rc = write_at(f, p + run, i - run, off + run);
            if (rc != 0) {
                return err_set(e, rc, "restore '%s': write", f->path);
            }
            run = i + n;
        }
        i += n;
    }
    int rc = write_at(f, p + run, len - run, off + run);
    return rc != 0 ? err_set(e, rc, "restore '%s': write", f->path) : 0;
}

void fs_file_abort(struct fs_file *f)
{
    if (f == NULL) {
        return;
    }
    if (f->fd >= 0) {
        close(f->fd);
        (void)unlinkat(f->at.dirfd, f->tmp, 0);
    }
    place_done(&f->at);
    hbc_free(f->path);
    hbc_free(f);
}

int fs_file_commit(struct fs_file *f, const struct tree_entry *meta, struct err *e)
{
    struct fs_restore *r = f->r;
    int rc = 0;
    /* Sized already when the writes reached exactly its end (no trailing hole). */
    if (meta->size > (uint64_t)INT64_MAX ||
        (f->end != meta->size && ftruncate(f->fd, (off_t)meta->size) != 0)) {
        rc = err_set(e, meta->size > (uint64_t)INT64_MAX ? HBC_EINVAL : -errno,
                     "restore '%s': set size", f->path);
        goto fail;
    }
    if (r->fsync && fsync(f->fd) != 0) {
        rc = err_set(e, -errno, "restore '%s': fsync", f->path);
        goto fail;
    }
    rc = meta_apply(r, f->fd, NULL, meta, true, f->path, e);
    if (rc != 0) {
        goto fail;
    }
    if (close(f->fd) != 0) {
        f->fd = -1;
        rc = err_set(e, -errno, "restore '%s': close", f->path);
        (void)unlinkat(f->at.dirfd, f->tmp, 0);
        goto fail;
    }
    f->fd = -1;
    rc = put_in_place(&f->at, f->tmp, false, f->path, e);
    if (rc != 0) {
        (void)unlinkat(f->at.dirfd, f->tmp, 0);
    }
fail:
    fs_file_abort(f);
    return rc;
}

int fs_restore_symlink(struct fs_restore *r, const char *path, const struct tree_entry *meta,
                       struct err *e)
{
    if (meta->target == NULL || meta->target[0] == '\0') {
        return err_set(e, HBC_EINVAL, "restore '%s': symlink without a target", path);
    }
    struct place p;
    int rc = place_get(r, path, true, &p, e);
    if (rc != 0) {
        place_done(&p);
        return rc;
    }
    char tmp[sizeof TMP_PREFIX + 16];
    for (int i = 0; i < TMP_TRIES; i++) {
        rc = tmp_name(r, tmp, sizeof tmp);
        if (rc != 0) {
            err_set(e, rc, "restore '%s': random name", path);
            goto done;
        }
        rc = symlinkat(meta->target, p.dirfd, tmp) == 0 ? 0 : -errno;
        if (rc != -EEXIST) {
            break;
        }
    }
    if (rc != 0) {
        err_set(e, rc, "restore '%s': symlink", path);
        goto done;
    }
    rc = meta_apply(r, p.dirfd, tmp, meta, false, path, e);
    if (rc == 0) {
        rc = put_in_place(&p, tmp, false, path, e);
    }
    if (rc != 0) {
        (void)unlinkat(p.dirfd, tmp, 0);
    }
done:
    place_done(&p);
    return rc;
}

int fs_restore_hardlink(struct fs_restore *r, const char *path, const char *first, struct err *e)
{
    struct place from;
    struct place p;
    int rc = place_get(r, first, false, &from, e);
    if (rc != 0) {
        place_done(&from);
        err_wrap(e, "restore hard link '%s'", path);
        return rc;
    }
    rc = place_get(r, path, true, &p, e);
    if (rc != 0) {
        goto done;
    }
    char tmp[sizeof TMP_PREFIX + 16];
    for (int i = 0; i < TMP_TRIES; i++) {
        rc = tmp_name(r, tmp, sizeof tmp);
        if (rc != 0) {
            err_set(e, rc, "restore '%s': random name", path);
            goto done;
        }
        rc = linkat(from.dirfd, from.leaf, p.dirfd, tmp, 0) == 0 ? 0 : -errno;
        if (rc != -EEXIST) {
            break;
        }
    }
    if (rc != 0) {
        err_set(e, rc, "restore '%s': link to '%s'", path, first);
        goto done;
    }
    rc = put_in_place(&p, tmp, true, path, e);
    if (rc != 0) {
        (void)unlinkat(p.dirfd, tmp, 0);
    }
done:
    place_done(&p);
    place_done(&from);
    return rc;
}

int fs_restore_special(struct fs_restore *r, const char *path, const struct tree_entry *meta,
                       struct err *e)
{
    mode_t kind;
    switch (meta->type) {
    case TREE_FIFO:
        kind = S_IFIFO;
        break;
    case TREE_SOCKET:
        kind = S_IFSOCK;
        break;
    case TREE_CHAR:
        kind = S_IFCHR;
        break;
    case TREE_BLOCK:
        kind = S_IFBLK;
        break;
    default:
        return err_set(e, HBC_EINVAL, "restore '%s': type %d is not a special file", path,
                       (int)meta->type);
    }
    struct place p;
    int rc = place_get(r, path, true, &p, e);
    if (rc != 0) {
        place_done(&p);
        return rc;
    }
    char tmp[sizeof TMP_PREFIX + 16];
    for (int i = 0; i < TMP_TRIES; i++) {
        rc = tmp_name(r, tmp, sizeof tmp);
        if (rc != 0) {
            err_set(e, rc, "restore '%s': random name", path);
            goto done;
        }
        rc = mknodat(p.dirfd, tmp, kind | 0600, (dev_t)meta->rdev) == 0 ? 0 : -errno;
        if (rc != -EEXIST) {
            break;
        }
    }
    if (rc != 0) {
        err_set(e, rc, "restore '%s': mknod", path);
        goto done;
    }
    rc = meta_apply(r, p.dirfd, tmp, meta, true, path, e);
    if (rc == 0) {
        rc = put_in_place(&p, tmp, false, path, e);
    }
    if (rc != 0) {
        (void)unlinkat(p.dirfd, tmp, 0);
    }
done:
    place_done(&p);
    return rc;
}

int fs_sha256_fd(int fd, uint8_t out[TREE_ID_LEN], uint64_t *size, struct err *e)
{
    int rc = 0;
    uint64_t total = 0;
    uint8_t *buf = hbc_malloc(HASH_BUF);
    EVP_MD *md = EVP_MD_fetch(NULL, "SHA256", NULL);
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    if (buf == NULL) {
        rc = err_set(e, HBC_ENOMEM, "SHA-256 of a file");
        goto done;
    }
    if (md == NULL || ctx == NULL || !EVP_DigestInit_ex2(ctx, md, NULL)) {
        rc = err_openssl(e, HBC_ECRYPTO, "SHA-256 of a file");
        goto done;
    }
    for (;;) {
        ssize_t n = read(fd, buf, HASH_BUF);
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n < 0) {
            rc = err_set(e, -errno, "SHA-256 of a file: read");
            goto done;
        }
        if (n == 0) {
            break;
        }
        if (!EVP_DigestUpdate(ctx, buf, (size_t)n)) {
            rc = err_openssl(e, HBC_ECRYPTO, "SHA-256 of a file");
            goto done;
        }
        total += (uint64_t)n;
    }
    unsigned int olen = 0;
    if (!EVP_DigestFinal_ex(ctx, out, &olen) || olen != TREE_ID_LEN) {
        rc = err_openssl(e, HBC_ECRYPTO, "SHA-256 of a file");
        goto done;
    }
    if (size != NULL) {
        *size = total;
    }
done:
    EVP_MD_CTX_free(ctx);
    EVP_MD_free(md);
    hbc_free(buf);
    return rc;
}

int fs_restore_sha256(struct fs_restore *r, const char *path, uint8_t out[TREE_ID_LEN],
                      uint64_t *size, struct err *e)
{
    struct place p;
    int rc = place_get(r, path, false, &p, e);
    if (rc != 0) {
        place_done(&p);
        return rc;
    }
    int fd = openat(p.dirfd, p.leaf, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_NOCTTY | O_CLOEXEC);
    place_done(&p);
    if (fd < 0) {
        return err_set(e, errno == ELOOP ? HBC_EINVAL : -errno, "verify '%s': open", path);
    }
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        return err_set(e, HBC_EINVAL, "verify '%s': not a regular file", path);
    }
    rc = fs_sha256_fd(fd, out, size, e);
    close(fd);
    if (rc != 0) {
        err_wrap(e, "verify '%s'", path);
    }
    return rc;
}

int fs_restore_verify(struct fs_restore *r, const char *path, const struct tree_entry *meta,
                      struct err *e)
{
    if (!meta->has_sha256) {
        return err_set(e, HBC_EINVAL, "verify '%s': the tree has no SHA-256 for it", path);
    }
    uint8_t got[TREE_ID_LEN];
    uint64_t size = 0;
    int rc = fs_restore_sha256(r, path, got, &size, e);
    if (rc != 0) {
        return rc;
    }
    if (size != meta->size) {
        return err_set(e, HBC_ECORRUPT, "verify '%s': %llu bytes on disk, %llu in the snapshot",
                       path, (unsigned long long)size, (unsigned long long)meta->size);
    }
    if (memcmp(got, meta->sha256, TREE_ID_LEN) != 0) {
        return err_set(e, HBC_ECORRUPT, "verify '%s': SHA-256 differs from the snapshot's", path);
    }
    return 0;
}
