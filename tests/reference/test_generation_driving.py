"""The generation state machine as the engine drives it (one pass at a time, several generations batched in
one forward call, closed midway or on errors), random sampling, language detection, and the base model
against CTranslate2."""

from __future__ import annotations

import numpy as np
import pytest

import aiowhisper_npu as aw
from aiowhisper_npu.decoder import generation as gen_module
from aiowhisper_npu.decoder.generation import Generation, ct2_suppress_tokens, detect_language, generate
from aiowhisper_npu.decoder.kernels import forward
from aiowhisper_npu.decoder.options import GenerationOptions
from tests.support.generation_peer import Peer, check_grammar

LONG = "long_40s.wav"


@pytest.fixture(scope="module")
def peer(tiny: aw.WhisperModel) -> Peer:
    return Peer(tiny)


@pytest.fixture(scope="module")
def base_peer(base: aw.WhisperModel) -> Peer:
    return Peer(base)


def _options(**kw: object) -> GenerationOptions:
    kw.setdefault("suppress_tokens", (-1,))
    return GenerationOptions(**kw)  # type: ignore[arg-type]


# -- the state machine ---------------------------------------------------------------------------------------
@pytest.mark.slow
def test_passes_one_at_a_time(peer: Peer) -> None:
    prompt = peer.prompt("prev_nots")
    g = Generation(peer.dec, peer.cross(LONG), peer.tok, prompt, _options(beam_size=5))
    p = g.next_pass()
    assert p is g.next_pass() and p is not None  # the same pass until it is fed
    assert p.tokens.tolist() == [prompt] and tuple(p.logits_at) == (prompt.index(peer.tok.sot), len(prompt) - 1)
    with pytest.raises(RuntimeError):
        g.result()
    rows = []
    while p is not None:
        g.feed(forward(peer.dec, [p])[0])
        p = g.next_pass()
        rows.append(0 if p is None else p.tokens.shape[0])
    assert g.done and rows[0] == 5 and rows[-1] == 0  # beams after the first step; then finished
    assert g.result() == generate(peer.dec, peer.cross(LONG), peer.tok, prompt, _options(beam_size=5))
    assert g.cache is None  # released as soon as the result was ready
    with pytest.raises(RuntimeError):
        g.feed(forward(peer.dec, [Generation(peer.dec, peer.cross(LONG), peer.tok, prompt, _options()).next_pass()])[0])
    g.close()
    g.close()


def test_close_releases_the_cache_midway_and_after_errors(peer: Peer, monkeypatch: pytest.MonkeyPatch) -> None:
    g = Generation(peer.dec, peer.cross(LONG), peer.tok, peer.prompt("ts"), _options(beam_size=5))
    for _ in range(4):
        g.feed(forward(peer.dec, [g.next_pass()])[0])
    cache = g.cache
    assert cache is not None and cache.nbytes > 0
    g.close()
    g.close()
    assert cache.nbytes == 0 and g.next_pass() is None and g.done
    with pytest.raises(RuntimeError):
        g.result()
    g = Generation(peer.dec, peer.cross(LONG), peer.tok, peer.prompt("ts"), _options(beam_size=5))
    out = forward(peer.dec, [g.next_pass()])[0]
    out.logits = np.repeat(out.logits, 2, axis=0)  # not what the pass asked for (one row)
    with pytest.raises(ValueError):
        g.feed(out)
    cache = g.cache
    g.close()
    assert cache is not None and cache.nbytes == 0
    seen = []

    def failing_forward(dec, passes):  # type: ignore[no-untyped-def]
        seen.append(passes[0].cache)
        if len(seen) == 3:
            raise RuntimeError("device lost")
        return forward(dec, passes)

    monkeypatch.setattr(gen_module, "forward", failing_forward)
    with pytest.raises(RuntimeError, match="device lost"):
        generate(peer.dec, peer.cross(LONG), peer.tok, peer.prompt("ts"), _options(beam_size=5))
    assert seen[0].nbytes == 0


def test_bad_prompts_and_options_are_value_errors(peer: Peer) -> None:
    tok, cross = peer.tok, peer.cross(LONG)
    for prompt in ([], [tok.no_timestamps, 11], [tok.sot, tok.timestamp_end + 1], [tok.sot, -1]):
        with pytest.raises(ValueError):
            Generation(peer.dec, cross, tok, prompt, _options())
    with pytest.raises(ValueError):  # the previous text leaves no room under max_length
        Generation(peer.dec, cross, tok, peer.prompt("prev_ts"), _options(max_length=8))
    assert sorted(set(ct2_suppress_tokens([-1], tok))) == sorted(
        set(tok.non_speech_tokens) | {tok.sot, tok.translate, tok.transcribe, tok.sot_lm, tok.sot_prev, tok.no_speech})
    assert ct2_suppress_tokens([5, -2], tok) == [5]
    with pytest.raises(ValueError):
        Generation(peer.dec, cross, tok, peer.prompt("ts"), _options(suppress_tokens=(tok.timestamp_end + 1,)))


@pytest.mark.slow
def test_generations_batched_in_one_forward_match_alone(peer: Peer) -> None:
    specs = [(LONG, "nots", _options(beam_size=1)), (LONG, "ts", _options(beam_size=5)),
             ("numbers.wav", "prefix_ts", _options(beam_size=5, num_hypotheses=2)),
             (LONG, "prev_ts", _options(beam_size=1, sampling_topk=0, sampling_temperature=0.7, num_hypotheses=2,
                                        seed=3, max_length=80))]
    gens = [Generation(peer.dec, peer.cross(name), peer.tok, peer.prompt(kind), opts) for name, kind, opts in specs]
    calls, passes = 0, [0] * len(gens)
    while any(not g.done for g in gens):
        live = [i for i, g in enumerate(gens) if not g.done]
        for i, out in zip(live, forward(peer.dec, [gens[i].next_pass() for i in live])):
            gens[i].feed(out)
            passes[i] += 1
        calls += 1
    for g, (name, kind, opts) in zip(gens, specs):
        alone = generate(peer.dec, peer.cross(name), peer.tok, peer.prompt(kind), opts)
        assert g.result().sequences_ids == alone.sequences_ids
        np.testing.assert_allclose(g.result().scores, alone.scores, rtol=1e-5)
        assert g.result().no_speech_prob == pytest.approx(alone.no_speech_prob, abs=1e-6)
    assert calls == max(passes) and sum(passes) > 2 * calls  # they did share the forward calls


# -- random sampling -------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_sampling_is_reproducible_with_a_seed(peer: Peer) -> None:
    opts = dict(beam_size=1, sampling_topk=0, sampling_temperature=1.0, num_hypotheses=3, max_length=80)
    a = peer.ours(LONG, peer.prompt("ts"), seed=123, **opts)
    assert a == peer.ours(LONG, peer.prompt("ts"), seed=123, **opts)
    assert a.sequences_ids != peer.ours(LONG, peer.prompt("ts"), seed=124, **opts).sequences_ids
    assert a.scores == sorted(a.scores, reverse=True)


@pytest.mark.slow
@pytest.mark.parametrize("topk", [0, 5])
def test_sampling_at_a_very_low_temperature_is_greedy(peer: Peer, topk: int) -> None:
    greedy = peer.ours(LONG, peer.prompt("ts"), beam_size=1)
    cold = peer.compare(LONG, "ts", beam_size=1, sampling_topk=topk, sampling_temperature=1e-3, num_hypotheses=2,
                        seed=0)
    assert cold.sequences_ids == greedy.sequences_ids * 2
    np.testing.assert_allclose(cold.scores, greedy.scores * 2, rtol=1e-6)


@pytest.mark.parametrize("topk", [0, 3])
def test_sampling_varies_and_keeps_the_rules(peer: Peer, topk: int) -> None:
    suppressed = ct2_suppress_tokens([-1], peer.tok)
    seen = set()
    for seed in range(4):
        out = peer.ours("numbers.wav", peer.prompt("ts"), beam_size=1, sampling_topk=topk, sampling_temperature=1.0,
                        num_hypotheses=2, max_length=60, seed=seed)
        assert out.scores == sorted(out.scores, reverse=True)
        for ids in out.sequences_ids:
            check_grammar(ids, peer.tok, suppressed=suppressed)
            seen.add(tuple(ids))
    assert len(seen) >= 4


# -- language detection and the base model -----------------------------------------------------------------
def test_language_detection_needs_a_multilingual_model(peer: Peer) -> None:
    with pytest.raises(aw.ModelError):
        detect_language(peer.dec, peer.cross(LONG), peer.tok)


@pytest.mark.slow
@pytest.mark.parametrize("name", [LONG, "noise"])
def test_detect_language_matches_ctranslate2(base_peer: Peer, name: str) -> None:
    ours = detect_language(base_peer.dec, base_peer.cross(name), base_peer.tok)
    sv = base_peer.ctranslate2.StorageView.from_array(base_peer.encoded(name)[None])
    ref = [(code.strip("<|>"), p) for code, p in base_peer.ct2.detect_language(sv)[0]]
    assert len(ours) == len(ref) == 99 and ours[0][0] == ref[0][0]
    if name == LONG:
        assert ours[0][0] == "en"
    want = dict(ref)
    assert all(abs(p - want[code]) < 1e-3 for code, p in ours)
    assert [p for _, p in ours] == sorted((p for _, p in ours), reverse=True)


@pytest.mark.slow
@pytest.mark.parametrize("beam", [1, 5])
@pytest.mark.parametrize(("name", "kind"), [(LONG, "nots"), (LONG, "ts"), ("numbers.wav", "prev_ts"),
                                            ("numbers.wav", "prefix_ts")])
def test_base_matches_ctranslate2(base_peer: Peer, name: str, kind: str, beam: int) -> None:
    base_peer.compare(name, kind, beam_size=beam)


@pytest.mark.slow
def test_base_rules_and_translation_match_ctranslate2(base_peer: Peer) -> None:
    base_peer.compare(LONG, "ts", beam_size=5, num_hypotheses=3, repetition_penalty=1.3, no_repeat_ngram_size=3)
    tok = base_peer.tok.with_language("de").with_task("translate")
    base_peer.compare("numbers.wav", list(tok.sot_sequence), beam_size=5)


@pytest.mark.slow
def test_decoder_step_bench_runs(capsys: pytest.CaptureFixture[str]) -> None:
    """``bench/decoder_step.py`` (the per-step cost of the decoding logic) runs and prints its table."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
    import decoder_step

    assert decoder_step.main(["--max-length", "12", "--repeats", "1"]) == 0
    out = capsys.readouterr().out
    assert "| beam 5 |" in out and "| greedy |" in out
