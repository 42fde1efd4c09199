"""Helpers shared by the tests (a package: ``from tests.support import DATA``; pytest puts the repository
root on ``sys.path``, see ``pythonpath`` in pyproject.toml).

Here: the committed clips and the repository's paths, and the relative L2 distance the accuracy checks use.
Modules: :mod:`.loops` (the event loops the async tests run on, live tasks, hang guards), :mod:`.server`
(``aiowhisper-npu serve`` as a real process), :mod:`.ct2_reference` (CTranslate2 as the encoder and decoder
reference), :mod:`.ct2_backend` (our seek loop's decoder protocol over CTranslate2), :mod:`.fake_ct2` (a
scripted stand-in for CTranslate2's Whisper), :mod:`.generation_peer` (our decoder and CTranslate2's side by
side). The fixtures themselves stay in ``tests/conftest.py``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]  # the repository root (the working tree under test)
DATA = ROOT / "tests" / "data"
CLIPS: dict[str, str] = json.loads((DATA / "clips.json").read_text())  # committed clip -> its text


def rel_l2(a: np.ndarray, b: np.ndarray) -> float:
    """``|a - b| / |b|`` in float64."""
    return float(np.linalg.norm(a.astype(np.float64) - b) / np.linalg.norm(b.astype(np.float64)))


__all__ = ["CLIPS", "DATA", "ROOT", "rel_l2"]
