/* x86/avx2/linear_u7.c - AVX2 twin of mq_ref_qgemm_u7 (reduce_range).
 *
 * Compiled with -mavx2 (CMakeLists.txt).  The activations are 7-bit codes
 * xu (0..127, uint8) with a per-row zero-point (act_u7.c), so vpmaddubsw
 * takes them as they are against the int8 weight: each pair sum is at most
 * 2 * 127 * 128 = 32512 in magnitude, below int16's limit, -128 weights
 * included.  Per 32 multiply-adds and row: vpmaddubsw, vpmaddwd (pairs to
 * int32), vpaddd; the sign trick of x86/avx2/linear.c needs a vpsignb more.
 * The zero-point leaves through the packed weight's column sums:
 *     sum_k (xu - zp) * w = sum_k xu * w - zp * w_sum[n]    (exact int32). */
#include "mq.h"

#if defined(__x86_64__) && defined(__AVX2__)
#include <immintrin.h>

#define MQ_INLINE static inline __attribute__((always_inline))
#include "x86/linear_store256.h"

/* 8 channels of row m: the zero-point's term out, then the shared epilogue
 * (the driver gives a 7-bit call x_u8 = 0: no +128 shift to undo there). */
MQ_INLINE void store8_u7(const mq_qgemm_args *a, __m256i acc, int64_t m, int64_t n0) {
    const __m256i w_sum = _mm256_loadu_si256((const __m256i *)(a->w_sum + n0)); /* np >= n0 + 8 entries */
    acc = _mm256_sub_epi32(acc, _mm256_mullo_epi32(w_sum, _mm256_set1_epi32(a->x_zp[m])));
    qgemm_store8(a, acc, m, n0);
}

/* MT rows x 8 channels (half a panel: 32 bytes of each 64-byte K-group)
 * over the whole K, in MT named accumulators (a macro with a constant MT:
 * GCC keeps arrays of vectors on the stack).  12 rows: 12 accumulators,
 * the weights, the broadcast row, the ones and one product fill the 16 ymm
 * registers (fbgemm's AVX2 tile); 5 rows x both halves, as
 * x86/avx2/linear.c, spilled three accumulators with GCC 12. */
#define UROW_DECL(i) __m256i acc##i = _mm256_setzero_si256();
/* One row's step as one asm statement: GCC 12 interleaves the rows' steps
 * written in intrinsics and then spills accumulators to the stack (3 of 10
 * at 5 rows x both halves, 6 of 12 here); out-of-order execution does the
 * interleaving anyway. */
#define UROW(i, MT)                                                                           \
    if ((i) < (MT)) {                                                                         \
        __m256i prod;                                                                         \
        __asm__("vpbroadcastd %[xm], %[t]\n\t"                                                \
                "vpmaddubsw %[w], %[t], %[t]\n\t"                                             \
                "vpmaddwd %[ones], %[t], %[t]\n\t"                                            \
                "vpaddd %[t], %[acc], %[acc]"                                                 \
                : [acc] "+x"(acc##i), [t] "=&x"(prod)                                         \
                : [xm] "m"(*(const int32_t *)(const void *)(x + (i) * ldx + g * 4)), [w] "x"(wv), \
                  [ones] "x"(ones));                                                          \
    }
#define UROW_STORE(i, MT)                                                                     \
    if ((i) < (MT)) store8_u7(a, acc##i, m0 + (i), n0);
#define UTILE(MT)                                                                             \
    static void utile_##MT(const mq_qgemm_args *a, int64_t m0, int64_t p, int half, const int8_t *pf) { \
        const int64_t groups = a->kp / MQ_KGROUP, ldx = a->ldx, n0 = p * MQ_PANEL + half * 8; \
        const int8_t *w = a->w + p * groups * 64 + half * 32;                                 \
        const uint8_t *x = a->x + m0 * ldx;                                                    \
        const __m256i ones = _mm256_set1_epi16(1);                                            \
        UROW_DECL(0) UROW_DECL(1) UROW_DECL(2) UROW_DECL(3) UROW_DECL(4) UROW_DECL(5)         \
        UROW_DECL(6) UROW_DECL(7) UROW_DECL(8) UROW_DECL(9) UROW_DECL(10) UROW_DECL(11)       \
        for (int64_t g = 0; g < groups; g++) {                                                \
            const __m256i wv = _mm256_loadu_si256((const __m256i *)(w + g * 64));             \
            _mm_prefetch((const char *)(pf + g * 64), _MM_HINT_T1);                           \
            UROW(0, MT) UROW(1, MT) UROW(2, MT) UROW(3, MT) UROW(4, MT) UROW(5, MT)           \
            UROW(6, MT) UROW(7, MT) UROW(8, MT) UROW(9, MT) UROW(10, MT) UROW(11, MT)         \
        }                                                                                     \
        UROW_STORE(0, MT) UROW_STORE(1, MT) UROW_STORE(2, MT) UROW_STORE(3, MT)               \
        UROW_STORE(4, MT) UROW_STORE(5, MT) UROW_STORE(6, MT) UROW_STORE(7, MT)               \
        UROW_STORE(8, MT) UROW_STORE(9, MT) UROW_STORE(10, MT) UROW_STORE(11, MT)             \
    }

#ifndef UTILE_ROWS
#define UTILE_ROWS 12
#endif
typedef void (*utile_fn)(const mq_qgemm_args *a, int64_t m0, int64_t p, int half, const int8_t *pf);
UTILE(1) UTILE(2) UTILE(3) UTILE(4) UTILE(5) UTILE(6) UTILE(7) UTILE(8) UTILE(9) UTILE(10) UTILE(11) UTILE(12)
static const utile_fn utiles[13] = {NULL,     utile_1,  utile_2, utile_3, utile_4,  utile_5, utile_6,
                                    utile_7,  utile_8,  utile_9, utile_10, utile_11, utile_12};

/* The first tile of a panel also prefetches the next panel into L2 (the
 * others prefetch their own, cached, weights: no branch in the loop), so
 * the weight's DRAM latency hides behind a panel's work: with few rows
 * (batch 32: 3 tiles per half panel) it was paid once a panel. */
static void qgemm_u7_avx2(const mq_qgemm_args *a, int64_t p0, int64_t p1) {
    const int64_t panel_bytes = a->kp / MQ_KGROUP * 64;
    for (int64_t p = p0; p < p1; p++) {
        const int8_t *own = a->w + p * panel_bytes, *next = p + 1 < p1 ? own + panel_bytes : own;
        for (int half = 0; half < 2 && p * MQ_PANEL + half * 8 < a->n; half++)
            for (int64_t m0 = 0; m0 < a->m; m0 += UTILE_ROWS)
                utiles[a->m - m0 < UTILE_ROWS ? a->m - m0 : UTILE_ROWS](a, m0, p, half,
                                                                        half == 0 && m0 == 0 ? next : own);
    }
}

const mq_kernels mq_avx2_linear_u7_table = {
    .qgemm_u7 = qgemm_u7_avx2,
    .qgemm_u7_name = "avx2_maddubs_u7",
};

#else
const mq_kernels mq_avx2_linear_u7_table = {.name = NULL};
#endif
