"""The runtime's :class:`~aiowhisper_npu.transcription.protocol.WindowRecognizer`: windows are encoded by the
runtime's :class:`~.encoder.Encoder` (the tile pipeline), their cross-attention keys and values computed in a
worker thread, and every decoding task runs on the shared, batching
:class:`~aiowhisper_npu.decoder.engine.DecoderEngine`.

:func:`run_task` is the asyncio/trio side of the engine: it submits a task, waits on the caller's own
event loop for the engine's answer (posted from the engine thread without blocking it), and on cancellation
cancels the task and waits, shielded, until the engine has released its caches. So a cancelled
``transcribe()`` leaves no cache and no task behind.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import anyio
import numpy as np

from ..decoder.cache import CrossCache
from ..decoder.engine import DecoderEngine, Task
from ..decoder.generation import Generation, LanguageDetection
from ..decoder.kernels import cross_cache
from ..decoder.options import AlignmentResult, GenerationOptions, GenerationResult
from ..decoder.tasks import AlignmentTask
from ..decoder.tokenizer import Tokenizer
from ..models.model import ModelDimensions
from ..pipeline.lanes import loop_poster
from ..transcription.protocol import Window
from .encoder import Encoder

__all__ = ["run_task", "EncodedWindow", "Recognizer"]


async def run_task(engine: DecoderEngine, task: Task) -> Any:
    """Run ``task`` on ``engine`` and return its result; cancellation releases it before returning."""
    post = loop_poster()
    done = anyio.Event()
    box: list[Any] = [None, None]

    def finished(result: Any, error: BaseException | None) -> None:  # on the engine thread
        box[0], box[1] = result, error
        post(done.set)

    ticket = engine.submit(task, finished)
    try:
        await done.wait()
    except BaseException:
        engine.cancel(ticket)
        with anyio.CancelScope(shield=True):
            await done.wait()
        raise
    if box[1] is not None:
        raise box[1]
    return box[0]


@dataclass(eq=False)
class EncodedWindow:
    """One encoded window: its cross-attention cache (``None`` once closed)."""

    cross: CrossCache | None

    def close(self) -> None:
        self.cross = None

    def require(self) -> CrossCache:
        if self.cross is None:
            raise RuntimeError("this window was closed")
        return self.cross


def _cross(window: Window) -> CrossCache:
    if not isinstance(window, EncodedWindow):
        raise TypeError(f"not a window of this recognizer: {type(window).__name__}")
    return window.require()


class Recognizer:
    """A :class:`~aiowhisper_npu.transcription.protocol.WindowRecognizer` over an encoder and a decoder engine.

    Args:
        encoder: the runtime's encoder (the tile pipeline).
        engine: the running decoder engine; its prepared decoder weights are the ones decoded with.
        tokenizer: the model's tokenizer.
        alignment_heads: the model's ``(layer, head)`` pairs for word timing.
    """

    def __init__(self, encoder: Encoder, engine: DecoderEngine, tokenizer: Tokenizer,
                 alignment_heads: Sequence[tuple[int, int]]):
        self._encoder = encoder
        self._decoder = engine.decoder
        self._engine = engine
        self._tokenizer = tokenizer
        self._heads = tuple(alignment_heads)

    @property
    def dims(self) -> ModelDimensions:
        return self._decoder.dims

    @property
    def tokenizer(self) -> Tokenizer:
        return self._tokenizer

    async def encode(self, mel: np.ndarray, n_ctx: int | None = None) -> EncodedWindow:
        """Encode one ``(n_mels, 3000)`` window (its first ``n_ctx`` positions: a bucketed context; ``None``:
        all) and compute its cross-attention cache in a worker thread."""
        hidden, _ = await self._encoder.encode(mel[None], n_ctx)
        cross = await anyio.to_thread.run_sync(cross_cache, self._decoder, hidden[0])
        return EncodedWindow(cross)

    async def generate(self, window: Window, prompt: Sequence[int], options: GenerationOptions,
                       draft: Sequence[int] = ()) -> GenerationResult:
        """One generation; a greedy one verifies ``draft`` (its guess of the tokens) in its first pass
        (see :mod:`aiowhisper_npu.decoder.generation`)."""
        task = Generation(self._decoder, _cross(window), self._tokenizer, prompt, options, draft)
        return await run_task(self._engine, task)

    async def detect_language(self, window: Window) -> list[tuple[str, float]]:
        task = LanguageDetection(self._decoder, _cross(window), self._tokenizer)
        return await run_task(self._engine, task)

    async def align(self, window: Window, start_sequence: Sequence[int],
                    text_tokens: Sequence[Sequence[int]], num_frames: int,
                    median_filter_width: int = 7) -> list[AlignmentResult]:
        cross = _cross(window)
        results: list[AlignmentResult | None] = [None] * len(text_tokens)

        async def one(i: int, text: Sequence[int]) -> None:  # all texts of the window in the same batches
            task = AlignmentTask(cross, self._tokenizer, self._decoder.dims, start_sequence, text, num_frames,
                                 median_filter_width, self._heads)
            results[i] = await run_task(self._engine, task)

        async with anyio.create_task_group() as tg:
            for i, text in enumerate(text_tokens):
                tg.start_soon(one, i, text)
        return [r for r in results if r is not None]
