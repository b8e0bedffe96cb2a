/* static_program.c - one call runs a whole static int8 program (static_program.h),
 * image by image, through the kernels of static_int8.c. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mq.h"
#include "size_check.h"
#include "static_int8.h"
#include "static_program.h"

#define MAX_DIM ((int64_t)1 << 20) /* as bind_static.c: size arithmetic stays far inside int64 */

static int fail(char *err, int err_len, int node, const char *what) {
    snprintf(err, (size_t)err_len, "static program node %d: %s", node, what);
    return -1;
}

int mq_sp_shapes(const mq_sp_program *p, int64_t c, int64_t h, int64_t w, mq_sp_shape *shapes,
                 int64_t *out_elems, char *err, int err_len) {
    if (c < 1 || h < 1 || w < 1 || c > MAX_DIM || h > MAX_DIM || w > MAX_DIM || mq_size_mul(mq_size_mul(c, h), w) < 0)
        return fail(err, err_len, 0, "the input must have at least one channel and pixel, and fit in memory");
    for (int v = 0; v < p->values; v++) shapes[v] = (mq_sp_shape){0, 0, 0};
    for (int i = 0; i < p->count; i++) {
        const mq_sp_node *nd = &p->nodes[i];
        const mq_sp_shape in = nd->kind == MQ_SP_QUANTIZE ? (mq_sp_shape){h, w, c} : shapes[nd->in0];
        mq_sp_shape out = in;
        if (nd->kind == MQ_SP_QUANTIZE) {
            if (nd->in_channels != c)
                return fail(err, err_len, i, "the input's channel (feature) count is not the model's");
        } else if (nd->kind == MQ_SP_CONV || nd->kind == MQ_SP_DEPTHWISE) {
            if (in.c != nd->in_channels) return fail(err, err_len, i, "input channels differ from the layer's");
            if (in.h + 2 * nd->ph < nd->dh * (nd->kh - 1) + 1 || in.w + 2 * nd->pw < nd->dw * (nd->kw - 1) + 1)
                return fail(err, err_len, i, "the (padded) input is smaller than the dilated kernel");
            out.h = (in.h + 2 * nd->ph - nd->dh * (nd->kh - 1) - 1) / nd->sh + 1;
            out.w = (in.w + 2 * nd->pw - nd->dw * (nd->kw - 1) - 1) / nd->sw + 1;
            out.c = nd->n;
        } else if (nd->kind == MQ_SP_ADD) {
            const mq_sp_shape b = shapes[nd->in1];
            if (b.h != in.h || b.w != in.w || b.c != in.c) return fail(err, err_len, i, "add of two shapes");
        } else if (nd->kind == MQ_SP_POOL) {
            if (in.h * in.w > INT32_MAX / 128) return fail(err, err_len, i, "too many pixels to pool");
            out.h = out.w = 1;
        } else {
            return fail(err, err_len, i, "unknown kind");
        }
        if (mq_size_mul(mq_size_mul(out.h, out.w), out.c) < 0) return fail(err, err_len, i, "output too large");
        shapes[nd->out] = out;
        if (i == p->count - 1) *out_elems = out.h * out.w * out.c;
    }
    return 0;
}

typedef struct {
    const mq_sp_program *p;
    const mq_sp_shape *shapes;
    const float *x;
    int64_t in_elems, out_elems, scratch_bytes;
    const int64_t *offsets;
    float *out;
    int inner_threads;
    int failed;
} run_ctx;

/* One image through every node; 0, or -1 out of memory. */
static int run_image(const run_ctx *c, int64_t b, int8_t *scratch) {
    const mq_sp_program *p = c->p;
    float *out = c->out + b * c->out_elems;
    const int t = c->inner_threads;
    for (int i = 0; i < p->count; i++) {
        const mq_sp_node *nd = &p->nodes[i];
        const mq_sp_shape in = nd->kind == MQ_SP_QUANTIZE ? (mq_sp_shape){0, 0, 0} : c->shapes[nd->in0];
        const mq_sp_shape o = c->shapes[nd->out];
        const int8_t *src = nd->kind == MQ_SP_QUANTIZE ? NULL : scratch + c->offsets[nd->in0];
        int8_t *yq = nd->out_float ? NULL : scratch + c->offsets[nd->out];
        float *yf = nd->out_float ? out : NULL;
        int status = 0;
        switch (nd->kind) {
        case MQ_SP_QUANTIZE:
            mq_static_quantize(c->x + b * c->in_elems, 1, o.c, o.h * o.w, nd->inv_out_scale, nd->out_zp, yq, t);
            break;
        case MQ_SP_CONV:
            status = mq_conv2d_static(src, 1, in.c, in.h, in.w, nd->kh, nd->kw, nd->sh, nd->sw, nd->ph, nd->pw,
                                      nd->dh, nd->dw, 1, nd->packed, nd->w_sum, nd->x_w_scale, NULL, nd->w_has_m128,
                                      nd->bias, nd->n, nd->act_lo, nd->act_hi, nd->inv_out_scale, nd->x_zp,
                                      nd->out_zp, yq, yf, t);
            break;
        case MQ_SP_DEPTHWISE:
            status = mq_depthwise_static(src, 1, in.c, in.h, in.w, nd->kh, nd->kw, nd->sh, nd->sw, nd->ph, nd->pw,
                                         nd->dh, nd->dw, nd->packed, NULL, nd->x_w_scale, nd->bias, nd->act_lo,
                                         nd->act_hi, nd->inv_out_scale, nd->x_zp, nd->out_zp, yq, yf, t);
            break;
        case MQ_SP_ADD:
            mq_add_static(src, nd->a_scale, nd->x_zp, scratch + c->offsets[nd->in1], nd->b_scale, nd->b_zp,
                          o.h * o.w * o.c, nd->act_lo, nd->act_hi, nd->inv_out_scale, nd->out_zp, yq, yf, t);
            break;
        default: /* MQ_SP_POOL */
            status = mq_avgpool_static(src, nd->x_zp, 1, in.h * in.w, in.c, nd->pool_scale / (float)(in.h * in.w),
                                       nd->act_lo, nd->act_hi, nd->inv_out_scale, nd->out_zp, yq, yf);
        }
        if (status < 0) return -1;
    }
    return 0;
}

static void run_range(void *vctx, int64_t begin, int64_t end) {
    run_ctx *c = vctx;
    int8_t *scratch = malloc(mq_alloc_bytes(c->scratch_bytes, 1, 64));
    if (!scratch) {
        __atomic_store_n(&c->failed, 1, __ATOMIC_RELAXED);
        return;
    }
    for (int64_t b = begin; b < end; b++)
        if (run_image(c, b, scratch) < 0) __atomic_store_n(&c->failed, 1, __ATOMIC_RELAXED);
    free(scratch);
}

int mq_sp_run(const mq_sp_program *p, const mq_sp_shape *shapes, const float *x, int64_t batch, int64_t in_elems,
              float *out, int64_t out_elems, int nthreads) {
    int64_t *offsets = malloc(mq_alloc_bytes(p->values > 0 ? p->values : 1, sizeof(int64_t), 1));
    if (!offsets) return -1;
    int64_t total = 0;
    for (int v = 0; v < p->values; v++) { /* every value its own 64-byte aligned region of one image */
        offsets[v] = total;
        total = mq_size_add(total, mq_size_round_up(shapes[v].h * shapes[v].w * shapes[v].c, 64));
    }
    if (total < 0) {
        free(offsets);
        return -1;
    }
    /* threads take whole images; a batch smaller than the team runs each node on all threads */
    const int outer = batch >= nthreads ? nthreads : 1;
    run_ctx c = {p, shapes, x, in_elems, out_elems, total > 0 ? total : 1, offsets, out, outer > 1 ? 1 : nthreads, 0};
    mq_parallel_for(batch, 1, outer, run_range, &c);
    free(offsets);
    return c.failed ? -1 : 0;
}
