"""``echopanel serve`` with TLS (a self-signed certificate made at test time) and the token
from ``ECHOPANEL_TOKEN``; ``--token`` on the command line is warned about (visible in ps)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

import anyio
import httpx
import pytest

from echopanel.client.transport import WebSocketTransport
from echopanel.errors import TransportError

pytestmark = pytest.mark.skipif(
    shutil.which("openssl") is None, reason="needs the openssl CLI (scripts/setup.sh installs it)"
)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def cert(tmp_path_factory) -> tuple[Path, Path]:
    directory = tmp_path_factory.mktemp("tls")
    certfile, keyfile = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            "-keyout", str(keyfile), "-out", str(certfile), "-subj", "/CN=localhost",
            "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
        ],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    return certfile, keyfile


def _serve(*args: str, env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "echopanel", "serve", "--asr", "fake", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, **env},
    )


def _stop(proc: subprocess.Popen[str]) -> str:
    if proc.poll() is None:
        proc.terminate()
    try:
        out, _ = proc.communicate(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
    return out


def _wait_health(url: str, proc: subprocess.Popen[str], verify: ssl.SSLContext | bool) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
        try:
            if httpx.get(f"{url}/health", timeout=1, verify=verify).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise AssertionError("server did not become healthy")


async def _session(
    url: str, client: httpx.AsyncClient, token: str, origin: str | None = None
) -> dict:
    transport = WebSocketTransport(client=client, ping_interval=None)
    headers = {"authorization": f"Bearer {token}"}
    if origin is not None:
        headers["origin"] = origin
    await transport.connect(url, headers)
    try:
        with anyio.fail_after(10):
            assert json.loads(await transport.receive())["state"] == "connected"
            start = {"type": "start", "session_id": "tls", "attempt_id": "a1", "sources": ["mic"]}
            await transport.send_text(json.dumps(start))
            while json.loads(await transport.receive()).get("state") != "streaming":
                pass
            for _ in range(20):
                await transport.send_bytes(b"EP\x01\x01" + b"\x01\x00" * 1600)
            await transport.send_text(json.dumps({"type": "stop", "session_id": "tls"}))
            while (message := json.loads(await transport.receive()))["type"] != "final_summary":
                pass
        return message
    finally:
        await transport.aclose()


def test_wss_with_a_self_signed_certificate_and_the_token_from_the_environment(cert):
    certfile, keyfile = cert
    port = _free_port()
    proc = _serve(
        "--port", str(port), "--ssl-certfile", str(certfile), "--ssl-keyfile", str(keyfile),
        env={"ECHOPANEL_TOKEN": "tls-token"},
    )  # fmt: skip
    try:
        trusted = ssl.create_default_context(cafile=str(certfile))
        _wait_health(f"https://127.0.0.1:{port}", proc, trusted)

        async def main() -> None:
            async with httpx.AsyncClient(verify=trusted) as client:
                summary = await _session(f"wss://127.0.0.1:{port}", client, "tls-token")
                assert summary["transcript"] and summary["session_id"] == "tls"
                # a page served over https by this server is its own origin; http is not
                own = f"https://127.0.0.1:{port}"
                assert await _session(f"wss://127.0.0.1:{port}", client, "tls-token", own)
                with pytest.raises(TransportError, match="403"):
                    await _session(
                        f"wss://127.0.0.1:{port}", client, "tls-token", f"http://127.0.0.1:{port}"
                    )
            # a client that does not trust the certificate cannot connect
            async with httpx.AsyncClient() as untrusting:
                with pytest.raises(TransportError):
                    await _session(f"wss://127.0.0.1:{port}", untrusting, "tls-token")
            # plain ws:// to the TLS port is not served
            async with httpx.AsyncClient() as plain:
                with pytest.raises(TransportError):
                    await _session(f"ws://127.0.0.1:{port}", plain, "tls-token")

        anyio.run(main)
    finally:
        out = _stop(proc)
    assert "--token is visible" not in out  # the token came from the environment
    assert "tls-token" not in out


def test_token_on_the_command_line_is_warned_about():
    port = _free_port()
    proc = _serve("--port", str(port), "--token", "argv-token", env={})
    try:
        _wait_health(f"http://127.0.0.1:{port}", proc, True)
    finally:
        out = _stop(proc)
    assert "--token is visible" in out and "ECHOPANEL_TOKEN" in out
    assert "argv-token" not in out


@pytest.mark.parametrize("which", ["missing", "mismatched", "only-cert"])
def test_bad_tls_files_are_a_usage_error(cert, tmp_path, which):
    certfile, keyfile = cert
    if which == "missing":
        args = ["--ssl-certfile", str(tmp_path / "nope.pem"), "--ssl-keyfile", str(keyfile)]
    elif which == "mismatched":
        other = tmp_path / "other.pem"
        subprocess.run(
            ["openssl", "genrsa", "-out", str(other), "2048"], check=True, capture_output=True
        )
        args = ["--ssl-certfile", str(certfile), "--ssl-keyfile", str(other)]
    else:
        args = ["--ssl-certfile", str(certfile)]
    proc = _serve("--port", str(_free_port()), *args, env={})
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 2, out
    assert "Traceback" not in out and ("TLS" in out or "ssl" in out)
