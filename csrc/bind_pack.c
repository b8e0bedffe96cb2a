/* bind_pack.c - the packed int8 layout (layout.h): packing, checking packed
 * buffers read from a file, and quantizing straight into the layout from an
 * array or a file (linear.c, quantize_pack.c). */
#include <errno.h>
#include <sys/stat.h>

#include "bind.h"

/* The packed int8 layout's sizes for an [n, k] weight: round_up(n, 16) channels
 * (np_) and np_ * round_up(k, 4) bytes; 0 with OverflowError set when they pass 64 bits. */
static int packed_int8_sizes(npy_intp n, npy_intp k, const char *fname, npy_intp *np_, npy_intp *size) {
    int64_t np64;
    *size = mq_packed_int8_bytes(n, k, 1, &np64);
    *np_ = np64;
    return mq_size_fits(*size, fname, "the packed weight's size");
}

/* Whether the bytes of two C-contiguous arrays overlap. */
static int arrays_overlap(PyArrayObject *a, PyArrayObject *b) {
    return mq_bytes_overlap(PyArray_DATA(a), (size_t)PyArray_NBYTES(a), PyArray_DATA(b), (size_t)PyArray_NBYTES(b));
}

/* The packed weight and column sums to write: fresh arrays when out_obj is
 * None, else the caller's (packed, w_sum) pair checked for exactly these
 * sizes, apart from each other and from `source` (the array the call reads,
 * or NULL) (held in refs either way); 0 with an exception set. */
static int packed_outputs(mq_refs *refs, PyObject *out_obj, const char *fname, npy_intp size, npy_intp np_,
                          PyArrayObject *source, PyArrayObject **packed, PyArrayObject **w_sum) {
    if (out_obj == Py_None) {
        *packed = mq_array_new(refs, 1, &size, NPY_INT8, 0);
        *w_sum = *packed ? mq_array_new(refs, 1, &np_, NPY_INT32, 0) : NULL;
        return *w_sum != NULL;
    }
    if (!PyTuple_Check(out_obj) || PyTuple_GET_SIZE(out_obj) != 2) {
        PyErr_Format(PyExc_TypeError, "%s: out must be a (packed, w_sum) tuple", fname);
        return 0;
    }
    PyObject *p_obj = PyTuple_GET_ITEM(out_obj, 0), *s_obj = PyTuple_GET_ITEM(out_obj, 1);
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
    PyArrayObject *p_arr = (PyArrayObject *)p_obj, *s_arr = (PyArrayObject *)s_obj;
    if (arrays_overlap(p_arr, s_arr) || (source && (arrays_overlap(p_arr, source) || arrays_overlap(s_arr, source)))) {
        PyErr_Format(PyExc_ValueError, "%s: out's packed and w_sum must not overlap each other or the input; give "
                     "them memory of their own", fname);
        return 0;
    }
    Py_INCREF(p_obj);
    Py_INCREF(s_obj);
    *packed = mq_hold(refs, p_obj);
    *w_sum = mq_hold(refs, s_obj);
    return *packed && *w_sum;
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
    int nthreads = 1;
    mq_refs refs = {0};
    PyArrayObject *w, *packed, *w_sum, *scratch;
    (void)self;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O|iO:pack_int8", kwlist, &w_obj, &nthreads, &out_obj)) return NULL;
    if (!mq_check_threads(nthreads)) return NULL;
    if (!(w = mq_array_in(&refs, w_obj, "w", i8, 1, 2, "int8"))) goto done;
    npy_intp n = PyArray_DIM(w, 0), k = PyArray_DIM(w, 1), np_, size;
    if (!packed_int8_sizes(n, k, "pack_int8", &np_, &size)) goto done;
    if (!packed_outputs(&refs, out_obj, "pack_int8", size, np_, w, &packed, &w_sum)) goto done;
    npy_intp panels = np_ / MQ_PANEL;
    if (!(scratch = mq_array_new(&refs, 1, &panels, NPY_UINT8, 0))) goto done;
    int has_m128;
    Py_BEGIN_ALLOW_THREADS
    has_m128 = mq_pack_int8(PyArray_DATA(w), n, k, PyArray_DATA(packed), PyArray_DATA(w_sum), PyArray_DATA(scratch),
                            nthreads);
    Py_END_ALLOW_THREADS
    result = Py_BuildValue("OON", packed, w_sum, PyBool_FromLong(has_m128));
done:
    mq_release(&refs);
    return result;
}

PyDoc_STRVAR(packed_check_doc,
             "packed_check(packed, n, k, nthreads=1) -> (column_sums, has_m128, padding_nonzero)\n\n"
             "For packed int8 buffers of an [n, k] weight (one group) read from a file: the column\n"
             "sums of the packed bytes (int32 [round_up(n,16)]), whether some byte is -128,\n"
             "and whether a padding byte is not 0.");

static PyObject *py_packed_check(PyObject *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"packed", "n", "k", "nthreads", NULL};
    PyObject *p_obj, *result = NULL;
    long long n, k;
    int nthreads = 1;
    mq_refs refs = {0};
    PyArrayObject *packed, *sums, *scratch;
    (void)self;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OLL|i:packed_check", kwlist, &p_obj, &n, &k, &nthreads)) return NULL;
    if (!mq_check_threads(nthreads)) return NULL;
    if (n < 1 || k < 1 || n > INT32_MAX || k > INT32_MAX) {
        PyErr_Format(PyExc_ValueError, "need 1 <= n, k < 2^31, got n=%lld k=%lld", n, k);
        return NULL;
    }
    npy_intp np_, size;
    if (!packed_int8_sizes(n, k, "packed_check", &np_, &size)) return NULL; /* (n, k < 2^31: it fits) */
    npy_intp panels = np_ / MQ_PANEL;
    if (!(packed = mq_packed_int8_in(&refs, p_obj, n, k, size))) goto done;
    if (!(sums = mq_array_new(&refs, 1, &np_, NPY_INT32, 0))) goto done;
    if (!(scratch = mq_array_new(&refs, 1, &panels, NPY_UINT8, 0))) goto done;
    int flags;
    Py_BEGIN_ALLOW_THREADS
    flags = mq_packed_check(PyArray_DATA(packed), n, k, PyArray_DATA(sums), PyArray_DATA(scratch), nthreads);
    Py_END_ALLOW_THREADS
    result = Py_BuildValue("ONN", sums, PyBool_FromLong(flags & 1), PyBool_FromLong((flags >> 1) & 1));
done:
    mq_release(&refs);
    return result;
}

PyDoc_STRVAR(packed_dequantize_doc,
             "packed_dequantize(packed, groups, out_g, k, taps, scale, zero_point, nthreads=1, out=None)\n"
             "    -> float32 [groups * out_g, k]\n\n"
             "The packed int8 weight of `groups` blocks of out_g channels by k, dequantized per row\n"
             "((code - zero_point) * scale; scale / zero_point of one or groups * out_g entries) with K in\n"
             "torch's order: a conv's packed (tap, in_channel) of `taps` taps is written as\n"
             "(in_channel, tap).  out: a float32 array of that shape to write into (returned).");

static PyObject *py_packed_dequantize(PyObject *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"packed", "groups", "out_g", "k", "taps", "scale", "zero_point", "nthreads", "out", NULL};
    PyObject *p_obj, *s_obj, *z_obj, *out_obj = Py_None, *result = NULL;
    long long groups, out_g, k, taps;
    int nthreads = 1, per_row = 0;
    mq_refs refs = {0};
    PyArrayObject *packed, *scale, *zp, *out;
    (void)self;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OLLLLOO|iO:packed_dequantize", kwlist, &p_obj, &groups, &out_g, &k,
                                     &taps, &s_obj, &z_obj, &nthreads, &out_obj))
        return NULL;
    if (!mq_check_threads(nthreads)) return NULL;
    if (groups < 1 || out_g < 1 || k < 1 || taps < 1 || groups > INT32_MAX || out_g > INT32_MAX || k > INT32_MAX ||
        k % taps != 0) {
        PyErr_Format(PyExc_ValueError, "packed_dequantize: need 1 <= groups, out_g, k < 2^31 and taps >= 1 dividing k, "
                     "got groups=%lld out_g=%lld k=%lld taps=%lld", groups, out_g, k, taps);
        return NULL;
    }
    int64_t np64;
    const npy_intp n = groups * out_g, size = mq_packed_int8_bytes(n, k, groups, &np64);
    if (!mq_size_fits(size, "packed_dequantize", "the packed weight's size") ||
        !mq_size_fits(mq_size_mul(n, k), "packed_dequantize", "the weight's size"))
        return NULL;
    if (!(packed = mq_packed_int8_in(&refs, p_obj, n, k, size))) goto done;
    if (!mq_qparam_arrays(&refs, s_obj, z_obj, n, &scale, &zp, &per_row)) goto done;
    npy_intp dims[2] = {n, (npy_intp)k};
    out = out_obj == Py_None ? mq_array_new(&refs, 2, dims, NPY_FLOAT32, 0)
                             : mq_float_out(&refs, out_obj, "packed_dequantize", n, k,
                                            (PyArrayObject *const[]){packed, scale, zp}, 3);
    if (!out) goto done;
    Py_BEGIN_ALLOW_THREADS
    mq_packed_dequantize(PyArray_DATA(packed), groups, out_g, k, taps, PyArray_DATA(scale), PyArray_DATA(zp), per_row,
                         PyArray_DATA(out), nthreads);
    Py_END_ALLOW_THREADS
    result = mq_return(out);
done:
    mq_release(&refs);
    return result;
}

/* The arrays a quantize_pack_int8* call fills (held in the call's refs). */
typedef struct {
    PyArrayObject *packed, *w_sum, *scale, *zp, *scratch, *sx, *se;
} qpack_outputs;

static int qpack_outputs_new(mq_refs *refs, qpack_outputs *o, PyObject *out_obj, const char *fname, npy_intp n,
                             npy_intp k, int with_error, PyArrayObject *source) {
    npy_intp np_, size;
    if (!packed_int8_sizes(n, k, fname, &np_, &size)) return 0;
    npy_intp panels = np_ / MQ_PANEL;
    if (!packed_outputs(refs, out_obj, fname, size, np_, source, &o->packed, &o->w_sum)) return 0;
    if (!(o->scale = mq_array_new(refs, 1, &n, NPY_FLOAT32, 0))) return 0;
    if (!(o->zp = mq_array_new(refs, 1, &n, NPY_INT32, 0))) return 0;
    if (!(o->scratch = mq_array_new(refs, 1, &panels, NPY_UINT8, 0))) return 0;
    if (with_error) {
        if (!(o->sx = mq_array_new(refs, 1, &n, NPY_FLOAT64, 1))) return 0;
        if (!(o->se = mq_array_new(refs, 1, &n, NPY_FLOAT64, 1))) return 0;
    }
    return 1;
}

static PyObject *qpack_result(qpack_outputs *o, int64_t bad, int has_m128) {
    if (bad == -2) return PyErr_NoMemory();
    return Py_BuildValue("OOOONNOO", o->packed, o->w_sum, o->scale, o->zp, PyBool_FromLong(has_m128),
                         mq_bad_row(bad), mq_or_none(o->sx), mq_or_none(o->se));
}

#define QPACK_DATA(o) PyArray_DATA((o).scale), PyArray_DATA((o).zp), PyArray_DATA((o).packed), \
    PyArray_DATA((o).w_sum), PyArray_DATA((o).scratch), mq_data_or_null((o).sx), mq_data_or_null((o).se)

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
    mq_refs refs = {0};
    PyArrayObject *x;
    qpack_outputs o = {0};
    (void)self;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "Oiip|piO:quantize_pack_int8", kwlist, &x_obj, &qmin, &qmax,
                                     &symmetric, &with_error, &nthreads, &out_obj))
        return NULL;
    if (!mq_check_threads(nthreads) || !mq_check_int8_range(qmin, qmax, "quantize_pack_int8") ||
        !mq_check_symmetric_qrange(qmin, qmax, symmetric))
        return NULL;
    if (!(x = mq_array_in(&refs, x_obj, "x", mq_src_types, 4, 2, mq_src_expected))) goto done;
    npy_intp n = PyArray_DIM(x, 0), k = PyArray_DIM(x, 1);
    if (n < 1 || k < 1) {
        PyErr_Format(PyExc_ValueError, "x must have at least one row and one column, got [%zd, %zd]", (Py_ssize_t)n,
                     (Py_ssize_t)k);
        goto done;
    }
    if (!qpack_outputs_new(&refs, &o, out_obj, "quantize_pack_int8", n, k, with_error, x)) goto done;
    int64_t bad;
    int has_m128 = 0;
    Py_BEGIN_ALLOW_THREADS
    bad = mq_quantize_pack_int8(PyArray_DATA(x), mq_src_kind(x), n, k, qmin, qmax, symmetric, QPACK_DATA(o),
                                &has_m128, nthreads);
    Py_END_ALLOW_THREADS
    result = qpack_result(&o, bad, has_m128);
done:
    mq_release(&refs);
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

/* The weight's element type from its safetensors-style name; 0 with ValueError when unknown. */
static int file_dtype(const char *dtype, mq_src_t *kind) {
    if (!strcmp(dtype, "float32")) *kind = MQ_SRC_F32;
    else if (!strcmp(dtype, "float16")) *kind = MQ_SRC_F16;
    else if (!strcmp(dtype, "bfloat16")) *kind = MQ_SRC_BF16;
    else {
        PyErr_Format(PyExc_ValueError, "dtype must be 'float32', 'float16' or 'bfloat16', got '%.50s'", dtype);
        return 0;
    }
    return 1;
}

/* fd holds a [rows, cols] weight of kind at offset: the arguments are sane and
 * the file long enough (rows * cols * elsize and offset + that could pass
 * int64: checked, so the end is exact).  0 with an exception set. */
static int file_holds_weight(int fd, long long offset, long long rows, long long cols, mq_src_t kind,
                             const char *dtype) {
    if (fd < 0 || offset < 0 || rows < 1 || cols < 1 || rows > INT32_MAX || cols > INT32_MAX) {
        PyErr_Format(PyExc_ValueError, "need fd >= 0, offset >= 0 and 1 <= rows, cols < 2^31, got fd=%d offset=%lld "
                     "rows=%lld cols=%lld", fd, offset, rows, cols);
        return 0;
    }
    long long nbytes, end;
    if (__builtin_mul_overflow(rows * cols, (long long)mq_src_size(kind), &nbytes) ||
        __builtin_add_overflow(offset, nbytes, &end)) {
        PyErr_Format(PyExc_ValueError, "a [%lld, %lld] %s weight at offset %lld lies past any file size", rows, cols,
                     dtype, offset);
        return 0;
    }
    struct stat st;
    if (fstat(fd, &st) != 0) {
        PyErr_SetFromErrno(PyExc_OSError);
        return 0;
    }
    if (end > (long long)st.st_size) {
        PyErr_Format(PyExc_ValueError, "the file has %lld bytes, too short for a [%lld, %lld] %s weight at offset "
                     "%lld", (long long)st.st_size, rows, cols, dtype, offset);
        return 0;
    }
    return 1;
}

static PyObject *py_quantize_pack_int8_file(PyObject *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"fd", "offset", "rows", "cols", "dtype", "qmin", "qmax", "symmetric", "with_error",
                             "nthreads", "out", NULL};
    PyObject *out_obj = Py_None, *result = NULL;
    int fd, qmin, qmax, symmetric, with_error = 0, nthreads = 1;
    long long offset, rows, cols;
    const char *dtype;
    mq_src_t kind;
    mq_refs refs = {0};
    qpack_outputs o = {0};
    (void)self;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "iLLLsiip|piO:quantize_pack_int8_file", kwlist, &fd, &offset, &rows,
                                     &cols, &dtype, &qmin, &qmax, &symmetric, &with_error, &nthreads, &out_obj))
        return NULL;
    if (!mq_check_threads(nthreads) || !mq_check_int8_range(qmin, qmax, "quantize_pack_int8_file") ||
        !mq_check_symmetric_qrange(qmin, qmax, symmetric))
        return NULL;
    if (!file_dtype(dtype, &kind) || !file_holds_weight(fd, offset, rows, cols, kind, dtype)) return NULL;
    if (!qpack_outputs_new(&refs, &o, out_obj, "quantize_pack_int8_file", (npy_intp)rows, (npy_intp)cols,
                           with_error, NULL))
        goto done;
    int64_t bad;
    int has_m128 = 0, read_error = 0;
    Py_BEGIN_ALLOW_THREADS
    bad = mq_quantize_pack_int8_file(fd, offset, kind, rows, cols, qmin, qmax, symmetric, QPACK_DATA(o), &has_m128,
                                     &read_error, nthreads);
    Py_END_ALLOW_THREADS
    if (bad != -3)
        result = qpack_result(&o, bad, has_m128);
    else if (read_error == -1)
        PyErr_Format(PyExc_ValueError, "the file ended before the weight's last row (truncated while read?)");
    else {
        errno = read_error;
        PyErr_SetFromErrno(PyExc_OSError);
    }
done:
    mq_release(&refs);
    return result;
}

PyMethodDef mq_pack_methods[] = {
    MQ_KW_METHOD(pack_int8),
    MQ_KW_METHOD(quantize_pack_int8),
    MQ_KW_METHOD(packed_check),
    MQ_KW_METHOD(packed_dequantize),
    MQ_KW_METHOD(quantize_pack_int8_file),
    {NULL, NULL, 0, NULL},
};
