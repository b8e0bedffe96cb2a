/* x86/avx2/h16_dconv.c - AVX2/FMA/F16C twins of mq_ref_h16_dconv_panel / mq_ref_f32_dconv_panel / mq_ref_h16_dconv
 * (the fp16 / bf16 weight direct Conv2d, h16_dconv.c).
 *
 * Compiled with -mavx2 -mfma -mf16c (CMakeLists.txt); dispatch.c installs this
 * table only where cpuid reports F16C.  A tile is 6 output pixels x 16 output
 * channels (two ymm): per tap the two panel vectors are loaded once and each
 * pixel's input value is broadcast and multiply-added into its two
 * accumulators (an outer product): 12 accumulators + 2 weights + 1 broadcast
 * of the 16 ymm registers.  A block's lanes (ldp, a multiple of 16) go 16 at
 * a time. */
#include "mq.h"

#if defined(__x86_64__) && defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#include <immintrin.h>

#include "x86/h16_dconv_panel.h"

#define MQ_INLINE static inline __attribute__((always_inline))
#define R 6

/* rows (<= R) pixels from pix, the 16 lanes at panel / bias / out: a short tile
 * repeats pixel 0 (its sums are dropped) */
MQ_INLINE void tile(const float *x, const int64_t *pix, const int rows, const int64_t *off, int64_t kc,
                    const float *panel, int64_t ldp, const float *bias, int accumulate, float *out) {
    const float *p[R];
    __m256 acc[R][2];
    for (int r = 0; r < R; r++) {
        p[r] = x + pix[r < rows ? r : 0];
        for (int v = 0; v < 2; v++)
            acc[r][v] = _mm256_loadu_ps((accumulate && r < rows ? out + r * ldp : bias) + 8 * v);
    }
    for (int64_t t = 0; t < kc; t++) {
        const int64_t o = off[t];
        const __m256 w0 = _mm256_loadu_ps(panel + t * ldp), w1 = _mm256_loadu_ps(panel + t * ldp + 8);
        for (int r = 0; r < R; r++) {
            const __m256 xb = _mm256_broadcast_ss(p[r] + o);
            acc[r][0] = _mm256_fmadd_ps(xb, w0, acc[r][0]);
            acc[r][1] = _mm256_fmadd_ps(xb, w1, acc[r][1]);
        }
    }
    for (int r = 0; r < R; r++)
        if (r < rows)
            for (int v = 0; v < 2; v++) _mm256_storeu_ps(out + r * ldp + 8 * v, acc[r][v]);
}

static void h16_dconv(const float *x, const int64_t *pix, int64_t npix, const int64_t *off, int64_t kc,
                      const float *panel, int64_t ldp, const float *bias, int accumulate, float *out) {
    for (int64_t j = 0; j + 16 <= ldp; j += 16)
        for (int64_t s = 0; s < npix; s += R)
            tile(x, pix + s, npix - s < R ? (int)(npix - s) : R, off, kc, panel + j, ldp, bias + j, accumulate,
                 out + s * ldp + j);
}

const mq_kernels mq_avx2_h16_dconv_table = {
    .h16_dconv_panel = h16_dconv_panel,
    .f32_dconv_panel = f32_dconv_panel,
    .q4_dconv_panel = q4_dconv_panel,
    .h16_dconv = h16_dconv,
};

#else
const mq_kernels mq_avx2_h16_dconv_table = {.name = NULL};
#endif
