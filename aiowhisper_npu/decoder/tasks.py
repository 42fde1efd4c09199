"""The alignment pass of word timestamps as a task for the :class:`~.engine.DecoderEngine` (generations and
language detection are in :mod:`.generation`): one prefill pass, batched with whatever else runs.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from ..models.model import ModelDimensions
from .alignment import align_from_scores, alignment_tokens
from .cache import CrossCache, KVCache
from .kernels import Pass, PassOutput
from .options import AlignmentResult
from .tokenizer import Tokenizer

__all__ = ["AlignmentTask", "new_cache"]


def new_cache(cross: CrossCache, dims: ModelDimensions) -> KVCache:
    """An empty self-attention cache for one group decoding against ``cross``."""
    return KVCache(cross, dims.n_text_layer, dims.n_text_head, dims.text_head_dim, dims.n_text_ctx)


class _OnePass:
    """A task of a single prefill pass."""

    rows = 1

    def __init__(self, cache: KVCache, tokens: Sequence[int], logits_at: Sequence[int],
                 cross_heads: Sequence[tuple[int, int]] = ()):
        self._pass: Pass | None = Pass(cache, np.asarray([list(tokens)], np.int64), logits_at, cross_heads)
        self._cache = cache
        self._output: PassOutput | None = None

    def next_pass(self) -> Pass | None:
        p, self._pass = self._pass, None
        return p

    def feed(self, output: PassOutput) -> None:
        self._output = output

    def close(self) -> None:
        self._cache.release()
        self._pass = None


class AlignmentTask(_OnePass):
    """The alignment pass of one text: ``start_sequence + <|notimestamps|> + text + <|endoftext|>`` with the
    alignment heads' cross-attention scores and every position's logits, turned into an
    :class:`~.options.AlignmentResult` as CTranslate2's ``align`` does (see :mod:`.alignment`)."""

    def __init__(self, cross: CrossCache, tokenizer: Tokenizer, dims: ModelDimensions, start_sequence: Sequence[int],
                 text_tokens: Sequence[int], num_frames: int, median_filter_width: int,
                 heads: Sequence[tuple[int, int]]):
        tokens = alignment_tokens(start_sequence, text_tokens, tokenizer.no_timestamps, tokenizer.eot)
        start = len(start_sequence)  # the logits at start .. start + len(text) - 1 predict the text tokens
        super().__init__(new_cache(cross, dims), tokens, range(start, start + len(text_tokens)), heads)
        self._start = start
        self._text = list(text_tokens)
        self._num_frames = num_frames
        self._width = median_filter_width
        self._eot = tokenizer.eot

    def result(self) -> AlignmentResult:
        assert self._output is not None and self._output.cross_qk is not None
        return align_from_scores(self._output.cross_qk, self._output.logits[0], self._start, self._text, self._eot,
                                 self._num_frames, self._width)
