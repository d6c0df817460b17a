"""The pure server session core: the live-listener protocol rules without a WebSocket.

``ServerSession(config, connection_id=...)`` is fed :mod:`events
<echopanel.server.core.events>` with the current time — ``session.handle(event, now) ->
list[Action]`` — and exposes its next ``deadline``, the way the client's
:class:`~echopanel.session.SessionMachine` does. Its phases are the table in
:mod:`echopanel.server.core.table`; :mod:`echopanel.server.core.diagram` draws it.
No anyio, no Starlette, no clock: the shell is :class:`echopanel.server.connection.LiveConnection`.
"""

from __future__ import annotations

from echopanel.server.core.actions import (
    AcquireSlot,
    Action,
    Analyze,
    CancelAsr,
    Close,
    CloseAsrStreams,
    CountDroppedFrames,
    EndAudio,
    FeedAudio,
    FlushRecording,
    OpenAsrStream,
    Rejected,
    ReleaseSlot,
    Send,
    SessionStarted,
    WaitForAsr,
)
from echopanel.server.core.auth import check_token
from echopanel.server.core.events import (
    AnalysisDone,
    AnalysisTick,
    AsrDone,
    AsrFailed,
    AsrOutput,
    AsrReady,
    AsrUnavailable,
    AudioQueued,
    BinaryReceived,
    DrainRequested,
    Event,
    Fault,
    LevelChanged,
    MetricsTick,
    Opened,
    PeerGone,
    RecordingFailed,
    SlotAcquired,
    SlotRefused,
    SourceLoad,
    StreamFailed,
    StreamOpened,
    TextReceived,
    TimerFired,
)
from echopanel.server.core.machine import MAX_TEXT_BYTES, CoreConfig, ServerSession
from echopanel.server.core.summary import build_summary, render_markdown
from echopanel.server.core.table import PHASES, TRANSITIONS, TRIGGERS

__all__ = [
    "MAX_TEXT_BYTES",
    "PHASES",
    "TRANSITIONS",
    "TRIGGERS",
    "AcquireSlot",
    "Action",
    "AnalysisDone",
    "AnalysisTick",
    "Analyze",
    "AsrDone",
    "AsrFailed",
    "AsrOutput",
    "AsrReady",
    "AsrUnavailable",
    "AudioQueued",
    "BinaryReceived",
    "CancelAsr",
    "Close",
    "CloseAsrStreams",
    "CoreConfig",
    "CountDroppedFrames",
    "DrainRequested",
    "EndAudio",
    "Event",
    "Fault",
    "FeedAudio",
    "FlushRecording",
    "LevelChanged",
    "MetricsTick",
    "OpenAsrStream",
    "Opened",
    "PeerGone",
    "RecordingFailed",
    "Rejected",
    "ReleaseSlot",
    "Send",
    "ServerSession",
    "SessionStarted",
    "SlotAcquired",
    "SlotRefused",
    "SourceLoad",
    "StreamFailed",
    "StreamOpened",
    "TextReceived",
    "TimerFired",
    "WaitForAsr",
    "build_summary",
    "check_token",
    "render_markdown",
]
