"""Live captions: ``rt.captions`` (LocalAgreement-n commits over a trimmed buffer) and its agreement
policy on its own.

The stream tests run tiny.en for real. Their sources are plain lists, so the reader runs ahead of the
consumer up to ``max_queued_s`` and updates coalesce as timing allows: which updates exist varies from run
to run, so these tests assert invariants (committed text only grows, segments cover it, resources are
returned, work per update is bounded) and accuracy against offline ``transcribe()``, never exact updates.
"""

from __future__ import annotations

from typing import Any, AsyncIterator, Sequence

import anyio
import numpy as np
import pytest

import aiowhisper_npu as aw
from aiowhisper_npu.audio.io import SAMPLE_RATE, load_audio
from aiowhisper_npu.audio.mel_stream import IncrementalLogMel
from aiowhisper_npu.streaming.agreement import LocalAgreement, TimedWord
from aiowhisper_npu.streaming.hypothesis import DecodeSettings, decode_buffer
from aiowhisper_npu.transcription.fallback import suppress_token_ids
from aiowhisper_npu.transcription.metrics import word_error_rate as wer
from tests.support import DATA
from tests.support.loops import all_loops, asyncio_only, live_tasks, settle


def chunked(audio: np.ndarray, sizes: Sequence[int]) -> list[np.ndarray]:
    out, pos, i = [], 0, 0
    while pos < audio.size:
        n = sizes[i % len(sizes)]
        out.append(audio[pos : pos + n])
        pos, i = pos + n, i + 1
    return out


def check_updates(updates: list[aw.CaptionUpdate]) -> None:
    """The update invariants: committed only grows (by exactly ``new``), segments cover it, one final last."""
    previous = ""
    for u in updates:
        assert u.committed == previous + u.new, (previous, u.new, u.committed)
        assert " ".join(s.text for s in u.segments).split() == u.committed.split()
        assert all(a.end <= b.start + 1.0 and a.start <= a.end for a, b in zip(u.segments, u.segments[1:]))
        previous = u.committed
    assert [u.final for u in updates] == [False] * (len(updates) - 1) + [True]
    assert updates[-1].tentative == ""
    assert all(a.audio_s <= b.audio_s for a, b in zip(updates, updates[1:]))


async def collect(rt: aw.Runtime, chunks: Any, **options: Any) -> list[aw.CaptionUpdate]:
    async with rt.captions(chunks, **options) as s:
        return [u async for u in s]


# ---------------------------------------------------------------------------------------------- agreement


def tw(t: float, text: str, seg_end: bool = False) -> TimedWord:
    return TimedWord(t, t + 0.3, text, seg_end)


def test_agreement_commits_the_longest_common_prefix_of_the_last_n() -> None:
    la = LocalAgreement(2)
    assert la.insert([tw(0, " Ask"), tw(0.4, " not")]) == []  # one hypothesis: nothing agrees yet
    got = la.insert([tw(0, " ask"), tw(0.4, " not,"), tw(0.8, " what")])  # case and punctuation ignored
    assert [w.text for w in got] == [" ask", " not,"]  # the newest spelling
    assert [w.text for w in la.tentative] == [" what"]
    # the next hypothesis repeats the committed words (still in the buffer): they are not new again
    got = la.insert([tw(0, " Ask"), tw(0.4, " not"), tw(0.8, " what"), tw(1.2, " your")])
    assert [w.text for w in got] == [" what"] and [w.text for w in la.tentative] == [" your"]
    assert la.commit_all() == [tw(1.2, " your")] and la.tentative == []

    la3 = LocalAgreement(3)
    la3.insert([tw(0, " a"), tw(1, " b")])
    assert la3.insert([tw(0, " a"), tw(1, " b")]) == []  # two of three
    assert [w.text for w in la3.insert([tw(0, " a"), tw(1, " c")])] == [" a"]


def test_agreement_drops_repeated_committed_words_and_commits_before_a_cut() -> None:
    la = LocalAgreement(2)
    for _ in range(2):
        committed = la.insert([tw(0, " one"), tw(1, " two"), tw(2, " three")])
    assert [w.text for w in committed] == [" one", " two", " three"]
    # after a cut the new hypothesis re-hears "three" with a slightly later time: removed as a repeat
    la.insert([TimedWord(2.25, 2.5, " three"), tw(2.6, " four"), tw(3.0, " five")])
    assert [w.text for w in la.tentative] == [" four", " five"]
    assert [w.text for w in la.commit_before(2.9)] == [" four"]
    assert la.committed_end == pytest.approx(2.9)
    with pytest.raises(ValueError):
        LocalAgreement(0)


# ---------------------------------------------------------------------------------------------- streams


@pytest.mark.slow
@pytest.mark.anyio
@asyncio_only
@pytest.mark.timeout(300)
async def test_committed_text_only_grows_and_final_text_matches_offline(tiny: aw.WhisperModel) -> None:
    jfk, long = load_audio(DATA / "jfk.wav"), load_audio(DATA / "long_40s.wav")
    async with aw.Runtime(tiny) as rt:
        for audio, chunkings, limit in ((jfk, ([8000], [1600], [333, 12000, 4801]), 0.1),
                                        (long, ([8000],), 0.1)):
            offline = (await rt.transcribe(audio)).text
            for sizes in chunkings:
                updates = await collect(rt, chunked(audio, sizes))
                check_updates(updates)
                assert updates[-1].audio_s == pytest.approx(audio.size / SAMPLE_RATE)
                assert wer(updates[-1].committed, offline) <= limit, (updates[-1].committed, offline)
                assert rt.buffer_pool.stats().in_use == 0 and rt.decoder_stats().active_tasks == 0
        # the full encoder context works too, and an empty stream ends with one empty final update
        updates = await collect(rt, chunked(jfk, [8000]), context="full")
        check_updates(updates)
        assert wer(updates[-1].committed, offline_jfk := (await rt.transcribe(jfk)).text) <= 0.1, offline_jfk
        [only] = await collect(rt, [])
        assert only.final and only.committed == only.new == only.tentative == "" and only.segments == ()


@pytest.mark.slow
@pytest.mark.anyio
@asyncio_only
@pytest.mark.timeout(300)
async def test_silence_and_noise_commit_nothing(tiny: aw.WhisperModel) -> None:
    rng = np.random.default_rng(7)
    n = 20 * SAMPLE_RATE
    signals = {"zeros": np.zeros(n, np.float32), "noise": (0.05 * rng.standard_normal(n)).astype(np.float32),
               "hum": (0.1 * np.sin(np.arange(n) * 2 * np.pi * 100 / SAMPLE_RATE)).astype(np.float32)}
    async with aw.Runtime(tiny) as rt:
        for name, audio in signals.items():
            updates = await collect(rt, chunked(audio, [8000]))
            check_updates(updates)
            assert updates[-1].committed == "", name
            # a silent buffer is cut to its last silence_keep_s (2 s) plus the audio one update takes at most
            assert max(u.buffer_s for u in updates) <= 2.0 + 5.5, name


@pytest.mark.anyio
@asyncio_only
@pytest.mark.timeout(300)
async def test_a_nan_chunk_fails_only_its_stream(tiny: aw.WhisperModel) -> None:
    jfk = load_audio(DATA / "jfk.wav")
    bad = chunked(jfk, [8000])
    bad[5] = bad[5].copy()
    bad[5][100] = np.nan
    async with aw.Runtime(tiny) as rt:
        offline = (await rt.transcribe(jfk)).text
        good: list[aw.CaptionUpdate] = []
        failed: list[BaseException] = []

        async def bad_stream() -> None:
            try:
                await collect(rt, bad)
            except aw.AudioError as exc:
                failed.append(exc)

        async def good_stream() -> None:
            good.extend(await collect(rt, chunked(jfk, [8000])))

        async with anyio.create_task_group() as tg:
            tg.start_soon(bad_stream)
            tg.start_soon(good_stream)
        assert len(failed) == 1 and "chunk 5" in str(failed[0])
        check_updates(good)
        assert wer(good[-1].committed, offline) <= 0.1
        assert rt.buffer_pool.stats().in_use == 0 and rt.decoder_stats().active_tasks == 0
        again = await collect(rt, chunked(jfk, [8000]))  # the runtime keeps serving
        assert wer(again[-1].committed, offline) <= 0.1


async def paced(audio: np.ndarray, chunk: int, pause_s: float) -> AsyncIterator[np.ndarray]:
    for pos in range(0, audio.size, chunk):
        await anyio.sleep(pause_s)
        yield audio[pos : pos + chunk]


@pytest.mark.slow
@pytest.mark.anyio
@all_loops
@pytest.mark.timeout(300)
async def test_cancelling_or_closing_at_any_point_returns_everything(tiny: aw.WhisperModel) -> None:
    long = load_audio(DATA / "long_40s.wav")
    async with aw.Runtime(tiny) as rt:
        await collect(rt, chunked(long[: 3 * SAMPLE_RATE], [8000]))  # the decoder and its threads exist now
        baseline = live_tasks()
        for delay in (0.0, 0.03, 0.15, 0.4, 0.9, 1.7, 3.0):
            s = rt.captions(chunked(long, [8000]))
            with anyio.move_on_after(delay):
                async with s:
                    async for _ in s:
                        pass
            assert s.live_windows == 0 and s.buffered_samples == 0, delay
            st = rt.decoder_stats()
            assert st.active_tasks == 0 and st.waiting_tasks == 0, delay
            assert rt.buffer_pool.stats().in_use == 0, delay
            assert await settle(lambda: live_tasks() == baseline), delay
        # a bare async for that breaks, and aclose() from the consumer with a slow source
        stream = rt.captions(paced(long, 8000, 0.05))
        async for _ in stream:
            break
        await stream.aclose()
        async with rt.captions(paced(long, 8000, 0.05)) as s2:
            async for u in s2:
                if u.audio_s >= 2.0:
                    await s2.aclose()
        assert await settle(lambda: live_tasks() == baseline)
        assert rt.buffer_pool.stats().in_use == 0 and rt.decoder_stats().active_tasks == 0
        assert rt.decoder_stats().cancelled >= 1  # some cancellation reached the engine mid-decode
        assert "country" in (await collect(rt, [load_audio(DATA / "jfk.wav")]))[-1].committed


@pytest.mark.slow
@pytest.mark.anyio
@asyncio_only
@pytest.mark.timeout(600)
async def test_a_long_stream_keeps_work_and_memory_per_update_bounded(tiny: aw.WhisperModel) -> None:
    clips = [load_audio(DATA / f) for f in ("jfk.wav", "quick_fox.wav", "weather.wav", "door.wav")]
    long = load_audio(DATA / "long_40s.wav")
    pieces: list[np.ndarray] = []
    for i in range(2):  # 2.8 min: speech with silences of 0.5 .. 12 s between
        for j, clip in enumerate([long, *clips]):
            pieces += [clip, np.zeros(int(SAMPLE_RATE * (0.5, 3.0, 12.0, 1.0, 6.0)[(i + j) % 5]), np.float32)]
    audio = np.concatenate(pieces)
    assert audio.size > 165 * SAMPLE_RATE
    async with aw.Runtime(tiny) as rt:
        async with rt.captions(chunked(audio, [8000]), max_queued_s=2.0) as s:
            updates = []
            async for u in s:
                updates.append(u)
                assert s.live_windows == 0  # no decoder window outlives its update
                st = rt.decoder_stats()
                assert st.active_tasks == 0 and st.waiting_tasks == 0
                assert s.lag.queued_audio_s <= 2.5  # backpressure
                assert len(s._prompt_text) <= 800 and len(s._in_buffer) < 200
        check_updates(updates)
        buffers = [u.buffer_s for u in updates]
        late = buffers[len(buffers) // 2 :]
        assert max(buffers) <= 25.0  # the buffer is cut at committed sentences and in silence ...
        assert max(late) <= max(buffers[: len(buffers) // 2]) + 2.0  # ... and does not creep up over time
        # at most one window of positions per encode; the full context only for the few retried loops
        ctx = [u.n_ctx for u in updates]
        assert max(ctx) <= 1500 and sum(c == 1500 for c in ctx) <= 0.1 * len(ctx)
        assert float(np.median(ctx)) <= 1024
        assert rt.buffer_pool.stats().in_use == 0
        offline = (await rt.transcribe(audio)).text
        assert wer(updates[-1].committed, offline) <= 0.15, (updates[-1].committed, offline)


@pytest.mark.slow
@pytest.mark.anyio
@asyncio_only
@pytest.mark.timeout(300)
async def test_a_busy_stream_cuts_its_buffer_at_the_shorter_bounds(tiny: aw.WhisperModel) -> None:
    """Under load (compute per audio second over the last updates above ``busy_above``) the buffer is cut at
    ``busy_trim_s``/``busy_word_trim_s`` instead of ``trim_s``/``word_trim_s``; the switch has hysteresis."""
    audio = load_audio(DATA / "long_40s.wav")[: 20 * SAMPLE_RATE]

    async def lockstep(s_box: list[Any]) -> AsyncIterator[np.ndarray]:  # one 0.5 s chunk per update
        for pos in range(0, audio.size, 8000):
            yield audio[pos : pos + 8000]
            seen = s_box[0]
            while s_box[0] == seen and pos + 8000 < audio.size:
                await anyio.sleep(0.005)

    async with aw.Runtime(tiny) as rt:
        buffers = {}
        for name, above in (("never", 1e9), ("always", 1e-9)):
            box = [0]
            async with rt.captions(lockstep(box), busy_above=above, busy_trim_s=3.0,
                                            busy_word_trim_s=6.0) as s:
                updates = []
                async for u in s:
                    updates.append(u)
                    box[0] += 1
            check_updates(updates)
            assert all(u.busy == (name == "always") for u in updates[2:-1]), name
            buffers[name] = max(u.buffer_s for u in updates)
        assert buffers["always"] <= 6.0 + 2.0 < 10.0 < buffers["never"], buffers  # 2 s: a few updates without a commit
        with pytest.raises(ValueError, match="busy_trim_s"):
            rt.captions([], busy_trim_s=20.0)
        with pytest.raises(ValueError, match="busy_trim_s"):
            rt.captions([], busy_above=0)
        s = rt.captions([], busy_above=0.9)  # the switch's hysteresis: tests/test_busy.py
        assert s.busy_switch.above == 0.9 and not s.busy_switch.busy
        await s.aclose()


@pytest.mark.slow
@pytest.mark.anyio
@asyncio_only
@pytest.mark.timeout(300)
async def test_drafts_give_the_words_of_decoding_from_scratch(tiny: aw.WhisperModel) -> None:
    """A growing caption buffer (0.5 s steps, as the updates see it), each decoded with the previous
    hypothesis as its draft and from scratch: the same tokens and timed words, and most tokens confirmed
    from the draft. Then the streams: drafts are used by default, never with ``draft=False``."""
    jfk, long = load_audio(DATA / "jfk.wav"), load_audio(DATA / "long_40s.wav")
    async with aw.Runtime(tiny) as rt:
        decoder = await rt.recognizer()
        tok = decoder.tokenizer
        settings = DecodeSettings(suppress_tokens=tuple(suppress_token_ids(tok, (-1,))))
        for audio, prompt_text in ((jfk, ""), (long[10 * SAMPLE_RATE : 22 * SAMPLE_RATE], "The museum has more "
                                                "than three hundred paintings from the last century.")):
            previous: tuple[int, ...] = ()
            confirmed = total = 0
            for end in range(8000, audio.size + 8000, 8000):
                n = min(end, audio.size)
                lm = IncrementalLogMel(tiny.dims.n_mels)
                lm.push(audio[:n])
                window = await decoder.encode(lm.snapshot(), 512)
                try:
                    plain = await decode_buffer(decoder, tok, window, n, 1.0, prompt_text, settings)
                    drafted = await decode_buffer(decoder, tok, window, n, 1.0, prompt_text, settings, previous)
                finally:
                    window.close()
                assert drafted.ids == plain.ids and drafted.words == plain.words, n
                assert plain.draft_accepted == 0 and drafted.tokens == len(drafted.ids)
                confirmed += drafted.draft_accepted
                total += drafted.tokens
                previous = plain.ids
            assert confirmed >= 0.5 * total, (confirmed, total)
        for draft in (True, False):
            updates = await collect(rt, chunked(jfk, [8000]), draft=draft)
            check_updates(updates)
            assert (sum(u.draft_accepted for u in updates) > 0) == draft
        # the smallest bucketed context is min_context_s (10 s: 512 positions) unless asked otherwise
        assert {u.n_ctx for u in await collect(rt, chunked(jfk[: 2 * SAMPLE_RATE], [8000]))} == {512}
        short = await collect(rt, chunked(jfk[: 2 * SAMPLE_RATE], [8000]), min_context_s=0)
        assert short[0].n_ctx == 256


# ---------------------------------------------------------------------------------------------- surfaces


@pytest.mark.slow
def test_cli_stream_shows_captions(capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from aiowhisper_npu.cli.main import main

    assert main(["stream", str(DATA / "jfk.wav"), "--chunk-ms", "500", "--json", "--loop", "asyncio"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    updates, summary = lines[:-1], lines[-1]
    assert all(u["type"] == "caption" for u in updates) and summary["type"] == "summary"
    assert updates[-1]["final"] and not any(u["final"] for u in updates[:-1])
    assert summary["updates"] == len(updates) and summary["text"] == updates[-1]["committed"]
    assert "country" in summary["text"]
    for a, b in zip(updates, updates[1:]):
        assert b["committed"] == a["committed"] + b["new"]
    assert main(["stream", str(DATA / "door.wav"), "--realtime", "--chunk-ms", "500", "--loop", "asyncio"]) == 0
    out = capsys.readouterr().out
    assert "door" in out and "[final]" in out and "word commit latency p50" in out


@pytest.mark.slow
def test_example_live_captions_runs() -> None:
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])}
    res = subprocess.run([sys.executable, str(root / "examples" / "live_captions.py"), "--no-realtime"],
                         capture_output=True, text=True, timeout=300, cwd=root, env=env)
    assert res.returncode == 0, res.stderr
    assert "welcome" in res.stdout.lower() and "word commit latency" not in res.stdout


def test_sync_facade_transcribe_stream() -> None:
    jfk = load_audio(DATA / "jfk.wav")

    def chunks():  # a plain generator: pulled in a worker thread
        for i in range(0, jfk.size, 8000):
            yield jfk[i : i + 8000]

    with aw.Runtime.sync("tiny.en") as rt:
        updates = list(rt.captions(chunks()))
    check_updates(updates)
    assert "country" in updates[-1].committed
