"""The input side of one stream: its reader task's lifecycle, the backlog, the end of the audio and the lag.

:class:`StreamInput` is what the encode stream (:class:`~.stream.EncodeStream`) and the caption stream
(:class:`~.captions.CaptionStream`) both hold:

* **the reader** (:class:`~.flow.ChunkReader`: validation, resampling, backpressure) runs in the task group
  of an ``async with`` block (:meth:`StreamInput.enter`), or, for a bare ``async for``, in the runtime's
  service host (``background``), started by the first :meth:`StreamInput.next`. :meth:`StreamInput.close`
  stops it; a detached reader is also stopped when the input is garbage-collected;
* **the backlog**: :meth:`StreamInput.fill` drains the reader's channel into it, :meth:`StreamInput.take`
  hands out up to a number of samples (the rest of a chunk stays queued), and :meth:`StreamInput.consume`
  tells the reader they were used (taken audio counts as queued until then);
* **the end**: once the reader's end or failure is drained, :attr:`StreamInput.ended` is set and
  :meth:`StreamInput.check_end` raises the source's failure (or a cancelled reader's ``RuntimeError``);
* **the lag meter**: every update is recorded (:meth:`StreamInput.record`) and :attr:`StreamInput.lag` is a
  :class:`StreamLag` snapshot.

One task consumes a stream at a time (:meth:`StreamInput.next`; a second gets ``anyio.BusyResourceError``).
"""

from __future__ import annotations

import time
from collections import deque
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import Any, AsyncIterable, AsyncIterator, Awaitable, Callable, Iterable, TypeVar

import anyio
import numpy as np

from ..audio.io import SAMPLE_RATE
from .flow import Chunk, ChunkReader

__all__ = ["INLINE_SAMPLES_MAX", "StartBackground", "StreamInput", "StreamLag", "maybe_in_thread"]

#: Samples of audio up to which a log-mel push runs on the event loop (0.2 s); a larger one runs in a
#: worker thread.
INLINE_SAMPLES_MAX = 3200
_RECENT_UPDATES = 10  # updates the recent compute figure covers
_now = time.perf_counter
_T = TypeVar("_T")

#: Runs ``fn()`` as a background task of the runtime until it returns or the runtime closes
#: (:meth:`Runtime.start_background <aiowhisper_npu.runtime.runtime.Runtime.start_background>`).
StartBackground = Callable[[Callable[[], Awaitable[None]], str], None]


async def maybe_in_thread(fn: Callable[[np.ndarray], _T], x: np.ndarray) -> _T:
    """``fn(x)`` on the loop for at most :data:`INLINE_SAMPLES_MAX` samples, else in a worker thread."""
    return await anyio.to_thread.run_sync(fn, x) if x.size > INLINE_SAMPLES_MAX else fn(x)


@dataclass(frozen=True)
class StreamLag:
    """How far a stream is behind (a snapshot). All audio amounts are in 16 kHz seconds.

    ``compute_s_per_audio_s`` is the stream's encoder + log-mel wall time per second of audio received.
    For a real-time source, 1.0 means it is computing all the time and cannot update any faster;
    ``recent_compute_s_per_audio_s`` is the same over the last 10 updates. ``queued_audio_s`` is audio
    received but not yet taken by the encoder side (the bounded buffer; at most ``max_queued_s`` plus one
    chunk); ``behind_s`` is audio received but not yet covered by a yielded update.
    """

    audio_s: float
    updated_s: float
    queued_audio_s: float
    max_queued_audio_s: float
    behind_s: float
    compute_s: float
    compute_s_per_audio_s: float
    recent_compute_s_per_audio_s: float
    updates: int
    finals: int
    partials_skipped: int


class StreamInput:
    """The input of one stream (see the module docstring).

    Args:
        chunks: an async iterable (or a plain iterable) of 1-D float arrays at ``sample_rate``, or of
            ``(array, rate)`` tuples. The input owns the iterator and closes it when done.
        background: starts the reader of a bare ``async for`` stream in the runtime's service host.
        sample_rate: the rate of the chunks; other than 16000, they are resampled as a stream.
        max_queued_s: undrained audio at which the reader stops pulling from the source.
        max_queued_chunks: capacity of the reader's channel, in chunks.
    """

    def __init__(self, chunks: AsyncIterable[Any] | Iterable[Any], *, background: StartBackground,
                 sample_rate: int = SAMPLE_RATE, max_queued_s: float = 5.0, max_queued_chunks: int = 1024) -> None:
        if isinstance(sample_rate, bool) or not isinstance(sample_rate, (int, np.integer)) or sample_rate <= 0:
            raise ValueError(f"sample_rate must be a positive integer, got {sample_rate!r}")
        if not (max_queued_s > 0 and max_queued_chunks >= 1):
            raise ValueError(f"max_queued_s and max_queued_chunks must be positive, got {max_queued_s!r}, "
                             f"{max_queued_chunks!r}")
        self._background = background
        self._reader = ChunkReader(_as_async_iterable(chunks), sample_rate=int(sample_rate),
                                   max_queued_samples=round(max_queued_s * SAMPLE_RATE),
                                   max_queued_chunks=max_queued_chunks)
        self._backlog: deque[Chunk] = deque()  # drained from the reader, not yet taken
        self._backlog_samples = 0
        self._ended: BaseException | bool = False  # the reader's end (True) or failure, once drained
        self._iterating = False  # a task is inside next()
        self._mode: str | None = None  # "scoped" (async with) or "detached" (bare async for)
        self._stack: AsyncExitStack | None = None
        self._closed = False
        self._newest_t = 0.0  # arrival time of the newest sample taken
        self._updated = 0  # stream sample up to which the newest update reaches
        self._compute_s = self._unbilled_s = 0.0
        self._recent: deque[tuple[float, int]] = deque(maxlen=_RECENT_UPDATES)  # (compute_s, samples advanced)
        self._updates = self._finals = self._skipped = 0

    # -- lifecycle --------------------------------------------------------------------------------------
    async def enter(self) -> None:
        """Start the reader in a task group of the caller's own (the stream's ``__aenter__``)."""
        if self._mode is not None:
            raise RuntimeError("this stream was already started; use 'async with' on it before iterating")
        self._mode = "scoped"
        stack = AsyncExitStack()
        await stack.__aenter__()
        try:
            tg = await stack.enter_async_context(anyio.create_task_group())
            await tg.start(self._reader.run)
        except BaseException as exc:
            await stack.__aexit__(type(exc), exc, exc.__traceback__)
            raise
        self._stack = stack

    async def exit(self) -> None:
        """Close, and leave the task group :meth:`enter` entered (the stream's ``__aexit__``)."""
        self.close()
        stack, self._stack = self._stack, None
        if stack is not None:
            # the reader never raises and is cancelled now: exit its task group as if the body had succeeded,
            # so an exception from the body (an AudioError, say) propagates as itself, not in an ExceptionGroup
            await stack.__aexit__(None, None, None)

    async def aclose(self) -> None:
        """Close and wait until the reader task has finished. Idempotent."""
        self.close()
        if self._mode is not None:
            with anyio.CancelScope(shield=True):
                await self._reader.done.wait()

    def close(self) -> None:
        """Stop the reader (its source is closed) and drop the backlog. Idempotent; returns at once."""
        if not self._closed:
            self._closed = True
            self._reader.cancel()
            self._backlog.clear()
            self._backlog_samples = 0

    @property
    def closed(self) -> bool:
        return self._closed

    def __del__(self) -> None:
        if getattr(self, "_mode", None) == "detached" and not self._closed:
            self._reader.cancel_soon()

    async def next(self, step: Callable[[], Awaitable[_T]], drop: Callable[[], None]) -> _T:
        """One ``__anext__`` of the stream: ``await step()``, by one task at a time, with the reader started
        (detached, on first use) beforehand; when ``step`` raises anything (the end included) the input is
        closed and ``drop()`` frees the stream's own buffers."""
        if self._iterating:
            err = anyio.BusyResourceError("iterating")
            err.add_note("this stream is already being iterated by another task; a stream has one consumer")
            raise err
        if self._closed:
            raise StopAsyncIteration
        self._iterating = True
        try:
            if self._mode is None:
                self._background(self._reader.run, f"aiowhisper stream reader {id(self):x}")
                self._mode = "detached"
            return await step()
        except BaseException:  # StopAsyncIteration, an error or a cancellation: the stream is over
            self.close()
            drop()
            raise
        finally:
            self._iterating = False

    # -- audio ------------------------------------------------------------------------------------------
    async def fill(self, block: bool) -> None:
        """Drain everything the reader queued into the backlog (waiting for something first if ``block``);
        nothing once the end was drained."""
        if self._ended is not False:
            return
        batch = await self._reader.take(block)
        self._backlog.extend(batch.chunks)
        self._backlog_samples += sum(c.samples.size for c in batch.chunks)
        if batch.failure is not None:
            self._ended = batch.failure
        elif batch.eof:
            self._ended = True

    @property
    def backlog_samples(self) -> int:
        """Samples drained from the reader and not yet taken."""
        return self._backlog_samples

    def take(self, max_samples: int) -> np.ndarray:
        """Up to ``max_samples`` from the backlog as one new float32 array (the rest of a chunk stays in the
        backlog). They count as queued until :meth:`consume`."""
        pieces: list[np.ndarray] = []
        n = 0
        while self._backlog and n < max_samples:
            chunk = self._backlog.popleft()
            k = min(chunk.samples.size, max_samples - n)
            if k < chunk.samples.size:
                self._backlog.appendleft(Chunk(chunk.samples[k:], chunk.t_arrival))
            pieces.append(chunk.samples[:k])
            n += k
            self._newest_t = chunk.t_arrival
        self._backlog_samples -= n
        return np.concatenate(pieces) if pieces else np.zeros(0, np.float32)

    def consume(self, n: int) -> None:
        """``n`` taken samples were used (pushed into a log-mel): a reader gated on queued audio may pull
        again."""
        self._reader.consume(n)

    @property
    def newest_t(self) -> float:
        """The ``perf_counter`` time the newest sample taken arrived (0 before any)."""
        return self._newest_t

    @property
    def ended(self) -> bool:
        """The reader's end or failure has been drained: no more audio comes after the backlog."""
        return self._ended is not False

    @property
    def failed(self) -> bool:
        """The source failed (or sent a bad chunk); :meth:`check_end` raises its error."""
        return isinstance(self._ended, BaseException)

    def check_end(self) -> None:
        """At the end of the audio: raise the source's failure, or ``RuntimeError`` when the reader was
        cancelled before the source was exhausted; return when it was."""
        if isinstance(self._ended, BaseException):
            raise self._ended
        if not self._reader.completed:
            raise RuntimeError("the stream's reader was cancelled (was the runtime closed?)")

    # -- the lag meter ----------------------------------------------------------------------------------
    def bill(self, seconds: float) -> None:
        """Compute spent outside an update (a log-mel push, say): billed to the next update."""
        self._unbilled_s += seconds

    def record(self, span_s: float, end: int, *, final: bool, skipped: int) -> float:
        """Record an update that took ``span_s`` and reaches stream sample ``end``, with ``skipped`` update
        points passed over; return its compute time (``span_s`` and everything billed since the last)."""
        compute_s = span_s + self._unbilled_s
        self._unbilled_s = 0.0
        self._compute_s += compute_s
        self._recent.append((compute_s, max(0, end - self._updated)))
        self._updated = end
        self._updates += 1
        self._finals += final
        self._skipped += skipped
        return compute_s

    @property
    def updated(self) -> int:
        """The stream sample up to which the newest update reaches."""
        return self._updated

    def recent_compute_s_per_audio_s(self) -> float:
        """Compute wall time per second of audio advanced, over the last 10 updates (0 before any)."""
        recent_a = sum(a for _, a in self._recent) / SAMPLE_RATE
        return sum(c for c, _ in self._recent) / recent_a if recent_a else 0.0

    @property
    def lag(self) -> StreamLag:
        """The stream's lag right now."""
        r = self._reader
        audio_s = r.read_samples / SAMPLE_RATE
        return StreamLag(
            audio_s=audio_s, updated_s=self._updated / SAMPLE_RATE,
            queued_audio_s=r.queued_samples / SAMPLE_RATE, max_queued_audio_s=r.max_queued_seen / SAMPLE_RATE,
            behind_s=max(0.0, audio_s - self._updated / SAMPLE_RATE), compute_s=self._compute_s,
            compute_s_per_audio_s=self._compute_s / audio_s if audio_s else 0.0,
            recent_compute_s_per_audio_s=self.recent_compute_s_per_audio_s(),
            updates=self._updates, finals=self._finals, partials_skipped=self._skipped)


async def _iterate(items: Iterable[Any]) -> AsyncIterator[Any]:
    for item in items:
        yield item


def _as_async_iterable(chunks: AsyncIterable[Any] | Iterable[Any]) -> AsyncIterable[Any]:
    if hasattr(chunks, "__aiter__"):
        return chunks  # type: ignore[return-value]
    if isinstance(chunks, np.ndarray) or not hasattr(chunks, "__iter__"):
        raise TypeError("chunks must be an async iterable of 1-D float arrays (a list of arrays works too); "
                        f"got {type(chunks).__name__} -- to stream one array, pass [audio] or slices of it")
    return _iterate(chunks)
