"""Streaming encode: ``async for upd in rt.encode_stream(chunks)`` -- low, bounded latency on audio as it arrives.

::

    async with aw.Runtime("tiny.en") as rt:
        async for upd in rt.encode_stream(mic_chunks(), update_every_s=1.0, context="full"):
            upd.window, upd.start_s, upd.end_s, upd.final
            upd.hidden_states       # float32 (positions, d_model)
            upd.latency_s, upd.lag  # newest audio -> update ready; the stream's lag (StreamLag)

or, with structured cleanup guaranteed at the end of the block (recommended)::

        async with rt.encode_stream(chunks) as s:
            async for upd in s:
                ...
            s.lag                    # live StreamLag

**Input.** ``chunks`` is an async iterable (a plain list of arrays works too) of 1-D float32/float64 mono
arrays of any length, down to one sample, at ``sample_rate`` (16 kHz by default), or of ``(array, rate)``
tuples. NaN/inf, integer dtypes, 2-D arrays and a tuple at a rate other than the declared one raise
:class:`~aiowhisper_npu.errors.AudioError` from this stream only. With ``sample_rate=44100`` (say) the
stream resamples as it goes (:class:`~aiowhisper_npu.streaming.flow.StreamResampler`, ~70 ms added latency):
the result equals resampling the whole signal at once (bit for bit with the numpy resampler, within 1e-13
with soxr), which is what ``encode(path)`` does -- not resampling each chunk on its own, which would leave
edge artifacts at every chunk boundary.

**Windows.** The stream is cut into the consecutive 30 s windows :meth:`Runtime.encode` uses. Window ``w``
covers stream seconds ``[30 w, 30 w + 30)``.

* A **final** update (``final=True``) comes once per window, as soon as its 30 s are complete, and for the
  last, partial window at end of stream. Finals are never skipped, always use the full 1500-position
  context (also under ``context="bucketed"``), and concatenated they **equal ``encode()`` of the whole audio
  bit for bit**: the log-mel comes from :class:`~aiowhisper_npu.audio.mel_stream.LogMelStream` (identical to the
  offline front end for any chunking) and goes through the same encoder
  (:meth:`Encoder.encode <aiowhisper_npu.runtime.encoder.Encoder.encode>`).
* A **partial** update (``final=False``) encodes the growing window so far, zero-padded to 30 s: it equals
  ``encode(audio[30 w : end_s])`` of the audio it covers. One comes after every ``update_every_s`` of new
  audio in the window at most (measured from the previous update of that window), only while the window is
  still open; the chunk that completes a window gets its final instead.
* ``context="bucketed"`` (partials only): encode just the first ``k * 256`` positions, the fewest 5.12 s
  buckets that hold the window's audio, ``n_ctx = min(1500, ceil(ceil(samples / 320) / 256) * 256)`` (the
  ``audio_ctx`` idea of whisper.cpp). ``hidden_states`` then has ``n_ctx`` rows. These differ from the full
  context's first rows, because attention no longer sees the padded tail; ``bench/stream_latency.py``
  measures the effect (relative L2, decoded text): when the audio nearly fills its last bucket the decoder
  may loop (the failure whisper.cpp users report for small ``audio_ctx``); ``bucket_margin_s`` asks for that
  much padded silence after the audio (e.g. 2.0). ``context="full"`` is the exact default.

**Flow control.** A reader task (:class:`~aiowhisper_npu.streaming.flow.ChunkReader`, held by the stream's
:class:`~aiowhisper_npu.streaming.input.StreamInput`) pulls chunks into a
bounded channel; encoding runs in the consumer's own task, inside ``__anext__``, so nothing is computed that
nobody asks for. Each step takes everything queued, then encodes pending finals first and then at most
one partial, of the newest audio: stale partials are coalesced, never queued (:attr:`StreamLag.partials_skipped`
counts update points passed over). Audio goes into the log-mel at most up to the end of the current window,
and no more is taken while a final is pending: the rest of a long chunk waits as queued audio, so at most
one final is ever pending, however long the chunks. While more than ``max_queued_s`` of audio is queued
(received and not yet in the log-mel), the reader stops pulling from the source: backpressure to the
producer, so memory stays bounded whatever its pace. A source's error is raised after the updates of the
audio before it. One task iterates a stream at a time; a second one gets ``anyio.BusyResourceError``.
Many streams share one runtime: the pipeline takes tiles round-robin across requests, and each stream has
at most one request in flight, so no stream starves another; outputs do not depend on the other streams.

**Lag.** Every update carries ``latency_s`` and a :class:`StreamLag` snapshot (``upd.lag``; live as
``stream.lag``): compute seconds per audio second (overall and over the last 10 updates; near 1.0 means
the stream is computing all the time and its partials are being coalesced), the audio queued in the
bounded buffer and its high-water mark, how far the newest update is behind the audio received, and the
number of coalesced update points.

**Cleanup.** Leaving ``async with``, :meth:`EncodeStream.aclose`, the end of the audio, an error, or
cancelling the consumer stops the reader, closes the source iterator (``aclose()``) and drops the stream's
buffers; the pipeline drains its in-flight tiles before a cancelled encode returns, so
``rt.buffer_pool.in_use == 0`` once idle. Under ``async with`` the reader is a child of the block's own
task group; a bare ``async for`` has no block, so its reader runs in the runtime's service host, and a
``break`` cannot be seen: the stream stops its reader when it is garbage-collected (at once in CPython) --
prefer ``async with`` or ``aclose()`` where that matters.
"""

from __future__ import annotations

import math
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, AsyncIterable, Iterable, Protocol, Self

import anyio
import numpy as np

from ..audio.io import HOP_LENGTH, N_SAMPLES, SAMPLE_RATE
from ..audio.mel_stream import LogMelStream
from ..deprecation import renamed_module_attrs
from ..models.model import ModelDimensions
from ..pipeline.stats import PipelineStats
from .input import StartBackground, StreamInput, StreamLag, maybe_in_thread

__all__ = ["StreamEncoder", "SAMPLES_PER_POSITION", "BUCKET_POSITIONS", "check_context", "context_positions",
           "StreamLag", "StreamUpdate", "EncodeStream"]

SAMPLES_PER_POSITION = 2 * HOP_LENGTH  #: 320 samples (20 ms) per encoder position
BUCKET_POSITIONS = 256  #: positions per context bucket (5.12 s)
_now = time.perf_counter


class StreamEncoder(Protocol):
    """What an encode stream needs: the model's sizes and the encoder for ready log-mel windows (the
    runtime's :class:`~aiowhisper_npu.runtime.encoder.Encoder` is one). The stream never imports the runtime."""

    @property
    def dims(self) -> ModelDimensions: ...

    async def encode(self, mels: np.ndarray, n_ctx: int | None = None) -> tuple[np.ndarray, PipelineStats]: ...


def context_positions(n_samples: int, n_audio_ctx: int = 1500, bucket: int = BUCKET_POSITIONS,
                      margin_positions: int = 0) -> int:
    """Positions a bucketed encode uses for a window holding ``n_samples``: whole buckets, at most 1500.

    ``margin_positions`` of silence are required after the audio (0: the fewest buckets that hold it).
    """
    held = max(1, -(-n_samples // SAMPLES_PER_POSITION) + margin_positions)
    return min(n_audio_ctx, -(-held // bucket) * bucket)


def check_context(context: str, bucket_margin_s: float) -> None:
    """``ValueError`` unless ``context`` is ``"full"`` or ``"bucketed"`` and ``bucket_margin_s >= 0``."""
    if context not in ("full", "bucketed"):
        raise ValueError(f"context must be 'full' or 'bucketed', got {context!r}")
    if not bucket_margin_s >= 0:
        raise ValueError(f"bucket_margin_s must be >= 0, got {bucket_margin_s!r}")


@dataclass(frozen=True, eq=False)
class StreamUpdate:
    """One encoder output of a stream (see the module docstring for final/partial/bucketed)."""

    window: int  # 30 s window index
    start_s: float  # stream seconds: 30 * window
    end_s: float  # stream seconds up to which audio is included
    hidden_states: np.ndarray  # float32 (positions, d_model): 1500 rows, or n_ctx when bucketed
    final: bool  # the window is complete (or the stream ended) and this is its exact encoding
    latency_s: float  # arrival of the newest audio included (reader clock) -> update ready
    n_ctx: int  # encoder positions computed
    audio_positions: int  # positions that hold audio: ceil(samples / 320)
    compute_s: float  # log-mel + encoder wall time for this update (includes waiting for shared tiles)
    skipped: int  # update points (every update_every_s) passed over before this update
    stats: PipelineStats  # the encoder pipeline's statistics for this update
    lag: StreamLag  # the stream's lag when this update was ready

    @property
    def positions(self) -> int:
        return int(self.hidden_states.shape[0])


@dataclass(eq=False)
class _PendingFinal:
    window: int
    mel: np.ndarray
    n_samples: int
    t_arrival: float


class EncodeStream:
    """An async iterator of :class:`StreamUpdate` and an async context manager (``rt.encode_stream(...)``).

    Args:
        encoder: the encoder (an open runtime's :class:`~aiowhisper_npu.runtime.encoder.Encoder`).
        chunks: an async iterable of 1-D float arrays (any length, down to one sample) at ``sample_rate``,
            or of ``(array, rate)`` tuples. The stream owns the iterator and closes it when done.
        background: starts the reader of a bare ``async for`` stream in the runtime's service host.
        update_every_s: audio seconds between partial updates of a window (``math.inf``: finals only).
        context: ``"full"`` (exact, default) or ``"bucketed"`` (partials encode only k*256 positions).
        bucket_margin_s: with ``"bucketed"``, padded seconds kept after the audio (0: fewest buckets).
        sample_rate: the rate of the chunks; other than 16000, they are resampled as a stream
            (:class:`~aiowhisper_npu.streaming.flow.StreamResampler`: equal to resampling the whole signal, not
            to resampling chunk by chunk).
        max_queued_s: undrained audio at which the reader stops pulling from the source.
        max_queued_chunks: capacity of the reader's channel, in chunks.

    Raises (from iteration): :class:`~aiowhisper_npu.errors.AudioError` for a bad chunk (NaN/inf, integer
    dtype, 2-D, a tuple at another rate), or whatever the source raised; the stream is then closed.
    """

    def __init__(self, encoder: StreamEncoder, chunks: AsyncIterable[Any] | Iterable[Any], *,
                 background: StartBackground, update_every_s: float = 1.0, context: str = "full",
                 bucket_margin_s: float = 0.0, sample_rate: int = SAMPLE_RATE, max_queued_s: float = 5.0,
                 max_queued_chunks: int = 1024) -> None:
        dims = encoder.dims
        check_context(context, bucket_margin_s)
        if not update_every_s > 0:
            raise ValueError(f"update_every_s must be > 0, got {update_every_s!r}")
        self._input = StreamInput(chunks, background=background, sample_rate=sample_rate,
                                  max_queued_s=max_queued_s, max_queued_chunks=max_queued_chunks)
        self._encoder = encoder
        self.context = context
        self.update_every_s = float(update_every_s)
        self._step = max(1, round(update_every_s * SAMPLE_RATE)) if math.isfinite(update_every_s) else None
        self._n_audio_ctx = dims.n_audio_ctx
        self._margin = math.ceil(bucket_margin_s * SAMPLE_RATE / SAMPLES_PER_POSITION)  # positions
        self._mel: LogMelStream | None = LogMelStream(dims.n_mels)
        self._finals: deque[_PendingFinal] = deque()
        self._eof = False
        self._last = (0, 0)  # (window, samples in it) of the newest update

    # -- lifecycle --------------------------------------------------------------------------------------
    async def __aenter__(self) -> Self:
        await self._input.enter()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        self._drop()
        await self._input.exit()

    async def aclose(self) -> None:
        """Stop the stream and wait until its reader task has finished. Idempotent."""
        self._drop()
        await self._input.aclose()

    def _drop(self) -> None:
        self._input.close()
        self._mel = None
        self._finals.clear()

    @property
    def pending_finals(self) -> int:
        """Completed windows whose final update is not yet emitted (at most one)."""
        return len(self._finals)

    @property
    def lag(self) -> StreamLag:
        """The stream's lag right now."""
        return self._input.lag

    # -- iteration --------------------------------------------------------------------------------------
    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> StreamUpdate:
        return await self._input.next(self._next, self._drop)

    async def _next(self) -> StreamUpdate:
        while True:
            if not self._finals:  # a pending final is emitted before any more audio is taken
                await self._take(block=False)
            if self._input.closed:  # aclose() from another task
                raise StopAsyncIteration
            if self._finals:
                pf = self._finals.popleft()
                return await self._emit(pf.window, pf.n_samples, pf.t_arrival, final=True, mel=pf.mel)
            mel = self._mel
            assert mel is not None
            if self._eof:
                return await self._flush(mel)
            n = mel.current.n_samples
            if self._step is not None and n - self._last_samples(mel.window_index) >= self._step:
                return await self._emit(mel.window_index, n, self._input.newest_t, final=False)
            await self._take(block=True)

    async def _take(self, block: bool) -> None:
        """Move audio into the log-mel, at most up to the end of the current window (a completed window
        becomes the pending final); drain the reader's channel first when nothing is held. Raises the
        reader's failure once everything before it has been pushed and emitted."""
        if self._eof:
            return
        inp = self._input
        if not inp.backlog_samples:
            await inp.fill(block)
        mel = self._mel
        if mel is None:  # closed meanwhile
            raise StopAsyncIteration
        if inp.backlog_samples:
            await self._push(mel)
        if inp.backlog_samples or self._finals or not inp.ended:
            return
        inp.check_end()
        self._eof = True

    async def _push(self, mel: LogMelStream) -> None:
        x = self._input.take(N_SAMPLES - mel.current.n_samples)  # up to the end of the current window
        t_last = self._input.newest_t
        window = mel.window_index
        t0 = _now()
        done = await maybe_in_thread(mel.push, x)
        self._input.bill(_now() - t0)
        self._input.consume(x.size)
        for k, window_mel in enumerate(done):  # at most one: the push stops at the window's end
            self._finals.append(_PendingFinal(window + k, window_mel, N_SAMPLES, t_last))

    async def _flush(self, mel: LogMelStream) -> StreamUpdate:
        n, w = mel.current.n_samples, mel.window_index
        if n == 0:
            raise StopAsyncIteration
        t0 = _now()
        window_mel = await anyio.to_thread.run_sync(mel.finish)
        self._input.bill(_now() - t0)
        return await self._emit(w, n, self._input.newest_t, final=True, mel=window_mel)

    def _last_samples(self, window: int) -> int:
        return self._last[1] if self._last[0] == window else 0

    async def _emit(self, window: int, n: int, t_arrival: float, *, final: bool,
                    mel: np.ndarray | None = None) -> StreamUpdate:
        """Encode one window's log-mel (a snapshot of the growing window if ``mel`` is None)."""
        t0 = _now()
        if mel is None:
            if self._mel is None:
                raise StopAsyncIteration
            mel = await anyio.to_thread.run_sync(self._mel.snapshot)
            assert mel is not None  # a partial holds audio
        n_ctx = self._n_audio_ctx
        if not final and self.context == "bucketed":
            n_ctx = context_positions(n, self._n_audio_ctx, margin_positions=self._margin)
        hidden, stats = await self._encoder.encode(mel[None], None if n_ctx >= self._n_audio_ctx else n_ctx)
        t1 = _now()
        points = (n - self._last_samples(window)) // self._step if self._step else 0
        skipped = max(0, points - 1)
        compute_s = self._input.record(t1 - t0, window * N_SAMPLES + n, final=final, skipped=skipped)
        self._last = (window, n)
        return StreamUpdate(
            window=window, start_s=window * N_SAMPLES / SAMPLE_RATE, end_s=self._input.updated / SAMPLE_RATE,
            hidden_states=hidden[0], final=final, latency_s=t1 - t_arrival, n_ctx=n_ctx,
            audio_positions=-(-n // SAMPLES_PER_POSITION), compute_s=compute_s, skipped=skipped, stats=stats,
            lag=self.lag)


__getattr__ = renamed_module_attrs(__name__, {"AudioStream": "EncodeStream"})
