"""Prometheus metrics of one app, in the app's own ``CollectorRegistry``.

Names are pinned by DESIGN.md: ``echopanel_ws_connections_total``,
``echopanel_active_sessions``, ``echopanel_sessions_rejected_total{reason}``,
``echopanel_frames_dropped_total{source}``, ``echopanel_asr_realtime_factor``,
``echopanel_start_ack_seconds`` (histogram); plus ``echopanel_degrade_level`` and
``echopanel_audio_seconds_total{source}``; with the Whisper decode engine,
``echopanel_asr_batch_size`` and ``echopanel_asr_queue_wait_seconds`` (histograms),
``echopanel_asr_decodes_per_second``, ``echopanel_asr_decodes_total``,
``echopanel_asr_queue_depth`` and ``echopanel_asr_engine_busy``. A registry per app lets
several apps live in one test process without colliding.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from echopanel.errors import CLOSE_CODES
from echopanel.protocol import SOURCES

__all__ = ["CONTENT_TYPE_LATEST", "ServerMetrics"]

_ACK_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class ServerMetrics:
    """The app's metrics. Gauges that summarise live sessions are computed at scrape time."""

    def __init__(
        self,
        *,
        active_sessions: Callable[[], float],
        realtime_factor: Callable[[], float],
        degrade_level: Callable[[], float],
        engine: Callable[[], Any] = lambda: None,
    ) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.connections = Counter(
            "echopanel_ws_connections", "WebSocket connections accepted", registry=r
        )
        self.active_sessions = Gauge(
            "echopanel_active_sessions", "Sessions holding a slot in this process", registry=r
        )
        self.active_sessions.set_function(active_sessions)
        self.rejected = Counter(
            "echopanel_sessions_rejected",
            "Connections or sessions refused, by error code",
            ["reason"],
            registry=r,
        )
        self.frames_dropped = Counter(
            "echopanel_frames_dropped",
            "Audio frames dropped by ingest backpressure, by source",
            ["source"],
            registry=r,
        )
        for source in SOURCES:
            self.frames_dropped.labels(source=source)
        for code in CLOSE_CODES:
            self.rejected.labels(reason=code.value)
        self.audio_seconds = Counter(
            "echopanel_audio_seconds", "Audio seconds received, by source", ["source"], registry=r
        )
        self.realtime_factor = Gauge(
            "echopanel_asr_realtime_factor",
            "Highest sliding-window ASR real-time factor (inference s / audio s) of live streams",
            registry=r,
        )
        self.realtime_factor.set_function(realtime_factor)
        self.degrade_level = Gauge(
            "echopanel_degrade_level", "Highest degrade level of live streams", registry=r
        )
        self.degrade_level.set_function(degrade_level)
        self.start_ack = Histogram(
            "echopanel_start_ack_seconds",
            "Time from a valid start message to the streaming acknowledgment",
            buckets=_ACK_BUCKETS,
            registry=r,
        )
        self.resumes = Counter(
            "echopanel_resumes", "Sessions re-attached to a new connection by resume", registry=r
        )
        self.resumes_failed = Counter(
            "echopanel_resumes_failed",
            "resume requests answered with resume_unknown",
            registry=r,
        )
        self.resume_audio_seconds = Counter(
            "echopanel_resume_audio_seconds",
            "Audio seconds accepted beyond the rate bound as a resumed session's backlog",
            registry=r,
        )
        self.resume_expired = Counter(
            "echopanel_resume_expired",
            "Sessions released because no resume came within the resume window",
            registry=r,
        )
        r.register(_EngineCollector(engine))

    def render(self) -> bytes:
        """The Prometheus text exposition of this registry."""
        return generate_latest(self.registry)


def _histogram(name: str, doc: str, snap: Any) -> HistogramMetricFamily:
    buckets = [
        ("+Inf" if b == float("inf") else repr(float(b)), c)
        for b, c in zip(snap.bounds, snap.cumulative, strict=True)
    ]
    return HistogramMetricFamily(name, doc, buckets=buckets, sum_value=snap.total)


class _EngineCollector(Collector):
    """The decode engine's counters, read at scrape time (absent until a model is loaded)."""

    def __init__(self, engine: Callable[[], Any]) -> None:
        self._engine = engine

    def collect(self) -> Iterator[Metric]:
        engine = self._engine()
        if engine is None:
            return
        snap = engine.snapshot()
        yield _histogram("echopanel_asr_batch_size", "Decodes per engine batch", snap["batch_size"])
        yield _histogram(
            "echopanel_asr_queue_wait_seconds",
            "Time a decode request waited for the engine",
            snap["queue_wait"],
        )
        yield GaugeMetricFamily(
            "echopanel_asr_decodes_per_second",
            "Decodes completed per second (10 s window)",
            value=snap["decodes_per_second"],
        )
        yield CounterMetricFamily(
            "echopanel_asr_decodes", "Decodes completed", value=snap["decodes_total"]
        )
        yield GaugeMetricFamily(
            "echopanel_asr_queue_depth", "Decode requests waiting", value=snap["waiting"]
        )
        if "busy_fraction" in snap:
            yield GaugeMetricFamily(
                "echopanel_asr_engine_busy",
                "Share of the last 3 s the decode engine spent in model calls",
                value=snap["busy_fraction"],
            )
