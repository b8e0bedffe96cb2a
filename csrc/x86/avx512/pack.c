/* x86/avx512/pack.c - AVX-512 twin of mq_ref_pack_panel (ref.c).
 *
 * Compiled with -mavx512f -mavx512bw -mavx512vl, reached only through
 * dispatch.c.  A packed K-group is 16 channels x 4 bytes, so 64 columns of
 * the panel's 16 rows are a 16 x 16 matrix of 4-byte words and packing them
 * is one word transpose (the scalar twin moves 4 bytes at a time).  Row sums
 * and the -128 check read the rows once more from cache with vpsadbw.
 * Byte-for-byte the reference's output. */
#include "mq.h"

#if defined(__x86_64__) && defined(__AVX512F__) && defined(__AVX512BW__)
#include <immintrin.h>

#include "x86/avx512/transpose16.h"
#include "x86/pack_sums.h"

/* Sum of a row's k int8 and whether one is -128: vpsadbw on x ^ 0x80 adds
 * x + 128 per byte (masked-off bytes load as 0 and add 128 too, subtracted). */
static void row_sum(const int8_t *src, int64_t k, int32_t *sum, int *m128) {
    const __m512i bias = _mm512_set1_epi8((char)0x80), zero = _mm512_setzero_si512();
    __m512i acc = zero, lowest = zero;
    int64_t i = 0, loaded = 0;
    for (; i < k; i += 64) {
        __mmask64 m = k - i >= 64 ? ~(__mmask64)0 : ((__mmask64)1 << (k - i)) - 1;
        __m512i v = _mm512_maskz_loadu_epi8(m, src + i);
        acc = _mm512_add_epi64(acc, _mm512_sad_epu8(_mm512_xor_si512(v, bias), zero));
        lowest = _mm512_min_epi8(lowest, v);
        loaded += 64;
    }
    *sum = (int32_t)(_mm512_reduce_add_epi64(acc) - 128 * loaded);
    *m128 = _mm512_cmpeq_epi8_mask(lowest, _mm512_set1_epi8((char)-128)) != 0;
}

static void pack_panel(const int8_t *rows, int64_t ld, int64_t nvalid, int64_t k, int8_t *dst, int32_t *w_sum,
                       uint8_t *has_m128) {
    const int64_t kp = mq_round_up(k, MQ_KGROUP), full64 = k / 64 * 64;
    mq_panel_sums(rows, ld, nvalid, k, w_sum, has_m128, row_sum);
    __m512i r[16], o[16];
    for (int64_t c0 = 0; c0 < full64; c0 += 64) { /* 16 groups of 4 columns per step */
        for (int ch = 0; ch < MQ_PANEL; ch++)
            r[ch] = ch < nvalid ? _mm512_loadu_si512(rows + ch * ld + c0) : _mm512_setzero_si512();
        mq_avx512_transpose16(r, o);
        int8_t *out = dst + c0 * MQ_PANEL; /* group c0/4 starts at (c0/4) * 64 */
        for (int g = 0; g < 16; g++) _mm512_storeu_si512(out + g * 64, o[g]);
    }
    if (full64 < kp) { /* the last < 64 columns: masked loads zero the padding */
        __mmask64 m = ((__mmask64)1 << (k - full64)) - 1;
        for (int ch = 0; ch < MQ_PANEL; ch++)
            r[ch] = ch < nvalid ? _mm512_maskz_loadu_epi8(m, rows + ch * ld + full64) : _mm512_setzero_si512();
        mq_avx512_transpose16(r, o);
        int8_t *out = dst + full64 * MQ_PANEL;
        for (int64_t g = 0; g < (kp - full64) / MQ_KGROUP; g++) _mm512_storeu_si512(out + g * 64, o[g]);
    }
}

const mq_kernels mq_avx512_pack_table = {.pack_panel = pack_panel};

#else
const mq_kernels mq_avx512_pack_table = {.name = NULL};
#endif
