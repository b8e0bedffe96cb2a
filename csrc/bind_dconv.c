/* bind_dconv.c - the direct Conv2d (h16_dconv.c) on panels kept per layer: a packed int8
 * weight's, dequantized (weight-only int8 convs), or a float32 / fp16 / bf16 weight's, widened;
 * for a packed int8 or an int4 weight whose panels are not kept, both in one call; and the
 * float32 depthwise conv (float_depthwise.c). */
#include "bind.h"
#include "layout.h"

/* bias: None, or float32 [n]: 1, or 0 with an exception set */
/* (panels, biases) of wt, new arrays filled by mq_dconv_fill_panels; NULL with an exception set */
static PyObject *panels_out(mq_refs *refs, const char *fname, const mq_dconv_weight *wt, npy_intp n, npy_intp groups,
                            int64_t k, int nthreads) {
    npy_intp pdim = mq_dconv_panel_floats(n, groups, k), bdim = mq_dconv_bias_floats(n, groups);
    PyArrayObject *panels, *biases;
    if (!mq_size_fits(pdim, fname, "the panels")) return NULL;
    if (!(panels = mq_array_new(refs, 1, &pdim, NPY_FLOAT32, 0)) ||
        !(biases = mq_array_new(refs, 1, &bdim, NPY_FLOAT32, 0)))
        return NULL;
    Py_BEGIN_ALLOW_THREADS
    mq_dconv_fill_panels(wt, n, groups, k, PyArray_DATA(panels), PyArray_DATA(biases), nthreads);
    Py_END_ALLOW_THREADS
    return Py_BuildValue("OO", panels, biases);
}

/* wt from a packed int8 weight [n, cg, kh, kw] in `groups` groups and its qparams / bias: 1, or
 * 0 with an exception set. */
static int int8_weight_in(mq_refs *refs, PyObject *p_obj, PyObject *s_obj, PyObject *z_obj, PyObject *b_obj,
                          npy_intp n, npy_intp cg, const npy_intp ks[2], npy_intp groups, mq_dconv_weight *wt) {
    static const int f32[] = {NPY_FLOAT32}, i32[] = {NPY_INT32};
    PyArrayObject *packed, *scale, *zp, *bias = NULL;
    if (groups < 1 || groups > MQ_MAX_CONV_ARG || n < 1 || n % groups) {
        PyErr_Format(PyExc_ValueError, "groups=%zd must divide out_channels %zd (both positive)", (Py_ssize_t)groups,
                     (Py_ssize_t)n);
        return 0;
    }
    if (cg < 1 || cg > MQ_MAX_CONV_ARG * 64) {
        PyErr_Format(PyExc_ValueError, "in_channels / groups must be in 1..%ld, got %zd", MQ_MAX_CONV_ARG * 64,
                     (Py_ssize_t)cg);
        return 0;
    }
    if (!(scale = mq_array_in(refs, s_obj, "scale", f32, 1, 1, "float32")) ||
        !(zp = mq_array_in(refs, z_obj, "zero_point", i32, 1, 1, "int32")))
        return 0;
    if (PyArray_DIM(scale, 0) != n || PyArray_DIM(zp, 0) != n) {
        PyErr_Format(PyExc_ValueError, "scale and zero_point need %zd entries (one per output channel), got %zd and %zd",
                     (Py_ssize_t)n, (Py_ssize_t)PyArray_DIM(scale, 0), (Py_ssize_t)PyArray_DIM(zp, 0));
        return 0;
    }
    if (!mq_bias_in(refs, b_obj, n, "output channels", &bias)) return 0;
    const int64_t k = mq_size_mul(cg, ks[0] * ks[1]);
    int64_t np_total;
    if (!(packed = mq_packed_int8_in(refs, p_obj, n, k, mq_packed_int8_bytes(n, k, groups, &np_total)))) return 0;
    *wt = (mq_dconv_weight){.packed = PyArray_DATA(packed), .scale = PyArray_DATA(scale), .zp = PyArray_DATA(zp),
                            .cg = cg, .kh = ks[0], .kw = ks[1], .bias = mq_data_or_null(bias)};
    return 1;
}

PyDoc_STRVAR(dconv_panels_int8_doc,
             "dconv_panels_int8(packed, scale, zero_point, bias, out_channels, in_per_group, kernel_size,\n"
             "                  groups, nthreads=1) -> (panels, biases)\n\n"
             "The direct conv's panels (float32 1-D) and bias lanes (float32 1-D) of a packed int8\n"
             "Conv2d weight (weight_packed of [out_channels, in_per_group, kh, kw], K in (kh, kw, in)\n"
             "order): each weight (q - zero_point) * scale in float32, as torch's dequantize.  scale\n"
             "float32 and zero_point int32 [out_channels]; bias float32 [out_channels] or None.\n"
             "For dconv2d.");

static PyObject *py_dconv_panels_int8(PyObject *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"packed",      "scale",  "zero_point", "bias", "out_channels", "in_per_group",
                             "kernel_size", "groups", "nthreads",   NULL};
    PyObject *p_obj, *s_obj, *z_obj, *b_obj, *kernel_obj, *result = NULL;
    Py_ssize_t n, cg, groups;
    int nthreads = 1;
    npy_intp ks[2];
    mq_refs refs = {0};
    mq_dconv_weight wt;
    (void)self;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOOOnnOn|i:dconv_panels_int8", kwlist, &p_obj, &s_obj, &z_obj, &b_obj,
                                     &n, &cg, &kernel_obj, &groups, &nthreads))
        return NULL;
    if (!mq_check_threads(nthreads) || !mq_conv_pair(kernel_obj, "kernel_size", 1, ks)) return NULL;
    if (!int8_weight_in(&refs, p_obj, s_obj, z_obj, b_obj, n, cg, ks, groups, &wt)) goto done;
    result = panels_out(&refs, "dconv_panels_int8", &wt, n, groups, mq_size_mul(cg, ks[0] * ks[1]), nthreads);
done:
    mq_release(&refs);
    return result;
}

PyDoc_STRVAR(dconv_panels_doc,
             "dconv_panels(w, bf16, bias, groups, nthreads=1) -> (panels, biases)\n\n"
             "The direct conv's panels and bias lanes (float32 1-D) of a weight [out, in/groups, kh, kw]:\n"
             "float32, float16 (or its int16/uint16 bits) or, bf16=True, bf16 bits (int16/uint16), each\n"
             "widened to float32 (exact); bias float32 [out] or None.  For dconv2d(..., tap_major=False).");

static PyObject *py_dconv_panels(PyObject *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"w", "bf16", "bias", "groups", "nthreads", NULL};
    static const int wtypes[] = {NPY_FLOAT32, NPY_FLOAT16, NPY_INT16, NPY_UINT16};
    PyObject *w_obj, *b_obj, *result = NULL;
    Py_ssize_t groups;
    int is_bf16, nthreads = 1;
    mq_refs refs = {0};
    PyArrayObject *w, *bias = NULL;
    (void)self;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OpOn|i:dconv_panels", kwlist, &w_obj, &is_bf16, &b_obj, &groups,
                                     &nthreads))
        return NULL;
    if (!mq_check_threads(nthreads)) return NULL;
    if (!(w = mq_array_in(&refs, w_obj, "w", wtypes, 4, 4, "float32, float16 or int16/uint16 (bf16 bits)"))) goto done;
    const int wtype = PyArray_TYPE(w);
    if (is_bf16 != (wtype == NPY_INT16 || wtype == NPY_UINT16)) { /* bf16 bits come as int16 / uint16 alone */
        PyErr_Format(PyExc_TypeError, "dconv_panels: bf16=%s does not fit a %s weight (bf16 bits come as int16/uint16)",
                     is_bf16 ? "True" : "False", wtype == NPY_FLOAT32 ? "float32" : "16-bit");
        goto done;
    }
    npy_intp n = PyArray_DIM(w, 0), cg = PyArray_DIM(w, 1), kh = PyArray_DIM(w, 2), kwd = PyArray_DIM(w, 3);
    if (groups < 1 || groups > MQ_MAX_CONV_ARG || n < 1 || n % groups || cg < 1 || kh < 1 || kwd < 1 ||
        kh > MQ_MAX_CONV_ARG || kwd > MQ_MAX_CONV_ARG) {
        PyErr_Format(PyExc_ValueError,
                     "dconv_panels: a weight [%zd, %zd, %zd, %zd] in %zd groups: groups must divide the output "
                     "channels, every size positive and the kernel at most %ld",
                     (Py_ssize_t)n, (Py_ssize_t)cg, (Py_ssize_t)kh, (Py_ssize_t)kwd, (Py_ssize_t)groups,
                     MQ_MAX_CONV_ARG);
        goto done;
    }
    if (!mq_bias_in(&refs, b_obj, n, "output channels", &bias)) goto done;
    const mq_dconv_weight wt = {.h16 = wtype == NPY_FLOAT32 ? NULL : PyArray_DATA(w), .is_bf16 = is_bf16,
                                .f32 = wtype == NPY_FLOAT32 ? PyArray_DATA(w) : NULL, .bias = mq_data_or_null(bias)};
    result = panels_out(&refs, "dconv_panels", &wt, n, groups, mq_size_mul(cg, mq_size_mul(kh, kwd)), nthreads);
done:
    mq_release(&refs);
    return result;
}

/* The conv's geometry checked against x [B, C, H, W] float32 and n output channels; *out a new
 * NCHW float32 array.  The arguments' pairs in ks / st / pd / dl.  1, or 0 with an exception set. */
static int conv_in(mq_refs *refs, const char *fname, PyObject *x_obj, npy_intp n, PyObject *kernel_obj,
                   PyObject *stride_obj, PyObject *pad_obj, PyObject *dil_obj, npy_intp groups, PyArrayObject **x,
                   PyArrayObject **out, npy_intp ks[2], npy_intp st[2], npy_intp pd[2], npy_intp dl[2]) {
    static const int f32[] = {NPY_FLOAT32};
    if (!mq_conv_pair(kernel_obj, "kernel_size", 1, ks) || !mq_conv_pair(stride_obj, "stride", 1, st) ||
        !mq_conv_pair(pad_obj, "padding", 0, pd) || !mq_conv_pair(dil_obj, "dilation", 1, dl))
        return 0;
    if (!(*x = mq_array_in(refs, x_obj, "x", f32, 1, 4, "float32"))) return 0;
    npy_intp batch = PyArray_DIM(*x, 0), channels = PyArray_DIM(*x, 1), height = PyArray_DIM(*x, 2),
             width = PyArray_DIM(*x, 3);
    if (groups < 1 || groups > MQ_MAX_CONV_ARG || n < 1 || channels % groups || n % groups) {
        PyErr_Format(PyExc_ValueError, "%s: groups=%zd must divide in_channels %zd and out_channels %zd", fname,
                     (Py_ssize_t)groups, (Py_ssize_t)channels, (Py_ssize_t)n);
        return 0;
    }
    if (height + 2 * pd[0] < dl[0] * (ks[0] - 1) + 1 || width + 2 * pd[1] < dl[1] * (ks[1] - 1) + 1) {
        PyErr_Format(PyExc_ValueError, "%s: the (padded) input is smaller than the dilated kernel", fname);
        return 0;
    }
    const int64_t k = mq_size_mul(channels / groups, mq_size_mul(ks[0], ks[1]));
    npy_intp out_h = mq_conv_out(height, ks[0], st[0], pd[0], dl[0]);
    npy_intp out_w = mq_conv_out(width, ks[1], st[1], pd[1], dl[1]);
    npy_intp m = mq_size_mul(mq_size_mul(batch, out_h), out_w);
    if (!mq_size_fits(mq_size_mul(m, k), fname, "batch x output pixels x in_channels/groups x kernel area") ||
        !mq_size_fits(mq_size_mul(m, n), fname, "batch x output pixels x out_channels") ||
        !mq_size_fits(mq_size_mul(mq_size_mul(batch, channels), mq_size_mul(height + 2 * pd[0], width + 2 * pd[1])),
                      fname, "the zero-padded image"))
        return 0;
    npy_intp dims[4] = {batch, n, out_h, out_w};
    return (*out = mq_array_new(refs, 4, dims, NPY_FLOAT32, 0)) != NULL;
}

static PyObject *conv_result(int status, const char *fname, PyArrayObject *x, PyArrayObject *out, const npy_intp pd[2]) {
    if (status < 0)
        return PyErr_Format(PyExc_MemoryError,
                            "%s: out of memory for the conv's buffers (the zero-padded copy of x [%zd, %zd, %zd, %zd], "
                            "padding (%zd, %zd), and the weight's panels); a smaller batch",
                            fname, (Py_ssize_t)PyArray_DIM(x, 0), (Py_ssize_t)PyArray_DIM(x, 1),
                            (Py_ssize_t)PyArray_DIM(x, 2), (Py_ssize_t)PyArray_DIM(x, 3), (Py_ssize_t)pd[0],
                            (Py_ssize_t)pd[1]);
    return mq_return(out);
}

/* The conv of x into out with wt's panels filled for the call (mq_dconv2d_weight): out, or NULL with
 * an exception set */
static PyObject *weight_conv(const char *fname, PyArrayObject *x, PyArrayObject *out, const npy_intp ks[2],
                             const npy_intp st[2], const npy_intp pd[2], const npy_intp dl[2], npy_intp groups,
                             const mq_dconv_weight *wt, npy_intp n, int nthreads) {
    int status;
    Py_BEGIN_ALLOW_THREADS
    status = mq_dconv2d_weight(PyArray_DATA(x), PyArray_DIM(x, 0), PyArray_DIM(x, 1), PyArray_DIM(x, 2),
                               PyArray_DIM(x, 3), ks[0], ks[1], st[0], st[1], pd[0], pd[1], dl[0], dl[1], groups, wt,
                               n, PyArray_DATA(out), nthreads);
    Py_END_ALLOW_THREADS
    return conv_result(status, fname, x, out, pd);
}

PyDoc_STRVAR(dconv2d_doc,
             "dconv2d(x, panels, biases, out_channels, kernel_size, stride, padding, dilation, groups,\n"
             "        nthreads=1, tap_major=True, bias=None) -> y\n\n"
             "y float32 [B, out_channels, out_h, out_w]: the direct conv (h16_dconv.c) of x float32\n"
             "[B, C, H, W] (zero padding) with the panels and bias lanes of dconv_panels_int8\n"
             "(tap_major=True: taps in (i, j, channel) order) or dconv_panels (tap_major=False: in\n"
             "(channel, i, j) order, h16_conv2d(direct=True)'s bits); each output an fmaf chain over\n"
             "its taps from the bias in that order: the same bits\n"
             "at every kernel level and thread count.  bias (float32 [out_channels], optional): read\n"
             "in place of the panels' bias lanes, so kept panels follow a bias written in place.\n"
             "MemoryError if the padded copy of x cannot be allocated.");

static PyObject *py_dconv2d(PyObject *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"x",       "panels",   "biases", "out_channels", "kernel_size", "stride",
                             "padding", "dilation", "groups", "nthreads",     "tap_major",   "bias", NULL};
    static const int f32[] = {NPY_FLOAT32};
    PyObject *x_obj, *p_obj, *b_obj, *kernel_obj, *stride_obj, *pad_obj, *dil_obj, *bias_obj = Py_None, *result = NULL;
    Py_ssize_t n, groups;
    int nthreads = 1, tap_major = 1;
    npy_intp ks[2], st[2], pd[2], dl[2];
    mq_refs refs = {0};
    PyArrayObject *x, *panels, *biases, *bias = NULL, *out;
    (void)self;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOOnOOOOn|ipO:dconv2d", kwlist, &x_obj, &p_obj, &b_obj, &n,
                                     &kernel_obj, &stride_obj, &pad_obj, &dil_obj, &groups, &nthreads, &tap_major,
                                     &bias_obj))
        return NULL;
    if (!mq_check_threads(nthreads)) return NULL;
    if (!conv_in(&refs, "dconv2d", x_obj, n, kernel_obj, stride_obj, pad_obj, dil_obj, groups, &x, &out, ks, st, pd,
                 dl) ||
        !(panels = mq_array_in(&refs, p_obj, "panels", f32, 1, 1, "float32")) ||
        !(biases = mq_array_in(&refs, b_obj, "biases", f32, 1, 1, "float32")) ||
        (bias_obj != Py_None && !(bias = mq_array_in(&refs, bias_obj, "bias", f32, 1, 1, "float32"))))
        goto done;
    if (bias && PyArray_SIZE(bias) != n) {
        PyErr_Format(PyExc_ValueError, "bias has %zd floats, the conv %zd outputs", (Py_ssize_t)PyArray_SIZE(bias),
                     (Py_ssize_t)n);
        goto done;
    }
    const int64_t k = mq_size_mul(PyArray_DIM(x, 1) / groups, mq_size_mul(ks[0], ks[1]));
    if (PyArray_SIZE(panels) != mq_dconv_panel_floats(n, groups, k) ||
        PyArray_SIZE(biases) != mq_dconv_bias_floats(n, groups)) {
        PyErr_Format(PyExc_ValueError,
                     "panels / biases have %zd / %zd floats, a [%zd, %zd, %zd, %zd] weight in %zd groups takes %lld / "
                     "%lld (dconv_panels_int8's)",
                     (Py_ssize_t)PyArray_SIZE(panels), (Py_ssize_t)PyArray_SIZE(biases), (Py_ssize_t)n,
                     (Py_ssize_t)(PyArray_DIM(x, 1) / groups), (Py_ssize_t)ks[0], (Py_ssize_t)ks[1],
                     (Py_ssize_t)groups, (long long)mq_dconv_panel_floats(n, groups, k),
                     (long long)mq_dconv_bias_floats(n, groups));
        goto done;
    }
    int status;
    Py_BEGIN_ALLOW_THREADS
    status = mq_dconv2d(PyArray_DATA(x), PyArray_DIM(x, 0), PyArray_DIM(x, 1), PyArray_DIM(x, 2), PyArray_DIM(x, 3),
                        ks[0], ks[1], st[0], st[1], pd[0], pd[1], dl[0], dl[1], groups, PyArray_DATA(panels),
                        PyArray_DATA(biases), bias ? PyArray_DATA(bias) : NULL, tap_major, n, PyArray_DATA(out),
                        nthreads);
    Py_END_ALLOW_THREADS
    result = conv_result(status, "dconv2d", x, out, pd);
done:
    mq_release(&refs);
    return result;
}

PyDoc_STRVAR(dconv2d_int8_doc,
             "dconv2d_int8(x, packed, scale, zero_point, bias, out_channels, kernel_size, stride, padding,\n"
             "             dilation, groups, nthreads=1) -> y\n\n"
             "dconv2d with the panels of dconv_panels_int8 filled for this call (for a weight whose\n"
             "panels are not kept): the same bits.");

static PyObject *py_dconv2d_int8(PyObject *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"x",           "packed", "scale",   "zero_point", "bias",   "out_channels",
                             "kernel_size", "stride", "padding", "dilation",   "groups", "nthreads",
                             NULL};
    PyObject *x_obj, *p_obj, *s_obj, *z_obj, *b_obj, *kernel_obj, *stride_obj, *pad_obj, *dil_obj, *result = NULL;
    Py_ssize_t n, groups;
    int nthreads = 1;
    npy_intp ks[2], st[2], pd[2], dl[2];
    mq_refs refs = {0};
    mq_dconv_weight wt;
    PyArrayObject *x, *out;
    (void)self;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOOOOnOOOOn|i:dconv2d_int8", kwlist, &x_obj, &p_obj, &s_obj, &z_obj,
                                     &b_obj, &n, &kernel_obj, &stride_obj, &pad_obj, &dil_obj, &groups, &nthreads))
        return NULL;
    if (!mq_check_threads(nthreads)) return NULL;
    if (!conv_in(&refs, "dconv2d_int8", x_obj, n, kernel_obj, stride_obj, pad_obj, dil_obj, groups, &x, &out, ks, st,
                 pd, dl) ||
        !int8_weight_in(&refs, p_obj, s_obj, z_obj, b_obj, n, PyArray_DIM(x, 1) / groups, ks, groups, &wt))
        goto done;
    result = weight_conv("dconv2d_int8", x, out, ks, st, pd, dl, groups, &wt, n, nthreads);
done:
    mq_release(&refs);
    return result;
}

PyDoc_STRVAR(dconv2d_int4_doc,
             "dconv2d_int4(x, packed, scale, zero_point, bias, group, kernel_size, stride, padding, dilation,\n"
             "             groups, nthreads=1) -> y\n\n"
             "The direct conv of x float32 [B, C, H, W] with an int4 weight [out, C/groups, kh, kw] (the\n"
             "arrays of q4_quantize over its rows: packed uint8 [out, kpad/2], scale float16 and zero_point\n"
             "uint8 [out, groups]), its panels filled for this call from q4_dequantize's floats: the bits of\n"
             "dconv2d(..., tap_major=False) on dconv_panels of that float32 weight.");

static PyObject *py_dconv2d_int4(PyObject *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"x",       "packed",   "scale",  "zero_point", "bias", "group", "kernel_size", "stride",
                             "padding", "dilation", "groups", "nthreads",   NULL};
    PyObject *x_obj, *p_obj, *s_obj, *z_obj, *b_obj, *kernel_obj, *stride_obj, *pad_obj, *dil_obj, *result = NULL;
    long long group;
    Py_ssize_t groups;
    int nthreads = 1;
    npy_intp ks[2], st[2], pd[2], dl[2];
    mq_refs refs = {0};
    PyArrayObject *x, *out, *packed, *scale, *zero, *bias;
    (void)self;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOOOOLOOOOn|i:dconv2d_int4", kwlist, &x_obj, &p_obj, &s_obj, &z_obj,
                                     &b_obj, &group, &kernel_obj, &stride_obj, &pad_obj, &dil_obj, &groups,
                                     &nthreads))
        return NULL;
    if (!mq_check_threads(nthreads) || !mq_q4_check_group(group)) return NULL;
    static const int u8[] = {NPY_UINT8};
    if (!(packed = mq_array_in(&refs, p_obj, "packed", u8, 1, 2, "uint8"))) goto done; /* its rows: the outputs */
    const npy_intp n = PyArray_DIM(packed, 0);
    if (!conv_in(&refs, "dconv2d_int4", x_obj, n, kernel_obj, stride_obj, pad_obj, dil_obj, groups, &x, &out, ks, st,
                 pd, dl))
        goto done;
    const long long k = (long long)mq_size_mul(PyArray_DIM(x, 1) / groups, mq_size_mul(ks[0], ks[1]));
    if (!mq_q4_weight_arrays(&refs, p_obj, s_obj, z_obj, k, group, &packed, &scale, &zero) ||
        !mq_bias_in(&refs, b_obj, n, "output channels", &bias))
        goto done;
    const mq_dconv_weight wt = {.q4 = PyArray_DATA(packed), .q4_scale = PyArray_DATA(scale),
                                .q4_zero = PyArray_DATA(zero), .q4_kpad = PyArray_DIM(packed, 1) * 2,
                                .q4_group = group, .bias = mq_data_or_null(bias)};
    result = weight_conv("dconv2d_int4", x, out, ks, st, pd, dl, groups, &wt, n, nthreads);
done:
    mq_release(&refs);
    return result;
}

PyDoc_STRVAR(depthwise_conv2d_doc,
             "depthwise_conv2d(x, w, bias, stride, padding, dilation, nthreads=1) -> y\n\n"
             "y float32 [B, N, out_h, out_w]: the depthwise conv (groups = C) of x float32 [B, C, H, W]\n"
             "(zero padding) with w float32 [N, 1, kh, kw], N a multiple of C (output channel o reads\n"
             "input channel o // (N // C)), bias float32 [N] or None.  Each output an fmaf chain over its\n"
             "taps from the bias in (i, j) order: the same bits at every kernel level and thread count.\n"
             "MemoryError if a plane's padded copy cannot be allocated.");

static PyObject *py_depthwise_conv2d(PyObject *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"x", "w", "bias", "stride", "padding", "dilation", "nthreads", NULL};
    static const int f32[] = {NPY_FLOAT32};
    PyObject *x_obj, *w_obj, *b_obj, *stride_obj, *pad_obj, *dil_obj, *result = NULL;
    int nthreads = 1;
    npy_intp ks[2], st[2], pd[2], dl[2];
    mq_refs refs = {0};
    PyArrayObject *x, *w, *bias, *out;
    (void)self;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOOOOO|i:depthwise_conv2d", kwlist, &x_obj, &w_obj, &b_obj,
                                     &stride_obj, &pad_obj, &dil_obj, &nthreads))
        return NULL;
    if (!mq_check_threads(nthreads)) return NULL;
    if (!(w = mq_array_in(&refs, w_obj, "w", f32, 1, 4, "float32"))) goto done;
    const npy_intp n = PyArray_DIM(w, 0);
    if (PyArray_DIM(w, 1) != 1 || n < 1) {
        PyErr_Format(PyExc_ValueError, "depthwise_conv2d: w must be [out_channels, 1, kh, kw], got [%zd, %zd, %zd, %zd]",
                     (Py_ssize_t)n, (Py_ssize_t)PyArray_DIM(w, 1), (Py_ssize_t)PyArray_DIM(w, 2),
                     (Py_ssize_t)PyArray_DIM(w, 3));
        goto done;
    }
    PyObject *kernel = Py_BuildValue("(nn)", (Py_ssize_t)PyArray_DIM(w, 2), (Py_ssize_t)PyArray_DIM(w, 3));
    if (!kernel) goto done;
    PyArrayObject *xa = (PyArrayObject *)x_obj;
    const npy_intp channels = PyArray_Check(x_obj) && PyArray_NDIM(xa) == 4 ? PyArray_DIM(xa, 1) : 1;
    if (channels > MQ_MAX_CONV_ARG) { /* (the groups check below would blame the divisibility) */
        PyErr_Format(PyExc_ValueError, "depthwise_conv2d: x has %zd channels, more than the %ld a conv takes",
                     (Py_ssize_t)channels, MQ_MAX_CONV_ARG);
        Py_DECREF(kernel);
        goto done;
    }
    const int in = conv_in(&refs, "depthwise_conv2d", x_obj, n, kernel, stride_obj, pad_obj, dil_obj,
                           channels > 0 ? channels : 1, &x, &out, ks, st, pd, dl);
    Py_DECREF(kernel);
    if (!in || !mq_bias_in(&refs, b_obj, n, "output channels", &bias)) goto done;
    if (PyArray_DIM(x, 1) < 1) {
        PyErr_SetString(PyExc_ValueError, "depthwise_conv2d: x has no channels");
        goto done;
    }
    const int64_t oh = PyArray_DIM(out, 2), ow = PyArray_DIM(out, 3);
    /* a block's interleaved copy (float_depthwise.c): the padded rows x columns the outputs reach, 8 lanes */
    const int64_t rows = mq_size_add(mq_size_mul(oh - 1, st[0]), mq_size_mul(ks[0] - 1, dl[0]) + 1);
    const int64_t cols = mq_size_add(mq_size_mul(ow - 1, st[1]), mq_size_mul(ks[1] - 1, dl[1]) + 1);
    if (!mq_size_fits(mq_size_mul(mq_size_add(mq_size_mul(rows, cols), ks[0] * ks[1]), 8), "depthwise_conv2d",
                      "a block's zero-padded copy"))
        goto done;
    int status;
    Py_BEGIN_ALLOW_THREADS
    status = mq_f32_dw_conv2d(PyArray_DATA(x), PyArray_DIM(x, 0), PyArray_DIM(x, 1), PyArray_DIM(x, 2),
                              PyArray_DIM(x, 3), PyArray_DATA(w), mq_data_or_null(bias), n / PyArray_DIM(x, 1), ks[0],
                              ks[1], st[0], st[1], pd[0], pd[1], dl[0], dl[1], PyArray_DATA(out), nthreads);
    Py_END_ALLOW_THREADS
    result = conv_result(status, "depthwise_conv2d", x, out, pd);
done:
    mq_release(&refs);
    return result;
}

PyMethodDef mq_dconv_methods[] = {
    MQ_KW_METHOD(depthwise_conv2d),
    MQ_KW_METHOD(dconv2d_int4),
    MQ_KW_METHOD(dconv_panels_int8),
    MQ_KW_METHOD(dconv_panels),
    MQ_KW_METHOD(dconv2d),
    MQ_KW_METHOD(dconv2d_int8),
    {NULL, NULL, 0, NULL},
};
