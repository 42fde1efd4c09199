"""Which language is spoken (faster-whisper's ``detect_language`` over features).

Up to ``segments`` consecutive 30 s windows from the start are tried in turn; the first whose most probable
language is more probable than ``threshold`` decides. When none is, the language that came first in most
windows wins (the earliest on a tie), with its best probability. ``all_language_probs`` are those of the last
window tried.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..audio.io import N_FRAMES
from .features import window_features
from .protocol import WindowRecognizer

__all__ = ["LanguageDetection", "detect_language"]


@dataclass(frozen=True)
class LanguageDetection:
    language: str
    probability: float
    all_language_probs: list[tuple[str, float]]


async def detect_language(decoder: WindowRecognizer, features: np.ndarray, *, segments: int = 1,
                          threshold: float | None = 0.5) -> LanguageDetection:
    """Detect the language of ``features`` (``(n_mels, frames)``, starting where detection should start).
    ``threshold=None`` accepts the first window's most probable language."""
    if segments < 1:
        raise ValueError(f"segments must be >= 1, got {segments}")
    part = features[:, : segments * N_FRAMES]
    votes: dict[str, list[float]] = {}
    probs: list[tuple[str, float]] = []
    for start in range(0, max(part.shape[-1], 1), N_FRAMES):
        window = await decoder.encode(window_features(part, start))
        try:
            probs = [(str(code), float(p)) for code, p in await decoder.detect_language(window)]
        finally:
            window.close()
        if not probs:
            raise RuntimeError("the decoder returned no language probabilities")
        language, probability = probs[0]
        if threshold is None or probability > threshold:
            return LanguageDetection(language, probability, probs)
        votes.setdefault(language, []).append(probability)
    language = max(votes, key=lambda code: len(votes[code]))
    return LanguageDetection(language, max(votes[language]), probs)
