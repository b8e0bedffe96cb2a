/* x86/gemv4_256.h - the batch-1 int8 matmul of the 256-bit kernels: one activation row x 4
 * weight panels read side by side.  Include from x86/avx2/linear.c (8-bit activations, the
 * sign trick), x86/avx2/linear_u7.c (7-bit codes) and x86/vnni256_kernel.h (vpdpbusd), after
 * <immintrin.h>, mq.h and the unit's store.
 *
 * At batch 1 the call streams the weight from DRAM, and one core reading one sequential
 * stream gets less of the bandwidth than from 4 streams read together (Zen 3: 9.4 against 15
 * GB/s; Intel Xeon with AMX: 13.8 against 16.4; the prefetchers keep more lines in flight
 * over several streams).  Panels p..p+3 lie a panel apart, so reading them in step makes 4
 * streams; each channel's sum is the same integer as in the one-panel tiles, so the same
 * bits.  8 accumulators, the broadcast activations and the unit's temporaries.
 *
 * MQ_GEMV4(NAME, ACCUMULATE, STORE): ACCUMULATE(acc, wv) is acc plus the int32 sums of the 32
 * weight bytes wv times the broadcast activations xb (4 per channel); STORE(a, acc, row, n0)
 * writes 8 channels.  MQ_GEMV4_MADD(acc, pairs) adds int16 pair sums for the maddubs units. */
#ifndef MQ_X86_GEMV4_256_H
#define MQ_X86_GEMV4_256_H

#include <immintrin.h>
#include <string.h>

#include "mq.h"

#define MQ_GEMV4_MADD(acc, pairs) _mm256_add_epi32((acc), _mm256_madd_epi16((pairs), _mm256_set1_epi16(1)))

#define MQ_GEMV4_DECL(s) __m256i acc##s##a = _mm256_setzero_si256(), acc##s##b = acc##s##a;
#define MQ_GEMV4_STEP(s, ACCUMULATE)                                                                \
    {                                                                                               \
        const int8_t *ws = w + (s) * panel_bytes + g * 64;                                          \
        acc##s##a = ACCUMULATE(acc##s##a, _mm256_loadu_si256((const __m256i *)ws));                 \
        acc##s##b = ACCUMULATE(acc##s##b, _mm256_loadu_si256((const __m256i *)(ws + 32)));          \
    }
#define MQ_GEMV4_STORE(s, STORE)                                                                    \
    {                                                                                               \
        const int64_t n0 = (p + (s)) * MQ_PANEL;                                                    \
        STORE(a, acc##s##a, 0, n0);                                                                 \
        if (n0 + 8 < a->n) STORE(a, acc##s##b, 0, n0 + 8);                                          \
    }
#define MQ_GEMV4(NAME, ACCUMULATE, STORE)                                                           \
    static void NAME(const mq_qgemm_args *a, int64_t p) {                                           \
        const int64_t groups = a->kp / MQ_KGROUP, panel_bytes = groups * 64;                        \
        const int8_t *w = a->w + p * panel_bytes;                                                   \
        MQ_GEMV4_DECL(0) MQ_GEMV4_DECL(1) MQ_GEMV4_DECL(2) MQ_GEMV4_DECL(3)                         \
        for (int64_t g = 0; g < groups; g++) {                                                      \
            int32_t x4;                                                                             \
            memcpy(&x4, a->x + g * 4, 4);                                                           \
            const __m256i xb = _mm256_set1_epi32(x4);                                               \
            MQ_GEMV4_STEP(0, ACCUMULATE) MQ_GEMV4_STEP(1, ACCUMULATE)                               \
            MQ_GEMV4_STEP(2, ACCUMULATE) MQ_GEMV4_STEP(3, ACCUMULATE)                               \
        }                                                                                           \
        MQ_GEMV4_STORE(0, STORE) MQ_GEMV4_STORE(1, STORE)                                           \
        MQ_GEMV4_STORE(2, STORE) MQ_GEMV4_STORE(3, STORE)                                           \
    }

#endif /* MQ_X86_GEMV4_256_H */
