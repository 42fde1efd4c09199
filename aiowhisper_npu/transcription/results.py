"""What a transcription returns: :class:`Segment` (with its :class:`Word` s), :class:`TranscriptionInfo` and
:class:`TranscriptionResult`. Fields, names and meanings follow faster-whisper's ``Segment``, ``Word`` and
``TranscriptionInfo`` (times in seconds, as plain floats)."""

from __future__ import annotations

from dataclasses import dataclass

from ..audio.vad import VadOptions
from .options import TranscriptionOptions

__all__ = ["Word", "Segment", "TranscriptionInfo", "TranscriptionResult"]


@dataclass(frozen=True)
class Word:
    """One word with its time span and the mean probability of its tokens."""

    start: float
    end: float
    word: str
    probability: float


@dataclass(frozen=True)
class Segment:
    """One transcribed segment.

    ``id`` counts from 1; ``seek`` is the start (in 10 ms mel frames) of the 30 s window it was decoded from;
    ``tokens`` are its text and timestamp tokens. ``avg_logprob``, ``compression_ratio``,
    ``no_speech_prob`` and ``temperature`` describe the window's decoding (shared by its segments).
    ``words`` is ``None`` unless word timestamps were asked for.
    """

    id: int
    seek: int
    start: float
    end: float
    text: str
    tokens: list[int]
    avg_logprob: float
    compression_ratio: float
    no_speech_prob: float
    words: list[Word] | None
    temperature: float | None


@dataclass(frozen=True)
class TranscriptionInfo:
    """About the whole transcription: the language used (detected, or given: probability 1), the audio's
    duration, every language's probability when it was detected, and the options.

    ``duration_after_vad`` is the seconds of speech transcribed with ``vad_filter=True`` (the whole
    ``duration`` without it); ``vad_options`` the :class:`VadOptions` the VAD ran with, or else the
    ``vad_parameters`` given (``None`` by default), as faster-whisper reports them."""

    language: str
    language_probability: float
    duration: float
    all_language_probs: list[tuple[str, float]] | None
    transcription_options: TranscriptionOptions
    duration_after_vad: float | None = None
    vad_options: VadOptions | None = None

    def __post_init__(self) -> None:
        if self.duration_after_vad is None:
            object.__setattr__(self, "duration_after_vad", self.duration)


@dataclass(frozen=True)
class TranscriptionResult:
    """A whole transcription: its segments, in order, and its info."""

    segments: list[Segment]
    info: TranscriptionInfo

    @property
    def text(self) -> str:
        """The segments' texts joined (each starts with its own space, as Whisper writes them), stripped."""
        return "".join(s.text for s in self.segments).strip()

    @property
    def language(self) -> str:
        return self.info.language

    @property
    def language_probability(self) -> float:
        return self.info.language_probability

    @property
    def duration(self) -> float:
        """Seconds of audio transcribed."""
        return self.info.duration
