/* x86/avx2/packed_rows.c - AVX2 twins of mq_ref_packed_span and mq_ref_packed_run
 * (packed_dequantize.c): a packed int8 weight's panel back to float32 rows.
 *
 * Compiled with -mavx2, reached only through dispatch.c.  The portable twins convert a
 * K-group's 64 codes with baseline SSE2 (no sign-extending load: unpack sequences) and move a
 * row's 4 floats at a time, or a conv's floats one at a time, to their rows: 0.26-0.57 ns a
 * value on an AMD Zen 3.  Here a word transpose of 4 K-groups gives each lane 16 codes in K
 * order (a whole 64-byte line of floats to its row), and a conv's taps are turned into torch's
 * (channel, tap) order 4 x 4 floats at a time, two lanes side by side.  Each value is the
 * twins': (float)code - z, then times s (exact conversions, one rounding in the product). */
#include "mq.h"

#if defined(__x86_64__) && defined(__AVX2__)
#include <immintrin.h>
#include <string.h>

/* The floats of 8 codes (the low 8 bytes of c) of a lane with scale s and zero-point z. */
static inline __m256 floats8(__m128i c, __m256 s, __m256 z) {
    return _mm256_mul_ps(_mm256_sub_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(c)), z), s);
}

/* A lane's 16 codes (c) as 16 floats at o. */
static inline void lane16(__m128i c, const float *s, const float *z, float *o) {
    const __m256 sv = _mm256_broadcast_ss(s), zv = _mm256_broadcast_ss(z);
    _mm256_storeu_ps(o, floats8(c, sv, zv));
    _mm256_storeu_ps(o + 8, floats8(_mm_srli_si128(c, 8), sv, zv));
}

static void packed_span(const int8_t *panel, int lanes, int64_t q0, int64_t len, const float *s, const float *z,
                        float *o, int64_t ld) {
    const int64_t whole = len / 16 * 16;
    for (int half = 0; half * 8 < lanes; half++) { /* lanes 8 * half .. + 7: 32 bytes of each K-group */
        const int l0 = half * 8;
        for (int64_t q = 0; q < whole; q += 16) {
            const int8_t *g = panel + ((q0 + q) >> 2) * MQ_PANEL_GROUP_BYTES + l0 * MQ_KGROUP;
            const __m256i a = _mm256_loadu_si256((const __m256i *)g);
            const __m256i b = _mm256_loadu_si256((const __m256i *)(g + MQ_PANEL_GROUP_BYTES));
            const __m256i c = _mm256_loadu_si256((const __m256i *)(g + 2 * MQ_PANEL_GROUP_BYTES));
            const __m256i d = _mm256_loadu_si256((const __m256i *)(g + 3 * MQ_PANEL_GROUP_BYTES));
            /* per 128-bit half, 4 lanes x 4 groups of 4-byte words transposed */
            const __m256i ab_lo = _mm256_unpacklo_epi32(a, b), ab_hi = _mm256_unpackhi_epi32(a, b);
            const __m256i cd_lo = _mm256_unpacklo_epi32(c, d), cd_hi = _mm256_unpackhi_epi32(c, d);
            const __m256i v[4] = {_mm256_unpacklo_epi64(ab_lo, cd_lo), _mm256_unpackhi_epi64(ab_lo, cd_lo),
                                  _mm256_unpacklo_epi64(ab_hi, cd_hi), _mm256_unpackhi_epi64(ab_hi, cd_hi)};
            for (int i = 0; i < 4; i++) { /* v[i]: lane l0 + i | lane l0 + 4 + i */
                const int lo = l0 + i, hi = l0 + 4 + i;
                if (lo < lanes)
                    lane16(_mm256_castsi256_si128(v[i]), s + lo * MQ_KGROUP, z + lo * MQ_KGROUP, o + lo * ld + q);
                if (hi < lanes)
                    lane16(_mm256_extracti128_si256(v[i], 1), s + hi * MQ_KGROUP, z + hi * MQ_KGROUP, o + hi * ld + q);
            }
        }
    }
    for (int64_t q = whole; q < len; q += MQ_KGROUP) { /* (the last 1-3 K-groups: 4 floats a lane) */
        const int8_t *g = panel + ((q0 + q) >> 2) * MQ_PANEL_GROUP_BYTES;
        for (int r = 0; r < lanes; r++) {
            int32_t word;
            memcpy(&word, g + r * MQ_KGROUP, sizeof word);
            const __m128 f = _mm_cvtepi32_ps(_mm_cvtepi8_epi32(_mm_cvtsi32_si128(word)));
            _mm_storeu_ps(o + r * ld + q, _mm_mul_ps(_mm_sub_ps(f, _mm_broadcast_ss(z + r * MQ_KGROUP)),
                                                     _mm_broadcast_ss(s + r * MQ_KGROUP)));
        }
    }
}

/* Lanes r and r + 1 of the runs (tap-major: 64 floats a tap, lane r's 4 channels at r * 4), taps
 * [t, t + 4): channel i's 4 taps in c[i] (lane r in the low half, r + 1 in the high half), a 4 x 4
 * transpose in each half. */
static inline void transpose_4taps(const float *runs, int64_t t, int r, __m256 c[4]) {
    const float *src = runs + t * MQ_PANEL_GROUP_BYTES + r * MQ_KGROUP;
    const __m256 r0 = _mm256_loadu_ps(src), r1 = _mm256_loadu_ps(src + MQ_PANEL_GROUP_BYTES);
    const __m256 r2 = _mm256_loadu_ps(src + 2 * MQ_PANEL_GROUP_BYTES);
    const __m256 r3 = _mm256_loadu_ps(src + 3 * MQ_PANEL_GROUP_BYTES);
    const __m256 t0 = _mm256_unpacklo_ps(r0, r1), t1 = _mm256_unpacklo_ps(r2, r3);
    const __m256 t2 = _mm256_unpackhi_ps(r0, r1), t3 = _mm256_unpackhi_ps(r2, r3);
    c[0] = _mm256_shuffle_ps(t0, t1, 0x44);
    c[1] = _mm256_shuffle_ps(t0, t1, 0xEE);
    c[2] = _mm256_shuffle_ps(t2, t3, 0x44);
    c[3] = _mm256_shuffle_ps(t2, t3, 0xEE);
}

/* Lanes r and r + 1 (both: r + 1 is stored), taps [0, nt) of the runs to channel i's row
 * o + lane * ld + i * taps + t: 8 taps a 32-byte store, then 4, then the last 1-3 one at a time
 * (3x3, 5x5, 7x7: 4n + 1 taps, one left). */
static inline void two_lanes(const float *runs, int64_t nt, int r, int both, int64_t taps, float *o, int64_t ld) {
    float *const a = o + r * ld, *const b = both ? o + (r + 1) * ld : a; /* (no row past the last lane) */
    int64_t t = 0;
    for (; t + 8 <= nt; t += 8) {
        __m256 lo[4], hi[4];
        transpose_4taps(runs, t, r, lo);
        transpose_4taps(runs, t + 4, r, hi);
        for (int i = 0; i < 4; i++) {
            _mm256_storeu_ps(a + i * taps + t, _mm256_permute2f128_ps(lo[i], hi[i], 0x20));
            if (both) _mm256_storeu_ps(b + i * taps + t, _mm256_permute2f128_ps(lo[i], hi[i], 0x31));
        }
    }
    if (t + 4 <= nt) {
        __m256 c[4];
        transpose_4taps(runs, t, r, c);
        for (int i = 0; i < 4; i++) {
            _mm_storeu_ps(a + i * taps + t, _mm256_castps256_ps128(c[i]));
            if (both) _mm_storeu_ps(b + i * taps + t, _mm256_extractf128_ps(c[i], 1));
        }
        t += 4;
    }
    for (; t < nt; t++) { /* one tap: lane r's 4 channels, then lane r + 1's */
        float f[2 * MQ_KGROUP];
        _mm256_storeu_ps(f, _mm256_loadu_ps(runs + t * MQ_PANEL_GROUP_BYTES + r * MQ_KGROUP));
        for (int i = 0; i < MQ_KGROUP; i++) a[i * taps + t] = f[i];
        for (int i = 0; both && i < MQ_KGROUP; i++) b[i * taps + t] = f[MQ_KGROUP + i];
    }
}

static void packed_run(const int8_t *first, int64_t tap_step, int64_t nt, int lanes, int64_t taps, const float *s,
                       const float *z, float *o, int64_t ld) {
    float runs[MQ_PACKED_RUN_TAPS * MQ_PANEL_GROUP_BYTES];
    for (int64_t t = 0; t < nt; t++) /* (taps side by side, as the twin: they alias in the L1D) */
        for (int v = 0; v < MQ_PANEL_GROUP_BYTES; v += 8) {
            const __m128i c = _mm_loadl_epi64((const __m128i *)(first + t * tap_step + v));
            _mm256_storeu_ps(runs + t * MQ_PANEL_GROUP_BYTES + v,
                             floats8(c, _mm256_loadu_ps(s + v), _mm256_loadu_ps(z + v)));
        }
    for (int r = 0; r < lanes; r += 2) two_lanes(runs, nt, r, r + 1 < lanes, taps, o, ld);
}

/* Rows of a 2 KiB-multiple stride straight to memory: packed_span writes whole 64-byte lines (their
 * L1D set conflicts cost nothing), and the stack tile's copy cost more than it saved on packed_run's
 * (512 -> 512 3x3, 9.4 MB of floats: 0.48 ns a value through the tile, 0.26 straight; it still paid on weights
 * whose floats fit the L2, 0.27 against 0.40 ns at 64 x 256 x 8 taps: 36 against 52 us). */
const mq_kernels mq_avx2_packed_rows_table = {.packed_span = packed_span, .packed_run = packed_run,
                                              .packed_untiled = 1};

#else
const mq_kernels mq_avx2_packed_rows_table = {.name = NULL};
#endif
