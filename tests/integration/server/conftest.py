"""Fixtures for the server integration tests: a real uvicorn server, a protocol client."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from typing import Any

import anyio
import httpx
import pytest

from echopanel.client.transport import WebSocketTransport
from echopanel.errors import TransportError
from echopanel.protocol import encode_audio_frame
from echopanel.server import ServerConfig, serve_in_background
from echopanel.testing.asr import FakeAsrBackend

FAST = {
    "asr": "fake",
    "metrics_interval": 0.2,
    "analysis_interval": 0.3,
    "slot_timeout": 0.5,
    "start_timeout": 2.0,
    "flush_timeout": 3.0,
}


def fast_config(**overrides: Any) -> ServerConfig:
    return ServerConfig(**{**FAST, **overrides})


class Client:
    """A test client speaking the wire protocol through ``WebSocketTransport``."""

    def __init__(self, url: str, transport: WebSocketTransport) -> None:
        self.url = url
        self.t = transport
        self.received: list[dict[str, Any]] = []

    async def send(self, obj: Mapping[str, Any] | str) -> None:
        await self.t.send_text(obj if isinstance(obj, str) else json.dumps(obj))

    async def start(self, session_id: str = "s1", **fields: Any) -> None:
        await self.send({"type": "start", "session_id": session_id, "attempt_id": "a1", **fields})

    async def audio(self, seconds: float = 0.1, source: str = "system", count: int = 1) -> None:
        pcm = b"\x01\x00" * int(16000 * seconds)
        for _ in range(count):
            await self.t.send_bytes(encode_audio_frame(source, pcm))  # type: ignore[arg-type]

    async def recv(self, limit: float = 5.0) -> dict[str, Any]:
        with anyio.fail_after(limit):
            raw = await self.t.receive()
        msg: dict[str, Any] = json.loads(raw)
        self.received.append(msg)
        return msg

    async def expect(self, kind: str, limit: float = 5.0, **fields: Any) -> dict[str, Any]:
        """Skip messages until one of ``kind`` (matching ``fields``) arrives."""
        with anyio.fail_after(limit):
            while True:
                msg = await self.recv(limit)
                if msg["type"] == kind and all(msg.get(k) == v for k, v in fields.items()):
                    return msg

    async def expect_close(self, limit: float = 5.0) -> TransportError:
        """Read until the server closes; returns the TransportError raised."""
        with anyio.fail_after(limit):
            while True:
                try:
                    await self.recv(limit)
                except TransportError as exc:
                    return exc

    async def aclose(self) -> None:
        await self.t.aclose()


ConnectFn = Callable[..., Any]


@pytest.fixture
async def connect() -> AsyncIterator[ConnectFn]:
    clients: list[Client] = []

    async def _connect(url: str, headers: Mapping[str, str] | None = None) -> Client:
        transport = WebSocketTransport(connect_timeout=5.0)
        await transport.connect(url, headers or {})
        client = Client(url, transport)
        clients.append(client)
        return client

    yield _connect
    for client in clients:
        await client.aclose()


@pytest.fixture
async def server() -> AsyncIterator[str]:
    """A real server with default fast settings and the fake ASR."""
    async with serve_in_background(fast_config(), asr=FakeAsrBackend()) as url:
        yield url


async def metric(url: str, name: str, token: str | None = None) -> float:
    """The value of one sample of ``/metrics`` (``name`` may include labels)."""
    headers = {"authorization": f"Bearer {token}"} if token else {}
    async with httpx.AsyncClient() as client:
        text = (await client.get(f"{url}/metrics", headers=headers)).text
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    raise AssertionError(f"{name} not in /metrics")


async def wait_idle(url: str, token: str | None = None, limit: float = 5.0) -> None:
    """Wait until the server has no active session (active_sessions == 0)."""
    with anyio.fail_after(limit):
        while await metric(url, "echopanel_active_sessions", token) != 0:  # noqa: ASYNC110
            await anyio.sleep(0.02)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def serve_process(
    *args: str, code: str | None = None
) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """A server subprocess on a free loopback port: ``(proc, base URL)``, output piped.

    Without ``code`` it runs ``echopanel serve --asr fake --port PORT *args``; with it,
    ``python -c code PORT *args``. On exit a process still running is killed and reaped.
    """
    port = free_port()
    if code is None:
        command = ["-m", "echopanel", "serve", "--asr", "fake", "--port", str(port), *args]
    else:
        command = ["-c", code, str(port), *args]
    proc = subprocess.Popen(
        [sys.executable, *command],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=dict(os.environ),
    )
    try:
        yield proc, f"http://127.0.0.1:{port}"
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()


async def process_ready(proc: subprocess.Popen[str], url: str) -> None:
    """Wait (up to 30 s) until the subprocess's ``/health`` answers 200; fail if it exits."""
    async with httpx.AsyncClient(timeout=1) as http:
        with anyio.fail_after(30):
            while True:
                assert proc.poll() is None, "server exited"
                with contextlib.suppress(httpx.HTTPError):
                    if (await http.get(f"{url}/health")).status_code == 200:
                        return
                await anyio.sleep(0.1)


@pytest.fixture
def h() -> Any:
    """Helper functions (test modules cannot import conftest in importlib mode)."""
    import types

    return types.SimpleNamespace(
        fast_config=fast_config,
        metric=metric,
        wait_idle=wait_idle,
        Client=Client,
        serve_process=serve_process,
        process_ready=process_ready,
    )
