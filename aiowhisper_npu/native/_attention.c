/* Fused attention for the CPU encoder, one head at a time (module aiowhisper_npu.native._attention).
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
 * No row-max shift: a head runs here only when max_i |q_i| * max_j |k_j| <= bound (the Cauchy-Schwarz bound
 * on every score; kernels.SHIFT_FREE_BOUND = 60, so exp neither overflows nor flushes a whole row), which
 * the kernel checks itself. Heads that fail the check, or whose output is not finite, are left to the
 * caller's shifted path.
 *
 *   available()                  True when compiled in and the CPU has AVX-512 (as _gemm.available()).
 *   scratch_floats(t, hd)        float32 scratch elements heads() needs for t positions and head size hd.
 *   heads(q, k, v, out, n_heads, v_width, bound, scratch, round_p=False, kernel=0) -> list[int]
 *                                out[:, h] = softmax(q_h k_h^T) v_h for every head h that can run unshifted;
 *                                returns the heads it left to the caller. q, out: (n, n_heads * hd);
 *                                k: (t, n_heads * hd); v: (t, n_heads * v_width), head h's values in its
 *                                first hd columns (the encoder's Q/K/V tensor has a ones column after
 *                                each head's values); float32, unit inner stride, any row stride; hd a
 *                                multiple of 8. With round_p (precision="bf16", docs/precision.md) the
 *                                exponentiated scores are rounded to bf16 (nearest even) before they
 *                                enter the P V product and the denominators (sums of the rounded values),
 *                                and both products run on bf16 pairs (_attention_bf16.h; kernel 0 = the
 *                                best here, 1 = FMA, 2 = vdpbf16ps: the same bits); q, k, v must hold bf16
 *                                values already.
 *
 * Summation order is fixed by the shapes (positions in order, head dims in order), never by threads or
 * tile position: a query row gives the same bits in any tile. The GIL is released while it runs.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#include "_buffers.h"
#include "_simd.h"

#define QW 48 /* queries per panel: three vectors */
#define PR 8  /* rows per register block: positions (step 1) or value dims (step 2); 8 x 3 accumulators */

static Py_ssize_t fp32_scratch_size(Py_ssize_t t, Py_ssize_t hd) {
    return hd * QW + t * QW + PR * hd + PR * QW + QW; /* Q^T panel, P^T, padded K rows, transpose tile, 1/sums */
}

#if HAVE_SIMD
/* max over rows of the squared L2 norm (hd a multiple of 8: the last vector may be half used). */
AVX512 static float max_norm2(const float *x, Py_ssize_t ld, Py_ssize_t rows, Py_ssize_t hd) {
    float best = 0.0f;
    for (Py_ssize_t r = 0; r < rows; r++) {
        __m512 acc = _mm512_setzero_ps();
        for (Py_ssize_t d = 0; d < hd; d += 16) {
            __mmask16 m = hd - d >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (hd - d)) - 1);
            __m512 a = _mm512_maskz_loadu_ps(m, x + r * ld + d);
            acc = _mm512_fmadd_ps(a, a, acc);
        }
        float s = _mm512_reduce_add_ps(acc);
        best = s > best || s != s ? s : best; /* NaN wins: the bound check then fails */
    }
    return best;
}

/* x rounded to the nearest bf16 value, ties to even (finite x: exp's results are finite or +inf). */
AVX512 SIMD_INLINE __m512 round16_bf16(__m512 x) {
    __m512i u = _mm512_castps_si512(x);
    __m512i odd = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
    u = _mm512_add_epi32(u, _mm512_add_epi32(odd, _mm512_set1_epi32(0x7FFF)));
    return _mm512_castsi512_ps(_mm512_and_si512(u, _mm512_set1_epi32((int)0xFFFF0000u)));
}

#include "_attention_bf16.h"

static Py_ssize_t scratch_size(Py_ssize_t t, Py_ssize_t hd) {
    Py_ssize_t a = fp32_scratch_size(t, hd), b = bf16_scratch_size(t, hd);
    return a > b ? a : b;
}

/* One panel of w <= QW queries; see the header comment. Returns 0 if an output is not finite. */
AVX512 static int panel(const float *q, Py_ssize_t lq, Py_ssize_t w, const float *k, Py_ssize_t lk,
                        const float *v, Py_ssize_t lv, Py_ssize_t t, Py_ssize_t hd, float *out, Py_ssize_t lo,
                        float *scratch) {
    float *qt = scratch, *pt = qt + hd * QW, *kpad = pt + t * QW, *tile = kpad + PR * hd, *inv_sum = tile + PR * QW;
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
                __m512 e = exp16_in_range(acc[i][c]);
                _mm512_storeu_ps(pt + (j0 + i) * QW + 16 * c, e);
                sum[c] = _mm512_add_ps(sum[c], e);
            }
    }
    for (int c = 0; c < 3; c++) _mm512_storeu_ps(inv_sum + 16 * c, _mm512_div_ps(_mm512_set1_ps(1.0f), sum[c]));

    __m512 bad = _mm512_setzero_ps();
    for (Py_ssize_t e0 = 0; e0 < hd; e0 += PR) {
        accumulate(PR, 3, t, v + e0, 1, lv, pt, QW, acc);
        for (int i = 0; i < PR; i++)
            for (int c = 0; c < 3; c++) {
                __m512 o = _mm512_mul_ps(acc[i][c], _mm512_loadu_ps(inv_sum + 16 * c));
                bad = _mm512_add_ps(bad, _mm512_maskz_mul_ps(mask[c], o, _mm512_setzero_ps())); /* NaN if o is */
                _mm512_storeu_ps(tile + i * QW + 16 * c, o);
            }
        for (Py_ssize_t c = 0; c < w; c++)
            for (int i = 0; i < PR; i++) out[c * lo + e0 + i] = tile[i * QW + c];
    }
    return _mm512_cmp_ps_mask(bad, bad, _CMP_UNORD_Q) == 0;
}
#endif

/* ---- Python API ------------------------------------------------------------------------------------ */
static PyObject *available(PyObject *self, PyObject *noargs) {
    (void)self, (void)noargs;
    return PyBool_FromLong(simd_available());
}

static PyObject *scratch_floats(PyObject *self, PyObject *args) {
    (void)self;
    Py_ssize_t t, hd;
    if (!PyArg_ParseTuple(args, "nn:scratch_floats", &t, &hd)) return NULL;
    return PyLong_FromSsize_t(scratch_size(t, hd));
}

static PyObject *heads(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *qo, *ko, *vo, *oo, *so;
    Py_ssize_t nh, vw;
    float bound;
    int round_p = 0, kernel = 0;
    if (!PyArg_ParseTuple(args, "OOOOnnfO|pi:heads", &qo, &ko, &vo, &oo, &nh, &vw, &bound, &so, &round_p, &kernel))
        return NULL;
    if (kernel < 0 || kernel > 2 || (kernel == 2 && !bf16_available()))
        return PyErr_Format(PyExc_ValueError, "kernel must be 0 (auto), 1 (fma) or 2 (avx512bf16, where the CPU "
                            "has it), got %d", kernel);
    if (!simd_available()) {
        PyErr_SetString(PyExc_RuntimeError, "the fused attention needs an x86-64 CPU with AVX-512 (see available())");
        return NULL;
    }
    Py_buffer q, k, v, out, s;
    PyObject *left = NULL;
    if (get_rows_of(qo, &q, "q", 0) < 0) return NULL;
    if (get_rows_of(ko, &k, "k", 0) < 0) goto release_q;
    if (get_rows_of(vo, &v, "v", 0) < 0) goto release_k;
    if (get_rows(oo, &out, "out") < 0) goto release_v;
    Py_ssize_t n = q.shape[0], t = k.shape[0], hd = nh > 0 ? q.shape[1] / nh : 0;
    if (nh < 1 || nh > 4096 || hd < 8 || hd % 8 || q.shape[1] != nh * hd || k.shape[1] != nh * hd || vw < hd ||
        v.shape[1] != nh * vw || v.shape[0] != t || t < 1 || out.shape[0] != n || out.shape[1] != nh * hd) {
        PyErr_Format(PyExc_ValueError, "shapes q (%zd, %zd), k (%zd, %zd), v (%zd, %zd), out (%zd, %zd) do not "
                     "fit %zd heads of %zd values each: need q, out (n, heads * hd); k (t, heads * hd); v (t, "
                     "heads * v_width), v_width >= hd; t >= 1; hd a multiple of 8", n, q.shape[1], t, k.shape[1],
                     v.shape[0], v.shape[1], out.shape[0], out.shape[1], nh, vw);
        goto release_out;
    }
    if (get_scratch(so, &s, scratch_size(t, hd)) < 0) goto release_out;
    left = PyList_New(0);
    if (left == NULL) goto release_s;
    Py_ssize_t lq = q.strides[0] / 4, lk = k.strides[0] / 4, lv = v.strides[0] / 4, lo = out.strides[0] / 4;
    unsigned char done[4096]; /* nh <= 4096, checked above */
#if HAVE_SIMD
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t h = 0; h < nh; h++) {
        const float *qh = (const float *)q.buf + h * hd, *kh = (const float *)k.buf + h * hd;
        const float *vh = (const float *)v.buf + h * vw;
        float *oh = (float *)out.buf + h * hd;
        done[h] = n == 0 || max_norm2(qh, lq, n, hd) * max_norm2(kh, lk, t, hd) <= bound * bound;
        if (round_p) {
            if (done[h])
                done[h] = head_bf16(qh, lq, n, kh, lk, vh, lv, t, hd, oh, lo, (float *)s.buf,
                                    kernel == 2 || (kernel == 0 && bf16_available()));
            continue;
        }
        for (Py_ssize_t r = 0; done[h] && r < n; r += QW) {
            Py_ssize_t w = n - r < QW ? n - r : QW;
            done[h] = panel(qh + r * lq, lq, w, kh, lk, vh, lv, t, hd, oh + r * lo, lo, (float *)s.buf);
        }
    }
    Py_END_ALLOW_THREADS
#else
    memset(done, 0, (size_t)nh);
#endif
    for (Py_ssize_t h = 0; h < nh && left; h++) {
        if (done[h]) continue;
        PyObject *i = PyLong_FromSsize_t(h);
        if (i == NULL || PyList_Append(left, i) < 0) Py_CLEAR(left);
        Py_XDECREF(i);
    }
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
    return left;
}

static PyMethodDef methods[] = {
    {"available", available, METH_NOARGS, "available() -> bool: the AVX-512 kernel can run here."},
    {"scratch_floats", scratch_floats, METH_VARARGS,
     "scratch_floats(t, hd) -> int: float32 scratch elements heads() needs."},
    {"heads", heads, METH_VARARGS,
     "heads(q, k, v, out, n_heads, v_width, bound, scratch) -> list[int]: the unshifted heads' attention; "
     "returns the heads left to the caller."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_attention",
                                    "Fused single-head attention (see _attention.c).", -1, methods};

PyMODINIT_FUNC PyInit__attention(void) { return PyModule_Create(&module); }
