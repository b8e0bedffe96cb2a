/* x86/avx512_vnni/linear256.c - the 256-bit VNNI kernel of x86/avx_vnni/linear.c
 * (x86/vnni256_kernel.h) with the EVEX encoding of vpdpbusd (AVX-512 VNNI + VL):
 * the same arithmetic, testable on AVX-512 VNNI machines that lack AVX-VNNI
 * (_C.use_vnni256_for_tests). */
#include "mq.h"

#if defined(__x86_64__) && defined(__AVX512VNNI__) && defined(__AVX512VL__)
#include <immintrin.h>

#define MQ_DPBUSD256 _mm256_dpbusd_epi32
#include "x86/vnni256_kernel.h"

const mq_kernels mq_vnni256_evex_linear_table = {
    .qgemm = qgemm_vnni256,
    .qgemm_x_u8 = 1, /* vpdpbusd multiplies unsigned activations: int8 + 128 */
    .qgemm_name = "vnni256_evex",
};

#else
const mq_kernels mq_vnni256_evex_linear_table = {.name = NULL};
#endif
