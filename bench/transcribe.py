"""End-to-end transcription benchmark: ``rt.transcribe()`` against faster-whisper fp32 and int8, side by side.

One long English recording (``--audio``; default: a 67 s clip assembled from the committed test clips, real
speech first) is transcribed with the default options (beam 5, temperature fallback, timestamps) by:

* ``ours`` (and ``ours_bf16`` with ``--precisions fp32,bf16``: ``Runtime(precision="bf16")``):
  :meth:`aiowhisper_npu.Runtime.transcribe` on the CPU backend (encoder: 2 lanes; decoder engine:
  2 threads);
* ``fw_fp32`` / ``fw_int8``: ``faster_whisper.WhisperModel(path, compute_type=..., cpu_threads=2)`` on the
  same model directory, segments consumed to the end.

Rounds interleave the three (a fresh order each round); speed ratios are medians of per-round ratios. For
ours the time splits into encoder (the pipeline's busy wall time) and decoder (the engine's busy time plus
cross-attention keys); for faster-whisper into encoder (its ``encode`` calls, timed by wrapping them) and the
rest. Tokens/s counts generated tokens (segment tokens) per decoder second. Then 4 concurrent
``transcribe()`` calls on one runtime against the same 4 run one after another: the throughput ratio.

Run it with the machine's BLAS defaults::

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python bench/transcribe.py --model tiny.en --json out.json
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any, Callable, Sequence

import anyio
import numpy as np

import aiowhisper_npu as aw
from aiowhisper_npu.benchmark.harness import Run, interleaved, per_round, write_report

__all__ = ["build_parser", "run", "render", "main", "speech_67s"]

DATA = Path(__file__).resolve().parent.parent / "tests" / "data"
#: The default recording: real speech (jfk.wav) then synthetic sentences, 0.3 s apart (~67 s).
CLIPS_67S = ("jfk.wav", "long_40s.wav", "numbers.wav", "weather.wav", "quick_fox.wav", "door.wav")


def speech_67s() -> np.ndarray:
    """The default benchmark recording, assembled from the committed test clips."""
    gap = np.zeros(int(0.3 * aw.SAMPLE_RATE), np.float32)
    parts: list[np.ndarray] = []
    for name in CLIPS_67S:
        parts += [aw.load_audio(DATA / name), gap]
    return np.concatenate(parts[:-1])


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="tiny.en", help="tiny.en, base or a model directory (default tiny.en)")
    p.add_argument("--audio", default=None, help="audio file (default: the 67 s assembled clip)")
    p.add_argument("--repeats", type=int, default=3, help="measured rounds (default 3)")
    p.add_argument("--peers", default="fp32,int8", help="faster-whisper compute types to run beside ours")
    p.add_argument("--precisions", default="fp32",
                   help="our runtimes, side by side: fp32 ('ours') and/or bf16 ('ours_bf16') (default fp32)")
    p.add_argument("--concurrent", type=int, default=4, help="concurrent calls in the throughput run (0: skip)")
    p.add_argument("--beam-size", type=int, default=5)
    p.add_argument("--json", metavar="PATH", default=None, help="write the results as JSON")
    p.add_argument("--seed", type=int, default=1)
    return p


def _fw_runner(model: aw.WhisperModel, compute_type: str, beam_size: int) -> Callable[[np.ndarray], dict[str, Any]]:
    from faster_whisper import WhisperModel

    fw = WhisperModel(str(model.path), device="cpu", compute_type=compute_type, cpu_threads=2)
    encode = fw.encode
    spent = [0.0]

    def timed_encode(features: np.ndarray) -> Any:
        t = time.perf_counter()
        out = encode(features)
        spent[0] += time.perf_counter() - t
        return out

    fw.encode = timed_encode  # type: ignore[method-assign]

    def run(audio: np.ndarray) -> dict[str, Any]:
        spent[0] = 0.0
        t0 = time.perf_counter()
        segments, _ = fw.transcribe(audio, beam_size=beam_size)
        segs = list(segments)
        wall = time.perf_counter() - t0
        tokens = sum(len([t for t in s.tokens if t < 50257]) for s in segs)
        return {"wall_s": wall, "encoder_s": spent[0], "decoder_s": wall - spent[0], "tokens": tokens,
                "text": "".join(s.text for s in segs).strip(), "segments": len(segs)}

    return run


async def _ours_once(rt: aw.Runtime, audio: np.ndarray, beam_size: int) -> dict[str, Any]:
    enc0 = rt.stats.wall_s
    eng0 = rt.decoder_stats()
    t0 = time.perf_counter()
    result = await rt.transcribe(audio, beam_size=beam_size)
    wall = time.perf_counter() - t0
    eng1 = rt.decoder_stats()
    tokens = sum(len([t for t in s.tokens if t < 50257]) for s in result.segments)
    enc = rt.stats.wall_s - enc0
    dec = eng1.busy_s - eng0.busy_s
    return {"wall_s": wall, "encoder_s": enc, "decoder_s": dec, "tokens": tokens, "text": result.text,
            "segments": len(result.segments), "decoder_passes": eng1.passes - eng0.passes,
            "decoder_iterations": eng1.iterations - eng0.iterations}


async def _concurrency(rt: aw.Runtime, audio: np.ndarray, n: int, beam_size: int) -> dict[str, Any]:
    t0 = time.perf_counter()
    for _ in range(n):
        await rt.transcribe(audio, beam_size=beam_size)
    sequential = time.perf_counter() - t0
    texts: list[str] = []

    async def one() -> None:
        texts.append((await rt.transcribe(audio, beam_size=beam_size)).text)

    eng0 = rt.decoder_stats()
    t0 = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for _ in range(n):
            tg.start_soon(one)
    concurrent = time.perf_counter() - t0
    eng1 = rt.decoder_stats()
    iterations = max(1, eng1.iterations - eng0.iterations)
    return {"calls": n, "sequential_s": sequential, "concurrent_s": concurrent,
            "throughput_ratio": sequential / concurrent, "same_text": len(set(texts)) == 1,
            "passes_per_iteration": (eng1.passes - eng0.passes) / iterations,
            "rows_per_iteration": (eng1.rows - eng0.rows) / iterations}


def _summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    keys = ("wall_s", "encoder_s", "decoder_s")
    out: dict[str, Any] = {k: statistics.median(r[k] for r in rows) for k in keys}
    out["tokens"] = rows[-1]["tokens"]
    out["tokens_per_decoder_s"] = out["tokens"] / out["decoder_s"] if out["decoder_s"] else None
    out["text"] = rows[-1]["text"]
    return out


async def run(args: argparse.Namespace) -> dict[str, Any]:
    model = aw.load_model(args.model)
    audio = aw.load_audio(args.audio) if args.audio else speech_67s()
    peers = {f"fw_{c}": _fw_runner(model, {"fp32": "float32"}.get(c, c), args.beam_size)
             for c in args.peers.split(",") if c}
    ours_names = {"fp32": "ours", "bf16": "ours_bf16"}
    precisions = [c for c in args.precisions.split(",") if c]
    if not precisions or any(c not in ours_names for c in precisions):
        raise SystemExit(f"--precisions: a comma-separated subset of {', '.join(ours_names)}")
    mine = {ours_names[c]: c for c in precisions}
    rows: dict[str, list[dict[str, Any]]] = {**{k: [] for k in mine}, **{k: [] for k in peers}}
    record = Run(args, "python bench/transcribe.py")
    async with AsyncExitStack() as stack:
        rts = {k: await stack.enter_async_context(aw.Runtime(model, precision=c)) for k, c in mine.items()}
        for rt in rts.values():
            await _ours_once(rt, audio[: 5 * aw.SAMPLE_RATE], args.beam_size)  # warm-up: engine, caches
        for run_peer in peers.values():
            run_peer(audio[: 5 * aw.SAMPLE_RATE])
        for r, order in enumerate(interleaved(list(rows), args.repeats, "shuffled", args.seed)):
            for name in order:
                if name in rts:
                    rows[name].append(await _ours_once(rts[name], audio, args.beam_size))
                else:
                    rows[name].append(await anyio.to_thread.run_sync(peers[name], audio))
                print(f"round {r + 1}: {name} {rows[name][-1]['wall_s']:.2f} s", file=sys.stderr)
        first = next(iter(rts.values()))
        conc = await _concurrency(first, audio, args.concurrent, args.beam_size) if args.concurrent else None

    def ratio(a: str, b: str) -> float:
        return statistics.median(per_round([x["wall_s"] for x in rows[a]], [y["wall_s"] for y in rows[b]]))

    ours = next(iter(mine))
    ratios = {name: ratio(ours, name) for name in peers}
    side_by_side = {a: {b: ratio(a, b) for b in rows if b != a} for a in mine}
    return {"model": model.name, "audio_s": audio.size / aw.SAMPLE_RATE, "beam_size": args.beam_size,
            "repeats": args.repeats, **record.record(),
            "results": {k: _summary(v) for k, v in rows.items()}, "rounds": rows,
            "ours": ours, "time_ratio_vs": ratios, "time_ratios": side_by_side, "concurrency": conc}


def render(res: dict[str, Any]) -> str:
    lines = [f"## transcribe: {res['model']}, {res['audio_s']:.1f} s of speech, beam {res['beam_size']}, "
             f"{res['repeats']} rounds", "",
             "| system | wall p50 | encoder | decoder | tokens/s (decoder) | time / ours |",
             "|---|---:|---:|---:|---:|---:|"]
    first = res.get("ours", "ours")
    ours = res["results"][first]
    for name, r in res["results"].items():
        rel = "1.00x" if name == first else f"{1 / res['time_ratios'][first][name]:.2f}x"
        tps = f"{r['tokens_per_decoder_s']:.0f}" if r["tokens_per_decoder_s"] else "-"
        lines.append(f"| {name} | {r['wall_s']:.2f} s | {r['encoder_s']:.2f} s | {r['decoder_s']:.2f} s | {tps} | "
                     f"{rel} |")
    lines.append("")
    for mine, ratios in res["time_ratios"].items():
        for name, ratio in ratios.items():
            lines.append(f"- {mine} / {name} wall time (median of per-round ratios): **{ratio:.2f}x**")
    if res["concurrency"]:
        c = res["concurrency"]
        lines.append(f"- {c['calls']} concurrent calls: {c['concurrent_s']:.2f} s vs {c['sequential_s']:.2f} s one "
                     f"after another: **{c['throughput_ratio']:.2f}x** throughput (same text: {c['same_text']}); "
                     f"the decoder engine ran {c.get('passes_per_iteration', float('nan')):.1f} calls' passes "
                     f"({c.get('rows_per_iteration', float('nan')):.1f} rows) per iteration")
    lines.append(f"- ours: {ours['text'][:120]}...")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    res = anyio.run(run, args)
    write_report(render(res), res, json_path=args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
