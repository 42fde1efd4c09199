"""Read Whisper from a Hugging Face directory (``config.json`` + ``model.safetensors``).

Tensors are read with the optional ``safetensors`` package (``pip install 'aiowhisper-npu[hf]'``), one at
a time through ``safe_open``. numpy has no bfloat16, so BF16 tensors
are read as raw bit patterns straight from the file (located through the documented safetensors header:
``uint64`` little-endian header length, JSON header with ``dtype``/``shape``/``data_offsets``) and widened
to float32 exactly. float16/float64 tensors are converted to float32 too.

Both checkpoint flavours are accepted: ``WhisperForConditionalGeneration`` (``model.encoder.*``,
``model.decoder.*``) and the bare ``WhisperModel`` (``encoder.*``, ``decoder.*``). The separate Q/K/V
projections are stacked (``qkv_w``; the cross-attention's K/V into ``cross_kv_w``); Whisper's key projections
have no bias, so those parts of the stacked biases are zero unless the file stores one. ``proj_out`` is
tied to the token embedding and not read.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ModelError
from .model import BlockWeights, DecoderBlockWeights, DecoderWeights, EncoderWeights

__all__ = ["load_hf_encoder", "load_hf_whisper", "read_hf_config"]

_INSTALL_HINT = "pip install 'aiowhisper-npu[hf]'"
_FLOAT_DTYPES = {"F16", "F32", "F64", "BF16"}
_MAX_HEADER = 100 * 1024 * 1024  # the safetensors format's own limit on the JSON header


def read_hf_config(model_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """Parse ``config.json`` of a Hugging Face model directory into a dict."""
    path = Path(model_dir) / "config.json"
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelError(f"{path} is missing: a Hugging Face Whisper directory needs config.json") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelError(f"cannot read {path}: {exc}") from exc
    if not isinstance(config, dict):
        raise ModelError(f"{path} should hold a JSON object, got {type(config).__name__}")
    return config


def _config_int(config: dict[str, Any], key: str, path: Path) -> int | None:
    value = config.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ModelError(f"{path}: {key!r} should be a positive integer, got {value!r}")
    return value


def _read_raw_header(path: Path) -> dict[str, Any]:
    """The JSON header of a safetensors file plus the offset where its data section starts."""
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) != 8:
            raise ModelError(f"{path}: file is truncated (no safetensors header)")
        (n,) = struct.unpack("<Q", head)
        if n > _MAX_HEADER:
            raise ModelError(f"{path}: implausible safetensors header length {n}")
        text = f.read(n)
    if len(text) != n:
        raise ModelError(f"{path}: file is truncated inside the safetensors header")
    try:
        header = json.loads(text)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelError(f"{path}: corrupt safetensors header: {exc}") from exc
    return {"tensors": header, "data_start": 8 + n}


class _SafetensorsReader:
    """Reads named tensors as float32, with a BF16 fallback that numpy's safetensors binding lacks."""

    def __init__(self, path: Path, handle: Any) -> None:
        self.path = path
        self.handle = handle
        self.keys = set(handle.keys())
        self._raw_header: dict[str, Any] | None = None

    def has(self, name: str) -> bool:
        return name in self.keys

    def get(self, name: str, rank: int) -> np.ndarray:
        if name not in self.keys:
            raise ModelError(f"{self.path}: tensor {name!r} is missing: not a Whisper checkpoint, or corrupt")
        dtype = self.handle.get_slice(name).get_dtype()
        if dtype not in _FLOAT_DTYPES:
            raise ModelError(f"{self.path}: tensor {name!r} has dtype {dtype}, expected a float type")
        arr = self._bf16(name) if dtype == "BF16" else np.asarray(self.handle.get_tensor(name)).astype(np.float32)
        if arr.ndim != rank:
            raise ModelError(f"{self.path}: tensor {name!r} has shape {arr.shape}, expected rank {rank}")
        return arr

    def _bf16(self, name: str) -> np.ndarray:
        if self._raw_header is None:
            self._raw_header = _read_raw_header(self.path)
        try:
            info = self._raw_header["tensors"][name]
            begin, end = (int(x) for x in info["data_offsets"])
            shape = tuple(int(x) for x in info["shape"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelError(f"{self.path}: corrupt safetensors entry for {name!r}: {exc}") from exc
        if begin < 0 or min(shape, default=0) < 0 or end - begin != 2 * int(np.prod(shape, dtype=np.int64)):
            raise ModelError(f"{self.path}: tensor {name!r} byte range does not match its shape {shape}")
        with open(self.path, "rb") as f:
            f.seek(self._raw_header["data_start"] + begin)
            data = f.read(end - begin)
        if len(data) != end - begin:
            raise ModelError(f"{self.path}: file is truncated inside tensor {name!r}")
        bits = np.frombuffer(data, dtype="<u2").astype(np.uint32) << 16
        return bits.view(np.float32).reshape(shape)


def _stacked(r: _SafetensorsReader, att: str, parts: str, where: str) -> tuple[np.ndarray, np.ndarray]:
    """The ``parts`` (e.g. ``"qkv"``) projections of ``att`` stacked on the output axis; a missing key bias is 0."""
    ws = [r.get(f"{att}.{x}_proj.weight", 2) for x in parts]
    found = [r.get(f"{att}.{x}_proj.bias", 1) if x != "k" or r.has(f"{att}.k_proj.bias") else None for x in parts]
    ref = next(b for b in found if b is not None)
    bs = [b if b is not None else np.zeros_like(ref) for b in found]
    if len({w.shape for w in ws}) != 1 or len({b.shape for b in bs}) != 1:
        raise ModelError(f"{r.path}: {where} has {'/'.join(parts)} projections of different shapes: corrupt checkpoint")
    return np.concatenate(ws, axis=0), np.concatenate(bs)


def _block_parts(r: _SafetensorsReader, p: str, what: str) -> dict[str, np.ndarray]:
    """The self-attention and MLP weights every block has (``BlockWeights``' fields), under ``p``."""
    att = f"{p}.self_attn"
    qkv_w, qkv_b = _stacked(r, att, "qkv", what)
    return dict(
        attn_ln_w=r.get(f"{p}.self_attn_layer_norm.weight", 1),
        attn_ln_b=r.get(f"{p}.self_attn_layer_norm.bias", 1),
        qkv_w=qkv_w,
        qkv_b=qkv_b,
        out_w=r.get(f"{att}.out_proj.weight", 2),
        out_b=r.get(f"{att}.out_proj.bias", 1),
        mlp_ln_w=r.get(f"{p}.final_layer_norm.weight", 1),
        mlp_ln_b=r.get(f"{p}.final_layer_norm.bias", 1),
        fc1_w=r.get(f"{p}.fc1.weight", 2),
        fc1_b=r.get(f"{p}.fc1.bias", 1),
        fc2_w=r.get(f"{p}.fc2.weight", 2),
        fc2_b=r.get(f"{p}.fc2.bias", 1),
    )


def _block(r: _SafetensorsReader, prefix: str, i: int) -> BlockWeights:
    return BlockWeights(**_block_parts(r, f"{prefix}layers.{i}", f"layer {i}"))


def _encoder_prefix(r: _SafetensorsReader) -> str:
    for prefix in ("model.encoder.", "encoder."):
        if r.has(f"{prefix}conv1.weight"):
            return prefix
    raise ModelError(f"{r.path}: no 'model.encoder.conv1.weight' (or 'encoder.conv1.weight'): not a Whisper checkpoint")


def _num_layers(r: _SafetensorsReader, prefix: str) -> int:
    n = 0
    while r.has(f"{prefix}layers.{n}.fc1.weight"):
        n += 1
    if n == 0:
        raise ModelError(f"{r.path}: no encoder layers ({prefix}layers.0.*) found")
    return n


def _read_encoder(r: _SafetensorsReader) -> EncoderWeights:
    pre = _encoder_prefix(r)
    return EncoderWeights(
        conv1_w=r.get(f"{pre}conv1.weight", 3),
        conv1_b=r.get(f"{pre}conv1.bias", 1),
        conv2_w=r.get(f"{pre}conv2.weight", 3),
        conv2_b=r.get(f"{pre}conv2.bias", 1),
        positional_embedding=r.get(f"{pre}embed_positions.weight", 2),
        blocks=tuple(_block(r, pre, i) for i in range(_num_layers(r, pre))),
        ln_post_w=r.get(f"{pre}layer_norm.weight", 1),
        ln_post_b=r.get(f"{pre}layer_norm.bias", 1),
    )


def _decoder_block(r: _SafetensorsReader, prefix: str, i: int) -> DecoderBlockWeights:
    p = f"{prefix}layers.{i}"
    kv_w, kv_b = _stacked(r, f"{p}.encoder_attn", "kv", f"decoder layer {i} cross-attention")
    return DecoderBlockWeights(
        **_block_parts(r, p, f"decoder layer {i}"),
        cross_ln_w=r.get(f"{p}.encoder_attn_layer_norm.weight", 1),
        cross_ln_b=r.get(f"{p}.encoder_attn_layer_norm.bias", 1),
        cross_q_w=r.get(f"{p}.encoder_attn.q_proj.weight", 2),
        cross_q_b=r.get(f"{p}.encoder_attn.q_proj.bias", 1),
        cross_kv_w=kv_w,
        cross_kv_b=kv_b,
        cross_out_w=r.get(f"{p}.encoder_attn.out_proj.weight", 2),
        cross_out_b=r.get(f"{p}.encoder_attn.out_proj.bias", 1),
    )


def _read_decoder(r: _SafetensorsReader) -> DecoderWeights | None:
    pre = next((p for p in ("model.decoder.", "decoder.") if r.has(f"{p}embed_tokens.weight")), None)
    if pre is None:
        return None  # an encoder-only checkpoint
    n = 0
    while r.has(f"{pre}layers.{n}.fc1.weight"):
        n += 1
    if n == 0:
        raise ModelError(f"{r.path}: decoder embeddings but no decoder layers ({pre}layers.0.*): corrupt checkpoint")
    return DecoderWeights(
        token_embedding=r.get(f"{pre}embed_tokens.weight", 2),
        positional_embedding=r.get(f"{pre}embed_positions.weight", 2),
        blocks=tuple(_decoder_block(r, pre, i) for i in range(n)),
        ln_w=r.get(f"{pre}layer_norm.weight", 1),
        ln_b=r.get(f"{pre}layer_norm.bias", 1),
    )


def _check_config(weights: EncoderWeights, config: dict[str, Any], path: Path) -> None:
    """Cross-check the sizes that config.json states against the weights."""
    d, n_mels, _ = weights.conv1_w.shape
    for key, actual in (
        ("d_model", d),
        ("num_mel_bins", n_mels),
        ("encoder_layers", len(weights.blocks)),
        ("max_source_positions", weights.positional_embedding.shape[0]),
    ):
        stated = _config_int(config, key, path)
        if stated is not None and stated != actual:
            raise ModelError(f"{path}: config says {key}={stated} but the weights have {actual}")


def load_hf_encoder(model_dir: str | os.PathLike[str]) -> tuple[EncoderWeights, int | None]:
    """Read the Whisper encoder from a Hugging Face directory; returns the weights and ``encoder_attention_heads``."""
    enc, heads, _, _ = _load(model_dir, decoder=False)
    return enc, heads


def load_hf_whisper(model_dir: str | os.PathLike[str]
                    ) -> tuple[EncoderWeights, int | None, DecoderWeights | None, int | None]:
    """Read the encoder and the decoder: ``(encoder, encoder heads, decoder or None, decoder heads)``."""
    return _load(model_dir, decoder=True)


def _check_decoder_config(dec: DecoderWeights, config: dict[str, Any], path: Path) -> None:
    n_vocab, _d_model = dec.token_embedding.shape
    for key, actual in (("vocab_size", n_vocab), ("decoder_layers", len(dec.blocks)),
                        ("max_target_positions", dec.positional_embedding.shape[0])):
        stated = _config_int(config, key, path)
        if stated is not None and stated != actual:
            raise ModelError(f"{path}: config says {key}={stated} but the weights have {actual}")


def _load(model_dir: str | os.PathLike[str], decoder: bool
          ) -> tuple[EncoderWeights, int | None, DecoderWeights | None, int | None]:
    model_dir = Path(model_dir)
    config_path = model_dir / "config.json"
    config = read_hf_config(model_dir)
    try:
        from safetensors import SafetensorError, safe_open
    except ImportError:
        raise ModelError(f"reading Hugging Face models needs the safetensors package: {_INSTALL_HINT}") from None
    path = model_dir / "model.safetensors"
    if not path.is_file():
        raise ModelError(f"{path} is missing: a Hugging Face Whisper directory needs model.safetensors")
    try:
        with safe_open(str(path), framework="numpy") as handle:
            reader = _SafetensorsReader(path, handle)
            weights = _read_encoder(reader)
            dec = _read_decoder(reader) if decoder else None
    except (SafetensorError, OSError) as exc:
        raise ModelError(f"cannot read {path}: {exc}") from exc
    _check_config(weights, config, config_path)
    if dec is not None:
        _check_decoder_config(dec, config, config_path)
    return (weights, _config_int(config, "encoder_attention_heads", config_path), dec,
            _config_int(config, "decoder_attention_heads", config_path))
