"""What a transcription is asked: :class:`TranscriptionOptions`, faster-whisper's ``WhisperModel.transcribe``
parameters with the same names and defaults (faster-whisper 1.2.1), so that code can switch between the two.

``vad_filter=True`` transcribes the speech only (:mod:`.speech`), as faster-whisper's sequential mode, and is
ignored when ``clip_timestamps`` is given (anything but the default ``"0"``); ``vad_parameters`` is read as
:func:`vad_options` reads it, and checked even when ``vad_filter`` is off.

Not supported: a ``chunk_length`` other than Whisper's 30 s, and ``log_progress`` (no progress bar). Where
faster-whisper would fail,
``language_detection_threshold=None`` takes the first window's most probable language and
``clip_timestamps=""`` starts language detection at 0; nonsense (a clip ending before it starts, negative
ids or temperatures...) raises :class:`ValueError` here instead of going through.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Sequence

from ..audio.vad import VadOptions
from ..decoder.languages import language_code
from ..decoder.tokenizer import TASKS, TIME_PRECISION

__all__ = ["TranscriptionOptions", "DEFAULT_TEMPERATURES", "parse_clip_timestamps", "vad_options"]

#: faster-whisper's temperature fallback schedule.
DEFAULT_TEMPERATURES = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _number(name: str, x: Any, *, optional: bool = False, minimum: float | None = None,
            above: float | None = None) -> float | None:
    """``x`` as a finite float (or ``None`` when ``optional``); :class:`ValueError` otherwise."""
    if x is None and optional:
        return None
    if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x):
        raise ValueError(f"{name} must be a finite number{' or None' if optional else ''}, got {x!r}")
    if minimum is not None and x < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {x!r}")
    if above is not None and x <= above:
        raise ValueError(f"{name} must be > {above}, got {x!r}")
    return float(x)


def _token_ids(name: str, x: Any) -> tuple[int, ...]:
    if isinstance(x, (str, bytes)):
        raise ValueError(f"{name} must be a sequence of token ids, got {x!r}")
    try:
        ids = tuple(x)
    except TypeError:
        raise ValueError(f"{name} must be a sequence of token ids, got {x!r}") from None
    if not all(_is_int(t) or (hasattr(t, "__index__") and not isinstance(t, bool)) for t in ids):
        raise ValueError(f"{name} must hold integers only, got {x!r}")
    return tuple(int(t) for t in ids)


def parse_clip_timestamps(clip: str | Sequence[float]) -> tuple[float, ...]:
    """``"start,end,start,end,..."`` (seconds; the last end may be left out) or a sequence of numbers, as
    faster-whisper reads ``clip_timestamps``; ``""`` means no clip (the whole audio)."""
    if isinstance(clip, str):
        parts = [p for p in clip.split(",")] if clip else []
        values: list[float] = []
        for p in parts:
            try:
                values.append(float(p))
            except ValueError:
                raise ValueError(f"clip_timestamps: {p!r} is not a number (in {clip!r})") from None
    else:
        try:
            values = [float(_number("clip_timestamps", v)) for v in clip]  # type: ignore[arg-type]
        except TypeError:
            raise ValueError(f"clip_timestamps must be a string or a sequence of numbers, got {clip!r}") from None
    for v in values:
        if not math.isfinite(v) or v < 0:
            raise ValueError(f"clip_timestamps must be finite and >= 0, got {v!r}")
    for start, end in zip(values[::2], values[1::2]):
        if end <= start:
            raise ValueError(f"clip_timestamps: a clip ends ({end}) at or before its start ({start})")
    return tuple(values)


def vad_options(parameters: Any) -> VadOptions:
    """``vad_parameters`` as :class:`VadOptions`: ``None`` gives the defaults (faster-whisper's sequential
    mode keeps them all, ``min_silence_duration_ms=2000`` included), a dict gives its fields.

    Raises:
        TypeError: ``parameters`` is none of these, or a dict with a key that is not a field.
        ValueError: a value out of range (see :class:`VadOptions`).
    """
    if parameters is None:
        return VadOptions()
    if isinstance(parameters, VadOptions):
        return parameters
    if isinstance(parameters, dict):
        names = {f.name for f in dataclasses.fields(VadOptions)}
        unknown = sorted(str(k) for k in parameters if k not in names)
        if unknown:
            raise TypeError(f"vad_parameters: unknown option(s) {', '.join(unknown)}; "
                            f"the options are {', '.join(sorted(names))}")
        return VadOptions(**parameters)
    raise TypeError(f"vad_parameters must be VadOptions, a dict of its fields or None, "
                    f"got {type(parameters).__name__}")


@dataclass(frozen=True)
class TranscriptionOptions:
    """The options of one transcription, named and defaulted as faster-whisper's ``transcribe`` (see its
    docstring for each one's meaning). Sequences are stored as tuples; ``temperature`` may be one number or
    a fallback schedule.

    Raises:
        ValueError: a value of the wrong type or out of range (e.g. ``beam_size=0``, a negative temperature,
            an unknown task or language, a ``vad_parameters`` value out of range).
        TypeError: ``vad_parameters`` that is not :class:`VadOptions`, a dict of its fields, or ``None``.
    """

    language: str | None = None
    task: str = "transcribe"
    beam_size: int = 5
    best_of: int = 5
    patience: float = 1
    length_penalty: float = 1
    repetition_penalty: float = 1
    no_repeat_ngram_size: int = 0
    temperature: float | Sequence[float] = DEFAULT_TEMPERATURES
    compression_ratio_threshold: float | None = 2.4
    log_prob_threshold: float | None = -1.0
    no_speech_threshold: float | None = 0.6
    condition_on_previous_text: bool = True
    prompt_reset_on_temperature: float = 0.5
    initial_prompt: str | Sequence[int] | None = None
    prefix: str | None = None
    suppress_blank: bool = True
    suppress_tokens: Sequence[int] | None = (-1,)
    without_timestamps: bool = False
    max_initial_timestamp: float = 1.0
    word_timestamps: bool = False
    prepend_punctuations: str = "\"'“¿([{-"
    append_punctuations: str = "\"'.。,，!！?？:：”)]}、"
    multilingual: bool = False
    vad_filter: bool = False
    vad_parameters: VadOptions | dict[str, Any] | None = None
    max_new_tokens: int | None = None
    chunk_length: int | None = None
    clip_timestamps: str | Sequence[float] = "0"
    hallucination_silence_threshold: float | None = None
    hotwords: str | None = None
    language_detection_threshold: float | None = 0.5
    language_detection_segments: int = 1

    def __post_init__(self) -> None:
        if self.vad_parameters is not None:
            object.__setattr__(self, "vad_parameters", vad_options(self.vad_parameters))
        if self.chunk_length not in (None, 30):
            raise ValueError(f"chunk_length must be None or 30 (Whisper's window), got {self.chunk_length!r}")
        if self.language is not None:
            if not isinstance(self.language, str):
                raise ValueError(f"language must be a language code or name, or None; got {self.language!r}")
            language_code(self.language)  # ValueError for an unknown language
        if self.task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {self.task!r}")
        for name in ("beam_size", "best_of", "language_detection_segments"):
            value = getattr(self, name)
            if not _is_int(value) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if not _is_int(self.no_repeat_ngram_size) or self.no_repeat_ngram_size < 0:
            raise ValueError(f"no_repeat_ngram_size must be an integer >= 0, got {self.no_repeat_ngram_size!r}")
        if self.max_new_tokens is not None and (not _is_int(self.max_new_tokens) or self.max_new_tokens < 1):
            raise ValueError(f"max_new_tokens must be an integer >= 1 or None, got {self.max_new_tokens!r}")
        _number("patience", self.patience, above=0)
        _number("length_penalty", self.length_penalty)
        _number("repetition_penalty", self.repetition_penalty, above=0)
        _number("prompt_reset_on_temperature", self.prompt_reset_on_temperature)
        _number("max_initial_timestamp", self.max_initial_timestamp, minimum=0)
        for name in ("compression_ratio_threshold", "log_prob_threshold", "no_speech_threshold",
                     "language_detection_threshold"):
            _number(name, getattr(self, name), optional=True)
        _number("hallucination_silence_threshold", self.hallucination_silence_threshold, optional=True, minimum=0)
        for name in ("condition_on_previous_text", "suppress_blank", "without_timestamps", "word_timestamps",
                     "multilingual", "vad_filter"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be a bool, got {getattr(self, name)!r}")
        for name in ("prefix", "hotwords"):
            if getattr(self, name) is not None and not isinstance(getattr(self, name), str):
                raise ValueError(f"{name} must be a string or None, got {getattr(self, name)!r}")
        for name in ("prepend_punctuations", "append_punctuations"):
            if not isinstance(getattr(self, name), str):
                raise ValueError(f"{name} must be a string, got {getattr(self, name)!r}")
        self._normalise_sequences()

    def _normalise_sequences(self) -> None:
        temps = self.temperature
        if isinstance(temps, (list, tuple)):
            temps = tuple(_number("temperature", t, minimum=0) for t in temps)  # type: ignore[misc]
            if not temps:
                raise ValueError("temperature: the fallback schedule is empty")
            object.__setattr__(self, "temperature", temps)
        else:
            object.__setattr__(self, "temperature", _number("temperature", temps, minimum=0))
        if self.suppress_tokens is not None:
            ids = _token_ids("suppress_tokens", self.suppress_tokens)
            if any(t < -1 for t in ids):
                raise ValueError(f"suppress_tokens: ids must be >= 0, or -1 for the default set; got {ids}")
            object.__setattr__(self, "suppress_tokens", ids)
        if self.initial_prompt is not None and not isinstance(self.initial_prompt, str):
            ids = _token_ids("initial_prompt", self.initial_prompt)
            if any(t < 0 for t in ids):
                raise ValueError(f"initial_prompt: token ids must be >= 0, got {ids}")
            object.__setattr__(self, "initial_prompt", ids)
        if isinstance(self.clip_timestamps, str):
            parse_clip_timestamps(self.clip_timestamps)
        else:
            object.__setattr__(self, "clip_timestamps", parse_clip_timestamps(self.clip_timestamps))

    # -- derived values -----------------------------------------------------------------------------------
    @property
    def applies_vad(self) -> bool:
        """Whether the VAD runs: ``vad_filter`` on and ``clip_timestamps`` left at ``"0"`` (faster-whisper
        ignores the VAD when clips are given)."""
        return self.vad_filter and self.clip_timestamps == "0"

    @property
    def temperatures(self) -> tuple[float, ...]:
        """The fallback schedule (one temperature: a schedule of one)."""
        t = self.temperature
        return t if isinstance(t, tuple) else (float(t),)  # type: ignore[arg-type]

    @property
    def clip_seconds(self) -> tuple[float, ...]:
        """``clip_timestamps`` as numbers (see :func:`parse_clip_timestamps`)."""
        return parse_clip_timestamps(self.clip_timestamps)

    @property
    def max_initial_timestamp_index(self) -> int:
        """The latest first timestamp, in timestamp steps (faster-whisper's rounding)."""
        return int(round(self.max_initial_timestamp / TIME_PRECISION))
