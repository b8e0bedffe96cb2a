/* x86/avx2/static_conv.c - AVX2 twin of mq_ref_static_conv (static_int8.c): the kernel of
 * x86/static_conv256.h with the maddubs sign trick of x86/avx2/linear.c.
 *
 * Compiled with -mavx2 (CMakeLists.txt); dispatch.c installs the table only on AVX2 CPUs.
 * vpmaddubsw takes |w| (0..128 as uint8, once per K-group) times sign(w) * x: pair sums at
 * most 2 * 128 * 127 < 32767, exact because activations are -127..127 (never -128, the
 * static encoding). */
#include <string.h>

#include "mq.h"

#if defined(__x86_64__) && defined(__AVX2__)
#include <immintrin.h>

#define SC_WIDE 4 /* 8 accumulators + both halves of w and |w| + ones: the 16 ymm */
#define SC_GROUP_PREP const __m256i aw0 = _mm256_abs_epi8(w0), aw1 = _mm256_abs_epi8(w1), ones = _mm256_set1_epi16(1);
#define SC_DOT(acc_a, acc_b, xb)                                                                       \
    acc_a = _mm256_add_epi32(acc_a, _mm256_madd_epi16(_mm256_maddubs_epi16(aw0, _mm256_sign_epi8(xb, w0)), ones)); \
    acc_b = _mm256_add_epi32(acc_b, _mm256_madd_epi16(_mm256_maddubs_epi16(aw1, _mm256_sign_epi8(xb, w1)), ones));
#include "x86/static_conv256.h"

const mq_kernels mq_avx2_static_table = {
    .static_conv = static_conv256,
    .static_conv_x_u8 = 0,
};

#else /* no AVX2 compiler support: keep the scalar kernel */
const mq_kernels mq_avx2_static_table = {.name = NULL};
#endif
