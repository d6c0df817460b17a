"""Server behaviours pinned after review: buffering, ASR failure, bounded ids, recorder."""

from __future__ import annotations

import threading
import time
import wave

import anyio
import httpx

from echopanel.server import connection as connection_module
from echopanel.server import create_app, serve_in_background, server_state
from echopanel.testing.asr import FakeAsrBackend


async def _streaming(connect, url, session_id="s1", **fields):
    client = await connect(url)
    await client.recv()
    await client.start(session_id, **fields)
    await client.expect("status", state="streaming")
    return client


async def test_buffering_is_reported_before_anything_is_dropped(connect, h):
    # decodes take 1 s each: audio sent meanwhile waits in the 2 s ingest queue
    asr = FakeAsrBackend(inference_delay=1.0, max_concurrency=1)
    config = h.fast_config(ingest_budget=2.0, backpressure_interval=0.5)
    async with serve_in_background(config, asr=asr) as url:
        client = await _streaming(connect, url, sources=["system"])
        await client.audio(0.1, count=6)  # 0.6 s: the first decode starts
        await anyio.sleep(0.2)
        await client.audio(0.1, count=12)  # 1.2 s queued while it runs: > half the budget
        status = await client.expect("status", state="buffering", limit=3)
        assert status["backlog_seconds"] >= 1.0 and status["dropped_frames"] == 0
        assert status["degrade_level"] == 0 and status["session_id"] == "s1"
        assert status["connection_id"] and status["attempt_id"] == "a1"
        assert "system" in status["message"]
        states = [m.get("state") for m in client.received if m["type"] == "status"]
        assert "backpressure" not in states
        await client.send({"type": "stop", "session_id": "s1"})
        summary = await client.expect("final_summary", limit=10)
        assert summary["counts"]["frames_dropped"] == 0
        await h.wait_idle(url)


async def test_buffering_is_rate_limited(connect, h):
    asr = FakeAsrBackend(inference_delay=1.0, max_concurrency=1)
    config = h.fast_config(ingest_budget=2.0, backpressure_interval=60.0)
    async with serve_in_background(config, asr=asr) as url:
        client = await _streaming(connect, url, sources=["system"])
        await client.audio(0.1, count=6)
        await anyio.sleep(0.2)
        await client.audio(0.1, count=14)  # every frame past 1.0 s is above the threshold
        await client.expect("status", state="buffering", limit=3)
        await client.send({"type": "stop", "session_id": "s1"})
        await client.expect("final_summary", limit=10)
        states = [m.get("state") for m in client.received if m["type"] == "status"]
        assert states.count("buffering") == 1


async def test_asr_failure_mid_session_is_reported_at_once_and_closes_1011(connect, h):
    asr = FakeAsrBackend()
    async with serve_in_background(h.fast_config(flush_timeout=8.0), asr=asr) as url:
        client = await _streaming(connect, url, sources=["system", "mic"])
        await client.audio(0.1, "system", count=20)
        await client.expect("asr_final")
        asr.fail_feed = True
        began = anyio.current_time()
        await client.audio(0.1, "mic", count=2)
        error = await client.expect("error", limit=3)
        assert anyio.current_time() - began < 2  # when it happens, not at stop
        assert error["code"] == "asr_unavailable" and "mic" in error["message"]
        assert error["session_id"] == "s1" and error["attempt_id"] == "a1"
        assert error["connection_id"]
        closed = await client.expect_close()
        assert closed.close_code == 1011
        await h.wait_idle(url)
        assert all(s.closed for s in asr.streams)
        async with httpx.AsyncClient() as http:
            body = (await http.get(f"{url}/health")).json()
        assert body["status"] == "ok" and body["sessions"]["available"] == body["sessions"]["max"]
        asr.fail_feed = False  # the server is healthy: the next session works
        again = await _streaming(connect, url, "s2")
        await again.audio(0.1, count=20)
        await again.send({"type": "stop", "session_id": "s2"})
        assert (await again.expect("final_summary", limit=10))["transcript"]


async def test_segment_ids_and_analysis_stay_consistent_past_max_finals(connect, h, monkeypatch):
    monkeypatch.setattr(connection_module, "MAX_FINALS", 2)
    config = h.fast_config()
    words = "zulu yankee xray whiskey victor uniform tango sierra romeo quebec papa oscar"
    app = create_app(config, asr=FakeAsrBackend(words=words.split()))  # 4 words per final
    async with serve_in_background(config, app=app) as url:
        client = await _streaming(connect, url, sources=["system"])
        await client.audio(0.1, count=50)  # 5 s: 12 words -> 3 finals
        for _ in range(3):
            await client.expect("asr_final")
        (live,) = server_state(app).sessions
        assert isinstance(live, connection_module.LiveConnection)
        assert len(live.finals) == 2 and len(live.segment_ids) == 2
        # the analysis follows the newest finals, not only the first MAX_FINALS
        with anyio.fail_after(3):
            while not any(
                "oscar" in m["keywords"] for m in client.received if m["type"] == "analysis_update"
            ):
                await client.recv()
        await client.send({"type": "stop", "session_id": "s1"})
        summary = await client.expect("final_summary", limit=10)
        finals = [m for m in client.received if m["type"] == "asr_final"]
        ids = [f["segment_id"] for f in finals]
        assert len(finals) >= 3 and len(set(ids)) == len(ids)
        assert summary["counts"]["finals"] == len(finals) and len(summary["transcript"]) == 2
        assert len(live.segment_ids) == 2


async def test_recorder_writes_do_not_block_the_event_loop(tmp_path, connect, h, monkeypatch):
    original = wave.Wave_write.writeframes
    writer_threads: set[int] = set()

    def slow_writeframes(self, data):  # a slow disk: 0.25 s per write
        writer_threads.add(threading.get_ident())
        time.sleep(0.25)
        original(self, data)

    monkeypatch.setattr(wave.Wave_write, "writeframes", slow_writeframes)
    loop_thread = threading.get_ident()  # the server runs on this test's event loop

    config = h.fast_config(record_dir=tmp_path)
    async with serve_in_background(config, asr=FakeAsrBackend()) as url:
        client = await _streaming(connect, url, sources=["system", "mic"])
        pcm = {"system": bytes(range(256)) * 25, "mic": bytes(range(255, -1, -1)) * 25}
        for i in range(6):
            for source, byte in (("system", b"\x00"), ("mic", b"\x01")):
                await client.t.send_bytes(b"EP\x01" + byte + pcm[source][i:] + pcm[source][:i])
        await client.send({"type": "stop", "session_id": "s1"})
        await client.expect("final_summary", limit=10)
        # the files are complete (and in order) when the summary arrives
        files = {p.name.rsplit("-", 1)[-1]: p for p in tmp_path.glob("*.wav")}
        assert set(files) == {"system.wav", "mic.wav"}
        for source, byte in (("system", b"\x00"), ("mic", b"\x01")):
            with wave.open(str(files[f"{source}.wav"])) as wav:
                data = wav.readframes(wav.getnframes())
            assert data == b"".join(pcm[source][i:] + pcm[source][:i] for i in range(6)), byte
        await h.wait_idle(url)
    # every (slow) write ran off the event loop's thread: the loop never waited for the disk
    assert writer_threads and loop_thread not in writer_threads


async def test_a_failing_record_dir_is_a_warning_not_the_end_of_the_session(tmp_path, connect, h):
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("x")
    async with serve_in_background(
        h.fast_config(record_dir=not_a_dir / "rec"), asr=FakeAsrBackend()
    ) as url:
        client = await _streaming(connect, url)
        await client.audio(0.1, count=20)
        warning = await client.expect("status", state="warning", limit=3)
        assert "record" in warning["message"] and warning["session_id"] == "s1"
        await client.audio(0.1, count=5)
        await client.send({"type": "stop", "session_id": "s1"})
        summary = await client.expect("final_summary", limit=10)
        assert summary["transcript"]
        assert (await client.expect_close()).close_code == 1000
        await h.wait_idle(url)
