/* bind_u8.c - the uint8 weight-only linear (u8_linear.c driver). */
#include "bind.h"

PyDoc_STRVAR(u8_linear_doc,
             "u8_linear(x, q, scale, zero_point, bias=None, nthreads=1, panels=False) -> y\n\n"
             "y [m, n] float32 = x [m, k] float32 @ ((q - zero_point) * scale).T (+ bias [n] float32)\n"
             "for a uint8 weight q [n, k], scale float32 and zero_point int32 (0..255) of length n\n"
             "(per channel) or 1 (per tensor): q - zero_point widened to fp32 in registers (exact),\n"
             "fp32 accumulation, each channel's sum scaled once (equal to the dequantized weight's\n"
             "product to fp32 rounding).  panels=True (for many rows): each 16-channel panel\n"
             "widened once per block of rows and the weight-only tiles' sum order (the scalar level,\n"
             "or fewer than 8 rows, as panels=False).  MemoryError if a buffer cannot be allocated.");

static PyObject *py_u8_linear(PyObject *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"x", "q", "scale", "zero_point", "bias", "nthreads", "panels", NULL};
    static const int f32[] = {NPY_FLOAT32}, u8[] = {NPY_UINT8};
    PyObject *x_obj, *q_obj, *s_obj, *z_obj, *b_obj = Py_None, *result = NULL;
    int nthreads = 1, per_row = 0, panels = 0;
    mq_refs refs = {0};
    PyArrayObject *x, *q, *scale, *zp, *bias = NULL, *out;
    (void)self;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOOO|Oip:u8_linear", kwlist, &x_obj, &q_obj, &s_obj, &z_obj, &b_obj,
                                     &nthreads, &panels))
        return NULL;
    if (!mq_check_threads(nthreads)) return NULL;
    if (!(x = mq_array_in(&refs, x_obj, "x", f32, 1, 2, "float32"))) goto done;
    if (!(q = mq_array_in(&refs, q_obj, "q", u8, 1, 2, "uint8"))) goto done;
    npy_intp m = PyArray_DIM(x, 0), k = PyArray_DIM(x, 1), n = PyArray_DIM(q, 0);
    if (PyArray_DIM(q, 1) != k) {
        PyErr_Format(PyExc_ValueError, "x has %zd features, the weight [%zd, %zd] expects %zd", (Py_ssize_t)k,
                     (Py_ssize_t)n, (Py_ssize_t)PyArray_DIM(q, 1), (Py_ssize_t)PyArray_DIM(q, 1));
        goto done;
    }
    if (!mq_qparam_arrays(&refs, s_obj, z_obj, n, &scale, &zp, &per_row)) goto done;
    for (npy_intp j = 0; j < PyArray_DIM(zp, 0); j++) {
        const int32_t z = ((const int32_t *)PyArray_DATA(zp))[j];
        if (z < 0 || z > 255) {
            PyErr_Format(PyExc_ValueError, "zero_point[%zd] = %d is outside uint8's 0..255", (Py_ssize_t)j, (int)z);
            goto done;
        }
    }
    if (!per_row && n != 1) { /* per tensor: one value for every channel, as the kernels read one a channel */
        PyArrayObject *s_all, *z_all;
        if (!(s_all = mq_array_new(&refs, 1, &n, NPY_FLOAT32, 0)) || !(z_all = mq_array_new(&refs, 1, &n, NPY_INT32, 0)))
            goto done;
        for (npy_intp j = 0; j < n; j++) {
            ((float *)PyArray_DATA(s_all))[j] = *(const float *)PyArray_DATA(scale);
            ((int32_t *)PyArray_DATA(z_all))[j] = *(const int32_t *)PyArray_DATA(zp);
        }
        scale = s_all;
        zp = z_all;
    }
    if (!mq_bias_in(&refs, b_obj, n, "rows", &bias)) goto done;
    npy_intp dims[2] = {m, n};
    if (!(out = mq_array_new(&refs, 2, dims, NPY_FLOAT32, 0))) goto done;
    if (m * n > 0) {
        int rc = 1;
        Py_BEGIN_ALLOW_THREADS
        if (panels)
            rc = mq_u8_linear_panels(PyArray_DATA(x), m, k, PyArray_DATA(q), PyArray_DATA(zp), PyArray_DATA(scale),
                                     mq_data_or_null(bias), n, PyArray_DATA(out), nthreads);
        if (rc == 1)
            mq_u8_linear(PyArray_DATA(x), m, k, k, PyArray_DATA(q), PyArray_DATA(zp), PyArray_DATA(scale),
                         mq_data_or_null(bias), n, PyArray_DATA(out), nthreads);
        Py_END_ALLOW_THREADS
        if (rc < 0) {
            PyErr_NoMemory();
            goto done;
        }
    }
    result = mq_return(out);
done:
    mq_release(&refs);
    return result;
}

PyMethodDef mq_u8_methods[] = {
    MQ_KW_METHOD(u8_linear),
    {NULL, NULL, 0, NULL},
};
