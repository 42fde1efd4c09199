"""Word-timing alignment from one decoder pass, as CTranslate2's ``Whisper.align`` computes it (pure numpy).

The alignment pass is a prefill of::

    tokens = start_sequence + [<|notimestamps|>] + text_tokens + [<|endoftext|>]       (n = len(tokens))

against the window, asking for the raw cross-attention scores of the model's alignment heads
(``Pass(cache, tokens, logits_at=range(n), cross_heads=model.alignment_heads)`` in
:mod:`~aiowhisper_npu.decoder.kernels`). :func:`align_from_scores` turns its outputs into an
:class:`~.options.AlignmentResult`:

* ``cross_qk`` ``(heads, n, T)``: per alignment head, ``q . k`` scaled by ``head_dim ** -0.5``, before the
  softmax, over all ``T`` (1500) encoder positions;
* ``logits`` ``(n, n_vocab)``: the logits at every position of the pass (or only at the ``len(text_tokens)``
  positions ``len(start_sequence) .. len(start_sequence) + len(text_tokens) - 1`` that predict the text).

Steps, as CTranslate2 (``WhisperReplica::align``, ops ``NormalizeAttentionWeights``, ``MedianFilter``,
``negative_dtw``): keep the first ``num_frames // 2`` encoder positions (the encoder's second convolution has
stride 2); softmax over them; normalise every (head, position) column over the ``n`` tokens to zero mean and
unit variance; median filter of ``median_filter_width`` along time (reflected edges); mean over heads; keep
the rows of ``<|notimestamps|>`` and the text tokens (drop the start sequence and end-of-text rows); dynamic
time warping through the negated matrix. A text token's probability is the softmax over the text vocabulary
(ids below ``<|endoftext|>``) at the position before it.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from .options import AlignmentResult

__all__ = ["alignment_tokens", "align_from_scores", "alignment_matrix", "median_filter", "negative_dtw",
           "text_token_probs"]


def alignment_tokens(start_sequence: Sequence[int], text_tokens: Sequence[int], no_timestamps: int,
                     eot: int) -> list[int]:
    """The tokens of the alignment pass (see the module docstring)."""
    return [*start_sequence, no_timestamps, *text_tokens, eot]


def _median7(windows: np.ndarray) -> np.ndarray:
    """The median of the last axis (7 samples) by a selection network of 13 compare-exchanges (exact: every
    output is one of the inputs), vectorised over the other axes."""
    p = [np.array(windows[..., k]) for k in range(7)]
    for a, b in ((0, 5), (0, 3), (1, 6), (2, 4), (0, 1), (3, 5), (2, 6), (2, 3), (3, 6), (4, 5), (1, 4), (1, 3),
                 (3, 4)):
        low = np.minimum(p[a], p[b])
        np.maximum(p[a], p[b], out=p[b])
        p[a] = low
    return p[3]


def median_filter(x: np.ndarray, width: int) -> np.ndarray:
    """Median over a window of ``width`` (odd) along the last axis, edges reflected without repeating the edge
    sample (CTranslate2's ``MedianFilter``); an axis of ``width // 2`` samples or fewer is returned as is."""
    if width < 1 or width % 2 == 0:
        raise ValueError(f"median_filter_width must be a positive odd number, got {width}")
    r = width // 2
    if r == 0 or x.shape[-1] <= r:
        return x.copy()
    padded = np.pad(x, [(0, 0)] * (x.ndim - 1) + [(r, r)], mode="reflect")
    windows = np.lib.stride_tricks.sliding_window_view(padded, width, axis=-1)
    if width == 7:
        return _median7(windows)
    return np.partition(windows, r, axis=-1)[..., r]


def alignment_matrix(cross_qk: np.ndarray, num_frames: int, n_start: int, median_filter_width: int = 7) -> np.ndarray:
    """The matrix the DTW runs through: ``(n - n_start - 1, min(T, num_frames // 2))`` float32, one row per
    predicted text token plus end-of-text (see the module docstring)."""
    qk = np.asarray(cross_qk, np.float32)
    if qk.ndim != 3 or qk.shape[1] < n_start + 2:
        raise ValueError(f"cross_qk must be (heads, n, T) with n >= {n_start + 2}, got shape {qk.shape}")
    frames = min(qk.shape[2], max(int(num_frames), 0) // 2)
    if frames == 0:
        return np.zeros((qk.shape[1] - n_start - 1, 0), np.float32)
    w = qk[:, :, :frames] - qk[:, :, :frames].max(axis=-1, keepdims=True)
    np.exp(w, out=w)
    w /= w.sum(axis=-1, keepdims=True, dtype=np.float64).astype(np.float32)
    mean = w.mean(axis=1, keepdims=True, dtype=np.float64)
    var = np.maximum(np.square(w, dtype=np.float64).mean(axis=1, keepdims=True) - mean * mean, 0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        rstd = (1.0 / np.sqrt(var)).astype(np.float32)
    w -= mean.astype(np.float32)
    w *= rstd
    # The filter runs along time, row by row: only the rows kept need it.
    w = median_filter(w[:, n_start:-1], median_filter_width)
    matrix = w.mean(axis=0, dtype=np.float64).astype(np.float32)
    return np.ascontiguousarray(matrix)


def negative_dtw(x: np.ndarray) -> list[tuple[int, int]]:
    """Dynamic time warping through ``-x`` (``(rows, cols)``): the monotonic path of ``(row, col)`` pairs from
    ``(0, 0)`` to the last row or column, as CTranslate2's ``negative_dtw`` (float32 costs; on ties the step
    along the columns wins, then the diagonal only when strictly cheapest).

    Computed one anti-diagonal at a time (every cell of a diagonal depends only on the two before it)."""
    x = np.asarray(x, np.float32)
    n, m = x.shape
    if n == 0 or m == 0:
        return []
    diagonals = n + m + 1
    # cost[i, j] lives at skew[i + j, i]: the three predecessors of a diagonal are slices of the two before.
    skew = np.full((diagonals, n + 1), np.inf, np.float32)
    took_diagonal = np.zeros((diagonals, n + 1), bool)  # the step into (i, j) came from (i-1, j-1)
    took_row = np.zeros((diagonals, n + 1), bool)  # ... from (i-1, j); otherwise from (i, j-1)
    skew[0, 0] = 0.0
    rows = np.arange(n + 1)
    for d in range(2, diagonals):
        lo, hi = max(1, d - m), min(n, d - 1)
        i = rows[lo : hi + 1]
        c0 = skew[d - 2, lo - 1 : hi]  # cost[i-1, j-1]
        c1 = skew[d - 1, lo - 1 : hi]  # cost[i-1, j]
        c2 = skew[d - 1, lo : hi + 1]  # cost[i, j-1]
        diag = (c0 < c1) & (c0 < c2)
        up = (c1 < c0) & (c1 < c2)
        np.subtract(np.where(diag, c0, np.where(up, c1, c2)), x[i - 1, d - i - 1], out=skew[d, lo : hi + 1])
        took_diagonal[d, lo : hi + 1] = diag
        took_row[d, lo : hi + 1] = up
    path: list[tuple[int, int]] = []
    i, j = n, m
    while i > 0 and j > 0:
        path.append((i - 1, j - 1))
        if took_diagonal[i + j, i]:
            i, j = i - 1, j - 1
        elif took_row[i + j, i]:
            i -= 1
        else:
            j -= 1
    path.reverse()
    return path


def text_token_probs(logits: np.ndarray, start_length: int, text_tokens: Sequence[int], eot: int) -> list[float]:
    """The probability of each text token under the softmax over ids below ``eot`` at the position before it.
    ``logits``: every position of the alignment pass, or only the ``len(text_tokens)`` predicting ones."""
    logits = np.asarray(logits)
    k = len(text_tokens)
    if k == 0:
        return []
    if logits.ndim != 2 or logits.shape[1] < eot:
        raise ValueError(f"logits must be (positions, n_vocab >= {eot}), got shape {logits.shape}")
    if logits.shape[0] == k:
        rows = logits
    elif logits.shape[0] == start_length + k + 2:
        rows = logits[start_length : start_length + k]
    else:
        raise ValueError(f"logits must have {start_length + k + 2} positions (the whole pass) or {k} (the "
                         f"text-predicting ones), got {logits.shape[0]}")
    text = rows[:, :eot].astype(np.float64)
    text -= text.max(axis=1, keepdims=True)
    np.exp(text, out=text)
    picked = text[np.arange(k), np.asarray(text_tokens, np.intp)] / text.sum(axis=1)
    return [float(p) for p in picked.astype(np.float32)]


def align_from_scores(cross_qk: np.ndarray, logits: np.ndarray, start_length: int, text_tokens: Sequence[int],
                      eot: int, num_frames: int, median_filter_width: int = 7) -> AlignmentResult:
    """The alignment of one text from its alignment pass (see the module docstring): ``cross_qk``
    ``(heads, n, T)``, ``logits`` ``(n, n_vocab)``, ``start_length = len(start_sequence)``."""
    n = start_length + len(text_tokens) + 2
    if np.shape(cross_qk)[1:2] != (n,):
        raise ValueError(f"cross_qk must cover the {n} tokens of the alignment pass, got shape {np.shape(cross_qk)}")
    if any(t < 0 or t >= eot for t in text_tokens):
        raise ValueError("text_tokens must be text tokens (ids below <|endoftext|>)")
    matrix = alignment_matrix(cross_qk, num_frames, start_length, median_filter_width)
    return AlignmentResult(negative_dtw(matrix), text_token_probs(logits, start_length, text_tokens, eot))
