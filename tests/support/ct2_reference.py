"""CTranslate2 as the reference for our encoder and decoder (test-only peers over the same model directory)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

import aiowhisper_npu as aw
from aiowhisper_npu.decoder.tokenizer import Tokenizer
from tests.support import DATA


class CT2Reference:
    """CTranslate2 fp32 encoder + greedy decoder over the same model directory (test-only peer)."""

    def __init__(self, model: aw.WhisperModel, model_dir: Path):
        import ctranslate2
        import tokenizers

        self.ct2 = ctranslate2
        self.model = ctranslate2.models.Whisper(str(model_dir), compute_type="float32", intra_threads=2)
        self.tokenizer = tokenizers.Tokenizer.from_file(str(model_dir / "tokenizer.json"))
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


class GreedyReference:
    """CTranslate2's encoder output and greedy decode (with per-step logits) of one 30 s window."""

    def __init__(self, model: aw.WhisperModel, clip: str):
        import ctranslate2
        from faster_whisper.feature_extractor import FeatureExtractor

        audio = aw.load_audio(DATA / clip)[: 30 * 16000]
        mel = FeatureExtractor(feature_size=80)(audio, padding=0)[:, :3000].astype(np.float32)
        ct = ctranslate2.models.Whisper(str(model.path), compute_type="float32", intra_threads=2)
        self.encoder_output = np.array(ct.encode(ctranslate2.StorageView.from_array(mel[None]), to_cpu=True))[0]
        tok = Tokenizer.for_model(model.path, model.dims.n_vocab, language="en")
        self.prompt = [*tok.sot_sequence, tok.no_timestamps]
        res = ct.generate(ctranslate2.StorageView.from_array(self.encoder_output[None]), [self.prompt],
                          beam_size=1, return_logits_vocab=True, suppress_blank=False, suppress_tokens=[])[0]
        self.tokens = list(res.sequences_ids[0])
        self.logits = [np.array(x) for x in res.logits[0]]
