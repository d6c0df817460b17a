"""Writing a custom ``Capture``: feed echopanel audio that your app already has.

Apps often have audio of their own (a call SDK, a video player, a DSP chain). A
:class:`~echopanel.ports.Capture` is a small async class: ``start()``, an async
``frames()`` iterator of 16 kHz mono s16le chunks (20-100 ms), ``stop()``, and ``source``.
:class:`PushCapture` below takes numpy blocks at any rate and channel count from anywhere
in the app (``push`` is thread-safe and never blocks), converts them with echopanel's
streaming converter and yields fixed 40 ms frames.

Run it: a synthetic "app" pushes two seconds of 48 kHz stereo audio from a thread, and the
session sends it to an in-process server (fake ASR)::

    python examples/custom_capture.py
"""

from __future__ import annotations

import queue
import threading
from collections.abc import AsyncIterator, Sequence

import anyio
import numpy as np
import numpy.typing as npt

from echopanel.capture import Framer, GrantingPermissionGate, PcmConverter, frame_bytes
from echopanel.client import FinalEvent, Session, SessionConfig, SessionEvent
from echopanel.errors import CaptureError, ErrorCode
from echopanel.ports import Capture
from echopanel.protocol import Source


class PushCapture(Capture):
    """A source the app pushes blocks into; ``close()`` ends the stream (like a file)."""

    def __init__(self, source: Source, samplerate: float, *, frame_ms: int = 40) -> None:
        self.source = source
        self._converter = PcmConverter(samplerate)
        self._framer = Framer(frame_bytes(frame_ms))
        self._blocks: queue.Queue[npt.NDArray[np.float32]] = queue.Queue(maxsize=200)
        self._dropped = 0
        self._started = False
        self._stopped = False
        self._ended = threading.Event()  # the app said no more audio is coming

    # --- the app's side (any thread)

    def push(self, block: npt.NDArray[np.float32]) -> None:
        try:
            self._blocks.put_nowait(block)
        except queue.Full:
            self._dropped += 1  # never block the producer: drop and count

    def close(self) -> None:
        self._ended.set()  # like push: never blocks (frames() ends once the queue is empty)

    # --- the Capture port

    @property
    def overflows(self) -> int:
        return self._dropped

    async def start(self) -> None:
        if self._stopped:
            raise CaptureError(ErrorCode.SYSTEM_CAPTURE_FAILED, "already stopped")
        self._started = True

    async def frames(self) -> AsyncIterator[bytes]:
        while not self._stopped:
            ended = self._ended.is_set()  # read before the queue: nothing pushed is lost
            try:
                block = self._blocks.get_nowait()
            except queue.Empty:
                if ended:
                    break
                await anyio.sleep(0.01)
                continue
            for frame in self._framer.push(self._converter.push(block)):
                yield frame
        for frame in self._framer.push(self._converter.flush()) + self._framer.flush():
            yield frame

    async def stop(self) -> None:
        self._stopped = True


def fake_app_audio(capture: PushCapture, seconds: float = 2.0, rate: int = 48000) -> None:
    """Stands in for the app's audio thread: 10 ms stereo blocks of a 220 Hz tone."""
    block = rate // 100
    t = np.arange(int(seconds * rate)) / rate
    tone = (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)
    stereo = np.stack([tone, tone], axis=1)
    for start in range(0, len(stereo), block):
        capture.push(stereo[start : start + block])
    capture.close()


async def run(seconds: float = 2.0) -> tuple[int, int]:
    """Stream ``seconds`` of pushed audio; returns (frames sent, finals received)."""
    from echopanel.server import ServerConfig, serve_in_background

    capture = PushCapture("system", 48000)
    finals: list[str] = []

    def on_event(event: SessionEvent) -> None:
        if isinstance(event, FinalEvent):
            finals.append(event.message.text)

    async with serve_in_background(ServerConfig(asr="fake")) as base:
        config = SessionConfig(url=base.replace("http://", "ws://"), sources=("system",))
        async with Session(
            config,
            capture_factory=lambda source: capture,
            permission_gate=GrantingPermissionGate(),
            on_event=on_event,
        ) as session:
            await session.start()
            threading.Thread(target=fake_app_audio, args=(capture, seconds), daemon=True).start()
            await session.wait_closed()
            summary = session.summary
    sent = round(summary.sources["system"].audio_seconds / 0.04) if summary else 0
    return sent, len(finals)


def main(argv: Sequence[str] | None = None) -> int:
    sent, finals = anyio.run(run)
    print(f"sent about {sent} frames of 40 ms; {finals} final(s) came back")
    return 0 if sent else 1


if __name__ == "__main__":
    raise SystemExit(main())
