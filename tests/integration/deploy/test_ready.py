"""``GET /ready`` against a real server: 200 only while a new session can be taken.

Loading, failed model, full, draining, free again — each answered over real HTTP, next to
``/health`` (liveness), which stays 200 while the replica is merely full or draining. Also:
the WebSocket endpoint accepts the client's routing key in its query string.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import anyio
import httpx
import pytest

from echopanel.client.transport import WebSocketTransport
from echopanel.server import ServerConfig, serve_in_background
from echopanel.server.app import WS_PATH, create_app, server_state
from echopanel.server.readiness import READY_REASONS
from echopanel.testing.asr import FakeAsrBackend

FAST: dict[str, Any] = {
    "asr": "fake",
    "metrics_interval": 0.2,
    "slot_timeout": 0.3,
    "start_timeout": 2.0,
    "flush_timeout": 3.0,
}


async def get(url: str, path: str) -> httpx.Response:
    async with httpx.AsyncClient(timeout=5.0) as client:
        return await client.get(url + path)


async def session(url: str, session_id: str, query: str = "") -> WebSocketTransport:
    """Open a WebSocket (``query`` appended to the path), start, and wait for streaming."""
    transport = WebSocketTransport(connect_timeout=5.0)
    await transport.connect(url.replace("http", "ws", 1) + WS_PATH + query, {})
    await transport.send_text(
        json.dumps({"type": "start", "session_id": session_id, "attempt_id": "a1"})
    )
    with anyio.fail_after(5):
        while True:
            msg = json.loads(await transport.receive())
            assert msg["type"] != "error", msg
            if msg.get("state") == "streaming":
                return transport


async def wait_ready_status(url: str, status: int, limit: float = 5.0) -> httpx.Response:
    with anyio.fail_after(limit):
        while True:
            response = await get(url, "/ready")
            if response.status_code == status:
                return response
            await anyio.sleep(0.02)


@pytest.fixture
async def two_slots() -> AsyncIterator[str]:
    config = ServerConfig(**FAST, max_sessions=2)
    async with serve_in_background(config, asr=FakeAsrBackend()) as url:
        yield url


async def test_ready_tracks_free_slots(two_slots):
    url = two_slots
    response = await get(url, "/ready")
    assert response.status_code == 200
    assert response.headers["cache-control"] == "no-store"
    assert response.json() == {
        "status": "ready",
        "sessions": {"active": 0, "max": 2, "available": 2},
    }
    first = await session(url, "s-1", "?session=s-1")
    body = (await get(url, "/ready")).json()
    assert body["status"] == "ready" and body["sessions"]["available"] == 1
    second = await session(url, "s-2")
    full = await get(url, "/ready")
    assert full.status_code == 503
    assert full.json()["reason"] == "server_at_capacity"
    assert full.json()["sessions"] == {"active": 2, "max": 2, "available": 0}
    assert full.json()["message"]
    # liveness is not capacity: a full replica is alive
    assert (await get(url, "/health")).status_code == 200
    await first.aclose()
    again = await wait_ready_status(url, 200)
    assert again.json()["sessions"]["available"] == 1
    await second.aclose()
    await wait_ready_status(url, 200)
    body = (await get(url, "/ready")).json()
    with anyio.fail_after(5):
        while body["sessions"]["available"] != 2:
            await anyio.sleep(0.02)
            body = (await get(url, "/ready")).json()


async def test_ready_is_503_while_the_model_loads():
    asr = FakeAsrBackend(load_delay=0.6)
    async with serve_in_background(ServerConfig(**FAST), asr=asr, wait_ready=False) as url:
        response = await get(url, "/ready")
        assert response.status_code == 503
        assert response.json()["reason"] == "asr_loading"
        await wait_ready_status(url, 200)
        assert (await get(url, "/health")).status_code == 200


async def test_ready_is_503_when_the_model_failed():
    asr = FakeAsrBackend(fail_load="weights missing")
    async with serve_in_background(ServerConfig(**FAST), asr=asr, wait_ready=False) as url:
        response = await wait_ready_status(url, 503)
        with anyio.fail_after(5):
            while response.json()["reason"] != "asr_unavailable":
                await anyio.sleep(0.02)
                response = await get(url, "/ready")
        # the reason is a code; the model's own error text stays in /health and the log
        assert "weights missing" not in response.text


async def test_ready_is_503_while_draining_and_health_stays_up():
    config = ServerConfig(**FAST)
    app = create_app(config, asr=FakeAsrBackend())
    async with serve_in_background(config, app=app) as url:
        assert (await get(url, "/ready")).status_code == 200
        server_state(app).draining = True
        response = await get(url, "/ready")
        assert response.status_code == 503 and response.json()["reason"] == "draining"
        assert (await get(url, "/health")).status_code == 200
        server_state(app).draining = False
        assert (await get(url, "/ready")).status_code == 200


async def test_draining_wins_over_every_other_reason():
    config = ServerConfig(**FAST, max_sessions=1)
    app = create_app(config, asr=FakeAsrBackend())
    async with serve_in_background(config, app=app) as url:
        transport = await session(url, "only")
        assert (await get(url, "/ready")).json()["reason"] == "server_at_capacity"
        server_state(app).draining = True
        assert (await get(url, "/ready")).json()["reason"] == "draining"
        await transport.aclose()
    assert READY_REASONS[0] == "draining"


@pytest.mark.parametrize(
    "query", ["?session=other-key", "?session=a%2Fb%20c&x=1", "?session=", "?x"]
)
async def test_the_endpoint_accepts_a_routing_key_and_ignores_it(two_slots, query):
    transport = await session(two_slots, "the-id", query)  # the key is not checked
    await transport.send_text(json.dumps({"type": "stop", "session_id": "the-id"}))
    with anyio.fail_after(5):
        while True:
            msg = json.loads(await transport.receive())
            if msg["type"] == "final_summary":
                break
    assert msg["session_id"] == "the-id"
    await transport.aclose()
