"""Prometheus metrics of one app, in the app's own ``CollectorRegistry``.

Names are pinned by DESIGN.md: ``echopanel_ws_connections_total``,
``echopanel_active_sessions``, ``echopanel_sessions_rejected_total{reason}``,
``echopanel_frames_dropped_total{source}``, ``echopanel_asr_realtime_factor``,
``echopanel_start_ack_seconds`` (histogram); plus ``echopanel_degrade_level`` and
``echopanel_audio_seconds_total{source}``. A registry per app lets several apps live in one
test process without colliding.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

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

    def render(self) -> bytes:
        """The Prometheus text exposition of this registry."""
        return generate_latest(self.registry)
