"""``Runtime.transcribe`` end to end (encoder pipeline, decoder engine, seek loop) against faster-whisper 1.2.1
(fp32, the same model directories), and the runtime's concurrency, cancellation and error guarantees.

tests/test_transcribe_loop.py proves the seek loop equals faster-whisper's on CTranslate2 itself; here our
own encoder and decoder run under it, so numbers agree to rounding (logits within ~2e-5) and decisions
(texts, tokens, segment boundaries) are expected to be identical.
"""

from __future__ import annotations

import threading
from typing import Any

import anyio
import numpy as np
import pytest

import aiowhisper_npu as aw
from aiowhisper_npu.audio.io import load_audio
from tests.support import CLIPS, DATA
from tests.support.loops import all_loops, all_loops_fast_on_asyncio, asyncio_only

GREEDY = dict(beam_size=1, temperature=0.0)


def word_errors(ref: str, hyp: str) -> int:
    """Word-level edit distance (case and punctuation ignored)."""
    norm = [w.strip(".,!?;:\"'").lower() for w in ref.split()], [w.strip(".,!?;:\"'").lower() for w in hyp.split()]
    a, b = norm
    d = list(range(len(b) + 1))
    for i, wa in enumerate(a, 1):
        prev, d[0] = d[0], i
        for j, wb in enumerate(b, 1):
            prev, d[j] = d[j], min(d[j] + 1, d[j - 1] + 1, prev + (wa != wb))
    return d[-1]


class FasterWhisper:
    """faster-whisper on the model directory, with its results cached per (clip, options)."""

    def __init__(self, model: aw.WhisperModel):
        from faster_whisper import WhisperModel

        self.fw = WhisperModel(str(model.path), compute_type="float32", cpu_threads=2)
        self._cache: dict[Any, tuple[list[Any], Any]] = {}

    def run(self, audio: np.ndarray, key: str, **kw: Any) -> tuple[list[Any], Any]:
        k = (key, tuple(sorted((n, str(v)) for n, v in kw.items())))
        if k not in self._cache:
            segments, info = self.fw.transcribe(audio, **kw)
            self._cache[k] = (list(segments), info)
        return self._cache[k]


def assert_same_decisions(theirs: list[Any], ours: list[Any], words: bool = False) -> None:
    assert [s.text for s in ours] == [s.text for s in theirs]
    for t, o in zip(theirs, ours):
        assert (o.seek, o.tokens, o.temperature) == (t.seek, t.tokens, t.temperature)
        assert (o.start, o.end) == (float(t.start), float(t.end))
        assert o.avg_logprob == pytest.approx(t.avg_logprob, abs=2e-3)
        assert o.no_speech_prob == pytest.approx(t.no_speech_prob, abs=2e-3)
        if words:
            assert [w.word for w in o.words] == [w.word for w in t.words]
            np.testing.assert_allclose([(w.start, w.end) for w in o.words], [(w.start, w.end) for w in t.words],
                                       atol=0.061)  # DTW on rounding-close attention: at most 3 frames apart
            np.testing.assert_allclose([w.probability for w in o.words], [w.probability for w in t.words], atol=5e-3)


@pytest.fixture(scope="module")
def fw_tiny(tiny: aw.WhisperModel) -> FasterWhisper:
    return FasterWhisper(tiny)


@pytest.fixture(scope="module")
def fw_base(base: aw.WhisperModel) -> FasterWhisper:
    return FasterWhisper(base)


def transcribe(model: aw.WhisperModel, audio: Any, **kw: Any) -> aw.TranscriptionResult:
    async def go() -> aw.TranscriptionResult:
        async with aw.Runtime(model) as rt:
            return await rt.transcribe(audio, **kw)

    return anyio.run(go)


ENGLISH = ["jfk.wav", *[c for c in CLIPS if c not in ("door_44k_stereo.wav",)]]


@pytest.mark.slow
@pytest.mark.parametrize("name", ENGLISH)
def test_tiny_greedy_equals_faster_whisper(tiny: aw.WhisperModel, fw_tiny: FasterWhisper, name: str) -> None:
    """Greedy: identical text, tokens and segment boundaries on every English clip (real speech and
    espeak-ng, one and two windows)."""
    audio = load_audio(DATA / name)
    theirs, _ = fw_tiny.run(audio, name, **GREEDY)
    ours = transcribe(tiny, audio, **GREEDY)
    assert_same_decisions(theirs, ours.segments)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["jfk.wav", "long_40s.wav"])
def test_tiny_default_options_match_faster_whisper(tiny: aw.WhisperModel, fw_tiny: FasterWhisper, name: str) -> None:
    """faster-whisper's defaults (beam 5, temperature fallback): the same text (at most two words apart)."""
    audio = load_audio(DATA / name)
    theirs, _ = fw_tiny.run(audio, name)
    ours = transcribe(tiny, audio)
    ref = "".join(s.text for s in theirs)
    assert word_errors(ref, ours.text) <= 2, (ref, ours.text)
    assert len(ours.segments) == len(theirs)


def test_tiny_word_timestamps_match_faster_whisper(tiny: aw.WhisperModel, fw_tiny: FasterWhisper) -> None:
    audio = load_audio(DATA / "jfk.wav")
    theirs, _ = fw_tiny.run(audio, "jfk.wav", word_timestamps=True, **GREEDY)
    ours = transcribe(tiny, audio, word_timestamps=True, **GREEDY)
    assert_same_decisions(theirs, ours.segments, words=True)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["jfk.wav", "long_40s.wav"])
def test_base_greedy_equals_faster_whisper(base: aw.WhisperModel, fw_base: FasterWhisper, name: str) -> None:
    audio = load_audio(DATA / name)
    theirs, info = fw_base.run(audio, name, **GREEDY)
    ours = transcribe(base, audio, **GREEDY)
    assert ours.language == info.language == "en"
    assert ours.language_probability == pytest.approx(info.language_probability, abs=2e-3)
    assert_same_decisions(theirs, ours.segments)


@pytest.mark.slow
def test_base_default_options_match_faster_whisper(base: aw.WhisperModel, fw_base: FasterWhisper) -> None:
    audio = load_audio(DATA / "long_40s.wav")
    theirs, _ = fw_base.run(audio, "long_40s.wav")
    ours = transcribe(base, audio)
    assert word_errors("".join(s.text for s in theirs), ours.text) <= 2


@pytest.mark.slow
@pytest.mark.parametrize("name, language", [("de_weather.wav", "de"), ("es_market.wav", "es")])
def test_base_detects_the_language_of_synthesized_speech(base: aw.WhisperModel, fw_base: FasterWhisper,
                                                         name: str, language: str) -> None:
    audio = load_audio(DATA / name)
    theirs, info = fw_base.run(audio, name, **GREEDY)
    ours = transcribe(base, audio, **GREEDY)
    assert ours.language == info.language == language
    assert ours.language_probability == pytest.approx(info.language_probability, abs=2e-3)
    assert_same_decisions(theirs, ours.segments)


def test_translate_needs_a_multilingual_model(tiny: aw.WhisperModel) -> None:
    """English-only models ignore task (as faster-whisper does) and still transcribe."""
    result = transcribe(tiny, DATA / "door.wav", task="translate", **GREEDY)
    assert "door" in result.text.lower()


@pytest.mark.slow
@pytest.mark.anyio
@all_loops
async def test_concurrent_calls_share_the_engine_and_get_their_own_results(tiny: aw.WhisperModel) -> None:
    """Four concurrent calls (different clips, one with words) give exactly what each gives alone, their
    decoding steps batched together."""
    clips = ["jfk.wav", "quick_fox.wav", "numbers.wav", "door.wav"]
    audio = {c: load_audio(DATA / c) for c in clips}
    async with aw.Runtime(tiny) as rt:
        alone = {c: await rt.transcribe(audio[c], word_timestamps=(c == "jfk.wav")) for c in clips}
        before = rt.decoder_stats()
        together: dict[str, aw.TranscriptionResult] = {}

        async def one(c: str) -> None:
            together[c] = await rt.transcribe(audio[c], word_timestamps=(c == "jfk.wav"))

        async with anyio.create_task_group() as tg:
            for c in clips:
                tg.start_soon(one, c)
        after = rt.decoder_stats()
        assert rt.buffer_pool.stats().in_use == 0 and after.active_tasks == 0
    for c in clips:
        assert [s.tokens for s in together[c].segments] == [s.tokens for s in alone[c].segments], c
        assert together[c].segments == alone[c].segments, c
    batched = (after.passes - before.passes) / max(1, after.iterations - before.iterations)
    assert batched > 1.5  # passes of different calls really ran in the same forward


@pytest.mark.slow
@pytest.mark.anyio
@all_loops
async def test_cancelling_a_call_releases_everything(tiny: aw.WhisperModel) -> None:
    long = load_audio(DATA / "long_40s.wav")
    async with aw.Runtime(tiny) as rt:
        reference = await rt.transcribe(DATA / "door.wav")
        live = rt.device.buffers_live  # device memory of an idle runtime
        for delay in (0.05, 0.4, None):  # early (encoding), later, and once the engine is decoding the call
            async with anyio.create_task_group() as tg:
                async def call(scope: anyio.CancelScope) -> None:
                    with scope:
                        await rt.transcribe(long)

                scope = anyio.CancelScope()
                tg.start_soon(call, scope)
                if delay is not None:
                    await anyio.sleep(delay)
                else:  # timed cancels depend on the machine's speed; this one waits for the decoder to be busy
                    with anyio.fail_after(60):
                        while rt.decoder_stats().active_tasks == 0:
                            await anyio.sleep(0.005)
                    await anyio.sleep(0.05)
                scope.cancel()
            st = rt.decoder_stats()
            assert st.active_tasks == 0 and st.waiting_tasks == 0, delay
            assert rt.buffer_pool.stats().in_use == 0 and rt.device.buffers_live == live
        assert rt.decoder_stats().cancelled >= 1  # at least one cancellation reached the engine mid-decode
        assert (await rt.transcribe(DATA / "door.wav")).segments == reference.segments


def _decoder_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("aiowhisper-decoder")]


@pytest.mark.anyio
@all_loops_fast_on_asyncio
async def test_closing_the_runtime_joins_the_decoder_threads(tiny: aw.WhisperModel) -> None:
    """The decoder engine's threads end with the runtime: after a failed call, after a call cancelled while
    the engine was being built (its first use), and after a completed one. (The runtime's host closes its
    services inside a cancelled scope: an unshielded wait there left the engine running.)"""
    assert _decoder_threads() == []
    async with aw.Runtime(tiny) as rt:
        with pytest.raises(aw.AudioError):
            await rt.transcribe(np.array([0.1, np.nan], np.float32))
        assert len(_decoder_threads()) == 2  # the engine and its second thread
    assert _decoder_threads() == []
    async with aw.Runtime(tiny) as rt:
        with anyio.move_on_after(0.01):  # during the first call's engine build
            await rt.transcribe(DATA / "door.wav")
        assert "door" in (await rt.transcribe(DATA / "door.wav")).text.lower()
        assert len(_decoder_threads()) == 2  # one engine: the cancelled build's, not a second one
    assert _decoder_threads() == []


@pytest.mark.anyio
@asyncio_only
async def test_bad_audio_fails_only_its_call(tiny: aw.WhisperModel) -> None:
    async with aw.Runtime(tiny) as rt:
        for bad in (np.array([0.1, np.nan], np.float32), np.zeros((2, 100), np.float32), np.zeros(0, np.float32),
                    np.arange(10), DATA / "missing.wav"):
            with pytest.raises(aw.AudioError):
                await rt.transcribe(bad)
        with pytest.raises(TypeError, match="unknown transcription option"):
            await rt.transcribe(DATA / "door.wav", beamsize=3)
        with pytest.raises(ValueError):
            await rt.transcribe(DATA / "door.wav", beam_size=0)
        assert "door" in (await rt.transcribe(DATA / "door.wav")).text.lower()


@pytest.mark.slow
@pytest.mark.anyio
@asyncio_only
async def test_transcribe_iter_yields_segments_as_windows_are_decoded(tiny: aw.WhisperModel) -> None:
    async with aw.Runtime(tiny) as rt:
        whole = await rt.transcribe(DATA / "long_40s.wav")
        stream = rt.transcribe_iter(DATA / "long_40s.wav")
        assert stream.info is None
        got = []
        async with stream:
            async for seg in stream:
                assert stream.info is not None and stream.info.duration == pytest.approx(41.2, abs=0.1)
                got.append(seg)
        assert got == whole.segments
        async with rt.transcribe_iter(DATA / "long_40s.wav") as early:  # break early: nothing left behind
            async for _ in early:
                break
        assert rt.decoder_stats().active_tasks == 0 and rt.buffer_pool.stats().in_use == 0


def test_encoder_only_model_cannot_transcribe(tmp_path: Any, tiny: aw.WhisperModel) -> None:
    from dataclasses import replace

    encoder_only = replace(tiny, decoder=None)

    async def go() -> None:
        async with aw.Runtime(encoder_only) as rt:
            assert (await rt.encode(DATA / "door.wav")).windows == 1
            with pytest.raises(aw.ModelError, match="no decoder"):
                await rt.transcribe(DATA / "door.wav")

    anyio.run(go)


@pytest.mark.slow
def test_sync_facade_transcribes_from_several_threads(tiny: aw.WhisperModel) -> None:
    clips = ["jfk.wav", "door.wav", "weather.wav"]
    results: dict[str, str] = {}
    with aw.Runtime.sync(tiny) as rt:
        expected = {c: rt.transcribe(DATA / c).text for c in clips}

        def worker(c: str) -> None:
            results[c] = rt.transcribe(DATA / c).text

        threads = [threading.Thread(target=worker, args=(c,)) for c in clips]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        segments = list(rt.transcribe_iter(DATA / "jfk.wav"))
    assert results == expected
    assert "".join(s.text for s in segments).strip() == expected["jfk.wav"]
