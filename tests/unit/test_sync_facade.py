"""The blocking facade (``aw.Runtime.sync`` / ``aw.SyncRuntime``): the same results as the async runtime,
from many threads at once, on every event loop, with streams fed by plain generators, clean shutdown."""

from __future__ import annotations

import math
import threading
from pathlib import Path
from typing import Any, Iterator

import anyio
import numpy as np
import pytest

import aiowhisper_npu as aw
from aiowhisper_npu.audio.io import SAMPLE_RATE
from tests.support.loops import TRIO, UVLOOP, lane_threads, run_guarded

CLIPS = ["quick_fox.wav", "numbers.wav", "weather.wav", "door.wav"]


@pytest.fixture(scope="module")
def audios(clip_paths: dict[str, Path]) -> dict[str, np.ndarray]:
    return {name: aw.load_audio(clip_paths[name]) for name in CLIPS}


@pytest.fixture(scope="module")
def refs(tiny: aw.WhisperModel, audios: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Each clip encoded alone by the async runtime."""
    async def go() -> dict[str, np.ndarray]:
        async with aw.Runtime(tiny) as rt:
            return {k: (await rt.encode(a)).hidden_states for k, a in audios.items()}

    return anyio.run(go)


def _portal_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if "-portal-" in t.name]


def chunks(audio: np.ndarray, size: int, closed: list[bool] | None = None) -> Iterator[np.ndarray]:
    """A plain generator of chunks (the facade pulls it in a worker thread)."""
    try:
        for i in range(0, audio.size, size):
            yield audio[i : i + size]
    finally:
        if closed is not None:
            closed.append(True)


def test_facade_encodes_like_the_async_runtime(tiny: aw.WhisperModel, clip_paths: dict[str, Path],
                                               refs: dict[str, np.ndarray]) -> None:
    with aw.Runtime.sync(tiny) as rt:
        assert isinstance(rt, aw.SyncRuntime) and isinstance(rt.runtime, aw.Runtime)
        out = rt.encode(clip_paths["quick_fox.wav"])
        assert np.array_equal(out.hidden_states, refs["quick_fox.wav"])
        mels, _ = rt.encode_mels(aw.log_mel_windows(aw.load_audio(clip_paths["door.wav"])))
        assert np.array_equal(mels, refs["door.wav"])
        with pytest.raises(aw.AudioError, match="NaN"):  # typed errors cross the portal as themselves
            rt.encode(np.array([0.1, np.nan], np.float32))
        assert rt.dims.n_audio_state == 384 and rt.stats.tiles > 0
        assert rt.call(lambda r: r.buffer_pool.in_use) == 0
    assert _portal_threads() == [] and lane_threads() == []
    with pytest.raises(RuntimeError, match="not open"):
        rt.encode(np.zeros(1600, np.float32))
    rt.close()  # idempotent


@pytest.mark.slow
def test_many_threads_share_one_facade(tiny: aw.WhisperModel, audios: dict[str, np.ndarray],
                                       refs: dict[str, np.ndarray]) -> None:
    results: dict[str, list[np.ndarray]] = {name: [] for name in CLIPS}
    streamed: list[Any] = []
    errors: list[BaseException] = []
    start = threading.Barrier(len(CLIPS) + 1)

    def encoder(name: str) -> None:
        try:
            start.wait()
            for _ in range(2):
                results[name].append(rt.encode(audios[name]).hidden_states)
        except BaseException as exc:  # noqa: BLE001 - checked below
            errors.append(exc)

    def streamer() -> None:
        try:
            start.wait()
            for upd in rt.encode_stream(chunks(audios["numbers.wav"], 4000), update_every_s=1.0):
                streamed.append(upd)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    def scenario() -> None:
        threads = [threading.Thread(target=encoder, args=(n,)) for n in CLIPS]
        threads.append(threading.Thread(target=streamer))
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    with aw.Runtime.sync(tiny) as rt:
        run_guarded(scenario)
        assert rt.call(lambda r: r.buffer_pool.in_use) == 0
    assert not errors, errors
    for name in CLIPS:
        assert len(results[name]) == 2
        for got in results[name]:
            assert np.array_equal(got, refs[name]), name
    finals = [u for u in streamed if u.final]
    assert len(finals) == 1 and np.array_equal(finals[0].hidden_states, refs["numbers.wav"][0])
    assert finals[0].end_s == pytest.approx(audios["numbers.wav"].size / SAMPLE_RATE)
    assert _portal_threads() == [] and lane_threads() == []


@pytest.mark.slow
@pytest.mark.parametrize("loop", [TRIO, UVLOOP])
def test_facade_on_other_event_loops(tiny: aw.WhisperModel, audios: dict[str, np.ndarray],
                                     refs: dict[str, np.ndarray], loop: tuple[str, dict[str, Any]]) -> None:
    closed: list[bool] = []
    with aw.SyncRuntime(tiny, event_loop=loop[0], event_loop_options=loop[1]) as rt:
        both: list[np.ndarray] = []
        threads = [threading.Thread(target=lambda n=n: both.append(rt.encode(audios[n]).hidden_states))
                   for n in ("door.wav", "door.wav")]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(both) == 2 and all(np.array_equal(b, refs["door.wav"]) for b in both)
        updates = list(rt.encode_stream(chunks(audios["weather.wav"], 3000, closed), update_every_s=math.inf))
        assert len(updates) == 1 and np.array_equal(updates[0].hidden_states, refs["weather.wav"][0])
    assert closed == [True]
    assert _portal_threads() == [] and lane_threads() == []


def test_facade_stream_closed_early(tiny: aw.WhisperModel, audios: dict[str, np.ndarray]) -> None:
    closed: list[bool] = []
    with aw.Runtime.sync(tiny) as rt:
        with rt.encode_stream(chunks(audios["numbers.wav"], 1600, closed), update_every_s=0.5) as s:
            for upd in s:
                assert not upd.final
                break
        assert closed == [True]  # the generator's finally ran
        assert list(s) == []  # closed: nothing more
        assert rt.call(lambda r: r.buffer_pool.in_use) == 0
        # a call from the runtime's own loop thread cannot block that loop: refused
        refused = rt.call(lambda r: _attempt(lambda: rt.encode(np.zeros(1600, np.float32))))
        assert isinstance(refused, RuntimeError)


def _attempt(fn: Any) -> Any:
    try:
        return fn()
    except BaseException as exc:  # noqa: BLE001 - returned for the check
        return exc


def test_close_while_other_threads_call(tiny: aw.WhisperModel, audios: dict[str, np.ndarray]) -> None:
    """Calls in flight when the facade closes fail cleanly; nothing hangs, nothing is left behind."""
    outcomes: list[Any] = []
    long = np.concatenate([audios[n] for n in CLIPS] * 4)
    rt = aw.SyncRuntime(tiny).open()
    started = threading.Barrier(4)

    def caller() -> None:
        started.wait()
        outcomes.append(_attempt(lambda: rt.encode(long)))

    def scenario() -> None:
        threads = [threading.Thread(target=caller) for _ in range(3)]
        for t in threads:
            t.start()
        started.wait()
        while rt.call(lambda r: r.buffer_pool.in_use) == 0:
            pass
        rt.close()
        for t in threads:
            t.join()

    run_guarded(scenario)
    assert len(outcomes) == 3
    assert all(isinstance(o, RuntimeError) or isinstance(o, aw.EncoderOutput) for o in outcomes), outcomes
    assert any(isinstance(o, RuntimeError) for o in outcomes)
    assert _portal_threads() == [] and lane_threads() == []
