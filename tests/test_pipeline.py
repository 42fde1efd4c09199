"""The pipelined runtime: bit-exactness at every depth, concurrency, cancellation, faults and honest stats."""

from __future__ import annotations

import asyncio
import os
import random
import threading
from pathlib import Path
from typing import Any, Callable

import anyio
import numpy as np
import pytest

import aiowhisper_npu as aw
from aiowhisper_npu.devices.cpu import CpuDevice, set_blas_threads
from aiowhisper_npu.encoder.plan import EncoderPlan, EncoderProgram, encode_window_sequential

from conftest import rel_l2

pytestmark = pytest.mark.anyio


class HookedDevice(CpuDevice):
    """A CPU device that calls ``hook(stage, n)`` on every copy/kernel and records in-flight buffers."""

    def __init__(self, lanes: int = 1, hook: Callable[[str, int], None] | None = None):
        super().__init__(lanes)
        self.hook = hook or (lambda stage, n: None)
        self.calls = {"to_device": 0, "kernel": 0, "from_device": 0}
        self.in_flight: dict[int, int] = {}  # buffer address -> id of the running kernel using it
        self.overlaps = 0
        self._runs = 0
        self._lock = threading.Lock()

    def _count(self, stage: str) -> int:
        with self._lock:
            self.calls[stage] += 1
            return self.calls[stage]

    def to_device(self, dst: Any, src: np.ndarray) -> None:
        self.hook("to_device", self._count("to_device"))
        super().to_device(dst, src)

    def launch(self, op: str, params: Any, inputs: Any, outputs: Any, tensors: Any, lane: int) -> Any:
        run = super().launch(op, params, inputs, outputs, tensors, lane)
        with self._lock:
            self._runs += 1
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
            with self._lock:
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


@pytest.mark.parametrize("tile_rows", [64, 100, 375])
async def test_bit_identical_at_every_depth(tiny: aw.WhisperModel, speech: np.ndarray, tile_rows: int) -> None:
    ref = _reference(tiny, speech, tile_rows)
    for depth in (1, 2, 3):
        async with aw.Runtime(tiny, pipeline_depth=depth, tile_rows=tile_rows, lanes=1) as rt:
            out = await rt.encode(speech)
        assert np.array_equal(out.hidden_states, ref), f"depth={depth} tile_rows={tile_rows}"
        assert out.stats.tiles == len(EncoderPlan(tiny.dims, tile_rows).tiles)


async def test_default_configuration_matches_sequential(tiny: aw.WhisperModel, speech: np.ndarray) -> None:
    """The defaults (chosen by benchmark: 2 lanes on 2 cores, 375-row tiles) agree with the serial path."""
    async with aw.Runtime(tiny) as rt:
        out = await rt.encode(speech)
        assert rt.tile_rows == 375 and rt.lanes == min(2, os.cpu_count() or 1)
    assert rel_l2(out.hidden_states, _reference(tiny, speech, 375)) <= 1e-6
    assert out.stats.dependency_wait_s <= out.stats.wall_s


async def test_zero_copy_is_bit_identical(tiny: aw.WhisperModel, speech: np.ndarray) -> None:
    ref = _reference(tiny, speech, 64)
    async with aw.Runtime(tiny, pipeline_depth=3, zero_copy=True, tile_rows=64, lanes=1) as rt:
        assert np.array_equal((await rt.encode(speech)).hidden_states, ref)


async def test_batched_dma_is_bit_identical(tiny: aw.WhisperModel, speech: np.ndarray) -> None:
    ref = _reference(tiny, speech, 64)
    async with aw.Runtime(tiny, pipeline_depth=3, dma_batch=3, tile_rows=64, lanes=1) as rt:
        out = await rt.encode(speech)
    assert np.array_equal(out.hidden_states, ref)
    assert out.stats.tiles == len(EncoderPlan(tiny.dims, 64).tiles)


async def test_lanes_agree_within_tolerance(tiny: aw.WhisperModel, speech: np.ndarray) -> None:
    ref = _reference(tiny, speech, 64)
    async with aw.Runtime(tiny, pipeline_depth=3, lanes=2, tile_rows=64) as rt:
        out = await rt.encode(speech)
    assert rel_l2(out.hidden_states, ref) <= 1e-6
    kernel_lanes = {e.lane for e in out.stats.timeline if e.stage == "kernel"}
    assert kernel_lanes == {0, 1}


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


def _tasks() -> int:
    return len(asyncio.all_tasks())


@pytest.mark.parametrize("stage", ["to_device", "kernel", "from_device", "random"])
async def test_cancellation_releases_everything(tiny: aw.WhisperModel, speech: np.ndarray, stage: str) -> None:
    ref = _reference(tiny, speech, 64)
    rng = random.Random(1234)
    for attempt in range(3):
        trigger = anyio.Event()
        target = rng.randint(1, 150)
        token = anyio.lowlevel.current_token()

        def hook(s: str, n: int) -> None:
            if s == stage and n == target:
                if threading.current_thread() is threading.main_thread():
                    trigger.set()
                else:  # kernels are waited for on the pipeline's lane threads
                    anyio.from_thread.run_sync(trigger.set, token=token)

        device = HookedDevice(1, hook)
        async with aw.Runtime(tiny, device=device, pipeline_depth=3, tile_rows=64) as rt:
            await rt.encode(np.zeros(1000, np.float32))  # warm: worker threads exist now
            device.calls = dict.fromkeys(device.calls, 0)
            tasks, threads, buffers = _tasks(), threading.active_count(), device.buffers_live
            async with anyio.create_task_group() as tg:
                async def encode() -> None:
                    await rt.encode(speech)

                async def cancel_at_trigger() -> None:
                    if stage == "random":
                        await anyio.sleep(rng.uniform(0.0, 0.2))
                    else:
                        await trigger.wait()
                    tg.cancel_scope.cancel()

                tg.start_soon(encode)
                tg.start_soon(cancel_at_trigger)
            assert rt.buffer_pool.in_use == 0
            assert _tasks() == tasks
            assert threading.active_count() <= threads
            assert device.buffers_live == buffers  # job tensors freed too, not just pool slots
            assert device.overlaps == 0
            out = await rt.encode(speech)  # the runtime keeps serving
            assert np.array_equal(out.hidden_states, ref)
            assert rt.buffer_pool.in_use == 0


class Boom(Exception):
    pass


class FaultyDevice(HookedDevice):
    """Fails the 3rd kernel that touches the first job's device tensors (i.e. one request only)."""

    def __init__(self) -> None:
        super().__init__(1)
        self.victim: int | None = None
        self.victim_runs = 0
        self.armed = True

    def launch(self, op: str, params: Any, inputs: Any, outputs: Any, tensors: Any, lane: int) -> Any:
        run = super().launch(op, params, inputs, outputs, tensors, lane)
        run.poison = False
        if tensors and self.armed:
            addr = next(iter(tensors.values())).buffer.address
            self.victim = self.victim or addr
            if addr == self.victim:
                self.victim_runs += 1
                run.poison = self.victim_runs == 3
        return run

    def wait(self, run: Any, timeout_s: float | None = None) -> bool:
        if run.poison:
            try:
                raise Boom("injected kernel failure")
            finally:
                with self._lock:
                    for a in run.addresses:
                        self.in_flight.pop(a, None)
        return super().wait(run, timeout_s)


async def test_kernel_error_fails_only_that_request(tiny: aw.WhisperModel, speech: np.ndarray) -> None:
    ref = _reference(tiny, speech, 64)
    device = FaultyDevice()
    outcomes: dict[str, Any] = {}

    async def request(name: str, delay: float) -> None:
        await anyio.sleep(delay)
        try:
            outcomes[name] = await rt.encode(speech)
        except aw.DeviceError as exc:
            outcomes[name] = exc

    async with aw.Runtime(tiny, device=device, pipeline_depth=2, tile_rows=64) as rt:
        async with anyio.create_task_group() as tg:
            tg.start_soon(request, "first", 0.0)
            tg.start_soon(request, "second", 0.005)
        errors = [o for o in outcomes.values() if isinstance(o, aw.DeviceError)]
        served = [o for o in outcomes.values() if not isinstance(o, aw.DeviceError)]
        assert len(errors) == 1 and len(served) == 1, outcomes  # one request failed, the other did not
        err = errors[0]
        assert "injected kernel failure" in str(err) and isinstance(err.__cause__, Boom)
        assert np.array_equal(served[0].hidden_states, ref)
        assert rt.buffer_pool.in_use == 0
        device.armed = False
        assert np.array_equal((await rt.encode(speech)).hidden_states, ref)  # still serving
        assert rt.buffer_pool.in_use == 0


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


@pytest.mark.parametrize("anyio_backend", ["trio"], indirect=True)
async def test_runs_on_trio(tiny: aw.WhisperModel, speech: np.ndarray) -> None:
    ref = _reference(tiny, speech, 64)
    async with aw.Runtime(tiny, pipeline_depth=2, tile_rows=64, lanes=1) as rt:
        assert np.array_equal((await rt.encode(speech)).hidden_states, ref)


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


async def test_lanes_queue_runs_ahead_and_threads_are_joined(tiny: aw.WhisperModel, speech: np.ndarray) -> None:
    ref = _reference(tiny, speech, 64)
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
