/* x86/avx2/linear.c - AVX2 twins of mq_ref_qgemm and mq_ref_wgemm, and the fp16 / bf16 panel
 * path on the weight-only tiles (mq.h mq_h16_panels_fn).
 *
 * Compiled with -mavx2 -mfma -mf16c (CMakeLists.txt).  A 16-channel panel is read
 * as two 8-channel halves (32 bytes of each 64-byte K-group).
 *
 * Integer path: vpmaddubsw multiplies uint8 by int8 and adds pairs into a
 * saturating int16.  The sign trick feeds it |w| (0..128 as uint8) and
 * sign(w) * x: |w| is taken once per weight group and shared by every row
 * of the tile (the sign of x per row, costing one more operation per row).
 * Each pair sum is at most 2 * 128 * 127 = 32512 < 32767, so it never
 * saturates, -128 weights (asymmetric quantization) included, provided no
 * activation is -128 (sign() cannot negate it): the dynamic quantizer's range
 * is -127..127, and linear.c sends the rare int8 input holding -128 (tests)
 * to the reference.  From 8 rows the split kernel (below, act_split.c) saves
 * that operation: the weight as the unsigned side, w + 128, against split
 * codes whose pairs stay within 128. */
#include "mq.h"

#if defined(__x86_64__) && defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#include <immintrin.h>
#include <stdlib.h>

#define MQ_INLINE static inline __attribute__((always_inline))
#include "x86/linear_store256.h"
#include "x86/avx2/tiles12.h"
#include "x86/gemv4_256.h"
#include "x86/buffered_rows.h"

/* MT rows x one panel (two 8-channel halves) over the whole K: 2 * MT
 * named accumulators (a macro with a constant MT: GCC keeps arrays of
 * vectors on the stack).  5 rows: 10 accumulators, |w| of both halves, the
 * ones and temporaries fit the 16 ymm registers without spills (6 rows
 * spill with GCC 12; written in assembly without spills, 6 rows measured
 * slower still, bench_linear.py on Zen 5 at the AVX2 level). */
#define QROW_DECL(i) __m256i acc##i##a = _mm256_setzero_si256(), acc##i##b = acc##i##a;
#define QROW(i, MT)                                                                           \
    if ((i) < (MT)) {                                                                         \
        int32_t x4;                                                                           \
        memcpy(&x4, x + (i) * ldx + g * 4, 4);                                                 \
        const __m256i xb = _mm256_set1_epi32(x4);                                             \
        const __m256i p0 = _mm256_maddubs_epi16(aw0, _mm256_sign_epi8(xb, w0));               \
        const __m256i p1 = _mm256_maddubs_epi16(aw1, _mm256_sign_epi8(xb, w1));               \
        acc##i##a = _mm256_add_epi32(acc##i##a, _mm256_madd_epi16(p0, ones));                 \
        acc##i##b = _mm256_add_epi32(acc##i##b, _mm256_madd_epi16(p1, ones));                 \
    }
#define QROW_STORE(i, MT)                                                                     \
    if ((i) < (MT)) {                                                                         \
        qgemm_store8(a, acc##i##a, m0 + (i), p * MQ_PANEL);                                   \
        if (p * MQ_PANEL + 8 < a->n) qgemm_store8(a, acc##i##b, m0 + (i), p * MQ_PANEL + 8);  \
    }
#define QTILE(MT)                                                                             \
    static void qtile_##MT(const mq_qgemm_args *a, int64_t m0, int64_t p) {                   \
        const int64_t groups = a->kp / MQ_KGROUP, ldx = a->ldx;                               \
        const int8_t *w = a->w + p * groups * 64;                                             \
        const uint8_t *x = a->x + m0 * ldx;                                                    \
        const __m256i ones = _mm256_set1_epi16(1);                                            \
        QROW_DECL(0) QROW_DECL(1) QROW_DECL(2) QROW_DECL(3) QROW_DECL(4)                      \
        for (int64_t g = 0; g < groups; g++) {                                                \
            const __m256i w0 = _mm256_loadu_si256((const __m256i *)(w + g * 64));             \
            const __m256i w1 = _mm256_loadu_si256((const __m256i *)(w + g * 64 + 32));        \
            const __m256i aw0 = _mm256_abs_epi8(w0), aw1 = _mm256_abs_epi8(w1);               \
            QROW(0, MT) QROW(1, MT) QROW(2, MT) QROW(3, MT) QROW(4, MT)                       \
        }                                                                                     \
        QROW_STORE(0, MT) QROW_STORE(1, MT) QROW_STORE(2, MT) QROW_STORE(3, MT)               \
        QROW_STORE(4, MT)                                                                     \
    }

#define QTILE_ROWS 5
typedef void (*qtile_fn)(const mq_qgemm_args *a, int64_t m0, int64_t p);
QTILE(1) QTILE(2) QTILE(3) QTILE(4) QTILE(5)
static const qtile_fn qtiles[QTILE_ROWS + 1] = {NULL, qtile_1, qtile_2, qtile_3, qtile_4, qtile_5};

/* Many rows: the 12-row x 8-channel tile (x86/avx2/tiles12.h): 12 accumulators, w, |w|, the
 * ones and one temporary fill the 16 ymm registers.  Per 32 multiply-adds and row:
 * vpsignb, vpmaddubsw, vpmaddwd, vpaddd, one more than the 7-bit kernel's (Zen 4, 4096 x 4096,
 * 32 / 128 rows: 1.45x its time; 0.95-0.96x the 5-row tile's).  x ^ m - m in place of vpsignb
 * (m: the weight's sign mask) was 2-4% faster on Zen 4 and is an operation more where Intel has
 * three vector ports. */
#define SIGN_SETUP const __m256i awv = _mm256_abs_epi8(wv);
#define SIGN_ROW(i, MT)                                                                       \
    if ((i) < (MT)) {                                                                         \
        __m256i prod;                                                                         \
        __asm__("vpbroadcastd %[xm], %[t]\n\t"                                                \
                "vpsignb %[w], %[t], %[t]\n\t"                                                \
                "vpmaddubsw %[t], %[aw], %[t]\n\t"                                            \
                "vpmaddwd %[ones], %[t], %[t]\n\t"                                            \
                "vpaddd %[t], %[acc], %[acc]"                                                 \
                : [acc] "+x"(acc##i), [t] "=&x"(prod)                                         \
                : [xm] "m"(*(const int32_t *)(const void *)(x + (i) * ldx + g * 4)), [w] "x"(wv), \
                  [aw] "x"(awv), [ones] "x"(ones));                                           \
    }
#define SIGN_STORE(i, MT)                                                                     \
    if ((i) < (MT)) qgemm_store8(a, acc##i, m0 + (i), n0);
MQ_TILES12(sign_tiles, SIGN_SETUP, SIGN_ROW, SIGN_STORE)

/* Split rows (act_split.c): the weight is the unsigned side, w ^ 0x80 = w + 128 (once per group,
 * shared by the 12 rows), the split codes the signed one: vpmaddubsw, vpmaddwd, vpaddd per 32
 * multiply-adds and row, as the 7-bit kernel.  Before a panel's tiles, each row's list entries
 * and -128 * sum(xq) go to its 16 int32 starts (res), which the store adds:
 *     sum (w + 128) * xq - 128 * sum(xq) = sum w * xq   (the same exact int32). */
static void split_panel_starts(const mq_qgemm_args *a, const int8_t *panel, int32_t *res) {
    const __m256i flip = _mm256_set1_epi8((char)0x80), ones = _mm256_set1_epi16(1);
    for (int64_t m = 0; m < a->m; m++) {
        /* 128 * sum as a shift of the vector: wraps as the accumulators do, the final sum is exact */
        __m256i lo = _mm256_sub_epi32(_mm256_setzero_si256(), _mm256_slli_epi32(_mm256_set1_epi32(a->split_sum[m]), 7));
        __m256i hi = lo;
        for (int64_t i = a->split_start[m]; i < a->split_start[m + 1]; i++) {
            const mq_split_entry *e = a->split + i;
            /* 16-bit words 0, 2, 4, 6 of each lane (bytes 0-1 of a K-group) from offset[0], the
             * others from offset[1]; both halves of the panel */
            const int8_t *w0 = panel + e->offset[0], *w1 = panel + e->offset[1];
            int32_t cut;
            memcpy(&cut, e->cut, 4);
            const __m256i c = _mm256_set1_epi32(cut);
            const __m256i b0 = _mm256_blend_epi16(_mm256_loadu_si256((const __m256i *)w0),
                                                  _mm256_loadu_si256((const __m256i *)w1), 0xAA);
            const __m256i b1 = _mm256_blend_epi16(_mm256_loadu_si256((const __m256i *)(w0 + 32)),
                                                  _mm256_loadu_si256((const __m256i *)(w1 + 32)), 0xAA);
            lo = _mm256_add_epi32(lo, _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_xor_si256(b0, flip), c), ones));
            hi = _mm256_add_epi32(hi, _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_xor_si256(b1, flip), c), ones));
        }
        _mm256_storeu_si256((__m256i *)(res + m * MQ_PANEL), lo);
        _mm256_storeu_si256((__m256i *)(res + m * MQ_PANEL + 8), hi);
    }
}
#define SPLIT_SETUP const __m256i wuv = _mm256_xor_si256(wv, _mm256_set1_epi8((char)0x80));
#define SPLIT_ROW(i, MT) MQ_TILE12_MADDUBS_ROW(i, MT, "vpmaddubsw %[t], %[w], %[t]", wuv) /* w + 128 unsigned */
#define SPLIT_STORE(i, MT)                                                                    \
    if ((i) < (MT))                                                                           \
        qgemm_store8(a, _mm256_add_epi32(acc##i, _mm256_loadu_si256((const __m256i *)(a->split_res + (m0 + (i)) * MQ_PANEL + half * 8))), \
                     m0 + (i), n0);
MQ_TILES12(split_tiles, SPLIT_SETUP, SPLIT_ROW, SPLIT_STORE)

/* AVX2 twin of mq_act_split_count (act_split.c): 64 codes a step, a + b of each pair from
 * vpmaddubsw of 1 against the codes (exact in 16 bits), its absolute value against 128 (one mask
 * bit per pair after packing the two compares to bytes) and the same a + b into the row's sum. */
static int64_t split_count_avx2(const int8_t *q, int64_t kp, int32_t *sum, uint32_t *mask) {
    const __m256i one8 = _mm256_set1_epi8(1), one16 = _mm256_set1_epi16(1), limit = _mm256_set1_epi16(128);
    __m256i sums = _mm256_setzero_si256();
    int64_t count[2] = {0, 0}, i = 0;
    for (; i + 64 <= kp; i += 64) {
        const __m256i p0 = _mm256_maddubs_epi16(one8, _mm256_loadu_si256((const __m256i *)(q + i)));
        const __m256i p1 = _mm256_maddubs_epi16(one8, _mm256_loadu_si256((const __m256i *)(q + i + 32)));
        const __m256i b0 = _mm256_cmpgt_epi16(_mm256_abs_epi16(p0), limit);
        const __m256i b1 = _mm256_cmpgt_epi16(_mm256_abs_epi16(p1), limit);
        /* packs interleaves the 128-bit lanes: the permute puts pairs 0..31 in order */
        const uint32_t bits = (uint32_t)_mm256_movemask_epi8(_mm256_permute4x64_epi64(_mm256_packs_epi16(b0, b1), 0xD8));
        mask[i / 64] = bits;
        count[0] += __builtin_popcount(bits & 0x55555555u);
        count[1] += __builtin_popcount(bits & 0xAAAAAAAAu);
        sums = _mm256_add_epi32(sums, _mm256_madd_epi16(_mm256_add_epi16(p0, p1), one16)); /* |p0 + p1| <= 512 */
    }
    __m128i s4 = _mm_add_epi32(_mm256_castsi256_si128(sums), _mm256_extracti128_si256(sums, 1));
    s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0x4E));
    s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0xB1));
    int32_t s = _mm_cvtsi128_si32(s4);
    if (i < kp) { /* the last word, fewer than 32 pairs: the scalar count's loop */
        mask[i / 64] = 0;
        s += mq_act_split_pairs(q, i / 2, kp / 2, mask, count);
    }
    *sum = s;
    return count[0] > count[1] ? count[0] : count[1];
}

/* Rows in blocks of SPLIT_BLOCK_ROWS (whole 12-row tiles) whose starts fit the stack; panel by
 * panel, the first tile of a panel prefetching the next into L2 (as mq_tile12_panels) */
#define SPLIT_BLOCK_ROWS 48
static void qgemm_split_avx2(const mq_qgemm_args *a, int64_t p0, int64_t p1) {
    int32_t res[SPLIT_BLOCK_ROWS * MQ_PANEL] __attribute__((aligned(64)));
    const int64_t panel_bytes = a->kp / MQ_KGROUP * 64;
    for (int64_t p = p0; p < p1; p++) {
        const int8_t *own = a->w + p * panel_bytes, *next = p + 1 < p1 ? own + panel_bytes : own;
        for (int64_t r0 = 0; r0 < a->m; r0 += SPLIT_BLOCK_ROWS) {
            mq_qgemm_args b = mq_qgemm_rows(a, r0, a->m - r0 < SPLIT_BLOCK_ROWS ? a->m - r0 : SPLIT_BLOCK_ROWS);
            b.split_res = res;
            split_panel_starts(&b, own, res);
            for (int half = 0; half < 2 && p * MQ_PANEL + half * 8 < b.n; half++)
                for (int64_t m0 = 0; m0 < b.m; m0 += MQ_TILE12_ROWS)
                    split_tiles[b.m - m0 < MQ_TILE12_ROWS ? b.m - m0 : MQ_TILE12_ROWS](
                        &b, m0, p, half, half == 0 && m0 == 0 && r0 == 0 ? next : own);
        }
    }
}

/* One row (batch-1 decoding) x 4 panels side by side: 4 DRAM streams (x86/gemv4_256.h) */
#define SIGN_ACCUMULATE(acc, wv) \
    MQ_GEMV4_MADD(acc, _mm256_maddubs_epi16(_mm256_abs_epi8(wv), _mm256_sign_epi8(xb, wv)))
MQ_GEMV4(qgemv_4panels, SIGN_ACCUMULATE, qgemm_store8)

/* from this many rows the 12-row tiles, below them the 5-row x 16-channel ones */
#ifndef TILE12_MIN_M
#define TILE12_MIN_M 8
#endif

static void qgemm_avx2(const mq_qgemm_args *a, int64_t p0, int64_t p1) {
    if (a->x_u8) { /* activations shifted for VNNI: only the reference takes them */
        mq_ref_qgemm(a, p0, p1);
        return;
    }
    if (a->m == 1) {
        int64_t p = p0;
        for (; p + 4 <= p1; p += 4) qgemv_4panels(a, p);
        for (; p < p1; p++) qtiles[1](a, 0, p);
        return;
    }
    if (a->m < TILE12_MIN_M) {
        for (int64_t p = p0; p < p1; p++)
            for (int64_t m0 = 0; m0 < a->m; m0 += QTILE_ROWS)
                qtiles[a->m - m0 < QTILE_ROWS ? a->m - m0 : QTILE_ROWS](a, m0, p);
        return;
    }
    mq_tile12_panels(a, p0, p1, sign_tiles);
}

/* ---- weight-only: lanes are 2 channels x 4 k; channel sums at the end ---- */

/* One row's 4 channels from the two accumulators (lanes: channel c's 4 k
 * partial sums at 4c..4c+3): ((l0 + l1) + (l2 + l3)) * scale + bias, the
 * same operations as the other tiles' scalar epilogue (two hadds pair the
 * lanes in that order), so the same bits; 4 stores in one.  A last quarter
 * of fewer than 4 channels takes the scalar loop. */
MQ_INLINE void wquarter_store(const mq_wgemm_args *a, __m256 lo, __m256 hi, int64_t row, int64_t n0) {
    if (n0 + 4 <= a->n) {
        const __m256 pairs = _mm256_hadd_ps(lo, hi);     /* c0 01, c0 23, c2 01, c2 23 | c1 .., c3 .. */
        const __m256 sums = _mm256_hadd_ps(pairs, pairs); /* c0, c2, c0, c2 | c1, c3, c1, c3 */
        __m128 y = _mm_unpacklo_ps(_mm256_castps256_ps128(sums), _mm256_extractf128_ps(sums, 1));
        if (a->w_scale) y = _mm_mul_ps(y, _mm_loadu_ps(a->w_scale + n0)); /* (none: fp16 panels, scale 1) */
        if (a->bias) y = _mm_add_ps(y, _mm_loadu_ps(a->bias + n0));
        _mm_storeu_ps(a->y + row * a->n + n0, y);
        return;
    }
    float lanes[16];
    _mm256_storeu_ps(lanes, lo);
    _mm256_storeu_ps(lanes + 8, hi);
    for (int c = 0; c < 4 && n0 + c < a->n; c++) {
        float y = ((lanes[4 * c] + lanes[4 * c + 1]) + (lanes[4 * c + 2] + lanes[4 * c + 3]));
        if (a->w_scale) y = y * a->w_scale[n0 + c];
        if (a->bias) y = y + a->bias[n0 + c];
        a->y[row * a->n + n0 + c] = y;
    }
}

MQ_INLINE void wgemm_tile(const mq_wgemm_args *a, int64_t m0, int64_t p, int half, const int mt) {
    const int64_t groups = a->kp / MQ_KGROUP, kp = a->kp, n0 = p * MQ_PANEL + half * 8;
    const int8_t *w = a->w + p * groups * 64 + half * 32;
    const float *x = a->x + m0 * kp;
    __m256i zp[4] = {_mm256_setzero_si256(), _mm256_setzero_si256(), _mm256_setzero_si256(), _mm256_setzero_si256()};
    if (a->w_zp)
        for (int q = 0; q < 4; q++) {
            int32_t z0 = n0 + 2 * q < a->n ? a->w_zp[n0 + 2 * q] : 0;
            int32_t z1 = n0 + 2 * q + 1 < a->n ? a->w_zp[n0 + 2 * q + 1] : 0;
            zp[q] = _mm256_setr_epi32(z0, z0, z0, z0, z1, z1, z1, z1);
        }
    __m256 acc[2][4];
    for (int i = 0; i < mt; i++)
        for (int q = 0; q < 4; q++) acc[i][q] = _mm256_setzero_ps();
    for (int64_t g = 0; g < groups; g++) {
        __m256 wf[4];
        for (int q = 0; q < 4; q++) {
            __m256i wi = _mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(w + g * 64 + q * 8)));
            if (a->w_zp) wi = _mm256_sub_epi32(wi, zp[q]);
            wf[q] = _mm256_cvtepi32_ps(wi);
        }
        for (int i = 0; i < mt; i++) {
            __m256 xb = _mm256_broadcast_ps((const __m128 *)(x + i * kp + g * 4));
            for (int q = 0; q < 4; q++) acc[i][q] = _mm256_fmadd_ps(wf[q], xb, acc[i][q]);
        }
    }
    for (int i = 0; i < mt; i++) {
        wquarter_store(a, acc[i][0], acc[i][1], m0 + i, n0);
        if (n0 + 4 < a->n) wquarter_store(a, acc[i][2], acc[i][3], m0 + i, n0 + 4);
    }
}

static void wtile_2(const mq_wgemm_args *a, int64_t m0, int64_t p, int h) { wgemm_tile(a, m0, p, h, 2); }

/* One row x one whole panel (16 channels): each 64-byte group is read once
 * and its 8 products feed 8 independent accumulators (a 4-cycle FMA latency
 * needs 8 in flight; a half panel per pass, as wgemm_tile does, kept 4 and
 * read every cache line twice: 1.4-1.8x slower at batch 1).  Named
 * accumulators: GCC stores an array of them to the stack every iteration. */
#define WGEMV_STEP(q)                                                                        \
    {                                                                                        \
        __m256i wi = _mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(wg + (q) * 8)));  \
        if (has_zp) wi = _mm256_sub_epi32(wi, zp##q);                                        \
        acc##q = _mm256_fmadd_ps(_mm256_cvtepi32_ps(wi), xb, acc##q);                        \
    }
#define WGEMV_ZP(q)                                                                          \
    const int32_t z##q##a = has_zp && n0 + 2 * (q) < a->n ? a->w_zp[n0 + 2 * (q)] : 0;       \
    const int32_t z##q##b = has_zp && n0 + 2 * (q) + 1 < a->n ? a->w_zp[n0 + 2 * (q) + 1] : 0; \
    const __m256i zp##q = _mm256_setr_epi32(z##q##a, z##q##a, z##q##a, z##q##a, z##q##b, z##q##b, z##q##b, z##q##b); \
    __m256 acc##q = _mm256_setzero_ps();

MQ_INLINE void wgemv_body(const mq_wgemm_args *a, int64_t m0, int64_t p, const int has_zp) {
    const int64_t groups = a->kp / MQ_KGROUP, n0 = p * MQ_PANEL;
    const int8_t *w = a->w + p * groups * 64;
    const float *x = a->x + m0 * a->kp;
    WGEMV_ZP(0) WGEMV_ZP(1) WGEMV_ZP(2) WGEMV_ZP(3) WGEMV_ZP(4) WGEMV_ZP(5) WGEMV_ZP(6) WGEMV_ZP(7)
    for (int64_t g = 0; g < groups; g++) {
        const int8_t *wg = w + g * 64;
        const __m256 xb = _mm256_broadcast_ps((const __m128 *)(x + g * 4));
        WGEMV_STEP(0) WGEMV_STEP(1) WGEMV_STEP(2) WGEMV_STEP(3)
        WGEMV_STEP(4) WGEMV_STEP(5) WGEMV_STEP(6) WGEMV_STEP(7)
    }
    /* quarters of 4 channels (accumulator pairs), vector epilogues: the scalar one was
     * about 7% of a 1-row call at K = 256 */
    wquarter_store(a, acc0, acc1, m0, n0);
    if (n0 + 4 < a->n) wquarter_store(a, acc2, acc3, m0, n0 + 4);
    if (n0 + 8 < a->n) wquarter_store(a, acc4, acc5, m0, n0 + 8);
    if (n0 + 12 < a->n) wquarter_store(a, acc6, acc7, m0, n0 + 12);
}

static void wgemv_panel(const mq_wgemm_args *a, int64_t m0, int64_t p) {
    if (a->w_zp) wgemv_body(a, m0, p, 1);
    else wgemv_body(a, m0, p, 0);
}

/* One row x 2 panels side by side (no zero-points): 2 DRAM streams at batch 1 where one
 * panel is one (qgemv_4panels says why; 4 panels' 32 accumulators do not fit).  16 named
 * accumulators, the broadcast and a converted weight vector: 18 of the 16 ymm registers, so
 * GCC keeps two on the stack, which a DRAM-bound loop hides.  Each channel's lanes add the
 * same products in the same order as wgemv_body: the same bits. */
#define WG2_DECL(q) __m256 acc##q = _mm256_setzero_ps(), bcc##q = acc##q;
#define WG2_STEP(q)                                                                          \
    acc##q = _mm256_fmadd_ps(                                                                \
        _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(wg + (q) * 8)))), xb, acc##q); \
    bcc##q = _mm256_fmadd_ps(                                                                \
        _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(wg + panel_bytes + (q) * 8)))), \
        xb, bcc##q);
static void wgemv_2panels(const mq_wgemm_args *a, int64_t m0, int64_t p) {
    const int64_t groups = a->kp / MQ_KGROUP, n0 = p * MQ_PANEL, panel_bytes = groups * 64;
    const int8_t *w = a->w + p * panel_bytes;
    const float *x = a->x + m0 * a->kp;
    WG2_DECL(0) WG2_DECL(1) WG2_DECL(2) WG2_DECL(3) WG2_DECL(4) WG2_DECL(5) WG2_DECL(6) WG2_DECL(7)
    for (int64_t g = 0; g < groups; g++) {
        const int8_t *wg = w + g * 64;
        const __m256 xb = _mm256_broadcast_ps((const __m128 *)(x + g * 4));
        WG2_STEP(0) WG2_STEP(1) WG2_STEP(2) WG2_STEP(3) WG2_STEP(4) WG2_STEP(5) WG2_STEP(6) WG2_STEP(7)
    }
    wquarter_store(a, acc0, acc1, m0, n0);
    wquarter_store(a, acc2, acc3, m0, n0 + 4);
    wquarter_store(a, acc4, acc5, m0, n0 + 8);
    wquarter_store(a, acc6, acc7, m0, n0 + 12);
    wquarter_store(a, bcc0, bcc1, m0, n0 + 16);
    if (n0 + 20 < a->n) wquarter_store(a, bcc2, bcc3, m0, n0 + 20);
    if (n0 + 24 < a->n) wquarter_store(a, bcc4, bcc5, m0, n0 + 24);
    if (n0 + 28 < a->n) wquarter_store(a, bcc6, bcc7, m0, n0 + 28);
}

/* Up to 6 rows x a quarter panel (4 channels: two weight vectors of 2
 * channels x 4 k).  Each weight vector is converted int8 -> fp32 once per
 * group and used by every row of the tile, as an sgemm micro-kernel reuses
 * its B registers: 2 * R named accumulators, the two converted vectors and
 * one row's broadcast 4 x values: 15 of the 16 ymm registers at 6 rows (5
 * with zero-points, whose two vectors take the 16th and one more).  The
 * 2-row half-panel tile converted each vector for 2 rows only: the
 * conversions, not the FMAs, bounded it (1.0-1.4x fp32 sgemm at 16-512 rows). */
#define WQ_DECL(i) __m256 acc##i##a = _mm256_setzero_ps(), acc##i##b = acc##i##a;
#define WQ_ROW(i, R)                                                                         \
    if ((i) < (R)) {                                                                         \
        const __m256 xb = _mm256_broadcast_ps((const __m128 *)(x + (i) * kp + g * 4));       \
        acc##i##a = _mm256_fmadd_ps(w0, xb, acc##i##a);                                      \
        acc##i##b = _mm256_fmadd_ps(w1, xb, acc##i##b);                                      \
    }
#define WQ_STORE(i, R)                                                                       \
    if ((i) < (R)) wquarter_store(a, acc##i##a, acc##i##b, m0 + (i), n0);

/* from_buf: the quarter's two weight vectors read from wbuf (wpanel_to_float's, made once for
 * all the row tiles of a block; zero-points already subtracted) instead of converted here: the
 * same values, so the same products in the same order and the same bits. */
MQ_INLINE void wquarter_body(const mq_wgemm_args *a, int64_t m0, int64_t p, int quarter, const int R,
                             const int has_zp, const float *wbuf, const int from_buf) {
    const int64_t groups = a->kp / MQ_KGROUP, kp = a->kp, n0 = p * MQ_PANEL + quarter * 4;
    const int8_t *w = from_buf ? NULL : a->w + p * groups * 64 + quarter * 16; /* (fp16 panels: a->w is NULL) */
    const float *x = a->x + m0 * kp;
    __m256i zp0 = _mm256_setzero_si256(), zp1 = zp0;
    if (has_zp) {
        int32_t z[4];
        for (int c = 0; c < 4; c++) z[c] = n0 + c < a->n ? a->w_zp[n0 + c] : 0;
        zp0 = _mm256_setr_epi32(z[0], z[0], z[0], z[0], z[1], z[1], z[1], z[1]);
        zp1 = _mm256_setr_epi32(z[2], z[2], z[2], z[2], z[3], z[3], z[3], z[3]);
    }
    WQ_DECL(0) WQ_DECL(1) WQ_DECL(2) WQ_DECL(3) WQ_DECL(4) WQ_DECL(5)
    for (int64_t g = 0; g < groups; g++) {
        __m256 w0, w1;
        if (from_buf) {
            w0 = _mm256_load_ps(wbuf + g * 64 + quarter * 16);
            w1 = _mm256_load_ps(wbuf + g * 64 + quarter * 16 + 8);
        } else {
            __m256i wi0 = _mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(w + g * 64)));
            __m256i wi1 = _mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(w + g * 64 + 8)));
            if (has_zp) wi0 = _mm256_sub_epi32(wi0, zp0), wi1 = _mm256_sub_epi32(wi1, zp1);
            w0 = _mm256_cvtepi32_ps(wi0), w1 = _mm256_cvtepi32_ps(wi1);
        }
        WQ_ROW(0, R) WQ_ROW(1, R) WQ_ROW(2, R) WQ_ROW(3, R) WQ_ROW(4, R) WQ_ROW(5, R)
    }
    WQ_STORE(0, R) WQ_STORE(1, R) WQ_STORE(2, R) WQ_STORE(3, R) WQ_STORE(4, R) WQ_STORE(5, R)
}

#define WQUARTER(R)                                                                          \
    static void wquarter_##R(const mq_wgemm_args *a, int64_t m0, int64_t p, int quarter) {   \
        if (a->w_zp) wquarter_body(a, m0, p, quarter, R, 1, NULL, 0);                        \
        else wquarter_body(a, m0, p, quarter, R, 0, NULL, 0);                                \
    }                                                                                        \
    static void wquarter_buf_##R(const mq_wgemm_args *a, int64_t m0, int64_t p, int quarter, \
                                 const float *wbuf) {                                        \
        wquarter_body(a, m0, p, quarter, R, 0, wbuf, 1);                                     \
    }
WQUARTER(3) WQUARTER(4) WQUARTER(5) WQUARTER(6)
typedef void (*wquarter_fn)(const mq_wgemm_args *a, int64_t m0, int64_t p, int quarter);
typedef void (*wquarter_buf_fn)(const mq_wgemm_args *a, int64_t m0, int64_t p, int quarter, const float *wbuf);

/* Panel p's weight vectors as float32 (codes - zero-point, exactly), where the quarter tiles
 * read them: wbuf[g * 64 + 8 * v + 4 * c + j] is channel 2v + c of the panel at k = 4g + j. */
static void wpanel_to_float(const mq_wgemm_args *a, int64_t p, float *wbuf) {
    const int64_t groups = a->kp / MQ_KGROUP, n0 = p * MQ_PANEL;
    const int8_t *w = a->w + p * groups * 64;
    __m256i zp[8];
    for (int v = 0; v < 8; v++) {
        const int32_t z0 = a->w_zp && n0 + 2 * v < a->n ? a->w_zp[n0 + 2 * v] : 0;
        const int32_t z1 = a->w_zp && n0 + 2 * v + 1 < a->n ? a->w_zp[n0 + 2 * v + 1] : 0;
        zp[v] = _mm256_setr_epi32(z0, z0, z0, z0, z1, z1, z1, z1);
    }
    for (int64_t g = 0; g < groups; g++)
        for (int v = 0; v < 8; v++) {
            const __m256i wi = _mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(w + g * 64 + v * 8)));
            _mm256_store_ps(wbuf + g * 64 + v * 8, _mm256_cvtepi32_ps(_mm256_sub_epi32(wi, zp[v])));
        }
}

/* The fewest rows a quarter tile takes: mq_buffered_rows joins a shorter last block to the one before. */
#define QUARTER_MIN_ROWS 3

/* Rows [r0, r0 + m) (m >= 3) of panel p on its converted weights: 6-row tiles (no zero-point
 * registers left to hold), split as evenly as wpanel_rows splits. */
static void wpanel_rows_buf(const mq_wgemm_args *a, int64_t r0, int64_t m, int64_t p, const float *wbuf) {
    static const wquarter_buf_fn tiles[7] = {NULL, NULL, NULL, wquarter_buf_3, wquarter_buf_4, wquarter_buf_5,
                                             wquarter_buf_6};
    const int64_t count = (m + 5) / 6, left = a->n - p * MQ_PANEL;
    const int quarters = (int)((left + 3) / 4 < 4 ? (left + 3) / 4 : 4);
    for (int64_t t = 0, m0 = r0; t < count; t++) {
        const int64_t rows = m / count + (t < m % count);
        for (int q = 0; q < quarters; q++) tiles[rows](a, m0, p, q, wbuf);
        m0 += rows;
    }
}

/* ---- reduction blocks: the buffered tiles on CPUs of a 32 KiB L1D ----
 * A buffered panel is 16 x kp floats (192 KiB at 3072 inputs) and a 6-row tile's x 6 x kp: each
 * quarter tile walked all of K from L2 (768 -> 3072 at 128-256 rows: 1.2-1.6x fp32's time on an
 * AMD Zen 3).  Here K goes in blocks of KB_GROUPS K-groups (16 KiB of the panel, 6 KiB of x): every
 * row tile passes over a block while it is in L1, its accumulators kept in memory between blocks
 * (stored and reloaded as they are: each lane's products are added in the same order, mq.h's
 * mq_wgemm_args contract, so the same bits). */
#define KB_GROUPS 64
/* ... for K past this many K-groups (1024 inputs): at 384 the blocks cost up to 9% (1 thread), at 768
 * they were mixed (-9% to +8% at 64-512 rows, 1 thread; 1-4% ahead at 2), from 1536 ahead or level
 * (768 -> 3072 at 128 rows 1.40 -> 1.14 of fp32's time, 4096 x 4096 at 256 rows 1.17 -> 1.01 at 2 threads) */
#define KB_MIN_GROUPS 256

typedef struct {
    mq_wgemm_args a; /* first: the row functions are handed &kb->a */
    float *acc;      /* per row tile and quarter: 12 accumulator vectors (aligned) */
} kblock_args;

#define WK_LOAD(i, R)                                                                        \
    if ((i) < (R)) acc##i##a = _mm256_load_ps(acc + 16 * (i)), acc##i##b = _mm256_load_ps(acc + 16 * (i) + 8);
#define WK_SAVE(i, R)                                                                        \
    if ((i) < (R)) _mm256_store_ps(acc + 16 * (i), acc##i##a), _mm256_store_ps(acc + 16 * (i) + 8, acc##i##b);

MQ_INLINE void wquarter_kblock_body(const mq_wgemm_args *a, int64_t m0, int64_t p, int quarter, const int R,
                                    const float *wbuf, int64_t g0, int64_t g1, float *acc) {
    const int64_t groups = a->kp / MQ_KGROUP, kp = a->kp, n0 = p * MQ_PANEL + quarter * 4;
    const float *x = a->x + m0 * kp;
    WQ_DECL(0) WQ_DECL(1) WQ_DECL(2) WQ_DECL(3) WQ_DECL(4) WQ_DECL(5)
    if (g0 > 0) {
        WK_LOAD(0, R) WK_LOAD(1, R) WK_LOAD(2, R) WK_LOAD(3, R) WK_LOAD(4, R) WK_LOAD(5, R)
    }
    for (int64_t g = g0; g < g1; g++) {
        const __m256 w0 = _mm256_load_ps(wbuf + g * 64 + quarter * 16);
        const __m256 w1 = _mm256_load_ps(wbuf + g * 64 + quarter * 16 + 8);
        WQ_ROW(0, R) WQ_ROW(1, R) WQ_ROW(2, R) WQ_ROW(3, R) WQ_ROW(4, R) WQ_ROW(5, R)
    }
    if (g1 == groups) {
        WQ_STORE(0, R) WQ_STORE(1, R) WQ_STORE(2, R) WQ_STORE(3, R) WQ_STORE(4, R) WQ_STORE(5, R)
    } else {
        WK_SAVE(0, R) WK_SAVE(1, R) WK_SAVE(2, R) WK_SAVE(3, R) WK_SAVE(4, R) WK_SAVE(5, R)
    }
}

#define WKBLOCK(R)                                                                                     \
    static void wquarter_kblock_##R(const mq_wgemm_args *a, int64_t m0, int64_t p, int quarter,         \
                                    const float *wbuf, int64_t g0, int64_t g1, float *acc) {           \
        wquarter_kblock_body(a, m0, p, quarter, R, wbuf, g0, g1, acc);                                 \
    }
WKBLOCK(3) WKBLOCK(4) WKBLOCK(5) WKBLOCK(6)
typedef void (*wquarter_kblock_fn)(const mq_wgemm_args *a, int64_t m0, int64_t p, int quarter, const float *wbuf,
                                   int64_t g0, int64_t g1, float *acc);

/* wpanel_rows_buf's tiles (the same split), K a block at a time (a: a kblock_args's). */
static void wpanel_rows_kblocks(const mq_wgemm_args *a, int64_t r0, int64_t m, int64_t p, const float *wbuf) {
    static const wquarter_kblock_fn tiles[7] = {NULL, NULL, NULL, wquarter_kblock_3, wquarter_kblock_4,
                                                wquarter_kblock_5, wquarter_kblock_6};
    float *const acc = ((const kblock_args *)a)->acc;
    const int64_t groups = a->kp / MQ_KGROUP, count = (m + 5) / 6, left = a->n - p * MQ_PANEL;
    const int quarters = (int)((left + 3) / 4 < 4 ? (left + 3) / 4 : 4);
    for (int64_t g0 = 0; g0 < groups; g0 += KB_GROUPS) {
        const int64_t g1 = groups - g0 < KB_GROUPS ? groups : g0 + KB_GROUPS;
        for (int64_t t = 0, m0 = r0; t < count; t++) {
            const int64_t rows = m / count + (t < m % count);
            for (int q = 0; q < quarters; q++) tiles[rows](a, m0, p, q, wbuf, g0, g1, acc + (t * 4 + q) * 96);
            m0 += rows;
        }
    }
}

/* The accumulators wpanel_rows_kblocks keeps for mq_buffered_rows' largest row block, or NULL
 * where K fits one block (or no memory: then the unblocked tiles, the same bits). */
static float *kblock_acc_new(int64_t m, int64_t kp) {
    if (kp / MQ_KGROUP <= KB_MIN_GROUPS) return NULL;
    const int64_t tiles = (mq_buffered_block_rows_max(m, kp, QUARTER_MIN_ROWS) + 5) / 6;
    return aligned_alloc(32, (size_t)tiles * 4 * 96 * sizeof(float));
}

/* Rows [r0, r0 + m) of panel p: ceil(m / 6) tiles as even as can be (6, or
 * 5 with zero-points: registers), so every tile has 3 rows or more once
 * m >= 3 (8 rows: 4 + 4, not 6 + 2).  One row takes the whole-panel GEMV
 * tile and two rows the pair tile: both keep 8 FMA chains in flight, which a
 * quarter tile of 1-2 rows (2-4 chains) cannot.  Every tile sums a row's
 * products in the same order, so the split never changes a result. */
static void wpanel_rows(const mq_wgemm_args *a, int64_t r0, int64_t m, int64_t p) {
    static const wquarter_fn tiles[7] = {NULL, NULL, NULL, wquarter_3, wquarter_4, wquarter_5, wquarter_6};
    const int64_t most = a->w_zp ? 5 : 6, count = (m + most - 1) / most, left = a->n - p * MQ_PANEL;
    const int quarters = (int)((left + 3) / 4 < 4 ? (left + 3) / 4 : 4);
    if (m == 1) {
        wgemv_panel(a, r0, p);
        return;
    }
    if (m == 2) {
        for (int h = 0; h < 2 && h * 8 < left; h++) wtile_2(a, r0, p, h);
        return;
    }
    for (int64_t t = 0, m0 = r0; t < count; t++) {
        const int64_t rows = m / count + (t < m % count);
        for (int q = 0; q < quarters; q++) tiles[rows](a, m0, p, q);
        m0 += rows;
    }
}

/* Blocks of rows (about 1 MiB of fp32 activations) that every panel of
 * [p0, p1) passes over before the next block: the activations come from L2
 * or L3, and the weight is read once per block (1 / rows of a byte per
 * multiply-add).  Without blocks, all the rows stream from memory once per
 * panel (768x3072 at 2048 rows: 0.84x fp32); blocks of 256 KiB re-read a
 * big weight too often (4096x4096 at 128-2048 rows: 0.85-0.99x).  1 MiB:
 * 1.12-1.37x on both (bench_ab.py, AVX2 level, 1 thread, Zen 5). */
/* The AVX2 level on an Intel Xeon (1 Dec, 1 thread, BERT and 4096 layers): 1.05-1.16x the
 * converting tiles' speed from 64 rows, 0.95-1.07x at 32, 0.85-0.96x at 12-16 (the weight read
 * from DRAM once: the buffer's store and reload cost more than they save) */
#ifndef WBUF_MIN_ROWS
#define WBUF_MIN_ROWS 64
#endif

static void int8_panel_fill(const void *ctx, int64_t p, float *wbuf) { wpanel_to_float(ctx, p, wbuf); }

static void wgemm_avx2(const mq_wgemm_args *a, int64_t p0, int64_t p1) {
    if (a->m == 1 && !a->w_zp) {
        int64_t p = p0;
        for (; p + 2 <= p1; p += 2) wgemv_2panels(a, 0, p);
        for (; p < p1; p++) wgemv_panel(a, 0, p);
        return;
    }
    /* From WBUF_MIN_ROWS rows each panel's weights are converted once per block of rows
     * (mq_buffered_rows; converting in every tile: 4-6 operations per 12 FMAs) */
    const int64_t groups = a->kp / MQ_KGROUP;
    if (a->m >= WBUF_MIN_ROWS && groups > 0) {
        float *wbuf = aligned_alloc(32, (size_t)groups * 64 * sizeof(float));
        if (wbuf) {
            const kblock_args kb = {*a, kblock_acc_new(a->m, a->kp)};
            if (kb.acc) /* quarter tiles: 3-6 rows */
                mq_buffered_rows(&kb.a, p0, p1, wbuf, int8_panel_fill, &kb.a, wpanel_rows_kblocks, QUARTER_MIN_ROWS);
            else
                mq_buffered_rows(a, p0, p1, wbuf, int8_panel_fill, a, wpanel_rows_buf, QUARTER_MIN_ROWS);
            free(kb.acc);
            free(wbuf);
            return;
        }
    }
    const int64_t most = a->w_zp ? 5 : 6;
    int64_t block = ((int64_t)1 << 20) / (4 * (a->kp > 0 ? a->kp : 1)) / most * most;
    if (block < most) block = most;
    for (int64_t r0 = 0; r0 < a->m; r0 += block) {
        const int64_t rows = a->m - r0 < block ? a->m - r0 : block;
        for (int64_t p = p0; p < p1; p++) wpanel_rows(a, r0, rows, p);
    }
}

/* ---- fp16 / bf16 weights at many rows (fp16.c, mq_h16_linear_panels) ---- */

/* 8 weights of w's row `row` from column k0 widened to fp32 (zeros beyond n and k). */
MQ_INLINE __m256 h16_widen8(const uint16_t *w, int64_t n, int64_t k, int64_t row, int64_t k0, int is_bf16) {
    __m128i h;
    if (row < n && k0 + 8 <= k) {
        h = _mm_loadu_si128((const __m128i *)(w + row * k + k0));
    } else { /* a tail: the columns left, then zeros */
        uint16_t t[8] = {0};
        for (int64_t j = 0; row < n && j < 8 && k0 + j < k; j++) t[j] = w[row * k + k0 + j];
        h = _mm_loadu_si128((const __m128i *)t);
    }
    return is_bf16 ? _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16)) : _mm256_cvtph_ps(h);
}

/* 8 weights of a row from column k0 as fp32, zeros beyond n and k (source: the weight's description). */
typedef __m256 (*widen8_fn)(const void *source, int64_t row, int64_t k0);

MQ_INLINE __m256 f16_widen8_of(const void *source, int64_t row, int64_t k0) {
    const mq_h16_weight *src = source;
    return h16_widen8(src->w, src->n, src->k, row, k0, 0);
}

MQ_INLINE __m256 bf16_widen8_of(const void *source, int64_t row, int64_t k0) {
    const mq_h16_weight *src = source;
    return h16_widen8(src->w, src->n, src->k, row, k0, 1);
}

/* Panel p of a weight of n rows (rows: its first byte, row_bytes apart) widened by `widen` to float32
 * where the quarter tiles read it (wpanel_to_float's layout: wbuf[g * 64 + 4 * c + j] =
 * w(16p + c, 4g + j), zeros beyond n and k), 4 channels x 8 columns at a time, each 32-byte half
 * line written once, whole.  The next panel's rows (contiguous in the weight) go on their way to L2
 * while this one's row tiles run: without it the widening waited on each load from L3 (fp16: 7% of a
 * 768 x 768 call at 128 rows, 5.6% with it; the call 1-6% faster, AMD Zen 3). */
MQ_INLINE void panel_to_float(const void *source, const char *rows, int64_t row_bytes, int64_t n, int64_t kp,
                              int64_t p, float *wbuf, widen8_fn widen) {
    const int64_t groups = kp / MQ_KGROUP, n0 = p * MQ_PANEL;
    if (n0 + MQ_PANEL < n) {
        const char *next = rows + (n0 + MQ_PANEL) * row_bytes;
        const int64_t bytes = (n - n0 - MQ_PANEL < MQ_PANEL ? n - n0 - MQ_PANEL : MQ_PANEL) * row_bytes;
        for (int64_t off = 0; off < bytes; off += 64) _mm_prefetch(next + off, _MM_HINT_T1);
    }
    for (int cq = 0; cq < 4; cq++) {
        const int64_t row = n0 + 4 * cq;
        for (int64_t k0 = 0; k0 < kp; k0 += 8) {
            const __m256 v0 = widen(source, row, k0), v1 = widen(source, row + 1, k0);
            const __m256 v2 = widen(source, row + 2, k0), v3 = widen(source, row + 3, k0);
            float *dst = wbuf + (k0 / 4) * 64 + 16 * cq;
            _mm256_store_ps(dst, _mm256_permute2f128_ps(v0, v1, 0x20));
            _mm256_store_ps(dst + 8, _mm256_permute2f128_ps(v2, v3, 0x20));
            if (groups - k0 / 4 > 1) {
                _mm256_store_ps(dst + 64, _mm256_permute2f128_ps(v0, v1, 0x31));
                _mm256_store_ps(dst + 72, _mm256_permute2f128_ps(v2, v3, 0x31));
            }
        }
    }
}

/* Panel p of the 16-bit weight (source: an mq_h16_weight). */
static void h16_panel_to_float(const void *source, int64_t p, float *wbuf) {
    const mq_h16_weight *src = source;
    const int64_t row_bytes = src->k * (int64_t)sizeof(uint16_t);
    if (src->is_bf16) /* (two instances: the format's test out of the loop) */
        panel_to_float(src, (const char *)src->w, row_bytes, src->n, src->kp, p, wbuf, bf16_widen8_of);
    else
        panel_to_float(src, (const char *)src->w, row_bytes, src->n, src->kp, p, wbuf, f16_widen8_of);
}

/* Rows [0, a->m) (m >= 3) x panels [p0, p1) on the quarter tiles, each panel widened by fill(src):
 * mq_buffered_rows with K-blocked accumulators where they can be had. */
static void panels_on_tiles(const mq_wgemm_args *a, int64_t p0, int64_t p1, float *wbuf, mq_panel_fill_fn fill,
                            const void *src) {
    const kblock_args kb = {*a, kblock_acc_new(a->m, a->kp)};
    if (kb.acc)
        mq_buffered_rows(&kb.a, p0, p1, wbuf, fill, src, wpanel_rows_kblocks, QUARTER_MIN_ROWS);
    else
        mq_buffered_rows(a, p0, p1, wbuf, fill, src, wpanel_rows_buf, QUARTER_MIN_ROWS);
    free(kb.acc);
}

/* Rows [0, m) (m >= 3) x panels [p0, p1) of y [m][n] = x [m][kp] (zero-padded) @ W^T + bias for
 * a 16-bit W [n][k] (scale 1: y = lane sums + bias). */
static void h16_panels_avx2(const float *x, int64_t m, int64_t kp, const uint16_t *w, int64_t k, int is_bf16,
                            const float *bias, int64_t n, float *y, int64_t p0, int64_t p1, float *wbuf) {
    const mq_wgemm_args a = {.x = x, .m = m, .kp = kp, .n = n, .w = NULL, .w_scale = NULL, .w_zp = NULL,
                             .bias = bias, .y = y};
    const mq_h16_weight src = {w, n, k, kp, is_bf16};
    panels_on_tiles(&a, p0, p1, wbuf, h16_panel_to_float, &src);
}

/* ---- uint8 weights at many rows (u8_linear.c, mq_u8_linear_panels) ---- */

/* 8 codes of q's row `row` from column k0 minus the row's zero-point, as fp32 (zeros beyond n and k). */
MQ_INLINE __m256 u8_widen8(const void *source, int64_t row, int64_t k0) {
    const mq_u8_weight *src = source;
    if (row >= src->n) return _mm256_setzero_ps();
    const __m256i zp = _mm256_set1_epi32(src->zp[row]);
    if (k0 + 8 <= src->k)
        return _mm256_cvtepi32_ps(_mm256_sub_epi32(
            _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(src->q + row * src->k + k0))), zp));
    uint8_t t[8] = {0}; /* a tail: the columns left, then lanes masked to 0 */
    for (int64_t j = 0; k0 + j < src->k && j < 8; j++) t[j] = src->q[row * src->k + k0 + j];
    const __m256i d = _mm256_sub_epi32(_mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)t)), zp);
    const __m256i live = _mm256_cmpgt_epi32(_mm256_set1_epi32((int)(src->k - k0)), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
    return _mm256_cvtepi32_ps(_mm256_and_si256(d, live));
}

/* Panel p of q - zp (source: an mq_u8_weight). */
static void u8_panel_to_float(const void *source, int64_t p, float *wbuf) {
    const mq_u8_weight *src = source;
    panel_to_float(src, (const char *)src->q, src->k, src->n, src->kp, p, wbuf, u8_widen8);
}

/* Rows [0, m) (m >= 3) x panels [p0, p1) of y = scale * (x [m][kp] @ (q - zp)^T) + bias: each
 * channel's sum scaled once in the tiles' store. */
static void u8_panels_avx2(const float *x, int64_t m, int64_t kp, const uint8_t *q, int64_t k, const int32_t *zp,
                           const float *scale, const float *bias, int64_t n, float *y, int64_t p0, int64_t p1,
                           float *wbuf) {
    const mq_wgemm_args a = {.x = x, .m = m, .kp = kp, .n = n, .w = NULL, .w_scale = scale, .w_zp = NULL,
                             .bias = bias, .y = y};
    const mq_u8_weight src = {q, zp, n, k, kp};
    panels_on_tiles(&a, p0, p1, wbuf, u8_panel_to_float, &src);
}

const mq_kernels mq_avx2_linear_table = {
    .h16_panels = h16_panels_avx2,
    .u8_panels = u8_panels_avx2,
    .qgemm = qgemm_avx2,
    .qgemm_x_u8 = 0,
    .qgemm_name = "avx2_maddubs",
    .qgemm_split = qgemm_split_avx2,
    .qgemm_split_min_m = TILE12_MIN_M,
    .qgemm_split_name = "avx2_maddubs_split",
    .act_split_count = split_count_avx2,
    .wgemm = wgemm_avx2,
    .wgemm_name = "avx2",
};

#else
const mq_kernels mq_avx2_linear_table = {.name = NULL};
#endif
