/* x86/avx512/int4.c - AVX-512 (F/BW/VL/DQ) twins of the INT4 kernels in ref.c.
 *
 * Compiled with its own -mavx512* flags, reached only through dispatch.c.
 * pack / sqerr / unpack give exactly ref.c's bits; gemv / panel are float
 * dot products whose summation order differs (equal to rounding). */
#include "mq.h"

#if defined(__x86_64__) && defined(__AVX512F__) && defined(__AVX512BW__)
#include <float.h>
#include <immintrin.h>
#include <math.h>

/* codes of 16 floats: clamp(rint(zero + x * inv)) as int32 lanes */
static inline __m512i codes16(__m512 x, __m512 inv, __m512 zero, __m512 lo, __m512 hi) {
    __m512 v = _mm512_roundscale_ps(_mm512_add_ps(zero, _mm512_mul_ps(x, inv)),
                                    _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    v = _mm512_min_ps(_mm512_max_ps(v, lo), hi); /* NaN -> qmin, as ref.c */
    return _mm512_cvtps_epi32(v);
}

static void q4_pack(const float *x, int64_t n, float inv_scale, float zero, float qmin, float qmax, uint8_t *dst) {
    const __m512 inv = _mm512_set1_ps(inv_scale), z = _mm512_set1_ps(zero);
    const __m512 lo = _mm512_set1_ps(qmin), hi = _mm512_set1_ps(qmax);
    for (int64_t b = 0; b < n; b += MQ_Q4_BLOCK) {
        __m512i a = codes16(_mm512_loadu_ps(x + b), inv, z, lo, hi);
        __m512i c = codes16(_mm512_loadu_ps(x + b + 16), inv, z, lo, hi);
        __m512i packed = _mm512_or_si512(a, _mm512_slli_epi32(c, 4));
        _mm_storeu_si128((__m128i *)(dst + b / 2), _mm512_cvtepi32_epi8(packed));
    }
}

static float q4_sqerr(const float *x, int64_t n, float scale, float inv_scale, float zero, float qmin, float qmax) {
    const __m512 s = _mm512_set1_ps(scale), inv = _mm512_set1_ps(inv_scale), z = _mm512_set1_ps(zero);
    const __m512 lo = _mm512_set1_ps(qmin), hi = _mm512_set1_ps(qmax);
    __m512 acc = _mm512_setzero_ps();
    for (int64_t i = 0; i < n; i += 16) {
        __m512 xv = _mm512_loadu_ps(x + i);
        __m512 q = _mm512_cvtepi32_ps(codes16(xv, inv, z, lo, hi));
        __m512 e = _mm512_sub_ps(xv, _mm512_mul_ps(_mm512_sub_ps(q, z), s));
        acc = _mm512_add_ps(acc, _mm512_mul_ps(e, e)); /* no FMA: the reference rounds twice */
    }
    float lane[16];
    _mm512_storeu_ps(lane, acc);
    for (int w = 8; w >= 1; w /= 2)
        for (int l = 0; l < w; l++) lane[l] = lane[l] + lane[l + w];
    return lane[0];
}

static void q4_unpack(const uint8_t *packed, int64_t n, float scale, float zero, float *dst) {
    const __m512 s = _mm512_set1_ps(scale), z = _mm512_set1_ps(zero);
    const __m512i mask = _mm512_set1_epi32(15);
    for (int64_t b = 0; b < n; b += MQ_Q4_BLOCK) {
        __m512i v = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(packed + b / 2)));
        __m512 lo = _mm512_cvtepi32_ps(_mm512_and_si512(v, mask));
        __m512 hi = _mm512_cvtepi32_ps(_mm512_srli_epi32(v, 4));
        _mm512_storeu_ps(dst + b, _mm512_mul_ps(_mm512_sub_ps(lo, z), s));
        _mm512_storeu_ps(dst + b + 16, _mm512_mul_ps(_mm512_sub_ps(hi, z), s));
    }
}

/* NR weight rows against one activation row; NR is a constant at each call
 * site so the row loops unroll into registers.  Low and high nibbles feed
 * separate accumulators so each FMA chain advances once per block. */
static inline __attribute__((always_inline)) void gemv_rows(const float *x, const float *xsum, const uint8_t *w,
                                                            int64_t kpad, int64_t group, const uint16_t *scale,
                                                            const uint8_t *zero, int64_t r, float *y, const int NR,
                                                            const char *prefetch_end) {
    const int64_t ngroups = (kpad + group - 1) / group, row_bytes = kpad / 2;
    const __m512 codes = _mm512_setr_ps(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    __m512 acc[4];
    float corr[4];
    for (int j = 0; j < NR; j++) {
        acc[j] = _mm512_setzero_ps();
        corr[j] = 0.0f;
    }
    for (int64_t g = 0; g < ngroups; g++) {
        __m512 glo[4], ghi[4];
        for (int j = 0; j < NR; j++) glo[j] = ghi[j] = _mm512_setzero_ps();
        int64_t end = (g + 1) * group < kpad ? (g + 1) * group : kpad;
        for (int64_t b = g * group; b < end; b += MQ_Q4_BLOCK) {
            __m512 xa = _mm512_loadu_ps(x + b), xb = _mm512_loadu_ps(x + b + 16);
            if (prefetch_end) { /* the next NR rows, read linearly while these NR are consumed */
                const char *ahead = (const char *)(w + (size_t)(r + NR) * (size_t)row_bytes) + (b / 32) * 64;
                if (ahead < prefetch_end) _mm_prefetch(ahead, _MM_HINT_T0);
            }
            for (int j = 0; j < NR; j++) {
                __m512i v = _mm512_cvtepu8_epi32(
                    _mm_loadu_si128((const __m128i *)(w + (size_t)(r + j) * (size_t)row_bytes + b / 2)));
                /* vpermps reads only an index's low 4 bits: the table lookup is the nibble mask and
                 * the int -> float conversion in one instruction */
                glo[j] = _mm512_fmadd_ps(_mm512_permutexvar_ps(v, codes), xa, glo[j]);
                ghi[j] = _mm512_fmadd_ps(_mm512_permutexvar_ps(_mm512_srli_epi32(v, 4), codes), xb, ghi[j]);
            }
        }
        for (int j = 0; j < NR; j++) {
            float s = _cvtsh_ss(scale[(r + j) * ngroups + g]); /* F16C: exact, as mq_f16_to_f32 */
            acc[j] = _mm512_fmadd_ps(_mm512_add_ps(glo[j], ghi[j]), _mm512_set1_ps(s), acc[j]);
            corr[j] += s * ((float)zero[(r + j) * ngroups + g] * (1.0f / 16.0f)) * xsum[g];
        }
    }
    for (int j = 0; j < NR; j++) y[r + j] = _mm512_reduce_add_ps(acc[j]) - corr[j];
}

static void q4_gemv(const float *x, int64_t ldx, int64_t m, const float *xsum, const uint8_t *w, int64_t kpad,
                    int64_t group, const uint16_t *scale, const uint8_t *zero, int64_t r0, int64_t r1, float *y,
                    int64_t ldy) {
    int64_t ngroups = (kpad + group - 1) / group, r = r0;
    for (; r + 4 <= r1; r += 4) /* the 4 rows stay in L1 across the activation rows */
        for (int64_t i = 0; i < m; i++)
            gemv_rows(x + i * ldx, xsum + i * ngroups, w, kpad, group, scale, zero, r, y + i * ldy, 4,
                      i == 0 ? (const char *)(w + (size_t)r1 * (size_t)(kpad / 2)) : NULL);
    for (; r < r1; r++)
        for (int64_t i = 0; i < m; i++)
            gemv_rows(x + i * ldx, xsum + i * ngroups, w, kpad, group, scale, zero, r, y + i * ldy, 1, NULL);
}

/* MR activation rows x NR weight rows, dot products along k (vectorized over
 * k, reduced once at the end). */
static inline __attribute__((always_inline)) void panel_tile(const float *x, int64_t ldx, const float *w,
                                                             int64_t ldw, int64_t kpad, float *y, int64_t ldy,
                                                             const int MR, const int NR) {
    __m512 acc[4][4];
    for (int i = 0; i < MR; i++)
        for (int j = 0; j < NR; j++) acc[i][j] = _mm512_setzero_ps();
    for (int64_t k = 0; k < kpad; k += 16) {
        __m512 xv[4];
        for (int i = 0; i < MR; i++) xv[i] = _mm512_loadu_ps(x + i * ldx + k);
        for (int j = 0; j < NR; j++) {
            __m512 wv = _mm512_loadu_ps(w + j * ldw + k);
            for (int i = 0; i < MR; i++) acc[i][j] = _mm512_fmadd_ps(xv[i], wv, acc[i][j]);
        }
    }
    for (int i = 0; i < MR; i++)
        for (int j = 0; j < NR; j++) y[i * ldy + j] += _mm512_reduce_add_ps(acc[i][j]);
}

static void f32_panel(const float *x, int64_t ldx, int64_t m, const float *w, int64_t ldw, int64_t nr, int64_t kpad,
                      float *y, int64_t ldy) {
    int64_t i = 0;
    if (nr == 4) {
        for (; i + 4 <= m; i += 4) panel_tile(x + i * ldx, ldx, w, ldw, kpad, y + i * ldy, ldy, 4, 4);
        for (; i < m; i++) panel_tile(x + i * ldx, ldx, w, ldw, kpad, y + i * ldy, ldy, 1, 4);
        return;
    }
    for (; i < m; i++)
        for (int64_t j = 0; j < nr; j++) panel_tile(x + i * ldx, ldx, w + j * ldw, ldw, kpad, y + i * ldy + j, ldy, 1, 1);
}

/* int8 activations in the weight's nibble order (mq.h); exactly ref.c's bits:
 * the group maximum is order-free, rint(x * inv) is cvtps under round-to-nearest-even. */
static void q4_act_i8(const float *x, int64_t kpad, int64_t group, int8_t *xq, float *xscale, int32_t *xqsum) {
    const int64_t ngroups = (kpad + group - 1) / group;
    const __m512 sign = _mm512_castsi512_ps(_mm512_set1_epi32(0x7fffffff));
    const __m512i lo = _mm512_set1_epi32(-127), hi = _mm512_set1_epi32(127);
    for (int64_t g = 0; g < ngroups; g++) {
        int64_t k0 = g * group, k1 = k0 + group < kpad ? k0 + group : kpad;
        __m512 amax = _mm512_setzero_ps();
        __mmask16 bad = 0;
        for (int64_t k = k0; k < k1; k += 16) {
            __m512 v = _mm512_loadu_ps(x + k), d = _mm512_sub_ps(v, v);
            bad |= _mm512_cmp_ps_mask(d, d, _CMP_UNORD_Q);
            amax = _mm512_max_ps(amax, _mm512_and_ps(v, sign));
        }
        if (bad) { /* NaN/Inf: the reference's rule for the group (its own whole chunks) */
            mq_ref_q4_act_i8(x + k0, k1 - k0, group, xq + k0, xscale + g, xqsum + g);
            continue;
        }
        float m = _mm512_reduce_max_ps(amax);
        float s = m > 0.0f ? m / 127.0f : 1.0f;
        if (!(s >= FLT_MIN)) s = FLT_MIN;
        const __m512 inv = _mm512_set1_ps(1.0f / s);
        __m512i sum = _mm512_setzero_si512();
        for (int64_t c = k0; c < k1; c += MQ_Q4_I8_CHUNK)
            for (int b = 0; b < 4; b++)
                for (int h = 0; h < 2; h++) { /* h = 0: columns 32b..32b+15 (low nibbles), 1: the high ones */
                    __m512i q = _mm512_cvtps_epi32(_mm512_mul_ps(_mm512_loadu_ps(x + c + 32 * b + 16 * h), inv));
                    q = _mm512_min_epi32(_mm512_max_epi32(q, lo), hi);
                    sum = _mm512_add_epi32(sum, q);
                    _mm_storeu_si128((__m128i *)(xq + c + 64 * h + 16 * b), _mm512_cvtepi32_epi8(q));
                }
        xscale[g] = s;
        xqsum[g] = _mm512_reduce_add_epi32(sum);
    }
}

const mq_kernels mq_avx512_int4_table = {
    .q4_pack = q4_pack,
    .q4_sqerr = q4_sqerr,
    .q4_unpack = q4_unpack,
    .q4_gemv = q4_gemv,
    .f32_panel = f32_panel,
    .q4_act_i8 = q4_act_i8,
};

#else
const mq_kernels mq_avx512_int4_table = {.name = NULL};
#endif
