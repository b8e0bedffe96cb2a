/* act_u7.c - reduce_range: activations quantized to 7 bits (0..127).
 *
 * Opt-in (QuantConfig.reduce_range), as torch.ao's and ONNX Runtime's
 * reduce_range: each row gets an asymmetric scale and zero-point over
 * 0..127, so a uint8 code times an int8 weight, pairwise summed, never
 * saturates AVX2's int16 vpmaddubsw (2 * 127 * 128 < 32767).  The AVX2
 * kernel then needs no sign trick (x86/avx2/linear_u7.c): 3 operations per
 * 32 multiply-adds instead of 4.  Asymmetric rather than symmetric -63..63:
 * 3 dB more SQNR on the BERT-style encoder of bench_models.py
 * (docs/benchmarks.md).
 *
 * The integers xq = xu - zp (-127..127) are the same at every level; a
 * level without a 7-bit kernel runs its usual one on xq, so results are
 * bit-identical everywhere (the int32 products are exact).
 *
 * Also here: the scalar twin of act_rows, the dynamic Linear's activation
 * quantizer for 8-bit and 7-bit rows alike (mq.h); the SIMD levels' versions
 * (x86/<isa>/quant.c) read each row twice while it is in L1 and fuse the row
 * sum and the encoding into the codes pass. */
#include <math.h>

#include "mq.h"

/* The scalar twin of every level's act_rows (mq.h): the reference kernels
 * one call each, so the SIMD levels are checked against the ground truth. */
static void act_rows(const void *src, mq_src_t kind, size_t row_bytes, int64_t rows, int64_t k, int64_t kp, int enc,
                     uint8_t *q, float *scale, int32_t *zero_point, int32_t *sum, mq_minmax_fn minmax,
                     mq_quantize_fn quantize) {
    (void)kind; /* minmax and quantize were chosen for rows of this kind */
    const int u7 = zero_point != NULL;
    for (int64_t r = 0; r < rows; r++) {
        const void *x = (const uint8_t *)src + (size_t)r * row_bytes;
        uint8_t *qr = q + r * kp;
        float mn, mx, s = NAN;
        int32_t zp = 0, total = 0;
        if (minmax(x, k, &mn, &mx)) {
            memset(qr, 0, (size_t)k); /* NaN/Inf in the row: xq = 0, and the scale makes its outputs NaN */
        } else {
            if (u7)
                mq_choose_qparams(mn, mx, 0, 127, 0, &s, &zp);
            else
                mq_choose_qparams(mn, mx, -127, 127, 1, &s, &zp);
            quantize(x, k, 1.0f / s, (float)zp, u7 ? 0.0f : -127.0f, 127.0f, 0, qr);
            for (int64_t i = 0; i < k; i++) total += u7 ? (int32_t)qr[i] : (int32_t)(int8_t)qr[i];
            total -= zp * (int32_t)k; /* |sum of xq| <= 127 * k: k is at most MQ_MAX_LINEAR_K */
        }
        memset(qr + k, (int)zp, (size_t)(kp - k)); /* the padding's code is that of xq = 0 */
        const int32_t bias = mq_act_bias(u7, zp, enc);
        for (int64_t i = 0; i < kp; i++) qr[i] = (uint8_t)((u7 ? (int32_t)qr[i] : (int32_t)(int8_t)qr[i]) + bias);
        scale[r] = s;
        if (u7) zero_point[r] = zp;
        if (sum) sum[r] = total;
    }
}

void mq_ref_act_rows_f32(const void *src, size_t row_bytes, int64_t rows, int64_t k, int64_t kp, int enc, uint8_t *q,
                         float *scale, int32_t *zero_point, int32_t *sum) {
    act_rows(src, MQ_SRC_F32, row_bytes, rows, k, kp, enc, q, scale, zero_point, sum, mq_ref_minmax_f32,
             mq_ref_quantize_f32);
}
void mq_ref_act_rows_f16(const void *src, size_t row_bytes, int64_t rows, int64_t k, int64_t kp, int enc, uint8_t *q,
                         float *scale, int32_t *zero_point, int32_t *sum) {
    act_rows(src, MQ_SRC_F16, row_bytes, rows, k, kp, enc, q, scale, zero_point, sum, mq_ref_minmax_f16,
             mq_ref_quantize_f16);
}
void mq_ref_act_rows_bf16(const void *src, size_t row_bytes, int64_t rows, int64_t k, int64_t kp, int enc, uint8_t *q,
                          float *scale, int32_t *zero_point, int32_t *sum) {
    act_rows(src, MQ_SRC_BF16, row_bytes, rows, k, kp, enc, q, scale, zero_point, sum, mq_ref_minmax_bf16,
             mq_ref_quantize_bf16);
}
