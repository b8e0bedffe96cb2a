/* h16_winograd.c - the fp16 / bf16 weight 3x3 Conv2d (stride 1, dilation 1, no
 * groups) by Winograd's F(2x2, 3x3): each 2x2 block of outputs from a 4x4 tile
 * of the image in 16 products a channel instead of 36, so 2.25x fewer
 * multiply-adds than the direct conv (h16_dconv.c), whose outer-product
 * kernel runs the 16 products here too.
 *
 *   U = G g G^T (the weight, per output / input channel: 3x3 to 4x4)
 *   V = B^T d B (the image, per tile and channel: 4x4 to 4x4)
 *   M[xi] = sum over channels of U[xi] V[xi]  (16 GEMMs: mq_h16_dconv_fn)
 *   Y = A^T M A + bias (4x4 to 2x2)
 * with G = [1 0 0; .5 .5 .5; .5 -.5 .5; 0 0 1], B^T = [1 0 -1 0; 0 1 1 0;
 * 0 -1 1 0; 0 1 0 -1], A^T = [1 1 1 0; 0 1 -1 -1].
 *
 * Layouts: V [16][channels][tiles] (the tiles of the images of one pass: a
 * batch goes in passes of as many images as keep V near MAX_TRAFFIC, so it is
 * read from cache by every block), so a tap of the GEMM (a channel) is one
 * offset for every tile; U (once per call) per block
 * of BLOCK output channels [16][channels][ldp], from the direct kernel's
 * panel ([channel x 9 taps][ldp]).  The transforms are plain C over whole rows
 * or vectors of lanes (the compiler vectorizes them) and the same code at
 * every kernel level; the GEMM is the table's fmaf chain: so, as the direct
 * conv, the same bits at every level and thread count.
 *
 * Numerics: the transforms add and subtract neighbouring values, so the
 * result is torch's conv to a few times float32 rounding of the per-tile
 * magnitudes (sum |w| x sum |x| over a 3x3 kernel and a 4x4 tile), not of
 * sum |w x|; an output that is not finite (an Inf or NaN in the input or the
 * weight, or an overflow of the transforms) makes the call rerun as the direct
 * conv, whose Inf / NaN are torch's. */
#include <stdlib.h>
#include <string.h>

#include "mq.h"

#define BLOCK 64        /* output channels per U block (h16_dconv.c's) */
#define STRIP 48        /* tiles per work item: its 16 x STRIP x BLOCK products (192 KiB) stay in L2 */
#define K_CHUNK 128     /* channels per GEMM pass (h16_dconv.c's) */
#define ONE_THREAD_MACS ((double)(1 << 24)) /* below: one thread (h16_dconv.c's) */
/* channels x tiles x blocks of BLOCK output channels per pass over the image (kernels/half_conv.py's
 * WINOGRAD_MAX_TRAFFIC, the same number): a larger batch goes in passes of as many images */
#define MAX_TRAFFIC ((int64_t)1 << 16)

typedef struct {
    const float *x;
    float *v;
    int64_t channels, height, width, ph, pw, th, tw, tiles, hq, wq;
    int *failed; /* set when a buffer could not be allocated */
} vin_ctx;

/* Planes (image, channel) [begin, end) to V: the plane zero-padded to hq x wq, d B along
 * every row, then B^T (d B) down the tile rows (loops over whole rows: vectorized). */
static void input_range(void *vctx, int64_t begin, int64_t end) {
    const vin_ctx *c = vctx;
    const int64_t hq = c->hq, wq = c->wq, tw = c->tw;
    float *buf = malloc((size_t)(wq + 4 * hq * tw) * sizeof(float));
    if (!buf) {
        __atomic_store_n(c->failed, 1, __ATOMIC_RELAXED);
        return;
    }
    float *row = buf, *h = buf + wq; /* h [4][hq][tw]: (d B) column b of every row's tiles */
    const int64_t xi_stride = c->channels * c->tiles;
    for (int64_t plane = begin; plane < end; plane++) {
        const int64_t b = plane / c->channels, ch = plane % c->channels;
        const float *src = c->x + plane * c->height * c->width;
        for (int64_t r = 0; r < hq; r++) {
            const int64_t ih = r - c->ph;
            for (int64_t q = 0; q < wq; q++) row[q] = 0.0f; /* (plain loops: a libc call a row costs more) */
            if (ih >= 0 && ih < c->height)
                for (int64_t q = 0; q < c->width; q++) row[c->pw + q] = src[ih * c->width + q];
            float *restrict h0 = h + r * tw, *restrict h1 = h0 + hq * tw, *restrict h2 = h1 + hq * tw,
                            *restrict h3 = h2 + hq * tw;
            for (int64_t tx = 0; tx < tw; tx++) {
                h0[tx] = row[2 * tx] - row[2 * tx + 2];
                h1[tx] = row[2 * tx + 1] + row[2 * tx + 2];
                h2[tx] = row[2 * tx + 2] - row[2 * tx + 1];
                h3[tx] = row[2 * tx + 1] - row[2 * tx + 3];
            }
        }
        float *vch = c->v + ch * c->tiles + b * c->th * tw; /* + xi * xi_stride + ty * tw + tx */
        for (int64_t ty = 0; ty < c->th; ty++)
            for (int bb = 0; bb < 4; bb++) {
                const float *d0 = h + (bb * hq + 2 * ty) * tw, *d1 = d0 + tw, *d2 = d1 + tw, *d3 = d2 + tw;
                float *restrict v0 = vch + bb * xi_stride + ty * tw, *restrict v1 = v0 + 4 * xi_stride,
                                *restrict v2 = v1 + 4 * xi_stride, *restrict v3 = v2 + 4 * xi_stride;
                for (int64_t tx = 0; tx < tw; tx++) {
                    v0[tx] = d0[tx] - d2[tx];
                    v1[tx] = d1[tx] + d2[tx];
                    v2[tx] = d2[tx] - d1[tx];
                    v3[tx] = d1[tx] - d3[tx];
                }
            }
    }
    free(buf);
}

typedef struct {
    const mq_kernels *kt;
    const uint16_t *w;
    const float *bias;
    float *u, *biases, *panel; /* panel: one per block, [channels * 9][BLOCK] */
    int is_bf16;
    int64_t channels, n, blocks;
} wu_ctx;

static int64_t block_width(int64_t n, int64_t blk) { return n - blk * BLOCK < BLOCK ? n - blk * BLOCK : BLOCK; }
static int64_t block_ldp(int64_t nb) { return (nb + 15) / 16 * 16; }

/* Blocks [begin, end) of output channels: the panel, then U = G g G^T across the lanes. */
static void weight_range(void *vctx, int64_t begin, int64_t end) {
    const wu_ctx *c = vctx;
    for (int64_t blk = begin; blk < end; blk++) {
        const int64_t nb = block_width(c->n, blk), ldp = block_ldp(nb), k = c->channels * 9;
        float *panel = c->panel + blk * k * BLOCK, *u = c->u + blk * 16 * c->channels * BLOCK;
        c->kt->h16_dconv_panel(c->w + blk * BLOCK * k, k, c->is_bf16, nb, ldp, panel);
        float *bias = c->biases + blk * BLOCK;
        for (int64_t j = 0; j < ldp; j++) bias[j] = c->bias && j < nb ? c->bias[blk * BLOCK + j] : 0.0f;
        float h[12][BLOCK]; /* G g: row a, column j at h[a * 3 + j] */
        const int64_t xs = c->channels * ldp;
        for (int64_t ch = 0; ch < c->channels; ch++) {
            const float *g = panel + ch * 9 * ldp; /* tap i * 3 + j at g + (i * 3 + j) * ldp */
            for (int j = 0; j < 3; j++) {
                const float *restrict g0 = g + j * ldp, *restrict g1 = g0 + 3 * ldp, *restrict g2 = g1 + 3 * ldp;
                for (int64_t l = 0; l < ldp; l++) {
                    h[j][l] = g0[l];
                    h[3 + j][l] = (g0[l] + g1[l] + g2[l]) * 0.5f;
                    h[6 + j][l] = (g0[l] - g1[l] + g2[l]) * 0.5f;
                    h[9 + j][l] = g2[l];
                }
            }
            for (int a = 0; a < 4; a++) { /* (G g) G^T: U[4a + b] */
                const float *restrict h0 = h[3 * a], *restrict h1 = h[3 * a + 1], *restrict h2 = h[3 * a + 2];
                float *restrict u0 = u + 4 * a * xs + ch * ldp, *restrict u1 = u0 + xs, *restrict u2 = u1 + xs,
                                *restrict u3 = u2 + xs;
                for (int64_t l = 0; l < ldp; l++) {
                    u0[l] = h0[l];
                    u1[l] = (h0[l] + h1[l] + h2[l]) * 0.5f;
                    u2[l] = (h0[l] - h1[l] + h2[l]) * 0.5f;
                    u3[l] = h2[l];
                }
            }
        }
    }
}

typedef struct {
    const mq_kernels *kt;
    const float *v, *u, *biases, *zeros;
    const int64_t *off;
    float *y;
    int64_t channels, n, blocks, strips, tiles, th, tw, out_h, out_w;
    int *failed;
    int *nonfinite; /* set when an output written is Inf or NaN: the call then reruns as the direct conv */
} gemm_ctx;

/* Items [begin, end): (block, strip of tiles): the 16 GEMMs, then A^T M A + bias into y,
 * each output checked for Inf / NaN as it is written (no serial pass over y after). */
static void gemm_range(void *vctx, int64_t begin, int64_t end) {
    const gemm_ctx *c = vctx;
    float *m = malloc((size_t)16 * STRIP * BLOCK * sizeof(float));
    int64_t pix[STRIP];
    uint32_t bad = 0; /* an exponent of all ones: Inf or NaN */
    if (!m) {
        __atomic_store_n(c->failed, 1, __ATOMIC_RELAXED);
        return;
    }
    for (int64_t item = begin; item < end; item++) {
        const int64_t blk = item / c->strips, t0 = item % c->strips * STRIP;
        const int64_t ntl = c->tiles - t0 < STRIP ? c->tiles - t0 : STRIP;
        const int64_t nb = block_width(c->n, blk), ldp = block_ldp(nb);
        const float *u = c->u + blk * 16 * c->channels * BLOCK;
        for (int64_t s = 0; s < ntl; s++) pix[s] = t0 + s;
        for (int xi = 0; xi < 16; xi++) {
            const float *vx = c->v + xi * c->channels * c->tiles, *ux = u + xi * c->channels * ldp;
            int64_t k0 = 0;
            do {
                const int64_t kc = c->channels - k0 < K_CHUNK ? c->channels - k0 : K_CHUNK;
                c->kt->h16_dconv(vx, pix, ntl, c->off + k0, kc, ux + k0 * ldp, ldp, c->zeros, k0 > 0,
                                 m + xi * STRIP * BLOCK);
                k0 += kc;
            } while (k0 < c->channels);
        }
        const float *bias = c->biases + blk * BLOCK;
        for (int64_t s = 0; s < ntl; s++) {
            const int64_t tile = t0 + s, b = tile / (c->th * c->tw), ty = tile / c->tw % c->th, tx = tile % c->tw;
            float t[8][BLOCK], out[4][BLOCK]; /* A^T M: row i, column j at t[i * 4 + j] */
            const float *ms = m + s * ldp;        /* xi at ms + xi * STRIP * BLOCK */
            for (int j = 0; j < 4; j++) {
                const float *restrict m0 = ms + j * STRIP * BLOCK, *restrict m1 = m0 + 4 * STRIP * BLOCK,
                                      *restrict m2 = m1 + 4 * STRIP * BLOCK, *restrict m3 = m2 + 4 * STRIP * BLOCK;
                for (int64_t l = 0; l < ldp; l++) {
                    t[j][l] = m0[l] + m1[l] + m2[l];
                    t[4 + j][l] = m1[l] - m2[l] - m3[l];
                }
            }
            for (int i = 0; i < 2; i++) /* (A^T M) A + bias */
                for (int64_t l = 0; l < ldp; l++) {
                    out[2 * i][l] = t[4 * i][l] + t[4 * i + 1][l] + t[4 * i + 2][l] + bias[l];
                    out[2 * i + 1][l] = t[4 * i + 1][l] - t[4 * i + 2][l] - t[4 * i + 3][l] + bias[l];
                }
            const int64_t oh = 2 * ty, ow = 2 * tx;
            const int rows = oh + 1 < c->out_h ? 2 : 1, cols = ow + 1 < c->out_w ? 2 : 1;
            for (int64_t j = 0; j < nb; j++) {
                float *dst = c->y + ((b * c->n + blk * BLOCK + j) * c->out_h + oh) * c->out_w + ow;
                for (int i = 0; i < rows; i++)
                    for (int q = 0; q < cols; q++) {
                        const float value = out[2 * i + q][j];
                        dst[i * c->out_w + q] = value;
                        bad |= (mq_f32_to_bits(value) & 0x7F800000u) == 0x7F800000u;
                    }
            }
        }
    }
    if (bad) __atomic_store_n(c->nonfinite, 1, __ATOMIC_RELAXED);
    free(m);
}

int mq_h16_wino2d(const float *x, int64_t batch, int64_t channels, int64_t height, int64_t width, int64_t ph,
                  int64_t pw, const uint16_t *w, int is_bf16, const float *bias, int64_t n, float *y, int nthreads) {
    const int64_t out_h = height + 2 * ph - 2, out_w = width + 2 * pw - 2;
    if (batch <= 0 || n <= 0 || out_h <= 0 || out_w <= 0) return 0;
    if (channels <= 0) /* no reduction: the bias (the direct conv's path for it) */
        return mq_h16_dconv2d(x, batch, channels, height, width, 3, 3, 1, 1, ph, pw, 1, 1, 1, w, is_bf16, bias, n, y,
                              nthreads);
    const mq_kernels *kt = mq_active();
    const int64_t th = (out_h + 1) / 2, tw = (out_w + 1) / 2, image_tiles = mq_size_mul(th, tw);
    const int64_t hq = 2 * th + 2, wq = 2 * tw + 2, blocks = (n + BLOCK - 1) / BLOCK;
    /* images per pass: the transformed image of a pass, read once per block, stays near MAX_TRAFFIC */
    const int64_t per_image = mq_size_mul(mq_size_mul(channels, image_tiles), blocks);
    int64_t chunk = per_image > 0 && per_image < MAX_TRAFFIC ? MAX_TRAFFIC / per_image : 1;
    chunk = chunk < batch ? chunk : batch;
    float *v = malloc(mq_alloc_bytes(mq_size_mul(16 * channels, mq_size_mul(chunk, image_tiles)), sizeof(float), 1));
    float *u = malloc(mq_alloc_bytes(mq_size_mul(blocks * 16, channels * BLOCK), sizeof(float), 1));
    float *panel = malloc(mq_alloc_bytes(mq_size_mul(blocks * 9, channels * BLOCK), sizeof(float), 1));
    float *biases = malloc(mq_alloc_bytes(blocks, BLOCK * sizeof(float), 1));
    int64_t *off = malloc(mq_alloc_bytes(channels, sizeof(int64_t), 1));
    float zeros[BLOCK] = {0};
    int status = -1, failed = 0, nonfinite = 0; /* failed: a range could not allocate its buffer */
    if (!v || !u || !panel || !biases || !off) goto done;
    if ((double)batch * out_h * out_w * (double)channels * 9.0 * (double)n < ONE_THREAD_MACS) nthreads = 1;
    wu_ctx wc = {kt, w, bias, u, biases, panel, is_bf16, channels, n, blocks};
    mq_parallel_for(blocks, 1, nthreads, weight_range, &wc);
    /* (a pass that wrote an Inf / NaN ends the passes: the direct conv reruns the whole call) */
    for (int64_t b0 = 0;
         b0 < batch && !__atomic_load_n(&failed, __ATOMIC_RELAXED) && !__atomic_load_n(&nonfinite, __ATOMIC_RELAXED);
         b0 += chunk) {
        const int64_t images = batch - b0 < chunk ? batch - b0 : chunk, tiles = images * image_tiles;
        vin_ctx vc = {x + b0 * channels * height * width, v, channels, height, width, ph, pw, th, tw, tiles, hq, wq,
                      &failed};
        mq_parallel_for(images * channels, 1, nthreads, input_range, &vc);
        for (int64_t ch = 0; ch < channels; ch++) off[ch] = ch * tiles;
        gemm_ctx gc = {kt, v, u, biases, zeros, off, y + b0 * n * out_h * out_w, channels, n, blocks,
                       (tiles + STRIP - 1) / STRIP, tiles, th, tw, out_h, out_w, &failed, &nonfinite};
        if (!__atomic_load_n(&failed, __ATOMIC_RELAXED))
            mq_parallel_for(blocks * gc.strips, 1, nthreads, gemm_range, &gc);
    }
    status = __atomic_load_n(&failed, __ATOMIC_RELAXED) ? -1 : 0;
done:
    free(v);
    free(u);
    free(panel);
    free(biases);
    free(off);
    if (status == 0 && __atomic_load_n(&nonfinite, __ATOMIC_RELAXED)) /* Inf / NaN: the direct conv's, torch's */
        status = mq_h16_dconv2d(x, batch, channels, height, width, 3, 3, 1, 1, ph, pw, 1, 1, 1, w, is_bf16, bias, n,
                                y, nthreads);
    return status;
}
