"""Live-caption benchmark: word commit latency of ``rt.captions()`` on real-time streams.

**Word commit latency** = the wall-clock moment a word is first committed (the update that commits it is in
the consumer's hands) minus the moment its audio ended in the stream. A word's end comes from offline
``rt.transcribe(audio, word_timestamps=True)`` on the same audio; the stream's committed words are matched to
the offline words by a longest-common-subsequence alignment of their normalised text (``difflib``), so a word
the stream heard differently has no latency (it counts in the WER instead). Audio is fed in true real time:
chunk ``k`` is handed over at ``start + (k + 1) * chunk``.

Reported, per number of concurrent streams N (started ``chunk / N`` apart): p50/p95/max word commit latency
over all streams' words, the words matched, the final committed text's WER against offline ``transcribe()``
(faster-whisper's default options: beam 5 with temperature fallback) and against offline greedy decoding,
and the largest N whose p95 is within ``--goal-p95``. ``--compare NAME=VALUE`` runs a second set of options
for every N right after the first, in the same process (e.g. the previous defaults, ``draft=0``,
``min_context_s=0``), so both are measured under the same load. Goals (issue 12, tiny.en, 2 cores, 0.5 s chunks):
1 stream p50 <= 1.5 s and p95 <= 3.0 s; >= 4 streams with p95 <= 3.3 s; WER <= 0.10.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python bench/caption_latency.py --max-streams 4 \\
        --json bench/results/captions_tiny.json --md bench/results/captions_tiny.md
"""

from __future__ import annotations

import argparse
import difflib
import json
import os
import time
from pathlib import Path
from typing import Any, AsyncIterator, Sequence

import anyio
import numpy as np

import aiowhisper_npu as aw
from aiowhisper_npu.audio.io import SAMPLE_RATE
from aiowhisper_npu.benchmark.harness import Run, markdown_table, pct, write_report
from aiowhisper_npu.transcription.metrics import normalize_word, word_error_rate as wer, words

DATA = Path(__file__).resolve().parent.parent / "tests" / "data"


def parse_option(item: str) -> tuple[str, Any]:
    """``NAME=VALUE`` of a captions() option: the value as JSON (numbers, booleans), else a string."""
    name, value = item.split("=", 1)
    try:
        return name, json.loads(value)
    except json.JSONDecodeError:
        return name, value


def write_outputs(md: str, res: dict[str, Any], args: argparse.Namespace) -> None:
    """Print the report; write it to ``--md`` and the results to ``--json`` when given."""
    write_report(md, res, md_path=args.md, json_path=args.json, indent=1)


async def one_stream(rt: aw.Runtime, audio: np.ndarray, t0: float, chunk_s: float,
                     options: dict[str, Any]) -> dict[str, Any]:
    """Feed ``audio`` in real time from ``t0``; return the commit times of the committed words and the text."""
    chunk = round(chunk_s * SAMPLE_RATE)

    async def source() -> AsyncIterator[np.ndarray]:
        for pos in range(0, audio.size, chunk):
            piece = audio[pos : pos + chunk]
            await anyio.sleep_until(t0 + (pos + piece.size) / SAMPLE_RATE)
            yield piece

    commits: list[tuple[str, float]] = []  # (normalised word, seconds after t0 it was committed)
    compute: list[float] = []
    tokens = accepted = 0
    buffers: list[float] = []
    skipped = busy = 0
    committed = ""
    async with rt.captions(source(), **{"update_every_s": chunk_s, **options}) as s:
        async for u in s:
            t = anyio.current_time() - t0
            commits.extend((w, t) for w in words(u.new))
            compute.append(u.compute_s)
            buffers.append(u.buffer_s)
            skipped += u.skipped
            busy += u.busy
            tokens += u.tokens
            accepted += u.draft_accepted
            committed = u.committed
    return {"commits": commits, "text": committed, "compute_p50_s": pct(compute, 50), "updates": len(compute),
            "max_buffer_s": max(buffers, default=0.0), "skipped": skipped, "tokens": tokens, "accepted": accepted,
            "busy": busy}


def commit_latencies(commits: list[tuple[str, float]], ref_words: list[tuple[str, float]]) -> list[float]:
    """Latency of each committed word that matches an offline word (LCS alignment)."""
    a = [w for w, _ in commits]
    b = [w for w, _ in ref_words]
    out = []
    for block in difflib.SequenceMatcher(None, a, b, autojunk=False).get_matching_blocks():
        for k in range(block.size):
            out.append(commits[block.a + k][1] - ref_words[block.b + k][1])
    return out


async def run_n(rt: aw.Runtime, audio: np.ndarray, ref: dict[str, Any], n: int, chunk_s: float,
                options: dict[str, Any]) -> dict[str, Any]:
    results: list[dict[str, Any]] = [{}] * n
    base = anyio.current_time() + 0.1

    async def one(i: int) -> None:
        results[i] = await one_stream(rt, audio, base + i * chunk_s / n, chunk_s, options)

    async with anyio.create_task_group() as tg:
        for i in range(n):
            tg.start_soon(one, i)
    lat = [x for r in results for x in commit_latencies(r["commits"], ref["words"])]
    n_ref = len(ref["words"])
    return {
        "streams": n, "words_matched": len(lat), "words_offline": n_ref * n,
        "p50_s": pct(lat, 50), "p95_s": pct(lat, 95), "max_s": max(lat, default=float("nan")),
        "wer_vs_transcribe": max(wer(r["text"], ref["text"]) for r in results),
        "wer_vs_greedy": max(wer(r["text"], ref["greedy"]) for r in results),
        "wer_vs_truth": max(wer(r["text"], ref["truth"]) for r in results) if ref["truth"] else float("nan"),
        "update_compute_p50_s": float(np.median([r["compute_p50_s"] for r in results])),
        "max_buffer_s": max(r["max_buffer_s"] for r in results),
        "updates": sum(r["updates"] for r in results), "skipped": sum(r["skipped"] for r in results),
        "busy_share": sum(r["busy"] for r in results) / max(1, sum(r["updates"] for r in results)),
        "draft_accepted": sum(r["accepted"] for r in results) / max(1, sum(r["tokens"] for r in results)),
        "text": results[0]["text"], "options": options,
    }


async def reference(rt: aw.Runtime, audio: np.ndarray, audio_name: str) -> dict[str, Any]:
    res = await rt.transcribe(audio, word_timestamps=True)
    greedy = await rt.transcribe(audio, beam_size=1, temperature=0.0)
    ws = [(normalize_word(w.word), float(w.end)) for s in res.segments for w in (s.words or [])]
    truth = json.loads((DATA / "clips.json").read_text()).get(audio_name)
    return {"text": res.text, "greedy": greedy.text, "words": [(w, e) for w, e in ws if w], "truth": truth}


TABLE = [("variant", "variant", ""), ("streams", "N", ""), ("p50_s", "p50 s", ".2f"), ("p95_s", "p95 s", ".2f"),
         ("max_s", "max s", ".2f"), ("words_matched", "words", ""),
         ("wer_vs_transcribe", "WER vs transcribe()", ".3f"), ("wer_vs_greedy", "WER vs greedy", ".3f"),
         ("wer_vs_truth", "WER vs spoken text", ".3f"),
         ("update_compute_p50_s", "update compute p50 s", ".2f"), ("max_buffer_s", "max buffer s", ".1f"),
         ("skipped", "coalesced", ""), ("busy_share", "busy updates", ".0%"),
         ("draft_accepted", "tokens from drafts", ".0%"), ("load", "load (1 min)", ".1f")]


def table(rows: list[dict[str, Any]]) -> str:
    return markdown_table(rows, TABLE)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="tiny.en")
    p.add_argument("--audio", default=str(DATA / "long_40s.wav"))
    p.add_argument("--chunk-s", type=float, default=0.5)
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16"],
                   help="the runtime's precision (the offline reference runs on the same runtime)")
    p.add_argument("--context", default="bucketed", choices=["bucketed", "full"])
    p.add_argument("--max-streams", type=int, default=4)
    p.add_argument("--streams", type=int, nargs="*", help="exact stream counts to run (default 1..max)")
    p.add_argument("--update-every-s", type=float, default=None, help="default: the chunk length")
    p.add_argument("--option", action="append", default=[], metavar="NAME=VALUE",
                   help="another captions() option (a JSON value or a string), e.g. trim_s=3")
    p.add_argument("--compare", action="append", default=[], metavar="NAME=VALUE",
                   help="also run every N with these options instead (interleaved, same process), e.g. the "
                        "previous defaults: --compare draft=0 --compare min_context_s=0")
    p.add_argument("--goal-p95", type=float, default=3.3)
    p.add_argument("--json")
    p.add_argument("--md")
    return p.parse_args(argv)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    record = Run(args, "python bench/caption_latency.py")
    audio = aw.load_audio(args.audio)
    options: dict[str, Any] = {"context": args.context}
    options.update(parse_option(item) for item in args.option)
    if args.update_every_s is not None:
        options["update_every_s"] = args.update_every_s
    variants = {"default" if not args.option else "options": options}
    if args.compare:
        other = dict(options)
        other.update(parse_option(item) for item in args.compare)
        variants["compared"] = other
    async with aw.Runtime(args.model, precision=args.precision) as rt:
        ref = await reference(rt, audio, Path(args.audio).name)
        await one_stream(rt, audio[: 3 * SAMPLE_RATE], anyio.current_time(), 10.0, options)  # warm-up
        rows = []
        for n in args.streams or range(1, args.max_streams + 1):
            for name, opts in variants.items():
                row = {"variant": name, **await run_n(rt, audio, ref, n, args.chunk_s, opts),
                       "load": os.getloadavg()[0]}
                print(f"{name} N={n}: p50 {row['p50_s']:.2f} s, p95 {row['p95_s']:.2f} s, "
                      f"WER {row['wer_vs_transcribe']:.3f}, load {row['load']:.1f}", flush=True)
                rows.append(row)
    ok = [r["streams"] for r in rows if r["p95_s"] <= args.goal_p95 and r["variant"] != "compared"]
    return {"model": args.model, "precision": args.precision, "audio": Path(args.audio).name,
            "audio_s": audio.size / SAMPLE_RATE, "chunk_s": args.chunk_s, "options": options, "variants": variants,
            "rows": rows, "offline": ref["text"],
            "offline_wer_vs_truth": wer(ref["text"], ref["truth"]) if ref["truth"] else None,
            "largest_n_within_goal": max(ok, default=0), "goal_p95_s": args.goal_p95,
            **record.record(), "when": time.strftime("%Y-%m-%d %H:%M:%S %Z")}


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    res = anyio.run(run, args)
    md = (f"# Live captions, {res['model']} ({res['precision']}), {res['audio']} ({res['audio_s']:.1f} s), "
          f"{res['chunk_s']} s chunks, variants {res['variants']}\n\n{table(res['rows'])}\n\n"
          f"Largest N with p95 <= {res['goal_p95_s']} s: "
          f"{res['largest_n_within_goal']}. Offline transcribe() WER vs the spoken text: "
          f"{res['offline_wer_vs_truth']}. Load average at the end: {res['machine']['load_avg_end']}.\n")
    write_outputs(md, res, args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
