"""Handshake against a real server: connected, auth, start validation, timeouts, capacity."""

from __future__ import annotations

import logging

import anyio
import httpx
import pytest

from echopanel.errors import ErrorCode, TransportError
from echopanel.server import serve_in_background
from echopanel.testing.asr import FakeAsrBackend


async def test_connected_then_streaming_echoes_ids(server, connect, caplog, h):
    caplog.set_level(logging.INFO, logger="echopanel.server")
    client = await connect(server)
    connected = await client.recv()
    assert connected["type"] == "status" and connected["state"] == "connected"
    assert connected["connection_id"].startswith("srv-")
    await client.start("sess-1", connection_id="client-conn", sources=["system"])
    ack = await client.recv()
    assert ack["state"] == "streaming"
    assert (ack["session_id"], ack["attempt_id"], ack["connection_id"]) == (
        "sess-1",
        "a1",
        "client-conn",
    )
    records = [r for r in caplog.records if r.getMessage() == "Session started"]
    assert records and records[0].session_id == "sess-1"  # type: ignore[attr-defined]
    assert records[0].attempt_id == "a1" and records[0].connection_id == "client-conn"  # type: ignore[attr-defined]
    assert await h.metric(server, "echopanel_active_sessions") == 1
    await client.aclose()
    await h.wait_idle(server)


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"authorization": "Bearer nope"},
        {"x-echopanel-token": "nope"},
        {"authorization": "s3cret"},
    ],
)
async def test_bad_token_is_unauthorized_1008_without_connected(connect, headers, h):
    async with serve_in_background(h.fast_config(token="s3cret"), asr=FakeAsrBackend()) as url:
        client = await connect(url, headers)
        error = await client.recv()
        assert error["type"] == "error" and error["code"] == "unauthorized"
        closed = await client.expect_close()
        assert closed.close_code == 1008 and closed.code is ErrorCode.UNAUTHORIZED
        assert [m["type"] for m in client.received] == ["error"]
        assert (
            await h.metric(
                url, 'echopanel_sessions_rejected_total{reason="unauthorized"}', "s3cret"
            )
            == 1
        )


@pytest.mark.parametrize(
    "headers", [{"authorization": "Bearer s3cret"}, {"x-echopanel-token": "s3cret"}]
)
async def test_good_token_either_header(connect, headers, h):
    async with serve_in_background(h.fast_config(token="s3cret"), asr=FakeAsrBackend()) as url:
        client = await connect(url, headers)
        assert (await client.recv())["state"] == "connected"


async def test_health_needs_no_token_and_hides_it_metrics_needs_it(h):
    async with serve_in_background(h.fast_config(token="s3cret"), asr=FakeAsrBackend()) as url:  # noqa: SIM117
        async with httpx.AsyncClient() as http:
            health = await http.get(f"{url}/health")
            assert health.status_code == 200 and "s3cret" not in health.text
            body = health.json()
            assert body["status"] == "ok" and body["ready"] is True and "asr" not in body
            assert body["sessions"] == {"active": 0, "max": 8, "available": 8}
            detail = await http.get(f"{url}/health", headers={"authorization": "Bearer s3cret"})
            assert detail.json()["asr"]["name"] == "fake" and "s3cret" not in detail.text
            assert (await http.get(f"{url}/metrics")).status_code == 401
            bad = await http.get(f"{url}/metrics", headers={"authorization": "Bearer x"})
            assert bad.status_code == 401
            ok = await http.get(f"{url}/metrics", headers={"authorization": "Bearer s3cret"})
            assert ok.status_code == 200
            for name in (
                "echopanel_ws_connections_total",
                "echopanel_active_sessions",
                "echopanel_sessions_rejected_total",
                "echopanel_frames_dropped_total",
                "echopanel_asr_realtime_factor",
                "echopanel_start_ack_seconds_bucket",
            ):
                assert name in ok.text


@pytest.mark.parametrize(
    ("fields", "code", "close"),
    [
        ({"sample_rate": 44100}, "unsupported_audio_format", 1003),
        ({"format": "opus"}, "unsupported_audio_format", 1003),
        ({"channels": 2}, "unsupported_audio_format", 1003),
        ({"session_id": ""}, "invalid_message", 1007),
        ({"session_id": "   "}, "invalid_message", 1007),
        ({"session_id": "x" * 257}, "invalid_message", 1007),
        ({"session_id": 42}, "invalid_message", 1007),
        ({"attempt_id": None}, "invalid_message", 1007),
        ({"sources": ["speaker"]}, "invalid_message", 1007),
        ({"sources": ["system", "mic", "system"]}, "invalid_message", 1007),
        ({"sample_rate": "16000"}, "invalid_message", 1007),
    ],
)
async def test_bad_start_is_refused(server, connect, fields, code, close, h):
    client = await connect(server)
    await client.recv()
    await client.send({"type": "start", "session_id": "s1", "attempt_id": "a1", **fields})
    error = await client.expect("error")
    assert error["code"] == code
    closed = await client.expect_close()
    assert closed.close_code == close and closed.code == code
    await h.wait_idle(server)


async def test_session_id_of_256_chars_and_microphone_alias_are_accepted(server, connect, h):
    client = await connect(server)
    await client.recv()
    await client.start("x" * 256, sources=["microphone"])
    ack = await client.expect("status", state="streaming")
    assert ack["session_id"] == "x" * 256
    await client.audio(source="mic")


async def test_no_start_within_timeout_closes_1008(connect, h):
    async with serve_in_background(h.fast_config(start_timeout=0.3), asr=FakeAsrBackend()) as url:
        client = await connect(url)
        await client.recv()
        error = await client.expect("error")
        assert error["code"] == "start_timeout"
        closed = await client.expect_close()
        assert closed.close_code == 1008 and closed.code is ErrorCode.START_TIMEOUT
        assert await h.metric(url, 'echopanel_sessions_rejected_total{reason="start_timeout"}') == 1


async def test_capacity_waits_for_slot_then_1013_then_recovers(connect, h):
    config = h.fast_config(max_sessions=1, slot_timeout=0.4)
    async with serve_in_background(config, asr=FakeAsrBackend()) as url:
        first = await connect(url)
        await first.recv()
        await first.start("one")
        await first.expect("status", state="streaming")

        second = await connect(url)
        assert (await second.recv())["state"] == "connected"  # connected first, then the wait
        began = anyio.current_time()
        await second.start("two")
        error = await second.expect("error")
        assert error["code"] == "server_at_capacity" and error["session_id"] == "two"
        assert anyio.current_time() - began >= 0.35
        closed = await second.expect_close()
        assert closed.close_code == 1013 and closed.code is ErrorCode.SERVER_AT_CAPACITY

        # a start waiting for a slot gets it when the holder stops within the slot timeout
        third = await connect(url)
        await third.recv()
        await third.start("three")
        await anyio.sleep(0.1)
        await first.send({"type": "stop", "session_id": "one"})
        await first.expect("final_summary")
        await third.expect("status", state="streaming", session_id="three")
        await third.aclose()
        await h.wait_idle(url)


async def test_health_503_while_loading_and_when_load_failed(connect, h):
    slow = FakeAsrBackend(load_delay=0.6)
    async with serve_in_background(h.fast_config(), asr=slow, wait_ready=False) as url:  # noqa: SIM117
        async with httpx.AsyncClient() as http:
            loading = await http.get(f"{url}/health")
            assert loading.status_code == 503 and loading.json()["status"] == "loading"
            await anyio.sleep(0.8)
            assert (await http.get(f"{url}/health")).status_code == 200
    assert slow.loads == 1

    broken = FakeAsrBackend(fail_load="model directory /nope not found")
    async with serve_in_background(h.fast_config(), asr=broken, wait_ready=False) as url:
        async with httpx.AsyncClient() as http:
            with anyio.fail_after(3):
                while (body := (await http.get(f"{url}/health")).json())["status"] == "loading":  # noqa: ASYNC110
                    await anyio.sleep(0.02)
            assert body["status"] == "unavailable" and "could not be loaded" in body["error"]
            assert "/nope" not in str(body)  # no token configured: no path for anyone
        client = await connect(url)
        await client.recv()
        await client.start()
        error = await client.expect("error")
        assert error["code"] == "asr_unavailable"
        assert (await client.expect_close()).close_code == 1011


async def test_connect_to_nothing_is_connection_failed(h):
    from echopanel.client.transport import WebSocketTransport

    transport = WebSocketTransport(connect_timeout=1.0)
    with pytest.raises(TransportError) as info:
        await transport.connect("ws://127.0.0.1:9", {})
    assert info.value.code is ErrorCode.CONNECTION_FAILED
    await transport.aclose()


async def test_transport_keepalive_pings_are_answered_while_waiting(h):
    from echopanel.client.transport import WebSocketTransport

    async with serve_in_background(h.fast_config(start_timeout=0.8), asr=FakeAsrBackend()) as url:
        transport = WebSocketTransport(ping_interval=0.1, ping_timeout=0.5)
        await transport.connect(url, {})
        client = h.Client(url, transport)
        await client.recv()
        began = anyio.current_time()
        error = await client.recv()  # ~8 pings went out and came back meanwhile
        assert error["code"] == "start_timeout" and anyio.current_time() - began > 0.5
        closed = await client.expect_close()
        assert closed.code is ErrorCode.START_TIMEOUT and closed.close_code == 1008
        await transport.aclose()
        await transport.aclose()  # idempotent
        with pytest.raises(TransportError):
            await transport.send_text("late")
