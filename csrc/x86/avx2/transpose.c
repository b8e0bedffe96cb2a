/* x86/avx2/transpose.c - AVX2-level twins of transpose.c's layout transposes (same bits):
 * - mq_ref_nhwc_bytes: NCHW bytes to NHWC in 16 x 16 tiles (16 channels of 16 pixels: four rounds
 *   of unpacks, 64 register operations for 256 bytes, where the reference's 4-channel words take
 *   ~2.5 per byte);
 * - mq_ref_nchw_f32: NHWC float sums to NCHW in 8 x 8 tiles, the scale's product and the bias's
 *   sum on whole output rows of 8 pixels.
 * The channels and pixels past the tiles run the references' operations.
 *
 * Compiled with -mavx2 (CMakeLists.txt); dispatch.c installs the table only on AVX2 CPUs. */
#include <stdint.h>

#include "mq.h"

#if defined(__x86_64__) && defined(__AVX2__)
#include <immintrin.h>

#include "x86/transpose8_256.h"

/* dst[j * channels + k] = src[k * plane + j] ^ flip for the 16 x 16 tile at (k0, j0) */
static inline __attribute__((always_inline)) void tile16(const uint8_t *src, int64_t plane, int64_t channels,
                                                         __m128i flip, uint8_t *dst) {
    __m128i a[16], b[16], c[16], d[16];
    for (int k = 0; k < 16; k++) a[k] = _mm_loadu_si128((const __m128i *)(src + k * plane));
    /* b[2m + h]: rows 2m, 2m + 1 interleaved, pixels 8h .. 8h + 7 */
    for (int m = 0; m < 8; m++) {
        b[2 * m] = _mm_unpacklo_epi8(a[2 * m], a[2 * m + 1]);
        b[2 * m + 1] = _mm_unpackhi_epi8(a[2 * m], a[2 * m + 1]);
    }
    /* c[4g + q]: rows 4g .. 4g + 3, pixels 4q .. 4q + 3 */
    for (int g = 0; g < 4; g++)
        for (int h = 0; h < 2; h++) {
            c[4 * g + 2 * h] = _mm_unpacklo_epi16(b[4 * g + h], b[4 * g + 2 + h]);
            c[4 * g + 2 * h + 1] = _mm_unpackhi_epi16(b[4 * g + h], b[4 * g + 2 + h]);
        }
    /* d[8e + r]: rows 8e .. 8e + 7, pixels 2r, 2r + 1 */
    for (int e = 0; e < 2; e++)
        for (int q = 0; q < 4; q++) {
            d[8 * e + 2 * q] = _mm_unpacklo_epi32(c[8 * e + q], c[8 * e + 4 + q]);
            d[8 * e + 2 * q + 1] = _mm_unpackhi_epi32(c[8 * e + q], c[8 * e + 4 + q]);
        }
    /* pixel j: rows 0 .. 15 */
    for (int r = 0; r < 8; r++) {
        _mm_storeu_si128((__m128i *)(dst + (2 * r) * channels),
                         _mm_xor_si128(_mm_unpacklo_epi64(d[r], d[8 + r]), flip));
        _mm_storeu_si128((__m128i *)(dst + (2 * r + 1) * channels),
                         _mm_xor_si128(_mm_unpackhi_epi64(d[r], d[8 + r]), flip));
    }
}

static void nhwc_bytes_avx2(const uint8_t *src, int64_t plane, int64_t channels, int64_t width, uint8_t flip,
                            uint8_t *dst) {
    const int64_t c16 = channels - channels % 16, w16 = width - width % 16;
    const __m128i vflip = _mm_set1_epi8((char)flip);
    /* pixels outside, channels inside: each 16 pixels' output (16 x channels bytes) is written
     * whole, and each input row's cache line serves 4 of them (channel tiles outside made one pass
     * over the whole output per 16 channels: 1.2-1.7x slower once it outgrew the cache) */
    for (int64_t j0 = 0; j0 < w16; j0 += 16)
        for (int64_t k0 = 0; k0 < c16; k0 += 16)
            tile16(src + k0 * plane + j0, plane, channels, vflip, dst + j0 * channels + k0);
    if (w16 < width) /* the last pixels, every channel */
        mq_ref_nhwc_bytes(src + w16, plane, channels, width - w16, flip, dst + w16 * channels);
    for (int64_t k = c16; k < channels; k++) /* the last channels of the other pixels */
        for (int64_t j = 0; j < w16; j++) dst[j * channels + k] = src[k * plane + j] ^ flip;
}

static void nchw_f32_avx2(const float *acc, int64_t np, int64_t n, const float *s, const float *bias, float *y,
                          int64_t ld) {
    const int64_t p8 = np - np % 8, n8 = n - n % 8;
    for (int64_t p0 = 0; p0 < p8; p0 += 8)
        for (int64_t j0 = 0; j0 < n8; j0 += 8) {
            __m256 r[8];
            for (int k = 0; k < 8; k++) r[k] = _mm256_loadu_ps(acc + (p0 + k) * n + j0);
            mq_transpose8_ps(r);
            for (int k = 0; k < 8; k++) {
                __m256 v = r[k];
                if (s) {
                    v = _mm256_mul_ps(v, _mm256_set1_ps(s[j0 + k]));
                    if (bias) v = _mm256_add_ps(v, _mm256_set1_ps(bias[j0 + k]));
                }
                _mm256_storeu_ps(y + (j0 + k) * ld + p0, v);
            }
        }
    for (int64_t j = n8; j < n; j++) /* the last channels of the other pixels */
        for (int64_t p = 0; p < p8; p++) {
            const float v = acc[p * n + j];
            y[j * ld + p] = !s ? v : bias ? v * s[j] + bias[j] : v * s[j];
        }
    if (p8 < np) /* the last pixels, every channel */
        mq_ref_nchw_f32(acc + p8 * n, np - p8, n, s, bias, y + p8, ld);
}

const mq_kernels mq_avx2_transpose_table = {
    .nhwc_bytes = nhwc_bytes_avx2,
    .nchw_f32 = nchw_f32_avx2,
};

#else
const mq_kernels mq_avx2_transpose_table = {.name = NULL};
#endif
