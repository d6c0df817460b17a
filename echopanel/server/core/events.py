"""Events: facts fed to :class:`~echopanel.server.core.ServerSession` with the current time.

The shell turns everything that happens to one WebSocket into one of these: a frame
arrived, the peer went away, an action it ran has an answer (the ASR is ready, a slot was
acquired, a stream opened), a source's ASR produced updates or finished, a load snapshot,
the analysis answered, time passed, the server is draining, or the shell itself failed.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TypeAlias

import attrs

from echopanel.ports import AsrUpdate
from echopanel.protocol.messages import Source

__all__ = [
    "AnalysisDone",
    "AnalysisTick",
    "AsrDone",
    "AsrFailed",
    "AsrOutput",
    "AsrReady",
    "AsrUnavailable",
    "AudioQueued",
    "BinaryReceived",
    "DrainRequested",
    "Event",
    "Fault",
    "LevelChanged",
    "MetricsTick",
    "Opened",
    "PeerGone",
    "RecordingFailed",
    "ResumeAccepted",
    "ResumeRefused",
    "ResumeRequested",
    "SlotAcquired",
    "SlotRefused",
    "SourceLoad",
    "StreamFailed",
    "StreamOpened",
    "TextReceived",
    "TimerFired",
]


@attrs.frozen(kw_only=True)
class SourceLoad:
    """A snapshot of one source's ingest queue and recognition load (from the shell)."""

    source: Source
    backlog_seconds: float = 0.0
    queue_fill: float = 0.0
    dropped_frames: int = 0
    realtime_factor: float = 0.0
    degrade_level: int = 0


# --------------------------------------------------------------------------- the socket


@attrs.frozen(kw_only=True)
class Opened:
    """The WebSocket was accepted; ``authorized`` is the token check of the upgrade."""

    authorized: bool


@attrs.frozen(kw_only=True)
class TextReceived:
    """A text frame arrived."""

    text: str = attrs.field(repr=lambda t: f"<{len(t)} chars>")


@attrs.frozen(kw_only=True)
class BinaryReceived:
    """A binary frame arrived."""

    data: bytes = attrs.field(repr=lambda b: f"<{len(b)} bytes>")


@attrs.frozen(kw_only=True)
class PeerGone:
    """The peer disconnected or a send failed: nothing more can be sent.

    ``code`` is the peer's close code; ``None`` when there was no close frame (a dropped
    connection, a failed send). Any code but 1000 is an abnormal loss, which parks a
    resumable session instead of ending it.
    """

    code: int | None = None


# --------------------------------------------------------------------------- answers to actions


@attrs.frozen(kw_only=True)
class AsrReady:
    """The shared ASR backend is loaded (answer to ``WaitForAsr``)."""

    name: str


@attrs.frozen(kw_only=True)
class AsrUnavailable:
    """The shared ASR backend failed to load or is still loading after the wait."""

    reason: str


@attrs.frozen(kw_only=True)
class SlotAcquired:
    """A session slot is held for this connection (answer to ``AcquireSlot``)."""


@attrs.frozen(kw_only=True)
class SlotRefused:
    """No slot freed within the slot timeout."""


@attrs.frozen(kw_only=True)
class StreamOpened:
    """``source``'s ASR stream is open (answer to ``OpenAsrStream``)."""

    source: Source


@attrs.frozen(kw_only=True)
class StreamFailed:
    """``source``'s ASR stream could not be opened."""

    source: Source
    message: str


# --------------------------------------------------------------------------- recognition


@attrs.frozen(kw_only=True)
class AsrOutput:
    """``source``'s recognition produced updates; ``partials`` False: finals only."""

    source: Source
    updates: tuple[AsrUpdate, ...]
    partials: bool = True


@attrs.frozen(kw_only=True)
class AsrDone:
    """``source``'s recognition ended normally (its queue closed, drained and flushed)."""

    source: Source


@attrs.frozen(kw_only=True)
class AsrFailed:
    """``source``'s recognition failed (``AsrError``); ``message`` says why."""

    source: Source
    message: str


@attrs.frozen(kw_only=True)
class AudioQueued:
    """A ``FeedAudio`` was queued: ``dropped`` frames had to go, or the backlog is high."""

    load: SourceLoad
    dropped: int = 0
    buffering: bool = False


@attrs.frozen(kw_only=True)
class LevelChanged:
    """``load.source`` moved to degrade level ``load.degrade_level``."""

    load: SourceLoad
    description: str


@attrs.frozen(kw_only=True)
class MetricsTick:
    """About once per ``metrics_interval`` per source: report its load."""

    load: SourceLoad
    active_sessions: int


# --------------------------------------------------------------------------- shell facts


@attrs.frozen(kw_only=True)
class AnalysisTick:
    """Every ``analysis_interval``: analyze the newest finals if there are new ones."""


@attrs.frozen(kw_only=True)
class AnalysisDone:
    """The analyzer answered an ``Analyze``."""

    keywords: tuple[str, ...] = ()
    topics: tuple[str, ...] = ()


@attrs.frozen(kw_only=True)
class RecordingFailed:
    """The ``--record-dir`` writer stopped; the session goes on."""

    message: str


@attrs.frozen(kw_only=True)
class ResumeRequested:
    """A ``resume`` on a new connection names this session (fed to the session's core).

    ``connection_id`` is the new connection's; ``new_token`` the token the shell made for
    the session's next loss (tokens are single-use).
    """

    resume_token: str = attrs.field(repr=False)
    last_segment_id: str | None = None
    audio_seconds: Mapping[str, float] = attrs.field(factory=dict)
    connection_id: str
    new_token: str = attrs.field(repr=False)


@attrs.frozen(kw_only=True)
class ResumeAccepted:
    """The session named by this connection's ``resume`` took this socket over."""


@attrs.frozen(kw_only=True)
class ResumeRefused:
    """No session held here matches this connection's ``resume`` (or its token)."""


@attrs.frozen(kw_only=True)
class TimerFired:
    """The shell's clock reached :attr:`ServerSession.deadline`."""


@attrs.frozen(kw_only=True)
class DrainRequested:
    """The server is shutting down gracefully: finish this session now."""


@attrs.frozen(kw_only=True)
class Fault:
    """The shell hit an unexpected error while serving this connection."""


Event: TypeAlias = (
    Opened
    | TextReceived
    | BinaryReceived
    | PeerGone
    | AsrReady
    | AsrUnavailable
    | SlotAcquired
    | SlotRefused
    | StreamOpened
    | StreamFailed
    | AsrOutput
    | AsrDone
    | AsrFailed
    | AudioQueued
    | LevelChanged
    | MetricsTick
    | AnalysisTick
    | AnalysisDone
    | RecordingFailed
    | ResumeRequested
    | ResumeAccepted
    | ResumeRefused
    | TimerFired
    | DrainRequested
    | Fault
)
