"""One window's prompt and its decoding with temperature fallback (faster-whisper's ``get_prompt`` and
``generate_with_fallback``).

The prompt is ``<|startofprev|>`` + hotwords + the last 223 previous tokens (when there are any), the start
sequence, ``<|notimestamps|>`` without timestamps, then (first window only) ``<|0.00|>`` and the prefix.

Each temperature of the schedule is tried in turn: beam search at 0, ``best_of`` samples above. A result
fails when its text compresses too well (zlib ratio above ``compression_ratio_threshold``: repetitive) or its
average log probability is below ``log_prob_threshold``, unless the window is silence (``no_speech_prob``
above ``no_speech_threshold`` with a low log probability). When every temperature fails, the result with the
best average log probability among those that passed the compression test (else among all) is kept, reported
at the last temperature tried.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Sequence

from ..decoder.options import MAX_LENGTH, GenerationOptions, GenerationResult
from ..decoder.tokenizer import Tokenizer
from .options import TranscriptionOptions
from .protocol import Window, WindowRecognizer

__all__ = ["build_prompt", "compression_ratio", "average_logprob", "generation_options", "suppress_token_ids",
           "WindowDecoding", "generate_with_fallback"]

#: At most this many tokens of previous text, hotwords or prefix go into a prompt (Whisper's half context - 1).
_MAX_PROMPT_PART = MAX_LENGTH // 2 - 1


def build_prompt(tokenizer: Tokenizer, previous_tokens: Sequence[int], *, without_timestamps: bool = False,
                 prefix: str | None = None, hotwords: str | None = None) -> list[int]:
    """The prompt of one window (see the module docstring); ``prefix`` only for the first window."""
    prompt: list[int] = []
    use_hotwords = bool(hotwords) and not prefix
    if previous_tokens or use_hotwords:
        prompt.append(tokenizer.sot_prev)
        if use_hotwords:
            assert hotwords is not None
            prompt.extend(tokenizer.encode(" " + hotwords.strip())[:_MAX_PROMPT_PART])
        if previous_tokens:
            prompt.extend(list(previous_tokens)[-_MAX_PROMPT_PART:])
    prompt.extend(tokenizer.sot_sequence)
    if without_timestamps:
        prompt.append(tokenizer.no_timestamps)
    if prefix:
        if not without_timestamps:
            prompt.append(tokenizer.timestamp_begin)
        prompt.extend(tokenizer.encode(" " + prefix.strip())[:_MAX_PROMPT_PART])
    return prompt


def compression_ratio(text: str) -> float:
    """Bytes of ``text`` over bytes of its zlib compression (repetitive text compresses well)."""
    data = text.encode("utf-8")
    return len(data) / len(zlib.compress(data))


def average_logprob(result: GenerationResult, length_penalty: float) -> float:
    """The mean log probability of the best sequence and its end-of-text token, recovered from its
    length-normalised score as faster-whisper does."""
    n = len(result.sequences_ids[0])
    scale = n**length_penalty if n > 0 or length_penalty >= 0 else 0.0  # an empty sequence: 0 (or 1 at 0)
    return float(result.scores[0]) * scale / (n + 1)


def suppress_token_ids(tokenizer: Tokenizer, suppress_tokens: Sequence[int] | None) -> tuple[int, ...]:
    """The explicit ids to suppress: ``-1`` stands for the non-speech symbols; a non-empty list also gets the
    task, start and no-speech tokens; ``None`` or empty suppresses nothing (faster-whisper's rules)."""
    if not suppress_tokens:
        return ()
    ids = {t for t in suppress_tokens if t >= 0}
    if -1 in suppress_tokens:
        ids.update(tokenizer.non_speech_tokens)
    ids.update((tokenizer.transcribe, tokenizer.translate, tokenizer.sot, tokenizer.sot_prev, tokenizer.sot_lm,
                tokenizer.no_speech))
    return tuple(sorted(ids))


def generation_options(options: TranscriptionOptions, temperature: float, max_length: int,
                       suppress_tokens: tuple[int, ...]) -> GenerationOptions:
    """The generation asked at one temperature: beam search at 0, ``best_of`` samples above."""
    if temperature > 0:
        strategy = dict(beam_size=1, num_hypotheses=options.best_of, sampling_topk=0,
                        sampling_temperature=temperature)
    else:
        strategy = dict(beam_size=options.beam_size, patience=float(options.patience))
    return GenerationOptions(length_penalty=float(options.length_penalty),
                             repetition_penalty=float(options.repetition_penalty),
                             no_repeat_ngram_size=options.no_repeat_ngram_size, max_length=max_length,
                             suppress_blank=options.suppress_blank, suppress_tokens=suppress_tokens,
                             max_initial_timestamp_index=options.max_initial_timestamp_index,
                             return_no_speech_prob=True, **strategy)  # type: ignore[arg-type]


@dataclass(frozen=True)
class WindowDecoding:
    """The decoding kept for a window and how it was judged."""

    result: GenerationResult
    avg_logprob: float
    temperature: float
    compression_ratio: float

    @property
    def tokens(self) -> list[int]:
        return list(self.result.sequences_ids[0])

    @property
    def no_speech_prob(self) -> float:
        return float(self.result.no_speech_prob)


def max_length_for(prompt: Sequence[int], max_new_tokens: int | None) -> int:
    """Prompt plus new tokens; :class:`ValueError` beyond Whisper's 448 positions."""
    max_length = len(prompt) + max_new_tokens if max_new_tokens is not None else MAX_LENGTH
    if max_length > MAX_LENGTH:
        raise ValueError(f"the prompt has {len(prompt)} tokens and max_new_tokens is {max_new_tokens}: together "
                         f"{max_length}, more than Whisper's {MAX_LENGTH}; shorten the prompt or max_new_tokens")
    return max_length


async def generate_with_fallback(decoder: WindowRecognizer, window: Window, prompt: Sequence[int], tokenizer: Tokenizer,
                                 options: TranscriptionOptions, suppress_tokens: tuple[int, ...]) -> WindowDecoding:
    """Decode ``window`` from ``prompt`` with temperature fallback (see the module docstring)."""
    max_length = max_length_for(prompt, options.max_new_tokens)
    tried: list[WindowDecoding] = []
    compressible: list[WindowDecoding] = []
    temperature = 0.0
    for temperature in options.temperatures:
        gen = generation_options(options, temperature, max_length, suppress_tokens)
        result = await decoder.generate(window, prompt, gen)
        if not result.sequences_ids or not result.scores:
            raise RuntimeError("the decoder returned no hypothesis")
        logprob = average_logprob(result, float(options.length_penalty))
        ratio = compression_ratio(tokenizer.decode(result.sequences_ids[0]).strip())
        decoding = WindowDecoding(result, logprob, temperature, ratio)
        tried.append(decoding)
        needs_fallback = False
        if options.compression_ratio_threshold is not None:
            if ratio > options.compression_ratio_threshold:
                needs_fallback = True
            else:
                compressible.append(decoding)
        low_logprob = options.log_prob_threshold is not None and logprob < options.log_prob_threshold
        if low_logprob:
            needs_fallback = True
        if (options.no_speech_threshold is not None and result.no_speech_prob > options.no_speech_threshold
                and low_logprob):
            needs_fallback = False  # silence
        if not needs_fallback:
            return decoding
    best = max(compressible or tried, key=lambda d: d.avg_logprob)
    return WindowDecoding(best.result, best.avg_logprob, temperature, best.compression_ratio)
