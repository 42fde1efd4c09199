"""What ``serve --ray`` adds to Ray Serve's routing and proxy (loaded by import path in Serve's processes).

- :class:`SpreadRouter`: power of two choices over *all* replicas. Serve's default router first tries the
  replicas on the proxy's own node, so with one proxy on the head node the head's replica would take every
  request until it is full; each replica here owns a device, so requests go to the least busy replica.
- :func:`proxy_middlewares`: Serve's HTTP proxy callback (``RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH``).
  Its :class:`ReplicaLossGuard` answers for a replica that died mid-request: an HTTP request that got no
  response gets 502 in OpenAI's error shape with ``Retry-After`` (instead of Serve's empty 500), and an
  accepted WebSocket stream gets a close with 1012 (service restart: reconnect) instead of a dropped
  connection (1006); and Serve's own 503s (its router's bounded queue is full, or no replica is up) get the
  server's error body (their ``Retry-After`` kept) instead of plain text.
"""

from __future__ import annotations

import json
import random
from typing import Any

from ray.serve.request_router import FIFOMixin, PendingRequest, RequestRouter, RunningReplica
from starlette.middleware import Middleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .scaleout import REPLICA_HEADER

__all__ = ["SpreadRouter", "ReplicaLossGuard", "proxy_middlewares", "PROXY_CALLBACK_ENV", "PROXY_CALLBACK",
           "ROUTER_CLASS", "CLOSE_SERVICE_RESTART"]

PROXY_CALLBACK_ENV = "RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH"
PROXY_CALLBACK = "aiowhisper_npu.server.ray_routing.proxy_middlewares"
ROUTER_CLASS = "aiowhisper_npu.server.ray_routing.SpreadRouter"
CLOSE_SERVICE_RESTART = 1012
REPLICA_HEADER_RAW = REPLICA_HEADER.lower().encode("latin-1")


class SpreadRouter(FIFOMixin, RequestRouter):
    """Two replicas at random, in random order; Serve sends to the one with fewer requests in progress that
    accepts it (the first on a tie, hence the shuffle)."""

    async def choose_replicas(self, candidate_replicas: list[RunningReplica],
                              pending_request: PendingRequest | None = None) -> list[list[RunningReplica]]:
        return [random.sample(candidate_replicas, min(2, len(candidate_replicas)))]


class ReplicaLossGuard:
    """ASGI middleware in Serve's proxy: an answer for requests whose replica ended without one, and Serve's
    own 503s in OpenAI's error shape (a 503 from a replica carries the replica header and is left alone)."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        seen: set[str] = set()
        held: list[Message] = []  # a 503 of Serve's own, rewritten in OpenAI's shape once its body is complete

        async def watching_send(message: Message) -> None:
            seen.add(message["type"])
            if message["type"] == "http.response.start" and message["status"] == 503 and not any(
                    k.lower() == REPLICA_HEADER_RAW for k, _ in message.get("headers", ())):
                held.append(message)
                return
            if held and message["type"] == "http.response.body":
                held.append(message)
                if not message.get("more_body", False):
                    for m in _openai_shaped_503(held):
                        await send(m)
                    held.clear()
                return
            await send(message)

        try:
            await self.app(scope, receive, watching_send)
        finally:
            if scope["type"] == "http" and "http.response.start" not in seen:
                await _quiet(send, _replica_lost_response())
            elif "websocket.accept" in seen and "websocket.close" not in seen:
                await _quiet(send, [{"type": "websocket.close", "code": CLOSE_SERVICE_RESTART,
                                     "reason": "the replica serving this stream stopped; reconnect"}])


def _openai_shaped_503(held: list[Message]) -> list[Message]:
    """Serve's own 503 (its router's queue is full, or no replica is up) with the server's error body; its
    ``Retry-After`` is kept."""
    start, parts = held[0], held[1:]
    text = b"".join(m.get("body", b"") for m in parts).decode("utf-8", "replace").strip()
    body = json.dumps({"error": {"message": text or "The service is unavailable; retry later",
                                 "type": "server_error", "param": None, "code": "service_unavailable"}}).encode()
    headers = [(k, v) for k, v in start.get("headers", ()) if k.lower() not in (b"content-type", b"content-length")]
    return [{**start, "headers": [*headers, (b"content-type", b"application/json"),
                                  (b"content-length", str(len(body)).encode())]},
            {"type": "http.response.body", "body": body}]


def _replica_lost_response() -> list[Message]:
    body = json.dumps({"error": {"message": "The replica serving this request stopped before it answered; retry",
                                 "type": "server_error", "param": None, "code": "replica_lost"}}).encode()
    return [{"type": "http.response.start", "status": 502,
             "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                         (b"retry-after", b"1")]},
            {"type": "http.response.body", "body": body}]


async def _quiet(send: Send, messages: list[Message]) -> None:
    """Send ``messages`` unless the client is already gone."""
    try:
        for message in messages:
            await send(message)
    except Exception:  # the connection closed meanwhile: nobody is left to tell
        pass


def proxy_middlewares() -> list[Any]:
    """Serve's HTTP proxy callback: the middlewares its proxies wrap every request in."""
    return [Middleware(ReplicaLossGuard)]
