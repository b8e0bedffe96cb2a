/* x86/amx/tiles.h - the tile shape the AMX units share (include only from an AMX compile unit).
 *
 * Every tile is 16 rows x 64 bytes: an A tile of 16 activation rows x 64 int8 (AMX-INT8) or 32
 * bf16 (AMX-BF16), a B tile of 16 K-quads x 16 channels x 4 int8 or 16 K-pairs x 16 channels x
 * 2 bf16, a C tile of 16 x 16 int32 or fp32.  A B tile from 16 weight rows is a transpose of
 * 4-byte words (x86/avx512/transpose16.h). */
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

#endif
