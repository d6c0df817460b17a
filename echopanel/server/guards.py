"""``RequestGuard``: the checks every request passes before it reaches the app (pure ASGI).

A loopback server is reachable from every web page the user has open, so (DESIGN.md
"Browsers and hosts"):

* **Host** — on a loopback bind, a request (HTTP or WebSocket) whose ``Host`` is not a
  loopback name or address (``localhost``, ``127.0.0.0/8``, ``[::1]``, any port) gets
  **HTTP 421**: a DNS-rebinding page reaches the server under its own name and is refused.
  A request without ``Host`` (HTTP/1.0, not a browser) passes.
* **Origin** — a WebSocket upgrade carrying an ``Origin`` that is not allowed is refused with
  **HTTP 403** before the socket is accepted. Allowed: no ``Origin`` (non-browser clients),
  the server's own origin (the scheme it was reached with and the ``Host`` it was reached
  on) and the ``--allow-origin`` entries.
* **Admission** on the live-listener endpoint, also before the socket is accepted: while the
  server drains, new upgrades get **HTTP 503** (``server_draining``); when ``max_pending``
  connections already hold a socket without a session (before ``start``, or waiting for a
  slot), a new upgrade gets **HTTP 503** (``server_at_capacity``) with ``Retry-After``.

Refusals carry a small JSON body ``{"error": code, "message": …}``; WebSocket refusals use
the ASGI ``websocket.http.response`` extension (uvicorn has it) and fall back to a plain
close (HTTP 403) without it.
"""

from __future__ import annotations

import ipaddress
import json
import logging
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import urlsplit

from starlette.datastructures import Headers

from echopanel.protocol import ENDPOINT_PATH
from echopanel.server.config import is_loopback, normalize_origin
from echopanel.server.state import ServerState

__all__ = ["RequestGuard", "host_is_loopback", "normalize_origin"]

log = logging.getLogger("echopanel.server")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]

_HTTP_SCHEME = {"ws": "http", "wss": "https", "http": "http", "https": "https"}


def _split_host(host: str) -> tuple[str, int | None] | None:
    """``host[:port]`` (``[v6]:port`` for IPv6) → (lower-case name, port); None if malformed."""
    host = host.strip().lower()
    if not host:
        return None
    try:
        parts = urlsplit(f"//{host}")
        port = parts.port
    except ValueError:
        return None
    name = parts.hostname
    if not name or parts.username is not None or parts.path or parts.query or parts.fragment:
        return None
    return name, port


def host_is_loopback(host: str) -> bool:
    """True for a ``Host`` header naming a loopback name or address, with or without port."""
    split = _split_host(host)
    if split is None:
        return False
    name = split[0].rstrip(".")
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def _own_origin(scope: Scope, host: str | None) -> str | None:
    """The origin of the server as this request reached it (scheme + ``Host``)."""
    if not host:
        return None
    scheme = _HTTP_SCHEME.get(scope.get("scheme", "ws"), "http")
    return normalize_origin(f"{scheme}://{host}")


class RequestGuard:
    """Pure ASGI middleware: Host, Origin and admission checks (see the module docstring)."""

    def __init__(self, app: App, *, state: ServerState) -> None:
        self.app = app
        self.state = state
        config = state.config
        self.loopback_bind = is_loopback(config.host)
        allowed = (normalize_origin(o) for o in config.allow_origins)
        self.allowed_origins = frozenset(o for o in allowed if o is not None)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        host = headers.get("host")
        if self.loopback_bind and host is not None and not host_is_loopback(host):
            await self._refuse(
                scope, receive, send, 421, "misdirected_request",
                "This server only answers to a loopback host name (localhost, 127.0.0.1, [::1])",
            )  # fmt: skip
            return
        if kind == "websocket":
            origin = headers.get("origin")
            if origin is not None and not self.origin_allowed(origin, scope, host):
                await self._refuse(
                    scope, receive, send, 403, "origin_not_allowed",
                    "WebSocket connections from this web page's origin are not allowed "
                    "(the server's operator can allow it with --allow-origin)",
                )  # fmt: skip
                return
            if scope.get("path") == ENDPOINT_PATH:
                await self._admit(scope, receive, send)
                return
        await self.app(scope, receive, send)

    def origin_allowed(self, origin: str, scope: Scope, host: str | None) -> bool:
        normalized = normalize_origin(origin)
        if normalized is None:
            return False
        return normalized in self.allowed_origins or normalized == _own_origin(scope, host)

    async def _admit(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Refuse new live-listener sockets while draining or over ``max_pending``."""
        state = self.state
        if state.draining:
            await self._refuse(
                scope, receive, send, 503, "server_draining",
                "The server is shutting down; connect again to another or a restarted server",
                retry_after=1,
            )  # fmt: skip
            return
        if state.pending_connections >= state.config.max_pending:
            await self._refuse(
                scope, receive, send, 503, "server_at_capacity",
                f"Server at capacity: {state.config.max_pending} connections are waiting "
                "to start a session",
                retry_after=1,
            )  # fmt: skip
            return
        state.ws_open += 1
        try:
            await self.app(scope, receive, send)
        finally:
            state.ws_open -= 1

    async def _refuse(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        status: int,
        code: str,
        message: str,
        *,
        retry_after: int | None = None,
    ) -> None:
        self.state.metrics.rejected.labels(reason=code).inc()
        log.info(
            "refused %s %s: HTTP %d %s", scope["type"], scope.get("path"), status, code,
            extra={"reason": code},
        )  # fmt: skip
        body = json.dumps({"error": code, "message": message}).encode()
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
        ]
        if retry_after is not None:
            headers.append((b"retry-after", str(retry_after).encode()))
        if scope["type"] == "http":
            await send({"type": "http.response.start", "status": status, "headers": headers})
            await send({"type": "http.response.body", "body": body})
        elif "websocket.http.response" in scope.get("extensions", {}):
            await send(
                {"type": "websocket.http.response.start", "status": status, "headers": headers}
            )
            await send({"type": "websocket.http.response.body", "body": body})
        else:  # no denial-response extension: closing before accept is an HTTP 403
            await send({"type": "websocket.close", "code": 1008})
