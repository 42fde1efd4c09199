"""The seek loop: a recording in, :class:`~.results.Segment` s out, window by window, with faster-whisper's
semantics (``WhisperModel.transcribe`` / ``generate_segments``), over any :class:`~.protocol.WindowRecognizer`.

:meth:`Transcription.start` computes the features (:mod:`.features`), settles the language (given, English for
English-only models, or detected: :mod:`.detection`) and the tokenizer; :meth:`Transcription.segments` then
walks the clips (``clip_timestamps``; the whole recording by default). Per 30 s window starting at ``seek``:

1. encode ``features[:, seek:seek + size]`` (padded to 3000 frames); with ``multilingual``, detect the window's
   language;
2. build the prompt from the previous text (:func:`.fallback.build_prompt`) and decode with temperature
   fallback (:func:`.fallback.generate_with_fallback`);
3. skip the window when it is silence (no-speech probability above ``no_speech_threshold`` and a low log
   probability);
4. cut the tokens into segments at timestamps, which also gives the next ``seek``
   (:func:`.segmentation.split_by_timestamps`);
5. with ``word_timestamps``: align the text (:meth:`WindowRecognizer.align`), time the words (:mod:`.timing`),
   move ``seek`` to the end of the last word, and skip silence before likely hallucinations
   (:mod:`.hallucination`);
6. emit the segments that have text and a duration; their tokens become the next prompt's previous text,
   unless ``condition_on_previous_text`` is off or the window needed a temperature above
   ``prompt_reset_on_temperature``.

With ``vad_filter`` (:attr:`TranscriptionOptions.applies_vad`), the loop runs on the speech only, joined
(:func:`.speech.speech_only`, before the features), and each segment is mapped back to the original timeline
as it is emitted (:func:`.speech.restore_timestamps`).

One deviation: a window that would not move ``seek`` forward (its tokens end in a timestamp pair at
``<|0.00|>``), which faster-whisper decodes again and again, is skipped.

Every window is closed before its segments are yielded, and on errors and cancellation, so an abandoned
iteration holds nothing.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import AsyncGenerator, AsyncIterator

import anyio
import numpy as np

from ..audio.io import N_FRAMES, SAMPLE_RATE, validate_audio
from ..audio.vad import SpeechTimestampsMap
from ..decoder.languages import language_code
from ..decoder.tokenizer import Tokenizer
from .detection import detect_language
from .fallback import WindowDecoding, build_prompt, generate_with_fallback, suppress_token_ids
from .features import FRAMES_PER_SECOND, TIME_PER_FRAME, audio_features, content_frames, window_features
from .hallucination import HallucinationWindow, skip_hallucinations
from .options import TranscriptionOptions, vad_options
from .protocol import WindowRecognizer
from .results import Segment, TranscriptionInfo, TranscriptionResult, Word
from .segmentation import WindowSplit, split_by_timestamps
from .speech import restore_timestamps, speech_only
from .timing import add_word_timestamps, last_end, words_from_alignment

__all__ = ["Transcription", "checked_input", "transcribe_segments", "transcribe"]

log = logging.getLogger(__name__)
_MEDIAN_FILTER_WIDTH = 7


@dataclass(frozen=True)
class _Decoded:
    """One window decoded: ``split is None`` when it was skipped as silence."""

    decoding: WindowDecoding
    split: WindowSplit | None


class Transcription:
    """One recording being transcribed: :attr:`info` is known once :meth:`start` returns; iterate
    :meth:`segments` (once) for the segments as each window is decoded."""

    def __init__(self, decoder: WindowRecognizer, features: np.ndarray, tokenizer: Tokenizer,
                 options: TranscriptionOptions, info: TranscriptionInfo, speech: SpeechTimestampsMap | None = None):
        self.decoder = decoder
        self.features = features
        self.tokenizer = tokenizer
        self.options = options
        self.info = info
        self._suppress = suppress_token_ids(tokenizer, options.suppress_tokens)
        self._multilingual = options.multilingual and tokenizer.multilingual
        self._speech = speech  # the VAD's map back to the original timeline, when speech was cut out
        self._started = False

    @classmethod
    async def start(cls, decoder: WindowRecognizer, audio: np.ndarray,
                    options: TranscriptionOptions) -> Transcription:
        """Compute the features and settle the language (detecting it when needed).

        ``audio`` is float32 mono 16 kHz samples as :func:`~aiowhisper_npu.audio.io.validate_audio` returns
        them, and ``options`` a :class:`TranscriptionOptions`: both are checked at the API edge
        (:func:`transcribe`, :func:`transcribe_segments`, the runtime), not here.

        Raises:
            ValueError: an option does not fit this model (an unknown language, a token id beyond the
                vocabulary, a prompt longer than the context).
            BackendUnavailable: ``vad_filter`` without the 'vad' extra.
        """
        base = decoder.tokenizer
        _check_token_ids(options, base.n_vocab)
        duration = after_vad = audio.shape[0] / SAMPLE_RATE
        given, speech = options.vad_parameters, None
        vad = None if given is None and not options.applies_vad else vad_options(given)
        if vad is not None and options.applies_vad:
            kept = await anyio.to_thread.run_sync(speech_only, audio, vad)
            audio, after_vad, speech = kept.audio, kept.duration, kept.timestamps_map()
            log.info("the VAD kept %.2f s of %.2f s", after_vad, duration)
        features = await anyio.to_thread.run_sync(audio_features, audio, decoder.dims.n_mels)
        task = options.task
        if not base.multilingual:
            if options.multilingual:
                log.warning("the model is English-only: multilingual=True is ignored")
            if options.language is not None and language_code(options.language) != "en":
                log.warning("the model is English-only: language %r is replaced by 'en'", options.language)
            task = "transcribe"  # English-only models have no task token (faster-whisper ignores the task)
        all_probs = None
        if not base.multilingual:
            language, probability = "en", 1.0
        elif options.language is not None:
            language, probability = language_code(options.language), 1.0
        else:
            clip = options.clip_seconds
            start_time = clip[0] if clip else 0.0
            frames = content_frames(features)
            seek = int(start_time * FRAMES_PER_SECOND) if start_time * FRAMES_PER_SECOND < frames else 0
            found = await detect_language(decoder, features[:, seek:], segments=options.language_detection_segments,
                                          threshold=options.language_detection_threshold)
            language, probability, all_probs = found.language, found.probability, found.all_language_probs
            log.info("detected language %r with probability %.2f", language, probability)
        tokenizer = base.with_task(task).with_language(language)
        info = TranscriptionInfo(language=tokenizer.language or language, language_probability=probability,
                                 duration=duration, all_language_probs=all_probs, transcription_options=options,
                                 duration_after_vad=after_vad, vad_options=vad)
        return cls(decoder, features, tokenizer, options, info, speech)

    # -- the seek loop ------------------------------------------------------------------------------------
    def _clips(self) -> list[tuple[int, int]]:
        points = [round(t * FRAMES_PER_SECOND) for t in self.options.clip_seconds] or [0]
        if len(points) % 2 == 1:
            points.append(content_frames(self.features))
        return list(zip(points[::2], points[1::2]))

    async def segments(self) -> AsyncGenerator[Segment, None]:
        """The segments, in order, each yielded once its window is decoded (see the module docstring)."""
        if self._started:
            raise RuntimeError("a Transcription's segments can be iterated once")
        self._started = True
        opts = self.options
        frames = content_frames(self.features)
        clips = self._clips()
        clip_index, seek, emitted = 0, clips[0][0], 0
        all_tokens: list[int] = _initial_prompt_tokens(self.tokenizer, opts)
        prompt_reset_since = 0
        last_speech = 0.0
        while clip_index < len(clips):
            clip_start, clip_end = clips[clip_index][0], min(clips[clip_index][1], frames)
            seek = max(seek, clip_start)
            if seek >= clip_end:
                clip_index += 1
                if clip_index < len(clips):
                    seek = clips[clip_index][0]
                continue
            time_offset = seek * TIME_PER_FRAME
            size = min(N_FRAMES, frames - seek, clip_end - seek)
            duration = size * TIME_PER_FRAME
            decoded = await self._decode_window(seek, size, all_tokens[prompt_reset_since:], last_speech)
            if decoded.split is None:
                seek += size
                continue
            previous_seek, drafts = seek, decoded.split.segments
            seek = decoded.split.seek
            if opts.word_timestamps:
                end = last_end(drafts)
                if not decoded.split.single_timestamp_ending and end is not None and end > time_offset:
                    seek = round(end * FRAMES_PER_SECOND)
                if opts.hallucination_silence_threshold is not None:
                    window = HallucinationWindow(opts.hallucination_silence_threshold, time_offset,
                                                 float((previous_seek + N_FRAMES) * TIME_PER_FRAME), duration,
                                                 float(frames * TIME_PER_FRAME), frames, previous_seek)
                    seek, redo = skip_hallucinations(drafts, window, seek, last_speech)
                    if redo:
                        seek = _progress(seek, previous_seek, size)
                        continue
                end = last_end(drafts)
                if end is not None:
                    last_speech = end
            d = decoded.decoding
            for draft in drafts:
                text = self.tokenizer.decode(draft.tokens)
                if draft.start == draft.end or not text.strip():
                    continue
                all_tokens.extend(draft.tokens)
                emitted += 1
                words = ([Word(float(w.start), float(w.end), w.word, float(w.probability)) for w in draft.words]
                         if opts.word_timestamps else None)
                segment = Segment(id=emitted, seek=previous_seek, start=float(draft.start), end=float(draft.end),
                                  text=text, tokens=list(draft.tokens), avg_logprob=d.avg_logprob,
                                  compression_ratio=d.compression_ratio, no_speech_prob=d.no_speech_prob,
                                  words=words, temperature=d.temperature)
                yield segment if self._speech is None else restore_timestamps(segment, self._speech)
            if not opts.condition_on_previous_text or d.temperature > opts.prompt_reset_on_temperature:
                prompt_reset_since = len(all_tokens)
            seek = _progress(seek, previous_seek, size)

    async def _decode_window(self, seek: int, size: int, previous_tokens: list[int], last_speech: float) -> _Decoded:
        """Steps 1-5 of the module docstring for the window at ``seek``; the window is closed on return."""
        opts = self.options
        window = await self.decoder.encode(window_features(self.features, seek, size))
        try:
            if self._multilingual:
                probs = await self.decoder.detect_language(window)
                self.tokenizer = self.tokenizer.with_language(probs[0][0])
            prompt = build_prompt(self.tokenizer, previous_tokens, without_timestamps=opts.without_timestamps,
                                  prefix=opts.prefix if seek == 0 else None, hotwords=opts.hotwords)
            decoding = await generate_with_fallback(self.decoder, window, prompt, self.tokenizer, opts, self._suppress)
            if opts.no_speech_threshold is not None:
                silent = decoding.no_speech_prob > opts.no_speech_threshold
                if opts.log_prob_threshold is not None and decoding.avg_logprob > opts.log_prob_threshold:
                    silent = False
                if silent:
                    log.debug("no speech at frame %d (%f > %f)", seek, decoding.no_speech_prob,
                              opts.no_speech_threshold)
                    return _Decoded(decoding, None)
            split = split_by_timestamps(self.tokenizer, decoding.tokens, seek * TIME_PER_FRAME, size,
                                        size * TIME_PER_FRAME, seek)
            if opts.word_timestamps:
                eot = self.tokenizer.eot
                text = [t for draft in split.segments for t in draft.tokens if t < eot]
                aligned = []
                if text:
                    [alignment] = await self.decoder.align(window, self.tokenizer.sot_sequence, [text], size,
                                                           _MEDIAN_FILTER_WIDTH)
                    aligned = words_from_alignment(self.tokenizer, text, alignment)
                add_word_timestamps(split.segments, self.tokenizer, aligned, opts.prepend_punctuations,
                                    opts.append_punctuations, last_speech)
            return _Decoded(decoding, split)
        finally:
            window.close()


def _progress(seek: int, previous_seek: int, size: int) -> int:
    """The next window's start, past this one's. faster-whisper would decode the same window again when the
    tokens end in a timestamp pair at ``<|0.00|>`` (or a hallucination skip rounds to no move): with the same
    prompt and greedy decoding, for ever. Such a window is skipped instead."""
    if seek > previous_seek:
        return seek
    log.warning("no progress at frame %d: skipping the window", previous_seek)
    return previous_seek + size


def _check_token_ids(options: TranscriptionOptions, n_vocab: int) -> None:
    for name in ("suppress_tokens", "initial_prompt"):
        value = getattr(options, name)
        if isinstance(value, tuple) and any(t >= n_vocab for t in value):
            raise ValueError(f"{name}: token ids must be below the vocabulary size {n_vocab}, got {value}")


def _initial_prompt_tokens(tokenizer: Tokenizer, options: TranscriptionOptions) -> list[int]:
    prompt = options.initial_prompt
    if prompt is None:
        return []
    if isinstance(prompt, str):
        return tokenizer.encode(" " + prompt.strip())
    return list(prompt)


def checked_input(audio: np.ndarray, options: TranscriptionOptions | None) -> tuple[np.ndarray, TranscriptionOptions]:
    """The API edge: ``audio`` validated (:func:`~aiowhisper_npu.audio.io.validate_audio`) and ``options``
    (default: faster-whisper's defaults) type-checked.

    Raises:
        AudioError: ``audio`` is not finite mono float audio at 16 kHz.
        TypeError: ``options`` is not a :class:`TranscriptionOptions`.
    """
    options = TranscriptionOptions() if options is None else options
    if not isinstance(options, TranscriptionOptions):
        raise TypeError(f"options must be TranscriptionOptions, got {type(options).__name__}")
    return validate_audio(audio), options


async def transcribe_segments(decoder: WindowRecognizer, audio: np.ndarray,
                              options: TranscriptionOptions | None = None) -> AsyncIterator[Segment]:
    """The segments of ``audio`` as each window is decoded (:meth:`Transcription.start`, then
    :meth:`Transcription.segments`); use :meth:`Transcription.start` directly to read the info first."""
    transcription = await Transcription.start(decoder, *checked_input(audio, options))
    async for segment in transcription.segments():
        yield segment


async def transcribe(decoder: WindowRecognizer, audio: np.ndarray,
                     options: TranscriptionOptions | None = None) -> TranscriptionResult:
    """Transcribe ``audio`` (float32 mono 16 kHz) completely: every segment and the info."""
    transcription = await Transcription.start(decoder, *checked_input(audio, options))
    segments = [segment async for segment in transcription.segments()]
    return TranscriptionResult(segments, transcription.info)
