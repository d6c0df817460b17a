"""The browser page: ``/`` (the live transcription page), ``/static/*`` and ``/session-ticket``.

The page is plain HTML, ES modules and an AudioWorklet shipped inside the package
(``echopanel/server/web/``): no build step, nothing fetched from elsewhere. It speaks the
same protocol as the Python client over ``/ws/live-listener``.

``POST /session-ticket`` trades the server token (``Authorization: Bearer``) for a
short-lived single-use ticket (:mod:`echopanel.server.tickets`) that the page puts in the
WebSocket URL, so the long-lived token never appears in a URL. Without a configured token it
answers ``{"token_required": false}`` and no ticket is needed. ``GET /session-ticket`` only
says whether a token is required (so the page knows to ask for it).

``web/wire.js`` (codes, messages, close codes, frame constants) is generated from the Python
sources by :func:`render_wire_module`; :func:`write_wire_module` rewrites it
(``python -c "from echopanel.server.webui import write_wire_module as w; w()"``) and a test
checks it is current.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Final

from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import BaseRoute, Route

from echopanel.errors import CLOSE_CODES, ErrorCode, default_message
from echopanel.server.state import ServerState
from echopanel.server.tickets import TICKET_PARAM, TicketStoreFull

__all__ = ["WEB_DIR", "render_wire_module", "web_routes", "write_wire_module"]

WEB_DIR: Final = Path(__file__).resolve().parent / "web"
_MEDIA_TYPES: Final = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
}
_NO_STORE: Final = {"cache-control": "no-store"}
_TICKET_IN_TEXT: Final = re.compile(rf"({TICKET_PARAM}=)[^&\s\"']+")


class _RedactTickets(logging.Filter):
    """Masks ``ticket=…`` in log records (uvicorn logs each WebSocket's path and query)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple) and record.args:
            record.args = tuple(
                _TICKET_IN_TEXT.sub(r"\1[redacted]", a) if isinstance(a, str) else a
                for a in record.args
            )
        if isinstance(record.msg, str) and f"{TICKET_PARAM}=" in record.msg:
            record.msg = _TICKET_IN_TEXT.sub(r"\1[redacted]", record.msg)
        return True


_REDACT: Final = _RedactTickets()


def _redact_uvicorn_logs() -> None:
    for name in ("uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        if _REDACT not in logger.filters:
            logger.addFilter(_REDACT)


def _static_files() -> dict[str, Path]:
    """The files the page may load, by name (a fixed list: no path from a request is opened)."""
    return {
        path.name: path
        for path in sorted(WEB_DIR.iterdir())
        if path.is_file() and path.suffix in _MEDIA_TYPES
    }


def _headers(request: Request) -> dict[str, str]:
    host = request.headers.get("host", "")
    connect = "'self'" + (f" ws://{host} wss://{host}" if host and " " not in host else "")
    return {
        "content-security-policy": (
            "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
            f"connect-src {connect}; media-src 'self' blob:; object-src 'none'; "
            "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
        ),
        "x-content-type-options": "nosniff",
        "referrer-policy": "no-referrer",
        "cache-control": "no-cache",
    }


def web_routes(state: ServerState) -> list[BaseRoute]:
    """The page's routes, for :func:`~echopanel.server.app.create_app`.

    The token comes from ``state.config``; tickets go to ``state.tickets``, the store the
    WebSocket endpoint redeems them from. uvicorn's log lines get tickets masked.
    """
    from echopanel.server.core.auth import check_token  # the one token check of the server

    files = _static_files()
    _redact_uvicorn_logs()

    async def index(request: Request) -> Response:
        return FileResponse(
            files["index.html"], media_type=_MEDIA_TYPES[".html"], headers=_headers(request)
        )

    async def static(request: Request) -> Response:
        path = files.get(request.path_params["name"])
        if path is None:
            return JSONResponse({"error": "not found"}, status_code=404)
        return FileResponse(path, media_type=_MEDIA_TYPES[path.suffix], headers=_headers(request))

    async def session_ticket(request: Request) -> Response:
        token, tickets = state.config.token, state.tickets
        if request.method == "GET":  # the page asks whether to show the token field
            return JSONResponse({"token_required": token is not None}, headers=_NO_STORE)
        if token is None:
            return JSONResponse({"token_required": False, "ticket": None}, headers=_NO_STORE)
        if not check_token(token, request.headers):
            return JSONResponse(
                {"error": "unauthorized", "message": default_message(ErrorCode.UNAUTHORIZED)},
                status_code=401,
                headers={"www-authenticate": "Bearer", **_NO_STORE},
            )
        try:
            ticket = tickets.issue()
        except TicketStoreFull:
            return JSONResponse(
                {"error": "too_many_tickets", "message": "Too many tickets; retry shortly"},
                status_code=429,
                headers={"retry-after": "1", **_NO_STORE},
            )
        body = {
            "token_required": True,
            "ticket": ticket,
            "param": TICKET_PARAM,
            "expires_in": tickets.ttl,
        }
        return JSONResponse(body, headers=_NO_STORE)

    return [
        Route("/", index, methods=["GET", "HEAD"]),
        Route("/static/{name}", static, methods=["GET", "HEAD"]),
        Route("/session-ticket", session_ticket, methods=["GET", "POST"]),
    ]


def render_wire_module() -> str:
    """The text of ``web/wire.js``: what the page shares with the Python side."""
    from echopanel.protocol import ENDPOINT_PATH, MAX_FRAME_BYTES, SAMPLE_RATE
    from echopanel.protocol.frames import FRAME_MAGIC, FRAME_VERSION, HEADER_BYTES, SOURCE_BYTES
    from echopanel.session.config import DEFAULT_START_TIMEOUT, DEFAULT_STOP_TIMEOUT
    from echopanel.session.machine import CLIENT_FEATURES, close_description

    def js(value: object) -> str:
        return json.dumps(value, indent=2 if isinstance(value, dict) else None, ensure_ascii=False)

    constants = {
        "ENDPOINT_PATH": ENDPOINT_PATH,
        "TICKET_PARAM": TICKET_PARAM,
        "SAMPLE_RATE": SAMPLE_RATE,
        "FORMAT": "pcm_s16le",
        "CHANNELS": 1,
        "FRAME_MAGIC": list(FRAME_MAGIC),
        "FRAME_VERSION": FRAME_VERSION,
        "HEADER_BYTES": HEADER_BYTES,
        "MAX_FRAME_BYTES": MAX_FRAME_BYTES,
        "DEFAULT_START_TIMEOUT": DEFAULT_START_TIMEOUT,
        "DEFAULT_STOP_TIMEOUT": DEFAULT_STOP_TIMEOUT,
    }
    lines = [
        "// Generated by echopanel.server.webui.write_wire_module() from echopanel.errors,",
        "// echopanel.protocol and echopanel.session.config. Do not edit: a test checks it.",
        "",
    ]
    lines += [f"export const {name} = {js(value)};" for name, value in constants.items()]
    lines += [
        "",
        "/** Source byte of each protocol source in a binary EP frame. */",
        f"export const SOURCE_BYTES = {js(dict(SOURCE_BYTES))};",
        "",
        "/** `client_features` sent in every start (as the Python client does). */",
        f"export const CLIENT_FEATURES = {js(CLIENT_FEATURES)};",
        "",
        "/** The one message for people of each error code (docs/errors.md). */",
        f"export const ERROR_MESSAGES = {js({c.value: default_message(c) for c in ErrorCode})};",
        "",
        "/** What a close code means, for people (as the Python client words it). */",
        "export const CLOSE_DESCRIPTIONS = "
        + js(
            {
                str(close): close_description(close)
                for close in (*range(1000, 1016), 4408)
                if close_description(close) != f"close {close}"
            }
        )
        + ";",
        "",
        "/** Close code -> error code when the server closes without an error message",
        " * (1008 is shared by unauthorized and start_timeout; alone it means unauthorized). */",
        "export const CLOSE_TO_CODE = "
        + js(
            {
                str(close): code.value
                for code, close in CLOSE_CODES.items()
                if code is not ErrorCode.START_TIMEOUT
            }
        )
        + ";",
        "",
    ]
    return "\n".join(lines)


def write_wire_module() -> Path:
    """Regenerate ``web/wire.js`` (after changing an error message or a protocol constant)."""
    path = WEB_DIR / "wire.js"
    path.write_text(render_wire_module(), encoding="utf-8")
    return path
