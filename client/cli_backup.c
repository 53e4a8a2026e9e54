/* hbc backup, hbc snapshots, hbc ls and hbc restore: the commands on top of libhbc's public API. */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <malloc.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <hbc/hbc.h>

#include "client/cli.h"
#include "client/client_config.h"
#include "client/progress.h"
#include "common/alloc.h"

#define MAX_PASSPHRASE CLI_PASSPHRASE_MAX

/* ------------------------------------------------------------------------- */
/* Settings: the connection from the global options and the client config file (client_config.h). */

struct vault_args {
    const char *vault;   /* --vault (else HBC_VAULT, else the config file) */
    const char *keyfile; /* --keyfile (else HBC_KEYFILE, the config file, the default) */
};

static bool vault_arg(struct vault_args *va, int argc, char **argv, int *i)
{
    const char *a = argv[*i];
    if (*i + 1 < argc && strcmp(a, "--vault") == 0) {
        va->vault = argv[++*i];
        return true;
    }
    if (*i + 1 < argc && strcmp(a, "--keyfile") == 0) {
        va->keyfile = argv[++*i];
        return true;
    }
    return false;
}

static int exit_for(int rv)
{
    switch (rv) {
    case 0:
        return CLI_OK;
    case HBC_EPARTIAL:
        return CLI_PARTIAL;
    case HBC_ECONFIG:
        return CLI_USAGE;
    case HBC_EUNAVAILABLE:
    case HBC_ENOTLEADER:
        return CLI_UNAVAILABLE;
    default:
        return CLI_FAILED;
    }
}

/* Open the vault; prints why not and returns the exit code, or 0 with *out set. */
static int open_client(struct cli *c, const struct vault_args *va, hbc_client **out)
{
    *out = NULL;
    char pass[MAX_PASSPHRASE];
    size_t plen = 0;
    struct hbc_settings s = {
        .cluster = c->addrs,
        .ncluster = (size_t)c->naddrs,
        .ca = c->ca,
        .cert = c->cert,
        .key = c->key,
        .keyfile = cli_keyfile(va->keyfile),
        .vault = cli_vault_name(va->vault),
        .timeout_ms = c->timeout_ms,
    };
    if (s.ca == NULL || s.cert == NULL || s.key == NULL || s.ncluster == 0) {
        cli_error("connection settings missing: give --cluster, --ca, --cert and --key (or "
                  "HBC_CLUSTER, HBC_CA, HBC_CERT, HBC_KEY, or a client config file)");
        return CLI_USAGE;
    }
    if (s.vault == NULL) {
        cli_error("no vault: give --vault NAME (or HBC_VAULT)");
        return CLI_USAGE;
    }
    if (s.keyfile == NULL) {
        cli_error("no key file: give --keyfile FILE (or HBC_KEYFILE)");
        return CLI_USAGE;
    }
    if (cli_passphrase("Passphrase for the key file: ", false, "HBC_PASSPHRASE",
                       "HBC_PASSPHRASE_FILE", pass, sizeof pass, &plen) != CLI_OK) {
        return CLI_USAGE;
    }
    s.passphrase = pass;
    s.passphrase_len = plen;
    hbc_client *h = NULL;
    int rv = hbc_client_open(&s, &h);
    memset(pass, 0, sizeof pass);
    if (rv != 0) {
        cli_error("%s", h != NULL ? hbc_client_errmsg(h) : hbc_strerror(rv));
        hbc_client_close(h);
        return exit_for(rv);
    }
    *out = h;
    return 0;
}

/* ------------------------------------------------------------------------- */
/* JSON helpers.                                                             */

/* A path as a JSON string: as is when UTF-8, else with each bad byte written \xNN. */
static json_t *json_path(const char *p)
{
    json_t *s = json_string(p);
    if (s != NULL) {
        return s;
    }
    size_t n = strlen(p);
    char *buf = hbc_malloc(n * 4 + 1);
    if (buf == NULL) {
        return json_null();
    }
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)p[i];
        if (ch < 0x80) {
            buf[k++] = (char)ch;
        } else {
            k += (size_t)snprintf(buf + k, 5, "\\x%02x", ch);
        }
    }
    buf[k] = '\0';
    s = json_string(buf);
    hbc_free(buf);
    return s != NULL ? s : json_null();
}

static void time_text(uint64_t ms, char *buf, size_t cap)
{
    time_t t = (time_t)(ms / 1000);
    struct tm tm;
    gmtime_r(&t, &tm);
    strftime(buf, cap, "%Y-%m-%dT%H:%M:%SZ", &tm);
}

/* ------------------------------------------------------------------------- */
/* hbc backup                                                                */

struct skipped {
    json_t *list; /* [{path, code, error}] */
    bool json;    /* collect instead of printing */
};

static void skipped_cb(void *arg, const char *path, int code, const char *msg)
{
    struct skipped *s = arg;
    if (s->json) {
        json_array_append_new(s->list, json_pack("{s:o, s:s, s:s}", "path", json_path(path), "code",
                                                 hbc_errname(code), "error", msg));
    } else {
        fprintf(stderr, "hbc: skipped %s: %s\n", path, msg);
    }
}

struct backup_cb {
    struct progress_line line; /* the live line */
    struct skipped skipped;    /* skipped entries */
};

static void backup_progress_cb(void *arg, const struct hbc_progress *p)
{
    struct backup_cb *b = arg;
    progress_line_cb(&b->line, p);
}

static void backup_skipped_cb(void *arg, const char *path, int code, const char *msg)
{
    struct backup_cb *b = arg;
    if (b->line.tty && !b->skipped.json) {
        fputs("\r\033[K", stderr);
    }
    skipped_cb(&b->skipped, path, code, msg);
}

static int cmd_backup(struct cli *c, int argc, char **argv)
{
    struct vault_args va = {0};
    struct hbc_backup_options o = {0};
    const char **paths = hbc_calloc((size_t)argc + 1, sizeof *paths);
    if (paths == NULL) {
        return CLI_FAILED;
    }
    bool json = c->json;
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];
        if (vault_arg(&va, argc, argv, &i)) {
            continue;
        } else if (strcmp(a, "--json") == 0) {
            json = true;
        } else if (strcmp(a, "--force-read") == 0) {
            o.force_read = 1;
        } else if (strcmp(a, "--one-file-system") == 0) {
            o.one_file_system = 1;
        } else if (i + 1 < argc && strcmp(a, "--parent") == 0) {
            o.parent = argv[++i];
        } else if (i + 1 < argc && strcmp(a, "--threads") == 0) {
            o.threads = (unsigned)atoi(argv[++i]);
        } else if (strcmp(a, "--") == 0) {
            while (++i < argc) {
                paths[o.npaths++] = argv[i];
            }
        } else if (a[0] == '-' && a[1] != '\0') {
            cli_error("backup: unknown option '%s' (see hbc --help)", a);
            hbc_free(paths);
            return CLI_USAGE;
        } else {
            paths[o.npaths++] = a;
        }
    }
    if (o.npaths == 0) {
        cli_error("usage: hbc backup [--vault NAME] [--parent SNAP | --force-read] PATH...");
        hbc_free(paths);
        return CLI_USAGE;
    }
    hbc_client *h;
    int ex = open_client(c, &va, &h);
    if (ex != 0) {
        hbc_free(paths);
        return ex;
    }
    struct backup_cb cb = {.skipped = {.list = json_array(), .json = json}};
    progress_line_init(&cb.line, stderr, "backup");
    o.paths = paths;
    /* No progress line (stderr is no terminal): no callback, so no scanner thread walks the
     * tree a second time just to count it. */
    o.progress = cb.line.tty ? backup_progress_cb : NULL;
    o.skipped = backup_skipped_cb;
    o.arg = &cb;
    struct hbc_backup_summary s;
    int rv = hbc_backup(h, &o, &s);
    uint64_t rss = progress_peak_rss_kib();
    double mbs = s.seconds > 0 ? (double)s.bytes_read / s.seconds / 1e6 : 0;
    if (rv != 0 && rv != HBC_EPARTIAL) {
        cli_error("backup failed: %s", hbc_client_errmsg(h));
    }
    if (json) {
        json_t *doc = json_pack(
            "{s:s?, s:s?, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:O, "
            "s:f, s:f, s:I, s:s, s:s?}",
            "snapshot", s.snapshot[0] != '\0' ? s.snapshot : NULL, "parent",
            s.parent[0] != '\0' ? s.parent : NULL, "files", (json_int_t)s.files, "dirs",
            (json_int_t)s.dirs, "others", (json_int_t)s.others, "bytes", (json_int_t)s.bytes,
            "bytes_read", (json_int_t)s.bytes_read, "files_read", (json_int_t)s.files_read,
            "files_reused", (json_int_t)s.files_reused, "chunks", (json_int_t)s.chunks,
            "new_chunks", (json_int_t)s.new_chunks, "new_bytes", (json_int_t)s.new_bytes,
            "dedup_chunks", (json_int_t)s.dedup_chunks, "skipped_count", (json_int_t)s.skipped,
            "skipped", cb.skipped.list, "duration_s", s.seconds, "read_mb_s", mbs, "peak_rss_kib",
            (json_int_t)rss, "result",
            rv == 0              ? "ok"
            : rv == HBC_EPARTIAL ? "partial"
                                 : "failed",
            "error", rv != 0 ? hbc_client_errmsg(h) : NULL);
        cli_print_json(doc);
    } else if (s.snapshot[0] != '\0') {
        char b1[32];
        char b2[32];
        progress_bytes(b1, sizeof b1, (double)s.bytes);
        progress_bytes(b2, sizeof b2, (double)s.new_bytes);
        printf("snapshot %s saved\n", s.snapshot);
        if (s.parent[0] != '\0') {
            printf("  parent %s: %" PRIu64 " unchanged files not read\n", s.parent, s.files_reused);
        }
        printf("  %" PRIu64 " files, %" PRIu64 " directories, %" PRIu64 " other entries, %s\n",
               s.files, s.dirs, s.others, b1);
        printf("  %" PRIu64 " chunks, %" PRIu64 " new (%s), %" PRIu64 " already in the vault\n",
               s.chunks, s.new_chunks, b2, s.dedup_chunks);
        printf("  %.1f s, %.1f MB/s read, peak memory %.0f MiB\n", s.seconds, mbs,
               (double)rss / 1024);
        if (s.skipped > 0) {
            printf("  %" PRIu64 " entries could not be read and were left out (see above)\n",
                   s.skipped);
        }
    }
    json_decref(cb.skipped.list);
    hbc_client_close(h);
    hbc_free(paths);
    return exit_for(rv);
}

/* ------------------------------------------------------------------------- */
/* hbc snapshots                                                             */

static int cmd_snapshots(struct cli *c, int argc, char **argv)
{
    struct vault_args va = {0};
    bool json = c->json;
    for (int i = 0; i < argc; i++) {
        if (vault_arg(&va, argc, argv, &i)) {
            continue;
        } else if (strcmp(argv[i], "--json") == 0) {
            json = true;
        } else {
            cli_error("usage: hbc snapshots [--vault NAME] [--json]");
            return CLI_USAGE;
        }
    }
    hbc_client *h;
    int ex = open_client(c, &va, &h);
    if (ex != 0) {
        return ex;
    }
    struct hbc_snapshot *s;
    size_t n;
    int rv = hbc_snapshots(h, &s, &n);
    if (rv != 0) {
        cli_error("snapshots: %s", hbc_client_errmsg(h));
        hbc_client_close(h);
        return exit_for(rv);
    }
    if (json) {
        json_t *arr = json_array();
        for (size_t i = 0; i < n; i++) {
            char t[32];
            time_text(s[i].time_ms, t, sizeof t);
            char ru[32];
            time_text(s[i].retain_until_ms, ru, sizeof ru);
            json_array_append_new(
                arr,
                json_pack("{s:s, s:s, s:I, s:I, s:I, s:I, s:I, s:s, s:I, s:s, s:b}", "id", s[i].id,
                          "time", t, "time_ms", (json_int_t)s[i].time_ms, "committed_ms",
                          (json_int_t)s[i].committed_ms, "files", (json_int_t)s[i].files, "bytes",
                          (json_int_t)s[i].bytes, "chunks", (json_int_t)s[i].chunks, "retain_until",
                          ru, "retain_until_ms", (json_int_t)s[i].retain_until_ms, "lock_mode",
                          s[i].governance ? "governance" : "compliance", "legal_hold",
                          s[i].legal_hold));
        }
        cli_print_json(arr);
    } else {
        printf("%-32s  %-20s  %10s  %10s  %-20s  %s\n", "ID", "TIME (UTC)", "FILES", "SIZE",
               "RETAIN UNTIL (UTC)", "LOCK");
        for (size_t i = 0; i < n; i++) {
            char t[32];
            char b[32];
            char ru[32];
            time_text(s[i].time_ms, t, sizeof t);
            time_text(s[i].retain_until_ms, ru, sizeof ru);
            progress_bytes(b, sizeof b, (double)s[i].bytes);
            printf("%-32s  %-20s  %10" PRIu64 "  %10s  %-20s  %s%s\n", s[i].id, t, s[i].files, b,
                   ru, s[i].governance ? "governance" : "compliance",
                   s[i].legal_hold ? ", legal hold" : "");
        }
    }
    hbc_snapshots_free(s);
    hbc_client_close(h);
    return CLI_OK;
}

/* ------------------------------------------------------------------------- */
/* hbc ls                                                                    */

struct ls_out {
    bool json;   /* collect a JSON array */
    json_t *arr; /* the entries */
};

static int ls_cb(void *arg, const struct hbc_entry *en)
{
    struct ls_out *l = arg;
    if (l->json) {
        json_t *o = json_pack("{s:o, s:s, s:i, s:I, s:I, s:I, s:I}", "path", json_path(en->path),
                              "type", en->type, "mode", (int)en->mode, "uid", (json_int_t)en->uid,
                              "gid", (json_int_t)en->gid, "mtime_ns", (json_int_t)en->mtime_ns,
                              "size", (json_int_t)en->size);
        if (en->target != NULL) {
            json_object_set_new(o, "target", json_path(en->target));
        }
        json_array_append_new(l->arr, o);
        return 0;
    }
    char t[32];
    time_text((uint64_t)(en->mtime_ns / 1000000), t, sizeof t);
    char kind = strcmp(en->type, "dir") == 0        ? 'd'
                : strcmp(en->type, "symlink") == 0  ? 'l'
                : strcmp(en->type, "hardlink") == 0 ? 'h'
                : strcmp(en->type, "file") == 0     ? '-'
                                                    : '?';
    printf("%c%04o %6u %6u %12" PRIu64 " %s /%s%s%s\n", kind, en->mode, en->uid, en->gid, en->size,
           t, en->path, en->target != NULL ? (kind == 'h' ? " => /" : " -> ") : "",
           en->target != NULL ? en->target : "");
    return 0;
}

static int cmd_ls(struct cli *c, int argc, char **argv)
{
    struct vault_args va = {0};
    struct ls_out l = {.json = c->json};
    const char *snap = NULL;
    const char *path = NULL;
    for (int i = 0; i < argc; i++) {
        if (vault_arg(&va, argc, argv, &i)) {
            continue;
        } else if (strcmp(argv[i], "--json") == 0) {
            l.json = true;
        } else if (snap == NULL && argv[i][0] != '-') {
            snap = argv[i];
        } else if (path == NULL && snap != NULL) {
            path = argv[i];
        } else {
            snap = NULL;
            break;
        }
    }
    if (snap == NULL) {
        cli_error("usage: hbc ls [--vault NAME] [--json] SNAP [PATH]");
        return CLI_USAGE;
    }
    hbc_client *h;
    int ex = open_client(c, &va, &h);
    if (ex != 0) {
        return ex;
    }
    l.arr = json_array();
    int rv = hbc_ls(h, snap, path, ls_cb, &l);
    if (rv != 0) {
        cli_error("ls: %s", hbc_client_errmsg(h));
        json_decref(l.arr);
    } else if (l.json) {
        cli_print_json(l.arr);
    } else {
        json_decref(l.arr);
    }
    hbc_client_close(h);
    return exit_for(rv);
}

/* ------------------------------------------------------------------------- */
/* hbc restore                                                               */

struct restore_cb {
    struct progress_line line; /* the live line */
    bool json;                 /* collect errors */
    json_t *errors;            /* [{path, code, error}] */
};

static void restore_progress_cb(void *arg, const struct hbc_progress *p)
{
    struct restore_cb *r = arg;
    progress_line_cb(&r->line, p);
}

static void restore_error_cb(void *arg, const char *path, int code, const char *msg)
{
    struct restore_cb *r = arg;
    if (r->json) {
        json_array_append_new(r->errors, json_pack("{s:o, s:s, s:s}", "path", json_path(path),
                                                   "code", hbc_errname(code), "error", msg));
        return;
    }
    if (r->line.tty) {
        fputs("\r\033[K", stderr);
    }
    fprintf(stderr, "hbc: %s: %s\n", path, msg);
}

static int cmd_restore(struct cli *c, int argc, char **argv)
{
    struct vault_args va = {0};
    struct hbc_restore_options o = {.copy = -1};
    const char **inc = hbc_calloc((size_t)argc + 1, sizeof *inc);
    if (inc == NULL) {
        return CLI_FAILED;
    }
    bool json = c->json;
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];
        if (vault_arg(&va, argc, argv, &i)) {
            continue;
        } else if (strcmp(a, "--json") == 0) {
            json = true;
        } else if (strcmp(a, "--verify") == 0) {
            o.verify = 1;
        } else if (strcmp(a, "--fsync") == 0) {
            o.fsync = 1;
        } else if (strcmp(a, "--no-record") == 0) {
            o.no_record = 1;
        } else if (i + 1 < argc && strcmp(a, "--target") == 0) {
            o.target = argv[++i];
        } else if (i + 1 < argc && strcmp(a, "--include") == 0) {
            inc[o.nincludes++] = argv[++i];
        } else if (i + 1 < argc && strcmp(a, "--copy") == 0) {
            char *end;
            long v = strtol(argv[++i], &end, 10);
            if (*end != '\0' || v < 0 || v > 255) {
                cli_error("--copy wants a copy number (0, 1, ...), not '%s'", argv[i]);
                hbc_free(inc);
                return CLI_USAGE;
            }
            o.copy = (int)v;
        } else if (i + 1 < argc && strcmp(a, "--threads") == 0) {
            o.threads = (unsigned)atoi(argv[++i]);
        } else if (o.snapshot == NULL && a[0] != '-') {
            o.snapshot = a;
        } else {
            cli_error("restore: unexpected '%s' (see hbc --help)", a);
            hbc_free(inc);
            return CLI_USAGE;
        }
    }
    if (o.snapshot == NULL || (o.target == NULL && !o.verify)) {
        cli_error("usage: hbc restore SNAP --target DIR [--include PATTERN]... [--verify]\n"
                  "       hbc restore SNAP --verify [--copy N]   (a restore test)");
        hbc_free(inc);
        return CLI_USAGE;
    }
    if (o.nincludes > 0) {
        o.includes = inc;
    }
    /*
     * A restore allocates and frees a buffer of up to a few MiB per chunk (the plaintext, the
     * packs). glibc would map each one afresh, or trim its heaps after the free, so the kernel
     * faulted in and zeroed every page again: 13% of a restore test's samples. Keep them in
     * the heaps instead; the restore's in-flight budget bounds what is live at once.
     */
    mallopt(M_MMAP_THRESHOLD, 64 << 20);
    mallopt(M_TRIM_THRESHOLD, 256 << 20);
    hbc_client *h;
    int ex = open_client(c, &va, &h);
    if (ex != 0) {
        hbc_free(inc);
        return ex;
    }
    struct restore_cb cb = {.json = json, .errors = json_array()};
    progress_line_init(&cb.line, stderr, o.target != NULL ? "restore" : "restore test");
    o.progress = restore_progress_cb;
    o.error = restore_error_cb;
    o.arg = &cb;
    struct hbc_restore_summary s;
    int rv = hbc_restore(h, &o, &s);
    uint64_t rss = progress_peak_rss_kib();
    double mbs = s.seconds > 0 ? (double)s.chunk_bytes / s.seconds / 1e6 : 0;
    if (rv != 0 && rv != HBC_EPARTIAL) {
        cli_error("restore failed: %s", hbc_client_errmsg(h));
    }
    if (json) {
        json_t *doc = json_pack(
            "{s:s, s:s?, s:b, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:b, s:O, s:f, "
            "s:f, s:I, s:s, s:s?}",
            "snapshot", s.snapshot, "target", o.target, "test", o.target == NULL, "files",
            (json_int_t)s.files, "dirs", (json_int_t)s.dirs, "others", (json_int_t)s.others,
            "bytes", (json_int_t)s.bytes, "chunks", (json_int_t)s.chunks, "chunk_bytes",
            (json_int_t)s.chunk_bytes, "shards_read", (json_int_t)s.shards_read, "shard_errors",
            (json_int_t)s.shard_errors, "verified", (json_int_t)s.verified, "errors",
            (json_int_t)s.errors, "recorded", s.recorded != 0, "failed", cb.errors, "duration_s",
            s.seconds, "mb_s", mbs, "peak_rss_kib", (json_int_t)rss, "result",
            rv == 0 ? "ok" : "failed", "error", rv != 0 ? hbc_client_errmsg(h) : NULL);
        cli_print_json(doc);
    } else {
        char b[32];
        progress_bytes(b, sizeof b, (double)s.bytes);
        if (o.target != NULL) {
            printf("restored snapshot %s into %s: %" PRIu64 " files (%s), %" PRIu64
                   " directories, %" PRIu64 " other entries\n",
                   s.snapshot, o.target, s.files, b, s.dirs, s.others);
            if (o.verify) {
                printf("  verified: %" PRIu64 " files read back, SHA-256 equal\n", s.verified);
            }
        } else {
            printf("restore test of snapshot %s: %s\n", s.snapshot,
                   s.errors == 0 && rv == 0 ? "PASSED" : "FAILED");
            if (o.copy >= 0) {
                printf("  copy %d only\n", o.copy);
            }
            printf("  %" PRIu64 " files (%s) checked, %" PRIu64 " chunks%s\n", s.files, b, s.chunks,
                   s.recorded ? ", result recorded in the cluster" : "");
        }
        printf("  %.1f s, %.1f MB/s, %" PRIu64 " shards read, %" PRIu64
               " bad or missing shards recovered, %" PRIu64 " errors, peak memory %.0f MiB\n",
               s.seconds, mbs, s.shards_read, s.shard_errors, s.errors, (double)rss / 1024);
    }
    json_decref(cb.errors);
    hbc_client_close(h);
    hbc_free(inc);
    return rv == 0 ? CLI_OK : exit_for(rv) == CLI_UNAVAILABLE ? CLI_UNAVAILABLE : CLI_FAILED;
}

int cli_backup(struct cli *c, int argc, char **argv)
{
    return cmd_backup(c, argc, argv);
}

int cli_snapshots(struct cli *c, int argc, char **argv)
{
    return cmd_snapshots(c, argc, argv);
}

int cli_ls(struct cli *c, int argc, char **argv)
{
    return cmd_ls(c, argc, argv);
}

int cli_restore(struct cli *c, int argc, char **argv)
{
    return cmd_restore(c, argc, argv);
}
