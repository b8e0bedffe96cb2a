/* bind_args.c - the argument checks and the cleanup list every binding file
 * uses (bind.h): each check and message written once. */
#include <math.h>

#include "bind.h"

void *mq_hold(mq_refs *refs, void *obj) {
    if (!obj) return NULL;
    if (refs->count == MQ_REFS_MAX) { /* a binding holding too much: a bug here, raised, never a crash */
        Py_DECREF((PyObject *)obj);
        PyErr_SetString(PyExc_SystemError, "mono_quant._C: too many arrays held by one call");
        return NULL;
    }
    refs->obj[refs->count++] = obj;
    return obj;
}

void mq_release(mq_refs *refs) {
    while (refs->count > 0) Py_DECREF(refs->obj[--refs->count]);
}

PyArrayObject *mq_array_in(mq_refs *refs, PyObject *obj, const char *what, const int *types, int ntypes, int ndim,
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
    return mq_hold(refs, PyArray_FROM_OF(obj, NPY_ARRAY_IN_ARRAY));
}

PyArrayObject *mq_array_new(mq_refs *refs, int ndim, const npy_intp *dims, int type, int zeroed) {
    npy_intp *d = (npy_intp *)dims; /* (NumPy's macros take a non-const pointer they only read) */
    return mq_hold(refs, zeroed ? PyArray_ZEROS(ndim, d, type, 0) : PyArray_EMPTY(ndim, d, type, 0));
}

PyArrayObject *mq_float_out(mq_refs *refs, PyObject *out_obj, const char *fname, npy_intp rows, npy_intp cols,
                            PyArrayObject *const *sources, int nsources) {
    PyArrayObject *out = (PyArrayObject *)out_obj;
    if (!PyArray_Check(out_obj) || PyArray_TYPE(out) != NPY_FLOAT32 || PyArray_NDIM(out) != 2 ||
        PyArray_DIM(out, 0) != rows || PyArray_DIM(out, 1) != cols || !PyArray_IS_C_CONTIGUOUS(out) ||
        !PyArray_ISBEHAVED(out) || !PyArray_ISNOTSWAPPED(out)) {
        PyErr_Format(PyExc_ValueError, "%s: out must be a float32 array of shape (%zd, %zd), C-contiguous, aligned "
                     "and writeable", fname, (Py_ssize_t)rows, (Py_ssize_t)cols);
        return NULL;
    }
    for (int i = 0; i < nsources; i++) { /* (the sources are C-contiguous: their bytes are one range) */
        if (mq_bytes_overlap(PyArray_DATA(out), (size_t)PyArray_NBYTES(out), PyArray_DATA(sources[i]),
                             (size_t)PyArray_NBYTES(sources[i]))) {
            PyErr_Format(PyExc_ValueError, "%s: out overlaps an input it reads; give it memory of its own", fname);
            return NULL;
        }
    }
    Py_INCREF(out_obj);
    return mq_hold(refs, out_obj);
}

const int mq_src_types[4] = {NPY_FLOAT32, NPY_FLOAT16, NPY_INT16, NPY_UINT16};
const char *const mq_src_expected = "float32, float16 or int16/uint16 (bf16 bits)";

mq_src_t mq_src_kind(PyArrayObject *a) {
    switch (PyArray_TYPE(a)) {
    case NPY_FLOAT16: return MQ_SRC_F16;
    case NPY_INT16:
    case NPY_UINT16: return MQ_SRC_BF16;
    default: return MQ_SRC_F32;
    }
}

int mq_check_threads(int nthreads) {
    if (nthreads < 1 || nthreads > 1024) {
        PyErr_Format(PyExc_ValueError, "nthreads must be in 1..1024, got %d", nthreads);
        return 0;
    }
    return 1;
}

/* A range holds the code of 0 (torch's observers' rule, qmin <= 0 <= qmax): the zero-point of
 * asymmetric codes is clamped into it, so a range past 0 on one side would shift every value. */
int mq_check_qrange(int qmin, int qmax) {
    int ok = qmin < qmax && qmin <= 0 && qmax >= 0 && ((qmin >= -128 && qmax <= 127) || (qmin >= 0 && qmax <= 255));
    if (!ok)
        PyErr_Format(PyExc_ValueError,
                     "quantization range [%d, %d] must fit int8 (-128..127) or uint8 (0..255) with qmin < qmax, "
                     "and hold 0 (qmin <= 0 <= qmax)",
                     qmin, qmax);
    return ok;
}

/* Symmetric signed codes put the zero-point at 0: the range must reach past it on both sides. */
int mq_check_symmetric_qrange(int qmin, int qmax, int symmetric) {
    if (!symmetric || qmin >= 0 || qmax > 0) return 1;
    PyErr_Format(PyExc_ValueError, "symmetric codes in [%d, %d]: a signed symmetric range needs qmax > 0 (its "
                 "zero-point is 0, every positive value would be cut to it)", qmin, qmax);
    return 0;
}

int mq_check_int8_range(int qmin, int qmax, const char *fname) {
    if (qmin < 0 && qmin >= -128 && qmax >= 0 && qmax <= 127 && qmin < qmax) return 1;
    PyErr_Format(PyExc_ValueError, "%s needs a signed int8 range holding 0 (-128 <= qmin < 0 <= qmax <= 127), got "
                 "[%d, %d]", fname, qmin, qmax);
    return 0;
}

int mq_qparam_arrays(mq_refs *refs, PyObject *scale_obj, PyObject *zp_obj, npy_intp rows, PyArrayObject **scale,
                     PyArrayObject **zp, int *per_row) {
    static const int f32[] = {NPY_FLOAT32}, i32[] = {NPY_INT32};
    if (!(*scale = mq_array_in(refs, scale_obj, "scale", f32, 1, 1, "float32"))) return 0;
    if (!(*zp = mq_array_in(refs, zp_obj, "zero_point", i32, 1, 1, "int32"))) return 0;
    npy_intp ns = PyArray_DIM(*scale, 0), nz = PyArray_DIM(*zp, 0);
    if (ns != nz || (ns != rows && ns != 1)) {
        PyErr_Format(PyExc_ValueError, "scale and zero_point must both have length 1 or %zd (rows), got %zd and %zd",
                     (Py_ssize_t)rows, (Py_ssize_t)ns, (Py_ssize_t)nz);
        return 0;
    }
    const float *s = PyArray_DATA(*scale);
    for (npy_intp i = 0; i < ns; i++)
        if (!(s[i] > 0.0f) || !isfinite(s[i]) || !isfinite(1.0f / s[i])) {
            char msg[160]; /* snprintf: PyErr_Format has no %g */
            snprintf(msg, sizeof msg, "scale[%lld] = %g is not a positive finite number with a finite inverse",
                     (long long)i, (double)s[i]);
            PyErr_SetString(PyExc_ValueError, msg);
            return 0;
        }
    *per_row = ns == rows && rows != 1;
    return 1;
}

int mq_size_fits(int64_t size, const char *fname, const char *what) {
    if (size >= 0) return 1;
    PyErr_Format(PyExc_OverflowError, "%s: %s does not fit in 64 bits (a dimension or argument is far too large)",
                 fname, what);
    return 0;
}

PyArrayObject *mq_packed_int8_in(mq_refs *refs, PyObject *obj, npy_intp n, npy_intp k, npy_intp size) {
    static const int i8[] = {NPY_INT8};
    PyArrayObject *packed = mq_array_in(refs, obj, "packed", i8, 1, 1, "int8");
    if (packed && PyArray_SIZE(packed) != size) {
        PyErr_Format(PyExc_ValueError, "packed has %zd bytes, expected %zd for a [%zd, %zd] weight",
                     (Py_ssize_t)PyArray_SIZE(packed), (Py_ssize_t)size, (Py_ssize_t)n, (Py_ssize_t)k);
        return NULL;
    }
    return packed;
}

int mq_conv_pair(PyObject *obj, const char *what, long lo, npy_intp out[2]) {
    long a, b;
    if (!PyTuple_Check(obj) || !PyArg_ParseTuple(obj, "ll", &a, &b)) {
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

/* ---- int4 weights (bind_int4.c, bind_dconv.c) ---- */
int mq_q4_check_group(long long group) {
    if (group < MQ_Q4_BLOCK || group % MQ_Q4_BLOCK != 0 || group > (1LL << 30)) {
        PyErr_Format(PyExc_ValueError, "group must be a positive multiple of %d, got %lld", MQ_Q4_BLOCK, group);
        return 0;
    }
    return 1;
}

/* The three int4 weight arrays, checked against each other and held in refs:
 * packed uint8 [rows, kpad/2], scale fp16 bits [rows, ceil(kpad/group)], zero
 * uint8 (same shape); cols must round up to kpad (whole blocks). */
int mq_q4_weight_arrays(mq_refs *refs, PyObject *p_obj, PyObject *s_obj, PyObject *z_obj, long long cols,
                        long long group, PyArrayObject **packed, PyArrayObject **scale, PyArrayObject **zero) {
    static const int u8[] = {NPY_UINT8}, h16[] = {NPY_FLOAT16, NPY_INT16, NPY_UINT16};
    if (!(*packed = mq_array_in(refs, p_obj, "packed", u8, 1, 2, "uint8"))) return 0;
    if (!(*scale = mq_array_in(refs, s_obj, "scale", h16, 3, 2, "float16 (or its int16 bits)"))) return 0;
    if (!(*zero = mq_array_in(refs, z_obj, "zero_point", u8, 1, 2, "uint8"))) return 0;
    npy_intp rows = PyArray_DIM(*packed, 0), ngroups = PyArray_DIM(*scale, 1);
    /* a uint8 dimension of a zero-row array can be near 2^63: twice it would wrap */
    long long kpad = mq_size_mul(PyArray_DIM(*packed, 1), 2), padded = mq_size_round_up(kpad, group);
    if (!mq_size_fits(padded, "int4 weight", "the packed row length")) return 0;
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

int mq_bias_in(mq_refs *refs, PyObject *b_obj, npy_intp n, const char *unit, PyArrayObject **bias) {
    static const int f32[] = {NPY_FLOAT32};
    *bias = NULL;
    if (b_obj == Py_None) return 1;
    if (!(*bias = mq_array_in(refs, b_obj, "bias", f32, 1, 1, "float32"))) return 0;
    if (PyArray_DIM(*bias, 0) != n) {
        PyErr_Format(PyExc_ValueError, "bias has %zd entries, the weight %zd %s", (Py_ssize_t)PyArray_DIM(*bias, 0),
                     (Py_ssize_t)n, unit);
        return 0;
    }
    return 1;
}
