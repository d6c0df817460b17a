"""Unit tests of the server's small parts: ingest queue, slots, analyzer, config, auth."""

from __future__ import annotations

import anyio
import pytest
from hypothesis import given
from hypothesis import strategies as st

from echopanel.protocol import TranscriptEntry
from echopanel.server.analysis import KeywordAnalyzer
from echopanel.server.config import ServerConfig, is_loopback
from echopanel.server.connection import check_token, render_markdown
from echopanel.server.ingest import IngestQueue
from echopanel.server.slots import LocalSlotController

SECOND = b"\x00\x00" * 16000


def test_ingest_drops_oldest_beyond_budget():
    q = IngestQueue(budget=1.0)
    assert q.put(SECOND[:16000]) == 0  # 0.5 s
    assert q.put(b"\x01\x00" * 8000) == 0  # 1.0 s
    assert q.put(b"\x02\x00" * 8000) == 1  # oldest 0.5 s frame dropped
    assert q.backlog_seconds == pytest.approx(1.0) and q.fill == 1.0
    data = q.take_all()
    assert data == b"\x01\x00" * 8000 + b"\x02\x00" * 8000
    assert (q.dropped_frames, q.dropped_seconds, q.received_frames) == (1, 0.5, 3)


def test_ingest_frame_longer_than_budget_keeps_its_newest_samples():
    q = IngestQueue(budget=0.25)
    q.put(b"\x00\x00" * 8000 + b"\x07\x00" * 4000)
    assert q.take_all() == b"\x07\x00" * 4000
    q.put(SECOND)
    q.budget = 0.1  # shrinking sheds at once
    assert q.backlog_seconds == pytest.approx(0.1)


@given(st.lists(st.integers(min_value=0, max_value=40000), max_size=60), st.floats(0.05, 3.0))
def test_ingest_never_exceeds_budget_and_accounts_every_byte(sizes, budget):
    q = IngestQueue(budget=budget)
    total = 0
    for n in sizes:
        q.put(b"\x00" * (2 * n))
        total += 2 * n
        assert q.backlog_seconds <= budget + 1e-9
    kept = len(q.take_all())
    assert kept + round(q.dropped_seconds * 32000) == total


async def test_ingest_get_waits_and_drains_after_close():
    q = IngestQueue(budget=1.0)
    async with anyio.create_task_group() as tg:
        got: list[bytes] = []

        async def consume() -> None:
            while chunk := await q.get():
                got.append(chunk)

        tg.start_soon(consume)
        await anyio.sleep(0.01)
        q.put(b"\x01\x00")
        await anyio.sleep(0.01)
        q.put(b"\x02\x00")
        q.close()
        assert q.put(b"\x03\x00") == 0
    assert b"".join(got) == b"\x01\x00\x02\x00"


async def test_slots_bounded_wait_fifo_release_idempotent():
    slots = LocalSlotController(1)
    assert await slots.acquire("a", 0.1)
    assert not await slots.acquire("b", 0.05)
    async with anyio.create_task_group() as tg:
        result: list[bool] = []

        async def wait_b() -> None:
            result.append(await slots.acquire("b", 1.0))

        tg.start_soon(wait_b)
        await anyio.sleep(0.02)
        await slots.release("a")
        await slots.release("a")
    assert result == [True] and slots.in_use == 1
    await slots.release("b")
    assert slots.in_use == 0
    with pytest.raises(ValueError):
        LocalSlotController(0)


async def test_slots_cancelled_waiter_takes_nothing():
    slots = LocalSlotController(1)
    await slots.acquire("a", 0)
    with anyio.move_on_after(0.05):
        await slots.acquire("b", 10)
    assert slots.in_use == 1
    await slots.release("a")
    assert slots.in_use == 0


def _entry(text: str, t0: float = 0.0) -> TranscriptEntry:
    return TranscriptEntry(
        source="mic", t0=t0, t1=t0 + 1, text=text, confidence=1.0, segment_id=text
    )


async def test_keyword_analyzer():
    result = await KeywordAnalyzer(top=3).analyze(
        [_entry("The budget review and the budget plan"), _entry("budget plan for hiring")]
    )
    assert result.keywords[0] == "budget" and "the" not in result.keywords
    assert result.topics == ("budget plan",)
    assert (await KeywordAnalyzer().analyze([])).keywords == ()


def test_markdown_and_token_check():
    md = render_markdown([_entry("hello", 65.0)])
    assert "[01:05] mic:** hello" in md
    assert check_token(None, {})
    assert check_token("t", {"authorization": "Bearer t"})
    assert check_token("t", {"authorization": "bearer t"})
    assert check_token("t", {"x-echopanel-token": "t"})
    assert not check_token("t", {"authorization": "t"})
    assert not check_token("t", {"x-echopanel-token": "tt"})


def test_config_env_and_loopback():
    env = {"ECHOPANEL_PORT": "9000", "ECHOPANEL_TOKEN": "zq9secret", "ECHOPANEL_ASR": "fake"}
    config = ServerConfig.from_env(env, port=9100, max_sessions=None)
    assert (config.port, config.token, config.asr, config.max_sessions) == (
        9100,
        "zq9secret",
        "fake",
        8,
    )
    assert "zq9secret" not in repr(config)
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("example.com")
    assert ServerConfig(host="0.0.0.0").exposed_without_token
    assert not ServerConfig(host="0.0.0.0", token="t").exposed_without_token
    with pytest.raises(ValueError):
        ServerConfig(asr="nope")  # type: ignore[arg-type]
