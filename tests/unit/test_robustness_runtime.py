"""Regression tests for the runtime's loop and lifecycle defects (issue 16, defects 1, 2 and 7), on asyncio,
uvloop and trio: a call from another event loop is refused at once and leaves the runtime serving;
``aclose()`` is safe from any task and in any nesting; the body's errors and cancellation propagate
unchanged; ``lanes`` beyond the device is refused at open; requests failed together get exceptions of
their own."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any, AsyncIterator

import anyio
import numpy as np
import pytest

import aiowhisper_npu as aw
from aiowhisper_npu.audio.io import SAMPLE_RATE
from aiowhisper_npu.devices.cpu import CpuDevice
from tests.support.loops import (
    ASYNCIO,
    TRIO,
    all_loops,
    all_loops_fast_on_asyncio,
    join_thread,
    lane_threads,
    live_tasks,
    loops_fast_on_asyncio,
    settle,
)

pytestmark = pytest.mark.anyio

SHORT = np.zeros(1600, np.float32)


@pytest.fixture(scope="module")
def speech(clip_paths: dict[str, Path]) -> np.ndarray:
    return aw.load_audio(clip_paths["long_40s.wav"])


class Source:
    """Chunks of ``audio``; records whether the stream closed it."""

    def __init__(self, audio: np.ndarray, size: int = 4000):
        self.audio, self.size, self.closed = audio, size, False

    async def __call__(self) -> AsyncIterator[np.ndarray]:
        try:
            for i in range(0, self.audio.size, self.size):
                yield self.audio[i : i + self.size]
                await anyio.sleep(0)
        finally:
            self.closed = True


# ------------------------------------------------------------------------------------ defect 1: other loops


@pytest.mark.slow
@all_loops
@pytest.mark.parametrize("other", [ASYNCIO, TRIO])
async def test_a_call_from_another_event_loop_is_refused_at_once(tiny: aw.WhisperModel,
                                                                 other: tuple[str, dict[str, Any]]) -> None:
    """Open in one loop, call from another thread's ``anyio.run``: a clear error naming the facade, and the
    owning loop keeps serving (before: the caller hung on asyncio; trio asserted and wedged the runtime)."""
    async with aw.Runtime(tiny, lanes=1) as rt:
        ref = (await rt.encode(SHORT)).hidden_states
        outcome: dict[str, Any] = {}

        def foreign() -> None:
            async def go() -> None:
                for name, call in (("encode", lambda: rt.encode(SHORT)),
                                   ("encode_mels", lambda: rt.encode_mels(aw.log_mel_windows(SHORT))),
                                   ("stream", lambda: _first(rt.encode_stream([SHORT]))),
                                   ("aclose", rt.aclose)):
                    try:
                        with anyio.fail_after(60):
                            await call()
                        outcome[name] = "returned"
                    except BaseException as exc:  # noqa: BLE001 - checked below
                        outcome[name] = exc

            anyio.run(go, backend=other[0], backend_options=other[1])

        t = threading.Thread(target=foreign, daemon=True)
        t.start()
        assert await join_thread(t), "the foreign event loop hung"
        for name in ("encode", "encode_mels", "stream", "aclose"):
            err = outcome[name]
            assert isinstance(err, RuntimeError), (name, err)
            assert "another event loop" in str(err) and "Runtime.sync" in str(err), (name, err)
        with anyio.fail_after(120):  # the owner is unharmed: not closed, not wedged
            assert np.array_equal((await rt.encode(SHORT)).hidden_states, ref)
            # the supported way from a worker thread of the runtime's own loop
            out = await anyio.to_thread.run_sync(lambda: anyio.from_thread.run(rt.encode, SHORT))
            assert np.array_equal(out.hidden_states, ref)
        assert rt.buffer_pool.in_use == 0


async def _first(stream: Any) -> Any:
    async for upd in stream:
        return upd


async def test_a_runtime_opened_in_a_finished_loop_refuses_a_new_one(tiny: aw.WhisperModel) -> None:
    """The same thread, but a new event loop after the first one ended: refused, not hung."""
    holder: list[aw.Runtime] = []

    async def open_and_leave() -> None:
        holder.append(await aw.Runtime(tiny, lanes=1).__aenter__())

    errors: list[BaseException] = []

    def body() -> None:
        anyio.run(open_and_leave)  # the loop ends with the runtime open: its host task is cancelled

        async def again() -> None:
            try:
                await holder[0].encode(SHORT)
            except BaseException as exc:  # noqa: BLE001 - checked below
                errors.append(exc)

        anyio.run(again)

    t = threading.Thread(target=body, daemon=True)
    t.start()
    assert await join_thread(t)
    assert len(errors) == 1 and isinstance(errors[0], RuntimeError), errors
    assert "another event loop" in str(errors[0])
    assert await settle(lambda: not lane_threads())  # the ended loop cleaned up after itself


# ------------------------------------------------------------------------------------ defect 2: lifecycle


@pytest.mark.slow
@all_loops
@pytest.mark.parametrize("mode", ["scoped", "bare"])
async def test_aclose_inside_a_stream_block(tiny: aw.WhisperModel, speech: np.ndarray, mode: str) -> None:
    """``rt.aclose()`` inside ``async with rt.encode_stream(...)`` (before: misnested cancel scopes -- a RuntimeError,
    then CancelledError on every later await on asyncio; "Nursery misnesting detected" on trio)."""
    tasks = live_tasks()
    src = Source(speech)
    async with aw.Runtime(tiny) as rt:
        stream = rt.encode_stream(src(), update_every_s=1.0)
        if mode == "scoped":
            async with stream as s:
                assert not (await s.__anext__()).final
                await rt.aclose()
                with pytest.raises(RuntimeError, match="not open|closed"):
                    await s.__anext__()
                await anyio.sleep(0)  # later awaits in the block are not cancelled
        else:
            async for _ in stream:
                await rt.aclose()
                break
            with pytest.raises(RuntimeError, match="not open"):
                await rt.encode(SHORT)
        await anyio.sleep(0)
    await anyio.sleep(0.01)
    assert lane_threads() == []
    assert await settle(lambda: src.closed and live_tasks() == tasks)
    async with aw.Runtime(tiny, lanes=1) as rt:  # the same task opens and serves a new runtime
        assert (await rt.encode(SHORT)).hidden_states.shape == (1, 1500, 384)


@all_loops_fast_on_asyncio
async def test_aclose_from_another_task(tiny: aw.WhisperModel, speech: np.ndarray) -> None:
    """A task other than the opener closes the runtime while requests run (before: broke both loops)."""
    tasks = live_tasks()
    outcomes: list[Any] = []
    submitted: list[int] = []
    mels = aw.log_mel_windows(speech)
    async with aw.Runtime(tiny) as rt:
        await rt.encode(SHORT)

        async def request() -> None:
            submitted.append(1)  # encode_mels submits its jobs before it first yields
            try:
                outcomes.append(await rt.encode_mels(mels))
            except RuntimeError as exc:
                outcomes.append(exc)

        async def closer() -> None:
            while len(submitted) < 2 or rt.buffer_pool.in_use == 0:
                await anyio.sleep(0)
            async with anyio.create_task_group() as closers:  # two tasks close at once
                closers.start_soon(rt.aclose)
                closers.start_soon(rt.aclose)
            await rt.aclose()  # idempotent

        async with anyio.create_task_group() as tg:
            tg.start_soon(request)
            tg.start_soon(request)
            tg.start_soon(closer)
        await anyio.sleep(0)
        with pytest.raises(RuntimeError, match="not open"):
            await rt.encode(SHORT)
    assert lane_threads() == []
    assert await settle(lambda: live_tasks() == tasks)
    assert len(outcomes) == 2 and all(isinstance(o, RuntimeError) for o in outcomes), outcomes
    assert all("closed while this request was running" in str(e) for e in outcomes), outcomes
    # requests failed together get exceptions of their own (before: fail_all shared one object)
    assert outcomes[0] is not outcomes[1]


@all_loops_fast_on_asyncio
async def test_open_in_one_task_use_and_close_in_others(tiny: aw.WhisperModel) -> None:
    """The runtime does not belong to the task that opened it: that task may end first."""
    holder: list[aw.Runtime] = []
    async with anyio.create_task_group() as tg:
        async def opener() -> None:
            holder.append(await aw.Runtime(tiny, lanes=1).__aenter__())

        tg.start_soon(opener)
    rt = holder[0]
    out: list[Any] = []
    async with anyio.create_task_group() as tg:
        async def user() -> None:
            out.append(await rt.encode(SHORT))

        tg.start_soon(user)
    assert out[0].hidden_states.shape == (1, 1500, 384)
    async with anyio.create_task_group() as tg:
        tg.start_soon(rt.aclose)
    assert lane_threads() == []


@all_loops_fast_on_asyncio
async def test_body_errors_and_cancellation_propagate_unchanged(tiny: aw.WhisperModel, speech: np.ndarray) -> None:
    tasks = live_tasks()
    with pytest.raises(ValueError, match="boom"):  # as itself: not an ExceptionGroup, not a cancellation
        async with aw.Runtime(tiny) as rt:
            async for _upd in rt.encode_stream(Source(speech)()):  # a detached stream reader is running
                raise ValueError("boom")
    with anyio.CancelScope() as outer:
        async with aw.Runtime(tiny) as rt:
            async with anyio.create_task_group() as tg:
                tg.start_soon(rt.encode, speech)
                while rt.buffer_pool.in_use == 0:
                    await anyio.sleep(0)
                outer.cancel()
                await anyio.sleep_forever()
    assert outer.cancelled_caught
    await anyio.sleep(0)  # not cancelled afterwards
    assert lane_threads() == []
    assert await settle(lambda: live_tasks() == tasks)


@all_loops
async def test_cancelled_while_opening(tiny: aw.WhisperModel) -> None:
    tasks = live_tasks()
    for delay in (0.0, 0.001, 0.01, 0.05):
        with anyio.move_on_after(delay):
            async with aw.Runtime(tiny) as rt:
                await rt.encode(SHORT)
        await anyio.sleep(0)
        assert lane_threads() == []
        assert await settle(lambda: live_tasks() == tasks)


@all_loops
async def test_aclose_from_a_task_the_runtime_runs(tiny: aw.WhisperModel, speech: np.ndarray) -> None:
    """A bare stream's source runs in the runtime's own host: closing from there cannot wait for itself,
    so it requests the close and returns (no deadlock); the closing completes around it."""
    tasks = live_tasks()
    closed_from_source = anyio.Event()

    async def source() -> AsyncIterator[np.ndarray]:
        yield speech[:SAMPLE_RATE]
        await rt.aclose()
        closed_from_source.set()
        yield speech[SAMPLE_RATE : 2 * SAMPLE_RATE]

    async with aw.Runtime(tiny) as rt:
        with pytest.raises(RuntimeError, match="not open|closed|cancelled"):
            async for _upd in rt.encode_stream(source(), update_every_s=0.5):
                pass
        with pytest.raises(RuntimeError, match="not open"):
            await rt.encode(SHORT)
    assert closed_from_source.is_set()
    assert lane_threads() == []
    assert await settle(lambda: live_tasks() == tasks)


class BrokenRun:
    """A run without ``timing``: the pipeline's kernel stage itself fails on it (a device bug)."""


class BuggyDevice(CpuDevice):
    def __init__(self) -> None:
        super().__init__(1)
        self.armed = False

    def launch(self, *args: Any) -> Any:
        run = super().launch(*args)
        return BrokenRun() if self.armed else run

    def wait(self, run: Any, timeout_s: float | None = None) -> bool:
        return True if isinstance(run, BrokenRun) else super().wait(run, timeout_s)


@all_loops_fast_on_asyncio
async def test_a_failing_service_closes_the_runtime_without_losing_the_error(tiny: aw.WhisperModel) -> None:
    tasks = live_tasks()
    device = BuggyDevice()
    rt = aw.Runtime(tiny, device=device)
    with pytest.raises(BaseExceptionGroup) as info:  # raised by aclose() at the end of the block
        async with rt:
            await rt.encode(SHORT)
            device.armed = True
            with pytest.raises(RuntimeError, match="closed while this request was running") as req:
                await rt.encode(SHORT)
            assert req.value.__cause__ is not None  # the service's failure, chained
            with pytest.raises(RuntimeError, match="not open"):
                await rt.encode(SHORT)
    assert info.group_contains(AttributeError)
    await rt.aclose()  # raised once; closing again is a no-op
    assert device.buffers_live == 0 and lane_threads() == []
    assert await settle(lambda: live_tasks() == tasks)


# ------------------------------------------------------------------------------------ defect 7: lanes


@loops_fast_on_asyncio
async def test_lanes_beyond_the_device_are_refused_at_open(tiny: aw.WhisperModel) -> None:
    """Before: the runtime opened, then every encode failed with "lane 1 out of range"."""
    device = CpuDevice(1)
    with pytest.raises(ValueError, match=r"lanes=2.*1 lane"):
        async with aw.Runtime(tiny, device=device, lanes=2):
            pass
    assert device.buffers_live == 0 and lane_threads() == []
    async with aw.Runtime(tiny, device=CpuDevice(2), lanes=1) as rt:  # fewer lanes than the device: fine
        assert (await rt.encode(SHORT)).hidden_states.shape == (1, 1500, 384)
    async with aw.Runtime(tiny, device=CpuDevice(2)) as rt:  # the default follows the device
        assert rt.lanes == 2


async def test_open_errors_still_typed(tmp_path: Path) -> None:
    """Errors while opening come from the host task unchanged (not wrapped) and leave nothing behind."""
    tasks = live_tasks()
    with pytest.raises(aw.ModelError, match="tiny.en"):
        async with aw.Runtime("no-such-model"):
            pass
    with pytest.raises(aw.BackendUnavailable):
        async with aw.Runtime("tiny.en", backend="quantum"):
            pass
    assert lane_threads() == [] and live_tasks() == tasks
    rt = aw.Runtime("tiny.en", lanes=1)
    async with rt:
        with pytest.raises(RuntimeError, match="already open"):
            await rt.__aenter__()
        assert rt.dims.n_audio_state == 384
