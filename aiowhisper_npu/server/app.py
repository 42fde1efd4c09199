"""The app: :func:`create_app` builds the FastAPI application whose lifespan opens one
:class:`~aiowhisper_npu.Runtime` shared by every request, and :class:`ServerState`, what the routes share
(the runtime, admission, open streams, and the shutdown drain)."""

from __future__ import annotations

import logging
import sys
from contextlib import asynccontextmanager
from importlib import resources
from typing import Any, AsyncIterator, Protocol

import anyio
import numpy as np
from fastapi import FastAPI
from starlette.requests import HTTPConnection
from starlette.staticfiles import StaticFiles

from .. import __version__
from ..runtime.runtime import Runtime
from .config import ServerConfig
from .errors import APIError, install_error_handlers
from .limits import Admission, UploadLimit

__all__ = ["ServerState", "create_app", "server_state"]

log = logging.getLogger("aiowhisper_npu.server")


class Drainable(Protocol):
    """What the drain needs of an open WebSocket stream."""

    def request_stop(self) -> None: ...


class ServerState:
    """What the routes of one app share. Created by :func:`create_app`; lives in ``app.state.server``."""

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


def _lifespan(state: ServerState, announce: bool) -> Any:
    config = state.config

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with Runtime(config.model, backend=config.backend, **config.runtime_options) as rt:
            if config.warmup:  # builds the decoder and its engine now rather than in the first request
                await rt.transcribe(np.zeros(8000, np.float32), beam_size=1, temperature=0.0)
            state.runtime = rt
            if announce:
                print(f"aiowhisper-npu serve: ready on http://{_url_host(config.host)}:{config.port} "
                      f"({state.model_id} on {config.backend})", file=sys.stderr, flush=True)
            try:
                yield
            finally:
                state.runtime = None
                state.draining = True

    return lifespan


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def create_app(config: ServerConfig, *, announce: bool = True) -> FastAPI:
    """The FastAPI app of ``config``: HTTP routes, the WebSocket, the page, the limits and error shapes.

    Serve it with uvicorn (``aiowhisper_npu.server.run.serve`` adds the graceful SIGTERM drain) or as a Ray
    Serve replica (:mod:`.ray_app`); the lifespan opens the runtime, so the app must be run with lifespan
    events on (uvicorn's default). ``announce``: print the ``ready on URL`` line once the runtime is open (the
    replicas of ``serve --ray`` do not: the command prints it once every replica is up).
    """
    from .http_routes import router as http_router
    from .websocket import router as ws_router

    state = ServerState(config)
    app = FastAPI(title="aiowhisper-npu", version=__version__, lifespan=_lifespan(state, announce),
                  description="OpenAI-compatible speech-to-text and a WebSocket live-caption stream.")
    app.state.server = state
    install_error_handlers(app)
    app.include_router(http_router)
    app.include_router(ws_router)
    static = resources.files("aiowhisper_npu.server") / "static"
    app.mount("/static", StaticFiles(directory=str(static)), name="static")
    app.add_middleware(UploadLimit, limit=config.max_upload_bytes)
    return app
