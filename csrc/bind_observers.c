/* bind_observers.c - calibration statistics for static quantization
 * (observers.c): min/max, the streaming histogram, and the entropy and MSE
 * range searches over it. */
#include <math.h>

#include "bind.h"
#include "observers.h"

static const int f32[] = {NPY_FLOAT32}, f64[] = {NPY_FLOAT64};

/* obj must already be a C-contiguous, aligned, writeable, native 1-D ndarray
 * of `type` with `length` elements (any length when negative): it is updated
 * in place, so a converted copy would silently drop the result.  Held in refs. */
static PyArrayObject *inout_vector(mq_refs *refs, PyObject *obj, const char *what, int type, const char *type_name,
                                   npy_intp length) {
    PyArrayObject *a = (PyArrayObject *)obj;
    if (!PyArray_Check(obj) || PyArray_TYPE(a) != type || PyArray_NDIM(a) != 1 || !PyArray_ISCARRAY(a) ||
        !PyArray_ISNOTSWAPPED(a) || (length >= 0 && PyArray_DIM(a, 0) != length)) {
        if (length >= 0)
            PyErr_Format(PyExc_TypeError, "%s must be a writeable C-contiguous 1-D numpy %s array of length %zd "
                         "(it is updated in place)", what, type_name, (Py_ssize_t)length);
        else
            PyErr_Format(PyExc_TypeError, "%s must be a writeable C-contiguous 1-D numpy %s array (it is updated "
                         "in place)", what, type_name);
        return NULL;
    }
    Py_INCREF(obj);
    return mq_hold(refs, a);
}

PyDoc_STRVAR(obs_minmax_doc,
             "obs_minmax(x, min, max, reference=False) -> nonfinite\n\n"
             "x: float32 [outer, channels, inner] (NCHW activations as N, C, H*W; per tensor 1, 1, n).\n"
             "min / max: float32 [channels], lowered / raised in place (start at +inf / -inf).\n"
             "NaN/Inf are skipped; returns how many.  reference=True runs the scalar twin.");

static PyObject *py_obs_minmax(PyObject *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"x", "min", "max", "reference", NULL};
    PyObject *x_obj, *mn_obj, *mx_obj, *result = NULL;
    int reference = 0;
    mq_refs refs = {0};
    PyArrayObject *x, *mn, *mx;
    (void)self;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOO|p:obs_minmax", kwlist, &x_obj, &mn_obj, &mx_obj, &reference))
        return NULL;
    if (!(x = mq_array_in(&refs, x_obj, "x", f32, 1, 3, "float32"))) goto done;
    npy_intp outer = PyArray_DIM(x, 0), channels = PyArray_DIM(x, 1), inner = PyArray_DIM(x, 2);
    if (!(mn = inout_vector(&refs, mn_obj, "min", NPY_FLOAT32, "float32", channels))) goto done;
    if (!(mx = inout_vector(&refs, mx_obj, "max", NPY_FLOAT32, "float32", channels))) goto done;
    /* both are written while x is read: shared bytes would mix the two statistics */
    size_t stat_bytes = (size_t)channels * sizeof(float);
    if (mq_bytes_overlap(PyArray_DATA(mn), stat_bytes, PyArray_DATA(mx), stat_bytes) ||
        mq_bytes_overlap(PyArray_DATA(mn), stat_bytes, PyArray_DATA(x), (size_t)PyArray_NBYTES(x)) ||
        mq_bytes_overlap(PyArray_DATA(mx), stat_bytes, PyArray_DATA(x), (size_t)PyArray_NBYTES(x))) {
        PyErr_SetString(PyExc_ValueError, "obs_minmax: min, max and x must not share memory (pass separate arrays)");
        goto done;
    }
    int64_t bad = 0;
    if (PyArray_SIZE(x) > 0) { /* (an empty x's other dimensions can be near 2^63: no loop over them) */
        Py_BEGIN_ALLOW_THREADS
        bad = (reference ? mq_ref_obs_minmax : mq_obs_minmax)(PyArray_DATA(x), outer, channels, inner,
                                                              PyArray_DATA(mn), PyArray_DATA(mx));
        Py_END_ALLOW_THREADS
    }
    result = PyLong_FromLongLong((long long)bad);
done:
    mq_release(&refs);
    return result;
}

PyDoc_STRVAR(obs_hist_update_doc,
             "obs_hist_update(x, counts, k0, exp, has_data, min, max)\n"
             "    -> (k0, exp, has_data, min, max, nonfinite, batch_min, batch_max)\n\n"
             "Adds the finite values of x (float32, 1-D) to the streaming histogram counts (int64 [bins],\n"
             "updated in place, 16 <= bins <= 2**24) whose grid is (k0, exp, has_data, min, max), and\n"
             "returns the new grid, the number of NaN/Inf skipped and this batch's own min/max\n"
             "(inf/-inf when it had no finite value).  Bin j covers\n"
             "[(k0 + j) * 2**exp, (k0 + j + 1) * 2**exp); the rule is in csrc/observers.h.  A grid that\n"
             "does not follow the rule (e.g. from a corrupt file) is a ValueError.");

/* The grid decides where counts are written: check it is exactly the rule's. */
static int hist_grid_ok(const mq_hist_grid *grid, npy_intp bins) {
    if (!grid->has_data) return 1;
    float mn = grid->min, mx = grid->max;
    int ok = isfinite(mn) && isfinite(mx) && mn <= mx && grid->exp == mq_obs_hist_exp(mn, mx, (int64_t)bins) &&
             grid->k0 == (long long)floor(ldexp((double)mn, -grid->exp));
    if (!ok) {
        char msg[256]; /* snprintf: PyErr_Format has no %g */
        snprintf(msg, sizeof msg, "histogram grid (k0=%lld, exp=%d, min=%g, max=%g) does not follow the "
                 "binning rule for %lld bins: the statistics are corrupt", (long long)grid->k0, grid->exp,
                 (double)mn, (double)mx, (long long)bins);
        PyErr_SetString(PyExc_ValueError, msg);
    }
    return ok;
}

static PyObject *py_obs_hist_update(PyObject *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"x", "counts", "k0", "exp", "has_data", "min", "max", NULL};
    PyObject *x_obj, *counts_obj, *result = NULL;
    long long k0;
    int exp, has_data;
    float mn, mx;
    mq_refs refs = {0};
    PyArrayObject *x, *counts;
    (void)self;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOLipff:obs_hist_update", kwlist, &x_obj, &counts_obj, &k0, &exp,
                                     &has_data, &mn, &mx))
        return NULL;
    if (!(x = mq_array_in(&refs, x_obj, "x", f32, 1, 1, "float32"))) goto done;
    if (!(counts = inout_vector(&refs, counts_obj, "counts", NPY_INT64, "int64", -1))) goto done;
    npy_intp bins = PyArray_DIM(counts, 0);
    if (bins < MQ_HIST_MIN_BINS || bins > MQ_HIST_MAX_BINS) {
        PyErr_Format(PyExc_ValueError, "a histogram needs %d..%d bins, got %zd", MQ_HIST_MIN_BINS, MQ_HIST_MAX_BINS,
                     (Py_ssize_t)bins);
        goto done;
    }
    mq_hist_grid grid = {.k0 = k0, .exp = exp, .has_data = has_data, .min = mn, .max = mx};
    if (!hist_grid_ok(&grid, bins)) goto done;
    /* re-binning adds counts together and binning adds up to n more: with counts that no data could
     * give (negative, or summing near 2^63: a corrupt file) those int64 sums would overflow */
    const int64_t *c = PyArray_DATA(counts);
    int64_t room = INT64_MAX - (int64_t)PyArray_DIM(x, 0);
    for (npy_intp j = 0; j < bins; j++) {
        if (c[j] < 0 || c[j] > room) {
            PyErr_Format(PyExc_ValueError, "histogram counts[%zd] = %lld is negative or the counts sum past 2^63: "
                         "the statistics are corrupt", (Py_ssize_t)j, (long long)c[j]);
            goto done;
        }
        room -= c[j];
    }
    int64_t bad;
    float batch_min, batch_max;
    Py_BEGIN_ALLOW_THREADS
    bad = mq_obs_hist_update(PyArray_DATA(x), PyArray_DIM(x, 0), PyArray_DATA(counts), (int64_t)bins, &grid,
                             &batch_min, &batch_max);
    Py_END_ALLOW_THREADS
    if (bad < 0)
        PyErr_NoMemory();
    else
        result = Py_BuildValue("LiNddldd", (long long)grid.k0, (int)grid.exp, PyBool_FromLong(grid.has_data),
                               (double)grid.min, (double)grid.max, (long)bad, (double)batch_min, (double)batch_max);
done:
    mq_release(&refs);
    return result;
}

PyDoc_STRVAR(obs_entropy_search_doc,
             "obs_entropy_search(h, levels, stride=1) -> (best_bins, kl)\n\n"
             "TensorRT-style KL search over a histogram of |x| (float64 [m], unit-width bins):\n"
             "the number of bins to keep (threshold = best_bins bin widths) and the KL of every\n"
             "candidate (float64 [m + 1], NaN where not a candidate).  See csrc/observers.h.");

static PyObject *py_obs_entropy_search(PyObject *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"h", "levels", "stride", NULL};
    PyObject *h_obj, *result = NULL;
    long long levels, stride = 1;
    mq_refs refs = {0};
    PyArrayObject *h, *kl;
    (void)self;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OL|L:obs_entropy_search", kwlist, &h_obj, &levels, &stride))
        return NULL;
    if (levels < 2 || levels > 65536 || stride < 1) {
        PyErr_Format(PyExc_ValueError, "levels must be in 2..65536 and stride >= 1, got %lld and %lld", levels,
                     stride);
        return NULL;
    }
    if (!(h = mq_array_in(&refs, h_obj, "h", f64, 1, 1, "float64"))) goto done;
    npy_intp m = PyArray_DIM(h, 0), mp1 = m + 1;
    if (!(kl = mq_array_new(&refs, 1, &mp1, NPY_FLOAT64, 0))) goto done;
    int64_t best;
    Py_BEGIN_ALLOW_THREADS
    best = mq_obs_entropy_search(PyArray_DATA(h), m, levels, stride, PyArray_DATA(kl));
    Py_END_ALLOW_THREADS
    result = best < 0 ? PyErr_NoMemory() : Py_BuildValue("LO", (long long)best, kl);
done:
    mq_release(&refs);
    return result;
}

PyDoc_STRVAR(obs_mse_search_doc,
             "obs_mse_search(h, lo, width, range_lo, range_hi, qmin, qmax, symmetric, candidates) -> (best, err)\n\n"
             "Expected squared quantization error of the histogram h (float64 [bins], bin k covering\n"
             "[lo + k * width, lo + (k + 1) * width)) for the ranges a * (range_lo, range_hi),\n"
             "a = (j + 1) / candidates: the index of the least and every candidate's error (float64).");

static PyObject *py_obs_mse_search(PyObject *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"h", "lo", "width", "range_lo", "range_hi", "qmin", "qmax", "symmetric", "candidates",
                             NULL};
    PyObject *h_obj, *result = NULL;
    double lo, width;
    float range_lo, range_hi;
    int qmin, qmax, symmetric;
    long long ncand;
    mq_refs refs = {0};
    PyArrayObject *h, *err;
    (void)self;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OddffiipL:obs_mse_search", kwlist, &h_obj, &lo, &width, &range_lo,
                                     &range_hi, &qmin, &qmax, &symmetric, &ncand))
        return NULL;
    if (!mq_check_qrange(qmin, qmax) || !mq_check_symmetric_qrange(qmin, qmax, symmetric)) return NULL;
    if (ncand < 1 || ncand > 1000000 || !(width > 0.0) || !isfinite(width) || !isfinite(lo) ||
        !isfinite(range_lo) || !isfinite(range_hi)) {
        char msg[256]; /* snprintf: PyErr_Format has no %g */
        snprintf(msg, sizeof msg, "obs_mse_search needs 1..1e6 candidates, a finite positive width and finite "
                 "lo / range (got %lld, %g, %g, [%g, %g])", (long long)ncand, (double)width, (double)lo,
                 (double)range_lo, (double)range_hi);
        PyErr_SetString(PyExc_ValueError, msg);
        return NULL;
    }
    if (!(h = mq_array_in(&refs, h_obj, "h", f64, 1, 1, "float64"))) goto done;
    npy_intp nc = (npy_intp)ncand;
    if (!(err = mq_array_new(&refs, 1, &nc, NPY_FLOAT64, 0))) goto done;
    int64_t best;
    Py_BEGIN_ALLOW_THREADS
    best = mq_obs_mse_search(PyArray_DATA(h), PyArray_DIM(h, 0), lo, width, range_lo, range_hi, qmin, qmax,
                             symmetric, ncand, PyArray_DATA(err));
    Py_END_ALLOW_THREADS
    result = Py_BuildValue("LO", (long long)best, err);
done:
    mq_release(&refs);
    return result;
}

PyMethodDef mq_observer_methods[] = {
    MQ_KW_METHOD(obs_minmax),
    MQ_KW_METHOD(obs_hist_update),
    MQ_KW_METHOD(obs_entropy_search),
    MQ_KW_METHOD(obs_mse_search),
    {NULL, NULL, 0, NULL},
};
