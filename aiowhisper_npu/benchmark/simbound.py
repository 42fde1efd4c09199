"""The simulated NPU's theoretical makespan for a variant, from the simulator's own timing model: the
``bound`` of a variant record on ``--backend sim`` (``bench/bench_schema.md``)."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from ..encoder.plan import EncoderPlan
from .measure import RunSample, Variant

__all__ = ["sim_run_range", "column_model", "sim_bound"]


def _sim_npu(rt: Any) -> Any:
    """The simulated NPU behind a ``backend="sim"`` runtime (public stand-in API: ``pyxrt.sim_device``)."""
    dev = rt.device
    return dev.xrt.sim_device(getattr(dev, "device_index", 0))


def sim_run_range(rt: Any) -> int:
    """Runs submitted so far on the runtime's simulated NPU (bracket a call with two of these)."""
    return int(_sim_npu(rt).runs_submitted)


def column_model(runs: Sequence[tuple[Any, Sequence[RunSample]]]) -> dict[tuple[str, int], float]:
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


def _records_into(best: dict[tuple[str, int], float], rt: Any, samples: Sequence[RunSample]) -> None:
    recs = sorted(_sim_npu(rt).records, key=lambda r: r.index)
    plan = EncoderPlan(rt.dims, rt.tile_rows)  # the plan every measured call ran
    for s in samples:
        mine = [r for r in recs if s.runs[0] <= r.index < s.runs[1]]
        kern = sorted((e for e in s.stats.timeline if e.stage == "kernel"), key=lambda e: e.start)
        if len(mine) != len(kern):
            continue
        for r, e in zip(mine, kern):
            key = (e.op, int(plan.tiles[e.tile].params.get("n", 0)))
            best[key] = min(best.get(key, float("inf")), r.end - r.start)


def sim_bound(rt: Any, v: Variant, rec: dict[str, Any], col: dict[tuple[str, int], float],
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
    plan = EncoderPlan(rt.dims, rt.tile_rows)  # the plan every measured call ran

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
