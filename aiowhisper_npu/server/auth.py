"""API keys: ``Authorization: Bearer <key>`` (or ``?api_key=`` on the WebSocket, for browsers), compared in
constant time; and the warning for an open server on a non-loopback address."""

from __future__ import annotations

import hmac
import ipaddress

from starlette.requests import HTTPConnection

from .errors import APIError

__all__ = ["bearer_token", "key_matches", "check_key", "is_loopback", "open_binding_warning"]


def bearer_token(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header value, or ``None``."""
    if not authorization:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def key_matches(expected: str, given: str | None) -> bool:
    """Whether ``given`` is ``expected``, in time that does not depend on where they differ."""
    if given is None:
        return False
    return hmac.compare_digest(expected.encode("utf-8"), given.encode("utf-8"))


def check_key(conn: HTTPConnection, expected: str | None, *, allow_query: bool = False) -> None:
    """Raise a 401 :class:`APIError` unless ``conn`` carries ``expected`` (no-op when the server is open).

    The Bearer header is read first; with ``allow_query`` (the WebSocket), ``?api_key=`` too.
    """
    if expected is None:
        return
    given = bearer_token(conn.headers.get("authorization"))
    if given is None and allow_query:
        given = conn.query_params.get("api_key")
    if given is None:
        raise APIError(401, "Missing API key: send 'Authorization: Bearer <key>'"
                       + (" or '?api_key=<key>'" if allow_query else ""), code="missing_api_key",
                       headers={"WWW-Authenticate": "Bearer"})
    if not key_matches(expected, given):
        raise APIError(401, "Incorrect API key provided", code="invalid_api_key",
                       headers={"WWW-Authenticate": "Bearer"})


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an address or ``localhost``) is reachable from this machine only."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # a host name other than localhost: assume it is reachable from elsewhere
        return False


def open_binding_warning(host: str, api_key: str | None) -> str | None:
    """The warning to print when the server would listen beyond this machine without a key, else ``None``."""
    if api_key is not None or is_loopback(host):
        return None
    return (f"WARNING: listening on {host} without an API key: anyone who can reach this address can use the "
            f"server. Set --api-key or AIOWHISPER_API_KEY, or bind 127.0.0.1.")
