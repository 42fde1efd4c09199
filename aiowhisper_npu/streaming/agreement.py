"""LocalAgreement-n on timed words: which words of successive hypotheses of a growing buffer to commit.

The policy of ufal/whisper_streaming (Macháček et al., 2023), generalised from 2 to ``n`` hypotheses:

1. Each new hypothesis (the words of the buffer, with stream times) is cut to its part after what is already
   committed (the buffer still holds audio of committed words that were not trimmed): after the place where
   it repeats the newest committed words (an anchor of at least two of the last five, near the committed end)
   or, without an anchor, after the words that start before the last committed word's end (less 0.1 s of
   slack) and the longest run (up to 5 words) of its head that repeats the committed tail word for word.
2. The longest prefix on which the last ``n`` such tails agree, word for word (compared case-, space- and
   punctuation-insensitively), is committed, with the newest hypothesis' spelling and times.
3. Committed words are removed from the front of the remembered tails; the newest tail minus its committed
   prefix is the *tentative* text.

Committed words never change. :meth:`LocalAgreement.commit_all` commits the newest tail (end of stream) and
:meth:`LocalAgreement.commit_before` the words that start before a time (when the buffer must be cut).
"""

from __future__ import annotations

import difflib
from collections import deque
from dataclasses import dataclass
from typing import Sequence

from ..transcription.metrics import normalize_word

__all__ = ["TimedWord", "LocalAgreement", "normalize_word"]

_SLACK_S = 0.1  # a hypothesis word may start this much before the committed end and still be new
_OVERLAP_WINDOW_S = 1.0  # only a head that starts this close to the committed end is checked for repeats
_MAX_OVERLAP = 5  # the longest repeated run of committed words that is removed


@dataclass(frozen=True)
class TimedWord:
    """One word of a hypothesis, in stream seconds. ``text`` keeps Whisper's leading space;
    ``segment_end`` marks the last word of one of Whisper's segments (a timestamp pair follows it)."""

    start: float
    end: float
    text: str
    segment_end: bool = False


class LocalAgreement:
    """Commit the longest prefix on which the last ``n`` hypotheses agree (see the module docstring).

    Memory is bounded: ``n - 1`` remembered tails (each at most one buffer's words) and the last 5
    committed words.
    """

    def __init__(self, n: int = 2) -> None:
        if n < 1:
            raise ValueError(f"the agreement needs n >= 1 hypotheses, got {n}")
        self.n = n
        self._tails: deque[list[TimedWord]] = deque(maxlen=n)
        self._recent: deque[TimedWord] = deque(maxlen=_MAX_OVERLAP)  # the newest committed words
        self.committed_end = 0.0  # the end of the last committed word (stream seconds)

    @property
    def tentative(self) -> list[TimedWord]:
        """The newest hypothesis' words after the committed ones."""
        return list(self._tails[-1]) if self._tails else []

    def insert(self, words: Sequence[TimedWord]) -> list[TimedWord]:
        """Add the next hypothesis (its words in stream time, in order); return the words it commits."""
        self._tails.append(self._new_part(words))
        if len(self._tails) < self.n:
            return []
        newest = self._tails[-1]
        k = 0
        while k < len(newest) and all(k < len(t) and normalize_word(t[k].text) == normalize_word(newest[k].text)
                                      for t in self._tails):
            k += 1
        return self._commit(newest[:k])

    def commit_all(self) -> list[TimedWord]:
        """Commit the whole newest tail (the stream ended)."""
        return self._commit(self.tentative)

    def commit_before(self, t: float) -> list[TimedWord]:
        """Commit the newest tail's words that start before ``t`` (the buffer is cut at ``t``)."""
        words = self.tentative
        k = 0
        while k < len(words) and words[k].start < t:
            k += 1
        return self._commit(words[:k])

    def reset_tails(self) -> None:
        """Forget the uncommitted hypotheses (their audio was dropped)."""
        self._tails.clear()

    def _commit(self, words: list[TimedWord]) -> list[TimedWord]:
        if not words:
            return []
        k = len(words)
        keys = [normalize_word(w.text) for w in words]
        for i, tail in enumerate(self._tails):  # every remembered tail starts with these words (or is dropped)
            if [normalize_word(w.text) for w in tail[:k]] == keys:
                self._tails[i] = tail[k:]
            else:
                self._tails[i] = [w for w in tail if w.start >= words[-1].end - _SLACK_S]
        self._recent.extend(words)
        self.committed_end = max(self.committed_end, words[-1].end)
        return list(words)

    def _new_part(self, words: Sequence[TimedWord]) -> list[TimedWord]:
        anchored = self._after_anchor(words)
        if anchored is not None:
            return anchored
        tail = [w for w in words if w.start > self.committed_end - _SLACK_S]
        if tail and self._recent and abs(tail[0].start - self.committed_end) < _OVERLAP_WINDOW_S:
            recent = [normalize_word(w.text) for w in self._recent]
            for i in range(min(len(recent), len(tail)), 0, -1):
                if recent[-i:] == [normalize_word(w.text) for w in tail[:i]]:
                    return tail[i:]
        return tail

    def _after_anchor(self, words: Sequence[TimedWord]) -> list[TimedWord] | None:
        """The words after where the hypothesis repeats the newest committed words (at least two of them, or
        one that also lies before the committed end), searched among the words that start before the
        committed end + 1 s; ``None`` when there is no such anchor. Word times near a pause are loose (a
        word's end may stretch over the silence after it), text is not."""
        if not self._recent:
            return None
        recent = [normalize_word(w.text) for w in self._recent]
        near = [normalize_word(w.text) for w in words if w.start < self.committed_end + _OVERLAP_WINDOW_S]
        cut = None
        matcher = difflib.SequenceMatcher(None, recent, near, autojunk=False)
        for block in matcher.get_matching_blocks():
            if block.size and block.a + block.size == len(recent):
                j = block.b + block.size
                if block.size >= 2 or words[j - 1].start < self.committed_end:
                    cut = j
        return None if cut is None else list(words[cut:])
