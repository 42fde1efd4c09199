"""Single-thread microbenchmark of the CPU encoder's C matrix kernels against their BLAS forms.

For each linear layer shape of one tile (rows = the CPU default tile, 375) it times ``numpy.matmul``
(numpy's BLAS) and the packed-weight GEMM (:mod:`aiowhisper_npu.native._gemm`), and for one attention head the BLAS
path (``q k^T``, exp, ``P [v, 1]``, divide) against the fused kernel (:mod:`aiowhisper_npu.native._attention`).
Medians over interleaved repeats; GFLOP/s count 2 m k n per product. Run on an idle machine::

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python bench/c_kernels.py --model base
"""

from __future__ import annotations

import argparse
import time
from typing import Callable

import numpy as np
from threadpoolctl import threadpool_info, threadpool_limits

from aiowhisper_npu.benchmark.harness import interleaved, pct
from aiowhisper_npu.encoder import kernels
from aiowhisper_npu.models.loading import load_model

try:
    from aiowhisper_npu.native import _attention, _fastmath, _gemm
except ImportError as exc:  # pragma: no cover - the extensions are built by pip install
    raise SystemExit(f"the C kernels are not built: {exc}") from None


def _median_ms(fns: list[Callable[[], object]], repeats: int) -> list[float]:
    """Interleave the candidates (A B, A B) so drift hits them alike; median ms of each."""
    for f in fns:
        f()
    times: list[list[float]] = [[] for _ in fns]
    for order in interleaved(range(len(fns)), repeats, "fixed"):
        for i in order:
            t0 = time.perf_counter()
            fns[i]()
            times[i].append(time.perf_counter() - t0)
    return [pct(t, 50) * 1e3 for t in times]


def linear_rows(rows: int, dims: object, repeats: int, rng: np.random.Generator) -> list[str]:
    d, mlp, mels = dims.n_audio_state, dims.n_mlp, dims.n_mels  # type: ignore[attr-defined]
    shapes = {"conv1": (2 * rows + 1, 3 * mels, d), "conv2": (rows, 3 * d, d),
              "qkv": (rows, d, kernels.qkv_columns(d, dims.n_audio_head)),  # type: ignore[attr-defined]
              "out": (rows, d, d), "fc1": (rows, d, mlp), "fc2": (rows, mlp, d)}
    scratch = np.empty(_gemm.SCRATCH_FLOATS, np.float32)
    out = ["| layer | m × k × n | numpy.matmul GFLOP/s | packed GFLOP/s | packed / matmul time |",
           "|---|---|---:|---:|---:|"]
    for name, (m, k, n) in shapes.items():
        a = rng.standard_normal((m, k), dtype=np.float32)
        w = rng.standard_normal((k, n), dtype=np.float32)
        packed = np.empty(_gemm.packed_shape(k, n), np.float32)
        _gemm.pack(w, packed)
        c1, c2 = np.empty((m, n), np.float32), np.empty((m, n), np.float32)
        t_blas, t_packed = _median_ms([lambda: np.matmul(a, w, out=c1),
                                       lambda: _gemm.gemm(a, packed, c2, None, False, scratch)], repeats)
        gf = 2 * m * k * n / 1e6
        out.append(f"| {name} | {m} × {k} × {n} | {gf / t_blas:.1f} | {gf / t_packed:.1f} | {t_packed / t_blas:.2f} |")
    return out


def attention_rows(rows: int, dims: object, repeats: int, rng: np.random.Generator) -> list[str]:
    """One tile's attention, every head: BLAS + C exp per head against the fused kernel's one call."""
    t, d, heads = dims.n_audio_ctx, dims.n_audio_state, dims.n_audio_head  # type: ignore[attr-defined]
    hd = d // heads
    qkv = rng.standard_normal((t, kernels.qkv_columns(d, heads)), dtype=np.float32) * 0.35
    for h in range(heads):
        qkv[:, 2 * d + h * (hd + 1) + hd] = 1.0  # the ones columns the qkv GEMM writes
    s, o1 = np.empty((rows, t), np.float32), np.empty((rows, hd + 1), np.float32)
    o_blas, o_fused = np.empty((rows, d), np.float32), np.empty((rows, d), np.float32)
    scratch = np.empty(_attention.scratch_floats(t, hd), np.float32)

    def blas() -> None:
        for h in range(heads):
            np.matmul(qkv[:rows, h * hd : (h + 1) * hd], qkv[:, d + h * hd : d + (h + 1) * hd].T, out=s)
            _fastmath.exp_rows(s, False)
            np.matmul(s, qkv[:, 2 * d + h * (hd + 1) : 2 * d + (h + 1) * (hd + 1)], out=o1)
            np.divide(o1[:, :hd], o1[:, hd:], out=o_blas[:, h * hd : (h + 1) * hd])

    def fused() -> None:
        left = _attention.heads(qkv[:rows, :d], qkv[:, d : 2 * d], qkv[:, 2 * d :], o_fused, heads, hd + 1,
                                kernels.SHIFT_FREE_BOUND, scratch)
        assert not left, "the random test data must stay within the shift-free bound"

    t_blas, t_fused = _median_ms([blas, fused], repeats)
    rel = float(np.linalg.norm(o_fused - o_blas) / np.linalg.norm(o_blas))
    gf = 2 * 2 * rows * t * hd * heads / 1e6
    return ["| attention, all heads of a tile | queries × positions × head dim × heads | BLAS + C exp GFLOP/s "
            "| fused GFLOP/s | fused / BLAS time |", "|---|---|---:|---:|---:|",
            f"| {rows} queries | {rows} × {t} × {hd} × {heads} | {gf / t_blas:.1f} | {gf / t_fused:.1f} "
            f"| {t_fused / t_blas:.2f} |", "", f"Fused against BLAS output: relative L2 {rel:.1e}; "
            "GFLOP/s count the two products only (the exp is extra work in both)."]


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="base", help="model whose shapes to use (default base)")
    ap.add_argument("--rows", type=int, default=375, help="tile rows (default 375, the CPU default)")
    ap.add_argument("--repeats", type=int, default=31)
    return ap


def run(args: argparse.Namespace) -> str:
    """The report: the linear layers' table and the attention table, on one thread."""
    if not (_gemm.available() and _attention.available()):
        raise SystemExit("the C matrix kernels need an x86-64 CPU with AVX-512")
    dims = load_model(args.model).dims
    rng = np.random.default_rng(0)
    with threadpool_limits(1):
        blas = [f"{i.get('internal_api')} {i.get('version')} ({i.get('architecture')})"
                for i in threadpool_info() if i.get("user_api") == "blas"]
        return "\n".join([
            f"### C matrix kernels vs BLAS: {args.model}, {args.rows}-row tiles, one thread ({', '.join(blas)})\n",
            *linear_rows(args.rows, dims, args.repeats, rng), "",
            *attention_rows(args.rows, dims, args.repeats, rng)])


def main(argv: list[str] | None = None) -> int:
    print(run(build_parser().parse_args(argv)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
