"""The runtime's speech-to-text service: the decoder prepared once, its engine thread, and the seek loop
run for each ``transcribe()`` call.

:class:`TranscriptionService` belongs to one open :class:`~.runtime.Runtime`. The decoder weights are
prepared, and the :class:`~aiowhisper_npu.decoder.engine.DecoderEngine` thread started, on the first
transcription (an encode-only user pays nothing); :meth:`TranscriptionService.aclose` stops the engine,
cancelling whatever still runs, and joins its threads.
"""

from __future__ import annotations

import os
from dataclasses import fields, replace
from typing import Any, AsyncGenerator

import anyio
import numpy as np

from ..audio.io import load_audio, validate_audio
from ..decoder.engine import DecoderEngine
from ..decoder.kernels import prepare_decoder
from ..decoder.tokenizer import Tokenizer
from ..deprecation import renamed_module_attrs
from ..errors import ModelError
from ..models.model import WhisperModel
from ..transcription.options import TranscriptionOptions
from ..transcription.results import Segment, TranscriptionInfo, TranscriptionResult
from ..transcription.seek import Transcription
from .encoder import Encoder
from .host import NOT_OPEN
from .recognizer import Recognizer

__all__ = ["TranscriptionService", "SegmentStream", "load_samples", "make_options"]


async def load_samples(audio: Any) -> np.ndarray:
    """The audio edge of the runtime: a path (read in a worker thread) or 16 kHz mono float samples, as
    validated float32 samples (:class:`~aiowhisper_npu.errors.AudioError` otherwise)."""
    if isinstance(audio, (str, os.PathLike)):
        return await anyio.to_thread.run_sync(load_audio, audio)
    return validate_audio(audio)


class TranscriptionService:
    """Lazily builds the :class:`~.recognizer.Recognizer` of a runtime (see the module docstring).

    Args:
        model: the runtime's model (it must have a decoder and ``tokenizer.json``).
        encoder: the runtime's encoder.
        max_tasks, max_rows: the engine's admission bounds.
        threads: the engine's threads (2 splits the large products of a step over two cores).
        precision: the decoder's numerics, ``"fp32"`` or ``"bf16"`` (docs/precision.md).
    """

    def __init__(self, model: WhisperModel, encoder: Encoder, *, max_tasks: int = 32,
                 max_rows: int = 96, threads: int = 2, precision: str = "fp32"):
        self._model = model
        self._precision = precision
        self._encoder = encoder
        self._engine_options: dict[str, Any] = dict(max_tasks=max_tasks, max_rows=max_rows, threads=threads)
        self._recognizer: Recognizer | None = None
        self._engine: DecoderEngine | None = None
        self._lock = anyio.Lock()
        self._closed = False

    @property
    def engine(self) -> DecoderEngine | None:
        """The decoder engine, once the first transcription started it."""
        return self._engine

    async def recognizer(self) -> Recognizer:
        """The recognizer, built on first use."""
        async with self._lock:
            if self._closed:
                raise RuntimeError(NOT_OPEN)
            if self._recognizer is None:  # a cancellation waits for the build and arrives after it is kept
                self._recognizer = await anyio.to_thread.run_sync(self._build)
        return self._recognizer

    def _build(self) -> Recognizer:  # in a worker thread: reads files, folds weights
        m = self._model
        if m.decoder is None:
            raise ModelError(f"{m.name!r} has no decoder weights, so it cannot transcribe (only encode)")
        tokenizer = Tokenizer.for_model(m.path, m.dims.n_vocab)
        decoder = prepare_decoder(m.decoder, m.dims, self._precision)
        engine = DecoderEngine(decoder, **self._engine_options)
        engine.start()
        self._engine = engine
        return Recognizer(self._encoder, engine, tokenizer, m.alignment_heads)

    async def aclose(self) -> None:
        """Stop the engine (cancelling its tasks) and join its threads. Idempotent. Shielded as a whole: the
        runtime's host calls it while its own scope is being cancelled, where an unshielded wait for the lock
        would be cancelled before the engine is stopped (and its threads would outlive the runtime)."""
        with anyio.CancelScope(shield=True):
            async with self._lock:
                self._closed = True
                engine, self._engine = self._engine, None
                self._recognizer = None
            if engine is not None:
                await anyio.to_thread.run_sync(engine.stop)

    async def start(self, audio: Any, options: TranscriptionOptions) -> Transcription:
        """Load and validate the audio, compute its features and settle the language (see
        :meth:`Transcription.start`); ``options`` were checked by :func:`make_options`."""
        recognizer = await self.recognizer()
        samples = await load_samples(audio)
        return await Transcription.start(recognizer, samples, options)

    async def transcribe(self, audio: Any, options: TranscriptionOptions) -> TranscriptionResult:
        """Every segment of ``audio`` and the transcription's info."""
        transcription = await self.start(audio, options)
        segments = [s async for s in transcription.segments()]
        return TranscriptionResult(segments, transcription.info)


def make_options(options: TranscriptionOptions | None, overrides: dict[str, Any]) -> TranscriptionOptions:
    """``options`` (default: faster-whisper's defaults) with keyword ``overrides`` (faster-whisper's names)."""
    base = options if options is not None else TranscriptionOptions()
    if not isinstance(base, TranscriptionOptions):
        raise TypeError(f"options must be TranscriptionOptions, got {type(base).__name__}")
    if not overrides:
        return base
    unknown = sorted(set(overrides) - {f.name for f in fields(TranscriptionOptions)})
    if unknown:
        raise TypeError(f"unknown transcription option(s): {', '.join(unknown)}")
    return replace(base, **overrides)


class SegmentStream:
    """``rt.transcribe_iter(audio, ...)``: segments as each window is decoded.

    Iterate it with ``async for`` (optionally inside ``async with``, which closes it on exit). :attr:`info`
    (language, its probability, duration) is set once the first segment arrives, or the iteration ends.
    Breaking out early and closing (:meth:`aclose`) stop the decoding and release every window.
    """

    def __init__(self, service: TranscriptionService, audio: Any, options: TranscriptionOptions):
        self._service = service
        self._audio = audio
        self._options = options
        self.info: TranscriptionInfo | None = None
        self._segments: AsyncGenerator[Segment, None] | None = None
        self._closed = False

    async def __aenter__(self) -> SegmentStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def __aiter__(self) -> SegmentStream:
        return self

    async def __anext__(self) -> Segment:
        if self._closed:
            raise StopAsyncIteration
        if self._segments is None:
            transcription = await self._service.start(self._audio, self._options)
            self._audio = None
            self.info = transcription.info
            self._segments = transcription.segments()
        try:
            return await self._segments.__anext__()
        except StopAsyncIteration:
            await self.aclose()
            raise

    async def aclose(self) -> None:
        """Stop decoding and release everything (idempotent)."""
        self._closed = True
        segments, self._segments = self._segments, None
        if segments is not None:
            with anyio.CancelScope(shield=True):
                await segments.aclose()


__getattr__ = renamed_module_attrs(__name__, {"TranscriptionStream": "SegmentStream"})
