/* ref.c - scalar reference of every kernel: the ground truth.
 *
 * Plain C, one element at a time, written for obviousness.  SIMD twins must
 * give exactly these results.  Rounding is rint() under the default
 * round-to-nearest-even mode, like torch's nearbyint (see mq_quantize_fn). */
#include <float.h>
#include <math.h>

#include "mq.h"

static int minmax_generic(const void *src, mq_src_t kind, int64_t n, float *out_min, float *out_max) {
    float mn = INFINITY, mx = -INFINITY;
    int bad = 0;
    for (int64_t i = 0; i < n; i++) {
        float v = mq_load_src(src, kind, i);
        if (!isfinite(v)) { bad = 1; continue; }
        if (v < mn) mn = v;
        if (v > mx) mx = v;
    }
    if (n == 0 || mn > mx) mn = mx = 0.0f; /* empty or all non-finite */
    *out_min = mn;
    *out_max = mx;
    return bad;
}

int mq_ref_minmax_f32(const void *s, int64_t n, float *mn, float *mx) { return minmax_generic(s, MQ_SRC_F32, n, mn, mx); }
int mq_ref_minmax_f16(const void *s, int64_t n, float *mn, float *mx) { return minmax_generic(s, MQ_SRC_F16, n, mn, mx); }
int mq_ref_minmax_bf16(const void *s, int64_t n, float *mn, float *mx) { return minmax_generic(s, MQ_SRC_BF16, n, mn, mx); }

static void quantize_generic(const void *src, mq_src_t kind, int64_t n, float inv_scale, float zp,
                             float qmin, float qmax, int use_fma, uint8_t *dst) {
    for (int64_t i = 0; i < n; i++) {
        float x = mq_load_src(src, kind, i);
        float product = x * inv_scale; /* rounded to fp32 here (-ffp-contract=off) */
        float v = rintf(use_fma ? fmaf(x, inv_scale, zp) : zp + product);
        /* clamp in float so huge values never overflow the integer cast */
        if (!(v >= qmin)) v = qmin; /* also maps NaN to qmin, like the SIMD max */
        if (v > qmax) v = qmax;
        dst[i] = (uint8_t)(int32_t)v; /* low byte: int8 or uint8 pattern */
    }
}

void mq_ref_quantize_f32(const void *s, int64_t n, float is, float zp, float lo, float hi, int use_fma, uint8_t *d) {
    quantize_generic(s, MQ_SRC_F32, n, is, zp, lo, hi, use_fma, d);
}
void mq_ref_quantize_f16(const void *s, int64_t n, float is, float zp, float lo, float hi, int use_fma, uint8_t *d) {
    quantize_generic(s, MQ_SRC_F16, n, is, zp, lo, hi, use_fma, d);
}
void mq_ref_quantize_bf16(const void *s, int64_t n, float is, float zp, float lo, float hi, int use_fma, uint8_t *d) {
    quantize_generic(s, MQ_SRC_BF16, n, is, zp, lo, hi, use_fma, d);
}

void mq_ref_dequantize(const uint8_t *q, int64_t n, float scale, float zp, int is_signed, float *dst) {
    for (int64_t i = 0; i < n; i++) {
        float v = is_signed ? (float)(int8_t)q[i] : (float)q[i];
        dst[i] = (v - zp) * scale;
    }
}

static void sqerr_generic(const void *src, mq_src_t kind, const uint8_t *q, int64_t n, float scale, float zp,
                          int is_signed, double *x2, double *e2) {
    double sx = 0.0, se = 0.0;
    for (int64_t i = 0; i < n; i++) {
        float x = mq_load_src(src, kind, i);
        float v = is_signed ? (float)(int8_t)q[i] : (float)q[i];
        float e = x - (v - zp) * scale;
        sx += (double)x * x;
        se += (double)e * e;
    }
    *x2 = sx;
    *e2 = se;
}

void mq_ref_sqerr_f32(const void *s, const uint8_t *q, int64_t n, float sc, float zp, int sg, double *x2, double *e2) {
    sqerr_generic(s, MQ_SRC_F32, q, n, sc, zp, sg, x2, e2);
}
void mq_ref_sqerr_f16(const void *s, const uint8_t *q, int64_t n, float sc, float zp, int sg, double *x2, double *e2) {
    sqerr_generic(s, MQ_SRC_F16, q, n, sc, zp, sg, x2, e2);
}
void mq_ref_sqerr_bf16(const void *s, const uint8_t *q, int64_t n, float sc, float zp, int sg, double *x2, double *e2) {
    sqerr_generic(s, MQ_SRC_BF16, q, n, sc, zp, sg, x2, e2);
}

/* ==== int8 matmul on packed weights (see mq.h, linear.c) ===================== */

/* Byte j of output channel c in K-group g of panel p. */
static inline int packed_w(const int8_t *w, int64_t kp, int64_t p, int64_t g, int c, int j) {
    return w[((p * (kp / MQ_KGROUP) + g) * MQ_PANEL + c) * MQ_KGROUP + j];
}

/* The activation the kernel multiplies: int8 as stored, int8 + 128 (x_u8), or
 * with reduce_range the 7-bit code minus its row's zero-point (x_zp). */
static inline int act_value(const mq_qgemm_args *a, int64_t m, uint8_t x) {
    if (a->x_zp) return (int)x - a->x_zp[m];
    return a->x_u8 ? (int)x - 128 : (int)(int8_t)x;
}

void mq_ref_qgemm(const mq_qgemm_args *a, int64_t p0, int64_t p1) {
    const int64_t groups = a->kp / MQ_KGROUP;
    for (int64_t p = p0; p < p1; p++)
        for (int64_t m = 0; m < a->m; m++)
            for (int c = 0; c < MQ_PANEL; c++) {
                int64_t n = p * MQ_PANEL + c;
                if (n >= a->n) break;
                const uint8_t *x = a->x + m * a->ldx;
                int32_t acc = 0;
                for (int64_t g = 0; g < groups; g++)
                    for (int j = 0; j < MQ_KGROUP; j++)
                        acc += act_value(a, m, x[g * 4 + j]) * packed_w(a->w, a->kp, p, g, c, j);
                if (a->w_zp) acc -= a->w_zp[n] * a->x_sum[m];
                if (a->acc) {
                    a->acc[m * a->ldy + n] = acc;
                    continue;
                }
                float s = a->x_scale[m] * a->w_scale[n];
                float y = (float)acc * s;
                if (a->bias) y = y + a->bias[n];
                a->y[m * a->ldy + n] = y;
            }
}

/* reduce_range: the activations are the 7-bit codes xu with per-row
 * zero-points (a->x_zp set), xq = xu - x_zp[m]: the same loop. */
void mq_ref_qgemm_u7(const mq_qgemm_args *a, int64_t p0, int64_t p1) { mq_ref_qgemm(a, p0, p1); }

void mq_ref_wgemm(const mq_wgemm_args *a, int64_t p0, int64_t p1) {
    const int64_t groups = a->kp / MQ_KGROUP;
    for (int64_t p = p0; p < p1; p++)
        for (int64_t m = 0; m < a->m; m++)
            for (int c = 0; c < MQ_PANEL; c++) {
                int64_t n = p * MQ_PANEL + c;
                if (n >= a->n) break;
                const float *x = a->x + m * a->kp;
                int zp = a->w_zp ? a->w_zp[n] : 0;
                float acc = 0.0f;
                for (int64_t g = 0; g < groups; g++)
                    for (int j = 0; j < MQ_KGROUP; j++)
                        acc += x[g * 4 + j] * (float)(packed_w(a->w, a->kp, p, g, c, j) - zp);
                float y = acc * a->w_scale[n];
                if (a->bias) y = y + a->bias[n];
                a->y[m * a->n + n] = y;
            }
}
/* ==== INT4 (group-wise, packed nibbles) ======================================
 * Layout and numerics: mq.h "INT4" and docs/formats.md.  These are the
 * ground truth for x86/avx2/int4.c / x86/avx512/int4.c. */

static inline float q4_code(float x, float inv_scale, float zero, float qmin, float qmax) {
    float product = x * inv_scale; /* rounded to fp32 before the add, as the int8 path */
    float v = rintf(zero + product);
    if (!(v >= qmin)) v = qmin; /* NaN -> qmin */
    if (v > qmax) v = qmax;
    return v;
}

void mq_ref_q4_pack(const float *x, int64_t n, float inv_scale, float zero, float qmin, float qmax, uint8_t *dst) {
    for (int64_t b = 0; b < n; b += MQ_Q4_BLOCK) {
        for (int j = 0; j < 16; j++) {
            unsigned lo = (unsigned)q4_code(x[b + j], inv_scale, zero, qmin, qmax);
            unsigned hi = (unsigned)q4_code(x[b + j + 16], inv_scale, zero, qmin, qmax);
            dst[b / 2 + j] = (uint8_t)(lo | hi << 4);
        }
    }
}

float mq_ref_q4_sqerr(const float *x, int64_t n, float scale, float inv_scale, float zero, float qmin, float qmax) {
    float lane[16] = {0};
    for (int64_t i = 0; i < n; i += 16)
        for (int l = 0; l < 16; l++) {
            float q = q4_code(x[i + l], inv_scale, zero, qmin, qmax);
            float e = x[i + l] - (q - zero) * scale;
            lane[l] = lane[l] + e * e;
        }
    for (int w = 8; w >= 1; w /= 2) /* the fixed reduction tree every ISA uses */
        for (int l = 0; l < w; l++) lane[l] = lane[l] + lane[l + w];
    return lane[0];
}

void mq_ref_q4_unpack(const uint8_t *packed, int64_t n, float scale, float zero, float *dst) {
    for (int64_t b = 0; b < n; b += MQ_Q4_BLOCK)
        for (int j = 0; j < 16; j++) {
            uint8_t byte = packed[b / 2 + j];
            dst[b + j] = ((float)(byte & 15) - zero) * scale;
            dst[b + j + 16] = ((float)(byte >> 4) - zero) * scale;
        }
}

void mq_ref_q4_gemv(const float *x, int64_t ldx, int64_t m, const float *xsum, const uint8_t *w, int64_t kpad,
                    int64_t group, const uint16_t *scale, const uint8_t *zero, int64_t r0, int64_t r1, float *y,
                    int64_t ldy) {
    int64_t ngroups = (kpad + group - 1) / group;
    for (int64_t r = r0; r < r1; r++) {
        const uint8_t *wr = w + (size_t)r * (size_t)(kpad / 2);
        for (int64_t i = 0; i < m; i++) {
            const float *xr = x + i * ldx;
            float acc = 0.0f;
            for (int64_t g = 0; g < ngroups; g++) {
                float dot = 0.0f;
                for (int64_t b = g * group; b < (g + 1) * group && b < kpad; b += MQ_Q4_BLOCK)
                    for (int j = 0; j < 16; j++) {
                        uint8_t byte = wr[b / 2 + j];
                        dot += (float)(byte & 15) * xr[b + j] + (float)(byte >> 4) * xr[b + j + 16];
                    }
                float s = mq_f16_to_f32(scale[r * ngroups + g]);
                float z = (float)zero[r * ngroups + g] * (1.0f / 16.0f);
                acc += s * (dot - z * xsum[i * ngroups + g]);
            }
            y[i * ldy + r] = acc;
        }
    }
}

/* position of column k in the int8-activation order (see mq.h) */
static inline int64_t i8_position(int64_t k) {
    int64_t c = k / MQ_Q4_I8_CHUNK * MQ_Q4_I8_CHUNK, o = k % MQ_Q4_I8_CHUNK, b = o / MQ_Q4_BLOCK, j = o % MQ_Q4_BLOCK;
    return c + (j < 16 ? 16 * b + j : 64 + 16 * b + (j - 16));
}

void mq_ref_q4_act_i8(const float *x, int64_t kpad, int64_t group, int8_t *xq, float *xscale, int32_t *xqsum) {
    int64_t ngroups = (kpad + group - 1) / group;
    for (int64_t g = 0; g < ngroups; g++) {
        int64_t k0 = g * group, k1 = k0 + group < kpad ? k0 + group : kpad;
        float amax = 0.0f;
        int bad = 0;
        for (int64_t k = k0; k < k1; k++) {
            if (!isfinite(x[k])) bad = 1;
            else if (fabsf(x[k]) > amax) amax = fabsf(x[k]);
        }
        float s = amax > 0.0f ? amax / 127.0f : 1.0f;
        if (!(s >= FLT_MIN)) s = FLT_MIN;
        float inv = 1.0f / s;
        int32_t sum = 0;
        for (int64_t k = k0; k < k1; k++) {
            float v = bad ? 0.0f : rintf(x[k] * inv);
            if (v > 127.0f) v = 127.0f;
            if (v < -127.0f) v = -127.0f;
            xq[i8_position(k)] = (int8_t)v;
            sum += (int32_t)v;
        }
        xscale[g] = bad ? NAN : s;
        xqsum[g] = sum;
    }
}

void mq_ref_q4_gemv_i8(const int8_t *xq, int64_t m, const float *xscale, const int32_t *xqsum, const uint8_t *w,
                       int64_t kpad, int64_t group, const uint16_t *scale, const uint8_t *zero, int64_t r0,
                       int64_t r1, float *y, int64_t ldy) {
    int64_t ngroups = (kpad + group - 1) / group;
    for (int64_t r = r0; r < r1; r++) {
        const uint8_t *wr = w + (size_t)r * (size_t)(kpad / 2);
        for (int64_t i = 0; i < m; i++) {
            float acc = 0.0f;
            for (int64_t g = 0; g < ngroups; g++) {
                int32_t dot = 0;
                for (int64_t k = g * group; k < (g + 1) * group && k < kpad; k++) {
                    uint8_t byte = wr[k / MQ_Q4_BLOCK * 16 + k % 16];
                    int32_t code = k % MQ_Q4_BLOCK < 16 ? byte & 15 : byte >> 4;
                    dot += code * xq[i * kpad + i8_position(k)];
                }
                int32_t t = 16 * dot - (int32_t)zero[r * ngroups + g] * xqsum[i * ngroups + g];
                float f = (mq_f16_to_f32(scale[r * ngroups + g]) * (1.0f / 16.0f)) * xscale[i * ngroups + g];
                acc = acc + f * (float)t;
            }
            y[i * ldy + r] = acc;
        }
    }
}

void mq_ref_f32_panel(const float *x, int64_t ldx, int64_t m, const float *w, int64_t ldw, int64_t nr, int64_t kpad,
                      float *y, int64_t ldy) {
    for (int64_t i = 0; i < m; i++)
        for (int64_t j = 0; j < nr; j++) {
            float acc = 0.0f;
            for (int64_t k = 0; k < kpad; k++) acc += x[i * ldx + k] * w[j * ldw + k];
            y[i * ldy + j] += acc;
        }
}
/* ==== end INT4 ================================================================ */

/* ---- int8 packing (layout in mq.h) ------------------------------------------ */

/* Channels inner within each K-group, so every write is a sequential
 * 64-byte group and the 16 rows read are 16 cache-friendly streams; the row
 * sums and the -128 check are plain loops gcc vectorizes. */
void mq_ref_pack_panel(const int8_t *rows, int64_t ld, int64_t nvalid, int64_t k, int8_t *dst, int32_t *w_sum,
                   uint8_t *has_m128) {
    const int64_t kp = mq_round_up(k, MQ_KGROUP), groups = kp / MQ_KGROUP, full = k / MQ_KGROUP;
    uint8_t m128 = 0;
    for (int ch = 0; ch < MQ_PANEL; ch++) {
        int32_t sum = 0;
        if (ch < nvalid) {
            const int8_t *src = rows + ch * ld;
            int8_t lowest = 0;
            for (int64_t i = 0; i < k; i++) sum += src[i]; /* two simple loops: both vectorize */
            for (int64_t i = 0; i < k; i++) lowest = src[i] < lowest ? src[i] : lowest;
            m128 |= lowest == -128;
        }
        w_sum[ch] = sum;
    }
    for (int ch = 0; ch < MQ_PANEL; ch++) {
        int8_t *out = dst + ch * MQ_KGROUP;
        if (ch >= nvalid) { /* padding channel */
            for (int64_t g = 0; g < groups; g++) memset(out + g * MQ_PANEL * MQ_KGROUP, 0, MQ_KGROUP);
            continue;
        }
        /* one row read sequentially, written every 64 bytes (the panel, 16*kp bytes, stays in L2) */
        const int8_t *src = rows + ch * ld;
        for (int64_t g = 0; g < full; g++) memcpy(out + g * MQ_PANEL * MQ_KGROUP, src + g * MQ_KGROUP, MQ_KGROUP);
        for (int64_t g = full; g < groups; g++)
            for (int j = 0; j < MQ_KGROUP; j++) {
                int64_t col = g * MQ_KGROUP + j;
                out[g * MQ_PANEL * MQ_KGROUP + j] = col < k ? src[col] : 0;
            }
    }
    *has_m128 = m128;
}

/* ---- fp16 / bf16 weights (mq_h16_gemm_fn, fp16.c) ----------------------------
 * The plain definition: each dot product summed in k order in one fp32
 * accumulator, the weight widened by mq.h's exact conversions. */
static void ref_h16_gemm(const float *x, int64_t ldx, int64_t m, const uint16_t *w, int64_t ldw, int64_t kc,
                         int64_t n0, int64_t n1, const float *bias, int accumulate, float *y, int64_t ldy,
                         int is_bf16) {
    for (int64_t i = 0; i < m; i++)
        for (int64_t j = n0; j < n1; j++) {
            const uint16_t *wr = w + j * ldw;
            float acc = 0.0f;
            for (int64_t k = 0; k < kc; k++)
                acc += x[i * ldx + k] * (is_bf16 ? mq_bf16_to_f32(wr[k]) : mq_f16_to_f32(wr[k]));
            float start = accumulate ? y[i * ldy + j] : bias ? bias[j] : 0.0f;
            y[i * ldy + j] = start + acc;
        }
}

void mq_ref_f16_gemm(const float *x, int64_t ldx, int64_t m, const uint16_t *w, int64_t ldw, int64_t kc, int64_t n0,
                     int64_t n1, const float *bias, int accumulate, float *y, int64_t ldy) {
    ref_h16_gemm(x, ldx, m, w, ldw, kc, n0, n1, bias, accumulate, y, ldy, 0);
}

void mq_ref_bf16_gemm(const float *x, int64_t ldx, int64_t m, const uint16_t *w, int64_t ldw, int64_t kc, int64_t n0,
                      int64_t n1, const float *bias, int accumulate, float *y, int64_t ldy) {
    ref_h16_gemm(x, ldx, m, w, ldw, kc, n0, n1, bias, accumulate, y, ldy, 1);
}

/* uint8 weights, weight-only: w - zp is an exact integer in fp32; one scale per channel sum. */
void mq_ref_u8_gemm(const float *x, int64_t ldx, int64_t m, const uint8_t *q, int64_t ldw, int64_t kc,
                    const int32_t *zp, const float *scale, int64_t n0, int64_t n1, const float *bias, float *y,
                    int64_t ldy) {
    for (int64_t i = 0; i < m; i++)
        for (int64_t j = n0; j < n1; j++) {
            const uint8_t *wr = q + j * ldw;
            float acc = 0.0f;
            for (int64_t k = 0; k < kc; k++) acc += x[i * ldx + k] * (float)((int32_t)wr[k] - zp[j]);
            y[i * ldy + j] = acc * scale[j] + (bias ? bias[j] : 0.0f);
        }
}
