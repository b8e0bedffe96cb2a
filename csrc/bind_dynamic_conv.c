/* bind_dynamic_conv.c - the dynamic int8 conv's route switch, route rule and step profile
 * (conv_dynamic_direct.c, conv_profile.c), its split's correction step for tests (conv_split.c);
 * the conv itself is bind_linear.c's conv2d_int8. */
#include "bind.h"
#include "conv_dynamic_direct.h"
#include "conv_profile.h"

PyDoc_STRVAR(set_conv_direct_doc,
             "set_conv_direct(on) -> previous\n\n"
             "Whether conv2d_int8 (dynamic) may take the direct conv route where it applies (default True);\n"
             "False keeps every C call on the im2col route (the same bits for a given call; the module's\n"
             "rule then also sends the smallest convs to F.conv2d, as before the direct route).");

static PyObject *py_set_conv_direct(PyObject *self, PyObject *arg) {
    (void)self;
    const int on = PyObject_IsTrue(arg);
    if (on < 0) return NULL;
    const int previous = __atomic_exchange_n(&mq_conv_direct_enabled, on, __ATOMIC_RELAXED);
    return PyBool_FromLong(previous);
}

PyDoc_STRVAR(conv2d_int8_direct_applies_doc,
             "conv2d_int8_direct_applies(in_channels, groups, kernel_h, kernel_w, pad_h, pad_w, dilation_h,\n"
             "                           dilation_w, has_w_zero_point) -> bool\n\n"
             "Whether conv2d_int8 (dynamic) takes the direct conv route for this layer at the active kernel\n"
             "level: it then needs no im2col buffer (so no chunking of large batches).");

static PyObject *py_conv2d_int8_direct_applies(PyObject *self, PyObject *args) {
    (void)self;
    Py_ssize_t channels, groups, kh, kw, ph, pw, dh, dw;
    int has_zp;
    if (!PyArg_ParseTuple(args, "nnnnnnnnp:conv2d_int8_direct_applies", &channels, &groups, &kh, &kw, &ph, &pw, &dh,
                          &dw, &has_zp))
        return NULL;
    /* the rule multiplies (k - 1) * d: sizes past what conv2d_int8 accepts are a plain False, not an overflow */
    if (kh > MQ_MAX_CONV_ARG || kw > MQ_MAX_CONV_ARG || ph > MQ_MAX_CONV_ARG || pw > MQ_MAX_CONV_ARG ||
        dh > MQ_MAX_CONV_ARG || dw > MQ_MAX_CONV_ARG)
        Py_RETURN_FALSE;
    return PyBool_FromLong(mq_conv2d_dynamic_direct_applies(channels, groups, kh, kw, ph, pw, dh, dw, has_zp));
}

PyDoc_STRVAR(conv_profile_doc,
             "conv_profile(enable=None) -> dict\n\n"
             "The dynamic int8 conv's step times since the last call, in ns (then zeroed), and 'calls'.\n"
             "Wall steps (the calling thread's time per region): 'quantize', 'im2col', 'gemm', 'nchw'\n"
             "(im2col route), 'prequantize', 'direct' (direct route), 'total' (the C call).  Summed over\n"
             "threads (direct route): 'thread_quantize', 'thread_conv', 'thread_epilogue'; 'calls' and\n"
             "'direct_calls' (those that took the direct route) count C calls.  enable=True /\n"
             "False switches the timing on / off (off by default: the kernels then read one flag per step).");

static PyObject *py_conv_profile(PyObject *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"enable", NULL};
    static const char *const names[MQ_CONV_STEPS] = {
        [MQ_CONV_WALL_QUANTIZE] = "quantize",          [MQ_CONV_WALL_IM2COL] = "im2col",
        [MQ_CONV_WALL_GEMM] = "gemm",                  [MQ_CONV_WALL_NCHW] = "nchw",
        [MQ_CONV_WALL_PREQUANT] = "prequantize",       [MQ_CONV_WALL_DIRECT] = "direct",
        [MQ_CONV_WALL_TOTAL] = "total",                [MQ_CONV_THREAD_QUANTIZE] = "thread_quantize",
        [MQ_CONV_THREAD_CONV] = "thread_conv",         [MQ_CONV_THREAD_EPILOGUE] = "thread_epilogue",
    };
    PyObject *enable = Py_None;
    (void)self;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "|O:conv_profile", kwlist, &enable)) return NULL;
    const int on = enable == Py_None ? -1 : PyObject_IsTrue(enable);
    if (enable != Py_None && on < 0) return NULL; /* before taking (and zeroing) the counters */
    int64_t ns[MQ_CONV_STEPS], calls, direct_calls;
    mq_conv_profile_take(ns, &calls, &direct_calls);
    if (on >= 0) __atomic_store_n(&mq_conv_profile_on, on, __ATOMIC_RELAXED);
    PyObject *result = PyDict_New();
    if (!result) return NULL;
    for (int s = 0; s < MQ_CONV_STEPS + 2; s++) {
        PyObject *value = PyLong_FromLongLong(s < MQ_CONV_STEPS ? ns[s] : s == MQ_CONV_STEPS ? calls : direct_calls);
        const char *name = s < MQ_CONV_STEPS ? names[s] : s == MQ_CONV_STEPS ? "calls" : "direct_calls";
        if (!value || PyDict_SetItemString(result, name, value) < 0) {
            Py_XDECREF(value);
            Py_DECREF(result);
            return NULL;
        }
        Py_DECREF(value);
    }
    return result;
}

PyDoc_STRVAR(dconv_split_spread_doc,
             "dconv_split_spread(lines, cuts) -> int32 [taps, panels * 16]\n\n"
             "The direct conv split's correction step (csrc/conv_split.c) at the active level, all taps in one\n"
             "call: lines int8 [taps, panels, stride] (stride a multiple of 64, at most 32 taps; the first 64\n"
             "bytes of each row are a panel's line of 16 outputs x 4 bytes), cuts int8 [4] (at most one nonzero\n"
             "per pair): sum_b (lines[t, p, 4c + b] + 128) * cuts[b] for output c of panel p.  Tests only.");

#define SPREAD_TEST_TAPS 32

static PyObject *py_dconv_split_spread(PyObject *self, PyObject *args) {
    (void)self;
    mq_refs refs = {0};
    PyObject *lines_obj, *cuts_obj, *result = NULL;
    static const int types[] = {NPY_INT8};
    if (!PyArg_ParseTuple(args, "OO", &lines_obj, &cuts_obj)) return NULL;
    PyArrayObject *lines = mq_array_in(&refs, lines_obj, "lines", types, 1, 3, "int8");
    PyArrayObject *cuts = lines ? mq_array_in(&refs, cuts_obj, "cuts", types, 1, 1, "int8") : NULL;
    if (!cuts) goto done;
    const npy_intp taps = PyArray_DIM(lines, 0), panels = PyArray_DIM(lines, 1), stride = PyArray_DIM(lines, 2);
    const int8_t *c = PyArray_DATA(cuts);
    if (taps < 1 || taps > SPREAD_TEST_TAPS || stride < MQ_PANEL_GROUP_BYTES || stride % MQ_PANEL_GROUP_BYTES ||
        PyArray_DIM(cuts, 0) != MQ_KGROUP || (c[0] && c[1]) || (c[2] && c[3])) {
        PyErr_SetString(PyExc_ValueError, "dconv_split_spread: lines [1..32 taps, panels, a multiple of 64], cuts "
                                          "[4] with at most one nonzero per pair");
        goto done;
    }
    const npy_intp dims[2] = {taps, panels * MQ_PANEL};
    PyArrayObject *v = mq_array_new(&refs, 2, dims, NPY_INT32, 1);
    if (!v) goto done;
    uint32_t packed = 0;
    for (int b = 0; b < MQ_KGROUP; b++) packed |= (uint32_t)(uint8_t)c[b] << (8 * b);
    const int8_t *w[SPREAD_TEST_TAPS];
    int32_t *out[SPREAD_TEST_TAPS];
    for (npy_intp t = 0; t < taps; t++) {
        w[t] = (const int8_t *)PyArray_DATA(lines) + t * panels * stride;
        out[t] = (int32_t *)PyArray_DATA(v) + t * panels * MQ_PANEL;
    }
    mq_active()->dconv_split_spread(w, out, taps, stride, panels, packed);
    result = (PyObject *)v;
    Py_INCREF(result);
done:
    mq_release(&refs);
    return result;
}

PyMethodDef mq_dynamic_conv_methods[] = {
    {"dconv_split_spread", py_dconv_split_spread, METH_VARARGS, dconv_split_spread_doc},
    {"set_conv_direct", py_set_conv_direct, METH_O, set_conv_direct_doc},
    {"conv2d_int8_direct_applies", py_conv2d_int8_direct_applies, METH_VARARGS, conv2d_int8_direct_applies_doc},
    {"conv_profile", (PyCFunction)(void (*)(void))py_conv_profile, METH_VARARGS | METH_KEYWORDS, conv_profile_doc},
    {NULL, NULL, 0, NULL},
};
