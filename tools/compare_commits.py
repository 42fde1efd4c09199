"""Prove that two revisions compute the same numbers: encoder hidden states, decoder logits and transcripts.

    python tools/compare_commits.py BASE_REV NEW_REV [--models tiny.en,base] [--clips a.wav,b.wav]

For each revision the script checks it out into a temporary git worktree, builds the C extensions in place
(``python setup.py -q build_ext --inplace``) and, in a fresh Python process whose working directory is that
worktree (so it imports that tree's package), computes on the committed clips (every ``tests/data`` clip
listed in ``clips.json`` or ``speech.json``), for fp32 and bf16 and each model:

* ``encoder``: the hidden states of every 30 s window, ``await rt.encode(path)``;
* ``logits``: per window, the decoder's logits for a fixed prompt (the start-of-transcript sequence,
  ``<|notimestamps|>`` and the first tokens of the clip's text): the last positions of the prefill, then a few
  single-token steps against the KV cache (``prepare_decoder`` / ``cross_cache`` / ``KVCache`` / ``forward``);
* ``beam5``, ``greedy``, ``greedy+words``: ``await rt.transcribe(path, ...)`` with ``beam_size=5``,
  ``beam_size=1`` and ``beam_size=1, word_timestamps=True``: every segment's fields and the info's language.

Each revision's results are saved (``--out``, default a temporary directory) as ``<sha>-...npz`` and ``.json``;
with ``--reuse`` a later run reads them back for an unchanged revision and settings. Then every item is printed
as ``identical`` or with its maximum absolute difference; the exit status is 0 only if all are bit-identical.

The temperature fallback re-decodes a window by sampling (temperature > 0) from an unseeded generator; the
worker seeds every ``numpy.random.default_rng()`` made without a seed with 0, so that those draws repeat too. A
transcript that sampled and still differs (the draws were made some other way) is reported as ``sampled``, and
not counted as a difference.

It uses public entry points (``aiowhisper_npu.Runtime``, ``load_model``, ``Tokenizer``) and, for the logits, the
decoder's forward pass, looked up by name in the modules that have held it, so it runs across refactors.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

PRECISIONS = ("fp32", "bf16")
PROMPT_TEXT_TOKENS = 8  # text tokens after the start-of-transcript sequence, from the clip's own text
PREFILL_POSITIONS = 4  # the prefill's last positions whose logits are kept
STEPS = 4  # single-token steps after the prefill
TRANSCRIPTS: dict[str, dict[str, Any]] = {
    "beam5": {"beam_size": 5},
    "greedy": {"beam_size": 1},
    "greedy+words": {"beam_size": 1, "word_timestamps": True},
}
# Where the decoder's forward pass has lived, newest first: (module, names it must hold).
FORWARD_MODULES = ("aiowhisper_npu.decoder.kernels", "aiowhisper_npu.decoder.forward", "aiowhisper_npu.decoder")
CACHE_MODULES = ("aiowhisper_npu.decoder.cache", "aiowhisper_npu.decoder.kernels", "aiowhisper_npu.decoder")
NATIVE = ("_fastmath", "_gemm", "_gemm_bf16", "_attention", "_gemv")


# -- the worker: runs inside one revision's worktree ---------------------------------------------------------
def _find(modules: tuple[str, ...], names: tuple[str, ...]) -> dict[str, Any]:
    """``names`` from the first of ``modules`` that has them all."""
    tried = []
    for mod_name in modules:
        try:
            mod = importlib.import_module(mod_name)
        except ImportError as exc:
            tried.append(f"{mod_name}: {exc}")
            continue
        if all(hasattr(mod, n) for n in names):
            return {n: getattr(mod, n) for n in names}
        tried.append(f"{mod_name}: lacks {[n for n in names if not hasattr(mod, n)]}")
    raise ImportError(f"none of {modules} has {names}: {'; '.join(tried)}")


def _segment(seg: Any) -> dict[str, Any]:
    out = {k: getattr(seg, k) for k in ("id", "seek", "start", "end", "text", "tokens", "avg_logprob",
                                         "compression_ratio", "no_speech_prob", "temperature")}
    out["tokens"] = [int(t) for t in out["tokens"]]
    words = getattr(seg, "words", None)
    out["words"] = None if words is None else [[w.start, w.end, w.word, w.probability] for w in words]
    return out


def _logits(model: Any, precision: str, hidden: np.ndarray, text: str) -> np.ndarray:
    """(PREFILL_POSITIONS + STEPS, n_vocab) logits of a fixed prompt against one window's hidden states."""
    import aiowhisper_npu as aw

    fwd = _find(FORWARD_MODULES, ("prepare_decoder", "cross_cache", "forward", "Pass"))
    kv = _find(CACHE_MODULES, ("KVCache",))["KVCache"]
    d = model.dims
    dec = fwd["prepare_decoder"](model.decoder, d, precision)
    cache = kv(fwd["cross_cache"](dec, hidden), d.n_text_layer, d.n_text_head, d.text_head_dim, d.n_text_ctx)
    tok = aw.Tokenizer.for_model(model.path, d.n_vocab, language="en")
    words = tok.encode(" " + text)
    prompt = [*tok.sot_sequence, tok.no_timestamps, *words[:PROMPT_TEXT_TOKENS]]
    steps = (words[PROMPT_TEXT_TOKENS:] + [tok.eot] * STEPS)[:STEPS]
    at = tuple(range(len(prompt) - PREFILL_POSITIONS, len(prompt)))
    rows = [fwd["forward"](dec, [fwd["Pass"](cache, np.array([prompt]), logits_at=at)])[0].logits[0]]
    for t in steps:
        rows.append(fwd["forward"](dec, [fwd["Pass"](cache, np.array([[t]]))])[0].logits[0])
    return np.concatenate(rows).astype(np.float32, copy=False)


def worker(models: list[str], clips: list[str], npz_path: str, json_path: str) -> None:
    """Compute every item in this process's working directory (one revision's tree) and save them."""
    sys.path.insert(0, os.getcwd())
    unseeded = np.random.default_rng
    np.random.default_rng = lambda seed=None: unseeded(0 if seed is None else seed)  # reproducible fallback draws
    import anyio

    import aiowhisper_npu as aw

    root = Path.cwd()
    pkg = Path(aw.__file__).resolve()
    if root.resolve() not in pkg.parents:
        raise SystemExit(f"imported {pkg}, not the package of {root}")
    texts = {**_clip_texts(root / "tests" / "data")}
    arrays: dict[str, Any] = {}  # (np.savez's stub takes **dict[str, ndarray] for its allow_pickle)
    doc: dict[str, Any] = {"package": str(pkg), "native": {}, "transcripts": {}, "errors": {}}
    for name in NATIVE:
        try:
            importlib.import_module(f"aiowhisper_npu.native.{name}")
            doc["native"][name] = True
        except ImportError:
            doc["native"][name] = False

    async def run() -> None:
        for model_name in models:
            model = aw.load_model(model_name)
            for precision in PRECISIONS:
                async with aw.Runtime(model, precision=precision) as rt:
                    for clip in clips:
                        path = root / "tests" / "data" / clip
                        key = f"{model_name}|{precision}|{clip}"
                        print(f"  {key}", file=sys.stderr, flush=True)
                        try:
                            hidden = (await rt.encode(path)).hidden_states
                            arrays[f"{key}|encoder"] = hidden
                        except Exception as exc:
                            doc["errors"][f"{key}|encoder"] = repr(exc)
                            continue
                        try:
                            arrays[f"{key}|logits"] = np.stack([_logits(model, precision, w, texts[clip])
                                                                for w in hidden])
                        except Exception as exc:
                            doc["errors"][f"{key}|logits"] = repr(exc)
                        for kind, options in TRANSCRIPTS.items():
                            try:
                                res = await rt.transcribe(path, **options)
                                doc["transcripts"][f"{key}|{kind}"] = {
                                    "language": res.info.language, "duration": res.info.duration,
                                    "segments": [_segment(s) for s in res.segments]}
                            except Exception as exc:
                                doc["errors"][f"{key}|{kind}"] = repr(exc)

    anyio.run(run)
    np.savez(npz_path, **arrays)
    Path(json_path).write_text(json.dumps(doc, indent=1))


# -- the driver ----------------------------------------------------------------------------------------------
def _clip_texts(data: Path) -> dict[str, str]:
    """Every listed clip and its spoken text: ``clips.json`` (English) and ``speech.json``."""
    out: dict[str, str] = {}
    if (data / "clips.json").exists():
        out.update(json.loads((data / "clips.json").read_text()))
    if (data / "speech.json").exists():
        out.update({k: v["text"] for k, v in json.loads((data / "speech.json").read_text()).items()})
    return {k: v for k, v in out.items() if (data / k).exists()}


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True).stdout.strip()


def compute(repo: Path, rev: str, models: list[str], clips: list[str] | None, out: Path, role: str,
            reuse: bool) -> tuple[dict, dict]:
    """One revision's results, computed in a temporary worktree (or, with ``reuse``, read from ``out``)."""
    sha = _git(repo, "rev-parse", "--verify", f"{rev}^{{commit}}")
    with tempfile.TemporaryDirectory(prefix=f"compare-{sha[:9]}-") as tmp:
        tree = Path(tmp) / "tree"
        _git(repo, "worktree", "add", "--detach", "--force", str(tree), sha)
        try:
            names = sorted(_clip_texts(tree / "tests" / "data")) if clips is None else clips
            settings = json.dumps([sha, models, names, PRECISIONS, PROMPT_TEXT_TOKENS, PREFILL_POSITIONS, STEPS,
                                   TRANSCRIPTS])
            prefix = f"{sha[:12]}-{hashlib.sha1(settings.encode()).hexdigest()[:8]}"
            saved = [p for p in sorted(out.glob(f"{prefix}-*.npz")) if p.with_suffix(".json").exists()]
            npz = saved[0] if reuse and saved else out / f"{prefix}-{role}.npz"
            js = npz.with_suffix(".json")
            if reuse and saved:
                print(f"{rev} ({sha[:9]}): reusing {npz} and its .json", flush=True)
            else:
                print(f"{rev} ({sha[:9]}): building the C extensions in {tree}", flush=True)
                subprocess.run([sys.executable, "setup.py", "-q", "build_ext", "--inplace"], cwd=tree, check=True,
                               stdout=subprocess.DEVNULL)
                print(f"{rev} ({sha[:9]}): computing {len(names)} clips x {models} x {PRECISIONS}", flush=True)
                subprocess.run([sys.executable, str(Path(__file__).resolve()), "--worker", ",".join(models),
                                ",".join(names), str(npz), str(js)], cwd=tree, check=True)
        finally:
            _git(repo, "worktree", "remove", "--force", str(tree))
    with np.load(npz) as z:
        arrays = {k: z[k] for k in z.files}
    return arrays, json.loads(js.read_text())


def _diff(a: Any, b: Any) -> float | None:
    """Max abs difference of two equal-shaped numbers or arrays; ``None`` when they cannot be compared."""
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape or a.dtype.kind not in "fiub" or b.dtype.kind not in "fiub":
        return None
    if a.size == 0:
        return 0.0
    return float(np.nanmax(np.abs(a.astype(np.float64) - b.astype(np.float64)), initial=0.0))


def _bit_identical(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and a.dtype == b.dtype and a.tobytes() == b.tobytes()


def _sampled(t: dict | None) -> bool:
    return t is not None and any((s["temperature"] or 0.0) > 0.0 for s in t["segments"])


def _transcript_diff(a: dict, b: dict) -> str:
    """What differs between two transcripts ("" if nothing)."""
    if a["language"] != b["language"]:
        return f"language {a['language']!r} vs {b['language']!r}"
    if a["duration"] != b["duration"]:
        return f"duration {a['duration']} vs {b['duration']}"
    if len(a["segments"]) != len(b["segments"]):
        return f"{len(a['segments'])} vs {len(b['segments'])} segments"
    for i, (sa, sb) in enumerate(zip(a["segments"], b["segments"])):
        for k in sorted(set(sa) | set(sb)):
            if sa.get(k) != sb.get(k):
                d = _diff(sa.get(k), sb.get(k)) if k not in ("text", "words") else None
                return f"segment {i} {k}: " + (f"max abs diff {d:.3g}" if d is not None else
                                                f"{sa.get(k)!r} vs {sb.get(k)!r}")
    return ""


def compare(base: tuple[dict, dict], new: tuple[dict, dict]) -> bool:
    """Print every item; True if all are bit-identical."""
    (arr_a, doc_a), (arr_b, doc_b) = base, new
    ok = True
    if doc_a["native"] != doc_b["native"]:
        print(f"native extensions differ: {doc_a['native']} vs {doc_b['native']}")
        ok = False
    elif not all(doc_a["native"].values()):
        print(f"note: not every C extension built: {doc_a['native']}")
    for key in sorted(set(doc_a["errors"]) | set(doc_b["errors"])):
        print(f"{key}: ERROR base={doc_a['errors'].get(key)} new={doc_b['errors'].get(key)}")
        ok = False
    identical = sampled = 0
    for key in sorted(set(arr_a) | set(arr_b)):
        if key not in arr_a or key not in arr_b:
            print(f"{key}: only in {'base' if key in arr_a else 'new'}")
            ok = False
        elif _bit_identical(arr_a[key], arr_b[key]):
            print(f"{key}: identical {arr_a[key].shape}")
            identical += 1
        else:
            d = _diff(arr_a[key], arr_b[key])
            print(f"{key}: DIFFERS " + (f"max abs diff {d:.3g}" if d is not None else
                                        f"{arr_a[key].shape} {arr_a[key].dtype} vs {arr_b[key].shape} "
                                        f"{arr_b[key].dtype}"))
            ok = False
    ta, tb = doc_a["transcripts"], doc_b["transcripts"]
    for key in sorted(set(ta) | set(tb)):
        a, b = ta.get(key), tb.get(key)
        if a is None or b is None:
            print(f"{key}: only in {'base' if a is not None else 'new'}")
            ok = False
        elif (why := _transcript_diff(a, b)) == "":
            print(f"{key}: identical ({len(a['segments'])} segments)")
            identical += 1
        elif _sampled(a) or _sampled(b):
            print(f"{key}: sampled (a window fell back to temperature > 0, drawn differently): {why}")
            sampled += 1
        else:
            print(f"{key}: DIFFERS {why}")
            ok = False
    print(f"{identical} items identical, {sampled} sampled (not comparable); "
          + ("ALL BIT-IDENTICAL" if ok else "NOT IDENTICAL"))
    return ok


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--worker"]:
        model_arg, clip_arg, npz, js = argv[1:]
        worker(model_arg.split(","), clip_arg.split(","), npz, js)
        return 0
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("base", help="base revision (e.g. main)")
    p.add_argument("new", help="new revision (e.g. HEAD)")
    p.add_argument("--models", default="tiny.en", help="comma-separated model names (default: tiny.en)")
    p.add_argument("--clips", default=None, help="comma-separated tests/data clips (default: every listed one)")
    p.add_argument("--out", type=Path, default=None, help="where to keep each revision's .npz/.json results")
    p.add_argument("--reuse", action="store_true",
                   help="reuse results saved in --out for the same revision and settings (never for NEW == BASE)")
    p.add_argument("--repo", type=Path, default=Path.cwd(), help="the git repository (default: the cwd)")
    args = p.parse_args(argv)
    out = args.out or Path(tempfile.gettempdir()) / "aiowhisper-compare"
    out.mkdir(parents=True, exist_ok=True)
    repo = Path(_git(args.repo, "rev-parse", "--show-toplevel"))
    models = args.models.split(",")
    clips = args.clips.split(",") if args.clips else None
    same = _git(repo, "rev-parse", args.base) == _git(repo, "rev-parse", args.new)
    base = compute(repo, args.base, models, clips, out, "base", args.reuse)
    new = compute(repo, args.new, models, clips, out, "new", args.reuse and not same)
    return 0 if compare(base, new) else 1


if __name__ == "__main__":
    sys.exit(main())
