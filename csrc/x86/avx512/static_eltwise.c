/* x86/avx512/static_eltwise.c - AVX-512 twin of mq_ref_static_add (static_int8.c): the
 * static int8 residual add, 16 values per step.
 *
 * Compiled with -mavx512f/bw/vl/dq (CMakeLists.txt); dispatch.c installs the table only on
 * CPUs with them.  The reference's operations in its order (two products, one sum, max, min,
 * product, max, min, round to nearest even), so the bits are the same; the tail runs the
 * reference. */
#include "mq.h"

#if defined(__x86_64__) && defined(__AVX512F__) && defined(__AVX512BW__)
#include <immintrin.h>

static void static_add_avx512(const int8_t *a, float sa, int za, const int8_t *b, float sb, int zb, int64_t n,
                              float lo, float hi, float inv, int zo, int8_t *y_q, float *y_f32) {
    const __m512 vsa = _mm512_set1_ps(sa), vsb = _mm512_set1_ps(sb), vlo = _mm512_set1_ps(lo),
                 vhi = _mm512_set1_ps(hi), vinv = _mm512_set1_ps(inv);
    const __m512 qlo = _mm512_set1_ps((float)(-127 - zo)), qhi = _mm512_set1_ps((float)(127 - zo));
    const __m512i vza = _mm512_set1_epi32(za), vzb = _mm512_set1_epi32(zb), vzo = _mm512_set1_epi32(zo);
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        const __m512i ia = _mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(const void *)(a + i)));
        const __m512i ib = _mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(const void *)(b + i)));
        const __m512 pa = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_sub_epi32(ia, vza)), vsa);
        const __m512 pb = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_sub_epi32(ib, vzb)), vsb);
        /* max(y, lo) is (y > lo ? y : lo), min(v, hi) is (v < hi ? v : hi): the reference's NaN rule */
        const __m512 v = _mm512_min_ps(_mm512_max_ps(_mm512_add_ps(pa, pb), vlo), vhi);
        if (y_f32) {
            _mm512_storeu_ps(y_f32 + i, v);
            continue;
        }
        const __m512 s = _mm512_min_ps(_mm512_max_ps(_mm512_mul_ps(v, vinv), qlo), qhi);
        const __m512i q = _mm512_add_epi32(_mm512_cvtps_epi32(s), vzo); /* MXCSR: nearest even */
        _mm_storeu_si128((__m128i *)(void *)(y_q + i), _mm512_cvtepi32_epi8(q));
    }
    if (i < n)
        mq_ref_static_add(a + i, sa, za, b + i, sb, zb, n - i, lo, hi, inv, zo, y_q ? y_q + i : NULL,
                          y_f32 ? y_f32 + i : NULL);
}

const mq_kernels mq_avx512_eltwise_table = {
    .static_add = static_add_avx512,
};

#else
const mq_kernels mq_avx512_eltwise_table = {.name = NULL};
#endif
