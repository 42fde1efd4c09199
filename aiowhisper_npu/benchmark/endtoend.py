"""What a user of the runtime gets, in the latency benchmark: ``rt.encode(audio)`` end to end and the first
update of ``rt.stream``; and the consistency checks on a whole result."""

from __future__ import annotations

import importlib.util
import time
from typing import Any

import anyio

from .harness import blas_limit, interleaved, settle, speech_audio
from .measure import pct
from .progress import ProgressBar

__all__ = ["e2e_latency", "stream_first_update", "checks"]


async def e2e_latency(rt: Any, name: str, repeats: int, threads: int | None, settle_s: float,
                      progress: ProgressBar) -> dict[str, Any]:
    """``rt.encode(audio)`` of 5, 10 and 30 s of speech (mel included), interleaved, p50/p95."""
    clips = {s: speech_audio(s) for s in (5.0, 10.0, 30.0)}
    times: dict[float, list[float]] = {s: [] for s in clips}
    for s in clips:  # warm-up of the mel front end at each length
        await rt.encode(clips[s])
    progress.step(2)
    for order in interleaved(list(clips), repeats, "shuffled", seed=2):
        for s in order:
            settle(settle_s)
            with blas_limit(threads):
                t0 = time.perf_counter()
                await rt.encode(clips[s])
                times[s].append(time.perf_counter() - t0)
            progress.step()
    return {"variant": name, "repeats": repeats,
            "clips": [{"seconds": s, "p50_s": pct(t, 50), "p95_s": pct(t, 95), "all": t}
                      for s, t in times.items()]}


async def stream_first_update(rt: Any, trials: int, progress: ProgressBar) -> dict[str, Any]:
    """First-update latency of ``rt.stream``: speech fed at real-time pace in 0.5 s chunks, updates every 1 s.

    Reports the stream's own ``latency_s`` of the first update (arrival of the newest audio it includes ->
    update ready) and the time from the start of the stream to the first update.
    """
    if importlib.util.find_spec("aiowhisper_npu.streaming.stream") is None:
        return {"note": "skipped: aiowhisper_npu.streaming.stream is not in this build yet"}
    audio = speech_audio(3.0)
    chunk = 8000
    lat: list[float] = []
    since_start: list[float] = []
    try:
        for _ in range(trials):
            async def chunks() -> Any:
                t0 = time.perf_counter()
                for k, i in enumerate(range(0, audio.size, chunk)):
                    await anyio.sleep(max(0.0, t0 + k * chunk / 16000 - time.perf_counter()))
                    yield audio[i : i + chunk]

            t_start = time.perf_counter()
            async with rt.encode_stream(chunks(), update_every_s=1.0) as s:
                async for upd in s:
                    since_start.append(time.perf_counter() - t_start)
                    lat.append(float(upd.latency_s))
                    break
            progress.step()
    except Exception as exc:  # the streaming API is young; report rather than fail the benchmark
        return {"note": f"skipped: rt.stream failed: {type(exc).__name__}: {exc}"}
    if not lat:
        return {"note": "rt.stream produced no update for 3 s of speech"}
    return {"how": "speech fed at real-time pace in 0.5 s chunks, update_every_s=1, context=full; the "
                   "stream's latency_s of its first update (newest audio in -> update ready)",
            "first_update_s": {"p50": pct(lat, 50), "p95": pct(lat, 95), "all": lat},
            "first_update_since_start_s": {"p50": pct(since_start, 50), "all": since_start}}


def checks(res: dict[str, Any]) -> dict[str, Any]:
    """Consistency checks on the numbers (also asserted by tests/unit/test_bench.py)."""
    var = res["variants"]
    out: dict[str, Any] = {}
    for name in ("baseline", "pooled"):
        if name in var:
            v = var[name]
            out[f"{name}_residual_pct"] = round(100 * v["residual_ms"] / v["makespan_per_tile_ms"], 2) \
                if v["makespan_per_tile_ms"] else None
    out["max_stage_utilisation"] = round(max(max(v["stage_utilisation_max"].values()) for v in var.values()), 4)
    best = res.get("best_pipelined")
    if best and best != "baseline":
        out["best_pipelined_makespan_le_baseline"] = \
            var[best]["makespan_s"]["p50"] <= var["baseline"]["makespan_s"]["p50"]
    return out
