/* conv_split.h - the split of a direct conv's image (conv_split.c: the dynamic conv's, static int8's
 * work items) for the table's dconv_split kernel (AVX2 without VNNI: the weight as vpmaddubsw's
 * unsigned side). */
#ifndef MQ_CONV_SPLIT_H
#define MQ_CONV_SPLIT_H

#include <stdint.h>

#include "mq.h"

/* An image's corrections, as mq_static_conv_args reads them (pix_shift, corr_at, corr): per
 * output pixel of the image, row-major. */
typedef struct {
    int32_t *shift, *corr_at, *corr;
} mq_conv_split;

/* The geometry the split needs: the padded NHWC image (plain int8 codes: conv_dynamic_direct.c's,
 * the padding 0, or a static work item's rows, ph = pw = 0) and the conv over it. */
typedef struct {
    int64_t height, width, channels, ph, pw, wp; /* channels % MQ_KGROUP == 0; wp = width + 2 pw */
    int64_t kh, kw, sh, sw, dh, dw, out_h, out_w;
    const int8_t *packed; /* the packed weight, K in (kh, kw, channel) order */
    int64_t n;
} mq_conv_split_geometry;

/* Splits the image's codes in place where a pair of channels (2i, 2i + 1) of a pixel breaks
 * (one sign, |a + b| > 128) and fills s (freed by mq_conv_split_free): 1.  0 where the image
 * keeps the sign trick, nothing changed: by the rules (rules = 1), too many cuts for what the
 * split saves, or without the memory. */
int mq_conv_split_image(const mq_kernels *kt, const mq_conv_split_geometry *g, uint8_t *padded, int rules,
                        mq_conv_split *s);
/* Whether a direct conv of int8 codes (never x + 128) may split its images at the active level kt:
 * 0 never, 1 by the rules (mq_conv_split_image's), 2 always (set_split_rows' mode).  Whole K-groups
 * per tap (channels % MQ_KGROUP == 0); by the rules from a panel of outputs, on symmetric codes. */
int mq_conv_split_mode(const mq_kernels *kt, int64_t channels, int64_t n, int symmetric);
/* Whether a direct conv of int8 codes may run the table's static_conv_ux at the active level kt on
 * codes that are never negative (set_split_rows' switch on): the one rule of both drivers. */
int mq_conv_ux_on(const mq_kernels *kt);
void mq_conv_split_free(mq_conv_split *s);
int64_t mq_split_conv_images(void); /* images that ran the split kernel so far */
void mq_split_conv_count(void);     /* one more of them */
int64_t mq_ux_conv_images(void);    /* images (static: work items) that ran the table's static_conv_ux */
void mq_ux_conv_count(void);        /* one more of them */

#endif
