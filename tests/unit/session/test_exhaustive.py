"""Every (state, event kind) pair: a defined outcome, never an exception from inside.

Also checks the table itself: every callback it names exists, every state is reachable,
and an event the table has no row for is ignored without any effect.
"""

from __future__ import annotations

import pytest

from echopanel.errors import ErrorCode
from echopanel.ports import PermissionKind
from echopanel.protocol.messages import (
    AnalysisUpdate,
    AsrFinal,
    AsrPartial,
    ErrorMessage,
    FinalSummary,
    MetricsMessage,
    StatusMessage,
)
from echopanel.session import (
    STATES,
    TRANSITIONS,
    AbortRequested,
    CaptureEnded,
    CaptureFailed,
    CaptureStarted,
    Connected,
    ConnectFailed,
    DropReason,
    MessageReceived,
    PermissionAnswered,
    StartRequested,
    StopRequested,
    TimerFired,
    TransportClosed,
)
from echopanel.session.machine import _Attempt

SCREEN, MIC = PermissionKind.SCREEN_RECORDING, PermissionKind.MICROPHONE


def reach(d, node):
    """Drive a fresh machine into table state ``node``."""
    if node == "idle":
        return
    d.feed(StartRequested())
    a = d.attempt
    if node == "error":
        d.feed(PermissionAnswered(attempt_id=a, kind=SCREEN, granted=False))
    elif node in ("listening", "finalizing", "reconnecting"):
        d.feed(PermissionAnswered(attempt_id=a, kind=SCREEN, granted=True))
        d.feed(PermissionAnswered(attempt_id=a, kind=MIC, granted=True))
        d.feed(CaptureStarted(attempt_id=a, source="system"))
        d.feed(CaptureStarted(attempt_id=a, source="mic"))
        d.feed(Connected(attempt_id=a))
        d.server(StatusMessage(state="streaming", resume_token="tok"))
        if node == "finalizing":
            d.feed(StopRequested())
        elif node == "reconnecting":
            d.feed(TransportClosed(attempt_id=a, close_code=1006))
    else:
        facts = [
            PermissionAnswered(attempt_id=a, kind=SCREEN, granted=True),
            PermissionAnswered(attempt_id=a, kind=MIC, granted=True),
            CaptureStarted(attempt_id=a, source="system"),
            CaptureStarted(attempt_id=a, source="mic"),
            Connected(attempt_id=a),
        ]
        stop_after = {"starting_permissions": 0, "starting_capture": 2, "starting_connecting": 4}
        for fact in facts[: stop_after.get(node, 5)]:
            d.feed(fact)
    assert d.m.node == node


def events_for(attempt):
    stale = "stale-attempt"
    out = [StartRequested(), StopRequested(), AbortRequested(), TimerFired()]
    for a in (attempt, stale):
        out += [
            PermissionAnswered(attempt_id=a, kind=SCREEN, granted=True),
            PermissionAnswered(attempt_id=a, kind=MIC, granted=False),
            CaptureStarted(attempt_id=a, source="system"),
            CaptureStarted(attempt_id=a, source="mic"),
            CaptureFailed(attempt_id=a, source="mic", message="boom"),
            CaptureEnded(attempt_id=a, source="system"),
            Connected(attempt_id=a),
            ConnectFailed(attempt_id=a, message="refused"),
            TransportClosed(attempt_id=a, close_code=1006),
            TransportClosed(attempt_id=a, close_code=1008, code=ErrorCode.UNAUTHORIZED),
        ]
        for message in (
            StatusMessage(state="connected", connection_id="c"),
            StatusMessage(state="streaming"),
            StatusMessage(state="streaming", attempt_id=stale),
            StatusMessage(state="overloaded"),
            AsrPartial(source="mic", text="a", t0=0, t1=1),
            AsrFinal(source="mic", text="a", t0=0, t1=1, confidence=1, segment_id="s"),
            MetricsMessage(source="mic"),
            AnalysisUpdate(),
            ErrorMessage(code=ErrorCode.ASR_UNAVAILABLE, message="down"),
            FinalSummary(),
        ):
            out.append(MessageReceived(attempt_id=a, message=message))
    return out


EVENT_COUNT = len(events_for("x"))


@pytest.mark.parametrize("node", STATES)
@pytest.mark.parametrize("index", range(EVENT_COUNT))
@pytest.mark.parametrize("late", [False, True])
def test_every_state_and_event(drive, node, index, late):
    d = drive(("system", "mic"))
    reach(d, node)
    event = events_for(d.m.attempt_id or "none")[index]
    before = d.m.node
    now = 100.0 if late else 0.0
    deadline = d.m.deadline
    effects = d.m.handle(event, now)
    assert isinstance(effects, list)
    assert d.m.node in STATES
    drop = d.m.last_drop
    if drop is not None:  # dropped: nothing changed, and the reason names this input
        assert effects == [] and d.m.node == before and d.m.deadline == deadline
        assert drop.event == type(event).__name__ and drop.node == before
        if getattr(event, "attempt_id", None) == "stale-attempt":
            assert drop.reason is DropReason.STALE_ATTEMPT
        return
    if d.m.node == before and not effects:
        return  # accepted without effect (server_connected, capture_ended): defined
    if getattr(event, "attempt_id", d.m.attempt_id) == "stale-attempt":
        pytest.fail(f"stale {event!r} changed something in {before}")
    # a timed state keeps a deadline, an untimed one has none
    timed = d.m.state in ("starting", "finalizing", "reconnecting")
    assert (d.m.deadline is not None) == timed


def test_table_callbacks_exist():
    for row in TRANSITIONS:
        for name in (*row.conditions, *row.unless, *(a for a in (row.before, row.after) if a)):
            assert callable(getattr(_Attempt, name, None)), f"{row.trigger}: {name} missing"
        for state in row.source + ((row.dest,) if row.dest else ()):
            assert state in STATES


def test_every_state_is_a_destination():
    dests = {row.dest for row in TRANSITIONS if row.dest} | {"idle"}
    assert dests == set(STATES)
