"""``WebSocketTransport`` (httpx-ws) against real loopback servers.

A Starlette app under uvicorn plays a scriptable backend (echo, close with a code, send an
``error`` then close, refuse the upgrade); a raw wsproto server on an anyio listener covers
what uvicorn will not do (ignore pings, drop TCP without a close frame, never answer).
"""

from __future__ import annotations

import contextlib
import json
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import anyio
import anyio.abc
import httpx
import pytest
import wsproto
import wsproto.events as wse
from httpx_ws.transport import ASGIWebSocketTransport
from starlette.applications import Starlette
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket

from echopanel.client.transport import (
    ENDPOINT_PATH,
    WebSocketTransport,
    endpoint_url,
    error_code_for_close,
)
from echopanel.errors import ErrorCode, TransportError

# ----------------------------------------------------------------------------- servers


def make_app() -> Starlette:
    """Echo backend; text commands: ``close:CODE:REASON``, ``error:CODE:CLOSE``, ``big:N``."""
    disconnects: list[int] = []

    async def live(websocket: WebSocket) -> None:
        await websocket.accept()
        await websocket.send_text(json.dumps({"type": "status", "state": "connected"}))
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                disconnects.append(message.get("code", 1005))
                return
            text = message.get("text")
            if text is None:
                await websocket.send_bytes(message["bytes"])
                continue
            command, _, arg = text.partition(":")
            if command == "close":
                code, _, reason = arg.partition(":")
                await websocket.close(int(code), reason)
                return
            if command == "error":
                code, _, close = arg.partition(":")
                error = {"type": "error", "code": code, "message": f"server says {code}"}
                await websocket.send_text(json.dumps(error))
                await websocket.close(int(close))
                return
            if command == "big":
                await websocket.send_text("x" * int(arg))
                continue
            await websocket.send_text(text)

    async def refuse(websocket: WebSocket) -> None:
        await websocket.close(1008)  # before accept: uvicorn answers HTTP 403

    app = Starlette(routes=[WebSocketRoute(ENDPOINT_PATH, live), WebSocketRoute("/no", refuse)])
    app.state.disconnects = disconnects
    return app


Handler = Callable[[anyio.abc.SocketStream], Awaitable[None]]


@contextlib.asynccontextmanager
async def raw_server(handler: Handler) -> AsyncIterator[str]:
    """A TCP listener on loopback running ``handler`` per connection."""
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    port = listener.extra(anyio.abc.SocketAttribute.local_port)

    async def wrapped(stream: anyio.abc.SocketStream) -> None:
        async with stream:
            with contextlib.suppress(anyio.BrokenResourceError, anyio.EndOfStream):
                await handler(stream)

    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, wrapped)
        yield f"ws://127.0.0.1:{port}"
        tg.cancel_scope.cancel()


async def ws_accept(stream: anyio.abc.SocketStream) -> wsproto.WSConnection:
    """Server side of the upgrade, by hand."""
    ws = wsproto.WSConnection(wsproto.ConnectionType.SERVER)
    while True:
        ws.receive_data(await stream.receive())
        for event in ws.events():
            if isinstance(event, wse.Request):
                await stream.send(ws.send(wse.AcceptConnection()))
                return ws


@pytest.fixture
async def backend(uvicorn_server: Any) -> AsyncIterator[tuple[str, Starlette]]:
    app = make_app()
    async with uvicorn_server(app) as url:
        yield url, app


async def closed_error(transport: WebSocketTransport, limit: float = 5.0) -> TransportError:
    """Receive until the connection ends; the TransportError it ends with."""
    with anyio.fail_after(limit):
        while True:
            try:
                await transport.receive()
            except TransportError as exc:
                return exc


# ----------------------------------------------------------------------------- helpers


def test_endpoint_url_and_close_code_mapping() -> None:
    assert endpoint_url("ws://h:1") == f"http://h:1{ENDPOINT_PATH}"
    assert endpoint_url("wss://h/") == f"https://h{ENDPOINT_PATH}"
    assert endpoint_url("http://h:1/custom") == "http://h:1/custom"
    with pytest.raises(ValueError, match="scheme"):
        endpoint_url("ftp://h")
    assert error_code_for_close(None) is ErrorCode.CONNECTION_FAILED
    assert error_code_for_close(1008) is ErrorCode.UNAUTHORIZED
    assert error_code_for_close(1013) is ErrorCode.SERVER_AT_CAPACITY
    assert error_code_for_close(1011) is ErrorCode.ASR_UNAVAILABLE
    assert error_code_for_close(4000) is ErrorCode.CONNECTION_FAILED


def test_constructible_outside_an_event_loop() -> None:
    transport = WebSocketTransport(ping_interval=None, connect_timeout=1.0)
    assert not transport.connected and transport.close_code is None


# ----------------------------------------------------------------------------- messages, close


async def test_text_and_binary_both_ways_then_server_normal_close(backend) -> None:
    url, _ = backend
    transport = WebSocketTransport(connect_timeout=5)
    await transport.connect(url, {"x-echopanel-token": "t"})
    assert transport.connected
    assert json.loads(await transport.receive())["state"] == "connected"
    await transport.send_text("hi")
    assert await transport.receive() == "hi"
    await transport.send_bytes(b"\x00\x01")
    assert await transport.receive() == b"\x00\x01"
    await transport.send_text("close:1000:bye")
    closed = await closed_error(transport)
    assert closed.code is ErrorCode.CONNECTION_FAILED
    assert closed.close_code == 1000 and transport.close_code == 1000
    assert "connection closed" in closed.message and "bye" in closed.message
    assert not transport.connected
    again = await closed_error(transport)  # stays closed
    assert again.close_code == 1000
    with pytest.raises(TransportError):
        await transport.send_text("late")
    await transport.aclose()
    await transport.aclose()


async def test_host_task_runs_in_the_given_task_group_and_ends_with_the_close(backend) -> None:
    url, _ = backend
    async with anyio.create_task_group() as tg:
        transport = WebSocketTransport(connect_timeout=5, task_group=tg)
        await transport.connect(url, {})
        assert json.loads(await transport.receive())["state"] == "connected"
        hosts = [t for t in anyio.get_running_tasks() if t.name.startswith("echopanel ws")]
        assert len(hosts) == 1
        await transport.aclose()
    # leaving the task group did not hang: the host task ended with the close
    assert not [t for t in anyio.get_running_tasks() if t.name.startswith("echopanel ws")]


@pytest.mark.parametrize(
    ("command", "code", "close", "message"),
    [
        ("error:server_at_capacity:1013", ErrorCode.SERVER_AT_CAPACITY, 1013, "server says"),
        ("error:start_timeout:1008", ErrorCode.START_TIMEOUT, 1008, "server says"),
        ("error:unsupported_audio_format:1003", ErrorCode.UNSUPPORTED_AUDIO_FORMAT, 1003, "says"),
        ("close:1008:", ErrorCode.UNAUTHORIZED, 1008, None),
        ("close:1011:model gone", ErrorCode.ASR_UNAVAILABLE, 1011, "model gone"),
        ("close:4000:", ErrorCode.CONNECTION_FAILED, 4000, None),
    ],
)
async def test_close_code_and_error_message_mapping(backend, command, code, close, message):
    url, _ = backend
    transport = WebSocketTransport()
    await transport.connect(url, {})
    await transport.receive()
    await transport.send_text(command)
    closed = await closed_error(transport)
    assert (closed.code, closed.close_code) == (code, close)
    if message is not None:
        assert message in closed.message
    if command.startswith("error"):
        assert transport.last_error is not None and transport.last_error[0] is code
    await transport.aclose()


async def test_client_close_is_polite_idempotent_and_final(backend) -> None:
    url, app = backend
    transport = WebSocketTransport()
    await transport.connect(url, {})
    await transport.receive()
    await transport.aclose(1000, "done")
    await transport.aclose(4001)  # harmless, changes nothing
    assert transport.close_code == 1000 and not transport.connected
    with anyio.fail_after(3):
        while not app.state.disconnects:  # noqa: ASYNC110
            await anyio.sleep(0.01)
    assert app.state.disconnects == [1000]
    closed = await closed_error(transport)
    assert closed.close_code == 1000 and closed.code is ErrorCode.CONNECTION_FAILED
    with pytest.raises(TransportError):
        await transport.send_bytes(b"x")


@pytest.mark.parametrize("structured", [False, True])
async def test_transport_dropped_without_aclose_closes_its_connection(
    backend, structured: bool
) -> None:
    """A connected transport that is garbage-collected without ``aclose`` must not keep
    its host task (reader, pinger) and the connection alive forever."""
    import gc

    from echopanel.client import transport as transport_module

    url, app = backend
    async with anyio.create_task_group() as tg:
        transport = WebSocketTransport(task_group=tg if structured else None)
        await transport.connect(url, {})
        await transport.receive()
        del transport
        gc.collect()
        with anyio.fail_after(5):
            while not app.state.disconnects:  # noqa: ASYNC110
                await anyio.sleep(0.01)
        assert app.state.disconnects == [1001]
        # the host task ended too (the task group can exit on its own)
    with anyio.fail_after(3):
        while transport_module._detached:  # noqa: ASYNC110
            await anyio.sleep(0.01)


async def test_close_before_connect_and_reuse_are_harmless_or_refused(backend) -> None:
    url, _ = backend
    never = WebSocketTransport()
    await never.aclose()
    with pytest.raises(TransportError):
        await never.receive()
    with pytest.raises(TransportError):
        await never.send_text("x")
    with pytest.raises(TransportError, match="already used"):
        await never.connect(url, {})
    transport = WebSocketTransport()
    await transport.connect(url, {})
    with pytest.raises(TransportError, match="already used"):
        await transport.connect(url, {})
    await transport.aclose()


async def test_transports_close_in_any_order_and_outside_the_scope_they_opened_in(backend):
    url, _ = backend
    first, second = WebSocketTransport(), WebSocketTransport()
    with anyio.CancelScope():  # no scope of the transport stays on the caller's task
        await first.connect(url, {})
        await second.connect(url, {})
    await first.aclose()  # FIFO, not LIFO
    await second.receive()
    await second.send_text("still here")
    assert await second.receive() == "still here"
    await second.aclose()


async def test_send_from_another_task_while_the_owner_receives(backend) -> None:
    url, _ = backend
    transport = WebSocketTransport()
    await transport.connect(url, {})
    await transport.receive()
    got: list[str | bytes] = []
    async with anyio.create_task_group() as tg:

        async def sender() -> None:
            for i in range(20):
                await transport.send_text(f"m{i}")

        tg.start_soon(sender)
        with anyio.fail_after(5):
            while len(got) < 20:
                got.append(await transport.receive())
    assert got == [f"m{i}" for i in range(20)]
    await transport.aclose()


async def test_cancelled_receive_then_close(backend) -> None:
    url, app = backend
    transport = WebSocketTransport()
    await transport.connect(url, {})
    await transport.receive()
    with anyio.move_on_after(0.1):
        await transport.receive()  # nothing comes
    with anyio.CancelScope() as scope:
        scope.cancel()
        await transport.aclose(1000)  # closes even from a cancelled scope
    with anyio.fail_after(3):
        while not app.state.disconnects:  # noqa: ASYNC110
            await anyio.sleep(0.01)
    assert app.state.disconnects == [1000]


async def test_message_larger_than_the_limit_closes_1009(backend) -> None:
    url, _ = backend
    transport = WebSocketTransport(max_message_bytes=1000)
    await transport.connect(url, {})
    await transport.receive()
    await transport.send_text("big:500")
    assert len(await transport.receive()) == 500
    await transport.send_text("big:5000")
    closed = await closed_error(transport)
    assert closed.code is ErrorCode.CONNECTION_FAILED and closed.close_code == 1009
    assert "too large" in closed.message
    await transport.aclose()


# ----------------------------------------------------------------------------- connect failures


async def test_connection_refused_is_connection_failed() -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    transport = WebSocketTransport(connect_timeout=2)
    with pytest.raises(TransportError) as info:
        await transport.connect(f"ws://127.0.0.1:{port}", {})
    assert info.value.code is ErrorCode.CONNECTION_FAILED
    assert f"could not connect to http://127.0.0.1:{port}{ENDPOINT_PATH}" in info.value.message
    assert not transport.connected
    await transport.aclose()


async def test_connect_timeout_is_connection_failed() -> None:
    async def mute(stream: anyio.abc.SocketStream) -> None:
        await anyio.sleep_forever()

    async with raw_server(mute) as url:
        transport = WebSocketTransport(connect_timeout=0.3)
        began = anyio.current_time()
        with pytest.raises(TransportError) as info:
            await transport.connect(url, {})
        assert anyio.current_time() - began < 2
        assert info.value.code is ErrorCode.CONNECTION_FAILED
        assert "within 0.3 s" in info.value.message
        await transport.aclose()


async def test_refused_upgrade_is_reported_with_the_http_status(backend) -> None:
    url, _ = backend
    transport = WebSocketTransport()
    with pytest.raises(TransportError) as info:
        await transport.connect(f"{url}/no", {})
    assert info.value.code is ErrorCode.UNAUTHORIZED
    assert "HTTP 403" in info.value.message

    async def plain_http(stream: anyio.abc.SocketStream) -> None:
        await stream.receive()
        await stream.send(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n")
        await anyio.sleep(1)

    async with raw_server(plain_http) as plain:
        with pytest.raises(TransportError) as info:
            await WebSocketTransport().connect(plain, {})
    assert info.value.code is ErrorCode.CONNECTION_FAILED
    assert "upgrade refused: HTTP 404" in info.value.message
    with pytest.raises(TransportError) as info:
        await WebSocketTransport().connect("ftp://x", {})
    assert "bad URL" in info.value.message


async def test_cancelled_connect_leaves_nothing_behind() -> None:
    async def mute(stream: anyio.abc.SocketStream) -> None:
        await anyio.sleep_forever()

    async with raw_server(mute) as url:
        transport = WebSocketTransport(connect_timeout=10)
        with anyio.move_on_after(0.2):
            await transport.connect(url, {})
        assert transport._done is not None and transport._done.is_set()
        await transport.aclose()


# ----------------------------------------------------------------------------- keep-alive, drops


async def test_keepalive_pings_go_out_and_answered_pings_keep_the_connection() -> None:
    pings = 0
    closes: list[int] = []

    async def answering(stream: anyio.abc.SocketStream) -> None:
        nonlocal pings
        ws = await ws_accept(stream)
        while True:
            ws.receive_data(await stream.receive())
            for event in ws.events():
                if isinstance(event, wse.Ping):
                    pings += 1
                    await stream.send(ws.send(event.response()))
                    if pings == 5:
                        await stream.send(ws.send(wse.TextMessage(data="after pings")))
                elif isinstance(event, wse.CloseConnection):
                    closes.append(event.code)
                    await stream.send(ws.send(event.response()))
                    return

    async with raw_server(answering) as url:
        transport = WebSocketTransport(ping_interval=0.05, ping_timeout=0.5)
        await transport.connect(url, {})
        with anyio.fail_after(3):
            assert await transport.receive() == "after pings"
        assert pings >= 5 and transport.connected
        began = anyio.current_time()
        await transport.aclose(1000)
        assert closes == [1000] and anyio.current_time() - began < 1  # answered: no wait


async def test_unanswered_pings_drop_the_connection() -> None:
    async def deaf(stream: anyio.abc.SocketStream) -> None:
        await ws_accept(stream)
        while await stream.receive():
            pass  # reads and never answers

    async with raw_server(deaf) as url:
        transport = WebSocketTransport(ping_interval=0.05, ping_timeout=0.2)
        await transport.connect(url, {})
        closed = await closed_error(transport, limit=3)
        assert closed.code is ErrorCode.CONNECTION_FAILED
        assert closed.message == "keep-alive ping timed out" and closed.close_code == 1006
        with pytest.raises(TransportError):
            await transport.send_text("late")
        await transport.aclose()


@pytest.mark.parametrize("with_error", [False, True])
async def test_tcp_drop_without_close_frame_is_1006(with_error: bool) -> None:
    async def vanish(stream: anyio.abc.SocketStream) -> None:
        ws = await ws_accept(stream)
        if with_error:
            error = {"type": "error", "code": "asr_unavailable", "message": "model crashed"}
            await stream.send(ws.send(wse.TextMessage(data=json.dumps(error))))
        await stream.aclose()

    async with raw_server(vanish) as url:
        transport = WebSocketTransport(ping_interval=None)
        await transport.connect(url, {})
        if with_error:
            assert "model crashed" in str(await transport.receive())
        closed = await closed_error(transport)
        assert closed.close_code == 1006
        if with_error:
            assert closed.code is ErrorCode.ASR_UNAVAILABLE and closed.message == "model crashed"
        else:
            assert closed.code is ErrorCode.CONNECTION_FAILED
            assert closed.message == "connection lost"
        await transport.aclose()


async def test_closing_the_stream_under_the_transport_is_a_lost_connection(backend) -> None:
    url, _ = backend
    transport = WebSocketTransport()
    await transport.connect(url, {})
    await transport.receive()
    await transport._stream.aclose()  # what the server tests do to simulate a dead client
    closed = await closed_error(transport)
    assert closed.close_code == 1006 and closed.code is ErrorCode.CONNECTION_FAILED
    await transport.aclose()


# ----------------------------------------------------------------------------- in memory


async def test_injected_client_with_in_memory_asgi_app_is_not_closed() -> None:
    app = make_app()
    async with httpx.AsyncClient(transport=ASGIWebSocketTransport(app)) as http:
        transport = WebSocketTransport(client=http)  # pings are skipped in memory
        await transport.connect(f"http://test{ENDPOINT_PATH}", {})
        assert json.loads(await transport.receive())["state"] == "connected"
        await transport.send_text("echo")
        assert await transport.receive() == "echo"
        await transport.send_text("error:invalid_message:1007")
        closed = await closed_error(transport)
        assert (closed.code, closed.close_code) == (ErrorCode.INVALID_MESSAGE, 1007)
        await transport.aclose()
        assert not http.is_closed
        again = WebSocketTransport(client=http)
        await again.connect(f"http://test{ENDPOINT_PATH}", {})
        await again.receive()
        await again.aclose()


async def test_an_unmapped_close_says_closed_not_could_not_connect(backend) -> None:
    url, _ = backend
    transport = WebSocketTransport()
    await transport.connect(url, {})
    await transport.receive()
    await transport.send_text("close:1012:")
    closed = await closed_error(transport)
    assert (closed.code, closed.close_code) == (ErrorCode.CONNECTION_FAILED, 1012)
    assert closed.message == "connection closed"
    await transport.aclose()
