/* x86/avx512_vnni/int4.c - the int8-activation INT4 GEMV with AVX-512 VNNI.
 *
 * Own compile unit (-mavx512vnni), installed in the AVX-512 table only when
 * the CPU reports avx512_vnni (else the AVX-512 level keeps AVX2's maddubs kernel).  Codes (u8, 0..15) times activations (s8)
 * with vpdpbusd: 64 multiply-adds per instruction, exact int32 sums; the
 * per-group float epilogue runs for 4 weight rows at once in the reference's
 * order, so results equal ref.c's bit for bit. */
#include "mq.h"

#if defined(__x86_64__) && defined(__AVX512F__) && defined(__AVX512VNNI__)
#include <immintrin.h>

/* sums of the 16 int32 lanes of a, b, c, d -> lanes 0..3 */
static inline __m128i reduce4(__m512i a, __m512i b, __m512i c, __m512i d) {
    __m256i a8 = _mm256_add_epi32(_mm512_castsi512_si256(a), _mm512_extracti64x4_epi64(a, 1));
    __m256i b8 = _mm256_add_epi32(_mm512_castsi512_si256(b), _mm512_extracti64x4_epi64(b, 1));
    __m256i c8 = _mm256_add_epi32(_mm512_castsi512_si256(c), _mm512_extracti64x4_epi64(c, 1));
    __m256i d8 = _mm256_add_epi32(_mm512_castsi512_si256(d), _mm512_extracti64x4_epi64(d, 1));
    __m256i ab = _mm256_hadd_epi32(a8, b8), cd = _mm256_hadd_epi32(c8, d8);
    __m256i abcd = _mm256_hadd_epi32(ab, cd); /* per 128-bit half: a, b, c, d partial sums */
    return _mm_add_epi32(_mm256_castsi256_si128(abcd), _mm256_extracti128_si256(abcd, 1));
}

/* int32 dot products of 4 weight rows (w0, row_bytes apart) with MB
 * activation rows (xr, kpad apart) over columns [k0, k1): each 64-byte chunk
 * of a row is unpacked once and used for all MB activation rows. */
static inline __attribute__((always_inline)) void group_dots(const uint8_t *w0, int64_t row_bytes, const int8_t *xr,
                                                             int64_t kpad, int64_t k0, int64_t k1,
                                                             const char *prefetch_end, int64_t ahead,
                                                             __m512i d[4][4], const int MB) {
    const __m512i low = _mm512_set1_epi8(15);
    for (int i = 0; i < MB; i++)
        for (int j = 0; j < 4; j++) d[i][j] = _mm512_setzero_si512();
    for (int64_t k = k0; k < k1; k += MQ_Q4_I8_CHUNK) {
        const uint8_t *p = w0 + k / 2;
        if (prefetch_end) { /* the 4 rows `ahead` rows on, read linearly while these 4 are consumed
                             * (one contiguous block; the same columns of each row ran slower from DRAM) */
            const char *next = (const char *)w0 + ahead * row_bytes + (k / MQ_Q4_I8_CHUNK) * 256;
            if (next + 256 <= prefetch_end)
                for (int j = 0; j < 4; j++) _mm_prefetch(next + 64 * j, _MM_HINT_T0);
        }
        __m512i lo[4], hi[4];
        for (int j = 0; j < 4; j++) {
            __m512i v = _mm512_loadu_si512(p + j * row_bytes);
            lo[j] = _mm512_and_si512(v, low);
            hi[j] = _mm512_and_si512(_mm512_srli_epi16(v, 4), low);
        }
        for (int i = 0; i < MB; i++) {
            __m512i xl = _mm512_loadu_si512(xr + i * kpad + k), xh = _mm512_loadu_si512(xr + i * kpad + k + 64);
            for (int j = 0; j < 4; j++) {
                d[i][j] = _mm512_dpbusd_epi32(d[i][j], lo[j], xl);
                d[i][j] = _mm512_dpbusd_epi32(d[i][j], hi[j], xh);
            }
        }
    }
}

#define MQ_I8_MB 64 /* activation rows whose 4 partial outputs live in a local buffer */

/* the 16 lane sums of d[u][j] (u, j < 4) as one vector, lane 4u + j */
static inline __m512i reduce16(__m512i d[4][4]) {
    __m512i p[8], q[4];
    for (int k = 0; k < 8; k++) { /* per 128-bit chunk: [a0+a2, b0+b2, a1+a3, b1+b3] */
        __m512i a = d[(2 * k) / 4][(2 * k) % 4], b = d[(2 * k + 1) / 4][(2 * k + 1) % 4];
        p[k] = _mm512_add_epi32(_mm512_unpacklo_epi32(a, b), _mm512_unpackhi_epi32(a, b));
    }
    for (int k = 0; k < 4; k++) /* per 128-bit chunk: the partial sums of 4 sources */
        q[k] = _mm512_add_epi32(_mm512_unpacklo_epi64(p[2 * k], p[2 * k + 1]),
                                _mm512_unpackhi_epi64(p[2 * k], p[2 * k + 1]));
    __m512i s0 = _mm512_add_epi32(_mm512_shuffle_i32x4(q[0], q[1], _MM_SHUFFLE(2, 0, 2, 0)),
                                  _mm512_shuffle_i32x4(q[0], q[1], _MM_SHUFFLE(3, 1, 3, 1)));
    __m512i s1 = _mm512_add_epi32(_mm512_shuffle_i32x4(q[2], q[3], _MM_SHUFFLE(2, 0, 2, 0)),
                                  _mm512_shuffle_i32x4(q[2], q[3], _MM_SHUFFLE(3, 1, 3, 1)));
    return _mm512_add_epi32(_mm512_shuffle_i32x4(s0, s1, _MM_SHUFFLE(2, 0, 2, 0)),
                            _mm512_shuffle_i32x4(s0, s1, _MM_SHUFFLE(3, 1, 3, 1)));
}

/* One activation row (batch 1): the 4 weight rows of a step a quarter of the range apart
 * (rows t, q + t, 2q + t, 3q + t), 4 DRAM streams where 4 adjacent rows are one (as
 * x86/avx2/int4.c's q4_gemv_i8_row); each row's sums and epilogue are the 4-row loop's, so
 * the same bits.  Intel Xeon with AMX, 1 Dec, 1 thread, against the 4-row loop (K > 1024) and
 * a 16-row loop (K <= 1024, removed): weights from DRAM 1.07-1.65x the speed, from L3
 * 1.05-1.34x; hot in L2 0.92-1.22x (a layer alone in a loop, not a model).  Returns the
 * first row it did not do. */
static int64_t q4_gemv_i8_quarters(const int8_t *xq, const float *xscale, const int32_t *xqsum, const uint8_t *w,
                                   int64_t kpad, int64_t group, const uint16_t *scale, const uint8_t *zero,
                                   int64_t r0, int64_t r1, float *y) {
    const int64_t ngroups = (kpad + group - 1) / group, row_bytes = kpad / 2, q = (r1 - r0) / 4;
    const __m512i low = _mm512_set1_epi8(15);
    for (int64_t t = 0; t < q; t++) {
        const int64_t rr[4] = {r0 + t, r0 + q + t, r0 + 2 * q + t, r0 + 3 * q + t};
        const uint8_t *wr[4];
        for (int j = 0; j < 4; j++) wr[j] = w + (size_t)rr[j] * (size_t)row_bytes;
        __m128 acc = _mm_setzero_ps();
        for (int64_t g = 0; g < ngroups; g++) {
            const int64_t k0 = g * group, k1 = k0 + group < kpad ? k0 + group : kpad;
            __m512i d[4];
            for (int j = 0; j < 4; j++) d[j] = _mm512_setzero_si512();
            for (int64_t k = k0; k < k1; k += MQ_Q4_I8_CHUNK) {
                if (t + 1 < q) /* each stream's next row, same 64 bytes, while these are consumed */
                    for (int j = 0; j < 4; j++) _mm_prefetch((const char *)(wr[j] + row_bytes + k / 2), _MM_HINT_T0);
                const __m512i xl = _mm512_loadu_si512(xq + k), xh = _mm512_loadu_si512(xq + k + 64);
                for (int j = 0; j < 4; j++) {
                    const __m512i v = _mm512_loadu_si512(wr[j] + k / 2);
                    d[j] = _mm512_dpbusd_epi32(d[j], _mm512_and_si512(v, low), xl);
                    d[j] = _mm512_dpbusd_epi32(d[j], _mm512_and_si512(_mm512_srli_epi16(v, 4), low), xh);
                }
            }
            const __m128i dot = reduce4(d[0], d[1], d[2], d[3]);
            const __m128i z = _mm_setr_epi32(zero[rr[0] * ngroups + g], zero[rr[1] * ngroups + g],
                                             zero[rr[2] * ngroups + g], zero[rr[3] * ngroups + g]);
            const __m128i s16 = _mm_setr_epi16((short)scale[rr[0] * ngroups + g], (short)scale[rr[1] * ngroups + g],
                                               (short)scale[rr[2] * ngroups + g], (short)scale[rr[3] * ngroups + g],
                                               0, 0, 0, 0);
            const __m128 sw = _mm_mul_ps(_mm_cvtph_ps(s16), _mm_set1_ps(1.0f / 16.0f)); /* exact: a power of two */
            const __m128i tt = _mm_sub_epi32(_mm_slli_epi32(dot, 4), _mm_mullo_epi32(z, _mm_set1_epi32(xqsum[g])));
            const __m128 f = _mm_mul_ps(sw, _mm_set1_ps(xscale[g]));
            acc = _mm_add_ps(acc, _mm_mul_ps(f, _mm_cvtepi32_ps(tt)));
        }
        float out[4];
        _mm_storeu_ps(out, acc);
        for (int j = 0; j < 4; j++) y[rr[j]] = out[j];
    }
    return r0 + 4 * q;
}

/* exported for the AMX unit's rows past whole tiles */
void mq_avx512vnni_q4_gemv_i8(const int8_t *xq, int64_t m, const float *xscale, const int32_t *xqsum,
                              const uint8_t *w, int64_t kpad, int64_t group, const uint16_t *scale,
                              const uint8_t *zero, int64_t r0, int64_t r1, float *y, int64_t ldy) {
    const int64_t ngroups = (kpad + group - 1) / group, row_bytes = kpad / 2;
    const char *range_end = (const char *)(w + (size_t)r1 * (size_t)row_bytes);
    if (m == 1) {
        const int64_t done = q4_gemv_i8_quarters(xq, xscale, xqsum, w, kpad, group, scale, zero, r0, r1, y);
        if (done < r1 && r1 - r0 >= 4) /* the last rows with the 3 before them again (the same bits) */
            q4_gemv_i8_quarters(xq, xscale, xqsum, w, kpad, group, scale, zero, r1 - 4, r1, y);
        else if (done < r1)
            mq_ref_q4_gemv_i8(xq, m, xscale, xqsum, w, kpad, group, scale, zero, done, r1, y, ldy);
        return;
    }
    /* the running sums stay here, not in y: y's rows are ldy floats apart, often a multiple of
     * 4 KiB, and 8+ of them would fight over one L1 set on every group */
    float ybuf[MQ_I8_MB * 4];
    int64_t r = r0;
    /* rows past whole steps: the last 4 of the range again (each row's sums are its own: the same
     * bits); on the reference they took 2 of 10 outputs 6x the time of the other 8 */
    const int64_t last = r1 - r0 >= 4 ? r1 - 4 : -1;
    for (; r + 4 <= r1 || (r < r1 && last >= 0); r += 4) {
        if (r + 4 > r1) r = last;
        const uint8_t *w0 = w + (size_t)r * (size_t)row_bytes;
        for (int64_t i0 = 0; i0 < m; i0 += MQ_I8_MB) {
            int64_t mb_end = i0 + MQ_I8_MB < m ? i0 + MQ_I8_MB : m;
            memset(ybuf, 0, sizeof ybuf);
            for (int64_t g = 0; g < ngroups; g++) {
                /* the 4 rows' group parameters, shared by every activation row */
                __m128i s16 = _mm_setr_epi16((short)scale[r * ngroups + g], (short)scale[(r + 1) * ngroups + g],
                                             (short)scale[(r + 2) * ngroups + g],
                                             (short)scale[(r + 3) * ngroups + g], 0, 0, 0, 0);
                __m128 sw = _mm_mul_ps(_mm_cvtph_ps(s16), _mm_set1_ps(1.0f / 16.0f)); /* exact: a power of two */
                __m128i z = _mm_setr_epi32(zero[r * ngroups + g], zero[(r + 1) * ngroups + g],
                                           zero[(r + 2) * ngroups + g], zero[(r + 3) * ngroups + g]);
                int64_t k0 = g * group, k1 = k0 + group < kpad ? k0 + group : kpad;
                for (int64_t i = i0; i < mb_end;) {
                    __m512i d[4][4];
                    int mb = mb_end - i >= 4 ? 4 : (mb_end - i >= 2 ? 2 : 1);
                    const char *pf = i == 0 ? range_end : NULL;
                    if (mb == 4) { /* the epilogue of 4 activation rows x 4 weight rows in one vector */
                        group_dots(w0, row_bytes, xq + i * kpad, kpad, k0, k1, pf, 4, d, 4);
                        const __m512i rep4 = _mm512_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3);
                        __m512i dot = reduce16(d);
                        __m512i xs_sum = _mm512_permutexvar_epi32(
                            rep4, _mm512_castsi128_si512(_mm_setr_epi32(
                                      xqsum[i * ngroups + g], xqsum[(i + 1) * ngroups + g],
                                      xqsum[(i + 2) * ngroups + g], xqsum[(i + 3) * ngroups + g])));
                        __m512 xs = _mm512_permutexvar_ps(
                            rep4, _mm512_castps128_ps512(_mm_setr_ps(
                                      xscale[i * ngroups + g], xscale[(i + 1) * ngroups + g],
                                      xscale[(i + 2) * ngroups + g], xscale[(i + 3) * ngroups + g])));
                        __m512i t = _mm512_sub_epi32(_mm512_slli_epi32(dot, 4),
                                                     _mm512_mullo_epi32(_mm512_broadcast_i32x4(z), xs_sum));
                        __m512 f = _mm512_mul_ps(_mm512_broadcast_f32x4(sw), xs);
                        float *acc = ybuf + (i - i0) * 4;
                        _mm512_storeu_ps(acc, _mm512_add_ps(_mm512_loadu_ps(acc), _mm512_mul_ps(f, _mm512_cvtepi32_ps(t))));
                        i += 4;
                        continue;
                    }
                    if (mb == 2) group_dots(w0, row_bytes, xq + i * kpad, kpad, k0, k1, pf, 4, d, 2);
                    else group_dots(w0, row_bytes, xq + i * kpad, kpad, k0, k1, pf, 4, d, 1);
                    for (int u = 0; u < mb; u++, i++) {
                        __m128i dot = reduce4(d[u][0], d[u][1], d[u][2], d[u][3]);
                        __m128i t = _mm_sub_epi32(_mm_slli_epi32(dot, 4),
                                                  _mm_mullo_epi32(z, _mm_set1_epi32(xqsum[i * ngroups + g])));
                        __m128 f = _mm_mul_ps(sw, _mm_set1_ps(xscale[i * ngroups + g]));
                        float *acc = ybuf + (i - i0) * 4;
                        _mm_storeu_ps(acc, _mm_add_ps(_mm_loadu_ps(acc), _mm_mul_ps(f, _mm_cvtepi32_ps(t))));
                    }
                }
            }
            for (int64_t i = i0; i < mb_end; i++) _mm_storeu_ps(y + i * ldy + r, _mm_loadu_ps(ybuf + (i - i0) * 4));
        }
    }
    if (r < r1) mq_ref_q4_gemv_i8(xq, m, xscale, xqsum, w, kpad, group, scale, zero, r, r1, y, ldy);
}

/* installed by dispatch.c only where the CPU has AVX-512 VNNI */
const mq_kernels mq_avx512vnni_int4_table = {.q4_gemv_i8 = mq_avx512vnni_q4_gemv_i8,
                                             .q4_gemv_i8_name = "avx512_vnni"};

#else
const mq_kernels mq_avx512vnni_int4_table = {.name = NULL};
#endif
