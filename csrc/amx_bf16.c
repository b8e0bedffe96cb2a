/* amx_bf16.c - the driver of the AMX-BF16 matmul (x86/amx/bf16_pieces.c, mq.h): float32
 * activations times fp16 / bf16 weights or a packed int8 one (weight-only), fp32-accurate.
 * Many rows: the weight's B tiles once per call (over panels, shared), then the tiles over row
 * ranges: each range splits its own rows of x into pieces as it goes (no shared copy of x, and
 * the pieces stay in L2).  Few rows (by_panel_pairs): x's pieces once, then the tiles over
 * panel pairs, each piece packing its pairs' B tiles just before they run (in L2, and on two
 * threads where the rows make one range).  The same bits either way.  A call whose x or weight
 * holds an infinity or NaN is declined (the pieces cannot carry them): the caller runs its fp32
 * path. */
#include <stdlib.h>

#include "mq.h"

/* below this much work a call stays on one thread.  At 2^25, 128 x 384 x 384 (19 M multiply-adds)
 * stayed on one thread and lost to fp32's two (Intel Xeon, 1 Dec, weight-only: 1.09 of fp32's
 * time; split in row ranges, 0.94).  At 2^23 (fp16.c's), a RegNet's or EfficientNet's 1x1 convs
 * on 16 - 64 pixels (440 -> 440 on 4x4: 3 M) stayed on one thread: whole classifiers at 2 threads,
 * weight-only, 0.91 / 1.00 of fp32's speed, 0.97-1.01 / 1.07 from 2^20 with MIN_PAIRS_MACS 2^19
 * (Intel Xeon, 6 Dec; a 6-layer BERT-style encoder, hidden 384, at 16 - 32 rows: 1.28-1.38 -> 1.41-1.49) */
#define ONE_THREAD_MACS ((double)(1 << 20))
/* a row range's least work (and rows): each range streams every panel's B tiles and sets up
 * its tiles */
#define MIN_RANGE_MACS ((int64_t)1 << 23)
#define MIN_RANGE_TILES 2
/* split over panel pairs (by_panel_pairs) while x's pieces take at most this much (every pair's
 * tiles read all of them), and on one thread from this much of the weight's B tiles: 1 thread,
 * 16-64 rows: 3072 x 768 0.38 of fp32's time by pairs, 0.50 by rows; 768 x 768 (1.2 MB) the same */
#define PAIRS_MAX_X_BYTES ((double)(3 << 19))
#define PAIRS_FROM_B_BYTES ((double)(2 << 20))
/* ... and, where the rows make fewer ranges than threads, while each thread gets this many pairs:
 * with fewer, every thread reads all of x's pieces for a few tiles' work (768 -> 64 at 256 rows,
 * 2 threads: 1.6 of fp32's time by pairs, 0.8 on one thread by rows; Intel Xeon, 2 Dec) */
#define PAIRS_MIN_PER_THREAD 3
/* a panel-pair piece's least work (2^21: 440 -> 440 at 16 rows made pieces of 10 and 4 of its 14 pairs) */
#define MIN_PAIRS_MACS ((int64_t)1 << 19)

typedef struct {
    const mq_kernels *kt;
    const mq_amxbf16_weight *w;
    mq_amxbf16_args a;
    int declined; /* an infinity or NaN, or a range's buffer: the caller's path instead */
} amx_ctx;

static void pack_range(void *vctx, int64_t begin, int64_t end) {
    amx_ctx *c = vctx;
    const mq_amxbf16_weight *w = c->w;
    uint16_t *wp = (uint16_t *)c->a.wp;
    if (w->packed)
        c->kt->amxbf16_pack_i8(w->packed, w->kp4, w->zp, c->a.n, c->a.kp, wp, begin, end);
    else if (c->kt->amxbf16_pack_h16(w->h16, c->a.n, c->a.k, w->is_bf16, c->a.kp, wp, begin, end))
        __atomic_store_n(&c->declined, 1, __ATOMIC_RELAXED);
}

static void panels_range(void *vctx, int64_t begin, int64_t end) {
    amx_ctx *c = vctx;
    if (__atomic_load_n(&c->declined, __ATOMIC_RELAXED)) return;
    if (c->kt->amxbf16_gemm_panels(&c->a, c->w, begin, end)) __atomic_store_n(&c->declined, 1, __ATOMIC_RELAXED);
}

static void gemm_range(void *vctx, int64_t begin, int64_t end) {
    amx_ctx *c = vctx;
    if (__atomic_load_n(&c->declined, __ATOMIC_RELAXED)) return; /* the caller's path redoes it all */
    if (c->kt->amxbf16_gemm(&c->a, begin, end)) __atomic_store_n(&c->declined, 1, __ATOMIC_RELAXED);
}

/* Whether a call of `tiles` row tiles splits over panel pairs (x's pieces split once, each pair's
 * B tiles packed just before its tiles run, by the thread that runs them) rather than
 * over row ranges (the weight's B tiles packed once, shared): where x's pieces are small and
 * either the row ranges would leave a thread idle or the weight's B tiles (weight_rows x kp
 * bf16) are past L2, so that the row ranges would read them back from L3 or memory. */
static int by_panel_pairs(int64_t tiles, int64_t kp, int64_t weight_rows, int64_t pairs, int64_t min_tiles,
                          int nthreads) {
    const double x_bytes = 3.0 * 16 * (double)tiles * (double)kp * 2, b_bytes = (double)weight_rows * (double)kp * 2;
    if (x_bytes > PAIRS_MAX_X_BYTES) return 0;
    const int64_t ranges = tiles / min_tiles;
    return (ranges < nthreads && pairs >= PAIRS_MIN_PER_THREAD * nthreads) || b_bytes >= PAIRS_FROM_B_BYTES;
}

/* mq_amx_split_for_tests: 0 the rule, 1 panel pairs, 2 row tiles */
static int split_mode = 0;

int mq_amx_split_for_tests(int mode) {
    if (mode < 0 || mode > 2) return -1;
    split_mode = mode;
    return 0;
}

int mq_amxbf16_linear(const float *x, int64_t ldx, int64_t m, int64_t k, const mq_amxbf16_weight *w,
                      const float *scale, const float *bias, int64_t n, float *y, int nthreads) {
    const mq_kernels *kt = mq_active();
    if (!kt->amxbf16_gemm || m <= 0 || n <= 0 || k <= 0) return 1;
    const int64_t kp = mq_round_up(k, 32), tiles = (m + 15) / 16, panels = (n + MQ_PANEL - 1) / MQ_PANEL;
    const int wpieces = w->packed || w->is_bf16 ? 1 : 2;
    /* in int8 weight-only's multiply-adds (3 products a term): fp16's 5 cost 5 / 3 of them */
    nthreads = mq_threads_for_work((double)m * (double)k * (double)n * (wpieces == 2 ? 5.0 / 3.0 : 1.0),
                                   ONE_THREAD_MACS, nthreads);
    int64_t min_tiles = mq_items_per_chunk(16 * n * kp, MIN_RANGE_MACS);
    if (min_tiles < MIN_RANGE_TILES) min_tiles = MIN_RANGE_TILES;
    if (split_mode == 1 || (split_mode == 0 && by_panel_pairs(tiles, kp, n * wpieces, (panels + 1) / 2, min_tiles, nthreads))) {
        /* x's pieces once, here: every pair's tiles read all of them */
        uint16_t *xp = aligned_alloc(64, mq_alloc_bytes(mq_size_mul(3 * tiles * 16, kp), sizeof(uint16_t), 64));
        if (!xp) return -1;
        amx_ctx c = {kt, w, {x, ldx, k, m, kp, NULL, wpieces, scale, bias, n, y, xp}, 0};
        c.declined = kt->amxbf16_split_x(&c.a, xp);
        if (!c.declined)
            mq_parallel_for((panels + 1) / 2, mq_items_per_chunk(tiles * 16 * 2 * MQ_PANEL * kp, MIN_PAIRS_MACS),
                            nthreads, panels_range, &c);
        free(xp);
        return c.declined ? 1 : 0;
    }
    /* the weight's B tiles: panels x pieces x 16 kp bf16 */
    uint16_t *wp = aligned_alloc(64, mq_alloc_bytes(mq_size_mul(panels * wpieces * MQ_PANEL, kp), sizeof(uint16_t), 64));
    if (!wp) return -1;
    amx_ctx c = {kt, w, {x, ldx, k, m, kp, wp, wpieces, scale, bias, n, y, NULL}, 0};
    mq_parallel_for(panels, 4, nthreads, pack_range, &c);
    if (!c.declined) mq_parallel_for(tiles, min_tiles, nthreads, gemm_range, &c);
    free(wp);
    return c.declined ? 1 : 0;
}

int mq_h16_linear_amx(const float *x, int64_t m, int64_t k, const uint16_t *w, int is_bf16, const float *bias,
                      int64_t n, float *y, int nthreads) {
    const mq_amxbf16_weight wt = {w, is_bf16, NULL, 0, NULL};
    return mq_amxbf16_linear(x, k, m, k, &wt, NULL, bias, n, y, nthreads);
}

int mq_linear_weight_only_amx(const void *x, mq_src_t kind, int64_t m, int64_t k, int64_t ldx, const int8_t *packed,
                              const float *w_scale, const int32_t *w_zp, const float *bias, int64_t n, float *y,
                              int nthreads) {
    if (kind != MQ_SRC_F32) return 1; /* fp16 / bf16 activations: the tiles' copy to fp32 first */
    const mq_amxbf16_weight wt = {NULL, 0, packed, mq_round_up(k, MQ_KGROUP), w_zp};
    return mq_amxbf16_linear(x, ldx, m, k, &wt, w_scale, bias, n, y, nthreads);
}
