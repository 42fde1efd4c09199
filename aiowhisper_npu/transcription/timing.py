"""Word timestamps of one window's segments from its alignment (faster-whisper's ``find_alignment``
post-processing and ``add_word_timestamps``).

1. :func:`words_from_alignment`: the text tokens are split into words (:meth:`Tokenizer.split_to_word_tokens`);
   a word starts where the DTW path first reaches its first token and ends where it first reaches the next
   word's; its probability is the mean of its tokens'.
2. :func:`add_word_timestamps`: long words at sentence ends are cut to twice the median word duration
   (median capped at 0.7 s), punctuation is merged into the neighbouring word
   (:func:`merge_punctuations`), the words are dealt out to the segments by token count, and the first
   words after a pause and the segments' ends are reconciled with the segment timestamps.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from ..decoder.options import AlignmentResult
from ..decoder.tokenizer import Tokenizer
from .segmentation import SegmentDraft, TimedWord

__all__ = ["AlignedWord", "words_from_alignment", "merge_punctuations", "add_word_timestamps", "last_end",
           "TOKENS_PER_SECOND", "SENTENCE_END_MARKS"]

#: Encoder positions per second (the DTW's time unit is one position, 20 ms).
TOKENS_PER_SECOND = 50
SENTENCE_END_MARKS = ".。!！?？"


@dataclass
class AlignedWord:
    """A word of the aligned text: its tokens, its start and end relative to the window, its probability."""

    word: str
    tokens: list[int]
    start: float
    end: float
    probability: float


def words_from_alignment(tokenizer: Tokenizer, text_tokens: Sequence[int],
                         alignment: AlignmentResult) -> list[AlignedWord]:
    """The words of ``text_tokens`` with their times (seconds from the window's start), from ``alignment``."""
    words, word_tokens = tokenizer.split_to_word_tokens([*text_tokens, tokenizer.eot])
    if len(word_tokens) <= 1:
        return []
    text_indices = np.array([p[0] for p in alignment.alignments], np.int64)
    time_indices = np.array([p[1] for p in alignment.alignments], np.int64)
    boundaries = np.pad(np.cumsum([len(t) for t in word_tokens[:-1]]), (1, 0))
    jumps = np.pad(np.diff(text_indices), (1, 0), constant_values=1).astype(bool)
    jump_times = time_indices[jumps] / TOKENS_PER_SECOND
    rows = int(boundaries[-1]) + 1
    if jump_times.size < rows:
        # The path stops where it reaches the first frame: with fewer frames than tokens, the first rows are
        # never reached (faster-whisper fails on an IndexError there); they are put at the window's start.
        jump_times = np.concatenate([np.zeros(rows - jump_times.size), jump_times])
    probs = alignment.text_token_probs
    out = []
    for word, tokens, i, j in zip(words, word_tokens, boundaries[:-1], boundaries[1:]):
        out.append(AlignedWord(word, list(tokens), jump_times[i], jump_times[j], float(np.mean(probs[i:j]))))
    return out


def merge_punctuations(words: list[AlignedWord], prepended: str, appended: str) -> None:
    """Attach opening punctuation (a word ``" ("``) to the word after it and closing punctuation to the word
    before it, in place; the emptied word keeps its place with ``word == ""`` and no tokens."""
    i, j = len(words) - 2, len(words) - 1
    while i >= 0:
        previous, following = words[i], words[j]
        if previous.word.startswith(" ") and previous.word.strip() in prepended:
            following.word = previous.word + following.word
            following.tokens = previous.tokens + following.tokens
            previous.word, previous.tokens = "", []
        else:
            j = i
        i -= 1
    i, j = 0, 1
    while j < len(words):
        previous, following = words[i], words[j]
        if not previous.word.endswith(" ") and following.word in appended:
            previous.word = previous.word + following.word
            previous.tokens = previous.tokens + following.tokens
            following.word, following.tokens = "", []
        else:
            i = j
        j += 1


def _median_and_max(words: list[AlignedWord]) -> tuple[float, float]:
    durations = np.array([w.end - w.start for w in words])
    durations = durations[durations.nonzero()]
    median = min(0.7, float(np.median(durations) if len(durations) > 0 else 0.0))
    return median, median * 2


def _cut_sentence_ends(words: list[AlignedWord], max_duration: float) -> None:
    """Keep words at sentence boundaries within ``max_duration``."""
    for i in range(1, len(words)):
        if words[i].end - words[i].start > max_duration:
            if words[i].word in SENTENCE_END_MARKS:
                words[i].end = words[i].start + max_duration
            elif words[i - 1].word in SENTENCE_END_MARKS:
                words[i].start = words[i].end - max_duration


def _round(x: float) -> float:
    return float(np.round(np.float64(x), 2))


def add_word_timestamps(segments: list[SegmentDraft], tokenizer: Tokenizer, aligned: list[AlignedWord],
                        prepend_punctuations: str, append_punctuations: str, last_speech_timestamp: float) -> float:
    """Give each segment of one window its words (see the module docstring), from ``aligned`` (the window's
    text aligned by :func:`words_from_alignment`, all segments' text tokens in order); segment starts and
    ends may move to their words'. Returns the end of the last speech."""
    if not segments:
        return last_speech_timestamp
    median_duration, max_duration = _median_and_max(aligned)
    if aligned and any(w.end - w.start for w in aligned):
        _cut_sentence_ends(aligned, max_duration)
    merge_punctuations(aligned, prepend_punctuations, append_punctuations)
    time_offset = segments[0].seek / 100
    index = 0
    for segment in segments:
        n_text = sum(1 for t in segment.tokens if t < tokenizer.eot)
        saved = 0
        words: list[TimedWord] = []
        while index < len(aligned) and saved < n_text:
            timing = aligned[index]
            if timing.word:
                words.append(TimedWord(timing.word, _round(time_offset + timing.start),
                                       _round(time_offset + timing.end), float(timing.probability)))
            saved += len(timing.tokens)
            index += 1
        if words:
            last_speech_timestamp = _reconcile(segment, words, median_duration, max_duration, last_speech_timestamp)
        segment.words = words
    return last_speech_timestamp


def _reconcile(segment: SegmentDraft, words: list[TimedWord], median_duration: float, max_duration: float,
               last_speech_timestamp: float) -> float:
    """The boundary hacks of faster-whisper: shorten the first words after a pause, and prefer the segment's
    own timestamps when its first or last word is implausibly long; returns the segment's (new) end."""
    first = words[0]
    if first.end - last_speech_timestamp > median_duration * 4 and (
        first.end - first.start > max_duration
        or (len(words) > 1 and words[1].end - first.start > max_duration * 2)
    ):
        if len(words) > 1 and words[1].end - words[1].start > max_duration:
            boundary = max(words[1].end / 2, words[1].end - max_duration)
            first.end = words[1].start = boundary
        first.start = max(0, first.end - max_duration)
    if segment.start < first.end and segment.start - 0.5 > first.start:
        first.start = max(0, min(first.end - median_duration, segment.start))
    else:
        segment.start = first.start
    last = words[-1]
    if segment.end > last.start and segment.end + 0.5 < last.end:
        last.end = max(last.start + median_duration, segment.end)
    else:
        segment.end = last.end
    return segment.end


def last_end(segments: list[SegmentDraft]) -> float | None:
    """The end of the last word of the last segment that has words, else the last segment's end
    (faster-whisper's ``get_end``); ``None`` without segments."""
    for segment in reversed(segments):
        if segment.words:
            return segment.words[-1].end
    return segments[-1].end if segments else None
