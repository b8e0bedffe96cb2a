/* module.c - mono_quant._C: module init, the method tables of the binding
 * files (bind_*.c) put together, and the module's constants.
 *
 * Only the binding files include Python.h (through bind.h); kernels never do. */
#define MQ_BIND_IMPORTS_NUMPY /* this file fills NumPy's API table (import_array) */
#include "bind.h"

#include <strings.h> /* strcasecmp */

/* Every binding file's methods, one table per concern. */
static PyMethodDef *const method_tables[] = {
    mq_quant_methods, mq_pack_methods, mq_linear_methods, mq_int4_methods, mq_observer_methods, mq_runtime_methods,
    mq_static_methods, mq_static_program_methods, mq_fp16_methods, mq_u8_methods, mq_embedding_methods,
    mq_stamp_methods, mq_dynamic_conv_methods, mq_dconv_methods,
};

/* _C.LAYOUT: the stored layouts' constants (layout.h), for the Python side to read
 * instead of writing them again. */
static int add_layout(PyObject *m) {
    PyObject *layout = Py_BuildValue("{s:i,s:i,s:i,s:i,s:i,s:i,s:i}", "packed_layout_version",
                                     MQ_PACKED_LAYOUT_VERSION, "int8_panel_rows", MQ_PANEL, "int8_k_group", MQ_KGROUP,
                                     "int4_block", MQ_Q4_BLOCK, "int4_block_bytes", MQ_Q4_BLOCK_BYTES,
                                     "int4_int8_chunk", MQ_Q4_I8_CHUNK, "int4_int8_max_group", MQ_Q4_I8_MAX_GROUP);
    if (!layout) return -1;
    if (PyModule_AddObject(m, "LAYOUT", layout) < 0) { /* steals the reference only on success */
        Py_DECREF(layout);
        return -1;
    }
    return 0;
}

/* MONO_QUANT_ISA=scalar|avx2|avx512 (any case) caps the kernels (debugging, CI on other CPUs).  An
 * unknown or unsupported value is left as ISA_FROM_ENV_IGNORED, which kernels/settings.py warns
 * about at the user's import line (a warning here was attributed to importlib's frames); None
 * otherwise.  -1 on an error. */
static int isa_from_environment(PyObject *m) {
    const char *forced = getenv("MONO_QUANT_ISA");
    if (forced && *forced) {
        for (int i = 0; i < MQ_ISA_COUNT; i++)
            if (!strcasecmp(forced, mq_isa_names[i]) && mq_set_isa((mq_isa_t)i) == 0)
                return PyModule_AddObjectRef(m, "ISA_FROM_ENV_IGNORED", Py_None);
        PyObject *value = PyUnicode_DecodeFSDefault(forced);
        if (!value) return -1;
        const int rc = PyModule_AddObjectRef(m, "ISA_FROM_ENV_IGNORED", value);
        Py_DECREF(value);
        return rc;
    }
    return PyModule_AddObjectRef(m, "ISA_FROM_ENV_IGNORED", Py_None);
}

static int module_exec(PyObject *m) {
    if (_import_array() < 0) return -1;
    /* the kernel tables are built once, here, with the GIL held: later calls
     * from threads running without the GIL only read them */
    mq_active();
    if (isa_from_environment(m) < 0) return -1;
    mq_parallel_watch_forks();
    for (size_t i = 0; i < sizeof method_tables / sizeof method_tables[0]; i++)
        if (PyModule_AddFunctions(m, method_tables[i]) < 0) return -1;
    if (add_layout(m) < 0) return -1;
    return PyModule_AddStringConstant(m, "ISA_LEVELS", "scalar,avx2,avx512");
}

static PyModuleDef_Slot module_slots[] = {
    {Py_mod_exec, module_exec},
    {0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT,
    .m_name = "mono_quant._C",
    .m_doc = "mono-quant's C kernels (quantization, packing, quantized matmul).",
    .m_size = 0,
    .m_methods = NULL, /* added by module_exec, one binding file's table at a time */
    .m_slots = module_slots,
};

PyMODINIT_FUNC PyInit__C(void) { return PyModuleDef_Init(&module_def); }
