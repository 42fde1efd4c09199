"""A bounded, staged, asynchronous tile pipeline: host prep -> to-device -> kernel -> from-device.

The pipeline knows tiles, jobs and the device protocol; it knows nothing about Whisper. Stages are anyio
tasks joined by bounded memory object streams. A tile holds one slot of the :class:`~.pool.BufferPool`
from host prep until its outputs are committed, so the pool size is the pipeline depth: the most tiles in
flight. ``depth=1`` is the fully serial baseline (write, wait, run, wait, read, wait).

Which tile goes next is the :class:`~.scheduler.Scheduler`'s call: ready tiles (dependencies complete)
round-robin across requests, so a dependency barrier in one job never drains the device while other jobs
have work, and at most ``max_active_jobs`` jobs hold job-scoped device tensors at once.

Kernels are launched on the loop and waited for on one long-lived thread per lane (:mod:`.lanes`;
``Device.wait`` is GIL-friendly by contract). One dispatcher places each tile on an empty lane, else behind
the kernel that started first: a lane holds up to ``ahead`` launched runs, so the next kernel is queued
behind the running one and starts when it ends. Copies and host prep are short and run on the
loop. Stages move tiles with ``*_nowait`` calls when they can and only yield to the loop when they must
wait. A failing tile fails only its own request, with an exception of its own (the device's error chained
as its cause, never shared between requests); the pipeline keeps serving.

A pipeline belongs to the event loop that serves it: :meth:`Pipeline.run` from any other loop (or thread)
raises at once instead of touching loop-bound state.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from typing import Any, Hashable, Sequence, TypeVar

import anyio
from anyio.abc import TaskStatus
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from ..tiles import Device, Job, Tile
from .failures import tile_error
from .lanes import LaneThreads
from .loop import current_loop
from .pool import BufferPool, Slot
from .scheduler import JobState, Scheduler
from .stats import StageEvent, StatsRecorder

__all__ = ["Pipeline"]

_now = time.perf_counter
T = TypeVar("T")


@dataclass(eq=False)
class _Item:
    st: JobState
    tile: Tile
    slot: Slot
    t_prep: float
    run: Any = None
    t_launch: float = 0.0
    error: BaseException | None = None


@dataclass(eq=False)
class _Lane:
    """One kernel lane's book-keeping (on the loop): launched runs not yet seen complete, idle spells."""

    index: int
    inflight: int = 0
    head_start: float = 0.0  # when the lane's oldest launched run was launched (or started, if queued)
    last_done: float = 0.0
    empty_since: float | None = None
    empty_stall: bool = False


class Pipeline:
    """Runs jobs' tiles through the staged pipeline. Start it with ``await task_group.start(p.serve)``."""

    def __init__(self, device: Device, pool: BufferPool, *, lanes: int | None = None,
                 max_active_jobs: int = 4, dma_batch: int = 1, ahead: int = 2,
                 history: int | None = 50_000):
        self.device = device
        self.pool = pool
        self.depth = pool.slots
        self.lanes = lanes or device.lanes
        if not 1 <= self.lanes <= device.lanes:
            raise ValueError(f"lanes={self.lanes}, but the {device.name} device has {device.lanes} lane(s); "
                             f"use lanes between 1 and {device.lanes}")
        self.dma_batch = max(1, min(dma_batch, self.depth))
        self._prep_holding = False  # the prep stage holds a slot for a tile not yet sent on
        self.stats = StatsRecorder(max_events=history)
        self._sched = Scheduler(device, self.stats, max_active_jobs)
        self._upstream = 0  # tiles taken for prep and not yet received by a kernel lane
        self.ahead = max(1, ahead)  # launched runs a lane may hold: one running, the rest queued behind
        self._lane_threads = LaneThreads(self.lanes, self._wait_run)
        self._lane_state: list[_Lane] = []
        self._lanes_changed = anyio.Event()  # set whenever a lane's run is seen complete
        self._serving = False
        self._closed = False
        self._loop: object | None = None  # the event loop serving the pipeline

    # -- public ---------------------------------------------------------------------------------------
    async def run(self, jobs: Sequence[Job], recorder: StatsRecorder | None = None,
                  owner: Hashable | None = None) -> None:
        """Run ``jobs`` to completion. Cancelling this call drains the jobs' in-flight tiles, then re-raises."""
        if self._closed or not self._serving:
            raise RuntimeError("pipeline is not running (use the runtime as 'async with')")
        if current_loop() is not self._loop:
            raise RuntimeError("Pipeline.run() was called from another event loop (or thread) than the one "
                               "serving the pipeline")
        owner = owner if owner is not None else object()
        recs = [self.stats] + ([recorder] if recorder is not None else [])
        states = [self._sched.submit(j, owner, recs) for j in jobs]
        t0 = _now()
        try:
            for st in states:
                await st.done.wait()
                if st.error is not None:
                    raise st.error
        except BaseException:
            for st in states:
                self._sched.kill(st, None)
            with anyio.CancelScope(shield=True):
                for st in states:
                    await st.done.wait()
            raise
        finally:
            if recorder is not None:
                recorder.wall_s += _now() - t0

    async def serve(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Run the stages until cancelled; then fail whatever is still queued and join the lane threads."""
        send1, recv1 = anyio.create_memory_object_stream[_Item](self.depth)
        send2, recv2 = anyio.create_memory_object_stream[_Item](self.depth)
        send3, recv3 = anyio.create_memory_object_stream[_Item](self.depth)
        streams: list[Any] = [send1, recv1, send2, recv2, send3, recv3]
        self._loop = current_loop()
        self._lane_threads.start()
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._prep_stage, send1)
                tg.start_soon(self._to_device_stage, recv1, send2)
                self._lane_state = [_Lane(i) for i in range(self.lanes)]
                done_sends = []
                for lane in self._lane_state:
                    # a lane holds at most ``ahead`` runs, so its completion stream never blocks a sender
                    done_send, done_recv = anyio.create_memory_object_stream[_Item](self.ahead)
                    streams += [done_send, done_recv]
                    done_sends.append(done_send)
                    tg.start_soon(self._kernel_completer, lane, done_recv, send3.clone())
                tg.start_soon(self._kernel_dispatcher, recv2, done_sends)
                send3.close()
                tg.start_soon(self._from_device_stage, recv3)
                self._serving = True
                task_status.started()
        finally:
            self._serving = False
            self._closed = True
            cause = sys.exc_info()[1]
            if isinstance(cause, anyio.get_cancelled_exc_class()):
                cause = None  # an ordinary close
            for s in streams:
                s.close()
            with anyio.CancelScope(shield=True):  # a running kernel ends first: no orphan thread
                await anyio.to_thread.run_sync(self._lane_threads.stop)

            def closed() -> BaseException:
                err = RuntimeError("the runtime was closed while this request was running")
                err.__cause__ = cause
                return err

            self._sched.fail_all(closed)

    # -- stages ---------------------------------------------------------------------------------------
    def _record(self, st: JobState, tile: Tile, stage: str, lane: int, t0: float, t1: float) -> None:
        ev = StageEvent(st.id, tile.index, tile.op, stage, lane, t0, t1)
        for r in st.recorders:
            r.event(ev)

    def _queue(self, st: JobState, name: str, stream: MemoryObjectSendStream[_Item]) -> None:
        s = stream.statistics()
        for r in st.recorders:
            r.queue(name, s.current_buffer_used, self.depth)

    async def _prep_stage(self, send: MemoryObjectSendStream[_Item]) -> None:
        async with send:
            while True:
                picked = self._sched.pop_ready()
                if picked is None:
                    await self._sched.wait_ready()
                    continue
                st, tile = picked
                self._upstream += 1
                st.in_flight += 1
                slot = self.pool.acquire_nowait() or await self.pool.acquire()
                self._prep_holding = True
                t0 = _now()
                if not st.dead:
                    try:
                        st.job.prepare(tile, slot.host_inputs(tile))
                    except Exception as exc:
                        exc.add_note(f"while preparing tile {tile.label or tile.index} ({tile.op})")
                        self._sched.kill(st, exc)
                self._record(st, tile, "host_prep", 0, t0, _now())
                await _send(send, _Item(st, tile, slot, t0))
                self._prep_holding = False
                self._queue(st, "to_device", send)

    async def _gather(self, first: _Item, recv: MemoryObjectReceiveStream[_Item]) -> list[_Item]:
        """With ``dma_batch > 1``: collect tiles already prepared or being prepared into one transfer."""
        batch = [first]
        while len(batch) < self.dma_batch:
            if recv.statistics().current_buffer_used:
                batch.append(recv.receive_nowait())
            elif self._prep_holding:
                batch.append(await recv.receive())
            else:
                break
        return batch

    async def _to_device_stage(self, recv: MemoryObjectReceiveStream[_Item],
                               send: MemoryObjectSendStream[_Item]) -> None:
        async with recv, send:
            while True:
                try:
                    first = await _receive(recv)
                except anyio.EndOfStream:
                    return
                batch = await self._gather(first, recv) if self.dma_batch > 1 else [first]
                live = [i for i in batch if not i.st.dead]
                t0 = _now()
                pairs = [(dst, src) for i in live
                         for dst, src in zip(i.slot.device_inputs(i.tile), i.slot.host_inputs(i.tile))]
                try:
                    _copy_many(self.device, "to_device_many", self.device.to_device, pairs)
                except Exception as exc:
                    for i in live:
                        self._sched.kill(i.st, tile_error(exc, self.device, i.tile, "copy to device"))
                # one transfer for the batch: its time is shared evenly between the batch's tiles
                t1 = _now()
                share = (t1 - t0) / max(1, len(live))
                for k, i in enumerate(live):
                    self._record(i.st, i.tile, "to_device", 0, t0 + k * share, t0 + (k + 1) * share)
                for i in batch:
                    await _send(send, i)
                    self._queue(i.st, "kernel", send)

    def _wait_run(self, run: Any) -> None:
        """On a lane thread: block until ``run`` ends (the CPU device runs its kernel here). Looked up per
        run, not bound once, so a device's ``wait`` may be replaced while the pipeline serves."""
        self.device.wait(run, None)

    def _pick_lane(self) -> _Lane | None:
        """The lane for the next tile: an empty one first, else the one whose running kernel started first
        (likely to end first), among lanes with room for one more run queued; None when all are full."""
        open_lanes = [lane for lane in self._lane_state if lane.inflight < self.ahead]
        return min(open_lanes, key=lambda lane: (lane.inflight, lane.head_start), default=None)

    async def _lanes_change(self) -> None:
        """Wait for the next completion on any lane."""
        if self._lanes_changed.is_set():
            self._lanes_changed = anyio.Event()
        await self._lanes_changed.wait()

    async def _kernel_dispatcher(self, recv: MemoryObjectReceiveStream[_Item],
                                 done: list[MemoryObjectSendStream[_Item]]) -> None:
        """Take tiles as they arrive and launch each on the best lane; completions reach the lane's
        :meth:`_kernel_completer`. One dispatcher for all lanes, so a tile is never queued behind a running
        kernel while another lane sits empty."""

        def complete(item: _Item, lane: int, error: BaseException | None = None) -> None:  # on the loop
            item.error = error
            try:
                done[lane].send_nowait(item)
            except (anyio.ClosedResourceError, anyio.BrokenResourceError):
                pass  # the pipeline is shutting down; its requests fail in serve()

        async with recv:
            try:
                while True:
                    while self._pick_lane() is None:
                        await self._lanes_change()
                    try:
                        item = await _receive(recv)
                    except anyio.EndOfStream:
                        while any(lane.inflight for lane in self._lane_state):  # let launched runs report
                            await self._lanes_change()
                        return
                    lane = self._pick_lane()
                    assert lane is not None  # only completions happened meanwhile: room only grew
                    self._launch(lane, item, complete)
            finally:
                for d in done:
                    d.close()

    def _launch(self, lane: _Lane, item: _Item, complete: Any) -> None:
        self._upstream -= 1
        st, tile, slot = item.st, item.tile, item.slot
        now = item.t_launch = _now()
        if lane.inflight == 0:
            lane.head_start = now
            if lane.empty_since is not None:
                # the lane sat idle; the spell counts for this tile's job only from its activation
                idle = now - max(lane.empty_since, st.activated_at)
                if idle > 0:
                    for r in st.recorders:
                        r.idle(idle, lane.empty_stall)
        lane.empty_since = None
        lane.inflight += 1
        if not st.dead:
            try:
                item.run = self.device.launch(tile.op, tile.params, slot.device_inputs(tile),
                                              slot.device_outputs(tile),
                                              {k: st.tensors[k] for k in tile.tensors}, lane.index)
            except Exception as exc:
                self._sched.kill(st, tile_error(exc, self.device, tile, "kernel"))
        if item.run is not None:
            def done(error: BaseException | None, i: Any = item, n: int = lane.index) -> None:
                complete(i, n, error)

            self._lane_threads.submit(lane.index, item.run, done)
        else:
            complete(item, lane.index)
        spent = _now() - now
        for r in st.recorders:
            r.dispatch_s += spent

    async def _kernel_completer(self, lane: _Lane, recv: MemoryObjectReceiveStream[_Item],
                                send: MemoryObjectSendStream[_Item]) -> None:
        """Account for ``lane``'s finished runs and pass their tiles on to the from-device stage."""
        async with recv, send:
            while True:
                try:
                    item = await _receive(recv)
                except anyio.EndOfStream:
                    return
                now = _now()
                # the lane was this tile's from its launch, or from when the run ahead of it was seen done
                start, lane.last_done = max(item.t_launch, lane.last_done), now
                lane.inflight -= 1
                lane.head_start = now  # the run queued behind it (if any) is running now
                if lane.inflight == 0:
                    lane.empty_since = now
                    lane.empty_stall = self._upstream > 0 or self._sched.ready_total() > 0
                    if not (lane.empty_stall or self._sched.n_active() > 0):
                        lane.empty_since = None
                self._lanes_changed.set()
                st, tile = item.st, item.tile
                if item.error is not None:
                    if not isinstance(item.error, Exception):
                        raise item.error
                    self._sched.kill(st, tile_error(item.error, self.device, tile, "kernel"))
                    item.error = None
                if item.run is not None:
                    # the stage interval ends when the pipeline sees the completion (so stages tile the
                    # timeline); the device's own measure of the kernel is kept as device_kernel_s
                    self._record(st, tile, "kernel", lane.index, start, now)
                    d0, d1 = item.run.timing
                    spent = _now() - now
                    for r in st.recorders:
                        r.device_kernel_s += max(0.0, d1 - d0)
                        r.dispatch_s += spent
                await _send(send, item)
                self._queue(st, "from_device", send)

    async def _from_device_stage(self, recv: MemoryObjectReceiveStream[_Item]) -> None:
        async with recv:
            while True:
                try:
                    item = await _receive(recv)
                except anyio.EndOfStream:
                    return
                st, tile, slot = item.st, item.tile, item.slot
                if not st.dead:
                    t0 = _now()
                    try:
                        host_out = slot.host_outputs(tile)
                        for src, dst in zip(slot.device_outputs(tile), host_out):
                            self.device.from_device(src, dst)
                        st.job.commit(tile, host_out)
                    except Exception as exc:
                        self._sched.kill(st, tile_error(exc, self.device, tile, "copy from device"))
                    t1 = _now()
                    self._record(st, tile, "from_device", 0, t0, t1)
                    if not st.dead:
                        for r in st.recorders:
                            r.tile_done(t1 - item.t_prep)
                self.pool.release(slot)
                st.in_flight -= 1
                if st.dead:
                    if st.in_flight == 0:
                        self._sched.finish(st)
                    continue
                self._sched.tile_done(st, tile)


async def _receive(recv: MemoryObjectReceiveStream[T]) -> T:
    """Receive without a trip through the event loop when an item is already queued."""
    try:
        return recv.receive_nowait()
    except anyio.WouldBlock:
        return await recv.receive()


async def _send(send: MemoryObjectSendStream[T], item: T) -> None:
    """Send without a trip through the event loop when the queue has room."""
    try:
        send.send_nowait(item)
    except anyio.WouldBlock:
        await send.send(item)


def _copy_many(device: Device, batched: str, single: Any, pairs: list[tuple[Any, Any]]) -> None:
    """One batched transfer when the device offers it, else one copy per buffer."""
    many = getattr(device, batched, None)
    if many is not None and len(pairs) > 1:
        many(pairs)
    else:
        for a, b in pairs:
            single(a, b)
