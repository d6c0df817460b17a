"""A real browser on another origin cannot use the local server (DESIGN "Browsers and hosts").

A page served from a different origin (another loopback port: what any web site the user
opens looks like to the server) tries the live-listener WebSocket from inside Chromium: the
upgrade is refused (HTTP 403 before accept), so the socket never opens. The server's own
page opens it, and so does the other origin once it is listed with ``--allow-origin``.
"""

from __future__ import annotations

import contextlib
import functools
import http.server
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .conftest import _free_port

pytestmark = pytest.mark.e2e

_TRY_SOCKET = """async (url) => await new Promise((resolve) => {
  const ws = new WebSocket(url);
  const timer = setTimeout(() => resolve("no answer"), 15000);
  ws.onopen = () => { clearTimeout(timer); ws.close(); resolve("open"); };
  ws.onerror = () => { clearTimeout(timer); resolve("refused"); };
})"""


@contextlib.contextmanager
def _other_origin(root: Path) -> Iterator[str]:
    """A plain static site on another loopback port: a foreign origin for the server."""
    (root / "index.html").write_text("<!doctype html><title>some other site</title><p>hi</p>")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    port = _free_port()
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", port), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


def _try_socket(browser: Any, page_url: str, ws_url: str) -> str:
    page = browser.new_page()
    try:
        page.goto(page_url)
        return str(page.evaluate(_TRY_SOCKET, ws_url))
    finally:
        page.close()


def test_a_foreign_origin_in_a_real_browser_is_refused(
    serve: Any, browser: Any, tmp_path: Path
) -> None:
    server = serve("--asr", "fake")
    ws_url = server.url.replace("http://", "ws://") + "/ws/live-listener"
    with _other_origin(tmp_path) as foreign:
        assert _try_socket(browser, f"{foreign}/", ws_url) == "refused"
    assert _try_socket(browser, f"{server.url}/", ws_url) == "open"  # its own page may
    assert "403" in server.log_text()  # refused before the socket was accepted


def test_an_allowed_origin_in_a_real_browser_connects(
    serve: Any, browser: Any, tmp_path: Path
) -> None:
    with _other_origin(tmp_path) as foreign:
        server = serve("--asr", "fake", "--allow-origin", foreign)
        ws_url = server.url.replace("http://", "ws://") + "/ws/live-listener"
        assert _try_socket(browser, f"{foreign}/", ws_url) == "open"
