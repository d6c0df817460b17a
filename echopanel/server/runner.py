"""Running the backend under uvicorn: for the CLI, and in-process for tests and demos.

* :func:`run_server` — blocking, what ``echopanel serve`` calls: the first SIGINT/SIGTERM
  drains live sessions (:class:`DrainingServer`), a second forces the exit.
* :func:`serve_in_background` — ``async with serve_in_background(config) as url:`` runs a
  real server on a free loopback port in the current event loop; ``url`` is its base URL
  (``http://127.0.0.1:PORT``; the WebSocket endpoint is ``url + WS_PATH``).
* :func:`serve_in_thread` — the same from synchronous code: the server gets its own thread
  and event loop (used by the hypothesis test and the benchmark).

Both helpers wait until ``/health`` says ready (unless ``wait_ready=False``) and stop the
server on exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import AsyncIterator, Iterator
from types import FrameType

import anyio
import anyio.from_thread
import httpx
import uvicorn
from starlette.applications import Starlette

from echopanel.ports import AsrBackend
from echopanel.protocol import MAX_FRAME_BYTES
from echopanel.server.analysis import Analyzer
from echopanel.server.app import create_app, server_state
from echopanel.server.config import ServerConfig
from echopanel.server.state import ServerState

__all__ = [
    "WS_MAX_SIZE",
    "DrainingServer",
    "run_server",
    "serve_in_background",
    "serve_in_thread",
    "uvicorn_config",
]

#: Largest WebSocket message uvicorn buffers: the protocol's largest message (a text ``audio``
#: message of a full frame, ``2 * MAX_FRAME_BYTES``) plus a margin. Up to it the connection
#: answers with ``frame_too_large`` itself; beyond, uvicorn closes 1009 without reading more.
#: Per-message deflate is off: a compressed "bomb" would inflate before any limit applies.
WS_MAX_SIZE = 2 * MAX_FRAME_BYTES + 16 * 1024

log = logging.getLogger("echopanel.server")


def uvicorn_config(
    app: Starlette, config: ServerConfig, *, log_level: str = "info"
) -> uvicorn.Config:
    """The uvicorn settings the backend runs with."""
    return uvicorn.Config(
        app,
        host=config.host,
        port=config.port,
        ws="wsproto",
        ws_max_size=WS_MAX_SIZE,
        ws_per_message_deflate=False,
        ws_ping_interval=20.0,
        ws_ping_timeout=20.0,
        lifespan="on",
        log_level=log_level,
        timeout_graceful_shutdown=int(max(5.0, config.flush_timeout + 2)),
        access_log=False,
        ssl_certfile=str(config.ssl_certfile) if config.ssl_certfile else None,
        ssl_keyfile=str(config.ssl_keyfile) if config.ssl_keyfile else None,
    )


class DrainingServer(uvicorn.Server):
    """uvicorn's server with a graceful drain on the first SIGTERM/SIGINT.

    uvicorn alone closes every WebSocket with 1012 at once on a signal: live sessions lose
    their in-flight utterance and never get ``final_summary``. Here the first signal sets
    ``state.draining`` (new sockets get HTTP 503 ``server_draining``) and runs
    :meth:`ServerState.drain_all` — every live connection drains (flush, summary) within
    ``drain_timeout`` and the rest are closed with 1001 — and only then lets uvicorn shut
    down. A second signal forces the exit at once. Signals are not re-raised afterwards:
    the process exits 0 after a drain.
    """

    def __init__(self, config: uvicorn.Config, state: ServerState, drain_timeout: float) -> None:
        super().__init__(config)
        self.state = state
        self.drain_timeout = drain_timeout
        self.drain_started = False
        self._drain_task: asyncio.Task[None] | None = None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self.drain_started or not self.started:
            log.warning("Second signal: forcing the exit")
            self.force_exit = True
            self.should_exit = True
            return
        self.begin_drain()

    def begin_drain(self) -> None:
        """Start the drain (idempotent); the server exits when it is over."""
        if self.drain_started:
            return
        self.drain_started = True
        self.state.draining = True
        log.info("Signal received: draining (a second signal forces the exit)")
        loop = asyncio.get_event_loop()
        loop.call_soon_threadsafe(self._spawn_drain)

    def _spawn_drain(self) -> None:
        self._drain_task = asyncio.ensure_future(self._drain())

    async def _drain(self) -> None:
        try:
            await self.state.drain_all(self.drain_timeout)
        except Exception:
            log.exception("drain failed")
        finally:
            self.should_exit = True


def run_server(
    config: ServerConfig, *, app: Starlette | None = None, log_level: str = "info"
) -> None:
    """Serve until SIGINT/SIGTERM (blocking); returns normally after a graceful drain.

    The first signal drains (see :class:`DrainingServer`), a second forces the exit.
    """
    app = app or create_app(config)
    server = DrainingServer(
        uvicorn_config(app, config, log_level=log_level), server_state(app), config.drain_timeout
    )
    server.run()


def _loopback_socket(host: str) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, 0))
    sock.set_inheritable(True)
    return sock


async def _wait_ready(url: str, limit: float) -> None:
    async with httpx.AsyncClient(timeout=2.0) as client:
        with anyio.fail_after(limit):
            while True:
                with contextlib.suppress(httpx.HTTPError):
                    if (await client.get(f"{url}/health")).status_code == 200:
                        return
                await anyio.sleep(0.02)


@contextlib.asynccontextmanager
async def serve_in_background(
    config: ServerConfig | None = None,
    *,
    asr: AsrBackend | None = None,
    analyzer: Analyzer | None = None,
    app: Starlette | None = None,
    wait_ready: bool = True,
    ready_timeout: float = 60.0,
    log_level: str = "warning",
) -> AsyncIterator[str]:
    """Run a real uvicorn server on a free loopback port; yields its base URL."""
    config = config or ServerConfig(asr="fake")
    app = app or create_app(config, asr=asr, analyzer=analyzer)
    sock = _loopback_socket("127.0.0.1")
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn_config(app, config, log_level=log_level))
    server.config.log_config = None
    url = f"http://127.0.0.1:{port}"
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(server.serve, [sock])
            try:
                with anyio.fail_after(ready_timeout):
                    while not server.started:
                        if server.should_exit:
                            raise RuntimeError("server failed to start")
                        await anyio.sleep(0.01)
                if wait_ready:
                    await _wait_ready(url, ready_timeout)
                yield url
            finally:
                server.should_exit = True
    finally:
        sock.close()


@contextlib.contextmanager
def serve_in_thread(
    config: ServerConfig | None = None,
    *,
    asr: AsrBackend | None = None,
    analyzer: Analyzer | None = None,
    wait_ready: bool = True,
    ready_timeout: float = 60.0,
    log_level: str = "warning",
) -> Iterator[str]:
    """Like :func:`serve_in_background`, from sync code: the server runs in its own thread."""
    with anyio.from_thread.start_blocking_portal() as portal:
        manager = serve_in_background(
            config, asr=asr, analyzer=analyzer, wait_ready=wait_ready,
            ready_timeout=ready_timeout, log_level=log_level,
        )  # fmt: skip
        with portal.wrap_async_context_manager(manager) as url:
            yield url
