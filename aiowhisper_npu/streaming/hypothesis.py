"""One hypothesis of a caption buffer: its encoded window decoded into timed words.

:func:`decode_buffer` turns the encoded window of the audio buffer (full or bucketed context) into the words
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
tokens (fast speech is ~4 words, ~6 tokens with timestamps, a second), so a loop costs a bounded time. The
window stays open: the caller, which encoded it, closes it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from ..decoder.options import MAX_LENGTH, GenerationOptions
from ..decoder.tokenizer import Tokenizer
from ..transcription.fallback import average_logprob, build_prompt, compression_ratio
from ..transcription.protocol import Window, WindowRecognizer
from ..transcription.segmentation import split_by_timestamps
from ..transcription.timing import add_word_timestamps, words_from_alignment
from .agreement import TimedWord

__all__ = ["DecodeSettings", "Hypothesis", "decode_buffer"]

_FRAMES_PER_POSITION = 2  # mel frames per encoder position
_HOP = 160  # samples per mel frame


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


async def decode_buffer(decoder: WindowRecognizer, tokenizer: Tokenizer, window: Window, n_samples: int,
                        offset_s: float, previous_text: str, settings: DecodeSettings,
                        draft: Sequence[int] = ()) -> Hypothesis:
    """Decode ``window``, the encoded buffer of ``n_samples`` that starts at stream second ``offset_s``;
    ``previous_text`` (the committed text before the buffer) is the prompt. A greedy decoding verifies
    ``draft`` (a guess of its tokens) in its first pass."""
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


async def _timed_words(decoder: WindowRecognizer, tokenizer: Tokenizer, window: Window, tokens: list[int],
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
