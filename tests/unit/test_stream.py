"""Streaming: exact finals under any chunking, partials, fairness, cancellation, bad chunks, backpressure,
bucketed context, resampling, the ``stream`` CLI command and the example script."""

from __future__ import annotations

import asyncio
import json
import math
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, AsyncIterator, Callable, Iterable, Sequence

import anyio
import numpy as np
import pytest

import aiowhisper_npu as aw
from aiowhisper_npu.audio.io import N_SAMPLES, SAMPLE_RATE, resample
from aiowhisper_npu.audio.mel import log_mel_windows
from aiowhisper_npu.devices.cpu import CpuDevice
from aiowhisper_npu.streaming.flow import StreamResampler
from aiowhisper_npu.streaming.stream import EncodeStream, StreamUpdate, context_positions
from tests.support import rel_l2
from tests.support.loops import asyncio_only, loops_fast_on_asyncio

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parents[2]
SHORT = ["quick_fox.wav", "numbers.wav", "weather.wav", "door.wav"]
# exactness does not depend on the event loop: those tests run on asyncio only (the suite must stay fast);
# flow control, sharing, cancellation and errors run on the default loops (tests.support.loops.LOOPS)


# ------------------------------------------------------------------------------------------------ helpers


class Source:
    """An async generator of chunks of ``audio`` with the given sizes; records what it yielded."""

    def __init__(self, audio: np.ndarray, sizes: Iterable[int], bad: dict[int, Any] | None = None):
        self.audio, self.sizes, self.bad = audio, list(sizes), bad or {}
        self.produced = 0
        self.closed = False

    async def __call__(self) -> AsyncIterator[Any]:
        try:
            pos = 0
            for i, n in enumerate(self.sizes):
                if i in self.bad:
                    yield self.bad[i]
                yield self.audio[pos : pos + n]
                self.produced = pos = pos + n
                await anyio.sleep(0)
        finally:
            self.closed = True


def fixed(total: int, size: int) -> list[int]:
    return [min(size, total - i) for i in range(0, total, size)]


def random_sizes(total: int, seed: int, high: int) -> list[int]:
    rng = np.random.default_rng(seed)
    out: list[int] = []
    while sum(out) < total:
        out.append(int(rng.integers(1, high)))
    out[-1] -= sum(out) - total
    return out


async def collect(stream: EncodeStream) -> list[StreamUpdate]:
    return [upd async for upd in stream]


def finals(updates: Sequence[StreamUpdate]) -> np.ndarray:
    return np.stack([u.hidden_states for u in updates if u.final])


def _tasks() -> int:
    return len(asyncio.all_tasks())


async def settle(cond: Callable[[], bool], timeout_s: float = 30.0) -> bool:
    """Yield to the loop until ``cond()`` holds (a detached reader unwinds a few steps after a break)."""
    deadline = time.monotonic() + timeout_s
    while not cond():
        if time.monotonic() > deadline:
            return False
        await anyio.sleep(0.01)
    return True


def _encode_refs(tiny: aw.WhisperModel, audios: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    async def go() -> dict[str, np.ndarray]:
        async with aw.Runtime(tiny) as rt:
            return {k: (await rt.encode(a)).hidden_states for k, a in audios.items()}

    return anyio.run(go)


@pytest.fixture(scope="module")
def clips(clip_paths: dict[str, Path]) -> dict[str, np.ndarray]:
    return {name: aw.load_audio(clip_paths[name]) for name in ["long_40s.wav", *SHORT]}


@pytest.fixture(scope="module")
def refs(tiny: aw.WhisperModel, clips: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``encode()`` of every clip, computed once."""
    return _encode_refs(tiny, clips)


# ------------------------------------------------------------------------------------------------ exactness


@pytest.mark.slow
@asyncio_only
@pytest.mark.parametrize("chunking", ["1s", "0.37s", "random"])
async def test_finals_equal_encode_bit_for_bit(tiny: aw.WhisperModel, clips: dict[str, np.ndarray],
                                               refs: dict[str, np.ndarray], chunking: str) -> None:
    audio = clips["long_40s.wav"]
    sizes = {"1s": fixed(audio.size, SAMPLE_RATE), "0.37s": fixed(audio.size, 5920),
             "random": random_sizes(audio.size, 7, 24000)}[chunking]
    every = 12.0 if chunking == "0.37s" else math.inf  # a few partials interleaved in one case
    async with aw.Runtime(tiny) as rt:
        updates = await collect(rt.encode_stream(Source(audio, sizes)(), update_every_s=every))
        assert rt.buffer_pool.in_use == 0
    fin = [u for u in updates if u.final]
    assert [(u.window, u.start_s) for u in fin] == [(0, 0.0), (1, 30.0)]
    assert fin[0].end_s == 30.0 and fin[1].end_s == pytest.approx(audio.size / SAMPLE_RATE)
    assert all(u.hidden_states.dtype == np.float32 and u.hidden_states.shape == (1500, 384) for u in fin)
    assert np.array_equal(finals(updates), refs["long_40s.wav"])
    if every == math.inf:
        assert len(updates) == 2


@pytest.mark.slow
@asyncio_only
async def test_many_tiny_chunks_including_single_samples(tiny: aw.WhisperModel, clips: dict[str, np.ndarray],
                                                         refs: dict[str, np.ndarray]) -> None:
    audio = clips["quick_fox.wav"]
    sizes = [1] * 700 + random_sizes(audio.size - 700, 3, 90)
    async with aw.Runtime(tiny) as rt:
        updates = await collect(rt.encode_stream(Source(audio, sizes)(), update_every_s=1.5))
        assert [u.final for u in updates][-1] and sum(u.final for u in updates) == 1
        assert np.array_equal(finals(updates), refs["quick_fox.wav"])
        last = [u for u in updates if not u.final][-1]  # a partial equals encode() of the audio it covers
        prefix = audio[: round(last.end_s * SAMPLE_RATE)]
        assert np.array_equal(last.hidden_states, (await rt.encode(prefix)).hidden_states[0])
        assert rt.buffer_pool.in_use == 0


@pytest.mark.slow
@asyncio_only
async def test_partials_come_first_and_respect_update_every_s(tiny: aw.WhisperModel,
                                                              clips: dict[str, np.ndarray],
                                                              refs: dict[str, np.ndarray]) -> None:
    audio, every = clips["long_40s.wav"], 4.0
    async with aw.Runtime(tiny) as rt:
        updates = await collect(rt.encode_stream(Source(audio, fixed(audio.size, 8000))(), update_every_s=every))
        first_final = next(i for i, u in enumerate(updates) if u.final)
        assert first_final > 0 and not any(u.final for u in updates[:first_final])
        assert np.array_equal(finals(updates), refs["long_40s.wav"])
        prev: dict[int, float] = {}
        for u in updates:
            assert u.latency_s >= 0 and u.compute_s > 0 and u.start_s == 30.0 * u.window
            if not u.final:
                assert u.end_s - prev.get(u.window, u.start_s) >= every - 1e-9  # at most one per 4 s of audio
                assert u.hidden_states.shape == (1500, 384) and u.n_ctx == 1500
            prev[u.window] = u.end_s
        windows = [u.window for u in updates]
        assert windows == sorted(windows)  # nothing for a window after its final
        part = next(u for u in updates if not u.final and u.window == 1)
        prefix = audio[N_SAMPLES : round(part.end_s * SAMPLE_RATE)]
        assert np.array_equal(part.hidden_states, (await rt.encode(prefix)).hidden_states[0])
        assert updates[-1].lag.updates == len(updates) and updates[-1].lag.finals == 2


# ------------------------------------------------------------------------------------------------ sharing


async def _lockstep(rt: aw.Runtime, audio: np.ndarray, stamps: list[float]) -> list[StreamUpdate]:
    """1 s chunks; the next chunk only after the previous one's update: identical partials every run."""
    got: list[anyio.Event] = []

    async def source() -> AsyncIterator[np.ndarray]:
        for i in range(0, audio.size, SAMPLE_RATE):
            got.append(anyio.Event())
            yield audio[i : i + SAMPLE_RATE]
            if i + SAMPLE_RATE < audio.size:
                await got[-1].wait()

    out: list[StreamUpdate] = []
    async with rt.encode_stream(source(), update_every_s=1.0, context="bucketed") as s:
        async for upd in s:
            out.append(upd)
            stamps.append(time.perf_counter())
            if len(out) <= len(got):
                got[len(out) - 1].set()
    return out


@pytest.mark.slow
async def test_four_concurrent_streams_equal_four_serial_runs(tiny: aw.WhisperModel,
                                                              clips: dict[str, np.ndarray],
                                                              refs: dict[str, np.ndarray]) -> None:
    """Four streams and a long 4-window request share a runtime: every stream's updates equal those of a
    run on its own, and the streams are not held back by the long request: each gets its first update
    before the long request is half done. Served in a fixed order instead of round-robin, the streams'
    requests would wait behind the long one (mutant "remove the round-robin", tests/README.md)."""
    long_mels = np.concatenate([log_mel_windows(clips["long_40s.wav"])] * 2)
    long_out: list[tuple[np.ndarray, aw.PipelineStats]] = []
    async with aw.Runtime(tiny) as rt:
        serial = [await _lockstep(rt, clips[name], []) for name in SHORT]
        stamps: list[list[float]] = [[] for _ in SHORT]
        together: list[list[StreamUpdate]] = [[] for _ in SHORT]

        async def run(i: int) -> None:
            together[i] = await _lockstep(rt, clips[SHORT[i]], stamps[i])

        async def long_request() -> None:
            long_out.append(await rt.encode_mels(long_mels))

        async with anyio.create_task_group() as tg:
            tg.start_soon(long_request)
            while rt.buffer_pool.in_use == 0:  # the long request has tiles in flight
                await anyio.sleep(0)
            for i in range(len(SHORT)):
                tg.start_soon(run, i)
        assert rt.buffer_pool.in_use == 0
    for name, alone, shared in zip(SHORT, serial, together):
        assert [(u.window, u.end_s, u.final, u.positions) for u in alone] == \
               [(u.window, u.end_s, u.final, u.positions) for u in shared]
        assert len(alone) >= 3 and alone[-1].final
        for a, b in zip(alone, shared):
            assert np.array_equal(a.hidden_states, b.hidden_states)
        assert np.array_equal(finals(shared), refs[name])
    assert max(s[0] for s in stamps) < min(s[-1] for s in stamps), "one stream finished before another began"
    hidden, long_stats = long_out[0]
    assert np.array_equal(hidden, np.concatenate([refs["long_40s.wav"]] * 2))
    # round-robin: each stream's first update came after 15-25 of the long request's 144 tiles were committed
    # (measured); served in a fixed order, after 143-144 of them
    commits = [e.end for e in long_stats.timeline if e.stage == "from_device"]
    before = [sum(c < s[0] for c in commits) for s in stamps]
    assert max(before) < len(commits) / 2, f"first updates after {before} of the long request's {len(commits)} tiles"


# ------------------------------------------------------------------------------------------------ cleanup


@pytest.mark.slow
async def test_break_out_of_a_bare_async_for(tiny: aw.WhisperModel, clips: dict[str, np.ndarray],
                                             refs: dict[str, np.ndarray]) -> None:
    audio = clips["long_40s.wav"]
    async with aw.Runtime(tiny) as rt:
        await rt.encode(audio[:1000])
        tasks = _tasks()
        src = Source(audio, fixed(audio.size, 4000))
        async for _upd in rt.encode_stream(src()):
            break
        tiles = rt.stats.tiles  # nothing is in flight here: a stream encodes only inside __anext__
        assert await settle(lambda: src.closed and _tasks() == tasks)
        assert rt.stats.tiles == tiles  # and nothing was encoded for the abandoned stream meanwhile
        door = clips["door.wav"]
        again = await collect(rt.encode_stream(Source(door, fixed(door.size, 3000))(), update_every_s=math.inf))
        assert np.array_equal(finals(again), refs["door.wav"])


@pytest.mark.slow
async def test_aclose_releases_the_reader_and_source(tiny: aw.WhisperModel, clips: dict[str, np.ndarray]) -> None:
    audio = clips["long_40s.wav"]
    async with aw.Runtime(tiny) as rt:
        await rt.encode(audio[:1000])
        tasks = _tasks()
        src = Source(audio, fixed(audio.size, 4000))
        stream = rt.encode_stream(src())
        upd = await stream.__anext__()
        assert not upd.final
        await stream.aclose()
        assert src.closed and _tasks() == tasks
        with pytest.raises(StopAsyncIteration):
            await stream.__anext__()
        await stream.aclose()  # idempotent
        src2 = Source(audio, fixed(audio.size, 4000))
        async with rt.encode_stream(src2()) as s:
            async for _upd in s:
                await s.aclose()
        assert src2.closed and _tasks() == tasks

        # aclose() from another task while the consumer's next update is being encoded: the encode runs to
        # its end (nothing cancels it), the consumer's next step ends the iteration, and every slot, device
        # buffer and task comes back
        assert isinstance(rt.device, CpuDevice)
        buffers = rt.device.buffers_live
        src3 = Source(audio, fixed(audio.size, 4000))
        stream3 = rt.encode_stream(src3())
        got: list[StreamUpdate] = []

        async def consume() -> None:
            async for upd in stream3:
                got.append(upd)

        async with anyio.create_task_group() as tg:
            tg.start_soon(consume)
            while not (got and rt.buffer_pool.in_use > 0):  # the second update is being encoded
                await anyio.sleep(0)
            n = len(got)
            await stream3.aclose()
            assert src3.closed
        assert len(got) <= n + 1  # at most the update that was being encoded
        assert _tasks() == tasks and rt.buffer_pool.in_use == 0 and rt.device.buffers_live == buffers


@pytest.mark.parametrize("mode", ["bare", "scoped"])
@loops_fast_on_asyncio
async def test_cancel_mid_encode(tiny: aw.WhisperModel, clips: dict[str, np.ndarray],
                                 refs: dict[str, np.ndarray], mode: str) -> None:
    audio, door = clips["long_40s.wav"], clips["door.wav"]
    async with aw.Runtime(tiny) as rt:
        await rt.encode(audio[:1000])
        tasks = _tasks()
        src = Source(audio, fixed(audio.size, 8000))
        seen: list[StreamUpdate] = []
        async with anyio.create_task_group() as tg:
            async def consume() -> None:
                if mode == "bare":
                    async for upd in rt.encode_stream(src()):
                        seen.append(upd)
                else:
                    async with rt.encode_stream(src()) as s:
                        async for upd in s:
                            seen.append(upd)

            async def cancel_while_tiles_in_flight() -> None:
                while not (seen and rt.buffer_pool.in_use > 0):  # the 2nd update is being encoded
                    await anyio.sleep(0)
                tg.cancel_scope.cancel()

            tg.start_soon(consume)
            tg.start_soon(cancel_while_tiles_in_flight)
        assert rt.buffer_pool.in_use == 0
        assert await settle(lambda: src.closed and _tasks() == tasks)
        again = await collect(rt.encode_stream(Source(door, fixed(door.size, 5000))(), update_every_s=math.inf))
        assert np.array_equal(finals(again), refs["door.wav"])


BAD: dict[str, tuple[Any, str]] = {
    "nan": (np.array([0.1, np.nan, 0.2], np.float32), "NaN"),
    "inf": (np.array([0.1, np.inf], np.float32), "non-finite"),
    "int16": (np.array([1, 2, 3], np.int16), "dtype int16"),
    "2-D": (np.zeros((160, 2), np.float32), "1-D mono"),
    "rate": ((np.zeros(441, np.float32), 44100), "44100 Hz"),
}


@pytest.mark.slow
async def test_bad_chunks_fail_only_their_stream(tiny: aw.WhisperModel, clips: dict[str, np.ndarray],
                                                 refs: dict[str, np.ndarray]) -> None:
    door, fox = clips["door.wav"], clips["quick_fox.wav"]
    errors: dict[str, BaseException] = {}
    sources = {k: Source(fox, fixed(fox.size, 4000), bad={3: v[0]}) for k, v in BAD.items()}
    good: list[StreamUpdate] = []
    async with aw.Runtime(tiny) as rt:
        async def bad(kind: str, scoped: bool) -> None:
            try:
                if scoped:
                    async with rt.encode_stream(sources[kind](), update_every_s=0.2) as s:
                        await collect(s)
                else:
                    await collect(rt.encode_stream(sources[kind](), update_every_s=0.2))
            except BaseException as exc:  # noqa: BLE001 - recorded and checked below
                errors[kind] = exc

        async def ok() -> None:
            good.extend(await collect(rt.encode_stream(Source(door, fixed(door.size, 1234))(), update_every_s=0.5)))

        async with anyio.create_task_group() as tg:
            for i, kind in enumerate(BAD):
                tg.start_soon(bad, kind, i % 2 == 1)
            tg.start_soon(ok)
        assert rt.buffer_pool.in_use == 0
        for kind, (_, fragment) in BAD.items():
            assert isinstance(errors.get(kind), aw.AudioError), (kind, errors.get(kind))
            assert fragment in str(errors[kind]) and "chunk 3" in str(errors[kind])
            assert sources[kind].closed
        assert np.array_equal(finals(good), refs["door.wav"])
        again = await collect(rt.encode_stream(Source(door, fixed(door.size, 999))(), update_every_s=math.inf))
        assert np.array_equal(finals(again), refs["door.wav"])


@asyncio_only
async def test_source_errors_and_options(tiny: aw.WhisperModel) -> None:
    class Broken(Exception):
        pass

    async def failing() -> AsyncIterator[np.ndarray]:
        yield np.zeros(1600, np.float32)
        raise Broken("socket closed")

    async with aw.Runtime(tiny) as rt:
        with pytest.raises(Broken):
            await collect(rt.encode_stream(failing(), update_every_s=math.inf))
        assert await collect(rt.encode_stream([], update_every_s=1.0)) == []  # empty stream: no updates
        assert len(await collect(rt.encode_stream([np.zeros(0, np.float32), np.ones(10, np.float32)]))) == 1
        for bad_opts in ({"context": "short"}, {"update_every_s": 0}, {"sample_rate": 0}, {"max_queued_s": 0},
                         {"bucket_margin_s": -1.0}):
            with pytest.raises(ValueError):
                rt.encode_stream([], **bad_opts)
        with pytest.raises(TypeError):
            rt.encode_stream(np.zeros(16000, np.float32))
    with pytest.raises(RuntimeError):
        rt.encode_stream([])


# ------------------------------------------------------------------------------------------------ flow control


@pytest.mark.slow
async def test_backpressure_bounds_queued_audio_and_keeps_finals(tiny: aw.WhisperModel,
                                                                 clips: dict[str, np.ndarray],
                                                                 refs: dict[str, np.ndarray]) -> None:
    audio, chunk, max_q = clips["long_40s.wav"], 1600, 2.0
    src = Source(audio, fixed(audio.size, chunk))  # as fast as possible: outruns the encoder
    ahead: list[float] = []
    async with aw.Runtime(tiny) as rt:
        async with rt.encode_stream(src(), update_every_s=0.5, context="bucketed", max_queued_s=max_q) as s:
            updates = []
            async for upd in s:
                updates.append(upd)
                ahead.append(src.produced / SAMPLE_RATE - upd.end_s)
        lag = s.lag
    assert lag.max_queued_audio_s <= max_q + chunk / SAMPLE_RATE
    assert max(ahead) <= 2 * max_q + 4 * chunk / SAMPLE_RATE  # the producer was held back
    assert lag.partials_skipped > 0 and sum(u.skipped for u in updates) == lag.partials_skipped
    assert len(updates) < audio.size / SAMPLE_RATE / 0.5  # coalesced, not one per 0.5 s
    assert np.array_equal(finals(updates), refs["long_40s.wav"])  # no final dropped
    assert lag.audio_s == pytest.approx(audio.size / SAMPLE_RATE) and lag.behind_s == 0.0
    assert 0 < lag.compute_s_per_audio_s and lag.queued_audio_s == 0.0


# ------------------------------------------------------------------------------------------------ bucketed


def test_context_positions() -> None:
    assert context_positions(1) == 256 and context_positions(256 * 320) == 256
    assert context_positions(256 * 320 + 1) == 512 and context_positions(N_SAMPLES) == 1500
    assert context_positions(5 * 256 * 320 + 1) == 1500
    assert context_positions(250 * 320, margin_positions=6) == 256
    assert context_positions(250 * 320, margin_positions=7) == 512  # bucket_margin_s: silence after the audio


@pytest.mark.slow
@asyncio_only
async def test_bucketed_partials(tiny: aw.WhisperModel, clips: dict[str, np.ndarray],
                                 refs: dict[str, np.ndarray]) -> None:
    audio = clips["long_40s.wav"][: 14 * SAMPLE_RATE]
    async with aw.Runtime(tiny) as rt:
        updates = await collect(rt.encode_stream(Source(audio, fixed(audio.size, SAMPLE_RATE))(), update_every_s=3.0,
                                          context="bucketed", max_queued_s=1.0))
        assert updates[-1].final and updates[-1].positions == 1500 and sum(u.final for u in updates) == 1
        full_tiles = (await rt.encode(audio[:1000])).stats.tiles
        partials = [u for u in updates if not u.final]
        assert len(partials) >= 2
        for u in partials:
            n = round(u.end_s * SAMPLE_RATE)
            assert u.positions == u.n_ctx == context_positions(n) and u.n_ctx % 256 == 0
            assert u.audio_positions == -(-n // 320) <= u.n_ctx
            mel = log_mel_windows(audio[:n])
            exact, _ = await rt.encode_mels(mel, u.n_ctx)
            assert np.array_equal(u.hidden_states, exact[0])
            assert u.stats.tiles < full_tiles  # less work than the full context
            full = (await rt.encode(audio[:n])).hidden_states[0]
            assert rel_l2(u.hidden_states[: u.audio_positions], full[: u.audio_positions]) < 0.5
        final = (await rt.encode(audio)).hidden_states
        assert np.array_equal(finals(updates), final)  # finals keep the full context


# ------------------------------------------------------------------------------------------------ resampling


@pytest.mark.parametrize("numpy_resampler", [False, True])
def test_stream_resampler_equals_whole_signal(monkeypatch: pytest.MonkeyPatch, numpy_resampler: bool) -> None:
    if numpy_resampler:
        monkeypatch.setitem(sys.modules, "soxr", None)  # audio.resample falls back to numpy
    x = np.random.default_rng(5).standard_normal(44100 + 123).astype(np.float32) * 0.1
    r = StreamResampler(44100)
    sizes = [1] * 50 + random_sizes(x.size - 50, 11, 3000)
    out, pos = [], 0
    for n in sizes:
        out.append(r.push(x[pos : pos + n]))
        pos += n
    out.append(r.flush())
    y, whole = np.concatenate(out), resample(x, 44100, 16000)
    assert y.shape == whole.shape
    if numpy_resampler:
        assert np.array_equal(y, whole)
    else:
        assert np.abs(y - whole).max() < 1e-6


@asyncio_only
async def test_sample_rate_resamples_like_the_whole_file(tiny: aw.WhisperModel, clip_paths: dict[str, Path]) -> None:
    path = clip_paths["door_44k_stereo.wav"]
    x44 = aw.load_audio(path, sr=44100)  # downmixed, not resampled
    sizes = random_sizes(x44.size, 2, 9000)
    chunks = [x44[sum(sizes[:i]) : sum(sizes[: i + 1])] for i in range(len(sizes))]
    chunks = [(c, 44100) if i % 2 else c for i, c in enumerate(chunks)]  # tuples and bare arrays mix
    async with aw.Runtime(tiny) as rt:
        updates = await collect(rt.encode_stream(chunks, sample_rate=44100, update_every_s=math.inf))
        whole = (await rt.encode(path)).hidden_states  # load_audio resamples the whole file at once
    assert len(updates) == 1 and updates[0].end_s == pytest.approx(x44.size * 16000 / 44100 / SAMPLE_RATE, abs=1e-4)
    assert rel_l2(finals(updates), whole) < 1e-4


# ------------------------------------------------------------------------------------------------ CLI, example


@pytest.mark.slow
def test_cli_stream_json(clip_paths: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    from aiowhisper_npu.cli.main import main

    assert main(["stream", str(clip_paths["door.wav"]), "--encoder", "--realtime", "--chunk-ms", "500", "--json",
                 "--loop", "asyncio"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    updates, summary = lines[:-1], lines[-1]
    assert summary["type"] == "summary" and summary["updates"] == len(updates) and summary["finals"] == 1
    assert all(u["type"] == "update" for u in updates) and updates[-1]["final"]
    assert updates[-1]["end_s"] == pytest.approx(summary["audio_s"]) and updates[-1]["hidden_shape"] == [1500, 384]
    assert all(not u["final"] and u["latency_ms"] >= 0 for u in updates[:-1]) and len(updates) >= 2


def test_cli_stream_text(clip_paths: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    from aiowhisper_npu.cli.main import main

    assert main(["stream", str(clip_paths["door.wav"]), "--encoder", "--chunk-ms", "250", "--context", "bucketed",
                 "--update-every-s", "0.5"]) == 0
    out = capsys.readouterr().out
    assert "FINAL" in out and "latency" in out and "1 final" in out


@pytest.mark.slow
def test_example_stream_file_runs() -> None:
    res = subprocess.run([sys.executable, str(ROOT / "examples" / "stream_file.py"), "--no-realtime",
                          "--chunk-ms", "500"], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert res.returncode == 0, res.stderr
    assert "FINAL" in res.stdout and "hello.wav" in res.stdout
