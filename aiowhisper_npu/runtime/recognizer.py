"""The runtime's :class:`~aiowhisper_npu.transcription.backend.WindowDecoder`: windows are encoded by the tile
pipeline, their cross-attention keys and values computed in a worker thread, and every decoding task runs
on the shared, batching :class:`~aiowhisper_npu.decoder.engine.DecoderEngine`.

:func:`run_task` is the asyncio/trio side of the engine: it submits a task, waits on the caller's own
event loop for the engine's answer (posted from the engine thread without blocking it), and on cancellation
cancels the task and waits, shielded, until the engine has released its caches. So a cancelled
``transcribe()`` leaves no cache and no task behind.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Sequence

import anyio
import numpy as np

from ..decoder.cache import CrossCache
from ..decoder.engine import DecoderEngine, Task
from ..decoder.kernels import PreparedDecoder, cross_cache
from ..decoder.options import AlignmentResult, GenerationOptions, GenerationResult
from ..decoder.generation import Generation, LanguageDetection
from ..decoder.tasks import AlignmentTask
from ..decoder.tokenizer import Tokenizer
from ..models.model import ModelDimensions
from ..pipeline.lanes import loop_poster

__all__ = ["run_task", "EncodedWindow", "Recognizer"]

EncodeMels = Callable[[np.ndarray], Awaitable[np.ndarray]]


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


class Recognizer:
    """A :class:`~aiowhisper_npu.transcription.backend.WindowDecoder` over an encoder and a decoder engine.

    Args:
        encode_mels: encodes one ``(n_mels, 3000)`` window into ``(positions, d_audio)`` hidden states
            (the runtime's pipeline).
        decoder: the prepared decoder weights; ``engine`` runs on them.
        tokenizer: the model's tokenizer.
        alignment_heads: the model's ``(layer, head)`` pairs for word timing.
    """

    def __init__(self, encode_mels: EncodeMels, decoder: PreparedDecoder, engine: DecoderEngine,
                 tokenizer: Tokenizer, alignment_heads: Sequence[tuple[int, int]]):
        self._encode_mels = encode_mels
        self._decoder = decoder
        self._engine = engine
        self._tokenizer = tokenizer
        self._heads = tuple(alignment_heads)

    @property
    def dims(self) -> ModelDimensions:
        return self._decoder.dims

    @property
    def tokenizer(self) -> Tokenizer:
        return self._tokenizer

    async def encode(self, mel: np.ndarray) -> EncodedWindow:
        return await self.encode_hidden(await self._encode_mels(mel))

    async def encode_hidden(self, hidden: np.ndarray) -> EncodedWindow:
        """A window from encoder output ``(positions, d_audio)`` that is already computed (any number of
        positions: a bucketed encode of a short buffer works too)."""
        cross = await anyio.to_thread.run_sync(cross_cache, self._decoder, hidden)
        return EncodedWindow(cross)

    async def generate(self, window: EncodedWindow, prompt: Sequence[int], options: GenerationOptions,
                       draft: Sequence[int] = ()) -> GenerationResult:
        """One generation; a greedy one verifies ``draft`` (its guess of the tokens) in its first pass
        (see :mod:`aiowhisper_npu.decoder.generation`)."""
        task = Generation(self._decoder, window.require(), self._tokenizer, prompt, options, draft)
        return await run_task(self._engine, task)  # type: ignore[no-any-return]

    async def detect_language(self, window: EncodedWindow) -> list[tuple[str, float]]:
        task = LanguageDetection(self._decoder, window.require(), self._tokenizer)
        return await run_task(self._engine, task)  # type: ignore[no-any-return]

    async def align(self, window: EncodedWindow, start_sequence: Sequence[int],
                    text_tokens: Sequence[Sequence[int]], num_frames: int,
                    median_filter_width: int = 7) -> list[AlignmentResult]:
        cross = window.require()
        results: list[AlignmentResult | None] = [None] * len(text_tokens)

        async def one(i: int, text: Sequence[int]) -> None:  # all texts of the window in the same batches
            task = AlignmentTask(cross, self._tokenizer, self._decoder.dims, start_sequence, text, num_frames,
                                 median_filter_width, self._heads)
            results[i] = await run_task(self._engine, task)

        async with anyio.create_task_group() as tg:
            for i, text in enumerate(text_tokens):
                tg.start_soon(one, i, text)
        return [r for r in results if r is not None]
