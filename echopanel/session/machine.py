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
trigger name (``_trigger_for``); facts from another attempt, and (state, trigger) pairs
with no row, are ignored: :meth:`handle` returns ``[]``. It never raises for any event in
any state; a start while a session is active yields ``RejectStart`` and changes nothing.

Every exit to ``idle`` or ``error`` emits, in order: ``StopCapture`` for every capture
asked to start (most recent first), ``CloseTransport`` if a connection was asked for,
``CancelTimer`` for the armed deadline, then ``ReportError`` (failures only) and
``EndAttempt``.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import attrs
from transitions import EventData, Machine

from echopanel.errors import ErrorCode, default_message
from echopanel.ports import PermissionKind
from echopanel.protocol.messages import (
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
    CancelTimer,
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
    SendStart,
    SendStop,
    StartCapture,
    StartTimer,
    StopCapture,
    TimerName,
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
    IDLE,
    STATES,
    TRANSITIONS,
    phase_of,
    step_of,
)

__all__ = ["CLIENT_FEATURES", "SessionMachine", "start_timeout_message", "uuid_factory"]

#: ``client_features`` sent in every ``start``.
CLIENT_FEATURES: dict[str, Any] = {"binary_audio": True}

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


def _with_detail(code: ErrorCode, detail: str) -> str:
    base = default_message(code)
    return f"{base}: {detail}" if detail else base


@attrs.define(eq=False)
class _Timer:
    name: TimerName
    deadline: float


class _Attempt:
    """The model ``transitions`` drives: per-attempt facts, conditions and effect makers.

    Callback names in the table resolve to methods here. ``state`` is set by transitions.
    """

    state: str

    def __init__(self, config: SessionConfig, id_factory: Callable[[], str]) -> None:
        self.config = config
        self.id_factory = id_factory
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
        elif isinstance(event, MessageReceived) and event.message.connection_id is not None:
            self.connection_id = event.message.connection_id

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

    def should_auto_stop(self, ed: EventData) -> bool:
        return self.config.stop_on_capture_end and all(
            source in self.ended for source in self.config.sources
        )

    # ------------------------------------------------------------------ effect makers

    def _arm(self, name: TimerName, seconds: float, now: float) -> None:
        self.timer = _Timer(name, now + seconds)
        self.effects.append(StartTimer(name=name, deadline=self.timer.deadline))

    def _disarm(self) -> None:
        if self.timer is not None:
            self.effects.append(CancelTimer(name=self.timer.name))
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
        self.effects.append(EmitMessage(message=event.message))

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
        code, message = self._cause(ed.kwargs["event"])
        self._teardown()
        self.effects.append(ReportError(code=code, message=message))
        self.effects.append(EndAttempt(outcome=f"error:{code.value}"))

    def _cause(self, event: Event) -> tuple[ErrorCode, str]:
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
            closed = "Connection to the backend closed"
            if event.close_code is not None:
                closed += f" (code {event.close_code})"
            return ErrorCode.CONNECTION_FAILED, (
                f"{closed}: {event.message}" if event.message else closed
            )
        if isinstance(event, TimerFired):
            return ErrorCode.BACKEND_START_TIMEOUT, start_timeout_message(self.config.start_timeout)
        raise AssertionError(f"no failure cause for {event!r}")  # pragma: no cover


class SessionMachine:
    """Pure, deterministic client session state machine (see the module docstring).

    ``id_factory`` makes session and attempt ids (default: UUID4). ``state`` is the phase
    (``idle``, ``starting``, ``listening``, ``finalizing``, ``error``), ``step`` the step
    within ``starting`` and ``node`` the table's state name (``starting_capture`` …).
    """

    def __init__(
        self, config: SessionConfig, *, id_factory: Callable[[], str] | None = None
    ) -> None:
        self.config = config
        self._model = _Attempt(config, id_factory or uuid_factory)
        self._machine = Machine(
            model=self._model,
            states=[{"name": name, "on_enter": "announce"} for name in STATES],
            transitions=[row.as_config() for row in TRANSITIONS],
            initial=IDLE,
            auto_transitions=False,
            send_event=True,
            prepare_event="record",
        )
        self.ignored = 0
        self._triggers = {state: set(self._machine.get_triggers(state)) for state in STATES}

    # ------------------------------------------------------------------ queries

    @property
    def node(self) -> str:
        """The table's state name, e.g. ``starting_awaiting_ack``."""
        return self._model.state

    @property
    def state(self) -> str:
        """The phase: ``idle``, ``starting``, ``listening``, ``finalizing`` or ``error``."""
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

    def accepts(self, trigger: str) -> bool:
        """Whether the table has a row for ``trigger`` from the current state."""
        return trigger in self._triggers[self._model.state]

    # ------------------------------------------------------------------ the step

    def handle(self, event: Event, now: float) -> list[Effect]:
        """Feed one event at time ``now``; return the effects to run, in order."""
        model = self._model
        model.effects = []
        trigger = self._trigger_for(event, now)
        if trigger is None or not self.accepts(trigger):
            self.ignored += 1
            return []
        self._machine.events[trigger].trigger(model, event=event, now=now)
        if self.accepts("auto_stop"):
            self._machine.events["auto_stop"].trigger(model, event=event, now=now)
        effects, model.effects = model.effects, []
        return effects

    def _is_stale(self, attempt_id: str) -> bool:
        return attempt_id != self._model.attempt_id

    def _trigger_for(self, event: Event, now: float) -> str | None:
        model = self._model
        match event:
            case StartRequested():
                return "start"
            case StopRequested():
                return "stop"
            case AbortRequested():
                return "abort"
            case TimerFired():
                deadline = self.deadline
                return "timeout" if deadline is not None and now >= deadline else None
        if self._is_stale(event.attempt_id):
            return None
        match event:
            case PermissionAnswered(kind=kind, granted=granted):
                if not model.asked or model.asked[-1] != kind or kind in model.granted:
                    return None
                return "permission_granted" if granted else "permission_denied"
            case CaptureStarted(source=source):
                pending = model.captures[-1:] == [source] and source not in model.started
                return "capture_started" if pending else None
            case CaptureFailed(source=source):
                return "capture_failed" if source in model.captures else None
            case CaptureEnded(source=source):
                return "capture_ended" if source in model.started else None
            case Connected():
                return "connected"
            case ConnectFailed():
                return "connect_failed"
            case TransportClosed():
                return "transport_closed"
            case MessageReceived(message=message):
                if message.attempt_id is not None and self._is_stale(message.attempt_id):
                    return None
                return _message_trigger(message)
        return None  # pragma: no cover - exhaustive above


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
