/* observers.c - calibration statistics: streaming min/max (per tensor or per
 * channel), the exact streaming histogram and the range searches over it
 * (entropy / KL, MSE).  The rules are written down in observers.h.
 *
 * Baseline compile unit (no ISA flags): the loops are written so the
 * compiler's baseline vectorizer handles the hot one (min/max) and nothing
 * here needs the dispatch table. */
#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "mq.h"
#include "observers.h"

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

/* ---- min / max --------------------------------------------------------------- */

/* Exact min/max of the finite values of one run, NaN/Inf skipped and counted. */
static int64_t run_minmax_slow(const float *x, int64_t n, float *mn, float *mx) {
    float lo = *mn, hi = *mx;
    int64_t bad = 0;
    for (int64_t i = 0; i < n; i++) {
        float v = x[i];
        if (!isfinite(v)) { bad++; continue; }
        if (v < lo) lo = v;
        if (v > hi) hi = v;
    }
    *mn = lo;
    *mx = hi;
    return bad;
}

#if defined(__SSE2__)
/* Fast path on baseline x86-64 (SSE2 is part of it: no dispatch needed):
 * 16 lanes of minps/maxps (which keep the running value for a NaN input) and
 * an "any value not finite" mask; a run that saw a NaN/Inf is redone exactly
 * by the scalar loop (an Inf would otherwise win the min or max). */
static int64_t run_minmax(const float *x, int64_t n, float *mn, float *mx) {
    if (n < 32) return run_minmax_slow(x, n, mn, mx);
    const __m128 abs_mask = _mm_castsi128_ps(_mm_set1_epi32(0x7fffffff)), big = _mm_set1_ps(FLT_MAX);
    __m128 lo0 = _mm_set1_ps(*mn), lo1 = lo0, lo2 = lo0, lo3 = lo0;
    __m128 hi0 = _mm_set1_ps(*mx), hi1 = hi0, hi2 = hi0, hi3 = hi0;
    __m128 bad = _mm_setzero_ps();
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        __m128 a = _mm_loadu_ps(x + i), b = _mm_loadu_ps(x + i + 4);
        __m128 c = _mm_loadu_ps(x + i + 8), d = _mm_loadu_ps(x + i + 12);
        /* minps(v, lo) returns lo when v is NaN */
        lo0 = _mm_min_ps(a, lo0); lo1 = _mm_min_ps(b, lo1); lo2 = _mm_min_ps(c, lo2); lo3 = _mm_min_ps(d, lo3);
        hi0 = _mm_max_ps(a, hi0); hi1 = _mm_max_ps(b, hi1); hi2 = _mm_max_ps(c, hi2); hi3 = _mm_max_ps(d, hi3);
        /* !(|v| <= FLT_MAX): true for NaN and +-Inf */
        bad = _mm_or_ps(bad, _mm_cmpnle_ps(_mm_and_ps(a, abs_mask), big));
        bad = _mm_or_ps(bad, _mm_cmpnle_ps(_mm_and_ps(b, abs_mask), big));
        bad = _mm_or_ps(bad, _mm_cmpnle_ps(_mm_and_ps(c, abs_mask), big));
        bad = _mm_or_ps(bad, _mm_cmpnle_ps(_mm_and_ps(d, abs_mask), big));
    }
    if (_mm_movemask_ps(bad)) return run_minmax_slow(x, n, mn, mx); /* rare: redo the whole run exactly */
    float lo[4], hi[4];
    _mm_storeu_ps(lo, _mm_min_ps(_mm_min_ps(lo0, lo1), _mm_min_ps(lo2, lo3)));
    _mm_storeu_ps(hi, _mm_max_ps(_mm_max_ps(hi0, hi1), _mm_max_ps(hi2, hi3)));
    float l = *mn, h = *mx;
    for (int j = 0; j < 4; j++) {
        if (lo[j] < l) l = lo[j];
        if (hi[j] > h) h = hi[j];
    }
    *mn = l;
    *mx = h;
    return run_minmax_slow(x + i, n - i, mn, mx);
}
#else
static int64_t run_minmax(const float *x, int64_t n, float *mn, float *mx) { return run_minmax_slow(x, n, mn, mx); }
#endif

int64_t mq_obs_minmax(const float *x, int64_t outer, int64_t channels, int64_t inner, float *mn, float *mx) {
    int64_t bad = 0;
    if (channels == 1) /* per tensor: one long run is the fast case */
        return run_minmax(x, outer * inner, mn, mx);
    for (int64_t o = 0; o < outer; o++)
        for (int64_t c = 0; c < channels; c++)
            bad += run_minmax(x + (o * channels + c) * inner, inner, &mn[c], &mx[c]);
    return bad;
}

/* ---- streaming histogram ---------------------------------------------------- */

/* floor(v / 2^e) for finite v whose quotient fits the index bits: the
 * scaling by a power of two is exact in double, the truncating cast is
 * corrected to floor (no libm call on baseline x86-64). */
static inline int64_t grid_index(double v, double inv_w) {
    double q = v * inv_w;
    int64_t t = (int64_t)q;
    return t - ((double)t > q);
}

/* floor(k / 2^d) for any d >= 0 (>> of a negative value is not floor in ISO C). */
static inline int64_t floor_shift(int64_t k, int32_t d) {
    if (d >= 63) return k < 0 ? -1 : 0;
    return k >= 0 ? k >> d : -((-k - 1) >> d) - 1;
}

int32_t mq_obs_hist_exp(float mn, float mx, int64_t bins) {
    int32_t e = MQ_HIST_MIN_EXP;
    float amax = fabsf(mn) > fabsf(mx) ? fabsf(mn) : fabsf(mx);
    if (amax > 0.0f) { /* amax < 2^ea: keep amax / w below 2^MAX_INDEX_BITS */
        int ea;
        frexpf(amax, &ea);
        if (ea - MQ_HIST_MAX_INDEX_BITS > e) e = ea - MQ_HIST_MAX_INDEX_BITS;
    }
    double width = (double)mx - (double)mn;
    if (width > 0.0) { /* any w <= width / bins spans more than bins bins: start just below */
        int es;
        frexp(width / (double)bins, &es);
        if (es - 1 > e) e = es - 1;
    }
    while (grid_index(mx, ldexp(1.0, -e)) - grid_index(mn, ldexp(1.0, -e)) + 1 > bins) e++;
    return e;
}

#define HIST_TABLES 4
#define HIST_CHUNK ((int64_t)1 << 30)

#if defined(__SSE2__)
/* Bins x[i0..i1) into the HIST_TABLES tables 8 values at a time; returns where
 * it stopped (the caller finishes the tail).  Exact under bin_values'
 * conditions: v * 2^-exp is exact in float (a power-of-two scaling, the
 * result below 2^31), truncation is corrected to floor, and a tiny negative
 * v whose quotient underflowed to -0 still lands in bin -1. */
static int64_t bin_sse2(const float *x, int64_t i0, int64_t i1, float inv_w, int32_t k0, uint32_t *t, int64_t bins) {
    const __m128 scale = _mm_set1_ps(inv_w), zero = _mm_setzero_ps();
    const __m128i base = _mm_set1_epi32(k0);
    int32_t idx[8];
    int64_t i = i0;
    for (; i + 8 <= i1; i += 8) {
        for (int h = 0; h < 2; h++) {
            __m128 v = _mm_loadu_ps(x + i + 4 * h);
            __m128 q = _mm_mul_ps(v, scale);
            __m128i tr = _mm_cvttps_epi32(q);
            __m128 down = _mm_or_ps(_mm_cmpgt_ps(_mm_cvtepi32_ps(tr), q),
                                    _mm_and_ps(_mm_cmpeq_ps(q, zero), _mm_cmplt_ps(v, zero)));
            /* the mask is -1 where floor is one below the truncation */
            _mm_storeu_si128((__m128i *)(idx + 4 * h), _mm_sub_epi32(_mm_add_epi32(tr, _mm_castps_si128(down)), base));
        }
        t[idx[0]]++;
        t[bins + idx[1]]++;
        t[2 * bins + idx[2]]++;
        t[3 * bins + idx[3]]++;
        t[idx[4]]++;
        t[bins + idx[5]]++;
        t[2 * bins + idx[6]]++;
        t[3 * bins + idx[7]]++;
    }
    return i;
}
#endif

/* Bin the finite values of x into counts.  Four interleaved uint32 tables
 * break the store-to-load chain of repeated increments to one bin (activation
 * histograms are peaked); chunks stay below 2^32 values per table entry. */
static int bin_values(const float *x, int64_t n, int any_nonfinite, double inv_w, int64_t k0, int64_t *counts,
                      int64_t bins) {
    if (n < 4096) { /* small batch: straight into the counts */
        for (int64_t i = 0; i < n; i++) {
            float v = x[i];
            if (any_nonfinite && !(fabsf(v) <= FLT_MAX)) continue;
            counts[grid_index(v, inv_w) - k0] += 1; /* 0 <= index < bins by the choice of exp and k0 */
        }
        return 0;
    }
    uint32_t *t = calloc((size_t)(HIST_TABLES * bins), sizeof *t);
    if (!t) return -1;
    /* float arithmetic is exact too when the grid's indices fit int32 and 2^-exp is a normal float */
    int use_float = !any_nonfinite && inv_w >= 0x1p-126 && llabs(k0) < (1LL << 30) && llabs(k0 + bins) < (1LL << 30);
    for (int64_t c0 = 0; c0 < n; c0 += HIST_CHUNK) {
        int64_t c1 = c0 + HIST_CHUNK < n ? c0 + HIST_CHUNK : n, i = c0;
#if defined(__SSE2__)
        if (use_float) i = bin_sse2(x, c0, c1, (float)inv_w, (int32_t)k0, t, bins);
#else
        (void)use_float;
#endif
        if (!any_nonfinite)
            for (; i + HIST_TABLES <= c1; i += HIST_TABLES)
                for (int j = 0; j < HIST_TABLES; j++) t[j * bins + grid_index(x[i + j], inv_w) - k0] += 1;
        for (; i < c1; i++) {
            float v = x[i];
            if (!(fabsf(v) <= FLT_MAX)) continue;
            t[grid_index(v, inv_w) - k0] += 1;
        }
        for (int64_t b = 0; b < bins; b++) {
            for (int j = 0; j < HIST_TABLES; j++) counts[b] += t[j * bins + b];
        }
        memset(t, 0, (size_t)(HIST_TABLES * bins) * sizeof *t);
    }
    free(t);
    return 0;
}

int64_t mq_obs_hist_update(const float *x, int64_t n, int64_t *counts, int64_t bins, mq_hist_grid *grid,
                           float *batch_min, float *batch_max) {
    float bmin = INFINITY, bmax = -INFINITY;
    int64_t bad = run_minmax(x, n, &bmin, &bmax);
    *batch_min = bmin;
    *batch_max = bmax;
    if (bmin > bmax) return bad; /* nothing finite in this batch */

    float gmin = grid->has_data && grid->min < bmin ? grid->min : bmin;
    float gmax = grid->has_data && grid->max > bmax ? grid->max : bmax;
    int32_t e = mq_obs_hist_exp(gmin, gmax, bins);
    if (grid->has_data && e < grid->exp) e = grid->exp; /* cannot happen (monotone rule); never shrink */
    double inv_w = ldexp(1.0, -e);
    int64_t k0 = grid_index(gmin, inv_w);

    int64_t *merged = NULL;
    if (grid->has_data && (e != grid->exp || k0 != grid->k0)) {
        /* re-bin: old bin k is exactly inside new bin floor(k / 2^d) */
        merged = calloc((size_t)bins, sizeof *merged);
        if (!merged) return -1;
        int32_t d = e - grid->exp;
        for (int64_t j = 0; j < bins; j++) {
            if (!counts[j]) continue;
            int64_t t = floor_shift(grid->k0 + j, d) - k0;
            if (t < 0) t = 0; /* unreachable: occupied bins lie inside [gmin, gmax] */
            if (t >= bins) t = bins - 1;
            merged[t] += counts[j];
        }
    }
    /* bin into a copy when re-binning so a failed allocation leaves counts and grid unchanged */
    int64_t *dst = merged ? merged : counts;
    if (bin_values(x, n, bad != 0, inv_w, k0, dst, bins) < 0) { /* fails before writing anything */
        free(merged);
        return -1;
    }
    if (merged) {
        memcpy(counts, merged, (size_t)bins * sizeof *counts);
        free(merged);
    }
    grid->exp = e;
    grid->k0 = k0;
    grid->min = gmin;
    grid->max = gmax;
    grid->has_data = 1;
    return bad;
}

/* ---- entropy (KL) search -------------------------------------------------- */

static inline double xlogx(double v) { return v > 0.0 ? v * log(v) : 0.0; }

/* Prefix sums over h: mass, count of nonzero bins and sum of h log h, so a
 * candidate costs O(levels), not O(i): with P = sum p, Q = sum h[0..i),
 *   KL = (1/P) sum p log p - log P - (1/P) sum_g mass_p(g) log(q_g / Q)
 * where q_g = mass_h(g) / nonzero_p(g) is the level's per-bin value. */
typedef struct {
    double *mass, *hlogh;
    int64_t *nonzero;
} prefix_sums;

static double kl_of_candidate(const double *h, const prefix_sums *ps, int64_t i, int64_t levels, double outliers) {
    double in_range = ps->mass[i];
    double last = h[i - 1] + outliers; /* P's last bin takes the clipped mass */
    double p_total = in_range + outliers;
    if (!(p_total > 0.0)) return 0.0;       /* empty histogram: nothing to lose */
    if (!(in_range > 0.0)) return INFINITY; /* everything clipped */
    double sum_plogp = ps->hlogh[i - 1] + xlogx(last);
    double cross = 0.0; /* sum over P's nonzero bins of p log(q / Q) */
    int64_t merged = i / levels;
    for (int64_t g = 0; g < levels; g++) {
        int64_t start = g * merged, end = g == levels - 1 ? i : start + merged;
        double mass = ps->mass[end] - ps->mass[start];
        int64_t nonzero = ps->nonzero[end] - ps->nonzero[start];
        double p_mass = mass;
        if (end == i) { /* the group holding bin i - 1: its P value differs from h */
            nonzero += (last != 0.0) - (h[i - 1] != 0.0);
            p_mass += outliers;
        }
        if (p_mass == 0.0) continue;
        if (mass == 0.0) return INFINITY; /* P has mass where Q has none */
        cross += p_mass * log(mass / (double)nonzero / in_range);
    }
    double kl = sum_plogp / p_total - log(p_total) - cross / p_total;
    return kl > 0.0 ? kl : 0.0; /* KL >= 0; a tiny negative value is rounding */
}

int64_t mq_obs_entropy_search(const double *h, int64_t m, int64_t levels, int64_t stride, double *kl_out) {
    if (kl_out)
        for (int64_t i = 0; i <= m; i++) kl_out[i] = NAN;
    if (m < levels || levels < 1) return m;
    if (stride < 1) stride = 1;
    prefix_sums ps = {malloc((size_t)(m + 1) * sizeof(double)), malloc((size_t)(m + 1) * sizeof(double)),
                      malloc((size_t)(m + 1) * sizeof(int64_t))};
    if (!ps.mass || !ps.hlogh || !ps.nonzero) {
        free(ps.mass);
        free(ps.hlogh);
        free(ps.nonzero);
        return -1;
    }
    ps.mass[0] = ps.hlogh[0] = 0.0;
    ps.nonzero[0] = 0;
    for (int64_t k = 0; k < m; k++) {
        ps.mass[k + 1] = ps.mass[k] + h[k];
        ps.hlogh[k + 1] = ps.hlogh[k] + xlogx(h[k]);
        ps.nonzero[k + 1] = ps.nonzero[k] + (h[k] != 0.0);
    }
    int64_t best = m;
    double best_kl = INFINITY;
    /* the step never adds past m: i + stride may pass int64 (a huge stride), and a wrapped i indexes kl_out */
    for (int64_t i = levels;; i = stride > m - i ? m : i + stride) {
        double kl = kl_of_candidate(h, &ps, i, levels, ps.mass[m] - ps.mass[i]);
        if (kl_out) kl_out[i] = kl;
        if (kl < best_kl) { best_kl = kl; best = i; }
        if (i == m) break;
    }
    free(ps.mass);
    free(ps.hlogh);
    free(ps.nonzero);
    return best;
}

/* ---- MSE search ------------------------------------------------------------ */

int64_t mq_obs_mse_search(const double *h, int64_t bins, double lo, double w, float range_lo, float range_hi, int qmin,
                          int qmax, int symmetric, int64_t ncand, double *err_out) {
    double total = 0.0;
    for (int64_t k = 0; k < bins; k++) total += h[k];
    int64_t best = ncand - 1;
    double best_err = INFINITY;
    for (int64_t j = 0; j < ncand; j++) {
        float a = (float)(j + 1) / (float)ncand;
        float scale;
        int32_t zp;
        mq_choose_qparams(a * range_lo, a * range_hi, qmin, qmax, symmetric, &scale, &zp);
        double s = scale, qlo = (double)(qmin - zp) * s, qhi = (double)(qmax - zp) * s;
        double inside = s * s / 12.0, cell = w * w / 12.0, err = 0.0;
        for (int64_t k = 0; k < bins; k++) {
            if (h[k] == 0.0) continue;
            double c = lo + ((double)k + 0.5) * w;
            double e = c < qlo ? (c - qlo) * (c - qlo) + cell : c > qhi ? (c - qhi) * (c - qhi) + cell : inside;
            err += h[k] * e;
        }
        err = total > 0.0 ? err / total : 0.0;
        if (err_out) err_out[j] = err;
        if (err < best_err) { best_err = err; best = j; }
    }
    return best;
}

/* ---- scalar reference twin ---------------------------------------------------- */

int64_t mq_ref_obs_minmax(const float *x, int64_t outer, int64_t channels, int64_t inner, float *mn, float *mx) {
    int64_t bad = 0;
    for (int64_t o = 0; o < outer; o++)
        for (int64_t c = 0; c < channels; c++)
            for (int64_t i = 0; i < inner; i++) {
                float v = x[(o * channels + c) * inner + i];
                if (!isfinite(v)) { bad++; continue; }
                if (v < mn[c]) mn[c] = v;
                if (v > mx[c]) mx[c] = v;
            }
    return bad;
}
