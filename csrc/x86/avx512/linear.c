/* x86/avx512/linear.c - AVX-512 twin of mq_ref_wgemm (weight-only int8 matmul).
 *
 * Compiled with -mavx512f -mavx512bw -mavx512vl -mavx512dq (CMakeLists.txt)
 * and installed by dispatch.c only on CPUs with all of them. */
#include "mq.h"

#if defined(__x86_64__) && defined(__AVX512F__) && defined(__AVX512BW__)
#include <immintrin.h>

#define MQ_INLINE static inline __attribute__((always_inline))

static inline __mmask16 tail_mask(int64_t left) {
    return left >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << left) - 1u);
}

/* ---- weight-only: lanes are 4 channels x 4 k; channel sums at the end ---- */

MQ_INLINE void wgemm_tile(const mq_wgemm_args *a, int64_t m0, int64_t p, const int mt) {
    const int64_t groups = a->kp / MQ_KGROUP, kp = a->kp, n0 = p * MQ_PANEL;
    const int8_t *w = a->w + p * groups * 64;
    const float *x = a->x + m0 * kp;
    __m512i zp[4] = {_mm512_setzero_si512(), _mm512_setzero_si512(), _mm512_setzero_si512(), _mm512_setzero_si512()};
    if (a->w_zp) { /* zero-point of channel 4q + lane/4, subtracted exactly in int32 */
        __m512i z = _mm512_maskz_loadu_epi32(tail_mask(a->n - n0), a->w_zp + n0);
        for (int q = 0; q < 4; q++) {
            __m512i idx = _mm512_set_epi32(4 * q + 3, 4 * q + 3, 4 * q + 3, 4 * q + 3, 4 * q + 2, 4 * q + 2,
                                           4 * q + 2, 4 * q + 2, 4 * q + 1, 4 * q + 1, 4 * q + 1, 4 * q + 1,
                                           4 * q, 4 * q, 4 * q, 4 * q);
            zp[q] = _mm512_permutexvar_epi32(idx, z);
        }
    }
    __m512 acc[6][4];
    for (int i = 0; i < mt; i++)
        for (int q = 0; q < 4; q++) acc[i][q] = _mm512_setzero_ps();
    for (int64_t g = 0; g < groups; g++) {
        __m512 wf[4];
        for (int q = 0; q < 4; q++) {
            __m512i wi = _mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(w + g * 64 + q * 16)));
            if (a->w_zp) wi = _mm512_sub_epi32(wi, zp[q]);
            wf[q] = _mm512_cvtepi32_ps(wi);
        }
        for (int i = 0; i < mt; i++) {
            __m512 xb = _mm512_broadcast_f32x4(_mm_loadu_ps(x + i * kp + g * 4));
            for (int q = 0; q < 4; q++) acc[i][q] = _mm512_fmadd_ps(wf[q], xb, acc[i][q]);
        }
    }
    for (int i = 0; i < mt; i++) {
        float lanes[64];
        for (int q = 0; q < 4; q++) _mm512_storeu_ps(lanes + 16 * q, acc[i][q]);
        for (int c = 0; c < MQ_PANEL && n0 + c < a->n; c++) {
            float y = ((lanes[4 * c] + lanes[4 * c + 1]) + (lanes[4 * c + 2] + lanes[4 * c + 3])) * a->w_scale[n0 + c];
            if (a->bias) y = y + a->bias[n0 + c];
            a->y[(m0 + i) * a->n + n0 + c] = y;
        }
    }
}

typedef void (*wtile_fn)(const mq_wgemm_args *a, int64_t m0, int64_t p);
#define WTILE(MT) \
    static void wtile_##MT(const mq_wgemm_args *a, int64_t m0, int64_t p) { wgemm_tile(a, m0, p, MT); }
WTILE(1) WTILE(2) WTILE(3) WTILE(4) WTILE(5) WTILE(6)
static const wtile_fn wtiles[7] = {NULL, wtile_1, wtile_2, wtile_3, wtile_4, wtile_5, wtile_6};

static void wgemm_avx512(const mq_wgemm_args *a, int64_t p0, int64_t p1) {
    for (int64_t p = p0; p < p1; p++)
        for (int64_t m0 = 0; m0 < a->m; m0 += 6) wtiles[a->m - m0 < 6 ? a->m - m0 : 6](a, m0, p);
}

const mq_kernels mq_avx512_linear_table = {
    .wgemm = wgemm_avx512,
    .wgemm_name = "avx512",
};

#else
const mq_kernels mq_avx512_linear_table = {.name = NULL};
#endif
