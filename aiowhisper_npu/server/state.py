"""What the routes of one app share: :class:`ServerState` (the runtime, admission, open streams, and the
shutdown drain) and :func:`server_state`, which finds it from a request or a WebSocket."""

from __future__ import annotations

import logging
from typing import Protocol

import anyio
from starlette.requests import HTTPConnection

from ..runtime.runtime import Runtime
from .config import ServerConfig
from .errors import APIError
from .limits import Admission

__all__ = ["Drainable", "ServerState", "server_state"]

log = logging.getLogger("aiowhisper_npu.server")


class Drainable(Protocol):
    """What the drain needs of an open WebSocket stream."""

    def request_stop(self) -> None: ...


class ServerState:
    """What the routes of one app share. Created by :func:`~.app.create_app`; lives in ``app.state.server``."""

    def __init__(self, config: ServerConfig):
        self.config = config
        self.runtime: Runtime | None = None
        self.admission = Admission(config.max_queue)
        self.streams: set[Drainable] = set()
        self.streams_served = 0
        self.transcribing = 0  # HTTP requests past their upload, in rt.transcribe
        self.requests_abandoned = 0  # transcriptions cancelled because their client disconnected
        self.draining = False
        self._streams_gone: anyio.Event | None = None

    @property
    def model_id(self) -> str:
        rt = self.runtime
        return rt.model.name if rt is not None and rt.model is not None else self.config.model

    def require_runtime(self) -> Runtime:
        """The open runtime; 503 while starting or shutting down."""
        if self.draining:
            raise APIError(503, "The server is shutting down", code="shutting_down", headers={"Retry-After": "5"})
        if self.runtime is None:
            raise APIError(503, "The server is starting", code="starting", headers={"Retry-After": "1"})
        return self.runtime

    def add_stream(self, session: Drainable) -> None:
        self.streams.add(session)
        self.streams_served += 1

    def remove_stream(self, session: Drainable) -> None:
        self.streams.discard(session)
        if not self.streams and self._streams_gone is not None:
            self._streams_gone.set()

    async def drain(self, timeout_s: float) -> None:
        """Refuse new work, ask every open stream to finish (final message, close 1001) and wait for them,
        at most ``timeout_s``. Called on SIGTERM before the server stops its connections."""
        self.draining = True
        if not self.streams:
            return
        self._streams_gone = anyio.Event()
        for session in list(self.streams):
            session.request_stop()
        with anyio.move_on_after(timeout_s):
            await self._streams_gone.wait()
        if self.streams:
            log.warning("%d stream(s) still open after %.1f s of shutdown", len(self.streams), timeout_s)


def server_state(conn: HTTPConnection) -> ServerState:
    """The :class:`ServerState` of the app serving ``conn``."""
    state = conn.app.state.server
    assert isinstance(state, ServerState)
    return state
