/* module.c - mono_quant._C: the only file that includes Python.h and numpy.
 *
 * Every entry point validates its arguments (type, dtype, rank, lengths,
 * ranges) and raises a Python exception naming what was wrong; kernels then
 * run on contiguous buffers with the GIL released.  Weights cross as 2-D
 * NumPy arrays of rows: float32, float16, or int16/uint16 holding bf16 bits. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#define NPY_NO_DEPRECATED_API NPY_1_7_API_VERSION
#include <numpy/arrayobject.h>

#include <errno.h>
#include <math.h>
#include <sys/stat.h>

#include "mq.h"
#include "observers.h"
#include "size_check.h"

extern PyMethodDef mq_static_methods[]; /* bind_static.c */

static const char *isa_names[MQ_ISA_COUNT] = {"scalar", "avx2", "avx512"};

/* ---- argument helpers ---------------------------------------------------- */

/* A C-contiguous view (or copy) of obj, which must be an ndarray with one of
 * the accepted type numbers and the given rank.  New reference or NULL. */
static PyArrayObject *contiguous_array(PyObject *obj, const char *what, const int *types, int ntypes, int ndim,
                                       const char *expected) {
    if (!PyArray_Check(obj)) {
        PyErr_Format(PyExc_TypeError, "%s must be a numpy.ndarray of %s, got %.100s", what, expected,
                     Py_TYPE(obj)->tp_name);
        return NULL;
    }
    PyArrayObject *a = (PyArrayObject *)obj;
    int t = PyArray_TYPE(a), ok = 0;
    for (int i = 0; i < ntypes; i++) ok |= types[i] == t;
    if (!ok) {
        PyErr_Format(PyExc_TypeError, "%s must have dtype %s, got %.50s", what, expected,
                     PyArray_DESCR(a)->typeobj->tp_name);
        return NULL;
    }
    if (!PyArray_ISNOTSWAPPED(a)) {
        PyErr_Format(PyExc_TypeError, "%s must be in native byte order (use .astype(its dtype.newbyteorder('=')))",
                     what);
        return NULL;
    }
    if (PyArray_NDIM(a) != ndim) {
        PyErr_Format(PyExc_ValueError, "%s must be %d-D, got %d-D", what, ndim, PyArray_NDIM(a));
        return NULL;
    }
    /* C-contiguous and aligned: a view when it already is, else a copy */
    return (PyArrayObject *)PyArray_FROM_OF(obj, NPY_ARRAY_IN_ARRAY);
}

static const int src_types[] = {NPY_FLOAT32, NPY_FLOAT16, NPY_INT16, NPY_UINT16};
static const char *src_expected = "float32, float16 or int16/uint16 (bf16 bits)";

static mq_src_t src_kind(PyArrayObject *a) {
    switch (PyArray_TYPE(a)) {
    case NPY_FLOAT16: return MQ_SRC_F16;
    case NPY_INT16:
    case NPY_UINT16: return MQ_SRC_BF16;
    default: return MQ_SRC_F32;
    }
}

static int check_qrange(int qmin, int qmax) {
    int ok = qmin < qmax && ((qmin >= -128 && qmax <= 127) || (qmin >= 0 && qmax <= 255));
    if (!ok)
        PyErr_Format(PyExc_ValueError,
                     "quantization range [%d, %d] must fit int8 (-128..127) or uint8 (0..255) with qmin < qmax",
                     qmin, qmax);
    return ok;
}

static int check_threads(int nthreads) {
    if (nthreads < 1 || nthreads > 1024) {
        PyErr_Format(PyExc_ValueError, "nthreads must be in 1..1024, got %d", nthreads);
        return 0;
    }
    return 1;
}

/* scale (float32) and zero_point (int32) of length 1 (per tensor) or rows. */
static int qparam_arrays(PyObject *scale_obj, PyObject *zp_obj, npy_intp rows, PyArrayObject **scale,
                         PyArrayObject **zp, int *per_row) {
    static const int f32[] = {NPY_FLOAT32}, i32[] = {NPY_INT32};
    *scale = contiguous_array(scale_obj, "scale", f32, 1, 1, "float32");
    if (!*scale) return 0;
    *zp = contiguous_array(zp_obj, "zero_point", i32, 1, 1, "int32");
    if (!*zp) return 0;
    npy_intp ns = PyArray_DIM(*scale, 0), nz = PyArray_DIM(*zp, 0);
    if (ns != nz || (ns != rows && ns != 1)) {
        PyErr_Format(PyExc_ValueError, "scale and zero_point must both have length 1 or %zd (rows), got %zd and %zd",
                     (Py_ssize_t)rows, (Py_ssize_t)ns, (Py_ssize_t)nz);
        return 0;
    }
    const float *s = PyArray_DATA(*scale);
    for (npy_intp i = 0; i < ns; i++)
        if (!(s[i] > 0.0f) || !isfinite(s[i]) || !isfinite(1.0f / s[i])) {
            PyErr_Format(PyExc_ValueError, "scale[%zd] = %g is not a positive finite number with a finite inverse",
                         (Py_ssize_t)i, (double)s[i]);
            return 0;
        }
    *per_row = ns == rows && rows != 1;
    return 1;
}

/* A size computed with the mq_size_* helpers (size_check.h): -1 means that the
 * shape or arguments make it pass 64 bits, which a raw product would wrap. */
static int size_fits(int64_t size, const char *fname, const char *what) {
    if (size >= 0) return 1;
    PyErr_Format(PyExc_OverflowError, "%s: %s does not fit in 64 bits (a dimension or argument is far too large)",
                 fname, what);
    return 0;
}

/* The packed int8 layout's sizes for an [n, k] weight: round_up(n, 16) channels
 * (np_) and np_ * round_up(k, 4) bytes; 0 with OverflowError set when they pass 64 bits. */
static int packed_int8_sizes(npy_intp n, npy_intp k, const char *fname, npy_intp *np_, npy_intp *size) {
    *np_ = mq_size_round_up(n, MQ_PANEL);
    *size = mq_size_mul(*np_, mq_size_round_up(k, MQ_KGROUP));
    return size_fits(*size, fname, "the packed weight's size");
}

static PyObject *bad_row_obj(int64_t bad) { return PyLong_FromLongLong((long long)bad); }

/* ---- entry points -------------------------------------------------------- */

PyDoc_STRVAR(rows_minmax_doc,
             "rows_minmax(x, nthreads=1) -> (min, max, bad_row)\n\n"
             "Per-row min and max of a 2-D array (float32, float16, or int16 bf16 bits).\n"
             "bad_row is the first row holding NaN/Inf, or -1; such rows get NaN min/max.");

static PyObject *py_rows_minmax(PyObject *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"x", "nthreads", NULL};
    PyObject *x_obj, *result = NULL;
    int nthreads = 1;
    PyArrayObject *x = NULL, *mn = NULL, *mx = NULL;
    (void)self;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O|i:rows_minmax", kwlist, &x_obj, &nthreads)) return NULL;
    if (!check_threads(nthreads)) return NULL;
    if (!(x = contiguous_array(x_obj, "x", src_types, 4, 2, src_expected))) goto fail;
    npy_intp rows = PyArray_DIM(x, 0), cols = PyArray_DIM(x, 1);
    if (!(mn = (PyArrayObject *)PyArray_EMPTY(1, &rows, NPY_FLOAT32, 0))) goto fail;
    if (!(mx = (PyArrayObject *)PyArray_EMPTY(1, &rows, NPY_FLOAT32, 0))) goto fail;
    int64_t bad;
    Py_BEGIN_ALLOW_THREADS
    bad = mq_rows_minmax(PyArray_DATA(x), src_kind(x), rows, cols, PyArray_DATA(mn), PyArray_DATA(mx), nthreads);
    Py_END_ALLOW_THREADS
    result = Py_BuildValue("OON", mn, mx, bad_row_obj(bad));
fail:
    Py_XDECREF(x);
    Py_XDECREF(mn);
    Py_XDECREF(mx);
    return result;
}

PyDoc_STRVAR(choose_qparams_doc,
             "choose_qparams(min, max, qmin, qmax, symmetric) -> (scale, zero_point)\n\n"
             "Scale (float32) and zero-point (int32) per entry of two float32 arrays, with\n"
             "torch MinMaxObserver's formula (scale floored at FLT_MIN, not float eps).");

static PyObject *py_choose_qparams(PyObject *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"min", "max", "qmin", "qmax", "symmetric", NULL};
    static const int f32[] = {NPY_FLOAT32};
    PyObject *mn_obj, *mx_obj, *result = NULL;
    int qmin, qmax, symmetric;
    PyArrayObject *mn = NULL, *mx = NULL, *scale = NULL, *zp = NULL;
    (void)self;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOiip:choose_qparams", kwlist, &mn_obj, &mx_obj, &qmin, &qmax,
                                     &symmetric))
        return NULL;
    if (!check_qrange(qmin, qmax)) return NULL;
    if (!(mn = contiguous_array(mn_obj, "min", f32, 1, 1, "float32"))) goto fail;
    if (!(mx = contiguous_array(mx_obj, "max", f32, 1, 1, "float32"))) goto fail;
    npy_intp n = PyArray_DIM(mn, 0);
    if (PyArray_DIM(mx, 0) != n) {
        PyErr_SetString(PyExc_ValueError, "min and max must have the same length");
        goto fail;
    }
    const float *a = PyArray_DATA(mn), *b = PyArray_DATA(mx);
    for (npy_intp i = 0; i < n; i++)
        if (!isfinite(a[i]) || !isfinite(b[i])) {
            PyErr_Format(PyExc_ValueError, "min/max[%zd] is not finite (NaN or Inf in the data?)", (Py_ssize_t)i);
            goto fail;
        }
    if (!(scale = (PyArrayObject *)PyArray_EMPTY(1, &n, NPY_FLOAT32, 0))) goto fail;
    if (!(zp = (PyArrayObject *)PyArray_EMPTY(1, &n, NPY_INT32, 0))) goto fail;
    float *s = PyArray_DATA(scale);
    int32_t *z = PyArray_DATA(zp);
    for (npy_intp i = 0; i < n; i++) mq_choose_qparams(a[i], b[i], qmin, qmax, symmetric, &s[i], &z[i]);
    result = Py_BuildValue("OO", scale, zp);
fail:
    Py_XDECREF(mn);
    Py_XDECREF(mx);
    Py_XDECREF(scale);
    Py_XDECREF(zp);
    return result;
}

PyDoc_STRVAR(quantize_rows_doc,
             "quantize_rows(x, scale, zero_point, qmin, qmax, use_fma=False, nthreads=1) -> q\n\n"
             "q = clamp(rint(zero_point + x * (1/scale)), qmin, qmax) per row (scale and\n"
             "zero_point of length rows, or 1 for the whole tensor).  q is int8 when qmin < 0,\n"
             "else uint8.  The product is rounded before the add (torch.quantize_per_channel)\n"
             "unless use_fma, where it is one fused multiply-add (torch.quantize_per_tensor).");

static PyObject *py_quantize_rows(PyObject *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"x", "scale", "zero_point", "qmin", "qmax", "use_fma", "nthreads", NULL};
    PyObject *x_obj, *s_obj, *z_obj, *result = NULL;
    int qmin, qmax, use_fma = 0, nthreads = 1, per_row = 0;
    PyArrayObject *x = NULL, *scale = NULL, *zp = NULL, *q = NULL;
    (void)self;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOOii|pi:quantize_rows", kwlist, &x_obj, &s_obj, &z_obj, &qmin,
                                     &qmax, &use_fma, &nthreads))
        return NULL;
    if (!check_qrange(qmin, qmax) || !check_threads(nthreads)) return NULL;
    if (!(x = contiguous_array(x_obj, "x", src_types, 4, 2, src_expected))) goto fail;
    if (!qparam_arrays(s_obj, z_obj, PyArray_DIM(x, 0), &scale, &zp, &per_row)) goto fail;
    {
        const int32_t *z = PyArray_DATA(zp);
        for (npy_intp i = 0; i < PyArray_DIM(zp, 0); i++)
            if (z[i] < qmin || z[i] > qmax) {
                PyErr_Format(PyExc_ValueError, "zero_point[%zd] = %d is outside [%d, %d]", (Py_ssize_t)i, z[i], qmin,
                             qmax);
                goto fail;
            }
    }
    if (!(q = (PyArrayObject *)PyArray_EMPTY(2, PyArray_DIMS(x), qmin < 0 ? NPY_INT8 : NPY_UINT8, 0))) goto fail;
    /* an empty array may still have ~2^63 rows of no columns: visiting them would take years */
    if (PyArray_SIZE(q) > 0) {
        Py_BEGIN_ALLOW_THREADS
        mq_rows_quantize(PyArray_DATA(x), src_kind(x), PyArray_DIM(x, 0), PyArray_DIM(x, 1), PyArray_DATA(scale),
                         PyArray_DATA(zp), per_row, qmin, qmax, use_fma, PyArray_DATA(q), nthreads);
        Py_END_ALLOW_THREADS
    }
    result = (PyObject *)q;
    q = NULL;
fail:
    Py_XDECREF(x);
    Py_XDECREF(scale);
    Py_XDECREF(zp);
    Py_XDECREF(q);
    return result;
}

PyDoc_STRVAR(quantize_rows_fused_doc,
             "quantize_rows_fused(x, qmin, qmax, symmetric, with_error=False, nthreads=1)\n"
             "    -> (q, scale, zero_point, bad_row, sum_x2, sum_err2)\n\n"
             "Per-row min/max, choose_qparams and quantize_rows in one pass over each row.\n"
             "bad_row is the first row holding NaN/Inf (its output is undefined), or -1.\n"
             "With with_error, sum_x2 / sum_err2 (float64 per row) are the signal and\n"
             "quantization-noise powers (for SQNR); else both are None.");

static PyObject *py_quantize_rows_fused(PyObject *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"x", "qmin", "qmax", "symmetric", "with_error", "nthreads", NULL};
    PyObject *x_obj, *result = NULL;
    int qmin, qmax, symmetric, with_error = 0, nthreads = 1;
    PyArrayObject *x = NULL, *scale = NULL, *zp = NULL, *q = NULL, *sx = NULL, *se = NULL;
    (void)self;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "Oiip|pi:quantize_rows_fused", kwlist, &x_obj, &qmin, &qmax,
                                     &symmetric, &with_error, &nthreads))
        return NULL;
    if (!check_qrange(qmin, qmax) || !check_threads(nthreads)) return NULL;
    if (!(x = contiguous_array(x_obj, "x", src_types, 4, 2, src_expected))) goto fail;
    npy_intp rows = PyArray_DIM(x, 0);
    if (!(scale = (PyArrayObject *)PyArray_EMPTY(1, &rows, NPY_FLOAT32, 0))) goto fail;
    if (!(zp = (PyArrayObject *)PyArray_EMPTY(1, &rows, NPY_INT32, 0))) goto fail;
    if (!(q = (PyArrayObject *)PyArray_EMPTY(2, PyArray_DIMS(x), qmin < 0 ? NPY_INT8 : NPY_UINT8, 0))) goto fail;
    if (with_error) {
        if (!(sx = (PyArrayObject *)PyArray_ZEROS(1, &rows, NPY_FLOAT64, 0))) goto fail;
        if (!(se = (PyArrayObject *)PyArray_ZEROS(1, &rows, NPY_FLOAT64, 0))) goto fail;
    }
    int64_t bad;
    Py_BEGIN_ALLOW_THREADS
    bad = mq_rows_quantize_fused(PyArray_DATA(x), src_kind(x), rows, PyArray_DIM(x, 1), qmin, qmax, symmetric,
                                 PyArray_DATA(scale), PyArray_DATA(zp), PyArray_DATA(q),
                                 sx ? PyArray_DATA(sx) : NULL, se ? PyArray_DATA(se) : NULL, nthreads);
    Py_END_ALLOW_THREADS
    result = Py_BuildValue("OOONOO", q, scale, zp, bad_row_obj(bad), sx ? (PyObject *)sx : Py_None,
                           se ? (PyObject *)se : Py_None);
fail:
    Py_XDECREF(x);
    Py_XDECREF(scale);
    Py_XDECREF(zp);
    Py_XDECREF(q);
    Py_XDECREF(sx);
    Py_XDECREF(se);
    return result;
}

PyDoc_STRVAR(rows_sqerr_doc,
             "rows_sqerr(x, q, scale, zero_point, nthreads=1) -> (sum_x2, sum_err2)\n\n"
             "Per row, the sums of x^2 and of (x - (q - zero_point) * scale)^2 (float64).");

static PyObject *py_rows_sqerr(PyObject *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"x", "q", "scale", "zero_point", "nthreads", NULL};
    static const int qtypes[] = {NPY_INT8, NPY_UINT8};
    PyObject *x_obj, *q_obj, *s_obj, *z_obj, *result = NULL;
    int nthreads = 1, per_row = 0;
    PyArrayObject *x = NULL, *q = NULL, *scale = NULL, *zp = NULL, *sx = NULL, *se = NULL;
    (void)self;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOOO|i:rows_sqerr", kwlist, &x_obj, &q_obj, &s_obj, &z_obj,
                                     &nthreads))
        return NULL;
    if (!check_threads(nthreads)) return NULL;
    if (!(x = contiguous_array(x_obj, "x", src_types, 4, 2, src_expected))) goto fail;
    if (!(q = contiguous_array(q_obj, "q", qtypes, 2, 2, "int8 or uint8"))) goto fail;
    if (!PyArray_SAMESHAPE(x, q)) {
        PyErr_SetString(PyExc_ValueError, "x and q must have the same shape");
        goto fail;
    }
    if (!qparam_arrays(s_obj, z_obj, PyArray_DIM(q, 0), &scale, &zp, &per_row)) goto fail;
    npy_intp rows = PyArray_DIM(x, 0);
    if (!(sx = (PyArrayObject *)PyArray_ZEROS(1, &rows, NPY_FLOAT64, 0))) goto fail;
    if (!(se = (PyArrayObject *)PyArray_ZEROS(1, &rows, NPY_FLOAT64, 0))) goto fail;
    Py_BEGIN_ALLOW_THREADS
    mq_rows_sqerr(PyArray_DATA(x), src_kind(x), PyArray_DATA(q), PyArray_TYPE(q) == NPY_INT8, rows,
                  PyArray_DIM(x, 1), PyArray_DATA(scale), PyArray_DATA(zp), per_row, PyArray_DATA(sx),
                  PyArray_DATA(se), nthreads);
    Py_END_ALLOW_THREADS
    result = Py_BuildValue("OO", sx, se);
fail:
    Py_XDECREF(x);
    Py_XDECREF(q);
    Py_XDECREF(scale);
    Py_XDECREF(zp);
    Py_XDECREF(sx);
    Py_XDECREF(se);
    return result;
}

PyDoc_STRVAR(dequantize_rows_doc,
             "dequantize_rows(q, scale, zero_point, nthreads=1) -> float32 array\n\n"
             "(q - zero_point) * scale per row; q is a 2-D int8 or uint8 array.");

static PyObject *py_dequantize_rows(PyObject *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"q", "scale", "zero_point", "nthreads", NULL};
    static const int qtypes[] = {NPY_INT8, NPY_UINT8};
    PyObject *q_obj, *s_obj, *z_obj, *result = NULL;
    int nthreads = 1, per_row = 0;
    PyArrayObject *q = NULL, *scale = NULL, *zp = NULL, *out = NULL;
    (void)self;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOO|i:dequantize_rows", kwlist, &q_obj, &s_obj, &z_obj, &nthreads))
        return NULL;
    if (!check_threads(nthreads)) return NULL;
    if (!(q = contiguous_array(q_obj, "q", qtypes, 2, 2, "int8 or uint8"))) goto fail;
    if (!qparam_arrays(s_obj, z_obj, PyArray_DIM(q, 0), &scale, &zp, &per_row)) goto fail;
    if (!(out = (PyArrayObject *)PyArray_EMPTY(2, PyArray_DIMS(q), NPY_FLOAT32, 0))) goto fail;
    int is_signed = PyArray_TYPE(q) == NPY_INT8;
    if (PyArray_SIZE(out) > 0) { /* (no visit of the rows of an empty array: there may be ~2^63) */
        Py_BEGIN_ALLOW_THREADS
        mq_rows_dequantize(PyArray_DATA(q), is_signed, PyArray_DIM(q, 0), PyArray_DIM(q, 1), PyArray_DATA(scale),
                           PyArray_DATA(zp), per_row, PyArray_DATA(out), nthreads);
        Py_END_ALLOW_THREADS
    }
    result = (PyObject *)out;
    out = NULL;
fail:
    Py_XDECREF(q);
    Py_XDECREF(scale);
    Py_XDECREF(zp);
    Py_XDECREF(out);
    return result;
}

/* ---- int8 matmul: packing and the linear entry points ------------------------ */

/* The kernels keep int32 accumulators: |255 * 128 * kp| and the zero-point
 * correction stay far inside int32 up to this K. */
#define MQ_MAX_LINEAR_K 32768

/* The packed weight and column sums to write: fresh arrays when out_obj is
 * None, else the caller's (packed, w_sum) pair checked for exactly these
 * sizes.  New references in *packed and *w_sum; 0 with an exception set. */
static int packed_outputs(PyObject *out_obj, const char *fname, npy_intp size, npy_intp np_, PyArrayObject **packed,
                          PyArrayObject **w_sum) {
    if (out_obj == Py_None) {
        *packed = (PyArrayObject *)PyArray_EMPTY(1, &size, NPY_INT8, 0);
        *w_sum = *packed ? (PyArrayObject *)PyArray_EMPTY(1, &np_, NPY_INT32, 0) : NULL;
        return *w_sum != NULL;
    }
    PyObject *p_obj, *s_obj;
    if (!PyTuple_Check(out_obj) || PyTuple_GET_SIZE(out_obj) != 2) {
        PyErr_Format(PyExc_TypeError, "%s: out must be a (packed, w_sum) tuple", fname);
        return 0;
    }
    p_obj = PyTuple_GET_ITEM(out_obj, 0);
    s_obj = PyTuple_GET_ITEM(out_obj, 1);
    if (!PyArray_Check(p_obj) || !PyArray_Check(s_obj) || PyArray_TYPE((PyArrayObject *)p_obj) != NPY_INT8 ||
        PyArray_TYPE((PyArrayObject *)s_obj) != NPY_INT32 || !PyArray_IS_C_CONTIGUOUS((PyArrayObject *)p_obj) ||
        !PyArray_IS_C_CONTIGUOUS((PyArrayObject *)s_obj) || !PyArray_ISWRITEABLE((PyArrayObject *)p_obj) ||
        !PyArray_ISWRITEABLE((PyArrayObject *)s_obj) || !PyArray_ISBEHAVED((PyArrayObject *)s_obj) ||
        !PyArray_ISNOTSWAPPED((PyArrayObject *)s_obj) || PyArray_SIZE((PyArrayObject *)p_obj) != size ||
        PyArray_SIZE((PyArrayObject *)s_obj) != np_) {
        PyErr_Format(PyExc_ValueError, "%s: out must be (int8 array of %zd, int32 array of %zd), C-contiguous and "
                     "writeable", fname, (Py_ssize_t)size, (Py_ssize_t)np_);
        return 0;
    }
    Py_INCREF(p_obj);
    Py_INCREF(s_obj);
    *packed = (PyArrayObject *)p_obj;
    *w_sum = (PyArrayObject *)s_obj;
    return 1;
}

PyDoc_STRVAR(pack_int8_doc,
             "pack_int8(w, nthreads=1, out=None) -> (packed, w_sum, has_m128)\n\n"
             "out: an optional (packed, w_sum) pair of C-contiguous int8 / int32 arrays of exactly\n"
             "those sizes to write into (then returned as they are).\n"
             "Packs a 2-D int8 weight [n, k] into panels of 16 output channels with K\n"
             "interleaved in groups of 4 (int8, 1-D, round_up(n,16) * round_up(k,4) bytes,\n"
             "zero padded; see docs/formats.md), its column sums (int32 [round_up(n,16)])\n"
             "and whether any weight is -128.");

static PyObject *py_pack_int8(PyObject *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"w", "nthreads", "out", NULL};
    static const int i8[] = {NPY_INT8};
    PyObject *w_obj, *out_obj = Py_None, *result = NULL;
    PyArrayObject *w = NULL, *packed = NULL, *w_sum = NULL, *scratch = NULL;
    int nthreads = 1;
    (void)self;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O|iO:pack_int8", kwlist, &w_obj, &nthreads, &out_obj)) return NULL;
    if (!check_threads(nthreads)) return NULL;
    if (!(w = contiguous_array(w_obj, "w", i8, 1, 2, "int8"))) goto fail;
    npy_intp n = PyArray_DIM(w, 0), k = PyArray_DIM(w, 1), np_, size;
    if (!packed_int8_sizes(n, k, "pack_int8", &np_, &size)) goto fail;
    if (!packed_outputs(out_obj, "pack_int8", size, np_, &packed, &w_sum)) goto fail;
    npy_intp panels = np_ / MQ_PANEL;
    if (!(scratch = (PyArrayObject *)PyArray_EMPTY(1, &panels, NPY_UINT8, 0))) goto fail;
    int has_m128;
    Py_BEGIN_ALLOW_THREADS
    has_m128 = mq_pack_int8(PyArray_DATA(w), n, k, PyArray_DATA(packed), PyArray_DATA(w_sum), PyArray_DATA(scratch),
                            nthreads);
    Py_END_ALLOW_THREADS
    result = Py_BuildValue("OON", packed, w_sum, PyBool_FromLong(has_m128));
fail:
    Py_XDECREF(scratch);
    Py_XDECREF(w);
    Py_XDECREF(packed);
    Py_XDECREF(w_sum);
    return result;
}

static int check_int8_range(int qmin, int qmax, const char *fname) {
    if (qmin < 0 && qmin >= -128 && qmax <= 127 && qmin < qmax) return 1;
    PyErr_Format(PyExc_ValueError, "%s needs a signed int8 range (-128 <= qmin < 0, qmin < qmax <= 127), got [%d, %d]",
                 fname, qmin, qmax);
    return 0;
}

PyDoc_STRVAR(packed_check_doc,
             "packed_check(packed, n, k, nthreads=1) -> (column_sums, has_m128, padding_nonzero)\n\n"
             "For packed int8 buffers of an [n, k] weight (one group) read from a file: the column\n"
             "sums of the packed bytes (int32 [round_up(n,16)]), whether some byte is -128,\n"
             "and whether a padding byte is not 0.");

static PyObject *py_packed_check(PyObject *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"packed", "n", "k", "nthreads", NULL};
    static const int i8[] = {NPY_INT8};
    PyObject *p_obj, *result = NULL;
    long long n, k;
    int nthreads = 1;
    PyArrayObject *packed = NULL, *sums = NULL, *scratch = NULL;
    (void)self;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OLL|i:packed_check", kwlist, &p_obj, &n, &k, &nthreads)) return NULL;
    if (!check_threads(nthreads)) return NULL;
    if (n < 1 || k < 1 || n > INT32_MAX || k > INT32_MAX) {
        PyErr_Format(PyExc_ValueError, "need 1 <= n, k < 2^31, got n=%lld k=%lld", n, k);
        return NULL;
    }
    if (!(packed = contiguous_array(p_obj, "packed", i8, 1, 1, "int8"))) return NULL;
    npy_intp np_ = mq_round_up(n, MQ_PANEL), panels = np_ / MQ_PANEL;
    if (PyArray_SIZE(packed) != np_ * mq_round_up(k, MQ_KGROUP)) {
        PyErr_Format(PyExc_ValueError, "packed has %zd bytes, expected %lld for a [%lld, %lld] weight",
                     (Py_ssize_t)PyArray_SIZE(packed), (long long)(np_ * mq_round_up(k, MQ_KGROUP)), n, k);
        goto fail;
    }
    if (!(sums = (PyArrayObject *)PyArray_EMPTY(1, &np_, NPY_INT32, 0))) goto fail;
    if (!(scratch = (PyArrayObject *)PyArray_EMPTY(1, &panels, NPY_UINT8, 0))) goto fail;
    int flags;
    Py_BEGIN_ALLOW_THREADS
    flags = mq_packed_check(PyArray_DATA(packed), n, k, PyArray_DATA(sums), PyArray_DATA(scratch), nthreads);
    Py_END_ALLOW_THREADS
    result = Py_BuildValue("ONN", sums, PyBool_FromLong(flags & 1), PyBool_FromLong((flags >> 1) & 1));
fail:
    Py_XDECREF(packed);
    Py_XDECREF(sums);
    Py_XDECREF(scratch);
    return result;
}

/* The arrays a quantize_pack_int8* call fills. */
typedef struct {
    PyArrayObject *packed, *w_sum, *scale, *zp, *scratch, *sx, *se;
} qpack_outputs;

static void qpack_outputs_clear(qpack_outputs *o) {
    Py_XDECREF(o->packed);
    Py_XDECREF(o->w_sum);
    Py_XDECREF(o->scale);
    Py_XDECREF(o->zp);
    Py_XDECREF(o->scratch);
    Py_XDECREF(o->sx);
    Py_XDECREF(o->se);
}

static int qpack_outputs_new(qpack_outputs *o, PyObject *out_obj, const char *fname, npy_intp n, npy_intp k,
                             int with_error) {
    npy_intp np_, size;
    if (!packed_int8_sizes(n, k, fname, &np_, &size)) return 0;
    npy_intp panels = np_ / MQ_PANEL;
    if (!packed_outputs(out_obj, fname, size, np_, &o->packed, &o->w_sum)) return 0;
    if (!(o->scale = (PyArrayObject *)PyArray_EMPTY(1, &n, NPY_FLOAT32, 0))) return 0;
    if (!(o->zp = (PyArrayObject *)PyArray_EMPTY(1, &n, NPY_INT32, 0))) return 0;
    if (!(o->scratch = (PyArrayObject *)PyArray_EMPTY(1, &panels, NPY_UINT8, 0))) return 0;
    if (with_error) {
        if (!(o->sx = (PyArrayObject *)PyArray_ZEROS(1, &n, NPY_FLOAT64, 0))) return 0;
        if (!(o->se = (PyArrayObject *)PyArray_ZEROS(1, &n, NPY_FLOAT64, 0))) return 0;
    }
    return 1;
}

static PyObject *qpack_result(qpack_outputs *o, int64_t bad, int has_m128) {
    if (bad == -2) return PyErr_NoMemory();
    return Py_BuildValue("OOOONNOO", o->packed, o->w_sum, o->scale, o->zp, PyBool_FromLong(has_m128),
                         bad_row_obj(bad), o->sx ? (PyObject *)o->sx : Py_None, o->se ? (PyObject *)o->se : Py_None);
}

#define QPACK_DATA(o) PyArray_DATA((o).scale), PyArray_DATA((o).zp), PyArray_DATA((o).packed), \
    PyArray_DATA((o).w_sum), PyArray_DATA((o).scratch), (o).sx ? PyArray_DATA((o).sx) : NULL, \
    (o).se ? PyArray_DATA((o).se) : NULL

PyDoc_STRVAR(quantize_pack_int8_doc,
             "quantize_pack_int8(x, qmin, qmax, symmetric, with_error=False, nthreads=1, out=None)\n"
             "    -> (packed, w_sum, scale, zero_point, has_m128, bad_row, sum_x2, sum_err2)\n\n"
             "Per-channel int8 quantization of a 2-D weight x [n, k] (float32, float16 or\n"
             "bf16 bits) straight into the packed layout: the same bytes as\n"
             "quantize_rows_fused followed by pack_int8, in one pass per 16-row panel.\n"
             "qmin..qmax must be a signed int8 range.  out: an optional (packed, w_sum)\n"
             "pair as for pack_int8.  bad_row is the first row holding NaN/Inf (its\n"
             "channel is packed as zeros), or -1.  sum_x2 / sum_err2 as for\n"
             "quantize_rows_fused (None unless with_error).");

static PyObject *py_quantize_pack_int8(PyObject *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"x", "qmin", "qmax", "symmetric", "with_error", "nthreads", "out", NULL};
    PyObject *x_obj, *out_obj = Py_None, *result = NULL;
    int qmin, qmax, symmetric, with_error = 0, nthreads = 1;
    PyArrayObject *x = NULL;
    qpack_outputs o = {0};
    (void)self;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "Oiip|piO:quantize_pack_int8", kwlist, &x_obj, &qmin, &qmax,
                                     &symmetric, &with_error, &nthreads, &out_obj))
        return NULL;
    if (!check_threads(nthreads) || !check_int8_range(qmin, qmax, "quantize_pack_int8")) return NULL;
    if (!(x = contiguous_array(x_obj, "x", src_types, 4, 2, src_expected))) goto fail;
    npy_intp n = PyArray_DIM(x, 0), k = PyArray_DIM(x, 1);
    if (n < 1 || k < 1) {
        PyErr_Format(PyExc_ValueError, "x must have at least one row and one column, got [%zd, %zd]", (Py_ssize_t)n,
                     (Py_ssize_t)k);
        goto fail;
    }
    if (!qpack_outputs_new(&o, out_obj, "quantize_pack_int8", n, k, with_error)) goto fail;
    int64_t bad;
    int has_m128 = 0;
    Py_BEGIN_ALLOW_THREADS
    bad = mq_quantize_pack_int8(PyArray_DATA(x), src_kind(x), n, k, qmin, qmax, symmetric, QPACK_DATA(o), &has_m128,
                                nthreads);
    Py_END_ALLOW_THREADS
    result = qpack_result(&o, bad, has_m128);
fail:
    Py_XDECREF(x);
    qpack_outputs_clear(&o);
    return result;
}

PyDoc_STRVAR(quantize_pack_int8_file_doc,
             "quantize_pack_int8_file(fd, offset, rows, cols, dtype, qmin, qmax, symmetric, with_error=False,\n"
             "                        nthreads=1, out=None)\n"
             "    -> (packed, w_sum, scale, zero_point, has_m128, bad_row, sum_x2, sum_err2)\n\n"
             "quantize_pack_int8 of the [rows, cols] weight stored row after row at byte\n"
             "offset of the open file fd, read with pread (nothing is memory-mapped).\n"
             "dtype: 'float32', 'float16' or 'bfloat16'.  ValueError when the file is\n"
             "too short for it, OSError when a read fails.");

static PyObject *py_quantize_pack_int8_file(PyObject *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"fd", "offset", "rows", "cols", "dtype", "qmin", "qmax", "symmetric", "with_error",
                             "nthreads", "out", NULL};
    PyObject *out_obj = Py_None, *result = NULL;
    int fd, qmin, qmax, symmetric, with_error = 0, nthreads = 1;
    long long offset, rows, cols;
    const char *dtype;
    qpack_outputs o = {0};
    (void)self;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "iLLLsiip|piO:quantize_pack_int8_file", kwlist, &fd, &offset, &rows,
                                     &cols, &dtype, &qmin, &qmax, &symmetric, &with_error, &nthreads, &out_obj))
        return NULL;
    if (!check_threads(nthreads) || !check_int8_range(qmin, qmax, "quantize_pack_int8_file")) return NULL;
    mq_src_t kind;
    if (!strcmp(dtype, "float32")) kind = MQ_SRC_F32;
    else if (!strcmp(dtype, "float16")) kind = MQ_SRC_F16;
    else if (!strcmp(dtype, "bfloat16")) kind = MQ_SRC_BF16;
    else {
        PyErr_Format(PyExc_ValueError, "dtype must be 'float32', 'float16' or 'bfloat16', got '%.50s'", dtype);
        return NULL;
    }
    if (fd < 0 || offset < 0 || rows < 1 || cols < 1 || rows > INT32_MAX || cols > INT32_MAX) {
        PyErr_Format(PyExc_ValueError, "need fd >= 0, offset >= 0 and 1 <= rows, cols < 2^31, got fd=%d offset=%lld "
                     "rows=%lld cols=%lld", fd, offset, rows, cols);
        return NULL;
    }
    /* rows * cols * elsize and offset + that could pass int64: checked, so "end" is exact */
    long long nbytes, end;
    if (__builtin_mul_overflow(rows * cols, (long long)mq_src_size(kind), &nbytes) ||
        __builtin_add_overflow(offset, nbytes, &end)) {
        PyErr_Format(PyExc_ValueError, "a [%lld, %lld] %s weight at offset %lld lies past any file size", rows, cols,
                     dtype, offset);
        return NULL;
    }
    struct stat st;
    if (fstat(fd, &st) != 0) return PyErr_SetFromErrno(PyExc_OSError);
    if (end > (long long)st.st_size) {
        PyErr_Format(PyExc_ValueError, "the file has %lld bytes, too short for a [%lld, %lld] %s weight at offset "
                     "%lld", (long long)st.st_size, rows, cols, dtype, offset);
        return NULL;
    }
    if (!qpack_outputs_new(&o, out_obj, "quantize_pack_int8_file", (npy_intp)rows, (npy_intp)cols, with_error))
        goto fail;
    int64_t bad;
    int has_m128 = 0, read_error = 0;
    Py_BEGIN_ALLOW_THREADS
    bad = mq_quantize_pack_int8_file(fd, offset, kind, rows, cols, qmin, qmax, symmetric, QPACK_DATA(o), &has_m128,
                                     &read_error, nthreads);
    Py_END_ALLOW_THREADS
    if (bad == -3) {
        if (read_error == -1)
            PyErr_Format(PyExc_ValueError, "the file ended before the weight's last row (truncated while read?)");
        else {
            errno = read_error;
            PyErr_SetFromErrno(PyExc_OSError);
        }
        goto fail;
    }
    result = qpack_result(&o, bad, has_m128);
fail:
    qpack_outputs_clear(&o);
    return result;
}

/* The packed weight's companions, checked against n and k.  New references
 * in *packed, *scale, *zp (NULL when all zero-points are 0), *bias (NULL
 * when None), *w_sum (when w_sum_obj is given). */
static int linear_weight_arrays(PyObject *packed_obj, PyObject *w_sum_obj, PyObject *scale_obj, PyObject *zp_obj,
                                PyObject *bias_obj, npy_intp n, npy_intp k, npy_intp groups, PyArrayObject **packed,
                                PyArrayObject **w_sum, PyArrayObject **scale, PyArrayObject **zp,
                                PyArrayObject **bias) {
    static const int i8[] = {NPY_INT8}, i32[] = {NPY_INT32}, f32[] = {NPY_FLOAT32};
    if (n < 1) {
        PyErr_Format(PyExc_ValueError, "out_features must be >= 1, got %zd", (Py_ssize_t)n);
        return 0;
    }
    if (k < 1 || k > MQ_MAX_LINEAR_K) {
        PyErr_Format(PyExc_ValueError, "in_features must be in 1..%d for the int8 kernels, got %zd",
                     MQ_MAX_LINEAR_K, (Py_ssize_t)k);
        return 0;
    }
    if (groups < 1 || n % groups) {
        PyErr_Format(PyExc_ValueError, "out_features %zd is not divisible by groups=%zd", (Py_ssize_t)n,
                     (Py_ssize_t)groups);
        return 0;
    }
    /* each group's block is padded on its own */
    npy_intp np_ = mq_size_mul(groups, mq_size_round_up(n / groups, MQ_PANEL));
    npy_intp packed_size = mq_size_mul(np_, mq_size_round_up(k, MQ_KGROUP));
    if (packed_size < 0) {
        PyErr_Format(PyExc_OverflowError, "out_features = %zd (groups = %zd) is far too large: the packed weight's "
                     "size does not fit in 64 bits", (Py_ssize_t)n, (Py_ssize_t)groups);
        return 0;
    }
    if (!(*packed = contiguous_array(packed_obj, "packed", i8, 1, 1, "int8"))) return 0;
    if (PyArray_DIM(*packed, 0) != packed_size) {
        PyErr_Format(PyExc_ValueError, "packed has %zd bytes, expected %zd for a [%zd, %zd] weight",
                     (Py_ssize_t)PyArray_DIM(*packed, 0), (Py_ssize_t)packed_size, (Py_ssize_t)n, (Py_ssize_t)k);
        return 0;
    }
    if (w_sum_obj) {
        if (!(*w_sum = contiguous_array(w_sum_obj, "w_sum", i32, 1, 1, "int32"))) return 0;
        if (PyArray_DIM(*w_sum, 0) != np_) {
            PyErr_Format(PyExc_ValueError, "w_sum must have %zd entries, got %zd", (Py_ssize_t)np_,
                         (Py_ssize_t)PyArray_DIM(*w_sum, 0));
            return 0;
        }
    }
    if (!(*scale = contiguous_array(scale_obj, "w_scale", f32, 1, 1, "float32"))) return 0;
    if (PyArray_DIM(*scale, 0) != n) {
        PyErr_Format(PyExc_ValueError, "w_scale must have %zd entries (out_features), got %zd", (Py_ssize_t)n,
                     (Py_ssize_t)PyArray_DIM(*scale, 0));
        return 0;
    }
    if (!(*zp = contiguous_array(zp_obj, "w_zero_point", i32, 1, 1, "int32"))) return 0;
    if (PyArray_DIM(*zp, 0) != n) {
        PyErr_Format(PyExc_ValueError, "w_zero_point must have %zd entries, got %zd", (Py_ssize_t)n,
                     (Py_ssize_t)PyArray_DIM(*zp, 0));
        return 0;
    }
    const int32_t *z = PyArray_DATA(*zp);
    int any = 0;
    for (npy_intp i = 0; i < n; i++) {
        if (z[i] < -128 || z[i] > 127) {
            PyErr_Format(PyExc_ValueError, "w_zero_point[%zd] = %d is outside int8's -128..127", (Py_ssize_t)i, z[i]);
            return 0;
        }
        any |= z[i] != 0;
    }
    if (!any) Py_CLEAR(*zp);
    if (bias_obj != Py_None) {
        if (!(*bias = contiguous_array(bias_obj, "bias", f32, 1, 1, "float32"))) return 0;
        if (PyArray_DIM(*bias, 0) != n) {
            PyErr_Format(PyExc_ValueError, "bias must have %zd entries, got %zd", (Py_ssize_t)n,
                         (Py_ssize_t)PyArray_DIM(*bias, 0));
            return 0;
        }
    }
    return 1;
}

static void *data_or_null(PyArrayObject *a) { return a ? PyArray_DATA(a) : NULL; }

PyDoc_STRVAR(linear_int8_doc,
             "linear_int8(x, packed, w_sum, w_scale, w_zero_point, bias, out_features, w_has_m128,\n"
             "            mode='dynamic', nthreads=1) -> float32 array [m, out_features]\n\n"
             "y = x @ W.T + bias with W the packed int8 weight (see pack_int8).  x is a 2-D\n"
             "float32 / float16 / int16 (bf16 bits) array whose rows may be strided.\n"
             "mode 'dynamic': x quantized per row to int8 (-127..127), int32 accumulation,\n"
             "one fused epilogue.  mode 'weight_only': x in fp32 times W dequantized in\n"
             "registers.  mode 'int8_acc': x is already int8 and the exact int32\n"
             "accumulators sum_k x * (w - zero_point) are returned (int32 array; tests).");

static PyObject *py_linear_int8(PyObject *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"x", "packed", "w_sum", "w_scale", "w_zero_point", "bias", "out_features",
                             "w_has_m128", "mode", "nthreads", NULL};
    PyObject *x_obj, *packed_obj, *w_sum_obj, *scale_obj, *zp_obj, *bias_obj, *result = NULL;
    Py_ssize_t n;
    int has_m128, nthreads = 1;
    const char *mode = "dynamic";
    PyArrayObject *x = NULL, *packed = NULL, *w_sum = NULL, *scale = NULL, *zp = NULL, *bias = NULL, *y = NULL;
    (void)self;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOOOOOnp|si:linear_int8", kwlist, &x_obj, &packed_obj, &w_sum_obj,
                                     &scale_obj, &zp_obj, &bias_obj, &n, &has_m128, &mode, &nthreads))
        return NULL;
    if (!check_threads(nthreads)) return NULL;
    int is_acc = !strcmp(mode, "int8_acc"), is_wo = !strcmp(mode, "weight_only");
    if (!is_acc && !is_wo && strcmp(mode, "dynamic")) {
        PyErr_Format(PyExc_ValueError, "mode must be 'dynamic', 'weight_only' or 'int8_acc', got '%s'", mode);
        return NULL;
    }
    if (!PyArray_Check(x_obj) || PyArray_NDIM((PyArrayObject *)x_obj) != 2) {
        PyErr_SetString(PyExc_ValueError, "x must be a 2-D numpy.ndarray [rows, in_features]");
        return NULL;
    }
    /* dtype first (no copy), then: rows may be strided (a view); elements
     * within a row must be contiguous and aligned, else a contiguous copy */
    PyArrayObject *xv = (PyArrayObject *)x_obj;
    {
        int t = PyArray_TYPE(xv), ok = is_acc ? t == NPY_INT8 : 0;
        for (int i = 0; !is_acc && i < 4; i++) ok |= t == src_types[i];
        if (ok && !PyArray_ISNOTSWAPPED(xv)) {
            PyErr_SetString(PyExc_TypeError, "x must be in native byte order");
            return NULL;
        }
        if (!ok) {
            PyErr_Format(PyExc_TypeError, "x must have dtype %s, got %.50s", is_acc ? "int8" : src_expected,
                         PyArray_DESCR(xv)->typeobj->tp_name);
            return NULL;
        }
    }
    int elem = (int)PyArray_ITEMSIZE(xv);
    if (!PyArray_ISALIGNED(xv) || (PyArray_DIM(xv, 1) > 1 && PyArray_STRIDE(xv, 1) != elem) ||
        (PyArray_DIM(xv, 0) > 1 && (PyArray_STRIDE(xv, 0) % elem || PyArray_STRIDE(xv, 0) < 0)))
        x = (PyArrayObject *)PyArray_FROM_OF((PyObject *)xv, NPY_ARRAY_IN_ARRAY); /* GETCONTIGUOUS keeps a
                                                                                   misaligned C-order array */
    else {
        Py_INCREF(xv);
        x = xv;
    }
    if (!x) return NULL;
    npy_intp m = PyArray_DIM(x, 0), k = PyArray_DIM(x, 1);
    npy_intp ldx = m > 1 ? PyArray_STRIDE(x, 0) / elem : k;
    /* rows of a broadcast x cost nothing here, but the driver's int8 copy has m * round_up(k, 4) bytes */
    if (!size_fits(mq_size_mul(m, mq_size_round_up(k, MQ_KGROUP)), "linear_int8", "rows x in_features")) goto fail;
    if (!linear_weight_arrays(packed_obj, w_sum_obj, scale_obj, zp_obj, bias_obj, n, k, 1, &packed, &w_sum, &scale,
                              &zp, &bias))
        goto fail;
    npy_intp dims[2] = {m, n};
    if (!(y = (PyArrayObject *)PyArray_EMPTY(2, dims, is_acc ? NPY_INT32 : NPY_FLOAT32, 0))) goto fail;
    int status;
    mq_src_t kind = src_kind(x);
    Py_BEGIN_ALLOW_THREADS
    if (is_wo)
        status = mq_linear_weight_only(PyArray_DATA(x), kind, m, k, ldx, PyArray_DATA(packed), PyArray_DATA(scale),
                                       data_or_null(zp), data_or_null(bias), n, PyArray_DATA(y), nthreads);
    else
        status = mq_linear_dynamic(PyArray_DATA(x), kind, is_acc, m, k, ldx, PyArray_DATA(packed),
                                   PyArray_DATA(w_sum), PyArray_DATA(scale), data_or_null(zp), has_m128,
                                   data_or_null(bias), n, is_acc ? NULL : PyArray_DATA(y),
                                   is_acc ? PyArray_DATA(y) : NULL, nthreads);
    Py_END_ALLOW_THREADS
    if (status < 0) {
        PyErr_NoMemory();
        goto fail;
    }
    result = (PyObject *)y;
    y = NULL;
fail:
    Py_XDECREF(x);
    Py_XDECREF(packed);
    Py_XDECREF(w_sum);
    Py_XDECREF(scale);
    Py_XDECREF(zp);
    Py_XDECREF(bias);
    Py_XDECREF(y);
    return result;
}

PyDoc_STRVAR(conv2d_int8_doc,
             "conv2d_int8(x, packed, w_sum, w_scale, w_zero_point, bias, out_channels, w_has_m128,\n"
             "            kernel, stride, padding, dilation, groups, nthreads=1, nchw=False)\n"
             "    -> float32 [rows, out_channels], or [batch, out_channels, out_h, out_w] with nchw\n\n"
             "Dynamic int8 Conv2d: x is a 4-D NCHW float32 / float16 / int16 (bf16 bits) array;\n"
             "each image is quantized with one symmetric int8 scale, im2col'd in int8 and\n"
             "multiplied per group with the packed weight (pack_int8 of each group's\n"
             "[out/groups, in/groups*kh*kw] block, concatenated).  kernel, stride, padding\n"
             "and dilation are (h, w) pairs.  Rows are the output pixels in (n, h, w) order;\n"
             "nchw=True writes the same values as an NCHW array instead (transposed in C).");

/* Conv sizes far below this keep every product in the size arithmetic
 * (kernel * dilation, channels * kernel area, ...) far inside int64. */
#define MQ_MAX_CONV_ARG (1L << 20)

static int pair_arg(PyObject *obj, const char *what, long lo, npy_intp out[2]) {
    long a, b;
    if (!PyArg_ParseTuple(obj, "ll", &a, &b)) {
        PyErr_Clear();
        PyErr_Format(PyExc_TypeError, "%s must be a pair of ints", what);
        return 0;
    }
    if (a < lo || b < lo || a > MQ_MAX_CONV_ARG || b > MQ_MAX_CONV_ARG) {
        PyErr_Format(PyExc_ValueError, "%s must be in %ld..%ld, got (%ld, %ld)", what, lo, MQ_MAX_CONV_ARG, a, b);
        return 0;
    }
    out[0] = a;
    out[1] = b;
    return 1;
}

static PyObject *py_conv2d_int8(PyObject *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"x", "packed", "w_sum", "w_scale", "w_zero_point", "bias", "out_channels",
                             "w_has_m128", "kernel", "stride", "padding", "dilation", "groups", "nthreads",
                             "nchw", NULL};
    PyObject *x_obj, *packed_obj, *w_sum_obj, *scale_obj, *zp_obj, *bias_obj, *kernel_obj, *stride_obj, *pad_obj,
        *dil_obj, *result = NULL;
    Py_ssize_t n, groups;
    int has_m128, nthreads = 1, nchw = 0;
    npy_intp ks[2], st[2], pd[2], dl[2];
    PyArrayObject *x = NULL, *packed = NULL, *w_sum = NULL, *scale = NULL, *zp = NULL, *bias = NULL, *y = NULL;
    (void)self;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOOOOOnpOOOOn|ip:conv2d_int8", kwlist, &x_obj, &packed_obj,
                                     &w_sum_obj, &scale_obj, &zp_obj, &bias_obj, &n, &has_m128, &kernel_obj,
                                     &stride_obj, &pad_obj, &dil_obj, &groups, &nthreads, &nchw))
        return NULL;
    if (!check_threads(nthreads)) return NULL;
    if (!pair_arg(kernel_obj, "kernel", 1, ks) || !pair_arg(stride_obj, "stride", 1, st) ||
        !pair_arg(pad_obj, "padding", 0, pd) || !pair_arg(dil_obj, "dilation", 1, dl))
        return NULL;
    if (!(x = contiguous_array(x_obj, "x", src_types, 4, 4, src_expected))) goto fail;
    npy_intp batch = PyArray_DIM(x, 0), channels = PyArray_DIM(x, 1), height = PyArray_DIM(x, 2),
             width = PyArray_DIM(x, 3);
    if (groups < 1 || channels % groups) {
        PyErr_Format(PyExc_ValueError, "in_channels %zd is not divisible by groups=%zd", (Py_ssize_t)channels,
                     (Py_ssize_t)groups);
        goto fail;
    }
    npy_intp out_h = (height + 2 * pd[0] - dl[0] * (ks[0] - 1) - 1) / st[0] + 1;
    npy_intp out_w = (width + 2 * pd[1] - dl[1] * (ks[1] - 1) - 1) / st[1] + 1;
    if (height + 2 * pd[0] < dl[0] * (ks[0] - 1) + 1 || width + 2 * pd[1] < dl[1] * (ks[1] - 1) + 1) {
        PyErr_SetString(PyExc_ValueError, "the (padded) input is smaller than the dilated kernel");
        goto fail;
    }
    npy_intp k_conv;
    if (__builtin_mul_overflow(channels / groups, ks[0] * ks[1], &k_conv) || k_conv > MQ_MAX_LINEAR_K) {
        PyErr_Format(PyExc_ValueError, "in_channels/groups * kernel area must be at most %d", MQ_MAX_LINEAR_K);
        goto fail;
    }
    if (!linear_weight_arrays(packed_obj, w_sum_obj, scale_obj, zp_obj, bias_obj, n, k_conv,
                              groups, &packed, &w_sum, &scale, &zp, &bias))
        goto fail;
    /* output rows and the int8 im2col buffer: products of the batch and the padded image sizes */
    npy_intp m = mq_size_mul(mq_size_mul(batch, out_h), out_w);
    if (m < 0 || mq_size_mul(m, mq_size_round_up(k_conv, MQ_KGROUP)) < 0) {
        PyErr_Format(PyExc_OverflowError, "conv2d_int8: %zd images of %zd x %zd output pixels (x %zd inputs each) "
                     "do not fit in 64-bit sizes; reduce the batch or the padding", (Py_ssize_t)batch,
                     (Py_ssize_t)out_h, (Py_ssize_t)out_w, (Py_ssize_t)k_conv);
        goto fail;
    }
    npy_intp dims[2] = {m, n}, dims_nchw[4] = {batch, n, out_h, out_w};
    if (!(y = (PyArrayObject *)(nchw ? PyArray_EMPTY(4, dims_nchw, NPY_FLOAT32, 0)
                                     : PyArray_EMPTY(2, dims, NPY_FLOAT32, 0))))
        goto fail;
    int status;
    mq_src_t kind = src_kind(x);
    Py_BEGIN_ALLOW_THREADS
    status = mq_conv2d_dynamic(PyArray_DATA(x), kind, batch, channels, height, width, ks[0], ks[1], st[0], st[1],
                               pd[0], pd[1], dl[0], dl[1], groups, PyArray_DATA(packed), PyArray_DATA(w_sum),
                               PyArray_DATA(scale), data_or_null(zp), has_m128, data_or_null(bias), n,
                               PyArray_DATA(y), nchw, nthreads);
    Py_END_ALLOW_THREADS
    if (status < 0) {
        PyErr_NoMemory();
        goto fail;
    }
    result = (PyObject *)y;
    y = NULL;
fail:
    Py_XDECREF(x);
    Py_XDECREF(packed);
    Py_XDECREF(w_sum);
    Py_XDECREF(scale);
    Py_XDECREF(zp);
    Py_XDECREF(bias);
    Py_XDECREF(y);
    return result;
}

PyDoc_STRVAR(set_threading_backend_doc,
             "set_threading_backend(name) -> previous\n\n"
             "How the kernels use threads: \"pool\" (default: persistent helpers that the\n"
             "caller never waits for to start; safe across fork) or \"pthreads\" (threads\n"
             "started and joined per call).  Raises ValueError for any other name.");

static PyObject *py_set_threading_backend(PyObject *self, PyObject *arg) {
    (void)self;
    const char *name = PyUnicode_Check(arg) ? PyUnicode_AsUTF8(arg) : NULL;
    if (!name) {
        if (!PyErr_Occurred()) PyErr_SetString(PyExc_TypeError, "set_threading_backend() takes a str");
        return NULL;
    }
    const char *previous = mq_threading_backend();
    if (mq_set_threading_backend(name) != 0) {
        PyErr_Format(PyExc_ValueError, "unknown threading backend %R: use \"pool\" or \"pthreads\"", arg);
        return NULL;
    }
    return PyUnicode_FromString(previous);
}

PyDoc_STRVAR(set_gemv_max_rows_doc,
             "set_gemv_max_rows(rows) -> previous\n\n"
             "Tuning: up to this many rows (0..8) the dynamic int8 kernels use the one-panel\n"
             "GEMV tile, above it the 8-row x 3-panel tile; -1 (default) chooses by thread\n"
             "count.  For benchmarks.");

static PyObject *py_set_gemv_max_rows(PyObject *self, PyObject *arg) {
    (void)self;
    long rows = PyLong_AsLong(arg);
    if (rows == -1 && PyErr_Occurred()) return NULL;
    if (rows < -1 || rows > 8) {
        PyErr_Format(PyExc_ValueError, "rows must be in -1..8, got %ld", rows);
        return NULL;
    }
    long previous = (long)mq_gemv_max_rows;
    mq_gemv_max_rows = rows;
    return PyLong_FromLong(previous);
}

PyDoc_STRVAR(linear_kernels_doc, "linear_kernels() -> dict: the int8 matmul kernels the active ISA level uses.");

static PyObject *py_linear_kernels(PyObject *self, PyObject *unused) {
    (void)self;
    (void)unused;
    const mq_kernels *kt = mq_active();
    return Py_BuildValue("{s:s,s:s,s:i,s:s}", "dynamic", kt->qgemm_name, "weight_only", kt->wgemm_name,
                         "max_in_features", MQ_MAX_LINEAR_K, "threads", mq_threading_backend());
}

PyDoc_STRVAR(use_vnni256_doc,
             "use_vnni256_for_tests(on) -> None\n\n"
             "Tests only: make the AVX2 level's dynamic int8 matmul the 256-bit VNNI kernel (the\n"
             "AVX-VNNI one) in its EVEX encoding, so it runs on AVX-512 VNNI CPUs; False restores.\n"
             "Raises RuntimeError when this CPU or build cannot.");

static PyObject *py_use_vnni256(PyObject *self, PyObject *arg) {
    (void)self;
    int on = PyObject_IsTrue(arg);
    if (on < 0) return NULL;
    if (mq_use_vnni256_for_tests(on) < 0) {
        PyErr_SetString(PyExc_RuntimeError, "the EVEX 256-bit VNNI kernel needs AVX-512 VNNI + VL (CPU and build)");
        return NULL;
    }
    Py_RETURN_NONE;
}

PyDoc_STRVAR(use_maddubs_doc,
             "use_maddubs_for_tests(on) -> None\n\n"
             "Tests and benchmarks: make the AVX2 level's dynamic int8 matmul the maddubs kernel\n"
             "(what an AVX2 CPU without AVX-VNNI runs) even where this CPU has AVX-VNNI; False\n"
             "restores. Raises RuntimeError when this CPU has no AVX2.");

static PyObject *py_use_maddubs(PyObject *self, PyObject *arg) {
    (void)self;
    int on = PyObject_IsTrue(arg);
    if (on < 0) return NULL;
    if (mq_use_maddubs_for_tests(on) < 0) {
        PyErr_SetString(PyExc_RuntimeError, "the maddubs kernel needs AVX2");
        return NULL;
    }
    Py_RETURN_NONE;
}

PyDoc_STRVAR(cpu_info_doc, "cpu_info() -> dict of the CPU features mono-quant dispatches on, and the ISA levels.");

static PyObject *py_cpu_info(PyObject *self, PyObject *unused) {
    static const char *features[] = {"avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512dq",
                                     "avx512_vnni", "avx512_bf16", "avx_vnni", "amx_int8"};
    (void)self;
    (void)unused;
    PyObject *d = PyDict_New();
    if (!d) return NULL;
    for (size_t i = 0; i < sizeof(features) / sizeof(features[0]); i++) {
        PyObject *v = PyBool_FromLong(mq_cpu_has(features[i]));
        if (!v || PyDict_SetItemString(d, features[i], v) < 0) {
            Py_XDECREF(v);
            Py_DECREF(d);
            return NULL;
        }
        Py_DECREF(v);
    }
    PyObject *best = PyUnicode_FromString(isa_names[mq_cpu_best_isa()]);
    PyObject *active = PyUnicode_FromString(isa_names[mq_active_isa()]);
    int err = !best || !active || PyDict_SetItemString(d, "best_isa", best) < 0 ||
              PyDict_SetItemString(d, "active_isa", active) < 0;
    Py_XDECREF(best);
    Py_XDECREF(active);
    if (err) {
        Py_DECREF(d);
        return NULL;
    }
    return d;
}

PyDoc_STRVAR(set_isa_doc,
             "set_isa(name) -> previous name\n\n"
             "Force the kernel level: 'scalar', 'avx2' or 'avx512' (must be supported by this CPU).");

static PyObject *py_set_isa(PyObject *self, PyObject *arg) {
    (void)self;
    const char *name = PyUnicode_Check(arg) ? PyUnicode_AsUTF8(arg) : NULL;
    if (!name) {
        if (!PyErr_Occurred()) PyErr_SetString(PyExc_TypeError, "set_isa() takes a str: 'scalar', 'avx2' or 'avx512'");
        return NULL;
    }
    const char *previous = isa_names[mq_active_isa()];
    for (int i = 0; i < MQ_ISA_COUNT; i++)
        if (!strcmp(name, isa_names[i])) {
            if (mq_set_isa((mq_isa_t)i) < 0) {
                PyErr_Format(PyExc_ValueError, "this CPU does not support the '%s' kernels (best is '%s')", name,
                             isa_names[mq_cpu_best_isa()]);
                return NULL;
            }
            return PyUnicode_FromString(previous);
        }
    PyErr_Format(PyExc_ValueError, "unknown ISA '%s': expected 'scalar', 'avx2' or 'avx512'", name);
    return NULL;
}

PyDoc_STRVAR(get_isa_doc, "get_isa() -> name of the kernel level in use.");

static PyObject *py_get_isa(PyObject *self, PyObject *unused) {
    (void)self;
    (void)unused;
    return PyUnicode_FromString(isa_names[mq_active_isa()]);
}

/* ==== INT4 entry points (int4.c) ============================================ */

static int check_group(long long group) {
    if (group < MQ_Q4_BLOCK || group % MQ_Q4_BLOCK != 0 || group > (1LL << 30)) {
        PyErr_Format(PyExc_ValueError, "group must be a positive multiple of %d, got %lld", MQ_Q4_BLOCK, group);
        return 0;
    }
    return 1;
}

/* The three int4 weight arrays, checked against each other: packed uint8
 * [rows, kpad/2], scale fp16 bits [rows, ceil(kpad/group)], zero uint8 (same
 * shape); cols must round up to kpad (a multiple of 32). */
static int q4_weight_arrays(PyObject *p_obj, PyObject *s_obj, PyObject *z_obj, long long cols, long long group,
                            PyArrayObject **packed, PyArrayObject **scale, PyArrayObject **zero) {
    static const int u8[] = {NPY_UINT8}, h16[] = {NPY_FLOAT16, NPY_INT16, NPY_UINT16};
    if (!(*packed = contiguous_array(p_obj, "packed", u8, 1, 2, "uint8"))) return 0;
    if (!(*scale = contiguous_array(s_obj, "scale", h16, 3, 2, "float16 (or its int16 bits)"))) return 0;
    if (!(*zero = contiguous_array(z_obj, "zero_point", u8, 1, 2, "uint8"))) return 0;
    npy_intp rows = PyArray_DIM(*packed, 0), ngroups = PyArray_DIM(*scale, 1);
    /* a uint8 dimension of a zero-row array can be near 2^63: twice it would wrap */
    long long kpad = mq_size_mul(PyArray_DIM(*packed, 1), 2), padded = mq_size_round_up(kpad, group);
    if (!size_fits(padded, "int4 weight", "the packed row length")) return 0;
    if (PyArray_DIM(*scale, 0) != rows || PyArray_DIM(*zero, 0) != rows || PyArray_DIM(*zero, 1) != ngroups ||
        kpad % MQ_Q4_BLOCK != 0 || (long long)ngroups != padded / group) {
        PyErr_Format(PyExc_ValueError,
                     "inconsistent int4 weight: packed %zdx%zd, scale %zdx%zd, zero_point %zdx%zd with group %lld "
                     "(need packed [rows, kpad/2] with kpad a multiple of 32, scale and zero_point "
                     "[rows, ceil(kpad/group)])",
                     (Py_ssize_t)rows, (Py_ssize_t)PyArray_DIM(*packed, 1), (Py_ssize_t)PyArray_DIM(*scale, 0),
                     (Py_ssize_t)ngroups, (Py_ssize_t)PyArray_DIM(*zero, 0), (Py_ssize_t)PyArray_DIM(*zero, 1),
                     group);
        return 0;
    }
    if (cols < 0 || cols <= kpad - MQ_Q4_BLOCK || cols > kpad) {
        PyErr_Format(PyExc_ValueError, "cols = %lld does not match a packed row of %lld codes", cols, kpad);
        return 0;
    }
    return 1;
}

PyDoc_STRVAR(q4_quantize_doc,
             "q4_quantize(x, group, symmetric, method, with_error=False, nthreads=1)\n"
             "    -> (packed, scale, zero_point, bad_row, sum_x2, sum_err2)\n\n"
             "Group-wise int4 quantization of each row of a 2-D array (float32, float16 or int16\n"
             "bf16 bits); groups of `group` columns (a multiple of 32); rows zero-padded to a\n"
             "multiple of 32 columns, so the last group may be shorter.\n"
             "method: 0 round-to-nearest, 1 MSE range search, 2 MSE + HQQ refinement.\n"
             "packed: uint8 [rows, kpad/2]; scale: float16 [rows, groups]; zero_point: uint8 u4.4.\n"
             "bad_row: first row holding NaN/Inf (its output is undefined), or -1.");

static PyObject *py_q4_quantize(PyObject *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"x", "group", "symmetric", "method", "with_error", "nthreads", NULL};
    PyObject *x_obj, *result = NULL;
    long long group;
    int symmetric, method, with_error = 0, nthreads = 1;
    PyArrayObject *x = NULL, *packed = NULL, *scale = NULL, *zero = NULL, *sx = NULL, *se = NULL;
    (void)self;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OLpi|pi:q4_quantize", kwlist, &x_obj, &group, &symmetric, &method,
                                     &with_error, &nthreads))
        return NULL;
    if (!check_group(group) || !check_threads(nthreads)) return NULL;
    if (method < MQ_Q4_RTN || method > MQ_Q4_HQQ) {
        PyErr_Format(PyExc_ValueError, "method must be 0 (rtn), 1 (mse) or 2 (hqq), got %d", method);
        return NULL;
    }
    if (!(x = contiguous_array(x_obj, "x", src_types, 4, 2, src_expected))) goto fail;
    npy_intp rows = PyArray_DIM(x, 0), cols = PyArray_DIM(x, 1);
    if (cols == 0) {
        PyErr_SetString(PyExc_ValueError, "x has no columns to quantize");
        goto fail;
    }
    npy_intp kpad = mq_size_round_up(cols, MQ_Q4_BLOCK), padded = mq_size_round_up(kpad, group);
    if (!size_fits(padded, "q4_quantize", "the padded row length")) goto fail;
    npy_intp ngroups = padded / group;
    npy_intp pdims[2] = {rows, kpad / 2}, gdims[2] = {rows, ngroups};
    if (!(packed = (PyArrayObject *)PyArray_ZEROS(2, pdims, NPY_UINT8, 0))) goto fail;
    if (!(scale = (PyArrayObject *)PyArray_ZEROS(2, gdims, NPY_FLOAT16, 0))) goto fail;
    if (!(zero = (PyArrayObject *)PyArray_ZEROS(2, gdims, NPY_UINT8, 0))) goto fail;
    if (with_error) {
        if (!(sx = (PyArrayObject *)PyArray_ZEROS(1, &rows, NPY_FLOAT64, 0))) goto fail;
        if (!(se = (PyArrayObject *)PyArray_ZEROS(1, &rows, NPY_FLOAT64, 0))) goto fail;
    }
    int64_t bad;
    Py_BEGIN_ALLOW_THREADS
    bad = mq_q4_quantize(PyArray_DATA(x), src_kind(x), rows, cols, group, symmetric, (mq_q4_method_t)method,
                         PyArray_DATA(packed), PyArray_DATA(scale), PyArray_DATA(zero), sx ? PyArray_DATA(sx) : NULL,
                         se ? PyArray_DATA(se) : NULL, nthreads);
    Py_END_ALLOW_THREADS
    if (bad == -2) {
        PyErr_NoMemory();
        goto fail;
    }
    result = Py_BuildValue("OOONOO", packed, scale, zero, bad_row_obj(bad), sx ? (PyObject *)sx : Py_None,
                           se ? (PyObject *)se : Py_None);
fail:
    Py_XDECREF(x);
    Py_XDECREF(packed);
    Py_XDECREF(scale);
    Py_XDECREF(zero);
    Py_XDECREF(sx);
    Py_XDECREF(se);
    return result;
}

PyDoc_STRVAR(q4_dequantize_doc,
             "q4_dequantize(packed, scale, zero_point, cols, group, nthreads=1) -> float32 [rows, cols]\n\n"
             "(code - zero_point / 16) * scale for the arrays q4_quantize returned.");

static PyObject *py_q4_dequantize(PyObject *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"packed", "scale", "zero_point", "cols", "group", "nthreads", NULL};
    PyObject *p_obj, *s_obj, *z_obj, *result = NULL;
    long long cols, group;
    int nthreads = 1;
    PyArrayObject *packed = NULL, *scale = NULL, *zero = NULL, *out = NULL;
    (void)self;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOOLL|i:q4_dequantize", kwlist, &p_obj, &s_obj, &z_obj, &cols, &group,
                                     &nthreads))
        return NULL;
    if (!check_group(group) || !check_threads(nthreads)) return NULL;
    if (!q4_weight_arrays(p_obj, s_obj, z_obj, cols, group, &packed, &scale, &zero)) goto fail;
    npy_intp dims[2] = {PyArray_DIM(packed, 0), (npy_intp)cols};
    if (!(out = (PyArrayObject *)PyArray_EMPTY(2, dims, NPY_FLOAT32, 0))) goto fail;
    Py_BEGIN_ALLOW_THREADS
    mq_q4_dequantize(PyArray_DATA(packed), PyArray_DATA(scale), PyArray_DATA(zero), dims[0],
                     PyArray_DIM(packed, 1) * 2, group, cols, PyArray_DATA(out), nthreads);
    Py_END_ALLOW_THREADS
    result = (PyObject *)out;
    out = NULL;
fail:
    Py_XDECREF(packed);
    Py_XDECREF(scale);
    Py_XDECREF(zero);
    Py_XDECREF(out);
    return result;
}

PyDoc_STRVAR(q4_linear_doc,
             "q4_linear(x, packed, scale, zero_point, group, bias=None, int8_activations=-1, nthreads=1)\n"
             "    -> float32 [m, rows]\n\n"
             "x @ W.T (+ bias) with W the int4 weight, streamed packed; x is 2-D float32 or\n"
             "int16 bf16 bits [m, cols]; bias float32 [rows] or None.  int8_activations: 0 keeps\n"
             "fp32 activations (weights dequantized in registers), 1 quantizes activations to\n"
             "int8 per group for integer dot products (needs group and the padded row to be\n"
             "multiples of 128, group <= 4096), -1 picks int8 where the active kernel level has\n"
             "an integer kernel (AVX2, AVX-512 VNNI), the\n"
             "shape allows and the batch is at least q4_int8_min_m() rows.");

static PyObject *py_q4_linear(PyObject *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"x", "packed", "scale", "zero_point", "group", "bias", "int8_activations", "nthreads",
                             NULL};
    static const int xtypes[] = {NPY_FLOAT32, NPY_INT16, NPY_UINT16}, f32[] = {NPY_FLOAT32};
    PyObject *x_obj, *p_obj, *s_obj, *z_obj, *b_obj = Py_None, *result = NULL;
    long long group;
    int nthreads = 1, act_mode = -1;
    PyArrayObject *x = NULL, *packed = NULL, *scale = NULL, *zero = NULL, *bias = NULL, *out = NULL;
    (void)self;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOOOL|Oii:q4_linear", kwlist, &x_obj, &p_obj, &s_obj, &z_obj, &group,
                                     &b_obj, &act_mode, &nthreads))
        return NULL;
    if (!check_group(group) || !check_threads(nthreads)) return NULL;
    if (act_mode < -1 || act_mode > 1) {
        PyErr_Format(PyExc_ValueError, "int8_activations must be -1 (auto), 0 or 1, got %d", act_mode);
        return NULL;
    }
    if (!(x = contiguous_array(x_obj, "x", xtypes, 3, 2, "float32 or int16/uint16 (bf16 bits)"))) goto fail;
    if (!q4_weight_arrays(p_obj, s_obj, z_obj, PyArray_DIM(x, 1), group, &packed, &scale, &zero)) goto fail;
    npy_intp rows = PyArray_DIM(packed, 0), kpad = PyArray_DIM(packed, 1) * 2; /* checked above */
    /* the driver's fp32 copy of x: m rows of kpad values and one sum per group */
    if (!size_fits(mq_size_mul(mq_size_mul(PyArray_DIM(x, 0), mq_size_add(kpad, PyArray_DIM(scale, 1))),
                               (int64_t)sizeof(float)), "q4_linear", "the activation buffer"))
        goto fail;
    if (act_mode == 1 && !mq_q4_int8_ok(PyArray_DIM(packed, 1) * 2, group)) {
        PyErr_Format(PyExc_ValueError,
                     "int8 activations need group and the padded row (%zd) to be multiples of 128, group <= 4096; "
                     "got group %lld", (Py_ssize_t)(PyArray_DIM(packed, 1) * 2), group);
        goto fail;
    }
    if (b_obj != Py_None) {
        if (!(bias = contiguous_array(b_obj, "bias", f32, 1, 1, "float32"))) goto fail;
        if (PyArray_DIM(bias, 0) != rows) {
            PyErr_Format(PyExc_ValueError, "bias has %zd entries, the weight %zd rows", (Py_ssize_t)PyArray_DIM(bias, 0),
                         (Py_ssize_t)rows);
            goto fail;
        }
    }
    npy_intp dims[2] = {PyArray_DIM(x, 0), rows};
    if (!(out = (PyArrayObject *)PyArray_EMPTY(2, dims, NPY_FLOAT32, 0))) goto fail;
    int rc;
    Py_BEGIN_ALLOW_THREADS
    rc = mq_q4_linear(PyArray_DATA(x), PyArray_TYPE(x) == NPY_FLOAT32 ? MQ_SRC_F32 : MQ_SRC_BF16, dims[0],
                      PyArray_DIM(x, 1), PyArray_DATA(packed), PyArray_DATA(scale), PyArray_DATA(zero), rows,
                      PyArray_DIM(packed, 1) * 2, group, bias ? PyArray_DATA(bias) : NULL, PyArray_DATA(out),
                      act_mode, nthreads);
    Py_END_ALLOW_THREADS
    if (rc < 0) {
        PyErr_NoMemory();
        goto fail;
    }
    result = (PyObject *)out;
    out = NULL;
fail:
    Py_XDECREF(x);
    Py_XDECREF(packed);
    Py_XDECREF(scale);
    Py_XDECREF(zero);
    Py_XDECREF(bias);
    Py_XDECREF(out);
    return result;
}

PyDoc_STRVAR(q4_int8_min_m_doc,
             "q4_int8_min_m(m=-1) -> previous value\n\n"
             "Automatic mode (int8_activations=-1) uses int8 activations from batch size m on;\n"
             "m >= 1 sets it, -1 only reads it.");

/* A batch-size threshold read (m = -1) or set (m >= 1); returns the previous value. */
static PyObject *batch_threshold(PyObject *args, const char *format, int64_t *threshold) {
    long long m = -1;
    if (!PyArg_ParseTuple(args, format, &m)) return NULL;
    long long previous = (long long)*threshold;
    if (m != -1) {
        if (m < 1) {
            PyErr_Format(PyExc_ValueError, "m must be >= 1 (or -1 to read), got %lld", m);
            return NULL;
        }
        *threshold = m;
    }
    return PyLong_FromLongLong(previous);
}

static PyObject *py_q4_int8_min_m(PyObject *self, PyObject *args) {
    (void)self;
    return batch_threshold(args, "|L:q4_int8_min_m", &mq_q4_int8_min_m);
}

PyDoc_STRVAR(q4_panel_min_m_doc,
             "q4_panel_min_m(m=-1) -> previous value\n\n"
             "The batch size from which q4_linear dequantizes weight panels instead of running\n"
             "the GEMV kernel; m >= 1 sets it (for tests and benchmarks), -1 only reads it.");

static PyObject *py_q4_panel_min_m(PyObject *self, PyObject *args) {
    (void)self;
    return batch_threshold(args, "|L:q4_panel_min_m", &mq_q4_panel_min_m);
}
/* ==== end INT4 ================================================================ */

/* ---- observers (calibration statistics, csrc/observers.c) -------------------
 * Kept together in one block so they move with the calibration code. */

/* obj must already be a C-contiguous, aligned, writeable, native 1-D ndarray
 * of `type` with `length` elements (any length when negative): it is updated
 * in place, so a converted copy would silently drop the result. */
static PyArrayObject *inout_vector(PyObject *obj, const char *what, int type, const char *type_name,
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
    return a;
}

static const int obs_f32[] = {NPY_FLOAT32}, obs_f64[] = {NPY_FLOAT64};

PyDoc_STRVAR(obs_minmax_doc,
             "obs_minmax(x, min, max, reference=False) -> nonfinite\n\n"
             "x: float32 [outer, channels, inner] (NCHW activations as N, C, H*W; per tensor 1, 1, n).\n"
             "min / max: float32 [channels], lowered / raised in place (start at +inf / -inf).\n"
             "NaN/Inf are skipped; returns how many.  reference=True runs the scalar twin.");

static PyObject *py_obs_minmax(PyObject *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"x", "min", "max", "reference", NULL};
    PyObject *x_obj, *mn_obj, *mx_obj, *result = NULL;
    int reference = 0;
    PyArrayObject *x = NULL, *mn = NULL, *mx = NULL;
    (void)self;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOO|p:obs_minmax", kwlist, &x_obj, &mn_obj, &mx_obj, &reference))
        return NULL;
    if (!(x = contiguous_array(x_obj, "x", obs_f32, 1, 3, "float32"))) goto fail;
    npy_intp outer = PyArray_DIM(x, 0), channels = PyArray_DIM(x, 1), inner = PyArray_DIM(x, 2);
    if (!(mn = inout_vector(mn_obj, "min", NPY_FLOAT32, "float32", channels))) goto fail;
    if (!(mx = inout_vector(mx_obj, "max", NPY_FLOAT32, "float32", channels))) goto fail;
    int64_t bad;
    Py_BEGIN_ALLOW_THREADS
    bad = (reference ? mq_ref_obs_minmax : mq_obs_minmax)(PyArray_DATA(x), outer, channels, inner, PyArray_DATA(mn),
                                                          PyArray_DATA(mx));
    Py_END_ALLOW_THREADS
    result = PyLong_FromLongLong((long long)bad);
fail:
    Py_XDECREF(x);
    Py_XDECREF(mn);
    Py_XDECREF(mx);
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

static PyObject *py_obs_hist_update(PyObject *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"x", "counts", "k0", "exp", "has_data", "min", "max", NULL};
    PyObject *x_obj, *counts_obj, *result = NULL;
    long long k0;
    int exp, has_data;
    float mn, mx;
    PyArrayObject *x = NULL, *counts = NULL;
    (void)self;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOLipff:obs_hist_update", kwlist, &x_obj, &counts_obj, &k0, &exp,
                                     &has_data, &mn, &mx))
        return NULL;
    if (!(x = contiguous_array(x_obj, "x", obs_f32, 1, 1, "float32"))) goto fail;
    if (!(counts = inout_vector(counts_obj, "counts", NPY_INT64, "int64", -1))) goto fail;
    npy_intp bins = PyArray_DIM(counts, 0);
    if (bins < MQ_HIST_MIN_BINS || bins > MQ_HIST_MAX_BINS) {
        PyErr_Format(PyExc_ValueError, "a histogram needs %d..%d bins, got %zd", MQ_HIST_MIN_BINS, MQ_HIST_MAX_BINS,
                     (Py_ssize_t)bins);
        goto fail;
    }
    mq_hist_grid grid = {.k0 = k0, .exp = exp, .has_data = has_data, .min = mn, .max = mx};
    if (has_data) {
        /* the grid decides where counts are written: check it is exactly the rule's */
        int ok = isfinite(mn) && isfinite(mx) && mn <= mx && exp == mq_obs_hist_exp(mn, mx, (int64_t)bins) &&
                 k0 == (long long)floor(ldexp((double)mn, -exp));
        if (!ok) {
            PyErr_Format(PyExc_ValueError, "histogram grid (k0=%lld, exp=%d, min=%g, max=%g) does not follow the "
                         "binning rule for %zd bins: the statistics are corrupt", k0, exp, (double)mn, (double)mx,
                         (Py_ssize_t)bins);
            goto fail;
        }
    }
    int64_t bad;
    float batch_min, batch_max;
    Py_BEGIN_ALLOW_THREADS
    bad = mq_obs_hist_update(PyArray_DATA(x), PyArray_DIM(x, 0), PyArray_DATA(counts), (int64_t)bins, &grid,
                             &batch_min, &batch_max);
    Py_END_ALLOW_THREADS
    if (bad < 0) {
        PyErr_NoMemory();
        goto fail;
    }
    result = Py_BuildValue("LiNddldd", (long long)grid.k0, (int)grid.exp, PyBool_FromLong(grid.has_data),
                           (double)grid.min, (double)grid.max, (long)bad, (double)batch_min, (double)batch_max);
fail:
    Py_XDECREF(x);
    Py_XDECREF(counts);
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
    PyArrayObject *h = NULL, *kl = NULL;
    (void)self;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OL|L:obs_entropy_search", kwlist, &h_obj, &levels, &stride))
        return NULL;
    if (levels < 2 || levels > 65536 || stride < 1) {
        PyErr_Format(PyExc_ValueError, "levels must be in 2..65536 and stride >= 1, got %lld and %lld", levels,
                     stride);
        return NULL;
    }
    if (!(h = contiguous_array(h_obj, "h", obs_f64, 1, 1, "float64"))) goto fail;
    npy_intp m = PyArray_DIM(h, 0), mp1 = m + 1;
    if (!(kl = (PyArrayObject *)PyArray_EMPTY(1, &mp1, NPY_FLOAT64, 0))) goto fail;
    int64_t best;
    Py_BEGIN_ALLOW_THREADS
    best = mq_obs_entropy_search(PyArray_DATA(h), m, levels, stride, PyArray_DATA(kl));
    Py_END_ALLOW_THREADS
    if (best < 0) {
        PyErr_NoMemory();
        goto fail;
    }
    result = Py_BuildValue("LO", (long long)best, kl);
fail:
    Py_XDECREF(h);
    Py_XDECREF(kl);
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
    PyArrayObject *h = NULL, *err = NULL;
    (void)self;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OddffiipL:obs_mse_search", kwlist, &h_obj, &lo, &width, &range_lo,
                                     &range_hi, &qmin, &qmax, &symmetric, &ncand))
        return NULL;
    if (!check_qrange(qmin, qmax)) return NULL;
    if (ncand < 1 || ncand > 1000000 || !(width > 0.0) || !isfinite(width) || !isfinite(lo) ||
        !isfinite(range_lo) || !isfinite(range_hi)) {
        PyErr_Format(PyExc_ValueError, "obs_mse_search needs 1..1e6 candidates, a finite positive width and finite "
                     "lo / range (got %lld, %g, %g, [%g, %g])", ncand, width, lo, (double)range_lo,
                     (double)range_hi);
        return NULL;
    }
    if (!(h = contiguous_array(h_obj, "h", obs_f64, 1, 1, "float64"))) goto fail;
    npy_intp nc = (npy_intp)ncand;
    if (!(err = (PyArrayObject *)PyArray_EMPTY(1, &nc, NPY_FLOAT64, 0))) goto fail;
    int64_t best;
    Py_BEGIN_ALLOW_THREADS
    best = mq_obs_mse_search(PyArray_DATA(h), PyArray_DIM(h, 0), lo, width, range_lo, range_hi, qmin, qmax,
                             symmetric, ncand, PyArray_DATA(err));
    Py_END_ALLOW_THREADS
    result = Py_BuildValue("LO", (long long)best, err);
fail:
    Py_XDECREF(h);
    Py_XDECREF(err);
    return result;
}

/* ---- end of the observers block ---------------------------------------------- */

static PyMethodDef module_methods[] = {
    {"rows_minmax", (PyCFunction)(void (*)(void))py_rows_minmax, METH_VARARGS | METH_KEYWORDS, rows_minmax_doc},
    {"choose_qparams", (PyCFunction)(void (*)(void))py_choose_qparams, METH_VARARGS | METH_KEYWORDS,
     choose_qparams_doc},
    {"quantize_rows", (PyCFunction)(void (*)(void))py_quantize_rows, METH_VARARGS | METH_KEYWORDS,
     quantize_rows_doc},
    {"quantize_rows_fused", (PyCFunction)(void (*)(void))py_quantize_rows_fused, METH_VARARGS | METH_KEYWORDS,
     quantize_rows_fused_doc},
    {"dequantize_rows", (PyCFunction)(void (*)(void))py_dequantize_rows, METH_VARARGS | METH_KEYWORDS,
     dequantize_rows_doc},
    {"rows_sqerr", (PyCFunction)(void (*)(void))py_rows_sqerr, METH_VARARGS | METH_KEYWORDS, rows_sqerr_doc},
    {"pack_int8", (PyCFunction)(void (*)(void))py_pack_int8, METH_VARARGS | METH_KEYWORDS, pack_int8_doc},
    {"quantize_pack_int8", (PyCFunction)(void (*)(void))py_quantize_pack_int8, METH_VARARGS | METH_KEYWORDS,
     quantize_pack_int8_doc},
    {"packed_check", (PyCFunction)(void (*)(void))py_packed_check, METH_VARARGS | METH_KEYWORDS, packed_check_doc},
    {"quantize_pack_int8_file", (PyCFunction)(void (*)(void))py_quantize_pack_int8_file,
     METH_VARARGS | METH_KEYWORDS, quantize_pack_int8_file_doc},
    {"linear_int8", (PyCFunction)(void (*)(void))py_linear_int8, METH_VARARGS | METH_KEYWORDS, linear_int8_doc},
    {"conv2d_int8", (PyCFunction)(void (*)(void))py_conv2d_int8, METH_VARARGS | METH_KEYWORDS, conv2d_int8_doc},
    {"linear_kernels", py_linear_kernels, METH_NOARGS, linear_kernels_doc},
    {"set_threading_backend", py_set_threading_backend, METH_O, set_threading_backend_doc},
    {"set_gemv_max_rows", py_set_gemv_max_rows, METH_O, set_gemv_max_rows_doc},
    {"use_vnni256_for_tests", py_use_vnni256, METH_O, use_vnni256_doc},
    {"use_maddubs_for_tests", py_use_maddubs, METH_O, use_maddubs_doc},
    {"cpu_info", py_cpu_info, METH_NOARGS, cpu_info_doc},
    {"set_isa", py_set_isa, METH_O, set_isa_doc},
    {"get_isa", py_get_isa, METH_NOARGS, get_isa_doc},
    {"q4_quantize", (PyCFunction)(void (*)(void))py_q4_quantize, METH_VARARGS | METH_KEYWORDS, q4_quantize_doc},
    {"q4_dequantize", (PyCFunction)(void (*)(void))py_q4_dequantize, METH_VARARGS | METH_KEYWORDS,
     q4_dequantize_doc},
    {"q4_linear", (PyCFunction)(void (*)(void))py_q4_linear, METH_VARARGS | METH_KEYWORDS, q4_linear_doc},
    {"q4_panel_min_m", py_q4_panel_min_m, METH_VARARGS, q4_panel_min_m_doc},
    {"q4_int8_min_m", py_q4_int8_min_m, METH_VARARGS, q4_int8_min_m_doc},
    /* observers (calibration) */
    {"obs_minmax", (PyCFunction)(void (*)(void))py_obs_minmax, METH_VARARGS | METH_KEYWORDS, obs_minmax_doc},
    {"obs_hist_update", (PyCFunction)(void (*)(void))py_obs_hist_update, METH_VARARGS | METH_KEYWORDS,
     obs_hist_update_doc},
    {"obs_entropy_search", (PyCFunction)(void (*)(void))py_obs_entropy_search, METH_VARARGS | METH_KEYWORDS,
     obs_entropy_search_doc},
    {"obs_mse_search", (PyCFunction)(void (*)(void))py_obs_mse_search, METH_VARARGS | METH_KEYWORDS,
     obs_mse_search_doc},
    {NULL, NULL, 0, NULL},
};

static int module_exec(PyObject *m) {
    if (_import_array() < 0) return -1;
    /* the kernel tables are built once, here, with the GIL held: later calls
     * from threads running without the GIL only read them */
    mq_active();
    if (PyModule_AddFunctions(m, mq_static_methods) < 0) return -1;
    /* MONO_QUANT_ISA=scalar|avx2|avx512 caps the kernels (debugging, CI on
     * other CPUs); an unsupported value is ignored with a warning. */
    const char *forced = getenv("MONO_QUANT_ISA");
    if (forced && *forced) {
        int done = 0;
        for (int i = 0; i < MQ_ISA_COUNT && !done; i++)
            if (!strcmp(forced, isa_names[i])) done = mq_set_isa((mq_isa_t)i) == 0;
        if (!done &&
            PyErr_WarnFormat(PyExc_RuntimeWarning, 1, "MONO_QUANT_ISA=%s is unknown or unsupported here; using '%s'",
                             forced, isa_names[mq_active_isa()]) < 0)
            return -1;
    }
    return PyModule_AddStringConstant(m, "ISA_LEVELS", "scalar,avx2,avx512");
}

static PyModuleDef_Slot module_slots[] = {
    {Py_mod_exec, module_exec},
    {0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT,
    .m_name = "mono_quant._C",
    .m_doc = "mono-quant's C kernels (quantization, packing, quantized matmul).",
    .m_size = 0,
    .m_methods = module_methods,
    .m_slots = module_slots,
};

PyMODINIT_FUNC PyInit__C(void) { return PyModuleDef_Init(&module_def); }
