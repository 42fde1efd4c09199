/* The bf16 form of _attention.c's panel (precision="bf16", docs/precision.md). Included by _attention.c once.
 *
 * Both products take bf16 operands in pairs, as `vdpbf16ps` reads them: S^T = K Q^T pairs head dimensions
 * (K2[j][d/2], Q^T as qt2[d/2][query]), O^T = V^T P^T pairs positions (V2[j/2][e], P^T as pt2[j/2][query]).
 * P is exp(S) rounded to bf16 as it is stored, and the denominators sum the rounded values in position
 * order. Per pair the sum takes the odd member first, then the even one, each one float32 rounding; the
 * "fma" instance does exactly that with two FMAs on the widened values, so it gives the same bits as the
 * "avx512bf16" instance (`vdpbf16ps`) on CPUs without AVX512_BF16.
 *
 * q, k and v must hold bf16 values (the encoder rounds its Q/K/V tensor): they are converted by dropping
 * their low 16 bits. Scratch (floats): bf16_scratch_size(t, hd).
 */
#ifndef AIOWHISPER_ATTENTION_BF16_H
#define AIOWHISPER_ATTENTION_BF16_H

static Py_ssize_t bf16_scratch_size(Py_ssize_t t, Py_ssize_t hd) {
    Py_ssize_t tp = (t + 1) / 2, tr = (t + PR - 1) / PR * PR;
    return tr * hd / 2 + tp * hd + hd / 2 * QW + tp * QW + PR * QW + QW; /* K2, V2, qt2, pt2, tile, 1/sums */
}

#if HAVE_SIMD

/* K2 (rows padded with zeros to a multiple of PR) and V2 of one head, from float32 rows holding bf16 values. */
AVX512 static void pack_kv(const float *k, Py_ssize_t lk, const float *v, Py_ssize_t lv, Py_ssize_t t,
                           Py_ssize_t hd, uint32_t *k2, uint32_t *v2) {
    Py_ssize_t tp = (t + 1) / 2, tr = (t + PR - 1) / PR * PR;
    const __m512i hi = _mm512_set1_epi32((int)0xFFFF0000u);
    for (Py_ssize_t j = 0; j < tr; j++)
        for (Py_ssize_t d = 0; d < hd; d += 16) {
            __mmask16 m = hd - d >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (hd - d)) - 1);
            __m512i x = j < t ? _mm512_maskz_loadu_epi32(m, k + j * lk + d) : _mm512_setzero_si512();
            _mm256_mask_storeu_epi16(k2 + j * hd / 2 + d / 2, m, _mm512_cvtepi32_epi16(_mm512_srli_epi32(x, 16)));
        }
    for (Py_ssize_t p = 0; p < tp; p++)
        for (Py_ssize_t e = 0; e < hd; e += 16) {
            __mmask16 m = hd - e >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (hd - e)) - 1);
            __m512i even = _mm512_maskz_loadu_epi32(m, v + 2 * p * lv + e);
            __m512i odd = 2 * p + 1 < t ? _mm512_maskz_loadu_epi32(m, v + (2 * p + 1) * lv + e) : _mm512_setzero_si512();
            _mm512_mask_storeu_epi32(v2 + p * hd + e, m,
                                     _mm512_or_si512(_mm512_srli_epi32(even, 16), _mm512_and_si512(odd, hi)));
        }
}

AVX512 SIMD_INLINE __m512 dp_fma(__m512 acc, __m512i a, __m512i b) {
    const __m512i hi = _mm512_set1_epi32((int)0xFFFF0000u);
    acc = _mm512_fmadd_ps(_mm512_castsi512_ps(_mm512_and_si512(a, hi)), _mm512_castsi512_ps(_mm512_and_si512(b, hi)),
                          acc);
    return _mm512_fmadd_ps(_mm512_castsi512_ps(_mm512_slli_epi32(a, 16)), _mm512_castsi512_ps(_mm512_slli_epi32(b, 16)),
                           acc);
}
#define DP_NATIVE(acc, a, b) _mm512_dpbf16_ps(acc, (__m512bh)(a), (__m512bh)(b))
#define DP_FMA(acc, a, b) dp_fma(acc, a, b)

/* acc[i][c] = sum over kp pairs of a[i * ais + p * ads] (a bf16 pair, broadcast) times b[p * ldb + 16 c ..]. */
#define ACCUMULATE_BF16(DP)                                                                                 \
    for (int i_ = 0; i_ < PR; i_++)                                                                         \
        for (int c_ = 0; c_ < 3; c_++) acc[i_][c_] = _mm512_setzero_ps();                                   \
    for (Py_ssize_t p_ = 0; p_ < kp; p_++) {                                                                \
        __m512i b_[3];                                                                                      \
        for (int c_ = 0; c_ < 3; c_++) b_[c_] = _mm512_loadu_si512(bb + p_ * QW + 16 * c_);                 \
        for (int i_ = 0; i_ < PR; i_++) {                                                                   \
            __m512i x_ = _mm512_set1_epi32((int)aa[i_ * ais + p_ * ads]);                                   \
            for (int c_ = 0; c_ < 3; c_++) acc[i_][c_] = DP(acc[i_][c_], x_, b_[c_]);                       \
        }                                                                                                   \
    }

#define PANEL_BF16(NAME, ATTR, DP)                                                                          \
    ATTR static int NAME(const float *q, Py_ssize_t lq, Py_ssize_t w, const uint32_t *k2, const uint32_t *v2, \
                         Py_ssize_t t, Py_ssize_t hd, float *out, Py_ssize_t lo, uint32_t *qt2, uint32_t *pt2,     \
                         float *tile, float *inv_sum) {                                                     \
        Py_ssize_t hp = hd / 2, tp = (t + 1) / 2;                                                           \
        __mmask16 mask[4];                                                                                  \
        tail_masks(w, mask);                                                                                \
        for (Py_ssize_t p = 0; p < hp; p++)                                                                 \
            for (Py_ssize_t c = 0; c < QW; c++) {                                                           \
                uint32_t lo_, hi_;                                                                          \
                if (c < w) {                                                                                \
                    memcpy(&lo_, q + c * lq + 2 * p, 4), memcpy(&hi_, q + c * lq + 2 * p + 1, 4);           \
                    qt2[p * QW + c] = (lo_ >> 16) | (hi_ & 0xFFFF0000u);                                    \
                } else                                                                                      \
                    qt2[p * QW + c] = 0;                                                                    \
            }                                                                                               \
        __m512 sum[3] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps()};                    \
        __m512 acc[PR][4];                                                                                  \
        for (Py_ssize_t j0 = 0; j0 < t; j0 += PR) {                                                         \
            Py_ssize_t rows = t - j0 < PR ? t - j0 : PR, kp = hp, ais = hp, ads = 1;                        \
            const uint32_t *aa = k2 + j0 * hp, *bb = qt2;                                                   \
            ACCUMULATE_BF16(DP)                                                                             \
            for (Py_ssize_t i = 0; i < rows; i += 2)                                                        \
                for (int c = 0; c < 3; c++) {                                                               \
                    __m512 e0 = round16_bf16(exp16_in_range(acc[i][c]));                                    \
                    __m512 e1 = i + 1 < rows ? round16_bf16(exp16_in_range(acc[i + 1][c])) : _mm512_setzero_ps(); \
                    sum[c] = _mm512_add_ps(_mm512_add_ps(sum[c], e0), e1);                                  \
                    __m512i pair = _mm512_or_si512(_mm512_srli_epi32(_mm512_castps_si512(e0), 16),          \
                                                   _mm512_castps_si512(e1));                                \
                    _mm512_storeu_si512(pt2 + (j0 + i) / 2 * QW + 16 * c, pair);                            \
                }                                                                                           \
        }                                                                                                   \
        for (int c = 0; c < 3; c++) _mm512_storeu_ps(inv_sum + 16 * c, _mm512_div_ps(_mm512_set1_ps(1.0f), sum[c])); \
        __m512 bad = _mm512_setzero_ps();                                                                   \
        for (Py_ssize_t e0 = 0; e0 < hd; e0 += PR) {                                                        \
            Py_ssize_t kp = tp, ais = 1, ads = hd;                                                          \
            const uint32_t *aa = v2 + e0, *bb = pt2;                                                        \
            ACCUMULATE_BF16(DP)                                                                             \
            for (int i = 0; i < PR; i++)                                                                    \
                for (int c = 0; c < 3; c++) {                                                               \
                    __m512 o = _mm512_mul_ps(acc[i][c], _mm512_loadu_ps(inv_sum + 16 * c));                 \
                    bad = _mm512_add_ps(bad, _mm512_maskz_mul_ps(mask[c], o, _mm512_setzero_ps()));         \
                    _mm512_storeu_ps(tile + i * QW + 16 * c, o);                                            \
                }                                                                                           \
            for (Py_ssize_t c = 0; c < w; c++)                                                              \
                for (int i = 0; i < PR; i++) out[c * lo + e0 + i] = tile[i * QW + c];                       \
        }                                                                                                   \
        return _mm512_cmp_ps_mask(bad, bad, _CMP_UNORD_Q) == 0;                                             \
    }

#if HAVE_BF16_ISA
PANEL_BF16(panel_bf16_native, AVX512BF16, DP_NATIVE)
#else
#define panel_bf16_native panel_bf16_fma /* never chosen: bf16_available() is 0 */
#endif
PANEL_BF16(panel_bf16_fma, AVX512, DP_FMA)

/* One head of heads() in bf16: K2/V2 once, then every panel of QW queries. Returns 0 if an output is not finite. */
static int head_bf16(const float *q, Py_ssize_t lq, Py_ssize_t n, const float *k, Py_ssize_t lk, const float *v,
                     Py_ssize_t lv, Py_ssize_t t, Py_ssize_t hd, float *out, Py_ssize_t lo, float *scratch,
                     int native) {
    Py_ssize_t tp = (t + 1) / 2, tr = (t + PR - 1) / PR * PR;
    uint32_t *k2 = (uint32_t *)scratch, *v2 = k2 + tr * hd / 2, *qt2 = v2 + tp * hd, *pt2 = qt2 + hd / 2 * QW;
    float *tile = (float *)(pt2 + tp * QW), *inv_sum = tile + PR * QW;
    pack_kv(k, lk, v, lv, t, hd, k2, v2);
    for (Py_ssize_t r = 0; r < n; r += QW) {
        Py_ssize_t w = n - r < QW ? n - r : QW;
        int ok = native ? panel_bf16_native(q + r * lq, lq, w, k2, v2, t, hd, out + r * lo, lo, qt2, pt2, tile, inv_sum)
                        : panel_bf16_fma(q + r * lq, lq, w, k2, v2, t, hd, out + r * lo, lo, qt2, pt2, tile, inv_sum);
        if (!ok) return 0;
    }
    return 1;
}
#endif
#endif
