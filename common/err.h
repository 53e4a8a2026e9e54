/* Error values with a context message that each layer wraps. */
#ifndef HBC_COMMON_ERR_H
#define HBC_COMMON_ERR_H

#include <stddef.h>

#include <hbc/error.h>

/* An error code and the message that explains it ("open object: header: truncated"). */
struct err {
    int code;      /* 0, -errno or HBC_E* */
    char msg[512]; /* NUL-terminated context, outermost layer first */
};

/*
 * Record code with a printf-style message in e (which may be NULL) and
 * return code, so that callers can write `return err_set(e, HBC_EFORMAT, ...)`.
 * The text of hbc_strerror(code) is appended after the message.
 */
int err_set(struct err *e, int code, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

/* Like err_set() without the strerror suffix: the message says everything. */
int err_setraw(struct err *e, int code, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

/*
 * Prefix e's message with "context: " and return e->code. e may be NULL
 * (returns 0), so never write `return err_wrap(e, ...)` on a failure path:
 * use err_wrap_code(), which returns the failing code whatever e is.
 */
int err_wrap(struct err *e, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Prefix e's message (if e) with "context: " and return code. */
int err_wrap_code(struct err *e, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/*
 * Take the OpenSSL error queue into e (code HBC_ECRYPTO unless code is
 * nonzero), clearing the queue. Returns the code.
 */
int err_openssl(struct err *e, int code, const char *what);

/* Reset e to "no error". */
void err_clear(struct err *e);

#endif /* HBC_COMMON_ERR_H */
