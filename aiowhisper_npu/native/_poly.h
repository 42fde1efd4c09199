/* Polynomial coefficients shared by the C kernels' scalar (_fastmath.c) and AVX-512 (_simd.h) forms, so
 * both evaluate the same formulas. Header-only constants.
 *
 * exp: Cephes' expf. Cody-Waite reduction r = x - n ln 2 with ln 2 = EXP_LN2_HI + EXP_LN2_LO (HI exact in
 * float), then e^r = 1 + r + r^2 P(r) with P of degree 5 in EXP_P0..EXP_P5 (Horner from P0), |r| <= ln(2)/2.
 * GELU: x * (0.5 + 0.5 erf(x / sqrt 2)) with Eigen's/XLA's float32 rational erf on [-4, 4]: numerator
 * coefficients ERF_A0..ERF_A6, already halved (the kernels evaluate 0.5 * erf directly), denominator
 * ERF_B0..ERF_B4 (Horner in t^2; the numerator is then multiplied by t). kernels.gelu_ is the numpy form.
 */
#ifndef AIOWHISPER_POLY_H
#define AIOWHISPER_POLY_H

#define EXP_LOG2E 1.44269504088896341f
#define EXP_LN2_HI 0.693359375f
#define EXP_LN2_LO -2.12194440e-4f
#define EXP_P0 1.9875691500e-4f
#define EXP_P1 1.3981999507e-3f
#define EXP_P2 8.3334519073e-3f
#define EXP_P3 4.1665795894e-2f
#define EXP_P4 1.6666665459e-1f
#define EXP_P5 5.0000001201e-1f

#define GELU_SQRT1_2 0.70710678118654752f
#define ERF_A0 (0.5f * -2.72614225801306e-10f)
#define ERF_A1 (0.5f * 2.77068142495902e-08f)
#define ERF_A2 (0.5f * -2.10102402082508e-06f)
#define ERF_A3 (0.5f * -5.69250639462346e-05f)
#define ERF_A4 (0.5f * -7.34990630326855e-04f)
#define ERF_A5 (0.5f * -2.95459980854025e-03f)
#define ERF_A6 (0.5f * -1.60960333262415e-02f)
#define ERF_B0 -1.45660718464996e-05f
#define ERF_B1 -2.13374055278905e-04f
#define ERF_B2 -1.68282697438203e-03f
#define ERF_B3 -7.37332916720468e-03f
#define ERF_B4 -1.42647390514189e-02f

#endif
