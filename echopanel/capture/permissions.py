"""Permission gates: what the OS must allow before a source can be captured.

* :class:`MacPermissionGate` (macOS): the real checks. Microphone authorization through
  AVFoundation (``AVCaptureDevice``) and Screen Recording access (needed for system audio)
  through Quartz (``CGPreflightScreenCaptureAccess`` / ``CGRequestScreenCaptureAccess``).
  Needs the optional extra ``pip install 'echopanel[macos]'`` (pyobjc); the imports are
  guarded so the module loads everywhere.
* :class:`DevicePermissionGate` (Linux, Windows, and macOS without pyobjc): these systems
  have no permission prompt for audio, so the honest check is that the device the source
  needs exists, and when it does not, the answer says what is missing and how to add it.
* :class:`GrantingPermissionGate`: grants everything; for sources that need no OS
  permission (files).
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable, Mapping

import anyio

from echopanel.capture import devices
from echopanel.ports import PermissionAnswer, PermissionGate, PermissionKind
from echopanel.protocol.messages import Source

__all__ = [
    "DevicePermissionGate",
    "GrantingPermissionGate",
    "MacPermissionGate",
    "default_permission_gate",
    "macos_frameworks_available",
]

_SETUP = "see docs/audio-setup.md"


class GrantingPermissionGate(PermissionGate):
    """Grants every request (a file source needs no OS permission)."""

    async def request(self, kind: PermissionKind) -> PermissionAnswer:
        return PermissionAnswer(granted=True, detail="no OS permission needed")


class DevicePermissionGate(PermissionGate):
    """Grants a request when the device it stands for exists; explains what is missing.

    ``screen_recording`` stands for system audio: a loopback device must exist (a
    PulseAudio monitor source on Linux, BlackHole or similar on macOS, a WASAPI loopback
    on Windows). ``microphone`` needs an input device that is not a loopback.
    ``devices`` holds the user's explicit choice per source (``system`` / ``mic``), which
    then must exist.
    """

    def __init__(self, *, devices: Mapping[Source, str | int] | None = None) -> None:
        self.devices = dict(devices or {})

    async def request(self, kind: PermissionKind) -> PermissionAnswer:
        return await anyio.to_thread.run_sync(self.check, kind)

    def check(self, kind: PermissionKind) -> PermissionAnswer:
        """The synchronous check (PortAudio and ``pactl`` queries)."""
        source: Source = "system" if kind is PermissionKind.SCREEN_RECORDING else "mic"
        try:
            choice = devices.choose_device(source, self.devices.get(source))
        except LookupError as exc:
            return PermissionAnswer(granted=False, detail=str(exc.args[0] if exc.args else exc))
        except OSError as exc:
            return PermissionAnswer(granted=False, detail=str(exc))
        if source == "mic" and choice.device is None and choice.pulse_source is None:
            return self._check_default_mic()
        return PermissionAnswer(granted=True, detail=f"using {choice.description}")

    @staticmethod
    def _check_default_mic() -> PermissionAnswer:
        if sys.platform.startswith("linux"):
            sources = devices.pulse_sources()
            if sources is not None:
                inputs = [s.name for s in sources if not s.is_monitor]
                if not inputs:
                    return PermissionAnswer(
                        granted=False,
                        detail="PulseAudio has no input source (no microphone is connected); "
                        f"only monitors exist. Connect a microphone or pass --device ({_SETUP})",
                    )
                return PermissionAnswer(granted=True, detail=f"PulseAudio input {inputs[0]}")
        try:
            sd = devices.import_sounddevice()
            info = sd.query_devices(kind="input")
        except OSError as exc:
            return PermissionAnswer(granted=False, detail=str(exc))
        except Exception:
            return PermissionAnswer(
                granted=False, detail=f"no default input device (no microphone?) ({_SETUP})"
            )
        return PermissionAnswer(granted=True, detail=f"default input {info['name']}")


def macos_frameworks_available() -> bool:
    """True when pyobjc's AVFoundation and Quartz can be imported (the ``[macos]`` extra)."""
    try:
        import AVFoundation  # noqa: F401
        import Quartz  # noqa: F401
    except ImportError:
        return False
    return True


class MacPermissionGate(PermissionGate):  # pragma: no cover - runs on macOS only
    """The real macOS checks; asks the user when the status is not determined yet.

    ``timeout`` bounds how long a prompt may stay unanswered.
    """

    def __init__(self, *, timeout: float = 60.0) -> None:
        self.timeout = timeout

    async def request(self, kind: PermissionKind) -> PermissionAnswer:
        check: Callable[[], PermissionAnswer] = (
            self._microphone if kind is PermissionKind.MICROPHONE else self._screen_recording
        )
        return await anyio.to_thread.run_sync(check, abandon_on_cancel=True)

    def _microphone(self) -> PermissionAnswer:
        import AVFoundation

        media = AVFoundation.AVMediaTypeAudio
        status = AVFoundation.AVCaptureDevice.authorizationStatusForMediaType_(media)
        authorized, denied, restricted, not_determined = 3, 2, 1, 0
        if status == authorized:
            return PermissionAnswer(granted=True)
        if status == not_determined:
            done = threading.Event()
            result: list[bool] = []

            def handler(granted: bool) -> None:
                result.append(bool(granted))
                done.set()

            AVFoundation.AVCaptureDevice.requestAccessForMediaType_completionHandler_(
                media, handler
            )
            if done.wait(self.timeout) and result and result[0]:
                return PermissionAnswer(granted=True)
        why = "restricted by policy" if status == restricted else "denied"
        if status not in (denied, restricted):
            why = "not granted"
        return PermissionAnswer(
            granted=False,
            detail=f"microphone access {why}: open System Settings → Privacy & Security → "
            "Microphone and allow your terminal (or Python)",
        )

    def _screen_recording(self) -> PermissionAnswer:
        import Quartz

        if Quartz.CGPreflightScreenCaptureAccess():
            return PermissionAnswer(granted=True)
        if Quartz.CGRequestScreenCaptureAccess():
            return PermissionAnswer(granted=True)
        return PermissionAnswer(
            granted=False,
            detail="Screen Recording access is needed to capture system audio: open System "
            "Settings → Privacy & Security → Screen Recording, allow your terminal, then "
            "restart it",
        )


def default_permission_gate(*, devices: Mapping[Source, str | int] | None = None) -> PermissionGate:
    """The gate for this OS: the real macOS checks when available, else the device check.

    ``devices``: the user's device choice per source, checked by the device gate.
    """
    if sys.platform == "darwin" and macos_frameworks_available():  # pragma: no cover
        return MacPermissionGate()
    return DevicePermissionGate(devices=devices)
