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
 * bit-identical everywhere (the int32 products are exact). */
#include <math.h>

#include "mq.h"

void mq_encode_u7(uint8_t *q, int64_t n, int32_t zp, mq_x_encoding_t enc) {
    if (enc == MQ_X_U7) return;
    const int32_t bias = enc == MQ_X_INT8_PLUS_128 ? 128 - zp : -zp; /* xq, or xq + 128 */
    for (int64_t i = 0; i < n; i++) q[i] = (uint8_t)((int32_t)q[i] + bias);
}

void mq_quantize_row_u7(const mq_kernels *kt, const void *src, mq_src_t kind, int64_t k, int64_t kp,
                        mq_x_encoding_t enc, uint8_t *q, float *scale, int32_t *zero_point, int32_t *sum) {
    float mn, mx, s;
    int32_t zp = 0, total = 0;
    if (kt->minmax[kind](src, k, &mn, &mx)) {
        memset(q, 0, (size_t)k); /* NaN/Inf in the row: xq = 0, and the scale makes its outputs NaN */
        *scale = NAN;
    } else {
        mq_choose_qparams(mn, mx, 0, 127, 0, &s, &zp);
        kt->quantize[kind](src, k, 1.0f / s, (float)zp, 0.0f, 127.0f, 0, q);
        if (sum) { /* only a weight zero-point needs it (20% of the quantization time) */
            for (int64_t i = 0; i < k; i++) total += (int32_t)q[i];
            total -= zp * (int32_t)k; /* |sum of xq| <= 127 * k: k is at most MQ_MAX_LINEAR_K */
        }
        *scale = s;
    }
    memset(q + k, (int)zp, (size_t)(kp - k)); /* the padding encodes xq = 0 */
    mq_encode_u7(q, kp, zp, enc);
    *zero_point = zp;
    if (sum) *sum = total;
}
