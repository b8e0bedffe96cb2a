/* x86/avx2/quant.c - AVX2 + FMA + F16C twins of the row kernels in ref.c.
 *
 * Compiled with -mavx2 -mfma -mf16c (CMakeLists.txt) and only called after
 * dispatch.c saw those features.  Same names and results as ref.c: tails
 * are handed to the reference so the two can never drift apart. */
#include "mq.h"

#if defined(__x86_64__) && defined(__AVX2__)
#include <immintrin.h>
#include <math.h>

/* 8 source elements widened to fp32; kind is a compile-time constant at
 * every call site, so the switch folds away. */
static inline __m256 load8(const void *src, mq_src_t kind, int64_t i) {
    if (kind == MQ_SRC_F32) return _mm256_loadu_ps((const float *)src + i);
    __m128i h = _mm_loadu_si128((const __m128i *)((const uint16_t *)src + i));
    if (kind == MQ_SRC_F16) return _mm256_cvtph_ps(h);
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}

/* x - x is NaN exactly when x is NaN or +-Inf. */
static inline __m256 nonfinite_mask(__m256 x) {
    __m256 d = _mm256_sub_ps(x, x);
    return _mm256_cmp_ps(d, d, _CMP_UNORD_Q);
}

static inline float hmin8(__m256 v) {
    __m128 m = _mm_min_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    m = _mm_min_ps(m, _mm_movehl_ps(m, m));
    m = _mm_min_ss(m, _mm_movehdup_ps(m));
    return _mm_cvtss_f32(m);
}

static inline float hmax8(__m256 v) {
    __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    m = _mm_max_ss(m, _mm_movehdup_ps(m));
    return _mm_cvtss_f32(m);
}

static inline int minmax_avx2(const void *src, mq_src_t kind, int64_t n, float *out_min, float *out_max,
                              mq_minmax_fn tail) {
    int64_t i = 0;
    __m256 mn0 = _mm256_set1_ps(INFINITY), mx0 = _mm256_set1_ps(-INFINITY);
    __m256 mn1 = mn0, mx1 = mx0, bad = _mm256_setzero_ps();
    for (; i + 16 <= n; i += 16) {
        __m256 a = load8(src, kind, i), b = load8(src, kind, i + 8);
        bad = _mm256_or_ps(bad, _mm256_or_ps(nonfinite_mask(a), nonfinite_mask(b)));
        mn0 = _mm256_min_ps(mn0, a);
        mx0 = _mm256_max_ps(mx0, a);
        mn1 = _mm256_min_ps(mn1, b);
        mx1 = _mm256_max_ps(mx1, b);
    }
    for (; i + 8 <= n; i += 8) {
        __m256 a = load8(src, kind, i);
        bad = _mm256_or_ps(bad, nonfinite_mask(a));
        mn0 = _mm256_min_ps(mn0, a);
        mx0 = _mm256_max_ps(mx0, a);
    }
    float mn = hmin8(_mm256_min_ps(mn0, mn1)), mx = hmax8(_mm256_max_ps(mx0, mx1));
    int is_bad = _mm256_movemask_ps(bad) != 0;
    if (i < n) {
        float tmn, tmx;
        is_bad |= tail((const uint8_t *)src + (size_t)i * mq_src_size(kind), n - i, &tmn, &tmx);
        if (tmn < mn) mn = tmn;
        if (tmx > mx) mx = tmx;
    }
    if (mn > mx) mn = mx = 0.0f; /* n == 0 */
    *out_min = mn;
    *out_max = mx;
    return is_bad;
}

static int minmax_f32(const void *s, int64_t n, float *mn, float *mx) {
    return minmax_avx2(s, MQ_SRC_F32, n, mn, mx, mq_ref_minmax_f32);
}
static int minmax_f16(const void *s, int64_t n, float *mn, float *mx) {
    return minmax_avx2(s, MQ_SRC_F16, n, mn, mx, mq_ref_minmax_f16);
}
static int minmax_bf16(const void *s, int64_t n, float *mn, float *mx) {
    return minmax_avx2(s, MQ_SRC_BF16, n, mn, mx, mq_ref_minmax_bf16);
}

/* rint(zp + x * inv), clamped in float (NaN -> qmin, as in ref.c), to int32.
 * use_fma is loop-invariant: the compiler unswitches the loop on it. */
static inline __m256i quantize8(__m256 x, __m256 inv, __m256 zp, __m256 lo, __m256 hi, int use_fma) {
    __m256 t = use_fma ? _mm256_fmadd_ps(x, inv, zp) : _mm256_add_ps(zp, _mm256_mul_ps(x, inv));
    /* clamping to integer bounds before the (round-half-even) conversion
     * equals rounding first, one instruction cheaper */
    t = _mm256_min_ps(_mm256_max_ps(t, lo), hi);
    return _mm256_cvtps_epi32(t);
}

static inline void quantize_avx2(const void *src, mq_src_t kind, int64_t n, float inv_scale, float zero_point,
                                 float qmin, float qmax, int use_fma, uint8_t *dst, mq_quantize_fn tail) {
    const __m256 inv = _mm256_set1_ps(inv_scale), zp = _mm256_set1_ps(zero_point);
    const __m256 lo = _mm256_set1_ps(qmin), hi = _mm256_set1_ps(qmax);
    const __m256i lane_order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    const int is_unsigned = qmin >= 0.0f;
    int64_t i = 0;
    for (; i + 32 <= n; i += 32) {
        __m256i q0 = quantize8(load8(src, kind, i), inv, zp, lo, hi, use_fma);
        __m256i q1 = quantize8(load8(src, kind, i + 8), inv, zp, lo, hi, use_fma);
        __m256i q2 = quantize8(load8(src, kind, i + 16), inv, zp, lo, hi, use_fma);
        __m256i q3 = quantize8(load8(src, kind, i + 24), inv, zp, lo, hi, use_fma);
        /* values are already in range, so the saturating packs are exact */
        __m256i w01 = _mm256_packs_epi32(q0, q1), w23 = _mm256_packs_epi32(q2, q3);
        __m256i b = is_unsigned ? _mm256_packus_epi16(w01, w23) : _mm256_packs_epi16(w01, w23);
        _mm256_storeu_si256((__m256i *)(dst + i), _mm256_permutevar8x32_epi32(b, lane_order));
    }
    if (i < n) tail((const uint8_t *)src + (size_t)i * mq_src_size(kind), n - i, inv_scale, zero_point, qmin, qmax, use_fma, dst + i);
}

static void quantize_f32(const void *s, int64_t n, float is, float zp, float lo, float hi, int use_fma, uint8_t *d) {
    quantize_avx2(s, MQ_SRC_F32, n, is, zp, lo, hi, use_fma, d, mq_ref_quantize_f32);
}
static void quantize_f16(const void *s, int64_t n, float is, float zp, float lo, float hi, int use_fma, uint8_t *d) {
    quantize_avx2(s, MQ_SRC_F16, n, is, zp, lo, hi, use_fma, d, mq_ref_quantize_f16);
}
static void quantize_bf16(const void *s, int64_t n, float is, float zp, float lo, float hi, int use_fma, uint8_t *d) {
    quantize_avx2(s, MQ_SRC_BF16, n, is, zp, lo, hi, use_fma, d, mq_ref_quantize_bf16);
}

static void dequantize(const uint8_t *q, int64_t n, float scale, float zero_point, int is_signed, float *dst) {
    const __m256 s = _mm256_set1_ps(scale), zp = _mm256_set1_ps(zero_point);
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m128i b = _mm_loadl_epi64((const __m128i *)(q + i));
        __m256i w = is_signed ? _mm256_cvtepi8_epi32(b) : _mm256_cvtepu8_epi32(b);
        _mm256_storeu_ps(dst + i, _mm256_mul_ps(_mm256_sub_ps(_mm256_cvtepi32_ps(w), zp), s));
    }
    if (i < n) mq_ref_dequantize(q + i, n - i, scale, zero_point, is_signed, dst + i);
}

static inline float hsum8(__m256 v) {
    __m128 m = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    m = _mm_add_ps(m, _mm_movehl_ps(m, m));
    m = _mm_add_ss(m, _mm_movehdup_ps(m));
    return _mm_cvtss_f32(m);
}

static inline void sqerr_avx2(const void *src, mq_src_t kind, const uint8_t *q, int64_t n, float scale,
                              float zero_point, int is_signed, double *x2, double *e2, mq_sqerr_fn tail) {
    const __m256 s = _mm256_set1_ps(scale), zp = _mm256_set1_ps(zero_point);
    __m256 ax = _mm256_setzero_ps(), ae = _mm256_setzero_ps();
    double sx = 0.0, se = 0.0;
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 x = load8(src, kind, i);
        __m128i b = _mm_loadl_epi64((const __m128i *)(q + i));
        __m256i w = is_signed ? _mm256_cvtepi8_epi32(b) : _mm256_cvtepu8_epi32(b);
        __m256 e = _mm256_sub_ps(x, _mm256_mul_ps(_mm256_sub_ps(_mm256_cvtepi32_ps(w), zp), s));
        ax = _mm256_fmadd_ps(x, x, ax);
        ae = _mm256_fmadd_ps(e, e, ae);
        if ((i & 511) == 504) { /* flush to double every 512 elements: keeps float sums short */
            sx += hsum8(ax);
            se += hsum8(ae);
            ax = ae = _mm256_setzero_ps();
        }
    }
    sx += hsum8(ax);
    se += hsum8(ae);
    if (i < n) {
        double tx, te;
        tail((const uint8_t *)src + (size_t)i * mq_src_size(kind), q + i, n - i, scale, zero_point, is_signed, &tx, &te);
        sx += tx;
        se += te;
    }
    *x2 = sx;
    *e2 = se;
}

static void sqerr_f32(const void *s, const uint8_t *q, int64_t n, float sc, float zp, int sg, double *x2, double *e2) {
    sqerr_avx2(s, MQ_SRC_F32, q, n, sc, zp, sg, x2, e2, mq_ref_sqerr_f32);
}
static void sqerr_f16(const void *s, const uint8_t *q, int64_t n, float sc, float zp, int sg, double *x2, double *e2) {
    sqerr_avx2(s, MQ_SRC_F16, q, n, sc, zp, sg, x2, e2, mq_ref_sqerr_f16);
}
static void sqerr_bf16(const void *s, const uint8_t *q, int64_t n, float sc, float zp, int sg, double *x2, double *e2) {
    sqerr_avx2(s, MQ_SRC_BF16, q, n, sc, zp, sg, x2, e2, mq_ref_sqerr_bf16);
}

/* Data only: dispatch.c installs it after the CPU check (no code of this
 * unit runs before). */
const mq_kernels mq_avx2_quant_table = {
    .name = "avx2",
    .minmax = {[MQ_SRC_F32] = minmax_f32, [MQ_SRC_F16] = minmax_f16, [MQ_SRC_BF16] = minmax_bf16},
    .quantize = {[MQ_SRC_F32] = quantize_f32, [MQ_SRC_F16] = quantize_f16, [MQ_SRC_BF16] = quantize_bf16},
    .dequantize = dequantize,
    .sqerr = {[MQ_SRC_F32] = sqerr_f32, [MQ_SRC_F16] = sqerr_f16, [MQ_SRC_BF16] = sqerr_bf16},
};

#else /* not x86-64: nothing to add, the table keeps the scalar kernels */
const mq_kernels mq_avx2_quant_table = {.name = NULL};
#endif
