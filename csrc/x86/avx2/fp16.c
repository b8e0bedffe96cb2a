/* x86/avx2/fp16.c - AVX2/FMA/F16C twins of mq_ref_f16_gemm / mq_ref_bf16_gemm.
 *
 * Compiled with -mavx2 -mfma -mf16c (CMakeLists.txt); dispatch.c installs
 * this table only where cpuid reports F16C (its own bit, beside AVX2 and
 * FMA).  A tile is up to ROWS activation rows x 3 weight rows: 8 weights a
 * step are loaded as 16-bit, widened to fp32 in registers (vcvtph2ps, or a
 * shift for bf16) and shared by every row of the tile; each row's 8 lanes are
 * summed at the end.  The K tail goes through small zero-padded copies
 * (0 * 0 adds nothing). */
#include "mq.h"

#if defined(__x86_64__) && defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#include <immintrin.h>

#define MQ_INLINE static inline __attribute__((always_inline))
#define ROWS 4 /* 12 accumulators + 3 weights + 1 activation: the 16 ymm registers */
#define COLS 3
/* One row (batch 1, memory-bound): each weight row is prefetched this far ahead; 3 streams
 * alone read DRAM 10-15% slower than with it (bench_fp16.py, 4096x4096 batch 1). */
#define PREFETCH_BYTES 1024

/* 8 weights widened to fp32. */
MQ_INLINE __m256 widen8(const uint16_t *p, const int bf16) {
    const __m128i h = _mm_loadu_si128((const __m128i *)p);
    if (bf16) return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
    return _mm256_cvtph_ps(h);
}

/* [sum a, sum b, sum c, 0] */
MQ_INLINE __m128 sum3(__m256 a, __m256 b, __m256 c) {
    const __m256 s = _mm256_hadd_ps(_mm256_hadd_ps(a, b), _mm256_hadd_ps(c, _mm256_setzero_ps()));
    return _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1));
}

MQ_INLINE void step(const float *x, int64_t ldx, const uint16_t *w0, const uint16_t *w1, const uint16_t *w2,
                    const int rows, const int bf16, __m256 acc[ROWS][COLS]) {
    const __m256 v0 = widen8(w0, bf16), v1 = widen8(w1, bf16), v2 = widen8(w2, bf16);
    for (int i = 0; i < rows; i++) {
        const __m256 xv = _mm256_loadu_ps(x + i * ldx);
        acc[i][0] = _mm256_fmadd_ps(xv, v0, acc[i][0]);
        acc[i][1] = _mm256_fmadd_ps(xv, v1, acc[i][1]);
        acc[i][2] = _mm256_fmadd_ps(xv, v2, acc[i][2]);
    }
}

/* rows (<= ROWS) activation rows x COLS weight rows wr[0..2] (a short tile
 * repeats a valid row; its sums are dropped).  With 1 or 2 rows, K is also
 * split over `ways` accumulator sets: an FMA's latency (4-5 cycles) would
 * otherwise leave 3-6 independent chains too few to keep both FMA units busy. */
MQ_INLINE void tile(const float *x, int64_t ldx, const uint16_t *const wr[COLS], int64_t kc, const int rows,
                    const int bf16, __m128 out[ROWS]) {
    const int ways = rows == 1 ? 4 : rows == 2 ? 2 : 1;
    __m256 acc[4][ROWS][COLS];
    for (int u = 0; u < ways; u++)
        for (int i = 0; i < ROWS; i++)
            for (int j = 0; j < COLS; j++) acc[u][i][j] = _mm256_setzero_ps();
    int64_t k = 0;
    for (; k + 8 * ways <= kc; k += 8 * ways) {
        if (rows == 1)
            for (int j = 0; j < COLS; j++) _mm_prefetch((const char *)(wr[j] + k) + PREFETCH_BYTES, _MM_HINT_T0);
        for (int u = 0; u < ways; u++)
            step(x + k + 8 * u, ldx, wr[0] + k + 8 * u, wr[1] + k + 8 * u, wr[2] + k + 8 * u, rows, bf16, acc[u]);
    }
    for (; k + 8 <= kc; k += 8) step(x + k, ldx, wr[0] + k, wr[1] + k, wr[2] + k, rows, bf16, acc[0]);
    for (int u = 1; u < ways; u++)
        for (int i = 0; i < rows; i++)
            for (int j = 0; j < COLS; j++) acc[0][i][j] = _mm256_add_ps(acc[0][i][j], acc[u][i][j]);
    if (k < kc) {
        const int64_t left = kc - k;
        float xt[ROWS][8] = {{0}};
        uint16_t wt[COLS][8] = {{0}};
        for (int i = 0; i < rows; i++) memcpy(xt[i], x + i * ldx + k, (size_t)left * sizeof(float));
        for (int j = 0; j < COLS; j++) memcpy(wt[j], wr[j] + k, (size_t)left * sizeof(uint16_t));
        step(xt[0], 8, wt[0], wt[1], wt[2], rows, bf16, acc[0]);
    }
    for (int i = 0; i < rows; i++) out[i] = sum3(acc[0][i][0], acc[0][i][1], acc[0][i][2]);
}

typedef void (*tile_fn)(const float *x, int64_t ldx, const uint16_t *const wr[COLS], int64_t kc, __m128 out[ROWS]);
#define TILE(R, B, NAME)                                                                              \
    static void NAME(const float *x, int64_t ldx, const uint16_t *const wr[COLS], int64_t kc, __m128 out[ROWS]) { \
        tile(x, ldx, wr, kc, R, B, out);                                                              \
    }
TILE(1, 0, f16_1) TILE(2, 0, f16_2) TILE(3, 0, f16_3) TILE(4, 0, f16_4)
TILE(1, 1, bf16_1) TILE(2, 1, bf16_2) TILE(3, 1, bf16_3) TILE(4, 1, bf16_4)
static const tile_fn f16_tiles[ROWS + 1] = {NULL, f16_1, f16_2, f16_3, f16_4};
static const tile_fn bf16_tiles[ROWS + 1] = {NULL, bf16_1, bf16_2, bf16_3, bf16_4};

static void h16_gemm(const tile_fn *tiles, const float *x, int64_t ldx, int64_t m, const uint16_t *w, int64_t ldw,
                     int64_t kc, int64_t n0, int64_t n1, const float *bias, int accumulate, float *y, int64_t ldy) {
    for (int64_t j0 = n0; j0 < n1; j0 += COLS) {
        const int cols = n1 - j0 < COLS ? (int)(n1 - j0) : COLS;
        const uint16_t *wr[COLS];
        for (int j = 0; j < COLS; j++) wr[j] = w + (j0 + (j < cols ? j : 0)) * ldw;
        for (int64_t i0 = 0; i0 < m; i0 += ROWS) {
            const int rows = m - i0 < ROWS ? (int)(m - i0) : ROWS;
            __m128 sums[ROWS];
            tiles[rows](x + i0 * ldx, ldx, wr, kc, sums);
            for (int i = 0; i < rows; i++) {
                float s[4], *yr = y + (i0 + i) * ldy + j0;
                _mm_storeu_ps(s, sums[i]);
                for (int j = 0; j < cols; j++) yr[j] = (accumulate ? yr[j] : bias ? bias[j0 + j] : 0.0f) + s[j];
            }
        }
    }
}

static void f16_gemm(const float *x, int64_t ldx, int64_t m, const uint16_t *w, int64_t ldw, int64_t kc, int64_t n0,
                     int64_t n1, const float *bias, int accumulate, float *y, int64_t ldy) {
    h16_gemm(f16_tiles, x, ldx, m, w, ldw, kc, n0, n1, bias, accumulate, y, ldy);
}

static void bf16_gemm(const float *x, int64_t ldx, int64_t m, const uint16_t *w, int64_t ldw, int64_t kc, int64_t n0,
                      int64_t n1, const float *bias, int accumulate, float *y, int64_t ldy) {
    h16_gemm(bf16_tiles, x, ldx, m, w, ldw, kc, n0, n1, bias, accumulate, y, ldy);
}

const mq_kernels mq_avx2_fp16_table = {
    .f16_gemm = f16_gemm,
    .bf16_gemm = bf16_gemm,
};

#else
const mq_kernels mq_avx2_fp16_table = {.name = NULL};
#endif
