/* ref_h16_dconv.c - the scalar twins of the fp16 / bf16 direct Conv2d's two
 * kernels, and of the float32 weight's panel (mq.h, "fp16 / bf16 weight direct Conv2d"): the ground truth the
 * AVX2 and AVX-512 versions (x86/<isa>/h16_dconv.c) are tested against, bit
 * for bit.  Each output is one fmaf chain over its taps, in tap order, from
 * the bias: a SIMD lane does the same fused multiply-adds in the same order,
 * so every level gives the same bits (fmaf is exact-then-rounded wherever it
 * runs, in hardware or in libm). */
#include <math.h>

#include "mq.h"

void mq_ref_h16_dconv_panel(const uint16_t *w, int64_t k, int is_bf16, int64_t nb, int64_t ldp, float *panel) {
    for (int64_t t = 0; t < k; t++)
        for (int64_t j = 0; j < ldp; j++)
            panel[t * ldp + j] = j >= nb ? 0.0f : is_bf16 ? mq_bf16_to_f32(w[j * k + t]) : mq_f16_to_f32(w[j * k + t]);
}

void mq_ref_f32_dconv_panel(const float *w, int64_t k, int64_t nb, int64_t ldp, float *panel) {
    for (int64_t t = 0; t < k; t++)
        for (int64_t j = 0; j < ldp; j++) panel[t * ldp + j] = j >= nb ? 0.0f : w[j * k + t];
}

void mq_ref_q4_dconv_panel(const uint8_t *codes, const uint16_t *scale, const uint8_t *zero, int64_t kpad,
                           int64_t group, int64_t k, int64_t nb, int64_t ldp, float *panel) {
    const int64_t ngroups = (kpad + group - 1) / group;
    for (int64_t t = 0; t < k; t++)
        for (int64_t j = 0; j < ldp; j++) {
            if (j >= nb) {
                panel[t * ldp + j] = 0.0f;
                continue;
            }
            /* value t of a 32-value block sits in byte t % 16: the low nibble below 16, the high one above */
            const uint8_t byte = codes[j * (kpad / 2) + t / MQ_Q4_BLOCK * (MQ_Q4_BLOCK / 2) + t % 16];
            const int code = t % MQ_Q4_BLOCK < 16 ? byte & 15 : byte >> 4;
            const int64_t g = j * ngroups + t / group;
            panel[t * ldp + j] = ((float)code - (float)zero[g] / 16.0f) * mq_f16_to_f32(scale[g]);
        }
}

void mq_ref_h16_dconv(const float *x, const int64_t *pix, int64_t npix, const int64_t *off, int64_t kc,
                      const float *panel, int64_t ldp, const float *bias, int accumulate, float *out) {
    for (int64_t s = 0; s < npix; s++) {
        const float *xs = x + pix[s];
        for (int64_t j = 0; j < ldp; j++) {
            float acc = accumulate ? out[s * ldp + j] : bias[j];
            for (int64_t t = 0; t < kc; t++) acc = fmaf(xs[off[t]], panel[t * ldp + j], acc);
            out[s * ldp + j] = acc;
        }
    }
}
