"""``load_model``: turn a model name or directory into a validated :class:`WhisperModel`.

Accepted inputs:

* a known name (``"tiny.en"``, ``"base"``; see :data:`aiowhisper_npu.models.registry.KNOWN_MODELS`), resolved
  through the installed, checksum-verified model packages (a known name wins over a same-named
  directory in the working directory: pass ``./tiny.en`` to mean the directory);
* a directory holding a CTranslate2 model (``model.bin``, usually with ``config.json``) or a Hugging Face
  Whisper checkpoint (``config.json`` + ``model.safetensors``);
* an already loaded :class:`WhisperModel`, returned as is.

Loaded models are cached in-process, keyed by the resolved weight file and its (size, mtime_ns, ctime_ns),
so a second ``load_model("tiny.en")`` costs a few ``stat`` calls and returns the *same* object. Its arrays
are shared between callers and therefore marked read-only. :func:`clear_model_cache` drops the cache.
"""

from __future__ import annotations

import json
import os
import threading
from dataclasses import fields
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ModelError
from .ct2_whisper import load_ct2_whisper
from .hf_format import load_hf_whisper
from .model import DecoderWeights, EncoderWeights, ModelDimensions, WhisperModel, default_alignment_heads
from .registry import KNOWN_MODELS, resolve_model_dir

__all__ = ["load_model", "clear_model_cache", "detect_format"]

CT2 = "ctranslate2"
HF = "huggingface"

_WEIGHT_FILE = {CT2: "model.bin", HF: "model.safetensors"}
_CacheKey = tuple[object, ...]

_cache: dict[_CacheKey, WhisperModel] = {}
_cache_lock = threading.Lock()


def detect_format(model_dir: Path) -> str:
    """``"ctranslate2"`` if the directory holds ``model.bin``, ``"huggingface"`` if ``model.safetensors``."""
    if (model_dir / "model.bin").is_file():
        return CT2
    if (model_dir / "model.safetensors").is_file():
        if not (model_dir / "config.json").is_file():
            raise ModelError(f"{model_dir} has model.safetensors but no config.json, which Hugging Face models need")
        return HF
    if (model_dir / "model.safetensors.index.json").is_file():
        raise ModelError(f"{model_dir}: sharded safetensors checkpoints are not supported; save one model.safetensors")
    raise ModelError(
        f"{model_dir} holds no model: expected a CTranslate2 model (model.bin + config.json) "
        "or a Hugging Face Whisper model (config.json + model.safetensors)"
    )


def _locate(name_or_path: str | os.PathLike[str]) -> tuple[str, Path]:
    """The display name and the directory to load from."""
    if isinstance(name_or_path, str) and name_or_path in KNOWN_MODELS:
        return name_or_path, resolve_model_dir(name_or_path)
    path = Path(name_or_path).expanduser()
    if not path.exists():
        known = ", ".join(repr(n) for n in KNOWN_MODELS)
        raise ModelError(f"{str(name_or_path)!r} is neither a known model name ({known}) nor an existing path")
    if not path.is_dir():
        raise ModelError(f"{path} is not a directory: pass the directory that holds model.bin or model.safetensors")
    resolved = path.resolve()
    return resolved.name, resolved


def _cache_key(name: str, model_dir: Path, fmt: str) -> _CacheKey:
    """Identity of what a load would read: the name, format and (path, size, mtime_ns, ctime_ns) of its files."""
    key: list[object] = [name, fmt]
    for fname in (_WEIGHT_FILE[fmt], "config.json"):
        path = model_dir / fname
        try:
            st = path.stat()
        except FileNotFoundError:
            key.append((str(path), None))
            continue
        except OSError as exc:
            raise ModelError(f"cannot read {path}: {exc.strerror or exc}") from exc
        key.append((str(path), st.st_size, st.st_mtime_ns, st.st_ctime_ns))
    return tuple(key)


def _freeze(weights: EncoderWeights | DecoderWeights) -> None:
    """Mark every array read-only: cached models are shared by all callers."""
    for holder in (weights, *weights.blocks):
        for f in fields(holder):
            value = getattr(holder, f.name)
            if isinstance(value, np.ndarray):
                value.flags.writeable = False


def _json_object(path: Path) -> dict[str, Any]:
    """A JSON object file, or {} when it does not exist."""
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelError(f"cannot read {path}: {exc}") from exc
    if not isinstance(value, dict):
        raise ModelError(f"{path} should hold a JSON object, got {type(value).__name__}")
    return value


def _alignment_heads(model_dir: Path, fmt: str, dims: ModelDimensions) -> tuple[tuple[int, int], ...]:
    """The (layer, head) pairs named by ``config.json`` (CTranslate2) or ``generation_config.json`` (HF)."""
    path = model_dir / ("config.json" if fmt == CT2 else "generation_config.json")
    heads = _json_object(path).get("alignment_heads")
    if heads is None:
        return default_alignment_heads(dims)
    try:
        pairs = tuple((int(layer), int(head)) for layer, head in heads)
    except (TypeError, ValueError):
        raise ModelError(f"{path}: 'alignment_heads' should be a list of [layer, head] pairs, got {heads!r}") from None
    bad = [p for p in pairs if not (0 <= p[0] < dims.n_text_layer and 0 <= p[1] < dims.n_text_head)]
    if bad:
        raise ModelError(f"{path}: alignment heads {bad} are outside the decoder's {dims.n_text_layer} layers x "
                         f"{dims.n_text_head} heads")
    return pairs


def _load_uncached(name: str, model_dir: Path, fmt: str) -> WhisperModel:
    weights, n_head, decoder, n_text_head = (load_ct2_whisper if fmt == CT2 else load_hf_whisper)(model_dir)
    dims = weights.dims(n_head)
    if min(dims.n_mels, dims.n_audio_ctx, dims.n_audio_state) == 0:
        raise ModelError(f"{model_dir}: the encoder has an empty dimension ({dims}): the model is corrupt")
    weights.validate(dims)
    _freeze(weights)
    heads: tuple[tuple[int, int], ...] = ()
    if decoder is not None:
        dims = decoder.dims(dims, n_text_head)
        if min(dims.n_vocab, dims.n_text_ctx, dims.n_text_state) == 0:
            raise ModelError(f"{model_dir}: the decoder has an empty dimension ({dims}): the model is corrupt")
        decoder.validate(dims)
        _freeze(decoder)
        heads = _alignment_heads(model_dir, fmt, dims)
    return WhisperModel(name=name, path=model_dir, dims=dims, weights=weights, format=fmt, decoder=decoder,
                        alignment_heads=heads)


def load_model(name_or_path: str | os.PathLike[str] | WhisperModel) -> WhisperModel:
    """Load (or fetch from the in-process cache) the Whisper model named or located by ``name_or_path``.

    Raises :class:`ModelError` for unknown names, missing paths, directories without a model, missing
    packages, checksum mismatches, truncated/corrupt files and non-finite weights.
    """
    if isinstance(name_or_path, WhisperModel):
        return name_or_path
    if not isinstance(name_or_path, (str, os.PathLike)):
        raise ModelError("load_model expects a model name, a path or a WhisperModel, "
                         f"got {type(name_or_path).__name__}")
    name, model_dir = _locate(name_or_path)
    fmt = detect_format(model_dir)
    key = _cache_key(name, model_dir, fmt)
    with _cache_lock:
        cached = _cache.get(key)
    if cached is not None:
        return cached
    model = _load_uncached(name, model_dir, fmt)
    if _cache_key(name, model_dir, fmt) == key:  # files unchanged while we read them
        with _cache_lock:
            _cache[key] = model
    return model


def clear_model_cache() -> None:
    """Forget every model loaded so far (the next load re-reads the files)."""
    with _cache_lock:
        _cache.clear()
