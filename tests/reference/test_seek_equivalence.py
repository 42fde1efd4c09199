"""Our seek loop against faster-whisper's, on a scripted model (tests/support/fake_ct2.py): both run over the same
random answers, so every segment, word, time and probability must be equal bit for bit, and both must ask
the model the same things (windows, prompts, generation options, alignments). Random options and audio
lengths reach every branch of faster-whisper's ``generate_segments``; no model runs, so this is fast."""

from __future__ import annotations

import copy
import dataclasses
from typing import Any

import anyio
import numpy as np
import pytest

from aiowhisper_npu.models.registry import resolve_model_dir
from aiowhisper_npu.transcription.options import TranscriptionOptions
from aiowhisper_npu.transcription.seek import transcribe
from tests.support.ct2_backend import CT2Recognizer
from tests.support.fake_ct2 import VOCAB, ScriptedWhisper, scripted_dims

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def faster_whisper_on(fake: ScriptedWhisper, model_dir: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    """faster-whisper's WhisperModel built around ``fake`` instead of a CTranslate2 model."""
    import ctranslate2
    from faster_whisper import WhisperModel

    with monkeypatch.context() as m:
        m.setattr(ctranslate2.models, "Whisper", lambda *a, **k: fake)
        return WhisperModel(str(model_dir), cpu_threads=1)


def random_options(rng: np.random.Generator, multilingual: bool, family: str = "mixed") -> dict[str, Any]:
    """A random mix of faster-whisper's transcribe options (as keyword arguments for both)."""
    pick = lambda *xs: xs[int(rng.integers(len(xs)))]  # noqa: E731
    kw: dict[str, Any] = dict(
        beam_size=int(rng.integers(1, 6)), best_of=int(rng.integers(1, 6)), patience=pick(1, 2.0),
        length_penalty=pick(1, 0.6, 1.3), word_timestamps=bool(rng.random() < 0.6),
        without_timestamps=bool(rng.random() < 0.15),
        temperature=pick(0.0, [0.0, 0.2, 0.4, 0.6, 0.8, 1.0], (0.0, 0.7), 0.5),
        compression_ratio_threshold=pick(2.4, None, 1.4), log_prob_threshold=pick(-1.0, None, -0.4),
        no_speech_threshold=pick(0.6, None, 0.3), condition_on_previous_text=bool(rng.random() < 0.7),
        prompt_reset_on_temperature=pick(0.5, 0.1),
        initial_prompt=pick(None, "Hello there.", [400, 401, 402], list(range(400, 700))),
        prefix=pick(None, None, "So"), hotwords=pick(None, "fox hunt"),
        suppress_tokens=pick([-1], [], None, [-1, 11], [11, 13]), suppress_blank=bool(rng.random() < 0.8),
        max_initial_timestamp=pick(1.0, 0.4), max_new_tokens=pick(None, None, 25),
        clip_timestamps=pick("0", "0", "3.5,20,31", [1.0, 50.0], "12"),
        hallucination_silence_threshold=pick(None, 0.5, 2.0, 6.0),
        prepend_punctuations=pick("\"'“¿([{-", "(\""), append_punctuations=pick("\"'.。,，!！?？:：”)]}、", ".,"),
    )
    if family == "words":  # word timestamps and hallucination skipping, windows seldom skipped
        kw.update(word_timestamps=True, temperature=0.0, no_speech_threshold=pick(None, 0.9),
                  hallucination_silence_threshold=pick(1.0, 3.0, 6.0), clip_timestamps=pick("0", "4"))
    if family == "prompts":  # previous text over several windows, reset after hot fallbacks
        kw.update(condition_on_previous_text=True, temperature=pick((0.0, 0.7), 0.5, [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]),
                  prompt_reset_on_temperature=pick(0.1, 0.5), log_prob_threshold=-0.4, clip_timestamps="0",
                  no_speech_threshold=None)
    if multilingual:
        kw.update(language=pick(None, None, "de"), multilingual=bool(rng.random() < 0.3),
                  task=pick("transcribe", "translate"), language_detection_segments=int(rng.integers(1, 4)),
                  language_detection_threshold=pick(0.5, 0.95))
    return kw


def as_dicts(segments: list[Any]) -> list[dict[str, Any]]:
    out = []
    for s in segments:
        d = dataclasses.asdict(s)
        d["start"], d["end"] = float(d["start"]), float(d["end"])
        if d["words"] is not None:
            d["words"] = [{k: float(v) if k != "word" else v for k, v in w.items()} for w in d["words"]]
        out.append(d)
    return out


def compare_logs(theirs: list[tuple[str, Any]], ours: list[tuple[str, Any]]) -> None:
    # faster-whisper also aligns an empty text (its result is unused); the scripted model draws nothing for it
    theirs = [c for c in theirs if not (c[0] == "align" and not any(c[1][1]))]
    assert [c[0] for c in ours] == [c[0] for c in theirs]
    for (kind, a), (_, b) in zip(theirs, ours):
        if kind == "encode":
            np.testing.assert_allclose(b, a, atol=1e-4, rtol=0)  # the two log-mel front ends
        else:
            assert b == a, kind


def run_both(model: str, seed: int, audio: np.ndarray, kw: dict[str, Any], monkeypatch: pytest.MonkeyPatch):
    from aiowhisper_npu.decoder.tokenizer import Tokenizer

    path = resolve_model_dir(model)
    tok = Tokenizer.for_model(path, VOCAB[model])
    theirs_model, ours_model = ScriptedWhisper(tok, seed), ScriptedWhisper(tok, seed)
    fw = faster_whisper_on(theirs_model, path, monkeypatch)
    segments, info = fw.transcribe(audio, **copy.deepcopy(kw))
    theirs = list(segments)
    decoder = CT2Recognizer(ours_model, scripted_dims(VOCAB[model]), path)
    result = anyio.run(transcribe, decoder, audio, TranscriptionOptions(**kw))
    assert decoder.open_windows == 0
    return (theirs, info, theirs_model.log), (result.segments, result.info, ours_model.log)


@pytest.mark.parametrize("model", ["tiny.en", "base"])
@pytest.mark.parametrize("family, seed", [("mixed", s) for s in range(12)] + [("words", s) for s in range(8)]
                         + [("prompts", s) for s in range(5)])
def test_seek_loop_equals_faster_whisper(model: str, family: str, seed: int, monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(1000 * seed + len(model) + len(family))
    kw = random_options(rng, model == "base", family)
    seconds = float(pick_length(rng)) if family != "prompts" else float(rng.uniform(35, 95))
    audio = (rng.normal(size=int(seconds * 16000)) * 0.05).astype(np.float32)
    (theirs, info, log_theirs), (ours, our_info, log_ours) = run_both(model, seed, audio, kw, monkeypatch)
    assert as_dicts(ours) == as_dicts(theirs), kw
    assert (our_info.language, our_info.language_probability) == (info.language, info.language_probability)
    assert our_info.all_language_probs == info.all_language_probs
    assert our_info.duration == info.duration
    compare_logs(log_theirs, log_ours)


def pick_length(rng: np.random.Generator) -> float:
    return rng.choice([rng.uniform(0.3, 8), rng.uniform(8, 35), rng.uniform(35, 75)])
