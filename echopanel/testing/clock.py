"""``FakeClock``: a number you advance by hand, for driving the pure machine."""

from __future__ import annotations

__all__ = ["FakeClock"]


class FakeClock:
    """``clock()`` returns the current fake time; ``advance(dt)`` moves it forward."""

    def __init__(self, now: float = 0.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> float:
        if seconds < 0:
            raise ValueError("time does not go backwards")
        self.now += seconds
        return self.now
