"""The Whisper encoder as a tile graph, and the per-window job that runs it.

For one 30 s window with ``T`` positions and row tiles of ``tile_rows``:

- ``stem`` tiles (one per row tile) turn mel frames into block-0 inputs;
- per block ``L``: ``qkv`` tiles (row-wise dependency on the previous block's tile for the same rows), then
  ``attn_mlp`` tiles, each depending on **every** ``qkv`` tile of block ``L`` (attention reads all keys).

That barrier is expressed as dependencies only: ``qkv`` tiles of block ``L+1`` become ready row by row while
block ``L`` is still finishing, and tiles of other windows or requests are never held back by it. Q/K/V
live on the device in a job tensor; two of them alternate between blocks, which is safe because ``qkv`` of
block ``L+2`` transitively depends on every ``attn_mlp`` tile of block ``L``.

No asyncio here: :class:`EncoderProgram` is what a device runs, :class:`WindowJob` is what a pipeline
schedules.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Any, Mapping, Sequence

import numpy as np

from ..models.model import ModelDimensions, WhisperModel
from ..tiles import ArraySpec, Tile
from . import kernels

__all__ = ["DEFAULT_TILE_ROWS", "EncoderPlan", "EncoderProgram", "WindowJob", "encode_window_sequential"]

DEFAULT_TILE_ROWS = 64


@dataclass(frozen=True)
class EncoderPlan:
    """The static tile graph of one encoder window. Built once per (dims, tile_rows, n_ctx)."""

    dims: ModelDimensions
    tile_rows: int = DEFAULT_TILE_ROWS
    n_ctx: int | None = None  # positions encoded; None = all (1500). Fewer = bucketed context.

    def __post_init__(self) -> None:
        if not 1 <= self.tile_rows:
            raise ValueError(f"tile_rows must be >= 1, got {self.tile_rows}")
        if self.n_ctx is not None and not 1 <= self.n_ctx <= self.dims.n_audio_ctx:
            raise ValueError(f"n_ctx must be in 1..{self.dims.n_audio_ctx}, got {self.n_ctx}")

    @property
    def positions(self) -> int:
        return self.n_ctx or self.dims.n_audio_ctx

    @cached_property
    def row_tiles(self) -> tuple[tuple[int, int], ...]:
        t, n = self.positions, self.tile_rows
        return tuple((r0, min(n, t - r0)) for r0 in range(0, t, n))

    @cached_property
    def tiles(self) -> tuple[Tile, ...]:
        d, m = self.dims.n_audio_state, self.dims.n_mels
        layers = self.dims.n_audio_layer
        out: list[Tile] = []
        prev = []  # index of the tile that last produced x rows, per row tile
        for r0, n in self.row_tiles:
            prev.append(len(out))
            out.append(Tile(len(out), "stem", (), (ArraySpec((2 * n + 3, m)),), (ArraySpec((n, d)),),
                            (), {"r0": r0, "n": n}, f"stem r{r0}"))
        for layer in range(layers):
            kv = f"qkv{layer % 2}"
            qkv_ids = []
            for j, (r0, n) in enumerate(self.row_tiles):
                qkv_ids.append(len(out))
                out.append(Tile(len(out), "qkv", (prev[j],), (ArraySpec((n, d)),), (), (kv,),
                                {"layer": layer, "r0": r0, "n": n}, f"L{layer} qkv r{r0}"))
            final = layer == layers - 1
            for j, (r0, n) in enumerate(self.row_tiles):
                prev[j] = len(out)
                out.append(Tile(len(out), "attn_mlp", tuple(qkv_ids), (ArraySpec((n, d)),),
                                (ArraySpec((n, d)),), (kv,),
                                {"layer": layer, "r0": r0, "n": n, "final": final}, f"L{layer} attn r{r0}"))
        return tuple(out)

    @cached_property
    def tensor_specs(self) -> Mapping[str, ArraySpec]:
        d = self.dims
        shape = (self.positions, kernels.qkv_columns(d.n_audio_state, d.n_audio_head))
        return {f"qkv{i}": ArraySpec(shape) for i in range(min(2, d.n_audio_layer))}


class EncoderProgram:
    """The encoder's kernels and resident weights, as a device runs them (see ``tiles.KernelProgram``)."""

    ops = kernels.OPS  # the ops :meth:`run` implements (a device's manifest may name only these)

    def __init__(self, model: WhisperModel, tile_rows: int = DEFAULT_TILE_ROWS, precision: str = "fp32"):
        self.dims = model.dims
        self.tile_rows = tile_rows
        self.precision = precision  # the CPU kernels' numerics; an NPU's come from its xclbin
        resident = kernels.prepare_weights(model.weights, model.dims, precision)
        resident.update(kernels.pack_weights(resident, precision))  # the CPU's packed copies; others skip them
        self._resident = resident

    @property
    def resident(self) -> Mapping[str, np.ndarray]:
        return self._resident

    def make_workspace(self) -> kernels.Workspace:
        return kernels.Workspace(self.dims, self.tile_rows, self.precision)

    def run(self, op: str, resident: Mapping[str, np.ndarray], workspace: Any, params: Mapping[str, Any],
            inputs: Sequence[np.ndarray], outputs: Sequence[np.ndarray],
            tensors: Mapping[str, np.ndarray]) -> None:
        r0 = params["r0"]
        if op == "stem":
            kernels.stem(resident, workspace, inputs[0], r0, outputs[0])
        elif op == "qkv":
            layer = params["layer"]
            kernels.qkv(resident, workspace, layer, inputs[0], r0, tensors[f"qkv{layer % 2}"])
        elif op == "attn_mlp":
            layer = params["layer"]
            kernels.attn_mlp(resident, workspace, layer, inputs[0], r0, tensors[f"qkv{layer % 2}"],
                             outputs[0], params["final"])
        else:
            raise KeyError(f"unknown encoder op {op!r}")


class WindowJob:
    """One window's host memory: its log-mel, its residual stream, and where its hidden states go.

    Construction only checks shapes and keeps references: the transposed log-mel copy and the residual
    stream are allocated when the pipeline activates the job (:meth:`activate`) and dropped when it ends
    (:meth:`release`), so a long request holds them for at most ``max_active_jobs`` windows at a time.
    """

    def __init__(self, plan: EncoderPlan, mel: np.ndarray, out: np.ndarray):
        d = plan.dims
        if mel.shape != (d.n_mels, 2 * d.n_audio_ctx):
            raise ValueError(f"mel must be {(d.n_mels, 2 * d.n_audio_ctx)}, got {mel.shape}")
        if out.shape != (plan.positions, d.n_audio_state):
            raise ValueError(f"out must be {(plan.positions, d.n_audio_state)}, got {out.shape}")
        self.plan = plan
        self._mel = mel
        self._mel_t: np.ndarray | None = None  # (frames, n_mels): slabs become row slices
        self._x: np.ndarray | None = None  # the residual stream between blocks
        self._out = out

    def activate(self) -> None:
        """Allocate the job's working memory (the pipeline calls this when the job becomes active)."""
        self._mel_t = np.ascontiguousarray(self._mel.T)
        self._x = np.empty((self.plan.positions, self.plan.dims.n_audio_state), np.float32)

    def release(self) -> None:
        """Drop the working memory (the pipeline calls this when the job ends, however it ends)."""
        self._mel_t = self._x = None

    @property
    def tiles(self) -> Sequence[Tile]:
        return self.plan.tiles

    @property
    def tensor_specs(self) -> Mapping[str, ArraySpec]:
        return self.plan.tensor_specs

    def prepare(self, tile: Tile, host_in: Sequence[np.ndarray]) -> None:
        if self._mel_t is None or self._x is None:
            raise RuntimeError("WindowJob.prepare() before activate()")
        r0, n = tile.params["r0"], tile.params["n"]
        if tile.op == "stem":
            slab = host_in[0]
            lo, hi = 2 * r0 - 2, 2 * (r0 + n) + 1
            frames = 2 * self.plan.positions  # a shorter context sees only its own frames (like audio_ctx)
            a, b = max(lo, 0), min(hi, frames)
            slab[: a - lo] = 0.0
            slab[a - lo : b - lo] = self._mel_t[a:b]
            slab[b - lo :] = 0.0
        else:
            host_in[0][...] = self._x[r0 : r0 + n]

    def commit(self, tile: Tile, host_out: Sequence[np.ndarray]) -> None:
        if not host_out:
            return
        r0, n = tile.params["r0"], tile.params["n"]
        dst = self._out if tile.params.get("final") else self._x
        if dst is None:
            raise RuntimeError("WindowJob.commit() before activate()")
        dst[r0 : r0 + n] = host_out[0]


def encode_window_sequential(program: EncoderProgram, plan: EncoderPlan, mel: np.ndarray) -> np.ndarray:
    """The reference sequential path: every tile in plan order on plain host arrays, no device, no asyncio.

    The pipelined runtime must reproduce this bit for bit at any depth (one lane, same ``tile_rows``).
    """
    d = plan.dims
    out = np.empty((plan.positions, d.n_audio_state), np.float32)
    job = WindowJob(plan, mel, out)
    job.activate()
    ws = program.make_workspace()
    tensors = {k: np.empty(s.shape, s.dtype) for k, s in plan.tensor_specs.items()}
    for tile in plan.tiles:
        ins = [np.empty(s.shape, s.dtype) for s in tile.inputs]
        outs = [np.empty(s.shape, s.dtype) for s in tile.outputs]
        job.prepare(tile, ins)
        program.run(tile.op, program.resident, ws, tile.params, ins, outs, tensors)
        job.commit(tile, outs)
    return out
