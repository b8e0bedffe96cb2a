/* x86/avx2/u8_weight.c - AVX2/FMA twin of mq_ref_u8_gemm (uint8 weights, weight-only).
 *
 * Compiled with -mavx2 -mfma (CMakeLists.txt); dispatch.c installs this table on
 * the AVX2 level only.  A tile is up to ROWS activation rows x 3 weight rows, as
 * x86/avx2/fp16.c's: 8 weights a step are loaded as bytes, widened to int32, their
 * zero-point taken off (exact) and converted to fp32 in registers, shared by every
 * row of the tile; each row's 8 lanes are summed at the end and scaled once.  The K
 * tail goes through small zero-padded copies (0 times a finite w - zp adds nothing). */
#include <string.h>

#include "mq.h"

#if defined(__x86_64__) && defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>

#define MQ_INLINE static inline __attribute__((always_inline))
#define ROWS 4 /* 12 accumulators + 3 weights + 1 activation: the 16 ymm registers (zero-points from L1) */
#define COLS 3
/* One row (batch 1, memory-bound): each weight row prefetched this far ahead, as fp16.c's */
#define PREFETCH_BYTES 1024

MQ_INLINE __m256 widen8(const uint8_t *p, const int32_t *zp8) {
    const __m256i q = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)p));
    return _mm256_cvtepi32_ps(_mm256_sub_epi32(q, _mm256_loadu_si256((const __m256i *)zp8)));
}

/* [sum a, sum b, sum c, 0] */
MQ_INLINE __m128 sum3(__m256 a, __m256 b, __m256 c) {
    const __m256 s = _mm256_hadd_ps(_mm256_hadd_ps(a, b), _mm256_hadd_ps(c, _mm256_setzero_ps()));
    return _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1));
}

MQ_INLINE void step(const float *x, int64_t ldx, const uint8_t *w0, const uint8_t *w1, const uint8_t *w2,
                    const int32_t zp8[COLS][8], const int rows, __m256 acc[ROWS][COLS]) {
    const __m256 v0 = widen8(w0, zp8[0]), v1 = widen8(w1, zp8[1]), v2 = widen8(w2, zp8[2]);
    for (int i = 0; i < rows; i++) {
        const __m256 xv = _mm256_loadu_ps(x + i * ldx);
        acc[i][0] = _mm256_fmadd_ps(xv, v0, acc[i][0]);
        acc[i][1] = _mm256_fmadd_ps(xv, v1, acc[i][1]);
        acc[i][2] = _mm256_fmadd_ps(xv, v2, acc[i][2]);
    }
}

/* rows (<= ROWS) activation rows x COLS weight rows wr[0..2] with zero-points zp8 (a short
 * tile repeats a valid row; its sums are dropped).  With 1 or 2 rows K is also split over
 * `ways` accumulator sets, as fp16.c's: too few independent FMA chains otherwise. */
MQ_INLINE void tile(const float *x, int64_t ldx, const uint8_t *const wr[COLS], const int32_t zp8[COLS][8],
                    int64_t kc, const int rows, __m128 out[ROWS]) {
    const int ways = rows == 1 ? 4 : rows == 2 ? 2 : 1;
    __m256 acc[4][ROWS][COLS];
    for (int u = 0; u < ways; u++)
        for (int i = 0; i < ROWS; i++)
            for (int j = 0; j < COLS; j++) acc[u][i][j] = _mm256_setzero_ps();
    int64_t k = 0;
    for (; k + 8 * ways <= kc; k += 8 * ways) {
        if (rows == 1 && !(k & 63))
            for (int j = 0; j < COLS; j++) _mm_prefetch((const char *)(wr[j] + k) + PREFETCH_BYTES, _MM_HINT_T0);
        for (int u = 0; u < ways; u++)
            step(x + k + 8 * u, ldx, wr[0] + k + 8 * u, wr[1] + k + 8 * u, wr[2] + k + 8 * u, zp8, rows, acc[u]);
    }
    for (; k + 8 <= kc; k += 8) step(x + k, ldx, wr[0] + k, wr[1] + k, wr[2] + k, zp8, rows, acc[0]);
    for (int u = 1; u < ways; u++)
        for (int i = 0; i < rows; i++)
            for (int j = 0; j < COLS; j++) acc[0][i][j] = _mm256_add_ps(acc[0][i][j], acc[u][i][j]);
    if (k < kc) {
        const int64_t left = kc - k;
        float xt[ROWS][8] = {{0}};
        uint8_t wt[COLS][8] = {{0}};
        for (int i = 0; i < rows; i++) memcpy(xt[i], x + i * ldx + k, (size_t)left * sizeof(float));
        for (int j = 0; j < COLS; j++) memcpy(wt[j], wr[j] + k, (size_t)left);
        step(xt[0], 8, wt[0], wt[1], wt[2], zp8, rows, acc[0]);
    }
    for (int i = 0; i < rows; i++) out[i] = sum3(acc[0][i][0], acc[0][i][1], acc[0][i][2]);
}

typedef void (*tile_fn)(const float *x, int64_t ldx, const uint8_t *const wr[COLS], const int32_t zp8[COLS][8],
                        int64_t kc, __m128 out[ROWS]);
#define TILE(R, NAME)                                                                                 \
    static void NAME(const float *x, int64_t ldx, const uint8_t *const wr[COLS], const int32_t zp8[COLS][8], \
                     int64_t kc, __m128 out[ROWS]) {                                                  \
        tile(x, ldx, wr, zp8, kc, R, out);                                                            \
    }
TILE(1, u8_1) TILE(2, u8_2) TILE(3, u8_3) TILE(4, u8_4)
static const tile_fn tiles[ROWS + 1] = {NULL, u8_1, u8_2, u8_3, u8_4};

static void u8_gemm(const float *x, int64_t ldx, int64_t m, const uint8_t *q, int64_t ldw, int64_t kc,
                    const int32_t *zp, const float *scale, int64_t n0, int64_t n1, const float *bias, float *y,
                    int64_t ldy) {
    for (int64_t j0 = n0; j0 < n1; j0 += COLS) {
        const int cols = n1 - j0 < COLS ? (int)(n1 - j0) : COLS;
        const uint8_t *wr[COLS];
        int32_t zp8[COLS][8];
        for (int j = 0; j < COLS; j++) {
            const int64_t row = j0 + (j < cols ? j : 0);
            wr[j] = q + row * ldw;
            for (int l = 0; l < 8; l++) zp8[j][l] = zp[row];
        }
        for (int64_t i0 = 0; i0 < m; i0 += ROWS) {
            const int rows = m - i0 < ROWS ? (int)(m - i0) : ROWS;
            __m128 sums[ROWS];
            tiles[rows](x + i0 * ldx, ldx, wr, (const int32_t(*)[8])zp8, kc, sums);
            for (int i = 0; i < rows; i++) {
                float s[4], *yr = y + (i0 + i) * ldy + j0;
                _mm_storeu_ps(s, sums[i]);
                for (int j = 0; j < cols; j++) yr[j] = s[j] * scale[j0 + j] + (bias ? bias[j0 + j] : 0.0f);
            }
        }
    }
}

const mq_kernels mq_avx2_u8_weight_table = {
    .u8_gemm = u8_gemm,
};

#else
const mq_kernels mq_avx2_u8_weight_table = {.name = NULL};
#endif
