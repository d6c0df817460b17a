"""Scenario tests of the pure SessionMachine: the seed's happy path and every failure."""

from __future__ import annotations

import pytest

from echopanel.errors import ErrorCode
from echopanel.ports import PermissionKind
from echopanel.protocol.messages import (
    AsrPartial,
    ErrorMessage,
    FinalSummary,
    StatusMessage,
    StopMessage,
)
from echopanel.session import (
    AbortRequested,
    AnnounceState,
    CaptureEnded,
    CaptureFailed,
    CaptureStarted,
    CloseTransport,
    Connect,
    Connected,
    ConnectFailed,
    CreateBundle,
    Drop,
    DropReason,
    EmitMessage,
    EndAttempt,
    EnterListening,
    MessageReceived,
    PermissionAnswered,
    RejectStart,
    ReportError,
    RequestPermission,
    SendStart,
    SendStop,
    SessionConfig,
    StartCapture,
    StartRequested,
    StopCapture,
    StopRequested,
    TimerFired,
    TransportClosed,
    normalize_url,
)

SCREEN = PermissionKind.SCREEN_RECORDING
MIC = PermissionKind.MICROPHONE


def test_happy_path_effects_in_order(drive):
    d = drive(("system", "mic"), token="s3cret")
    out = d.feed(StartRequested())
    assert out == [
        CreateBundle(
            session_id="id-1", attempt_id="id-2", sources=("system", "mic"), started_at=0.0
        ),
        AnnounceState(state="starting", previous="idle", step="permissions"),
        RequestPermission(kind=SCREEN),
    ]
    assert d.m.deadline == 5.0
    assert d.feed(PermissionAnswered(attempt_id="id-2", kind=SCREEN, granted=True)) == [
        RequestPermission(kind=MIC)
    ]
    out = d.feed(PermissionAnswered(attempt_id="id-2", kind=MIC, granted=True))
    assert out[-1] == StartCapture(source="system") and d.m.step == "capture"
    assert d.feed(CaptureStarted(attempt_id="id-2", source="system")) == [
        StartCapture(source="mic")
    ]
    out = d.feed(CaptureStarted(attempt_id="id-2", source="mic"))
    assert out[-1] == Connect(
        url="ws://127.0.0.1:8765/ws/live-listener?session=id-1",
        headers={"Authorization": "Bearer s3cret", "x-echopanel-token": "s3cret"},
    )
    out = d.feed(Connected(attempt_id="id-2"))
    (send,) = [e for e in out if isinstance(e, SendStart)]
    assert send.message.session_id == "id-1" and send.message.attempt_id == "id-2"
    assert send.message.sources == ("system", "mic")
    assert d.m.step == "awaiting_ack"
    assert d.server(StatusMessage(state="connected", connection_id="conn-9")) == []
    assert d.m.last_drop is None  # accepted, though it has no effect
    assert d.m.connection_id == "conn-9" and d.m.state == "starting"
    out = d.feed(
        MessageReceived(attempt_id="id-2", message=StatusMessage(state="streaming")), at=1.5
    )
    assert out == [
        AnnounceState(state="listening", previous="starting"),
        EnterListening(session_id="id-1", attempt_id="id-2", connection_id="conn-9", at=1.5),
    ]
    assert d.m.deadline is None


def test_no_token_no_auth_headers(drive):
    d = drive()
    d.to_listening()
    (connect,) = d.of(Connect)
    assert connect.headers == {}


@pytest.mark.parametrize(
    ("sources", "kinds"),
    [(("system",), [SCREEN]), (("mic",), [MIC]), (("system", "mic"), [SCREEN, MIC])],
)
def test_permissions_only_for_needed_sources(drive, sources, kinds):
    d = drive(sources)
    d.to_listening()
    assert [e.kind for e in d.of(RequestPermission)] == kinds


@pytest.mark.parametrize(
    ("sources", "denied", "code", "text"),
    [
        (("system",), SCREEN, ErrorCode.SCREEN_RECORDING_PERMISSION_REQUIRED, "Screen Recording"),
        (("mic",), MIC, ErrorCode.MICROPHONE_PERMISSION_REQUIRED, "Microphone permission"),
        (("system", "mic"), MIC, ErrorCode.MICROPHONE_PERMISSION_REQUIRED, "Microphone"),
    ],
)
def test_permission_denied(drive, sources, denied, code, text):
    d = drive(sources)
    d.feed(StartRequested())
    if denied is MIC and "system" in sources:
        d.feed(PermissionAnswered(attempt_id=d.attempt, kind=SCREEN, granted=True))
    out = d.feed(PermissionAnswered(attempt_id=d.attempt, kind=denied, granted=False, detail="x"))
    assert d.m.state == "error"
    (report,) = [e for e in out if isinstance(e, ReportError)]
    assert report.code == code and text in report.message and report.message.endswith(": x")
    assert not d.of(StartCapture) and not d.of(Connect)
    assert out[-1] == EndAttempt(outcome=f"error:{code.value}")
    assert d.m.deadline is None


def test_capture_failure_with_both_stops_the_started_one(drive):
    d = drive(("system", "mic"))
    d.feed(StartRequested())
    d.feed(PermissionAnswered(attempt_id=d.attempt, kind=SCREEN, granted=True))
    d.feed(PermissionAnswered(attempt_id=d.attempt, kind=MIC, granted=True))
    d.feed(CaptureStarted(attempt_id=d.attempt, source="system"))
    out = d.feed(CaptureFailed(attempt_id=d.attempt, source="mic", message="no device"))
    assert [e for e in out if isinstance(e, StopCapture)] == [
        StopCapture(source="mic"),
        StopCapture(source="system"),
    ]
    (report,) = [e for e in out if isinstance(e, ReportError)]
    assert report.code is ErrorCode.MICROPHONE_CAPTURE_FAILED
    assert report.message == "Microphone capture failed: no device"
    assert not any(isinstance(e, CloseTransport) for e in out)


def test_system_capture_failure(drive):
    d = drive(("system",))
    d.feed(StartRequested())
    d.feed(PermissionAnswered(attempt_id=d.attempt, kind=SCREEN, granted=True))
    out = d.feed(CaptureFailed(attempt_id=d.attempt, source="system"))
    assert (
        ReportError(code=ErrorCode.SYSTEM_CAPTURE_FAILED, message="System audio capture failed")
        in out
    )


def _to_connecting(d):
    d.feed(StartRequested())
    for kind in d.m.config.permissions:
        d.feed(PermissionAnswered(attempt_id=d.attempt, kind=kind, granted=True))
    for source in d.m.config.sources:
        d.feed(CaptureStarted(attempt_id=d.attempt, source=source))
    assert d.m.step == "connecting"


def test_connection_failure_closes_and_stops(drive):
    d = drive()
    _to_connecting(d)
    out = d.feed(ConnectFailed(attempt_id=d.attempt, message="refused"))
    assert out[1:] == [
        StopCapture(source="system"),
        CloseTransport(),
        ReportError(
            code=ErrorCode.CONNECTION_FAILED, message="Could not connect to the backend: refused"
        ),
        EndAttempt(outcome="error:connection_failed"),
    ]


@pytest.mark.parametrize("code", [c for c in ErrorCode if c is not ErrorCode.INVALID_MESSAGE])
def test_backend_error_any_code(drive, code):
    d = drive()
    _to_connecting(d)
    d.feed(Connected(attempt_id=d.attempt))
    out = d.server(ErrorMessage(code=code, message=""))
    assert d.m.state == "error"
    reports = [e for e in out if isinstance(e, ReportError)]
    assert len(reports) == 1 and reports[0].code == code and reports[0].message
    assert StopCapture(source="system") in out and CloseTransport() in out


def test_backend_error_message_is_kept(drive):
    d = drive()
    _to_connecting(d)
    d.feed(Connected(attempt_id=d.attempt))
    out = d.server(ErrorMessage(code=ErrorCode.SERVER_AT_CAPACITY, message="Server at capacity"))
    assert ReportError(code=ErrorCode.SERVER_AT_CAPACITY, message="Server at capacity") in out


@pytest.mark.parametrize("phase", ["awaiting_ack", "listening"])
@pytest.mark.parametrize(
    ("close", "expected"),
    [
        (TransportClosed(attempt_id="", close_code=1006), ErrorCode.CONNECTION_FAILED),
        (
            TransportClosed(attempt_id="", close_code=1013, code=ErrorCode.SERVER_AT_CAPACITY),
            ErrorCode.SERVER_AT_CAPACITY,
        ),
    ],
)
def test_transport_closed(drive, phase, close, expected):
    d = drive()
    if phase == "listening":
        d.to_listening()
    else:
        _to_connecting(d)
        d.feed(Connected(attempt_id=d.attempt))
    out = d.feed(
        TransportClosed(attempt_id=d.attempt, close_code=close.close_code, code=close.code)
    )
    assert d.m.state == "error"
    (report,) = [e for e in out if isinstance(e, ReportError)]
    if phase == "listening" and expected is ErrorCode.CONNECTION_FAILED:
        expected = ErrorCode.CONNECTION_LOST  # it was streaming: lost, not a failed connect
    assert report.code == expected
    assert StopCapture(source="system") in out and CloseTransport() in out


@pytest.mark.parametrize("step", ["permissions", "capture", "connecting", "awaiting_ack"])
def test_start_timeout_in_every_step(drive, step):
    d = drive(("system", "mic"))
    d.feed(StartRequested())
    a = d.attempt
    steps = {
        "capture": [PermissionAnswered(attempt_id=a, kind=k, granted=True) for k in (SCREEN, MIC)],
    }
    steps["connecting"] = [
        *steps["capture"],
        *(CaptureStarted(attempt_id=a, source=s) for s in ("system", "mic")),
    ]
    steps["awaiting_ack"] = [*steps["connecting"], Connected(attempt_id=a)]
    for event in steps.get(step, []):
        d.feed(event)
    assert d.m.step == step and d.m.deadline == 5.0
    assert d.feed(TimerFired(), at=4.999) == []
    assert d.m.last_drop is not None and d.m.last_drop.reason is DropReason.EARLY_TIMER
    out = d.feed(TimerFired(), at=5.0)
    (report,) = [e for e in out if isinstance(e, ReportError)]
    assert report.code is ErrorCode.BACKEND_START_TIMEOUT
    assert report.message == "Backend did not start streaming within 5 seconds"
    assert d.m.state == "error" and d.m.deadline is None
    assert len(d.of(StopCapture)) == len(d.of(StartCapture))
    assert len(d.of(CloseTransport)) == len(d.of(Connect))


def test_start_timeout_message_follows_config(drive):
    d = drive(start_timeout=0.25)
    d.feed(StartRequested())
    out = d.feed(TimerFired(), at=1.0)
    assert (
        ReportError(
            code=ErrorCode.BACKEND_START_TIMEOUT,
            message="Backend did not start streaming within 0.25 seconds",
        )
        in out
    )


@pytest.mark.parametrize("step", ["permissions", "capture", "connecting", "awaiting_ack"])
def test_stop_while_starting_is_clean_cancel(drive, step):
    d = drive()
    d.feed(StartRequested())
    if step != "permissions":
        d.feed(PermissionAnswered(attempt_id=d.attempt, kind=SCREEN, granted=True))
    if step in ("connecting", "awaiting_ack"):
        d.feed(CaptureStarted(attempt_id=d.attempt, source="system"))
    if step == "awaiting_ack":
        d.feed(Connected(attempt_id=d.attempt))
    out = d.feed(StopRequested())
    assert d.m.state == "idle" and not any(isinstance(e, ReportError) for e in out)
    assert out[-1] == EndAttempt(outcome="cancelled")
    assert len(d.of(StopCapture)) == len(d.of(StartCapture))
    assert len(d.of(CloseTransport)) == len(d.of(Connect))
    assert d.m.deadline is None


def test_second_start_rejected_while_active(drive):
    d = drive()
    d.feed(StartRequested())
    before = (d.m.session_id, d.m.attempt_id, d.m.node)
    out = d.feed(StartRequested())
    assert len(out) == 1 and isinstance(out[0], RejectStart) and out[0].state == "starting"
    assert (d.m.session_id, d.m.attempt_id, d.m.node) == before
    d2 = drive()
    d2.to_listening()
    n = len(d2.effects)
    assert [type(e) for e in d2.feed(StartRequested())] == [RejectStart]
    assert len(d2.effects) == n + 1


def test_older_attempt_is_ignored(drive):
    d = drive()
    d.feed(StartRequested())
    old = d.attempt
    d.feed(PermissionAnswered(attempt_id=old, kind=SCREEN, granted=False))
    assert d.m.state == "error"
    d.feed(StartRequested())
    assert d.attempt != old and d.m.session_id == "id-1"  # retry keeps the session
    for stale in (
        PermissionAnswered(attempt_id=old, kind=SCREEN, granted=False),
        CaptureFailed(attempt_id=old, source="system"),
        TransportClosed(attempt_id=old),
        MessageReceived(attempt_id=old, message=StatusMessage(state="streaming")),
    ):
        assert d.feed(stale) == []
        assert d.m.last_drop is not None
        assert d.m.last_drop.reason is DropReason.STALE_ATTEMPT
    assert d.m.step == "permissions"
    d.feed(PermissionAnswered(attempt_id=d.attempt, kind=SCREEN, granted=True))
    d.feed(CaptureStarted(attempt_id=d.attempt, source="system"))
    d.feed(Connected(attempt_id=d.attempt))
    # a message on the current transport that names an older attempt is ignored too
    assert d.server(StatusMessage(state="streaming", attempt_id=old)) == []
    assert d.m.last_drop is not None and d.m.last_drop.reason is DropReason.STALE_ATTEMPT
    assert d.m.state == "starting"
    d.server(StatusMessage(state="streaming", attempt_id=d.attempt))
    assert d.m.state == "listening"


def test_new_session_after_idle_gets_new_ids(drive):
    d = drive()
    d.to_listening()
    d.feed(AbortRequested())
    first = d.m.session_id
    d.feed(StartRequested())
    assert d.m.session_id != first


def test_stop_from_listening_finalizes_then_idle(drive):
    d = drive(("system", "mic"))
    d.to_listening()
    out = d.feed(StopRequested(), at=10.0)
    assert out == [
        AnnounceState(state="finalizing", previous="listening"),
        StopCapture(source="mic"),
        StopCapture(source="system"),
        SendStop(message=StopMessage(session_id="id-1")),
    ]
    assert d.m.deadline == 20.0
    assert d.feed(StopRequested()) == []  # a second stop is dropped: no row in finalizing
    assert d.m.last_drop == Drop(
        reason=DropReason.NO_ROW, event="StopRequested", node="finalizing", trigger="stop"
    )
    partial = AsrPartial(source="mic", text="hi", t0=0, t1=1)
    assert d.server(partial) == [EmitMessage(message=partial)]
    summary = FinalSummary(markdown="# hi")
    out = d.server(summary)
    assert out == [
        AnnounceState(state="idle", previous="finalizing"),
        CloseTransport(),
        EndAttempt(outcome="completed", summary=summary),
    ]
    assert d.m.summary == summary


def test_stop_timeout_goes_idle_without_summary(drive):
    d = drive()
    d.to_listening()
    d.feed(StopRequested(), at=1.0)
    assert d.m.deadline == 11.0
    out = d.feed(TimerFired(), at=11.0)
    # a missing summary is not a success: its own code, in the error state
    assert d.m.state == "error" and out[-1] == EndAttempt(outcome="error:summary_missing")
    assert ReportError(
        code=ErrorCode.SUMMARY_MISSING,
        message="No final summary from the backend within 10 s of the stop",
    ) in out  # fmt: skip
    assert CloseTransport() in out


@pytest.mark.parametrize(
    ("close_code", "message", "text"),
    [
        (1006, "", "the connection closed first (close 1006, dropped without a close frame)"),
        (1000, "", "the connection closed first (close 1000, normal closure)"),
        (1009, "message from server too large", "first: message from server too large (close 1009"),
    ],
)
def test_connection_closed_while_finalizing_is_summary_missing(drive, close_code, message, text):
    d = drive()
    d.to_listening()
    d.feed(StopRequested())
    out = d.feed(TransportClosed(attempt_id=d.attempt, close_code=close_code, message=message))
    (report,) = [e for e in out if isinstance(e, ReportError)]
    assert report.code is ErrorCode.SUMMARY_MISSING and text in report.message
    assert d.m.state == "error" and out[-1] == EndAttempt(outcome="error:summary_missing")


@pytest.mark.parametrize(
    ("close_code", "message", "expected"),
    [
        (1012, "", "Connection to the backend lost (close 1012, server restarting)"),
        (1006, "", "Connection to the backend lost (close 1006, dropped without a close frame)"),
        (
            1006,
            "keep-alive ping timed out",
            "Connection to the backend lost: keep-alive ping timed out "
            "(close 1006, dropped without a close frame)",
        ),
    ],
)
def test_connection_lost_while_listening_is_not_a_failed_connect(
    drive, close_code, message, expected
):
    d = drive()
    d.to_listening()
    out = d.feed(TransportClosed(attempt_id=d.attempt, close_code=close_code, message=message))
    (report,) = [e for e in out if isinstance(e, ReportError)]
    assert report == ReportError(code=ErrorCode.CONNECTION_LOST, message=expected)
    assert "Could not connect" not in report.message


def test_connection_closed_before_the_ack_is_still_connection_failed(drive):
    d = drive()
    _to_connecting(d)
    d.feed(Connected(attempt_id=d.attempt))
    out = d.feed(TransportClosed(attempt_id=d.attempt, close_code=1006))
    (report,) = [e for e in out if isinstance(e, ReportError)]
    assert report.code is ErrorCode.CONNECTION_FAILED


def test_auto_stop_when_every_capture_ended(drive):
    d = drive(("system", "mic"))
    d.to_listening()
    assert d.feed(CaptureEnded(attempt_id=d.attempt, source="system")) == []
    out = d.feed(CaptureEnded(attempt_id=d.attempt, source="mic"))
    assert d.m.state == "finalizing" and any(isinstance(e, SendStop) for e in out)


def test_capture_ended_before_ack_stops_right_after_listening(drive):
    d = drive()
    _to_connecting(d)
    d.feed(CaptureEnded(attempt_id=d.attempt, source="system"))
    d.feed(Connected(attempt_id=d.attempt))
    out = d.server(StatusMessage(state="streaming"))
    kinds = [type(e) for e in out]
    assert kinds.index(EnterListening) < kinds.index(SendStop)
    assert d.m.state == "finalizing"


def test_no_auto_stop_when_disabled(drive):
    d = drive(stop_on_capture_end=False)
    d.to_listening()
    d.feed(CaptureEnded(attempt_id=d.attempt, source="system"))
    assert d.m.state == "listening"


def test_capture_dies_while_listening(drive):
    d = drive()
    d.to_listening()
    out = d.feed(CaptureFailed(attempt_id=d.attempt, source="system", message="unplugged"))
    assert d.m.state == "error"
    assert (
        ReportError(
            code=ErrorCode.SYSTEM_CAPTURE_FAILED, message="System audio capture failed: unplugged"
        )
        in out
    )


def test_abort_from_finalizing(drive):
    d = drive()
    d.to_listening()
    d.feed(StopRequested())
    out = d.feed(AbortRequested())
    assert d.m.state == "idle" and out[-1] == EndAttempt(outcome="cancelled")
    assert d.m.deadline is None


def test_url_normalization():
    assert normalize_url("ws://h:1") == "ws://h:1/ws/live-listener"
    assert normalize_url("ws://h:1/") == "ws://h:1/ws/live-listener"
    assert normalize_url("wss://h/custom/path") == "wss://h/custom/path"
    assert normalize_url("http://h:1") == "ws://h:1/ws/live-listener"
    with pytest.raises(ValueError):
        normalize_url("ftp://h")
    with pytest.raises(ValueError):
        normalize_url("localhost:8000")


def test_config_validation():
    with pytest.raises(ValueError):
        SessionConfig(url="ws://h", sources=())
    with pytest.raises(ValueError):
        SessionConfig(url="ws://h", sources=("system", "system"))
    with pytest.raises(ValueError):
        SessionConfig(url="ws://h", sources=("speaker",))
    with pytest.raises(ValueError):
        SessionConfig(url="ws://h", sources=("mic",), start_timeout=0)
    assert SessionConfig(url="ws://h", sources=("microphone",)).sources == ("mic",)
    assert "s3cret" not in repr(SessionConfig(url="ws://h", sources=("mic",), token="s3cret"))


def test_invalid_message_error_is_only_a_warning(drive):
    d = drive()
    d.to_listening()
    warning = ErrorMessage(code=ErrorCode.INVALID_MESSAGE, message="odd PCM")
    assert d.server(warning) == [EmitMessage(message=warning)]
    assert d.m.state == "listening"
    out = d.feed(
        TransportClosed(attempt_id=d.attempt, close_code=1007, code=ErrorCode.INVALID_MESSAGE)
    )
    assert ReportError(code=ErrorCode.INVALID_MESSAGE, message="Invalid message") in out


def test_every_drop_names_its_reason(drive):
    d = drive(("system", "mic"))
    assert d.feed(TimerFired(), at=1.0) == []
    assert d.m.last_drop == Drop(reason=DropReason.NO_TIMER, event="TimerFired", node="idle")
    assert d.feed(StopRequested()) == []
    assert d.m.last_drop is not None and d.m.last_drop.reason is DropReason.NO_ROW
    assert str(d.m.last_drop) == "StopRequested (stop) dropped in idle: no_row"
    d.feed(StartRequested())
    assert d.m.last_drop is None
    # a permission nobody asked for yet (the microphone comes after screen recording)
    assert d.feed(PermissionAnswered(attempt_id=d.attempt, kind=MIC, granted=True)) == []
    assert d.m.last_drop is not None and d.m.last_drop.reason is DropReason.UNEXPECTED
    # a capture that was never asked to start
    assert d.feed(CaptureStarted(attempt_id=d.attempt, source="mic")) == []
    assert d.m.last_drop is not None and d.m.last_drop.reason is DropReason.UNEXPECTED
    d.feed(PermissionAnswered(attempt_id=d.attempt, kind=SCREEN, granted=True))
    assert d.m.last_drop is None
    # a message before connecting has no row in the permissions step
    assert d.server(StatusMessage(state="streaming")) == []
    assert d.m.last_drop == Drop(
        reason=DropReason.NO_ROW, event="MessageReceived", node="starting_permissions",
        trigger="ack",
    )  # fmt: skip


def test_a_summary_while_listening_completes_the_session(drive):
    """A server that drains sends ``final_summary`` without a ``stop``: the session is
    complete, with that summary, and everything is torn down."""
    d = drive(("system", "mic"))
    d.to_listening()
    summary = FinalSummary(markdown="# drained")
    out = d.server(summary)
    assert out == [
        AnnounceState(state="idle", previous="listening"),
        StopCapture(source="mic"),
        StopCapture(source="system"),
        CloseTransport(),
        EndAttempt(outcome="completed", summary=summary),
    ]
    assert d.m.summary == summary and d.m.deadline is None
