"""precision="bf16" kernels (docs/precision.md): the AVX512_BF16 GEMM, its AVX-512F FMA fallback and the numpy
reference against each other; bf16 rounding; the attention products' bf16 form."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from aiowhisper_npu import numerics
from aiowhisper_npu.bf16 import round_bf16, to_bf16_bits
from aiowhisper_npu.encoder import kernels

gb = pytest.importorskip("aiowhisper_npu.native._gemm_bf16")
if not gb.available():
    pytest.skip("the bf16 GEMM kernels need AVX-512", allow_module_level=True)

HAS_BF16 = gb.native_bf16()
KERNELS = [1, 2] if HAS_BF16 else [1]  # 1: the FMA fallback, 2: vdpbf16ps
REL = 2e-6  # the numpy reference (BLAS, another summation order) against the kernels, relative L2


def _packed(w: np.ndarray) -> np.ndarray:
    out = np.empty(gb.packed_shape(*w.shape), np.uint16)
    gb.pack(w, out)
    return out


def _scratch() -> np.ndarray:
    return np.empty(gb.SCRATCH_FLOATS, np.float32)


def _exact_order(a: np.ndarray, w: np.ndarray) -> np.ndarray:
    """The kernels' definition, spelled out in numpy: bf16 operands; per pass of KC depths, from zero, pairs
    (k, k + 1) with k + 1 added first, each addition one float32 rounding; the passes then summed in order."""
    a, w = round_bf16(a), round_bf16(w)
    m, k = a.shape
    out = np.zeros((m, w.shape[1]), np.float32)
    for d0 in range(0, k, gb.KC):
        acc = np.zeros_like(out)
        for d in range(d0, min(k, d0 + gb.KC), 2):
            for e in (d + 1, d):
                if e < k:
                    acc += np.multiply.outer(a[:, e], w[e])  # exact: a product of two bf16 values
        out = acc if d0 == 0 else out + acc
    return out


def _rel_l2(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.linalg.norm(got.astype(np.float64) - want) / np.linalg.norm(want.astype(np.float64)))


def test_dispatch_follows_the_cpu() -> None:
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    assert HAS_BF16 == (" avx512_bf16" in flags)
    assert numerics.bf16_gemm_kernel() == ("avx512bf16" if HAS_BF16 else "fma")
    previous = numerics.use_bf16_kernel("fma")
    try:
        assert numerics.bf16_gemm_kernel() == "fma"
    finally:
        numerics.use_bf16_kernel(previous)
    with pytest.raises(ValueError):
        numerics.use_bf16_kernel("avx2")


@pytest.mark.parametrize("m, k, n", [
    (1, 1, 1), (5, 7, 3), (6, 64, 64), (7, 65, 65), (13, 1100, 129), (400, 600, 100), (25, 1031, 70),
])
def test_kernels_are_bit_identical_to_the_exact_order_definition(m: int, k: int, n: int) -> None:
    rng = np.random.default_rng(m * 7 + k * 3 + n)
    a = rng.standard_normal((m, k), dtype=np.float32)
    w = rng.standard_normal((k, n), dtype=np.float32)
    want = _exact_order(a, w)
    for kernel in KERNELS:
        out = np.full((m, n), np.nan, np.float32)
        gb.gemm(a, _packed(w), out, None, False, _scratch(), kernel)
        assert np.array_equal(out, want), f"kernel {kernel}"
    blas = round_bf16(a) @ round_bf16(w)  # the numpy reference: same products, BLAS's summation order
    assert _rel_l2(out, blas) <= REL


def test_epilogue_and_the_numpy_form_of_linear() -> None:
    rng = np.random.default_rng(3)
    a = rng.standard_normal((50, 300), dtype=np.float32) * 0.2
    w = round_bf16(rng.standard_normal((300, 200), dtype=np.float32) * 0.2)
    b = rng.standard_normal(200, dtype=np.float32)
    outs = []
    for kernel in KERNELS:
        got = np.empty((50, 200), np.float32)
        gb.gemm(a, _packed(w), got, b, True, _scratch(), kernel)
        outs.append(got)
    assert all(np.array_equal(o, outs[0]) for o in outs)
    res = {"0.fc1_w": w, **kernels.pack_weights({"0.fc1_w": w}, "bf16")}
    ws = type("WS", (), {"c_scratch": _scratch(), "gelu": np.empty(3 * a.shape[0] * 200, np.float32),
                         "bf16": True})()
    fast = kernels.linear_(res, "0.fc1_w", a, np.empty((50, 200), np.float32), ws, b, gelu=True)  # type: ignore[arg-type]
    assert np.array_equal(fast, outs[-1])
    previous = numerics.use_native(False)
    try:
        slow = kernels.linear_(res, "0.fc1_w", a, np.empty((50, 200), np.float32), ws, b, gelu=True)  # type: ignore[arg-type]
    finally:
        numerics.use_native(previous)
    assert np.max(np.abs(fast - slow)) <= 1e-5 * max(1.0, float(np.abs(slow).max()))


def test_rounding_is_nearest_even_in_every_form() -> None:
    x = np.array([[1.0, 1 + 2**-8, 1 + 3 * 2**-8, -2.5, np.inf, -np.inf, 0.0, -0.0, 3.3e38, 1e-40, np.nan,
                   1 + 2**-8 + 2**-20]], np.float32)
    want = round_bf16(x)
    got = x.copy()
    gb.round_(got)
    assert np.array_equal(got, want, equal_nan=True)
    assert np.array_equal(want[0, :4], [1.0, 1.0, 1 + 2**-6, -2.5]) and want[0, -1] == 1 + 2**-7
    w = np.nan_to_num(x[:, :-2].T.copy(), nan=0.0)  # packed weights: the same bits (k = 10 rows, n = 1)
    assert np.array_equal(_packed(w)[0, :, [0, 1]].T.reshape(-1)[: w.shape[0]], to_bf16_bits(w[:, 0]))


def test_a_row_gives_the_same_bits_in_any_tile() -> None:
    rng = np.random.default_rng(5)
    a = rng.standard_normal((100, 700), dtype=np.float32)
    w = _packed(rng.standard_normal((700, 130), dtype=np.float32))
    whole = np.empty((100, 130), np.float32)
    gb.gemm(a, w, whole, None, False, _scratch())
    for r0, r1 in [(0, 1), (3, 10), (37, 100)]:
        part = np.empty((r1 - r0, 130), np.float32)
        gb.gemm(a[r0:r1], w, part, None, False, _scratch())
        assert np.array_equal(part, whole[r0:r1])


def test_bad_input_raises() -> None:
    a, o = np.ones((8, 16), np.float32), np.zeros((8, 8), np.float32)
    with pytest.raises(ValueError):  # packed for another k
        gb.gemm(a, _packed(np.ones((18, 8), np.float32)), o, None, False, _scratch())
    with pytest.raises(TypeError):  # a float32 (fp32-packed) weight
        gb.gemm(a, np.zeros(gb.packed_shape(16, 8), np.float32), o, None, False, _scratch())
    with pytest.raises(ValueError):
        gb.gemm(a, _packed(np.ones((16, 8), np.float32)), o, None, False, _scratch(), 3)
    assert not o.any()


def test_attention_products_in_bf16_fused_and_numpy_agree() -> None:
    """P = exp(q k^T) enters P [V, 1] rounded to bf16 (the denominators sum the rounded values): the fused C
    kernel and the numpy form compute the same thing, up to summation order."""
    if not numerics.fused_attention_available():
        pytest.skip("the fused attention needs AVX-512")
    from aiowhisper_npu.models.model import ModelDimensions

    heads, hd, t, n = 2, 64, 300, 70
    dims = ModelDimensions(80, t, heads * hd, heads, 1)
    rng = np.random.default_rng(7)
    qkv = (rng.standard_normal((t, kernels.qkv_columns(heads * hd, heads)), dtype=np.float32) * 0.4)
    for h in range(heads):
        qkv[:, 2 * heads * hd + h * (hd + 1) + hd] = 1.0
    numerics.round_bf16_(qkv)
    ws = kernels.Workspace(dims, n, "bf16")
    fused = np.empty((n, heads * hd), np.float32)
    kernels.attention(qkv, 0, n, heads, ws, fused)
    previous = numerics.use_native(False)
    try:
        slow = np.empty_like(fused)
        kernels.attention(qkv, 0, n, heads, ws, slow)
    finally:
        numerics.use_native(previous)
    # numpy's exp and the kernel's differ by an ulp now and then, which can move a P value to the next
    # bf16 (2^-8 relative): measured 8e-6
    assert _rel_l2(fused, slow) <= 3e-5
    # the AVX512_BF16 kernel and its FMA fallback: the same bits (pairs summed odd-then-even in both)
    d = heads * hd
    ac = pytest.importorskip("aiowhisper_npu.native._attention")
    outs = []
    for kernel in KERNELS:
        o = np.empty_like(fused)
        assert ac.heads(qkv[:n, :d], qkv[:, d : 2 * d], qkv[:, 2 * d :], o, heads, hd + 1,
                        kernels.SHIFT_FREE_BOUND, ws.c_scratch, True, kernel) == []
        outs.append(o)
    assert all(np.array_equal(o, fused) for o in outs)
    # and it is the bf16 form, not fp32's: unrounded P differs far more than that
    fp32 = np.empty_like(fused)
    kernels.attention(qkv, 0, n, heads, kernels.Workspace(dims, n, "fp32"), fp32)
    assert _rel_l2(fused, fp32) > 3e-4, _rel_l2(fused, fp32)
