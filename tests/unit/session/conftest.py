"""Fixtures for the session machine tests: a machine factory and an event driver."""

from __future__ import annotations

import pytest

from echopanel.protocol.messages import ServerMessage, Source, StatusMessage
from echopanel.session import (
    CaptureStarted,
    Connected,
    Effect,
    Event,
    MessageReceived,
    PermissionAnswered,
    SessionConfig,
    SessionMachine,
    StartRequested,
)
from echopanel.testing.ids import counter_ids


def make_machine(
    sources: tuple[Source, ...] = ("system",), *, token: str | None = None, **kwargs: object
) -> SessionMachine:
    config = SessionConfig(url="ws://127.0.0.1:8765", sources=sources, token=token, **kwargs)
    return SessionMachine(config, id_factory=counter_ids())


class Driver:
    """Feeds events to a machine with a clock and keeps every effect."""

    def __init__(self, machine: SessionMachine) -> None:
        self.m = machine
        self.now = 0.0
        self.effects: list[Effect] = []

    def feed(self, event: Event, *, at: float | None = None) -> list[Effect]:
        if at is not None:
            self.now = at
        out = self.m.handle(event, self.now)
        self.effects.extend(out)
        return out

    @property
    def attempt(self) -> str:
        assert self.m.attempt_id is not None
        return self.m.attempt_id

    def server(self, message: ServerMessage) -> list[Effect]:
        return self.feed(MessageReceived(attempt_id=self.attempt, message=message))

    def to_listening(self, **ack: object) -> None:
        self.feed(StartRequested())
        for kind in self.m.config.permissions:
            self.feed(PermissionAnswered(attempt_id=self.attempt, kind=kind, granted=True))
        for source in self.m.config.sources:
            self.feed(CaptureStarted(attempt_id=self.attempt, source=source))
        self.feed(Connected(attempt_id=self.attempt))
        self.server(StatusMessage(state="connected", connection_id="conn-1"))
        self.server(StatusMessage(state="streaming", **ack))  # type: ignore[arg-type]
        assert self.m.state == "listening"

    def of(self, kind: type) -> list[Effect]:
        return [e for e in self.effects if isinstance(e, kind)]


@pytest.fixture
def drive() -> object:
    """``drive(sources=..., **config)`` → a :class:`Driver` over a fresh machine."""

    def make(sources: tuple[Source, ...] = ("system",), **kwargs: object) -> Driver:
        return Driver(make_machine(sources, **kwargs))

    return make
