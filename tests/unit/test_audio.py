"""Audio input: validation, WAV decoding (numpy only), other formats, resampling, 30 s windows."""

from __future__ import annotations

import json
import struct
import sys
import wave
from pathlib import Path

import numpy as np
import pytest

from aiowhisper_npu.audio import io as A
from aiowhisper_npu.audio.io import N_SAMPLES, load_audio, resample, split_windows, validate_audio
from aiowhisper_npu.errors import AudioError

DATA = Path(__file__).parents[1] / "data"


def _no_module(monkeypatch: pytest.MonkeyPatch, *names: str) -> None:
    """Make ``import name`` raise ImportError (as if the optional package were not installed)."""
    for name in names:
        monkeypatch.setitem(sys.modules, name, None)


def _write_wav(path: Path, frames: bytes, *, tag: int, channels: int, rate: int, width: int,
               extensible: bool = False, extra_chunk: bytes = b"", data_size: int | None = None) -> None:
    """A RIFF/WAVE writer independent of the reader under test."""
    block = channels * width
    tag_field = 0xFFFE if extensible else tag
    fmt = struct.pack("<HHIIHH", tag_field, channels, rate, rate * block, block, 8 * width)
    if extensible:  # cbSize, valid bits, channel mask, SubFormat GUID (tag + KSDATAFORMAT suffix)
        fmt += struct.pack("<HHI", 22, 8 * width, 0) + struct.pack("<H", tag) + bytes.fromhex(
            "000000001000800000aa00389b71")
    elif tag == 3:
        fmt += struct.pack("<H", 0)
    size = len(frames) if data_size is None else data_size
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + extra_chunk
    body += b"data" + struct.pack("<I", size) + frames + (b"\0" if len(frames) % 2 else b"")
    path.write_bytes(b"RIFF" + struct.pack("<I", len(body)) + body)


# ------------------------------------------------------------------------------------------------- constants


def test_constants_are_whispers() -> None:
    assert (A.SAMPLE_RATE, A.N_FFT, A.HOP_LENGTH, A.CHUNK_LENGTH) == (16000, 400, 160, 30)
    assert (A.N_SAMPLES, A.N_FRAMES) == (480000, 3000)


# ------------------------------------------------------------------------------------------ validate_audio


def test_validate_converts_float64_and_makes_contiguous() -> None:
    x = np.linspace(-1, 1, 1001)  # float64
    out = validate_audio(x[::2])
    assert out.dtype == np.float32 and out.flags.c_contiguous and out.shape == (501,)
    np.testing.assert_array_equal(out, x[::2].astype(np.float32))
    y = np.zeros(10, np.float32)
    assert validate_audio(y) is y  # nothing to convert: no copy
    assert validate_audio([0.0, 0.5]).dtype == np.float32


@pytest.mark.parametrize(
    ("value", "fragments"),
    [
        (np.array([0.0, np.nan, 1.0, np.nan], np.float32), ["2 non-finite", "2 NaN", "first at index 1"]),
        (np.array([0.0, 0.0, np.inf, -np.inf]), ["2 non-finite", "0 NaN", "first at index 2"]),
        (np.array([0.0, 1e300]), ["1 non-finite", "float32 range", "index 1"]),
        (np.zeros(0, np.float32), ["empty"]),
        ([], ["empty"]),
        (np.zeros((100, 2), np.float32), ["shape (100, 2)", "downmix", "load_audio"]),
        (np.zeros((1, 1, 5), np.float32), ["shape (1, 1, 5)"]),
        (np.float32(0.5), ["shape ()"]),
        (np.zeros(10, np.int16), ["int16", "load_audio"]),
        (np.zeros(10, np.uint8), ["uint8", "load_audio"]),
        (np.zeros(10, np.complex64), ["complex64"]),
        (np.array([0.1, "a"], dtype=object), ["object"]),
        (np.array(["x", "y"]), ["<U1"]),
        ([[0.0, 1.0], [0.0]], ["cannot be converted"]),
    ],
)
def test_validate_rejects(value: object, fragments: list[str]) -> None:
    with pytest.raises(AudioError) as info:
        validate_audio(value, name="clip")
    message = str(info.value)
    assert message.startswith("clip:")
    for fragment in fragments:
        assert fragment in message
    assert isinstance(info.value, ValueError)


# ---------------------------------------------------------------------------------------- WAV, numpy only

PCM_CASES = {  # width: (numpy dtype of the stored integers, full scale, offset)
    1: (np.uint8, 128.0, 128),
    2: (np.dtype("<i2"), 32768.0, 0),
    4: (np.dtype("<i4"), 2147483648.0, 0),
}


@pytest.fixture(autouse=False)
def no_extras(monkeypatch: pytest.MonkeyPatch) -> None:
    _no_module(monkeypatch, "soundfile", "av", "soxr")


@pytest.mark.parametrize("width", [1, 2, 4])
@pytest.mark.parametrize("extensible", [False, True])
def test_pcm_wav(tmp_path: Path, no_extras: None, width: int, extensible: bool) -> None:
    dtype, scale, offset = PCM_CASES[width]
    rng = np.random.default_rng(width)
    ints = rng.integers(np.iinfo(dtype).min, np.iinfo(dtype).max, size=999, endpoint=True).astype(dtype)
    path = tmp_path / "pcm.wav"
    _write_wav(path, ints.tobytes(), tag=1, channels=1, rate=16000, width=width, extensible=extensible)
    expected = (ints.astype(np.float64) - offset) / scale
    np.testing.assert_allclose(load_audio(path), expected, rtol=1e-7, atol=0)


@pytest.mark.parametrize("extensible", [False, True])
def test_pcm24_wav(tmp_path: Path, no_extras: None, extensible: bool) -> None:
    ints = np.array([0, 1, -1, 2**23 - 1, -(2**23), 12345, -54321], dtype=np.int32)
    raw = np.stack([(ints >> s) & 0xFF for s in (0, 8, 16)], axis=1).astype(np.uint8).tobytes()
    path = tmp_path / "pcm24.wav"
    _write_wav(path, raw, tag=1, channels=1, rate=16000, width=3, extensible=extensible)
    np.testing.assert_array_equal(load_audio(path), (ints / 2.0**23).astype(np.float32))


@pytest.mark.parametrize("dtype", ["<f4", "<f8"])
@pytest.mark.parametrize("extensible", [False, True])
def test_float_wav(tmp_path: Path, no_extras: None, dtype: str, extensible: bool) -> None:
    x = np.random.default_rng(0).uniform(-1, 1, 1234).astype(dtype)
    path = tmp_path / "float.wav"
    odd_chunk = b"LIST" + struct.pack("<I", 5) + b"INFOx\0"  # odd size + pad byte before the data chunk
    _write_wav(path, x.tobytes(), tag=3, channels=1, rate=16000, width=x.itemsize, extensible=extensible,
               extra_chunk=odd_chunk)
    np.testing.assert_array_equal(load_audio(path), x.astype(np.float32))


def test_streamed_wav_with_oversized_data_chunk(tmp_path: Path, no_extras: None) -> None:
    x = np.linspace(-0.5, 0.5, 301, dtype=np.float32)
    path = tmp_path / "streamed.wav"
    _write_wav(path, x.tobytes() + b"\x01\x02", tag=3, channels=1, rate=16000, width=4, data_size=0xFFFFFFFF)
    np.testing.assert_array_equal(load_audio(path), x)  # trailing partial frame dropped


def test_stdlib_written_stereo_wav_is_averaged(tmp_path: Path, no_extras: None) -> None:
    left = np.arange(-500, 500, dtype=np.int16) * 30
    right = -left // 3
    path = tmp_path / "stereo.wav"
    with wave.open(str(path), "wb") as w:
        w.setnchannels(2)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes(np.stack([left, right], axis=1).astype("<i2").tobytes())
    expected = ((left.astype(np.float64) + right) / 2 / 32768).astype(np.float32)
    np.testing.assert_array_equal(load_audio(path), expected)


def test_soundfile_written_wav_variants(
    tmp_path: Path, no_extras: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delitem(sys.modules, "soundfile")
    sf = pytest.importorskip("soundfile")
    _no_module(monkeypatch, "soundfile")
    x = np.random.default_rng(1).uniform(-0.9, 0.9, (800, 3)).astype(np.float32)
    variants = [("WAV", "FLOAT", 0), ("WAVEX", "FLOAT", 0), ("WAVEX", "PCM_24", 2**-23),
                ("WAV", "PCM_16", 2**-15), ("WAV", "PCM_U8", 2**-7), ("WAVEX", "PCM_32", 2**-31)]
    for fmt, subtype, tol in variants:
        path = tmp_path / f"{fmt}_{subtype}.wav"
        sf.write(str(path), x, 16000, format=fmt, subtype=subtype)
        expected = x.mean(axis=1)
        np.testing.assert_allclose(load_audio(path), expected, atol=tol + 1e-7, err_msg=f"{fmt} {subtype}")


# ------------------------------------------------------------------------------------------ other formats


def test_flac_through_soundfile_and_pyav(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sf = pytest.importorskip("soundfile")
    x = load_audio(DATA / "door.wav")
    path = tmp_path / "door.flac"
    sf.write(str(path), x, 16000, subtype="PCM_16")
    np.testing.assert_array_equal(load_audio(path), x)  # lossless 16-bit round trip
    pytest.importorskip("av")
    _no_module(monkeypatch, "soundfile")
    np.testing.assert_array_equal(load_audio(path), x)


def test_non_wav_without_extras_names_the_extra(tmp_path: Path, no_extras: None) -> None:
    path = tmp_path / "speech.flac"
    path.write_bytes(b"fLaC" + bytes(100))
    with pytest.raises(AudioError, match=r"speech\.flac.*not a WAV file.*aiowhisper-npu\[audio\]"):
        load_audio(path)


def test_unsupported_wav_encoding_without_extras(tmp_path: Path, no_extras: None) -> None:
    path = tmp_path / "mulaw.wav"
    _write_wav(path, bytes(100), tag=7, channels=1, rate=8000, width=1)
    with pytest.raises(AudioError, match=r"mulaw\.wav.*format tag 0x0007.*aiowhisper-npu\[audio\]"):
        load_audio(path)


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        (None, "no such file"),
        (b"", "cannot decode"),
        (b"\x00garbage\xff" * 50, "cannot decode"),
        (b"RIFF\x04\x00\x00\x00WAVE", "no valid 'fmt ' chunk"),
        (b"RIFF\x1c\x00\x00\x00WAVEfmt \x10\x00\x00\x00" + struct.pack("<HHIIHH", 1, 1, 16000, 32000, 2, 16),
         "no 'data' chunk"),
    ],
)
def test_unreadable_files(tmp_path: Path, content: bytes | None, fragment: str) -> None:
    path = tmp_path / "bad.wav"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(AudioError, match="bad.wav") as info:
        load_audio(path)
    assert fragment in str(info.value)


def test_directory_empty_wav_and_bad_rate(tmp_path: Path) -> None:
    with pytest.raises(AudioError, match="is a directory"):
        load_audio(tmp_path)
    path = tmp_path / "empty.wav"
    _write_wav(path, b"", tag=1, channels=1, rate=16000, width=2)
    with pytest.raises(AudioError, match="no audio samples"):
        load_audio(path)
    with pytest.raises(AudioError, match="positive integer"):
        load_audio(DATA / "door.wav", sr=0)


# ---------------------------------------------------------------------------------------------- resampling


def _aligned_correlation(a: np.ndarray, b: np.ndarray, max_lag: int = 64) -> tuple[float, int]:
    n = min(a.size, b.size) - 2 * max_lag
    best = max((float(np.corrcoef(a[max_lag : max_lag + n], b[max_lag + k : max_lag + k + n])[0, 1]), k)
               for k in range(-max_lag, max_lag + 1))
    return best


@pytest.mark.parametrize("backend", ["soxr", "numpy"])
def test_44k_stereo_file_matches_16k_original(monkeypatch: pytest.MonkeyPatch, backend: str) -> None:
    if backend == "numpy":
        _no_module(monkeypatch, "soxr")
    else:
        pytest.importorskip("soxr")
    original = load_audio(DATA / "door.wav")
    converted = load_audio(DATA / "door_44k_stereo.wav")
    assert converted.dtype == np.float32 and abs(converted.size - original.size) <= 1
    corr, lag = _aligned_correlation(original, converted)
    assert corr > 0.99 and abs(lag) <= 1, (corr, lag)
    # right channel is the left at half gain: the downmix is 0.75 x the original
    gain = float(np.dot(converted[: original.size], original) / np.dot(original, original))
    assert gain == pytest.approx(0.75, rel=0.01)


def test_numpy_resampler_response(monkeypatch: pytest.MonkeyPatch) -> None:
    _no_module(monkeypatch, "soxr")
    t = np.arange(44100) / 44100

    def gain_db(freq: float) -> float:
        y = resample(np.sin(2 * np.pi * freq * t), 44100, 16000)[4000:-4000].astype(np.float64)
        return 20 * np.log10(np.sqrt(2 * np.mean(y**2)) + 1e-30)

    assert all(abs(gain_db(f)) < 0.01 for f in (50.0, 1000.0, 4000.0, 7000.0))
    assert all(gain_db(f) < -85 for f in (8000.0, 9000.0, 15000.0))
    for n in (0, 1, 7, 44100, 44101, 44102):  # soxr's output length rule
        assert resample(np.zeros(n, np.float32), 44100, 16000).size == (2 * n * 16000 + 44100) // 88200


def test_numpy_resampler_agrees_with_soxr(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("soxr")
    x = load_audio(DATA / "door_44k_stereo.wav", sr=44100)
    for sr in (16000, 8000, 22050):
        with_soxr = resample(x, 44100, sr)
        with monkeypatch.context() as m:
            _no_module(m, "soxr")
            fallback = resample(x, 44100, sr)
        assert fallback.shape == with_soxr.shape
        assert np.corrcoef(fallback, with_soxr)[0, 1] > 0.9999
    up = load_audio(DATA / "door.wav", sr=48000)  # upsampling: the 16 kHz band is kept
    assert up.size == 3 * load_audio(DATA / "door.wav").size


# --------------------------------------------------------------------------------------------- test data


def test_bundled_clips() -> None:
    texts = json.loads((DATA / "clips.json").read_text())
    speech = json.loads((DATA / "speech.json").read_text())  # real speech and other languages
    assert not set(texts) & set(speech)
    assert set(texts) | set(speech) == {p.name for p in DATA.glob("*.wav")}
    for name, about in speech.items():
        x = load_audio(DATA / name)
        assert 0.05 < np.abs(x).max() <= 1.0 and 2 <= x.size / 16000 <= 12, name
        assert set(about) == {"language", "text"} and about["text"]
    for name in texts:
        x = load_audio(DATA / name)
        assert x.dtype == np.float32 and x.ndim == 1 and 0.05 < np.abs(x).max() <= 1.0
        seconds = x.size / 16000
        assert (30 < seconds < 45) if name == "long_40s.wav" else (2 <= seconds <= 8), (name, seconds)
    assert 2 <= load_audio(Path(__file__).parents[2] / "examples" / "hello.wav").size / 16000 <= 8
    assert sum(p.stat().st_size for p in DATA.iterdir()) < 3_000_000


# ---------------------------------------------------------------------------------------------- windows


@pytest.mark.parametrize(("n", "windows"), [(1, 1), (479_999, 1), (480_000, 1), (480_001, 2), (960_000, 2)])
def test_split_windows(n: int, windows: int) -> None:
    x = np.random.default_rng(n).uniform(-1, 1, n).astype(np.float32)
    out = split_windows(x)
    assert out.shape == (windows, N_SAMPLES) and out.dtype == np.float32
    np.testing.assert_array_equal(out.reshape(-1)[:n], x)
    assert not out.reshape(-1)[n:].any()


def test_split_windows_rejects_empty_and_validates() -> None:
    with pytest.raises(AudioError, match="empty"):
        split_windows(np.zeros(0, np.float32))
    with pytest.raises(AudioError, match="int16"):
        split_windows(np.zeros(5, np.int16))
