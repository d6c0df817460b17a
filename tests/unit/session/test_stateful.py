"""Hypothesis stateful test: random events and times against the pure SessionMachine.

An observer replays every effect and checks the invariants of issue 2 after each step:
listening only after the current attempt's ack; leaving for idle/error stops every capture
and closes every transport; exactly one error per failed attempt with the cause's code;
permissions only for needed sources; timed states have deadlines; determinism.
"""

from __future__ import annotations

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from echopanel.errors import ErrorCode
from echopanel.ports import PermissionKind
from echopanel.protocol.messages import (
    AsrFinal,
    ErrorMessage,
    FinalSummary,
    MetricsMessage,
    StatusMessage,
)
from echopanel.session import (
    PERMISSION_FOR,
    AbortRequested,
    CaptureEnded,
    CaptureFailed,
    CaptureStarted,
    CloseTransport,
    Connect,
    Connected,
    ConnectFailed,
    EndAttempt,
    Event,
    MessageReceived,
    PermissionAnswered,
    RejectStart,
    ReportError,
    RequestPermission,
    SessionConfig,
    SessionMachine,
    StartCapture,
    StartRequested,
    StopCapture,
    StopRequested,
    TimerFired,
    TransportClosed,
)
from echopanel.testing.ids import counter_ids

SOURCE_SETS = st.sampled_from([("system",), ("mic",), ("system", "mic"), ("mic", "system")])
SOURCES = st.sampled_from(["system", "mic"])
KINDS = st.sampled_from(list(PermissionKind))
CODES = st.sampled_from(list(ErrorCode))
TIMED = {"starting", "finalizing"}
CAPTURE_CODE = {
    "system": ErrorCode.SYSTEM_CAPTURE_FAILED,
    "mic": ErrorCode.MICROPHONE_CAPTURE_FAILED,
}
PERMISSION_CODE = {
    PermissionKind.SCREEN_RECORDING: ErrorCode.SCREEN_RECORDING_PERMISSION_REQUIRED,
    PermissionKind.MICROPHONE: ErrorCode.MICROPHONE_PERMISSION_REQUIRED,
}


def expected_code(event: Event, state: str) -> ErrorCode:
    """The error code a failing event in ``state`` must produce, computed independently of
    the machine."""
    match event:
        case PermissionAnswered(kind=kind):
            return PERMISSION_CODE[kind]
        case CaptureFailed(source=source):
            return CAPTURE_CODE[source]
        case ConnectFailed():
            return ErrorCode.CONNECTION_FAILED
        case MessageReceived(message=ErrorMessage(code=code)):
            assert code is not ErrorCode.INVALID_MESSAGE, "invalid_message alone is not fatal"
            return code
        case TransportClosed(code=code):
            if code is not None:
                return code
            if state == "finalizing":
                return ErrorCode.SUMMARY_MISSING
            if state == "listening":
                return ErrorCode.CONNECTION_LOST
            return ErrorCode.CONNECTION_FAILED
        case TimerFired():
            if state == "finalizing":
                return ErrorCode.SUMMARY_MISSING
            return ErrorCode.BACKEND_START_TIMEOUT
    raise AssertionError(f"{event!r} cannot fail an attempt")


class SessionMachineTest(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.machine: SessionMachine | None = None
        self.now = 0.0
        self.log: list[tuple[Event, float]] = []
        self.outputs: list[list[object]] = []
        self.old_attempts: list[str] = ["never-was"]

    # ------------------------------------------------------------------ setup

    @precondition(lambda self: self.machine is None)
    @rule(sources=SOURCE_SETS, token=st.none() | st.just("tok"), auto=st.booleans())
    def create(self, sources, token, auto) -> None:
        self.config = SessionConfig(
            url="ws://127.0.0.1:1", sources=sources, token=token, stop_on_capture_end=auto
        )
        self.machine = SessionMachine(self.config, id_factory=counter_ids())
        self.reset_attempt()
        self.ended_attempts: dict[str, str] = {}

    def reset_attempt(self) -> None:
        self.starts: list[str] = []
        self.stops: list[str] = []
        self.connects = 0
        self.closes = 0
        self.errors: list[ReportError] = []
        self.asked: list[PermissionKind] = []
        self.acked = False

    # ------------------------------------------------------------------ step + observer

    def feed(self, event: Event) -> None:
        m = self.machine
        assert m is not None
        before_state, before_attempt = m.state, m.attempt_id
        effects = m.handle(event, self.now)
        self.log.append((event, self.now))
        self.outputs.append(list(effects))
        if m.attempt_id != before_attempt:
            if before_attempt is not None:
                self.old_attempts.append(before_attempt)
            self.reset_attempt()
        for effect in effects:
            match effect:
                case StartCapture(source=s):
                    self.starts.append(s)
                case StopCapture(source=s):
                    self.stops.append(s)
                case Connect():
                    self.connects += 1
                case CloseTransport():
                    self.closes += 1
                case ReportError():
                    self.errors.append(effect)
                case RequestPermission(kind=k):
                    self.asked.append(k)
                case RejectStart():
                    assert before_state not in ("idle", "error")
                    assert effects == [effect], "a rejected start must do nothing else"
        # listening only after the current attempt's streaming ack
        if m.state == "listening" and before_state != "listening":
            assert before_state == "starting" and m.step is None
            assert isinstance(event, MessageReceived)
            assert event.attempt_id == m.attempt_id
            assert isinstance(event.message, StatusMessage) and event.message.state == "streaming"
            assert event.message.attempt_id in (None, m.attempt_id)
            self.acked = True
        if m.state == "listening":
            assert self.acked
        # leaving for idle or error: nothing left running
        if m.state in ("idle", "error") and before_state not in ("idle", "error"):
            assert sorted(self.stops) == sorted(set(self.starts)) == sorted(self.starts)
            assert self.closes == self.connects <= 1
            assert m.deadline is None
            ends = [e for e in effects if isinstance(e, EndAttempt)]
            assert len(ends) == 1 and effects[-1] == ends[0]
            if m.state == "error":
                assert len(self.errors) == 1, self.errors
                assert self.errors[0].code == expected_code(event, before_state)
                assert self.errors[0].message
                assert ends[0].outcome == f"error:{self.errors[0].code.value}"
            else:
                assert self.errors == []
                assert ends[0].outcome in ("completed", "cancelled")
            assert m.attempt_id is not None
            assert m.attempt_id not in self.ended_attempts
            self.ended_attempts[m.attempt_id] = m.state
        if m.state in ("idle", "error") and before_state in ("idle", "error"):
            assert effects == [] or m.attempt_id != before_attempt
        # a stale event never changes anything
        attempt = getattr(event, "attempt_id", None)
        if attempt is not None and attempt != before_attempt:
            assert effects == [] and m.state == before_state

    # ------------------------------------------------------------------ rules

    def attempt(self, stale: bool) -> str:
        assert self.machine is not None
        if stale or self.machine.attempt_id is None:
            return self.old_attempts[-1]
        return self.machine.attempt_id

    @precondition(lambda self: self.machine is not None)
    @rule()
    def start(self) -> None:
        self.feed(StartRequested())

    @precondition(lambda self: self.machine is not None and self.machine.state == "starting")
    @rule(data=st.data(), steps=st.integers(min_value=1, max_value=6))
    def advance(self, data, steps) -> None:
        """Feed the facts the current steps wait for (so random runs get past starting)."""
        for _ in range(steps):
            if self.machine is None or self.machine.state != "starting":
                return
            self.advance_one(data)

    def advance_one(self, data) -> None:
        m = self.machine
        assert m is not None and m.attempt_id is not None
        a = m.attempt_id
        if m.step == "permissions":
            self.feed(PermissionAnswered(attempt_id=a, kind=self.asked[-1], granted=True))
        elif m.step == "capture":
            self.feed(CaptureStarted(attempt_id=a, source=self.starts[-1]))
        elif m.step == "connecting":
            self.feed(Connected(attempt_id=a))
        else:
            tag = data.draw(st.sampled_from([None, a, self.old_attempts[-1]]))
            ack = StatusMessage(state="streaming", attempt_id=tag)
            self.feed(MessageReceived(attempt_id=a, message=ack))

    @precondition(lambda self: self.machine is not None)
    @rule()
    def stop(self) -> None:
        self.feed(StopRequested())

    @precondition(lambda self: self.machine is not None)
    @rule()
    def abort(self) -> None:
        self.feed(AbortRequested())

    @precondition(lambda self: self.machine is not None)
    @rule(granted=st.booleans(), kind=st.none() | KINDS, stale=st.booleans())
    def answer_permission(self, granted, kind, stale) -> None:
        if kind is None:
            kind = self.asked[-1] if self.asked else PermissionKind.MICROPHONE
        self.feed(PermissionAnswered(attempt_id=self.attempt(stale), kind=kind, granted=granted))

    @precondition(lambda self: self.machine is not None)
    @rule(
        source=SOURCES, outcome=st.sampled_from(["started", "failed", "ended"]), stale=st.booleans()
    )
    def capture(self, source, outcome, stale) -> None:
        cls = {"started": CaptureStarted, "failed": CaptureFailed, "ended": CaptureEnded}[outcome]
        self.feed(cls(attempt_id=self.attempt(stale), source=source))

    @precondition(lambda self: self.machine is not None)
    @rule(ok=st.booleans(), stale=st.booleans())
    def connect_result(self, ok, stale) -> None:
        a = self.attempt(stale)
        self.feed(Connected(attempt_id=a) if ok else ConnectFailed(attempt_id=a, message="no"))

    @precondition(lambda self: self.machine is not None)
    @rule(
        message=st.one_of(
            st.sampled_from(["connected", "streaming", "buffering", "warning"]).map(
                lambda s: StatusMessage(state=s, connection_id="c")
            ),
            CODES.map(lambda c: ErrorMessage(code=c, message="")),
            st.just(FinalSummary()),
            st.just(AsrFinal(source="mic", text="x", t0=0, t1=1, confidence=1, segment_id="s")),
            st.just(MetricsMessage(source="system")),
        ),
        stale=st.booleans(),
        tag=st.sampled_from(["none", "current", "old"]),
    )
    def server_message(self, message, stale, tag) -> None:
        assert self.machine is not None
        if tag != "none" and self.machine.attempt_id is not None:
            import attrs

            named = self.machine.attempt_id if tag == "current" else self.old_attempts[-1]
            message = attrs.evolve(message, attempt_id=named)
        self.feed(MessageReceived(attempt_id=self.attempt(stale), message=message))

    @precondition(lambda self: self.machine is not None)
    @rule(
        code=st.none() | CODES,
        close=st.none() | st.sampled_from([1000, 1006, 1013]),
        stale=st.booleans(),
    )
    def transport_closed(self, code, close, stale) -> None:
        self.feed(TransportClosed(attempt_id=self.attempt(stale), close_code=close, code=code))

    @precondition(lambda self: self.machine is not None)
    @rule(dt=st.floats(min_value=0, max_value=12, allow_nan=False) | st.floats(0, 0.5))
    def time_passes(self, dt) -> None:
        self.now += dt
        self.feed(TimerFired())

    @precondition(lambda self: self.machine is not None and self.machine.deadline is not None)
    @rule()
    def fire_at_deadline(self) -> None:
        assert self.machine is not None and self.machine.deadline is not None
        before = self.machine.state
        self.now = max(self.now, self.machine.deadline)
        self.feed(TimerFired())
        assert self.machine.state == "error"
        if before == "starting":
            assert self.errors[-1].code is ErrorCode.BACKEND_START_TIMEOUT
        else:
            assert before == "finalizing"
            assert self.errors[-1].code is ErrorCode.SUMMARY_MISSING

    # ------------------------------------------------------------------ invariants

    @invariant()
    def timed_states_have_deadlines(self) -> None:
        if self.machine is None:
            return
        if self.machine.state in TIMED:
            assert self.machine.deadline is not None
        else:
            assert self.machine.deadline is None

    @invariant()
    def permissions_only_for_needed_sources(self) -> None:
        if self.machine is None:
            return
        needed = {PERMISSION_FOR[s] for s in self.config.sources}
        assert set(self.asked) <= needed
        assert len(self.asked) == len(set(self.asked))

    @invariant()
    def finalizing_has_no_capture_running(self) -> None:
        if self.machine is not None and self.machine.state == "finalizing":
            assert sorted(self.stops) == sorted(self.starts)

    @invariant()
    def captures_started_once(self) -> None:
        if self.machine is not None:
            assert len(self.starts) == len(set(self.starts))
            assert set(self.starts) <= set(self.config.sources)

    def teardown(self) -> None:
        if self.machine is None:
            return
        replay = SessionMachine(self.config, id_factory=counter_ids())
        outputs = [replay.handle(event, now) for event, now in self.log]
        assert outputs == self.outputs
        assert replay.node == self.machine.node


TestSessionMachine = SessionMachineTest.TestCase
TestSessionMachine.settings = settings(
    max_examples=300,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
