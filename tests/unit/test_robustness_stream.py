"""Regression tests for streams (issue 16): a source raising a stray cancellation (defect 3) or its own
``BrokenResourceError``/``ClosedResourceError`` (defect 4) fails only its stream, with the error reaching
the consumer; pending finals stay bounded with chunks longer than a window (defect 5); two tasks iterating
one stream are refused."""

from __future__ import annotations

import asyncio
import math
import socket
import struct
from typing import Any, AsyncIterator, Awaitable, Callable

import anyio
import numpy as np
import pytest
from anyio.abc import SocketAttribute, SocketStream

import aiowhisper_npu as aw
from aiowhisper_npu.audio.io import N_SAMPLES, SAMPLE_RATE
from aiowhisper_npu.models.model import ModelDimensions
from aiowhisper_npu.pipeline.stats import PipelineStats
from aiowhisper_npu.streaming.stream import EncodeStream
from tests.support.loops import (
    HANG_S,
    all_loops,
    all_loops_fast_on_asyncio,
    asyncio_only,
    lane_threads,
    live_tasks,
    on_trio,
    settle,
)

pytestmark = pytest.mark.anyio

SHORT = np.zeros(1600, np.float32)


async def _consume(rt: aw.Runtime, source: AsyncIterator[np.ndarray], mode: str, **options: Any) -> list[Any]:
    if mode == "bare":
        return [u async for u in rt.encode_stream(source, **options)]
    async with rt.encode_stream(source, **options) as s:
        return [u async for u in s]


# ------------------------------------------------------------------------------------ defect 3


async def stray_cancellation() -> None:
    """Raise the loop's cancellation exception while no scope around the caller is cancelled: what a source
    does when it awaited a future that some library cancelled (asyncio), or re-raised a ``Cancelled`` it
    caught inside a scope of its own (trio)."""
    if on_trio():
        import trio

        caught: BaseException | None = None
        with trio.CancelScope() as scope:
            scope.cancel()
            try:
                await trio.sleep(0)
            except trio.Cancelled as exc:
                caught = exc
        assert caught is not None
        raise caught
    fut = asyncio.get_running_loop().create_future()
    fut.cancel()
    await fut


@pytest.mark.slow
@all_loops
@pytest.mark.parametrize("mode", ["bare", "scoped"])
async def test_a_source_raising_cancellation_fails_only_its_stream(tiny: aw.WhisperModel, mode: str) -> None:
    """Before: the detached reader ran in the runtime's task group, so concurrent encodes, the body and
    ``async with Runtime`` itself were all cancelled."""
    audio = np.random.default_rng(1).standard_normal(2 * N_SAMPLES).astype(np.float32) * 0.05
    cancelled = anyio.get_cancelled_exc_class()

    async def source() -> AsyncIterator[np.ndarray]:
        yield SHORT
        await stray_cancellation()
        yield SHORT

    results: dict[str, Any] = {}
    tasks = live_tasks()
    async with aw.Runtime(tiny) as rt:
        async def bystander() -> None:
            results["encode"] = await rt.encode(audio)

        async def consumer() -> None:
            try:
                await _consume(rt, source(), mode, update_every_s=math.inf)
                results["stream"] = "ended"
            except Exception as exc:
                results["stream"] = exc

        async with anyio.create_task_group() as tg:
            tg.start_soon(bystander)
            tg.start_soon(consumer)
        await anyio.sleep(0)  # the body is not cancelled
        assert (await rt.encode(SHORT)).hidden_states.shape == (1, 1500, 384)
        assert rt.buffer_pool.in_use == 0
    err = results["stream"]
    assert isinstance(err, RuntimeError) and isinstance(err.__cause__, cancelled), repr(err)
    assert "CancelledError" in str(err) or "Cancelled" in str(err)
    assert results["encode"].hidden_states.shape == (2, 1500, 384)
    assert lane_threads() == []
    assert await settle(lambda: live_tasks() == tasks)


# ------------------------------------------------------------------------------------ defect 4


async def _reset_connection() -> tuple[Callable[[], AsyncIterator[np.ndarray]], Callable[[], Awaitable[None]]]:
    """A TCP source whose peer resets the connection after one chunk (anyio raises BrokenResourceError)."""
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    port = listener.extra(SocketAttribute.local_port)

    async def handler(conn: SocketStream) -> None:
        await conn.send(SHORT.tobytes())
        await conn.receive()  # the client has the chunk: now reset (RST, not FIN)
        conn.extra(SocketAttribute.raw_socket).setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                                          struct.pack("ii", 1, 0))
        await conn.aclose()

    async def source() -> AsyncIterator[np.ndarray]:
        async with await anyio.connect_tcp("127.0.0.1", port) as client:
            buf = b""
            while True:
                buf += await client.receive()
                while len(buf) >= SHORT.nbytes:
                    yield np.frombuffer(buf[: SHORT.nbytes], np.float32).copy()
                    buf = buf[SHORT.nbytes :]
                    await client.send(b"k")

    async def serve() -> None:
        await listener.serve(handler)

    return source, serve


@all_loops_fast_on_asyncio
@pytest.mark.parametrize("error", ["BrokenResourceError", "ClosedResourceError", "tcp-reset"])
@pytest.mark.parametrize("mode", ["bare", "scoped"])
async def test_a_source_resource_error_reaches_the_consumer(tiny: aw.WhisperModel, error: str, mode: str) -> None:
    """Before: the source's own Broken/ClosedResourceError was taken for "the consumer closed the stream",
    and the consumer got "the stream's reader was cancelled" with no cause."""
    async with aw.Runtime(tiny, lanes=1) as rt, anyio.create_task_group() as tg:
        if error == "tcp-reset":
            source, serve = await _reset_connection()
            tg.start_soon(serve)
            expected: Any = anyio.BrokenResourceError
        else:
            expected = getattr(anyio, error)
            own = expected("connection reset by peer")

            async def source() -> AsyncIterator[np.ndarray]:
                yield SHORT
                raise own

        with pytest.raises(Exception) as info:
            await _consume(rt, source(), mode, update_every_s=math.inf)
        err = info.value
        assert isinstance(err, expected) or isinstance(err.__cause__, expected), repr(err)
        if error != "tcp-reset":
            assert err is own or err.__cause__ is own
        else:
            assert isinstance(err.__cause__ or err, (anyio.BrokenResourceError, ConnectionResetError))
        assert (await rt.encode(SHORT)).hidden_states.shape == (1, 1500, 384)  # the runtime is unharmed
        tg.cancel_scope.cancel()


# ------------------------------------------------------------------------------------ defect 5


class RecordingEncoder:
    """A :class:`~aiowhisper_npu.streaming.stream.StreamEncoder` that answers at once and keeps the log-mel
    windows it was asked to encode."""

    def __init__(self, dims: ModelDimensions):
        self.dims = dims
        self.mels: list[np.ndarray] = []

    async def encode(self, mels: np.ndarray, n_ctx: int | None = None) -> tuple[np.ndarray, PipelineStats]:
        await anyio.sleep(0)
        self.mels.append(mels[0].copy())
        return np.zeros((1, n_ctx or self.dims.n_audio_ctx, self.dims.n_audio_state), np.float32), PipelineStats()

    def start_background(self, fn: Callable[[], Awaitable[None]], name: str) -> None:
        raise AssertionError("these tests use 'async with' streams")


@asyncio_only
async def test_pending_finals_stay_bounded_with_long_chunks(tiny: aw.WhisperModel) -> None:
    """60 s chunks, finals only: before, each step drained everything queued but emitted one final, so
    pending finals grew with the input (12 chunks -> 13 pending, ~12 MB of log-mel)."""
    chunk, n_chunks, max_queued_s = 60 * SAMPLE_RATE, 12, 5.0
    audio = (np.random.default_rng(2).standard_normal(n_chunks * chunk + 7 * SAMPLE_RATE) * 0.05).astype(np.float32)
    enc = RecordingEncoder(tiny.dims)
    produced = [0]

    async def source() -> AsyncIterator[np.ndarray]:
        for i in range(0, audio.size, chunk):
            produced[0] = min(audio.size, i + chunk)
            yield audio[i : i + chunk]

    pending, ahead, updates = 0, 0.0, []
    async with EncodeStream(enc, source(), background=enc.start_background, update_every_s=math.inf,
                            max_queued_s=max_queued_s) as s:
        async for upd in s:
            updates.append(upd)
            pending = max(pending, s.pending_finals)
            ahead = max(ahead, (produced[0] - upd.end_s * SAMPLE_RATE) / SAMPLE_RATE)
    lag = s.lag
    assert len(updates) == 2 * n_chunks + 1 and all(u.final for u in updates)
    assert pending <= 1, f"{pending} finals pending"
    assert ahead <= 2.5 * chunk / SAMPLE_RATE, f"the source ran {ahead:.0f} s ahead of the updates"
    assert lag.max_queued_audio_s <= max_queued_s + chunk / SAMPLE_RATE
    assert np.array_equal(np.stack(enc.mels), aw.log_mel_windows(audio))  # still exact window by window


# ------------------------------------------------------------------------------------ one consumer per stream


@all_loops_fast_on_asyncio
async def test_two_tasks_iterating_one_stream(tiny: aw.WhisperModel) -> None:
    gate = anyio.Event()

    async def source() -> AsyncIterator[np.ndarray]:
        yield SHORT
        await gate.wait()
        yield SHORT

    got: list[Any] = []
    started = anyio.Event()
    async with aw.Runtime(tiny, lanes=1) as rt:
        async with rt.encode_stream(source(), update_every_s=math.inf) as s:
            async with anyio.create_task_group() as tg:
                async def first() -> None:
                    started.set()
                    async for upd in s:
                        got.append(upd)

                tg.start_soon(first)
                await started.wait()  # first is inside __anext__ now, waiting for audio
                with pytest.raises(anyio.BusyResourceError, match="already"), anyio.fail_after(HANG_S):
                    await s.__anext__()  # (before: it waited, competing with the first consumer)
                gate.set()
        assert rt.buffer_pool.in_use == 0
    assert len(got) == 1 and got[0].final and got[0].end_s == pytest.approx(2 * SHORT.size / SAMPLE_RATE)
