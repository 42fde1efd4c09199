/* Buffer-protocol argument checks shared by the C extensions (_fastmath.c, _gemm.c). Header-only: each
 * extension is one translation unit and includes it once. All checks raise TypeError for a wrong dtype and
 * ValueError for a wrong shape or layout, with the argument's name in the message. */
#ifndef AIOWHISPER_BUFFERS_H
#define AIOWHISPER_BUFFERS_H
#define PY_SSIZE_T_CLEAN
#include <Python.h>

static inline int is_float32(const Py_buffer *v) {
    const char *f = v->format ? v->format : "B";
    if (*f == '<' || *f == '=' || *f == '@') f++;
    return f[0] == 'f' && f[1] == '\0' && v->itemsize == 4;
}

/* A (writable) 2-D float32 buffer whose rows have unit stride and do not overlap. */
static inline int get_rows_of(PyObject *obj, Py_buffer *v, const char *name, int writable) {
    if (PyObject_GetBuffer(obj, v, PyBUF_STRIDES | PyBUF_FORMAT | (writable ? PyBUF_WRITABLE : 0)) < 0) {
        if (PyErr_ExceptionMatches(PyExc_BufferError)) {
            PyErr_Clear();
            PyErr_Format(PyExc_ValueError, writable ? "%s must be a writable float32 array"
                                                    : "%s must be a float32 array", name);
        }
        return -1;
    }
    const char *err = NULL;
    if (!is_float32(v)) err = "%s must be float32";
    else if (v->ndim != 2) err = "%s must be 2-D";
    else if (v->shape[1] > 1 && v->strides[1] != 4) err = "%s must have contiguous rows (inner stride 4)";
    else if (v->shape[0] > 1 && (v->strides[0] < 4 * v->shape[1] || v->strides[0] % 4))
        err = "%s rows must not overlap";
    if (err) {
        PyErr_Format(is_float32(v) ? PyExc_ValueError : PyExc_TypeError, err, name);
        PyBuffer_Release(v);
        return -1;
    }
    return 0;
}

static inline int get_rows(PyObject *obj, Py_buffer *v, const char *name) { return get_rows_of(obj, v, name, 1); }

/* A 1-D C-contiguous float32 buffer of length n. */
static inline int get_vector(PyObject *obj, Py_buffer *v, const char *name, Py_ssize_t n) {
    if (PyObject_GetBuffer(obj, v, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT) < 0) return -1;
    if (!is_float32(v) || v->ndim != 1 || v->shape[0] != n) {
        PyErr_Format(is_float32(v) ? PyExc_ValueError : PyExc_TypeError,
                     "%s must be a 1-D float32 array of length %zd", name, n);
        PyBuffer_Release(v);
        return -1;
    }
    return 0;
}

/* A writable C-contiguous float32 buffer of at least n elements (scratch space a kernel may overwrite). */
static inline int get_scratch(PyObject *obj, Py_buffer *v, Py_ssize_t n) {
    if (PyObject_GetBuffer(obj, v, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT | PyBUF_WRITABLE) < 0) return -1;
    if (!is_float32(v) || v->len < n * (Py_ssize_t)sizeof(float)) {
        PyErr_Format(is_float32(v) ? PyExc_ValueError : PyExc_TypeError,
                     "scratch must be a writable C-contiguous float32 array of at least %zd elements", n);
        PyBuffer_Release(v);
        return -1;
    }
    return 0;
}

#endif
