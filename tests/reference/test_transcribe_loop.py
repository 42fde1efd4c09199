"""The seek loop over CTranslate2 (tests/support/ct2_backend.py) against faster-whisper on the same model: the
same text, tokens and segment boundaries, the same decoding statistics and word timings.

Both run on one ``ctranslate2.models.Whisper`` (faster-whisper's own), so any difference comes from the loop
or the features (our log-mel equals faster-whisper's within 1e-5: floats are compared to 1e-3).
"""

from __future__ import annotations

from typing import Any

import anyio
import numpy as np
import pytest

import aiowhisper_npu as aw
from aiowhisper_npu.audio.io import load_audio
from aiowhisper_npu.transcription.options import TranscriptionOptions
from aiowhisper_npu.transcription.results import TranscriptionResult
from aiowhisper_npu.transcription.seek import transcribe
from tests.support import CLIPS, DATA
from tests.support.ct2_backend import CT2Recognizer

GREEDY = dict(beam_size=1, temperature=0.0)


class Peer:
    """faster-whisper and our loop over one CTranslate2 model."""

    def __init__(self, model: aw.WhisperModel):
        from faster_whisper import WhisperModel

        self.fw = WhisperModel(str(model.path), compute_type="float32", cpu_threads=2)
        self.decoder = CT2Recognizer(self.fw.model, model.dims, model.path)

    def run(self, audio: np.ndarray, **kw: Any) -> tuple[list[Any], Any, TranscriptionResult]:
        segments, info = self.fw.transcribe(audio, **kw)
        theirs = list(segments)
        ours = anyio.run(transcribe, self.decoder, audio, TranscriptionOptions(**kw))
        assert self.decoder.open_windows == 0
        return theirs, info, ours

    def check(self, audio: np.ndarray, **kw: Any) -> TranscriptionResult:
        theirs, info, ours = self.run(audio, **kw)
        assert_same(theirs, ours.segments)
        assert ours.info.language == info.language
        assert ours.info.language_probability == pytest.approx(info.language_probability, abs=1e-3)
        assert ours.info.duration == info.duration
        return ours


def assert_same(theirs: list[Any], ours: list[Any], tol: float = 1e-3) -> None:
    assert [s.text for s in ours] == [s.text for s in theirs]
    for t, o in zip(theirs, ours):
        assert (o.id, o.seek, o.tokens, o.temperature) == (t.id, t.seek, t.tokens, t.temperature)
        assert (o.start, o.end) == (float(t.start), float(t.end))
        assert o.avg_logprob == pytest.approx(t.avg_logprob, abs=tol)
        assert o.no_speech_prob == pytest.approx(t.no_speech_prob, abs=tol)
        assert o.compression_ratio == t.compression_ratio
        if t.words is None:
            assert o.words is None
            continue
        assert [(w.word, w.start, w.end) for w in o.words] == [(w.word, float(w.start), float(w.end)) for w in t.words]
        np.testing.assert_allclose([w.probability for w in o.words], [w.probability for w in t.words], atol=tol)


@pytest.fixture(scope="module")
def peer_tiny(tiny: aw.WhisperModel) -> Peer:
    return Peer(tiny)


@pytest.fixture(scope="module")
def peer_base(base: aw.WhisperModel) -> Peer:
    return Peer(base)


def clip(name: str) -> np.ndarray:
    return load_audio(DATA / name)


FAST_CLIPS = ["quick_fox.wav", "door_44k_stereo.wav", "jfk.wav"]
SHORT_CLIPS = FAST_CLIPS + [pytest.param(c, marks=pytest.mark.slow) for c in CLIPS
                            if c not in FAST_CLIPS and c != "long_40s.wav"]


@pytest.mark.parametrize("name", SHORT_CLIPS)
def test_greedy_with_words(peer_tiny: Peer, name: str) -> None:
    """Every short clip, greedy, with word timestamps: texts, boundaries and word timings identical."""
    ours = peer_tiny.check(clip(name), word_timestamps=True, **GREEDY)
    assert ours.segments and all(s.words for s in ours.segments)


@pytest.mark.parametrize("name", ["jfk.wav", pytest.param("quick_fox.wav", marks=pytest.mark.slow)])
def test_default_options(peer_tiny: Peer, name: str) -> None:
    """faster-whisper's defaults: beam search of 5 with temperature fallback."""
    peer_tiny.check(clip(name))


@pytest.mark.slow
@pytest.mark.parametrize("kw", [
    dict(without_timestamps=True),
    dict(initial_prompt="President Kennedy's inaugural address."),
    dict(initial_prompt=[1770, 13, 4775]),
    dict(prefix="And so, my fellow"),
    dict(hotwords="Americans country"),
    dict(max_new_tokens=6),
    dict(clip_timestamps="1.5,6.2"),
    dict(suppress_tokens=[], suppress_blank=False, max_initial_timestamp=0.0),
], ids=lambda kw: ",".join(kw))
def test_options(peer_tiny: Peer, kw: dict[str, Any]) -> None:
    peer_tiny.check(clip("jfk.wav"), **GREEDY, **kw)


@pytest.mark.slow
def test_no_speech_window_is_skipped(peer_tiny: Peer) -> None:
    """A window of silence is skipped (no segment) and the speech after it is transcribed. tiny.en writes
    " you" over 31 s of digital silence (no-speech probability 0.95, average log probability -0.81): with
    ``log_prob_threshold=-0.5`` that window is silence."""
    audio = np.concatenate([np.zeros(16000 * 31, np.float32), clip("door.wav")])
    peer_tiny.decoder.calls.clear()
    theirs, _, ours = peer_tiny.run(audio, log_prob_threshold=-0.5, **GREEDY)
    assert_same(theirs, ours.segments)
    assert sum(1 for c in peer_tiny.decoder.calls if c[0] == "generate") == 2
    assert [s.seek for s in ours.segments] == [3000] and "door" in ours.text


@pytest.mark.slow
def test_long_two_windows_with_words(peer_tiny: Peer) -> None:
    """Two windows: the second starts where the first's last word ended, prompted with the first's text."""
    ours = peer_tiny.check(clip("long_40s.wav"), word_timestamps=True, **GREEDY)
    assert len({s.seek for s in ours.segments}) == 2


@pytest.mark.slow
def test_long_clips_without_previous_text(peer_tiny: Peer) -> None:
    ours = peer_tiny.check(clip("long_40s.wav"), clip_timestamps="2,12.5,29", condition_on_previous_text=False,
                           initial_prompt="A list of sentences.", **GREEDY)
    assert ours.segments[0].start >= 2.0


@pytest.mark.slow
def test_base_long_with_words(peer_base: Peer) -> None:
    ours = peer_base.check(clip("long_40s.wav"), word_timestamps=True, **GREEDY)
    assert ours.info.language == "en" and len({s.seek for s in ours.segments}) == 2


@pytest.mark.slow
def test_base_default_options(peer_base: Peer) -> None:
    ours = peer_base.check(clip("jfk.wav"), language="en")
    assert "ask not what your country can do for you" in ours.text


@pytest.mark.slow
@pytest.mark.parametrize("name, language", [("de_weather.wav", "de"), ("es_market.wav", "es")])
def test_base_detects_the_language(peer_base: Peer, name: str, language: str) -> None:
    """``language=None`` on a multilingual model: detected language, its probability and the text identical."""
    ours = peer_base.check(clip(name), word_timestamps=True, **GREEDY)
    assert ours.info.language == language and ours.info.language_probability > 0.5
    assert ours.info.all_language_probs is not None


@pytest.mark.slow
def test_base_multilingual_per_window(peer_base: Peer) -> None:
    """``multilingual=True`` detects each window's language (German, then Spanish)."""
    gap = np.zeros(16000 * 27, np.float32)
    audio = np.concatenate([clip("de_weather.wav"), gap, clip("es_market.wav")])
    peer_base.decoder.calls.clear()
    ours = peer_base.check(audio, multilingual=True, **GREEDY)
    tok = peer_base.decoder.tokenizer
    prompts = [c[1][0] for c in peer_base.decoder.calls if c[0] == "generate"]
    languages = [tok.hf.id_to_token(p[p.index(tok.sot) + 1]) for p in prompts]
    assert languages == ["<|de|>", "<|es|>"] and ours.info.language == "de"
