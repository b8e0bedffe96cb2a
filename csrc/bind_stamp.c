/* bind_stamp.c - whether a layer's tensors and attributes are still the ones its cached
 * kernel arguments were built from (python/mono_quant/formats/layer_cache.py).
 *
 * Every eager call of every quantized layer asks this before it reuses what it built
 * for the last call; on an 8x8 CNN that question cost as much in Python (id, _version
 * and data_ptr of six tensors, ~1.2 us) as a whole fp32 conv's Python wrapper.  Here it
 * is one call.  Nothing is trusted that is not read again: each entry's object is looked
 * up afresh in the layer's namespace and compared by identity, a tensor's write counter
 * and data pointer are read from the tensor itself. */
#include "bind.h"

/* interned attribute names, made once by the first call (the GIL is held) */
static PyObject *version_name, *data_ptr_name;

static int intern_names(void) {
    if (version_name && data_ptr_name) return 1; /* both, or try again: a half-made pair must not pass */
    if (!version_name) version_name = PyUnicode_InternFromString("_version");
    if (!data_ptr_name) data_ptr_name = PyUnicode_InternFromString("data_ptr");
    return version_name && data_ptr_name;
}

/* t._version as stamps.tensor_version reads it: -1 for a tensor without a write counter
 * (made under torch.inference_mode, or given such a tensor's data with .data = ...): its
 * identity and data pointer are then all there is to compare.  -2 with an exception set. */
static long long tensor_version(PyObject *t) {
    PyObject *v = PyObject_GetAttr(t, version_name);
    if (!v) {
        if (!PyErr_ExceptionMatches(PyExc_RuntimeError)) return -2;
        PyErr_Clear();
        return -1;
    }
    long long version = PyLong_AsLongLong(v);
    Py_DECREF(v);
    return version == -1 && PyErr_Occurred() ? -2 : version;
}

/* 1: ``entry`` still holds, 0: it changed, -1: an exception is set. */
static int entry_holds(PyObject *ns, PyObject *entry) {
    if (!PyTuple_Check(entry) || PyTuple_GET_SIZE(entry) != 5) {
        PyErr_SetString(PyExc_TypeError, "tensors_unchanged: each stamp entry is a tuple (where, name, value, "
                                         "version, data_ptr)");
        return -1;
    }
    PyObject *where = PyTuple_GET_ITEM(entry, 0), *name = PyTuple_GET_ITEM(entry, 1);
    PyObject *expected = PyTuple_GET_ITEM(entry, 2), *version = PyTuple_GET_ITEM(entry, 3);
    PyObject *data_ptr = PyTuple_GET_ITEM(entry, 4);
    if (version != Py_None && (!PyLong_Check(version) || !PyLong_Check(data_ptr))) {
        PyErr_SetString(PyExc_TypeError, "tensors_unchanged: a tensor entry's version and data_ptr are ints");
        return -1;
    }
    /* where: None (the namespace itself), a dict, or the name of a dict in the namespace */
    /* (a missing name, or a missing container, reads as None: as make_stamp records it) */
    PyObject *container = ns, *now = NULL;
    if (where != Py_None && PyDict_Check(where)) {
        container = where;
    } else if (where != Py_None) {
        container = PyDict_GetItemWithError(ns, where);
        if (!container && PyErr_Occurred()) return -1;
        if (container && !PyDict_Check(container)) container = NULL;
    }
    if (container) {
        now = PyDict_GetItemWithError(container, name);
        if (!now && PyErr_Occurred()) return -1;
    }
    if (!now) now = Py_None;
    if (now != expected) return 0;
    if (version == Py_None) return 1; /* identity only: None, or an attribute that is not a tensor */
    /* ``now`` is ``expected``, which the stamp holds: it outlives the calls below */
    long long v = tensor_version(now);
    if (v == -2) return -1;
    long long want = PyLong_AsLongLong(version);
    if (want == -1 && PyErr_Occurred()) return -1;
    if (v != want) return 0;
    PyObject *ptr = PyObject_CallMethodNoArgs(now, data_ptr_name);
    if (!ptr) return -1;
    int same = PyObject_RichCompareBool(ptr, data_ptr, Py_EQ);
    Py_DECREF(ptr);
    return same;
}

PyDoc_STRVAR(tensors_unchanged_doc,
             "tensors_unchanged(namespace, stamp) -> bool\n\n"
             "Whether every entry of ``stamp`` still holds in ``namespace`` (a module's __dict__).\n"
             "Each entry is a tuple (where, name, value, version, data_ptr): the object at\n"
             "``name`` of ``where`` (None: the namespace itself; a str: the dict of that name\n"
             "in the namespace; a dict: that dict; a missing name reads as None) must be\n"
             "``value`` (identity); for a tensor entry (version not None) its ``_version``\n"
             "(-1 where it has none: inference tensors) and ``data_ptr()`` must equal version\n"
             "and data_ptr.\n"
             "Raises TypeError for a malformed stamp.");

static PyObject *py_tensors_unchanged(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    if (nargs != 2 || !PyDict_Check(args[0]) || !PyTuple_Check(args[1])) {
        PyErr_SetString(PyExc_TypeError, "tensors_unchanged(namespace: dict, stamp: tuple)");
        return NULL;
    }
    if (!intern_names()) return NULL;
    Py_ssize_t count = PyTuple_GET_SIZE(args[1]);
    for (Py_ssize_t i = 0; i < count; i++) {
        int holds = entry_holds(args[0], PyTuple_GET_ITEM(args[1], i));
        if (holds < 0) return NULL;
        if (!holds) Py_RETURN_FALSE;
    }
    Py_RETURN_TRUE;
}

PyMethodDef mq_stamp_methods[] = {
    {"tensors_unchanged", (PyCFunction)(void (*)(void))py_tensors_unchanged, METH_FASTCALL, tensors_unchanged_doc},
    {NULL, NULL, 0, NULL},
};
