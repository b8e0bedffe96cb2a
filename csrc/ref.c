/* ref.c - scalar reference of every kernel: the ground truth.
 *
 * Plain C, one element at a time, written for obviousness.  SIMD twins must
 * give exactly these results.  Rounding is rint() under the default
 * round-to-nearest-even mode, like torch's nearbyint (see mq_quantize_fn). */
#include <math.h>

#include "mq.h"

static int minmax_generic(const void *src, mq_src_t kind, int64_t n, float *out_min, float *out_max) {
    float mn = INFINITY, mx = -INFINITY;
    int bad = 0;
    for (int64_t i = 0; i < n; i++) {
        float v = mq_load_src(src, kind, i);
        if (!isfinite(v)) { bad = 1; continue; }
        if (v < mn) mn = v;
        if (v > mx) mx = v;
    }
    if (n == 0 || mn > mx) mn = mx = 0.0f; /* empty or all non-finite */
    *out_min = mn;
    *out_max = mx;
    return bad;
}

int mq_ref_minmax_f32(const void *s, int64_t n, float *mn, float *mx) { return minmax_generic(s, MQ_SRC_F32, n, mn, mx); }
int mq_ref_minmax_f16(const void *s, int64_t n, float *mn, float *mx) { return minmax_generic(s, MQ_SRC_F16, n, mn, mx); }
int mq_ref_minmax_bf16(const void *s, int64_t n, float *mn, float *mx) { return minmax_generic(s, MQ_SRC_BF16, n, mn, mx); }

static void quantize_generic(const void *src, mq_src_t kind, int64_t n, float inv_scale, float zp,
                             float qmin, float qmax, int use_fma, uint8_t *dst) {
    for (int64_t i = 0; i < n; i++) {
        float x = mq_load_src(src, kind, i);
        float product = x * inv_scale; /* rounded to fp32 here (-ffp-contract=off) */
        float v = rintf(use_fma ? fmaf(x, inv_scale, zp) : zp + product);
        /* clamp in float so huge values never overflow the integer cast */
        if (!(v >= qmin)) v = qmin; /* also maps NaN to qmin, like the SIMD max */
        if (v > qmax) v = qmax;
        dst[i] = (uint8_t)(int32_t)v; /* low byte: int8 or uint8 pattern */
    }
}

void mq_ref_quantize_f32(const void *s, int64_t n, float is, float zp, float lo, float hi, int use_fma, uint8_t *d) {
    quantize_generic(s, MQ_SRC_F32, n, is, zp, lo, hi, use_fma, d);
}
void mq_ref_quantize_f16(const void *s, int64_t n, float is, float zp, float lo, float hi, int use_fma, uint8_t *d) {
    quantize_generic(s, MQ_SRC_F16, n, is, zp, lo, hi, use_fma, d);
}
void mq_ref_quantize_bf16(const void *s, int64_t n, float is, float zp, float lo, float hi, int use_fma, uint8_t *d) {
    quantize_generic(s, MQ_SRC_BF16, n, is, zp, lo, hi, use_fma, d);
}

void mq_ref_dequantize(const uint8_t *q, int64_t n, float scale, float zp, int is_signed, float *dst) {
    for (int64_t i = 0; i < n; i++) {
        float v = is_signed ? (float)(int8_t)q[i] : (float)q[i];
        dst[i] = (v - zp) * scale;
    }
}

static void sqerr_generic(const void *src, mq_src_t kind, const uint8_t *q, int64_t n, float scale, float zp,
                          int is_signed, double *x2, double *e2) {
    double sx = 0.0, se = 0.0;
    for (int64_t i = 0; i < n; i++) {
        float x = mq_load_src(src, kind, i);
        float v = is_signed ? (float)(int8_t)q[i] : (float)q[i];
        float e = x - (v - zp) * scale;
        sx += (double)x * x;
        se += (double)e * e;
    }
    *x2 = sx;
    *e2 = se;
}

void mq_ref_sqerr_f32(const void *s, const uint8_t *q, int64_t n, float sc, float zp, int sg, double *x2, double *e2) {
    sqerr_generic(s, MQ_SRC_F32, q, n, sc, zp, sg, x2, e2);
}
void mq_ref_sqerr_f16(const void *s, const uint8_t *q, int64_t n, float sc, float zp, int sg, double *x2, double *e2) {
    sqerr_generic(s, MQ_SRC_F16, q, n, sc, zp, sg, x2, e2);
}
void mq_ref_sqerr_bf16(const void *s, const uint8_t *q, int64_t n, float sc, float zp, int sg, double *x2, double *e2) {
    sqerr_generic(s, MQ_SRC_BF16, q, n, sc, zp, sg, x2, e2);
}

/* ==== int8 matmul on packed weights (see mq.h, linear.c) ===================== */

/* Byte j of output channel c in K-group g of panel p. */
static inline int packed_w(const int8_t *w, int64_t kp, int64_t p, int64_t g, int c, int j) {
    return w[((p * (kp / MQ_KGROUP) + g) * MQ_PANEL + c) * MQ_KGROUP + j];
}

void mq_ref_qgemm(const mq_qgemm_args *a, int64_t p0, int64_t p1) {
    const int64_t groups = a->kp / MQ_KGROUP;
    for (int64_t p = p0; p < p1; p++)
        for (int64_t m = 0; m < a->m; m++)
            for (int c = 0; c < MQ_PANEL; c++) {
                int64_t n = p * MQ_PANEL + c;
                if (n >= a->n) break;
                const uint8_t *x = a->x + m * a->kp;
                int32_t acc = 0;
                for (int64_t g = 0; g < groups; g++)
                    for (int j = 0; j < MQ_KGROUP; j++) {
                        int xv = a->x_u8 ? (int)x[g * 4 + j] - 128 : (int)(int8_t)x[g * 4 + j];
                        acc += xv * packed_w(a->w, a->kp, p, g, c, j);
                    }
                if (a->w_zp) acc -= a->w_zp[n] * a->x_sum[m];
                if (a->acc) {
                    a->acc[m * a->ldy + n] = acc;
                    continue;
                }
                float s = a->x_scale[m] * a->w_scale[n];
                float y = (float)acc * s;
                if (a->bias) y = y + a->bias[n];
                a->y[m * a->ldy + n] = y;
            }
}

void mq_ref_wgemm(const mq_wgemm_args *a, int64_t p0, int64_t p1) {
    const int64_t groups = a->kp / MQ_KGROUP;
    for (int64_t p = p0; p < p1; p++)
        for (int64_t m = 0; m < a->m; m++)
            for (int c = 0; c < MQ_PANEL; c++) {
                int64_t n = p * MQ_PANEL + c;
                if (n >= a->n) break;
                const float *x = a->x + m * a->kp;
                int zp = a->w_zp ? a->w_zp[n] : 0;
                float acc = 0.0f;
                for (int64_t g = 0; g < groups; g++)
                    for (int j = 0; j < MQ_KGROUP; j++)
                        acc += x[g * 4 + j] * (float)(packed_w(a->w, a->kp, p, g, c, j) - zp);
                float y = acc * a->w_scale[n];
                if (a->bias) y = y + a->bias[n];
                a->y[m * a->n + n] = y;
            }
}
