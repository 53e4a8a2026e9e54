/* Helpers shared by unit tests: shell commands (scripts/dev-ca) and log capture. */
#ifndef HBC_TESTS_UNIT_TEST_UTIL_H
#define HBC_TESTS_UNIT_TEST_UTIL_H

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "common/log.h"

/* Run a shell command built from fmt; fail the test if it does not exit 0. */
static void sh(const char *fmt, ...) __attribute__((format(printf, 1, 2), unused));
static void sh(const char *fmt, ...)
{
    char cmd[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(cmd, sizeof cmd, fmt, ap);
    va_end(ap);
    int rc = system(cmd);
    if (rc != 0) {
        fail_msg("command failed (%d): %s", rc, cmd);
    }
}

static char log_lines[1 << 18]; /* recent log lines, newline-separated */
static size_t log_len;          /* bytes used in log_lines */

/* A log sink (log_set_sink) keeping recent lines for assertions; HBC_TEST_VERBOSE echoes them. */
static void __attribute__((unused)) log_capture(enum log_level level, const char *line, void *ud)
{
    (void)level;
    (void)ud;
    size_t n = strlen(line);
    if (log_len + n + 2 > sizeof log_lines) {
        log_len = 0;
    }
    memcpy(log_lines + log_len, line, n);
    log_len += n;
    log_lines[log_len++] = '\n';
    log_lines[log_len] = '\0';
    if (getenv("HBC_TEST_VERBOSE") != NULL) {
        fprintf(stderr, "log: %s\n", line);
    }
}

/* Forget the captured lines. */
static void __attribute__((unused)) log_clear(void)
{
    log_len = 0;
    log_lines[0] = '\0';
}

#endif /* HBC_TESTS_UNIT_TEST_UTIL_H */
