"""Optional: the server with the real Whisper backend (``--asr whisper``), marked slow."""

from __future__ import annotations

from pathlib import Path

import anyio
import httpx
import pytest
import soundfile as sf

from echopanel.protocol import encode_audio_frame
from echopanel.server import ServerConfig, serve_in_background

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "audio"

pytestmark = pytest.mark.slow


async def test_whisper_backend_serves_a_session(connect):
    config = ServerConfig(asr="whisper", start_timeout=30, slot_timeout=30, flush_timeout=30)
    async with serve_in_background(config, ready_timeout=180) as url:
        async with httpx.AsyncClient() as http:
            health = (await http.get(f"{url}/health")).json()
        assert health["status"] == "ok" and health["asr"]["name"] == "whisper"
        client = await connect(url)
        await client.recv()
        await client.start(sources=["system"])
        await client.expect("status", state="streaming", limit=30)
        await client.audio(0.1, count=20)  # 2 s of near-silence
        await client.send({"type": "stop", "session_id": "s1"})
        summary = await client.expect("final_summary", limit=60)
        assert summary["sources"]["system"]["audio_seconds"] == pytest.approx(2.0)
        assert (await client.expect_close()).close_code == 1000


async def test_whisper_server_transcribes_a_phrase_over_the_wire(connect):
    audio, rate = sf.read(FIXTURES / "weather.flac", dtype="int16")
    assert rate == 16000
    pcm = audio.tobytes()
    config = ServerConfig(
        asr="whisper",
        start_timeout=30,
        slot_timeout=30,
        flush_timeout=30,
        threads=2,
        max_batch=4,
    )
    async with serve_in_background(config, ready_timeout=180) as url:
        async with httpx.AsyncClient() as http:
            asr = (await http.get(f"{url}/health")).json()["asr"]
        assert (asr["device"], asr["cpu_threads"], asr["max_batch"]) == ("cpu", "2", "4")
        assert asr["compute_type"].startswith("int8")  # what CTranslate2 chose for int8
        client = await connect(url)
        await client.recv()
        await client.start(sources=["mic"])
        await client.expect("status", state="streaming", limit=30)
        step = 3200  # 100 ms frames at real-time pace, as a live client sends them
        for i in range(0, len(pcm), step):
            await client.t.send_bytes(encode_audio_frame("mic", pcm[i : i + step]))
            await anyio.sleep(0.05)
        await client.send({"type": "stop", "session_id": "s1"})
        summary = await client.expect("final_summary", limit=60)
        assert (await client.expect_close()).close_code == 1000
        async with httpx.AsyncClient() as http:
            metrics = (await http.get(f"{url}/metrics")).text
    values = {
        line.split(" ")[0]: float(line.split(" ")[1])
        for line in metrics.splitlines()
        if line and not line.startswith("#")
    }
    assert values["echopanel_asr_decodes_total"] >= 2  # partials and the final
    assert values["echopanel_asr_batch_size_count"] >= 1
    assert (
        values["echopanel_asr_queue_wait_seconds_count"] >= values["echopanel_asr_batch_size_count"]
    )
    finals = [m for m in client.received if m["type"] == "asr_final"]
    text = " ".join(f["text"] for f in finals).lower()
    assert "weather" in text and "sunny" in text
    for final in finals:
        # namespaced by source exactly once; times in milliseconds
        assert final["segment_id"].startswith("mic-")
        assert not final["segment_id"].startswith("mic-mic-")
        assert final["t0"] == round(final["t0"], 3) and final["t1"] == round(final["t1"], 3)
    assert [e["segment_id"] for e in summary["transcript"]] == [f["segment_id"] for f in finals]


async def test_a_final_arrives_while_the_client_sends_nothing_more(connect):
    """Decodes run beside the stream: a final made after the last frame is sent as soon as
    it is decoded, not with the next audio frame (there is none here until ``stop``)."""
    audio, rate = sf.read(FIXTURES / "weather.flac", dtype="int16")
    assert rate == 16000
    # The phrase ends at 3.56 s: 0.6 s of silence after it make an endpoint with the last
    # frame, so its final is decoded after the client's last frame.
    pcm = audio[: int(4.16 * rate)].tobytes()
    config = ServerConfig(asr="whisper", start_timeout=30, slot_timeout=30, flush_timeout=30)
    async with serve_in_background(config, ready_timeout=180) as url:
        client = await connect(url)
        await client.recv()
        await client.start(sources=["mic"])
        await client.expect("status", state="streaming", limit=30)
        step = 3200
        for i in range(0, len(pcm), step):
            await client.t.send_bytes(encode_audio_frame("mic", pcm[i : i + step]))
            await anyio.sleep(0.1)
        final = await client.expect("asr_final", limit=60)  # no audio, no stop sent yet
        assert "sunny" in final["text"].lower()
        await client.send({"type": "stop", "session_id": "s1"})
        await client.expect("final_summary", limit=60)
        assert (await client.expect_close()).close_code == 1000
