"""``aiowhisper-npu stream FILE``: live captions of a file fed in chunks to :meth:`Runtime.captions`.

On a terminal the captions are redrawn in place with ``rich`` (the ``bench`` extra): committed text in plain
type, the tentative tail dimmed. Elsewhere (a pipe, a file) each update that changes something prints one
line, ``+ <newly committed> | <tentative>``; ``--json`` prints one JSON object per update
(``{"type": "caption", ...}``) and then ``{"type": "summary", ...}``. The summary gives the update latency
(newest audio in -> update out) and, with ``--realtime``, the word commit latency: when a word was committed
minus when its audio ended (the stream's own word end times) -- both p50/p95.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from typing import Any

import anyio
import numpy as np

from ..audio.io import SAMPLE_RATE, load_audio
from ..streaming.captions import CaptionUpdate
from .stream import paced_chunks

__all__ = ["caption_record", "run_captions_command"]


def caption_record(u: CaptionUpdate) -> dict[str, Any]:
    """The JSON-able fields of a caption update."""
    return {
        "type": "caption", "committed": u.committed, "new": u.new, "tentative": u.tentative, "final": u.final,
        "segments": [{"start": s.start, "end": s.end, "text": s.text} for s in u.segments],
        "audio_s": round(u.audio_s, 4), "latency_ms": round(u.latency_s * 1e3, 2),
        "compute_ms": round(u.compute_s * 1e3, 2), "buffer_s": round(u.buffer_s, 3), "n_ctx": u.n_ctx,
        "skipped": u.skipped,
    }


def _pct(xs: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(xs), q)) if xs else float("nan")


class _View:
    """Where the captions go: a rich Live region on a terminal, lines otherwise."""

    def __init__(self, json_mode: bool) -> None:
        self.json = json_mode
        self._live: Any = None
        if not json_mode:
            try:
                from rich.console import Console
                from rich.live import Live
            except ImportError:  # pragma: no cover - rich is in the bench/test extras
                return
            console = Console()
            if console.is_terminal:
                self._live = Live(console=console, auto_refresh=False, transient=False)

    def __enter__(self) -> _View:
        if self._live is not None:
            self._live.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._live is not None:
            self._live.__exit__(*exc)

    def show(self, u: CaptionUpdate) -> None:
        if self.json:
            print(json.dumps(caption_record(u)), flush=True)
        elif self._live is not None:
            from rich.text import Text

            text = Text(u.committed)
            text.append(u.tentative, style="dim")
            self._live.update(text, refresh=True)
        elif u.new or u.final or u.tentative:
            print(f"+ {u.new.strip()} | {u.tentative.strip()}" + ("  [final]" if u.final else ""), flush=True)


def run_captions_command(args: argparse.Namespace, make_runtime: Callable[[argparse.Namespace], Any],
                         run_async: Callable[..., Any]) -> int:
    """The ``stream`` subcommand's caption mode. Returns the exit status."""
    every = args.update_every_s if args.update_every_s is not None else args.chunk_ms / 1000
    context = args.context or "bucketed"

    async def go() -> None:
        audio = await anyio.to_thread.run_sync(load_audio, args.file)
        chunk = max(1, round(args.chunk_ms * SAMPLE_RATE / 1000))
        async with make_runtime(args) as rt:
            if not args.json:
                print(f"{args.file}: {audio.size / SAMPLE_RATE:.2f} s, {args.chunk_ms} ms chunks"
                      f"{' at real-time pace' if args.realtime else ''}, update every {every} s, context {context} "
                      f"({args.model} on {args.backend})", flush=True)
            t_start = anyio.current_time()
            t0 = time.perf_counter()
            update_lat: list[float] = []
            word_lat: list[float] = []
            last: CaptionUpdate | None = None
            with _View(args.json) as view:
                async with rt.captions(paced_chunks(audio, chunk, args.realtime, t_start),
                                       update_every_s=every, context=context) as s:
                    async for u in s:
                        now = anyio.current_time()
                        update_lat.append(u.latency_s)
                        word_lat.extend(now - (t_start + w.end) for w in u.new_words)
                        view.show(u)
                        last = u
            elapsed = time.perf_counter() - t0
            summary: dict[str, Any] = {
                "type": "summary", "file": str(args.file), "audio_s": round(audio.size / SAMPLE_RATE, 4),
                "elapsed_s": round(elapsed, 4), "updates": len(update_lat),
                "update_latency_p50_ms": round(_pct(update_lat, 50) * 1e3, 2),
                "update_latency_p95_ms": round(_pct(update_lat, 95) * 1e3, 2),
                "words": len(word_lat), "realtime": bool(args.realtime),
                "compute_s_per_audio_s": round(s.lag.compute_s_per_audio_s, 4),
                "text": last.committed if last is not None else "",
                "model": args.model, "backend": args.backend, "context": context, "chunk_ms": args.chunk_ms,
            }
            if args.realtime:
                summary["word_commit_latency_p50_ms"] = round(_pct(word_lat, 50) * 1e3, 2)
                summary["word_commit_latency_p95_ms"] = round(_pct(word_lat, 95) * 1e3, 2)
            if args.json:
                print(json.dumps(summary), flush=True)
                return
            print(f"\n{summary['text']}\n", flush=True)
            line = (f"{len(update_lat)} updates in {elapsed:.2f} s; update latency p50 "
                    f"{summary['update_latency_p50_ms']:.0f} ms, p95 {summary['update_latency_p95_ms']:.0f} ms")
            if args.realtime:
                line += (f"; word commit latency p50 {summary['word_commit_latency_p50_ms']:.0f} ms, "
                         f"p95 {summary['word_commit_latency_p95_ms']:.0f} ms ({len(word_lat)} words)")
            print(line + f"; {summary['compute_s_per_audio_s']:.3f} compute s per audio s", flush=True)

    run_async(go, getattr(args, "loop", "auto"))
    return 0
