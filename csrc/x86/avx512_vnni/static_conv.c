/* x86/avx512_vnni/static_conv.c - AVX-512 VNNI twin of mq_ref_static_conv (static_int8.c).
 *
 * Compiled with -mavx512f/bw/vl/dq -mavx512vnni (CMakeLists.txt); dispatch.c installs the
 * table only on CPUs with all of them.  A tile is MT consecutive output pixels x NT panels
 * of 16 channels, MT * NT zmm accumulators over every tap and 4-channel group: vpdpbusd of
 * the broadcast 4 activation bytes (int8 + 128, straight from the padded input rows: no
 * im2col) with one 64-byte K-group of the packed weight, loaded once per tile.  The sums
 * never leave registers: the zero-points and the +128 (zcol) come off in int32, then the
 * fp32 epilogue of mq_ref_static_conv in the same order (mul, add, max, min, mul, max, min,
 * round to nearest even), so the bits are the reference's. */
#include <string.h>

#include "mq.h"

#if defined(__x86_64__) && defined(__AVX512F__) && defined(__AVX512VNNI__)
#include <immintrin.h>

#define MQ_INLINE static inline __attribute__((always_inline))

static inline __mmask16 tail_mask(int64_t left) {
    return left >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << left) - 1u);
}

/* acc of output pixel `pix` (index into the output rows), panel p: epilogue and store. */
MQ_INLINE void store_tile(const mq_static_conv_args *a, __m512i acc, int64_t pix, int64_t p) {
    const int64_t n0 = p * MQ_PANEL;
    const __mmask16 mask = tail_mask(a->n - n0);
    acc = _mm512_sub_epi32(acc, _mm512_loadu_si512(a->zcol + n0));
    __m512 y = _mm512_mul_ps(_mm512_cvtepi32_ps(acc), _mm512_maskz_loadu_ps(mask, a->xw + n0));
    if (a->bias) y = _mm512_add_ps(y, _mm512_maskz_loadu_ps(mask, a->bias + n0));
    /* max(y, lo) is (y > lo ? y : lo): a NaN gives lo, as the reference */
    __m512 v = _mm512_min_ps(_mm512_max_ps(y, _mm512_set1_ps(a->act_lo)), _mm512_set1_ps(a->act_hi));
    if (!a->y_q) {
        _mm512_mask_storeu_ps(a->y_f32 + pix * a->n + n0, mask, v);
        return;
    }
    const float lo = (float)(-127 - a->out_zp), hi = (float)(127 - a->out_zp);
    __m512 s = _mm512_mul_ps(v, _mm512_set1_ps(a->inv_out_scale));
    s = _mm512_min_ps(_mm512_max_ps(s, _mm512_set1_ps(lo)), _mm512_set1_ps(hi));
    __m512i q = _mm512_add_epi32(_mm512_cvtps_epi32(s), _mm512_set1_epi32(a->out_zp)); /* MXCSR: nearest even */
    _mm_mask_storeu_epi8(a->y_q + pix * a->n + n0, mask, _mm512_cvtepi32_epi8(q));
}

#define SACC_DECL(i, MT) __m512i acc##i##0 = _mm512_setzero_si512(), acc##i##1 = acc##i##0, acc##i##2 = acc##i##0, \
                             acc##i##3 = acc##i##0;                                                      \
    const uint8_t *xp##i = mq_static_pixel_base(a, pix0 + ((i) < (MT) ? (i) : 0));
#define SACC_PIX(i, MT, NT)                                                    \
    if ((i) < (MT)) {                                                          \
        int32_t x4;                                                            \
        memcpy(&x4, xp##i + off, 4);                                           \
        const __m512i xb = _mm512_set1_epi32(x4);                              \
        acc##i##0 = _mm512_dpbusd_epi32(acc##i##0, xb, w0);                    \
        if ((NT) > 1) acc##i##1 = _mm512_dpbusd_epi32(acc##i##1, xb, w1);      \
        if ((NT) > 2) acc##i##2 = _mm512_dpbusd_epi32(acc##i##2, xb, w2);      \
        if ((NT) > 3) acc##i##3 = _mm512_dpbusd_epi32(acc##i##3, xb, w3);      \
    }
#define SACC_STORE(i, MT, NT)                                                  \
    if ((i) < (MT)) {                                                          \
        store_tile(a, acc##i##0, pix0 + (i), p);                               \
        if ((NT) > 1) store_tile(a, acc##i##1, pix0 + (i), p + 1);             \
        if ((NT) > 2) store_tile(a, acc##i##2, pix0 + (i), p + 2);             \
        if ((NT) > 3) store_tile(a, acc##i##3, pix0 + (i), p + 3);             \
    }

/* MT consecutive output pixels (row-major, across row ends: each has its own base pointer)
 * x NT panels from panel p. */
#define STILE(MT, NT)                                                                                  \
    static void stile_##MT##_##NT(const mq_static_conv_args *a, int64_t pix0, int64_t p) {             \
        const int64_t cg4 = a->c / 4, groups = a->kh * a->kw * cg4;                                    \
        const int8_t *w = a->w + p * groups * 64;                                                      \
        SACC_DECL(0, MT) SACC_DECL(1, MT) SACC_DECL(2, MT) SACC_DECL(3, MT) SACC_DECL(4, MT)           \
        SACC_DECL(5, MT) SACC_DECL(6, MT) SACC_DECL(7, MT) SACC_DECL(8, MT) SACC_DECL(9, MT)           \
        SACC_DECL(10, MT) SACC_DECL(11, MT)                                                            \
        int64_t g = 0;                                                                                 \
        for (int64_t i = 0; i < a->kh; i++)                                                            \
            for (int64_t j = 0; j < a->kw; j++) {                                                      \
                const int64_t tap = (i * a->dh * a->wp + j * a->dw) * a->c;                            \
                for (int64_t cb = 0; cb < cg4; cb++, g++) {                                            \
                    const int64_t off = tap + cb * 4;                                                  \
                    const __m512i w0 = _mm512_loadu_si512(w + g * 64);                                 \
                    const __m512i w1 = (NT) > 1 ? _mm512_loadu_si512(w + (groups + g) * 64) : w0;      \
                    const __m512i w2 = (NT) > 2 ? _mm512_loadu_si512(w + (2 * groups + g) * 64) : w0;  \
                    const __m512i w3 = (NT) > 3 ? _mm512_loadu_si512(w + (3 * groups + g) * 64) : w0;  \
                    SACC_PIX(0, MT, NT) SACC_PIX(1, MT, NT) SACC_PIX(2, MT, NT) SACC_PIX(3, MT, NT)    \
                    SACC_PIX(4, MT, NT) SACC_PIX(5, MT, NT) SACC_PIX(6, MT, NT) SACC_PIX(7, MT, NT)    \
                    SACC_PIX(8, MT, NT) SACC_PIX(9, MT, NT) SACC_PIX(10, MT, NT) SACC_PIX(11, MT, NT)  \
                }                                                                                      \
            }                                                                                          \
        SACC_STORE(0, MT, NT) SACC_STORE(1, MT, NT) SACC_STORE(2, MT, NT) SACC_STORE(3, MT, NT)        \
        SACC_STORE(4, MT, NT) SACC_STORE(5, MT, NT) SACC_STORE(6, MT, NT) SACC_STORE(7, MT, NT)        \
        SACC_STORE(8, MT, NT) SACC_STORE(9, MT, NT) SACC_STORE(10, MT, NT) SACC_STORE(11, MT, NT)      \
    }

typedef void (*stile_fn)(const mq_static_conv_args *a, int64_t pix0, int64_t p);
STILE(12, 1) STILE(8, 2) STILE(8, 3) STILE(6, 4)
STILE(1, 1) STILE(1, 2) STILE(1, 3) STILE(1, 4)
/* by NT: the wide tile (its pixel count) and the one-pixel tile */
static const stile_fn wide_tiles[5] = {NULL, stile_12_1, stile_8_2, stile_8_3, stile_6_4};
static const int wide_pixels[5] = {0, 12, 8, 8, 6}; /* accumulators: 12, 16, 24, 24 of the 32 zmm */
static const stile_fn one_tiles[5] = {NULL, stile_1_1, stile_1_2, stile_1_3, stile_1_4};

/* Panels in chunks of up to 4; the call's pixels (all its rows, row-major) in tiles of the
 * wide width, the last one moved back to end at the last pixel (pixels are independent: one
 * computed twice is written twice with the same bits); fewer pixels than a tile go one by one. */
static void static_conv_vnni(const mq_static_conv_args *a) {
    const int64_t panels = (a->n + MQ_PANEL - 1) / MQ_PANEL, pixels = a->out_rows * a->out_w;
    for (int64_t p = 0; p < panels;) {
        const int nt = panels - p >= 4 ? 4 : (int)(panels - p);
        const int64_t mt = wide_pixels[nt];
        if (pixels < mt) {
            for (int64_t pix = 0; pix < pixels; pix++) one_tiles[nt](a, pix, p);
        } else {
            for (int64_t pix0 = 0; pix0 < pixels; pix0 += mt)
                wide_tiles[nt](a, pix0 + mt <= pixels ? pix0 : pixels - mt, p);
        }
        p += nt;
    }
}

const mq_kernels mq_avx512vnni_static_table = {
    .static_conv = static_conv_vnni,
    .static_conv_x_u8 = 1,
};

#else /* no AVX-512 VNNI compiler support: keep the lower level's kernel */
const mq_kernels mq_avx512vnni_static_table = {.name = NULL};
#endif
