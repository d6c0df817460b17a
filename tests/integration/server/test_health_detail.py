"""``/health`` shows detail only to token holders; load failures never reach clients raw."""

from __future__ import annotations

import anyio
import httpx

from echopanel.errors import AsrError
from echopanel.server import serve_in_background
from echopanel.testing.asr import FakeAsrBackend, FakeAsrStream

BEARER = {"authorization": "Bearer s3cret"}


class _CrashingLoad(FakeAsrBackend):
    """A backend whose load dies of an unexpected exception naming a path."""

    async def load(self) -> None:
        raise RuntimeError("segfault-ish failure in /opt/secret/models/tiny.en")


async def _settled(http: httpx.AsyncClient, url: str) -> httpx.Response:
    with anyio.fail_after(5):
        while (response := await http.get(f"{url}/health")).json()["status"] == "loading":  # noqa: ASYNC110
            await anyio.sleep(0.02)
    return response


async def test_without_the_token_health_shows_only_status_ready_and_capacity(h):
    broken = FakeAsrBackend(fail_load="model directory /srv/models/nope not found")
    config = h.fast_config(token="s3cret")
    async with serve_in_background(config, asr=broken, wait_ready=False) as url:  # noqa: SIM117
        async with httpx.AsyncClient() as http:
            public = await _settled(http, url)
            assert public.status_code == 503
            assert set(public.json()) == {"status", "ready", "sessions"}
            assert public.json()["status"] == "unavailable" and public.json()["ready"] is False
            assert "/srv" not in public.text and "fake" not in public.text
            wrong = await http.get(f"{url}/health", headers={"authorization": "Bearer nope"})
            assert set(wrong.json()) == {"status", "ready", "sessions"}
            detail = await http.get(f"{url}/health", headers=BEARER)
            assert detail.status_code == 503
            assert "/srv/models/nope" in detail.json()["error"]
            assert detail.json()["asr"]["name"] == "fake" and "connections" in detail.json()


async def test_clients_get_a_human_message_not_the_path_or_the_repr(connect, h):
    async with serve_in_background(h.fast_config(), asr=_CrashingLoad(), wait_ready=False) as url:
        async with httpx.AsyncClient() as http:
            health = await _settled(http, url)  # no token configured: no detail for anyone
        assert "could not be loaded" in health.json()["error"]
        assert "RuntimeError" not in health.text and "/opt/secret" not in health.text
        client = await connect(url)
        await client.recv()
        await client.start()
        error = await client.expect("error")
        assert error["code"] == "asr_unavailable"
        assert "/opt/secret" not in error["message"] and "RuntimeError" not in error["message"]
        assert "could not be loaded" in error["message"]
        assert (await client.expect_close()).close_code == 1011


class _LeakyStream(FakeAsrStream):
    async def feed(self, pcm: bytes):
        raise AsrError("CUDA failed loading /usr/lib/secret/libcublas.so.12")


class _LeakyBackend(FakeAsrBackend):
    def open_stream(self, source, *, tuning=None):
        stream = super().open_stream(source, tuning=tuning)
        return _LeakyStream(self, source, stream.tuning)


async def test_a_recognition_failure_mid_session_reaches_the_client_without_its_detail(
    connect, h, caplog
):
    async with serve_in_background(h.fast_config(), asr=_LeakyBackend()) as url:
        client = await connect(url)
        await client.recv()
        await client.start(sources=["mic"])
        await client.expect("status", state="streaming")
        await client.audio(0.1, source="mic", count=3)
        error = await client.expect("error")
        assert error["code"] == "asr_unavailable" and "mic" in error["message"]
        assert "/usr/lib" not in error["message"] and "CUDA" not in error["message"]
        assert (await client.expect_close()).close_code == 1011
        await h.wait_idle(url)
    assert "/usr/lib/secret/libcublas.so.12" in caplog.text  # the operator sees it
