"""h11-style pair test: the client's ``SessionMachine`` and the server core, talking.

No network: an in-memory link carries every message as wire text (``encode`` then
``decode_*``), the test plays both shells (permissions, captures, ASR, slots) and owns the
clock. One scenario per path of the seed: the happy path and each failure.
"""

from __future__ import annotations

import collections
from typing import Any

import attrs

from echopanel.errors import CLOSE_CODES, ErrorCode
from echopanel.ports import AsrFinalUpdate
from echopanel.protocol import (
    FinalSummary,
    decode_client,
    decode_server,
    encode,
    encode_audio_frame,
)
from echopanel.server.core import (
    AcquireSlot,
    AsrDone,
    AsrFailed,
    AsrOutput,
    AsrReady,
    AsrUnavailable,
    BinaryReceived,
    Close,
    CloseAsrStreams,
    CoreConfig,
    DrainRequested,
    EndAudio,
    Fault,
    FeedAudio,
    OpenAsrStream,
    Opened,
    PeerGone,
    ReleaseSlot,
    Send,
    ServerSession,
    SlotAcquired,
    SlotRefused,
    StreamOpened,
    TextReceived,
    WaitForAsr,
    check_token,
)
from echopanel.server.core import TimerFired as ServerTimer
from echopanel.session import (
    CaptureStarted,
    Connected,
    MessageReceived,
    PermissionAnswered,
    SessionConfig,
    SessionMachine,
    StartRequested,
    StopRequested,
    TransportClosed,
)
from echopanel.session import TimerFired as ClientTimer
from echopanel.session.effects import (
    CloseTransport,
    Connect,
    EndAttempt,
    RequestPermission,
    SendStart,
    SendStop,
    StartCapture,
)
from echopanel.testing.ids import counter_ids

PCM = b"\x01\x00" * 1600
_CLOSE_TO_CODE = {
    close: code for code, close in CLOSE_CODES.items() if code is not ErrorCode.START_TIMEOUT
}


@attrs.define
class Link:
    """Both machines and the wire between them; the test is both shells."""

    server_token: str | None = None
    client_token: str | None = None
    asr_ready: bool = True
    slot: str = "granted"  # granted | refused | held (never answered)
    permission: bool = True
    mangle_start: dict[str, Any] | None = None
    client: SessionMachine = attrs.field(init=False)
    server: ServerSession | None = None
    now: float = 0.0
    wire: collections.deque[tuple[str, Any]] = attrs.Factory(collections.deque)
    client_effects: list[Any] = attrs.Factory(list)
    server_actions: list[Any] = attrs.Factory(list)
    held: list[Any] = attrs.Factory(list)
    fed: int = 0
    granted: int = 0

    def __attrs_post_init__(self) -> None:
        config = SessionConfig(
            url="ws://127.0.0.1:8765", sources=("system",), token=self.client_token
        )
        self.client = SessionMachine(config, id_factory=counter_ids())

    # ------------------------------------------------------------------ the two shells

    @property
    def attempt(self) -> str:
        assert self.client.attempt_id is not None
        return self.client.attempt_id

    def to_client(self, event: Any) -> None:
        self.wire.append(("client", event))

    def to_server(self, event: Any) -> None:
        self.wire.append(("server", event))

    def pump(self) -> None:
        for _ in range(10_000):
            if not self.wire:
                return
            side, event = self.wire.popleft()
            if side == "client":
                for effect in self.client.handle(event, self.now):
                    self.client_effects.append(effect)
                    self.run_client(effect)
            elif self.server is not None:
                self.granted += isinstance(event, SlotAcquired)
                for action in self.server.handle(event, self.now):
                    self.server_actions.append(action)
                    self.run_server(action)
        raise AssertionError("the link did not settle")

    def run_client(self, effect: Any) -> None:
        match effect:
            case RequestPermission(kind=kind):
                answer = PermissionAnswered(
                    attempt_id=self.attempt, kind=kind, granted=self.permission
                )
                self.to_client(answer)
            case StartCapture(source=source):
                self.to_client(CaptureStarted(attempt_id=self.attempt, source=source))
            case Connect(headers=headers):
                self.server = ServerSession(
                    CoreConfig(start_timeout=10.0, flush_timeout=8.0), connection_id="srv-1"
                )
                self.to_client(Connected(attempt_id=self.attempt))
                self.to_server(Opened(authorized=check_token(self.server_token, headers)))
            case SendStart(message=message) | SendStop(message=message):
                text = encode(message)
                if self.mangle_start and isinstance(effect, SendStart):
                    fields = {**attrs.asdict(decode_client(text)), **self.mangle_start}
                    fields.pop("type")
                    text = encode(type(message)(**fields))
                self.to_server(TextReceived(text=text))
            case CloseTransport():
                if self.server is not None and not self.server.closed:
                    self.to_server(PeerGone())

    def run_server(self, action: Any) -> None:
        match action:
            case Send(message=message):
                received = decode_server(encode(message))
                self.to_client(MessageReceived(attempt_id=self.attempt, message=received))
            case Close(code=code):
                self.to_client(
                    TransportClosed(
                        attempt_id=self.attempt, close_code=code, code=_CLOSE_TO_CODE.get(code)
                    )
                )
            case WaitForAsr():
                ready = AsrReady(name="fake")
                self.to_server(ready if self.asr_ready else AsrUnavailable(reason="no model"))
            case AcquireSlot():
                if self.slot == "held":
                    self.held.append(SlotAcquired())
                else:
                    self.to_server(SlotAcquired() if self.slot == "granted" else SlotRefused())
            case OpenAsrStream(source=source):
                self.to_server(StreamOpened(source=source))
            case FeedAudio(source=source):  # the fake ASR: one final per frame
                self.fed += 1
                update = AsrFinalUpdate(
                    text=f"word{self.fed}",
                    t0=self.fed - 1.0,
                    t1=float(self.fed),
                    confidence=1.0,
                    segment_id=f"seg{self.fed}",
                )
                self.to_server(AsrOutput(source=source, updates=(update,)))
            case EndAudio():
                self.to_server(AsrDone(source="system"))

    # ------------------------------------------------------------------ the test's moves

    def start(self) -> None:
        self.to_client(StartRequested())
        self.pump()

    def audio(self, frames: int) -> None:
        for _ in range(frames):
            self.to_server(BinaryReceived(data=encode_audio_frame("system", PCM)))
        self.pump()

    def advance(self, to: float) -> None:
        self.now = to
        if self.client.deadline is not None and to >= self.client.deadline:
            self.to_client(ClientTimer())
        deadline = None if self.server is None else self.server.deadline
        if deadline is not None and to >= deadline:
            self.to_server(ServerTimer())
        self.pump()

    def outcome(self) -> EndAttempt:
        (end,) = [e for e in self.client_effects if isinstance(e, EndAttempt)]
        return end

    def released(self) -> bool:
        releases = sum(isinstance(a, ReleaseSlot) for a in self.server_actions)
        return releases == self.granted

    def server_closes(self) -> list[int]:
        return [a.code for a in self.server_actions if isinstance(a, Close)]


def test_happy_path_start_stream_stop_summary():
    link = Link()
    link.start()
    assert link.client.state == "listening" and link.server.phase == "streaming"
    assert link.client.connection_id == "srv-1"
    link.audio(3)
    link.to_client(StopRequested())
    link.pump()
    end = link.outcome()
    assert end.outcome == "completed" and isinstance(end.summary, FinalSummary)
    assert [e.text for e in end.summary.transcript] == ["word1", "word2", "word3"]
    assert link.client.state == "idle" and link.server.closed
    assert link.server_closes() == [1000] and link.released()
    assert any(isinstance(a, CloseAsrStreams) for a in link.server_actions)


def test_unauthorized():
    link = Link(server_token="s3cret", client_token="wrong")
    link.start()
    assert link.outcome().outcome == "error:unauthorized"
    assert link.server_closes() == [1008] and link.released()


def test_right_token_is_accepted():
    link = Link(server_token="s3cret", client_token="s3cret")
    link.start()
    assert link.client.state == "listening"


def test_server_at_capacity():
    link = Link(slot="refused")
    link.start()
    assert link.outcome().outcome == "error:server_at_capacity"
    assert link.server_closes() == [1013] and link.released()


def test_asr_unavailable():
    link = Link(asr_ready=False)
    link.start()
    assert link.outcome().outcome == "error:asr_unavailable"
    assert link.server_closes() == [1011]


def test_unsupported_audio_format():
    link = Link(mangle_start={"sample_rate": 44100})
    link.start()
    assert link.outcome().outcome == "error:unsupported_audio_format"
    assert link.server_closes() == [1003]


def test_backend_start_timeout_while_the_server_waits_for_a_slot():
    link = Link(slot="held")
    link.start()
    assert link.client.state == "starting" and link.server.phase == "admitting"
    link.advance(link.client.deadline)
    assert link.outcome().outcome == "error:backend_start_timeout"
    assert link.server.closed  # the client closed: the server saw the peer go
    link.to_server(link.held.pop())  # the slot is granted after all: it goes straight back
    link.pump()
    assert link.released() and not link.server_closes()


def test_permission_denied_never_reaches_the_server():
    link = Link(permission=False)
    link.start()
    assert link.outcome().outcome.startswith("error:screen_recording")
    assert link.server is None


def test_asr_failure_mid_session():
    link = Link()
    link.start()
    link.audio(1)
    link.to_server(AsrFailed(source="system", message="decoder died"))
    link.pump()
    assert link.outcome().outcome == "error:asr_unavailable"
    assert link.server_closes() == [1011] and link.released()


def test_client_stop_during_start_releases_the_server_side():
    link = Link(slot="held")
    link.start()
    link.to_client(StopRequested())
    link.pump()
    assert link.outcome().outcome == "cancelled" and link.server.closed
    link.to_server(link.held.pop())
    link.pump()
    assert link.released()


def _drained() -> Link:
    link = Link()
    link.start()
    link.audio(2)
    link.to_server(DrainRequested())
    link.pump()
    return link


def test_server_drain_mid_session_sends_everything_then_closes_1001():
    link = _drained()
    sent = [a.message for a in link.server_actions if isinstance(a, Send)]
    kinds = [m.type for m in sent]
    assert kinds[-2:] == ["status", "final_summary"] and sent[-2].reason == "drain"
    assert [e.text for e in sent[-1].transcript] == ["word1", "word2"]
    assert link.server_closes() == [1001] and link.released()


def test_server_drain_mid_session_completes_the_client_with_its_summary():
    end = _drained().outcome()
    assert end.outcome == "completed" and end.summary is not None
    assert [e.text for e in end.summary.transcript] == ["word1", "word2"]


def test_idle_audio_ends_the_session_with_idle_timeout():
    link = Link()
    link.start()
    assert link.server.timer == "idle"
    link.advance(link.server.deadline)
    assert link.outcome().outcome == "error:idle_timeout"
    assert link.server_closes() == [4408] and link.released()


def test_internal_fault_reaches_the_client_as_internal_error():
    link = Link()
    link.start()
    link.to_server(Fault())
    link.pump()
    assert link.outcome().outcome == "error:internal_error"
    assert link.server_closes() == [1011] and link.released()
