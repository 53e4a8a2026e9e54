/* hbc key init|passwd: the passphrase-protected key file that holds the KEK, and passphrases. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <termios.h>
#include <unistd.h>

#include <openssl/crypto.h>

#include "client/client_config.h"
#include "common/keys.h"

/* Read one line from the terminal without echo into buf; false if there is no terminal. */
static bool read_tty(const char *prompt, char *buf, size_t cap, size_t *len)
{
    int fd = open("/dev/tty", O_RDWR | O_CLOEXEC);
    if (fd < 0) {
        return false;
    }
    struct termios old, quiet;
    bool restore = tcgetattr(fd, &old) == 0;
    if (restore) {
        quiet = old;
        quiet.c_lflag &= ~(tcflag_t)(ECHO | ECHONL);
        quiet.c_lflag |= ICANON;
        tcsetattr(fd, TCSAFLUSH, &quiet);
    }
    if (write(fd, prompt, strlen(prompt)) < 0) {
        /* Nothing to do: the read below still works. */
    }
    size_t n = 0;
    bool ok = true;
    for (;;) {
        char ch;
        ssize_t r = read(fd, &ch, 1);
        if (r < 0 && errno == EINTR) {
            continue;
        }
        if (r <= 0 || ch == '\n') {
            ok = r > 0 || n > 0;
            break;
        }
        if (n + 1 < cap) {
            buf[n++] = ch;
        }
    }
    buf[n] = '\0';
    *len = n;
    if (restore) {
        tcsetattr(fd, TCSAFLUSH, &old);
    }
    if (write(fd, "\n", 1) < 0) {
        /* As above. */
    }
    close(fd);
    return ok;
}

/* Read the file at path into buf (one trailing newline dropped). */
static int read_pass_file(const char *var, const char *path, char *buf, size_t cap, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (f == NULL) {
        cli_error("%s=%s: %s", var, path, strerror(errno));
        return CLI_USAGE;
    }
    size_t n = fread(buf, 1, cap - 1, f);
    bool more = fgetc(f) != EOF;
    fclose(f);
    if (more) {
        OPENSSL_cleanse(buf, cap);
        cli_error("%s=%s: longer than %d bytes", var, path, CLI_PASSPHRASE_MAX);
        return CLI_USAGE;
    }
    if (n > 0 && buf[n - 1] == '\n') {
        n--;
        if (n > 0 && buf[n - 1] == '\r') {
            n--;
        }
    }
    buf[n] = '\0';
    *len = n;
    return CLI_OK;
}

int cli_passphrase(const char *prompt, bool confirm, const char *env, const char *env_file,
                   char *buf, size_t cap, size_t *len)
{
    const char *v = getenv(env);
    const char *file = getenv(env_file);
    int rv = CLI_OK;
    if (v != NULL) {
        size_t n = strlen(v);
        if (n >= cap) {
            cli_error("%s is longer than %d bytes", env, CLI_PASSPHRASE_MAX);
            return CLI_USAGE;
        }
        memcpy(buf, v, n + 1);
        *len = n;
    } else if (file != NULL && file[0] != '\0') {
        rv = read_pass_file(env_file, file, buf, cap, len);
    } else if (isatty(STDIN_FILENO)) {
        if (!read_tty(prompt, buf, cap, len)) {
            cli_error("no passphrase read from the terminal");
            return CLI_USAGE;
        }
        if (confirm && *len > 0) {
            char again[CLI_PASSPHRASE_MAX + 1];
            size_t again_len = 0;
            bool same = read_tty("Repeat it: ", again, sizeof again, &again_len) &&
                        again_len == *len && CRYPTO_memcmp(again, buf, *len) == 0;
            OPENSSL_cleanse(again, sizeof again);
            if (!same) {
                OPENSSL_cleanse(buf, cap);
                cli_error("the passphrases differ");
                return CLI_USAGE;
            }
        }
    } else {
        cli_error("no passphrase: set %s or %s, or run on a terminal", env, env_file);
        return CLI_USAGE;
    }
    if (rv == CLI_OK && *len == 0) {
        cli_error("an empty passphrase is not accepted");
        rv = CLI_USAGE;
    }
    return rv;
}

/* Create the key file's missing parent directories (mode 0700: they hold a secret). */
static void make_parents(const char *path)
{
    char dir[4096];
    snprintf(dir, sizeof dir, "%s", path);
    for (char *p = dir + 1; *p != '\0'; p++) {
        if (*p == '/') {
            *p = '\0';
            mkdir(dir, 0700); /* EEXIST is fine; other failures show when the file is created */
            *p = '/';
        }
    }
}

static int key_init(struct cli *c, const char *keyfile)
{
    if (keyfile == NULL) {
        keyfile = cli_default_keyfile();
    }
    if (keyfile == NULL) {
        cli_error("no key file named: give --keyfile FILE (or HBC_KEYFILE)");
        return CLI_USAGE;
    }
    if (access(keyfile, F_OK) == 0) {
        cli_error("%s exists: refusing to overwrite a key file (the keys of every vault it opened "
                  "are wrapped by the key inside)",
                  keyfile);
        return CLI_FAILED;
    }
    char pass[CLI_PASSPHRASE_MAX + 1];
    size_t len = 0;
    int rv = cli_passphrase("New passphrase for the key file: ", true, "HBC_PASSPHRASE",
                            "HBC_PASSPHRASE_FILE", pass, sizeof pass, &len);
    if (rv != CLI_OK) {
        return rv;
    }
    make_parents(keyfile);
    struct err e;
    rv = keyfile_create(keyfile, pass, len, NULL, NULL, &e);
    OPENSSL_cleanse(pass, sizeof pass);
    if (rv == HBC_EEXIST) {
        cli_error("%s exists: refusing to overwrite a key file", keyfile);
        return CLI_FAILED;
    }
    if (rv != 0) {
        cli_error("%s", e.msg);
        return CLI_FAILED;
    }
    if (c->json) {
        json_t *o = json_object();
        json_object_set_new(o, "keyfile", json_string(keyfile));
        json_object_set_new(o, "created", json_true());
        cli_print_json(o);
    } else {
        printf("created key file %s\n"
               "Keep a copy of it and its passphrase somewhere safe: without both, no backup made "
               "with it can be read.\n",
               keyfile);
    }
    return CLI_OK;
}

static int key_passwd(struct cli *c, const char *keyfile)
{
    if (keyfile == NULL) {
        keyfile = cli_default_keyfile();
    }
    if (keyfile == NULL) {
        cli_error("no key file named: give --keyfile FILE (or HBC_KEYFILE)");
        return CLI_USAGE;
    }
    char old_pass[CLI_PASSPHRASE_MAX + 1];
    char new_pass[CLI_PASSPHRASE_MAX + 1];
    size_t old_len = 0, new_len = 0;
    int rv = cli_passphrase("Current passphrase: ", false, "HBC_PASSPHRASE", "HBC_PASSPHRASE_FILE",
                            old_pass, sizeof old_pass, &old_len);
    if (rv == CLI_OK) {
        rv = cli_passphrase("New passphrase: ", true, "HBC_NEW_PASSPHRASE",
                            "HBC_NEW_PASSPHRASE_FILE", new_pass, sizeof new_pass, &new_len);
    }
    if (rv != CLI_OK) {
        OPENSSL_cleanse(old_pass, sizeof old_pass);
        return rv;
    }
    struct err e;
    rv = keyfile_change_passphrase(keyfile, old_pass, old_len, new_pass, new_len, NULL, &e);
    OPENSSL_cleanse(old_pass, sizeof old_pass);
    OPENSSL_cleanse(new_pass, sizeof new_pass);
    if (rv != 0) {
        cli_error("%s: %s", keyfile, e.msg);
        return rv == -ENOENT ? CLI_USAGE : CLI_FAILED;
    }
    if (c->json) {
        json_t *o = json_object();
        json_object_set_new(o, "keyfile", json_string(keyfile));
        json_object_set_new(o, "changed", json_true());
        cli_print_json(o);
    } else {
        printf("changed the passphrase of %s (the key inside, and so every vault, is unchanged)\n",
               keyfile);
    }
    return CLI_OK;
}

int cli_key(struct cli *c, int argc, char **argv)
{
    const char *flag = NULL;
    const char *sub = argc >= 1 ? argv[0] : "";
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--keyfile") == 0 && i + 1 < argc) {
            flag = argv[++i];
        } else {
            cli_error("unknown argument '%s' (usage: hbc key init|passwd [--keyfile FILE])",
                      argv[i]);
            return CLI_USAGE;
        }
    }
    if (strcmp(sub, "init") == 0) {
        return key_init(c, cli_keyfile(flag));
    }
    if (strcmp(sub, "passwd") == 0) {
        return key_passwd(c, cli_keyfile(flag));
    }
    cli_error("usage: hbc key init [--keyfile FILE] | hbc key passwd [--keyfile FILE]");
    return CLI_USAGE;
}
