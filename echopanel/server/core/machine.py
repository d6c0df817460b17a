"""The pure server session core: one WebSocket's protocol rules, from accept to close.

Theory of operation
-------------------
:class:`ServerSession` is fed :mod:`events <echopanel.server.core.events>` (a frame arrived,
the peer left, the ASR answered, time passed…) with the current time and answers with
:mod:`actions <echopanel.server.core.actions>` for the shell (send, close, acquire a slot,
open a stream, feed audio…). It performs no I/O and reads no clock: timeouts are data,
:attr:`ServerSession.deadline` is the next instant at which the shell must feed
:class:`~echopanel.server.core.events.TimerFired`.

The phases are :data:`~echopanel.server.core.table.TRANSITIONS`, run by
``transitions.Machine`` over a private model (``_Connection``) that holds the connection's
facts and collects the actions of each step. Each event is first mapped to a trigger
(``_trigger_for``; frames are decoded there); an event with no trigger, or no row for the
trigger in the current phase, is dropped and :attr:`ServerSession.dropped` says why.
:meth:`ServerSession.handle` never raises for any event in any phase.

Rules it keeps (DESIGN.md "Protocol details"): an ``error`` is always sent before the close
it causes; every entry into ``closed`` after a slot was acquired releases it, and every
stream open asked for is closed; ``invalid_message`` drops one frame, more than
``max_invalid_messages`` close 1008; finals are counted, get a session-unique
``segment_id`` and are kept (at most ``max_finals``) for the ``final_summary``; nothing is
sent after the summary.
"""

from __future__ import annotations

import collections
import hmac
import json
from typing import Any, Final

import attrs
from attrs import validators as v
from transitions import EventData

from echopanel.errors import CLOSE_CODES, ErrorCode, ProtocolError, default_message
from echopanel.ports import AsrFinalUpdate, AsrPartialUpdate
from echopanel.protocol.frames import HEADER_BYTES, MAX_FRAME_BYTES, decode_audio_frame
from echopanel.protocol.messages import (
    SOURCES,
    AnalysisUpdate,
    AsrFinal,
    AsrPartial,
    AudioMessage,
    ErrorMessage,
    MetricsMessage,
    ResumeMessage,
    ServerMessage,
    Source,
    SourceStats,
    StartMessage,
    StatusMessage,
    StopMessage,
    TranscriptEntry,
    decode_client,
)
from echopanel.server.core.actions import (
    AcquireSlot,
    Action,
    Analyze,
    Attach,
    CancelAsr,
    Close,
    CloseAsrStreams,
    CountDroppedFrames,
    CountReplayedAudio,
    EndAudio,
    FeedAudio,
    FlushRecording,
    LookupSession,
    OpenAsrStream,
    Rejected,
    ReleaseSlot,
    ResumeExpired,
    Send,
    SessionStarted,
    WaitForAsr,
)
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
    ResumeAccepted,
    ResumeRefused,
    ResumeRequested,
    SlotAcquired,
    SlotRefused,
    SourceLoad,
    StreamFailed,
    StreamOpened,
    TextReceived,
    TimerFired,
)
from echopanel.server.core.summary import build_summary
from echopanel.server.core.table import CLOSED, INITIAL, PARKED, PHASES, TRANSITIONS
from echopanel.statetable import TableRunner

__all__ = ["MAX_TEXT_BYTES", "CoreConfig", "ServerSession"]

#: Longest text frame accepted: a base64 ``audio`` message of a full binary frame fits.
MAX_TEXT_BYTES: Final = 2 * MAX_FRAME_BYTES
_BYTES_PER_SECOND: Final = 32_000
_DRAIN_MESSAGE: Final = "the server is shutting down: the session ends now, after its final summary"


@attrs.frozen(kw_only=True)
class CoreConfig:
    """The knobs the core needs (the shell builds it from ``ServerConfig``)."""

    start_timeout: float = attrs.field(default=10.0, validator=v.gt(0))
    flush_timeout: float = attrs.field(default=8.0, validator=v.gt(0))
    max_invalid_messages: int = attrs.field(default=20, validator=v.ge(0))
    backpressure_interval: float = attrs.field(default=2.0, validator=v.ge(0))
    max_finals: int = attrs.field(default=50_000, validator=v.ge(0))
    analysis_window: int = attrs.field(default=50, validator=v.ge(1))
    #: seconds without audio before a started session ends with ``idle_timeout`` (0: never)
    idle_timeout: float = attrs.field(default=60.0, validator=v.ge(0))
    #: audio accepted per source, in seconds of audio per second (0: unbounded) …
    max_audio_rate: float = attrs.field(default=2.0, validator=v.ge(0))
    #: … after a burst of this many seconds (a client's pre-acknowledgment buffer fits)
    audio_burst: float = attrs.field(default=10.0, validator=v.gt(0))
    #: the encoded ``final_summary`` stays below this (the client accepts up to 4 MiB)
    max_summary_bytes: int = attrs.field(default=2 * 1024 * 1024, validator=v.ge(4096))
    #: seconds a resumable session lost abnormally is held for a ``resume`` (0: never)
    resume_window: float = attrs.field(default=0.0, validator=v.ge(0))


@attrs.frozen
class _Cause:
    """Why the connection closes with an error: the code, a message, the close code."""

    code: ErrorCode
    message: str
    close_code: int


@attrs.frozen
class _Frame:
    """A decoded frame: ``kind`` is the trigger it maps to."""

    kind: str  # start | resume | audio | stop | invalid | fatal
    start: StartMessage | None = None
    resume: ResumeMessage | None = None
    source: Source | None = None
    pcm: bytes = b""
    message: str = ""
    cause: _Cause | None = None


def _fatal(code: ErrorCode, message: str, close_code: int | None = None) -> _Frame:
    return _Frame("fatal", cause=_Cause(code, message, close_code or CLOSE_CODES[code]))


def _peek_type(text: str) -> object:
    try:
        obj = json.loads(text)
    except (ValueError, RecursionError):
        return None
    return obj.get("type") if isinstance(obj, dict) else None


@attrs.define
class _SourceState:
    """What the core knows about one source of the session."""

    audio_seconds: float = 0.0
    seen_drops: int = 0
    load: SourceLoad | None = None
    backpressure_pending: bool = False
    last_backpressure: float | None = None
    last_buffering: float | None = None
    pending: list[bytes] = attrs.Factory(list)
    tokens: float | None = None  # the rate bound's bucket, in seconds of audio
    refilled_at: float = 0.0
    over_rate: int = 0  # frames dropped for arriving faster than max_audio_rate
    last_rate_warning: float | None = None
    received_seconds: float = 0.0  # every audio frame received: the stream position
    last_audio_at: float | None = None

    def dropped(self) -> int:
        """Every frame of this source dropped so far: the queue's and the rate bound's."""
        return (self.load.dropped_frames if self.load is not None else 0) + self.over_rate


class _Connection:
    """The model ``transitions`` drives; callback names in the table resolve to methods here."""

    state: str

    def __init__(self, config: CoreConfig, connection_id: str, resume_token: str | None) -> None:
        self.config = config
        self.resume_token = resume_token
        self.client_resumes = False  # the client announced client_features.resume
        self.parked_at: float | None = None
        self.parked_from: str | None = None
        self.actions: list[Action] = []
        self.connection_id = connection_id
        self.session_id: str | None = None
        self.attempt_id: str | None = None
        self.allowed: tuple[Source, ...] = SOURCES
        self.declared: tuple[Source, ...] = ()
        self.asr_name = ""
        self.started_at = 0.0
        self.timer: tuple[str, float] | None = None
        self.slot_requested = False
        self.slot_held = False
        self.requested: list[Source] = []  # streams asked for, in order
        self.open_streams: list[Source] = []  # streams open, in order
        self.sources: dict[Source, _SourceState] = {}
        self.flushed_sources: set[Source] = set()
        self.flush_errors: dict[Source, str] = {}
        self.counts = {"finals": 0, "partials": 0, "invalid_messages": 0, "frames": 0}
        self.finals: collections.deque[TranscriptEntry] = collections.deque()
        self.segment_ids: set[str] = set()
        self.finish_code = 1000  # the close after the summary: 1001 when draining
        self.recent: collections.deque[TranscriptEntry] = collections.deque(
            maxlen=config.analysis_window
        )
        self.analyzed = 0
        self.close_code: int | None = None

    # ------------------------------------------------------------------ helpers

    def ids(self) -> dict[str, Any]:
        return {
            "session_id": self.session_id,
            "attempt_id": self.attempt_id,
            "connection_id": self.connection_id,
        }

    def send(self, message: ServerMessage) -> None:
        if self.state == PARKED:
            return  # no socket: finals are kept and re-sent on resume
        self.actions.append(Send(message=message))

    def status(self, state: str, message: str, **fields: Any) -> None:
        self.send(StatusMessage(state=state, message=message, **fields, **self.ids()))

    def source(self, source: Source) -> _SourceState:
        return self.sources.setdefault(source, _SourceState())

    def arm(self, name: str, deadline: float) -> None:
        self.timer = (name, deadline)

    def release(self) -> None:
        """Entering ``closed``: give back every resource asked for."""
        self.timer = None
        if self.requested:
            self.actions.append(CloseAsrStreams())
        if self.slot_held:
            self.slot_held = False
            self.actions.append(ReleaseSlot())

    def close(self, code: int, reason: str = "") -> None:
        self.close_code = code
        self.actions.append(Close(code=code, reason=reason))
        self.release()

    # ------------------------------------------------------------------ hooks

    def record(self, ed: EventData) -> None:
        """``prepare_event``: note the fact the event carries, before any condition."""
        event = ed.kwargs["event"]
        frame: _Frame | None = ed.kwargs.get("frame")
        if frame is not None and frame.kind == "invalid":
            self.counts["invalid_messages"] += 1
        elif isinstance(event, AsrDone | AsrFailed) and event.source in self.open_streams:
            self.flushed_sources.add(event.source)
            if isinstance(event, AsrFailed):
                self.flush_errors.setdefault(event.source, event.message)
        elif isinstance(event, SlotAcquired) and self.slot_requested:
            self.slot_held = True
        elif (
            isinstance(event, StreamOpened)
            and event.source in self.requested
            and event.source not in self.open_streams
        ):
            self.open_streams.append(event.source)

    # ------------------------------------------------------------------ conditions

    def authorized(self, ed: EventData) -> bool:
        event = ed.kwargs["event"]
        return isinstance(event, Opened) and event.authorized

    def over_invalid_budget(self, ed: EventData) -> bool:
        return self.counts["invalid_messages"] > self.config.max_invalid_messages

    def all_streams_open(self, ed: EventData) -> bool:
        return all(source in self.open_streams for source in self.declared)

    def all_flushed(self, ed: EventData) -> bool:
        return all(source in self.flushed_sources for source in self.open_streams)

    def resumable(self, ed: EventData | None = None) -> bool:
        return bool(self.config.resume_window and self.resume_token and self.client_resumes)

    def was_finalizing(self, ed: EventData) -> bool:
        """Parked during a stop's flush: a resume goes back to finalizing, for the summary."""
        return self.parked_from == "finalizing"

    def abnormal(self, ed: EventData) -> bool:
        event = ed.kwargs["event"]
        return isinstance(event, PeerGone) and event.code != 1000

    def token_matches(self, ed: EventData) -> bool:
        event = ed.kwargs["event"]
        if not isinstance(event, ResumeRequested) or not self.resumable():
            return False
        assert self.resume_token is not None
        return hmac.compare_digest(
            event.resume_token.encode("utf-8"), self.resume_token.encode("utf-8")
        )

    # ------------------------------------------------------------------ handshake

    def greet(self, ed: EventData) -> None:
        self.send(
            StatusMessage(state="connected", message="send start", connection_id=self.connection_id)
        )
        self.arm("start", ed.kwargs["now"] + self.config.start_timeout)

    def begin(self, ed: EventData) -> None:
        frame: _Frame = ed.kwargs["frame"]
        start = frame.start
        assert start is not None
        self.timer = None
        self.started_at = ed.kwargs["now"]
        self.session_id, self.attempt_id = start.session_id, start.attempt_id
        if start.connection_id:
            self.connection_id = start.connection_id
        if start.sources is not None:
            self.allowed = self.declared = start.sources
        self.client_resumes = (start.client_features or {}).get("resume") is True
        self.actions.append(WaitForAsr())

    def acquire_slot(self, ed: EventData) -> None:
        event = ed.kwargs["event"]
        assert isinstance(event, AsrReady)
        self.asr_name = event.name
        self.slot_requested = True
        self.actions.append(AcquireSlot())

    def open_next_stream(self, ed: EventData) -> None:
        if any(source not in self.open_streams for source in self.requested):
            return  # one open at a time: wait for its answer
        source = next(s for s in self.declared if s not in self.requested)
        self.requested.append(source)
        self.actions.append(OpenAsrStream(source=source))

    def enter_streaming(self, ed: EventData) -> None:
        assert self.session_id is not None and self.attempt_id is not None
        now: float = ed.kwargs["now"]
        token = self.resume_token if self.resumable() else None
        self.status(
            "streaming", f"streaming ({self.asr_name})", degrade_level=0, resume_token=token
        )
        self.arm_idle(now)
        self.actions.append(
            SessionStarted(
                session_id=self.session_id,
                attempt_id=self.attempt_id,
                connection_id=self.connection_id,
                sources=self.allowed,
                ack_seconds=max(0.0, now - self.started_at),
            )
        )

    def arm_idle(self, now: float) -> None:
        if self.config.idle_timeout:
            self.arm("idle", now + self.config.idle_timeout)

    def release_late_slot(self, ed: EventData) -> None:
        """A slot granted after the connection closed goes straight back."""
        if self.slot_held:
            self.slot_held = False
            self.actions.append(ReleaseSlot())

    # ------------------------------------------------------------------ frames

    def report_invalid(self, ed: EventData) -> None:
        frame: _Frame = ed.kwargs["frame"]
        self.send(ErrorMessage(code=ErrorCode.INVALID_MESSAGE, message=frame.message, **self.ids()))

    def accept_audio(self, ed: EventData) -> None:
        frame: _Frame = ed.kwargs["frame"]
        assert frame.source is not None
        self.counts["frames"] += 1
        if not frame.pcm:
            return
        now: float = ed.kwargs["now"]
        self.arm_idle(now)
        source = frame.source
        state = self.source(source)
        state.received_seconds += len(frame.pcm) / _BYTES_PER_SECOND
        state.last_audio_at = now
        if not self.within_rate(source, len(frame.pcm) / _BYTES_PER_SECOND, now):
            return
        if source not in self.requested:
            self.requested.append(source)
            self.source(source).pending.append(frame.pcm)
            self.actions.append(OpenAsrStream(source=source))
        elif source not in self.open_streams:
            self.source(source).pending.append(frame.pcm)
        else:
            self.feed(source, frame.pcm)

    def within_rate(self, source: Source, seconds: float, now: float) -> bool:
        """The rate bound: a token bucket of ``audio_burst`` s refilled at ``max_audio_rate``.

        A frame that does not fit is dropped, counted and reported (at most once per
        ``backpressure_interval``): audio sustained faster than the bound never piles up.
        """
        rate, burst = self.config.max_audio_rate, self.config.audio_burst
        if not rate:
            return True
        state = self.source(source)
        if state.tokens is None:
            state.tokens = burst
        elif state.tokens < burst:  # above it: a resume's replay allowance, not refilled
            state.tokens = min(burst, state.tokens + (now - state.refilled_at) * rate)
        state.refilled_at = now
        if state.tokens >= min(seconds, burst):
            if state.tokens > burst:
                replayed = min(seconds, state.tokens - burst)
                self.actions.append(CountReplayedAudio(source=source, seconds=replayed))
            state.tokens -= seconds
            return True
        state.over_rate += 1
        self.actions.append(CountDroppedFrames(source=source, frames=1))
        if self._due(state.last_rate_warning, now):
            state.last_rate_warning = now
            self.status(
                "warning",
                f"{source}: audio arrives faster than {rate:g}x real time; "
                f"{state.over_rate} frame(s) dropped",
                dropped_frames=state.dropped(),
            )
        return False

    def feed(self, source: Source, pcm: bytes) -> None:
        self.source(source).audio_seconds += len(pcm) / _BYTES_PER_SECOND
        self.actions.append(FeedAudio(source=source, pcm=pcm))

    def feed_pending(self, ed: EventData) -> None:
        event = ed.kwargs["event"]
        assert isinstance(event, StreamOpened)
        state = self.source(event.source)
        pending, state.pending = state.pending, []
        for pcm in pending:
            self.feed(event.source, pcm)

    # ------------------------------------------------------------------ recognition output

    def emit_updates(self, ed: EventData) -> None:
        event = ed.kwargs["event"]
        assert isinstance(event, AsrOutput)
        for update in event.updates:
            if isinstance(update, AsrPartialUpdate):
                if not event.partials:
                    continue  # degrade level >= 2: finals only
                self.counts["partials"] += 1
                self.send(
                    AsrPartial(
                        source=event.source,
                        text=update.text,
                        t0=round(update.t0, 3),
                        t1=round(update.t1, 3),
                        **self.ids(),
                    )
                )
            elif isinstance(update, AsrFinalUpdate):
                self.emit_final(event.source, update)

    def emit_final(self, source: Source, update: AsrFinalUpdate) -> None:
        # unique per session: namespaced by source (once), de-duplicated by the final count.
        # Only the ids of the finals kept (the newest max_finals) are remembered; from the
        # cap on every id carries the session-wide final index, which never repeats.
        segment_id = update.segment_id
        if not segment_id.startswith(f"{source}-"):
            segment_id = f"{source}-{segment_id}"
        index = self.counts["finals"]
        keep = index < self.config.max_finals
        if not keep or segment_id in self.segment_ids:
            segment_id = f"{segment_id}-{index}"
        self.counts["finals"] += 1
        entry = TranscriptEntry(
            source=source,
            t0=round(update.t0, 3),
            t1=round(update.t1, 3),
            text=update.text,
            confidence=update.confidence,
            segment_id=segment_id,
        )
        if self.config.max_finals:
            if len(self.finals) >= self.config.max_finals:  # keep the newest
                self.segment_ids.discard(self.finals.popleft().segment_id)
            self.finals.append(entry)
            self.segment_ids.add(segment_id)
        self.recent.append(entry)
        self.send(
            AsrFinal(
                source=source,
                text=entry.text,
                t0=entry.t0,
                t1=entry.t1,
                confidence=entry.confidence,
                segment_id=segment_id,
                **self.ids(),
            )
        )

    # ------------------------------------------------------------------ load reports

    def note_load(self, load: SourceLoad) -> None:
        """Keep the newest snapshot; count frames dropped since the last one."""
        state = self.source(load.source)
        state.load = load
        new = load.dropped_frames - state.seen_drops
        if new > 0:
            state.seen_drops = load.dropped_frames
            state.backpressure_pending = True
            self.actions.append(CountDroppedFrames(source=load.source, frames=new))

    def _due(self, last: float | None, now: float) -> bool:
        return last is None or now - last >= self.config.backpressure_interval

    def report_queue(self, ed: EventData) -> None:
        """``status: buffering``: the backlog passed the threshold, nothing dropped yet."""
        event = ed.kwargs["event"]
        assert isinstance(event, AudioQueued)
        self.note_load(event.load)
        if event.dropped or not event.buffering:
            return
        state, now, load = self.source(event.load.source), ed.kwargs["now"], event.load
        if not self._due(state.last_buffering, now):
            return
        state.last_buffering = now
        self.status(
            "buffering",
            f"{load.source}: recognition is behind, {load.backlog_seconds:.1f} s of audio waiting",
            backlog_seconds=round(load.backlog_seconds, 3),
            dropped_frames=self.source(load.source).dropped(),
            degrade_level=load.degrade_level,
        )

    def report_level(self, ed: EventData) -> None:
        event = ed.kwargs["event"]
        assert isinstance(event, LevelChanged)
        load = event.load
        self.note_load(load)
        self.status(
            "overloaded" if load.degrade_level else "warning",
            f"{load.source}: degrade level {load.degrade_level} ({event.description})",
            backlog_seconds=round(load.backlog_seconds, 3),
            dropped_frames=self.source(load.source).dropped(),
            degrade_level=load.degrade_level,
        )

    def report_metrics(self, ed: EventData) -> None:
        event = ed.kwargs["event"]
        assert isinstance(event, MetricsTick)
        load, now = event.load, ed.kwargs["now"]
        self.note_load(load)
        state = self.source(load.source)
        if state.backpressure_pending and self._due(state.last_backpressure, now):
            state.backpressure_pending = False
            state.last_backpressure = now
            self.status(
                "backpressure",
                f"{load.source}: recognition is behind, oldest audio dropped",
                backlog_seconds=round(load.backlog_seconds, 3),
                dropped_frames=self.source(load.source).dropped(),
                degrade_level=load.degrade_level,
            )
        self.send(
            MetricsMessage(
                source=load.source,
                backlog_seconds=round(load.backlog_seconds, 3),
                queue_fill=round(load.queue_fill, 3),
                dropped_frames=self.source(load.source).dropped(),
                realtime_factor=round(load.realtime_factor, 4),
                degrade_level=load.degrade_level,
                active_sessions=event.active_sessions,
                **self.ids(),
            )
        )

    # ------------------------------------------------------------------ analysis, recording

    def analyze(self, ed: EventData) -> None:
        if self.counts["finals"] == self.analyzed:
            return
        self.analyzed = self.counts["finals"]
        self.actions.append(Analyze(recent=tuple(self.recent)))  # the newest finals

    def send_analysis(self, ed: EventData) -> None:
        event = ed.kwargs["event"]
        assert isinstance(event, AnalysisDone)
        self.send(AnalysisUpdate(keywords=event.keywords, topics=event.topics, **self.ids()))

    def warn_recording(self, ed: EventData) -> None:
        event = ed.kwargs["event"]
        assert isinstance(event, RecordingFailed)
        self.status("warning", f"recording to --record-dir stopped: {event.message}")

    # ------------------------------------------------------------------ resume

    def ask_resume(self, ed: EventData) -> None:
        """A new connection's first message is ``resume``: look the session up."""
        frame: _Frame = ed.kwargs["frame"]
        assert frame.resume is not None
        self.timer = None
        self.session_id = frame.resume.session_id
        self.actions.append(LookupSession(message=frame.resume))

    def hand_over(self, ed: EventData) -> None:
        """The resumed session owns this socket now: nothing to send, close or release."""

    def park(self, ed: EventData) -> None:
        now: float = ed.kwargs["now"]
        self.parked_at = now
        assert ed.transition is not None
        self.parked_from = ed.transition.source
        self.arm("resume", now + self.config.resume_window)

    def expire(self, ed: EventData) -> None:
        self.actions.append(ResumeExpired())
        self.release()

    def reattach(self, ed: EventData) -> None:
        """Re-attach to the new connection: re-send the finals the client missed, then ACK.

        The ACK's ``audio_seconds`` is, per source, the position up to which audio was
        received; the audio the client kept while disconnected may then arrive faster than
        the rate bound: each source gets an allowance of the outage's length (plus what
        the client sent that never arrived), at most the window plus the burst.
        """
        event = ed.kwargs["event"]
        assert isinstance(event, ResumeRequested)
        now: float = ed.kwargs["now"]
        self.connection_id = event.connection_id
        self.resume_token = event.new_token
        kept = list(self.finals)
        start = 0
        if event.last_segment_id is not None:
            start = next(
                (i + 1 for i, e in enumerate(kept) if e.segment_id == event.last_segment_id), 0
            )
        resent = kept[start:]
        self.actions.append(Attach(connection_id=self.connection_id, resent_finals=len(resent)))
        for entry in resent:
            self.send(
                AsrFinal(
                    source=entry.source,
                    text=entry.text,
                    t0=entry.t0,
                    t1=entry.t1,
                    confidence=entry.confidence,
                    segment_id=entry.segment_id,
                    **self.ids(),
                )
            )
        positions: dict[str, float] = {}
        cap = self.config.resume_window + self.config.audio_burst
        for source in self.allowed:
            state = self.source(source)
            positions[source] = round(state.received_seconds, 3)
            last = state.last_audio_at if state.last_audio_at is not None else now
            lost = max(0.0, event.audio_seconds.get(source, 0.0) - state.received_seconds)
            allowance = min(cap, max(0.0, now - last) + lost)
            if self.config.max_audio_rate and allowance:
                burst = self.config.audio_burst
                base = burst if state.tokens is None else max(state.tokens, 0.0)
                state.tokens = max(base, burst) + allowance
                state.refilled_at = now
        self.parked_at = None
        self.status(
            "streaming",
            f"resumed ({len(resent)} final(s) re-sent)",
            resumed=True,
            resume_token=self.resume_token,
            audio_seconds=positions,
        )
        if self.parked_from == "finalizing":  # the flush goes on: the summary follows
            self.arm("flush", now + self.config.flush_timeout)
        else:
            self.arm_idle(now)
        self.parked_from = None

    # ------------------------------------------------------------------ stop

    def begin_flush(self, ed: EventData) -> None:
        self.actions.append(EndAudio())
        self.arm("flush", ed.kwargs["now"] + self.config.flush_timeout)

    def begin_drain(self, ed: EventData) -> None:
        """The server is shutting down: flush, summarize, then close 1001."""
        self.status("warning", _DRAIN_MESSAGE, reason="drain")
        self.finish_code = 1001
        self.begin_flush(ed)

    def drain_now(self, ed: EventData) -> None:
        """No session to finish: say why, then close 1001."""
        self.status("warning", _DRAIN_MESSAGE, reason="drain")
        self.close(1001, "server shutting down")

    def summarize(self, ed: EventData) -> None:
        if isinstance(ed.kwargs["event"], TimerFired):
            self.actions.append(CancelAsr())
            self.status(
                "warning",
                f"ASR flush did not finish within {self.config.flush_timeout:g} s; "
                "the summary has what was transcribed",
            )
        errors = [self.flush_errors[s] for s in self.open_streams if s in self.flush_errors]
        if errors:
            self.status("warning", f"ASR error: {errors[0]}")
        self.actions.append(FlushRecording())  # the recording is complete before the summary
        self.send(self.summary())
        self.close(self.finish_code)

    def summary(self) -> ServerMessage:
        sources: dict[str, SourceStats] = {}
        dropped_total = 0
        for source in self.open_streams:
            state = self.source(source)
            dropped = state.dropped()
            dropped_total += dropped
            sources[source] = SourceStats(
                audio_seconds=round(state.audio_seconds, 3), frames_dropped=dropped
            )
        return build_summary(
            self.finals,
            sources=sources,
            counts={**self.counts, "frames_dropped": dropped_total},
            ids=self.ids(),
            max_bytes=self.config.max_summary_bytes,
        )

    # ------------------------------------------------------------------ endings

    def fail(self, ed: EventData) -> None:
        cause = self.cause(ed)
        self.actions.append(Rejected(code=cause.code, message=cause.message))
        self.send(ErrorMessage(code=cause.code, message=cause.message, **self.ids()))
        self.close(cause.close_code)

    def cause(self, ed: EventData) -> _Cause:
        event = ed.kwargs["event"]
        frame: _Frame | None = ed.kwargs.get("frame")
        if frame is not None and frame.cause is not None:
            return frame.cause
        if frame is not None and frame.kind == "invalid":
            limit = self.config.max_invalid_messages
            return _Cause(
                ErrorCode.INVALID_MESSAGE,
                f"more than {limit} invalid messages: {frame.message}",
                1008,
            )
        if isinstance(event, Opened):
            return _cause(ErrorCode.UNAUTHORIZED)
        if isinstance(event, ResumeRefused):
            return _cause(ErrorCode.RESUME_UNKNOWN)
        transition = ed.transition
        if isinstance(event, TimerFired) and transition and transition.source == "streaming":
            return _cause(
                ErrorCode.IDLE_TIMEOUT,
                f"No audio received for {self.config.idle_timeout:g} seconds",
            )
        if isinstance(event, TimerFired):
            return _cause(
                ErrorCode.START_TIMEOUT,
                f"No start message within {self.config.start_timeout:g} seconds",
            )
        if isinstance(event, Fault):
            return _cause(ErrorCode.INTERNAL_ERROR)
        if isinstance(event, AsrUnavailable):
            return _cause(
                ErrorCode.ASR_UNAVAILABLE, f"Speech recognition is unavailable: {event.reason}"
            )
        if isinstance(event, SlotRefused):
            return _cause(ErrorCode.SERVER_AT_CAPACITY)
        if isinstance(event, StreamFailed):
            return _cause(ErrorCode.ASR_UNAVAILABLE, event.message)
        if isinstance(event, AsrFailed):
            return _cause(
                ErrorCode.ASR_UNAVAILABLE,
                f"Speech recognition failed on {event.source}: {event.message}",
            )
        raise AssertionError(f"no failure cause for {event!r}")  # pragma: no cover

    def abandon(self, ed: EventData) -> None:
        """The peer is gone: nothing can be sent; release everything."""
        self.release()


def _cause(code: ErrorCode, message: str | None = None) -> _Cause:
    return _Cause(code, message or default_message(code), CLOSE_CODES.get(code, 1011))


class ServerSession:
    """Pure, deterministic core of one live-listener connection (see the module docstring).

    ``connection_id`` is the server-made id (replaced by the client's from ``start``).
    """

    def __init__(
        self, config: CoreConfig, *, connection_id: str, resume_token: str | None = None
    ) -> None:
        self.config = config
        self._model = _Connection(config, connection_id, resume_token)
        self._table = TableRunner(self._model, TRANSITIONS, states=PHASES, initial=INITIAL)
        #: Why the last event was dropped (``None`` when it was handled).
        self.dropped: str | None = None

    # ------------------------------------------------------------------ queries

    @property
    def phase(self) -> str:
        """The table's phase: ``accepted`` … ``closed`` (see :data:`PHASES`)."""
        return self._model.state

    @property
    def closed(self) -> bool:
        return self._model.state == CLOSED

    @property
    def deadline(self) -> float | None:
        """When the shell must feed ``TimerFired`` next, or ``None``."""
        return None if self._model.timer is None else self._model.timer[1]

    @property
    def timer(self) -> str | None:
        """The armed timer's name (``start``, ``idle``, ``flush``, ``resume``), or ``None``."""
        return None if self._model.timer is None else self._model.timer[0]

    @property
    def connection_id(self) -> str:
        return self._model.connection_id

    @property
    def resumable(self) -> bool:
        """Whether an abnormal loss would park this session (and a ``resume`` find it)."""
        return self._model.resumable()

    @property
    def parked(self) -> bool:
        return self._model.state == PARKED

    @property
    def session_id(self) -> str | None:
        return self._model.session_id

    @property
    def attempt_id(self) -> str | None:
        return self._model.attempt_id

    @property
    def allowed(self) -> tuple[Source, ...]:
        """The sources that may send: those declared in ``start``, else both."""
        return self._model.allowed

    @property
    def counts(self) -> dict[str, int]:
        return dict(self._model.counts)

    @property
    def finals(self) -> collections.deque[TranscriptEntry]:
        """The finals kept for the summary (the newest ``max_finals``), in emission order."""
        return self._model.finals

    @property
    def segment_ids(self) -> set[str]:
        return self._model.segment_ids

    @property
    def close_code(self) -> int | None:
        """The close code the core chose, once it did."""
        return self._model.close_code

    def ids(self) -> dict[str, Any]:
        """``session_id``, ``attempt_id``, ``connection_id`` (``None`` while unknown)."""
        return self._model.ids()

    def accepts(self, trigger: str) -> bool:
        """Whether the table has a row for ``trigger`` from the current phase."""
        return self._table.accepts(trigger)

    # ------------------------------------------------------------------ the step

    def handle(self, event: Event, now: float) -> list[Action]:
        """Feed one event at time ``now``; return the actions to run, in order."""
        model = self._model
        model.actions = []
        trigger, frame, reason = self._trigger_for(event, now)
        if trigger is not None and not self.accepts(trigger):
            trigger, reason = None, f"no row for {trigger!r} in phase {self.phase!r}"
        self.dropped = reason
        if trigger is None:
            return []
        kwargs: dict[str, Any] = {"event": event, "now": now}
        if frame is not None:
            kwargs["frame"] = frame
        self._table.fire(trigger, **kwargs)
        if self.accepts("flushed"):
            self._table.fire("flushed", **kwargs)
        actions, model.actions = model.actions, []
        return actions

    def _trigger_for(
        self, event: Event, now: float
    ) -> tuple[str | None, _Frame | None, str | None]:
        """The trigger ``event`` maps to (with the decoded frame), or why it is dropped."""
        match event:
            case TextReceived() | BinaryReceived():
                if self.phase not in ("awaiting_start", "streaming"):
                    return None, None, f"frame in phase {self.phase!r}"
                frame = self._decode(event)
                return frame.kind, frame, None
            case TimerFired():
                deadline = self.deadline
                if deadline is None or now < deadline:
                    return None, None, "early timer"
                return "timeout", None, None
        trigger = _TRIGGERS.get(type(event))
        if trigger is None:  # pragma: no cover - every event type is mapped
            return None, None, f"unknown event {event!r}"
        return trigger, None, None

    # ------------------------------------------------------------------ frame rules

    def _decode(self, event: TextReceived | BinaryReceived) -> _Frame:
        before_start = self.phase == "awaiting_start"
        if isinstance(event, BinaryReceived):
            data = event.data
            if len(data) > MAX_FRAME_BYTES:
                return _fatal(
                    ErrorCode.FRAME_TOO_LARGE, f"frame of {len(data)} bytes > {MAX_FRAME_BYTES}"
                )
            if before_start:
                return _Frame("invalid", message="audio before start")
            try:
                audio = decode_audio_frame(data)
            except ProtocolError as exc:
                return _Frame("invalid", message=exc.message)
            return self._audio(audio.source, audio.pcm)
        text = event.text
        if len(text) > MAX_TEXT_BYTES:
            return _fatal(ErrorCode.FRAME_TOO_LARGE, f"message of {len(text)} characters")
        try:
            message = decode_client(text)
        except ProtocolError as exc:
            if before_start:
                if exc.code is ErrorCode.UNSUPPORTED_AUDIO_FORMAT:
                    return _fatal(exc.code, exc.message)
                if _peek_type(text) == "start":
                    return _fatal(ErrorCode.INVALID_MESSAGE, f"invalid start: {exc.message}")
            return _Frame("invalid", message=exc.message)
        if isinstance(message, StartMessage):
            if before_start:
                return _Frame("start", start=message)
            return _Frame("invalid", message="session already started on this connection")
        if isinstance(message, ResumeMessage):
            if before_start:
                return _Frame("resume", resume=message)
            return _Frame("invalid", message="resume on a connection that has a session")
        if isinstance(message, AudioMessage):
            if before_start:
                return _Frame("invalid", message="audio before start")
            if len(message.pcm) + HEADER_BYTES > MAX_FRAME_BYTES:
                return _fatal(ErrorCode.FRAME_TOO_LARGE, f"audio of {len(message.pcm)} bytes")
            return self._audio(message.source, message.pcm)
        assert isinstance(message, StopMessage)
        if before_start:
            return _Frame("invalid", message="stop before start")
        if message.session_id != self.session_id:
            return _Frame("invalid", message="stop for another session_id")
        return _Frame("stop")

    def _audio(self, source: Source, pcm: bytes) -> _Frame:
        if source not in self.allowed:
            return _Frame("invalid", message=f"audio for source {source!r} not declared in start")
        return _Frame("audio", source=source, pcm=pcm)


_TRIGGERS: Final[dict[type, str]] = {
    Opened: "opened",
    PeerGone: "peer_gone",
    AsrReady: "asr_ready",
    AsrUnavailable: "asr_unavailable",
    SlotAcquired: "slot_acquired",
    SlotRefused: "slot_refused",
    StreamOpened: "stream_opened",
    StreamFailed: "stream_failed",
    AsrOutput: "asr_output",
    AsrDone: "asr_done",
    AsrFailed: "asr_failed",
    AudioQueued: "audio_queued",
    LevelChanged: "level_changed",
    MetricsTick: "metrics_tick",
    AnalysisTick: "analysis_tick",
    AnalysisDone: "analysis_done",
    RecordingFailed: "recording_failed",
    DrainRequested: "drain",
    ResumeRequested: "resume_requested",
    ResumeAccepted: "resume_accepted",
    ResumeRefused: "resume_refused",
    Fault: "fault",
}
