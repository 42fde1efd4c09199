"""The decoder's caches: cross-attention keys and values per window, self-attention keys and values per
sequence group.

* :class:`CrossCache` holds, for one 30 s window, every layer's cross-attention keys (transposed, ready for
  ``q @ k``) and values, computed once from the encoder output and shared by every sequence decoded against
  that window (all beams, all temperatures, the alignment pass).
* :class:`KVCache` holds a *group* of sequences that share a prompt: beams of a beam search, samples of
  ``best_of``, or a single greedy sequence. The prompt's keys and values are stored once (the *prefix*,
  filled by a prefill pass of one row); each row then has its own *suffix* of generated positions, which
  grows in chunks and is permuted when a beam search reorders its beams (only the suffix is copied).

Shapes, with ``L`` layers, ``H`` heads, ``hd`` = head size, ``T`` encoder positions, ``P`` prompt tokens,
``B`` rows and ``S`` generated positions: cross ``k`` ``(L, H, T, hd)`` and ``v_t`` ``(L, H, hd, T)`` (both
products of a step are then few-row products with row-major operands);
prefix ``k_t`` ``(L, H, hd, P)`` and ``v`` ``(L, H, P, hd)``; suffix ``k`` and ``v`` ``(L, B, H, capacity, hd)``.
No asyncio and no threads here: a cache belongs to whoever runs the decoder over it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["CrossCache", "KVCache"]

_GROW = 32  # suffix positions added at a time


@dataclass(eq=False)
class CrossCache:
    """Cross-attention keys and values of one encoded window, for every decoder layer."""

    k: np.ndarray  # (L, H, T, hd) float32
    v_t: np.ndarray  # (L, H, hd, T) float32

    @property
    def positions(self) -> int:
        return int(self.k.shape[2])

    @property
    def nbytes(self) -> int:
        return int(self.k.nbytes + self.v_t.nbytes)


class KVCache:
    """Self-attention keys and values of a group of rows that share a prompt (see the module docstring)."""

    def __init__(self, cross: CrossCache, layers: int, heads: int, head_dim: int, max_positions: int):
        self.cross = cross
        self.layers, self.heads, self.head_dim = layers, heads, head_dim
        self.max_positions = max_positions
        self.prefix_k_t = np.zeros((layers, heads, head_dim, 0), np.float32)
        self.prefix_v = np.zeros((layers, heads, 0, head_dim), np.float32)
        self.rows = 1
        self.generated = 0  # suffix positions filled (the same for every row)
        self.released = False
        self._k = np.zeros((layers, 1, heads, 0, head_dim), np.float32)
        self._v = np.zeros_like(self._k)

    # -- sizes ------------------------------------------------------------------------------------------
    @property
    def prompt_length(self) -> int:
        return int(self.prefix_v.shape[2])

    @property
    def length(self) -> int:
        """Positions held per row: prompt plus generated."""
        return self.prompt_length + self.generated

    @property
    def nbytes(self) -> int:
        """Bytes this cache holds (the shared cross cache is not counted)."""
        return int(self.prefix_k_t.nbytes + self.prefix_v.nbytes + self._k.nbytes + self._v.nbytes)

    # -- writes (by the forward pass) ---------------------------------------------------------------------
    def set_prefix(self, layer: int, k: np.ndarray, v: np.ndarray) -> None:
        """Store the prompt's keys and values of ``layer``: ``k``, ``v`` as ``(H, P, hd)``."""
        if self.generated:
            raise RuntimeError("the prompt of a group is set before it generates")
        p = k.shape[1]
        if self.prefix_v.shape[2] != p:
            self.prefix_k_t = np.empty((self.layers, self.heads, self.head_dim, p), np.float32)
            self.prefix_v = np.empty((self.layers, self.heads, p, self.head_dim), np.float32)
        self.prefix_k_t[layer] = k.transpose(0, 2, 1)
        self.prefix_v[layer] = v

    def truncate_prompt(self, length: int) -> None:
        """Keep the first ``length`` prompt positions (a prefill that ran further than what is kept: the
        rejected tail of a draft). Causal attention makes the kept positions independent of the dropped ones."""
        if self.generated or self.rows != 1:
            raise RuntimeError("only a prefilled, single-row group can drop prompt positions")
        if not 0 <= length <= self.prompt_length:
            raise ValueError(f"cannot keep {length} of {self.prompt_length} prompt positions")
        if length < self.prompt_length:
            self.prefix_k_t = np.ascontiguousarray(self.prefix_k_t[..., :length])
            self.prefix_v = np.ascontiguousarray(self.prefix_v[:, :, :length])

    def reserve(self) -> int:
        """Make room for one more generated position in every row; returns its index in the suffix."""
        if self.released:
            raise RuntimeError("this cache was released")
        if self.length >= self.max_positions:
            raise ValueError(f"the sequence is full: {self.max_positions} positions")
        s = self.generated
        if s == self._k.shape[3]:
            cap = min(s + _GROW, self.max_positions - self.prompt_length)
            shape = (self.layers, self.rows, self.heads, cap, self.head_dim)
            k, v = np.empty(shape, np.float32), np.empty(shape, np.float32)
            k[:, :, :, :s], v[:, :, :, :s] = self._k[:, :, :, :s], self._v[:, :, :, :s]
            self._k, self._v = k, v
        return s

    def suffix(self, layer: int, upto: int) -> tuple[np.ndarray, np.ndarray]:
        """Views of ``layer``'s generated keys and values, positions ``0:upto``: ``(B, H, upto, hd)`` each."""
        return self._k[layer, :, :, :upto], self._v[layer, :, :, :upto]

    def suffix_slot(self, layer: int, position: int) -> tuple[np.ndarray, np.ndarray]:
        """Writable ``(B, H, hd)`` views where ``layer``'s keys and values of suffix ``position`` go."""
        return self._k[layer, :, :, position], self._v[layer, :, :, position]

    def commit(self) -> None:
        """The position given by :meth:`reserve` has been written in every layer."""
        self.generated += 1

    # -- beams ------------------------------------------------------------------------------------------
    def expand(self, rows: int) -> None:
        """Turn a freshly prefilled single row into ``rows`` rows sharing its prompt."""
        if self.generated or self.rows != 1:
            raise RuntimeError("only a prefilled, single-row group can be expanded")
        self.rows = rows
        self._k = np.zeros((self.layers, rows, self.heads, 0, self.head_dim), np.float32)
        self._v = np.zeros_like(self._k)

    def reorder(self, origins: np.ndarray) -> None:
        """Row ``i`` continues row ``origins[i]`` (a beam search step); the row count may change."""
        origins = np.asarray(origins, np.intp)
        if origins.ndim != 1 or origins.size == 0 or origins.min() < 0 or origins.max() >= self.rows:
            raise ValueError(f"bad row origins {origins!r} for {self.rows} rows")
        s = self.generated
        n = int(origins.size)
        # Row by row: numpy's fancy indexing along the row axis of these arrays is an order of magnitude
        # slower than a slice copy per row. The capacity is kept, so the next reserve() does not copy again.
        if n == self.rows:
            moved = np.flatnonzero(origins != np.arange(n))
            if moved.size == 0 or s == 0:
                return
            overwritten = set(moved.tolist())
            saved = {j: (self._k[:, j, :, :s].copy(), self._v[:, j, :, :s].copy())
                     for j in set(origins[moved].tolist()) & overwritten}
            for i in moved.tolist():
                j = int(origins[i])
                k, v = saved[j] if j in saved else (self._k[:, j, :, :s], self._v[:, j, :, :s])
                self._k[:, i, :, :s] = k
                self._v[:, i, :, :s] = v
            return
        shape = (self.layers, n, self.heads, self._k.shape[3], self.head_dim)
        new_k, new_v = np.empty(shape, np.float32), np.empty(shape, np.float32)
        for i, j in enumerate(origins.tolist()):
            new_k[:, i, :, :s] = self._k[:, j, :, :s]
            new_v[:, i, :, :s] = self._v[:, j, :, :s]
        self._k, self._v, self.rows = new_k, new_v, n

    def release(self) -> None:
        """Drop every array (the group is finished or cancelled): :attr:`nbytes` becomes 0 and the cache
        cannot be used afterwards. Idempotent."""
        self.released = True
        self.generated = 0
        self.prefix_k_t = np.zeros((self.layers, self.heads, self.head_dim, 0), np.float32)
        self.prefix_v = np.zeros((self.layers, self.heads, 0, self.head_dim), np.float32)
        self._k = self._v = np.zeros((self.layers, 0, self.heads, 0, self.head_dim), np.float32)
        self.cross = CrossCache(self._k, self._k)
