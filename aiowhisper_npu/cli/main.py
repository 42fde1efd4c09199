"""The ``aiowhisper-npu`` command line: ``transcribe``, ``encode``, ``stream``, ``serve``, ``bench`` and ``info``."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import anyio
import numpy as np

from ..errors import AiowhisperError

__all__ = ["main", "run_async"]


def run_async(fn: Callable[[], Awaitable[Any]], loop: str = "auto") -> Any:
    """Run ``fn`` on asyncio (with uvloop when installed and ``loop`` is auto/uvloop) or trio."""
    if loop == "trio":
        return anyio.run(fn, backend="trio")
    use_uvloop = False
    if loop in ("auto", "uvloop"):
        try:
            import uvloop  # noqa: F401

            use_uvloop = True
        except ImportError:
            if loop == "uvloop":
                raise AiowhisperError("uvloop is not installed: pip install 'aiowhisper-npu[uvloop]'") from None
    return anyio.run(fn, backend="asyncio", backend_options={"use_uvloop": use_uvloop})


def _runtime_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="tiny.en", help="model name (tiny.en, base) or model directory")
    p.add_argument("--backend", default="cpu", choices=("cpu", "sim", "xrt"), help="device backend")
    p.add_argument("--depth", type=int, default=4, help="pipeline depth: most tiles in flight (1 = serial)")
    p.add_argument("--lanes", type=int, default=None, help="parallel kernel workers (default: 2 on cpu, 1 else)")
    p.add_argument("--tile-rows", type=int, default=None,
                   help="encoder positions per tile (default: 375 on cpu, 64 else)")
    p.add_argument("--manifest", default=None, help="kernel manifest for the xrt/sim backends")
    p.add_argument("--precision", default="fp32", choices=("fp32", "bf16"),
                   help="numerics: fp32 (default, the reference) or bf16 (the NPU's: bf16 products, fp32 sums)")
    p.add_argument("--loop", default="auto", choices=("auto", "asyncio", "uvloop", "trio"),
                   help="event loop (auto: uvloop when installed)")
    p.add_argument("--json", action="store_true", help="print machine-readable JSON instead of text")


def _make_runtime(args: argparse.Namespace) -> Any:
    from ..runtime.runtime import Runtime

    opts: dict[str, Any] = {}
    if getattr(args, "manifest", None):
        opts["manifest"] = args.manifest
    return Runtime(args.model, backend=args.backend, pipeline_depth=args.depth, lanes=args.lanes,
                   tile_rows=args.tile_rows, precision=getattr(args, "precision", "fp32"), **opts)


def _cmd_encode(args: argparse.Namespace) -> int:
    from ..audio.io import load_audio

    async def go() -> dict[str, Any]:
        audio = await anyio.to_thread.run_sync(load_audio, args.file)
        async with _make_runtime(args) as rt:
            t0 = time.perf_counter()
            out = await rt.encode(audio)
            elapsed = time.perf_counter() - t0
        if args.output:
            np.save(args.output, out.hidden_states)
        return {"file": str(args.file), "shape": list(out.hidden_states.shape), "audio_s": out.audio_s,
                "elapsed_s": elapsed, "realtime_factor": out.audio_s / elapsed if elapsed else None,
                "model": args.model, "backend": args.backend, "output": args.output,
                "stats": out.stats.summary()}

    res = run_async(go, args.loop)
    if args.json:
        print(json.dumps(res, indent=2))
    else:
        print(f"{res['file']}: {res['audio_s']:.2f} s of audio -> hidden_states {tuple(res['shape'])} "
              f"float32 in {res['elapsed_s']:.3f} s ({res['realtime_factor']:.1f}x realtime, "
              f"{args.model} on {args.backend})")
        if args.output:
            print(f"saved to {args.output}")
    return 0


def _cmd_transcribe(args: argparse.Namespace) -> int:
    from .transcribe import run_transcribe_command

    return run_transcribe_command(args, _make_runtime, run_async)


def _cmd_info(args: argparse.Namespace) -> int:
    from .info import collect_info, format_info

    info = collect_info()
    print(json.dumps(info, indent=2) if args.json else format_info(info))
    return 0


def _cmd_stream(args: argparse.Namespace) -> int:
    if args.chunk_ms <= 0:
        raise SystemExit("error: --chunk-ms must be positive")
    if args.update_every_s is not None and not args.update_every_s > 0:
        raise SystemExit("error: --update-every-s must be positive")
    if not args.encoder:
        from .captions import run_captions_command

        return run_captions_command(args, _make_runtime, run_async)
    from .stream import run_stream_command

    args.update_every_s = 1.0 if args.update_every_s is None else args.update_every_s
    args.context = args.context or "full"
    return run_stream_command(args, _make_runtime, run_async)


def _cmd_serve(args: argparse.Namespace) -> int:
    from .serve import run_serve_command

    return run_serve_command(args)


def _cmd_bench(rest: Sequence[str]) -> int:
    from ..benchmark.latency import main as bench_main

    return bench_main(rest, run_async)


def build_parser() -> argparse.ArgumentParser:
    from .transcribe import add_arguments as transcribe_arguments

    parser = argparse.ArgumentParser(prog="aiowhisper-npu",
                                     description="Whisper speech recognition: the encoder as pipelined tiles on an "
                                                 "NPU (XRT) or the CPU, the decoder batched on the host.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("transcribe", help="transcribe (or translate) an audio file",
                       description="Transcribe an audio file with faster-whisper's defaults (beam 5, temperature "
                                   "fallback); print segments as they are decoded; write txt/srt/vtt/json.")
    transcribe_arguments(p)
    _runtime_args(p)
    p = sub.add_parser("encode", help="encode an audio file into encoder hidden states",
                       description="Encode an audio file; prints the output shape, time taken and realtime "
                                   "factor, and optionally saves hidden states as .npy.")
    p.add_argument("file", help="audio file (wav; other formats with the 'audio' extra)")
    p.add_argument("-o", "--output", default=None, help="save hidden states (n_windows, 1500, d) to this .npy")
    _runtime_args(p)
    p = sub.add_parser("stream", help="live captions of an audio file fed in chunks (--encoder: encoder updates)",
                       description="Feed a file in chunks (optionally at real-time pace) to Runtime.captions() "
                                   "and show live captions (committed text plain, tentative text dimmed) and a "
                                   "latency summary; with --encoder, to Runtime.encode_stream(), printing each encoder "
                                   "update with its latency.")
    p.add_argument("file", help="audio file")
    p.add_argument("--realtime", action="store_true", help="feed chunks at real-time pace")
    p.add_argument("--chunk-ms", type=int, default=1000, help="chunk length in milliseconds")
    p.add_argument("--update-every-s", type=float, default=None,
                   help="seconds of new audio between updates (default: the chunk length for captions, 1.0 "
                        "with --encoder)")
    p.add_argument("--context", default=None, choices=("full", "bucketed"),
                   help="encoder context (default: bucketed for captions, full with --encoder)")
    p.add_argument("--encoder", action="store_true", help="the encoder-only view: print encoder updates")
    _runtime_args(p)
    p = sub.add_parser("serve", help="serve the OpenAI-compatible API, the live-caption WebSocket and its page",
                       description="Serve POST /v1/audio/transcriptions (OpenAI's API), the WebSocket /v1/stream "
                                   "and a live-caption page at / on one runtime; SIGTERM shuts down gracefully.")
    from .serve import add_arguments as serve_arguments

    serve_arguments(p)
    p = sub.add_parser("info", help="show backends, pyxrt, model cache, installed models and BLAS",
                       description="Show which backends can run here, whether pyxrt was found and where, the "
                                   "model cache and installed models, and the BLAS library and threads.")
    p.add_argument("--json", action="store_true", help="print JSON")
    sub.add_parser("bench", help="run the bundled encoder latency benchmark (--help for its flags)",
                   add_help=False)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if argv and argv[0] == "bench":
        try:
            return _cmd_bench(argv[1:])
        except AiowhisperError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    args = parser.parse_args(argv)
    try:
        if args.command == "transcribe":
            return _cmd_transcribe(args)
        if args.command == "encode":
            return _cmd_encode(args)
        if args.command == "stream":
            return _cmd_stream(args)
        if args.command == "serve":
            return _cmd_serve(args)
        return _cmd_info(args)
    except AiowhisperError as exc:
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
