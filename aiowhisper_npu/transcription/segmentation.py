"""Cutting one window's tokens into segments at its timestamp tokens, and where the next window starts
(faster-whisper's ``_split_segments_by_timestamps``).

* Two timestamp tokens in a row close one segment and open the next; a segment runs from its first token's
  time to its last's.
* The window ends with a single timestamp (text, then one timestamp): everything was said, the next window
  starts after this one. Otherwise the text after the last pair is unfinished: it is dropped and the next
  window starts at the last timestamp.
* No pair at all: the whole window is one segment, ending at its last timestamp (if any, and not ``<|0.00|>``)
  or at the window's end.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

from ..decoder.tokenizer import TIME_PRECISION, Tokenizer

__all__ = ["TimedWord", "SegmentDraft", "WindowSplit", "split_by_timestamps", "INPUT_STRIDE"]

#: Mel frames per encoder position (the second convolution's stride): one timestamp step is 2 frames.
INPUT_STRIDE = 2


@dataclass
class TimedWord:
    """A word of a segment while its times are worked out (seconds, absolute)."""

    word: str
    start: float
    end: float
    probability: float


@dataclass
class SegmentDraft:
    """A segment of one window before it is emitted: ``seek`` is the window's start frame."""

    seek: int
    start: float
    end: float
    tokens: list[int]
    words: list[TimedWord] = field(default_factory=list)


@dataclass(frozen=True)
class WindowSplit:
    segments: list[SegmentDraft]
    seek: int  #: where the next window starts (mel frames)
    single_timestamp_ending: bool


def split_by_timestamps(tokenizer: Tokenizer, tokens: Sequence[int], time_offset: float, segment_size: int,
                        segment_duration: float, seek: int) -> WindowSplit:
    """Split a window's generated ``tokens`` (see the module docstring); ``seek`` and ``segment_size`` are the
    window's start and length in mel frames, ``time_offset`` and ``segment_duration`` the same in seconds."""
    begin = tokenizer.timestamp_begin
    tokens = list(tokens)
    single_ending = len(tokens) >= 2 and tokens[-2] < begin <= tokens[-1]
    pairs = [i for i in range(1, len(tokens)) if tokens[i] >= begin and tokens[i - 1] >= begin]
    segments: list[SegmentDraft] = []
    if pairs:
        cuts = pairs + [len(tokens)] if single_ending else pairs
        last = 0
        for cut in cuts:
            part = tokens[last:cut]
            start = time_offset + (part[0] - begin) * TIME_PRECISION
            end = time_offset + (part[-1] - begin) * TIME_PRECISION
            segments.append(SegmentDraft(seek, start, end, part))
            last = cut
        if single_ending:
            next_seek = seek + segment_size
        else:
            next_seek = seek + (tokens[last - 1] - begin) * INPUT_STRIDE
    else:
        duration = segment_duration
        stamps = [t for t in tokens if t >= begin]
        if stamps and stamps[-1] != begin:
            duration = (stamps[-1] - begin) * TIME_PRECISION
        segments.append(SegmentDraft(seek, time_offset, time_offset + duration, tokens))
        next_seek = seek + segment_size
    return WindowSplit(segments, next_seek, single_ending)
