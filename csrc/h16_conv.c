/* h16_conv.c - the fp16 / bf16 weight Conv2d: fp32 NCHW images, im2col rows
 * in fp32, the fp16 / bf16 weight GEMM of fp16.c (weights widened in
 * registers, fp32 accumulation), NCHW out.
 *
 * The stored weight [out][in/groups][kh][kw] is already the GEMM's row-major
 * [n][k] with k in (channel, kh, kw) order, so im2col writes each output
 * pixel's row in that order and the weight is read as stored: nothing is
 * converted or repacked per call.  Rows go in chunks of about CHUNK_BYTES,
 * so a chunk's rows stay in L2 between im2col and the GEMM (which reads them
 * once per 3-4 output channels), and no buffer of the whole im2col is
 * allocated (9x the image for a 3x3 conv). */
#include <stdlib.h>

#include "mq.h"

/* fp32 im2col bytes per chunk of rows (Zen 5 and Skylake-SP L2: 1 MiB; AVX2-era client cores 256-512 KiB) */
#define CHUNK_BYTES ((int64_t)1 << 19)
/* at least this many rows a chunk: the GEMM's row block (fp16.c ROW_BLOCK) */
#define MIN_CHUNK_ROWS 64

typedef struct {
    const float *x; /* [batch][channels][height][width] */
    int64_t channels, height, width, kh, kw, sh, sw, ph, pw, dh, dw, out_w, pixels, cg, k, group;
    int64_t row0;   /* the chunk's first output row (image * pixels + oh * out_w + ow) */
    float *rows;    /* [chunk rows][k] */
} h16_im2col_ctx;

/* One output pixel's row: for each channel and kernel row, kw taps (KW > 0: a constant the
 * compiler unrolls; 0: c->kw). */
static inline __attribute__((always_inline)) void im2col_row(const h16_im2col_ctx *c, int64_t r, const int64_t KW) {
    const int64_t kw = KW ? KW : c->kw;
    const int64_t row = c->row0 + r, b = row / c->pixels, oh = row % c->pixels / c->out_w, ow = row % c->out_w;
    const float *image = c->x + (b * c->channels + c->group * c->cg) * c->height * c->width;
    float *dst = c->rows + r * c->k;
    const int64_t ih0 = oh * c->sh - c->ph, iw0 = ow * c->sw - c->pw;
    /* the kw taps of a kernel row inside the image (dilation 1): one run of kw floats */
    const int inside_w = c->dw == 1 && iw0 >= 0 && iw0 + kw <= c->width;
    for (int64_t ch = 0; ch < c->cg; ch++) {
        const float *plane = image + ch * c->height * c->width;
        for (int64_t i = 0; i < c->kh; i++, dst += kw) {
            const int64_t ih = ih0 + i * c->dh;
            /* plain loops, not memcpy / memset: kw is a few floats, a libc call costs more */
            if (ih < 0 || ih >= c->height) {
                for (int64_t j = 0; j < kw; j++) dst[j] = 0.0f;
            } else if (inside_w) {
                const float *src = plane + ih * c->width + iw0;
                for (int64_t j = 0; j < kw; j++) dst[j] = src[j];
            } else {
                for (int64_t j = 0; j < kw; j++) {
                    const int64_t iw = iw0 + j * c->dw;
                    dst[j] = iw >= 0 && iw < c->width ? plane[ih * c->width + iw] : 0.0f;
                }
            }
        }
    }
}

static void h16_im2col_range(void *vctx, int64_t begin, int64_t end) {
    const h16_im2col_ctx *c = vctx;
    if (c->kw == 3) /* the common 3x3: its taps copied as three unrolled moves */
        for (int64_t r = begin; r < end; r++) im2col_row(c, r, 3);
    else if (c->kw == 1)
        for (int64_t r = begin; r < end; r++) im2col_row(c, r, 1);
    else
        for (int64_t r = begin; r < end; r++) im2col_row(c, r, 0);
}

/* A chunk's [rows][n_g] GEMM result into the NCHW output's channels
 * group * n_g.., in 32 x 32 tiles (32 rows per work item). */
typedef struct {
    const float *src;
    float *y; /* [batch][n][pixels] */
    int64_t row0, rows, n, n_g, group, pixels;
} h16_to_nchw_ctx;

static void h16_to_nchw_range(void *vctx, int64_t begin, int64_t end) {
    const h16_to_nchw_ctx *c = vctx;
    for (int64_t t = begin; t < end; t++) {
        const int64_t r0 = t * 32, r1 = r0 + 32 < c->rows ? r0 + 32 : c->rows;
        for (int64_t j0 = 0; j0 < c->n_g; j0 += 32) {
            const int64_t j1 = j0 + 32 < c->n_g ? j0 + 32 : c->n_g;
            for (int64_t r = r0; r < r1; r++) {
                const int64_t row = c->row0 + r, b = row / c->pixels, p = row % c->pixels;
                float *dst = c->y + (b * c->n + c->group * c->n_g) * c->pixels + p;
                const float *src = c->src + r * c->n_g;
                for (int64_t j = j0; j < j1; j++) dst[j * c->pixels] = src[j];
            }
        }
    }
}

int mq_h16_conv2d(const float *x, int64_t batch, int64_t channels, int64_t height, int64_t width, int64_t kh,
                  int64_t kw, int64_t sh, int64_t sw, int64_t ph, int64_t pw, int64_t dh, int64_t dw, int64_t groups,
                  const uint16_t *w, int is_bf16, const float *bias, int64_t n, float *y, int nthreads) {
    const int64_t out_h = mq_conv_out(height, kh, sh, ph, dh);
    const int64_t out_w = mq_conv_out(width, kw, sw, pw, dw);
    const int64_t cg = channels / groups, k = cg * kh * kw, n_g = n / groups, pixels = out_h * out_w;
    /* m can only pass 64 bits on arguments the binding (bind_fp16.c) rejects */
    const int64_t m = mq_size_mul(batch, pixels);
    if (m <= 0 || n <= 0) return 0;
    int64_t chunk = CHUNK_BYTES / ((k > 0 ? k : 1) * (int64_t)sizeof(float));
    chunk = chunk < MIN_CHUNK_ROWS ? MIN_CHUNK_ROWS : chunk / MIN_CHUNK_ROWS * MIN_CHUNK_ROWS;
    if (chunk > m) chunk = m;
    float *rows = malloc(mq_alloc_bytes(mq_size_mul(chunk, k), sizeof(float), 1) + 1);
    float *out_rows = malloc(mq_alloc_bytes(mq_size_mul(chunk, n_g), sizeof(float), 1));
    int status = -1;
    if (!rows || !out_rows) goto done;
    for (int64_t g = 0; g < groups; g++) {
        for (int64_t row0 = 0; row0 < m; row0 += chunk) {
            const int64_t count = m - row0 < chunk ? m - row0 : chunk;
            h16_im2col_ctx ic = {x, channels, height, width, kh, kw, sh, sw, ph, pw, dh, dw, out_w, pixels,
                                 cg, k, g, row0, rows};
            mq_parallel_for(count, 1 + ((int64_t)1 << 14) / (k + 1), nthreads, h16_im2col_range, &ic);
            mq_h16_linear(rows, count, k, k, w + g * n_g * k, is_bf16, bias ? bias + g * n_g : NULL, n_g, out_rows,
                          nthreads);
            h16_to_nchw_ctx tc = {out_rows, y, row0, count, n, n_g, g, pixels};
            mq_parallel_for((count + 31) / 32, 1 + ((int64_t)1 << 14) / (32 * n_g), nthreads, h16_to_nchw_range,
                            &tc);
        }
    }
    status = 0;
done:
    free(rows);
    free(out_rows);
    return status;
}
