/* x86/avx512/transpose16.h - the 16 x 16 transpose of 4-byte words (include only from a unit
 * compiled with AVX-512 F): the packing of int8 panels (x86/avx512/pack.c) and the AMX units'
 * B tiles (x86/amx/) lay 16 rows out as 16 groups of one word each. */
#ifndef MQ_X86_AVX512_TRANSPOSE16_H
#define MQ_X86_AVX512_TRANSPOSE16_H

#include <immintrin.h>

/* o[j] = word j of every row r[0..15]: words 0..15 of 16 rows -> 16 groups.  o may be r (each
 * r is read before any o is written). */
static inline void mq_avx512_transpose16(__m512i r[16], __m512i o[16]) {
    __m512i t[16], u[16];
    for (int i = 0; i < 16; i += 2) {
        t[i] = _mm512_unpacklo_epi32(r[i], r[i + 1]);     /* per lane: r_i[0] r_i+1[0] r_i[1] r_i+1[1] */
        t[i + 1] = _mm512_unpackhi_epi32(r[i], r[i + 1]); /* per lane: words 2 and 3 */
    }
    for (int i = 0; i < 16; i += 4) {
        u[i] = _mm512_unpacklo_epi64(t[i], t[i + 2]);     /* rows i..i+3, word 4l+0 of lane l */
        u[i + 1] = _mm512_unpackhi_epi64(t[i], t[i + 2]); /* word 4l+1 */
        u[i + 2] = _mm512_unpacklo_epi64(t[i + 1], t[i + 3]);
        u[i + 3] = _mm512_unpackhi_epi64(t[i + 1], t[i + 3]);
    }
    for (int b = 0; b < 4; b++) { /* gather lane l of rows 0-3, 4-7, 8-11, 12-15 into group 4l+b */
        __m512i x0 = _mm512_shuffle_i32x4(u[b], u[4 + b], 0x44), x1 = _mm512_shuffle_i32x4(u[b], u[4 + b], 0xEE);
        __m512i y0 = _mm512_shuffle_i32x4(u[8 + b], u[12 + b], 0x44);
        __m512i y1 = _mm512_shuffle_i32x4(u[8 + b], u[12 + b], 0xEE);
        o[b] = _mm512_shuffle_i32x4(x0, y0, 0x88);
        o[4 + b] = _mm512_shuffle_i32x4(x0, y0, 0xDD);
        o[8 + b] = _mm512_shuffle_i32x4(x1, y1, 0x88);
        o[12 + b] = _mm512_shuffle_i32x4(x1, y1, 0xDD);
    }
}

#endif
