"""A backend that stops reading (a server frozen with SIGSTOP behaves the same on the wire):
the socket's send buffer fills and every write blocks. ``stop()``, the stop deadline, the
keep-alive and every send must still end the session in bounded time, with nothing left
running. The peer is a real TCP server on loopback that acknowledges, then never reads."""

from __future__ import annotations

import contextlib
import json
import socket
from collections.abc import AsyncIterator

import anyio
import anyio.abc
import pytest
import wsproto
import wsproto.events as wse

from echopanel.client import Session, SessionConfig, WebSocketTransport
from echopanel.errors import ErrorCode, SessionError
from echopanel.testing import FakeCaptureFactory, FakePermissionGate

FLOOD = [bytes(64_000)] * 4000  # 2 s per frame of PCM, sent as fast as the socket takes it


async def acknowledge_then_freeze(stream: anyio.abc.SocketStream) -> None:
    ws = wsproto.WSConnection(wsproto.ConnectionType.SERVER)
    ids = {"connection_id": "c-deaf"}
    while True:
        ws.receive_data(await stream.receive())
        for event in ws.events():
            if isinstance(event, wse.Request):
                await stream.send(ws.send(wse.AcceptConnection()))
                status = {"type": "status", "state": "connected", **ids}
                await stream.send(ws.send(wse.TextMessage(data=json.dumps(status))))
            elif isinstance(event, wse.TextMessage):
                start = json.loads(event.data)
                ids.update(session_id=start["session_id"], attempt_id=start["attempt_id"])
                ack = {"type": "status", "state": "streaming", **ids}
                await stream.send(ws.send(wse.TextMessage(data=json.dumps(ack))))
                await anyio.sleep_forever()  # frozen: reads nothing more


@contextlib.asynccontextmanager
async def deaf_backend() -> AsyncIterator[str]:
    """Upgrade, acknowledge the ``start``, then never read again (and never close)."""
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    port = listener.extra(anyio.abc.SocketAttribute.local_port)

    async def handler(stream: anyio.abc.SocketStream) -> None:
        raw = stream.extra(anyio.abc.SocketAttribute.raw_socket)
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        async with stream:
            with contextlib.suppress(anyio.BrokenResourceError, anyio.EndOfStream):
                await acknowledge_then_freeze(stream)

    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, handler)
        yield f"ws://127.0.0.1:{port}"
        tg.cancel_scope.cancel()


def _session(url: str, *, send_timeout: float, ping: float | None, **config: float) -> Session:
    return Session(
        SessionConfig(url=url, sources=("system",), send_timeout=send_timeout, **config),
        transport_factory=lambda: WebSocketTransport(
            send_timeout=send_timeout,
            ping_interval=ping,
            ping_timeout=0.5,
            close_timeout=0.5,
        ),
        capture_factory=FakeCaptureFactory(frames=FLOOD),
        permission_gate=FakePermissionGate(),
    )


def _no_transport_task_left() -> None:
    assert not [t for t in anyio.get_running_tasks() if t.name.startswith("echopanel ws")]


async def _blocked(session: Session) -> None:
    """Until the audio pump is stuck on a full socket (bounded)."""
    with anyio.fail_after(10):
        while session.state == "listening":
            frames = session._attempt.capture_tasks["system"]  # type: ignore[union-attr]
            await anyio.sleep(0.3)
            if not frames.done.is_set():
                return


async def test_stop_returns_at_its_deadline_when_the_backend_stops_reading() -> None:
    """The ``stop`` message cannot be written; the stop deadline fires anyway (it used to wait
    forever: the send ran under the machine's lock and the timer needed that lock)."""
    async with deaf_backend() as url:
        with anyio.fail_after(15):
            async with _session(url, send_timeout=60, ping=None, stop_timeout=0.5) as session:
                await session.start()
                await _blocked(session)
                with pytest.raises(SessionError) as info:
                    await session.stop()
            assert info.value.code is ErrorCode.SUMMARY_MISSING
            assert "within 0.5 s of the stop" in info.value.message
        _no_transport_task_left()


async def test_keepalive_fires_when_even_the_ping_cannot_be_written() -> None:
    async with deaf_backend() as url:
        with anyio.fail_after(15):
            async with _session(url, send_timeout=60, ping=0.2) as session:
                await session.start()
                with pytest.raises(SessionError) as info:
                    await session.wait_closed()
            assert info.value.code is ErrorCode.CONNECTION_LOST
            assert "keep-alive ping timed out" in info.value.message
        _no_transport_task_left()


async def test_a_send_past_its_deadline_loses_the_connection() -> None:
    async with deaf_backend() as url:
        with anyio.fail_after(15):
            async with _session(url, send_timeout=0.5, ping=None) as session:
                await session.start()
                with pytest.raises(SessionError) as info:
                    await session.wait_closed()
            assert info.value.code is ErrorCode.CONNECTION_LOST
            assert "send timed out after 0.5 s: the backend is not reading" in info.value.message
        _no_transport_task_left()
