/* TEST FAKE: an in-memory client/repo.h for the backup and restore unit tests (never linked into
 * hbc). */
#ifndef HBC_TESTS_REPO_FAKE_H
#define HBC_TESTS_REPO_FAKE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Counters of calls into the fake since the last reset. */
struct repo_fake_stats {
    uint64_t puts;             /* repo_put_chunk calls */
    uint64_t put_bytes;        /* their bytes */
    uint64_t gets;             /* repo_get_chunk calls */
    uint64_t batched_gets;     /* repo_get_chunks calls */
    uint64_t have_calls;       /* repo_have calls */
    uint64_t have_ids;         /* ids asked about */
    uint64_t objects;          /* objects stored */
    uint64_t snapshots;        /* snapshots committed */
    uint64_t tests;            /* restore tests recorded */
    uint64_t last_test_errors; /* errors of the last restore test recorded */
    uint64_t last_test_chunks; /* chunks of the last restore test recorded */
};

/* Forget everything (objects, snapshots, counters, faults). */
void repo_fake_reset(void);

/* The counters. */
struct repo_fake_stats repo_fake_stats(void);

/* Make the next puts fail with HBC_EUNAVAILABLE after n more succeed (-1: never). */
void repo_fake_fail_puts_after(long n);

/* Make every get of a chunk of exactly len bytes fail with HBC_ETOOFEW (0: none). */
void repo_fake_fail_gets_of_len(size_t len);

/* Flip a byte of every stored object of exactly len bytes (0: none); get then returns bad data. */
void repo_fake_corrupt_len(size_t len);

#endif /* HBC_TESTS_REPO_FAKE_H */
