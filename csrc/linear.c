/* linear.c - int8 weight packing and the quantized matmul drivers.
 *
 * The drivers prepare the activations once per call (dynamic mode: per-row
 * symmetric int8, -127..127, so no activation is -128, or with reduce_range
 * 7-bit codes with a zero-point, act_u7.c; weight-only: fp32
 * rows padded to kp) and split the output channels over threads in whole
 * panels; the dispatched kernel (ref.c, x86/avx2/linear.c, x86/avx512{,_vnni}/linear.c) does
 * the rest.  Nothing here re-packs the weight. */
#include <math.h>
#include <stdlib.h>

#include "conv_dynamic_direct.h"
#include "conv_profile.h"
#include "mq.h"
#include "size_check.h"

/* Below this many multiply-adds per chunk, fewer threads are faster: a
 * pthread start costs ~20-50 us, waking a pool helper a few us. */
static int64_t min_macs_per_thread(void) {
    return strcmp(mq_threading_backend(), "pool") ? (int64_t)1 << 22 : (int64_t)1 << 20;
}

typedef struct {
    const int8_t *w;
    int64_t n, k;
    int8_t *packed;
    int32_t *w_sum;
    uint8_t *panel_m128; /* per panel: some weight is -128 */
    mq_pack_panel_fn pack_panel;
} pack_ctx;

static void pack_range(void *vctx, int64_t p0, int64_t p1) {
    const pack_ctx *c = vctx;
    const int64_t kp = mq_round_up(c->k, MQ_KGROUP);
    for (int64_t p = p0; p < p1; p++) {
        int64_t row = p * MQ_PANEL, nvalid = c->n - row < MQ_PANEL ? c->n - row : MQ_PANEL;
        c->pack_panel(c->w + row * c->k, c->k, nvalid, c->k, c->packed + p * MQ_PANEL * kp, c->w_sum + row,
                      &c->panel_m128[p]);
    }
}

int mq_pack_int8(const int8_t *w, int64_t n, int64_t k, int8_t *packed, int32_t *w_sum, uint8_t *panel_m128,
                 int nthreads) {
    const int64_t panels = mq_round_up(n, MQ_PANEL) / MQ_PANEL;
    pack_ctx c = {w, n, k, packed, w_sum, panel_m128, mq_active()->pack_panel};
    /* ~1 MiB of weight per chunk: smaller layers stay on this thread (divided twice: 16 * k
     * wraps for the k near 2^63 of a zero-row array) */
    mq_parallel_for(panels, 1 + ((int64_t)1 << 20) / MQ_PANEL / (k > 0 ? k : 1), nthreads, pack_range, &c);
    int has_m128 = 0;
    for (int64_t p = 0; p < panels; p++) has_m128 |= panel_m128[p];
    return has_m128;
}

/* ---- checking packed buffers read from a file ---------------------------------- */

typedef struct {
    const int8_t *packed;
    int64_t n, k;
    int32_t *sums;
    uint8_t *panel_flags; /* per panel: bit 0 some byte is -128, bit 1 a padding byte is not 0 */
} packed_check_ctx;

/* Plain loops over the 64 bytes of each K-group (16 channels x 4): gcc vectorizes
 * them; a verification pass at memory speed needs no hand-written twin. */
static void packed_check_range(void *vctx, int64_t p0, int64_t p1) {
    const packed_check_ctx *c = vctx;
    const int64_t kp = mq_round_up(c->k, MQ_KGROUP), groups = kp / MQ_KGROUP;
    for (int64_t p = p0; p < p1; p++) {
        const int8_t *panel = c->packed + p * MQ_PANEL * kp;
        uint32_t acc[MQ_PANEL * MQ_KGROUP] = {0}; /* wraps like the stored int32 sums, without signed overflow */
        int8_t lowest[MQ_PANEL * MQ_KGROUP];
        memset(lowest, 0, sizeof lowest);
        for (int64_t g = 0; g < groups; g++) {
            const int8_t *src = panel + g * MQ_PANEL * MQ_KGROUP;
            for (int j = 0; j < MQ_PANEL * MQ_KGROUP; j++) {
                acc[j] += (uint32_t)(int32_t)src[j];
                lowest[j] = src[j] < lowest[j] ? src[j] : lowest[j];
            }
        }
        uint8_t flags = 0;
        for (int j = 0; j < MQ_PANEL * MQ_KGROUP; j++) flags |= lowest[j] == -128;
        const int64_t nvalid = c->n - p * MQ_PANEL;
        const int8_t *last = panel + (groups - 1) * MQ_PANEL * MQ_KGROUP;
        for (int ch = 0; ch < MQ_PANEL; ch++) {
            c->sums[p * MQ_PANEL + ch] = (int32_t)(acc[ch * 4] + acc[ch * 4 + 1] + acc[ch * 4 + 2] + acc[ch * 4 + 3]);
            for (int j = 0; j < MQ_KGROUP; j++) {
                int padding_column = (groups - 1) * MQ_KGROUP + j >= c->k;
                if (padding_column && last[ch * MQ_KGROUP + j]) flags |= 2;
            }
            if (ch >= nvalid) /* a padding channel: all its bytes must be 0 */
                for (int64_t g = 0; g < groups && !(flags & 2); g++)
                    for (int j = 0; j < MQ_KGROUP; j++)
                        if (panel[g * MQ_PANEL * MQ_KGROUP + ch * MQ_KGROUP + j]) flags |= 2;
        }
        c->panel_flags[p] = flags;
    }
}

int mq_packed_check(const int8_t *packed, int64_t n, int64_t k, int32_t *sums, uint8_t *panel_flags, int nthreads) {
    const int64_t panels = mq_round_up(n, MQ_PANEL) / MQ_PANEL;
    packed_check_ctx c = {packed, n, k, sums, panel_flags};
    mq_parallel_for(panels, 1 + ((int64_t)1 << 20) / MQ_PANEL / (k > 0 ? k : 1), nthreads, packed_check_range, &c);
    int flags = 0;
    for (int64_t p = 0; p < panels; p++) flags |= panel_flags[p];
    return flags;
}

/* Rows up to which the dynamic kernels use the one-panel GEMV tile (K split
 * over 4 accumulators); above it the 8-row x 3-panel tile, which also reads
 * each weight byte once for up to 8 rows.  -1 (default) picks it from the
 * measurements (bench_linear.py's sweep, 4096x4096 from DRAM): the GEMV tile
 * wins only with one thread at one row (~3%); with two threads the 3-panel
 * tile's 3 streams per thread read DRAM 6-30% faster from 1 row on. */
int64_t mq_gemv_max_rows = -1;

static int64_t gemv_rows(int nthreads) {
    return mq_gemv_max_rows >= 0 ? mq_gemv_max_rows : (nthreads == 1 ? 1 : 0);
}

/* Work up to which a call runs on the calling thread alone, whatever the
 * host: splitting it saves less than a helper can cost.  Between layers
 * torch's OpenMP workers (and any other process) hold the cores, and a woken
 * helper that claims a piece and is then descheduled makes the call wait a
 * scheduler slice (docs/benchmarks.md "Steady under load": the demo model's
 * 2^23 multiply-add layers at batch 32 went from 0.6 to 5 ms a call with one
 * busy process beside when they split).  Measured on the demo model, 2
 * threads, quiet host: int8 dynamic layers of 2^23 (40 us on one thread) lost
 * 13% split; weight-only ones of 2^21 (8 rows) gained nothing and collapsed
 * to 2.5 ms a model call beside two busy processes. */
#define MQ_ONE_THREAD_MACS MQ_SPLIT_ALWAYS_MACS
/* The weight-only kernels convert every weight to fp32 and run fp32 FMAs, a
 * few times the int8 kernels' time a multiply-add: from this much work (the
 * demo model's layers at batch 32, 0.07 ms on one thread at AVX-512, 0.14 at
 * AVX2) such a call splits, while the host lets it (mq_threads_for_work:
 * the split calls' callers kept their cores), on torch's OpenMP team when it
 * can (parallel.c): the whole demo model at batch 32 ran 1.21-1.39x its
 * one-thread speed at AVX-512 on a quiet host and beside one or two busy
 * processes, 1.45-1.64x at the AVX2 level (quiet). */
#define MQ_WO_SPLIT_MACS ((double)(1 << 23))
/* ... counting each weight's conversion to fp32 (once per call and row block) and the call's fixed
 * costs as MQ_WO_CONVERT_ROWS (mq.h) rows of multiply-adds: at a few rows they are most of the call
 * (768 x 768 at AVX-512, 1 thread: 24 us at 1 row, 76 at 8).  Counted by its multiply-adds alone (4.7 M),
 * 768 x 768 at 8 rows stayed on one thread: 1.48 of fp32's time on 2 threads (Intel Xeon, 2 Dec);
 * now it splits (9.4 M) and a 1-row call of it (5.3 M, 24 us: a split would land on the pool, whose
 * helper's wake-up costs about that) does not */
/* The call's work counts what the kernels do, not the layer's size: whole
 * panels of MQ_PANEL outputs (Linear(768, 2) at 4096 rows is 8x its 6.3 M
 * multiply-adds), and a pass over the activations (quantized, or read and
 * copied to fp32), MQ_ACT_MACS multiply-adds a value: 4096 x 768 quantized
 * in 0.26 ms at AVX-512, 0.41 at AVX2, what the int8 GEMM does 40 / 16
 * multiply-adds a value in.  Counted by n alone, that Linear ran on one
 * thread at 2 threads.  A faster GEMM (the table's qgemm_speed: AMX, on
 * whole 16-row tiles) counts its multiply-adds at that fraction. */
#define MQ_ACT_MACS 16
/* Weight-only pieces are sized as if a multiply-add cost 4 int8 ones: 4x as
 * many pieces, so a late helper holds less. */
#define MQ_WO_MAC_COST 4
/* Whether kt's qgemm runs a kp-deep call on its row tiles (AMX; qgemm_tile_rows, mq.h). */
static int qgemm_tiled(const mq_kernels *kt, int64_t kp) {
    return kt && kt->qgemm_tile_rows > 0 && kp >= kt->qgemm_tile_k;
}

static int threads_for_call(int64_t m, int64_t kp, int64_t n, int nthreads, double split_from,
                            const mq_kernels *fast) {
    double rows = (double)m; /* the GEMM's rows, at its speed */
    if (qgemm_tiled(fast, kp) && fast->qgemm_speed > 1) {
        const int64_t tiled = m / fast->qgemm_tile_rows * fast->qgemm_tile_rows;
        rows = (double)tiled / fast->qgemm_speed + (double)(m - tiled);
    }
    const double work = (double)kp * (rows * (double)mq_round_up(n, MQ_PANEL) + (double)m * MQ_ACT_MACS);
    return mq_threads_for_work(work, split_from, nthreads);
}

static int64_t panels_per_chunk(int64_t m, int64_t kp, int mac_cost) {
    const int64_t per_panel = m * kp * MQ_PANEL * mac_cost, min_macs = min_macs_per_thread();
    return mq_items_per_chunk(per_panel, min_macs);
}

/* ---- dynamic int8 ------------------------------------------------------------ */

typedef struct {
    const uint8_t *src;
    size_t row_bytes;
    mq_src_t kind;
    int x_is_q;
    int64_t k;
    mq_qgemm_args *a;
    int32_t *x_sum; /* writable alias of a->x_sum */
    float *x_scale;
    uint8_t *xq;
    const mq_kernels *kt;
    int32_t *x_zp; /* reduce_range: per-row zero-points (act_u7.c), else NULL */
    mq_x_encoding_t enc;
    /* the split (act_split.c) for the table's qgemm_split, else split_start is NULL: row r's list
     * entries split[split_start[r] .. split_start[r + 1]) (first their count, in split_start[r + 1]),
     * its sum of codes and its breaking pairs ([rows][mq_split_mask_words(kp)]) */
    mq_split_entry *split;
    int64_t *split_start;
    int32_t *split_sum;
    uint32_t *split_mask;
    int seek_negative; /* look for a negative code (int8 codes, the unsigned rows' kernel at hand) */
    int negative;      /* one was found (atomic) */
} xquant_ctx;

/* Whether some code of rows [begin, end) (k int8 codes each, ld apart) is negative. */
static int rows_hold_negative(const uint8_t *xq, int64_t begin, int64_t end, int64_t k, int64_t ld) {
    for (int64_t r = begin; r < end; r++) {
        uint8_t bits = 0;
        for (int64_t i = 0; i < k; i++) bits |= xq[r * ld + i]; /* (vectorized) */
        if (bits & 0x80u) return 1;
    }
    return 0;
}

/* The list entries rows [begin, end) of c's codes would need, counted while they are in the cache. */
static void split_x_rows(const xquant_ctx *c, int64_t begin, int64_t end) {
    const int64_t words = mq_split_mask_words(c->a->kp);
    for (int64_t r = begin; r < end; r++)
        c->split_start[r + 1] = c->kt->act_split_count((const int8_t *)(c->xq + r * c->a->ldx), c->a->kp,
                                                       c->split_sum + r, c->split_mask + r * words);
}

/* Rows [begin, end) split (the call takes the split kernel). */
static void split_rows_range(void *vctx, int64_t begin, int64_t end) {
    const xquant_ctx *c = vctx;
    for (int64_t r = begin; r < end; r++)
        if (c->split_start[r + 1] > c->split_start[r])
            mq_act_split_row((int8_t *)(c->xq + r * c->a->ldx), c->a->kp,
                             c->split_mask + r * mq_split_mask_words(c->a->kp), c->split + c->split_start[r]);
}

/* Per-row symmetric int8 of the activations (torch's symmetric MinMax
 * formula with qmin = -127), or reduce_range's 7-bit codes, zero padded to
 * kp, in the qgemm's encoding: the level's act_rows, one call per block. */
static void quantize_x_range(void *vctx, int64_t begin, int64_t end) {
    xquant_ctx *c = vctx;
    const int64_t kp = c->a->kp, ldx = c->a->ldx;
    if (!c->x_is_q) {
        /* act_rows writes rows kp apart: one call for the block, or one per row when padded */
        const int64_t step = ldx == kp ? end - begin : 1;
        for (int64_t r = begin; r < end; r += step)
            c->kt->act_rows[c->kind](c->src + (size_t)r * c->row_bytes, c->row_bytes, step, c->k, kp, c->enc,
                                     c->xq + r * ldx, c->x_scale + r, c->x_zp ? c->x_zp + r : NULL,
                                     c->x_sum ? c->x_sum + r : NULL);
        if (c->seek_negative && !__atomic_load_n(&c->negative, __ATOMIC_RELAXED) &&
            rows_hold_negative(c->xq, begin, end, c->k, ldx))
            __atomic_store_n(&c->negative, 1, __ATOMIC_RELAXED);
        if (c->split_start) split_x_rows(c, begin, end);
        return;
    }
    for (int64_t r = begin; r < end; r++) { /* int8 input (tests): copied as is */
        uint8_t *q = c->xq + r * ldx;
        memcpy(q, c->src + (size_t)r * c->row_bytes, (size_t)c->k);
        c->x_scale[r] = 1.0f;
        memset(q + c->k, 0, (size_t)(kp - c->k));
        if (c->x_sum) {
            int32_t s = 0;
            for (int64_t i = 0; i < c->k; i++) s += (int8_t)q[i];
            c->x_sum[r] = s;
        }
        if (c->a->x_u8)
            for (int64_t i = 0; i < kp; i++) q[i] ^= 0x80u;
    }
    if (c->split_start) split_x_rows(c, begin, end);
}

int mq_split_rows_enabled = 1;
static int64_t split_rows_calls; /* calls that ran the split kernel (linear_kernels(), tests) */
int64_t mq_split_rows_calls(void) { return __atomic_load_n(&split_rows_calls, __ATOMIC_RELAXED); }
static int64_t unsigned_rows_calls; /* calls whose 8-bit codes ran the 7-bit kernel (all >= 0) */
int64_t mq_unsigned_rows_calls(void) { return __atomic_load_n(&unsigned_rows_calls, __ATOMIC_RELAXED); }

/* The split kernel takes a call of up to this many list entries in all, 1 / 12 of its rows'
 * K-groups (one row may hold more): an entry (both halves of a panel) costs about as much as 7
 * rows' K-groups of the main loop, which saves about a fifth of a K-group's time.  Zen 3, 1 thread,
 * split vs sign trick speed (entries as a share of the K-groups): Gaussian rows of 384 at 6.5%
 * 1.07-1.12x (n 384 / 1536), 768 at 5.0% 1.15x, 4096 at 1.7% 1.13-1.19x; 256 at 8.6% 1.01x, 128 at
 * 13.7% 0.96x; heavy-tailed rows (1-3%) 1.07-1.27x */
static int64_t split_budget(int64_t m, int64_t kp) { return m * (kp / 48); }

/* Work items of the int8 and weight-only GEMMs are (row block, panel) pairs,
 * flattened row block major; a chunk of items runs as one kernel call per
 * row block it touches: block(ctx, m0, rows, p0, p1) on rows [m0, m0 + rows)
 * and panels [p0, p1).  A GEMM's context starts with this walk. */
typedef struct {
    void (*block)(const void *ctx, int64_t m0, int64_t rows, int64_t p0, int64_t p1);
    int64_t m, panels, row_block;
} block_panel_walk;

static void block_panel_range(void *vctx, int64_t begin, int64_t end) {
    const block_panel_walk *w = vctx;
    while (begin < end) {
        const int64_t m0 = begin / w->panels * w->row_block, p0 = begin % w->panels;
        const int64_t p1 = p0 + (end - begin) < w->panels ? p0 + (end - begin) : w->panels;
        w->block(vctx, m0, w->m - m0 < w->row_block ? w->m - m0 : w->row_block, p0, p1);
        begin += p1 - p0;
    }
}

/* Every (row block, panel) item of w on up to nthreads threads, chunks of kp-deep panels
 * sized by panels_per_chunk (mac_cost: its weight of a multiply-add). */
static void run_block_panels(block_panel_walk *w, int64_t kp, int mac_cost, int nthreads) {
    const int64_t blocks = (w->m + w->row_block - 1) / w->row_block;
    mq_parallel_for(blocks * w->panels, panels_per_chunk(w->row_block, kp, mac_cost), nthreads, block_panel_range, w);
}

typedef struct {
    block_panel_walk walk; /* first: block_panel_range reads the context as its walk */
    mq_qgemm_fn fn;
    const mq_qgemm_args *a;
} qgemm_ctx;

static void qgemm_block(const void *vctx, int64_t m0, int64_t rows, int64_t p0, int64_t p1) {
    const qgemm_ctx *c = vctx;
    const mq_qgemm_args sub = mq_qgemm_rows(c->a, m0, rows);
    c->fn(&sub, p0, p1);
}

/* Threads over output panels (fn: the table's kernel; kernels that take
 * int8 activations, qgemm_x_u8 = 0, may assume none is -128, which the
 * dynamic quantizers never give: an int8 input holding one, tests only,
 * runs the reference); when there are too few panels to keep every
 * thread busy (a narrow layer or a conv group) and many rows, over row
 * blocks too (each thread then reads the whole, small, weight). */
static void run_qgemm(mq_qgemm_fn fn, const mq_qgemm_args *a, int nthreads, const mq_kernels *kt) {
    const int64_t panels = mq_round_up(a->n, MQ_PANEL) / MQ_PANEL;
    /* a kernel on row tiles (AMX: 16 rows, in blocks of 2) gets row blocks of whole blocks of
     * them, else the rows a block leaves run on its slower kernel; others whole 8-row tiles */
    const int tiled = fn == kt->qgemm && qgemm_tiled(kt, a->kp);
    const int64_t granule = tiled ? 2 * kt->qgemm_tile_rows : 8;
    int64_t row_block = a->m;
    if (nthreads > 1 && panels < 4 * nthreads && a->m >= 64)
        row_block = mq_round_up((a->m + 2 * nthreads - 1) / (2 * nthreads), granule);
    /* Many rows times a small weight (a conv's im2col): blocks of rows that
     * stay in L2 while every panel passes over them, instead of streaming
     * all the rows from memory once per panel (conv 64ch 56x56 batch 8: the
     * 14 MiB of rows read 4 times).  A weight too big for the caches is
     * still read once (batched linear layers).  40 rows: whole 5- and 8-row VNNI / AVX2 tiles. */
    const int64_t l2_granule = tiled ? granule : 40;
    const int64_t rows_in_l2 = ((int64_t)128 << 10) / a->kp / l2_granule * l2_granule;
    if (panels > 1 && panels * MQ_PANEL * a->kp <= ((int64_t)1 << 20) && rows_in_l2 >= l2_granule &&
        row_block > rows_in_l2)
        row_block = rows_in_l2;
    qgemm_ctx c = {{qgemm_block, a->m, panels, row_block}, fn, a};
    run_block_panels(&c.walk, a->kp, 1, nthreads);
}

/* Some int8 activation is -128 (rows of kp bytes, ld apart; the padding is not written). */
static int rows_hold_m128(const uint8_t *xq, int64_t m, int64_t kp, int64_t ld) {
    for (int64_t r = 0; r < m; r++)
        if (memchr(xq + r * ld, 0x80, (size_t)kp)) return 1;
    return 0;
}

int mq_linear_dynamic(const void *x, mq_src_t kind, int x_is_q, int64_t m, int64_t k, int64_t ldx,
                      const int8_t *packed, const int32_t *w_sum, const float *w_scale, const int32_t *w_zp,
                      int w_has_m128, const float *bias, int64_t n, float *y, int32_t *acc, int reduce_range,
                      int nthreads) {
    const mq_kernels *kt = mq_active();
    const int64_t kp = mq_round_up(k, MQ_KGROUP);
    if (m <= 0 || n <= 0) return 0;
    reduce_range = reduce_range && !x_is_q; /* (the bindings refuse the pair) */
    nthreads = threads_for_call(m, kp, n, nthreads, MQ_ONE_THREAD_MACS, kt);
    const int64_t ldq = mq_x_row_stride(kp);
    uint8_t *xq = aligned_alloc(64, mq_alloc_bytes(m, ldq, 64));
    float *x_scale = malloc((size_t)m * sizeof(float));
    int32_t *x_sum = w_zp ? malloc((size_t)m * sizeof(int32_t)) : NULL;
    int32_t *x_zp = reduce_range ? malloc((size_t)m * sizeof(int32_t)) : NULL;
    /* the level's split kernel (AVX2 without VNNI) on many rows of 8-bit codes, from 2^21
     * multiply-adds (below, its count and buffers outweighed the saving: 32 x 96 x 96 0.89x) */
    const int split_mode = __atomic_load_n(&mq_split_rows_enabled, __ATOMIC_RELAXED);
    const int split = split_mode && !reduce_range && kt->qgemm_split && !kt->qgemm_x_u8 &&
                      m >= kt->qgemm_split_min_m &&
                      (split_mode == 2 || (double)m * (double)kp * (double)n >= (double)(1 << 21));
    /* the split's counts and masks (its list is sized once counted); without the memory, the sign trick */
    int64_t *split_start = split ? malloc((size_t)(m + 1) * sizeof(int64_t)) : NULL;
    int32_t *split_sum = split ? malloc((size_t)m * sizeof(int32_t)) : NULL;
    uint32_t *split_mask = split ? malloc((size_t)m * (size_t)mq_split_mask_words(kp) * sizeof(uint32_t)) : NULL;
    mq_split_entry *entries = NULL;
    if (!split_start || !split_sum || !split_mask) {
        free(split_start);
        free(split_sum);
        free(split_mask);
        split_start = NULL;
        split_sum = NULL;
        split_mask = NULL;
    }
    int status = -1;
    if (!xq || !x_scale || (w_zp && !x_sum) || (reduce_range && !x_zp)) goto done;
    /* 7-bit activations: the level's own 7-bit kernel on the codes, or its qgemm on xq */
    const int u7 = reduce_range && kt->qgemm_u7;
    mq_qgemm_args a = {xq, u7 ? 0 : kt->qgemm_x_u8, x_scale, x_sum, m, kp, n, packed, w_sum, w_scale, w_zp,
                       w_has_m128, bias, acc ? NULL : y, acc, n, gemv_rows(nthreads), u7 ? x_zp : NULL, ldq,
                       NULL, NULL, NULL, NULL};
    const mq_x_encoding_t enc = u7 ? MQ_X_U7 : kt->qgemm_x_u8 ? MQ_X_INT8_PLUS_128 : MQ_X_INT8;
    /* 8-bit codes that are all >= 0 (post-ReLU rows) never saturate vpmaddubsw as its unsigned side
     * (two of them times the weight: 254 * 128 < 32767): the level's 7-bit kernel takes them as they
     * are, zero-points 0 (AVX2 without VNNI: no sign trick and no split; at the scalar level its
     * reference, as fast as the other), where the level has one and runs int8 codes (not VNNI's) */
    const int seek = split_mode && !reduce_range && !x_is_q && kt->qgemm_u7 && !kt->qgemm_x_u8;
    xquant_ctx xc = {x, (size_t)ldx * (x_is_q ? 1 : mq_src_size(kind)), kind, x_is_q, k, &a, x_sum, x_scale, xq, kt,
                     x_zp, enc, NULL, split_start, split_sum, split_mask, seek, 0};
    mq_parallel_for(m, (1 << 16) / (k + 1) + 1, nthreads, quantize_x_range, &xc);
    int32_t *zeros = seek && !xc.negative ? calloc((size_t)m, sizeof(int32_t)) : NULL;
    if (zeros) {
        a.x_zp = zeros;
        __atomic_add_fetch(&unsigned_rows_calls, 1, __ATOMIC_RELAXED);
        run_qgemm(kt->qgemm_u7, &a, nthreads, kt);
        free(zeros);
        status = 0;
        goto done;
    }
    int split_all = split_start != NULL;
    if (split_all) { /* the counts to starts; too many entries in all: the whole call on qgemm */
        split_start[0] = 0;
        for (int64_t r = 0; r < m; r++) split_start[r + 1] += split_start[r];
        split_all = split_mode == 2 || split_start[m] <= split_budget(m, kp);
    }
    if (split_all && split_start[m]) {
        entries = malloc((size_t)split_start[m] * sizeof(mq_split_entry));
        xc.split = entries;
        if (entries) mq_parallel_for(m, (1 << 16) / (k + 1) + 1, nthreads, split_rows_range, &xc);
        split_all = entries != NULL;
    }
    if (u7)
        run_qgemm(kt->qgemm_u7, &a, nthreads, kt);
    else if (split_all) {
        a.split = entries;
        a.split_start = split_start;
        a.split_sum = split_sum;
        __atomic_add_fetch(&split_rows_calls, 1, __ATOMIC_RELAXED);
        run_qgemm(kt->qgemm_split, &a, nthreads, kt);
    } else
        run_qgemm(x_is_q && !a.x_u8 && rows_hold_m128(xq, m, kp, ldq) ? mq_ref_qgemm : kt->qgemm, &a, nthreads, kt);
    status = 0;
done:
    free(xq);
    free(x_scale);
    free(x_sum);
    free(x_zp);
    free(entries);
    free(split_start);
    free(split_sum);
    free(split_mask);
    return status;
}

/* ---- dynamic int8 conv2d: per-image int8, int8 im2col, the same GEMM ---------- */

/* The image is quantized once, stored channels-last (NHWC) and already in
 * the kernel's activation encoding (int8, or int8 ^ 0x80 = int8 + 128 for
 * VNNI), so im2col is a memcpy of each tap's channel run, or a fill with
 * the encoding of 0 for the zero padding.  The conv's K order is therefore
 * (kh, kw, in_channel): pack_int8_linear packs 4-D weights in that order. */
typedef struct {
    const uint8_t *xq; /* [batch][height][width][channels], encoded */
    int64_t channels, height, width, kh, kw, sh, sw, ph, pw, dh, dw, out_h, out_w, cg, kp, k, group;
    const float *image_scale;
    float *x_scale;
    int32_t *x_sum;
    uint8_t zero; /* the encoding of 0 */
    uint8_t *rows; /* [batch*out_h*out_w][kp] */
    const int32_t *image_zp; /* 7-bit codes (reduce_range, MQ_X_U7): each image's zero-point, the encoding
                              * of its 0; NULL otherwise */
    int32_t *x_zp;           /* [rows] with image_zp */
} im2col_ctx;

static void im2col_range(void *vctx, int64_t begin, int64_t end) {
    const im2col_ctx *c = vctx;
    const int64_t pixels = c->out_h * c->out_w;
    for (int64_t r = begin; r < end; r++) {
        const int64_t b = r / pixels, oh = (r % pixels) / c->out_w, ow = r % c->out_w;
        const uint8_t zero = c->image_zp ? (uint8_t)c->image_zp[b] : c->zero;
        uint8_t *dst = c->rows + r * c->kp;
        const int64_t iw0 = ow * c->sw - c->pw;
        /* one group, dilation 1, the row of taps inside the image: the kw pixels' channels are one run */
        const int whole_row = c->cg == c->channels && c->dw == 1 && iw0 >= 0 && iw0 + c->kw <= c->width;
        for (int64_t i = 0; i < c->kh; i++) {
            const int64_t ih = oh * c->sh - c->ph + i * c->dh;
            if (whole_row && ih >= 0 && ih < c->height) {
                memcpy(dst, c->xq + ((b * c->height + ih) * c->width + iw0) * c->channels, (size_t)(c->kw * c->cg));
                dst += c->kw * c->cg;
                continue;
            }
            for (int64_t j = 0; j < c->kw; j++, dst += c->cg) {
                const int64_t iw = ow * c->sw - c->pw + j * c->dw;
                if (ih >= 0 && ih < c->height && iw >= 0 && iw < c->width)
                    memcpy(dst, c->xq + ((b * c->height + ih) * c->width + iw) * c->channels + c->group * c->cg,
                           (size_t)c->cg);
                else
                    memset(dst, zero, (size_t)c->cg);
            }
        }
        memset(dst, zero, (size_t)(c->kp - c->k));
        c->x_scale[r] = c->image_scale[b];
        if (c->image_zp) c->x_zp[r] = c->image_zp[b];
        if (c->x_sum) {
            const uint8_t *row = c->rows + r * c->kp;
            int32_t sum = 0;
            if (c->image_zp)
                for (int64_t i = 0; i < c->k; i++) sum += (int32_t)row[i] - zero;
            else
                for (int64_t i = 0; i < c->k; i++) sum += (int8_t)(row[i] ^ zero);
            c->x_sum[r] = sum;
        }
    }
}

typedef struct {
    const uint8_t *src;
    mq_src_t kind;
    int64_t channels, plane;
    float *scale;
    int8_t *scratch; /* [nthreads-free: one plane set per image] NCHW int8 */
    uint8_t *xq;     /* NHWC encoded */
    uint8_t zero;
    const mq_kernels *kt;
    int32_t *zp;         /* reduce_range: [batch] each image's zero-point (7-bit codes, act_u7.c), else NULL */
    mq_x_encoding_t enc; /* with zp */
} image_quant_ctx;

static void quantize_images(void *vctx, int64_t begin, int64_t end) {
    image_quant_ctx *c = vctx;
    const int64_t image = c->channels * c->plane;
    for (int64_t b = begin; b < end; b++) {
        const uint8_t *src = c->src + (size_t)(b * image) * mq_src_size(c->kind);
        int8_t *q = c->scratch + b * image;
        uint8_t *out = c->xq + b * image;
        float mn, mx, scale;
        int32_t zp;
        if (c->zp) c->zp[b] = 0;
        if (c->kt->minmax[c->kind](src, image, &mn, &mx)) {
            memset(out, c->zero, (size_t)image);
            c->scale[b] = NAN; /* NaN/Inf in the image: its outputs become NaN */
            continue;
        }
        uint8_t add = c->zero; /* int8 -> encoding: + 0, or + 128 (= ^ 0x80) for VNNI */
        if (c->zp) { /* 7-bit codes xu, encoded as xu, xu - zp or xu - zp + 128 */
            mq_choose_qparams(mn, mx, 0, 127, 0, &scale, &zp);
            c->kt->quantize[c->kind](src, image, 1.0f / scale, (float)zp, 0.0f, 127.0f, 0, (uint8_t *)q);
            c->zp[b] = zp;
            add = (uint8_t)mq_act_bias(1, zp, c->enc);
        } else {
            mq_choose_qparams(mn, mx, -127, 127, 1, &scale, &zp);
            c->kt->quantize[c->kind](src, image, 1.0f / scale, 0.0f, -127.0f, 127.0f, 0, (uint8_t *)q);
        }
        c->scale[b] = scale;
        /* NCHW -> NHWC in blocks of 64 pixels, so reads and writes both stay in cache lines */
        for (int64_t p0 = 0; p0 < c->plane; p0 += 64) {
            const int64_t p1 = p0 + 64 < c->plane ? p0 + 64 : c->plane;
            for (int64_t ch = 0; ch < c->channels; ch++) {
                const int8_t *in = q + ch * c->plane;
                for (int64_t p = p0; p < p1; p++) out[p * c->channels + ch] = (uint8_t)((uint8_t)in[p] + add);
            }
        }
    }
}

/* [image][pixel][channel] rows -> [image][channel][pixel], in 32 x 32 tiles (one image's
 * tiles per work item): the NCHW output written here, with the GIL released, instead of a
 * torch permute().contiguous() that waits on torch's thread team under load. */
typedef struct {
    const float *src;
    float *dst;
    int64_t pixels, n;
} nhwc_to_nchw_ctx;

static void nhwc_to_nchw_range(void *ctx, int64_t begin, int64_t end) {
    const nhwc_to_nchw_ctx *c = ctx;
    const int64_t tiles_p = (c->pixels + 31) / 32;
    for (int64_t t = begin; t < end; t++) {
        const int64_t image = t / tiles_p, p0 = t % tiles_p * 32;
        const int64_t p1 = p0 + 32 < c->pixels ? p0 + 32 : c->pixels;
        const float *src = c->src + image * c->pixels * c->n;
        float *dst = c->dst + image * c->pixels * c->n;
        for (int64_t c0 = 0; c0 < c->n; c0 += 32) {
            const int64_t c1 = c0 + 32 < c->n ? c0 + 32 : c->n;
            for (int64_t ch = c0; ch < c1; ch++)
                for (int64_t p = p0; p < p1; p++) dst[ch * c->pixels + p] = src[p * c->n + ch];
        }
    }
}

int mq_conv2d_dynamic(const void *x, mq_src_t kind, int64_t batch, int64_t channels, int64_t height, int64_t width,
                      int64_t kh, int64_t kw, int64_t sh, int64_t sw, int64_t ph, int64_t pw, int64_t dh, int64_t dw,
                      int64_t groups, const int8_t *packed, const int32_t *w_sum, const float *w_scale,
                      const int32_t *w_zp, int w_has_m128, const float *bias, int64_t n, float *y, int nchw,
                      int reduce_range, int nthreads) {
    const int64_t profile_t0 = mq_conv_profile_start();
    /* the direct conv kernel, one region per call, where it applies (conv_dynamic_direct.c) */
    const int taken = mq_conv2d_dynamic_direct(x, kind, batch, channels, height, width, kh, kw, sh, sw, ph, pw, dh,
                                               dw, groups, packed, w_sum, w_scale, w_zp, bias, n, y, nchw,
                                               reduce_range, nthreads);
    mq_conv_profile_count_call(taken != 0);
    if (taken) {
        mq_conv_profile_stop(MQ_CONV_WALL_TOTAL, profile_t0);
        return taken < 0 ? -1 : 0;
    }
    const mq_kernels *kt = mq_active();
    const int u7 = reduce_range && kt->qgemm_u7; /* as mq_linear_dynamic */
    const mq_x_encoding_t enc = u7 ? MQ_X_U7 : kt->qgemm_x_u8 ? MQ_X_INT8_PLUS_128 : MQ_X_INT8;
    const int64_t out_h = mq_conv_out(height, kh, sh, ph, dh);
    const int64_t out_w = mq_conv_out(width, kw, sw, pw, dw);
    const int64_t cg = channels / groups, k = cg * kh * kw, kp = mq_round_up(k, MQ_KGROUP);
    /* m can only pass 64 bits on arguments the bindings (bind_linear.c) reject; -1 then fails the
     * allocations below */
    const int64_t n_g = n / groups, np_g = mq_round_up(n_g, MQ_PANEL);
    const int64_t m = mq_size_mul(mq_size_mul(batch, out_h), out_w);
    const int64_t image = channels * height * width;
    const uint8_t zero = !u7 && kt->qgemm_x_u8 ? 0x80u : 0u; /* the encoding of xq = 0 (u7: per image) */
    /* 1x1, stride 1, no padding, one group, k a multiple of 4: the NHWC image is the rows */
    const int direct = kh == 1 && kw == 1 && sh == 1 && sw == 1 && ph == 0 && pw == 0 && groups == 1 && kp == k;
    if (m == 0 || n <= 0) return 0;
    int8_t *scratch = malloc(mq_alloc_bytes(batch, image, 1));
    uint8_t *xq = aligned_alloc(64, mq_alloc_bytes(batch, image, 64));
    float *image_scale = malloc(mq_alloc_bytes(batch, sizeof(float), 1));
    uint8_t *rows = direct ? xq : aligned_alloc(64, mq_alloc_bytes(m, kp, 64));
    float *x_scale = malloc(mq_alloc_bytes(m, sizeof(float), 1));
    int32_t *x_sum = w_zp ? malloc(mq_alloc_bytes(m, sizeof(int32_t), 1)) : NULL;
    float *y_rows = nchw ? malloc(mq_alloc_bytes(m, n * (int64_t)sizeof(float), 1)) : y; /* NHWC, then transposed */
    int32_t *image_zp = reduce_range ? malloc(mq_alloc_bytes(batch, sizeof(int32_t), 1)) : NULL;
    int32_t *x_zp = u7 ? malloc(mq_alloc_bytes(m, sizeof(int32_t), 1)) : NULL;
    int status = -1;
    if (!scratch || !xq || !image_scale || !rows || !x_scale || (w_zp && !x_sum) || !y_rows) goto done;
    if ((reduce_range && !image_zp) || (u7 && !x_zp)) goto done;
    image_quant_ctx qc = {x, kind, channels, height * width, image_scale, scratch, xq, zero, kt, image_zp, enc};
    int64_t profile_t = mq_conv_profile_start();
    mq_parallel_for(batch, 1, nthreads, quantize_images, &qc);
    mq_conv_profile_stop(MQ_CONV_WALL_QUANTIZE, profile_t);
    for (int64_t g = 0; g < groups; g++) {
        im2col_ctx ic = {xq, channels, height, width, kh, kw, sh, sw, ph, pw, dh, dw, out_h, out_w, cg, kp, k,
                         g, image_scale, x_scale, x_sum, zero, rows, u7 ? image_zp : NULL, x_zp};
        if (direct) {
            const int64_t pixels = out_h * out_w;
            for (int64_t r = 0; r < m; r++) x_scale[r] = image_scale[r / pixels];
            if (u7)
                for (int64_t r = 0; r < m; r++) x_zp[r] = image_zp[r / pixels];
            if (x_sum)
                for (int64_t r = 0; r < m; r++) {
                    int32_t sum = 0;
                    if (u7)
                        for (int64_t i = 0; i < k; i++) sum += (int32_t)rows[r * kp + i] - x_zp[r];
                    else
                        for (int64_t i = 0; i < k; i++) sum += (int8_t)(rows[r * kp + i] ^ zero);
                    x_sum[r] = sum;
                }
        } else {
            profile_t = mq_conv_profile_start();
            mq_parallel_for(m, (1 << 16) / (kp + 1) + 1, nthreads, im2col_range, &ic);
            mq_conv_profile_stop(MQ_CONV_WALL_IM2COL, profile_t);
        }
        mq_qgemm_args a = {rows, u7 ? 0 : kt->qgemm_x_u8, x_scale, x_sum, m, kp, n_g, packed + g * np_g * kp,
                           w_sum + g * np_g, w_scale + g * n_g, w_zp ? w_zp + g * n_g : NULL, w_has_m128,
                           bias ? bias + g * n_g : NULL, y_rows + g * n_g, NULL, n, gemv_rows(nthreads), x_zp, kp,
                           NULL, NULL, NULL, NULL};
        profile_t = mq_conv_profile_start();
        run_qgemm(u7 ? kt->qgemm_u7 : kt->qgemm, &a, nthreads, kt);
        mq_conv_profile_stop(MQ_CONV_WALL_GEMM, profile_t);
    }
    if (nchw) {
        const int64_t pixels = out_h * out_w;
        nhwc_to_nchw_ctx tc = {y_rows, y, pixels, n};
        profile_t = mq_conv_profile_start();
        mq_parallel_for(batch * ((pixels + 31) / 32), 1 + ((int64_t)1 << 16) / (32 * n), nthreads,
                        nhwc_to_nchw_range, &tc);
        mq_conv_profile_stop(MQ_CONV_WALL_NCHW, profile_t);
    }
    status = 0;
    mq_conv_profile_stop(MQ_CONV_WALL_TOTAL, profile_t0);
done:
    if (nchw) free(y_rows);
    free(scratch);
    free(xq);
    free(image_scale);
    if (!direct) free(rows);
    free(x_scale);
    free(x_sum);
    free(image_zp);
    free(x_zp);
    return status;
}

/* ---- weight-only ------------------------------------------------------------- */

/* Work items are (row block, panel) pairs, as run_qgemm's (block_panel_walk):
 * a narrow layer (a few panels: a classifier head at many rows) is cut over
 * rows too.  Every tile sums a row's products in the same order whatever
 * rows it shares a call with, so the cut never changes a result. */
typedef struct {
    block_panel_walk walk; /* first: block_panel_range reads the context as its walk */
    mq_wgemm_fn fn;
    const mq_wgemm_args *a;
} wgemm_ctx;

static void wgemm_block(const void *vctx, int64_t m0, int64_t rows, int64_t p0, int64_t p1) {
    const wgemm_ctx *c = vctx;
    mq_wgemm_args sub = *c->a;
    sub.m = rows;
    sub.x += m0 * sub.kp;
    sub.y += m0 * sub.n;
    c->fn(&sub, p0, p1);
}

/* fp32 rows padded to kp, as the kernels read them (f16 / bf16 input, a
 * strided one or k not a multiple of 4), over rows. */
typedef struct {
    const void *x;
    mq_src_t kind;
    int64_t k, kp, ldx;
    float *dst;
} wo_rows_ctx;

static void wo_rows_range(void *vctx, int64_t begin, int64_t end) {
    const wo_rows_ctx *c = vctx;
    for (int64_t r = begin; r < end; r++)
        mq_row_to_f32((const uint8_t *)c->x + (size_t)(r * c->ldx) * mq_src_size(c->kind), c->kind, c->k, c->kp,
                      c->dst + r * c->kp);
}

int mq_linear_weight_only(const void *x, mq_src_t kind, int64_t m, int64_t k, int64_t ldx, const int8_t *packed,
                          const float *w_scale, const int32_t *w_zp, const float *bias, int64_t n, float *y,
                          int nthreads) {
    const mq_kernels *kt = mq_active();
    const int64_t kp = mq_round_up(k, MQ_KGROUP), panels = mq_round_up(n, MQ_PANEL) / MQ_PANEL;
    if (m <= 0 || n <= 0) return 0;
    nthreads = threads_for_call(m + MQ_WO_CONVERT_ROWS, kp, n, nthreads, MQ_WO_SPLIT_MACS, NULL);
    const float *xf = x;
    float *buffer = NULL;
    if (kind != MQ_SRC_F32 || kp != k || ldx != k) {
        buffer = aligned_alloc(64, mq_alloc_bytes(mq_size_mul(m, kp), sizeof(float), 64));
        if (!buffer) return -1;
        wo_rows_ctx rc = {x, kind, k, kp, ldx, buffer};
        mq_parallel_for(m, (1 << 16) / (kp + 1) + 1, nthreads, wo_rows_range, &rc);
        xf = buffer;
    }
    /* a few panels (fewer than 4 a thread) and many rows: row blocks too, about two a thread */
    int64_t row_block = m;
    if (nthreads > 1 && panels < 4 * nthreads && m >= 64)
        row_block = mq_round_up((m + 2 * nthreads - 1) / (2 * nthreads), 8);
    mq_wgemm_args a = {xf, m, kp, n, packed, w_scale, w_zp, bias, y};
    wgemm_ctx wc = {{wgemm_block, m, panels, row_block}, kt->wgemm, &a};
    run_block_panels(&wc.walk, kp, MQ_WO_MAC_COST, nthreads);
    free(buffer);
    return 0;
}
