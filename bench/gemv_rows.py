"""What a decoding step's rows cost: the few-row kernel (``native/_gemv.c``) against BLAS, by row count.

A decoding step multiplies its rows (beams, and the beams of every concurrent request the engine batches) by
every decoder weight; the largest product is the logits, ``(rows, d) @ token_embedding.T``. This times that
product on one thread for 1 to 40 rows, in thread CPU time (robust on a shared machine), and reports the
marginal cost of a row: where the kernel stops being bound by reading the weight once, each further row
costs compute. That is what batching concurrent requests can and cannot save. Run::

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python bench/gemv_rows.py --model tiny.en
"""

from __future__ import annotations

import argparse
import time
from typing import Any, Callable, Sequence

import numpy as np
from threadpoolctl import threadpool_limits

import aiowhisper_npu as aw
from aiowhisper_npu.benchmark.harness import pct

ROWS = (1, 2, 5, 10, 15, 20, 24, 40)


def _cpu_ms(fn: Callable[[], object], repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t = time.thread_time()
        fn()
        times.append(time.thread_time() - t)
    return pct(times, 50) * 1e3


def measure(weight: np.ndarray, rows: Sequence[int], repeats: int) -> list[dict[str, float]]:
    """Per row count: kernel and BLAS CPU ms for ``x @ weight.T`` on one thread, and the kernel's GFLOP/s."""
    from aiowhisper_npu.native import _gemv

    n, k = weight.shape
    rng = np.random.default_rng(0)
    out = []
    for m in rows:
        x = rng.standard_normal((m, k), dtype=np.float32)
        y = np.empty((m, n), np.float32)
        with threadpool_limits(1):
            kernel = _cpu_ms(lambda: _gemv.matmul_nt(x, weight, y), repeats)
            blas = _cpu_ms(lambda: np.matmul(x, weight.T, out=y), repeats)
        out.append({"rows": m, "kernel_ms": kernel, "blas_ms": blas, "kernel_gflops": 2 * m * n * k / kernel / 1e6})
    return out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="tiny.en")
    p.add_argument("--repeats", type=int, default=15)
    return p


def run(args: argparse.Namespace) -> dict[str, Any]:
    """The model's logits weight and :func:`measure` of it for :data:`ROWS`."""
    model = aw.load_model(args.model)
    if model.decoder is None:
        raise SystemExit(f"{args.model} has no decoder")
    weight = np.ascontiguousarray(model.decoder.token_embedding, np.float32)
    return {"model": model.name, "shape": weight.shape, "rows": measure(weight, ROWS, args.repeats)}


def render(res: dict[str, Any]) -> str:
    rows = res["rows"]
    lines = [f"## logits product of {res['model']}: ({res['shape'][0]} x {res['shape'][1]}) float32, one thread, "
             "CPU ms\n", "| rows | few-row kernel | BLAS | kernel GFLOP/s | kernel ms per row |",
             "|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['rows']} | {r['kernel_ms']:.2f} | {r['blas_ms']:.2f} | {r['kernel_gflops']:.1f} | "
              f"{r['kernel_ms'] / r['rows']:.2f} |" for r in rows]
    a, b = rows[ROWS.index(10)], rows[-1]
    lines.append(f"\nmarginal cost of a row between {a['rows']} and {b['rows']} rows: "
                 f"{(b['kernel_ms'] - a['kernel_ms']) / (b['rows'] - a['rows']):.3f} ms")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    print(render(run(build_parser().parse_args(argv))))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
