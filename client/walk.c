/* Walking the paths to back up (rules in walk.h). */
#include "client/walk.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/alloc.h"

/* The first name seen of a multiply linked inode. */
struct link_slot {
    dev_t dev;      /* st_dev */
    ino_t ino;      /* st_ino */
    size_t root;    /* root index of the first name */
    char *path;     /* its full path (hbc_malloc'ed); NULL marks a free slot */
    size_t rel_off; /* where its root-relative part starts in path */
};

/* Open-addressing table of first names, keyed by (dev, ino). */
struct link_table {
    struct link_slot *slots; /* cap slots */
    size_t cap;              /* a power of two, or 0 */
    size_t used;             /* occupied slots */
};

/* The names of one directory, sorted. */
struct name_list {
    char *buf;     /* the names, NUL-terminated, back to back */
    size_t len;    /* bytes used in buf */
    size_t cap;    /* bytes at buf */
    size_t *offs;  /* start of each name in buf */
    size_t count;  /* names */
    size_t offcap; /* room at offs */
    char **sorted; /* count pointers into buf, in order */
};

struct walker {
    const struct walk_options *o;     /* the caller's options */
    char *path;                       /* the current path, NUL-terminated */
    size_t len;                       /* its length */
    size_t root;                      /* index of the current root */
    size_t rel_off;                   /* where the root-relative part starts in path */
    dev_t root_dev;                   /* the current root's device */
    struct link_table links;          /* first names of multiply linked inodes */
    size_t errors;                    /* errors reported */
    char target[TREE_MAX_TARGET + 2]; /* the symlink being reported */
};

void walk_options_default(struct walk_options *o)
{
    memset(o, 0, sizeof *o);
    o->open_files = true;
    o->max_depth = WALK_DEFAULT_MAX_DEPTH;
    o->max_path = WALK_DEFAULT_MAX_PATH;
}

static size_t link_hash(dev_t dev, ino_t ino)
{
    uint64_t h = (uint64_t)ino * 0x9e3779b97f4a7c15u ^ (uint64_t)dev * 0xc2b2ae3d27d4eb4fu;
    return (size_t)(h ^ h >> 29);
}

static struct link_slot *link_find(struct link_table *t, dev_t dev, ino_t ino)
{
    if (t->cap == 0) {
        return NULL;
    }
    for (size_t i = link_hash(dev, ino) & (t->cap - 1);; i = (i + 1) & (t->cap - 1)) {
        struct link_slot *s = &t->slots[i];
        if (s->path == NULL) {
            return NULL;
        }
        if (s->dev == dev && s->ino == ino) {
            return s;
        }
    }
}

/* Put s (whose path is then owned by the table) into a table with room. */
static void link_place(struct link_table *t, const struct link_slot *s)
{
    size_t i = link_hash(s->dev, s->ino) & (t->cap - 1);
    while (t->slots[i].path != NULL) {
        i = (i + 1) & (t->cap - 1);
    }
    t->slots[i] = *s;
    t->used++;
}

static int link_add(struct walker *w, dev_t dev, ino_t ino)
{
    struct link_table *t = &w->links;
    if ((t->used + 1) * 2 > t->cap) {
        size_t ncap = t->cap == 0 ? 64 : t->cap * 2;
        struct link_slot *ns = hbc_calloc(ncap, sizeof *ns);
        if (ns == NULL) {
            return HBC_ENOMEM;
        }
        struct link_table nt = {.slots = ns, .cap = ncap, .used = 0};
        for (size_t i = 0; i < t->cap; i++) {
            if (t->slots[i].path != NULL) {
                link_place(&nt, &t->slots[i]);
            }
        }
        hbc_free(t->slots);
        *t = nt;
    }
    struct link_slot s = {.dev = dev, .ino = ino, .root = w->root, .rel_off = w->rel_off};
    s.path = hbc_strdup(w->path);
    if (s.path == NULL) {
        return HBC_ENOMEM;
    }
    if (s.rel_off > w->len) {
        s.rel_off = w->len; /* the root itself: its rel is "" */
    }
    link_place(t, &s);
    return 0;
}

static void link_free(struct link_table *t)
{
    for (size_t i = 0; i < t->cap; i++) {
        hbc_free(t->slots[i].path);
    }
    hbc_free(t->slots);
    memset(t, 0, sizeof *t);
}

/* Tell error_cb about path. Returns 0 to go on or the callback's stop code. */
static int report_va(struct walker *w, const char *path, int code, const char *fmt, va_list ap)
{
    w->errors++;
    if (w->o->error_cb == NULL) {
        return 0;
    }
    char msg[256];
    vsnprintf(msg, sizeof msg, fmt, ap);
    int rc = w->o->error_cb(w->o->arg, path, code, msg);
    return rc < 0 ? rc : 0;
}

/* report_va() for the current path. */
static int report(struct walker *w, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static int report(struct walker *w, int code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int rc = report_va(w, w->path, code, fmt, ap);
    va_end(ap);
    return rc;
}

/* report_va() for a root that cannot be put in the path buffer. */
static int report_root(struct walker *w, const char *root, int code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static int report_root(struct walker *w, const char *root, int code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int rc = report_va(w, root, code, fmt, ap);
    va_end(ap);
    return rc;
}

/* openat with O_NOATIME where the kernel allows it (own files, or privileged). */
static int open_noatime(int dirfd, const char *name, int flags)
{
    int fd = openat(dirfd, name, flags | O_NOATIME);
    if (fd < 0 && errno == EPERM) {
        fd = openat(dirfd, name, flags);
    }
    return fd;
}

static const char *rel_of(const struct walker *w)
{
    return w->rel_off <= w->len ? w->path + w->rel_off : w->path + w->len;
}

/* An entry for the current path. */
static void entry_init(const struct walker *w, struct walk_entry *en, enum walk_event ev, int dirfd,
                       const char *at_name, unsigned depth, const struct stat *st)
{
    memset(en, 0, sizeof *en);
    en->event = ev;
    en->path = w->path;
    en->rel = rel_of(w);
    en->name = depth == 0 ? w->path : at_name;
    en->root = w->root;
    en->depth = depth;
    en->st = *st;
    en->dirfd = dirfd;
    en->at_name = at_name;
    en->fd = -1;
}

static int call(const struct walker *w, struct walk_entry *en)
{
    int rc = w->o->entry_cb(w->o->arg, en);
    return rc < 0 ? rc : rc == WALK_SKIP ? WALK_SKIP : 0;
}

int walk_open_file(const struct walk_entry *en, int *fd, struct err *e)
{
    *fd = -1;
    int f = open_noatime(en->dirfd, en->at_name,
                         O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_NOCTTY | O_CLOEXEC);
    if (f < 0) {
        int code = -errno;
        return err_set(e, code, "open '%s'", en->path);
    }
    struct stat st;
    if (fstat(f, &st) != 0) {
        int code = -errno;
        close(f);
        return err_set(e, code, "stat '%s'", en->path);
    }
    if (!S_ISREG(st.st_mode) || st.st_dev != en->st.st_dev || st.st_ino != en->st.st_ino) {
        close(f);
        return err_setraw(e, HBC_EBUSY, "'%s' was replaced while being backed up", en->path);
    }
    *fd = f;
    return 0;
}

/* A regular file: open it (if asked), hand it over, close what the callback left. */
static int visit_file(struct walker *w, int dirfd, const char *at_name, unsigned depth,
                      struct stat *st, bool *accepted)
{
    int fd = -1;
    if (w->o->open_files) {
        if (w->o->race_cb != NULL) {
            w->o->race_cb(w->o->arg, w->path);
        }
        fd =
            open_noatime(dirfd, at_name, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_NOCTTY | O_CLOEXEC);
        if (fd < 0) {
            int code = -errno;
            return report(w, code, "cannot open: %s", strerror(-code));
        }
        struct stat now;
        if (fstat(fd, &now) != 0) {
            int code = -errno;
            close(fd);
            return report(w, code, "cannot stat the open file: %s", strerror(-code));
        }
        if (!S_ISREG(now.st_mode)) {
            close(fd);
            return report(w, HBC_EBUSY, "changed type between lstat and open");
        }
        *st = now; /* what will be read is what the entry describes */
    }
    struct walk_entry en;
    entry_init(w, &en, WALK_ITEM, dirfd, at_name, depth, st);
    en.type = TREE_FILE;
    en.fd = fd;
    int rc = call(w, &en);
    if (en.fd >= 0) {
        close(en.fd);
    }
    *accepted = rc == 0;
    return rc;
}

static int visit_symlink(struct walker *w, int dirfd, const char *at_name, unsigned depth,
                         const struct stat *st, bool *accepted)
{
    ssize_t n = readlinkat(dirfd, at_name, w->target, sizeof w->target);
    if (n < 0) {
        int code = -errno;
        return report(w, code, "cannot read the symlink: %s", strerror(-code));
    }
    if ((size_t)n > TREE_MAX_TARGET || n == 0) {
        return report(w, -ENAMETOOLONG, "symlink target of %s bytes (want 1..%u)",
                      n == 0 ? "0" : "more than 4095", TREE_MAX_TARGET);
    }
    w->target[n] = '\0';
    struct walk_entry en;
    entry_init(w, &en, WALK_ITEM, dirfd, at_name, depth, st);
    en.type = TREE_SYMLINK;
    en.target = w->target;
    int rc = call(w, &en);
    *accepted = rc == 0;
    return rc;
}

static int names_add(struct name_list *l, const char *name)
{
    size_t n = strlen(name) + 1;
    if (l->len + n > l->cap) {
        size_t ncap = l->cap == 0 ? 4096 : l->cap;
        while (ncap < l->len + n) {
            ncap *= 2;
        }
        char *nb = hbc_realloc(l->buf, ncap);
        if (nb == NULL) {
            return HBC_ENOMEM;
        }
        l->buf = nb;
        l->cap = ncap;
    }
    if (l->count == l->offcap) {
        size_t ncap = l->offcap == 0 ? 64 : l->offcap * 2;
        size_t *no = hbc_realloc(l->offs, ncap * sizeof *no);
        if (no == NULL) {
            return HBC_ENOMEM;
        }
        l->offs = no;
        l->offcap = ncap;
    }
    memcpy(l->buf + l->len, name, n);
    l->offs[l->count++] = l->len;
    l->len += n;
    return 0;
}

static int name_order(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static void names_free(struct name_list *l)
{
    hbc_free(l->buf);
    hbc_free(l->offs);
    hbc_free(l->sorted);
}

/*
 * Read every name of d into l, sorted. Returns 0, HBC_ENOMEM, or the
 * readdir errno (negative) with the names read so far kept.
 */
static int names_read(DIR *d, struct name_list *l)
{
    int rc = 0;
    for (;;) {
        errno = 0;
        struct dirent *de = readdir(d);
        if (de == NULL) {
            rc = errno != 0 ? -errno : 0;
            break;
        }
        if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0) {
            continue;
        }
        int arc = names_add(l, de->d_name);
        if (arc != 0) {
            return arc;
        }
    }
    l->sorted = hbc_malloc((l->count == 0 ? 1 : l->count) * sizeof *l->sorted);
    if (l->sorted == NULL) {
        return HBC_ENOMEM;
    }
    for (size_t i = 0; i < l->count; i++) {
        l->sorted[i] = l->buf + l->offs[i];
    }
    qsort(l->sorted, l->count, sizeof *l->sorted, name_order);
    return rc;
}

static int visit(struct walker *w, int dirfd, const char *at_name, unsigned depth, struct stat *st);

/* A child of the directory open at dirfd: extend the path, lstat, visit, restore the path. */
static int visit_child(struct walker *w, int dirfd, const char *name, unsigned depth)
{
    size_t saved = w->len;
    size_t nlen = strlen(name);
    bool slash = w->len > 0 && w->path[w->len - 1] != '/';
    if (w->len + (slash ? 1 : 0) + nlen > w->o->max_path) {
        /* Report with the parent's path: the full one does not fit by definition. */
        return report(w, -ENAMETOOLONG, "a name in it makes a path longer than %zu bytes",
                      w->o->max_path);
    }
    if (slash) {
        w->path[w->len++] = '/';
    }
    memcpy(w->path + w->len, name, nlen + 1);
    w->len += nlen;
    int rc;
    struct stat st;
    if (fstatat(dirfd, name, &st, AT_SYMLINK_NOFOLLOW) != 0) {
        int code = -errno;
        rc = report(w, code, "cannot lstat: %s", strerror(-code));
    } else {
        rc = visit(w, dirfd, name, depth, &st);
    }
    w->len = saved;
    w->path[saved] = '\0';
    return rc;
}

static int visit_dir(struct walker *w, int parent, const char *at_name, unsigned depth,
                     struct stat *st)
{
    struct walk_entry en;
    if (depth > 0 && w->o->one_file_system && st->st_dev != w->root_dev) {
        entry_init(w, &en, WALK_ENTER, parent, at_name, depth, st);
        en.type = TREE_DIR;
        en.mountpoint = true;
        int rc = call(w, &en);
        if (rc != 0) {
            return rc == WALK_SKIP ? 0 : rc;
        }
        en.event = WALK_LEAVE;
        rc = call(w, &en);
        return rc == WALK_SKIP ? 0 : rc;
    }
    if (depth >= w->o->max_depth) {
        return report(w, HBC_ETOOBIG, "directory deeper than %u levels", w->o->max_depth);
    }
    if (w->o->race_cb != NULL) {
        w->o->race_cb(w->o->arg, w->path);
    }
    int fd = open_noatime(parent, at_name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0) {
        int code = -errno;
        return report(w, code, "cannot open the directory: %s", strerror(-code));
    }
    if (fstat(fd, st) != 0) {
        int code = -errno;
        close(fd);
        return report(w, code, "cannot stat the open directory: %s", strerror(-code));
    }
    DIR *d = fdopendir(fd);
    if (d == NULL) {
        int code = -errno;
        close(fd);
        return report(w, code, "cannot read the directory: %s", strerror(-code));
    }
    int own = dirfd(d);
    struct name_list names = {0};
    int rc = names_read(d, &names);
    if (rc == HBC_ENOMEM) {
        goto out;
    }
    if (rc != 0) {
        /* Keep what was read: report, then back up the part we saw. */
        rc = report(w, rc, "reading the directory failed part way: %s", strerror(-rc));
        if (rc != 0) {
            goto out;
        }
    }
    entry_init(w, &en, WALK_ENTER, parent, at_name, depth, st);
    en.type = TREE_DIR;
    en.fd = own;
    rc = call(w, &en);
    if (rc != 0) {
        rc = rc == WALK_SKIP ? 0 : rc;
        goto out;
    }
    for (size_t i = 0; i < names.count; i++) {
        rc = visit_child(w, own, names.sorted[i], depth + 1);
        if (rc != 0) {
            goto out;
        }
    }
    entry_init(w, &en, WALK_LEAVE, parent, at_name, depth, st);
    en.type = TREE_DIR;
    en.fd = own;
    rc = call(w, &en);
    rc = rc == WALK_SKIP ? 0 : rc;
out:
    names_free(&names);
    closedir(d);
    return rc;
}

/* Dispatch one lstat'ed entry. Returns 0 or a code that stops the walk. */
static int visit(struct walker *w, int dirfd, const char *at_name, unsigned depth, struct stat *st)
{
    if (S_ISDIR(st->st_mode)) {
        return visit_dir(w, dirfd, at_name, depth, st);
    }
    struct walk_entry en;
    if (st->st_nlink > 1) {
        struct link_slot *s = link_find(&w->links, st->st_dev, st->st_ino);
        if (s != NULL) {
            entry_init(w, &en, WALK_ITEM, dirfd, at_name, depth, st);
            en.type = TREE_HARDLINK;
            en.link_root = s->root;
            en.link_path = s->path;
            en.link_rel = s->path + s->rel_off;
            int rc = call(w, &en);
            return rc == WALK_SKIP ? 0 : rc;
        }
    }
    bool accepted = false;
    int rc;
    switch (st->st_mode & S_IFMT) {
    case S_IFREG:
        rc = visit_file(w, dirfd, at_name, depth, st, &accepted);
        break;
    case S_IFLNK:
        rc = visit_symlink(w, dirfd, at_name, depth, st, &accepted);
        break;
    default: {
        struct tree_entry te;
        tree_entry_from_stat(&te, st);
        entry_init(w, &en, WALK_ITEM, dirfd, at_name, depth, st);
        en.type = te.type;
        rc = call(w, &en);
        accepted = rc == 0;
        break;
    }
    }
    if (rc == WALK_SKIP) {
        return 0;
    }
    if (rc == 0 && accepted && st->st_nlink > 1) {
        rc = link_add(w, st->st_dev, st->st_ino);
    }
    return rc;
}

/* Copy root into w->path without trailing slashes ("/" stays "/"). */
static int root_set(struct walker *w, const char *root, size_t index)
{
    size_t len = strlen(root);
    while (len > 1 && root[len - 1] == '/') {
        len--;
    }
    if (len > w->o->max_path) {
        return -ENAMETOOLONG;
    }
    memcpy(w->path, root, len);
    w->path[len] = '\0';
    w->len = len;
    w->root = index;
    w->rel_off = w->path[len - 1] == '/' ? len : len + 1;
    return 0;
}

int walk_run(const char *const *paths, size_t n, const struct walk_options *o, struct err *e)
{
    if (o == NULL || o->entry_cb == NULL || (paths == NULL && n > 0) || o->max_depth == 0 ||
        o->max_path == 0 || o->max_path > ((size_t)1 << 24)) {
        return err_set(e, HBC_EINVAL, "walk: no entry callback, or zero or huge bounds");
    }
    for (size_t i = 0; i < n; i++) {
        if (paths[i] == NULL || paths[i][0] == '\0') {
            return err_set(e, HBC_EINVAL, "walk: root %zu is empty", i);
        }
    }
    struct walker *w = hbc_calloc(1, sizeof *w);
    if (w == NULL) {
        return err_set(e, HBC_ENOMEM, "walk");
    }
    w->o = o;
    w->path = hbc_malloc(o->max_path + 1);
    if (w->path == NULL) {
        hbc_free(w);
        return err_set(e, HBC_ENOMEM, "walk: path buffer");
    }
    int rc = 0;
    for (size_t i = 0; i < n && rc == 0; i++) {
        if (root_set(w, paths[i], i) != 0) {
            rc = report_root(w, paths[i], -ENAMETOOLONG, "root %zu: path longer than %zu bytes", i,
                             o->max_path);
            continue;
        }
        struct stat st;
        if (fstatat(AT_FDCWD, w->path, &st, AT_SYMLINK_NOFOLLOW) != 0) {
            int code = -errno;
            rc = report(w, code, "cannot lstat: %s", strerror(-code));
            continue;
        }
        w->root_dev = st.st_dev;
        /* The root's at_name is its path: a copy, since visit_child rewrites w->path below it. */
        char *at = hbc_strdup(w->path);
        if (at == NULL) {
            rc = HBC_ENOMEM;
            break;
        }
        rc = visit(w, AT_FDCWD, at, 0, &st);
        hbc_free(at);
    }
    if (rc == HBC_ENOMEM) {
        err_set(e, rc, "walk");
    } else if (rc < 0) {
        err_setraw(e, rc, "walk stopped by a callback (%s)", hbc_strerror(rc));
    } else if (w->errors > 0) {
        rc = err_setraw(e, HBC_EPARTIAL, "walk: %zu entries could not be backed up", w->errors);
    }
    link_free(&w->links);
    hbc_free(w->path);
    hbc_free(w);
    return rc;
}
