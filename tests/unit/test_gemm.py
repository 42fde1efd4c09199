"""The packed-weight GEMM (``aiowhisper_npu.native._gemm``) against float64 products and the numpy forms."""

from __future__ import annotations

import numpy as np
import pytest

from aiowhisper_npu import numerics
from aiowhisper_npu.encoder import kernels

gm = pytest.importorskip("aiowhisper_npu.native._gemm")
if not gm.available():
    pytest.skip("the packed GEMM needs AVX-512", allow_module_level=True)

REL = 2e-6  # relative L2 error of a float32 product with K <= 3000 terms, against float64


def _packed(w: np.ndarray) -> np.ndarray:
    out = np.empty(gm.packed_shape(*w.shape), np.float32)
    gm.pack(w, out)
    return out


def _scratch() -> np.ndarray:
    return np.empty(gm.SCRATCH_FLOATS, np.float32)


def _rel_l2(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.linalg.norm(got - want) / np.linalg.norm(want))


def test_is_built_and_used_by_default() -> None:
    assert numerics.packed_gemm_available()
    assert gm.packed_shape(512, 1544) == (25, 512, gm.NR)


@pytest.mark.parametrize("m, k, n", [
    (1, 1, 1), (5, 7, 3), (6, 64, 64), (7, 65, 65), (375, 512, 1544), (13, 1100, 129), (751, 240, 512),
    (400, 600, 100),  # more rows than one packed block (384) and deeper than one pass (512)
])
def test_matches_a_float64_product(m: int, k: int, n: int) -> None:
    rng = np.random.default_rng(m * 7 + k * 3 + n)
    a = rng.standard_normal((m, k), dtype=np.float32)
    w = rng.standard_normal((k, n), dtype=np.float32)
    out = np.full((m, n), np.nan, np.float32)
    gm.gemm(a, _packed(w), out, None, False, _scratch())
    want = a.astype(np.float64) @ w.astype(np.float64)
    assert _rel_l2(out, want) <= REL


def test_packing_zero_fills_the_last_panel() -> None:
    w = np.arange(3 * 70, dtype=np.float32).reshape(3, 70)
    p = _packed(w)
    assert p.shape == (2, 3, 64)
    assert np.array_equal(p[0], w[:, :64]) and np.array_equal(p[1, :, :6], w[:, 64:])
    assert not p[1, :, 6:].any()


def test_bias_and_gelu_epilogue_match_the_numpy_forms() -> None:
    rng = np.random.default_rng(3)
    a = rng.standard_normal((50, 300), dtype=np.float32) * 0.2
    w = rng.standard_normal((300, 200), dtype=np.float32) * 0.2
    b = rng.standard_normal(200, dtype=np.float32)
    want = (a.astype(np.float64) @ w.astype(np.float64) + b).astype(np.float32)
    got = np.empty((50, 200), np.float32)
    gm.gemm(a, _packed(w), got, b, False, _scratch())
    assert _rel_l2(got, want) <= REL
    gm.gemm(a, _packed(w), got, b, True, _scratch())
    g = want.copy()
    numerics.gelu_(g, np.empty(3 * g.size, np.float32))
    assert np.max(np.abs(got - g)) <= 1e-5 * max(1.0, float(np.abs(g).max()))
    assert np.any(got < 0) and np.all(got > -0.2)  # GELU was applied: its minimum is about -0.17


def test_strided_rows_in_and_out_and_nothing_else_written() -> None:
    rng = np.random.default_rng(4)
    big_a = rng.standard_normal((20, 100), dtype=np.float32)
    a = big_a[2:17:3, 5:69]  # rows 300 floats apart
    w = rng.standard_normal((64, 40), dtype=np.float32)
    big_out = np.zeros((12, 90), np.float32)
    out = big_out[1:6, 10:50]
    gm.gemm(a, _packed(w), out, None, False, _scratch())
    assert _rel_l2(out, a.astype(np.float64) @ w) <= REL
    mask = np.ones(big_out.shape, bool)
    mask[1:6, 10:50] = False
    assert not big_out[mask].any()


def test_a_row_gives_the_same_bits_in_any_tile() -> None:
    """Summation order depends only on k: the pipeline's bit-identity across tile sizes relies on it."""
    rng = np.random.default_rng(5)
    a = rng.standard_normal((100, 700), dtype=np.float32)
    w = _packed(rng.standard_normal((700, 130), dtype=np.float32))
    whole = np.empty((100, 130), np.float32)
    gm.gemm(a, w, whole, None, False, _scratch())
    for r0, r1 in [(0, 1), (3, 10), (37, 100), (50, 57)]:
        part = np.empty((r1 - r0, 130), np.float32)
        gm.gemm(a[r0:r1], w, part, None, False, _scratch())
        assert np.array_equal(part, whole[r0:r1])


def test_kernels_linear_uses_it_and_agrees_with_matmul() -> None:
    rng = np.random.default_rng(6)
    w = rng.standard_normal((128, 96), dtype=np.float32)
    b = rng.standard_normal(96, dtype=np.float32)
    res = {"l": w, **kernels.pack_weights({"fc1_w": w})}
    assert set(res) == {"l", "fc1_w" + kernels.PACKED}
    res["l" + kernels.PACKED] = res.pop("fc1_w" + kernels.PACKED)
    ws = type("WS", (), {"c_scratch": _scratch(), "gelu": np.empty(3 * 10 * 96, np.float32)})()
    x = rng.standard_normal((10, 128), dtype=np.float32)
    fast = kernels.linear_(res, "l", x, np.empty((10, 96), np.float32), ws, b, gelu=True)  # type: ignore[arg-type]
    previous = numerics.use_native(False)
    try:
        slow = kernels.linear_(res, "l", x, np.empty((10, 96), np.float32), ws, b, gelu=True)  # type: ignore[arg-type]
    finally:
        numerics.use_native(previous)
    assert np.max(np.abs(fast - slow)) <= 1e-4


@pytest.mark.parametrize("bad, err", [
    (lambda a, w, o, s: (a.astype(np.float64), w, o, None, False, s), TypeError),
    (lambda a, w, o, s: (a[:, :-1], w, o, None, False, s), ValueError),  # k does not match the packing
    (lambda a, w, o, s: (a, w, o[:-1], None, False, s), ValueError),  # m differs
    (lambda a, w, o, s: (a, w, o, np.zeros(3, np.float32), False, s), ValueError),  # bias length
    (lambda a, w, o, s: (a, w, o, None, False, s[:100]), ValueError),  # scratch too small
    (lambda a, w, o, s: (a, w, o.T, None, False, s), ValueError),  # out's rows not contiguous
    (lambda a, w, o, s: (a, w[:, :8], o, None, False, s), ValueError),  # packed for another k
])
def test_bad_input_raises(bad, err) -> None:  # type: ignore[no-untyped-def]
    a = np.ones((8, 16), np.float32)
    w = _packed(np.ones((16, 8), np.float32))
    o = np.zeros((8, 8), np.float32)
    with pytest.raises(err):
        gm.gemm(*bad(a, w, o, _scratch()))
    assert not o.any()  # nothing was written


def test_out_overlapping_a_is_refused() -> None:
    buf = np.ones((8, 32), np.float32)
    with pytest.raises(ValueError, match="overlap"):
        gm.gemm(buf[:, :16], _packed(np.ones((16, 16), np.float32)), buf[:, 16:], None, False, _scratch())


def test_read_only_out_and_bad_pack_raise() -> None:
    a = np.ones((4, 4), np.float32)
    o = np.zeros((4, 4), np.float32)
    o.flags.writeable = False
    with pytest.raises(ValueError, match="read-only|writable"):
        gm.gemm(a, _packed(a), o, None, False, _scratch())
    with pytest.raises(ValueError):
        gm.pack(a, np.empty((1, 4, 32), np.float32))
    with pytest.raises(ValueError):
        gm.packed_shape(0, 3)
