/* Products of a few rows with a row-major weight, for the decoder (module aiowhisper_npu.native._gemv).
 *
 *   matmul_nt(x, w, out, bias, n0, n1)   out[:, n0:n1] = x @ w[n0:n1].T (+ bias[n0:n1])
 *       x: (M, K) float32 rows, w: (N, K) float32 rows (a weight in its (out, in) layout, or the token
 *       embedding for the logits), out: (M, N) float32 rows, bias: None or (N,) float32.
 *   matmul_nt_bf16(x, w, out, bias, n0, n1)   the same with w as bf16 bit patterns (uint16 (N, K)): x rounded to
 *       bf16 (nearest even) as it enters the product, products of bf16 values (exact in float32), float32
 *       sums (precision="bf16", docs/precision.md): with AVX512_BF16, vdpbf16ps on 32 depths at a time
 *       (kernel 2, the default there), else matmul_nt's order on the widened weights (kernel 1, AVX2 FMA;
 *       the two agree to float32 rounding). Half the weight bytes.
 *   available() -> True when the AVX2 + FMA kernel runs here (else a portable C loop runs).
 *
 * A decoding step multiplies a handful of rows (beams, concurrent requests) by every weight of the model,
 * which BLAS GEMMs handle poorly at M < ~32 (OpenBLAS reads the weight several times or pads). Here each block
 * of 4 weight rows is streamed from memory once and multiplied, while it sits in L1, with the x rows three at a
 * time: 12 AVX2 accumulators, 3 x vectors and one weight vector fill the 16 registers. The cost is one read of
 * the weight plus ~M/2 FMAs per 8 weights, so it runs at memory bandwidth for M up to ~8 and stays
 * compute-efficient above. Sums over k are in a fixed order for a given K: a row's result does not depend
 * on M, on the other rows, or on [n0, n1), so splitting columns across threads is bit-identical.
 * The GIL is released while it runs.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "_buffers.h"

#if defined(__GNUC__) && defined(__x86_64__)
#define HAVE_AVX2 1
#include <immintrin.h>
#define AVX2 __attribute__((target("avx2,fma")))
#else
#define HAVE_AVX2 0
#endif
#define INLINE static inline __attribute__((always_inline))
/* The compiler knows the AVX512_BF16 intrinsics (GCC 10, clang 9); else only the FMA forms are built. */
#if !defined(NO_BF16_ISA) && ((defined(__clang__) && __clang_major__ >= 9) || (!defined(__clang__) && __GNUC__ >= 10))
#define HAVE_BF16_ISA 1
#else
#define HAVE_BF16_ISA 0
#endif

#ifndef PREFETCH
#define PREFETCH 1
#endif

static int bf16_cpu(void);

static int avx2_available(void) {
#if HAVE_AVX2
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#else
    return 0;
#endif
}

/* ---- portable form --------------------------------------------------------------------------------- */
/* Same summation order as the AVX2 form: eight interleaved partial sums over k, reduced pairwise. */
static void dot_rows_portable(const float *x, Py_ssize_t ldx, Py_ssize_t m, const float *w, Py_ssize_t ldw,
                              Py_ssize_t n0, Py_ssize_t n1, Py_ssize_t k, float *out, Py_ssize_t ldo,
                              const float *bias) {
    Py_ssize_t k8 = k - k % 8;
    for (Py_ssize_t n = n0; n < n1; n++) {
        const float *wr = w + n * ldw;
        for (Py_ssize_t i = 0; i < m; i++) {
            const float *xr = x + i * ldx;
            float p[8] = {0, 0, 0, 0, 0, 0, 0, 0};
            for (Py_ssize_t j = 0; j < k8; j += 8)
                for (int l = 0; l < 8; l++) p[l] += xr[j + l] * wr[j + l];
            float s = ((p[0] + p[1]) + (p[2] + p[3])) + ((p[4] + p[5]) + (p[6] + p[7]));
            for (Py_ssize_t j = k8; j < k; j++) s += xr[j] * wr[j];
            out[i * ldo + n] = bias ? s + bias[n] : s;
        }
    }
}

/* ---- bf16 weights ---------------------------------------------------------------------------------- */
static inline float bf16_value(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static inline float bf16_round(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    u = (u & 0x7FFFFFFFu) > 0x7F800000u ? (u | 0x00400000u) & 0xFFFF0000u : (u + 0x7FFFu + ((u >> 16) & 1u)) & 0xFFFF0000u;
    memcpy(&f, &u, 4);
    return f;
}

static void dot_rows_portable_bf16(const float *x, Py_ssize_t ldx, Py_ssize_t m, const uint16_t *w, Py_ssize_t ldw,
                                   Py_ssize_t n0, Py_ssize_t n1, Py_ssize_t k, float *out, Py_ssize_t ldo,
                                   const float *bias) {
    Py_ssize_t k8 = k - k % 8;
    for (Py_ssize_t n = n0; n < n1; n++) {
        const uint16_t *wr = w + n * ldw;
        for (Py_ssize_t i = 0; i < m; i++) {
            const float *xr = x + i * ldx;
            float p[8] = {0, 0, 0, 0, 0, 0, 0, 0};
            for (Py_ssize_t j = 0; j < k8; j += 8)
                for (int l = 0; l < 8; l++) p[l] += xr[j + l] * bf16_value(wr[j + l]);
            float s = ((p[0] + p[1]) + (p[2] + p[3])) + ((p[4] + p[5]) + (p[6] + p[7]));
            for (Py_ssize_t j = k8; j < k; j++) s += xr[j] * bf16_value(wr[j]);
            out[i * ldo + n] = bias ? s + bias[n] : s;
        }
    }
}

/* ---- AVX2 form ------------------------------------------------------------------------------------- */
#if HAVE_AVX2
/* The 4 sums of a0..a3's lanes, as one vector: ((l0+l1)+(l2+l3)) + ((l4+l5)+(l6+l7)) for each. */
AVX2 INLINE __m128 hsum4(__m256 a0, __m256 a1, __m256 a2, __m256 a3) {
    __m256 t0 = _mm256_hadd_ps(a0, a1), t1 = _mm256_hadd_ps(a2, a3);
    __m256 t2 = _mm256_hadd_ps(t0, t1);
    return _mm_add_ps(_mm256_castps256_ps128(t2), _mm256_extractf128_ps(t2, 1));
}

/* MB x rows against NB weight rows (MB <= 3, NB <= 4; constants at every call, so acc stays in registers). */
AVX2 INLINE void block(const int MB, const int NB, const float *x, Py_ssize_t ldx, const float *w,
                       Py_ssize_t ldw, Py_ssize_t k, float *out, Py_ssize_t ldo, const float *bias) {
    __m256 acc[3][4];
    for (int i = 0; i < 3; i++)
        for (int j = 0; j < 4; j++) acc[i][j] = _mm256_setzero_ps();
    Py_ssize_t k8 = k - k % 8;
    const float *next = w + NB * ldw; /* the next block's rows: fetched while this one computes */
    for (Py_ssize_t p = 0; p < k8; p += 8) {
        if (PREFETCH && (p & 15) == 0)
            for (int j = 0; j < 4; j++) _mm_prefetch((const char *)(next + j * ldw + p), _MM_HINT_T0);
        __m256 xv[3];
        for (int i = 0; i < MB; i++) xv[i] = _mm256_loadu_ps(x + i * ldx + p);
        for (int j = 0; j < NB; j++) {
            __m256 wv = _mm256_loadu_ps(w + j * ldw + p);
            for (int i = 0; i < MB; i++) acc[i][j] = _mm256_fmadd_ps(xv[i], wv, acc[i][j]);
        }
    }
    for (int i = 0; i < MB; i++) {
        float s[4];
        _mm_storeu_ps(s, hsum4(acc[i][0], acc[i][1], acc[i][2], acc[i][3]));
        for (int j = 0; j < NB; j++) {
            float v = s[j];
            for (Py_ssize_t p = k8; p < k; p++) v += x[i * ldx + p] * w[j * ldw + p];
            out[i * ldo + j] = bias ? v + bias[j] : v;
        }
    }
}

/* block() with bf16 weight rows: 8 bf16 widened exactly to float32 (a 16-bit shift) per load. */
AVX2 INLINE __m256 load_bf16(const uint16_t *p) {
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)p)), 16));
}

AVX2 INLINE void block_bf16(const int MB, const int NB, const float *x, Py_ssize_t ldx, const uint16_t *w,
                            Py_ssize_t ldw, Py_ssize_t k, float *out, Py_ssize_t ldo, const float *bias) {
    __m256 acc[3][4];
    for (int i = 0; i < 3; i++)
        for (int j = 0; j < 4; j++) acc[i][j] = _mm256_setzero_ps();
    Py_ssize_t k8 = k - k % 8;
    const uint16_t *next = w + NB * ldw;
    for (Py_ssize_t p = 0; p < k8; p += 8) {
        if (PREFETCH && (p & 31) == 0)
            for (int j = 0; j < 4; j++) _mm_prefetch((const char *)(next + j * ldw + p), _MM_HINT_T0);
        __m256 xv[3];
        for (int i = 0; i < MB; i++) xv[i] = _mm256_loadu_ps(x + i * ldx + p);
        for (int j = 0; j < NB; j++) {
            __m256 wv = load_bf16(w + j * ldw + p);
            for (int i = 0; i < MB; i++) acc[i][j] = _mm256_fmadd_ps(xv[i], wv, acc[i][j]);
        }
    }
    for (int i = 0; i < MB; i++) {
        float s[4];
        _mm_storeu_ps(s, hsum4(acc[i][0], acc[i][1], acc[i][2], acc[i][3]));
        for (int j = 0; j < NB; j++) {
            float v = s[j];
            for (Py_ssize_t p = k8; p < k; p++) v += x[i * ldx + p] * bf16_value(w[j * ldw + p]);
            out[i * ldo + j] = bias ? v + bias[j] : v;
        }
    }
}

AVX2 static void dot_rows_avx2_bf16(const float *x, Py_ssize_t ldx, Py_ssize_t m, const uint16_t *w, Py_ssize_t ldw,
                                    Py_ssize_t n0, Py_ssize_t n1, Py_ssize_t k, float *out, Py_ssize_t ldo,
                                    const float *bias) {
    Py_ssize_t n = n0;
    for (; n + 4 <= n1; n += 4) {
        const uint16_t *wn = w + n * ldw;
        const float *bn = bias ? bias + n : NULL;
        Py_ssize_t i = 0;
        for (; i + 3 <= m; i += 3) block_bf16(3, 4, x + i * ldx, ldx, wn, ldw, k, out + i * ldo + n, ldo, bn);
        if (m - i == 2) block_bf16(2, 4, x + i * ldx, ldx, wn, ldw, k, out + i * ldo + n, ldo, bn);
        if (m - i == 1) block_bf16(1, 4, x + i * ldx, ldx, wn, ldw, k, out + i * ldo + n, ldo, bn);
    }
    for (; n < n1; n++) {
        const uint16_t *wn = w + n * ldw;
        const float *bn = bias ? bias + n : NULL;
        Py_ssize_t i = 0;
        for (; i + 3 <= m; i += 3) block_bf16(3, 1, x + i * ldx, ldx, wn, ldw, k, out + i * ldo + n, ldo, bn);
        if (m - i == 2) block_bf16(2, 1, x + i * ldx, ldx, wn, ldw, k, out + i * ldo + n, ldo, bn);
        if (m - i == 1) block_bf16(1, 1, x + i * ldx, ldx, wn, ldw, k, out + i * ldo + n, ldo, bn);
    }
}

/* With AVX512_BF16: 32 bf16 of a weight row against 32 of an x row per vdpbf16ps (x converted to bf16 once),
 * 16 partial sums per (row, weight row), folded to 8 and reduced as hsum4 does. Another summation order than
 * the AVX2 form (the same products): the two agree to float32 rounding, not bit for bit; each is independent
 * of the other rows and of the column range. */
#define AVX512BF16 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,avx2,fma")))

#if HAVE_BF16_ISA
static int bf16_cpu(void) {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512bf16");
}

AVX512BF16 INLINE void block_dp(const int MB, const int NB, const uint16_t *x, Py_ssize_t ldx, const uint16_t *w,
                                Py_ssize_t ldw, Py_ssize_t k, float *out, Py_ssize_t ldo, const float *bias) {
    __m512 acc[3][4];
    for (int i = 0; i < 3; i++)
        for (int j = 0; j < 4; j++) acc[i][j] = _mm512_setzero_ps();
    const uint16_t *next = w + NB * ldw;
    for (Py_ssize_t p = 0; p < k; p += 32) {
        __mmask32 m = k - p >= 32 ? (__mmask32)0xFFFFFFFFu : (__mmask32)((1u << (k - p)) - 1);
        if (PREFETCH)
            for (int j = 0; j < 4; j++) _mm_prefetch((const char *)(next + j * ldw + p), _MM_HINT_T0);
        __m512bh xv[3];
        for (int i = 0; i < MB; i++) xv[i] = (__m512bh)_mm512_maskz_loadu_epi16(m, x + i * ldx + p);
        for (int j = 0; j < NB; j++) {
            __m512bh wv = (__m512bh)_mm512_maskz_loadu_epi16(m, w + j * ldw + p);
            for (int i = 0; i < MB; i++) acc[i][j] = _mm512_dpbf16_ps(acc[i][j], xv[i], wv);
        }
    }
    for (int i = 0; i < MB; i++) {
        __m256 h[4];
        for (int j = 0; j < 4; j++)
            h[j] = _mm256_add_ps(_mm512_castps512_ps256(acc[i][j]),
                                 _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(acc[i][j]), 1)));
        float s[4];
        _mm_storeu_ps(s, hsum4(h[0], h[1], h[2], h[3]));
        for (int j = 0; j < NB; j++) out[i * ldo + j] = bias ? s[j] + bias[j] : s[j];
    }
}

AVX512BF16 static void dot_rows_dp(const uint16_t *x, Py_ssize_t ldx, Py_ssize_t m, const uint16_t *w, Py_ssize_t ldw,
                                   Py_ssize_t n0, Py_ssize_t n1, Py_ssize_t k, float *out, Py_ssize_t ldo,
                                   const float *bias) {
    Py_ssize_t n = n0;
    for (; n + 4 <= n1; n += 4) {
        const uint16_t *wn = w + n * ldw;
        const float *bn = bias ? bias + n : NULL;
        Py_ssize_t i = 0;
        for (; i + 3 <= m; i += 3) block_dp(3, 4, x + i * ldx, ldx, wn, ldw, k, out + i * ldo + n, ldo, bn);
        if (m - i == 2) block_dp(2, 4, x + i * ldx, ldx, wn, ldw, k, out + i * ldo + n, ldo, bn);
        if (m - i == 1) block_dp(1, 4, x + i * ldx, ldx, wn, ldw, k, out + i * ldo + n, ldo, bn);
    }
    for (; n < n1; n++) {
        const uint16_t *wn = w + n * ldw;
        const float *bn = bias ? bias + n : NULL;
        Py_ssize_t i = 0;
        for (; i + 3 <= m; i += 3) block_dp(3, 1, x + i * ldx, ldx, wn, ldw, k, out + i * ldo + n, ldo, bn);
        if (m - i == 2) block_dp(2, 1, x + i * ldx, ldx, wn, ldw, k, out + i * ldo + n, ldo, bn);
        if (m - i == 1) block_dp(1, 1, x + i * ldx, ldx, wn, ldw, k, out + i * ldo + n, ldo, bn);
    }
}

#else
static int bf16_cpu(void) { return 0; }
#endif

AVX2 static void dot_rows_avx2(const float *x, Py_ssize_t ldx, Py_ssize_t m, const float *w, Py_ssize_t ldw,
                               Py_ssize_t n0, Py_ssize_t n1, Py_ssize_t k, float *out, Py_ssize_t ldo,
                               const float *bias) {
    Py_ssize_t n = n0;
    for (; n + 4 <= n1; n += 4) {
        const float *wn = w + n * ldw, *bn = bias ? bias + n : NULL;
        Py_ssize_t i = 0;
        for (; i + 3 <= m; i += 3) block(3, 4, x + i * ldx, ldx, wn, ldw, k, out + i * ldo + n, ldo, bn);
        if (m - i == 2) block(2, 4, x + i * ldx, ldx, wn, ldw, k, out + i * ldo + n, ldo, bn);
        if (m - i == 1) block(1, 4, x + i * ldx, ldx, wn, ldw, k, out + i * ldo + n, ldo, bn);
    }
    for (; n < n1; n++) { /* the last 1-3 weight rows */
        const float *wn = w + n * ldw, *bn = bias ? bias + n : NULL;
        Py_ssize_t i = 0;
        for (; i + 3 <= m; i += 3) block(3, 1, x + i * ldx, ldx, wn, ldw, k, out + i * ldo + n, ldo, bn);
        if (m - i == 2) block(2, 1, x + i * ldx, ldx, wn, ldw, k, out + i * ldo + n, ldo, bn);
        if (m - i == 1) block(1, 1, x + i * ldx, ldx, wn, ldw, k, out + i * ldo + n, ldo, bn);
    }
}
#endif

#if !HAVE_AVX2
static int bf16_cpu(void) { return 0; }
#endif

/* ---- Python API ------------------------------------------------------------------------------------ */
static PyObject *available(PyObject *self, PyObject *noargs) {
    (void)self, (void)noargs;
    return PyBool_FromLong(avx2_available());
}

/* A 2-D uint16 buffer with contiguous rows (bf16 weight rows). */
static int get_bf16_rows(PyObject *obj, Py_buffer *v, const char *name) {
    if (PyObject_GetBuffer(obj, v, PyBUF_STRIDES | PyBUF_FORMAT) < 0) return -1;
    const char *f = v->format ? v->format : "B";
    if (*f == '<' || *f == '=' || *f == '@') f++;
    int u16 = f[0] == 'H' && f[1] == '\0' && v->itemsize == 2;
    if (!u16 || v->ndim != 2 || (v->shape[1] > 1 && v->strides[1] != 2) || v->strides[0] % 2 ||
        (v->shape[0] > 1 && v->strides[0] < 2 * v->shape[1])) {
        PyErr_Format(u16 ? PyExc_ValueError : PyExc_TypeError, "%s must be a 2-D uint16 (bf16) array with "
                     "contiguous rows", name);
        PyBuffer_Release(v);
        return -1;
    }
    return 0;
}

static PyObject *product(PyObject *args, int bf16) {
    PyObject *xo, *wo, *oo, *bo = Py_None;
    Py_ssize_t n0 = 0, n1 = -1;
    int kernel = 0;
    if (!PyArg_ParseTuple(args, bf16 ? "OOO|Onni:matmul_nt_bf16" : "OOO|Onn:matmul_nt", &xo, &wo, &oo, &bo, &n0,
                          &n1, &kernel))
        return NULL;
    if (kernel < 0 || kernel > 2 || (kernel == 2 && !bf16_cpu()))
        return PyErr_Format(PyExc_ValueError, "kernel must be 0 (auto), 1 (fma) or 2 (avx512bf16, where the CPU "
                            "has it), got %d", kernel);
    int dp = kernel == 2 || (kernel == 0 && bf16_cpu());
    Py_buffer x, w, out, b;
    int have_b = 0, ok = 0;
    float *xr = NULL;
    if (get_rows_of(xo, &x, "x", 0) < 0) return NULL;
    if ((bf16 ? get_bf16_rows(wo, &w, "w") : get_rows_of(wo, &w, "w", 0)) < 0) goto release_x;
    if (get_rows(oo, &out, "out") < 0) goto release_w;
    Py_ssize_t m = x.shape[0], k = x.shape[1], n = w.shape[0];
    if (n1 < 0) n1 = n;
    if (w.shape[1] != k || out.shape[0] != m || out.shape[1] != n) {
        PyErr_Format(PyExc_ValueError, "shapes do not match: x (%zd, %zd), w (%zd, %zd), out (%zd, %zd)", m, k,
                     w.shape[0], w.shape[1], out.shape[0], out.shape[1]);
        goto release_out;
    }
    if (n0 < 0 || n0 > n1 || n1 > n) {
        PyErr_Format(PyExc_ValueError, "column range [%zd, %zd) is outside [0, %zd)", n0, n1, n);
        goto release_out;
    }
    if (bo != Py_None) {
        if (get_vector(bo, &b, "bias", n) < 0) goto release_out;
        have_b = 1;
    }
    {
        const float *xp = x.buf, *bp = have_b ? (const float *)b.buf : NULL;
        float *op = out.buf;
        Py_ssize_t ldx = x.strides[0] / 4, ldw = w.strides[0] / w.itemsize, ldo = out.strides[0] / 4;
        if (m == 1) ldx = k;
        if (n == 1) ldw = k;
        if (m == 1) ldo = n;
        if (bf16 && m > 0) { /* x rounded to bf16 as it enters the product: a rounded copy */
            xr = PyMem_RawMalloc((size_t)(m * k) * sizeof(float));
            if (xr == NULL) {
                PyErr_NoMemory();
                goto release_b;
            }
        }
        int simd = avx2_available();
        Py_BEGIN_ALLOW_THREADS
        if (bf16 && dp) {
#if HAVE_AVX2
            uint16_t *xb = (uint16_t *)xr;
            for (Py_ssize_t i = 0; i < m; i++)
                for (Py_ssize_t j = 0; j < k; j++) {
                    float f = bf16_round(xp[i * ldx + j]);
                    uint32_t u;
                    memcpy(&u, &f, 4);
                    xb[i * k + j] = (uint16_t)(u >> 16);
                }
#if HAVE_BF16_ISA
            dot_rows_dp(xb, k, m, w.buf, ldw, n0, n1, k, op, ldo, bp);
#endif
#endif
        } else if (bf16) {
            for (Py_ssize_t i = 0; i < m; i++)
                for (Py_ssize_t j = 0; j < k; j++) xr[i * k + j] = bf16_round(xp[i * ldx + j]);
#if HAVE_AVX2
            if (simd)
                dot_rows_avx2_bf16(xr, k, m, w.buf, ldw, n0, n1, k, op, ldo, bp);
            else
#endif
                dot_rows_portable_bf16(xr, k, m, w.buf, ldw, n0, n1, k, op, ldo, bp);
        } else {
#if HAVE_AVX2
            if (simd)
                dot_rows_avx2(xp, ldx, m, w.buf, ldw, n0, n1, k, op, ldo, bp);
            else
#endif
                dot_rows_portable(xp, ldx, m, w.buf, ldw, n0, n1, k, op, ldo, bp);
        }
        Py_END_ALLOW_THREADS
        (void)simd;
    }
    ok = 1;
release_b:
    PyMem_RawFree(xr);
    if (have_b) PyBuffer_Release(&b);
release_out:
    PyBuffer_Release(&out);
release_w:
    PyBuffer_Release(&w);
release_x:
    PyBuffer_Release(&x);
    if (!ok) return NULL;
    Py_RETURN_NONE;
}

static PyObject *matmul_nt(PyObject *self, PyObject *args) {
    (void)self;
    return product(args, 0);
}

static PyObject *native_bf16(PyObject *self, PyObject *noargs) {
    (void)self, (void)noargs;
    return PyBool_FromLong(bf16_cpu());
}

static PyObject *matmul_nt_bf16(PyObject *self, PyObject *args) {
    (void)self;
    return product(args, 1);
}

static PyMethodDef methods[] = {
    {"available", available, METH_NOARGS, "available() -> bool: the AVX2 + FMA kernel runs here."},
    {"matmul_nt", matmul_nt, METH_VARARGS,
     "matmul_nt(x, w, out, bias=None, n0=0, n1=N) -> None: out[:, n0:n1] = x @ w[n0:n1].T (+ bias)."},
    {"matmul_nt_bf16", matmul_nt_bf16, METH_VARARGS,
     "matmul_nt_bf16(x, w, out, bias=None, n0=0, n1=N, kernel=0) -> None: the same with bf16 weights (uint16) "
     "and x rounded to bf16; kernel 0 = the best here, 1 = AVX2 FMA, 2 = AVX512_BF16."},
    {"native_bf16", native_bf16, METH_NOARGS, "native_bf16() -> bool: the AVX512_BF16 form runs by default."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_gemv",
                                    "Few-row products with row-major weights for decoding (see _gemv.c).", -1,
                                    methods};

PyMODINIT_FUNC PyInit__gemv(void) { return PyModule_Create(&module); }
