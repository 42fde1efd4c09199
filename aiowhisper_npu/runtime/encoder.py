"""The encoder of an open runtime: ready log-mel windows in, hidden states out, on the tile pipeline.

:class:`Encoder` holds the runtime's model sizes, its tile size and the
:class:`~aiowhisper_npu.encoder.plan.EncoderPlan` of every context length asked so far (built once each),
and runs a request's windows as jobs of the shared :class:`~aiowhisper_npu.pipeline.pipeline.Pipeline`. It
is built once when the runtime opens; the recognizer, the encode streams and
:meth:`Runtime.encode <aiowhisper_npu.runtime.runtime.Runtime.encode>` all encode through it.
"""

from __future__ import annotations

import numpy as np

from ..encoder.plan import EncoderPlan, WindowJob
from ..models.model import ModelDimensions
from ..pipeline.pipeline import Pipeline
from ..pipeline.stats import PipelineStats, StatsRecorder
from .host import ServiceHost

__all__ = ["Encoder"]


class Encoder:
    """Encodes log-mel windows on ``pipeline`` while ``host`` serves (see the module docstring).

    Args:
        pipeline: the runtime's serving pipeline.
        dims: the model's sizes.
        tile_rows: encoder positions per tile.
        host: the runtime's service host; a call while it does not serve, or from another event loop,
            raises ``RuntimeError``.
    """

    def __init__(self, pipeline: Pipeline, dims: ModelDimensions, tile_rows: int, host: ServiceHost):
        self._pipeline = pipeline
        self._dims = dims
        self._tile_rows = tile_rows
        self._host = host
        self._plans: dict[int | None, EncoderPlan] = {}

    @property
    def dims(self) -> ModelDimensions:
        """The model's sizes."""
        return self._dims

    def plan(self, n_ctx: int | None = None) -> EncoderPlan:
        """The tile graph for ``n_ctx`` positions (``None``: all 1500), built on first use."""
        plan = self._plans.get(n_ctx)
        if plan is None:
            plan = self._plans[n_ctx] = EncoderPlan(self._dims, self._tile_rows, n_ctx)
        return plan

    async def encode(self, mels: np.ndarray, n_ctx: int | None = None,
                     recorder: StatsRecorder | None = None) -> tuple[np.ndarray, PipelineStats]:
        """Encode ready log-mel windows ``(n_windows, n_mels, 3000)`` into ``(n_windows, positions, d_model)``
        float32 hidden states; ``n_ctx`` limits the positions. Returns them with the request's statistics
        (also recorded into ``recorder`` when given)."""
        self._host.require("encode_mels")
        plan = self.plan(n_ctx)
        out = np.empty((mels.shape[0], plan.positions, plan.dims.n_audio_state), np.float32)
        jobs = [WindowJob(plan, mels[i], out[i]) for i in range(mels.shape[0])]
        rec = recorder or StatsRecorder()
        await self._pipeline.run(jobs, rec)
        return out, rec.snapshot()
