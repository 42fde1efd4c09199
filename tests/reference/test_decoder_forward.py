"""The text decoder's weights, forward pass and caches against CTranslate2, and its batching invariants."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

import aiowhisper_npu as aw
from aiowhisper_npu.decoder import kernels as dk
from aiowhisper_npu.decoder.cache import KVCache
from tests.support.ct2_reference import GreedyReference


@pytest.mark.parametrize("name", ["tiny.en", pytest.param("base", marks=pytest.mark.slow)])
def test_both_models_load_their_decoder(name: str) -> None:
    m = aw.load_model(name)
    d = m.dims
    assert m.decoder is not None and len(m.decoder.blocks) == d.n_text_layer
    expected = {"tiny.en": (51864, 448, 384, 6, 4), "base": (51865, 448, 512, 8, 6)}[name]
    assert (d.n_vocab, d.n_text_ctx, d.n_text_state, d.n_text_head, d.n_text_layer) == expected
    assert d.is_multilingual == (name == "base")
    assert len(m.alignment_heads) == 8 and all(0 <= layer < d.n_text_layer for layer, _ in m.alignment_heads)
    assert not m.decoder.token_embedding.flags.writeable  # shared by every caller of load_model


@pytest.fixture(scope="module", params=["tiny.en", pytest.param("base", marks=pytest.mark.slow)])
def reference(request: pytest.FixtureRequest) -> tuple[aw.WhisperModel, GreedyReference]:
    model = aw.load_model(request.param)
    return model, GreedyReference(model, "long_40s.wav")


def _teacher_forced(model: aw.WhisperModel, ref: GreedyReference) -> list[np.ndarray]:
    dec = dk.prepare_decoder(model.decoder, model.dims)
    d = model.dims
    cache = KVCache(dk.cross_cache(dec, ref.encoder_output), d.n_text_layer, d.n_text_head, d.text_head_dim,
                    d.n_text_ctx)
    out = [dk.forward(dec, [dk.Pass(cache, np.array([ref.prompt]))])[0].logits[0, -1]]
    for t in ref.tokens:
        out.append(dk.forward(dec, [dk.Pass(cache, np.array([[t]]))])[0].logits[0, 0])
    return out


@pytest.mark.parametrize("gemv", [True, False], ids=["few-row-kernel", "numpy"])
def test_step_logits_match_ctranslate2(reference: tuple[aw.WhisperModel, GreedyReference], gemv: bool) -> None:
    """Per-step logits along CTranslate2's own greedy path, with our C kernels and with the numpy forms."""
    model, ref = reference
    previous = dk.use_gemv(gemv)
    try:
        ours = _teacher_forced(model, ref)
    finally:
        dk.use_gemv(previous)
    assert len(ref.tokens) > 60 and len(ref.logits) >= len(ref.tokens)
    for step, (a, b) in enumerate(zip(ours, ref.logits)):
        finite = np.isfinite(b)  # CTranslate2 reports logits after its own masking of disabled tokens
        err = np.linalg.norm(a[finite] - b[finite]) / np.linalg.norm(b[finite])
        assert err <= 1e-3, (step, err)  # measured ~2e-5
        assert np.argmax(np.where(finite, a, -np.inf)) == np.argmax(b), step


def _group(dec: dk.PreparedDecoder, model: aw.WhisperModel, cross: Any, prompt: list[int]) -> KVCache:
    d = model.dims
    return KVCache(cross, d.n_text_layer, d.n_text_head, d.text_head_dim, d.n_text_ctx)


def test_batched_passes_are_bit_identical_to_single_passes(tiny: aw.WhisperModel) -> None:
    """Prefills and steps of several groups in one forward give exactly what each gives alone (the
    engine's batching may not change a request's result), including a beam-expanded, reordered group."""
    if not dk.gemv_available():
        pytest.skip("bit-identity across batch shapes needs the few-row kernel")
    dec = dk.prepare_decoder(tiny.decoder, tiny.dims)
    rng = np.random.default_rng(0)
    crosses = [dk.cross_cache(dec, rng.standard_normal((1500, 384)).astype(np.float32) * 0.5) for _ in range(2)]
    prompts = [[50257, 50362, 440, 2068], [50257, 50363]]

    def run(batched: bool) -> list[np.ndarray]:
        caches = [_group(dec, tiny, crosses[i % 2], prompts[i % 2]) for i in range(3)]
        passes = [dk.Pass(c, np.array([prompts[i % 2]]), logits_at=(0, -1)) for i, c in enumerate(caches)]
        outs = []
        if batched:
            outs += [o.logits for o in dk.forward(dec, passes)]
        else:
            outs += [dk.forward(dec, [p])[0].logits for p in passes]
        caches[2].expand(3)
        feeds = [np.array([[11]]), np.array([[220]]), np.array([[11], [13], [50]])]
        for step in range(3):
            passes = [dk.Pass(c, f + step) for c, f in zip(caches, feeds)]
            if batched:
                outs += [o.logits for o in dk.forward(dec, passes)]
            else:
                outs += [dk.forward(dec, [p])[0].logits for p in passes]
            caches[2].reorder(np.array([2, 0, 0]))
        return outs

    alone, together = run(False), run(True)
    assert len(alone) == len(together) == 12
    for a, b in zip(alone, together):
        assert np.array_equal(a, b)


def test_beam_reorder_follows_the_parent_rows(tiny: aw.WhisperModel) -> None:
    """After reorder([1, 1]), both rows continue row 1: same tokens then give identical logits, equal (to
    rounding: a group's attention products have other shapes) to a single row that saw row 1's history."""
    dec = dk.prepare_decoder(tiny.decoder, tiny.dims)
    cross = dk.cross_cache(dec, np.random.default_rng(1).standard_normal((1500, 384)).astype(np.float32) * 0.5)
    prompt = [50257, 50362]
    beams = _group(dec, tiny, cross, prompt)
    dk.forward(dec, [dk.Pass(beams, np.array([prompt]))])
    beams.expand(2)
    dk.forward(dec, [dk.Pass(beams, np.array([[464], [383]]))])
    beams.reorder(np.array([1, 1]))
    out = dk.forward(dec, [dk.Pass(beams, np.array([[318], [318]]))])[0].logits
    single = _group(dec, tiny, cross, prompt)
    dk.forward(dec, [dk.Pass(single, np.array([prompt]))])
    dk.forward(dec, [dk.Pass(single, np.array([[383]]))])
    ref = dk.forward(dec, [dk.Pass(single, np.array([[318]]))])[0].logits
    assert np.array_equal(out[0], out[1])
    np.testing.assert_allclose(out[1], ref[0], rtol=1e-5, atol=1e-4)
    wrong = _group(dec, tiny, cross, prompt)
    dk.forward(dec, [dk.Pass(wrong, np.array([prompt]))])
    dk.forward(dec, [dk.Pass(wrong, np.array([[464]]))])
    assert not np.allclose(dk.forward(dec, [dk.Pass(wrong, np.array([[318]]))])[0].logits[0], ref[0])


def test_pass_validation(tiny: aw.WhisperModel) -> None:
    dec = dk.prepare_decoder(tiny.decoder, tiny.dims)
    cross = dk.cross_cache(dec, np.zeros((1500, 384), np.float32))
    c = _group(dec, tiny, cross, [])
    with pytest.raises(ValueError, match="one row"):
        dk.forward(dec, [dk.Pass(c, np.array([[1, 2], [3, 4]]))])
    dk.forward(dec, [dk.Pass(c, np.array([[50257, 50362]]))])
    with pytest.raises(ValueError, match="one token per row"):
        dk.forward(dec, [dk.Pass(c, np.array([[1, 2]]))])
    assert c.length == 2  # a rejected pass changes nothing
    with pytest.raises(ValueError, match="448 positions"):
        dk.forward(dec, [dk.Pass(_group(dec, tiny, cross, []), np.zeros((1, 449), np.int64))])
