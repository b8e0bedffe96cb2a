/* quantize_pack.c - per-channel int8 quantization straight into the packed
 * matmul layout (linear.c), for checkpoints and quantize().
 *
 * Quantizing whole rows and packing afterwards streams the weight three
 * times (fp32 in, plain int8 out, plain int8 back in) and touches a second
 * output buffer as large as the packed one.  Here a thread takes whole
 * panels: the panel's 16 rows are quantized into a 16*k scratch that stays in
 * L2, then packed from it, so memory sees the fp32 input read once and the
 * packed output written once.  The row kernels are the dispatched ones
 * mq_rows_quantize_fused uses, so the bytes are the same on every ISA. */
#include <math.h>
#include <stdlib.h>

#include "mq.h"

typedef struct {
    const uint8_t *src;
    size_t row_bytes;
    mq_src_t kind;
    int64_t n, k;
    int qmin, qmax, symmetric;
    float *scale;
    int32_t *zp;
    int8_t *packed;
    int32_t *w_sum;
    uint8_t *panel_m128;
    double *sum_x2, *sum_err2;
    int out_of_memory; /* set by a thread that could not get its scratch */
} qpack_ctx;

static void qpack_range(void *vctx, int64_t p0, int64_t p1) {
    qpack_ctx *c = vctx;
    const mq_kernels *kt = mq_active();
    const int64_t k = c->k, kp = mq_round_up(k, MQ_KGROUP);
    int8_t *scratch = malloc((size_t)MQ_PANEL * (size_t)k);
    if (!scratch) {
        c->out_of_memory = 1; /* a plain int store: every writer stores the same value */
        return;
    }
    for (int64_t p = p0; p < p1; p++) {
        const int64_t row0 = p * MQ_PANEL, nvalid = c->n - row0 < MQ_PANEL ? c->n - row0 : MQ_PANEL;
        for (int64_t ch = 0; ch < nvalid; ch++) {
            const int64_t r = row0 + ch;
            const uint8_t *row = c->src + (size_t)r * c->row_bytes;
            uint8_t *q = (uint8_t *)scratch + ch * k;
            float mn, mx;
            if (kt->minmax[c->kind](row, k, &mn, &mx)) { /* NaN/Inf: reported by the driver */
                c->scale[r] = NAN;
                c->zp[r] = 0;
                memset(q, 0, (size_t)k);
                continue;
            }
            mq_choose_qparams(mn, mx, c->qmin, c->qmax, c->symmetric, &c->scale[r], &c->zp[r]);
            kt->quantize[c->kind](row, k, 1.0f / c->scale[r], (float)c->zp[r], (float)c->qmin, (float)c->qmax, 0,
                                  q);
            if (c->sum_x2) /* the row is still in L1: the error costs no extra memory traffic */
                kt->sqerr[c->kind](row, q, k, c->scale[r], (float)c->zp[r], 1, &c->sum_x2[r], &c->sum_err2[r]);
        }
        kt->pack_panel(scratch, k, nvalid, k, c->packed + p * MQ_PANEL * kp, c->w_sum + row0, &c->panel_m128[p]);
    }
    free(scratch);
}

int64_t mq_quantize_pack_int8(const void *src, mq_src_t kind, int64_t n, int64_t k, int qmin, int qmax,
                              int symmetric, float *scale, int32_t *zero_point, int8_t *packed, int32_t *w_sum,
                              uint8_t *panel_m128, double *sum_x2, double *sum_err2, int *has_m128, int nthreads) {
    const int64_t panels = mq_round_up(n, MQ_PANEL) / MQ_PANEL;
    qpack_ctx c = {src, (size_t)k * mq_src_size(kind), kind, n, k, qmin, qmax, symmetric, scale, zero_point,
                   packed, w_sum, panel_m128, sum_x2, sum_err2, 0};
    /* ~1 MiB of input per chunk: small layers stay on this thread */
    const int64_t panel_bytes = MQ_PANEL * (k > 0 ? k : 1) * (int64_t)mq_src_size(kind);
    mq_parallel_for(panels, 1 + ((int64_t)1 << 20) / panel_bytes, nthreads, qpack_range, &c);
    if (c.out_of_memory) return -2;
    int m128 = 0;
    for (int64_t p = 0; p < panels; p++) m128 |= panel_m128[p];
    *has_m128 = m128;
    for (int64_t r = 0; r < n; r++)
        if (isnan(scale[r])) return r;
    return -1;
}
