"""The transcription API around the seek loop: TranscriptionOptions (faster-whisper's names and defaults,
validation), the features' layout, typed errors for bad input, and windows closed on every exit
(errors, cancellation, an abandoned iteration). Runs on the scripted model (tests/support/fake_ct2.py)."""

from __future__ import annotations

import dataclasses
import inspect
import logging
from types import SimpleNamespace
from typing import Any

import anyio
import numpy as np
import pytest

import aiowhisper_npu as aw
from aiowhisper_npu.decoder.options import GenerationOptions, GenerationResult
from aiowhisper_npu.decoder.tokenizer import Tokenizer
from aiowhisper_npu.models.registry import resolve_model_dir
from aiowhisper_npu.transcription.features import audio_features, content_frames, window_features
from aiowhisper_npu.transcription.options import TranscriptionOptions, parse_clip_timestamps
from aiowhisper_npu.transcription.seek import Transcription, transcribe, transcribe_segments
from tests.support import DATA
from tests.support.ct2_backend import CT2Recognizer
from tests.support.fake_ct2 import VOCAB, ScriptedWhisper, scripted_dims
from tests.support.loops import ASYNCIO, TRIO, on_loops

pytestmark = pytest.mark.anyio


def scripted(model: str = "tiny.en", seed: int = 0, cls: type = CT2Recognizer) -> Any:
    tok = Tokenizer.for_model(resolve_model_dir(model), VOCAB[model])
    return cls(ScriptedWhisper(tok, seed), scripted_dims(VOCAB[model]), resolve_model_dir(model))


def noise(seconds: float, seed: int = 0) -> np.ndarray:
    return (np.random.default_rng(seed).normal(size=int(seconds * 16000)) * 0.05).astype(np.float32)


# -- options ----------------------------------------------------------------------------------------------
def test_options_have_faster_whispers_names_and_defaults() -> None:
    from faster_whisper import WhisperModel

    params = inspect.signature(WhisperModel.transcribe).parameters
    ours = {f.name: getattr(TranscriptionOptions(), f.name) for f in dataclasses.fields(TranscriptionOptions)}
    assert set(params) - set(ours) == {"self", "audio", "log_progress"}
    for name, value in ours.items():
        default = params[name].default
        if isinstance(default, list):
            assert list(value) == default, name
        else:
            assert value == default, name


@pytest.mark.parametrize("kw", [
    dict(beam_size=0), dict(best_of=0), dict(beam_size=2.5), dict(patience=0), dict(temperature=-0.1),
    dict(temperature=[]), dict(temperature=[0.0, float("nan")]), dict(temperature="hot"), dict(task="summarise"),
    dict(language="klingon"), dict(language=3), dict(no_repeat_ngram_size=-1), dict(max_new_tokens=0),
    dict(compression_ratio_threshold=float("inf")), dict(log_prob_threshold="low"), dict(word_timestamps=1),
    dict(suppress_tokens=[-2]), dict(suppress_tokens="-1"), dict(initial_prompt=[1, -5]),
    dict(initial_prompt=[1.5]), dict(clip_timestamps="0,x"), dict(clip_timestamps="5,3"),
    dict(clip_timestamps=[-1.0]), dict(clip_timestamps=[0.0, float("inf")]), dict(vad_filter=1),
    dict(vad_parameters={"threshold": 1.5}), dict(chunk_length=20), dict(max_initial_timestamp=-1),
    dict(hallucination_silence_threshold=-2), dict(language_detection_segments=0), dict(prefix=5),
    dict(prepend_punctuations=None), dict(repetition_penalty=0),
], ids=lambda kw: "-".join(f"{k}={v!r}" for k, v in kw.items()))
def test_options_reject_nonsense(kw: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        TranscriptionOptions(**kw)


def test_options_normalise_sequences() -> None:
    o = TranscriptionOptions(temperature=[0, 0.5], suppress_tokens=[-1, 7], initial_prompt=np.array([3, 4]),
                             clip_timestamps=[1, 2.5])
    assert o.temperature == (0.0, 0.5) == o.temperatures
    assert o.suppress_tokens == (-1, 7) and o.initial_prompt == (3, 4) and o.clip_timestamps == (1.0, 2.5)
    assert TranscriptionOptions(temperature=0.4).temperatures == (0.4,)
    assert TranscriptionOptions(max_initial_timestamp=0.5).max_initial_timestamp_index == 25
    assert parse_clip_timestamps("") == () and parse_clip_timestamps(" 1.5, 4") == (1.5, 4.0)
    assert hash(TranscriptionOptions(language="German")) == hash(TranscriptionOptions(language="German"))


# -- features ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["quick_fox.wav", "long_40s.wav"])
def test_features_have_faster_whispers_layout(name: str) -> None:
    from faster_whisper.feature_extractor import FeatureExtractor

    audio = aw.load_audio(DATA / name)
    ours, theirs = audio_features(audio), FeatureExtractor()(audio)
    assert ours.shape == theirs.shape == (80, audio.size // 160 + 1) and ours.dtype == np.float32
    np.testing.assert_allclose(ours, theirs, atol=1e-4, rtol=0)
    assert content_frames(ours) == audio.size // 160


def test_window_features_pad_and_trim() -> None:
    features = np.arange(2 * 5000, dtype=np.float32).reshape(2, 5000) + 1
    w = window_features(features, 4000)
    assert w.shape == (2, 3000) and w.flags.c_contiguous
    np.testing.assert_array_equal(w[:, :1000], features[:, 4000:])
    assert not w[:, 1000:].any()
    np.testing.assert_array_equal(window_features(features, 10, 20)[:, :20], features[:, 10:30])
    assert not window_features(features, 10, 20)[:, 20:].any()
    np.testing.assert_array_equal(window_features(features, 0, 4000), features[:, :3000])
    with pytest.raises(ValueError):
        window_features(features, -1)


# -- bad input --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("audio", [np.zeros(0, np.float32), np.array([0.0, np.nan], np.float32),
                                   np.zeros((2, 16000), np.float32), np.zeros(16000, np.int16), "speech.wav"],
                         ids=["empty", "nan", "stereo", "int16", "str"])
async def test_bad_audio_is_an_audio_error(audio: Any) -> None:
    decoder = scripted()
    with pytest.raises(aw.AudioError):
        await transcribe(decoder, audio)
    assert decoder.open_windows == 0


async def test_options_that_do_not_fit_the_model() -> None:
    with pytest.raises(TypeError):
        await transcribe(scripted(), noise(1), dict(beam_size=1))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="vocabulary"):
        await transcribe(scripted(), noise(1), TranscriptionOptions(initial_prompt=[51864]))
    with pytest.raises(ValueError, match="vocabulary"):
        await transcribe(scripted(), noise(1), TranscriptionOptions(suppress_tokens=[60000]))
    with pytest.raises(ValueError, match="no language token"):
        await transcribe(scripted("base"), noise(1), TranscriptionOptions(language="yue"))
    decoder = scripted()
    with pytest.raises(ValueError, match="max_new_tokens"):  # prompt + new tokens > 448
        await transcribe(decoder, noise(1), TranscriptionOptions(initial_prompt=list(range(300)), max_new_tokens=300))
    assert decoder.open_windows == 0


async def test_english_only_model_ignores_language_and_task(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        result = await transcribe(scripted(), noise(2), TranscriptionOptions(language="de", task="translate",
                                                                                multilingual=True))
    assert result.info.language == "en" and result.info.language_probability == 1
    assert "English-only" in caplog.text


async def test_info_and_result() -> None:
    t = await Transcription.start(scripted("base", seed=3), noise(3), TranscriptionOptions(language="German"))
    assert (t.info.language, t.info.language_probability, t.info.all_language_probs) == ("de", 1.0, None)
    assert t.info.duration == 3.0 == t.info.duration_after_vad and t.info.vad_options is None
    segments = [s async for s in t.segments()]
    with pytest.raises(RuntimeError, match="once"):
        async for _ in t.segments():
            pass
    assert [s.id for s in segments] == list(range(1, len(segments) + 1))
    result = await transcribe(scripted("base", seed=3), noise(3), TranscriptionOptions(language="de"))
    assert result.segments == segments and result.text == "".join(s.text for s in segments).strip()
    assert [s async for s in transcribe_segments(scripted("base", seed=3), noise(3),
                                                 TranscriptionOptions(language="de"))] == segments


# -- windows are closed on every exit ---------------------------------------------------------------------
class Failing(CT2Recognizer):
    fail_in = "generate"

    async def generate(self, window: Any, prompt: Any, options: GenerationOptions) -> GenerationResult:
        if self.fail_in == "generate":
            raise RuntimeError("decoder broke")
        return await super().generate(window, prompt, options)

    async def align(self, *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("aligner broke")


@pytest.mark.parametrize("where", ["generate", "align"])
async def test_errors_propagate_and_close_the_window(where: str) -> None:
    decoder = scripted(seed=1, cls=Failing)
    decoder.fail_in = where
    with pytest.raises(RuntimeError, match="broke"):
        await transcribe(decoder, noise(40), TranscriptionOptions(word_timestamps=True, temperature=0.0,
                                                                  no_speech_threshold=None))
    assert decoder.open_windows == 0 and any(c[0] == "encode" for c in decoder.calls)


class Blocking(CT2Recognizer):
    """Its second generation never returns."""

    entered: anyio.Event

    async def generate(self, window: Any, prompt: Any, options: GenerationOptions) -> GenerationResult:
        if sum(1 for c in self.calls if c[0] == "generate") >= 1:
            self.entered.set()
            await anyio.sleep_forever()
        return await super().generate(window, prompt, options)


@on_loops(ASYNCIO, TRIO)
async def test_cancellation_closes_the_window() -> None:
    decoder = scripted(seed=2, cls=Blocking)
    decoder.entered = anyio.Event()
    got = []

    async def consume() -> None:
        async for segment in transcribe_segments(decoder, noise(70), TranscriptionOptions(temperature=[0.0, 0.5])):
            got.append(segment)

    async with anyio.create_task_group() as tg:
        tg.start_soon(consume)
        await decoder.entered.wait()
        assert decoder.open_windows == 1
        tg.cancel_scope.cancel()
    assert decoder.open_windows == 0


async def test_an_abandoned_iteration_holds_no_window() -> None:
    decoder = scripted(seed=5)
    t = await Transcription.start(decoder, noise(70), TranscriptionOptions(temperature=0.0, no_speech_threshold=None))
    segments = t.segments()
    first = await segments.__anext__()
    assert first.id == 1 and decoder.open_windows == 0  # the window was closed before its segments were yielded
    await segments.aclose()
    assert decoder.open_windows == 0


class Stuck(ScriptedWhisper):
    """Always ``<|0.00|> text <|0.00|><|0.00|>``: a segment of no duration and no progress; fails after 20
    generations (faster-whisper would decode the same window for ever)."""

    def generate(self, features: Any, prompts: Any, **kwargs: Any) -> list[Any]:
        self.log.append(("generate", None))
        if sum(1 for c in self.log if c[0] == "generate") > 20:
            raise RuntimeError("looping")
        b = self.tok.timestamp_begin
        return [SimpleNamespace(sequences_ids=[[b, *self.tok.encode(" hi"), b, b]], scores=[-0.1], no_speech_prob=0.0)]


async def test_a_window_that_does_not_advance_is_skipped(monkeypatch: pytest.MonkeyPatch) -> None:
    from test_seek_equivalence import faster_whisper_on

    path = resolve_model_dir("tiny.en")
    tok = Tokenizer.for_model(path, VOCAB["tiny.en"])
    fw = faster_whisper_on(Stuck(tok, 0), path, monkeypatch)
    with pytest.raises(RuntimeError, match="looping"):
        list(fw.transcribe(noise(40), temperature=0.0)[0])
    decoder = CT2Recognizer(Stuck(tok, 0), scripted_dims(VOCAB["tiny.en"]), path)
    result = await transcribe(decoder, noise(40), TranscriptionOptions(temperature=0.0))
    assert result.segments == [] and sum(1 for c in decoder.calls if c[0] == "generate") == 2
