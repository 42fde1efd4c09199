"""Draft and verify (decoder/generation.py): a greedy generation that prefills a guess of its tokens and
replays the steps over the prefill's logits gives the tokens, score and no-speech probability of plain
greedy decoding, and takes one pass for a right draft.

Equality is asserted exactly on the committed clips: the prefill computes the draft positions' logits
through BLAS where the steps use the few-row kernel, so they differ by float rounding (relative ~1e-6,
checked below), and the test would catch a near-tie that this rounding flips.
"""

from __future__ import annotations

import numpy as np
import pytest

import aiowhisper_npu as aw
from aiowhisper_npu.decoder.cache import KVCache
from aiowhisper_npu.decoder.generation import Generation, generate, parse_prompt
from aiowhisper_npu.decoder.kernels import Pass, forward
from aiowhisper_npu.decoder.options import GenerationOptions
from aiowhisper_npu.decoder.tasks import new_cache
from tests.support.generation_peer import Peer

GREEDY = GenerationOptions(beam_size=1, suppress_tokens=(-1,))


@pytest.fixture(scope="module")
def peer(tiny: aw.WhisperModel) -> Peer:
    return Peer(tiny)


def drive(g: Generation, peer: Peer) -> int:
    """Run ``g`` to the end alone; the number of passes it took."""
    passes = 0
    while (p := g.next_pass()) is not None:
        g.feed(forward(peer.dec, [p])[0])
        passes += 1
    return passes


def drafts(tokens: list[int]) -> dict[str, tuple[list[int], int]]:
    """Drafts of a greedy output and the tokens each must have confirmed."""
    wrong = tokens[:5] + [tokens[5] + 1] + tokens[6:]
    junk = list(np.random.default_rng(0).integers(0, 50000, 20))
    return {"exact": (tokens, len(tokens)), "half": (tokens[: len(tokens) // 2], len(tokens) // 2),
            "wrong at 5": (wrong, 5), "junk": (junk, 0), "longer": (tokens + tokens[:10], len(tokens)),
            "empty": ([], 0)}


@pytest.mark.parametrize(("name", "kind"), [("jfk.wav", "ts"), ("jfk.wav", "prev_ts"), ("jfk.wav", "nots"),
                                           pytest.param("long_40s.wav", "prev_ts", marks=pytest.mark.slow)])
def test_draft_verify_gives_plain_greedy(peer: Peer, name: str, kind: str) -> None:
    prompt, cross = peer.prompt(kind), peer.cross(name)
    plain = Generation(peer.dec, cross, peer.tok, prompt, GREEDY)
    steps = drive(plain, peer)
    ref = plain.result()
    tokens = ref.sequences_ids[0]
    assert steps == len(tokens) + 1 and len(tokens) > 15  # one pass per token and one for end-of-text
    for label, (draft, confirmed) in drafts(tokens).items():
        g = Generation(peer.dec, cross, peer.tok, prompt, GREEDY, draft)
        passes = drive(g, peer)
        got = g.result()
        assert got.sequences_ids == ref.sequences_ids, label
        assert got.draft_accepted == confirmed, label
        assert got.scores == pytest.approx(ref.scores, rel=1e-5, abs=1e-6), label
        assert got.no_speech_prob == pytest.approx(ref.no_speech_prob, rel=1e-4, abs=1e-6), label
        # every confirmed token saved its pass: the prefill, then one step per token left (and end-of-text)
        assert passes == 1 + len(tokens) - confirmed, label


@pytest.mark.slow
def test_a_prefix_and_beam_search_and_the_length_limit(peer: Peer) -> None:
    cross = peer.cross("long_40s.wav")
    prompt = peer.prompt("prefix_ts")  # a forced prefix: the draft is what follows it
    ref = generate(peer.dec, cross, peer.tok, prompt, GREEDY)
    after = ref.sequences_ids[0][parse_prompt(prompt, peer.tok).prefix.size :]
    assert len(after) > 15
    got = generate(peer.dec, cross, peer.tok, prompt, GREEDY, after)
    assert got.sequences_ids == ref.sequences_ids and got.draft_accepted == len(after)
    # beam search ignores a draft
    beam = GenerationOptions(beam_size=3, suppress_tokens=(-1,))
    plain = generate(peer.dec, cross, peer.tok, peer.prompt("ts"), beam)
    with_draft = generate(peer.dec, cross, peer.tok, peer.prompt("ts"), beam, ref.sequences_ids[0])
    assert with_draft == plain and with_draft.draft_accepted == 0
    # a draft past the length limit is cut there; the result still ends at the limit
    short = GenerationOptions(beam_size=1, suppress_tokens=(-1,), max_length=24)
    limited = generate(peer.dec, cross, peer.tok, peer.prompt("ts"), short)
    long_tokens = generate(peer.dec, cross, peer.tok, peer.prompt("ts"), GREEDY).sequences_ids[0]
    got = generate(peer.dec, cross, peer.tok, peer.prompt("ts"), short, long_tokens)
    assert got.sequences_ids == limited.sequences_ids and len(got.sequences_ids[0]) == 12
    with pytest.raises(ValueError, match="draft token ids"):
        Generation(peer.dec, cross, peer.tok, peer.prompt("ts"), GREEDY, [peer.dec.dims.n_vocab])


def test_prefill_logits_match_step_logits(peer: Peer) -> None:
    """The float tolerance behind the equality: a draft position's logits in the prefill against the same
    position's logits computed step by step."""
    cross = peer.cross("jfk.wav")
    prompt = peer.prompt("prev_ts")
    tokens = generate(peer.dec, cross, peer.tok, prompt, GREEDY).sequences_ids[0]
    n = len(prompt)
    full = forward(peer.dec, [Pass(new_cache(cross, peer.dec.dims), np.asarray([prompt + tokens]),
                                   tuple(range(n - 1, n + len(tokens))))])[0].logits[0]
    cache = new_cache(cross, peer.dec.dims)
    stepped = [forward(peer.dec, [Pass(cache, np.asarray([prompt]))])[0].logits[0, -1]]
    for t in tokens:
        stepped.append(forward(peer.dec, [Pass(cache, np.asarray([[t]]))])[0].logits[0, -1])
    for a, b in zip(full, stepped):
        assert np.linalg.norm(a - b) / np.linalg.norm(b) < 1e-4
        assert int(np.argmax(a)) == int(np.argmax(b))


def test_truncating_a_prefilled_prompt(peer: Peer) -> None:
    cross = peer.cross("jfk.wav")
    cache: KVCache = new_cache(cross, peer.dec.dims)
    prompt = peer.prompt("prev_ts")
    forward(peer.dec, [Pass(cache, np.asarray([prompt]))])
    short = new_cache(cross, peer.dec.dims)
    forward(peer.dec, [Pass(short, np.asarray([prompt[:6]]))])
    cache.truncate_prompt(6)
    assert cache.prompt_length == 6 and cache.prefix_k_t.flags.c_contiguous
    np.testing.assert_allclose(cache.prefix_v, short.prefix_v, rtol=1e-4, atol=1e-5)  # causal: the rest is gone
    with pytest.raises(ValueError):
        cache.truncate_prompt(7)
    forward(peer.dec, [Pass(cache, np.asarray([[prompt[6]]]))])
    with pytest.raises(RuntimeError):
        cache.truncate_prompt(3)  # once it generates
