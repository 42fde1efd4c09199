"""The latency benchmark's measurements: the variants under test, one measured call, a variant's record
and the CTranslate2 peer.

Everything here measures one thing the same way for every variant:

- the *span* of a measured encode is ``await rt.encode_mels(mels)``: ready log-mel windows in, hidden states
  (numpy) out. The peer (CTranslate2) is timed over the same span: ``encode(mels)`` to a numpy array;
- the wall clock is ``time.perf_counter`` around that call, in the caller, for every variant alike;
- stage times come from the pipeline's own per-tile event timeline of that same call
  (:class:`aiowhisper_npu.pipeline.stats.StageEvent`), never from a different run.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np

from ..pipeline.stats import STAGES, PipelineStats, StageEvent
from . import harness
from .harness import spread

__all__ = ["WINDOW_S", "Variant", "VARIANTS", "RunSample", "c_kernels", "stage_table", "aggregate", "pct",
           "Ct2Peer", "ct2_peer", "peer_record", "timeline_rel", "median_timeline"]

WINDOW_S = 30.0


def pct(values: Sequence[float] | np.ndarray, q: float) -> float:
    """:func:`harness.pct` with 0.0 (not NaN) for no values, so that the JSON record stays standard JSON."""
    return harness.pct(values, q, 0.0)


@dataclass(frozen=True)
class Variant:
    """One runtime configuration under test. Every variant runs the same plan (same tiles)."""

    name: str
    depth: int
    lanes: int = 1
    reuse_buffers: bool = True
    dma_batch: int = 1
    native: bool = True  # the C kernels (packed GEMM, fused attention and element-wise; when built); False: numpy forms
    note: str = ""
    precision: str = "fp32"  # Runtime(precision=...): "bf16" runs the bf16 kernels (docs/precision.md)

    def runtime_kwargs(self) -> dict[str, Any]:
        return {"pipeline_depth": self.depth, "lanes": self.lanes, "reuse_buffers": self.reuse_buffers,
                "dma_batch": self.dma_batch, "precision": self.precision}

    @property
    def pipelined(self) -> bool:
        return self.depth > 1


VARIANTS: tuple[Variant, ...] = (
    Variant("baseline", 1, reuse_buffers=False, note="depth 1, fresh buffers per tile, wait after every step"),
    Variant("pooled", 1, note="depth 1, buffer pool"),
    Variant("pipelined_d2", 2, note="depth 2"),
    Variant("pipelined_d3", 3, note="depth 3"),
    Variant("batch_dma", 3, dma_batch=3, note="depth 3, up to 3 tiles per to-device transfer"),
    Variant("lanes", 2, lanes=2, note="depth 2, 2 kernel lanes"),
    Variant("lanes_d4", 4, lanes=2, note="depth 4, 2 kernel lanes (the CPU default)"),
    Variant("lanes_d4_numpy", 4, lanes=2, native=False,
            note="the CPU default with the numpy forms (BLAS GEMMs, numpy element-wise passes) "
                 "instead of the C kernels"),
    Variant("lanes_d4_bf16", 4, lanes=2, precision="bf16",
            note="the CPU default with precision='bf16' (AVX512_BF16 GEMM where the CPU has it; "
                 "compare with lanes_d4)"),
)


@contextlib.contextmanager
def c_kernels(native: bool) -> Iterator[None]:
    """Run one measured call with the C kernels (``numerics.use_native``) on (when built) or off."""
    from .. import numerics

    previous = numerics.use_native(native)
    try:
        yield
    finally:
        numerics.use_native(previous)



@dataclass
class RunSample:
    """One measured call: the caller's wall clock and the call's own statistics."""

    wall_s: float
    stats: PipelineStats
    runs: tuple[int, int] = (0, 0)  # sim only: the device run indices [first, last) this call submitted
    makespan_s: float = 0.0
    kernel_idle_s: float = 0.0  # lanes x makespan - kernel busy: the kernel rows' idle time, from the timeline
    durations: dict[str, np.ndarray] = field(default_factory=dict)  # per-tile seconds, by stage
    kernel_by_op: dict[str, np.ndarray] = field(default_factory=dict)  # kernel-stage seconds, by op

    def __post_init__(self) -> None:
        tl = self.stats.timeline
        if tl:
            self.makespan_s = max(e.end for e in tl) - min(e.start for e in tl)
        self.durations = {s: np.array([e.end - e.start for e in tl if e.stage == s]) for s in STAGES}
        kern = [e for e in tl if e.stage == "kernel"]
        lanes = len({e.lane for e in kern}) or 1
        self.kernel_idle_s = max(0.0, lanes * self.makespan_s - float(self.durations["kernel"].sum()))
        for op in dict.fromkeys(e.op for e in kern):
            self.kernel_by_op[op] = np.array([e.end - e.start for e in kern if e.op == op])


def stage_table(samples: Sequence[RunSample]) -> dict[str, dict[str, float]]:
    """Per-tile stage time in ms (p50, p95, mean) pooled over every tile of every repeat."""
    out: dict[str, dict[str, float]] = {}
    for s in STAGES:
        d = np.concatenate([r.durations[s] for r in samples]) * 1e3 if samples else np.zeros(0)
        out[s] = {"p50_ms": pct(d, 50), "p95_ms": pct(d, 95), "mean_ms": float(d.mean()) if d.size else 0.0}
    return out


def _by_op(samples: Sequence[RunSample], windows: int) -> dict[str, dict[str, float]]:
    """Kernel stage per op: tiles per window, mean ms per tile, and the median per-call total ms."""
    out: dict[str, dict[str, float]] = {}
    for op in samples[0].kernel_by_op if samples else {}:
        every = np.concatenate([r.kernel_by_op[op] for r in samples])
        out[op] = {"tiles_per_window": int(samples[0].kernel_by_op[op].size) // max(1, windows),
                   "mean_ms": float(every.mean() * 1e3),
                   "total_ms": pct([float(r.kernel_by_op[op].sum()) * 1e3 for r in samples], 50)}
    return out


def aggregate(v: Variant, samples: Sequence[RunSample], audio_s: float, windows: int,
              ratios: Mapping[str, Sequence[float]]) -> dict[str, Any]:
    """The JSON record of one variant (see ``bench_schema.md``): medians and p95 over repeats."""
    walls = [r.wall_s for r in samples]
    spans = [r.makespan_s for r in samples]
    tiles = samples[0].stats.tiles if samples else 0
    stages = stage_table(samples)
    # per run, so that both sides of the residual come from the same call; then the median over runs
    sums = [sum(float(r.durations[s].mean()) for s in STAGES) * 1e3 if r.stats.tiles else 0.0 for r in samples]
    per_tiles = [r.makespan_s / max(1, r.stats.tiles) * 1e3 for r in samples]
    sum_means, per_tile = pct(sums, 50), pct(per_tiles, 50)
    residual = pct([p - q for p, q in zip(per_tiles, sums)], 50)
    busy = {s: pct([r.stats.stage_busy_s[s] for r in samples], 50) for s in STAGES}
    cap = {s: (v.lanes if s == "kernel" else 1) for s in STAGES}
    util = {s: max(r.stats.stage_busy_s[s] / (r.stats.wall_s * cap[s]) for r in samples)
            if samples else 0.0 for s in STAGES}
    dev_k = pct([r.stats.device_kernel_s / max(1, r.stats.tiles) * 1e3 for r in samples], 50)
    wall50 = pct(walls, 50)
    return {
        "name": v.name, "note": v.note, "settings": {**v.runtime_kwargs(), "native_kernels": v.native},
        "repeats": len(samples),
        "tiles": tiles, "tiles_per_window": tiles // max(1, windows),
        "wall_s": {**spread(walls), "all": walls},
        "internal_wall_s": spread([r.stats.wall_s for r in samples]),
        "makespan_s": spread(spans),
        "window_s": wall50 / max(1, windows),
        "realtime_factor": audio_s / wall50 if wall50 else 0.0,
        "stage_ms": stages,
        "sum_stage_means_ms": sum_means,
        "makespan_per_tile_ms": per_tile,
        "residual_ms": residual,
        "device_kernel_ms": dev_k,
        "kernel_dispatch_ms": stages["kernel"]["mean_ms"] - dev_k,
        "stage_busy_s": busy,
        "stage_utilisation_max": util,
        "dma_overhead_pct": pct([r.stats.dma_overhead_pct for r in samples], 50),
        "kernel_idle_ms": pct([r.kernel_idle_s * 1e3 for r in samples], 50),
        "kernel_by_op_ms": _by_op(samples, windows),
        "stalls": {"count": pct([r.stats.stalls for r in samples], 50),
                   "seconds": pct([r.stats.stall_s for r in samples], 50)},
        "dependency_waits": {"count": pct([r.stats.dependency_waits for r in samples], 50),
                             "seconds": pct([r.stats.dependency_wait_s for r in samples], 50)},
        "tile_latency_ms": {"p50": pct([r.stats.tile_latency_p50_s * 1e3 for r in samples], 50),
                            "p95": pct([r.stats.tile_latency_p95_s * 1e3 for r in samples], 50)},
        "queue_occupancy": {k: o._asdict() for k, o in samples[-1].stats.queue_occupancy.items()}
        if samples else {},
        "speedup_vs_baseline": spread(list(ratios.get("baseline", []))),
        "ratio_to_peer": spread(list(ratios.get("peer", []))) if ratios.get("peer") else None,
        "bound": None,
    }


# -- the peer: CTranslate2 --------------------------------------------------------------------------------
class Ct2Peer:
    """CTranslate2 fp32 ``Whisper.encode`` of the same log-mel windows, timed over the same span."""

    def __init__(self, model: Any, threads: int):
        import ctranslate2

        self.ct2 = ctranslate2
        self.version = ctranslate2.__version__
        self.threads = threads
        self.dir = Path(model.path)  # a complete CTranslate2 directory (registry.resolve_model_dir)
        self.model = ctranslate2.models.Whisper(str(self.dir), device="cpu", compute_type="float32",
                                                intra_threads=threads)

    def encode(self, mels: np.ndarray) -> tuple[float, np.ndarray]:
        """Seconds for mels -> numpy hidden states, and the hidden states."""
        t0 = time.perf_counter()
        sv = self.ct2.StorageView.from_array(np.ascontiguousarray(mels))
        out = np.array(self.model.encode(sv, to_cpu=True))
        return time.perf_counter() - t0, out


def peer_record(peer: Ct2Peer, walls: Sequence[float], audio_s: float, windows: int) -> dict[str, Any]:
    """The JSON record of the peer's measured rounds."""
    p50 = pct(walls, 50)
    return {"name": "ctranslate2", "version": peer.version, "compute_type": "float32", "threads": peer.threads,
            "model_dir": str(peer.dir), "repeats": len(walls),
            "wall_s": {"p50": p50, "p95": pct(walls, 95), "min": min(walls), "max": max(walls),
                       "all": list(walls)},
            "window_s": p50 / max(1, windows), "realtime_factor": audio_s / p50 if p50 else 0.0}


def ct2_peer(model: Any, threads: int) -> tuple[Ct2Peer | None, str]:
    """The peer, or None with the reason it is missing."""
    try:
        return Ct2Peer(model, threads), ""
    except ImportError:
        return None, "ctranslate2 is not installed"
    except Exception as exc:  # a model dir ctranslate2 cannot read: report, don't fail the benchmark
        return None, f"{type(exc).__name__}: {exc}"


def timeline_rel(events: Sequence[StageEvent]) -> list[dict[str, Any]]:
    """The timeline relative to its first event, in ms, as JSON-able rows (for the plot and the JSON)."""
    if not events:
        return []
    t0 = min(e.start for e in events)
    return [{"job": e.job, "tile": e.tile, "op": e.op, "stage": e.stage, "lane": e.lane,
             "start_ms": (e.start - t0) * 1e3, "end_ms": (e.end - t0) * 1e3} for e in events]


def median_timeline(samples: Sequence[RunSample]) -> list[dict[str, Any]]:
    """The timeline of the run whose wall time is the median (the plotted, representative run)."""
    ordered = sorted(samples, key=lambda s: s.wall_s)
    return timeline_rel(ordered[len(ordered) // 2].stats.timeline) if ordered else []
