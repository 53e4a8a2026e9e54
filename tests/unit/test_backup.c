/* Unit tests of the backup and restore pipelines, snapshot_io and libhbc's API, over the in-memory
 * repo fake. */
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <limits.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include <hbc/hbc.h>

#include "client/progress.h"
#include "client/snapshot_io.h"
#include "common/alloc.h"
#include "tests/unit/repo_fake.h"

struct fixture {
    char base[64]; /* temporary directory */
    char src[96];  /* base/src: what is backed up */
    char dst[96];  /* base/dst: where it is restored */
    hbc_client *c; /* open on the fake */
};

static void write_bytes(const char *path, const void *data, size_t len)
{
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(data, 1, len, f), len);
    assert_int_equal(fclose(f), 0);
}

static void write_text(const char *path, const char *s)
{
    write_bytes(path, s, strlen(s));
}

/* Deterministic pseudo-random bytes (xorshift), incompressible and chunkable. */
static void fill_random(uint8_t *p, size_t n, uint64_t seed)
{
    uint64_t x = seed * 0x9e3779b97f4a7c15ULL + 1;
    for (size_t i = 0; i < n; i++) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        p[i] = (uint8_t)(x >> 32);
    }
}

static char *sp(struct fixture *f, const char *rel)
{
    static char buf[4][PATH_MAX];
    static int k;
    k = (k + 1) % 4;
    snprintf(buf[k], sizeof buf[k], "%s/%s", f->src, rel);
    return buf[k];
}

static void make_tree(struct fixture *f)
{
    assert_int_equal(mkdir(f->src, 0755), 0);
    assert_int_equal(mkdir(sp(f, "patients"), 0750), 0);
    assert_int_equal(mkdir(sp(f, "patients/0001"), 0700), 0);
    write_text(sp(f, "patients/0001/record.hl7"), "MSH|^~\\&|HIS|RAD|20240117||ADT^A01|");
    write_text(sp(f, "patients/0001/empty"), "");
    write_text(sp(f, "patients/\xc3\xa9t\xc3\xa9 \xff odd"), "odd name");
    assert_int_equal(chmod(sp(f, "patients/\xc3\xa9t\xc3\xa9 \xff odd"), 04711), 0);
    assert_int_equal(link(sp(f, "patients/0001/record.hl7"), sp(f, "patients/same-record.hl7")), 0);
    assert_int_equal(symlink("0001/record.hl7", sp(f, "patients/latest")), 0);
    assert_int_equal(symlink("/nonexistent/target", sp(f, "dangling")), 0);
    assert_int_equal(mkdir(sp(f, "empty-dir"), 0555), 0);
    assert_int_equal(mkfifo(sp(f, "pipe"), 0640), 0);
    /* 14 MiB: random data around an 8 MiB zero run (chunks of zeros dedup). */
    size_t n = 14u << 20;
    uint8_t *big = malloc(n);
    assert_non_null(big);
    fill_random(big, n, 7);
    memset(big + (3u << 20), 0, 8u << 20);
    write_bytes(sp(f, "patients/scan.dcm"), big, n);
    free(big);
    for (int i = 0; i < 40; i++) {
        char name[64];
        char body[128];
        snprintf(name, sizeof name, "patients/0001/note-%02d.txt", i);
        snprintf(body, sizeof body, "note %d for patient 0001\n", i);
        write_text(sp(f, name), body);
    }
    struct timespec ts[2] = {{.tv_sec = 1000}, {.tv_sec = 1700000000, .tv_nsec = 987654321}};
    assert_int_equal(utimensat(AT_FDCWD, sp(f, "patients/scan.dcm"), ts, 0), 0);
    assert_int_equal(utimensat(AT_FDCWD, sp(f, "empty-dir"), ts, 0), 0);
}

static int setup(void **state)
{
    struct fixture *f = calloc(1, sizeof *f);
    assert_non_null(f);
    snprintf(f->base, sizeof f->base, "/tmp/hbc-test-backup-XXXXXX");
    assert_non_null(mkdtemp(f->base));
    snprintf(f->src, sizeof f->src, "%s/src", f->base);
    snprintf(f->dst, sizeof f->dst, "%s/dst", f->base);
    repo_fake_reset();
    const char *addrs[] = {"127.0.0.1:1"};
    struct hbc_settings s = {.cluster = addrs,
                             .ncluster = 1,
                             .ca = "ca",
                             .cert = "cert",
                             .key = "key",
                             .keyfile = "keyfile",
                             .passphrase = "pass",
                             .passphrase_len = 4,
                             .vault = "records"};
    assert_int_equal(hbc_client_open(&s, &f->c), 0);
    *state = f;
    return 0;
}

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)flag;
    (void)ftw;
    chmod(path, 0700);
    remove(path);
    return 0;
}

static int teardown(void **state)
{
    struct fixture *f = *state;
    hbc_client_close(f->c);
    /* Directories first made writable (nftw post-order removes contents before them). */
    nftw(f->base, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
    repo_fake_reset();
    free(f);
    return 0;
}

/* ------------------------------------------------------------------------- */
/* Comparing the restored tree with the source.                              */

static struct fixture *cmp_f;

static int cmp_entry(const char *path, const struct stat *src, int flag, struct FTW *ftw)
{
    (void)flag;
    (void)ftw;
    char p[PATH_MAX * 2];
    snprintf(p, sizeof p, "%s%s", cmp_f->dst, path); /* the absolute layout under the target */
    struct stat dst;
    if (lstat(p, &dst) != 0) {
        fail_msg("missing in the restore: %s", path);
    }
    assert_int_equal(src->st_mode, dst.st_mode);
    if (!S_ISDIR(src->st_mode)) {
        assert_int_equal(src->st_size, dst.st_size);
        assert_int_equal(src->st_nlink, dst.st_nlink);
    }
    assert_int_equal(src->st_mtim.tv_sec, dst.st_mtim.tv_sec);
    assert_int_equal(src->st_mtim.tv_nsec, dst.st_mtim.tv_nsec);
    if (S_ISREG(src->st_mode)) {
        FILE *a = fopen(path, "rb");
        FILE *b = fopen(p, "rb");
        assert_non_null(a);
        assert_non_null(b);
        int ca;
        int cb;
        do {
            ca = fgetc(a);
            cb = fgetc(b);
            assert_int_equal(ca, cb);
        } while (ca != EOF);
        fclose(a);
        fclose(b);
    }
    if (S_ISLNK(src->st_mode)) {
        char x[256];
        char y[256];
        ssize_t nx = readlink(path, x, sizeof x);
        ssize_t ny = readlink(p, y, sizeof y);
        assert_int_equal(nx, ny);
        assert_memory_equal(x, y, (size_t)nx);
    }
    return 0;
}

static void assert_restored(struct fixture *f)
{
    cmp_f = f;
    assert_int_equal(nftw(f->src, cmp_entry, 16, FTW_PHYS), 0);
}

static int backup(struct fixture *f, const char *parent, bool force, struct hbc_backup_summary *s)
{
    const char *paths[] = {f->src};
    struct hbc_backup_options o = {
        .paths = paths, .npaths = 1, .parent = parent, .force_read = force, .threads = 3};
    int rv = hbc_backup(f->c, &o, s);
    if (rv != 0) {
        print_message("backup: %s\n", hbc_client_errmsg(f->c));
    }
    return rv;
}

static void entry_error(void *arg, const char *path, int code, const char *msg)
{
    (void)arg;
    print_message("entry %s: %s (%s)\n", path, msg, hbc_errname(code));
}

static int restore(struct fixture *f, const char *snap, const char *target, bool verify,
                   const char *include, struct hbc_restore_summary *s)
{
    const char *inc[] = {include};
    struct hbc_restore_options o = {.snapshot = snap,
                                    .target = target,
                                    .verify = verify,
                                    .copy = -1,
                                    .threads = 3,
                                    .error = entry_error,
                                    .includes = include != NULL ? inc : NULL,
                                    .nincludes = include != NULL ? 1 : 0};
    int rv = hbc_restore(f->c, &o, s);
    if (rv != 0) {
        print_message("restore: %s\n", hbc_client_errmsg(f->c));
    }
    return rv;
}

/* ------------------------------------------------------------------------- */

static void test_round_trip(void **state)
{
    struct fixture *f = *state;
    make_tree(f);
    struct hbc_backup_summary b;
    assert_int_equal(backup(f, NULL, false, &b), 0);
    assert_int_equal(strlen(b.snapshot), 32);
    assert_string_equal(b.parent, "");
    assert_int_equal(b.files, 44); /* regular files; the hard link is counted with others */
    assert_int_equal(b.others, 4); /* hard link, two symlinks, a FIFO */
    assert_true(b.bytes > (14u << 20));
    assert_int_equal(b.bytes_read, b.bytes);
    assert_int_equal(b.skipped, 0);
    /* The 3 MiB zero run is stored once however many chunks it spans. */
    assert_true(b.new_bytes < b.bytes);
    struct repo_fake_stats st = repo_fake_stats();
    assert_int_equal(st.snapshots, 1);

    struct hbc_restore_summary r;
    assert_int_equal(restore(f, "latest", f->dst, true, NULL, &r), 0);
    assert_int_equal(r.errors, 0);
    assert_int_equal(r.files, b.files);
    assert_int_equal(r.verified, b.files);
    assert_int_equal(r.bytes, b.bytes);
    assert_restored(f);
}

static void test_incremental_reads_only_changes(void **state)
{
    struct fixture *f = *state;
    make_tree(f);
    struct hbc_backup_summary b1;
    assert_int_equal(backup(f, NULL, false, &b1), 0);
    uint64_t puts1 = repo_fake_stats().put_bytes;

    /* Nothing changed: nothing is read, and nothing is new but the root tree (it holds the
     * entry of /tmp, whose time other programs change). */
    struct hbc_backup_summary b2;
    assert_int_equal(backup(f, NULL, false, &b2), 0);
    assert_string_equal(b2.parent, b1.snapshot);
    assert_int_equal(b2.bytes_read, 0);
    assert_int_equal(b2.files_reused, b1.files);
    assert_true(b2.new_chunks <= 1);
    assert_int_equal(b2.chunks, b1.chunks);

    /* --force-read reads everything again but stores nothing new: the same small files in the
     * same order make the same packs. */
    struct hbc_backup_summary b4;
    assert_int_equal(backup(f, NULL, true, &b4), 0);
    assert_string_equal(b4.parent, "");
    assert_int_equal(b4.bytes_read, b4.bytes);
    assert_true(b4.new_chunks <= 1); /* the root tree, as above */
    assert_int_equal(b4.chunks, b1.chunks);

    /* One small file changed: only it is read. */
    write_text(sp(f, "patients/0001/note-07.txt"), "changed note 7, longer than before\n");
    struct hbc_backup_summary b3;
    assert_int_equal(backup(f, NULL, false, &b3), 0);
    assert_int_equal(b3.bytes_read, strlen("changed note 7, longer than before\n"));
    assert_int_equal(b3.files_read, 1);
    assert_true(b3.new_chunks >= 1);
    assert_int_equal(b3.files_reused, b1.files - 1);
    uint64_t puts3 = repo_fake_stats().put_bytes - puts1;
    assert_true(puts3 < b1.bytes / 10);

    /* The incremental snapshot restores the changed content. */
    struct hbc_restore_summary r;
    assert_int_equal(restore(f, b3.snapshot, f->dst, true, NULL, &r), 0);
    assert_restored(f);
}

static void test_restore_test_records_result(void **state)
{
    struct fixture *f = *state;
    make_tree(f);
    struct hbc_backup_summary b;
    assert_int_equal(backup(f, NULL, false, &b), 0);
    struct hbc_restore_summary r;
    assert_int_equal(restore(f, b.snapshot, NULL, true, NULL, &r), 0);
    assert_int_equal(r.errors, 0);
    assert_true(r.recorded);
    assert_int_equal(r.files, b.files);
    struct repo_fake_stats st = repo_fake_stats();
    assert_int_equal(st.tests, 1);
    assert_int_equal(st.last_test_errors, 0);
    assert_true(st.last_test_chunks > 0);
    /* Nothing was written anywhere. */
    struct stat sb;
    assert_int_equal(stat(f->dst, &sb), -1);
}

static void test_lost_and_corrupt_chunks_are_errors(void **state)
{
    struct fixture *f = *state;
    make_tree(f);
    struct hbc_backup_summary b;
    assert_int_equal(backup(f, NULL, false, &b), 0);
    /* The 42 small files (40 notes, the hl7 record, "odd name"; not the empty one) share one
     * pack, the 14 MiB scan is chunks of its own: make reading the pack fail. */
    size_t pack_len = b.bytes - (14u << 20);
    repo_fake_fail_gets_of_len(pack_len);
    struct hbc_restore_summary r;
    assert_int_equal(restore(f, b.snapshot, NULL, true, NULL, &r), HBC_EPARTIAL);
    assert_int_equal(r.errors, 42);
    assert_int_equal(r.files, b.files - 42);
    assert_int_equal(repo_fake_stats().last_test_errors, 42);
    /* A pack that comes back altered (one byte) fails the one file whose SHA-256 covers that
     * byte, and that file is never renamed into place; its neighbours in the pack are fine. */
    repo_fake_fail_gets_of_len(0);
    repo_fake_corrupt_len(pack_len);
    assert_int_equal(restore(f, b.snapshot, f->dst, false, NULL, &r), HBC_EPARTIAL);
    assert_int_equal(r.errors, 1);
    assert_int_equal(r.files, b.files - 1);
    char p[PATH_MAX * 2];
    snprintf(p, sizeof p, "%s%s/patients/0001/record.hl7", f->dst, f->src);
    struct stat sb;
    assert_int_equal(lstat(p, &sb), 0);
}

/* Many small files in many directories: few packs, an exact round trip, a restore test. */
static void test_small_files_share_packs(void **state)
{
    struct fixture *f = *state;
    assert_int_equal(mkdir(f->src, 0755), 0);
    uint8_t *buf = malloc(300u << 10);
    assert_non_null(buf);
    unsigned nfiles = 0;
    uint64_t total = 0;
    for (unsigned d = 0; d < 40; d++) {
        char dir[64];
        snprintf(dir, sizeof dir, "p%03u", d);
        assert_int_equal(mkdir(sp(f, dir), 0750), 0);
        for (unsigned i = 0; i < 60; i++) {
            char name[96];
            snprintf(name, sizeof name, "%s/visit-%02u.hl7", dir, i);
            /* Mostly 1-15 kB records; now and then one just below and one above 256 KiB. */
            size_t len = 1000 + (size_t)((d * 7919 + i * 104729) % 14000);
            if (i == 17) {
                len = (256u << 10) - 1;
            } else if (i == 31 && d % 4 == 0) {
                len = (256u << 10) + 5;
            }
            fill_random(buf, len, d * 1000 + i);
            write_bytes(sp(f, name), buf, len);
            nfiles++;
            total += len;
        }
    }
    free(buf);
    struct hbc_backup_summary b;
    assert_int_equal(backup(f, NULL, false, &b), 0);
    assert_int_equal(b.files, nfiles);
    assert_int_equal(b.bytes, total);
    /* About 30 MB of files in 2,400 files: packs of up to 4 MiB, 10 large files of 1 chunk, 42
     * trees: far fewer objects than files. */
    struct repo_fake_stats st = repo_fake_stats();
    assert_true(st.objects < 100);
    assert_true(b.new_chunks < 100);

    struct hbc_restore_summary r;
    assert_int_equal(restore(f, b.snapshot, f->dst, true, NULL, &r), 0);
    assert_int_equal(r.files, nfiles);
    assert_int_equal(r.verified, nfiles);
    assert_int_equal(r.bytes, total);
    assert_restored(f);
    /* A restore test reads each pack once, not once per file. */
    uint64_t gets0 = repo_fake_stats().gets;
    assert_int_equal(restore(f, b.snapshot, NULL, true, NULL, &r), 0);
    assert_int_equal(r.files, nfiles);
    assert_true(repo_fake_stats().gets - gets0 < 150);

    /* Change one small file: the next backup packs it alone and reuses the others' slices. */
    write_text(sp(f, "p007/visit-03.hl7"), "changed");
    struct hbc_backup_summary b2;
    assert_int_equal(backup(f, NULL, false, &b2), 0);
    assert_int_equal(b2.files_read, 1);
    assert_int_equal(b2.bytes_read, 7);
    char dst2[128];
    snprintf(dst2, sizeof dst2, "%s/dst2", f->base);
    assert_int_equal(restore(f, b2.snapshot, dst2, true, NULL, &r), 0);
    assert_int_equal(r.files, nfiles);
    char p[PATH_MAX * 2];
    snprintf(p, sizeof p, "%s%s/p007/visit-03.hl7", dst2, f->src);
    struct stat sb;
    assert_int_equal(stat(p, &sb), 0);
    assert_int_equal(sb.st_size, 7);
}

static void test_failed_put_commits_nothing(void **state)
{
    struct fixture *f = *state;
    make_tree(f);
    repo_fake_fail_puts_after(5);
    struct hbc_backup_summary b;
    int rv = backup(f, NULL, false, &b);
    assert_int_equal(rv, HBC_EUNAVAILABLE);
    assert_string_equal(b.snapshot, "");
    assert_int_equal(repo_fake_stats().snapshots, 0);
    assert_non_null(strstr(hbc_client_errmsg(f->c), "store chunk"));
}

static void test_missing_path_is_partial(void **state)
{
    struct fixture *f = *state;
    make_tree(f);
    char missing[PATH_MAX];
    snprintf(missing, sizeof missing, "%s/not-there", f->base);
    const char *paths[] = {f->src, missing};
    struct hbc_backup_options o = {.paths = paths, .npaths = 2};
    struct hbc_backup_summary b;
    assert_int_equal(hbc_backup(f->c, &o, &b), HBC_EPARTIAL);
    assert_int_equal(b.skipped, 1);
    assert_int_equal(strlen(b.snapshot), 32);
    assert_int_equal(repo_fake_stats().snapshots, 1);
    /* When nothing at all can be read, nothing is committed. */
    const char *none[] = {missing, "/no/such/dir/below"};
    o.paths = none;
    o.npaths = 2;
    assert_int_equal(hbc_backup(f->c, &o, &b), HBC_ENOTFOUND);
    assert_string_equal(b.snapshot, "");
    assert_int_equal(repo_fake_stats().snapshots, 1);
}

static void test_include_and_ls(void **state)
{
    struct fixture *f = *state;
    make_tree(f);
    struct hbc_backup_summary b;
    assert_int_equal(backup(f, NULL, false, &b), 0);
    char pat[PATH_MAX];
    snprintf(pat, sizeof pat, "%s/patients/0001", f->src);
    struct hbc_restore_summary r;
    assert_int_equal(restore(f, b.snapshot, f->dst, true, pat, &r), 0);
    assert_int_equal(r.files, 42); /* record.hl7, empty, 40 notes */
    char p[PATH_MAX * 2];
    snprintf(p, sizeof p, "%s%s/patients/scan.dcm", f->dst, f->src);
    struct stat sb;
    assert_int_equal(lstat(p, &sb), -1);
    snprintf(p, sizeof p, "%s%s/patients/0001/note-39.txt", f->dst, f->src);
    assert_int_equal(lstat(p, &sb), 0);
}

struct count {
    int files;        /* entries of type file */
    int symlinks;     /* of type symlink */
    int first;        /* the first path was the one asked for */
    const char *want; /* that path */
    int n;            /* entries */
};

static int count_cb(void *arg, const struct hbc_entry *en)
{
    struct count *c = arg;
    if (c->n++ == 0 && c->want != NULL) {
        c->first = strcmp(en->path, c->want) == 0;
    }
    c->files += strcmp(en->type, "file") == 0;
    c->symlinks += strcmp(en->type, "symlink") == 0;
    return 0;
}

static void test_ls(void **state)
{
    struct fixture *f = *state;
    make_tree(f);
    struct hbc_backup_summary b;
    assert_int_equal(backup(f, NULL, false, &b), 0);
    struct count c = {0};
    assert_int_equal(hbc_ls(f->c, "latest", NULL, count_cb, &c), 0);
    assert_int_equal(c.files, 44);
    assert_int_equal(c.symlinks, 2);
    char path[PATH_MAX];
    snprintf(path, sizeof path, "%s/patients/0001/", f->src);
    struct count d = {.want = path + 1};
    path[strlen(path) - 1] = '\0';
    assert_int_equal(hbc_ls(f->c, b.snapshot, path, count_cb, &d), 0);
    assert_true(d.first);
    assert_int_equal(d.files, 42);
    assert_int_equal(hbc_ls(f->c, "latest", "/no/such/path", count_cb, &d), HBC_ENOTFOUND);
    assert_int_equal(hbc_ls(f->c, "0000", NULL, count_cb, &d), HBC_ENOTFOUND);
}

/* ------------------------------------------------------------------------- */
/* snapshot_io                                                               */

static void test_snap_find(void **state)
{
    (void)state;
    Hbc__SnapshotInfo a = HBC__SNAPSHOT_INFO__INIT;
    Hbc__SnapshotInfo b = HBC__SNAPSHOT_INFO__INIT;
    uint8_t ida[REPO_ID_LEN] = {0xab, 0xcd, 0x01};
    uint8_t idb[REPO_ID_LEN] = {0xab, 0xcd, 0x02};
    a.snapshot_id.data = ida;
    a.snapshot_id.len = REPO_ID_LEN;
    b.snapshot_id.data = idb;
    b.snapshot_id.len = REPO_ID_LEN;
    Hbc__SnapshotInfo *list[] = {&a, &b};
    const Hbc__SnapshotInfo *s;
    struct err e;
    assert_int_equal(snap_find(list, 2, "latest", &s, &e), 0);
    assert_ptr_equal(s, &b);
    assert_int_equal(snap_find(list, 2, "ABCD01", &s, &e), 0);
    assert_ptr_equal(s, &a);
    assert_int_equal(snap_find(list, 2, "abcd", &s, &e), HBC_EINVAL);
    assert_non_null(strstr(e.msg, "matches 2"));
    assert_int_equal(snap_find(list, 2, "abc", &s, &e), HBC_EINVAL);
    assert_int_equal(snap_find(list, 2, "abcz", &s, &e), HBC_EINVAL);
    assert_int_equal(snap_find(list, 2, "abcd03", &s, &e), HBC_ENOTFOUND);
    assert_int_equal(snap_find(list, 0, "latest", &s, &e), HBC_ENOTFOUND);
}

static void test_reflist_format(void **state)
{
    (void)state;
    uint8_t ids[3][TREE_ID_LEN] = {{1}, {2}, {3}};
    uint8_t parts[1][TREE_ID_LEN] = {{9}};
    uint8_t *buf;
    size_t len;
    struct err e;
    assert_int_equal(snap_reflist_encode((const uint8_t(*)[TREE_ID_LEN])parts, 1,
                                         (const uint8_t(*)[TREE_ID_LEN])ids, 3, &buf, &len, &e),
                     0);
    assert_int_equal(len, SNAP_REFLIST_HEADER + 4 * TREE_ID_LEN);
    const uint8_t(*pp)[TREE_ID_LEN];
    const uint8_t(*ip)[TREE_ID_LEN];
    size_t np;
    size_t ni;
    assert_int_equal(snap_reflist_decode(buf, len, &pp, &np, &ip, &ni, &e), 0);
    assert_int_equal(np, 1);
    assert_int_equal(ni, 3);
    assert_memory_equal(ip, ids, sizeof ids);
    /* Every damage is refused with its own code. */
    assert_int_equal(snap_reflist_decode(buf, len - 1, &pp, &np, &ip, &ni, &e), HBC_ETRUNCATED);
    assert_int_equal(snap_reflist_decode(buf, 10, &pp, &np, &ip, &ni, &e), HBC_ETRUNCATED);
    buf[4] = 2;
    assert_int_equal(snap_reflist_decode(buf, len, &pp, &np, &ip, &ni, &e), HBC_EVERSION);
    buf[4] = 1;
    buf[0] = 'X';
    assert_int_equal(snap_reflist_decode(buf, len, &pp, &np, &ip, &ni, &e), HBC_EFORMAT);
    buf[0] = 'H';
    buf[SNAP_REFLIST_HEADER + 2 * TREE_ID_LEN] = 7; /* ids[1] > ids[2] */
    assert_int_equal(snap_reflist_decode(buf, len, &pp, &np, &ip, &ni, &e), HBC_EFORMAT);
    buf[15] = 0xff; /* a count the length cannot hold */
    assert_int_not_equal(snap_reflist_decode(buf, len, &pp, &np, &ip, &ni, &e), 0);
    hbc_free(buf);
    /* Unsorted input is refused when encoding. */
    uint8_t bad[2][TREE_ID_LEN] = {{2}, {1}};
    assert_int_equal(
        snap_reflist_encode(NULL, 0, (const uint8_t(*)[TREE_ID_LEN])bad, 2, &buf, &len, &e),
        HBC_EINVAL);
}

static void test_reflist_parts_round_trip(void **state)
{
    (void)state;
    repo_fake_reset();
    struct repo *r;
    struct err e;
    assert_int_equal(repo_open(NULL, &r, &e), 0);
    size_t n = 2 * SNAP_REFLIST_PER_OBJECT + 17;
    uint8_t(*ids)[TREE_ID_LEN] = calloc(n, TREE_ID_LEN);
    assert_non_null(ids);
    for (size_t i = 0; i < n; i++) {
        ids[i][0] = (uint8_t)(i >> 24);
        ids[i][1] = (uint8_t)(i >> 16);
        ids[i][2] = (uint8_t)(i >> 8);
        ids[i][3] = (uint8_t)i;
    }
    uint8_t head[TREE_ID_LEN];
    assert_int_equal(snap_reflist_store(r, (const uint8_t(*)[TREE_ID_LEN])ids, n, head, &e), 0);
    assert_int_equal(repo_fake_stats().objects, 3);
    uint8_t(*back)[TREE_ID_LEN];
    size_t m;
    assert_int_equal(snap_reflist_load(r, head, &back, &m, &e), 0);
    assert_int_equal(m, n);
    assert_memory_equal(back, ids, n * TREE_ID_LEN);
    hbc_free(back);
    free(ids);
    repo_close(r);
}

static void test_backup_reflist_names_every_chunk(void **state)
{
    struct fixture *f = *state;
    make_tree(f);
    struct hbc_backup_summary b;
    assert_int_equal(backup(f, NULL, false, &b), 0);
    /* Every object stored but the reference list itself is in the list. */
    assert_int_equal(b.chunks + 1, repo_fake_stats().objects);
}

static void test_progress_format(void **state)
{
    (void)state;
    char buf[256];
    struct hbc_progress p = {.files = 12,
                             .bytes = 3u << 20,
                             .bytes_total = 6u << 20,
                             .totals_final = 1,
                             .rate = 1u << 20,
                             .eta = 3};
    progress_format(buf, sizeof buf, "backup", &p);
    assert_string_equal(buf, "backup 3.0 MiB / 6.0 MiB, 12 files, 1.0 MiB/s, ETA 0:03");
    p.totals_final = 0;
    p.eta = -1;
    progress_format(buf, sizeof buf, "backup", &p);
    assert_string_equal(buf, "backup 3.0 MiB / 6.0 MiB+, 12 files, 1.0 MiB/s");
    progress_bytes(buf, sizeof buf, 512);
    assert_string_equal(buf, "512 B");
    assert_true(progress_peak_rss_kib() > 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_round_trip, setup, teardown),
        cmocka_unit_test_setup_teardown(test_incremental_reads_only_changes, setup, teardown),
        cmocka_unit_test_setup_teardown(test_restore_test_records_result, setup, teardown),
        cmocka_unit_test_setup_teardown(test_lost_and_corrupt_chunks_are_errors, setup, teardown),
        cmocka_unit_test_setup_teardown(test_small_files_share_packs, setup, teardown),
        cmocka_unit_test_setup_teardown(test_failed_put_commits_nothing, setup, teardown),
        cmocka_unit_test_setup_teardown(test_missing_path_is_partial, setup, teardown),
        cmocka_unit_test_setup_teardown(test_include_and_ls, setup, teardown),
        cmocka_unit_test_setup_teardown(test_ls, setup, teardown),
        cmocka_unit_test_setup_teardown(test_backup_reflist_names_every_chunk, setup, teardown),
        cmocka_unit_test(test_snap_find),
        cmocka_unit_test(test_reflist_format),
        cmocka_unit_test(test_reflist_parts_round_trip),
        cmocka_unit_test(test_progress_format),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
