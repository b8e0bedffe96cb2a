/* float_depthwise.c - the float32 depthwise Conv2d (one input channel per group) of NCHW images:
 * the depthwise convs of mobile nets, whose dequantized weights torch's conv ran at 2-7 G
 * multiply-adds a second on the AVX2 host (oneDNN reorders NCHW to blocked and back per call,
 * and paid ~100 us a call on small planes).
 *
 * Work items are blocks of MQ_DW_LANES output channels of an image, the channels in the vector
 * lanes: the block's input planes are copied once, zero-padded and interleaved [position][lane]
 * (a level's f32_dw_interleave), into a buffer a thread keeps for its chunk of blocks (calloc'd:
 * the padding stays zero, only the image's positions are rewritten); then every tap of every
 * output pixel is one vector load and one FMA (f32_dw_lanes), whatever the plane's width or the
 * stride (a row-vector layout wasted half the lanes on 4 x 4 planes and needed a stride-phase
 * split: 0.5-0.85 of torch's speed there at batch 8, against 1.6-2.2 in this one).  Each output
 * is an fmaf chain over its taps in (i, j) order from the bias: the same bits at every level
 * and thread count. */
#include <math.h>
#include <stdlib.h>

#include "mq.h"

/* below this many multiply-adds a call stays on the calling thread (mq_threads_for_work) */
#define ONE_THREAD_MACS ((double)(1 << 21))
/* blocks per thread's chunk: at least this many multiply-adds of work */
#define MIN_CHUNK_MACS ((int64_t)1 << 16)

void mq_ref_f32_dw_lanes(const mq_f32_dw_lanes_args *a) {
    for (int64_t l = 0; l < MQ_DW_LANES; l++) {
        if (!a->out[l]) continue;
        for (int64_t f = 0; f < a->npix; f++) {
            float acc = a->bias[l];
            for (int64_t t = 0; t < a->taps; t++)
                acc = fmaf(a->w[t * MQ_DW_LANES + l], a->src[(a->pix[f] + a->off[t]) * MQ_DW_LANES + l], acc);
            a->out[l][f] = acc;
        }
    }
}

void mq_ref_f32_dw_interleave(const float *const *src, const int64_t *pos, int64_t count, float *dst) {
    for (int64_t e = 0; e < count; e++)
        if (pos[e] >= 0)
            for (int64_t l = 0; l < MQ_DW_LANES; l++) dst[pos[e] * MQ_DW_LANES + l] = src[l][e];
}

typedef struct {
    const mq_kernels *kt;
    const float *x, *w, *bias;
    float *y;
    int64_t channels, plane_in, mult, taps, plane_out;
    int64_t positions;  /* of the padded copy: the rows and columns the outputs reach */
    const int64_t *off; /* each tap's position offset */
    const int64_t *pix; /* each output pixel's first tap's position */
    const int64_t *pos; /* each input element's position (-1: past what the outputs reach) */
    int *failed;
} dw_ctx;

/* Blocks [begin, end) of MQ_DW_LANES output channels of an image. */
static void blocks_range(void *vctx, int64_t begin, int64_t end) {
    const dw_ctx *c = vctx;
    const int64_t n = c->channels * c->mult, blocks = (n + MQ_DW_LANES - 1) / MQ_DW_LANES;
    float *copy = calloc((size_t)((c->positions + c->taps) * MQ_DW_LANES), sizeof(float)); /* (sized by the binding) */
    if (!copy) {
        __atomic_store_n(c->failed, 1, __ATOMIC_RELAXED);
        return;
    }
    float *w = copy + c->positions * MQ_DW_LANES, bias[MQ_DW_LANES];
    for (int64_t item = begin; item < end; item++) {
        const int64_t img = item / blocks, o0 = item % blocks * MQ_DW_LANES;
        const float *src[MQ_DW_LANES];
        float *out[MQ_DW_LANES];
        for (int64_t l = 0; l < MQ_DW_LANES; l++) {
            const int64_t o = o0 + l < n ? o0 + l : o0; /* lanes past the channels: the first's input, no output */
            src[l] = c->x + (img * c->channels + o / c->mult) * c->plane_in;
            out[l] = o0 + l < n ? c->y + (img * n + o) * c->plane_out : NULL;
            bias[l] = c->bias ? c->bias[o] : 0.0f;
            for (int64_t t = 0; t < c->taps; t++) w[t * MQ_DW_LANES + l] = c->w[o * c->taps + t];
        }
        c->kt->f32_dw_interleave(src, c->pos, c->plane_in, copy);
        const mq_f32_dw_lanes_args a = {copy, c->pix, c->off, c->plane_out, c->taps, w, bias, out};
        c->kt->f32_dw_lanes(&a);
    }
    free(copy);
}

int mq_f32_dw_conv2d(const float *x, int64_t batch, int64_t channels, int64_t height, int64_t width, const float *w,
                     const float *bias, int64_t mult, int64_t kh, int64_t kw, int64_t sh, int64_t sw, int64_t ph,
                     int64_t pw, int64_t dh, int64_t dw, float *y, int nthreads) {
    const int64_t oh = mq_conv_out(height, kh, sh, ph, dh), ow = mq_conv_out(width, kw, sw, pw, dw);
    if (batch <= 0 || channels <= 0 || mult <= 0 || oh <= 0 || ow <= 0) return 0;
    /* the padded copy's rows and columns: those the last output's taps reach */
    const int64_t rows = (oh - 1) * sh + (kh - 1) * dh + 1, cols = (ow - 1) * sw + (kw - 1) * dw + 1;
    const int64_t taps = kh * kw;
    int64_t *off = malloc(mq_alloc_bytes(taps, sizeof(int64_t), 1));
    int64_t *pix = malloc(mq_alloc_bytes(oh * ow, sizeof(int64_t), 1));
    int64_t *pos = malloc(mq_alloc_bytes(height * width, sizeof(int64_t), 1));
    int failed = 0;
    if (!off || !pix || !pos) {
        failed = 1;
        goto done;
    }
    for (int64_t i = 0; i < kh; i++)
        for (int64_t j = 0; j < kw; j++) off[i * kw + j] = i * dh * cols + j * dw;
    for (int64_t r = 0; r < oh; r++)
        for (int64_t q = 0; q < ow; q++) pix[r * ow + q] = r * sh * cols + q * sw;
    for (int64_t r = 0; r < height; r++)
        for (int64_t q = 0; q < width; q++)
            pos[r * width + q] = r + ph < rows && q + pw < cols ? (r + ph) * cols + q + pw : -1;
    dw_ctx c = {mq_active(), x, w,   bias, y,   channels, height * width, mult, taps, oh * ow, rows * cols,
                off,         pix, pos, &failed};
    const int64_t blocks = (channels * mult + MQ_DW_LANES - 1) / MQ_DW_LANES;
    const int64_t block_macs = mq_size_mul(oh * ow, taps * MQ_DW_LANES);
    nthreads = mq_threads_for_work((double)block_macs * (double)(batch * blocks), ONE_THREAD_MACS, nthreads);
    mq_parallel_for(batch * blocks, mq_items_per_chunk(block_macs, MIN_CHUNK_MACS), nthreads, blocks_range, &c);
done:
    free(off);
    free(pix);
    free(pos);
    return __atomic_load_n(&failed, __ATOMIC_RELAXED) ? -1 : 0;
}
