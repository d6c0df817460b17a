"""Readiness: whether this replica can take a new session right now (``GET /ready``).

``/health`` is liveness — the process answers and the model is loaded — and stays 200 while
the replica is full or draining, so an orchestrator does not restart a busy replica.
``/ready`` is what a load balancer or a Kubernetes readiness probe routes on: 200 only while
the ASR is loaded and healthy, a session slot is free and the process is not draining;
503 otherwise, with one machine-readable ``reason``:

* ``draining`` — the process got SIGTERM and is finishing its sessions;
* ``asr_unavailable`` — the model failed to load;
* ``asr_loading`` — the model is still loading and warming up;
* ``server_at_capacity`` — every session slot is taken.

The first that applies wins, in that order. Nothing here is secret: no token is needed.
"""

from __future__ import annotations

from typing import Any, Final, Literal

import attrs
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from echopanel.server.state import ServerState

__all__ = ["READY_REASONS", "Readiness", "readiness", "ready_endpoint"]

Reason = Literal["draining", "asr_unavailable", "asr_loading", "server_at_capacity"]

#: Every reason ``/ready`` can give for a 503, in the order they are checked.
READY_REASONS: Final[tuple[Reason, ...]] = (
    "draining",
    "asr_unavailable",
    "asr_loading",
    "server_at_capacity",
)

_MESSAGES: Final[dict[Reason, str]] = {
    "draining": "the server is shutting down and finishing its sessions",
    "asr_unavailable": "speech recognition is unavailable",
    "asr_loading": "the speech model is still loading",
    "server_at_capacity": "every session slot is taken",
}


@attrs.frozen(kw_only=True)
class Readiness:
    """The answer of ``/ready``: ``reason`` is None exactly when ready."""

    reason: Reason | None
    active: int
    capacity: int
    available: int

    @property
    def ready(self) -> bool:
        return self.reason is None

    @property
    def status_code(self) -> int:
        return 200 if self.ready else 503

    def body(self) -> dict[str, Any]:
        """The JSON body: ``status``, ``reason``/``message`` when not ready, slot counts."""
        body: dict[str, Any] = {"status": "ready" if self.reason is None else "not_ready"}
        if self.reason is not None:
            body["reason"] = self.reason
            body["message"] = _MESSAGES[self.reason]
        body["sessions"] = {
            "active": self.active,
            "max": self.capacity,
            "available": self.available,
        }
        return body


def readiness(state: ServerState) -> Readiness:
    """Whether ``state``'s server can take a new session now, and if not, why."""
    reason: Reason | None = None
    available = state.slots.available
    if state.draining:
        reason = "draining"
    elif state.asr_error is not None:
        reason = "asr_unavailable"
    elif not state.asr.ready:
        reason = "asr_loading"
    elif available < 1:
        reason = "server_at_capacity"
    return Readiness(
        reason=reason,
        active=len(state.sessions),
        capacity=state.slots.capacity,
        available=available,
    )


async def ready_endpoint(request: Request) -> Response:
    """``GET /ready`` of an app made by :func:`~echopanel.server.app.create_app`."""
    state: ServerState = request.app.state.echopanel
    answer = readiness(state)
    return JSONResponse(
        answer.body(), status_code=answer.status_code, headers={"cache-control": "no-store"}
    )
