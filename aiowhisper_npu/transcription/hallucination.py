"""Skipping silence before likely hallucinations (faster-whisper's ``hallucination_silence_threshold``; needs
word timestamps).

A segment is *anomalous* when its first eight non-punctuation words are improbable (< 0.15), very short
(< 0.133 s) or very long (> 2 s) enough to score 3, or about one point per word. When the window's first
worded segment is anomalous and starts more than ``threshold`` after the window, the window is decoded again
from that segment's start. Otherwise an anomalous segment with silence (or more anomalies, or the window's
edge) on both sides is dropped with everything after it, and the next window starts at it.
"""

from __future__ import annotations

from dataclasses import dataclass

from .features import FRAMES_PER_SECOND
from .segmentation import SegmentDraft, TimedWord

__all__ = ["word_anomaly_score", "is_segment_anomaly", "HallucinationWindow", "skip_hallucinations"]

_PUNCTUATION = "\"'“¿([{-\"'.。,，!！?？:：”)]}、"


def word_anomaly_score(word: TimedWord) -> float:
    """How implausible a word is: improbable, too short or too long."""
    duration = word.end - word.start
    score = 0.0
    if word.probability < 0.15:
        score += 1.0
    if duration < 0.133:
        score += (0.133 - duration) * 15
    if duration > 2.0:
        score += duration - 2.0
    return score


def is_segment_anomaly(segment: SegmentDraft | None) -> bool:
    """Whether a segment looks hallucinated (see the module docstring). ``word not in _PUNCTUATION`` is a
    substring test, as in faster-whisper."""
    if segment is None or not segment.words:
        return False
    words = [w for w in segment.words if w.word not in _PUNCTUATION][:8]
    score = sum(word_anomaly_score(w) for w in words)
    return score >= 3 or score + 0.01 >= len(words)


def _next_with_words(segments: list[SegmentDraft]) -> SegmentDraft | None:
    return next((s for s in segments if s.words), None)


@dataclass(frozen=True)
class HallucinationWindow:
    """Where one window stands, for :func:`skip_hallucinations` (times in seconds, positions in mel frames)."""

    threshold: float
    time_offset: float
    window_end_time: float
    segment_duration: float
    content_duration: float
    content_frames: int
    previous_seek: int


def skip_hallucinations(segments: list[SegmentDraft], w: HallucinationWindow, seek: int,
                        last_speech_timestamp: float) -> tuple[int, bool]:
    """Apply the rules of the module docstring to a window's ``segments`` (truncated in place). Returns the
    next seek and whether the whole window is to be decoded again from there (its segments discarded)."""
    first = _next_with_words(segments)
    if first is not None and is_segment_anomaly(first):
        gap = first.start - w.time_offset
        if gap > w.threshold:
            return w.previous_seek + round(gap * FRAMES_PER_SECOND), True
    hal_last_end = last_speech_timestamp
    for si, segment in enumerate(segments):
        if not segment.words:
            continue
        if is_segment_anomaly(segment):
            following = _next_with_words(segments[si + 1 :])
            next_start = following.words[0].start if following is not None else w.time_offset + w.segment_duration
            silence_before = (segment.start - hal_last_end > w.threshold or segment.start < w.threshold
                              or segment.start - w.time_offset < 2.0)
            silence_after = (next_start - segment.end > w.threshold or is_segment_anomaly(following)
                             or w.window_end_time - segment.end < 2.0)
            if silence_before and silence_after:
                seek = round(max(w.time_offset + 1, segment.start) * FRAMES_PER_SECOND)
                if w.content_duration - segment.end < w.threshold:
                    seek = w.content_frames
                del segments[si:]
                break
        hal_last_end = segment.end
    return seek, False
