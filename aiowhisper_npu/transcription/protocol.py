"""The seam between the drivers and the machinery that encodes and decodes: :class:`WindowRecognizer`.

The seek loop (:mod:`.seek`) and the caption stream (:mod:`aiowhisper_npu.streaming.captions`) are written
against this protocol only. The runtime's :class:`~aiowhisper_npu.runtime.recognizer.Recognizer` (encoder
pipeline + batched decoder engine) is one; in the tests, one over CTranslate2 is another (which proves the
seek loop itself keeps faster-whisper's semantics exactly).
"""

from __future__ import annotations

from typing import Protocol, Sequence

import numpy as np

from ..decoder.options import AlignmentResult, GenerationOptions, GenerationResult
from ..decoder.tokenizer import Tokenizer
from ..models.model import ModelDimensions

__all__ = ["Window", "WindowRecognizer"]


class Window(Protocol):
    """One encoded 30 s window (opaque); the decoder's per-window state (cross-attention keys and values)."""

    def close(self) -> None:
        """Free the window's memory. Idempotent; the window cannot be used afterwards."""
        ...


class WindowRecognizer(Protocol):
    """Encode log-mel windows and run the text decoder against them."""

    @property
    def dims(self) -> ModelDimensions: ...

    @property
    def tokenizer(self) -> Tokenizer:
        """The model's tokenizer (task ``"transcribe"``, language unset on multilingual models)."""
        ...

    async def encode(self, mel: np.ndarray, n_ctx: int | None = None) -> Window:
        """Encode one window: ``mel`` is ``(n_mels, 3000)`` float32, already padded or trimmed; ``n_ctx``
        encodes only the first positions (a bucketed context; ``None``: all of them)."""
        ...

    async def generate(self, window: Window, prompt: Sequence[int], options: GenerationOptions,
                       draft: Sequence[int] = ()) -> GenerationResult:
        """Decode from ``prompt`` (which holds ``<|startoftranscript|>``) against ``window``. A greedy
        decoding may verify ``draft`` (a guess of its tokens) in its first pass: the result is the same."""
        ...

    async def detect_language(self, window: Window) -> list[tuple[str, float]]:
        """Every language code of the vocabulary with its probability at ``<|startoftranscript|>``, most
        probable first (multilingual models only)."""
        ...

    async def align(self, window: Window, start_sequence: Sequence[int], text_tokens: Sequence[Sequence[int]],
                    num_frames: int, median_filter_width: int = 7) -> list[AlignmentResult]:
        """Word-timing alignments of ``text_tokens`` (one per text), as CTranslate2's ``Whisper.align``:
        the alignment heads' cross-attention over the first ``num_frames // 2`` positions, softmax,
        normalised per head, median-filtered, averaged, and the DTW path through it."""
        ...
