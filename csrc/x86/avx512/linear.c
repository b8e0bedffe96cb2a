/* x86/avx512/linear.c - AVX-512 twin of mq_ref_wgemm (weight-only int8 matmul), and the fp16 /
 * bf16 panel path on the same tiles (mq.h mq_h16_panels_fn).
 *
 * Compiled with -mavx512f -mavx512bw -mavx512vl -mavx512dq (CMakeLists.txt)
 * and installed by dispatch.c only on CPUs with all of them. */
#include "mq.h"

#if defined(__x86_64__) && defined(__AVX512F__) && defined(__AVX512BW__)
#include <immintrin.h>
#include <stdlib.h>

#include "x86/buffered_rows.h"

#define MQ_INLINE static inline __attribute__((always_inline))

static inline __mmask16 tail_mask(int64_t left) {
    return left >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << left) - 1u);
}

/* ---- weight-only: lanes are 4 channels x 4 k; channel sums at the end ---- */

/* Lane 4c of the result: (v[4c] + v[4c+1]) + (v[4c+2] + v[4c+3]) (two in-lane swaps). */
MQ_INLINE __m512 lane_sums(__m512 v) {
    const __m512 pairs = _mm512_add_ps(v, _mm512_permute_ps(v, _MM_SHUFFLE(2, 3, 0, 1)));
    return _mm512_add_ps(pairs, _mm512_permute_ps(pairs, _MM_SHUFFLE(1, 0, 3, 2)));
}

/* One row's 16 channel sums from its 4 accumulators (channel 4q + c's partial sums at
 * lanes 4c..4c+3 of acc[q]), in channel order.  The scalar epilogue this replaces (lanes
 * stored, then 16 x 3 adds, at 6 rows about as many operations as the FMAs of K = 256)
 * added the same lanes in the same order, so the same bits. */
MQ_INLINE __m512 wpanel_sums(const __m512 acc[4]) {
    const __m512i every4th = _mm512_set_epi32(28, 24, 20, 16, 12, 8, 4, 0, 28, 24, 20, 16, 12, 8, 4, 0);
    const __m512 c0_7 = _mm512_permutex2var_ps(lane_sums(acc[0]), every4th, lane_sums(acc[1]));
    const __m512 c8_15 = _mm512_permutex2var_ps(lane_sums(acc[2]), every4th, lane_sums(acc[3]));
    return _mm512_shuffle_f32x4(c0_7, c8_15, _MM_SHUFFLE(1, 0, 1, 0));
}

/* The zero-points of panel p laid out as its weight vectors: zp[q] lane l is channel 4q + l/4's. */
MQ_INLINE void panel_zero_points(const mq_wgemm_args *a, int64_t p, __m512i zp[4]) {
    const int64_t n0 = p * MQ_PANEL;
    for (int q = 0; q < 4; q++) zp[q] = _mm512_setzero_si512();
    if (!a->w_zp) return;
    const __m512i z = _mm512_maskz_loadu_epi32(tail_mask(a->n - n0), a->w_zp + n0);
    for (int q = 0; q < 4; q++) {
        __m512i idx = _mm512_set_epi32(4 * q + 3, 4 * q + 3, 4 * q + 3, 4 * q + 3, 4 * q + 2, 4 * q + 2,
                                       4 * q + 2, 4 * q + 2, 4 * q + 1, 4 * q + 1, 4 * q + 1, 4 * q + 1,
                                       4 * q, 4 * q, 4 * q, 4 * q);
        zp[q] = _mm512_permutexvar_epi32(idx, z);
    }
}

/* Weight vector q of K-group g of panel p (int8 codes - zero-point, exactly, as float32). */
MQ_INLINE __m512 weight_vector(const mq_wgemm_args *a, const int8_t *w, int64_t g, int q, const __m512i zp[4]) {
    __m512i wi = _mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(w + g * 64 + q * 16)));
    if (a->w_zp) wi = _mm512_sub_epi32(wi, zp[q]);
    return _mm512_cvtepi32_ps(wi);
}

/* mt rows x panel p.  from_buf: the panel's weight vectors read from wbuf (panel_to_float's,
 * made once for all the row tiles of a block) instead of converted here; the same values, so
 * the same products in the same order and the same bits. */
MQ_INLINE void wgemm_tile(const mq_wgemm_args *a, int64_t m0, int64_t p, const int mt, const float *wbuf,
                          const int from_buf) {
    const int64_t groups = a->kp / MQ_KGROUP, kp = a->kp, n0 = p * MQ_PANEL;
    const int8_t *w = from_buf ? NULL : a->w + p * groups * 64; /* (fp16 panels: a->w is NULL) */
    const float *x = a->x + m0 * kp;
    __m512i zp[4];
    if (!from_buf) panel_zero_points(a, p, zp);
    __m512 acc[6][4];
    for (int i = 0; i < mt; i++)
        for (int q = 0; q < 4; q++) acc[i][q] = _mm512_setzero_ps();
    for (int64_t g = 0; g < groups; g++) {
        __m512 wf[4];
        for (int q = 0; q < 4; q++)
            wf[q] = from_buf ? _mm512_load_ps(wbuf + g * 64 + q * 16) : weight_vector(a, w, g, q, zp);
        for (int i = 0; i < mt; i++) {
            __m512 xb = _mm512_broadcast_f32x4(_mm_loadu_ps(x + i * kp + g * 4));
            for (int q = 0; q < 4; q++) acc[i][q] = _mm512_fmadd_ps(wf[q], xb, acc[i][q]);
        }
    }
    const __mmask16 valid = tail_mask(a->n - n0);
    const __m512 scale = a->w_scale ? _mm512_maskz_loadu_ps(valid, a->w_scale + n0) : _mm512_set1_ps(1.0f);
    const __m512 bias = a->bias ? _mm512_maskz_loadu_ps(valid, a->bias + n0) : _mm512_setzero_ps();
    for (int i = 0; i < mt; i++) {
        __m512 y = a->w_scale ? _mm512_mul_ps(wpanel_sums(acc[i]), scale) : wpanel_sums(acc[i]);
        if (a->bias) y = _mm512_add_ps(y, bias); /* no bias, no add: -0 + 0 would be +0 */
        _mm512_mask_storeu_ps(a->y + (m0 + i) * a->n + n0, valid, y);
    }
}

/* One row x np (<= 2) panels read side by side (no zero-points): NP DRAM streams at batch 1, where
 * one core gets more of the bandwidth than from one (x86/gemv4_256.h).  Each panel's lanes
 * add the same products in the same order as wgemm_tile's, so the same bits. */
MQ_INLINE void wgemv_panels(const mq_wgemm_args *a, int64_t p, const int np) {
    const int64_t groups = a->kp / MQ_KGROUP, panel_bytes = groups * 64;
    const int8_t *w = a->w + p * panel_bytes;
    __m512 acc[2][4];
    for (int s = 0; s < np; s++)
        for (int q = 0; q < 4; q++) acc[s][q] = _mm512_setzero_ps();
    for (int64_t g = 0; g < groups; g++) {
        const __m512 xb = _mm512_broadcast_f32x4(_mm_loadu_ps(a->x + g * 4));
        for (int s = 0; s < np; s++)
            for (int q = 0; q < 4; q++) {
                const __m128i wb = _mm_loadu_si128((const __m128i *)(w + s * panel_bytes + g * 64 + q * 16));
                acc[s][q] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(wb)), xb, acc[s][q]);
            }
    }
    for (int s = 0; s < np; s++) {
        const int64_t n0 = (p + s) * MQ_PANEL;
        const __mmask16 valid = tail_mask(a->n - n0);
        __m512 y = _mm512_mul_ps(wpanel_sums(acc[s]), _mm512_maskz_loadu_ps(valid, a->w_scale + n0));
        if (a->bias) y = _mm512_add_ps(y, _mm512_maskz_loadu_ps(valid, a->bias + n0));
        _mm512_mask_storeu_ps(a->y + n0, valid, y);
    }
}
static void wgemv_2panels(const mq_wgemm_args *a, int64_t p) { wgemv_panels(a, p, 2); }

typedef void (*wtile_fn)(const mq_wgemm_args *a, int64_t m0, int64_t p, const float *wbuf);
#define WTILE(MT)                                                                                        \
    static void wtile_##MT(const mq_wgemm_args *a, int64_t m0, int64_t p, const float *wbuf) {          \
        (void)wbuf;                                                                                      \
        wgemm_tile(a, m0, p, MT, NULL, 0);                                                               \
    }                                                                                                    \
    static void wtile_buf_##MT(const mq_wgemm_args *a, int64_t m0, int64_t p, const float *wbuf) {      \
        wgemm_tile(a, m0, p, MT, wbuf, 1);                                                               \
    }
WTILE(1) WTILE(2) WTILE(3) WTILE(4) WTILE(5) WTILE(6)
static const wtile_fn wtiles[7] = {NULL, wtile_1, wtile_2, wtile_3, wtile_4, wtile_5, wtile_6};
static const wtile_fn wtiles_buf[7] = {NULL, wtile_buf_1, wtile_buf_2, wtile_buf_3, wtile_buf_4, wtile_buf_5, wtile_buf_6};

/* Panel p's weight vectors as float32, in the order the tiles read them (wbuf: groups * 64). */
static void panel_to_float(const mq_wgemm_args *a, int64_t p, float *wbuf) {
    const int64_t groups = a->kp / MQ_KGROUP;
    const int8_t *w = a->w + p * groups * 64;
    __m512i zp[4];
    panel_zero_points(a, p, zp);
    for (int64_t g = 0; g < groups; g++)
        for (int q = 0; q < 4; q++) _mm512_store_ps(wbuf + g * 64 + q * 16, weight_vector(a, w, g, q, zp));
}

#ifndef WBUF_MIN_ROWS
/* Intel Xeon with AMX, 1 Dec, 1 thread: 1.03-1.16x the converting tiles' speed at 32-48 rows,
 * 1.07-1.32x at 64-128, 1.16-1.57x at 512-2048; 0.73-1.01x at 8-16 rows, where the weight
 * streams from DRAM once and the buffer's store and reload cost more than they save */
#define WBUF_MIN_ROWS 32
#endif

/* Rows [r0, r0 + m) of panel p in ceil(m / 6) tiles as even as can be (8 rows: 4 + 4, 32:
 * 6 6 5 5 5 5), not 6s and a remainder: a 1-2 row tile converts the panel's weights for too
 * few FMAs.  (Every tile sums a row's products in one order: the split never changes a bit.) */
static void even_tiles(const mq_wgemm_args *a, int64_t r0, int64_t m, int64_t p, const wtile_fn *tiles,
                       const float *wbuf) {
    const int64_t count = (m + 5) / 6;
    for (int64_t t = 0, m0 = r0; t < count; t++) {
        const int64_t rows = m / count + (t < m % count);
        tiles[rows](a, m0, p, wbuf);
        m0 += rows;
    }
}

/* Rows [r0, r0 + m) of panel p on its buffered weights (mq_buffered_rows' step). */
static void buffered_tiles(const mq_wgemm_args *a, int64_t r0, int64_t m, int64_t p, const float *wbuf) {
    even_tiles(a, r0, m, p, wtiles_buf, wbuf);
}

static void int8_panel_fill(const void *ctx, int64_t p, float *wbuf) { panel_to_float(ctx, p, wbuf); }

static void wgemm_avx512(const mq_wgemm_args *a, int64_t p0, int64_t p1) {
    /* batch 1: 2 panels side by side (Intel Xeon with AMX, 1 Dec: 1.05-1.30x the one-panel
     * tile's speed at 1 thread, 1.07-1.25x at 2; 4 panels were no faster than 2) */
    if (a->m == 1 && !a->w_zp) {
        int64_t p = p0;
        for (; p + 2 <= p1; p += 2) wgemv_2panels(a, p);
        for (; p < p1; p++) wtiles[1](a, 0, p, NULL);
        return;
    }
    /* From WBUF_MIN_ROWS rows each panel's weights are converted once per block of rows
     * (mq_buffered_rows): converting in every tile took a third of the issue slots (8
     * conversions per 24 FMAs).  Fewer rows: the converting tiles, each panel once. */
    const int64_t groups = a->kp / MQ_KGROUP;
    float *wbuf = a->m >= WBUF_MIN_ROWS && groups > 0 ? aligned_alloc(64, (size_t)groups * 64 * sizeof(float)) : NULL;
    if (wbuf)
        mq_buffered_rows(a, p0, p1, wbuf, int8_panel_fill, a, buffered_tiles, 1);
    else
        for (int64_t p = p0; p < p1; p++) even_tiles(a, 0, a->m, p, wtiles, NULL);
    free(wbuf);
}

/* ---- fp16 / bf16 weights at many rows (fp16.c, mq_h16_linear_panels) ---- */

/* 16 weights of w's row `row` from column k0 widened to fp32 (zeros beyond n and k: masked
 * lanes are not read). */
MQ_INLINE __m512 h16_widen(const uint16_t *w, int64_t n, int64_t k, int64_t row, int64_t k0, int is_bf16) {
    const int64_t left = row < n ? k - k0 : 0;
    const __mmask16 mask = left >= 16 ? (__mmask16)0xFFFF : left > 0 ? (__mmask16)((1u << left) - 1u) : 0;
    const __m256i h = _mm256_maskz_loadu_epi16(mask, row < n ? w + row * k + k0 : w);
    return is_bf16 ? _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16)) : _mm512_cvtph_ps(h);
}

/* Panel p of the 16-bit weight w [n][k] (source: an mq_h16_weight) widened to float32 where
 * the tiles read it: wbuf[g * 64 + 4 * c + j] = w(16p + c, 4g + j), zeros beyond n and k (exact widening).
 * 4 channels x 16 columns at a time, transposed in registers by 128-bit blocks, so each
 * 64-byte line of wbuf (4 channels x 4 columns) is written once, whole (16-byte stores of one
 * channel at a time left every line to 4 passes over the panel: at K = 3072 the buffer is past
 * L1, and those stores cost more than the tiles' FMAs). */
static void h16_panel_to_float(const void *source, int64_t p, float *wbuf) {
    const mq_h16_weight *src = source;
    const uint16_t *w = src->w;
    const int64_t n = src->n, k = src->k, kp = src->kp;
    const int is_bf16 = src->is_bf16;
    const int64_t groups = kp / MQ_KGROUP, n0 = p * MQ_PANEL;
    for (int cq = 0; cq < 4; cq++) {
        const int64_t row = n0 + 4 * cq;
        for (int64_t k0 = 0; k0 < kp; k0 += 16) {
            const __m512 v0 = h16_widen(w, n, k, row, k0, is_bf16), v1 = h16_widen(w, n, k, row + 1, k0, is_bf16);
            const __m512 v2 = h16_widen(w, n, k, row + 2, k0, is_bf16), v3 = h16_widen(w, n, k, row + 3, k0, is_bf16);
            const __m512 lo01 = _mm512_shuffle_f32x4(v0, v1, _MM_SHUFFLE(1, 0, 1, 0));
            const __m512 lo23 = _mm512_shuffle_f32x4(v2, v3, _MM_SHUFFLE(1, 0, 1, 0));
            const __m512 hi01 = _mm512_shuffle_f32x4(v0, v1, _MM_SHUFFLE(3, 2, 3, 2));
            const __m512 hi23 = _mm512_shuffle_f32x4(v2, v3, _MM_SHUFFLE(3, 2, 3, 2));
            float *dst = wbuf + (k0 / 4) * 64 + 16 * cq;
            const int64_t gl = groups - k0 / 4; /* groups of this step inside kp */
            _mm512_store_ps(dst, _mm512_shuffle_f32x4(lo01, lo23, _MM_SHUFFLE(2, 0, 2, 0)));
            if (gl > 1) _mm512_store_ps(dst + 64, _mm512_shuffle_f32x4(lo01, lo23, _MM_SHUFFLE(3, 1, 3, 1)));
            if (gl > 2) _mm512_store_ps(dst + 128, _mm512_shuffle_f32x4(hi01, hi23, _MM_SHUFFLE(2, 0, 2, 0)));
            if (gl > 3) _mm512_store_ps(dst + 192, _mm512_shuffle_f32x4(hi01, hi23, _MM_SHUFFLE(3, 1, 3, 1)));
        }
    }
}

/* Rows [0, m) x panels [p0, p1) of y [m][n] = x [m][kp] (zero-padded) @ W^T + bias for a 16-bit
 * W [n][k]: mq_buffered_rows with each panel widened by h16_panel_to_float into wbuf (groups * 64
 * floats, 64-byte aligned), then the weight-only tiles from it (scale 1: y = lane sums + bias). */
static void h16_panels_avx512(const float *x, int64_t m, int64_t kp, const uint16_t *w, int64_t k, int is_bf16,
                              const float *bias, int64_t n, float *y, int64_t p0, int64_t p1, float *wbuf) {
    const mq_wgemm_args a = {.x = x, .m = m, .kp = kp, .n = n, .w = NULL, .w_scale = NULL, .w_zp = NULL,
                             .bias = bias, .y = y};
    const mq_h16_weight src = {w, n, k, kp, is_bf16};
    mq_buffered_rows(&a, p0, p1, wbuf, h16_panel_to_float, &src, buffered_tiles, 1);
}

const mq_kernels mq_avx512_linear_table = {
    .h16_panels = h16_panels_avx512,
    .wgemm = wgemm_avx512,
    .wgemm_name = "avx512",
};

#else
const mq_kernels mq_avx512_linear_table = {.name = NULL};
#endif
