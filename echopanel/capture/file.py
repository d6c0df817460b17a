"""``FileCapture``: an audio file (wav, flac, mp3, ogg… anything libsndfile reads) as a source.

The file is converted to 16 kHz mono s16le frames of ``frame_ms`` ms and delivered either
paced in real time (``realtime=True``: a frame is released when its audio would have been
heard, on an absolute schedule, so there is no drift) or as fast as the consumer takes
them (``realtime=False``, or ``speed`` > 1 to run faster than real time). The stream ends
at the end of the file, which lets a session stop on its own.
"""

from __future__ import annotations

import math
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import soundfile

from echopanel.capture._pcm import (
    DEFAULT_FRAME_MS,
    Framer,
    PcmConverter,
    capture_error,
    frame_bytes,
)
from echopanel.ports import Capture
from echopanel.protocol.messages import SAMPLE_RATE, SOURCES, Source

__all__ = ["FileCapture"]

_READ_SECONDS = 1.0


class FileCapture(Capture):
    """Plays ``path`` as the ``source`` stream (``system`` by default)."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        source: Source = "system",
        *,
        realtime: bool = True,
        speed: float = 1.0,
        frame_ms: int = DEFAULT_FRAME_MS,
    ) -> None:
        if source not in SOURCES:
            raise ValueError(f"source must be one of {SOURCES}, got {source!r}")
        if not (speed > 0 and math.isfinite(speed)):
            raise ValueError("speed must be a positive number")
        self.path = Path(path)
        self.source = source
        self.realtime = realtime
        self.speed = speed
        self.frame_ms = frame_ms
        self._frame_bytes = frame_bytes(frame_ms)
        self._file: soundfile.SoundFile | None = None
        self._stopped = False
        self._reading = False
        self._frames_called = False
        self.samplerate: int | None = None
        self.channels: int | None = None
        self.duration: float | None = None
        self.delivered_seconds = 0.0

    def __repr__(self) -> str:
        return f"FileCapture({str(self.path)!r}, source={self.source!r})"

    async def start(self) -> None:
        if self._file is not None:
            return
        if self._stopped:
            raise capture_error(self.source, "capture was already stopped")
        try:
            self._file = await anyio.to_thread.run_sync(self._open)
        except (OSError, RuntimeError, soundfile.LibsndfileError) as exc:
            raise capture_error(self.source, f"cannot read {self.path}: {_reason(exc)}") from None

    def _open(self) -> soundfile.SoundFile:
        if not self.path.is_file():
            raise OSError(f"no such file: {self.path}")
        handle = soundfile.SoundFile(str(self.path))
        self.samplerate = int(handle.samplerate)
        self.channels = int(handle.channels)
        self.duration = handle.frames / handle.samplerate if handle.frames >= 0 else None
        return handle

    async def frames(self) -> AsyncIterator[bytes]:
        if self._frames_called:
            raise RuntimeError("frames() may be called only once")
        self._frames_called = True
        handle = self._file
        if handle is None:
            raise capture_error(self.source, "capture not started")
        converter = PcmConverter(handle.samplerate)
        framer = Framer(self._frame_bytes)
        block_frames = max(1, int(handle.samplerate * _READ_SECONDS))
        clock_start = anyio.current_time()
        emitted = 0.0
        while not self._stopped:
            self._reading = True
            try:
                block = await anyio.to_thread.run_sync(self._read, handle, block_frames)
            except (OSError, RuntimeError, soundfile.LibsndfileError) as exc:
                if self._stopped:
                    break
                raise capture_error(self.source, f"reading {self.path}: {_reason(exc)}") from None
            finally:
                self._reading = False
                if self._stopped:
                    self._close(handle)
            last = block is None
            pcm = converter.flush() if last else converter.push(block)
            out = framer.push(pcm) + (framer.flush() if last else [])
            for frame in out:
                if self._stopped:
                    break
                seconds = len(frame) / (2 * SAMPLE_RATE)
                if self.realtime:
                    due = clock_start + emitted / self.speed
                    delay = due - anyio.current_time()
                    if delay > 0:
                        await anyio.sleep(delay)
                    else:
                        await anyio.lowlevel.checkpoint()
                else:
                    await anyio.lowlevel.checkpoint()
                emitted += seconds
                self.delivered_seconds = emitted
                yield frame
            if last:
                break

    @staticmethod
    def _read(handle: soundfile.SoundFile, count: int) -> Any:
        if handle.closed:
            return None
        data = handle.read(count, dtype="float32", always_2d=True)
        return data if len(data) else None

    async def stop(self) -> None:
        self._stopped = True
        handle, self._file = self._file, None
        if handle is not None and not self._reading:
            self._close(handle)

    @staticmethod
    def _close(handle: soundfile.SoundFile) -> None:
        if not handle.closed:
            handle.close()


def _reason(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.replace("Error opening ", "").strip()
