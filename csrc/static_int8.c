/* static_int8.c - static int8 activations (see static_int8.h): fixed-scale
 * quantize, conv / linear on int8 NHWC rows through the dispatched int8 GEMM
 * (mq_linear_dynamic on already-int8 rows), a depthwise kernel, residual add
 * and global average pool, each with the same requantizing epilogue.
 *
 * Plain C in the baseline compile unit on purpose: the only ISA-dependent
 * part is the GEMM, whose int32 accumulators are exact on every ISA, so
 * everything here gives the same bits at every dispatch level. */
#include <stdlib.h>
#include <string.h>

#include "mq.h"
#include "size_check.h"
#include "static_int8.h"

/* Round half to even for |s| <= 2^22 without a libm call (vectorizes):
 * adding 1.5 * 2^23 leaves no fraction bits, and the FPU rounds to even. */
static inline float round_even_small(float s) { return (s + 12582912.0f) - 12582912.0f; }

/* Clamp to the fused activation (a NaN becomes act_lo), the value written as float. */
static inline float activate(float y, float act_lo, float act_hi) {
    float v = y > act_lo ? y : act_lo;
    return v < act_hi ? v : act_hi;
}

static inline int8_t requantize(float v, float inv_out_scale) {
    float s = v * inv_out_scale;
    s = s > -127.0f ? s : -127.0f; /* a NaN product (inf * 0) becomes -127, never UB */
    s = s < 127.0f ? s : 127.0f;
    return (int8_t)(int)round_even_small(s);
}

/* ---- fixed-scale quantize / dequantize (NCHW float <-> NHWC int8) ---------------- */

typedef struct {
    const float *x;
    float *xf;
    int8_t *q;
    const int8_t *qc;
    int64_t channels, plane;
    float scale;
} layout_ctx;

static void quantize_range(void *vctx, int64_t begin, int64_t end) {
    const layout_ctx *c = vctx;
    for (int64_t b = begin; b < end; b++) {
        const float *src = c->x + b * c->channels * c->plane;
        int8_t *dst = c->q + b * c->channels * c->plane;
        if (c->plane == 1) {
            for (int64_t ch = 0; ch < c->channels; ch++) dst[ch] = requantize(src[ch], c->scale);
            continue;
        }
        for (int64_t p0 = 0; p0 < c->plane; p0 += 64) { /* 64-pixel blocks: both sides stay in cache lines */
            const int64_t p1 = p0 + 64 < c->plane ? p0 + 64 : c->plane;
            for (int64_t ch = 0; ch < c->channels; ch++)
                for (int64_t p = p0; p < p1; p++)
                    dst[p * c->channels + ch] = requantize(src[ch * c->plane + p], c->scale);
        }
    }
}

void mq_static_quantize(const float *x, int64_t batch, int64_t channels, int64_t plane, float inv_scale, int8_t *dst,
                        int nthreads) {
    layout_ctx c = {x, NULL, dst, NULL, channels, plane, inv_scale};
    mq_parallel_for(batch, 1 + ((int64_t)1 << 16) / (channels * plane + 1), nthreads, quantize_range, &c);
}

static void dequantize_range(void *vctx, int64_t begin, int64_t end) {
    const layout_ctx *c = vctx;
    for (int64_t b = begin; b < end; b++) {
        const int8_t *src = c->qc + b * c->channels * c->plane;
        float *dst = c->xf + b * c->channels * c->plane;
        for (int64_t p0 = 0; p0 < c->plane; p0 += 64) {
            const int64_t p1 = p0 + 64 < c->plane ? p0 + 64 : c->plane;
            for (int64_t ch = 0; ch < c->channels; ch++)
                for (int64_t p = p0; p < p1; p++) dst[ch * c->plane + p] = (float)src[p * c->channels + ch] * c->scale;
        }
    }
}

void mq_static_dequantize(const int8_t *q, int64_t batch, int64_t plane, int64_t channels, float scale, float *dst,
                          int nthreads) {
    layout_ctx c = {NULL, dst, NULL, q, channels, plane, scale};
    mq_parallel_for(batch, 1 + ((int64_t)1 << 16) / (channels * plane + 1), nthreads, dequantize_range, &c);
}

/* ---- the epilogue over GEMM results ------------------------------------------------ */

typedef struct {
    const float *y;   /* [m][ldy_in] fp32 GEMM results of one group */
    int64_t ldy_in, n_g, col0, ldy_out;
    float act_lo, act_hi, inv_out_scale;
    int8_t *y_q;
    float *y_f32;
} epilogue_ctx;

static void epilogue_range(void *vctx, int64_t begin, int64_t end) {
    const epilogue_ctx *c = vctx;
    for (int64_t r = begin; r < end; r++) {
        const float *src = c->y + r * c->ldy_in;
        if (c->y_q) {
            int8_t *dst = c->y_q + r * c->ldy_out + c->col0;
            for (int64_t j = 0; j < c->n_g; j++)
                dst[j] = requantize(activate(src[j], c->act_lo, c->act_hi), c->inv_out_scale);
        } else {
            float *dst = c->y_f32 + r * c->ldy_out + c->col0;
            for (int64_t j = 0; j < c->n_g; j++) dst[j] = activate(src[j], c->act_lo, c->act_hi);
        }
    }
}

/* ---- conv / linear through the int8 GEMM ------------------------------------------- */

typedef struct {
    const int8_t *x;
    int64_t channels, height, width, kh, kw, sh, sw, ph, pw, dh, dw, out_h, out_w, cg, k, group;
    int8_t *rows; /* [m][k] */
} static_im2col_ctx;

/* Rows in the packed weight's K order (kh, kw, channel); 0 is int8's encoding of 0. */
static void static_im2col_range(void *vctx, int64_t begin, int64_t end) {
    const static_im2col_ctx *c = vctx;
    const int64_t pixels = c->out_h * c->out_w;
    for (int64_t r = begin; r < end; r++) {
        const int64_t b = r / pixels, oh = (r % pixels) / c->out_w, ow = r % c->out_w;
        int8_t *dst = c->rows + r * c->k;
        for (int64_t i = 0; i < c->kh; i++) {
            const int64_t ih = oh * c->sh - c->ph + i * c->dh;
            for (int64_t j = 0; j < c->kw; j++, dst += c->cg) {
                const int64_t iw = ow * c->sw - c->pw + j * c->dw;
                if (ih >= 0 && ih < c->height && iw >= 0 && iw < c->width)
                    memcpy(dst, c->x + ((b * c->height + ih) * c->width + iw) * c->channels + c->group * c->cg,
                           (size_t)c->cg);
                else
                    memset(dst, 0, (size_t)c->cg);
            }
        }
    }
}

int mq_conv2d_static(const int8_t *x, int64_t batch, int64_t channels, int64_t height, int64_t width, int64_t kh,
                     int64_t kw, int64_t sh, int64_t sw, int64_t ph, int64_t pw, int64_t dh, int64_t dw, int64_t groups,
                     const int8_t *packed, const int32_t *w_sum, const float *x_w_scale, const int32_t *w_zp,
                     int w_has_m128, const float *bias, int64_t n, float act_lo, float act_hi, float inv_out_scale,
                     int8_t *y_q, float *y_f32, int nthreads) {
    const int64_t out_h = (height + 2 * ph - dh * (kh - 1) - 1) / sh + 1;
    const int64_t out_w = (width + 2 * pw - dw * (kw - 1) - 1) / sw + 1;
    const int64_t cg = channels / groups, k = cg * kh * kw, kp = mq_round_up(k, MQ_KGROUP);
    const int64_t n_g = n / groups, np_g = mq_round_up(n_g, MQ_PANEL);
    const int64_t m = mq_size_mul(mq_size_mul(batch, out_h), out_w);
    /* 1x1, stride 1, no padding, one group (a linear layer too): the NHWC input is the rows */
    const int direct = kh == 1 && kw == 1 && sh == 1 && sw == 1 && ph == 0 && pw == 0 && groups == 1;
    if (m == 0 || n <= 0) return 0;
    int8_t *rows = direct ? (int8_t *)x : malloc(mq_alloc_bytes(m, k, 1));
    /* the GEMM writes fp32; an fp32 output of one group is written in place */
    float *y = (y_f32 && groups == 1) ? y_f32 : malloc(mq_alloc_bytes(m, n_g * (int64_t)sizeof(float), 1));
    int status = -1;
    if (!rows || !y) goto done;
    for (int64_t g = 0; g < groups; g++) {
        if (!direct) {
            static_im2col_ctx ic = {x, channels, height, width, kh, kw, sh, sw, ph, pw, dh, dw, out_h, out_w, cg, k,
                                    g, rows};
            mq_parallel_for(m, (1 << 16) / (k + 1) + 1, nthreads, static_im2col_range, &ic);
        }
        /* x_scale = 1 in the GEMM's epilogue: 1.0f * x_w_scale[n] is x_w_scale[n] exactly */
        if (mq_linear_dynamic(rows, MQ_SRC_F32, 1, m, k, k, packed + g * np_g * kp, w_sum + g * np_g,
                              x_w_scale + g * n_g, w_zp ? w_zp + g * n_g : NULL, w_has_m128,
                              bias ? bias + g * n_g : NULL, n_g, y, NULL, nthreads) < 0)
            goto done;
        epilogue_ctx ec = {y, n_g, n_g, g * n_g, n, act_lo, act_hi, inv_out_scale, y_q, y_f32};
        mq_parallel_for(m, 1 + ((int64_t)1 << 14) / (n_g + 1), nthreads, epilogue_range, &ec);
    }
    status = 0;
done:
    if (!direct) free(rows);
    if (y != y_f32) free(y);
    return status;
}

/* ---- depthwise ------------------------------------------------------------------------ */

typedef struct {
    const int8_t *x, *w;
    const int32_t *w_zp;
    const float *x_w_scale, *bias;
    int64_t channels, height, width, kh, kw, sh, sw, ph, pw, dh, dw, out_h, out_w;
    float act_lo, act_hi, inv_out_scale;
    int8_t *y_q;
    float *y_f32;
    int failed; /* set (atomically) by a range that could not allocate its sums */
} depthwise_ctx;

/* Work items are output rows (image, oh); int32 sums per channel, the
 * channels innermost (NHWC), which the compiler vectorizes. */
static void depthwise_range(void *vctx, int64_t begin, int64_t end) {
    const depthwise_ctx *c = vctx;
    const int64_t ch = c->channels;
    int32_t *acc = malloc((size_t)ch * sizeof(int32_t));
    int32_t *zp_sum = malloc((size_t)ch * sizeof(int32_t));
    if (!acc || !zp_sum) {
        __atomic_store_n(&((depthwise_ctx *)vctx)->failed, 1, __ATOMIC_RELAXED);
        free(acc);
        free(zp_sum);
        return;
    }
    for (int64_t r = begin; r < end; r++) {
        const int64_t b = r / c->out_h, oh = r % c->out_h;
        for (int64_t ow = 0; ow < c->out_w; ow++) {
            memset(acc, 0, (size_t)ch * sizeof(int32_t));
            memset(zp_sum, 0, (size_t)ch * sizeof(int32_t));
            for (int64_t i = 0; i < c->kh; i++) {
                const int64_t ih = oh * c->sh - c->ph + i * c->dh;
                if (ih < 0 || ih >= c->height) continue;
                for (int64_t j = 0; j < c->kw; j++) {
                    const int64_t iw = ow * c->sw - c->pw + j * c->dw;
                    if (iw < 0 || iw >= c->width) continue;
                    const int8_t *xs = c->x + ((b * c->height + ih) * c->width + iw) * ch;
                    const int8_t *ws = c->w + (i * c->kw + j) * ch;
                    for (int64_t q = 0; q < ch; q++) acc[q] += (int32_t)xs[q] * (int32_t)ws[q];
                    if (c->w_zp)
                        for (int64_t q = 0; q < ch; q++) zp_sum[q] += xs[q];
                }
            }
            const int64_t o = ((b * c->out_h + oh) * c->out_w + ow) * ch;
            for (int64_t q = 0; q < ch; q++) {
                const int32_t a = c->w_zp ? acc[q] - c->w_zp[q] * zp_sum[q] : acc[q];
                float y = (float)a * c->x_w_scale[q];
                if (c->bias) y += c->bias[q];
                const float v = activate(y, c->act_lo, c->act_hi);
                if (c->y_q)
                    c->y_q[o + q] = requantize(v, c->inv_out_scale);
                else
                    c->y_f32[o + q] = v;
            }
        }
    }
    free(acc);
    free(zp_sum);
}

int mq_depthwise_static(const int8_t *x, int64_t batch, int64_t channels, int64_t height, int64_t width, int64_t kh,
                         int64_t kw, int64_t sh, int64_t sw, int64_t ph, int64_t pw, int64_t dh, int64_t dw,
                         const int8_t *w, const int32_t *w_zp, const float *x_w_scale, const float *bias, float act_lo,
                         float act_hi, float inv_out_scale, int8_t *y_q, float *y_f32, int nthreads) {
    const int64_t out_h = (height + 2 * ph - dh * (kh - 1) - 1) / sh + 1;
    const int64_t out_w = (width + 2 * pw - dw * (kw - 1) - 1) / sw + 1;
    depthwise_ctx c = {x, w, w_zp, x_w_scale, bias, channels, height, width, kh, kw, sh, sw, ph, pw, dh, dw,
                       out_h, out_w, act_lo, act_hi, inv_out_scale, y_q, y_f32, 0};
    const int64_t per_row = out_w * channels * kh * kw;
    mq_parallel_for(batch * out_h, 1 + ((int64_t)1 << 16) / (per_row + 1), nthreads, depthwise_range, &c);
    return c.failed ? -1 : 0;
}

/* ---- residual add ------------------------------------------------------------------- */

typedef struct {
    const int8_t *a, *b;
    float a_scale, b_scale, act_lo, act_hi, inv_out_scale;
    int8_t *y_q;
    float *y_f32;
} add_ctx;

static void add_range(void *vctx, int64_t begin, int64_t end) {
    const add_ctx *c = vctx;
    for (int64_t i = begin; i < end; i++) {
        /* two products then one sum, never fused (-ffp-contract=off): the torch reference's order */
        const float v = activate((float)c->a[i] * c->a_scale + (float)c->b[i] * c->b_scale, c->act_lo, c->act_hi);
        if (c->y_q)
            c->y_q[i] = requantize(v, c->inv_out_scale);
        else
            c->y_f32[i] = v;
    }
}

void mq_add_static(const int8_t *a, float a_scale, const int8_t *b, float b_scale, int64_t n, float act_lo,
                   float act_hi, float inv_out_scale, int8_t *y_q, float *y_f32, int nthreads) {
    add_ctx c = {a, b, a_scale, b_scale, act_lo, act_hi, inv_out_scale, y_q, y_f32};
    mq_parallel_for(n, (int64_t)1 << 16, nthreads, add_range, &c);
}

/* ---- global average pool -------------------------------------------------------------- */

int mq_avgpool_static(const int8_t *x, int64_t batch, int64_t pixels, int64_t channels, float mul, float act_lo,
                       float act_hi, float inv_out_scale, int8_t *y_q, float *y_f32) {
    int32_t *sum = malloc((size_t)(channels > 0 ? channels : 1) * sizeof(int32_t));
    if (!sum) return -1;
    for (int64_t b = 0; b < batch; b++) {
        memset(sum, 0, (size_t)channels * sizeof(int32_t));
        for (int64_t p = 0; p < pixels; p++) {
            const int8_t *src = x + (b * pixels + p) * channels;
            for (int64_t q = 0; q < channels; q++) sum[q] += src[q];
        }
        for (int64_t q = 0; q < channels; q++) {
            const float v = activate((float)sum[q] * mul, act_lo, act_hi);
            if (y_q)
                y_q[b * channels + q] = requantize(v, inv_out_scale);
            else
                y_f32[b * channels + q] = v;
        }
    }
    free(sum);
    return 0;
}
