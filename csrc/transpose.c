/* transpose.c - the reference twins of the layout transposes (mq.h's nhwc_bytes and nchw_f32
 * table entries): NCHW bytes to NHWC, and NHWC float sums to NCHW with a per-channel scale and
 * bias.  Plain C in the baseline unit; x86/avx2/transpose.c has the AVX2 twins (same bits). */
#include <string.h>

#include "mq.h"

/* NCHW bytes to NHWC: 4 channels per 4-byte store (a quarter of the byte stores a plain
 * transpose makes), the last channels % 4 byte by byte. */
void mq_ref_nhwc_bytes(const uint8_t *src, int64_t plane, int64_t channels, int64_t width, uint8_t flip,
                       uint8_t *dst) {
    const uint32_t flip4 = flip * 0x01010101u;
    const int64_t ch4 = channels - channels % 4;
    for (int64_t k = 0; k < ch4; k += 4) {
        const uint8_t *restrict i0 = src + k * plane, *restrict i1 = i0 + plane, *restrict i2 = i1 + plane,
                                *restrict i3 = i2 + plane;
        for (int64_t iw = 0; iw < width; iw++) {
            const uint32_t word = ((uint32_t)i0[iw] | (uint32_t)i1[iw] << 8 | (uint32_t)i2[iw] << 16 |
                                   (uint32_t)i3[iw] << 24) ^ flip4; /* little-endian: channel k first */
            memcpy(dst + iw * channels + k, &word, 4);
        }
    }
    for (int64_t k = ch4; k < channels; k++) {
        const uint8_t *restrict ik = src + k * plane;
        for (int64_t iw = 0; iw < width; iw++) dst[iw * channels + k] = ik[iw] ^ flip;
    }
}

/* In blocks of 32 pixels (both sides stay in L1). */
void mq_ref_nchw_f32(const float *acc, int64_t np, int64_t n, const float *s, const float *bias, float *y,
                     int64_t ld) {
    for (int64_t q0 = 0; q0 < np; q0 += 32) {
        const int64_t q1 = q0 + 32 < np ? q0 + 32 : np;
        for (int64_t j = 0; j < n; j++) {
            float *restrict dst = y + j * ld;
            const float *restrict src = acc + j;
            if (!s) {
                for (int64_t p = q0; p < q1; p++) dst[p] = src[p * n];
                continue;
            }
            const float sj = s[j];
            if (bias) {
                const float bj = bias[j];
                for (int64_t p = q0; p < q1; p++) dst[p] = src[p * n] * sj + bj;
            } else {
                for (int64_t p = q0; p < q1; p++) dst[p] = src[p * n] * sj;
            }
        }
    }
}
