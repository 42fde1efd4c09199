"""Which tile runs next: the pipeline's jobs, their dependency counts, and fair activation.

A job becomes *active* when its job-scoped device tensors are allocated; at most ``max_active_jobs`` are
active at once and the rest wait in submission order (an owner with no active job goes first, so a long
request cannot monopolise activation). A tile is *ready* when every tile it depends on has completed.
Ready tiles are taken round-robin across owners (requests), then from the earliest job and lowest tile
index within an owner, so a dependency barrier in one job never drains the device while others have work.

Activation is iterative: a job whose activation fails (its device tensors cannot be allocated, say) is
finished on the spot and the next pending job is tried in the same loop, never by recursion, however many
are pending. A finished job is always signalled (``done`` is set in a ``finally``).

Loop-side only: no locks, no threads. Generic: it knows jobs and tiles, nothing about Whisper.
"""

from __future__ import annotations

import heapq
import itertools
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Hashable, Sequence

import anyio

from ..tiles import BufferView, Device, Job, Tile
from .failures import request_error
from .stats import StatsRecorder

__all__ = ["JobState", "Scheduler"]

_now = time.perf_counter


@dataclass(eq=False)
class JobState:
    """One submitted job's progress. ``dead`` jobs schedule nothing more and finish once drained."""

    id: int
    job: Job
    owner: Hashable
    recorders: list[StatsRecorder]
    dependents: list[list[int]]
    remaining: list[int] = field(default_factory=list)
    ready: list[int] = field(default_factory=list)  # heap of tile indices
    done_tiles: int = 0
    in_flight: int = 0
    tensors: dict[str, BufferView] = field(default_factory=dict)
    error: BaseException | None = None
    dead: bool = False
    active: bool = False
    finished: bool = False
    activated_at: float = 0.0
    done: anyio.Event = field(default_factory=anyio.Event)


class Scheduler:
    """Jobs from submission to finish (see the module docstring). ``stats.wall_s`` gets busy time."""

    def __init__(self, device: Device, stats: StatsRecorder, max_active_jobs: int):
        self.device = device
        self.stats = stats
        self.max_active_jobs = max(1, max_active_jobs)
        self.closed = False
        self._ids = itertools.count()
        self._owners: deque[Hashable] = deque()  # round-robin order of owners with active jobs
        self._active: dict[Hashable, list[JobState]] = {}
        self._pending: deque[JobState] = deque()
        self._wake = anyio.Event()
        self._dependents: dict[int, tuple[Sequence[Tile], list[list[int]]]] = {}
        self._busy_since: float | None = None
        self._activating = False  # _activate is running: finish() leaves the next activation to its loop

    # -- submission and activation --------------------------------------------------------------------
    def submit(self, job: Job, owner: Hashable, recorders: list[StatsRecorder]) -> JobState:
        st = JobState(next(self._ids), job, owner, recorders, self._deps(job.tiles))
        self._pending.append(st)
        self._activate()
        return st

    def _deps(self, tiles: Sequence[Tile]) -> list[list[int]]:
        hit = self._dependents.get(id(tiles))
        if hit is not None and hit[0] is tiles:
            return hit[1]
        dependents: list[list[int]] = [[] for _ in tiles]
        for t in tiles:
            for d in t.deps:
                dependents[d].append(t.index)
        self._dependents[id(tiles)] = (tiles, dependents)
        return dependents

    def n_active(self) -> int:
        return sum(len(v) for v in self._active.values())

    def _activate(self) -> None:
        """Activate pending jobs while there is room. Iterative: a failed activation finishes its job, whose
        ``finish`` does not re-enter here (``_activating``); this loop simply goes on to the next job."""
        if self._activating:
            return
        self._activating = True
        try:
            while self._pending and not self.closed and self.n_active() < self.max_active_jobs:
                pick = next((s for s in self._pending if s.owner not in self._active), self._pending[0])
                self._pending.remove(pick)
                try:
                    self._allocate(pick)
                except BaseException as exc:
                    where = f"{self.device.name}: could not allocate a job's device tensors"
                    pick.error = request_error(exc, where)
                    pick.dead = True
                    self.finish(pick)
                    continue
                tiles = pick.job.tiles
                pick.remaining = [len(t.deps) for t in tiles]
                pick.ready = [t.index for t in tiles if not t.deps]
                heapq.heapify(pick.ready)
                pick.active = True
                pick.activated_at = _now()
                if self._busy_since is None:
                    self._busy_since = _now()
                if pick.owner not in self._active:
                    self._active[pick.owner] = []
                    self._owners.append(pick.owner)
                self._active[pick.owner].append(pick)
                if not tiles:
                    self.finish(pick)
        finally:
            self._activating = False
            self._wake.set()

    def _allocate(self, st: JobState) -> None:
        """The job's device tensors, one by one into ``st.tensors`` (so ``finish`` frees a partial set),
        then the job's own host memory (its optional ``activate``)."""
        for name, spec in st.job.tensor_specs.items():
            st.tensors[name] = BufferView(self.device.alloc(spec.nbytes), spec)
        activate = getattr(st.job, "activate", None)
        if activate is not None:
            activate()

    # -- ready tiles ----------------------------------------------------------------------------------
    def pop_ready(self) -> tuple[JobState, Tile] | None:
        for _ in range(len(self._owners)):
            owner = self._owners[0]
            self._owners.rotate(-1)
            for st in self._active[owner]:
                if st.ready and not st.dead:
                    return st, st.job.tiles[heapq.heappop(st.ready)]
        return None

    async def wait_ready(self) -> None:
        """Wait until a tile may have become ready (a job activated or a tile completed)."""
        self._wake = anyio.Event()
        await self._wake.wait()

    def ready_total(self) -> int:
        return sum(len(st.ready) for sts in self._active.values() for st in sts if not st.dead)

    def tile_done(self, st: JobState, tile: Tile) -> None:
        """``tile`` of ``st`` completed and committed: release its dependents; finish the job when done."""
        st.done_tiles += 1
        for dep in st.dependents[tile.index]:
            st.remaining[dep] -= 1
            if st.remaining[dep] == 0:
                heapq.heappush(st.ready, dep)
        self._wake.set()
        if st.done_tiles == len(st.job.tiles):
            self.finish(st)

    # -- ending ---------------------------------------------------------------------------------------
    def kill(self, st: JobState, error: BaseException | None) -> None:
        """Stop scheduling ``st``: it fails with ``error`` (or was cancelled) once its in-flight tiles drain."""
        if st.finished:
            return
        if error is not None and st.error is None:
            st.error = error
        st.dead = True
        st.ready.clear()
        if st in self._pending:
            self._pending.remove(st)
            self.finish(st)
        elif st.in_flight == 0:
            self.finish(st)

    def finish(self, st: JobState) -> None:
        """End ``st``: free its tensors and host memory, signal its waiter, activate what now fits."""
        if st.finished:
            return
        st.finished = True
        try:
            tensors, st.tensors = st.tensors, {}
            for view in tensors.values():
                try:
                    self.device.free(view.buffer)
                except Exception as exc:  # the device failed: this request fails, the pipeline goes on
                    where = f"{self.device.name}: could not free a job's device tensors"
                    st.error = st.error or request_error(exc, where)
            release = getattr(st.job, "release", None)
            if release is not None:
                release()
            if st.active:
                sts = self._active[st.owner]
                sts.remove(st)
                if not sts:
                    del self._active[st.owner]
                    self._owners.remove(st.owner)
                if not self._active and self._busy_since is not None:
                    self.stats.wall_s += _now() - self._busy_since  # cumulative: time with work in flight
                    self._busy_since = None
        finally:
            st.done.set()  # "finished" and "signalled" never come apart
        self._activate()

    def fail_all(self, make_error: Callable[[], BaseException]) -> None:
        """On shutdown: every job not yet finished fails, each with its own ``make_error()``."""
        self.closed = True
        for st in [*self._pending, *itertools.chain.from_iterable(self._active.values())]:
            st.error = st.error or make_error()
            st.dead = True
            self.finish(st)
