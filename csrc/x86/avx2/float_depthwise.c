/* x86/avx2/float_depthwise.c - AVX2 twins of mq_ref_f32_dw_lanes and mq_ref_f32_dw_interleave
 * (float_depthwise.c): a block of eight output channels of a float32 depthwise conv, the channels
 * in the lanes.
 *
 * A tile of eight output pixels keeps eight accumulators (independent FMA chains: they cover the
 * FMA latency); per tap one load of the eight channels' weights and one load and FMA a pixel.
 * Each lane is fmaf(w, x, acc) in tap order from the bias, the reference's bits.  The last tile of
 * a plane overlaps the one before rather than run smaller (its outputs are written twice, the
 * same); an 8 x 8 transpose turns the tile's pixels-by-channels into each channel's eight
 * consecutive pixels, one store a channel.  The interleaving is the same transpose the other way.
 *
 * Compiled with -mavx2 -mfma (CMakeLists.txt); dispatch.c installs the table only on AVX2 CPUs. */
#include "mq.h"

#if defined(__x86_64__) && defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>

#include "x86/transpose8_256.h"

/* Lanes [0, valid) of v (valid 1..7: a plane of fewer than eight pixels) by 4-, 2- and 1-float
 * stores (vmaskmovps stores ran several times slower on the AMD host) */
static inline void store_first(float *out, __m256 v, int64_t valid) {
    __m128 part = _mm256_castps256_ps128(v);
    if (valid >= 4) {
        _mm_storeu_ps(out, part);
        part = _mm256_extractf128_ps(v, 1);
        out += 4;
        valid -= 4;
    }
    if (valid >= 2) {
        _mm_storel_pi((__m64 *)out, part);
        part = _mm_movehl_ps(part, part);
        out += 2;
        valid -= 2;
    }
    if (valid) _mm_store_ss(out, part);
}

/* Pixels f0 .. f0 + P - 1 of every lane with an output. */
static inline __attribute__((always_inline)) void lanes_tile(const mq_f32_dw_lanes_args *a, int64_t f0, const int P) {
    __m256 acc[8];
    const float *at[8];
    const __m256 bias = _mm256_loadu_ps(a->bias);
#pragma GCC unroll 8
    for (int p = 0; p < P; p++) {
        acc[p] = bias;
        at[p] = a->src + a->pix[f0 + p] * MQ_DW_LANES;
    }
    for (int64_t t = 0; t < a->taps; t++) {
        const __m256 w = _mm256_loadu_ps(a->w + t * MQ_DW_LANES);
        const int64_t o = a->off[t] * MQ_DW_LANES;
#pragma GCC unroll 8
        for (int p = 0; p < P; p++) acc[p] = _mm256_fmadd_ps(w, _mm256_loadu_ps(at[p] + o), acc[p]);
    }
#pragma GCC unroll 8
    for (int p = P; p < 8; p++) acc[p] = _mm256_setzero_ps();
    mq_transpose8_ps(acc); /* acc[l]: lane l's pixels */
#pragma GCC unroll 8
    for (int l = 0; l < 8; l++) {
        if (!a->out[l]) continue;
        if (P == 8)
            _mm256_storeu_ps(a->out[l] + f0, acc[l]);
        else
            store_first(a->out[l] + f0, acc[l], P);
    }
}

/* Tiles of eight pixels, the last one overlapping the one before (the same bits written twice); a
 * plane of fewer pixels in one tile of them all. */
static void f32_dw_lanes_avx2(const mq_f32_dw_lanes_args *a) {
    const int64_t npix = a->npix;
    switch (npix < 8 ? npix : 8) {
    case 0: return;
    case 1: lanes_tile(a, 0, 1); return;
    case 2: lanes_tile(a, 0, 2); return;
    case 3: lanes_tile(a, 0, 3); return;
    case 4: lanes_tile(a, 0, 4); return;
    case 5: lanes_tile(a, 0, 5); return;
    case 6: lanes_tile(a, 0, 6); return;
    case 7: lanes_tile(a, 0, 7); return;
    default:
        for (int64_t f0 = 0;; f0 += 8) {
            if (f0 + 8 > npix) f0 = npix - 8;
            lanes_tile(a, f0, 8);
            if (f0 + 8 >= npix) return;
        }
    }
}

/* Eight elements of the eight planes at a time, transposed: each element's lanes one store. */
static void f32_dw_interleave_avx2(const float *const *src, const int64_t *pos, int64_t count, float *dst) {
    int64_t e = 0;
    for (; e + 8 <= count; e += 8) {
        __m256 r[8];
#pragma GCC unroll 8
        for (int l = 0; l < 8; l++) r[l] = _mm256_loadu_ps(src[l] + e);
        mq_transpose8_ps(r);
#pragma GCC unroll 8
        for (int j = 0; j < 8; j++)
            if (pos[e + j] >= 0) _mm256_storeu_ps(dst + pos[e + j] * MQ_DW_LANES, r[j]);
    }
    for (; e < count; e++)
        if (pos[e] >= 0)
            for (int l = 0; l < 8; l++) dst[pos[e] * MQ_DW_LANES + l] = src[l][e];
}

const mq_kernels mq_avx2_float_dw_table = {
    .f32_dw_lanes = f32_dw_lanes_avx2,
    .f32_dw_interleave = f32_dw_interleave_avx2,
};

#else /* no AVX2 / FMA compiler support: the reference stays */
const mq_kernels mq_avx2_float_dw_table = {.name = NULL};
#endif
