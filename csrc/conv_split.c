/* conv_split.c - the direct convs' split for the table's dconv_split: the dynamic conv's images
 * (conv_dynamic_direct.c) and static int8's work items (static_int8.c, their padded rows as an image).
 *
 * As act_split.c for the Linear's rows: with the weight as vpmaddubsw's unsigned side (w + 128)
 * and the image's int8 codes as the signed side, a pair of channels (2i, 2i + 1) of a pixel is
 * exact while |a + b| <= 128 (a pair of opposite signs always is).  Per-image codes break few
 * pairs (the image's largest value sets the scale; Gaussian images of 64-256 channels, 0.1-0.25%).
 * Images with no negative code (post-ReLU) do not come here: they take the table's static_conv_ux.
 * Such a pair keeps |a + b| = 128 in the image (x') and its cut goes into the outputs it
 * reaches: for each tap, the output pixel reading that input pixel through it gets (w + 128) * cut
 * of that tap's weights (the kernel's own multiply, the table's dconv_split_spread, a K-group of a
 * pixel at a time), in a correction vector of its own (corr_at / corr).  Every output pixel gets
 * -128 * (the sum of the image's codes in its receptive field) (shift):
 *     sum (w + 128) * x' + sum (w + 128) * cut - 128 * sum x = sum w * x   (x = x' + cut: exact int32).
 * The counts run the table's act_split_count on the image's rows. */
#include <stdlib.h>
#include <string.h>

#include "conv_split.h"
#include "size_check.h"

static int64_t split_conv_images;
int64_t mq_split_conv_images(void) { return __atomic_load_n(&split_conv_images, __ATOMIC_RELAXED); }
void mq_split_conv_count(void) { __atomic_add_fetch(&split_conv_images, 1, __ATOMIC_RELAXED); }
static int64_t ux_conv_images;
int64_t mq_ux_conv_images(void) { return __atomic_load_n(&ux_conv_images, __ATOMIC_RELAXED); }
void mq_ux_conv_count(void) { __atomic_add_fetch(&ux_conv_images, 1, __ATOMIC_RELAXED); }

int mq_conv_split_mode(const mq_kernels *kt, int64_t channels, int64_t n, int symmetric) {
    const int mode = __atomic_load_n(&mq_split_rows_enabled, __ATOMIC_RELAXED);
    /* (dispatch.c drops dconv_split with a conv kernel on x + 128: VNNI) */
    if (!mode || !kt->dconv_split || kt->static_conv_x_u8 || channels % MQ_KGROUP) return 0;
    return mode == 2 || (n >= MQ_PANEL && symmetric) ? mode : 0;
}

int mq_conv_ux_on(const mq_kernels *kt) {
    /* (dispatch.c drops static_conv_ux with a conv kernel on x + 128: VNNI) */
    return kt->static_conv_ux && !kt->static_conv_x_u8 && __atomic_load_n(&mq_split_rows_enabled, __ATOMIC_RELAXED);
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

void mq_ref_dconv_split_spread(const int8_t *const *w, int32_t *const *v, int64_t taps, int64_t panel_bytes,
                               int64_t panels, uint32_t cuts) {
    for (int64_t t = 0; t < taps; t++)
        for (int64_t p = 0; p < panels; p++)
            for (int64_t c = 0; c < MQ_PANEL; c++) {
                const int8_t *group = w[t] + p * panel_bytes + c * MQ_KGROUP;
                int32_t sum = 0;
                for (int b = 0; b < MQ_KGROUP; b++) sum += (group[b] + 128) * (int8_t)(cuts >> (8 * b));
                v[t][p * MQ_PANEL + c] += sum;
            }
}

#define SPREAD_TAPS 32 /* taps handed to the table's spread at once */

/* Each tap's reader of the pixel of padded row y holding the row's K-group `group` gets its share
 * of the group's cuts: sum (w + 128) * cut over the group (the table's dconv_split_spread). */
static void spread_cuts(const mq_kernels *kt, const mq_conv_split_geometry *g, mq_conv_split *s, int64_t *used,
                        int64_t y, int64_t group, uint32_t cuts) {
    const int64_t np = mq_round_up(g->n, MQ_PANEL), groups = g->channels / MQ_KGROUP;
    const int64_t x = g->pw + group / groups, kg = group % groups, panel_bytes = g->kh * g->kw * groups * MQ_PANEL_GROUP_BYTES;
    const int8_t *w[SPREAD_TAPS];
    int32_t *v[SPREAD_TAPS];
    int64_t taps = 0;
    for (int64_t i = 0; i < g->kh; i++)
        for (int64_t j = 0; j < g->kw; j++) {
            const int64_t o = reader(g, y, x, i, j);
            if (o < 0) continue;
            if (s->corr_at[o] < 0) {
                s->corr_at[o] = (int32_t)(*used)++;
                memset(s->corr + s->corr_at[o] * np, 0, (size_t)np * sizeof(int32_t));
            }
            w[taps] = g->packed + ((i * g->kw + j) * groups + kg) * MQ_PANEL_GROUP_BYTES;
            v[taps] = s->corr + s->corr_at[o] * np;
            if (++taps == SPREAD_TAPS) {
                kt->dconv_split_spread(w, v, taps, panel_bytes, np / MQ_PANEL, cuts);
                taps = 0;
            }
        }
    if (taps) kt->dconv_split_spread(w, v, taps, panel_bytes, np / MQ_PANEL, cuts);
}

/* Cuts padded row y's breaking pairs (mask) in place and spreads them, a K-group of a pixel at a time. */
static void cut_row(const mq_kernels *kt, const mq_conv_split_geometry *g, mq_conv_split *s, int64_t *used,
                    int8_t *row, int64_t y, const uint32_t *mask) {
    const int64_t words = mq_split_mask_words(g->width * g->channels);
    int64_t group = -1;
    uint32_t cuts = 0;
    for (int64_t w = 0; w < words; w++)
        for (uint32_t bits = mask[w]; bits; bits &= bits - 1) {
            int64_t at;
            const int cut = mq_split_cut_pair(row, w * 32 + __builtin_ctz(bits), &at);
            if (at / MQ_KGROUP != group) { /* a group's two pairs come one after the other */
                if (cuts) spread_cuts(kt, g, s, used, y, group, cuts);
                group = at / MQ_KGROUP;
                cuts = 0;
            }
            cuts |= (uint32_t)(uint8_t)cut << (8 * (at % MQ_KGROUP));
        }
    if (cuts) spread_cuts(kt, g, s, used, y, group, cuts);
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
    /* the rules: a cut costs a correction of n sums per tap it reaches (n / 16 lines of the weight,
     * each from L2 or further, ~20 cycles); a pixel's conv k * n * 3 / 32 vector operations with the
     * split, a third more with the sign trick: the split while the corrections stay well under what
     * it saves (cuts * 256 <= pixels * channels); else the sign trick (uniform noise: a quarter of the
     * pairs break) */
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
    /* each padded pixel's sum of codes before the cuts (the padding's are 0), then each output
     * pixel's field: the corrections carry (w + 128) * cut, so the shift is -128 * the field's
     * sum of the image's own codes */
    memset(psum, 0, (size_t)(rows * g->wp) * sizeof(int32_t));
    for (int64_t y = 0; y < g->height; y++)
        for (int64_t x = 0; x < g->width; x++) {
            const int8_t *p = (const int8_t *)padded + ((g->ph + y) * g->wp + g->pw + x) * ch;
            int32_t sum = 0;
            for (int64_t c = 0; c < ch; c++) sum += p[c];
            psum[(g->ph + y) * g->wp + g->pw + x] = sum;
        }
    for (int64_t oh = 0; oh < g->out_h; oh++) { /* |field| <= 32768 * 128 */
        int32_t *field = s->shift + oh * g->out_w;
        memset(field, 0, (size_t)g->out_w * sizeof(int32_t));
        for (int64_t i = 0; i < g->kh; i++)
            for (int64_t j = 0; j < g->kw; j++) {
                const int32_t *p = psum + (oh * g->sh + i * g->dh) * g->wp + j * g->dw;
                if (g->sw == 1)
                    for (int64_t ow = 0; ow < g->out_w; ow++) field[ow] += p[ow];
                else
                    for (int64_t ow = 0; ow < g->out_w; ow++) field[ow] += p[ow * g->sw];
            }
        for (int64_t ow = 0; ow < g->out_w; ow++) field[ow] *= -128;
    }
    for (int64_t o = 0; o < pixels; o++) s->corr_at[o] = -1;
    int64_t used = 0;
    for (int64_t y = 0; y < g->height && cuts; y++)
        cut_row(kt, g, s, &used, (int8_t *)padded + ((g->ph + y) * g->wp + g->pw) * ch, g->ph + y, mask + y * words);
    free(mask);
    free(psum);
    return 1;
}
