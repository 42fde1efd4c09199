"""Word error rate: how far one transcript is from another, in words.

Words are compared in one normalised form (:func:`normalize_word`: lower case, without punctuation, spaces or
control characters), so "Hello," and "hello" are the same word; the text is split on white space first, so
"three-hundred" is one word ("threehundred") and "don't" is "dont". The rate is the word-level Levenshtein
distance (substitutions, insertions and deletions, each costing 1) divided by the number of reference words.
"""

from __future__ import annotations

import unicodedata

__all__ = ["normalize_word", "words", "word_error_rate"]


def normalize_word(text: str) -> str:
    """The form words are compared in: lower case, without spaces and punctuation."""
    return "".join(c for c in text.lower() if not unicodedata.category(c).startswith(("P", "Z", "C")))


def words(text: str) -> list[str]:
    """``text``'s words in their normalised form; words that were only punctuation are dropped."""
    return [w for w in (normalize_word(x) for x in text.split()) if w]


def word_error_rate(hypothesis: str, reference: str) -> float:
    """Word error rate of ``hypothesis`` against ``reference`` (0.0 for two empty texts; a hypothesis against
    an empty reference counts its words as insertions over one reference word)."""
    h, r = words(hypothesis), words(reference)
    d = list(range(len(h) + 1))  # one row of the edit-distance table
    for i, rw in enumerate(r, 1):
        prev, d[0] = d[0], i
        for j, hw in enumerate(h, 1):
            prev, d[j] = d[j], min(d[j] + 1, d[j - 1] + 1, prev + (rw != hw))
    return d[len(h)] / max(1, len(r))
