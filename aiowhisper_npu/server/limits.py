"""Limits that keep one client from hurting the others: :class:`Admission` (how many HTTP transcriptions may
be in the server at once; 503 + ``Retry-After`` beyond) and :class:`UploadLimit` (413 for an upload over
``--max-upload-mb``, by ``Content-Length`` before anything is read, and by counting for chunked bodies)."""

from __future__ import annotations

import json
import math
import time
from contextlib import contextmanager
from typing import Iterator

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .errors import APIError, error_body

__all__ = ["Admission", "UploadLimit", "UploadTooLarge"]


class Admission:
    """Admits at most ``limit`` requests at once; the next gets 503 with a ``Retry-After`` estimate.

    Requests are counted from the moment their headers arrive (uploading counts: a slow upload holds its
    place). ``Retry-After`` is the recent mean time a request spent in the server, rounded up, at least 1 s.
    Event-loop only (not thread-safe), like the rest of the app.
    """

    def __init__(self, limit: int):
        if limit < 1:
            raise ValueError(f"limit must be >= 1, got {limit}")
        self.limit = limit
        self.active = 0
        self.admitted = 0
        self.rejected = 0
        self._mean_s: float | None = None

    def retry_after_s(self) -> int:
        return max(1, math.ceil(self._mean_s or 1.0))

    @contextmanager
    def admit(self) -> Iterator[None]:
        """Hold one place for the ``with`` body, or raise a 503 :class:`APIError` when none is free."""
        if self.active >= self.limit:
            self.rejected += 1
            raise APIError(503, f"The server is busy ({self.active} requests in progress, the limit is "
                                f"{self.limit}); retry later", code="queue_full",
                           headers={"Retry-After": str(self.retry_after_s())})
        self.active += 1
        self.admitted += 1
        t0 = time.monotonic()
        try:
            yield
        finally:
            self.active -= 1
            took = time.monotonic() - t0
            self._mean_s = took if self._mean_s is None else 0.8 * self._mean_s + 0.2 * took


class UploadTooLarge(APIError):
    """The request body passed the upload limit."""

    def __init__(self, limit: int):
        super().__init__(413, f"The upload is larger than the server's limit of {limit / 1048576:g} MiB",
                         param="file", code="file_too_large")


class UploadLimit:
    """ASGI middleware: bodies of HTTP requests under ``prefix`` may hold at most ``limit`` bytes.

    A declared ``Content-Length`` over the limit is answered 413 at once, without reading the body; a body
    without one (chunked) is counted as the app reads it, and the read that passes the limit raises
    :class:`UploadTooLarge` in the app (answered 413 by the error handlers).
    """

    def __init__(self, app: ASGIApp, *, limit: int, prefix: str = "/v1/audio/"):
        self.app = app
        self.limit = limit
        self.prefix = prefix

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(self.prefix):
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.limit:
            await _send_413(send, UploadTooLarge(self.limit))
            return
        seen = 0

        async def counting_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise UploadTooLarge(self.limit)
            return message

        await self.app(scope, counting_receive, send)


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


async def _send_413(send: Send, err: APIError) -> None:
    body = json.dumps(error_body(err.message, err.type, err.param, err.code)).encode()
    await send({"type": "http.response.start", "status": 413,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})
