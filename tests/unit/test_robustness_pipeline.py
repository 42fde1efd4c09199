"""Regression tests for the pipeline and scheduler (issue 16): activation failures with many pending jobs
(defect 6), one exception object shared by several requests, and window jobs that allocate their host
memory at submission instead of on activation."""

from __future__ import annotations

import threading
import tracemalloc
from typing import Any, Mapping, Sequence

import anyio
import numpy as np
import pytest

import aiowhisper_npu as aw
from aiowhisper_npu.devices.cpu import CpuDevice
from aiowhisper_npu.encoder.plan import EncoderPlan, WindowJob
from aiowhisper_npu.pipeline.pipeline import Pipeline
from aiowhisper_npu.pipeline.pool import BufferPool
from aiowhisper_npu.tiles import ArraySpec, Tile, slot_nbytes
from tests.support.loops import ALL_LOOPS, run_guarded

SPEC = ArraySpec((16,))


class GateProgram:
    """``copy`` copies input to output; ``gate`` blocks its lane until ``release`` is set."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()

    @property
    def resident(self) -> Mapping[str, np.ndarray]:
        return {}

    def make_workspace(self) -> Any:
        return None

    def run(self, op: str, resident: Any, workspace: Any, params: Any, inputs: Sequence[np.ndarray],
            outputs: Sequence[np.ndarray], tensors: Any) -> None:
        if op == "gate":
            self.entered.set()
            self.release.wait(60)
        outputs[0][...] = inputs[0]


class SmallJob:
    """``n`` independent tiles of ``op``, with ``n_tensors`` job tensors; checks its own data came back."""

    def __init__(self, op: str = "copy", n: int = 1, n_tensors: int = 2):
        self.tiles = tuple(Tile(i, op, (), (SPEC,), (SPEC,), tuple(f"t{k}" for k in range(n_tensors)))
                           for i in range(n))
        self.tensor_specs = {f"t{k}": SPEC for k in range(n_tensors)}
        self.seen = np.full(n, -1.0)

    def prepare(self, tile: Tile, host_in: Sequence[np.ndarray]) -> None:
        host_in[0][...] = tile.index

    def commit(self, tile: Tile, host_out: Sequence[np.ndarray]) -> None:
        self.seen[tile.index] = host_out[0][0]


class OomDevice(CpuDevice):
    """Device allocations fail (device out of memory) once ``budget`` more allocations have been made."""

    def __init__(self) -> None:
        super().__init__(1)
        self.budget: int | None = None
        self.failures = 0

    def alloc(self, nbytes: int) -> Any:
        if self.budget is not None:
            if self.budget <= 0:
                self.failures += 1
                raise MemoryError("device out of memory")
            self.budget -= 1
        return super().alloc(nbytes)


async def _activation_storm(n_pending: int) -> None:
    program = GateProgram()
    device = OomDevice()
    device.load(program)
    ins, outs = slot_nbytes(SmallJob().tiles)
    pool = BufferPool(device, ins, outs, 2)
    pipe = Pipeline(device, pool, lanes=1, max_active_jobs=1)
    baseline = device.buffers_live
    async with anyio.create_task_group() as tg:
        await tg.start(pipe.serve)
        tg.start_soon(pipe.run, [SmallJob("gate")])  # the one active job, held on its kernel
        while not program.entered.is_set():
            await anyio.sleep(0.001)
        jobs = [SmallJob() for _ in range(n_pending)]  # all pending: max_active_jobs=1
        device.budget = 1  # the first pending job gets one of its two tensors, then the device is full
        outcome: list[BaseException] = []

        async def pending() -> None:
            try:
                await pipe.run(jobs)
            except Exception as exc:
                outcome.append(exc)

        tg.start_soon(pending)
        await anyio.sleep(0.01)
        program.release.set()  # the active job finishes: every pending job's activation fails in turn
        while not outcome:
            await anyio.sleep(0.001)
        err = outcome[0]
        assert isinstance(err, aw.DeviceError) and isinstance(err.__cause__, MemoryError), repr(err)
        assert "out of memory" in str(err)
        assert device.failures == n_pending
        assert device.buffers_live == baseline  # the half-activated job's first tensor was freed too
        device.budget = None  # memory is back: the pipeline still serves
        ok = SmallJob(n=3)
        await pipe.run([ok])
        assert np.array_equal(ok.seen, np.arange(3))
        assert device.buffers_live == baseline and pool.in_use == 0
        tg.cancel_scope.cancel()
    pool.close()


@pytest.mark.parametrize("loop", ALL_LOOPS)
@pytest.mark.parametrize("n_pending", [500, 1500])
def test_activation_failures_with_many_pending_jobs(loop: Any, n_pending: int) -> None:
    """Before: ``_activate`` -> ``finish`` -> ``_activate`` nested once per failing job: around 500 pending
    jobs a job was marked finished but never signalled (``run()`` hung in its shielded drain), past 1,000 a
    RecursionError crashed ``serve``."""
    backend, options = loop
    run_guarded(lambda: anyio.run(_activation_storm, n_pending, backend=backend, backend_options=options))


class LeakyFree(CpuDevice):
    """Freeing a device buffer fails once."""

    def __init__(self) -> None:
        super().__init__(1)
        self.armed = False

    def free(self, buf: Any) -> None:
        if self.armed:
            self.armed = False
            raise OSError("DMA unmap failed")
        super().free(buf)


async def _free_failure() -> None:
    device = LeakyFree()
    device.load(GateProgram())
    ins, outs = slot_nbytes(SmallJob().tiles)
    pool = BufferPool(device, ins, outs, 2)
    pipe = Pipeline(device, pool, lanes=1, max_active_jobs=1)
    async with anyio.create_task_group() as tg:
        await tg.start(pipe.serve)
        device.armed = True
        victim = SmallJob(n=2)
        with pytest.raises(aw.DeviceError, match="could not free") as info:
            await pipe.run([victim, SmallJob()])  # the second job waits on the first: activated after it
        assert isinstance(info.value.__cause__, OSError)
        ok = SmallJob(n=3)
        await pipe.run([ok])  # still serving
        assert np.array_equal(ok.seen, np.arange(3)) and pool.in_use == 0
        tg.cancel_scope.cancel()
    pool.close()


@pytest.mark.parametrize("loop", ALL_LOOPS)
def test_a_failing_free_fails_only_its_request(loop: Any) -> None:
    """Ending a job signals its waiter and activates the next whatever the device does when freeing."""
    backend, options = loop
    run_guarded(lambda: anyio.run(_free_failure, backend=backend, backend_options=options))


class HaltingDma(CpuDevice):
    """A batched copy to the device fails once with the device's own typed error."""

    def __init__(self) -> None:
        super().__init__(1)
        self.armed = True
        self.error: aw.DeviceError | None = None
        self.batches: list[int] = []

    def to_device_many(self, pairs: list[tuple[Any, Any]]) -> None:
        self.batches.append(len(pairs))
        if self.armed:
            self.armed = False
            self.error = aw.DeviceError("DMA engine halted")
            raise self.error
        for dst, src in pairs:
            self.to_device(dst, src)


async def _shared_batch_failure() -> None:
    device = HaltingDma()
    device.load(GateProgram())
    ins, outs = slot_nbytes(SmallJob().tiles)
    pool = BufferPool(device, ins, outs, 4)
    pipe = Pipeline(device, pool, lanes=1, dma_batch=4)
    errors: dict[int, BaseException] = {}
    async with anyio.create_task_group() as tg:
        await tg.start(pipe.serve)

        async def request(i: int) -> None:
            try:
                await pipe.run([SmallJob(n=4)])
            except aw.DeviceError as exc:
                errors[i] = exc

        async with anyio.create_task_group() as inner:
            for i in range(2):
                inner.start_soon(request, i)
        tg.cancel_scope.cancel()
    pool.close()
    assert device.batches[0] > 1 and sorted(errors) == [0, 1], (device.batches, errors)
    a, b = errors[0], errors[1]
    assert a is not b  # each request has its own exception ...
    assert a.__cause__ is device.error and b.__cause__ is device.error  # ... with the shared cause chained
    assert not getattr(device.error, "__notes__", None)  # the device's exception is not written to
    for err in (a, b):
        assert "DMA engine halted" in str(err) and any("copy to device" in n for n in err.__notes__)


@pytest.mark.parametrize("loop", ALL_LOOPS)
def test_a_batched_failure_gives_each_request_its_own_exception(loop: Any) -> None:
    backend, options = loop
    run_guarded(lambda: anyio.run(_shared_batch_failure, backend=backend, backend_options=options))


def test_window_jobs_allocate_on_activation(tiny: aw.WhisperModel) -> None:
    """Before: every WindowJob copied its log-mel and allocated its activations at submission (3.3 MB per
    tiny window: gigabytes up front for a multi-hour file), whatever ``max_active_jobs`` said."""
    plan = EncoderPlan(tiny.dims, 375)
    mels = np.zeros((64, tiny.dims.n_mels, 3000), np.float32)
    out = np.empty((64, 1500, tiny.dims.n_audio_state), np.float32)
    tracemalloc.start()
    try:
        jobs = [WindowJob(plan, mels[i], out[i]) for i in range(64)]
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20, f"{peak / 2**20:.1f} MiB allocated by 64 window jobs at submission"
    assert len(jobs) == 64


async def _traced_peak(rt: aw.Runtime, mels: np.ndarray, n_ctx: int) -> tuple[np.ndarray, int]:
    """encode_mels' result and the most memory it held at once beyond that result (tracemalloc)."""
    tracemalloc.start()
    try:
        out, _ = await rt.encode_mels(mels, n_ctx)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return out, peak - out.nbytes


@pytest.mark.slow
@pytest.mark.anyio
async def test_encode_memory_is_bounded_by_max_active_jobs(tiny: aw.WhisperModel) -> None:
    """Memory beyond the result does not grow with the number of windows (kernel temporaries, stats and
    the like are the same for 4 windows or 24; window jobs' working memory must be too)."""
    n, n_ctx = 24, 256
    rng = np.random.default_rng(0)
    audio = (rng.standard_normal(n * 480000 - 1000) * 0.05).astype(np.float32)
    mels = aw.log_mel_windows(audio)
    async with aw.Runtime(tiny, max_active_jobs=2) as rt:
        ref, _ = await rt.encode_mels(mels[[0, n - 1]], n_ctx)
        _, few = await _traced_peak(rt, mels[:4], n_ctx)
        out, many = await _traced_peak(rt, mels, n_ctx)
        assert rt.buffer_pool.in_use == 0
    per_job = mels[0].nbytes + out[0].nbytes  # a window job's log-mel copy and residual stream
    grown = many - few
    assert grown < 4 * per_job, (f"{n} windows held {grown / 2**20:.1f} MiB more than 4 did "
                                 f"({per_job / 2**20:.2f} MiB per window job)")
    assert np.array_equal(out[[0, n - 1]], ref)
