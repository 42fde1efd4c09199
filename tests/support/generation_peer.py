"""Test helper: our decoder and CTranslate2's ``Whisper.generate`` side by side on the same encoder output.

The encoder output comes from CTranslate2's own encoder on faster-whisper's log-mel, and both decoders get
exactly that array. CTranslate2 runs with one intra-op thread: on a shared, loaded machine its two-thread
OpenMP pool spins and runs an order of magnitude slower, and the thread count does not change its results
(identical sequences, scores and no-speech probabilities with one and two threads, checked on tiny.en).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

import aiowhisper_npu as aw
from aiowhisper_npu.audio.io import load_audio
from aiowhisper_npu.decoder import kernels as dk
from aiowhisper_npu.decoder.cache import CrossCache
from aiowhisper_npu.decoder.generation import generate
from aiowhisper_npu.decoder.options import GenerationOptions, GenerationResult
from aiowhisper_npu.decoder.tokenizer import Tokenizer
from tests.support import DATA

SR = 16000


def window(name: str) -> np.ndarray:
    """Audio of a named test window: a committed clip (the first 30 s), ``"door+4s"`` (4 s of silence, then
    door.wav: the model's first timestamp is late), ``"silence"`` or ``"noise"``."""
    if name == "silence":
        return np.zeros(5 * SR, np.float32)
    if name == "noise":
        return (np.random.default_rng(0).standard_normal(10 * SR) * 0.05).astype(np.float32)
    if name == "door+4s":
        return np.concatenate([np.zeros(4 * SR, np.float32), load_audio(DATA / "door.wav")])
    return load_audio(DATA / name)[: 30 * SR]


class Peer:
    """One model: our prepared decoder and a CTranslate2 ``Whisper`` over the same directory."""

    def __init__(self, model: aw.WhisperModel):
        import ctranslate2

        self.ctranslate2 = ctranslate2
        self.model = model
        self.tok = Tokenizer.for_model(model.path, model.dims.n_vocab, language="en")
        self.dec = dk.prepare_decoder(model.decoder, model.dims)
        self.ct2 = ctranslate2.models.Whisper(str(model.path), compute_type="float32", intra_threads=1)
        self._encoded: dict[str, np.ndarray] = {}
        self._cross: dict[str, CrossCache] = {}

    def encoded(self, name: str) -> np.ndarray:
        if name not in self._encoded:
            from faster_whisper.feature_extractor import FeatureExtractor

            mel = FeatureExtractor(feature_size=self.model.dims.n_mels)(window(name), padding=0)[:, :3000]
            sv = self.ctranslate2.StorageView.from_array(np.ascontiguousarray(mel[None], np.float32))
            self._encoded[name] = np.array(self.ct2.encode(sv, to_cpu=True))[0]
        return self._encoded[name]

    def cross(self, name: str) -> CrossCache:
        if name not in self._cross:
            self._cross[name] = dk.cross_cache(self.dec, self.encoded(name))
        return self._cross[name]

    def prompt(self, kind: str) -> list[int]:
        """``nots``/``ts`` (with or without ``<|notimestamps|>``), ``prev_*`` (a previous-text prompt first),
        ``prefix_*`` (a forced prefix after the task tokens)."""
        tok = self.tok
        out = [tok.sot_prev] + tok.encode(" The museum has many old paintings.") if kind.startswith("prev") else []
        out += list(tok.sot_sequence)
        if kind.endswith("nots"):
            out.append(tok.no_timestamps)
        if "prefix" in kind:
            out += ([] if kind.endswith("nots") else [tok.timestamp_begin]) + tok.encode(" Every morning")
        return out

    def ours(self, name: str, prompt: Sequence[int], **options: Any) -> GenerationResult:
        options.setdefault("suppress_tokens", (-1,))
        return generate(self.dec, self.cross(name), self.tok, prompt, GenerationOptions(**options))

    def reference(self, name: str, prompt: Sequence[int], **options: Any) -> Any:
        options.setdefault("suppress_tokens", (-1,))
        options = {k: list(v) if isinstance(v, tuple) else v for k, v in options.items() if k != "seed"}
        sv = self.ctranslate2.StorageView.from_array(self.encoded(name)[None])
        return self.ct2.generate(sv, [list(prompt)], return_scores=True, return_no_speech_prob=True, **options)[0]

    def compare(self, name: str, kind: str | Sequence[int], **options: Any) -> GenerationResult:
        """Generate with both; assert the same hypotheses (in order, except among CTranslate2 scores within
        1e-4 of each other), scores within 1e-3 relative, no-speech probability within 1e-3."""
        prompt = self.prompt(kind) if isinstance(kind, str) else list(kind)
        ours = self.ours(name, prompt, **options)
        ref = self.reference(name, prompt, **options)
        assert_same(ours, ref, self.tok)
        return ours


def assert_same(ours: GenerationResult, ref: Any, tok: Tokenizer) -> None:
    shown = [tok.decode_with_timestamps(s) for s in ours.sequences_ids], [
        tok.decode_with_timestamps(s) for s in ref.sequences_ids]
    assert len(ours.sequences_ids) == len(ref.sequences_ids), shown
    scores = np.asarray(ref.scores)
    for i, seq in enumerate(ours.sequences_ids):
        with np.errstate(invalid="ignore"):  # -inf scores (empty hypotheses) tie with each other
            tied = (scores == scores[i]) | (np.abs(scores - scores[i]) < 1e-4)
        if tied.sum() == 1:
            assert seq == ref.sequences_ids[i], (i, shown)
        else:
            assert seq in [ref.sequences_ids[j] for j in np.flatnonzero(tied)], (i, shown)
    np.testing.assert_allclose(ours.scores, ref.scores, rtol=1e-3)
    assert abs(ours.no_speech_prob - ref.no_speech_prob) < 1e-3


def check_grammar(ids: Sequence[int], tok: Tokenizer, max_initial: int = 50, suppressed: Sequence[int] = ()) -> None:
    """Assert what the logit rules guarantee for a hypothesis of a timestamped prompt without prefix: it
    starts with a timestamp no later than ``max_initial``, timestamps come in pairs (a single one only
    right before the end), never decrease and grow after text; no end-of-text, ``<|notimestamps|>`` or
    suppressed token."""
    tb = tok.timestamp_begin
    assert ids and tb <= ids[0] <= tb + max_initial, ids
    assert not set(ids) & {tok.eot, tok.no_timestamps, *suppressed}, ids
    last_ts, run = -1, 0
    for i, t in enumerate(ids):
        if t >= tb:
            run += 1
            assert run <= 2, ids
            assert t >= last_ts, ids
            if run == 1 and i > 0:
                assert t > last_ts, ids  # a segment has a nonzero length
            last_ts = t
        else:
            assert i == 0 or run != 1 or i == 1, ids  # after text + one timestamp comes another timestamp
            run = 0
