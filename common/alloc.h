/* The one allocation wrapper, so that tests can make allocation fail. */
#ifndef HBC_COMMON_ALLOC_H
#define HBC_COMMON_ALLOC_H

#include <stddef.h>

/* Like malloc/calloc/realloc/free; return NULL on failure (never abort). */
void *hbc_malloc(size_t n);
void *hbc_calloc(size_t count, size_t n);
void *hbc_realloc(void *p, size_t n);
void hbc_free(void *p);

/* A NUL-terminated copy of s, or NULL. */
char *hbc_strdup(const char *s);

/*
 * Test hook: after `n` more successful allocations, every further one fails
 * until alloc_fault_reset(). n < 0 disables the fault (the default).
 */
void alloc_fault_after(long n);
void alloc_fault_reset(void);

#endif /* HBC_COMMON_ALLOC_H */
