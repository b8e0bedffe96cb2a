/* bind_quant.c - per-row int8 quantization: min/max, qparams, quantize,
 * dequantize and the squared error behind SQNR (quant.c drivers). */
#include <math.h>

#include "bind.h"

static const int f32[] = {NPY_FLOAT32}, q8[] = {NPY_INT8, NPY_UINT8};

PyDoc_STRVAR(rows_minmax_doc,
             "rows_minmax(x, nthreads=1) -> (min, max, bad_row)\n\n"
             "Per-row min and max of a 2-D array (float32, float16, or int16 bf16 bits).\n"
             "bad_row is the first row holding NaN/Inf, or -1; such rows get NaN min/max.");

static PyObject *py_rows_minmax(PyObject *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"x", "nthreads", NULL};
    PyObject *x_obj, *result = NULL;
    int nthreads = 1;
    mq_refs refs = {0};
    PyArrayObject *x, *mn, *mx;
    (void)self;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O|i:rows_minmax", kwlist, &x_obj, &nthreads)) return NULL;
    if (!mq_check_threads(nthreads)) return NULL;
    if (!(x = mq_array_in(&refs, x_obj, "x", mq_src_types, 4, 2, mq_src_expected))) goto done;
    npy_intp rows = PyArray_DIM(x, 0), cols = PyArray_DIM(x, 1);
    if (!(mn = mq_array_new(&refs, 1, &rows, NPY_FLOAT32, 0))) goto done;
    if (!(mx = mq_array_new(&refs, 1, &rows, NPY_FLOAT32, 0))) goto done;
    int64_t bad;
    Py_BEGIN_ALLOW_THREADS
    bad = mq_rows_minmax(PyArray_DATA(x), mq_src_kind(x), rows, cols, PyArray_DATA(mn), PyArray_DATA(mx), nthreads);
    Py_END_ALLOW_THREADS
    result = Py_BuildValue("OON", mn, mx, mq_bad_row(bad));
done:
    mq_release(&refs);
    return result;
}

PyDoc_STRVAR(choose_qparams_doc,
             "choose_qparams(min, max, qmin, qmax, symmetric) -> (scale, zero_point)\n\n"
             "Scale (float32) and zero-point (int32) per entry of two float32 arrays, with\n"
             "torch MinMaxObserver's formula (scale floored at FLT_MIN, not float eps).");

static PyObject *py_choose_qparams(PyObject *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"min", "max", "qmin", "qmax", "symmetric", NULL};
    PyObject *mn_obj, *mx_obj, *result = NULL;
    int qmin, qmax, symmetric;
    mq_refs refs = {0};
    PyArrayObject *mn, *mx, *scale, *zp;
    (void)self;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOiip:choose_qparams", kwlist, &mn_obj, &mx_obj, &qmin, &qmax,
                                     &symmetric))
        return NULL;
    if (!mq_check_qrange(qmin, qmax) || !mq_check_symmetric_qrange(qmin, qmax, symmetric)) return NULL;
    if (!(mn = mq_array_in(&refs, mn_obj, "min", f32, 1, 1, "float32"))) goto done;
    if (!(mx = mq_array_in(&refs, mx_obj, "max", f32, 1, 1, "float32"))) goto done;
    npy_intp n = PyArray_DIM(mn, 0);
    if (PyArray_DIM(mx, 0) != n) {
        PyErr_SetString(PyExc_ValueError, "min and max must have the same length");
        goto done;
    }
    const float *a = PyArray_DATA(mn), *b = PyArray_DATA(mx);
    for (npy_intp i = 0; i < n; i++)
        if (!isfinite(a[i]) || !isfinite(b[i])) {
            PyErr_Format(PyExc_ValueError, "min/max[%zd] is not finite (NaN or Inf in the data?)", (Py_ssize_t)i);
            goto done;
        }
    for (npy_intp i = 0; i < n; i++)
        if (a[i] > b[i]) { /* (torch's observers assert min <= max too: no data gives such a range) */
            PyErr_Format(PyExc_ValueError, "min[%zd] > max[%zd]: not a range (swapped arguments?)", (Py_ssize_t)i,
                         (Py_ssize_t)i);
            goto done;
        }
    if (!(scale = mq_array_new(&refs, 1, &n, NPY_FLOAT32, 0))) goto done;
    if (!(zp = mq_array_new(&refs, 1, &n, NPY_INT32, 0))) goto done;
    float *s = PyArray_DATA(scale);
    int32_t *z = PyArray_DATA(zp);
    for (npy_intp i = 0; i < n; i++) mq_choose_qparams(a[i], b[i], qmin, qmax, symmetric, &s[i], &z[i]);
    result = Py_BuildValue("OO", scale, zp);
done:
    mq_release(&refs);
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
    mq_refs refs = {0};
    PyArrayObject *x, *scale, *zp, *q;
    (void)self;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOOii|pi:quantize_rows", kwlist, &x_obj, &s_obj, &z_obj, &qmin,
                                     &qmax, &use_fma, &nthreads))
        return NULL;
    if (!mq_check_qrange(qmin, qmax) || !mq_check_threads(nthreads)) return NULL;
    if (!(x = mq_array_in(&refs, x_obj, "x", mq_src_types, 4, 2, mq_src_expected))) goto done;
    if (!mq_qparam_arrays(&refs, s_obj, z_obj, PyArray_DIM(x, 0), &scale, &zp, &per_row)) goto done;
    const int32_t *z = PyArray_DATA(zp);
    for (npy_intp i = 0; i < PyArray_DIM(zp, 0); i++)
        if (z[i] < qmin || z[i] > qmax) {
            PyErr_Format(PyExc_ValueError, "zero_point[%zd] = %d is outside [%d, %d]", (Py_ssize_t)i, z[i], qmin,
                         qmax);
            goto done;
        }
    if (!(q = mq_array_new(&refs, 2, PyArray_DIMS(x), qmin < 0 ? NPY_INT8 : NPY_UINT8, 0))) goto done;
    /* an empty array may still have ~2^63 rows of no columns: visiting them would take years */
    if (PyArray_SIZE(q) > 0) {
        Py_BEGIN_ALLOW_THREADS
        mq_rows_quantize(PyArray_DATA(x), mq_src_kind(x), PyArray_DIM(x, 0), PyArray_DIM(x, 1), PyArray_DATA(scale),
                         PyArray_DATA(zp), per_row, qmin, qmax, use_fma, PyArray_DATA(q), nthreads);
        Py_END_ALLOW_THREADS
    }
    result = mq_return(q);
done:
    mq_release(&refs);
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
    mq_refs refs = {0};
    PyArrayObject *x, *scale, *zp, *q, *sx = NULL, *se = NULL;
    (void)self;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "Oiip|pi:quantize_rows_fused", kwlist, &x_obj, &qmin, &qmax,
                                     &symmetric, &with_error, &nthreads))
        return NULL;
    if (!mq_check_qrange(qmin, qmax) || !mq_check_symmetric_qrange(qmin, qmax, symmetric) ||
        !mq_check_threads(nthreads))
        return NULL;
    if (!(x = mq_array_in(&refs, x_obj, "x", mq_src_types, 4, 2, mq_src_expected))) goto done;
    npy_intp rows = PyArray_DIM(x, 0);
    if (!(scale = mq_array_new(&refs, 1, &rows, NPY_FLOAT32, 0))) goto done;
    if (!(zp = mq_array_new(&refs, 1, &rows, NPY_INT32, 0))) goto done;
    if (!(q = mq_array_new(&refs, 2, PyArray_DIMS(x), qmin < 0 ? NPY_INT8 : NPY_UINT8, 0))) goto done;
    if (with_error && (!(sx = mq_array_new(&refs, 1, &rows, NPY_FLOAT64, 1)) ||
                       !(se = mq_array_new(&refs, 1, &rows, NPY_FLOAT64, 1))))
        goto done;
    int64_t bad;
    Py_BEGIN_ALLOW_THREADS
    bad = mq_rows_quantize_fused(PyArray_DATA(x), mq_src_kind(x), rows, PyArray_DIM(x, 1), qmin, qmax, symmetric,
                                 PyArray_DATA(scale), PyArray_DATA(zp), PyArray_DATA(q), mq_data_or_null(sx),
                                 mq_data_or_null(se), nthreads);
    Py_END_ALLOW_THREADS
    result = Py_BuildValue("OOONOO", q, scale, zp, mq_bad_row(bad), mq_or_none(sx), mq_or_none(se));
done:
    mq_release(&refs);
    return result;
}

PyDoc_STRVAR(rows_sqerr_doc,
             "rows_sqerr(x, q, scale, zero_point, nthreads=1) -> (sum_x2, sum_err2)\n\n"
             "Per row, the sums of x^2 and of (x - (q - zero_point) * scale)^2 (float64).");

static PyObject *py_rows_sqerr(PyObject *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"x", "q", "scale", "zero_point", "nthreads", NULL};
    PyObject *x_obj, *q_obj, *s_obj, *z_obj, *result = NULL;
    int nthreads = 1, per_row = 0;
    mq_refs refs = {0};
    PyArrayObject *x, *q, *scale, *zp, *sx, *se;
    (void)self;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOOO|i:rows_sqerr", kwlist, &x_obj, &q_obj, &s_obj, &z_obj,
                                     &nthreads))
        return NULL;
    if (!mq_check_threads(nthreads)) return NULL;
    if (!(x = mq_array_in(&refs, x_obj, "x", mq_src_types, 4, 2, mq_src_expected))) goto done;
    if (!(q = mq_array_in(&refs, q_obj, "q", q8, 2, 2, "int8 or uint8"))) goto done;
    if (!PyArray_SAMESHAPE(x, q)) {
        PyErr_SetString(PyExc_ValueError, "x and q must have the same shape");
        goto done;
    }
    if (!mq_qparam_arrays(&refs, s_obj, z_obj, PyArray_DIM(q, 0), &scale, &zp, &per_row)) goto done;
    npy_intp rows = PyArray_DIM(x, 0);
    if (!(sx = mq_array_new(&refs, 1, &rows, NPY_FLOAT64, 1))) goto done;
    if (!(se = mq_array_new(&refs, 1, &rows, NPY_FLOAT64, 1))) goto done;
    Py_BEGIN_ALLOW_THREADS
    mq_rows_sqerr(PyArray_DATA(x), mq_src_kind(x), PyArray_DATA(q), PyArray_TYPE(q) == NPY_INT8, rows,
                  PyArray_DIM(x, 1), PyArray_DATA(scale), PyArray_DATA(zp), per_row, PyArray_DATA(sx),
                  PyArray_DATA(se), nthreads);
    Py_END_ALLOW_THREADS
    result = Py_BuildValue("OO", sx, se);
done:
    mq_release(&refs);
    return result;
}

PyDoc_STRVAR(dequantize_rows_doc,
             "dequantize_rows(q, scale, zero_point, nthreads=1, out=None) -> float32 array\n\n"
             "(q - zero_point) * scale per row; q is a 2-D int8 or uint8 array.  out: a float32\n"
             "array of q's shape, C-contiguous, aligned and writeable, apart from q, written and\n"
             "returned (a buffer kept across calls: no fresh pages to fault in per call).");

static PyObject *py_dequantize_rows(PyObject *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"q", "scale", "zero_point", "nthreads", "out", NULL};
    PyObject *q_obj, *s_obj, *z_obj, *out_obj = Py_None, *result = NULL;
    int nthreads = 1, per_row = 0;
    mq_refs refs = {0};
    PyArrayObject *q, *scale, *zp, *out;
    (void)self;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOO|iO:dequantize_rows", kwlist, &q_obj, &s_obj, &z_obj, &nthreads,
                                     &out_obj))
        return NULL;
    if (!mq_check_threads(nthreads)) return NULL;
    if (!(q = mq_array_in(&refs, q_obj, "q", q8, 2, 2, "int8 or uint8"))) goto done;
    if (!mq_qparam_arrays(&refs, s_obj, z_obj, PyArray_DIM(q, 0), &scale, &zp, &per_row)) goto done;
    out = out_obj == Py_None ? mq_array_new(&refs, 2, PyArray_DIMS(q), NPY_FLOAT32, 0)
                             : mq_float_out(&refs, out_obj, "dequantize_rows", PyArray_DIM(q, 0), PyArray_DIM(q, 1),
                                            (PyArrayObject *const[]){q, scale, zp}, 3);
    if (!out) goto done;
    int is_signed = PyArray_TYPE(q) == NPY_INT8;
    if (PyArray_SIZE(out) > 0) { /* (no visit of the rows of an empty array: there may be ~2^63) */
        Py_BEGIN_ALLOW_THREADS
        mq_rows_dequantize(PyArray_DATA(q), is_signed, PyArray_DIM(q, 0), PyArray_DIM(q, 1), PyArray_DATA(scale),
                           PyArray_DATA(zp), per_row, PyArray_DATA(out), nthreads);
        Py_END_ALLOW_THREADS
    }
    result = mq_return(out);
done:
    mq_release(&refs);
    return result;
}

PyDoc_STRVAR(quantize_activations_doc,
             "quantize_activations(x, reduce_range, encoding, kp=0) -> (q, scale, zero_point, sum)\n\n"
             "The dynamic int8 Linear's activation rows (the active level's act_rows): per-row\n"
             "symmetric int8 (-127..127), or with reduce_range 7-bit codes with a zero-point\n"
             "(zero_point None without).  encoding: 0 int8, 1 int8 + 128, 2 the 7-bit codes\n"
             "(reduce_range only).  q is uint8 [rows][kp] (kp >= cols, 0: cols), the padding\n"
             "encoding 0; sum (int32) the per-row sums of the int8 values.");

static PyObject *py_quantize_activations(PyObject *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"x", "reduce_range", "encoding", "kp", NULL};
    PyObject *x_obj, *result = NULL;
    int reduce_range, encoding;
    long long kp = 0;
    mq_refs refs = {0};
    PyArrayObject *x, *q, *scale, *zp = NULL, *sum;
    (void)self;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "Opi|L:quantize_activations", kwlist, &x_obj, &reduce_range,
                                     &encoding, &kp))
        return NULL;
    if (encoding < MQ_X_INT8 || encoding > (reduce_range ? MQ_X_U7 : MQ_X_INT8_PLUS_128)) {
        PyErr_SetString(PyExc_ValueError, "quantize_activations: encoding must be 0 (int8), 1 (int8 + 128) or, "
                                          "with reduce_range, 2 (7-bit codes)");
        return NULL;
    }
    if (!(x = mq_array_in(&refs, x_obj, "x", mq_src_types, 4, 2, mq_src_expected))) goto done;
    npy_intp rows = PyArray_DIM(x, 0), cols = PyArray_DIM(x, 1);
    if (kp == 0) kp = cols;
    if (cols > MQ_MAX_LINEAR_K) {
        PyErr_Format(PyExc_ValueError, "quantize_activations: at most %d columns (the Linear's limit), got %lld",
                     MQ_MAX_LINEAR_K, (long long)cols);
        goto done;
    }
    if (kp < cols || kp > (long long)cols + 64) {
        PyErr_Format(PyExc_ValueError, "quantize_activations: kp must be 0 or in [cols, cols + 64], got %lld", kp);
        goto done;
    }
    npy_intp qdims[2] = {rows, (npy_intp)kp};
    if (!(q = mq_array_new(&refs, 2, qdims, NPY_UINT8, 0))) goto done;
    if (!(scale = mq_array_new(&refs, 1, &rows, NPY_FLOAT32, 0))) goto done;
    if (reduce_range && !(zp = mq_array_new(&refs, 1, &rows, NPY_INT32, 0))) goto done;
    if (!(sum = mq_array_new(&refs, 1, &rows, NPY_INT32, 0))) goto done;
    const mq_src_t kind = mq_src_kind(x);
    Py_BEGIN_ALLOW_THREADS
    mq_active()->act_rows[kind](PyArray_DATA(x), (size_t)cols * mq_src_size(kind), rows, cols, kp, encoding,
                                PyArray_DATA(q), PyArray_DATA(scale), mq_data_or_null(zp), PyArray_DATA(sum));
    Py_END_ALLOW_THREADS
    result = Py_BuildValue("OOOO", q, scale, mq_or_none(zp), sum);
done:
    mq_release(&refs);
    return result;
}

PyMethodDef mq_quant_methods[] = {
    MQ_KW_METHOD(rows_minmax),
    MQ_KW_METHOD(choose_qparams),
    MQ_KW_METHOD(quantize_rows),
    MQ_KW_METHOD(quantize_rows_fused),
    MQ_KW_METHOD(dequantize_rows),
    MQ_KW_METHOD(rows_sqerr),
    MQ_KW_METHOD(quantize_activations),
    {NULL, NULL, 0, NULL},
};
