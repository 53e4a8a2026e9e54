/*
 * hbc-hostile-tree: commits a crafted snapshot whose tree tries to make a restore write outside
 * its target ("..", names with '/', absolute names, hard links and directories through
 * symlinks), for the cluster tests (test_backup_edges.py). The trees are packed by hand
 * (tree_builder refuses such names), sealed and stored like any tree, and the snapshot is
 * committed through Raft, so hbc sees a snapshot like any other.
 *
 *   hbc-hostile-tree CASE OUTSIDE_DIR
 *
 * Settings come from the environment, as for hbc: HBC_CLUSTER (comma-separated), HBC_CA,
 * HBC_CERT, HBC_KEY, HBC_KEYFILE, HBC_PASSPHRASE, HBC_VAULT. OUTSIDE_DIR is an absolute
 * directory the restore must never write to. CASE is one of:
 *   dotdot-dir     a directory named ".." holding a file
 *   dotdot-name    a file named "../escape-dotdot-name"
 *   absolute       a file named OUTSIDE_DIR/escape-absolute
 *   link-via-link  a symlink "evil" -> OUTSIDE_DIR and a hard link "h" to "evil/secret"
 *   link-dotdot    a hard link "h" to "../secret"
 *   symlink        a symlink "a" -> OUTSIDE_DIR (restore it first, then dir-a)
 *   dir-a          a directory "a" holding a file "escape-through-link"
 * Every case also holds a harmless file "ok". Prints {"snapshot": "<32 hex>"}; exit 0, or 1
 * with the error on stderr.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "client/repo.h"
#include "client/snapshot_io.h"
#include "client/tree.h"
#include "common/alloc.h"
#include "common/crypto.h"

#define MAX_IDS 16

/* What one snapshot under construction has stored so far. */
struct hostile {
    struct repo *r;                    /* the open vault */
    uint8_t ids[MAX_IDS][TREE_ID_LEN]; /* every object stored (the reference list) */
    size_t nids;                       /* how many */
    uint64_t files;                    /* file entries written */
    uint64_t bytes;                    /* their bytes */
};

/* Store plain as one chunk object; its id in id. */
static int store(struct hostile *h, const void *plain, size_t len, uint8_t id[TREE_ID_LEN],
                 struct err *e)
{
    int rv = repo_chunk_id(h->r, plain, len, id, e);
    if (rv == 0) {
        rv = repo_put_chunk(h->r, id, plain, len, e);
    }
    if (rv == 0 && h->nids < MAX_IDS) {
        memcpy(h->ids[h->nids++], id, TREE_ID_LEN);
    }
    return rv;
}

/* An entry of the given type and name with the fields every entry needs. */
static void entry_init(Hbc__TreeEntry *en, const char *name, Hbc__TreeEntryType type, uint32_t mode)
{
    hbc__tree_entry__init(en);
    en->name.data = (uint8_t *)name;
    en->name.len = strlen(name);
    en->type = type;
    en->mode = mode;
    en->mtime_ns = 1700000000000000000LL;
    en->ctime_ns = en->mtime_ns;
    en->inode = 1;
    en->device = 1;
}

/* Fill en as a file holding text: stores its one chunk. */
static int file_entry(struct hostile *h, Hbc__TreeEntry *en, Hbc__ChunkRef *ref,
                      Hbc__ChunkRef **refs, uint8_t id[TREE_ID_LEN], uint8_t sha[TREE_ID_LEN],
                      const char *name, const char *text, struct err *e)
{
    size_t len = strlen(text);
    entry_init(en, name, HBC__TREE_ENTRY_TYPE__TREE_ENTRY_FILE, 0644);
    int rv = store(h, text, len, id, e);
    if (rv == 0) {
        rv = crypto_sha256(text, len, sha, e);
    }
    hbc__chunk_ref__init(ref);
    ref->id.data = id;
    ref->id.len = TREE_ID_LEN;
    ref->length = (uint32_t)len;
    refs[0] = ref;
    en->n_chunks = 1;
    en->chunks = refs;
    en->size = len;
    en->has_sha256 = true;
    en->sha256.data = sha;
    en->sha256.len = TREE_ID_LEN;
    h->files++;
    h->bytes += len;
    return rv;
}

/* Pack a tree of n entries (already in bytewise name order) and store it; its id in id. */
static int tree_store(struct hostile *h, Hbc__TreeEntry **entries, size_t n,
                      uint8_t id[TREE_ID_LEN], struct err *e)
{
    Hbc__Tree t = HBC__TREE__INIT;
    t.version = TREE_VERSION;
    t.n_entries = n;
    t.entries = entries;
    size_t len = hbc__tree__get_packed_size(&t);
    uint8_t *buf = hbc_malloc(len);
    if (buf == NULL) {
        return err_set(e, HBC_ENOMEM, "tree of %zu bytes", len);
    }
    hbc__tree__pack(&t, buf);
    int rv = store(h, buf, len, id, e);
    hbc_free(buf);
    return rv;
}

static int cmp_id(const void *a, const void *b)
{
    return memcmp(a, b, TREE_ID_LEN);
}

/* Build the case's root tree (entries named by the case, plus "ok") and store it. */
static int build(struct hostile *h, const char *kase, const char *outside,
                 uint8_t root[TREE_ID_LEN], struct err *e)
{
    static Hbc__TreeEntry ens[4], sub_en;
    static Hbc__ChunkRef refs[4], *refp[4][1];
    static uint8_t ids[4][TREE_ID_LEN], shas[4][TREE_ID_LEN], sub_id[TREE_ID_LEN];
    static char absname[4096], secret_path[4096];
    Hbc__TreeEntry *list[4];
    size_t n = 0;
    int rv = 0;
    if (strcmp(kase, "dotdot-dir") == 0) {
        Hbc__TreeEntry *sl[1] = {&sub_en};
        rv = file_entry(h, &sub_en, &refs[3], refp[3], ids[3], shas[3], "escape-dotdot-dir",
                        "written through a directory named ..\n", e);
        if (rv == 0) {
            rv = tree_store(h, sl, 1, sub_id, e);
        }
        entry_init(&ens[n], "..", HBC__TREE_ENTRY_TYPE__TREE_ENTRY_DIR, 0755);
        ens[n].has_subtree = true;
        ens[n].subtree.data = sub_id;
        ens[n].subtree.len = TREE_ID_LEN;
        list[n] = &ens[n];
        n++;
    } else if (strcmp(kase, "dotdot-name") == 0) {
        rv = file_entry(h, &ens[n], &refs[n], refp[n], ids[n], shas[n], "../escape-dotdot-name",
                        "written through a name with ../\n", e);
        list[n] = &ens[n];
        n++;
    } else if (strcmp(kase, "absolute") == 0) {
        snprintf(absname, sizeof absname, "%s/escape-absolute", outside);
        rv = file_entry(h, &ens[n], &refs[n], refp[n], ids[n], shas[n], absname,
                        "written through an absolute name\n", e);
        list[n] = &ens[n];
        n++;
    } else if (strcmp(kase, "link-via-link") == 0) {
        entry_init(&ens[n], "evil", HBC__TREE_ENTRY_TYPE__TREE_ENTRY_SYMLINK, 0777);
        ens[n].has_symlink_target = true;
        ens[n].symlink_target.data = (uint8_t *)outside;
        ens[n].symlink_target.len = strlen(outside);
        list[n] = &ens[n];
        n++;
        snprintf(secret_path, sizeof secret_path, "evil/secret");
        entry_init(&ens[n], "h", HBC__TREE_ENTRY_TYPE__TREE_ENTRY_HARDLINK, 0644);
        ens[n].has_hardlink_path = true;
        ens[n].hardlink_path.data = (uint8_t *)secret_path;
        ens[n].hardlink_path.len = strlen(secret_path);
        list[n] = &ens[n];
        n++;
    } else if (strcmp(kase, "link-dotdot") == 0) {
        snprintf(secret_path, sizeof secret_path, "../secret");
        entry_init(&ens[n], "h", HBC__TREE_ENTRY_TYPE__TREE_ENTRY_HARDLINK, 0644);
        ens[n].has_hardlink_path = true;
        ens[n].hardlink_path.data = (uint8_t *)secret_path;
        ens[n].hardlink_path.len = strlen(secret_path);
        list[n] = &ens[n];
        n++;
    } else if (strcmp(kase, "symlink") == 0) {
        entry_init(&ens[n], "a", HBC__TREE_ENTRY_TYPE__TREE_ENTRY_SYMLINK, 0777);
        ens[n].has_symlink_target = true;
        ens[n].symlink_target.data = (uint8_t *)outside;
        ens[n].symlink_target.len = strlen(outside);
        list[n] = &ens[n];
        n++;
    } else if (strcmp(kase, "dir-a") == 0) {
        Hbc__TreeEntry *sl[1] = {&sub_en};
        rv = file_entry(h, &sub_en, &refs[3], refp[3], ids[3], shas[3], "escape-through-link",
                        "written through a symlink\n", e);
        if (rv == 0) {
            rv = tree_store(h, sl, 1, sub_id, e);
        }
        entry_init(&ens[n], "a", HBC__TREE_ENTRY_TYPE__TREE_ENTRY_DIR, 0755);
        ens[n].has_subtree = true;
        ens[n].subtree.data = sub_id;
        ens[n].subtree.len = TREE_ID_LEN;
        list[n] = &ens[n];
        n++;
    } else {
        return err_set(e, HBC_EINVAL, "unknown case '%s'", kase);
    }
    if (rv == 0) {
        /* "ok" sorts after every name above ('.', '/', 'a', 'e', 'h' < 'o'). */
        rv = file_entry(h, &ens[n], &refs[n], refp[n], ids[n], shas[n], "ok", "harmless\n", e);
        list[n] = &ens[n];
        n++;
    }
    if (rv == 0) {
        rv = tree_store(h, list, n, root, e);
    }
    return rv;
}

int main(int argc, char **argv)
{
    if (argc != 3 || argv[2][0] != '/') {
        fprintf(stderr, "usage: hbc-hostile-tree CASE /OUTSIDE_DIR (settings from HBC_*)\n");
        return 2;
    }
    const char *need[] = {"HBC_CLUSTER", "HBC_CA",         "HBC_CERT", "HBC_KEY",
                          "HBC_KEYFILE", "HBC_PASSPHRASE", "HBC_VAULT"};
    for (size_t i = 0; i < sizeof need / sizeof need[0]; i++) {
        if (getenv(need[i]) == NULL) {
            fprintf(stderr, "hbc-hostile-tree: %s is not set\n", need[i]);
            return 2;
        }
    }
    char *cluster = hbc_strdup(getenv("HBC_CLUSTER"));
    const char *addrs[64];
    size_t naddrs = 0;
    for (char *save = NULL, *tok = strtok_r(cluster, ",", &save); tok != NULL && naddrs < 64;
         tok = strtok_r(NULL, ",", &save)) {
        addrs[naddrs++] = tok;
    }
    const char *pass = getenv("HBC_PASSPHRASE");
    struct repo_options o = {.addrs = addrs,
                             .naddrs = naddrs,
                             .ca_file = getenv("HBC_CA"),
                             .cert_file = getenv("HBC_CERT"),
                             .key_file = getenv("HBC_KEY"),
                             .keyfile = getenv("HBC_KEYFILE"),
                             .passphrase = pass,
                             .passphrase_len = strlen(pass),
                             .vault = getenv("HBC_VAULT"),
                             .timeout_ms = 20000};
    struct err e = {0};
    struct hostile h = {0};
    uint8_t root[TREE_ID_LEN], ref_id[TREE_ID_LEN], snap_id[REPO_ID_LEN];
    int rv = repo_open(&o, &h.r, &e);
    if (rv == 0) {
        rv = build(&h, argv[1], argv[2], root, &e);
    }
    if (rv == 0) {
        /* The reference list: every object, sorted and unique. */
        qsort(h.ids, h.nids, TREE_ID_LEN, cmp_id);
        size_t u = 0;
        for (size_t i = 0; i < h.nids; i++) {
            if (u == 0 || memcmp(h.ids[u - 1], h.ids[i], TREE_ID_LEN) != 0) {
                memmove(h.ids[u++], h.ids[i], TREE_ID_LEN);
            }
        }
        h.nids = u;
        rv = snap_reflist_store(h.r, (const uint8_t(*)[TREE_ID_LEN])h.ids, h.nids, ref_id, &e);
    }
    if (rv == 0) {
        rv = crypto_random(snap_id, REPO_ID_LEN, &e);
    }
    if (rv == 0) {
        Hbc__SnapshotCommit sc = HBC__SNAPSHOT_COMMIT__INIT;
        sc.snapshot_id.data = snap_id;
        sc.snapshot_id.len = REPO_ID_LEN;
        sc.vault_id.data = (uint8_t *)repo_vault_id(h.r);
        sc.vault_id.len = REPO_ID_LEN;
        sc.time_ms = (uint64_t)time(NULL) * 1000;
        sc.root_tree_id.data = root;
        sc.root_tree_id.len = TREE_ID_LEN;
        sc.ref_list_id.data = ref_id;
        sc.ref_list_id.len = TREE_ID_LEN;
        sc.files = h.files;
        sc.bytes = h.bytes;
        sc.chunks = h.nids;
        uint64_t index = 0;
        rv = repo_snapshot_commit(h.r, &sc, &index, &e);
    }
    repo_close(h.r);
    hbc_free(cluster);
    if (rv != 0) {
        fprintf(stderr, "hbc-hostile-tree: %s\n", e.msg);
        return 1;
    }
    printf("{\"snapshot\": \"");
    for (size_t i = 0; i < REPO_ID_LEN; i++) {
        printf("%02x", snap_id[i]);
    }
    printf("\"}\n");
    return 0;
}
