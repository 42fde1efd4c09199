"""Shared fixtures: real models, committed speech clips, a CTranslate2 reference, event-loop backends."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import aiowhisper_npu as aw

DATA = Path(__file__).parent / "data"
CLIPS: dict[str, str] = json.loads((DATA / "clips.json").read_text())

# Async tests run on asyncio and on asyncio+uvloop (anyio's pytest plugin); some also on trio.
LOOPS = [pytest.param(("asyncio", {}), id="asyncio"),
         pytest.param(("asyncio", {"use_uvloop": True}), id="uvloop")]


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


class CT2Reference:
    """CTranslate2 fp32 encoder + greedy decoder over the same model directory (test-only peer)."""

    def __init__(self, model: aw.WhisperModel, model_dir: Path):
        import ctranslate2
        from tokenizers import Tokenizer

        self.ct2 = ctranslate2
        self.model = ctranslate2.models.Whisper(str(model_dir), compute_type="float32", intra_threads=2)
        self.tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        self.prompt = (["<|startoftranscript|>", "<|notimestamps|>"] if model.name.endswith(".en") else
                       ["<|startoftranscript|>", "<|en|>", "<|transcribe|>", "<|notimestamps|>"])

    def mel(self, window: np.ndarray) -> np.ndarray:
        """faster-whisper's log-mel of one 30 s window: an independent front end for the reference."""
        from faster_whisper.feature_extractor import FeatureExtractor

        fe = FeatureExtractor(feature_size=80)
        return fe(window, padding=0)[:, :3000].astype(np.float32)

    def encode(self, mel: np.ndarray) -> np.ndarray:
        sv = self.ct2.StorageView.from_array(np.ascontiguousarray(mel[None]))
        return np.array(self.model.encode(sv, to_cpu=True))[0]

    def decode(self, hidden: np.ndarray) -> str:
        sv = self.ct2.StorageView.from_array(np.ascontiguousarray(hidden[None], dtype=np.float32))
        res = self.model.generate(sv, [self.prompt], beam_size=1, max_length=200)
        ids = [i for i in res[0].sequences_ids[0] if i < 50257]
        return self.tokenizer.decode(ids).strip()


@pytest.fixture(scope="session")
def ct2_tiny(tiny: aw.WhisperModel) -> CT2Reference:
    return CT2Reference(tiny, tiny.path)  # a complete CTranslate2 directory (see registry.resolve_model_dir)


@pytest.fixture(scope="session")
def ct2_base(base: aw.WhisperModel) -> CT2Reference:
    return CT2Reference(base, base.path)


def rel_l2(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a.astype(np.float64) - b) / np.linalg.norm(b.astype(np.float64)))
