"""Fixtures for the capture tests: audio files made on the fly and a private PulseAudio."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import soundfile

from echopanel.capture import devices
from echopanel.capture.pulse import PulseServer, PulseUnavailable, private_pulse_server


def write_tone(
    path: Path, *, seconds: float, rate: int, channels: int, freq: float = 440.0, **kw: object
) -> Path:
    t = np.arange(int(seconds * rate)) / rate
    wave = 0.5 * np.sin(2 * np.pi * freq * t)
    data = np.repeat(wave[:, None], channels, axis=1) if channels > 1 else wave
    soundfile.write(str(path), data, rate, **kw)  # type: ignore[arg-type]
    return path


ToneWriter = Callable[..., Path]


@pytest.fixture
def write_tone_file() -> ToneWriter:
    """``write_tone_file(path, seconds=, rate=, channels=, freq=440, **soundfile_kwargs)``."""
    return write_tone


@pytest.fixture
def tone_44k_stereo(tmp_path: Path) -> Path:
    return write_tone(tmp_path / "tone.wav", seconds=1.0, rate=44100, channels=2)


@pytest.fixture
def pulse(monkeypatch: pytest.MonkeyPatch, portaudio: None) -> Iterator[PulseServer]:
    """A private PulseAudio server with a null sink; PortAudio re-enumerated around it
    (skipped, with the reason, without PortAudio or the ``pulseaudio`` binary)."""
    if shutil.which("pulseaudio") is None:
        pytest.skip("pulseaudio binary not installed (scripts/setup.sh installs it)")
    try:
        server_cm = private_pulse_server("echopanel_unit")
        server = server_cm.__enter__()
    except PulseUnavailable as exc:
        pytest.fail(f"private PulseAudio server did not start: {exc}")
    try:
        for key, value in server.env.items():
            monkeypatch.setenv(key, value)
        monkeypatch.delenv("PULSE_SOURCE", raising=False)
        devices.refresh()
        yield server
    finally:
        server_cm.__exit__(None, None, None)
        monkeypatch.undo()
        devices.refresh()
