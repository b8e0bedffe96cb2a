/* amx_bf16.c - the driver of the AMX-BF16 matmul (x86/amx/bf16_pieces.c, mq.h): float32
 * activations times fp16 / bf16 weights or a packed int8 one (weight-only), fp32-accurate.
 * The weight's B tiles once per call (over panels, shared), then the tiles over row ranges:
 * each range splits its own rows of x into pieces as it goes (no shared copy of x, and the
 * pieces stay in L2); a call whose x or weight holds an infinity or NaN is declined (the
 * pieces cannot carry them): the caller runs its fp32 path. */
#include <stdlib.h>

#include "mq.h"

/* below this much work a call stays on one thread (fp16.c's threshold).  At 4x it, 128 x 384 x
 * 384 (19 M multiply-adds) stayed on one thread and lost to fp32's two (Intel Xeon, 1 Dec,
 * weight-only: 1.09 of fp32's time; split in row ranges from this threshold, 0.94) */
#define ONE_THREAD_MACS ((double)(1 << 23))
/* a row range's least work (and rows): each range streams every panel's B tiles and sets up
 * its tiles */
#define MIN_RANGE_MACS ((int64_t)1 << 23)
#define MIN_RANGE_TILES 2

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

static void gemm_range(void *vctx, int64_t begin, int64_t end) {
    amx_ctx *c = vctx;
    if (__atomic_load_n(&c->declined, __ATOMIC_RELAXED)) return; /* the caller's path redoes it all */
    if (c->kt->amxbf16_gemm(&c->a, begin, end)) __atomic_store_n(&c->declined, 1, __ATOMIC_RELAXED);
}

int mq_amxbf16_linear(const float *x, int64_t ldx, int64_t m, int64_t k, const mq_amxbf16_weight *w,
                      const float *scale, const float *bias, int64_t n, float *y, int nthreads) {
    const mq_kernels *kt = mq_active();
    if (!kt->amxbf16_gemm || m <= 0 || n <= 0 || k <= 0) return 1;
    const int64_t kp = mq_round_up(k, 32), tiles = (m + 15) / 16, panels = (n + MQ_PANEL - 1) / MQ_PANEL;
    const int wpieces = w->packed || w->is_bf16 ? 1 : 2;
    /* the weight's B tiles: panels x pieces x 16 kp bf16 */
    uint16_t *wp = aligned_alloc(64, mq_alloc_bytes(mq_size_mul(panels * wpieces * MQ_PANEL, kp), sizeof(uint16_t), 64));
    if (!wp) return -1;
    amx_ctx c = {kt, w, {x, ldx, k, m, kp, wp, wpieces, scale, bias, n, y}, 0};
    nthreads = mq_threads_for_work((double)m * (double)k * (double)n, ONE_THREAD_MACS, nthreads);
    mq_parallel_for(panels, 4, nthreads, pack_range, &c);
    if (!c.declined) {
        int64_t min_tiles = mq_items_per_chunk(16 * n * kp, MIN_RANGE_MACS);
        if (min_tiles < MIN_RANGE_TILES) min_tiles = MIN_RANGE_TILES;
        mq_parallel_for(tiles, min_tiles, nthreads, gemm_range, &c);
    }
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
