"""Decode-engine options in the server config and engine counters on /metrics."""

from __future__ import annotations

from typing import Any

import pytest

from echopanel.asr.engine.stats import EngineStats, RateWindow, StatsHistogram
from echopanel.server.config import ServerConfig
from echopanel.server.metrics import ServerMetrics


def test_engine_options_from_env_and_overrides() -> None:
    env = {
        "ECHOPANEL_DEVICE": "auto",
        "ECHOPANEL_COMPUTE_TYPE": "int8_float32",
        "ECHOPANEL_THREADS": "2",
        "ECHOPANEL_MAX_BATCH": "4",
    }
    config = ServerConfig.from_env(env, max_batch=6)
    assert (config.device, config.compute_type, config.threads, config.max_batch) == (
        "auto",
        "int8_float32",
        2,
        6,
    )
    defaults = ServerConfig.from_env({})
    assert (defaults.device, defaults.compute_type, defaults.threads, defaults.max_batch) == (
        "cpu",
        "int8",
        0,
        8,
    )


@pytest.mark.parametrize(
    "bad", [{"device": "tpu"}, {"max_batch": 0}, {"threads": -1}, {"compute_type": ""}]
)
def test_bad_engine_options_are_refused(bad: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        ServerConfig(**bad)


class _Engine:
    """Exposes a real ``EngineStats`` the way ``DecodeEngine.snapshot`` does."""

    def __init__(self) -> None:
        self.stats = EngineStats()

    def snapshot(self) -> dict[str, Any]:
        s = self.stats
        return {
            "batch_size": s.batch_size.snapshot(),
            "queue_wait": s.queue_wait.snapshot(),
            "decodes_per_second": s.decodes.rate(10.0),
            "decodes_total": s.decodes_total,
            "waiting": 3,
        }


def test_engine_histograms_and_rate_on_metrics() -> None:
    engine = _Engine()
    for size in (1, 4, 4, 8):
        engine.stats.batch_size.observe(size)
    engine.stats.queue_wait.observe(0.02)
    engine.stats.queue_wait.observe(0.3)
    for t in range(5):
        engine.stats.decodes.add(float(t), 4)
    engine.stats.decodes_total = 20
    current: list[Any] = [None]
    metrics = ServerMetrics(
        active_sessions=lambda: 0.0,
        realtime_factor=lambda: 0.0,
        degrade_level=lambda: 0.0,
        engine=lambda: current[0],
    )
    assert b"echopanel_asr_batch_size" not in metrics.render()  # no model loaded yet
    current[0] = engine
    text = metrics.render().decode()
    assert 'echopanel_asr_batch_size_bucket{le="4.0"} 3.0' in text
    assert "echopanel_asr_batch_size_count 4.0" in text
    assert "echopanel_asr_batch_size_sum 17.0" in text
    assert 'echopanel_asr_queue_wait_seconds_bucket{le="0.025"} 1.0' in text
    assert "echopanel_asr_decodes_per_second 2.0" in text
    assert "echopanel_asr_decodes_total 20.0" in text
    assert "echopanel_asr_queue_depth 3.0" in text


def test_histogram_and_rate_window() -> None:
    h = StatsHistogram([1, 2])
    for v in (0.5, 1.0, 1.5, 9.0):
        h.observe(v)
    snap = h.snapshot()
    assert snap.cumulative == (2, 3, 4) and snap.count == 4 and snap.total == 12.0
    r = RateWindow(window=2.0)
    r.add(0.0)
    r.add(1.5, 3)
    assert r.rate(1.5) == 2.0
    assert r.rate(3.0) == 1.5  # the first event left the window
