"""openai-whisper's log-mel spectrogram in plain numpy.

The pipeline is whisper's ``log_mel_spectrogram``: periodic Hann(400) STFT with hop 160 on the audio
reflect-padded by 200 samples at each end, the last frame dropped, power spectrum, Slaney mel filterbank,
``log10(max(mel, 1e-10))``, clamp to 8 decades below the maximum, ``(x + 4) / 4``.

It is split in two so that offline and streaming code share the same arithmetic:

* :func:`frames_power` -- the expensive part, row by row: raw 400-sample frames → power spectra. A row's
  result does not depend on how many rows are computed together, so frames may be computed in any batches.
* :func:`normalize_window` -- the finish: one fixed-shape ``(n_mels, 201) @ (201, 3000)`` projection of a
  whole window's power frames, then log and clamp. BLAS may round differently for different shapes, so
  every window goes through exactly this call; :mod:`~aiowhisper_npu.audio.mel_stream` gets bit-identical output.

The FFT runs in float64 (power cast to float32): measured against a float64 reference it is within 2e-7,
and within 1e-5 of float32 implementations (torch, faster-whisper's ``FeatureExtractor``).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from ..errors import AudioError
from .io import HOP_LENGTH, N_FFT, N_FRAMES, SAMPLE_RATE, split_windows, validate_audio

__all__ = [
    "N_FREQS",
    "mel_filters",
    "frames_power",
    "power_frames",
    "normalize_window",
    "log_mel_spectrogram",
    "log_mel_windows",
]

N_FREQS = N_FFT // 2 + 1  #: 201 one-sided frequency bins
_PAD = N_FFT // 2  # centre padding, 200 samples
_HANN = 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(N_FFT) / N_FFT)  # periodic, = torch.hann_window(400)
_HANN.setflags(write=False)


@lru_cache(maxsize=8)
def mel_filters(n_mels: int = 80) -> np.ndarray:
    """Slaney-style mel filterbank, shape ``(n_mels, 201)`` float32 (read-only, cached).

    Same formula as ``librosa.filters.mel(sr=16000, n_fft=400, n_mels=n_mels, htk=False, norm="slaney")``,
    which produced whisper's ``mel_filters.npz`` (80 and 128 bins).
    """
    if isinstance(n_mels, bool) or not isinstance(n_mels, (int, np.integer)) or n_mels <= 0:
        raise ValueError(f"n_mels must be a positive integer, got {n_mels!r}")
    f_sp, min_log_hz, logstep = 200.0 / 3.0, 1000.0, np.log(6.4) / 27.0  # Slaney: linear < 1 kHz, then log
    min_log_mel = min_log_hz / f_sp

    def hz_to_mel(f: float) -> float:
        return f / f_sp if f < min_log_hz else min_log_mel + float(np.log(f / min_log_hz)) / logstep

    mels = np.linspace(hz_to_mel(0.0), hz_to_mel(SAMPLE_RATE / 2), n_mels + 2)
    hz = np.where(mels < min_log_mel, f_sp * mels, min_log_hz * np.exp(logstep * (mels - min_log_mel)))
    bins = np.fft.rfftfreq(N_FFT, d=1.0 / SAMPLE_RATE)
    ramps = hz[:, None] - bins[None, :]
    fdiff = np.diff(hz)
    lower = -ramps[:-2] / fdiff[:-1, None]
    upper = ramps[2:] / fdiff[1:, None]
    weights = np.maximum(0.0, np.minimum(lower, upper)) * (2.0 / (hz[2:] - hz[:-2]))[:, None]
    out = weights.astype(np.float32)
    out.setflags(write=False)
    return out


def frames_power(frames: np.ndarray) -> np.ndarray:
    """Raw sample frames ``(k, 400)`` → power spectra ``|rfft(hann * frame)|**2``, ``(k, 201)`` float32.

    Computed row by row (numpy's FFT transforms each row independently), so the result for a frame is
    bit-identical whether it is computed alone or in a batch.
    """
    spec = np.fft.rfft(np.asarray(frames, dtype=np.float64) * _HANN, axis=-1)
    return (spec.real * spec.real + spec.imag * spec.imag).astype(np.float32)


def power_frames(samples: np.ndarray) -> np.ndarray:
    """Whisper's STFT power of exactly ``samples``: ``(len // 160, 201)`` float32.

    Frame ``t`` is centred on sample ``t * 160`` (reflect padding of 200 at both ends); whisper's last frame
    (``stft[..., :-1]``) is dropped. A 30 s window gives ``(3000, 201)``.
    """
    x = validate_audio(samples, name="samples")
    n = x.size // HOP_LENGTH
    if n == 0:
        raise AudioError(f"samples: need at least {HOP_LENGTH} samples for one frame, got {x.size}")
    padded = np.pad(x, _PAD, mode="reflect")
    frames = np.lib.stride_tricks.sliding_window_view(padded, N_FFT)[::HOP_LENGTH][:n]
    return frames_power(frames)


def _log_mel(power: np.ndarray, n_mels: int) -> np.ndarray:
    """``(n_frames, 201)`` power → normalised log-mel ``(n_mels, n_frames)`` float32."""
    mel = mel_filters(n_mels) @ np.ascontiguousarray(power, dtype=np.float32).T
    log = np.log10(np.maximum(mel, np.float32(1e-10)))
    log = np.maximum(log, log.max() - np.float32(8.0))
    return (log + np.float32(4.0)) / np.float32(4.0)


def normalize_window(power: np.ndarray, n_mels: int = 80) -> np.ndarray:
    """Finish one 30 s window: ``(3000, 201)`` power frames → log-mel ``(n_mels, 3000)`` float32.

    Normalised by this window's own maximum, as whisper does for a single 30 s input. Always one
    fixed-shape projection, so equal power frames give bit-identical log-mel on every path.
    """
    if power.shape != (N_FRAMES, N_FREQS):
        raise ValueError(f"power must have shape {(N_FRAMES, N_FREQS)}, got {power.shape}")
    return _log_mel(power, n_mels)


def log_mel_spectrogram(audio: np.ndarray, n_mels: int = 80) -> np.ndarray:
    """openai-whisper's ``log_mel_spectrogram`` of exactly the samples given (no padding added).

    Returns ``(n_mels, len(audio) // 160)`` float32, normalised by its own maximum. Needs at least 160
    samples. For exactly 480000 samples it equals ``log_mel_windows(audio)[0]`` bit for bit.
    """
    return _log_mel(power_frames(audio), n_mels)


def log_mel_windows(audio: np.ndarray, n_mels: int = 80) -> np.ndarray:
    """Log-mel of each 30 s window, ``(n_windows, n_mels, 3000)`` float32.

    The audio is cut by :func:`~aiowhisper_npu.audio.io.split_windows` (last window zero-padded to 480000
    samples) and each window is processed as if fed alone to whisper: its own reflect padding at both
    window edges and its own maximum for the 8-decade clamp.
    """
    windows = split_windows(audio)
    out = np.empty((windows.shape[0], n_mels, N_FRAMES), dtype=np.float32)
    for i, window in enumerate(windows):
        out[i] = normalize_window(power_frames(window), n_mels)
    return out

