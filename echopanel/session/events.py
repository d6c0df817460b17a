"""Events: facts and commands fed to :class:`~echopanel.session.SessionMachine`.

Commands come from the user of the session (start, stop, abort). Facts come from the shell:
what a port answered (permission, capture, connection), what the server sent, that the
transport closed, that time passed. Every fact about an attempt carries that attempt's
``attempt_id``; the machine ignores facts from any other attempt.
"""

from __future__ import annotations

from typing import TypeAlias

import attrs

from echopanel.errors import ErrorCode
from echopanel.ports import PermissionKind
from echopanel.protocol.messages import ServerMessage, Source

__all__ = [
    "AbortRequested",
    "CaptureEnded",
    "CaptureFailed",
    "CaptureStarted",
    "ConnectFailed",
    "Connected",
    "Event",
    "MessageReceived",
    "PermissionAnswered",
    "StartRequested",
    "StopRequested",
    "TimerFired",
    "TransportClosed",
]


@attrs.frozen(kw_only=True)
class StartRequested:
    """The user asked to start a session (from ``idle``) or to retry (from ``error``)."""


@attrs.frozen(kw_only=True)
class StopRequested:
    """The user asked for a graceful stop (final summary when listening)."""


@attrs.frozen(kw_only=True)
class AbortRequested:
    """Tear everything down now, without waiting for the backend (e.g. cancellation)."""


@attrs.frozen(kw_only=True)
class PermissionAnswered:
    """The permission gate answered for ``kind``."""

    attempt_id: str
    kind: PermissionKind
    granted: bool
    detail: str = ""


@attrs.frozen(kw_only=True)
class CaptureStarted:
    """``Capture.start()`` returned for ``source``."""

    attempt_id: str
    source: Source


@attrs.frozen(kw_only=True)
class CaptureFailed:
    """``Capture.start()`` raised, or the running capture died."""

    attempt_id: str
    source: Source
    message: str = ""


@attrs.frozen(kw_only=True)
class CaptureEnded:
    """The capture's frames ended by themselves (a file source reached its end)."""

    attempt_id: str
    source: Source


@attrs.frozen(kw_only=True)
class Connected:
    """``Transport.connect()`` returned."""

    attempt_id: str
    connection: int | None = None  # from ``Connect.connection``; None: not told


@attrs.frozen(kw_only=True)
class ConnectFailed:
    """``Transport.connect()`` raised."""

    attempt_id: str
    message: str = ""
    connection: int | None = None


@attrs.frozen(kw_only=True)
class MessageReceived:
    """The server sent ``message`` on the transport opened by ``attempt_id``."""

    attempt_id: str
    message: ServerMessage


@attrs.frozen(kw_only=True)
class TransportClosed:
    """The connection closed (or a send failed). ``code`` when the close maps to one."""

    attempt_id: str
    close_code: int | None = None
    code: ErrorCode | None = None
    message: str = ""
    connection: int | None = None


@attrs.frozen(kw_only=True)
class TimerFired:
    """Time passed: the shell feeds this at (or after) :attr:`SessionMachine.deadline`."""


Event: TypeAlias = (
    StartRequested
    | StopRequested
    | AbortRequested
    | PermissionAnswered
    | CaptureStarted
    | CaptureFailed
    | CaptureEnded
    | Connected
    | ConnectFailed
    | MessageReceived
    | TransportClosed
    | TimerFired
)
