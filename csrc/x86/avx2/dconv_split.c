/* x86/avx2/dconv_split.c - the direct convs' split kernel (conv_split.c; dynamic and static): the
 * kernel of x86/static_conv256.h with the weight as vpmaddubsw's unsigned side, w ^ 0x80 =
 * w + 128 (once per K-group), against the image's int8 codes, whose channel pairs the driver
 * keeps at |a + b| <= 128 (255 * 128 < 32767: exact).  Three operations per 32 multiply-adds
 * against the sign trick's four (static_conv.c), and no |w| register: a tile of 6 pixels.  The
 * sums are sum (w + 128) * x; the driver's pix_shift (-128 * sum x over the pixel's receptive
 * field) and corr (the cut-off parts of breaking pairs) make them the exact sum w * x.
 *
 * Compiled with -mavx2 (CMakeLists.txt); dispatch.c installs the table only on AVX2 CPUs. */
#include <string.h>

#include "mq.h"

#if defined(__x86_64__) && defined(__AVX2__)
#include <immintrin.h>

#define SC_WIDE 6 /* 12 accumulators + both halves of w + 128 + ones + the broadcast: the 16 ymm */
#define SC_GROUP_PREP                                                                         \
    const __m256i flip = _mm256_set1_epi8((char)0x80), ones = _mm256_set1_epi16(1);           \
    const __m256i u0 = _mm256_xor_si256(w0, flip), u1 = _mm256_xor_si256(w1, flip);
#define SC_DOT(acc_a, acc_b, xb)                                                              \
    acc_a = _mm256_add_epi32(acc_a, _mm256_madd_epi16(_mm256_maddubs_epi16(u0, xb), ones));  \
    acc_b = _mm256_add_epi32(acc_b, _mm256_madd_epi16(_mm256_maddubs_epi16(u1, xb), ones));
#include "x86/static_conv256.h"

#define SPREAD_AHEAD 2 /* panels (of every tap): the weight is in L3 or further by the time the cuts are known */

/* mq_ref_dconv_split_spread's sums, a panel's line at a time: the same vpmaddubsw as the kernel. */
static void spread(const int8_t *const *w, int32_t *const *v, int64_t taps, int64_t panel_bytes, int64_t panels,
                   uint32_t cuts) {
    const __m256i c = _mm256_set1_epi32((int)cuts), flip = _mm256_set1_epi8((char)0x80);
    const __m256i ones = _mm256_set1_epi16(1);
    for (int64_t p = 0; p < panels; p++)
        for (int64_t t = 0; t < taps; t++) {
            const int8_t *line = w[t] + p * panel_bytes;
            if (p + SPREAD_AHEAD < panels) _mm_prefetch((const char *)(line + SPREAD_AHEAD * panel_bytes), _MM_HINT_T0);
            const __m256i lo = _mm256_xor_si256(_mm256_loadu_si256((const __m256i *)line), flip);
            const __m256i hi = _mm256_xor_si256(_mm256_loadu_si256((const __m256i *)(line + 32)), flip);
            __m256i *out = (__m256i *)(v[t] + p * MQ_PANEL);
            _mm256_storeu_si256(out, _mm256_add_epi32(_mm256_loadu_si256(out),
                                                      _mm256_madd_epi16(_mm256_maddubs_epi16(lo, c), ones)));
            _mm256_storeu_si256(out + 1, _mm256_add_epi32(_mm256_loadu_si256(out + 1),
                                                          _mm256_madd_epi16(_mm256_maddubs_epi16(hi, c), ones)));
        }
}

const mq_kernels mq_avx2_dconv_split_table = {
    .dconv_split = static_conv256,
    .dconv_split_spread = spread,
};

#else /* no AVX2 compiler support: no split kernel */
const mq_kernels mq_avx2_dconv_split_table = {.name = NULL};
#endif
