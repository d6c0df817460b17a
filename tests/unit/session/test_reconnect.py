"""The machine's ``reconnecting`` state: which losses enter it, backoff, resume, window, stop.

Includes a property test: over any sequence of losses, failed tries, late and re-sent
messages and stops, every final reaches the app exactly once and in order, or the session
ends with an error that says so.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from echopanel.errors import ErrorCode
from echopanel.protocol.messages import AsrFinal, ErrorMessage, FinalSummary, StatusMessage
from echopanel.session import (
    CloseTransport,
    Connect,
    Connected,
    ConnectFailed,
    EmitMessage,
    EndAttempt,
    EnterListening,
    ReportError,
    SendResume,
    SendStart,
    StopRequested,
    TimerFired,
    TransportClosed,
)
from echopanel.session.machine import CLIENT_FEATURES, SessionMachine


def listening(drive, token="tok-1", **config):
    d = drive(**config)
    d.to_listening(resume_token=token)  # the ACK's token, kept
    return d


def final(n: int) -> AsrFinal:
    return AsrFinal(
        source="system", text=f"final {n}", t0=n, t1=n + 1, confidence=0.9, segment_id=f"f{n}"
    )


def lose(d, close_code=1006, *, at=None, **fields):
    return d.feed(
        TransportClosed(
            attempt_id=d.attempt, close_code=close_code, connection=d.m.connection, **fields
        ),
        at=at,
    )


def test_the_client_announces_resume():
    assert CLIENT_FEATURES["resume"] is True


@pytest.mark.parametrize("close_code", [None, 1001, 1006, 1011, 1012])
def test_an_abnormal_loss_while_listening_reconnects_at_once(drive, close_code):
    d = listening(drive)
    effects = lose(d, close_code, at=10.0)
    assert d.m.state == "reconnecting" and CloseTransport(code=1001) in effects
    assert d.m.deadline == 10.0  # the first try is at once
    (connect,) = [e for e in d.feed(TimerFired(), at=10.0) if isinstance(e, Connect)]
    assert connect.connection == 1 and "session=" in connect.url
    assert d.m.deadline == 10.0 + d.m.config.start_timeout  # connect + ack bound


@pytest.mark.parametrize(
    ("close_code", "code"),
    [(1008, ErrorCode.UNAUTHORIZED), (1000, None), (1007, ErrorCode.INVALID_MESSAGE)],
)
def test_deliberate_or_fatal_closes_end_the_session(drive, close_code, code):
    d = listening(drive)
    lose(d, close_code, code=code)
    assert d.m.state == "error"


def test_no_token_or_no_window_means_no_reconnect(drive):
    d = drive()
    d.to_listening()  # a server without resume: no token
    lose(d)
    assert d.m.state == "error" and d.of(ReportError)[0].code is ErrorCode.CONNECTION_LOST
    off = listening(drive, reconnect_window=0)
    lose(off)
    assert off.m.state == "error"


def test_resume_sends_token_and_last_final_then_listens_again(drive):
    d = listening(drive)
    d.server(final(1))
    d.server(final(2))
    lose(d, at=1.0)
    d.feed(TimerFired(), at=1.0)
    (resume,) = d.feed(Connected(attempt_id=d.attempt, connection=1))
    assert resume == SendResume(
        session_id=d.m.session_id, resume_token="tok-1", last_segment_id="f2"
    )
    emitted = d.server(final(2))  # re-sent by the server: already delivered
    assert emitted == []
    assert d.server(final(3)) == [EmitMessage(message=final(3))]
    effects = d.server(StatusMessage(state="streaming", resumed=True, resume_token="tok-2"))
    assert d.m.state == "listening" and any(isinstance(e, EnterListening) for e in effects)
    assert d.m.resume_token == "tok-2" and d.m.deadline is None


def test_failed_tries_back_off_exponentially_with_injected_jitter(drive):
    d = listening(drive, reconnect_backoff=1.0, reconnect_backoff_max=4.0)
    d.m._model.jitter = lambda: 0.0  # type: ignore[attr-defined]  # the lowest: x0.5
    lose(d, at=0.0)
    waits = []
    now = 0.0
    for _ in range(5):
        d.feed(TimerFired(), at=now)  # try
        d.feed(ConnectFailed(attempt_id=d.attempt, message="refused", connection=d.m.connection))
        assert d.m.deadline is not None
        waits.append(d.m.deadline - now)
        now = d.m.deadline
    assert waits == [0.5, 1.0, 2.0, 2.0, 2.0]


def test_a_try_that_never_answers_is_bounded_by_the_start_timeout(drive):
    d = listening(drive)
    lose(d, at=0.0)
    d.feed(TimerFired(), at=0.0)
    d.feed(Connected(attempt_id=d.attempt, connection=1))
    effects = d.feed(TimerFired(), at=d.m.config.start_timeout)
    assert CloseTransport(code=1001) in effects and d.m.state == "reconnecting"


def test_the_window_passing_ends_with_reconnect_failed(drive):
    d = listening(drive, reconnect_window=5.0)
    lose(d, at=0.0)
    now = 0.0
    for _ in range(50):  # bounded
        if d.m.state != "reconnecting":
            break
        assert d.m.deadline is not None and d.m.deadline <= 5.0
        now = d.m.deadline
        d.feed(TimerFired(), at=now)
        if d.m.state == "reconnecting" and d.m.timer_name == "try":
            d.feed(ConnectFailed(attempt_id=d.attempt, connection=d.m.connection))
    assert d.m.state == "error"
    (error,) = d.of(ReportError)
    assert error.code is ErrorCode.RECONNECT_FAILED and "5 s" in error.message


def test_stop_while_reconnecting_ends_cleanly_with_what_was_received(drive):
    d = listening(drive)
    d.server(final(1))
    lose(d)
    effects = d.feed(StopRequested())
    assert d.m.state == "idle"
    (end,) = [e for e in effects if isinstance(e, EndAttempt)]
    assert end.outcome == "completed" and not d.of(ReportError)


def test_resume_unknown_starts_a_new_server_session_and_marks_the_gap(drive):
    d = listening(drive)
    d.server(final(1))
    lose(d)
    d.feed(TimerFired())
    d.feed(Connected(attempt_id=d.attempt, connection=1))
    effects = d.server(ErrorMessage(code=ErrorCode.RESUME_UNKNOWN, message="unknown"))
    assert d.m.state == "reconnecting" and CloseTransport(code=1001) in effects
    (gap,) = [e.message for e in effects if isinstance(e, EmitMessage)]
    assert isinstance(gap, StatusMessage) and gap.reason == "resume_gap"
    d.feed(TimerFired())
    (start,) = d.feed(Connected(attempt_id=d.attempt, connection=2))
    assert isinstance(start, SendStart)
    assert (start.message.session_id, start.message.attempt_id) == (d.m.session_id, d.attempt)
    d.server(StatusMessage(state="streaming", resume_token="tok-9"))  # a new session's ACK
    assert d.m.state == "listening" and d.m.resume_token == "tok-9"


def test_resume_unknown_twice_in_one_outage_is_an_error(drive):
    d = listening(drive)
    lose(d)
    for connection in (1, 2):
        d.feed(TimerFired())
        d.feed(Connected(attempt_id=d.attempt, connection=connection))
        d.server(ErrorMessage(code=ErrorCode.RESUME_UNKNOWN, message="unknown"))
    assert d.m.state == "error" and d.of(ReportError)[0].code is ErrorCode.RESUME_UNKNOWN


def test_a_busy_server_is_retried(drive):
    d = listening(drive)
    lose(d)
    d.feed(TimerFired())
    d.feed(Connected(attempt_id=d.attempt, connection=1))
    d.server(ErrorMessage(code=ErrorCode.SERVER_AT_CAPACITY, message="busy"))
    assert d.m.state == "reconnecting"


def test_facts_of_a_connection_left_behind_are_dropped(drive):
    d = listening(drive)
    lose(d)
    d.feed(TimerFired())
    assert d.feed(TransportClosed(attempt_id=d.attempt, close_code=1006, connection=0)) == []
    assert d.m.last_drop is not None and d.m.state == "reconnecting"


# --------------------------------------------------------------------------- property

STEPS = st.lists(
    st.sampled_from(
        ["final", "lose", "tick", "connect", "connect_fail", "resend", "ack", "late", "stop"]
    ),
    max_size=60,
)


# ``drive`` is a factory: each example builds a fresh machine
@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(steps=STEPS)
def test_every_final_reaches_the_app_once_in_order_or_the_error_says_so(drive, steps):
    """A fake server produces finals 0, 1, 2…; the network loses connections at will."""
    d = listening(drive, reconnect_window=20.0)
    m: SessionMachine = d.m
    produced: list[AsrFinal] = []  # what the server holds (it keeps every final)
    now = 0.0
    for step in steps:
        if m.state not in ("listening", "reconnecting", "finalizing"):
            break
        if step == "final":
            produced.append(final(len(produced)))
            if m.state in ("listening", "finalizing"):  # else kept by the server for the resume
                d.server(produced[-1])
        elif step == "lose" and m.state in ("listening", "finalizing"):
            lose(d)
        elif step == "tick" and m.deadline is not None:
            now = max(now, m.deadline)
            d.feed(TimerFired(), at=now)
        elif step == "connect" and m.state == "reconnecting":
            d.feed(Connected(attempt_id=d.attempt, connection=m.connection))
        elif step == "connect_fail" and m.state == "reconnecting":
            d.feed(ConnectFailed(attempt_id=d.attempt, connection=m.connection))
        elif step in ("resend", "ack") and d.effects and isinstance(d.effects[-1], SendResume):
            last = d.effects[-1].last_segment_id  # the server re-sends after it, then ACKs
            start = 0 if last is None else int(last[1:]) + 1
            for entry in produced[max(0, start - 1) :]:  # one overlap: a duplicate
                d.server(entry)
            if step == "ack":
                d.server(StatusMessage(state="streaming", resumed=True, resume_token="tok-n"))
        elif step == "late":  # a late copy of a final already delivered (an old connection)
            seen = [e.message for e in d.effects if isinstance(e, EmitMessage)]
            finals = [m for m in seen if isinstance(m, AsrFinal)]
            if finals:
                d.server(finals[-1])
        elif step == "stop":
            d.feed(StopRequested(), at=now)
        now += 0.1
    delivered = [
        e.message.segment_id
        for e in d.effects
        if isinstance(e, EmitMessage) and isinstance(e.message, AsrFinal)
    ]
    assert len(delivered) == len(set(delivered))  # exactly once
    assert delivered == sorted(delivered, key=lambda s: int(s[1:]))  # in order
    expected = [f.segment_id for f in produced]
    assert delivered == expected[: len(delivered)]  # nothing skipped
    if m.state in ("listening", "finalizing"):  # connected: every final has arrived
        assert delivered == expected
    elif delivered != expected:  # missing ones: the session is still reconnecting, was
        assert m.state in ("reconnecting", "idle", "error")  # stopped by the user, or failed
        if m.state == "error":
            assert d.of(ReportError)[-1].code in (
                ErrorCode.RECONNECT_FAILED,
                ErrorCode.CONNECTION_LOST,
            )


def test_a_loss_after_stop_resumes_for_the_summary(drive):
    d = listening(drive)
    d.server(final(1))
    d.feed(StopRequested(), at=1.0)
    lose(d, at=2.0)
    assert d.m.state == "reconnecting"
    d.feed(TimerFired(), at=2.0)
    (resume,) = d.feed(Connected(attempt_id=d.attempt, connection=1))
    assert isinstance(resume, SendResume)
    effects = d.server(StatusMessage(state="streaming", resumed=True, resume_token="t2"))
    assert d.m.state == "finalizing" and d.m.timer_name == "stop"
    assert not any(isinstance(e, EnterListening) for e in effects)  # no audio after stop
    d.server(FinalSummary(transcript=()))
    assert d.m.state == "idle" and not d.of(ReportError)
    (end,) = d.of(EndAttempt)
    assert end.outcome == "completed" and end.summary is not None


def test_resume_unknown_after_stop_ends_with_the_finals_received(drive):
    d = listening(drive)
    d.feed(StopRequested())
    lose(d)
    d.feed(TimerFired())
    d.feed(Connected(attempt_id=d.attempt, connection=1))
    d.server(ErrorMessage(code=ErrorCode.RESUME_UNKNOWN, message="unknown"))
    assert d.m.state == "error" and d.of(ReportError)[0].code is ErrorCode.RESUME_UNKNOWN
