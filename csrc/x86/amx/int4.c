/* x86/amx/int4.c - AMX-INT8 twin of mq_ref_q4_gemv_i8 (int4 weights x int8 activations).
 *
 * Compiled with the AVX-512 VNNI flags plus -mamx-tile -mamx-int8 (CMakeLists.txt); dispatch.c
 * installs its table with the AMX int8 matmul's, after the OS granted the tile data.
 * tdpbsud multiplies an A tile of 16 rows of the int8 activations, read where they are (their
 * per-chunk order, mq.h, is the packed weight's: a chunk's 64 low nibbles, then its 64 high
 * ones), by a B tile of 16 channels' 4-bit codes as unsigned bytes.  The codes are laid out as
 * B tiles once per pair of 16-channel panels and call (a 16 x 16 transpose of 4-byte groups,
 * then the nibble split) and serve every activation row.  The int32 sums of a group are exact;
 * the group's float epilogue is the reference's, in its order (t = 16 dot - z xqsum, then
 * acc + (scale / 16 * xscale) * t): the same bits as the reference and the VNNI kernel.  Rows
 * past whole 16-row tiles run as a zero-padded tile when there are 8 or more, else on VNNI. */
#include "mq.h"

#if defined(__x86_64__) && defined(__AMX_TILE__) && defined(__AMX_INT8__) && defined(__AVX512VNNI__)
#include <immintrin.h>

#include "x86/amx/tiles.h"
#include "x86/avx512/transpose16.h"

enum {
    TILE_ROWS = AMX_TILE_ROWS,
    TILE_K = AMX_TILE_K,
    TILE_BYTES = AMX_TILE_ROWS * AMX_TILE_K,
    PANEL = 16,              /* channels of a B tile */
    BLOCK_ROWS = 2 * TILE_ROWS, /* a block: 2 row tiles x 2 panels, C tiles 0-3 */
    C_LD = 2 * PANEL,        /* row stride (elements) of the block's sums and running outputs */
    /* t in float is exact while z * xqsum is (|z| <= 255, |xq| <= 127, 255 * 127 * 512 < 2^24):
     * fmsub(dot, 16, z * xqsum) then rounds the exact integer t once, as (float)t does */
    FLOAT_T_MAX_GROUP = 512,
    /* rows past whole tiles from which a zero-padded tile beats the VNNI kernel: Intel Xeon, 1 Dec,
     * BERT layers, AMX / VNNI time at 4-5 rows 0.74-1.40, 6 0.62-0.91, 8 0.59-0.83 */
    TAIL_MIN_ROWS = 8,
};

/* One panel's rows w[0..nvalid) (row_bytes apart; the rest zero codes) as B tiles, K-step s
 * (activation bytes 64 s .. 64 s + 63) at dst + s * TILE_BYTES, and its group constants:
 * sw[g * C_LD + n] = scale / 16 (exact: a power of two), zf / zi the zero-point. */
static void fill_panel(const uint8_t *w, int64_t row_bytes, int nvalid, int64_t kpad, int64_t group,
                       const uint16_t *scale, const uint8_t *zero, uint8_t *dst, float *sw, float *zf, int32_t *zi) {
    const __m512i low = _mm512_set1_epi8(15);
    for (int64_t c = 0; c < kpad / MQ_Q4_I8_CHUNK; c++) {
        __m512i r[16];
        for (int n = 0; n < 16; n++)
            r[n] = n < nvalid ? _mm512_loadu_si512(w + n * row_bytes + c * 64) : _mm512_setzero_si512();
        mq_avx512_transpose16(r, r);
        uint8_t *lo = dst + 2 * c * TILE_BYTES, *hi = lo + TILE_BYTES;
        for (int k = 0; k < 16; k++) {
            _mm512_store_si512(lo + k * TILE_K, _mm512_and_si512(r[k], low));
            _mm512_store_si512(hi + k * TILE_K, _mm512_and_si512(_mm512_srli_epi16(r[k], 4), low));
        }
    }
    const int64_t ngroups = (kpad + group - 1) / group;
    for (int64_t g = 0; g < ngroups; g++)
        for (int n = 0; n < PANEL; n++) {
            const int ok = n < nvalid;
            sw[g * C_LD + n] = ok ? mq_f16_to_f32(scale[n * ngroups + g]) * (1.0f / 16.0f) : 0.0f;
            zi[g * C_LD + n] = ok ? zero[n * ngroups + g] : 0;
            zf[g * C_LD + n] = (float)zi[g * C_LD + n];
        }
}

/* The group epilogue of rows [0, rows) x panels [0, np) of a block: acc += f * t per the
 * reference (f = scale / 16 * xscale, t = 16 dot - z xqsum). */
static inline __attribute__((always_inline)) void group_epilogue(const int32_t *c, float *acc, int rows, int np,
                                                                 const float *xscale, const int32_t *xqsum,
                                                                 int64_t ngroups, const float *sw, const float *zf,
                                                                 const int32_t *zi, int float_t) {
    const __m512 sixteen = _mm512_set1_ps(16.0f);
    for (int i = 0; i < rows; i++) {
        const __m512 xs = _mm512_set1_ps(xscale[i * ngroups]);
        const int32_t qs = xqsum[i * ngroups];
        for (int j = 0; j < np; j++) {
            const __m512i dot = _mm512_load_si512(c + i * C_LD + j * PANEL);
            __m512 t;
            if (float_t)
                t = _mm512_fmsub_ps(_mm512_cvtepi32_ps(dot), sixteen,
                                    _mm512_mul_ps(_mm512_load_ps(zf + j * PANEL), _mm512_set1_ps((float)qs)));
            else
                t = _mm512_cvtepi32_ps(_mm512_sub_epi32(
                    _mm512_slli_epi32(dot, 4), _mm512_mullo_epi32(_mm512_load_si512(zi + j * PANEL), _mm512_set1_epi32(qs))));
            const __m512 f = _mm512_mul_ps(_mm512_load_ps(sw + j * PANEL), xs);
            float *a = acc + i * C_LD + j * PANEL;
            _mm512_store_ps(a, _mm512_add_ps(_mm512_load_ps(a), _mm512_mul_ps(f, t)));
        }
    }
}

typedef struct {
    const int8_t *xq;
    const float *xscale;
    const int32_t *xqsum;
    int64_t kpad, group, ngroups;
    const uint8_t *b;           /* the panel pair's B tiles: panel j at b + j * kpad / 64 * TILE_BYTES */
    const float *sw, *zf;       /* [ngroups][C_LD] */
    const int32_t *zi;
    int float_t;
} block_args;

/* RH row tiles x NP panels from activation row m0, every group: C tile 2 r + j holds row tile
 * r, panel j; A tiles 4-5, B tiles 6-7 (tile numbers are immediates, hence a macro per shape).
 * The running outputs land in acc (rows x C_LD floats). */
#define AMX_Q4_BLOCK(RH, NP)                                                                                  \
    static void q4_block_##RH##_##NP(const block_args *a, int64_t m0, int32_t *c, float *acc) {               \
        const int64_t ldx = a->kpad, steps = a->group / TILE_K, tiles = a->kpad / TILE_K;                     \
        const int64_t panel_bytes = tiles * TILE_BYTES;                                                       \
        const int8_t *x = a->xq + m0 * ldx;                                                                   \
        memset(acc, 0, sizeof(float) * (RH) * TILE_ROWS * C_LD);                                              \
        for (int64_t g = 0; g < a->ngroups; g++) {                                                            \
            _tile_zero(0);                                                                                    \
            if ((NP) > 1) _tile_zero(1);                                                                      \
            if ((RH) > 1) _tile_zero(2);                                                                      \
            if ((RH) > 1 && (NP) > 1) _tile_zero(3);                                                          \
            const int64_t s1 = (g + 1) * steps < tiles ? (g + 1) * steps : tiles; /* the last group may be short */ \
            for (int64_t s = g * steps; s < s1; s++) {                                                        \
                _tile_loadd(4, x + s * TILE_K, ldx);                                                          \
                _tile_loadd(6, a->b + s * TILE_BYTES, TILE_K);                                                \
                _tile_dpbsud(0, 4, 6);                                                                        \
                if ((NP) > 1) {                                                                               \
                    _tile_loadd(7, a->b + panel_bytes + s * TILE_BYTES, TILE_K);                              \
                    _tile_dpbsud(1, 4, 7);                                                                    \
                }                                                                                             \
                if ((RH) > 1) {                                                                               \
                    _tile_loadd(5, x + TILE_ROWS * ldx + s * TILE_K, ldx);                                    \
                    _tile_dpbsud(2, 5, 6);                                                                    \
                }                                                                                             \
                if ((RH) > 1 && (NP) > 1) _tile_dpbsud(3, 5, 7);                                              \
            }                                                                                                 \
            _tile_stored(0, c, C_LD * 4);                                                                     \
            if ((NP) > 1) _tile_stored(1, c + PANEL, C_LD * 4);                                               \
            if ((RH) > 1) _tile_stored(2, c + TILE_ROWS * C_LD, C_LD * 4);                                    \
            if ((RH) > 1 && (NP) > 1) _tile_stored(3, c + TILE_ROWS * C_LD + PANEL, C_LD * 4);                \
            const float *xs = a->xscale + m0 * a->ngroups + g;                                                \
            const int32_t *qs = a->xqsum + m0 * a->ngroups + g;                                               \
            const float *sw = a->sw + g * C_LD, *zf = a->zf + g * C_LD;                                       \
            const int32_t *zi = a->zi + g * C_LD;                                                             \
            if (a->float_t)                                                                                   \
                group_epilogue(c, acc, (RH) * TILE_ROWS, (NP), xs, qs, a->ngroups, sw, zf, zi, 1);            \
            else                                                                                              \
                group_epilogue(c, acc, (RH) * TILE_ROWS, (NP), xs, qs, a->ngroups, sw, zf, zi, 0);            \
        }                                                                                                     \
    }
AMX_Q4_BLOCK(2, 2) AMX_Q4_BLOCK(2, 1) AMX_Q4_BLOCK(1, 2) AMX_Q4_BLOCK(1, 1)

/* Rows [m0, m0 + rows) (rows <= BLOCK_ROWS; whole tiles read, the first `rows` stored) x the
 * panel pair's n channels, into y's columns p.. */
static void run_block(const block_args *a, int64_t m0, int rows, int64_t n, float *y, int64_t ldy, int32_t *c,
                      float *acc) {
    const int np = n > PANEL ? 2 : 1, rh = rows > TILE_ROWS ? 2 : 1;
    if (rh == 2) (np == 2 ? q4_block_2_2 : q4_block_2_1)(a, m0, c, acc);
    else (np == 2 ? q4_block_1_2 : q4_block_1_1)(a, m0, c, acc);
    const __mmask16 last = (__mmask16)((1u << (n - (np - 1) * PANEL)) - 1u);
    for (int i = 0; i < rows; i++)
        for (int j = 0; j < np; j++)
            _mm512_mask_storeu_ps(y + (m0 + i) * ldy + j * PANEL, j == np - 1 ? last : (__mmask16)0xFFFF,
                                  _mm512_load_ps(acc + i * C_LD + j * PANEL));
}

/* Channels [r0, r1) of rows [0, m): whole 16-row tiles on AMX, panel pair by panel pair, in
 * row chunks of about 1 MiB of activations (they stay in L2 while the pairs pass over them;
 * each chunk lays out the pair's tiles again).  The rows past whole tiles: from TAIL_MIN_ROWS
 * on, a tile of their copy padded with zero rows (zero scales: zero outputs, not stored), on the
 * pair's B tiles; fewer (and a failed allocation) on the VNNI kernel. */
static void q4_gemv_i8_amx(const int8_t *xq, int64_t m, const float *xscale, const int32_t *xqsum, const uint8_t *w,
                           int64_t kpad, int64_t group, const uint16_t *scale, const uint8_t *zero, int64_t r0,
                           int64_t r1, float *y, int64_t ldy) {
    const int64_t full = m / TILE_ROWS * TILE_ROWS, ngroups = (kpad + group - 1) / group, row_bytes = kpad / 2;
    const int tail = (int)(m - full), padded = tail >= TAIL_MIN_ROWS;
    const size_t b_bytes = (size_t)2 * (size_t)(kpad / TILE_K) * TILE_BYTES;
    const size_t g_bytes = (size_t)ngroups * C_LD * sizeof(float);
    const size_t pad_bytes = padded ? (size_t)TILE_ROWS * ((size_t)kpad + 2 * (size_t)ngroups * sizeof(float)) : 0;
    uint8_t *b = full > 0 || padded ? aligned_alloc(64, b_bytes + 3 * g_bytes + pad_bytes) : NULL;
    if (!b) {
        mq_avx512vnni_q4_gemv_i8(xq, m, xscale, xqsum, w, kpad, group, scale, zero, r0, r1, y, ldy);
        return;
    }
    float *sw = (float *)(b + b_bytes), *zf = sw + ngroups * C_LD;
    int32_t *zi = (int32_t *)(zf + ngroups * C_LD);
    const block_args a = {xq, xscale, xqsum, kpad, group, ngroups, b, sw, zf, zi, group <= FLOAT_T_MAX_GROUP};
    block_args t = a; /* the padded tail tile, as rows 0-15 of its own arrays */
    if (padded) {
        int8_t *txq = (int8_t *)(zi + ngroups * C_LD);
        float *txs = (float *)(txq + (size_t)TILE_ROWS * (size_t)kpad);
        int32_t *tqs = (int32_t *)(txs + TILE_ROWS * ngroups);
        memset(txq, 0, pad_bytes);
        memcpy(txq, xq + full * kpad, (size_t)tail * (size_t)kpad);
        memcpy(txs, xscale + full * ngroups, (size_t)tail * (size_t)ngroups * sizeof(float));
        memcpy(tqs, xqsum + full * ngroups, (size_t)tail * (size_t)ngroups * sizeof(int32_t));
        t.xq = txq, t.xscale = txs, t.xqsum = tqs;
    }
    int32_t c[BLOCK_ROWS * C_LD] __attribute__((aligned(64)));
    float acc[BLOCK_ROWS * C_LD] __attribute__((aligned(64)));
    int64_t chunk = ((int64_t)1 << 20) / kpad / BLOCK_ROWS * BLOCK_ROWS;
    if (chunk < 2 * BLOCK_ROWS) chunk = 2 * BLOCK_ROWS;
    amx_configure_tiles();
    for (int64_t i0 = 0; i0 < full || (i0 == 0 && padded); i0 += chunk) {
        const int64_t i1 = i0 + chunk < full ? i0 + chunk : full;
        for (int64_t p = r0; p < r1; p += 2 * PANEL) {
            const int64_t n = r1 - p < 2 * PANEL ? r1 - p : 2 * PANEL;
            for (int j = 0; j * PANEL < n; j++) {
                const int64_t nj = n - j * PANEL < PANEL ? n - j * PANEL : PANEL;
                fill_panel(w + (p + j * PANEL) * row_bytes, row_bytes, (int)nj, kpad, group,
                           scale + (p + j * PANEL) * ngroups, zero + (p + j * PANEL) * ngroups,
                           b + j * (b_bytes / 2), sw + j * PANEL, zf + j * PANEL, zi + j * PANEL);
            }
            for (int64_t m0 = i0; m0 < i1; m0 += BLOCK_ROWS)
                run_block(&a, m0, i1 - m0 >= BLOCK_ROWS ? BLOCK_ROWS : TILE_ROWS, n, y + p, ldy, c, acc);
            if (padded && i1 == full) run_block(&t, 0, tail, n, y + full * ldy + p, ldy, c, acc);
        }
    }
    _tile_release(); /* back to the init state: nothing for a context switch to save */
    free(b);
    if (tail > 0 && !padded)
        mq_avx512vnni_q4_gemv_i8(xq + full * kpad, tail, xscale + full * ngroups, xqsum + full * ngroups, w, kpad,
                                 group, scale, zero, r0, r1, y + full * ldy, ldy);
}

const mq_kernels mq_amx_int4_table = {
    .q4_gemv_i8 = q4_gemv_i8_amx,
    .q4_gemv_i8_name = "amx_int8",
    /* for the thread split (int4.c): 3-6x the VNNI kernel's speed from 16 rows (Intel Xeon, 1 Dec,
     * 1 thread, BERT layers); chunks of whole panel pairs */
    .q4_gemv_i8_speed = 8,
    .q4_gemv_i8_channels = 2 * PANEL,
};

#else
const mq_kernels mq_amx_int4_table = {.name = NULL};
#endif
