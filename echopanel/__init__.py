"""echopanel: live transcription sessions.

``import echopanel`` loads only the pure core (protocol, session machine, errors, ports).
The anyio shell, the server, the audio adapters and the Whisper backend are imported lazily:
``echopanel.Session`` resolves to :class:`echopanel.client.Session` on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

from echopanel.errors import (
    AsrError,
    CaptureError,
    EchoPanelError,
    ErrorCode,
    PermissionDeniedError,
    ProtocolError,
    SessionError,
    TransportError,
)
from echopanel.session.config import SessionConfig

__version__ = "0.1.0"

_LAZY = {
    "Session": "echopanel.client",
    "WebSocketTransport": "echopanel.client",
}

__all__ = [
    "AsrError",
    "CaptureError",
    "EchoPanelError",
    "ErrorCode",
    "PermissionDeniedError",
    "ProtocolError",
    "Session",
    "SessionConfig",
    "SessionError",
    "TransportError",
    "WebSocketTransport",
    "__version__",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'echopanel' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
