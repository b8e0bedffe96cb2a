/* x86/avx2/static_conv_ux.c - the direct conv on codes that are never negative, with the codes as
 * vpmaddubsw's unsigned side and the weight as its signed side: the kernel of x86/static_conv256.h
 * in three operations per 32 multiply-adds (vpmaddubsw, vpmaddwd, vpaddd) against the sign trick's
 * four (static_conv.c), and nothing to correct after it, unlike the split (dconv_split.c).  Exact
 * while each pair of channels of a pixel sums to at most 255 (|w| <= 128: 255 * 128 < 32767): the
 * dynamic conv's images of codes 0..127 (a post-ReLU image's symmetric codes, reduce_range's 7-bit
 * ones), static int8's work items of codes x - x_zp (0..254 at a ReLU output's zero-point -127)
 * whose pairs keep it.  The sums are sum w * x, as static_conv's.
 *
 * Compiled with -mavx2 (CMakeLists.txt); dispatch.c installs the table only on AVX2 CPUs. */
#include <string.h>

#include "mq.h"

#if defined(__x86_64__) && defined(__AVX2__)
#include <immintrin.h>

#define SC_WIDE 6 /* 12 accumulators + both halves of the weight + ones + the broadcast: the 16 ymm */
#define SC_GROUP_PREP const __m256i ones = _mm256_set1_epi16(1);
#define SC_DOT(acc_a, acc_b, xb)                                                              \
    acc_a = _mm256_add_epi32(acc_a, _mm256_madd_epi16(_mm256_maddubs_epi16(xb, w0), ones));  \
    acc_b = _mm256_add_epi32(acc_b, _mm256_madd_epi16(_mm256_maddubs_epi16(xb, w1), ones));
#include "x86/static_conv256.h"

const mq_kernels mq_avx2_static_conv_ux_table = {
    .static_conv_ux = static_conv256,
};

#else /* no AVX2 compiler support: no such kernel */
const mq_kernels mq_avx2_static_conv_ux_table = {.name = NULL};
#endif
