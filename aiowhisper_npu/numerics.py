"""The element-wise numerics the encoder, the decoder and the simulated NPU share, and the C-kernel switches.

- :func:`gelu_` and :func:`bias_gelu_`: exact (erf) GELU, after a bias;
- :func:`layer_norm`, :func:`add_norm_` (bias + residual + layer norm) and :func:`layer_norm_affine`;
- :func:`exp_rows_`: a softmax's row ``exp`` (shifted by the row maximum or not);
- :func:`round_bf16_`: rounding to bf16 values in place;
- the switches: which optional C kernels (:mod:`aiowhisper_npu.native`) run. :func:`use_native` turns all
  of them on or off, :func:`use_bf16_kernel` picks the bf16 GEMM kernel; :data:`switches` holds the
  current choice for the kernels that consult it.

The element-wise passes run in one fused C pass each when :mod:`aiowhisper_npu.native`'s ``fastmath`` is
built (it is, by ``pip install``), else as numpy passes with the same formulas. Layer norms here have no
affine part unless named so: the kernels fold the scales into the following linear layer.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .bf16 import round_bf16
from .native import attention as attention_c, fastmath, gemm, gemm_bf16

__all__ = ["LN_EPS", "PRECISIONS", "BF16_KERNELS", "NativeSwitches", "switches", "native_available",
           "packed_gemm_available", "fused_attention_available", "bf16_gemm_available", "bf16_gemm_kernel",
           "use_bf16_kernel", "use_native", "round_bf16_", "gelu_", "bias_gelu_", "layer_norm", "add_norm_",
           "layer_norm_affine", "exp_rows_"]

LN_EPS = 1e-5
PRECISIONS = ("fp32", "bf16")
BF16_KERNELS = {"auto": 0, "fma": 1, "avx512bf16": 2}  # the C bf16 products' kernel argument
_SQRT1_2 = np.float32(0.7071067811865476)

# Rational approximation of erf on [-4, 4] (the float32 form used by Eigen and XLA; a few ulp from the true
# erf, far below the fp32 rounding of the GEMMs around it). Coefficients are pre-halved so the kernel
# evaluates 0.5 * erf(t) directly.
_ERF_ALPHA = tuple(np.float32(0.5 * c) for c in (
    -2.72614225801306e-10, 2.77068142495902e-08, -2.10102402082508e-06, -5.69250639462346e-05,
    -7.34990630326855e-04, -2.95459980854025e-03, -1.60960333262415e-02,
))
_ERF_BETA = tuple(np.float32(c) for c in (
    -1.45660718464996e-05, -2.13374055278905e-04, -1.68282697438203e-03, -7.37332916720468e-03,
    -1.42647390514189e-02,
))


def native_available() -> bool:
    """True when the fused C element-wise kernels (``native.fastmath``) are built."""
    return fastmath is not None


def packed_gemm_available() -> bool:
    """True when the packed-weight GEMM (``native.gemm``) is built and this CPU can run it."""
    return gemm is not None and bool(gemm.available())


def fused_attention_available() -> bool:
    """True when the fused attention kernel (``native.attention``) is built and can run here."""
    return attention_c is not None and bool(attention_c.available())


def bf16_gemm_available() -> bool:
    """True when the packed bf16 GEMM (``native.gemm_bf16``) is built and this CPU can run it."""
    return gemm_bf16 is not None and bool(gemm_bf16.available())


@dataclass
class NativeSwitches:
    """Which C kernels run now (each only where it is available): the fused element-wise passes, the
    packed-weight GEMM, the fused attention, the packed bf16 GEMM, and the bf16 products' kernel argument
    (a value of :data:`BF16_KERNELS`). Process-wide; set through :func:`use_native` and
    :func:`use_bf16_kernel`, read by the kernels on every call."""

    elementwise: bool
    gemm: bool
    attention: bool
    bf16_gemm: bool
    bf16_kernel: int = 0


switches = NativeSwitches(native_available(), packed_gemm_available(), fused_attention_available(),
                          bf16_gemm_available())


def bf16_gemm_kernel() -> str:
    """The kernel that runs precision="bf16"'s linear layers here: ``"avx512bf16"`` (``vdpbf16ps``), ``"fma"``
    (AVX-512F FMAs on bf16-rounded values, bit-identical) or ``"numpy"`` (BLAS on bf16-rounded operands)."""
    if not switches.bf16_gemm:
        return "numpy"
    if switches.bf16_kernel == 1 or (switches.bf16_kernel == 0 and not gemm_bf16.native_bf16()):
        return "fma"
    return "avx512bf16"


def use_bf16_kernel(kernel: str) -> str:
    """Force the bf16 GEMM kernel: ``"auto"`` (default: the best this CPU runs), ``"fma"`` or
    ``"avx512bf16"`` (ValueError where the CPU lacks it). Process-wide, for tests and benchmarks; returns
    the previous setting."""
    if kernel not in BF16_KERNELS:
        raise ValueError(f"kernel must be one of {sorted(BF16_KERNELS)}, got {kernel!r}")
    if kernel == "avx512bf16" and not (gemm_bf16 is not None and gemm_bf16.native_bf16()):
        raise ValueError("this CPU (or build) has no AVX512_BF16 kernel")
    previous = next(k for k, v in BF16_KERNELS.items() if v == switches.bf16_kernel)
    switches.bf16_kernel = BF16_KERNELS[kernel]
    return previous


def use_native(enabled: bool) -> bool:
    """Use the C kernels (``True``, the default when built): the fused element-wise passes, the
    packed-weight GEMM and the fused attention; or (``False``) their numpy forms: numpy passes and BLAS.

    Process-wide; returns the previous setting. The two agree to float32 rounding, not bit for bit, so
    switch only while no encoder kernels run (tests use it to check the numpy forms too).
    """
    previous = switches.elementwise or switches.gemm or switches.attention
    switches.elementwise = bool(enabled) and native_available()
    switches.gemm = bool(enabled) and packed_gemm_available()
    switches.attention = bool(enabled) and fused_attention_available()
    switches.bf16_gemm = bool(enabled) and bf16_gemm_available()
    return previous


def round_bf16_(x: np.ndarray) -> np.ndarray:
    """Round a 2-D float32 array (contiguous rows) to bf16 values in place, ties to even."""
    if switches.bf16_gemm:
        gemm_bf16.round_(x)
    else:
        x[...] = round_bf16(x)
    return x


def gelu_(x: np.ndarray, scratch: np.ndarray) -> np.ndarray:
    """In-place exact (erf) GELU, ``x * 0.5 * (1 + erf(x / sqrt(2)))``.

    ``scratch`` is a flat float32 array of at least ``3 * x.size`` elements (no allocation per call).
    """
    t, x2, p = (scratch[i * x.size : (i + 1) * x.size].reshape(x.shape) for i in range(3))
    np.multiply(x, _SQRT1_2, out=t)
    np.clip(t, -4.0, 4.0, out=t)
    np.multiply(t, t, out=x2)
    np.multiply(x2, _ERF_ALPHA[0], out=p)
    for c in _ERF_ALPHA[1:-1]:
        p += c
        p *= x2
    p += _ERF_ALPHA[-1]
    p *= t  # 0.5 * numerator; t is free from here on
    q = np.multiply(x2, _ERF_BETA[0], out=t)
    for c in _ERF_BETA[1:-1]:
        q += c
        q *= x2
    q += _ERF_BETA[-1]
    p /= q  # 0.5 * erf(x / sqrt(2))
    p += np.float32(0.5)
    x *= p
    return x


def bias_gelu_(x: np.ndarray, b: np.ndarray, scratch: np.ndarray) -> np.ndarray:
    """In place ``x = gelu(x + b)`` for a 2-D ``x`` with contiguous rows; ``scratch`` as for :func:`gelu_`."""
    if switches.elementwise:
        fastmath.bias_gelu(x, b)
        return x
    x += b
    return gelu_(x, scratch)


def layer_norm(x: np.ndarray, out: np.ndarray) -> np.ndarray:
    """Normalise rows of ``x`` into ``out`` with numpy (no affine part: it is folded into the next linear
    layer)."""
    mean = x.mean(axis=1, keepdims=True)
    np.subtract(x, mean, out=out)
    var = np.einsum("ij,ij->i", out, out)[:, None]
    var *= np.float32(1.0 / x.shape[1])
    var += np.float32(LN_EPS)
    np.sqrt(var, out=var)
    out /= var
    return out


def add_norm_(x: np.ndarray, b: np.ndarray | None, r: np.ndarray | None, out: np.ndarray | None) -> None:
    """In place ``x += b`` and ``x += r`` (each when given), then ``out = layer_norm(x)`` when ``out`` is given
    (no affine part). One fused pass per row with the C extension, else numpy passes."""
    if switches.elementwise:
        fastmath.add_norm(x, b, r, out, LN_EPS)
        return
    if b is not None:
        x += b
    if r is not None:
        x += r
    if out is not None:
        layer_norm(x, out)


def layer_norm_affine(x: np.ndarray, w: np.ndarray, b: np.ndarray, out: np.ndarray) -> np.ndarray:
    """``out = layer_norm(x) * w + b`` (numpy)."""
    layer_norm(x, out)
    out *= w
    out += b
    return out


def exp_rows_(s: np.ndarray, shift: bool, rowmax: np.ndarray | None = None) -> np.ndarray:
    """In place ``s = exp(s - rowmax(s))`` when ``shift``, else ``s = exp(s)``, for a 2-D float32 array with
    contiguous rows: one C pass, or numpy (``rowmax``: optional ``(rows, 1)`` scratch for the maxima)."""
    if switches.elementwise:
        fastmath.exp_rows(s, shift)
    else:
        if shift:
            s -= np.max(s, axis=1, keepdims=True, out=rowmax)
        np.exp(s, out=s)
    return s
