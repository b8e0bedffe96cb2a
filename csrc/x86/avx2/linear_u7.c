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
#include "x86/avx2/tiles12.h"
#include "x86/gemv4_256.h"

/* 8 channels of row m: the zero-point's term out, then the shared epilogue
 * (the driver gives a 7-bit call x_u8 = 0: no +128 shift to undo there). */
MQ_INLINE void store8_u7(const mq_qgemm_args *a, __m256i acc, int64_t m, int64_t n0) {
    const __m256i w_sum = _mm256_loadu_si256((const __m256i *)(a->w_sum + n0)); /* np >= n0 + 8 entries */
    acc = _mm256_sub_epi32(acc, _mm256_mullo_epi32(w_sum, _mm256_set1_epi32(a->x_zp[m])));
    qgemm_store8(a, acc, m, n0);
}

/* The 12-row x 8-channel tile (x86/avx2/tiles12.h, fbgemm's AVX2 tile): 12 accumulators, the
 * weights, the broadcast row, the ones and one product fill the 16 ymm registers (5 rows x both
 * halves, as x86/avx2/linear.c's few-row tile, spilled three accumulators with GCC 12). */
#define U7_SETUP
#define U7_ROW(i, MT) MQ_TILE12_MADDUBS_ROW(i, MT, "vpmaddubsw %[w], %[t], %[t]", wv) /* x unsigned */
#define U7_STORE(i, MT)                                                                       \
    if ((i) < (MT)) store8_u7(a, acc##i, m0 + (i), n0);
MQ_TILES12(u7_tiles, U7_SETUP, U7_ROW, U7_STORE)

/* One row x 4 panels side by side: 4 DRAM streams at batch 1 (x86/gemv4_256.h) */
#define U7_ACCUMULATE(acc, wv) MQ_GEMV4_MADD(acc, _mm256_maddubs_epi16(xb, wv))
MQ_GEMV4(qgemv_u7_4panels, U7_ACCUMULATE, store8_u7)

static void qgemm_u7_avx2(const mq_qgemm_args *a, int64_t p0, int64_t p1) {
    if (a->m == 1) {
        int64_t p = p0;
        for (; p + 4 <= p1; p += 4) qgemv_u7_4panels(a, p);
        if (p < p1) mq_tile12_panels(a, p, p1, u7_tiles);
        return;
    }
    mq_tile12_panels(a, p0, p1, u7_tiles);
}

const mq_kernels mq_avx2_linear_u7_table = {
    .qgemm_u7 = qgemm_u7_avx2,
    .qgemm_u7_name = "avx2_maddubs_u7",
};

#else
const mq_kernels mq_avx2_linear_u7_table = {.name = NULL};
#endif
