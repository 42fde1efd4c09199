"""aiowhisper_npu: an asyncio Whisper recognizer, its encoder on AMD NPUs (XRT) or CPUs.

    import aiowhisper_npu as aw
    async with aw.Runtime("tiny.en") as rt:
        out = await rt.encode("speech.wav")
        out.hidden_states  # (n_windows, 1500, d_model) float32
        print((await rt.transcribe("speech.wav")).text)

    with aw.Runtime.sync("tiny.en") as rt:  # blocking, from any thread
        out = rt.encode("speech.wav")
"""

from __future__ import annotations

__version__ = "0.1.0"

from .audio.io import SAMPLE_RATE, load_audio, validate_audio
from .audio.mel import log_mel_spectrogram, log_mel_windows
from .audio.vad import SpeechTimestampsMap, VadOptions, collect_chunks, get_speech_timestamps
from .decoder.tokenizer import Tokenizer
from .deprecation import renamed_module_attrs
from .devices.manifest import ManifestError
from .errors import AiowhisperError, AudioError, BackendUnavailable, DeviceError, ModelError
from .models.loading import load_model
from .models.model import ModelDimensions, WhisperModel
from .pipeline.pool import BufferPool, PoolStats
from .pipeline.stats import PipelineStats, StageEvent
from .runtime.encoder import Encoder
from .runtime.recognizer import Recognizer
from .runtime.runtime import EncoderOutput, Runtime
from .runtime.sync import SyncRuntime
from .runtime.transcriber import SegmentStream
from .streaming.captions import CaptionSegment, CaptionStream, CaptionUpdate
from .streaming.input import StreamLag
from .streaming.stream import EncodeStream, StreamUpdate
from .transcription.metrics import word_error_rate
from .transcription.options import TranscriptionOptions
from .transcription.protocol import Window, WindowRecognizer
from .transcription.results import Segment, TranscriptionInfo, TranscriptionResult, Word

__all__ = [
    "__version__", "SAMPLE_RATE", "load_audio", "validate_audio", "log_mel_spectrogram", "log_mel_windows",
    "load_model", "ModelDimensions", "WhisperModel", "Runtime", "SyncRuntime", "EncoderOutput", "PipelineStats",
    "StageEvent", "BufferPool", "PoolStats", "AiowhisperError", "AudioError", "ModelError",
    "BackendUnavailable", "DeviceError", "ManifestError", "TranscriptionOptions", "TranscriptionResult",
    "TranscriptionInfo", "SegmentStream", "Segment", "Word", "Tokenizer", "CaptionStream", "CaptionUpdate",
    "CaptionSegment", "word_error_rate", "EncodeStream", "StreamUpdate", "StreamLag", "Encoder", "Recognizer",
    "Window", "WindowRecognizer",
    "VadOptions", "get_speech_timestamps", "collect_chunks", "SpeechTimestampsMap",
]

# Renamed; the old names warn (DeprecationWarning) for one release.
__getattr__ = renamed_module_attrs(__name__, {"AudioStream": "EncodeStream", "TranscriptionStream": "SegmentStream"})

