"""Search strategies: how one decoding step's log-probabilities become the next tokens.

Both follow CTranslate2 4.8.5's ``src/decoding.cc`` (what faster-whisper drives):

* :class:`GreedySearch`: each row keeps the token its :class:`Sampler` picks (:class:`BestSampler`: the most
  probable, :class:`RandomSampler`: a random draw); ``num_hypotheses`` rows run independently from the
  same prompt (faster-whisper's ``best_of``). A row ends at end-of-text or at the length limit and leaves
  the batch; the results are sorted by score.
* :class:`BeamSearch`: ``beam_size`` beams; each step takes the ``2 * beam_size`` best continuations of all
  beams (cumulated log-probabilities), keeps the first ``beam_size`` as the new beams, and when one of them
  ends with end-of-text, records it as a finished hypothesis and puts the next best non-ending candidate in
  its place. The search stops when ``round(beam_size * patience)`` hypotheses are finished (or, with
  ``length_penalty == 0``, as soon as the best beam finished and ``num_hypotheses`` are), or at the length
  limit, where every beam is finished as it is.

A finished hypothesis holds the forced prefix and the sampled tokens (not the prompt before the prefix, nor
end-of-text); its score is the cumulated log-probability of the sampled tokens divided by
``length ** length_penalty``, the length counting the prefix (CTranslate2's ``return_prefix``). Scores are
float32 sums, as in CTranslate2. A strategy sees only the step's filtered logits and token ids: the
decoder, the caches and the logit rules are the :class:`~.generation.Generation`'s business.

Each step is a few numpy passes over the ``(rows, n_vocab)`` logits (one ``exp`` for the log-softmax
normaliser, one comparison to preselect beam candidates) and O(rows) Python.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from ..native import fastmath

#: Beam candidates are first looked for within these many nats of the best continuation (the 2b-th best is
#: rarely more than 10 below it), then among all: a shortcut, exact whenever it applies.
_REACH = (8.0, 16.0)

__all__ = ["logsumexp_rows", "Sampler", "BestSampler", "RandomSampler", "Advance", "SearchStrategy", "GreedySearch",
           "BeamSearch", "finalize"]


def logsumexp_rows(x: np.ndarray) -> np.ndarray:
    """``log(sum(exp(row)))`` of each row of a float32 ``(rows, n)`` array (``(rows,)`` float32): the
    log-softmax of a row is ``row - logsumexp``. The shifted ``exp`` is the fused C kernel
    (``native.fastmath``) whenever it is built, whatever ``numerics.use_native`` says."""
    peak = x.max(axis=1)
    if fastmath is not None:
        shifted = np.array(x, np.float32)
        fastmath.exp_rows(shifted, True)
    else:
        shifted = x - peak[:, None]
        np.exp(shifted, out=shifted)
    return peak + np.log(shifted.sum(axis=1))


class Sampler(Protocol):
    """Picks one token per row."""

    def sample(self, logits: np.ndarray) -> np.ndarray:
        """Token ids ``(rows,)`` from ``logits`` ``(rows, n_vocab)`` (log-probabilities up to a per-row
        constant)."""
        ...


class BestSampler:
    """The most probable token (the lowest id among equals, as CTranslate2's top-1)."""

    def sample(self, logits: np.ndarray) -> np.ndarray:
        return np.argmax(logits, axis=1)


class RandomSampler:
    """A random token from ``softmax(log_probs / temperature)``, restricted to the ``topk`` most probable
    (``topk`` 0: the whole vocabulary), as CTranslate2's ``RandomSampler`` (whose generator we cannot
    reproduce: draws come from ``rng``)."""

    def __init__(self, topk: int, temperature: float, rng: np.random.Generator):
        if topk < 0 or temperature <= 0:
            raise ValueError(f"bad sampling parameters: topk={topk}, temperature={temperature}")
        self.topk, self.temperature, self.rng = topk, temperature, rng

    def sample(self, logits: np.ndarray) -> np.ndarray:
        rows, vocab = logits.shape
        ids = None
        scores = logits
        if 0 < self.topk < vocab:
            ids = np.argpartition(logits, vocab - self.topk, axis=1)[:, vocab - self.topk :]
            scores = np.take_along_axis(logits, ids, axis=1)
        weights = scores - scores.max(axis=1, keepdims=True)
        with np.errstate(over="ignore"):  # disabled tokens at a temperature below 1: -inf
            weights *= np.float32(1.0 / self.temperature)
        np.exp(weights, out=weights)
        draws = np.asarray(self.rng.random(rows), np.float64)
        picked = np.empty(rows, np.intp)
        for r in range(rows):
            cdf = np.cumsum(weights[r], dtype=np.float64)
            picked[r] = min(int(np.searchsorted(cdf, float(draws[r] * cdf[-1]), side="right")), cdf.size - 1)
        return picked if ids is None else ids[np.arange(rows), picked]


@dataclass(frozen=True)
class Advance:
    """What a step decided: the token each surviving row feeds next, and which row it continues
    (``origins[i]``: row ``i`` continues the old row ``origins[i]``; ``None``: the rows are unchanged)."""

    tokens: np.ndarray  # (rows,) int
    origins: np.ndarray | None


class SearchStrategy(Protocol):
    """A search over one prompt's rows (see the module docstring)."""

    @property
    def tokens(self) -> np.ndarray:
        """Per row, the tokens after the start token: the forced prefix, then the sampled ones ``(rows, n)``."""
        ...

    def advance(self, logits: np.ndarray) -> Advance | None:
        """Take one step's filtered ``logits`` ``(rows, n_vocab)`` float32 (the strategy may overwrite them);
        ``None`` when the search is over."""
        ...

    def result(self, num_hypotheses: int) -> tuple[list[list[int]], list[float]]:
        """The best ``num_hypotheses`` finished hypotheses and their scores, best first."""
        ...


def finalize(hypotheses: list[tuple[float, list[int]]], length_penalty: float,
             limit: int) -> tuple[list[list[int]], list[float]]:
    """Scores divided by ``length ** length_penalty`` (float32), sorted best first, the first ``limit``."""
    scored = []
    with np.errstate(divide="ignore", invalid="ignore"):
        for score, ids in hypotheses:
            norm = np.float32(score) / np.float32(math.pow(len(ids), length_penalty))
            scored.append((float(norm), ids))
    order = sorted(range(len(scored)), key=lambda i: -scored[i][0] if not math.isnan(scored[i][0]) else math.inf)
    best = [scored[i] for i in order[:limit]]
    return [ids for _, ids in best], [s for s, _ in best]


class GreedySearch:
    """One token per row per step from a :class:`Sampler` (see the module docstring).

    Args:
        sampler: picks each row's token.
        rows: independent rows (``num_hypotheses``); the first step expands the prompt's single row.
        eot: the end-of-text token.
        max_steps: sampled steps at most (the last one ends every row).
        prefix: the forced tokens after the start token (already in the decoder's cache); they begin every
            hypothesis.
        length_penalty: applied to the final scores.
    """

    def __init__(self, sampler: Sampler, rows: int, eot: int, max_steps: int, prefix: np.ndarray,
                 length_penalty: float):
        self.sampler = sampler
        self.rows = rows
        self.eot = eot
        self.max_steps = max_steps
        self.length_penalty = length_penalty
        self._tokens = np.asarray(prefix, np.int64).reshape(1, -1)
        self._ids = np.arange(rows)  # each live row's hypothesis number
        self._scores = np.zeros(rows, np.float32)
        self._done: list[tuple[float, list[int]] | None] = [None] * rows
        self._step = 0

    @property
    def tokens(self) -> np.ndarray:
        return self._tokens

    def advance(self, logits: np.ndarray) -> Advance | None:
        if self._step == 0 and self.rows > 1 and logits.shape[0] == 1:  # the prompt's row, replicated
            logits = np.repeat(logits, self.rows, axis=0)
            self._tokens = np.repeat(self._tokens, self.rows, axis=0)
        lse = logsumexp_rows(logits)
        picked = self.sampler.sample(logits)
        self._scores[self._ids] += logits[np.arange(len(picked)), picked] - lse
        self._tokens = np.concatenate([self._tokens, picked[:, None]], axis=1)
        last = self._step == self.max_steps - 1
        self._step += 1
        ended = np.ones(len(picked), bool) if last else picked == self.eot
        for row in np.flatnonzero(ended):
            ids = self._tokens[row]
            if ids[-1] == self.eot:
                ids = ids[:-1]
            self._done[self._ids[row]] = (float(self._scores[self._ids[row]]), ids.tolist())
        if ended.all():
            return None
        if not ended.any():
            return Advance(picked, None if self._step > 1 or self.rows == 1 else np.zeros(self.rows, np.intp))
        alive = np.flatnonzero(~ended)
        origins = alive if self._step > 1 or self.rows == 1 else np.zeros(alive.size, np.intp)
        self._ids = self._ids[alive]
        self._tokens = self._tokens[alive]
        return Advance(picked[alive], origins)

    def result(self, num_hypotheses: int) -> tuple[list[list[int]], list[float]]:
        if any(d is None for d in self._done):
            raise RuntimeError("the search is not finished")
        return finalize([d for d in self._done if d is not None], self.length_penalty, num_hypotheses)


class BeamSearch:
    """Beam search with CTranslate2's candidate handling (see the module docstring).

    Args:
        beam_size: beams kept per step.
        patience: finished hypotheses wanted, as a factor of ``beam_size``.
        length_penalty: applied to the final scores; 0 allows the early exit.
        num_hypotheses: hypotheses returned.
        eot, max_steps, prefix: as for :class:`GreedySearch`.
    """

    def __init__(self, beam_size: int, patience: float, length_penalty: float, num_hypotheses: int, eot: int,
                 max_steps: int, prefix: np.ndarray):
        self.beam_size = beam_size
        self.max_candidates = int(math.floor(beam_size * patience + 0.5))  # C++ std::round
        self.length_penalty = length_penalty
        self.num_hypotheses = num_hypotheses
        self.eot = eot
        self.max_steps = max_steps
        self._tokens = np.asarray(prefix, np.int64).reshape(1, -1)
        self._sample_begin = self._tokens.shape[1]
        self._scores = np.zeros(1, np.float32)
        self._finished: list[tuple[float, list[int]]] = []
        self._top_finished = False
        self._step = 0

    @property
    def tokens(self) -> np.ndarray:
        return self._tokens

    def advance(self, logits: np.ndarray) -> Advance | None:
        b = self.beam_size
        _, vocab = logits.shape
        # Cumulated log-probabilities of every continuation (float32, as CTranslate2), in place.
        offset = self._scores - logsumexp_rows(logits)
        with np.errstate(over="ignore"):  # disabled tokens (float32's lowest) on penalised beams: -inf
            logits += offset[:, None]
        flat = logits.reshape(-1)
        k = min(2 * b, flat.size)
        # If at least 2b continuations are within reach of the best, the 2b best are among them: select
        # those (one comparison pass) and partition only them; the whole array when too few are.
        best = float(logits.max())
        cand = None
        for reach in _REACH:
            near = np.flatnonzero(flat > best - reach)
            if near.size >= k:
                cand = near
                break
        if cand is None:
            cand = np.arange(flat.size)
        cand = cand[np.argpartition(flat[cand], cand.size - k)[cand.size - k :]]
        cand = cand[np.lexsort((cand, -flat[cand]))]  # best first; among equals the lowest index
        cand_scores = flat[cand]
        origins, tokens = np.divmod(cand, vocab)
        if self._step == 0 and self._sample_begin > 0:
            # The first step after a forced prefix: only the best candidate may end (CTranslate2 penalises
            # end-of-text in the other candidates, which come from the same single row).
            late_eot = np.flatnonzero(tokens[1:] == self.eot) + 1
            tokens[late_eot] = 0
            cand_scores[late_eot] = np.float32(-1e10)
            origins[late_eot] = 0
        last = self._step == self.max_steps - 1
        self._step += 1
        keep = np.arange(b)
        ending = np.flatnonzero((tokens[:b] == self.eot) | last)
        if ending.size:
            spare = b
            for slot in ending:
                if slot == 0:
                    self._top_finished = True
                ids = self._tokens[origins[slot]].tolist()
                if tokens[slot] != self.eot:
                    ids.append(int(tokens[slot]))
                self._finished.append((float(cand_scores[slot]), ids))
                while spare < k and tokens[spare] == self.eot:
                    spare += 1
                if spare < k:
                    keep[slot] = spare
                    spare += 1
        if last:
            return None
        if self.length_penalty == 0:
            done = self._top_finished and len(self._finished) >= self.num_hypotheses
        else:
            done = len(self._finished) >= self.max_candidates
        if done:
            return None
        origins, tokens = origins[keep], tokens[keep]
        self._scores = cand_scores[keep]
        self._tokens = np.concatenate([self._tokens[origins], tokens[:, None]], axis=1)
        return Advance(tokens, origins)

    def result(self, num_hypotheses: int) -> tuple[list[list[int]], list[float]]:
        return finalize(self._finished, self.length_penalty, num_hypotheses)
