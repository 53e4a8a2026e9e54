/* Unit tests for client/fs_restore: every entry type with its metadata, and no way out of the
 * target. */
#include <dirent.h>
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
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <sys/un.h>
#include <unistd.h>

#include <linux/openat2.h>

#include <cmocka.h>

#include "client/fs_restore.h"
#include "client/walk.h"
#include "common/crypto.h"

/* A target and an "outside" directory next to it that nothing may touch. */
struct fixture {
    char base[64];        /* the temporary directory */
    char target[96];      /* base/target */
    char outside[96];     /* base/outside, with a file "keep" */
    char src[96];         /* base/src, for the walk round trip */
    char before[4096];    /* the outside directory as it was at setup */
    bool no_openat2;      /* resolve component by component */
    struct fs_restore *r; /* open on target */
};

static void write_file(const char *path, const char *content)
{
    FILE *fp = fopen(path, "w");
    assert_non_null(fp);
    fputs(content, fp);
    fclose(fp);
}

static void read_file(const char *path, char *buf, size_t cap)
{
    FILE *fp = fopen(path, "r");
    assert_non_null(fp);
    size_t n = fread(buf, 1, cap - 1, fp);
    buf[n] = '\0';
    fclose(fp);
}

/* A description of dir and everything in it (names, modes, sizes, times, contents). */
static void describe(const char *dir, char *out, size_t cap)
{
    struct stat st;
    assert_int_equal(lstat(dir, &st), 0);
    int n = snprintf(out, cap, "dir %o %lld.%09ld;", st.st_mode, (long long)st.st_mtim.tv_sec,
                     st.st_mtim.tv_nsec);
    DIR *d = opendir(dir);
    assert_non_null(d);
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        if (de->d_name[0] == '.' && (de->d_name[1] == '\0' || strcmp(de->d_name, "..") == 0)) {
            continue;
        }
        char p[512];
        snprintf(p, sizeof p, "%s/%s", dir, de->d_name);
        assert_int_equal(lstat(p, &st), 0);
        char content[64] = "";
        if (S_ISREG(st.st_mode)) {
            read_file(p, content, sizeof content);
        }
        n += snprintf(out + n, cap - (size_t)n, "%s %o %lld %lld.%09ld %s;", de->d_name, st.st_mode,
                      (long long)st.st_size, (long long)st.st_mtim.tv_sec, st.st_mtim.tv_nsec,
                      content);
        assert_true((size_t)n < cap);
    }
    closedir(d);
}

static int setup_mode(void **state, bool no_openat2)
{
    struct fixture *f = calloc(1, sizeof *f);
    assert_non_null(f);
    strcpy(f->base, "/tmp/hbc-restore-XXXXXX");
    assert_non_null(mkdtemp(f->base));
    snprintf(f->target, sizeof f->target, "%s/target", f->base);
    snprintf(f->outside, sizeof f->outside, "%s/outside", f->base);
    snprintf(f->src, sizeof f->src, "%s/src", f->base);
    assert_int_equal(mkdir(f->outside, 0755), 0);
    char p[160];
    snprintf(p, sizeof p, "%s/keep", f->outside);
    write_file(p, "keep me");
    describe(f->outside, f->before, sizeof f->before);
    f->no_openat2 = no_openat2;
    struct fs_restore_options o;
    fs_restore_options_default(&o);
    o.no_openat2 = no_openat2;
    struct err e = {0};
    int rc = fs_restore_open(&f->r, f->target, &o, &e);
    if (rc != 0) {
        fail_msg("open target: %s", e.msg);
    }
    *state = f;
    return 0;
}

static int setup(void **state)
{
    return setup_mode(state, false);
}

static int setup_fallback(void **state)
{
    return setup_mode(state, true);
}

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)ftw;
    return flag == FTW_DP ? rmdir(path) : unlink(path);
}

static int teardown(void **state)
{
    struct fixture *f = *state;
    fs_restore_close(f->r);
    /* Directories restored read-only must become writable to be removed. */
    char cmd[160];
    snprintf(cmd, sizeof cmd, "chmod -R u+rwx '%s'", f->base);
    assert_int_equal(system(cmd), 0);
    assert_int_equal(nftw(f->base, rm_entry, 16, FTW_DEPTH | FTW_PHYS), 0);
    free(f);
    return 0;
}

/* The outside directory is exactly as it was. */
static void assert_outside_untouched(const struct fixture *f)
{
    char now[sizeof f->before];
    describe(f->outside, now, sizeof now);
    assert_string_equal(now, f->before);
}

/* No temporary file is left in dir (relative to the target). */
static void assert_no_temporaries(const struct fixture *f, const char *dir)
{
    char p[256];
    snprintf(p, sizeof p, "%s/%s", f->target, dir);
    DIR *d = opendir(p);
    assert_non_null(d);
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        assert_true(strncmp(de->d_name, ".hbc-", 5) != 0);
    }
    closedir(d);
}

static void tpath(char *buf, size_t cap, const struct fixture *f, const char *rel)
{
    snprintf(buf, cap, "%s/%s", f->target, rel);
}

static struct tree_entry meta(enum tree_type type, uint32_t mode, int64_t mtime_ns)
{
    struct tree_entry m = {.type = type, .mode = mode, .mtime_ns = mtime_ns};
    m.uid = (uint32_t)getuid();
    m.gid = (uint32_t)getgid();
    return m;
}

/* Restore a file of the given content; returns the commit's code. */
static int restore_file(struct fixture *f, const char *path, const char *content,
                        const struct tree_entry *m, struct err *e)
{
    struct fs_file *ff;
    int rc = fs_restore_file_begin(f->r, path, &ff, e);
    if (rc != 0) {
        return rc;
    }
    size_t n = strlen(content);
    rc = fs_file_write(ff, 0, content, n, e);
    if (rc != 0) {
        fs_file_abort(ff);
        return rc;
    }
    struct tree_entry mm = *m;
    mm.size = n;
    return fs_file_commit(ff, &mm, e);
}

static void test_file_with_metadata(void **state)
{
    struct fixture *f = *state;
    struct fs_file *ff;
    struct err e = {0};
    assert_int_equal(fs_restore_file_begin(f->r, "docs/2024/report.txt", &ff, &e), 0);
    /* Chunks arrive out of order. */
    assert_int_equal(fs_file_write(ff, 6, "world", 5, &e), 0);
    assert_int_equal(fs_file_write(ff, 0, "hello ", 6, &e), 0);
    struct tree_entry m = meta(TREE_FILE, 04751, 1600000000123456789);
    if (geteuid() == 0) {
        m.uid = 1234; /* root restores owners; the setuid bit survives the chown */
        m.gid = 5678;
    }
    m.size = 11;
    assert_int_equal(crypto_sha256("hello world", 11, m.sha256, NULL), 0);
    m.has_sha256 = true;
    int rc = fs_file_commit(ff, &m, &e);
    if (rc != 0) {
        fail_msg("commit: %s", e.msg);
    }
    char p[256];
    tpath(p, sizeof p, f, "docs/2024/report.txt");
    struct stat st;
    assert_int_equal(stat(p, &st), 0);
    assert_true(S_ISREG(st.st_mode));
    assert_int_equal(st.st_mode & 07777, 04751);
    assert_int_equal(st.st_uid, m.uid);
    assert_int_equal(st.st_gid, m.gid);
    assert_int_equal(st.st_mtim.tv_sec, 1600000000);
    assert_int_equal(st.st_mtim.tv_nsec, 123456789);
    assert_int_equal(st.st_size, 11);
    char buf[32];
    read_file(p, buf, sizeof buf);
    assert_string_equal(buf, "hello world");
    assert_no_temporaries(f, "docs/2024");

    /* --verify: the file matches, then a changed byte or length is caught. */
    assert_int_equal(fs_restore_verify(f->r, "docs/2024/report.txt", &m, &e), 0);
    assert_int_equal(chmod(p, 0644), 0);
    write_file(p, "hello World");
    assert_int_equal(fs_restore_verify(f->r, "docs/2024/report.txt", &m, &e), HBC_ECORRUPT);
    assert_non_null(strstr(e.msg, "docs/2024/report.txt"));
    write_file(p, "hello world!");
    assert_int_equal(fs_restore_verify(f->r, "docs/2024/report.txt", &m, &e), HBC_ECORRUPT);
    assert_int_equal(fs_restore_verify(f->r, "docs/2024", &m, &e), HBC_EINVAL);
    assert_int_equal(fs_restore_verify(f->r, "docs/none", &m, &e), -ENOENT);

    /* Restoring again replaces the file atomically. */
    struct tree_entry m2 = meta(TREE_FILE, 0600, 0);
    assert_int_equal(restore_file(f, "docs/2024/report.txt", "second", &m2, &e), 0);
    read_file(p, buf, sizeof buf);
    assert_string_equal(buf, "second");

    /* An aborted file leaves nothing behind. */
    assert_int_equal(fs_restore_file_begin(f->r, "docs/2024/aborted", &ff, &e), 0);
    assert_int_equal(fs_file_write(ff, 0, "x", 1, &e), 0);
    fs_file_abort(ff);
    tpath(p, sizeof p, f, "docs/2024/aborted");
    assert_int_equal(access(p, F_OK), -1);
    assert_no_temporaries(f, "docs/2024");

    /* A file cannot replace a directory. */
    assert_int_equal(restore_file(f, "docs", "x", &m2, &e), -EISDIR);
    assert_no_temporaries(f, ".");
}

static void test_sparse_files(void **state)
{
    struct fixture *f = *state;
    size_t len = 4u << 20;
    char *data = calloc(1, len);
    assert_non_null(data);
    memcpy(data + 5000, "middle", 6);  /* inside the second block: written */
    memcpy(data + len - 4, "tail", 4); /* the last block */
    struct fs_file *ff;
    struct err e = {0};
    assert_int_equal(fs_restore_file_begin(f->r, "image.raw", &ff, &e), 0);
    assert_int_equal(fs_file_write(ff, 0, data, len / 2, &e), 0);
    assert_int_equal(fs_file_write(ff, len / 2, data + len / 2, len / 2, &e), 0);
    struct tree_entry m = meta(TREE_FILE, 0644, 0);
    m.size = len;
    assert_int_equal(crypto_sha256(data, len, m.sha256, NULL), 0);
    m.has_sha256 = true;
    assert_int_equal(fs_file_commit(ff, &m, &e), 0);
    char p[256];
    tpath(p, sizeof p, f, "image.raw");
    struct stat st;
    assert_int_equal(stat(p, &st), 0);
    assert_int_equal(st.st_size, len);
    print_message("4 MiB mostly zeros: %lld bytes allocated\n", (long long)st.st_blocks * 512);
    assert_true(st.st_blocks * 512 < 256 * 1024);
    assert_int_equal(fs_restore_verify(f->r, "image.raw", &m, &e), 0);

    /* A file that ends in zeros gets its full size from the commit. */
    assert_int_equal(fs_restore_file_begin(f->r, "zeros", &ff, &e), 0);
    assert_int_equal(fs_file_write(ff, 0, data + 8192, 8192, &e), 0);
    m.size = 8192;
    assert_int_equal(crypto_sha256(data + 8192, 8192, m.sha256, NULL), 0);
    assert_int_equal(fs_file_commit(ff, &m, &e), 0);
    assert_int_equal(fs_restore_verify(f->r, "zeros", &m, &e), 0);

    /* Written back to front, the last part a hole: the size still comes out right. */
    char *want = calloc(1, 16384);
    assert_non_null(want);
    memcpy(want, data + 4096, 8192);
    assert_int_equal(fs_restore_file_begin(f->r, "backwards", &ff, &e), 0);
    assert_int_equal(fs_file_write(ff, 8192, data + 8192, 8192, &e), 0);
    assert_int_equal(fs_file_write(ff, 0, data + 4096, 8192, &e), 0);
    m.size = 16384;
    assert_int_equal(crypto_sha256(want, 16384, m.sha256, NULL), 0);
    assert_int_equal(fs_file_commit(ff, &m, &e), 0);
    assert_int_equal(fs_restore_verify(f->r, "backwards", &m, &e), 0);
    free(want);
    free(data);
}

/* With the fsync option: files, a hard link over an existing name, directory metadata, sync. */
static void test_fsync_option(void **state)
{
    struct fixture *f = *state;
    fs_restore_close(f->r);
    struct fs_restore_options o;
    fs_restore_options_default(&o);
    o.fsync = true;
    struct err e = {0};
    assert_int_equal(fs_restore_open(&f->r, f->target, &o, &e), 0);
    struct tree_entry m = meta(TREE_FILE, 0640, 1700000000LL * 1000000000LL);
    assert_int_equal(fs_restore_mkdir(f->r, "d", &e), 0);
    assert_int_equal(restore_file(f, "d/a", "alpha", &m, &e), 0);
    assert_int_equal(restore_file(f, "top", "top", &m, &e), 0);
    assert_int_equal(fs_restore_hardlink(f->r, "d/b", "d/a", &e), 0);
    /* Again over the same names: the link's temporary name must not stay behind. */
    assert_int_equal(fs_restore_hardlink(f->r, "d/b", "d/a", &e), 0);
    struct tree_entry dm = meta(TREE_DIR, 0750, 1600000000LL * 1000000000LL);
    assert_int_equal(fs_restore_dir_meta(f->r, "d", &dm, &e), 0);
    assert_int_equal(fs_restore_sync(f->r, &e), 0);
    char p[256];
    char buf[64];
    tpath(p, sizeof p, f, "d/b");
    read_file(p, buf, sizeof buf);
    assert_string_equal(buf, "alpha");
    char d[256];
    tpath(d, sizeof d, f, "d");
    DIR *dir = opendir(d);
    assert_non_null(dir);
    size_t entries = 0;
    for (struct dirent *de; (de = readdir(dir)) != NULL;) {
        assert_null(strstr(de->d_name, ".hbc-"));
        entries += de->d_name[0] != '.' ? 1 : 0;
    }
    closedir(dir);
    assert_int_equal(entries, 2);
}

static void test_directories_get_metadata_after_contents(void **state)
{
    struct fixture *f = *state;
    struct err e = {0};
    assert_int_equal(fs_restore_mkdir(f->r, "d", &e), 0);
    assert_int_equal(fs_restore_mkdir(f->r, "d", &e), 0); /* already there: fine */
    assert_int_equal(fs_restore_mkdir(f->r, "d/e", &e), 0);
    struct tree_entry m = meta(TREE_FILE, 0444, 1000000000);
    assert_int_equal(restore_file(f, "d/e/f", "content", &m, &e), 0);
    struct tree_entry de = meta(TREE_DIR, 0500, 1500000000000000001);
    assert_int_equal(fs_restore_dir_meta(f->r, "d/e", &de, &e), 0);
    struct tree_entry dd = meta(TREE_DIR, 01750, -1000000000); /* before the epoch */
    assert_int_equal(fs_restore_dir_meta(f->r, "d", &dd, &e), 0);
    char p[256];
    struct stat st;
    tpath(p, sizeof p, f, "d/e");
    assert_int_equal(stat(p, &st), 0);
    assert_int_equal(st.st_mode & 07777, 0500);
    assert_int_equal(st.st_mtim.tv_sec, 1500000000);
    assert_int_equal(st.st_mtim.tv_nsec, 1);
    tpath(p, sizeof p, f, "d");
    assert_int_equal(stat(p, &st), 0);
    assert_int_equal(st.st_mode & 07777, 01750);
    assert_int_equal(st.st_mtim.tv_sec, -1);
    tpath(p, sizeof p, f, "d/e/f");
    assert_int_equal(stat(p, &st), 0);
    assert_int_equal(st.st_mode & 07777, 0444);
    assert_int_equal(st.st_mtim.tv_sec, 1);

    /* A directory where a file is, and metadata for something missing. */
    assert_int_equal(fs_restore_mkdir(f->r, "d/e/f", &e), -EEXIST);
    assert_int_equal(fs_restore_dir_meta(f->r, "nothing/here", &dd, &e), -ENOENT);
    assert_int_equal(fs_restore_dir_meta(f->r, "nothing", &dd, &e), -ENOENT);
}

static void test_symlinks_hard_links_and_special_files(void **state)
{
    struct fixture *f = *state;
    struct err e = {0};
    char p[256];
    char buf[256];
    struct stat st;

    /* A symlink keeps its target verbatim, even one pointing outside, and is not followed. */
    struct tree_entry s = meta(TREE_SYMLINK, 0777, 1234567890000000007);
    s.target = "../../outside/keep";
    assert_int_equal(fs_restore_symlink(f->r, "links/up", &s, &e), 0);
    tpath(p, sizeof p, f, "links/up");
    ssize_t n = readlink(p, buf, sizeof buf - 1);
    assert_int_equal(n, (ssize_t)strlen(s.target));
    buf[n] = '\0';
    assert_string_equal(buf, s.target);
    assert_int_equal(lstat(p, &st), 0);
    assert_int_equal(st.st_mtim.tv_sec, 1234567890);
    assert_int_equal(st.st_mtim.tv_nsec, 7);
    s.target = "";
    assert_int_equal(fs_restore_symlink(f->r, "links/empty", &s, &e), HBC_EINVAL);
    s.target = "new";
    assert_int_equal(fs_restore_symlink(f->r, "links/up", &s, &e), 0); /* replaces */
    n = readlink(p, buf, sizeof buf - 1);
    assert_int_equal(n, 3);

    /* A hard link is a second name of the same inode. */
    struct tree_entry m = meta(TREE_FILE, 0640, 0);
    assert_int_equal(restore_file(f, "data/first", "shared", &m, &e), 0);
    assert_int_equal(fs_restore_hardlink(f->r, "other/second", "data/first", &e), 0);
    assert_int_equal(fs_restore_hardlink(f->r, "other/second", "data/first", &e), 0); /* again */
    struct stat a;
    tpath(p, sizeof p, f, "data/first");
    assert_int_equal(stat(p, &a), 0);
    tpath(p, sizeof p, f, "other/second");
    assert_int_equal(stat(p, &st), 0);
    assert_int_equal(a.st_ino, st.st_ino);
    assert_int_equal(st.st_nlink, 2);
    assert_no_temporaries(f, "other");
    assert_int_equal(fs_restore_hardlink(f->r, "other/third", "data/missing", &e), -ENOENT);
    /* A link to a symlink links the symlink itself. */
    assert_int_equal(fs_restore_hardlink(f->r, "links/up2", "links/up", &e), 0);
    tpath(p, sizeof p, f, "links/up2");
    assert_int_equal(lstat(p, &st), 0);
    assert_true(S_ISLNK(st.st_mode));

    /* A FIFO and a socket node with their modes and times. */
    struct tree_entry fi = meta(TREE_FIFO, 0620, 2000000000000000000);
    assert_int_equal(fs_restore_special(f->r, "dev/pipe", &fi, &e), 0);
    tpath(p, sizeof p, f, "dev/pipe");
    assert_int_equal(lstat(p, &st), 0);
    assert_true(S_ISFIFO(st.st_mode));
    assert_int_equal(st.st_mode & 07777, 0620);
    assert_int_equal(st.st_mtim.tv_sec, 2000000000);
    struct tree_entry so = meta(TREE_SOCKET, 0755, 0);
    assert_int_equal(fs_restore_special(f->r, "dev/sock", &so, &e), 0);
    tpath(p, sizeof p, f, "dev/sock");
    assert_int_equal(lstat(p, &st), 0);
    assert_true(S_ISSOCK(st.st_mode));
    assert_int_equal(fs_restore_special(f->r, "dev/file", &m, &e), HBC_EINVAL);
    assert_int_equal(fs_restore_sha256(f->r, "dev/pipe", (uint8_t[32]){0}, NULL, &e), HBC_EINVAL);

    /* A character device (/dev/null's numbers) where the process may make one. */
    struct tree_entry ch = meta(TREE_CHAR, 0666, 0);
    ch.rdev = makedev(1, 3);
    int rc = fs_restore_special(f->r, "dev/null", &ch, &e);
    if (rc == 0) {
        tpath(p, sizeof p, f, "dev/null");
        assert_int_equal(lstat(p, &st), 0);
        assert_true(S_ISCHR(st.st_mode));
        assert_true(st.st_rdev == makedev(1, 3));
    } else {
        assert_int_equal(rc, -EPERM);
    }
    assert_no_temporaries(f, "dev");
    assert_outside_untouched(f);
}

/* One attempt that must be refused with code; its message must name the path. */
static void refuse(struct fixture *f, int code, int got, const struct err *e, const char *path)
{
    if (got != code) {
        fail_msg("'%s': got %s (%s), want %s", path, hbc_errname(got), e->msg, hbc_errname(code));
    }
    char quoted[300];
    snprintf(quoted, sizeof quoted, "'%s'", path);
    assert_non_null(strstr(e->msg, quoted));
    assert_outside_untouched(f);
}

static void test_escapes_are_refused(void **state)
{
    struct fixture *f = *state;
    struct err e = {0};
    struct tree_entry m = meta(TREE_FILE, 0644, 0);
    struct tree_entry dm = meta(TREE_DIR, 0777, 0);
    struct tree_entry fifo = meta(TREE_FIFO, 0644, 0);
    struct tree_entry sl = meta(TREE_SYMLINK, 0777, 0);
    char p[256];
    char outside_y[160];
    snprintf(outside_y, sizeof outside_y, "%s/y", f->outside);

    /* Absolute paths and "..": refused before anything is created. */
    refuse(f, HBC_EDENIED, restore_file(f, "/etc/passwd", "x", &m, &e), &e, "/etc/passwd");
    char abs[200];
    snprintf(abs, sizeof abs, "%s/y", f->outside);
    refuse(f, HBC_EDENIED, restore_file(f, abs, "x", &m, &e), &e, abs);
    refuse(f, HBC_EDENIED, restore_file(f, "../outside/keep", "x", &m, &e), &e, "../outside/keep");
    refuse(f, HBC_EDENIED, restore_file(f, "x/../../outside/y", "x", &m, &e), &e,
           "x/../../outside/y");
    assert_string_equal(e.msg, "refusing 'x/../../outside/y': path leaves the restore target");
    refuse(f, HBC_EDENIED, fs_restore_mkdir(f->r, "..", &e), &e, "..");
    refuse(f, HBC_EDENIED, fs_restore_mkdir(f->r, "a/..", &e), &e, "a/..");
    refuse(f, HBC_EDENIED, fs_restore_hardlink(f->r, "h", "../outside/keep", &e), &e,
           "../outside/keep");
    tpath(p, sizeof p, f, "x");
    assert_int_equal(access(p, F_OK), -1); /* "x/.." made no "x" */
    tpath(p, sizeof p, f, "h");
    assert_int_equal(access(p, F_OK), -1);

    /* A symlink restored earlier ("a" -> outside) is never gone through. */
    sl.target = f->outside;
    assert_int_equal(fs_restore_symlink(f->r, "a", &sl, &e), 0);
    refuse(f, HBC_EDENIED, restore_file(f, "a/passwd", "owned", &m, &e), &e, "a/passwd");
    assert_non_null(strstr(e.msg, "path leaves the restore target"));
    refuse(f, HBC_EDENIED, restore_file(f, "a/keep", "owned", &m, &e), &e, "a/keep");
    refuse(f, HBC_EDENIED, fs_restore_mkdir(f->r, "a/sub", &e), &e, "a/sub");
    refuse(f, HBC_EDENIED, fs_restore_mkdir(f->r, "a/sub/deeper", &e), &e, "a/sub/deeper");
    refuse(f, HBC_EDENIED, fs_restore_mkdir(f->r, "a", &e), &e, "a");
    refuse(f, HBC_EDENIED, fs_restore_symlink(f->r, "a/s", &sl, &e), &e, "a/s");
    refuse(f, HBC_EDENIED, fs_restore_special(f->r, "a/p", &fifo, &e), &e, "a/p");
    refuse(f, HBC_EDENIED, fs_restore_dir_meta(f->r, "a", &dm, &e), &e, "a");
    refuse(f, HBC_EDENIED, fs_restore_dir_meta(f->r, "a/keep", &dm, &e), &e, "a/keep");
    assert_int_equal(restore_file(f, "plain", "p", &m, &e), 0);
    refuse(f, HBC_EDENIED, fs_restore_hardlink(f->r, "a/h", "plain", &e), &e, "a/h");
    /* Nor read through: a hard link to, or a verify of, a file beyond it. */
    int rc = fs_restore_hardlink(f->r, "stolen", "a/keep", &e);
    assert_int_equal(rc, HBC_EDENIED);
    assert_outside_untouched(f);
    uint8_t sha[32];
    refuse(f, HBC_EDENIED, fs_restore_sha256(f->r, "a/keep", sha, NULL, &e), &e, "a/keep");

    /* A relative symlink, and one deeper in the tree pointing at "/". */
    sl.target = "../outside";
    assert_int_equal(fs_restore_symlink(f->r, "b", &sl, &e), 0);
    refuse(f, HBC_EDENIED, restore_file(f, "b/y", "owned", &m, &e), &e, "b/y");
    sl.target = "/";
    assert_int_equal(fs_restore_mkdir(f->r, "c", &e), 0);
    assert_int_equal(fs_restore_symlink(f->r, "c/root", &sl, &e), 0);
    refuse(f, HBC_EDENIED, restore_file(f, "c/root/tmp/owned", "owned", &m, &e), &e,
           "c/root/tmp/owned");
    refuse(f, HBC_EDENIED, fs_restore_mkdir(f->r, "c/root/tmp", &e), &e, "c/root/tmp");

    /* A file whose own name is the symlink replaces the symlink, not what it points at. */
    assert_int_equal(restore_file(f, "a", "now a file", &m, &e), 0);
    tpath(p, sizeof p, f, "a");
    struct stat st;
    assert_int_equal(lstat(p, &st), 0);
    assert_true(S_ISREG(st.st_mode));
    assert_outside_untouched(f);
    assert_int_equal(access(outside_y, F_OK), -1);

    /* A directory in the path that is a file is not a way anywhere either. */
    assert_int_equal(restore_file(f, "plain/x", "x", &m, &e), -ENOTDIR);
    assert_outside_untouched(f);
}

static void test_malformed_paths(void **state)
{
    struct fixture *f = *state;
    struct err e = {0};
    struct tree_entry m = meta(TREE_FILE, 0644, 0);
    const char *bad[] = {"", "a//b", "a/", "./a", "a/./b", "."};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        int rc = restore_file(f, bad[i], "x", &m, &e);
        if (rc != HBC_EINVAL) {
            fail_msg("'%s': got %s", bad[i], hbc_errname(rc));
        }
        assert_int_equal(fs_restore_mkdir(f->r, bad[i], &e), HBC_EINVAL);
    }
    char longname[TREE_MAX_NAME + 2];
    memset(longname, 'n', sizeof longname - 1);
    longname[sizeof longname - 1] = '\0';
    assert_int_equal(fs_restore_mkdir(f->r, longname, &e), HBC_EINVAL);
    longname[TREE_MAX_NAME] = '\0'; /* exactly NAME_MAX is a valid name */
    assert_int_equal(fs_restore_mkdir(f->r, longname, &e), 0);
    char *huge = malloc(TREE_MAX_PATH + 2);
    assert_non_null(huge);
    for (size_t i = 0; i <= TREE_MAX_PATH; i++) {
        huge[i] = i % 2 == 0 ? 'a' : '/';
    }
    huge[TREE_MAX_PATH + 1] = '\0';
    assert_int_equal(fs_restore_mkdir(f->r, huge, &e), HBC_EINVAL);
    free(huge);
    /* Names are bytes: anything but '/' and NUL is restored as is. */
    assert_int_equal(restore_file(f, "\xff\xfe odd name \n", "x", &m, &e), 0);
    assert_outside_untouched(f);
}

static void test_openat2_detection(void **state)
{
    struct fixture *f = *state;
    struct open_how how = {.flags = O_RDONLY | O_DIRECTORY | O_CLOEXEC,
                           .resolve = RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS};
    int fd = (int)syscall(SYS_openat2, AT_FDCWD, ".", &how, sizeof how);
    bool kernel_has = fd >= 0;
    if (fd >= 0) {
        close(fd);
    }
    assert_int_equal(fs_restore_uses_openat2(f->r), kernel_has && !f->no_openat2);
    print_message("openat2: kernel %s, this run %s\n", kernel_has ? "yes" : "no",
                  fs_restore_uses_openat2(f->r) ? "uses it" : "walks components");
}

/* ---- walk a tree and restore it: the three modules together --------------- */

struct copy {
    struct fs_restore *r; /* the target */
    int errors;           /* failures */
};

static int copy_cb(void *arg, struct walk_entry *en)
{
    struct copy *c = arg;
    struct tree_entry m;
    tree_entry_from_stat(&m, &en->st);
    struct err e = {0};
    int rc = 0;
    if (en->depth == 0) {
        return 0; /* the root is the target itself */
    }
    if (en->event == WALK_ENTER) {
        rc = fs_restore_mkdir(c->r, en->rel, &e);
    } else if (en->event == WALK_LEAVE) {
        rc = fs_restore_dir_meta(c->r, en->rel, &m, &e);
    } else if (en->type == TREE_FILE) {
        struct fs_file *ff;
        rc = fs_restore_file_begin(c->r, en->rel, &ff, &e);
        uint64_t off = 0;
        char buf[4096];
        ssize_t n;
        while (rc == 0 && (n = read(en->fd, buf, sizeof buf)) > 0) {
            rc = fs_file_write(ff, off, buf, (size_t)n, &e);
            off += (uint64_t)n;
        }
        if (rc == 0) {
            m.size = off;
            rc = fs_file_commit(ff, &m, &e);
        } else if (ff != NULL) {
            fs_file_abort(ff);
        }
    } else if (en->type == TREE_SYMLINK) {
        m.target = en->target;
        rc = fs_restore_symlink(c->r, en->rel, &m, &e);
    } else if (en->type == TREE_HARDLINK) {
        rc = fs_restore_hardlink(c->r, en->rel, en->link_rel, &e);
    } else {
        rc = fs_restore_special(c->r, en->rel, &m, &e);
    }
    if (rc != 0) {
        print_message("restore %s: %s\n", en->rel, e.msg);
        c->errors++;
    }
    return 0;
}

static struct fixture *cmp_f; /* for cmp_entry (nftw has no argument) */

static int cmp_entry(const char *path, const struct stat *src, int flag, struct FTW *ftw)
{
    (void)flag;
    if (ftw->level == 0) {
        return 0;
    }
    const char *rel = path + strlen(cmp_f->src) + 1;
    char p[512];
    tpath(p, sizeof p, cmp_f, rel);
    struct stat dst;
    if (lstat(p, &dst) != 0) {
        fail_msg("missing in the restore: %s", rel);
    }
    assert_int_equal(src->st_mode, dst.st_mode);
    assert_int_equal(src->st_uid, dst.st_uid);
    assert_int_equal(src->st_gid, dst.st_gid);
    if (!S_ISDIR(src->st_mode)) {
        assert_int_equal(src->st_size, dst.st_size);
        assert_int_equal(src->st_nlink, dst.st_nlink);
    }
    assert_int_equal(src->st_mtim.tv_sec, dst.st_mtim.tv_sec);
    assert_int_equal(src->st_mtim.tv_nsec, dst.st_mtim.tv_nsec);
    if (S_ISREG(src->st_mode)) {
        int fd = open(path, O_RDONLY);
        assert_true(fd >= 0);
        struct tree_entry m = {
            .type = TREE_FILE, .size = (uint64_t)src->st_size, .has_sha256 = true};
        assert_int_equal(fs_sha256_fd(fd, m.sha256, NULL, NULL), 0);
        close(fd);
        struct err e = {0};
        assert_int_equal(fs_restore_verify(cmp_f->r, rel, &m, &e), 0);
    }
    if (S_ISLNK(src->st_mode)) {
        char a[256];
        char b[256];
        ssize_t na = readlink(path, a, sizeof a);
        ssize_t nb = readlink(p, b, sizeof b);
        assert_int_equal(na, nb);
        assert_memory_equal(a, b, (size_t)na);
    }
    return 0;
}

static void test_walk_then_restore_round_trip(void **state)
{
    struct fixture *f = *state;
    char p[256];
    char q[256];
    assert_int_equal(mkdir(f->src, 0755), 0);
#define SRC(rel) (snprintf(p, sizeof p, "%s/%s", f->src, rel), p)
    assert_int_equal(mkdir(SRC("patients"), 0750), 0);
    assert_int_equal(mkdir(SRC("patients/0001"), 0700), 0);
    write_file(SRC("patients/0001/record.hl7"), "MSH|^~\\&|HIS|RAD|20240117||ADT^A01|");
    write_file(SRC("patients/0001/empty"), "");
    assert_int_equal(chmod(p, 0600), 0);
    write_file(SRC("patients/\xc3\xa9t\xc3\xa9 \xff"), "odd name");
    assert_int_equal(chmod(p, 04711), 0);
    snprintf(q, sizeof q, "%s/patients/0001/record.hl7", f->src);
    assert_int_equal(link(q, SRC("patients/same-record.hl7")), 0);
    assert_int_equal(symlink("0001/record.hl7", SRC("patients/latest")), 0);
    assert_int_equal(symlink("/nonexistent/target", SRC("dangling")), 0);
    assert_int_equal(mkdir(SRC("empty-dir"), 0555), 0);
    assert_int_equal(mkfifo(SRC("pipe"), 0640), 0);
    char *big = malloc(300000);
    assert_non_null(big);
    for (size_t i = 0; i < 300000; i++) {
        big[i] = i % 100000 < 50000 ? 0 : (char)('a' + i % 26); /* with zero runs */
    }
    big[299999] = '\0';
    write_file(SRC("patients/scan.dcm"), big);
    free(big);
    /* Times with nanoseconds, set last (children change their directory's mtime). */
    const char *rels[] = {"patients/0001/record.hl7", "patients/scan.dcm", "patients/0001",
                          "patients", "empty-dir"};
    for (size_t i = 0; i < sizeof rels / sizeof *rels; i++) {
        struct timespec ts[2] = {{.tv_sec = 1000, .tv_nsec = 0},
                                 {.tv_sec = 1700000000 + (time_t)i, .tv_nsec = 987654321}};
        assert_int_equal(utimensat(AT_FDCWD, SRC(rels[i]), ts, AT_SYMLINK_NOFOLLOW), 0);
    }
#undef SRC

    struct copy c = {.r = f->r};
    struct walk_options o;
    walk_options_default(&o);
    o.entry_cb = copy_cb;
    o.arg = &c;
    const char *paths[] = {f->src};
    struct err e = {0};
    assert_int_equal(walk_run(paths, 1, &o, &e), 0);
    assert_int_equal(c.errors, 0);
    cmp_f = f;
    assert_int_equal(nftw(f->src, cmp_entry, 16, FTW_PHYS), 0);
    assert_outside_untouched(f);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_file_with_metadata, setup, teardown),
        cmocka_unit_test_setup_teardown(test_sparse_files, setup, teardown),
        cmocka_unit_test_setup_teardown(test_fsync_option, setup, teardown),
        cmocka_unit_test_setup_teardown(test_directories_get_metadata_after_contents, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_symlinks_hard_links_and_special_files, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_escapes_are_refused, setup, teardown),
        cmocka_unit_test_setup_teardown(test_escapes_are_refused, setup_fallback, teardown),
        cmocka_unit_test_setup_teardown(test_malformed_paths, setup, teardown),
        cmocka_unit_test_setup_teardown(test_malformed_paths, setup_fallback, teardown),
        cmocka_unit_test_setup_teardown(test_openat2_detection, setup, teardown),
        cmocka_unit_test_setup_teardown(test_openat2_detection, setup_fallback, teardown),
        cmocka_unit_test_setup_teardown(test_walk_then_restore_round_trip, setup, teardown),
        cmocka_unit_test_setup_teardown(test_walk_then_restore_round_trip, setup_fallback,
                                        teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
