/* Unit tests for client/walk: order, every entry type, hard links, and errors that do not stop it.
 */
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cmocka.h>

#include "client/walk.h"

#define MAX_LOG 256

/* A source tree under a temporary directory, and what a walk reported. */
struct fixture {
    char base[64];      /* the temporary directory */
    char src[96];       /* base/src: what is walked */
    char outside[96];   /* base/outside: a symlink in src points here */
    char *log[MAX_LOG]; /* one line per entry or error */
    size_t nlog;        /* lines */
    char a_content[16]; /* what the walk read from a.txt */
    int kept_fd;        /* a descriptor a callback took, or -1 */
    /* Per-test behaviour of the callbacks. */
    const char *skip_rel; /* entry_cb returns WALK_SKIP for this rel */
    const char *stop_rel; /* entry_cb returns HBC_ECANCELED for this rel */
    const char *take_rel; /* entry_cb takes the fd of this file */
    void (*hook)(struct fixture *f, const struct walk_entry *en); /* runs in entry_cb */
    void (*race)(struct fixture *f, const char *path);            /* runs as race_cb */
};

static void logf_(struct fixture *f, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void logf_(struct fixture *f, const char *fmt, ...)
{
    assert_true(f->nlog < MAX_LOG);
    char buf[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    f->log[f->nlog] = strdup(buf);
    assert_non_null(f->log[f->nlog]);
    f->nlog++;
}

static void log_clear(struct fixture *f)
{
    for (size_t i = 0; i < f->nlog; i++) {
        free(f->log[i]);
    }
    f->nlog = 0;
}

static int entry_cb(void *arg, struct walk_entry *en)
{
    struct fixture *f = arg;
    /* The path always ends with rel, and rel with the name (below the root). */
    size_t pl = strlen(en->path);
    size_t rl = strlen(en->rel);
    assert_true(pl >= rl);
    assert_string_equal(en->path + pl - rl, en->rel);
    if (en->depth > 0) {
        size_t nl = strlen(en->name);
        assert_true(rl >= nl);
        assert_string_equal(en->rel + rl - nl, en->name);
    } else {
        assert_string_equal(en->rel, "");
    }
    switch (en->event) {
    case WALK_ENTER:
        logf_(f, "%zu:E %s%s", en->root, en->rel, en->mountpoint ? " (mount)" : "");
        assert_true(S_ISDIR(en->st.st_mode));
        break;
    case WALK_LEAVE:
        logf_(f, "%zu:L %s", en->root, en->rel);
        break;
    case WALK_ITEM:
        switch (en->type) {
        case TREE_FILE:
            logf_(f, "%zu:F %s", en->root, en->rel);
            assert_true(S_ISREG(en->st.st_mode));
            if (en->fd >= 0 && strcmp(en->name, "a.txt") == 0) {
                ssize_t n = read(en->fd, f->a_content, sizeof f->a_content - 1);
                assert_true(n >= 0);
                f->a_content[n] = '\0';
            }
            break;
        case TREE_SYMLINK:
            logf_(f, "%zu:S %s->%s", en->root, en->rel, en->target);
            assert_true(S_ISLNK(en->st.st_mode));
            break;
        case TREE_HARDLINK:
            logf_(f, "%zu:H %s=%zu:%s", en->root, en->rel, en->link_root, en->link_rel);
            assert_int_equal(en->fd, -1);
            break;
        case TREE_FIFO:
            logf_(f, "%zu:P %s", en->root, en->rel);
            break;
        case TREE_SOCKET:
            logf_(f, "%zu:K %s", en->root, en->rel);
            break;
        default:
            logf_(f, "%zu:? %s %d", en->root, en->rel, (int)en->type);
            break;
        }
        break;
    }
    if (f->hook != NULL) {
        f->hook(f, en);
    }
    if (f->take_rel != NULL && strcmp(en->rel, f->take_rel) == 0) {
        f->kept_fd = en->fd;
        en->fd = -1;
    }
    if (f->skip_rel != NULL && strcmp(en->rel, f->skip_rel) == 0) {
        return WALK_SKIP;
    }
    if (f->stop_rel != NULL && strcmp(en->rel, f->stop_rel) == 0) {
        return HBC_ECANCELED;
    }
    return 0;
}

static int error_cb(void *arg, const char *path, int code, const char *msg)
{
    struct fixture *f = arg;
    assert_non_null(msg);
    const char *rel = strncmp(path, f->src, strlen(f->src)) == 0 ? path + strlen(f->src) : path;
    logf_(f, "X %s %s", rel, hbc_errname(code));
    return 0;
}

static void race_cb(void *arg, const char *path)
{
    struct fixture *f = arg;
    if (f->race != NULL) {
        f->race(f, path);
    }
}

static void write_file(const char *path, const char *content)
{
    FILE *fp = fopen(path, "w");
    assert_non_null(fp);
    fputs(content, fp);
    fclose(fp);
}

static void at(char *buf, size_t cap, const struct fixture *f, const char *rel)
{
    snprintf(buf, cap, "%s/%s", f->src, rel);
}

static void make_source(struct fixture *f)
{
    char p[256];
    char q[256];
    /* Created out of order on purpose: the walk must sort. */
    at(p, sizeof p, f, "z");
    assert_int_equal(mkdir(p, 0755), 0);
    at(p, sizeof p, f, "z/deep");
    assert_int_equal(mkdir(p, 0700), 0);
    at(p, sizeof p, f, "z/deep/f.txt");
    write_file(p, "deep");
    at(p, sizeof p, f, "\xff\xfe odd");
    write_file(p, "odd");
    at(p, sizeof p, f, "b");
    assert_int_equal(mkdir(p, 0755), 0);
    at(p, sizeof p, f, "b/c.txt");
    write_file(p, "charlie");
    at(p, sizeof p, f, "a.txt");
    write_file(p, "alpha");
    at(q, sizeof q, f, "b/hard");
    assert_int_equal(link(p, q), 0);
    at(p, sizeof p, f, "A");
    write_file(p, "upper");
    at(p, sizeof p, f, "empty");
    assert_int_equal(mkdir(p, 0755), 0);
    at(p, sizeof p, f, "dangling");
    assert_int_equal(symlink("nowhere", p), 0);
    at(p, sizeof p, f, "outside");
    assert_int_equal(symlink(f->outside, p), 0);
    at(p, sizeof p, f, "fifo");
    assert_int_equal(mkfifo(p, 0644), 0);
    at(p, sizeof p, f, "sock");
    int s = socket(AF_UNIX, SOCK_STREAM, 0);
    assert_true(s >= 0);
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    assert_true(strlen(p) < sizeof sa.sun_path);
    strcpy(sa.sun_path, p);
    assert_int_equal(bind(s, (struct sockaddr *)&sa, sizeof sa), 0);
    close(s);
}

static int setup(void **state)
{
    struct fixture *f = calloc(1, sizeof *f);
    assert_non_null(f);
    strcpy(f->base, "/tmp/hbc-walk-XXXXXX");
    assert_non_null(mkdtemp(f->base));
    snprintf(f->src, sizeof f->src, "%s/src", f->base);
    snprintf(f->outside, sizeof f->outside, "%s/outside", f->base);
    assert_int_equal(mkdir(f->src, 0755), 0);
    assert_int_equal(mkdir(f->outside, 0755), 0);
    char p[256];
    snprintf(p, sizeof p, "%s/secret", f->outside);
    write_file(p, "not to be walked");
    make_source(f);
    f->kept_fd = -1;
    *state = f;
    return 0;
}

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)ftw;
    chmod(path, 0700); /* a test may have made something unreadable */
    return flag == FTW_DP ? rmdir(path) : unlink(path);
}

static int teardown(void **state)
{
    struct fixture *f = *state;
    log_clear(f);
    if (f->kept_fd >= 0) {
        close(f->kept_fd);
    }
    assert_int_equal(nftw(f->base, rm_entry, 16, FTW_DEPTH | FTW_PHYS), 0);
    free(f);
    return 0;
}

static int run(struct fixture *f, const char *const *paths, size_t n, struct walk_options *o,
               struct err *e)
{
    o->entry_cb = entry_cb;
    o->error_cb = error_cb;
    o->race_cb = race_cb;
    o->arg = f;
    return walk_run(paths, n, o, e);
}

static int run_src(struct fixture *f, struct err *e)
{
    struct walk_options o;
    walk_options_default(&o);
    const char *paths[] = {f->src};
    return run(f, paths, 1, &o, e);
}

static void assert_log(const struct fixture *f, const char *const *want, size_t n)
{
    for (size_t i = 0; i < n && i < f->nlog; i++) {
        if (strcmp(f->log[i], want[i]) != 0) {
            for (size_t k = 0; k < f->nlog; k++) {
                print_message("  got[%zu] %s\n", k, f->log[k]);
            }
            fail_msg("line %zu: got \"%s\", want \"%s\"", i, f->log[i], want[i]);
        }
    }
    assert_int_equal(f->nlog, n);
}

static void test_full_walk_in_sorted_order(void **state)
{
    struct fixture *f = *state;
    struct err e = {0};
    assert_int_equal(run_src(f, &e), 0);
    char outside_line[160];
    snprintf(outside_line, sizeof outside_line, "0:S outside->%s", f->outside);
    const char *want[] = {
        "0:E ",
        "0:F A", /* 'A' sorts before 'a' */
        "0:F a.txt",
        "0:E b",
        "0:F b/c.txt",
        "0:H b/hard=0:a.txt", /* the second name of a.txt */
        "0:L b",
        "0:S dangling->nowhere",
        "0:E empty", /* an empty directory: ENTER then LEAVE */
        "0:L empty",
        "0:P fifo",
        outside_line, /* reported, never followed: secret is not walked */
        "0:K sock",
        "0:E z",
        "0:E z/deep",
        "0:F z/deep/f.txt",
        "0:L z/deep",
        "0:L z",
        "0:F \xff\xfe odd", /* bytes above 0x7f sort last */
        "0:L ",
    };
    assert_log(f, want, sizeof want / sizeof *want);
    assert_string_equal(f->a_content, "alpha"); /* the descriptor reads the file */

    /* The same tree walks the same way again. */
    char *first[MAX_LOG];
    size_t n = f->nlog;
    memcpy(first, f->log, n * sizeof *first);
    f->nlog = 0;
    assert_int_equal(run_src(f, NULL), 0);
    assert_int_equal(f->nlog, n);
    for (size_t i = 0; i < n; i++) {
        assert_string_equal(f->log[i], first[i]);
        free(first[i]);
    }
}

/* Hooks that change the tree while it is walked. */
static void remove_during(struct fixture *f, const struct walk_entry *en)
{
    char p[256];
    if (en->event == WALK_ENTER && strcmp(en->rel, "b") == 0) {
        at(p, sizeof p, f, "b/c.txt"); /* read by readdir, gone before lstat */
        assert_int_equal(unlink(p), 0);
        at(p, sizeof p, f, "empty"); /* a directory removed mid-walk */
        assert_int_equal(rmdir(p), 0);
    }
}

static void swap_during(struct fixture *f, const char *path)
{
    char p[256];
    char q[256];
    size_t n = strlen(path);
    if (n >= 2 && strcmp(path + n - 2, "/z") == 0) {
        /* A directory replaced by a file between lstat and open. */
        at(p, sizeof p, f, "z");
        at(q, sizeof q, f, "z.moved");
        assert_int_equal(rename(p, q), 0);
        write_file(p, "now a file");
    } else if (n >= 6 && strcmp(path + n - 6, "/a.txt") == 0) {
        /* A file replaced by a symlink: O_NOFOLLOW refuses it. */
        assert_int_equal(unlink(path), 0);
        assert_int_equal(symlink("/etc/passwd", path), 0);
    } else if (n >= 2 && strcmp(path + n - 2, "/A") == 0) {
        /* A file replaced by a FIFO: opened without blocking, then refused. */
        assert_int_equal(unlink(path), 0);
        assert_int_equal(mkfifo(path, 0600), 0);
    }
}

static void test_errors_are_reported_and_the_walk_goes_on(void **state)
{
    struct fixture *f = *state;
    f->hook = remove_during;
    f->race = swap_during;
    struct err e = {0};
    assert_int_equal(run_src(f, &e), HBC_EPARTIAL);
    char outside_line[160];
    snprintf(outside_line, sizeof outside_line, "0:S outside->%s", f->outside);
    const char *want[] = {
        "0:E ",
        "X /A HBC_EBUSY", /* became a FIFO */
        "X /a.txt ELOOP", /* became a symlink */
        "0:E b",
        "X /b/c.txt ENOENT", /* vanished */
        "0:F b/hard",        /* a.txt failed, so this is now the first name */
        "0:L b",
        "0:S dangling->nowhere",
        "X /empty ENOENT", /* the directory vanished */
        "0:P fifo",
        outside_line,
        "0:K sock",
        "X /z ENOTDIR", /* became a file */
        "0:F \xff\xfe odd",
        "0:L ",
    };
    assert_log(f, want, sizeof want / sizeof *want);
    if (strstr(e.msg, "5 entries") == NULL) {
        fail_msg("message: %s", e.msg);
    }
}

static void test_unreadable_entries_when_not_root(void **state)
{
    struct fixture *f = *state;
    if (geteuid() == 0) {
        skip(); /* permission bits do not stop root; the swap and vanish cases cover errors */
    }
    char p[256];
    at(p, sizeof p, f, "b");
    assert_int_equal(chmod(p, 0), 0);
    at(p, sizeof p, f, "A");
    assert_int_equal(chmod(p, 0), 0);
    assert_int_equal(run_src(f, NULL), HBC_EPARTIAL);
    bool saw_dir = false;
    bool saw_file = false;
    for (size_t i = 0; i < f->nlog; i++) {
        saw_dir |= strcmp(f->log[i], "X /b EACCES") == 0;
        saw_file |= strcmp(f->log[i], "X /A EACCES") == 0;
    }
    at(p, sizeof p, f, "b");
    assert_int_equal(chmod(p, 0755), 0); /* so that teardown can remove it */
    assert_true(saw_dir && saw_file);
}

static void test_skip_stop_and_take(void **state)
{
    struct fixture *f = *state;
    /* Skipping a directory leaves out its contents and its LEAVE. */
    f->skip_rel = "b";
    assert_int_equal(run_src(f, NULL), 0);
    for (size_t i = 0; i < f->nlog; i++) {
        assert_null(strstr(f->log[i], " b/"));
        assert_string_not_equal(f->log[i], "0:L b");
    }
    log_clear(f);

    /* A skipped first name is no link target: the next name is the first. */
    f->skip_rel = "a.txt";
    assert_int_equal(run_src(f, NULL), 0);
    bool saw = false;
    for (size_t i = 0; i < f->nlog; i++) {
        saw |= strcmp(f->log[i], "0:F b/hard") == 0;
    }
    assert_true(saw);
    log_clear(f);
    f->skip_rel = NULL;

    /* A callback's negative code stops the walk at once and is returned. */
    f->stop_rel = "b/c.txt";
    struct err e = {0};
    assert_int_equal(run_src(f, &e), HBC_ECANCELED);
    assert_string_equal(f->log[f->nlog - 1], "0:F b/c.txt");
    log_clear(f);
    f->stop_rel = NULL;

    /* A callback may take a file's descriptor; the walker then leaves it open. */
    f->take_rel = "z/deep/f.txt";
    assert_int_equal(run_src(f, NULL), 0);
    assert_true(f->kept_fd >= 0);
    char buf[8] = {0};
    assert_int_equal(pread(f->kept_fd, buf, sizeof buf - 1, 0), 4);
    assert_string_equal(buf, "deep");
    log_clear(f);

    /* Without open_files, walk_open_file() opens on demand and checks the identity. */
    f->take_rel = NULL;
    struct walk_options o;
    walk_options_default(&o);
    o.open_files = false;
    const char *paths[] = {f->src};
    f->a_content[0] = '\0';
    assert_int_equal(run(f, paths, 1, &o, NULL), 0);
    assert_string_equal(f->a_content, ""); /* nothing handed over */
}

/* Opens files on demand from inside the callback. */
static void open_on_demand(struct fixture *f, const struct walk_entry *en)
{
    (void)f;
    if (en->event != WALK_ITEM || en->type != TREE_FILE) {
        return;
    }
    int fd;
    struct err e = {0};
    assert_int_equal(walk_open_file(en, &fd, &e), 0);
    char buf[16] = {0};
    assert_true(read(fd, buf, sizeof buf - 1) > 0);
    close(fd);
    if (strcmp(en->rel, "A") == 0) {
        struct walk_entry other = *en; /* claims to be another inode */
        other.st.st_ino++;
        assert_int_equal(walk_open_file(&other, &fd, &e), HBC_EBUSY);
        assert_int_equal(fd, -1);
    }
}

static void test_open_on_demand(void **state)
{
    struct fixture *f = *state;
    f->hook = open_on_demand;
    struct walk_options o;
    walk_options_default(&o);
    o.open_files = false;
    const char *paths[] = {f->src};
    assert_int_equal(run(f, paths, 1, &o, NULL), 0);
}

static void test_depth_and_path_bounds(void **state)
{
    struct fixture *f = *state;
    struct walk_options o;
    walk_options_default(&o);
    o.max_depth = 2; /* src (0), z (1) fine; z/deep (2) too deep */
    const char *paths[] = {f->src};
    assert_int_equal(run(f, paths, 1, &o, NULL), HBC_EPARTIAL);
    bool saw_error = false;
    for (size_t i = 0; i < f->nlog; i++) {
        saw_error |= strcmp(f->log[i], "X /z/deep HBC_ETOOBIG") == 0;
        assert_null(strstr(f->log[i], "f.txt"));
    }
    assert_true(saw_error);
    log_clear(f);

    /* A name that makes the path too long is reported against its directory. */
    char p[512];
    char name[201];
    memset(name, 'n', 200);
    name[200] = '\0';
    snprintf(p, sizeof p, "%s/b/%s", f->src, name);
    write_file(p, "long");
    walk_options_default(&o);
    o.max_path = strlen(f->src) + 100;
    assert_int_equal(run(f, paths, 1, &o, NULL), HBC_EPARTIAL);
    saw_error = false;
    for (size_t i = 0; i < f->nlog; i++) {
        saw_error |= strcmp(f->log[i], "X /b ENAMETOOLONG") == 0;
        assert_null(strstr(f->log[i], "nnnn"));
    }
    assert_true(saw_error);
}

static void test_several_roots(void **state)
{
    struct fixture *f = *state;
    char b[160];
    char a[160];
    char dangling[160];
    char z[160];
    char missing[160];
    snprintf(b, sizeof b, "%s/b", f->src);
    snprintf(a, sizeof a, "%s/a.txt", f->src);
    snprintf(dangling, sizeof dangling, "%s/dangling", f->src);
    snprintf(z, sizeof z, "%s/z//", f->src); /* trailing slashes are dropped */
    snprintf(missing, sizeof missing, "%s/missing", f->src);
    const char *paths[] = {b, a, dangling, missing, z};
    struct walk_options o;
    walk_options_default(&o);
    struct err e = {0};
    assert_int_equal(run(f, paths, 5, &o, &e), HBC_EPARTIAL);
    const char *want[] = {
        "0:E ",           "0:F c.txt",         "0:F hard", /* first seen here, under root 0 */
        "0:L ",           "1:H =0:hard", /* the root file a.txt is its second name */
        "2:S ->nowhere",  "X /missing ENOENT", "4:E ",     "4:E deep",
        "4:F deep/f.txt", "4:L deep",          "4:L ",
    };
    assert_log(f, want, sizeof want / sizeof *want);
}

/* Records ENTER/LEAVE of /dev/shm and anything below it. */
static int dev_cb(void *arg, struct walk_entry *en)
{
    struct fixture *f = arg;
    if (strncmp(en->rel, "shm", 3) == 0 && (en->rel[3] == '\0' || en->rel[3] == '/')) {
        logf_(f, "%s %s%s",
              en->event == WALK_ENTER   ? "E"
              : en->event == WALK_LEAVE ? "L"
                                        : "I",
              en->rel, en->mountpoint ? " (mount)" : "");
    }
    return 0;
}

static void test_one_file_system(void **state)
{
    struct fixture *f = *state;
    struct stat dev;
    struct stat shm;
    if (stat("/dev", &dev) != 0 || stat("/dev/shm", &shm) != 0 || dev.st_dev == shm.st_dev) {
        skip(); /* needs /dev/shm mounted on its own */
    }
    char p[128];
    snprintf(p, sizeof p, "/dev/shm/hbc-walk-%d", (int)getpid());
    write_file(p, "x");
    struct walk_options o;
    walk_options_default(&o);
    o.open_files = false;
    o.one_file_system = true;
    o.entry_cb = dev_cb;
    o.arg = f;
    const char *paths[] = {"/dev"};
    int rc = walk_run(paths, 1, &o, NULL);
    assert_true(rc == 0 || rc == HBC_EPARTIAL);
    const char *want[] = {"E shm (mount)", "L shm (mount)"};
    assert_log(f, want, 2);
    log_clear(f);
    o.one_file_system = false;
    rc = walk_run(paths, 1, &o, NULL);
    assert_true(rc == 0 || rc == HBC_EPARTIAL);
    assert_true(f->nlog >= 3); /* now the file inside is seen */
    unlink(p);
}

static void test_bad_arguments(void **state)
{
    struct fixture *f = *state;
    struct walk_options o;
    walk_options_default(&o);
    const char *paths[] = {f->src};
    assert_int_equal(walk_run(paths, 1, &o, NULL), HBC_EINVAL); /* no callback */
    o.entry_cb = entry_cb;
    o.arg = f;
    o.max_depth = 0;
    assert_int_equal(walk_run(paths, 1, &o, NULL), HBC_EINVAL);
    o.max_depth = 10;
    const char *empty[] = {""};
    assert_int_equal(walk_run(empty, 1, &o, NULL), HBC_EINVAL);
    assert_int_equal(walk_run(NULL, 0, &o, NULL), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_full_walk_in_sorted_order, setup, teardown),
        cmocka_unit_test_setup_teardown(test_errors_are_reported_and_the_walk_goes_on, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_unreadable_entries_when_not_root, setup, teardown),
        cmocka_unit_test_setup_teardown(test_skip_stop_and_take, setup, teardown),
        cmocka_unit_test_setup_teardown(test_open_on_demand, setup, teardown),
        cmocka_unit_test_setup_teardown(test_depth_and_path_bounds, setup, teardown),
        cmocka_unit_test_setup_teardown(test_several_roots, setup, teardown),
        cmocka_unit_test_setup_teardown(test_one_file_system, setup, teardown),
        cmocka_unit_test_setup_teardown(test_bad_arguments, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
