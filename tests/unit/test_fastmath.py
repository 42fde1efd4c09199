"""The optional C element-wise kernels (``aiowhisper_npu.native._fastmath``) against float64 and numpy references."""

from __future__ import annotations

import numpy as np
import pytest

from aiowhisper_npu import numerics

fm = pytest.importorskip("aiowhisper_npu.native._fastmath")

EXP_REL = 3e-7  # about 2.5 float32 ulp


def _rel_err(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.max(np.abs(got.astype(np.float64) - want) / np.abs(want)))


def test_is_built_and_used_by_default() -> None:
    assert numerics.native_available()
    previous = numerics.use_native(True)
    assert previous is True  # the kernels use it unless told otherwise
    numerics.use_native(previous)


def test_exp_is_accurate_over_the_normal_range() -> None:
    x = np.concatenate([np.linspace(-87.3, 88.72, 1_000_003), np.random.default_rng(0).uniform(-20, 20, 99_999)])
    s = x.astype(np.float32).reshape(1, -1)
    want = np.exp(s.astype(np.float64))
    fm.exp_rows(s, False)
    assert _rel_err(s, want) <= EXP_REL


def test_exp_special_values() -> None:
    s = np.array([[np.nan, np.inf, -np.inf, 100.0, -100.0, 88.8, -88.0, 0.0, 1.0]], np.float32)
    fm.exp_rows(s, False)
    assert np.isnan(s[0, 0])
    assert list(s[0, 1:]) == [np.inf, 0.0, np.inf, 0.0, np.inf, 0.0, 1.0, np.float32(np.e)]


def test_exp_is_finite_up_to_the_largest_float() -> None:
    x = np.array([[88.38, 88.5, 88.72, 88.7228]], np.float32)  # exp just below FLT_MAX
    s = x.copy()
    fm.exp_rows(s, False)
    assert np.all(np.isfinite(s))
    assert _rel_err(s, np.exp(x.astype(np.float64))) <= EXP_REL


def test_shifted_exp_of_strided_rows_leaves_the_rest_alone() -> None:
    rng = np.random.default_rng(1)
    buf = (rng.standard_normal((7, 300)) * 5).astype(np.float32)  # exp stays normal
    orig = buf.copy()
    view = buf[:5, :257]  # rows 300 floats apart, not contiguous with each other
    want = np.exp(orig[:5, :257] - orig[:5, :257].max(axis=1, keepdims=True)).astype(np.float64)  # float32 shift
    fm.exp_rows(view, True)
    assert _rel_err(view, want) <= EXP_REL
    assert np.array_equal(view.max(axis=1), np.ones(5, np.float32))  # exp(0) is exactly 1
    assert np.array_equal(buf[:5, 257:], orig[:5, 257:]) and np.array_equal(buf[5:], orig[5:])


def test_bias_gelu_matches_the_numpy_form() -> None:
    rng = np.random.default_rng(2)
    buf = (rng.standard_normal((40, 600)) * 4).astype(np.float32)
    buf[0, :8] = [0.0, -0.0, 6.0, -6.0, 30.0, -30.0, 1e-30, np.nan]
    b = rng.standard_normal(520).astype(np.float32)
    want = buf[:, :520] + b
    numerics.gelu_(want, np.empty(3 * want.size, np.float32))
    orig = buf.copy()
    fm.bias_gelu(buf[:, :520], b)
    got = buf[:, :520]
    assert np.isnan(got[0, 7]) and np.isnan(want[0, 7])
    ok = ~np.isnan(want)
    assert np.all(np.abs(got[ok] - want[ok]) <= 2e-7 * np.maximum(1.0, np.abs(orig[:, :520] + b)[ok]))
    assert np.array_equal(buf[:, 520:], orig[:, 520:])
    # a few known values of x * Phi(x)
    x = np.array([[-3.0, -1.0, 0.0, 1.0, 3.0]], np.float32)
    fm.bias_gelu(x, np.zeros(5, np.float32))
    assert np.allclose(x, [[-0.00404969, -0.15865525, 0.0, 0.84134475, 2.99595031]], rtol=1e-5, atol=5e-7)


@pytest.mark.parametrize("bad", [
    lambda: fm.exp_rows(np.zeros((2, 3)), False),  # float64
    lambda: fm.exp_rows(np.zeros(3, np.float32), False),  # 1-D
    lambda: fm.exp_rows(np.zeros((3, 4), np.float32).T, False),  # columns not contiguous
    lambda: fm.exp_rows(np.zeros((2, 3), np.float32)[:, ::2], False),
    lambda: fm.bias_gelu(np.zeros((2, 3), np.float32), np.zeros(4, np.float32)),  # wrong bias length
    lambda: fm.bias_gelu(np.zeros((2, 3), np.float32), np.zeros(3)),  # float64 bias
])
def test_bad_input_raises(bad) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises((TypeError, ValueError)):
        bad()


def test_read_only_input_raises() -> None:
    x = np.zeros((2, 3), np.float32)
    x.flags.writeable = False
    with pytest.raises((TypeError, ValueError)):
        fm.exp_rows(x, False)


def test_add_norm_adds_exactly_and_normalises_like_numpy() -> None:
    rng = np.random.default_rng(3)
    x = (rng.standard_normal((33, 520)) * 3 + 2).astype(np.float32)
    b = rng.standard_normal(520).astype(np.float32)
    big = rng.standard_normal((40, 600)).astype(np.float32)
    r = big[:33, :520]  # a strided residual
    want_sum = (x + b) + r
    want_ln = numerics.layer_norm(want_sum, np.empty_like(want_sum))
    out_buf = np.full((33, 530), 7.0, np.float32)
    got = x.copy()
    fm.add_norm(got, b, r, out_buf[:, :520], numerics.LN_EPS)
    assert np.array_equal(got, want_sum)  # the same two float32 additions, in the same order
    assert np.max(np.abs(out_buf[:, :520] - want_ln)) <= 2e-6
    assert np.all(out_buf[:, 520:] == 7.0)
    only_ln = np.empty_like(x)
    fm.add_norm(x, None, None, only_ln, numerics.LN_EPS)  # x untouched
    assert np.max(np.abs(only_ln - numerics.layer_norm(x, np.empty_like(x)))) <= 2e-6
    assert np.allclose(only_ln.mean(axis=1), 0, atol=1e-6) and np.allclose(only_ln.std(axis=1), 1, atol=1e-4)


@pytest.mark.parametrize("bad", [
    lambda x: fm.add_norm(x, np.zeros(4, np.float32), None, None, 1e-5),  # wrong bias length
    lambda x: fm.add_norm(x, None, np.zeros((2, 4), np.float32), None, 1e-5),  # wrong residual shape
    lambda x: fm.add_norm(x, None, None, np.zeros((2, 3)), 1e-5),  # float64 out
    lambda x: fm.add_norm(x.astype(np.float64), None, None, None, 1e-5),
])
def test_add_norm_bad_input_raises(bad) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises((TypeError, ValueError)):
        bad(np.zeros((2, 3), np.float32))


def test_add_norm_reads_a_read_only_input_when_only_normalising() -> None:
    x = np.arange(12, dtype=np.float32).reshape(2, 6)
    x.flags.writeable = False  # e.g. a device buffer mapped for reading
    out = np.empty_like(x)
    fm.add_norm(x, None, None, out, numerics.LN_EPS)
    assert np.max(np.abs(out - numerics.layer_norm(x, np.empty_like(x)))) <= 2e-6
    with pytest.raises((TypeError, ValueError)):
        fm.add_norm(x, np.zeros(6, np.float32), None, None, numerics.LN_EPS)
