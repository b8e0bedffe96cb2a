/* h16_dconv_panel.h - the direct Conv2d's weight panel (mq.h: mq_h16_dconv_panel_fn)
 * with 256-bit AVX2 + F16C, shared by the AVX2 and AVX-512 units (each
 * compiles it with its own flags; included only inside their ISA guards).
 * 8 output channels x 8 taps at a time: 8 loads of 8 16-bit weights, widened
 * to fp32 in registers (vcvtph2ps, or a shift for bf16), an 8 x 8 transpose,
 * 8 stores of a panel row's 8 lanes; the tails one value at a time.  A float32
 * weight's panel (f32_dconv_panel): the same without the widening. */
#ifndef MQ_X86_H16_DCONV_PANEL_H
#define MQ_X86_H16_DCONV_PANEL_H

#include <immintrin.h>

#include "mq.h"
#include "x86/transpose8_256.h"

/* 8 weights widened to fp32 */
static inline __attribute__((always_inline)) __m256 dconv_widen8(const uint16_t *p, const int bf16) {
    const __m128i h = _mm_loadu_si128((const __m128i *)p);
    if (bf16) return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
    return _mm256_cvtph_ps(h);
}

static inline __attribute__((always_inline)) float dconv_widen1(uint16_t h, const int bf16) {
    return bf16 ? mq_bf16_to_f32(h) : _cvtsh_ss(h);
}

/* rows r[0..7] (8 channels' 8 taps) to columns: panel rows t..t+7, lanes j..j+7 */
static inline __attribute__((always_inline)) void dconv_transpose8(__m256 r[8], float *dst, int64_t ldp) {
    mq_transpose8_ps(r);
    for (int k = 0; k < 8; k++) _mm256_storeu_ps(dst + k * ldp, r[k]);
}

#define DCONV_PANEL_TAPS 32

/* the weight's formats: 16-bit ones widened, float32 as it is */
enum { DCONV_F16, DCONV_BF16, DCONV_F32 };

static inline __attribute__((always_inline)) __m256 dconv_load8(const void *w, int64_t i, const int fmt) {
    if (fmt == DCONV_F32) return _mm256_loadu_ps((const float *)w + i);
    return dconv_widen8((const uint16_t *)w + i, fmt == DCONV_BF16);
}

static inline __attribute__((always_inline)) float dconv_load1(const void *w, int64_t i, const int fmt) {
    if (fmt == DCONV_F32) return ((const float *)w)[i];
    return dconv_widen1(((const uint16_t *)w)[i], fmt == DCONV_BF16);
}

static inline __attribute__((always_inline)) void dconv_panel(const void *w, int64_t k, const int fmt, int64_t nb,
                                                              int64_t ldp, float *panel) {
    const int64_t nb8 = nb / 8 * 8, k8 = k / 8 * 8;
    /* taps in chunks of DCONV_PANEL_TAPS: the chunk's panel rows stay in L1 while every 8 channels
     * write their half lines (a whole row of taps a channel group evicted them: twice the traffic) */
    for (int64_t t0 = 0; t0 < k8; t0 += DCONV_PANEL_TAPS) {
        const int64_t t1 = t0 + DCONV_PANEL_TAPS < k8 ? t0 + DCONV_PANEL_TAPS : k8;
        for (int64_t j = 0; j < nb8; j += 8)
            for (int64_t t = t0; t < t1; t += 8) {
                __m256 r[8];
                for (int i = 0; i < 8; i++) r[i] = dconv_load8(w, (j + i) * k + t, fmt);
                dconv_transpose8(r, panel + t * ldp + j, ldp);
            }
    }
    for (int64_t j = 0; j < nb8; j += 8)
        for (int64_t t = k8; t < k; t++)
            for (int64_t i = 0; i < 8; i++) panel[t * ldp + j + i] = dconv_load1(w, (j + i) * k + t, fmt);
    for (int64_t t = 0; t < k; t++) {
        for (int64_t j = nb8; j < nb; j++) panel[t * ldp + j] = dconv_load1(w, j * k + t, fmt);
        for (int64_t j = nb; j < ldp; j++) panel[t * ldp + j] = 0.0f;
    }
}

/* The table's entries: one inlined copy of the loop per format (a float32 weight's: the transposes
 * alone; the driver's scalar loop took 0.55 ns a weight, more than the conv of an 8x8 image for an
 * int4 weight's per-call panels). */
static void h16_dconv_panel(const uint16_t *w, int64_t k, int is_bf16, int64_t nb, int64_t ldp, float *panel) {
    if (is_bf16)
        dconv_panel(w, k, DCONV_BF16, nb, ldp, panel);
    else
        dconv_panel(w, k, DCONV_F16, nb, ldp, panel);
}

static void f32_dconv_panel(const float *w, int64_t k, int64_t nb, int64_t ldp, float *panel) {
    dconv_panel(w, k, DCONV_F32, nb, ldp, panel);
}

/* An int4 weight's panel straight from its codes: per 32-value block, 8 channels' 16 bytes give 4
 * groups of 8 taps (bytes 0-7 / 8-15, low / high nibbles), widened, ((float)code - zero) * scale as
 * q4_unpack (a subtraction, then a product: the same floats) and transposed 8 x 8; the tails one
 * value at a time.  (Rows dequantized first, then transposed, took twice as long.) */
static inline __attribute__((always_inline)) float q4_panel_value(const uint8_t *row, const uint16_t *scale,
                                                                  const uint8_t *zero, int64_t group, int64_t t) {
    const uint8_t byte = row[t / MQ_Q4_BLOCK * (MQ_Q4_BLOCK / 2) + t % 16];
    const int code = t % MQ_Q4_BLOCK < 16 ? byte & 15 : byte >> 4;
    return ((float)code - (float)zero[t / group] / 16.0f) * mq_f16_to_f32(scale[t / group]);
}

static void q4_dconv_panel(const uint8_t *codes, const uint16_t *scale, const uint8_t *zero, int64_t kpad,
                           int64_t group, int64_t k, int64_t nb, int64_t ldp, float *panel) {
    const int64_t ngroups = (kpad + group - 1) / group, row_bytes = kpad / 2;
    const int64_t nb8 = nb / 8 * 8, k8 = k / 8 * 8;
    const __m256i mask = _mm256_set1_epi32(15);
    /* blocks outer (DCONV_PANEL_TAPS at a time), as dconv_panel: the panel rows stay in L1 */
    for (int64_t b0 = 0; b0 < k8; b0 += DCONV_PANEL_TAPS)
        for (int64_t j = 0; j < nb8; j += 8)
            for (int64_t b = b0; b < b0 + DCONV_PANEL_TAPS && b < k8; b += MQ_Q4_BLOCK) {
                __m256 s[8], z[8];
                for (int i = 0; i < 8; i++) {
                    const int64_t g = (j + i) * ngroups + b / group;
                    s[i] = _mm256_set1_ps(mq_f16_to_f32(scale[g]));
                    z[i] = _mm256_set1_ps((float)zero[g] / 16.0f);
                }
                for (int64_t q = 0; q < 4 && b + 8 * q + 8 <= k8; q++) { /* taps b + 8q .. b + 8q + 7 */
                    __m256 r[8];
                    for (int i = 0; i < 8; i++) {
                        const uint8_t *src = codes + (j + i) * row_bytes + b / 2 + (q & 1) * 8;
                        const __m256i v = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)src));
                        const __m256 c =
                            _mm256_cvtepi32_ps(q < 2 ? _mm256_and_si256(v, mask) : _mm256_srli_epi32(v, 4));
                        r[i] = _mm256_mul_ps(_mm256_sub_ps(c, z[i]), s[i]);
                    }
                    dconv_transpose8(r, panel + (b + 8 * q) * ldp + j, ldp);
                }
            }
    for (int64_t j = 0; j < nb8; j += 8) {
        for (int64_t t = k8; t < k; t++)
            for (int64_t i = 0; i < 8; i++)
                panel[t * ldp + j + i] = q4_panel_value(codes + (j + i) * row_bytes, scale + (j + i) * ngroups,
                                                        zero + (j + i) * ngroups, group, t);
    }
    for (int64_t t = 0; t < k; t++) {
        for (int64_t j = nb8; j < nb; j++)
            panel[t * ldp + j] =
                q4_panel_value(codes + j * row_bytes, scale + j * ngroups, zero + j * ngroups, group, t);
        for (int64_t j = nb; j < ldp; j++) panel[t * ldp + j] = 0.0f;
    }
}

#endif
