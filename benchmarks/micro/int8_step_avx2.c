/* benchmarks/micro/int8_step_avx2.c - the inner step of an int8 x int8 matmul on AVX2 without
 * VNNI, in several formulations, from L1 (docs/benchmarks.md, "Why the default 8-bit dynamic
 * kernel stays ... behind fbgemm").  Not part of the build or the tests:
 *
 *     gcc -O2 -mavx2 -o /tmp/int8_step benchmarks/micro/int8_step_avx2.c && /tmp/int8_step
 *
 * Each kernel runs K = 256 reductions of one tile (registers only: each row's step is one asm
 * statement, as in csrc/x86/avx2/linear.c, so GCC neither spills nor reorders it) and is timed
 * as the best of 60 rounds; the figure is ns per row-step of 32 multiply-adds, and the ratio
 * is fbgemm's formulation's time over this one's (higher is faster).  The values are constants:
 * only the instruction mix is measured. */
#include <immintrin.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#define K 256
static int8_t x8[12 * K] __attribute__((aligned(64)));
static int16_t x16[12 * K] __attribute__((aligned(64)));
static int8_t w8[8 * K] __attribute__((aligned(64)));
static int16_t w16[32 * K] __attribute__((aligned(64)));
static volatile int sink;

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

#define DECL __m256i a0 = _mm256_setzero_si256(), a1 = a0, a2 = a0, a3 = a0, a4 = a0, a5 = a0, a6 = a0, \
                     a7 = a0, a8 = a0, a9 = a0, a10 = a0, a11 = a0;
#define OUT                                                                                         \
    out[0] = a0, out[1] = a1, out[2] = a2, out[3] = a3, out[4] = a4, out[5] = a5, out[6] = a6;      \
    out[7] = a7, out[8] = a8, out[9] = a9, out[10] = a10, out[11] = a11;
#define ROWS12(R) R(0, a0) R(1, a1) R(2, a2) R(3, a3) R(4, a4) R(5, a5) R(6, a6) R(7, a7) R(8, a8) \
    R(9, a9) R(10, a10) R(11, a11)

/* fbgemm's (7-bit activations): 12 rows x 8 channels, maddubs, madd with ones, add */
static __attribute__((noinline)) void u7_12x8(__m256i *out) {
    DECL const __m256i ones = _mm256_set1_epi16(1);
    for (int g = 0; g < K / 4; g++) {
        const __m256i w = _mm256_load_si256((const __m256i *)(w8 + g * 32));
#define R(i, acc)                                                                                  \
    {                                                                                              \
        __m256i t;                                                                                 \
        __asm__("vpbroadcastd %[xm], %[t]\n\tvpmaddubsw %[w], %[t], %[t]\n\t"                      \
                "vpmaddwd %[o], %[t], %[t]\n\tvpaddd %[t], %[a], %[a]"                             \
                : [a] "+x"(acc), [t] "=&x"(t)                                                      \
                : [xm] "m"(*(const int32_t *)(x8 + (i) * K + g * 4)), [w] "x"(w), [o] "x"(ones)); \
    }
        ROWS12(R)
#undef R
    }
    OUT
}

/* ours (exact 8-bit): the same plus vpsignb, |w| once per group */
static __attribute__((noinline)) void sign_12x8(__m256i *out) {
    DECL const __m256i ones = _mm256_set1_epi16(1);
    for (int g = 0; g < K / 4; g++) {
        const __m256i w = _mm256_load_si256((const __m256i *)(w8 + g * 32)), aw = _mm256_abs_epi8(w);
#define R(i, acc)                                                                                  \
    {                                                                                              \
        __m256i t;                                                                                 \
        __asm__("vpbroadcastd %[xm], %[t]\n\tvpsignb %[w], %[t], %[t]\n\t"                         \
                "vpmaddubsw %[t], %[aw], %[t]\n\tvpmaddwd %[o], %[t], %[t]\n\tvpaddd %[t], %[a], %[a]" \
                : [a] "+x"(acc), [t] "=&x"(t)                                                      \
                : [xm] "m"(*(const int32_t *)(x8 + (i) * K + g * 4)), [w] "x"(w), [aw] "x"(aw),   \
                  [o] "x"(ones));                                                                  \
    }
        ROWS12(R)
#undef R
    }
    OUT
}

/* 16-bit products on weights and activations widened beforehand (no sign trick, exact):
 * one broadcast x pair (dword) per row, vpmaddwd + vpaddd per 8 channels x 2 k */
static __attribute__((noinline)) void w16_12x8(__m256i *out) {
    DECL for (int g = 0; g < K / 2; g++) {
        const __m256i w = _mm256_load_si256((const __m256i *)(w16 + g * 16));
#define R(i, acc)                                                                                  \
    {                                                                                              \
        __m256i t;                                                                                 \
        __asm__("vpbroadcastd %[xm], %[t]\n\tvpmaddwd %[w], %[t], %[t]\n\tvpaddd %[t], %[a], %[a]" \
                : [a] "+x"(acc), [t] "=&x"(t)                                                      \
                : [xm] "m"(*(const int32_t *)(x16 + (i) * K + g * 2)), [w] "x"(w));               \
    }
        ROWS12(R)
#undef R
    }
    OUT
}

/* the same, 6 rows x 16 channels: one broadcast for two weight vectors */
static __attribute__((noinline)) void w16_6x16(__m256i *out) {
    DECL for (int g = 0; g < K / 2; g++) {
        const __m256i w0 = _mm256_load_si256((const __m256i *)(w16 + g * 32));
        const __m256i w1 = _mm256_load_si256((const __m256i *)(w16 + g * 32 + 16));
#define R(i, p, q)                                                                                 \
    {                                                                                              \
        __m256i t, u;                                                                              \
        __asm__("vpbroadcastd %[xm], %[t]\n\tvpmaddwd %[w0], %[t], %[u]\n\t"                       \
                "vpmaddwd %[w1], %[t], %[t]\n\tvpaddd %[u], %[Pa], %[Pa]\n\tvpaddd %[t], %[Pb], %[Pb]" \
                : [Pa] "+x"(p), [Pb] "+x"(q), [t] "=&x"(t), [u] "=&x"(u)                           \
                : [xm] "m"(*(const int32_t *)(x16 + (i) * K + g * 2)), [w0] "x"(w0), [w1] "x"(w1)); \
    }
        R(0, a0, a1) R(1, a2, a3) R(2, a4, a5) R(3, a6, a7) R(4, a8, a9) R(5, a10, a11)
#undef R
    }
    OUT
}

/* 16-bit, 4 k per broadcast (qword: x0 x1 x2 x3 repeated), the packed int8 layout widened as it
 * is (4 channels x 4 k a vector, channel sums = adjacent lane pairs at the end): 2 rows x 16
 * channels, the 4 weight vectors in registers (R2 = 2) or 3 rows with them as memory operands */
#define QROW(i, p, q, r, s, ...)                                                                    \
    {                                                                                              \
        __m256i t, u;                                                                              \
        __asm__("vpbroadcastq %[xm], %[t]\n\t"                                                     \
                "vpmaddwd %[w0], %[t], %[u]\n\tvpaddd %[u], %[Pa], %[Pa]\n\t"                      \
                "vpmaddwd %[w1], %[t], %[u]\n\tvpaddd %[u], %[Pb], %[Pb]\n\t"                      \
                "vpmaddwd %[w2], %[t], %[u]\n\tvpaddd %[u], %[Pc], %[Pc]\n\t"                      \
                "vpmaddwd %[w3], %[t], %[t]\n\tvpaddd %[t], %[Pd], %[Pd]"                          \
                : [Pa] "+x"(p), [Pb] "+x"(q), [Pc] "+x"(r), [Pd] "+x"(s), [t] "=&x"(t), [u] "=&x"(u) \
                : [xm] "m"(*(const int64_t *)(x16 + (i) * K + g * 4)), __VA_ARGS__);                \
    }
static __attribute__((noinline)) void w16q_2x16(__m256i *out) {
    DECL for (int g = 0; g < K / 4; g++) {
        const int16_t *w = w16 + g * 64;
        const __m256i w0 = _mm256_load_si256((const __m256i *)w), w1 = _mm256_load_si256((const __m256i *)(w + 16));
        const __m256i w2 = _mm256_load_si256((const __m256i *)(w + 32)), w3 = _mm256_load_si256((const __m256i *)(w + 48));
        QROW(0, a0, a1, a2, a3, [w0] "x"(w0), [w1] "x"(w1), [w2] "x"(w2), [w3] "x"(w3))
        QROW(1, a4, a5, a6, a7, [w0] "x"(w0), [w1] "x"(w1), [w2] "x"(w2), [w3] "x"(w3))
    }
    OUT
}
static __attribute__((noinline)) void w16q_3x16_mem(__m256i *out) {
    DECL for (int g = 0; g < K / 4; g++) {
        const __m256i *w = (const __m256i *)(w16 + g * 64);
#define WM [w0] "m"(w[0]), [w1] "m"(w[1]), [w2] "m"(w[2]), [w3] "m"(w[3])
        QROW(0, a0, a1, a2, a3, WM) QROW(1, a4, a5, a6, a7, WM) QROW(2, a8, a9, a10, a11, WM)
#undef WM
    }
    OUT
}

/* 16-bit, dword broadcast, 32 channels per broadcast: 3 rows, weights as memory operands */
static __attribute__((noinline)) void w16_3x32_mem(__m256i *out) {
    DECL for (int g = 0; g < K / 2; g++) {
        const __m256i *w = (const __m256i *)(w16 + g * 64);
#define R(i, p, q, r, s)                                                                           \
    {                                                                                              \
        __m256i t, u;                                                                              \
        __asm__("vpbroadcastd %[xm], %[t]\n\t"                                                     \
                "vpmaddwd %[w0], %[t], %[u]\n\tvpaddd %[u], %[Pa], %[Pa]\n\t"                      \
                "vpmaddwd %[w1], %[t], %[u]\n\tvpaddd %[u], %[Pb], %[Pb]\n\t"                      \
                "vpmaddwd %[w2], %[t], %[u]\n\tvpaddd %[u], %[Pc], %[Pc]\n\t"                      \
                "vpmaddwd %[w3], %[t], %[t]\n\tvpaddd %[t], %[Pd], %[Pd]"                          \
                : [Pa] "+x"(p), [Pb] "+x"(q), [Pc] "+x"(r), [Pd] "+x"(s), [t] "=&x"(t), [u] "=&x"(u) \
                : [xm] "m"(*(const int32_t *)(x16 + (i) * K + g * 2)), [w0] "m"(w[0]), [w1] "m"(w[1]), \
                  [w2] "m"(w[2]), [w3] "m"(w[3]));                                                 \
    }
        R(0, a0, a1, a2, a3) R(1, a4, a5, a6, a7) R(2, a8, a9, a10, a11)
#undef R
    }
    OUT
}

typedef void (*kernel_fn)(__m256i *);
static const struct {
    kernel_fn fn;
    const char *name;
    double macs; /* multiply-adds per call / K */
} kernels[] = {
    {u7_12x8, "fbgemm's: 7-bit activations, maddubs (12 rows x 8 ch)", 96},
    {sign_12x8, "ours: exact 8-bit, vpsignb + maddubs (12 x 8)", 96},
    {w16_12x8, "16-bit widened, vpmaddwd, dword broadcast (12 x 8)", 96},
    {w16_6x16, "16-bit widened, dword broadcast (6 x 16)", 96},
    {w16q_2x16, "16-bit widened, qword broadcast, packed layout (2 x 16)", 32},
    {w16q_3x16_mem, "16-bit widened, qword broadcast, weights from memory (3 x 16)", 48},
    {w16_3x32_mem, "16-bit widened, dword broadcast, weights from memory (3 x 32)", 96},
};
#define COUNT (int)(sizeof kernels / sizeof kernels[0])

int main(void) {
    memset(x8, 3, sizeof x8), memset(w8, 5, sizeof w8), memset(x16, 1, sizeof x16), memset(w16, 1, sizeof w16);
    double best[COUNT];
    __m256i out[12];
    for (int j = 0; j < COUNT; j++) best[j] = 1e9;
    for (int round = 0; round < 60; round++)
        for (int j = 0; j < COUNT; j++) {
            const int reps = 20000;
            double t = now();
            for (int r = 0; r < reps; r++) kernels[j].fn(out);
            t = (now() - t) / (reps * kernels[j].macs * K / 32) * 1e9;
            if (t < best[j]) best[j] = t;
        }
    for (int j = 0; j < COUNT; j++)
        printf("%-64s %.3f ns  %.2f\n", kernels[j].name, best[j], best[0] / best[j]);
    sink = _mm256_extract_epi32(out[0], 0);
    return 0;
}
