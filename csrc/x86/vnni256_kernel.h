/* x86/vnni256_kernel.h - the dynamic int8 matmul with 256-bit vpdpbusd, as
 * static functions for the two compile units that build it:
 *   x86/avx_vnni/linear.c: VEX encoding (AVX-VNNI: Alder Lake and later, Zen 5),
 *     installed by dispatch.c on the AVX2 level when the CPU has avx_vnni;
 *   x86/avx512_vnni/linear256.c: EVEX encoding of the same instruction (AVX-512
 *     VNNI + VL), so the kernel's arithmetic is tested on AVX-512 VNNI machines
 *     too (_C.use_vnni256_for_tests).
 * A header rather than one .c compiled twice: each unit keeps its own -m flags
 * in CMakeLists.txt (set per source file) and no .c includes another.
 *
 * The including unit defines MQ_DPBUSD256(acc, x, w) (the intrinsic of its
 * encoding) and includes this after <immintrin.h> and mq.h.
 *
 * A 16-channel panel is read as two 8-channel halves (32 bytes of each
 * 64-byte K-group); activations arrive as uint8 = int8 + 128 (qgemm_x_u8),
 * and the epilogue subtracts 128 * column sum, as x86/avx512_vnni/linear.c does, so
 * the int32 accumulators equal mq_ref_qgemm's exactly. */
#ifndef MQ_VNNI256_KERNEL_H
#define MQ_VNNI256_KERNEL_H

#define MQ_INLINE static inline __attribute__((always_inline))
#include "x86/linear_store256.h"
#include "x86/gemv4_256.h"

/* MT rows x one panel, named accumulators (a macro with a constant MT). */
#define VROW_DECL(i) __m256i acc##i##a = _mm256_setzero_si256(), acc##i##b = acc##i##a;
#define VROW(i, MT)                                                                           \
    if ((i) < (MT)) {                                                                         \
        int32_t x4;                                                                           \
        memcpy(&x4, x + (i) * ldx + g * 4, 4);                                                \
        const __m256i xb = _mm256_set1_epi32(x4);                                             \
        acc##i##a = MQ_DPBUSD256(acc##i##a, xb, w0);                                          \
        acc##i##b = MQ_DPBUSD256(acc##i##b, xb, w1);                                          \
    }
#define VROW_STORE(i, MT)                                                                     \
    if ((i) < (MT)) {                                                                         \
        qgemm_store8(a, acc##i##a, m0 + (i), p * MQ_PANEL);                                         \
        if (p * MQ_PANEL + 8 < a->n) qgemm_store8(a, acc##i##b, m0 + (i), p * MQ_PANEL + 8);        \
    }
#define VTILE(MT)                                                                             \
    static void vtile_##MT(const mq_qgemm_args *a, int64_t m0, int64_t p) {                   \
        const int64_t groups = a->kp / MQ_KGROUP, ldx = a->ldx;                               \
        const int8_t *w = a->w + p * groups * 64;                                             \
        const uint8_t *x = a->x + m0 * ldx;                                                   \
        VROW_DECL(0) VROW_DECL(1) VROW_DECL(2) VROW_DECL(3)                                   \
        for (int64_t g = 0; g < groups; g++) {                                                \
            const __m256i w0 = _mm256_loadu_si256((const __m256i *)(w + g * 64));             \
            const __m256i w1 = _mm256_loadu_si256((const __m256i *)(w + g * 64 + 32));        \
            VROW(0, MT) VROW(1, MT) VROW(2, MT) VROW(3, MT)                                   \
        }                                                                                     \
        VROW_STORE(0, MT) VROW_STORE(1, MT) VROW_STORE(2, MT) VROW_STORE(3, MT)               \
    }

typedef void (*vtile_fn)(const mq_qgemm_args *a, int64_t m0, int64_t p);
VTILE(1) VTILE(2) VTILE(3) VTILE(4)
static const vtile_fn vtiles[5] = {NULL, vtile_1, vtile_2, vtile_3, vtile_4};

/* One row x 4 panels side by side: 4 DRAM streams at batch 1 (x86/gemv4_256.h) */
#define VNNI_ACCUMULATE(acc, wv) MQ_DPBUSD256(acc, xb, wv)
MQ_GEMV4(vgemv_4panels, VNNI_ACCUMULATE, qgemm_store8)

static void qgemm_vnni256(const mq_qgemm_args *a, int64_t p0, int64_t p1) {
    if (!a->x_u8) { /* activations not shifted: only the reference takes them */
        mq_ref_qgemm(a, p0, p1);
        return;
    }
    if (a->m == 1) { /* Intel Xeon, AVX-VNNI: 1.10-1.18x the one-panel tile's speed, 1 or 2 threads */
        int64_t p = p0;
        for (; p + 4 <= p1; p += 4) vgemv_4panels(a, p);
        for (; p < p1; p++) vtiles[1](a, 0, p);
        return;
    }
    for (int64_t p = p0; p < p1; p++)
        for (int64_t m0 = 0; m0 < a->m; m0 += 4) vtiles[a->m - m0 < 4 ? a->m - m0 : 4](a, m0, p);
}

#endif /* MQ_VNNI256_KERNEL_H */
