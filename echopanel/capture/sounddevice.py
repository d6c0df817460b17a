"""``SoundDeviceCapture``: microphone or system audio through PortAudio (``sounddevice``).

PortAudio calls :meth:`SoundDeviceCapture._callback` on its own thread every block. The
callback only copies the block into a bounded queue (:class:`ThreadBridge`), so it never
waits on Python's event loop; when the queue is full the block is dropped and counted in
:attr:`SoundDeviceCapture.overflows`, together with the overflows PortAudio itself reports.
The consumer task converts blocks (any rate, any channel count) into 16 kHz mono s16le
frames of ``frame_ms`` ms with ``soxr``.

Which device is opened is decided by :func:`echopanel.capture.devices.choose_device`;
on Linux, system audio is a PulseAudio monitor source routed through the ``pulse`` ALSA
device with ``PULSE_SOURCE``.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from typing import Any

import anyio
import numpy as np

from echopanel.capture._bridge import ThreadBridge
from echopanel.capture._pcm import (
    DEFAULT_FRAME_MS,
    Framer,
    PcmConverter,
    capture_error,
    frame_bytes,
)
from echopanel.capture.devices import DeviceChoice, choose_device, import_sounddevice
from echopanel.ports import Capture
from echopanel.protocol.messages import SOURCES, Source

__all__ = ["SoundDeviceCapture"]

#: ``PULSE_SOURCE`` is process-wide: streams are opened one at a time while it is set.
_ENV_LOCK = threading.Lock()
_FALLBACK_RATES = (48000.0, 44100.0, 32000.0, 16000.0)


@contextmanager
def _pulse_source(name: str | None) -> Iterator[None]:
    if name is None:
        yield
        return
    with _ENV_LOCK:
        previous = os.environ.get("PULSE_SOURCE")
        os.environ["PULSE_SOURCE"] = name
        try:
            yield
        finally:
            if previous is None:
                os.environ.pop("PULSE_SOURCE", None)
            else:
                os.environ["PULSE_SOURCE"] = previous


class SoundDeviceCapture(Capture):
    """One live source (``system`` or ``mic``) from a PortAudio input device.

    ``device`` is a PortAudio index or (partial) name, a PulseAudio source name on Linux
    (e.g. ``alsa_output.pci-0000_00_1f.3.analog-stereo.monitor``), or None for the default
    (the default sink's monitor for ``system``, the default input for ``mic``).
    ``queue_ms`` bounds the audio held between the callback and the consumer; beyond it
    blocks are dropped and counted. ``stall_timeout`` turns a device that stops delivering
    into a capture error instead of a silent hang.
    """

    def __init__(
        self,
        source: Source,
        *,
        device: str | int | None = None,
        frame_ms: int = DEFAULT_FRAME_MS,
        queue_ms: int = 2000,
        samplerate: float | None = None,
        channels: int | None = None,
        stall_timeout: float | None = 5.0,
    ) -> None:
        if source not in SOURCES:
            raise ValueError(f"source must be one of {SOURCES}, got {source!r}")
        self.source = source
        self.device = device
        self.frame_ms = frame_ms
        self._frame_bytes = frame_bytes(frame_ms)
        self._samplerate = samplerate
        self._channels = channels
        self._stall_timeout = stall_timeout
        self._bridge: ThreadBridge[np.ndarray[Any, Any]] = ThreadBridge(
            max(2, queue_ms // frame_ms)
        )
        self._stream: Any = None
        self._device_overflows = 0
        self._started = False
        self._stopping = False
        self._frames_called = False
        self.choice: DeviceChoice | None = None
        self.stream_rate: float | None = None
        self.stream_channels: int | None = None

    def __repr__(self) -> str:
        return f"SoundDeviceCapture(source={self.source!r}, device={self.device!r})"

    @property
    def overflows(self) -> int:
        return self._bridge.dropped + self._device_overflows

    # ------------------------------------------------------------------ PortAudio thread

    def _callback(self, indata: Any, frames: int, time: Any, status: Any) -> None:
        if status.input_overflow:
            self._device_overflows += 1
        self._bridge.push(indata.copy())

    def _finished_callback(self) -> None:
        if not self._stopping:
            self._bridge.finish(error="the audio stream stopped unexpectedly")
        else:
            self._bridge.finish()

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        if self._started:
            return
        if self._stopping:
            raise capture_error(self.source, "capture was already stopped")
        self._bridge.bind()
        try:
            stream = await anyio.to_thread.run_sync(self._open)
        except LookupError as exc:
            raise capture_error(self.source, str(exc.args[0] if exc.args else exc)) from None
        except OSError as exc:
            raise capture_error(self.source, str(exc)) from None
        if self._stopping:  # stop() ran while the device was opening: release it here
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(self._close_stream, stream)
            raise capture_error(self.source, "capture was stopped while starting")
        self._stream = stream
        self._started = True

    def _open(self) -> Any:
        sd = import_sounddevice()
        choice = choose_device(self.source, self.device)
        self.choice = choice
        info = sd.query_devices(choice.device, "input")
        channels = self._channels or max(1, min(2, int(info["max_input_channels"])))
        rates = (
            [self._samplerate]
            if self._samplerate
            else [
                float(info["default_samplerate"]),
                *(r for r in _FALLBACK_RATES if r != float(info["default_samplerate"])),
            ]
        )
        extra = None
        if sys.platform == "win32":  # pragma: no cover - exercised on Windows only
            hostapi = sd.query_hostapis(int(info["hostapi"]))["name"]
            if "WASAPI" in hostapi:
                extra = sd.WasapiSettings(auto_convert=True)
        last_error: Exception | None = None
        with _pulse_source(choice.pulse_source):
            for rate in rates:
                try:
                    stream = sd.InputStream(
                        device=choice.device,
                        samplerate=rate,
                        channels=channels,
                        dtype="float32",
                        blocksize=max(1, int(rate * self.frame_ms / 1000)),
                        callback=self._callback,
                        finished_callback=self._finished_callback,
                        extra_settings=extra,
                    )
                except (sd.PortAudioError, ValueError) as exc:
                    last_error = exc
                    continue
                try:
                    stream.start()
                except sd.PortAudioError as exc:
                    stream.close(ignore_errors=True)
                    last_error = exc
                    continue
                self.stream_rate = float(stream.samplerate)
                self.stream_channels = channels
                return stream
        where = choice.description or str(choice.device)
        raise OSError(f"cannot open input device {where!r}: {last_error}")

    async def frames(self) -> AsyncIterator[bytes]:
        if self._frames_called:
            raise RuntimeError("frames() may be called only once")
        self._frames_called = True
        if not self._started:
            raise capture_error(self.source, "capture not started")
        converter = PcmConverter(self.stream_rate or 16000.0)
        framer = Framer(self._frame_bytes)
        while True:
            batch: list[np.ndarray[Any, Any]] | None = None
            with anyio.move_on_after(self._stall_timeout):
                batch = await self._bridge.get_batch()
            if batch is None:
                raise capture_error(
                    self.source,
                    f"no audio from the device for {self._stall_timeout:g} s",
                )
            if not batch:
                break
            for block in batch:
                for frame in framer.push(converter.push(block)):
                    yield frame
        if self._bridge.error is not None and not self._stopping:
            raise capture_error(self.source, self._bridge.error)
        for frame in framer.push(converter.flush()):
            yield frame
        for frame in framer.flush():
            yield frame

    async def stop(self) -> None:
        if self._stopping:
            return
        self._stopping = True
        stream, self._stream = self._stream, None
        if stream is not None:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(self._close_stream, stream)
        self._bridge.finish()

    @staticmethod
    def _close_stream(stream: Any) -> None:
        try:
            stream.abort(ignore_errors=True)
        finally:
            stream.close(ignore_errors=True)
