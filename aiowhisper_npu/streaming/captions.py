"""Live captions: ``async for u in rt.captions(chunks)`` -- committed and tentative text as audio arrives.

::

    async with aw.Runtime("tiny.en") as rt:
        async with rt.captions(mic_chunks()) as s:      # or: async for u in rt.captions(...)
            async for u in s:
                u.committed, u.new, u.tentative, u.segments, u.final, u.audio_s, u.latency_s

**The loop** (the policy of ufal/whisper_streaming). The stream keeps an audio *buffer* that starts where the
committed text was last cut. Every ``update_every_s`` of new audio (or, when compute falls behind, at once with
everything that arrived meanwhile: stale update points are coalesced, never queued), it

1. appends the new audio to the buffer and its incremental log-mel
   (:class:`~aiowhisper_npu.audio.mel_stream.IncrementalLogMel`, one 30 s window that holds the buffer);
2. encodes the buffer (:meth:`~aiowhisper_npu.transcription.protocol.WindowRecognizer.encode`: the runtime's
   tile pipeline and the window's cross-attention cache), with ``context="bucketed"`` only the first
   ``k * 256`` positions that hold it plus ``bucket_margin_s`` of padding, and at least ``min_context_s``
   (:func:`~aiowhisper_npu.streaming.stream.context_positions`), else the full 1500; a bucketed decoding
   that loops (its text compresses too well) is done again on twice the context (up to the full one); on a
   multilingual model without a ``language``, the window's language is detected until something is committed;
3. decodes it, prompted with the last 200 characters of committed text before the buffer, into timed words
   (:func:`~aiowhisper_npu.streaming.hypothesis.decode_buffer`; the decoder engine batches the steps of every
   stream and transcription on the runtime). Until the buffer is next cut, the previous hypothesis' tokens
   are the *draft* of this decoding: one pass verifies them all and only the tokens after the first one that
   differs are decoded step by step (draft and verify, :mod:`aiowhisper_npu.decoder.generation`), so an
   update costs about one pass plus a step per new token instead of a step per token of the buffer;
4. commits the longest prefix on which the last ``agreement`` hypotheses agree
   (:class:`~aiowhisper_npu.streaming.agreement.LocalAgreement`);
5. cuts the buffer at the end of the last committed Whisper segment (or sentence) once it is longer than
   ``trim_s``, after its last committed word once it is longer than ``word_trim_s`` (whisper_streaming's 15 s:
   a longer buffer gives Whisper more context, so fewer words go wrong); while the stream is *busy* (its
   update compute over the last 10 updates exceeds ``busy_above`` of the audio they covered: it is near to
   falling behind, e.g. with many streams on the runtime; :class:`~aiowhisper_npu.streaming.busy.BusySwitch`)
   the shorter ``busy_trim_s`` and ``busy_word_trim_s`` apply instead, so that the work per update shrinks
   under load (it is left when the figure drops below 0.6 of ``busy_above``); a silent buffer
   (no-speech probability, see :mod:`.hypothesis`) is cut to its last ``silence_keep_s``; a buffer that
   would exceed ``max_buffer_s`` (speech without any agreement, or a consumer far behind) first
   commits the tentative words that start before the cut. So each update encodes at most one window and
   decodes at most ``max_buffer_s`` of audio, however long the stream runs.

At the end of the audio the last update (``final=True``) commits the whole tentative tail.

**The input is a :class:`~aiowhisper_npu.streaming.input.StreamInput`**, as for the encode stream: the
bounded chunk reader with backpressure (``max_queued_s``), validation (a bad chunk raises
:class:`~aiowhisper_npu.errors.AudioError` in this stream only), streaming resampling (``sample_rate=``), one
consumer at a time, and the cleanup: leaving ``async with``, ``aclose()``, an error or a cancellation stops
the reader and drops the buffer; an encode or a decoding cancelled midway returns its tiles and releases its
decoder caches before the cancellation propagates.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, AsyncIterable, Awaitable, Callable, Iterable, Self

import anyio
import numpy as np

from ..audio.io import N_SAMPLES, SAMPLE_RATE
from ..audio.mel_stream import IncrementalLogMel
from ..decoder.tokenizer import Tokenizer
from ..transcription.fallback import suppress_token_ids
from ..transcription.protocol import WindowRecognizer
from .agreement import LocalAgreement, TimedWord
from .busy import BusySwitch
from .hypothesis import DecodeSettings, Hypothesis, decode_buffer
from .input import StartBackground, StreamInput, StreamLag, maybe_in_thread
from .stream import SAMPLES_PER_POSITION, check_context, context_positions

__all__ = ["CaptionSegment", "CaptionUpdate", "CaptionStream"]

_now = time.perf_counter
_SENTENCE_ENDS = (".", "?", "!", "。", "？", "！")  # a committed word ending so closes a segment too
_PROMPT_CHARS = 200  # committed text in the prompt (whisper_streaming: 200 characters)


@dataclass(frozen=True)
class CaptionSegment:
    """A committed Whisper segment, in stream seconds. The last one may still grow until it is closed."""

    start: float
    end: float
    text: str


@dataclass(frozen=True, eq=False)
class CaptionUpdate:
    """One update of a caption stream.

    ``committed`` only ever grows: ``u.committed == previous.committed + u.new``. ``tentative`` is the newest
    hypothesis' unconfirmed tail. ``segments`` cover the committed text, in order. ``final`` is set on the
    last update, where everything is committed. ``audio_s`` is the stream time the update has heard up to;
    ``latency_s`` runs from the arrival of its newest audio to the update being ready.
    """

    committed: str
    new: str
    tentative: str
    segments: tuple[CaptionSegment, ...]
    final: bool
    audio_s: float
    latency_s: float
    new_words: tuple[TimedWord, ...]  # the words committed by this update
    buffer_s: float  # audio the update decoded (the buffer after adding the new audio)
    n_ctx: int  # encoder positions computed for it
    compute_s: float  # log-mel + encode + decode wall time of this update
    no_speech_prob: float
    skipped: int  # update points coalesced into this one
    lag: StreamLag
    tokens: int = 0  # tokens the update's decoding produced
    draft_accepted: int = 0  # of them, confirmed from the previous hypothesis in one pass (see ``draft``)
    busy: bool = False  # the buffer is cut at the busy bounds (see ``busy_above``)


class CaptionStream:
    """An async iterator of :class:`CaptionUpdate` and an async context manager (``rt.captions``).

    Args:
        recognizer: returns the recognizer the buffer is encoded and decoded with (awaited at the first
            update: the runtime builds its decoder engine on first use).
        chunks: as for ``rt.encode_stream()``: an async iterable (or a list) of 1-D float arrays at
            ``sample_rate``.
        background: starts the reader of a bare ``async for`` stream in the runtime's service host.
        language: a language code for multilingual models (``None``: detected until something is committed).
        task: ``"transcribe"`` or ``"translate"`` (multilingual models).
        update_every_s: new audio between updates.
        agreement: ``n`` of LocalAgreement-n.
        context, bucket_margin_s: the encoder context of the buffer (``"bucketed"`` or ``"full"``).
        min_context_s: a bucketed context holds at least this much audio (the smallest bucket, 5.12 s, makes
            short buffers loop, and a loop costs a second decoding on a wider context).
        draft: verify the previous hypothesis as a draft of the next decoding (see step 3 of the module
            docstring); ``False`` decodes every buffer from scratch (the same words, more passes).
        trim_s, word_trim_s, silence_keep_s, max_buffer_s: buffer bounds (see the module docstring).
        busy_trim_s, busy_word_trim_s, busy_above: the shorter bounds under load and when they apply (step 5
            of the module docstring; ``busy_trim_s=trim_s, busy_word_trim_s=word_trim_s`` turns it off).
        beam_size, no_speech_threshold, log_prob_threshold, no_speech_strict: decoding (:class:`DecodeSettings`).
        sample_rate, max_queued_s, max_queued_chunks: as for ``rt.encode_stream()``.
    """

    def __init__(self, recognizer: Callable[[], Awaitable[WindowRecognizer]],
                 chunks: AsyncIterable[Any] | Iterable[Any], *, background: StartBackground,
                 language: str | None = None, task: str = "transcribe", update_every_s: float = 0.5,
                 agreement: int = 2, context: str = "bucketed", bucket_margin_s: float = 2.0, trim_s: float = 15.0,
                 word_trim_s: float = 20.0, busy_trim_s: float = 5.0, busy_word_trim_s: float = 10.0,
                 busy_above: float = 0.9, silence_keep_s: float = 2.0, max_buffer_s: float = 25.0, beam_size: int = 1,
                 no_speech_threshold: float = 0.6, log_prob_threshold: float = -1.0, no_speech_strict: float = 0.9,
                 draft: bool = True, min_context_s: float = 10.0, sample_rate: int = SAMPLE_RATE,
                 max_queued_s: float = 5.0, max_queued_chunks: int = 1024) -> None:
        if not (isinstance(update_every_s, (int, float)) and 0 < update_every_s < math.inf):
            raise ValueError(f"update_every_s must be a positive number of seconds, got {update_every_s!r}")
        if task not in ("transcribe", "translate"):
            raise ValueError(f"task must be 'transcribe' or 'translate', got {task!r}")
        if not (0 < silence_keep_s <= max_buffer_s and 0 < trim_s < max_buffer_s and 0 < word_trim_s < max_buffer_s
                and max_buffer_s <= N_SAMPLES / SAMPLE_RATE):
            raise ValueError("need 0 < silence_keep_s, trim_s, word_trim_s < max_buffer_s <= 30, got "
                             f"{silence_keep_s!r}, {trim_s!r}, {word_trim_s!r}, {max_buffer_s!r}")
        if not (0 < busy_trim_s <= trim_s and 0 < busy_word_trim_s <= word_trim_s and busy_above > 0):
            raise ValueError("need 0 < busy_trim_s <= trim_s, 0 < busy_word_trim_s <= word_trim_s and "
                             f"busy_above > 0, got {busy_trim_s!r}, {busy_word_trim_s!r}, {busy_above!r}")
        check_context(context, bucket_margin_s)
        self._input = StreamInput(chunks, background=background, sample_rate=sample_rate,
                                  max_queued_s=max_queued_s, max_queued_chunks=max_queued_chunks)
        self.context = context
        self.update_every_s = float(update_every_s)
        self._step = max(1, round(update_every_s * SAMPLE_RATE))
        self._margin = math.ceil(bucket_margin_s * SAMPLE_RATE / SAMPLES_PER_POSITION)  # positions
        self._agreement = LocalAgreement(agreement)  # validates n
        self._get_recognizer = recognizer
        self._language, self._task = language, task
        self._settings = DecodeSettings(beam_size=beam_size, no_speech_threshold=no_speech_threshold,
                                        log_prob_threshold=log_prob_threshold, no_speech_strict=no_speech_strict)
        self._trims = (round(trim_s * SAMPLE_RATE), round(word_trim_s * SAMPLE_RATE))
        self._busy_trims = (round(busy_trim_s * SAMPLE_RATE), round(busy_word_trim_s * SAMPLE_RATE))
        self.busy_switch = BusySwitch(busy_above)
        self._keep_silence = round(silence_keep_s * SAMPLE_RATE)
        self._max_buffer = round(max_buffer_s * SAMPLE_RATE)
        self._buffer = np.zeros(0, np.float32)
        self._buffer_start = 0  # stream sample of the buffer's first sample
        self._lm: IncrementalLogMel | None = None  # the buffer's log-mel, from the first update
        self._recognizer: WindowRecognizer | None = None
        self._tokenizer: Tokenizer | None = None
        self._detected: Tokenizer | None = None  # the newest language detection, until the first commit
        self._finished = False
        self._committed = ""
        self._prompt_text = ""  # committed text before the buffer (its tail)
        self._in_buffer: list[TimedWord] = []  # committed words not yet cut from the buffer
        self._closed_segments: tuple[CaptionSegment, ...] = ()
        self._open_words: list[TimedWord] = []
        self._boundary_s = 0.0  # end of the last committed Whisper segment
        self._use_draft = bool(draft)
        self._min_context = round(max(0.0, min_context_s) * SAMPLE_RATE)  # samples
        self._n_audio_ctx = self._min_ctx = 0  # known with the recognizer (the first update)
        self._draft: tuple[int, ...] = ()  # the previous hypothesis' tokens, while its buffer and prompt hold
        self.live_windows = 0  # decoder windows (cross-attention caches) alive right now
        self.max_buffer_samples_seen = 0

    # -- lifecycle --------------------------------------------------------------------------------------
    async def __aenter__(self) -> Self:
        await self._input.enter()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        self._drop()
        await self._input.exit()

    async def aclose(self) -> None:
        """Stop the stream and wait until its reader task has finished. Idempotent."""
        self._drop()
        await self._input.aclose()

    def _drop(self) -> None:
        self._input.close()
        self._lm = None
        self._buffer = np.zeros(0, np.float32)

    @property
    def lag(self) -> StreamLag:
        """The stream's lag right now."""
        return self._input.lag

    @property
    def buffered_samples(self) -> int:
        """Samples in the audio buffer right now (what the next update decodes, before new audio)."""
        return int(self._buffer.size)

    @property
    def committed(self) -> str:
        """All committed text so far."""
        return self._committed

    # -- iteration --------------------------------------------------------------------------------------
    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> CaptionUpdate:
        return await self._input.next(self._next, self._drop)

    async def _next(self) -> CaptionUpdate:
        if self._finished:
            raise StopAsyncIteration
        inp = self._input
        while True:
            await inp.fill(block=False)  # everything queued: update points passed over are coalesced
            if inp.closed:
                raise StopAsyncIteration
            if inp.ended and inp.backlog_samples <= self._max_step():
                if inp.failed and inp.backlog_samples:
                    return await self._update(final=False)
                inp.check_end()
                self._finished = True
                return await self._update(final=True)
            if inp.backlog_samples >= self._step:
                return await self._update(final=False)
            await inp.fill(block=True)

    def _max_step(self) -> int:
        return self._max_buffer // 2  # audio taken into the buffer by one update at most

    async def _update(self, final: bool) -> CaptionUpdate:
        t0 = _now()
        recognizer = await self._ensure_recognizer()
        fresh = self._input.take(self._max_step())
        self._input.consume(fresh.size)
        points = fresh.size // self._step
        forced: list[TimedWord] = []
        forced_text = ""
        if self._buffer.size + fresh.size > self._max_buffer:
            forced = self._agreement.commit_before(
                (self._buffer_start + self._buffer.size + fresh.size - self._max_buffer) / SAMPLE_RATE)
            forced_text = self._commit(forced)
            await self._cut(max(self._buffer.size + fresh.size - self._max_buffer,
                                self._samples_before(self._agreement.committed_end)))
        if fresh.size:
            self._buffer = np.concatenate([self._buffer, fresh])
            lm = self._lm
            assert lm is not None
            await maybe_in_thread(lm.push, fresh)
        n = int(self._buffer.size)
        self.max_buffer_samples_seen = max(self.max_buffer_samples_seen, n)
        offset_s = self._buffer_start / SAMPLE_RATE
        hyp, n_ctx = Hypothesis((), 0.0, 0.0, True, False, 0), 0
        if n:
            hyp, n_ctx = await self._hypothesis(recognizer, n, offset_s)
        new_words = self._agreement.insert(list(hyp.words))
        if final:
            new_words += self._agreement.commit_all()
        new = self._commit(new_words)
        if forced:
            new, new_words = forced_text + new, forced + new_words
        if not final:
            await self._trim_after(hyp)
        t1 = _now()
        end = self._buffer_start + self._buffer.size
        skipped = max(0, points - 1)
        compute_s = self._input.record(t1 - t0, end, final=final, skipped=skipped)
        if final:
            self._close_segment()
        segments = self._closed_segments + ((self._open_segment(),) if self._open_words else ())
        tentative = "" if final else "".join(w.text for w in self._agreement.tentative)
        if not self._committed:
            tentative = tentative.lstrip()
        return CaptionUpdate(
            committed=self._committed, new=new, tentative=tentative, segments=segments, final=final,
            audio_s=end / SAMPLE_RATE, latency_s=t1 - self._input.newest_t if n else 0.0, new_words=tuple(new_words),
            buffer_s=n / SAMPLE_RATE, n_ctx=n_ctx, compute_s=compute_s, no_speech_prob=hyp.no_speech_prob,
            skipped=skipped, lag=self.lag, tokens=hyp.tokens, draft_accepted=hyp.draft_accepted,
            busy=self.busy_switch.busy)

    async def _hypothesis(self, recognizer: WindowRecognizer, n: int, offset_s: float) -> tuple[Hypothesis, int]:
        lm = self._lm
        assert lm is not None
        t0 = _now()
        mel = await anyio.to_thread.run_sync(lm.snapshot)
        self._input.bill(_now() - t0)
        full = self._n_audio_ctx
        n_ctx = full
        if self.context == "bucketed":
            n_ctx = max(context_positions(n, full, margin_positions=self._margin), self._min_ctx)
        draft = self._draft if self._use_draft else ()
        while True:
            tokenizer = self._tokenizer
            assert tokenizer is not None
            window = await recognizer.encode(mel, None if n_ctx >= full else n_ctx)
            self.live_windows += 1
            try:
                if tokenizer.multilingual and self._language is None:
                    probs = await recognizer.detect_language(window)
                    tokenizer = self._detected = tokenizer.with_language(probs[0][0])
                hyp = await decode_buffer(recognizer, tokenizer, window, n, offset_s, self._prompt_text,
                                          self._settings, draft)
            finally:
                window.close()
                self.live_windows -= 1
            if not hyp.unreliable or n_ctx >= full:
                self._draft = () if hyp.unreliable else hyp.ids
                return hyp, n_ctx
            n_ctx = min(full, 2 * n_ctx)  # a loop on a bucketed context (whisper.cpp's audio_ctx failure): widen it

    async def _ensure_recognizer(self) -> WindowRecognizer:
        if self._recognizer is None:
            recognizer = await self._get_recognizer()
            dims = recognizer.dims
            self._n_audio_ctx = dims.n_audio_ctx
            self._min_ctx = context_positions(self._min_context, self._n_audio_ctx)
            if self._lm is None and not self._input.closed:
                self._lm = IncrementalLogMel(dims.n_mels)
            base = recognizer.tokenizer
            tokenizer = base.with_task(self._task if base.multilingual else "transcribe")
            if base.multilingual and self._language is not None:
                tokenizer = tokenizer.with_language(self._language)
            self._tokenizer = tokenizer
            self._settings = DecodeSettings(**{**self._settings.__dict__,
                                               "suppress_tokens": suppress_token_ids(tokenizer, (-1,))})
            self._recognizer = recognizer
        return self._recognizer

    # -- committing and cutting ---------------------------------------------------------------------------
    def _commit(self, words: list[TimedWord]) -> str:
        if not words:
            return ""
        if self._language is None and self._detected is not None:  # the language is settled by the first commit
            self._tokenizer, self._language = self._detected, self._detected.language
        new = "".join(w.text for w in words)
        if not self._committed:
            new = new.lstrip()
        self._committed += new
        self._in_buffer.extend(words)
        for w in words:
            self._open_words.append(w)
            if w.segment_end or w.text.rstrip().endswith(_SENTENCE_ENDS):
                self._close_segment()
                self._boundary_s = max(self._boundary_s, w.end)
        return new

    def _close_segment(self) -> None:
        if self._open_words:
            self._closed_segments += (self._open_segment(),)
            self._open_words = []

    def _open_segment(self) -> CaptionSegment:
        words = self._open_words
        return CaptionSegment(words[0].start, words[-1].end, "".join(w.text for w in words).strip())

    def _samples_before(self, t: float) -> int:
        """Buffer samples before stream second ``t`` (clamped to the buffer)."""
        return min(self._buffer.size, max(0, round(t * SAMPLE_RATE) - self._buffer_start))

    async def _trim_after(self, hyp: Hypothesis) -> None:
        n = self._buffer.size
        busy = self.busy_switch.update(self._input.recent_compute_s_per_audio_s())
        trim, word_trim = self._busy_trims if busy else self._trims
        if hyp.silent and not self._agreement.tentative and n > self._keep_silence:
            await self._cut(max(n - self._keep_silence, self._samples_before(self._agreement.committed_end)))
        elif n > trim and self._boundary_s * SAMPLE_RATE > self._buffer_start:
            await self._cut(self._samples_before(self._boundary_s))
        elif n > word_trim and self._in_buffer:  # a long sentence: cut after its committed words
            await self._cut(self._samples_before(self._in_buffer[-1].end))

    async def _cut(self, k: int) -> None:
        """Drop the buffer's first ``k`` samples; rebuild its log-mel from the rest."""
        k = min(int(k), self._buffer.size)
        if k <= 0:
            return
        self._buffer = self._buffer[k:].copy()
        self._buffer_start += k
        self._draft = ()  # its timestamps and its prompt no longer hold
        cut_s = self._buffer_start / SAMPLE_RATE
        i = 0
        while i < len(self._in_buffer) and self._in_buffer[i].end <= cut_s + 0.05:
            i += 1
        gone, self._in_buffer = self._in_buffer[:i], self._in_buffer[i:]
        self._prompt_text = (self._prompt_text + "".join(w.text for w in gone))[-_PROMPT_CHARS:]
        assert self._recognizer is not None
        lm = IncrementalLogMel(self._recognizer.dims.n_mels)
        t0 = _now()
        await maybe_in_thread(lm.push, self._buffer)
        self._input.bill(_now() - t0)
        self._lm = lm

