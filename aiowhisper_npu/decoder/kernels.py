"""The Whisper text decoder as batched numpy kernels (fp32), over the caches of :mod:`.cache`.

One :func:`forward` call runs a list of :class:`Pass` es together: each is a *prefill* (a group's prompt, one
row of ``P`` tokens, causal self-attention within it) or a *step* (one new token in each of a group's ``B``
rows). The rows of all passes are stacked, so every linear layer (the fused Q/K/V, the output projections,
the cross-attention query, the MLP and the logits) is one GEMM over all of them: concurrent requests and the
beams of a search share the weight reads. Attention is per group: causal self-attention over the group's
prompt prefix and each row's own suffix, then cross-attention over the window's :class:`~.cache.CrossCache`.

Per block, as in openai-whisper's ``ResidualAttentionBlock``: ``x += SelfAttn(LN(x))``,
``x += CrossAttn(LN(x), audio)``, ``x += MLP(LN(x))``; after the blocks a final layer norm and logits against
the token embedding (tied). Layer-norm scales and the attention scale ``head_dim ** -0.5`` are folded into
the following linear layers once, in :func:`prepare_decoder` (rounding only; well inside the 1e-3 tolerance
against CTranslate2). Element-wise work (bias + GELU, bias + residual + layer norm, the softmax's ``exp``)
goes through the shared kernels of :mod:`aiowhisper_npu.numerics` (C when built).

With ``precision="bf16"`` (docs/precision.md) every weight, the token embedding included, is kept as bf16
bit patterns (``uint16``: half the bytes a step streams) and every product takes bf16 operands with fp32
sums: the activations are rounded to bf16 as they enter a linear layer (inside ``native.gemv.matmul_nt_bf16``),
Q/K/V and the cross-attention keys/values are rounded once when computed, and the softmax probabilities
are rounded before ``P V``. Layer norms, softmax, GELU and residuals stay fp32.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from ..bf16 import from_bf16_bits, round_bf16, to_bf16_bits
from ..models.model import DecoderWeights, ModelDimensions
from ..native import gemv
from ..numerics import PRECISIONS, add_norm_, bias_gelu_, exp_rows_, round_bf16_, switches
from .cache import CrossCache, KVCache

__all__ = ["PreparedLayer", "PreparedDecoder", "prepare_decoder", "Pass", "PassOutput", "cross_cache", "forward",
           "linear", "use_gemv", "gemv_available", "GEMV_MAX_ROWS"]

#: Products with at most this many rows use the few-row kernel (``native.gemv``); more rows
#: (prefills, cross-attention keys) go to BLAS, which is faster there.
GEMV_MAX_ROWS = 24
_use_gemv = True


def gemv_available() -> bool:
    """True when the few-row product kernel is built (it runs everywhere: AVX2 + FMA, else portable C)."""
    return gemv is not None


def use_gemv(enabled: bool) -> bool:
    """Use the few-row kernel for small products (default when built) or numpy.matmul for all; returns the
    previous setting. Process-wide; the two agree to float32 rounding, not bit for bit."""
    global _use_gemv
    previous, _use_gemv = _use_gemv, bool(enabled)
    return previous


def _bf16_product(x: np.ndarray, w: np.ndarray, b: np.ndarray | None, out: np.ndarray, n0: int = 0,
                  n1: int | None = None) -> None:
    """``out[:, n0:n1] = bf16(x) @ w[n0:n1].T (+ b)`` for bf16 weight bits ``w`` (``uint16`` ``(out, in)``): the
    C kernel, or its numpy form (BLAS on the same bf16 values; another summation order)."""
    if gemv is not None and _use_gemv:
        gemv.matmul_nt_bf16(x, w, out, b, n0, w.shape[0] if n1 is None else n1, switches.bf16_kernel)
        return
    np.matmul(round_bf16(x), from_bf16_bits(w).T, out=out)
    if b is not None:
        out += b


def _round_(a: np.ndarray) -> np.ndarray:
    """Round a C-contiguous float32 array to bf16 values in place."""
    round_bf16_(a.reshape(-1, a.shape[-1]))
    return a


def linear(x: np.ndarray, w: np.ndarray, b: np.ndarray | None = None) -> np.ndarray:
    """``x @ w.T (+ b)`` for a weight ``w`` in its ``(out, in)`` layout; a new ``(rows, out)`` array. A bf16
    weight (``uint16`` bits) makes it the bf16 product."""
    out = np.empty((x.shape[0], w.shape[0]), np.float32)
    if w.dtype == np.uint16:
        _bf16_product(x, w, b, out)
        return out
    if gemv is not None and _use_gemv and x.shape[0] <= GEMV_MAX_ROWS:
        gemv.matmul_nt(x, w, out, b)
        return out
    np.matmul(x, w.T, out=out)
    if b is not None:
        out += b
    return out


@dataclass(frozen=True, eq=False)
class PreparedLayer:
    """One block's weights in their ``(out, in)`` layout, layer norms and attention scales folded in."""

    qkv_w: np.ndarray  # (3d, d)
    qkv_b: np.ndarray
    out_w: np.ndarray  # (d, d)
    out_b: np.ndarray
    q_w: np.ndarray  # (d, d) cross-attention query
    q_b: np.ndarray
    kv_w: np.ndarray  # (2d, d_audio) cross-attention keys and values of the encoder output
    kv_b: np.ndarray
    cross_out_w: np.ndarray
    cross_out_b: np.ndarray
    fc1_w: np.ndarray  # (4d, d)
    fc1_b: np.ndarray
    fc2_w: np.ndarray  # (d, 4d)
    fc2_b: np.ndarray


@dataclass(frozen=True, eq=False)
class PreparedDecoder:
    dims: ModelDimensions
    embedding: np.ndarray  # (n_vocab, d): token embedding and, transposed, the output projection
    positions: np.ndarray  # (n_text_ctx, d)
    layers: tuple[PreparedLayer, ...]
    ln_w: np.ndarray
    ln_b: np.ndarray
    precision: str = "fp32"  # "bf16": weights and embedding as bf16 bits (uint16), products on bf16 operands

    @property
    def bf16(self) -> bool:
        return self.precision == "bf16"

    def embed(self, ids: np.ndarray) -> np.ndarray:
        """The token embedding rows of ``ids`` as float32."""
        rows = self.embedding[ids]
        return from_bf16_bits(rows) if self.bf16 else rows

    @property
    def nbytes(self) -> int:
        arrays = [self.embedding, self.positions, self.ln_w, self.ln_b]
        arrays += [getattr(layer, f) for layer in self.layers for f in PreparedLayer.__dataclass_fields__]
        return sum(a.nbytes for a in arrays)


def _fold(w: np.ndarray, b: np.ndarray, ln_w: np.ndarray, ln_b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """An ``(out, in)`` weight after a layer norm with affine (ln_w, ln_b) -> the weight and bias of the same
    map applied to the normalised (affine-free) input; computed in float64."""
    w64 = w.astype(np.float64)
    return w64 * ln_w.astype(np.float64)[None, :], b.astype(np.float64) + w64 @ ln_b.astype(np.float64)


def prepare_decoder(w: DecoderWeights, dims: ModelDimensions, precision: str = "fp32") -> PreparedDecoder:
    """Lay the decoder weights out for :func:`forward` (done once per model); ``precision="bf16"`` keeps the
    weights and the token embedding as bf16 bits (rounded to nearest even once, here)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    bf16 = precision == "bf16"
    d = dims.n_text_state
    scale = np.float64(dims.text_head_dim) ** -0.5
    layers = []
    for b in w.blocks:
        qkv_w, qkv_b = _fold(b.qkv_w, b.qkv_b, b.attn_ln_w, b.attn_ln_b)
        qkv_w[:d] *= scale
        qkv_b[:d] *= scale
        q_w, q_b = _fold(b.cross_q_w, b.cross_q_b, b.cross_ln_w, b.cross_ln_b)
        q_w *= scale
        q_b *= scale
        fc1_w, fc1_b = _fold(b.fc1_w, b.fc1_b, b.mlp_ln_w, b.mlp_ln_b)
        arrays = dict(qkv_w=qkv_w, qkv_b=qkv_b, out_w=b.out_w, out_b=b.out_b, q_w=q_w, q_b=q_b,
                      kv_w=b.cross_kv_w, kv_b=b.cross_kv_b, cross_out_w=b.cross_out_w,
                      cross_out_b=b.cross_out_b, fc1_w=fc1_w, fc1_b=fc1_b, fc2_w=b.fc2_w, fc2_b=b.fc2_b)
        arrays = {k: np.ascontiguousarray(v, np.float32) for k, v in arrays.items()}
        if bf16:
            arrays = {k: to_bf16_bits(v) if k.endswith("_w") else v for k, v in arrays.items()}
        layers.append(PreparedLayer(**arrays))
    embedding = np.ascontiguousarray(w.token_embedding, np.float32)
    return PreparedDecoder(dims, to_bf16_bits(embedding) if bf16 else embedding,
                           np.ascontiguousarray(w.positional_embedding, np.float32), tuple(layers),
                           w.ln_w.astype(np.float32), w.ln_b.astype(np.float32), precision)


def cross_cache(dec: PreparedDecoder, audio: np.ndarray) -> CrossCache:
    """Every layer's cross-attention keys and values of one window's encoder output ``(T, d_audio)``."""
    d, h = dec.dims.n_text_state, dec.dims.n_text_head
    hd, t = d // h, audio.shape[0]
    k = np.empty((len(dec.layers), h, t, hd), np.float32)
    v_t = np.empty((len(dec.layers), h, hd, t), np.float32)
    for i, layer in enumerate(dec.layers):
        kv = linear(audio, layer.kv_w, layer.kv_b)
        if dec.bf16:  # the keys and values enter the attention products as bf16
            _round_(kv)
        k[i] = kv[:, :d].reshape(t, h, hd).transpose(1, 0, 2)
        v_t[i] = kv[:, d:].reshape(t, h, hd).transpose(1, 2, 0)
    return CrossCache(k, v_t)


@dataclass(eq=False)
class Pass:
    """One group's share of a forward pass.

    ``tokens`` is ``(B, n)``: a prefill has ``B == 1`` and the whole prompt (the cache must be empty); a step
    has ``n == 1`` and one token per row of a cache that holds ``B`` rows. ``logits_at`` lists the positions
    (within this pass's ``n``) whose logits to return, for every row (default: the last). ``cross_heads``
    asks for the raw cross-attention scores ``q k`` (scaled, before the softmax) of those ``(layer, head)``
    pairs, returned in sorted (layer, head) order.
    """

    cache: KVCache
    tokens: np.ndarray
    logits_at: Sequence[int] = (-1,)
    cross_heads: Sequence[tuple[int, int]] = ()

    @property
    def prefill(self) -> bool:
        return self.cache.length == 0


@dataclass(eq=False)
class PassOutput:
    logits: np.ndarray  # (B, len(logits_at), n_vocab) float32
    cross_qk: np.ndarray | None = None  # (len(cross_heads), n, T): scaled q k before the softmax
    _heads: list[np.ndarray] = field(default_factory=list, repr=False)


def _softmax_(s: np.ndarray) -> np.ndarray:
    """In-place softmax over the last axis of a C-contiguous array."""
    flat = s.reshape(-1, s.shape[-1])
    exp_rows_(flat, True)
    flat /= flat.sum(axis=1, keepdims=True)
    return s


def _layer_norm(x: np.ndarray, out: np.ndarray) -> np.ndarray:
    add_norm_(x, None, None, out)
    return out


def _self_attention(p: Pass, layer: int, qkv: np.ndarray, out: np.ndarray, slot: int, bf16: bool = False) -> None:
    """Causal self-attention of one group's rows ``qkv`` ``(rows, 3d)`` into ``out`` ``(rows, d)``;
    ``slot`` is the suffix position a step writes, or -1 for a prefill. ``bf16``: P is rounded before P V
    (``qkv`` already holds bf16 values)."""
    cache = p.cache
    h, hd = cache.heads, cache.head_dim
    d = h * hd
    b, n = p.tokens.shape
    if slot < 0:  # prefill: one row, n tokens, causal within them
        q = qkv[:, :d].reshape(n, h, hd).transpose(1, 0, 2)
        k = qkv[:, d : 2 * d].reshape(n, h, hd).transpose(1, 0, 2)
        v = np.ascontiguousarray(qkv[:, 2 * d :].reshape(n, h, hd).transpose(1, 0, 2))
        cache.set_prefix(layer, k, v)
        s = np.matmul(q, cache.prefix_k_t[layer])  # (h, n, n)
        s[:, ~np.tri(n, dtype=bool)] = -np.inf  # causal: no query sees a later key
        _softmax_(s)
        if bf16:
            _round_(s)
        o = np.matmul(s, v)  # (h, n, hd)
        out[...] = o.transpose(1, 0, 2).reshape(n, d)
        return
    q = qkv[:, :d].reshape(b, h, hd)
    k_new, v_new = cache.suffix_slot(layer, slot)
    k_new[...] = qkv[:, d : 2 * d].reshape(b, h, hd)
    v_new[...] = qkv[:, 2 * d :].reshape(b, h, hd)
    pk, pv = cache.prefix_k_t[layer], cache.prefix_v[layer]  # (h, hd, P), (h, P, hd)
    sk, sv = cache.suffix(layer, slot + 1)  # (b, h, s, hd)
    plen = pk.shape[2]
    s = np.empty((b, h, plen + slot + 1), np.float32)
    s[:, :, :plen] = np.matmul(q.transpose(1, 0, 2), pk).transpose(1, 0, 2)
    s[:, :, plen:] = np.matmul(q[:, :, None, :], sk.swapaxes(-1, -2))[:, :, 0, :]
    _softmax_(s)
    if bf16:
        _round_(s)
    o = np.matmul(s[:, :, :plen].transpose(1, 0, 2), pv).transpose(1, 0, 2)  # (b, h, hd)
    o += np.matmul(s[:, :, None, plen:], sv)[:, :, 0, :]
    out[...] = o.reshape(b, d)


def _cross_attention(p: Pass, layer: int, q_rows: np.ndarray, out: np.ndarray, want: list[int],
                     res: PassOutput, few: bool, bf16: bool = False) -> None:
    """Cross-attention of one group's query rows ``(rows, d)`` over its window: per head two few-row products
    for a step's rows, batched BLAS products for a prefill's."""
    cross = p.cache.cross
    h, hd = p.cache.heads, p.cache.head_dim
    rows = q_rows.shape[0]
    k, v_t = cross.k[layer], cross.v_t[layer]  # (h, T, hd), (h, hd, T)
    if few and gemv is not None and _use_gemv:
        s = np.empty((h, rows, k.shape[1]), np.float32)
        for i in range(h):
            gemv.matmul_nt(q_rows[:, i * hd : (i + 1) * hd], k[i], s[i])
        for head in want:
            res._heads.append(s[head].copy())
        _softmax_(s)
        if bf16:
            _round_(s)
        for i in range(h):
            gemv.matmul_nt(s[i], v_t[i], out[:, i * hd : (i + 1) * hd])
        return
    q = q_rows.reshape(rows, h, hd).transpose(1, 0, 2)  # (h, rows, hd)
    s = np.matmul(q, k.transpose(0, 2, 1))  # (h, rows, T)
    for head in want:
        res._heads.append(s[head].copy())
    _softmax_(s)
    if bf16:
        _round_(s)
    o = np.matmul(s, v_t.transpose(0, 2, 1))  # (h, rows, hd)
    out[...] = o.transpose(1, 0, 2).reshape(rows, h * hd)


#: Run two callables at once (on two cores) and return when both are done; see :func:`forward`.
Parallel = Callable[[Callable[[], None], Callable[[], None]], None]
#: Few-row products over at least this many weights are split in two column halves when a ``parallel`` is
#: given (the logits, and base's MLP); smaller ones cost less than a thread hand-off.
SPLIT_MIN_WEIGHTS = 1 << 20


def _product(x: np.ndarray, w: np.ndarray, b: np.ndarray | None, out: np.ndarray, few: bool,
             parallel: Parallel | None = None) -> None:
    """``out = x @ w.T (+ b)``: the few-row kernel for step rows (each row's result independent of the others
    and of the column range, so a split is bit-identical), BLAS for a prefill's rows. A bf16 weight takes the
    bf16 few-row kernel for every row count."""
    native = gemv is not None and _use_gemv
    columns: Callable[[int, int], None]
    if w.dtype == np.uint16:
        def columns(n0: int, n1: int) -> None:
            _bf16_product(x, w, b, out, n0, n1)
    elif few and native:
        def columns(n0: int, n1: int) -> None:
            gemv.matmul_nt(x, w, out, b, n0, n1)
    else:
        np.matmul(x, w.T, out=out)
        if b is not None:
            out += b
        return
    n = w.shape[0]
    if few and native and parallel is not None and w.size >= SPLIT_MIN_WEIGHTS:
        mid = (n // 2 + 3) // 4 * 4
        parallel(lambda: columns(0, mid), lambda: columns(mid, n))
    else:
        columns(0, n)


def _linear_rows(x: np.ndarray, w: np.ndarray, b: np.ndarray | None, segments: Sequence[tuple[int, int, bool]],
                 parallel: Parallel | None) -> np.ndarray:
    out = np.empty((x.shape[0], w.shape[0]), np.float32)
    for r0, r1, few in segments:
        _product(x[r0:r1], w, b, out[r0:r1], few, parallel)
    return out


def forward(dec: PreparedDecoder, passes: Sequence[Pass], parallel: Parallel | None = None) -> list[PassOutput]:
    """Run ``passes`` through the decoder together (see the module docstring); caches are updated.

    A pass's outputs do not depend on the other passes it runs with: step rows go through the few-row
    kernel (row by row independent) and each prefill through its own BLAS product, so batching is
    bit-identical to running each pass alone (with the few-row kernel built). ``parallel``, when given,
    runs the two column halves of the large few-row products at once (the engine passes its second thread).
    """
    d = dec.dims.n_text_state
    order = sorted(range(len(passes)), key=lambda i: passes[i].prefill)  # steps first, then prefills
    spans: list[tuple[int, int]] = [(0, 0)] * len(passes)
    segments: list[tuple[int, int, bool]] = []
    tokens, positions = [], []
    slots = [-1] * len(passes)
    r = steps_end = 0
    for i in order:
        p = passes[i]
        if p.cache.released:
            raise ValueError("a pass on a released cache")
        b, n = p.tokens.shape
        if p.prefill:
            if b != 1:
                raise ValueError("a prefill pass has one row")
            start = 0
            segments.append((r, r + n, False))
        else:
            if n != 1 or b != p.cache.rows:
                raise ValueError(f"a step pass feeds one token per row ({p.cache.rows} rows), got {p.tokens.shape}")
            start = p.cache.length
            steps_end = r + b
        if start + n > dec.dims.n_text_ctx:
            raise ValueError(f"the sequence would exceed the decoder's {dec.dims.n_text_ctx} positions")
        tokens.append(p.tokens.reshape(-1))
        positions.append(np.tile(np.arange(start, start + n), b))
        spans[i] = (r, r + b * n)
        r += b * n
    if steps_end:
        segments.insert(0, (0, steps_end, True))
    for i in order:  # reserve suffix slots only once every pass is known to be valid
        if not passes[i].prefill:
            slots[i] = passes[i].cache.reserve()
    ids = np.concatenate(tokens)
    x = dec.embed(ids) + dec.positions[np.concatenate(positions)]
    bf16 = dec.bf16
    results = [PassOutput(np.empty(0, np.float32)) for _ in passes]
    h_norm = np.empty_like(x)
    attn = np.empty_like(x)
    for i, layer in enumerate(dec.layers):
        qkv = _linear_rows(_layer_norm(x, h_norm), layer.qkv_w, layer.qkv_b, segments, parallel)
        if bf16:  # Q, K and V enter the attention products as bf16 (the cache keeps the rounded values)
            _round_(qkv)
        for p, (r0, r1), slot in zip(passes, spans, slots):
            _self_attention(p, i, qkv[r0:r1], attn[r0:r1], slot, bf16)
        # x += attn W_o + b_o
        add_norm_(x, layer.out_b, _linear_rows(attn, layer.out_w, None, segments, parallel), None)
        q = _linear_rows(_layer_norm(x, h_norm), layer.q_w, layer.q_b, segments, parallel)
        if bf16:
            _round_(q)
        for p, (r0, r1), res, slot in zip(passes, spans, results, slots):
            want = [head for (lay, head) in sorted(p.cross_heads) if lay == i]
            _cross_attention(p, i, q[r0:r1], attn[r0:r1], want, res, slot >= 0, bf16)
        add_norm_(x, layer.cross_out_b, _linear_rows(attn, layer.cross_out_w, None, segments, parallel), None)
        hidden = _linear_rows(_layer_norm(x, h_norm), layer.fc1_w, None, segments, parallel)
        bias_gelu_(hidden, layer.fc1_b, np.empty(3 * hidden.size, np.float32))
        add_norm_(x, layer.fc2_b, _linear_rows(hidden, layer.fc2_w, None, segments, parallel), None)
    for p, slot in zip(passes, slots):
        if slot >= 0:
            p.cache.commit()
    rows = []
    for p, (r0, _) in zip(passes, spans):
        b, n = p.tokens.shape
        at = np.asarray([a % n for a in p.logits_at], np.intp)
        rows.append((r0 + np.arange(b)[:, None] * n + at[None, :]).reshape(-1))
    sel = np.concatenate(rows)
    y = np.empty((sel.size, d), np.float32)
    _layer_norm(x[sel], y)
    y *= dec.ln_w
    y += dec.ln_b
    logits = np.empty((sel.size, dec.embedding.shape[0]), np.float32)
    _product(y, dec.embedding, None, logits, True, parallel)
    k = 0
    for p, res in zip(passes, results):
        b = p.tokens.shape[0]
        m = len(p.logits_at)
        res.logits = logits[k : k + b * m].reshape(b, m, -1)
        k += b * m
        if p.cross_heads:
            res.cross_qk = np.stack(res._heads)
        res._heads = []
    return results
