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
 *   bf16_available()          1 when the AVX512_BF16 kernels (target AVX512BF16) are compiled in and the CPU runs them.
 */
#ifndef AIOWHISPER_SIMD_H
#define AIOWHISPER_SIMD_H

#if defined(__GNUC__) && defined(__x86_64__)
#define HAVE_SIMD 1
#include <immintrin.h>
#include <stddef.h>

#include "_poly.h"
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
#define C(v) _mm512_set1_ps(v)
    __m512 t = _mm512_mul_ps(y, C(GELU_SQRT1_2));
    t = _mm512_min_ps(_mm512_max_ps(t, C(-4.0f)), C(4.0f));
    __m512 u = _mm512_mul_ps(t, t);
    __m512 p = _mm512_fmadd_ps(C(ERF_A0), u, C(ERF_A1));
    p = _mm512_fmadd_ps(p, u, C(ERF_A2));
    p = _mm512_fmadd_ps(p, u, C(ERF_A3));
    p = _mm512_fmadd_ps(p, u, C(ERF_A4));
    p = _mm512_fmadd_ps(p, u, C(ERF_A5));
    p = _mm512_fmadd_ps(p, u, C(ERF_A6));
    __m512 q = _mm512_fmadd_ps(C(ERF_B0), u, C(ERF_B1));
    q = _mm512_fmadd_ps(q, u, C(ERF_B2));
    q = _mm512_fmadd_ps(q, u, C(ERF_B3));
    q = _mm512_fmadd_ps(q, u, C(ERF_B4));
    __m512 half_erf = _mm512_div_ps(_mm512_mul_ps(p, t), q);
    return _mm512_mul_ps(y, _mm512_add_ps(half_erf, C(0.5f)));
}

AVX512 SIMD_INLINE __m512 exp16_in_range(__m512 x) {
    __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, C(EXP_LOG2E)), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, C(EXP_LN2_HI), x); /* Cody-Waite: ln 2 = HI + LO */
    r = _mm512_fnmadd_ps(n, C(EXP_LN2_LO), r);
    __m512 z = _mm512_mul_ps(r, r);
    __m512 p = _mm512_fmadd_ps(C(EXP_P0), r, C(EXP_P1));
    p = _mm512_fmadd_ps(p, r, C(EXP_P2));
    p = _mm512_fmadd_ps(p, r, C(EXP_P3));
    p = _mm512_fmadd_ps(p, r, C(EXP_P4));
    p = _mm512_fmadd_ps(p, r, C(EXP_P5));
    p = _mm512_fmadd_ps(p, z, _mm512_add_ps(r, C(1.0f))); /* e^r, |r| <= ln(2) / 2 */
    return _mm512_scalef_ps(p, n);                        /* p * 2^n */
#undef C
}

#else
#define HAVE_SIMD 0
#endif

/* The compiler knows the AVX512_BF16 intrinsics (GCC 10, clang 9); else only the FMA forms are built. */
#if !defined(NO_BF16_ISA) && ((defined(__clang__) && __clang_major__ >= 9) || (!defined(__clang__) && __GNUC__ >= 10))
#define HAVE_BF16_ISA 1
#else
#define HAVE_BF16_ISA 0
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

/* AVX512_BF16 (vdpbf16ps) on top of the blocks above: the target of the bf16 kernels (_gemm_bf16.c,
 * _attention_bf16.h), and whether the CPU runs them. */
#define AVX512BF16 __attribute__((target("avx512f,avx512dq,avx512vl,avx512bw,avx512bf16,fma")))

static inline int bf16_available(void) {
#if HAVE_SIMD && HAVE_BF16_ISA
    return simd_available() && __builtin_cpu_supports("avx512bf16");
#else
    return 0;
#endif
}

#endif
