"""Optional: the server with the real Whisper backend (``--asr whisper``), marked slow."""

from __future__ import annotations

import importlib.util

import httpx
import pytest

from echopanel.server import ServerConfig, serve_in_background

pytestmark = pytest.mark.slow


@pytest.mark.skipif(
    importlib.util.find_spec("echopanel.asr.whisper") is None, reason="no Whisper backend"
)
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
