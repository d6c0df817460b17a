"""Shared pytest configuration: async tests run on asyncio through anyio's plugin."""

from __future__ import annotations

import pytest


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session")
def portaudio() -> None:
    """Skip (with the reason) when PortAudio is missing, as the PulseAudio tests do when the
    ``pulseaudio`` binary is: ``sounddevice`` cannot load without ``libportaudio2``."""
    from echopanel.capture.devices import import_sounddevice

    try:
        import_sounddevice()
    except OSError as exc:
        pytest.skip(f"{exc} (scripts/setup.sh installs libportaudio2)")
