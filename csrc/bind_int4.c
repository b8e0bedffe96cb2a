/* bind_int4.c - INT4 group-wise quantization, dequantization and the linear
 * op (int4.c drivers), and the batch thresholds that pick its paths. */
#include "bind.h"

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
    mq_refs refs = {0};
    PyArrayObject *x, *packed, *scale, *zero, *sx = NULL, *se = NULL;
    (void)self;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OLpi|pi:q4_quantize", kwlist, &x_obj, &group, &symmetric, &method,
                                     &with_error, &nthreads))
        return NULL;
    if (!mq_q4_check_group(group) || !mq_check_threads(nthreads)) return NULL;
    if (method < MQ_Q4_RTN || method > MQ_Q4_HQQ) {
        PyErr_Format(PyExc_ValueError, "method must be 0 (rtn), 1 (mse) or 2 (hqq), got %d", method);
        return NULL;
    }
    if (!(x = mq_array_in(&refs, x_obj, "x", mq_src_types, 4, 2, mq_src_expected))) goto done;
    npy_intp rows = PyArray_DIM(x, 0), cols = PyArray_DIM(x, 1);
    if (cols == 0) {
        PyErr_SetString(PyExc_ValueError, "x has no columns to quantize");
        goto done;
    }
    npy_intp kpad = mq_q4_kpad(cols), padded = mq_size_round_up(kpad, group);
    if (!mq_size_fits(padded, "q4_quantize", "the padded row length")) goto done;
    npy_intp pdims[2] = {rows, kpad / 2}, gdims[2] = {rows, padded / group};
    if (!(packed = mq_array_new(&refs, 2, pdims, NPY_UINT8, 1))) goto done;
    if (!(scale = mq_array_new(&refs, 2, gdims, NPY_FLOAT16, 1))) goto done;
    if (!(zero = mq_array_new(&refs, 2, gdims, NPY_UINT8, 1))) goto done;
    if (with_error && (!(sx = mq_array_new(&refs, 1, &rows, NPY_FLOAT64, 1)) ||
                       !(se = mq_array_new(&refs, 1, &rows, NPY_FLOAT64, 1))))
        goto done;
    int64_t bad;
    Py_BEGIN_ALLOW_THREADS
    bad = mq_q4_quantize(PyArray_DATA(x), mq_src_kind(x), rows, cols, group, symmetric, (mq_q4_method_t)method,
                         PyArray_DATA(packed), PyArray_DATA(scale), PyArray_DATA(zero), mq_data_or_null(sx),
                         mq_data_or_null(se), nthreads);
    Py_END_ALLOW_THREADS
    if (bad == -2)
        PyErr_NoMemory();
    else
        result = Py_BuildValue("OOONOO", packed, scale, zero, mq_bad_row(bad), mq_or_none(sx), mq_or_none(se));
done:
    mq_release(&refs);
    return result;
}

PyDoc_STRVAR(q4_dequantize_doc,
             "q4_dequantize(packed, scale, zero_point, cols, group, nthreads=1, out=None) -> float32 [rows, cols]\n\n"
             "(code - zero_point / 16) * scale for the arrays q4_quantize returned; written into out (a\n"
             "float32 [rows, cols] C-contiguous writeable array, returned) when given.");

static PyObject *py_q4_dequantize(PyObject *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"packed", "scale", "zero_point", "cols", "group", "nthreads", "out", NULL};
    PyObject *p_obj, *s_obj, *z_obj, *out_obj = Py_None, *result = NULL;
    long long cols, group;
    int nthreads = 1;
    mq_refs refs = {0};
    PyArrayObject *packed, *scale, *zero, *out;
    (void)self;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOOLL|iO:q4_dequantize", kwlist, &p_obj, &s_obj, &z_obj, &cols, &group,
                                     &nthreads, &out_obj))
        return NULL;
    if (!mq_q4_check_group(group) || !mq_check_threads(nthreads)) return NULL;
    if (!mq_q4_weight_arrays(&refs, p_obj, s_obj, z_obj, cols, group, &packed, &scale, &zero)) goto done;
    npy_intp dims[2] = {PyArray_DIM(packed, 0), (npy_intp)cols};
    out = out_obj == Py_None ? mq_array_new(&refs, 2, dims, NPY_FLOAT32, 0)
                             : mq_float_out(&refs, out_obj, "q4_dequantize", dims[0], dims[1],
                                            (PyArrayObject *const[]){packed, scale, zero}, 3);
    if (!out) goto done;
    Py_BEGIN_ALLOW_THREADS
    mq_q4_dequantize(PyArray_DATA(packed), PyArray_DATA(scale), PyArray_DATA(zero), dims[0],
                     PyArray_DIM(packed, 1) * 2, group, cols, PyArray_DATA(out), nthreads);
    Py_END_ALLOW_THREADS
    result = mq_return(out);
done:
    mq_release(&refs);
    return result;
}

PyDoc_STRVAR(q4_linear_doc,
             "q4_linear(x, packed, scale, zero_point, group, bias=None, int8_activations=-1, nthreads=1)\n"
             "    -> float32 [m, rows]\n\n"
             "x @ W.T (+ bias) with W the int4 weight, streamed packed; x is 2-D float32 or\n"
             "int16 bf16 bits [m, cols]; bias float32 [rows] or None.  int8_activations: 0 keeps\n"
             "fp32 activations (weights dequantized in registers), 1 quantizes activations to\n"
             "int8 per group for integer dot products (needs group to be a multiple of 128,\n"
             "at most 4096; a row not of whole 128-column chunks runs on a copy that is), -1 picks\n"
             "int8 where the active kernel level has an integer kernel (AVX2, AVX-512 VNNI), the\n"
             "shape allows and the batch is at least q4_int8_min_m() rows (2 for a copied row).");

static PyObject *py_q4_linear(PyObject *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"x", "packed", "scale", "zero_point", "group", "bias", "int8_activations", "nthreads",
                             NULL};
    static const int xtypes[] = {NPY_FLOAT32, NPY_INT16, NPY_UINT16};
    PyObject *x_obj, *p_obj, *s_obj, *z_obj, *b_obj = Py_None, *result = NULL;
    long long group;
    int nthreads = 1, act_mode = -1;
    mq_refs refs = {0};
    PyArrayObject *x, *packed, *scale, *zero, *bias = NULL, *out;
    (void)self;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOOOL|Oii:q4_linear", kwlist, &x_obj, &p_obj, &s_obj, &z_obj, &group,
                                     &b_obj, &act_mode, &nthreads))
        return NULL;
    if (!mq_q4_check_group(group) || !mq_check_threads(nthreads)) return NULL;
    if (act_mode < -1 || act_mode > 1) {
        PyErr_Format(PyExc_ValueError, "int8_activations must be -1 (auto), 0 or 1, got %d", act_mode);
        return NULL;
    }
    if (!(x = mq_array_in(&refs, x_obj, "x", xtypes, 3, 2, "float32 or int16/uint16 (bf16 bits)"))) goto done;
    if (!mq_q4_weight_arrays(&refs, p_obj, s_obj, z_obj, PyArray_DIM(x, 1), group, &packed, &scale, &zero)) goto done;
    npy_intp rows = PyArray_DIM(packed, 0), kpad = PyArray_DIM(packed, 1) * 2; /* checked above */
    /* the driver's fp32 copy of x: m rows of kpad values and one sum per group */
    if (!mq_size_fits(mq_size_mul(mq_size_mul(PyArray_DIM(x, 0), mq_size_add(kpad, PyArray_DIM(scale, 1))),
                                  (int64_t)sizeof(float)), "q4_linear", "the activation buffer"))
        goto done;
    if (act_mode == 1 && !mq_q4_int8_ok(kpad, group)) {
        PyErr_Format(PyExc_ValueError,
                     "int8 activations need the group to be a multiple of 128, at most 4096 (the row, %zd columns "
                     "padded, any multiple of 32); got group %lld", (Py_ssize_t)kpad, group);
        goto done;
    }
    if (!mq_bias_in(&refs, b_obj, rows, "rows", &bias)) goto done;
    npy_intp dims[2] = {PyArray_DIM(x, 0), rows};
    if (!(out = mq_array_new(&refs, 2, dims, NPY_FLOAT32, 0))) goto done;
    int rc;
    Py_BEGIN_ALLOW_THREADS
    rc = mq_q4_linear(PyArray_DATA(x), PyArray_TYPE(x) == NPY_FLOAT32 ? MQ_SRC_F32 : MQ_SRC_BF16, dims[0],
                      PyArray_DIM(x, 1), PyArray_DATA(packed), PyArray_DATA(scale), PyArray_DATA(zero), rows, kpad,
                      group, mq_data_or_null(bias), PyArray_DATA(out), act_mode, nthreads);
    Py_END_ALLOW_THREADS
    result = rc < 0 ? PyErr_NoMemory() : mq_return(out);
done:
    mq_release(&refs);
    return result;
}

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

PyDoc_STRVAR(q4_int8_min_m_doc,
             "q4_int8_min_m(m=-1) -> previous value\n\n"
             "Automatic mode (int8_activations=-1) uses int8 activations from batch size m on;\n"
             "m >= 1 sets it, -1 only reads it.");

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

PyMethodDef mq_int4_methods[] = {
    MQ_KW_METHOD(q4_quantize),
    MQ_KW_METHOD(q4_dequantize),
    MQ_KW_METHOD(q4_linear),
    {"q4_panel_min_m", py_q4_panel_min_m, METH_VARARGS, q4_panel_min_m_doc},
    {"q4_int8_min_m", py_q4_int8_min_m, METH_VARARGS, q4_int8_min_m_doc},
    {NULL, NULL, 0, NULL},
};
