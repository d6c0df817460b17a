"""Session slots: the global capacity count, behind an interface.

One server process holds at most ``max_sessions`` sessions. The count lives behind
:class:`SlotController` so that several processes behind a load balancer could share it
through a store such as Redis (acquire = atomic increment with a lease, release = decrement);
:class:`LocalSlotController` is the in-process implementation.
"""

from __future__ import annotations

import abc

import anyio

__all__ = ["LocalSlotController", "SlotController"]


class SlotController(abc.ABC):
    """Hands out at most ``capacity`` slots, each keyed by a unique string."""

    @property
    @abc.abstractmethod
    def capacity(self) -> int: ...

    @property
    @abc.abstractmethod
    def in_use(self) -> int: ...

    @property
    def available(self) -> int:
        """Slots free right now (read-only; what ``/ready`` looks at)."""
        return max(0, self.capacity - self.in_use)

    @abc.abstractmethod
    async def acquire(self, key: str, timeout: float) -> bool:  # noqa: ASYNC109
        """Take a slot for ``key``, waiting up to ``timeout`` seconds; False if none freed."""

    @abc.abstractmethod
    async def release(self, key: str) -> None:
        """Give back ``key``'s slot. Idempotent; never raises; safe under cancellation."""


class LocalSlotController(SlotController):
    """In-process slots: a counter and a condition, waiters served as slots free up."""

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError("capacity must be >= 1")
        self._capacity = capacity
        self._holders: set[str] = set()
        self._freed: anyio.Event | None = None

    @property
    def capacity(self) -> int:
        return self._capacity

    @property
    def in_use(self) -> int:
        return len(self._holders)

    async def acquire(self, key: str, timeout: float) -> bool:  # noqa: ASYNC109
        if key in self._holders:
            raise ValueError(f"slot {key!r} already held")
        with anyio.move_on_after(timeout):
            while len(self._holders) >= self._capacity:
                if self._freed is None:
                    self._freed = anyio.Event()
                await self._freed.wait()
            self._holders.add(key)
            return True
        # a last look: a slot may have been freed exactly at the deadline
        if len(self._holders) < self._capacity:
            self._holders.add(key)
            return True
        return False

    async def release(self, key: str) -> None:
        if key not in self._holders:
            return
        self._holders.discard(key)
        if self._freed is not None:
            self._freed.set()
            self._freed = None
