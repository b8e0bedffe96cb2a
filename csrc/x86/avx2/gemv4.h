/* x86/avx2/gemv4.h - the batch-1 int8 matmul of the AVX2 kernels: one activation row x 4
 * weight panels read side by side.  Include only from x86/avx2/linear.c (8-bit activations,
 * the sign trick) and x86/avx2/linear_u7.c (7-bit codes), after x86/linear_store256.h.
 *
 * At batch 1 the call streams the weight from DRAM, and one core reading one sequential
 * stream gets about 2/3 of the bandwidth it gets from 4 streams read together (Zen 3: 9.4
 * against 15 GB/s; its prefetchers keep more lines in flight over several streams).  Panels
 * p..p+3 lie a panel apart, so reading them in step makes 4 streams; each channel's sum is
 * the same integer as in the one-panel tiles, so the same bits.  8 accumulators, the ones,
 * the broadcast activations and 4 temporaries: 14 ymm registers.
 *
 * MQ_GEMV4(NAME, PRODUCT, STORE): PRODUCT(wv) is the int16 pair sums of the 32 weight bytes
 * wv against the broadcast activations xb; STORE(a, acc, row, n0) writes 8 channels. */
#ifndef MQ_AVX2_GEMV4_H
#define MQ_AVX2_GEMV4_H

#include <immintrin.h>
#include <string.h>

#include "mq.h"

#define MQ_GEMV4_DECL(s) __m256i acc##s##a = _mm256_setzero_si256(), acc##s##b = acc##s##a;
#define MQ_GEMV4_STEP(s, PRODUCT)                                                                   \
    {                                                                                               \
        const int8_t *ws = w + (s) * panel_bytes + g * 64;                                          \
        const __m256i w0 = _mm256_loadu_si256((const __m256i *)ws);                                 \
        const __m256i w1 = _mm256_loadu_si256((const __m256i *)(ws + 32));                          \
        const __m256i p0 = PRODUCT(w0), p1 = PRODUCT(w1);                                           \
        acc##s##a = _mm256_add_epi32(acc##s##a, _mm256_madd_epi16(p0, ones));                       \
        acc##s##b = _mm256_add_epi32(acc##s##b, _mm256_madd_epi16(p1, ones));                       \
    }
#define MQ_GEMV4_STORE(s, STORE)                                                                    \
    {                                                                                               \
        const int64_t n0 = (p + (s)) * MQ_PANEL;                                                    \
        STORE(a, acc##s##a, 0, n0);                                                                 \
        if (n0 + 8 < a->n) STORE(a, acc##s##b, 0, n0 + 8);                                          \
    }
#define MQ_GEMV4(NAME, PRODUCT, STORE)                                                              \
    static void NAME(const mq_qgemm_args *a, int64_t p) {                                           \
        const int64_t groups = a->kp / MQ_KGROUP, panel_bytes = groups * 64;                        \
        const int8_t *w = a->w + p * panel_bytes;                                                   \
        const __m256i ones = _mm256_set1_epi16(1);                                                  \
        MQ_GEMV4_DECL(0) MQ_GEMV4_DECL(1) MQ_GEMV4_DECL(2) MQ_GEMV4_DECL(3)                         \
        for (int64_t g = 0; g < groups; g++) {                                                      \
            int32_t x4;                                                                             \
            memcpy(&x4, a->x + g * 4, 4);                                                           \
            const __m256i xb = _mm256_set1_epi32(x4);                                               \
            MQ_GEMV4_STEP(0, PRODUCT) MQ_GEMV4_STEP(1, PRODUCT)                                     \
            MQ_GEMV4_STEP(2, PRODUCT) MQ_GEMV4_STEP(3, PRODUCT)                                     \
        }                                                                                           \
        MQ_GEMV4_STORE(0, STORE) MQ_GEMV4_STORE(1, STORE)                                           \
        MQ_GEMV4_STORE(2, STORE) MQ_GEMV4_STORE(3, STORE)                                           \
    }

#endif /* MQ_AVX2_GEMV4_H */
