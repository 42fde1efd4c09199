"""Our encoder against CTranslate2 4.8.5 (fp32) on real weights and real speech: numbers and decoded text."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import aiowhisper_npu as aw
from aiowhisper_npu import numerics
from aiowhisper_npu.audio.io import split_windows
from tests.support import CLIPS, rel_l2
from tests.support.ct2_reference import CT2Reference
from tests.support.loops import asyncio_only

MONO_CLIPS = [c for c in CLIPS if "stereo" not in c]


async def _check_model(model: aw.WhisperModel, ref: CT2Reference, clip_paths: dict[str, Path]) -> None:
    async with aw.Runtime(model) as rt:
        for name in MONO_CLIPS:
            audio = aw.load_audio(clip_paths[name])
            out = await rt.encode(audio)
            windows = split_windows(audio)
            assert out.hidden_states.shape == (len(windows), 1500, model.dims.n_audio_state)
            for i, window in enumerate(windows):
                theirs = ref.encode(ref.mel(window))
                ours = out.hidden_states[i]
                err = rel_l2(ours, theirs)
                assert err <= 1e-3, f"{model.name} {name} window {i}: relative L2 {err:.2e}"
                assert ref.decode(ours) == ref.decode(theirs), f"{model.name} {name} window {i}"


@pytest.mark.slow
@pytest.mark.anyio
@asyncio_only
async def test_tiny_en_matches_ctranslate2(tiny: aw.WhisperModel, ct2_tiny: CT2Reference,
                                           clip_paths: dict[str, Path]) -> None:
    await _check_model(tiny, ct2_tiny, clip_paths)


@pytest.mark.slow
@pytest.mark.anyio
@asyncio_only
async def test_numpy_forms_match_ctranslate2(tiny: aw.WhisperModel, ct2_tiny: CT2Reference,
                                             clip_paths: dict[str, Path]) -> None:
    """The kernels' numpy forms (numpy passes and numpy.matmul, used when the C extensions are not built or
    the CPU lacks AVX-512) meet the same tolerance."""
    previous = numerics.use_native(False)
    try:
        await _check_model(tiny, ct2_tiny, clip_paths)
    finally:
        numerics.use_native(previous)


@pytest.mark.slow
@pytest.mark.anyio
@asyncio_only
@pytest.mark.timeout(300)  # the slowest test: ~27 s on an idle 2-core machine, ~66 s loaded
async def test_base_matches_ctranslate2(base: aw.WhisperModel, ct2_base: CT2Reference,
                                        clip_paths: dict[str, Path]) -> None:
    await _check_model(base, ct2_base, clip_paths)


@pytest.mark.slow
def test_decoded_text_is_the_spoken_text(tiny: aw.WhisperModel, ct2_base: CT2Reference,
                                         base: aw.WhisperModel, clip_paths: dict[str, Path]) -> None:
    """Sanity on the data itself: base decodes the short clips' own words from our hidden states."""
    import anyio

    async def go() -> dict[str, str]:
        async with aw.Runtime(base) as rt:
            return {n: ct2_base.decode((await rt.encode(clip_paths[n])).hidden_states[0])
                    for n in ("quick_fox.wav", "door.wav")}

    texts = anyio.run(go)
    norm = lambda s: "".join(ch for ch in s.lower() if ch.isalnum() or ch == " ").split()  # noqa: E731
    for name, text in texts.items():
        assert norm(text) == norm(CLIPS[name]), (name, text)


def test_log_mel_matches_faster_whisper(clip_paths: dict[str, Path], ct2_tiny: CT2Reference) -> None:
    audio = aw.load_audio(clip_paths["numbers.wav"])
    ours = aw.log_mel_windows(audio)[0]
    theirs = ct2_tiny.mel(split_windows(audio)[0])
    assert np.abs(ours - theirs).max() <= 1e-4
