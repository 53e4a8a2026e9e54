/* The hbc command's settings: the client config file (inih), the environment, and opening the repo.
 */
#include "client/client_config.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <ini.h>
#include <openssl/crypto.h>

#include "common/alloc.h"

/* What the parse callback needs. */
struct parse {
    struct client_config *c; /* filling */
    const char *dir;         /* the file's directory, for relative paths */
    char why[300];           /* the first error */
    int code;                /* its code */
};

/* path if absolute, else dir/path. */
static char *resolve(const char *dir, const char *value, bool is_path)
{
    if (!is_path || value[0] == '/' || dir[0] == '\0') {
        return hbc_strdup(value);
    }
    size_t n = strlen(dir) + 1 + strlen(value) + 1;
    char *p = hbc_malloc(n);
    if (p != NULL) {
        snprintf(p, n, "%s/%s", dir, value);
    }
    return p;
}

static int on_entry(void *user, const char *section, const char *name, const char *value)
{
    struct parse *p = user;
    struct {
        const char *section; /* section name */
        const char *name;    /* key */
        char **slot;         /* where it goes */
        bool is_path;        /* relative to the file's directory */
    } keys[] = {
        {"cluster", "addresses", &p->c->addresses, false},
        {"cluster", "ca", &p->c->ca, true},
        {"cluster", "cert", &p->c->cert, true},
        {"cluster", "key", &p->c->key, true},
        {"vault", "keyfile", &p->c->keyfile, true},
        {"vault", "name", &p->c->vault, false},
    };
    for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++) {
        if (strcmp(section, keys[i].section) != 0 || strcmp(name, keys[i].name) != 0) {
            continue;
        }
        if (*keys[i].slot != NULL) {
            snprintf(p->why, sizeof p->why, "[%s] %s is given twice", section, name);
            p->code = HBC_ECONFIG;
            return 0;
        }
        if (value[0] == '\0') {
            snprintf(p->why, sizeof p->why, "[%s] %s is empty", section, name);
            p->code = HBC_ECONFIG;
            return 0;
        }
        *keys[i].slot = resolve(p->dir, value, keys[i].is_path);
        if (*keys[i].slot == NULL) {
            p->code = HBC_ENOMEM;
            snprintf(p->why, sizeof p->why, "out of memory");
            return 0;
        }
        return 1;
    }
    snprintf(p->why, sizeof p->why, "unknown setting [%.40s] %.80s", section, name);
    p->code = HBC_ECONFIG;
    return 0;
}

int client_config_load(const char *path, struct client_config *out, struct err *e)
{
    memset(out, 0, sizeof *out);
    FILE *f = fopen(path, "r");
    if (f == NULL) {
        int rv = -errno;
        return err_set(e, rv, "config %s", path);
    }
    char dir[4096];
    snprintf(dir, sizeof dir, "%s", path);
    char *slash = strrchr(dir, '/');
    if (slash != NULL) {
        *slash = '\0';
        if (dir[0] == '\0') {
            snprintf(dir, sizeof dir, "/");
        }
    } else {
        dir[0] = '\0';
    }
    struct parse p = {.c = out, .dir = dir};
    int line = ini_parse_file(f, on_entry, &p);
    fclose(f);
    if (line != 0 || p.code != 0) {
        int code = p.code != 0 ? p.code : HBC_ECONFIG;
        client_config_free(out);
        if (line > 0) {
            return err_setraw(e, code, "config %s, line %d: %s", path, line,
                              p.why[0] != '\0' ? p.why : "not an INI line");
        }
        return err_setraw(e, code, "config %s: %s", path, p.why[0] != '\0' ? p.why : "unreadable");
    }
    out->path = hbc_strdup(path);
    if (out->path == NULL) {
        client_config_free(out);
        return err_set(e, HBC_ENOMEM, "config %s", path);
    }
    return 0;
}

void client_config_free(struct client_config *c)
{
    hbc_free(c->addresses);
    hbc_free(c->ca);
    hbc_free(c->cert);
    hbc_free(c->key);
    hbc_free(c->keyfile);
    hbc_free(c->vault);
    hbc_free(c->path);
    memset(c, 0, sizeof *c);
}

/* The process's settings file, read once by cli_config_apply(). */
static struct client_config settings;

static void settings_free(void)
{
    client_config_free(&settings);
}

/* $XDG_CONFIG_HOME/hbc/NAME or ~/.config/hbc/NAME into buf; false if neither is known. */
static bool config_dir_path(const char *name, char *buf, size_t cap)
{
    const char *xdg = getenv("XDG_CONFIG_HOME");
    const char *home = getenv("HOME");
    int n;
    if (xdg != NULL && xdg[0] == '/') {
        n = snprintf(buf, cap, "%s/hbc/%s", xdg, name);
    } else if (home != NULL && home[0] != '\0') {
        n = snprintf(buf, cap, "%s/.config/hbc/%s", home, name);
    } else {
        return false;
    }
    return n > 0 && (size_t)n < cap;
}

int cli_config_apply(struct cli *c, const char *config_opt)
{
    const char *path = config_opt != NULL ? config_opt : getenv("HBC_CONFIG");
    bool required = path != NULL && path[0] != '\0';
    char def[4096];
    if (!required) {
        if (!config_dir_path("client.conf", def, sizeof def)) {
            return CLI_OK;
        }
        path = def;
    }
    struct err e;
    int rv = client_config_load(path, &settings, &e);
    if (rv == -ENOENT && !required) {
        return CLI_OK;
    }
    if (rv != 0) {
        cli_error("%s", e.msg);
        return CLI_USAGE;
    }
    atexit(settings_free);
    if (c->naddrs == 0 && settings.addresses != NULL) {
        size_t used = 0;
        const char *p = settings.addresses;
        while (*p != '\0') {
            p += strspn(p, " \t,");
            size_t n = strcspn(p, " \t,");
            if (n == 0) {
                break;
            }
            if (c->naddrs == CLI_MAX_ADDRS || used + n + 1 > sizeof c->addr_buf) {
                cli_error("config %s: too many cluster addresses", path);
                return CLI_USAGE;
            }
            memcpy(c->addr_buf + used, p, n);
            c->addr_buf[used + n] = '\0';
            c->addrs[c->naddrs++] = c->addr_buf + used;
            used += n + 1;
            p += n;
        }
    }
    if (c->ca == NULL) {
        c->ca = settings.ca;
    }
    if (c->cert == NULL) {
        c->cert = settings.cert;
    }
    if (c->key == NULL) {
        c->key = settings.key;
    }
    return CLI_OK;
}

const char *cli_keyfile(const char *flag)
{
    if (flag != NULL) {
        return flag;
    }
    const char *env = getenv("HBC_KEYFILE");
    if (env != NULL && env[0] != '\0') {
        return env;
    }
    return settings.keyfile != NULL ? settings.keyfile : cli_default_keyfile();
}

const char *cli_default_keyfile(void)
{
    static char path[4096];
    return config_dir_path("key", path, sizeof path) ? path : NULL;
}

const char *cli_vault_name(const char *flag)
{
    if (flag != NULL) {
        return flag;
    }
    const char *env = getenv("HBC_VAULT");
    if (env != NULL && env[0] != '\0') {
        return env;
    }
    return settings.vault;
}

int cli_exit_code(int code)
{
    switch (code) {
    case 0:
        return CLI_OK;
    case HBC_ECONFIG:
        return CLI_USAGE;
    case HBC_EUNAVAILABLE:
    case HBC_ENOTLEADER:
        return CLI_UNAVAILABLE;
    default:
        return CLI_FAILED;
    }
}

int cli_repo_open(struct cli *c, bool need_key, const char *keyfile, const char *vault,
                  struct repo **out)
{
    *out = NULL;
    if (c->naddrs == 0) {
        cli_error("no cluster address: give --cluster ADDR, HBC_CLUSTER or [cluster] addresses in "
                  "the config file");
        return CLI_USAGE;
    }
    if (c->ca == NULL || c->cert == NULL || c->key == NULL) {
        cli_error("connection settings missing: give --ca, --cert and --key (or HBC_CA, HBC_CERT, "
                  "HBC_KEY, or the config file's [cluster] section)");
        return CLI_USAGE;
    }
    char pass[CLI_PASSPHRASE_MAX + 1];
    size_t pass_len = 0;
    if (need_key) {
        if (keyfile == NULL) {
            cli_error("no key file: give --keyfile FILE, HBC_KEYFILE or [vault] keyfile in the "
                      "config file");
            return CLI_USAGE;
        }
        int rv = cli_passphrase("Passphrase for the key file: ", false, "HBC_PASSPHRASE",
                                "HBC_PASSPHRASE_FILE", pass, sizeof pass, &pass_len);
        if (rv != CLI_OK) {
            return rv;
        }
    }
    struct repo_options o = {
        .addrs = c->addrs,
        .naddrs = (size_t)c->naddrs,
        .ca_file = c->ca,
        .cert_file = c->cert,
        .key_file = c->key,
        .keyfile = need_key ? keyfile : NULL,
        .passphrase = need_key ? pass : NULL,
        .passphrase_len = pass_len,
        .vault = vault,
        .timeout_ms = c->timeout_ms,
    };
    struct err e;
    err_clear(&e);
    int rv = repo_open(&o, out, &e);
    OPENSSL_cleanse(pass, sizeof pass);
    if (rv != 0) {
        cli_error("%s", e.msg);
        return cli_exit_code(rv);
    }
    return CLI_OK;
}
