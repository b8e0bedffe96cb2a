/* u8_linear.c - the uint8 weight-only linear: fp32 activations times a uint8 weight minus its
 * zero-points, widened to fp32 in registers, fp32 accumulation, each channel's sum scaled once.
 *
 * The weight stays as stored (row-major [n][k], the module's weight_qdata): at a few rows a
 * call reads a quarter of an fp32 layer's bytes, and nothing is converted whole per call
 * (dequantizing a 4096 x 4096 weight for one row took 5x fp32's time).  More rows take the
 * level's panels (below: each panel widened once per block of rows), then torch's BLAS on the
 * dequantized weight (kernels/row_rules.py uint8_path).  Outputs are split over threads as
 * fp16.c's (the same thresholds: a multiply-add here costs a widening and an FMA too). */
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
    int64_t m, k;
    const uint8_t *q;
    const int32_t *zp;
    const float *scale, *bias;
    int64_t n;
    float *y;
} u8_panels_job;

static void u8_panels_piece(void *job, const float *x, int64_t kp, int64_t p0, int64_t p1, float *wbuf) {
    const u8_panels_job *j = job;
    j->fn(x, j->m, kp, j->q, j->k, j->zp, j->scale, j->bias, j->n, j->y, p0, p1, wbuf);
}

int mq_u8_linear_panels(const float *x, int64_t m, int64_t k, const uint8_t *q, const int32_t *zp,
                        const float *scale, const float *bias, int64_t n, float *y, int nthreads) {
    const mq_kernels *kt = mq_active();
    if (!kt->u8_panels || m < PANELS_MIN_ROWS || n <= 0 || k <= 0) return 1;
    u8_panels_job job = {kt->u8_panels, m, k, q, zp, scale, bias, n, y};
    return mq_panels_parallel(x, m, k, n, ONE_THREAD_MACS, MIN_MACS_PER_PIECE, nthreads, u8_panels_piece, &job);
}
