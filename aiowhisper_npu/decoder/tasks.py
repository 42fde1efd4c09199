"""Decoding tasks for the :class:`~.engine.DecoderEngine` besides generation: language detection and the
alignment pass of word timestamps. Each is one prefill pass; the engine batches it with whatever else runs.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from ..models.model import ModelDimensions
from .alignment import align_from_scores, alignment_tokens
from .cache import CrossCache, KVCache
from .kernels import Pass, PassOutput, PreparedDecoder
from .options import AlignmentResult, GenerationOptions
from .tokenizer import Tokenizer

__all__ = ["LanguageTask", "AlignmentTask", "make_generation", "new_cache"]


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


class LanguageTask(_OnePass):
    """CTranslate2's ``detect_language``: the logits after ``<|startoftranscript|>``, softmax over the language
    tokens only; the result is ``[(code, probability), ...]``, most probable first."""

    def __init__(self, cross: CrossCache, tokenizer: Tokenizer, dims: ModelDimensions):
        if not tokenizer.multilingual:
            raise ValueError("language detection needs a multilingual model")
        super().__init__(new_cache(cross, dims), [tokenizer.sot], (-1,))
        self._tokenizer = tokenizer

    def result(self) -> list[tuple[str, float]]:
        assert self._output is not None
        ids = np.asarray(self._tokenizer.language_tokens)
        lang = self._output.logits[0, 0, ids].astype(np.float64)
        p = np.exp(lang - lang.max())
        p /= p.sum()
        order = np.argsort(-p, kind="stable")
        codes = self._tokenizer.language_codes
        return [(codes[i], float(p[i])) for i in order]


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


def make_generation(decoder: PreparedDecoder, cross: CrossCache, tokenizer: Tokenizer, prompt: Sequence[int],
                    options: GenerationOptions) -> Any:
    """A generation task (see :mod:`.generation`) for the engine."""
    from .generation import Generation

    return Generation(decoder, cross, tokenizer, prompt, options)
