"""Whisper as data: its dimensions and its float32 weights, the audio encoder's and the text decoder's.

Nothing here knows how the weights were stored (see :mod:`aiowhisper_npu.models.ct2_whisper`,
:mod:`aiowhisper_npu.models.hf_format`) or how they are run (see :mod:`aiowhisper_npu.encoder.kernels`,
:mod:`aiowhisper_npu.decoder.kernels`).
Linear and convolution weights keep PyTorch's ``(out, in[, k])`` layout; devices re-lay them out once when
they make them resident.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from ..errors import ModelError

__all__ = ["ModelDimensions", "BlockWeights", "EncoderWeights", "DecoderBlockWeights", "DecoderWeights",
           "WhisperModel", "default_alignment_heads"]


@dataclass(frozen=True)
class ModelDimensions:
    """Every size of the model, read from the weights themselves (the text sizes are 0 without a decoder)."""

    n_mels: int
    n_audio_ctx: int
    n_audio_state: int
    n_audio_head: int
    n_audio_layer: int
    n_vocab: int = 0
    n_text_ctx: int = 0
    n_text_state: int = 0
    n_text_head: int = 0
    n_text_layer: int = 0

    @property
    def text_head_dim(self) -> int:
        return self.n_text_state // self.n_text_head

    @property
    def is_multilingual(self) -> bool:
        """Whisper's rule: the multilingual vocabulary has 51865 tokens or more (English-only: 51864)."""
        return self.n_vocab >= 51865

    @property
    def head_dim(self) -> int:
        return self.n_audio_state // self.n_audio_head

    @property
    def n_mlp(self) -> int:
        return 4 * self.n_audio_state


@dataclass(frozen=True, eq=False)
class BlockWeights:
    """One pre-LN residual attention block. ``qkv_w`` is Q, K and V stacked on the output axis."""

    attn_ln_w: np.ndarray  # (d,)
    attn_ln_b: np.ndarray  # (d,)
    qkv_w: np.ndarray  # (3d, d)
    qkv_b: np.ndarray  # (3d,) -- the key part is zero in Whisper
    out_w: np.ndarray  # (d, d)
    out_b: np.ndarray  # (d,)
    mlp_ln_w: np.ndarray  # (d,)
    mlp_ln_b: np.ndarray  # (d,)
    fc1_w: np.ndarray  # (4d, d)
    fc1_b: np.ndarray  # (4d,)
    fc2_w: np.ndarray  # (d, 4d)
    fc2_b: np.ndarray  # (d,)


@dataclass(frozen=True, eq=False)
class EncoderWeights:
    conv1_w: np.ndarray  # (d, n_mels, 3)
    conv1_b: np.ndarray  # (d,)
    conv2_w: np.ndarray  # (d, d, 3)
    conv2_b: np.ndarray  # (d,)
    positional_embedding: np.ndarray  # (n_ctx, d)
    blocks: tuple[BlockWeights, ...]
    ln_post_w: np.ndarray  # (d,)
    ln_post_b: np.ndarray  # (d,)

    def dims(self, n_head: int | None = None) -> ModelDimensions:
        """Derive the dimensions from the arrays; ``n_head`` comes from metadata (default: head size 64)."""
        d, n_mels, k = self.conv1_w.shape
        if k != 3 or self.conv2_w.shape != (d, d, 3):
            raise ModelError(f"unexpected conv shapes {self.conv1_w.shape}, {self.conv2_w.shape}")
        n_ctx = self.positional_embedding.shape[0]
        heads = n_head if n_head is not None else max(1, d // 64)
        if d % heads:
            raise ModelError(f"d_model {d} is not divisible by {heads} heads")
        return ModelDimensions(n_mels, n_ctx, d, heads, len(self.blocks))

    def validate(self, dims: ModelDimensions) -> None:
        """Check every array's shape and dtype against ``dims`` and that all values are finite."""
        d, f = dims.n_audio_state, dims.n_mlp
        expected: dict[str, tuple[np.ndarray, tuple[int, ...]]] = {
            "conv1.weight": (self.conv1_w, (d, dims.n_mels, 3)),
            "conv1.bias": (self.conv1_b, (d,)),
            "conv2.weight": (self.conv2_w, (d, d, 3)),
            "conv2.bias": (self.conv2_b, (d,)),
            "positional_embedding": (self.positional_embedding, (dims.n_audio_ctx, d)),
            "ln_post.weight": (self.ln_post_w, (d,)),
            "ln_post.bias": (self.ln_post_b, (d,)),
        }
        for i, b in enumerate(self.blocks):
            for name, arr, shape in (
                ("attn_ln.weight", b.attn_ln_w, (d,)),
                ("attn_ln.bias", b.attn_ln_b, (d,)),
                ("attn.qkv.weight", b.qkv_w, (3 * d, d)),
                ("attn.qkv.bias", b.qkv_b, (3 * d,)),
                ("attn.out.weight", b.out_w, (d, d)),
                ("attn.out.bias", b.out_b, (d,)),
                ("mlp_ln.weight", b.mlp_ln_w, (d,)),
                ("mlp_ln.bias", b.mlp_ln_b, (d,)),
                ("mlp.0.weight", b.fc1_w, (f, d)),
                ("mlp.0.bias", b.fc1_b, (f,)),
                ("mlp.2.weight", b.fc2_w, (d, f)),
                ("mlp.2.bias", b.fc2_b, (d,)),
            ):
                expected[f"blocks.{i}.{name}"] = (arr, shape)
        _check_arrays(expected)


@dataclass(frozen=True, eq=False)
class DecoderBlockWeights(BlockWeights):
    """One decoder block: causal self-attention, cross-attention over the encoder output, then the MLP.

    The self-attention and MLP weights are :class:`BlockWeights`' (``qkv_w`` stacks Q, K and V); ``cross_kv_w``
    stacks K and V of the cross-attention (Whisper's key projections have no bias: those parts of the biases
    are zero)."""

    cross_ln_w: np.ndarray  # (d,)
    cross_ln_b: np.ndarray  # (d,)
    cross_q_w: np.ndarray  # (d, d)
    cross_q_b: np.ndarray  # (d,)
    cross_kv_w: np.ndarray  # (2d, d_audio)
    cross_kv_b: np.ndarray  # (2d,)
    cross_out_w: np.ndarray  # (d, d)
    cross_out_b: np.ndarray  # (d,)


@dataclass(frozen=True, eq=False)
class DecoderWeights:
    """The text decoder. The output projection is the token embedding, transposed (tied, as in Whisper)."""

    token_embedding: np.ndarray  # (n_vocab, d)
    positional_embedding: np.ndarray  # (n_text_ctx, d)
    blocks: tuple[DecoderBlockWeights, ...]
    ln_w: np.ndarray  # (d,)
    ln_b: np.ndarray  # (d,)

    def dims(self, encoder: ModelDimensions, n_head: int | None = None) -> ModelDimensions:
        """``encoder`` completed with the text sizes; ``n_head`` from metadata (default: head size 64)."""
        n_vocab, d = self.token_embedding.shape
        heads = n_head if n_head is not None else max(1, d // 64)
        if d % heads:
            raise ModelError(f"decoder d_model {d} is not divisible by {heads} heads")
        return replace(encoder, n_vocab=n_vocab, n_text_ctx=self.positional_embedding.shape[0], n_text_state=d,
                       n_text_head=heads, n_text_layer=len(self.blocks))

    def validate(self, dims: ModelDimensions) -> None:
        """Check every array's shape and dtype against ``dims`` and that all values are finite."""
        d, f, da = dims.n_text_state, 4 * dims.n_text_state, dims.n_audio_state
        expected: dict[str, tuple[np.ndarray, tuple[int, ...]]] = {
            "decoder.token_embedding": (self.token_embedding, (dims.n_vocab, d)),
            "decoder.positional_embedding": (self.positional_embedding, (dims.n_text_ctx, d)),
            "decoder.ln.weight": (self.ln_w, (d,)),
            "decoder.ln.bias": (self.ln_b, (d,)),
        }
        shapes = {"attn_ln_w": (d,), "attn_ln_b": (d,), "qkv_w": (3 * d, d), "qkv_b": (3 * d,), "out_w": (d, d),
                  "out_b": (d,), "cross_ln_w": (d,), "cross_ln_b": (d,), "cross_q_w": (d, d), "cross_q_b": (d,),
                  "cross_kv_w": (2 * d, da), "cross_kv_b": (2 * d,), "cross_out_w": (d, d), "cross_out_b": (d,),
                  "mlp_ln_w": (d,), "mlp_ln_b": (d,), "fc1_w": (f, d), "fc1_b": (f,), "fc2_w": (d, f), "fc2_b": (d,)}
        for i, b in enumerate(self.blocks):
            for name, shape in shapes.items():
                expected[f"decoder.blocks.{i}.{name}"] = (getattr(b, name), shape)
        _check_arrays(expected)


def _check_arrays(expected: dict[str, tuple[np.ndarray, tuple[int, ...]]]) -> None:
    for name, (arr, shape) in expected.items():
        if arr.shape != shape:
            raise ModelError(f"weight {name} has shape {arr.shape}, expected {shape}")
        if arr.dtype != np.float32:
            raise ModelError(f"weight {name} has dtype {arr.dtype}, expected float32")
        if not np.isfinite(arr).all():
            raise ModelError(f"weight {name} holds NaN or inf values: the model file is corrupt")


def default_alignment_heads(dims: ModelDimensions) -> tuple[tuple[int, int], ...]:
    """openai-whisper's default when a model names none: every head of the second half of the decoder layers."""
    return tuple((layer, head) for layer in range(dims.n_text_layer // 2, dims.n_text_layer)
                 for head in range(dims.n_text_head))


@dataclass(frozen=True, eq=False)
class WhisperModel:
    """A loaded Whisper model: what :func:`aiowhisper_npu.load_model` returns.

    ``decoder`` is ``None`` only for encoder-only weights (a test fixture or a truncated conversion);
    :meth:`Runtime.transcribe <aiowhisper_npu.Runtime.transcribe>` needs it, and the tokenizer files of
    ``path`` (``tokenizer.json``). ``alignment_heads`` are the (layer, head) pairs of the decoder's
    cross-attention whose weights follow word timing (from ``config.json``/``generation_config.json``, else
    :func:`default_alignment_heads`).
    """

    name: str
    path: Path
    dims: ModelDimensions
    weights: EncoderWeights
    format: str  # "ctranslate2" or "huggingface"
    decoder: DecoderWeights | None = None
    alignment_heads: tuple[tuple[int, int], ...] = ()

    def __repr__(self) -> str:
        d = self.dims
        text = (f", text_layers={d.n_text_layer}, vocab={d.n_vocab}" if self.decoder is not None else
                ", decoder=None")
        return (
            f"WhisperModel(name={self.name!r}, d_model={d.n_audio_state}, layers={d.n_audio_layer}, "
            f"heads={d.n_audio_head}, n_mels={d.n_mels}{text}, format={self.format!r})"
        )
