/* Logging to stderr or to a sink set by the application. */
#include "common/log.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

enum log_level log_level_current = LOG_INFO;

static log_sink_fn log_sink;
static void *log_sink_ud;

static const char *const level_names[] = {"debug", "info", "warn", "error", "off"};

void log_set_sink(log_sink_fn sink, void *ud)
{
    log_sink = sink;
    log_sink_ud = ud;
}

void log_init_from_env(void)
{
    const char *v = getenv("HBC_LOG");
    if (v == NULL) {
        return;
    }
    for (int i = LOG_DEBUG; i <= LOG_OFF; i++) {
        if (strcasecmp(v, level_names[i]) == 0) {
            log_level_current = (enum log_level)i;
        }
    }
}

void log_emit(enum log_level level, const char *fmt, ...)
{
    char line[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    if (log_sink != NULL) {
        log_sink(level, line, log_sink_ud);
        return;
    }
    struct timespec ts;
    struct tm tm;
    char when[32];
    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    strftime(when, sizeof when, "%Y-%m-%dT%H:%M:%S", &tm);
    fprintf(stderr, "%s.%03ldZ level=%s %s\n", when, ts.tv_nsec / 1000000, level_names[level],
            line);
}
