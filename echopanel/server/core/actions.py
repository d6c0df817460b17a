"""Actions: what :class:`~echopanel.server.core.ServerSession` asks the shell to do.

The shell runs them in order. Those that wait for something (``WaitForAsr``,
``AcquireSlot``, ``OpenAsrStream``, ``Analyze``) are answered by feeding the matching event
back. ``Close`` ends the connection; the release actions that follow it (``CloseAsrStreams``,
``ReleaseSlot``) may be run once every task of the connection has ended.
"""

from __future__ import annotations

from typing import TypeAlias

import attrs

from echopanel.errors import ErrorCode
from echopanel.protocol.messages import ResumeMessage, ServerMessage, Source, TranscriptEntry

__all__ = [
    "AcquireSlot",
    "Action",
    "Analyze",
    "Attach",
    "CancelAsr",
    "Close",
    "CloseAsrStreams",
    "CountDroppedFrames",
    "CountReplayedAudio",
    "EndAudio",
    "FeedAudio",
    "FlushRecording",
    "LookupSession",
    "OpenAsrStream",
    "Rejected",
    "ReleaseSlot",
    "ResumeExpired",
    "Send",
    "SessionStarted",
    "WaitForAsr",
]


@attrs.frozen(kw_only=True)
class Send:
    """Send ``message`` to the client."""

    message: ServerMessage


@attrs.frozen(kw_only=True)
class Close:
    """Close the WebSocket with ``code``; the connection is over (stop every task)."""

    code: int
    reason: str = ""


@attrs.frozen(kw_only=True)
class Rejected:
    """The connection ends because of ``code``: count it and log it (before the error)."""

    code: ErrorCode
    message: str


@attrs.frozen(kw_only=True)
class WaitForAsr:
    """Wait (up to the slot timeout) for the shared ASR.

    Answer ``AsrReady`` or ``AsrUnavailable``.
    """


@attrs.frozen(kw_only=True)
class AcquireSlot:
    """Take a session slot (bounded wait); answer ``SlotAcquired`` / ``SlotRefused``."""


@attrs.frozen(kw_only=True)
class ReleaseSlot:
    """Give the slot back (idempotent)."""


@attrs.frozen(kw_only=True)
class OpenAsrStream:
    """Open ``source``'s ASR stream and its tasks; answer ``StreamOpened`` / ``StreamFailed``."""

    source: Source


@attrs.frozen(kw_only=True)
class SessionStarted:
    """``status: streaming`` was sent: log it, observe ``start_ack_seconds``, run the tasks."""

    session_id: str
    attempt_id: str
    connection_id: str
    sources: tuple[Source, ...]
    ack_seconds: float


@attrs.frozen(kw_only=True)
class FeedAudio:
    """Record and queue ``pcm`` for ``source``'s recognition."""

    source: Source
    pcm: bytes = attrs.field(repr=lambda b: f"<{len(b)} bytes>")


@attrs.frozen(kw_only=True)
class CountDroppedFrames:
    """Add ``frames`` to ``echopanel_frames_dropped_total{source}``."""

    source: Source
    frames: int


@attrs.frozen(kw_only=True)
class Analyze:
    """Run the analyzer on ``recent`` (bounded in time); answer ``AnalysisDone``."""

    recent: tuple[TranscriptEntry, ...]


@attrs.frozen(kw_only=True)
class EndAudio:
    """No more audio: close every ingest queue so recognition drains and flushes."""


@attrs.frozen(kw_only=True)
class CancelAsr:
    """The flush took too long: cancel every source's recognition."""


@attrs.frozen(kw_only=True)
class FlushRecording:
    """Wait until the recording has everything received (before the summary)."""


@attrs.frozen(kw_only=True)
class CloseAsrStreams:
    """Close every ASR stream (idempotent)."""


@attrs.frozen(kw_only=True)
class LookupSession:
    """This connection asks to resume a session: find it among those held by the server.

    Feed the matching session's core ``ResumeRequested``; answer this core
    ``ResumeAccepted`` when that core attached the socket, else ``ResumeRefused``.
    """

    message: ResumeMessage


@attrs.frozen(kw_only=True)
class Attach:
    """A ``resume`` was accepted: from now on this session talks to the new connection's socket.

    Run it before the ``Send`` actions that follow (they go to the new socket); drop the
    old socket if it is still open (a half-open connection). Count a resume.
    """

    connection_id: str
    resent_finals: int


@attrs.frozen(kw_only=True)
class ResumeExpired:
    """A parked session's resume window passed: count it (the release actions follow)."""


@attrs.frozen(kw_only=True)
class CountReplayedAudio:
    """Add ``seconds`` to the audio accepted beyond the rate bound after a resume."""

    source: Source
    seconds: float


Action: TypeAlias = (
    Send
    | Close
    | Rejected
    | WaitForAsr
    | AcquireSlot
    | ReleaseSlot
    | OpenAsrStream
    | SessionStarted
    | FeedAudio
    | CountDroppedFrames
    | Analyze
    | EndAudio
    | CancelAsr
    | FlushRecording
    | CloseAsrStreams
    | LookupSession
    | Attach
    | ResumeExpired
    | CountReplayedAudio
)
