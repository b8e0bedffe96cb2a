/* static_program.c - one call runs a whole static int8 program (static_program.h),
 * image by image, through the kernels of static_int8.c (an image split between the
 * threads: static_program_split.c). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mq.h"
#include "size_check.h"
#include "static_int8.h"
#include "static_program.h"
#include "static_program_run.h"

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
        } else if (nd->kind == MQ_SP_BCAST_ADD) {
            const mq_sp_shape b = nd->in1 >= 0 ? shapes[nd->in1] : (mq_sp_shape){nd->kh, nd->kw, nd->n};
            if ((in.h != b.h && in.h != 1 && b.h != 1) || (in.w != b.w && in.w != 1 && b.w != 1) ||
                (in.c != b.c && in.c != 1 && b.c != 1))
                return fail(err, err_len, i, "add of two shapes that do not broadcast");
            out = (mq_sp_shape){in.h > b.h ? in.h : b.h, in.w > b.w ? in.w : b.w, in.c > b.c ? in.c : b.c};
        } else if (nd->kind == MQ_SP_CAT) {
            out.c = 0;
            for (int64_t j = 0; j < nd->n; j++) {
                const mq_sp_shape part = shapes[nd->cat_in[j]];
                if (part.h != in.h || part.w != in.w)
                    return fail(err, err_len, i, "concatenation of inputs of different pixel counts");
                out.c = mq_size_add(out.c, part.c);
            }
            if (out.c < 0) return fail(err, err_len, i, "output too large");
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


/* x of per-image shape s broadcast to shape o (each dimension equal or 1), into dst. */
static void expand(const int8_t *x, mq_sp_shape s, mq_sp_shape o, int8_t *dst) {
    for (int64_t y = 0; y < o.h; y++)
        for (int64_t xx = 0; xx < o.w; xx++) {
            const int8_t *src = x + ((s.h == 1 ? 0 : y) * s.w + (s.w == 1 ? 0 : xx)) * s.c;
            int8_t *d = dst + (y * o.w + xx) * o.c;
            if (s.c == o.c)
                memcpy(d, src, (size_t)o.c);
            else
                memset(d, src[0], (size_t)o.c);
        }
}

/* One input of a concatenation, [pixels][c] at (scale, zp), into its channels [off, off + c) of
 * dst ([pixels][oc]): copied, or requantized with StaticCat's fp32 arithmetic (requantize_codes). */
static void cat_part(const int8_t *x, int64_t pixels, int64_t c, float scale, int zp, int same, float inv,
                     int out_zp, int8_t *dst, int64_t oc) {
    const float lo = (float)(-127 - out_zp), hi = (float)(127 - out_zp);
    for (int64_t p = 0; p < pixels; p++) {
        const int8_t *s = x + p * c;
        int8_t *d = dst + p * oc;
        if (same) {
            memcpy(d, s, (size_t)c);
            continue;
        }
        for (int64_t k = 0; k < c; k++) {
            float v = ((float)(s[k] - zp) * scale) * inv;
            v = v < lo ? lo : v > hi ? hi : v;
            d[k] = (int8_t)((int)rintf(v) + out_zp);
        }
    }
}

int mq_sp_run_node(const mq_sp_run_ctx *c, int64_t b, int i, int8_t *scratch, int t) {
    const mq_sp_program *p = c->p;
    float *out = c->out + b * c->out_elems;
    {
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
        case MQ_SP_BCAST_ADD: {
            const mq_sp_shape bs = nd->in1 >= 0 ? c->shapes[nd->in1] : (mq_sp_shape){nd->kh, nd->kw, nd->n};
            const int8_t *b = nd->in1 >= 0 ? scratch + c->offsets[nd->in1] : nd->b_codes;
            int8_t *ea = scratch + c->expand_offset, *eb = ea + c->expand_stride;
            if (in.h != o.h || in.w != o.w || in.c != o.c) {
                expand(src, in, o, ea);
                src = ea;
            }
            if (bs.h != o.h || bs.w != o.w || bs.c != o.c) {
                expand(b, bs, o, eb);
                b = eb;
            }
            mq_add_static(src, nd->a_scale, nd->x_zp, b, nd->b_scale, nd->b_zp, o.h * o.w * o.c, nd->act_lo,
                          nd->act_hi, nd->inv_out_scale, nd->out_zp, yq, yf, t);
            break;
        }
        case MQ_SP_CAT: {
            int64_t off = 0;
            for (int64_t j = 0; j < nd->n; j++) {
                const mq_sp_shape ps = c->shapes[nd->cat_in[j]];
                const int same = nd->cat_scale[j] == nd->a_scale && nd->cat_zp[j] == nd->out_zp;
                cat_part(scratch + c->offsets[nd->cat_in[j]], o.h * o.w, ps.c, nd->cat_scale[j], nd->cat_zp[j], same,
                         nd->inv_out_scale, nd->out_zp, yq + off, o.c);
                off += ps.c;
            }
            break;
        }
        default: /* MQ_SP_POOL */
            status = mq_avgpool_static(src, nd->x_zp, 1, in.h * in.w, in.c, nd->pool_scale / (float)(in.h * in.w),
                                       nd->act_lo, nd->act_hi, nd->inv_out_scale, nd->out_zp, yq, yf);
        }
        if (status < 0) return -1;
    }
    return 0;
}

int mq_sp_run_image(const mq_sp_run_ctx *c, int64_t b, int8_t *scratch) {
    for (int i = 0; i < c->p->count; i++)
        if (mq_sp_run_node(c, b, i, scratch, c->inner_threads) < 0) return -1;
    return 0;
}

static void run_range(void *vctx, int64_t begin, int64_t end) {
    mq_sp_run_ctx *c = vctx;
    int8_t *scratch = malloc(mq_alloc_bytes(c->scratch_bytes, 1, 64));
    if (!scratch) {
        __atomic_store_n(&c->failed, 1, __ATOMIC_RELAXED);
        return;
    }
    for (int64_t b = begin; b < end; b++)
        if (mq_sp_run_image(c, b, scratch) < 0) __atomic_store_n(&c->failed, 1, __ATOMIC_RELAXED);
    free(scratch);
}

int mq_sp_run(const mq_sp_program *p, const mq_sp_shape *shapes, const float *x, int64_t batch, int64_t in_elems,
              float *out, int64_t out_elems, int nthreads, int split) {
    int64_t *offsets = malloc(mq_alloc_bytes(p->values > 0 ? p->values : 1, sizeof(int64_t), 1));
    if (!offsets) return -1;
    int64_t total = 0;
    for (int v = 0; v < p->values; v++) { /* every value its own 64-byte aligned region of one image */
        offsets[v] = total;
        total = mq_size_add(total, mq_size_round_up(shapes[v].h * shapes[v].w * shapes[v].c, 64));
    }
    int64_t expand_stride = 0; /* the largest broadcast add's output: room for its two expanded operands */
    for (int i = 0; i < p->count; i++)
        if (p->nodes[i].kind == MQ_SP_BCAST_ADD) {
            const mq_sp_shape o = shapes[p->nodes[i].out];
            const int64_t bytes = mq_size_round_up(o.h * o.w * o.c, 64);
            if (bytes > expand_stride) expand_stride = bytes;
        }
    const int64_t expand_offset = total;
    total = mq_size_add(total, mq_size_mul(expand_stride, 2));
    if (total < 0) {
        free(offsets);
        return -1;
    }
    /* Threads take whole images; the images left over (fewer than the threads: batch 1 on 2) have
     * each node split between them.  Both in one job (static_program_split.c), where a thread that
     * ran out of work takes the pieces others have not started, so no one waits for more than the
     * piece a running thread holds. */
    int64_t whole = split == MQ_SP_SPLIT_NODES ? 0 : batch / nthreads * nthreads;
    if (whole < batch && split == MQ_SP_SPLIT_AUTO && mq_sp_split_backing_off())
        whole = batch; /* recent splits gained too little: whole images only */
    mq_sp_run_ctx c = {p, shapes, x, in_elems, out_elems, mq_size_round_up(total > 0 ? total : 1, 64), offsets,
                       expand_offset, expand_stride, out, 1, 0};
    int status;
    if (nthreads > 1 && split != MQ_SP_SPLIT_IMAGES && (whole < batch || batch >= nthreads) &&
        batch <= ((int64_t)1 << 20) / (p->count > 0 ? p->count : 1)) { /* (the job's step count stays an int) */
        status = mq_sp_run_split(&c, whole, batch, nthreads, split == MQ_SP_SPLIT_NODES);
    } else { /* one thread, or whole images only, each node on every thread when the batch is small */
        const int outer = batch >= nthreads ? nthreads : 1;
        c.inner_threads = outer == 1 && split == MQ_SP_SPLIT_IMAGES ? nthreads : 1;
        mq_parallel_for(batch, 1, outer, run_range, &c);
        status = c.failed ? -1 : 0;
    }
    free(offsets);
    return status;
}
