"""One ``generate`` call as a step-wise state machine: :class:`Generation` (and :class:`LanguageDetection`),
with CTranslate2 4.8.5's ``Whisper.generate`` semantics, which faster-whisper drives.

A state machine never runs the decoder itself: whoever drives it (the batching engine, or :func:`generate`
here) asks :meth:`Generation.next_pass` for its :class:`~.kernels.Pass`, runs it with others through
:func:`~.kernels.forward`, and hands the output back to :meth:`Generation.feed`, until ``next_pass`` returns
``None``; :meth:`Generation.result` then gives the :class:`~.options.GenerationResult`.

The prompt, as CTranslate2 reads it: optional previous text (``<|startofprev|>`` ...), then
``<|startoftranscript|>`` and the special tokens after it (language, task, ``<|notimestamps|>``): the
*task run*; whatever follows is a *prefix* the output is forced to begin with (faster-whisper's ``prefix``,
with ``<|0.00|>`` first in timestamp mode): the result begins with it, as CTranslate2's (its tokens count in
the length, not in the score).

* The first pass is one prefill of the whole prompt, asking for the logits at ``<|startoftranscript|>``
  (the no-speech probability, from the raw logits) and at the last position (the first sampled step).
  CTranslate2 feeds the last task token and the prefix one step at a time; the logits are the same.
* Timestamp rules apply unless the task run ends with ``<|notimestamps|>``.
* At most ``min(max_length // 2, max_length - s)`` tokens are decoded, the prefix included, ``s`` being
  the prompt length up to (without) the last token of the task run; and never past the decoder's context
  (where CTranslate2 would read past its position table).
* Each step: the logit rules of :mod:`.logit_filters` in CTranslate2's order, then the search strategy of
  :mod:`.search` (greedy, random sampling, or beam search) over the log-softmax.

**Draft and verify** (greedy only: ``beam_size == 1``, ``sampling_topk == 1``, one hypothesis). A *draft* is
a guess of the tokens greedy decoding will produce (live captions pass the previous hypothesis of a grown
buffer). The first pass then prefills the prompt *and* the draft, asking for the logits at every draft
position; the steps are replayed from those logits (the same filters and search, in order) for as long as
the token picked equals the draft's, so every accepted draft token costs no pass of its own; the cache is
cut back to the accepted tokens and decoding goes on one step at a time from the first token that differs
(which the replay already picked). The tokens are those of plain greedy decoding as long as the prefill's
logits pick the same tokens as the steps' would: both compute the same function, but through different
products (BLAS for a prefill's rows, the few-row kernel for a step's), so they differ by float rounding
(relative ~1e-6), and a near-tie between the two best tokens could go the other way (tested: identical
tokens on the committed clips' caption buffers).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from ..errors import ModelError
from .cache import CrossCache, KVCache
from .kernels import Pass, PassOutput, PreparedDecoder, forward
from .logit_filters import LogitFilter, build_filters
from .options import GenerationOptions, GenerationResult
from .search import Advance, BeamSearch, BestSampler, GreedySearch, RandomSampler, SearchStrategy
from .tokenizer import Tokenizer

__all__ = ["PromptLayout", "parse_prompt", "Generation", "LanguageDetection", "generate", "detect_language",
           "ct2_suppress_tokens"]


class PromptLayout:
    """Where things are in a prompt (see the module docstring).

    Attributes:
        sot_index: the position of ``<|startoftranscript|>``.
        task_end: the position after the task run (CTranslate2's ``prompt_length``).
        prefix: the forced tokens after the task run.
        timestamps: whether the timestamp rules apply.
    """

    def __init__(self, prompt: Sequence[int], tokenizer: Tokenizer):
        self.tokens = np.asarray(prompt, np.int64)
        if self.tokens.ndim != 1 or self.tokens.size == 0:
            raise ValueError("the prompt must be a non-empty sequence of token ids")
        if self.tokens.min() < 0 or self.tokens.max() >= tokenizer.n_vocab:
            raise ValueError(f"prompt token ids must be in 0..{tokenizer.n_vocab - 1}")
        hits = np.flatnonzero(self.tokens == tokenizer.sot)
        if hits.size == 0:
            raise ValueError("the <|startoftranscript|> token was not found in the prompt")
        self.sot_index = int(hits[0])
        end = self.sot_index
        while end < self.tokens.size and tokenizer.sot <= self.tokens[end] <= tokenizer.no_timestamps:
            end += 1
        self.task_end = end
        self.prefix = self.tokens[end:]
        self.timestamps = int(self.tokens[end - 1]) != tokenizer.no_timestamps

    @property
    def start_step(self) -> int:
        """The positions CTranslate2 prefills before its start token (which is the task run's last token)."""
        return self.task_end - 1 if self.task_end > 1 else 0


def parse_prompt(prompt: Sequence[int], tokenizer: Tokenizer) -> PromptLayout:
    """The :class:`PromptLayout` of ``prompt``; ``ValueError`` for a prompt without ``<|startoftranscript|>``
    or with ids outside the vocabulary."""
    return PromptLayout(prompt, tokenizer)


def ct2_suppress_tokens(ids: Sequence[int], tokenizer: Tokenizer) -> list[int]:
    """``suppress_tokens`` as CTranslate2 reads them: ids >= 0 as given, ``-1`` for the model's default set
    (the non-speech symbols and ``<|startoftranscript|>``, ``<|translate|>``, ``<|transcribe|>``,
    ``<|startoflm|>``, ``<|startofprev|>``, ``<|nospeech|>``: the ``suppress_ids`` of a converted model's
    ``config.json``); other negative values are ignored. ``ValueError`` for an id past the vocabulary."""
    out: list[int] = []
    for i in ids:
        if i >= tokenizer.n_vocab:
            raise ValueError(f"suppress_tokens holds {i}: the vocabulary has {tokenizer.n_vocab} tokens")
        if i >= 0:
            out.append(int(i))
        elif i == -1:
            out.extend(tokenizer.non_speech_tokens)
            out.extend([tokenizer.sot, tokenizer.translate, tokenizer.transcribe, tokenizer.sot_lm,
                        tokenizer.sot_prev, tokenizer.no_speech])
    return out


class Generation:
    """One generation for one window and one prompt (see the module docstring).

    Args:
        prepared: the decoder (:func:`~.kernels.prepare_decoder`).
        cross: the window's cross-attention cache (:func:`~.kernels.cross_cache`); shared, not released here.
        tokenizer: the model's tokenizer (for the special tokens).
        prompt: token ids holding ``<|startoftranscript|>``.
        options: the decoding options.
        draft: a guess of the tokens after the prompt (its forced prefix excluded), verified in the first pass
            when the decoding is greedy (see the module docstring); ignored otherwise.

    The generation owns a :class:`~.cache.KVCache`; :meth:`close` releases it (idempotent, also after an
    error). Not thread-safe: one driver at a time.
    """

    def __init__(self, prepared: PreparedDecoder, cross: CrossCache, tokenizer: Tokenizer, prompt: Sequence[int],
                 options: GenerationOptions, draft: Sequence[int] = ()):
        dims = prepared.dims
        if tokenizer.n_vocab != dims.n_vocab:
            raise ModelError(f"the tokenizer has {tokenizer.n_vocab} tokens, the decoder {dims.n_vocab}")
        self.options = options
        self.layout = layout = parse_prompt(prompt, tokenizer)
        if layout.tokens.size > dims.n_text_ctx:
            raise ValueError(f"the prompt has {layout.tokens.size} tokens, the decoder holds {dims.n_text_ctx}")
        # CTranslate2 decodes at most this many tokens after its start token, the forced prefix included.
        limit = min(options.max_length // 2, options.max_length - layout.start_step)
        max_steps = min(limit - layout.prefix.size, dims.n_text_ctx - layout.tokens.size + 1)
        if max_steps <= 0:
            raise ValueError(f"max_length={options.max_length} leaves no token to generate after this "
                             f"{layout.tokens.size}-token prompt")
        self._no_speech = tokenizer.no_speech
        sample_begin = int(layout.prefix.size)
        blank = tokenizer.encode(" ") + [tokenizer.eot] if options.suppress_blank else None
        self._filters: list[LogitFilter] = build_filters(
            eot=tokenizer.eot, no_timestamps=tokenizer.no_timestamps, n_vocab=dims.n_vocab,
            sample_begin=sample_begin, timestamps=layout.timestamps,
            suppress_tokens=ct2_suppress_tokens(options.suppress_tokens, tokenizer), blank_tokens=blank,
            repetition_penalty=options.repetition_penalty, no_repeat_ngram_size=options.no_repeat_ngram_size,
            max_initial_timestamp_index=options.max_initial_timestamp_index)
        self._search: SearchStrategy
        if options.sampling_topk == 1 and options.beam_size > 1:
            self._search = BeamSearch(options.beam_size, options.patience, options.length_penalty,
                                      options.num_hypotheses, tokenizer.eot, max_steps, layout.prefix)
        else:
            sampler = (BestSampler() if options.sampling_topk == 1 else
                       RandomSampler(options.sampling_topk, options.sampling_temperature,
                                     np.random.default_rng(options.seed)))
            self._search = GreedySearch(sampler, options.num_hypotheses, tokenizer.eot, max_steps, layout.prefix,
                                        options.length_penalty)
        self._cache: KVCache | None = KVCache(cross, dims.n_text_layer, dims.n_text_head, dims.text_head_dim,
                                              dims.n_text_ctx)
        greedy = options.beam_size == 1 and options.sampling_topk == 1 and options.num_hypotheses == 1
        # a draft longer than the steps left is cut: its last token's logits would predict a step never taken
        room = min(max_steps - 1, dims.n_text_ctx - layout.tokens.size)
        self._draft = np.asarray(list(draft)[: max(0, room)] if greedy else [], np.int64)
        if self._draft.size and (self._draft.min() < 0 or self._draft.max() >= dims.n_vocab):
            raise ValueError(f"draft token ids must be in 0..{dims.n_vocab - 1}")
        self.draft_accepted = 0  # draft tokens taken as they were (each saved a pass)
        last = layout.tokens.size - 1
        verify = tuple(range(last + 1, last + 1 + self._draft.size))
        at = (layout.sot_index, last) if options.return_no_speech_prob and layout.sot_index != last else (last,)
        tokens = np.concatenate([layout.tokens, self._draft])
        self._pass: Pass | None = Pass(self._cache, tokens[None, :], logits_at=at + verify)
        self._prefilled = False
        self._no_speech_prob = 0.0
        self._result: GenerationResult | None = None

    # -- driving ----------------------------------------------------------------------------------------
    @property
    def rows(self) -> int:
        """Rows the generation holds at most: its beams, or its samples (the engine's admission budget)."""
        o = self.options
        return o.beam_size if o.sampling_topk == 1 and o.beam_size > 1 else o.num_hypotheses

    @property
    def done(self) -> bool:
        """True when the result is ready (or the generation was closed)."""
        return self._pass is None

    @property
    def cache(self) -> KVCache | None:
        """The generation's self-attention cache (``None`` once closed)."""
        return self._cache

    def next_pass(self) -> Pass | None:
        """The pass to run next (the same one until :meth:`feed`), or ``None`` when finished."""
        return self._pass

    def feed(self, output: PassOutput) -> None:
        """Take the output of the pass :meth:`next_pass` gave; prepares the next one."""
        p = self._pass
        if p is None or self._cache is None:
            raise RuntimeError("this generation is finished: nothing to feed")
        rows = p.tokens.shape[0]
        if output.logits.shape[:2] != (rows, len(p.logits_at)):
            raise ValueError(f"expected logits for {rows} rows x {len(p.logits_at)} positions, "
                             f"got {output.logits.shape}")
        cache = self._cache
        if not self._prefilled:
            self._prefilled = True
            if self.options.return_no_speech_prob:
                sot = output.logits[0, 0].astype(np.float64)
                probs = np.exp(sot - sot.max())
                self._no_speech_prob = float(probs[self._no_speech] / probs.sum())
            if self._draft.size:
                self._verify(output.logits[0, output.logits.shape[1] - self._draft.size - 1 :])
                return
        step = self._step(output.logits[:, -1, :])
        if step is None:
            self._finish()
            return
        if step.origins is not None:
            if cache.generated == 0 and cache.rows == 1:
                if step.origins.size > 1:
                    cache.expand(int(step.origins.size))
            else:
                cache.reorder(step.origins)
        self._pass = Pass(cache, step.tokens.reshape(-1, 1))

    def _step(self, logits: np.ndarray) -> Advance | None:
        """The logit rules and the search over one step's logits ``(rows, n_vocab)``."""
        logits = np.array(logits, dtype=np.float32)  # a writable copy
        tokens = self._search.tokens
        for f in self._filters:
            f.apply(logits, tokens)
        return self._search.advance(logits)

    def _verify(self, logits: np.ndarray) -> None:
        """Replay the steps over the prefill's logits at the last prompt position and every draft position
        ``(len(draft) + 1, n_vocab)`` while the draft is confirmed (see the module docstring)."""
        cache = self._cache
        assert cache is not None
        prompt = cache.prompt_length - self._draft.size
        for i in range(self._draft.size + 1):
            step = self._step(logits[i : i + 1])
            if step is None:
                self._finish()
                return
            if i < self._draft.size and int(step.tokens[0]) == int(self._draft[i]):
                self.draft_accepted += 1
                continue
            cache.truncate_prompt(prompt + i)  # the draft tokens taken stay in the cache as prompt positions
            self._pass = Pass(cache, step.tokens.reshape(-1, 1))
            return

    def _finish(self) -> None:
        ids, scores = self._search.result(self.options.num_hypotheses)
        self._result = GenerationResult(ids, scores, self._no_speech_prob, self.draft_accepted)
        self._pass = None
        self.close()

    def result(self) -> GenerationResult:
        """The generation's result; ``RuntimeError`` before it is finished."""
        if self._result is None:
            raise RuntimeError("the generation is not finished (or was closed before it finished)")
        return self._result

    def close(self) -> None:
        """Release the self-attention cache. Idempotent; the generation cannot run afterwards."""
        self._pass = None
        if self._cache is not None:
            self._cache.release()
            self._cache = None

    def __enter__(self) -> Generation:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class LanguageDetection:
    """CTranslate2's ``detect_language`` as a one-pass state machine: the logits at ``<|startoftranscript|>``,
    softmax over the language tokens only, every language with its probability, most probable first."""

    def __init__(self, prepared: PreparedDecoder, cross: CrossCache, tokenizer: Tokenizer):
        if not tokenizer.multilingual:
            raise ModelError("language detection needs a multilingual model")
        dims = prepared.dims
        self._codes = tokenizer.language_codes
        self._ids = np.asarray(tokenizer.language_tokens, np.intp)
        self._cache: KVCache | None = KVCache(cross, dims.n_text_layer, dims.n_text_head, dims.text_head_dim,
                                              dims.n_text_ctx)
        self._pass: Pass | None = Pass(self._cache, np.asarray([[tokenizer.sot]], np.int64))
        self._result: list[tuple[str, float]] | None = None

    rows = 1

    @property
    def done(self) -> bool:
        return self._pass is None

    def next_pass(self) -> Pass | None:
        return self._pass

    def feed(self, output: PassOutput) -> None:
        if self._pass is None:
            raise RuntimeError("this language detection is finished: nothing to feed")
        scores = output.logits[0, -1, self._ids].astype(np.float64)
        probs = np.exp(scores - scores.max())
        probs /= probs.sum()
        order = np.argsort(-probs, kind="stable")
        self._result = [(self._codes[i], float(probs[i])) for i in order]
        self.close()

    def result(self) -> list[tuple[str, float]]:
        if self._result is None:
            raise RuntimeError("the language detection is not finished")
        return self._result

    def close(self) -> None:
        self._pass = None
        if self._cache is not None:
            self._cache.release()
            self._cache = None


def generate(prepared: PreparedDecoder, cross: CrossCache, tokenizer: Tokenizer, prompt: Sequence[int],
             options: GenerationOptions, draft: Sequence[int] = ()) -> GenerationResult:
    """Run one :class:`Generation` alone to the end (synchronous; for tests and simple use)."""
    gen = Generation(prepared, cross, tokenizer, prompt, options, draft)
    try:
        while (p := gen.next_pass()) is not None:
            gen.feed(forward(prepared, [p])[0])
        return gen.result()
    finally:
        gen.close()


def detect_language(prepared: PreparedDecoder, cross: CrossCache, tokenizer: Tokenizer) -> list[tuple[str, float]]:
    """Every language of the vocabulary with its probability for this window, most probable first (codes
    such as ``"en"``); :class:`~aiowhisper_npu.errors.ModelError` on an English-only model."""
    det = LanguageDetection(prepared, cross, tokenizer)
    try:
        while (p := det.next_pass()) is not None:
            det.feed(forward(prepared, [p])[0])
        return det.result()
    finally:
        det.close()
