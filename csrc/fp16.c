/* fp16.c - the fp16 / bf16 weight linear: fp32 activations times 16-bit
 * weights widened to fp32 in registers (F16C vcvtph2ps, or a shift for
 * bf16), fp32 accumulation.
 *
 * The weight stays as stored (row-major [n][k], the module's own `.weight`):
 * at a few rows the layer reads half the bytes of an fp32 one, and nothing is
 * converted whole per call.  Blocking, so each byte is fetched from memory
 * once per row block: the kernels walk 3-4 weight rows at a time against
 * every activation row of a block (the weight rows stay in L1), the
 * activation block stays in L2 (ROW_BLOCK rows x K_BLOCK columns), and the
 * outputs are split over threads (parallel.c's rules). */
#include "mq.h"

/* Output columns per unit of work handed to threads: a multiple of every
 * kernel's weight tile (3 on AVX2, 4 on AVX-512), so no tile is cut. */
#define UNIT_COLS 12
/* Activation block: ROW_BLOCK x K_BLOCK fp32 = 256 KiB, inside the L2 of
 * AVX2-era cores (512 KiB) with room for the weight stream; K_BLOCK long, so
 * each tile's final lane sums cost little beside its multiply-adds (1024 was
 * 0-10% faster than 512 x 128 rows, benchmarks/bench_fp16.py). */
#define ROW_BLOCK 64
#define K_BLOCK 1024
/* Up to this many rows K is not blocked: the whole activation fits in L2 and
 * the weight rows stream front to back (what the prefetchers like best). */
#define UNBLOCKED_ROWS 8

/* As linear.c: below these many multiply-adds a call (or a piece of it)
 * stays on the calling thread; a helper can cost more than it saves. */
#define ONE_THREAD_MACS ((double)(1 << 24))
#define MIN_MACS_PER_PIECE ((int64_t)1 << 20)

typedef struct {
    mq_h16_gemm_fn fn;
    const float *x;
    int64_t m, k, ldx;
    const uint16_t *w;
    const float *bias;
    int64_t n;
    float *y;
} h16_ctx;

static void h16_range(void *vctx, int64_t begin, int64_t end) {
    const h16_ctx *c = vctx;
    const int64_t n0 = begin * UNIT_COLS, n1 = end * UNIT_COLS < c->n ? end * UNIT_COLS : c->n;
    const int64_t k_step = c->m <= UNBLOCKED_ROWS ? c->k : K_BLOCK;
    for (int64_t i0 = 0; i0 < c->m; i0 += ROW_BLOCK) {
        const int64_t rows = c->m - i0 < ROW_BLOCK ? c->m - i0 : ROW_BLOCK;
        for (int64_t k0 = 0; k0 < c->k; k0 += k_step) {
            const int64_t kc = c->k - k0 < k_step ? c->k - k0 : k_step;
            c->fn(c->x + i0 * c->ldx + k0, c->ldx, rows, c->w + k0, c->k, kc, n0, n1, c->bias, k0 > 0,
                  c->y + i0 * c->n, c->n);
        }
    }
}

void mq_h16_linear(const float *x, int64_t m, int64_t k, int64_t ldx, const uint16_t *w, int is_bf16,
                   const float *bias, int64_t n, float *y, int nthreads) {
    if (m <= 0 || n <= 0) return;
    if (k <= 0) { /* an empty sum: the bias alone */
        for (int64_t i = 0; i < m; i++)
            for (int64_t j = 0; j < n; j++) y[i * n + j] = bias ? bias[j] : 0.0f;
        return;
    }
    const mq_kernels *kt = mq_active();
    h16_ctx c = {is_bf16 ? kt->bf16_gemm : kt->f16_gemm, x, m, k, ldx, w, bias, n, y};
    if ((double)m * (double)k * (double)n < ONE_THREAD_MACS) nthreads = 1;
    const int64_t units = (n + UNIT_COLS - 1) / UNIT_COLS, per_unit = m * k * UNIT_COLS;
    const int64_t min_units = per_unit >= MIN_MACS_PER_PIECE ? 1 : (MIN_MACS_PER_PIECE + per_unit - 1) / per_unit;
    mq_parallel_for(units, min_units, nthreads, h16_range, &c);
}
