"""``aiowhisper-npu serve --ray``: the server's FastAPI app (:func:`~.app.create_app`, the same routes) as a
Ray Serve deployment (the ``ray`` extra).

Each replica builds the app in its own process (``__serve_build_asgi_app__``) and Serve runs the app's
lifespan there: one :class:`~aiowhisper_npu.Runtime` per replica, opened at start and closed at shutdown.
:class:`ReplicaHeaders` names the replica (and its node) on every response. Sizing, placement and limits are
in :mod:`.scaleout`.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from typing import Any

import ray
from fastapi import FastAPI
from ray import serve
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..errors import AiowhisperError
from .app import create_app
from .config import ServerConfig
from .ray_routing import PROXY_CALLBACK, PROXY_CALLBACK_ENV, ROUTER_CLASS
from .scaleout import APP_NAME, NODE_HEADER, REPLICA_HEADER, ScaleOut, deployment_options, missing_resources

__all__ = ["ReplicaHeaders", "WhisperServer", "build_application", "start_serve", "deploy", "run_on_ray"]


class ReplicaHeaders:
    """ASGI middleware: ``headers`` on every HTTP response and on the WebSocket handshake's answer."""

    def __init__(self, app: ASGIApp, *, headers: dict[str, str]):
        self.app = app
        self.raw = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] in ("http.response.start", "websocket.accept"):
                message = {**message, "headers": [*message.get("headers", ()), *self.raw]}
            await send(message)

        await self.app(scope, receive, send_with_headers)


@serve.ingress()
class WhisperServer:
    """One replica: the server's app with its own runtime (opened by the app's lifespan, which Serve runs)."""

    def __init__(self, config: ServerConfig) -> None:
        self.config = config

    def __serve_build_asgi_app__(self) -> FastAPI:
        replica = serve.get_replica_context().replica_id.to_full_id_str()
        node = ray.get_runtime_context().get_node_id()
        app = create_app(self.config, announce=False)
        app.add_middleware(ReplicaHeaders, headers={REPLICA_HEADER: replica, NODE_HEADER: node})
        return app


def build_application(config: ServerConfig, scale: ScaleOut) -> Any:
    """The bound Serve application (``serve.run`` it) of the server with ``config``, spread as ``scale``."""
    options = deployment_options(config, scale)
    options["request_router_config"] = {"request_router_class": ROUTER_CLASS}
    return serve.deployment(WhisperServer).options(**options).bind(config)  # type: ignore[attr-defined]


def start_serve(config: ServerConfig, scale: ScaleOut, *, log_level: str = "info") -> None:
    """Start Serve (its controller and HTTP proxy on ``config.host:config.port``) unless it is running.

    The proxies get :func:`~.ray_routing.proxy_middlewares` (502 / close 1012 for a request whose replica
    died) through the controller's environment; a Serve instance started by someone else keeps its own
    proxy settings (start it with ``RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH`` set, see docs/serving.md).
    """
    if config.port == 0:
        raise ValueError("--port 0 is not supported with --ray: Serve's proxy needs a fixed port")
    serve.start(proxy_location=scale.proxy_location, http_options={"host": config.host, "port": config.port},
                controller_options={"runtime_env": {"env_vars": {PROXY_CALLBACK_ENV: PROXY_CALLBACK}}},
                logging_config={"log_level": log_level.upper()})


def deploy(config: ServerConfig, scale: ScaleOut, *, name: str = APP_NAME, log_level: str = "info") -> str:
    """Start Serve's HTTP proxy on ``config.host:config.port`` (if Serve is not running yet) and deploy the
    server; returns once every replica is up (its runtime open). Needs a connected Ray (``ray.init``).
    Returns the base URL. :class:`ValueError` when no node has what a replica needs."""
    problem = missing_resources(ray.cluster_resources(), config, scale)
    if problem:
        raise ValueError(problem)
    start_serve(config, scale, log_level=log_level)
    serve.run(build_application(config, scale), name=name, route_prefix="/", blocking=False)
    host = f"[{config.host}]" if ":" in config.host else config.host
    return f"http://{host}:{config.port}"


def run_on_ray(config: ServerConfig, scale: ScaleOut, *, log_level: str = "info") -> None:
    """``aiowhisper-npu serve --ray``: connect to (or start) Ray, deploy, serve until SIGTERM/SIGINT, then
    delete the application (its replicas finish their requests, at most ``shutdown_timeout_s``, and close
    their runtimes). A Ray instance this process started is stopped with it; a cluster it joined keeps
    running. The teardown is bounded: a cluster that stopped answering (say its processes got the same
    Ctrl-C) does not keep the command alive."""
    address = scale.address or os.environ.get("RAY_ADDRESS") or None
    init: dict[str, Any] = {"address": address, "logging_level": log_level.upper()}
    if address is None:
        init["include_dashboard"] = False
    try:
        ray.init(**init)
    except ConnectionError as exc:
        raise AiowhisperError(f"could not join the Ray cluster at {address}: {exc} (start one with "
                              "'ray start --head', or leave --ray-address out for a local Ray)") from exc
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        try:
            url = deploy(config, scale, log_level=log_level)
        except ValueError as exc:
            raise AiowhisperError(str(exc)) from exc
        print(f"aiowhisper-npu serve: ready on {url} ({config.model} on {config.backend}, {scale.describe()} "
              f"on Ray Serve, each taking {deployment_options(config, scale)['max_ongoing_requests']} requests "
              f"at once)", file=sys.stderr, flush=True)
        while not stop.wait(0.5):
            pass
        print("aiowhisper-npu serve: stopping (deleting the application)", file=sys.stderr, flush=True)

        def teardown() -> None:
            serve.delete(APP_NAME)
            if address is None:
                serve.shutdown()

        worker = threading.Thread(target=teardown, name="serve-teardown", daemon=True)
        worker.start()
        worker.join(config.shutdown_timeout_s + 15.0)
        if worker.is_alive():
            print("aiowhisper-npu serve: the cluster did not confirm the shutdown in time; leaving",
                  file=sys.stderr, flush=True)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        ray.shutdown()
