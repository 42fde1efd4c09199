"""What one decoding call is asked and what it answers: the contract between the seek loop
(:mod:`aiowhisper_npu.transcription.seek`) and whatever generates tokens for a window (our engine, or a test peer).

:class:`GenerationOptions` and :class:`GenerationResult` follow CTranslate2's ``Whisper.generate`` (its
``WhisperOptions`` and ``WhisperGenerationResult``), which is what faster-whisper drives, so that the seek
loop can keep faster-whisper's semantics exactly. :class:`AlignmentResult` follows ``Whisper.align``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["GenerationOptions", "GenerationResult", "AlignmentResult", "MAX_LENGTH"]

#: Whisper's text context: prompt plus generated tokens never exceed it.
MAX_LENGTH = 448


@dataclass(frozen=True)
class GenerationOptions:
    """One generation for one window and one prompt (CTranslate2's ``WhisperOptions``).

    * Beam search when ``sampling_topk == 1`` (``beam_size`` 1: greedy), with ``patience`` and the length
      penalty ``score / length ** length_penalty``; ``num_hypotheses`` best results are returned.
    * Random sampling when ``sampling_topk != 1`` (0: the whole vocabulary) at ``sampling_temperature``,
      ``num_hypotheses`` independent samples (faster-whisper's ``best_of``); ``beam_size`` must then be 1.
    * ``suppress_tokens``: explicit token ids, always suppressed (the caller resolves ``-1``);
      ``suppress_blank``: at the first generated position, suppress the blank (``" "``) and end-of-text.
    * ``max_initial_timestamp_index``: the first timestamp is at most ``<|0.00|>`` + this many steps.
    * ``max_length``: prompt plus generated tokens, at most :data:`MAX_LENGTH` (CTranslate2 also caps the
      generated tokens at ``max_length // 2``).
    * ``seed`` makes sampling reproducible (``None``: a fresh seed).
    """

    beam_size: int = 5
    patience: float = 1.0
    num_hypotheses: int = 1
    length_penalty: float = 1.0
    repetition_penalty: float = 1.0
    no_repeat_ngram_size: int = 0
    max_length: int = MAX_LENGTH
    suppress_blank: bool = True
    suppress_tokens: tuple[int, ...] = ()
    max_initial_timestamp_index: int = 50
    sampling_topk: int = 1
    sampling_temperature: float = 1.0
    return_no_speech_prob: bool = True
    seed: int | None = None

    def __post_init__(self) -> None:
        if self.beam_size < 1 or self.num_hypotheses < 1:
            raise ValueError(f"beam_size and num_hypotheses must be >= 1, got {self.beam_size}, {self.num_hypotheses}")
        if self.sampling_topk != 1 and self.beam_size != 1:
            raise ValueError("sampling (sampling_topk != 1) needs beam_size=1")
        if self.sampling_topk == 1 and self.num_hypotheses > self.beam_size:
            raise ValueError("num_hypotheses cannot exceed beam_size in beam search")
        if not 0 < self.max_length <= MAX_LENGTH:
            raise ValueError(f"max_length must be in 1..{MAX_LENGTH}, got {self.max_length}")
        if self.patience <= 0 or self.sampling_temperature <= 0:
            raise ValueError("patience and sampling_temperature must be > 0")


@dataclass(frozen=True)
class GenerationResult:
    """What a generation returns, best hypothesis first (CTranslate2's ``WhisperGenerationResult``).

    ``sequences_ids`` exclude the prompt and the end-of-text token. ``scores`` are the cumulated log
    probabilities divided by ``length ** length_penalty`` (faster-whisper recovers the average log probability
    from them). ``no_speech_prob`` is the probability of ``<|nospeech|>`` at the ``<|startoftranscript|>``
    position of the prompt.
    """

    sequences_ids: list[list[int]]
    scores: list[float]
    no_speech_prob: float = 0.0
    draft_accepted: int = 0  # draft tokens confirmed in the first pass (ours only; see decoder.generation)


@dataclass(frozen=True)
class AlignmentResult:
    """Word-timing alignment of one text (CTranslate2's ``WhisperAlignmentResult``).

    ``alignments`` is the DTW path as ``(text_index, time_index)`` pairs (time in 20 ms encoder positions);
    ``text_token_probs`` is the probability the model gave each text token.
    """

    alignments: list[tuple[int, int]] = field(default_factory=list)
    text_token_probs: list[float] = field(default_factory=list)
