/* The one allocation wrapper, with fault injection for tests. */
#include "common/alloc.h"

#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

static _Atomic long fault_countdown = -1; /* allocations left before failing; -1 = never */

static int alloc_should_fail(void)
{
    long v = atomic_load_explicit(&fault_countdown, memory_order_relaxed);
    if (v < 0) {
        return 0;
    }
    if (v == 0) {
        return 1;
    }
    atomic_fetch_sub_explicit(&fault_countdown, 1, memory_order_relaxed);
    return 0;
}

void *hbc_malloc(size_t n)
{
    return alloc_should_fail() ? NULL : malloc(n == 0 ? 1 : n);
}

void *hbc_calloc(size_t count, size_t n)
{
    return alloc_should_fail() ? NULL : calloc(count == 0 ? 1 : count, n == 0 ? 1 : n);
}

void *hbc_realloc(void *p, size_t n)
{
    return alloc_should_fail() ? NULL : realloc(p, n == 0 ? 1 : n);
}

void hbc_free(void *p)
{
    free(p);
}

char *hbc_strdup(const char *s)
{
    size_t n = strlen(s) + 1;
    char *d = hbc_malloc(n);
    if (d != NULL) {
        memcpy(d, s, n);
    }
    return d;
}

void alloc_fault_after(long n)
{
    atomic_store(&fault_countdown, n);
}

void alloc_fault_reset(void)
{
    atomic_store(&fault_countdown, -1);
}
