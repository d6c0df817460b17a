"""Degrade ladder: RTF window, hysteresis, and what each level does to the pipeline."""

from __future__ import annotations

import anyio
import pytest

from echopanel.server.config import DegradeConfig, ServerConfig
from echopanel.server.degrade import MAX_LEVEL, DegradeLadder, RtfWindow, plan_for
from echopanel.server.pipeline import SourcePipeline
from echopanel.testing.asr import FakeAsrBackend

CFG = DegradeConfig(up_hold=1.0, down_hold=3.0, window=5.0)


def test_rtf_is_inference_over_audio_in_a_sliding_window():
    w = RtfWindow(window=5.0)
    assert w.value(0.0) == 0.0
    w.record(1.0, audio_seconds=1.0, inference_seconds=0.5)
    w.record(2.0, audio_seconds=2.0, inference_seconds=0.7)  # +1 audio, +0.2 inference
    assert w.value(2.0) == pytest.approx(0.7 / 2.0)
    assert w.value(6.5) == pytest.approx(0.2 / 1.0)  # first sample left the window
    assert w.value(8.0) == 0.0
    w.reset()
    w.record(9.0, audio_seconds=3.0, inference_seconds=3.0)
    assert w.value(9.0) == pytest.approx(2.3 / 1.0)


def test_ladder_steps_up_only_after_the_hold_and_one_level_at_a_time():
    ladder = DegradeLadder(CFG)
    assert ladder.update(0.0, rtf=2.0, backlog_fill=0.0) is None
    assert ladder.update(0.9, rtf=2.0, backlog_fill=0.0) is None
    assert ladder.update(1.0, rtf=2.0, backlog_fill=0.0) == 1
    assert ladder.update(1.5, rtf=2.0, backlog_fill=0.0) is None  # a new hold starts
    assert ladder.update(2.5, rtf=2.0, backlog_fill=0.0) == 2
    assert ladder.update(3.5, rtf=0.0, backlog_fill=0.9) is None  # backlog alone is load
    assert ladder.update(4.5, rtf=0.0, backlog_fill=0.9) == 3
    assert ladder.update(9.0, rtf=5.0, backlog_fill=1.0) is None  # top
    assert ladder.level == MAX_LEVEL


def test_ladder_hysteresis_between_thresholds_holds_level():
    ladder = DegradeLadder(CFG)
    ladder.update(0.0, 2.0, 0.0)
    assert ladder.update(1.0, 2.0, 0.0) == 1
    for t in range(2, 20):  # between down_rtf and up_rtf: neither up nor down
        assert ladder.update(float(t), 0.6, 0.0) is None
    assert ladder.update(20.0, 0.1, 0.0) is None
    assert ladder.update(22.9, 0.1, 0.0) is None
    assert ladder.update(23.0, 0.1, 0.0) == 0
    assert ladder.update(30.0, 0.1, 0.0) is None  # floor


def test_a_spike_shorter_than_the_hold_does_nothing():
    ladder = DegradeLadder(CFG)
    for t in (0.0, 0.5, 0.9):
        assert ladder.update(t, 3.0, 0.0) is None
    assert ladder.update(1.0, 0.5, 0.0) is None
    assert ladder.update(1.5, 3.0, 0.0) is None
    assert ladder.level == 0


def test_disabled_ladder_never_moves():
    ladder = DegradeLadder(DegradeConfig(enabled=False))
    assert all(ladder.update(float(t), 9.0, 1.0) is None for t in range(100))


def test_plans():
    plans = [plan_for(level, CFG, 2.0) for level in range(4)]
    assert [p.tuning.decode_interval for p in plans] == [0.5, 1.0, 1.0, 1.0]
    assert [p.tuning.beam_size for p in plans] == [1, 1, 1, 1]
    assert [p.tuning.final_beam_size for p in plans] == [5, 5, 1, 1]
    assert [p.tuning.emit_partials for p in plans] == [True, True, False, False]
    assert [p.ingest_budget for p in plans] == [2.0, 2.0, 2.0, 0.5]
    assert plan_for(9, CFG, 2.0).level == MAX_LEVEL
    with pytest.raises(ValueError):
        DegradeConfig(up_rtf=0.5, down_rtf=0.5)


async def _run_level(level: int, delay: float = 0.1) -> tuple[list, list, SourcePipeline]:
    """Feed 4 s of audio at ``level``: 0.25 s frames, a bit faster than the ASR keeps up."""
    backend = FakeAsrBackend(inference_delay=delay)
    await backend.load()
    stream = backend.open_stream("system")
    sent: list = []

    async def on_updates(source, updates):
        sent.extend(updates)

    async def nothing(*args):
        return None

    config = ServerConfig(asr="fake", degrade=CFG)
    pipeline = SourcePipeline(
        "system", stream, config, on_updates=on_updates, on_level=nothing, on_metrics=nothing
    )
    await pipeline.apply_level(level)
    async with anyio.create_task_group() as tg:
        tg.start_soon(pipeline.run_asr)
        for _ in range(16):
            pipeline.put(b"\x00\x00" * 4000)
            await anyio.sleep(0.02)
        pipeline.queue.close()
        with anyio.fail_after(5):
            await pipeline.done.wait()
    return stream.decode_log, sent, pipeline


@pytest.mark.parametrize("level", range(4))
async def test_each_level_changes_what_the_pipeline_does(level):
    log, sent, pipeline = await _run_level(level)
    partials = [u for u in sent if u.kind == "partial"]
    finals = [u for u in sent if u.kind == "final"]
    decodes = [r for r in log]
    if level == 0:
        assert all(r.decode_interval == 0.5 and r.final_beam_size == 5 for r in decodes)
        assert partials and pipeline.queue.dropped_frames == 0
    if level == 1:
        assert all(r.decode_interval == 1.0 and r.final_beam_size == 5 for r in decodes)
        assert partials and pipeline.queue.dropped_frames == 0
    if level == 2:
        assert all(r.final_beam_size == 1 and not r.emitted_partial for r in decodes)
        assert not partials and pipeline.queue.dropped_frames == 0
    if level == 3:
        assert not partials
        assert pipeline.queue.budget == 0.5 and pipeline.queue.dropped_frames > 0
        assert pipeline.audio_seconds == pytest.approx(4.0)
        assert pipeline.stream.audio_seconds == pytest.approx(4.0 - pipeline.queue.dropped_seconds)
        assert pipeline.stream.audio_seconds < 4.0  # shed audio never reached the model
    assert finals or level == 3


async def test_level_1_decodes_half_as_often_as_level_0():
    log0, _, _ = await _run_level(0, delay=0.0)  # the ASR keeps up: one feed per frame
    log1, _, _ = await _run_level(1, delay=0.0)
    assert (len(log0), len(log1)) == (8 + 1, 4 + 1)  # decodes, plus the flush
