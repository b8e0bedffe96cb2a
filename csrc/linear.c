/* linear.c - int8 weight packing and the quantized matmul drivers.
 *
 * The drivers prepare the activations once per call (dynamic mode: per-row
 * symmetric int8, -127..127, so no activation is -128; weight-only: fp32
 * rows padded to kp) and split the output channels over threads in whole
 * panels; the dispatched kernel (ref.c, linear_avx2.c, linear_avx512.c) does
 * the rest.  Nothing here re-packs the weight. */
#include <math.h>
#include <stdlib.h>

#include "mq.h"

/* A thread start costs ~20-50 us: below this many multiply-adds per chunk,
 * fewer threads are faster. */
#define MQ_MIN_MACS_PER_THREAD (1 << 22)

int mq_pack_int8(const int8_t *w, int64_t n, int64_t k, int8_t *packed, int32_t *w_sum) {
    const int64_t kp = mq_round_up(k, MQ_KGROUP), np = mq_round_up(n, MQ_PANEL), groups = kp / MQ_KGROUP;
    int has_m128 = 0;
    for (int64_t p = 0; p < np / MQ_PANEL; p++)
        for (int c = 0; c < MQ_PANEL; c++) {
            int64_t row = p * MQ_PANEL + c;
            int32_t sum = 0;
            for (int64_t g = 0; g < groups; g++)
                for (int j = 0; j < MQ_KGROUP; j++) {
                    int64_t col = g * MQ_KGROUP + j;
                    int8_t v = (row < n && col < k) ? w[row * k + col] : 0;
                    packed[((p * groups + g) * MQ_PANEL + c) * MQ_KGROUP + j] = v;
                    sum += v;
                    has_m128 |= v == -128;
                }
            w_sum[row] = sum;
        }
    return has_m128;
}

/* Rows up to which the dynamic kernels use GEMV tiles; above it, GEMM tiles
 * (bench_linear.py's sweep: per-row time levels off from 5 rows on). */
int64_t mq_gemv_max_rows = 4;

static int64_t panels_per_chunk(int64_t m, int64_t kp) {
    int64_t per_panel = m * kp * MQ_PANEL;
    return per_panel >= MQ_MIN_MACS_PER_THREAD ? 1 : (MQ_MIN_MACS_PER_THREAD + per_panel - 1) / per_panel;
}

/* ---- dynamic int8 ------------------------------------------------------------ */

typedef struct {
    const uint8_t *src;
    size_t row_bytes;
    mq_src_t kind;
    int x_is_q;
    int64_t k;
    mq_qgemm_args *a;
    int32_t *x_sum; /* writable alias of a->x_sum */
    float *x_scale;
    uint8_t *xq;
    const mq_kernels *kt;
} xquant_ctx;

/* Per-row symmetric int8 of the activations (torch's symmetric MinMax
 * formula with qmin = -127), zero padded to kp, shifted to uint8 for VNNI. */
static void quantize_x_range(void *vctx, int64_t begin, int64_t end) {
    xquant_ctx *c = vctx;
    const int64_t kp = c->a->kp;
    for (int64_t r = begin; r < end; r++) {
        const uint8_t *src = c->src + (size_t)r * c->row_bytes;
        uint8_t *q = c->xq + r * kp;
        if (c->x_is_q) {
            memcpy(q, src, (size_t)c->k);
            c->x_scale[r] = 1.0f;
        } else {
            float mn, mx, scale;
            int32_t zp;
            if (c->kt->minmax[c->kind](src, c->k, &mn, &mx)) {
                memset(q, 0, (size_t)kp); /* NaN/Inf in the row: the row's outputs become NaN */
                c->x_scale[r] = NAN;
            } else {
                mq_choose_qparams(mn, mx, -127, 127, 1, &scale, &zp);
                c->kt->quantize[c->kind](src, c->k, 1.0f / scale, 0.0f, -127.0f, 127.0f, 0, q);
                c->x_scale[r] = scale;
            }
        }
        memset(q + c->k, 0, (size_t)(kp - c->k));
        if (c->x_sum) {
            int32_t s = 0;
            for (int64_t i = 0; i < c->k; i++) s += (int8_t)q[i];
            c->x_sum[r] = s;
        }
        if (c->a->x_u8)
            for (int64_t i = 0; i < kp; i++) q[i] ^= 0x80u;
    }
}

typedef struct {
    mq_qgemm_fn fn;
    const mq_qgemm_args *a;
} qgemm_ctx;

static void qgemm_range(void *vctx, int64_t begin, int64_t end) {
    qgemm_ctx *c = vctx;
    c->fn(c->a, begin, end);
}

int mq_linear_dynamic(const void *x, mq_src_t kind, int x_is_q, int64_t m, int64_t k, int64_t ldx,
                      const int8_t *packed, const int32_t *w_sum, const float *w_scale, const int32_t *w_zp,
                      int w_has_m128, const float *bias, int64_t n, float *y, int32_t *acc, int nthreads) {
    const mq_kernels *kt = mq_active();
    const int64_t kp = mq_round_up(k, MQ_KGROUP), panels = mq_round_up(n, MQ_PANEL) / MQ_PANEL;
    if (m <= 0 || n <= 0) return 0;
    uint8_t *xq = aligned_alloc(64, (size_t)mq_round_up(m * kp, 64));
    float *x_scale = malloc((size_t)m * sizeof(float));
    int32_t *x_sum = w_zp ? malloc((size_t)m * sizeof(int32_t)) : NULL;
    int status = -1;
    if (!xq || !x_scale || (w_zp && !x_sum)) goto done;
    mq_qgemm_args a = {xq, kt->qgemm_x_u8, x_scale, x_sum, m, kp, n, packed, w_sum, w_scale, w_zp,
                       w_has_m128, bias, acc ? NULL : y, acc, mq_gemv_max_rows};
    xquant_ctx xc = {x, (size_t)ldx * (x_is_q ? 1 : mq_src_size(kind)), kind, x_is_q, k, &a, x_sum, x_scale, xq, kt};
    mq_parallel_for(m, (1 << 16) / (k + 1) + 1, nthreads, quantize_x_range, &xc);
    qgemm_ctx qc = {kt->qgemm, &a};
    mq_parallel_for(panels, panels_per_chunk(m, kp), nthreads, qgemm_range, &qc);
    status = 0;
done:
    free(xq);
    free(x_scale);
    free(x_sum);
    return status;
}

/* ---- weight-only ------------------------------------------------------------- */

typedef struct {
    mq_wgemm_fn fn;
    const mq_wgemm_args *a;
} wgemm_ctx;

static void wgemm_range(void *vctx, int64_t begin, int64_t end) {
    wgemm_ctx *c = vctx;
    c->fn(c->a, begin, end);
}

int mq_linear_weight_only(const void *x, mq_src_t kind, int64_t m, int64_t k, int64_t ldx, const int8_t *packed,
                          const float *w_scale, const int32_t *w_zp, const float *bias, int64_t n, float *y,
                          int nthreads) {
    const mq_kernels *kt = mq_active();
    const int64_t kp = mq_round_up(k, MQ_KGROUP), panels = mq_round_up(n, MQ_PANEL) / MQ_PANEL;
    if (m <= 0 || n <= 0) return 0;
    const float *xf = x;
    float *buffer = NULL;
    if (kind != MQ_SRC_F32 || kp != k || ldx != k) { /* fp32 rows padded to kp, as the kernels read them */
        buffer = aligned_alloc(64, (size_t)mq_round_up(m * kp * (int64_t)sizeof(float), 64));
        if (!buffer) return -1;
        for (int64_t r = 0; r < m; r++) {
            const uint8_t *row = (const uint8_t *)x + (size_t)(r * ldx) * mq_src_size(kind);
            float *dst = buffer + r * kp;
            if (kind == MQ_SRC_F32) memcpy(dst, row, (size_t)k * sizeof(float));
            else
                for (int64_t i = 0; i < k; i++) dst[i] = mq_load_src(row, kind, i);
            for (int64_t i = k; i < kp; i++) dst[i] = 0.0f;
        }
        xf = buffer;
    }
    mq_wgemm_args a = {xf, m, kp, n, packed, w_scale, w_zp, bias, y};
    wgemm_ctx wc = {kt->wgemm, &a};
    mq_parallel_for(panels, panels_per_chunk(m, kp), nthreads, wgemm_range, &wc);
    free(buffer);
    return 0;
}
