/* The hbc command's live progress line (bytes, files, rate, ETA) and its figures. */
#ifndef HBC_CLIENT_PROGRESS_H
#define HBC_CLIENT_PROGRESS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include <hbc/hbc.h>

/*
 * One line on stderr, rewritten in place ("\r...\033[K") while a backup or
 * restore runs, and ended with a newline by the last update. Shown only
 * when the stream is a terminal: when piped, nothing is written, so logs
 * and JSON consumers never see it.
 */
struct progress_line {
    FILE *f;          /* where it goes (borrowed) */
    bool tty;         /* f is a terminal: draw; else stay silent */
    const char *verb; /* "backup", "restore", ... (borrowed) */
};

/* Set pl up for f and verb; tty is isatty(fileno(f)). */
void progress_line_init(struct progress_line *pl, FILE *f, const char *verb);

/* An hbc_progress_cb: arg is a struct progress_line. */
void progress_line_cb(void *arg, const struct hbc_progress *p);

/*
 * Format the line for p into buf (cap bytes, NUL-terminated, truncated if
 * need be): "backup 1.2 GiB / 3.4 GiB, 120 files, 85.3 MiB/s, ETA 0:25".
 * Returns the length written.
 */
size_t progress_format(char *buf, size_t cap, const char *verb, const struct hbc_progress *p);

/* Write n bytes as "512 B", "1.5 KiB", ... "2.0 TiB" into buf. */
void progress_bytes(char *buf, size_t cap, double n);

/* This process's peak resident memory (VmHWM) in KiB, or 0 if unknown. */
uint64_t progress_peak_rss_kib(void);

#endif /* HBC_CLIENT_PROGRESS_H */
