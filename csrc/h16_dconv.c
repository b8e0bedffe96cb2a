/* h16_dconv.c - the direct Conv2d (no im2col) with float32 activations of an fp16 / bf16
 * weight, or of a packed int8 (weight-only), int4 or float32 one, for images with many output
 * pixels (h16_conv.c's im2col + dot-product GEMM loses to oneDNN there: it writes kh*kw times
 * the image and sums each output across lanes) and for the small convs of the integer formats
 * (kernels/direct_conv.py).
 *
 * Output channels go in vector lanes.  Per block of up to BLOCK output
 * channels the weight is widened (or dequantized) into a tap-major fp32 panel, once per layer
 * (mq_dconv_fill_panels, then mq_dconv2d with the kept panels) or per call inside the conv's
 * threads, by the first one that needs the block (mq_dconv2d_weight: item_panel)
 * ([k][ldp], mq.h): one vector load of it serves a tap of every pixel in a
 * tile, and each tap's input value is broadcast from the (zero-padded) NCHW
 * image: an outer product, no gather, no im2col.  Work items are strips of
 * up to STRIP output pixels of one block; the taps go in chunks of K_CHUNK, so the
 * chunk's panel slice stays in L1 while every tile of the strip uses it.  A
 * strip's results ([pixel][lane]) are written to the NCHW output at the end.
 * Each output is an fmaf chain over its taps from the bias in tap order
 * (mq.h): the same bits at every kernel level and thread count. */
#include <stdlib.h>
#include <string.h>

#include "mq.h"

/* output channels per panel block: four zmm of lanes */
#define BLOCK 64
/* output pixels per work item: its [STRIP][BLOCK] results (24 KiB) stay in L1 */
#define STRIP 96
/* taps per pass over a strip: a 128 x 64 fp32 panel slice is 32 KiB, in L1 beside the strip */
#define K_CHUNK 128
/* below this many multiply-adds a call stays on the calling thread; from there to
 * MQ_SPLIT_ALWAYS_MACS it splits while the split calls' callers keep their cores
 * (mq_threads_for_work).  16M with the old pool, whose second thread never paid below it; on
 * torch's team, 1 December 2026: 64 channels on 16x16 at batch 1 (9.4M) 157 us on one thread,
 * 117 on two.  Below 4M (about 60 us on one thread) a split paid little or lost
 * (on the pool, whose sleeping helper's wake-up cost more than it saved): 64 channels on 8x8 at
 * batch 1 (2.4M) 38 us on one thread, 52 split (Intel Xeon, 2 Dec, 2 threads).  In a model, where
 * torch's ops between the calls keep its team awake, 2M paid: fp16 at 2 threads, 64 -> 64 on 8x8
 * 1.21 -> 1.30 of fp32's speed, 32 -> 32 on 16x16 1.15 -> 1.31, larger ones level (1M the same
 * within noise); beside two busy processes all still 4-50x ahead of fp32's (Intel Xeon, 6 Dec) */
#define ONE_THREAD_MACS ((double)(1 << 21))
/* a weight filled into panels costs about this many multiply-adds of the conv a value (int8 and int4:
 * 0.15-0.2 ns a weight, a multiply-add 0.016 ns on one AVX-512 core): 64->128 channels on 4x4 at batch 1,
 * 1.2 M multiply-adds and 74 k weights, splits */
#define FILL_MACS_PER_WEIGHT 12.0
/* with threads, strips shrink (to this many pixels at least) until there are two work items a thread */
#define MIN_STRIP 24
/* panel floats (all blocks) widened on the calling thread alone: below 4 MiB */
#define PANELS_ON_CALLER ((double)(1 << 20))

typedef struct {
    const float *x;
    float *xp;
    int64_t height, width, hp, wp, ph, pw;
} pad_ctx;

/* Planes [begin, end) of the image, each into its zero-padded copy (plain loops, not memcpy /
 * memset: rows of a small image are a few floats, and a libc call a row cost more than the
 * conv itself on 8x8 images at batch 64). */
static void pad_range(void *vctx, int64_t begin, int64_t end) {
    const pad_ctx *c = vctx;
    for (int64_t p = begin; p < end; p++) {
        const float *src = c->x + p * c->height * c->width;
        float *dst = c->xp + p * c->hp * c->wp;
        for (int64_t i = 0; i < c->ph * c->wp; i++) dst[i] = 0.0f;
        for (int64_t i = 0; i < c->height; i++) {
            float *restrict row = dst + (c->ph + i) * c->wp;
            const float *restrict in = src + i * c->width;
            for (int64_t j = 0; j < c->pw; j++) row[j] = 0.0f;
            for (int64_t j = 0; j < c->width; j++) row[c->pw + j] = in[j];
            for (int64_t j = c->pw + c->width; j < c->wp; j++) row[j] = 0.0f;
        }
        float *bottom = dst + (c->ph + c->height) * c->wp;
        for (int64_t i = 0; i < (c->hp - c->ph - c->height) * c->wp; i++) bottom[i] = 0.0f;
    }
}

typedef struct {
    const mq_kernels *kt;
    const mq_dconv_weight *wt;
    float *panels, *biases; /* per block: [k][ldp] and [ldp] (block_lane0) */
    int64_t k, n_g, blocks; /* blocks per group */
} panel_ctx;

static int64_t block_width(int64_t n_g, int64_t blk) {
    return n_g - blk * BLOCK < BLOCK ? n_g - blk * BLOCK : BLOCK;
}

/* lanes of a block: its channels rounded up to 16 (a zmm, two ymm) */
static int64_t block_ldp(int64_t nb) { return (nb + 15) / 16 * 16; }

/* Where block b (group * blocks + block) starts among all blocks' lanes: a group takes its
 * channels rounded up to 16 (full blocks of BLOCK, then the last one's ldp), so kept panels
 * are no larger than the weight rounded up to 16 channels.  Its panel starts at lane0 * k. */
static int64_t block_lane0(int64_t b, int64_t blocks, int64_t n_g) {
    return b / blocks * ((n_g + 15) / 16 * 16) + b % blocks * BLOCK;
}

/* Block (g, oc0..oc0+nb) of a packed int8 weight dequantized into its panel, taps in the
 * packed K order (i, j, channel): each value (q - zero_point) * scale in float32, as torch's
 * dequantize (the same floats as dequantized_packed).  A K-group of a 16-channel panel is 16
 * words of 4 taps: each tap's 16 values come out of the words by shifts on 32-bit lanes, which
 * the compiler vectorizes (a byte at a time took 0.55 ns a weight, more than the conv of a
 * small image), into consecutive panel rows. */
_Static_assert(MQ_PANEL == 16 && MQ_KGROUP == 4 && MQ_PANEL_GROUP_BYTES == 64,
               "int8_panel reads a K-group of a packed panel as 16 words of 4 taps (lanes of 16, block_ldp's)");
static void int8_panel(const mq_dconv_weight *wt, int64_t g, int64_t n_g, int64_t oc0, int64_t nb, int64_t ldp,
                       int64_t k, float *panel) {
    const int64_t kp = mq_size_round_up(k, MQ_KGROUP), np_g = mq_size_round_up(n_g, MQ_PANEL);
    const int8_t *packed = wt->packed + g * np_g * kp;
    for (int64_t j0 = 0; j0 < ldp; j0 += MQ_PANEL) {
        const int64_t lanes = nb - j0 < MQ_PANEL ? (nb - j0 > 0 ? nb - j0 : 0) : MQ_PANEL;
        const int64_t oc = oc0 + j0; /* within the group: a multiple of MQ_PANEL */
        const int8_t *src = packed + oc / MQ_PANEL * (kp / MQ_KGROUP) * MQ_PANEL_GROUP_BYTES;
        float scale[MQ_PANEL], zp[MQ_PANEL];
        for (int64_t c = 0; c < MQ_PANEL; c++) {
            scale[c] = c < lanes ? wt->scale[g * n_g + oc + c] : 0.0f;
            zp[c] = c < lanes ? (float)wt->zp[g * n_g + oc + c] : 0.0f;
        }
        for (int64_t t0 = 0; t0 < k; t0 += MQ_KGROUP) {
            uint32_t words[MQ_PANEL];
            memcpy(words, src + t0 / MQ_KGROUP * MQ_PANEL_GROUP_BYTES, sizeof(words));
            for (int64_t tt = 0; tt < MQ_KGROUP && t0 + tt < k; tt++) {
                const int shift = 24 - 8 * (int)tt;
                float *row = panel + (t0 + tt) * ldp + j0;
                for (int c = 0; c < MQ_PANEL; c++) /* (0 past the lanes: scale 0, and padding bytes are 0) */
                    row[c] = ((float)((int32_t)(words[c] << shift) >> 24) - zp[c]) * scale[c];
            }
        }
    }
}

/* Block b's panel ([k][ldp]) and bias lanes ([ldp]) */
static void fill_block(const mq_kernels *kt, const mq_dconv_weight *wt, int64_t k, int64_t n_g, int64_t blocks,
                      int64_t b, float *panel, float *bias) {
    const int64_t g = b / blocks, blk = b % blocks, oc0 = g * n_g + blk * BLOCK;
    const int64_t nb = block_width(n_g, blk), ldp = block_ldp(nb);
    if (wt->packed) {
        int8_panel(wt, g, n_g, blk * BLOCK, nb, ldp, k, panel);
    } else if (wt->q4) { /* its rows oc0.. (an int4 weight's rows are the output channels of every group) */
        const int64_t ngroups = (wt->q4_kpad + wt->q4_group - 1) / wt->q4_group;
        kt->q4_dconv_panel(wt->q4 + oc0 * (wt->q4_kpad / 2), wt->q4_scale + oc0 * ngroups, wt->q4_zero + oc0 * ngroups,
                           wt->q4_kpad, wt->q4_group, k, nb, ldp, panel);
    } else if (wt->f32)
        kt->f32_dconv_panel(wt->f32 + oc0 * k, k, nb, ldp, panel);
    else
        kt->h16_dconv_panel(wt->h16 + oc0 * k, k, wt->is_bf16, nb, ldp, panel);
    for (int64_t j = 0; j < ldp; j++) bias[j] = wt->bias && j < nb ? wt->bias[oc0 + j] : 0.0f;
}

static void panel_range(void *vctx, int64_t begin, int64_t end) {
    panel_ctx *c = vctx;
    for (int64_t b = begin; b < end; b++) {
        const int64_t lane0 = block_lane0(b, c->blocks, c->n_g);
        fill_block(c->kt, c->wt, c->k, c->n_g, c->blocks, b, c->panels + lane0 * c->k, c->biases + lane0);
    }
}

int64_t mq_dconv_panel_floats(int64_t n, int64_t groups, int64_t k) {
    return mq_size_mul(mq_dconv_bias_floats(n, groups), k);
}

int64_t mq_dconv_bias_floats(int64_t n, int64_t groups) {
    return mq_size_mul(groups, (n / groups + 15) / 16 * 16);
}

void mq_dconv_fill_panels(const mq_dconv_weight *wt, int64_t n, int64_t groups, int64_t k, float *panels,
                         float *biases, int nthreads) {
    const int64_t n_g = n / groups, blocks = (n_g + BLOCK - 1) / BLOCK;
    panel_ctx pn = {mq_active(), wt, panels, biases, k, n_g, blocks};
    /* on the calling thread unless the panels are many: a region of their own before the conv's woke
     * the helpers twice a call (64->128 channels on 8x8 at batch 1: 96 us on two threads, 102 on one) */
    mq_parallel_for(groups * blocks, 1, (double)mq_dconv_panel_floats(n, groups, k) < PANELS_ON_CALLER ? 1 : nthreads,
                    panel_range, &pn);
}

/* panels filled in the conv's region (a weight whose panels are not kept): each block's by the
 * first thread that needs it, which then runs on a panel in its own cache; a thread that finds
 * the block being filled by another fills a copy of its own instead of waiting for it (that
 * thread may be descheduled) */
enum { PANEL_EMPTY, PANEL_FILLING, PANEL_READY };
static int own_panels_forced; /* tests: every item takes the copy-of-its-own branch */

int mq_dconv_own_panels_for_tests(int on) {
    __atomic_store_n(&own_panels_forced, on != 0, __ATOMIC_RELAXED);
    return 0;
}

typedef struct {
    const mq_kernels *kt;
    const float *xp;
    const int64_t *off;
    float *panels, *biases;
    const float *bias; /* the layer's bias, read per call in place of the kept lanes; or NULL */
    const mq_dconv_weight *wt; /* NULL: the panels are filled; else filled here (state per block) */
    int *state, *failed;
    float *y;
    int64_t channels, hp, wp, sh, sw, out_w, pixels, m, k, n, n_g, cg, blocks, all_blocks, strips, strip_pixels;
} conv_ctx;

/* Block b's panel and bias lanes for this item: the kept or filled ones, else filled now (into the
 * shared ones, or into *own when another thread is filling those).  NULL without scratch memory. */
static const float *item_panel(const conv_ctx *c, int64_t b, int64_t ldp, float **own, const float **bias) {
    const int64_t lane0 = block_lane0(b, c->blocks, c->n_g);
    float *panel = c->panels + lane0 * c->k, *lanes = c->biases + lane0;
    *bias = lanes;
    const int forced = __atomic_load_n(&own_panels_forced, __ATOMIC_RELAXED);
    if (!c->wt || (!forced && __atomic_load_n(&c->state[b], __ATOMIC_ACQUIRE) == PANEL_READY)) return panel;
    int empty = PANEL_EMPTY;
    if (forced ||
        !__atomic_compare_exchange_n(&c->state[b], &empty, PANEL_FILLING, 0, __ATOMIC_ACQUIRE, __ATOMIC_RELAXED)) {
        if (empty == PANEL_READY) return panel;
        /* (k * BLOCK + BLOCK: any block's panel and lanes; + 1: k may be 0) */
        if (!*own) *own = malloc(mq_alloc_bytes(mq_size_add(mq_size_mul(c->k + 1, BLOCK), 1), sizeof(float), 1));
        if (!*own) return NULL;
        panel = *own;
        lanes = *own + c->k * ldp;
        *bias = lanes;
    }
    fill_block(c->kt, c->wt, c->k, c->n_g, c->blocks, b, panel, lanes);
    if (panel != *own) __atomic_store_n(&c->state[b], PANEL_READY, __ATOMIC_RELEASE);
    return panel;
}

static void conv_range(void *vctx, int64_t begin, int64_t end) {
    const conv_ctx *c = vctx;
    int64_t pix[STRIP];
    float out[STRIP * BLOCK];
    float *own = NULL;
    for (int64_t item = begin; item < end; item++) {
        /* strip-major: threads that start together take different blocks (b: group * blocks + block) */
        const int64_t b = item % c->all_blocks, strip = item / c->all_blocks;
        const int64_t g = b / c->blocks, blk = b % c->blocks;
        const int64_t nb = block_width(c->n_g, blk), ldp = block_ldp(nb);
        const int64_t row0 = strip * c->strip_pixels;
        const int64_t npix = c->m - row0 < c->strip_pixels ? c->m - row0 : c->strip_pixels;
        for (int64_t s = 0; s < npix; s++) {
            const int64_t row = row0 + s, img = row / c->pixels, p = row % c->pixels;
            pix[s] = (img * c->channels + g * c->cg) * c->hp * c->wp + p / c->out_w * c->sh * c->wp +
                     p % c->out_w * c->sw;
        }
        const float *bias;
        const float *panel = item_panel(c, b, ldp, &own, &bias);
        if (!panel) {
            __atomic_store_n(c->failed, 1, __ATOMIC_RELAXED);
            continue;
        }
        float lanes[BLOCK];
        if (c->bias) { /* kept panels: the bias as it is now (a write through .data moves no version) */
            for (int64_t j = 0; j < ldp; j++) lanes[j] = j < nb ? c->bias[g * c->n_g + blk * BLOCK + j] : 0.0f;
            bias = lanes;
        }
        int64_t k0 = 0;
        do { /* (k = 0, no channels: one call, the bias alone) */
            const int64_t kc = c->k - k0 < K_CHUNK ? c->k - k0 : K_CHUNK;
            c->kt->h16_dconv(c->xp, pix, npix, c->off + k0, kc, panel + k0 * ldp, ldp, bias, k0 > 0, out);
            k0 += kc;
        } while (k0 < c->k);
        /* [pixel][lane] to NCHW: each channel's pixels are consecutive within an image */
        const int64_t oc0 = g * c->n_g + blk * BLOCK;
        for (int64_t s0 = 0; s0 < npix;) {
            const int64_t row = row0 + s0, img = row / c->pixels, p0 = row % c->pixels;
            const int64_t run = c->pixels - p0 < npix - s0 ? c->pixels - p0 : npix - s0;
            for (int64_t j = 0; j < nb; j++) {
                float *dst = c->y + (img * c->n + oc0 + j) * c->pixels + p0;
                const float *src = out + s0 * ldp + j;
                for (int64_t s = 0; s < run; s++) dst[s] = src[s * ldp];
            }
            s0 += run;
        }
    }
    free(own);
}

/* Pixels per strip of each block's output pixels: STRIP at most; with threads, more strips (of
 * MIN_STRIP pixels at least) until each thread has two items, the pixels shared evenly (uneven
 * strips of 48 + 16 left one thread waiting for the other) */
static int64_t strip_pixels_for(int64_t m, int64_t all_blocks, int nthreads) {
    int64_t strips = (m + STRIP - 1) / STRIP;
    if (nthreads > 1) {
        const int64_t want = (2 * (int64_t)nthreads + all_blocks - 1) / all_blocks;
        const int64_t most = m / MIN_STRIP > 1 ? m / MIN_STRIP : 1;
        const int64_t more = want < most ? want : most;
        if (more > strips) strips = more;
    }
    return (m + strips - 1) / strips;
}

/* mq_dconv2d on panels filled (wt NULL) or to fill in the conv's region from wt (item_panel) */
static int dconv2d_run(const float *x, int64_t batch, int64_t channels, int64_t height, int64_t width, int64_t kh,
                       int64_t kw, int64_t sh, int64_t sw, int64_t ph, int64_t pw, int64_t dh, int64_t dw, int64_t groups,
                       float *panels, float *biases, const float *bias, const mq_dconv_weight *wt, int *state,
                       int tap_major, int64_t n, float *y, int nthreads) {
    const int64_t out_h = mq_conv_out(height, kh, sh, ph, dh);
    const int64_t out_w = mq_conv_out(width, kw, sw, pw, dw);
    const int64_t cg = channels / groups, k = cg * kh * kw, n_g = n / groups, pixels = out_h * out_w;
    const int64_t hp = height + 2 * ph, wp = width + 2 * pw;
    /* m, and the padded image below, can only pass 64 bits on arguments the bindings reject */
    const int64_t m = mq_size_mul(batch, pixels);
    if (m <= 0 || n <= 0) return 0;
    const mq_kernels *kt = mq_active();
    const int64_t blocks = (n_g + BLOCK - 1) / BLOCK;
    const int padded = ph > 0 || pw > 0;
    const int64_t padded_floats = mq_size_mul(mq_size_mul(batch, channels), mq_size_mul(hp, wp));
    float *xp = padded ? malloc(mq_alloc_bytes(padded_floats, sizeof(float), 1)) : NULL;
    /* (+ 1: k may be 0, and malloc(0) may return NULL) */
    int64_t *off = malloc(mq_alloc_bytes(mq_size_add(k, 1), sizeof(int64_t), 1));
    int status = -1, failed = 0;
    if ((padded && !xp) || !off) goto done;
    /* (panels filled in the region: their work too, which threads share by blocks) */
    const double fill = wt ? FILL_MACS_PER_WEIGHT * (double)k * (double)n : 0.0;
    nthreads = mq_threads_for_work((double)m * (double)k * (double)n + fill, ONE_THREAD_MACS, nthreads);
    const int64_t strip_pixels = strip_pixels_for(m, groups * blocks, nthreads);
    const int64_t strips = (m + strip_pixels - 1) / strip_pixels;
    if (padded) {
        pad_ctx pc = {x, xp, height, width, hp, wp, ph, pw};
        mq_parallel_for(batch * channels, 1 + ((int64_t)1 << 14) / (hp * wp), nthreads, pad_range, &pc);
    }
    /* tap t = (channel, i, j), the 16-bit weight's own order, or (i, j, channel), the packed int8
     * weight's: its offset in the padded image */
    for (int64_t ch = 0; ch < cg; ch++)
        for (int64_t i = 0; i < kh; i++)
            for (int64_t j = 0; j < kw; j++)
                off[tap_major ? (i * kw + j) * cg + ch : (ch * kh + i) * kw + j] = ch * hp * wp + i * dh * wp + j * dw;
    conv_ctx cc = {kt, padded ? xp : x, off, panels, biases, bias, wt, state, &failed, y, channels, hp, wp, sh, sw, out_w,
                   pixels, m, k, n, n_g, cg, blocks, groups * blocks, strips, strip_pixels};
    mq_parallel_for(groups * blocks * strips, 1, nthreads, conv_range, &cc);
    status = __atomic_load_n(&failed, __ATOMIC_RELAXED) ? -1 : 0;
done:
    free(xp);
    free(off);
    return status;
}

int mq_dconv2d(const float *x, int64_t batch, int64_t channels, int64_t height, int64_t width, int64_t kh, int64_t kw,
               int64_t sh, int64_t sw, int64_t ph, int64_t pw, int64_t dh, int64_t dw, int64_t groups,
               const float *panels, const float *biases, const float *bias, int tap_major, int64_t n, float *y,
               int nthreads) {
    /* (read only: with wt NULL, conv_range never writes the panels) */
    return dconv2d_run(x, batch, channels, height, width, kh, kw, sh, sw, ph, pw, dh, dw, groups, (float *)panels,
                       (float *)biases, bias, NULL, NULL, tap_major, n, y, nthreads);
}

int mq_dconv2d_weight(const float *x, int64_t batch, int64_t channels, int64_t height, int64_t width, int64_t kh,
                      int64_t kw, int64_t sh, int64_t sw, int64_t ph, int64_t pw, int64_t dh, int64_t dw, int64_t groups,
                      const mq_dconv_weight *wt, int64_t n, float *y, int nthreads) {
    const int64_t k = channels / groups * kh * kw;
    if (mq_size_mul(batch, mq_size_mul(mq_conv_out(height, kh, sh, ph, dh), mq_conv_out(width, kw, sw, pw, dw))) <=
            0 ||
        n <= 0)
        return 0;
    const int64_t all_blocks = groups * ((n / groups + BLOCK - 1) / BLOCK);
    /* (+ 1: k may be 0, and malloc(0) may return NULL) */
    float *panels = malloc(mq_alloc_bytes(mq_size_add(mq_dconv_panel_floats(n, groups, k), 1), sizeof(float), 1));
    float *biases = malloc(mq_alloc_bytes(mq_dconv_bias_floats(n, groups), sizeof(float), 1));
    int *state = calloc((size_t)all_blocks, sizeof(int)); /* PANEL_EMPTY: 0 */
    int status = -1;
    if (panels && biases && state)
        status = dconv2d_run(x, batch, channels, height, width, kh, kw, sh, sw, ph, pw, dh, dw, groups, panels,
                             biases, NULL, wt, state, wt->packed != NULL, n, y, nthreads);
    free(panels);
    free(biases);
    free(state);
    return status;
}

int mq_h16_dconv2d(const float *x, int64_t batch, int64_t channels, int64_t height, int64_t width, int64_t kh,
                   int64_t kw, int64_t sh, int64_t sw, int64_t ph, int64_t pw, int64_t dh, int64_t dw, int64_t groups,
                   const uint16_t *w, int is_bf16, const float *bias, int64_t n, float *y, int nthreads) {
    const mq_dconv_weight wt = {.h16 = w, .is_bf16 = is_bf16, .bias = bias};
    return mq_dconv2d_weight(x, batch, channels, height, width, kh, kw, sh, sw, ph, pw, dh, dw, groups, &wt, n, y,
                             nthreads);
}
