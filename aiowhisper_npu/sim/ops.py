"""What the simulated NPU's kernels compute, and what they cost.

A kernel implementation has ``cost(call) -> (macs, dma_bytes)`` and ``run(call)``. ``run`` reads its
arguments through :meth:`KernelCall.read` (device memory converted with the argument's precision: bf16
weights widened exactly, float32 data rounded to bf16 when the argument is read at bf16), the weights of a
packed argument through :meth:`KernelCall.unpack` (at the offsets of :mod:`aiowhisper_npu.sim.layout`, from
the shapes the kernel knows), and writes through :meth:`KernelCall.write` (device memory itself). The
encoder kernels call the project's own numpy kernels (:mod:`aiowhisper_npu.encoder.kernels`) on that data, so
the only numerical difference from the CPU backend is the declared precision. A kernel of precision
``bf16`` runs them with ``precision="bf16"`` (docs/precision.md): every product on bf16 operands (the
weights are bf16 in device memory; activations are rounded where they enter a product), fp32 accumulation,
exactly what ``Runtime(precision="bf16")`` computes on the CPU, up to summation order.

Built-ins (the ``impl`` of an xclbin kernel): ``encoder.stem``, ``encoder.qkv``, ``encoder.attn_mlp``,
``copy`` (first read data argument -> first write argument) and ``none`` (timing only). Anything else is
``"package.module:attribute"``, an object with ``cost`` and ``run`` or a plain ``run`` function.
"""

from __future__ import annotations

import importlib
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Protocol

import numpy as np

from ..bf16 import from_bf16_bits, round_bf16
from ..encoder import kernels
from ..models.model import ModelDimensions
from .layout import pack_offsets
from .xclbin import DTYPES, ArgDesc, KernelDesc

__all__ = ["KernelCall", "KernelImpl", "BUILTINS", "resolve_impl"]


class KernelImpl(Protocol):
    def cost(self, call: KernelCall) -> tuple[float, int]: ...

    def run(self, call: KernelCall) -> None: ...


@dataclass
class KernelCall:
    """One run's view of its arguments. ``memory`` holds each argument's device memory (uint8)."""

    kernel: KernelDesc
    memory: Mapping[str, np.ndarray]
    scratch: dict[Any, Any] = field(default_factory=dict)  # per column: workspaces, reused across runs
    # (arg name, desc, its bytes, their offset in the argument) -> converted, cached while the memory is unchanged
    read_cache: Callable[[str, ArgDesc, np.ndarray, int], np.ndarray] | None = None

    @property
    def params(self) -> dict[str, int]:
        """The first argument with ``fields``, decoded as int32 words."""
        for a in self.kernel.args:
            if a.fields:
                words = self.memory[a.name][: 4 * len(a.fields)].view(np.int32)
                return {f: int(w) for f, w in zip(a.fields, words)}
        return {}

    def arg(self, name: str) -> ArgDesc:
        return next(a for a in self.kernel.args if a.name == name)

    def nbytes(self, name: str) -> int:
        return int(self.memory[name].nbytes)

    def read(self, name: str) -> np.ndarray:
        """A read-only float view/copy of argument ``name`` at its declared precision (1-D)."""
        return self._convert(name, self.arg(name), self.memory[name], 0)

    def _convert(self, name: str, a: ArgDesc, raw: np.ndarray, offset: int) -> np.ndarray:
        copies = a.dtype == "bfloat16" or (a.dtype == "float32" and a.precision == "bf16")
        if self.read_cache is not None and copies:
            return self.read_cache(name, a, raw, offset)
        return convert(a, raw)

    def part_sizes(self, name: str, shapes: Mapping[str, tuple[int, ...]]) -> dict[str, tuple[int, int]]:
        """(byte offset, byte size) of every part of packed argument ``name``, given every part's shape."""
        arg = self.arg(name)
        missing = [p.name for p in arg.parts if p.name not in shapes]
        if missing:
            raise KeyError(f"packed argument {name!r}: no shape for parts {missing}")
        parts = arg.parts
        sizes = [math.prod(shapes[p.name]) * (2 if p.dtype == "bfloat16" else 4) for p in parts]
        offsets, _ = pack_offsets(sizes, arg.align)
        return {p.name: (o, n) for p, o, n in zip(parts, offsets, sizes)}

    def unpack(self, name: str, shapes: Mapping[str, tuple[int, ...]]) -> dict[str, np.ndarray]:
        """Every part of packed argument ``name``, converted with its precision and reshaped to ``shapes``."""
        raw = self.memory[name]
        layout = self.part_sizes(name, shapes)
        out = {}
        for p in self.arg(name).parts:
            off, size = layout[p.name]
            if off + size > raw.nbytes:
                raise ValueError(f"packed argument {name!r}: part {p.name!r} ends past the BO")
            out[p.name] = self._convert(name, p, raw[off : off + size], off).reshape(shapes[p.name])
        return out

    def write(self, name: str, dtype: str = "float32") -> np.ndarray:
        """Argument ``name``'s device memory as a writable 1-D array."""
        raw = self.memory[name]
        return raw[: raw.nbytes - raw.nbytes % np.dtype(dtype).itemsize].view(dtype)


def convert(a: ArgDesc, raw: np.ndarray) -> np.ndarray:
    """Device bytes -> what the kernel computes with, for a read argument."""
    if a.dtype == "bfloat16":
        return from_bf16_bits(raw[: raw.nbytes & ~1].view(np.uint16))
    data = raw[: raw.nbytes - raw.nbytes % np.dtype(DTYPES[a.dtype]).itemsize].view(DTYPES[a.dtype])
    if a.dtype == "float32" and a.precision == "bf16":
        return round_bf16(data)
    return data


# -- the encoder's ops ------------------------------------------------------------------------------------

def _dims(call: KernelCall, positions: int) -> ModelDimensions:
    p = call.params
    return ModelDimensions(p.get("n_mels", 1), positions, p["n_audio_state"], p["n_audio_head"], 1)


def _workspace(call: KernelCall, dims: ModelDimensions, n: int) -> kernels.Workspace:
    key = ("ws", dims, n, call.kernel.precision)
    ws = call.scratch.get(key)
    if ws is None:  # a bf16 kernel computes with the bf16 numerics of docs/precision.md, product by product
        ws = call.scratch[key] = kernels.Workspace(dims, n, call.kernel.precision)
    return ws


def _weights(call: KernelCall, arg: str, layer: int | None, shapes: Mapping[str, tuple[int, ...]]
             ) -> dict[str, np.ndarray]:
    """The parts of packed argument ``arg``, keyed by resident weight name (``{layer}.`` + part for a layer)."""
    prefix = "" if layer is None else f"{layer}."
    out = {prefix + k: v for k, v in call.unpack(arg, shapes).items()}
    if call.kernel.precision == "bf16":
        out.update(_packed_bf16(call, out))
    return out


def _packed_bf16(call: KernelCall, weights: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The CPU's packed bf16 copies of the linear layers' weights (the same kernels, so the same bits as
    ``Runtime(precision="bf16")``), packed once per converted weight (the read cache keeps it one object)."""
    out = {}
    for name, w in weights.items():
        key = ("packed_bf16", name)
        hit = call.scratch.get(key)
        if hit is None or hit[0] is not w:
            packed = kernels.pack_weights({name: w}, "bf16")  # empty for other parts, or without the C GEMM
            hit = call.scratch[key] = (w, packed.get(name + kernels.PACKED_BF16))
        if hit[1] is not None:
            out[name + kernels.PACKED_BF16] = hit[1]
    return out


def _packed_bytes(call: KernelCall, arg: str, shapes: Mapping[str, tuple[int, ...]], parts: tuple[str, ...]
                  ) -> int:
    sizes = call.part_sizes(arg, shapes)
    return sum(sizes[p][1] for p in parts)


class _Stem:
    """conv1 + GELU, conv2 (stride 2) + GELU, + positions.

    Args: params, mel, w (packed: conv1_w, conv1_b, conv2_w, conv2_b, pos), out.
    """

    _W = ("conv1_w", "conv1_b", "conv2_w", "conv2_b")  # DMA'd whole; pos only for the tile's rows

    @staticmethod
    def _shapes(p: Mapping[str, int]) -> dict[str, tuple[int, ...]]:
        m, d = p["n_mels"], p["n_audio_state"]
        return {"conv1_w": (3 * m, d), "conv1_b": (d,), "conv2_w": (3 * d, d), "conv2_b": (d,),
                "pos": (p["n_audio_ctx"], d)}

    def cost(self, c: KernelCall) -> tuple[float, int]:
        p = c.params
        n, m, d = p["n"], p["n_mels"], p["n_audio_state"]
        macs = (2 * n + 1) * 3 * m * d + n * 3 * d * d
        io = ((2 * n + 3) * m + 2 * n * d) * 4
        return float(macs), io + _packed_bytes(c, "w", self._shapes(p), self._W)

    def run(self, c: KernelCall) -> None:
        p = c.params
        n, m, d, r0 = p["n"], p["n_mels"], p["n_audio_state"], p["r0"]
        res = _weights(c, "w", None, self._shapes(p))
        slab = c.read("mel")[: (2 * n + 3) * m].reshape(2 * n + 3, m)
        out = c.write("out")[: n * d].reshape(n, d)
        kernels.stem(res, _workspace(c, _dims(c, p["n_audio_ctx"]), n), slab, r0, out)


class _Qkv:
    """Layer norm + fused Q/K/V projection into rows r0:r0+n of the qkv tensor.

    Args: params, x, w (packed: qkv_w, qkv_b), qkv.
    """

    def cost(self, c: KernelCall) -> tuple[float, int]:
        p = c.params
        n, d = p["n"], p["n_audio_state"]
        w = kernels.qkv_columns(d, p["n_audio_head"])
        shapes = {"qkv_w": (d, w), "qkv_b": (w,)}
        return float(n * d * 3 * d), (n * d + 3 * n * d) * 4 + _packed_bytes(c, "w", shapes, ("qkv_w", "qkv_b"))

    def run(self, c: KernelCall) -> None:
        p = c.params
        n, d, h, layer, r0 = p["n"], p["n_audio_state"], p["n_audio_head"], p["layer"], p["r0"]
        w = kernels.qkv_columns(d, h)
        t = c.nbytes("qkv") // (4 * w)
        res = _weights(c, "w", layer, {"qkv_w": (d, w), "qkv_b": (w,)})
        x = c.read("x")[: n * d].reshape(n, d)
        qkv = c.write("qkv")[: t * w].reshape(t, w)
        kernels.qkv(res, _workspace(c, _dims(c, t), n), layer, x, r0, qkv)


class _AttnMlp:
    """Attention of rows r0:r0+n against all keys, output projection, MLP, residuals (+ ln_post if final).

    Args: params, x, qkv, w (packed: out_w, out_b, fc1_w, fc1_b, fc2_w, fc2_b, ln_post_w, ln_post_b), out.
    """

    _W = ("out_w", "out_b", "fc1_w", "fc1_b", "fc2_w", "fc2_b", "ln_post_w", "ln_post_b")

    @staticmethod
    def _shapes(d: int) -> dict[str, tuple[int, ...]]:
        m = 4 * d
        return {"out_w": (d, d), "out_b": (d,), "fc1_w": (d, m), "fc1_b": (m,), "fc2_w": (m, d), "fc2_b": (d,),
                "ln_post_w": (d,), "ln_post_b": (d,)}

    def cost(self, c: KernelCall) -> tuple[float, int]:
        p = c.params
        n, d = p["n"], p["n_audio_state"]
        t = c.nbytes("qkv") // (4 * kernels.qkv_columns(d, p["n_audio_head"]))
        macs = 2 * n * t * d + n * d * d + 2 * n * d * 4 * d
        io = (n * d + 2 * t * d + 2 * n * d) * 4
        return float(macs), io + _packed_bytes(c, "w", self._shapes(d), self._W)

    def run(self, c: KernelCall) -> None:
        p = c.params
        n, d, h, layer, r0 = p["n"], p["n_audio_state"], p["n_audio_head"], p["layer"], p["r0"]
        w = kernels.qkv_columns(d, h)
        t = c.nbytes("qkv") // (4 * w)
        res = _weights(c, "w", layer, self._shapes(d))
        res["ln_post_w"], res["ln_post_b"] = res.pop(f"{layer}.ln_post_w"), res.pop(f"{layer}.ln_post_b")
        x = c.read("x")[: n * d].reshape(n, d)
        qkv = c.read("qkv")[: t * w].reshape(t, w)
        out = c.write("out")[: n * d].reshape(n, d)
        kernels.attn_mlp(res, _workspace(c, _dims(c, t), n), layer, x, r0, qkv, out, bool(p["final"]))


class _Copy:
    def _pair(self, c: KernelCall) -> tuple[str | None, str | None]:
        src = next((a.name for a in c.kernel.args if a.reads and not a.fields), None)
        dst = next((a.name for a in c.kernel.args if a.writes), None)
        return src, dst

    def cost(self, c: KernelCall) -> tuple[float, int]:
        src, dst = self._pair(c)
        return 0.0, (c.nbytes(src) if src else 0) + (c.nbytes(dst) if dst else 0)

    def run(self, c: KernelCall) -> None:
        src, dst = self._pair(c)
        if src is None or dst is None:
            return
        s, d = c.memory[src], c.memory[dst]
        k = min(s.nbytes, d.nbytes)
        d[:k] = s[:k]


class _None:
    def cost(self, c: KernelCall) -> tuple[float, int]:
        return 0.0, sum(c.nbytes(a.name) for a in c.kernel.args)

    def run(self, c: KernelCall) -> None:
        return None


class _FunctionImpl:
    def __init__(self, fn: Callable[[KernelCall], None]):
        self.fn = fn

    def cost(self, c: KernelCall) -> tuple[float, int]:
        return 0.0, sum(c.nbytes(a.name) for a in c.kernel.args)

    def run(self, c: KernelCall) -> None:
        self.fn(c)


BUILTINS: dict[str, KernelImpl] = {"encoder.stem": _Stem(), "encoder.qkv": _Qkv(),
                                   "encoder.attn_mlp": _AttnMlp(), "copy": _Copy(), "none": _None()}


def resolve_impl(spec: str) -> KernelImpl:
    """A built-in name or ``"package.module:attribute"``; raises RuntimeError when it cannot be found."""
    if spec in BUILTINS:
        return BUILTINS[spec]
    mod, _, attr = spec.partition(":")
    try:
        obj = getattr(importlib.import_module(mod), attr) if attr else None
    except (ImportError, AttributeError) as exc:
        raise RuntimeError(f"Invalid xclbin: kernel implementation {spec!r} not found ({exc})") from None
    if obj is None:
        raise RuntimeError(f"Invalid xclbin: kernel implementation {spec!r} is not a built-in or module:attr")
    if hasattr(obj, "run") and hasattr(obj, "cost"):
        return obj
    if callable(obj):
        return _FunctionImpl(obj)
    raise RuntimeError(f"Invalid xclbin: kernel implementation {spec!r} has no run()")
