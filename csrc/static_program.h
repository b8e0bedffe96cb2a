/* static_program.h - a whole static int8 model (the chain of fused ops of a
 * StaticGraphModel) run by one call, image by image (static_program.c).
 *
 * Why: node by node from Python, each op costs a few microseconds of interpreter
 * and tensor overhead (most of batch 1), and each intermediate activation of a
 * batch makes a round trip through memory.  Here the program is a compact array
 * of nodes built once (bind_static_program.c), and one call runs every node on
 * one image at a time, so the activations of an image (tens of KB) stay in
 * L1/L2 from one op to the next; threads take whole images, and split the nodes of
 * the images left over (batch 1 on 2 threads) between them.  Every node calls
 * the same kernels as the per-op path (static_int8.h) on a batch of one, so
 * the results are bit-identical to it. */
#ifndef MQ_STATIC_PROGRAM_H
#define MQ_STATIC_PROGRAM_H

#include <stdint.h>

typedef enum {
    MQ_SP_QUANTIZE = 0, /* the float input (NCHW or [rows, features]) -> int8 NHWC */
    MQ_SP_CONV = 1,     /* conv / linear (a linear is a 1x1 conv on one pixel), packed weight */
    MQ_SP_DEPTHWISE = 2,
    MQ_SP_ADD = 3,
    MQ_SP_POOL = 4,     /* global average pool */
    MQ_SP_CAT = 5,      /* concatenation along channels: each input copied, or requantized, at its offset */
    MQ_SP_BCAST_ADD = 6, /* add of operands that broadcast, or of a constant's codes: expanded, then as ADD */
} mq_sp_kind;

#define MQ_SP_LAST_KIND MQ_SP_BCAST_ADD

/* Per-image shape of a value: int8 NHWC [h][w][c] (a [features] row: 1 x 1 x c). */
typedef struct {
    int64_t h, w, c;
} mq_sp_shape;

typedef struct {
    int kind;
    int in0, in1; /* value slots read (in1: the add's second input, else -1) */
    int out;      /* value slot written; the program's last node writes the float output */
    /* conv / depthwise */
    int64_t in_channels, n, kh, kw, sh, sw, ph, pw, dh, dw;
    const int8_t *packed; /* conv: pack_int8_linear; depthwise: [kh][kw][c] */
    const int32_t *w_sum;
    const float *x_w_scale, *bias;
    int w_has_m128;
    /* the epilogue (every kind): act clamp, then requantize unless out_float */
    float act_lo, act_hi, inv_out_scale;
    int x_zp, out_zp, out_float;
    /* quantize: inv_scale = inv_out_scale, zero-point out_zp; add: a / b scales and zero-points */
    float a_scale, b_scale;
    int b_zp;
    float pool_scale; /* pool: x_scale (the multiplier is x_scale / pixels in fp32) */
    /* cat: n inputs, slot cat_in[j] at (cat_scale[j], cat_zp[j]); an input whose scale and zero-point
     * are not (a_scale, out_zp), the output's, is requantized as StaticCat does, in fp32:
     * clamp(rint(((q - zp) * s) * inv_out_scale), -127 - out_zp, 127 - out_zp) + out_zp */
    const int32_t *cat_in, *cat_zp;
    const float *cat_scale;
    /* bcast add with a constant second operand (in1 == -1): its int8 codes, per-image shape
     * (kh, kw, n) (channels-last, batch 1) */
    const int8_t *b_codes;
} mq_sp_node;

typedef struct {
    int count;      /* nodes, in order; node 0 is MQ_SP_QUANTIZE, the last one has out_float */
    int values;     /* value slots */
    mq_sp_node *nodes;
} mq_sp_program;

/* Shapes of every value for one input image of shape (c, h, w) ((features, 1, 1) for a
 * 2-D input); the output's per-image element count in *out_elems.  0, or -1 with a
 * message in err (a size that does not fit, a geometry the kernels can't take). */
int mq_sp_shapes(const mq_sp_program *p, int64_t c, int64_t h, int64_t w, mq_sp_shape *shapes,
                 int64_t *out_elems, char *err, int err_len);

/* Runs the program on batch images x (float32, [batch][c][h][w]) into out (float32, [batch]
 * [out_elems], the last node's layout: NHWC for a conv, [features] for a linear or a pool).
 * shapes from mq_sp_shapes.  0, or -1 when out of memory. */
/* How the threads share the work (split): */
#define MQ_SP_SPLIT_AUTO 0   /* whole images, the rest (fewer than the threads) node by node */
#define MQ_SP_SPLIT_IMAGES 1 /* whole images only (each node on every thread when the batch is small) */
#define MQ_SP_SPLIT_NODES 2  /* every image node by node, each node in as many pieces as it allows (tests) */
int mq_sp_run(const mq_sp_program *p, const mq_sp_shape *shapes, const float *x, int64_t batch, int64_t in_elems,
              float *out, int64_t out_elems, int nthreads, int split);

#endif
