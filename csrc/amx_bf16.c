/* amx_bf16.c - the driver of the AMX-BF16 matmul (x86/amx/bf16_pieces.c, mq.h): float32
 * activations times fp16 / bf16 weights or a packed int8 one (weight-only), fp32-accurate.
 * The pieces of x once per call (over rows), the weight's B tiles once per call (over panels),
 * then the tiles over panel pairs; a call whose x or weight holds an infinity or NaN is
 * declined (the pieces cannot carry them): the caller runs its fp32 path. */
#include <stdlib.h>
#include <string.h>

#include "mq.h"

/* its multiply-adds in the time of one of the fp32 tiles' (Intel Xeon, 1 Dec, 1 thread, BERT
 * layers at 128-1024 rows), for the thread split */
#define AMX_SPEED 4
/* below this much work a call stays on one thread (as fp16.c's, at AMX_SPEED) */
#define ONE_THREAD_MACS ((double)(1 << 23))
#define MIN_MACS_PER_PIECE ((int64_t)1 << 20)

typedef struct {
    const mq_kernels *kt;
    const float *x;
    int64_t ldx, k;
    const mq_amxbf16_weight *w;
    uint16_t *xp, *wp;
    mq_amxbf16_args a;
    int nonfinite; /* the split or the layout met an infinity or NaN */
} amx_ctx;

static void split_range(void *vctx, int64_t begin, int64_t end) {
    amx_ctx *c = vctx;
    if (c->kt->amxbf16_split(c->x, c->ldx, c->k, c->a.kp, c->a.mpad, begin, end, c->xp))
        __atomic_store_n(&c->nonfinite, 1, __ATOMIC_RELAXED);
}

static void pack_range(void *vctx, int64_t begin, int64_t end) {
    amx_ctx *c = vctx;
    const mq_amxbf16_weight *w = c->w;
    if (w->packed)
        c->kt->amxbf16_pack_i8(w->packed, w->kp4, w->zp, c->a.n, c->a.kp, c->wp, begin, end);
    else if (c->kt->amxbf16_pack_h16(w->h16, c->a.n, c->k, w->is_bf16, c->a.kp, c->wp, begin, end))
        __atomic_store_n(&c->nonfinite, 1, __ATOMIC_RELAXED);
}

static void gemm_range(void *vctx, int64_t begin, int64_t end) {
    amx_ctx *c = vctx;
    c->kt->amxbf16_gemm(&c->a, begin, end);
}

int mq_amxbf16_linear(const float *x, int64_t ldx, int64_t m, int64_t k, const mq_amxbf16_weight *w,
                      const float *scale, const float *bias, int64_t n, float *y, int nthreads) {
    const mq_kernels *kt = mq_active();
    if (!kt->amxbf16_gemm || m <= 0 || n <= 0 || k <= 0) return 1;
    const int64_t kp = mq_round_up(k, 32), mpad = mq_round_up(m, 16), panels = (n + MQ_PANEL - 1) / MQ_PANEL;
    const int wpieces = w->packed || w->is_bf16 ? 1 : 2;
    /* x's pieces: 3 x mpad x kp bf16; the weight's: panels x pieces x 16 kp bf16 */
    uint16_t *xp = aligned_alloc(64, mq_alloc_bytes(mq_size_mul(3 * mpad, kp), sizeof(uint16_t), 64));
    uint16_t *wp = aligned_alloc(64, mq_alloc_bytes(mq_size_mul(panels * wpieces * MQ_PANEL, kp), sizeof(uint16_t), 64));
    if (!xp || !wp) {
        free(xp);
        free(wp);
        return -1;
    }
    for (int p = 0; p < 3; p++) /* the rows past m: zero, so their sums are (and stay unwritten) */
        memset(xp + ((size_t)p * (size_t)mpad + (size_t)m) * (size_t)kp, 0, (size_t)(mpad - m) * (size_t)kp * 2);
    amx_ctx c = {kt, x, ldx, k, w, xp, wp, {xp, m, mpad, kp, wp, wpieces, scale, bias, n, y}, 0};
    nthreads = mq_threads_for_work((double)m * (double)k * (double)n, ONE_THREAD_MACS * AMX_SPEED, nthreads);
    mq_parallel_for(m, mq_items_per_chunk(kp, 1 << 16), nthreads, split_range, &c);
    mq_parallel_for(panels, 4, nthreads, pack_range, &c);
    if (!c.nonfinite) {
        const int64_t pairs = mq_items_per_chunk(mpad * kp * 2 * MQ_PANEL, MIN_MACS_PER_PIECE * AMX_SPEED);
        mq_parallel_for(panels, 2 * pairs, nthreads, gemm_range, &c);
    }
    free(xp);
    free(wp);
    return c.nonfinite ? 1 : 0;
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
