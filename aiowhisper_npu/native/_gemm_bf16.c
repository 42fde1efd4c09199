/* Packed-weight bf16 GEMM for precision="bf16" (module aiowhisper_npu.native._gemm_bf16).
 *
 * The numerics (docs/precision.md): both operands of every product are bf16 values (the weight rounded to
 * nearest even once, when packed; the activations rounded to nearest even as they are packed), products are
 * exact in float32 and accumulate in float32. The weight is packed once into panels of NR = 64 columns in
 * which consecutive depths are paired: panel[k / 2][column][k % 2] (uint16 bf16 patterns), the layout
 * `vdpbf16ps` reads. Each call rounds and packs the activations into micro-panels of MR = 6 rows of
 * (k, k + 1) pairs and runs one of two micro-kernels keeping a 6 x 64 block of C in 24 registers:
 *
 *   "avx512bf16"  _mm512_dpbf16_ps: per pair acc += a[k+1] * w[k+1], then acc += a[k] * w[k], each rounded
 *                 once (the SDM's definition), twice the multiply-adds of an fp32 FMA per instruction.
 *   "fma"         the same two steps as two fp32 FMAs on the widened bf16 values, for CPUs with AVX-512F but
 *                 without AVX512_BF16. A product of two bf16 values is exact in float32, so both kernels
 *                 round identically: the results are bit-identical (tested) except that the bf16
 *                 instruction treats subnormal inputs as zero and flushes subnormal sums.
 *
 * Bias, and optionally the exact-erf GELU of kernels.gelu_, are applied in fp32 as the block is stored after
 * the last depth pass (KC = 1024 deep: a 1024 x 64 bf16 panel has the bytes of _gemm.c's 512 x 64 fp32
 * one). Summation order: each output element is the sum over k in blocks of KC, in order, pairs
 * odd-then-even; it does not depend on the row's position or the tile height.
 *
 *   available()          True when a kernel can run here (x86-64 with AVX-512 F/DQ/VL/BW).
 *   native_bf16()        True when the CPU has AVX512_BF16 (kernel "avx512bf16" runs by default).
 *   packed_shape(k, n)   (panels, ceil(k / 2), 2 * NR): the uint16 shape of a packed (k, n) weight.
 *   pack(w, out)         w: 2-D float32 (k, n), unit inner stride -> out: C-contiguous uint16 of
 *                        packed_shape(k, n), rounded to nearest even; padding is zero.
 *   gemm(a, w, out, bias, gelu, scratch, kernel=0)
 *                        out = bf16(a) @ W (+ bias) (then GELU), as _gemm.gemm; kernel 0 = the best here,
 *                        1 = "fma", 2 = "avx512bf16" (RuntimeError where the CPU lacks it).
 *   round_(x)            x: 2-D float32 rows, rounded in place to the nearest bf16 value (ties to even).
 * The GIL is released while packing, rounding and multiplying.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#include "_buffers.h"
#include "_simd.h"

#define NR 64
#define MR 6
#define KC 1024 /* even: pairs never straddle two passes */
#define MC 384
#define SCRATCH_FLOATS (MC * KC / 2) /* one uint32 (a bf16 pair) per two depths */
_Static_assert(KC % 2 == 0, "a pass holds whole pairs");

/* float32 -> bf16 bits, round to nearest even; NaN stays a quiet NaN. */
static inline uint16_t bf16_bits(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7FFFFFFFu) > 0x7F800000u) return (uint16_t)((u >> 16) | 0x40u);
    return (uint16_t)((u + 0x7FFFu + ((u >> 16) & 1u)) >> 16);
}

static void pack_weight(const float *w, Py_ssize_t ldw, Py_ssize_t k, Py_ssize_t n, uint16_t *out) {
    Py_ssize_t panels = (n + NR - 1) / NR, kp = (k + 1) / 2;
    memset(out, 0, (size_t)(panels * kp * 2 * NR) * sizeof(uint16_t));
    for (Py_ssize_t p = 0; p < panels; p++) {
        Py_ssize_t c0 = p * NR, width = n - c0 < NR ? n - c0 : NR;
        uint16_t *dst = out + p * kp * 2 * NR;
        for (Py_ssize_t i = 0; i < k; i++)
            for (Py_ssize_t c = 0; c < width; c++) dst[(i / 2) * 2 * NR + 2 * c + (i & 1)] = bf16_bits(w[i * ldw + c0 + c]);
    }
}

/* Rows of a (depth d0.. d0 + kc), rounded, into micro-panels ap[panel][pair][MR] of (even, odd) bf16 pairs. */
static inline void pack_rows_scalar(const float *a, Py_ssize_t lda, Py_ssize_t m, Py_ssize_t kc, uint32_t *ap) {
    Py_ssize_t kp = (kc + 1) / 2;
    for (Py_ssize_t r = 0; r < m; r += MR) {
        Py_ssize_t rows = m - r < MR ? m - r : MR;
        uint32_t *dst = ap + r * kp;
        for (Py_ssize_t i = 0; i < MR; i++) {
            const float *src = a + (r + i) * lda;
            for (Py_ssize_t d = 0; d < kp; d++) {
                uint32_t lo = i < rows ? bf16_bits(src[2 * d]) : 0;
                uint32_t hi = i < rows && 2 * d + 1 < kc ? bf16_bits(src[2 * d + 1]) : 0;
                dst[d * MR + i] = lo | hi << 16;
            }
        }
    }
}

static inline void round_rows_scalar(float *x, Py_ssize_t ld, Py_ssize_t m, Py_ssize_t n) {
    for (Py_ssize_t i = 0; i < m; i++)
        for (Py_ssize_t j = 0; j < n; j++) {
            uint32_t u = (uint32_t)bf16_bits(x[i * ld + j]) << 16;
            memcpy(x + i * ld + j, &u, 4);
        }
}

#if HAVE_SIMD

/* Store the block: add the previous passes, then bias and GELU after the last one (fp32). */
#define EPILOGUE                                                                                            \
    for (int i = 0; i < MR; i++) {                                                                          \
        if (i >= m) break;                                                                                  \
        float *row = c + i * ldc;                                                                           \
        for (int v = 0; v < nv; v++) {                                                                      \
            __m512 x = acc[i][v];                                                                           \
            if (!first) x = _mm512_add_ps(x, _mm512_maskz_loadu_ps(mask[v], row + 16 * v));                 \
            if (bias) x = _mm512_add_ps(x, _mm512_maskz_loadu_ps(mask[v], bias + 16 * v));                  \
            if (gelu) x = gelu16(x);                                                                        \
            _mm512_mask_storeu_ps(row + 16 * v, mask[v], x);                                                \
        }                                                                                                   \
    }

#if HAVE_BF16_ISA
AVX512BF16 SIMD_INLINE void tile_bf16(const int nv, Py_ssize_t kp, const uint32_t *restrict ap,
                                      const uint16_t *restrict bp, float *restrict c, Py_ssize_t ldc, Py_ssize_t m,
                                      const __mmask16 *mask, int first, const float *bias, int gelu) {
    __m512 acc[MR][4];
    for (int i = 0; i < MR; i++)
        for (int v = 0; v < nv; v++) acc[i][v] = _mm512_setzero_ps();
    for (Py_ssize_t d = 0; d < kp; d++) {
        __m512bh bv[4];
        for (int v = 0; v < nv; v++) bv[v] = (__m512bh)_mm512_loadu_si512(bp + d * 2 * NR + 32 * v);
        for (int i = 0; i < MR; i++) {
            __m512bh x = (__m512bh)_mm512_set1_epi32((int)ap[d * MR + i]);
            for (int v = 0; v < nv; v++) acc[i][v] = _mm512_dpbf16_ps(acc[i][v], x, bv[v]);
        }
    }
    EPILOGUE
}
#endif

AVX512 SIMD_INLINE void tile_fma(const int nv, Py_ssize_t kp, const uint32_t *restrict ap,
                                 const uint16_t *restrict bp, float *restrict c, Py_ssize_t ldc, Py_ssize_t m,
                                 const __mmask16 *mask, int first, const float *bias, int gelu) {
    __m512 acc[MR][4];
    const __m512i hi_mask = _mm512_set1_epi32((int)0xFFFF0000u);
    for (int i = 0; i < MR; i++)
        for (int v = 0; v < nv; v++) acc[i][v] = _mm512_setzero_ps();
    for (Py_ssize_t d = 0; d < kp; d++) {
        __m512 odd[4], even[4];
        for (int v = 0; v < nv; v++) {
            __m512i b = _mm512_loadu_si512(bp + d * 2 * NR + 32 * v);
            odd[v] = _mm512_castsi512_ps(_mm512_and_si512(b, hi_mask));
            even[v] = _mm512_castsi512_ps(_mm512_slli_epi32(b, 16));
        }
        for (int i = 0; i < MR; i++) {
            uint32_t pair = ap[d * MR + i], ho = pair & 0xFFFF0000u, he = pair << 16;
            float fo, fe;
            memcpy(&fo, &ho, 4), memcpy(&fe, &he, 4);
            __m512 xo = _mm512_set1_ps(fo), xe = _mm512_set1_ps(fe);
            for (int v = 0; v < nv; v++) {
                acc[i][v] = _mm512_fmadd_ps(xo, odd[v], acc[i][v]);
                acc[i][v] = _mm512_fmadd_ps(xe, even[v], acc[i][v]);
            }
        }
    }
    EPILOGUE
}

/* pack_rows_scalar with AVX-512: 32 depths of a row rounded at once (bf16_bits' formula, NaN kept quiet), the
 * even/odd words gathered into pairs with one permute, the 16 pairs scattered MR apart. */
AVX512 static void pack_rows(const float *a, Py_ssize_t lda, Py_ssize_t m, Py_ssize_t kc, uint32_t *ap) {
    Py_ssize_t kp = (kc + 1) / 2, k32 = kc / 32 * 32;
    const __m512i ones = _mm512_set1_epi32(1), half = _mm512_set1_epi32(0x7FFF), abs = _mm512_set1_epi32(0x7FFFFFFF);
    const __m512i inf = _mm512_set1_epi32(0x7F800000), quiet = _mm512_set1_epi32(0x40);
    const __m512i even_words = _mm512_set_epi16(62, 60, 58, 56, 54, 52, 50, 48, 46, 44, 42, 40, 38, 36, 34, 32, 30, 28,
                                                26, 24, 22, 20, 18, 16, 14, 12, 10, 8, 6, 4, 2, 0);
    const __m512i stride = _mm512_mullo_epi32(_mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0),
                                              _mm512_set1_epi32(MR));
    for (Py_ssize_t r = 0; r < m; r += MR) {
        Py_ssize_t rows = m - r < MR ? m - r : MR;
        uint32_t *dst = ap + r * kp;
        for (Py_ssize_t i = 0; i < rows; i++) {
            const float *src = a + (r + i) * lda;
            for (Py_ssize_t d = 0; d < k32; d += 32) {
                __m512i h[2];
                for (int v = 0; v < 2; v++) {
                    __m512i u = _mm512_loadu_si512(src + d + 16 * v);
                    __m512i rne = _mm512_srli_epi32(
                        _mm512_add_epi32(u, _mm512_add_epi32(half, _mm512_and_si512(_mm512_srli_epi32(u, 16), ones))), 16);
                    __mmask16 nan = _mm512_cmpgt_epu32_mask(_mm512_and_si512(u, abs), inf);
                    h[v] = _mm512_mask_or_epi32(rne, nan, _mm512_srli_epi32(u, 16), quiet);
                }
                __m512i pairs = _mm512_permutex2var_epi16(h[0], even_words, h[1]);
                _mm512_i32scatter_epi32(dst + (d / 2) * MR + i, stride, pairs, 4);
            }
            for (Py_ssize_t d = k32 / 2; d < kp; d++) {
                uint32_t lo = bf16_bits(src[2 * d]), hi = 2 * d + 1 < kc ? bf16_bits(src[2 * d + 1]) : 0;
                dst[d * MR + i] = lo | hi << 16;
            }
        }
        for (Py_ssize_t i = rows; i < MR; i++)
            for (Py_ssize_t d = 0; d < kp; d++) dst[d * MR + i] = 0;
    }
}

/* round_rows_scalar, 16 at a time (the same formula; NaN kept quiet). */
AVX512 static void round_rows(float *x, Py_ssize_t ld, Py_ssize_t m, Py_ssize_t n) {
    const __m512i ones = _mm512_set1_epi32(1), half = _mm512_set1_epi32(0x7FFF), abs = _mm512_set1_epi32(0x7FFFFFFF);
    const __m512i inf = _mm512_set1_epi32(0x7F800000), quiet = _mm512_set1_epi32(0x400000);
    const __m512i hi = _mm512_set1_epi32((int)0xFFFF0000u);
    for (Py_ssize_t i = 0; i < m; i++)
        for (Py_ssize_t j = 0; j < n; j += 16) {
            __mmask16 k = n - j >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (n - j)) - 1);
            __m512i u = _mm512_maskz_loadu_epi32(k, x + i * ld + j);
            __m512i r = _mm512_add_epi32(u, _mm512_add_epi32(half, _mm512_and_si512(_mm512_srli_epi32(u, 16), ones)));
            __mmask16 nan = _mm512_cmpgt_epu32_mask(_mm512_and_si512(u, abs), inf);
            r = _mm512_mask_or_epi32(r, nan, u, quiet);
            _mm512_mask_storeu_epi32(x + i * ld + j, k, _mm512_and_si512(r, hi));
        }
}

#define RUN(name, attr)                                                                                     \
    attr static void name(const float *a, Py_ssize_t lda, Py_ssize_t m, Py_ssize_t k, const uint16_t *w,   \
                          Py_ssize_t n, float *c, Py_ssize_t ldc, const float *bias, int gelu, uint32_t *ap) { \
        Py_ssize_t panels = (n + NR - 1) / NR, kpw = (k + 1) / 2;                                           \
        for (Py_ssize_t d0 = 0; d0 < k; d0 += KC) {                                                         \
            Py_ssize_t kc = k - d0 < KC ? k - d0 : KC, kp = (kc + 1) / 2;                                   \
            int first = d0 == 0, last = d0 + kc == k;                                                       \
            for (Py_ssize_t r0 = 0; r0 < m; r0 += MC) {                                                     \
                Py_ssize_t mc = m - r0 < MC ? m - r0 : MC;                                                  \
                pack_rows(a + r0 * lda + d0, lda, mc, kc, ap);                                              \
                for (Py_ssize_t p = 0; p < panels; p++) {                                                   \
                    Py_ssize_t width = n - p * NR < NR ? n - p * NR : NR;                                   \
                    int nv = (int)((width + 15) / 16);                                                      \
                    __mmask16 mask[4];                                                                      \
                    tail_masks(width, mask);                                                                \
                    const uint16_t *bp = w + p * kpw * 2 * NR + (d0 / 2) * 2 * NR;                          \
                    const float *pb = last && bias ? bias + p * NR : NULL;                                  \
                    int g = last && gelu;                                                                   \
                    for (Py_ssize_t r = 0; r < mc; r += MR) {                                               \
                        Py_ssize_t rows = mc - r < MR ? mc - r : MR;                                        \
                        float *cp = c + (r0 + r) * ldc + p * NR;                                            \
                        const uint32_t *pa = ap + r * kp;                                                   \
                        switch (nv) {                                                                       \
                        case 4: TILE(4, kp, pa, bp, cp, ldc, rows, mask, first, pb, g); break;              \
                        case 3: TILE(3, kp, pa, bp, cp, ldc, rows, mask, first, pb, g); break;              \
                        case 2: TILE(2, kp, pa, bp, cp, ldc, rows, mask, first, pb, g); break;              \
                        default: TILE(1, kp, pa, bp, cp, ldc, rows, mask, first, pb, g); break;             \
                        }                                                                                   \
                    }                                                                                       \
                }                                                                                           \
            }                                                                                               \
        }                                                                                                   \
    }
#if HAVE_BF16_ISA
#define TILE tile_bf16
RUN(run_bf16, AVX512BF16)
#undef TILE
#endif
#define TILE tile_fma
RUN(run_fma, AVX512)
#undef TILE
#if !HAVE_BF16_ISA
#define run_bf16 run_fma /* never chosen: bf16_available() is 0 */
#endif
#else
#define pack_rows pack_rows_scalar
#define round_rows round_rows_scalar
#endif

/* ---- Python API ------------------------------------------------------------------------------------ */
static PyObject *available(PyObject *self, PyObject *noargs) {
    (void)self, (void)noargs;
    return PyBool_FromLong(simd_available());
}

static PyObject *native_bf16(PyObject *self, PyObject *noargs) {
    (void)self, (void)noargs;
    return PyBool_FromLong(bf16_available());
}

static PyObject *packed_shape(PyObject *self, PyObject *args) {
    (void)self;
    Py_ssize_t k, n;
    if (!PyArg_ParseTuple(args, "nn:packed_shape", &k, &n)) return NULL;
    if (k < 1 || n < 1) return PyErr_Format(PyExc_ValueError, "k and n must be >= 1, got %zd and %zd", k, n);
    return Py_BuildValue("(nni)", (n + NR - 1) / NR, (k + 1) / 2, 2 * NR);
}

static int is_uint16(const Py_buffer *v) {
    const char *f = v->format ? v->format : "B";
    if (*f == '<' || *f == '=' || *f == '@') f++;
    return f[0] == 'H' && f[1] == '\0' && v->itemsize == 2;
}

static int get_packed(PyObject *obj, Py_buffer *v, const char *name, Py_ssize_t k, Py_ssize_t n, int writable) {
    if (PyObject_GetBuffer(obj, v, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT | (writable ? PyBUF_WRITABLE : 0)) < 0)
        return -1;
    Py_ssize_t panels = (n + NR - 1) / NR, kp = (k + 1) / 2;
    if (!is_uint16(v) || v->ndim != 3 || v->shape[0] != panels || v->shape[1] != kp || v->shape[2] != 2 * NR) {
        PyErr_Format(is_uint16(v) ? PyExc_ValueError : PyExc_TypeError,
                     "%s must be a C-contiguous uint16 array of shape (%zd, %zd, %d) (a packed (%zd, %zd) "
                     "bf16 weight)", name, panels, kp, 2 * NR, k, n);
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
    pack_weight((const float *)w.buf, w.strides[0] / 4, k, n, (uint16_t *)out.buf);
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&out);
    PyBuffer_Release(&w);
    Py_RETURN_NONE;
}

static PyObject *round_(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *xo;
    if (!PyArg_ParseTuple(args, "O:round_", &xo)) return NULL;
    Py_buffer x;
    if (get_rows(xo, &x, "x") < 0) return NULL;
    Py_BEGIN_ALLOW_THREADS
    round_rows((float *)x.buf, x.strides[0] / 4, x.shape[0], x.shape[1]);
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&x);
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
    int gelu, kernel = 0;
    if (!PyArg_ParseTuple(args, "OOOOpO|i:gemm", &ao, &wo, &oo, &bo, &gelu, &so, &kernel)) return NULL;
    if (!simd_available()) {
        PyErr_SetString(PyExc_RuntimeError, "the bf16 GEMM needs an x86-64 CPU with AVX-512 (see available())");
        return NULL;
    }
    if (kernel < 0 || kernel > 2) return PyErr_Format(PyExc_ValueError, "kernel must be 0, 1 or 2, got %d", kernel);
    if (kernel == 2 && !bf16_available()) {
        PyErr_SetString(PyExc_RuntimeError, "this CPU has no AVX512_BF16 (see native_bf16())");
        return NULL;
    }
    int use_bf16 = kernel == 2 || (kernel == 0 && bf16_available());
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
    (use_bf16 ? run_bf16 : run_fma)((const float *)a.buf, a.strides[0] / 4, m, k, (const uint16_t *)w.buf, n,
                                    (float *)out.buf, out.strides[0] / 4, have_b ? (const float *)b.buf : NULL,
                                    gelu, (uint32_t *)s.buf);
    Py_END_ALLOW_THREADS
#else
    (void)use_bf16;
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
    {"available", available, METH_NOARGS, "available() -> bool: a bf16 GEMM kernel (AVX-512) can run here."},
    {"native_bf16", native_bf16, METH_NOARGS, "native_bf16() -> bool: the CPU has AVX512_BF16."},
    {"packed_shape", packed_shape, METH_VARARGS, "packed_shape(k, n) -> uint16 shape of a packed bf16 weight."},
    {"pack", pack, METH_VARARGS, "pack(w, out) -> None: round a (k, n) float32 weight to bf16 and pack it."},
    {"gemm", gemm, METH_VARARGS,
     "gemm(a, w, out, bias, gelu, scratch, kernel=0) -> None: out = bf16(a) @ W (+ bias, then GELU)."},
    {"round_", round_, METH_VARARGS, "round_(x) -> None: round a 2-D float32 array to bf16 values in place."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_gemm_bf16",
                                    "Packed-weight bf16 GEMM with fused bias/GELU (see _gemm_bf16.c).", -1, methods};

PyMODINIT_FUNC PyInit__gemm_bf16(void) {
    PyObject *mod = PyModule_Create(&module);
    if (mod && (PyModule_AddIntConstant(mod, "NR", NR) < 0 ||
                PyModule_AddIntConstant(mod, "KC", KC) < 0 ||
                PyModule_AddIntConstant(mod, "SCRATCH_FLOATS", SCRATCH_FLOATS) < 0)) {
        Py_DECREF(mod);
        return NULL;
    }
    return mod;
}
