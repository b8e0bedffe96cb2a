/* x86/avx2/quant.c - AVX2 + FMA + F16C twins of the row kernels in ref.c.
 *
 * Compiled with -mavx2 -mfma -mf16c (CMakeLists.txt) and only called after
 * dispatch.c saw those features.  Same names and results as ref.c: tails
 * are handed to the reference so the two can never drift apart. */
#include "mq.h"

#if defined(__x86_64__) && defined(__AVX2__)
#include <immintrin.h>
#include <float.h>
#include <math.h>

/* 8 source elements widened to fp32; kind is a compile-time constant at
 * every call site, so the switch folds away. */
static inline __m256 load8(const void *src, mq_src_t kind, int64_t i) {
    if (kind == MQ_SRC_F32) return _mm256_loadu_ps((const float *)src + i);
    __m128i h = _mm_loadu_si128((const __m128i *)((const uint16_t *)src + i));
    if (kind == MQ_SRC_F16) return _mm256_cvtph_ps(h);
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
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
        bad = _mm256_or_ps(bad, _mm256_cmp_ps(a, b, _CMP_UNORD_Q)); /* a NaN in a or b */
        mn0 = _mm256_min_ps(mn0, a);
        mx0 = _mm256_max_ps(mx0, a);
        mn1 = _mm256_min_ps(mn1, b);
        mx1 = _mm256_max_ps(mx1, b);
    }
    for (; i + 8 <= n; i += 8) {
        __m256 a = load8(src, kind, i);
        bad = _mm256_or_ps(bad, _mm256_cmp_ps(a, a, _CMP_UNORD_Q));
        mn0 = _mm256_min_ps(mn0, a);
        mx0 = _mm256_max_ps(mx0, a);
    }
    float mn = hmin8(_mm256_min_ps(mn0, mn1)), mx = hmax8(_mm256_max_ps(mx0, mx1));
    /* NaN was caught above (one compare per two vectors); an Inf, were there
     * one, is the min or the max of the NaN-free elements seen */
    int is_bad = _mm256_movemask_ps(bad) != 0 || (i > 0 && (isinf(mn) || isinf(mx)));
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

/* Squares added in float32 and flushed to float64 every block.  A float32 square overflows
 * for |x| or |error| past ~1.8e19 (rows near float32's limit): such a row (its sums inf, or
 * NaN for a NaN input) is summed again in float64 by the reference (``tail``), as the scalar
 * level sums it, so every level's sums are finite.  The check is out of the loop: ordinary
 * rows keep the float32 speed (float64 squares in the loop cost 25-50% of quantize+error). */
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
    if (!(sx <= DBL_MAX && se <= DBL_MAX)) /* a float32 square overflowed: see the comment above */
        tail(src, q, i, scale, zero_point, is_signed, &sx, &se);
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

/* Dynamic activation rows (mq_act_rows_fn, scalar twin in act_u7.c): the
 * row is read twice while it sits in L1 (min/max, then the codes), and the
 * codes pass also sums the codes and adds the encoding's bias in registers,
 * so each row costs two passes and no per-row indirect calls.  The last
 * k % 8 elements go through a zero-padded copy: the same arithmetic. */
static inline __m128i act_bytes8(__m256i c, int out_unsigned) {
    __m128i w = _mm_packs_epi32(_mm256_castsi256_si128(c), _mm256_extracti128_si256(c, 1));
    return out_unsigned ? _mm_packus_epi16(w, w) : _mm_packs_epi16(w, w);
}

static inline void act_rows_avx2(const void *src, mq_src_t kind, size_t row_bytes, int64_t rows, int64_t k,
                                 int64_t kp, int enc, uint8_t *q, float *scale, int32_t *zero_point, int32_t *sum,
                                 mq_minmax_fn minmax_tail) {
    const int u7 = zero_point != NULL;
    const __m256i lane_order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    for (int64_t r = 0; r < rows; r++) {
        const uint8_t *x = (const uint8_t *)src + (size_t)r * row_bytes;
        uint8_t *qr = q + r * kp;
        float mn, mx, s = NAN;
        int32_t zp = 0, total = 0;
        int64_t i = 0;
        if (minmax_avx2(x, kind, k, &mn, &mx, minmax_tail)) {
            memset(qr, (int)mq_act_bias(u7, 0, enc), (size_t)kp); /* NaN/Inf: xq = 0, outputs NaN by the scale */
        } else {
            if (u7)
                mq_choose_qparams(mn, mx, 0, 127, 0, &s, &zp);
            else
                mq_choose_qparams(mn, mx, -127, 127, 1, &s, &zp);
            const int32_t bias = mq_act_bias(u7, zp, enc);
            /* every biased code is in -127..127 (int8) or 0..255 (uint8): the saturating packs are exact */
            const int out_unsigned = u7 ? enc != MQ_X_INT8 : enc == MQ_X_INT8_PLUS_128;
            const __m256 inv = _mm256_set1_ps(1.0f / s), vzp = _mm256_set1_ps((float)zp);
            const __m256 lo = _mm256_set1_ps(u7 ? 0.0f : -127.0f), hi = _mm256_set1_ps(127.0f);
            const __m256i vb = _mm256_set1_epi32(bias);
            __m256i acc = _mm256_setzero_si256();
            for (; i + 32 <= k; i += 32) {
                __m256i a = quantize8(load8(x, kind, i), inv, vzp, lo, hi, 0);
                __m256i b = quantize8(load8(x, kind, i + 8), inv, vzp, lo, hi, 0);
                __m256i c = quantize8(load8(x, kind, i + 16), inv, vzp, lo, hi, 0);
                __m256i d = quantize8(load8(x, kind, i + 24), inv, vzp, lo, hi, 0);
                acc = _mm256_add_epi32(acc, _mm256_add_epi32(_mm256_add_epi32(a, b), _mm256_add_epi32(c, d)));
                __m256i ab = _mm256_packs_epi32(_mm256_add_epi32(a, vb), _mm256_add_epi32(b, vb));
                __m256i cd = _mm256_packs_epi32(_mm256_add_epi32(c, vb), _mm256_add_epi32(d, vb));
                __m256i bytes = out_unsigned ? _mm256_packus_epi16(ab, cd) : _mm256_packs_epi16(ab, cd);
                _mm256_storeu_si256((__m256i *)(qr + i), _mm256_permutevar8x32_epi32(bytes, lane_order));
            }
            for (; i + 8 <= k; i += 8) {
                __m256i c = quantize8(load8(x, kind, i), inv, vzp, lo, hi, 0);
                acc = _mm256_add_epi32(acc, c);
                _mm_storel_epi64((__m128i *)(qr + i), act_bytes8(_mm256_add_epi32(c, vb), out_unsigned));
            }
            __m128i t = _mm_add_epi32(_mm256_castsi256_si128(acc), _mm256_extracti128_si256(acc, 1));
            t = _mm_add_epi32(t, _mm_shuffle_epi32(t, 0x4E));
            t = _mm_add_epi32(t, _mm_shuffle_epi32(t, 0xB1));
            total = _mm_cvtsi128_si32(t);
            if (i < k) {
                float part[8] = {0};
                int32_t codes[8];
                uint8_t bytes[8];
                for (int64_t j = i; j < k; j++) part[j - i] = mq_load_src(x, kind, j);
                __m256i c = quantize8(_mm256_loadu_ps(part), inv, vzp, lo, hi, 0);
                _mm256_storeu_si256((__m256i *)codes, c);
                _mm_storel_epi64((__m128i *)bytes, act_bytes8(_mm256_add_epi32(c, vb), out_unsigned));
                for (int64_t j = i; j < k; j++) total += codes[j - i];
                memcpy(qr + i, bytes, (size_t)(k - i));
            }
            total -= zp * (int32_t)k; /* exact: |sum| <= 255 * MQ_MAX_LINEAR_K */
            memset(qr + k, (int)(u7 ? zp + bias : bias), (size_t)(kp - k)); /* the padding encodes xq = 0 */
        }
        scale[r] = s;
        if (u7) zero_point[r] = zp;
        if (sum) sum[r] = total;
    }
}

static void act_rows_f32(const void *x, size_t rb, int64_t rows, int64_t k, int64_t kp, int enc, uint8_t *q,
                         float *s, int32_t *zp, int32_t *sum) {
    act_rows_avx2(x, MQ_SRC_F32, rb, rows, k, kp, enc, q, s, zp, sum, mq_ref_minmax_f32);
}
static void act_rows_f16(const void *x, size_t rb, int64_t rows, int64_t k, int64_t kp, int enc, uint8_t *q,
                         float *s, int32_t *zp, int32_t *sum) {
    act_rows_avx2(x, MQ_SRC_F16, rb, rows, k, kp, enc, q, s, zp, sum, mq_ref_minmax_f16);
}
static void act_rows_bf16(const void *x, size_t rb, int64_t rows, int64_t k, int64_t kp, int enc, uint8_t *q,
                          float *s, int32_t *zp, int32_t *sum) {
    act_rows_avx2(x, MQ_SRC_BF16, rb, rows, k, kp, enc, q, s, zp, sum, mq_ref_minmax_bf16);
}

/* Data only: dispatch.c installs it after the CPU check (no code of this
 * unit runs before). */
const mq_kernels mq_avx2_quant_table = {
    .name = "avx2",
    .minmax = {[MQ_SRC_F32] = minmax_f32, [MQ_SRC_F16] = minmax_f16, [MQ_SRC_BF16] = minmax_bf16},
    .quantize = {[MQ_SRC_F32] = quantize_f32, [MQ_SRC_F16] = quantize_f16, [MQ_SRC_BF16] = quantize_bf16},
    .dequantize = dequantize,
    .sqerr = {[MQ_SRC_F32] = sqerr_f32, [MQ_SRC_F16] = sqerr_f16, [MQ_SRC_BF16] = sqerr_bf16},
    .act_rows = {[MQ_SRC_F32] = act_rows_f32, [MQ_SRC_F16] = act_rows_f16, [MQ_SRC_BF16] = act_rows_bf16},
};

#else /* not x86-64: nothing to add, the table keeps the scalar kernels */
const mq_kernels mq_avx2_quant_table = {.name = NULL};
#endif
