"""The public API of the foundation: Runtime.encode on arrays and files, windows, and typed errors."""

from __future__ import annotations

import importlib
import platform
import sys
from pathlib import Path

import anyio
import numpy as np
import pytest

import aiowhisper_npu as aw
from aiowhisper_npu.audio.io import N_SAMPLES, SAMPLE_RATE
from tests.support import rel_l2
from tests.support.ct2_reference import CT2Reference
from tests.support.loops import loops_fast_on_asyncio

pytestmark = pytest.mark.anyio


@pytest.mark.slow
async def test_encode_array_and_path_agree(tiny: aw.WhisperModel, clip_paths: dict[str, Path]) -> None:
    path = clip_paths["quick_fox.wav"]
    async with aw.Runtime(tiny) as rt:
        by_path = await rt.encode(path)
        by_str = await rt.encode(str(path))
        by_array = await rt.encode(aw.load_audio(path))
    assert by_path.hidden_states.shape == (1, 1500, 384)
    assert by_path.hidden_states.dtype == np.float32
    assert np.array_equal(by_path.hidden_states, by_array.hidden_states)
    assert np.array_equal(by_path.hidden_states, by_str.hidden_states)
    assert by_path.audio_s == pytest.approx(aw.load_audio(path).size / SAMPLE_RATE)


@loops_fast_on_asyncio
async def test_runtime_accepts_a_model_name() -> None:
    async with aw.Runtime("tiny.en") as rt:
        out = await rt.encode(np.zeros(SAMPLE_RATE, np.float32))
    assert out.hidden_states.shape == (1, 1500, 384)


@pytest.mark.slow
async def test_windows_are_independent_30s_windows(tiny: aw.WhisperModel, clip_paths: dict[str, Path]) -> None:
    """hidden_states[i] is window i encoded on its own, normalised by its own maximum."""
    audio = aw.load_audio(clip_paths["long_40s.wav"])
    async with aw.Runtime(tiny) as rt:
        whole = await rt.encode(audio)
        first = await rt.encode(audio[:N_SAMPLES])
        second = await rt.encode(audio[N_SAMPLES:])
    assert whole.hidden_states.shape == (2, 1500, 384)
    assert np.array_equal(whole.hidden_states[0], first.hidden_states[0])
    assert np.array_equal(whole.hidden_states[1], second.hidden_states[0])
    exact = np.zeros(2 * N_SAMPLES, np.float32)
    async with aw.Runtime(tiny) as rt:
        assert (await rt.encode(exact)).hidden_states.shape[0] == 2  # no empty third window


@loops_fast_on_asyncio
async def test_44k_stereo_file_encodes_like_the_16k_original(tiny: aw.WhisperModel, ct2_tiny: CT2Reference,
                                                           clip_paths: dict[str, Path]) -> None:
    async with aw.Runtime(tiny) as rt:
        stereo = await rt.encode(clip_paths["door_44k_stereo.wav"])
        mono = await rt.encode(clip_paths["door.wav"])
    assert stereo.hidden_states.shape == (1, 1500, 384)
    assert rel_l2(stereo.hidden_states, mono.hidden_states) < 0.1
    assert ct2_tiny.decode(stereo.hidden_states[0]) == ct2_tiny.decode(mono.hidden_states[0])


@pytest.fixture(scope="module")
def good_audio(tiny: aw.WhisperModel) -> tuple[np.ndarray, np.ndarray]:
    """One second of noise and its hidden states, encoded on its own."""
    audio = np.random.default_rng(1).standard_normal(SAMPLE_RATE).astype(np.float32) * 0.1

    async def encode() -> np.ndarray:
        async with aw.Runtime(tiny) as rt:
            return (await rt.encode(audio)).hidden_states

    return audio, anyio.run(encode)


@pytest.mark.parametrize("bad, words", [
    (np.array([0.1, np.nan, 0.2], np.float32), "NaN"),
    (np.array([0.1, np.inf], np.float32), "inf"),
    (np.zeros(0, np.float32), "empty"),
    (np.zeros((2, 100), np.float32), "shape"),
    (np.zeros(100, np.int16), "int16"),
])
@loops_fast_on_asyncio
async def test_bad_audio_is_a_typed_error_and_runtime_stays_usable(
        tiny: aw.WhisperModel, good_audio: tuple[np.ndarray, np.ndarray], bad: np.ndarray, words: str) -> None:
    """Bad audio is rejected while another request has tiles in flight, which it leaves undisturbed."""
    good, alone = good_audio
    async with aw.Runtime(tiny) as rt:
        other: list[aw.EncoderOutput] = []
        async with anyio.create_task_group() as tg:
            async def in_flight() -> None:
                other.append(await rt.encode(good))

            tg.start_soon(in_flight)
            while rt.buffer_pool.in_use == 0:  # the other request's tiles are in flight
                await anyio.sleep(0)
            with pytest.raises(aw.AudioError, match=words):
                await rt.encode(bad)
            with pytest.raises(ValueError):  # AudioError is also a ValueError
                await rt.encode(bad)
            assert rt.buffer_pool.in_use > 0  # still in flight: rejected without waiting for it
        assert rt.buffer_pool.in_use == 0
        assert np.array_equal(other[0].hidden_states, alone)
        out = await rt.encode(np.zeros(1000, np.float32))
        assert out.hidden_states.shape == (1, 1500, 384)


async def test_missing_audio_file(tiny: aw.WhisperModel, tmp_path: Path) -> None:
    async with aw.Runtime(tiny) as rt:
        with pytest.raises(aw.AudioError, match="nope.wav"):
            await rt.encode(tmp_path / "nope.wav")
        garbage = tmp_path / "garbage.wav"
        garbage.write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk" * 4)
        with pytest.raises(aw.AudioError):
            await rt.encode(garbage)


async def test_model_and_backend_errors(tmp_path: Path) -> None:
    with pytest.raises(aw.ModelError, match="tiny.en"):
        async with aw.Runtime("no-such-model"):
            pass
    with pytest.raises(aw.ModelError):
        async with aw.Runtime(tmp_path / "missing-dir"):
            pass
    with pytest.raises(aw.BackendUnavailable, match="cpu"):
        async with aw.Runtime("tiny.en", backend="quantum"):
            pass
    assert issubclass(aw.AudioError, aw.AiowhisperError) and issubclass(aw.DeviceError, aw.AiowhisperError)


async def test_encode_outside_context_is_an_error(tiny: aw.WhisperModel) -> None:
    rt = aw.Runtime(tiny)
    with pytest.raises(RuntimeError, match="async with"):
        await rt.encode(np.zeros(100, np.float32))


def test_log_mel_spectrogram_shape() -> None:
    audio = np.random.default_rng(0).standard_normal(SAMPLE_RATE).astype(np.float32) * 0.1
    assert aw.log_mel_spectrogram(audio).shape == (80, 100)
    assert aw.log_mel_spectrogram(audio, n_mels=128).shape == (128, 100)


@pytest.mark.skipif(not (sys.platform == "linux" and platform.machine() == "x86_64"),
                    reason="the C kernels are checked where CI builds them: x86-64 Linux")
@pytest.mark.parametrize("name", ["_fastmath", "_gemm", "_gemm_bf16", "_attention", "_gemv"])
def test_c_extensions_are_built(name: str) -> None:
    """setup.py builds them with optional=True, which would hide a compile error behind the numpy forms."""
    importlib.import_module(f"aiowhisper_npu.native.{name}")


def test_info_reports_which_element_wise_kernels_run() -> None:
    from aiowhisper_npu import numerics
    from aiowhisper_npu.cli.info import collect_info, format_info

    info = collect_info()
    assert info["element_wise"].startswith("C ") == numerics.native_available()
    assert f"element-wise kernels: {info['element_wise']}" in format_info(info)
    assert info["linear_layers"].startswith("packed") == numerics.packed_gemm_available()
    assert f"linear layers: {info['linear_layers']}" in format_info(info)
    assert info["attention"].startswith("fused") == numerics.fused_attention_available()
