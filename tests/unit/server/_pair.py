"""The in-memory link of the pair tests: the client's ``SessionMachine`` and a server core.

Every message crosses as wire text (``encode`` then ``decode_*``); the test plays both
shells (permissions, captures, ASR, slots) and owns the clock. ``test_core_pair`` runs one
scenario per path of the seed over it; ``test_core_pair_resume`` extends it with reconnects.
"""

from __future__ import annotations

import collections
from typing import Any

import attrs

from echopanel.errors import CLOSE_CODES, ErrorCode
from echopanel.ports import AsrFinalUpdate
from echopanel.protocol import decode_client, decode_server, encode, encode_audio_frame
from echopanel.server.core import (
    AcquireSlot,
    AsrDone,
    AsrOutput,
    AsrReady,
    AsrUnavailable,
    BinaryReceived,
    Close,
    CoreConfig,
    EndAudio,
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
