"""The app: :func:`create_app` builds the FastAPI application whose lifespan opens one
:class:`~aiowhisper_npu.Runtime` shared by every request, kept with what else the routes share in a
:class:`~.state.ServerState`."""

from __future__ import annotations

import sys
from contextlib import asynccontextmanager
from importlib import resources
from typing import Any, AsyncIterator

import numpy as np
from fastapi import FastAPI
from starlette.staticfiles import StaticFiles

from .. import __version__
from ..runtime.runtime import Runtime
from .config import ServerConfig
from .errors import install_error_handlers
from .http_routes import router as http_router
from .limits import UploadLimit
from .state import ServerState
from .websocket import router as ws_router

__all__ = ["create_app"]


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
