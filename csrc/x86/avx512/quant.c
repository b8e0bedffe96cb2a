/* x86/avx512/quant.c - AVX-512 (F/BW/VL/DQ) twins of the row kernels in ref.c.
 *
 * Compiled with -mavx512f -mavx512bw -mavx512vl -mavx512dq -mfma -mf16c and
 * only called after dispatch.c saw those features.  Results equal ref.c's
 * exactly; tails go to the reference. */
#include "mq.h"

#if defined(__x86_64__) && defined(__AVX512F__) && defined(__AVX512BW__)
#include <immintrin.h>
#include <float.h>
#include <math.h>

static inline __m512 load16(const void *src, mq_src_t kind, int64_t i) {
    if (kind == MQ_SRC_F32) return _mm512_loadu_ps((const float *)src + i);
    __m256i h = _mm256_loadu_si256((const __m256i *)((const uint16_t *)src + i));
    if (kind == MQ_SRC_F16) return _mm512_cvtph_ps(h);
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}


static inline int minmax_avx512(const void *src, mq_src_t kind, int64_t n, float *out_min, float *out_max,
                                mq_minmax_fn tail) {
    int64_t i = 0;
    __m512 mn0 = _mm512_set1_ps(INFINITY), mx0 = _mm512_set1_ps(-INFINITY), mn1 = mn0, mx1 = mx0;
    __mmask16 bad = 0;
    for (; i + 32 <= n; i += 32) {
        __m512 a = load16(src, kind, i), b = load16(src, kind, i + 16);
        bad |= _mm512_cmp_ps_mask(a, b, _CMP_UNORD_Q); /* a NaN in a or b */
        mn0 = _mm512_min_ps(mn0, a);
        mx0 = _mm512_max_ps(mx0, a);
        mn1 = _mm512_min_ps(mn1, b);
        mx1 = _mm512_max_ps(mx1, b);
    }
    for (; i + 16 <= n; i += 16) {
        __m512 a = load16(src, kind, i);
        bad |= _mm512_cmp_ps_mask(a, a, _CMP_UNORD_Q);
        mn0 = _mm512_min_ps(mn0, a);
        mx0 = _mm512_max_ps(mx0, a);
    }
    float mn = _mm512_reduce_min_ps(_mm512_min_ps(mn0, mn1));
    float mx = _mm512_reduce_max_ps(_mm512_max_ps(mx0, mx1));
    /* NaN was caught above (one compare per two vectors); an Inf, were there
     * one, is the min or the max of the NaN-free elements seen */
    int is_bad = bad != 0 || (i > 0 && (isinf(mn) || isinf(mx)));
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
    return minmax_avx512(s, MQ_SRC_F32, n, mn, mx, mq_ref_minmax_f32);
}
static int minmax_f16(const void *s, int64_t n, float *mn, float *mx) {
    return minmax_avx512(s, MQ_SRC_F16, n, mn, mx, mq_ref_minmax_f16);
}
static int minmax_bf16(const void *s, int64_t n, float *mn, float *mx) {
    return minmax_avx512(s, MQ_SRC_BF16, n, mn, mx, mq_ref_minmax_bf16);
}

/* rint(zp + x * inv) clamped, as int32.  Clamping to the integer bounds
 * before the conversion (which rounds half to even under the default MXCSR)
 * equals rounding then clamping, and saves an instruction.  NaN -> qmin, as
 * in ref.c.  use_fma is loop-invariant (the loop is unswitched). */
static inline __m512i quantize16(__m512 x, __m512 inv, __m512 zp, __m512 lo, __m512 hi, int use_fma) {
    __m512 t = use_fma ? _mm512_fmadd_ps(x, inv, zp) : _mm512_add_ps(zp, _mm512_mul_ps(x, inv));
    t = _mm512_min_ps(_mm512_max_ps(t, lo), hi);
    return _mm512_cvt_roundps_epi32(t, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
}

static inline void quantize_avx512(const void *src, mq_src_t kind, int64_t n, float inv_scale, float zero_point,
                                   float qmin, float qmax, int use_fma, uint8_t *dst, mq_quantize_fn tail) {
    const __m512 inv = _mm512_set1_ps(inv_scale), zp = _mm512_set1_ps(zero_point);
    const __m512 lo = _mm512_set1_ps(qmin), hi = _mm512_set1_ps(qmax);
    /* the saturating packs interleave 128-bit lanes; this puts dwords back in order */
    const __m512i order = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
    const int is_unsigned = qmin >= 0.0f;
    int64_t i = 0;
    for (; i + 64 <= n; i += 64) {
        __m512i a = quantize16(load16(src, kind, i), inv, zp, lo, hi, use_fma);
        __m512i b = quantize16(load16(src, kind, i + 16), inv, zp, lo, hi, use_fma);
        __m512i c = quantize16(load16(src, kind, i + 32), inv, zp, lo, hi, use_fma);
        __m512i d = quantize16(load16(src, kind, i + 48), inv, zp, lo, hi, use_fma);
        /* values are already in range, so the saturating packs are exact */
        __m512i ab = _mm512_packs_epi32(a, b), cd = _mm512_packs_epi32(c, d);
        __m512i bytes = is_unsigned ? _mm512_packus_epi16(ab, cd) : _mm512_packs_epi16(ab, cd);
        _mm512_storeu_si512((void *)(dst + i), _mm512_permutexvar_epi32(order, bytes));
    }
    for (; i + 16 <= n; i += 16) /* vpmovdb truncates: the low byte of int8 or uint8 */
        _mm_storeu_si128((__m128i *)(dst + i),
                         _mm512_cvtepi32_epi8(quantize16(load16(src, kind, i), inv, zp, lo, hi, use_fma)));
    if (i < n) tail((const uint8_t *)src + (size_t)i * mq_src_size(kind), n - i, inv_scale, zero_point, qmin, qmax, use_fma, dst + i);
}

static void quantize_f32(const void *s, int64_t n, float is, float zp, float lo, float hi, int use_fma, uint8_t *d) {
    quantize_avx512(s, MQ_SRC_F32, n, is, zp, lo, hi, use_fma, d, mq_ref_quantize_f32);
}
static void quantize_f16(const void *s, int64_t n, float is, float zp, float lo, float hi, int use_fma, uint8_t *d) {
    quantize_avx512(s, MQ_SRC_F16, n, is, zp, lo, hi, use_fma, d, mq_ref_quantize_f16);
}
static void quantize_bf16(const void *s, int64_t n, float is, float zp, float lo, float hi, int use_fma, uint8_t *d) {
    quantize_avx512(s, MQ_SRC_BF16, n, is, zp, lo, hi, use_fma, d, mq_ref_quantize_bf16);
}

static void dequantize(const uint8_t *q, int64_t n, float scale, float zero_point, int is_signed, float *dst) {
    const __m512 s = _mm512_set1_ps(scale), zp = _mm512_set1_ps(zero_point);
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        __m128i b = _mm_loadu_si128((const __m128i *)(q + i));
        __m512i w = is_signed ? _mm512_cvtepi8_epi32(b) : _mm512_cvtepu8_epi32(b);
        _mm512_storeu_ps(dst + i, _mm512_mul_ps(_mm512_sub_ps(_mm512_cvtepi32_ps(w), zp), s));
    }
    if (i < n) mq_ref_dequantize(q + i, n - i, scale, zero_point, is_signed, dst + i);
}

/* Squares added in float32 and flushed to float64 every block.  A float32 square overflows
 * for |x| or |error| past ~1.8e19 (rows near float32's limit): such a row (its sums inf, or
 * NaN for a NaN input) is summed again in float64 by the reference (``tail``), as the scalar
 * level sums it, so every level's sums are finite.  The check is out of the loop: ordinary
 * rows keep the float32 speed (float64 squares in the loop cost 25-50% of quantize+error). */
static inline void sqerr_avx512(const void *src, mq_src_t kind, const uint8_t *q, int64_t n, float scale,
                                float zero_point, int is_signed, double *x2, double *e2, mq_sqerr_fn tail) {
    const __m512 s = _mm512_set1_ps(scale), zp = _mm512_set1_ps(zero_point);
    __m512 ax = _mm512_setzero_ps(), ae = _mm512_setzero_ps();
    double sx = 0.0, se = 0.0;
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        __m512 x = load16(src, kind, i);
        __m128i b = _mm_loadu_si128((const __m128i *)(q + i));
        __m512i w = is_signed ? _mm512_cvtepi8_epi32(b) : _mm512_cvtepu8_epi32(b);
        __m512 e = _mm512_sub_ps(x, _mm512_mul_ps(_mm512_sub_ps(_mm512_cvtepi32_ps(w), zp), s));
        ax = _mm512_fmadd_ps(x, x, ax);
        ae = _mm512_fmadd_ps(e, e, ae);
        if ((i & 1023) == 1008) { /* flush to double every 1024 elements: keeps float sums short */
            sx += _mm512_reduce_add_ps(ax);
            se += _mm512_reduce_add_ps(ae);
            ax = ae = _mm512_setzero_ps();
        }
    }
    sx += _mm512_reduce_add_ps(ax);
    se += _mm512_reduce_add_ps(ae);
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
    sqerr_avx512(s, MQ_SRC_F32, q, n, sc, zp, sg, x2, e2, mq_ref_sqerr_f32);
}
static void sqerr_f16(const void *s, const uint8_t *q, int64_t n, float sc, float zp, int sg, double *x2, double *e2) {
    sqerr_avx512(s, MQ_SRC_F16, q, n, sc, zp, sg, x2, e2, mq_ref_sqerr_f16);
}
static void sqerr_bf16(const void *s, const uint8_t *q, int64_t n, float sc, float zp, int sg, double *x2, double *e2) {
    sqerr_avx512(s, MQ_SRC_BF16, q, n, sc, zp, sg, x2, e2, mq_ref_sqerr_bf16);
}

/* Dynamic activation rows (mq_act_rows_fn, scalar twin in act_u7.c): the
 * row is read twice while it sits in L1 (min/max, then the codes), and the
 * codes pass also sums the codes and adds the encoding's bias in registers,
 * so each row costs two passes and no per-row indirect calls.  The tail is
 * done with masked loads and stores: the same arithmetic as the body. */
static inline void act_rows_avx512(const void *src, mq_src_t kind, size_t row_bytes, int64_t rows, int64_t k,
                                   int64_t kp, int enc, uint8_t *q, float *scale, int32_t *zero_point, int32_t *sum,
                                   mq_minmax_fn minmax_tail) {
    const int u7 = zero_point != NULL;
    const __m512i order = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
    for (int64_t r = 0; r < rows; r++) {
        const uint8_t *x = (const uint8_t *)src + (size_t)r * row_bytes;
        uint8_t *qr = q + r * kp;
        float mn, mx, s = NAN;
        int32_t zp = 0, total = 0;
        int64_t i = 0;
        if (minmax_avx512(x, kind, k, &mn, &mx, minmax_tail)) {
            memset(qr, (int)mq_act_bias(u7, 0, enc), (size_t)kp); /* NaN/Inf: xq = 0, outputs NaN by the scale */
        } else {
            if (u7)
                mq_choose_qparams(mn, mx, 0, 127, 0, &s, &zp);
            else
                mq_choose_qparams(mn, mx, -127, 127, 1, &s, &zp);
            const int32_t bias = mq_act_bias(u7, zp, enc);
            /* every biased code is in -127..127 (int8) or 0..255 (uint8): the saturating packs are exact */
            const int out_unsigned = u7 ? enc != MQ_X_INT8 : enc == MQ_X_INT8_PLUS_128;
            const __m512 inv = _mm512_set1_ps(1.0f / s), vzp = _mm512_set1_ps((float)zp);
            const __m512 lo = _mm512_set1_ps(u7 ? 0.0f : -127.0f), hi = _mm512_set1_ps(127.0f);
            const __m512i vb = _mm512_set1_epi32(bias);
            __m512i acc = _mm512_setzero_si512();
            for (; i + 64 <= k; i += 64) {
                __m512i a = quantize16(load16(x, kind, i), inv, vzp, lo, hi, 0);
                __m512i b = quantize16(load16(x, kind, i + 16), inv, vzp, lo, hi, 0);
                __m512i c = quantize16(load16(x, kind, i + 32), inv, vzp, lo, hi, 0);
                __m512i d = quantize16(load16(x, kind, i + 48), inv, vzp, lo, hi, 0);
                acc = _mm512_add_epi32(acc, _mm512_add_epi32(_mm512_add_epi32(a, b), _mm512_add_epi32(c, d)));
                __m512i ab = _mm512_packs_epi32(_mm512_add_epi32(a, vb), _mm512_add_epi32(b, vb));
                __m512i cd = _mm512_packs_epi32(_mm512_add_epi32(c, vb), _mm512_add_epi32(d, vb));
                __m512i bytes = out_unsigned ? _mm512_packus_epi16(ab, cd) : _mm512_packs_epi16(ab, cd);
                _mm512_storeu_si512((void *)(qr + i), _mm512_permutexvar_epi32(order, bytes));
            }
            for (; i < k; i += 16) {
                const __mmask16 m = k - i >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (k - i)) - 1u);
                __m512 v = kind == MQ_SRC_F32 ? _mm512_maskz_loadu_ps(m, (const float *)x + i)
                                              : _mm512_setzero_ps();
                if (kind != MQ_SRC_F32) {
                    __m256i h = _mm256_maskz_loadu_epi16(m, (const uint16_t *)x + i);
                    v = kind == MQ_SRC_F16 ? _mm512_cvtph_ps(h)
                                           : _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
                }
                __m512i c = quantize16(v, inv, vzp, lo, hi, 0);
                acc = _mm512_mask_add_epi32(acc, m, acc, c);
                /* vpmovdb keeps the low byte: right for int8 and uint8 alike */
                _mm_mask_storeu_epi8(qr + i, m, _mm512_cvtepi32_epi8(_mm512_add_epi32(c, vb)));
            }
            total = _mm512_reduce_add_epi32(acc) - zp * (int32_t)k; /* exact: |sum| <= 255 * MQ_MAX_LINEAR_K */
            memset(qr + k, (int)(u7 ? zp + bias : bias), (size_t)(kp - k)); /* the padding encodes xq = 0 */
        }
        scale[r] = s;
        if (u7) zero_point[r] = zp;
        if (sum) sum[r] = total;
    }
}

static void act_rows_f32(const void *x, size_t rb, int64_t rows, int64_t k, int64_t kp, int enc, uint8_t *q,
                         float *s, int32_t *zp, int32_t *sum) {
    act_rows_avx512(x, MQ_SRC_F32, rb, rows, k, kp, enc, q, s, zp, sum, mq_ref_minmax_f32);
}
static void act_rows_f16(const void *x, size_t rb, int64_t rows, int64_t k, int64_t kp, int enc, uint8_t *q,
                         float *s, int32_t *zp, int32_t *sum) {
    act_rows_avx512(x, MQ_SRC_F16, rb, rows, k, kp, enc, q, s, zp, sum, mq_ref_minmax_f16);
}
static void act_rows_bf16(const void *x, size_t rb, int64_t rows, int64_t k, int64_t kp, int enc, uint8_t *q,
                          float *s, int32_t *zp, int32_t *sum) {
    act_rows_avx512(x, MQ_SRC_BF16, rb, rows, k, kp, enc, q, s, zp, sum, mq_ref_minmax_bf16);
}

/* Data only: dispatch.c installs it after the CPU check (no code of this
 * unit runs before). */
const mq_kernels mq_avx512_quant_table = {
    .name = "avx512",
    .minmax = {[MQ_SRC_F32] = minmax_f32, [MQ_SRC_F16] = minmax_f16, [MQ_SRC_BF16] = minmax_bf16},
    .quantize = {[MQ_SRC_F32] = quantize_f32, [MQ_SRC_F16] = quantize_f16, [MQ_SRC_BF16] = quantize_bf16},
    .dequantize = dequantize,
    .sqerr = {[MQ_SRC_F32] = sqerr_f32, [MQ_SRC_F16] = sqerr_f16, [MQ_SRC_BF16] = sqerr_bf16},
    .act_rows = {[MQ_SRC_F32] = act_rows_f32, [MQ_SRC_F16] = act_rows_f16, [MQ_SRC_BF16] = act_rows_bf16},
};

#else /* not x86-64: the table keeps the lower level's kernels */
const mq_kernels mq_avx512_quant_table = {.name = NULL};
#endif
