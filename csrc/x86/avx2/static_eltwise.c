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

#include "x86/epilogue256.h"

static void static_add_avx2(const int8_t *a, float sa, int za, const int8_t *b, float sb, int zb, int64_t n,
                            float lo, float hi, float inv, int zo, int8_t *y_q, float *y_f32) {
    const __m256 vsa = _mm256_set1_ps(sa), vsb = _mm256_set1_ps(sb);
    const __m256i vza = _mm256_set1_epi32(za), vzb = _mm256_set1_epi32(zb);
    const mq_epilogue256 e = mq_epilogue256_of(lo, hi, inv, zo);
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        int64_t a8, b8;
        memcpy(&a8, a + i, 8);
        memcpy(&b8, b + i, 8);
        const __m256i ia = _mm256_cvtepi8_epi32(_mm_cvtsi64_si128(a8));
        const __m256i ib = _mm256_cvtepi8_epi32(_mm_cvtsi64_si128(b8));
        const __m256 pa = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_sub_epi32(ia, vza)), vsa);
        const __m256 pb = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_sub_epi32(ib, vzb)), vsb);
        mq_activate_store256(&e, _mm256_add_ps(pa, pb), 8, y_q ? y_q + i : NULL, y_f32 ? y_f32 + i : NULL);
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
