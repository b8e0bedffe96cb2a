/* x86/transpose8_256.h - the 8 x 8 float32 transpose in 256-bit registers, for the units that include
 * it inside their ISA guards after <immintrin.h> (AVX; each compiles it with its own flags): the layout
 * transposes (x86/avx2/transpose.c), the direct conv's weight panels (x86/h16_dconv_panel.h) and the
 * float depthwise conv's lanes (x86/avx2/float_depthwise.c).  Shuffles only: the values unchanged. */
#ifndef MQ_X86_TRANSPOSE8_256_H
#define MQ_X86_TRANSPOSE8_256_H

/* rows r[0..7] (8 floats each) -> r[k] = (r[0][k], ..., r[7][k]) */
static inline __attribute__((always_inline)) void mq_transpose8_ps(__m256 r[8]) {
    __m256 t[8], u[8];
    for (int i = 0; i < 4; i++) {
        t[2 * i] = _mm256_unpacklo_ps(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm256_unpackhi_ps(r[2 * i], r[2 * i + 1]);
    }
    for (int h = 0; h < 2; h++) { /* rows 4h .. 4h + 3 */
        u[4 * h] = _mm256_shuffle_ps(t[4 * h], t[4 * h + 2], 0x44);
        u[4 * h + 1] = _mm256_shuffle_ps(t[4 * h], t[4 * h + 2], 0xEE);
        u[4 * h + 2] = _mm256_shuffle_ps(t[4 * h + 1], t[4 * h + 3], 0x44);
        u[4 * h + 3] = _mm256_shuffle_ps(t[4 * h + 1], t[4 * h + 3], 0xEE);
    }
    for (int k = 0; k < 4; k++) {
        r[k] = _mm256_permute2f128_ps(u[k], u[4 + k], 0x20);
        r[4 + k] = _mm256_permute2f128_ps(u[k], u[4 + k], 0x31);
    }
}

#endif
