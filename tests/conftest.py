"""Shared fixtures: real models, committed speech clips, a CTranslate2 reference, event-loop backends.

The helpers behind them live in the ``tests.support`` package."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import aiowhisper_npu as aw
from tests.support import CLIPS, DATA
from tests.support.ct2_reference import CT2Reference
from tests.support.loops import LOOPS


@pytest.fixture(params=LOOPS)
def anyio_backend(request: pytest.FixtureRequest) -> Any:
    return request.param


@pytest.fixture(scope="session")
def tiny() -> aw.WhisperModel:
    return aw.load_model("tiny.en")


@pytest.fixture(scope="session")
def base() -> aw.WhisperModel:
    return aw.load_model("base")


@pytest.fixture(scope="session")
def clip_paths() -> dict[str, Path]:
    return {name: DATA / name for name in CLIPS}


@pytest.fixture(scope="session")
def ct2_tiny(tiny: aw.WhisperModel) -> CT2Reference:
    return CT2Reference(tiny, tiny.path)  # a complete CTranslate2 directory (see registry.resolve_model_dir)


@pytest.fixture(scope="session")
def ct2_base(base: aw.WhisperModel) -> CT2Reference:
    return CT2Reference(base, base.path)
