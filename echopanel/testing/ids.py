"""Deterministic id factories for tests: ``id-1``, ``id-2``, …"""

from __future__ import annotations

import itertools
from collections.abc import Callable

__all__ = ["CountingIds", "counter_ids"]


class CountingIds:
    """Callable id factory returning ``f"{prefix}-{n}"`` for n = 1, 2, …; keeps what it made."""

    def __init__(self, prefix: str = "id") -> None:
        self.prefix = prefix
        self._counter = itertools.count(1)
        self.made: list[str] = []

    def __call__(self) -> str:
        value = f"{self.prefix}-{next(self._counter)}"
        self.made.append(value)
        return value


def counter_ids(prefix: str = "id") -> Callable[[], str]:
    """A fresh :class:`CountingIds`."""
    return CountingIds(prefix)
