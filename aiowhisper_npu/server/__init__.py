"""``aiowhisper-npu serve``: an OpenAI-compatible transcription API, a WebSocket live-caption stream and a
page that uses it, on one shared :class:`~aiowhisper_npu.Runtime` (the ``server`` extra: FastAPI, uvicorn).

- :mod:`.config`: :class:`ServerConfig`; :mod:`.app`: the app and its lifespan; :mod:`.state`: what the
  routes share; :mod:`.auth`: API keys; :mod:`.errors`: OpenAI's error shape; :mod:`.limits`: admission and
  upload limits;
  :mod:`.http_routes` and :mod:`.responses`: the HTTP API; :mod:`.websocket`: ``/v1/stream``;
  :mod:`.run`: uvicorn with the graceful shutdown; ``static/``: the live-caption page.
- ``serve --ray`` (the ``ray`` extra): :mod:`.scaleout` (replica sizing and limits, no Ray needed),
  :mod:`.ray_app` (the same app as a Ray Serve deployment), :mod:`.ray_routing` (the router and the proxy
  guard Serve loads by import path).
"""

from __future__ import annotations

from .app import create_app
from .config import API_KEY_ENV, ServerConfig
from .run import serve
from .scaleout import ScaleOut

__all__ = ["API_KEY_ENV", "ScaleOut", "ServerConfig", "create_app", "serve"]
