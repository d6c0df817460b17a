"""Finding audio devices: PortAudio (through sounddevice) and PulseAudio sources (``pactl``).

System audio is captured from a loopback device:

* Linux: a PulseAudio (or PipeWire-pulse) *monitor* source, ``<sink>.monitor``, opened
  through PortAudio's ALSA ``pulse`` device with ``PULSE_SOURCE`` naming the source;
* macOS: a loopback input device such as BlackHole, Loopback or Soundflower;
* Windows: a WASAPI loopback input (PortAudio lists them as ``... [Loopback]``).

``sounddevice`` is imported lazily: PortAudio enumerates devices once, when it is
initialised, and :func:`refresh` re-initialises it after the audio server changed
(e.g. after ``PULSE_SERVER`` / ``PULSE_RUNTIME_PATH`` were set).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from types import ModuleType
from typing import Any

import attrs

__all__ = [
    "LOOPBACK_NAME_HINTS",
    "DeviceChoice",
    "PulseSource",
    "choose_device",
    "import_sounddevice",
    "input_devices",
    "pulse_default_monitor",
    "pulse_sources",
    "refresh",
]

#: Substrings (lower case) of the names of well-known loopback input devices.
LOOPBACK_NAME_HINTS = ("blackhole", "loopback", "soundflower", "monitor of", "stereo mix")


def import_sounddevice() -> ModuleType:
    """Import ``sounddevice``; raises OSError with a clear reason when PortAudio is missing."""
    try:
        import sounddevice
    except OSError as exc:  # PortAudio library not found
        raise OSError(
            f"PortAudio is not available ({exc}); install it (Debian: apt-get install "
            "libportaudio2)"
        ) from None
    module: ModuleType = sounddevice
    return module


def refresh() -> None:
    """Re-initialise PortAudio so it enumerates the devices present now."""
    sd = import_sounddevice()
    sd._terminate()
    sd._initialize()


def input_devices() -> list[dict[str, Any]]:
    """Every PortAudio device with at least one input channel (with its ``hostapi_name``)."""
    sd = import_sounddevice()
    hostapis = sd.query_hostapis()
    found: list[dict[str, Any]] = []
    for device in sd.query_devices():
        if int(device["max_input_channels"]) > 0:
            info = dict(device)
            info["hostapi_name"] = hostapis[int(device["hostapi"])]["name"]
            found.append(info)
    return found


# --------------------------------------------------------------------------- PulseAudio


@attrs.frozen(kw_only=True)
class PulseSource:
    """One PulseAudio source as ``pactl list short sources`` shows it."""

    name: str
    spec: str = ""
    state: str = ""

    @property
    def is_monitor(self) -> bool:
        return self.name.endswith(".monitor")


def _pactl(*args: str) -> str | None:
    pactl = shutil.which("pactl")
    if pactl is None:
        return None
    try:
        done = subprocess.run(
            [pactl, *args], capture_output=True, text=True, timeout=5, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout if done.returncode == 0 else None


def pulse_sources() -> list[PulseSource] | None:
    """PulseAudio sources, or None when ``pactl`` is missing or no server answers."""
    out = _pactl("list", "short", "sources")
    if out is None:
        return None
    sources = []
    for line in out.splitlines():
        parts = line.split("\t")
        if len(parts) >= 2 and parts[1]:
            sources.append(
                PulseSource(
                    name=parts[1],
                    spec=parts[3] if len(parts) > 3 else "",
                    state=parts[4] if len(parts) > 4 else "",
                )
            )
    return sources


def pulse_default_monitor() -> str | None:
    """The monitor of the default sink if it exists, else the first monitor, else None."""
    sources = pulse_sources()
    if not sources:
        return None
    monitors = [s.name for s in sources if s.is_monitor]
    if not monitors:
        return None
    info = _pactl("info") or ""
    for line in info.splitlines():
        if line.startswith("Default Sink:"):
            candidate = line.split(":", 1)[1].strip() + ".monitor"
            if candidate in monitors:
                return candidate
    return monitors[0]


# --------------------------------------------------------------------------- choosing


@attrs.frozen(kw_only=True)
class DeviceChoice:
    """What to open: a PortAudio ``device`` (index, name or None for the default) and,
    on Linux, the PulseAudio source to route to it through ``PULSE_SOURCE``."""

    device: int | str | None
    pulse_source: str | None = None
    description: str = ""


def _find_portaudio(device: int | str) -> int:
    """Index of the PortAudio input device ``device`` (index, exact or partial name)."""
    sd = import_sounddevice()
    try:
        info = sd.query_devices(device, "input")
    except (ValueError, sd.PortAudioError) as exc:
        raise LookupError(str(exc).splitlines()[0]) from None
    return int(info["index"])


def choose_device(source: str, device: int | str | None) -> DeviceChoice:
    """Resolve the user's ``device`` for ``source`` (``system`` or ``mic``).

    Raises LookupError with a message a person can act on when nothing fits.
    """
    if isinstance(device, str) and device.strip().isdigit():
        device = int(device)
    if sys.platform.startswith("linux"):
        return _choose_linux(source, device)
    if device is not None:
        return DeviceChoice(device=_find_portaudio(device), description=str(device))
    if source == "mic":
        return DeviceChoice(device=None, description="default input device")
    return _choose_loopback()


def _choose_loopback() -> DeviceChoice:
    devices = input_devices()
    if sys.platform == "win32":
        for d in devices:
            if "[loopback]" in d["name"].lower() and "wasapi" in d["hostapi_name"].lower():
                return DeviceChoice(device=int(d["index"]), description=d["name"])
    for d in devices:
        name = d["name"].lower()
        if any(hint in name for hint in LOOPBACK_NAME_HINTS):
            return DeviceChoice(device=int(d["index"]), description=d["name"])
    hint = (
        "install BlackHole (brew install blackhole-2ch) and route the output to it"
        if sys.platform == "darwin"
        else "enable a WASAPI loopback or 'Stereo Mix' input"
    )
    raise LookupError(f"no loopback input device found: {hint} (see docs/audio-setup.md)")


def _choose_linux(source: str, device: int | str | None) -> DeviceChoice:
    if isinstance(device, int):
        return DeviceChoice(device=_find_portaudio(device), description=f"device {device}")
    sources = pulse_sources()
    names = {s.name for s in sources or ()}
    if isinstance(device, str):
        is_pulse_name = device in names or device.endswith(".monitor") or device.startswith("@")
        if (
            is_pulse_name
            and sources is not None
            and not device.startswith("@")
            and (device not in names)
        ):
            raise LookupError(
                f"PulseAudio has no source named {device!r}; available: "
                + (", ".join(sorted(names)) or "none")
            )
        if is_pulse_name:
            return DeviceChoice(
                device=_pulse_portaudio_device(), pulse_source=device, description=device
            )
        return DeviceChoice(device=_find_portaudio(device), description=device)
    if source == "mic":
        env_source = os.environ.get("PULSE_SOURCE")
        if env_source and env_source.endswith(".monitor") and sources is not None:
            # the user's PULSE_SOURCE names a monitor: capture the default source instead
            return DeviceChoice(
                device=_pulse_portaudio_device(),
                pulse_source="@DEFAULT_SOURCE@",
                description="default PulseAudio source",
            )
        return DeviceChoice(device=None, description="default input device")
    if sources is None:
        env_source = os.environ.get("PULSE_SOURCE")
        if env_source:
            return DeviceChoice(
                device=_pulse_portaudio_device(), pulse_source=env_source, description=env_source
            )
        raise LookupError(
            "no PulseAudio server answered (is pulseaudio or pipewire-pulse running, and is "
            "pactl installed?): system audio is captured from a PulseAudio monitor source "
            "(see docs/audio-setup.md)"
        )
    monitor = pulse_default_monitor()
    if monitor is None:
        raise LookupError(
            "PulseAudio has no monitor source: there is no output sink to capture "
            "(load one with: pactl load-module module-null-sink sink_name=echopanel)"
        )
    return DeviceChoice(device=_pulse_portaudio_device(), pulse_source=monitor, description=monitor)


def _pulse_portaudio_device() -> int:
    for d in input_devices():
        if d["name"] == "pulse":
            return int(d["index"])
    raise LookupError(
        "PortAudio has no 'pulse' ALSA device: install the ALSA PulseAudio plugin "
        "(Debian: apt-get install libasound2-plugins) and restart the program"
    )
