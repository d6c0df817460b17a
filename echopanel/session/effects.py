"""Effects: commands the :class:`~echopanel.session.SessionMachine` asks the shell to run.

The shell runs them in order. Port calls that take time (permission, capture start,
connect) report back as events; the others are fire-and-forget from the machine's view.
Timers are not effects: :attr:`SessionMachine.deadline` is the one source of truth.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TypeAlias

import attrs

from echopanel.errors import ErrorCode
from echopanel.ports import PermissionKind
from echopanel.protocol.messages import (
    FinalSummary,
    ServerMessage,
    Source,
    StartMessage,
    StopMessage,
)

__all__ = [
    "AnnounceState",
    "CloseTransport",
    "Connect",
    "CreateBundle",
    "Effect",
    "EmitMessage",
    "EndAttempt",
    "EnterListening",
    "RejectStart",
    "ReportError",
    "RequestPermission",
    "SendResume",
    "SendStart",
    "SendStop",
    "StartCapture",
    "StopCapture",
]


@attrs.frozen(kw_only=True)
class AnnounceState:
    """The state (and step within ``starting``) changed; tell listeners."""

    state: str
    previous: str
    step: str | None = None


@attrs.frozen(kw_only=True)
class CreateBundle:
    """Open the session bundle (observability record) for this attempt."""

    session_id: str
    attempt_id: str
    sources: tuple[Source, ...]
    started_at: float


@attrs.frozen(kw_only=True)
class RequestPermission:
    """Ask the permission gate for ``kind``; answer with ``PermissionAnswered``."""

    kind: PermissionKind


@attrs.frozen(kw_only=True)
class StartCapture:
    """Start the capture of ``source``; answer ``CaptureStarted`` or ``CaptureFailed``."""

    source: Source


@attrs.frozen(kw_only=True)
class StopCapture:
    """Stop the capture of ``source`` (idempotent, safe if it never started)."""

    source: Source


@attrs.frozen(kw_only=True)
class Connect:
    """Open the transport; answer ``Connected`` or ``ConnectFailed``."""

    url: str
    headers: Mapping[str, str] = attrs.field(
        factory=dict, repr=lambda h: "{" + ", ".join(f"{k!r}: '***'" for k in h) + "}"
    )
    #: the connection's number within the attempt (0 first; each reconnect adds one): the
    #: shell tags that connection's ``Connected`` / ``ConnectFailed`` / ``TransportClosed``
    connection: int = 0


@attrs.frozen(kw_only=True)
class SendStart:
    """Send the ``start`` message."""

    message: StartMessage


@attrs.frozen(kw_only=True)
class EnterListening:
    """The backend acknowledged: flush buffered audio, start the session clock."""

    session_id: str
    attempt_id: str
    connection_id: str | None
    at: float


@attrs.frozen(kw_only=True)
class EmitMessage:
    """Deliver a server message of the current attempt to the session's listeners."""

    message: ServerMessage


@attrs.frozen(kw_only=True)
class SendStop:
    """Send the ``stop`` message (the server flushes and answers ``final_summary``)."""

    message: StopMessage


@attrs.frozen(kw_only=True)
class SendResume:
    """Send ``resume`` on the new connection; the shell adds the audio seconds it sent."""

    session_id: str
    resume_token: str = attrs.field(repr=False)
    last_segment_id: str | None = None


@attrs.frozen(kw_only=True)
class CloseTransport:
    """Close the transport (idempotent)."""

    code: int = 1000


@attrs.frozen(kw_only=True)
class ReportError:
    """The attempt failed: one code, one message for people."""

    code: ErrorCode
    message: str


@attrs.frozen(kw_only=True)
class RejectStart:
    """A start was requested while a session is active; nothing new was started."""

    state: str
    reason: str


@attrs.frozen(kw_only=True)
class EndAttempt:
    """The attempt is over: ``completed``, ``cancelled`` or ``error:<code>``."""

    outcome: str
    summary: FinalSummary | None = None


Effect: TypeAlias = (
    AnnounceState
    | CreateBundle
    | RequestPermission
    | StartCapture
    | StopCapture
    | Connect
    | SendStart
    | EnterListening
    | EmitMessage
    | SendStop
    | SendResume
    | CloseTransport
    | ReportError
    | RejectStart
    | EndAttempt
)
