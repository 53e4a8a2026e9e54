/* The hbc command's live progress line (bytes, files, rate, ETA) and its figures. */
#include "client/progress.h"

#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

void progress_line_init(struct progress_line *pl, FILE *f, const char *verb)
{
    pl->f = f;
    pl->tty = isatty(fileno(f)) == 1;
    pl->verb = verb;
}

void progress_bytes(char *buf, size_t cap, double n)
{
    static const char *units[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB"};
    size_t u = 0;
    while (n >= 1024 && u + 1 < sizeof units / sizeof *units) {
        n /= 1024;
        u++;
    }
    if (u == 0) {
        snprintf(buf, cap, "%.0f B", n);
    } else {
        snprintf(buf, cap, "%.1f %s", n, units[u]);
    }
}

size_t progress_format(char *buf, size_t cap, const char *verb, const struct hbc_progress *p)
{
    char done[32];
    char total[32];
    char rate[32];
    progress_bytes(done, sizeof done, (double)p->bytes);
    progress_bytes(total, sizeof total, (double)p->bytes_total);
    progress_bytes(rate, sizeof rate, p->rate);
    char eta[32] = "";
    if (p->eta >= 0) {
        uint64_t s = (uint64_t)(p->eta + 0.5);
        if (s >= 3600) {
            snprintf(eta, sizeof eta, ", ETA %" PRIu64 ":%02u:%02u", s / 3600,
                     (unsigned)(s / 60 % 60), (unsigned)(s % 60));
        } else {
            snprintf(eta, sizeof eta, ", ETA %u:%02u", (unsigned)(s / 60), (unsigned)(s % 60));
        }
    }
    int n;
    if (p->bytes_total > 0) {
        n = snprintf(buf, cap, "%s %s / %s%s, %" PRIu64 " files, %s/s%s", verb, done, total,
                     p->totals_final ? "" : "+", p->files, rate, eta);
    } else {
        n = snprintf(buf, cap, "%s %s, %" PRIu64 " files, %s/s", verb, done, p->files, rate);
    }
    if (n < 0) {
        buf[0] = '\0';
        return 0;
    }
    return (size_t)n < cap ? (size_t)n : cap - 1;
}

void progress_line_cb(void *arg, const struct hbc_progress *p)
{
    struct progress_line *pl = arg;
    if (!pl->tty) {
        return;
    }
    char line[256];
    progress_format(line, sizeof line, pl->verb, p);
    fprintf(pl->f, "\r%s\033[K%s", line, p->done ? "\n" : "");
    fflush(pl->f);
}

uint64_t progress_peak_rss_kib(void)
{
    FILE *f = fopen("/proc/self/status", "r");
    if (f == NULL) {
        return 0;
    }
    char line[256];
    uint64_t kib = 0;
    while (fgets(line, sizeof line, f) != NULL) {
        if (strncmp(line, "VmHWM:", 6) == 0) {
            kib = strtoull(line + 6, NULL, 10);
            break;
        }
    }
    fclose(f);
    return kib;
}
