/* bind_linear.c - the int8 linear and conv entry points over the packed
 * layout (linear.c drivers). */
#include "bind.h"

/* The packed weight's companions, checked against n, k and groups, held in
 * refs: *packed, *scale, *zp (NULL when all zero-points are 0), *bias (NULL
 * when None), *w_sum (when w_sum_obj is given).  0 with an exception set. */
static int linear_weight_arrays(mq_refs *refs, PyObject *packed_obj, PyObject *w_sum_obj, PyObject *scale_obj,
                                PyObject *zp_obj, PyObject *bias_obj, npy_intp n, npy_intp k, npy_intp groups,
                                PyArrayObject **packed, PyArrayObject **w_sum, PyArrayObject **scale,
                                PyArrayObject **zp, PyArrayObject **bias) {
    static const int i32[] = {NPY_INT32}, f32[] = {NPY_FLOAT32};
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
    int64_t np64;
    npy_intp packed_size = mq_packed_int8_bytes(n, k, groups, &np64), np_ = np64;
    if (packed_size < 0) {
        PyErr_Format(PyExc_OverflowError, "out_features = %zd (groups = %zd) is far too large: the packed weight's "
                     "size does not fit in 64 bits", (Py_ssize_t)n, (Py_ssize_t)groups);
        return 0;
    }
    if (!(*packed = mq_packed_int8_in(refs, packed_obj, n, k, packed_size))) return 0;
    if (w_sum_obj) {
        if (!(*w_sum = mq_array_in(refs, w_sum_obj, "w_sum", i32, 1, 1, "int32"))) return 0;
        if (PyArray_DIM(*w_sum, 0) != np_) {
            PyErr_Format(PyExc_ValueError, "w_sum must have %zd entries, got %zd", (Py_ssize_t)np_,
                         (Py_ssize_t)PyArray_DIM(*w_sum, 0));
            return 0;
        }
    }
    if (!(*scale = mq_array_in(refs, scale_obj, "w_scale", f32, 1, 1, "float32"))) return 0;
    if (PyArray_DIM(*scale, 0) != n) {
        PyErr_Format(PyExc_ValueError, "w_scale must have %zd entries (out_features), got %zd", (Py_ssize_t)n,
                     (Py_ssize_t)PyArray_DIM(*scale, 0));
        return 0;
    }
    if (!(*zp = mq_array_in(refs, zp_obj, "w_zero_point", i32, 1, 1, "int32"))) return 0;
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
    if (!any) *zp = NULL; /* (still held in refs) the kernels skip the correction */
    *bias = NULL;
    if (bias_obj != Py_None) {
        if (!(*bias = mq_array_in(refs, bias_obj, "bias", f32, 1, 1, "float32"))) return 0;
        if (PyArray_DIM(*bias, 0) != n) {
            PyErr_Format(PyExc_ValueError, "bias must have %zd entries, got %zd", (Py_ssize_t)n,
                         (Py_ssize_t)PyArray_DIM(*bias, 0));
            return 0;
        }
    }
    return 1;
}

/* x for linear_int8, held in refs: rows may be strided (a view); elements
 * within a row must be contiguous and aligned, else a contiguous copy.  The
 * dtype is checked first (no copy of a wrong array). */
static PyArrayObject *linear_x(mq_refs *refs, PyObject *x_obj, int is_acc) {
    if (!PyArray_Check(x_obj) || PyArray_NDIM((PyArrayObject *)x_obj) != 2) {
        PyErr_SetString(PyExc_ValueError, "x must be a 2-D numpy.ndarray [rows, in_features]");
        return NULL;
    }
    PyArrayObject *xv = (PyArrayObject *)x_obj;
    int t = PyArray_TYPE(xv), ok = is_acc ? t == NPY_INT8 : 0;
    for (int i = 0; !is_acc && i < 4; i++) ok |= t == mq_src_types[i];
    if (ok && !PyArray_ISNOTSWAPPED(xv)) {
        PyErr_SetString(PyExc_TypeError, "x must be in native byte order");
        return NULL;
    }
    if (!ok) {
        PyErr_Format(PyExc_TypeError, "x must have dtype %s, got %.50s", is_acc ? "int8" : mq_src_expected,
                     PyArray_DESCR(xv)->typeobj->tp_name);
        return NULL;
    }
    int elem = (int)PyArray_ITEMSIZE(xv);
    if (!PyArray_ISALIGNED(xv) || (PyArray_DIM(xv, 1) > 1 && PyArray_STRIDE(xv, 1) != elem) ||
        (PyArray_DIM(xv, 0) > 1 && (PyArray_STRIDE(xv, 0) % elem || PyArray_STRIDE(xv, 0) < 0)))
        /* (GETCONTIGUOUS would keep a misaligned C-order array) */
        return mq_hold(refs, PyArray_FROM_OF((PyObject *)xv, NPY_ARRAY_IN_ARRAY));
    Py_INCREF(xv);
    return mq_hold(refs, xv);
}

PyDoc_STRVAR(linear_int8_doc,
             "linear_int8(x, packed, w_sum, w_scale, w_zero_point, bias, out_features, w_has_m128,\n"
             "            mode='dynamic', nthreads=1, reduce_range=False) -> float32 array [m, out_features]\n\n"
             "y = x @ W.T + bias with W the packed int8 weight (see pack_int8).  x is a 2-D\n"
             "float32 / float16 / int16 (bf16 bits) array whose rows may be strided.\n"
             "mode 'dynamic': x quantized per row to int8 (-127..127), int32 accumulation,\n"
             "one fused epilogue.  mode 'weight_only': x in fp32 times W dequantized in\n"
             "registers.  mode 'weight_only_amx': the same on AMX-BF16 (x split into bf16 pieces\n"
             "with exact sums: fp32-accurate, not the tiles' bits), or as 'weight_only' where the\n"
             "level has no AMX-BF16, x is not float32 or holds an infinity or NaN.\n"
             "mode 'int8_acc': x is already int8 and the exact int32\n"
             "accumulators sum_k x * (w - zero_point) are returned (int32 array; tests).\n"
             "reduce_range=True (mode 'dynamic' only): x quantized per row to 7 bits, asymmetric\n"
             "(0..127 with a zero-point), the same integers at every kernel level.");

static PyObject *py_linear_int8(PyObject *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"x", "packed", "w_sum", "w_scale", "w_zero_point", "bias", "out_features",
                             "w_has_m128", "mode", "nthreads", "reduce_range", NULL};
    PyObject *x_obj, *packed_obj, *w_sum_obj, *scale_obj, *zp_obj, *bias_obj, *result = NULL;
    Py_ssize_t n;
    int has_m128, nthreads = 1, reduce_range = 0;
    const char *mode = "dynamic";
    mq_refs refs = {0};
    PyArrayObject *x, *packed, *w_sum, *scale, *zp, *bias, *y;
    (void)self;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOOOOOnp|sip:linear_int8", kwlist, &x_obj, &packed_obj, &w_sum_obj,
                                     &scale_obj, &zp_obj, &bias_obj, &n, &has_m128, &mode, &nthreads,
                                     &reduce_range))
        return NULL;
    if (!mq_check_threads(nthreads)) return NULL;
    int is_acc = !strcmp(mode, "int8_acc"), is_wo_amx = !strcmp(mode, "weight_only_amx");
    int is_wo = is_wo_amx || !strcmp(mode, "weight_only");
    if (!is_acc && !is_wo && strcmp(mode, "dynamic")) {
        PyErr_Format(PyExc_ValueError, "mode must be 'dynamic', 'weight_only', 'weight_only_amx' or 'int8_acc', got '%s'",
                     mode);
        return NULL;
    }
    if (reduce_range && (is_acc || is_wo)) {
        PyErr_Format(PyExc_ValueError, "reduce_range applies to mode 'dynamic' only (quantized activations), "
                     "got mode '%s'", mode);
        return NULL;
    }
    if (!(x = linear_x(&refs, x_obj, is_acc))) goto done;
    npy_intp m = PyArray_DIM(x, 0), k = PyArray_DIM(x, 1);
    npy_intp ldx = m > 1 ? PyArray_STRIDE(x, 0) / (npy_intp)PyArray_ITEMSIZE(x) : k;
    /* rows of a broadcast x cost nothing here, but the driver's int8 copy has m * round_up(k, 4) bytes */
    if (!mq_size_fits(mq_size_mul(m, mq_size_round_up(k, MQ_KGROUP)), "linear_int8", "rows x in_features"))
        goto done;
    if (!linear_weight_arrays(&refs, packed_obj, w_sum_obj, scale_obj, zp_obj, bias_obj, n, k, 1, &packed, &w_sum,
                              &scale, &zp, &bias))
        goto done;
    npy_intp dims[2] = {m, n};
    if (!(y = mq_array_new(&refs, 2, dims, is_acc ? NPY_INT32 : NPY_FLOAT32, 0))) goto done;
    int status;
    mq_src_t kind = mq_src_kind(x);
    Py_BEGIN_ALLOW_THREADS
    if (is_wo) {
        /* 1 from AMX: no AMX-BF16 here, another x dtype, or inf / NaN: the tiles */
        status = is_wo_amx ? mq_linear_weight_only_amx(PyArray_DATA(x), kind, m, k, ldx, PyArray_DATA(packed),
                                                       PyArray_DATA(scale), mq_data_or_null(zp),
                                                       mq_data_or_null(bias), n, PyArray_DATA(y), nthreads)
                           : 1;
        if (status == 1)
            status = mq_linear_weight_only(PyArray_DATA(x), kind, m, k, ldx, PyArray_DATA(packed),
                                           PyArray_DATA(scale), mq_data_or_null(zp), mq_data_or_null(bias), n,
                                           PyArray_DATA(y), nthreads);
    } else {
        status = mq_linear_dynamic(PyArray_DATA(x), kind, is_acc, m, k, ldx, PyArray_DATA(packed),
                                   PyArray_DATA(w_sum), PyArray_DATA(scale), mq_data_or_null(zp), has_m128,
                                   mq_data_or_null(bias), n, is_acc ? NULL : PyArray_DATA(y),
                                   is_acc ? PyArray_DATA(y) : NULL, reduce_range, nthreads);
    }
    Py_END_ALLOW_THREADS
    result = status < 0 ? PyErr_NoMemory() : mq_return(y);
done:
    mq_release(&refs);
    return result;
}

PyDoc_STRVAR(conv2d_int8_doc,
             "conv2d_int8(x, packed, w_sum, w_scale, w_zero_point, bias, out_channels, w_has_m128,\n"
             "            kernel, stride, padding, dilation, groups, nthreads=1, nchw=False,\n"
             "            reduce_range=False)\n"
             "    -> float32 [rows, out_channels], or [batch, out_channels, out_h, out_w] with nchw\n\n"
             "Dynamic int8 Conv2d: x is a 4-D NCHW float32 / float16 / int16 (bf16 bits) array;\n"
             "each image is quantized with one symmetric int8 scale, im2col'd in int8 and\n"
             "multiplied per group with the packed weight (pack_int8 of each group's\n"
             "[out/groups, in/groups*kh*kw] block, concatenated).  kernel, stride, padding\n"
             "and dilation are (h, w) pairs.  Rows are the output pixels in (n, h, w) order;\n"
             "nchw=True writes the same values as an NCHW array instead (transposed in C).\n"
             "reduce_range=True: each image quantized to 7 bits, asymmetric (0..127).");

static PyObject *py_conv2d_int8(PyObject *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"x", "packed", "w_sum", "w_scale", "w_zero_point", "bias", "out_channels",
                             "w_has_m128", "kernel", "stride", "padding", "dilation", "groups", "nthreads",
                             "nchw", "reduce_range", NULL};
    PyObject *x_obj, *packed_obj, *w_sum_obj, *scale_obj, *zp_obj, *bias_obj, *kernel_obj, *stride_obj, *pad_obj,
        *dil_obj, *result = NULL;
    Py_ssize_t n, groups;
    int has_m128, nthreads = 1, nchw = 0, reduce_range = 0;
    npy_intp ks[2], st[2], pd[2], dl[2];
    mq_refs refs = {0};
    PyArrayObject *x, *packed, *w_sum, *scale, *zp, *bias, *y;
    (void)self;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOOOOOnpOOOOn|ipp:conv2d_int8", kwlist, &x_obj, &packed_obj,
                                     &w_sum_obj, &scale_obj, &zp_obj, &bias_obj, &n, &has_m128, &kernel_obj,
                                     &stride_obj, &pad_obj, &dil_obj, &groups, &nthreads, &nchw, &reduce_range))
        return NULL;
    if (!mq_check_threads(nthreads)) return NULL;
    if (!mq_conv_pair(kernel_obj, "kernel", 1, ks) || !mq_conv_pair(stride_obj, "stride", 1, st) ||
        !mq_conv_pair(pad_obj, "padding", 0, pd) || !mq_conv_pair(dil_obj, "dilation", 1, dl))
        return NULL;
    if (!(x = mq_array_in(&refs, x_obj, "x", mq_src_types, 4, 4, mq_src_expected))) goto done;
    npy_intp batch = PyArray_DIM(x, 0), channels = PyArray_DIM(x, 1), height = PyArray_DIM(x, 2),
             width = PyArray_DIM(x, 3);
    if (groups < 1 || channels % groups) {
        PyErr_Format(PyExc_ValueError, "in_channels %zd is not divisible by groups=%zd", (Py_ssize_t)channels,
                     (Py_ssize_t)groups);
        goto done;
    }
    npy_intp out_h = (height + 2 * pd[0] - dl[0] * (ks[0] - 1) - 1) / st[0] + 1;
    npy_intp out_w = (width + 2 * pd[1] - dl[1] * (ks[1] - 1) - 1) / st[1] + 1;
    if (height + 2 * pd[0] < dl[0] * (ks[0] - 1) + 1 || width + 2 * pd[1] < dl[1] * (ks[1] - 1) + 1) {
        PyErr_SetString(PyExc_ValueError, "the (padded) input is smaller than the dilated kernel");
        goto done;
    }
    npy_intp k_conv;
    if (__builtin_mul_overflow(channels / groups, ks[0] * ks[1], &k_conv) || k_conv > MQ_MAX_LINEAR_K) {
        PyErr_Format(PyExc_ValueError, "in_channels/groups * kernel area must be at most %d", MQ_MAX_LINEAR_K);
        goto done;
    }
    if (!linear_weight_arrays(&refs, packed_obj, w_sum_obj, scale_obj, zp_obj, bias_obj, n, k_conv, groups, &packed,
                              &w_sum, &scale, &zp, &bias))
        goto done;
    /* output rows and the int8 im2col buffer: products of the batch and the padded image sizes */
    npy_intp m = mq_size_mul(mq_size_mul(batch, out_h), out_w);
    if (m < 0 || mq_size_mul(m, mq_size_round_up(k_conv, MQ_KGROUP)) < 0) {
        PyErr_Format(PyExc_OverflowError, "conv2d_int8: %zd images of %zd x %zd output pixels (x %zd inputs each) "
                     "do not fit in 64-bit sizes; reduce the batch or the padding", (Py_ssize_t)batch,
                     (Py_ssize_t)out_h, (Py_ssize_t)out_w, (Py_ssize_t)k_conv);
        goto done;
    }
    npy_intp dims[2] = {m, n}, dims_nchw[4] = {batch, n, out_h, out_w};
    if (!(y = nchw ? mq_array_new(&refs, 4, dims_nchw, NPY_FLOAT32, 0) : mq_array_new(&refs, 2, dims, NPY_FLOAT32, 0)))
        goto done;
    int status;
    mq_src_t kind = mq_src_kind(x);
    Py_BEGIN_ALLOW_THREADS
    status = mq_conv2d_dynamic(PyArray_DATA(x), kind, batch, channels, height, width, ks[0], ks[1], st[0], st[1],
                               pd[0], pd[1], dl[0], dl[1], groups, PyArray_DATA(packed), PyArray_DATA(w_sum),
                               PyArray_DATA(scale), mq_data_or_null(zp), has_m128, mq_data_or_null(bias), n,
                               PyArray_DATA(y), nchw, reduce_range, nthreads);
    Py_END_ALLOW_THREADS
    result = status < 0 ? PyErr_NoMemory() : mq_return(y);
done:
    mq_release(&refs);
    return result;
}

/* ---- a prepared dynamic call: the weight arrays checked once ---------------------------
 * A small layer's per-call path (formats/packed_linear.dynamic_linear): matching eleven
 * arguments and checking six arrays on every call cost about as much as a 32x10 GEMV.
 * The capsule holds the checked arrays (so their memory lives as long as it does) and the
 * pointers into them; the caller keeps it only while the tensors it viewed are unchanged. */
typedef struct {
    PyObject *held[5]; /* packed, w_sum, scale, zp, bias: owned references (NULL where absent) */
    const int8_t *packed;
    const int32_t *w_sum;
    const float *scale;
    const int32_t *zp; /* NULL when every zero-point is 0 */
    const float *bias; /* NULL without a bias */
    npy_intp n, k;
    int has_m128;
} prepared_linear;

static const char prepared_name[] = "mono_quant._C.linear_int8_prepared";

static void prepared_free(PyObject *capsule) {
    prepared_linear *p = PyCapsule_GetPointer(capsule, prepared_name);
    if (!p) {
        PyErr_Clear();
        return;
    }
    for (int i = 0; i < 5; i++) Py_XDECREF(p->held[i]);
    PyMem_Free(p);
}

PyDoc_STRVAR(linear_int8_prepare_doc,
             "linear_int8_prepare(packed, w_sum, w_scale, w_zero_point, bias, out_features, w_has_m128,\n"
             "                    in_features) -> capsule\n\n"
             "The weight arguments of linear_int8 (the same checks) for an [out_features, in_features]\n"
             "weight, checked once and kept for linear_int8_prepared.");

static PyObject *py_linear_int8_prepare(PyObject *self, PyObject *args) {
    PyObject *packed_obj, *w_sum_obj, *scale_obj, *zp_obj, *bias_obj, *result = NULL;
    Py_ssize_t n, k;
    int has_m128;
    mq_refs refs = {0};
    PyArrayObject *packed, *w_sum, *scale, *zp, *bias;
    (void)self;
    if (!PyArg_ParseTuple(args, "OOOOOnpn:linear_int8_prepare", &packed_obj, &w_sum_obj, &scale_obj, &zp_obj,
                          &bias_obj, &n, &has_m128, &k))
        return NULL;
    if (!linear_weight_arrays(&refs, packed_obj, w_sum_obj, scale_obj, zp_obj, bias_obj, n, k, 1, &packed, &w_sum,
                              &scale, &zp, &bias))
        goto done;
    prepared_linear *p = PyMem_Calloc(1, sizeof *p);
    if (!p) {
        PyErr_NoMemory();
        goto done;
    }
    PyArrayObject *keep[5] = {packed, w_sum, scale, zp, bias};
    for (int i = 0; i < 5; i++) {
        p->held[i] = (PyObject *)keep[i];
        Py_XINCREF(p->held[i]);
    }
    p->packed = PyArray_DATA(packed);
    p->w_sum = PyArray_DATA(w_sum);
    p->scale = PyArray_DATA(scale);
    p->zp = mq_data_or_null(zp);
    p->bias = mq_data_or_null(bias);
    p->n = n;
    p->k = k;
    p->has_m128 = has_m128;
    result = PyCapsule_New(p, prepared_name, prepared_free);
    if (!result) {
        for (int i = 0; i < 5; i++) Py_XDECREF(p->held[i]);
        PyMem_Free(p);
    }
done:
    mq_release(&refs);
    return result;
}

PyDoc_STRVAR(linear_int8_prepared_doc,
             "linear_int8_prepared(x, prepared, nthreads, reduce_range) -> float32 array [m, out_features]\n\n"
             "linear_int8(x, ..., mode='dynamic', nthreads, reduce_range) with the weight arguments of\n"
             "linear_int8_prepare: the same result.  Positional arguments only.");

static PyObject *py_linear_int8_prepared(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "linear_int8_prepared(x, prepared, nthreads, reduce_range) takes 4 "
                                         "positional arguments");
        return NULL;
    }
    if (!PyCapsule_IsValid(args[1], prepared_name)) {
        PyErr_SetString(PyExc_TypeError, "prepared must be what linear_int8_prepare returned");
        return NULL;
    }
    prepared_linear *p = PyCapsule_GetPointer(args[1], prepared_name);
    long nthreads = PyLong_AsLong(args[2]);
    if (nthreads == -1 && PyErr_Occurred()) return NULL;
    if (nthreads < 1 || nthreads > 1024) {
        PyErr_Format(PyExc_ValueError, "nthreads must be in 1..1024, got %ld", nthreads);
        return NULL;
    }
    int reduce_range = PyObject_IsTrue(args[3]);
    if (reduce_range < 0) return NULL;
    PyObject *result = NULL;
    mq_refs refs = {0};
    PyArrayObject *x, *y;
    if (!(x = linear_x(&refs, args[0], 0))) goto done;
    npy_intp m = PyArray_DIM(x, 0), k = PyArray_DIM(x, 1);
    if (k != p->k) {
        PyErr_Format(PyExc_ValueError, "x has %zd features, the prepared weight takes %zd", (Py_ssize_t)k,
                     (Py_ssize_t)p->k);
        goto done;
    }
    npy_intp ldx = m > 1 ? PyArray_STRIDE(x, 0) / (npy_intp)PyArray_ITEMSIZE(x) : k;
    if (!mq_size_fits(mq_size_mul(m, mq_size_round_up(k, MQ_KGROUP)), "linear_int8_prepared", "rows x in_features"))
        goto done;
    npy_intp dims[2] = {m, p->n};
    if (!(y = mq_array_new(&refs, 2, dims, NPY_FLOAT32, 0))) goto done;
    int status;
    mq_src_t kind = mq_src_kind(x);
    Py_BEGIN_ALLOW_THREADS
    status = mq_linear_dynamic(PyArray_DATA(x), kind, 0, m, k, ldx, p->packed, p->w_sum, p->scale, p->zp,
                               p->has_m128, p->bias, p->n, PyArray_DATA(y), NULL, reduce_range, (int)nthreads);
    Py_END_ALLOW_THREADS
    result = status < 0 ? PyErr_NoMemory() : mq_return(y);
done:
    mq_release(&refs);
    return result;
}

PyDoc_STRVAR(set_split_rows_doc,
             "set_split_rows(mode) -> previous\n\n"
             "Whether the dynamic int8 Linear and the direct convs (dynamic, static) may run the level's split\n"
             "kernels (AVX2 without VNNI, csrc/act_split.c, csrc/conv_split.c) and its kernels on codes that are\n"
             "never negative (the convs' x86/avx2/static_conv_ux.c on dynamic images of codes 0..127 and static\n"
             "work items of codes x - x_zp that keep it; the 7-bit kernel on Linear calls of codes >= 0): 1 /\n"
             "True (default) on the calls (images) their rules take, 0 / False never (the sign trick), 2 the\n"
             "split on every call of 8 rows or more and every conv image whatever its size or count of cuts,\n"
             "codes of both signs (those never negative still take their own kernel; tests).  The same bits in\n"
             "every mode (tests and benchmarks compare them); linear_kernels()['split_rows_calls'] /\n"
             "['unsigned_rows_calls'] / ['split_conv_images'] / ['unsigned_conv_images'] count them.");

static PyObject *py_set_split_rows(PyObject *self, PyObject *arg) {
    (void)self;
    const long mode = PyLong_AsLong(arg);
    if (mode == -1 && PyErr_Occurred()) return NULL;
    if (mode < 0 || mode > 2) {
        PyErr_Format(PyExc_ValueError, "set_split_rows: mode 0, 1 or 2, got %ld", mode);
        return NULL;
    }
    return PyLong_FromLong(__atomic_exchange_n(&mq_split_rows_enabled, (int)mode, __ATOMIC_RELAXED));
}

PyDoc_STRVAR(act_split_doc,
             "act_split(q) -> (codes, need, sums, cuts)\n\n"
             "The split of int8 activation rows (csrc/act_split.c) at the active level: q int8 [rows, kp] with\n"
             "kp % 4 == 0 and kp <= max_in_features.  codes: the split rows (every pair's |a| + |b| <= 128), need:\n"
             "each row's list entries (int64), sums: each row's sum of codes (int32), cuts: the list's cut-off\n"
             "parts back at their positions (codes + cuts == q).  Tests only.");

static PyObject *py_act_split(PyObject *self, PyObject *arg) {
    (void)self;
    mq_refs refs = {0};
    PyObject *result = NULL;
    static const int types[] = {NPY_INT8};
    PyArrayObject *q = mq_array_in(&refs, arg, "q", types, 1, 2, "int8");
    if (!q) goto done;
    const npy_intp rows = PyArray_DIM(q, 0), kp = PyArray_DIM(q, 1);
    if (kp % MQ_KGROUP || kp > MQ_MAX_LINEAR_K) {
        PyErr_Format(PyExc_ValueError, "act_split: rows of a multiple of %d codes, at most %d, got %zd", MQ_KGROUP,
                     MQ_MAX_LINEAR_K, (Py_ssize_t)kp);
        goto done;
    }
    const npy_intp dims[2] = {rows, kp};
    PyArrayObject *codes = mq_array_new(&refs, 2, dims, NPY_INT8, 0);
    PyArrayObject *cuts = mq_array_new(&refs, 2, dims, NPY_INT8, 1);
    PyArrayObject *need = mq_array_new(&refs, 1, dims, NPY_INT64, 0);
    PyArrayObject *sums = mq_array_new(&refs, 1, dims, NPY_INT32, 0);
    if (!codes || !cuts || !need || !sums) goto done;
    const int64_t words = mq_split_mask_words(kp), room = kp / 2 + 1;
    uint32_t *mask = malloc((size_t)(words ? words : 1) * sizeof(uint32_t));
    mq_split_entry *entries = malloc((size_t)room * sizeof(mq_split_entry));
    if (!mask || !entries) {
        free(mask);
        free(entries);
        PyErr_NoMemory();
        goto done;
    }
    memcpy(PyArray_DATA(codes), PyArray_DATA(q), (size_t)(rows * kp));
    const mq_kernels *kt = mq_active();
    for (npy_intp r = 0; r < rows; r++) {
        int8_t *row = (int8_t *)PyArray_DATA(codes) + r * kp, *cut = (int8_t *)PyArray_DATA(cuts) + r * kp;
        const int64_t n = kt->act_split_count(row, kp, (int32_t *)PyArray_DATA(sums) + r, mask);
        ((int64_t *)PyArray_DATA(need))[r] = n;
        mq_act_split_row(row, kp, mask, entries);
        for (int64_t e = 0; e < n; e++)
            for (int j = 0; j < 4; j++)
                if (entries[e].cut[j]) cut[entries[e].offset[j / 2] / MQ_PANEL_GROUP_BYTES * MQ_KGROUP + j] = entries[e].cut[j];
    }
    free(mask);
    free(entries);
    result = Py_BuildValue("(OOOO)", codes, need, sums, cuts);
done:
    mq_release(&refs);
    return result;
}

PyMethodDef mq_linear_methods[] = {
    {"set_split_rows", py_set_split_rows, METH_O, set_split_rows_doc},
    {"act_split", py_act_split, METH_O, act_split_doc},
    MQ_KW_METHOD(linear_int8),
    MQ_KW_METHOD(conv2d_int8),
    {"linear_int8_prepare", py_linear_int8_prepare, METH_VARARGS, linear_int8_prepare_doc},
    {"linear_int8_prepared", (PyCFunction)(void (*)(void))py_linear_int8_prepared, METH_FASTCALL,
     linear_int8_prepared_doc},
    {NULL, NULL, 0, NULL},
};
