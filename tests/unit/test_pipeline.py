"""The pipelined runtime: bit-exactness at every depth, concurrency, cancellation, faults and honest stats."""

from __future__ import annotations

import asyncio
import os
import random
import threading
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import anyio
import numpy as np
import pytest

import aiowhisper_npu as aw
from aiowhisper_npu.devices.cpu import CpuDevice, set_blas_threads
from aiowhisper_npu.encoder.plan import EncoderPlan, EncoderProgram, encode_window_sequential
from tests.support import rel_l2
from tests.support.loops import TRIO, asyncio_only, loops_fast_on_asyncio, on_loops

pytestmark = pytest.mark.anyio


class HookedDevice(CpuDevice):
    """A CPU device that calls ``hook(stage, n)`` on every copy/kernel and records in-flight buffers.

    ``n`` counts the calls of that stage since ``calls`` was last reset. :meth:`hold` keeps every launched
    run from reporting its completion (the lane thread waits after the kernel) until :meth:`release`, so a
    test can act while kernels are known to be in flight.
    """

    def __init__(self, lanes: int = 1, hook: Callable[[str, int], None] | None = None):
        super().__init__(lanes)
        self.hook = hook or (lambda stage, n: None)
        self.calls = {"to_device": 0, "kernel": 0, "from_device": 0}
        self.in_flight: dict[int, int] = {}  # buffer address -> id of the running kernel using it
        self.overlaps = 0
        self.running = 0  # launched runs whose wait has not returned
        self._runs = 0
        self._lock = threading.Lock()
        self._released = threading.Condition(self._lock)
        self._holding = False

    def _count(self, stage: str) -> int:
        with self._lock:
            self.calls[stage] += 1
            return self.calls[stage]

    def hold(self) -> bool:
        """Hold back the completion of every launched run, if there is one; False (no hold) if none is."""
        with self._lock:
            self._holding = self.running > 0
            return self._holding

    def release(self) -> None:
        with self._released:
            self._holding = False
            self._released.notify_all()

    def to_device(self, dst: Any, src: np.ndarray) -> None:
        self.hook("to_device", self._count("to_device"))
        super().to_device(dst, src)

    def launch(self, op: str, params: Any, inputs: Any, outputs: Any, tensors: Any, lane: int) -> Any:
        run = super().launch(op, params, inputs, outputs, tensors, lane)
        with self._lock:
            self._runs += 1
            self.running += 1
            for v in (*inputs, *outputs):
                if v.buffer.address in self.in_flight:
                    self.overlaps += 1
                self.in_flight[v.buffer.address] = self._runs

        run.addresses = [v.buffer.address for v in (*inputs, *outputs)]
        return run

    def wait(self, run: Any, timeout_s: float | None = None) -> bool:
        try:
            self.hook("kernel", self._count("kernel"))
            return super().wait(run, timeout_s)
        finally:
            with self._released:
                while self._holding:
                    self._released.wait()
                self.running -= 1
                for a in run.addresses:
                    self.in_flight.pop(a, None)

    def from_device(self, src: Any, dst: np.ndarray) -> None:
        self.hook("from_device", self._count("from_device"))
        super().from_device(src, dst)


def _reference(model: aw.WhisperModel, audio: np.ndarray, tile_rows: int) -> np.ndarray:
    """The sequential path, with the one BLAS thread per lane the CPU device uses (set from a worker
    thread, as the device does: OpenBLAS results depend on its thread count)."""
    plan, program = EncoderPlan(model.dims, tile_rows), EncoderProgram(model, tile_rows)
    out: list[np.ndarray] = []

    def run() -> None:
        set_blas_threads(CpuDevice(1).blas_threads)
        out.extend(encode_window_sequential(program, plan, m) for m in aw.log_mel_windows(audio))

    t = threading.Thread(target=run)
    t.start()
    t.join()
    return np.stack(out)


@pytest.fixture(scope="module")
def speech(clip_paths: dict[str, Path]) -> np.ndarray:
    return aw.load_audio(clip_paths["numbers.wav"])


@pytest.fixture(scope="module")
def sequential(tiny: aw.WhisperModel, speech: np.ndarray) -> Callable[[int], np.ndarray]:
    """``_reference`` of ``speech`` for a given tile_rows, computed once per module."""
    cache: dict[int, np.ndarray] = {}

    def get(tile_rows: int) -> np.ndarray:
        if tile_rows not in cache:
            cache[tile_rows] = _reference(tiny, speech, tile_rows)
        return cache[tile_rows]

    return get


def _kernel_lanes(stats: aw.PipelineStats) -> set[int]:
    return {e.lane for e in stats.timeline if e.stage == "kernel"}


def _barrier_held(stats: aw.PipelineStats, plan: EncoderPlan) -> bool:
    """No attention tile of a block started its kernel before every qkv tile of the block was committed."""
    for job in {e.job for e in stats.timeline}:
        kernel = {e.tile: e for e in stats.timeline if e.job == job and e.stage == "kernel"}
        commit = {e.tile: e for e in stats.timeline if e.job == job and e.stage == "from_device"}
        for layer in range(plan.dims.n_audio_layer):
            block = [t for t in plan.tiles if t.params.get("layer") == layer]
            qkv_done = max(commit[t.index].end for t in block if t.op == "qkv")
            if min(kernel[t.index].start for t in block if t.op == "attn_mlp") < qkv_done:
                return False
    return True


async def _bit_identical_at_every_depth(tiny: aw.WhisperModel, speech: np.ndarray, ref: np.ndarray,
                                       tile_rows: int, lanes: int) -> None:
    plan = EncoderPlan(tiny.dims, tile_rows)
    for depth in (1, 2, 3):
        async with aw.Runtime(tiny, pipeline_depth=depth, tile_rows=tile_rows, lanes=lanes) as rt:
            out = await rt.encode(speech)
        assert np.array_equal(out.hidden_states, ref), f"depth={depth} tile_rows={tile_rows} lanes={lanes}"
        assert out.stats.tiles == len(plan.tiles)
        assert _kernel_lanes(out.stats) == set(range(lanes))
        assert _barrier_held(out.stats, plan), f"attention ran before its block's qkv tiles (depth={depth})"


# The bit-identity tests run with one lane and with two. One lane runs kernels in launch order, which hides a
# missing attention barrier from the numbers; with two, an attention tile runs next to the last qkv tiles of
# its block unless the plan orders them. The timeline shows the order either way (mutant "remove the
# barrier", tests/README.md).
@pytest.mark.slow
@pytest.mark.parametrize("tile_rows", [64, 100, 375])
async def test_bit_identical_at_every_depth(tiny: aw.WhisperModel, speech: np.ndarray,
                                            sequential: Callable[[int], np.ndarray], tile_rows: int) -> None:
    await _bit_identical_at_every_depth(tiny, speech, sequential(tile_rows), tile_rows, lanes=1)


@pytest.mark.slow
@asyncio_only  # numbers only
@pytest.mark.parametrize("tile_rows", [64, 100, 375])
async def test_bit_identical_at_every_depth_on_two_lanes(tiny: aw.WhisperModel, speech: np.ndarray,
                                                         sequential: Callable[[int], np.ndarray],
                                                         tile_rows: int) -> None:
    await _bit_identical_at_every_depth(tiny, speech, sequential(tile_rows), tile_rows, lanes=2)


@loops_fast_on_asyncio
async def test_default_configuration_matches_sequential(tiny: aw.WhisperModel, speech: np.ndarray,
                                                        sequential: Callable[[int], np.ndarray]) -> None:
    """The defaults (chosen by benchmark: 2 lanes on 2 cores, 375-row tiles) agree with the serial path."""
    async with aw.Runtime(tiny) as rt:
        out = await rt.encode(speech)
        assert rt.tile_rows == 375 and rt.lanes == min(2, os.cpu_count() or 1)
    assert rel_l2(out.hidden_states, sequential(375)) <= 1e-6
    assert out.stats.dependency_wait_s <= out.stats.wall_s


@pytest.mark.parametrize("lanes", [1, 2])
@loops_fast_on_asyncio
async def test_zero_copy_is_bit_identical(tiny: aw.WhisperModel, speech: np.ndarray,
                                          sequential: Callable[[int], np.ndarray], lanes: int) -> None:
    async with aw.Runtime(tiny, pipeline_depth=3, zero_copy=True, tile_rows=64, lanes=lanes) as rt:
        out = await rt.encode(speech)
    assert np.array_equal(out.hidden_states, sequential(64))
    assert _kernel_lanes(out.stats) == set(range(lanes))


@pytest.mark.parametrize("lanes", [1, 2])
@loops_fast_on_asyncio
async def test_batched_dma_is_bit_identical(tiny: aw.WhisperModel, speech: np.ndarray,
                                            sequential: Callable[[int], np.ndarray], lanes: int) -> None:
    async with aw.Runtime(tiny, pipeline_depth=3, dma_batch=3, tile_rows=64, lanes=lanes) as rt:
        out = await rt.encode(speech)
    assert np.array_equal(out.hidden_states, sequential(64))
    assert out.stats.tiles == len(EncoderPlan(tiny.dims, 64).tiles)
    assert _kernel_lanes(out.stats) == set(range(lanes))


@loops_fast_on_asyncio
async def test_lanes_agree_within_tolerance(tiny: aw.WhisperModel, speech: np.ndarray,
                                            sequential: Callable[[int], np.ndarray]) -> None:
    ref = sequential(64)
    async with aw.Runtime(tiny, pipeline_depth=3, lanes=2, tile_rows=64) as rt:
        out = await rt.encode(speech)
    assert rel_l2(out.hidden_states, ref) <= 1e-6
    kernel_lanes = {e.lane for e in out.stats.timeline if e.stage == "kernel"}
    assert kernel_lanes == {0, 1}


@pytest.mark.slow
@pytest.mark.timeout(300)  # ~17 s on an idle 2-core machine, ~55 s loaded
async def test_concurrent_encodes_equal_serial(tiny: aw.WhisperModel, clip_paths: dict[str, Path]) -> None:
    audios = [aw.load_audio(clip_paths[n]) for n in ("quick_fox.wav", "numbers.wav", "weather.wav", "door.wav")]
    audios.append(aw.load_audio(clip_paths["long_40s.wav"]))
    async with aw.Runtime(tiny, pipeline_depth=3, tile_rows=64, lanes=1) as rt:
        serial = [(await rt.encode(a)).hidden_states for a in audios]
        results: list[Any] = [None] * len(audios)

        async def one(i: int) -> None:
            results[i] = await rt.encode(audios[i])

        async with anyio.create_task_group() as tg:
            for i in range(len(audios)):
                tg.start_soon(one, i)
        assert rt.buffer_pool.in_use == 0
    for s, r in zip(serial, results):
        assert np.array_equal(s, r.hidden_states)

    # fairness: requests submitted together interleave their tiles instead of running one after another
    mels = [aw.log_mel_windows(a) for a in audios[:4]]
    stats: list[Any] = [None] * 4
    async with aw.Runtime(tiny, pipeline_depth=3, tile_rows=64, lanes=1) as rt:
        async def mel_one(i: int) -> None:
            stats[i] = (await rt.encode_mels(mels[i]))[1]

        async with anyio.create_task_group() as tg:
            for i in range(4):
                tg.start_soon(mel_one, i)
    firsts = [min(e.start for e in s.timeline) for s in stats]
    lasts = [max(e.end for e in s.timeline) for s in stats]
    assert max(firsts) < min(lasts), "requests did not overlap"
    # ... and share the device round-robin: when the first of them completes, each of the others has
    # committed at least half of its tiles. Served in a fixed order, the others only get the tiles the
    # first leaves at its barriers, and finish one after another (mutant "remove the round-robin").
    for s in stats:
        committed = sum(e.stage == "from_device" and e.end <= min(lasts) for e in s.timeline)
        assert committed >= s.tiles / 2, f"{committed} of {s.tiles} tiles done when the first request ended"


def _tasks() -> int:
    return len(asyncio.all_tasks())


def _launched_not_committed(timeline: Sequence[aw.StageEvent], jobs: set[int]) -> set[tuple[int, int]]:
    """(job, tile) of tiles whose kernel ran but whose outputs were never committed: killed after launch."""
    ran = {(e.job, e.tile) for e in timeline if e.stage == "kernel" and e.job in jobs}
    return ran - {(e.job, e.tile) for e in timeline if e.stage == "from_device"}


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["to_device", "kernel", "from_device", "random"])
async def test_cancellation_releases_everything(tiny: aw.WhisperModel, speech: np.ndarray,
                                                sequential: Callable[[int], np.ndarray], stage: str) -> None:
    """Cancel an encode from inside its n-th call of ``stage`` (n counted in that encode only; at random
    times for ``random``) while launched kernels are held in flight, then check that every slot, task,
    thread and device buffer came back and the runtime still serves.

    The named variants first check their premise: the stage was reached in the measured encode, and the
    job was killed with at least one launched tile not yet committed. So the mutants "leak a launched
    tile's slot" and "skip freeing a killed job's tensors" (tests/README.md) fail every named variant, not
    only ``random`` (which cancels wherever its timer falls).
    """
    ref = sequential(64)
    rng = random.Random(1234)
    for _attempt in range(3):
        device = HookedDevice(1)
        async with aw.Runtime(tiny, device=device, pipeline_depth=3, tile_rows=64) as rt:
            await rt.encode(np.zeros(1000, np.float32))  # warm: worker threads exist now
            per_run = dict(device.calls)  # calls of each stage in one encode of one window
            device.calls = dict.fromkeys(device.calls, 0)
            target = rng.randint(1, per_run["kernel" if stage == "random" else stage] - 8)
            if stage == "random":
                scope = anyio.CancelScope(deadline=anyio.current_time() + rng.uniform(0.0, 0.2))
            else:
                scope = anyio.CancelScope()
            token = anyio.lowlevel.current_token()
            fired: list[int] = []
            killed = anyio.Event()

            def cancel() -> None:  # on the event loop
                scope.cancel()
                killed.set()

            def hook(s: str, n: int) -> None:
                # the first call from the target on that has a launched kernel to hold (a kernel call always
                # has: its own run); copies run on the loop, kernels on the pipeline's lane threads
                if s != stage or fired or n < target or not device.hold():
                    return
                fired.append(n)
                if s == "kernel":
                    anyio.from_thread.run_sync(cancel, token=token)
                else:
                    cancel()

            async def release_after_kill() -> None:
                await killed.wait()
                await anyio.wait_all_tasks_blocked()  # the encode has seen its cancellation: job killed
                device.release()

            jobs_before = {e.job for e in rt.stats.timeline}
            tasks, threads, buffers = _tasks(), threading.active_count(), device.buffers_live
            if stage != "random":
                device.hook = hook
            try:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(release_after_kill)
                    with scope:
                        await rt.encode(speech)
                    tg.cancel_scope.cancel()
            finally:
                device.hook = lambda s, n: None
                device.release()
            if stage != "random":
                assert fired and target <= fired[0] <= per_run[stage], f"{stage} call {target} never came"
                assert scope.cancelled_caught
                measured = {e.job for e in rt.stats.timeline} - jobs_before
                assert _launched_not_committed(rt.stats.timeline, measured), "no launched tile was killed"
            assert rt.buffer_pool.in_use == 0
            assert _tasks() == tasks
            assert threading.active_count() <= threads
            assert device.buffers_live == buffers  # job tensors freed too, not just pool slots
            assert device.overlaps == 0 and device.running == 0
            out = await rt.encode(speech)  # the runtime keeps serving
            assert np.array_equal(out.hidden_states, ref)
            assert rt.buffer_pool.in_use == 0


class Boom(Exception):
    pass


class FaultyDevice(HookedDevice):
    """Fails one kernel of the first job that touches device tensors, the first it launches after another job
    has launched kernels on its own tensors: one request fails while another is in flight."""

    def __init__(self) -> None:
        super().__init__(1)
        self.victim: int | None = None
        self.other_seen = False
        self.failed = False
        self.armed = True

    def launch(self, op: str, params: Any, inputs: Any, outputs: Any, tensors: Any, lane: int) -> Any:
        run = super().launch(op, params, inputs, outputs, tensors, lane)
        if tensors and self.armed:
            addr = next(iter(tensors.values())).buffer.address
            self.victim = self.victim or addr
            if addr != self.victim:
                self.other_seen = True
            elif self.other_seen and not self.failed:  # the run ends in this error instead of its kernel
                self.failed = True
                run.done, run.error, run.call = True, Boom("injected kernel failure"), None
        return run


@loops_fast_on_asyncio
async def test_kernel_error_fails_only_that_request(tiny: aw.WhisperModel, speech: np.ndarray,
                                                    sequential: Callable[[int], np.ndarray]) -> None:
    """A failing kernel fails its own request while another is in flight; the other is served exactly, and
    the failed job's device tensors are freed (mutant "skip freeing a killed job's tensors", tests/README.md).
    """
    ref = sequential(64)
    mels = aw.log_mel_windows(speech)
    device = FaultyDevice()
    outcomes: dict[str, Any] = {}
    failed_at: list[float] = []

    async def request(name: str) -> None:
        try:
            outcomes[name] = await rt.encode_mels(mels)
        except aw.DeviceError as exc:
            failed_at.append(time.perf_counter())
            outcomes[name] = exc

    async with aw.Runtime(tiny, device=device, pipeline_depth=2, tile_rows=64) as rt:
        buffers = device.buffers_live  # the pool's slots
        async with anyio.create_task_group() as tg:
            tg.start_soon(request, "first")
            tg.start_soon(request, "second")
        errors = [o for o in outcomes.values() if isinstance(o, aw.DeviceError)]
        served = [o for o in outcomes.values() if not isinstance(o, aw.DeviceError)]
        assert len(errors) == 1 and len(served) == 1, outcomes  # one request failed, the other did not
        err = errors[0]
        assert "injected kernel failure" in str(err) and isinstance(err.__cause__, Boom)
        hidden, stats = served[0]
        assert np.array_equal(hidden, ref)
        assert min(e.start for e in stats.timeline) < failed_at[0] < max(e.end for e in stats.timeline), \
            "the served request was not in flight when the other failed"
        assert rt.buffer_pool.in_use == 0
        assert device.buffers_live == buffers  # the failed job's tensors were freed
        device.armed = False
        assert np.array_equal((await rt.encode(speech)).hidden_states, ref)  # still serving
        assert rt.buffer_pool.in_use == 0
        assert device.buffers_live == buffers
        assert device.running == 0


@loops_fast_on_asyncio
async def test_stats_add_up(tiny: aw.WhisperModel, speech: np.ndarray) -> None:
    plan = EncoderPlan(tiny.dims, 64)
    async with aw.Runtime(tiny, pipeline_depth=1, tile_rows=64, lanes=1) as rt:
        serial = (await rt.encode(speech)).stats
    async with aw.Runtime(tiny, pipeline_depth=3, lanes=2, tile_rows=64) as rt:
        piped = (await rt.encode(speech)).stats
        cumulative = rt.stats
    for s, lanes in ((serial, 1), (piped, 2)):
        assert s.tiles == len(plan.tiles)
        assert len(s.timeline) == 4 * s.tiles
        busy = s.stage_busy_s
        assert set(busy) == {"host_prep", "to_device", "kernel", "from_device"}
        for stage in ("host_prep", "to_device", "from_device"):
            assert 0 < busy[stage] <= s.wall_s
        assert 0 < busy["kernel"] <= lanes * s.wall_s
        assert 0 <= s.dma_overhead_pct < 100
        assert 0 < s.tile_latency_p50_s <= s.tile_latency_p95_s <= s.wall_s
        for e in s.timeline:
            assert e.start <= e.end
    # serial: stages never overlap, so they add up to no more than the wall time, and every tile but the
    # first waits on host work with the kernel idle (a stall)
    assert 0.6 * serial.wall_s <= sum(serial.stage_busy_s.values()) <= serial.wall_s
    assert serial.stalls >= serial.tiles - 1 - serial.dependency_waits
    assert serial.stall_s > 0
    assert cumulative.tiles == piped.tiles


@loops_fast_on_asyncio
async def test_buffer_pool_addresses_aligned_and_distinct(tiny: aw.WhisperModel, speech: np.ndarray) -> None:
    device = HookedDevice(1)
    async with aw.Runtime(tiny, device=device, pipeline_depth=3, tile_rows=64) as rt:
        await rt.encode(speech)
        pool = rt.buffer_pool
        addrs = pool.addresses()
        assert all(a % 64 == 0 for a in addrs)
        assert len(set(addrs)) == len(addrs)
        st = pool.stats()
        assert st.slots == 3 and st.in_use == 0 and 1 <= st.high_water <= 3
        assert st.reuses == len(EncoderPlan(tiny.dims, 64).tiles)
    assert device.overlaps == 0


@on_loops(TRIO)
async def test_runs_on_trio(tiny: aw.WhisperModel, speech: np.ndarray,
                           sequential: Callable[[int], np.ndarray]) -> None:
    ref = sequential(64)
    async with aw.Runtime(tiny, pipeline_depth=2, tile_rows=64, lanes=1) as rt:
        assert np.array_equal((await rt.encode(speech)).hidden_states, ref)


@loops_fast_on_asyncio
async def test_barrier_does_not_drain_next_block(tiny: aw.WhisperModel, speech: np.ndarray) -> None:
    """qkv tiles of block L+1 are prepared and sent while block L's attention tiles still run (row-wise deps).

    So the kernel goes straight from block L's last attention tile to block L+1's first qkv tile.
    """
    plan = EncoderPlan(tiny.dims, 64)
    async with aw.Runtime(tiny, pipeline_depth=3, tile_rows=64, lanes=1) as rt:
        stats = (await rt.encode(speech)).stats
    kernel = {e.tile: e for e in stats.timeline if e.stage == "kernel"}
    sent = {e.tile: e for e in stats.timeline if e.stage == "to_device"}
    overlapped = 0
    for layer in range(tiny.dims.n_audio_layer - 1):
        attn_end = max(kernel[t.index].end for t in plan.tiles
                       if t.op == "attn_mlp" and t.params["layer"] == layer)
        next_qkv_start = min(sent[t.index].start for t in plan.tiles
                             if t.op == "qkv" and t.params["layer"] == layer + 1)
        overlapped += next_qkv_start < attn_end
    assert overlapped == tiny.dims.n_audio_layer - 1


class AheadDevice(CpuDevice):
    """Counts, per lane, runs launched and not yet done: more than one means a run was queued ahead."""

    def __init__(self, lanes: int):
        super().__init__(lanes)
        self._lock = threading.Lock()
        self.launched = [0] * lanes
        self.most_ahead = [0] * lanes

    def launch(self, op: str, params: Any, inputs: Any, outputs: Any, tensors: Any, lane: int) -> Any:
        run = super().launch(op, params, inputs, outputs, tensors, lane)
        with self._lock:
            self.launched[lane] += 1
            self.most_ahead[lane] = max(self.most_ahead[lane], self.launched[lane])
        return run

    def wait(self, run: Any, timeout_s: float | None = None) -> bool:
        try:
            return super().wait(run, timeout_s)
        finally:
            with self._lock:
                self.launched[run.lane] -= 1


def _lane_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("aiowhisper-lane")]


@loops_fast_on_asyncio
async def test_lanes_queue_runs_ahead_and_threads_are_joined(tiny: aw.WhisperModel, speech: np.ndarray,
                                                             sequential: Callable[[int], np.ndarray]) -> None:
    ref = sequential(64)
    assert _lane_threads() == []
    device = AheadDevice(2)
    async with aw.Runtime(tiny, device=device, pipeline_depth=4, tile_rows=64) as rt:
        assert len(_lane_threads()) == 2  # one long-lived waiter per lane, not a thread per tile
        out = await rt.encode(speech)
        assert 0 < out.stats.dispatch_s < out.stats.stage_busy_s["kernel"]
    assert _lane_threads() == []  # closing the runtime joins them
    assert max(device.most_ahead) == 2  # a second run waited on the lane behind the running one
    assert device.launched == [0, 0]
    assert rel_l2(out.hidden_states, ref) < 1e-6
