"""``echopanel serve`` as a subprocess: starts, serves /health, exits cleanly on signals."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import httpx
import pytest


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _serve(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "echopanel", "serve", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, **(env or {})},
    )


def _wait_health(url: str, proc: subprocess.Popen[str], limit: float = 20.0) -> httpx.Response:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
        try:
            response = httpx.get(f"{url}/health", timeout=1.0)
            if response.status_code == 200:
                return response
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise AssertionError("server did not become healthy")


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_serve_starts_answers_health_and_exits_cleanly(sig):
    port = _free_port()
    proc = _serve("--asr", "fake", "--port", str(port), env={"ECHOPANEL_TOKEN": "envtok"})
    try:
        health = _wait_health(f"http://127.0.0.1:{port}", proc)
        assert "asr" not in health.json() and "envtok" not in health.text
        detail = httpx.get(
            f"http://127.0.0.1:{port}/health", headers={"authorization": "Bearer envtok"}
        )
        assert detail.json()["asr"]["name"] == "fake" and "envtok" not in detail.text
        metrics = httpx.get(
            f"http://127.0.0.1:{port}/metrics", headers={"authorization": "Bearer envtok"}
        )
        assert metrics.status_code == 200 and "echopanel_active_sessions" in metrics.text
        proc.send_signal(sig)
        out, _ = proc.communicate(timeout=15)
        assert proc.returncode == 0, out
        assert "Shutting down" in out or "Finished server process" in out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def test_serve_refuses_public_host_without_token():
    proc = _serve("--asr", "fake", "--host", "0.0.0.0", env={"ECHOPANEL_TOKEN": ""})
    out, _ = proc.communicate(timeout=20)
    assert proc.returncode == 2
    assert "without a token" in out
