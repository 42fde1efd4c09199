"""The public async runtime: ``async with Runtime(model) as rt: out = await rt.encode(audio)``.

It opens the layers and wires them together once: a model and its :class:`~.plan.EncoderProgram` loaded on
a device, a :class:`~.pool.BufferPool` with one buffer set per in-flight tile, a :class:`~.pipeline.Pipeline`,
the :class:`~.encoder.Encoder` that runs windows on it, and the :class:`~.transcriber.TranscriptionService`
that builds the :class:`~.recognizer.Recognizer` (the decoder engine) on the first transcription. The
drivers get only what they need: the encode stream the encoder, the seek loop and the caption stream the
recognizer. Audio and options are checked here, at the API edge.

**Threads and loops.** Everything the runtime owns (device, pool, the pipeline's stage tasks and lane
threads, detached stream readers) lives in a :class:`~.host.ServiceHost` task of its own, not in the task
that opened the runtime: ``aclose()`` is safe from any task and at any nesting, and the task that opened
the runtime may end before it. A runtime serves only the event loop it was opened in: a call from another
loop or thread raises ``RuntimeError`` at once (use :class:`~.sync.SyncRuntime`, ``Runtime.sync(...)``,
from other threads).
"""

from __future__ import annotations

import os
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import Any, AsyncIterable, Awaitable, Callable, ClassVar, Union

import anyio
import numpy as np

from ..audio.io import SAMPLE_RATE
from ..audio.mel import log_mel_windows
from ..decoder.engine import EngineStats
from ..deprecation import warn_renamed
from ..devices import make_device
from ..encoder.kernels import PRECISIONS
from ..encoder.plan import DEFAULT_TILE_ROWS, EncoderPlan, EncoderProgram
from ..models.loading import load_model
from ..models.model import ModelDimensions, WhisperModel
from ..pipeline.pipeline import Pipeline
from ..pipeline.pool import BufferPool
from ..pipeline.stats import PipelineStats, StatsRecorder
from ..streaming.captions import CaptionStream
from ..streaming.stream import EncodeStream
from ..tiles import Device, slot_nbytes
from ..transcription.options import TranscriptionOptions
from ..transcription.results import TranscriptionResult
from .encoder import Encoder
from .host import NOT_OPEN, ServiceHost
from .recognizer import Recognizer
from .transcriber import SegmentStream, TranscriptionService, load_samples, make_options

__all__ = ["AudioInput", "CPU_TILE_ROWS", "EncoderOutput", "Runtime"]

# Chosen by measurement on a 2-core machine (bench/latency.py, README "Performance"): 4 row tiles per
# window keep two single-threaded BLAS lanes balanced and the GEMMs large.
CPU_TILE_ROWS = 375

AudioInput = Union[np.ndarray, str, "os.PathLike[str]"]


@dataclass(frozen=True, eq=False)
class EncoderOutput:
    """What :meth:`Runtime.encode` returns."""

    hidden_states: np.ndarray  # float32 (n_windows, positions, d_model)
    stats: PipelineStats
    audio_s: float  # seconds of audio encoded

    @property
    def windows(self) -> int:
        return int(self.hidden_states.shape[0])


class Runtime:
    """Whisper on one device: encoding, transcription and streams. Use it as ``async with Runtime(...) as rt``.

    Args:
        model: a :class:`WhisperModel`, a known name (``"tiny.en"``, ``"base"``) or a model directory.
        backend: ``"cpu"`` (default), ``"sim"`` (the simulated NPU) or ``"xrt"`` (a real NPU via pyxrt).
        pipeline_depth: the most tiles in flight; 1 is the fully serial baseline.
        lanes: parallel kernel workers (NPU columns; CPU kernel threads). Default: 2 on the CPU (or the
            core count if smaller), 1 on NPU backends.
        tile_rows: encoder positions per tile. Default: ``CPU_TILE_ROWS`` (375) on the CPU, 64 elsewhere.
        zero_copy: stage tile inputs directly in device memory when the device allows it.
        max_active_jobs: windows that may hold device tensors at once (bounds memory).
        reuse_buffers: keep one buffer set per slot (False: fresh buffers per tile, the naive baseline).
        dma_batch: move up to this many prepared tiles to the device in one transfer.
        device: a ready-made :class:`Device` instead of ``backend``.
        precision: ``"fp32"`` (default, the reference) or ``"bf16"``: every matrix product on bf16 operands
            with fp32 accumulation, the simulated NPU's numerics (docs/precision.md). It applies to the CPU
            encoder and to the decoder on every backend; on an NPU backend the encoder's precision is the
            one its kernels (xclbin) declare.
        **backend_options: passed to the backend's device (e.g. ``manifest=`` for xrt/sim).
    """

    def __init__(self, model: WhisperModel | str | os.PathLike[str] = "tiny.en", *, backend: str = "cpu",
                 pipeline_depth: int = 4, lanes: int | None = None, tile_rows: int | None = None,
                 zero_copy: bool = False, max_active_jobs: int = 8, reuse_buffers: bool = True,
                 dma_batch: int = 1,
                 device: Device | None = None, precision: str = "fp32", **backend_options: Any):
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        if pipeline_depth < 1:
            raise ValueError(f"pipeline_depth must be >= 1, got {pipeline_depth}")
        on_cpu = (device.name if device is not None else backend) == "cpu"
        if lanes is None:
            lanes = device.lanes if device is not None else (min(2, os.cpu_count() or 1) if on_cpu else 1)
        if tile_rows is None:
            tile_rows = CPU_TILE_ROWS if on_cpu else DEFAULT_TILE_ROWS
        if lanes < 1:
            raise ValueError(f"lanes must be >= 1, got {lanes}")
        if tile_rows < 1:
            raise ValueError(f"tile_rows must be >= 1, got {tile_rows}")
        self._model_arg = model
        self.backend = backend if device is None else device.name
        self.pipeline_depth = pipeline_depth
        self.lanes = lanes
        self.tile_rows = tile_rows
        self.zero_copy = zero_copy
        self.max_active_jobs = max_active_jobs
        self.reuse_buffers = reuse_buffers
        self.dma_batch = dma_batch
        self.precision = precision
        self._device_arg = device
        self._backend_options = backend_options
        self._host: ServiceHost | None = None  # owns everything below while open (see the module docstring)
        self._pipeline: Pipeline | None = None
        self._pool: BufferPool | None = None
        self._encoder: Encoder | None = None
        self._transcription: TranscriptionService | None = None
        self.model: WhisperModel | None = model if isinstance(model, WhisperModel) else None
        self.device: Device | None = None

    #: ``Runtime.sync(model, **options)``: a blocking facade on a runtime of its own event-loop thread,
    #: ``with Runtime.sync("base") as rt: rt.encode(...)``, safe from any thread. It is
    #: :class:`~aiowhisper_npu.runtime.sync.SyncRuntime`, which sets this attribute (so this module does
    #: not import the facade built on it).
    sync: ClassVar[Callable[..., Any]]

    # -- lifecycle ------------------------------------------------------------------------------------
    async def __aenter__(self) -> Runtime:
        if self._host is not None and not self._host.stopped:
            raise RuntimeError("Runtime is already open")
        host = self._host = ServiceHost(f"aiowhisper runtime {id(self):x}")
        try:
            await host.open(self._setup)
        except BaseException:
            self._host = None
            raise
        return self

    async def _setup(self, stack: AsyncExitStack) -> None:
        """Open everything the runtime owns, in the host task; ``stack`` releases it in reverse order.

        A further owned service goes here too: a resource as ``stack.callback(close)`` (or
        ``push_async_callback``; shield any awaiting cleanup), a long-lived task or thread as
        ``await tg.start(service)`` in a task group entered with ``stack.enter_async_context``. Whatever
        is entered last is stopped first by :meth:`aclose`.
        """
        model = self.model
        if model is None:
            model = self.model = await anyio.to_thread.run_sync(load_model, self._model_arg)
        device = self._device_arg or make_device(self.backend, lanes=self.lanes, **self._backend_options)
        stack.callback(device.close)
        program = EncoderProgram(model, self.tile_rows, self.precision if device.name == "cpu" else "fp32")
        await anyio.to_thread.run_sync(device.load, program)
        self.device = device
        ins, outs = slot_nbytes(EncoderPlan(model.dims, self.tile_rows).tiles)
        pool = BufferPool(device, ins, outs, self.pipeline_depth, zero_copy=self.zero_copy,
                          reuse=self.reuse_buffers)
        stack.callback(pool.close)
        pipeline = Pipeline(device, pool, lanes=self.lanes, max_active_jobs=self.max_active_jobs,
                            dma_batch=self.dma_batch)  # refuses more lanes than the device has
        tg = await stack.enter_async_context(anyio.create_task_group())
        await tg.start(pipeline.serve)
        self._pool = pool
        self._pipeline = pipeline
        assert self._host is not None
        encoder = self._encoder = Encoder(pipeline, model.dims, self.tile_rows, self._host)
        service = TranscriptionService(model, encoder, precision=self.precision)
        stack.push_async_callback(service.aclose)  # stopped before the pipeline: no decoding is left waiting
        self._transcription = service

    async def __aexit__(self, *exc: object) -> None:
        # Nothing of the runtime's is entered in the caller's task, so the body's exception (or
        # cancellation) has nothing to be passed to here: it propagates unchanged once aclose() returns.
        await self.aclose()

    async def aclose(self) -> None:
        """Stop the pipeline, free every buffer and release the device. Idempotent; safe from any task of the
        runtime's event loop, at any nesting. Raises the error of a runtime service that failed, if any."""
        host = self._host
        if host is None:
            return
        if host.stopped:  # already closed, or its event loop has ended: nothing left to wait for
            self._host = self._pipeline = self._encoder = None
            host.raise_error()
            return
        self._check_loop("aclose")
        self._pipeline = self._encoder = None
        try:
            await host.close()
        finally:
            if host.stopped and self._host is host:
                self._host = None

    # -- introspection --------------------------------------------------------------------------------
    @property
    def buffer_pool(self) -> BufferPool:
        if self._pool is None:
            raise RuntimeError("Runtime is not open")
        return self._pool

    @property
    def stats(self) -> PipelineStats:
        """Cumulative statistics since the runtime opened (timeline bounded to the last 50,000 events)."""
        if self._pipeline is None:
            return PipelineStats()
        return self._pipeline.stats.snapshot()

    @property
    def encoder(self) -> Encoder:
        """The open runtime's encoder (its plans by context length, and :meth:`Encoder.encode`)."""
        return self._require_open()

    @property
    def dims(self) -> ModelDimensions:
        """The open model's sizes."""
        return self._require_open().dims

    def start_background(self, fn: Callable[[], Awaitable[None]], name: str) -> None:
        """Run ``fn()`` in the runtime's service host until it returns or the runtime closes."""
        self._require_open("start_background")
        assert self._host is not None
        self._host.start_soon(fn, name)

    def _check_loop(self, what: str) -> None:
        if self._host is not None:
            self._host.check_loop(what)

    def _require_open(self, what: str | None = None) -> Encoder:
        """The open runtime's encoder; with ``what`` (an async entry point), also check the caller's event
        loop."""
        if what is not None:
            self._check_loop(what)
        host = self._host
        if self._encoder is None or host is None or not host.serving:
            raise RuntimeError(NOT_OPEN)
        return self._encoder

    # -- encoding -------------------------------------------------------------------------------------
    async def encode(self, audio: AudioInput) -> EncoderOutput:
        """Encode 16 kHz mono float audio (or an audio file) into hidden states, one row per 30 s window."""
        encoder = self._require_open("encode")
        samples = await load_samples(audio)
        mels = await anyio.to_thread.run_sync(log_mel_windows, samples, encoder.dims.n_mels)
        out, stats = await encoder.encode(mels)
        return EncoderOutput(out, stats, samples.size / SAMPLE_RATE)

    async def encode_mels(self, mels: np.ndarray, n_ctx: int | None = None,
                          recorder: StatsRecorder | None = None) -> tuple[np.ndarray, PipelineStats]:
        """Encode ready log-mel windows ``(n_windows, n_mels, 3000)``; ``n_ctx`` limits the positions
        (:meth:`Encoder.encode <aiowhisper_npu.runtime.encoder.Encoder.encode>`)."""
        return await self._require_open("encode_mels").encode(mels, n_ctx, recorder)

    # -- transcription --------------------------------------------------------------------------------
    def _service(self, what: str) -> TranscriptionService:
        self._require_open(what)
        assert self._transcription is not None
        return self._transcription

    async def transcribe(self, audio: AudioInput, *, options: TranscriptionOptions | None = None,
                         **overrides: Any) -> TranscriptionResult:
        """Transcribe (or translate) speech: what :meth:`encode` takes, a float array or an audio file.

        Options are faster-whisper's ``WhisperModel.transcribe`` options, with its names and defaults
        (``language=None``, ``task="transcribe"``, ``beam_size=5``, ``best_of=5``,
        ``temperature=(0.0, 0.2, ..., 1.0)``, ``word_timestamps=False``, ``initial_prompt``, ...; see
        :class:`~aiowhisper_npu.TranscriptionOptions`), as keywords or as one ``options=`` object.
        Windows are encoded by the tile pipeline and decoded by the shared decoder engine, batched with
        every other call on this runtime. Cancelling the call releases its windows and caches.

        Returns a :class:`~aiowhisper_npu.TranscriptionResult`: ``.text``, ``.language``,
        ``.language_probability``, ``.duration``, ``.segments`` and ``.info``.
        """
        return await self._service("transcribe").transcribe(audio, make_options(options, overrides))

    def transcribe_iter(self, audio: AudioInput, *, options: TranscriptionOptions | None = None,
                        **overrides: Any) -> SegmentStream:
        """Like :meth:`transcribe`, but yields the segments as each window is decoded
        (``async for segment in rt.transcribe_iter(audio)``); ``.info`` is set with the first segment."""
        return SegmentStream(self._service("transcribe_iter"), audio, make_options(options, overrides))

    async def recognizer(self) -> Recognizer:
        """The runtime's :class:`~aiowhisper_npu.transcription.protocol.WindowRecognizer` (its encoder and the
        shared decoder engine), built on first use: what the seek loop and the caption stream run on."""
        return await self._service("recognizer").recognizer()

    def decoder_stats(self) -> EngineStats:
        """The decoder engine's counters (all zero before the first transcription)."""
        engine = self._service("decoder_stats").engine
        return engine.stats() if engine is not None else EngineStats(0, 0, 0, 0, 0, 0, 0.0, 0, 0, 0)

    # -- streams ------------------------------------------------------------------------------------------
    def encode_stream(self, chunks: AsyncIterable[np.ndarray], **options: Any) -> EncodeStream:
        """Encode an async stream of audio chunks as it arrives (see :mod:`aiowhisper_npu.streaming.stream`)."""
        return EncodeStream(self.encoder, chunks, background=self.start_background, **options)

    def captions(self, chunks: AsyncIterable[np.ndarray], **options: Any) -> CaptionStream:
        """Live captions of an async stream of audio chunks: committed and tentative text as it arrives, used
        like :meth:`encode_stream` (see :mod:`aiowhisper_npu.streaming.captions` for the options)."""
        service = self._service("captions")
        return CaptionStream(service.recognizer, chunks, background=self.start_background, **options)

    def stream(self, chunks: AsyncIterable[np.ndarray], **options: Any) -> EncodeStream:
        """Deprecated name of :meth:`encode_stream`."""
        warn_renamed("Runtime.stream()", "Runtime.encode_stream()")
        return self.encode_stream(chunks, **options)

    def transcribe_stream(self, chunks: AsyncIterable[np.ndarray], **options: Any) -> CaptionStream:
        """Deprecated name of :meth:`captions`."""
        warn_renamed("Runtime.transcribe_stream()", "Runtime.captions()")
        return self.captions(chunks, **options)
