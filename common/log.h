/* Logging: one line per event with key=value fields. */
#ifndef HBC_COMMON_LOG_H
#define HBC_COMMON_LOG_H

enum log_level { LOG_DEBUG = 0, LOG_INFO = 1, LOG_WARN = 2, LOG_ERROR = 3, LOG_OFF = 4 };

/* The current level; messages below it are dropped before formatting. */
extern enum log_level log_level_current;

/*
 * Where lines go. The default sink writes to stderr with a timestamp; libhbc
 * sets its own (the application's callback) and never writes to stderr itself.
 */
typedef void (*log_sink_fn)(enum log_level level, const char *line, void *ud);
void log_set_sink(log_sink_fn sink, void *ud);

/* Read the level from the HBC_LOG environment variable (debug, info, warn, error, off). */
void log_init_from_env(void);

void log_emit(enum log_level level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#define hbc_log(level, ...)                                                                        \
    do {                                                                                           \
        if ((level) >= log_level_current) {                                                        \
            log_emit((level), __VA_ARGS__);                                                        \
        }                                                                                          \
    } while (0)

#endif /* HBC_COMMON_LOG_H */
