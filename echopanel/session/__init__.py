"""The pure client session core: a table-driven state machine fed events, returning effects.

Imports no I/O library (no anyio, httpx, sounddevice, numpy): see ``tests/unit/test_imports.py``.
"""

from __future__ import annotations

from typing import Any

from echopanel.session.config import (
    DEFAULT_SEND_TIMEOUT,
    DEFAULT_START_TIMEOUT,
    DEFAULT_STOP_TIMEOUT,
    ENDPOINT_PATH,
    PERMISSION_FOR,
    SessionConfig,
    auth_headers,
    normalize_sources,
    normalize_url,
)
from echopanel.session.effects import (
    AnnounceState,
    CloseTransport,
    Connect,
    CreateBundle,
    Effect,
    EmitMessage,
    EndAttempt,
    EnterListening,
    RejectStart,
    ReportError,
    RequestPermission,
    SendResume,
    SendStart,
    SendStop,
    StartCapture,
    StopCapture,
)
from echopanel.session.events import (
    AbortRequested,
    CaptureEnded,
    CaptureFailed,
    CaptureStarted,
    Connected,
    ConnectFailed,
    Event,
    MessageReceived,
    PermissionAnswered,
    StartRequested,
    StopRequested,
    TimerFired,
    TransportClosed,
)
from echopanel.session.machine import (
    CLIENT_FEATURES,
    Drop,
    DropReason,
    SessionMachine,
    start_timeout_message,
    uuid_factory,
)
from echopanel.session.table import ACTIVE_STATES, STARTING_STATES, STATES, TRANSITIONS, Row

__all__ = [
    "ACTIVE_STATES",
    "CLIENT_FEATURES",
    "DEFAULT_SEND_TIMEOUT",
    "DEFAULT_START_TIMEOUT",
    "DEFAULT_STOP_TIMEOUT",
    "ENDPOINT_PATH",
    "PERMISSION_FOR",
    "STARTING_STATES",
    "STATES",
    "TRANSITIONS",
    "AbortRequested",
    "AnnounceState",
    "CaptureEnded",
    "CaptureFailed",
    "CaptureStarted",
    "CloseTransport",
    "Connect",
    "ConnectFailed",
    "Connected",
    "CreateBundle",
    "Drop",
    "DropReason",
    "Effect",
    "EmitMessage",
    "EndAttempt",
    "EnterListening",
    "Event",
    "MessageReceived",
    "PermissionAnswered",
    "RejectStart",
    "ReportError",
    "RequestPermission",
    "Row",
    "SendResume",
    "SendStart",
    "SendStop",
    "SessionConfig",
    "SessionMachine",
    "StartCapture",
    "StartRequested",
    "StopCapture",
    "StopRequested",
    "TimerFired",
    "TransportClosed",
    "auth_headers",
    "normalize_sources",
    "normalize_url",
    "render_document",
    "render_mermaid",
    "start_timeout_message",
    "uuid_factory",
]


def __getattr__(name: str) -> Any:
    # Lazy so that ``python -m echopanel.session.diagram`` does not import it twice.
    if name in ("render_document", "render_mermaid"):
        from echopanel.session import diagram

        return getattr(diagram, name)
    raise AttributeError(f"module 'echopanel.session' has no attribute {name!r}")
