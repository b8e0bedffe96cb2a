/* embedding_rows.h - what the levels' embedding row loops share (embedding.c, x86/avx2/embedding.c):
 * a row's scale and zero-point, and the prefetch of the rows a few ids ahead.  Header-only
 * (static inline): no code of an ISA unit is called from elsewhere. */
#ifndef MQ_EMBEDDING_ROWS_H
#define MQ_EMBEDDING_ROWS_H

#include "mq.h"

/* ids this many places ahead have their rows prefetched (across bags: they run in order) */
#define MQ_EMB_PREFETCH_AHEAD 16

static inline float mq_emb_scale(const mq_emb_table *t, int64_t id) { return t->scale[t->per_row ? id : 0]; }
static inline float mq_emb_zero(const mq_emb_table *t, int64_t id) {
    return t->zp ? (float)t->zp[t->per_row ? id : 0] : 0.0f;
}

/* a row's codes, and its scale and zero-point: two more random reads of a large table (4 MiB each
 * at a million rows) */
static inline void mq_emb_prefetch_row(const mq_emb_table *t, int64_t id) {
    /* every line the row touches: a table need not start on a line (NumPy's arrays are 16-byte
     * aligned), and a row's second line missed (1.0 ms against 0.6 for a bag of 40 k ids) */
    const uintptr_t row = (uintptr_t)((const char *)t->q + id * t->dim), end = row + (uintptr_t)t->dim;
    for (uintptr_t line = row & ~(uintptr_t)63; line < end; line += 64) __builtin_prefetch((const void *)line);
    if (t->per_row) {
        __builtin_prefetch(t->scale + id);
        if (t->zp) __builtin_prefetch(t->zp + id);
    }
}

#endif /* MQ_EMBEDDING_ROWS_H */
