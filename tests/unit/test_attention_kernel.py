"""The fused single-head attention (``aiowhisper_npu.native._attention``) against a float64 softmax."""

from __future__ import annotations

import numpy as np
import pytest

from aiowhisper_npu import numerics
from aiowhisper_npu.encoder import kernels

at = pytest.importorskip("aiowhisper_npu.native._attention")
if not at.available():
    pytest.skip("the fused attention needs AVX-512", allow_module_level=True)

REL = 2e-6  # relative L2 error against float64


def _reference(q: np.ndarray, k: np.ndarray, v: np.ndarray) -> np.ndarray:
    s = q.astype(np.float64) @ k.astype(np.float64).T
    p = np.exp(s - s.max(axis=1, keepdims=True))
    return (p / p.sum(axis=1, keepdims=True)) @ v.astype(np.float64)


def _scratch(t: int, hd: int) -> np.ndarray:
    return np.empty(at.scratch_floats(t, hd), np.float32)


def _one_head(q: np.ndarray, k: np.ndarray, v: np.ndarray, out: np.ndarray, bound: float = 60.0) -> bool:
    """Run one head; True if the kernel did it (False: left to the caller)."""
    left = at.heads(q, k, v, out, 1, q.shape[1], bound, _scratch(k.shape[0], q.shape[1]))
    assert left in ([], [0])
    return not left


def _rel_l2(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.linalg.norm(got - want) / np.linalg.norm(want))


def test_is_built_and_used_by_default() -> None:
    assert numerics.fused_attention_available()


@pytest.mark.parametrize("n, t, hd", [(1, 1, 8), (5, 9, 16), (48, 64, 64), (49, 1500, 64), (375, 1500, 64),
                                      (100, 333, 24)])
def test_matches_a_float64_softmax(n: int, t: int, hd: int) -> None:
    rng = np.random.default_rng(n + t + hd)
    q, k, v = (rng.standard_normal((m, hd), dtype=np.float32) for m in (n, t, t))
    q *= 0.4
    out = np.full((n, hd), np.nan, np.float32)
    assert _one_head(q, k, v, out, bound=1e4)
    assert _rel_l2(out, _reference(q, k, v)) <= REL


def test_heads_of_the_encoder_qkv_tensor_and_nothing_else_written() -> None:
    """q, k, v as the column blocks of a (t, qkv_columns) tensor (a ones column after each head's values);
    out as the merged heads of some rows."""
    rng = np.random.default_rng(1)
    t, d, heads = 200, 96, 3
    hd = d // heads
    qkv = rng.standard_normal((t, kernels.qkv_columns(d, heads)), dtype=np.float32) * 0.5
    big = np.zeros((70, d + 10), np.float32)
    out = big[:, 5 : 5 + d]
    assert at.heads(qkv[10:80, :d], qkv[:, d : 2 * d], qkv[:, 2 * d :], out, heads, hd + 1, 60.0,
                    _scratch(t, hd)) == []
    for h in range(heads):
        q = qkv[10:80, h * hd : (h + 1) * hd]
        k = qkv[:, d + h * hd : d + (h + 1) * hd]
        v = qkv[:, 2 * d + h * (hd + 1) : 2 * d + h * (hd + 1) + hd]
        assert _rel_l2(out[:, h * hd : (h + 1) * hd], _reference(q, k, v)) <= REL
    assert not big[:, :5].any() and not big[:, 5 + d :].any()


def test_a_query_gives_the_same_bits_in_any_tile() -> None:
    rng = np.random.default_rng(2)
    q, k, v = (rng.standard_normal((m, 64), dtype=np.float32) * 0.3 for m in (120, 500, 500))
    whole = np.empty((120, 64), np.float32)
    assert _one_head(q, k, v, whole)
    for r0, r1 in [(0, 1), (7, 55), (48, 96), (100, 120)]:
        part = np.empty((r1 - r0, 64), np.float32)
        assert _one_head(q[r0:r1], k, v, part)
        assert np.array_equal(part, whole[r0:r1])


def test_heads_beyond_the_bound_or_not_finite_are_left_to_the_caller() -> None:
    k, v = np.ones((5, 8), np.float32), np.ones((5, 8), np.float32)
    out = np.zeros((3, 8), np.float32)
    q = np.full((3, 8), 10.0 / 8, np.float32)  # scores of 10; |q| |k| = 10, within the bound
    assert _one_head(q, k, v, out) and np.allclose(out, 1.0)
    q[:] = 20.0  # scores of 160: beyond the bound, and exp(160) would overflow
    assert not _one_head(q, k, v, out)
    assert not _one_head(q, k, v, out, bound=1e30)  # forced to try: the overflow is caught, not returned
    q[:] = 0.1
    q[1, 0] = np.nan
    assert not _one_head(q, k, v, out, bound=1e30)
    # one bad head among several: only it comes back
    q3 = np.concatenate([np.full((3, 8), 0.1, np.float32), np.full((3, 8), 20.0, np.float32),
                         np.full((3, 8), 0.2, np.float32)], axis=1)
    out3 = np.zeros((3, 24), np.float32)
    assert at.heads(q3, np.ones((5, 24), np.float32), np.ones((5, 24), np.float32), out3, 3, 8, 60.0,
                    _scratch(5, 8)) == [1]
    assert np.allclose(out3[:, :8], 1.0) and np.allclose(out3[:, 16:], 1.0) and not out3[:, 8:16].any()


def test_kernels_attention_agrees_with_the_blas_path() -> None:
    """kernels.attention with the fused kernel against the same call on the BLAS + exp path."""
    rng = np.random.default_rng(3)
    t, d, heads = 300, 128, 2
    qkv = rng.standard_normal((t, kernels.qkv_columns(d, heads)), dtype=np.float32) * 0.3
    hd = d // heads
    for h in range(heads):
        qkv[:, 2 * d + h * (hd + 1) + hd] = 1.0  # the ones columns the qkv GEMM writes
    from aiowhisper_npu.models.model import ModelDimensions

    dims = ModelDimensions(n_mels=80, n_audio_ctx=t, n_audio_state=d, n_audio_head=heads, n_audio_layer=1)
    ws = kernels.Workspace(dims, 100)
    fused, blas = np.empty((100, d), np.float32), np.empty((100, d), np.float32)
    kernels.attention(qkv, 50, 100, heads, ws, fused)
    previous = numerics.use_native(False)
    try:
        kernels.attention(qkv, 50, 100, heads, ws, blas)
    finally:
        numerics.use_native(previous)
    assert _rel_l2(fused, blas) <= REL


@pytest.mark.parametrize("bad", [
    lambda q, k, v, o, s: (q.astype(np.float64), k, v, o, 2, 8, 60.0, s),
    lambda q, k, v, o, s: (q[:, :12], k[:, :12], v[:, :12], o[:, :12], 1, 12, 60.0, s),  # hd 12: not 8k
    lambda q, k, v, o, s: (q, k[:-1], v, o, 2, 8, 60.0, s),  # k and v lengths differ
    lambda q, k, v, o, s: (q, k, v, o[:-1], 2, 8, 60.0, s),
    lambda q, k, v, o, s: (q, k, v, o, 2, 8, 60.0, s[:10]),  # scratch too small
    lambda q, k, v, o, s: (q, k, v, o.T, 2, 8, 60.0, s),
    lambda q, k, v, o, s: (q, k, v, o, 3, 8, 60.0, s),  # 16 columns are not 3 heads
    lambda q, k, v, o, s: (q, k, v, o, 2, 7, 60.0, s),  # v_width < hd
    lambda q, k, v, o, s: (q, k, v, o, 0, 8, 60.0, s),
])
def test_bad_input_raises(bad) -> None:  # type: ignore[no-untyped-def]
    q, k, v = np.ones((16, 16), np.float32), np.ones((20, 16), np.float32), np.ones((20, 16), np.float32)
    o = np.zeros((16, 16), np.float32)
    with pytest.raises((TypeError, ValueError)):
        at.heads(*bad(q, k, v, o, _scratch(20, 8)))
    assert not o.any()
