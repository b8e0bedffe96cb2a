/* bind_fp16.c - the fp16 / bf16 weight linear (fp16.c driver). */
#include "bind.h"

PyDoc_STRVAR(h16_linear_doc,
             "h16_linear(x, w, bf16, bias=None, nthreads=1) -> y\n\n"
             "y [m, n] float32 = x [m, k] float32 @ W.T (+ bias [n] float32) for W [n, k] 16-bit\n"
             "weights widened to fp32 in registers: IEEE fp16 (bf16=False: float16, or its\n"
             "int16/uint16 bits) or bf16 (bf16=True: int16/uint16 bits).  fp32 accumulation.");

static PyObject *py_h16_linear(PyObject *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"x", "w", "bf16", "bias", "nthreads", NULL};
    static const int f32[] = {NPY_FLOAT32}, h16[] = {NPY_FLOAT16, NPY_INT16, NPY_UINT16}, bits[] = {NPY_INT16,
                                                                                                     NPY_UINT16};
    PyObject *x_obj, *w_obj, *b_obj = Py_None, *result = NULL;
    int is_bf16, nthreads = 1;
    mq_refs refs = {0};
    PyArrayObject *x, *w, *bias = NULL, *out;
    (void)self;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOp|Oi:h16_linear", kwlist, &x_obj, &w_obj, &is_bf16, &b_obj,
                                     &nthreads))
        return NULL;
    if (!mq_check_threads(nthreads)) return NULL;
    if (!(x = mq_array_in(&refs, x_obj, "x", f32, 1, 2, "float32"))) goto done;
    if (is_bf16) {
        if (!(w = mq_array_in(&refs, w_obj, "w", bits, 2, 2, "int16/uint16 (bf16 bits)"))) goto done;
    } else if (!(w = mq_array_in(&refs, w_obj, "w", h16, 3, 2, "float16 (or its int16/uint16 bits)"))) {
        goto done;
    }
    npy_intp m = PyArray_DIM(x, 0), k = PyArray_DIM(x, 1), n = PyArray_DIM(w, 0);
    if (PyArray_DIM(w, 1) != k) {
        PyErr_Format(PyExc_ValueError, "x has %zd features, the weight [%zd, %zd] expects %zd", (Py_ssize_t)k,
                     (Py_ssize_t)n, (Py_ssize_t)PyArray_DIM(w, 1), (Py_ssize_t)PyArray_DIM(w, 1));
        goto done;
    }
    if (b_obj != Py_None) {
        if (!(bias = mq_array_in(&refs, b_obj, "bias", f32, 1, 1, "float32"))) goto done;
        if (PyArray_DIM(bias, 0) != n) {
            PyErr_Format(PyExc_ValueError, "bias has %zd entries, the weight %zd rows",
                         (Py_ssize_t)PyArray_DIM(bias, 0), (Py_ssize_t)n);
            goto done;
        }
    }
    npy_intp dims[2] = {m, n};
    if (!(out = mq_array_new(&refs, 2, dims, NPY_FLOAT32, 0))) goto done;
    if (m * n > 0) {
        Py_BEGIN_ALLOW_THREADS
        mq_h16_linear(PyArray_DATA(x), m, k, k, PyArray_DATA(w), is_bf16, mq_data_or_null(bias), n,
                      PyArray_DATA(out), nthreads);
        Py_END_ALLOW_THREADS
    }
    result = mq_return(out);
done:
    mq_release(&refs);
    return result;
}

PyMethodDef mq_fp16_methods[] = {
    MQ_KW_METHOD(h16_linear),
    {NULL, NULL, 0, NULL},
};
