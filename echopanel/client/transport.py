"""``WebSocketTransport``: the real :class:`~echopanel.ports.Transport`, on httpx + wsproto.

The HTTP upgrade goes through an ``httpx.AsyncClient`` (so an
``httpx_ws.transport.ASGIWebSocketTransport`` can be plugged in for in-memory tests), and the
WebSocket framing through ``wsproto`` — the same pieces ``httpx-ws`` is made of. Unlike
``httpx_ws.aconnect_ws`` it holds no background task and no cancel scope between calls, so
``connect``, ``receive``, ``send_*`` and ``aclose`` may be called from different tasks of the
session shell (``receive`` from one task at a time).

Keep-alive: while a ``receive()`` is waiting, a ping is sent every ``ping_interval`` seconds
of silence; no pong within ``ping_timeout`` closes the connection with ``connection_failed``.

Errors: every third-party exception is translated into
:class:`~echopanel.errors.TransportError`. When the server closes, ``receive()`` raises a
``TransportError`` whose ``close_code`` is the WebSocket close code and whose ``code`` is the
error code of the server's last ``error`` message, or else the code mapped from the close
code (``CLOSE_CODES``); a normal close (1000/1001) carries ``connection_failed`` with
"connection closed" — callers check ``close_code``.
"""

from __future__ import annotations

import base64
import collections
import contextlib
import functools
import json
import math
import secrets
import ssl
from collections.abc import Mapping
from typing import Any, Final

import anyio
import httpx
import wsproto
import wsproto.events as wse
from wsproto.connection import ConnectionState
from wsproto.utilities import LocalProtocolError, RemoteProtocolError

from echopanel.errors import CLOSE_CODES, ErrorCode, TransportError
from echopanel.ports import Transport

__all__ = [
    "ENDPOINT_PATH",
    "WebSocketTransport",
    "endpoint_url",
    "error_code_for_close",
]

ENDPOINT_PATH: Final = "/ws/live-listener"
_READ_BYTES: Final = 65_536
_NORMAL_CLOSES: Final = frozenset({1000, 1001})

# 1008 is shared by unauthorized and start_timeout: the server's error message decides;
# without one, a policy close is reported as unauthorized.
_CLOSE_TO_CODE: Final[dict[int, ErrorCode]] = {
    close: code for code, close in CLOSE_CODES.items() if code is not ErrorCode.START_TIMEOUT
}


@functools.cache
def _ssl_context() -> ssl.SSLContext:
    """httpx's default TLS context, built once (building it costs ~25 ms per client)."""
    return httpx.create_ssl_context()


def endpoint_url(url: str) -> str:
    """Accept ``ws://host:port`` (or http/https/wss) or the full endpoint URL.

    A URL without a path gets :data:`ENDPOINT_PATH`; ``ws``/``wss`` become ``http``/``https``
    for the upgrade request.
    """
    parsed = httpx.URL(url)
    scheme = {"ws": "http", "wss": "https"}.get(parsed.scheme, parsed.scheme)
    if scheme not in ("http", "https"):
        raise ValueError(f"unsupported URL scheme {parsed.scheme!r} in {url!r}")
    path = parsed.path if parsed.path not in ("", "/") else ENDPOINT_PATH
    return str(parsed.copy_with(scheme=scheme, path=path))


def error_code_for_close(close_code: int | None) -> ErrorCode:
    """The protocol error code a close code stands for (``connection_failed`` if none)."""
    if close_code is None:
        return ErrorCode.CONNECTION_FAILED
    return _CLOSE_TO_CODE.get(close_code, ErrorCode.CONNECTION_FAILED)


def _server_error(text: str) -> tuple[ErrorCode, str] | None:
    """``(code, message)`` if ``text`` is a server ``error`` message with a known code."""
    if '"error"' not in text:
        return None
    try:
        obj = json.loads(text)
        if isinstance(obj, dict) and obj.get("type") == "error":
            message = obj.get("message")
            return ErrorCode(str(obj.get("code"))), message if isinstance(message, str) else ""
    except (ValueError, TypeError):
        return None
    return None


class WebSocketTransport(Transport):
    """One WebSocket connection to the live-listener endpoint.

    ``headers`` given to :meth:`connect` are sent on the upgrade request (the caller puts
    ``Authorization: Bearer …`` / ``x-echopanel-token`` there). ``client`` lets tests pass an
    ``httpx.AsyncClient`` (e.g. with ``httpx_ws.transport.ASGIWebSocketTransport``); it is
    then not closed by :meth:`aclose`. Pings need a real network stream: pass
    ``ping_interval=None`` for in-memory ASGI tests.
    """

    def __init__(
        self,
        *,
        connect_timeout: float = 5.0,
        ping_interval: float | None = 20.0,
        ping_timeout: float = 20.0,
        close_timeout: float = 2.0,
        max_message_bytes: int = 4 * 1024 * 1024,
        client: httpx.AsyncClient | None = None,
    ) -> None:
        self.connect_timeout = connect_timeout
        self.ping_interval = ping_interval
        self.ping_timeout = ping_timeout
        self.close_timeout = close_timeout
        self.max_message_bytes = max_message_bytes
        self._client = client
        self._owns_client = client is None
        self._response: httpx.Response | None = None
        self._stream: Any = None
        self._ws = wsproto.connection.Connection(wsproto.ConnectionType.CLIENT)
        self._write_lock = anyio.Lock()
        self._pending: collections.deque[str | bytes] = collections.deque()
        self._partial: list[str | bytes] = []
        self._partial_size = 0
        self._last_error: tuple[ErrorCode, str] | None = None
        self._close_code: int | None = None
        self._close_reason = ""
        self._closed = False
        self._last_traffic = 0.0
        self._ping_sent_at: float | None = None

    # ----------------------------------------------------------------- properties

    @property
    def connected(self) -> bool:
        """True between a successful :meth:`connect` and the close."""
        return self._stream is not None and not self._closed

    @property
    def close_code(self) -> int | None:
        """The close code once closed (the peer's, or ours when we closed first)."""
        return self._close_code

    @property
    def last_error(self) -> tuple[ErrorCode, str] | None:
        """Code and message of the last server ``error`` message seen, if any."""
        return self._last_error

    # ----------------------------------------------------------------- connect

    async def connect(self, url: str, headers: Mapping[str, str]) -> None:
        if self._stream is not None or self._closed:
            raise TransportError(ErrorCode.CONNECTION_FAILED, "transport already used")
        try:
            target = endpoint_url(url)
        except (ValueError, httpx.InvalidURL) as exc:
            raise TransportError(ErrorCode.CONNECTION_FAILED, f"bad URL {url!r}: {exc}") from None
        request_headers = {
            **dict(headers),
            "connection": "upgrade",
            "upgrade": "websocket",
            "sec-websocket-key": base64.b64encode(secrets.token_bytes(16)).decode("ascii"),
            "sec-websocket-version": "13",
        }
        if self._client is None:
            self._client = httpx.AsyncClient(timeout=self.connect_timeout, verify=_ssl_context())
        try:
            with anyio.fail_after(self.connect_timeout):
                request = self._client.build_request("GET", target, headers=request_headers)
                response = await self._client.send(request, stream=True)
        except TimeoutError:
            await self._teardown()
            raise TransportError(
                ErrorCode.CONNECTION_FAILED,
                f"could not connect to {target} within {self.connect_timeout:g} s",
            ) from None
        except Exception as exc:  # httpx, OSError, ASGI app errors: all mean "no connection"
            await self._teardown()
            raise TransportError(
                ErrorCode.CONNECTION_FAILED, f"could not connect to {target}: {exc!r}"
            ) from None
        self._response = response
        if response.status_code != 101 or "network_stream" not in response.extensions:
            status = response.status_code
            await self._teardown()
            code = ErrorCode.UNAUTHORIZED if status in (401, 403) else ErrorCode.CONNECTION_FAILED
            raise TransportError(code, f"WebSocket upgrade refused: HTTP {status} from {target}")
        self._stream = response.extensions["network_stream"]
        self._last_traffic = anyio.current_time()

    # ----------------------------------------------------------------- send

    async def send_text(self, text: str) -> None:
        await self._send_event(wse.TextMessage(data=text))

    async def send_bytes(self, data: bytes) -> None:
        await self._send_event(wse.BytesMessage(data=data))

    async def _send_event(self, event: wse.Event) -> None:
        if self._stream is None or self._closed:
            raise self._closed_error()
        try:
            await self._write(self._ws.send(event))
        except LocalProtocolError:
            raise self._closed_error() from None
        except TransportError:
            raise
        except Exception as exc:
            await self._teardown()
            raise TransportError(ErrorCode.CONNECTION_FAILED, f"send failed: {exc!r}") from None

    async def _write(self, data: bytes) -> None:
        async with self._write_lock:
            await self._stream.write(data)

    # ----------------------------------------------------------------- receive

    async def receive(self) -> str | bytes:
        while True:
            if self._pending:
                return self._pending.popleft()
            if self._stream is None or self._closed:
                raise self._closed_error()
            data = await self._read_with_keepalive()
            try:
                self._ws.receive_data(data if data else None)
            except RemoteProtocolError as exc:
                await self._teardown(close_code=1002)
                raise TransportError(
                    ErrorCode.CONNECTION_FAILED, f"WebSocket protocol error: {exc}"
                ) from None
            if not data and self._close_code is None:
                self._close_code = 1006
            await self._handle_events()
            if not data and not self._closed:
                await self._teardown()

    async def _read_with_keepalive(self) -> bytes:
        while True:
            wait = math.inf
            now = anyio.current_time()
            if self.ping_interval is not None:
                if self._ping_sent_at is not None:
                    wait = self._ping_sent_at + self.ping_timeout - now
                    if wait <= 0:
                        await self._teardown(close_code=1011, reason="keep-alive ping timeout")
                        raise TransportError(
                            ErrorCode.CONNECTION_FAILED, "keep-alive ping timed out"
                        )
                else:
                    wait = self._last_traffic + self.ping_interval - now
                    if wait <= 0:
                        await self._ping()
                        continue
            try:
                with anyio.move_on_after(wait):
                    data: bytes = await self._stream.read(_READ_BYTES)
                    self._last_traffic = anyio.current_time()
                    return data
            except Exception as exc:
                if self._closed:
                    raise self._closed_error() from None
                await self._teardown()
                self._close_code = self._close_code or 1006
                raise TransportError(
                    ErrorCode.CONNECTION_FAILED, f"connection lost: {exc!r}", close_code=1006
                ) from None

    async def _ping(self) -> None:
        self._ping_sent_at = anyio.current_time()
        try:
            await self._write(self._ws.send(wse.Ping(payload=secrets.token_bytes(4))))
        except Exception:
            await self._teardown()
            raise TransportError(ErrorCode.CONNECTION_FAILED, "connection lost") from None

    async def _handle_events(self) -> None:
        for event in self._ws.events():
            if isinstance(event, wse.Message):
                self._collect(event)
            elif isinstance(event, wse.Ping):
                await self._reply(event.response())
            elif isinstance(event, wse.Pong):
                self._ping_sent_at = None
            elif isinstance(event, wse.CloseConnection):
                self._close_code = event.code
                self._close_reason = event.reason or ""
                if self._ws.state is ConnectionState.REMOTE_CLOSING:
                    await self._reply(event.response())
                await self._teardown()

    def _collect(self, event: wse.Message[Any]) -> None:
        self._partial.append(event.data)
        self._partial_size += len(event.data)
        if self._partial_size > self.max_message_bytes:
            self._partial.clear()
            self._partial_size = 0
            raise TransportError(ErrorCode.CONNECTION_FAILED, "message from server too large")
        if not event.message_finished:
            return
        message: str | bytes
        if isinstance(event, wse.TextMessage):
            message = "".join(str(p) for p in self._partial)
            error = _server_error(message)
            if error is not None:
                self._last_error = error
        else:
            message = b"".join(p for p in self._partial if isinstance(p, bytes))
        self._partial.clear()
        self._partial_size = 0
        self._pending.append(message)

    async def _reply(self, event: wse.Event) -> None:
        try:
            await self._write(self._ws.send(event))
        except Exception:
            return

    def _closed_error(self) -> TransportError:
        close = self._close_code
        if self._last_error is not None and close not in _NORMAL_CLOSES:
            code, message = self._last_error
            return TransportError(code, message or None, close_code=close)
        if close in _NORMAL_CLOSES:
            detail = f": {self._close_reason}" if self._close_reason else ""
            return TransportError(
                ErrorCode.CONNECTION_FAILED,
                f"connection closed ({close}{detail})",
                close_code=close,
            )
        code = error_code_for_close(close)
        reason = self._close_reason or ("connection lost" if close in (None, 1006) else "")
        return TransportError(code, reason or None, close_code=close)

    # ----------------------------------------------------------------- close

    async def aclose(self, code: int = 1000, reason: str = "") -> None:
        if self._closed:
            return
        await self._teardown(close_code=code, reason=reason, polite=True)

    async def _teardown(
        self, *, close_code: int | None = None, reason: str = "", polite: bool = False
    ) -> None:
        """Send our close frame if still open, then release the stream and client."""
        if self._closed:
            return
        self._closed = True
        with anyio.CancelScope(shield=True), anyio.move_on_after(self.close_timeout):
            if self._stream is not None and self._ws.state is ConnectionState.OPEN:
                if close_code is not None and self._close_code is None:
                    self._close_code = close_code
                try:
                    data = self._ws.send(
                        wse.CloseConnection(code=close_code or 1000, reason=reason)
                    )
                    await self._write(data)
                    if polite:
                        await self._await_close_reply()
                except Exception:  # the peer may be gone already
                    pass
            for closer in (self._stream, self._response):
                if closer is not None:
                    with contextlib.suppress(Exception):
                        await closer.aclose()
            if self._owns_client and self._client is not None:
                with contextlib.suppress(Exception):
                    await self._client.aclose()

    async def _await_close_reply(self) -> None:
        """Briefly read until the server answers our close (bounded by close_timeout)."""
        while self._ws.state is not ConnectionState.CLOSED:
            data = await self._stream.read(_READ_BYTES)
            self._ws.receive_data(data if data else None)
            for event in self._ws.events():
                if isinstance(event, wse.Message):
                    self._collect(event)
            if not data:
                return
