"""Per-step cost of the decoding logic (logit rules, search, cache reordering) against the decoder forward.

Runs :class:`aiowhisper_npu.decoder.generation.Generation` alone on one window of speech (encoded by the
runtime's encoder) for greedy, beam 5 and best-of-5 sampling, and times, per pass, ``forward`` and
``feed`` + ``next_pass`` separately, in process CPU time (robust on a shared machine) and wall time.
The figure to watch is the ratio of the two CPU times. Run on an idle machine::

    python bench/decoder_step.py --model tiny.en
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any, Sequence

import anyio
import numpy as np

import aiowhisper_npu as aw
from aiowhisper_npu.decoder import kernels as dk
from aiowhisper_npu.decoder.generation import Generation
from aiowhisper_npu.decoder.options import GenerationOptions
from aiowhisper_npu.decoder.tokenizer import Tokenizer

CLIP = Path(__file__).resolve().parent.parent / "tests" / "data" / "long_40s.wav"
CASES = {
    "greedy": dict(beam_size=1),
    "beam 5": dict(beam_size=5),
    "best of 5 (T=0.5)": dict(beam_size=1, sampling_topk=0, sampling_temperature=0.5, num_hypotheses=5, seed=0),
}


def measure(model: aw.WhisperModel, hidden: np.ndarray, max_length: int, repeats: int) -> list[dict[str, float]]:
    tok = Tokenizer.for_model(model.path, model.dims.n_vocab, language="en")
    dec = dk.prepare_decoder(model.decoder, model.dims)
    cross = dk.cross_cache(dec, hidden)
    rows = []
    for name, kw in CASES.items():
        opts = GenerationOptions(suppress_tokens=(-1,), max_length=max_length, **kw)  # type: ignore[arg-type]
        best: dict[str, float] = {}
        for _ in range(repeats):
            cpu = {"fwd": 0.0, "py": 0.0}
            wall = {"fwd": 0.0, "py": 0.0}
            passes = 0
            g = Generation(dec, cross, tok, list(tok.sot_sequence), opts)
            p = g.next_pass()
            while p is not None:
                c0, w0 = time.process_time(), time.perf_counter()
                out = dk.forward(dec, [p])[0]
                c1, w1 = time.process_time(), time.perf_counter()
                g.feed(out)
                p = g.next_pass()
                c2, w2 = time.process_time(), time.perf_counter()
                cpu["fwd"] += c1 - c0
                cpu["py"] += c2 - c1
                wall["fwd"] += w1 - w0
                wall["py"] += w2 - w1
                passes += 1
            row = {"passes": passes, "forward_cpu_ms": cpu["fwd"] * 1e3 / passes,
                   "logic_cpu_ms": cpu["py"] * 1e3 / passes, "forward_wall_ms": wall["fwd"] * 1e3 / passes,
                   "logic_wall_ms": wall["py"] * 1e3 / passes}
            if not best or row["logic_cpu_ms"] < best["logic_cpu_ms"]:
                best = row
        best["ratio"] = best["logic_cpu_ms"] / best["forward_cpu_ms"]
        rows.append({"case": name, **best})  # type: ignore[dict-item]
    return rows


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="tiny.en")
    ap.add_argument("--max-length", type=int, default=448, help="prompt plus generated tokens (default 448)")
    ap.add_argument("--repeats", type=int, default=3, help="runs per case; the fastest logic is kept")
    return ap


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Encode the clip's first window, then :func:`measure` the decoding cases on it."""
    model = aw.load_model(args.model)

    async def encode() -> np.ndarray:
        async with aw.Runtime(model) as rt:
            return (await rt.encode(str(CLIP))).hidden_states[0]

    hidden = anyio.run(encode)
    return {"model": args.model, "rows": measure(model, hidden, args.max_length, args.repeats)}


def render(res: dict[str, Any]) -> str:
    lines = [f"decoder step on {res['model']}, {CLIP.name} window 1 (per pass; CPU = process time)\n",
             "| case | passes | forward CPU ms | logic CPU ms | logic / forward | forward wall ms | logic wall ms |",
             "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['case']} | {r['passes']:.0f} | {r['forward_cpu_ms']:.2f} | {r['logic_cpu_ms']:.3f} | "
              f"{r['ratio']:.1%} | {r['forward_wall_ms']:.2f} | {r['logic_wall_ms']:.3f} |" for r in res["rows"]]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    print(render(run(build_parser().parse_args(argv))))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
