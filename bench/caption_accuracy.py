"""Live-caption accuracy without the machine's load: final-text WER of ``rt.captions()`` against offline
``transcribe()`` over several clips, with chunks fed in lock step.

The latency benchmark (``bench/caption_latency.py``) feeds audio in true real time, so its WER depends on the
load (a stream that falls behind coalesces updates and hears longer stretches at once) and covers one clip.
Here chunk ``k + 1`` is handed over only after the update that took chunk ``k`` is in the consumer's hands:
every update hears exactly ``update_every_s`` more audio, whatever the machine, so the text is
deterministic and options can be compared on many clips. *Lock-step latency* = the stream time of the
update that commits a word + that update's compute time - the word's end (offline word timestamps): the
commit latency of one stream on an otherwise idle machine, without queueing.

Clips: ``tests/data/long_40s.wav`` and ``jfk.wav``, and every ``*.wav`` in ``bench/eval_clips/`` (made by
``bash bench/make_eval_clips.sh``: four more synthetic clips, 107 s, four espeak-ng voices). The pooled WER
weighs each clip by its offline word count.

    bash bench/make_eval_clips.sh
    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python bench/caption_accuracy.py \\
        --variant trim_s=5,word_trim_s=10 --md bench/results/caption_accuracy.md
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any, AsyncIterator, Sequence

import anyio
import numpy as np

import aiowhisper_npu as aw
from aiowhisper_npu.audio.io import SAMPLE_RATE
from aiowhisper_npu.benchmark.harness import Run, pct
from aiowhisper_npu.transcription.metrics import normalize_word, word_error_rate as wer, words
from caption_latency import commit_latencies, parse_option, write_outputs

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "tests" / "data"
CLIPS = ROOT / "bench" / "eval_clips"


async def lockstep(rt: aw.Runtime, audio: np.ndarray, chunk_s: float, options: dict[str, Any]) -> dict[str, Any]:
    """Caption ``audio`` with chunk ``k + 1`` handed over after the update that took chunk ``k``."""
    chunk = round(chunk_s * SAMPLE_RATE)
    options = {"update_every_s": chunk_s, **options}
    per_update = max(1, round(options["update_every_s"] / chunk_s))  # chunks an update waits for
    updated = [anyio.Event()]

    async def source() -> AsyncIterator[np.ndarray]:
        for i, pos in enumerate(range(0, audio.size, chunk)):
            yield audio[pos : pos + chunk]
            if pos + chunk < audio.size and (i + 1) % per_update == 0:
                await updated[0].wait()

    commits: list[tuple[str, float]] = []
    text, compute, busy, updates = "", 0.0, 0, 0
    async with rt.captions(source(), **options) as s:
        async for u in s:
            commits.extend((w, u.audio_s + u.compute_s) for w in words(u.new))
            text, compute = u.committed, compute + u.compute_s
            busy, updates = busy + u.busy, updates + 1
            updated[0].set()
            updated[0] = anyio.Event()
    return {"commits": commits, "text": text, "compute_s": compute, "busy": busy, "updates": updates}


def parse_variant(spec: str) -> dict[str, Any]:
    """``NAME=VALUE,NAME=VALUE...`` (see :func:`caption_latency.parse_option`)."""
    return dict(parse_option(item) for item in filter(None, spec.split(",")))


async def run(args: argparse.Namespace) -> dict[str, Any]:
    paths = [Path(p) for p in args.audio] if args.audio else \
        [DATA / "long_40s.wav", DATA / "jfk.wav", *sorted(CLIPS.glob("*.wav"))]
    variants = {"default": parse_variant(args.option)} | {v: parse_variant(args.option + "," + v) for v in args.variant}
    rows = []
    record = Run(args, "python bench/caption_accuracy.py")
    async with aw.Runtime(args.model, precision=args.precision) as rt:
        refs = {}
        for p in paths:
            audio = aw.load_audio(p)
            res = await rt.transcribe(audio, word_timestamps=True)
            ends = [(normalize_word(w.word), float(w.end)) for s in res.segments for w in (s.words or [])]
            refs[p.name] = (audio, res.text, [(w, e) for w, e in ends if w])
        for name, options in variants.items():
            per_clip, lat, compute, audio_s, errors, n_words, busy, updates = {}, [], 0.0, 0.0, 0.0, 0, 0, 0
            for clip, (audio, text, ends) in refs.items():
                r = await lockstep(rt, audio, args.chunk_s, options)
                e, n = wer(r["text"], text), len(words(text))
                per_clip[clip] = {"wer": e, "text": r["text"]}
                errors, n_words = errors + e * n, n_words + n
                lat += commit_latencies(r["commits"], ends)
                compute, audio_s = compute + r["compute_s"], audio_s + audio.size / SAMPLE_RATE
                busy, updates = busy + r["busy"], updates + r["updates"]
            row = {"variant": name, "options": options, "pooled_wer": errors / max(1, n_words),
                   "per_clip": per_clip, "p50_s": pct(lat, 50), "p95_s": pct(lat, 95), "words_matched": len(lat),
                   "compute_per_audio_s": compute / audio_s, "busy_share": busy / max(1, updates)}
            rows.append(row)
            print(f"{name}: pooled WER {row['pooled_wer']:.3f}, lock-step p50 {row['p50_s']:.2f} s, "
                  f"p95 {row['p95_s']:.2f} s, compute {row['compute_per_audio_s']:.2f} s per audio s, "
                  f"busy {row['busy_share']:.0%}", flush=True)
    return {"model": args.model, "precision": args.precision, "chunk_s": args.chunk_s, "rows": rows,
            "offline": {k: v[1] for k, v in refs.items()}, **record.record(),
            "when": time.strftime("%Y-%m-%d %H:%M:%S %Z")}


def table(res: dict[str, Any]) -> str:
    clips = list(res["offline"])
    head = ["variant", "pooled WER", *clips, "lock-step p50 s", "p95 s", "compute / audio s", "busy updates"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in res["rows"]:
        cells = [r["variant"], f"{r['pooled_wer']:.3f}", *(f"{r['per_clip'][c]['wer']:.3f}" for c in clips),
                 f"{r['p50_s']:.2f}", f"{r['p95_s']:.2f}", f"{r['compute_per_audio_s']:.2f}",
                 f"{r['busy_share']:.0%}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="tiny.en")
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    p.add_argument("--audio", nargs="*", help="clips (default: long_40s.wav, jfk.wav, bench/eval_clips/*.wav)")
    p.add_argument("--chunk-s", type=float, default=0.5)
    p.add_argument("--option", default="", metavar="NAME=VALUE,...", help="options of every variant")
    p.add_argument("--variant", action="append", default=[], metavar="NAME=VALUE,...",
                   help="another set of captions() options, compared with the defaults (JSON values)")
    p.add_argument("--json")
    p.add_argument("--md")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    res = anyio.run(run, args)
    md = (f"# Caption accuracy, {res['model']} ({res['precision']}), {res['chunk_s']} s chunks in lock step\n\n"
          f"WER of the final committed text against offline `transcribe()` on the same runtime.\n\n{table(res)}\n")
    write_outputs(md, res, args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
