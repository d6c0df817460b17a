"""``ServerState``: what one app shares between its connections (one per process).

The shared ASR backend (loaded and warmed once, in the lifespan), the slot controller, the
analyzer, the metrics and the set of live sessions the scrape-time gauges summarise.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

import anyio
import attrs

from echopanel.ports import AsrBackend
from echopanel.server.analysis import Analyzer
from echopanel.server.config import ServerConfig
from echopanel.server.metrics import ServerMetrics
from echopanel.server.resumes import ResumableSessions
from echopanel.server.slots import SlotController

if TYPE_CHECKING:
    from collections.abc import Iterable

__all__ = ["LiveSessionView", "ServerState"]


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
    asr_error: str | None = None
    asr_loaded: anyio.Event | None = None
    owns_asr: bool = False
    #: Set when the process starts draining (SIGTERM): ``/ready`` answers 503 from then on.
    draining: bool = False

    def __attrs_post_init__(self) -> None:
        self.metrics = ServerMetrics(
            active_sessions=lambda: float(len(self.sessions)),
            realtime_factor=lambda: max(
                (r for s in self.sessions for r in s.realtime_factors()), default=0.0
            ),
            degrade_level=lambda: float(
                max((lv for s in self.sessions for lv in s.degrade_levels()), default=0)
            ),
        )

    def loaded_event(self) -> anyio.Event:
        """The load-finished event (made in the running event loop on first use)."""
        if self.asr_loaded is None:
            self.asr_loaded = anyio.Event()
            if self.asr.ready:
                self.asr_loaded.set()
        return self.asr_loaded
