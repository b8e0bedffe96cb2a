/* panels_parallel.c - the many-row drivers of the weights kept row-major (fp16.c's fp16 / bf16,
 * u8_linear.c's uint8): a level's panel kernel over the weight's 16-channel panels, split between
 * threads, each piece with a panel buffer of its own, x zero-padded to whole K-groups where k is
 * not (the tiles read rows of kp floats). */
#include <stdlib.h>

#include "mq.h"

typedef struct {
    mq_panels_piece_fn fn;
    void *job;
    const float *x;
    int64_t kp;
    int failed; /* a piece could not allocate its panel buffer */
} pieces_ctx;

static void piece_range(void *vctx, int64_t begin, int64_t end) {
    pieces_ctx *c = vctx;
    float *wbuf = aligned_alloc(64, (size_t)c->kp * MQ_PANEL * sizeof(float));
    if (!wbuf) {
        __atomic_store_n(&c->failed, 1, __ATOMIC_RELAXED);
        return;
    }
    c->fn(c->job, c->x, c->kp, begin, end, wbuf);
    free(wbuf);
}

int mq_panels_parallel(const float *x, int64_t m, int64_t k, int64_t n, double one_thread_macs,
                       int64_t min_macs_per_piece, int nthreads, mq_panels_piece_fn fn, void *job) {
    const int64_t kp = mq_round_up(k, MQ_KGROUP), panels = (n + MQ_PANEL - 1) / MQ_PANEL;
    float *xpad = NULL;
    if (kp != k) {
        xpad = malloc((size_t)m * (size_t)kp * sizeof(float));
        if (!xpad) return -1;
        for (int64_t i = 0; i < m; i++) mq_row_to_f32(x + i * k, MQ_SRC_F32, k, kp, xpad + i * kp);
    }
    pieces_ctx c = {fn, job, xpad ? xpad : x, kp, 0};
    nthreads = mq_threads_for_work((double)m * (double)k * (double)n, one_thread_macs, nthreads);
    mq_parallel_for(panels, mq_items_per_chunk(m * kp * MQ_PANEL, min_macs_per_piece), nthreads, piece_range, &c);
    free(xpad);
    return c.failed ? -1 : 0;
}
