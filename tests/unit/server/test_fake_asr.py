"""FakeAsrBackend: deterministic words, tuning honoured, load simulated and measured."""

from __future__ import annotations

import pytest

from echopanel.errors import AsrError
from echopanel.ports import AsrTuning
from echopanel.testing.asr import FakeAsrBackend

HALF = b"\x00\x00" * 8000  # 0.5 s


async def test_words_partials_finals_and_flush():
    backend = FakeAsrBackend(words=["a", "b", "c"], seconds_per_word=0.5, words_per_final=2)
    with pytest.raises(AsrError):
        backend.open_stream("system")
    await backend.load()
    stream = backend.open_stream("system")
    first = await stream.feed(HALF)
    assert [(u.kind, u.text) for u in first] == [("partial", "a")]
    second = await stream.feed(HALF)
    assert [(u.kind, u.text) for u in second] == [("final", "a b"), ("partial", "")]
    await stream.feed(HALF)
    flushed = await stream.flush()
    assert [(u.kind, u.text, u.t0, u.t1) for u in flushed] == [("final", "c", 1.0, 1.5)]
    assert stream.audio_seconds == 1.5


async def test_tuning_interval_beam_and_partials():
    backend = FakeAsrBackend()
    await backend.load()
    stream = backend.open_stream("mic", tuning=AsrTuning(decode_interval=1.0, emit_partials=False))
    assert await stream.feed(HALF) == []  # below the decode interval
    updates = await stream.feed(HALF)
    assert all(u.kind == "final" for u in updates)
    stream.tune(AsrTuning(decode_interval=0.5, beam_size=3))
    await stream.feed(HALF)
    assert [r.beam_size for r in stream.decode_log] == [1, 3]


async def test_inference_delay_is_measured():
    backend = FakeAsrBackend(inference_ratio=0.2)
    await backend.load()
    stream = backend.open_stream("system")
    await stream.feed(HALF)
    assert 0.1 <= stream.inference_seconds < 0.5


async def test_failures():
    broken = FakeAsrBackend(fail_load="no model")
    with pytest.raises(AsrError, match="no model"):
        await broken.load()
    assert not broken.ready
    failing = FakeAsrBackend(fail_feed=True)
    await failing.load()
    with pytest.raises(AsrError):
        await failing.open_stream("system").feed(HALF)
