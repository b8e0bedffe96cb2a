/* bind_fp16.c - the fp16 / bf16 weight linear (fp16.c driver) and Conv2d (h16_conv.c). */
#include "bind.h"

PyDoc_STRVAR(h16_linear_doc,
             "h16_linear(x, w, bf16, bias=None, nthreads=1, panels=False) -> y\n\n"
             "y [m, n] float32 = x [m, k] float32 @ W.T (+ bias [n] float32) for W [n, k] 16-bit\n"
             "weights widened to fp32 in registers: IEEE fp16 (bf16=False: float16, or its\n"
             "int16/uint16 bits) or bf16 (bf16=True: int16/uint16 bits).  fp32 accumulation.\n"
             "panels=True (for many rows): each 16-channel panel widened once per block of rows\n"
             "and the weight-only tiles' sum order (the same bits on AVX2 and AVX-512; the scalar\n"
             "level, or fewer than 8 rows, as panels=False).  panels=2: on AMX-BF16 (x and the\n"
             "weight split into bf16 pieces with exact sums, exact products, fp32 sums: fp32-accurate,\n"
             "not the other paths' bits; where the level has no AMX-BF16, as panels=True).\n"
             "MemoryError if a buffer cannot be allocated.");

static PyObject *py_h16_linear(PyObject *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"x", "w", "bf16", "bias", "nthreads", "panels", NULL};
    static const int f32[] = {NPY_FLOAT32}, h16[] = {NPY_FLOAT16, NPY_INT16, NPY_UINT16}, bits[] = {NPY_INT16,
                                                                                                     NPY_UINT16};
    PyObject *x_obj, *w_obj, *b_obj = Py_None, *result = NULL;
    int is_bf16, nthreads = 1, panels = 0;
    mq_refs refs = {0};
    PyArrayObject *x, *w, *bias = NULL, *out;
    (void)self;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOp|Oii:h16_linear", kwlist, &x_obj, &w_obj, &is_bf16, &b_obj,
                                     &nthreads, &panels))
        return NULL;
    if (panels < 0 || panels > 2) {
        PyErr_Format(PyExc_ValueError, "panels must be 0, 1 or 2 (AMX), got %d", panels);
        return NULL;
    }
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
    if (!mq_bias_in(&refs, b_obj, n, "rows", &bias)) goto done;
    npy_intp dims[2] = {m, n};
    if (!(out = mq_array_new(&refs, 2, dims, NPY_FLOAT32, 0))) goto done;
    if (m * n > 0) {
        int rc = 1;
        Py_BEGIN_ALLOW_THREADS
        if (panels == 2) rc = mq_h16_linear_amx(PyArray_DATA(x), m, k, PyArray_DATA(w), is_bf16,
                                                mq_data_or_null(bias), n, PyArray_DATA(out), nthreads);
        if (panels && rc == 1)
            rc = mq_h16_linear_panels(PyArray_DATA(x), m, k, PyArray_DATA(w), is_bf16, mq_data_or_null(bias), n,
                                      PyArray_DATA(out), nthreads);
        if (rc == 1)
            mq_h16_linear(PyArray_DATA(x), m, k, k, PyArray_DATA(w), is_bf16, mq_data_or_null(bias), n,
                          PyArray_DATA(out), nthreads);
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

PyDoc_STRVAR(h16_conv2d_doc,
             "h16_conv2d(x, w, bf16, bias, stride, padding, dilation, groups, nthreads=1, direct=False,\n"
             "           winograd=False) -> y\n\n"
             "y [batch, n, out_h, out_w] float32 = conv2d(x [batch, channels, height, width] float32,\n"
             "W [n, channels/groups, kh, kw] 16-bit (as h16_linear's w), bias [n] float32 or None)\n"
             "with zero padding; stride, padding and dilation are (h, w) pairs.  fp32\n"
             "accumulation (im2col rows times the weight widened in registers); direct=True:\n"
             "without im2col (h16_dconv.c: each output an fmaf chain from the bias, the same\n"
             "bits at every kernel level and thread count); winograd=True (a 3x3 stride-1 conv\n"
             "without groups): Winograd F(2x2, 3x3), h16_winograd.c (the same bits at every\n"
             "level; float32 rounding of the per-tile magnitudes).");

static PyObject *py_h16_conv2d(PyObject *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"x",      "w",        "bf16",   "bias",     "stride", "padding",
                             "dilation", "groups", "nthreads", "direct", "winograd", NULL};
    static const int f32[] = {NPY_FLOAT32}, h16[] = {NPY_FLOAT16, NPY_INT16, NPY_UINT16}, bits[] = {NPY_INT16,
                                                                                                     NPY_UINT16};
    PyObject *x_obj, *w_obj, *b_obj, *stride_obj, *pad_obj, *dil_obj, *result = NULL;
    int is_bf16, nthreads = 1, direct = 0, winograd = 0;
    Py_ssize_t groups;
    npy_intp st[2], pd[2], dl[2];
    mq_refs refs = {0};
    PyArrayObject *x, *w, *bias = NULL, *out;
    (void)self;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOpOOOOn|ipp:h16_conv2d", kwlist, &x_obj, &w_obj, &is_bf16, &b_obj,
                                     &stride_obj, &pad_obj, &dil_obj, &groups, &nthreads, &direct, &winograd))
        return NULL;
    if (!mq_check_threads(nthreads)) return NULL;
    if (!mq_conv_pair(stride_obj, "stride", 1, st) || !mq_conv_pair(pad_obj, "padding", 0, pd) ||
        !mq_conv_pair(dil_obj, "dilation", 1, dl))
        return NULL;
    if (!(x = mq_array_in(&refs, x_obj, "x", f32, 1, 4, "float32"))) goto done;
    if (is_bf16) {
        if (!(w = mq_array_in(&refs, w_obj, "w", bits, 2, 4, "int16/uint16 (bf16 bits)"))) goto done;
    } else if (!(w = mq_array_in(&refs, w_obj, "w", h16, 3, 4, "float16 (or its int16/uint16 bits)"))) {
        goto done;
    }
    npy_intp batch = PyArray_DIM(x, 0), channels = PyArray_DIM(x, 1), height = PyArray_DIM(x, 2),
             width = PyArray_DIM(x, 3), n = PyArray_DIM(w, 0), kh = PyArray_DIM(w, 2), kwd = PyArray_DIM(w, 3);
    if (groups < 1 || groups > MQ_MAX_CONV_ARG || channels % groups || n % groups) {
        PyErr_Format(PyExc_ValueError, "groups=%zd must divide in_channels %zd and out_channels %zd",
                     (Py_ssize_t)groups, (Py_ssize_t)channels, (Py_ssize_t)n);
        goto done;
    }
    if (PyArray_DIM(w, 1) != channels / groups) {
        PyErr_Format(PyExc_ValueError, "x has %zd channels in %zd groups, the weight expects %zd per group",
                     (Py_ssize_t)channels, (Py_ssize_t)groups, (Py_ssize_t)PyArray_DIM(w, 1));
        goto done;
    }
    if (kh < 1 || kwd < 1 || kh > MQ_MAX_CONV_ARG || kwd > MQ_MAX_CONV_ARG) {
        PyErr_Format(PyExc_ValueError, "kernel size (%zd, %zd) must be in 1..%ld", (Py_ssize_t)kh,
                     (Py_ssize_t)kwd, MQ_MAX_CONV_ARG);
        goto done;
    }
    if (height + 2 * pd[0] < dl[0] * (kh - 1) + 1 || width + 2 * pd[1] < dl[1] * (kwd - 1) + 1) {
        PyErr_SetString(PyExc_ValueError, "the (padded) input is smaller than the dilated kernel");
        goto done;
    }
    npy_intp out_h = mq_conv_out(height, kh, st[0], pd[0], dl[0]);
    npy_intp out_w = mq_conv_out(width, kwd, st[1], pd[1], dl[1]);
    /* the GEMM's sizes: rows (batch x output pixels) times k and times n must fit */
    npy_intp m = mq_size_mul(mq_size_mul(batch, out_h), out_w);
    npy_intp k = mq_size_mul(channels / groups, mq_size_mul(kh, kwd));
    if (!mq_size_fits(mq_size_mul(m, k), "h16_conv2d", "batch x output pixels x in_channels/groups x kernel area") ||
        !mq_size_fits(mq_size_mul(m, n), "h16_conv2d", "batch x output pixels x out_channels"))
        goto done;
    if (!mq_bias_in(&refs, b_obj, n, "output channels", &bias)) goto done;
    if (direct && winograd) {
        PyErr_SetString(PyExc_ValueError, "h16_conv2d: direct=True and winograd=True both asked for; pass at most "
                                          "one of them (neither: the im2col GEMM)");
        goto done;
    }
    if (winograd && (kh != 3 || kwd != 3 || st[0] != 1 || st[1] != 1 || dl[0] != 1 || dl[1] != 1 || groups != 1)) {
        PyErr_SetString(PyExc_ValueError, "winograd=True needs a 3x3 kernel, stride 1, dilation 1 and groups=1; "
                                          "pass winograd=False for this conv");
        goto done;
    }
    npy_intp dims[4] = {batch, n, out_h, out_w};
    if (!(out = mq_array_new(&refs, 4, dims, NPY_FLOAT32, 0))) goto done;
    int status = 0;
    if (m * n > 0) {
        Py_BEGIN_ALLOW_THREADS
        if (winograd)
            status = mq_h16_wino2d(PyArray_DATA(x), batch, channels, height, width, pd[0], pd[1], PyArray_DATA(w),
                                   is_bf16, mq_data_or_null(bias), n, PyArray_DATA(out), nthreads);
        else
            status = (direct ? mq_h16_dconv2d : mq_h16_conv2d)(
                PyArray_DATA(x), batch, channels, height, width, kh, kwd, st[0], st[1], pd[0], pd[1], dl[0], dl[1],
                groups, PyArray_DATA(w), is_bf16, mq_data_or_null(bias), n, PyArray_DATA(out), nthreads);
        Py_END_ALLOW_THREADS
    }
    if (status < 0) {
        /* PyErr_NoMemory() says nothing: name the conv and what it needed (in MB) */
        const int copies = direct && (pd[0] > 0 || pd[1] > 0);
        const double floats = (double)batch * (double)channels * (double)(height + (copies ? 2 * pd[0] : 0)) *
                               (double)(width + (copies ? 2 * pd[1] : 0));
        const long long mb = (long long)(floats * sizeof(float) / 1e6 < 1e15 ? floats * sizeof(float) / 1e6 : 1e15);
        PyErr_Format(PyExc_MemoryError,
                     "h16_conv2d: out of memory for the working buffers of the %s conv of x [%zd, %zd, %zd, %zd] "
                     "with padding (%zd, %zd) into %zd output channels (%s: %lld MB); %s",
                     winograd ? "Winograd" : direct ? "direct" : "im2col GEMM", (Py_ssize_t)batch,
                     (Py_ssize_t)channels, (Py_ssize_t)height, (Py_ssize_t)width, (Py_ssize_t)pd[0],
                     (Py_ssize_t)pd[1], (Py_ssize_t)n,
                     copies ? "its copy of the zero-padded image alone" : "the image", mb,
                     copies ? "a smaller padding, or direct=False (the GEMM reads the image without a copy)"
                            : "a smaller batch");
    } else {
        result = mq_return(out);
    }
done:
    mq_release(&refs);
    return result;
}

PyMethodDef mq_fp16_methods[] = {
    MQ_KW_METHOD(h16_linear),
    MQ_KW_METHOD(h16_conv2d),
    {NULL, NULL, 0, NULL},
};
