"""A decode past ``decode_timeout``: the session gets ``asr_unavailable``, its slot is released
although the worker thread cannot be killed, and the ASR is unhealthy until the decode returns.

The fake ASR's ``block_decodes`` mode blocks each decode in a worker thread on a
``threading.Event``, as a hung inference would (cancellation cannot end it).
"""

from __future__ import annotations

import anyio
import httpx

from echopanel.server import serve_in_background
from echopanel.testing.asr import FakeAsrBackend


async def _streaming(connect, url, session_id):
    client = await connect(url)
    await client.recv()
    await client.start(session_id, sources=["system"])
    await client.expect("status", state="streaming")
    return client


async def _health(url: str) -> httpx.Response:
    async with httpx.AsyncClient() as http:
        return await http.get(f"{url}/health")


async def test_a_hung_decode_releases_the_slot_and_marks_the_asr_unhealthy(connect, h):
    asr = FakeAsrBackend(block_decodes=True)
    config = h.fast_config(decode_timeout=0.5, max_sessions=1)
    try:
        async with serve_in_background(config, asr=asr) as url:
            client = await _streaming(connect, url, "hung")
            await client.audio(0.1, count=10)  # a decode starts and never returns
            error = await client.expect("error", limit=10)
            assert error["code"] == "asr_unavailable" and "0.5 s" in error["message"]
            assert error["session_id"] == "hung"
            assert (await client.expect_close()).close_code == 1011
            await h.wait_idle(url)  # the slot is free while the thread is still blocked
            assert asr.blocked == 1 and not asr.gate.is_set()
            assert not asr.streams[0].closed  # closed only once its decode returns

            health = await _health(url)
            assert health.status_code == 503 and health.json()["status"] == "unavailable"
            assert health.json()["sessions"]["available"] == 1
            assert "did not finish within 0.5 s" in health.json()["error"]
            async with httpx.AsyncClient() as http:  # a balancer routes new sessions away
                ready = await http.get(f"{url}/ready")
            assert ready.status_code == 503 and ready.json()["reason"] == "asr_unavailable"

            refused = await connect(url)
            await refused.recv()
            await refused.start("next")
            error = await refused.expect("error")
            assert error["code"] == "asr_unavailable" and "unhealthy" in error["message"]
            assert (await refused.expect_close()).close_code == 1011

            asr.unblock()  # the stuck decode returns: healthy again
            with anyio.fail_after(5):
                while (await _health(url)).status_code != 200:  # noqa: ASYNC110
                    await anyio.sleep(0.05)
            assert asr.streams[0].closed
            again = await _streaming(connect, url, "again")
            await again.audio(0.1, count=20)
            await again.send({"type": "stop", "session_id": "again"})
            summary = await again.expect("final_summary", limit=10)
            assert summary["transcript"]
            await h.wait_idle(url)
    finally:
        asr.unblock()


async def test_decodes_within_the_deadline_are_untouched(connect, h):
    asr = FakeAsrBackend(inference_delay=0.05)
    async with serve_in_background(h.fast_config(decode_timeout=5.0), asr=asr) as url:
        client = await _streaming(connect, url, "ok")
        await client.audio(0.1, count=20)
        await client.send({"type": "stop", "session_id": "ok"})
        summary = await client.expect("final_summary", limit=10)
        assert summary["transcript"] and (await _health(url)).status_code == 200
        await h.wait_idle(url)
    assert all(s.closed for s in asr.streams)
