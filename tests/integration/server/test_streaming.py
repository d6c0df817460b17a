"""Streaming against a real server: transcripts, bad input mid-session, stop, cleanup."""

from __future__ import annotations

import base64
import json
import wave

import anyio
import httpx
import pytest

from echopanel.errors import ErrorCode
from echopanel.protocol import MAX_FRAME_BYTES, decode_server
from echopanel.server import serve_in_background
from echopanel.testing.asr import FakeAsrBackend


async def _streaming(connect, url, session_id="s1", **fields):
    client = await connect(url)
    await client.recv()
    await client.start(session_id, **fields)
    await client.expect("status", state="streaming")
    return client


async def test_full_session_transcript_summary_and_close_1000(server, connect, h):
    client = await _streaming(connect, server, sources=["system", "mic"])
    await client.audio(0.1, "system", count=40)  # 4 s -> 10 words -> 2 finals + flush
    await client.audio(0.1, "mic", count=20)
    await client.expect("metrics")
    await client.send({"type": "stop", "session_id": "s1"})
    summary = await client.expect("final_summary", limit=10)
    closed = await client.expect_close()
    assert closed.close_code == 1000
    for msg in client.received:
        decode_server(json.dumps(msg))  # every message is valid protocol
        assert msg["connection_id"]
        if msg["type"] != "status" or msg["state"] != "connected":
            assert msg["session_id"] == "s1" and msg["attempt_id"] == "a1"
    finals = [m for m in client.received if m["type"] == "asr_final"]
    partials = [m for m in client.received if m["type"] == "asr_partial"]
    assert partials and all(not p["stable"] for p in partials)
    ids = [f["segment_id"] for f in finals]
    assert len(ids) == len(set(ids))  # unique per session, never re-sent
    transcript = summary["transcript"]
    assert [e["segment_id"] for e in transcript] != [] and {
        e["segment_id"] for e in transcript
    } == set(ids)
    assert [e["t0"] for e in transcript] == sorted(e["t0"] for e in transcript)
    system_text = " ".join(e["text"] for e in transcript if e["source"] == "system")
    assert system_text == "alpha bravo charlie delta echo foxtrot golf hotel india juliet"
    assert "alpha bravo charlie delta" in summary["markdown"]
    assert summary["sources"]["system"]["audio_seconds"] == pytest.approx(4.0)
    assert summary["sources"]["mic"]["audio_seconds"] == pytest.approx(2.0)
    assert summary["counts"]["finals"] == len(finals)
    await h.wait_idle(server)


async def test_analysis_update_after_new_finals(server, connect):
    client = await _streaming(connect, server)
    await client.audio(0.1, count=20)
    update = await client.expect("analysis_update")
    assert "alpha" in update["keywords"]


async def test_base64_audio_and_v02_headerless_frames(server, connect):
    client = await _streaming(connect, server)  # no sources: any may send
    pcm = b"\x00\x00" * 16000
    await client.send(
        {"type": "audio", "source": "microphone", "data": base64.b64encode(pcm).decode()}
    )
    await client.t.send_bytes(pcm)  # no EP header: system
    await client.send({"type": "stop", "session_id": "s1"})
    summary = await client.expect("final_summary")
    assert summary["sources"]["mic"]["audio_seconds"] == pytest.approx(1.0)
    assert summary["sources"]["system"]["audio_seconds"] == pytest.approx(1.0)


@pytest.mark.parametrize(
    "bad",
    [
        "not json at all",
        "[1, 2]",
        '{"type": "bogus"}',
        '{"no_type": 1}',
        '{"type": "start", "session_id": "s2", "attempt_id": "a2"}',  # start twice
        '{"type": "start", "session_id": "s2", "attempt_id": "a2", "sample_rate": 8000}',
        '{"type": "audio", "source": "system", "data": "%%%"}',
        '{"type": "stop", "session_id": "other"}',
        b"EP\x01\x00\x01",  # odd-length PCM
        b"EP\x02\x00\x00\x00",  # unknown version
        b"EP\x01\x01\x00\x00",  # mic not declared in start
    ],
)
async def test_invalid_message_mid_session_is_dropped_and_session_goes_on(server, connect, bad):
    client = await _streaming(connect, server, sources=["system"])
    if isinstance(bad, bytes):
        await client.t.send_bytes(bad)
    else:
        await client.send(bad)
    error = await client.expect("error")
    assert error["code"] == "invalid_message" and error["session_id"] == "s1"
    await client.audio(0.1, count=20)
    await client.send({"type": "stop", "session_id": "s1"})
    summary = await client.expect("final_summary")
    assert summary["transcript"] and summary["counts"]["invalid_messages"] == 1
    assert (await client.expect_close()).close_code == 1000


@pytest.mark.parametrize("before_start", [True, False])
async def test_audio_or_garbage_before_start_is_invalid_then_start_works(
    server, connect, before_start
):
    client = await connect(server)
    await client.recv()
    await client.audio(0.1) if before_start else await client.send("{")
    await client.send({"type": "stop", "session_id": "s1"})
    assert (await client.recv())["code"] == "invalid_message"
    assert (await client.recv())["code"] == "invalid_message"
    await client.start()
    await client.expect("status", state="streaming")


@pytest.mark.parametrize("started", [True, False])
async def test_frame_too_large_closes_1009(server, connect, h, started):
    client = await connect(server)
    await client.recv()
    if started:
        await client.start()
        await client.expect("status", state="streaming")
    await client.t.send_bytes(b"EP\x01\x00" + b"\x00" * MAX_FRAME_BYTES)
    error = await client.expect("error")
    assert error["code"] == "frame_too_large"
    closed = await client.expect_close()
    assert closed.close_code == 1009 and closed.code is ErrorCode.FRAME_TOO_LARGE
    await h.wait_idle(server)


async def test_more_than_20_invalid_messages_closes_1008(server, connect, h):
    client = await _streaming(connect, server)
    for _ in range(21):
        await client.send("nope")
    closed = await client.expect_close()
    assert closed.close_code == 1008
    errors = [m for m in client.received if m["type"] == "error"]
    assert len(errors) == 21 and "more than 20" in errors[-1]["message"]
    await h.wait_idle(server)


async def test_stop_twice_gives_one_summary(server, connect):
    client = await _streaming(connect, server)
    await client.audio(0.1, count=10)
    await client.send({"type": "stop", "session_id": "s1"})
    await client.send({"type": "stop", "session_id": "s1"})
    await client.audio(0.1)  # in flight after stop: ignored
    closed = await client.expect_close()
    assert closed.close_code == 1000
    kinds = [m["type"] for m in client.received]
    assert kinds.count("final_summary") == 1 and "error" not in kinds


async def test_client_vanishing_mid_stream_leaves_nothing(connect, h):
    asr = FakeAsrBackend(inference_delay=0.05)
    async with serve_in_background(h.fast_config(max_sessions=2), asr=asr) as url:
        for i in range(3):
            client = await _streaming(connect, url, f"v{i}")
            await client.audio(0.1, count=15)
            await client.t._stream.aclose()  # no close frame: the TCP connection just dies
        await h.wait_idle(url)
        async with httpx.AsyncClient() as http:
            body = (await http.get(f"{url}/health")).json()
        assert body["sessions"]["available"] == 2
        with anyio.fail_after(3):
            while body["connections"]:
                await anyio.sleep(0.02)
                async with httpx.AsyncClient() as http:
                    body = (await http.get(f"{url}/health")).json()
        assert all(s.closed for s in asr.streams)


async def test_flush_timeout_sends_warning_then_summary(connect, h):
    asr = FakeAsrBackend(flush_delay=5.0)
    async with serve_in_background(h.fast_config(flush_timeout=0.3), asr=asr) as url:
        client = await _streaming(connect, url)
        await client.audio(0.1, count=20)
        await anyio.sleep(0.2)
        began = anyio.current_time()
        await client.send({"type": "stop", "session_id": "s1"})
        warning = await client.expect("status", state="warning")
        assert "flush" in warning["message"]
        summary = await client.expect("final_summary")
        assert anyio.current_time() - began < 2
        assert summary["transcript"]  # what existed before the flush
        assert (await client.expect_close()).close_code == 1000
        await h.wait_idle(url)


async def test_record_dir_writes_lossless_wav(tmp_path, connect, h):
    async with serve_in_background(h.fast_config(record_dir=tmp_path), asr=FakeAsrBackend()) as url:
        client = await _streaming(connect, url, "rec/../id", sources=["system"])
        pcm = bytes(range(256)) * 25  # 6400 bytes = 0.2 s
        await client.t.send_bytes(b"EP\x01\x00" + pcm)
        await client.t.send_bytes(b"EP\x01\x00" + pcm)
        await client.send({"type": "stop", "session_id": "rec/../id"})
        await client.expect("final_summary")
        await h.wait_idle(url)
    files = list(tmp_path.glob("*.wav"))
    assert len(files) == 1 and files[0].name.endswith("-system.wav") and "/" not in files[0].name
    with wave.open(str(files[0])) as wav:
        assert (wav.getframerate(), wav.getnchannels(), wav.getsampwidth()) == (16000, 1, 2)
        assert wav.readframes(wav.getnframes()) == pcm + pcm


async def test_backpressure_drops_oldest_counts_and_reports(connect, h):
    asr = FakeAsrBackend(inference_delay=0.6, max_concurrency=1)
    config = h.fast_config(ingest_budget=0.3, backpressure_interval=0.0)
    async with serve_in_background(config, asr=asr) as url:
        client = await _streaming(connect, url, sources=["system"])
        for _ in range(30):
            await client.audio(0.1)
            await anyio.sleep(0.02)
        status = await client.expect("status", state="backpressure")
        assert status["dropped_frames"] > 0 and status["backlog_seconds"] <= 0.3 + 1e-6
        metrics = await client.expect("metrics")
        assert metrics["dropped_frames"] > 0
        dropped = await h.metric(url, 'echopanel_frames_dropped_total{source="system"}')
        assert dropped > 0
        await client.send({"type": "stop", "session_id": "s1"})
        summary = await client.expect("final_summary", limit=10)
        assert summary["sources"]["system"]["frames_dropped"] > 0
        assert summary["counts"]["frames_dropped"] > 0


async def test_server_shutdown_closes_live_sessions(connect, h):
    async with serve_in_background(h.fast_config(), asr=FakeAsrBackend()) as url:
        client = await _streaming(connect, url)
        await client.audio(0.1, count=5)
    closed = await client.expect_close()
    assert closed.close_code in (1001, 1006, 1012)


async def test_in_memory_asgi_complement(h):
    from httpx_ws.transport import ASGIWebSocketTransport

    from echopanel.client.transport import WebSocketTransport
    from echopanel.server import create_app

    app = create_app(h.fast_config(), asr=FakeAsrBackend())
    async with app.router.lifespan_context(app):  # noqa: SIM117
        async with httpx.AsyncClient(transport=ASGIWebSocketTransport(app)) as http:
            transport = WebSocketTransport(client=http, ping_interval=None)
            await transport.connect("http://localhost/ws/live-listener", {})
            client = h.Client("mem", transport)
            assert (await client.recv())["state"] == "connected"
            await client.start()
            await client.expect("status", state="streaming")
            await client.audio(0.1, count=20)
            await client.send({"type": "stop", "session_id": "s1"})
            summary = await client.expect("final_summary")
            assert summary["transcript"]
            await transport.aclose()
