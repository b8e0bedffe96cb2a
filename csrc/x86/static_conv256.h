/* x86/static_conv256.h - the static int8 direct conv (mq_static_conv_args, mq.h) on 256-bit
 * registers, as static functions for the two compile units that build it:
 *   x86/avx2/static_conv.c: AVX2's maddubs sign trick on int8 activations;
 *   x86/avx_vnni/static_conv.c: AVX-VNNI's vpdpbusd on int8 + 128 (Zen 5, Alder Lake and later).
 * A header rather than one .c compiled twice: each unit keeps its own -m flags.
 *
 * The including unit defines, after <immintrin.h> and mq.h:
 *   SC_WIDE                     pixels per tile (accumulators: 2 per pixel)
 *   SC_GROUP_PREP               per 64-byte K-group, from w0 / w1 (the panel's two 8-channel halves)
 *   SC_DOT(acc_a, acc_b, xb)    acc += the 4 broadcast activation bytes xb times w0 / w1
 * A tile is SC_WIDE consecutive output pixels (row-major, across row ends: each has its own
 * base pointer) x one panel, read straight from the padded input rows (no im2col); the sums
 * never leave registers, and the epilogue is mq_ref_static_conv's, in its order. */
#ifndef MQ_STATIC_CONV256_H
#define MQ_STATIC_CONV256_H

#define MQ_INLINE static inline __attribute__((always_inline))

#include "x86/epilogue256.h"

/* 8 channels n0 .. n0 + 7 (fewer at the tail) of output pixel pix. */
MQ_INLINE void store_half(const mq_static_conv_args *a, const mq_epilogue256 *e, __m256i acc, int64_t pix,
                          int64_t n0) {
    const int64_t valid = a->n - n0 < 8 ? a->n - n0 : 8;
    acc = _mm256_sub_epi32(acc, _mm256_loadu_si256((const __m256i *)(a->zcol + n0)));
    if (a->pix_shift) { /* the split kernel's corrections (mq_static_conv_args) */
        acc = _mm256_add_epi32(acc, _mm256_set1_epi32(a->pix_shift[pix]));
        if (a->corr_at[pix] >= 0)
            acc = _mm256_add_epi32(acc, _mm256_loadu_si256((const __m256i *)(a->corr + a->corr_at[pix] *
                                                                             mq_round_up(a->n, MQ_PANEL) + n0)));
    }
    const int64_t o = pix * a->n + n0;
    mq_epilogue256_store(e, acc, a->xw + n0, a->bias ? a->bias + n0 : NULL, valid, a->y_q ? a->y_q + o : NULL,
                         a->y_q ? NULL : a->y_f32 + o);
}

#define SROW_DECL(i, MT) __m256i acc##i##a = _mm256_setzero_si256(), acc##i##b = acc##i##a; \
    const uint8_t *xp##i = mq_static_pixel_base(a, pix0 + ((i) < (MT) ? (i) : 0));
#define SROW(i, MT)                                                                   \
    if ((i) < (MT)) {                                                                 \
        int32_t x4;                                                                   \
        memcpy(&x4, xp##i + off, 4);                                                  \
        const __m256i xb = _mm256_set1_epi32(x4);                                     \
        SC_DOT(acc##i##a, acc##i##b, xb)                                              \
    }
#define SROW_STORE(i, MT)                                                             \
    if ((i) < (MT)) {                                                                 \
        store_half(a, &e, acc##i##a, pix0 + (i), p * MQ_PANEL);                       \
        if (p * MQ_PANEL + 8 < a->n) store_half(a, &e, acc##i##b, pix0 + (i), p * MQ_PANEL + 8); \
    }
/* MT consecutive output pixels (row-major, across row ends) x one panel p. */
#define STILE(MT)                                                                                      \
    static void stile_##MT(const mq_static_conv_args *a, int64_t pix0, int64_t p) {                    \
        const int64_t cg4 = a->c / 4, groups = a->kh * a->kw * cg4;                                    \
        const int8_t *w = a->w + p * groups * 64;                                                      \
        SROW_DECL(0, MT) SROW_DECL(1, MT) SROW_DECL(2, MT) SROW_DECL(3, MT) SROW_DECL(4, MT)           \
        SROW_DECL(5, MT)                                                                               \
        int64_t g = 0;                                                                                 \
        for (int64_t i = 0; i < a->kh; i++)                                                            \
            for (int64_t j = 0; j < a->kw; j++) {                                                      \
                const int64_t tap = (i * a->dh * a->wp + j * a->dw) * a->c;                            \
                for (int64_t cb = 0; cb < cg4; cb++, g++) {                                            \
                    const int64_t off = tap + cb * 4;                                                  \
                    const __m256i w0 = _mm256_loadu_si256((const __m256i *)(const void *)(w + g * 64));        \
                    const __m256i w1 = _mm256_loadu_si256((const __m256i *)(const void *)(w + g * 64 + 32));   \
                    SC_GROUP_PREP                                                                      \
                    SROW(0, MT) SROW(1, MT) SROW(2, MT) SROW(3, MT) SROW(4, MT) SROW(5, MT)            \
                }                                                                                      \
            }                                                                                          \
        const mq_epilogue256 e = mq_epilogue256_of(a->act_lo, a->act_hi, a->inv_out_scale, a->out_zp);  \
        SROW_STORE(0, MT) SROW_STORE(1, MT) SROW_STORE(2, MT) SROW_STORE(3, MT) SROW_STORE(4, MT)      \
        SROW_STORE(5, MT)                                                                              \
    }

#define SC_CAT2(a, b) a##b
#define SC_CAT(a, b) SC_CAT2(a, b)
#define SC_STILE(mt) STILE(mt) /* expands SC_WIDE before the paste */
SC_STILE(SC_WIDE)
STILE(1)
#define stile_wide SC_CAT(stile_, SC_WIDE)

/* Per panel: the call's pixels in tiles of SC_WIDE, the last one moved back to end at the last
 * pixel (a pixel computed twice is written twice with the same bits); fewer pixels one by one. */
static void static_conv256(const mq_static_conv_args *a) {
    const int64_t panels = (a->n + MQ_PANEL - 1) / MQ_PANEL, pixels = a->out_rows * a->out_w;
    for (int64_t p = 0; p < panels; p++) {
        if (pixels < SC_WIDE) {
            for (int64_t pix = 0; pix < pixels; pix++) stile_1(a, pix, p);
            continue;
        }
        for (int64_t pix0 = 0; pix0 < pixels; pix0 += SC_WIDE)
            stile_wide(a, pix0 + SC_WIDE <= pixels ? pix0 : pixels - SC_WIDE, p);
    }
}

#endif /* MQ_STATIC_CONV256_H */
