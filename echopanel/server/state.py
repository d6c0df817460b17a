"""``ServerState``: what one app shares between its connections (one per process).

The shared ASR backend (loaded and warmed once, in the lifespan), the slot controller, the
analyzer, the metrics and the set of live sessions the scrape-time gauges summarise.
"""

from __future__ import annotations

import contextlib
import logging
from typing import TYPE_CHECKING, Any, Protocol

import anyio
import attrs

from echopanel.ports import AsrBackend
from echopanel.server.analysis import Analyzer
from echopanel.server.config import ServerConfig
from echopanel.server.metrics import ServerMetrics
from echopanel.server.resumes import ResumableSessions
from echopanel.server.slots import SlotController
from echopanel.server.tickets import TicketStore

if TYPE_CHECKING:
    from collections.abc import Iterable

__all__ = ["LiveSessionView", "ServerState"]

log = logging.getLogger("echopanel.server")


class LiveSessionView(Protocol):
    """What the scrape-time gauges read from a live session."""

    def realtime_factors(self) -> Iterable[float]: ...

    def degrade_levels(self) -> Iterable[int]: ...


@attrs.define(eq=False, kw_only=True)
class ServerState:
    """Per-app shared state; ``asr_loaded`` is set once the load finished (ok or not)."""

    config: ServerConfig
    asr: AsrBackend
    analyzer: Analyzer
    slots: SlotController
    metrics: ServerMetrics = attrs.field(init=False)
    sessions: set[LiveSessionView] = attrs.field(factory=set)
    #: every open connection (``LiveConnection``), started session or not; each has
    #: ``async drain()`` for a graceful shutdown
    connections: set[Any] = attrs.field(factory=set)
    open_connections: int = 0
    #: sessions a ``resume`` may re-attach (``LiveConnection``s; see ``server.resumes``)
    resumable: ResumableSessions[Any] = attrs.field(factory=ResumableSessions)
    #: why the ASR is unavailable, for clients (no paths, no exception reprs)
    asr_error: str | None = None
    #: the same with the cause (may name paths): the log and ``/health`` with the token
    asr_error_detail: str | None = None
    asr_loaded: anyio.Event | None = None
    owns_asr: bool = False
    #: set on the first SIGTERM/SIGINT: ``/ready`` answers 503 and the request guard refuses
    #: new sockets (HTTP 503 ``server_draining``) while live sessions finish
    draining: bool = False
    #: live-listener sockets let through by the request guard and not yet ended
    ws_open: int = 0
    tickets: TicketStore = attrs.field(factory=TicketStore)  # browser tickets (webui)

    def __attrs_post_init__(self) -> None:
        self.metrics = ServerMetrics(
            active_sessions=lambda: float(len(self.sessions)),
            realtime_factor=lambda: max(
                (r for s in self.sessions for r in s.realtime_factors()), default=0.0
            ),
            degrade_level=lambda: float(
                max((lv for s in self.sessions for lv in s.degrade_levels()), default=0)
            ),
            engine=lambda: getattr(getattr(self.asr, "inner", self.asr), "engine", None),
        )

    @property
    def pending_connections(self) -> int:
        """Sockets holding no session yet (before ``start``, or waiting for a slot)."""
        return max(0, self.ws_open - len(self.sessions))

    async def drain_all(self, within: float) -> int:
        """Drain every live connection; after ``within`` seconds close the rest with 1001.

        Sets ``draining`` (the request guard then refuses new sockets), calls ``drain()`` on
        each live connection that has it (flush, ``final_summary``, close) and waits until
        every connection has ended or ``within`` seconds passed. Returns how many were still open
        and got closed with 1001.
        """
        self.draining = True
        log.info("Draining %d connection(s) (at most %g s)", len(self.connections), within)
        with anyio.move_on_after(within):
            async with anyio.create_task_group() as tg:
                for conn in list(self.connections):
                    drain = getattr(conn, "drain", None)
                    if drain is not None:
                        tg.start_soon(_drain_one, conn, drain)
                while self.connections:  # noqa: ASYNC110 - a shutdown-only poll, 20 Hz
                    await anyio.sleep(0.05)
        remaining = list(self.connections)
        if remaining:
            log.warning("Drain timeout: closing %d connection(s) with 1001", len(remaining))
            with anyio.move_on_after(2), anyio.CancelScope(shield=True):
                async with anyio.create_task_group() as tg:
                    for conn in remaining:
                        tg.start_soon(_close_going_away, conn)
        return len(remaining)

    def loaded_event(self) -> anyio.Event:
        """The load-finished event (made in the running event loop on first use)."""
        if self.asr_loaded is None:
            self.asr_loaded = anyio.Event()
            if self.asr.ready:
                self.asr_loaded.set()
        return self.asr_loaded


async def _drain_one(conn: Any, drain: Any) -> None:
    try:
        await drain()
    except Exception:  # one connection's failure never stops the others' drain
        log.exception("drain of a connection failed")


async def _close_going_away(conn: Any) -> None:
    """Close one connection with 1001 ("going away"), ahead of uvicorn's 1012."""
    ws = getattr(conn, "ws", None)
    if ws is None:
        return
    with contextlib.suppress(Exception):
        await ws.close(1001, "server shutting down")
