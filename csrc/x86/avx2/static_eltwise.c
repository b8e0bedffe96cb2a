/* x86/avx2/static_eltwise.c - AVX2 twin of mq_ref_static_add (static_int8.c): the static
 * int8 residual add, 8 values per step.
 *
 * Compiled with -mavx2 (CMakeLists.txt); dispatch.c installs the table only on AVX2 CPUs.
 * The reference's operations in its order (two products, one sum, max, min, product, max,
 * min, round to nearest even), so the bits are the same; the tail runs the reference. */
#include <string.h>

#include "mq.h"

#if defined(__x86_64__) && defined(__AVX2__)
#include <immintrin.h>

static void static_add_avx2(const int8_t *a, float sa, int za, const int8_t *b, float sb, int zb, int64_t n,
                            float lo, float hi, float inv, int zo, int8_t *y_q, float *y_f32) {
    const __m256 vsa = _mm256_set1_ps(sa), vsb = _mm256_set1_ps(sb), vlo = _mm256_set1_ps(lo),
                 vhi = _mm256_set1_ps(hi), vinv = _mm256_set1_ps(inv);
    const __m256 qlo = _mm256_set1_ps((float)(-127 - zo)), qhi = _mm256_set1_ps((float)(127 - zo));
    const __m256i vza = _mm256_set1_epi32(za), vzb = _mm256_set1_epi32(zb), vzo = _mm256_set1_epi32(zo);
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        int64_t a8, b8;
        memcpy(&a8, a + i, 8);
        memcpy(&b8, b + i, 8);
        const __m256i ia = _mm256_cvtepi8_epi32(_mm_cvtsi64_si128(a8));
        const __m256i ib = _mm256_cvtepi8_epi32(_mm_cvtsi64_si128(b8));
        const __m256 pa = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_sub_epi32(ia, vza)), vsa);
        const __m256 pb = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_sub_epi32(ib, vzb)), vsb);
        /* max(y, lo) is (y > lo ? y : lo), min(v, hi) is (v < hi ? v : hi): the reference's NaN rule */
        const __m256 v = _mm256_min_ps(_mm256_max_ps(_mm256_add_ps(pa, pb), vlo), vhi);
        if (y_f32) {
            _mm256_storeu_ps(y_f32 + i, v);
            continue;
        }
        const __m256 s = _mm256_min_ps(_mm256_max_ps(_mm256_mul_ps(v, vinv), qlo), qhi);
        const __m256i q = _mm256_add_epi32(_mm256_cvtps_epi32(s), vzo); /* MXCSR: nearest even */
        const __m128i q16 = _mm_packs_epi32(_mm256_castsi256_si128(q), _mm256_extracti128_si256(q, 1));
        _mm_storel_epi64((__m128i *)(void *)(y_q + i), _mm_packs_epi16(q16, q16));
    }
    if (i < n)
        mq_ref_static_add(a + i, sa, za, b + i, sb, zb, n - i, lo, hi, inv, zo, y_q ? y_q + i : NULL,
                          y_f32 ? y_f32 + i : NULL);
}

const mq_kernels mq_avx2_eltwise_table = {
    .static_add = static_add_avx2,
};

#else
const mq_kernels mq_avx2_eltwise_table = {.name = NULL};
#endif
