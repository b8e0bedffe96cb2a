/* mq.h - shared types for mono-quant's C kernels.
 *
 * Plain C11: no Python here.  Kernels work on rows (a contiguous run of
 * elements that share one scale / zero-point); every kernel exists once as a
 * scalar reference in ref.c and optionally as SIMD twins with the same
 * signature, chosen once at import time through the table in dispatch.c.
 */
#ifndef MQ_H
#define MQ_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "layout.h"

/* Source element types a kernel can read.  bf16 and fp16 are raw 16-bit
 * patterns (bf16 crosses from torch as an int16 view). */
typedef enum { MQ_SRC_F32 = 0, MQ_SRC_F16 = 1, MQ_SRC_BF16 = 2, MQ_SRC_COUNT = 3 } mq_src_t;

/* Instruction-set levels, ordered: a machine supporting level L runs all < L. */
typedef enum { MQ_ISA_SCALAR = 0, MQ_ISA_AVX2 = 1, MQ_ISA_AVX512 = 2, MQ_ISA_COUNT = 3 } mq_isa_t;

/* ---- fp16 / bf16 <-> fp32, bit exact, no library calls ------------------ */

static inline float mq_bits_to_f32(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }
static inline uint32_t mq_f32_to_bits(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }

/* bf16 is the top half of an fp32: widening is a shift. */
static inline float mq_bf16_to_f32(uint16_t h) { return mq_bits_to_f32((uint32_t)h << 16); }

/* IEEE half -> float, handles subnormals, inf and NaN exactly. */
static inline float mq_f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1fu;
    uint32_t man = h & 0x3ffu;
    if (exp == 0x1f) return mq_bits_to_f32(sign | 0x7f800000u | (man << 13));
    if (exp == 0) {
        if (man == 0) return mq_bits_to_f32(sign);
        /* subnormal: value = man * 2^-24, exact in fp32 */
        float v = (float)man * (1.0f / 16777216.0f);
        return sign ? -v : v;
    }
    return mq_bits_to_f32(sign | ((exp + 112u) << 23) | (man << 13));
}

static inline float mq_load_src(const void *src, mq_src_t kind, int64_t i) {
    switch (kind) {
    case MQ_SRC_F16: return mq_f16_to_f32(((const uint16_t *)src)[i]);
    case MQ_SRC_BF16: return mq_bf16_to_f32(((const uint16_t *)src)[i]);
    default: return ((const float *)src)[i];
    }
}

static inline size_t mq_src_size(mq_src_t kind) { return kind == MQ_SRC_F32 ? 4 : 2; }

/* One row of n source values as fp32, zero-filled to n_pad (the kernels' padded rows).  A loop
 * per kind, not mq_load_src per value: the compiler vectorizes each (bf16 is a shift). */
static inline void mq_row_to_f32(const void *src, mq_src_t kind, int64_t n, int64_t n_pad, float *dst) {
    if (kind == MQ_SRC_F32)
        memcpy(dst, src, (size_t)n * sizeof(float));
    else if (kind == MQ_SRC_BF16)
        for (int64_t i = 0; i < n; i++) dst[i] = mq_bf16_to_f32(((const uint16_t *)src)[i]);
    else
        for (int64_t i = 0; i < n; i++) dst[i] = mq_f16_to_f32(((const uint16_t *)src)[i]);
    for (int64_t i = n; i < n_pad; i++) dst[i] = 0.0f;
}

/* ---- kernel signatures ---------------------------------------------------- */

/* min and max of n elements; returns 1 if any element is NaN or +-Inf. */
typedef int (*mq_minmax_fn)(const void *src, int64_t n, float *out_min, float *out_max);

/* dst[i] = clamp(rint(zp + src[i] * inv_scale), qmin, qmax), stored as the low
 * byte (int8 for qmin >= -128 && qmax <= 127, uint8 for 0..255).
 * Rounding follows torch exactly: the product is rounded to fp32 before the
 * zero-point is added (torch.quantize_per_channel, fbgemm's scalar
 * "legacy" Quantize) unless use_fma is set, when x * inv + zp is one FMA
 * (torch.quantize_per_tensor, fbgemm's AVX2 path).  The two differ only on
 * near-ties, but bit-identity needs the right one. */
typedef void (*mq_quantize_fn)(const void *src, int64_t n, float inv_scale, float zero_point,
                               float qmin, float qmax, int use_fma, uint8_t *dst);

/* dst[i] = ((float)q[i] - zp) * scale; q is int8 when is_signed, else uint8. */
typedef void (*mq_dequantize_fn)(const uint8_t *q, int64_t n, float scale, float zero_point,
                                 int is_signed, float *dst);

/* Sums of src^2 and of (src - (q - zp) * scale)^2 over n elements: the
 * signal and noise powers behind a row's SQNR.  Float sums, so SIMD twins
 * agree with the reference to rounding, not bit for bit. */
typedef void (*mq_sqerr_fn)(const void *src, const uint8_t *q, int64_t n, float scale, float zero_point,
                            int is_signed, double *sum_x2, double *sum_err2);

/* ---- int8 matmul: packed weights (linear.c; layout.h, docs/formats.md) ---- */

static inline int64_t mq_round_up(int64_t v, int64_t m) { return (v + m - 1) / m * m; }

/* The row stride of quantized activations kp bytes long.  A 32 KiB 8-way
 * L1D (Haswell to Ice Lake, Zen 2 to 4) maps addresses 4 KiB apart to one
 * set: a 12-row tile reading 12 rows of a 4096-wide layer at once evicted
 * its own rows every group (the AVX2 12-row kernels ran at half speed at
 * K = 4096 on Zen 4, not at K = 4160).  64 more bytes put every row of a
 * tile in its own set. */
static inline int64_t mq_x_row_stride(int64_t kp) { return kp % 1024 == 0 ? kp + 64 : kp; }

/* An entry of a split activation row's list (act_split.c): cut[0..1], the
 * cut-off part of the K-group at byte offset[0] of a panel, bytes 0-1; cut[2..3]
 * that of offset[1], bytes 2-3 (at most one nonzero per pair). */
typedef struct {
    int32_t offset[2]; /* K-group * MQ_PANEL_GROUP_BYTES */
    int8_t cut[4];
} mq_split_entry;
/* 1 (default) lets mq_linear_dynamic run the table's qgemm_split on calls its rules take (and
 * qgemm_u7 on calls of codes >= 0), the direct convs its dconv_split on images their rules take
 * (conv_split.c) and its static_conv_ux on codes that are never negative (dynamic images of codes
 * 0..127, static work items of codes x - x_zp that keep it); 0 keeps them on qgemm / static_conv;
 * 2 takes the split kernels on codes of both signs whatever the call's size and list (tests).  The
 * same bits in every mode.  Written with the GIL held. */
extern int mq_split_rows_enabled;
int64_t mq_split_rows_calls(void); /* calls that ran the split kernel so far */
int64_t mq_unsigned_rows_calls(void); /* calls whose 8-bit codes, all >= 0, ran qgemm_u7 so far */
/* 32-bit words of a row's mask of breaking pairs (kp / 2 pairs) */
static inline int64_t mq_split_mask_words(int64_t kp) { return (kp / 2 + 31) / 32; }
typedef int64_t (*mq_split_count_fn)(const int8_t *q, int64_t kp, int32_t *sum, uint32_t *mask);
int64_t mq_act_split_count(const int8_t *q, int64_t kp, int32_t *sum, uint32_t *mask);
int32_t mq_act_split_pairs(const int8_t *q, int64_t first, int64_t end, uint32_t *mask, int64_t count[2]);
void mq_act_split_row(int8_t *q, int64_t kp, const uint32_t *mask, mq_split_entry *entries);
int mq_split_cut_pair(int8_t *q, int64_t i, int64_t *at); /* a breaking pair's cut (act_split.c) */
/* A direct conv's cuts of one K-group of a pixel (conv_split.c), against the taps' weights: for each
 * tap t < taps and each of the panels' 64-byte lines (w[t] + p * panel_bytes: 16 outputs x the
 * group's 4 bytes),
 *     v[t][p * 16 + c] += sum_b (w[t][p][c][b] + 128) * cut_b,
 * cut_b byte b of cuts (at most one nonzero per pair: exact in vpmaddubsw).  All taps at once: the
 * lines are far apart (a panel's K apart), the prefetches cover the taps of the next panels. */
typedef void (*mq_split_spread_fn)(const int8_t *const *w, int32_t *const *v, int64_t taps, int64_t panel_bytes,
                                   int64_t panels, uint32_t cuts);
void mq_ref_dconv_split_spread(const int8_t *const *w, int32_t *const *v, int64_t taps, int64_t panel_bytes,
                               int64_t panels, uint32_t cuts);

/* Dynamic int8 x int8 -> int32 matmul over the panels [p0, p1) of one
 * packed weight, with the fused epilogue
 *     acc[m][n] = sum_k xq[m][k] * (w[n][k] - w_zp[n])               (exact int32)
 *     y[m][n]   = (float)acc[m][n] * (x_scale[m] * w_scale[n]) + bias[n]
 * (fp32, in this order, no FMA: every ISA gives the same bits). */
typedef struct {
    const uint8_t *x;      /* [m][kp] activations, int8; or int8 + 128 as uint8 when x_u8 */
    int x_u8;              /* set by the driver from the table's qgemm_x_u8 */
    const float *x_scale;  /* [m] */
    const int32_t *x_sum;  /* [m] row sums of the int8 activations; NULL when w_zp is NULL */
    int64_t m, kp, n;
    const int8_t *w;       /* packed weight */
    const int32_t *w_sum;  /* [np] column sums sum_k w[n][k] (the +128 shift's compensation) */
    const float *w_scale;  /* [n] */
    const int32_t *w_zp;   /* [n], or NULL when every zero-point is 0 */
    int w_has_m128;        /* some weight is -128 (AVX2's sign trick can't take it) */
    const float *bias;     /* [n] or NULL */
    float *y;              /* [m][ldy] fp32 output, or NULL when acc is wanted */
    int32_t *acc;          /* [m][ldy] exact accumulators instead of y (tests) */
    int64_t ldy;           /* row stride of y / acc (elements), >= n */
    int64_t gemv_max_rows; /* up to this many rows, kernels stream the weight once (GEMV tiles) */
    const int32_t *x_zp;   /* [m] reduce_range, for qgemm_u7 kernels only: x holds the 7-bit codes
                            * xu = xq + x_zp[m] (0..127, uint8) and xq = xu - x_zp[m] (see act_u7.c) */
    int64_t ldx;           /* row stride of x in bytes, >= kp (mq_x_row_stride: rows a multiple of 1 KiB
                            * long are padded so that a tile's rows fall in different L1 sets) */
    /* qgemm_split kernels only (act_split.c): x holds the split int8 rows, row m's list entries are
     * split[split_start[m] .. split_start[m + 1]), split_sum[m] the sum of its codes */
    const mq_split_entry *split;
    const int64_t *split_start;
    const int32_t *split_sum;
    const int32_t *split_res; /* the AVX2 split kernel's own scratch: each row's 16 int32 starts */
} mq_qgemm_args;
typedef void (*mq_qgemm_fn)(const mq_qgemm_args *a, int64_t p0, int64_t p1);

/* The arguments of a's rows [m0, m0 + rows) as a call of their own. */
static inline mq_qgemm_args mq_qgemm_rows(const mq_qgemm_args *a, int64_t m0, int64_t rows) {
    mq_qgemm_args sub = *a;
    sub.m = rows;
    sub.x += m0 * sub.ldx;
    sub.x_scale += m0;
    if (sub.x_sum) sub.x_sum += m0;
    if (sub.x_zp) sub.x_zp += m0;
    if (sub.y) sub.y += m0 * sub.ldy;
    if (sub.acc) sub.acc += m0 * sub.ldy;
    if (sub.split_start) { /* (split itself is indexed by the starts) */
        sub.split_start += m0;
        sub.split_sum += m0;
    }
    return sub;
}

/* Static int8 direct convolution (static_int8.c drives it, static_int8.h has the numerics):
 * output rows of one image read straight from padded, encoded NHWC input rows (no im2col),
 * int32 sums in registers, then the requantizing epilogue in registers:
 *     acc = sum over taps (i, j) and channels of x[r*sh + i*dh][ow*sw + j*dw][c] * w   (exact)
 *     y   = (float)(acc - zcol[n]) * xw[n] (+ bias[n]); v = clamp(y, act_lo, act_hi)
 *     q   = clamp(round_half_even(v * inv_out_scale) + out_zp, -127, 127)
 * fp32 in this order without FMA, so every ISA writes the same bits. */
typedef struct {
    const uint8_t *x;        /* padded input rows [..][wp][c]: int8, or int8 ^ 0x80 (= int8 + 128) when the
                                table's static_conv_x_u8 */
    int64_t wp, c;           /* padded row width (pixels) and channels, c % 4 == 0 */
    int64_t kh, kw, sh, sw, dh, dw;
    int64_t out_rows, out_w; /* output row r, pixel ow reads rows r*sh + i*dh, pixels ow*sw + j*dw */
    const int8_t *w;         /* packed weight (layout.h), k = kh * kw * c in (i, j, c) order */
    int64_t n;               /* output channels, ceil(n / MQ_PANEL) panels */
    const int32_t *zcol;     /* [panels * MQ_PANEL] subtracted from each sum (zero-points, the +128) */
    const float *xw, *bias;  /* [n]; bias may be NULL */
    float act_lo, act_hi, inv_out_scale;
    int out_zp;
    int8_t *y_q;             /* [out_rows][out_w][n] int8, or NULL: then y_f32 gets v */
    float *y_f32;
    /* the dconv_split kernel only (its sums are sum (w + 128) * x, conv_split.c): per
     * output pixel of the call, pix_shift[pix] added to every channel's sum, and where
     * corr_at[pix] >= 0 the np-int32 vector corr + corr_at[pix] * np (np: n rounded up to
     * MQ_PANEL); NULL for every other kernel */
    const int32_t *pix_shift, *corr_at, *corr;
} mq_static_conv_args;
typedef void (*mq_static_conv_fn)(const mq_static_conv_args *a);
/* The first input byte output pixel pix (row-major over the call's rows) reads: tap (0, 0). */
static inline const uint8_t *mq_static_pixel_base(const mq_static_conv_args *a, int64_t pix) {
    const int64_t r = pix / a->out_w, ow = pix % a->out_w;
    return a->x + (r * a->sh * a->wp + ow * a->sw) * a->c;
}
/* Static int8 residual add over n values (static_int8.h's numerics, mq_ref_static_add):
 * v = clamp((a - a_zp) * a_scale + (b - b_zp) * b_scale, act_lo, act_hi) (two products, one sum,
 * no FMA), then y_q = requantize(v) or y_f32 = v (exactly one of them non-NULL). */
typedef void (*mq_static_add_fn)(const int8_t *a, float a_scale, int a_zp, const int8_t *b, float b_scale, int b_zp,
                                 int64_t n, float act_lo, float act_hi, float inv_out_scale, int out_zp, int8_t *y_q,
                                 float *y_f32);

/* One row of NCHW bytes to NHWC: dst[w * channels + k] = src[k * plane + w] ^ flip for
 * k < channels, w < width (the dynamic direct conv's and static int8's quantized images;
 * flip 0x80 encodes int8 as uint8 + 128).  Exact: every ISA writes the same bytes. */
typedef void (*mq_nhwc_bytes_fn)(const uint8_t *src, int64_t plane, int64_t channels, int64_t width, uint8_t flip,
                                 uint8_t *dst);
/* NHWC float sums to NCHW: y[j * ld + p] = acc[p * n + j] * s[j] + bias[j] for p < np, j < n
 * (s NULL: the value itself; bias NULL: no sum); a product then a sum, no FMA, so every ISA
 * writes the same bits (the dynamic direct conv's epilogue, static int8's float outputs). */
typedef void (*mq_nchw_f32_fn)(const float *acc, int64_t np, int64_t n, const float *s, const float *bias, float *y,
                               int64_t ld);

/* Static int8 depthwise conv (groups == channels), output rows [begin, end) of (image, oh):
 *     acc[q] = sum over the taps inside the image of (x - x_zp) * w[tap][q]   (exact; padding adds 0)
 * then the epilogue of mq_static_conv_args with zcol = 0 (mq_ref_static_dw is the ground truth).
 * A SIMD twin may read every tap, a tap in the padding reading x_zp_row, and subtract x_zp_sum:
 * sum (x - x_zp) * w = sum x * w - x_zp * sum w, the same int32 (static_int8.h bounds the taps). */
typedef struct {
    const int8_t *x;           /* NHWC [batch][height][width][channels] */
    int64_t channels, height, width, kh, kw, sh, sw, ph, pw, dh, dw, out_h, out_w;
    const int16_t *w;          /* [kh * kw][channels]: weight - w_zp */
    /* for the SIMD twins (NULL where none reads them; channels >= 16, taps <= MQ_DW_SIMD_MAX_TAPS):
     * taps 2t and 2t + 1 of w (the last odd tap's partner is 0) per 16-channel block,
     * [ceil(kh * kw / 2)][channels / 16][32] int16: pairs (w[2t][q], w[2t + 1][q]) of channels
     * 0-3, 8-11, then of 4-7, 12-15 (AVX2's unpacklo / unpackhi order) */
    const int16_t *w_pairs;
    const int32_t *x_zp_sum;   /* [channels]: x_zp * sum over all taps of w */
    const int8_t *x_zp_row;    /* [channels] bytes of x_zp */
    int x_zp;
    const float *x_w_scale, *bias; /* [channels]; bias may be NULL */
    float act_lo, act_hi, inv_out_scale;
    int out_zp;
    int8_t *y_q;               /* NHWC [batch][out_h][out_w][channels], or NULL: then y_f32 gets v */
    float *y_f32;
    int32_t *scratch;          /* [channels] the kernel may write (one range's, one thread's) */
} mq_static_dw_args;
typedef void (*mq_static_dw_fn)(const mq_static_dw_args *a, int64_t begin, int64_t end);
/* The most taps (kh * kw) the SIMD twins take (their per-pixel pointer array; 11 x 11 is 121):
 * w_pairs is made only for calls within it, larger kernels run the reference. */
#define MQ_DW_SIMD_MAX_TAPS 128

/* One panel of that layout (16*kp bytes at dst, w_sum[16]) from nvalid <= 16
 * rows of k int8 (row stride ld), the channels past nvalid zero; *has_m128 =
 * some weight is -128.  Exact: every ISA writes the same bytes. */
typedef void (*mq_pack_panel_fn)(const int8_t *rows, int64_t ld, int64_t nvalid, int64_t k, int8_t *dst,
                                 int32_t *w_sum, uint8_t *has_m128);

/* Weight-only matmul over the panels [p0, p1): fp32 activations times the
 * packed int8 weight dequantized in registers:
 *     y[m][n] = (sum_k x[m][k] * (float)(w[n][k] - w_zp[n])) * w_scale[n] + bias[n]
 * The sum's order: the scalar reference adds the k products in order; every SIMD
 * level keeps 4 partial sums (lane j over k = 4g + j, g in order, one fma each) and
 * returns ((l0 + l1) + (l2 + l3)) * scale (+ bias): whatever its tiles, the same bits
 * (tests/kernels/test_weight_only_order.py models both orders bit for bit). */
typedef struct {
    const float *x;        /* [m][kp] fp32, zero padded to kp */
    int64_t m, kp, n;
    const int8_t *w;
    const float *w_scale;
    const int32_t *w_zp;   /* or NULL */
    const float *bias;     /* or NULL */
    float *y;              /* [m][n] */
} mq_wgemm_args;
typedef void (*mq_wgemm_fn)(const mq_wgemm_args *a, int64_t p0, int64_t p1);
/* ---- INT4 group-wise (int4.c drivers; layout.h, docs/formats.md) ---------
 * All int4 kernels take n a multiple of MQ_Q4_BLOCK. */

/* codes = clamp(rint(zero + x[i] * inv_scale), qmin, qmax) (product rounded
 * first, as the int8 path), packed into n / 2 bytes. */
typedef void (*mq_q4_pack_fn)(const float *x, int64_t n, float inv_scale, float zero, float qmin, float qmax,
                              uint8_t *dst);
/* Squared error sum of quantizing x with (scale, zero): sum (x - (code - zero) * scale)^2.
 * Accumulated in 16 fp32 lanes (lane l takes elements l, l+16, ...) reduced by
 * a fixed tree, so every ISA returns the same bits and the method search
 * (int4.c) picks the same parameters everywhere. */
typedef float (*mq_q4_sqerr_fn)(const float *x, int64_t n, float scale, float inv_scale, float zero, float qmin,
                                float qmax);
/* dst[i] = (code[i] - zero) * scale for n codes of packed blocks (exact in fp32). */
typedef void (*mq_q4_unpack_fn)(const uint8_t *packed, int64_t n, float scale, float zero, float *dst);
/* Weight-only GEMV for a few activation rows: for i < m, r in [r0, r1):
 * y[i * ldy + r] = sum_g scale[r,g] * (sum_{k in g} code[r,k] x[i,k] - zero[r,g] * xsum[i * ngroups + g]).
 * x rows are fp32, zero-padded to kpad; xsum holds each group's sum of x. */
typedef void (*mq_q4_gemv_fn)(const float *x, int64_t ldx, int64_t m, const float *xsum, const uint8_t *w,
                              int64_t kpad, int64_t group, const uint16_t *scale, const uint8_t *zero, int64_t r0,
                              int64_t r1, float *y, int64_t ldy);
/* y[i * ldy + j] += sum_{k < kpad} x[i * ldx + k] * w[j * ldw + k] for i < m, j < nr
 * (a dequantized weight panel times activation rows; kpad a multiple of 32). */
typedef void (*mq_f32_panel_fn)(const float *x, int64_t ldx, int64_t m, const float *w, int64_t ldw, int64_t nr,
                                int64_t kpad, float *y, int64_t ldy);

/* int8-activation GEMV (integer dot products, e.g. AVX-512 VNNI vpdpbusd):
 * activations quantized per (row i, group g) to xq = rint(x / xscale[i,g])
 * in -127..127 with xqsum[i,g] = sum of xq, and stored in the nibble order
 * of the packed weight: in each 128-column chunk, positions 0..63 hold the
 * columns of the four blocks' low nibbles (block b, j < 16 -> 16b + j) and
 * 64..127 those of the high nibbles.  Needs kpad % 128 == 0, group % 128 == 0
 * and group <= 4096 (int32 headroom).  For r in [r0, r1), i < m:
 *   y[i * ldy + r] = sum_g ((scale[r,g] * 1/16) * xscale[i,g]) * (float)(16 * dot - zero[r,g] * xqsum[i,g])
 * summed over g in order from 0 with separate multiply and add, so every
 * ISA gives the same bits (dot, the int32 sum of code * xq, is exact). */
/* One activation row (kpad floats, multiples of 128, as group) to that form:
 * per group xscale = absmax / 127 (1 for an all-zero group, NaN when the group
 * holds NaN/Inf, whose codes are then 0, so the output is NaN as on the fp32
 * path), xq = clamp(rint(x * (1 / xscale)), -127, 127), xqsum = sum of xq. */
typedef void (*mq_q4_act_i8_fn)(const float *x, int64_t kpad, int64_t group, int8_t *xq, float *xscale,
                                int32_t *xqsum);
typedef void (*mq_q4_gemv_i8_fn)(const int8_t *xq, int64_t m, const float *xscale, const int32_t *xqsum,
                                 const uint8_t *w, int64_t kpad, int64_t group, const uint16_t *scale,
                                 const uint8_t *zero, int64_t r0, int64_t r1, float *y, int64_t ldy);

/* ---- fp16 / bf16 weights (fp16.c driver) ----------------------------------
 * For i < m and j in [n0, n1), with w(j, k) the 16-bit weight w[j * ldw + k]
 * widened to fp32 (exact: IEEE fp16 for f16_gemm, bf16 for bf16_gemm):
 *   y[i * ldy + j] = (accumulate ? y[i * ldy + j] : bias ? bias[j] : 0)
 *                    + sum_{k < kc} x[i * ldx + k] * w(j, k)
 * (the sum's order is the kernel's own: equal to fp32 rounding only). */
typedef void (*mq_h16_gemm_fn)(const float *x, int64_t ldx, int64_t m, const uint16_t *w, int64_t ldw, int64_t kc,
                               int64_t n0, int64_t n1, const float *bias, int accumulate, float *y, int64_t ldy);

/* ---- quantized embedding tables (embedding.c: lookups and bags) --------------------- */
/* A table of num rows of dim values.  group == 0: 8-bit codes, int8 (is_signed) or uint8, row-major
 * [num][dim], a float scale and an int32 zero-point per row (per_row) or one for the table (zp NULL:
 * all 0): a row's values are ((float)q - zp) * scale.  group > 0: int4 rows as int4 weights store them
 * (layout.h: [num][kpad / 2] bytes, codes j and j + 16 of each 32-column block in one byte), an fp16
 * scale (scale16) and a u4.4 zero-point (zero8) per row and group of columns [num][ngroups]: a value
 * is ((float)code - zero8 / 16.0f) * scale, as mq_q4_dequantize gives it. */
typedef struct {
    const void *q;
    int is_signed;
    int64_t num, dim;
    const float *scale;
    const int32_t *zp;
    int per_row;
    int64_t group, kpad;      /* int4 only */
    const uint16_t *scale16; /* int4 only */
    const uint8_t *zero8;    /* int4 only */
} mq_emb_table;
enum { MQ_EMB_BAG_SUM = 0, MQ_EMB_BAG_MEAN = 1, MQ_EMB_BAG_MAX = 2 };
/* A level's row loop over ids [first, last) (ids equal to padding_idx skipped; the rows of ids up
 * to count prefetched ahead): acc [dim] = a row's values (MQ_EMB_SET), acc + them (MQ_EMB_ADD),
 * fmaf(them, psw[j], acc) (MQ_EMB_ADD_WEIGHTED, torch's fused step) or max(acc, them) (MQ_EMB_MAX,
 * "v > acc ? v : acc"; the first row SET), elementwise in float, every level the same bits; acc moves
 * acc_step floats after each row taken (0: a bag's one accumulator, dim: a lookup's rows).  Returns
 * the rows taken. */
enum { MQ_EMB_SET = 0, MQ_EMB_ADD = 1, MQ_EMB_ADD_WEIGHTED = 2, MQ_EMB_MAX = 3 };
typedef int64_t (*mq_emb_rows_fn)(const mq_emb_table *t, const int64_t *ids, int64_t first, int64_t last,
                                  int64_t count, const float *psw, int op, int64_t padding_idx, float *acc,
                                  int64_t acc_step);
int64_t mq_ref_emb_rows(const mq_emb_table *t, const int64_t *ids, int64_t first, int64_t last, int64_t count,
                        const float *psw, int op, int64_t padding_idx, float *acc, int64_t acc_step);
/* A run of bags [b0, b1) of mq_embedding_bag (its arguments here): out [b][dim] = bag b's sum /
 * mean / maximum (mode) as mq_embedding_bag says, each bag's rows through the level's row steps
 * (mq_emb_rows_fn's, the same bits at every level).  A level loops the bags itself, so a bag of one id
 * costs no call per bag (4096 bags of one 32-value row took 1.6x fp32's time with one). */
typedef struct {
    const mq_emb_table *t;
    const int64_t *ids, *offsets;
    int64_t count, noffsets;
    const float *psw;
    int mode;
    int64_t padding_idx;
    float *out;
} mq_emb_bags_args;
typedef void (*mq_emb_bags_fn)(const mq_emb_bags_args *a, int64_t b0, int64_t b1);
void mq_ref_emb_bags(const mq_emb_bags_args *a, int64_t b0, int64_t b1);

/* ---- uint8 weights, weight-only (u8_linear.c driver) ------------------------
 * For i < m and j in [n0, n1), with w(j, k) = q[j * ldw + k] - zp[j] (exact in fp32):
 *   y[i * ldy + j] = scale[j] * sum_{k < kc} x[i * ldx + k] * w(j, k) + (bias ? bias[j] : 0)
 * (each channel's sum scaled once, as the packed int8 weight-only tiles; the sum's order is
 * the kernel's own: equal to fp32 rounding only). */
typedef void (*mq_u8_gemm_fn)(const float *x, int64_t ldx, int64_t m, const uint8_t *q, int64_t ldw, int64_t kc,
                              const int32_t *zp, const float *scale, int64_t n0, int64_t n1, const float *bias,
                              float *y, int64_t ldy);
/* ... at many rows (u8_linear.c's mq_u8_linear_panels): for i < m and output panels [p0, p1) of
 * MQ_PANEL channels, y[i * n + j] = scale[j] * (lane sums of the weight-only tiles over x [m][kp]
 * (zero-padded to kp, k rounded up to MQ_KGROUP) and q [n][k] - zp widened to fp32) + bias[j]
 * (each panel widened once per block of rows into wbuf: kp * MQ_PANEL floats, 64-byte aligned;
 * the same bits at any thread split). */
typedef void (*mq_u8_panels_fn)(const float *x, int64_t m, int64_t kp, const uint8_t *q, int64_t k,
                                const int32_t *zp, const float *scale, const float *bias, int64_t n, float *y,
                                int64_t p0, int64_t p1, float *wbuf);
/* The uint8 weight q [n][k] and its zero-points a level's panel widening reads. */
typedef struct {
    const uint8_t *q;
    const int32_t *zp;
    int64_t n, k, kp;
} mq_u8_weight;

/* fp16 / bf16 weights at many rows (fp16.c's mq_h16_linear_panels): for i < m and output
 * panels [p0, p1) of MQ_PANEL channels,
 *   y[i * n + j] = lane sums of the weight-only tiles over x [m][kp] (zero-padded to kp, k
 *                  rounded up to MQ_KGROUP) and W [n][k] widened to fp32, + bias[j]
 * (each panel widened once per block of rows into wbuf: kp * MQ_PANEL floats, 64-byte aligned;
 * the sum's order is the weight-only tiles': the same bits at any thread split). */
typedef void (*mq_h16_panels_fn)(const float *x, int64_t m, int64_t kp, const uint16_t *w, int64_t k, int is_bf16,
                                 const float *bias, int64_t n, float *y, int64_t p0, int64_t p1, float *wbuf);
/* The 16-bit weight w [n][k] a level's panel widening reads (kp: k rounded up to whole K-groups). */
typedef struct {
    const uint16_t *w;
    int64_t n, k, kp;
    int is_bf16;
} mq_h16_weight;

/* Float activations times fp16, bf16 or int8 weights on AMX-BF16 (x86/amx/bf16_pieces.c;
 * amx_bf16.c's mq_amxbf16_linear drives it): x split into three bf16 pieces and the weight into
 * one (bf16; int8 minus its zero-point) or two (fp16) whose sums are exact, every product of
 * pieces exact in fp32 and summed by tdpbf16ps: fp32-accurate, its own bits (a path of its
 * own, chosen by the row rules).  amxbf16_pack_h16: panels [p0, p1) of w [n][k] to B tiles
 * wp [panels][pieces][kp / 32][16 x 32] (kp: k rounded up to 32), nonzero where it met an
 * infinity or NaN, which the pieces cannot carry; amxbf16_pack_i8: the same from a packed int8
 * weight (layout.h, its K rounded to kp4) minus zero-points (zp [n] or NULL); amxbf16_gemm: row
 * tiles [t0, t1) (16 rows each, the last part past m) of y = (x @ W^T) (* scale) (+ bias) over
 * every panel, x split into pieces by the call itself; nonzero (those rows of y unspecified)
 * where x holds an infinity or NaN or a buffer could not be allocated; amxbf16_split_x: all
 * of x's rows as pieces into xp (3 x m rounded up to 16 x kp bf16), nonzero where x holds an
 * infinity or NaN; amxbf16_gemm_panels: y for panel pairs [q0, q1) (panels 2 q0 .. 2 q1) over
 * every row, x's pieces at a.xpieces, their B tiles packed from the weight by the call itself
 * (a.wp unused), for calls of few rows; the same bits. */
typedef struct {
    const float *x;      /* [m][k], rows ldx floats apart */
    int64_t ldx, k, m, kp;
    const uint16_t *wp;
    int wpieces;         /* 2 for fp16, 1 for bf16 and int8 */
    const float *scale;  /* [n] or NULL */
    const float *bias;   /* [n] or NULL */
    int64_t n;
    float *y;            /* [m][n] */
    const uint16_t *xpieces; /* amxbf16_gemm_panels: x's pieces (amxbf16_split_x) */
} mq_amxbf16_args;
typedef int (*mq_amxbf16_pack_h16_fn)(const uint16_t *w, int64_t n, int64_t k, int is_bf16, int64_t kp,
                                      uint16_t *wp, int64_t p0, int64_t p1);
typedef void (*mq_amxbf16_pack_i8_fn)(const int8_t *packed, int64_t kp4, const int32_t *zp, int64_t n, int64_t kp,
                                      uint16_t *wp, int64_t p0, int64_t p1);
typedef int (*mq_amxbf16_gemm_fn)(const mq_amxbf16_args *a, int64_t t0, int64_t t1);
/* The weight: fp16 / bf16 bits h16 [n][k] (is_bf16), or a packed int8 one (layout.h, K rounded
 * to kp4) with zero-points zp [n] or NULL. */
typedef struct {
    const uint16_t *h16;
    int is_bf16;
    const int8_t *packed;
    int64_t kp4;
    const int32_t *zp;
} mq_amxbf16_weight;
typedef int (*mq_amxbf16_split_x_fn)(const mq_amxbf16_args *a, uint16_t *xp);
typedef int (*mq_amxbf16_gemm_panels_fn)(const mq_amxbf16_args *a, const mq_amxbf16_weight *w, int64_t q0,
                                         int64_t q1);

/* ---- float32 depthwise Conv2d (float_depthwise.c driver) ------------------- */
/* A block of a depthwise conv, eight output channels in the lanes (MQ_DW_LANES): src holds the
 * block's zero-padded input planes interleaved, [position][lane]; output pixel f (of npix,
 * row-major) of lane l is an fmaf chain, from bias[l], over the taps t (in (i, j) order) of
 * w[t * MQ_DW_LANES + l] * src[(pix[f] + off[t]) * MQ_DW_LANES + l], written to out[l][f] for the
 * lanes with an out (lanes past the block's channels have none). */
#define MQ_DW_LANES 8
typedef struct {
    const float *src;
    const int64_t *pix, *off;
    int64_t npix, taps;
    const float *w, *bias;
    float *const *out;
} mq_f32_dw_lanes_args;
typedef void (*mq_f32_dw_lanes_fn)(const mq_f32_dw_lanes_args *a);
/* The interleaving: src[l][e] to dst[pos[e] * MQ_DW_LANES + l] for the count elements e of each of the
 * MQ_DW_LANES planes whose pos[e] >= 0 */
typedef void (*mq_f32_dw_interleave_fn)(const float *const *src, const int64_t *pos, int64_t count, float *dst);
void mq_ref_f32_dw_lanes(const mq_f32_dw_lanes_args *a);
void mq_ref_f32_dw_interleave(const float *const *src, const int64_t *pos, int64_t count, float *dst);

/* ---- fp16 / bf16 weight direct Conv2d (h16_dconv.c driver) ----------------
 * The panel: for t < k and j < ldp (ldp a multiple of 16, nb <= ldp),
 *   panel[t * ldp + j] = j < nb ? w[j * k + t] widened to fp32 (exact) : 0
 * (a block of output channels' weights, tap-major: one row of ldp lanes a tap). */
typedef void (*mq_h16_dconv_panel_fn)(const uint16_t *w, int64_t k, int is_bf16, int64_t nb, int64_t ldp,
                                      float *panel);
/* The same panel of a float32 weight (w[j * k + t] as it is): a transpose (twin: mq_ref_f32_dconv_panel) */
typedef void (*mq_f32_dconv_panel_fn)(const float *w, int64_t k, int64_t nb, int64_t ldp, float *panel);
/* ... of an int4 weight's nb rows (codes kpad / 2 bytes a row, fp16 scales and u4.4 zero-points
 * ceil(kpad / group) a row: mq_q4_dequantize's layout): the floats of mq_q4_dequantize,
 * ((float)code - zero / 16.0f) * scale, straight from the codes (twin: mq_ref_q4_dconv_panel) */
typedef void (*mq_q4_dconv_panel_fn)(const uint8_t *codes, const uint16_t *scale, const uint8_t *zero, int64_t kpad,
                                     int64_t group, int64_t k, int64_t nb, int64_t ldp, float *panel);
/* A packed int8 weight's panel (layout.h: 16 channels, K-groups of 64 bytes) back to float32 rows
 * (packed_dequantize.c), each value (float)code - z[j] then times s[j], where j = lane * 4 + the
 * code's place in its K-group (s, z: each lane's scale and zero-point repeated 4 times), for lanes
 * < `lanes` (the others may be computed from padding, never stored).  packed_span: K in the same
 * order, codes [q0, q0 + len) (both multiples of 4) of each lane to o + lane * ld + (q - q0).
 * packed_run: a conv's K, (tap, in_channel) packed, in torch's (in_channel, tap) order: the K-groups
 * of nt <= MQ_PACKED_RUN_TAPS taps at first + t * tap_step (4 in channels, the same ones each tap) to
 * o + lane * ld + i * taps + t for their channel i < 4 and tap t < nt (a row holds `taps` taps a
 * channel).  (twins: mq_ref_packed_span, mq_ref_packed_run) */
#define MQ_PACKED_RUN_TAPS 16
typedef void (*mq_packed_span_fn)(const int8_t *panel, int lanes, int64_t q0, int64_t len, const float *s,
                                  const float *z, float *o, int64_t ld);
typedef void (*mq_packed_run_fn)(const int8_t *first, int64_t tap_step, int64_t nt, int lanes, int64_t taps,
                                 const float *s, const float *z, float *o, int64_t ld);
/* For s < npix and j < ldp, one fused multiply-add a tap, in tap order:
 *   acc = accumulate ? out[s * ldp + j] : bias[j];
 *   for t < kc: acc = fmaf(x[pix[s] + off[t]], panel[t * ldp + j], acc);
 *   out[s * ldp + j] = acc
 * (so every level, and any split of the taps over calls, gives the same bits). */
typedef void (*mq_h16_dconv_fn)(const float *x, const int64_t *pix, int64_t npix, const int64_t *off, int64_t kc,
                                const float *panel, int64_t ldp, const float *bias, int accumulate, float *out);

/* Dynamic activations: rows rows of k elements (row_bytes apart) to the
 * qgemm's encoding, min/max, qparams, codes, row sum and encoding in one call
 * per block of rows (act_u7.c has the scalar twin).  zero_point NULL: per-row
 * symmetric int8, -127..127 (mq_choose_qparams with qmin -127), enc MQ_X_INT8
 * or MQ_X_INT8_PLUS_128; else reduce_range 7-bit codes (act_u7.c) in any
 * encoding.  q [rows][kp], the padding past k encodes xq = 0; sum [rows]
 * (NULL: not wanted) the sum of xq.  A row holding NaN/Inf: scale NaN,
 * zero-point 0, xq = 0.  enc is an mq_x_encoding_t. */
typedef void (*mq_act_rows_fn)(const void *src, size_t row_bytes, int64_t rows, int64_t k, int64_t kp, int enc,
                               uint8_t *q, float *scale, int32_t *zero_point, int32_t *sum);

/* The per-ISA function table (see dispatch.c). */
typedef struct {
    const char *name;
    mq_minmax_fn minmax[MQ_SRC_COUNT];
    mq_quantize_fn quantize[MQ_SRC_COUNT];
    mq_dequantize_fn dequantize;
    mq_sqerr_fn sqerr[MQ_SRC_COUNT];
    mq_act_rows_fn act_rows[MQ_SRC_COUNT];
    /* int8 matmul (linear.c): kernel names for reports, and whether qgemm
     * wants the activations shifted to uint8 (VNNI) */
    const char *qgemm_name, *wgemm_name;
    mq_qgemm_fn qgemm;
    int qgemm_x_u8;
    int qgemm_speed;     /* its multiply-adds in the time of one of the VNNI kernel's, on rows in */
    int qgemm_tile_rows; /* whole tiles of this many (the rest run at VNNI's speed) when K (kp) is */
    int qgemm_tile_k;    /* at least this, for the thread split and the row blocks (linear.c);
                          * 0: as fast as VNNI everywhere.  Set together with qgemm. */
    mq_wgemm_fn wgemm;
    mq_pack_panel_fn pack_panel;
    /* reduce_range (7-bit activations): a kernel taking the uint8 codes
     * directly (x_zp set); NULL where qgemm, fed xq = xu - x_zp in its own
     * encoding, is as fast (VNNI).  Set together with qgemm (dispatch.c). */
    mq_qgemm_fn qgemm_u7;
    const char *qgemm_u7_name;
    /* the qgemm on split rows (act_split.c, a->split_start set) from this many rows; NULL where
     * qgemm needs none (VNNI).  Set together with qgemm (dispatch.c). */
    mq_qgemm_fn qgemm_split;
    int64_t qgemm_split_min_m;
    const char *qgemm_split_name;
    mq_split_count_fn act_split_count; /* the split's row count (act_split.c has the scalar twin) */
    /* static int8 direct conv (static_int8.c) and whether it wants x + 128 */
    mq_static_conv_fn static_conv;
    int static_conv_x_u8;
    /* the same conv with the weight as vpmaddubsw's unsigned side, w + 128, against int8 codes whose
     * channel pairs keep |a + b| <= 128 (the direct convs' split, conv_split.c):
     * sums of (w + 128) * x, plus pix_shift and corr; NULL where static_conv needs none (VNNI) */
    mq_static_conv_fn dconv_split;
    mq_split_spread_fn dconv_split_spread; /* its cuts' corrections (conv_split.c has the scalar twin) */
    /* the same conv on codes that are never negative, as vpmaddubsw's unsigned side: exact while
     * each pair of channels (2i, 2i + 1) of a pixel sums to at most 255 (conv_dynamic_direct.c: images
     * of codes 0..127; static_int8.c: work items of codes x - x_zp that keep it); sums of w * x as
     * static_conv's; NULL where static_conv needs none (VNNI) */
    mq_static_conv_fn static_conv_ux;
    mq_static_add_fn static_add;
    mq_static_dw_fn static_dw;
    mq_nhwc_bytes_fn nhwc_bytes;
    mq_nchw_f32_fn nchw_f32;
    /* INT4 (int4.c) */
    mq_q4_pack_fn q4_pack;
    mq_q4_sqerr_fn q4_sqerr;
    mq_q4_unpack_fn q4_unpack;
    mq_q4_gemv_fn q4_gemv;
    mq_f32_panel_fn f32_panel;
    mq_q4_gemv_i8_fn q4_gemv_i8; /* NULL where the ISA has no fast integer dot product */
    const char *q4_gemv_i8_name; /* set together with q4_gemv_i8, as are: */
    int q4_gemv_i8_speed;        /* its multiply-adds in the time of one of the VNNI kernel's (0: 1) */
    int q4_gemv_i8_channels;     /* thread chunks in whole multiples of this many channels (0: 16) */
    mq_q4_act_i8_fn q4_act_i8;
    /* fp16 / bf16 weights (fp16.c) */
    mq_h16_gemm_fn f16_gemm, bf16_gemm;
    mq_h16_panels_fn h16_panels; /* NULL where the level has none (fp16.c then declines) */
    /* uint8 weights, weight-only (u8_linear.c) */
    mq_u8_gemm_fn u8_gemm;
    mq_u8_panels_fn u8_panels; /* NULL where the level has none (u8_linear.c then declines) */
    /* 8-bit embedding tables (embedding.c) */
    mq_emb_rows_fn emb_rows;
    mq_emb_bags_fn emb_bags;
    /* AMX-BF16 (the three set together) */
    mq_amxbf16_pack_h16_fn amxbf16_pack_h16;
    mq_amxbf16_pack_i8_fn amxbf16_pack_i8;
    mq_amxbf16_gemm_fn amxbf16_gemm;
    mq_amxbf16_split_x_fn amxbf16_split_x;
    mq_amxbf16_gemm_panels_fn amxbf16_gemm_panels;
    /* fp16 / bf16 weight direct Conv2d (h16_dconv.c) */
    mq_h16_dconv_panel_fn h16_dconv_panel;
    mq_f32_dconv_panel_fn f32_dconv_panel;
    mq_q4_dconv_panel_fn q4_dconv_panel;
    mq_h16_dconv_fn h16_dconv;
    /* float32 depthwise Conv2d, a block of MQ_DW_LANES channels (float_depthwise.c) */
    mq_f32_dw_lanes_fn f32_dw_lanes;
    mq_f32_dw_interleave_fn f32_dw_interleave;
    /* a packed int8 weight to float32 rows (packed_dequantize.c), the three set together;
     * packed_untiled: rows of a 2 KiB-multiple stride are written straight, not through a tile */
    mq_packed_span_fn packed_span;
    mq_packed_run_fn packed_run;
    int packed_untiled;
} mq_kernels;

/* ---- reference kernels (ref.c) --------------------------------------------- */
int mq_ref_minmax_f32(const void *src, int64_t n, float *mn, float *mx);
int mq_ref_minmax_f16(const void *src, int64_t n, float *mn, float *mx);
int mq_ref_minmax_bf16(const void *src, int64_t n, float *mn, float *mx);
void mq_ref_quantize_f32(const void *src, int64_t n, float inv_scale, float zp, float qmin, float qmax, int use_fma,
                         uint8_t *dst);
void mq_ref_quantize_f16(const void *src, int64_t n, float inv_scale, float zp, float qmin, float qmax, int use_fma,
                         uint8_t *dst);
void mq_ref_quantize_bf16(const void *src, int64_t n, float inv_scale, float zp, float qmin, float qmax, int use_fma,
                         uint8_t *dst);
void mq_ref_dequantize(const uint8_t *q, int64_t n, float scale, float zp, int is_signed, float *dst);
void mq_ref_sqerr_f32(const void *src, const uint8_t *q, int64_t n, float scale, float zp, int is_signed, double *x2, double *e2);
void mq_ref_sqerr_f16(const void *src, const uint8_t *q, int64_t n, float scale, float zp, int is_signed, double *x2, double *e2);
void mq_ref_sqerr_bf16(const void *src, const uint8_t *q, int64_t n, float scale, float zp, int is_signed, double *x2, double *e2);

/* INT4 references (ref.c, "INT4" section) */
void mq_ref_q4_pack(const float *x, int64_t n, float inv_scale, float zero, float qmin, float qmax, uint8_t *dst);
float mq_ref_q4_sqerr(const float *x, int64_t n, float scale, float inv_scale, float zero, float qmin, float qmax);
void mq_ref_q4_unpack(const uint8_t *packed, int64_t n, float scale, float zero, float *dst);
void mq_ref_q4_gemv(const float *x, int64_t ldx, int64_t m, const float *xsum, const uint8_t *w, int64_t kpad,
                    int64_t group, const uint16_t *scale, const uint8_t *zero, int64_t r0, int64_t r1, float *y,
                    int64_t ldy);
void mq_ref_q4_gemv_i8(const int8_t *xq, int64_t m, const float *xscale, const int32_t *xqsum, const uint8_t *w,
                       int64_t kpad, int64_t group, const uint16_t *scale, const uint8_t *zero, int64_t r0,
                       int64_t r1, float *y, int64_t ldy);
void mq_ref_q4_act_i8(const float *x, int64_t kpad, int64_t group, int8_t *xq, float *xscale, int32_t *xqsum);
void mq_ref_pack_panel(const int8_t *rows, int64_t ld, int64_t nvalid, int64_t k, int8_t *dst, int32_t *w_sum,
                       uint8_t *has_m128);
void mq_ref_f32_panel(const float *x, int64_t ldx, int64_t m, const float *w, int64_t ldw, int64_t nr, int64_t kpad,
                      float *y, int64_t ldy);

/* Scale / zero-point from a row's min and max (torch MinMaxObserver formula,
 * see quant.c for the one deliberate difference: the scale floor). */
void mq_choose_qparams(float mn, float mx, int qmin, int qmax, int symmetric, float *scale, int32_t *zero_point);

void mq_ref_f16_gemm(const float *x, int64_t ldx, int64_t m, const uint16_t *w, int64_t ldw, int64_t kc, int64_t n0,
                     int64_t n1, const float *bias, int accumulate, float *y, int64_t ldy);
void mq_ref_bf16_gemm(const float *x, int64_t ldx, int64_t m, const uint16_t *w, int64_t ldw, int64_t kc, int64_t n0,
                      int64_t n1, const float *bias, int accumulate, float *y, int64_t ldy);
void mq_ref_u8_gemm(const float *x, int64_t ldx, int64_t m, const uint8_t *q, int64_t ldw, int64_t kc,
                    const int32_t *zp, const float *scale, int64_t n0, int64_t n1, const float *bias, float *y,
                    int64_t ldy);

void mq_ref_qgemm(const mq_qgemm_args *a, int64_t p0, int64_t p1);
/* The same int32 and fp32 results from the 7-bit codes (a->x_zp set, x_u8 ignored). */
void mq_ref_qgemm_u7(const mq_qgemm_args *a, int64_t p0, int64_t p1);
void mq_ref_static_conv(const mq_static_conv_args *a); /* static_int8.c */
void mq_ref_static_dw(const mq_static_dw_args *a, int64_t begin, int64_t end); /* static_int8.c */
void mq_ref_nhwc_bytes(const uint8_t *src, int64_t plane, int64_t channels, int64_t width, uint8_t flip,
                       uint8_t *dst); /* transpose.c */
void mq_ref_nchw_f32(const float *acc, int64_t np, int64_t n, const float *s, const float *bias, float *y,
                     int64_t ld); /* transpose.c */
void mq_ref_static_add(const int8_t *a, float a_scale, int a_zp, const int8_t *b, float b_scale, int b_zp,
                       int64_t n, float act_lo, float act_hi, float inv_out_scale, int out_zp, int8_t *y_q,
                       float *y_f32); /* static_int8.c */
void mq_ref_wgemm(const mq_wgemm_args *a, int64_t p0, int64_t p1);

/* ---- SIMD twins: one const partial table per ISA-flagged compile unit -----
 * Data only (ggml's type_traits_cpu[] is the model): an entry left NULL keeps
 * the lower level's kernel.  dispatch.c overlays them after the CPU and the
 * OS said yes, so no code of those units runs on a CPU that lacks their
 * instructions.  Off x86, or without compiler support, a table is empty. */
extern const mq_kernels mq_avx2_quant_table;          /* x86/avx2/quant.c */
extern const mq_kernels mq_avx2_linear_table;         /* x86/avx2/linear.c (maddubs sign trick) */
extern const mq_kernels mq_avx2_linear_u7_table;      /* x86/avx2/linear_u7.c (maddubs on 7-bit activations) */
extern const mq_kernels mq_avxvnni_linear_table;      /* x86/avx_vnni/linear.c, VEX (AVX-VNNI) */
extern const mq_kernels mq_vnni256_evex_linear_table; /* the same kernel, EVEX-encoded (tests on AVX-512 VNNI) */
extern const mq_kernels mq_avx2_pack_table;           /* x86/avx2/pack.c */
extern const mq_kernels mq_avx2_packed_rows_table;    /* x86/avx2/packed_rows.c */
extern const mq_kernels mq_avx2_int4_table;           /* x86/avx2/int4.c */
extern const mq_kernels mq_avx512_quant_table;        /* x86/avx512/quant.c */
extern const mq_kernels mq_avx512_linear_table;       /* x86/avx512/linear.c (weight-only) */
extern const mq_kernels mq_avx512vnni_linear_table;   /* x86/avx512_vnni/linear.c */
extern const mq_kernels mq_amx_linear_table;          /* x86/amx/linear.c (AMX-INT8, 16 rows and more) */
extern const mq_kernels mq_amx_int4_table;            /* x86/amx/int4.c (int4 x int8 activations) */
extern const mq_kernels mq_amx_bf16_table;            /* x86/amx/bf16_pieces.c (AMX-BF16: fp16 / bf16 / int8 weights) */
extern const mq_kernels mq_avx512_pack_table;         /* x86/avx512/pack.c */
extern const mq_kernels mq_avx512_int4_table;         /* x86/avx512/int4.c */
extern const mq_kernels mq_avx512vnni_int4_table;     /* x86/avx512_vnni/int4.c */
extern const mq_kernels mq_avx2_fp16_table;           /* x86/avx2/fp16.c (F16C) */
extern const mq_kernels mq_avx2_u8_weight_table;      /* x86/avx2/u8_weight.c */
extern const mq_kernels mq_avx2_embedding_table;      /* x86/avx2/embedding.c */
extern const mq_kernels mq_avx512_fp16_table;         /* x86/avx512/fp16.c */
extern const mq_kernels mq_avx2_h16_dconv_table;      /* x86/avx2/h16_dconv.c (F16C) */
extern const mq_kernels mq_avx512_h16_dconv_table;    /* x86/avx512/h16_dconv.c */
extern const mq_kernels mq_avx2_static_table;         /* x86/avx2/static_conv.c */
extern const mq_kernels mq_avx2_dconv_split_table;    /* x86/avx2/dconv_split.c */
extern const mq_kernels mq_avx2_static_conv_ux_table; /* x86/avx2/static_conv_ux.c */
extern const mq_kernels mq_avxvnni_static_table;      /* x86/avx_vnni/static_conv.c */
extern const mq_kernels mq_avx512vnni_static_table;   /* x86/avx512_vnni/static_conv.c */
extern const mq_kernels mq_avx2_eltwise_table;        /* x86/avx2/static_eltwise.c */
extern const mq_kernels mq_avx2_depthwise_table;      /* x86/avx2/static_depthwise.c */
extern const mq_kernels mq_avx2_float_dw_table;       /* x86/avx2/float_depthwise.c */
extern const mq_kernels mq_avx2_transpose_table;      /* x86/avx2/transpose.c */
extern const mq_kernels mq_avx512_eltwise_table;      /* x86/avx512/static_eltwise.c */
/* The AVX-512 VNNI int8 matmul (x86/avx512_vnni/linear.c); the AMX kernel runs it on the
 * rows and calls its tiles don't take.  Only called after dispatch.c's VNNI check. */
void mq_avx512vnni_qgemm(const mq_qgemm_args *a, int64_t p0, int64_t p1);
/* The AVX-512 VNNI int4 x int8-activation kernel (x86/avx512_vnni/int4.c), for the AMX
 * unit's rows past whole tiles; same contract as mq_ref_q4_gemv_i8. */
void mq_avx512vnni_q4_gemv_i8(const int8_t *xq, int64_t m, const float *xscale, const int32_t *xqsum,
                              const uint8_t *w, int64_t kpad, int64_t group, const uint16_t *scale,
                              const uint8_t *zero, int64_t r0, int64_t r1, float *y, int64_t ldy);
/* The AVX-512 level's int8 matmul on AMX (on = 1, the default where the CPU and the OS allow
 * it) or on AVX-512 VNNI (on = 0); on < 0 only asks.  Returns the previous state (1 on AMX),
 * -1 when asked for AMX where this CPU, OS or build can't. */
int mq_use_amx(int on);
/* Why the AVX-512 level does or does not run AMX: "on", or "off: ..." / "no AMX-INT8 ..." */
const char *mq_amx_status(void);
/* Tests only: on the AVX2 level, run the 256-bit VNNI kernel in its EVEX
 * encoding (needs AVX-512 VNNI + VL); 0 ok, -1 when this CPU can't. */
int mq_use_vnni256_for_tests(int on);
/* Tests and benchmarks: on the AVX2 level, the maddubs kernel even where the
 * CPU has AVX-VNNI (what an AVX2-only CPU such as Zen 2/3 runs); False
 * restores the CPU's choice.  0 ok, -1 when this CPU has no AVX2. */
int mq_use_maddubs_for_tests(int on);

/* A conv's output size along one axis (torch's formula; the callers have checked
 * that the padded input covers the dilated kernel, so it is at least 1). */
static inline int64_t mq_conv_out(int64_t in, int64_t k, int64_t stride, int64_t pad, int64_t dilation) {
    return (in + 2 * pad - dilation * (k - 1) - 1) / stride + 1;
}

/* ---- dispatch.c ------------------------------------------------------------ */
mq_isa_t mq_cpu_best_isa(void);           /* best level this CPU and OS support */
int mq_cpu_has(const char *feature);      /* "avx2", "avx512bw", "avx512_vnni", ... */
const char *mq_cpu_vendor(void);          /* cpuid's vendor string ("GenuineIntel", ...), "" if none */
const mq_kernels *mq_kernels_for(mq_isa_t isa);
const mq_kernels *mq_active(void);
mq_isa_t mq_active_isa(void);
int mq_set_isa(mq_isa_t isa);             /* 0 ok, -1 if the CPU lacks it */

/* ---- parallel.c ------------------------------------------------------------ */
typedef void (*mq_range_fn)(void *ctx, int64_t begin, int64_t end);
/* Runs fn over [0, n) in contiguous pieces whose bounds are multiples of
 * min_chunk (or n), on up to nthreads threads, the caller's among them; one
 * thread when n < 2 * min_chunk.  Never waits for a helper thread to start. */
void mq_parallel_for(int64_t n, int64_t min_chunk, int nthreads, mq_range_fn fn, void *ctx);
/* Items per mq_parallel_for chunk so that a chunk holds at least min_work (multiply-adds,
 * values) when each item holds item_work: ceil(min_work / item_work), never below 1.  An item
 * of no work counts as one unit (min_work of them a chunk); a negative item_work is a size that
 * overflowed (mq_size_mul's -1: more than any floor), one item a chunk.  Never divides by 0,
 * never overflows. */
static inline int64_t mq_items_per_chunk(int64_t item_work, int64_t min_work) {
    if (item_work < 0 || item_work >= min_work) return 1;
    return item_work == 0 ? min_work : (min_work - 1) / item_work + 1;
}
/* "pool" (default: persistent helpers, fork-safe), "pthreads" (threads
 * started per call) or "omp-team" (the pool, with long jobs on torch's
 * OpenMP team where torch loaded libgomp).  0 ok, -1 for an unknown name. */
int mq_set_threading_backend(const char *name);
const char *mq_threading_backend(void); /* "pool", "pthreads" or "omp-team" */
int64_t mq_omp_team_calls(void);        /* jobs "omp-team" ran on torch's OpenMP team (this process) */
int64_t mq_parallel_split_calls(void);  /* mq_parallel_for calls cut for more than one thread */
int mq_team_backoff_for_tests(int on); /* tests: 0 turns the back-offs' pauses off (team and small splits) */
/* benchmarks / tests: the team's least job (ns of one thread's work; < 0 reads it); returns the previous */
int64_t mq_team_min_work_for_tests(int64_t ns);
/* The weight-only int8 and fp16 tiles' split decisions (linear.c, fp16.c) count each weight's conversion
 * to fp32 and the call's fixed costs as this many more rows (linear.c says why) */
#define MQ_WO_CONVERT_ROWS 8
/* Multiply-adds from which every call splits (linear.c: measured safe under load). */
#define MQ_SPLIT_ALWAYS_MACS ((double)(1 << 24))
/* Threads for a call of `work` multiply-adds: 1 below split_from (the kernel's own bound);
 * from there up to MQ_SPLIT_ALWAYS_MACS, nthreads only while the split calls' callers kept
 * their cores lately (parallel.c's back-off), else 1; nthreads from MQ_SPLIT_ALWAYS_MACS. */
int mq_threads_for_work(double work, double split_from, int nthreads);
void mq_parallel_watch_forks(void); /* once, at import: fork handlers that must see every later fork */

/* ---- quant.c: whole-tensor drivers over rows ------------------------------- */
/* Each returns the index of the first row holding NaN/Inf, or -1. */
int64_t mq_rows_minmax(const void *src, mq_src_t kind, int64_t rows, int64_t cols,
                       float *mn, float *mx, int nthreads);
void mq_rows_quantize(const void *src, mq_src_t kind, int64_t rows, int64_t cols,
                      const float *scale, const int32_t *zero_point, int per_row,
                      int qmin, int qmax, int use_fma, uint8_t *dst, int nthreads);
/* One row: min/max, qparams, quantize into q and, when sum_x2 is not NULL, its
 * signal and noise powers.  Returns 1 (scale NaN, zero-point 0, q unwritten)
 * when the row holds NaN/Inf, else 0.  k is the dispatched kernel table. */
int mq_quantize_row_fused(const mq_kernels *k, mq_src_t kind, const uint8_t *row, int64_t cols, int qmin, int qmax,
                          int symmetric, float *scale, int32_t *zero_point, uint8_t *q, double *sum_x2,
                          double *sum_err2);
/* min/max, qparams and quantize in one pass over each row (the row stays in
 * cache); when sum_x2 / sum_err2 are not NULL, also each row's signal and
 * noise power (see mq_sqerr_fn). */
int64_t mq_rows_quantize_fused(const void *src, mq_src_t kind, int64_t rows, int64_t cols,
                               int qmin, int qmax, int symmetric,
                               float *scale, int32_t *zero_point, uint8_t *dst,
                               double *sum_x2, double *sum_err2, int nthreads);
void mq_rows_sqerr(const void *src, mq_src_t kind, const uint8_t *q, int is_signed, int64_t rows, int64_t cols,
                   const float *scale, const int32_t *zero_point, int per_row,
                   double *sum_x2, double *sum_err2, int nthreads);
void mq_rows_dequantize(const uint8_t *q, int is_signed, int64_t rows, int64_t cols,
                        const float *scale, const int32_t *zero_point, int per_row,
                        float *dst, int nthreads);
/* A packed int8 weight of `groups` blocks of out_g channels by k (layout.h) as float32
 * [groups * out_g, k] rows, (code - zero_point) * scale per row (per_row) or for all; K in
 * torch's order: a conv's packed (tap, in_channel) of `taps` taps (k / taps channels) is
 * written as (in_channel, tap).  packed_dequantize.c. */
void mq_packed_dequantize(const int8_t *packed, int64_t groups, int64_t out_g, int64_t k, int64_t taps,
                          const float *scale, const int32_t *zero_point, int per_row, float *dst, int nthreads);
/* Its pieces' scalar twins (mq_packed_span_fn, mq_packed_run_fn) */
void mq_ref_packed_span(const int8_t *panel, int lanes, int64_t q0, int64_t len, const float *s, const float *z,
                        float *o, int64_t ld);
void mq_ref_packed_run(const int8_t *first, int64_t tap_step, int64_t nt, int lanes, int64_t taps, const float *s,
                       const float *z, float *o, int64_t ld);

/* ---- linear.c: packing and the int8 matmul drivers ------------------------ */
/* Packs w [n][k] (row-major int8) into the panel layout (layout.h; packed must
 * hold np*kp bytes) and writes the column sums w_sum [np]; returns 1 if some
 * weight is -128. */
/* Returns whether some weight is -128; panel_m128 is scratch, one byte per panel. */
int mq_pack_int8(const int8_t *w, int64_t n, int64_t k, int8_t *packed, int32_t *w_sum, uint8_t *panel_m128,
                 int nthreads);

/* Checks packed buffers of an [n][k] weight (one group) read from a file: the
 * column sums of the packed bytes into sums [np]; returns bit 0 when some
 * byte is -128, bit 1 when a padding byte (past k, or a channel past n) is
 * not 0.  panel_flags: scratch, one byte per panel. */
int mq_packed_check(const int8_t *packed, int64_t n, int64_t k, int32_t *sums, uint8_t *panel_flags, int nthreads);

/* ---- quantize_pack.c: per-channel int8 quantization into the packed layout - */
/* What mq_rows_quantize_fused followed by mq_pack_int8 give, bit for bit, in
 * one pass per 16-row panel: each panel's rows are quantized into a small
 * cache-resident scratch and packed from there, so the plain int8 weight
 * never exists and the fp32 input is read once.  int8 ranges only (qmin >=
 * -128, qmax <= 127).  scale / zero_point [n]; packed [np*kp]; w_sum [np];
 * panel_m128 [np/16] scratch; sum_x2 / sum_err2 [n] or NULL (see
 * mq_sqerr_fn).  *has_m128 = some weight is -128.  Returns the first row
 * holding NaN/Inf (its channel is packed as zeros), -1, or -2 when out of
 * memory. */
int64_t mq_quantize_pack_int8(const void *src, mq_src_t kind, int64_t n, int64_t k, int qmin, int qmax,
                              int symmetric, float *scale, int32_t *zero_point, int8_t *packed, int32_t *w_sum,
                              uint8_t *panel_m128, double *sum_x2, double *sum_err2, int *has_m128, int nthreads);
/* The same, reading the n rows of k elements from the file fd at offset
 * (row after row, as safetensors stores them) with pread: nothing is mapped.
 * Returns as above, or -3 when a read failed: *read_error is then its errno,
 * or -1 when the file ended early. */
int64_t mq_quantize_pack_int8_file(int fd, int64_t offset, mq_src_t kind, int64_t n, int64_t k, int qmin, int qmax,
                                   int symmetric, float *scale, int32_t *zero_point, int8_t *packed, int32_t *w_sum,
                                   uint8_t *panel_m128, double *sum_x2, double *sum_err2, int *has_m128,
                                   int *read_error, int nthreads);
/* y [m][n] = dynamic int8 linear of x [m][k] (f32/f16/bf16 rows, row stride
 * ldx elements); acc instead of y returns the exact accumulators of the
 * already-quantized int8 xq (x_is_q).  Returns 0, or -1 when out of memory. */
int mq_linear_dynamic(const void *x, mq_src_t kind, int x_is_q, int64_t m, int64_t k, int64_t ldx,
                      const int8_t *packed, const int32_t *w_sum, const float *w_scale, const int32_t *w_zp,
                      int w_has_m128, const float *bias, int64_t n, float *y, int32_t *acc, int reduce_range,
                      int nthreads);
/* The GEMV/GEMM switch in rows, -1 = automatic (see linear.c). */
extern int64_t mq_gemv_max_rows;
/* Dynamic int8 Conv2d of x [batch][channels][height][width] (contiguous):
 * each image is quantized to int8 with one symmetric scale (-127..127),
 * im2col'd in int8 (zero padding is exact), and multiplied per group with
 * the packed weight [groups blocks of out/groups channels x
 * channels/groups*kh*kw].  y is [batch*out_h*out_w][n] (rows = output
 * pixels, NHWC order), or [batch][n][out_h*out_w] (NCHW) when nchw is set.  Returns 0, or -1 when out of memory. */
int mq_conv2d_dynamic(const void *x, mq_src_t kind, int64_t batch, int64_t channels, int64_t height, int64_t width,
                      int64_t kh, int64_t kw, int64_t sh, int64_t sw, int64_t ph, int64_t pw, int64_t dh, int64_t dw,
                      int64_t groups, const int8_t *packed, const int32_t *w_sum, const float *w_scale,
                      const int32_t *w_zp, int w_has_m128, const float *bias, int64_t n, float *y, int nchw,
                      int reduce_range, int nthreads);
int mq_linear_weight_only(const void *x, mq_src_t kind, int64_t m, int64_t k, int64_t ldx, const int8_t *packed,
                          const float *w_scale, const int32_t *w_zp, const float *bias, int64_t n, float *y,
                          int nthreads);
/* ---- act_u7.c: reduce_range, 7-bit activations ------------------------------- */
/* The activation encodings a qgemm kernel reads (mq_qgemm_args.x). */
typedef enum { MQ_X_INT8 = 0, MQ_X_INT8_PLUS_128 = 1, MQ_X_U7 = 2 } mq_x_encoding_t;
/* reduce_range rows (mq_act_rows_fn with zero_point set): per-row asymmetric
 * as torch's reduce_range, scale / zero-point from min and max over 0..127
 * (mq_choose_qparams), xu = clamp(rint(zp + x * (1 / scale)), 0, 127) (the
 * product rounded first), xq = xu - zp in -127..127, stored as enc: MQ_X_U7 xu,
 * MQ_X_INT8 xq, MQ_X_INT8_PLUS_128 xq + 128.  The scalar twins of every
 * level's act_rows (symmetric int8 too): */
void mq_ref_act_rows_f32(const void *src, size_t row_bytes, int64_t rows, int64_t k, int64_t kp, int enc, uint8_t *q,
                         float *scale, int32_t *zero_point, int32_t *sum);
void mq_ref_act_rows_f16(const void *src, size_t row_bytes, int64_t rows, int64_t k, int64_t kp, int enc, uint8_t *q,
                         float *scale, int32_t *zero_point, int32_t *sum);
void mq_ref_act_rows_bf16(const void *src, size_t row_bytes, int64_t rows, int64_t k, int64_t kp, int enc, uint8_t *q,
                          float *scale, int32_t *zero_point, int32_t *sum);
/* What is added to a row's code (xu 0..127, or the symmetric int8 -127..127)
 * to give its byte in encoding enc (shared by every level's act_rows). */
static inline int32_t mq_act_bias(int u7, int32_t zp, int enc) {
    if (!u7) return enc == MQ_X_INT8_PLUS_128 ? 128 : 0;
    return enc == MQ_X_U7 ? 0 : enc == MQ_X_INT8_PLUS_128 ? 128 - zp : -zp;
}

/* ---- int4.c: INT4 drivers ---------------------------------------------------- */
typedef enum { MQ_Q4_RTN = 0, MQ_Q4_MSE = 1, MQ_Q4_HQQ = 2 } mq_q4_method_t;
/* fp32 -> fp16 bits, round to nearest even (overflow -> inf, like a cast). */
uint16_t mq_f32_to_f16(float f);
/* Quantize rows x cols (src of kind) group-wise: packed [rows][kpad/2],
 * scale [rows][kpad/group] (fp16 bits), zero [rows][kpad/group] (u4.4).
 * kpad = cols rounded up to a multiple of 32; group a multiple of 32.
 * sum_x2 / sum_err2 (optional, per row): signal and noise powers over the
 * real (unpadded) columns.  Returns the first row holding NaN/Inf, or -1;
 * returns -2 when out of memory. */
int64_t mq_q4_quantize(const void *src, mq_src_t kind, int64_t rows, int64_t cols, int64_t group, int symmetric,
                       mq_q4_method_t method, uint8_t *packed, uint16_t *scale, uint8_t *zero, double *sum_x2,
                       double *sum_err2, int nthreads);
void mq_q4_dequantize(const uint8_t *packed, const uint16_t *scale, const uint8_t *zero, int64_t rows, int64_t kpad,
                      int64_t group, int64_t cols, float *dst, int nthreads);
/* y[m][rows] (+ bias) = x[m][cols] @ W^T; x fp32 or bf16 (kind).
 * act_mode: 0 fp32 activations; 1 int8 activations (the reference kernel
 * where the ISA has no integer one; needs mq_q4_int8_ok: a row not of whole
 * MQ_Q4_I8_CHUNK columns runs on a copy in whole chunks, the same bits); -1 automatic
 * (int8 where the ISA has an integer kernel and the shape allows it).
 * Returns 0, or -1 when out of memory. */
int mq_q4_linear(const void *x, mq_src_t kind, int64_t m, int64_t cols, const uint8_t *packed,
                 const uint16_t *scale, const uint8_t *zero, int64_t rows, int64_t kpad, int64_t group,
                 const float *bias, float *y, int act_mode, int nthreads);
int mq_q4_int8_ok(int64_t kpad, int64_t group);
/* Which linear path (0 = GEMV, 1 = dequantized panels) is used from this batch size on. */
extern int64_t mq_q4_panel_min_m;
/* Automatic mode uses int8 activations from this batch size on. */
extern int64_t mq_q4_int8_min_m;

/* ---- fp16.c: fp16 / bf16 weight linear ---------------------------------------- */
/* y [m][n] = x [m][k] (fp32, row stride ldx elements) @ W^T (+ bias [n]) for
 * W [n][k] row-major 16-bit weights (IEEE fp16, or bf16 when is_bf16),
 * widened to fp32 in registers: the weight is read as stored, never
 * converted whole.  No allocation, so no failure. */
void mq_h16_linear(const float *x, int64_t m, int64_t k, int64_t ldx, const uint16_t *w, int is_bf16,
                   const float *bias, int64_t n, float *y, int nthreads);
/* u8_linear.c: y [m][n] = x [m][k] (rows ldx apart) times the uint8 weight q [n][k] minus
 * zp [n], each channel's sum times scale [n], + bias [n] (or NULL): the level's u8_gemm over
 * 12-channel units split between threads; the weight is read as stored (a quarter of an fp32
 * one's bytes), never converted whole.  No allocation, so no failure. */
void mq_u8_linear(const float *x, int64_t m, int64_t k, int64_t ldx, const uint8_t *q, const int32_t *zp,
                  const float *scale, const float *bias, int64_t n, float *y, int nthreads);
/* panels_parallel.c: panels [0, ceil(n / MQ_PANEL)) of a weight's many-row product, split between
 * threads as the tiles' work says (one_thread_macs, min_macs_per_piece, as mq_threads_for_work and
 * mq_items_per_chunk take them), fn(job, x, kp, p0, p1, wbuf) per piece with a panel buffer of its
 * own (kp * MQ_PANEL floats, 64-byte aligned), x [m][k] zero-padded to kp (k rounded up to
 * MQ_KGROUP) where k is not.  0, or -1 when a buffer could not be allocated (y partly written). */
typedef void (*mq_panels_piece_fn)(void *job, const float *x, int64_t kp, int64_t p0, int64_t p1, float *wbuf);
int mq_panels_parallel(const float *x, int64_t m, int64_t k, int64_t n, double one_thread_macs,
                       int64_t min_macs_per_piece, int nthreads, mq_panels_piece_fn fn, void *job);
/* mq_u8_linear's product through the level's u8_panels kernel (x [m][k], row stride k).
 * Returns 0, 1 where the level has no such kernel or m < 8 (nothing written: the caller runs
 * mq_u8_linear), or -1 when a buffer could not be allocated (y partly written). */
int mq_u8_linear_panels(const float *x, int64_t m, int64_t k, const uint8_t *q, const int32_t *zp,
                        const float *scale, const float *bias, int64_t n, float *y, int nthreads);
/* mq_h16_linear's product through the level's h16_panels kernel (x [m][k], row stride k).
 * Returns 0, 1 where the level has no such kernel or m < 8 (nothing written: the caller runs
 * mq_h16_linear), or -1 when a buffer could not be allocated (y partly written). */
int mq_h16_linear_panels(const float *x, int64_t m, int64_t k, const uint16_t *w, int is_bf16, const float *bias,
                         int64_t n, float *y, int nthreads);
/* ---- amx_bf16.c: the AMX-BF16 matmul (x86/amx/bf16_pieces.c) ------------------------ */
/* y [m][n] = (x [m][k] (rows ldx floats apart) @ W^T) (* scale [n]) (+ bias [n]) on AMX-BF16:
 * fp32-accurate, not the other paths' bits.  Returns 0; 1 where the level has no such kernel,
 * x or the weight holds an infinity or NaN, or a piece's buffer (its rows' x pieces, or its
 * panel pairs' B tiles) could not be allocated (y then unspecified: the caller runs its fp32
 * path, which writes all of it); -1 when the call's own buffer (the weight's B tiles, or x's
 * pieces for the panel pairs) could not be allocated (y not written). */
int mq_amxbf16_linear(const float *x, int64_t ldx, int64_t m, int64_t k, const mq_amxbf16_weight *w,
                      const float *scale, const float *bias, int64_t n, float *y, int nthreads);
/* tests: how mq_amxbf16_linear splits a call, 0 by its rule, 1 over panel pairs, 2 over row
 * tiles (the same bits: the tests compare them); -1 for another mode */
int mq_amx_split_for_tests(int mode);
/* mq_linear_weight_only's product through mq_amxbf16_linear (float32 x only: 1 for another
 * kind, as for the cases above). */
int mq_linear_weight_only_amx(const void *x, mq_src_t kind, int64_t m, int64_t k, int64_t ldx, const int8_t *packed,
                              const float *w_scale, const int32_t *w_zp, const float *bias, int64_t n, float *y,
                              int nthreads);
/* mq_h16_linear's product through mq_amxbf16_linear (x rows k floats apart). */
int mq_h16_linear_amx(const float *x, int64_t m, int64_t k, const uint16_t *w, int is_bf16, const float *bias,
                      int64_t n, float *y, int nthreads);

/* ---- h16_conv.c: fp16 / bf16 weight Conv2d ------------------------------------- */
/* y [batch][n][out_h][out_w] = conv2d(x [batch][channels][height][width] fp32,
 * W [n][channels/groups][kh][kw] 16-bit (IEEE fp16, or bf16 when is_bf16),
 * bias [n] or NULL), zero padding (ph, pw), any stride / dilation / groups:
 * im2col rows in (channel, kh, kw) order times W through mq_h16_linear.
 * Returns 0, or -1 when a buffer could not be allocated. */
int mq_h16_conv2d(const float *x, int64_t batch, int64_t channels, int64_t height, int64_t width, int64_t kh,
                  int64_t kw, int64_t sh, int64_t sw, int64_t ph, int64_t pw, int64_t dh, int64_t dw, int64_t groups,
                  const uint16_t *w, int is_bf16, const float *bias, int64_t n, float *y, int nthreads);

/* ---- h16_dconv.c: fp16 / bf16 weight direct Conv2d ---------------------------- */
/* A direct conv's weight: fp16 / bf16 [n][cg][kh][kw] (h16, is_bf16), float32 (f32, the same), int4
 * (q4: its rows in the same order, dequantized as mq_q4_dequantize), or a packed int8 one
 * (packed: weight_packed's groups, each [np_g/16][kp/4][16][4] with K in (kh, kw, cg) order;
 * scale / zp per output channel; cg, kh, kw its geometry), dequantized as (q - zp) * scale into
 * panels whose taps keep the packed order.
 * bias: n floats or NULL. */
typedef struct {
    const uint16_t *h16;
    int is_bf16;
    const float *f32;
    const uint8_t *q4; /* an int4 weight (mq_q4_quantize's): codes [n][q4_kpad/2], fp16 scales and u4.4 zeros */
    const uint16_t *q4_scale; /* [n][groups] */
    const uint8_t *q4_zero;
    int64_t q4_kpad, q4_group;
    const int8_t *packed;
    const float *scale;
    const int32_t *zp;
    int64_t cg, kh, kw;
    const float *bias;
} mq_dconv_weight;
/* Floats of the panels and of the bias lanes of a weight of n output channels, groups and
 * reduction k (what mq_dconv_fill_panels writes and mq_dconv2d reads) */
int64_t mq_dconv_panel_floats(int64_t n, int64_t groups, int64_t k);
int64_t mq_dconv_bias_floats(int64_t n, int64_t groups);
void mq_dconv_fill_panels(const mq_dconv_weight *wt, int64_t n, int64_t groups, int64_t k, float *panels,
                          float *biases, int nthreads);
/* The direct conv on filled panels (the same bits as mq_h16_dconv2d for an fp16 / bf16 weight);
 * tap_major: the panels' taps in (i, j, channel) order (a packed int8 weight's), else (channel, i, j).
 * bias: n floats read in place of the panels' bias lanes (the same bits when they hold it), or NULL.
 * 0, or -1 when a buffer could not be allocated. */
int mq_dconv2d(const float *x, int64_t batch, int64_t channels, int64_t height, int64_t width, int64_t kh, int64_t kw,
               int64_t sh, int64_t sw, int64_t ph, int64_t pw, int64_t dh, int64_t dw, int64_t groups,
               const float *panels, const float *biases, const float *bias, int tap_major, int64_t n, float *y,
               int nthreads);
int mq_dconv_own_panels_for_tests(int on); /* tests: 1 makes every work item fill its own copy; returns 0 */
/* The same with the panels filled for this call from wt (mq_h16_dconv2d's for an fp16 / bf16 weight),
 * inside the conv's threads: each block's by the first thread that needs it. */
int mq_dconv2d_weight(const float *x, int64_t batch, int64_t channels, int64_t height, int64_t width, int64_t kh,
                      int64_t kw, int64_t sh, int64_t sw, int64_t ph, int64_t pw, int64_t dh, int64_t dw, int64_t groups,
                      const mq_dconv_weight *wt, int64_t n, float *y, int nthreads);
/* mq_h16_conv2d's result without im2col: output channels in vector lanes, each
 * output an fmaf chain over its taps from the bias (bit-identical on every
 * level and thread count).  Returns 0, or -1 when a buffer could not be allocated. */
int mq_h16_dconv2d(const float *x, int64_t batch, int64_t channels, int64_t height, int64_t width, int64_t kh,
                   int64_t kw, int64_t sh, int64_t sw, int64_t ph, int64_t pw, int64_t dh, int64_t dw, int64_t groups,
                   const uint16_t *w, int is_bf16, const float *bias, int64_t n, float *y, int nthreads);
/* ---- float_depthwise.c: float32 depthwise Conv2d -------------------------------
 * y [batch, channels * mult, oh, ow] = the conv of x [batch, channels, height, width] (NCHW,
 * contiguous) with w [channels * mult, 1, kh, kw] (float32, contiguous) in `channels` groups,
 * bias [channels * mult] or NULL, zero padding: output channel o reads input plane o / mult.
 * Each output an fmaf chain over its taps from the bias in (i, j) order (mq_f32_dw_lanes_args): the
 * same bits at every kernel level and thread count.  0, or -1 when a buffer could not be allocated. */
int mq_f32_dw_conv2d(const float *x, int64_t batch, int64_t channels, int64_t height, int64_t width, const float *w,
                     const float *bias, int64_t mult, int64_t kh, int64_t kw, int64_t sh, int64_t sw, int64_t ph,
                     int64_t pw, int64_t dh, int64_t dw, float *y, int nthreads);
/* ---- h16_winograd.c: the same for a 3x3 stride-1 conv without groups, by Winograd's
 * F(2x2, 3x3) (2.25x fewer multiply-adds; torch's result to a few times float32
 * rounding of the per-tile magnitudes; an output that is not finite reruns the call
 * as mq_h16_dconv2d).  The same bits at every level and thread count.  0, or -1. */
int mq_h16_wino2d(const float *x, int64_t batch, int64_t channels, int64_t height, int64_t width, int64_t ph,
                  int64_t pw, const uint16_t *w, int is_bf16, const float *bias, int64_t n, float *y, int nthreads);
/* The scalar twins (ref_h16_dconv.c) */
void mq_ref_h16_dconv_panel(const uint16_t *w, int64_t k, int is_bf16, int64_t nb, int64_t ldp, float *panel);
void mq_ref_f32_dconv_panel(const float *w, int64_t k, int64_t nb, int64_t ldp, float *panel);
void mq_ref_q4_dconv_panel(const uint8_t *codes, const uint16_t *scale, const uint8_t *zero, int64_t kpad,
                           int64_t group, int64_t k, int64_t nb, int64_t ldp, float *panel);
void mq_ref_h16_dconv(const float *x, const int64_t *pix, int64_t npix, const int64_t *off, int64_t kc,
                      const float *panel, int64_t ldp, const float *bias, int accumulate, float *out);

/* ---- embedding.c: quantized embedding tables, lookups and bags (mq_emb_table above) ---- */
/* The first position of an id outside [0, num), or -1. */
int64_t mq_embedding_bad_id(const int64_t *ids, int64_t count, int64_t num);
/* The first offset that is not a bag start (offsets[0] != 0, one past count, or one below the one
 * before), or -1. */
int64_t mq_embedding_bad_offset(const int64_t *offsets, int64_t noffsets, int64_t count);
/* out [count][dim] = the rows of ids (every id checked in range).  No allocation. */
void mq_embedding_rows(const mq_emb_table *t, const int64_t *ids, int64_t count, float *out, int nthreads);
/* out [bags][dim]: bag b's rows ids[offsets[b] .. offsets[b + 1]) (the last bag's end count where
 * offsets has bags entries), ids equal to padding_idx left out (-1: none), each row times psw[j]
 * (NULL: none; sum only) and added in order (MQ_EMB_BAG_SUM), divided by the count (MEAN), or
 * their maximum (MAX); an empty bag 0.  ids and offsets checked (mq_embedding_bad_*).  No allocation. */
void mq_embedding_bag(const mq_emb_table *t, const int64_t *ids, int64_t count, const int64_t *offsets,
                      int64_t noffsets, int64_t bags, const float *psw, int mode, int64_t padding_idx, float *out,
                      int nthreads);


#endif /* MQ_H */
