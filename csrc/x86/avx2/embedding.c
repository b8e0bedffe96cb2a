/* x86/avx2/embedding.c - AVX2 twin of mq_ref_emb_rows (embedding.c): rows of a quantized embedding
 * table (8 codes a step widened to int32 and converted; int4: 32 columns a block), their values
 * ((float)q - zp) * scale added into (a weight's product fused into the add, as the reference's
 * fmaf), kept as, or compared with the accumulator: the same bits at every level.  The loops run
 * per bag with the row step's kind fixed (a call per row cost twice the table's memory time on a
 * million-row table). */
#include "mq.h"

#if defined(__x86_64__) && defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>

#include "embedding_rows.h"

/* acc [dim] (step) row id's values: 8 at a time, the tail through the reference's step */
#define ROW_LOOP(T, WIDEN, OP_VEC)                                                                     \
    do {                                                                                                \
        const T *r = (const T *)t->q + id * dim;                                                        \
        int64_t k = 0;                                                                                  \
        for (; k + 8 <= dim; k += 8) {                                                                  \
            const __m256 v = _mm256_mul_ps(                                                             \
                _mm256_sub_ps(_mm256_cvtepi32_ps(WIDEN(_mm_loadl_epi64((const __m128i *)(r + k)))), zv), sv); \
            float *a = acc + k;                                                                         \
            OP_VEC;                                                                                     \
        }                                                                                               \
        for (; k < dim; k++) acc[k] = mq_emb_step(step, ((float)r[k] - z) * s, w, acc[k]);            \
    } while (0)

#define SET_V _mm256_storeu_ps(a, v)
#define ADD_V _mm256_storeu_ps(a, _mm256_add_ps(_mm256_loadu_ps(a), v))
#define ADDW_V _mm256_storeu_ps(a, _mm256_fmadd_ps(v, wv, _mm256_loadu_ps(a)))
#define MAX_V _mm256_storeu_ps(a, _mm256_max_ps(v, _mm256_loadu_ps(a))) /* v > a ? v : a */

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
                ROW_LOOP(T, WIDEN, SET_V);                                                       \
            else if (step == MQ_EMB_ADD)                                                                \
                ROW_LOOP(T, WIDEN, ADD_V);                                                       \
            else if (step == MQ_EMB_ADD_WEIGHTED)                                                       \
                ROW_LOOP(T, WIDEN, ADDW_V);                                                     \
            else                                                                                        \
                ROW_LOOP(T, WIDEN, MAX_V);                                                       \
            n++;                                                                                        \
            acc += acc_step;                                                                            \
        }                                                                                               \
        return n;                                                                                       \
    }
ROWS_FOR(int8_t, _mm256_cvtepi8_epi32)
ROWS_FOR(uint8_t, _mm256_cvtepu8_epi32)

#define MQ_INLINE static inline __attribute__((always_inline))

/* A bag's rows [first, last) over columns [c0, c0 + 8 NV) with the NV accumulators in registers
 * (the row loop above stores and reloads them for every row: an in-cache table of 64 columns ran at
 * 0.8x fp32's speed), from 0 (as the reference's cleared accumulator): the same operations per value
 * in the same order, so the same bits; a mean divided, the bag's columns stored into o.  The pass
 * over columns 0.. prefetches.  Returns the rows taken. */
#define BAG_PASS(T, WIDEN, NV)                                                                          \
    MQ_INLINE int64_t pass_##T##_##NV(const mq_emb_bags_args *c, int64_t first, int64_t last, int op, float *o, \
                                      int64_t c0, const int has_zp) {                                    \
        const mq_emb_table *t = c->t;                                                                   \
        __m256 a[NV];                                                                                   \
        for (int v = 0; v < NV; v++) a[v] = _mm256_setzero_ps();                                         \
        int64_t n = 0;                                                                                  \
        for (int64_t j = first; j < last; j++) {                                                        \
            const int64_t id = bag_row_id(c, j, c0);                                                    \
            if (id < 0) continue;                                                                       \
            const T *r = (const T *)t->q + id * t->dim + c0;                                            \
            const __m256 sv = _mm256_set1_ps(mq_emb_scale(t, id));                                      \
            const __m256 zv = has_zp ? _mm256_set1_ps(mq_emb_zero(t, id)) : _mm256_setzero_ps();        \
            const __m256 wv = _mm256_set1_ps(c->psw ? c->psw[j] : 1.0f);                                \
            for (int v = 0; v < NV; v++) {                                                              \
                __m256 x = _mm256_cvtepi32_ps(WIDEN(_mm_loadl_epi64((const __m128i *)(r + 8 * v))));    \
                if (has_zp) x = _mm256_sub_ps(x, zv); /* (without: q - 0 is q, exactly) */              \
                x = _mm256_mul_ps(x, sv);                                                               \
                a[v] = bag_step(op, n, x, wv, a[v]);                                                    \
            }                                                                                           \
            n++;                                                                                        \
        }                                                                                               \
        bag_store(c->mode, n, a, NV, o + c0);                                                           \
        return n;                                                                                       \
    }

/* Row j's id in a bag's pass (-1: the padding id, left out); the pass over columns 0.. prefetches the
 * rows MQ_EMB_PREFETCH_AHEAD ids on */
MQ_INLINE int64_t bag_row_id(const mq_emb_bags_args *c, int64_t j, int64_t c0) {
    if (c0 == 0 && j + MQ_EMB_PREFETCH_AHEAD < c->count) mq_emb_prefetch_row(c->t, c->ids[j + MQ_EMB_PREFETCH_AHEAD]);
    const int64_t id = c->ids[j];
    return id == c->padding_idx ? -1 : id;
}

/* One value vector's step of a bag (mq_emb_step's, 8 lanes): the first row of a maximum kept */
MQ_INLINE __m256 bag_step(int op, int64_t n, __m256 x, __m256 wv, __m256 acc) {
    if (op == MQ_EMB_ADD) return _mm256_add_ps(acc, x);
    if (op == MQ_EMB_ADD_WEIGHTED) return _mm256_fmadd_ps(x, wv, acc);
    return n == 0 ? x : _mm256_max_ps(x, acc); /* x > acc ? x : acc */
}

/* A pass's accumulators stored (a mean's divided by the rows taken, as the reference's) */
MQ_INLINE void bag_store(int mode, int64_t n, __m256 *a, int nv, float *o) {
    const __m256 count = _mm256_set1_ps((float)n);
    for (int v = 0; v < nv; v++)
        _mm256_storeu_ps(o + 8 * v, mode == MQ_EMB_BAG_MEAN && n > 0 ? _mm256_div_ps(a[v], count) : a[v]);
}

#define BAG_PASSES(T, WIDEN)                                                                            \
    BAG_PASS(T, WIDEN, 1) BAG_PASS(T, WIDEN, 2) BAG_PASS(T, WIDEN, 3) BAG_PASS(T, WIDEN, 4)             \
    BAG_PASS(T, WIDEN, 5) BAG_PASS(T, WIDEN, 6) BAG_PASS(T, WIDEN, 7) BAG_PASS(T, WIDEN, 8)             \
    /* bags [b0, b1) of a table of dim % 8 == 0, 64 columns a pass */                                   \
    MQ_INLINE void bags_##T##_body(const mq_emb_bags_args *c, int64_t b0, int64_t b1, int op, const int zp) { \
        const int64_t dim = c->t->dim;                                                                  \
        for (int64_t b = b0; b < b1; b++) {                                                             \
            const int64_t first = c->offsets[b], last = mq_emb_bag_end(c, b);                           \
            float *o = c->out + b * dim;                                                                \
            for (int64_t c0 = 0; c0 < dim; c0 += 64) {                                                  \
                switch ((dim - c0) / 8 < 8 ? (dim - c0) / 8 : 8) {                                      \
                case 1: pass_##T##_1(c, first, last, op, o, c0, zp); break;                                 \
                case 2: pass_##T##_2(c, first, last, op, o, c0, zp); break;                                 \
                case 3: pass_##T##_3(c, first, last, op, o, c0, zp); break;                                 \
                case 4: pass_##T##_4(c, first, last, op, o, c0, zp); break;                                 \
                case 5: pass_##T##_5(c, first, last, op, o, c0, zp); break;                                 \
                case 6: pass_##T##_6(c, first, last, op, o, c0, zp); break;                                 \
                case 7: pass_##T##_7(c, first, last, op, o, c0, zp); break;                                 \
                default: pass_##T##_8(c, first, last, op, o, c0, zp);                                       \
                }                                                                                       \
            }                                                                                           \
        }                                                                                               \
    }                                                                                                   \
    /* (a table without zero-points, int8's symmetric codes, skips the subtraction) */                  \
    static void bags_##T(const mq_emb_bags_args *c, int64_t b0, int64_t b1, int op) {                   \
        if (c->t->zp) bags_##T##_body(c, b0, b1, op, 1);                                               \
        else bags_##T##_body(c, b0, b1, op, 0);                                                        \
    }
BAG_PASSES(int8_t, _mm256_cvtepi8_epi32)
BAG_PASSES(uint8_t, _mm256_cvtepu8_epi32)

/* int4 rows (t->group > 0): a 32-column block at a time, 16 bytes split into their low and high
 * nibbles (columns b..b+15, b+16..b+31), the block's group scale and zero-point; the accumulators in
 * memory; a block past dim through the reference's block values */
static int64_t rows_q4(const mq_emb_table *t, const int64_t *ids, int64_t first, int64_t last, int64_t count,
                       const float *psw, int op, int64_t padding_idx, float *acc, int64_t acc_step) {
    const int64_t dim = t->dim;
    const __m128i low4 = _mm_set1_epi8(15);
    int64_t n = 0;
    for (int64_t j = first; j < last; j++) {
        if (j + MQ_EMB_PREFETCH_AHEAD < count) mq_emb_prefetch_row(t, ids[j + MQ_EMB_PREFETCH_AHEAD]);
        const int64_t id = ids[j];
        if (id == padding_idx) continue;
        const float w = psw ? psw[j] : 1.0f;
        const __m256 wv = _mm256_set1_ps(w);
        const int step = op == MQ_EMB_MAX && n == 0 ? MQ_EMB_SET : op;
        const uint8_t *row = (const uint8_t *)t->q + id * (t->kpad / 2);
        for (int64_t b = 0; b < dim; b += 32) {
            float s, z;
            mq_emb_q4_group(t, id, b, &s, &z);
            const __m256 sv = _mm256_set1_ps(s), zv = _mm256_set1_ps(z);
            const __m128i bytes = _mm_loadu_si128((const __m128i *)(row + b / 2));
            const __m128i lo = _mm_and_si128(bytes, low4), hi = _mm_and_si128(_mm_srli_epi16(bytes, 4), low4);
            __m256 v[4];
            v[0] = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(lo));
            v[1] = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(lo, 8)));
            v[2] = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(hi));
            v[3] = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(hi, 8)));
            for (int i = 0; i < 4; i++) v[i] = _mm256_mul_ps(_mm256_sub_ps(v[i], zv), sv);
            float *a = acc + b;
            if (b + 32 <= dim) {
                for (int i = 0; i < 4; i++, a += 8) {
                    const __m256 x = v[i];
                    if (step == MQ_EMB_SET) _mm256_storeu_ps(a, x);
                    else if (step == MQ_EMB_ADD) _mm256_storeu_ps(a, _mm256_add_ps(_mm256_loadu_ps(a), x));
                    else if (step == MQ_EMB_ADD_WEIGHTED) _mm256_storeu_ps(a, _mm256_fmadd_ps(x, wv, _mm256_loadu_ps(a)));
                    else _mm256_storeu_ps(a, _mm256_max_ps(x, _mm256_loadu_ps(a)));
                }
            } else {
                float vals[32];
                for (int i = 0; i < 4; i++) _mm256_storeu_ps(vals + 8 * i, v[i]);
                for (int64_t k = 0; k < dim - b; k++) a[k] = mq_emb_step(step, vals[k], w, a[k]);
            }
        }
        n++;
        acc += acc_step;
    }
    return n;
}

/* An int4 bag's pass over columns [c0, c0 + 32 NB) (whole 32-column blocks inside dim) with its 4 NB
 * accumulators in registers (rows_q4 stores and reloads them for every row: an in-cache table of 64
 * columns ran at 0.5-0.6x fp32's speed): the values as rows_q4 makes them, the same step in the
 * same order, so the same bits. */
#define BAG_Q4_PASS(NB)                                                                                 \
    MQ_INLINE int64_t pass_q4_##NB(const mq_emb_bags_args *c, int64_t first, int64_t last, int op, float *o, \
                                   int64_t c0) {                                                         \
        const mq_emb_table *t = c->t;                                                                   \
        const __m128i low4 = _mm_set1_epi8(15);                                                         \
        __m256 a[4 * NB];                                                                               \
        for (int v = 0; v < 4 * NB; v++) a[v] = _mm256_setzero_ps();                                     \
        int64_t n = 0;                                                                                  \
        for (int64_t j = first; j < last; j++) {                                                        \
            const int64_t id = bag_row_id(c, j, c0);                                                    \
            if (id < 0) continue;                                                                       \
            const uint8_t *row = (const uint8_t *)t->q + id * (t->kpad / 2) + c0 / 2;                   \
            const __m256 wv = _mm256_set1_ps(c->psw ? c->psw[j] : 1.0f);                                \
            for (int blk = 0; blk < NB; blk++) {                                                        \
                float s, z;                                                                             \
                mq_emb_q4_group(t, id, c0 + 32 * blk, &s, &z);                                          \
                const __m256 sv = _mm256_set1_ps(s), zv = _mm256_set1_ps(z);                            \
                const __m128i bytes = _mm_loadu_si128((const __m128i *)(row + 16 * blk));               \
                const __m128i lo = _mm_and_si128(bytes, low4), hi = _mm_and_si128(_mm_srli_epi16(bytes, 4), low4); \
                const __m128i part[4] = {lo, _mm_srli_si128(lo, 8), hi, _mm_srli_si128(hi, 8)};        \
                for (int i = 0; i < 4; i++) {                                                           \
                    const __m256 x = _mm256_mul_ps(                                                     \
                        _mm256_sub_ps(_mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(part[i])), zv), sv);      \
                    a[4 * blk + i] = bag_step(op, n, x, wv, a[4 * blk + i]);                            \
                }                                                                                       \
            }                                                                                           \
            n++;                                                                                        \
        }                                                                                               \
        bag_store(c->mode, n, a, 4 * NB, o + c0);                                                       \
        return n;                                                                                       \
    }
BAG_Q4_PASS(1)
BAG_Q4_PASS(2)

/* bags [b0, b1) of an int4 table of dim % 32 == 0, 64 columns a pass */
static void bags_q4(const mq_emb_bags_args *c, int64_t b0, int64_t b1, int op) {
    const int64_t dim = c->t->dim;
    for (int64_t b = b0; b < b1; b++) {
        const int64_t first = c->offsets[b], last = mq_emb_bag_end(c, b);
        float *o = c->out + b * dim;
        for (int64_t c0 = 0; c0 < dim; c0 += 64)
            if (dim - c0 >= 64) pass_q4_2(c, first, last, op, o, c0);
            else pass_q4_1(c, first, last, op, o, c0);
    }
}

static int64_t emb_rows(const mq_emb_table *t, const int64_t *ids, int64_t first, int64_t last, int64_t count,
                        const float *psw, int op, int64_t padding_idx, float *acc, int64_t acc_step) {
    if (t->group > 0) return rows_q4(t, ids, first, last, count, psw, op, padding_idx, acc, acc_step);
    return t->is_signed ? rows_int8_t(t, ids, first, last, count, psw, op, padding_idx, acc, acc_step)
                        : rows_uint8_t(t, ids, first, last, count, psw, op, padding_idx, acc, acc_step);
}

/* Bags in registers where whole vectors (8-bit) or blocks (int4) cover dim; the others row by row. */
static void emb_bags(const mq_emb_bags_args *c, int64_t b0, int64_t b1) {
    const mq_emb_table *t = c->t;
    const int op = mq_emb_bag_op(c);
    if (t->group > 0 && t->dim % 32 == 0)
        bags_q4(c, b0, b1, op);
    else if (t->group == 0 && t->dim % 8 == 0)
        (t->is_signed ? bags_int8_t : bags_uint8_t)(c, b0, b1, op);
    else
        mq_emb_bags_on_rows(c, b0, b1, emb_rows);
}

const mq_kernels mq_avx2_embedding_table = {
    .emb_rows = emb_rows,
    .emb_bags = emb_bags,
};

#else
const mq_kernels mq_avx2_embedding_table = {.name = NULL};
#endif
