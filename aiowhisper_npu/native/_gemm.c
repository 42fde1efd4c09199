/* Packed-weight float32 GEMM for the CPU encoder's linear layers (module aiowhisper_npu.native._gemm).
 *
 * The encoder multiplies every tile of activations by the same resident weight matrices. BLAS repacks the
 * weight operand on every call and, as OpenBLAS 0.3.31 does on Zen 4, reaches ~83-86 % of one core's FMA
 * peak on these shapes (M = a tile's rows, K and N = 384..2048). Here the weights are packed once, when the
 * device loads them, into panels of NR = 64 columns; each call packs only the activations (MR = 6 rows per
 * micro-panel, KC = 512 deep) and runs an AVX-512 micro-kernel that keeps a 6 x 64 block of C in 24
 * registers. Bias, and optionally the exact-erf GELU of kernels.gelu_, are applied when the block is stored
 * after the last depth pass, so fc1 + bias + GELU is one sweep over its output.
 *
 *   available()                  True when the micro-kernel is compiled in and the CPU has AVX-512F.
 *   packed_shape(k, n)           (panels, k, NR): the shape of a packed (k, n) weight.
 *   pack(w, out)                 w: 2-D float32 (k, n), unit inner stride; out: C-contiguous float32 of
 *                                packed_shape(k, n). Columns past n are zero.
 *   gemm(a, w, out, bias, gelu, scratch)
 *                                out = a @ W (+ bias) (then GELU if gelu), where w is W packed. a: (m, k),
 *                                out: (m, n), both float32 with unit inner stride (any row stride); bias:
 *                                None or 1-D of length n; scratch: C-contiguous float32 of at least
 *                                SCRATCH_FLOATS elements (reused between calls: no allocation per call).
 *
 * Summation order: each output element is the sum over k in blocks of KC, in order, with FMA; it depends
 * on neither the row's position in the tile nor the tile's height, so a row gives the same bits in any tile.
 * The GIL is released while packing and multiplying.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#include "_buffers.h"
#include "_simd.h"

#define NR 64  /* columns per packed weight panel: four 16-float vectors */
#define MR 6   /* rows per micro-tile: 6 x 4 accumulators + 4 weight vectors + 1 broadcast <= 32 registers */
#define KC 512 /* depth of one pass: a 512 x 64 weight panel (128 KiB) stays in L2 across a row block */
#define MC 384 /* rows per packed activation block (a multiple of MR): 384 x 512 floats = 768 KiB */
#define SCRATCH_FLOATS (MC * KC)
_Static_assert(MC % MR == 0, "a packed row block holds whole micro-panels");

/* ---- packing (plain C) ----------------------------------------------------------------------------- */
static void pack_weight(const float *w, Py_ssize_t ldw, Py_ssize_t k, Py_ssize_t n, float *out) {
    Py_ssize_t panels = (n + NR - 1) / NR;
    for (Py_ssize_t p = 0; p < panels; p++) {
        Py_ssize_t c0 = p * NR, width = n - c0 < NR ? n - c0 : NR;
        float *dst = out + p * k * NR;
        for (Py_ssize_t i = 0; i < k; i++) {
            memcpy(dst + i * NR, w + i * ldw + c0, (size_t)width * sizeof(float));
            memset(dst + i * NR + width, 0, (size_t)(NR - width) * sizeof(float));
        }
    }
}

/* Rows r0..r0+m of a, depth d0..d0+kc, into micro-panels of MR rows: ap[panel][depth][MR], zero-padded. */
static void pack_rows(const float *a, Py_ssize_t lda, Py_ssize_t m, Py_ssize_t kc, float *ap) {
    for (Py_ssize_t r = 0; r < m; r += MR) {
        Py_ssize_t rows = m - r < MR ? m - r : MR;
        float *dst = ap + r * kc;
        for (Py_ssize_t i = 0; i < rows; i++) {
            const float *src = a + (r + i) * lda;
            for (Py_ssize_t d = 0; d < kc; d++) dst[d * MR + i] = src[d];
        }
        for (Py_ssize_t i = rows; i < MR; i++)
            for (Py_ssize_t d = 0; d < kc; d++) dst[d * MR + i] = 0.0f;
    }
}

#if HAVE_SIMD
/* ---- the micro-kernel ------------------------------------------------------------------------------ */
/* C[0:m, 0:16*nv] (+)= A-panel @ B-panel over kc; masks cut the last vector of a narrow panel. After the
 * last pass (bias != NULL or gelu) the epilogue adds the bias and applies the GELU before the store. */
AVX512 SIMD_INLINE void micro_tile(const int nv, Py_ssize_t kc, const float *restrict ap, const float *restrict bp,
                                   float *restrict c, Py_ssize_t ldc, Py_ssize_t m, const __mmask16 *mask,
                                   int first, const float *bias, int gelu) {
    __m512 acc[MR][4];
    accumulate(MR, nv, kc, ap, 1, MR, bp, NR, acc);
    for (int i = 0; i < MR; i++) {
        if (i >= m) break;
        float *row = c + i * ldc;
        for (int v = 0; v < nv; v++) {
            __m512 x = acc[i][v];
            if (!first) x = _mm512_add_ps(x, _mm512_maskz_loadu_ps(mask[v], row + 16 * v));
            if (bias) x = _mm512_add_ps(x, _mm512_maskz_loadu_ps(mask[v], bias + 16 * v));
            if (gelu) x = gelu16(x);
            _mm512_mask_storeu_ps(row + 16 * v, mask[v], x);
        }
    }
}

AVX512 static void gemm_run(const float *a, Py_ssize_t lda, Py_ssize_t m, Py_ssize_t k, const float *w,
                            Py_ssize_t n, float *c, Py_ssize_t ldc, const float *bias, int gelu, float *ap) {
    Py_ssize_t panels = (n + NR - 1) / NR;
    for (Py_ssize_t d0 = 0; d0 < k; d0 += KC) {
        Py_ssize_t kc = k - d0 < KC ? k - d0 : KC;
        int first = d0 == 0, last = d0 + kc == k;
        for (Py_ssize_t r0 = 0; r0 < m; r0 += MC) {
            Py_ssize_t mc = m - r0 < MC ? m - r0 : MC;
            pack_rows(a + r0 * lda + d0, lda, mc, kc, ap);
            for (Py_ssize_t p = 0; p < panels; p++) {
                Py_ssize_t width = n - p * NR < NR ? n - p * NR : NR;
                int nv = (int)((width + 15) / 16);
                __mmask16 mask[4];
                tail_masks(width, mask);
                const float *bp = w + p * k * NR + d0 * NR;
                const float *pb = last && bias ? bias + p * NR : NULL;
                int g = last && gelu;
                for (Py_ssize_t r = 0; r < mc; r += MR) {
                    Py_ssize_t rows = mc - r < MR ? mc - r : MR;
                    float *cp = c + (r0 + r) * ldc + p * NR;
                    const float *pa = ap + r * kc;
                    switch (nv) {
                    case 4: micro_tile(4, kc, pa, bp, cp, ldc, rows, mask, first, pb, g); break;
                    case 3: micro_tile(3, kc, pa, bp, cp, ldc, rows, mask, first, pb, g); break;
                    case 2: micro_tile(2, kc, pa, bp, cp, ldc, rows, mask, first, pb, g); break;
                    default: micro_tile(1, kc, pa, bp, cp, ldc, rows, mask, first, pb, g); break;
                    }
                }
            }
        }
    }
}
#endif

/* ---- Python API ------------------------------------------------------------------------------------ */
static PyObject *available(PyObject *self, PyObject *noargs) {
    (void)self, (void)noargs;
    return PyBool_FromLong(simd_available());
}

static PyObject *packed_shape(PyObject *self, PyObject *args) {
    (void)self;
    Py_ssize_t k, n;
    if (!PyArg_ParseTuple(args, "nn:packed_shape", &k, &n)) return NULL;
    if (k < 1 || n < 1) return PyErr_Format(PyExc_ValueError, "k and n must be >= 1, got %zd and %zd", k, n);
    return Py_BuildValue("(nni)", (n + NR - 1) / NR, k, NR);
}

/* A C-contiguous float32 buffer of exactly `shape` (3-D). */
static int get_packed(PyObject *obj, Py_buffer *v, const char *name, Py_ssize_t k, Py_ssize_t n, int writable) {
    if (PyObject_GetBuffer(obj, v, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT | (writable ? PyBUF_WRITABLE : 0)) < 0)
        return -1;
    Py_ssize_t panels = (n + NR - 1) / NR;
    if (!is_float32(v) || v->ndim != 3 || v->shape[0] != panels || v->shape[1] != k || v->shape[2] != NR) {
        PyErr_Format(is_float32(v) ? PyExc_ValueError : PyExc_TypeError,
                     "%s must be a C-contiguous float32 array of shape (%zd, %zd, %d) (a packed (%zd, %zd) "
                     "weight)", name, panels, k, NR, k, n);
        PyBuffer_Release(v);
        return -1;
    }
    return 0;
}

static PyObject *pack(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *wo, *oo;
    if (!PyArg_ParseTuple(args, "OO:pack", &wo, &oo)) return NULL;
    Py_buffer w, out;
    if (get_rows_of(wo, &w, "w", 0) < 0) return NULL;
    Py_ssize_t k = w.shape[0], n = w.shape[1];
    if (k < 1 || n < 1) {
        PyBuffer_Release(&w);
        return PyErr_Format(PyExc_ValueError, "w must not be empty, got shape (%zd, %zd)", k, n);
    }
    if (get_packed(oo, &out, "out", k, n, 1) < 0) {
        PyBuffer_Release(&w);
        return NULL;
    }
    Py_BEGIN_ALLOW_THREADS
    pack_weight((const float *)w.buf, w.strides[0] / 4, k, n, (float *)out.buf);
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&out);
    PyBuffer_Release(&w);
    Py_RETURN_NONE;
}

static int overlaps(const Py_buffer *x, const Py_buffer *y) {
    const char *x0 = x->buf, *y0 = y->buf;
    const char *x1 = x0 + (x->shape[0] - 1) * x->strides[0] + x->shape[1] * 4;
    const char *y1 = y0 + (y->shape[0] - 1) * y->strides[0] + y->shape[1] * 4;
    return x0 < y1 && y0 < x1;
}

static PyObject *gemm(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *ao, *wo, *oo, *bo, *so;
    int gelu;
    if (!PyArg_ParseTuple(args, "OOOOpO:gemm", &ao, &wo, &oo, &bo, &gelu, &so)) return NULL;
    if (!simd_available()) {
        PyErr_SetString(PyExc_RuntimeError, "the packed GEMM needs an x86-64 CPU with AVX-512 (see available())");
        return NULL;
    }
    Py_buffer a, w, out, b, s;
    int have_b = 0, ok = 0;
    if (get_rows_of(ao, &a, "a", 0) < 0) return NULL;
    if (get_rows(oo, &out, "out") < 0) goto release_a;
    Py_ssize_t m = a.shape[0], k = a.shape[1], n = out.shape[1];
    if (out.shape[0] != m || k < 1 || n < 1) {
        PyErr_Format(PyExc_ValueError, "a (%zd, %zd) and out (%zd, %zd) do not match (or are empty)", m, k,
                     out.shape[0], n);
        goto release_out;
    }
    if (m > 0 && overlaps(&a, &out)) {
        PyErr_SetString(PyExc_ValueError, "out must not overlap a");
        goto release_out;
    }
    if (get_packed(wo, &w, "w", k, n, 0) < 0) goto release_out;
    if (bo != Py_None) {
        if (get_vector(bo, &b, "bias", n) < 0) goto release_w;
        have_b = 1;
    }
    if (get_scratch(so, &s, SCRATCH_FLOATS) < 0) goto release_b;
#if HAVE_SIMD
    Py_BEGIN_ALLOW_THREADS
    gemm_run((const float *)a.buf, a.strides[0] / 4, m, k, (const float *)w.buf, n, (float *)out.buf,
             out.strides[0] / 4, have_b ? (const float *)b.buf : NULL, gelu, (float *)s.buf);
    Py_END_ALLOW_THREADS
#endif
    ok = 1;
    PyBuffer_Release(&s);
release_b:
    if (have_b) PyBuffer_Release(&b);
release_w:
    PyBuffer_Release(&w);
release_out:
    PyBuffer_Release(&out);
release_a:
    PyBuffer_Release(&a);
    if (!ok) return NULL;
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"available", available, METH_NOARGS, "available() -> bool: the AVX-512 micro-kernel can run here."},
    {"packed_shape", packed_shape, METH_VARARGS, "packed_shape(k, n) -> (panels, k, NR) of a packed weight."},
    {"pack", pack, METH_VARARGS, "pack(w, out) -> None: pack a (k, n) float32 weight into out."},
    {"gemm", gemm, METH_VARARGS,
     "gemm(a, w, out, bias, gelu, scratch) -> None: out = a @ W (+ bias, then GELU if gelu); w is W packed."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_gemm",
                                    "Packed-weight float32 GEMM with fused bias/GELU (see _gemm.c).", -1, methods};

PyMODINIT_FUNC PyInit__gemm(void) {
    PyObject *mod = PyModule_Create(&module);
    if (mod && (PyModule_AddIntConstant(mod, "NR", NR) < 0 ||
                PyModule_AddIntConstant(mod, "SCRATCH_FLOATS", SCRATCH_FLOATS) < 0)) {
        Py_DECREF(mod);
        return NULL;
    }
    return mod;
}
