"""The bundled latency benchmark (``python bench/latency.py`` or ``aiowhisper-npu bench``).

Every variant (see ``bench_measure.VARIANTS``) runs the same tiles over the same span (log-mel windows in,
hidden states out). One runtime per variant is opened and warmed up front; then ``--repeats`` rounds run
every variant once, in a fresh shuffled order each round (or a fixed A/B/A/B order), with the CTranslate2
peer interleaved in the same rounds. Speed-ups are medians of per-round ratios, never products of ratios.
The JSON schema is documented in ``bench/bench_schema.md``.

Run benchmarks with the machine's BLAS defaults, e.g.::

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python bench/latency.py --model base --windows 1 --repeats 7
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as _dt
import json
import os
import random
import statistics
import sys
import time
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any, Sequence

_HERE = Path(__file__).resolve().parent
if str(_HERE) not in sys.path:
    sys.path.insert(0, str(_HERE))
if str(_HERE.parent) not in sys.path:  # a source checkout without an installed package
    sys.path.insert(1, str(_HERE.parent))

import anyio  # noqa: E402
import numpy as np  # noqa: E402

import bench_measure as bm  # noqa: E402
import bench_extra as bx  # noqa: E402
from bench_report import render_markdown  # noqa: E402

__all__ = ["build_parser", "main", "run_benchmark"]

SCHEMA = "aiowhisper-npu-bench/1"


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
    p.add_argument("--variants", default=",".join(v.name for v in bm.VARIANTS),
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


def _variants(spec: str) -> list[bm.Variant]:
    names = [n.strip() for n in spec.split(",") if n.strip()]
    known = {v.name: v for v in bm.VARIANTS}
    bad = [n for n in names if n not in known]
    if bad:
        raise SystemExit(f"unknown variant(s) {bad}; choose from {', '.join(known)}")
    return [v for v in bm.VARIANTS if v.name in names or v.name == "baseline"]


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


async def run_benchmark(args: argparse.Namespace, progress: bx.ProgressBar) -> dict[str, Any]:
    """Everything but the printing: returns the JSON-able result."""
    from aiowhisper_npu.models.loading import load_model
    from aiowhisper_npu.audio.mel import log_mel_windows
    from aiowhisper_npu.runtime.runtime import Runtime

    st = _settings(args)
    variants = _variants(args.variants)
    load_start = bx.load_avg()
    cpu_start = bx.cpu_snapshot()
    model = await anyio.to_thread.run_sync(load_model, args.model)
    env = bx.environment(model, load_start)  # before any device changes BLAS thread limits
    audio = bm.speech_audio(st["windows"] * bm.WINDOW_S)
    mels = log_mel_windows(audio, model.dims.n_mels)
    audio_s = audio.size / 16000
    opts: dict[str, Any] = {"manifest": args.manifest} if args.manifest else {}
    if args.backend == "sim":
        from aiowhisper_npu.sim import SimConfig

        opts["sim_config"] = SimConfig(numerics=args.sim_numerics, time_scale=args.sim_time_scale)
        st["sim"] = {"numerics": args.sim_numerics, "time_scale": args.sim_time_scale}
    rounds = st["repeats"]
    progress.total(len(variants) * (st["warmup"] + rounds) + (st["warmup"] + rounds)
                   + (0 if args.no_e2e else 3 * st["e2e_repeats"] + 2 + st["stream_trials"])
                   + (0 if args.no_overhead else 2 * st["overhead_repeats"]))
    result: dict[str, Any] = {"schema": SCHEMA, "created": _dt.datetime.now(_dt.timezone.utc).isoformat(),
                              "backend": args.backend, "loop_used": _loop_used(), "settings": st}
    async with AsyncExitStack() as stack:
        rts: dict[str, Any] = {}
        rows = {"tile_rows": st["tile_rows"]} if st["tile_rows"] else {}
        for v in variants:
            progress.note(f"opening {v.name}")
            rts[v.name] = await stack.enter_async_context(
                Runtime(model, backend=args.backend, **rows, **v.runtime_kwargs(), **opts))
        st["tile_rows"] = rts["baseline"].tile_rows  # resolved: the runtime's default unless --tile-rows
        threads = {n: getattr(rt.device, "blas_threads", None) for n, rt in rts.items()}
        st["blas_threads"] = threads  # pinned around each timed call (CpuDevice's limit is process-wide)

        native = {v.name: v.native for v in variants}

        async def timed(name: str) -> bm.RunSample:
            bm.settle(st["settle_ms"] / 1e3)
            sim = args.backend == "sim"
            with bm.blas_limit(threads[name]), bm.c_kernels(native[name]):
                first = bx.sim_run_range(rts[name]) if sim else 0
                t0 = time.perf_counter()
                _, stats = await rts[name].encode_mels(mels)
                wall = time.perf_counter() - t0
            return bm.RunSample(wall, stats, (first, bx.sim_run_range(rts[name]) if sim else 0))

        peer, peer_note = (None, "skipped (--no-peer)") if args.no_peer else \
            bm.ct2_peer(model, os.cpu_count() or 1)
        for v in variants:  # warm-up: page in weights, grow workspaces, spin up worker threads
            for _ in range(st["warmup"]):
                progress.note(f"warm-up {v.name}")
                await timed(v.name)
                progress.step()
        rel_l2 = None
        for _ in range(st["warmup"]):
            if peer is not None:
                _, theirs = peer.encode(mels)
                if rel_l2 is None and (args.backend == "cpu" or args.sim_numerics):  # same numbers, or not?
                    ours, _ = await rts["baseline"].encode_mels(mels)
                    rel_l2 = float(np.linalg.norm(ours.astype(np.float64) - theirs) / np.linalg.norm(theirs))
            progress.step()

        samples: dict[str, list[bm.RunSample]] = {v.name: [] for v in variants}
        peer_walls: list[float] = []
        ratios: dict[str, dict[str, list[float]]] = {v.name: {"baseline": [], "peer": []} for v in variants}
        bf16_ratios: list[float] = []
        rng = random.Random(st["seed"])
        order = [v.name for v in variants] + (["<peer>"] if peer is not None else [])
        for r in range(rounds):
            if st["order"] == "shuffled":
                rng.shuffle(order)
            this: dict[str, float] = {}
            for name in order:
                progress.note(f"round {r + 1}/{rounds}: {name}")
                if name == "<peer>":
                    bm.settle(st["settle_ms"] / 1e3)
                    wall, _ = peer.encode(mels)  # type: ignore[union-attr]
                    peer_walls.append(wall)
                else:
                    s = await timed(name)
                    samples[name].append(s)
                    wall = s.wall_s
                this[name] = wall
                progress.step()
            if peer is None:
                progress.step()
            if "lanes_d4" in this and "lanes_d4_bf16" in this:  # precision="bf16" against fp32, same round
                bf16_ratios.append(this["lanes_d4_bf16"] / this["lanes_d4"])
            for v in variants:
                ratios[v.name]["baseline"].append(this["baseline"] / this[v.name])
                if "<peer>" in this:
                    ratios[v.name]["peer"].append(this[v.name] / this["<peer>"])

        out = {v.name: bm.aggregate(v, samples[v.name], audio_s, st["windows"], ratios[v.name]) for v in variants}
        if args.backend == "sim":
            col = bx.column_model([(rts[v.name], samples[v.name]) for v in variants])
            for v in variants:
                out[v.name]["bound"] = bx.sim_bound(rts[v.name], v, out[v.name], col, st["windows"])
        result["variants"] = out
        if bf16_ratios:
            result["bf16_vs_fp32"] = {"median": statistics.median(bf16_ratios), "min": min(bf16_ratios),
                                      "max": max(bf16_ratios), "all": bf16_ratios}
        pipelined = [v.name for v in variants if v.pipelined]
        best = min(pipelined, key=lambda n: out[n]["wall_s"]["p50"]) if pipelined else "baseline"
        result["best_pipelined"] = best
        result["peer"] = bx.peer_record(peer, peer_walls, audio_s, st["windows"]) if peer else None
        if result["peer"] is not None:
            result["peer"]["rel_l2_vs_ours"] = rel_l2
        result["peer_note"] = peer_note
        result["timelines"] = {n: bx.median_timeline(samples[n]) for n in dict.fromkeys(["baseline", best])}
        if not args.no_e2e:  # what a user gets: a runtime with default settings (plus --tile-rows if given)
            progress.note("end-to-end")
            rt = await stack.enter_async_context(Runtime(model, backend=args.backend, **rows, **opts))
            name = f"defaults: depth {rt.pipeline_depth}, {rt.lanes} lane(s), {rt.tile_rows}-row tiles"
            result["e2e"] = await bx.e2e_latency(rt, name, st["e2e_repeats"], getattr(rt.device, "blas_threads",
                                                 None), st["settle_ms"] / 1e3, progress)
            result["stream"] = await bx.stream_first_update(rt, st["stream_trials"], progress)
    if not args.no_overhead:
        result["overhead"] = []
        for depth in (1, 4):
            progress.note(f"null-kernel overhead, depth {depth}")
            result["overhead"].append(await bm.null_overhead(depth, st["overhead_tiles"], st["overhead_repeats"]))
            progress.step(st["overhead_repeats"])
    result["checks"] = bx.checks(result)
    env["machine"]["load_avg_end"] = bx.load_avg()
    env["machine"]["other_processes"] = bx.foreign_load(cpu_start)
    result.update(env)
    return result


def _plot(res: dict[str, Any], path: str) -> Path:
    from timeline_plot import plot_timelines

    panels = []
    for name, events in res["timelines"].items():
        v = res["variants"][name]
        span = max((e["end_ms"] for e in events), default=0.0)
        panels.append((f"{name} ({v['note']})", span, events))
    st = res["settings"]
    title = (f"Stage timeline, {res['model']['name']} on {res['backend']}: one 30 s window"
             f"{'s' if st['windows'] > 1 else ''} ×{st['windows']}, median-wall run of each variant")
    base = res["variants"]["baseline"]
    tiles = base["tiles_per_window"]
    zoom_tile = tiles // 3  # a steady-state stretch (past the stem, inside the blocks)
    zoom_ms = 10 * base["makespan_per_tile_ms"]
    return plot_timelines(path, panels, title, zoom_tile=zoom_tile, zoom_ms=zoom_ms)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; print the markdown table; write ``--json``/``--plot``. Returns an exit code."""
    args = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    if args.render:
        print(render_markdown(json.loads(Path(args.render).read_text())))
        return 0
    from aiowhisper_npu.cli.main import run_async

    with bx.ProgressBar(enabled=not args.no_progress) as progress:
        res = run_async(lambda: run_benchmark(args, progress), args.loop)
    res["command"] = " ".join(["python bench/latency.py", *(argv if argv is not None else sys.argv[1:])])
    if args.plot:
        res["plot"] = str(_plot(res, args.plot))
    print(render_markdown(res))
    if args.json:
        path = Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(res, indent=1, default=_jsonable))
    return 0


def _jsonable(x: Any) -> Any:
    if isinstance(x, (np.floating, np.integer)):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, Path):
        return str(x)
    raise TypeError(f"not JSON-able: {type(x).__name__}")


if __name__ == "__main__":
    raise SystemExit(main())
