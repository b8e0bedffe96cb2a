/* embedding.c - quantized embedding tables (int8 or uint8 codes, a scale and a zero-point per row or
 * one for the table; or int4 rows, group-wise, as int4 weights are stored): a lookup's rows
 * dequantized, and an embedding bag's sums / means / maxima of its rows read straight from the codes.
 *
 * A row's value is ((float)q - (float)zp) * scale, as the dequantized table holds it; a bag
 * adds its rows in order (a per-sample weight's product fused into the add: fmaf, as torch's
 * kernel does it, bit for bit), a mean divides the
 * sum by the count, a maximum starts from the first row: the sequence of float operations
 * torch's F.embedding_bag applies to the dequantized table.  The rows are random reads of a large
 * table, so the time is their memory latency, which prefetching the rows of the ids a few places
 * ahead hides, and a quarter of a float table's bytes to read.  The row loops are the level's
 * (emb_rows: this file's scalar reference, x86/avx2/embedding.c). */
#include <string.h>

#include "embedding_rows.h"
#include "mq.h"

/* acc [dim] (step) row id's values, 8-bit codes of type T: one loop per step, each with its step
 * folded (the loops the reference had before mq_emb_step) */
#define ROW_LOOP(STEP) for (int64_t k = 0; k < dim; k++) acc[k] = mq_emb_step(STEP, ((float)r[k] - z) * s, w, acc[k])
#define ROW_STEP(T)                                                                                     \
    do {                                                                                                \
        const T *restrict r = (const T *)t->q + id * dim;                                               \
        switch (step) {                                                                                 \
        case MQ_EMB_SET: ROW_LOOP(MQ_EMB_SET); break;                                                   \
        case MQ_EMB_ADD: ROW_LOOP(MQ_EMB_ADD); break;                                                   \
        case MQ_EMB_ADD_WEIGHTED: ROW_LOOP(MQ_EMB_ADD_WEIGHTED); break;                                 \
        default: ROW_LOOP(MQ_EMB_MAX);                                                                  \
        }                                                                                               \
    } while (0)

int64_t mq_ref_emb_rows(const mq_emb_table *t, const int64_t *ids, int64_t first, int64_t last, int64_t count,
                        const float *psw, int op, int64_t padding_idx, float *acc, int64_t acc_step) {
    const int64_t dim = t->dim;
    int64_t n = 0;
    for (int64_t j = first; j < last; j++) {
        if (j + MQ_EMB_PREFETCH_AHEAD < count) mq_emb_prefetch_row(t, ids[j + MQ_EMB_PREFETCH_AHEAD]);
        const int64_t id = ids[j];
        if (id == padding_idx) continue;
        const int step = op == MQ_EMB_MAX && n == 0 ? MQ_EMB_SET : op;
        const float w = psw ? psw[j] : 1.0f;
        if (t->group > 0) { /* int4: a 32-column block's values at a time */
            float v[MQ_Q4_BLOCK];
            for (int64_t b = 0; b < dim; b += MQ_Q4_BLOCK) {
                mq_emb_q4_block(t, id, b, v);
                const int64_t cols = dim - b < MQ_Q4_BLOCK ? dim - b : MQ_Q4_BLOCK;
                for (int64_t k = 0; k < cols; k++) acc[b + k] = mq_emb_step(step, v[k], w, acc[b + k]);
            }
            n++;
            acc += acc_step;
            continue;
        }
        const float s = mq_emb_scale(t, id), z = mq_emb_zero(t, id);
        if (t->is_signed)
            ROW_STEP(int8_t);
        else
            ROW_STEP(uint8_t);
        n++;
        acc += acc_step;
    }
    return n;
}
#undef ROW_STEP
#undef ROW_LOOP

int64_t mq_embedding_bad_id(const int64_t *ids, int64_t count, int64_t num) {
    for (int64_t j = 0; j < count; j++)
        if (ids[j] < 0 || ids[j] >= num) return j;
    return -1;
}

int64_t mq_embedding_bad_offset(const int64_t *offsets, int64_t noffsets, int64_t count) {
    if (noffsets > 0 && offsets[0] != 0) return 0;
    for (int64_t b = 0; b < noffsets; b++)
        if (offsets[b] < 0 || offsets[b] > count || (b > 0 && offsets[b] < offsets[b - 1])) return b;
    return -1;
}

void mq_ref_emb_bags(const mq_emb_bags_args *a, int64_t b0, int64_t b1) {
    mq_emb_bags_on_rows(a, b0, b1, mq_ref_emb_rows);
}

static void rows_range(void *vctx, int64_t begin, int64_t end) {
    const mq_emb_bags_args *c = vctx;
    mq_active()->emb_rows(c->t, c->ids, begin, end, c->count, NULL, MQ_EMB_SET, -1, c->out + begin * c->t->dim,
                          c->t->dim);
}

static void bags_range(void *vctx, int64_t begin, int64_t end) { mq_active()->emb_bags(vctx, begin, end); }

/* items of at least ~32 KiB of rows per thread's chunk */
static int64_t min_chunk(int64_t per_item) { return ((int64_t)1 << 15) / (per_item > 0 ? per_item : 1) + 1; }

void mq_embedding_rows(const mq_emb_table *t, const int64_t *ids, int64_t count, float *out, int nthreads) {
    mq_emb_bags_args c = {t, ids, NULL, count, 0, NULL, 0, -1, out};
    mq_parallel_for(count, min_chunk(t->dim), nthreads, rows_range, &c);
}

void mq_embedding_bag(const mq_emb_table *t, const int64_t *ids, int64_t count, const int64_t *offsets,
                      int64_t noffsets, int64_t bags, const float *psw, int mode, int64_t padding_idx, float *out,
                      int nthreads) {
    mq_emb_bags_args c = {t, ids, offsets, count, noffsets, psw, mode, padding_idx, out};
    const int64_t per_bag = bags > 0 ? (count / bags + 1) * t->dim : t->dim;
    mq_parallel_for(bags, min_chunk(per_bag), nthreads, bags_range, &c);
}
