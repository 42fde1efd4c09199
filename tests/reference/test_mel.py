"""Log-mel front end: offline against references, streaming bit-identical to offline."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from aiowhisper_npu.audio.io import N_FRAMES, N_SAMPLES, load_audio, split_windows
from aiowhisper_npu.audio.mel import (
    N_FREQS,
    frames_power,
    log_mel_spectrogram,
    log_mel_windows,
    mel_filters,
    normalize_window,
    power_frames,
)
from aiowhisper_npu.audio.mel_stream import IncrementalLogMel, LogMelStream
from aiowhisper_npu.errors import AudioError

DATA = Path(__file__).parents[1] / "data"


@pytest.fixture(scope="module")
def long_audio() -> np.ndarray:
    return load_audio(DATA / "long_40s.wav")  # 41.2 s: two windows, speech across the 30 s boundary


@pytest.fixture(scope="module")
def busy_audio(long_audio: np.ndarray) -> np.ndarray:
    """The long clip plus faint noise: no silent stretch, so every edge frame and reflection matters."""
    noise = np.random.default_rng(7).standard_normal(long_audio.size).astype(np.float32)
    return long_audio + np.float32(1e-3) * noise


def _reference_log_mel(window: np.ndarray, n_mels: int) -> np.ndarray:
    """openai-whisper's log_mel_spectrogram written out in float64 with textbook pieces."""
    x = np.pad(window.astype(np.float64), 200, mode="reflect")
    n_frames = 1 + (x.size - 400) // 160
    frames = np.stack([x[t * 160 : t * 160 + 400] for t in range(n_frames)])
    spec = np.fft.rfft(frames * np.hanning(401)[:-1], axis=-1)  # periodic Hann
    magnitudes = (np.abs(spec) ** 2)[:-1].T  # drop the last frame: stft[..., :-1]
    fw = pytest.importorskip("faster_whisper.feature_extractor")
    filters = fw.FeatureExtractor.get_mel_filters(16000, 400, n_mels)  # float64 Slaney filters
    log_spec = np.log10(np.maximum(filters @ magnitudes, 1e-10))
    log_spec = np.maximum(log_spec, log_spec.max() - 8.0)
    return (log_spec + 4.0) / 4.0


# ---------------------------------------------------------------------------------------------- filters


@pytest.mark.parametrize("n_mels", [80, 128])
def test_mel_filters_match_faster_whisper(n_mels: int) -> None:
    fw = pytest.importorskip("faster_whisper.feature_extractor")
    filters = mel_filters(n_mels)
    assert filters.shape == (n_mels, N_FREQS) and filters.dtype == np.float32
    assert filters is mel_filters(n_mels) and not filters.flags.writeable  # cached, shared, read-only
    expected = fw.FeatureExtractor.get_mel_filters(16000, 400, n_mels)
    np.testing.assert_allclose(filters, expected, rtol=1e-6, atol=1e-9)
    assert (filters >= 0).all() and (filters.sum(axis=1) > 0).all()  # every band covers some bins


def test_mel_filters_reject_bad_sizes() -> None:
    for bad in (0, -3, 2.5, True):
        with pytest.raises(ValueError):
            mel_filters(bad)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------- offline


@pytest.mark.parametrize("n_mels", [80, 128])
def test_log_mel_matches_faster_whisper(long_audio: np.ndarray, n_mels: int) -> None:
    """faster-whisper/CTranslate2 features of exactly one 30 s window (padding=0: no extra samples)."""
    fw = pytest.importorskip("faster_whisper.feature_extractor")
    extractor = fw.FeatureExtractor(feature_size=n_mels)
    ours = log_mel_windows(long_audio, n_mels)
    short = load_audio(DATA / "quick_fox.wav")  # a window that is mostly zero padding
    cases = [(ours[0], split_windows(long_audio)[0]), (ours[1], split_windows(long_audio)[1]),
             (log_mel_windows(short, n_mels)[0], split_windows(short)[0])]
    for mine, window in cases:
        theirs = extractor(window, padding=0)[:, :N_FRAMES]
        assert theirs.shape == mine.shape == (n_mels, N_FRAMES)
        assert float(np.abs(mine - theirs).max()) <= 1e-4


@pytest.mark.parametrize("kind", ["speech", "noise", "quiet_tone"])
def test_log_mel_matches_float64_reference(long_audio: np.ndarray, kind: str) -> None:
    rng = np.random.default_rng(0)
    window = {
        "speech": long_audio[:N_SAMPLES],
        "noise": rng.standard_normal(N_SAMPLES).astype(np.float32) * 0.1,
        "quiet_tone": np.pad(1e-4 * np.sin(np.arange(100_000) * 0.3), (0, N_SAMPLES - 100_000)),
    }[kind]
    mine = log_mel_windows(window)[0]
    assert mine.dtype == np.float32
    assert float(np.abs(mine - _reference_log_mel(np.asarray(window, np.float32), 80)).max()) <= 1e-4


def test_log_mel_spectrogram_on_exact_samples(long_audio: np.ndarray) -> None:
    window = long_audio[:N_SAMPLES]
    np.testing.assert_array_equal(log_mel_spectrogram(window), log_mel_windows(long_audio)[0])
    part = long_audio[:12345]
    out = log_mel_spectrogram(part, n_mels=128)
    assert out.shape == (128, 12345 // 160) and out.dtype == np.float32
    np.testing.assert_allclose(out, _reference_log_mel(part, 128), atol=1e-4)
    with pytest.raises(AudioError, match="at least 160"):
        log_mel_spectrogram(np.zeros(159, np.float32))
    with pytest.raises(AudioError, match="NaN"):
        log_mel_windows(np.array([0.0, np.nan]))


def test_log_mel_windows_each_window_alone(long_audio: np.ndarray) -> None:
    out = log_mel_windows(long_audio, n_mels=128)
    assert out.shape == (2, 128, N_FRAMES) and out.dtype == np.float32
    for i, window in enumerate(split_windows(long_audio)):  # own padding, own maximum
        np.testing.assert_array_equal(out[i], log_mel_spectrogram(window, n_mels=128))
        assert out[i].min() >= out[i].max() - 2.0 - 1e-6  # clamped 8 decades below this window's max
    assert log_mel_windows(long_audio[:N_SAMPLES]).shape == (1, 80, N_FRAMES)


def test_power_frames_and_batching(long_audio: np.ndarray) -> None:
    power = power_frames(long_audio[:N_SAMPLES])
    assert power.shape == (N_FRAMES, N_FREQS) and power.dtype == np.float32
    padded = np.pad(long_audio[:N_SAMPLES], 200, "reflect")
    frames = np.lib.stride_tricks.sliding_window_view(padded, 400)[::160]
    for start, stop in [(0, 1), (1, 2), (17, 40), (2999, 3000)]:  # a row's result ignores the batch size
        np.testing.assert_array_equal(frames_power(frames[start:stop]), power[start:stop])
    with pytest.raises(ValueError, match="shape"):
        normalize_window(power[:-1])


# -------------------------------------------------------------------------------------------- streaming


def _stream(
    audio: np.ndarray, sizes: list[int] | np.ndarray, snapshot_every: int = 0
) -> tuple[np.ndarray, LogMelStream]:
    """Push ``audio`` in chunks of the given sizes (cycled); return all finished windows and the stream."""
    stream, outs, pos, i = LogMelStream(), [], 0, 0
    while pos < audio.size:
        size = int(sizes[i % len(sizes)])
        outs += stream.push(audio[pos : pos + size])
        pos, i = pos + size, i + 1
        if snapshot_every and i % snapshot_every == 0:
            stream.snapshot()
    last = stream.finish()
    if last is not None:
        outs.append(last)
    return np.stack(outs), stream


def test_stream_one_sample_chunks() -> None:
    clip = load_audio(DATA / "door.wav")[8000:12800]  # 0.3 s
    out, stream = _stream(clip, [1], snapshot_every=97)
    assert np.array_equal(out, log_mel_windows(clip))
    # frames reading only zero padding cost nothing
    assert stream.frames_computed == -(-(clip.size + 200) // 160)


@pytest.mark.parametrize("size", [7, 159, 160, 161, 401, 4799, 16000, N_SAMPLES, N_SAMPLES + 1])
def test_stream_fixed_chunks(busy_audio: np.ndarray, size: int) -> None:
    out, stream = _stream(busy_audio, [size])
    assert out.shape == (2, 80, N_FRAMES)
    assert np.array_equal(out, log_mel_windows(busy_audio))
    assert stream.window_index == 2


def test_stream_random_chunks_with_snapshots(busy_audio: np.ndarray) -> None:
    sizes = np.random.default_rng(1234).integers(1, 9000, size=500)
    out, stream = _stream(busy_audio, sizes, snapshot_every=3)
    assert np.array_equal(out, log_mel_windows(busy_audio))
    assert stream.provisional_frames_computed > 0


@pytest.mark.parametrize("n_mels", [80, 128])
def test_stream_chunks_straddling_the_window_boundary(busy_audio: np.ndarray, n_mels: int) -> None:
    cuts = [0, 479_000, 479_801, 479_999, 480_001, 480_200, 481_000, busy_audio.size]
    stream, outs = LogMelStream(n_mels), []
    for a, b in zip(cuts, cuts[1:]):
        got = stream.push(busy_audio[a:b])
        assert len(got) == (1 if a < N_SAMPLES <= b else 0)
        outs += got
    outs.append(stream.finish())
    assert np.array_equal(np.stack(outs), log_mel_windows(busy_audio, n_mels))


def test_stream_exact_multiple_has_no_empty_window(busy_audio: np.ndarray) -> None:
    stream = LogMelStream()
    (window,) = stream.push(busy_audio[:N_SAMPLES])
    assert np.array_equal(window, log_mel_windows(busy_audio[:N_SAMPLES])[0])
    assert stream.snapshot() is None and stream.finish() is None
    assert stream.push(np.zeros(0, np.float32)) == []


def test_snapshot_is_offline_log_mel_of_prefix(busy_audio: np.ndarray) -> None:
    mel = IncrementalLogMel()
    for stop in (1, 150, 201, 360, 1600, 33_333, 479_900, 479_999):
        mel.push(busy_audio[mel.n_samples : stop])
        assert np.array_equal(mel.snapshot(), log_mel_windows(busy_audio[:stop])[0]), stop
    mel.push(busy_audio[mel.n_samples : N_SAMPLES + 5])
    assert mel.is_full and np.array_equal(mel.snapshot(), mel.finish())
    with pytest.raises(RuntimeError):
        mel.push(busy_audio[:10])


def test_new_pushes_compute_only_new_frames(busy_audio: np.ndarray) -> None:
    """30 s in 0.1 s chunks with a snapshot after each: 3000 final frames + a few boundary frames each."""
    mel, chunk, snapshots = IncrementalLogMel(), 1600, 0
    for start in range(0, N_SAMPLES, chunk):
        before = mel.frames_computed
        mel.push(busy_audio[start : start + chunk])
        assert mel.frames_computed - before <= chunk // 160 + 2  # only the frames this chunk completed
        provisional = mel.provisional_frames_computed
        mel.snapshot()
        assert mel.provisional_frames_computed - provisional <= 3  # the frames still waiting on samples
        snapshots += 1
    assert mel.frames_computed == N_FRAMES  # each frame computed exactly once
    assert mel.provisional_frames_computed <= 3 * snapshots
    assert np.array_equal(mel.finish(), log_mel_windows(busy_audio)[0])
    one = IncrementalLogMel()
    one.push(busy_audio[:1000])
    for k in range(1000, 1400):  # single samples: at most one new frame each
        before = one.frames_computed
        one.push(busy_audio[k : k + 1])
        assert one.frames_computed - before == (1 if (k + 1 - 200) % 160 == 0 else 0)
