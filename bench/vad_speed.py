"""Speed of voice activity detection: ``aw.get_speech_timestamps`` beside faster-whisper's, on one core.

The input is ``--minutes`` of audio made from the committed clips (``tests/data``) with silences between
them (digital zeros and low noise, 0.5-4 s, seeded), so about a fifth is not speech. Each round times every
system once, in a shuffled order; the report gives the median wall and process-CPU time per call, the
same in seconds per hour of audio, and the segments each found. Ours runs with BLAS pinned to
``--threads`` (default 1); faster-whisper's onnxruntime session is single-threaded by construction.
Run on an idle machine::

    python bench/vad_speed.py --minutes 10 --rounds 5
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

import aiowhisper_npu as aw
from aiowhisper_npu.audio import silero
from aiowhisper_npu.benchmark.harness import Run, blas_limit, interleaved, markdown_table, pct, settle, write_report

DATA = Path(__file__).resolve().parent.parent / "tests" / "data"
CLIPS = ("jfk.wav", "long_40s.wav", "quick_fox.wav", "numbers.wav", "weather.wav", "door.wav",
         "de_weather.wav", "es_market.wav")


def make_audio(minutes: float, seed: int = 23) -> np.ndarray:
    """``minutes`` of the committed clips in a seeded order, each followed by 0.5-4 s of zeros or low noise."""
    rng = np.random.default_rng(seed)
    clips = [aw.load_audio(DATA / name) for name in CLIPS]
    n = int(minutes * 60 * aw.SAMPLE_RATE)
    parts, total = [], 0
    while total < n:
        clip = clips[int(rng.integers(len(clips)))]
        gap = int(rng.uniform(0.5, 4.0) * aw.SAMPLE_RATE)
        quiet = ((rng.standard_normal(gap) * 0.003).astype(np.float32) if rng.random() < 0.5
                 else np.zeros(gap, np.float32))
        parts += [clip, quiet]
        total += clip.size + gap
    return np.ascontiguousarray(np.concatenate(parts)[:n])


def systems(threads: int | None) -> dict[str, Callable[[np.ndarray], Any]]:
    """The timed calls: ours (whole and the network alone) and, when installed, faster-whisper's."""
    def ours(audio: np.ndarray) -> Any:
        with blas_limit(threads):
            return aw.get_speech_timestamps(audio)

    def ours_network(audio: np.ndarray) -> Any:
        with blas_limit(threads):
            return silero.speech_probabilities(audio)

    out: dict[str, Callable[[np.ndarray], Any]] = {"ours (Silero v6.2, numpy)": ours,
                                                   "ours: network only": ours_network}
    try:
        from faster_whisper.vad import get_speech_timestamps
    except ImportError:
        return out
    out["faster-whisper 1.2.1 (Silero v6, onnxruntime)"] = get_speech_timestamps
    return out


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=10.0, help="minutes of audio (default 10)")
    ap.add_argument("--rounds", type=int, default=5, help="timed rounds, each system once per round (default 5)")
    ap.add_argument("--threads", type=int, default=1, help="BLAS threads for ours (default 1; 0: leave as is)")
    ap.add_argument("--settle", type=float, default=0.2, help="seconds of rest before each timed call")
    ap.add_argument("--out", type=Path, default=None, help="write the report here (.md and .json)")
    return ap


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Time every system on the same audio, interleaved; return the run record and one row per system."""
    record = Run(args, command="bench/vad_speed.py")
    audio = make_audio(args.minutes)
    hours = audio.size / aw.SAMPLE_RATE / 3600
    calls = systems(args.threads or None)
    results: dict[str, Any] = {name: fn(audio) for name, fn in calls.items()}  # warm up, keep the output
    wall: dict[str, list[float]] = {name: [] for name in calls}
    cpu: dict[str, list[float]] = {name: [] for name in calls}
    for order in interleaved(list(calls), args.rounds):
        for name in order:
            settle(args.settle)
            w0, c0 = time.perf_counter(), time.process_time()
            calls[name](audio)
            wall[name].append(time.perf_counter() - w0)
            cpu[name].append(time.process_time() - c0)
    rows = []
    for name in calls:
        out = results[name]
        segments = len(out) if isinstance(out, list) else None
        speech = sum(s["end"] - s["start"] for s in out) / audio.size if isinstance(out, list) else None
        rows.append({"system": name, "wall_s": pct(wall[name], 50), "cpu_s": pct(cpu[name], 50),
                     "wall_s_per_hour": pct(wall[name], 50) / hours, "cpu_s_per_hour": pct(cpu[name], 50) / hours,
                     "segments": "" if segments is None else segments,
                     "speech_share": "" if speech is None else f"{speech:.1%}", "wall_all_s": wall[name]})
    return {**record.record(), "audio_s": audio.size / aw.SAMPLE_RATE, "rows": rows}


def render(res: dict[str, Any]) -> str:
    cols = [("system", "system", ""), ("wall_s", "wall s / call", ".3f"), ("cpu_s", "CPU s / call", ".3f"),
            ("wall_s_per_hour", "wall s / audio hour", ".2f"), ("cpu_s_per_hour", "CPU s / audio hour", ".2f"),
            ("segments", "segments", ""), ("speech_share", "speech", "")]
    m = res["machine"]
    head = (f"VAD speed on {res['audio_s'] / 60:.1f} min of audio (median of {res['settings']['rounds']} "
            f"interleaved rounds; ours on {res['settings']['threads'] or 'default'} BLAS thread(s)); "
            f"{m['cpu_model']}, {m['cpus']} CPUs, load {m['load_avg_start']} -> {m['load_avg_end']}\n")
    return head + "\n" + markdown_table(res["rows"], cols)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    res = run(args)
    out = args.out
    write_report(render(res), res, md_path=out.with_suffix(".md") if out else None,
                 json_path=out.with_suffix(".json") if out else None)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
