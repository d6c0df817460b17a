"""``FakeCapture``: scripted PCM frames, scripted failures, start/stop recorded."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Mapping
from typing import Any

import anyio
import anyio.lowlevel

from echopanel.errors import CaptureError, ErrorCode
from echopanel.ports import Capture
from echopanel.protocol.messages import Source

__all__ = ["FakeCapture", "FakeCaptureFactory", "tone_frames"]

_CODES: dict[Source, ErrorCode] = {
    "system": ErrorCode.SYSTEM_CAPTURE_FAILED,
    "mic": ErrorCode.MICROPHONE_CAPTURE_FAILED,
}


def tone_frames(count: int, *, ms: int = 20, value: int = 1000) -> list[bytes]:
    """``count`` frames of ``ms`` milliseconds of a constant PCM s16le sample."""
    sample = int(value).to_bytes(2, "little", signed=True)
    return [sample * (16 * ms) for _ in range(count)]


class FakeCapture(Capture):
    """Yields ``frames`` (one every ``interval`` seconds) after ``start()``.

    ``end=True`` ends the stream after the script (a file); ``end=False`` then waits until
    ``stop()`` (a device). ``fail_on_start`` (a message) makes ``start()`` raise
    ``CaptureError``; ``fail_after`` makes ``frames()`` raise after that many frames.
    ``start_delay`` / ``hang_on_start`` slow or block ``start()``.
    """

    def __init__(
        self,
        source: Source,
        frames: Iterable[bytes] = (),
        *,
        interval: float = 0.0,
        end: bool = False,
        fail_on_start: str | None = None,
        fail_after: int | None = None,
        start_delay: float = 0.0,
        hang_on_start: bool = False,
    ) -> None:
        self.source = source
        self.script = list(frames)
        self.interval = interval
        self.end = end
        self.fail_on_start = fail_on_start
        self.fail_after = fail_after
        self.start_delay = start_delay
        self.hang_on_start = hang_on_start
        self.started = False
        self.stopped = False
        self.start_calls = 0
        self.stop_calls = 0
        self.yielded = 0
        self._stop_event: anyio.Event | None = None

    def _stop_evt(self) -> anyio.Event:
        if self._stop_event is None:
            self._stop_event = anyio.Event()
        return self._stop_event

    @property
    def running(self) -> bool:
        return self.started and not self.stopped

    async def start(self) -> None:
        self.start_calls += 1
        self._stop_evt()
        if self.hang_on_start:
            await anyio.sleep_forever()
        if self.start_delay:
            await anyio.sleep(self.start_delay)
        if self.fail_on_start is not None:
            raise CaptureError(_CODES[self.source], self.fail_on_start)
        self.started = True

    async def frames(self) -> AsyncIterator[bytes]:
        stop = self._stop_evt()
        for index, frame in enumerate(self.script):
            if self.fail_after is not None and index >= self.fail_after:
                raise CaptureError(_CODES[self.source], "device lost (fake)")
            if stop.is_set():
                return
            self.yielded += 1
            yield frame
            if self.interval:
                with anyio.move_on_after(self.interval):
                    await stop.wait()
            else:
                await anyio.lowlevel.checkpoint()
        if self.fail_after is not None and self.fail_after >= len(self.script):
            raise CaptureError(_CODES[self.source], "device lost (fake)")
        if not self.end:
            await stop.wait()

    async def stop(self) -> None:
        self.stop_calls += 1
        self.stopped = True
        self._stop_evt().set()


class FakeCaptureFactory:
    """``Callable[[Source], Capture]`` making one :class:`FakeCapture` per call.

    ``per_source`` gives keyword arguments of :class:`FakeCapture` per source; ``made``
    lists every capture created (one per source per attempt).
    """

    def __init__(self, per_source: Mapping[Source, Mapping[str, Any]] | None = None, **common: Any):
        self.per_source = dict(per_source or {})
        self.common = common
        self.made: list[FakeCapture] = []

    def __call__(self, source: Source) -> FakeCapture:
        kwargs = {**self.common, **self.per_source.get(source, {})}
        capture = FakeCapture(source, **kwargs)
        self.made.append(capture)
        return capture

    def of(self, source: Source) -> list[FakeCapture]:
        return [c for c in self.made if c.source == source]

    @property
    def all_stopped(self) -> bool:
        """Every capture that was asked to start has been stopped."""
        return all(c.stopped for c in self.made if c.start_calls)
