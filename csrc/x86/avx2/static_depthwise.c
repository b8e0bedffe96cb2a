/* x86/avx2/static_depthwise.c - AVX2 twin of mq_ref_static_dw (static_int8.c): the static
 * int8 depthwise conv, 16 channels x 2 taps per step.
 *
 * Compiled with -mavx2 (CMakeLists.txt); dispatch.c installs the table only on AVX2 CPUs.
 * Each tap's 16 int8 values widen to int16, two taps interleave (unpacklo / unpackhi) and one
 * vpmaddwd per half multiplies them by the prepared pairs (mq_static_dw_args.w_pairs) and adds the
 * two products: exact int32 sums.  A tap in the padding reads x_zp_row and the sums drop
 * x_zp * sum(w) at the end (mq.h), so every tap is read the same way.  The epilogue is the
 * reference's operations in its order (product, sum, max, min, product, max, min, round to
 * nearest even), so the bits are the same; fewer than 16 channels, or more taps than the
 * pointer array holds, run the reference. */
#include <string.h>

#include "mq.h"

#if defined(__x86_64__) && defined(__AVX2__)
#include <immintrin.h>

#include "x86/epilogue256.h"

/* Channels q0 .. q0 + valid - 1 (valid <= 8) of the output pixel at element o. */
static inline __attribute__((always_inline)) void store8(const mq_static_dw_args *a, const mq_epilogue256 *e,
                                                         __m256i acc, int64_t o, int64_t q0, int64_t valid) {
    mq_epilogue256_store(e, acc, a->x_w_scale + q0, a->bias ? a->bias + q0 : NULL, valid,
                         a->y_q ? a->y_q + o + q0 : NULL, a->y_q ? NULL : a->y_f32 + o + q0);
}

static void static_dw_avx2(const mq_static_dw_args *a, int64_t begin, int64_t end) {
    const int64_t ch = a->channels, taps = a->kh * a->kw, blocks = ch / 16, pairs = (taps + 1) / 2;
    if (blocks == 0 || taps > MQ_DW_SIMD_MAX_TAPS || !a->w_pairs) {
        mq_ref_static_dw(a, begin, end);
        return;
    }
    const int64_t pair_stride = blocks * 32, q_tail = blocks * 16, tail = ch - q_tail;
    /* (the epilogue's constants made once: read through a, they were reloaded after every store) */
    const mq_epilogue256 e = mq_epilogue256_of(a->act_lo, a->act_hi, a->inv_out_scale, a->out_zp);
    const int8_t *tap[MQ_DW_SIMD_MAX_TAPS + 1];
    for (int64_t r = begin; r < end; r++) {
        const int64_t b = r / a->out_h, oh = r % a->out_h;
        const int8_t *image = a->x + b * a->height * a->width * ch;
        for (int64_t ow = 0; ow < a->out_w; ow++) {
            int64_t t = 0;
            for (int64_t i = 0; i < a->kh; i++) {
                const int64_t ih = oh * a->sh - a->ph + i * a->dh;
                const int row_in = ih >= 0 && ih < a->height;
                for (int64_t j = 0; j < a->kw; j++, t++) {
                    const int64_t iw = ow * a->sw - a->pw + j * a->dw;
                    tap[t] = row_in && iw >= 0 && iw < a->width ? image + (ih * a->width + iw) * ch : a->x_zp_row;
                }
            }
            tap[taps] = a->x_zp_row; /* the last odd tap's partner (its weights are 0) */
            const int64_t o = ((b * a->out_h + oh) * a->out_w + ow) * ch;
            for (int64_t bl = 0; bl < blocks; bl++) {
                const int16_t *wp = a->w_pairs + bl * 32;
                __m256i lo = _mm256_setzero_si256(), hi = lo;
                for (int64_t p = 0; p < pairs; p++, wp += pair_stride) {
                    const __m256i x0 = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(tap[2 * p] + bl * 16)));
                    const __m256i x1 =
                        _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(tap[2 * p + 1] + bl * 16)));
                    lo = _mm256_add_epi32(lo, _mm256_madd_epi16(_mm256_unpacklo_epi16(x0, x1),
                                                                _mm256_loadu_si256((const __m256i *)wp)));
                    hi = _mm256_add_epi32(hi, _mm256_madd_epi16(_mm256_unpackhi_epi16(x0, x1),
                                                                _mm256_loadu_si256((const __m256i *)(wp + 16))));
                }
                /* lo holds channels 0-3 | 8-11, hi 4-7 | 12-15 */
                const int32_t *z = a->x_zp_sum + bl * 16;
                store8(a, &e, _mm256_sub_epi32(_mm256_permute2x128_si256(lo, hi, 0x20),
                                           _mm256_loadu_si256((const __m256i *)z)), o, bl * 16, 8);
                store8(a, &e, _mm256_sub_epi32(_mm256_permute2x128_si256(lo, hi, 0x31),
                                           _mm256_loadu_si256((const __m256i *)(z + 8))), o, bl * 16 + 8, 8);
            }
            if (tail) { /* the last ch % 16 channels: the same int32 sums, one channel at a time */
                int32_t s[16] = {0};
                for (int64_t t2 = 0; t2 < taps; t2++) {
                    const int8_t *xs = tap[t2] + q_tail;
                    const int16_t *ws = a->w + t2 * ch + q_tail;
                    for (int64_t q = 0; q < tail; q++) s[q] += (int32_t)xs[q] * ws[q];
                }
                for (int64_t q = 0; q < tail; q++) s[q] -= a->x_zp_sum[q_tail + q];
                store8(a, &e, _mm256_loadu_si256((const __m256i *)s), o, q_tail, tail < 8 ? tail : 8);
                if (tail > 8) store8(a, &e, _mm256_loadu_si256((const __m256i *)(s + 8)), o, q_tail + 8, tail - 8);
            }
        }
    }
}

const mq_kernels mq_avx2_depthwise_table = {
    .static_dw = static_dw_avx2,
};

#else
const mq_kernels mq_avx2_depthwise_table = {.name = NULL};
#endif
