"""The browser page over a real server: ``/``, ``/static/*``, ``POST /session-ticket`` and
tickets opening the WebSocket (once, before they expire)."""

from __future__ import annotations

import logging
import re
import tomllib
from pathlib import Path

import httpx

from echopanel.errors import ErrorCode
from echopanel.server import ServerConfig, create_app, serve_in_background, server_state
from echopanel.server.tickets import TicketStore
from echopanel.server.webui import WEB_DIR, render_wire_module
from echopanel.testing.asr import FakeAsrBackend

WS = "/ws/live-listener"
MODULES = ["app.js", "capture.js", "dsp.js", "session.js", "transcript.js", "wire.js", "worklet.js"]


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_wire_module_is_generated_from_the_python_sources() -> None:
    """wire.js carries every error code's message (docs/errors.md) and the frame constants."""
    assert (WEB_DIR / "wire.js").read_text(encoding="utf-8") == render_wire_module(), (
        "web/wire.js is stale: run "
        "python -c 'from echopanel.server.webui import write_wire_module as w; w()'"
    )
    text = render_wire_module()
    for code in ErrorCode:
        assert f'"{code.value}":' in text


def test_the_page_loads_nothing_from_elsewhere() -> None:
    """Every URL in the page is local, and every module import names a shipped file."""
    html = (WEB_DIR / "index.html").read_text(encoding="utf-8")
    urls = re.findall(r'(?:src|href)="([^"]*)"', html)
    assert urls
    for url in urls:
        assert url.startswith(("/static/", "/health", "data:")), url
        if url.startswith("/static/"):
            assert (WEB_DIR / url.removeprefix("/static/")).is_file(), url
    for name in MODULES:
        source = (WEB_DIR / name).read_text(encoding="utf-8")
        for target in re.findall(r'(?:from|import)\s+"([^"]+)"', source):
            assert target.startswith("./") and (WEB_DIR / target[2:]).is_file(), (name, target)
        assert not re.findall(r"(?:https?|wss?)://(?!localhost)\w", source), name


async def test_page_and_static_files_are_served_with_types_and_headers(h) -> None:
    async with serve_in_background(h.fast_config(), asr=FakeAsrBackend()) as url:  # noqa: SIM117
        async with httpx.AsyncClient(base_url=url) as http:
            page = await http.get("/")
            assert page.status_code == 200
            assert page.headers["content-type"].startswith("text/html")
            assert '<script type="module" src="/static/app.js">' in page.text
            csp = page.headers["content-security-policy"]
            assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp
            assert f"ws://{url.removeprefix('http://')}" in csp
            assert page.headers["x-content-type-options"] == "nosniff"
            for name in MODULES:
                response = await http.get(f"/static/{name}")
                assert response.status_code == 200, name
                # ES modules load only with a JavaScript MIME type, whatever the OS maps .js to
                assert response.headers["content-type"].startswith("text/javascript"), name
            css = await http.get("/static/style.css")
            assert css.headers["content-type"].startswith("text/css")
            for bad in ["/static/nope.js", "/static/..%2Fwebui.py", "/static/%2e%2e/app.py"]:
                assert (await http.get(bad)).status_code == 404, bad
            assert (await http.post("/")).status_code == 405


async def test_without_a_token_no_ticket_is_needed(h, connect) -> None:
    async with serve_in_background(h.fast_config(), asr=FakeAsrBackend()) as url:
        async with httpx.AsyncClient(base_url=url) as http:
            response = await http.post("/session-ticket")
            probe = await http.get("/session-ticket")
        assert response.status_code == 200
        assert response.json() == {"token_required": False, "ticket": None}
        assert probe.json() == {"token_required": False}
        client = await connect(url + WS)
        assert (await client.recv())["state"] == "connected"


async def test_the_ticket_endpoint_wants_the_token(h) -> None:
    async with serve_in_background(h.fast_config(token="s3cret"), asr=FakeAsrBackend()) as url:  # noqa: SIM117
        async with httpx.AsyncClient(base_url=url) as http:
            for headers in ({}, {"authorization": "Bearer nope"}, {"authorization": "s3cret"}):
                response = await http.post("/session-ticket", headers=headers)
                assert response.status_code == 401, headers
                assert response.headers["www-authenticate"] == "Bearer"
                assert response.json()["error"] == "unauthorized"
            probe = await http.get("/session-ticket")  # whether to ask: creates no ticket
            assert probe.status_code == 200 and probe.json() == {"token_required": True}
            ok = await http.post("/session-ticket", headers={"authorization": "Bearer s3cret"})
            assert ok.status_code == 200 and ok.headers["cache-control"] == "no-store"
            body = ok.json()
            assert body["token_required"] is True and body["param"] == "ticket"
            assert body["expires_in"] == 30 and len(body["ticket"]) >= 43
            assert "s3cret" not in ok.text
            other = await http.post("/session-ticket", headers={"x-echopanel-token": "s3cret"})
            assert other.json()["ticket"] != body["ticket"]


async def _ticket(url: str) -> str:
    async with httpx.AsyncClient(base_url=url) as http:
        response = await http.post("/session-ticket", headers={"authorization": "Bearer s3cret"})
    ticket: str = response.json()["ticket"]
    return ticket


async def _expect_unauthorized(client) -> None:
    error = await client.recv()
    assert error["type"] == "error" and error["code"] == "unauthorized"
    closed = await client.expect_close()
    assert closed.close_code == 1008


async def test_a_ticket_opens_the_websocket_once(h, connect) -> None:
    app = create_app(h.fast_config(token="s3cret"), asr=FakeAsrBackend())
    async with serve_in_background(h.fast_config(token="s3cret"), app=app) as url:
        ticket = await _ticket(url)
        client = await connect(f"{url}{WS}?ticket={ticket}")
        assert (await client.recv())["state"] == "connected"
        await client.start("browser-1", sources=["mic"])
        assert (await client.expect("status", state="streaming"))["session_id"] == "browser-1"
        again = await connect(f"{url}{WS}?ticket={ticket}")
        await _expect_unauthorized(again)
        bogus = await connect(f"{url}{WS}?ticket={ticket[:-2]}xx")
        await _expect_unauthorized(bogus)
        # a header token still works alongside, and does not spend a ticket
        spare = await _ticket(url)
        header = await connect(f"{url}{WS}?ticket={spare}", {"authorization": "Bearer s3cret"})
        assert (await header.recv())["state"] == "connected"
        assert len(server_state(app).tickets) == 1  # the spare one was not spent


async def test_an_expired_ticket_is_refused_and_the_store_is_bounded(h, connect) -> None:
    clock = Clock()
    app = create_app(h.fast_config(token="s3cret"), asr=FakeAsrBackend())
    server_state(app).tickets = TicketStore(ttl=30, capacity=2, clock=clock)
    async with serve_in_background(h.fast_config(token="s3cret"), app=app) as url:
        old = await _ticket(url)
        clock.now += 30
        client = await connect(f"{url}{WS}?ticket={old}")
        await _expect_unauthorized(client)
        await _ticket(url)
        await _ticket(url)
        async with httpx.AsyncClient(base_url=url) as http:
            full = await http.post("/session-ticket", headers={"authorization": "Bearer s3cret"})
        assert full.status_code == 429 and full.headers["retry-after"] == "1"


def test_the_page_is_shipped_as_package_data() -> None:
    pyproject = tomllib.loads((Path(__file__).parents[3] / "pyproject.toml").read_text())
    assert "server/web/*" in pyproject["tool"]["setuptools"]["package-data"]["echopanel"]
    assert not any(p.is_dir() for p in WEB_DIR.iterdir())  # "*" does not recurse


def test_uvicorn_log_lines_mask_tickets() -> None:
    """uvicorn logs every WebSocket's path with its query; the ticket is masked."""
    app = create_app(ServerConfig(asr="fake", token="s3cret"), asr=FakeAsrBackend())
    assert app is not None
    record = logging.LogRecord(
        "uvicorn.error", logging.INFO, __file__, 1, '%s - "WebSocket %s" [accepted]',
        ("127.0.0.1:5000", "/ws/live-listener?ticket=abcDEF-123_x&x=1"), None,
    )  # fmt: skip
    for handler_filter in logging.getLogger("uvicorn.error").filters:
        assert handler_filter.filter(record)  # type: ignore[union-attr]
    message = record.getMessage()
    assert "abcDEF" not in message and "ticket=[redacted]&x=1" in message
