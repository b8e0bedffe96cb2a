/* x86/avx2/embedding.c - AVX2 twins of mq_ref_emb_bag / mq_ref_emb_rows (embedding.c): rows of an
 * 8-bit embedding table, 8 codes a step widened to int32 and converted, their values
 * ((float)q - zp) * scale added into (a weight's product fused into the add, as the reference's
 * fmaf), kept as, or compared with the accumulator: the same bits at every level.  The loops run per bag with the row step's kind fixed (a call per row cost twice the
 * table's memory time on a million-row table). */
#include "mq.h"

#if defined(__x86_64__) && defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#include <math.h>

#include "embedding_rows.h"

/* acc [dim] (op) row id's values: the reference's step, 8 at a time, the tail in scalar */
#define ROW_LOOP(T, WIDEN, OP_VEC, OP_SCALAR)                                                          \
    do {                                                                                                \
        const T *r = (const T *)t->q + id * dim;                                                        \
        int64_t k = 0;                                                                                  \
        for (; k + 8 <= dim; k += 8) {                                                                  \
            const __m256 v = _mm256_mul_ps(                                                             \
                _mm256_sub_ps(_mm256_cvtepi32_ps(WIDEN(_mm_loadl_epi64((const __m128i *)(r + k)))), zv), sv); \
            float *a = acc + k;                                                                         \
            OP_VEC;                                                                                     \
        }                                                                                               \
        for (; k < dim; k++) {                                                                          \
            const float v = ((float)r[k] - z) * s;                                                      \
            float *a = acc + k;                                                                         \
            OP_SCALAR;                                                                                  \
        }                                                                                               \
    } while (0)

#define SET_V _mm256_storeu_ps(a, v)
#define SET_S *a = v
#define ADD_V _mm256_storeu_ps(a, _mm256_add_ps(_mm256_loadu_ps(a), v))
#define ADD_S *a = *a + v
#define ADDW_V _mm256_storeu_ps(a, _mm256_fmadd_ps(v, wv, _mm256_loadu_ps(a)))
#define ADDW_S *a = fmaf(v, w, *a)
#define MAX_V _mm256_storeu_ps(a, _mm256_max_ps(v, _mm256_loadu_ps(a))) /* v > a ? v : a */
#define MAX_S *a = v > *a ? v : *a

/* One row step for ids [first, last) of a bag (or of a lookup, each row to its own acc). */
#define ROWS_FOR(T, WIDEN)                                                                              \
    static int64_t rows_##T(const mq_emb_table *t, const int64_t *ids, int64_t first, int64_t last,    \
                            int64_t count, const float *psw, int op, int64_t padding_idx, float *acc,  \
                            int64_t acc_step) {                                                         \
        const int64_t dim = t->dim;                                                                     \
        int64_t n = 0;                                                                                  \
        for (int64_t j = first; j < last; j++) {                                                        \
            if (j + MQ_EMB_PREFETCH_AHEAD < count) mq_emb_prefetch_row(t, ids[j + MQ_EMB_PREFETCH_AHEAD]); \
            const int64_t id = ids[j];                                                                  \
            if (id == padding_idx) continue;                                                            \
            const float s = mq_emb_scale(t, id), z = mq_emb_zero(t, id), w = psw ? psw[j] : 1.0f;      \
            const __m256 sv = _mm256_set1_ps(s), zv = _mm256_set1_ps(z), wv = _mm256_set1_ps(w);       \
            (void)wv;                                                                                   \
            const int step = op == MQ_EMB_MAX && n == 0 ? MQ_EMB_SET : op;                              \
            if (step == MQ_EMB_SET)                                                                     \
                ROW_LOOP(T, WIDEN, SET_V, SET_S);                                                       \
            else if (step == MQ_EMB_ADD)                                                                \
                ROW_LOOP(T, WIDEN, ADD_V, ADD_S);                                                       \
            else if (step == MQ_EMB_ADD_WEIGHTED)                                                       \
                ROW_LOOP(T, WIDEN, ADDW_V, ADDW_S);                                                     \
            else                                                                                        \
                ROW_LOOP(T, WIDEN, MAX_V, MAX_S);                                                       \
            n++;                                                                                        \
            acc += acc_step;                                                                            \
        }                                                                                               \
        return n;                                                                                       \
    }
ROWS_FOR(int8_t, _mm256_cvtepi8_epi32)
ROWS_FOR(uint8_t, _mm256_cvtepu8_epi32)

static int64_t emb_rows(const mq_emb_table *t, const int64_t *ids, int64_t first, int64_t last, int64_t count,
                        const float *psw, int op, int64_t padding_idx, float *acc, int64_t acc_step) {
    return t->is_signed ? rows_int8_t(t, ids, first, last, count, psw, op, padding_idx, acc, acc_step)
                        : rows_uint8_t(t, ids, first, last, count, psw, op, padding_idx, acc, acc_step);
}

const mq_kernels mq_avx2_embedding_table = {
    .emb_rows = emb_rows,
};

#else
const mq_kernels mq_avx2_embedding_table = {.name = NULL};
#endif
