"""Host, Origin and admission checks against a real uvicorn server and real clients.

A hostile web page can reach a loopback server: its WebSocket upgrade carries the page's
``Origin`` (refused, HTTP 403, before the socket is accepted), and a DNS-rebinding page
reaches it under the attacker's host name (refused, HTTP 421, for HTTP and WebSocket).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping

import anyio
import httpx
import pytest
from httpx_ws import WebSocketUpgradeError, aconnect_ws

from echopanel.server import serve_in_background
from echopanel.testing.asr import FakeAsrBackend

WS = "/ws/live-listener"


async def _upgrade(url: str, headers: Mapping[str, str]) -> tuple[int, dict | None]:
    """Open the WebSocket with ``headers``; (101, first message) or (status, refusal body).

    A real WebSocket client (httpx-ws) when the upgrade succeeds; a refusal's body is read
    from a plain upgrade request (httpx-ws closes the refused response unread).
    """
    async with httpx.AsyncClient(timeout=5) as http:
        try:
            async with aconnect_ws(f"{url}{WS}", http, headers=dict(headers)) as ws:
                with anyio.fail_after(5):
                    return 101, json.loads(await ws.receive_text())
        except WebSocketUpgradeError as exc:
            status = exc.response.status_code
        upgrade = {
            "connection": "upgrade",
            "upgrade": "websocket",
            "sec-websocket-version": "13",
            "sec-websocket-key": "dGhlIHNhbXBsZSBub25jZQ==",
            **headers,
        }
        response = await http.get(f"{url}{WS}", headers=upgrade)
        assert response.status_code == status
        return status, response.json()


@pytest.fixture
async def server(h) -> AsyncIterator[str]:
    config = h.fast_config(allow_origins=("https://app.example", "http://localhost:3000"))
    async with serve_in_background(config, asr=FakeAsrBackend()) as url:
        yield url


def _port(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


@pytest.mark.parametrize(
    "origin",
    ["https://evil.example", "null", "http://127.0.0.1", "http://localhost:3001", "garbage"],
)
async def test_an_upgrade_from_a_foreign_origin_is_refused_before_accept(server, origin, h):
    status, body = await _upgrade(server, {"origin": origin})
    assert status == 403 and body is not None and body["error"] == "origin_not_allowed"
    assert await h.metric(server, "echopanel_ws_connections_total") == 0  # never accepted
    refused = 'echopanel_sessions_rejected_total{reason="origin_not_allowed"}'
    assert await h.metric(server, refused) == 2  # the WebSocket client and the plain upgrade


async def test_no_origin_own_origin_and_allowed_origins_connect(server):
    own = f"http://127.0.0.1:{_port(server)}"
    for headers in (
        {},
        {"origin": own},
        {"origin": own.upper()},  # origins compare case-insensitively
        {"origin": "https://app.example"},
        {"origin": "https://APP.example:443"},  # the default port is the same origin
        {"origin": "http://localhost:3000"},
    ):
        status, first = await _upgrade(server, headers)
        assert status == 101 and first is not None and first["state"] == "connected", headers


async def test_own_origin_follows_the_host_the_server_was_reached_on(server):
    port = _port(server)
    headers = {"host": f"localhost:{port}", "origin": f"http://localhost:{port}"}
    assert (await _upgrade(server, headers))[0] == 101
    # the page is on 127.0.0.1 but the socket goes to localhost: another origin
    headers = {"host": f"localhost:{port}", "origin": f"http://127.0.0.1:{port}"}
    assert (await _upgrade(server, headers))[0] == 403


@pytest.mark.parametrize("host", ["attacker.example", "attacker.example:{port}", "10.0.0.1:{port}"])
async def test_a_rebinding_host_gets_421_on_http_and_websocket(server, host):
    host = host.format(port=_port(server))
    async with httpx.AsyncClient(timeout=5) as http:
        for path in ("/health", "/metrics", WS):
            response = await http.get(f"{server}{path}", headers={"host": host})
            assert response.status_code == 421, path
            assert response.json()["error"] == "misdirected_request"
            assert "alpha" not in response.text and "sessions" not in response.text
    status, body = await _upgrade(server, {"host": host})
    assert status == 421 and body is not None and body["error"] == "misdirected_request"


@pytest.mark.parametrize(
    "host", ["localhost:{port}", "127.0.0.1:{port}", "127.8.9.10", "[::1]:{port}"]
)
async def test_loopback_hosts_are_served(server, host):
    async with httpx.AsyncClient(timeout=5) as http:
        response = await http.get(
            f"{server}/health", headers={"host": host.format(port=_port(server))}
        )
    assert response.status_code == 200 and response.json()["status"] == "ok"


async def test_the_host_check_is_for_loopback_binds_only(h):
    # bound off loopback (a token is required there), any Host name may reach the server
    config = h.fast_config(host="0.0.0.0", token="t")
    async with serve_in_background(config, asr=FakeAsrBackend()) as url:  # noqa: SIM117
        async with httpx.AsyncClient(timeout=5) as http:
            response = await http.get(f"{url}/health", headers={"host": "asr.example.org"})
    assert response.status_code == 200
    # the Origin check still applies
    async with serve_in_background(config, asr=FakeAsrBackend()) as url:
        status, _ = await _upgrade(
            url, {"origin": "https://evil.example", "authorization": "Bearer t"}
        )
    assert status == 403


async def test_pending_connections_are_capped_with_503(h, connect):
    config = h.fast_config(max_pending=2, max_sessions=4)
    async with serve_in_background(config, asr=FakeAsrBackend()) as url:
        first, second = await connect(url), await connect(url)
        await first.recv()
        await second.recv()
        status, body = await _upgrade(url, {})
        assert status == 503 and body is not None and body["error"] == "server_at_capacity"
        assert "2 connections" in body["message"]
        # a connection that starts a session is no longer pending: room for one more
        await first.start("s1")
        await first.expect("status", state="streaming")
        status, _ = await _upgrade(url, {})
        assert status == 101
        # a pending connection that leaves frees its place too
        await second.aclose()
        with anyio.fail_after(5):
            while (await _upgrade(url, {}))[0] != 101:  # noqa: ASYNC110
                await anyio.sleep(0.05)
        await first.send({"type": "stop", "session_id": "s1"})
        await first.expect("final_summary")
        await h.wait_idle(url)
