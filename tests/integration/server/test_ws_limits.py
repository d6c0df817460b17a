"""Server memory stays bounded against compressed-frame bombs and oversized frames.

A real ``echopanel serve`` subprocess; its resident memory (``VmRSS`` and the peak
``VmHWM`` from ``/proc``) is read before and after hostile clients, before auth (token set,
none sent) and after (token sent, session started). The WebSocket handshake and frames are
written by hand so the client can offer ``permessage-deflate`` and send a frame whose
payload inflates to hundreds of megabytes.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import socket
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import httpx
import pytest

pytestmark = pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs /proc")

TOKEN = "bomb-test-token"
INFLATED = 256 * 1024 * 1024  # what the bomb inflates to
RESET = 0  # stands for "the server reset the TCP connection" in _close_code's answer
MAX_GROWTH = 48 * 1024 * 1024  # peak memory growth allowed for all the attacks together


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _memory(pid: int) -> dict[str, int]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0]) * 1024
    return fields


@pytest.fixture(scope="module")
def served():
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "echopanel", "serve", "--asr", "fake", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "ECHOPANEL_TOKEN": TOKEN},
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None and time.monotonic() < deadline, "server did not start"
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        yield proc, port
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _bomb() -> bytes:
    """A raw-deflate payload of ``INFLATED`` zero bytes (about a quarter of a megabyte)."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    chunk = bytes(1024 * 1024)
    parts = [compressor.compress(chunk) for _ in range(INFLATED // len(chunk))]
    parts.append(compressor.flush(zlib.Z_SYNC_FLUSH))
    data = b"".join(parts)
    assert data.endswith(b"\x00\x00\xff\xff")
    return data[:-4]  # RFC 7692: the sync-flush tail is stripped


def _frame(payload: bytes, *, opcode: int = 0x2, rsv1: bool = False) -> bytes:
    head = bytes([0x80 | (0x40 if rsv1 else 0) | opcode])
    n = len(payload)
    if n < 126:
        head += bytes([0x80 | n])
    elif n < 1 << 16:
        head += bytes([0x80 | 126]) + struct.pack("!H", n)
    else:
        head += bytes([0x80 | 127]) + struct.pack("!Q", n)
    mask = os.urandom(4)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload[:64]))
    if n > 64:  # mask the rest quickly
        rest = int.from_bytes(payload[64:], "big") ^ int.from_bytes(
            (mask * ((n - 64) // 4 + 1))[: n - 64], "big"
        )
        masked += rest.to_bytes(n - 64, "big")
    return head + mask + masked


class RawClient:
    """A hand-written WebSocket client (handshake, frames) on a blocking socket."""

    def __init__(self, port: int, *, token: str | None, deflate: bool) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        key = base64.b64encode(os.urandom(16)).decode()
        lines = [
            "GET /ws/live-listener HTTP/1.1",
            f"Host: 127.0.0.1:{port}",
            "Upgrade: websocket",
            "Connection: Upgrade",
            f"Sec-WebSocket-Key: {key}",
            "Sec-WebSocket-Version: 13",
        ]
        if deflate:
            lines.append("Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits")
        if token:
            lines.append(f"Authorization: Bearer {token}")
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        response = b""
        while b"\r\n\r\n" not in response:
            chunk = self.sock.recv(4096)
            assert chunk, "closed during the handshake"
            response += chunk
        head, _, self.buffered = response.partition(b"\r\n\r\n")
        self.response = head.decode("latin-1").lower()
        assert self.response.startswith("http/1.1 101"), self.response

    @property
    def deflate_accepted(self) -> bool:
        return "permessage-deflate" in self.response

    def send(self, data: bytes) -> None:
        with contextlib.suppress(OSError):  # the server may close while we still write
            self.sock.sendall(data)

    def read_until_closed(self, limit: float = 10.0) -> bytes:
        """Everything the server sends until it closes the TCP connection (bounded).

        A reset (the server closed with our bytes unread) is returned as a close frame
        carrying ``RESET``: the kernel discards what was received, close frame included.
        """
        data = self.buffered
        self.sock.settimeout(limit)
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            try:
                chunk = self.sock.recv(65536)
            except ConnectionResetError:  # closed with our data unread: RST, no close frame
                return data + b"\x88\x02" + struct.pack("!H", RESET)
            except TimeoutError:
                break
            if not chunk:
                break
            data += chunk
        return data

    def close(self) -> None:
        self.sock.close()


def _close_code(data: bytes) -> int | None:
    """The status code of the first close frame in a stream of server frames."""
    i = 0
    while i + 2 <= len(data):
        opcode, n = data[i] & 0x0F, data[i + 1] & 0x7F
        i += 2
        if n == 126:
            n, i = struct.unpack("!H", data[i : i + 2])[0], i + 2
        elif n == 127:
            n, i = struct.unpack("!Q", data[i : i + 8])[0], i + 8
        if opcode == 0x8:
            return int(struct.unpack("!H", data[i : i + 2])[0]) if n >= 2 else None
        i += n
    return None


def _start_message() -> bytes:
    return json.dumps(
        {"type": "start", "session_id": "bomb", "attempt_id": "a1", "sources": ["system"]}
    ).encode()


def test_deflate_bombs_and_oversized_frames_keep_server_memory_bounded(served):
    proc, port = served
    # warm up: one ordinary session, so lazily imported code is already resident
    warm = RawClient(port, token=TOKEN, deflate=False)
    warm.send(_frame(_start_message(), opcode=0x1))
    warm.send(_frame(b"EP\x01\x00" + bytes(3200)))
    warm.close()
    time.sleep(0.5)
    before = _memory(proc.pid)
    bomb = _bomb()
    assert len(bomb) < 1024 * 1024  # a small message on the wire

    # 1. before auth: a token is configured and none is sent
    pre_auth = RawClient(port, token=None, deflate=True)
    assert not pre_auth.deflate_accepted
    pre_auth.send(_frame(bomb, rsv1=True))
    code = _close_code(pre_auth.read_until_closed())
    pre_auth.close()
    assert code in (1002, 1008, 1009, RESET), code  # RSV1 not negotiated, unauthorized, too big

    # 2. after auth: a started session sends the bomb
    post_auth = RawClient(port, token=TOKEN, deflate=True)
    assert not post_auth.deflate_accepted
    post_auth.send(_frame(_start_message(), opcode=0x1))
    post_auth.send(_frame(bomb, rsv1=True))
    code = _close_code(post_auth.read_until_closed())
    post_auth.close()
    assert code in (1002, 1009, RESET), code

    # 3. uncompressed frames far above the protocol's limit, before and after auth
    for token in (None, TOKEN):
        big = RawClient(port, token=token, deflate=False)
        if token:
            big.send(_frame(_start_message(), opcode=0x1))
        big.send(_frame(bytes(8 * 1024 * 1024)))
        code = _close_code(big.read_until_closed())
        big.close()
        assert code in (1008, 1009, RESET), code

    after = _memory(proc.pid)
    growth = after["VmHWM"] - max(before["VmRSS"], 1)
    assert proc.poll() is None, "the server died"
    assert growth < MAX_GROWTH, f"peak memory grew by {growth / 2**20:.0f} MiB: {before} -> {after}"
    assert httpx.get(f"http://127.0.0.1:{port}/health", timeout=5).status_code == 200
