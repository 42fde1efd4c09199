"""The input side of a stream: a bounded reader task, chunk validation and streaming resampling.

:class:`ChunkReader` is the only task a stream runs. It pulls chunks from the user's async iterable,
validates (and resamples) them, and sends them through a bounded anyio memory object stream to the consumer
side (:class:`~aiowhisper_npu.streaming.input.StreamInput`), which drains everything queued at once. Two bounds apply:

* **audio**: before pulling the next chunk the reader waits while more than ``max_queued_samples`` of audio
  are queued: received but not yet consumed (:meth:`ChunkReader.consume`), whether still in the channel or
  already drained into the consumer's hands. That is the backpressure to the producer: its ``__anext__`` is
  simply not called. Queued audio therefore stays below ``max_queued_samples`` plus one chunk;
* **items**: the channel holds at most ``max_queued_chunks`` items, which bounds memory for floods of tiny
  chunks.

The reader never raises into its task group: a bad chunk or a failing source becomes a :class:`Failure`
item, delivered to the consumer after the chunks before it. That includes the source's own
``BrokenResourceError``/``ClosedResourceError`` (what anyio's TCP streams raise on a reset; only the
reader's own channel being closed means the consumer has gone), and a cancellation exception the source
raised while nothing cancelled the reader (it awaited a future some library cancelled, say), which fails
the stream as a ``RuntimeError`` with that exception as its cause instead of cancelling its task group.

:class:`StreamResampler` resamples a chunked stream with :func:`~aiowhisper_npu.audio.io.resample` by
overlap-save on a grid aligned to the rate ratio, so chunk boundaries leave no edge artifacts.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from dataclasses import dataclass
from typing import Any, AsyncIterable, AsyncIterator

import anyio
import numpy as np
from anyio.abc import TaskStatus

from ..audio.io import SAMPLE_RATE, resample, validate_audio
from ..errors import AudioError

__all__ = ["Chunk", "Failure", "Batch", "ChunkReader", "StreamResampler"]

_now = time.perf_counter


@dataclass(frozen=True, eq=False)
class Chunk:
    """Validated 16 kHz float32 samples and the ``perf_counter`` time the reader received them."""

    samples: np.ndarray
    t_arrival: float


@dataclass(frozen=True, eq=False)
class Failure:
    """The source failed, or a chunk was bad: the consumer raises ``error``."""

    error: Exception


_Item = Chunk | Failure


@dataclass(frozen=True, eq=False)
class Batch:
    """Everything drained from the channel in one go."""

    chunks: list[Chunk]
    failure: Exception | None
    eof: bool  # the reader finished: source exhausted, failed, or cancelled


class StreamResampler:
    """Resample a stream pushed in chunks of any size; equal to resampling the whole signal at once.

    Output sample ``n`` sits at input time ``n * orig_sr / target_sr`` and depends on the input within the
    filter's reach. Each :meth:`push` resamples, with :func:`~aiowhisper_npu.audio.io.resample`, a segment that
    starts ``margin_s`` before the first output still owed, at an input index that is a multiple of the
    rate ratio's denominator (so the segment's outputs fall on the whole signal's output grid), and keeps the
    outputs whose input lies at least ``margin_s`` before the newest sample. With the numpy resampler the
    result is bit-identical to ``resample(whole_signal)``; with soxr it agrees to about 1e-13 (soxr's
    filter does not reach past the margin by more than rounding). It is **not** the same as resampling each
    chunk on its own, which would zero-pad every chunk edge (and round every chunk's length).

    Latency: outputs are held back until ``margin_s`` of later input exists and at least ``min_block_s``
    of output is ready (default 20 ms + 50 ms). :meth:`flush` emits the rest, zero-padded at the end like
    the one-shot resampler.
    """

    def __init__(self, orig_sr: int, target_sr: int = SAMPLE_RATE, *, margin_s: float = 0.02,
                 min_block_s: float = 0.05) -> None:
        if orig_sr <= 0 or target_sr <= 0:
            raise AudioError(f"sample rates must be positive, got {orig_sr} -> {target_sr}")
        g = math.gcd(orig_sr, target_sr)
        self.orig_sr, self.target_sr = orig_sr, target_sr
        self._up, self._down = target_sr // g, orig_sr // g
        self._margin = math.ceil(margin_s * orig_sr / self._down) * self._down  # input samples
        self._min_block = max(1, int(min_block_s * target_sr))
        self._buf = np.zeros(0, np.float32)
        self._base = 0  # input index of _buf[0] (a multiple of _down)
        self._total = 0  # input samples pushed
        self._out = 0  # output samples emitted

    def push(self, x: np.ndarray) -> np.ndarray:
        """Add input samples; return the output samples that are now final (possibly none)."""
        self._buf = np.concatenate([self._buf, np.asarray(x, np.float32)])
        self._total += x.size
        ready = max(0, (self._total - self._margin) * self._up // self._down)
        if ready - self._out < self._min_block:
            return np.zeros(0, np.float32)
        return self._emit(ready)

    def flush(self) -> np.ndarray:
        """End of input: the remaining outputs (total length ``round(n_in * target / orig)``)."""
        total_out = (2 * self._total * self._up + self._down) // (2 * self._down)
        if total_out <= self._out:
            return np.zeros(0, np.float32)
        return self._emit(total_out)

    def _segment_start(self) -> int:
        pos = self._out * self._down // self._up  # input index at (or just before) the next output
        return max(self._base, (pos - self._margin) // self._down * self._down, 0)

    def _emit(self, stop: int) -> np.ndarray:
        start = self._segment_start()
        y = resample(self._buf[start - self._base :], self.orig_sr, self.target_sr)
        first = start // self._down * self._up  # output index of y[0]
        out = np.ascontiguousarray(y[self._out - first : stop - first], dtype=np.float32)
        if out.size != stop - self._out:
            raise AssertionError("resampler segment too short")  # pragma: no cover - arithmetic guard
        self._out = stop
        keep = self._segment_start()
        self._buf, self._base = self._buf[keep - self._base :], keep
        return out


class ChunkReader:
    """Pulls a source's chunks into a bounded channel; run it with ``task_group.start(reader.run)``.

    Chunks are 1-D float arrays (float32 or float64) at ``sample_rate`` Hz, or ``(array, rate)`` tuples
    whose rate must equal ``sample_rate``. Empty float chunks are skipped. Anything else -- NaN/inf, integer
    dtype, 2-D, a tuple at another rate -- becomes an :class:`~aiowhisper_npu.errors.AudioError` for this
    stream. When ``sample_rate`` is not 16 kHz the reader resamples with a :class:`StreamResampler`.
    """

    def __init__(self, source: AsyncIterable[Any], *, sample_rate: int, max_queued_samples: int,
                 max_queued_chunks: int) -> None:
        self._source = source
        self.sample_rate = sample_rate
        self.max_queued_samples = max_queued_samples
        self._send, self._recv = anyio.create_memory_object_stream[_Item](max_queued_chunks)
        self._resampler = StreamResampler(sample_rate) if sample_rate != SAMPLE_RATE else None
        self.read_samples = 0  # 16 kHz samples sent into the channel
        self.taken_samples = 0  # ... and consumed (see consume())
        self.max_queued_seen = 0
        self.completed = False  # the source was exhausted (not failed, not cancelled)
        self.done = anyio.Event()  # set when run() has returned
        self._space = anyio.Event()
        self._scope: anyio.CancelScope | None = None
        self._cancel_requested = False
        self._thread: int | None = None

    @property
    def queued_samples(self) -> int:
        """Samples received from the source and not yet consumed (in the channel or drained, held)."""
        return self.read_samples - self.taken_samples

    # -- reader task ------------------------------------------------------------------------------------
    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """The reader task. Never raises (except cancellation of an enclosing scope)."""
        self._thread = threading.get_ident()
        try:
            with anyio.CancelScope() as scope:
                self._scope = scope
                if self._cancel_requested:
                    scope.cancel()
                task_status.started()
                async with self._send:
                    await self._pump()
        finally:
            self.done.set()

    async def _pump(self) -> None:
        iterator: AsyncIterator[Any] | None = None
        try:
            iterator = self._source.__aiter__()
            index = 0
            while True:
                while self.queued_samples > self.max_queued_samples:
                    await self._space.wait()
                try:
                    chunk = await iterator.__anext__()
                except StopAsyncIteration:
                    break
                except anyio.get_cancelled_exc_class() as exc:
                    if _cancelled():
                        raise
                    raise _StrayCancellation(exc) from exc
                t = _now()
                await self._send_samples(self._convert(chunk, index), t)
                index += 1
            if self._resampler is not None:
                await self._send_samples(self._resampler.flush(), _now())
            self.completed = True
        except _ConsumerGone:
            pass
        except _StrayCancellation as stray:
            await self._fail(RuntimeError(
                f"the stream's source raised {type(stray.cause).__name__} while the stream was not cancelled "
                "(did it await something another task cancelled?)"), stray.cause)
        except Exception as exc:
            await self._fail(exc)
        finally:
            if iterator is not None:
                await _aclose_quietly(iterator)

    async def _fail(self, error: Exception, cause: BaseException | None = None) -> None:
        if cause is not None:
            error.__cause__ = cause
        try:
            await self._send.send(Failure(error))
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
            pass  # the consumer has gone: nobody is left to tell

    async def _send_samples(self, x: np.ndarray, t: float) -> None:
        if x.size:
            try:
                await self._send.send(Chunk(x, t))
            except (anyio.BrokenResourceError, anyio.ClosedResourceError) as exc:
                raise _ConsumerGone from exc  # our own channel: the consumer closed the stream
            self.read_samples += x.size
            self.max_queued_seen = max(self.max_queued_seen, self.queued_samples)

    def _convert(self, chunk: Any, index: int) -> np.ndarray:
        name = f"stream chunk {index}"
        if isinstance(chunk, tuple):
            if len(chunk) != 2:
                raise AudioError(f"{name}: expected an array or an (array, sample_rate) tuple")
            chunk, rate = chunk
            if rate != self.sample_rate:
                raise AudioError(f"{name}: is at {rate} Hz but the stream was declared at {self.sample_rate} Hz; "
                                 f"pass sample_rate={rate} to rt.encode_stream() (or rt.captions()) to have it "
                                 "resampled")
        if isinstance(chunk, np.ndarray) and chunk.ndim == 1 and chunk.size == 0 and chunk.dtype.kind == "f":
            return np.zeros(0, np.float32)
        x = validate_audio(chunk, name=name)
        return self._resampler.push(x) if self._resampler is not None else x

    # -- consumer side ----------------------------------------------------------------------------------
    async def take(self, block: bool) -> Batch:
        """Drain every queued item (waiting for one first if ``block``). Draining is not consuming: the
        drained audio counts as queued until :meth:`consume` says it was used."""
        items: list[_Item] = []
        eof = False
        if block:
            try:
                items.append(await self._recv.receive())
            except (anyio.EndOfStream, anyio.ClosedResourceError):
                eof = True
        while not eof:
            try:
                items.append(self._recv.receive_nowait())
            except anyio.WouldBlock:
                break
            except (anyio.EndOfStream, anyio.ClosedResourceError):
                eof = True
        chunks = [i for i in items if isinstance(i, Chunk)]
        failure = next((i.error for i in items if isinstance(i, Failure)), None)
        return Batch(chunks, failure, eof)

    def consume(self, n: int) -> None:
        """``n`` drained samples were used (pushed into the log-mel): wake a reader gated on queued audio."""
        if n:
            self.taken_samples += n
            self._space.set()
            self._space = anyio.Event()

    def cancel(self) -> None:
        """Stop the reader (from the event loop's thread; safe before it started and after it ended)."""
        self._cancel_requested = True
        self._recv.close()
        if self._scope is not None:
            self._scope.cancel()

    def cancel_soon(self) -> None:
        """Best-effort :meth:`cancel` from a finalizer: acts only on the loop's thread (else a no-op)."""
        if self._thread is None or self._thread == threading.get_ident():
            try:
                self.cancel()
            except Exception:  # pragma: no cover - finalizer during interpreter shutdown
                pass


class _ConsumerGone(Exception):
    """The reader's own channel is closed: the consumer closed the stream."""


class _StrayCancellation(Exception):
    """The source raised a cancellation exception that no cancellation of the reader explains."""

    def __init__(self, cause: BaseException):
        super().__init__(repr(cause))
        self.cause = cause


def _cancelled() -> bool:
    """Whether the calling task is being cancelled: a cancelled enclosing scope (anyio, on any loop), or a
    pending ``Task.cancel()`` (asyncio). A future cancelled by someone else is neither."""
    if anyio.current_effective_deadline() == -math.inf:
        return True
    try:
        task = asyncio.current_task()
    except RuntimeError:  # not asyncio: trio raises Cancelled only for a cancelled scope
        return False
    cancelling = getattr(task, "cancelling", None)  # Python 3.11+
    return cancelling is not None and cancelling() > 0


async def _aclose_quietly(iterator: AsyncIterator[Any]) -> None:
    """Close the source iterator (an async generator's ``finally`` runs), shielded, at most 5 s."""
    aclose = getattr(iterator, "aclose", None)
    if aclose is None:
        return
    with anyio.move_on_after(5.0, shield=True):
        try:
            await aclose()
        except Exception:
            pass
