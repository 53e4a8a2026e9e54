/* libFuzzer target: node_config_load() on any file content (an operator's typo, a damaged disk). */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "node/config.h"
#include "fuzz.h"

/* One temporary file per process, rewritten for every input and removed at exit. */
static char path[64];
static int fd = -1;

static void remove_file(void)
{
    if (fd >= 0) {
        close(fd);
        unlink(path);
    }
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    const char *dir = getenv("TMPDIR");
    snprintf(path, sizeof path, "%s/hbc-fuzz-config-XXXXXX", dir != NULL ? dir : "/tmp");
    fd = mkstemp(path);
    FUZZ_CHECK(fd >= 0);
    atexit(remove_file);
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    FUZZ_CHECK(ftruncate(fd, 0) == 0);
    FUZZ_CHECK(pwrite(fd, data, size, 0) == (ssize_t)size);

    struct node_config cfg;
    struct err e;
    err_clear(&e);
    int rc = node_config_load(&cfg, path, &e);
    if (rc != 0) {
        fuzz_check_error(rc, &e);
        /* Every failure names the file, so the operator knows which one. */
        FUZZ_CHECK(strstr(e.msg, path) != NULL);
        return 0;
    }
    /* Required keys are there and the documented cross-check holds. */
    FUZZ_CHECK(cfg.node_id != NULL && cfg.data_dir != NULL && cfg.listen != NULL);
    FUZZ_CHECK(cfg.tls_ca != NULL && cfg.tls_cert != NULL && cfg.tls_key != NULL);
    FUZZ_CHECK(cfg.max_shard + 4096 <= cfg.max_frame);
    node_config_free(&cfg);
    return 0;
}
