/* x86/avx512/fp16.c - AVX-512 twins of mq_ref_f16_gemm / mq_ref_bf16_gemm.
 *
 * Compiled with -mavx512f -mavx512bw -mavx512vl -mavx512dq (CMakeLists.txt)
 * and installed by dispatch.c only on CPUs with all of them.  A tile is up to
 * ROWS activation rows x 4 weight rows: 16 weights a step are loaded as 16-bit,
 * widened to fp32 in registers (vcvtph2ps, or a shift for bf16) and shared
 * by every row of the tile; each row's 16 lanes are summed at the end.  The
 * K tail is a masked step (zeros beyond kc: 0 * 0 adds nothing). */
#include "mq.h"

#if defined(__x86_64__) && defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__)
#include <immintrin.h>

#define MQ_INLINE static inline __attribute__((always_inline))
#define ROWS 4 /* 16 accumulators + 4 weights + 1 activation of the 32 zmm registers */
#define COLS 4
/* One row (batch 1, memory-bound): each weight row is prefetched this far ahead; 4 streams
 * alone read DRAM 10-15% slower than with it (bench_fp16.py, 4096x4096 batch 1). */
#define PREFETCH_BYTES 1024

/* 16 weights widened to fp32 (masked lanes 0). */
MQ_INLINE __m512 widen16(const uint16_t *p, __mmask16 mask, const int bf16) {
    const __m256i h = mask == (__mmask16)0xFFFF ? _mm256_loadu_si256((const __m256i *)p)
                                                : _mm256_maskz_loadu_epi16(mask, p);
    if (bf16) return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
    return _mm512_cvtph_ps(h);
}

/* The 4 horizontal sums of a, b, c, d as one vector [sum a, sum b, sum c, sum d]. */
MQ_INLINE __m128 sum4(__m512 a, __m512 b, __m512 c, __m512 d) {
    const __m256 a8 = _mm256_add_ps(_mm512_castps512_ps256(a), _mm512_extractf32x8_ps(a, 1));
    const __m256 b8 = _mm256_add_ps(_mm512_castps512_ps256(b), _mm512_extractf32x8_ps(b, 1));
    const __m256 c8 = _mm256_add_ps(_mm512_castps512_ps256(c), _mm512_extractf32x8_ps(c, 1));
    const __m256 d8 = _mm256_add_ps(_mm512_castps512_ps256(d), _mm512_extractf32x8_ps(d, 1));
    const __m256 s = _mm256_hadd_ps(_mm256_hadd_ps(a8, b8), _mm256_hadd_ps(c8, d8));
    return _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1));
}

/* One K step of 16 for every row of the tile into acc. */
MQ_INLINE void step(const float *x, int64_t ldx, const uint16_t *const wr[COLS], int64_t k, const int rows,
                    const int bf16, __m512 acc[ROWS][COLS]) {
    __m512 wv[COLS];
    for (int j = 0; j < COLS; j++) wv[j] = widen16(wr[j] + k, 0xFFFF, bf16);
    for (int i = 0; i < rows; i++) {
        const __m512 xv = _mm512_loadu_ps(x + i * ldx + k);
        for (int j = 0; j < COLS; j++) acc[i][j] = _mm512_fmadd_ps(xv, wv[j], acc[i][j]);
    }
}

/* rows (<= ROWS) activation rows x COLS weight rows wr[0..3] (a short tile
 * repeats a valid row; its sums are dropped).  With 1 or 2 rows, K is also
 * split over `ways` accumulator sets: an FMA's latency (4 cycles) would
 * otherwise leave 4-8 independent chains too few to keep both FMA units busy. */
MQ_INLINE void tile(const float *x, int64_t ldx, const uint16_t *const wr[COLS], int64_t kc, const int rows,
                    const int bf16, __m128 out[ROWS]) {
    const int ways = rows == 1 ? 4 : rows == 2 ? 2 : 1;
    __m512 all[4][ROWS][COLS];
    for (int u = 0; u < ways; u++)
        for (int i = 0; i < ROWS; i++)
            for (int j = 0; j < COLS; j++) all[u][i][j] = _mm512_setzero_ps();
    int64_t k = 0;
    for (; k + 16 * ways <= kc; k += 16 * ways) {
        if (rows == 1)
            for (int j = 0; j < COLS; j++) _mm_prefetch((const char *)(wr[j] + k) + PREFETCH_BYTES, _MM_HINT_T0);
        for (int u = 0; u < ways; u++) step(x, ldx, wr, k + 16 * u, rows, bf16, all[u]);
    }
    for (; k + 16 <= kc; k += 16) step(x, ldx, wr, k, rows, bf16, all[0]);
    for (int u = 1; u < ways; u++)
        for (int i = 0; i < rows; i++)
            for (int j = 0; j < COLS; j++) all[0][i][j] = _mm512_add_ps(all[0][i][j], all[u][i][j]);
    __m512(*acc)[COLS] = all[0];
    if (k < kc) {
        const __mmask16 mask = (__mmask16)((1u << (kc - k)) - 1u);
        __m512 wv[COLS];
        for (int j = 0; j < COLS; j++) wv[j] = widen16(wr[j] + k, mask, bf16);
        for (int i = 0; i < rows; i++) {
            const __m512 xv = _mm512_maskz_loadu_ps(mask, x + i * ldx + k);
            for (int j = 0; j < COLS; j++) acc[i][j] = _mm512_fmadd_ps(xv, wv[j], acc[i][j]);
        }
    }
    for (int i = 0; i < rows; i++) out[i] = sum4(acc[i][0], acc[i][1], acc[i][2], acc[i][3]);
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
        __m128 start = _mm_setzero_ps();
        if (!accumulate && bias) start = cols == COLS ? _mm_loadu_ps(bias + j0) : _mm_setzero_ps();
        for (int64_t i0 = 0; i0 < m; i0 += ROWS) {
            const int rows = m - i0 < ROWS ? (int)(m - i0) : ROWS;
            __m128 sums[ROWS];
            tiles[rows](x + i0 * ldx, ldx, wr, kc, sums);
            for (int i = 0; i < rows; i++) {
                float *yr = y + (i0 + i) * ldy + j0;
                if (cols == COLS) {
                    const __m128 base = accumulate ? _mm_loadu_ps(yr) : start;
                    _mm_storeu_ps(yr, _mm_add_ps(base, sums[i]));
                } else {
                    float s[4];
                    _mm_storeu_ps(s, sums[i]);
                    for (int j = 0; j < cols; j++)
                        yr[j] = (accumulate ? yr[j] : bias ? bias[j0 + j] : 0.0f) + s[j];
                }
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

const mq_kernels mq_avx512_fp16_table = {
    .f16_gemm = f16_gemm,
    .bf16_gemm = bf16_gemm,
};

#else
const mq_kernels mq_avx512_fp16_table = {.name = NULL};
#endif
