/* conv_dynamic_direct.h - the dynamic int8 conv (mq_conv2d_dynamic, linear.c) on the static
 * path's direct conv kernel (the table's static_conv): no im2col, one parallel region. */
#ifndef MQ_CONV_DYNAMIC_DIRECT_H
#define MQ_CONV_DYNAMIC_DIRECT_H

#include <stdint.h>

#include "mq.h"

/* 1 (default) lets mq_conv2d_dynamic take the direct route where it applies; 0 keeps every
 * call on the im2col route (tests compare the two).  Written with the GIL held. */
extern int mq_conv_direct_enabled;

/* Whether the direct route takes a conv of this shape at the active level (and the switch
 * above): one group, no weight zero-points, padding at most MQ_DIRECT_EXTRA_PAD past what a tap
 * reaches, a reduction of at most 32768 (the kernel's exact int32 bound).  Any channel count:
 * other than a multiple of MQ_KGROUP, through small im2col blocks (conv_dynamic_direct.c). */
#define MQ_DIRECT_EXTRA_PAD 4 /* padding beyond (k - 1) * dilation that the direct route still takes */

int mq_conv2d_dynamic_direct_applies(int64_t channels, int64_t groups, int64_t kh, int64_t kw, int64_t ph,
                                     int64_t pw, int64_t dh, int64_t dw, int has_w_zp);

/* mq_conv2d_dynamic's arguments and bits (per-image activation scale, symmetric -127..127 or
 * reduce_range's 7-bit codes with a zero-point; y = (float)acc * (x_scale * w_scale[n]) +
 * bias[n]); 1 when done, 0 where it does not apply (take the im2col route), -1 out of memory. */
int mq_conv2d_dynamic_direct(const void *x, mq_src_t kind, int64_t batch, int64_t channels, int64_t height,
                             int64_t width, int64_t kh, int64_t kw, int64_t sh, int64_t sw, int64_t ph, int64_t pw,
                             int64_t dh, int64_t dw, int64_t groups, const int8_t *packed, const int32_t *w_sum,
                             const float *w_scale, const int32_t *w_zp, const float *bias, int64_t n, float *y,
                             int nchw, int reduce_range, int nthreads);

#endif
