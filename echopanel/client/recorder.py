"""The ``Recorder`` protocol: where a session writes its observability record (the bundle)."""

from __future__ import annotations

from typing import Protocol

from echopanel.client.events import SessionEvent
from echopanel.protocol.messages import FinalSummary

__all__ = ["Recorder"]


class Recorder(Protocol):
    """Receives one attempt at a time: ``open`` → ``record``* → ``close``.

    ``started_at`` / ``at`` / ``ended_at`` are wall-clock seconds (``time.time()``);
    ``outcome`` is ``completed``, ``cancelled`` or ``error:<code>``. Must not raise; the
    session logs and ignores recorder errors. The session calls ``open`` and ``close`` in a
    worker thread (they may do blocking file work) and ``record`` on the event loop (it must
    not block: hand slow work to a thread of your own, as ``SessionBundle`` does); the calls
    never overlap.
    """

    def open(
        self, *, session_id: str, attempt_id: str, sources: tuple[str, ...], started_at: float
    ) -> None: ...

    def record(self, event: SessionEvent, at: float) -> None: ...

    def close(
        self,
        *,
        outcome: str,
        ended_at: float,
        summary: FinalSummary | None,
        client_dropped_frames: int = 0,
    ) -> None:
        """End the attempt. ``client_dropped_frames``: frames the client itself dropped
        (its pre-acknowledgment buffer was full), which the server never saw."""
