/* linear_vnni256_evex.c - linear_vnni256.c compiled with the EVEX encoding of
 * 256-bit vpdpbusd (AVX-512 VNNI + VL): the same kernel, testable on AVX-512
 * VNNI machines that lack AVX-VNNI (_C.use_vnni256_for_tests). */
#define MQ_VNNI256_EVEX 1
#include "linear_vnni256.c"
