"""The bundled latency benchmark from a source checkout: ``python bench/latency.py`` is ``aiowhisper-npu bench``.

The benchmark itself ships with the package (:mod:`aiowhisper_npu.benchmark.latency`); its JSON schema is
``bench/bench_schema.md``. Run it with the machine's BLAS defaults, e.g.::

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python bench/latency.py --model base --windows 1 --repeats 7
"""

from __future__ import annotations

import sys
from typing import Sequence

from aiowhisper_npu.benchmark import latency
from aiowhisper_npu.cli import run_async


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` (default: the command line) and run the benchmark; returns an exit code."""
    return latency.main(list(sys.argv[1:] if argv is None else argv), run_async)


if __name__ == "__main__":
    raise SystemExit(main())
