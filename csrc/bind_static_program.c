/* bind_static_program.c - builds a static int8 program (static_program.h) once from
 * Python's description of its nodes, and runs it on a batch in one call.
 *
 * The program is a capsule owning the C node array and a list of every array the
 * nodes point into (the layers' packed weights, scales, biases), so they stay alive
 * and in place as long as the program does.  Everything is validated when the
 * program is built (kinds, value slots, scales, zero-points, every array's dtype,
 * contiguity and length against its layer); a run validates the input's shape
 * against the program before releasing the GIL. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "bind.h"
#include "size_check.h"
#include "layout.h"
#include "static_program.h"
#include "static_int8.h"

#define CAPSULE_NAME "mono_quant._C.static_program"
#define MAX_NODES 4096

typedef struct {
    mq_sp_program program;
    PyObject *keep; /* list of the arrays the nodes point into */
} program_box;

static void box_free(program_box *box) {
    if (!box) return;
    for (int i = 0; box->program.nodes && i < box->program.count; i++)
        free((void *)box->program.nodes[i].cat_in); /* one block: slots, zero-points, scales */
    free(box->program.nodes);
    Py_XDECREF(box->keep);
    free(box);
}

static void program_free(PyObject *capsule) { box_free(PyCapsule_GetPointer(capsule, CAPSULE_NAME)); }

/* A C-contiguous, aligned, native ndarray of `type` with `size` elements (any rank), appended
 * to keep; its data, or NULL with an exception set. */
static void *kept_array(PyObject *keep, PyObject *obj, int node, const char *what, int type, const char *tname,
                        npy_intp size) {
    if (!PyArray_Check(obj) || PyArray_TYPE((PyArrayObject *)obj) != type ||
        !PyArray_ISNOTSWAPPED((PyArrayObject *)obj) || !PyArray_IS_C_CONTIGUOUS((PyArrayObject *)obj) ||
        !PyArray_ISALIGNED((PyArrayObject *)obj)) {
        PyErr_Format(PyExc_TypeError, "static program node %d: %s must be a C-contiguous, aligned numpy %s array",
                     node, what, tname);
        return NULL;
    }
    if (PyArray_SIZE((PyArrayObject *)obj) != size) {
        PyErr_Format(PyExc_ValueError, "static program node %d: %s must have %zd entries, got %zd", node, what,
                     (Py_ssize_t)size, (Py_ssize_t)PyArray_SIZE((PyArrayObject *)obj));
        return NULL;
    }
    if (PyList_Append(keep, obj) < 0) return NULL;
    return PyArray_DATA((PyArrayObject *)obj);
}

static int check_node(const mq_sp_node *nd, int i, int last) {
#define BAD(...)                                                                      \
    do {                                                                              \
        PyErr_Format(PyExc_ValueError, "static program node %d: " __VA_ARGS__);      \
        return 0;                                                                     \
    } while (0)
    if (nd->kind < MQ_SP_QUANTIZE || nd->kind > MQ_SP_LAST_KIND) BAD("unknown kind %d", i, nd->kind);
    if ((i == 0) != (nd->kind == MQ_SP_QUANTIZE)) BAD("the first node (and only it) quantizes the input", i);
    if (nd->out_float != (i == last)) BAD("the last node (and only it) has a float output", i);
    if (nd->x_zp < -127 || nd->x_zp > 127 || nd->out_zp < -127 || nd->out_zp > 127 || nd->b_zp < -127 ||
        nd->b_zp > 127)
        BAD("zero-points must be in -127..127", i);
    if (isnan(nd->act_lo) || isnan(nd->act_hi) || nd->act_lo > nd->act_hi) BAD("need act_lo <= act_hi", i);
    if (!(nd->inv_out_scale > 0.0f) || !isfinite(nd->inv_out_scale)) BAD("inv_out_scale must be finite > 0", i);
    if ((nd->kind == MQ_SP_ADD || nd->kind == MQ_SP_BCAST_ADD) && (!(nd->a_scale > 0.0f) || !isfinite(nd->a_scale) || !(nd->b_scale > 0.0f) ||
                                  !isfinite(nd->b_scale)))
        BAD("add scales must be finite > 0", i);
    if (nd->kind == MQ_SP_POOL && (!(nd->pool_scale > 0.0f) || !isfinite(nd->pool_scale)))
        BAD("pool scale must be finite > 0", i);
    if (nd->kind == MQ_SP_CAT) {
        if (nd->n < 1 || nd->n > MAX_NODES) BAD("a concatenation takes 1..%d inputs", i, MAX_NODES);
        if (!(nd->a_scale > 0.0f) || !isfinite(nd->a_scale)) BAD("the output scale must be finite > 0", i);
        if (nd->out_float) BAD("a concatenation can't be the last (float output) node", i);
    }
    if (nd->kind == MQ_SP_BCAST_ADD && nd->in1 == -1 &&
        (nd->kh < 1 || nd->kw < 1 || nd->n < 1 || nd->kh > MQ_MAX_CONV_ARG || nd->kw > MQ_MAX_CONV_ARG || nd->n > MQ_MAX_CONV_ARG ||
         mq_size_mul(mq_size_mul(nd->kh, nd->kw), nd->n) < 0))
        BAD("the constant's shape (kh, kw, n) must be in 1..%ld", i, MQ_MAX_CONV_ARG);
    if (nd->in_channels < 0 || nd->in_channels > MQ_MAX_CONV_ARG) BAD("in_channels out of range", i);
    if (nd->kind == MQ_SP_QUANTIZE && nd->in_channels < 1) BAD("in_channels must be >= 1", i);
    if (nd->kind == MQ_SP_CONV || nd->kind == MQ_SP_DEPTHWISE) {
        if (nd->n < 1 || nd->n > MQ_MAX_CONV_ARG || nd->in_channels < 1) BAD("channels must be >= 1", i);
        if (nd->kh < 1 || nd->kw < 1 || nd->sh < 1 || nd->sw < 1 || nd->dh < 1 || nd->dw < 1 || nd->ph < 0 ||
            nd->pw < 0 || nd->kh > MQ_MAX_CONV_ARG || nd->kw > MQ_MAX_CONV_ARG || nd->sh > MQ_MAX_CONV_ARG || nd->sw > MQ_MAX_CONV_ARG ||
            nd->dh > MQ_MAX_CONV_ARG || nd->dw > MQ_MAX_CONV_ARG || nd->ph > MQ_MAX_CONV_ARG || nd->pw > MQ_MAX_CONV_ARG)
            BAD("kernel, stride and dilation must be in 1..%ld, padding in 0..%ld", i, MQ_MAX_CONV_ARG, MQ_MAX_CONV_ARG);
        if (nd->kind == MQ_SP_CONV && nd->in_channels * nd->kh * nd->kw > MQ_MAX_LINEAR_K)
            BAD("in_channels * kernel area must be at most %d", i, MQ_MAX_LINEAR_K);
        if (nd->kind == MQ_SP_DEPTHWISE && nd->n != nd->in_channels) BAD("depthwise needs n == in_channels", i);
        if (nd->kind == MQ_SP_DEPTHWISE && nd->kh * nd->kw > MQ_MAX_DEPTHWISE_TAPS)
            BAD("a depthwise kernel area must be at most %d", i, MQ_MAX_DEPTHWISE_TAPS);
    }
    return 1;
#undef BAD
}

PyDoc_STRVAR(static_program_doc,
             "static_program(nodes) -> program\n\n"
             "Builds a static int8 program (csrc/static_program.h) from a list of nodes, each\n"
             "(kind, in0, in1, out, ints, floats, arrays): kind 0 quantize, 1 conv / linear, 2 depthwise,\n"
             "3 add, 4 global average pool, 5 channel concatenation, 6 broadcasting add; in0 / in1 / out\n"
             "value slots (in1 -1 unless add; a broadcasting add of a constant: -1);\n"
             "ints (in_channels, n, kh, kw, sh, sw, ph, pw, dh, dw, x_zp, out_zp, b_zp, out_float,\n"
             "w_has_m128); floats (act_lo, act_hi, inv_out_scale, a_scale, b_scale, pool_scale);\n"
             "arrays (packed, w_sum, x_w_scale, bias) for conv (int8, int32, float32, float32 or None),\n"
             "(weight [kh, kw, c], None, x_w_scale, bias) for depthwise, (input slots int32, scales float32,\n"
             "zero-points int32) for a concatenation of n inputs (a_scale: the output scale; in0 the first\n"
             "slot), (codes int8 [kh*kw*n],) for a broadcasting add of a constant of per-image shape\n"
             "(kh, kw, n), else ().  The arrays are kept\n"
             "and read in place at every run.");

static PyObject *py_static_program(PyObject *self, PyObject *arg) {
    (void)self;
    if (!PyList_Check(arg) || PyList_GET_SIZE(arg) < 2 || PyList_GET_SIZE(arg) > MAX_NODES) {
        PyErr_Format(PyExc_TypeError, "static_program: nodes must be a list of 2..%d node tuples", MAX_NODES);
        return NULL;
    }
    /* a snapshot: parsing a node's numbers runs user code (__index__, __float__) that could
     * empty or refill the list while its borrowed items are read */
    PyObject *nodes = PyList_AsTuple(arg);
    if (!nodes) return NULL;
    const int count = (int)PyTuple_GET_SIZE(nodes);
    program_box *box = calloc(1, sizeof *box);
    PyObject *capsule = NULL;
    char *written = NULL;
    if (!box || !(box->program.nodes = calloc((size_t)count, sizeof(mq_sp_node))) || !(written = calloc(count, 1))) {
        PyErr_NoMemory();
        goto fail;
    }
    if (!(box->keep = PyList_New(0))) goto fail;
    box->program.count = count;
    box->program.values = count; /* every node writes its own slot: at most count slots */
    for (int i = 0; i < count; i++) {
        PyObject *t = PyTuple_GET_ITEM(nodes, i), *ints, *floats, *arrays;
        mq_sp_node *nd = &box->program.nodes[i];
        long long iv[15];
        float fv[6];
        if (!PyTuple_Check(t) || !PyArg_ParseTuple(t, "iiiiO!O!O!:static_program node", &nd->kind, &nd->in0,
                                                   &nd->in1, &nd->out, &PyTuple_Type, &ints, &PyTuple_Type,
                                                   &floats, &PyTuple_Type, &arrays)) {
            if (!PyErr_Occurred() || PyErr_ExceptionMatches(PyExc_TypeError)) {
                PyErr_Clear();
                PyErr_Format(PyExc_TypeError, "static program node %d must be (kind, in0, in1, out, ints tuple, "
                             "floats tuple, arrays tuple)", i);
            }
            goto fail;
        }
        if (!PyArg_ParseTuple(ints, "LLLLLLLLLLLLLLL", &iv[0], &iv[1], &iv[2], &iv[3], &iv[4], &iv[5], &iv[6],
                              &iv[7], &iv[8], &iv[9], &iv[10], &iv[11], &iv[12], &iv[13], &iv[14]) ||
            !PyArg_ParseTuple(floats, "ffffff", &fv[0], &fv[1], &fv[2], &fv[3], &fv[4], &fv[5]))
            goto fail;
        nd->in_channels = iv[0], nd->n = iv[1], nd->kh = iv[2], nd->kw = iv[3], nd->sh = iv[4], nd->sw = iv[5];
        nd->ph = iv[6], nd->pw = iv[7], nd->dh = iv[8], nd->dw = iv[9];
        for (int j = 10; j < 15; j++)
            if (iv[j] < -128 || iv[j] > 127) {
                PyErr_Format(PyExc_ValueError, "static program node %d: int argument %d out of range", i, j);
                goto fail;
            }
        nd->x_zp = (int)iv[10], nd->out_zp = (int)iv[11], nd->b_zp = (int)iv[12];
        nd->out_float = iv[13] != 0, nd->w_has_m128 = iv[14] != 0;
        nd->act_lo = fv[0], nd->act_hi = fv[1], nd->inv_out_scale = fv[2];
        nd->a_scale = fv[3], nd->b_scale = fv[4], nd->pool_scale = fv[5];
        if (!check_node(nd, i, count - 1)) goto fail;
        /* value slots: read only what an earlier node wrote; each slot written once */
        const int reads0 = nd->kind != MQ_SP_QUANTIZE,
                  reads1 = nd->kind == MQ_SP_ADD || (nd->kind == MQ_SP_BCAST_ADD && nd->in1 != -1);
        if ((reads0 && (nd->in0 < 0 || nd->in0 >= count || !written[nd->in0])) ||
            (reads1 && (nd->in1 < 0 || nd->in1 >= count || !written[nd->in1])) || nd->out < 0 || nd->out >= count ||
            written[nd->out]) {
            PyErr_Format(PyExc_ValueError, "static program node %d: its value slots must name values written "
                         "before it, and its output a new slot in 0..%d", i, count - 1);
            goto fail;
        }
        written[nd->out] = 1;
        const Py_ssize_t narr = PyTuple_GET_SIZE(arrays);
        if (nd->kind == MQ_SP_CONV || nd->kind == MQ_SP_DEPTHWISE) {
            if (narr != 4) {
                PyErr_Format(PyExc_TypeError, "static program node %d: needs 4 arrays", i);
                goto fail;
            }
            const npy_intp n = nd->n, k = nd->in_channels * nd->kh * nd->kw;
            if (nd->kind == MQ_SP_CONV) {
                int64_t np64;
                const npy_intp size = mq_packed_int8_bytes(n, k, 1, &np64);
                if (!(nd->packed = kept_array(box->keep, PyTuple_GET_ITEM(arrays, 0), i, "packed", NPY_INT8, "int8",
                                              size)) ||
                    !(nd->w_sum = kept_array(box->keep, PyTuple_GET_ITEM(arrays, 1), i, "w_sum", NPY_INT32, "int32",
                                             (npy_intp)np64)))
                    goto fail;
            } else if (!(nd->packed = kept_array(box->keep, PyTuple_GET_ITEM(arrays, 0), i, "weight", NPY_INT8,
                                                 "int8", k))) {
                goto fail;
            }
            if (!(nd->x_w_scale = kept_array(box->keep, PyTuple_GET_ITEM(arrays, 2), i, "x_w_scale", NPY_FLOAT32,
                                             "float32", n)))
                goto fail;
            PyObject *bias = PyTuple_GET_ITEM(arrays, 3);
            if (bias != Py_None && !(nd->bias = kept_array(box->keep, bias, i, "bias", NPY_FLOAT32, "float32", n)))
                goto fail;
        } else if (nd->kind == MQ_SP_CAT) {
            if (narr != 3) {
                PyErr_Format(PyExc_TypeError, "static program node %d: a concatenation needs 3 arrays", i);
                goto fail;
            }
            const int32_t *ins, *zps;
            const float *scales;
            if (!(ins = kept_array(box->keep, PyTuple_GET_ITEM(arrays, 0), i, "input slots", NPY_INT32, "int32",
                                   nd->n)) ||
                !(scales = kept_array(box->keep, PyTuple_GET_ITEM(arrays, 1), i, "input scales", NPY_FLOAT32,
                                      "float32", nd->n)) ||
                !(zps = kept_array(box->keep, PyTuple_GET_ITEM(arrays, 2), i, "input zero-points", NPY_INT32, "int32",
                                   nd->n)))
                goto fail;
            /* a private copy: the run indexes the scratch with these, so later edits of the arrays must not reach it */
            int32_t *block = malloc((size_t)nd->n * (2 * sizeof(int32_t) + sizeof(float)));
            if (!block) {
                PyErr_NoMemory();
                goto fail;
            }
            nd->cat_in = block, nd->cat_zp = block + nd->n, nd->cat_scale = (const float *)(block + 2 * nd->n);
            memcpy(block, ins, (size_t)nd->n * sizeof(int32_t));
            memcpy(block + nd->n, zps, (size_t)nd->n * sizeof(int32_t));
            memcpy(block + 2 * nd->n, scales, (size_t)nd->n * sizeof(float));
            if (ins[0] != nd->in0) {
                PyErr_Format(PyExc_ValueError, "static program node %d: in0 must be the first input slot", i);
                goto fail;
            }
            for (int64_t j = 0; j < nd->n; j++) {
                if (ins[j] < 0 || ins[j] >= count || !written[ins[j]] || ins[j] == nd->out) {
                    PyErr_Format(PyExc_ValueError, "static program node %d: input %d must name a value written "
                                 "before it", i, (int)j);
                    goto fail;
                }
                if (!(scales[j] > 0.0f) || !isfinite(scales[j]) || zps[j] < -127 || zps[j] > 127) {
                    PyErr_Format(PyExc_ValueError, "static program node %d: input %d needs a finite scale > 0 and a "
                                 "zero-point in -127..127", i, (int)j);
                    goto fail;
                }
            }
        } else if (nd->kind == MQ_SP_BCAST_ADD && nd->in1 == -1) {
            if (narr != 1) {
                PyErr_Format(PyExc_TypeError, "static program node %d: an add of a constant needs its codes", i);
                goto fail;
            }
            if (!(nd->b_codes = kept_array(box->keep, PyTuple_GET_ITEM(arrays, 0), i, "constant codes", NPY_INT8,
                                           "int8", nd->kh * nd->kw * nd->n)))
                goto fail;
        } else if (narr != 0) {
            PyErr_Format(PyExc_TypeError, "static program node %d: takes no arrays", i);
            goto fail;
        }
    }
    capsule = PyCapsule_New(box, CAPSULE_NAME, program_free);
    if (!capsule) goto fail;
    free(written);
    Py_DECREF(nodes);
    return capsule;
fail:
    free(written);
    box_free(box);
    Py_DECREF(nodes);
    return NULL;
}

PyDoc_STRVAR(static_program_run_doc,
             "static_program_run(program, x, nthreads=1, split='auto', nchw=False) -> out\n\n"
             "Runs a static_program on x (float32 NCHW [b, c, h, w], or [b, features]), image by\n"
             "image; out float32 [b, h, w, c] in the last node's NHWC shape (a linear or pool: h = w = 1),\n"
             "or with nchw=True [b, c, h, w] (transposed in C: torch's copy of the permuted view is 3x slower).\n"
             "split: 'auto' (threads take whole images; images left over, fewer than the threads, have\n"
             "each node split between them), 'images' (whole images only) or 'nodes' (every image split,\n"
             "each node in as many pieces as it allows: for tests).  The bits are the same in every mode.");

static PyObject *py_static_program_run(PyObject *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"program", "x", "nthreads", "split", "nchw", NULL};
    static const int f32[] = {NPY_FLOAT32};
    PyObject *cap, *x_obj, *result = NULL;
    int nthreads = 1;
    const char *split_name = "auto";
    int nchw = 0;
    mq_refs refs = {0};
    mq_sp_shape *shapes = NULL;
    float *nhwc = NULL;
    (void)self;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OO|isp:static_program_run", kwlist, &cap, &x_obj, &nthreads,
                                     &split_name, &nchw))
        return NULL;
    const int split = strcmp(split_name, "auto") == 0     ? MQ_SP_SPLIT_AUTO
                      : strcmp(split_name, "images") == 0 ? MQ_SP_SPLIT_IMAGES
                      : strcmp(split_name, "nodes") == 0  ? MQ_SP_SPLIT_NODES
                                                          : -1;
    if (split < 0) {
        PyErr_Format(PyExc_ValueError, "static_program_run: split must be 'auto', 'images' or 'nodes', not '%s'",
                     split_name);
        return NULL;
    }
    if (!PyCapsule_IsValid(cap, CAPSULE_NAME)) {
        PyErr_SetString(PyExc_TypeError, "static_program_run: program must be what static_program() returned");
        return NULL;
    }
    program_box *box = PyCapsule_GetPointer(cap, CAPSULE_NAME);
    if (!box) return NULL;
    if (!mq_check_threads(nthreads)) return NULL;
    const int nd = PyArray_Check(x_obj) ? PyArray_NDIM((PyArrayObject *)x_obj) : 0;
    if (nd != 2 && nd != 4) {
        PyErr_SetString(PyExc_ValueError, "static_program_run: x must be a 2-D or 4-D numpy float32 array");
        return NULL;
    }
    PyArrayObject *x = mq_array_in(&refs, x_obj, "x", f32, 1, nd, "float32");
    if (!x) goto fail;
    const npy_intp *d = PyArray_DIMS(x);
    const int64_t batch = d[0], c = d[1], h = nd == 4 ? d[2] : 1, w = nd == 4 ? d[3] : 1;
    shapes = malloc(sizeof(mq_sp_shape) * (size_t)box->program.values);
    if (!shapes) {
        PyErr_NoMemory();
        goto fail;
    }
    int64_t out_elems = 0;
    char err[200];
    if (mq_sp_shapes(&box->program, c, h, w, shapes, &out_elems, err, sizeof err) < 0) {
        PyErr_SetString(PyExc_ValueError, err);
        goto fail;
    }
    const mq_sp_shape o = shapes[box->program.nodes[box->program.count - 1].out];
    if (!mq_size_fits(mq_size_mul(batch, out_elems), "static_program_run", "the output")) goto fail;
    const int transpose = nchw && o.h * o.w > 1 && o.c > 1; /* (else both layouts are the same bytes) */
    npy_intp dims[4] = {batch, o.h, o.w, o.c};
    if (nchw) {
        dims[1] = o.c;
        dims[2] = o.h;
        dims[3] = o.w;
    }
    PyArrayObject *out = mq_array_new(&refs, 4, dims, NPY_FLOAT32, 0);
    if (!out) goto fail;
    if (transpose && batch > 0 && !(nhwc = malloc((size_t)(batch * out_elems) * sizeof(float)))) {
        PyErr_NoMemory();
        goto fail;
    }
    int status = 0;
    if (batch > 0) {
        Py_BEGIN_ALLOW_THREADS
        status = mq_sp_run(&box->program, shapes, PyArray_DATA(x), batch, c * h * w,
                           transpose ? nhwc : PyArray_DATA(out), out_elems, nthreads, split);
        if (status >= 0 && transpose) mq_static_nchw_f32(nhwc, batch, o.h * o.w, o.c, PyArray_DATA(out), nthreads);
        Py_END_ALLOW_THREADS
    }
    if (status < 0) {
        PyErr_NoMemory();
        goto fail;
    }
    result = mq_return(out);
fail:
    free(nhwc);
    free(shapes);
    mq_release(&refs);
    return result;
}

PyMethodDef mq_static_program_methods[] = {
    {"static_program", py_static_program, METH_O, static_program_doc},
    MQ_KW_METHOD(static_program_run),
    {NULL, NULL, 0, NULL},
};
