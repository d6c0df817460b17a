"""``FakeTransport``: an in-memory backend connection with a scriptable server side.

The fake server answers like the real one: ``status: connected`` after connect,
``status: streaming`` after a valid ``start``, ``final_summary`` then close 1000 after
``stop``. Each reaction can be scripted instead (an error code, a close, silence, a delay),
and a test can push any message or close at any time. Everything the client sent is kept:
``sent`` (raw), ``messages`` (decoded client messages) and ``frames`` (decoded audio).
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Mapping
from typing import Any, Literal

import anyio
import anyio.lowlevel
import attrs

from echopanel.errors import CLOSE_CODES, ErrorCode, ProtocolError, TransportError, default_message
from echopanel.ports import Transport
from echopanel.protocol.frames import AudioFrame, decode_audio_frame
from echopanel.protocol.messages import (
    ClientMessage,
    ErrorMessage,
    FinalSummary,
    ServerMessage,
    StartMessage,
    StatusMessage,
    StopMessage,
    decode_client,
    encode,
)

__all__ = ["FakeTransport", "FakeTransportFactory", "StartReply", "StopReply"]

StartReply = Literal["ack", "silent"] | ErrorCode
StopReply = Literal["summary", "silent", "close"]


class _Closed:
    def __init__(self, code: int, error: ErrorCode | None, message: str) -> None:
        self.code, self.error, self.message = code, error, message


class FakeTransport(Transport):
    """In-memory :class:`~echopanel.ports.Transport`.

    ``fail_connect`` (a message) makes ``connect`` raise ``connection_failed``;
    ``connect_delay`` / ``hang_connect`` slow or block it. ``on_start``: ``"ack"`` (default),
    ``"silent"`` (never acknowledge) or an :class:`ErrorCode` (send that error, then close
    with its close code). ``ack_delay`` delays the acknowledgment. ``on_stop``:
    ``"summary"`` (default), ``"silent"`` or ``"close"`` (close 1000 without a summary).
    ``summary`` is the ``final_summary`` sent (ids filled in).
    """

    def __init__(
        self,
        *,
        fail_connect: str | None = None,
        connect_delay: float = 0.0,
        hang_connect: bool = False,
        on_start: StartReply = "ack",
        ack_delay: float = 0.0,
        on_stop: StopReply = "summary",
        summary: FinalSummary | None = None,
        connection_id: str = "conn-fake",
        echo_ids: bool = True,
    ) -> None:
        self.fail_connect = fail_connect
        self.connect_delay = connect_delay
        self.hang_connect = hang_connect
        self.on_start = on_start
        self.ack_delay = ack_delay
        self.on_stop = on_stop
        self.summary = summary or FinalSummary(markdown="(fake summary)")
        self.connection_id = connection_id
        self.echo_ids = echo_ids
        self.url: str | None = None
        self.headers: dict[str, str] = {}
        self.connected = False
        self.closed = False
        self.close_calls = 0
        self.close_code: int | None = None
        self.sent: list[str | bytes] = []
        self.messages: list[ClientMessage] = []
        self.frames: list[AudioFrame] = []
        self.start: StartMessage | None = None
        self._inbox: collections.deque[tuple[float, str | bytes | _Closed]] = collections.deque()
        self._wakeup: anyio.Event | None = None
        self._server_closed: _Closed | None = None

    # ------------------------------------------------------------------ scripting

    def _stamp(self, message: Any) -> Any:
        """``message`` carrying the ids the real server puts on it."""
        known = self.start is not None and self.echo_ids
        return attrs.evolve(
            message,
            connection_id=self.connection_id,
            session_id=self.start.session_id if known and self.start else None,
            attempt_id=self.start.attempt_id if known and self.start else None,
        )

    def push(self, message: ServerMessage | str | bytes, *, delay: float = 0.0) -> None:
        """Deliver ``message`` to the client (after ``delay`` seconds)."""
        item = message if isinstance(message, str | bytes) else encode(message)
        self._enqueue(item, delay)

    def server_close(
        self,
        code: int = 1000,
        *,
        error: ErrorCode | None = None,
        message: str = "",
        delay: float = 0.0,
    ) -> None:
        """Close from the server side; ``error`` first sends that ``error`` message."""
        if error is not None:
            self.push(
                self._stamp(ErrorMessage(code=error, message=message or default_message(error))),
                delay=delay,
            )
        self._enqueue(_Closed(code, error, message), delay)

    def _enqueue(self, item: str | bytes | _Closed, delay: float) -> None:
        at = anyio.current_time() + delay if delay else 0.0
        self._inbox.append((at, item))
        if self._wakeup is not None:
            self._wakeup.set()

    def sent_of(self, kind: type) -> list[ClientMessage]:
        return [m for m in self.messages if isinstance(m, kind)]

    def audio(self, source: str | None = None) -> bytes:
        """All PCM received (for ``source``), in order."""
        return b"".join(f.pcm for f in self.frames if source is None or f.source == source)

    # ------------------------------------------------------------------ Transport

    async def connect(self, url: str, headers: Mapping[str, str]) -> None:
        self.url, self.headers = url, dict(headers)
        if self.hang_connect:
            await anyio.sleep_forever()
        if self.connect_delay:
            await anyio.sleep(self.connect_delay)
        if self.fail_connect is not None:
            raise TransportError(ErrorCode.CONNECTION_FAILED, self.fail_connect)
        self.connected = True
        self.push(StatusMessage(state="connected", connection_id=self.connection_id))

    def _check_open(self) -> None:
        if not self.connected or self.closed or self._server_closed is not None:
            raise TransportError(ErrorCode.CONNECTION_FAILED, "connection closed", close_code=1006)

    async def send_text(self, text: str) -> None:
        self._check_open()
        await anyio.lowlevel.checkpoint()
        self.sent.append(text)
        message = decode_client(text)
        self.messages.append(message)
        if isinstance(message, StartMessage):
            self.start = message
            if self.on_start == "ack":
                self.push(self._stamp(StatusMessage(state="streaming")), delay=self.ack_delay)
            elif isinstance(self.on_start, ErrorCode):
                self.server_close(CLOSE_CODES.get(self.on_start, 1011), error=self.on_start)
        elif isinstance(message, StopMessage):
            if self.on_stop == "summary":
                self.push(self._stamp(self.summary))
                self.server_close(1000)
            elif self.on_stop == "close":
                self.server_close(1000)

    async def send_bytes(self, data: bytes) -> None:
        self._check_open()
        await anyio.lowlevel.checkpoint()
        self.sent.append(data)
        try:
            self.frames.append(decode_audio_frame(data))
        except ProtocolError as exc:  # the real server drops it and says so
            self.push(self._stamp(ErrorMessage(code=exc.code, message=exc.message)))

    async def receive(self) -> str | bytes:
        while True:
            if self._server_closed is not None:
                raise self._closed_error(self._server_closed)
            if self.closed:
                raise TransportError(
                    ErrorCode.CONNECTION_FAILED, "connection closed", close_code=self.close_code
                )
            now = anyio.current_time()
            ready = next((i for i, (at, _) in enumerate(self._inbox) if at <= now), None)
            if ready is not None:
                _, item = self._inbox[ready]
                del self._inbox[ready]
                if isinstance(item, _Closed):
                    self._server_closed = item
                    continue
                return item
            self._wakeup = anyio.Event()
            timeout = min((at - now for at, _ in self._inbox), default=None)
            with anyio.move_on_after(timeout if timeout is not None else float("inf")):
                await self._wakeup.wait()

    def _closed_error(self, closed: _Closed) -> TransportError:
        code = closed.error or ErrorCode.CONNECTION_FAILED
        return TransportError(code, closed.message or "connection closed", close_code=closed.code)

    async def aclose(self, code: int = 1000, reason: str = "") -> None:
        self.close_calls += 1
        if not self.closed:
            self.closed = True
            self.close_code = code
        if self._wakeup is not None:
            self._wakeup.set()


class FakeTransportFactory:
    """``Callable[[], Transport]``: one :class:`FakeTransport` per attempt, all kept in ``made``.

    ``scripts`` (optional) gives per-attempt keyword arguments (first call uses the first);
    otherwise ``common`` keyword arguments apply. ``configure`` runs on each new transport.
    """

    def __init__(
        self,
        scripts: list[Mapping[str, object]] | None = None,
        *,
        configure: Callable[[FakeTransport], None] | None = None,
        **common: object,
    ) -> None:
        self.scripts = list(scripts or [])
        self.common = common
        self.configure = configure
        self.made: list[FakeTransport] = []

    def __call__(self) -> FakeTransport:
        index = len(self.made)
        kwargs = dict(self.scripts[index]) if index < len(self.scripts) else dict(self.common)
        transport = FakeTransport(**kwargs)  # type: ignore[arg-type]
        if self.configure is not None:
            self.configure(transport)
        self.made.append(transport)
        return transport

    @property
    def last(self) -> FakeTransport:
        return self.made[-1]

    @property
    def all_closed(self) -> bool:
        return all(t.closed for t in self.made)
