/* conv_split.c - the direct convs' split for the table's dconv_split: the dynamic conv's images
 * (conv_dynamic_direct.c) and static int8's work items (static_int8.c, their padded rows as an image).
 *
 * As act_split.c for the Linear's rows: with the weight as vpmaddubsw's unsigned side (w + 128)
 * and the image's int8 codes as the signed side, a pair of channels (2i, 2i + 1) of a pixel is
 * exact while |a + b| <= 128 (a pair of opposite signs always is).  Per-image codes break few
 * pairs (the image's largest value sets the scale; post-ReLU 64-channel 56x56 images, about 0.1%).
 * Such a pair keeps |a + b| = 128 in the image (x') and its cut goes into the outputs it
 * reaches: for each tap, the output pixel reading that input pixel through it gets cut * w of that
 * tap's weights, in a correction vector of its own (corr_at / corr).  Every output pixel gets
 * -128 * (the sum of the split codes in its receptive field) (shift):
 *     sum (w + 128) * x' - 128 * sum x' + sum cut * w = sum w * x   (the exact int32).
 * Plain C: the counts run the table's act_split_count on the image's rows. */
#include <stdlib.h>
#include <string.h>

#include "conv_split.h"
#include "size_check.h"

static int64_t split_conv_images;
int64_t mq_split_conv_images(void) { return __atomic_load_n(&split_conv_images, __ATOMIC_RELAXED); }
void mq_split_conv_count(void) { __atomic_add_fetch(&split_conv_images, 1, __ATOMIC_RELAXED); }

int mq_conv_split_mode(const mq_kernels *kt, int64_t channels, int64_t n, int symmetric) {
    const int mode = __atomic_load_n(&mq_split_rows_enabled, __ATOMIC_RELAXED);
    /* (dispatch.c drops dconv_split with a conv kernel on x + 128: VNNI) */
    if (!mode || !kt->dconv_split || kt->static_conv_x_u8 || channels % MQ_KGROUP) return 0;
    return mode == 2 || (n >= MQ_PANEL && symmetric) ? mode : 0;
}

void mq_conv_split_free(mq_conv_split *s) {
    free(s->shift);
    free(s->corr_at);
    free(s->corr);
    memset(s, 0, sizeof *s);
}

/* Output pixel reading padded pixel (y, x) through tap (i, j), or -1. */
static int64_t reader(const mq_conv_split_geometry *g, int64_t y, int64_t x, int64_t i, int64_t j) {
    const int64_t y0 = y - i * g->dh, x0 = x - j * g->dw;
    if (y0 < 0 || x0 < 0 || y0 % g->sh || x0 % g->sw) return -1;
    const int64_t oh = y0 / g->sh, ow = x0 / g->sw;
    return oh < g->out_h && ow < g->out_w ? oh * g->out_w + ow : -1;
}

#define SPREAD_AHEAD 6 /* panels */

/* Each tap's reader of padded pixel (y, x) gets cut * w of input channel ch's weights. */
static void spread_cut(const mq_conv_split_geometry *g, mq_conv_split *s, int64_t *used, int64_t y, int64_t x,
                       int64_t ch, int cut) {
    const int64_t np = mq_round_up(g->n, MQ_PANEL), groups = g->kh * g->kw * g->channels / MQ_KGROUP;
    for (int64_t i = 0; i < g->kh; i++)
        for (int64_t j = 0; j < g->kw; j++) {
            const int64_t o = reader(g, y, x, i, j);
            if (o < 0) continue;
            if (s->corr_at[o] < 0) {
                s->corr_at[o] = (int32_t)(*used)++;
                memset(s->corr + s->corr_at[o] * np, 0, (size_t)np * sizeof(int32_t));
            }
            int32_t *v = s->corr + s->corr_at[o] * np;
            /* the weight's byte in each panel's 64-byte line of this K-group, a line per panel: the
             * lines a few panels ahead requested early (the weight is in L3 or further by now) */
            const int8_t *w = g->packed + ((i * g->kw + j) * (g->channels / MQ_KGROUP) + ch / MQ_KGROUP) *
                                              MQ_PANEL_GROUP_BYTES + ch % MQ_KGROUP;
            const int64_t panel_bytes = groups * MQ_PANEL_GROUP_BYTES, panels = np / MQ_PANEL;
            for (int64_t p = 0; p < panels; p++) {
                const int8_t *line = w + p * panel_bytes;
                if (p + SPREAD_AHEAD < panels) __builtin_prefetch(line + SPREAD_AHEAD * panel_bytes);
                for (int64_t c = 0; c < MQ_PANEL && p * MQ_PANEL + c < g->n; c++)
                    v[p * MQ_PANEL + c] += cut * (int32_t)line[c * MQ_KGROUP];
            }
        }
}

int mq_conv_split_image(const mq_kernels *kt, const mq_conv_split_geometry *g, uint8_t *padded, int rules,
                        mq_conv_split *s) {
    memset(s, 0, sizeof *s);
    const int64_t ch = g->channels, row_bytes = g->width * ch, words = mq_split_mask_words(row_bytes);
    const int64_t taps = g->kh * g->kw, pixels = g->out_h * g->out_w, rows = g->height + 2 * g->ph;
    uint32_t *mask = malloc(mq_alloc_bytes(mq_size_mul(g->height, words ? words : 1), sizeof(uint32_t), 1));
    int32_t *psum = malloc(mq_alloc_bytes(mq_size_mul(rows, g->wp), sizeof(int32_t), 1));
    int ok = mask && psum;
    int64_t cuts = 0;
    for (int64_t y = 0; ok && y < g->height; y++) {
        int32_t sum;
        const int8_t *row = (const int8_t *)padded + ((g->ph + y) * g->wp + g->pw) * ch;
        if (kt->act_split_count(row, row_bytes, &sum, mask + y * words))
            for (int64_t w = 0; w < words; w++) cuts += __builtin_popcount(mask[y * words + w]);
    }
    /* the rules: a cut costs a correction of n sums per tap it reaches (~3n scalar operations); a
     * pixel's conv k * n * 3 / 32 vector ones with the split, a third more with the sign trick: the
     * split while the corrections stay under half what it saves (128 * cuts * taps <= pixels * k / 2);
     * else the sign trick (uniform noise: a quarter of the pairs break) */
    if (rules && cuts * 256 > pixels * ch) ok = 0;
    const int64_t room = cuts * taps < pixels ? cuts * taps : pixels, np = mq_round_up(g->n, MQ_PANEL);
    if (ok) {
        s->shift = malloc(mq_alloc_bytes(pixels, sizeof(int32_t), 1));
        s->corr_at = malloc(mq_alloc_bytes(pixels, sizeof(int32_t), 1));
        s->corr = malloc(mq_alloc_bytes(mq_size_mul(room ? room : 1, np), sizeof(int32_t), 1));
        ok = s->shift && s->corr_at && s->corr;
    }
    if (!ok) {
        free(mask);
        free(psum);
        mq_conv_split_free(s);
        return 0;
    }
    for (int64_t o = 0; o < pixels; o++) s->corr_at[o] = -1;
    int64_t used = 0;
    for (int64_t y = 0; y < g->height && cuts; y++) {
        int8_t *row = (int8_t *)padded + ((g->ph + y) * g->wp + g->pw) * ch;
        for (int64_t w = 0; w < words; w++)
            for (uint32_t bits = mask[y * words + w]; bits; bits &= bits - 1) {
                int64_t at;
                const int cut = mq_split_cut_pair(row, w * 32 + __builtin_ctz(bits), &at); /* now +-128 */
                spread_cut(g, s, &used, g->ph + y, g->pw + at / ch, at % ch, cut);
            }
    }
    /* each padded pixel's sum of codes (the padding's are 0), then each output pixel's field */
    memset(psum, 0, (size_t)(rows * g->wp) * sizeof(int32_t));
    for (int64_t y = 0; y < g->height; y++)
        for (int64_t x = 0; x < g->width; x++) {
            const int8_t *p = (const int8_t *)padded + ((g->ph + y) * g->wp + g->pw + x) * ch;
            int32_t sum = 0;
            for (int64_t c = 0; c < ch; c++) sum += p[c];
            psum[(g->ph + y) * g->wp + g->pw + x] = sum;
        }
    for (int64_t oh = 0; oh < g->out_h; oh++)
        for (int64_t ow = 0; ow < g->out_w; ow++) {
            int64_t field = 0;
            for (int64_t i = 0; i < g->kh; i++)
                for (int64_t j = 0; j < g->kw; j++)
                    field += psum[(oh * g->sh + i * g->dh) * g->wp + ow * g->sw + j * g->dw];
            s->shift[oh * g->out_w + ow] = (int32_t)(-128 * field); /* |field| <= 32768 * 128 */
        }
    free(mask);
    free(psum);
    return 1;
}
