"""``readiness``: every combination of draining / ASR state / free slots gives one answer."""

from __future__ import annotations

import itertools

import pytest

from echopanel.server.analysis import KeywordAnalyzer
from echopanel.server.config import ServerConfig
from echopanel.server.readiness import READY_REASONS, readiness
from echopanel.server.slots import LocalSlotController
from echopanel.server.state import ServerState
from echopanel.testing.asr import FakeAsrBackend


async def make_state(*, draining: bool, asr: str, full: bool) -> ServerState:
    backend = FakeAsrBackend()
    if asr != "loading":
        await backend.load()
    state = ServerState(
        config=ServerConfig(asr="fake", max_sessions=2),
        asr=backend,
        analyzer=KeywordAnalyzer(),
        slots=LocalSlotController(2),
        draining=draining,
    )
    if asr == "failed":
        state.asr_error = "the speech model could not be loaded"
    await state.slots.acquire("a", 0)
    if full:
        await state.slots.acquire("b", 0)
    return state


@pytest.mark.parametrize(
    ("draining", "asr", "full"),
    list(itertools.product([False, True], ["ok", "loading", "failed"], [False, True])),
)
async def test_the_first_reason_that_applies_wins(draining, asr, full):
    answer = readiness(await make_state(draining=draining, asr=asr, full=full))
    expected = [
        reason
        for reason, applies in zip(
            READY_REASONS, [draining, asr == "failed", asr == "loading", full], strict=True
        )
        if applies
    ]
    assert answer.reason == (expected[0] if expected else None)
    assert answer.ready is (not expected)
    assert answer.status_code == (200 if not expected else 503)
    assert answer.available == (0 if full else 1) and answer.capacity == 2
    body = answer.body()
    assert body["status"] == ("ready" if not expected else "not_ready")
    assert ("reason" in body) is bool(expected) and ("message" in body) is bool(expected)
    assert body["sessions"] == {"active": 0, "max": 2, "available": 0 if full else 1}


async def test_available_never_goes_negative():
    slots = LocalSlotController(1)
    assert slots.available == 1
    await slots.acquire("a", 0)
    assert slots.available == 0
    await slots.release("a")
    assert slots.available == 1
