"""End-to-end fixtures: real processes (``echopanel serve``, ``listen``, ``demo``), the real
Whisper model, and a private PulseAudio server with a null sink."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from echopanel.capture.pulse import PulseServer, PulseUnavailable, private_pulse_server

from ._helpers import PHRASE, child_env, cli, free_port


@pytest.fixture(scope="session")
def whisper_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``echopanel serve`` with the real Whisper model, as a subprocess; yields ws://…"""
    port = free_port()
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    with log.open("wb") as sink:
        proc = subprocess.Popen(
            cli("serve", "--port", str(port), "--asr", "whisper", "--log-level", "warning"),
            stdout=sink,
            stderr=subprocess.STDOUT,
            env=child_env(),
        )
        try:
            deadline = time.monotonic() + 180
            while True:
                if proc.poll() is not None:
                    pytest.fail(f"echopanel serve exited {proc.returncode}: {log.read_text()}")
                try:
                    if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    pytest.fail(f"echopanel serve not ready: {log.read_text()}")
                time.sleep(0.2)
            yield f"ws://127.0.0.1:{port}"
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.fixture
def pulse(portaudio: None) -> Iterator[PulseServer]:
    """A private PulseAudio server (own runtime dir) with a null sink; killed at teardown
    (skipped, with the reason, without PortAudio or the ``pulseaudio`` binary)."""
    if shutil.which("pulseaudio") is None:
        pytest.skip("pulseaudio binary not installed (scripts/setup.sh installs it)")
    try:
        with private_pulse_server("echopanel_e2e") as server:
            yield server
    except PulseUnavailable as exc:
        pytest.fail(f"private PulseAudio server did not start: {exc}")


@pytest.fixture(scope="session")
def spoken_phrase(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The test phrase spoken by espeak-ng (22.05 kHz mono wav)."""
    espeak = shutil.which("espeak-ng")
    if espeak is None:
        pytest.skip("espeak-ng not installed (scripts/setup.sh installs it)")
    path = tmp_path_factory.mktemp("speech") / "phrase.wav"
    subprocess.run([espeak, "-s", "150", "-w", str(path), PHRASE], check=True)
    return path
