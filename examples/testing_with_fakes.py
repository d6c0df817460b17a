"""Testing an app that embeds echopanel, with the fakes from ``echopanel.testing``.

The app under test, :class:`CaptionBox`, shows live captions: the current partial, the last
few finals, and a banner when the session fails. Its tests run in milliseconds, with no
audio device, network or model: ``FakeCapture`` scripts the audio, ``FakeTransport`` plays
the server (it acknowledges ``start``, records what was sent, answers ``stop`` with a
summary, and can push any server message or fail in any documented way), and
``FakePermissionGate`` answers the permission prompts.

Run the tests with pytest::

    python -m pytest examples/testing_with_fakes.py
"""

from __future__ import annotations

import anyio
import pytest

from echopanel.client import (
    ErrorEvent,
    FinalEvent,
    PartialEvent,
    Session,
    SessionConfig,
    SessionEvent,
)
from echopanel.errors import ErrorCode, SessionError
from echopanel.ports import PermissionKind
from echopanel.protocol import AsrFinal, AsrPartial
from echopanel.testing import (
    FakeCaptureFactory,
    FakePermissionGate,
    FakeTransport,
    FakeTransportFactory,
    tone_frames,
)

# --------------------------------------------------------------------------- the app


class CaptionBox:
    """Live captions for one session: ``partial``, the last ``keep`` finals, ``banner``."""

    def __init__(self, keep: int = 3) -> None:
        self.keep = keep
        self.partial = ""
        self.lines: list[str] = []
        self.banner = ""

    def on_event(self, event: SessionEvent) -> None:
        if isinstance(event, PartialEvent):
            self.partial = event.message.text
        elif isinstance(event, FinalEvent):
            self.partial = ""
            self.lines = [*self.lines, event.message.text][-self.keep :]
        elif isinstance(event, ErrorEvent):
            self.banner = f"Captions stopped: {event.message}"

    async def run(self, session: Session) -> None:
        """Start the session, caption it until it ends; a failure shows the banner."""
        try:
            await session.start()
            await session.wait_closed()
        except SessionError:
            pass  # the ErrorEvent already set the banner


# --------------------------------------------------------------------------- helpers


def _config() -> SessionConfig:
    return SessionConfig(url="ws://test", sources=("system",), start_timeout=2.0)


def _server_says(*texts: str) -> FakeTransportFactory:
    """A fake server that sends a partial then a final for each text, 50 ms apart."""

    def script(transport: FakeTransport) -> None:
        for index, text in enumerate(texts):
            t0 = float(index)
            transport.push(
                AsrPartial(source="system", text=text[:5], t0=t0, t1=t0 + 0.5),
                delay=0.05 + 0.1 * index,
            )
            transport.push(
                AsrFinal(source="system", text=text, t0=t0, t1=t0 + 1, confidence=0.9,
                         segment_id=f"seg-{index}"),
                delay=0.1 + 0.1 * index,
            )  # fmt: skip

    return FakeTransportFactory(configure=script)


# --------------------------------------------------------------------------- the tests


@pytest.fixture
def anyio_backend() -> str:
    """The session shell runs on asyncio (``anyio_mode = "auto"`` runs the async tests)."""
    return "asyncio"


async def test_finals_become_caption_lines_and_only_the_last_ones_are_kept() -> None:
    box = CaptionBox(keep=2)
    transports = _server_says("first line", "second line", "third line")
    # 30 frames of 20 ms, then the "file" ends: the session stops on its own
    captures = FakeCaptureFactory(frames=tone_frames(30), interval=0.02, end=True)
    session = Session(
        _config(),
        transport_factory=transports,
        capture_factory=captures,
        permission_gate=FakePermissionGate(),
        on_event=box.on_event,
    )
    with anyio.fail_after(5):
        async with session:
            await box.run(session)
    assert box.lines == ["second line", "third line"]
    assert box.partial == "" and box.banner == ""
    assert session.state == "idle"
    # what the app's session sent to the "server": a start, audio, a stop
    sent = transports.last
    assert sent.start is not None and sent.start.sources == ("system",)
    assert len(sent.audio("system")) == 30 * 640
    assert captures.all_stopped and transports.all_closed


async def test_a_refused_permission_shows_the_banner_and_nothing_runs() -> None:
    box = CaptionBox()
    transports = FakeTransportFactory()
    captures = FakeCaptureFactory(frames=tone_frames(5))
    gate = FakePermissionGate({PermissionKind.SCREEN_RECORDING: False})
    async with Session(
        _config(),
        transport_factory=transports,
        capture_factory=captures,
        permission_gate=gate,
        on_event=box.on_event,
    ) as session:
        await box.run(session)
    assert box.banner.startswith("Captions stopped: Screen Recording permission required")
    assert session.state == "error"
    assert transports.made == [] and captures.made == []  # never connected, never captured


async def test_a_server_at_capacity_shows_the_banner() -> None:
    box = CaptionBox()
    async with Session(
        _config(),
        transport_factory=FakeTransportFactory(on_start=ErrorCode.SERVER_AT_CAPACITY),
        capture_factory=FakeCaptureFactory(frames=tone_frames(50), interval=0.02),
        permission_gate=FakePermissionGate(),
        on_event=box.on_event,
    ) as session:
        await box.run(session)
    assert box.banner == "Captions stopped: Server at capacity"


if __name__ == "__main__":
    import sys

    sys.exit(pytest.main([__file__, "-q", "-p", "anyio"]))
