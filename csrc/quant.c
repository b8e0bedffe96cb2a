/* quant.c - scale / zero-point and the whole-tensor drivers over rows.
 *
 * A "row" is the run of elements sharing one scale and zero-point (a
 * channel).  Drivers split rows over threads and call the dispatched row
 * kernels; they do no validation (the bindings, bind_*.c, do). */
#include <float.h>
#include <math.h>

#include "mq.h"

/* torch's MinMaxObserver arithmetic, in float32:
 *   asymmetric: scale = (max(mx,0) - min(mn,0)) / (qmax - qmin)
 *               zp    = clamp(qmin - round(min(mn,0) / scale), qmin, qmax)
 *   symmetric:  scale = max(|min(mn,0)|, max(mx,0)) / ((qmax - qmin) / 2)
 *               zp    = 0 for a signed range, the midpoint for an unsigned one
 * One difference: torch floors the scale at float eps (1.2e-7), which zeroes
 * any layer whose weights are all below ~1e-5.  We floor at FLT_MIN instead,
 * so tiny weights keep full resolution, and an all-zero row gets scale 1. */
void mq_choose_qparams(float mn, float mx, int qmin, int qmax, int symmetric, float *scale,
                       int32_t *zero_point) {
    float min_neg = mn < 0.0f ? mn : 0.0f;
    float max_pos = mx > 0.0f ? mx : 0.0f;
    float s;
    int32_t zp;
    if (symmetric) {
        float amax = -min_neg > max_pos ? -min_neg : max_pos;
        s = amax / ((float)(qmax - qmin) / 2.0f);
        zp = qmin < 0 ? 0 : (qmin + qmax + 1) / 2;
    } else {
        s = (max_pos - min_neg) / (float)(qmax - qmin);
        if (isinf(s)) /* range overflowed fp32: split the subtraction */
            s = max_pos / (float)(qmax - qmin) - min_neg / (float)(qmax - qmin);
        zp = 0; /* set below, once the scale is final */
    }
    if (max_pos == 0.0f && min_neg == 0.0f) s = 1.0f;
    else if (!(s >= FLT_MIN)) s = FLT_MIN;
    if (!symmetric) {
        float z = (float)qmin - rintf(min_neg / s);
        if (z < (float)qmin) z = (float)qmin;
        if (z > (float)qmax) z = (float)qmax;
        zp = (int32_t)z;
    }
    *scale = s;
    *zero_point = zp;
}

/* ---- min/max ---------------------------------------------------------------- */

/* Rows shorter than this many elements are grouped so a thread gets real work. */
static int64_t rows_per_chunk(int64_t cols) {
    const int64_t min_elems = 1 << 15;
    return mq_items_per_chunk(cols, min_elems);
}

/* A row holding NaN/Inf is marked by a NaN in a per-row float output, so
 * threads need no shared flag; the driver then returns the first such row. */
static int64_t first_nan(const float *v, int64_t rows) {
    for (int64_t r = 0; r < rows; r++)
        if (isnan(v[r])) return r;
    return -1;
}

typedef struct {
    const uint8_t *src;
    size_t row_bytes;
    int64_t cols;
    mq_minmax_fn fn;
    float *mn, *mx;
} minmax_ctx;

static void minmax_range(void *vctx, int64_t begin, int64_t end) {
    minmax_ctx *c = vctx;
    for (int64_t r = begin; r < end; r++)
        if (c->fn(c->src + (size_t)r * c->row_bytes, c->cols, &c->mn[r], &c->mx[r]))
            c->mn[r] = c->mx[r] = NAN;
}

int64_t mq_rows_minmax(const void *src, mq_src_t kind, int64_t rows, int64_t cols, float *mn, float *mx,
                       int nthreads) {
    minmax_ctx c = {src, (size_t)cols * mq_src_size(kind), cols, mq_active()->minmax[kind], mn, mx};
    mq_parallel_for(rows, rows_per_chunk(cols), nthreads, minmax_range, &c);
    return first_nan(mn, rows);
}

/* ---- quantize ----------------------------------------------------------------- */

typedef struct {
    const uint8_t *src;
    size_t row_bytes;
    int64_t cols;
    const mq_kernels *k;
    mq_src_t kind;
    const float *scale_in;
    const int32_t *zp_in;
    int per_row, qmin, qmax, symmetric, use_fma;
    float *scale_out;
    int32_t *zp_out;
    uint8_t *dst;
    double *sum_x2, *sum_err2; /* optional per-row error powers */
} quantize_ctx;

static void quantize_range(void *vctx, int64_t begin, int64_t end) {
    quantize_ctx *c = vctx;
    for (int64_t r = begin; r < end; r++) {
        int64_t p = c->per_row ? r : 0;
        c->k->quantize[c->kind](c->src + (size_t)r * c->row_bytes, c->cols, 1.0f / c->scale_in[p],
                                (float)c->zp_in[p], (float)c->qmin, (float)c->qmax, c->use_fma,
                                c->dst + (size_t)r * (size_t)c->cols);
    }
}

void mq_rows_quantize(const void *src, mq_src_t kind, int64_t rows, int64_t cols, const float *scale,
                      const int32_t *zero_point, int per_row, int qmin, int qmax, int use_fma,
                      uint8_t *dst, int nthreads) {
    quantize_ctx c = {src, (size_t)cols * mq_src_size(kind), cols, mq_active(), kind, scale, zero_point,
                      per_row, qmin, qmax, 0, use_fma, NULL, NULL, dst, NULL, NULL};
    mq_parallel_for(rows, rows_per_chunk(cols), nthreads, quantize_range, &c);
}

int mq_quantize_row_fused(const mq_kernels *k, mq_src_t kind, const uint8_t *row, int64_t cols, int qmin, int qmax,
                          int symmetric, float *scale, int32_t *zero_point, uint8_t *q, double *sum_x2,
                          double *sum_err2) {
    float mn, mx;
    if (k->minmax[kind](row, cols, &mn, &mx)) {
        *scale = NAN; /* reported by the driver; q left unwritten */
        *zero_point = 0;
        return 1;
    }
    mq_choose_qparams(mn, mx, qmin, qmax, symmetric, scale, zero_point);
    k->quantize[kind](row, cols, 1.0f / *scale, (float)*zero_point, (float)qmin, (float)qmax, 0, q);
    if (sum_x2) /* the row is still in cache: the error costs no extra memory traffic */
        k->sqerr[kind](row, q, cols, *scale, (float)*zero_point, qmin < 0, sum_x2, sum_err2);
    return 0;
}

static void quantize_fused_range(void *vctx, int64_t begin, int64_t end) {
    quantize_ctx *c = vctx;
    for (int64_t r = begin; r < end; r++)
        mq_quantize_row_fused(c->k, c->kind, c->src + (size_t)r * c->row_bytes, c->cols, c->qmin, c->qmax,
                              c->symmetric, &c->scale_out[r], &c->zp_out[r], c->dst + (size_t)r * (size_t)c->cols,
                              c->sum_x2 ? &c->sum_x2[r] : NULL, c->sum_x2 ? &c->sum_err2[r] : NULL);
}

int64_t mq_rows_quantize_fused(const void *src, mq_src_t kind, int64_t rows, int64_t cols, int qmin, int qmax,
                               int symmetric, float *scale, int32_t *zero_point, uint8_t *dst, double *sum_x2,
                               double *sum_err2, int nthreads) {
    quantize_ctx c = {src,  (size_t)cols * mq_src_size(kind), cols, mq_active(), kind, NULL, NULL, 1, qmin, qmax,
                      symmetric, 0, scale, zero_point, dst, sum_x2, sum_err2};
    mq_parallel_for(rows, rows_per_chunk(cols), nthreads, quantize_fused_range, &c);
    return first_nan(scale, rows);
}

/* ---- dequantize --------------------------------------------------------------- */

typedef struct {
    const uint8_t *q;
    int is_signed;
    int64_t cols;
    const float *scale;
    const int32_t *zp;
    int per_row;
    float *dst;
    mq_dequantize_fn fn;
} dequantize_ctx;

static void dequantize_range(void *vctx, int64_t begin, int64_t end) {
    dequantize_ctx *c = vctx;
    for (int64_t r = begin; r < end; r++) {
        int64_t p = c->per_row ? r : 0;
        c->fn(c->q + (size_t)r * (size_t)c->cols, c->cols, c->scale[p], (float)c->zp[p], c->is_signed,
              c->dst + (size_t)r * (size_t)c->cols);
    }
}

void mq_rows_dequantize(const uint8_t *q, int is_signed, int64_t rows, int64_t cols, const float *scale,
                        const int32_t *zero_point, int per_row, float *dst, int nthreads) {
    dequantize_ctx c = {q, is_signed, cols, scale, zero_point, per_row, dst, mq_active()->dequantize};
    mq_parallel_for(rows, rows_per_chunk(cols), nthreads, dequantize_range, &c);
}

/* ---- squared error -------------------------------------------------------------- */

typedef struct {
    const uint8_t *src, *q;
    size_t row_bytes;
    int64_t cols;
    mq_sqerr_fn fn;
    int is_signed, per_row;
    const float *scale;
    const int32_t *zp;
    double *sum_x2, *sum_err2;
} sqerr_ctx;

static void sqerr_range(void *vctx, int64_t begin, int64_t end) {
    sqerr_ctx *c = vctx;
    for (int64_t r = begin; r < end; r++) {
        int64_t p = c->per_row ? r : 0;
        c->fn(c->src + (size_t)r * c->row_bytes, c->q + (size_t)r * (size_t)c->cols, c->cols, c->scale[p],
              (float)c->zp[p], c->is_signed, &c->sum_x2[r], &c->sum_err2[r]);
    }
}

void mq_rows_sqerr(const void *src, mq_src_t kind, const uint8_t *q, int is_signed, int64_t rows, int64_t cols,
                   const float *scale, const int32_t *zero_point, int per_row, double *sum_x2, double *sum_err2,
                   int nthreads) {
    sqerr_ctx c = {src, q, (size_t)cols * mq_src_size(kind), cols, mq_active()->sqerr[kind], is_signed, per_row,
                   scale, zero_point, sum_x2, sum_err2};
    mq_parallel_for(rows, rows_per_chunk(cols), nthreads, sqerr_range, &c);
}
