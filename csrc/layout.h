/* layout.h - every constant of the stored layouts, written once.
 *
 * The packed int8 and int4 weights are saved to files (docs/formats.md), so
 * these numbers are a file format: the kernels, the drivers and the argument
 * checks read them from here, and Python reads them from _C.LAYOUT (module
 * init), so no layout number is written twice.  Changing one changes the
 * format: bump MQ_PACKED_LAYOUT_VERSION (the int8 files record it). */
#ifndef MQ_LAYOUT_H
#define MQ_LAYOUT_H

#include <stdint.h>

#include "size_check.h"

/* ---- packed int8 (linear / conv weights) ------------------------------------
 * An int8 weight [n][k] is packed once into panels of MQ_PANEL output
 * channels with K interleaved in groups of MQ_KGROUP:
 *     packed[p][g][c][j] = w[p*16 + c][g*4 + j]      (int8, zero padded)
 * for p < np/16, g < kp/4 (np, kp: n and k rounded up to 16 and 4).  One
 * 64-byte group is 16 channels x 4 k, exactly what one vpdpbusd consumes; the
 * layout does not depend on the ISA (AVX2 reads a panel as two 8-channel
 * halves, the scalar code element by element).  Grouped convolutions pack
 * each group's block on its own, one after the other. */
#define MQ_PACKED_LAYOUT_VERSION 1 /* weight_packed_info[0] in saved files */
#define MQ_PANEL 16                /* output channels per panel */
#define MQ_KGROUP 4                /* consecutive k of one channel, side by side */
#define MQ_PANEL_GROUP_BYTES (MQ_PANEL * MQ_KGROUP)

/* The int8 kernels keep int32 accumulators: |255 * 128 * kp| (the +128
 * activation shift times a column) and the zero-point correction stay inside
 * int32 up to this K. */
#define MQ_MAX_LINEAR_K 32768

/* ---- INT4 group-wise ----------------------------------------------------------
 * A packed block holds MQ_Q4_BLOCK 4-bit codes in MQ_Q4_BLOCK_BYTES bytes:
 * byte j = code[j] | code[j + 16] << 4, so one 16-byte load widened to 16
 * lanes gives codes 0..15 with "& 15" and codes 16..31 with ">> 4".  A group
 * (a multiple of the block) has an fp16 scale and a u4.4 fixed-point
 * zero-point (zero = zp8 / 16): w = (code - zp8 / 16) * scale.  Rows are
 * zero-padded to kpad, a multiple of the block; groups = ceil(kpad / group),
 * the last one possibly shorter. */
#define MQ_Q4_BLOCK 32
#define MQ_Q4_BLOCK_BYTES 16

/* int8 activations for int4 weights: activations are stored in the nibble
 * order of MQ_Q4_I8_CHUNK columns (four blocks: their low nibbles' columns,
 * then their high nibbles'), so kpad and group must be multiples of it; a
 * group of at most MQ_Q4_I8_MAX_GROUP keeps the int32 dot products exact. */
#define MQ_Q4_I8_CHUNK 128
#define MQ_Q4_I8_MAX_GROUP 4096

/* ---- the sizes they give (size_check.h arithmetic: -1 when past int64) -------- */

/* Bytes of the packed int8 weight of `groups` blocks of n / groups channels by
 * k (each block padded on its own), and in *np_out the padded channel count
 * (entries of the column sums). */
static inline int64_t mq_packed_int8_bytes(int64_t n, int64_t k, int64_t groups, int64_t *np_out) {
    *np_out = mq_size_mul(groups, mq_size_round_up(n / groups, MQ_PANEL));
    return mq_size_mul(*np_out, mq_size_round_up(k, MQ_KGROUP));
}

/* An int4 row of cols values padded to whole blocks (its packed row has kpad / 2 bytes). */
static inline int64_t mq_q4_kpad(int64_t cols) { return mq_size_round_up(cols, MQ_Q4_BLOCK); }

/* ---- what ties them together -------------------------------------------------- */
_Static_assert(MQ_PANEL_GROUP_BYTES == 64, "one K-group of a panel is one 64-byte vpdpbusd operand");
_Static_assert(MQ_PANEL % 8 == 0, "AVX2 kernels read a panel as 8-channel halves");
_Static_assert(255LL * 128 * MQ_MAX_LINEAR_K <= INT32_MAX, "int8 accumulators must not overflow int32");
_Static_assert(MQ_MAX_LINEAR_K % MQ_KGROUP == 0, "the largest K must be a whole number of K-groups");
_Static_assert(MQ_Q4_BLOCK == 2 * MQ_Q4_BLOCK_BYTES, "two 4-bit codes per byte");
_Static_assert(MQ_Q4_BLOCK_BYTES == 16, "a block's bytes are one 16-byte load");
_Static_assert(MQ_Q4_I8_CHUNK == 4 * MQ_Q4_BLOCK, "the int8-activation order interleaves four blocks");
_Static_assert(MQ_Q4_I8_MAX_GROUP % MQ_Q4_I8_CHUNK == 0, "the largest int8-activation group is whole chunks");
/* 16 * sum(code * xq) - zp8 * sum(xq) over one group: codes 0..15, |xq| <= 127, zp8 <= 255 */
_Static_assert(16LL * 15 * 127 * MQ_Q4_I8_MAX_GROUP + 255LL * 127 * MQ_Q4_I8_MAX_GROUP <= INT32_MAX,
               "int4 x int8 group sums must stay exact in int32");

#endif /* MQ_LAYOUT_H */
