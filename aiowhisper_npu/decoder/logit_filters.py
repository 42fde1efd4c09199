"""Logit rules: small filters that edit one decoding step's logits before the log-softmax.

Each filter follows the CTranslate2 logits processor of the same purpose (``src/decoding_utils.cc`` and
``ApplyTimestampRules`` in ``src/models/whisper.cc``, version 4.8.5), which is what faster-whisper drives:

* a *disabled* token gets the logit :data:`DISABLED` (float32's lowest value, as CTranslate2 on the CPU), at
  once: a later filter sees it;
* the filters run in CTranslate2's order (:func:`build_filters`): repetition penalty, no-repeat n-gram,
  suppressed tokens, suppressed blank at the first sampled position, then the timestamp rules (whose
  timestamp-probability test therefore sees every earlier disabling);
* every filter reads ``tokens`` ``(rows, n)``: per row, what the decoder produced after its start token, the
  forced prefix first (``sample_begin`` tokens), the sampled tokens after it. The step index is ``n``.

Each :meth:`LogitFilter.apply` is a few numpy calls over all rows at once (no loop over the vocabulary).
"""

from __future__ import annotations

from typing import Protocol, Sequence

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

__all__ = ["DISABLED", "LogitFilter", "RepetitionPenalty", "NoRepeatNgram", "SuppressTokens", "SuppressBlank",
           "TimestampRules", "build_filters"]

#: The logit a disabled token gets (CTranslate2's ``DisableTokens`` on the CPU: float32's lowest value).
DISABLED = float(np.finfo(np.float32).min)


class LogitFilter(Protocol):
    """One logit rule."""

    def apply(self, logits: np.ndarray, tokens: np.ndarray) -> None:
        """Edit ``logits`` ``(rows, n_vocab)`` float32 in place, given each row's ``tokens`` ``(rows, n)``."""
        ...


class RepetitionPenalty:
    """Make every token already in a row less likely: its logit ``x`` becomes ``x * penalty`` when negative,
    ``x / penalty`` otherwise (each token once, however often it occurred)."""

    def __init__(self, penalty: float):
        if penalty <= 0:
            raise ValueError(f"the repetition penalty must be > 0, got {penalty}")
        self.penalty = np.float32(penalty)

    def apply(self, logits: np.ndarray, tokens: np.ndarray) -> None:
        if tokens.shape[1] == 0:
            return
        previous = np.take_along_axis(logits, tokens, axis=1)
        penalized = np.where(previous < 0, previous * self.penalty, previous / self.penalty)
        np.put_along_axis(logits, tokens, penalized, axis=1)


class NoRepeatNgram:
    """Forbid a token that would repeat an n-gram already in the row: wherever the row's last ``size - 1``
    tokens occurred before, the token that followed them is disabled (``size`` 1: every token seen)."""

    def __init__(self, size: int):
        if size < 1:
            raise ValueError(f"the n-gram size must be >= 1, got {size}")
        self.size = size

    def apply(self, logits: np.ndarray, tokens: np.ndarray) -> None:
        n = self.size
        if tokens.shape[1] < n:
            return
        windows = sliding_window_view(tokens, n, axis=1)  # (rows, length - n + 1, n)
        tail = tokens[:, tokens.shape[1] - n + 1 :]  # (rows, n - 1)
        match = (windows[:, :, : n - 1] == tail[:, None, :]).all(axis=2)
        rows, where = np.nonzero(match)
        logits[rows, windows[rows, where, n - 1]] = DISABLED


class SuppressTokens:
    """Disable fixed tokens at every step."""

    def __init__(self, ids: Sequence[int]):
        self.ids = np.unique(np.asarray(ids, np.intp))

    def apply(self, logits: np.ndarray, tokens: np.ndarray) -> None:
        logits[:, self.ids] = DISABLED


class SuppressBlank:
    """Disable the blank and end-of-text tokens at the first sampled step (CTranslate2's
    ``SuppressTokensBegin`` with the model's ``suppress_ids_begin``)."""

    def __init__(self, ids: Sequence[int], sample_begin: int):
        self.ids = np.unique(np.asarray(ids, np.intp))
        self.sample_begin = sample_begin

    def apply(self, logits: np.ndarray, tokens: np.ndarray) -> None:
        if tokens.shape[1] == self.sample_begin:
            logits[:, self.ids] = DISABLED


class TimestampRules:
    """Whisper's timestamp grammar, as CTranslate2 4.8.5 applies it:

    * ``<|notimestamps|>`` is always disabled;
    * at the first step, when there is no prefix, only timestamps up to ``<|0.00|>`` +
      ``max_initial_timestamp_index`` (after a prefix, the first sampled step is free);
    * later (looking at the sampled tokens only), timestamps come in pairs: after two timestamps (or a
      first one) text must follow; after text and a timestamp, another timestamp, not earlier than that one,
      or end-of-text; after text, a timestamp must be later than the last one (segments are not empty);
    * where a timestamp may follow, if the timestamps' total probability exceeds that of every single other
      token, only timestamps are allowed.
    """

    def __init__(self, eot: int, no_timestamps: int, timestamp_begin: int, n_vocab: int,
                 max_initial_timestamp_index: int, sample_begin: int):
        self.eot = eot
        self.no_timestamps = no_timestamps
        self.begin = timestamp_begin
        self.n_vocab = n_vocab
        self.max_initial = timestamp_begin + max_initial_timestamp_index
        self.sample_begin = sample_begin
        self._offsets = np.arange(n_vocab - timestamp_begin)

    def apply(self, logits: np.ndarray, tokens: np.ndarray) -> None:
        tb = self.begin
        logits[:, self.no_timestamps] = DISABLED
        sampled = tokens[:, self.sample_begin :]
        n = sampled.shape[1]
        if n == 0:
            if self.sample_begin == 0:  # the very first step: a timestamp, and not too late
                logits[:, :tb] = DISABLED
                logits[:, self.max_initial + 1 :] = DISABLED
            return
        rows = np.arange(sampled.shape[0])
        is_ts = sampled >= tb
        last = is_ts[:, -1]
        penultimate = is_ts[:, -2] if n > 1 else last
        pair_closed = last & penultimate  # two timestamps (or the first one): text must follow
        pair_open = last & ~penultimate  # text then a timestamp: a timestamp or end-of-text
        logits[pair_closed, tb:] = DISABLED
        logits[pair_open, : self.eot] = DISABLED
        # The lowest timestamp allowed (as an offset from <|0.00|>): after an open pair, its timestamp;
        # after text, one past the last timestamp.
        floor = np.zeros(len(rows), np.int64)
        floor[pair_open] = sampled[pair_open, -1] - tb
        after_text = ~last & is_ts.any(axis=1)
        if after_text.any():
            at = n - 1 - np.argmax(is_ts[:, ::-1], axis=1)
            floor[after_text] = sampled[rows, at][after_text] - tb + 1
        if floor.any():
            logits[:, tb:][self._offsets[None, :] < floor[:, None]] = DISABLED
        # Where a timestamp may come, take one when the timestamps together beat every other token.
        ts = logits[:, tb:]
        peak = ts.max(axis=1)
        total = peak + np.log(np.exp(ts - peak[:, None]).sum(axis=1))
        favour = ~pair_closed & (total > logits[:, :tb].max(axis=1))
        logits[favour, :tb] = DISABLED


def build_filters(*, eot: int, no_timestamps: int, n_vocab: int, sample_begin: int, timestamps: bool,
                  suppress_tokens: Sequence[int], blank_tokens: Sequence[int] | None,
                  repetition_penalty: float = 1.0, no_repeat_ngram_size: int = 0,
                  max_initial_timestamp_index: int = 50) -> list[LogitFilter]:
    """The filters of one generation, in CTranslate2's order (see the module docstring).

    ``blank_tokens`` ``None`` means no blank suppression; ``timestamps`` adds the timestamp rules (the
    prompt does not end with ``<|notimestamps|>``).
    """
    filters: list[LogitFilter] = []
    if repetition_penalty != 1:
        filters.append(RepetitionPenalty(repetition_penalty))
    if no_repeat_ngram_size > 0:
        filters.append(NoRepeatNgram(no_repeat_ngram_size))
    if len(suppress_tokens):
        filters.append(SuppressTokens(suppress_tokens))
    if blank_tokens:
        filters.append(SuppressBlank(blank_tokens, sample_begin))
    if timestamps:
        filters.append(TimestampRules(eot, no_timestamps, no_timestamps + 1, n_vocab, max_initial_timestamp_index,
                                      sample_begin))
    return filters
