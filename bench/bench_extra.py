"""Benchmark helpers around the variant measurements: progress, peer record, e2e and stream latency,
the sim's theoretical bound, consistency checks and the machine/environment record."""

from __future__ import annotations

import importlib.util
import os
import platform
import random
import sys
import time
from typing import Any, Sequence

import numpy as np

import bench_measure as bm
from aiowhisper_npu.pipeline.stats import STAGES

__all__ = ["ProgressBar", "cpu_snapshot", "foreign_load", "load_avg", "peer_record", "median_timeline",
           "e2e_latency", "stream_first_update",
           "sim_bound", "sim_run_range", "column_model", "checks", "environment"]


class ProgressBar:
    """A progress bar on stderr: rich if installed, else tqdm, else nothing."""

    def __init__(self, enabled: bool = True):
        self.enabled = enabled
        self._bar: Any = None
        self._task: Any = None
        self._kind = ""

    def __enter__(self) -> ProgressBar:
        if not self.enabled:
            return self
        try:
            from rich.console import Console
            from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

            self._bar = Progress(TextColumn("{task.description:<40}"), BarColumn(), TextColumn("{task.completed}/"
                                 "{task.total}"), TimeElapsedColumn(), console=Console(file=sys.stderr),
                                 transient=True)
            self._bar.__enter__()
            self._task = self._bar.add_task("benchmark", total=None)
            self._kind = "rich"
        except ImportError:
            try:
                from tqdm import tqdm

                self._bar = tqdm(file=sys.stderr, leave=False, dynamic_ncols=True)
                self._kind = "tqdm"
            except ImportError:
                self._bar = None
        return self

    def __exit__(self, *exc: object) -> None:
        if self._kind == "rich":
            self._bar.__exit__(*exc)
        elif self._kind == "tqdm":
            self._bar.close()

    def total(self, n: int) -> None:
        if self._kind == "rich":
            self._bar.update(self._task, total=n)
        elif self._kind == "tqdm":
            self._bar.total = n
            self._bar.refresh()

    def note(self, text: str) -> None:
        if self._kind == "rich":
            self._bar.update(self._task, description=text)
        elif self._kind == "tqdm":
            self._bar.set_description_str(text[:40])

    def step(self, n: int = 1) -> None:
        if self._kind == "rich":
            self._bar.advance(self._task, n)
        elif self._kind == "tqdm":
            self._bar.update(n)


def cpu_snapshot() -> tuple[float, float, float] | None:
    """(system busy CPU seconds, this process's CPU seconds, monotonic time), or None off Linux."""
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    hz = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    busy = (sum(fields[:8]) - idle) / hz  # user..steal, without guest (already counted in user)
    t = os.times()
    return busy, t.user + t.system, time.monotonic()


def foreign_load(start: tuple[float, float, float] | None) -> dict[str, float] | None:
    """CPU used by *other* processes since ``start``, as core-seconds and % of all cores: a noise gauge."""
    end = cpu_snapshot()
    if start is None or end is None:
        return None
    wall = end[2] - start[2]
    other = max(0.0, (end[0] - start[0]) - (end[1] - start[1]))
    cores = os.cpu_count() or 1
    return {"wall_s": round(wall, 2), "other_cpu_s": round(other, 2),
            "other_pct_of_machine": round(100 * other / (wall * cores), 1) if wall > 0 else 0.0}


def load_avg() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (OSError, AttributeError):
        return None


def peer_record(peer: bm.Ct2Peer, walls: Sequence[float], audio_s: float, windows: int) -> dict[str, Any]:
    p50 = bm.pct(walls, 50)
    return {"name": "ctranslate2", "version": peer.version, "compute_type": "float32", "threads": peer.threads,
            "model_dir": str(peer.dir), "repeats": len(walls),
            "wall_s": {"p50": p50, "p95": bm.pct(walls, 95), "min": min(walls), "max": max(walls),
                       "all": list(walls)},
            "window_s": p50 / max(1, windows), "realtime_factor": audio_s / p50 if p50 else 0.0}


def median_timeline(samples: Sequence[bm.RunSample]) -> list[dict[str, Any]]:
    """The timeline of the run whose wall time is the median (the plotted, representative run)."""
    ordered = sorted(samples, key=lambda s: s.wall_s)
    return bm.timeline_rel(ordered[len(ordered) // 2].stats.timeline) if ordered else []


async def e2e_latency(rt: Any, name: str, repeats: int, threads: int | None, settle_s: float,
                      progress: ProgressBar) -> dict[str, Any]:
    """``rt.encode(audio)`` of 5, 10 and 30 s of speech (mel included), interleaved, p50/p95."""
    clips = {s: bm.speech_audio(s) for s in (5.0, 10.0, 30.0)}
    times: dict[float, list[float]] = {s: [] for s in clips}
    for s in clips:  # warm-up of the mel front end at each length
        await rt.encode(clips[s])
    progress.step(2)
    rng = random.Random(2)
    for _ in range(repeats):
        order = list(clips)
        rng.shuffle(order)
        for s in order:
            bm.settle(settle_s)
            with bm.blas_limit(threads):
                t0 = time.perf_counter()
                await rt.encode(clips[s])
                times[s].append(time.perf_counter() - t0)
            progress.step()
    return {"variant": name, "repeats": repeats,
            "clips": [{"seconds": s, "p50_s": bm.pct(t, 50), "p95_s": bm.pct(t, 95), "all": t}
                      for s, t in times.items()]}


async def stream_first_update(rt: Any, trials: int, progress: ProgressBar) -> dict[str, Any]:
    """First-update latency of ``rt.stream``: speech fed at real-time pace in 0.5 s chunks, updates every 1 s.

    Reports the stream's own ``latency_s`` of the first update (arrival of the newest audio it includes ->
    update ready) and the time from the start of the stream to the first update.
    """
    if importlib.util.find_spec("aiowhisper_npu.streaming.stream") is None:
        return {"note": "skipped: aiowhisper_npu.streaming.stream is not in this build yet"}
    import anyio

    audio = bm.speech_audio(3.0)
    chunk = 8000
    lat: list[float] = []
    since_start: list[float] = []
    try:
        for _ in range(trials):
            async def chunks() -> Any:
                t0 = time.perf_counter()
                for k, i in enumerate(range(0, audio.size, chunk)):
                    await anyio.sleep(max(0.0, t0 + k * chunk / 16000 - time.perf_counter()))
                    yield audio[i : i + chunk]

            t_start = time.perf_counter()
            async with rt.stream(chunks(), update_every_s=1.0) as s:
                async for upd in s:
                    since_start.append(time.perf_counter() - t_start)
                    lat.append(float(upd.latency_s))
                    break
            progress.step()
    except Exception as exc:  # the streaming API is young; report rather than fail the benchmark
        return {"note": f"skipped: rt.stream failed: {type(exc).__name__}: {exc}"}
    if not lat:
        return {"note": "rt.stream produced no update for 3 s of speech"}
    return {"how": "speech fed at real-time pace in 0.5 s chunks, update_every_s=1, context=full; the "
                   "stream's latency_s of its first update (newest audio in -> update ready)",
            "first_update_s": {"p50": bm.pct(lat, 50), "p95": bm.pct(lat, 95), "all": lat},
            "first_update_since_start_s": {"p50": bm.pct(since_start, 50), "all": since_start}}


def _sim_npu(rt: Any) -> Any:
    """The simulated NPU behind a ``backend="sim"`` runtime (public stand-in API: ``pyxrt.sim_device``)."""
    dev = rt.device
    return dev.xrt.sim_device(getattr(dev, "device_index", 0))


def sim_run_range(rt: Any) -> int:
    """Runs submitted so far on the runtime's simulated NPU (bracket a call with two of these)."""
    return int(_sim_npu(rt).runs_submitted)


def column_model(runs: Sequence[tuple[Any, Sequence[bm.RunSample]]]) -> dict[tuple[str, int], float]:
    """Modeled column seconds per (op, rows) from the sim's run records of the measured calls.

    ``runs`` pairs each runtime with its samples; every variant runs the same SimConfig, so the records of
    all variants are pooled into one model.

    A record spans ``[modeled start, max(modeled end, execution)]``, so its span is the model's
    ``SimConfig.run_seconds`` whenever the sim's worker thread was on time, and longer otherwise: the
    minimum over every run of the same (op, rows) is the modeled value. Runs map to tiles by launch order
    (records by index, kernel events by start time).
    """
    best: dict[tuple[str, int], float] = {}
    for rt, samples in runs:
        _records_into(best, rt, samples)
    return best


def _records_into(best: dict[tuple[str, int], float], rt: Any, samples: Sequence[bm.RunSample]) -> None:
    recs = sorted(_sim_npu(rt).records, key=lambda r: r.index)
    plan = rt.encoder.plan(None)
    for s in samples:
        mine = [r for r in recs if s.runs[0] <= r.index < s.runs[1]]
        kern = sorted((e for e in s.stats.timeline if e.stage == "kernel"), key=lambda e: e.start)
        if len(mine) != len(kern):
            continue
        for r, e in zip(mine, kern):
            key = (e.op, int(plan.tiles[e.tile].params.get("n", 0)))
            best[key] = min(best.get(key, float("inf")), r.end - r.start)


def sim_bound(rt: Any, v: bm.Variant, rec: dict[str, Any], col: dict[tuple[str, int], float],
              windows: int) -> dict[str, Any]:
    """The sim's theoretical makespan for this variant, from the sim's own timing model, and how close we got.

    Per tile the model gives host time before the run (``bo.sync`` of each input, of the params BO, and
    the ``kernel(...)`` submit: all hold the GIL, so they serialise on the host), the column time
    (``SimConfig.run_seconds``) and host time after it (``bo.sync`` of each output). Host prep and memcpy
    are real host work, not modeled, so the bound is a lower bound. Depth 1: the serial sum. Pipelined:
    ``N x bottleneck + fill``: the larger of a column-bound ``column total / columns`` plus the first
    tile's pre-run host time, the last tile's read-back and, for a single window, one drain-and-refill per
    attention barrier (when nothing else can run), and a host-bound ``host total`` plus the host's
    unavoidable waits (the last tile's run; per barrier, the last ``qkv`` run).
    """
    dev = rt.device
    cfg = dev.xrt.sim_config()
    if not col:
        return {"note": "no sim run records matched the timeline"}
    manifest = dev.manifest
    plan = rt.encoder.plan(None)

    def params_bytes(op: str) -> int:
        spec = manifest.ops.get(op)
        return sum(4 * len(a.fields) for a in spec.args if a.source == "params") if spec else 0

    pre, post, run = [], [], []
    for t in plan.tiles:
        pre.append(sum(cfg.sync_seconds(s.nbytes) for s in t.inputs) + cfg.sync_seconds(params_bytes(t.op))
                   + cfg.submit_seconds())
        post.append(sum(cfg.sync_seconds(s.nbytes) for s in t.outputs))
        run.append(col.get((t.op, int(t.params.get("n", 0))), float("nan")))
    pre_a, post_a, run_a = (np.array(x) * windows for x in (pre, post, run))
    host_total, col_total = float(pre_a.sum() + post_a.sum()), float(np.nansum(run_a))
    if not v.pipelined:
        bound, model = host_total + col_total, "serial sum"
    else:
        cols = max(1, min(v.lanes, cfg.columns))
        qkv = [i for i, t in enumerate(plan.tiles) if t.op == "qkv"]
        attn = [i for i, t in enumerate(plan.tiles) if t.op == "attn_mlp"]
        barriers = plan.dims.n_audio_layer if windows == 1 and qkv and attn else 0
        # column-bound: the column cannot start before the first tile is sent, must finish before the last
        # read-back, and idles at each barrier while the last qkv tile is read back and the first attention
        # tile is sent. Host-bound: the host idles while the last tile runs, and at each barrier while the
        # last qkv tile runs. Both are lower bounds, so their maximum is one.
        col_bound = col_total / cols + pre[0] + post[-1] + barriers * (post[qkv[-1]] + pre[attn[0]] if barriers
                                                                       else 0.0)
        host_bound = host_total + run[-1] + barriers * (run[qkv[-1]] if barriers else 0.0)
        bound = max(col_bound, host_bound)
        model = f"N x bottleneck + fill ({'column' if col_bound >= host_bound else 'host'}-bound)"
    span = rec["makespan_s"]["p50"]
    return {"bound_s": bound, "makespan_s": span, "fraction": bound / span if span else 0.0, "model": model,
            "host_modeled_s": host_total, "column_modeled_s": col_total,
            "column_ms_by_op": {f"{op} n={n}": s * 1e3 for (op, n), s in sorted(col.items())},
            "sim_config": {k: getattr(cfg, k) for k in ("time_scale", "submit_s", "sync_latency_s",
                                                        "sync_bytes_per_s", "run_overhead_s", "dma_latency_s",
                                                        "dma_bytes_per_s", "dma_overlap", "columns", "numerics")}}


def checks(res: dict[str, Any]) -> dict[str, Any]:
    """Consistency checks on the numbers (also asserted by tests/test_bench.py)."""
    var = res["variants"]
    out: dict[str, Any] = {}
    for name in ("baseline", "pooled"):
        if name in var:
            v = var[name]
            out[f"{name}_residual_pct"] = round(100 * v["residual_ms"] / v["makespan_per_tile_ms"], 2) \
                if v["makespan_per_tile_ms"] else None
    out["max_stage_utilisation"] = round(max(max(v["stage_utilisation_max"].values()) for v in var.values()), 4)
    best = res.get("best_pipelined")
    if best and best != "baseline":
        out["best_pipelined_makespan_le_baseline"] = \
            var[best]["makespan_s"]["p50"] <= var["baseline"]["makespan_s"]["p50"]
    return out


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(mod: str) -> str | None:
    try:
        m = __import__(mod)
    except Exception:
        return None
    return str(getattr(m, "__version__", "?"))


def environment(model: Any, load_start: list[float] | None) -> dict[str, Any]:
    """Machine, versions, BLAS (with its core type), relevant env vars and the model."""
    from aiowhisper_npu.cli.info import collect_info

    info = collect_info()
    d = model.dims
    return {
        "machine": {"cpu_model": _cpu_model(), "cpus": os.cpu_count(), "arch": platform.machine(),
                    "platform": platform.platform(), "load_avg_start": load_start, "load_avg_end": load_avg()},
        "versions": {"aiowhisper_npu": info.get("version"), "python": platform.python_version(),
                     "numpy": np.__version__, "anyio": _version("anyio"), "uvloop": _version("uvloop"),
                     "trio": _version("trio"), "ctranslate2": _version("ctranslate2")},
        "blas": info.get("blas"),
        "blas_core_type": next((b.get("architecture") for b in info.get("blas") or [] if b.get("architecture")),
                               None),
        "env": {k: v for k, v in sorted(os.environ.items())
                if k.startswith(("OPENBLAS_", "OMP_", "MKL_", "GOTO", "BLIS_", "CT2_"))},
        "model": {"name": getattr(model, "name", str(model)), "path": str(getattr(model, "path", "")),
                  "dims": {"n_mels": d.n_mels, "n_audio_ctx": d.n_audio_ctx, "n_audio_state": d.n_audio_state,
                           "n_audio_head": d.n_audio_head, "n_audio_layer": d.n_audio_layer}},
        "stages": list(STAGES),
    }
