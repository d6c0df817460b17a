"""Fixtures for the pure server core tests: a driver that plays the shell."""

from __future__ import annotations

import json
from typing import Any

import pytest

from echopanel.protocol import (
    AsrFinal,
    ErrorMessage,
    FinalSummary,
    ServerMessage,
    Source,
    encode_audio_frame,
)
from echopanel.server.core import (
    Action,
    AsrReady,
    BinaryReceived,
    Close,
    CoreConfig,
    Event,
    Opened,
    Send,
    ServerSession,
    SlotAcquired,
    StreamOpened,
    TextReceived,
)

PCM = b"\x01\x00" * 1600  # 0.1 s


class CoreDriver:
    """Feeds events to a :class:`ServerSession` with a clock; keeps every action."""

    def __init__(self, *, resume_token: str | None = None, **config: Any) -> None:
        self.s = ServerSession(
            CoreConfig(**config), connection_id="srv-1", resume_token=resume_token
        )
        self.now = 0.0
        self.actions: list[Action] = []

    def feed(self, event: Event, *, at: float | None = None) -> list[Action]:
        if at is not None:
            self.now = at
        out = self.s.handle(event, self.now)
        self.actions.extend(out)
        return out

    def text(self, obj: Any) -> list[Action]:
        return self.feed(TextReceived(text=obj if isinstance(obj, str) else json.dumps(obj)))

    def binary(self, data: bytes) -> list[Action]:
        return self.feed(BinaryReceived(data=data))

    def audio(self, source: Source = "system", pcm: bytes = PCM) -> list[Action]:
        return self.binary(encode_audio_frame(source, pcm))

    def start(self, session_id: str = "s1", **fields: Any) -> list[Action]:
        return self.text({"type": "start", "session_id": session_id, "attempt_id": "a1", **fields})

    def stop(self, session_id: str = "s1") -> list[Action]:
        return self.text({"type": "stop", "session_id": session_id})

    def open(self) -> list[Action]:
        return self.feed(Opened(authorized=True))

    def to_streaming(self, sources: tuple[Source, ...] | None = ("system",), **start: Any) -> None:
        self.open()
        fields = {} if sources is None else {"sources": list(sources)}
        fields.update(start)
        self.start(**fields)
        self.feed(AsrReady(name="fake"))
        self.feed(SlotAcquired())
        for source in sources or ():
            self.feed(StreamOpened(source=source))
        assert self.s.phase == "streaming", self.s.phase

    def sent(self, kind: type | None = None) -> list[ServerMessage]:
        messages = [a.message for a in self.actions if isinstance(a, Send)]
        return [m for m in messages if kind is None or isinstance(m, kind)]

    def of(self, kind: type) -> list[Action]:
        return [a for a in self.actions if isinstance(a, kind)]

    def errors(self) -> list[ErrorMessage]:
        return [m for m in self.sent(ErrorMessage) if isinstance(m, ErrorMessage)]

    def closes(self) -> list[int]:
        return [a.code for a in self.actions if isinstance(a, Close)]

    def finals(self) -> list[AsrFinal]:
        return [m for m in self.sent(AsrFinal) if isinstance(m, AsrFinal)]

    def summary(self) -> FinalSummary:
        (summary,) = [m for m in self.sent(FinalSummary) if isinstance(m, FinalSummary)]
        return summary


@pytest.fixture
def core() -> Any:
    """``core(**CoreConfig fields)`` → a :class:`CoreDriver` over a fresh core."""
    return CoreDriver
