/* x86/avx512_vnni/qgemm_store.h - the int8 matmul's epilogue on one zmm of accumulators.
 *
 * Shared by the AVX-512 VNNI kernels and the AMX ones (x86/amx/linear.c), whose exact int32
 * sums go through this same code, so both write the same bits.  Include only from units
 * compiled with AVX-512 F/BW/VL/DQ. */
#ifndef MQ_X86_QGEMM_STORE_H
#define MQ_X86_QGEMM_STORE_H

#include <immintrin.h>

#include "mq.h"

#define MQ_INLINE static inline __attribute__((always_inline))

static inline __mmask16 tail_mask(int64_t left) {
    return left >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << left) - 1u);
}

/* Exact correction, then y = (float)acc * (x_scale * w_scale) + bias (the
 * reference's order, no FMA), for row m and panel p. */
MQ_INLINE void qgemm_store(const mq_qgemm_args *a, __m512i acc, int64_t m, int64_t p) {
    const int64_t n0 = p * MQ_PANEL;
    const __mmask16 mask = tail_mask(a->n - n0);
    if (a->x_u8) acc = _mm512_sub_epi32(acc, _mm512_slli_epi32(_mm512_loadu_si512(a->w_sum + n0), 7));
    if (a->w_zp)
        acc = _mm512_sub_epi32(acc, _mm512_mullo_epi32(_mm512_maskz_loadu_epi32(mask, a->w_zp + n0),
                                                       _mm512_set1_epi32(a->x_sum[m])));
    if (a->acc) {
        _mm512_mask_storeu_epi32(a->acc + m * a->ldy + n0, mask, acc);
        return;
    }
    __m512 s = _mm512_mul_ps(_mm512_set1_ps(a->x_scale[m]), _mm512_maskz_loadu_ps(mask, a->w_scale + n0));
    __m512 y = _mm512_mul_ps(_mm512_cvtepi32_ps(acc), s);
    if (a->bias) y = _mm512_add_ps(y, _mm512_maskz_loadu_ps(mask, a->bias + n0));
    _mm512_mask_storeu_ps(a->y + m * a->ldy + n0, mask, y);
}

#endif /* MQ_X86_QGEMM_STORE_H */
