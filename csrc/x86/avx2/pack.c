/* x86/avx2/pack.c - AVX2 twin of mq_ref_pack_panel (ref.c).
 *
 * Compiled with -mavx2, reached only through dispatch.c.  32 columns of 8
 * rows are an 8 x 8 matrix of 4-byte words: one word transpose gives the
 * 32-byte half of 8 packed K-groups (channels 0-7 or 8-15).  Row sums and the
 * -128 check read the rows once more from cache with vpsadbw.  Byte-for-byte
 * the reference's output. */
#include "mq.h"

#if defined(__x86_64__) && defined(__AVX2__)
#include <immintrin.h>

#include "x86/pack_sums.h"

/* o[j] = word j of rows r[0..7]. */
static inline void transpose8(__m256i r[8], __m256i o[8]) {
    __m256i t[8], u[8];
    for (int i = 0; i < 8; i += 2) {
        t[i] = _mm256_unpacklo_epi32(r[i], r[i + 1]);
        t[i + 1] = _mm256_unpackhi_epi32(r[i], r[i + 1]);
    }
    for (int i = 0; i < 8; i += 4) {
        u[i] = _mm256_unpacklo_epi64(t[i], t[i + 2]);     /* rows i..i+3: words 0 | 4 */
        u[i + 1] = _mm256_unpackhi_epi64(t[i], t[i + 2]); /* words 1 | 5 */
        u[i + 2] = _mm256_unpacklo_epi64(t[i + 1], t[i + 3]);
        u[i + 3] = _mm256_unpackhi_epi64(t[i + 1], t[i + 3]);
    }
    for (int b = 0; b < 4; b++) {
        o[b] = _mm256_permute2x128_si256(u[b], u[4 + b], 0x20);
        o[4 + b] = _mm256_permute2x128_si256(u[b], u[4 + b], 0x31);
    }
}

/* Sum of a row's k int8 (vpsadbw on x ^ 0x80 adds x + 128 per byte) and
 * whether one is -128; the last k % 32 bytes in scalar code. */
static void row_sum(const int8_t *src, int64_t k, int32_t *sum, int *m128) {
    const __m256i bias = _mm256_set1_epi8((char)0x80), zero = _mm256_setzero_si256();
    __m256i acc = zero, lowest = zero;
    int64_t i = 0;
    for (; i + 32 <= k; i += 32) {
        __m256i v = _mm256_loadu_si256((const __m256i *)(src + i));
        acc = _mm256_add_epi64(acc, _mm256_sad_epu8(_mm256_xor_si256(v, bias), zero));
        lowest = _mm256_min_epi8(lowest, v);
    }
    int64_t lanes[4];
    _mm256_storeu_si256((__m256i *)lanes, acc);
    int64_t s = lanes[0] + lanes[1] + lanes[2] + lanes[3] - 128 * i;
    int m = _mm256_movemask_epi8(_mm256_cmpeq_epi8(lowest, _mm256_set1_epi8((char)-128))) != 0;
    for (; i < k; i++) {
        s += src[i];
        m |= src[i] == -128;
    }
    *sum = (int32_t)s;
    *m128 = m;
}

static void pack_panel(const int8_t *rows, int64_t ld, int64_t nvalid, int64_t k, int8_t *dst, int32_t *w_sum,
                       uint8_t *has_m128) {
    const int64_t kp = mq_round_up(k, MQ_KGROUP), full32 = k / 32 * 32;
    mq_panel_sums(rows, ld, nvalid, k, w_sum, has_m128, row_sum);
    __m256i r[8], o[8];
    for (int64_t c0 = 0; c0 < full32; c0 += 32) { /* 8 groups of 4 columns per step */
        int8_t *out = dst + c0 * MQ_PANEL;
        for (int half = 0; half < 2; half++) {
            for (int i = 0; i < 8; i++) {
                int ch = half * 8 + i;
                r[i] = ch < nvalid ? _mm256_loadu_si256((const __m256i *)(rows + ch * ld + c0)) : _mm256_setzero_si256();
            }
            transpose8(r, o);
            for (int g = 0; g < 8; g++) _mm256_storeu_si256((__m256i *)(out + g * 64 + half * 32), o[g]);
        }
    }
    /* the last < 32 columns: 4 bytes per channel and group, zero padded */
    for (int ch = 0; ch < MQ_PANEL; ch++)
        for (int64_t col = full32; col < kp; col += MQ_KGROUP) {
            int8_t *out = dst + col * MQ_PANEL + ch * MQ_KGROUP;
            for (int j = 0; j < MQ_KGROUP; j++)
                out[j] = ch < nvalid && col + j < k ? rows[ch * ld + col + j] : 0;
        }
}

const mq_kernels mq_avx2_pack_table = {.pack_panel = pack_panel};

#else
const mq_kernels mq_avx2_pack_table = {.name = NULL};
#endif
