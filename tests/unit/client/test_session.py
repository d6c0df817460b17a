"""The anyio shell against the fakes: happy path, every failure, cleanup, audio, logs."""

from __future__ import annotations

import itertools
import logging

import anyio
import anyio.lowlevel
import pytest

from echopanel.client import (
    ErrorEvent,
    FinalEvent,
    PartialEvent,
    Session,
    SessionConfig,
    SessionStateError,
    StateChanged,
    StatusEvent,
    SummaryEvent,
)
from echopanel.errors import ErrorCode, SessionError
from echopanel.ports import PermissionKind
from echopanel.protocol.messages import (
    AsrFinal,
    AsrPartial,
    ErrorMessage,
    StartMessage,
    StatusMessage,
    StopMessage,
)
from echopanel.session import DropReason, SessionMachine, StopRequested
from echopanel.testing import (
    FakeCaptureFactory,
    FakePermissionGate,
    FakeTransportFactory,
    counter_ids,
    tone_frames,
)

URL = "ws://127.0.0.1:9"


async def eventually(predicate, limit=1.0):
    """Wait (bounded) until ``predicate()`` holds."""
    with anyio.fail_after(limit):
        for _ in itertools.count():
            if predicate():
                return
            await anyio.sleep(0.005)


class Rig:
    """A session wired to fakes, with every event kept."""

    def __init__(
        self,
        sources=("system",),
        *,
        captures=None,
        transports=None,
        gate=None,
        recorder=None,
        **config,
    ):
        config.setdefault("start_timeout", 1.0)
        config.setdefault("stop_timeout", 1.0)
        self.config = SessionConfig(url=URL, sources=sources, **config)
        self.captures = captures or FakeCaptureFactory(frames=tone_frames(3))
        self.transports = transports or FakeTransportFactory()
        self.gate = gate or FakePermissionGate()
        self.events = []
        self.session = Session(
            self.config,
            transport_factory=self.transports,
            capture_factory=self.captures,
            permission_gate=self.gate,
            on_event=self.events.append,
            id_factory=counter_ids(),
            recorder=recorder,
        )

    def of(self, kind):
        return [e for e in self.events if isinstance(e, kind)]

    def assert_released(self):
        assert all(c.stopped for c in self.captures.made), "a capture was left running"
        assert all(t.closed for t in self.transports.made), "a transport was left open"
        attempt = self.session._attempt
        if attempt is not None:
            tasks = [*attempt.others, *attempt.capture_tasks.values()]
            if attempt.transport_task is not None:
                tasks.append(attempt.transport_task)
            assert all(t.done.is_set() for t in tasks), "a task was left running"


async def test_full_session_start_listen_stop(caplog):
    caplog.set_level(logging.INFO, logger="echopanel.session")
    rig = Rig(("system", "mic"), token="tok")
    async with rig.session as s:
        await s.start()
        assert s.state == "listening"
        assert (s.session_id, s.attempt_id, s.connection_id) == ("id-1", "id-2", "conn-fake")
        t = rig.transports.last
        assert t.url == URL + "/ws/live-listener?session=id-1"  # the routing key
        assert t.headers == {"Authorization": "Bearer tok", "x-echopanel-token": "tok"}
        (start,) = t.sent_of(StartMessage)
        assert (start.session_id, start.attempt_id, start.sources) == (
            "id-1",
            "id-2",
            ("system", "mic"),
        )
        t.push(AsrPartial(source="mic", text="hel", t0=0, t1=0.5, attempt_id="id-2"))
        t.push(AsrFinal(source="mic", text="hello", t0=0, t1=1, confidence=0.9, segment_id="a"))
        await eventually(lambda: bool(rig.of(FinalEvent)))
        summary = await s.stop()
        assert s.state == "idle"
        assert summary is not None and summary.markdown == "(fake summary)"
        assert t.sent_of(StopMessage) == [StopMessage(session_id="id-1")]
        assert t.audio("system") == b"".join(tone_frames(3))
        assert t.audio("mic") == b"".join(tone_frames(3))
        rig.assert_released()
    assert rig.gate.requests == [PermissionKind.SCREEN_RECORDING, PermissionKind.MICROPHONE]
    states = [(e.state, e.step) for e in rig.of(StateChanged)]
    assert states == [
        ("starting", "permissions"),
        ("starting", "capture"),
        ("starting", "connecting"),
        ("starting", "awaiting_ack"),
        ("listening", None),
        ("finalizing", None),
        ("idle", None),
    ]
    assert [type(e) for e in rig.events if isinstance(e, PartialEvent | FinalEvent)] == [
        PartialEvent,
        FinalEvent,
    ]
    assert rig.of(SummaryEvent)[0].summary == summary
    assert not rig.of(ErrorEvent)
    records = {r.getMessage(): r for r in caplog.records if r.name == "echopanel.session"}
    for line in ("Session starting", "WebSocket connecting", "Session started"):
        assert line in records, line
    started = records["Session started"]
    assert (started.session_id, started.attempt_id, started.connection_id) == (
        "id-1",
        "id-2",
        "conn-fake",
    )
    assert records["Session starting"].connection_id is None


async def test_events_iterator_yields_everything_and_ends():
    rig = Rig()
    async with rig.session as s:
        await s.start()
        await s.stop()
        seen = [e async for e in s.events()]
    assert seen == rig.events and isinstance(seen[-1], StateChanged | SummaryEvent)


@pytest.mark.parametrize(
    ("sources", "denied", "code"),
    [
        (
            ("system",),
            PermissionKind.SCREEN_RECORDING,
            ErrorCode.SCREEN_RECORDING_PERMISSION_REQUIRED,
        ),
        (("mic",), PermissionKind.MICROPHONE, ErrorCode.MICROPHONE_PERMISSION_REQUIRED),
        (("system", "mic"), PermissionKind.MICROPHONE, ErrorCode.MICROPHONE_PERMISSION_REQUIRED),
    ],
)
async def test_permission_denied(sources, denied, code):
    rig = Rig(sources, gate=FakePermissionGate({denied: False}))
    async with rig.session as s:
        with pytest.raises(SessionError) as info:
            await s.start()
        assert info.value.code == code and s.state == "error"
        assert rig.captures.made == [] and rig.transports.made == []
    assert [e.code for e in rig.of(ErrorEvent)] == [code]


async def test_capture_failure_with_both_stops_the_started_one():
    captures = FakeCaptureFactory(
        {"mic": {"fail_on_start": "no microphone"}}, frames=tone_frames(2)
    )
    rig = Rig(("system", "mic"), captures=captures)
    async with rig.session as s:
        with pytest.raises(SessionError) as info:
            await s.start()
        assert info.value.code is ErrorCode.MICROPHONE_CAPTURE_FAILED
        assert "no microphone" in info.value.message
        (system,) = captures.of("system")
        assert system.started and system.stopped
        assert rig.transports.made == []
        rig.assert_released()


async def test_connection_failure():
    rig = Rig(transports=FakeTransportFactory(fail_connect="refused"))
    async with rig.session as s:
        with pytest.raises(SessionError) as info:
            await s.start()
        assert info.value.code is ErrorCode.CONNECTION_FAILED
        assert info.value.message == "Could not connect to the backend: refused"
        rig.assert_released()


@pytest.mark.parametrize(
    "code",
    [ErrorCode.SERVER_AT_CAPACITY, ErrorCode.UNSUPPORTED_AUDIO_FORMAT, ErrorCode.UNAUTHORIZED],
)
async def test_backend_rejects_start(code):
    rig = Rig(transports=FakeTransportFactory(on_start=code))
    async with rig.session as s:
        with pytest.raises(SessionError) as info:
            await s.start()
        assert info.value.code is code
        assert s.state == "error"
        rig.assert_released()
    assert len(rig.of(ErrorEvent)) == 1


async def test_start_timeout():
    rig = Rig(
        ("system", "mic"), transports=FakeTransportFactory(on_start="silent"), start_timeout=0.1
    )
    async with rig.session as s:
        with anyio.fail_after(2):
            with pytest.raises(SessionError) as info:
                await s.start()
        assert info.value.code is ErrorCode.BACKEND_START_TIMEOUT
        assert info.value.message == "Backend did not start streaming within 0.1 seconds"
        rig.assert_released()


async def test_start_timeout_while_permission_dialog_hangs():
    gate = FakePermissionGate(hang={PermissionKind.SCREEN_RECORDING})
    rig = Rig(gate=gate, start_timeout=0.05)
    async with rig.session as s:
        with pytest.raises(SessionError) as info:
            await s.start()
        assert info.value.code is ErrorCode.BACKEND_START_TIMEOUT
        rig.assert_released()


async def test_start_timeout_while_capture_start_hangs():
    rig = Rig(captures=FakeCaptureFactory(hang_on_start=True), start_timeout=0.05)
    async with rig.session as s:
        with pytest.raises(SessionError):
            await s.start()
        rig.assert_released()


async def test_transport_closed_while_listening():
    rig = Rig()
    async with rig.session as s:
        await s.start()
        rig.transports.last.server_close(1006)
        with anyio.fail_after(1), pytest.raises(SessionError) as info:
            await s.wait_closed()
        # it was streaming: the connection was lost, it did not fail to connect
        assert info.value.code is ErrorCode.CONNECTION_LOST
        assert info.value.message == (
            "Connection to the backend lost (close 1006, dropped without a close frame)"
        )
        assert s.state == "error"
        rig.assert_released()


async def test_stop_while_starting_is_a_clean_cancel():
    rig = Rig(transports=FakeTransportFactory(on_start="silent"))
    async with rig.session as s:
        async with anyio.create_task_group() as tg:
            tg.start_soon(s.start)
            await eventually(lambda: s.step == "awaiting_ack")
            assert await s.stop() is None
        assert s.state == "idle"
        rig.assert_released()
    assert not rig.of(ErrorEvent)


async def test_second_start_is_rejected_and_starts_nothing():
    rig = Rig()
    async with rig.session as s:
        await s.start()
        with pytest.raises(SessionStateError):
            await s.start()
        assert len(rig.transports.made) == 1 and len(rig.captures.made) == 1
        assert s.state == "listening"
        await s.stop()


async def test_retry_after_error_is_a_new_attempt_and_old_ids_are_ignored():
    transports = FakeTransportFactory(
        [{"on_start": ErrorCode.SERVER_AT_CAPACITY}, {"on_start": "silent"}]
    )
    rig = Rig(transports=transports)
    async with rig.session as s:
        with pytest.raises(SessionError):
            await s.start()
        first = s.attempt_id
        async with anyio.create_task_group() as tg:
            tg.start_soon(s.start)
            await eventually(lambda: s.step == "awaiting_ack")
            assert s.attempt_id != first and s.session_id == "id-1"
            t = transports.last
            t.push(StatusMessage(state="streaming", attempt_id=first))
            await anyio.sleep(0.05)
            assert s.state == "starting"
            t.push(StatusMessage(state="streaming", attempt_id=s.attempt_id))
        assert s.state == "listening"
        await s.stop()
        rig.assert_released()


async def test_audio_before_ack_is_buffered_then_sent_in_order():
    frames = [bytes([i, 0]) * 160 for i in range(20)]
    captures = FakeCaptureFactory(frames=frames)
    rig = Rig(captures=captures, transports=FakeTransportFactory(ack_delay=0.05))
    async with rig.session as s:
        await s.start()
        await eventually(lambda: len(rig.transports.last.frames) >= 20)
        t = rig.transports.last
        first_audio = next(i for i, m in enumerate(t.sent) if isinstance(m, bytes))
        assert first_audio > t.sent.index(next(m for m in t.sent if '"start"' in str(m)))
        assert [f.pcm for f in t.frames] == frames
        await s.stop()
    assert s.dropped_frames == 0


async def test_large_and_odd_frames_are_split_and_realigned():
    big = b"\x01\x02" * 40_000  # 80 000 bytes > 64 KiB
    captures = FakeCaptureFactory(frames=[big, b"\x03", b"\x04\x05\x06"])
    rig = Rig(captures=captures)
    async with rig.session as s:
        await s.start()
        await eventually(lambda: rig.transports.last.audio() == big + b"\x03\x04\x05\x06")
        assert all(len(f.pcm) <= 65532 for f in rig.transports.last.frames)
        await s.stop()


async def test_auto_stop_when_the_capture_ends():
    captures = FakeCaptureFactory(frames=tone_frames(5), end=True, interval=0.01)
    rig = Rig(captures=captures)
    async with rig.session as s:
        await s.start()
        with anyio.fail_after(2):
            await s.wait_closed()
        assert s.state == "idle" and s.summary is not None
        assert rig.transports.last.audio() == b"".join(tone_frames(5))
        rig.assert_released()


async def test_short_file_ending_before_ack_still_sends_everything_then_stops():
    captures = FakeCaptureFactory(frames=tone_frames(3), end=True)
    rig = Rig(captures=captures, transports=FakeTransportFactory(ack_delay=0.05))
    async with rig.session as s:
        await s.start()
        with anyio.fail_after(2):
            await s.wait_closed()
        t = rig.transports.last
        assert t.audio() == b"".join(tone_frames(3))
        stop_index = next(i for i, m in enumerate(t.sent) if '"stop"' in str(m))
        assert all(not isinstance(m, bytes) for m in t.sent[stop_index:])


async def test_stop_timeout_without_summary_is_summary_missing_not_completed():
    rig = Rig(transports=FakeTransportFactory(on_stop="silent"), stop_timeout=0.05)
    async with rig.session as s:
        await s.start()
        with anyio.fail_after(2), pytest.raises(SessionError) as info:
            await s.stop()
        assert info.value.code is ErrorCode.SUMMARY_MISSING
        assert s.state == "error" and s.summary is None
        rig.assert_released()
    assert [e.code for e in rig.of(ErrorEvent)] == [ErrorCode.SUMMARY_MISSING]
    assert not rig.of(SummaryEvent)


async def test_invalid_message_error_is_a_warning_not_a_failure():
    rig = Rig()
    async with rig.session as s:
        await s.start()
        rig.transports.last.push(ErrorMessage(code=ErrorCode.INVALID_MESSAGE, message="odd"))
        await eventually(lambda: bool(rig.of(StatusEvent)))
        assert s.state == "listening" and rig.of(StatusEvent)[0].message.state == "warning"
        await s.stop()


async def test_leaving_the_block_tears_everything_down():
    rig = Rig()
    async with rig.session as s:
        await s.start()
    assert s.state == "idle"
    rig.assert_released()


async def test_cancellation_during_start_tears_down():
    rig = Rig(transports=FakeTransportFactory(on_start="silent"), start_timeout=5)
    async with rig.session as s:
        with anyio.move_on_after(0.05):
            await s.start()
        assert s.state == "idle"
        rig.assert_released()


async def test_recorder_sees_the_whole_attempt():
    class Rec:
        def __init__(self):
            self.calls = []

        def open(self, **kw):
            self.calls.append(("open", kw))

        def record(self, event, at):
            self.calls.append(("record", event))

        def close(self, **kw):
            self.calls.append(("close", kw))

    rec = Rec()
    rig = Rig()
    rig.session._recorder = rec
    async with rig.session as s:
        await s.start()
        await s.stop()
    assert rec.calls[0][0] == "open" and rec.calls[0][1]["session_id"] == "id-1"
    assert rec.calls[0][1]["sources"] == ("system",)
    assert rec.calls[-1][0] == "close" and rec.calls[-1][1]["outcome"] == "completed"
    assert [c[1] for c in rec.calls if c[0] == "record"] == rig.events


async def test_start_outside_the_block_is_refused():
    rig = Rig()
    with pytest.raises(SessionStateError):
        await rig.session.start()


async def test_pre_ack_buffer_is_bounded_and_drops_oldest():
    frames = [bytes([i % 256, 0]) * 32_000 for i in range(12)]  # 12 x 64 000 bytes = 24 s
    captures = FakeCaptureFactory(frames=frames)
    rig = Rig(captures=captures, transports=FakeTransportFactory(ack_delay=0.05))
    async with rig.session as s:
        await s.start()
        await eventually(lambda: bool(rig.transports.last.frames) and s.dropped_frames > 0)
        await s.stop()
    received = rig.transports.last.audio()
    assert s.dropped_frames > 0
    assert received.endswith(frames[-1])  # the newest audio survived
    assert len(received) == (12 - s.dropped_frames) * 64_000


async def test_event_history_is_bounded_and_late_iterators_skip_the_oldest(monkeypatch):
    import echopanel.client.session as session_module

    monkeypatch.setattr(session_module, "HISTORY_LIMIT", 4)
    rig = Rig()
    async with rig.session as session:
        await session.start()
        transport = rig.transports.made[0]
        for i in range(10):
            transport.push(AsrPartial(source="system", text=f"word {i}", t0=0.0, t1=0.1 * (i + 1)))
        await eventually(lambda: len(rig.of(PartialEvent)) == 10)
        late = []
        await session.stop()
        async for event in session.events():
            late.append(event)
    # the callback saw everything; the late iterator only the last HISTORY_LIMIT events
    assert len(rig.of(PartialEvent)) == 10
    assert len(late) == 4
    assert late == rig.events[-4:]


async def test_cancelled_from_outside_still_closes_the_event_channel() -> None:
    """Cancellation from an enclosing scope (the CLI's second Ctrl-C) makes the task
    group's exit raise; the session's event channel is closed all the same (no
    "Unclosed MemoryObject…Stream" left for the garbage collector) and the attempt is
    recorded as cancelled."""
    rig = Rig()
    with anyio.CancelScope() as scope:
        async with rig.session as session:
            await session.start()
            scope.cancel()
            await anyio.sleep(5)
    assert scope.cancelled_caught
    assert session.state == "idle"
    assert rig.transports.made[0].closed
    with pytest.raises(anyio.ClosedResourceError):
        session._send.send_nowait(None)
    with pytest.raises(anyio.ClosedResourceError):
        session._receive.receive_nowait()


async def test_frames_dropped_before_the_ack_reach_the_bundle_receipt(tmp_path):
    import json

    from echopanel.client.bundle import SessionBundle

    frames = tone_frames(12, ms=1000)  # 12 s of audio > the 256 KiB pre-ack buffer
    bundle = SessionBundle(tmp_path)
    rig = Rig(
        captures=FakeCaptureFactory(frames=frames),
        transports=FakeTransportFactory(ack_delay=0.2),
        start_timeout=2.0,
        recorder=bundle,
    )
    async with rig.session as s:
        await s.start()
        dropped = s.dropped_frames
        assert dropped > 0
        await eventually(lambda: len(rig.transports.last.frames) == len(frames) - dropped)
        await s.stop()
    receipt = json.loads((bundle.paths[0] / "receipt.json").read_text())
    assert receipt["counts"]["client_dropped_frames"] == dropped
    assert receipt["counts"]["dropped_frames"] >= dropped


async def test_accepted_inputs_are_not_logged_as_dropped_and_drops_name_their_reason(caplog):
    caplog.set_level(logging.DEBUG, logger="echopanel.session")
    rig = Rig()
    async with rig.session as s:
        await s.start()  # the fake sends status: connected (accepted, no effect) then streaming
        await s.stop()
        await s._dispatch(StopRequested())  # idle has no row for stop
    drops = [r.getMessage() for r in caplog.records if "dropped" in r.getMessage()]
    assert not any("server_connected" in m for m in drops), drops
    assert "StopRequested (stop) dropped in idle: no_row" in drops
    assert not any("ignored" in r.getMessage() for r in caplog.records)


async def test_a_timer_that_wakes_early_fires_once_at_its_deadline(monkeypatch):
    """The driver clamps ``now`` to the deadline it slept until: a clock read that lags the
    timer (an early wake-up) is still the timeout, not a dropped input and a busy retry."""
    drops = []
    real_handle = SessionMachine.handle

    def handle(self, event, now):
        effects = real_handle(self, event, now)
        if self.last_drop is not None:
            drops.append(self.last_drop)
        return effects

    monkeypatch.setattr(SessionMachine, "handle", handle)
    monkeypatch.setattr(Session, "_now", lambda self: anyio.current_time() - 0.05)
    rig = Rig(transports=FakeTransportFactory(on_start="silent"), start_timeout=0.1)
    async with rig.session as s:
        with anyio.fail_after(2), pytest.raises(SessionError) as info:
            await s.start()
    assert info.value.code is ErrorCode.BACKEND_START_TIMEOUT
    assert not [d for d in drops if d.reason is DropReason.EARLY_TIMER]


def test_session_state_error_is_local_misuse_in_the_error_tree():
    from echopanel import errors
    from echopanel.client import session as session_module

    assert SessionStateError is errors.SessionStateError is session_module.SessionStateError
    assert issubclass(SessionStateError, RuntimeError)
    assert not issubclass(SessionStateError, errors.EchoPanelError)


async def test_the_channel_to_the_driver_is_bounded_and_loses_nothing():
    """A flood of server messages: the receiver waits once EVENT_CHANNEL_LIMIT facts are
    pending (the transport stops being read: backpressure), every final arrives, in order."""
    from echopanel.client.session import EVENT_CHANNEL_LIMIT

    count = EVENT_CHANNEL_LIMIT * 8
    rig = Rig()
    most = 0
    async with rig.session as s:
        await s.start()
        t = rig.transports.last
        for i in range(count):
            t.push(AsrFinal(source="system", text=f"w{i}", t0=i, t1=i + 1, confidence=1,
                            segment_id=f"s{i}"))  # fmt: skip
        with anyio.fail_after(30):
            while len(rig.of(FinalEvent)) < count:
                stats = s._send.statistics()
                most = max(most, stats.current_buffer_used)
                await anyio.lowlevel.checkpoint()
        await s.stop()
    assert most <= EVENT_CHANNEL_LIMIT
    assert most > EVENT_CHANNEL_LIMIT // 2  # the flood did fill it: the bound was exercised
    assert [e.message.text for e in rig.of(FinalEvent)] == [f"w{i}" for i in range(count)]


async def test_bundle_files_are_written_off_the_event_loop(tmp_path):
    """Event lines, audio frames, receipts, transcript and the zip: none on the loop thread."""
    import threading

    import echopanel.client.bundle as bundle_module
    from echopanel.client.bundle import SessionBundle

    loop_thread = threading.get_ident()
    writers: list[tuple[str, int]] = []

    class SpiedBundle(SessionBundle):
        def open(self, **kwargs):
            super().open(**kwargs)
            part = self._current.events_part

            class Spy:
                def write(self, text):
                    writers.append(("event line", threading.get_ident()))
                    return part.write(text)

                def __getattr__(self, name):
                    return getattr(part, name)

            self._current.events_part = Spy()

        def _append_audio(self, attempt, source, pcm):
            writers.append(("audio frame", threading.get_ident()))
            super()._append_audio(attempt, source, pcm)

        def _zip(self, directory):
            writers.append(("zip", threading.get_ident()))
            return super()._zip(directory)

    real_write_atomic = bundle_module.write_atomic

    def spied_write_atomic(path, data):
        writers.append((path.name, threading.get_ident()))
        real_write_atomic(path, data)

    bundle = SpiedBundle(tmp_path, zip=True, keep_audio=True)
    rig = Rig(recorder=bundle)
    rig.session._capture_factory = bundle.wrap_capture_factory(rig.captures)
    original = bundle_module.write_atomic
    bundle_module.write_atomic = spied_write_atomic
    try:
        async with rig.session as s:
            await s.start()
            await s.stop()
    finally:
        bundle_module.write_atomic = original
    kinds = {kind for kind, _ in writers}
    assert {"event line", "audio frame", "zip", "receipt.json", "transcript.json"} <= kinds
    on_loop = [kind for kind, thread in writers if thread == loop_thread]
    assert not on_loop, f"written on the event loop: {sorted(set(on_loop))}"
    assert bundle.path is not None and bundle.path.suffix == ".zip"
