"""Which CTranslate2 ``model.bin`` variables make up a Whisper model (spec ``WhisperSpec``).

Encoder (``encoder/...``): ``conv1``, ``conv2``, ``position_encodings/encodings``, ``layer_{i}`` with
``self_attention`` (``linear_0`` = fused Q/K/V, ``linear_1`` = output) and ``ffn`` (``linear_0``/``linear_1``),
each with its ``layer_norm``, then ``layer_norm``; ``num_heads``.

Decoder (``decoder/...``): ``embeddings/weight``, ``position_encodings/encodings``, ``layer_{i}`` with
``self_attention`` (fused Q/K/V, output), ``attention`` (the cross-attention: ``linear_0`` = Q, ``linear_1`` =
fused K/V over the encoder output, ``linear_2`` = output) and ``ffn``, then ``layer_norm``; ``num_heads``.
``projection/weight`` is an alias of the embeddings (tied weights) and is not read twice.

The reading itself (layout, dtypes, aliases, dequantization) is :mod:`aiowhisper_npu.models.ct2_format`'s.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..errors import ModelError
from .ct2_format import Ct2File
from .model import BlockWeights, DecoderBlockWeights, DecoderWeights, EncoderWeights

__all__ = ["load_ct2_encoder", "load_ct2_whisper"]

_ENC = "encoder"
_DEC = "decoder"


def _weight(f: Ct2File, name: str, rank: int) -> np.ndarray:
    """A float32 weight of the given rank, or a ModelError naming what is wrong."""
    if name not in f:
        raise ModelError(f"{f.path}: variable {name!r} is missing: not a Whisper CTranslate2 model, or corrupt")
    arr = f.array(name)
    if arr.dtype != np.float32:
        raise ModelError(f"{f.path}: variable {name!r} has dtype {f.variable(name).dtype_name}, expected a float")
    if arr.ndim != rank:
        raise ModelError(f"{f.path}: variable {name!r} has shape {arr.shape}, expected rank {rank}")
    return arr


def _linear(f: Ct2File, prefix: str) -> tuple[np.ndarray, np.ndarray]:
    return _weight(f, f"{prefix}/weight", 2), _weight(f, f"{prefix}/bias", 1)


def _norm(f: Ct2File, prefix: str) -> tuple[np.ndarray, np.ndarray]:
    return _weight(f, f"{prefix}/layer_norm/gamma", 1), _weight(f, f"{prefix}/layer_norm/beta", 1)


def _block_parts(f: Ct2File, prefix: str) -> dict[str, np.ndarray]:
    """The self-attention and MLP weights every block has (``BlockWeights``' fields)."""
    att, ffn = f"{prefix}/self_attention", f"{prefix}/ffn"
    (attn_ln_w, attn_ln_b), (mlp_ln_w, mlp_ln_b) = _norm(f, att), _norm(f, ffn)
    (qkv_w, qkv_b), (out_w, out_b) = _linear(f, f"{att}/linear_0"), _linear(f, f"{att}/linear_1")
    (fc1_w, fc1_b), (fc2_w, fc2_b) = _linear(f, f"{ffn}/linear_0"), _linear(f, f"{ffn}/linear_1")
    return dict(attn_ln_w=attn_ln_w, attn_ln_b=attn_ln_b, qkv_w=qkv_w, qkv_b=qkv_b, out_w=out_w, out_b=out_b,
                mlp_ln_w=mlp_ln_w, mlp_ln_b=mlp_ln_b, fc1_w=fc1_w, fc1_b=fc1_b, fc2_w=fc2_w, fc2_b=fc2_b)


def _encoder_block(f: Ct2File, i: int) -> BlockWeights:
    return BlockWeights(**_block_parts(f, f"{_ENC}/layer_{i}"))


def _decoder_block(f: Ct2File, i: int) -> DecoderBlockWeights:
    p = f"{_DEC}/layer_{i}"
    cross = f"{p}/attention"
    (cross_ln_w, cross_ln_b), (q_w, q_b) = _norm(f, cross), _linear(f, f"{cross}/linear_0")
    (kv_w, kv_b), (cross_out_w, cross_out_b) = _linear(f, f"{cross}/linear_1"), _linear(f, f"{cross}/linear_2")
    return DecoderBlockWeights(**_block_parts(f, p), cross_ln_w=cross_ln_w, cross_ln_b=cross_ln_b, cross_q_w=q_w,
                               cross_q_b=q_b, cross_kv_w=kv_w, cross_kv_b=kv_b, cross_out_w=cross_out_w,
                               cross_out_b=cross_out_b)


def _num_layers(f: Ct2File, prefix: str, probe: str) -> int:
    n = 0
    while f"{prefix}/layer_{n}/{probe}/linear_0/weight" in f:
        n += 1
    return n


def _num_heads(f: Ct2File, prefix: str) -> int | None:
    name = f"{prefix}/num_heads"
    if name not in f:
        return None
    value = f.array(name)
    if value.size != 1 or value.dtype.kind not in "iu" or int(value.reshape(-1)[0]) <= 0:
        raise ModelError(f"{f.path}: {name!r} should be a positive integer scalar, got {value!r}")
    return int(value.reshape(-1)[0])


def _open(model_dir: str | os.PathLike[str]) -> Ct2File:
    path = Path(model_dir) / "model.bin"
    f = Ct2File(path)
    if f.spec_name not in ("", "WhisperSpec"):
        f.close()
        raise ModelError(f"{path}: holds a {f.spec_name!r} model, not a Whisper model (WhisperSpec)")
    return f


def _read_encoder(f: Ct2File) -> EncoderWeights:
    layers = _num_layers(f, _ENC, "self_attention")
    if layers == 0:
        raise ModelError(f"{f.path}: no encoder layers ({_ENC}/layer_0/...) found: not a Whisper model, or corrupt")
    return EncoderWeights(
        conv1_w=_weight(f, f"{_ENC}/conv1/weight", 3),
        conv1_b=_weight(f, f"{_ENC}/conv1/bias", 1),
        conv2_w=_weight(f, f"{_ENC}/conv2/weight", 3),
        conv2_b=_weight(f, f"{_ENC}/conv2/bias", 1),
        positional_embedding=_weight(f, f"{_ENC}/position_encodings/encodings", 2),
        blocks=tuple(_encoder_block(f, i) for i in range(layers)),
        ln_post_w=_weight(f, f"{_ENC}/layer_norm/gamma", 1),
        ln_post_b=_weight(f, f"{_ENC}/layer_norm/beta", 1),
    )


def _read_decoder(f: Ct2File) -> DecoderWeights | None:
    layers = _num_layers(f, _DEC, "self_attention")
    if layers == 0 and f"{_DEC}/embeddings/weight" not in f:
        return None  # an encoder-only file
    if layers == 0:
        raise ModelError(f"{f.path}: decoder embeddings but no decoder layers ({_DEC}/layer_0/...): file is corrupt")
    return DecoderWeights(
        token_embedding=_weight(f, f"{_DEC}/embeddings/weight", 2),
        positional_embedding=_weight(f, f"{_DEC}/position_encodings/encodings", 2),
        blocks=tuple(_decoder_block(f, i) for i in range(layers)),
        ln_w=_weight(f, f"{_DEC}/layer_norm/gamma", 1),
        ln_b=_weight(f, f"{_DEC}/layer_norm/beta", 1),
    )


def load_ct2_encoder(model_dir: str | os.PathLike[str]) -> tuple[EncoderWeights, int | None]:
    """Read only the Whisper audio encoder from a CTranslate2 model directory (its ``model.bin``).

    Returns the float32 weights and the number of attention heads (``encoder/num_heads``), or ``None``
    when the file does not record it (older conversions). Decoder variables are never read.
    Shapes are checked for rank here; full consistency is :meth:`EncoderWeights.validate`'s job.
    """
    with _open(model_dir) as f:
        return _read_encoder(f), _num_heads(f, _ENC)


def load_ct2_whisper(model_dir: str | os.PathLike[str]
                     ) -> tuple[EncoderWeights, int | None, DecoderWeights | None, int | None]:
    """Read the encoder and the decoder: ``(encoder, encoder heads, decoder, decoder heads)``.

    The decoder is ``None`` when the file holds no ``decoder/...`` variables at all (an encoder-only
    conversion); a partial decoder is a :class:`ModelError`.
    """
    with _open(model_dir) as f:
        return _read_encoder(f), _num_heads(f, _ENC), _read_decoder(f), _num_heads(f, _DEC)
