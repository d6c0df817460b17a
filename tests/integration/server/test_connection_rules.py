"""The connection rules added with the pure core, against a real server (issue #10).

Idle audio, the audio-rate bound, internal faults, graceful drain, the bounded summary.
"""

from __future__ import annotations

import json

import anyio
import httpx
import pytest

from echopanel.errors import ErrorCode
from echopanel.protocol import decode_server
from echopanel.server import LocalSlotController, create_app, serve_in_background, server_state
from echopanel.testing.asr import FakeAsrBackend


async def _streaming(connect, url, session_id="s1", **fields):
    client = await connect(url)
    await client.recv()
    await client.start(session_id, **fields)
    await client.expect("status", state="streaming")
    return client


async def test_a_session_without_audio_ends_with_idle_timeout(connect, h):
    async with serve_in_background(h.fast_config(idle_timeout=0.4), asr=FakeAsrBackend()) as url:
        client = await _streaming(connect, url)
        await client.audio(0.1)  # then nothing (that audio re-arms the timer: see the unit tests)
        error = await client.expect("error", limit=5)
        assert error["code"] == "idle_timeout" and error["session_id"] == "s1"
        closed = await client.expect_close()
        assert closed.close_code == 4408 and closed.code is ErrorCode.IDLE_TIMEOUT
        await h.wait_idle(url)
        reason = 'echopanel_sessions_rejected_total{reason="idle_timeout"}'
        assert await h.metric(url, reason) == 1


async def test_audio_faster_than_the_bound_is_dropped_counted_and_reported(connect, h):
    # a tiny rate: what refills while the frames are on their way is negligible
    config = h.fast_config(max_audio_rate=0.05, audio_burst=3.0)
    async with serve_in_background(config, asr=FakeAsrBackend()) as url:
        client = await _streaming(connect, url, sources=["system"])
        await client.audio(0.1, count=60)  # 6 s at once: the 3 s burst passes, the rest not
        warning = await client.expect("status", state="warning", limit=3)
        assert "faster than 0.05x real time" in warning["message"]
        assert warning["dropped_frames"] > 0
        await client.send({"type": "stop", "session_id": "s1"})
        summary = await client.expect("final_summary", limit=10)
        dropped = summary["sources"]["system"]["frames_dropped"]
        assert 25 <= dropped <= 30  # about the 3 s beyond the burst
        assert summary["sources"]["system"]["audio_seconds"] == pytest.approx(6.0 - dropped * 0.1)
        counter = await h.metric(url, 'echopanel_frames_dropped_total{source="system"}')
        assert counter == dropped


class _BrokenSlots(LocalSlotController):
    async def acquire(self, key: str, timeout: float) -> bool:  # noqa: ASYNC109
        raise RuntimeError("/srv/secret/path: slot store exploded")


async def test_an_internal_fault_is_internal_error_then_1011_without_details(connect, h):
    config = h.fast_config()
    app = create_app(config, asr=FakeAsrBackend(), slots=_BrokenSlots(2))
    async with serve_in_background(config, app=app) as url:
        client = await connect(url)
        await client.recv()
        await client.start()
        error = await client.expect("error")
        assert error["code"] == "internal_error" and error["session_id"] == "s1"
        assert "/srv" not in error["message"] and "RuntimeError" not in error["message"]
        closed = await client.expect_close()
        assert closed.close_code == 1011
        async with httpx.AsyncClient() as http:
            health = await http.get(f"{url}/health")
        assert health.status_code == 200
        with anyio.fail_after(3):
            while server_state(app).connections:  # noqa: ASYNC110
                await anyio.sleep(0.02)


async def test_drain_flushes_every_session_and_closes_1001(connect, h):
    config = h.fast_config(flush_timeout=3.0)
    app = create_app(config, asr=FakeAsrBackend())
    async with serve_in_background(config, app=app) as url:
        streaming = await _streaming(connect, url, sources=["system"])
        waiting = await connect(url)
        await waiting.recv()
        await streaming.audio(0.1, count=14)  # 1.4 s: 3 words heard, none final yet
        await streaming.expect("asr_partial")
        state = server_state(app)
        assert len(state.connections) == 2
        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:
                for connection in list(state.connections):
                    tg.start_soon(connection.drain)
        # the session: told why, its pending audio flushed into finals, summary, close 1001
        status = await streaming.expect("status", state="warning")
        assert status["reason"] == "drain" and "shutting down" in status["message"]
        summary = await streaming.expect("final_summary")
        assert " ".join(e["text"] for e in summary["transcript"]) == "alpha bravo charlie"
        assert (await streaming.expect_close()).close_code == 1001
        finals = [m for m in streaming.received if m["type"] == "asr_final"]
        assert finals and summary["counts"]["finals"] == len(finals)
        # the connection without a session: told why, closed 1001
        assert (await waiting.recv())["reason"] == "drain"
        assert (await waiting.expect_close()).close_code == 1001
        assert not state.connections
        await h.wait_idle(url)


async def test_final_summary_stays_under_the_bound(connect, h):
    words = [f"{'long' * 20}{i}" for i in range(50)]
    asr = FakeAsrBackend(words=words, seconds_per_word=0.05, words_per_final=1)
    config = h.fast_config(max_summary_bytes=16_384, max_audio_rate=0, ingest_budget=30.0)
    async with serve_in_background(config, asr=asr) as url:
        client = await _streaming(connect, url, sources=["system"])
        for _ in range(10):
            await client.audio(0.1, count=10)
            await anyio.sleep(0.05)
        await client.send({"type": "stop", "session_id": "s1"})
        raw = None
        with anyio.fail_after(10):
            while raw is None:
                msg = await client.recv()
                if msg["type"] == "final_summary":
                    raw = json.dumps(msg, separators=(",", ":"), ensure_ascii=False)
        finals = [m for m in client.received if m["type"] == "asr_final"]
        summary = decode_server(raw)
        assert len(finals) >= 150 and len(raw.encode()) <= 16_384
        assert summary.truncated is True
        assert summary.omitted_finals == len(finals) - len(summary.transcript) > 0
        assert summary.transcript[-1].segment_id == finals[-1]["segment_id"]


async def test_a_connection_accepted_while_draining_is_drained_at_once(connect, h):
    """Over the network a new upgrade is refused (HTTP 503, the request guard); a socket the
    guard let in just before the drain began is drained at once by the connection."""
    from httpx_ws.transport import ASGIWebSocketTransport

    from echopanel.client.transport import WebSocketTransport
    from echopanel.errors import TransportError

    config = h.fast_config()
    app = create_app(config, asr=FakeAsrBackend())
    async with serve_in_background(config, app=app) as url:
        server_state(app).draining = True
        with pytest.raises(TransportError, match="HTTP 503"):
            await connect(url)
        # past the guard (its router, as for a socket admitted just before the flag was set)
        async with httpx.AsyncClient(transport=ASGIWebSocketTransport(app.router)) as http:
            transport = WebSocketTransport(client=http, ping_interval=None)
            await transport.connect("http://localhost/ws/live-listener", {})
            client = h.Client("mem", transport)
            assert (await client.recv())["state"] == "connected"
            status = await client.recv()
            assert status["state"] == "warning" and status["reason"] == "drain"
            assert (await client.expect_close()).close_code == 1001
            await transport.aclose()
