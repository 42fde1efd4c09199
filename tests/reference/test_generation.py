"""``generate`` against CTranslate2 4.8.5's ``Whisper.generate`` (what faster-whisper drives), on the same
encoder output: greedy and beam search, every prompt form, every logit rule (each in a case where it changes
the output), and the no-speech probability. The comparison helper is in tests/support/generation_peer.py."""

from __future__ import annotations

import pytest

import aiowhisper_npu as aw
from tests.support.generation_peer import Peer

LONG = "long_40s.wav"  # its first 30 s: ten sentences, about 90 tokens


@pytest.fixture(scope="module")
def peer(tiny: aw.WhisperModel) -> Peer:
    return Peer(tiny)


@pytest.mark.slow
@pytest.mark.parametrize("beam", [1, 5])
@pytest.mark.parametrize("kind", ["nots", "ts"])
def test_long_window_matches_ctranslate2(peer: Peer, kind: str, beam: int) -> None:
    out = peer.compare(LONG, kind, beam_size=beam)
    assert len(out.sequences_ids[0]) > 80


@pytest.mark.parametrize("beam", [1, 5])
@pytest.mark.parametrize("kind", ["prev_nots", "prev_ts", "prefix_nots", "prefix_ts", "prev_prefix_ts"])
def test_prompt_forms_match_ctranslate2(peer: Peer, kind: str, beam: int) -> None:
    """A previous-text prompt (the no-speech probability is then read inside the prompt), a forced prefix
    (which begins the result; timestamp rules start after it)."""
    out = peer.compare("numbers.wav", kind, beam_size=beam)
    if "prefix" in kind:
        assert peer.tok.decode(out.sequences_ids[0]).startswith(" Every morning")


def test_timestamps_are_monotonic_across_segments(peer: Peer) -> None:
    """tiny.en loops on this clip; each new segment must start after the previous one (CTranslate2 4.8.5's
    rule: after text a timestamp is strictly later than the last)."""
    out = peer.compare("numbers.wav", "ts", beam_size=1)
    ts = [t for t in out.sequences_ids[0] if t >= peer.tok.timestamp_begin]
    assert len(ts) >= 6 and ts[3] > ts[2] and ts[5] > ts[4]  # <|0.00|>, then pairs (end, next start)


@pytest.mark.slow
def test_hypotheses_match_ctranslate2(peer: Peer) -> None:
    out = peer.compare(LONG, "nots", beam_size=5, num_hypotheses=5)
    assert len(out.sequences_ids) == 5
    out = peer.compare("numbers.wav", "ts", beam_size=5, num_hypotheses=3)
    assert out.scores == sorted(out.scores, reverse=True)


@pytest.mark.slow
@pytest.mark.parametrize("beam", [1, 5])
def test_max_initial_timestamp(peer: Peer, beam: int) -> None:
    """After 4 s of silence the model would open with ~<|4.20|>; the option caps the first timestamp."""
    tb = peer.tok.timestamp_begin
    firsts = {}
    for index in (0, 50, 300):
        out = peer.compare("door+4s", "ts", beam_size=beam, max_initial_timestamp_index=index)
        firsts[index] = out.sequences_ids[0][0] - tb
        assert firsts[index] <= index
    assert firsts[300] > 50  # uncapped, the first timestamp would be late


@pytest.mark.parametrize("beam", [1, 5])
def test_suppress_blank(peer: Peer, beam: int) -> None:
    """On silence after a previous-text prompt the model ends at once unless end-of-text is suppressed at the
    first step."""
    on = peer.compare("silence", "prev_nots", beam_size=beam, suppress_blank=True)
    off = peer.compare("silence", "prev_nots", beam_size=beam, suppress_blank=False)
    assert on.sequences_ids != off.sequences_ids


@pytest.mark.slow
def test_suppress_tokens(peer: Peer) -> None:
    base = peer.compare(LONG, "nots", beam_size=1)
    banned = base.sequences_ids[0][3]
    out = peer.compare(LONG, "nots", beam_size=1, suppress_tokens=(banned, -1))
    assert banned not in out.sequences_ids[0] and out.sequences_ids != base.sequences_ids
    # -1 stands for the model's default set (non-speech symbols): without it, "(water running)" comes out
    plain = peer.compare("noise", "ts", beam_size=1, suppress_tokens=())
    assert plain.sequences_ids != peer.ours("noise", peer.prompt("ts"), beam_size=1).sequences_ids


@pytest.mark.slow
@pytest.mark.parametrize("beam", [1, 5])
def test_repetition_penalty(peer: Peer, beam: int) -> None:
    base = peer.ours(LONG, peer.prompt("ts"), beam_size=beam)
    out = peer.compare(LONG, "ts", beam_size=beam, repetition_penalty=1.5)
    assert out.sequences_ids != base.sequences_ids
    peer.compare("numbers.wav", "prefix_ts", beam_size=beam, repetition_penalty=1.5)


@pytest.mark.slow
@pytest.mark.parametrize(("name", "kind", "beam"), [("noise", "prefix_nots", 1), ("noise", "ts", 5)])
def test_no_repeat_ngram(peer: Peer, name: str, kind: str, beam: int) -> None:
    base = peer.ours(name, peer.prompt(kind), beam_size=beam)
    out = peer.compare(name, kind, beam_size=beam, no_repeat_ngram_size=2)
    assert out.sequences_ids != base.sequences_ids


@pytest.mark.slow
def test_length_penalty_and_patience(peer: Peer) -> None:
    base = peer.ours(LONG, peer.prompt("nots"), beam_size=5)
    early = peer.compare(LONG, "nots", beam_size=5, length_penalty=0)  # stops when the top beam ends
    assert len(early.sequences_ids[0]) < len(base.sequences_ids[0])
    peer.compare(LONG, "ts", beam_size=5, length_penalty=0.5)
    base = peer.ours("noise", peer.prompt("nots"), beam_size=5)
    patient = peer.compare("noise", "nots", beam_size=5, patience=2)
    assert patient.sequences_ids != base.sequences_ids
    peer.compare(LONG, "ts", beam_size=3, patience=0.5)


@pytest.mark.parametrize("beam", [1, 5])
@pytest.mark.parametrize("kind", ["nots", "prefix_ts"])
def test_max_length(peer: Peer, kind: str, beam: int) -> None:
    """At the length limit every beam is a hypothesis as it stands; CTranslate2 decodes at most
    max_length // 2 tokens, the prefix included."""
    out = peer.compare(LONG, kind, beam_size=beam, max_length=30)
    assert len(out.sequences_ids[0]) == 15
