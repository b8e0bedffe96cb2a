/* size_check.h - size arithmetic on caller-controlled sizes that cannot wrap.
 *
 * Shapes, paddings, group sizes and feature counts come from the caller, and a
 * NumPy shape can hold a dimension near 2^63 (a zero-size or broadcast array),
 * so a product or sum of them can pass int64 and wrap to a small or negative
 * size.  These return -1 instead, and take a -1 argument through, so a whole
 * expression is checked once at its end:
 *     mq_size_mul(mq_size_mul(batch, out_h), out_w) < 0   means "does not fit".
 * Sizes are never negative, so -1 is free to mean overflow.  The bindings (bind_args.c) turn it
 * into OverflowError; the drivers into an allocation that fails (MemoryError). */
#ifndef MQ_SIZE_CHECK_H
#define MQ_SIZE_CHECK_H

#include <stddef.h>
#include <stdint.h>

static inline int64_t mq_size_mul(int64_t a, int64_t b) {
    int64_t r;
    if (a < 0 || b < 0 || __builtin_mul_overflow(a, b, &r)) return -1;
    return r;
}

static inline int64_t mq_size_add(int64_t a, int64_t b) {
    int64_t r;
    if (a < 0 || b < 0 || __builtin_add_overflow(a, b, &r)) return -1;
    return r;
}

/* v rounded up to a multiple of m (m >= 1). */
static inline int64_t mq_size_round_up(int64_t v, int64_t m) {
    int64_t r = mq_size_add(v, m - 1);
    return r < 0 ? -1 : r / m * m;
}

/* Bytes for count items of item_size, rounded up to a multiple of align (a
 * power of two, for aligned_alloc).  When that passes int64 it is the largest
 * multiple of align a size_t holds, which no allocator grants: the
 * allocation fails instead of succeeding with a wrapped, too-small size. */
static inline size_t mq_alloc_bytes(int64_t count, int64_t item_size, int64_t align) {
    int64_t bytes = mq_size_round_up(mq_size_mul(count, item_size), align);
    /* an overflow asks for PTRDIFF_MAX bytes, which every allocator refuses (NULL: the
     * caller's out-of-memory path); not SIZE_MAX, which gcc flags as larger than any object */
    return bytes < 0 ? (size_t)PTRDIFF_MAX & ~(size_t)(align - 1) : (size_t)bytes;
}

#endif
