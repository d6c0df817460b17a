"""The client side: :class:`Session` (the anyio shell), its config, events and recorder port.

``WebSocketTransport`` (the real transport, on httpx) is imported lazily.
"""

from __future__ import annotations

import importlib
from typing import Any

from echopanel.client.events import (
    AnalysisEvent,
    ErrorEvent,
    FinalEvent,
    MetricsEvent,
    PartialEvent,
    SessionEvent,
    StateChanged,
    StatusEvent,
    SummaryEvent,
    event_for_message,
)
from echopanel.client.recorder import Recorder
from echopanel.client.session import Session, SessionStateError
from echopanel.session.config import SessionConfig

__all__ = [
    "AnalysisEvent",
    "ErrorEvent",
    "FinalEvent",
    "MetricsEvent",
    "PartialEvent",
    "Recorder",
    "Session",
    "SessionConfig",
    "SessionEvent",
    "SessionStateError",
    "StateChanged",
    "StatusEvent",
    "SummaryEvent",
    "WebSocketTransport",
    "event_for_message",
]

_LAZY = {"WebSocketTransport": "echopanel.client.transport"}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'echopanel.client' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
