/* int4.c - INT4 group-wise quantization drivers: parameters and method search
 * (RTN, MSE range search, HQQ refinement), packing, dequantization and the
 * weight-only linear kernels' drivers (GEMV for small batches, dequantized
 * panels for larger ones).
 *
 * Format (mq.h "INT4", docs/formats.md): per group an fp16 scale and a u4.4
 * zero-point; codes 0..15 (asymmetric) or 1..15 around 8 (symmetric, -7..7).
 * The search code here is plain C compiled for the baseline, and the error it
 * minimizes comes from the dispatched q4_sqerr whose result is bit-identical
 * on every ISA, so SIMD and scalar paths choose the same parameters. */
#include <float.h>
#include <math.h>
#include <stdlib.h>

#include "mq.h"
#include "size_check.h"

int64_t mq_q4_panel_min_m = 4;
/* Automatic mode: int8 activations from this many rows on.  Measured with the
 * contenders' order rotated (benchmarks/bench_int4.py), the VNNI kernel is
 * the faster one already at batch 1 (it is compute-light enough to stream at
 * DRAM speed on one thread, the fp32 one is not). */
int64_t mq_q4_int8_min_m = 1;
/* Automatic mode, a row of whole 32-column blocks but not whole 128-column chunks (in_features 208,
 * 440: RegNet's and most CNNs' widths): int8 activations from this many rows on, through a copy of the
 * weight in rows of whole chunks (mq_q4_linear).  AMD Zen 3, 1 thread, C calls, fp32 activations ->
 * int8 on the copy (speed): 440 -> 440 at 1 / 2 / 4 rows 2.09 -> 2.95x / 1.76 -> 3.26x / 1.33 -> 2.80x,
 * 96 -> 2048 at 1 row 1.82 -> 1.60x (a third of the copy padding), at 2 1.52 -> 2.06x; whole layers at
 * 16-64 rows 0.65-0.85 -> 1.07-1.39x fp32's speed (before, such layers always took fp32 activations). */
#define Q4_I8_PAD_MIN_M 2

/* ---- fp16 helpers ----------------------------------------------------------- */

uint16_t mq_f32_to_f16(float f) {
    uint32_t x = mq_f32_to_bits(f);
    uint32_t sign = (x >> 16) & 0x8000u;
    uint32_t ax = x & 0x7fffffffu;
    if (ax >= 0x7f800000u) return (uint16_t)(sign | 0x7c00u | (ax > 0x7f800000u ? 0x200u : 0u));
    if (ax >= 0x477ff000u) return (uint16_t)(sign | 0x7c00u); /* rounds past 65504 */
    if (ax < 0x38800000u) { /* subnormal or zero in fp16: value / 2^-24, rounded to nearest even */
        float v = mq_bits_to_f32(ax) * 16777216.0f; /* exact: scaling by a power of two */
        return (uint16_t)(sign | (uint32_t)rintf(v));
    }
    uint32_t mant = ax & 0x7fffffu, exp = (ax >> 23) - 112u;
    uint32_t h = (exp << 10) | (mant >> 13);
    uint32_t rest = mant & 0x1fffu;
    if (rest > 0x1000u || (rest == 0x1000u && (h & 1u))) h++; /* carries into the exponent correctly */
    return (uint16_t)(sign | h);
}

/* A positive scale as a usable fp16: at least the smallest subnormal, at most 65504. */
static uint16_t scale_to_f16(float s, int round_up) {
    uint16_t h = mq_f32_to_f16(s);
    if (round_up && mq_f16_to_f32(h) < s) h++;
    if (h >= 0x7c00u) h = 0x7bffu;
    if (h == 0) h = 1;
    return h;
}

static uint8_t zero_to_u44(float z) {
    float v = rintf(z * 16.0f);
    if (!(v >= 0.0f)) v = 0.0f;
    if (v > 255.0f) v = 255.0f;
    return (uint8_t)v;
}

/* ---- per-group parameter choice ---------------------------------------------- */

typedef struct {
    uint16_t scale;
    uint8_t zero;
    float err;
} q4_params;

typedef struct {
    const mq_kernels *k;
    float qmin, qmax;
    int symmetric;
} q4_group_ctx;

/* Round half to even without a libm call (rintf is one on baseline x86-64):
 * adding and subtracting 1.5 * 2^23 leaves the nearest integer under the
 * default rounding mode; |v| >= 2^22 is already an integer. */
static inline float round_even(float v) {
    return fabsf(v) < 4194304.0f ? (v + 12582912.0f) - 12582912.0f : v;
}

/* Squared error of the group's n real weights: whole 16-blocks through the dispatched q4_sqerr (its
 * bits are every level's), the last block's real weights here, in order (the same C on every level).
 * The zero padding after them is left out: scored, it pulled a fractional zero-point's choice toward
 * the padding (HQQ, averaging over it too, came out worse than the MSE search it refines). */
static float params_err(const q4_group_ctx *c, const float *x, int64_t n, uint16_t s16, uint8_t z8) {
    const float s = mq_f16_to_f32(s16), inv = 1.0f / s, z = (float)z8 * (1.0f / 16.0f);
    const int64_t whole = n / 16 * 16;
    float err = c->k->q4_sqerr(x, whole, s, inv, z, c->qmin, c->qmax);
    for (int64_t i = whole; i < n; i++) {
        const float product = x[i] * inv; /* rounded to fp32 before the add, as the kernels */
        float q = round_even(z + product);
        if (!(q >= c->qmin)) q = c->qmin;
        if (q > c->qmax) q = c->qmax;
        const float e = x[i] - (q - z) * s;
        err = err + e * e;
    }
    return err;
}

static void try_params(const q4_group_ctx *c, const float *x, int64_t n, uint16_t s16, uint8_t z8, q4_params *best) {
    float e = params_err(c, x, n, s16, z8);
    if (e < best->err) { /* strictly better, so ties keep the simpler (earlier) choice */
        best->scale = s16;
        best->zero = z8;
        best->err = e;
    }
}

/* Round to nearest: the range always includes 0, the fp16 scale is rounded up
 * so [min, max] fits, the zero-point is an integer (0 is exact). */
static q4_params params_rtn(const q4_group_ctx *c, const float *x, int64_t n, float lo, float hi) {
    q4_params p;
    if (c->symmetric) {
        float amax = -lo > hi ? -lo : hi;
        p.scale = scale_to_f16(amax > 0.0f ? amax / 7.0f : 1.0f, 1);
        p.zero = 128;
    } else {
        float s = hi - lo > 0.0f ? (hi - lo) / 15.0f : 1.0f;
        if (isinf(s)) s = hi / 15.0f - lo / 15.0f;
        p.scale = scale_to_f16(s, 1);
        float z = -rintf(lo / mq_f16_to_f32(p.scale));
        if (z < 0.0f) z = 0.0f;
        if (z > 15.0f) z = 15.0f;
        p.zero = (uint8_t)(z * 16.0f);
    }
    p.err = params_err(c, x, n, p.scale, p.zero);
    return p;
}

/* MSE range search: shrink the range by 2.5% steps down to 60%, anchored at
 * min, at max and centred, then refine the zero-point in 1/16 steps; keep the
 * best, starting from RTN, so the result is never worse than RTN. */
static void search_mse(const q4_group_ctx *c, const float *x, int64_t n, float lo, float hi, q4_params *best) {
    if (hi - lo <= 0.0f || isinf(hi - lo)) return;
    for (int i = 1; i <= 16; i++) {
        float f = 1.0f - 0.025f * (float)i;
        if (c->symmetric) {
            float amax = -lo > hi ? -lo : hi;
            try_params(c, x, n, scale_to_f16(amax * f / 7.0f, 0), 128, best);
            continue;
        }
        uint16_t s16 = scale_to_f16((hi - lo) * f / 15.0f, 0);
        float s = mq_f16_to_f32(s16);
        float z_lo = -lo / s, z_hi = 15.0f - hi / s;
        try_params(c, x, n, s16, zero_to_u44(z_lo), best);
        try_params(c, x, n, s16, zero_to_u44(z_hi), best);
        try_params(c, x, n, s16, zero_to_u44(0.5f * (z_lo + z_hi)), best);
    }
    if (c->symmetric) return;
    for (int step = 8; step >= 1; step /= 2) { /* coordinate descent on the zero-point */
        uint8_t z0 = best->zero;
        if (z0 >= step) try_params(c, x, n, best->scale, (uint8_t)(z0 - step), best);
        if (z0 + step <= 255) try_params(c, x, n, best->scale, (uint8_t)(z0 + step), best);
    }
}


/* a^b for a > 0, to ~1e-4 relative: the HQQ shrinkage only proposes
 * candidates, each scored exactly, so speed matters more than the last bits. */
static inline float fast_pow(float a, float b) {
    uint32_t u = mq_f32_to_bits(a);
    float e = (float)((int32_t)((u >> 23) & 255u) - 127);
    float m = mq_bits_to_f32((u & 0x7fffffu) | 0x3f800000u) - 1.0f; /* mantissa - 1 in [0, 1) */
    float log2a = e + m * (1.4425449f + m * (-0.7181451f + m * (0.4575485f + m * (-0.2779042f + m * (0.1217970f +
                                                                                             m * -0.0258411f)))));
    float y = b * log2a;
    if (y < -126.0f) return 0.0f;
    if (y > 127.0f) y = 127.0f;
    int32_t i = (int32_t)y - (y < (float)(int32_t)y); /* floor */
    float f = y - (float)i;                            /* [0, 1) */
    float p = 1.0f + f * (0.6931472f + f * (0.2402265f + f * (0.0555041f + f * (0.0096181f + f * 0.0013333f))));
    return p * mq_bits_to_f32((uint32_t)(i + 127) << 23);
}

/* HQQ's half-quadratic zero-point refinement (Badri & Shaji 2023,
 * optimize_weights_proximal with lp_norm 0.7, beta 10, kappa 1.01, <= 20 steps,
 * stopping after 2 without improvement),
 * on errors measured in quantization steps so it does not depend on the
 * weights' units; each step also refits the scale by least squares given the
 * codes.  Every candidate is rounded to the stored fp16 / u4.4 form and kept
 * only if its squared error is lower, so it is never worse than the start. */
static void refine_hqq(const q4_group_ctx *c, const float *x, int64_t n, q4_params *best) {
    const float p = 0.7f;
    float beta = 10.0f;
    float s = mq_f16_to_f32(best->scale), z = (float)best->zero * (1.0f / 16.0f);
    int misses = 0;
    for (int it = 0; it < 20 && misses < 2; it++) {
        float inv = 1.0f / s;
        float zs[4] = {0}, xq[4] = {0}, qq[4] = {0}; /* 4 partial sums: independent add chains */
        for (int64_t i = 0; i < n; i++) {
            float xs = x[i] * inv;
            float q = round_even(xs + z);
            if (q < c->qmin) q = c->qmin;
            if (q > c->qmax) q = c->qmax;
            float e = xs - (q - z); /* error in steps */
            float ae = fabsf(e);
            float shrunk = ae > 0.0f ? ae - fast_pow(ae, p - 1.0f) / beta : 0.0f;
            float we = shrunk > 0.0f ? copysignf(shrunk, e) : 0.0f;
            zs[i & 3] += q - (xs - we);
            xq[i & 3] += x[i] * (q - z);
            qq[i & 3] += (q - z) * (q - z);
        }
        double zsum = (double)zs[0] + zs[1] + zs[2] + zs[3];
        double sxq = (double)xq[0] + xq[1] + xq[2] + xq[3], sqq = (double)qq[0] + qq[1] + qq[2] + qq[3];
        beta *= 1.01f;
        float z_new = c->symmetric ? 8.0f : (float)(zsum / (double)n);
        float s_new = sqq > 0.0 ? (float)(sxq / sqq) : s;
        if (!(s_new > 0.0f) || !isfinite(s_new)) s_new = s;
        uint16_t s16 = scale_to_f16(s_new, 0);
        uint8_t z8 = c->symmetric ? 128 : zero_to_u44(z_new);
        float before = best->err;
        try_params(c, x, n, best->scale, z8, best); /* the new zero alone */
        try_params(c, x, n, s16, z8, best);         /* and with the refitted scale */
        misses = best->err < before ? 0 : misses + 1;
        s = mq_f16_to_f32(s16);
        z = (float)z8 * (1.0f / 16.0f);
    }
}

/* ---- quantize driver ------------------------------------------------------------ */

typedef struct {
    const mq_kernels *kt; /* the level the call started on */
    const uint8_t *src;
    mq_src_t kind;
    int64_t cols, kpad, group;
    int symmetric;
    mq_q4_method_t method;
    uint8_t *packed;
    uint16_t *scale;
    uint8_t *zero;
    double *sum_x2, *sum_err2;
    int64_t *bad;   /* per row: 1 when it holds NaN/Inf */
    int oom;
} quantize_ctx;

static void quantize_range(void *vctx, int64_t begin, int64_t end) {
    quantize_ctx *c = vctx;
    const mq_kernels *k = c->kt;
    float *xbuf = aligned_alloc(64, (size_t)c->kpad * sizeof(float) * 2);
    if (!xbuf) {
        c->oom = 1;
        return;
    }
    float *dq = xbuf + c->kpad;
    q4_group_ctx gc = {k, c->symmetric ? 1.0f : 0.0f, 15.0f, c->symmetric};
    int64_t ngroups = (c->kpad + c->group - 1) / c->group;
    size_t row_bytes = (size_t)c->cols * mq_src_size(c->kind);
    for (int64_t r = begin; r < end; r++) {
        mq_row_to_f32(c->src + (size_t)r * row_bytes, c->kind, c->cols, c->kpad, xbuf);
        uint8_t *prow = c->packed + (size_t)r * (size_t)(c->kpad / 2);
        c->bad[r] = 0;
        for (int64_t g = 0; g < ngroups; g++) {
            const float *x = xbuf + g * c->group;
            int64_t n = c->kpad - g * c->group < c->group ? c->kpad - g * c->group : c->group;
            float mn, mx;
            if (k->minmax[MQ_SRC_F32](x, n, &mn, &mx)) {
                c->bad[r] = 1;
                break;
            }
            float lo = mn < 0.0f ? mn : 0.0f, hi = mx > 0.0f ? mx : 0.0f;
            /* the choice is scored on the real weights only (the last group's padding is no weight) */
            const int64_t real = c->cols - g * c->group < n ? c->cols - g * c->group : n;
            const int64_t scored = real > 0 ? real : n;
            q4_params p = params_rtn(&gc, x, scored, lo, hi);
            if (c->method >= MQ_Q4_MSE) search_mse(&gc, x, scored, lo, hi, &p);
            if (c->method >= MQ_Q4_HQQ) refine_hqq(&gc, x, scored, &p);
            c->scale[r * ngroups + g] = p.scale;
            c->zero[r * ngroups + g] = p.zero;
            float s = mq_f16_to_f32(p.scale);
            k->q4_pack(x, n, 1.0f / s, (float)p.zero * (1.0f / 16.0f), gc.qmin, gc.qmax, prow + g * c->group / 2);
        }
        if (c->bad[r] || !c->sum_x2) continue;
        for (int64_t g = 0; g < ngroups; g++)
            k->q4_unpack(prow + g * c->group / 2,
                         c->kpad - g * c->group < c->group ? c->kpad - g * c->group : c->group,
                         mq_f16_to_f32(c->scale[r * ngroups + g]),
                         (float)c->zero[r * ngroups + g] * (1.0f / 16.0f), dq + g * c->group);
        double sx = 0.0, se = 0.0;
        for (int64_t i = 0; i < c->cols; i++) {
            double e = (double)xbuf[i] - (double)dq[i];
            sx += (double)xbuf[i] * xbuf[i];
            se += e * e;
        }
        c->sum_x2[r] = sx;
        c->sum_err2[r] = se;
    }
    free(xbuf);
}

int64_t mq_q4_quantize(const void *src, mq_src_t kind, int64_t rows, int64_t cols, int64_t group, int symmetric,
                       mq_q4_method_t method, uint8_t *packed, uint16_t *scale, uint8_t *zero, double *sum_x2,
                       double *sum_err2, int nthreads) {
    int64_t kpad = mq_q4_kpad(cols);
    if (rows <= 0 || kpad <= 0) return -1; /* (kpad -1: past int64, which the bindings refuse first) */
    int64_t *bad = calloc((size_t)rows, sizeof(int64_t));
    if (!bad) return -2;
    quantize_ctx c = {mq_active(), src, kind, cols, kpad, group, symmetric, method, packed,
                      scale, zero, sum_x2, sum_err2, bad, 0};
    int64_t min_rows = (1 << 14) / kpad + 1;
    mq_parallel_for(rows, min_rows, nthreads, quantize_range, &c);
    int64_t result = c.oom ? -2 : -1;
    for (int64_t r = 0; r < rows && result == -1; r++)
        if (bad[r]) result = r;
    free(bad);
    return result;
}

/* ---- dequantize driver --------------------------------------------------------------- */

typedef struct {
    const mq_kernels *kt; /* the level the call started on */
    const uint8_t *packed;
    const uint16_t *scale;
    const uint8_t *zero;
    int64_t kpad, group, cols;
    float *dst;
    int oom;
} dequantize_ctx;

/* One row of mq_q4_dequantize (scale / zero: the row's groups) with level k's unpack; tail:
 * MQ_Q4_BLOCK floats of scratch. */
static void dequantize_row(const mq_kernels *k, const uint8_t *prow, const uint16_t *scale,
                           const uint8_t *zero, int64_t kpad, int64_t group, int64_t cols, float *drow, float *tail) {
    const int64_t ngroups = (kpad + group - 1) / group;
    for (int64_t g = 0; g < ngroups; g++) {
        int64_t k0 = g * group, k1 = k0 + group < cols ? k0 + group : cols;
        if (k1 <= k0) break;
        int64_t full = k0 + (k1 - k0) / MQ_Q4_BLOCK * MQ_Q4_BLOCK; /* whole blocks go straight to dst */
        float s = mq_f16_to_f32(scale[g]), z = (float)zero[g] / 16.0f;
        k->q4_unpack(prow + k0 / 2, full - k0, s, z, drow + k0);
        if (full < k1) { /* the padded last block: unpack whole, keep the real columns */
            k->q4_unpack(prow + full / 2, MQ_Q4_BLOCK, s, z, tail);
            memcpy(drow + full, tail, (size_t)(k1 - full) * sizeof(float));
        }
    }
}

static void dequantize_range(void *vctx, int64_t begin, int64_t end) {
    dequantize_ctx *c = vctx;
    const mq_kernels *k = c->kt;
    float *tail = aligned_alloc(64, MQ_Q4_BLOCK * sizeof(float));
    if (!tail) {
        c->oom = 1;
        return;
    }
    const int64_t ngroups = (c->kpad + c->group - 1) / c->group;
    for (int64_t r = begin; r < end; r++)
        dequantize_row(k, c->packed + (size_t)r * (size_t)(c->kpad / 2), c->scale + r * ngroups,
                             c->zero + r * ngroups, c->kpad, c->group, c->cols, c->dst + (size_t)r * (size_t)c->cols,
                             tail);
    free(tail);
}


void mq_q4_dequantize(const uint8_t *packed, const uint16_t *scale, const uint8_t *zero, int64_t rows, int64_t kpad,
                      int64_t group, int64_t cols, float *dst, int nthreads) {
    dequantize_ctx c = {mq_active(), packed, scale, zero, kpad, group, cols, dst, 0};
    mq_parallel_for(rows, (1 << 15) / (kpad + 1) + 1, nthreads, dequantize_range, &c);
}

/* Threads: mq_parallel_for (parallel.c), shared with the int8 kernels. */

/* Weight rows per chunk, a multiple of 4 (the kernels' row tile).  For a few
 * activation rows the call streams the weight: about 256 KiB of packed weight
 * a chunk (the kernels prefetch within a chunk only, so its first rows stream
 * unprefetched).  For many activation rows each weight row carries m * kpad
 * multiply-adds, and 256 KiB of it (1365 rows at kpad 384) would leave a
 * BERT-sized layer (384-1536 rows) in one or two uneven chunks, so on one
 * thread: chunks shrink to Q4_MIN_CHUNK_MACS of work. */
#define Q4_MIN_CHUNK_MACS ((int64_t)1 << 20)
static int64_t row_chunk(int64_t m, int64_t kpad) {
    int64_t rows = (int64_t)(256 << 10) / (kpad / 2 > 0 ? kpad / 2 : 1);
    const int64_t per_row = m * kpad;
    const int64_t work_rows = mq_items_per_chunk(per_row, Q4_MIN_CHUNK_MACS);
    if (work_rows < rows) rows = (work_rows + 3) / 4 * 4;
    rows = rows >= 16 ? rows / 16 * 16 : rows / 4 * 4; /* whole 4-row steps: the batch-1 quarter loops leave none */
    return rows < 4 ? 4 : rows;
}

/* The int8-activation kernel's chunks: a faster kernel (AMX) needs more channels for the same
 * time, in whole multiples of the channels it takes at once; under 16 rows (AMX's kernel hands
 * those to VNNI) row_chunk's. */
static int64_t i8_row_chunk(const mq_kernels *k, int64_t m, int64_t kpad) {
    if (k->q4_gemv_i8_speed <= 1 || m < 16) return row_chunk(m, kpad);
    const int64_t unit = k->q4_gemv_i8_channels > 0 ? k->q4_gemv_i8_channels : 16;
    const int64_t rows = mq_items_per_chunk(m * kpad, Q4_MIN_CHUNK_MACS * k->q4_gemv_i8_speed);
    return (rows + unit - 1) / unit * unit;
}

/* ---- linear driver ----------------------------------------------------------------------- */

#define MQ_Q4_PANEL_ROWS 4
#define MQ_Q4_KC 1024 /* panel path: K chunk so the activation chunk stays in L2 */

typedef struct {
    const mq_kernels *kt; /* the level the call started on, for every piece of it (set_isa may change it meanwhile) */
    const float *x, *xsum;
    int64_t m, kpad, group, rows;
    const uint8_t *packed;
    const uint16_t *scale;
    const uint8_t *zero;
    float *y;
    const float *bias; /* added by the GEMV paths per chunk (the panel path starts from it) */
    int oom;
} linear_ctx;

/* y[:, begin:end] += bias[begin:end], by the thread that wrote those columns. */
static void add_bias(float *y, int64_t m, int64_t ldy, const float *bias, int64_t begin, int64_t end) {
    if (!bias) return;
    for (int64_t i = 0; i < m; i++)
        for (int64_t r = begin; r < end; r++) y[i * ldy + r] += bias[r];
}

static void gemv_range(void *vctx, int64_t begin, int64_t end) {
    linear_ctx *c = vctx;
    c->kt->q4_gemv(c->x, c->kpad, c->m, c->xsum, c->packed, c->kpad, c->group, c->scale, c->zero, begin, end, c->y,
                   c->rows);
    add_bias(c->y, c->m, c->rows, c->bias, begin, end);
}

/* Over row panels: dequantize each panel chunk (rows x MQ_Q4_KC) once into a
 * small fp32 buffer, then multiply all activation rows against it. */
static void panel_range(void *vctx, int64_t begin, int64_t end) {
    linear_ctx *c = vctx;
    const mq_kernels *k = c->kt;
    float *w = aligned_alloc(64, (size_t)MQ_Q4_PANEL_ROWS * MQ_Q4_KC * sizeof(float));
    if (!w) {
        c->oom = 1;
        return;
    }
    int64_t ngroups = (c->kpad + c->group - 1) / c->group;
    for (int64_t k0 = 0; k0 < c->kpad; k0 += MQ_Q4_KC) {
        int64_t kc = c->kpad - k0 < MQ_Q4_KC ? c->kpad - k0 : MQ_Q4_KC;
        for (int64_t p = begin; p < end; p++) {
            int64_t r0 = p * MQ_Q4_PANEL_ROWS;
            int64_t nr = c->rows - r0 < MQ_Q4_PANEL_ROWS ? c->rows - r0 : MQ_Q4_PANEL_ROWS;
            for (int64_t j = 0; j < nr; j++) {
                const uint8_t *prow = c->packed + (size_t)(r0 + j) * (size_t)(c->kpad / 2);
                for (int64_t kk = k0; kk < k0 + kc;) { /* pieces that stay inside one group */
                    int64_t g = kk / c->group, gend = (g + 1) * c->group;
                    int64_t stop = gend < k0 + kc ? gend : k0 + kc;
                    float s = mq_f16_to_f32(c->scale[(r0 + j) * ngroups + g]);
                    float z = (float)c->zero[(r0 + j) * ngroups + g] * (1.0f / 16.0f);
                    k->q4_unpack(prow + kk / 2, stop - kk, s, z, w + j * MQ_Q4_KC + (kk - k0));
                    kk = stop;
                }
            }
            k->f32_panel(c->x + k0, c->kpad, c->m, w, MQ_Q4_KC, nr, kc, c->y + r0, c->rows);
        }
    }
    free(w);
}

typedef struct {
    const int8_t *xq;
    const float *xscale;
    const int32_t *xqsum;
    int64_t m, kpad, group, rows;
    const uint8_t *packed;
    const uint16_t *scale;
    const uint8_t *zero;
    float *y;
    const float *bias;
    mq_q4_gemv_i8_fn fn;
} linear_i8_ctx;

/* A range of fewer than 4 weight rows (the last chunk of a split, rows % 4 of them, or a layer of
 * 1-3 rows): 4 rows run into a scratch block and the range's own rows are copied out (each row's
 * sums are its own: the same bits): the layer's 4 rows ending at the range's end (or its first
 * 4) where it has 4 or more, else a copy of its rows, the last repeated to 4.
 * The kernels' 4-row steps leave such a range to the scalar reference: a 10-output head's last 2
 * rows at 1024 activation rows took 3.5 ms on 2 threads, the whole layer 0.19 ms on one; a 2-output
 * head at K = 768 and 32 rows 153 us (5.2 us with 4 outputs).  0 where the scratch can't be had. */
static int short_range_i8(const linear_i8_ctx *c, int64_t begin, int64_t end) {
    const int64_t ngroups = (c->kpad + c->group - 1) / c->group, row_bytes = c->kpad / 2;
    const int64_t r0 = end >= 4 ? end - 4 : 0;
    const uint8_t *packed = c->packed + r0 * row_bytes, *zero = c->zero + r0 * ngroups;
    const uint16_t *scale = c->scale + r0 * ngroups;
    float *t = malloc(mq_alloc_bytes(c->m, 4 * sizeof(float), 1));
    uint8_t *copy = c->rows >= 4 ? NULL : malloc(mq_alloc_bytes(4, row_bytes + 3 * ngroups, 1));
    if (!t || (c->rows < 4 && !copy)) {
        free(t);
        free(copy);
        return 0;
    }
    if (copy) { /* [4 rows of codes][4 x ngroups scales (uint16)][4 x ngroups zero-points] */
        uint16_t *scale4 = (uint16_t *)(void *)(copy + 4 * row_bytes);
        uint8_t *zero4 = (uint8_t *)(scale4 + 4 * ngroups);
        for (int64_t r = 0; r < 4; r++) {
            const int64_t src = r < c->rows ? r : c->rows - 1;
            memcpy(copy + r * row_bytes, c->packed + src * row_bytes, (size_t)row_bytes);
            memcpy(scale4 + r * ngroups, c->scale + src * ngroups, (size_t)ngroups * sizeof(uint16_t));
            memcpy(zero4 + r * ngroups, c->zero + src * ngroups, (size_t)ngroups);
        }
        packed = copy, scale = scale4, zero = zero4;
    }
    c->fn(c->xq, c->m, c->xscale, c->xqsum, packed, c->kpad, c->group, scale, zero, 0, 4, t, 4);
    for (int64_t i = 0; i < c->m; i++)
        for (int64_t r = begin; r < end; r++) c->y[i * c->rows + r] = t[i * 4 + (r - r0)];
    free(copy);
    free(t);
    return 1;
}

static void gemv_i8_range(void *vctx, int64_t begin, int64_t end) {
    linear_i8_ctx *c = vctx;
    if (!(end - begin < 4 && c->fn != mq_ref_q4_gemv_i8 && short_range_i8(c, begin, end)))
        c->fn(c->xq, c->m, c->xscale, c->xqsum, c->packed, c->kpad, c->group, c->scale, c->zero, begin, end, c->y,
              c->rows);
    add_bias(c->y, c->m, c->rows, c->bias, begin, end);
}

int mq_q4_int8_ok(int64_t kpad, int64_t group) {
    return kpad % MQ_Q4_BLOCK == 0 && group % MQ_Q4_I8_CHUNK == 0 && group <= MQ_Q4_I8_MAX_GROUP;
}

/* The packed weight in rows of kw = kpad rounded up to whole MQ_Q4_I8_CHUNK columns, the int8
 * kernels' unit: each row's bytes, then zero codes.  The activations' padded columns are zeros, so
 * their int8 codes are 0 and those columns add nothing to a product or a group's code sum; a group's
 * maximum is its real columns' (the chunks never cross a group: groups are whole chunks).  The same
 * bits as a layer whose rows were kw wide.  NULL when out of memory. */
static uint8_t *q4_rows_in_chunks(const uint8_t *packed, int64_t rows, int64_t kpad, int64_t kw) {
    uint8_t *copy = malloc(mq_alloc_bytes(rows, kw / 2, 1));
    if (!copy) return NULL;
    for (int64_t r = 0; r < rows; r++) {
        memcpy(copy + r * (kw / 2), packed + r * (kpad / 2), (size_t)(kpad / 2));
        memset(copy + r * (kw / 2) + kpad / 2, 0, (size_t)((kw - kpad) / 2));
    }
    return copy;
}

/* The activations' prologue, per activation row: fp32 copy padded to kpad,
 * then per-group sums, or (xq set) the int8 codes and their sums.  Over rows, so that at
 * thousands of rows it is not a serial step before the threaded GEMM. */
typedef struct {
    mq_q4_act_i8_fn act; /* the call's level (linear_ctx.kt) */
    const uint8_t *x;
    size_t row_bytes;
    mq_src_t kind;
    int64_t cols, kpad, group, ngroups;
    float *xpad, *xsum; /* xpad NULL: x's rows are float32 of kpad columns, read in place */
    int8_t *xq;
    float *xscale;
    int32_t *xqsum;
} prologue_ctx;

static void prologue_range(void *vctx, int64_t begin, int64_t end) {
    prologue_ctx *c = vctx;
    mq_q4_act_i8_fn act = c->act;
    for (int64_t i = begin; i < end; i++) {
        const float *xr = (const float *)(c->x + (size_t)i * c->row_bytes);
        if (c->xpad) {
            float *row = c->xpad + i * c->kpad;
            mq_row_to_f32(c->x + (size_t)i * c->row_bytes, c->kind, c->cols, c->kpad, row);
            xr = row;
        }
        if (c->xq) { /* the int8 kernels take xqsum, not the float sums */
            act(xr, c->kpad, c->group, c->xq + i * c->kpad, c->xscale + i * c->ngroups, c->xqsum + i * c->ngroups);
            continue;
        }
        for (int64_t g = 0; g < c->ngroups; g++) {
            float s = 0.0f;
            for (int64_t j = g * c->group; j < (g + 1) * c->group && j < c->kpad; j++) s += xr[j];
            c->xsum[i * c->ngroups + g] = s;
        }
    }
}

int mq_q4_linear(const void *x, mq_src_t kind, int64_t m, int64_t cols, const uint8_t *packed,
                 const uint16_t *scale, const uint8_t *zero, int64_t rows, int64_t kpad, int64_t group,
                 const float *bias, float *y, int act_mode, int nthreads) {
    if (m <= 0 || rows <= 0) return 0;
    const mq_kernels *kt = mq_active(); /* once: every piece runs on this level */
    mq_q4_gemv_i8_fn i8 = kt->q4_gemv_i8;
    if (act_mode == 1 && !i8) i8 = mq_ref_q4_gemv_i8;
    int use_i8 = act_mode != 0 && i8 && mq_q4_int8_ok(kpad, group) && (act_mode == 1 || m >= mq_q4_int8_min_m);
    uint8_t *chunked = NULL; /* a row not of whole chunks: the int8 path on a copy of whole chunks */
    if (use_i8 && kpad % MQ_Q4_I8_CHUNK) {
        if (act_mode != 1 && m < Q4_I8_PAD_MIN_M) {
            use_i8 = 0;
        } else {
            const int64_t kw = mq_round_up(kpad, MQ_Q4_I8_CHUNK); /* (the same group count: groups are chunks) */
            if (!(chunked = q4_rows_in_chunks(packed, rows, kpad, kw))) return -1;
            packed = chunked, kpad = kw;
        }
    }
    int64_t ngroups = (kpad + group - 1) / group;
    /* float32 rows already kpad wide are read in place (a copy of x cost as much as the
     * int8 pass at hundreds of rows); others are widened and padded into xpad */
    const int in_place = kind == MQ_SRC_F32 && cols == kpad;
    float *buf = aligned_alloc(64, mq_alloc_bytes(mq_size_mul(m, mq_size_add(in_place ? 0 : kpad, ngroups)),
                                                  sizeof(float), 64));
    int8_t *xq = use_i8 ? aligned_alloc(64, mq_alloc_bytes(m, kpad, 64)) : NULL;
    float *xscale =
        use_i8 ? malloc(mq_alloc_bytes(mq_size_mul(m, ngroups), sizeof(float) + sizeof(int32_t), 1)) : NULL;
    if (!buf || (use_i8 && (!xq || !xscale))) {
        free(xq);
        free(xscale);
        free(buf);
        free(chunked);
        return -1;
    }
    float *xpad = in_place ? NULL : buf;
    float *xsum = in_place ? buf : buf + (size_t)m * (size_t)kpad;
    int32_t *xqsum = use_i8 ? (int32_t *)(xscale + m * ngroups) : NULL;
    prologue_ctx pc = {kt->q4_act_i8, (const uint8_t *)x, (size_t)cols * mq_src_size(kind), kind, cols, kpad, group,
                       ngroups, xpad, xsum, xq, xscale, xqsum};
    mq_parallel_for(m, 1 + ((int64_t)1 << 16) / (kpad + 1), nthreads, prologue_range, &pc);
    linear_ctx c = {kt, in_place ? (const float *)x : xpad, xsum, m, kpad, group, rows, packed, scale, zero, y,
                    bias, 0};
    if (use_i8) {
        linear_i8_ctx ci = {xq, xscale, xqsum, m, kpad, group, rows, packed, scale, zero, y, bias, i8};
        mq_parallel_for(rows, i8_row_chunk(kt, m, kpad), nthreads, gemv_i8_range, &ci);
        free(xq);
        free(xscale);
        free(chunked);
    } else if (m < mq_q4_panel_min_m) {
        mq_parallel_for(rows, row_chunk(m, kpad), nthreads, gemv_range, &c);
    } else {
        for (int64_t i = 0; i < m; i++) /* the panel kernel accumulates into y */
            for (int64_t r = 0; r < rows; r++) y[i * rows + r] = bias ? bias[r] : 0.0f;
        int64_t panels = (rows + MQ_Q4_PANEL_ROWS - 1) / MQ_Q4_PANEL_ROWS;
        mq_parallel_for(panels, 16, nthreads, panel_range, &c);
    }
    free(buf);
    return c.oom ? -1 : 0;
}
