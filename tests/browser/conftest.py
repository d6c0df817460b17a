"""Browser fixtures: a real ``echopanel serve`` subprocess and Debian's Chromium driven by
Playwright (``executable_path``; Playwright never downloads a browser here), with Chromium's
fake microphone playing a WAV of the bundled JFK recording."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

CHROMIUM = Path(os.environ.get("ECHOPANEL_CHROMIUM", "/usr/bin/chromium"))
JFK = Path(__file__).resolve().parents[2] / "echopanel" / "data" / "jfk.flac"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Server:
    """``echopanel serve`` on a free loopback port, as a subprocess (log in a file)."""

    def __init__(self, log: Path, *args: str) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        self._sink = log.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "echopanel", "serve", "--port", str(self.port), *args],
            stdout=self._sink,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )

    def wait_ready(self, limit: float = 180.0) -> None:
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"echopanel serve exited {self.proc.returncode}: {self.log_text()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return
            time.sleep(0.2)
        pytest.fail(f"echopanel serve not ready: {self.log_text()}")

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def kill(self) -> None:
        """Stop it abruptly (SIGKILL): every connection drops without a close frame."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=20)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill()
        self._sink.close()


@pytest.fixture(scope="session")
def serve(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., Server]]:
    """Start servers on demand (``serve("--asr", "whisper", ...)``); all stopped at the end."""
    servers: list[Server] = []

    def _serve(*args: str) -> Server:
        log = tmp_path_factory.mktemp("serve") / "serve.log"
        server = Server(log, "--log-level", "info", *args)
        servers.append(server)
        server.wait_ready()
        return server

    yield _serve
    for server in servers:
        server.close()


def jfk_16k_mono() -> Any:
    """The bundled JFK recording (44.1 kHz stereo FLAC) as 16 kHz mono float32 samples."""
    import soundfile
    import soxr

    stereo, rate = soundfile.read(str(JFK), dtype="float32", always_2d=True)
    return soxr.resample(stereo.mean(axis=1), rate, 16_000, "VHQ")


@pytest.fixture(scope="session")
def jfk_wav(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The JFK recording as a 16 kHz mono 16-bit WAV, which Chromium's fake capture reads
    (and plays at its device rate: the page's worklet resamples it back to 16 kHz)."""
    import soundfile

    path = tmp_path_factory.mktemp("audio") / "jfk.wav"
    soundfile.write(str(path), jfk_16k_mono(), 16_000, subtype="PCM_16")
    return path


@pytest.fixture(scope="module")
def playwright() -> Iterator[Any]:
    """Playwright's sync API, for one module at a time: it keeps an asyncio loop running in
    this thread while open, which async tests of other modules cannot share."""
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="playwright not installed (pip install -e '.[dev]')"
    )
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} not installed (scripts/setup.sh installs Debian's chromium)")
    with sync_api.sync_playwright() as pw:
        yield pw


def _launch(playwright: Any, profile: Path, wav: Path, *, allow_media: bool) -> Any:
    media = ["--use-fake-ui-for-media-stream"] if allow_media else ["--deny-permission-prompts"]
    context = playwright.chromium.launch_persistent_context(
        str(profile),
        executable_path=str(CHROMIUM),
        headless=True,
        accept_downloads=True,
        viewport={"width": 1100, "height": 720},
        args=[
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            *media,
            "--use-fake-device-for-media-stream",
            f"--use-file-for-fake-audio-capture={wav}",
            # getDisplayMedia picks the (fake) screen, which comes with audio, without a picker
            "--auto-select-desktop-capture-source=Entire screen",
        ],
    )
    context.set_default_timeout(30_000)
    return context


@pytest.fixture
def browser(playwright: Any, jfk_wav: Path, tmp_path: Path) -> Iterator[Any]:
    """A fresh Chromium profile whose fake microphone plays ``jfk_wav`` (looping)."""
    context = _launch(playwright, tmp_path / "profile", jfk_wav, allow_media=True)
    try:
        yield context
    finally:
        context.close()
        shutil.rmtree(tmp_path / "profile", ignore_errors=True)


@pytest.fixture
def denying_browser(playwright: Any, jfk_wav: Path, tmp_path: Path) -> Iterator[Any]:
    """Like ``browser``, but every permission prompt is answered "block"."""
    context = _launch(playwright, tmp_path / "profile-deny", jfk_wav, allow_media=False)
    try:
        yield context
    finally:
        context.close()
        shutil.rmtree(tmp_path / "profile-deny", ignore_errors=True)
