/* Error table, messages and wrapping. */
#include "common/err.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include <openssl/err.h>

#include <hbc/hbc.h>

const char *hbc_strerror(int code)
{
    switch (code) {
    case 0:
        return "success";
#define HBC_ERROR_TEXT_(name, value, text)                                                         \
    case (value):                                                                                  \
        return (text);
        HBC_ERRNO_MAP(HBC_ERROR_TEXT_)
#undef HBC_ERROR_TEXT_
    default:
        if (code < 0 && code > -4000) {
            return strerror(-code);
        }
        return "unknown error";
    }
}

const char *hbc_errname(int code)
{
    switch (code) {
    case 0:
        return "OK";
#define HBC_ERROR_NAME_(name, value, text)                                                         \
    case (value):                                                                                  \
        return "HBC_E" #name;
        HBC_ERRNO_MAP(HBC_ERROR_NAME_)
#undef HBC_ERROR_NAME_
    default:
        if (code < 0 && code > -4000) {
            const char *n = strerrorname_np(-code);
            return n != NULL ? n : "ERRNO";
        }
        return "UNKNOWN";
    }
}

const char *hbc_version(void)
{
    return HBC_VERSION;
}

static int err_vset(struct err *e, int code, int suffix, const char *fmt, va_list ap)
{
    if (e == NULL) {
        return code;
    }
    e->code = code;
    int n = vsnprintf(e->msg, sizeof e->msg, fmt, ap);
    if (suffix && n >= 0 && (size_t)n < sizeof e->msg) {
        snprintf(e->msg + n, sizeof e->msg - (size_t)n, ": %s", hbc_strerror(code));
    }
    return code;
}

int err_set(struct err *e, int code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    err_vset(e, code, 1, fmt, ap);
    va_end(ap);
    return code;
}

int err_setraw(struct err *e, int code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    err_vset(e, code, 0, fmt, ap);
    va_end(ap);
    return code;
}

#define WRAP_PREFIX_MAX 256 /* bytes of a context prefix, its NUL included */

/* err_wrap() and err_wrap_code(): put prefix in front of e's message. */
static void wrap(struct err *e, const char *prefix)
{
    char old[sizeof e->msg];
    memcpy(old, e->msg, sizeof old);
    /* Keep as much of both as fits; truncation of a long chain is acceptable. */
    size_t p = strnlen(prefix, WRAP_PREFIX_MAX - 1);
    if (p + 2 >= sizeof e->msg) {
        p = sizeof e->msg - 3;
    }
    memcpy(e->msg, prefix, p);
    memcpy(e->msg + p, ": ", 2);
    size_t room = sizeof e->msg - p - 2 - 1;
    size_t o = strnlen(old, room);
    memcpy(e->msg + p + 2, old, o);
    e->msg[p + 2 + o] = '\0';
}

/* wrap() with the prefix formatted from fmt and ap. */
static void __attribute__((format(printf, 2, 0))) vwrap(struct err *e, const char *fmt, va_list ap)
{
    char prefix[WRAP_PREFIX_MAX];
    vsnprintf(prefix, sizeof prefix, fmt, ap);
    wrap(e, prefix);
}

int err_wrap(struct err *e, const char *fmt, ...)
{
    if (e == NULL) {
        return 0;
    }
    va_list ap;
    va_start(ap, fmt);
    vwrap(e, fmt, ap);
    va_end(ap);
    return e->code;
}

int err_wrap_code(struct err *e, int code, const char *fmt, ...)
{
    if (e != NULL) {
        va_list ap;
        va_start(ap, fmt);
        vwrap(e, fmt, ap);
        va_end(ap);
    }
    return code;
}

int err_openssl(struct err *e, int code, const char *what)
{
    char buf[256] = "no detail";
    unsigned long l = ERR_get_error();
    if (l != 0) {
        ERR_error_string_n(l, buf, sizeof buf);
    }
    ERR_clear_error();
    return err_setraw(e, code != 0 ? code : HBC_ECRYPTO, "%s: %s", what, buf);
}

void err_clear(struct err *e)
{
    if (e != NULL) {
        e->code = 0;
        e->msg[0] = '\0';
    }
}
