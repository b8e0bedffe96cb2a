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

const mq_kernels mq_avx2_dconv_split_table = {
    .dconv_split = static_conv256,
};

#else /* no AVX2 compiler support: no split kernel */
const mq_kernels mq_avx2_dconv_split_table = {.name = NULL};
#endif
