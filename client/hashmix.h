/* The hashes of the placement rules (placement.h, policy.h): FNV-1a, the splitmix64 finaliser and
 * the exponential draw. They are part of a stored format: shards are found where they were put. */
#ifndef HBC_CLIENT_HASHMIX_H
#define HBC_CLIENT_HASHMIX_H

#include <math.h>
#include <stddef.h>
#include <stdint.h>

#define HASHMIX_FNV_OFFSET 0xcbf29ce484222325ull /* FNV-1a 64 offset basis */
#define HASHMIX_FNV_PRIME 0x100000001b3ull       /* FNV-1a 64 prime */
#define HASHMIX_GOLDEN 0x9e3779b97f4a7c15ull     /* 2^64 / golden ratio */

/* FNV-1a 64 of the n bytes at p, continuing from h (HASHMIX_FNV_OFFSET to start). */
static inline uint64_t hashmix_fnv(uint64_t h, const void *p, size_t n)
{
    const uint8_t *b = p;
    for (size_t i = 0; i < n; i++) {
        h ^= b[i];
        h *= HASHMIX_FNV_PRIME;
    }
    return h;
}

/* The splitmix64 finaliser. */
static inline uint64_t hashmix_mix(uint64_t x)
{
    x ^= x >> 30;
    x *= 0xbf58476d1ce4e5b9ull;
    x ^= x >> 27;
    x *= 0x94d049bb133111ebull;
    x ^= x >> 31;
    return x;
}

/* -ln(u) / w for u = ((x >> 11) + 0.5) / 2^53: an exponential draw of rate w (IEEE double, libm).
 */
static inline double hashmix_draw(uint64_t x, double w)
{
    double u = ((double)(x >> 11) + 0.5) * 0x1.0p-53;
    return -log(u) / w;
}

#endif
