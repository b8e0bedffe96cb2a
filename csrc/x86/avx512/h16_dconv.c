/* x86/avx512/h16_dconv.c - AVX-512 twins of mq_ref_h16_dconv_panel / mq_ref_f32_dconv_panel / mq_ref_h16_dconv
 * (the fp16 / bf16 weight direct Conv2d, h16_dconv.c).
 *
 * Compiled with -mavx512f -mavx512bw -mavx512vl -mavx512dq -mavx2 -mfma -mf16c
 * (CMakeLists.txt) and installed by dispatch.c only on CPUs with all of them.
 * A tile is R output pixels x V zmm of output channels (V = ldp / 16): per tap
 * V panel vectors are loaded once and each pixel's input value is broadcast
 * and multiply-added into its V accumulators (an outer product).  R x V
 * accumulators: 6 x 4 = 24 (+ 4 weights + 1 broadcast of the 32 registers),
 * 8 x 3, 8 x 2, 8 x 1 (8 chains hide the FMA latency of two units). */
#include "mq.h"

#if defined(__x86_64__) && defined(__AVX512F__) && defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#include <immintrin.h>

#include "x86/h16_dconv_panel.h"

#define MQ_INLINE static inline __attribute__((always_inline))
#define MAX_R 8

/* rows (<= R) pixels from pix: a short tile repeats pixel 0 (its sums are dropped) */
MQ_INLINE void tile(const float *x, const int64_t *pix, const int rows, const int64_t *off, int64_t kc,
                    const float *panel, int64_t ldp, const float *bias, int accumulate, float *out, const int V,
                    const int R) {
    const float *p[MAX_R];
    __m512 acc[MAX_R][4];
    for (int r = 0; r < R; r++) {
        p[r] = x + pix[r < rows ? r : 0];
        for (int v = 0; v < V; v++)
            acc[r][v] = _mm512_loadu_ps((accumulate && r < rows ? out + r * ldp : bias) + 16 * v);
    }
    for (int64_t t = 0; t < kc; t++) {
        const int64_t o = off[t];
        const float *wt = panel + t * ldp;
        __m512 wv[4];
        for (int v = 0; v < V; v++) wv[v] = _mm512_loadu_ps(wt + 16 * v);
        for (int r = 0; r < R; r++) {
            const __m512 xb = _mm512_set1_ps(p[r][o]);
            for (int v = 0; v < V; v++) acc[r][v] = _mm512_fmadd_ps(xb, wv[v], acc[r][v]);
        }
    }
    for (int r = 0; r < R; r++)
        if (r < rows)
            for (int v = 0; v < V; v++) _mm512_storeu_ps(out + r * ldp + 16 * v, acc[r][v]);
}

MQ_INLINE void tiles(const float *x, const int64_t *pix, int64_t npix, const int64_t *off, int64_t kc,
                     const float *panel, int64_t ldp, const float *bias, int accumulate, float *out, const int V,
                     const int R) {
    for (int64_t s = 0; s < npix; s += R)
        tile(x, pix + s, npix - s < R ? (int)(npix - s) : R, off, kc, panel, ldp, bias, accumulate, out + s * ldp, V,
             R);
}

static void h16_dconv(const float *x, const int64_t *pix, int64_t npix, const int64_t *off, int64_t kc,
                      const float *panel, int64_t ldp, const float *bias, int accumulate, float *out) {
    switch (ldp / 16) { /* the driver's blocks have 16..64 lanes */
    case 4: tiles(x, pix, npix, off, kc, panel, ldp, bias, accumulate, out, 4, 6); break;
    case 3: tiles(x, pix, npix, off, kc, panel, ldp, bias, accumulate, out, 3, 8); break;
    case 2: tiles(x, pix, npix, off, kc, panel, ldp, bias, accumulate, out, 2, 8); break;
    case 1: tiles(x, pix, npix, off, kc, panel, ldp, bias, accumulate, out, 1, 8); break;
    default: mq_ref_h16_dconv(x, pix, npix, off, kc, panel, ldp, bias, accumulate, out); break;
    }
}

const mq_kernels mq_avx512_h16_dconv_table = {
    .h16_dconv_panel = h16_dconv_panel,
    .f32_dconv_panel = f32_dconv_panel,
    .q4_dconv_panel = q4_dconv_panel,
    .h16_dconv = h16_dconv,
};

#else
const mq_kernels mq_avx512_h16_dconv_table = {.name = NULL};
#endif
