"""What every benchmark shares: the record of a run, percentiles, interleaved rounds and reports.

- :class:`Run`: when a run started, its command and settings, the machine (:func:`machine`: CPU model,
  cores, SIMD level), the load around it and the package versions.
- :func:`pct` and :func:`spread`: percentiles with linear interpolation, as ``numpy.percentile``.
- :func:`interleaved`: the order of each round, so that every candidate is timed in every round (A/B/A/B)
  and ratios come from one run; :func:`per_round` turns two such series into per-round ratios.
- :func:`markdown_table` and :func:`write_report`: a report printed as Markdown and saved as Markdown and JSON.
- :func:`speech_audio`: seconds of real speech; :func:`settle` and :func:`blas_limit` around a timed call.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import gc
import json
import os
import platform
import random
import time
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence, TypeVar

import numpy as np

from ..audio.io import SAMPLE_RATE, load_audio

__all__ = ["Run", "machine", "simd_level", "cpu_model", "load_avg", "versions", "blas_libraries", "pct",
           "spread", "per_round", "interleaved", "settle", "blas_limit", "markdown_table", "write_report",
           "to_jsonable", "speech_audio", "SPEECH_CLIPS"]

T = TypeVar("T")

_ROOT = Path(__file__).resolve().parents[2]
#: 16 kHz mono clips of (synthetic espeak-ng) speech committed with the repository, back to back
SPEECH_CLIPS = ("tests/data/long_40s.wav", "examples/hello.wav", "tests/data/quick_fox.wav",
                "tests/data/numbers.wav", "tests/data/weather.wav", "tests/data/door.wav")
_PACKAGED_SPEECH = Path(__file__).resolve().parents[1] / "data" / "hello.wav"
_ENV_PREFIXES = ("OPENBLAS_", "OMP_", "MKL_", "GOTO", "BLIS_", "CT2_")


# -- the machine -------------------------------------------------------------------------------------------
def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what ``platform`` knows."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def simd_level() -> str:
    """The widest x86 vector extension the kernels can use: ``AVX-512`` (with ``+BF16``, ``+VNNI`` when
    present), ``AVX2``, or ``none``; ``unknown`` where ``/proc/cpuinfo`` has no flags (not Linux x86)."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((set(line.split(":", 1)[1].split()) for line in f if line.startswith("flags")), None)
    except OSError:
        flags = None
    if flags is None:
        return "unknown"
    if {"avx512f", "avx512dq", "avx512vl", "avx512bw"} <= flags:
        extra = [name for flag, name in (("avx512_bf16", "BF16"), ("avx512_vnni", "VNNI")) if flag in flags]
        return "+".join(["AVX-512", *extra])
    return "AVX2" if {"avx2", "fma"} <= flags else "none"


def machine() -> dict[str, Any]:
    """The machine a run measures: ``cpu_model``, ``cpus``, ``simd`` (:func:`simd_level`), ``arch``, ``platform``."""
    return {"cpu_model": cpu_model(), "cpus": os.cpu_count(), "simd": simd_level(), "arch": platform.machine(),
            "platform": platform.platform()}


def load_avg() -> list[float] | None:
    """The 1, 5 and 15 minute load averages, or None where the OS has none."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (OSError, AttributeError):
        return None


def _version(mod: str) -> str | None:
    try:
        m = __import__(mod)
    except Exception:
        return None
    return str(getattr(m, "__version__", "?"))


def versions() -> dict[str, str | None]:
    """Versions of the package, Python and the libraries that steer the numbers (None when absent)."""
    from .. import __version__

    return {"aiowhisper_npu": __version__, "python": platform.python_version(), "numpy": np.__version__,
            **{m: _version(m) for m in ("anyio", "uvloop", "trio", "ctranslate2")}}


def blas_libraries() -> list[dict[str, Any]]:
    """The BLAS libraries numpy loaded (threadpoolctl): library, version, threads, core type, path."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return [{"note": "install threadpoolctl to see the BLAS library and its threads"}]
    return [{"library": i.get("internal_api"), "version": i.get("version"), "threads": i.get("num_threads"),
             "architecture": i.get("architecture"), "path": i.get("filepath")}
            for i in threadpool_info() if i.get("user_api") == "blas"]


def _cpu_snapshot() -> tuple[float, float, float] | None:
    """(system busy CPU seconds, this process's CPU seconds, monotonic time), or None off Linux."""
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    hz = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    busy = (sum(fields[:8]) - idle) / hz  # user..steal, without guest (already counted in user)
    t = os.times()
    return busy, t.user + t.system, time.monotonic()


class Run:
    """The record of one benchmark run, begun when it is made.

    ``record()`` returns ``created`` (ISO 8601 UTC of the start), ``command``, ``settings`` (the parsed
    options, or the dict given), ``machine`` (:func:`machine` plus ``load_avg_start``, ``load_avg_end`` and
    ``other_processes``: the CPU other processes used meanwhile, the noise gauge; see :meth:`other_processes`)
    and ``versions``.
    """

    def __init__(self, settings: dict[str, Any] | argparse.Namespace | None = None, command: str = ""):
        self.created = _dt.datetime.now(_dt.UTC).isoformat()
        # a dict is kept, not copied: a run may resolve its settings as it goes
        self.settings: dict[str, Any] = settings if isinstance(settings, dict) else dict(vars(settings or {}))
        self.command = command
        self.load_start = load_avg()
        self._cpu_start = _cpu_snapshot()

    def other_processes(self) -> dict[str, float] | None:
        """CPU used by *other* processes since the start, in core-seconds and % of all cores (None off Linux)."""
        end = _cpu_snapshot()
        if self._cpu_start is None or end is None:
            return None
        wall = end[2] - self._cpu_start[2]
        other = max(0.0, (end[0] - self._cpu_start[0]) - (end[1] - self._cpu_start[1]))
        cores = os.cpu_count() or 1
        return {"wall_s": round(wall, 2), "other_cpu_s": round(other, 2),
                "other_pct_of_machine": round(100 * other / (wall * cores), 1) if wall > 0 else 0.0}

    def machine(self) -> dict[str, Any]:
        """:func:`machine` with the load at the start and now, and the other processes' share meanwhile."""
        return {**machine(), "load_avg_start": self.load_start, "load_avg_end": load_avg(),
                "other_processes": self.other_processes()}

    def record(self) -> dict[str, Any]:
        """The run's header for a JSON result."""
        return {"created": self.created, "command": self.command, "settings": self.settings,
                "machine": self.machine(), "versions": versions()}

    @staticmethod
    def env() -> dict[str, str]:
        """Environment variables that steer BLAS, OpenMP and CTranslate2."""
        return {k: v for k, v in sorted(os.environ.items()) if k.startswith(_ENV_PREFIXES)}


# -- statistics --------------------------------------------------------------------------------------------
def pct(values: Sequence[float] | np.ndarray, q: float, empty: float = float("nan")) -> float:
    """The ``q``-th percentile of ``values`` (linear interpolation); ``empty`` when there are none."""
    a = np.asarray(values, dtype=np.float64)
    return float(np.percentile(a, q)) if a.size else empty


def spread(values: Sequence[float]) -> dict[str, float]:
    """``p50``, ``p95``, ``min`` and ``max`` of ``values`` (all 0.0 when there are none)."""
    return {"p50": pct(values, 50, 0.0), "p95": pct(values, 95, 0.0),
            "min": float(min(values)) if len(values) else 0.0, "max": float(max(values)) if len(values) else 0.0}


def per_round(a: Sequence[float], b: Sequence[float]) -> list[float]:
    """``a[i] / b[i]`` for each round ``i``: the ratios whose median is a speed ratio (never a ratio of medians)."""
    return [x / y for x, y in zip(a, b)]


def interleaved(names: Sequence[T], rounds: int, order: str = "shuffled", seed: int = 1) -> Iterator[list[T]]:
    """The order of ``names`` in each of ``rounds`` rounds, so that every name is timed once per round.

    ``shuffled``: each round a seeded shuffle of the previous round's order; ``fixed``: the given order every
    round (A B, A B); ``alternate``: the given order, then reversed (A B, B A).
    """
    if order not in ("shuffled", "fixed", "alternate"):
        raise ValueError(f"order must be shuffled, fixed or alternate, not {order!r}")
    rng = random.Random(seed)
    current = list(names)
    for r in range(rounds):
        if order == "shuffled":
            rng.shuffle(current)
            yield list(current)
        else:
            yield list(current) if order == "fixed" or r % 2 == 0 else current[::-1]


def settle(seconds: float) -> None:
    """Collect garbage and let spinning BLAS/OpenMP worker threads go idle before the next timed call."""
    gc.collect()
    if seconds > 0:
        time.sleep(seconds)


@contextlib.contextmanager
def blas_limit(threads: int | None) -> Iterator[None]:
    """Pin numpy's BLAS to ``threads`` for one measured call (no-op without threadpoolctl or threads).

    Needed because :class:`~aiowhisper_npu.devices.cpu.CpuDevice` sets a *process-wide* BLAS limit when it
    loads, so with several runtimes open the last one opened would decide everyone's thread count.
    """
    if not threads:
        yield
        return
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        yield
        return
    with threadpool_limits(limits=threads, user_api="blas"):
        yield


# -- reports -----------------------------------------------------------------------------------------------
def markdown_table(rows: Sequence[Mapping[str, Any]], cols: Sequence[tuple[str, str, str]]) -> str:
    """A Markdown table: one column per ``(key, header, format spec)``; ``""`` as spec prints ``str(value)``,
    a key a row lacks leaves its cell empty."""
    head = "| " + " | ".join(c[1] for c in cols) + " |"
    sep = "|" + "|".join("---" for _ in cols) + "|"
    body = ["| " + " | ".join("" if k not in r else format(r[k], f) if f else str(r[k]) for k, _, f in cols)
            + " |" for r in rows]
    return "\n".join([head, sep, *body])


def to_jsonable(x: Any) -> Any:
    """``json.dumps``'s ``default``: numpy scalars and arrays as numbers and lists, anything else as a string."""
    if isinstance(x, (np.floating, np.integer, np.bool_)):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    return str(x)


def write_report(md: str, data: Any, *, md_path: str | os.PathLike[str] | None = None,
                 json_path: str | os.PathLike[str] | None = None, indent: int = 2, echo: bool = True) -> None:
    """Print the Markdown report ``md`` (unless ``echo`` is false); write it to ``md_path`` and ``data`` as
    JSON to ``json_path`` when given (parent folders are made)."""
    if echo:
        print(md)
    for path, text in ((md_path, md), (json_path, None)):
        if path:
            p = Path(path)
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_text(text if text is not None else json.dumps(data, indent=indent, default=to_jsonable) + "\n")


# -- inputs ------------------------------------------------------------------------------------------------
def speech_audio(seconds: float) -> np.ndarray:
    """``seconds`` of real speech, float32 16 kHz: :data:`SPEECH_CLIPS` back to back (in a source checkout),
    else the package's own ``data/hello.wav``, repeated as needed."""
    clips = [load_audio(_ROOT / c) for c in SPEECH_CLIPS if (_ROOT / c).exists()]
    if not clips:
        clips = [load_audio(_PACKAGED_SPEECH)]
    pool = np.concatenate(clips)
    n = int(round(seconds * SAMPLE_RATE))
    reps = -(-n // pool.size)
    return np.ascontiguousarray(np.tile(pool, reps)[:n], dtype=np.float32)
