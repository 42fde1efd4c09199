"""One hypothesis of a caption buffer: its encoder output decoded into timed words.

:func:`decode_buffer` turns the encoder output of the audio buffer (full or bucketed context) into the words
Whisper hears in it, in stream seconds, with faster-whisper's machinery: the prompt is ``<|startofprev|>`` +
the committed text before the buffer + the start sequence (:func:`~aiowhisper_npu.transcription.fallback.build_prompt`);
one decoding with timestamps at temperature 0 (greedy by default); the tokens cut into Whisper's segments at
their timestamps (:func:`~aiowhisper_npu.transcription.segmentation.split_by_timestamps`, with a closing timestamp
added when the text runs to the buffer's end); the text aligned for word times
(:func:`~aiowhisper_npu.transcription.timing.add_word_timestamps`).

A buffer is **silent** (no words) when the no-speech probability exceeds ``no_speech_threshold`` and the
average log probability is below ``log_prob_threshold`` (faster-whisper's rule for skipping a window), or the
no-speech probability alone exceeds ``no_speech_strict``; its text is **unreliable** (no words either) when it
compresses too well (a repetition loop). A decoding generates at most ``tokens_base + tokens_per_s * seconds``
tokens (fast speech is ~4 words, ~6 tokens with timestamps, a second), so a loop costs a bounded time. The window's cross-attention cache is released before returning,
also on errors and cancellation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, Sequence

import numpy as np

from ..decoder.options import MAX_LENGTH, AlignmentResult, GenerationOptions, GenerationResult
from ..decoder.tokenizer import Tokenizer
from ..models.model import ModelDimensions
from ..transcription.backend import Window
from ..transcription.fallback import average_logprob, build_prompt, compression_ratio
from ..transcription.segmentation import split_by_timestamps
from ..transcription.timing import add_word_timestamps, words_from_alignment
from .agreement import TimedWord

__all__ = ["CaptionDecoder", "DecodeSettings", "Hypothesis", "decode_buffer"]

_FRAMES_PER_POSITION = 2  # mel frames per encoder position
_HOP = 160  # samples per mel frame


class CaptionDecoder(Protocol):
    """What the captions need from the decoder side (the runtime's
    :class:`~aiowhisper_npu.runtime.recognizer.Recognizer` is one)."""

    @property
    def dims(self) -> ModelDimensions: ...

    @property
    def tokenizer(self) -> Tokenizer: ...

    async def encode_hidden(self, hidden: np.ndarray) -> Window: ...

    async def generate(self, window: Window, prompt: Sequence[int], options: GenerationOptions,
                       draft: Sequence[int] = ()) -> GenerationResult: ...

    async def detect_language(self, window: Window) -> list[tuple[str, float]]: ...

    async def align(self, window: Window, start_sequence: Sequence[int], text_tokens: Sequence[Sequence[int]],
                    num_frames: int, median_filter_width: int = 7) -> list[AlignmentResult]: ...


@dataclass(frozen=True)
class DecodeSettings:
    """How a buffer is decoded (see the module docstring)."""

    beam_size: int = 1
    no_speech_threshold: float = 0.6
    log_prob_threshold: float = -1.0
    no_speech_strict: float = 0.9
    compression_ratio_threshold: float = 2.4
    tokens_base: int = 16  # new tokens at most: tokens_base + tokens_per_s * buffer seconds (bounds a loop)
    tokens_per_s: float = 8.0
    suppress_tokens: tuple[int, ...] = ()
    prepend_punctuations: str = "\"'“¿([{-"
    append_punctuations: str = "\"'.。,，!！?？:：”)]}、"


@dataclass(frozen=True)
class Hypothesis:
    """What one decoding of the buffer heard: ``words`` in stream seconds (empty when silent or unreliable)."""

    words: tuple[TimedWord, ...]
    no_speech_prob: float
    avg_logprob: float
    silent: bool
    unreliable: bool
    tokens: int  # tokens generated
    ids: tuple[int, ...] = ()  # the tokens generated (the next decoding's draft)
    draft_accepted: int = 0  # draft tokens this decoding confirmed in its first pass


async def decode_buffer(decoder: CaptionDecoder, tokenizer: Tokenizer, hidden: np.ndarray, n_samples: int,
                        offset_s: float, previous_text: str, settings: DecodeSettings,
                        draft: Sequence[int] = ()) -> Hypothesis:
    """Decode the encoder output ``hidden`` of a buffer of ``n_samples`` that starts at stream second
    ``offset_s``; ``previous_text`` (the committed text before the buffer) is the prompt. A greedy decoding
    verifies ``draft`` (a guess of its tokens) in its first pass."""
    window = await decoder.encode_hidden(hidden)
    try:
        previous = tokenizer.encode(" " + previous_text.strip()) if previous_text.strip() else []
        prompt = build_prompt(tokenizer, previous, without_timestamps=False)
        new_tokens = settings.tokens_base + round(settings.tokens_per_s * n_samples / 16000)
        max_length = min(MAX_LENGTH, max(2 * new_tokens, len(prompt) + new_tokens))
        options = GenerationOptions(beam_size=settings.beam_size, max_length=max_length,
                                    suppress_tokens=settings.suppress_tokens, return_no_speech_prob=True)
        result = await decoder.generate(window, prompt, options, draft)
        tokens = list(result.sequences_ids[0]) if result.sequences_ids else []
        ids, accepted = tuple(tokens), result.draft_accepted
        nsp = float(result.no_speech_prob)
        logprob = average_logprob(result, options.length_penalty) if result.scores else -np.inf
        silent = (nsp > settings.no_speech_threshold and logprob < settings.log_prob_threshold) or \
            nsp > settings.no_speech_strict
        text = tokenizer.decode([t for t in tokens if t < tokenizer.eot]).strip()
        unreliable = bool(text) and compression_ratio(text) > settings.compression_ratio_threshold
        if silent or unreliable or not text:
            return Hypothesis((), nsp, logprob, silent, unreliable, len(tokens), ids, accepted)
        words = await _timed_words(decoder, tokenizer, window, tokens, n_samples, settings)
        shifted = tuple(TimedWord(offset_s + w.start, offset_s + w.end, w.text, w.segment_end) for w in words)
        return Hypothesis(shifted, nsp, logprob, False, False, len(tokens), ids, accepted)
    finally:
        window.close()


async def _timed_words(decoder: CaptionDecoder, tokenizer: Tokenizer, window: Window, tokens: list[int],
                       n_samples: int, settings: DecodeSettings) -> list[TimedWord]:
    begin = tokenizer.timestamp_begin
    frames = max(1, -(-n_samples // _HOP))
    if tokens[-1] < begin:  # the text runs to the buffer's end: close it there, so no text is dropped
        tokens = tokens + [begin + min(1500, -(-frames // _FRAMES_PER_POSITION))]
    split = split_by_timestamps(tokenizer, tokens, 0.0, frames, frames / 100, 0)
    text = [t for s in split.segments for t in s.tokens if t < tokenizer.eot]
    if not text:
        return []
    [alignment] = await decoder.align(window, tokenizer.sot_sequence, [text], frames, 7)
    aligned = words_from_alignment(tokenizer, text, alignment)
    add_word_timestamps(split.segments, tokenizer, aligned, settings.prepend_punctuations,
                        settings.append_punctuations, 0.0)
    out: list[TimedWord] = []
    for segment in split.segments:
        for i, w in enumerate(segment.words):
            out.append(TimedWord(float(w.start), float(w.end), w.word, i == len(segment.words) - 1))
    return out
