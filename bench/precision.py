"""precision="bf16" against fp32 on one core: the encoder of one 30 s window, sequentially, in CPU time.

The pipeline benchmark (``bench/latency.py --variants lanes_d4,lanes_d4_bf16``) measures wall time on both
cores, which other processes on a shared machine disturb. This one runs the encoder's tiles one after
another in one thread (``encode_window_sequential``, the pipeline's bit-identical reference) for fp32 and
bf16 in interleaved rounds, and reports the median of per-round ratios of the thread's CPU time
(``time.thread_time``: time the thread actually ran) next to wall time. Run it as::

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python bench/precision.py --model base
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any, Sequence

import aiowhisper_npu as aw
from aiowhisper_npu import numerics
from aiowhisper_npu.benchmark.harness import interleaved, speech_audio, write_report
from aiowhisper_npu.devices.cpu import set_blas_threads
from aiowhisper_npu.encoder.plan import EncoderPlan, EncoderProgram, encode_window_sequential
from aiowhisper_npu.runtime.runtime import CPU_TILE_ROWS


def measure(model_name: str, repeats: int) -> dict[str, Any]:
    model = aw.load_model(model_name)
    set_blas_threads(1)
    mel = aw.log_mel_windows(speech_audio(30.0))[0]
    plan = EncoderPlan(model.dims, CPU_TILE_ROWS)
    programs = {p: EncoderProgram(model, CPU_TILE_ROWS, p) for p in numerics.PRECISIONS}
    rounds: dict[str, list[tuple[float, float]]] = {p: [] for p in programs}
    for prog in programs.values():  # warm-up: workspaces, page-in
        encode_window_sequential(prog, plan, mel)
    for order in interleaved(list(programs), repeats, "alternate"):  # fp32 bf16, bf16 fp32, ...
        for p in order:
            w0, c0 = time.perf_counter(), time.thread_time()
            encode_window_sequential(programs[p], plan, mel)
            rounds[p].append((time.thread_time() - c0, time.perf_counter() - w0))
    cpu = [b[0] / f[0] for f, b in zip(rounds["fp32"], rounds["bf16"])]
    wall = [b[1] / f[1] for f, b in zip(rounds["fp32"], rounds["bf16"])]
    return {"model": model.name, "repeats": repeats, "bf16_kernel": numerics.bf16_gemm_kernel(),
            "cpu_s": {p: statistics.median(c for c, _ in v) for p, v in rounds.items()},
            "wall_s": {p: statistics.median(w for _, w in v) for p, v in rounds.items()},
            "cpu_ratio": statistics.median(cpu), "cpu_ratio_range": [min(cpu), max(cpu)],
            "wall_ratio": statistics.median(wall), "wall_ratio_range": [min(wall), max(wall)]}


def render(r: dict[str, Any]) -> str:
    return (f"{r['model']}, one 30 s window, one thread, {r['repeats']} interleaved rounds (bf16 kernel: "
            f"{r['bf16_kernel']}): CPU time fp32 {r['cpu_s']['fp32'] * 1e3:.0f} ms, "
            f"bf16 {r['cpu_s']['bf16'] * 1e3:.0f} ms -> **bf16 / fp32 {r['cpu_ratio']:.2f}x** "
            f"({r['cpu_ratio_range'][0]:.2f}-{r['cpu_ratio_range'][1]:.2f}); "
            f"wall {r['wall_s']['fp32'] * 1e3:.0f} / {r['wall_s']['bf16'] * 1e3:.0f} ms -> {r['wall_ratio']:.2f}x "
            f"({r['wall_ratio_range'][0]:.2f}-{r['wall_ratio_range'][1]:.2f})")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", action="append", help="tiny.en, base (repeatable; default both)")
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--json", default=None, help="write the results here")
    return p


def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    """One record per model (:func:`measure`)."""
    return [measure(m, args.repeats) for m in args.model or ["tiny.en", "base"]]


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    results = run(args)
    write_report("\n".join("- " + render(r) for r in results), results, json_path=args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
