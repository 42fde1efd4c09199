"""``aw.word_error_rate``: the one WER the tests and benchmarks use."""

from __future__ import annotations

import pytest

import aiowhisper_npu as aw
from aiowhisper_npu.transcription.metrics import normalize_word, words


def test_words_are_compared_without_case_or_punctuation() -> None:
    assert words(" Hello, World!  It's  3 -- ok.") == ["hello", "world", "its", "3", "ok"]
    assert normalize_word(" Über-all ") == "überall"
    assert aw.word_error_rate("Hello, world!", "hello world") == 0.0


@pytest.mark.parametrize(("hyp", "ref", "expected"), [
    ("a b c", "a b c", 0.0),
    ("a x c", "a b c", 1 / 3),          # one substitution
    ("a c", "a b c", 1 / 3),            # one deletion
    ("a b b c", "a b c", 1 / 3),        # one insertion
    ("c b a", "a b c", 2 / 3),          # order matters: two substitutions
    ("", "a b c d", 1.0),               # everything deleted
    ("a b", "", 2.0),                   # against an empty reference: insertions over one word
    ("", "", 0.0),
])
def test_word_error_rate_is_the_word_edit_distance_over_the_reference(hyp: str, ref: str, expected: float) -> None:
    assert aw.word_error_rate(hyp, ref) == pytest.approx(expected)
