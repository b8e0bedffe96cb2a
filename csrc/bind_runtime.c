/* bind_runtime.c - process-wide runtime settings: the kernel level (ISA), the
 * threading backend, tuning knobs for benchmarks and kernel switches for tests
 * (dispatch.c, parallel.c, linear.c). */
#include <string.h>

#include "bind.h"
#include "conv_split.h"

const char *const mq_isa_names[MQ_ISA_COUNT] = {"scalar", "avx2", "avx512"};

/* The name argument of a METH_O setter, or NULL with TypeError (naming what it takes) or, for a
 * str holding a NUL, ValueError. */
static const char *str_arg(PyObject *arg, const char *type_error) {
    Py_ssize_t size = 0;
    const char *name = PyUnicode_Check(arg) ? PyUnicode_AsUTF8AndSize(arg, &size) : NULL;
    if (!name && !PyErr_Occurred()) PyErr_SetString(PyExc_TypeError, type_error);
    if (name && (size_t)size != strlen(name)) { /* "avx2\0junk" would read as "avx2" */
        PyErr_SetString(PyExc_ValueError, "embedded null character in the name");
        return NULL;
    }
    return name;
}

PyDoc_STRVAR(set_threading_backend_doc,
             "set_threading_backend(name) -> previous\n\n"
             "How the kernels use threads: \"omp-team\" (default: the pool, with jobs of\n"
             "15 us or more on torch's OpenMP team where torch loaded libgomp), \"pool\"\n"
             "(persistent helpers that the caller never waits for to start; safe across\n"
             "fork) or \"pthreads\" (detached threads started per call, taking pieces as the\n"
             "caller does).  Raises ValueError for any other name.");

static PyObject *py_set_threading_backend(PyObject *self, PyObject *arg) {
    (void)self;
    const char *name = str_arg(arg, "set_threading_backend() takes a str");
    if (!name) return NULL;
    const char *previous = mq_threading_backend();
    if (mq_set_threading_backend(name) != 0) {
        PyErr_Format(PyExc_ValueError, "unknown threading backend %R: use \"pool\", \"pthreads\" or \"omp-team\"", arg);
        return NULL;
    }
    return PyUnicode_FromString(previous);
}

PyDoc_STRVAR(set_gemv_max_rows_doc,
             "set_gemv_max_rows(rows) -> previous\n\n"
             "Tuning: up to this many rows (0..8) the dynamic int8 kernels use the one-panel\n"
             "GEMV tile, above it the 8-row x 3-panel tile; -1 (default) chooses by thread\n"
             "count.  For benchmarks.");

static PyObject *py_set_gemv_max_rows(PyObject *self, PyObject *arg) {
    (void)self;
    long rows = PyLong_AsLong(arg);
    if (rows == -1 && PyErr_Occurred()) return NULL;
    if (rows < -1 || rows > 8) {
        PyErr_Format(PyExc_ValueError, "rows must be in -1..8, got %ld", rows);
        return NULL;
    }
    long previous = (long)mq_gemv_max_rows;
    mq_gemv_max_rows = rows;
    return PyLong_FromLong(previous);
}

PyDoc_STRVAR(linear_kernels_doc, "linear_kernels() -> dict: the matmul kernels the active ISA level uses (int8 dynamic,\n"
                                  "its split kernel on many rows, reduce_range, weight-only, int4 x int8, fp16 / bf16\n"
                                  "many-row) and the threading.");

static PyObject *py_linear_kernels(PyObject *self, PyObject *unused) {
    (void)self;
    (void)unused;
    const mq_kernels *kt = mq_active();
    /* dynamic_reduce_range: the 7-bit kernel, or the dynamic one where it runs them (act_u7.c) */
    /* dynamic_split_rows: the split kernel on rows of 8-bit codes (act_split.c), where the level has one;
     * dynamic_conv_split: the direct conv's (conv_split.c), split_conv_images: the images it ran on;
     * dynamic_conv_unsigned: the direct convs' kernel on codes that are never negative (static_conv_ux:
     * dynamic images, static work items), unsigned_conv_images: the images / items it ran on;
     * unsigned_rows_calls: Linear calls of codes 0..127 on the 7-bit kernel (dynamic_reduce_range) */
    return Py_BuildValue("{s:s,s:s,s:s,s:s,s:s,s:s,s:i,s:s,s:L,s:L,s:L,s:s,s:L,s:s,s:L,s:L}", "dynamic", kt->qgemm_name, "dynamic_split_rows",
                         kt->qgemm_split ? kt->qgemm_split_name : "none", "dynamic_reduce_range",
                         kt->qgemm_u7 ? kt->qgemm_u7_name : kt->qgemm_name, "weight_only", kt->wgemm_name,
                         "int4_int8", kt->q4_gemv_i8_name, "half_many_rows",
                         kt->amxbf16_gemm ? "amx_bf16" : kt->h16_panels ? "panels" : "none",
                         "max_in_features", MQ_MAX_LINEAR_K, "threads", mq_threading_backend(),
                         "omp_team_calls", (long long)mq_omp_team_calls(), "split_calls",
                         (long long)mq_parallel_split_calls(), "split_rows_calls", (long long)mq_split_rows_calls(),
                         "dynamic_conv_split", kt->dconv_split ? "avx2_maddubs_split" : "none",
                         "split_conv_images", (long long)mq_split_conv_images(), "dynamic_conv_unsigned",
                         kt->static_conv_ux ? "avx2_maddubs_unsigned" : "none", "unsigned_conv_images",
                         (long long)mq_ux_conv_images(), "unsigned_rows_calls", (long long)mq_unsigned_rows_calls());
}

/* A tests-only kernel switch: switch(on) < 0 means this CPU or build cannot. */
static PyObject *kernel_switch(PyObject *arg, int (*switch_fn)(int), const char *cannot) {
    int on = PyObject_IsTrue(arg);
    if (on < 0) return NULL;
    if (switch_fn(on) < 0) {
        PyErr_SetString(PyExc_RuntimeError, cannot);
        return NULL;
    }
    Py_RETURN_NONE;
}

PyDoc_STRVAR(use_vnni256_for_tests_doc,
             "use_vnni256_for_tests(on) -> None\n\n"
             "Tests only: make the AVX2 level's dynamic int8 matmul the 256-bit VNNI kernel (the\n"
             "AVX-VNNI one) in its EVEX encoding, so it runs on AVX-512 VNNI CPUs; False restores.\n"
             "Raises RuntimeError when this CPU or build cannot.");

static PyObject *py_use_vnni256_for_tests(PyObject *self, PyObject *arg) {
    (void)self;
    return kernel_switch(arg, mq_use_vnni256_for_tests,
                         "the EVEX 256-bit VNNI kernel needs AVX-512 VNNI + VL (CPU and build)");
}

PyDoc_STRVAR(use_amx_doc,
             "use_amx(on) -> bool\n\n"
             "The AVX-512 level's dynamic int8 matmul on AMX tiles (True, the default where the CPU\n"
             "has AMX-INT8 and the OS granted the tile data) or on AVX-512 VNNI (False); None only\n"
             "asks.  The two give the same bits (but int4 calls of 1024+ rows, int8 activations on\n"
             "AMX, take torch's BLAS on float activations without it: kernels.row_rules.int4_takes_blas).\n"
             "Returns the previous state; RuntimeError when AMX\n"
             "was asked for where this CPU, OS or build can't, or MONO_QUANT_AMX=0 turned it off.");

static PyObject *py_use_amx(PyObject *self, PyObject *arg) {
    (void)self;
    int on = -1;
    if (arg != Py_None && (on = PyObject_IsTrue(arg)) < 0) return NULL;
    const int previous = mq_use_amx(on);
    if (previous < 0) {
        PyErr_SetString(PyExc_RuntimeError, "AMX is not available here (see cpu_info()['amx'] for why)");
        return NULL;
    }
    return PyBool_FromLong(previous);
}

PyDoc_STRVAR(team_backoff_for_tests_doc,
             "team_backoff_for_tests(on) -> None\n\n"
             "Tests only: False turns off the back-offs (after a call that waited on a descheduled\n"
             "thread: the pause of the omp-team and of the split of middling calls), so a test of\n"
             "which jobs reach the team or split does not depend on the host's load; True restores it.");

static PyObject *py_team_backoff_for_tests(PyObject *self, PyObject *arg) {
    (void)self;
    return kernel_switch(arg, mq_team_backoff_for_tests, "cannot switch the back-off");
}

PyDoc_STRVAR(team_min_work_for_tests_doc,
             "team_min_work_for_tests(ns) -> int\n\n"
             "Benchmarks and tests only: the least job (ns of one thread's work, as last seen) that the\n"
             "omp-team backend hands to torch's OpenMP team (default 15000); a negative ns reads it.\n"
             "Returns the previous value.");

static PyObject *py_team_min_work_for_tests(PyObject *self, PyObject *arg) {
    (void)self;
    const long long ns = PyLong_AsLongLong(arg);
    if (ns == -1 && PyErr_Occurred()) return NULL;
    return PyLong_FromLongLong((long long)mq_team_min_work_for_tests((int64_t)ns));
}

PyDoc_STRVAR(dconv_own_panels_for_tests_doc,
             "dconv_own_panels_for_tests(on) -> None\n\n"
             "Tests only: True makes every work item of a direct conv whose panels are filled per call\n"
             "fill a copy of its own, as a thread does that finds its block being filled by another\n"
             "(a race a test cannot time); False restores.");

static PyObject *py_dconv_own_panels_for_tests(PyObject *self, PyObject *arg) {
    (void)self;
    return kernel_switch(arg, mq_dconv_own_panels_for_tests, "cannot switch the direct conv's panels");
}

PyDoc_STRVAR(amx_split_for_tests_doc,
             "amx_split_for_tests(mode) -> None\n\n"
             "Tests only: how the AMX-BF16 matmul (fp16 / bf16 weights, int8 weight-only) splits a\n"
             "call: 0 by its rule (the default), 1 over panel pairs, 2 over row tiles; the same bits\n"
             "either way.  ValueError for another mode.");

static PyObject *py_amx_split_for_tests(PyObject *self, PyObject *arg) {
    (void)self;
    const long mode = PyLong_AsLong(arg);
    if (mode == -1 && PyErr_Occurred()) return NULL;
    if (mode < 0 || mode > 2 || mq_amx_split_for_tests((int)mode) < 0) {
        PyErr_SetString(PyExc_ValueError, "amx_split_for_tests takes 0 (the rule), 1 (panel pairs) or 2 (row tiles)");
        return NULL;
    }
    Py_RETURN_NONE;
}

PyDoc_STRVAR(use_maddubs_for_tests_doc,
             "use_maddubs_for_tests(on) -> None\n\n"
             "Tests and benchmarks: make the AVX2 level's dynamic int8 matmul the maddubs kernel\n"
             "(what an AVX2 CPU without AVX-VNNI runs) even where this CPU has AVX-VNNI; False\n"
             "restores. Raises RuntimeError when this CPU has no AVX2.");

static PyObject *py_use_maddubs_for_tests(PyObject *self, PyObject *arg) {
    (void)self;
    return kernel_switch(arg, mq_use_maddubs_for_tests, "the maddubs kernel needs AVX2");
}

PyDoc_STRVAR(cpu_info_doc, "cpu_info() -> dict of the CPU features mono-quant dispatches on, the ISA levels, "
                            "the vendor (cpuid's string, '' where there is none) and 'amx': whether the AVX-512 "
                            "level's int8 matmul may run on AMX tiles ('on') or why not ('off: ...').");

/* d[key] = value, stealing value (which may be NULL from a failed call); -1 on error. */
static int set_item_steal(PyObject *d, const char *key, PyObject *value) {
    int rc = value ? PyDict_SetItemString(d, key, value) : -1;
    Py_XDECREF(value);
    return rc;
}

static PyObject *py_cpu_info(PyObject *self, PyObject *unused) {
    static const char *features[] = {"avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512dq",
                                     "avx512_vnni", "avx512_bf16", "avx_vnni", "amx_int8", "amx_bf16"};
    (void)self;
    (void)unused;
    PyObject *d = PyDict_New();
    int err = !d;
    for (size_t i = 0; !err && i < sizeof(features) / sizeof(features[0]); i++)
        err = set_item_steal(d, features[i], PyBool_FromLong(mq_cpu_has(features[i]))) < 0;
    err = err || set_item_steal(d, "best_isa", PyUnicode_FromString(mq_isa_names[mq_cpu_best_isa()])) < 0 ||
          set_item_steal(d, "active_isa", PyUnicode_FromString(mq_isa_names[mq_active_isa()])) < 0 ||
          set_item_steal(d, "vendor", PyUnicode_DecodeLatin1(mq_cpu_vendor(), (Py_ssize_t)strlen(mq_cpu_vendor()), NULL)) < 0 ||
          set_item_steal(d, "amx", PyUnicode_FromString(mq_amx_status())) < 0;
    if (err) Py_CLEAR(d);
    return d;
}

PyDoc_STRVAR(set_isa_doc,
             "set_isa(name) -> previous name\n\n"
             "Force the kernel level: 'scalar', 'avx2' or 'avx512' (must be supported by this CPU).");

static PyObject *py_set_isa(PyObject *self, PyObject *arg) {
    (void)self;
    const char *name = str_arg(arg, "set_isa() takes a str: 'scalar', 'avx2' or 'avx512'");
    if (!name) return NULL;
    const char *previous = mq_isa_names[mq_active_isa()];
    for (int i = 0; i < MQ_ISA_COUNT; i++)
        if (!strcmp(name, mq_isa_names[i])) {
            if (mq_set_isa((mq_isa_t)i) < 0) {
                PyErr_Format(PyExc_ValueError, "this CPU does not support the '%s' kernels (best is '%s')", name,
                             mq_isa_names[mq_cpu_best_isa()]);
                return NULL;
            }
            return PyUnicode_FromString(previous);
        }
    PyErr_Format(PyExc_ValueError, "unknown ISA '%s': expected 'scalar', 'avx2' or 'avx512'", name);
    return NULL;
}

PyDoc_STRVAR(get_isa_doc, "get_isa() -> name of the kernel level in use.");

static PyObject *py_get_isa(PyObject *self, PyObject *unused) {
    (void)self;
    (void)unused;
    return PyUnicode_FromString(mq_isa_names[mq_active_isa()]);
}

PyMethodDef mq_runtime_methods[] = {
    {"linear_kernels", py_linear_kernels, METH_NOARGS, linear_kernels_doc},
    {"set_threading_backend", py_set_threading_backend, METH_O, set_threading_backend_doc},
    {"set_gemv_max_rows", py_set_gemv_max_rows, METH_O, set_gemv_max_rows_doc},
    {"use_vnni256_for_tests", py_use_vnni256_for_tests, METH_O, use_vnni256_for_tests_doc},
    {"use_maddubs_for_tests", py_use_maddubs_for_tests, METH_O, use_maddubs_for_tests_doc},
    {"use_amx", py_use_amx, METH_O, use_amx_doc},
    {"team_backoff_for_tests", py_team_backoff_for_tests, METH_O, team_backoff_for_tests_doc},
    {"team_min_work_for_tests", py_team_min_work_for_tests, METH_O, team_min_work_for_tests_doc},
    {"amx_split_for_tests", py_amx_split_for_tests, METH_O, amx_split_for_tests_doc},
    {"dconv_own_panels_for_tests", py_dconv_own_panels_for_tests, METH_O, dconv_own_panels_for_tests_doc},
    {"cpu_info", py_cpu_info, METH_NOARGS, cpu_info_doc},
    {"set_isa", py_set_isa, METH_O, set_isa_doc},
    {"get_isa", py_get_isa, METH_NOARGS, get_isa_doc},
    {NULL, NULL, 0, NULL},
};
