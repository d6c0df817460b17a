"""SIGTERM drains a real ``echopanel serve``: no new sessions, live ones finish, 1001 not 1012.

Each test runs the server as a subprocess (fake ASR) and talks to it with the real client
transport. uvicorn alone closes every WebSocket with 1012 at once on SIGTERM.
"""

from __future__ import annotations

import signal
import subprocess

import anyio
import anyio.to_thread
import httpx

from echopanel.testing.asr import DEFAULT_WORDS

#: ``run_server`` (the code ``echopanel serve`` runs) with a fake ASR whose flush takes 100 s,
#: so a streaming session holds the drain open for as long as a test needs
_SLOW_FLUSH_SERVER = """
import logging, sys
logging.basicConfig(level="INFO")
from echopanel.server import ServerConfig, create_app
from echopanel.server.runner import run_server
from echopanel.testing.asr import FakeAsrBackend
config = ServerConfig(asr="fake", port=int(sys.argv[1]), flush_timeout=100, drain_timeout=120)
run_server(config, app=create_app(config, asr=FakeAsrBackend(flush_delay=100)))
"""


async def _exit_status(proc: subprocess.Popen[str], limit: float) -> int:
    return await anyio.to_thread.run_sync(lambda: proc.wait(timeout=limit))


async def _streaming(connect, url: str, session_id: str):
    client = await connect(url)
    await client.recv()
    await client.start(session_id, sources=["system"])
    await client.expect("status", state="streaming")
    return client


async def _upgrade_status(url: str) -> tuple[int, dict]:
    headers = {
        "connection": "upgrade",
        "upgrade": "websocket",
        "sec-websocket-version": "13",
        "sec-websocket-key": "dGhlIHNhbXBsZSBub25jZQ==",
    }
    async with httpx.AsyncClient(timeout=5) as http:
        response = await http.get(f"{url}/ws/live-listener", headers=headers)
    return response.status_code, response.json() if response.status_code != 101 else {}


async def test_sigterm_mid_utterance_loses_no_final(connect, h):
    with h.serve_process("--drain-timeout", "10") as (proc, url):
        await h.process_ready(proc, url)
        client = await _streaming(connect, url, "mid")
        for _ in range(30):  # 3 s: words 0-3 final, 4-6 still an utterance
            # At twice real time, not in one burst: on a loaded machine a 3 s burst can
            # outrun the ingest budget, and audio the server sheds is words it never hears.
            await client.audio(0.1)
            await anyio.sleep(0.05)
        in_flight = " ".join(DEFAULT_WORDS[4:7])
        await client.expect("asr_partial", text=in_flight, limit=30)  # generous on a loaded machine
        proc.send_signal(signal.SIGTERM)
        summary = await client.expect("final_summary", limit=15)
        words = " ".join(entry["text"] for entry in summary["transcript"]).split()
        assert words[:7] == list(DEFAULT_WORDS[:7])  # the in-flight utterance was flushed
        assert (await client.expect_close(limit=15)).close_code in (1000, 1001)
        assert await _exit_status(proc, 15) == 0


async def test_while_draining_new_sockets_get_503_and_a_second_signal_forces_the_exit(connect, h):
    with h.serve_process(code=_SLOW_FLUSH_SERVER) as (proc, url):
        await h.process_ready(proc, url)
        client = await _streaming(connect, url, "held")  # its flush holds the drain open
        await client.audio(0.1, count=10)
        proc.send_signal(signal.SIGTERM)
        with anyio.fail_after(10):
            while (refused := await _upgrade_status(url))[0] == 101:  # noqa: ASYNC110
                await anyio.sleep(0.05)
        status, body = refused
        assert status == 503 and body["error"] == "server_draining"
        async with httpx.AsyncClient(timeout=5) as http:  # HTTP still answers meanwhile
            assert (await http.get(f"{url}/health")).status_code == 200
            ready = await http.get(f"{url}/ready")
            assert ready.status_code == 503 and ready.json()["reason"] == "draining"
        assert proc.poll() is None  # the drain waits (up to 120 s) for the live session
        proc.send_signal(signal.SIGINT)
        await _exit_status(proc, 20)  # far less than the drain timeout: forced
        out, _ = proc.communicate(timeout=5)
    assert "Draining" in out and "forcing the exit" in out


async def test_sessions_still_open_at_the_drain_timeout_are_closed_1001_not_1012(connect, h):
    with h.serve_process("--drain-timeout", "0.5") as (proc, url):
        await h.process_ready(proc, url)
        idle = await connect(url)  # connected, never starts
        await idle.recv()
        client = await _streaming(connect, url, "late")
        await client.audio(0.1, count=5)
        proc.send_signal(signal.SIGTERM)
        closed = await client.expect_close(limit=20)
        assert closed.close_code in (1000, 1001), closed.close_code
        assert (await idle.expect_close(limit=20)).close_code == 1001
        assert await _exit_status(proc, 20) == 0
        out, _ = proc.communicate(timeout=5)
    assert "Draining 2 connection(s)" in out
    assert "Executed callback" not in out  # serve's INFO log is not the state machines' trace
