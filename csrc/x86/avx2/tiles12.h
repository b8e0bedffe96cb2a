/* x86/avx2/tiles12.h - the 12-row x 8-channel tile of the AVX2 int8 matmuls:
 * x86/avx2/linear.c (8-bit activations: the sign trick, and the split rows of
 * act_split.c) and x86/avx2/linear_u7.c (7-bit codes).  Include only from those compile units
 * (-mavx2), after x86/linear_store256.h.
 *
 * MT rows x half a panel (8 channels: 32 bytes of each 64-byte K-group) over
 * the whole K in MT named accumulators acc0..acc11 (a macro with a constant
 * MT: GCC keeps arrays of vectors on the stack).  Each file gives a row's
 * step as one asm statement (GCC 12 interleaves rows written in intrinsics
 * and then spills accumulators; out-of-order execution interleaves them
 * anyway): ROW(i, MT) reads the row's 4 activation bytes at x + i * ldx +
 * g * 4 and the group's weights wv (and whatever GROUP_SETUP derives from
 * them) and adds into acc##i; STORE(i, MT) writes row m0 + i. */
#ifndef MQ_AVX2_TILES12_H
#define MQ_AVX2_TILES12_H

#include <immintrin.h>

#include "mq.h"

#define MQ_TILE12_ROWS 12

typedef void (*mq_tile12_fn)(const mq_qgemm_args *a, int64_t m0, int64_t p, int half, const int8_t *pf);

#define MQ_TILE12_DECL(i) __m256i acc##i = _mm256_setzero_si256();
/* NAME##_##MT: pf is the weight to prefetch into L2 alongside (the next panel, or this one) */
#define MQ_TILE12(NAME, MT, GROUP_SETUP, ROW, STORE)                                                  \
    static void NAME##_##MT(const mq_qgemm_args *a, int64_t m0, int64_t p, int half, const int8_t *pf) { \
        const int64_t groups = a->kp / MQ_KGROUP, ldx = a->ldx, n0 = p * MQ_PANEL + half * 8;         \
        const int8_t *w = a->w + p * groups * 64 + half * 32;                                         \
        const uint8_t *x = a->x + m0 * ldx;                                                           \
        const __m256i ones = _mm256_set1_epi16(1);                                                    \
        MQ_TILE12_DECL(0) MQ_TILE12_DECL(1) MQ_TILE12_DECL(2) MQ_TILE12_DECL(3) MQ_TILE12_DECL(4)     \
        MQ_TILE12_DECL(5) MQ_TILE12_DECL(6) MQ_TILE12_DECL(7) MQ_TILE12_DECL(8) MQ_TILE12_DECL(9)     \
        MQ_TILE12_DECL(10) MQ_TILE12_DECL(11)                                                         \
        for (int64_t g = 0; g < groups; g++) {                                                        \
            const __m256i wv = _mm256_loadu_si256((const __m256i *)(w + g * 64));                     \
            GROUP_SETUP                                                                               \
            _mm_prefetch((const char *)(pf + g * 64), _MM_HINT_T1);                                   \
            ROW(0, MT) ROW(1, MT) ROW(2, MT) ROW(3, MT) ROW(4, MT) ROW(5, MT)                         \
            ROW(6, MT) ROW(7, MT) ROW(8, MT) ROW(9, MT) ROW(10, MT) ROW(11, MT)                       \
        }                                                                                             \
        STORE(0, MT) STORE(1, MT) STORE(2, MT) STORE(3, MT) STORE(4, MT) STORE(5, MT)                 \
        STORE(6, MT) STORE(7, MT) STORE(8, MT) STORE(9, MT) STORE(10, MT) STORE(11, MT)               \
    }
/* The 12 tiles NAME_1 .. NAME_12 and their table NAME (index: rows) */
#define MQ_TILES12(NAME, GROUP_SETUP, ROW, STORE)                                                     \
    MQ_TILE12(NAME, 1, GROUP_SETUP, ROW, STORE) MQ_TILE12(NAME, 2, GROUP_SETUP, ROW, STORE)           \
    MQ_TILE12(NAME, 3, GROUP_SETUP, ROW, STORE) MQ_TILE12(NAME, 4, GROUP_SETUP, ROW, STORE)           \
    MQ_TILE12(NAME, 5, GROUP_SETUP, ROW, STORE) MQ_TILE12(NAME, 6, GROUP_SETUP, ROW, STORE)           \
    MQ_TILE12(NAME, 7, GROUP_SETUP, ROW, STORE) MQ_TILE12(NAME, 8, GROUP_SETUP, ROW, STORE)           \
    MQ_TILE12(NAME, 9, GROUP_SETUP, ROW, STORE) MQ_TILE12(NAME, 10, GROUP_SETUP, ROW, STORE)          \
    MQ_TILE12(NAME, 11, GROUP_SETUP, ROW, STORE) MQ_TILE12(NAME, 12, GROUP_SETUP, ROW, STORE)         \
    static const mq_tile12_fn NAME[MQ_TILE12_ROWS + 1] = {NULL,       NAME##_1,  NAME##_2,  NAME##_3, \
                                                          NAME##_4,   NAME##_5,  NAME##_6,  NAME##_7, \
                                                          NAME##_8,   NAME##_9,  NAME##_10, NAME##_11, \
                                                          NAME##_12};

/* A ROW of the maddubs kernels (7-bit codes, split rows): the row's 4 activation bytes broadcast,
 * MADDUBS (the asm text of vpmaddubsw on %[t] and the weight register %[w]: which of the two is the
 * unsigned side), pairs to int32 against the ones, into acc##i. */
#define MQ_TILE12_MADDUBS_ROW(i, MT, MADDUBS, WREG)                                               \
    if ((i) < (MT)) {                                                                         \
        __m256i prod;                                                                         \
        __asm__("vpbroadcastd %[xm], %[t]\n\t" MADDUBS "\n\t"                                   \
                "vpmaddwd %[ones], %[t], %[t]\n\t"                                            \
                "vpaddd %[t], %[acc], %[acc]"                                                 \
                : [acc] "+x"(acc##i), [t] "=&x"(prod)                                         \
                : [xm] "m"(*(const int32_t *)(const void *)(x + (i) * ldx + g * 4)), [w] "x"(WREG), \
                  [ones] "x"(ones));                                                          \
    }

/* Panels [p0, p1), each half, in tiles of up to 12 rows.  The first tile of a panel also
 * prefetches the next panel into L2 (the others prefetch their own, cached, weights: no branch
 * in the loop), so the weight's DRAM latency hides behind a panel's work: with few rows
 * (batch 32: 3 tiles per half panel) it was paid once a panel. */
static inline void mq_tile12_panels(const mq_qgemm_args *a, int64_t p0, int64_t p1, const mq_tile12_fn *tiles) {
    const int64_t panel_bytes = a->kp / MQ_KGROUP * 64;
    for (int64_t p = p0; p < p1; p++) {
        const int8_t *own = a->w + p * panel_bytes, *next = p + 1 < p1 ? own + panel_bytes : own;
        for (int half = 0; half < 2 && p * MQ_PANEL + half * 8 < a->n; half++)
            for (int64_t m0 = 0; m0 < a->m; m0 += MQ_TILE12_ROWS)
                tiles[a->m - m0 < MQ_TILE12_ROWS ? a->m - m0 : MQ_TILE12_ROWS](a, m0, p, half,
                                                                               half == 0 && m0 == 0 ? next : own);
    }
}

#endif /* MQ_AVX2_TILES12_H */
