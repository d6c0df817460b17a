"""Degrade ladder: trade quality for keeping up, with hysteresis, driven by the RTF.

:class:`RtfWindow` measures the real-time factor correctly: inference seconds ÷ audio
seconds over a sliding window of wall-clock time, from the cumulative counters of an
``AsrStream``. :class:`DegradeLadder` is pure (time is an argument): it steps one level up
when the RTF (or the ingest backlog) stays high for ``up_hold`` seconds and one level down
when both stay low for ``down_hold`` seconds. :func:`plan_for` says what each level does:

====== ============================================================================
level  pipeline
====== ============================================================================
0      normal: decode every ``base_interval`` s, beam ``beam_size``, partials on
1      decode every ``slow_interval`` s (fewer re-decodes)
2      also greedy decoding (beam 1, final decodes included) and no partials
3      also shed audio: the ingest budget shrinks to ``shed_budget`` s (oldest dropped)
====== ============================================================================
"""

from __future__ import annotations

import collections

import attrs

from echopanel.ports import AsrTuning
from echopanel.server.config import DegradeConfig

__all__ = ["MAX_LEVEL", "DegradeLadder", "LevelPlan", "RtfWindow", "plan_for"]

MAX_LEVEL = 3
_MAX_SAMPLES = 4096

_DESCRIPTIONS = {
    0: "normal",
    1: "longer decode interval",
    2: "greedy decoding, no partials",
    3: "greedy decoding, no partials, shedding audio",
}


@attrs.frozen(kw_only=True)
class LevelPlan:
    """What the pipeline does at one level: the ASR tuning and the ingest budget."""

    level: int
    tuning: AsrTuning
    ingest_budget: float
    description: str


def plan_for(level: int, config: DegradeConfig, ingest_budget: float) -> LevelPlan:
    """The tuning and ingest budget of ``level`` (clamped to 0..MAX_LEVEL)."""
    level = max(0, min(MAX_LEVEL, level))
    interval = config.base_interval if level == 0 else config.slow_interval
    greedy = level >= 2
    tuning = AsrTuning(
        decode_interval=interval,
        beam_size=1 if greedy else config.beam_size,
        final_beam_size=1 if greedy else config.final_beam_size,
        emit_partials=not greedy,
    )
    budget = ingest_budget if level < 3 else min(ingest_budget, config.shed_budget)
    return LevelPlan(
        level=level, tuning=tuning, ingest_budget=budget, description=_DESCRIPTIONS[level]
    )


class RtfWindow:
    """Sliding-window real-time factor from cumulative (audio, inference) counters."""

    def __init__(self, window: float) -> None:
        self.window = window
        self._samples: collections.deque[tuple[float, float, float]] = collections.deque(
            maxlen=_MAX_SAMPLES
        )
        self._last_audio = 0.0
        self._last_inference = 0.0

    def record(self, now: float, audio_seconds: float, inference_seconds: float) -> None:
        """Add the growth of the cumulative counters since the last call."""
        d_audio = max(0.0, audio_seconds - self._last_audio)
        d_inf = max(0.0, inference_seconds - self._last_inference)
        self._last_audio, self._last_inference = audio_seconds, inference_seconds
        if d_audio or d_inf:
            self._samples.append((now, d_audio, d_inf))
        self._expire(now)

    def reset(self) -> None:
        """Forget the samples (after a level change the new level is judged afresh)."""
        self._samples.clear()

    def _expire(self, now: float) -> None:
        while self._samples and self._samples[0][0] < now - self.window:
            self._samples.popleft()

    def value(self, now: float) -> float:
        """Inference seconds ÷ audio seconds over the window (0 when no audio)."""
        self._expire(now)
        audio = sum(s[1] for s in self._samples)
        inference = sum(s[2] for s in self._samples)
        if audio <= 0:
            return 0.0 if inference <= 0 else float(len(self._samples))
        return inference / audio


class DegradeLadder:
    """The level state machine with hysteresis. Pure: every call takes ``now``."""

    def __init__(self, config: DegradeConfig) -> None:
        self.config = config
        self.level = 0
        self._high_since: float | None = None
        self._low_since: float | None = None

    def update(self, now: float, rtf: float, backlog_fill: float) -> int | None:
        """Feed the current load; returns the new level when it changed, else None."""
        cfg = self.config
        if not cfg.enabled:
            return None
        high = rtf > cfg.up_rtf or backlog_fill > cfg.up_backlog
        low = rtf < cfg.down_rtf and backlog_fill < cfg.down_backlog
        if not high:
            self._high_since = None
        elif self._high_since is None:
            self._high_since = now
        if not low:
            self._low_since = None
        elif self._low_since is None:
            self._low_since = now
        if self._high_since is not None:
            if self.level < MAX_LEVEL and now - self._high_since >= cfg.up_hold:
                return self._step(+1)
        elif (
            self._low_since is not None
            and self.level > 0
            and now - self._low_since >= cfg.down_hold
        ):
            return self._step(-1)
        return None

    def _step(self, delta: int) -> int:
        self.level += delta
        # the new level must prove itself for a whole hold period before the next step
        self._high_since = None
        self._low_since = None
        return self.level
