/* x86/pack_sums.h - the column sums and -128 flag of one packed panel, shared
 * by the SIMD twins of mq_ref_pack_panel (x86/avx2/pack.c,
 * x86/avx512/pack.c), each passing its own row kernel; included after mq.h. */
#ifndef MQ_PACK_SUMS_H
#define MQ_PACK_SUMS_H

typedef void (*mq_row_sum_fn)(const int8_t *src, int64_t k, int32_t *sum, int *m128);

/* w_sum[ch] = sum of row ch (0 for the padding channels past nvalid);
 * *has_m128 = some weight is -128. */
static inline void mq_panel_sums(const int8_t *rows, int64_t ld, int64_t nvalid, int64_t k, int32_t *w_sum,
                                 uint8_t *has_m128, mq_row_sum_fn row_sum) {
    int any = 0;
    for (int ch = 0; ch < MQ_PANEL; ch++) {
        int32_t s = 0;
        int m = 0;
        if (ch < nvalid) row_sum(rows + ch * ld, k, &s, &m);
        w_sum[ch] = s;
        any |= m;
    }
    *has_m128 = (uint8_t)any;
}

#endif /* MQ_PACK_SUMS_H */
