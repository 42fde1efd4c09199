/* AVX-512 building blocks shared by the C matrix kernels (_gemm.c, _attention.c). Header-only.
 *
 *   accumulate(mr, nv, kc, a, ais, ads, b, ldb, acc)
 *       acc[i][v] = sum_{d < kc} a[i * ais + d * ads] * b[d * ldb + 16 v .. + 16]  for i < mr, v < nv.
 *       A register-blocked rank-kc update (mr x 16 nv accumulators, mr * nv <= 24): the strides let A be a
 *       packed micro-panel (ais = 1, ads = MR), plain rows (ais = lda, ads = 1) or columns (ais = 1,
 *       ads = lda) without a copy. mr and nv must be compile-time constants at the call (the function is
 *       always inlined, so the loops unroll and acc lives in registers).
 *   gelu16(x)   x * (0.5 + 0.5 erf(x / sqrt 2)) with kernels.gelu_'s float32 rational erf.
 *   exp16_in_range(x)   Cephes' expf (Cody-Waite reduction, degree-5 polynomial, ~1 ulp; the formula of
 *               _fastmath's exp) without its range handling: for finite x in [-87.3, 88.7]; beyond it the
 *               result is +inf, 0 or NaN (NaN for NaN), which callers must detect.
 *   tail_masks(width, mask)   masks of the 4 vectors covering `width` (<= 64) columns.
 *   simd_available()          1 when these blocks are compiled in and the CPU runs them (AVX-512 F/DQ/VL/BW).
 */
#ifndef AIOWHISPER_SIMD_H
#define AIOWHISPER_SIMD_H

#if defined(__GNUC__) && defined(__x86_64__)
#define HAVE_SIMD 1
#include <immintrin.h>
#include <stddef.h>
#define AVX512 __attribute__((target("avx512f,avx512dq,avx512vl,avx512bw,fma")))
#define SIMD_INLINE static inline __attribute__((always_inline))

AVX512 SIMD_INLINE void accumulate(const int mr, const int nv, ptrdiff_t kc, const float *restrict a, ptrdiff_t ais,
                                   ptrdiff_t ads, const float *restrict b, ptrdiff_t ldb, __m512 acc[][4]) {
    for (int i = 0; i < mr; i++)
        for (int v = 0; v < nv; v++) acc[i][v] = _mm512_setzero_ps();
    for (ptrdiff_t d = 0; d < kc; d++) {
        __m512 bv[4];
        for (int v = 0; v < nv; v++) bv[v] = _mm512_loadu_ps(b + d * ldb + 16 * v);
        for (int i = 0; i < mr; i++) {
            __m512 x = _mm512_set1_ps(a[i * ais + d * ads]);
            for (int v = 0; v < nv; v++) acc[i][v] = _mm512_fmadd_ps(x, bv[v], acc[i][v]);
        }
    }
}

AVX512 SIMD_INLINE void tail_masks(ptrdiff_t width, __mmask16 mask[4]) {
    for (int v = 0; v < 4; v++) {
        ptrdiff_t left = width - 16 * v;
        mask[v] = left >= 16 ? (__mmask16)0xFFFF : left > 0 ? (__mmask16)((1u << left) - 1) : 0;
    }
}

AVX512 SIMD_INLINE __m512 gelu16(__m512 y) {
    __m512 t = _mm512_mul_ps(y, _mm512_set1_ps(0.70710678118654752f));
    t = _mm512_min_ps(_mm512_max_ps(t, _mm512_set1_ps(-4.0f)), _mm512_set1_ps(4.0f));
    __m512 u = _mm512_mul_ps(t, t);
    __m512 p = _mm512_fmadd_ps(_mm512_set1_ps(0.5f * -2.72614225801306e-10f), u,
                               _mm512_set1_ps(0.5f * 2.77068142495902e-08f));
    p = _mm512_fmadd_ps(p, u, _mm512_set1_ps(0.5f * -2.10102402082508e-06f));
    p = _mm512_fmadd_ps(p, u, _mm512_set1_ps(0.5f * -5.69250639462346e-05f));
    p = _mm512_fmadd_ps(p, u, _mm512_set1_ps(0.5f * -7.34990630326855e-04f));
    p = _mm512_fmadd_ps(p, u, _mm512_set1_ps(0.5f * -2.95459980854025e-03f));
    p = _mm512_fmadd_ps(p, u, _mm512_set1_ps(0.5f * -1.60960333262415e-02f));
    __m512 q = _mm512_fmadd_ps(_mm512_set1_ps(-1.45660718464996e-05f), u, _mm512_set1_ps(-2.13374055278905e-04f));
    q = _mm512_fmadd_ps(q, u, _mm512_set1_ps(-1.68282697438203e-03f));
    q = _mm512_fmadd_ps(q, u, _mm512_set1_ps(-7.37332916720468e-03f));
    q = _mm512_fmadd_ps(q, u, _mm512_set1_ps(-1.42647390514189e-02f));
    __m512 half_erf = _mm512_div_ps(_mm512_mul_ps(p, t), q);
    return _mm512_mul_ps(y, _mm512_add_ps(half_erf, _mm512_set1_ps(0.5f)));
}

AVX512 SIMD_INLINE __m512 exp16_in_range(__m512 x) {
    __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                    _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x); /* Cody-Waite: ln 2 = C1 + C2 */
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
    __m512 z = _mm512_mul_ps(r, r);
    __m512 p = _mm512_fmadd_ps(_mm512_set1_ps(1.9875691500e-4f), r, _mm512_set1_ps(1.3981999507e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
    p = _mm512_fmadd_ps(p, z, _mm512_add_ps(r, _mm512_set1_ps(1.0f))); /* e^r, |r| <= ln(2) / 2 */
    return _mm512_scalef_ps(p, n);                                      /* p * 2^n */
}

#else
#define HAVE_SIMD 0
#endif

static inline int simd_available(void) {
#if HAVE_SIMD
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") &&
           __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512bw");
#else
    return 0;
#endif
}

#endif
