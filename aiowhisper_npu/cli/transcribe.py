"""``aiowhisper-npu transcribe FILE``: segments with timestamps as each window is decoded, a progress bar on
long files (``rich``, when installed and stderr is a terminal), and the transcript as txt, srt, vtt or json.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Awaitable, Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from ..formats import FORMATS, format_timestamp, render

__all__ = ["add_arguments", "run_transcribe_command"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", help="audio file (wav; other formats with the 'audio' extra)")
    p.add_argument("--language", default=None, help="language code or name (default: detect on multilingual models)")
    p.add_argument("--task", default="transcribe", choices=("transcribe", "translate"))
    p.add_argument("--beam-size", type=int, default=5, help="beam size (1: greedy; default 5)")
    p.add_argument("--temperature", type=float, nargs="+", default=None,
                   help="temperature, or a fallback schedule (default 0.0 0.2 ... 1.0)")
    p.add_argument("--word-timestamps", action="store_true", help="time every word")
    p.add_argument("--initial-prompt", default=None, help="text to condition the first window on")
    p.add_argument("--no-condition-on-previous-text", action="store_true",
                   help="do not prompt each window with the previous text")
    p.add_argument("--vad", action="store_true",
                   help="transcribe the speech only, found by voice activity detection (the 'vad' extra)")
    p.add_argument("--output-format", "-f", default="txt", choices=FORMATS, help="format of -o (default txt)")
    p.add_argument("-o", "--output", default=None, help="write the transcript here ('-': standard output)")
    p.add_argument("--quiet", "-q", action="store_true", help="do not print segments as they are decoded")


def _options(args: argparse.Namespace) -> dict[str, Any]:
    opts: dict[str, Any] = dict(language=args.language, task=args.task, beam_size=args.beam_size,
                                word_timestamps=args.word_timestamps, initial_prompt=args.initial_prompt,
                                condition_on_previous_text=not args.no_condition_on_previous_text,
                                vad_filter=args.vad)
    if args.temperature is not None:
        opts["temperature"] = tuple(args.temperature) if len(args.temperature) > 1 else args.temperature[0]
    return opts


class _Progress:
    """A rich progress bar over audio seconds on stderr, or nothing."""

    def __init__(self, stack: ExitStack, enabled: bool):
        self._bar: Any = None
        if not enabled or not sys.stderr.isatty():
            return
        try:
            from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn
        except ImportError:
            return
        self._bar = stack.enter_context(Progress(TextColumn("transcribing"), BarColumn(),
                                                 TextColumn("{task.completed:.0f}/{task.total:.0f} s"),
                                                 TimeRemainingColumn(), transient=True))
        self._task = self._bar.add_task("audio", total=None)

    def update(self, done_s: float, total_s: float) -> None:
        if self._bar is not None:
            self._bar.update(self._task, completed=done_s, total=total_s)


def run_transcribe_command(args: argparse.Namespace, make_runtime: Callable[[argparse.Namespace], Any],
                           run_async: Callable[[Callable[[], Awaitable[Any]], str], Any]) -> int:
    """Transcribe ``args.file``; print each segment as it is decoded; write ``-o`` in ``--output-format``."""

    async def go() -> tuple[list[Any], Any, float]:
        segments: list[Any] = []
        async with make_runtime(args) as rt:
            t0 = time.perf_counter()
            with ExitStack() as stack:
                progress = _Progress(stack, not args.quiet)
                async with rt.transcribe_iter(args.file, **_options(args)) as stream:
                    async for seg in stream:
                        segments.append(seg)
                        progress.update(seg.end, stream.info.duration)
                        if not args.quiet:
                            print(f"[{format_timestamp(seg.start, always_hours=False)} --> "
                                  f"{format_timestamp(seg.end, always_hours=False)}] {seg.text.strip()}", flush=True)
                info = stream.info
            return segments, info, time.perf_counter() - t0

    segments, info, elapsed = run_async(go, args.loop)
    if info is None:  # no segment at all: the info is still known
        info_text = "no speech found"
    else:
        speech = f" ({info.duration_after_vad:.1f} s of speech)" if args.vad else ""
        info_text = (f"{info.duration:.1f} s of audio{speech}, language {info.language} "
                     f"({info.language_probability:.2f}), {elapsed:.1f} s ({info.duration / elapsed:.1f}x realtime)")
    print(f"# {args.file}: {info_text}, {args.model} on {args.backend}", file=sys.stderr)
    if args.output:
        meta = {"language": info.language, "duration": info.duration} if info is not None else {}
        text = render(args.output_format, segments, **meta)
        if args.output == "-":
            sys.stdout.write(text)
        else:
            Path(args.output).write_text(text, encoding="utf-8")
            print(f"# wrote {args.output} ({args.output_format})", file=sys.stderr)
    return 0
