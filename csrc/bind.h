/* bind.h - what the binding files (bind_*.c, module.c) share: Python.h and
 * NumPy, the argument checks, and one cleanup pattern.
 *
 * Only the binding files include this (kernels never see Python).  Every
 * entry point validates its arguments (type, dtype, rank, lengths, ranges) and
 * raises a Python exception naming what was wrong; kernels then run on
 * contiguous buffers with the GIL released.  Weights cross as 2-D NumPy arrays
 * of rows: float32, float16, or int16/uint16 holding bf16 bits.
 *
 * Cleanup: an entry point registers every new reference it owns in one
 * mq_refs (mq_hold, or the helpers below that take one) and releases them all
 * at its single exit label: no per-function list of Py_XDECREFs to keep in
 * step with the declarations. */
#ifndef MQ_BIND_H
#define MQ_BIND_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#define NPY_NO_DEPRECATED_API NPY_1_7_API_VERSION
/* one NumPy API table for the whole extension, filled by module.c's import_array */
#define PY_ARRAY_UNIQUE_SYMBOL mq_numpy_api
#ifndef MQ_BIND_IMPORTS_NUMPY
#define NO_IMPORT_ARRAY
#endif
#include <numpy/arrayobject.h>

#include "mq.h"

/* ---- Python 3.9 (pyproject's requires-python): the two 3.10 API calls the bindings use */
#if PY_VERSION_HEX < 0x030A0000
static inline PyObject *Py_NewRef(PyObject *obj) {
    Py_INCREF(obj);
    return obj;
}
static inline int PyModule_AddObjectRef(PyObject *module, const char *name, PyObject *value) {
    Py_XINCREF(value); /* PyModule_AddObject steals a reference on success only */
    if (PyModule_AddObject(module, name, value) < 0) {
        Py_XDECREF(value);
        return -1;
    }
    return 0;
}
#endif

/* ---- method tables: each binding file exports one, module.c concatenates them */
extern PyMethodDef mq_quant_methods[];    /* bind_quant.c: per-row int8 quantization */
extern PyMethodDef mq_pack_methods[];     /* bind_pack.c: the packed int8 layout */
extern PyMethodDef mq_linear_methods[];   /* bind_linear.c: int8 linear and conv */
extern PyMethodDef mq_int4_methods[];     /* bind_int4.c */
extern PyMethodDef mq_fp16_methods[];     /* bind_fp16.c: fp16 / bf16 weight linear */
extern PyMethodDef mq_u8_methods[];       /* bind_u8.c: uint8 weight-only linear */
extern PyMethodDef mq_embedding_methods[]; /* bind_embedding.c: 8-bit embedding tables */
extern PyMethodDef mq_dconv_methods[];    /* bind_dconv.c: the direct conv on kept panels (weight-only int8) */
extern PyMethodDef mq_observer_methods[]; /* bind_observers.c: calibration statistics */
extern PyMethodDef mq_runtime_methods[];  /* bind_runtime.c: ISA level, threads, tuning knobs */
extern PyMethodDef mq_static_methods[];   /* bind_static.c: static int8 (calibrated activations) */
extern PyMethodDef mq_static_program_methods[]; /* bind_static_program.c: a whole static int8 model */
extern PyMethodDef mq_stamp_methods[];   /* bind_stamp.c: whether a layer's cached kernel arguments still hold */
extern PyMethodDef mq_dynamic_conv_methods[]; /* bind_dynamic_conv.c: the dynamic conv's route switch, profile */

/* A keyword entry point py_<name> with its docstring <name>_doc. */
#define MQ_KW_METHOD(name) \
    {#name, (PyCFunction)(void (*)(void))py_##name, METH_VARARGS | METH_KEYWORDS, name##_doc}

/* The largest kernel size, stride, padding, dilation or constant dimension a binding
 * accepts: products in the kernels' size arithmetic (kernel * dilation, channels *
 * kernel area, ...) then stay far inside int64. */
#define MQ_MAX_CONV_ARG (1L << 20)

/* ---- one cleanup pattern ------------------------------------------------------ */
#define MQ_REFS_MAX 12
typedef struct {
    PyObject *obj[MQ_REFS_MAX];
    int count;
} mq_refs;

/* Registers obj (a new reference, or NULL from a failed call) to be released
 * by mq_release; returns it, so a call can be wrapped: a = mq_hold(&refs, f()). */
void *mq_hold(mq_refs *refs, void *obj);
void mq_release(mq_refs *refs);
/* A new reference to a held object: the entry point's return value. */
static inline PyObject *mq_return(void *obj) {
    Py_INCREF((PyObject *)obj);
    return (PyObject *)obj;
}
/* For Py_BuildValue's "O": the array, or None when it was not asked for. */
static inline PyObject *mq_or_none(PyArrayObject *a) { return a ? (PyObject *)a : Py_None; }
static inline void *mq_data_or_null(PyArrayObject *a) { return a ? PyArray_DATA(a) : NULL; }
/* Whether the byte ranges [a, a + na) and [b, b + nb) share a byte (an empty range shares none):
 * the test every out= is put to against the inputs its kernel reads while it writes. */
static inline int mq_bytes_overlap(const void *a, size_t na, const void *b, size_t nb) {
    const char *pa = a, *pb = b;
    return na > 0 && nb > 0 && pa < pb + nb && pb < pa + na;
}

/* ---- arrays ------------------------------------------------------------------- */
/* A C-contiguous, aligned view (or copy) of obj, which must be an ndarray of
 * one of the accepted type numbers, native byte order, and the given rank. */
PyArrayObject *mq_array_in(mq_refs *refs, PyObject *obj, const char *what, const int *types, int ntypes, int ndim,
                           const char *expected);
/* A new array of the given shape and type, zero-filled when zeroed. */
PyArrayObject *mq_array_new(mq_refs *refs, int ndim, const npy_intp *dims, int type, int zeroed);
/* A caller's out= for a kernel's float32 [rows, cols] result (held in refs): float32, that shape,
 * C-contiguous, aligned, native order, writeable, and overlapping none of the nsources arrays the
 * kernel reads while it writes out; else ValueError naming fname. */
PyArrayObject *mq_float_out(mq_refs *refs, PyObject *out_obj, const char *fname, npy_intp rows, npy_intp cols,
                            PyArrayObject *const *sources, int nsources);

/* Weights and activations: float32, float16, or int16/uint16 holding bf16 bits. */
extern const int mq_src_types[4];
extern const char *const mq_src_expected;
mq_src_t mq_src_kind(PyArrayObject *a);

/* ---- argument checks: 1 when fine, else 0 with an exception set ------------------ */
int mq_check_threads(int nthreads);
int mq_check_qrange(int qmin, int qmax);                       /* int8 or uint8 */
int mq_check_symmetric_qrange(int qmin, int qmax, int symmetric); /* a symmetric signed range past 0 */
int mq_check_int8_range(int qmin, int qmax, const char *fname); /* signed int8 only */
/* scale (float32) and zero_point (int32) of length 1 (per tensor) or rows. */
int mq_qparam_arrays(mq_refs *refs, PyObject *scale_obj, PyObject *zp_obj, npy_intp rows, PyArrayObject **scale,
                     PyArrayObject **zp, int *per_row);
/* An optional float32 bias of n entries (None: *bias = NULL), held in refs; else ValueError "bias
 * has .. entries, the weight n <unit>" ("rows", "output channels"). */
int mq_bias_in(mq_refs *refs, PyObject *b_obj, npy_intp n, const char *unit, PyArrayObject **bias);
/* A size from the mq_size_* helpers (size_check.h): -1 is OverflowError. */
int mq_size_fits(int64_t size, const char *fname, const char *what);
/* The packed int8 weight of an [n, k] weight in `groups` blocks: a 1-D int8
 * array of exactly `size` bytes (mq_packed_int8_bytes), else ValueError. */
PyArrayObject *mq_packed_int8_in(mq_refs *refs, PyObject *obj, npy_intp n, npy_intp k, npy_intp size);

/* An int4 group size: a positive multiple of MQ_Q4_BLOCK (else ValueError). */
int mq_q4_check_group(long long group);
/* The three int4 weight arrays, checked against each other and held in refs: packed uint8
 * [rows, kpad/2], scale fp16 bits [rows, ceil(kpad/group)], zero uint8 (same shape); cols must
 * round up to kpad (whole blocks). */
int mq_q4_weight_arrays(mq_refs *refs, PyObject *p_obj, PyObject *s_obj, PyObject *z_obj, long long cols,
                        long long group, PyArrayObject **packed, PyArrayObject **scale, PyArrayObject **zero);

/* A conv argument (kernel, stride, padding, dilation): a pair of ints in lo..MQ_MAX_CONV_ARG. */
int mq_conv_pair(PyObject *obj, const char *what, long lo, npy_intp out[2]);

/* The first row holding NaN/Inf, or -1, as a Python int. */
static inline PyObject *mq_bad_row(int64_t bad) { return PyLong_FromLongLong((long long)bad); }

/* ---- bind_runtime.c: "scalar", "avx2", "avx512" by mq_isa_t ----------------------- */
extern const char *const mq_isa_names[MQ_ISA_COUNT];

#endif /* MQ_BIND_H */
