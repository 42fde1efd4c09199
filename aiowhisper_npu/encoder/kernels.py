"""The Whisper encoder as numpy tile kernels (fp32).

Each kernel computes one *row tile* (encoder positions ``r0:r1``) of one op and writes into arrays it is
given, so a device can run it on its own buffers. Nothing here knows about asyncio, slots or devices:

- ``stem``: conv1 + GELU, conv2 (stride 2) + GELU, + positional embedding, from a slab of mel frames;
- ``qkv``: pre-attention layer norm and the fused Q/K/V projection, written by the GEMM straight into rows
  ``r0:r0+n`` of the per-window ``qkv`` tensor ``(T, qkv_columns)``: ``[Q | K | V_0, 1 | ... | V_H-1, 1]``,
  each head's values followed by a column of ones. Q is pre-scaled by ``head_dim ** -0.5``;
- ``attn_mlp``: attention of the tile's queries against all keys, output projection, residual, the MLP
  block (layer norm, fc1, exact-erf GELU, fc2), residual, and for the last block ``ln_post``.

Layer-norm scales are folded into the following linear layer once, when the weights are prepared
(:func:`prepare_weights`); that and the Q scaling change rounding only, well inside the 1e-3 tolerance
against CTranslate2. Given the same inputs and the same tile size, every kernel is deterministic.

Attention works one head at a time on strided views of the ``qkv`` tensor (BLAS takes the row stride, so
nothing is copied or transposed), and writes each head's output into its columns of the merged rows. The
ones column makes the softmax denominator come out of the ``P @ [V, 1]`` GEMM, one column wider, instead
of a separate pass (the prepared weights have zero columns with bias 1 there, so the GEMM writes exact ones).
When ``max|q_i| * max|k_j|`` bounds every score of a head by ``SHIFT_FREE_BOUND``, ``exp`` cannot overflow
or lose a row, so the row-max subtraction is skipped; a non-finite result falls back to the shifted form.
With ``native.attention`` (AVX-512) every head that passes that check runs in one C call for the
tile: both products and the exp in one kernel whose scores stay in L2 (it checks the bound itself and sums
its own denominators; the ones column is unused); the heads it leaves take the path above.

Element-wise work (bias + GELU, the softmax's shift and exp, bias + residual + layer norm) is
:mod:`aiowhisper_npu.numerics`' (one fused C pass each when built, else numpy passes with the same formulas).
The linear layers (convolutions as GEMMs, Q/K/V, output projection, fc1, fc2) go through :func:`linear_`:
with ``native.gemm`` (AVX-512) the weights are packed once (:func:`pack_weights`) and bias, or bias + GELU, is
applied as each output block is stored; otherwise ``numpy.matmul`` (BLAS). ``numerics.use_native`` switches
between the C forms and the numpy forms.

``Workspace(precision="bf16")`` runs every product on bf16 operands with fp32 sums (docs/precision.md): the
weights are rounded once (:func:`prepare_weights`) and packed as bf16 for ``native.gemm_bf16``,
each linear layer's input is rounded as it is packed (numpy form: a rounded copy), Q/K/V are rounded in the
``qkv`` tensor, and P is rounded before ``P [V, 1]`` (the fused kernel's bf16 form, or the numpy path).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import numpy as np

from ..bf16 import round_bf16
from ..models.model import EncoderWeights, ModelDimensions
from ..native import attention as attention_c, gemm, gemm_bf16
from ..numerics import (
    PRECISIONS,
    add_norm_,
    bf16_gemm_available,
    bias_gelu_,
    exp_rows_,
    fused_attention_available,
    gelu_,
    layer_norm_affine,
    packed_gemm_available,
    round_bf16_,
    switches,
)

__all__ = ["PACKED", "PACKED_BF16", "qkv_columns", "prepare_weights", "pack_weights", "Workspace", "linear_",
           "attention", "stem", "qkv", "attn_mlp", "OPS"]

ATTN_ROWS = 512  # attention is computed in chunks of at most this many query rows
SHIFT_FREE_BOUND = 60.0  # |score| <= 60: exp() neither overflows (88) nor underflows a whole row (-87)
BF16_SHIFT_FREE_BOUND = 59.0  # bf16's per-row test, a margin below the C kernel's own per-call check
BLAS_MIN_ROWS = 16  # OpenBLAS sums a row of a product of 1-10 rows in another order than of more (measured)
PACKED = ":packed"  # suffix of a weight's packed copy in the resident mapping (see pack_weights)
PACKED_BF16 = ":packed_bf16"  # suffix of its packed bf16 copy (precision="bf16", see pack_weights)
_GEMM_WEIGHTS = ("conv1_w", "conv2_w", "qkv_w", "out_w", "fc1_w", "fc2_w")  # names, or suffixes after "{i}."


def qkv_columns(d: int, heads: int) -> int:
    """Width of a row of the ``qkv`` tensor: Q and K (``d`` each), then per head ``head_dim`` values + 1."""
    return 3 * d + heads


def _with_ones_columns(m: np.ndarray, d: int, heads: int, fill: float) -> np.ndarray:
    """Insert, after each head's V columns (the last axis' third ``d``), one column set to ``fill``."""
    hd = d // heads
    v = m[..., 2 * d :].reshape(*m.shape[:-1], heads, hd)
    extra = np.full((*m.shape[:-1], heads, 1), fill, m.dtype)
    v1 = np.concatenate([v, extra], axis=-1).reshape(*m.shape[:-1], heads * (hd + 1))
    return np.concatenate([m[..., : 2 * d], v1], axis=-1)


def prepare_weights(w: EncoderWeights, dims: ModelDimensions, precision: str = "fp32") -> dict[str, np.ndarray]:
    """Lay the weights out for the kernels: ``(in, out)`` matrices, LN scales folded in, Q pre-scaled.

    The result is what a device keeps resident. Keys: ``conv1_w (3*n_mels, d)``, ``conv1_b``, ``conv2_w
    (3d, d)``, ``conv2_b``, ``pos (T, d)``, then per block ``{i}.qkv_w (d, qkv_columns)`` (zero columns where
    the tensor holds ones) and ``{i}.qkv_b`` (1 there), ``{i}.out_w``, ``{i}.out_b``, ``{i}.fc1_w``,
    ``{i}.fc1_b``, ``{i}.fc2_w``, ``{i}.fc2_b``, and ``ln_post_w``, ``ln_post_b``. With ``precision="bf16"``
    the linear layers' weights are rounded to bf16 values (nearest even), once.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    d = dims.n_audio_state
    q_scale = np.float64(dims.head_dim) ** -0.5
    f64 = np.float64
    r: dict[str, np.ndarray] = {
        "conv1_w": w.conv1_w.transpose(2, 1, 0).reshape(3 * dims.n_mels, d),
        "conv1_b": w.conv1_b,
        "conv2_w": w.conv2_w.transpose(2, 1, 0).reshape(3 * d, d),
        "conv2_b": w.conv2_b,
        "pos": w.positional_embedding,
        "ln_post_w": w.ln_post_w,
        "ln_post_b": w.ln_post_b,
    }
    for i, b in enumerate(w.blocks):
        qkv_w = b.qkv_w.T.astype(f64) * b.attn_ln_w.astype(f64)[:, None]  # (d, 3d), LN gamma folded
        qkv_b = b.qkv_b.astype(f64) + b.attn_ln_b.astype(f64) @ b.qkv_w.T.astype(f64)
        qkv_w[:, :d] *= q_scale
        qkv_b[:d] *= q_scale
        fc1_w = b.fc1_w.T.astype(f64) * b.mlp_ln_w.astype(f64)[:, None]
        fc1_b = b.fc1_b.astype(f64) + b.mlp_ln_b.astype(f64) @ b.fc1_w.T.astype(f64)
        h = dims.n_audio_head
        r[f"{i}.qkv_w"] = _with_ones_columns(qkv_w, d, h, 0.0)
        r[f"{i}.qkv_b"] = _with_ones_columns(qkv_b, d, h, 1.0)
        r[f"{i}.out_w"], r[f"{i}.out_b"] = b.out_w.T, b.out_b
        r[f"{i}.fc1_w"], r[f"{i}.fc1_b"] = fc1_w, fc1_b
        r[f"{i}.fc2_w"], r[f"{i}.fc2_b"] = b.fc2_w.T, b.fc2_b
    out = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in r.items()}
    if precision == "bf16":
        for k in out:
            if k.rsplit(".", 1)[-1] in _GEMM_WEIGHTS:
                out[k] = round_bf16(out[k])
    return out


def pack_weights(resident: Mapping[str, np.ndarray], precision: str = "fp32") -> dict[str, np.ndarray]:
    """Packed copies of the linear layers' weights for :func:`linear_`, keyed ``name + PACKED``.

    Empty when the packed GEMM is not available. The canonical ``(in, out)`` matrices stay in the resident
    mapping too: other devices (and the numpy forms) use those. With ``precision="bf16"``: bf16 copies for
    ``native.gemm_bf16``, keyed ``name + PACKED_BF16`` (half the bytes).
    """
    bf16 = precision == "bf16"
    lib = gemm_bf16 if bf16 else gemm
    if lib is None or not lib.available():
        return {}
    out = {}
    for name, w in resident.items():
        if name.rsplit(".", 1)[-1] in _GEMM_WEIGHTS:
            packed = np.empty(lib.packed_shape(*w.shape), np.uint16 if bf16 else np.float32)
            lib.pack(w, packed)
            out[name + (PACKED_BF16 if bf16 else PACKED)] = packed
    return out


@dataclass
class Workspace:
    """Scratch arrays for one kernel worker, sized for the largest tile; reused to avoid page faults."""

    dims: ModelDimensions
    tile_rows: int
    precision: str = "fp32"  # "bf16": products on bf16-rounded operands (docs/precision.md)

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        self.bf16 = self.precision == "bf16"
        d, n, t, h = self.dims.n_audio_state, self.tile_rows, self.dims.n_audio_ctx, self.dims.n_audio_head
        rows = max(BLAS_MIN_ROWS, min(n, ATTN_ROWS))
        self.conv1 = np.empty((2 * n + 1, d), np.float32)
        self.cols = np.empty((2 * n + 1, 3 * max(d, self.dims.n_mels)), np.float32)
        self.ln = np.empty((n, d), np.float32)
        self.tmp = np.empty((n, d), np.float32)
        self.scores = np.empty((rows, t), np.float32)
        self.rowvec = np.empty((rows, 1), np.float32)
        self.av = np.empty((rows, self.dims.head_dim + 1), np.float32)
        self.norms = np.empty((t + n, h), np.float32)
        self.proj = np.empty((n, d), np.float32)
        self.mlp = np.empty((n, self.dims.n_mlp), np.float32)
        self.gelu = np.empty(3 * max((2 * n + 1) * d, n * self.dims.n_mlp), np.float32)
        c_scratch = [0]  # for the C kernels: packed activation rows, attention's Q^T and P^T panels
        if packed_gemm_available():
            c_scratch.append(gemm.SCRATCH_FLOATS)
        if bf16_gemm_available():
            c_scratch.append(gemm_bf16.SCRATCH_FLOATS)
        if fused_attention_available():
            c_scratch.append(attention_c.scratch_floats(t, self.dims.head_dim))
        self.c_scratch = np.empty(max(c_scratch), np.float32)


def linear_(res: Mapping[str, np.ndarray], name: str, x: np.ndarray, out: np.ndarray, ws: Workspace,
            bias: np.ndarray | None = None, gelu: bool = False) -> np.ndarray:
    """``out = x @ res[name]`` (+ ``bias``, then GELU if ``gelu``): the packed GEMM with its fused epilogue
    when ``res`` holds the packed copy (:func:`pack_weights`), else ``numpy.matmul`` and the element-wise
    kernels. With ``ws.bf16``, ``x`` enters the product rounded to bf16 (the weights are bf16 values already):
    the packed bf16 GEMM, or BLAS on a rounded copy."""
    if getattr(ws, "bf16", False):  # (a Workspace has it; light stand-ins in tests may not)
        packed = res.get(name + PACKED_BF16) if switches.bf16_gemm else None
        if packed is not None:
            gemm_bf16.gemm(x, packed, out, bias, gelu, ws.c_scratch, switches.bf16_kernel)
            return out
        np.matmul(round_bf16(x), res[name], out=out)
    elif (packed := res.get(name + PACKED) if switches.gemm else None) is not None:
        gemm.gemm(x, packed, out, bias, gelu, ws.c_scratch)
        return out
    else:
        np.matmul(x, res[name], out=out)
    if bias is not None and gelu:
        bias_gelu_(out, bias, ws.gelu)
    elif bias is not None:
        out += bias
    elif gelu:
        gelu_(out, ws.gelu)
    return out


def stem(res: Mapping[str, np.ndarray], ws: Workspace, slab: np.ndarray, r0: int, out: np.ndarray) -> None:
    """conv1+GELU, conv2+GELU, + positions for rows ``r0:r0+n``.

    ``slab`` is ``(2n+3, n_mels)``: mel frames ``2*r0-2 .. 2*(r0+n)`` with zeros outside the window.
    """
    n = out.shape[0]
    m = slab.shape[1]
    f = 2 * n + 1  # conv1 frames 2*r0-1 .. 2*r0+2n-1
    cols = ws.cols[:f, : 3 * m]
    cols[:, :m], cols[:, m : 2 * m], cols[:, 2 * m :] = slab[0:f], slab[1 : f + 1], slab[2 : f + 2]
    h = linear_(res, "conv1_w", cols, ws.conv1[:f], ws, res["conv1_b"], gelu=True)
    if r0 == 0:
        h[0] = 0.0  # conv2's zero padding: conv1 frame -1 does not exist
    d = h.shape[1]
    cols2 = ws.cols[:n, : 3 * d]
    cols2[:, :d], cols2[:, d : 2 * d], cols2[:, 2 * d :] = h[0 : f - 2 : 2], h[1 : f - 1 : 2], h[2:f:2]
    linear_(res, "conv2_w", cols2, out, ws, res["conv2_b"], gelu=True)
    out += res["pos"][r0 : r0 + n]


def qkv(res: Mapping[str, np.ndarray], ws: Workspace, layer: int, x: np.ndarray, r0: int,
        qkv_out: np.ndarray) -> None:
    """Layer norm + fused Q/K/V projection of rows ``r0:r0+n`` into ``qkv_out[r0:r0+n]`` (``(T, qkv_columns)``)."""
    n = x.shape[0]
    ln = ws.ln[:n]
    add_norm_(x, None, None, ln)
    linear_(res, f"{layer}.qkv_w", ln, qkv_out[r0 : r0 + n], ws, res[f"{layer}.qkv_b"])
    if ws.bf16:  # Q, K and V enter the attention products as bf16 (the ones columns stay exact)
        round_bf16_(qkv_out[r0 : r0 + n])


def _head_attention(q: np.ndarray, k: np.ndarray, v1: np.ndarray, ws: Workspace, out: np.ndarray,
                    shift: bool) -> bool:
    """``out = softmax(q k^T) v`` for one head and a chunk of rows; ``v1`` is ``[v, 1]``. False if not finite."""
    rows, hd = q.shape
    s = np.matmul(q, k.T, out=ws.scores[:rows, : k.shape[0]])
    exp_rows_(s, shift, ws.rowvec[:rows])
    if ws.bf16:  # P enters the P [V, 1] product as bf16: the denominators sum the rounded values
        round_bf16_(s)
    o1 = np.matmul(s, v1, out=ws.av[:rows])  # last column: the softmax denominator
    np.divide(o1[:, :hd], o1[:, hd:], out=out)
    return shift or bool(np.isfinite(o1).all())


def _squared_norms(qkv_in: np.ndarray, r0: int, n: int, heads: int, d: int,
                   ws: Workspace) -> tuple[np.ndarray, np.ndarray]:
    """The Cauchy-Schwarz bound's terms: ``|q|^2`` per row (``r0:r0+n``) and head, ``max |k|^2`` per head."""
    t, hd = qkv_in.shape[0], d // heads
    k3 = qkv_in[:, d : 2 * d].reshape(t, heads, hd)
    q3 = qkv_in[r0 : r0 + n, :d].reshape(n, heads, hd)
    k_sq = np.einsum("thd,thd->th", k3, k3, out=ws.norms[:t]).max(axis=0)
    q_sq = np.einsum("thd,thd->th", q3, q3, out=ws.norms[t : t + n])
    return q_sq, k_sq


def attention(qkv_in: np.ndarray, r0: int, n: int, heads: int, ws: Workspace, merged: np.ndarray) -> None:
    """Multi-head attention of rows ``r0:r0+n`` against every position; heads land in ``merged`` (n, d)."""
    if ws.bf16:
        _attention_bf16(qkv_in, r0, n, heads, ws, merged)
        return
    d = merged.shape[1]
    hd = d // heads
    todo: list[int] = list(range(heads))
    if switches.attention:  # every head it can run without the max shift; the rest come back
        todo = attention_c.heads(qkv_in[r0 : r0 + n, :d], qkv_in[:, d : 2 * d], qkv_in[:, 2 * d :], merged,
                                  heads, hd + 1, SHIFT_FREE_BOUND, ws.c_scratch, ws.bf16,
                                  switches.bf16_kernel)
        if not todo:
            return
    q_sq, k_sq = _squared_norms(qkv_in, r0, n, heads, d, ws)
    for h in todo:
        q = qkv_in[r0 : r0 + n, h * hd : (h + 1) * hd]
        k = qkv_in[:, d + h * hd : d + (h + 1) * hd]
        v1 = qkv_in[:, 2 * d + h * (hd + 1) : 2 * d + (h + 1) * (hd + 1)]
        for c0 in range(0, n, ATTN_ROWS):
            c1 = min(n, c0 + ATTN_ROWS)
            out = merged[c0:c1, h * hd : (h + 1) * hd]
            shift = float(q_sq[c0:c1, h].max() * k_sq[h]) > SHIFT_FREE_BOUND**2
            if not _head_attention(q[c0:c1], k, v1, ws, out, shift):
                _head_attention(q[c0:c1], k, v1, ws, out, True)


def _attention_bf16(qkv_in: np.ndarray, r0: int, n: int, heads: int, ws: Workspace, merged: np.ndarray) -> None:
    """:func:`attention` in bf16, decided row by row and head by head, so that a row's result does not depend on
    the rows it shares a tile with (P is rounded to bf16, and ``round(exp(s))`` and ``round(exp(s - max))``
    differ, so whether a row is shifted must depend on that row alone). A row of a head whose scores are bounded
    by ``BF16_SHIFT_FREE_BOUND`` (Cauchy-Schwarz; below ``SHIFT_FREE_BOUND``, so the C kernel's own check over the
    rows it is given always passes) runs unshifted, in the C kernel where it is built; every other row is
    shifted by its row maximum. BLAS sums a row of a product of fewer than ~11 rows in another order than of
    more, so a small group of rows is padded with zero rows to ``BLAS_MIN_ROWS``."""
    d = merged.shape[1]
    hd = d // heads
    q_sq, k_sq = _squared_norms(qkv_in, r0, n, heads, d, ws)
    free = q_sq * k_sq <= BF16_SHIFT_FREE_BOUND**2  # (rows, heads)
    if switches.attention and free.all():  # the common case: every head of every row in one call
        left = attention_c.heads(qkv_in[r0 : r0 + n, :d], qkv_in[:, d : 2 * d], qkv_in[:, 2 * d :], merged,
                                 heads, hd + 1, SHIFT_FREE_BOUND, ws.c_scratch, True, switches.bf16_kernel)
        if not left:
            return
        free[:, left] = False  # not finite unshifted (non-finite inputs): shift those heads' rows
    for h in range(heads):
        cols, vcols = slice(h * hd, (h + 1) * hd), slice(2 * d + h * (hd + 1), 2 * d + (h + 1) * (hd + 1))
        k, v1 = qkv_in[:, d + h * hd : d + (h + 1) * hd], qkv_in[:, vcols]
        free_rows, shifted_rows = np.flatnonzero(free[:, h]), np.flatnonzero(~free[:, h])
        if switches.attention and free_rows.size:
            q = qkv_in[r0 + free_rows, cols]
            out = np.empty((free_rows.size, hd), np.float32)
            if attention_c.heads(q, k, v1, out, 1, hd + 1, SHIFT_FREE_BOUND, ws.c_scratch, True,
                                 switches.bf16_kernel):
                shifted_rows = np.union1d(shifted_rows, free_rows)  # not finite: shift them all
            else:
                merged[free_rows, cols] = out
            free_rows = free_rows[:0]
        for rows, shift in ((free_rows, False), (shifted_rows, True)):
            for c0 in range(0, rows.size, ATTN_ROWS):
                idx = rows[c0 : c0 + ATTN_ROWS]
                q = np.zeros((max(idx.size, BLAS_MIN_ROWS), hd), np.float32)
                q[: idx.size] = qkv_in[r0 + idx, cols]
                out = np.empty_like(q)
                if not _head_attention(q, k, v1, ws, out, shift):
                    _head_attention(q, k, v1, ws, out, True)
                merged[idx, cols] = out[: idx.size]


def attn_mlp(res: Mapping[str, np.ndarray], ws: Workspace, layer: int, x: np.ndarray, r0: int,
             qkv_in: np.ndarray, out: np.ndarray, final: bool) -> None:
    """Self-attention for rows ``r0:r0+n`` against all positions, then the MLP block; ``final`` adds ln_post."""
    n, d = x.shape
    heads = qkv_in.shape[1] - 3 * d  # the inverse of qkv_columns: one ones column per head
    merged = ws.ln[:n]
    attention(qkv_in, r0, n, heads, ws, merged)
    x1 = linear_(res, f"{layer}.out_w", merged, ws.proj[:n], ws)
    ln = ws.ln[:n]
    add_norm_(x1, res[f"{layer}.out_b"], x, ln)  # bias, residual, then the MLP's layer norm
    hid = linear_(res, f"{layer}.fc1_w", ln, ws.mlp[:n], ws, res[f"{layer}.fc1_b"], gelu=True)
    if final:
        y = linear_(res, f"{layer}.fc2_w", hid, ws.tmp[:n], ws)
        add_norm_(y, res[f"{layer}.fc2_b"], x1, None)
        layer_norm_affine(y, res["ln_post_w"], res["ln_post_b"], out)
    else:
        linear_(res, f"{layer}.fc2_w", hid, out, ws)
        add_norm_(out, res[f"{layer}.fc2_b"], x1, None)


OPS = ("stem", "qkv", "attn_mlp")
