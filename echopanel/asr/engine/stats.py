"""Counters of the decode engine: batch sizes, queue waits, decodes per second.

Pure accumulators (time is an argument); the server turns a :class:`EngineStats` snapshot
into Prometheus histograms and gauges at scrape time.
"""

from __future__ import annotations

import bisect
import collections
from collections.abc import Sequence

import attrs

__all__ = [
    "BATCH_BUCKETS",
    "WAIT_BUCKETS",
    "EngineStats",
    "HistogramSnapshot",
    "RateWindow",
    "StatsHistogram",
]

BATCH_BUCKETS: tuple[float, ...] = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32)
WAIT_BUCKETS: tuple[float, ...] = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0)


@attrs.frozen(kw_only=True)
class HistogramSnapshot:
    """Upper bounds and cumulative counts (the last bound is +Inf), sum and count."""

    bounds: tuple[float, ...]
    cumulative: tuple[int, ...]
    total: float
    count: int


class StatsHistogram:
    """A fixed-bucket histogram."""

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(sorted(bounds))
        self._counts = [0] * (len(self.bounds) + 1)
        self._sum = 0.0

    def observe(self, value: float) -> None:
        self._counts[bisect.bisect_left(self.bounds, value)] += 1
        self._sum += value

    def snapshot(self) -> HistogramSnapshot:
        cumulative: list[int] = []
        running = 0
        for c in self._counts:
            running += c
            cumulative.append(running)
        return HistogramSnapshot(
            bounds=(*self.bounds, float("inf")),
            cumulative=tuple(cumulative),
            total=self._sum,
            count=running,
        )


class RateWindow:
    """Events per second over a sliding window of ``window`` seconds."""

    def __init__(self, window: float = 10.0) -> None:
        self.window = window
        self._events: collections.deque[tuple[float, float]] = collections.deque(maxlen=100_000)

    def add(self, now: float, n: float = 1.0) -> None:
        self._events.append((now, n))
        self._expire(now)

    def _expire(self, now: float) -> None:
        while self._events and self._events[0][0] < now - self.window:
            self._events.popleft()

    def rate(self, now: float) -> float:
        self._expire(now)
        return sum(n for _, n in self._events) / self.window


@attrs.define(kw_only=True)
class EngineStats:
    """Everything the engine counts (mutated under the engine's lock)."""

    batch_size: StatsHistogram = attrs.field(factory=lambda: StatsHistogram(BATCH_BUCKETS))
    queue_wait: StatsHistogram = attrs.field(factory=lambda: StatsHistogram(WAIT_BUCKETS))
    decodes: RateWindow = attrs.field(factory=RateWindow)
    #: engine seconds with a round in progress, per second (the busy fraction), over 3 s.
    busy: RateWindow = attrs.field(factory=lambda: RateWindow(3.0))
    decodes_total: int = 0
    finals_total: int = 0
    #: rounds of finals run between two steps of a round of partials.
    preemptions: int = 0
    #: finals that joined a round of finals before its decoder step.
    joined: int = 0
    batches_total: int = 0
    #: decodes that ended before a window holding under ``min_tail`` s of audio.
    tails_skipped: int = 0
    busy_seconds: float = 0.0
