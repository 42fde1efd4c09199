"""Pipeline statistics: what each stage did, when, and where the kernel sat idle.

Definitions (also in docs/architecture.md):

- ``stage_busy_s[stage]``: the summed duration of that stage's work items. A ``kernel`` item lasts from
  its launch (or, when it was queued behind the lane's previous run, from the moment that run was seen
  complete) to the moment the pipeline sees it complete: dispatch and wake-up included, so that in the
  serial case the four stages tile the timeline. Summed over lanes, so it can exceed ``wall_s`` when
  ``lanes > 1``. ``device_kernel_s`` is the device's own measure of the kernels (compute only).
  ``host_prep``, ``to_device`` and ``from_device`` (which includes the commit of outputs into host
  memory) each run one at a time, so each is at most ``wall_s``.
- ``dispatch_s``: event-loop time the kernel stage itself spent per tile (launching the run, handing it to
  its lane thread, taking the completion): the kernel stage's own cost, without the wait.
- ``stalls`` / ``stall_s``: times a kernel lane finished a tile and then sat idle waiting for input while
  work remained upstream (a tile ready to prepare, being prepared, or being copied to the device), and the
  idle seconds until its next tile arrived. At ``pipeline_depth=1`` every tile after the first stalls.
- ``dependency_waits`` / ``dependency_wait_s``: idle periods when nothing upstream was ready because every
  remaining tile waited on a dependency (e.g. the attention barrier). Not counted as stalls.
- ``dma_overhead_pct``: ``100 * (to_device + from_device) / (to_device + kernel + from_device)`` busy time:
  the share of device-side work that is data movement rather than compute.
- ``queue_occupancy[q]``: items waiting in each inter-stage queue, sampled at every send (mean, max,
  capacity).
- ``tile_latency_p50_s``/``p95``: from the start of a tile's host prep to the end of its commit.
- ``wall_s``: from submission of the request to its completion.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

__all__ = ["STAGES", "StageEvent", "QueueOccupancy", "PipelineStats", "StatsRecorder"]

STAGES = ("host_prep", "to_device", "kernel", "from_device")


class StageEvent(NamedTuple):
    """One stage's work on one tile, in ``time.perf_counter`` seconds."""

    job: int
    tile: int
    op: str
    stage: str
    lane: int
    start: float
    end: float


class QueueOccupancy(NamedTuple):
    mean: float
    max: int
    capacity: int


@dataclass(frozen=True)
class PipelineStats:
    """A snapshot of pipeline statistics for one call (``out.stats``) or a runtime (``rt.stats``)."""

    tiles: int = 0
    wall_s: float = 0.0
    stage_busy_s: dict[str, float] = field(default_factory=lambda: dict.fromkeys(STAGES, 0.0))
    stalls: int = 0
    stall_s: float = 0.0
    dependency_waits: int = 0
    dependency_wait_s: float = 0.0
    dma_overhead_pct: float = 0.0
    device_kernel_s: float = 0.0
    dispatch_s: float = 0.0
    queue_occupancy: dict[str, QueueOccupancy] = field(default_factory=dict)
    tile_latency_p50_s: float = 0.0
    tile_latency_p95_s: float = 0.0
    timeline: tuple[StageEvent, ...] = ()

    def summary(self) -> dict[str, object]:
        """Everything but the timeline, as plain JSON-able values."""
        return {
            "tiles": self.tiles, "wall_s": self.wall_s, "stage_busy_s": dict(self.stage_busy_s),
            "stalls": self.stalls, "stall_s": self.stall_s, "dependency_waits": self.dependency_waits,
            "dependency_wait_s": self.dependency_wait_s, "dma_overhead_pct": self.dma_overhead_pct,
            "device_kernel_s": self.device_kernel_s, "dispatch_s": self.dispatch_s,
            "queue_occupancy": {k: v._asdict() for k, v in self.queue_occupancy.items()},
            "tile_latency_p50_s": self.tile_latency_p50_s, "tile_latency_p95_s": self.tile_latency_p95_s,
        }


class StatsRecorder:
    """Accumulates events for one scope (a request, or a whole runtime). Not thread-safe: loop only."""

    def __init__(self, max_events: int | None = None):
        self.events: deque[StageEvent] = deque(maxlen=max_events)
        self.busy = dict.fromkeys(STAGES, 0.0)
        self.tiles = 0
        self.latencies: deque[float] = deque(maxlen=max_events)
        self.stalls = 0
        self.stall_s = 0.0
        self.dep_waits = 0
        self.dep_wait_s = 0.0
        self.queue_samples: dict[str, list[float]] = {}
        self.queue_caps: dict[str, int] = {}
        self.wall_s = 0.0
        self.device_kernel_s = 0.0
        self.dispatch_s = 0.0

    def event(self, ev: StageEvent) -> None:
        self.events.append(ev)
        self.busy[ev.stage] += ev.end - ev.start

    def tile_done(self, latency_s: float) -> None:
        self.tiles += 1
        self.latencies.append(latency_s)

    def idle(self, seconds: float, stall: bool) -> None:
        if stall:
            self.stalls += 1
            self.stall_s += seconds
        else:
            self.dep_waits += 1
            self.dep_wait_s += seconds

    def queue(self, name: str, used: int, capacity: int) -> None:
        samples = self.queue_samples.setdefault(name, [0.0, 0.0, 0.0])  # count, sum, max
        samples[0] += 1
        samples[1] += used
        samples[2] = max(samples[2], used)
        self.queue_caps[name] = capacity

    def snapshot(self, wall_s: float | None = None) -> PipelineStats:
        lat = np.asarray(self.latencies, dtype=np.float64)
        b = dict(self.busy)
        dev = b["to_device"] + b["kernel"] + b["from_device"]
        occ = {k: QueueOccupancy(s[1] / s[0] if s[0] else 0.0, int(s[2]), self.queue_caps[k])
               for k, s in self.queue_samples.items()}
        return PipelineStats(
            tiles=self.tiles, wall_s=self.wall_s if wall_s is None else wall_s, stage_busy_s=b,
            stalls=self.stalls, stall_s=self.stall_s, dependency_waits=self.dep_waits,
            dependency_wait_s=self.dep_wait_s,
            dma_overhead_pct=100.0 * (b["to_device"] + b["from_device"]) / dev if dev > 0 else 0.0,
            device_kernel_s=self.device_kernel_s, dispatch_s=self.dispatch_s,
            queue_occupancy=occ,
            tile_latency_p50_s=float(np.percentile(lat, 50)) if lat.size else 0.0,
            tile_latency_p95_s=float(np.percentile(lat, 95)) if lat.size else 0.0,
            timeline=tuple(self.events),
        )

