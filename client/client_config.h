/* The hbc command's settings: the client config file, environment variables, and how they combine.
 */
#ifndef HBC_CLIENT_CLIENT_CONFIG_H
#define HBC_CLIENT_CLIENT_CONFIG_H

#include <stdbool.h>
#include <stddef.h>

#include "client/cli.h"
#include "client/repo.h"
#include "common/err.h"

/*
 * The client config file is a small INI file (docs/cli.md):
 *
 *     [cluster]
 *     addresses = 10.0.0.1:7400, 10.0.0.2:7400
 *     ca = pki/ca.crt
 *     cert = pki/alice.crt
 *     key = pki/alice.key
 *     [vault]
 *     keyfile = keys/records.key
 *     name = records
 *
 * Relative paths are taken from the file's own directory. Unknown sections
 * or keys are errors (a typo must not silently drop a setting).
 *
 * Where it is read from: --config FILE, else HBC_CONFIG, else
 * $XDG_CONFIG_HOME/hbc/client.conf (~/.config/hbc/client.conf); the default
 * file may be missing, a named one may not.
 *
 * Precedence, highest first: command-line options, environment variables
 * (HBC_CLUSTER, HBC_CA, HBC_CERT, HBC_KEY, HBC_KEYFILE, HBC_VAULT), the file.
 * Passphrases never come from the file: HBC_PASSPHRASE, HBC_PASSPHRASE_FILE
 * or a prompt on the terminal.
 */

/* The settings of one file; every string owned (NULL when not set). */
struct client_config {
    char *addresses; /* [cluster] addresses: comma-separated data-plane addresses */
    char *ca;        /* [cluster] ca: the cluster CA certificate */
    char *cert;      /* [cluster] cert: the user's client certificate */
    char *key;       /* [cluster] key: its private key */
    char *keyfile;   /* [vault] keyfile: the KEK key file */
    char *vault;     /* [vault] name: the default vault */
    char *path;      /* the file read */
};

/*
 * Read the file at path (borrowed) into *out (zeroed first). Returns 0,
 * -errno when it cannot be read (-ENOENT when missing), HBC_ECONFIG with the
 * line and reason for a syntax error, an unknown section or key, or a value
 * given twice; HBC_ENOMEM.
 */
int client_config_load(const char *path, struct client_config *out, struct err *e);

/* Free c's strings and zero it. */
void client_config_free(struct client_config *c);

/*
 * Find and read the config file (config_opt is --config's value or NULL),
 * then fill whatever c's command line and environment left unset: cluster
 * addresses, CA, certificate, key. Prints the reason and returns CLI_USAGE
 * on a bad file, else CLI_OK. The file's [vault] settings are kept for
 * cli_keyfile() and cli_vault_name(). Call once, before any subcommand.
 */
int cli_config_apply(struct cli *c, const char *config_opt);

/*
 * The key file to use: flag (--keyfile), else HBC_KEYFILE, else [vault]
 * keyfile, else cli_default_keyfile() (NULL only when no home is known).
 */
const char *cli_keyfile(const char *flag);

/* The key file `hbc key init` creates when none is named: $XDG_CONFIG_HOME/hbc/key (or ~/.config).
 */
const char *cli_default_keyfile(void);

/* The vault to use: flag, else HBC_VAULT, else [vault] name, else NULL. */
const char *cli_vault_name(const char *flag);

/*
 * Get a passphrase into buf (cap bytes, NUL-terminated; *len without the
 * NUL): from the environment variable env, else from the file named by
 * env_file (one trailing newline dropped), else, when stdin is a terminal,
 * by prompting on /dev/tty without echo (twice when confirm, which must
 * match). Prints why and returns CLI_USAGE if none can be had or the two
 * differ; CLI_OK otherwise. Empty passphrases are refused. Wipe buf after use.
 */
int cli_passphrase(const char *prompt, bool confirm, const char *env, const char *env_file,
                   char *buf, size_t cap, size_t *len);

/* Largest passphrase accepted, in bytes. */
#define CLI_PASSPHRASE_MAX 1024

/*
 * Open the repo with the connection settings, and, when need_key, the key
 * file and its passphrase (HBC_PASSPHRASE...), and vault (NULL: none).
 * Prints why it failed and returns the exit code (CLI_USAGE for missing
 * settings, CLI_UNAVAILABLE when no node answered, CLI_FAILED otherwise),
 * or CLI_OK with *out set.
 */
int cli_repo_open(struct cli *c, bool need_key, const char *keyfile, const char *vault,
                  struct repo **out);

/* The exit code for an error code: usage, unavailable or failed. */
int cli_exit_code(int code);

/* hbc key init|passwd and hbc vault create|list (argv starts at the subcommand's arguments). */
int cli_key(struct cli *c, int argc, char **argv);
int cli_vault(struct cli *c, int argc, char **argv);

#endif /* HBC_CLIENT_CLIENT_CONFIG_H */
