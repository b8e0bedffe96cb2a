/* x86/avx_vnni/static_conv.c - the static int8 direct conv (x86/static_conv256.h) with
 * AVX-VNNI's (VEX) 256-bit vpdpbusd on int8 + 128 activations: AVX2 registers, no sign trick.
 * Compiled with -mavx2 -mavxvnni; dispatch.c installs it on the AVX2 level only when the CPU
 * has avx_vnni. */
#include <string.h>

#include "mq.h"

#if defined(__x86_64__) && defined(__AVXVNNI__)
#include <immintrin.h>

#define SC_WIDE 6 /* 12 accumulators + both halves of w + the broadcast */
#define SC_GROUP_PREP
#define SC_DOT(acc_a, acc_b, xb)                       \
    acc_a = _mm256_dpbusd_avx_epi32(acc_a, xb, w0);    \
    acc_b = _mm256_dpbusd_avx_epi32(acc_b, xb, w1);
#include "x86/static_conv256.h"

const mq_kernels mq_avxvnni_static_table = {
    .static_conv = static_conv256,
    .static_conv_x_u8 = 1, /* vpdpbusd multiplies unsigned activations: int8 + 128 */
};

#else
const mq_kernels mq_avxvnni_static_table = {.name = NULL};
#endif
