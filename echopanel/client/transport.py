"""``WebSocketTransport``: the real :class:`~echopanel.ports.Transport`, on httpx + httpx-ws.

``httpx_ws.aconnect_ws`` does the upgrade (through an ``httpx.AsyncClient``, so an
``httpx_ws.transport.ASGIWebSocketTransport`` can be plugged in for in-memory tests), the
framing and the keep-alive pings. Its session is an async context manager holding a task
group (a background reader and a pinger); a cancel scope must be left by the task that
entered it, in last-in-first-out order. So the context is held by a small *connection host
task* of the transport's own (started outside the caller's cancel scopes and joined by
:meth:`~WebSocketTransport.aclose`): the caller's task never carries a scope of the
transport, and connections can be opened and closed in any order. The host reads the
session's messages into an inbox; ``receive()`` takes them from there.

Port contract (``echopanel.ports.Transport``): ``connect``, ``receive`` and ``aclose`` are
called from the connection's owner task; ``send_text`` / ``send_bytes`` from any task.

Keep-alive: every ``ping_interval`` seconds a ping is sent; no pong within
``ping_timeout`` drops the connection, and ``receive()`` raises ``connection_failed``
("keep-alive ping timed out"). The deadline covers writing the ping too: the pinger is the
transport's own (httpx-ws's waits without a bound for a socket whose send buffer is full,
e.g. a server frozen with SIGSTOP). Pings need a real network stream: none are sent on the
in-memory ASGI transport (``ping_interval=None`` disables them everywhere).

Deadlines on writes: every send must complete within ``send_timeout`` seconds. A send that
cannot (the peer stopped reading and the socket's buffers are full) raises
``connection_failed`` ("send timed out …", close code 1006) and *aborts* the connection: a
write cut off midway leaves a partial WebSocket frame, so the stream is closed at once
(no close frame), which also releases every other task stuck writing to it.

Errors: every third-party exception is translated into
:class:`~echopanel.errors.TransportError`. When the server closes, ``receive()`` raises a
``TransportError`` whose ``close_code`` is the WebSocket close code and whose ``code`` is the
error code of the server's last ``error`` message, or else the code mapped from the close
code (``CLOSE_CODES``); a normal close (1000/1001) carries ``connection_failed`` with
"connection closed" — callers check ``close_code``. A connection that drops without a close
frame reports close code 1006.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import importlib
import json
import ssl
import weakref
from collections.abc import Callable, Coroutine, Mapping
from typing import Any, Final

import anyio
import anyio.abc
import httpx
import httpx_ws
import wsproto.events as wse
from httpx_ws.transport import ASGIWebSocketAsyncNetworkStream
from wsproto.connection import ConnectionState
from wsproto.utilities import LocalProtocolError

from echopanel.errors import CLOSE_CODES, ErrorCode, TransportError
from echopanel.ports import Transport
from echopanel.protocol import ENDPOINT_PATH
from echopanel.session.config import normalize_url

__all__ = [
    "ENDPOINT_PATH",
    "WebSocketTransport",
    "endpoint_url",
    "error_code_for_close",
]

_READ_BYTES: Final = 65_536  # httpx-ws's read chunk ("max_message_size_bytes")
_INBOX_LIMIT: Final = 1024  # messages read ahead of receive() before the reader waits
_NORMAL_CLOSES: Final = frozenset({1000, 1001})

# 1008 is shared by unauthorized and start_timeout: the server's error message decides;
# without one, a policy close is reported as unauthorized.
_CLOSE_TO_CODE: Final[dict[int, ErrorCode]] = {
    close: code for code, close in CLOSE_CODES.items() if code is not ErrorCode.START_TIMEOUT
}

_detached: set[Any] = set()  # strong references to running asyncio host tasks


@functools.cache
def _ssl_context() -> ssl.SSLContext:
    """httpx's default TLS context, built once (building it costs ~25 ms per client)."""
    return httpx.create_ssl_context()


def endpoint_url(url: str) -> str:
    """Accept ``ws://host:port`` (or http/https/wss) or the full endpoint URL.

    The session's :func:`~echopanel.session.config.normalize_url` adds the endpoint path;
    ``ws``/``wss`` then become ``http``/``https`` for the upgrade request.
    """
    parsed = httpx.URL(normalize_url(url))
    return str(parsed.copy_with(scheme={"ws": "http", "wss": "https"}[parsed.scheme]))


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


def _leaf(exc: BaseException) -> BaseException:
    """The first non-cancellation exception inside (nested) exception groups."""
    while isinstance(exc, BaseExceptionGroup):
        inner = [e for e in exc.exceptions if not isinstance(e, anyio.get_cancelled_exc_class())]
        exc = (inner or list(exc.exceptions))[0]
    return exc


def _spawn_detached(coro: Coroutine[Any, Any, None], name: str) -> None:
    """Run ``coro`` in a new task that belongs to no caller's task group or cancel scope.

    ``coro`` must handle every exception itself (the host task does).
    """
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:  # not asyncio: anyio's other backend is trio
        lowlevel: Any = importlib.import_module("trio.lowlevel")

        async def run() -> None:
            await coro

        lowlevel.spawn_system_task(run, name=name)
        return
    task = loop.create_task(coro, name=name)
    _detached.add(task)
    task.add_done_callback(_detached.discard)


class _Connection(Transport):
    """The connection behind a :class:`WebSocketTransport`: all its state and its host task.

    The host task references this object, never the ``WebSocketTransport`` the caller holds,
    so a transport dropped without ``aclose`` can be collected; its finalizer then closes
    the connection (:meth:`abandon`).
    """

    def __init__(
        self,
        *,
        connect_timeout: float = 5.0,
        ping_interval: float | None = 20.0,
        ping_timeout: float = 20.0,
        close_timeout: float = 2.0,
        send_timeout: float = 10.0,
        max_message_bytes: int = 4 * 1024 * 1024,
        client: httpx.AsyncClient | None = None,
        task_group: anyio.abc.TaskGroup | None = None,
    ) -> None:
        self.connect_timeout = connect_timeout
        self.send_timeout = send_timeout
        # where the connection's host task runs: the caller's task group when given (the
        # session shell passes its own, so the task is part of its structure); else a
        # detached task that aclose() joins
        self._task_group = task_group
        self.ping_interval = ping_interval
        self.ping_timeout = ping_timeout
        self.close_timeout = close_timeout
        self.max_message_bytes = max_message_bytes
        self._client = client
        self._owns_client = client is None
        self._ws: httpx_ws.AsyncWebSocketSession | None = None
        self._aborted = False  # the stream was closed under the session (no close frame)
        self._inbox: collections.deque[str | bytes] = collections.deque()
        self._wakeup: anyio.Event | None = None  # receive() waits on it
        self._space: anyio.Event | None = None  # the host's reader waits on it (inbox full)
        self._ready: anyio.Event | None = None  # connected, or the attempt is over
        self._done: anyio.Event | None = None  # the host task has finished
        self._host_scope: anyio.CancelScope | None = None  # made in connect (needs a loop)
        self._reader_scope: anyio.CancelScope | None = None
        self._connect_error: TransportError | None = None
        self._failure: tuple[str, int | None] | None = None  # a local failure: message, close
        self._last_error: tuple[ErrorCode, str] | None = None
        self._close_code: int | None = None
        self._close_reason = ""
        self._close_request: tuple[int, str] | None = None
        self._started = False  # connect() was called
        self._closed = False  # aclose() was called
        self._eof = False  # the host task has finished: nothing more will arrive
        self._schedule: Callable[[Callable[[], object]], object] | None = None

    # ----------------------------------------------------------------- properties

    @property
    def connected(self) -> bool:
        """True between a successful :meth:`connect` and the close."""
        return self._ws is not None and not self._closed and not self._eof

    @property
    def close_code(self) -> int | None:
        """The close code once closed (the peer's, or ours when we closed first)."""
        return self._close_code

    @property
    def last_error(self) -> tuple[ErrorCode, str] | None:
        """Code and message of the last server ``error`` message seen, if any."""
        return self._last_error

    @property
    def _stream(self) -> Any:
        """The underlying network stream (tests close it to simulate a dropped connection)."""
        return self._ws.stream if self._ws is not None else None

    # ----------------------------------------------------------------- connect

    async def connect(self, url: str, headers: Mapping[str, str]) -> None:
        if self._started or self._closed:
            raise TransportError(ErrorCode.CONNECTION_FAILED, "transport already used")
        self._started = True
        try:
            target = endpoint_url(url)
        except (ValueError, httpx.InvalidURL) as exc:
            raise TransportError(ErrorCode.CONNECTION_FAILED, f"bad URL {url!r}: {exc}") from None
        if self._client is None:
            self._client = httpx.AsyncClient(timeout=self.connect_timeout, verify=_ssl_context())
        ready = self._ready = anyio.Event()
        self._done = anyio.Event()
        self._schedule = _loop_scheduler()
        self._host_scope = anyio.CancelScope()
        self._reader_scope = anyio.CancelScope()
        name = f"echopanel ws {target}"
        if self._task_group is not None:
            self._task_group.start_soon(self._host, target, dict(headers), name=name)
        else:
            _spawn_detached(self._host(target, dict(headers)), name=name)
        try:
            with anyio.fail_after(self.connect_timeout):
                await ready.wait()
        except TimeoutError:
            await self._stop_host()
            raise TransportError(
                ErrorCode.CONNECTION_FAILED,
                f"could not connect to {target} within {self.connect_timeout:g} s",
            ) from None
        except BaseException:  # cancelled: leave nothing connecting behind
            await self._stop_host()
            raise
        if self._ws is None:
            await self._wait_host(self.close_timeout)
            raise self._connect_error or TransportError(
                ErrorCode.CONNECTION_FAILED, f"could not connect to {target}"
            )

    def _connect_failed(self, target: str, exc: BaseException) -> TransportError:
        if isinstance(exc, httpx_ws.WebSocketUpgradeError):
            status = exc.response.status_code
            code = ErrorCode.UNAUTHORIZED if status in (401, 403) else ErrorCode.CONNECTION_FAILED
            return TransportError(code, f"WebSocket upgrade refused: HTTP {status} from {target}")
        if isinstance(exc, httpx_ws.WebSocketDisconnect):  # an ASGI app closed before accepting
            return TransportError(
                error_code_for_close(exc.code),
                f"WebSocket upgrade refused: closed {exc.code} by {target}",
                close_code=exc.code,
            )
        if isinstance(exc, httpx.TimeoutException):
            return TransportError(
                ErrorCode.CONNECTION_FAILED,
                f"could not connect to {target} within {self.connect_timeout:g} s",
            )
        if isinstance(exc, httpx.TransportError) and str(exc):
            return TransportError(
                ErrorCode.CONNECTION_FAILED, f"could not connect to {target}: {exc}"
            )
        # OSError, ASGI app errors, a 101 without a network stream: all mean "no connection"
        return TransportError(
            ErrorCode.CONNECTION_FAILED, f"could not connect to {target}: {exc!r}"
        )

    # ----------------------------------------------------------------- the host task

    async def _host(self, target: str, headers: dict[str, str]) -> None:
        """Hold the httpx-ws session: connect, read into the inbox, close; never raises."""
        assert self._ready is not None and self._done is not None
        assert self._host_scope is not None and self._reader_scope is not None
        ws: httpx_ws.AsyncWebSocketSession
        try:
            with self._host_scope:
                try:
                    async with httpx_ws.aconnect_ws(
                        target,
                        self._client,
                        max_message_size_bytes=_READ_BYTES,
                        keepalive_ping_interval_seconds=None,  # ours: see _keepalive
                        headers=headers,
                    ) as ws:
                        self._ws = ws
                        self._ready.set()
                        if self._close_request is None:
                            with self._reader_scope:
                                async with anyio.create_task_group() as tg:
                                    if self.ping_interval is not None and not isinstance(
                                        ws.stream, ASGIWebSocketAsyncNetworkStream
                                    ):
                                        tg.start_soon(self._keepalive, ws, self.ping_interval)
                                    await self._read(ws)
                                    tg.cancel_scope.cancel()
                        with anyio.move_on_after(self.close_timeout):
                            await self._close_ws(ws)
                except Exception as exc:
                    if self._ws is None:
                        self._connect_error = self._connect_failed(target, _leaf(exc))
                    else:
                        self._lost(f"connection lost: {_leaf(exc)!r}")
        except BaseException:  # a cancelled host; nothing may escape a detached task
            pass
        finally:
            with anyio.CancelScope(shield=True), anyio.move_on_after(self.close_timeout):
                if self._owns_client and self._client is not None:
                    with contextlib.suppress(Exception):
                        await self._client.aclose()
            self._eof = True
            self._wake()
            self._ready.set()
            self._done.set()

    async def _keepalive(self, ws: httpx_ws.AsyncWebSocketSession, interval: float) -> None:
        """Ping every ``interval`` s; no pong within ``ping_timeout`` (writing the ping
        included) aborts the connection. Never raises."""
        while True:
            await anyio.sleep(interval)
            with anyio.move_on_after(self.ping_timeout) as deadline:
                try:
                    pong = await ws.ping()
                    await pong.wait()
                except Exception:  # closing, or the stream failed: the reader reports it
                    return
            if deadline.cancelled_caught:
                await self._abort("keep-alive ping timed out")
                return

    async def _abort(self, message: str) -> None:
        """Drop the connection now, without a close frame (1006): the stream is closed under
        the session, which wakes every task waiting to write to it, and the reader stops."""
        if self._failure is None:
            self._failure = (message, 1006)
        self._lost()
        self._aborted = True
        ws = self._ws
        if ws is not None:
            # closed "forcefully" (a cancelled close): no TLS goodbye that could block too
            with anyio.CancelScope(shield=True), anyio.CancelScope() as forced:
                forced.cancel()
                await ws.stream.aclose()
        if self._reader_scope is not None:
            self._reader_scope.cancel()
        self._wake()

    async def _read(self, ws: httpx_ws.AsyncWebSocketSession) -> None:
        """Move the session's messages into the inbox until the connection ends."""
        while True:
            try:
                event = await ws.receive()
            except httpx_ws.WebSocketDisconnect as exc:
                self._close_code = exc.code
                self._close_reason = exc.reason
                return
            except httpx_ws.WebSocketNetworkError:
                self._lost()
                return
            if not isinstance(event, wse.Message):
                continue
            data: str | bytes = event.data
            if len(data) > self.max_message_bytes:
                self._failure = ("message from server too large", 1009)
                self._close_code = 1009
                self._close_request = (1009, "message too big")
                return
            if isinstance(data, str):
                error = _server_error(data)
                if error is not None:
                    self._last_error = error
            self._inbox.append(data)
            self._wake()
            while len(self._inbox) >= _INBOX_LIMIT:
                space = self._space = anyio.Event()
                await space.wait()

    async def _close_ws(self, ws: httpx_ws.AsyncWebSocketSession) -> None:
        """Our close frame and the peer's answer, or the answer to the peer's close frame."""
        if self._aborted:
            return
        state = ws.connection.state
        try:
            if state is ConnectionState.OPEN:
                code, reason = self._close_request or (1000, "")
                await ws.send(wse.CloseConnection(code=code, reason=reason))
                if isinstance(ws.stream, ASGIWebSocketAsyncNetworkStream):
                    return  # the in-memory ASGI side never answers a client's close
                while True:  # until the server answers; messages meanwhile stay readable
                    event = await ws.receive()
                    if isinstance(event, wse.Message):
                        self._inbox.append(event.data)
                        self._wake()
            elif state is ConnectionState.REMOTE_CLOSING:
                await ws.close(self._close_code or 1000, self._close_reason)
        except Exception:  # WebSocketDisconnect (the answer), or the peer is gone already
            return

    def _lost(self, detail: str = "") -> None:
        if self._close_code is None:
            self._close_code = 1006
        if detail and self._failure is None:
            self._failure = (detail, 1006)

    def _wake(self) -> None:
        if self._wakeup is not None:
            self._wakeup.set()

    async def _wait_host(self, limit: float) -> None:
        if self._done is None:
            return
        with anyio.CancelScope(shield=True), anyio.move_on_after(limit):
            await self._done.wait()

    async def _stop_host(self) -> None:
        if self._host_scope is not None:
            self._host_scope.cancel()
        await self._wait_host(self.close_timeout)

    # ----------------------------------------------------------------- send

    async def send_text(self, text: str) -> None:
        await self._send(text)

    async def send_bytes(self, data: bytes) -> None:
        await self._send(data)

    async def _send(self, data: str | bytes) -> None:
        ws = self._ws
        if ws is None or self._closed or self._eof or self._aborted:
            raise self._closed_error()
        try:
            with anyio.fail_after(self.send_timeout):
                if isinstance(data, str):
                    await ws.send_text(data)
                else:
                    await ws.send_bytes(data)
        except TimeoutError:
            message = f"send timed out after {self.send_timeout:g} s: the backend is not reading"
            await self._abort(message)
            raise TransportError(ErrorCode.CONNECTION_FAILED, message, close_code=1006) from None
        except LocalProtocolError:  # the connection is closing
            raise self._closed_error() from None
        except Exception as exc:
            if self._aborted:  # the stream was closed under this send: say why
                raise self._closed_error() from None
            if isinstance(exc, httpx_ws.WebSocketNetworkError):
                raise TransportError(
                    ErrorCode.CONNECTION_FAILED, "send failed: connection lost", close_code=1006
                ) from None
            raise TransportError(
                ErrorCode.CONNECTION_FAILED, f"send failed: {exc!r}", close_code=1006
            ) from None

    # ----------------------------------------------------------------- receive

    async def receive(self) -> str | bytes:
        while True:
            if self._inbox:
                message = self._inbox.popleft()
                if self._space is not None:
                    self._space.set()
                return message
            if self._ws is None or self._closed or self._eof:
                raise self._closed_error()
            wakeup = self._wakeup = anyio.Event()
            await wakeup.wait()

    def _closed_error(self) -> TransportError:
        close = self._close_code
        if self._failure is not None:
            message, failure_close = self._failure
            return TransportError(ErrorCode.CONNECTION_FAILED, message, close_code=failure_close)
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
        if not reason and code is ErrorCode.CONNECTION_FAILED:
            # an unmapped close (1012 server restart …): closed, never "could not connect"
            reason = "connection closed"
        return TransportError(code, reason or None, close_code=close)

    # ----------------------------------------------------------------- close

    async def aclose(self, code: int = 1000, reason: str = "") -> None:
        if self._closed:
            return
        self._closed = True
        if self._done is None:  # never connected
            return
        ws = self._ws
        if (
            ws is not None
            and self._close_code is None
            and ws.connection.state is ConnectionState.OPEN
        ):
            self._close_code = code
        if self._close_request is None:
            self._close_request = (code, reason)
        if self._reader_scope is not None:
            self._reader_scope.cancel()
        await self._wait_host(self.close_timeout + 0.5)
        if not self._done.is_set():
            await self._stop_host()

    def abandon(self) -> None:
        """The ``WebSocketTransport`` was garbage-collected without ``aclose``: close the
        connection (1001, going away) from its host task. Callable from any thread."""
        schedule = self._schedule
        if self._closed or schedule is None or (self._done is not None and self._done.is_set()):
            return

        def close_now() -> None:
            if self._closed:
                return
            self._closed = True
            if self._close_request is None:
                self._close_request = (1001, "transport abandoned")
            if self._reader_scope is not None:
                self._reader_scope.cancel()

        # RuntimeError: the event loop is closed already; nothing runs any more
        with contextlib.suppress(RuntimeError):
            schedule(close_now)


def _loop_scheduler() -> Callable[[Callable[[], object]], object]:
    """Run a callback soon on the current event loop (thread-safe)."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:  # not asyncio: anyio's other backend is trio
        lowlevel: Any = importlib.import_module("trio.lowlevel")
        trio_schedule: Callable[[Callable[[], object]], object] = (
            lowlevel.current_trio_token().run_sync_soon
        )
        return trio_schedule
    return loop.call_soon_threadsafe


class WebSocketTransport(Transport):
    """One WebSocket connection to the live-listener endpoint (see the module docstring).

    ``headers`` given to :meth:`connect` are sent on the upgrade request (the caller puts
    ``Authorization: Bearer …`` / ``x-echopanel-token`` there). ``client`` lets tests pass an
    ``httpx.AsyncClient`` (e.g. with ``httpx_ws.transport.ASGIWebSocketTransport``); it is
    then not closed by :meth:`aclose`. ``max_message_bytes`` bounds one server message
    (checked once httpx-ws assembled it; a larger one closes the connection with 1009).
    ``send_timeout`` bounds every send (a send past it aborts the connection, see the module
    docstring); ``ping_interval`` / ``ping_timeout`` the keep-alive.

    A connected transport that is garbage-collected without :meth:`aclose` closes its
    connection (1001) and its host task ends: nothing is left running.
    """

    def __init__(
        self,
        *,
        connect_timeout: float = 5.0,
        ping_interval: float | None = 20.0,
        ping_timeout: float = 20.0,
        close_timeout: float = 2.0,
        send_timeout: float = 10.0,
        max_message_bytes: int = 4 * 1024 * 1024,
        client: httpx.AsyncClient | None = None,
        task_group: anyio.abc.TaskGroup | None = None,
    ) -> None:
        self._conn = _Connection(
            connect_timeout=connect_timeout,
            ping_interval=ping_interval,
            ping_timeout=ping_timeout,
            close_timeout=close_timeout,
            send_timeout=send_timeout,
            max_message_bytes=max_message_bytes,
            client=client,
            task_group=task_group,
        )
        weakref.finalize(self, self._conn.abandon).atexit = False

    def __getattr__(self, name: str) -> Any:
        # settings and internals (tests look at ``_done`` / ``_stream``) live on the connection
        if name == "_conn":
            raise AttributeError(name)
        return getattr(self._conn, name)

    @property
    def connected(self) -> bool:
        """True between a successful :meth:`connect` and the close."""
        return self._conn.connected

    @property
    def close_code(self) -> int | None:
        """The close code once closed (the peer's, or ours when we closed first)."""
        return self._conn.close_code

    @property
    def last_error(self) -> tuple[ErrorCode, str] | None:
        """Code and message of the last server ``error`` message seen, if any."""
        return self._conn.last_error

    async def connect(self, url: str, headers: Mapping[str, str]) -> None:
        await self._conn.connect(url, headers)

    async def send_text(self, text: str) -> None:
        await self._conn.send_text(text)

    async def send_bytes(self, data: bytes) -> None:
        await self._conn.send_bytes(data)

    async def receive(self) -> str | bytes:
        return await self._conn.receive()

    async def aclose(self, code: int = 1000, reason: str = "") -> None:
        await self._conn.aclose(code, reason)
