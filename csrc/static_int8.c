/* static_int8.c - static int8 activations (see static_int8.h): fixed-scale
 * quantize, conv / linear on int8 NHWC rows through the dispatched int8 GEMM
 * (the dispatched qgemm kernel on int8 rows), a depthwise kernel, residual add
 * and global average pool, each with the same requantizing epilogue.
 *
 * Plain C in the baseline compile unit on purpose: the only ISA-dependent
 * part is the GEMM, whose int32 accumulators are exact on every ISA, so
 * everything here gives the same bits at every dispatch level.  The GEMM is the
 * table's qgemm kernel (linear.c's layout and contract), driven here per block of
 * output rows so that im2col, GEMM and requantize share the cache. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "conv_split.h"
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

/* q = clamp(round_half_even(v * inv) + zp, -127, 127): s is clamped to the integers whose
 * q is in range first (equivalent, and keeps |s| small for the rounding trick). */
static inline int8_t requantize(float v, float inv_out_scale, int zp) {
    const float lo = (float)(-127 - zp), hi = (float)(127 - zp);
    float s = v * inv_out_scale;
    s = s > lo ? s : lo; /* a NaN product (inf * 0) becomes the lowest code, never UB */
    s = s < hi ? s : hi;
    return (int8_t)((int)round_even_small(s) + zp);
}

/* Plain loops over restrict locals (not the context's fields): gcc vectorizes them. */
static void epilogue_q(const float *restrict src, int64_t n, float lo, float hi, float inv, int zp,
                       int8_t *restrict dst) {
    for (int64_t j = 0; j < n; j++) dst[j] = requantize(activate(src[j], lo, hi), inv, zp);
}

/* ---- fixed-scale quantize / dequantize (NCHW float <-> NHWC int8) ---------------- */

typedef struct {
    const float *x;
    float *xf;
    int8_t *q;
    const int8_t *qc;
    int64_t channels, plane;
    float scale;
    int zp;
} layout_ctx;

/* Requantize n contiguous floats (a plain loop over restrict locals: gcc vectorizes it; epilogue_q
 * with infinite bounds gives the same codes, but its activation kept the loop 1.6x slower). */
static void quantize_row(const float *restrict src, int64_t n, float inv, int zp, int8_t *restrict dst) {
    for (int64_t j = 0; j < n; j++) dst[j] = requantize(src[j], inv, zp);
}

/* Pixels per block of the NCHW -> NHWC quantize: the block's codes, [channels][pixels], fit this
 * tile (on the stack), so both the strided float reads and the transposed byte writes stay in L1;
 * the table's nhwc_bytes transposes it. */
#define QUANTIZE_TILE 16384

static void quantize_range(void *vctx, int64_t begin, int64_t end) {
    const layout_ctx *c = vctx;
    const int64_t ch_n = c->channels, plane = c->plane;
    int8_t tile[QUANTIZE_TILE];
    const mq_nhwc_bytes_fn transpose = mq_active()->nhwc_bytes;
    const int64_t block = ch_n > QUANTIZE_TILE ? 1 : (QUANTIZE_TILE / ch_n < 64 ? QUANTIZE_TILE / ch_n : 64);
    for (int64_t b = begin; b < end; b++) {
        const float *src = c->x + b * ch_n * plane;
        int8_t *dst = c->q + b * ch_n * plane;
        if (plane == 1 || ch_n == 1) { /* the same order in both layouts */
            quantize_row(src, ch_n * plane, c->scale, c->zp, dst);
            continue;
        }
        for (int64_t p0 = 0; p0 < plane; p0 += block) {
            const int64_t len = p0 + block < plane ? block : plane - p0;
            if (ch_n > QUANTIZE_TILE) { /* (a single pixel of more channels than the tile) */
                for (int64_t ch = 0; ch < ch_n; ch++)
                    dst[p0 * ch_n + ch] = requantize(src[ch * plane + p0], c->scale, c->zp);
                continue;
            }
            /* each channel's run of pixels requantized as one vector loop, then transposed */
            for (int64_t ch = 0; ch < ch_n; ch++) quantize_row(src + ch * plane + p0, len, c->scale, c->zp,
                                                               tile + ch * len);
            transpose((const uint8_t *)tile, len, ch_n, len, 0, (uint8_t *)(dst + p0 * ch_n));
        }
    }
}

void mq_static_quantize(const float *x, int64_t batch, int64_t channels, int64_t plane, float inv_scale, int zp,
                        int8_t *dst, int nthreads) {
    layout_ctx c = {x, NULL, dst, NULL, channels, plane, inv_scale, zp};
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
                for (int64_t p = p0; p < p1; p++)
                    dst[ch * c->plane + p] = (float)(src[p * c->channels + ch] - c->zp) * c->scale;
        }
    }
}

void mq_static_dequantize(const int8_t *q, int64_t batch, int64_t plane, int64_t channels, float scale, int zp,
                          float *dst, int nthreads) {
    layout_ctx c = {NULL, dst, NULL, q, channels, plane, scale, zp};
    mq_parallel_for(batch, 1 + ((int64_t)1 << 16) / (channels * plane + 1), nthreads, dequantize_range, &c);
}

static void nchw_range(void *vctx, int64_t begin, int64_t end) {
    const layout_ctx *c = vctx;
    const mq_nchw_f32_fn transpose = mq_active()->nchw_f32;
    for (int64_t b = begin; b < end; b++)
        transpose(c->x + b * c->channels * c->plane, c->plane, c->channels, NULL, NULL,
                  c->xf + b * c->channels * c->plane, c->plane);
}

void mq_static_nchw_f32(const float *x, int64_t batch, int64_t plane, int64_t channels, float *dst, int nthreads) {
    layout_ctx c = {x, dst, NULL, NULL, channels, plane, 1.0f, 0};
    mq_parallel_for(batch, 1 + ((int64_t)1 << 16) / (channels * plane + 1), nthreads, nchw_range, &c);
}

/* ---- conv / linear through the int8 GEMM ------------------------------------------- */

/* Items (blocks of rows, images) below the kernels' per-item threshold are run in chunks of
 * about this many multiply-adds: a job of many tiny items (a Linear head at many rows, as
 * 4096 one-pixel "images" of 768 x 16) is still work for two threads.  It was all on one
 * thread whatever the item count; a small layer (under two chunks) still is. */
#define TINY_ITEMS_CHUNK_MACS ((int64_t)1 << 20)
static int64_t tiny_items_chunk(int64_t item_macs) {
    return mq_items_per_chunk(item_macs, TINY_ITEMS_CHUNK_MACS);
}

/* Work items are blocks of output rows (pixels).  Per block, per group: im2col into a
 * cache-sized buffer already in the kernel's encoding (int8, or int8 ^ 0x80 = int8 + 128
 * for VNNI), the dispatched GEMM over every panel into fp32 rows, then the epilogue
 * into the output: the rows never leave L2 between the three steps. */
typedef struct {
    const int8_t *x;
    int64_t channels, height, width, kh, kw, sh, sw, ph, pw, dh, dw, out_h, out_w, groups, cg, k, kp, n, n_g, np_g;
    int64_t m, block_rows;
    const mq_kernels *kt;
    const int8_t *packed;
    const int32_t *w_sum, *w_zp;
    const float *x_w_scale, *bias;
    int w_has_m128;
    float act_lo, act_hi, inv_out_scale;
    int x_zp, out_zp;
    int8_t *y_q;
    float *y_f32;
    int failed;
} static_conv_ctx;

/* dst = src - sub (mod 256; sub 0x80: src ^ 0x80 = src + 128, the VNNI kernels' encoding): an
 * inline loop the compiler vectorizes (a memcpy call per short channel run, then a second pass
 * over the row, cost more than the copy itself). */
static inline void copy_encoded(uint8_t *restrict dst, const int8_t *restrict src, int64_t len, uint8_t sub) {
    for (int64_t t = 0; t < len; t++) dst[t] = (uint8_t)((uint8_t)src[t] - sub);
}

static void im2col_rows(const static_conv_ctx *c, int64_t r0, int64_t nr, int64_t group, uint8_t *rows) {
    const int64_t pixels = c->out_h * c->out_w;
    const uint8_t flip = c->kt->qgemm_x_u8 ? 0x80u : 0u;
    const uint8_t pad = (uint8_t)(int8_t)c->x_zp ^ flip; /* the encoding of 0 */
    const int whole_rows = c->cg == c->channels && c->dw == 1; /* a tap row's kw pixels are one channel run */
    for (int64_t r = 0; r < nr; r++) {
        const int64_t p = r0 + r, b = p / pixels, oh = (p % pixels) / c->out_w, ow = p % c->out_w;
        uint8_t *dst = rows + r * c->kp;
        const int64_t iw0 = ow * c->sw - c->pw;
        for (int64_t i = 0; i < c->kh; i++) {
            const int64_t ih = oh * c->sh - c->ph + i * c->dh;
            if (whole_rows && ih >= 0 && ih < c->height && iw0 >= 0 && iw0 + c->kw <= c->width) {
                copy_encoded(dst, c->x + ((b * c->height + ih) * c->width + iw0) * c->channels, c->kw * c->cg, flip);
                dst += c->kw * c->cg;
                continue;
            }
            for (int64_t j = 0; j < c->kw; j++, dst += c->cg) {
                const int64_t iw = iw0 + j * c->dw;
                if (ih >= 0 && ih < c->height && iw >= 0 && iw < c->width)
                    copy_encoded(dst, c->x + ((b * c->height + ih) * c->width + iw) * c->channels + group * c->cg,
                                 c->cg, flip);
                else
                    memset(dst, pad, (size_t)c->cg);
            }
        }
        memset(dst, flip, (size_t)(c->kp - c->k)); /* against the weight's zero padding: any value */
    }
}

/* y = (float)(acc - x_zp * colsum'[n]) * x_w_scale[n] (+ bias[n]), colsum' = sum_k (w - w_zp):
 * the activations' zero-point removed exactly in int32 (|acc| + |x_zp * colsum'| < 2^31 for
 * k <= 32768) before the one fp32 product.  Plain loops over restrict locals: vectorized. */
static void acc_to_float(const int32_t *restrict acc, int64_t nr, int64_t n_g, const int32_t *restrict zcol,
                         const float *restrict xw, const float *restrict bias, float *restrict y) {
    for (int64_t r = 0; r < nr; r++)
        for (int64_t j = 0; j < n_g; j++) y[r * n_g + j] = (float)(acc[r * n_g + j] - zcol[j]) * xw[j];
    if (bias)
        for (int64_t r = 0; r < nr; r++)
            for (int64_t j = 0; j < n_g; j++) y[r * n_g + j] += bias[j];
}

static void activate_f32(const float *restrict src, int64_t n, float lo, float hi, float *restrict dst) {
    for (int64_t j = 0; j < n; j++) dst[j] = activate(src[j], lo, hi);
}

/* The block's fp32 results, then one flat pass into the output (one group: its rows are
 * contiguous there too) or one pass per row (a group's columns of each row). */
static void conv_epilogue(const static_conv_ctx *c, const int32_t *acc, int64_t nr, int64_t g, const int32_t *zcol,
                          int64_t r0, float *y) {
    const int64_t n_g = c->n_g, n = c->n;
    acc_to_float(acc, nr, n_g, zcol, c->x_w_scale + g * n_g, c->bias ? c->bias + g * n_g : NULL, y);
    const int64_t rows = n_g == n ? 1 : nr, len = n_g == n ? nr * n : n_g;
    for (int64_t r = 0; r < rows; r++) {
        const int64_t o = (r0 + r) * n + g * n_g;
        if (c->y_q)
            epilogue_q(y + r * n_g, len, c->act_lo, c->act_hi, c->inv_out_scale, c->out_zp, c->y_q + o);
        else
            activate_f32(y + r * n_g, len, c->act_lo, c->act_hi, c->y_f32 + o);
    }
}

static void static_conv_range(void *vctx, int64_t begin, int64_t end) {
    static_conv_ctx *c = vctx;
    const int64_t cap = c->block_rows;
    if (cap <= 0 || cap > 1024 || c->n_g <= 0 || c->n_g > ((int64_t)1 << 40)) { /* never (bounds for gcc's
                                                                                     allocation-size check) */
        __atomic_store_n(&c->failed, 1, __ATOMIC_RELAXED);
        return;
    }
    if (c->kp <= 0 || c->kp > 32768) { /* never: bind_static.c bounds k (and this tells gcc) */
        __atomic_store_n(&c->failed, 1, __ATOMIC_RELAXED);
        return;
    }
    uint8_t *rows = aligned_alloc(64, mq_alloc_bytes(cap, c->kp, 64));
    int32_t *acc = malloc(mq_alloc_bytes(cap, c->n_g * (int64_t)sizeof(int32_t), 1));
    float *x_scale = malloc(mq_alloc_bytes(cap, sizeof(float), 1));
    int32_t *x_sum = c->w_zp ? malloc(mq_alloc_bytes(cap, sizeof(int32_t), 1)) : NULL;
    int32_t *zcol = malloc(mq_alloc_bytes(c->n_g, sizeof(int32_t), 1));
    float *yrow = malloc(mq_alloc_bytes(cap, c->n_g * (int64_t)sizeof(float), 1));
    if (!rows || !acc || !x_scale || (c->w_zp && !x_sum) || !zcol || !yrow) {
        __atomic_store_n(&c->failed, 1, __ATOMIC_RELAXED);
        goto done;
    }
    for (int64_t i = 0; i < cap; i++) x_scale[i] = 1.0f; /* unused with exact accumulators */
    const int64_t panels = c->np_g / MQ_PANEL;
    const uint8_t flip = c->kt->qgemm_x_u8 ? 0x80u : 0u;
    for (int64_t blk = begin; blk < end; blk++) {
        const int64_t r0 = blk * cap, nr = c->m - r0 < cap ? c->m - r0 : cap;
        for (int64_t g = 0; g < c->groups; g++) {
            for (int64_t j = 0; j < c->n_g; j++) /* x_zp * sum_k (w - w_zp): |.| <= 127 * 255 * 32768 < 2^31 */
                zcol[j] = (int32_t)(c->x_zp * ((int64_t)c->w_sum[g * c->np_g + j] -
                                               (c->w_zp ? (int64_t)c->w_zp[g * c->n_g + j] * c->k : 0)));
            im2col_rows(c, r0, nr, g, rows);
            if (x_sum)
                for (int64_t r = 0; r < nr; r++) {
                    int32_t sum = 0;
                    for (int64_t i = 0; i < c->k; i++) sum += (int8_t)(rows[r * c->kp + i] ^ flip);
                    x_sum[r] = sum;
                }
            mq_qgemm_args a = {rows, c->kt->qgemm_x_u8, x_scale, x_sum, nr, c->kp, c->n_g,
                               c->packed + g * c->np_g * c->kp, c->w_sum + g * c->np_g, c->x_w_scale + g * c->n_g,
                               c->w_zp ? c->w_zp + g * c->n_g : NULL, c->w_has_m128, NULL, NULL, acc, c->n_g, 1,
                               NULL, c->kp, NULL, NULL, NULL, NULL};
            c->kt->qgemm(&a, 0, panels);
            conv_epilogue(c, acc, nr, g, zcol, r0, yrow);
        }
    }
done:
    free(rows);
    free(acc);
    free(x_scale);
    free(x_sum);
    free(zcol);
    free(yrow);
}

static int conv2d_direct(const int8_t *x, int64_t batch, int64_t channels, int64_t height, int64_t width,
                         int64_t kh, int64_t kw, int64_t sh, int64_t sw, int64_t ph, int64_t pw, int64_t dh,
                         int64_t dw, int64_t groups, const int8_t *packed, const int32_t *w_sum,
                         const float *x_w_scale, const int32_t *w_zp, const float *bias, int64_t n, float act_lo,
                         float act_hi, float inv_out_scale, int x_zp, int out_zp, int8_t *y_q, float *y_f32,
                         int nthreads);

int mq_conv2d_static(const int8_t *x, int64_t batch, int64_t channels, int64_t height, int64_t width, int64_t kh,
                     int64_t kw, int64_t sh, int64_t sw, int64_t ph, int64_t pw, int64_t dh, int64_t dw, int64_t groups,
                     const int8_t *packed, const int32_t *w_sum, const float *x_w_scale, const int32_t *w_zp,
                     int w_has_m128, const float *bias, int64_t n, float act_lo, float act_hi, float inv_out_scale,
                     int x_zp, int out_zp, int8_t *y_q, float *y_f32, int nthreads) {
    const int64_t out_h = mq_conv_out(height, kh, sh, ph, dh);
    const int64_t out_w = mq_conv_out(width, kw, sw, pw, dw);
    const int64_t cg = channels / groups, k = cg * kh * kw, kp = mq_round_up(k, MQ_KGROUP);
    const int64_t n_g = n / groups, np_g = mq_round_up(n_g, MQ_PANEL);
    const int64_t m = mq_size_mul(mq_size_mul(batch, out_h), out_w);
    if (m <= 0 || n <= 0) return m < 0 ? -1 : 0;
    const int direct = conv2d_direct(x, batch, channels, height, width, kh, kw, sh, sw, ph, pw, dh, dw, groups, packed,
                                     w_sum, x_w_scale, w_zp, bias, n, act_lo, act_hi, inv_out_scale, x_zp, out_zp,
                                     y_q, y_f32, nthreads);
    if (direct) return direct < 0 ? -1 : 0;
    /* rows per block: im2col rows plus fp32 results in ~192 KiB (L2), whole 40-row tiles */
    int64_t block_rows = ((int64_t)192 << 10) / (kp + 4 * n_g) / 40 * 40;
    block_rows = block_rows < 40 ? 40 : block_rows > 1024 ? 1024 : block_rows;
    /* several threads: at least two blocks each when the rows allow it */
    if (nthreads > 1 && m < block_rows * 2 * nthreads)
        block_rows = mq_round_up((m + 2 * nthreads - 1) / (2 * nthreads), 8);
    if (block_rows > m) block_rows = m;
    static_conv_ctx c = {x, channels, height, width, kh, kw, sh, sw, ph, pw, dh, dw, out_h, out_w, groups, cg, k, kp,
                         n, n_g, np_g, m, block_rows, mq_active(), packed, w_sum, w_zp, x_w_scale, bias, w_has_m128,
                         act_lo, act_hi, inv_out_scale, x_zp, out_zp, y_q, y_f32, 0};
    /* rows * k * n multiply-adds per block: small blocks go in chunks of TINY_ITEMS_CHUNK_MACS */
    const int64_t blocks = (m + block_rows - 1) / block_rows;
    const int64_t per_block = block_rows * k * n;
    mq_parallel_for(blocks, per_block >= ((int64_t)1 << 18) ? 1 : tiny_items_chunk(per_block), nthreads,
                    static_conv_range, &c);
    return c.failed ? -1 : 0;
}

/* ---- direct conv: padded input rows, sums and epilogue without leaving registers ------ */

/* The scalar twin of the table's static_conv (mq.h): the definition the SIMD kernels are
 * held to, bit for bit.  Signed int8 input (static_conv_x_u8 = 0 in the scalar table). */
void mq_ref_static_conv(const mq_static_conv_args *a) {
    for (int64_t r = 0; r < a->out_rows; r++)
        for (int64_t ow = 0; ow < a->out_w; ow++) {
            const int64_t pix = r * a->out_w + ow;
            /* A panel's 16 sums at once: each K-group (4 channels of one tap, c % 4 == 0) is 64
             * contiguous weight bytes, so the weight pointer only steps; exact int32 sums. */
            const int8_t *w = a->w;
            for (int64_t col0 = 0; col0 < a->n; col0 += MQ_PANEL) {
                int32_t acc[MQ_PANEL] = {0};
                for (int64_t i = 0; i < a->kh; i++)
                    for (int64_t j = 0; j < a->kw; j++) {
                        const int8_t *x =
                            (const int8_t *)a->x + ((r * a->sh + i * a->dh) * a->wp + ow * a->sw + j * a->dw) * a->c;
                        for (int64_t ch = 0; ch < a->c; ch += MQ_KGROUP, w += MQ_PANEL_GROUP_BYTES)
                            for (int c = 0; c < MQ_PANEL; c++)
                                for (int t = 0; t < MQ_KGROUP; t++)
                                    acc[c] += (int32_t)x[ch + t] * w[c * MQ_KGROUP + t];
                    }
                const int64_t cols = a->n - col0 < MQ_PANEL ? a->n - col0 : MQ_PANEL;
                for (int64_t c = 0; c < cols; c++) {
                    const int64_t col = col0 + c;
                    float y = (float)(acc[c] - a->zcol[col]) * a->xw[col];
                    if (a->bias) y += a->bias[col];
                    const float v = activate(y, a->act_lo, a->act_hi);
                    if (a->y_q)
                        a->y_q[pix * a->n + col] = requantize(v, a->inv_out_scale, a->out_zp);
                    else
                        a->y_f32[pix * a->n + col] = v;
                }
            }
        }
}

/* Work items are blocks of output rows of one image.  Per item: the input rows it reads,
 * padded with the zero-point and encoded for the kernel (a small buffer that stays in
 * L1/L2), then either the kernel on them directly (channels % 4 == 0: the packed weight's
 * K-groups are 4 channels of one tap), or, for other channel counts (a first layer's one
 * input channel), an im2col of those padded rows (kp bytes per pixel) fed to the kernel
 * as a 1x1 conv.  AVX2 without VNNI: an item whose codes x - x_zp keep each pair of channels
 * within 255 runs them on the table's static_conv_ux (a ReLU output's codes: most items), else
 * the split kernel by its rules on symmetric codes (conv_split.c), else the sign trick. */
typedef struct {
    const mq_kernels *kt;
    const int8_t *x;
    int64_t channels, height, width, kh, kw, sh, sw, ph, pw, dh, dw, out_h, out_w, k, kp;
    int64_t rows_per_item, items_per_image;
    int im2col;
    const int8_t *packed;
    const int32_t *zcol;
    const float *x_w_scale, *bias;
    int64_t n;
    float act_lo, act_hi, inv_out_scale;
    int x_zp, out_zp;
    int8_t *y_q;
    float *y_f32;
    int split; /* the table's dconv_split on items its rules take (conv_split.c): 0 off, 1 rules, 2 always */
    int ux;    /* the table's static_conv_ux on items whose codes x - x_zp it takes (rows_take_ux) */
    const int32_t *zeros; /* [np] 0: its zcol (the zero-point is in its codes) */
    int failed;
} direct_ctx;

/* Whether the unsigned-codes kernel takes codes x - zp of these input rows (len bytes each,
 * channel pairs (2i, 2i + 1) side by side): every one >= 0 and each pair's sum at most 255
 * (vpmaddubsw's unsigned side against |w| <= 128 then never saturates).  A ReLU output's
 * zero-point is -127, so this asks that two channels of a pixel are not both past about
 * half of the calibrated range.  Plain C (vectorized). */
static int rows_take_ux(const int8_t *x, int64_t rows, int64_t len, int zp) {
    int bad = 0;
    for (int64_t r = 0; r < rows && !bad; r++) {
        const int8_t *row = x + r * len;
        for (int64_t t = 0; t + 1 < len; t += 2) {
            const int d0 = row[t] - zp, d1 = row[t + 1] - zp;
            bad |= (d0 < 0) | (d1 < 0) | (d0 + d1 > 255);
        }
    }
    return !bad;
}

static void direct_range(void *vctx, int64_t begin, int64_t end) {
    direct_ctx *c = vctx;
    const uint8_t flip = c->kt->static_conv_x_u8 ? 0x80u : 0u, pad = (uint8_t)(int8_t)c->x_zp ^ flip;
    const int64_t wp = c->width + 2 * c->pw, rb = c->rows_per_item, ch = c->channels;
    const int64_t in_rows = (rb - 1) * c->sh + (c->kh - 1) * c->dh + 1;
    if (rb <= 0 || in_rows <= 0 || wp <= 0 || ch <= 0 || c->kp <= 0 || c->kp > 32768) { /* never (bounds for gcc) */
        __atomic_store_n(&c->failed, 1, __ATOMIC_RELAXED);
        return;
    }
    /* (+ 4 bytes: the one-channel im2col's 4-byte words read up to 3 bytes past the last row) */
    uint8_t *rows = malloc(mq_alloc_bytes(mq_size_add(mq_size_mul(mq_size_mul(in_rows, wp), ch), 4), 1, 64));
    uint8_t *cols = c->im2col ? malloc(mq_alloc_bytes(mq_size_mul(rb, c->out_w), c->kp, 64)) : NULL;
    if (!rows || (c->im2col && !cols)) {
        __atomic_store_n(&c->failed, 1, __ATOMIC_RELAXED);
        goto done;
    }
    for (int64_t item = begin; item < end; item++) {
        const int64_t b = item / c->items_per_image, oh0 = (item % c->items_per_image) * rb;
        const int64_t nr = c->out_h - oh0 < rb ? c->out_h - oh0 : rb;
        const int64_t nin = (nr - 1) * c->sh + (c->kh - 1) * c->dh + 1;
        /* the input rows the item reads, [ih0, ih1) */
        const int64_t ih0 = oh0 * c->sh - c->ph < 0 ? 0 : oh0 * c->sh - c->ph;
        const int64_t ih1 = oh0 * c->sh - c->ph + nin > c->height ? c->height : oh0 * c->sh - c->ph + nin;
        const int ux = c->ux && ih1 > ih0 &&
                       rows_take_ux(c->x + (b * c->height + ih0) * c->width * ch, ih1 - ih0, c->width * ch, c->x_zp);
        /* codes x - x_zp for the unsigned kernel (its padding 0), else x ^ flip */
        const uint8_t sub = ux ? (uint8_t)c->x_zp : flip, fill = ux ? 0 : pad;
        for (int64_t t = 0; t < nin; t++) { /* padded row t is input row ih */
            const int64_t ih = oh0 * c->sh - c->ph + t;
            uint8_t *dst = rows + t * wp * ch;
            if (ih < 0 || ih >= c->height) {
                memset(dst, fill, (size_t)(wp * ch));
                continue;
            }
            memset(dst, fill, (size_t)(c->pw * ch));
            copy_encoded(dst + c->pw * ch, c->x + (b * c->height + ih) * c->width * ch, c->width * ch, sub);
            memset(dst + (c->pw + c->width) * ch, fill, (size_t)(c->pw * ch));
        }
        mq_static_conv_args a = {rows, wp, ch, c->kh, c->kw, c->sh, c->sw, c->dh, c->dw, nr, c->out_w,
                                 c->packed, c->n, c->zcol, c->x_w_scale, c->bias, c->act_lo, c->act_hi,
                                 c->inv_out_scale, c->out_zp,
                                 c->y_q ? c->y_q + (b * c->out_h + oh0) * c->out_w * c->n : NULL,
                                 c->y_f32 ? c->y_f32 + (b * c->out_h + oh0) * c->out_w * c->n : NULL, NULL, NULL, NULL};
        if (ux) {
            mq_ux_conv_count();
            a.zcol = c->zeros;
            c->kt->static_conv_ux(&a);
            continue;
        }
        /* the split kernel: the item's padded rows are its image, their padding codes included */
        mq_conv_split split;
        if (c->split && mq_conv_split_image(c->kt,
                                            &(mq_conv_split_geometry){nin, wp, ch, 0, 0, wp, c->kh, c->kw, c->sh, c->sw,
                                                                      c->dh, c->dw, nr, c->out_w, c->packed, c->n},
                                            rows, c->split == 1, &split)) {
            mq_split_conv_count();
            a.pix_shift = split.shift;
            a.corr_at = split.corr_at;
            a.corr = split.corr;
            c->kt->dconv_split(&a);
            mq_conv_split_free(&split);
            continue;
        }
        if (c->im2col) { /* tap by tap over a row of pixels: no call per (pixel, tap) of few channels */
            const int64_t kp = c->kp, sw = c->sw, out_w = c->out_w, kh = c->kh, kw = c->kw, k = c->k;
            /* one channel, unit steps: a tap row's kw bytes are adjacent in the padded row; copied as
             * one 4-byte word (its extra bytes land where the next tap row or the padding goes) */
            const int words = ch == 1 && sw == 1 && c->dw == 1 && kw <= 4 && k - kw + 4 <= kp;
            for (int64_t r = 0; r < nr; r++) {
                uint8_t *restrict row_cols = cols + r * out_w * kp;
                for (int64_t i = 0; i < kh; i++) {
                    const uint8_t *restrict src_row = rows + (r * c->sh + i * c->dh) * wp * ch;
                    if (words) {
                        for (int64_t ow = 0; ow < out_w; ow++)
                            memcpy(row_cols + ow * kp + i * kw, src_row + ow, 4);
                        continue;
                    }
                    for (int64_t j = 0; j < kw; j++) {
                        const uint8_t *restrict src = src_row + j * c->dw * ch;
                        uint8_t *restrict dst = row_cols + (i * kw + j) * ch;
                        if (ch == 1)
                            for (int64_t ow = 0; ow < out_w; ow++) dst[ow * kp] = src[ow * sw];
                        else
                            for (int64_t ow = 0; ow < out_w; ow++)
                                memcpy(dst + ow * kp, src + ow * sw * ch, (size_t)ch);
                    }
                }
                for (int64_t ow = 0; ow < out_w; ow++) /* against the weight's zero padding: any value */
                    for (int64_t t = k; t < kp; t++) row_cols[ow * kp + t] = flip;
            }
            a.x = cols;
            a.wp = c->out_w;
            a.c = c->kp;
            a.kh = a.kw = a.sh = a.sw = a.dh = a.dw = 1;
        }
        c->kt->static_conv(&a);
    }
done:
    free(rows);
    free(cols);
}

/* The direct path's context for batch images: 1 when it applies (one group, no weight
 * zero-points), 0 to take the im2col + GEMM path, -1 out of memory; *zcol is the caller's
 * to free.  Items are rows_per_item output rows of one image (batch * per_image items). */
static int direct_prepare(const int8_t *x, int64_t batch, int64_t channels, int64_t height, int64_t width,
                          int64_t kh, int64_t kw, int64_t sh, int64_t sw, int64_t ph, int64_t pw, int64_t dh,
                          int64_t dw, int64_t groups, const int8_t *packed, const int32_t *w_sum,
                          const float *x_w_scale, const int32_t *w_zp, const float *bias, int64_t n, float act_lo,
                          float act_hi, float inv_out_scale, int x_zp, int out_zp, int8_t *y_q, float *y_f32,
                          int64_t rows_per_item, direct_ctx *c, int32_t **zcol) {
    const mq_kernels *kt = mq_active();
    if (!kt->static_conv || groups != 1 || w_zp) return 0;
    const int64_t out_h = mq_conv_out(height, kh, sh, ph, dh);
    const int64_t out_w = mq_conv_out(width, kw, sw, pw, dw);
    const int64_t k = channels * kh * kw, kp = mq_round_up(k, MQ_KGROUP), np = mq_round_up(n, MQ_PANEL);
    int32_t *z = calloc((size_t)(2 * np), sizeof(int32_t)); /* zcol, then the unsigned kernel's zeros */
    if (!z) return -1;
    const int64_t shift = x_zp + (kt->static_conv_x_u8 ? 128 : 0); /* |shift * colsum| < 2^31 for k <= 32768 */
    for (int64_t j = 0; j < np; j++) z[j] = (int32_t)(shift * (int64_t)w_sum[j]);
    rows_per_item = rows_per_item < 1 ? 1 : rows_per_item > out_h ? out_h : rows_per_item;
    /* the split kernel (AVX2 without VNNI); by its rules on symmetric codes only (a ReLU output's
     * zero-point -127 puts most pairs at -254) */
    const int split = mq_conv_split_mode(kt, channels, n, x_zp == 0);
    /* the unsigned-codes kernel (AVX2 without VNNI) on items whose codes x - x_zp it takes: whole
     * K-groups per tap (the im2col blocks' pairs straddle taps) */
    const int ux = mq_conv_ux_on(kt) && channels % MQ_KGROUP == 0;
    *c = (direct_ctx){kt, x, channels, height, width, kh, kw, sh, sw, ph, pw, dh, dw, out_h, out_w, k, kp,
                      rows_per_item, (out_h + rows_per_item - 1) / rows_per_item, channels % MQ_KGROUP != 0, packed,
                      z, x_w_scale, bias, n, act_lo, act_hi, inv_out_scale, x_zp, out_zp, y_q, y_f32, split, ux,
                      z + np, 0};
    (void)batch;
    *zcol = z;
    return 1;
}

/* The direct path, when it applies: 1 when done, 0 to take the im2col + GEMM path, -1 out
 * of memory. */
static int conv2d_direct(const int8_t *x, int64_t batch, int64_t channels, int64_t height, int64_t width,
                         int64_t kh, int64_t kw, int64_t sh, int64_t sw, int64_t ph, int64_t pw, int64_t dh,
                         int64_t dw, int64_t groups, const int8_t *packed, const int32_t *w_sum,
                         const float *x_w_scale, const int32_t *w_zp, const float *bias, int64_t n, float act_lo,
                         float act_hi, float inv_out_scale, int x_zp, int out_zp, int8_t *y_q, float *y_f32,
                         int nthreads) {
    const int64_t out_h = mq_conv_out(height, kh, sh, ph, dh);
    const int64_t out_w = mq_conv_out(width, kw, sw, pw, dw);
    if (!mq_active()->static_conv || groups != 1 || w_zp) return 0;
    if (batch <= 0 || out_h <= 0 || out_w <= 0) return 1;
    /* items: whole images, or row blocks when the batch leaves threads idle */
    int64_t per_image = 1;
    if (nthreads > 1 && batch < 2 * nthreads) per_image = (2 * nthreads + batch - 1) / batch;
    if (per_image > out_h) per_image = out_h;
    direct_ctx c;
    int32_t *zcol = NULL;
    const int ready = direct_prepare(x, batch, channels, height, width, kh, kw, sh, sw, ph, pw, dh, dw, groups,
                                     packed, w_sum, x_w_scale, w_zp, bias, n, act_lo, act_hi, inv_out_scale, x_zp,
                                     out_zp, y_q, y_f32, (out_h + per_image - 1) / per_image, &c, &zcol);
    if (ready <= 0) return ready;
    per_image = c.items_per_image;
    const int64_t work = c.rows_per_item * out_w * c.k * n; /* multiply-adds per item */
    mq_parallel_for(batch * per_image, work >= ((int64_t)1 << 17) ? 1 : tiny_items_chunk(work), nthreads,
                    direct_range, &c);
    free(zcol);
    return c.failed ? -1 : 1;
}

/* ---- depthwise ------------------------------------------------------------------------ */

typedef struct {
    const int8_t *x, *w;
    const int32_t *w_zp;
    const float *x_w_scale, *bias;
    int64_t channels, height, width, kh, kw, sh, sw, ph, pw, dh, dw, out_h, out_w;
    float act_lo, act_hi, inv_out_scale;
    int x_zp, out_zp;
    int8_t *y_q;
    float *y_f32;
    int failed; /* set (atomically) by a range that could not allocate its sums */
    mq_static_dw_fn kernel; /* the table's, read once per call */
    /* the weight's forms the kernels read, made once per call by dw_prepare (one buffer, prep) */
    char *prep;
    const int16_t *w16, *w_pairs;
    const int32_t *x_zp_sum;
    const int8_t *x_zp_row;
} depthwise_ctx;

/* The reference: int32 sums per channel of (x - x_zp) * w over the taps inside the image
 * (padding is x_zp: it adds 0), channels innermost (NHWC), which the compiler vectorizes. */
void mq_ref_static_dw(const mq_static_dw_args *a, int64_t begin, int64_t end) {
    const int64_t ch = a->channels;
    int32_t *restrict acc = a->scratch;
    const int16_t xz = (int16_t)a->x_zp;
    for (int64_t r = begin; r < end; r++) {
        const int64_t b = r / a->out_h, oh = r % a->out_h;
        for (int64_t ow = 0; ow < a->out_w; ow++) {
            memset(acc, 0, (size_t)ch * sizeof(int32_t));
            for (int64_t i = 0; i < a->kh; i++) {
                const int64_t ih = oh * a->sh - a->ph + i * a->dh;
                if (ih < 0 || ih >= a->height) continue;
                for (int64_t j = 0; j < a->kw; j++) {
                    const int64_t iw = ow * a->sw - a->pw + j * a->dw;
                    if (iw < 0 || iw >= a->width) continue;
                    const int8_t *restrict xs = a->x + ((b * a->height + ih) * a->width + iw) * ch;
                    const int16_t *restrict ws = a->w + (i * a->kw + j) * ch;
                    for (int64_t q = 0; q < ch; q++) acc[q] += (int32_t)((int16_t)xs[q] - xz) * ws[q];
                }
            }
            const int64_t o = ((b * a->out_h + oh) * a->out_w + ow) * ch;
            for (int64_t q = 0; q < ch; q++) {
                float y = (float)acc[q] * a->x_w_scale[q];
                if (a->bias) y += a->bias[q];
                const float v = activate(y, a->act_lo, a->act_hi);
                if (a->y_q)
                    a->y_q[o + q] = requantize(v, a->inv_out_scale, a->out_zp);
                else
                    a->y_f32[o + q] = v;
            }
        }
    }
}

/* The weight's int16 forms (w - w_zp; the SIMD twins' tap pairs where one will read them), the
 * zero-point's sums and row, in one buffer made once per call (per image's node in the program):
 * 0, or -1 out of memory. */
static int dw_prepare(depthwise_ctx *c) {
    const int64_t ch = c->channels, taps = c->kh * c->kw, pairs = (taps + 1) / 2;
    /* (the pairs only for a SIMD twin that reads them: they doubled the buffer of a large kernel) */
    const int64_t blocks = c->kernel != mq_ref_static_dw && taps <= MQ_DW_SIMD_MAX_TAPS ? ch / 16 : 0;
    const size_t sums_bytes = (size_t)ch * sizeof(int32_t), w_bytes = (size_t)(taps * ch) * sizeof(int16_t);
    const size_t pairs_bytes = (size_t)(pairs * blocks * 32) * sizeof(int16_t);
    char *buf = malloc(sums_bytes + w_bytes + pairs_bytes + (size_t)ch + 1);
    if (!buf) return -1;
    int32_t *x_zp_sum = (int32_t *)(void *)buf;
    int16_t *w = (int16_t *)(void *)(buf + sums_bytes), *w_pairs = (int16_t *)(void *)(buf + sums_bytes + w_bytes);
    int8_t *x_zp_row = (int8_t *)(buf + sums_bytes + w_bytes + pairs_bytes);
    for (int64_t q = 0; q < ch; q++) x_zp_sum[q] = 0;
    for (int64_t t = 0; t < taps; t++)
        for (int64_t q = 0; q < ch; q++) {
            w[t * ch + q] = (int16_t)(c->w[t * ch + q] - (c->w_zp ? c->w_zp[q] : 0));
            x_zp_sum[q] += w[t * ch + q];
        }
    for (int64_t q = 0; q < ch; q++) x_zp_sum[q] *= c->x_zp; /* |x_zp * sum| < 127 * 255 * MQ_MAX_DEPTHWISE_TAPS */
    static const int lane_channel[16] = {0, 1, 2, 3, 8, 9, 10, 11, 4, 5, 6, 7, 12, 13, 14, 15};
    for (int64_t p = 0; p < pairs; p++)
        for (int64_t bl = 0; bl < blocks; bl++)
            for (int l = 0; l < 16; l++) {
                const int64_t q = bl * 16 + lane_channel[l];
                int16_t *dst = w_pairs + (p * blocks + bl) * 32 + 2 * l;
                dst[0] = w[2 * p * ch + q];
                dst[1] = 2 * p + 1 < taps ? w[(2 * p + 1) * ch + q] : 0;
            }
    memset(x_zp_row, c->x_zp, (size_t)ch);
    c->prep = buf;
    c->w16 = w;
    c->w_pairs = blocks ? w_pairs : NULL;
    c->x_zp_sum = x_zp_sum;
    c->x_zp_row = x_zp_row;
    return 0;
}

/* Work items are output rows (image, oh): the table's kernel on the range's rows. */
static void depthwise_range(void *vctx, int64_t begin, int64_t end) {
    depthwise_ctx *c = vctx;
    int32_t *scratch = malloc((size_t)(c->channels > 0 ? c->channels : 1) * sizeof(int32_t));
    if (!scratch) {
        __atomic_store_n(&c->failed, 1, __ATOMIC_RELAXED);
        return;
    }
    const mq_static_dw_args a = {c->x, c->channels, c->height, c->width, c->kh, c->kw, c->sh, c->sw, c->ph, c->pw,
                                 c->dh, c->dw, c->out_h, c->out_w, c->w16, c->w_pairs, c->x_zp_sum, c->x_zp_row,
                                 c->x_zp, c->x_w_scale, c->bias, c->act_lo, c->act_hi, c->inv_out_scale, c->out_zp,
                                 c->y_q, c->y_f32, scratch};
    c->kernel(&a, begin, end);
    free(scratch);
}

int mq_depthwise_static(const int8_t *x, int64_t batch, int64_t channels, int64_t height, int64_t width, int64_t kh,
                         int64_t kw, int64_t sh, int64_t sw, int64_t ph, int64_t pw, int64_t dh, int64_t dw,
                         const int8_t *w, const int32_t *w_zp, const float *x_w_scale, const float *bias, float act_lo,
                         float act_hi, float inv_out_scale, int x_zp, int out_zp, int8_t *y_q, float *y_f32,
                         int nthreads) {
    const int64_t out_h = mq_conv_out(height, kh, sh, ph, dh);
    const int64_t out_w = mq_conv_out(width, kw, sw, pw, dw);
    depthwise_ctx c = {x, w, w_zp, x_w_scale, bias, channels, height, width, kh, kw, sh, sw, ph, pw, dh, dw,
                       out_h, out_w, act_lo, act_hi, inv_out_scale, x_zp, out_zp, y_q, y_f32, 0,
                       mq_active()->static_dw, NULL, NULL, NULL, NULL, NULL};
    if (dw_prepare(&c) < 0) return -1;
    const int64_t per_row = out_w * channels * kh * kw;
    mq_parallel_for(batch * out_h, 1 + ((int64_t)1 << 16) / (per_row + 1), nthreads, depthwise_range, &c);
    free(c.prep);
    return c.failed ? -1 : 0;
}

/* ---- residual add ------------------------------------------------------------------- */

typedef struct {
    mq_static_add_fn add; /* the call's level, for every chunk */
    const int8_t *a, *b;
    float a_scale, b_scale, act_lo, act_hi, inv_out_scale;
    int a_zp, b_zp, out_zp;
    int8_t *y_q;
    float *y_f32;
} add_ctx;

/* (a - a_zp) and (b - b_zp) are exact in fp32; two products then one sum, never fused
 * (-ffp-contract=off): the torch reference's order.  The scalar twin of the table's static_add. */
void mq_ref_static_add(const int8_t *a, float sa, int za, const int8_t *b, float sb, int zb, int64_t n, float lo,
                       float hi, float inv, int zo, int8_t *y_q, float *y_f32) {
    if (y_q)
        for (int64_t i = 0; i < n; i++)
            y_q[i] = requantize(activate((float)(a[i] - za) * sa + (float)(b[i] - zb) * sb, lo, hi), inv, zo);
    else
        for (int64_t i = 0; i < n; i++) y_f32[i] = activate((float)(a[i] - za) * sa + (float)(b[i] - zb) * sb, lo, hi);
}

static void add_range(void *vctx, int64_t begin, int64_t end) {
    const add_ctx *c = vctx;
    c->add(c->a + begin, c->a_scale, c->a_zp, c->b + begin, c->b_scale, c->b_zp, end - begin, c->act_lo, c->act_hi,
           c->inv_out_scale, c->out_zp, c->y_q ? c->y_q + begin : NULL, c->y_f32 ? c->y_f32 + begin : NULL);
}

void mq_add_static(const int8_t *a, float a_scale, int a_zp, const int8_t *b, float b_scale, int b_zp, int64_t n,
                   float act_lo, float act_hi, float inv_out_scale, int out_zp, int8_t *y_q, float *y_f32,
                   int nthreads) {
    add_ctx c = {mq_active()->static_add, a, b, a_scale, b_scale, act_lo, act_hi, inv_out_scale, a_zp, b_zp, out_zp,
                 y_q, y_f32};
    mq_parallel_for(n, (int64_t)1 << 16, nthreads, add_range, &c);
}

/* ---- global average pool -------------------------------------------------------------- */

int mq_avgpool_static(const int8_t *x, int x_zp, int64_t batch, int64_t pixels, int64_t channels, float mul,
                      float act_lo, float act_hi, float inv_out_scale, int out_zp, int8_t *y_q, float *y_f32) {
    int32_t *sum = malloc((size_t)(channels > 0 ? channels : 1) * sizeof(int32_t));
    if (!sum) return -1;
    for (int64_t b = 0; b < batch; b++) {
        memset(sum, 0, (size_t)channels * sizeof(int32_t));
        for (int64_t p = 0; p < pixels; p++) {
            const int8_t *src = x + (b * pixels + p) * channels;
            for (int64_t q = 0; q < channels; q++) sum[q] += src[q];
        }
        for (int64_t q = 0; q < channels; q++) {
            const float v = activate((float)((int64_t)sum[q] - x_zp * pixels) * mul, act_lo, act_hi);
            if (y_q)
                y_q[b * channels + q] = requantize(v, inv_out_scale, out_zp);
            else
                y_f32[b * channels + q] = v;
        }
    }
    free(sum);
    return 0;
}

/* ---- one image's node as independent pieces (static_program.c's split of one image) ---- */

/* What mq_static_work points at: the kernel's own range function and context, over items of
 * `unit` of its work items (rows, values), the last one cut at n. */
typedef struct {
    mq_range_fn fn;
    void *inner;
    int64_t unit, n;
    int *failed;
    int32_t *zcol;
    void *owned; /* another buffer the work owns (freed with it) */
    union {
        direct_ctx conv;
        depthwise_ctx depthwise;
        add_ctx add;
    } k;
} work_box;

static void run_units(void *vbox, int64_t begin, int64_t end) {
    work_box *w = vbox;
    const int64_t lo = begin * w->unit, hi = end * w->unit < w->n ? end * w->unit : w->n;
    if (lo < hi) w->fn(w->inner, lo, hi);
}

static int no_failure = 0; /* the add cannot fail: its pieces allocate nothing */

static int work_box_new(mq_static_work *out, work_box **box) {
    *box = calloc(1, sizeof(work_box));
    if (!*box) return -1;
    *out = (mq_static_work){run_units, *box, 0, NULL};
    return 0;
}

static void work_box_items(mq_static_work *out, work_box *w, mq_range_fn fn, void *inner, int64_t unit, int64_t n,
                           int *failed) {
    w->fn = fn, w->inner = inner, w->unit = unit, w->n = n, w->failed = failed;
    out->items = n > 0 ? (n + unit - 1) / unit : 0;
    out->failed = failed;
}

int mq_conv2d_static_work(const int8_t *x, int64_t channels, int64_t height, int64_t width, int64_t kh, int64_t kw,
                          int64_t sh, int64_t sw, int64_t ph, int64_t pw, int64_t dh, int64_t dw,
                          const int8_t *packed, const int32_t *w_sum, const float *x_w_scale, const float *bias,
                          int64_t n, float act_lo, float act_hi, float inv_out_scale, int x_zp, int out_zp,
                          int8_t *y_q, float *y_f32, int64_t items, mq_static_work *work) {
    const int64_t out_h = mq_conv_out(height, kh, sh, ph, dh);
    work_box *w;
    if (!mq_active()->static_conv || out_h <= 0) return 0;
    if (work_box_new(work, &w) < 0) return -1;
    items = items < 1 ? 1 : items > out_h ? out_h : items;
    const int ready = direct_prepare(x, 1, channels, height, width, kh, kw, sh, sw, ph, pw, dh, dw, 1, packed, w_sum,
                                     x_w_scale, NULL, bias, n, act_lo, act_hi, inv_out_scale, x_zp, out_zp, y_q,
                                     y_f32, (out_h + items - 1) / items, &w->k.conv, &w->zcol);
    if (ready <= 0) {
        free(w);
        return ready;
    }
    work_box_items(work, w, direct_range, &w->k.conv, 1, w->k.conv.items_per_image, &w->k.conv.failed);
    return 1;
}

int mq_depthwise_static_work(const int8_t *x, int64_t channels, int64_t height, int64_t width, int64_t kh,
                             int64_t kw, int64_t sh, int64_t sw, int64_t ph, int64_t pw, int64_t dh, int64_t dw,
                             const int8_t *wt, const float *x_w_scale, const float *bias, float act_lo, float act_hi,
                             float inv_out_scale, int x_zp, int out_zp, int8_t *y_q, float *y_f32, int64_t items,
                             mq_static_work *work) {
    const int64_t out_h = mq_conv_out(height, kh, sh, ph, dh);
    const int64_t out_w = mq_conv_out(width, kw, sw, pw, dw);
    work_box *w;
    if (work_box_new(work, &w) < 0) return -1;
    w->k.depthwise = (depthwise_ctx){x, wt, NULL, x_w_scale, bias, channels, height, width, kh, kw, sh, sw, ph, pw,
                                     dh, dw, out_h, out_w, act_lo, act_hi, inv_out_scale, x_zp, out_zp, y_q, y_f32, 0,
                                     mq_active()->static_dw, NULL, NULL, NULL, NULL, NULL};
    if (dw_prepare(&w->k.depthwise) < 0) {
        free(w);
        work->ctx = NULL;
        return -1;
    }
    w->owned = w->k.depthwise.prep; /* (freed by mq_static_work_free) */
    items = items < 1 ? 1 : items > out_h ? out_h : items;
    work_box_items(work, w, depthwise_range, &w->k.depthwise, (out_h + items - 1) / items, out_h,
                   &w->k.depthwise.failed);
    return 1;
}

int mq_add_static_work(const int8_t *a, float a_scale, int a_zp, const int8_t *b, float b_scale, int b_zp, int64_t n,
                       float act_lo, float act_hi, float inv_out_scale, int out_zp, int8_t *y_q, float *y_f32,
                       int64_t items, mq_static_work *work) {
    work_box *w;
    if (work_box_new(work, &w) < 0) return -1;
    w->k.add = (add_ctx){mq_active()->static_add, a, b, a_scale, b_scale, act_lo, act_hi, inv_out_scale,
                         a_zp, b_zp, out_zp, y_q, y_f32};
    items = items < 1 ? 1 : items;
    const int64_t unit = mq_round_up((n + items - 1) / items, 64); /* whole cache lines per piece */
    work_box_items(work, w, add_range, &w->k.add, unit > 0 ? unit : 64, n, &no_failure);
    return 1;
}

void mq_static_work_free(mq_static_work *work) {
    work_box *w = work->ctx;
    if (w) {
        free(w->zcol);
        free(w->owned);
    }
    free(w);
    work->ctx = NULL;
}
