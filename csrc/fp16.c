/* fp16.c - the fp16 / bf16 weight linear: fp32 activations times 16-bit
 * weights widened to fp32 in registers (F16C vcvtph2ps, or a shift for
 * bf16), fp32 accumulation.
 *
 * The weight stays as stored (row-major [n][k], the module's own `.weight`):
 * at a few rows the layer reads half the bytes of an fp32 one, and nothing is
 * converted whole per call (the panel path at the end widens one 16-channel
 * panel at a time, into a buffer per thread).  Blocking, so each byte is fetched from memory
 * once per row block: the kernels walk 3-4 weight rows at a time against
 * every activation row of a block (the weight rows stay in L1), the
 * activation block stays in L2 (ROW_BLOCK rows x K_BLOCK columns), and the
 * outputs are split over threads (parallel.c's rules). */

#include "mq.h"

/* Output columns per unit of work handed to threads: a multiple of every
 * kernel's weight tile (3 on AVX2, 4 on AVX-512), so no tile is cut. */
#define UNIT_COLS 12
/* Activation block: ROW_BLOCK x K_BLOCK fp32 = 256 KiB, inside the L2 of
 * AVX2-era cores (512 KiB) with room for the weight stream; K_BLOCK long, so
 * each tile's final lane sums cost little beside its multiply-adds (1024 was
 * 0-10% faster than 512 x 128 rows, benchmarks/bench_fp16.py). */
#define ROW_BLOCK 64
#define K_BLOCK 1024
/* Up to this many rows K is not blocked: the whole activation fits in L2 and
 * the weight rows stream front to back (what the prefetchers like best). */
#define UNBLOCKED_ROWS 8

/* Below ONE_THREAD_MACS a call stays on the calling thread, below MQ_SPLIT_ALWAYS_MACS it splits
 * only while the split calls' callers kept their cores (mq_threads_for_work).  2^23 (linear.c's
 * weight-only threshold) left calls of 4 - 32 rows on one thread where fp32's ran on two: at 2
 * threads, 2^23 -> 2^21 (Intel Xeon, 6 Dec): 768 -> 768 at 4 rows 0.66 -> 1.07-1.11 of fp32's speed,
 * 440 -> 440 at 16 rows 0.70 -> 0.95, 384 -> 384 at 32 rows 0.61 -> 0.96, one row level; whole
 * classifiers in fp16 (their 1x1 convs of few pixels: im2col rows through this GEMM) RegNet-Y-400MF
 * 0.92-0.97 -> 0.96-1.04, MobileNetV3-Large 1.09 -> 1.12-1.13; beside two busy processes such calls
 * stayed 4-26x ahead of fp32's.  2^20 split 384 -> 384 one-row calls too (1.3 M with the widening's
 * rows) for nothing, and lost at 4 rows (1.34 -> 1.25). */
#define ONE_THREAD_MACS ((double)(1 << 21))
/* ... the tiles (a few rows, each weight widened once a call) counting that widening and the call's
 * fixed costs as MQ_WO_CONVERT_ROWS rows (mq.h), as linear.c's weight-only tiles (768 x 768 at 8 rows,
 * 4.7 M: 1.75 of fp32's time on one thread where fp32 ran on two; Intel Xeon, 2 Dec) */
#define MIN_MACS_PER_PIECE ((int64_t)1 << 20)

typedef struct {
    mq_h16_gemm_fn fn;
    const float *x;
    int64_t m, k, ldx;
    const uint16_t *w;
    const float *bias;
    int64_t n;
    float *y;
    int64_t units, group_rows; /* work items: (row group, unit), row group major */
} h16_ctx;

/* Units [u0, u1) over rows [r0, r1): r0 a multiple of ROW_BLOCK, so every row
 * is in the same block and tile as in a call over all the rows, and K is cut
 * by the whole call's row count: the same sums whatever the split. */
static void h16_block(const h16_ctx *c, int64_t r0, int64_t r1, int64_t u0, int64_t u1) {
    const int64_t n0 = u0 * UNIT_COLS, n1 = u1 * UNIT_COLS < c->n ? u1 * UNIT_COLS : c->n;
    const int64_t k_step = c->m <= UNBLOCKED_ROWS ? c->k : K_BLOCK;
    for (int64_t i0 = r0; i0 < r1; i0 += ROW_BLOCK) {
        const int64_t rows = r1 - i0 < ROW_BLOCK ? r1 - i0 : ROW_BLOCK;
        for (int64_t k0 = 0; k0 < c->k; k0 += k_step) {
            const int64_t kc = c->k - k0 < k_step ? c->k - k0 : k_step;
            c->fn(c->x + i0 * c->ldx + k0, c->ldx, rows, c->w + k0, c->k, kc, n0, n1, c->bias, k0 > 0,
                  c->y + i0 * c->n, c->n);
        }
    }
}

static void h16_range(void *vctx, int64_t begin, int64_t end) {
    const h16_ctx *c = vctx;
    while (begin < end) {
        const int64_t g = begin / c->units, u0 = begin % c->units;
        const int64_t u1 = u0 + (end - begin) < c->units ? u0 + (end - begin) : c->units;
        const int64_t r0 = g * c->group_rows, r1 = r0 + c->group_rows < c->m ? r0 + c->group_rows : c->m;
        h16_block(c, r0, r1, u0, u1);
        begin += u1 - u0;
    }
}

void mq_h16_linear(const float *x, int64_t m, int64_t k, int64_t ldx, const uint16_t *w, int is_bf16,
                   const float *bias, int64_t n, float *y, int nthreads) {
    if (m <= 0 || n <= 0) return;
    if (k <= 0) { /* an empty sum: the bias alone */
        for (int64_t i = 0; i < m; i++)
            for (int64_t j = 0; j < n; j++) y[i * n + j] = bias ? bias[j] : 0.0f;
        return;
    }
    const mq_kernels *kt = mq_active();
    nthreads = mq_threads_for_work((double)(m + MQ_WO_CONVERT_ROWS) * (double)k * (double)n, ONE_THREAD_MACS, nthreads);
    const int64_t units = (n + UNIT_COLS - 1) / UNIT_COLS;
    /* Few units (fewer than 4 a thread: a narrow head at many rows, Linear(768, 16) being one unit
     * and a third) and rows for several blocks: groups of whole row blocks too, about two a thread.
     * Cut over units alone, such a layer sat on one thread, or split 12 : 4 columns. */
    int64_t group_rows = m;
    if (nthreads > 1 && units < 4 * nthreads && m >= 2 * ROW_BLOCK)
        group_rows = mq_round_up((m + 2 * nthreads - 1) / (2 * nthreads), ROW_BLOCK);
    h16_ctx c = {is_bf16 ? kt->bf16_gemm : kt->f16_gemm, x, m, k, ldx, w, bias, n, y, units, group_rows};
    const int64_t per_unit = group_rows * k * UNIT_COLS, groups = (m + group_rows - 1) / group_rows;
    const int64_t min_units = mq_items_per_chunk(per_unit, MIN_MACS_PER_PIECE);
    mq_parallel_for(groups * units, min_units, nthreads, h16_range, &c);
}

/* ---- many rows: the level's h16_panels kernel (mq.h) ----------------------------------- */

/* fewer rows take the tiles (the AVX2 panel tiles hold 3-6 rows; panels pay off from tens) */
#define PANELS_MIN_ROWS 8

typedef struct {
    mq_h16_panels_fn fn;
    int64_t m, k;
    const uint16_t *w;
    int is_bf16;
    const float *bias;
    int64_t n;
    float *y;
} panels_job;

static void panels_piece(void *job, const float *x, int64_t kp, int64_t p0, int64_t p1, float *wbuf) {
    const panels_job *j = job;
    j->fn(x, j->m, kp, j->w, j->k, j->is_bf16, j->bias, j->n, j->y, p0, p1, wbuf);
}

int mq_h16_linear_panels(const float *x, int64_t m, int64_t k, const uint16_t *w, int is_bf16, const float *bias,
                         int64_t n, float *y, int nthreads) {
    const mq_kernels *kt = mq_active();
    if (!kt->h16_panels || m < PANELS_MIN_ROWS || n <= 0 || k <= 0) return 1;
    panels_job job = {kt->h16_panels, m, k, w, is_bf16, bias, n, y};
    return mq_panels_parallel(x, m, k, n, ONE_THREAD_MACS, MIN_MACS_PER_PIECE, nthreads, panels_piece, &job);
}
