/* x86/amx/bf16_pieces.c - float activations times fp16, bf16 or int8 weights on AMX-BF16
 * (amx_bf16.c's mq_amxbf16_linear: fp16 / bf16 weights and int8 weight-only at many rows).
 *
 * Compiled with the AVX-512 flags plus -mamx-tile -mamx-bf16 (CMakeLists.txt); dispatch.c
 * installs its table with the other AMX units' where the CPU also has AMX-BF16.  tdpbf16ps
 * takes bf16 only, so both sides are split into bf16 pieces whose sums are exact:
 *   x = hi + mid + lo   (hi = x cut to its top 16 bits, mid = (x - hi) cut, lo = the rest:
 *                        24 significant bits in three 8-bit pieces, every step exact)
 *   w = wh + wl         (fp16: 11 significant bits; a bf16 weight is one piece, and so is
 *                        an int8 one minus its zero-point: |q - zp| <= 255, 8 bits)
 * and x w is summed as hi wh + hi wl + mid wh + mid wl + lo wh (lo wl, under 2^-24 of the
 * product, left out): each product of two bf16 is exact in fp32, and tdpbf16ps adds them in
 * fp32.  So the result is fp32-accurate, not the other kernels' bits: it is its own path
 * (row_rules / kernels/fp16.py pick it by the rows), as the BLAS is.  Infinity and NaN do not
 * survive the pieces (inf - inf, and a piece of 0 times an infinite one, are NaN), so the split
 * and the layout report them and the driver hands such a call back to its caller's fp32 path.  AMX reads
 * bf16 subnormals as zero: an x under about 1e-38 (whose pieces are subnormal) adds nothing. */
#include "mq.h"

#if defined(__x86_64__) && defined(__AMX_TILE__) && defined(__AMX_BF16__) && defined(__AVX512BW__)
#include <immintrin.h>

#include "x86/amx/tiles.h"
#include "x86/avx512/transpose16.h"

enum {
    TILE_ROWS = AMX_TILE_ROWS,
    STEP_K = AMX_TILE_K / 2,  /* bf16 values of k in a tile row: a K-step */
    TILE_ELEMS = AMX_TILE_ROWS * STEP_K,
    PANEL = 16,               /* channels of a B tile */
    BLOCK_ROWS = 2 * TILE_ROWS,
    C_LD = 2 * PANEL,
    X_PIECES = 3,
};

/* 32 floats (a, b in order) -> their top 16 bits as 32 bf16, in order */
static inline __m512i top_halves(__m512 a, __m512 b) {
    const __m512i odd = _mm512_set_epi16(63, 61, 59, 57, 55, 53, 51, 49, 47, 45, 43, 41, 39, 37, 35, 33, 31, 29, 27,
                                         25, 23, 21, 19, 17, 15, 13, 11, 9, 7, 5, 3, 1);
    return _mm512_permutex2var_epi16(_mm512_castps_si512(a), odd, _mm512_castps_si512(b));
}

static inline __m512 cut(__m512 v) { /* v's top 16 bits: a bf16 value */
    return _mm512_castsi512_ps(_mm512_and_si512(_mm512_castps_si512(v), _mm512_set1_epi32((int)0xFFFF0000u)));
}

/* lanes of v that are infinite or NaN */
static inline __mmask16 nonfinite(__m512 v) { return _mm512_fpclass_ps_mask(v, 0x99); }

/* The first `valid` rows of x (rows ldx floats apart) as the three pieces, rows of kp bf16 (zero
 * past k), piece p at xp + p * rows * kp.  Returns nonzero where some x is infinite or NaN (the
 * pieces unusable). */
static int split_x(const float *x, int64_t ldx, int64_t k, int64_t kp, int64_t rows, int64_t valid, uint16_t *xp) {
    const size_t piece = (size_t)rows * (size_t)kp;
    __mmask16 bad = 0;
    for (int64_t i = 0; i < valid; i++) {
        const float *xr = x + i * ldx;
        uint16_t *hi = xp + (size_t)i * (size_t)kp, *mid = hi + piece, *lo = mid + piece;
        for (int64_t j = 0; j < kp; j += 32) {
            const int64_t left = k - j;
            const __mmask16 ma = left >= 16 ? 0xFFFF : left > 0 ? (__mmask16)((1u << left) - 1u) : 0;
            const __mmask16 mb = left >= 32 ? 0xFFFF : left > 16 ? (__mmask16)((1u << (left - 16)) - 1u) : 0;
            const __m512 a = _mm512_maskz_loadu_ps(ma, xr + j), b = _mm512_maskz_loadu_ps(mb, xr + j + 16);
            bad |= nonfinite(a) | nonfinite(b);
            const __m512 ha = cut(a), hb = cut(b);
            const __m512 ra = _mm512_sub_ps(a, ha), rb = _mm512_sub_ps(b, hb); /* exact */
            const __m512 ma_ = cut(ra), mb_ = cut(rb);
            const __m512 la = _mm512_sub_ps(ra, ma_), lb = _mm512_sub_ps(rb, mb_); /* exact, 8 bits: bf16 */
            _mm512_store_si512(hi + j, top_halves(ha, hb));
            _mm512_store_si512(mid + j, top_halves(ma_, mb_));
            _mm512_store_si512(lo + j, top_halves(la, lb));
        }
    }
    return bad != 0;
}

/* Panel p of w [n][k] (fp16 or bf16 bits) as B tiles at dst: per weight piece, kp / 32 tiles of
 * 16 K-pairs x 16 channels x 2 bf16 (channels past n and k past k zero).  Returns nonzero where
 * some weight is infinite or NaN (the tiles unusable). */
static int pack_h16_panel(const uint16_t *w, int64_t n, int64_t k, int is_bf16, int64_t kp, uint16_t *dst, int64_t p) {
    const __m512i exp16 = _mm512_set1_epi16(is_bf16 ? 0x7F80 : 0x7C00); /* all-ones exponent: inf / NaN */
    __mmask32 bad = 0;
    const int64_t steps = kp / STEP_K;
    for (int64_t s = 0; s < steps; s++) {
        const int64_t left = k - s * STEP_K;
        const __mmask32 mk = left >= 32 ? 0xFFFFFFFFu : (__mmask32)((1ull << left) - 1u);
        __m512i hi[16], lo[16];
        for (int r = 0; r < PANEL; r++) {
            const int64_t ch = p * PANEL + r;
            const __m512i v = ch < n ? _mm512_maskz_loadu_epi16(mk, w + ch * k + s * STEP_K) : _mm512_setzero_si512();
            bad |= _mm512_cmpeq_epi16_mask(_mm512_and_si512(v, exp16), exp16);
            if (is_bf16) {
                hi[r] = v;
                continue;
            }
            const __m512 a = _mm512_cvtph_ps(_mm512_castsi512_si256(v)), b = _mm512_cvtph_ps(_mm512_extracti64x4_epi64(v, 1));
            const __m512 ha = cut(a), hb = cut(b);
            hi[r] = top_halves(ha, hb);
            lo[r] = top_halves(_mm512_sub_ps(a, ha), _mm512_sub_ps(b, hb)); /* exact: fp16's 3 bits past bf16's 8 */
        }
        mq_avx512_transpose16(hi, hi);
        for (int r = 0; r < 16; r++) _mm512_store_si512(dst + s * TILE_ELEMS + r * STEP_K, hi[r]);
        if (is_bf16) continue;
        mq_avx512_transpose16(lo, lo);
        for (int r = 0; r < 16; r++) _mm512_store_si512(dst + (steps + s) * TILE_ELEMS + r * STEP_K, lo[r]);
    }
    return bad != 0;
}

/* Panels [p0, p1) of w as B tiles, panel p at wp + p * pieces * kp / 32 tiles (pack_h16_panel). */
static int pack_h16(const uint16_t *w, int64_t n, int64_t k, int is_bf16, int64_t kp, uint16_t *wp, int64_t p0,
                    int64_t p1) {
    const int64_t panel = (int64_t)(is_bf16 ? 1 : 2) * (kp / STEP_K) * TILE_ELEMS;
    int bad = 0;
    for (int64_t p = p0; p < p1; p++) bad |= pack_h16_panel(w, n, k, is_bf16, kp, wp + p * panel, p);
    return bad;
}

/* Panel p of a packed int8 weight (layout.h: a panel is kp4 / 4 groups of 16 channels x 4 k)
 * minus its zero-points (zp [n] or NULL) as B tiles at dst, one piece: a group makes two K-pair
 * rows of a tile (k 0-1 and 2-3 of its 16 channels).  Each quarter of a group (4 channels x 4 k)
 * is widened to int32 as it is loaded, the zero-point subtracted (exact: |q - zp| <= 255), made
 * float and cut to bf16 (exact: 8 significant bits); two permutes then put each channel's k pair
 * side by side in channel order.  (Shifts that took the bytes apart in place all ran on one port:
 * calls of 16 - 64 rows took 4-13% longer; Intel Xeon, 6 Dec.) */
static void pack_i8_panel(const int8_t *packed, int64_t kp4, const int32_t *zp, int64_t n, int64_t kp, uint16_t *dst,
                          int64_t p) {
    const int64_t steps = kp / STEP_K, groups = kp4 / MQ_KGROUP;
    const int8_t *src = packed + p * kp4 * PANEL;
    const int64_t left = n - p * PANEL;
    /* the dwords (channel, k 0-1) of two vectors of 8 channels' pairs, and (channel, k 2-3) */
    const __m512i pairs01 = _mm512_set_epi32(30, 28, 26, 24, 22, 20, 18, 16, 14, 12, 10, 8, 6, 4, 2, 0);
    const __m512i pairs23 = _mm512_set_epi32(31, 29, 27, 25, 23, 21, 19, 17, 15, 13, 11, 9, 7, 5, 3, 1);
    const __m512i each4 = _mm512_set_epi32(3, 3, 3, 3, 2, 2, 2, 2, 1, 1, 1, 1, 0, 0, 0, 0);
    __m512i z[4]; /* quarter j's zero-points: channels 4 j .. 4 j + 3, each 4 times (0 past n) */
    for (int j = 0; j < 4; j++) {
        const int64_t in = left - 4 * j;
        z[j] = _mm512_setzero_si512();
        if (zp && in > 0)
            z[j] = _mm512_permutexvar_epi32(
                each4, _mm512_maskz_loadu_epi32(in >= 4 ? 0xF : (__mmask16)((1u << in) - 1u), zp + p * PANEL + 4 * j));
    }
    for (int64_t s = 0; s < steps; s++)
        for (int h = 0; h < STEP_K / MQ_KGROUP; h++) {
            uint16_t *row = dst + s * TILE_ELEMS + 2 * h * STEP_K;
            const int64_t g = s * (STEP_K / MQ_KGROUP) + h;
            if (g >= groups) { /* k past the packed K: zero */
                _mm512_store_si512(row, _mm512_setzero_si512());
                _mm512_store_si512(row + STEP_K, _mm512_setzero_si512());
                continue;
            }
            __m512 f[4];
            for (int j = 0; j < 4; j++) {
                const __m512i q = _mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(src + g * 64 + 16 * j)));
                f[j] = _mm512_cvtepi32_ps(_mm512_sub_epi32(q, z[j]));
            }
            const __m512i lo = top_halves(f[0], f[1]), hi = top_halves(f[2], f[3]); /* channels 0-7, 8-15 */
            _mm512_store_si512(row, _mm512_permutex2var_epi32(lo, pairs01, hi));
            _mm512_store_si512(row + STEP_K, _mm512_permutex2var_epi32(lo, pairs23, hi));
        }
}

/* Panels [p0, p1) of a packed int8 weight as B tiles, panel p at wp + p * kp / 32 tiles. */
static void pack_i8(const int8_t *packed, int64_t kp4, const int32_t *zp, int64_t n, int64_t kp, uint16_t *wp,
                    int64_t p0, int64_t p1) {
    for (int64_t p = p0; p < p1; p++) pack_i8_panel(packed, kp4, zp, n, kp, wp + p * (kp / STEP_K) * TILE_ELEMS, p);
}

/* RH row tiles x NP panels over every K-step, the rows' x pieces at x (piece p at x + p * piece):
 * C tile 2 r + j holds row tile r, panel j; A tiles 4-5 (x pieces), B tiles 6-7 (weight pieces).
 * WP: weight pieces (1 or 2). */
#define AMX_H16_BLOCK(RH, NP, WP)                                                                          \
    static void h16_block_##RH##_##NP##_##WP(const mq_amxbf16_args *a, const uint16_t *x, int64_t piece, \
                                             const uint16_t *b, float *c) {                               \
        const int64_t steps = a->kp / STEP_K, ldx = a->kp * 2;                                            \
        const int64_t wpiece = steps * TILE_ELEMS, panel = (WP) * wpiece;                                 \
        _tile_zero(0);                                                                                    \
        if ((NP) > 1) _tile_zero(1);                                                                      \
        if ((RH) > 1) _tile_zero(2);                                                                      \
        if ((RH) > 1 && (NP) > 1) _tile_zero(3);                                                          \
        for (int64_t s = 0; s < steps; s++) {                                                             \
            const uint16_t *xs = x + s * STEP_K, *bs = b + s * TILE_ELEMS;                                \
            /* (x piece, weight piece) pairs, ordered so each load serves two products */                  \
            static const int pairs1[3][2] = {{0, 0}, {1, 0}, {2, 0}};                                     \
            static const int pairs2[5][2] = {{0, 0}, {0, 1}, {1, 1}, {1, 0}, {2, 0}};                     \
            const int np_ = (WP) == 1 ? 3 : 5;                                                            \
            int xa = -1, wb = -1;                                                                         \
            for (int q = 0; q < np_; q++) {                                                               \
                const int xi = (WP) == 1 ? pairs1[q][0] : pairs2[q][0];                                   \
                const int wi = (WP) == 1 ? pairs1[q][1] : pairs2[q][1];                                   \
                if (xi != xa) {                                                                           \
                    _tile_loadd(4, xs + xi * piece, ldx);                                                 \
                    if ((RH) > 1) _tile_loadd(5, xs + xi * piece + TILE_ROWS * a->kp, ldx);               \
                    xa = xi;                                                                              \
                }                                                                                         \
                if (wi != wb) {                                                                           \
                    _tile_loadd(6, bs + wi * wpiece, 64);                                                 \
                    if ((NP) > 1) _tile_loadd(7, bs + panel + wi * wpiece, 64);                           \
                    wb = wi;                                                                              \
                }                                                                                         \
                _tile_dpbf16ps(0, 4, 6);                                                                  \
                if ((NP) > 1) _tile_dpbf16ps(1, 4, 7);                                                    \
                if ((RH) > 1) _tile_dpbf16ps(2, 5, 6);                                                    \
                if ((RH) > 1 && (NP) > 1) _tile_dpbf16ps(3, 5, 7);                                        \
            }                                                                                             \
        }                                                                                                 \
        _tile_stored(0, c, C_LD * 4);                                                                     \
        if ((NP) > 1) _tile_stored(1, c + PANEL, C_LD * 4);                                               \
        if ((RH) > 1) _tile_stored(2, c + TILE_ROWS * C_LD, C_LD * 4);                                    \
        if ((RH) > 1 && (NP) > 1) _tile_stored(3, c + TILE_ROWS * C_LD + PANEL, C_LD * 4);                \
    }
AMX_H16_BLOCK(2, 2, 1) AMX_H16_BLOCK(2, 1, 1) AMX_H16_BLOCK(1, 2, 1) AMX_H16_BLOCK(1, 1, 1)
AMX_H16_BLOCK(2, 2, 2) AMX_H16_BLOCK(2, 1, 2) AMX_H16_BLOCK(1, 2, 2) AMX_H16_BLOCK(1, 1, 2)

typedef void (*block_fn)(const mq_amxbf16_args *, const uint16_t *, int64_t, const uint16_t *, float *);

/* The pieces of x's rows [i0, i0 + valid) into xp, rows rows (those past valid zero): split_x.
 * Returns nonzero where x holds an infinity or NaN. */
static int split_rows(const mq_amxbf16_args *a, int64_t i0, int64_t rows, int64_t valid, uint16_t *xp) {
    const int64_t piece = rows * a->kp;
    const int bad = split_x(a->x + i0 * a->ldx, a->ldx, a->k, a->kp, rows, valid, xp);
    for (int q = 0; q < X_PIECES; q++)
        memset(xp + q * piece + valid * a->kp, 0, (size_t)(rows - valid) * (size_t)a->kp * sizeof(uint16_t));
    return bad;
}

/* Panels p and p + 1 (where under the call's panels; B tiles at b, a panel's pieces apart) times
 * rows [i0, i0 + rows) of x, their pieces at xp (rows apart; `valid` of them under m): y =
 * sums (* scale) (+ bias), through c (a block's C tiles). */
static void panel_pair(const mq_amxbf16_args *a, const uint16_t *xp, int64_t i0, int64_t rows, int64_t valid,
                       int64_t p, const uint16_t *b, float *c) {
    static const block_fn blocks[2][2][2] = {{{h16_block_1_1_1, h16_block_1_1_2}, {h16_block_1_2_1, h16_block_1_2_2}},
                                             {{h16_block_2_1_1, h16_block_2_1_2}, {h16_block_2_2_1, h16_block_2_2_2}}};
    const int wp = a->wpieces == 1 ? 0 : 1;
    const int64_t panels = (a->n + PANEL - 1) / PANEL, piece = rows * a->kp;
    const int np = p + 1 < panels ? 2 : 1;
    const int64_t c0 = p * PANEL, nc = a->n - c0 < np * PANEL ? a->n - c0 : np * PANEL;
    for (int64_t m0 = 0; m0 < rows; m0 += BLOCK_ROWS) {
        const int rh = rows - m0 >= BLOCK_ROWS ? 2 : 1;
        blocks[rh - 1][np - 1][wp](a, xp + m0 * a->kp, piece, b, c);
        const int64_t out = valid - m0 < rh * TILE_ROWS ? valid - m0 : rh * TILE_ROWS;
        for (int64_t i = 0; i < out; i++)
            for (int j = 0; j * PANEL < nc; j++) {
                const int64_t left = nc - j * PANEL;
                const __mmask16 mk = left >= PANEL ? 0xFFFF : (__mmask16)((1u << left) - 1u);
                __m512 v = _mm512_load_ps(c + i * C_LD + j * PANEL);
                if (a->scale) v = _mm512_mul_ps(v, _mm512_maskz_loadu_ps(mk, a->scale + c0 + j * PANEL));
                if (a->bias) v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(mk, a->bias + c0 + j * PANEL));
                _mm512_mask_storeu_ps(a->y + (i0 + m0 + i) * a->n + c0 + j * PANEL, mk, v);
            }
    }
}

/* Row tiles [t0, t1) (rows 16 t0 .. min(16 t1, m)) times every panel (B tiles at a->wp): per row
 * chunk of x pieces (split here, into a buffer of this call's own that stays in L2 while the panel
 * pairs pass over it; rows past m zero), y = sums (* scale) (+ bias) for the rows under m and
 * channels under n.  A chunk holds about 1.25 MiB of pieces, and no more than the B tiles, which
 * each chunk reads once: a narrow weight's pieces serve few pairs, and 1.2 MB of them (768 -> 64
 * at 256 rows) left the caller's cache cold (its Python after the call: ~25 us more than after
 * the tiles).  Returns nonzero, its rows of y unspecified, where x holds an infinity or NaN or the
 * buffer could not be allocated. */
static int gemm(const mq_amxbf16_args *a, int64_t t0, int64_t t1) {
    const int64_t panels = (a->n + PANEL - 1) / PANEL, r0 = t0 * TILE_ROWS, r1 = t1 * TILE_ROWS;
    const int64_t panel_elems = (int64_t)a->wpieces * (a->kp / STEP_K) * TILE_ELEMS;
    const int64_t b_bytes = panels * panel_elems * 2, most = (int64_t)5 << 18;
    int64_t chunk = (b_bytes < most ? b_bytes : most) / (X_PIECES * 2 * a->kp) / BLOCK_ROWS * BLOCK_ROWS;
    if (chunk < BLOCK_ROWS) chunk = BLOCK_ROWS;
    if (chunk > r1 - r0) chunk = r1 - r0;
    uint16_t *xp = aligned_alloc(64, (size_t)X_PIECES * (size_t)chunk * (size_t)a->kp * sizeof(uint16_t));
    if (!xp) return 1;
    float c[BLOCK_ROWS * C_LD] __attribute__((aligned(64)));
    int bad = 0;
    amx_configure_tiles();
    for (int64_t i0 = r0; i0 < r1 && !bad; i0 += chunk) {
        const int64_t i1 = i0 + chunk < r1 ? i0 + chunk : r1, rows = i1 - i0;
        const int64_t valid = (a->m < i1 ? a->m : i1) - i0;
        bad = split_rows(a, i0, rows, valid, xp);
        for (int64_t p = 0; p < panels && !bad; p += 2) panel_pair(a, xp, i0, rows, valid, p, a->wp + p * panel_elems, c);
    }
    _tile_release(); /* back to the init state: nothing for a context switch to save */
    free(xp);
    return bad;
}

/* All of x's rows as pieces into xp (3 pieces of m rounded up to 16 rows, those past m zero), for
 * gemm_panels.  Returns nonzero where x holds an infinity or NaN. */
static int split_all(const mq_amxbf16_args *a, uint16_t *xp) {
    return split_rows(a, 0, (a->m + TILE_ROWS - 1) / TILE_ROWS * TILE_ROWS, a->m, xp);
}

/* Panel pairs [q0, q1) (panels 2 q0 .. 2 q1, those under n) times every row of x, for calls of
 * few rows: x's pieces at a->xpieces (split_all, once per call), each pair's B tiles packed from
 * w into a buffer of this piece's own, a group of pairs (about 256 KiB) just before their tiles
 * run, so they are still in L2 (a->wp unused).  The same sums in the same order as gemm: the same
 * bits.  Returns nonzero, its channels of y unspecified, where these panels hold an infinity or
 * NaN or the buffer could not be allocated. */
static int gemm_panels(const mq_amxbf16_args *a, const mq_amxbf16_weight *w, int64_t q0, int64_t q1) {
    const int64_t panels = (a->n + PANEL - 1) / PANEL, rows = (a->m + TILE_ROWS - 1) / TILE_ROWS * TILE_ROWS;
    const int64_t panel_elems = (int64_t)a->wpieces * (a->kp / STEP_K) * TILE_ELEMS;
    int64_t group = ((int64_t)1 << 17) / (2 * panel_elems);
    if (group < 1) group = 1;
    if (group > q1 - q0) group = q1 - q0;
    uint16_t *b = aligned_alloc(64, (size_t)group * 2 * (size_t)panel_elems * sizeof(uint16_t));
    if (!b) return 1;
    float c[BLOCK_ROWS * C_LD] __attribute__((aligned(64)));
    int bad = 0;
    amx_configure_tiles();
    for (int64_t g0 = q0; g0 < q1 && !bad; g0 += group) {
        const int64_t g1 = g0 + group < q1 ? g0 + group : q1;
        for (int64_t p = 2 * g0; p < 2 * g1 && p < panels; p++) {
            uint16_t *dst = b + (p - 2 * g0) * panel_elems;
            if (w->packed)
                pack_i8_panel(w->packed, w->kp4, w->zp, a->n, a->kp, dst, p);
            else
                bad |= pack_h16_panel(w->h16, a->n, a->k, w->is_bf16, a->kp, dst, p);
        }
        for (int64_t q = g0; q < g1 && !bad; q++)
            panel_pair(a, a->xpieces, 0, rows, a->m, 2 * q, b + (q - g0) * 2 * panel_elems, c);
    }
    _tile_release();
    free(b);
    return bad;
}

const mq_kernels mq_amx_bf16_table = {
    .amxbf16_pack_h16 = pack_h16,
    .amxbf16_pack_i8 = pack_i8,
    .amxbf16_gemm = gemm,
    .amxbf16_split_x = split_all,
    .amxbf16_gemm_panels = gemm_panels,
};

#else
const mq_kernels mq_amx_bf16_table = {.name = NULL};
#endif
