"""The names renamed by issue 22 still work for one release, and warn with DeprecationWarning."""

from __future__ import annotations

import importlib

import numpy as np
import pytest

import aiowhisper_npu as aw
from aiowhisper_npu.audio.io import SAMPLE_RATE
from tests.support.loops import asyncio_only

AUDIO = (np.random.default_rng(0).standard_normal(SAMPLE_RATE) * 0.05).astype(np.float32)


@pytest.mark.parametrize("module, old, new", [
    ("aiowhisper_npu", "AudioStream", "EncodeStream"),
    ("aiowhisper_npu", "TranscriptionStream", "SegmentStream"),
    ("aiowhisper_npu.streaming.stream", "AudioStream", "EncodeStream"),
    ("aiowhisper_npu.runtime.transcriber", "TranscriptionStream", "SegmentStream"),
])
def test_renamed_classes(module: str, old: str, new: str) -> None:
    mod = importlib.import_module(module)
    with pytest.warns(DeprecationWarning, match=f"{old} is deprecated; use .*{new}"):
        cls = getattr(mod, old)
    assert cls is getattr(mod, new)
    with pytest.raises(AttributeError):
        _ = mod.NoSuchName


@pytest.mark.anyio
@asyncio_only
async def test_renamed_runtime_methods(tiny: aw.WhisperModel) -> None:
    async with aw.Runtime(tiny) as rt:
        with pytest.warns(DeprecationWarning, match=r"Runtime.stream\(\) is deprecated; use Runtime.encode_stream"):
            stream = rt.stream([AUDIO], update_every_s=float("inf"))
        assert isinstance(stream, aw.EncodeStream)
        async with stream as s:
            [upd] = [u async for u in s]
        assert upd.final and np.array_equal(upd.hidden_states, (await rt.encode(AUDIO)).hidden_states[0])
        with pytest.warns(DeprecationWarning, match=r"Runtime.transcribe_stream\(\) is deprecated; use Runtime.capt"):
            captions = rt.transcribe_stream([AUDIO])
        assert isinstance(captions, aw.CaptionStream)
        async with captions as c:
            updates = [u async for u in c]
        assert updates[-1].final


def test_renamed_sync_methods(tiny: aw.WhisperModel) -> None:
    with aw.Runtime.sync(tiny) as rt:
        assert isinstance(rt, aw.SyncRuntime)
        with pytest.warns(DeprecationWarning, match=r"SyncRuntime.stream\(\) is deprecated"):
            updates = list(rt.stream([AUDIO], update_every_s=float("inf")))
        assert len(updates) == 1 and updates[0].final
        with pytest.warns(DeprecationWarning, match=r"SyncRuntime.transcribe_stream\(\) is deprecated"):
            captions = list(rt.transcribe_stream([AUDIO]))
        assert captions[-1].final


def test_runtime_sync_is_the_facade() -> None:
    """``Runtime.sync`` is the blocking facade's class, set by :mod:`aiowhisper_npu.runtime.sync`."""
    assert aw.Runtime.sync is aw.SyncRuntime
