"""The server core's protocol rules, one by one, without a WebSocket."""

from __future__ import annotations

import base64

import pytest

from echopanel.errors import ErrorCode
from echopanel.ports import AsrFinalUpdate, AsrPartialUpdate
from echopanel.protocol import (
    MAX_FRAME_BYTES,
    AnalysisUpdate,
    AsrPartial,
    MetricsMessage,
    StatusMessage,
    decode_server,
    encode,
)
from echopanel.server.core import (
    AcquireSlot,
    AnalysisDone,
    AnalysisTick,
    Analyze,
    AsrDone,
    AsrFailed,
    AsrOutput,
    AsrReady,
    AsrUnavailable,
    AudioQueued,
    CancelAsr,
    Close,
    CloseAsrStreams,
    CountDroppedFrames,
    DrainRequested,
    EndAudio,
    Fault,
    FeedAudio,
    FlushRecording,
    LevelChanged,
    LookupSession,
    MetricsTick,
    OpenAsrStream,
    Opened,
    PeerGone,
    RecordingFailed,
    Rejected,
    ReleaseSlot,
    ResumeRefused,
    Send,
    SessionStarted,
    SlotAcquired,
    SlotRefused,
    SourceLoad,
    StreamFailed,
    StreamOpened,
    TimerFired,
    WaitForAsr,
)


def final(text: str, t0: float, segment_id: str = "x") -> AsrFinalUpdate:
    return AsrFinalUpdate(text=text, t0=t0, t1=t0 + 1, confidence=0.9, segment_id=segment_id)


def test_connected_then_start_timeout_is_data(core):
    d = core(start_timeout=10.0)
    (send,) = d.open()
    assert isinstance(send, Send) and send.message == StatusMessage(
        state="connected", message="send start", connection_id="srv-1"
    )
    assert d.s.phase == "awaiting_start" and d.s.deadline == 10.0 and d.s.timer == "start"
    assert d.feed(TimerFired(), at=9.99) == [] and d.s.dropped == "early timer"
    actions = d.feed(TimerFired(), at=10.0)
    assert [type(a) for a in actions] == [Rejected, Send, Close]
    assert d.errors()[0].code is ErrorCode.START_TIMEOUT
    assert "10 seconds" in d.errors()[0].message
    assert d.closes() == [1008] and d.s.closed and d.s.deadline is None


def test_unauthorized_is_error_then_1008_without_connected(core):
    d = core()
    d.feed(Opened(authorized=False))
    assert [type(m) for m in d.sent()] == [type(d.errors()[0])]
    assert d.errors()[0].code is ErrorCode.UNAUTHORIZED and d.closes() == [1008]


def test_start_waits_for_asr_then_slot_then_each_declared_stream(core):
    d = core()
    d.open()
    assert d.start(connection_id="client-conn", sources=["system", "mic"]) == [WaitForAsr()]
    assert d.s.deadline is None and d.s.connection_id == "client-conn"
    assert d.feed(AsrReady(name="fake")) == [AcquireSlot()]
    assert d.feed(SlotAcquired()) == [OpenAsrStream(source="system")]
    assert d.feed(StreamOpened(source="system")) == [OpenAsrStream(source="mic")]
    actions = d.feed(StreamOpened(source="mic"), at=0.25)
    ack, started = actions
    assert isinstance(ack, Send) and ack.message.state == "streaming"  # type: ignore[union-attr]
    assert ack.message.message == "streaming (fake)"  # type: ignore[union-attr]
    assert (ack.message.session_id, ack.message.attempt_id) == ("s1", "a1")
    assert isinstance(started, SessionStarted) and started.ack_seconds == 0.25
    assert started.sources == ("system", "mic")


@pytest.mark.parametrize(
    ("event", "code", "close"),
    [
        (AsrUnavailable(reason="model missing"), ErrorCode.ASR_UNAVAILABLE, 1011),
        (SlotRefused(), ErrorCode.SERVER_AT_CAPACITY, 1013),
    ],
)
def test_admission_failures_carry_the_session_ids(core, event, code, close):
    d = core()
    d.open()
    d.start()
    if isinstance(event, SlotRefused):
        d.feed(AsrReady(name="fake"))
    d.feed(event)
    (error,) = d.errors()
    assert error.code is code and error.session_id == "s1" and d.closes() == [close]
    assert not d.of(ReleaseSlot)  # nothing was held


def test_stream_failure_releases_the_slot_and_closes_the_streams(core):
    d = core()
    d.open()
    d.start(sources=["mic"])
    d.feed(AsrReady(name="fake"))
    d.feed(SlotAcquired())
    d.feed(StreamFailed(source="mic", message="no model"))
    assert d.errors()[0].message == "no model" and d.closes() == [1011]
    assert d.actions[-2:] == [CloseAsrStreams(), ReleaseSlot()]


@pytest.mark.parametrize(
    ("text", "code", "close"),
    [
        (
            '{"type":"start","session_id":"s","attempt_id":"a","sample_rate":8000}',
            "unsupported_audio_format",
            1003,
        ),
        ('{"type":"start","session_id":"","attempt_id":"a"}', "invalid_message", 1007),
        ("x" * (2 * MAX_FRAME_BYTES + 1), "frame_too_large", 1009),
    ],
)  # fmt: skip
def test_fatal_frames_before_start(core, text, code, close):
    d = core()
    d.open()
    d.text(text)
    assert d.errors()[0].code == code and d.closes() == [close]


def test_invalid_frames_before_start_are_dropped_and_budgeted(core):
    d = core(max_invalid_messages=3)
    d.open()
    d.audio()
    d.stop()
    d.text("{")
    d.text({"type": "audio", "source": "system", "data": "AAAA"})
    messages = [e.message for e in d.errors()]
    assert messages[:3] == ["audio before start", "stop before start", messages[2]]
    assert "more than 3 invalid messages" in messages[3] and d.closes() == [1008]


def test_binary_too_large_is_fatal_in_both_phases(core):
    d = core()
    d.open()
    d.binary(b"\x00" * (MAX_FRAME_BYTES + 1))
    assert d.closes() == [1009]
    d = core()
    d.to_streaming()
    d.binary(b"EP\x01\x00" + b"\x00" * MAX_FRAME_BYTES)
    assert d.errors()[-1].code is ErrorCode.FRAME_TOO_LARGE and d.closes() == [1009]
    assert d.actions[-2:] == [CloseAsrStreams(), ReleaseSlot()]


@pytest.mark.parametrize(
    ("frame", "message"),
    [
        ({"type": "start", "session_id": "s2", "attempt_id": "a2"}, "session already started"),
        ({"type": "stop", "session_id": "other"}, "stop for another session_id"),
        (b"EP\x01\x01\x00\x00", "not declared in start"),
        (b"EP\x01\x00\x01", "even"),
    ],
)
def test_invalid_frames_while_streaming_keep_the_session(core, frame, message):
    d = core()
    d.to_streaming()
    d.binary(frame) if isinstance(frame, bytes) else d.text(frame)
    (error,) = d.errors()
    assert error.code is ErrorCode.INVALID_MESSAGE and message in error.message
    assert error.session_id == "s1" and d.s.phase == "streaming" and not d.closes()
    assert d.s.counts["invalid_messages"] == 1


def test_audio_is_fed_v02_headerless_and_base64_and_empty_frames_count(core):
    d = core()
    d.to_streaming(sources=None)  # any source may send; streams open on first audio
    assert d.binary(b"\x00\x00" * 10) == [OpenAsrStream(source="system")]
    assert d.feed(StreamOpened(source="system")) == [
        FeedAudio(source="system", pcm=b"\x00\x00" * 10)
    ]
    pcm = b"\x02\x00" * 4
    d.text({"type": "audio", "source": "microphone", "data": base64.b64encode(pcm).decode()})
    d.feed(StreamOpened(source="mic"))
    assert d.of(FeedAudio)[-1] == FeedAudio(source="mic", pcm=pcm)
    assert d.binary(b"EP\x01\x00") == [] and d.s.counts["frames"] == 3


def test_updates_become_partials_and_finals_with_unique_ids(core):
    d = core()
    d.to_streaming()
    d.feed(AsrOutput(source="system", updates=(AsrPartialUpdate(text="hel", t0=0, t1=0.5),)))
    d.feed(AsrOutput(source="system", updates=(final("hello", 0.0, "abc"),)))
    d.feed(AsrOutput(source="system", updates=(final("hello", 1.0, "abc"),)))  # same id
    d.feed(
        AsrOutput(
            source="system",
            updates=(AsrPartialUpdate(text="x", t0=0, t1=1), final("x", 2.0, "system-q")),
            partials=False,
        )
    )
    assert [p.text for p in d.sent(AsrPartial)] == ["hel"]
    assert [f.segment_id for f in d.finals()] == ["system-abc", "system-abc-1", "system-q"]
    assert d.s.counts["finals"] == 3 and d.s.counts["partials"] == 1


def test_finals_past_max_finals_are_sent_but_not_kept(core):
    d = core(max_finals=2)
    d.to_streaming()
    for i in range(4):
        d.feed(AsrOutput(source="system", updates=(final(f"w{i}", float(i), "same"),)))
    ids = [f.segment_id for f in d.finals()]
    assert len(set(ids)) == 4 and len(d.s.finals) == 2 and len(d.s.segment_ids) == 2
    d.feed(AnalysisTick())
    (analyze,) = d.of(Analyze)
    assert [e.text for e in analyze.recent][-1] == "w3"  # the analysis follows the newest


def test_stop_flushes_then_summary_then_close_1000(core):
    d = core(flush_timeout=8.0)
    d.to_streaming(sources=("system", "mic"))
    d.audio()
    d.feed(AsrOutput(source="mic", updates=(final("b", 2.0, "m"),)))
    d.feed(AsrOutput(source="system", updates=(final("a", 1.0, "s"),)))
    assert d.stop(session_id="s1") == [EndAudio()]
    assert d.s.phase == "finalizing" and d.s.deadline == 8.0
    assert d.audio() == [] and d.stop() == [] and d.s.dropped == "frame in phase 'finalizing'"
    d.feed(AsrDone(source="system"))
    assert d.s.phase == "finalizing"
    d.feed(AsrFailed(source="mic", message="late"))
    assert d.s.closed and d.closes() == [1000]
    tail = [type(a) for a in d.actions[-6:]]
    assert tail == [Send, FlushRecording, Send, Close, CloseAsrStreams, ReleaseSlot]
    assert d.sent(StatusMessage)[-1].message == "ASR error: late"
    summary = d.summary()
    assert [e.text for e in summary.transcript] == ["a", "b"]  # sorted by t0
    assert summary.sources["system"].audio_seconds == pytest.approx(0.1)
    assert summary.counts["finals"] == 2 and summary.counts["frames"] == 1
    assert "**[00:01] system:** a" in summary.markdown


def test_flush_timeout_cancels_asr_and_still_summarizes(core):
    d = core(flush_timeout=3.0)
    d.to_streaming()
    d.audio()
    d.stop()
    d.feed(TimerFired(), at=3.0)
    assert d.of(CancelAsr) and "did not finish within 3 s" in d.sent(StatusMessage)[-1].message
    assert d.summary() and d.closes() == [1000]
    assert (
        d.feed(AsrDone(source="system")) == []
        and d.feed(AsrOutput(source="system", updates=(final("late", 9.0),))) == []
    )


def test_stop_without_any_stream_summarizes_at_once(core):
    d = core()
    d.to_streaming(sources=None)
    d.stop()
    assert d.s.closed and d.summary().transcript == () and d.closes() == [1000]


def test_asr_failure_while_streaming_is_asr_unavailable_1011(core):
    d = core()
    d.to_streaming()
    d.feed(AsrFailed(source="system", message="boom"))
    assert d.errors()[0].message == "Speech recognition failed on system: boom"
    assert d.closes() == [1011]


def test_load_reports_buffering_backpressure_levels_and_metrics(core):
    d = core(backpressure_interval=2.0)
    d.to_streaming()
    busy = SourceLoad(source="system", backlog_seconds=1.2, dropped_frames=0)
    d.feed(AudioQueued(load=busy, buffering=True), at=1.0)
    d.feed(AudioQueued(load=busy, buffering=True), at=2.0)  # rate-limited
    d.feed(AudioQueued(load=busy, buffering=True), at=3.0)
    assert [m.state for m in d.sent(StatusMessage)][-2:] == ["buffering", "buffering"]
    dropped = SourceLoad(source="system", backlog_seconds=2.0, dropped_frames=3)
    d.feed(AudioQueued(load=dropped, dropped=3, buffering=True), at=3.5)
    assert d.of(CountDroppedFrames) == [CountDroppedFrames(source="system", frames=3)]
    d.feed(MetricsTick(load=dropped, active_sessions=2), at=4.0)
    backpressure, metrics = d.sent()[-2:]
    assert isinstance(backpressure, StatusMessage) and backpressure.state == "backpressure"
    assert isinstance(metrics, MetricsMessage) and metrics.active_sessions == 2
    d.feed(MetricsTick(load=dropped, active_sessions=2), at=5.0)  # nothing new dropped
    assert isinstance(d.sent()[-1], MetricsMessage) and len(d.of(CountDroppedFrames)) == 1
    shed = SourceLoad(source="system", dropped_frames=5, degrade_level=3)
    d.feed(LevelChanged(load=shed, description="shed"))
    assert d.sent(StatusMessage)[-1].state == "overloaded"
    assert d.of(CountDroppedFrames)[-1].frames == 2


def test_analysis_only_on_new_finals_and_recording_failure_is_a_warning(core):
    d = core()
    d.to_streaming()
    assert d.feed(AnalysisTick()) == []
    d.feed(AsrOutput(source="system", updates=(final("alpha", 0.0),)))
    assert len(d.feed(AnalysisTick())) == 1 and d.feed(AnalysisTick()) == []
    d.feed(AnalysisDone(keywords=("alpha",)))
    assert d.sent(AnalysisUpdate)[0].keywords == ("alpha",)
    d.feed(RecordingFailed(message="disk full"))
    assert "disk full" in d.sent(StatusMessage)[-1].message and not d.s.closed


def test_peer_gone_releases_without_sending(core):
    d = core()
    d.to_streaming()
    sent = len(d.sent())
    assert d.feed(PeerGone()) == [CloseAsrStreams(), ReleaseSlot()]
    assert len(d.sent()) == sent and d.s.closed
    assert d.feed(PeerGone()) == [] and "closed" in (d.s.dropped or "")


def test_fault_closes_1011_and_a_late_slot_goes_back(core):
    d = core()
    d.open()
    d.start()
    d.feed(AsrReady(name="fake"))
    d.feed(Fault())
    assert d.closes() == [1011]
    assert d.feed(SlotAcquired()) == [ReleaseSlot()]


# --------------------------------------------------------------------------- hardening (#10)


def test_idle_audio_timeout_is_rearmed_by_audio_and_closes_4408(core):
    d = core(idle_timeout=60.0)
    d.to_streaming()
    assert d.s.timer == "idle" and d.s.deadline == 60.0
    d.feed(TimerFired(), at=30.0)  # early: nothing
    d.audio()
    assert d.s.deadline == 90.0
    d.binary(b"EP\x01\x00")  # an empty frame is no audio
    d.text("garbage")  # nor is an invalid message
    assert d.s.deadline == 90.0
    d.feed(TimerFired(), at=90.0)
    (_, error) = d.errors()
    assert error.code is ErrorCode.IDLE_TIMEOUT and "60 seconds" in error.message
    assert error.session_id == "s1" and d.closes() == [4408]
    assert d.actions[-2:] == [CloseAsrStreams(), ReleaseSlot()]


def test_idle_timeout_zero_never_fires(core):
    d = core(idle_timeout=0)
    d.to_streaming()
    assert d.s.deadline is None


def test_audio_beyond_twice_real_time_is_dropped_counted_and_reported(core):
    d = core(max_audio_rate=2.0, audio_burst=10.0, backpressure_interval=2.0)
    d.to_streaming()
    for _ in range(100):  # 10 s at once: the burst
        d.audio()
    assert len(d.of(FeedAudio)) == 100 and not d.of(CountDroppedFrames)
    d.audio()
    d.audio()
    assert len(d.of(FeedAudio)) == 100
    assert d.of(CountDroppedFrames) == [CountDroppedFrames(source="system", frames=1)] * 2
    warnings = [m for m in d.sent(StatusMessage) if m.state == "warning"]
    assert len(warnings) == 1 and "faster than 2x real time" in warnings[0].message
    d.now = 1.0  # one second later: two seconds of audio fit again
    for _ in range(25):
        d.audio()
    assert len(d.of(FeedAudio)) == 120
    d.feed(MetricsTick(load=SourceLoad(source="system", dropped_frames=1), active_sessions=1))
    assert d.sent(MetricsMessage)[-1].dropped_frames == 1 + 7
    d.stop()
    d.feed(AsrDone(source="system"))
    summary = d.summary()
    assert summary.sources["system"].frames_dropped == 8
    assert summary.sources["system"].audio_seconds == pytest.approx(12.0)


def test_rate_bound_zero_is_unbounded(core):
    d = core(max_audio_rate=0)
    d.to_streaming()
    for _ in range(300):
        d.audio()
    assert len(d.of(FeedAudio)) == 300


def test_fault_is_internal_error_then_1011_without_details(core):
    d = core()
    d.to_streaming()
    d.feed(Fault())
    (error,) = d.errors()
    assert error.code is ErrorCode.INTERNAL_ERROR and error.session_id == "s1"
    assert error.message == "The server hit an internal error and ended the session"
    assert d.closes() == [1011] and d.of(Rejected)[0].code is ErrorCode.INTERNAL_ERROR


def test_drain_flushes_summarizes_and_closes_1001(core):
    d = core(flush_timeout=8.0)
    d.to_streaming()
    d.audio()
    d.feed(AsrOutput(source="system", updates=(final("kept", 0.0),)))
    actions = d.feed(DrainRequested(), at=5.0)
    status = actions[0]
    assert isinstance(status, Send) and status.message.reason == "drain"  # type: ignore[union-attr]
    assert "shutting down" in status.message.message  # type: ignore[union-attr]
    assert actions[1:] == [EndAudio()] and d.s.phase == "finalizing" and d.s.deadline == 13.0
    assert d.feed(DrainRequested()) == []  # already finishing
    d.feed(AsrOutput(source="system", updates=(final("flushed", 1.0),)))
    d.feed(AsrDone(source="system"))
    assert [e.text for e in d.summary().transcript] == ["kept", "flushed"]
    assert d.closes() == [1001] and d.actions[-1] == ReleaseSlot()


@pytest.mark.parametrize("phase", ["accepted", "awaiting_start", "admitting"])
def test_drain_without_a_session_says_why_and_closes_1001(core, phase):
    d = core()
    if phase != "accepted":
        d.open()
    if phase == "admitting":
        d.start()
    d.feed(DrainRequested())
    last = d.sent()[-1]
    assert isinstance(last, StatusMessage) and last.reason == "drain"
    assert d.closes() == [1001] and d.s.closed


def test_summary_is_bounded_leaving_out_the_oldest(core):
    d = core(max_summary_bytes=8192)
    d.to_streaming()
    for i in range(200):
        text = f'word "{i}" ünïcode\\ ' * 5
        d.feed(AsrOutput(source="system", updates=(final(text, float(i), f"id{i}"),)))
    d.stop()
    d.feed(AsrDone(source="system"))
    summary = d.summary()
    wire = encode(summary).encode()
    assert 6000 < len(wire) <= 8192
    assert summary.truncated is True
    assert summary.omitted_finals == 200 - len(summary.transcript) > 0
    assert summary.transcript[-1].t0 == 199.0  # the newest are kept
    assert summary.markdown.count("\n- ") == len(summary.transcript)
    assert decode_server(wire) == summary


def test_small_summary_has_no_truncation_fields(core):
    d = core()
    d.to_streaming()
    d.feed(AsrOutput(source="system", updates=(final("a", 0.0),)))
    d.stop()
    d.feed(AsrDone(source="system"))
    assert "truncated" not in encode(d.summary()) and d.summary().omitted_finals is None


def test_max_finals_keeps_the_newest_and_the_summary_says_so(core):
    d = core(max_finals=3)
    d.to_streaming()
    for i in range(5):
        d.feed(AsrOutput(source="system", updates=(final(f"w{i}", float(i), f"s{i}"),)))
    assert [e.text for e in d.s.finals] == ["w2", "w3", "w4"] and len(d.s.segment_ids) == 3
    d.stop()
    d.feed(AsrDone(source="system"))
    summary = d.summary()
    assert summary.omitted_finals == 2 and summary.truncated is True


def test_resume_without_a_parked_session_is_resume_unknown_4404(core):
    d = core()
    d.open()
    (lookup,) = d.text({"type": "resume", "session_id": "s1", "resume_token": "guess"})
    assert isinstance(lookup, LookupSession) and lookup.message.session_id == "s1"
    assert d.s.deadline is None  # the start timeout no longer applies
    d.feed(ResumeRefused())
    (error,) = d.errors()
    assert error.code is ErrorCode.RESUME_UNKNOWN and d.closes() == [4404]
    assert d.s.closed and not d.of(AcquireSlot)


def test_resume_on_a_started_connection_is_invalid_and_ignored(core):
    d = core()
    d.to_streaming()
    d.text({"type": "resume", "session_id": "s1", "resume_token": "t"})
    (error,) = d.errors()
    assert error.code is ErrorCode.INVALID_MESSAGE and not d.closes()
    assert d.s.phase == "streaming"
