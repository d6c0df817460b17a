"""Audio capture adapters (the real edges of the ``Capture`` and ``PermissionGate`` ports).

* :class:`SoundDeviceCapture`: microphone or system audio through PortAudio
  (CoreAudio / PulseAudio-ALSA / WASAPI); system audio comes from a loopback device.
* :class:`FileCapture`: a wav/flac/mp3 file as a source, paced in real time or not.
* Permission gates: :class:`MacPermissionGate` (real macOS checks, ``[macos]`` extra),
  :class:`DevicePermissionGate` (elsewhere: the device exists), :class:`GrantingPermissionGate`.
* :func:`default_capture_factory` / :func:`default_permission_gate`: what a
  :class:`echopanel.client.Session` uses when given none.

Every adapter converts to 16 kHz mono s16le frames of 20-100 ms and reports failures as
:class:`~echopanel.errors.CaptureError` (``system_capture_failed`` /
``microphone_capture_failed``) carrying the underlying reason.
"""

from __future__ import annotations

from echopanel.capture._pcm import (
    DEFAULT_FRAME_MS,
    MAX_FRAME_MS,
    MIN_FRAME_MS,
    Framer,
    PcmConverter,
    capture_error,
    frame_bytes,
)
from echopanel.capture.factory import CaptureFactory, default_capture_factory, make_capture_factory
from echopanel.capture.file import FileCapture
from echopanel.capture.permissions import (
    DevicePermissionGate,
    GrantingPermissionGate,
    MacPermissionGate,
    default_permission_gate,
)
from echopanel.capture.sounddevice import SoundDeviceCapture

__all__ = [
    "DEFAULT_FRAME_MS",
    "MAX_FRAME_MS",
    "MIN_FRAME_MS",
    "CaptureFactory",
    "DevicePermissionGate",
    "FileCapture",
    "Framer",
    "GrantingPermissionGate",
    "MacPermissionGate",
    "PcmConverter",
    "SoundDeviceCapture",
    "capture_error",
    "default_capture_factory",
    "default_permission_gate",
    "frame_bytes",
    "make_capture_factory",
]
