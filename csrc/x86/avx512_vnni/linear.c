/* x86/avx512_vnni/linear.c - AVX-512 VNNI twin of mq_ref_qgemm.
 *
 * Compiled with -mavx512f -mavx512bw -mavx512vl -mavx512dq -mavx512vnni
 * (CMakeLists.txt); dispatch.c installs its table only on CPUs with all of
 * them.  One zmm holds the 16 channels of a panel: vpdpbusd multiplies the
 * uint8 activations (int8 + 128) by one 64-byte K-group of the packed
 * weight, and the epilogue subtracts 128 * column sum, which makes the int32
 * accumulators exactly those of the reference. */
#include "mq.h"

#if defined(__x86_64__) && defined(__AVX512F__) && defined(__AVX512VNNI__)
#include <immintrin.h>

#include "x86/avx512_vnni/qgemm_store.h"

/* MT rows x NT panels of accumulators in registers over the whole K: each
 * 64-byte weight group is loaded once and used by MT rows.  Spelled out with
 * named accumulators (a macro, MT and NT constants) because GCC keeps an
 * array of vectors indexed in loops on the stack. */
#define QACC_DECL(i) __m512i acc##i##0 = _mm512_setzero_si512(), acc##i##1 = acc##i##0, acc##i##2 = acc##i##0, \
                             acc##i##3 = acc##i##0;
#define QACC_ROW(i, MT, NT)                                                  \
    if ((i) < (MT)) {                                                        \
        int32_t x4;                                                          \
        memcpy(&x4, x + (i) * ldx + g * 4, 4);                               \
        const __m512i xb = _mm512_set1_epi32(x4);                            \
        acc##i##0 = _mm512_dpbusd_epi32(acc##i##0, xb, w0);                  \
        if ((NT) > 1) acc##i##1 = _mm512_dpbusd_epi32(acc##i##1, xb, w1);    \
        if ((NT) > 2) acc##i##2 = _mm512_dpbusd_epi32(acc##i##2, xb, w2);    \
        if ((NT) > 3) acc##i##3 = _mm512_dpbusd_epi32(acc##i##3, xb, w3);    \
    }
#define QACC_STORE(i, MT, NT)                                                \
    if ((i) < (MT)) {                                                        \
        qgemm_store(a, acc##i##0, m0 + (i), p);                              \
        if ((NT) > 1) qgemm_store(a, acc##i##1, m0 + (i), p + 1);            \
        if ((NT) > 2) qgemm_store(a, acc##i##2, m0 + (i), p + 2);            \
        if ((NT) > 3) qgemm_store(a, acc##i##3, m0 + (i), p + 3);            \
    }
#define QTILE(MT, NT)                                                                               \
    static void qtile_##MT##_##NT(const mq_qgemm_args *a, int64_t m0, int64_t p) {                 \
        const int64_t groups = a->kp / MQ_KGROUP, ldx = a->ldx;                                     \
        const int8_t *w = a->w + p * groups * 64;                                                   \
        const uint8_t *x = a->x + m0 * ldx;                                                         \
        QACC_DECL(0) QACC_DECL(1) QACC_DECL(2) QACC_DECL(3)                                         \
        QACC_DECL(4) QACC_DECL(5) QACC_DECL(6) QACC_DECL(7)                                         \
        for (int64_t g = 0; g < groups; g++) {                                                      \
            const __m512i w0 = _mm512_loadu_si512(w + g * 64);                                     \
            const __m512i w1 = (NT) > 1 ? _mm512_loadu_si512(w + (groups + g) * 64) : w0;           \
            const __m512i w2 = (NT) > 2 ? _mm512_loadu_si512(w + (2 * groups + g) * 64) : w0;       \
            const __m512i w3 = (NT) > 3 ? _mm512_loadu_si512(w + (3 * groups + g) * 64) : w0;       \
            QACC_ROW(0, MT, NT) QACC_ROW(1, MT, NT) QACC_ROW(2, MT, NT) QACC_ROW(3, MT, NT)         \
            QACC_ROW(4, MT, NT) QACC_ROW(5, MT, NT) QACC_ROW(6, MT, NT) QACC_ROW(7, MT, NT)         \
        }                                                                                           \
        QACC_STORE(0, MT, NT) QACC_STORE(1, MT, NT) QACC_STORE(2, MT, NT) QACC_STORE(3, MT, NT)     \
        QACC_STORE(4, MT, NT) QACC_STORE(5, MT, NT) QACC_STORE(6, MT, NT) QACC_STORE(7, MT, NT)     \
    }

typedef void (*qtile_fn)(const mq_qgemm_args *a, int64_t m0, int64_t p);
QTILE(1, 3) QTILE(2, 3) QTILE(3, 3) QTILE(4, 3) QTILE(5, 3) QTILE(6, 3) QTILE(7, 3) QTILE(8, 3)
QTILE(1, 1) QTILE(2, 1) QTILE(3, 1) QTILE(4, 1) QTILE(5, 1) QTILE(6, 1) QTILE(7, 1) QTILE(8, 1)
/* One row, one panel: four accumulators over K-groups g mod 4 (integer
 * sums, so the split is exact) hide vpdpbusd's latency on a single stream. */
static void qtile_1_1_split(const mq_qgemm_args *a, int64_t m0, int64_t p) {
    const int64_t groups = a->kp / MQ_KGROUP;
    const int8_t *w = a->w + p * groups * 64;
    const int32_t *x = (const int32_t *)(const void *)(a->x + m0 * a->ldx); /* kp and ldx: multiples of 4 */
    __m512i acc0 = _mm512_setzero_si512(), acc1 = acc0, acc2 = acc0, acc3 = acc0;
    int64_t g = 0;
    for (; g + 4 <= groups; g += 4) {
        acc0 = _mm512_dpbusd_epi32(acc0, _mm512_set1_epi32(x[g]), _mm512_loadu_si512(w + g * 64));
        acc1 = _mm512_dpbusd_epi32(acc1, _mm512_set1_epi32(x[g + 1]), _mm512_loadu_si512(w + g * 64 + 64));
        acc2 = _mm512_dpbusd_epi32(acc2, _mm512_set1_epi32(x[g + 2]), _mm512_loadu_si512(w + g * 64 + 128));
        acc3 = _mm512_dpbusd_epi32(acc3, _mm512_set1_epi32(x[g + 3]), _mm512_loadu_si512(w + g * 64 + 192));
    }
    for (; g < groups; g++)
        acc0 = _mm512_dpbusd_epi32(acc0, _mm512_set1_epi32(x[g]), _mm512_loadu_si512(w + g * 64));
    qgemm_store(a, _mm512_add_epi32(_mm512_add_epi32(acc0, acc1), _mm512_add_epi32(acc2, acc3)), m0, p);
}

/* One row x 4 panels read side by side: 4 DRAM streams, where one core gets more of the
 * bandwidth than from the one stream of qtile_1_1_split (Intel Xeon with AMX, 1 Dec: 13.8
 * GB/s from 1 stream, 16.4 from 4; Zen 3: 9.4 and 15).  Two accumulators per panel (groups
 * g and g + 1), 8 vpdpbusd chains; integer sums, so the same bits as the one-panel tiles. */
#define GEMV4_ACC(s) __m512i acc##s##a = _mm512_setzero_si512(), acc##s##b = acc##s##a;
#define GEMV4_STEP(s)                                                                               \
    acc##s##a = _mm512_dpbusd_epi32(acc##s##a, x0, _mm512_loadu_si512(w + (s) * panel_bytes + g * 64)); \
    acc##s##b = _mm512_dpbusd_epi32(acc##s##b, x1, _mm512_loadu_si512(w + (s) * panel_bytes + g * 64 + 64));
#define GEMV4_TAIL(s) \
    acc##s##a = _mm512_dpbusd_epi32(acc##s##a, x0, _mm512_loadu_si512(w + (s) * panel_bytes + g * 64));
#define GEMV4_STORE(s) qgemm_store(a, _mm512_add_epi32(acc##s##a, acc##s##b), 0, p + (s));
static void qgemv_4panels(const mq_qgemm_args *a, int64_t p) {
    const int64_t groups = a->kp / MQ_KGROUP, panel_bytes = groups * 64;
    const int8_t *w = a->w + p * panel_bytes;
    GEMV4_ACC(0) GEMV4_ACC(1) GEMV4_ACC(2) GEMV4_ACC(3)
    int64_t g = 0;
    int32_t x4[2]; /* 4 activation bytes a group (memcpy: no aliasing or alignment assumed) */
    for (; g + 2 <= groups; g += 2) {
        memcpy(x4, a->x + g * 4, 8);
        const __m512i x0 = _mm512_set1_epi32(x4[0]), x1 = _mm512_set1_epi32(x4[1]);
        GEMV4_STEP(0) GEMV4_STEP(1) GEMV4_STEP(2) GEMV4_STEP(3)
    }
    if (g < groups) {
        memcpy(x4, a->x + g * 4, 4);
        const __m512i x0 = _mm512_set1_epi32(x4[0]);
        GEMV4_TAIL(0) GEMV4_TAIL(1) GEMV4_TAIL(2) GEMV4_TAIL(3)
    }
    GEMV4_STORE(0) GEMV4_STORE(1) GEMV4_STORE(2) GEMV4_STORE(3)
}

static const qtile_fn gemv_tiles[9] = {NULL, qtile_1_1_split, qtile_2_1, qtile_3_1, qtile_4_1,
                                       qtile_5_1, qtile_6_1, qtile_7_1, qtile_8_1};
static const qtile_fn gemm_tiles[9] = {NULL, qtile_1_3, qtile_2_3, qtile_3_3, qtile_4_3,
                                       qtile_5_3, qtile_6_3, qtile_7_3, qtile_8_3};
static const qtile_fn one_panel_tiles[9] = {NULL, qtile_1_1, qtile_2_1, qtile_3_1, qtile_4_1,
                                            qtile_5_1, qtile_6_1, qtile_7_1, qtile_8_1};

/* One row: 4 panels side by side (qgemv_4panels).  Up to gemv_max_rows rows (GEMV,
 * memory-bound): one panel at a time, each weight byte read once.  More rows (GEMM):
 * 8 rows x 3 panels (24 accumulators), the 3 panels (3 * 16 * kp bytes)
 * staying in L2 while all row tiles pass over them.  Exported: the AMX kernel
 * (x86/amx/linear.c) runs it on the rows its 16-row tiles leave. */
void mq_avx512vnni_qgemm(const mq_qgemm_args *a, int64_t p0, int64_t p1) {
    /* batch 1, any thread count: 1.09-1.22x the speed of the one-panel tile at 1 thread,
     * 1.02-1.13x the 3-panel tile at 2 (docs/benchmarks.md, Intel Xeon with AMX) */
    if (a->m == 1) {
        int64_t p = p0;
        for (; p + 4 <= p1; p += 4) qgemv_4panels(a, p);
        for (; p < p1; p++) qtile_1_1_split(a, 0, p);
        return;
    }
    const int gemv = a->m <= a->gemv_max_rows && a->m <= 8;
    const int nt_full = gemv ? 1 : 3, mt_max = 8;
    const qtile_fn *full = gemv ? gemv_tiles : gemm_tiles;
    for (int64_t p = p0; p < p1;) {
        const int nt = p1 - p >= nt_full ? nt_full : 1;
        for (int64_t m0 = 0; m0 < a->m; m0 += mt_max) {
            const int mt = (int)(a->m - m0 < mt_max ? a->m - m0 : mt_max);
            (nt == nt_full ? full : one_panel_tiles)[mt](a, m0, p);
        }
        p += nt;
    }
}

const mq_kernels mq_avx512vnni_linear_table = {
    .qgemm = mq_avx512vnni_qgemm,
    .qgemm_x_u8 = 1,
    .qgemm_name = "avx512_vnni",
};

#else /* no AVX-512 VNNI compiler support: keep the lower level's kernels */
const mq_kernels mq_avx512vnni_linear_table = {.name = NULL};
#endif
