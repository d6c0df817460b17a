"""Every (phase, event) pair of the server core: a defined outcome, never an exception.

Also checks the table: every callback it names exists, every phase is reachable, and an
event with no row is dropped with a reason and no action.
"""

from __future__ import annotations

import pytest

from echopanel.errors import ErrorCode
from echopanel.ports import AsrFinalUpdate, AsrPartialUpdate
from echopanel.protocol import ErrorMessage, encode_audio_frame
from echopanel.server.core import (
    PHASES,
    TRANSITIONS,
    AnalysisDone,
    AnalysisTick,
    AsrDone,
    AsrFailed,
    AsrOutput,
    AsrReady,
    AsrUnavailable,
    AudioQueued,
    BinaryReceived,
    Close,
    DrainRequested,
    Fault,
    LevelChanged,
    MetricsTick,
    Opened,
    PeerGone,
    RecordingFailed,
    ReleaseSlot,
    ResumeAccepted,
    ResumeRefused,
    ResumeRequested,
    Send,
    SlotAcquired,
    SlotRefused,
    SourceLoad,
    StreamFailed,
    StreamOpened,
    TextReceived,
    TimerFired,
)
from echopanel.server.core.machine import _Connection

LOAD = SourceLoad(source="system", backlog_seconds=1.0, dropped_frames=1)
PCM = b"\x01\x00" * 160


def reach(d, phase):
    """Drive a fresh core into ``phase``."""
    if phase == "accepted":
        return
    d.open()
    if phase == "awaiting_start":
        return
    d.start(sources=["system"], client_features={"resume": True})
    if phase == "admitting":
        return
    d.feed(AsrReady(name="fake"))
    d.feed(SlotAcquired())
    d.feed(StreamOpened(source="system"))
    if phase == "finalizing":
        d.stop()
    elif phase == "parked":
        d.feed(PeerGone(code=1006))
    elif phase == "closed":
        d.feed(PeerGone(code=1000))
    assert d.s.phase == phase


EVENTS = [
    Opened(authorized=True),
    Opened(authorized=False),
    TextReceived(text='{"type":"start","session_id":"s9","attempt_id":"a9"}'),
    TextReceived(text='{"type":"start","session_id":"s9","attempt_id":"a9","channels":2}'),
    TextReceived(text='{"type":"stop","session_id":"s1"}'),
    TextReceived(text='{"type":"stop","session_id":"zz"}'),
    TextReceived(text='{"type":"audio","source":"system","data":"AAAA"}'),
    TextReceived(text="not json"),
    TextReceived(text="x" * 200_000),
    BinaryReceived(data=encode_audio_frame("system", PCM)),
    BinaryReceived(data=encode_audio_frame("mic", PCM)),
    BinaryReceived(data=b"EP\x01\x00\x01"),
    BinaryReceived(data=b"\x00" * 70_000),
    PeerGone(),
    PeerGone(code=1000),
    TextReceived(text='{"type":"resume","session_id":"s1","resume_token":"tok"}'),
    ResumeRequested(resume_token="tok", connection_id="c2", new_token="tok2"),
    ResumeRequested(resume_token="bad", connection_id="c2", new_token="tok2"),
    ResumeAccepted(),
    ResumeRefused(),
    AsrReady(name="fake"),
    AsrUnavailable(reason="down"),
    SlotAcquired(),
    SlotRefused(),
    StreamOpened(source="system"),
    StreamOpened(source="mic"),
    StreamFailed(source="system", message="x"),
    AsrOutput(source="system", updates=(AsrPartialUpdate(text="a", t0=0, t1=1),)),
    AsrOutput(
        source="system",
        updates=(AsrFinalUpdate(text="a", t0=0, t1=1, confidence=1, segment_id="q"),),
    ),
    AsrDone(source="system"),
    AsrDone(source="mic"),
    AsrFailed(source="system", message="boom"),
    AudioQueued(load=LOAD, dropped=1, buffering=True),
    LevelChanged(load=LOAD, description="x"),
    MetricsTick(load=LOAD, active_sessions=1),
    AnalysisTick(),
    AnalysisDone(keywords=("k",)),
    RecordingFailed(message="disk"),
    TimerFired(),
    DrainRequested(),
    Fault(),
]


@pytest.mark.parametrize("phase", PHASES)
@pytest.mark.parametrize("index", range(len(EVENTS)))
@pytest.mark.parametrize("late", [False, True])
def test_every_phase_and_event(core, phase, index, late):
    d = core(start_timeout=10.0, flush_timeout=8.0, resume_window=30.0, resume_token="tok")
    reach(d, phase)
    held = d.s._model.slot_held
    deadline = d.s.deadline
    event = EVENTS[index]
    actions = d.feed(event, at=100.0 if late else 1.0)
    assert isinstance(actions, list) and d.s.phase in PHASES
    if d.s.dropped is not None:  # dropped: nothing changed
        assert actions == [] and d.s.phase == phase and d.s.deadline == deadline
        return
    kinds = [type(a) for a in actions]
    if phase == "closed":  # nothing is sent after the close; a late slot goes back
        assert actions == [ReleaseSlot()]
        return
    if d.s.closed:
        # entering closed: error (if any) before the close, then the releases
        closes = [i for i, k in enumerate(kinds) if k is Close]
        assert len(closes) <= 1
        if closes:
            assert all(k is not Send for k in kinds[closes[0] :])
            errors = [
                a.message
                for a in actions
                if isinstance(a, Send) and isinstance(a.message, ErrorMessage)
            ]
            assert all(e.code is not ErrorCode.INVALID_MESSAGE or "more than" in e.message
                       for e in errors)  # fmt: skip
        assert (ReleaseSlot in kinds) == held
        assert d.s.deadline is None
    else:
        assert Close not in kinds
    timed = d.s.phase in ("awaiting_start", "streaming", "finalizing", "parked")
    assert (d.s.deadline is not None) == timed


def test_a_pair_with_no_row_is_dropped_with_a_reason(core):
    d = core()
    assert d.feed(AsrDone(source="system")) == []
    assert d.s.dropped == "no row for 'asr_done' in phase 'accepted'"


def test_table_callbacks_exist_and_name_known_phases():
    for row in TRANSITIONS:
        for name in (*row.conditions, *row.unless, *(a for a in (row.before, row.after) if a)):
            assert callable(getattr(_Connection, name, None)), f"{row.trigger}: {name} missing"
        for phase in row.source + ((row.dest,) if row.dest else ()):
            assert phase in PHASES


def test_every_phase_is_reachable():
    dests = {row.dest for row in TRANSITIONS if row.dest} | {"accepted"}
    assert dests == set(PHASES)
