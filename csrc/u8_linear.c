/* u8_linear.c - the uint8 weight-only linear: fp32 activations times a uint8 weight minus its
 * zero-points, widened to fp32 in registers, fp32 accumulation, each channel's sum scaled once.
 *
 * The weight stays as stored (row-major [n][k], the module's weight_qdata): at a few rows a
 * call reads a quarter of an fp32 layer's bytes, and nothing is converted whole per call
 * (dequantizing a 4096 x 4096 weight for one row took 5x fp32's time).  Many rows take
 * torch's BLAS on the dequantized weight instead (kernels/row_rules.py U8_KERNEL_MAX_ROWS):
 * there the conversion is shared by the rows.  Outputs are split over threads as fp16.c's
 * (the same thresholds: a multiply-add here costs a widening and an FMA too). */
#include <stdlib.h>

#include "mq.h"

/* Output columns per unit of work: a multiple of the AVX2 tile's 3 weight rows. */
#define UNIT_COLS 12
#define ONE_THREAD_MACS ((double)(1 << 23))
#define MIN_MACS_PER_PIECE ((int64_t)1 << 20)

typedef struct {
    mq_u8_gemm_fn fn;
    const float *x;
    int64_t m, k, ldx;
    const uint8_t *q;
    const int32_t *zp;
    const float *scale, *bias;
    int64_t n;
    float *y;
} u8_ctx;

static void u8_range(void *vctx, int64_t begin, int64_t end) {
    const u8_ctx *c = vctx;
    const int64_t n0 = begin * UNIT_COLS, n1 = end * UNIT_COLS < c->n ? end * UNIT_COLS : c->n;
    c->fn(c->x, c->ldx, c->m, c->q, c->k, c->k, c->zp, c->scale, n0, n1, c->bias, c->y, c->n);
}

void mq_u8_linear(const float *x, int64_t m, int64_t k, int64_t ldx, const uint8_t *q, const int32_t *zp,
                  const float *scale, const float *bias, int64_t n, float *y, int nthreads) {
    if (m <= 0 || n <= 0) return;
    if (k <= 0) { /* an empty sum: the bias alone */
        for (int64_t i = 0; i < m; i++)
            for (int64_t j = 0; j < n; j++) y[i * n + j] = bias ? bias[j] : 0.0f;
        return;
    }
    nthreads = mq_threads_for_work((double)(m + MQ_WO_CONVERT_ROWS) * (double)k * (double)n, ONE_THREAD_MACS, nthreads);
    u8_ctx c = {mq_active()->u8_gemm, x, m, k, ldx, q, zp, scale, bias, n, y};
    const int64_t units = (n + UNIT_COLS - 1) / UNIT_COLS;
    mq_parallel_for(units, mq_items_per_chunk(m * k * UNIT_COLS, MIN_MACS_PER_PIECE), nthreads, u8_range, &c);
}

/* ---- many rows: the level's u8_panels kernel (mq.h) -------------------------------------- */

/* fewer rows take the tiles above (the AVX2 panel tiles hold 3-6 rows; panels pay off from tens) */
#define PANELS_MIN_ROWS 8

typedef struct {
    mq_u8_panels_fn fn;
    const float *x;
    int64_t m, kp, k;
    const uint8_t *q;
    const int32_t *zp;
    const float *scale, *bias;
    int64_t n;
    float *y;
    int failed; /* a piece could not allocate its panel buffer */
} u8_panels_ctx;

/* Panels [begin, end), with a panel buffer of this piece's own. */
static void u8_panels_range(void *vctx, int64_t begin, int64_t end) {
    u8_panels_ctx *c = vctx;
    float *wbuf = aligned_alloc(64, (size_t)c->kp * MQ_PANEL * sizeof(float));
    if (!wbuf) {
        __atomic_store_n(&c->failed, 1, __ATOMIC_RELAXED);
        return;
    }
    c->fn(c->x, c->m, c->kp, c->q, c->k, c->zp, c->scale, c->bias, c->n, c->y, begin, end, wbuf);
    free(wbuf);
}

int mq_u8_linear_panels(const float *x, int64_t m, int64_t k, const uint8_t *q, const int32_t *zp,
                        const float *scale, const float *bias, int64_t n, float *y, int nthreads) {
    const mq_kernels *kt = mq_active();
    if (!kt->u8_panels || m < PANELS_MIN_ROWS || n <= 0 || k <= 0) return 1;
    const int64_t kp = mq_round_up(k, MQ_KGROUP), panels = (n + MQ_PANEL - 1) / MQ_PANEL;
    float *xpad = NULL;
    if (kp != k) { /* the tiles read rows of kp floats: a zero-padded copy */
        xpad = malloc((size_t)m * (size_t)kp * sizeof(float));
        if (!xpad) return -1;
        for (int64_t i = 0; i < m; i++) mq_row_to_f32(x + i * k, MQ_SRC_F32, k, kp, xpad + i * kp);
    }
    u8_panels_ctx c = {kt->u8_panels, xpad ? xpad : x, m, kp, k, q, zp, scale, bias, n, y, 0};
    nthreads = mq_threads_for_work((double)m * (double)k * (double)n, ONE_THREAD_MACS, nthreads);
    mq_parallel_for(panels, mq_items_per_chunk(m * kp * MQ_PANEL, MIN_MACS_PER_PIECE), nthreads, u8_panels_range, &c);
    free(xpad);
    return c.failed ? -1 : 0;
}
