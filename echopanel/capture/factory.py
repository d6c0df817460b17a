"""Composition helpers: which :class:`~echopanel.ports.Capture` a session gets per source.

``default_capture_factory(source)`` is what :class:`echopanel.client.Session` uses when it
is given no ``capture_factory``: a live :class:`SoundDeviceCapture` on the default device.
:func:`make_capture_factory` builds a factory with options (devices per source, a file).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping

from echopanel.capture._pcm import DEFAULT_FRAME_MS
from echopanel.capture.file import FileCapture
from echopanel.capture.sounddevice import SoundDeviceCapture
from echopanel.ports import Capture
from echopanel.protocol.messages import Source

__all__ = ["CaptureFactory", "default_capture_factory", "make_capture_factory"]

CaptureFactory = Callable[[Source], Capture]


def default_capture_factory(source: Source) -> Capture:
    """A live capture of ``source`` on the OS default device for it."""
    return SoundDeviceCapture(source)


def make_capture_factory(
    *,
    devices: Mapping[Source, str | int] | None = None,
    file: str | os.PathLike[str] | None = None,
    realtime: bool = True,
    speed: float = 1.0,
    frame_ms: int = DEFAULT_FRAME_MS,
) -> CaptureFactory:
    """A factory with options.

    With ``file`` every source plays that file (:class:`FileCapture`, paced in real time
    unless ``realtime`` is False); otherwise each source opens its device from ``devices``
    (default device when absent).
    """
    chosen = dict(devices or {})

    def factory(source: Source) -> Capture:
        if file is not None:
            return FileCapture(file, source, realtime=realtime, speed=speed, frame_ms=frame_ms)
        return SoundDeviceCapture(source, device=chosen.get(source), frame_ms=frame_ms)

    return factory
