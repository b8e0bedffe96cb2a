/* bind_static.c - Python bindings of the static int8 kernels (static_int8.h).
 *
 * Arrays cross as buffers (numpy arrays; torch tensors through .numpy()),
 * read with the buffer protocol so this file needs no NumPy C API: the
 * caller allocates every output (the layer knows its shape and dtype, and
 * torch.from_numpy shares it), and this layer only checks dtypes, shapes and
 * contiguity.  The output's dtype picks the mode: int8 = requantized with
 * inv_out_scale, float32 = the activated fp32 values.  module.c appends
 * mq_static_methods to the module.  The checks every binding shares (threads,
 * the method-table entry) come from bind.h; the buffer checks stay here: outputs
 * must be written in place, never through a converted copy. */
#include <math.h>
#include <string.h>

#include "bind.h"
#include "size_check.h"
#include "static_int8.h"

#define MAX_K MQ_MAX_LINEAR_K /* as linear_int8 (layout.h): no int32 accumulator can overflow */

typedef struct {
    Py_buffer view;
    int held;
    void *copy, *orig; /* an aligned copy of a misaligned input (view.buf then points to it), its source */
} buffer_arg;

static void release(buffer_arg *b) {
    if (b->copy) {
        b->view.buf = b->orig; /* (the exporter gets back the view it made) */
        PyMem_Free(b->copy);
        b->copy = NULL;
    }
    if (b->held) PyBuffer_Release(&b->view);
    b->held = 0;
}

/* 0 with ValueError when out's bytes overlap one of the n inputs' (the kernels read their inputs while
 * they write out; a copied input is compared by its source, the caller's memory) */
static int out_apart(const char *fname, const buffer_arg *out, const buffer_arg *const *inputs, int n) {
    for (int i = 0; i < n; i++) {
        if (!inputs[i]->held) continue;
        const void *r = inputs[i]->copy ? inputs[i]->orig : inputs[i]->view.buf;
        if (mq_bytes_overlap(out->view.buf, (size_t)out->view.len, r, (size_t)inputs[i]->view.len)) {
            PyErr_Format(PyExc_ValueError, "%s: out overlaps an input it reads; give it memory of its own", fname);
            return 0;
        }
    }
    return 1;
}

/* The one-letter struct format of a native buffer ('b' int8, 'i' int32, 'f' float32). */
static char format_char(const Py_buffer *v) {
    const char *f = v->format ? v->format : "B";
    if (*f == '@' || *f == '=' || (*f == '<' && PY_LITTLE_ENDIAN)) f++;
    return f[0] && !f[1] ? f[0] : '?';
}

static const char *format_name(char c) {
    return c == 'b' ? "int8" : c == 'i' ? "int32" : c == 'f' ? "float32" : "?";
}

/* A C-contiguous buffer of ndim in [ndim_lo, ndim_hi] whose format is one of `formats`. */
static int get_buffer(PyObject *obj, const char *fname, const char *what, const char *formats, int writable,
                      int ndim_lo, int ndim_hi, buffer_arg *b) {
    int flags = PyBUF_C_CONTIGUOUS | PyBUF_FORMAT | (writable ? PyBUF_WRITABLE : 0);
    if (PyObject_GetBuffer(obj, &b->view, flags) < 0) {
        PyErr_Clear();
        PyErr_Format(PyExc_TypeError, "%s: %s must be a C-contiguous%s numpy array (a torch tensor: .numpy())", fname,
                     what, writable ? ", writable" : "");
        return 0;
    }
    b->held = 1;
    char c = format_char(&b->view);
    if (!strchr(formats, c) || c == '\0') {
        PyErr_Format(PyExc_TypeError, "%s: %s must have dtype %s%s%s, got format '%s'", fname, what,
                     format_name(formats[0]), formats[1] ? " or " : "", formats[1] ? format_name(formats[1]) : "",
                     b->view.format ? b->view.format : "B");
        return 0;
    }
    /* the kernels read int32 / float32 through typed pointers: an element off its alignment is
     * undefined behaviour (the buffer protocol, unlike NumPy's flags, says nothing about it).  An
     * input is copied (e.g. a tensor of a safetensors file whose header length is not a multiple of
     * 4); an output must be written in place, so it is an error */
    if ((uintptr_t)b->view.buf % (uintptr_t)(b->view.itemsize > 0 ? b->view.itemsize : 1)) {
        if (writable) {
            PyErr_Format(PyExc_ValueError, "%s: %s is not aligned to its %zd-byte elements (a view at an odd "
                         "byte offset): pass a freshly allocated array (torch.empty, numpy.empty)", fname, what,
                         b->view.itemsize);
            return 0;
        }
        if (!(b->copy = PyMem_Malloc(b->view.len > 0 ? (size_t)b->view.len : 1))) {
            PyErr_NoMemory();
            return 0;
        }
        memcpy(b->copy, b->view.buf, (size_t)b->view.len);
        b->orig = b->view.buf;
        b->view.buf = b->copy;
    }
    if (b->view.ndim < ndim_lo || b->view.ndim > ndim_hi) {
        PyErr_Format(PyExc_ValueError, "%s: %s must have %d%s dimensions, got %d", fname, what, ndim_lo,
                     ndim_hi != ndim_lo ? " or more" : "", b->view.ndim);
        return 0;
    }
    return 1;
}

static int optional_buffer(PyObject *obj, const char *fname, const char *what, const char *formats, Py_ssize_t len,
                           buffer_arg *b) {
    if (obj == Py_None) return 1;
    if (!get_buffer(obj, fname, what, formats, 0, 1, 1, b)) return 0;
    if (b->view.shape[0] != len) {
        PyErr_Format(PyExc_ValueError, "%s: %s must have %zd entries, got %zd", fname, what, len, b->view.shape[0]);
        return 0;
    }
    return 1;
}

static void *data_or_null(buffer_arg *b) { return b->held ? b->view.buf : NULL; }

static int check_scale(const char *fname, const char *what, float v, int positive) {
    if (!isfinite(v) || (positive && !(v > 0.0f))) {
        char msg[200]; /* snprintf: PyErr_Format has no %g */
        snprintf(msg, sizeof msg, "%s: %s must be a finite%s float, got %g", fname, what, positive ? " positive" : "",
                 (double)v);
        PyErr_SetString(PyExc_ValueError, msg);
        return 0;
    }
    return 1;
}

/* An activation zero-point: a code of the -127..127 encoding. */
static int check_zp(const char *fname, const char *what, int zp) {
    if (zp < -127 || zp > 127) {
        PyErr_Format(PyExc_ValueError, "%s: %s must be in -127..127, got %d", fname, what, zp);
        return 0;
    }
    return 1;
}

/* The fused activation's clamp: act_lo <= act_hi, neither NaN. */
static int check_act(const char *fname, float act_lo, float act_hi) {
    if (isnan(act_lo) || isnan(act_hi) || act_lo > act_hi) {
        PyErr_Format(PyExc_ValueError, "%s: need act_lo <= act_hi (use -inf / inf for none)", fname);
        return 0;
    }
    return 1;
}

static int pair_arg(PyObject *obj, const char *fname, const char *what, long lo, int64_t out[2]) {
    long a, b;
    if (!PyArg_ParseTuple(obj, "ll", &a, &b)) {
        PyErr_Clear();
        PyErr_Format(PyExc_TypeError, "%s: %s must be a pair of ints", fname, what);
        return 0;
    }
    if (a < lo || b < lo || a > MQ_MAX_CONV_ARG || b > MQ_MAX_CONV_ARG) {
        PyErr_Format(PyExc_ValueError, "%s: %s must be in %ld..%ld, got (%ld, %ld)", fname, what, lo, MQ_MAX_CONV_ARG,
                     a, b);
        return 0;
    }
    out[0] = a;
    out[1] = b;
    return 1;
}

/* w_zero_point: None, or int32 [n] in -128..127 (all zero -> treated as None). */
static int zero_points(PyObject *obj, const char *fname, Py_ssize_t n, buffer_arg *b) {
    if (!optional_buffer(obj, fname, "w_zero_point", "i", n, b)) return 0;
    if (!b->held) return 1;
    const int32_t *z = b->view.buf;
    int any = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        if (z[i] < -128 || z[i] > 127) {
            PyErr_Format(PyExc_ValueError, "%s: w_zero_point[%zd] = %d is outside -128..127", fname, i, z[i]);
            return 0;
        }
        any |= z[i] != 0;
    }
    if (!any) release(b);
    return 1;
}

/* The output geometry of a conv, checked; the output buffer must be [batch, out_h, out_w, n]. */
static int conv_geometry(const char *fname, const Py_buffer *x, const int64_t ks[2], const int64_t st[2],
                         const int64_t pd[2], const int64_t dl[2], int64_t *out_h, int64_t *out_w) {
    const int64_t height = x->shape[1], width = x->shape[2];
    /* a dimension of an empty array can be near 2^63: the padded size must not wrap */
    if (mq_size_add(height, 2 * pd[0]) < 0 || mq_size_add(width, 2 * pd[1]) < 0) {
        PyErr_Format(PyExc_OverflowError, "%s: the padded input's size does not fit in 64 bits", fname);
        return 0;
    }
    if (height + 2 * pd[0] < dl[0] * (ks[0] - 1) + 1 || width + 2 * pd[1] < dl[1] * (ks[1] - 1) + 1) {
        PyErr_Format(PyExc_ValueError, "%s: the (padded) input is smaller than the dilated kernel", fname);
        return 0;
    }
    *out_h = (height + 2 * pd[0] - dl[0] * (ks[0] - 1) - 1) / st[0] + 1;
    *out_w = (width + 2 * pd[1] - dl[1] * (ks[1] - 1) - 1) / st[1] + 1;
    return 1;
}

/* what: the buffer's argument name ("out", or an input that must have out's shape) */
static int check_shape(const char *fname, const char *what, const Py_buffer *out, int ndim, const int64_t *dims) {
    int ok = out->ndim == ndim;
    for (int i = 0; ok && i < ndim; i++) ok = out->shape[i] == dims[i];
    if (!ok) {
        char want[160] = "", part[40];
        for (int i = 0; i < ndim; i++) {
            snprintf(part, sizeof part, i ? ", %lld" : "%lld", (long long)dims[i]);
            strncat(want, part, sizeof want - strlen(want) - 1);
        }
        PyErr_Format(PyExc_ValueError, "%s: %s must have shape [%s]", fname, what, want);
        return 0;
    }
    return 1;
}

/* ---- quantize_static / dequantize_static ------------------------------------------ */

PyDoc_STRVAR(quantize_static_doc,
             "quantize_static(x, inv_scale, out, nthreads=1, zero_point=0)\n\n"
             "x: float32 NCHW [b, c, h, w] (or [rows, features]); out: int8 [b, h, w, c] (or\n"
             "[rows, features]) = clamp(rint(x * inv_scale) + zero_point, -127, 127), channels-last.");

PyDoc_STRVAR(dequantize_static_doc,
             "dequantize_static(q, scale, out, nthreads=1, zero_point=0)\n\n"
             "q: int8 [b, h, w, c] (or [rows, features]); out: float32 [b, c, h, w] (or\n"
             "[rows, features]) = (q - zero_point) * scale, back to NCHW.");

/* The two mirror each other: float NCHW <-> int8 NHWC with one fixed scale.  `quantize`
 * picks the direction; src is x (float32) or q (int8), out the other. */
static PyObject *layout_binding(PyObject *args, PyObject *kw, int quantize) {
    static char *qkw[] = {"x", "inv_scale", "out", "nthreads", "zero_point", NULL};
    static char *dkw[] = {"q", "scale", "out", "nthreads", "zero_point", NULL};
    const char *fname = quantize ? "quantize_static" : "dequantize_static";
    const char *src_name = quantize ? "x" : "q", *scale_name = quantize ? "inv_scale" : "scale";
    PyObject *src_obj, *out_obj, *result = NULL;
    float scale;
    int nthreads = 1, zp = 0;
    buffer_arg src = {0}, out = {0};
    if (!PyArg_ParseTupleAndKeywords(args, kw, quantize ? "OfO|ii:quantize_static" : "OfO|ii:dequantize_static",
                                     quantize ? qkw : dkw, &src_obj, &scale, &out_obj, &nthreads, &zp))
        return NULL;
    if (!mq_check_threads(nthreads) || !check_scale(fname, scale_name, scale, 1) ||
        !check_zp(fname, "zero_point", zp))
        return NULL;
    if (!get_buffer(src_obj, fname, src_name, quantize ? "f" : "b", 0, 2, 4, &src) ||
        !get_buffer(out_obj, fname, "out", quantize ? "b" : "f", 1, 2, 4, &out))
        goto fail;
    const int nd = src.view.ndim;
    if (nd == 3) {
        PyErr_Format(PyExc_ValueError, "%s: %s must be 2-D or 4-D", fname, src_name);
        goto fail;
    }
    const Py_ssize_t *s = src.view.shape;
    /* NCHW float side [b][c][h][w] and NHWC int8 side [b][h][w][c]; 2-D: [rows][features] both */
    const int64_t channels = nd == 2 ? s[1] : quantize ? s[1] : s[3];
    const int64_t h = nd == 2 ? 1 : quantize ? s[2] : s[1], w = nd == 2 ? 1 : quantize ? s[3] : s[2];
    int64_t nhwc[4] = {s[0], h, w, channels}, nchw[4] = {s[0], channels, h, w}, rows[2] = {s[0], s[1]};
    if (!check_shape(fname, "out", &out.view, nd, nd == 2 ? rows : quantize ? nhwc : nchw) ||
        !out_apart(fname, &out, (const buffer_arg *const[]){&src}, 1))
        goto fail;
    if (out.view.len == 0) { /* nothing to write (the row count of an empty array can be near 2^63) */
        result = Py_NewRef(Py_None);
        goto fail;
    }
    Py_BEGIN_ALLOW_THREADS
    if (quantize)
        mq_static_quantize(src.view.buf, s[0], channels, h * w, scale, zp, out.view.buf, nthreads);
    else
        mq_static_dequantize(src.view.buf, s[0], h * w, channels, scale, zp, out.view.buf, nthreads);
    Py_END_ALLOW_THREADS
    result = Py_NewRef(Py_None);
fail:
    release(&src);
    release(&out);
    return result;
}

static PyObject *py_quantize_static(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    return layout_binding(args, kw, 1);
}

static PyObject *py_dequantize_static(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    return layout_binding(args, kw, 0);
}

/* ---- transpose_f32 ------------------------------------------------------------------ */

PyDoc_STRVAR(transpose_f32_doc,
             "transpose_f32(x, out, nthreads=1)\n\n"
             "x: float32 [b, r, c]; out: float32 [b, c, r] = each x[i] transposed (the level's 8 x 8\n"
             "tiles: NCHW <-> NHWC of float images, the weight-only 1x1 convs' rows; NumPy's\n"
             "transpose copy of a few thousand floats was 3-10x slower).  The same bits at every level.");

static PyObject *py_transpose_f32(PyObject *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"x", "out", "nthreads", NULL};
    PyObject *x_obj, *out_obj, *result = NULL;
    int nthreads = 1;
    buffer_arg x = {0}, out = {0};
    (void)self;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OO|i:transpose_f32", kwlist, &x_obj, &out_obj, &nthreads))
        return NULL;
    if (!mq_check_threads(nthreads)) return NULL;
    if (!get_buffer(x_obj, "transpose_f32", "x", "f", 0, 3, 3, &x) ||
        !get_buffer(out_obj, "transpose_f32", "out", "f", 1, 3, 3, &out))
        goto fail;
    const Py_ssize_t *s = x.view.shape;
    const int64_t want[3] = {s[0], s[2], s[1]};
    if (!check_shape("transpose_f32", "out", &out.view, 3, want) ||
        !out_apart("transpose_f32", &out, (const buffer_arg *const[]){&x}, 1))
        goto fail;
    if (out.view.len > 0) {
        Py_BEGIN_ALLOW_THREADS
        mq_static_nchw_f32(x.view.buf, s[0], s[1], s[2], out.view.buf, nthreads);
        Py_END_ALLOW_THREADS
    }
    result = Py_NewRef(Py_None);
fail:
    release(&x);
    release(&out);
    return result;
}

/* ---- conv2d_static ---------------------------------------------------------------- */

PyDoc_STRVAR(conv2d_static_doc,
             "conv2d_static(x, packed, w_sum, x_w_scale, w_zero_point, bias, out, w_has_m128, kernel,\n"
             "              stride, padding, dilation, groups, act_lo, act_hi, inv_out_scale, nthreads=1,\n"
             "              x_zero_point=0, out_zero_point=0)\n\n"
             "Static int8 Conv2d (a Linear is the 1x1 case on [rows, 1, 1, features]): x int8 NHWC\n"
             "[b, h, w, c] (-127..127, zero-point 0); packed / w_sum as conv2d_int8; x_w_scale\n"
             "float32 [n] = x_scale * w_scale; out int8 or float32 [b, out_h, out_w, n]:\n"
             "y = act((acc - x_zero_point * colsum) * x_w_scale + bias) then, for int8,\n"
             "clamp(rint(y * inv_out_scale) + out_zero_point).");

/* Static int8 activation codes are -127..127 (quantize_static and every layer write no -128):
 * AVX2's sign trick cannot negate -128 and VNNI takes codes as q + 128, so a -128 in x would
 * give each level other numbers.  One memchr over x (about 1% of a conv's time). */
static int refuse_m128(const char *fname, const buffer_arg *x) {
    if (x->view.len > 0 && memchr(x->view.buf, 0x80, (size_t)x->view.len)) {
        PyErr_Format(PyExc_ValueError, "%s: x holds the code -128; static int8 activation codes are -127..127 "
                     "(what quantize_static and the static layers write): clamp the codes to -127, or pass "
                     "float input to the layer", fname);
        return 0;
    }
    return 1;
}

static PyObject *py_conv2d_static(PyObject *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"x", "packed", "w_sum", "x_w_scale", "w_zero_point", "bias", "out", "w_has_m128",
                             "kernel", "stride", "padding", "dilation", "groups", "act_lo", "act_hi",
                             "inv_out_scale", "nthreads", "x_zero_point", "out_zero_point", NULL};
    static const char *fname = "conv2d_static";
    PyObject *x_obj, *packed_obj, *w_sum_obj, *scale_obj, *zp_obj, *bias_obj, *out_obj, *ks_obj, *st_obj, *pd_obj,
        *dl_obj, *result = NULL;
    int has_m128, nthreads = 1, x_zp = 0, out_zp = 0;
    Py_ssize_t groups;
    float act_lo, act_hi, inv_out;
    int64_t ks[2], st[2], pd[2], dl[2], out_h, out_w;
    buffer_arg x = {0}, packed = {0}, w_sum = {0}, scale = {0}, zp = {0}, bias = {0}, out = {0};
    (void)self;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOOOOOOpOOOOnfff|iii:conv2d_static", kwlist, &x_obj, &packed_obj,
                                     &w_sum_obj, &scale_obj, &zp_obj, &bias_obj, &out_obj, &has_m128, &ks_obj,
                                     &st_obj, &pd_obj, &dl_obj, &groups, &act_lo, &act_hi, &inv_out, &nthreads, &x_zp,
                                     &out_zp))
        return NULL;
    if (!mq_check_threads(nthreads) || !check_scale(fname, "inv_out_scale", inv_out, 1) ||
        !check_zp(fname, "x_zero_point", x_zp) || !check_zp(fname, "out_zero_point", out_zp))
        return NULL;
    if (!check_act(fname, act_lo, act_hi)) return NULL;
    if (!pair_arg(ks_obj, fname, "kernel", 1, ks) || !pair_arg(st_obj, fname, "stride", 1, st) ||
        !pair_arg(pd_obj, fname, "padding", 0, pd) || !pair_arg(dl_obj, fname, "dilation", 1, dl))
        return NULL;
    if (!get_buffer(x_obj, fname, "x", "b", 0, 4, 4, &x) || !get_buffer(out_obj, fname, "out", "bf", 1, 4, 4, &out) ||
        !refuse_m128(fname, &x))
        goto fail;
    const int64_t batch = x.view.shape[0], channels = x.view.shape[3], n = out.view.shape[3];
    if (channels < 1 || n < 1) {
        PyErr_Format(PyExc_ValueError, "%s: x and out need at least one channel", fname);
        goto fail;
    }
    if (groups < 1 || channels % groups || n % groups) {
        PyErr_Format(PyExc_ValueError, "%s: in_channels %lld and out_channels %lld must be divisible by groups=%zd",
                     fname, (long long)channels, (long long)n, groups);
        goto fail;
    }
    if (!conv_geometry(fname, &x.view, ks, st, pd, dl, &out_h, &out_w)) goto fail;
    int64_t dims[4] = {batch, out_h, out_w, n};
    if (!check_shape(fname, "out", &out.view, 4, dims)) goto fail;
    const int64_t k = mq_size_mul(channels / groups, ks[0] * ks[1]); /* -1: past 64 bits (an empty x) */
    if (k < 0 || k > MAX_K) {
        PyErr_Format(PyExc_ValueError, "%s: in_channels/groups * kernel area must be at most %d", fname, MAX_K);
        goto fail;
    }
    const int64_t np_g = mq_size_round_up(n / groups, MQ_PANEL), kp = mq_round_up(k, MQ_KGROUP);
    const int64_t m = mq_size_mul(mq_size_mul(batch, out_h), out_w);
    /* (n of an empty out can be near 2^63: the packed sizes below must not wrap either) */
    if (m < 0 || mq_size_mul(m, kp) < 0 || mq_size_mul(m, mq_size_mul(n, 4)) < 0 ||
        mq_size_mul(mq_size_mul(groups, np_g), kp) < 0) {
        PyErr_Format(PyExc_OverflowError, "%s: the output does not fit in 64-bit sizes", fname);
        goto fail;
    }
    if (!get_buffer(packed_obj, fname, "packed", "b", 0, 1, 1, &packed) ||
        !get_buffer(w_sum_obj, fname, "w_sum", "i", 0, 1, 1, &w_sum) ||
        !get_buffer(scale_obj, fname, "x_w_scale", "f", 0, 1, 1, &scale))
        goto fail;
    if (packed.view.shape[0] != groups * np_g * kp || w_sum.view.shape[0] != groups * np_g ||
        scale.view.shape[0] != n) {
        PyErr_Format(PyExc_ValueError,
                     "%s: packed must have %lld bytes, w_sum %lld and x_w_scale %lld entries (got %zd, %zd, %zd)",
                     fname, (long long)(groups * np_g * kp), (long long)(groups * np_g), (long long)n,
                     packed.view.shape[0], w_sum.view.shape[0], scale.view.shape[0]);
        goto fail;
    }
    if (!zero_points(zp_obj, fname, n, &zp) || !optional_buffer(bias_obj, fname, "bias", "f", n, &bias) ||
        !out_apart(fname, &out, (const buffer_arg *const[]){&x, &packed, &w_sum, &scale, &zp, &bias}, 6))
        goto fail;
    if (out.view.len == 0) {
        result = Py_NewRef(Py_None);
        goto fail;
    }
    int status;
    int is_q = format_char(&out.view) == 'b';
    Py_BEGIN_ALLOW_THREADS
    status = mq_conv2d_static(x.view.buf, batch, channels, x.view.shape[1], x.view.shape[2], ks[0], ks[1], st[0],
                              st[1], pd[0], pd[1], dl[0], dl[1], groups, packed.view.buf, w_sum.view.buf,
                              scale.view.buf, data_or_null(&zp), has_m128, data_or_null(&bias), n, act_lo, act_hi,
                              inv_out, x_zp, out_zp, is_q ? out.view.buf : NULL, is_q ? NULL : out.view.buf,
                              nthreads);
    Py_END_ALLOW_THREADS
    if (status < 0) {
        PyErr_NoMemory();
        goto fail;
    }
    result = Py_NewRef(Py_None);
fail:
    release(&x);
    release(&packed);
    release(&w_sum);
    release(&scale);
    release(&zp);
    release(&bias);
    release(&out);
    return result;
}

/* ---- depthwise_static -------------------------------------------------------------- */

PyDoc_STRVAR(depthwise_static_doc,
             "depthwise_static(x, weight, w_zero_point, x_w_scale, bias, out, stride, padding, dilation,\n"
             "                 act_lo, act_hi, inv_out_scale, nthreads=1, x_zero_point=0, out_zero_point=0)\n\n"
             "Static int8 depthwise Conv2d (groups = in = out channels): x int8 NHWC [b, h, w, c];\n"
             "weight int8 [kh, kw, c]; out int8 or float32 [b, out_h, out_w, c]; epilogue as\n"
             "conv2d_static.");

static PyObject *py_depthwise_static(PyObject *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"x", "weight", "w_zero_point", "x_w_scale", "bias", "out", "stride", "padding",
                             "dilation", "act_lo", "act_hi", "inv_out_scale", "nthreads", "x_zero_point",
                             "out_zero_point", NULL};
    static const char *fname = "depthwise_static";
    PyObject *x_obj, *w_obj, *zp_obj, *scale_obj, *bias_obj, *out_obj, *st_obj, *pd_obj, *dl_obj, *result = NULL;
    int nthreads = 1, x_zp = 0, out_zp = 0;
    float act_lo, act_hi, inv_out;
    int64_t ks[2], st[2], pd[2], dl[2], out_h, out_w;
    buffer_arg x = {0}, w = {0}, zp = {0}, scale = {0}, bias = {0}, out = {0};
    (void)self;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOOOOOOOOfff|iii:depthwise_static", kwlist, &x_obj, &w_obj,
                                     &zp_obj, &scale_obj, &bias_obj, &out_obj, &st_obj, &pd_obj, &dl_obj, &act_lo,
                                     &act_hi, &inv_out, &nthreads, &x_zp, &out_zp))
        return NULL;
    if (!mq_check_threads(nthreads) || !check_scale(fname, "inv_out_scale", inv_out, 1) ||
        !check_zp(fname, "x_zero_point", x_zp) || !check_zp(fname, "out_zero_point", out_zp))
        return NULL;
    if (!check_act(fname, act_lo, act_hi)) return NULL;
    if (!pair_arg(st_obj, fname, "stride", 1, st) || !pair_arg(pd_obj, fname, "padding", 0, pd) ||
        !pair_arg(dl_obj, fname, "dilation", 1, dl))
        return NULL;
    if (!get_buffer(x_obj, fname, "x", "b", 0, 4, 4, &x) || !get_buffer(w_obj, fname, "weight", "b", 0, 3, 3, &w) ||
        !get_buffer(out_obj, fname, "out", "bf", 1, 4, 4, &out))
        goto fail;
    const int64_t channels = x.view.shape[3];
    if (channels < 1) {
        PyErr_Format(PyExc_ValueError, "%s: x needs at least one channel", fname);
        goto fail;
    }
    ks[0] = w.view.shape[0];
    ks[1] = w.view.shape[1];
    if (w.view.shape[2] != channels || ks[0] < 1 || ks[1] < 1 || ks[0] > MQ_MAX_CONV_ARG || ks[1] > MQ_MAX_CONV_ARG) {
        PyErr_Format(PyExc_ValueError, "%s: weight must be [kh, kw, %lld]", fname, (long long)channels);
        goto fail;
    }
    if (ks[0] * ks[1] > MQ_MAX_DEPTHWISE_TAPS) { /* (its int32 sums) */
        PyErr_Format(PyExc_ValueError, "%s: the kernel area kh * kw must be at most %d", fname, MQ_MAX_DEPTHWISE_TAPS);
        goto fail;
    }
    if (!conv_geometry(fname, &x.view, ks, st, pd, dl, &out_h, &out_w)) goto fail;
    int64_t dims[4] = {x.view.shape[0], out_h, out_w, channels};
    if (!check_shape(fname, "out", &out.view, 4, dims)) goto fail;
    if (!zero_points(zp_obj, fname, channels, &zp) ||
        !optional_buffer(scale_obj, fname, "x_w_scale", "f", channels, &scale) || !scale.held ||
        !optional_buffer(bias_obj, fname, "bias", "f", channels, &bias)) {
        if (!PyErr_Occurred()) PyErr_Format(PyExc_TypeError, "%s: x_w_scale is required", fname);
        goto fail;
    }
    if (!out_apart(fname, &out, (const buffer_arg *const[]){&x, &w, &zp, &scale, &bias}, 5)) goto fail;
    if (out.view.len == 0) {
        result = Py_NewRef(Py_None);
        goto fail;
    }
    int status, is_q = format_char(&out.view) == 'b';
    Py_BEGIN_ALLOW_THREADS
    status = mq_depthwise_static(x.view.buf, x.view.shape[0], channels, x.view.shape[1], x.view.shape[2], ks[0],
                                 ks[1], st[0], st[1], pd[0], pd[1], dl[0], dl[1], w.view.buf, data_or_null(&zp),
                                 scale.view.buf, data_or_null(&bias), act_lo, act_hi, inv_out, x_zp, out_zp,
                                 is_q ? out.view.buf : NULL, is_q ? NULL : out.view.buf, nthreads);
    Py_END_ALLOW_THREADS
    if (status < 0) {
        PyErr_NoMemory();
        goto fail;
    }
    result = Py_NewRef(Py_None);
fail:
    release(&x);
    release(&w);
    release(&zp);
    release(&scale);
    release(&bias);
    release(&out);
    return result;
}

/* ---- add_static / avgpool_static ---------------------------------------------------- */

PyDoc_STRVAR(add_static_doc,
             "add_static(a, a_scale, b, b_scale, out, act_lo, act_hi, inv_out_scale, nthreads=1,\n"
             "           a_zero_point=0, b_zero_point=0, out_zero_point=0)\n\n"
             "Elementwise act((a - a_zp) * a_scale + (b - b_zp) * b_scale) of two int8 arrays of one\n"
             "shape into out (int8: requantized with inv_out_scale and out_zero_point; float32: as is).");

static PyObject *py_add_static(PyObject *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"a", "a_scale", "b", "b_scale", "out", "act_lo", "act_hi", "inv_out_scale", "nthreads",
                             "a_zero_point", "b_zero_point", "out_zero_point", NULL};
    static const char *fname = "add_static";
    PyObject *a_obj, *b_obj, *out_obj, *result = NULL;
    float sa, sb, act_lo, act_hi, inv_out;
    int nthreads = 1, za = 0, zb = 0, zo = 0;
    buffer_arg a = {0}, b = {0}, out = {0};
    (void)self;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OfOfOfff|iiii:add_static", kwlist, &a_obj, &sa, &b_obj, &sb,
                                     &out_obj, &act_lo, &act_hi, &inv_out, &nthreads, &za, &zb, &zo))
        return NULL;
    if (!mq_check_threads(nthreads) || !check_scale(fname, "a_scale", sa, 1) ||
        !check_scale(fname, "b_scale", sb, 1) || !check_scale(fname, "inv_out_scale", inv_out, 1) ||
        !check_zp(fname, "a_zero_point", za) || !check_zp(fname, "b_zero_point", zb) ||
        !check_zp(fname, "out_zero_point", zo))
        return NULL;
    if (!check_act(fname, act_lo, act_hi)) return NULL;
    if (!get_buffer(a_obj, fname, "a", "b", 0, 0, 8, &a) || !get_buffer(b_obj, fname, "b", "b", 0, 0, 8, &b) ||
        !get_buffer(out_obj, fname, "out", "bf", 1, 0, 8, &out))
        goto fail;
    int64_t dims[8];
    for (int i = 0; i < a.view.ndim; i++) dims[i] = a.view.shape[i];
    if (!check_shape(fname, "b (the shape of a)", &b.view, a.view.ndim, dims) ||
        !check_shape(fname, "out", &out.view, a.view.ndim, dims) ||
        !out_apart(fname, &out, (const buffer_arg *const[]){&a, &b}, 2))
        goto fail;
    const int64_t n = a.view.len;
    int is_q = format_char(&out.view) == 'b';
    Py_BEGIN_ALLOW_THREADS
    mq_add_static(a.view.buf, sa, za, b.view.buf, sb, zb, n, act_lo, act_hi, inv_out, zo, is_q ? out.view.buf : NULL,
                  is_q ? NULL : out.view.buf, nthreads);
    Py_END_ALLOW_THREADS
    result = Py_NewRef(Py_None);
fail:
    release(&a);
    release(&b);
    release(&out);
    return result;
}

PyDoc_STRVAR(avgpool_static_doc,
             "avgpool_static(x, mul, out, act_lo, act_hi, inv_out_scale, x_zero_point=0, out_zero_point=0)\n\n"
             "Global average pool of int8 NHWC x [b, h, w, c] into out [b, c] (int8 or float32):\n"
             "act((sum over pixels - h * w * x_zero_point) * mul), mul = x_scale / (h * w) in float32.");

static PyObject *py_avgpool_static(PyObject *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"x", "mul", "out", "act_lo", "act_hi", "inv_out_scale", "x_zero_point", "out_zero_point",
                             NULL};
    static const char *fname = "avgpool_static";
    PyObject *x_obj, *out_obj, *result = NULL;
    float mul, act_lo, act_hi, inv_out;
    int x_zp = 0, out_zp = 0;
    buffer_arg x = {0}, out = {0};
    (void)self;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OfOfff|ii:avgpool_static", kwlist, &x_obj, &mul, &out_obj, &act_lo,
                                     &act_hi, &inv_out, &x_zp, &out_zp))
        return NULL;
    if (!check_scale(fname, "mul", mul, 1) || !check_scale(fname, "inv_out_scale", inv_out, 1) ||
        !check_zp(fname, "x_zero_point", x_zp) || !check_zp(fname, "out_zero_point", out_zp))
        return NULL;
    if (!check_act(fname, act_lo, act_hi)) return NULL;
    if (!get_buffer(x_obj, fname, "x", "b", 0, 4, 4, &x) || !get_buffer(out_obj, fname, "out", "bf", 1, 2, 2, &out))
        goto fail;
    const int64_t pixels = x.view.shape[1] * x.view.shape[2];
    int64_t dims[2] = {x.view.shape[0], x.view.shape[3]};
    if (!check_shape(fname, "out", &out.view, 2, dims) || !out_apart(fname, &out, (const buffer_arg *const[]){&x}, 1))
        goto fail;
    if (out.view.len == 0) {
        result = Py_NewRef(Py_None);
        goto fail;
    }
    if (pixels > (INT32_MAX / 128)) { /* the int32 sums of up to 127 per pixel */
        PyErr_Format(PyExc_ValueError, "%s: at most %d pixels per image", fname, INT32_MAX / 128);
        goto fail;
    }
    int status, is_q = format_char(&out.view) == 'b';
    Py_BEGIN_ALLOW_THREADS
    status = mq_avgpool_static(x.view.buf, x_zp, dims[0], pixels, dims[1], mul, act_lo, act_hi, inv_out, out_zp,
                               is_q ? out.view.buf : NULL, is_q ? NULL : out.view.buf);
    Py_END_ALLOW_THREADS
    if (status < 0) {
        PyErr_NoMemory();
        goto fail;
    }
    result = Py_NewRef(Py_None);
fail:
    release(&x);
    release(&out);
    return result;
}

PyMethodDef mq_static_methods[] = {
    MQ_KW_METHOD(quantize_static),
    MQ_KW_METHOD(dequantize_static),
    MQ_KW_METHOD(transpose_f32),
    MQ_KW_METHOD(conv2d_static),
    MQ_KW_METHOD(depthwise_static),
    MQ_KW_METHOD(add_static),
    MQ_KW_METHOD(avgpool_static),
    {NULL, NULL, 0, NULL},
};
