"""``GuardedAsrBackend``: the decode deadline, abandoning a hung call, health, clean errors."""

from __future__ import annotations

import anyio
import pytest

from echopanel.errors import AsrError
from echopanel.server.asr_guard import GuardedAsrBackend
from echopanel.testing.asr import FakeAsrBackend

PCM = b"\x01\x00" * 16000  # 1 s: enough for a decode


async def _guarded(inner: FakeAsrBackend, deadline: float, changes: list) -> GuardedAsrBackend:
    guarded = GuardedAsrBackend(inner, decode_timeout=deadline, on_health=changes.append)
    await guarded.load()
    return guarded


async def test_a_hung_decode_is_abandoned_and_the_backend_recovers_when_it_returns():
    inner = FakeAsrBackend(block_decodes=True)
    changes: list[str | None] = []
    guarded = await _guarded(inner, 0.2, changes)
    try:
        async with anyio.create_task_group() as tg:
            guarded.attach(tg)
            stream = guarded.open_stream("system")
            with anyio.fail_after(5), pytest.raises(AsrError, match=r"within 0\.2 s"):
                await stream.feed(PCM)
            assert not guarded.ready and guarded.abandoned == 1 and len(changes) == 1
            with pytest.raises(AsrError, match="unhealthy"):  # later calls fail fast
                guarded.open_stream("mic")
            await stream.aclose()
            assert not inner.streams[0].closed  # not under a running decode
            inner.unblock()
            with anyio.fail_after(5):
                while not guarded.ready:  # noqa: ASYNC110
                    await anyio.sleep(0.01)
            assert inner.streams[0].closed and changes[-1] is None
            assert guarded.abandoned == 0
            guarded.attach(None)
    finally:
        inner.unblock()


async def test_decodes_within_the_deadline_return_their_updates():
    inner = FakeAsrBackend(inference_delay=0.01)
    guarded = await _guarded(inner, 5.0, [])
    async with anyio.create_task_group() as tg:
        guarded.attach(tg)
        stream = guarded.open_stream("system")
        updates = await stream.feed(PCM)
        updates += await stream.flush()
        assert [u.kind for u in updates if u.kind == "final"]
        assert stream.audio_seconds == pytest.approx(1.0)
        await stream.aclose()
        assert inner.streams[0].closed and guarded.ready
        guarded.attach(None)


async def test_cancelling_the_session_cancels_a_cancellable_decode():
    inner = FakeAsrBackend(inference_delay=30)
    guarded = await _guarded(inner, 60, [])
    async with anyio.create_task_group() as tg:
        guarded.attach(tg)
        stream = guarded.open_stream("system")
        with anyio.move_on_after(0.2):
            await stream.feed(PCM)
        with anyio.fail_after(5):  # the decode task ended: nothing left running
            await stream.aclose()
            while not inner.streams[0].closed:  # noqa: ASYNC110
                await anyio.sleep(0.01)
        assert guarded.ready and guarded.abandoned == 0
        guarded.attach(None)


async def test_backend_errors_reach_sessions_without_their_text(caplog):
    inner = FakeAsrBackend(fail_feed=True)
    guarded = await _guarded(inner, 5, [])
    async with anyio.create_task_group() as tg:
        guarded.attach(tg)
        stream = guarded.open_stream("system")
        with pytest.raises(AsrError) as info:
            await stream.feed(PCM)
        assert "simulated" not in info.value.message and "server log" in info.value.message
        assert "simulated inference failure" in caplog.text
        assert guarded.ready  # a failing decode is not a hung one
        await stream.aclose()
        guarded.attach(None)
