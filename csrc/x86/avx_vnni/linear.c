/* x86/avx_vnni/linear.c - the dynamic int8 matmul with AVX-VNNI's (VEX) 256-bit
 * vpdpbusd: AVX2 registers, but vpdpbusd instead of AVX2's maddubs sign trick.
 * Compiled with -mavx2 -mfma -mavxvnni and installed by dispatch.c on the AVX2
 * level only when the CPU has avx_vnni.  The kernel is vnni256_kernel.h,
 * shared with its EVEX build (x86/avx512_vnni/linear256.c). */
#include "mq.h"

#if defined(__x86_64__) && defined(__AVXVNNI__)
#include <immintrin.h>

#define MQ_DPBUSD256 _mm256_dpbusd_avx_epi32
#include "x86/vnni256_kernel.h"

const mq_kernels mq_avxvnni_linear_table = {
    .qgemm = qgemm_vnni256,
    .qgemm_x_u8 = 1, /* vpdpbusd multiplies unsigned activations: int8 + 128 */
    .qgemm_name = "avx_vnni",
};

#else
const mq_kernels mq_avxvnni_linear_table = {.name = NULL};
#endif
