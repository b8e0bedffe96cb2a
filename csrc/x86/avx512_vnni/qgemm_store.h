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

/* What the epilogue reads of panel p, loaded once for all the rows a kernel stores into it. */
typedef struct {
    int64_t n0;
    __mmask16 mask;
    __m512i w_sum128, w_zp; /* the +128 shift's compensation (x_u8), the zero-points (w_zp) */
    __m512 w_scale, bias;   /* bias: with a->bias */
} qgemm_panel;

MQ_INLINE qgemm_panel qgemm_panel_load(const mq_qgemm_args *a, int64_t p) {
    qgemm_panel q;
    q.n0 = p * MQ_PANEL;
    q.mask = tail_mask(a->n - q.n0);
    q.w_sum128 = a->x_u8 ? _mm512_slli_epi32(_mm512_loadu_si512(a->w_sum + q.n0), 7) : _mm512_setzero_si512();
    q.w_zp = a->w_zp ? _mm512_maskz_loadu_epi32(q.mask, a->w_zp + q.n0) : _mm512_setzero_si512();
    q.w_scale = _mm512_maskz_loadu_ps(q.mask, a->w_scale + q.n0);
    q.bias = a->bias ? _mm512_maskz_loadu_ps(q.mask, a->bias + q.n0) : _mm512_setzero_ps();
    return q;
}

/* Exact correction, then y = (float)acc * (x_scale * w_scale) + bias (the
 * reference's order, no FMA), for row m of panel q. */
MQ_INLINE void qgemm_store_panel(const mq_qgemm_args *a, const qgemm_panel *q, __m512i acc, int64_t m) {
    if (a->x_u8) acc = _mm512_sub_epi32(acc, q->w_sum128);
    if (a->w_zp) acc = _mm512_sub_epi32(acc, _mm512_mullo_epi32(q->w_zp, _mm512_set1_epi32(a->x_sum[m])));
    if (a->acc) {
        _mm512_mask_storeu_epi32(a->acc + m * a->ldy + q->n0, q->mask, acc);
        return;
    }
    __m512 s = _mm512_mul_ps(_mm512_set1_ps(a->x_scale[m]), q->w_scale);
    __m512 y = _mm512_mul_ps(_mm512_cvtepi32_ps(acc), s);
    if (a->bias) y = _mm512_add_ps(y, q->bias);
    _mm512_mask_storeu_ps(a->y + m * a->ldy + q->n0, q->mask, y);
}

/* The same for one row and panel p (the kernels that store a panel's rows one at a time). */
MQ_INLINE void qgemm_store(const mq_qgemm_args *a, __m512i acc, int64_t m, int64_t p) {
    const qgemm_panel q = qgemm_panel_load(a, p);
    qgemm_store_panel(a, &q, acc, m);
}

#endif /* MQ_X86_QGEMM_STORE_H */
