/* x86/amx/linear.c - AMX-INT8 twin of mq_ref_qgemm for calls of 16 rows and more.
 *
 * Compiled with the AVX-512 VNNI flags plus -mamx-tile -mamx-int8 (CMakeLists.txt);
 * dispatch.c installs its table only on CPUs with AMX-INT8 and AVX-512 VNNI, after the OS
 * granted the tile data (arch_prctl).  tdpbusd multiplies 16 rows of uint8 activations
 * (int8 + 128, as the VNNI kernel) by a signed B tile that is exactly 16 K-groups of one
 * packed panel (layout.h: 16 channels x 4 k per 64-byte row), so the weight is read as packed.
 * The int32 sums are exact, the K tail past whole 64-byte tiles and rows past whole 16-row
 * tiles go through vpdpbusd (the latter through the VNNI kernel itself), and every sum goes
 * through the VNNI kernels' epilogue (qgemm_store.h): the same bits as the VNNI level. */
#include "mq.h"

#if defined(__x86_64__) && defined(__AMX_TILE__) && defined(__AMX_INT8__) && defined(__AVX512VNNI__)
#include <immintrin.h>

#include "x86/amx/tiles.h"
#include "x86/avx512_vnni/qgemm_store.h"

enum {
    TILE_ROWS = AMX_TILE_ROWS,         /* rows of an A or C tile, K-groups of a B tile */
    TILE_K = AMX_TILE_K,               /* activation bytes in an A tile row */
    TILE_B_BYTES = TILE_K * MQ_PANEL,  /* one B tile: 16 K-groups of a panel */
    BLOCK_ROWS = 2 * TILE_ROWS,        /* a block: 2 row tiles x 2 panels, C tiles 0-3 */
    C_LD = 2 * MQ_PANEL,               /* int32 row stride of the block's sums */
};

/* Rows [m0, m0 + rows) x panels [p, p + np) of the block's tile sums at c: the K-groups
 * past the whole tiles added with vpdpbusd, then the VNNI kernels' epilogue, each panel's
 * constants loaded once for its rows. */
static void finish_block(const mq_qgemm_args *a, const int32_t *c, int64_t m0, int rows, int64_t p, int np) {
    const int64_t groups = a->kp / MQ_KGROUP, tail0 = a->kp / TILE_K * (TILE_K / MQ_KGROUP);
    for (int j = 0; j < np; j++) {
        const qgemm_panel q = qgemm_panel_load(a, p + j);
        const int8_t *w = a->w + (p + j) * groups * MQ_PANEL_GROUP_BYTES;
        for (int r = 0; r < rows; r++) {
            __m512i acc = _mm512_load_si512(c + r * C_LD + j * MQ_PANEL);
            const uint8_t *x = a->x + (m0 + r) * a->ldx;
            for (int64_t g = tail0; g < groups; g++) {
                int32_t x4;
                memcpy(&x4, x + g * MQ_KGROUP, 4);
                acc = _mm512_dpbusd_epi32(acc, _mm512_set1_epi32(x4), _mm512_loadu_si512(w + g * 64));
            }
            qgemm_store_panel(a, &q, acc, m0 + r);
        }
    }
}

/* RH row tiles (16 rows each) x NP panels over the whole tiles of K: C tile 2 * r + j
 * holds row tile r, panel j; A tiles 4-5, B tiles 6-7.  Tile numbers are instruction
 * immediates, hence a macro per shape. */
#define AMX_BLOCK(RH, NP)                                                                             \
    static void amx_block_##RH##_##NP(const mq_qgemm_args *a, int64_t m0, int64_t p, int32_t *c) {   \
        const int64_t tiles = a->kp / TILE_K, panel_bytes = a->kp * MQ_PANEL, ldx = a->ldx;         \
        const uint8_t *x = a->x + m0 * ldx;                                                          \
        const int8_t *w = a->w + p * panel_bytes;                                                    \
        _tile_zero(0);                                                                               \
        if ((NP) > 1) _tile_zero(1);                                                                 \
        if ((RH) > 1) _tile_zero(2);                                                                 \
        if ((RH) > 1 && (NP) > 1) _tile_zero(3);                                                     \
        for (int64_t t = 0; t < tiles; t++) {                                                        \
            _tile_loadd(4, x + t * TILE_K, ldx);                                                     \
            _tile_loadd(6, w + t * TILE_B_BYTES, TILE_K);                                            \
            _tile_dpbusd(0, 4, 6);                                                                   \
            if ((NP) > 1) {                                                                          \
                _tile_loadd(7, w + panel_bytes + t * TILE_B_BYTES, TILE_K);                          \
                _tile_dpbusd(1, 4, 7);                                                               \
            }                                                                                        \
            if ((RH) > 1) {                                                                          \
                _tile_loadd(5, x + TILE_ROWS * ldx + t * TILE_K, ldx);                               \
                _tile_dpbusd(2, 5, 6);                                                               \
            }                                                                                        \
            if ((RH) > 1 && (NP) > 1) _tile_dpbusd(3, 5, 7);                                         \
        }                                                                                            \
        _tile_stored(0, c, C_LD * 4);                                                                \
        if ((NP) > 1) _tile_stored(1, c + MQ_PANEL, C_LD * 4);                                       \
        if ((RH) > 1) _tile_stored(2, c + TILE_ROWS * C_LD, C_LD * 4);                               \
        if ((RH) > 1 && (NP) > 1) _tile_stored(3, c + TILE_ROWS * C_LD + MQ_PANEL, C_LD * 4);        \
        finish_block(a, c, m0, (RH) * TILE_ROWS, p, (NP));                                           \
    }
AMX_BLOCK(2, 2) AMX_BLOCK(2, 1) AMX_BLOCK(1, 2) AMX_BLOCK(1, 1)

/* Whole 16-row tiles on AMX, in row chunks of about 256 KiB of activations that stay in L2
 * while every panel pair passes over them; the rows left (< 16) and calls with fewer than
 * 16 rows or K under one tile (nothing for AMX to win) on the VNNI kernel. */
static void qgemm_amx(const mq_qgemm_args *a, int64_t p0, int64_t p1) {
    const int64_t full = a->m / TILE_ROWS * TILE_ROWS;
    if (full == 0 || a->kp < TILE_K) {
        mq_avx512vnni_qgemm(a, p0, p1);
        return;
    }
    int64_t chunk = ((int64_t)256 << 10) / a->ldx / BLOCK_ROWS * BLOCK_ROWS;
    if (chunk < BLOCK_ROWS) chunk = BLOCK_ROWS;
    int32_t c[BLOCK_ROWS * C_LD] __attribute__((aligned(64)));
    amx_configure_tiles();
    for (int64_t r0 = 0; r0 < full; r0 += chunk) {
        const int64_t r1 = r0 + chunk < full ? r0 + chunk : full;
        for (int64_t p = p0; p < p1; p += 2) {
            const int two = p + 1 < p1;
            int64_t m0 = r0;
            for (; m0 + BLOCK_ROWS <= r1; m0 += BLOCK_ROWS) (two ? amx_block_2_2 : amx_block_2_1)(a, m0, p, c);
            if (m0 < r1) (two ? amx_block_1_2 : amx_block_1_1)(a, m0, p, c);
        }
    }
    _tile_release(); /* back to the init state: nothing for a context switch to save */
    if (full < a->m) { /* the rows past whole tiles: the VNNI kernel */
        const mq_qgemm_args rest = mq_qgemm_rows(a, full, a->m - full);
        mq_avx512vnni_qgemm(&rest, p0, p1);
    }
}

const mq_kernels mq_amx_linear_table = {
    .qgemm = qgemm_amx,
    .qgemm_x_u8 = 1,
    /* for the split rule: at 2 threads on an Intel Xeon with AMX, 128 x 1536 x 384 (75 M
     * multiply-adds) took 101 us on one thread and 98-129 split; 1024 x 384 x 384 (151 M)
     * 285 and 238-250 (VNNI's split point is 2^24) */
    .qgemm_speed = 8,
    .qgemm_tile_rows = TILE_ROWS,
    .qgemm_tile_k = TILE_K,
    .qgemm_name = "amx_int8",
};

#else /* no AMX compiler support: keep the lower level's kernels */
const mq_kernels mq_amx_linear_table = {.name = NULL};
#endif
