"""``aiowhisper-npu stream FILE``: feed a file to :meth:`Runtime.encode_stream` in chunks and print every update.

Text output is one line per update (window, covered seconds, final flag, positions, latency, lag) and a
summary; ``--json`` prints one JSON object per line instead: ``{"type": "update", ...}`` per update, then
``{"type": "summary", ...}``. With ``--realtime`` chunk ``k`` is handed over at ``(k + 1) * chunk_ms`` after
the start, when its audio would have been fully recorded; without it, as fast as the stream accepts.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio
import numpy as np

from ..audio.io import SAMPLE_RATE, load_audio
from ..streaming.stream import StreamUpdate

__all__ = ["paced_chunks", "update_record", "format_update", "run_stream_command"]


async def paced_chunks(audio: np.ndarray, chunk_samples: int, realtime: bool,
                       start: float | None = None) -> AsyncIterator[np.ndarray]:
    """Yield ``audio`` in chunks; with ``realtime``, chunk k at ``start + (k + 1) * chunk duration``.

    ``start`` is an :func:`anyio.current_time` value (default: when iteration begins). Deadlines are
    absolute, so a consumer that falls behind is caught up with immediately rather than drifting.
    """
    if chunk_samples < 1:
        raise ValueError(f"chunk size must be at least one sample, got {chunk_samples}")
    t0 = anyio.current_time() if start is None else start
    for i in range(0, audio.size, chunk_samples):
        chunk = audio[i : i + chunk_samples]
        if realtime:
            await anyio.sleep_until(t0 + (i + chunk.size) / SAMPLE_RATE)
        yield chunk


def update_record(upd: StreamUpdate) -> dict[str, Any]:
    """The JSON-able fields of an update (no hidden states)."""
    lag = upd.lag
    return {
        "type": "update", "window": upd.window, "start_s": round(upd.start_s, 4), "end_s": round(upd.end_s, 4),
        "final": upd.final, "positions": upd.positions, "audio_positions": upd.audio_positions,
        "latency_ms": round(upd.latency_s * 1e3, 2), "compute_ms": round(upd.compute_s * 1e3, 2),
        "skipped": upd.skipped, "queued_audio_s": round(lag.queued_audio_s, 4),
        "behind_s": round(lag.behind_s, 4), "compute_s_per_audio_s": round(lag.compute_s_per_audio_s, 4),
        "hidden_shape": list(upd.hidden_states.shape),
    }


def format_update(upd: StreamUpdate) -> str:
    """One human-readable line per update."""
    kind = "FINAL  " if upd.final else "partial"
    lag = upd.lag
    return (f"[w{upd.window}] {upd.start_s:7.2f}-{upd.end_s:7.2f} s  {kind}  {upd.positions:4d} pos  "
            f"latency {upd.latency_s * 1e3:7.1f} ms  compute {upd.compute_s * 1e3:6.1f} ms  "
            f"lag: queued {lag.queued_audio_s:5.2f} s, behind {lag.behind_s:5.2f} s, "
            f"{lag.compute_s_per_audio_s:.3f} compute s/audio s" + (f", {upd.skipped} skipped" if upd.skipped else ""))


def run_stream_command(args: argparse.Namespace, make_runtime: Callable[[argparse.Namespace], Any],
                       run_async: Callable[..., Any]) -> int:
    """The ``stream`` subcommand (see :mod:`aiowhisper_npu.cli.main`). Returns the exit status."""
    if args.chunk_ms <= 0:
        raise SystemExit("error: --chunk-ms must be positive")
    if not args.update_every_s > 0:
        raise SystemExit("error: --update-every-s must be positive")

    def emit(obj: dict[str, Any], line: str) -> None:
        print(json.dumps(obj) if args.json else line, flush=True)

    async def go() -> None:
        audio = await anyio.to_thread.run_sync(load_audio, args.file)
        chunk = max(1, round(args.chunk_ms * SAMPLE_RATE / 1000))
        async with make_runtime(args) as rt:
            if not args.json:
                print(f"{args.file}: {audio.size / SAMPLE_RATE:.2f} s, {args.chunk_ms} ms chunks"
                      f"{' at real-time pace' if args.realtime else ''}, update every {args.update_every_s} s, "
                      f"context {args.context} ({args.model} on {args.backend})", flush=True)
            t0 = time.perf_counter()
            latencies: list[float] = []
            n_final = 0
            async with rt.encode_stream(paced_chunks(audio, chunk, args.realtime), update_every_s=args.update_every_s,
                                        context=args.context) as s:
                async for upd in s:
                    latencies.append(upd.latency_s)
                    n_final += upd.final
                    emit(update_record(upd), format_update(upd))
            elapsed = time.perf_counter() - t0
            lag = s.lag
            lat = np.asarray(latencies) if latencies else np.zeros(1)
            summary = {
                "type": "summary", "file": str(args.file), "audio_s": round(audio.size / SAMPLE_RATE, 4),
                "elapsed_s": round(elapsed, 4), "updates": len(latencies), "finals": n_final,
                "latency_p50_ms": round(float(np.percentile(lat, 50)) * 1e3, 2),
                "latency_p95_ms": round(float(np.percentile(lat, 95)) * 1e3, 2),
                "compute_s_per_audio_s": round(lag.compute_s_per_audio_s, 4),
                "max_queued_audio_s": round(lag.max_queued_audio_s, 4), "partials_skipped": lag.partials_skipped,
                "model": args.model, "backend": args.backend, "context": args.context,
                "chunk_ms": args.chunk_ms, "realtime": bool(args.realtime),
            }
            emit(summary, f"{len(latencies)} updates ({n_final} final) in {elapsed:.2f} s; latency p50 "
                          f"{summary['latency_p50_ms']:.1f} ms, p95 {summary['latency_p95_ms']:.1f} ms; "
                          f"{summary['compute_s_per_audio_s']:.3f} compute s per audio s; max queued "
                          f"{summary['max_queued_audio_s']:.2f} s; {lag.partials_skipped} partials coalesced")

    run_async(go, getattr(args, "loop", "auto"))
    return 0
