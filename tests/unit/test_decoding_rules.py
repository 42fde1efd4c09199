"""Unit tests of the decoding parts on synthetic logits: the logit rules, the samplers, the search strategies'
bookkeeping and the KV cache's row reordering. (Their agreement with CTranslate2 on real models is in
test_generation.py.)"""

from __future__ import annotations

import numpy as np
import pytest

from aiowhisper_npu.decoder.cache import CrossCache, KVCache
from aiowhisper_npu.decoder.logit_filters import (
    DISABLED,
    NoRepeatNgram,
    RepetitionPenalty,
    SuppressBlank,
    SuppressTokens,
    TimestampRules,
    build_filters,
)
from aiowhisper_npu.decoder.search import BeamSearch, BestSampler, GreedySearch, RandomSampler

# A toy vocabulary laid out like Whisper's: text 0..9, eot 10, specials 11..13, <|notimestamps|> 14,
# timestamps 15..24 (<|0.00|> .. <|0.18|>).
EOT, NO_TS, TB, V = 10, 14, 15, 25


def rules(max_initial: int = 3, sample_begin: int = 0) -> TimestampRules:
    return TimestampRules(EOT, NO_TS, TB, V, max_initial, sample_begin)


def allowed(logits: np.ndarray) -> list[list[int]]:
    return [np.flatnonzero(row > DISABLED).tolist() for row in logits]


def toks(*rows: list[int]) -> np.ndarray:
    return np.array(rows, np.int64).reshape(len(rows), -1)


# -- logit rules -------------------------------------------------------------------------------------------
def test_repetition_penalty_scales_each_seen_token_once() -> None:
    logits = np.array([[2.0, -2.0, 1.0, 3.0], [2.0, -2.0, 1.0, 3.0]], np.float32)
    RepetitionPenalty(2.0).apply(logits, toks([0, 1, 0], [3, 3, 3]))
    np.testing.assert_array_equal(logits, [[1.0, -4.0, 1.0, 3.0], [2.0, -2.0, 1.0, 1.5]])


def test_no_repeat_ngram_disables_the_token_that_would_repeat_an_ngram() -> None:
    logits = np.zeros((3, 8), np.float32)
    NoRepeatNgram(2).apply(logits, toks([1, 2, 3, 1, 5, 1], [1, 2, 3, 4, 5, 6], [7, 7, 7, 7, 7, 7]))
    assert allowed(logits)[0] == [0, 1, 3, 4, 6, 7]  # "1 2" and "1 5" were seen: 2 and 5 would repeat them
    assert allowed(logits)[1] == list(range(8))
    assert allowed(logits)[2] == [0, 1, 2, 3, 4, 5, 6]
    logits = np.zeros((1, 8), np.float32)
    NoRepeatNgram(3).apply(logits, toks([1, 2, 3, 1, 2]))
    assert allowed(logits)[0] == [0, 1, 2, 4, 5, 6, 7]
    logits = np.zeros((1, 8), np.float32)
    NoRepeatNgram(1).apply(logits, toks([4, 2]))
    assert allowed(logits)[0] == [0, 1, 3, 5, 6, 7]
    logits = np.zeros((1, 8), np.float32)
    NoRepeatNgram(3).apply(logits, toks([4, 2]))  # shorter than the n-gram: nothing
    assert allowed(logits)[0] == list(range(8))


def test_suppress_tokens_and_blank() -> None:
    logits = np.zeros((2, V), np.float32)
    SuppressTokens([3, 5, 3]).apply(logits, toks([], []))
    assert allowed(logits)[1] == [t for t in range(V) if t not in (3, 5)]
    blank = SuppressBlank([2, EOT], sample_begin=1)
    logits = np.zeros((1, V), np.float32)
    blank.apply(logits, toks([7]))  # the first sampled step (after a one-token prefix)
    assert 2 not in allowed(logits)[0] and EOT not in allowed(logits)[0]
    logits = np.zeros((1, V), np.float32)
    blank.apply(logits, toks([7, 2]))
    assert allowed(logits)[0] == list(range(V))


def test_timestamps_first_step() -> None:
    logits = np.zeros((1, V), np.float32)
    rules(max_initial=3).apply(logits, toks([]))
    assert allowed(logits)[0] == [15, 16, 17, 18]  # <|0.00|> .. <|0.06|> only
    logits = np.zeros((1, V), np.float32)
    rules(max_initial=3, sample_begin=2).apply(logits, toks([15, 4]))  # after a prefix: free
    assert allowed(logits)[0] == [t for t in range(V) if t != NO_TS]


def test_timestamps_come_in_pairs_and_increase() -> None:
    logits = np.zeros((5, V), np.float32)
    logits[:, :NO_TS] = 5.0  # text is far more likely than any timestamp: the probability rule stays out
    rules().apply(logits, toks([15, 3, 4, 17, 18], [15, 3, 4, 19, 8], [15, 3, 4, 18, 18], [16, 1, 1, 1, 1],
                               [1, 1, 1, 1, 15]))
    text = list(range(NO_TS))  # text, end-of-text and the other specials
    # two timestamps: text must follow
    assert allowed(logits)[0] == text
    # after text, a timestamp must be later than the last one (<|0.08|>): <|0.10|> on
    assert allowed(logits)[1] == text + list(range(20, V))
    assert allowed(logits)[2] == text
    assert allowed(logits)[3] == text + list(range(17, V))
    # text then a timestamp: no text (end-of-text or a timestamp not before it)
    assert allowed(logits)[4] == list(range(EOT, NO_TS)) + list(range(15, V))
    logits = np.zeros((1, V), np.float32)
    logits[:, :NO_TS] = 5.0
    rules(sample_begin=1).apply(logits, toks([1, 17]))  # the first sampled token was a timestamp
    assert allowed(logits)[0] == text


def test_timestamps_win_when_their_total_probability_beats_every_other_token() -> None:
    logits = np.zeros((2, V), np.float32)
    logits[0, 3] = 2.0  # one text token at e^2 ~ 7.4 against 10 timestamps at 1 each: timestamps win
    logits[1, 3] = 2.5  # e^2.5 ~ 12.2 beats them: free choice
    rules().apply(logits, toks([15, 3], [15, 3]))
    assert allowed(logits)[0] == list(range(16, V))
    assert allowed(logits)[1] == [t for t in range(V) if t not in (NO_TS, 15)]


def test_filters_run_in_ctranslate2_order() -> None:
    filters = build_filters(eot=EOT, no_timestamps=NO_TS, n_vocab=V, sample_begin=0, timestamps=True,
                            suppress_tokens=[1], blank_tokens=[2, EOT], repetition_penalty=1.2,
                            no_repeat_ngram_size=2)
    assert [type(f) for f in filters] == [RepetitionPenalty, NoRepeatNgram, SuppressTokens, SuppressBlank,
                                          TimestampRules]
    assert build_filters(eot=EOT, no_timestamps=NO_TS, n_vocab=V, sample_begin=0, timestamps=False,
                         suppress_tokens=[], blank_tokens=None) == []


# -- samplers ----------------------------------------------------------------------------------------------
def test_best_sampler_takes_the_first_of_equal_maxima() -> None:
    logits = np.array([[0, 3, 1, 3], [5, 0, 0, 5]], np.float32)
    assert BestSampler().sample(logits).tolist() == [1, 0]


def test_random_sampler_follows_the_tempered_distribution() -> None:
    logits = np.log(np.array([[0.5, 0.3, 0.15, 0.05, 0.0]], np.float32) + 1e-30)
    logits[0, 4] = DISABLED
    rows = np.repeat(logits, 20000, axis=0)
    for t in (1.0, 0.5):
        draws = RandomSampler(0, t, np.random.default_rng(7)).sample(rows)
        want = np.exp(logits[0, :4] / t)
        want /= want.sum()
        freq = np.bincount(draws, minlength=5) / draws.size
        assert freq[4] == 0
        np.testing.assert_allclose(freq[:4], want, atol=0.015)
    top2 = RandomSampler(2, 1.0, np.random.default_rng(7)).sample(rows)
    np.testing.assert_allclose(np.bincount(top2, minlength=5)[:2] / top2.size, [0.625, 0.375], atol=0.015)
    assert set(np.unique(top2)) == {0, 1}
    again = RandomSampler(0, 1.0, np.random.default_rng(7)).sample(rows)
    first = RandomSampler(0, 1.0, np.random.default_rng(7)).sample(rows)
    assert np.array_equal(again, first)
    cold = RandomSampler(0, 1e-3, np.random.default_rng(1)).sample(rows[:50])
    assert set(cold.tolist()) == {0}


# -- search bookkeeping -----------------------------------------------------------------------------------
def _logprobs(*probs: dict[int, float]) -> np.ndarray:
    out = np.full((len(probs), V), -30.0, np.float32)
    for row, p in enumerate(probs):
        for tok, q in p.items():
            out[row, tok] = np.log(q)
    return out


def test_greedy_ends_rows_at_end_of_text_or_at_the_length_limit() -> None:
    g = GreedySearch(BestSampler(), 1, EOT, max_steps=3, prefix=np.array([7]), length_penalty=1.0)
    a = g.advance(_logprobs({2: 0.9, 3: 0.1}))
    assert a is not None and a.tokens.tolist() == [2] and a.origins is None
    assert g.advance(_logprobs({EOT: 0.8, 3: 0.2})) is None
    ids, scores = g.result(1)
    assert ids == [[7, 2]]  # the prefix begins the hypothesis; end-of-text is not in it
    assert scores[0] == pytest.approx(np.log(0.9 * 0.8) / 2, rel=1e-5)  # the length counts the prefix
    g = GreedySearch(BestSampler(), 1, EOT, max_steps=2, prefix=np.zeros(0), length_penalty=0.0)
    g.advance(_logprobs({4: 0.9}))
    assert g.advance(_logprobs({5: 0.9})) is None  # the last step ends the row with its token
    assert g.result(1)[0] == [[4, 5]]


def test_beam_search_replaces_a_finished_beam_and_stops_after_enough_hypotheses() -> None:
    b = BeamSearch(2, patience=1.0, length_penalty=1.0, num_hypotheses=2, eot=EOT, max_steps=10,
                   prefix=np.zeros(0))
    a = b.advance(_logprobs({1: 0.6, 2: 0.4}))
    assert a is not None and a.tokens.tolist() == [1, 2] and a.origins.tolist() == [0, 0]
    # candidates: 1 eot (.54), 2 4 (.2), 2 5 (.16), 1 3 (.06). Beam 0 ends; the first candidate after the
    # beams (2 5) takes its place.
    a = b.advance(_logprobs({EOT: 0.9, 3: 0.1}, {4: 0.5, 5: 0.4, 6: 0.1}))
    assert a is not None and a.tokens.tolist() == [5, 4] and a.origins.tolist() == [1, 1]
    assert b.advance(_logprobs({EOT: 0.9, 3: 0.1}, {EOT: 0.9, 3: 0.1})) is None  # 3 finished >= 2
    ids, scores = b.result(2)
    assert ids == [[1], [2, 4]]
    assert scores == pytest.approx([np.log(0.54), np.log(0.18) / 2], rel=1e-4)


def test_beam_search_early_exit_without_length_penalty() -> None:
    b = BeamSearch(2, patience=1.0, length_penalty=0.0, num_hypotheses=1, eot=EOT, max_steps=10,
                   prefix=np.zeros(0))
    b.advance(_logprobs({1: 0.6, 2: 0.3}))
    assert b.advance(_logprobs({EOT: 0.9, 3: 0.05}, {4: 0.5, 5: 0.4})) is None  # the top beam ended
    assert b.result(1)[0] == [[1]]


def test_beam_search_after_a_prefix_lets_only_the_best_candidate_end() -> None:
    b = BeamSearch(2, patience=1.0, length_penalty=1.0, num_hypotheses=1, eot=EOT, max_steps=10,
                   prefix=np.array([6]))
    a = b.advance(_logprobs({1: 0.6, EOT: 0.3, 2: 0.05}))
    assert a is not None and a.tokens.tolist() == [1, 0]  # end-of-text in second place became a dead beam
    b = BeamSearch(2, patience=1.0, length_penalty=1.0, num_hypotheses=1, eot=EOT, max_steps=10,
                   prefix=np.zeros(0))
    a = b.advance(_logprobs({1: 0.6, EOT: 0.3, 2: 0.05}))
    assert a is not None and a.tokens.tolist() == [1, 2]  # without a prefix it ends a hypothesis


# -- the KV cache's row reordering ---------------------------------------------------------------------------
def test_kv_cache_reorder_matches_fancy_indexing() -> None:
    rng = np.random.default_rng(3)
    layers, heads, hd = 2, 3, 4
    cross = CrossCache(np.zeros((layers, heads, 5, hd), np.float32), np.zeros((layers, heads, hd, 5), np.float32))
    cache = KVCache(cross, layers, heads, hd, max_positions=100)
    for layer in range(layers):
        cache.set_prefix(layer, rng.random((heads, 2, hd), np.float32), rng.random((heads, 2, hd), np.float32))
    cache.expand(4)
    ref_k = np.zeros((layers, 4, heads, 0, hd), np.float32)
    ref_v = ref_k.copy()
    for step in range(40):  # crosses the suffix growth (32 positions) twice
        s = cache.reserve()
        k_new = rng.random((layers, cache.rows, heads, hd), np.float32)
        v_new = rng.random((layers, cache.rows, heads, hd), np.float32)
        for layer in range(layers):
            ks, vs = cache.suffix_slot(layer, s)
            ks[...], vs[...] = k_new[layer], v_new[layer]
        cache.commit()
        ref_k = np.concatenate([ref_k, k_new[:, :, :, None]], axis=3)
        ref_v = np.concatenate([ref_v, v_new[:, :, :, None]], axis=3)
        rows = 3 if step == 25 else cache.rows  # once, rows finish and the group shrinks
        origins = rng.integers(0, cache.rows, rows)
        cache.reorder(origins)
        ref_k, ref_v = ref_k[:, origins], ref_v[:, origins]
        for layer in range(layers):
            k, v = cache.suffix(layer, s + 1)
            np.testing.assert_array_equal(k, ref_k[layer])
            np.testing.assert_array_equal(v, ref_v[layer])
    assert cache.rows == 3
