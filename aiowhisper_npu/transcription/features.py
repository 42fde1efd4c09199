"""The log-mel features of a whole recording, laid out as faster-whisper lays them out, and the 30 s windows
the seek loop cuts from them.

faster-whisper's ``FeatureExtractor`` appends one hop (160 zero samples) to the audio, then computes
whisper's log-mel over the whole of it (reflect padding of 200 samples at both ends, last STFT frame
dropped) with **one** 8-decade clamp below the maximum of the whole recording. So ``n`` samples give
``n // 160 + 1`` frames, the last of which holds the appended zeros: the seek loop treats only the first
``n // 160`` as content (:func:`content_frames`), but language detection and the clamp see all of them.
A window is ``features[:, seek:seek + size]``, zero-padded (in the log-mel domain) or trimmed to 3000
frames (:func:`window_features`). The STFT is the project's own (:mod:`aiowhisper_npu.audio.mel`), which
equals faster-whisper's within 1e-5.
"""

from __future__ import annotations

import numpy as np

from ..audio.io import HOP_LENGTH, N_FRAMES, SAMPLE_RATE
from ..audio.mel import log_mel_spectrogram

__all__ = ["audio_features", "content_frames", "window_features", "FRAMES_PER_SECOND", "TIME_PER_FRAME"]

#: Mel frames per second (100) and seconds per frame (0.01), as faster-whisper computes them.
FRAMES_PER_SECOND = SAMPLE_RATE // HOP_LENGTH
TIME_PER_FRAME = HOP_LENGTH / SAMPLE_RATE


def audio_features(audio: np.ndarray, n_mels: int = 80) -> np.ndarray:
    """Log-mel of the whole recording in faster-whisper's layout: ``(n_mels, len(audio) // 160 + 1)`` float32.

    ``audio`` is validated float32 samples (what :func:`~aiowhisper_npu.audio.io.validate_audio` returns).
    """
    return log_mel_spectrogram(np.concatenate([audio, np.zeros(HOP_LENGTH, np.float32)]), n_mels)


def content_frames(features: np.ndarray) -> int:
    """The frames that hold audio: all but the last (the appended hop)."""
    return int(features.shape[-1]) - 1


def window_features(features: np.ndarray, start: int, size: int = N_FRAMES) -> np.ndarray:
    """``features[:, start:start + size]`` trimmed or zero-padded to 3000 frames: ``(n_mels, 3000)`` float32,
    C-contiguous (a new array)."""
    if start < 0 or size < 0:
        raise ValueError(f"start and size must be >= 0, got {start}, {size}")
    part = features[:, start : start + min(size, N_FRAMES)]
    out = np.zeros((features.shape[0], N_FRAMES), np.float32)
    out[:, : part.shape[1]] = part
    return out
