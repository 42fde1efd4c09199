"""The bundled latency benchmark: ``aiowhisper-npu bench`` (or ``python bench/latency.py`` in a checkout).

Every variant (see :data:`.measure.VARIANTS`) runs the same tiles over the same span (log-mel windows in,
hidden states out). One runtime per variant is opened and warmed up front; then ``--repeats`` rounds run
every variant once, in a fresh shuffled order each round (or a fixed A/B/A/B order), with the CTranslate2
peer interleaved in the same rounds. Speed-ups are medians of per-round ratios, never products of ratios.
The JSON schema is documented in ``bench/bench_schema.md``.

Run benchmarks with the machine's BLAS defaults, e.g.::

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE aiowhisper-npu bench --model base --windows 1 --repeats 7
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import time
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any, Awaitable, Callable, Sequence

import anyio
import numpy as np

from ..audio.io import SAMPLE_RATE
from ..audio.mel import log_mel_windows
from ..models.loading import load_model
from ..pipeline.stats import STAGES
from ..runtime.runtime import Runtime
from . import endtoend, measure, simbound
from .harness import Run, blas_libraries, blas_limit, interleaved, settle, speech_audio, write_report
from .measure import VARIANTS, RunSample, Variant
from .overhead import null_overhead
from .progress import ProgressBar
from .report import render_markdown

__all__ = ["SCHEMA", "build_parser", "run_benchmark", "run", "main"]

SCHEMA = "aiowhisper-npu-bench/1"
#: runs a coroutine function on the event loop named by ``--loop`` (``aiowhisper_npu.cli.run_async``)
Runner = Callable[[Callable[[], Awaitable[Any]], str], Any]



def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="aiowhisper-npu bench",
        description="Encoder latency benchmark: baseline, pooled, pipelined (depth 2, 3), batch DMA and lanes "
                    "variants on the same tiles, warmed up, interleaved and repeated; a CTranslate2 fp32 peer "
                    "row when ctranslate2 is installed; runtime overhead with a null kernel; end-to-end "
                    "encode() latency. Prints a markdown table; --json and --plot write the details.",
        epilog="Timings are noisy on a shared machine: compare ratios from one run. For the machine's own BLAS "
               "kernels run under 'env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE'.")
    p.add_argument("--backend", default="cpu", choices=("cpu", "sim"), help="device backend (default cpu)")
    p.add_argument("--model", default="tiny.en", help="model name (tiny.en, base) or directory (default tiny.en)")
    p.add_argument("--windows", type=int, default=1, help="30 s windows of speech per measured encode (default 1)")
    p.add_argument("--repeats", type=int, default=7, help="measured rounds over all variants (default 7)")
    p.add_argument("--warmup", type=int, default=2, help="warm-up encodes per variant before measuring (default 2)")
    p.add_argument("--variants", default=",".join(v.name for v in VARIANTS),
                   help="comma-separated subset of variants (baseline is always included)")
    p.add_argument("--tile-rows", type=int, default=None,
                   help="encoder positions per tile, the same for every variant (default: the runtime's default "
                        "for the backend)")
    p.add_argument("--order", default="shuffled", choices=("shuffled", "fixed"),
                   help="variant order per round: a fresh shuffle (seeded) or fixed A/B/A/B (default shuffled)")
    p.add_argument("--seed", type=int, default=1, help="seed of the per-round shuffle")
    p.add_argument("--settle-ms", type=float, default=20.0,
                   help="pause before each timed call so spinning BLAS/OpenMP threads go idle (default 20)")
    p.add_argument("--json", metavar="PATH", default=None, help="write the full result as JSON (bench_schema.md)")
    p.add_argument("--plot", metavar="PATH", default=None, help="write the PNG stage timeline here")
    p.add_argument("--quick", action="store_true",
                   help="1 window, 3 repeats, 1 warm-up, short overhead and e2e runs (< 60 s on tiny.en)")
    p.add_argument("--loop", default="auto", choices=("auto", "asyncio", "uvloop", "trio"),
                   help="event loop (auto: uvloop when installed)")
    p.add_argument("--no-peer", action="store_true", help="skip the CTranslate2 peer row")
    p.add_argument("--no-overhead", action="store_true", help="skip the null-kernel overhead measurement")
    p.add_argument("--no-e2e", action="store_true", help="skip end-to-end encode() and stream latency")
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    p.add_argument("--render", metavar="JSON", default=None,
                   help="print the markdown report of a saved --json result and exit (no measurement)")
    p.add_argument("--manifest", default=None, help="kernel manifest for the sim backend (default: packaged)")
    p.add_argument("--sim-numerics", action="store_true",
                   help="sim: also compute the kernels' numbers on the host (default off: pure modeled timing, "
                        "since host numerics would otherwise dominate the modeled NPU time)")
    p.add_argument("--sim-time-scale", type=float, default=1.0, help="sim: SimConfig.time_scale (default 1)")
    return p


def _settings(args: argparse.Namespace) -> dict[str, Any]:
    s = {"windows": args.windows, "repeats": args.repeats, "warmup": args.warmup, "tile_rows": args.tile_rows,
         "order": args.order, "seed": args.seed, "settle_ms": args.settle_ms, "quick": args.quick,
         "overhead_tiles": 2000, "overhead_repeats": 5, "e2e_repeats": max(5, args.repeats), "stream_trials": 5,
         "loop": args.loop}
    if args.quick:
        s.update(windows=1, repeats=min(args.repeats, 3), warmup=1, overhead_tiles=400, overhead_repeats=3,
                 e2e_repeats=3, stream_trials=2, settle_ms=min(args.settle_ms, 5.0))
    if s["windows"] < 1 or s["repeats"] < 1 or s["warmup"] < 0:
        raise SystemExit("--windows and --repeats must be >= 1, --warmup >= 0")
    return s


def _variants(spec: str) -> list[Variant]:
    names = [n.strip() for n in spec.split(",") if n.strip()]
    known = {v.name: v for v in VARIANTS}
    bad = [n for n in names if n not in known]
    if bad:
        raise SystemExit(f"unknown variant(s) {bad}; choose from {', '.join(known)}")
    return [v for v in VARIANTS if v.name in names or v.name == "baseline"]


def _loop_used() -> str:
    try:
        import sniffio

        lib = sniffio.current_async_library()
    except Exception:
        return "?"
    if lib == "asyncio":
        mod = type(asyncio.get_running_loop()).__module__
        return "asyncio+uvloop" if mod.startswith("uvloop") else "asyncio"
    return lib


def _model_record(model: Any) -> dict[str, Any]:
    d = model.dims
    return {"name": getattr(model, "name", str(model)), "path": str(getattr(model, "path", "")),
            "dims": {"n_mels": d.n_mels, "n_audio_ctx": d.n_audio_ctx, "n_audio_state": d.n_audio_state,
                     "n_audio_head": d.n_audio_head, "n_audio_layer": d.n_audio_layer}}


class _Bench:
    """The open runtimes of one run (one per variant), the measured windows and the peer."""

    def __init__(self, args: argparse.Namespace, st: dict[str, Any], variants: list[Variant], mels: np.ndarray,
                 progress: ProgressBar):
        self.args, self.st, self.variants, self.mels, self.progress = args, st, variants, mels, progress
        self.rts: dict[str, Any] = {}
        self.threads: dict[str, int | None] = {}
        self.native = {v.name: v.native for v in variants}
        self.peer: measure.Ct2Peer | None = None
        self.rel_l2: float | None = None

    async def timed(self, name: str) -> RunSample:
        """One measured call of variant ``name``."""
        settle(self.st["settle_ms"] / 1e3)
        sim = self.args.backend == "sim"
        rt = self.rts[name]
        with blas_limit(self.threads[name]), measure.c_kernels(self.native[name]):
            first = simbound.sim_run_range(rt) if sim else 0
            t0 = time.perf_counter()
            _, stats = await rt.encode_mels(self.mels)
            wall = time.perf_counter() - t0
        return RunSample(wall, stats, (first, simbound.sim_run_range(rt) if sim else 0))

    async def warm_up(self) -> None:
        """Page in weights, grow workspaces, spin up worker threads; the peer's relative L2 against ours."""
        st, progress = self.st, self.progress
        for v in self.variants:
            for _ in range(st["warmup"]):
                progress.note(f"warm-up {v.name}")
                await self.timed(v.name)
                progress.step()
        for _ in range(st["warmup"]):
            if self.peer is not None:
                _, theirs = self.peer.encode(self.mels)
                if self.rel_l2 is None and (self.args.backend == "cpu" or self.args.sim_numerics):
                    ours, _ = await self.rts["baseline"].encode_mels(self.mels)  # same numbers, or not?
                    self.rel_l2 = float(np.linalg.norm(ours.astype(np.float64) - theirs) / np.linalg.norm(theirs))
            progress.step()

    async def rounds(self) -> tuple[dict[str, list[RunSample]], list[float], dict[str, dict[str, list[float]]],
                                    list[float]]:
        """The measured rounds: every variant (and the peer) once per round, in interleaved order."""
        st, progress, peer = self.st, self.progress, self.peer
        samples: dict[str, list[RunSample]] = {v.name: [] for v in self.variants}
        peer_walls: list[float] = []
        ratios: dict[str, dict[str, list[float]]] = {v.name: {"baseline": [], "peer": []} for v in self.variants}
        bf16_ratios: list[float] = []
        names = [v.name for v in self.variants] + (["<peer>"] if peer is not None else [])
        rounds = st["repeats"]
        for r, order in enumerate(interleaved(names, rounds, st["order"], st["seed"])):
            this: dict[str, float] = {}
            for name in order:
                progress.note(f"round {r + 1}/{rounds}: {name}")
                if name == "<peer>":
                    assert peer is not None
                    settle(st["settle_ms"] / 1e3)
                    wall, _ = peer.encode(self.mels)
                    peer_walls.append(wall)
                else:
                    s = await self.timed(name)
                    samples[name].append(s)
                    wall = s.wall_s
                this[name] = wall
                progress.step()
            if peer is None:
                progress.step()
            if "lanes_d4" in this and "lanes_d4_bf16" in this:  # precision="bf16" against fp32, same round
                bf16_ratios.append(this["lanes_d4_bf16"] / this["lanes_d4"])
            for v in self.variants:
                ratios[v.name]["baseline"].append(this["baseline"] / this[v.name])
                if "<peer>" in this:
                    ratios[v.name]["peer"].append(this[v.name] / this["<peer>"])
        return samples, peer_walls, ratios, bf16_ratios


async def run_benchmark(args: argparse.Namespace, progress: ProgressBar) -> dict[str, Any]:
    """Everything but the printing: returns the JSON-able result."""
    st = _settings(args)
    variants = _variants(args.variants)
    run = Run(st)
    model = await anyio.to_thread.run_sync(load_model, args.model)
    blas = blas_libraries()  # before any device changes BLAS thread limits
    audio = speech_audio(st["windows"] * measure.WINDOW_S)
    mels = log_mel_windows(audio, model.dims.n_mels)
    audio_s = audio.size / SAMPLE_RATE
    opts: dict[str, Any] = {"manifest": args.manifest} if args.manifest else {}
    if args.backend == "sim":
        from ..sim import SimConfig

        opts["sim_config"] = SimConfig(numerics=args.sim_numerics, time_scale=args.sim_time_scale)
        st["sim"] = {"numerics": args.sim_numerics, "time_scale": args.sim_time_scale}
    progress.total(len(variants) * (st["warmup"] + st["repeats"]) + (st["warmup"] + st["repeats"])
                   + (0 if args.no_e2e else 3 * st["e2e_repeats"] + 2 + st["stream_trials"])
                   + (0 if args.no_overhead else 2 * st["overhead_repeats"]))
    result: dict[str, Any] = {"schema": SCHEMA, "created": run.created, "backend": args.backend,
                              "loop_used": _loop_used(), "settings": st}
    bench = _Bench(args, st, variants, mels, progress)
    async with AsyncExitStack() as stack:
        rows = {"tile_rows": st["tile_rows"]} if st["tile_rows"] else {}
        for v in variants:
            progress.note(f"opening {v.name}")
            bench.rts[v.name] = await stack.enter_async_context(
                Runtime(model, backend=args.backend, **rows, **v.runtime_kwargs(), **opts))
        st["tile_rows"] = bench.rts["baseline"].tile_rows  # resolved: the runtime's default unless --tile-rows
        bench.threads = {n: getattr(rt.device, "blas_threads", None) for n, rt in bench.rts.items()}
        st["blas_threads"] = bench.threads  # pinned around each timed call (CpuDevice's limit is process-wide)
        bench.peer, peer_note = (None, "skipped (--no-peer)") if args.no_peer else \
            measure.ct2_peer(model, os.cpu_count() or 1)
        await bench.warm_up()
        samples, peer_walls, ratios, bf16_ratios = await bench.rounds()

        out = {v.name: measure.aggregate(v, samples[v.name], audio_s, st["windows"], ratios[v.name])
               for v in variants}
        if args.backend == "sim":
            col = simbound.column_model([(bench.rts[v.name], samples[v.name]) for v in variants])
            for v in variants:
                out[v.name]["bound"] = simbound.sim_bound(bench.rts[v.name], v, out[v.name], col, st["windows"])
        result["variants"] = out
        if bf16_ratios:
            result["bf16_vs_fp32"] = {"median": statistics.median(bf16_ratios), "min": min(bf16_ratios),
                                      "max": max(bf16_ratios), "all": bf16_ratios}
        pipelined = [v.name for v in variants if v.pipelined]
        best = min(pipelined, key=lambda n: out[n]["wall_s"]["p50"]) if pipelined else "baseline"
        result["best_pipelined"] = best
        peer = bench.peer
        result["peer"] = measure.peer_record(peer, peer_walls, audio_s, st["windows"]) if peer else None
        if result["peer"] is not None:
            result["peer"]["rel_l2_vs_ours"] = bench.rel_l2
        result["peer_note"] = peer_note
        result["timelines"] = {n: measure.median_timeline(samples[n]) for n in dict.fromkeys(["baseline", best])}
        if not args.no_e2e:  # what a user gets: a runtime with default settings (plus --tile-rows if given)
            progress.note("end-to-end")
            rt = await stack.enter_async_context(Runtime(model, backend=args.backend, **rows, **opts))
            name = f"defaults: depth {rt.pipeline_depth}, {rt.lanes} lane(s), {rt.tile_rows}-row tiles"
            result["e2e"] = await endtoend.e2e_latency(rt, name, st["e2e_repeats"],
                                                       getattr(rt.device, "blas_threads", None),
                                                       st["settle_ms"] / 1e3, progress)
            result["stream"] = await endtoend.stream_first_update(rt, st["stream_trials"], progress)
    if not args.no_overhead:
        result["overhead"] = []
        for depth in (1, 4):
            progress.note(f"null-kernel overhead, depth {depth}")
            result["overhead"].append(await null_overhead(depth, st["overhead_tiles"], st["overhead_repeats"]))
            progress.step(st["overhead_repeats"])
    result["checks"] = endtoend.checks(result)
    rec = run.record()
    result.update({"machine": rec["machine"], "versions": rec["versions"], "blas": blas,
                   "blas_core_type": next((b.get("architecture") for b in blas if b.get("architecture")), None),
                   "env": Run.env(), "model": _model_record(model), "stages": list(STAGES)})
    return result


def run(args: argparse.Namespace, run_async: Runner, argv: Sequence[str] = ()) -> dict[str, Any]:
    """Measure (on the event loop ``args.loop``, through ``run_async``), then draw ``--plot``: the result."""
    with ProgressBar(enabled=not args.no_progress) as progress:
        res: dict[str, Any] = run_async(lambda: run_benchmark(args, progress), args.loop)
    res["command"] = " ".join(["python bench/latency.py", *argv])
    if args.plot:
        from .plot import plot_result

        res["plot"] = str(plot_result(res, args.plot))
    return res


def main(argv: Sequence[str], run_async: Runner) -> int:
    """Run the benchmark; print the markdown table; write ``--json``/``--plot``. Returns an exit code."""
    args = build_parser().parse_args(list(argv))
    if args.render:
        print(render_markdown(json.loads(Path(args.render).read_text())))
        return 0
    res = run(args, run_async, argv)
    write_report(render_markdown(res), res, json_path=args.json, indent=1)
    return 0
