/* x86/epilogue256.h - the static int8 epilogue (static_int8.h's numerics) on 8 lanes of 256-bit
 * registers, for the units that include it after <immintrin.h> and mq.h (x86/static_conv256.h's
 * direct conv, x86/avx2/static_depthwise.c; the residual add of x86/avx2/static_eltwise.c from v):
 *     y = (float)acc * x_w_scale (+ bias); v = min(max(y, act_lo), act_hi)
 *     q = clamp(round_half_even(v * inv_out_scale), -127 - out_zp, 127 - out_zp) + out_zp
 * The reference's operations in its order, no FMA, so every ISA writes the same bits. */
#ifndef MQ_EPILOGUE256_H
#define MQ_EPILOGUE256_H

#include <string.h>

/* The epilogue's constants (made once per call by a caller that keeps them in registers). */
typedef struct {
    __m256 act_lo, act_hi, inv, q_lo, q_hi;
    __m256i out_zp;
} mq_epilogue256;

static inline __attribute__((always_inline)) mq_epilogue256 mq_epilogue256_of(float act_lo, float act_hi,
                                                                               float inv_out_scale, int out_zp) {
    return (mq_epilogue256){_mm256_set1_ps(act_lo), _mm256_set1_ps(act_hi), _mm256_set1_ps(inv_out_scale),
                            _mm256_set1_ps((float)(-127 - out_zp)), _mm256_set1_ps((float)(127 - out_zp)),
                            _mm256_set1_epi32(out_zp)};
}

/* valid <= 8 floats from p, the lanes past them 0: never reads past the array's end. */
static inline __attribute__((always_inline)) __m256 mq_load8_ps(const float *p, int64_t valid) {
    if (valid == 8) return _mm256_loadu_ps(p);
    float t[8] = {0};
    memcpy(t, p, (size_t)valid * sizeof(float));
    return _mm256_loadu_ps(t);
}

/* The fused activation and the output of 8 float values y (the first `valid` lanes written to
 * y_q or y_f32, exactly one non-NULL): the tail of every static epilogue (the residual add's too). */
static inline __attribute__((always_inline)) void mq_activate_store256(const mq_epilogue256 *e, __m256 y,
                                                                       int64_t valid, int8_t *y_q, float *y_f32) {
    /* max(y, lo) is (y > lo ? y : lo), min(v, hi) is (v < hi ? v : hi): the reference's NaN rule */
    const __m256 v = _mm256_min_ps(_mm256_max_ps(y, e->act_lo), e->act_hi);
    if (!y_q) {
        if (valid == 8) {
            _mm256_storeu_ps(y_f32, v);
        } else {
            float tmp[8];
            _mm256_storeu_ps(tmp, v);
            memcpy(y_f32, tmp, (size_t)valid * sizeof(float));
        }
        return;
    }
    const __m256 s = _mm256_min_ps(_mm256_max_ps(_mm256_mul_ps(v, e->inv), e->q_lo), e->q_hi);
    const __m256i q = _mm256_add_epi32(_mm256_cvtps_epi32(s), e->out_zp); /* MXCSR: nearest even */
    /* 8 int32 in -127..127 -> 8 bytes: saturating packs keep the values */
    const __m128i q16 = _mm_packs_epi32(_mm256_castsi256_si128(q), _mm256_extracti128_si256(q, 1));
    const __m128i q8 = _mm_packs_epi16(q16, q16);
    if (valid == 8) {
        _mm_storel_epi64((__m128i *)(void *)y_q, q8);
    } else {
        int8_t bytes[16];
        _mm_storeu_si128((__m128i *)(void *)bytes, q8);
        memcpy(y_q, bytes, (size_t)valid);
    }
}

/* The epilogue of 8 int32 sums whose first lane's x_w_scale / bias (NULL: none) / output are at
 * xw / bias / y_q or y_f32 (exactly one non-NULL); the first `valid` lanes are written. */
static inline __attribute__((always_inline)) void mq_epilogue256_store(const mq_epilogue256 *e, __m256i acc,
                                                                       const float *xw, const float *bias,
                                                                       int64_t valid, int8_t *y_q, float *y_f32) {
    __m256 y = _mm256_mul_ps(_mm256_cvtepi32_ps(acc), mq_load8_ps(xw, valid));
    if (bias) y = _mm256_add_ps(y, mq_load8_ps(bias, valid));
    mq_activate_store256(e, y, valid, y_q, y_f32);
}

#endif
