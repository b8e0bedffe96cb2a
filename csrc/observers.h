/* observers.h - activation statistics for static quantization (observers.c).
 *
 * Plain C, no Python.  float32 activations only: the Python layer converts
 * other dtypes first.  NaN and +-Inf are never folded into a statistic:
 * they are skipped and counted, so the caller can warn.
 *
 * Streaming histogram rule (exact, order independent): bins are the cells
 * [k w, (k+1) w) of a grid anchored at 0 whose width w = 2^exp is the
 * smallest power of two with
 *     exp >= MQ_HIST_MIN_EXP,
 *     |x| / w < 2^MQ_HIST_MAX_INDEX_BITS for every finite x seen, and
 *     floor(max / w) - floor(min / w) + 1 <= bins,
 * and the window holds bins k0 = floor(min / w) .. k0 + bins - 1.  When a
 * batch widens [min, max], w doubles as needed and every old bin k becomes
 * bin floor(k / 2^d) of the wider grid: each new bin is exactly a union of
 * old ones, so the counts stay exact integers and the final histogram equals
 * the one-shot histogram of all the data on the final grid, whatever the
 * batch split or order.  Memory: bins int64 counts, nothing per sample.
 * (The price of exactness: at least bins / 2 of the bins lie inside
 * [min, max], not all of them.) */
#ifndef MQ_OBSERVERS_H
#define MQ_OBSERVERS_H

#include <stdint.h>

#define MQ_HIST_MIN_EXP (-32)
#define MQ_HIST_MAX_INDEX_BITS 52
#define MQ_HIST_MIN_BINS 16
#define MQ_HIST_MAX_BINS (1 << 24)

/* Grid and running statistics of one streaming histogram. */
typedef struct {
    int64_t k0;        /* grid index of counts[0] */
    int32_t exp;       /* bin width is 2^exp */
    int32_t has_data;  /* 0 until a finite value was seen (then k0/exp/min/max are valid) */
    float min, max;    /* exact extremes of the finite values seen */
} mq_hist_grid;

/* x viewed as [outer][channels][inner] (NCHW activations: N, C, H*W; per
 * tensor: 1, 1, n): mn[c] / mx[c] lowered / raised in place (start them at
 * +Inf / -Inf).  Returns the number of NaN/Inf elements (skipped). */
int64_t mq_obs_minmax(const float *x, int64_t outer, int64_t channels, int64_t inner, float *mn, float *mx);

/* Adds the finite values of x[0..n) to counts[0..bins) under the rule above,
 * re-binning first when they widen the range; *batch_min / *batch_max get this
 * batch's own extremes (+Inf / -Inf when it has no finite value), so callers
 * need no separate min/max pass.  Returns the number of NaN/Inf elements
 * skipped, or -1 when out of memory (counts and grid unchanged). */
int64_t mq_obs_hist_update(const float *x, int64_t n, int64_t *counts, int64_t bins, mq_hist_grid *grid,
                           float *batch_min, float *batch_max);

/* The grid exponent the rule gives for finite values in [mn, mx]. */
int32_t mq_obs_hist_exp(float mn, float mx, int64_t bins);

/* Entropy (KL) range search, TensorRT style, over a histogram of |x| with m
 * bins of unit width (h[k] counts |x| in [k, k+1)).  For every candidate
 * i = levels, levels + stride, ..., m (and m itself): P is h[0..i) with the
 * mass beyond i added to bin i - 1; Q merges h[0..i) into `levels` groups
 * (i / levels bins each, the last taking the remainder) and spreads each
 * group's mass evenly over the bins where P is nonzero; KL(P || Q) of the
 * normalised pair, +Inf where Q is 0 but P is not.  Returns the i of least
 * KL (the first on ties; m when m < levels or every KL is infinite: the
 * full range).  kl_out, when not NULL, has m + 1 entries: kl_out[i] for the
 * candidates, NaN elsewhere. */
int64_t mq_obs_entropy_search(const double *h, int64_t m, int64_t levels, int64_t stride, double *kl_out);

/* Expected squared quantization error of a histogram (bins of width w, the
 * first starting at lo, bin k standing for its centre) quantized with the
 * project's qparams (mq_choose_qparams) of each candidate range
 * (a * range_lo, a * range_hi), a = (j + 1) / ncand, j < ncand:
 *     a value inside the representable range costs scale^2 / 12 (rounding),
 *     a clipped one (centre - nearest end)^2 + w^2 / 12.
 * err_out[j]: the mean over all counted values.  Returns the best j (first on ties). */
int64_t mq_obs_mse_search(const double *h, int64_t bins, double lo, double w, float range_lo, float range_hi, int qmin,
                          int qmax, int symmetric, int64_t ncand, double *err_out);

/* Scalar reference twin (one element at a time, no fast path). */
int64_t mq_ref_obs_minmax(const float *x, int64_t outer, int64_t channels, int64_t inner, float *mn, float *mx);

#endif
