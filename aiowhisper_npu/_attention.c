/* Fused single-head attention for the CPU encoder (module aiowhisper_npu._attention).
 *
 * With BLAS, one head of attention for a tile of queries is three passes over a (queries x positions)
 * score matrix that does not fit in L2: the Q K^T GEMM writes it, exp rewrites it, the P [V, 1] GEMM reads
 * it. Here the queries are taken 48 at a time (three AVX-512 vectors) and both products run transposed,
 * so neither operand needs a transposed copy and the scores stay in L2:
 *
 *   1. S^T = K Q^T: 8 positions x 48 queries per register block, K read in place (rows), Q^T packed once per
 *      panel (hd x 48). The block is exponentiated before it is stored into P^T (positions x 48), and its
 *      column sums are accumulated: the softmax denominators.
 *   2. O^T = V^T P^T: 8 value dims x 48 queries per block, V read in place (columns), P^T as stored; the
 *      block is divided by the denominators and stored transposed into the output rows.
 *
 * No row-max shift: the caller guarantees |q_i . k_j| is small enough that exp cannot overflow or flush a
 * whole row (kernels.SHIFT_FREE_BOUND); the function returns False if any output is not finite, and the
 * caller then takes the shifted path.
 *
 *   available()                  True when compiled in and the CPU has AVX-512 (as _gemm.available()).
 *   scratch_floats(t, hd)        float32 scratch elements head() needs for t positions and head size hd.
 *   head(q, k, v, out, scratch) -> bool
 *                                out = softmax(q k^T) v. q, out: (n, hd); k, v: (t, hd); float32, unit inner
 *                                stride, any row stride (views into the Q/K/V tensor); hd a multiple of 8.
 *
 * Summation order is fixed by the shapes (positions in order, head dims in order), never by threads or
 * tile position: a query row gives the same bits in any tile. The GIL is released while it runs.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <string.h>

#include "_buffers.h"
#include "_simd.h"

#define QW 48 /* queries per panel: three vectors */
#define PR 8  /* rows per register block: positions (step 1) or value dims (step 2); 8 x 3 accumulators */

static Py_ssize_t scratch_size(Py_ssize_t t, Py_ssize_t hd) {
    return hd * QW + t * QW + PR * hd + PR * QW + QW; /* Q^T panel, P^T, padded K rows, transpose tile, sums */
}

#if HAVE_SIMD
/* One panel of w <= QW queries; see the header comment. Returns 0 if an output is not finite. */
AVX512 static int panel(const float *q, Py_ssize_t lq, Py_ssize_t w, const float *k, Py_ssize_t lk,
                        const float *v, Py_ssize_t lv, Py_ssize_t t, Py_ssize_t hd, float *out, Py_ssize_t lo,
                        float *scratch) {
    float *qt = scratch, *pt = qt + hd * QW, *kpad = pt + t * QW, *tile = kpad + PR * hd, *sums = tile + PR * QW;
    __mmask16 mask[4];
    tail_masks(w, mask);
    for (Py_ssize_t d = 0; d < hd; d++)
        for (Py_ssize_t c = 0; c < QW; c++) qt[d * QW + c] = c < w ? q[c * lq + d] : 0.0f;

    __m512 sum[3] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps()};
    __m512 acc[PR][4];
    for (Py_ssize_t j0 = 0; j0 < t; j0 += PR) {
        Py_ssize_t rows = t - j0 < PR ? t - j0 : PR;
        const float *kb = k + j0 * lk;
        Py_ssize_t ldk = lk;
        if (rows < PR) { /* the last positions: copy them into zero-padded rows rather than read past t */
            memset(kpad, 0, (size_t)(PR * hd) * sizeof(float));
            for (Py_ssize_t i = 0; i < rows; i++) memcpy(kpad + i * hd, kb + i * lk, (size_t)hd * sizeof(float));
            kb = kpad, ldk = hd;
        }
        accumulate(PR, 3, hd, kb, ldk, 1, qt, QW, acc);
        for (Py_ssize_t i = 0; i < rows; i++)
            for (int c = 0; c < 3; c++) {
                __m512 e = exp16(acc[i][c]);
                _mm512_storeu_ps(pt + (j0 + i) * QW + 16 * c, e);
                sum[c] = _mm512_add_ps(sum[c], e);
            }
    }
    for (int c = 0; c < 3; c++) _mm512_storeu_ps(sums + 16 * c, _mm512_div_ps(_mm512_set1_ps(1.0f), sum[c]));

    __m512 bad = _mm512_setzero_ps();
    for (Py_ssize_t e0 = 0; e0 < hd; e0 += PR) {
        accumulate(PR, 3, t, v + e0, 1, lv, pt, QW, acc);
        for (int i = 0; i < PR; i++)
            for (int c = 0; c < 3; c++) {
                __m512 o = _mm512_mul_ps(acc[i][c], _mm512_loadu_ps(sums + 16 * c));
                bad = _mm512_add_ps(bad, _mm512_maskz_mul_ps(mask[c], o, _mm512_setzero_ps())); /* NaN if o is */
                _mm512_storeu_ps(tile + i * QW + 16 * c, o);
            }
        for (Py_ssize_t c = 0; c < w; c++)
            for (int i = 0; i < PR; i++) out[c * lo + e0 + i] = tile[i * QW + c];
    }
    return _mm512_cmp_ps_mask(bad, bad, _CMP_UNORD_Q) == 0;
}
#endif

static int kernel_available(void) {
#if HAVE_SIMD
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") &&
           __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512bw");
#else
    return 0;
#endif
}

/* ---- Python API ------------------------------------------------------------------------------------ */
static PyObject *available(PyObject *self, PyObject *noargs) {
    (void)self, (void)noargs;
    return PyBool_FromLong(kernel_available());
}

static PyObject *scratch_floats(PyObject *self, PyObject *args) {
    (void)self;
    Py_ssize_t t, hd;
    if (!PyArg_ParseTuple(args, "nn:scratch_floats", &t, &hd)) return NULL;
    return PyLong_FromSsize_t(scratch_size(t, hd));
}

static PyObject *head(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *qo, *ko, *vo, *oo, *so;
    if (!PyArg_ParseTuple(args, "OOOOO:head", &qo, &ko, &vo, &oo, &so)) return NULL;
    if (!kernel_available()) {
        PyErr_SetString(PyExc_RuntimeError, "the fused attention needs an x86-64 CPU with AVX-512 (see available())");
        return NULL;
    }
    Py_buffer q, k, v, out, s;
    int finite = 1, ok = 0;
    if (get_rows_of(qo, &q, "q", 0) < 0) return NULL;
    if (get_rows_of(ko, &k, "k", 0) < 0) goto release_q;
    if (get_rows_of(vo, &v, "v", 0) < 0) goto release_k;
    if (get_rows(oo, &out, "out") < 0) goto release_v;
    Py_ssize_t n = q.shape[0], hd = q.shape[1], t = k.shape[0];
    if (hd < 8 || hd % 8 || k.shape[1] != hd || v.shape[1] != hd || v.shape[0] != t || t < 1 ||
        out.shape[0] != n || out.shape[1] != hd) {
        PyErr_Format(PyExc_ValueError, "shapes q (%zd, %zd), k (%zd, %zd), v (%zd, %zd), out (%zd, %zd) do not "
                     "fit: need q, out (n, hd); k, v (t, hd); t >= 1; hd a multiple of 8", n, hd, t, k.shape[1],
                     v.shape[0], v.shape[1], out.shape[0], out.shape[1]);
        goto release_out;
    }
    if (PyObject_GetBuffer(so, &s, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT | PyBUF_WRITABLE) < 0) goto release_out;
    if (!is_float32(&s) || s.len < (Py_ssize_t)(scratch_size(t, hd) * sizeof(float))) {
        PyErr_Format(is_float32(&s) ? PyExc_ValueError : PyExc_TypeError,
                     "scratch must be a writable C-contiguous float32 array of at least %zd elements",
                     scratch_size(t, hd));
        goto release_s;
    }
#if HAVE_SIMD
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t r = 0; r < n; r += QW) {
        Py_ssize_t w = n - r < QW ? n - r : QW;
        finite &= panel((const float *)q.buf + r * (q.strides[0] / 4), q.strides[0] / 4, w, (const float *)k.buf,
                        k.strides[0] / 4, (const float *)v.buf, v.strides[0] / 4, t, hd,
                        (float *)out.buf + r * (out.strides[0] / 4), out.strides[0] / 4, (float *)s.buf);
    }
    Py_END_ALLOW_THREADS
#endif
    ok = 1;
release_s:
    PyBuffer_Release(&s);
release_out:
    PyBuffer_Release(&out);
release_v:
    PyBuffer_Release(&v);
release_k:
    PyBuffer_Release(&k);
release_q:
    PyBuffer_Release(&q);
    if (!ok) return NULL;
    return PyBool_FromLong(finite);
}

static PyMethodDef methods[] = {
    {"available", available, METH_NOARGS, "available() -> bool: the AVX-512 kernel can run here."},
    {"scratch_floats", scratch_floats, METH_VARARGS,
     "scratch_floats(t, hd) -> int: float32 scratch elements head() needs."},
    {"head", head, METH_VARARGS,
     "head(q, k, v, out, scratch) -> bool: out = softmax(q k^T) v without a max shift; False if not finite."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_attention",
                                    "Fused single-head attention (see _attention.c).", -1, methods};

PyMODINIT_FUNC PyInit__attention(void) { return PyModule_Create(&module); }
