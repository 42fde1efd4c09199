"""The runtime's own cost per tile, measured with a kernel that does nothing (the latency benchmark's
``overhead`` record, ``bench/bench_schema.md``)."""

from __future__ import annotations

import time
from typing import Any, Mapping, Sequence

import anyio
import numpy as np

from ..devices import make_device
from ..pipeline.pipeline import Pipeline
from ..pipeline.pool import BufferPool
from ..pipeline.stats import STAGES, StatsRecorder
from ..tiles import ArraySpec, Tile, slot_nbytes
from .harness import settle
from .measure import RunSample, pct

__all__ = ["NullProgram", "NullJob", "SLEEP_KERNEL_S", "null_overhead"]


class NullProgram:
    """A :class:`~aiowhisper_npu.tiles.KernelProgram`: ``null`` does nothing; ``sleep`` sleeps ``sleep_s``
    (GIL released, like a device kernel) and records when it ran, on the lane thread."""

    def __init__(self, sleep_s: float = 0.0):
        self.sleep_s = sleep_s
        self.spans: list[tuple[float, float]] = []

    @property
    def resident(self) -> Mapping[str, np.ndarray]:
        return {}

    def make_workspace(self) -> None:
        return None

    def run(self, op: str, resident: Mapping[str, np.ndarray], workspace: Any, params: Mapping[str, Any],
            inputs: Sequence[np.ndarray], outputs: Sequence[np.ndarray],
            tensors: Mapping[str, np.ndarray]) -> None:
        if op == "sleep":
            t0 = time.perf_counter()
            time.sleep(self.sleep_s)
            self.spans.append((t0, time.perf_counter()))


class NullJob:
    """``n`` independent tiles of 64 floats in and out; prep and commit touch one value each."""

    def __init__(self, n: int, floats: int = 64, op: str = "null"):
        spec = ArraySpec((floats,))
        self._tiles = tuple(Tile(i, op, (), (spec,), (spec,), label=f"{op} {i}") for i in range(n))

    @property
    def tiles(self) -> Sequence[Tile]:
        return self._tiles

    @property
    def tensor_specs(self) -> Mapping[str, ArraySpec]:
        return {}

    def prepare(self, tile: Tile, host_in: Sequence[np.ndarray]) -> None:
        host_in[0][0] = tile.index

    def commit(self, tile: Tile, host_out: Sequence[np.ndarray]) -> None:
        return None


SLEEP_KERNEL_S = 0.5e-3  # the fixed-length kernel of the lane-gap measurement


async def null_overhead(depth: int, tiles: int, repeats: int) -> dict[str, Any]:
    """Per-tile runtime cost (µs) of each stage with a kernel that does nothing, on the CPU device.

    Two runs per repeat through the same ``Pipeline``: ``tiles`` null kernels (each stage's own time per
    tile, the kernel stage's event-loop cost ``dispatch_s``, its launch-to-completion-seen latency, and the
    wall time per tile), and ``tiles // 4`` fixed 0.5 ms kernels, whose back-to-back gaps on the lane are the
    device time lost to dispatch once the pipeline keeps the lane fed.
    """
    program = NullProgram(SLEEP_KERNEL_S)
    device = make_device("cpu", lanes=1, blas_threads=1)
    device.load(program)
    job0 = NullJob(tiles)
    ins, outs = slot_nbytes(job0.tiles)
    pool = BufferPool(device, ins, outs, depth)
    pipe = Pipeline(device, pool, lanes=1, max_active_jobs=1)
    runs: list[RunSample] = []
    gaps: list[float] = []
    n_sleep = max(20, tiles // 4)
    try:
        async with anyio.create_task_group() as tg:
            await tg.start(pipe.serve)
            await pipe.run([NullJob(min(tiles, 50))], StatsRecorder())  # warm-up
            for _ in range(repeats):
                rec = StatsRecorder()
                settle(0.0)
                t0 = time.perf_counter()
                await pipe.run([NullJob(tiles)], rec)
                runs.append(RunSample(time.perf_counter() - t0, rec.snapshot()))
                program.spans.clear()
                await pipe.run([NullJob(n_sleep, op="sleep")], StatsRecorder())
                sp = program.spans[n_sleep // 10:]  # steady state: the lane's queue has filled
                gaps.append(float(np.median([b[0] - a[1] for a, b in zip(sp, sp[1:])])))
            tg.cancel_scope.cancel()
    finally:
        pool.close()
        device.close()
    best = min(runs, key=lambda r: r.wall_s)  # overhead: the least-disturbed run is the honest floor
    us = {s: float(best.durations[s].mean() * 1e6) for s in STAGES}
    cost = dict(us, kernel=best.stats.dispatch_s / tiles * 1e6)  # kernel stage: its own loop time
    gap_us = float(np.median(gaps) * 1e6)
    worst = max(*cost.values(), gap_us)
    return {
        "depth": depth, "tiles": tiles, "repeats": repeats,
        "stage_us_mean": us,
        "stage_us_p50": {s: pct(best.durations[s], 50) * 1e6 for s in STAGES},
        "stage_cost_us": cost,
        "kernel_latency_us": us["kernel"],
        "lane_gap_us": gap_us,
        "lane_gap_kernel_ms": SLEEP_KERNEL_S * 1e3,
        "device_kernel_us": best.stats.device_kernel_s / tiles * 1e6,
        "wall_us_per_tile": {"best": best.wall_s / tiles * 1e6,
                             "p50": pct([r.wall_s / tiles * 1e6 for r in runs], 50)},
        "unattributed_us_per_tile": best.makespan_s / tiles * 1e6 - sum(us.values()),
        "max_stage_us": worst,
        "goal_us": 30.0,
        "meets_goal": worst <= 30.0,
    }
