/* x86/amx/tiles.h - what the AMX units share (include only from an AMX compile unit): the
 * tile shape and the 4-byte transpose that lays 16 weight rows out as a B tile.
 *
 * Every tile is 16 rows x 64 bytes: an A tile of 16 activation rows x 64 int8, a B tile of
 * 16 K-quads x 16 channels x 4 bytes, a C tile of 16 x 16 int32. */
#ifndef MQ_X86_AMX_TILES_H
#define MQ_X86_AMX_TILES_H

#include <immintrin.h>
#include <string.h>

enum {
    AMX_TILE_ROWS = 16, /* rows of an A or C tile, K-quads of a B tile */
    AMX_TILE_K = 64,    /* bytes in a tile row: activation bytes of an A tile */
};

/* ldtilecfg's 64-byte operand, palette 1 */
typedef struct {
    uint8_t palette, start_row, reserved[14];
    uint16_t colsb[16];
    uint8_t rows[16];
} amx_tile_config;

/* tiles 0-7 all 16 x 64 bytes; pair with _tile_release() once the call's tiles are done */
static inline void amx_configure_tiles(void) {
    amx_tile_config cfg __attribute__((aligned(64)));
    memset(&cfg, 0, sizeof cfg);
    cfg.palette = 1;
    for (int t = 0; t < 8; t++) {
        cfg.rows[t] = AMX_TILE_ROWS;
        cfg.colsb[t] = AMX_TILE_K;
    }
    _tile_loadconfig(&cfg);
}

/* r[k] <- the k-th 4-byte group of each of r[0..15] (a 16 x 16 transpose of int32) */
static inline void amx_transpose16(__m512i r[16]) {
    __m512i t[16], u[16];
    for (int i = 0; i < 16; i += 2) {
        t[i] = _mm512_unpacklo_epi32(r[i], r[i + 1]);
        t[i + 1] = _mm512_unpackhi_epi32(r[i], r[i + 1]);
    }
    for (int i = 0; i < 16; i += 4) { /* per 128-bit lane L: u[i + j] = rows i..i+3, element 4L + j */
        u[i] = _mm512_unpacklo_epi64(t[i], t[i + 2]);
        u[i + 1] = _mm512_unpackhi_epi64(t[i], t[i + 2]);
        u[i + 2] = _mm512_unpacklo_epi64(t[i + 1], t[i + 3]);
        u[i + 3] = _mm512_unpackhi_epi64(t[i + 1], t[i + 3]);
    }
    for (int j = 0; j < 4; j++) { /* r[4L + j] lane G = u[4G + j] lane L */
        __m512i v0 = _mm512_shuffle_i32x4(u[j], u[4 + j], _MM_SHUFFLE(1, 0, 1, 0));
        __m512i v1 = _mm512_shuffle_i32x4(u[j], u[4 + j], _MM_SHUFFLE(3, 2, 3, 2));
        __m512i v2 = _mm512_shuffle_i32x4(u[8 + j], u[12 + j], _MM_SHUFFLE(1, 0, 1, 0));
        __m512i v3 = _mm512_shuffle_i32x4(u[8 + j], u[12 + j], _MM_SHUFFLE(3, 2, 3, 2));
        r[j] = _mm512_shuffle_i32x4(v0, v2, _MM_SHUFFLE(2, 0, 2, 0));
        r[4 + j] = _mm512_shuffle_i32x4(v0, v2, _MM_SHUFFLE(3, 1, 3, 1));
        r[8 + j] = _mm512_shuffle_i32x4(v1, v3, _MM_SHUFFLE(2, 0, 2, 0));
        r[12 + j] = _mm512_shuffle_i32x4(v1, v3, _MM_SHUFFLE(3, 1, 3, 1));
    }
}

#endif
