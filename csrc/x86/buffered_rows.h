/* x86/buffered_rows.h - the row-block walk of the weight-only tiles on buffered panels.
 *
 * Shared by the AVX2 and AVX-512 weight-only units (x86/avx2/linear.c, x86/avx512/linear.c),
 * for their int8 weight-only path and their fp16 / bf16 panel path alike.  Plain C: each unit
 * compiles its own copy with its own flags and passes its own ISA's steps. */
#ifndef MQ_X86_BUFFERED_ROWS_H
#define MQ_X86_BUFFERED_ROWS_H

#include "mq.h"

/* Panel p widened to float32 into wbuf (groups * 64 floats, in the order the unit's tiles read). */
typedef void (*mq_panel_fill_fn)(const void *ctx, int64_t p, float *wbuf);
/* Rows [r0, r0 + rows) of panel p on the tiles that read wbuf. */
typedef void (*mq_panel_rows_fn)(const mq_wgemm_args *a, int64_t r0, int64_t rows, int64_t p, const float *wbuf);

/* Rows a block of mq_buffered_rows takes: about 1 MiB of fp32 activations in whole 6-row tiles. */
static inline int64_t mq_buffered_block(int64_t kp) {
    const int64_t block = ((int64_t)1 << 20) / (4 * kp) / 6 * 6;
    return block < 6 ? 6 : block;
}

/* The most rows one block of mq_buffered_rows can have (a short last block joins the one
 * before): what a unit sizes per-block state by. */
static inline int64_t mq_buffered_block_rows_max(int64_t m, int64_t kp, int64_t min_rows) {
    const int64_t most = mq_buffered_block(kp) + min_rows - 1;
    return m < most ? m : most;
}

/* Rows [0, a->m) x panels [p0, p1): blocks of mq_buffered_block(kp) rows, so each block's rows
 * stay in L2 while every panel passes over them; each panel widened once per block by fill,
 * then its rows by rows_fn.  A last block of fewer than min_rows rows joins the one before
 * (tiles that take no fewer: AVX2's quarter tiles, 3). */
static inline void mq_buffered_rows(const mq_wgemm_args *a, int64_t p0, int64_t p1, float *wbuf,
                                    mq_panel_fill_fn fill, const void *ctx, mq_panel_rows_fn rows_fn,
                                    int64_t min_rows) {
    const int64_t block = mq_buffered_block(a->kp);
    for (int64_t r0 = 0; r0 < a->m;) {
        int64_t rows = a->m - r0 < block ? a->m - r0 : block;
        if (a->m - r0 - rows < min_rows) rows = a->m - r0;
        for (int64_t p = p0; p < p1; p++) {
            fill(ctx, p, wbuf);
            rows_fn(a, r0, rows, p, wbuf);
        }
        r0 += rows;
    }
}

#endif /* MQ_X86_BUFFERED_ROWS_H */
