"""Resume (protocol 1.1) against a real server, its connections cut by a loopback TCP proxy."""

from __future__ import annotations

from urllib.parse import urlsplit

import anyio
import pytest

from echopanel.errors import ErrorCode
from echopanel.server import serve_in_background
from echopanel.testing.asr import FakeAsrBackend
from echopanel.testing.proxy import CuttingProxy

RESUME = {"resume": True}


async def _streaming(connect, url, **fields):
    client = await connect(url)
    await client.recv()
    await client.start("s1", sources=["system"], **fields)
    ack = await client.expect("status", state="streaming")
    return client, ack


def _port(url: str) -> int:
    port = urlsplit(url).port
    assert port is not None
    return port


async def _wait_metric(h, url, name, value, limit=5.0):
    with anyio.fail_after(limit):
        while await h.metric(url, name) != value:  # noqa: ASYNC110
            await anyio.sleep(0.02)


async def test_a_cut_session_resumes_with_every_final_once(connect, h):
    config = h.fast_config(resume_window=10.0)
    async with (
        serve_in_background(config, asr=FakeAsrBackend()) as url,
        CuttingProxy(_port(url)) as proxy,
    ):
        client, ack = await _streaming(connect, proxy.url, client_features=RESUME)
        token = ack["resume_token"]
        assert isinstance(token, str) and len(token) >= 40
        await client.audio(0.1, count=20)  # 2 s: 5 words, at least one final of 4
        first = await client.expect("asr_final")
        assert await proxy.cut() == 1
        await _wait_metric(h, url, "echopanel_active_sessions", 1)  # the slot is held
        await client.aclose()

        again = await connect(proxy.url)
        await again.recv()  # connected
        await again.send(
            {
                "type": "resume",
                "session_id": "s1",
                "resume_token": token,
                "last_segment_id": first["segment_id"],
                "audio_seconds": {"system": 2.0},
            }
        )
        resumed = await again.expect("status", state="streaming")
        assert resumed["resumed"] is True and resumed["session_id"] == "s1"
        assert resumed["audio_seconds"] == {"system": 2.0}
        assert resumed["resume_token"] not in (None, token)  # a new one each time
        resent = [m for m in again.received if m["type"] == "asr_final"]
        assert first["segment_id"] not in {m["segment_id"] for m in resent}
        await again.audio(0.1, count=20)
        await again.send({"type": "stop", "session_id": "s1"})
        summary = await again.expect("final_summary", limit=10)
        ids = [e["segment_id"] for e in summary["transcript"]]
        live = [first["segment_id"]] + [
            m["segment_id"] for m in again.received if m["type"] == "asr_final"
        ]
        assert ids == live and len(set(ids)) == len(ids)  # each final reached us once
        assert summary["sources"]["system"]["audio_seconds"] == pytest.approx(4.0)
        assert await h.metric(url, "echopanel_resumes_total") == 1
        await h.wait_idle(url)


async def test_a_wrong_token_gets_resume_unknown_and_the_window_expires(connect, h):
    config = h.fast_config(resume_window=1.0)
    async with (
        serve_in_background(config, asr=FakeAsrBackend()) as url,
        CuttingProxy(_port(url)) as proxy,
    ):
        client, ack = await _streaming(connect, proxy.url, client_features=RESUME)
        await client.audio(0.1, count=5)
        await proxy.cut()
        await client.aclose()
        thief = await connect(url)
        await thief.recv()
        await thief.send({"type": "resume", "session_id": "s1", "resume_token": "guess"})
        error = await thief.expect("error")
        assert error["code"] == "resume_unknown"
        closed = await thief.expect_close()
        assert closed.close_code == 4404 and closed.code is ErrorCode.RESUME_UNKNOWN
        assert await h.metric(url, "echopanel_resumes_failed_total") == 1
        await h.wait_idle(url, limit=5)  # the window passed: the slot is free
        assert await h.metric(url, "echopanel_resume_expired_total") == 1
        late = await connect(url)
        await late.recv()
        await late.send({"type": "resume", "session_id": "s1", "resume_token": ack["resume_token"]})
        assert (await late.expect("error"))["code"] == "resume_unknown"


async def test_a_client_without_resume_is_released_at_once_as_before(connect, h):
    config = h.fast_config(resume_window=30.0)
    async with (
        serve_in_background(config, asr=FakeAsrBackend()) as url,
        CuttingProxy(_port(url)) as proxy,
    ):
        client, ack = await _streaming(connect, proxy.url)
        assert "resume_token" not in ack
        await client.audio(0.1, count=5)
        await proxy.cut()
        await h.wait_idle(url, limit=5)
        assert await h.metric(url, "echopanel_resume_expired_total") == 0


async def test_a_resume_takes_over_a_connection_the_server_still_thinks_open(connect, h):
    config = h.fast_config(resume_window=10.0)
    async with serve_in_background(config, asr=FakeAsrBackend()) as url:
        old, ack = await _streaming(connect, url, client_features=RESUME)
        await old.audio(0.1, count=10)
        new = await connect(url)
        await new.recv()
        await new.send({"type": "resume", "session_id": "s1", "resume_token": ack["resume_token"]})
        resumed = await new.expect("status", state="streaming")
        assert resumed["resumed"] is True
        closed = await old.expect_close()  # the half-open socket is dropped
        assert closed.close_code == 1001
        await new.send({"type": "stop", "session_id": "s1"})
        summary = await new.expect("final_summary", limit=10)
        assert summary["sources"]["system"]["audio_seconds"] == pytest.approx(1.0)
        await h.wait_idle(url)
