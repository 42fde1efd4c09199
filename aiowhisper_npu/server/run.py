"""Running the app: :func:`serve` binds the socket, prints the open-server warning, and runs uvicorn with a
graceful SIGTERM/SIGINT shutdown.

On the signal, :class:`GracefulServer` first stops accepting connections and drains the WebSocket streams
(each gets its final message and a close with 1001, see :mod:`.websocket`), then uvicorn's own shutdown lets
in-flight HTTP requests finish (streams and requests together within ``shutdown_timeout_s``; what is left
then is cancelled), and the lifespan closes the runtime. As uvicorn does, the process then ends by the
signal it received.
"""

from __future__ import annotations

import logging
import math
import socket
import sys
import time
from dataclasses import replace
from typing import Any

import uvicorn

from .app import create_app
from .auth import open_binding_warning
from .config import ServerConfig
from .state import ServerState

__all__ = ["GracefulServer", "bind_socket", "serve"]


class GracefulServer(uvicorn.Server):
    """uvicorn's server, draining the app's streams (final message, close 1001) before it stops connections."""

    def __init__(self, config: uvicorn.Config, state: ServerState):
        super().__init__(config)
        self._state = state

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        for server in self.servers:  # no new connections while the streams finish
            server.close()
        deadline = self._state.config.shutdown_timeout_s
        t0 = time.monotonic()
        await self._state.drain(deadline)  # HTTP requests go on meanwhile; they get what is left of the deadline
        self.config.timeout_graceful_shutdown = max(1, math.ceil(deadline - (time.monotonic() - t0)))
        await super().shutdown(sockets)


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` (``port=0``: an ephemeral port; read it with getsockname)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host.strip("[]"), port))
        sock.listen(2048)
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


def serve(config: ServerConfig, *, loop: str = "auto", log_level: str = "info", **uvicorn_options: Any) -> None:
    """Run the server until SIGTERM/SIGINT (blocking). ``loop``: uvicorn's ``auto`` (uvloop when installed),
    ``asyncio`` or ``uvloop``."""
    warning = open_binding_warning(config.host, config.api_key)
    if warning:
        print(warning, file=sys.stderr, flush=True)
    sock = bind_socket(config.host, config.port)
    config = replace(config, port=sock.getsockname()[1])
    app = create_app(config)
    uv_config = uvicorn.Config(app, loop=loop, log_level=log_level, lifespan="on",
                               timeout_graceful_shutdown=max(1, int(config.shutdown_timeout_s)),
                               ws_max_size=config.stream_max_frame_bytes, ws_per_message_deflate=False,
                               **uvicorn_options)
    server = GracefulServer(uv_config, app.state.server)
    logging.getLogger("aiowhisper_npu.server").setLevel(log_level.upper())
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
