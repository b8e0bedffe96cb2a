/* embedding_rows.h - what the levels' embedding row loops share (embedding.c, x86/avx2/embedding.c):
 * a row's scale and zero-point, an int4 group's, one value's step, and the prefetch of the rows a
 * few ids ahead.  Header-only
 * (static inline): no code of an ISA unit is called from elsewhere. */
#ifndef MQ_EMBEDDING_ROWS_H
#define MQ_EMBEDDING_ROWS_H

#include <math.h>
#include <string.h>

#include "mq.h"

/* ids this many places ahead have their rows prefetched (across bags: they run in order) */
#define MQ_EMB_PREFETCH_AHEAD 16

static inline float mq_emb_scale(const mq_emb_table *t, int64_t id) { return t->scale[t->per_row ? id : 0]; }
static inline float mq_emb_zero(const mq_emb_table *t, int64_t id) {
    return t->zp ? (float)t->zp[t->per_row ? id : 0] : 0.0f;
}

/* One value's step (mq.h mq_emb_rows_fn's op): the new accumulator from a row's value v, the
 * per-sample weight w and the accumulator a; every level's scalar code takes it. */
static inline float mq_emb_step(int step, float v, float w, float a) {
    return step == MQ_EMB_SET ? v : step == MQ_EMB_ADD ? a + v : step == MQ_EMB_ADD_WEIGHTED ? fmaf(v, w, a)
                                                                                             : v > a ? v : a;
}

static inline int64_t mq_emb_q4_groups(const mq_emb_table *t) { return (t->kpad + t->group - 1) / t->group; }

/* The scale and zero-point of an int4 row's group holding column b. */
static inline void mq_emb_q4_group(const mq_emb_table *t, int64_t id, int64_t b, float *s, float *z) {
    const int64_t at = id * mq_emb_q4_groups(t) + b / t->group;
    *s = mq_f16_to_f32(t->scale16[at]);
    *z = (float)t->zero8[at] / 16.0f;
}

/* An int4 row's 32-column block at column b (b % 32 == 0): its values, ((float)code - zero) * scale,
 * into v[0..32) (the padded columns past dim too: the row holds kpad). */
static inline void mq_emb_q4_block(const mq_emb_table *t, int64_t id, int64_t b, float *v) {
    const uint8_t *bytes = (const uint8_t *)t->q + id * (t->kpad / 2) + b / 2;
    float s, z;
    mq_emb_q4_group(t, id, b, &s, &z);
    for (int j = 0; j < 16; j++) {
        v[j] = ((float)(bytes[j] & 15) - z) * s;
        v[j + 16] = ((float)(bytes[j] >> 4) - z) * s;
    }
}

/* a row's codes, and its scale and zero-point: two more random reads of a large table (4 MiB each
 * at a million rows) */
static inline void mq_emb_prefetch_row(const mq_emb_table *t, int64_t id) {
    if (t->group > 0) { /* int4: the packed row, its groups' scales and zero-points */
        const int64_t ngroups = mq_emb_q4_groups(t);
        const uintptr_t row = (uintptr_t)((const char *)t->q + id * (t->kpad / 2)), end = row + (uintptr_t)(t->kpad / 2);
        for (uintptr_t line = row & ~(uintptr_t)63; line < end; line += 64) __builtin_prefetch((const void *)line);
        __builtin_prefetch(t->scale16 + id * ngroups);
        __builtin_prefetch(t->zero8 + id * ngroups);
        return;
    }
    /* every line the row touches: a table need not start on a line (NumPy's arrays are 16-byte
     * aligned), and a row's second line missed (1.0 ms against 0.6 for a bag of 40 k ids) */
    const uintptr_t row = (uintptr_t)((const char *)t->q + id * t->dim), end = row + (uintptr_t)t->dim;
    for (uintptr_t line = row & ~(uintptr_t)63; line < end; line += 64) __builtin_prefetch((const void *)line);
    if (t->per_row) {
        __builtin_prefetch(t->scale + id);
        if (t->zp) __builtin_prefetch(t->zp + id);
    }
}

/* A bag's row step (mq_emb_rows_fn's op) for its mode: max, a weighted sum, or a sum (mean too) */
static inline int mq_emb_bag_op(const mq_emb_bags_args *c) {
    return c->mode == MQ_EMB_BAG_MAX ? MQ_EMB_MAX : c->psw ? MQ_EMB_ADD_WEIGHTED : MQ_EMB_ADD;
}

/* One past bag b's last id: the next bag's start, or the end of the ids for the last bag */
static inline int64_t mq_emb_bag_end(const mq_emb_bags_args *c, int64_t b) {
    return b + 1 < c->noffsets ? c->offsets[b + 1] : c->count;
}

/* Bags [b0, b1) of a (mq_emb_bags_fn), each through the row loop `rows` (a level's emb_rows): the
 * reference's bag loop, and the AVX2 level's for the tables its own loop does not take. */
static inline void mq_emb_bags_on_rows(const mq_emb_bags_args *c, int64_t b0, int64_t b1, mq_emb_rows_fn rows) {
    const int64_t dim = c->t->dim;
    const int op = mq_emb_bag_op(c);
    for (int64_t b = b0; b < b1; b++) {
        const int64_t first = c->offsets[b], last = mq_emb_bag_end(c, b);
        float *acc = c->out + b * dim;
        memset(acc, 0, (size_t)dim * sizeof(float));
        const int64_t n = rows(c->t, c->ids, first, last, c->count, c->psw, op, c->padding_idx, acc, 0);
        if (c->mode == MQ_EMB_BAG_MEAN && n > 0)
            for (int64_t k = 0; k < dim; k++) acc[k] = acc[k] / (float)n;
    }
}

#endif /* MQ_EMBEDDING_ROWS_H */
