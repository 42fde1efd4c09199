"""What ``aiowhisper-npu serve`` is configured with: one frozen :class:`ServerConfig`."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

__all__ = ["ServerConfig", "API_KEY_ENV"]

#: The environment variable that holds the API key when ``--api-key`` is not given.
API_KEY_ENV = "AIOWHISPER_API_KEY"


@dataclass(frozen=True)
class ServerConfig:
    """The server's settings (the ``serve`` command's flags).

    Args:
        model: model name or directory, opened once in the app's lifespan.
        backend: ``cpu``, ``sim`` or ``xrt``.
        host, port: where to listen (``port=0``: an ephemeral port, chosen when the socket is bound).
        api_key: the Bearer key clients must send; ``None``: the server is open.
        max_upload_mb: the largest upload, in MiB (413 above it).
        max_queue: HTTP transcriptions admitted at once (running or waiting); more get 503 + Retry-After.
        max_streams: WebSocket streams at once; more are closed with 1013 (try again later).
        beam_size: the decoder's beam for HTTP transcriptions (faster-whisper's default 5; 1 is greedy).
        shutdown_timeout_s: on SIGTERM, how long in-flight requests and streams may take to finish.
        stream_idle_timeout_s: a stream that sends no frame for this long is closed (1008).
        stream_send_timeout_s: a stream whose client does not take a message for this long is dropped.
        stream_max_frame_bytes: the largest WebSocket message (larger: closed with 1009 by the server).
        stream_queue_frames: audio frames buffered per stream before the server stops reading the socket.
        warmup: run one tiny transcription at start-up, so the first request does not pay for building
            the decoder.
        runtime_options: further :class:`~aiowhisper_npu.Runtime` keywords (``pipeline_depth``, ``lanes``,
            ``tile_rows``, ``manifest``, ...).
    """

    model: str = "tiny.en"
    backend: str = "cpu"
    host: str = "127.0.0.1"
    port: int = 8000
    api_key: str | None = None
    max_upload_mb: float = 100.0
    max_queue: int = 16
    max_streams: int = 8
    beam_size: int = 5
    shutdown_timeout_s: float = 30.0
    stream_idle_timeout_s: float = 30.0
    stream_send_timeout_s: float = 10.0
    stream_max_frame_bytes: int = 1 << 20
    stream_queue_frames: int = 64
    warmup: bool = True
    runtime_options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.max_upload_mb <= 0:
            raise ValueError(f"max_upload_mb must be > 0, got {self.max_upload_mb}")
        for name in ("max_queue", "max_streams", "beam_size", "stream_queue_frames"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("shutdown_timeout_s", "stream_idle_timeout_s", "stream_send_timeout_s"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.api_key is not None and not self.api_key:
            raise ValueError("api_key must not be empty (leave it unset for an open server)")

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)

    @classmethod
    def from_env(cls, api_key: str | None = None, **kwargs: Any) -> ServerConfig:
        """A config whose key is ``api_key``, else ``$AIOWHISPER_API_KEY`` when set and non-empty."""
        key = api_key if api_key else (os.environ.get(API_KEY_ENV) or None)
        return cls(api_key=key, **kwargs)
