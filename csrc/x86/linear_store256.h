/* x86/linear_store256.h - the int8 matmul epilogue for 8 channels in a 256-bit
 * register, shared by x86/avx2/linear.c (maddubs) and x86/avx_vnni/linear.c (VNNI).
 * Include only from compile units built with -mavx2, after defining MQ_INLINE.
 *
 * Exact corrections (the +128 activation shift when x_u8, the weight
 * zero-point), then y = (float)acc * (x_scale * w_scale) + bias in the
 * reference's order (no FMA), for row m and channels n0 .. n0 + 7. */
#ifndef MQ_LINEAR_STORE256_H
#define MQ_LINEAR_STORE256_H

#include <immintrin.h>

#include "mq.h"

MQ_INLINE void qgemm_store8(const mq_qgemm_args *a, __m256i acc, int64_t m, int64_t n0) {
    int32_t v[8];
    if (a->x_u8) /* undo the +128 shift of the activations (w_sum has np >= n0 + 8 entries) */
        acc = _mm256_sub_epi32(acc, _mm256_slli_epi32(_mm256_loadu_si256((const __m256i *)(a->w_sum + n0)), 7));
    _mm256_storeu_si256((__m256i *)v, acc);
    if (a->w_zp)
        for (int c = 0; c < 8 && n0 + c < a->n; c++) v[c] -= a->w_zp[n0 + c] * a->x_sum[m];
    const int count = (int)(a->n - n0 < 8 ? a->n - n0 : 8);
    if (a->acc) {
        for (int c = 0; c < count; c++) a->acc[m * a->ldy + n0 + c] = v[c];
        return;
    }
    float *y = a->y + m * a->ldy + n0;
    if (count == 8) {
        __m256 s = _mm256_mul_ps(_mm256_set1_ps(a->x_scale[m]), _mm256_loadu_ps(a->w_scale + n0));
        __m256 r = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_loadu_si256((const __m256i *)v)), s);
        if (a->bias) r = _mm256_add_ps(r, _mm256_loadu_ps(a->bias + n0));
        _mm256_storeu_ps(y, r);
        return;
    }
    for (int c = 0; c < count; c++) { /* the same operations, one lane at a time */
        float s = a->x_scale[m] * a->w_scale[n0 + c];
        float r = (float)v[c] * s;
        if (a->bias) r = r + a->bias[n0 + c];
        y[c] = r;
    }
}

#endif /* MQ_LINEAR_STORE256_H */
