/* bind_embedding.c - quantized embedding tables (8-bit codes, int4 rows): lookups and bags (embedding.c). */
#include "bind.h"

/* The table's arrays.  group == 0: codes [num][dim] int8 or uint8, scale float32 and zero_point int32
 * of length num or 1 (None: every zero-point 0).  group > 0 (int4): codes uint8 [num][kpad / 2], scale
 * float16 (or its int16 bits) and zero_point uint8 [num][ceil(kpad / group)], cols the values a row
 * holds (kpad - 31 .. kpad).  The scales are not checked here (every id's row would be read per
 * call: the layer's load and quantize checks hold them); a bad one gives bad numbers, never a bad read. */
static int table_in(mq_refs *refs, PyObject *q_obj, PyObject *s_obj, PyObject *z_obj, long long group,
                    long long cols, mq_emb_table *t) {
    static const int codes[] = {NPY_INT8, NPY_UINT8}, u8[] = {NPY_UINT8}, f32[] = {NPY_FLOAT32}, i32[] = {NPY_INT32},
                     h16[] = {NPY_FLOAT16, NPY_INT16, NPY_UINT16};
    PyArrayObject *q, *scale, *zp;
    if (group < 0) {
        PyErr_Format(PyExc_ValueError, "group must be 0 (8-bit codes) or a positive multiple of %d (int4), got %lld",
                     MQ_Q4_BLOCK, group);
        return 0;
    }
    if (group > 0) {
        if (!mq_q4_check_group(group)) return 0; /* (bounded: the groups' count below never overflows) */
        if (!(q = mq_array_in(refs, q_obj, "q", u8, 1, 2, "uint8 (packed int4)"))) return 0;
        if (!(scale = mq_array_in(refs, s_obj, "scale", h16, 3, 2, "float16"))) return 0;
        if (!(zp = mq_array_in(refs, z_obj, "zero_point", u8, 1, 2, "uint8"))) return 0;
        const npy_intp num = PyArray_DIM(q, 0), kpad = 2 * PyArray_DIM(q, 1), ngroups = (kpad + group - 1) / group;
        if (kpad % MQ_Q4_BLOCK || cols < 1 || cols > kpad || cols <= kpad - MQ_Q4_BLOCK) {
            PyErr_Format(PyExc_ValueError, "int4 rows of %zd bytes hold %zd columns padded to a multiple of %d: cols "
                         "must be in %zd..%zd, got %lld", (Py_ssize_t)(kpad / 2), (Py_ssize_t)kpad, MQ_Q4_BLOCK,
                         (Py_ssize_t)(kpad - MQ_Q4_BLOCK + 1), (Py_ssize_t)kpad, cols);
            return 0;
        }
        for (int i = 0; i < 2; i++) {
            PyArrayObject *a = i ? zp : scale;
            if (PyArray_DIM(a, 0) != num || PyArray_DIM(a, 1) != ngroups) {
                PyErr_Format(PyExc_ValueError, "%s must be [%zd, %zd] (rows, groups of %lld), got [%zd, %zd]",
                             i ? "zero_point" : "scale", (Py_ssize_t)num, (Py_ssize_t)ngroups, group,
                             (Py_ssize_t)PyArray_DIM(a, 0), (Py_ssize_t)PyArray_DIM(a, 1));
                return 0;
            }
        }
        *t = (mq_emb_table){PyArray_DATA(q), 0, num, cols, NULL, NULL, 0, group, kpad, PyArray_DATA(scale),
                            PyArray_DATA(zp)};
        return 1;
    }
    if (!(q = mq_array_in(refs, q_obj, "q", codes, 2, 2, "int8 or uint8"))) return 0;
    if (!(scale = mq_array_in(refs, s_obj, "scale", f32, 1, 1, "float32"))) return 0;
    if (z_obj == Py_None)
        zp = NULL;
    else if (!(zp = mq_array_in(refs, z_obj, "zero_point", i32, 1, 1, "int32")))
        return 0;
    const npy_intp num = PyArray_DIM(q, 0), ns = PyArray_DIM(scale, 0), nz = zp ? PyArray_DIM(zp, 0) : ns;
    if (ns != nz || (ns != num && ns != 1)) {
        PyErr_Format(PyExc_ValueError, "scale and zero_point must both have length 1 or %zd (rows), got %zd and %zd",
                     (Py_ssize_t)num, (Py_ssize_t)ns, (Py_ssize_t)nz);
        return 0;
    }
    *t = (mq_emb_table){PyArray_DATA(q), PyArray_TYPE(q) == NPY_INT8, num, PyArray_DIM(q, 1), PyArray_DATA(scale),
                        zp ? PyArray_DATA(zp) : NULL, ns == num && num != 1, 0, 0, NULL, NULL};
    return 1;
}

static PyArrayObject *ids_in(mq_refs *refs, PyObject *obj, const char *what, int64_t num) {
    static const int i64[] = {NPY_INT64};
    PyArrayObject *a = mq_array_in(refs, obj, what, i64, 1, 1, "int64");
    if (!a || num < 0) return a;
    const int64_t bad = mq_embedding_bad_id(PyArray_DATA(a), PyArray_DIM(a, 0), num);
    if (bad >= 0) {
        PyErr_Format(PyExc_IndexError, "index %lld (position %lld) is out of range for an embedding of %lld rows",
                     (long long)((const int64_t *)PyArray_DATA(a))[bad], (long long)bad, (long long)num);
        return NULL;
    }
    return a;
}

PyDoc_STRVAR(embedding_rows_doc,
             "embedding_rows(q, scale, zero_point, ids, nthreads=1, group=0, cols=0) -> rows\n\n"
             "rows [len(ids), dim] float32 = ((float)q[ids] - zero_point) * scale of an 8-bit table q\n"
             "[num, dim] (int8 or uint8; scale float32 / zero_point int32 of length num or 1, or None: 0),\n"
             "ids int64.  group > 0: an int4 table (packed rows q uint8 [num, kpad / 2], scale float16 and\n"
             "zero_point uint8 (u4.4) [num, groups], cols values a row), its values as q4_dequantize's.\n"
             "IndexError for an id outside [0, num).");

static PyObject *py_embedding_rows(PyObject *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"q", "scale", "zero_point", "ids", "nthreads", "group", "cols", NULL};
    PyObject *q_obj, *s_obj, *z_obj, *ids_obj, *result = NULL;
    int nthreads = 1;
    long long group = 0, cols = 0;
    mq_refs refs = {0};
    mq_emb_table t;
    PyArrayObject *ids, *out;
    (void)self;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOOO|iLL:embedding_rows", kwlist, &q_obj, &s_obj, &z_obj, &ids_obj,
                                     &nthreads, &group, &cols))
        return NULL;
    if (!mq_check_threads(nthreads) || !table_in(&refs, q_obj, s_obj, z_obj, group, cols, &t)) goto done;
    if (!(ids = ids_in(&refs, ids_obj, "ids", t.num))) goto done;
    npy_intp dims[2] = {PyArray_DIM(ids, 0), (npy_intp)t.dim};
    if (!(out = mq_array_new(&refs, 2, dims, NPY_FLOAT32, 0))) goto done;
    Py_BEGIN_ALLOW_THREADS
    mq_embedding_rows(&t, PyArray_DATA(ids), dims[0], PyArray_DATA(out), nthreads);
    Py_END_ALLOW_THREADS
    result = mq_return(out);
done:
    mq_release(&refs);
    return result;
}

PyDoc_STRVAR(embedding_bag_doc,
             "embedding_bag(q, scale, zero_point, ids, offsets, per_sample_weights=None, mode=0, padding_idx=-1,\n"
             "              include_last_offset=False, nthreads=1, group=0, cols=0) -> out\n\n"
             "out [bags, dim] float32: bag b holds ids[offsets[b] .. offsets[b + 1]) (the last one to len(ids)\n"
             "unless include_last_offset, where offsets holds bags + 1 entries, the last len(ids)); its rows\n"
             "(as embedding_rows: 8-bit, or int4 with group > 0), ids equal to padding_idx left out (-1: none),\n"
             "each times its per_sample_weights entry (float32, mode 0 only; fused into the add) and added in\n"
             "order (mode 0: sum), divided by\n"
             "their count (1: mean), or their maximum (2: max); an empty bag 0.  IndexError for an id out of\n"
             "range; RuntimeError for offsets that are not bag starts (offsets[0] != 0, decreasing, past\n"
             "len(ids)), as torch's.");

static PyObject *py_embedding_bag(PyObject *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"q", "scale", "zero_point", "ids", "offsets", "per_sample_weights", "mode", "padding_idx",
                             "include_last_offset", "nthreads", "group", "cols", NULL};
    static const int f32[] = {NPY_FLOAT32};
    PyObject *q_obj, *s_obj, *z_obj, *ids_obj, *off_obj, *psw_obj = Py_None, *result = NULL;
    int nthreads = 1, mode = MQ_EMB_BAG_SUM, include_last = 0;
    long long padding_idx = -1, group = 0, cols = 0;
    mq_refs refs = {0};
    mq_emb_table t;
    PyArrayObject *ids, *offsets, *psw = NULL, *out;
    (void)self;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOOOO|OiLpiLL:embedding_bag", kwlist, &q_obj, &s_obj, &z_obj, &ids_obj,
                                     &off_obj, &psw_obj, &mode, &padding_idx, &include_last, &nthreads, &group, &cols))
        return NULL;
    if (!mq_check_threads(nthreads)) return NULL;
    if (mode < MQ_EMB_BAG_SUM || mode > MQ_EMB_BAG_MAX) {
        PyErr_Format(PyExc_ValueError, "mode must be 0 (sum), 1 (mean) or 2 (max), got %d", mode);
        return NULL;
    }
    if (padding_idx < -1) {
        PyErr_Format(PyExc_ValueError, "padding_idx must be a row (>= 0) or -1 for none, got %lld", padding_idx);
        return NULL;
    }
    if (!table_in(&refs, q_obj, s_obj, z_obj, group, cols, &t)) goto done;
    if (!(ids = ids_in(&refs, ids_obj, "ids", t.num)) || !(offsets = ids_in(&refs, off_obj, "offsets", -1)))
        goto done;
    const npy_intp count = PyArray_DIM(ids, 0), noffsets = PyArray_DIM(offsets, 0);
    const int64_t bad = mq_embedding_bad_offset(PyArray_DATA(offsets), noffsets, count);
    if (bad >= 0) {
        PyErr_Format(PyExc_RuntimeError, "offsets[%lld] = %lld is not a bag start: offsets begin at 0, never decrease "
                     "and stay within the %lld ids", (long long)bad,
                     (long long)((const int64_t *)PyArray_DATA(offsets))[bad], (long long)count);
        goto done;
    }
    if (include_last && (noffsets == 0 || ((const int64_t *)PyArray_DATA(offsets))[noffsets - 1] != count)) {
        /* torch's rule (its modes read such a short last offset three ways: sum stops there, mean divides
         * by the ids to the end, max reads them): refused, so every format and device agrees */
        PyErr_Format(PyExc_RuntimeError, "include_last_offset: the last offset must be the number of ids (%lld), got %s",
                     (long long)count, noffsets ? "another" : "no offsets");
        goto done;
    }
    if (psw_obj != Py_None) {
        if (mode != MQ_EMB_BAG_SUM) {
            PyErr_SetString(PyExc_ValueError, "per_sample_weights are for mode 0 (sum) only");
            goto done;
        }
        if (!(psw = mq_array_in(&refs, psw_obj, "per_sample_weights", f32, 1, 1, "float32"))) goto done;
        if (PyArray_DIM(psw, 0) != count) {
            PyErr_Format(PyExc_ValueError, "per_sample_weights has %zd entries, ids %zd", (Py_ssize_t)PyArray_DIM(psw, 0),
                         (Py_ssize_t)count);
            goto done;
        }
    }
    npy_intp dims[2] = {include_last ? noffsets - 1 : noffsets, (npy_intp)t.dim};
    if (!(out = mq_array_new(&refs, 2, dims, NPY_FLOAT32, 0))) goto done;
    Py_BEGIN_ALLOW_THREADS
    mq_embedding_bag(&t, PyArray_DATA(ids), count, PyArray_DATA(offsets), noffsets, dims[0], mq_data_or_null(psw), mode,
                     padding_idx, PyArray_DATA(out), nthreads);
    Py_END_ALLOW_THREADS
    result = mq_return(out);
done:
    mq_release(&refs);
    return result;
}

PyMethodDef mq_embedding_methods[] = {
    MQ_KW_METHOD(embedding_rows),
    MQ_KW_METHOD(embedding_bag),
    {NULL, NULL, 0, NULL},
};
