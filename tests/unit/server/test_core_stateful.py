"""Random frame sequences against the server core (hypothesis ``RuleBasedStateMachine``).

The test plays the shell: it answers the core's requests (ASR ready, slot, streams) at
random, feeds random frames, recognition output, load reports, time and disconnects, and
checks the protocol's invariants after every step.
"""

from __future__ import annotations

import json

from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from echopanel.errors import ErrorCode
from echopanel.ports import AsrFinalUpdate, AsrPartialUpdate
from echopanel.protocol import AsrFinal, ErrorMessage, FinalSummary, encode_audio_frame
from echopanel.server.core import (
    AcquireSlot,
    AnalysisTick,
    AsrDone,
    AsrFailed,
    AsrOutput,
    AsrReady,
    AsrUnavailable,
    AudioQueued,
    BinaryReceived,
    Close,
    CloseAsrStreams,
    CoreConfig,
    DrainRequested,
    Fault,
    MetricsTick,
    OpenAsrStream,
    Opened,
    PeerGone,
    ReleaseSlot,
    Send,
    ServerSession,
    SlotAcquired,
    SlotRefused,
    SourceLoad,
    StreamFailed,
    StreamOpened,
    TextReceived,
    TimerFired,
    WaitForAsr,
)

PCM = b"\x01\x00" * 160
FRAMES = [
    TextReceived(text='{"type":"start","session_id":"s1","attempt_id":"a1","sources":["system"]}'),
    TextReceived(text='{"type":"start","session_id":"s1","attempt_id":"a1"}'),
    TextReceived(text='{"type":"start","session_id":"","attempt_id":"a1"}'),
    TextReceived(text='{"type":"start","session_id":"s","attempt_id":"a","sample_rate":1}'),
    TextReceived(text='{"type":"stop","session_id":"s1"}'),
    TextReceived(text='{"type":"stop","session_id":"other"}'),
    TextReceived(text='{"type":"audio","source":"mic","data":"AAAA"}'),
    TextReceived(text="}{"),
    TextReceived(text='{"type":"dance"}'),
    BinaryReceived(data=encode_audio_frame("system", PCM)),
    BinaryReceived(data=encode_audio_frame("system", PCM)),
    BinaryReceived(data=encode_audio_frame("mic", PCM)),
    BinaryReceived(data=b"EP\x01\x00"),
    BinaryReceived(data=b"EP\x01\x00\x01"),
    BinaryReceived(data=b"\x00" * 70_000),
]


class ServerCoreMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.s = ServerSession(
            CoreConfig(
                start_timeout=5.0, flush_timeout=3.0, idle_timeout=10.0, max_invalid_messages=8
            ),
            connection_id="srv-1",
        )
        self.now = 0.0
        self.actions: list = []
        self.pending: list = []  # requests awaiting an answer, in order
        self.slots_acquired = 0
        self.feed(Opened(authorized=True))

    @initialize(sources=st.sampled_from([None, ("system",), ("system", "mic")]))
    def maybe_streaming(self, sources) -> None:
        """Most examples start from a streaming session (some from the handshake)."""
        if sources is None:
            return
        start = {"type": "start", "session_id": "s1", "attempt_id": "a1", "sources": sources}
        self.feed(TextReceived(text=json.dumps(start)))
        while self.pending:
            self.answer(ok=True)
        assert self.s.phase == "streaming"

    def feed(self, event) -> None:
        out = self.s.handle(event, self.now)
        self.actions.extend(out)
        for action in out:
            if isinstance(action, WaitForAsr | AcquireSlot | OpenAsrStream):
                self.pending.append(action)

    def sent(self) -> list:
        return [a.message for a in self.actions if isinstance(a, Send)]

    # ------------------------------------------------------------------ rules

    @precondition(lambda self: not self.pending)
    @rule(frame=st.sampled_from(FRAMES))
    def frame(self, frame) -> None:
        self.feed(frame)

    @precondition(lambda self: not self.pending)
    @rule()
    def stop(self) -> None:
        self.feed(TextReceived(text='{"type":"stop","session_id":"s1"}'))

    @precondition(lambda self: bool(self.pending))
    @rule(ok=st.sampled_from([False, True, True, True]))
    def answer(self, ok: bool) -> None:
        request = self.pending.pop(0)
        if isinstance(request, WaitForAsr):
            self.feed(AsrReady(name="fake") if ok else AsrUnavailable(reason="down"))
        elif isinstance(request, AcquireSlot):
            if ok:
                self.slots_acquired += 1
            self.feed(SlotAcquired() if ok else SlotRefused())
        else:
            source = request.source
            failed = StreamFailed(source=source, message="x")
            self.feed(StreamOpened(source=source) if ok else failed)

    @rule(
        source=st.sampled_from(["system", "mic"]),
        segment=st.sampled_from(["a", "b", "system-a", "mic-b"]),
        partial=st.booleans(),
        t0=st.floats(0, 100),
    )
    def asr_output(self, source, segment, partial, t0) -> None:
        if partial:
            update = AsrPartialUpdate(text="p", t0=t0, t1=t0 + 1)
        else:
            update = AsrFinalUpdate(text="f", t0=t0, t1=t0 + 1, confidence=1, segment_id=segment)
        self.feed(AsrOutput(source=source, updates=(update,)))

    @rule(source=st.sampled_from(["system", "mic"]), failed=st.booleans())
    def asr_end(self, source, failed) -> None:
        self.feed(AsrFailed(source=source, message="e") if failed else AsrDone(source=source))

    @rule(dropped=st.integers(0, 5), kind=st.sampled_from(["queued", "metrics", "analysis"]))
    def load(self, dropped, kind) -> None:
        load = SourceLoad(source="system", dropped_frames=dropped)
        if kind == "queued":
            self.feed(AudioQueued(load=load, dropped=dropped, buffering=True))
        elif kind == "metrics":
            self.feed(MetricsTick(load=load, active_sessions=1))
        else:
            self.feed(AnalysisTick())

    @rule(seconds=st.floats(0, 6))
    def time_passes(self, seconds) -> None:
        self.now += seconds
        deadline = self.s.deadline
        if deadline is not None and self.now >= deadline:
            self.feed(TimerFired())

    @rule(kind=st.sampled_from(["peer_gone", "fault", "drain", *["none"] * 8]))
    def end(self, kind) -> None:
        events = {"peer_gone": PeerGone(), "fault": Fault(), "drain": DrainRequested()}
        if kind in events:
            self.feed(events[kind])

    # ------------------------------------------------------------------ invariants

    @invariant()
    def one_slot_released_on_every_path(self) -> None:
        acquires = sum(isinstance(a, AcquireSlot) for a in self.actions)
        releases = sum(isinstance(a, ReleaseSlot) for a in self.actions)
        assert acquires <= 1 and self.slots_acquired <= 1
        assert releases <= self.slots_acquired
        if self.s.closed and not self.pending:
            assert releases == self.slots_acquired
            opened = any(isinstance(a, OpenAsrStream) for a in self.actions)
            assert opened == any(isinstance(a, CloseAsrStreams) for a in self.actions)

    @invariant()
    def every_error_before_its_close_and_nothing_after(self) -> None:
        closes = [i for i, a in enumerate(self.actions) if isinstance(a, Close)]
        assert len(closes) <= 1
        if closes:
            assert not any(isinstance(a, Send) for a in self.actions[closes[0] :])
        for i, action in enumerate(self.actions):
            if not (isinstance(action, Send) and isinstance(action.message, ErrorMessage)):
                continue
            error = action.message
            if error.code is ErrorCode.INVALID_MESSAGE and not error.message.startswith("more"):
                continue  # a dropped frame: the session goes on
            assert i + 1 < len(self.actions) and isinstance(self.actions[i + 1], Close)

    @invariant()
    def finals_unique_never_after_summary_and_all_in_it(self) -> None:
        sent = self.sent()
        finals = [m for m in sent if isinstance(m, AsrFinal)]
        ids = [f.segment_id for f in finals]
        assert len(ids) == len(set(ids))
        summaries = [i for i, m in enumerate(sent) if isinstance(m, FinalSummary)]
        assert len(summaries) <= 1
        if summaries:
            (at,) = summaries
            assert not any(isinstance(m, AsrFinal) for m in sent[at:])
            summary = sent[at]
            assert {e.segment_id for e in summary.transcript} == set(ids)
            assert summary.counts["finals"] == len(finals)
            assert json.loads(json.dumps(summary.counts))  # plain ints

    @invariant()
    def closed_has_no_deadline(self) -> None:
        event(f"phase {self.s.phase}")
        if any(isinstance(m, FinalSummary) for m in self.sent()):
            event("summary sent")
        if self.s.closed:
            assert self.s.deadline is None


TestServerCore = ServerCoreMachine.TestCase
TestServerCore.settings = settings(
    max_examples=300,
    stateful_step_count=40,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)
