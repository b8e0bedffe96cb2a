/* conv_profile.h - step timings of the dynamic int8 conv (linear.c, conv_dynamic_direct.c), for
 * benchmarks/bench_dynamic_conv.py --profile: off unless switched on (_C.conv_profile), and then
 * one load of a flag per step; never read by the kernels' results.
 *
 * Wall steps are each region's time on the calling thread; "thread" steps are sums over every
 * thread that ran a piece of the one-region direct route (what each step cost, not when). */
#ifndef MQ_CONV_PROFILE_H
#define MQ_CONV_PROFILE_H

#include <stdint.h>

typedef enum {
    MQ_CONV_WALL_QUANTIZE,  /* im2col route: per-image activation quantization (own region) */
    MQ_CONV_WALL_IM2COL,    /* im2col route: int8 im2col (own region) */
    MQ_CONV_WALL_GEMM,      /* im2col route: the int8 GEMM */
    MQ_CONV_WALL_NCHW,      /* im2col route: NHWC -> NCHW copy-back */
    MQ_CONV_WALL_PREQUANT,  /* direct route, small batches: the images quantized before the row blocks */
    MQ_CONV_WALL_DIRECT,    /* direct route: the one region of whole images (or row blocks) */
    MQ_CONV_WALL_TOTAL,     /* the whole C call (either route) */
    MQ_CONV_THREAD_QUANTIZE, /* direct route, summed over threads: quantize + pad one image */
    MQ_CONV_THREAD_CONV,     /* the direct conv kernel */
    MQ_CONV_THREAD_EPILOGUE, /* scales, bias and the NCHW write */
    MQ_CONV_STEPS
} mq_conv_step;

extern int mq_conv_profile_on; /* written with the GIL held, read by the kernels */

int64_t mq_conv_profile_clock(void); /* ns, monotonic */
/* The start of a step: 0 when profiling is off (then stop does nothing). */
static inline int64_t mq_conv_profile_start(void) {
    return __atomic_load_n(&mq_conv_profile_on, __ATOMIC_RELAXED) ? mq_conv_profile_clock() : 0;
}
void mq_conv_profile_stop(mq_conv_step step, int64_t start);
/* The sums since the last take, in ns, the number of C calls and of direct-route calls; then zeroed. */
void mq_conv_profile_take(int64_t out[MQ_CONV_STEPS], int64_t *calls, int64_t *direct_calls);
/* One C call counted (when profiling), and one that took the direct route. */
void mq_conv_profile_count_call(int direct);

#endif
