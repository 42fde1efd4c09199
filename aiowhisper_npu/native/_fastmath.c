/* Fused, in-place float32 element-wise kernels for the CPU encoder (module aiowhisper_npu.native._fastmath).
 *
 * numpy evaluates exp(s - max) or an erf-based GELU as a chain of full passes over memory (about 25 for the
 * GELU's rational approximation). These loops do the same arithmetic in one pass each, vectorised: every
 * hot function is compiled for AVX-512, AVX2 and baseline x86-64 (GCC target_clones) and the best one is
 * picked at load time. The GIL is released while they run, so kernel lanes run them concurrently.
 *
 *   exp_rows(s, shift)   s: 2-D float32, unit inner stride.  row = exp(row - max(row)) if shift else exp(row)
 *   bias_gelu(x, b)      x: 2-D float32, unit inner stride; b: 1-D float32 of x's width.  x = gelu(x + b)
 *   add_norm(x, b, r, out, eps)   x += b (if not None), x += r (if not None), then, if out is not None,
 *                        out = (x - mean) / sqrt(var + eps) per row (layer norm without its affine part).
 *
 * exp is Cephes' expf (Cody-Waite reduction, degree-5 polynomial; ~1 ulp), with IEEE results outside the
 * normal range: +inf above ln(FLT_MAX) = 88.7228, 0 below ln(FLT_MIN) (no subnormals), NaN for NaN. The GELU is
 * x * (0.5 + 0.5 erf(x / sqrt 2)) with the float32 rational erf of kernels.gelu_ (Eigen/XLA coefficients).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "_buffers.h"
#include "_poly.h"

#if defined(__GNUC__) && !defined(__clang__) && (defined(__x86_64__) || defined(__i386__))
#define MULTIVERSION __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define MULTIVERSION
#endif
#define INLINE static inline __attribute__((always_inline))

/* ---- exp ------------------------------------------------------------------------------------------- */
#define EXP_HI 88.7228391f         /* ln(FLT_MAX): above it the result overflows to +inf */
#define EXP_LO -87.3365447505531f  /* ln(FLT_MIN): below it the result would be subnormal; flushed to 0 */

INLINE float pow2i(int32_t k) { /* 2^k for k in [-126, 127] */
    int32_t bits = (k + 127) << 23;
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

INLINE float exp_f32(float x) {
    float c = x > EXP_HI ? EXP_HI : x;     /* NaN compares false and passes through untouched */
    c = c < EXP_LO ? EXP_LO : c;
    /* round(c / ln 2) to an integer in [-126, 128]: adding 1.5 * 2^23 leaves no fraction bits */
    float n = (c * EXP_LOG2E + 12582912.0f) - 12582912.0f;
    float r = c - n * EXP_LN2_HI;                      /* Cody-Waite: ln 2 = C1 + C2, C1 exact */
    r = r - n * EXP_LN2_LO;
    float z = r * r;
    float p = EXP_P0;
    p = p * r + EXP_P1;
    p = p * r + EXP_P2;
    p = p * r + EXP_P3;
    p = p * r + EXP_P4;
    p = p * r + EXP_P5;
    p = p * z + r + 1.0f;                              /* e^r, |r| <= ln(2) / 2 */
    int32_t k = (int32_t)n, h = k >> 1;               /* 2^n as two normal factors: n may be 128 */
    float y = p * pow2i(h) * pow2i(k - h);
    y = x > EXP_HI ? INFINITY : y;
    y = x < EXP_LO ? 0.0f : y;
    return x != x ? x : y;
}

MULTIVERSION static float row_max(const float *x, Py_ssize_t n) {
    float m = -INFINITY;
#pragma omp simd reduction(max : m)
    for (Py_ssize_t i = 0; i < n; i++) m = x[i] > m ? x[i] : m;
    return m;
}

MULTIVERSION static void exp_shifted(float *x, Py_ssize_t n, float shift) {
#pragma omp simd
    for (Py_ssize_t i = 0; i < n; i++) x[i] = exp_f32(x[i] - shift);
}

/* ---- GELU with the rational erf of kernels.gelu_ ----------------------------------------------------- */
MULTIVERSION static void bias_gelu_row(float *x, const float *b, Py_ssize_t n) {
#pragma omp simd
    for (Py_ssize_t i = 0; i < n; i++) {
        float y = x[i] + b[i];
        float t = y * GELU_SQRT1_2;
        t = t > 4.0f ? 4.0f : t;
        t = t < -4.0f ? -4.0f : t;
        float u = t * t;
        float p = ERF_A0 * u + ERF_A1;
        p = p * u + ERF_A2;
        p = p * u + ERF_A3;
        p = p * u + ERF_A4;
        p = p * u + ERF_A5;
        p = p * u + ERF_A6;
        float q = ERF_B0 * u + ERF_B1;
        q = q * u + ERF_B2;
        q = q * u + ERF_B3;
        q = q * u + ERF_B4;
        x[i] = y * (p * t / q + 0.5f);
    }
}

/* ---- residual adds and layer norm ------------------------------------------------------------------ */
MULTIVERSION static void add_row(float *x, const float *a, Py_ssize_t n) {
#pragma omp simd
    for (Py_ssize_t i = 0; i < n; i++) x[i] += a[i];
}

MULTIVERSION static void norm_row(const float *x, float *out, Py_ssize_t n, float eps) {
    float sum = 0.0f, sq = 0.0f;
#pragma omp simd reduction(+ : sum)
    for (Py_ssize_t i = 0; i < n; i++) sum += x[i];
    float mean = sum / (float)n;
#pragma omp simd reduction(+ : sq)
    for (Py_ssize_t i = 0; i < n; i++) {
        float d = x[i] - mean;
        sq += d * d;
    }
    float inv = 1.0f / sqrtf(sq / (float)n + eps);
#pragma omp simd
    for (Py_ssize_t i = 0; i < n; i++) out[i] = (x[i] - mean) * inv;
}

static PyObject *exp_rows(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *obj;
    int shift;
    if (!PyArg_ParseTuple(args, "Op:exp_rows", &obj, &shift)) return NULL;
    Py_buffer v;
    if (get_rows(obj, &v, "s") < 0) return NULL;
    Py_ssize_t rows = v.shape[0], cols = v.shape[1], stride = v.strides[0] / 4;
    float *base = (float *)v.buf;
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t r = 0; r < rows; r++) {
        float *row = base + r * stride;
        exp_shifted(row, cols, shift && cols ? row_max(row, cols) : 0.0f);
    }
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&v);
    Py_RETURN_NONE;
}

static PyObject *bias_gelu(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *xo, *bo;
    if (!PyArg_ParseTuple(args, "OO:bias_gelu", &xo, &bo)) return NULL;
    Py_buffer v, b;
    if (get_rows(xo, &v, "x") < 0) return NULL;
    if (get_vector(bo, &b, "b", v.shape[1]) < 0) {
        PyBuffer_Release(&v);
        return NULL;
    }
    Py_ssize_t rows = v.shape[0], cols = v.shape[1], stride = v.strides[0] / 4;
    float *base = (float *)v.buf;
    const float *bias = (const float *)b.buf;
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t r = 0; r < rows; r++) bias_gelu_row(base + r * stride, bias, cols);
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&b);
    PyBuffer_Release(&v);
    Py_RETURN_NONE;
}

/* An optional operand (None allowed) of x's shape: 1-D of x's width ("b") or 2-D with x's shape. */
static int get_operand(PyObject *obj, Py_buffer *v, const char *name, const Py_buffer *x, int ndim, int writable) {
    if (obj == Py_None) return 0;
    if (ndim == 1) return get_vector(obj, v, name, x->shape[1]) < 0 ? -1 : 1;
    if (writable ? get_rows(obj, v, name) < 0
                 : PyObject_GetBuffer(obj, v, PyBUF_STRIDES | PyBUF_FORMAT) < 0)
        return -1;
    if (!is_float32(v) || v->ndim != 2 || v->shape[0] != x->shape[0] || v->shape[1] != x->shape[1] ||
        (v->shape[1] > 1 && v->strides[1] != 4) || v->strides[0] % 4) {
        PyErr_Format(is_float32(v) ? PyExc_ValueError : PyExc_TypeError,
                     "%s must be a float32 array of shape (%zd, %zd) with contiguous rows", name, x->shape[0],
                     x->shape[1]);
        PyBuffer_Release(v);
        return -1;
    }
    return 1;
}

static PyObject *add_norm(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *xo, *bo, *ro, *oo;
    float eps;
    if (!PyArg_ParseTuple(args, "OOOOf:add_norm", &xo, &bo, &ro, &oo, &eps)) return NULL;
    Py_buffer x, b, r, out;
    if (get_rows_of(xo, &x, "x", bo != Py_None || ro != Py_None) < 0) return NULL;  /* read-only if only normed */
    int hb = get_operand(bo, &b, "b", &x, 1, 0);
    int hr = hb < 0 ? -1 : get_operand(ro, &r, "r", &x, 2, 0);
    int ho = hr < 0 ? -1 : get_operand(oo, &out, "out", &x, 2, 1);
    if (ho < 0) {
        if (hr > 0) PyBuffer_Release(&r);
        if (hb > 0) PyBuffer_Release(&b);
        PyBuffer_Release(&x);
        return NULL;
    }
    Py_ssize_t rows = x.shape[0], cols = x.shape[1];
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t i = 0; i < rows; i++) {
        float *row = (float *)((char *)x.buf + i * x.strides[0]);
        if (hb) add_row(row, (const float *)b.buf, cols);
        if (hr) add_row(row, (const float *)((const char *)r.buf + i * r.strides[0]), cols);
        if (ho && cols) norm_row(row, (float *)((char *)out.buf + i * out.strides[0]), cols, eps);
    }
    Py_END_ALLOW_THREADS
    if (ho) PyBuffer_Release(&out);
    if (hr) PyBuffer_Release(&r);
    if (hb) PyBuffer_Release(&b);
    PyBuffer_Release(&x);
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"exp_rows", exp_rows, METH_VARARGS,
     "exp_rows(s, shift) -> None: in place, each row = exp(row - max(row)) if shift else exp(row)."},
    {"bias_gelu", bias_gelu, METH_VARARGS,
     "bias_gelu(x, b) -> None: in place, x = gelu(x + b) with the exact-erf GELU of kernels.gelu_."},
    {"add_norm", add_norm, METH_VARARGS,
     "add_norm(x, b, r, out, eps) -> None: x += b; x += r (each if not None); out = layer_norm(x) if out."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_fastmath",
                                    "Fused float32 element-wise kernels (see _fastmath.c).", -1, methods};

PyMODINIT_FUNC PyInit__fastmath(void) { return PyModule_Create(&module); }
