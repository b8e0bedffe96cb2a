/* static_int8.h - static (calibrated) int8 activations: fixed-scale quantize,
 * int8 conv / linear with a requantizing epilogue, residual add, global
 * average pool (static_int8.c; numerics in docs/static.md).
 *
 * Activations between layers are int8 codes in -127..127 (never -128) with a
 * zero-point (0 for signed values, -127 for ReLU outputs: all 255 levels),
 * stored channels-last (NHWC; [rows][features] for linear layers).  Every
 * result is requantized the same way, in fp32 without FMA, so the bits do not
 * depend on the ISA:
 *     v = min(max(y, act_lo), act_hi)          (fused ReLU / ReLU6, or +-inf)
 *     q = (int8) clamp(rint(v * inv_out_scale) + out_zp, -127, 127)
 * With no int8 output (y_f32 given instead), v itself is written. */
#ifndef MQ_STATIC_INT8_H
#define MQ_STATIC_INT8_H

#include <stdint.h>

/* x float32 [batch][channels][plane] (NCHW; a [rows][features] matrix is
 * plane = 1) -> dst int8 [batch][plane][channels], q = clamp(rint(x * inv_scale) + zp). */
void mq_static_quantize(const float *x, int64_t batch, int64_t channels, int64_t plane, float inv_scale, int zp,
                        int8_t *dst, int nthreads);
/* q int8 [batch][plane][channels] -> dst float32 [batch][channels][plane], (q - zp) * scale. */
void mq_static_dequantize(const int8_t *q, int64_t batch, int64_t plane, int64_t channels, float scale, int zp,
                          float *dst, int nthreads);

/* x float32 [batch][plane][channels] (the kernels' NHWC output) -> dst [batch][channels][plane]. */
void mq_static_nchw_f32(const float *x, int64_t batch, int64_t plane, int64_t channels, float *dst, int nthreads);

/* y = act(conv(x - x_zp) + bias) on int8 NHWC x with the packed weight of pack_int8 (per
 * group, as mq_conv2d_dynamic); x_zp is removed exactly through the weight's column sums
 * (zero padding is written as x_zp).  x_w_scale[n] = x_scale * w_scale[n] (fp32).  Exactly one of y_q (int8
 * [batch][out_h][out_w][n]) and y_f32 (same shape) is non-NULL.  0, or -1 when
 * out of memory. */
int mq_conv2d_static(const int8_t *x, int64_t batch, int64_t channels, int64_t height, int64_t width, int64_t kh,
                     int64_t kw, int64_t sh, int64_t sw, int64_t ph, int64_t pw, int64_t dh, int64_t dw, int64_t groups,
                     const int8_t *packed, const int32_t *w_sum, const float *x_w_scale, const int32_t *w_zp,
                     int w_has_m128, const float *bias, int64_t n, float act_lo, float act_hi, float inv_out_scale,
                     int x_zp, int out_zp, int8_t *y_q, float *y_f32, int nthreads);

/* The largest depthwise kernel area (kh * kw) the kernels take: their int32 sums of
 * (x - x_zp) * (w - w_zp), each term up to 255 * 255, cannot overflow below it. */
#define MQ_MAX_DEPTHWISE_TAPS 32768
_Static_assert(255LL * 255 * MQ_MAX_DEPTHWISE_TAPS <= INT32_MAX, "depthwise int32 sums must not overflow");

/* Depthwise (groups == channels == n) on int8 NHWC x, weight int8 [kh][kw][channels]
 * (per-channel zero-points w_zp or NULL); same epilogue and outputs as above.  0, or -1 when
 * out of memory. */
int mq_depthwise_static(const int8_t *x, int64_t batch, int64_t channels, int64_t height, int64_t width, int64_t kh,
                         int64_t kw, int64_t sh, int64_t sw, int64_t ph, int64_t pw, int64_t dh, int64_t dw,
                         const int8_t *w, const int32_t *w_zp, const float *x_w_scale, const float *bias, float act_lo,
                         float act_hi, float inv_out_scale, int x_zp, int out_zp, int8_t *y_q, float *y_f32,
                         int nthreads);

/* y = act((a - a_zp) * a_scale + (b - b_zp) * b_scale) elementwise over n int8 values. */
void mq_add_static(const int8_t *a, float a_scale, int a_zp, const int8_t *b, float b_scale, int b_zp, int64_t n,
                   float act_lo, float act_hi, float inv_out_scale, int out_zp, int8_t *y_q, float *y_f32,
                   int nthreads);

/* Global average pool of int8 NHWC x: y[b][c] = act((float)sum_p x[b][p][c] * mul),
 * mul = x_scale / pixels (fp32, given by the caller); y [batch][channels].  0, or -1 when
 * out of memory. */
int mq_avgpool_static(const int8_t *x, int x_zp, int64_t batch, int64_t pixels, int64_t channels, float mul,
                      float act_lo, float act_hi, float inv_out_scale, int out_zp, int8_t *y_q, float *y_f32);

/* ---- one image's node as independent pieces -------------------------------------------
 * For a caller that schedules the pieces itself (static_program.c splits one image's nodes
 * between threads): run(ctx, begin, end) over items [begin, end), each item once, on any
 * thread, in any order, with the bits of the call above on one image; then
 * mq_static_work_free.  *failed is nonzero once a piece ran out of memory. */
typedef struct {
    void (*run)(void *ctx, int64_t begin, int64_t end);
    void *ctx;
    int64_t items;
    int *failed;
} mq_static_work;

/* mq_conv2d_static on one image (groups 1, no weight zero-points) as up to `items` blocks of
 * output rows: 1, 0 where the direct kernel does not apply (run the whole call instead), or
 * -1 out of memory. */
int mq_conv2d_static_work(const int8_t *x, int64_t channels, int64_t height, int64_t width, int64_t kh, int64_t kw,
                          int64_t sh, int64_t sw, int64_t ph, int64_t pw, int64_t dh, int64_t dw,
                          const int8_t *packed, const int32_t *w_sum, const float *x_w_scale, const float *bias,
                          int64_t n, float act_lo, float act_hi, float inv_out_scale, int x_zp, int out_zp,
                          int8_t *y_q, float *y_f32, int64_t items, mq_static_work *work);
/* mq_depthwise_static on one image (no weight zero-points) as up to `items` blocks of output
 * rows: 1, or -1 out of memory. */
int mq_depthwise_static_work(const int8_t *x, int64_t channels, int64_t height, int64_t width, int64_t kh,
                             int64_t kw, int64_t sh, int64_t sw, int64_t ph, int64_t pw, int64_t dh, int64_t dw,
                             const int8_t *w, const float *x_w_scale, const float *bias, float act_lo, float act_hi,
                             float inv_out_scale, int x_zp, int out_zp, int8_t *y_q, float *y_f32, int64_t items,
                             mq_static_work *work);
/* mq_add_static as up to `items` ranges of whole cache lines: 1, or -1 out of memory. */
int mq_add_static_work(const int8_t *a, float a_scale, int a_zp, const int8_t *b, float b_scale, int b_zp, int64_t n,
                       float act_lo, float act_hi, float inv_out_scale, int out_zp, int8_t *y_q, float *y_f32,
                       int64_t items, mq_static_work *work);
void mq_static_work_free(mq_static_work *work);

#endif
