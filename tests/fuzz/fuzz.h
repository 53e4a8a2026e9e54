/* Helpers shared by the libFuzzer targets: a crash with a message when an invariant breaks. */
#ifndef HBC_TESTS_FUZZ_FUZZ_H
#define HBC_TESTS_FUZZ_FUZZ_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/err.h"

/*
 * Stop the run, so that libFuzzer saves the input, when cond is false. A
 * plain assert() would vanish under -DNDEBUG; this never does.
 */
#define FUZZ_CHECK(cond)                                                                           \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "fuzz invariant failed at %s:%d: %s\n", __FILE__, __LINE__, #cond);    \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

/* A failed call must leave a negative code and a terminated message naming the failure. */
static inline void fuzz_check_error(int rc, const struct err *e)
{
    FUZZ_CHECK(rc < 0);
    FUZZ_CHECK(e->code == rc);
    FUZZ_CHECK(memchr(e->msg, '\0', sizeof e->msg) != NULL);
    FUZZ_CHECK(e->msg[0] != '\0');
}

#endif /* HBC_TESTS_FUZZ_FUZZ_H */
