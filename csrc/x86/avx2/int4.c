/* x86/avx2/int4.c - AVX2/FMA twins of the INT4 kernels in ref.c.
 *
 * Compiled with -mavx2 -mfma -mf16c, reached only through dispatch.c.
 * pack / sqerr / unpack give exactly ref.c's bits (sqerr keeps the 16
 * reference lanes as two 8-lane accumulators); gemv / panel are float dot
 * products whose summation order differs (equal to rounding). */
#include "mq.h"

#include <float.h>

#if defined(__x86_64__) && defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>

static inline __m256i codes8(__m256 x, __m256 inv, __m256 zero, __m256 lo, __m256 hi) {
    __m256 v = _mm256_round_ps(_mm256_add_ps(zero, _mm256_mul_ps(x, inv)), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    v = _mm256_min_ps(_mm256_max_ps(v, lo), hi); /* max(NaN, lo) = lo: NaN -> qmin, as ref.c */
    return _mm256_cvtps_epi32(v);
}

/* 16 int32 lanes (a: 0..7, b: 8..15) holding bytes -> 16 bytes in order */
static inline __m128i narrow16(__m256i a, __m256i b) {
    __m256i w = _mm256_permute4x64_epi64(_mm256_packs_epi32(a, b), 0xD8);
    return _mm_packus_epi16(_mm256_castsi256_si128(w), _mm256_extracti128_si256(w, 1));
}

static void q4_pack(const float *x, int64_t n, float inv_scale, float zero, float qmin, float qmax, uint8_t *dst) {
    const __m256 inv = _mm256_set1_ps(inv_scale), z = _mm256_set1_ps(zero);
    const __m256 lo = _mm256_set1_ps(qmin), hi = _mm256_set1_ps(qmax);
    for (int64_t b = 0; b < n; b += MQ_Q4_BLOCK) {
        __m256i a0 = codes8(_mm256_loadu_ps(x + b), inv, z, lo, hi);
        __m256i a1 = codes8(_mm256_loadu_ps(x + b + 8), inv, z, lo, hi);
        __m256i c0 = codes8(_mm256_loadu_ps(x + b + 16), inv, z, lo, hi);
        __m256i c1 = codes8(_mm256_loadu_ps(x + b + 24), inv, z, lo, hi);
        __m256i p0 = _mm256_or_si256(a0, _mm256_slli_epi32(c0, 4));
        __m256i p1 = _mm256_or_si256(a1, _mm256_slli_epi32(c1, 4));
        _mm_storeu_si128((__m128i *)(dst + b / 2), narrow16(p0, p1));
    }
}

static inline __m256 sqerr8(__m256 xv, __m256 s, __m256 inv, __m256 z, __m256 lo, __m256 hi) {
    __m256 q = _mm256_cvtepi32_ps(codes8(xv, inv, z, lo, hi));
    __m256 e = _mm256_sub_ps(xv, _mm256_mul_ps(_mm256_sub_ps(q, z), s));
    return _mm256_mul_ps(e, e);
}

static float q4_sqerr(const float *x, int64_t n, float scale, float inv_scale, float zero, float qmin, float qmax) {
    const __m256 s = _mm256_set1_ps(scale), inv = _mm256_set1_ps(inv_scale), z = _mm256_set1_ps(zero);
    const __m256 lo = _mm256_set1_ps(qmin), hi = _mm256_set1_ps(qmax);
    __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps(); /* reference lanes 0..7 and 8..15 */
    for (int64_t i = 0; i < n; i += 16) {
        acc0 = _mm256_add_ps(acc0, sqerr8(_mm256_loadu_ps(x + i), s, inv, z, lo, hi));
        acc1 = _mm256_add_ps(acc1, sqerr8(_mm256_loadu_ps(x + i + 8), s, inv, z, lo, hi));
    }
    float lane[16];
    _mm256_storeu_ps(lane, acc0);
    _mm256_storeu_ps(lane + 8, acc1);
    for (int w = 8; w >= 1; w /= 2)
        for (int l = 0; l < w; l++) lane[l] = lane[l] + lane[l + w];
    return lane[0];
}

static inline __m256i load8_u8(const uint8_t *p) {
    return _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)p));
}

static void q4_unpack(const uint8_t *packed, int64_t n, float scale, float zero, float *dst) {
    const __m256 s = _mm256_set1_ps(scale), z = _mm256_set1_ps(zero);
    const __m256i mask = _mm256_set1_epi32(15);
    for (int64_t b = 0; b < n; b += MQ_Q4_BLOCK)
        for (int h = 0; h < 16; h += 8) {
            __m256i v = load8_u8(packed + b / 2 + h);
            __m256 lo = _mm256_cvtepi32_ps(_mm256_and_si256(v, mask));
            __m256 hi = _mm256_cvtepi32_ps(_mm256_srli_epi32(v, 4));
            _mm256_storeu_ps(dst + b + h, _mm256_mul_ps(_mm256_sub_ps(lo, z), s));
            _mm256_storeu_ps(dst + b + 16 + h, _mm256_mul_ps(_mm256_sub_ps(hi, z), s));
        }
}

static inline float hsum8(__m256 v) {
    __m128 a = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    a = _mm_add_ps(a, _mm_movehl_ps(a, a));
    a = _mm_add_ss(a, _mm_movehdup_ps(a));
    return _mm_cvtss_f32(a);
}

static inline __attribute__((always_inline)) void gemv_rows(const float *x, const float *xsum, const uint8_t *w,
                                                            int64_t kpad, int64_t group, const uint16_t *scale,
                                                            const uint8_t *zero, int64_t r, float *y, const int NR,
                                                            const char *prefetch_end) {
    const int64_t ngroups = (kpad + group - 1) / group, row_bytes = kpad / 2;
    const __m256i mask = _mm256_set1_epi32(15);
    __m256 acc[4];
    float corr[4];
    for (int j = 0; j < NR; j++) {
        acc[j] = _mm256_setzero_ps();
        corr[j] = 0.0f;
    }
    for (int64_t g = 0; g < ngroups; g++) {
        __m256 gacc[4];
        for (int j = 0; j < NR; j++) gacc[j] = _mm256_setzero_ps();
        for (int64_t b = g * group; b < (g + 1) * group && b < kpad; b += MQ_Q4_BLOCK) {
            if (prefetch_end) { /* the next NR rows, read linearly while these NR are consumed */
                const char *ahead = (const char *)(w + (size_t)(r + NR) * (size_t)row_bytes) + (b / 32) * 64;
                if (ahead < prefetch_end) _mm_prefetch(ahead, _MM_HINT_T0);
            }
            for (int h = 0; h < 16; h += 8) {
                __m256 xa = _mm256_loadu_ps(x + b + h), xb = _mm256_loadu_ps(x + b + 16 + h);
                for (int j = 0; j < NR; j++) {
                    __m256i v = load8_u8(w + (size_t)(r + j) * (size_t)row_bytes + b / 2 + h);
                    gacc[j] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_and_si256(v, mask)), xa, gacc[j]);
                    gacc[j] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_srli_epi32(v, 4)), xb, gacc[j]);
                }
            }
        }
        for (int j = 0; j < NR; j++) {
            float s = _cvtsh_ss(scale[(r + j) * ngroups + g]); /* F16C: exact, as mq_f16_to_f32 */
            acc[j] = _mm256_fmadd_ps(gacc[j], _mm256_set1_ps(s), acc[j]);
            corr[j] += s * ((float)zero[(r + j) * ngroups + g] * (1.0f / 16.0f)) * xsum[g];
        }
    }
    for (int j = 0; j < NR; j++) y[r + j] = hsum8(acc[j]) - corr[j];
}

static void q4_gemv(const float *x, int64_t ldx, int64_t m, const float *xsum, const uint8_t *w, int64_t kpad,
                    int64_t group, const uint16_t *scale, const uint8_t *zero, int64_t r0, int64_t r1, float *y,
                    int64_t ldy) {
    int64_t ngroups = (kpad + group - 1) / group, r = r0;
    for (; r + 4 <= r1; r += 4)
        for (int64_t i = 0; i < m; i++)
            gemv_rows(x + i * ldx, xsum + i * ngroups, w, kpad, group, scale, zero, r, y + i * ldy, 4,
                      i == 0 ? (const char *)(w + (size_t)r1 * (size_t)(kpad / 2)) : NULL);
    for (; r < r1; r++)
        for (int64_t i = 0; i < m; i++)
            gemv_rows(x + i * ldx, xsum + i * ngroups, w, kpad, group, scale, zero, r, y + i * ldy, 1, NULL);
}

static inline __attribute__((always_inline)) void panel_tile(const float *x, int64_t ldx, const float *w,
                                                             int64_t ldw, int64_t kpad, float *y, int64_t ldy,
                                                             const int MR, const int NR) {
    __m256 acc[4][2];
    for (int i = 0; i < MR; i++)
        for (int j = 0; j < NR; j++) acc[i][j] = _mm256_setzero_ps();
    for (int64_t k = 0; k < kpad; k += 8) {
        __m256 xv[4];
        for (int i = 0; i < MR; i++) xv[i] = _mm256_loadu_ps(x + i * ldx + k);
        for (int j = 0; j < NR; j++) {
            __m256 wv = _mm256_loadu_ps(w + j * ldw + k);
            for (int i = 0; i < MR; i++) acc[i][j] = _mm256_fmadd_ps(xv[i], wv, acc[i][j]);
        }
    }
    for (int i = 0; i < MR; i++)
        for (int j = 0; j < NR; j++) y[i * ldy + j] += hsum8(acc[i][j]);
}

static void f32_panel(const float *x, int64_t ldx, int64_t m, const float *w, int64_t ldw, int64_t nr, int64_t kpad,
                      float *y, int64_t ldy) {
    int64_t j = 0;
    for (; j + 2 <= nr; j += 2) {
        int64_t i = 0;
        for (; i + 4 <= m; i += 4) panel_tile(x + i * ldx, ldx, w + j * ldw, ldw, kpad, y + i * ldy + j, ldy, 4, 2);
        for (; i < m; i++) panel_tile(x + i * ldx, ldx, w + j * ldw, ldw, kpad, y + i * ldy + j, ldy, 1, 2);
    }
    for (; j < nr; j++)
        for (int64_t i = 0; i < m; i++) panel_tile(x + i * ldx, ldx, w + j * ldw, ldw, kpad, y + i * ldy + j, ldy, 1, 1);
}

/* int8-activation GEMV with the maddubs trick: codes (u8, <= 15) times
 * activations (s8, |.| <= 127) summed in pairs fit int16 with room to spare
 * (2 * 15 * 127 = 3810, and the low and high nibble sums added: 7620), then
 * madd with ones widens to int32.  Integer sums are exact and the float
 * epilogue follows ref.c's order, so results equal the reference's bits. */
static inline __m128i reduce4_avx2(__m256i a, __m256i b, __m256i c, __m256i d) {
    __m256i ab = _mm256_hadd_epi32(a, b), cd = _mm256_hadd_epi32(c, d);
    __m256i abcd = _mm256_hadd_epi32(ab, cd); /* per 128-bit half: a, b, c, d partial sums */
    return _mm_add_epi32(_mm256_castsi256_si128(abcd), _mm256_extracti128_si256(abcd, 1));
}

/* One activation row at a time (batch 1 streams the weight from memory: prefetch, not
 * arithmetic, bounds it, and this loop is the fastest measured there).  Its 4 weight rows
 * are a quarter of the range apart (rows t, q + t, 2q + t, 3q + t): 4 DRAM streams, where 4
 * adjacent rows are one (8 KiB contiguous at K = 4096), and one core gets about 1.5x the
 * bandwidth from 4 (Zen 3: 9.4 against 15 GB/s); each row's sums are as before, so its bits
 * too.  Not inlined: inlined, or cloned for m = 1, GCC 12's code ran batch 1 at K = 768 10%
 * slower. */
__attribute__((noinline)) static void q4_gemv_i8_row(const int8_t *xq, int64_t m, const float *xscale, const int32_t *xqsum, const uint8_t *w,
                       int64_t kpad, int64_t group, const uint16_t *scale, const uint8_t *zero, int64_t r0,
                       int64_t r1, float *y, int64_t ldy) {
    const int64_t ngroups = (kpad + group - 1) / group, row_bytes = kpad / 2, q = (r1 - r0) / 4;
    const __m256i low = _mm256_set1_epi8(15), ones = _mm256_set1_epi16(1);
    for (int64_t t = 0; t < q; t++) {
        const int64_t rr[4] = {r0 + t, r0 + q + t, r0 + 2 * q + t, r0 + 3 * q + t};
        const uint8_t *wr[4];
        for (int j = 0; j < 4; j++) wr[j] = w + (size_t)rr[j] * (size_t)row_bytes;
        for (int64_t i = 0; i < m; i++) {
            const int8_t *xr = xq + i * kpad;
            __m128 acc = _mm_setzero_ps();
            for (int64_t g = 0; g < ngroups; g++) {
                int64_t k0 = g * group, k1 = k0 + group < kpad ? k0 + group : kpad;
                __m256i d[4];
                for (int j = 0; j < 4; j++) d[j] = _mm256_setzero_si256();
                for (int64_t k = k0; k < k1; k += MQ_Q4_I8_CHUNK) {
                    /* each stream's next row, same 64 bytes, while these are consumed */
                    if (i == 0 && t + 1 < q)
                        for (int j = 0; j < 4; j++)
                            _mm_prefetch((const char *)(wr[j] + row_bytes + k / 2), _MM_HINT_T0);
                    for (int h = 0; h < 2; h++) { /* 32 weight bytes: blocks 2h, 2h+1 of the chunk */
                        __m256i xl = _mm256_loadu_si256((const __m256i *)(xr + k + 32 * h));
                        __m256i xh = _mm256_loadu_si256((const __m256i *)(xr + k + 64 + 32 * h));
                        for (int j = 0; j < 4; j++) {
                            __m256i v = _mm256_loadu_si256((const __m256i *)(wr[j] + k / 2 + 32 * h));
                            __m256i p = _mm256_add_epi16(
                                _mm256_maddubs_epi16(_mm256_and_si256(v, low), xl),
                                _mm256_maddubs_epi16(_mm256_and_si256(_mm256_srli_epi16(v, 4), low), xh));
                            d[j] = _mm256_add_epi32(d[j], _mm256_madd_epi16(p, ones));
                        }
                    }
                }
                __m128i dot = reduce4_avx2(d[0], d[1], d[2], d[3]);
                __m128i z = _mm_setr_epi32(zero[rr[0] * ngroups + g], zero[rr[1] * ngroups + g],
                                           zero[rr[2] * ngroups + g], zero[rr[3] * ngroups + g]);
                __m128i tt = _mm_sub_epi32(_mm_slli_epi32(dot, 4),
                                           _mm_mullo_epi32(z, _mm_set1_epi32(xqsum[i * ngroups + g])));
                __m128i s16 = _mm_setr_epi16((short)scale[rr[0] * ngroups + g], (short)scale[rr[1] * ngroups + g],
                                             (short)scale[rr[2] * ngroups + g], (short)scale[rr[3] * ngroups + g],
                                             0, 0, 0, 0);
                __m128 sw = _mm_mul_ps(_mm_cvtph_ps(s16), _mm_set1_ps(1.0f / 16.0f)); /* exact: a power of two */
                __m128 f = _mm_mul_ps(sw, _mm_set1_ps(xscale[i * ngroups + g]));
                acc = _mm_add_ps(acc, _mm_mul_ps(f, _mm_cvtepi32_ps(tt)));
            }
            float out[4];
            _mm_storeu_ps(out, acc);
            for (int j = 0; j < 4; j++) y[i * ldy + rr[j]] = out[j];
        }
    }
    if (r0 + 4 * q < r1) {
        if (q > 0) /* the last rows with the 3 before them again (the same bits): 10 outputs ran 2 on the reference */
            q4_gemv_i8_row(xq, m, xscale, xqsum, w, kpad, group, scale, zero, r1 - 4, r1, y, ldy);
        else
            mq_ref_q4_gemv_i8(xq, m, xscale, xqsum, w, kpad, group, scale, zero, r0, r1, y, ldy);
    }
}

/* 4 weight rows x R activation rows (R = 1, 2) over [r, r + 4): each 64-byte
 * piece of a weight row (128 codes) is unpacked once and used for the R rows,
 * and its 4 maddubs products per activation row are added in int16 before one
 * madd widens them (4 * 2 * 15 * 127 = 15240 < 32767).  The per-group scales
 * and zero-points (sw_g, z_g) are set up once per 4 weight rows. */
static inline __attribute__((always_inline)) void q4i8_tile(const int8_t *xq, int64_t i0, const float *xscale,
                                                            const int32_t *xqsum, const uint8_t *w0,
                                                            int64_t row_bytes, int64_t kpad, int64_t group,
                                                            int64_t ngroups, const __m128 *sw_g,
                                                            const __m128i *z_g, int64_t r, float *y, int64_t ldy,
                                                            int prefetch_rows, const int R, const int one_chunk) {
    const __m256i low = _mm256_set1_epi8(15), ones = _mm256_set1_epi16(1);
    __m128 acc[2] = {_mm_setzero_ps(), _mm_setzero_ps()};
    for (int64_t g = 0; g < ngroups; g++) {
        const int64_t k0 = g * group, k1 = k0 + group < kpad ? k0 + group : kpad;
        __m256i d[2][4];
        for (int i = 0; i < R; i++)
            for (int j = 0; j < 4; j++) d[i][j] = _mm256_setzero_si256();
        /* one_chunk (group 128, the default): one pass, so GCC keeps d in registers */
        const int64_t kend = one_chunk ? k0 + MQ_Q4_I8_CHUNK : k1;
        for (int64_t k = k0; k < kend; k += MQ_Q4_I8_CHUNK) {
            /* the next 4 rows' same 64 bytes, while these are consumed: 4 interleaved row
             * streams defeat the hardware prefetcher (batch 1 from DRAM ran at ~12 GB/s, ~25 with this) */
            if (prefetch_rows)
                for (int j = 0; j < 4; j++) _mm_prefetch((const char *)(w0 + (4 + j) * row_bytes + k / 2), _MM_HINT_T0);
            for (int j = 0; j < 4; j++) {
                const uint8_t *wj = w0 + j * row_bytes + k / 2;
                const __m256i v0 = _mm256_loadu_si256((const __m256i *)wj);
                const __m256i v1 = _mm256_loadu_si256((const __m256i *)(wj + 32));
                const __m256i lo0 = _mm256_and_si256(v0, low), hi0 = _mm256_and_si256(_mm256_srli_epi16(v0, 4), low);
                const __m256i lo1 = _mm256_and_si256(v1, low), hi1 = _mm256_and_si256(_mm256_srli_epi16(v1, 4), low);
                for (int i = 0; i < R; i++) {
                    const int8_t *xr = xq + (i0 + i) * kpad + k;
                    __m256i p = _mm256_add_epi16(
                        _mm256_maddubs_epi16(lo0, _mm256_loadu_si256((const __m256i *)xr)),
                        _mm256_maddubs_epi16(hi0, _mm256_loadu_si256((const __m256i *)(xr + 64))));
                    p = _mm256_add_epi16(p, _mm256_add_epi16(
                        _mm256_maddubs_epi16(lo1, _mm256_loadu_si256((const __m256i *)(xr + 32))),
                        _mm256_maddubs_epi16(hi1, _mm256_loadu_si256((const __m256i *)(xr + 96)))));
                    d[i][j] = _mm256_add_epi32(d[i][j], _mm256_madd_epi16(p, ones));
                }
            }
        }
        const __m128i z = z_g[g];
        const __m128 sw = sw_g[g];
        for (int i = 0; i < R; i++) {
            const int64_t ig = (i0 + i) * ngroups + g;
            const __m128i dot = reduce4_avx2(d[i][0], d[i][1], d[i][2], d[i][3]);
            const __m128i t = _mm_sub_epi32(_mm_slli_epi32(dot, 4), _mm_mullo_epi32(z, _mm_set1_epi32(xqsum[ig])));
            const __m128 f = _mm_mul_ps(sw, _mm_set1_ps(xscale[ig]));
            acc[i] = _mm_add_ps(acc[i], _mm_mul_ps(f, _mm_cvtepi32_ps(t)));
        }
    }
    for (int i = 0; i < R; i++) _mm_storeu_ps(y + (i0 + i) * ldy + r, acc[i]);
}

static void q4_gemv_i8(const int8_t *xq, int64_t m, const float *xscale, const int32_t *xqsum, const uint8_t *w,
                       int64_t kpad, int64_t group, const uint16_t *scale, const uint8_t *zero, int64_t r0,
                       int64_t r1, float *y, int64_t ldy) {
    const int64_t ngroups = (kpad + group - 1) / group, row_bytes = kpad / 2;
    /* the 4 rows' scales (f16 -> f32, / 16: exact) and zero-points per group, set up once for
     * every pair of activation rows */
    __m128 *sw_g = m >= 2 ? aligned_alloc(16, (size_t)ngroups * 2 * sizeof(__m128)) : NULL;
    if (!sw_g) { /* one row (or no memory): a row at a time */
        q4_gemv_i8_row(xq, m, xscale, xqsum, w, kpad, group, scale, zero, r0, r1, y, ldy);
        return;
    }
    __m128i *z_g = (__m128i *)(sw_g + ngroups);
    int64_t r = r0;
    const int64_t last = r1 - r0 >= 4 ? r1 - 4 : -1; /* rows past whole steps: the last 4 again (same bits) */
    for (; r + 4 <= r1 || (r < r1 && last >= 0); r += 4) {
        if (r + 4 > r1) r = last;
        const uint8_t *w0 = w + (size_t)r * (size_t)row_bytes;
        for (int64_t g = 0; g < ngroups; g++) {
            z_g[g] = _mm_setr_epi32(zero[r * ngroups + g], zero[(r + 1) * ngroups + g], zero[(r + 2) * ngroups + g],
                                    zero[(r + 3) * ngroups + g]);
            const __m128i s16 = _mm_setr_epi16((short)scale[r * ngroups + g], (short)scale[(r + 1) * ngroups + g],
                                               (short)scale[(r + 2) * ngroups + g],
                                               (short)scale[(r + 3) * ngroups + g], 0, 0, 0, 0);
            sw_g[g] = _mm_mul_ps(_mm_cvtph_ps(s16), _mm_set1_ps(1.0f / 16.0f)); /* exact: a power of two */
        }
        const int prefetch = r + 8 <= r1;
        int64_t i = 0;
        if (group == MQ_Q4_I8_CHUNK)
            for (; i + 2 <= m; i += 2)
                q4i8_tile(xq, i, xscale, xqsum, w0, row_bytes, kpad, group, ngroups, sw_g, z_g, r, y, ldy,
                          prefetch && i == 0, 2, 1);
        for (; i + 2 <= m; i += 2)
            q4i8_tile(xq, i, xscale, xqsum, w0, row_bytes, kpad, group, ngroups, sw_g, z_g, r, y, ldy,
                      prefetch && i == 0, 2, 0);
        if (i < m)
            q4i8_tile(xq, i, xscale, xqsum, w0, row_bytes, kpad, group, ngroups, sw_g, z_g, r, y, ldy,
                      0, 1, 0);
    }
    free(sw_g);
    if (r < r1) mq_ref_q4_gemv_i8(xq, m, xscale, xqsum, w, kpad, group, scale, zero, r, r1, y, ldy);
}

/* int8 activations in the weight's nibble order (mq.h); exactly ref.c's bits:
 * the group maximum is order-free, rint(x * inv) is cvtps under round-to-nearest-even,
 * and a group holding NaN/Inf gets codes 0 and a NaN scale.  (The scalar twin ran at
 * ~4 ns an element: at 512 rows x 384 it was half of an int4 layer's time.)  i8 mode
 * only: groups are whole 128-column chunks (mq_q4_int8_ok). */
static void q4_act_i8(const float *x, int64_t kpad, int64_t group, int8_t *xq, float *xscale, int32_t *xqsum) {
    const int64_t ngroups = (kpad + group - 1) / group;
    const __m256 sign = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
    const __m256i lo = _mm256_set1_epi32(-127), hi = _mm256_set1_epi32(127);
    for (int64_t g = 0; g < ngroups; g++) {
        const int64_t k0 = g * group, k1 = k0 + group < kpad ? k0 + group : kpad;
        __m256 amax = _mm256_setzero_ps();
        int bad = 0;
        for (int64_t k = k0; k < k1; k += 8) {
            const __m256 v = _mm256_loadu_ps(x + k), d = _mm256_sub_ps(v, v);
            bad |= _mm256_movemask_ps(_mm256_cmp_ps(d, d, _CMP_UNORD_Q));
            amax = _mm256_max_ps(amax, _mm256_and_ps(v, sign));
        }
        if (bad) { /* NaN/Inf: the reference's rule for the group (its own whole chunks) */
            mq_ref_q4_act_i8(x + k0, k1 - k0, group, xq + k0, xscale + g, xqsum + g);
            continue;
        }
        __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(amax), _mm256_extractf128_ps(amax, 1));
        m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
        const float m = _mm_cvtss_f32(_mm_max_ss(m4, _mm_shuffle_ps(m4, m4, 1)));
        float s = m > 0.0f ? m / 127.0f : 1.0f;
        if (!(s >= FLT_MIN)) s = FLT_MIN;
        const __m256 inv = _mm256_set1_ps(1.0f / s);
        __m256i sum = _mm256_setzero_si256();
        for (int64_t c = k0; c < k1; c += MQ_Q4_I8_CHUNK)
            for (int b = 0; b < 4; b++)
                for (int h = 0; h < 2; h++) { /* h = 0: columns 32b..32b+15 (low nibbles), 1: the high ones */
                    const float *src = x + c + 32 * b + 16 * h;
                    __m256i q0 = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(src), inv));
                    __m256i q1 = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(src + 8), inv));
                    q0 = _mm256_min_epi32(_mm256_max_epi32(q0, lo), hi);
                    q1 = _mm256_min_epi32(_mm256_max_epi32(q1, lo), hi);
                    sum = _mm256_add_epi32(sum, _mm256_add_epi32(q0, q1));
                    const __m256i w16 = _mm256_permute4x64_epi64(_mm256_packs_epi32(q0, q1), 0xD8); /* in order */
                    _mm_storeu_si128((__m128i *)(xq + c + 64 * h + 16 * b),
                                     _mm_packs_epi16(_mm256_castsi256_si128(w16), _mm256_extracti128_si256(w16, 1)));
                }
        __m128i s4 = _mm_add_epi32(_mm256_castsi256_si128(sum), _mm256_extracti128_si256(sum, 1));
        s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0x4E));
        xscale[g] = s;
        xqsum[g] = _mm_cvtsi128_si32(_mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0xB1)));
    }
}

const mq_kernels mq_avx2_int4_table = {
    .q4_pack = q4_pack,
    .q4_sqerr = q4_sqerr,
    .q4_unpack = q4_unpack,
    .q4_gemv = q4_gemv,
    .f32_panel = f32_panel,
    .q4_gemv_i8 = q4_gemv_i8,
    .q4_gemv_i8_name = "avx2_maddubs",
    .q4_act_i8 = q4_act_i8,
};

#else
const mq_kernels mq_avx2_int4_table = {.name = NULL};
#endif
