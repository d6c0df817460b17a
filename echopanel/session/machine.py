"""The pure session state machine.

Theory of operation
-------------------
:class:`SessionMachine` is fed events (facts and commands) with the current time and
answers with effects (commands for the shell). It performs no I/O and reads no clock;
timeouts are data: :attr:`SessionMachine.deadline` is the next instant at which the shell
must feed :class:`~echopanel.session.events.TimerFired`.

The state graph is :data:`~echopanel.session.table.TRANSITIONS`, run by
``transitions.Machine`` over a private model object (``_Attempt``) that records the
attempt's facts and collects the effects of each step. Each event is first mapped to a
trigger name (``_trigger_for``). An input the machine does not act on is *dropped*:
:meth:`handle` returns ``[]`` and :attr:`SessionMachine.last_drop` says why (a fact from
another attempt, a fact answering nothing the attempt waits for, a (state, trigger) pair
with no row, a timer before its deadline or with none armed). An accepted input may also
return ``[]`` (``server_connected`` while awaiting the acknowledgment): then ``last_drop``
is ``None``. It never raises for any event in any state; a start while a session is active
yields ``RejectStart`` and changes nothing.

Timers: the machine keeps at most one deadline (the start timeout while starting, the stop
timeout while finalizing, the backoff or the try's bound while reconnecting — both capped by
the end of the reconnect window); :attr:`SessionMachine.deadline` is the only source of truth and
no effect announces it. The shell sleeps until it and feeds ``TimerFired`` with ``now``
clamped up to the deadline it slept for (a timer may wake a little early, as aioquic's
shell allows for); a ``TimerFired`` before the current deadline is dropped as early.

Every exit to ``idle`` or ``error`` emits, in order: ``StopCapture`` for every capture
asked to start (most recent first), ``CloseTransport`` if a connection was asked for, then
``ReportError`` (failures only) and ``EndAttempt``; the deadline is cleared.
"""

from __future__ import annotations

import enum
import uuid
from collections.abc import Callable
from typing import Any

import attrs
from transitions import EventData

from echopanel.errors import ErrorCode, default_message
from echopanel.ports import PermissionKind
from echopanel.protocol.messages import (
    AsrFinal,
    ErrorMessage,
    FinalSummary,
    Source,
    StartMessage,
    StatusMessage,
    StopMessage,
)
from echopanel.session.config import SessionConfig, auth_headers, with_routing_key
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
from echopanel.session.table import (
    FINALIZING,
    IDLE,
    LISTENING,
    RECONNECTING,
    STATES,
    TRANSITIONS,
    phase_of,
    step_of,
)
from echopanel.statetable import TableRunner

__all__ = [
    "CLIENT_FEATURES",
    "Drop",
    "DropReason",
    "SessionMachine",
    "close_description",
    "start_timeout_message",
    "uuid_factory",
]

#: ``client_features`` sent in every ``start``.
CLIENT_FEATURES: dict[str, Any] = {"binary_audio": True, "resume": True}

#: Closes after which a listening session reconnects (when the server gave a resume token):
#: no close frame or a dropped connection, going away, a proxy's 1011, a restart, try again.
#: A server's own fatal error always comes as an ``error`` message first, which ends the
#: session before the close.
RECONNECT_CLOSES: frozenset[int | None] = frozenset({None, 1001, 1006, 1011, 1012, 1013, 1014})

_PERMISSION_CODES = {
    PermissionKind.SCREEN_RECORDING: ErrorCode.SCREEN_RECORDING_PERMISSION_REQUIRED,
    PermissionKind.MICROPHONE: ErrorCode.MICROPHONE_PERMISSION_REQUIRED,
}
_CAPTURE_CODES: dict[Source, ErrorCode] = {
    "system": ErrorCode.SYSTEM_CAPTURE_FAILED,
    "mic": ErrorCode.MICROPHONE_CAPTURE_FAILED,
}


def uuid_factory() -> str:
    """The default id factory: a random UUID4 string."""
    return str(uuid.uuid4())


def start_timeout_message(seconds: float) -> str:
    """``Backend did not start streaming within 5 seconds`` for ``seconds``."""
    shown = f"{seconds:g}"
    return f"Backend did not start streaming within {shown} second{'' if shown == '1' else 's'}"


#: What a WebSocket close code means, for people (RFC 6455 §7.4.1 and IANA).
_CLOSE_MEANINGS: dict[int, str] = {
    1000: "normal closure",
    1001: "going away",
    1006: "dropped without a close frame",
    1008: "policy violation",
    1009: "message too big",
    1011: "server error",
    1012: "server restarting",
    1013: "try again later",
}


def close_description(close_code: int | None) -> str:
    """``close 1012, server restarting`` (or ``no close code``)."""
    if close_code is None:
        return "no close code"
    meaning = _CLOSE_MEANINGS.get(close_code)
    return f"close {close_code}, {meaning}" if meaning else f"close {close_code}"


def _with_detail(code: ErrorCode, detail: str) -> str:
    base = default_message(code)
    return f"{base}: {detail}" if detail else base


class DropReason(enum.StrEnum):
    """Why :meth:`SessionMachine.handle` did not act on an input."""

    #: a fact about another (older) attempt, or a message naming another attempt
    STALE_ATTEMPT = "stale_attempt"
    #: a fact of this attempt that answers nothing it waits for (a permission not asked or
    #: already granted, a capture not started, a second answer)
    UNEXPECTED = "unexpected"
    #: the table has no row for this trigger in the current state (a late fact, a second stop)
    NO_ROW = "no_row"
    #: ``TimerFired`` before the current deadline (the deadline moved on)
    EARLY_TIMER = "early_timer"
    #: ``TimerFired`` with no deadline armed
    NO_TIMER = "no_timer"


@attrs.frozen(kw_only=True)
class Drop:
    """One dropped input: the reason, the event's class name, the state and the trigger."""

    reason: DropReason
    event: str
    node: str
    trigger: str | None = None

    def __str__(self) -> str:
        what = self.event if self.trigger is None else f"{self.event} ({self.trigger})"
        return f"{what} dropped in {self.node}: {self.reason.value}"


@attrs.define(eq=False)
class _Timer:
    name: str
    deadline: float


class _Attempt:
    """The model ``transitions`` drives: per-attempt facts, conditions and effect makers.

    Callback names in the table resolve to methods here. ``state`` is set by transitions.
    """

    state: str

    def __init__(
        self,
        config: SessionConfig,
        id_factory: Callable[[], str],
        jitter: Callable[[], float] = lambda: 0.5,
    ) -> None:
        self.config = config
        self.id_factory = id_factory
        self.jitter = jitter
        self.effects: list[Effect] = []
        self.session_id: str | None = None
        self.attempt_id: str | None = None
        self.connection_id: str | None = None
        self.timer: _Timer | None = None
        self.summary: FinalSummary | None = None
        self._reset()

    def _reset(self) -> None:
        self.granted: set[PermissionKind] = set()
        self.asked: list[PermissionKind] = []
        self.captures: list[Source] = []  # asked to start, in order
        self.started: list[Source] = []
        self.ended: set[Source] = set()
        self.connect_issued = False
        self.connection_id = None
        self.connection = 0  # the attempt's connection number (one more per reconnect)
        self.resume_token: str | None = None
        self.last_segment_id: str | None = None
        self.seen_segments: set[str] = set()
        self.tries = 0  # reconnect tries in the current outage
        self.part = 0  # server sessions after the first (a server that lost the session)
        self.lost_in: str | None = None  # the state the connection was lost in
        self.outage_end: float | None = None

    # ------------------------------------------------------------------ hooks

    def record(self, ed: EventData) -> None:
        """``prepare_event``: note the fact the event carries, before any condition."""
        event = ed.kwargs["event"]
        if isinstance(event, PermissionAnswered) and event.granted:
            self.granted.add(event.kind)
        elif isinstance(event, CaptureStarted):
            self.started.append(event.source)
        elif isinstance(event, CaptureEnded):
            self.ended.add(event.source)
        elif isinstance(event, MessageReceived):
            message = event.message
            if message.connection_id is not None:
                self.connection_id = message.connection_id
            if isinstance(message, StatusMessage) and message.resume_token:
                self.resume_token = message.resume_token

    def announce(self, ed: EventData) -> None:
        """``on_enter`` of every state: tell listeners the state or step changed."""
        assert ed.transition is not None
        self.effects.append(
            AnnounceState(
                state=phase_of(self.state),
                step=step_of(self.state),
                previous=phase_of(ed.transition.source),
            )
        )

    # ------------------------------------------------------------------ conditions

    def all_permissions_granted(self, ed: EventData) -> bool:
        return all(kind in self.granted for kind in self.config.permissions)

    def all_captures_started(self, ed: EventData) -> bool:
        return all(source in self.started for source in self.config.sources)

    def can_reconnect(self, ed: EventData) -> bool:
        event = ed.kwargs["event"]
        return (
            self.config.reconnect_window > 0
            and self.resume_token is not None
            and isinstance(event, TransportClosed)
            and event.close_code in RECONNECT_CLOSES
        )

    def outage_over(self, ed: EventData) -> bool:
        return self.outage_end is not None and ed.kwargs["now"] >= self.outage_end

    def backoff_due(self, ed: EventData) -> bool:
        return self.timer is not None and self.timer.name == "backoff"

    def server_busy(self, ed: EventData) -> bool:
        event = ed.kwargs["event"]
        return (
            isinstance(event, MessageReceived)
            and isinstance(event.message, ErrorMessage)
            and event.message.code is ErrorCode.SERVER_AT_CAPACITY
        )

    def stopping(self, ed: EventData) -> bool:
        return self.lost_in == FINALIZING

    def session_unknown(self, ed: EventData) -> bool:
        event = ed.kwargs["event"]
        return (
            self.lost_in != FINALIZING  # after stop a new server session has nothing to send
            and isinstance(event, MessageReceived)
            and isinstance(event.message, ErrorMessage)
            and event.message.code is ErrorCode.RESUME_UNKNOWN
            and self.resume_token is not None
        )

    def should_auto_stop(self, ed: EventData) -> bool:
        return self.config.stop_on_capture_end and all(
            source in self.ended for source in self.config.sources
        )

    # ------------------------------------------------------------------ effect makers

    def _arm(self, name: str, seconds: float, now: float) -> None:
        self.timer = _Timer(name, now + seconds)

    def _disarm(self) -> None:
        self.timer = None

    def begin_attempt(self, ed: EventData) -> None:
        now: float = ed.kwargs["now"]
        assert ed.transition is not None
        if ed.transition.source == IDLE or self.session_id is None:
            self.session_id = self.id_factory()
            self.summary = None
        self.attempt_id = self.id_factory()
        self._reset()
        self.effects.append(
            CreateBundle(
                session_id=self.session_id,
                attempt_id=self.attempt_id,
                sources=self.config.sources,
                started_at=now,
            )
        )
        self._arm("start", self.config.start_timeout, now)

    def reject_start(self, ed: EventData) -> None:
        phase = phase_of(self.state)
        self.effects.append(
            RejectStart(state=phase, reason=f"a session is already active (state {phase!r})")
        )

    def request_next_permission(self, ed: EventData) -> None:
        kind = next(k for k in self.config.permissions if k not in self.asked)
        self.asked.append(kind)
        self.effects.append(RequestPermission(kind=kind))

    def start_next_capture(self, ed: EventData) -> None:
        source = next(s for s in self.config.sources if s not in self.captures)
        self.captures.append(source)
        self.effects.append(StartCapture(source=source))

    def connect(self, ed: EventData) -> None:
        self.connect_issued = True
        assert self.session_id is not None
        url = with_routing_key(self.config.url, self.session_id)  # a load balancer hashes on it
        self.effects.append(Connect(url=url, headers=auth_headers(self.config.token)))

    def send_start(self, ed: EventData) -> None:
        assert self.session_id is not None and self.attempt_id is not None
        message = StartMessage(
            session_id=self.session_id,
            attempt_id=self.attempt_id,
            sources=self.config.sources,
            client_features=CLIENT_FEATURES,
        )
        self.effects.append(SendStart(message=message))

    def enter_listening(self, ed: EventData) -> None:
        assert self.session_id is not None and self.attempt_id is not None
        self._disarm()
        self.effects.append(
            EnterListening(
                session_id=self.session_id,
                attempt_id=self.attempt_id,
                connection_id=self.connection_id,
                at=ed.kwargs["now"],
            )
        )

    def emit_message(self, ed: EventData) -> None:
        event = ed.kwargs["event"]
        assert isinstance(event, MessageReceived)
        message = event.message
        if isinstance(message, AsrFinal):
            if message.segment_id in self.seen_segments:
                return  # re-sent after a resume: the app has it already
            self.seen_segments.add(message.segment_id)
            self.last_segment_id = message.segment_id
        self.effects.append(EmitMessage(message=message))

    # ------------------------------------------------------------------ reconnecting

    def _arm_capped(self, name: str, seconds: float, now: float) -> None:
        """Arm ``name``, never past the end of the outage window."""
        deadline = now + seconds
        if self.outage_end is not None:
            deadline = min(deadline, self.outage_end)
        self.timer = _Timer(name, deadline)

    def _backoff(self) -> float:
        """The wait before try ``tries`` (0: at once), doubling, with jitter of ±50 %."""
        if self.tries == 0:
            return 0.0
        base = min(
            self.config.reconnect_backoff_max,
            self.config.reconnect_backoff * 2 ** (self.tries - 1),
        )
        jitter = min(max(float(self.jitter()), 0.0), 1.0)
        return float(base * (0.5 + jitter))

    def begin_reconnect(self, ed: EventData) -> None:
        """The connection is lost: close what is left of it and try again at once."""
        now: float = ed.kwargs["now"]
        assert ed.transition is not None
        self.lost_in = ed.transition.source
        self.tries = 0
        self.outage_end = now + self.config.reconnect_window
        self.effects.append(CloseTransport(code=1001))
        self._arm_capped("backoff", 0.0, now)

    def reconnect_now(self, ed: EventData) -> None:
        now: float = ed.kwargs["now"]
        assert self.session_id is not None
        self.tries += 1
        self.connection += 1
        self.connect_issued = True
        url = with_routing_key(self.config.url, self.session_id)
        self.effects.append(
            Connect(url=url, headers=auth_headers(self.config.token), connection=self.connection)
        )
        self._arm_capped("try", self.config.start_timeout, now)  # connect + acknowledgment

    def retry(self, ed: EventData) -> None:
        """This try failed (or took too long): close it, wait the backoff, try again."""
        self.effects.append(CloseTransport(code=1001))
        self._arm_capped("backoff", self._backoff(), ed.kwargs["now"])

    def start_fresh(self, ed: EventData) -> None:
        """The server lost the session (restart, window passed): start a new server session
        for this session on the next connection, and mark the gap for the app."""
        self.resume_token = None
        self.part += 1
        self.effects.append(
            EmitMessage(
                message=StatusMessage(
                    state="warning",
                    reason="resume_gap",
                    message=(
                        "the server no longer had the session: a new server session "
                        "continues it; what was said during the outage may be missing"
                    ),
                    session_id=self.session_id,
                    attempt_id=self.attempt_id,
                )
            )
        )
        self.effects.append(CloseTransport(code=1001))
        self._arm_capped("backoff", 0.0, ed.kwargs["now"])

    def send_resume(self, ed: EventData) -> None:
        if self.resume_token is None:  # a new server session for this session
            self.send_start(ed)
            return
        assert self.session_id is not None
        self.effects.append(
            SendResume(
                session_id=self.session_id,
                resume_token=self.resume_token,
                last_segment_id=self.last_segment_id,
            )
        )

    def resume_finalizing(self, ed: EventData) -> None:
        """Resumed after the stop: the summary follows; wait for it (the stop timeout)."""
        event = ed.kwargs["event"]
        assert isinstance(event, MessageReceived)
        self.outage_end = None
        self.tries = 0
        self.lost_in = None
        self.effects.append(EmitMessage(message=event.message))
        self._arm("stop", self.config.stop_timeout, ed.kwargs["now"])

    def resume_listening(self, ed: EventData) -> None:
        event = ed.kwargs["event"]
        assert isinstance(event, MessageReceived)
        self.outage_end = None
        self.tries = 0
        self.lost_in = None
        self.effects.append(EmitMessage(message=event.message))  # status: streaming, resumed
        self.enter_listening(ed)

    def _teardown(self) -> None:
        for source in reversed(self.captures):
            self.effects.append(StopCapture(source=source))
        self.captures = []
        if self.connect_issued:
            self.effects.append(CloseTransport())
            self.connect_issued = False
        self._disarm()

    def begin_stop(self, ed: EventData) -> None:
        assert self.session_id is not None
        for source in reversed(self.captures):
            self.effects.append(StopCapture(source=source))
        self.captures = []
        self.effects.append(SendStop(message=StopMessage(session_id=self.session_id)))
        self._arm("stop", self.config.stop_timeout, ed.kwargs["now"])

    def cancel(self, ed: EventData) -> None:
        self._teardown()
        self.effects.append(EndAttempt(outcome="cancelled"))

    def complete(self, ed: EventData) -> None:
        event = ed.kwargs["event"]
        if isinstance(event, MessageReceived) and isinstance(event.message, FinalSummary):
            self.summary = event.message
        self._teardown()
        self.effects.append(EndAttempt(outcome="completed", summary=self.summary))

    def fail(self, ed: EventData) -> None:
        assert ed.transition is not None
        code, message = self._cause(ed.kwargs["event"], ed.transition.source)
        self._teardown()
        self.effects.append(ReportError(code=code, message=message))
        self.effects.append(EndAttempt(outcome=f"error:{code.value}"))

    def _cause(self, event: Event, source: str) -> tuple[ErrorCode, str]:
        """The one error code and message of a failure in state ``source``."""
        if isinstance(event, PermissionAnswered):
            code = _PERMISSION_CODES[event.kind]
            return code, _with_detail(code, event.detail)
        if isinstance(event, CaptureFailed):
            code = _CAPTURE_CODES[event.source]
            return code, _with_detail(code, event.message)
        if isinstance(event, ConnectFailed):
            return ErrorCode.CONNECTION_FAILED, _with_detail(
                ErrorCode.CONNECTION_FAILED, event.message
            )
        if isinstance(event, MessageReceived) and isinstance(event.message, ErrorMessage):
            code = event.message.code
            return code, event.message.message or default_message(code)
        if isinstance(event, TransportClosed):
            if event.code is not None:
                return event.code, event.message or default_message(event.code)
            why = f"({close_description(event.close_code)})"
            why = f": {event.message} {why}" if event.message else f" {why}"
            if source == FINALIZING:
                code = ErrorCode.SUMMARY_MISSING
                return code, f"{default_message(code)}: the connection closed first{why}"
            if source == LISTENING:  # it was streaming: lost, not "could not connect"
                code = ErrorCode.CONNECTION_LOST
                return code, f"{default_message(code)}{why}"
            closed = "Connection to the backend closed"
            if event.close_code is not None:
                closed += f" (code {event.close_code})"
            return ErrorCode.CONNECTION_FAILED, (
                f"{closed}: {event.message}" if event.message else closed
            )
        if isinstance(event, TimerFired):
            if source == RECONNECTING:
                code = ErrorCode.RECONNECT_FAILED
                shown = f"{self.config.reconnect_window:g}"
                return code, (
                    f"{default_message(code)}: no resume within {shown} s; "
                    "the finals received are kept"
                )
            if source == FINALIZING:
                code = ErrorCode.SUMMARY_MISSING
                shown = f"{self.config.stop_timeout:g}"
                return code, f"{default_message(code)} within {shown} s of the stop"
            return ErrorCode.BACKEND_START_TIMEOUT, start_timeout_message(self.config.start_timeout)
        raise AssertionError(f"no failure cause for {event!r}")  # pragma: no cover


class SessionMachine:
    """Pure, deterministic client session state machine (see the module docstring).

    ``id_factory`` makes session and attempt ids (default: UUID4); ``jitter`` returns a
    number in [0, 1) for the reconnect backoff (default: 0.5; the shell passes
    ``random.random``). ``state`` is the phase (``idle``, ``starting``, ``listening``,
    ``reconnecting``, ``finalizing``, ``error``), ``step`` the step within ``starting`` and
    ``node`` the table's state name (``starting_capture`` …).
    """

    def __init__(
        self,
        config: SessionConfig,
        *,
        id_factory: Callable[[], str] | None = None,
        jitter: Callable[[], float] | None = None,
    ) -> None:
        self.config = config
        self._model = _Attempt(config, id_factory or uuid_factory, jitter or (lambda: 0.5))
        self._table = TableRunner(
            self._model, TRANSITIONS, states=STATES, initial=IDLE, on_enter="announce"
        )
        self._last_drop: Drop | None = None

    # ------------------------------------------------------------------ queries

    @property
    def node(self) -> str:
        """The table's state name, e.g. ``starting_awaiting_ack``."""
        return self._model.state

    @property
    def state(self) -> str:
        """The phase: ``idle``, ``starting``, ``listening``, ``reconnecting``, ``finalizing``…"""
        return phase_of(self._model.state)

    @property
    def step(self) -> str | None:
        """Within ``starting``: ``permissions``, ``capture``, ``connecting``, ``awaiting_ack``."""
        return step_of(self._model.state)

    @property
    def deadline(self) -> float | None:
        """When the shell must feed ``TimerFired`` next, or ``None``."""
        return None if self._model.timer is None else self._model.timer.deadline

    @property
    def session_id(self) -> str | None:
        return self._model.session_id

    @property
    def attempt_id(self) -> str | None:
        return self._model.attempt_id

    @property
    def connection_id(self) -> str | None:
        return self._model.connection_id

    @property
    def summary(self) -> FinalSummary | None:
        return self._model.summary

    @property
    def resume_token(self) -> str | None:
        """The server's token for resuming this session (from its last acknowledgment)."""
        return self._model.resume_token

    @property
    def timer_name(self) -> str | None:
        """The armed timer: ``start``, ``stop``, ``backoff``, ``try`` (or ``None``)."""
        return None if self._model.timer is None else self._model.timer.name

    @property
    def connection(self) -> int:
        """The attempt's current connection number (0 first; one more per reconnect try)."""
        return self._model.connection

    @property
    def last_drop(self) -> Drop | None:
        """Why the last :meth:`handle` call did nothing, or ``None`` if it was accepted."""
        return self._last_drop

    def accepts(self, trigger: str) -> bool:
        """Whether the table has a row for ``trigger`` from the current state."""
        return self._table.accepts(trigger)

    # ------------------------------------------------------------------ the step

    def handle(self, event: Event, now: float) -> list[Effect]:
        """Feed one event at time ``now``; return the effects to run, in order."""
        model = self._model
        model.effects = []
        trigger = self._trigger_for(event, now)
        if isinstance(trigger, DropReason):
            self._last_drop = Drop(reason=trigger, event=type(event).__name__, node=model.state)
            return []
        if not self.accepts(trigger):
            self._last_drop = Drop(
                reason=DropReason.NO_ROW,
                event=type(event).__name__,
                node=model.state,
                trigger=trigger,
            )
            return []
        self._last_drop = None
        self._table.fire(trigger, event=event, now=now)
        if self.accepts("auto_stop"):
            self._table.fire("auto_stop", event=event, now=now)
        effects, model.effects = model.effects, []
        return effects

    def _is_stale(self, attempt_id: str) -> bool:
        return attempt_id != self._model.attempt_id

    def _trigger_for(self, event: Event, now: float) -> str | DropReason:
        """The table trigger ``event`` stands for, or why it is dropped before the table."""
        model = self._model
        unexpected = DropReason.UNEXPECTED
        match event:
            case StartRequested():
                return "start"
            case StopRequested():
                return "stop"
            case AbortRequested():
                return "abort"
            case TimerFired():
                deadline = self.deadline
                if deadline is None:
                    return DropReason.NO_TIMER
                return "timeout" if now >= deadline else DropReason.EARLY_TIMER
        if self._is_stale(event.attempt_id):
            return DropReason.STALE_ATTEMPT
        if isinstance(
            event, Connected | ConnectFailed | TransportClosed
        ) and event.connection not in (
            None,
            model.connection,
        ):
            return DropReason.STALE_ATTEMPT  # a connection the attempt already left
        match event:
            case PermissionAnswered(kind=kind, granted=granted):
                if not model.asked or model.asked[-1] != kind or kind in model.granted:
                    return unexpected
                return "permission_granted" if granted else "permission_denied"
            case CaptureStarted(source=source):
                pending = model.captures[-1:] == [source] and source not in model.started
                return "capture_started" if pending else unexpected
            case CaptureFailed(source=source):
                return "capture_failed" if source in model.captures else unexpected
            case CaptureEnded(source=source):
                return "capture_ended" if source in model.started else unexpected
            case Connected():
                return "connected"
            case ConnectFailed():
                return "connect_failed"
            case TransportClosed():
                return "transport_closed"
            case MessageReceived(message=message):
                if message.attempt_id is not None and self._is_stale(message.attempt_id):
                    return DropReason.STALE_ATTEMPT
                return _message_trigger(message)
        raise AssertionError(f"unknown event {event!r}")  # pragma: no cover - exhaustive above


def _message_trigger(message: Any) -> str:
    if isinstance(message, StatusMessage):
        if message.state == "connected":
            return "server_connected"
        if message.state == "streaming":
            return "ack"
        return "message"
    if isinstance(message, ErrorMessage):
        # the server closes after every fatal error; invalid_message alone is a dropped message
        if message.code is ErrorCode.INVALID_MESSAGE:
            return "server_warning"
        return "server_error"
    if isinstance(message, FinalSummary):
        return "summary"
    return "message"
