/* conv_dynamic_direct.c - the dynamic int8 conv on the static path's direct conv kernel.
 *
 * The im2col route (linear.c) runs four parallel regions per call (quantize the images, int8
 * im2col, GEMM, NCHW copy-back), each too short on a small CNN's layers to gain from a second
 * thread, and writes kh*kw copies of every image.  Here each image is quantized straight into
 * padded, encoded NHWC rows, the table's static_conv (x86/static_conv256.h, VNNI or maddubs;
 * mq_ref_static_conv at the scalar level) reads them with no im2col, and the same thread writes
 * the image's NCHW result: one region per call, whole images per thread (or, when the batch
 * is smaller than twice the threads, blocks of output rows after the images are quantized).
 * Channels that are not a multiple of 4 (a first layer's 1 or 3): the packed weight's K-groups
 * then straddle taps, so blocks of output rows are im2col'd from the padded rows into a small
 * buffer (kp bytes per pixel, the packed K order) and fed to the same kernel as a 1x1 conv, as
 * the static path does (static_int8.c): the weight is used as packed, never re-packed.
 * AVX2 without VNNI, per image: codes that are all >= 0 (a post-ReLU image, reduce_range's) go to
 * the table's static_conv_ux (the codes as vpmaddubsw's unsigned side: no sign trick, nothing to
 * correct); images of both signs to the split kernel by its rules (conv_split.c), else the sign trick.
 *
 * Bits: the kernel is given xw = 1 and no bias, so it writes (float)acc exactly (acc: the
 * exact int32 sum, the encoding's +128 removed through zcol); the epilogue here then computes
 * y = (float)acc * (x_scale * w_scale[n]) + bias[n] in fp32 in that order, without FMA, as the
 * GEMM's (mq_ref_qgemm): the im2col route's results, bit for bit, at every level.  Plain C in
 * the baseline unit; the only ISA-dependent part is the kernel, whose sums are exact. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "conv_dynamic_direct.h"
#include "conv_profile.h"
#include "conv_split.h"
#include "size_check.h"

int mq_conv_direct_enabled = 1;

int mq_conv2d_dynamic_direct_applies(int64_t channels, int64_t groups, int64_t kh, int64_t kw, int64_t ph,
                                     int64_t pw, int64_t dh, int64_t dw, int has_w_zp) {
    if (!__atomic_load_n(&mq_conv_direct_enabled, __ATOMIC_RELAXED) || !mq_active()->static_conv) return 0;
    if (groups != 1 || has_w_zp || channels <= 0) return 0;
    if (kh <= 0 || kw <= 0 || dh <= 0 || dw <= 0 || ph < 0 || pw < 0) return 0;
    /* the image is copied padded: padding far past what a tap can reach ((k - 1) * d) would make
     * that copy as large as the padding, not the image (the im2col route reads padding as zeros);
     * a few more (a 3x1 kernel given padding=1) cost little */
    if (ph > (kh - 1) * dh + MQ_DIRECT_EXTRA_PAD || pw > (kw - 1) * dw + MQ_DIRECT_EXTRA_PAD) return 0;
    return channels <= 32768 / kh / kw; /* k <= 32768: exact int32 sums */
}

typedef struct {
    const mq_kernels *kt;
    const uint8_t *x;
    mq_src_t kind;
    int64_t channels, height, width, kh, kw, sh, sw, ph, pw, dh, dw, out_h, out_w, wp, image, padded_bytes;
    int64_t k, kp;        /* the reduction, and rounded up to whole K-groups (the packed weight's) */
    int64_t cols_rows;    /* channels % 4: output rows per im2col block (about 32 KiB); 0 otherwise */
    const int8_t *packed;
    const int32_t *w_sum;
    const float *w_scale, *bias;
    int64_t n, np;
    const float *ones;    /* [np] 1.0f: the kernel's xw, so that it writes (float)acc */
    const int32_t *zcol;  /* [np] the encoding's shift times w_sum (symmetric); per image with reduce_range */
    int reduce_range;
    uint8_t flip;         /* 0x80 when the kernel reads int8 + 128 */
    float *y;
    int nchw;
    int64_t rows_per_item, items_per_image;
    uint8_t *pre;         /* row blocks: [batch][padded_bytes] the images quantized first; else NULL */
    float *pre_scale;     /* [batch] with pre */
    int32_t *pre_zp;      /* [batch] with pre */
    mq_conv_split *pre_split; /* [batch] with pre and split */
    uint8_t *pre_ux;      /* [batch] with pre and ux: whether image b's codes are all >= 0 */
    int split;            /* 0: the sign trick; 1 / 2: the table's dconv_split, by the rules / always */
    int ux;               /* the table's static_conv_ux on images whose codes are all >= 0 */
    mq_conv_split_geometry geometry; /* with split */
    int failed;
} direct_ctx;

/* Image b quantized as linear.c's quantize_images does (the same kernels and arguments: the
 * same codes) into padded NHWC rows [height + 2 ph][wp][channels], encoded for the kernel,
 * the padding holding the code of 0 (the zero-point).  *nonneg: 1 when every code is >= 0
 * (reduce_range's 7-bit codes; a symmetric image's when its least value is >= 0). */
static void quantize_padded(const direct_ctx *c, int64_t b, int8_t *restrict q, uint8_t *restrict padded,
                            float *scale_out, int32_t *zp_out, int *nonneg) {
    const int64_t plane = c->height * c->width, ch = c->channels, wp = c->wp;
    const uint8_t *src = c->x + (size_t)(b * c->image) * mq_src_size(c->kind);
    float mn, mx, scale;
    int32_t zp = 0;
    if (c->kt->minmax[c->kind](src, c->image, &mn, &mx)) { /* NaN/Inf: the image's outputs become NaN */
        memset(padded, c->flip, (size_t)c->padded_bytes);
        *scale_out = NAN;
        *zp_out = 0;
        *nonneg = 0;
        return;
    }
    if (c->reduce_range) { /* 7-bit codes 0..127 with a zero-point */
        mq_choose_qparams(mn, mx, 0, 127, 0, &scale, &zp);
        c->kt->quantize[c->kind](src, c->image, 1.0f / scale, (float)zp, 0.0f, 127.0f, 0, (uint8_t *)q);
    } else {
        mq_choose_qparams(mn, mx, -127, 127, 1, &scale, &zp);
        c->kt->quantize[c->kind](src, c->image, 1.0f / scale, 0.0f, -127.0f, 127.0f, 0, (uint8_t *)q);
    }
    *scale_out = scale;
    *zp_out = zp;
    *nonneg = c->reduce_range || mn >= 0.0f;
    const uint8_t flip = c->flip, pad = (uint8_t)(int8_t)zp ^ flip;
    const int64_t row_bytes = wp * ch;
    memset(padded, pad, (size_t)(c->ph * row_bytes)); /* the rows above and below */
    memset(padded + (c->ph + c->height) * row_bytes, pad, (size_t)(c->ph * row_bytes));
    if (c->pw == 0) { /* the image's rows are adjacent in both layouts: one transpose of the plane */
        c->kt->nhwc_bytes((const uint8_t *)q, plane, ch, plane, flip, padded + c->ph * row_bytes);
        return;
    }
    for (int64_t ih = 0; ih < c->height; ih++) {
        uint8_t *restrict row = padded + (c->ph + ih) * row_bytes;
        memset(row, pad, (size_t)(c->pw * ch));
        memset(row + (c->pw + c->width) * ch, pad, (size_t)(c->pw * ch));
        c->kt->nhwc_bytes((const uint8_t *)q + ih * c->width, plane, ch, c->width, flip, row + c->pw * ch);
    }
}

/* Output rows [oh0, oh0 + nr) of an image's padded rows as im2col rows [nr * out_w][kp] in the
 * packed K order (kh, kw, channel), the kp - k bytes after them any value (the weight's zero
 * padding).  Taps are written in increasing order per pixel, so a copy that spills a few bytes
 * into the next tap's place is overwritten by it; the last tap's spill lands in the K padding
 * (the conditions below), and reads pass the padded rows' end by at most 3 bytes (DIRECT_SLACK). */
static void im2col_rows(const direct_ctx *c, const uint8_t *restrict padded, int64_t oh0, int64_t nr,
                        uint8_t *restrict cols) {
    const int64_t ch = c->channels, kp = c->kp, k = c->k, kh = c->kh, kw = c->kw, sw = c->sw, dw = c->dw;
    const int64_t out_w = c->out_w, row_bytes = c->wp * ch, chunk = mq_round_up(ch, 4);
    /* one channel, unit steps: a tap row's kw bytes are adjacent, copied as one 4-byte word */
    const int row_words = ch == 1 && sw == 1 && dw == 1 && kw <= 4 && k - kw + 4 <= kp;
    /* any channel count: a tap's ch bytes copied as chunk / 4 words */
    const int tap_words = k + chunk - ch <= kp;
    for (int64_t r = 0; r < nr; r++) {
        uint8_t *restrict row_cols = cols + r * out_w * kp;
        for (int64_t i = 0; i < kh; i++) {
            const uint8_t *restrict src_row = padded + ((oh0 + r) * c->sh + i * c->dh) * row_bytes;
            if (row_words) {
                for (int64_t ow = 0; ow < out_w; ow++) memcpy(row_cols + ow * kp + i * kw, src_row + ow, 4);
                continue;
            }
            for (int64_t j = 0; j < kw; j++) {
                const uint8_t *restrict src = src_row + j * dw * ch;
                uint8_t *restrict dst = row_cols + (i * kw + j) * ch;
                if (tap_words && chunk == 4) {
                    for (int64_t ow = 0; ow < out_w; ow++) memcpy(dst + ow * kp, src + ow * sw * ch, 4);
                } else if (tap_words) {
                    for (int64_t ow = 0; ow < out_w; ow++)
                        for (int64_t t = 0; t < chunk; t += 4) memcpy(dst + ow * kp + t, src + ow * sw * ch + t, 4);
                } else {
                    for (int64_t ow = 0; ow < out_w; ow++)
                        for (int64_t t = 0; t < ch; t++) dst[ow * kp + t] = src[ow * sw * ch + t];
                }
            }
        }
        for (int64_t ow = 0; ow < out_w; ow++) /* defined bytes against the weight's zero padding */
            for (int64_t t = k; t < kp; t++) row_cols[ow * kp + t] = c->flip;
    }
}

/* The kernel on output rows [oh0, oh0 + nr) of one image, then the epilogue into y. */
static void conv_rows(const direct_ctx *c, const uint8_t *padded, int64_t b, int64_t oh0, int64_t nr, float scale,
                      int32_t zp, int ux, const mq_conv_split *split, float *restrict acc_f, float *restrict s,
                      int32_t *restrict zcol_image, uint8_t *restrict cols) {
    const int64_t n = c->n, pixels = c->out_h * c->out_w, p0 = oh0 * c->out_w, np = nr * c->out_w;
    const int32_t *zcol = c->zcol;
    if (c->reduce_range) { /* (zp + shift) * w_sum: |.| <= 255 * 128 * 32768 < 2^31 */
        const int64_t shift = zp + (c->flip ? 128 : 0);
        for (int64_t j = 0; j < c->np; j++) zcol_image[j] = (int32_t)(shift * (int64_t)c->w_sum[j]);
        zcol = zcol_image;
    }
    float *out = c->nchw ? acc_f : c->y + (b * pixels + p0) * n;
    const mq_static_conv_fn conv = ux ? c->kt->static_conv_ux : c->kt->static_conv;
    int64_t t = mq_conv_profile_start();
    if (!c->cols_rows) {
        mq_static_conv_args a = {padded + oh0 * c->sh * c->wp * c->channels, c->wp, c->channels, c->kh, c->kw, c->sh,
                                 c->sw, c->dh, c->dw, nr, c->out_w, c->packed, n, zcol, c->ones, NULL, -INFINITY,
                                 INFINITY, 1.0f, 0, NULL, out, NULL, NULL, NULL};
        if (split && split->shift) { /* the image's codes were split (conv_split.c) */
            a.pix_shift = split->shift + p0;
            a.corr_at = split->corr_at + p0;
            a.corr = split->corr;
            c->kt->dconv_split(&a);
        } else {
            conv(&a);
        }
    } else { /* im2col blocks, each a 1x1 conv of kp channels over rn rows of out_w pixels */
        for (int64_t r0 = 0; r0 < nr; r0 += c->cols_rows) {
            const int64_t rn = nr - r0 < c->cols_rows ? nr - r0 : c->cols_rows;
            im2col_rows(c, padded, oh0 + r0, rn, cols);
            mq_static_conv_args a = {cols, c->out_w, c->kp, 1, 1, 1, 1, 1, 1, rn, c->out_w, c->packed, n, zcol,
                                     c->ones, NULL, -INFINITY, INFINITY, 1.0f, 0, NULL, out + r0 * c->out_w * n,
                                     NULL, NULL, NULL};
            conv(&a);
        }
    }
    mq_conv_profile_stop(MQ_CONV_THREAD_CONV, t);
    t = mq_conv_profile_start();
    for (int64_t j = 0; j < n; j++) s[j] = scale * c->w_scale[j]; /* the GEMM's x_scale * w_scale */
    const float *restrict bias = c->bias;
    if (!c->nchw) {
        for (int64_t p = 0; p < np; p++) {
            float *restrict row = out + p * n;
            for (int64_t j = 0; j < n; j++) row[j] = row[j] * s[j];
            if (bias)
                for (int64_t j = 0; j < n; j++) row[j] = row[j] + bias[j];
        }
    } else { /* [pixel][n] -> [n][pixel] */
        c->kt->nchw_f32(acc_f, np, n, s, bias, c->y + b * n * pixels + p0, pixels);
    }
    mq_conv_profile_stop(MQ_CONV_THREAD_EPILOGUE, t);
}

/* A piece's buffers: the image's int8 codes, its padded rows, the kernel's fp32 sums, the
 * per-column scales and (reduce_range) zcol.  NULL members where the piece needs none. */
typedef struct {
    int8_t *q;
    uint8_t *padded;
    float *acc_f, *s;
    int32_t *zcol;
    uint8_t *cols;
} piece_buffers;

/* Bytes past the padded rows that im2col_rows' 4-byte copies may read (never use). */
#define DIRECT_SLACK 4

/* malloc that never asks for 0 bytes (an image with no pixels, only padding: malloc(0) may be NULL). */
static void *alloc_bytes(size_t bytes) { return malloc(bytes ? bytes : 1); }

static int buffers_get(const direct_ctx *c, piece_buffers *p, int quantize, int64_t rows) {
    memset(p, 0, sizeof *p);
    if (quantize) {
        p->q = alloc_bytes(mq_alloc_bytes(c->image, 1, 64));
        p->padded = alloc_bytes(mq_alloc_bytes(mq_size_add(c->padded_bytes, DIRECT_SLACK), 1, 64));
        if (!p->q || !p->padded) return -1;
    }
    if (rows > 0) {
        p->acc_f = c->nchw ? malloc(mq_alloc_bytes(mq_size_mul(rows, c->out_w), c->n * (int64_t)sizeof(float), 64))
                           : NULL;
        p->s = malloc(mq_alloc_bytes(c->n, sizeof(float), 64));
        p->zcol = c->reduce_range ? malloc(mq_alloc_bytes(c->np, sizeof(int32_t), 64)) : NULL;
        p->cols = c->cols_rows ? malloc(mq_alloc_bytes(mq_size_mul(c->cols_rows, c->out_w), c->kp, 64)) : NULL;
        if ((c->nchw && !p->acc_f) || !p->s || (c->reduce_range && !p->zcol) || (c->cols_rows && !p->cols))
            return -1;
    }
    return 0;
}

static void buffers_free(piece_buffers *p) {
    free(p->q);
    free(p->padded);
    free(p->acc_f);
    free(p->s);
    free(p->zcol);
    free(p->cols);
}

/* Items are whole images: quantize, convolve and write back each on this thread. */
static void images_range(void *vctx, int64_t begin, int64_t end) {
    direct_ctx *c = vctx;
    piece_buffers p;
    if (buffers_get(c, &p, 1, c->out_h) < 0) {
        __atomic_store_n(&c->failed, 1, __ATOMIC_RELAXED);
        buffers_free(&p);
        return;
    }
    for (int64_t b = begin; b < end; b++) {
        float scale;
        int32_t zp;
        int nonneg;
        const int64_t t = mq_conv_profile_start();
        quantize_padded(c, b, p.q, p.padded, &scale, &zp, &nonneg);
        const int ux = c->ux && nonneg;
        mq_conv_split split = {0};
        if (ux)
            mq_ux_conv_count();
        else if (c->split && mq_conv_split_image(c->kt, &c->geometry, p.padded, c->split == 1, &split))
            mq_split_conv_count();
        mq_conv_profile_stop(MQ_CONV_THREAD_QUANTIZE, t);
        conv_rows(c, p.padded, b, 0, c->out_h, scale, zp, ux, &split, p.acc_f, p.s, p.zcol, p.cols);
        mq_conv_split_free(&split);
    }
    buffers_free(&p);
}

/* Small batches, first region: every image into c->pre. */
static void prequantize_range(void *vctx, int64_t begin, int64_t end) {
    direct_ctx *c = vctx;
    int8_t *q = alloc_bytes(mq_alloc_bytes(c->image, 1, 64));
    if (!q) {
        __atomic_store_n(&c->failed, 1, __ATOMIC_RELAXED);
        return;
    }
    for (int64_t b = begin; b < end; b++) {
        int nonneg;
        quantize_padded(c, b, q, c->pre + b * c->padded_bytes, &c->pre_scale[b], &c->pre_zp[b], &nonneg);
        c->pre_ux[b] = (uint8_t)(c->ux && nonneg);
        if (c->pre_ux[b])
            mq_ux_conv_count();
        else if (c->split && mq_conv_split_image(c->kt, &c->geometry, c->pre + b * c->padded_bytes, c->split == 1,
                                                 &c->pre_split[b]))
            mq_split_conv_count();
    }
    free(q);
}

/* Small batches, second region: items are blocks of rows_per_item output rows of one image. */
static void blocks_range(void *vctx, int64_t begin, int64_t end) {
    direct_ctx *c = vctx;
    piece_buffers p;
    if (buffers_get(c, &p, 0, c->rows_per_item) < 0) {
        __atomic_store_n(&c->failed, 1, __ATOMIC_RELAXED);
        buffers_free(&p);
        return;
    }
    for (int64_t item = begin; item < end; item++) {
        const int64_t b = item / c->items_per_image, oh0 = item % c->items_per_image * c->rows_per_item;
        const int64_t nr = c->out_h - oh0 < c->rows_per_item ? c->out_h - oh0 : c->rows_per_item;
        conv_rows(c, c->pre + b * c->padded_bytes, b, oh0, nr, c->pre_scale[b], c->pre_zp[b], c->pre_ux[b],
                  c->pre_split ? &c->pre_split[b] : NULL, p.acc_f, p.s, p.zcol, p.cols);
    }
    buffers_free(&p);
}

/* Multiply-adds from which a work item is worth a thread of its own: a helper's wake-up
 * costs a few microseconds, about this much int8 work. */
#define MIN_ITEM_MACS ((int64_t)1 << 18)
#define MIN_CALL_MACS ((int64_t)1 << 24)

int mq_conv2d_dynamic_direct(const void *x, mq_src_t kind, int64_t batch, int64_t channels, int64_t height,
                             int64_t width, int64_t kh, int64_t kw, int64_t sh, int64_t sw, int64_t ph, int64_t pw,
                             int64_t dh, int64_t dw, int64_t groups, const int8_t *packed, const int32_t *w_sum,
                             const float *w_scale, const int32_t *w_zp, const float *bias, int64_t n, float *y,
                             int nchw, int reduce_range, int nthreads) {
    if (!mq_conv2d_dynamic_direct_applies(channels, groups, kh, kw, ph, pw, dh, dw, w_zp != NULL)) return 0;
    /* A 1-D conv (a Conv1d's height-1 image) runs standing up: the width-1 image of the same bytes
     * (NCHW planes [1][W] are [W][1], and so are the outputs), kernel (kw, 1).  The items below
     * split an image by output rows, so the lying image was one item (one thread) at batch 1.
     * The packed K order (kh, kw, channel) is the same when one of kh, kw is 1: the same sums. */
    if (height == 1 && kh == 1 && ph == 0 && width > 1) { /* (sh, dh: no effect on one output row) */
        height = width, kh = kw, sh = sw, ph = pw, dh = dw;
        width = 1, kw = 1, sw = 1, pw = 0, dw = 1;
    }
    const mq_kernels *kt = mq_active();
    const int64_t out_h = mq_conv_out(height, kh, sh, ph, dh);
    const int64_t out_w = mq_conv_out(width, kw, sw, pw, dw);
    const int64_t wp = width + 2 * pw, np = mq_round_up(n, MQ_PANEL), k = channels * kh * kw;
    const int64_t kp = mq_round_up(k, MQ_KGROUP);
    const int64_t image = mq_size_mul(mq_size_mul(channels, height), width);
    const int64_t padded_bytes = mq_size_mul(mq_size_mul(height + 2 * ph, wp), channels);
    if (batch <= 0 || out_h <= 0 || out_w <= 0 || n <= 0) return 1;
    if (image < 0 || padded_bytes < 0) return -1;
    /* channels % 4: im2col blocks of about 32 KiB (they stay in L1/L2 for the kernel); the row's
     * bytes checked (an empty batch may carry a width near 2^60: 2^64 wrapped to 0 divided by it) */
    int64_t cols_rows = 0;
    if (channels % MQ_KGROUP) {
        const int64_t row_bytes = mq_size_mul(out_w, kp);
        cols_rows = row_bytes > 0 && row_bytes <= ((int64_t)1 << 15) ? ((int64_t)1 << 15) / row_bytes : 1;
        cols_rows = cols_rows > out_h ? out_h : cols_rows;
    }
    const uint8_t flip = kt->static_conv_x_u8 ? 0x80u : 0u;
    float *ones = malloc(mq_alloc_bytes(np, sizeof(float), 64));
    int32_t *zcol = malloc(mq_alloc_bytes(np, sizeof(int32_t), 64));
    if (!ones || !zcol) {
        free(ones);
        free(zcol);
        return -1;
    }
    for (int64_t j = 0; j < np; j++) {
        ones[j] = 1.0f;
        /* |128 * w_sum| <= 2^29 for a packed weight; in 64 bits, so a bad w_sum from a caller wraps, no UB */
        zcol[j] = flip ? (int32_t)(128 * (int64_t)w_sum[j]) : 0;
    }
    const int64_t call_macs = mq_size_mul(mq_size_mul(mq_size_mul(batch, out_h), out_w), mq_size_mul(k, n));
    /* A call of fewer multiply-adds than this runs on the calling thread alone (linear.c's rule
     * for its calls): a woken helper costs more than it saves, and waits on one that the OS
     * deschedules cost a scheduler slice (ResNet8 at batch 1: each conv ~1.8M).  A stem conv
     * (k = 9 or 27) costs more per multiply-add (each output pixel's fixed costs); counting those
     * sent the 8x8 CNNs at batch 64 to two threads, 4x slower in a run under load (one, noisy). */
    if (call_macs >= 0 && call_macs < MIN_CALL_MACS) nthreads = 1;
    /* items: whole images, or blocks of output rows when the batch leaves threads idle */
    int64_t per_image = 1;
    if (nthreads > 1 && batch < 2 * nthreads) per_image = (2 * nthreads + batch - 1) / batch;
    if (per_image > out_h) per_image = out_h;
    const int64_t rows_per_item = (out_h + per_image - 1) / per_image;
    per_image = (out_h + rows_per_item - 1) / rows_per_item;
    direct_ctx c = {kt, x, kind, channels, height, width, kh, kw, sh, sw, ph, pw, dh, dw, out_h, out_w, wp, image,
                    padded_bytes, k, kp, cols_rows, packed, w_sum, w_scale, bias, n, np, ones, zcol, reduce_range,
                    flip, y, nchw, rows_per_item, per_image, NULL, NULL, NULL, NULL, NULL, 0, 0, {0}, 0};
    /* the split kernel (AVX2 without VNNI) on the symmetric 8-bit codes of images of both signs;
     * images of codes 0..127 (post-ReLU, every reduce_range image) need no split: the codes as the
     * unsigned side (static_conv_ux) */
    c.split = reduce_range ? 0 : mq_conv_split_mode(kt, channels, n, 1);
    c.ux = mq_conv_ux_on(kt);
    if (c.split) {
        c.geometry = (mq_conv_split_geometry){height, width, channels, ph, pw, wp, kh, kw, sh, sw, dh, dw, out_h, out_w,
                                              packed, n};
    }
    const int64_t item_macs = mq_size_mul(mq_size_mul(mq_size_mul(rows_per_item, out_w), k), n);
    const int64_t min_chunk = mq_items_per_chunk(item_macs, MIN_ITEM_MACS);
    int64_t t = mq_conv_profile_start();
    if (per_image == 1) {
        mq_parallel_for(batch, min_chunk, nthreads, images_range, &c);
        mq_conv_profile_stop(MQ_CONV_WALL_DIRECT, t);
    } else {
        c.pre = alloc_bytes(mq_alloc_bytes(mq_size_add(mq_size_mul(batch, padded_bytes), DIRECT_SLACK), 1, 64));
        c.pre_scale = malloc(mq_alloc_bytes(batch, sizeof(float), 1));
        c.pre_zp = malloc(mq_alloc_bytes(batch, sizeof(int32_t), 1));
        c.pre_split = c.split ? calloc((size_t)batch, sizeof(mq_conv_split)) : NULL;
        c.pre_ux = calloc((size_t)batch, 1);
        if (!c.pre || !c.pre_scale || !c.pre_zp || (c.split && !c.pre_split) || !c.pre_ux) {
            c.failed = 1;
        } else {
            /* (fewer images than 2 per thread: each its own piece when it is large enough) */
            const int64_t image_macs = mq_size_mul(item_macs, per_image);
            mq_parallel_for(batch, image_macs >= 4 * MIN_ITEM_MACS ? 1 : batch, nthreads, prequantize_range, &c);
            mq_conv_profile_stop(MQ_CONV_WALL_PREQUANT, t);
            t = mq_conv_profile_start();
            if (!c.failed) mq_parallel_for(batch * per_image, min_chunk, nthreads, blocks_range, &c);
            mq_conv_profile_stop(MQ_CONV_WALL_DIRECT, t);
        }
        free(c.pre);
        free(c.pre_scale);
        free(c.pre_zp);
        free(c.pre_ux);
        if (c.pre_split)
            for (int64_t b = 0; b < batch; b++) mq_conv_split_free(&c.pre_split[b]);
        free(c.pre_split);
    }
    free(ones);
    free(zcol);
    return c.failed ? -1 : 1;
}
