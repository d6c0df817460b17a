"""Hand audio blocks from a foreign thread (the PortAudio callback) to an anyio task.

The callback must never block: :meth:`ThreadBridge.push` only appends to a bounded
thread-safe queue (dropping and counting when it is full) and, at most once per drain,
schedules a wake-up on the event loop with the loop's own non-blocking thread-safe call
(``call_soon_threadsafe`` on asyncio, ``run_sync_soon`` on trio). The consumer task
drains the queue in :meth:`ThreadBridge.get_batch`.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import queue
import threading
from collections.abc import Callable
from typing import Any, Generic, TypeVar

import anyio

__all__ = ["ThreadBridge"]

T = TypeVar("T")

_Scheduler = Callable[[Callable[[], object]], object]


def _loop_scheduler() -> _Scheduler:
    """A function that runs a callback soon on the current event loop, callable from any thread."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:  # pragma: no cover - not asyncio: anyio's other backend is trio
        trio_lowlevel: Any = importlib.import_module("trio.lowlevel")
        trio_scheduler: _Scheduler = trio_lowlevel.current_trio_token().run_sync_soon
        return trio_scheduler
    scheduler: _Scheduler = loop.call_soon_threadsafe
    return scheduler


class ThreadBridge(Generic[T]):
    """A bounded, drop-and-count channel from one producer thread to one anyio task.

    Create (or :meth:`bind`) it on the event loop thread; call :meth:`push` and
    :meth:`finish` from any thread; await :meth:`get_batch` in the consumer task.
    """

    def __init__(self, max_items: int) -> None:
        if max_items < 1:
            raise ValueError("max_items must be >= 1")
        self._queue: queue.Queue[T] = queue.Queue(maxsize=max_items)
        self._lock = threading.Lock()
        self._schedule: _Scheduler | None = None
        self._wake_pending = False
        self._event = anyio.Event()
        self._finished = False
        self._error: str | None = None
        self.dropped = 0

    def bind(self) -> None:
        """Attach to the running event loop (call from the loop thread, before any push)."""
        self._schedule = _loop_scheduler()

    # ----------------------------------------------------------------- producer side

    def push(self, item: T) -> bool:
        """Offer ``item``; never blocks. Returns False (and counts a drop) when full."""
        try:
            self._queue.put_nowait(item)
        except queue.Full:
            with self._lock:
                self.dropped += 1
            return False
        self._wake()
        return True

    def finish(self, error: str | None = None) -> None:
        """The producer is done (``error`` says why, when it died)."""
        with self._lock:
            self._finished = True
            if error is not None and self._error is None:
                self._error = error
        self._wake()

    def _wake(self) -> None:
        schedule = self._schedule
        if schedule is None:
            return
        with self._lock:
            if self._wake_pending:
                return
            self._wake_pending = True
        # RuntimeError: the loop is closed, nobody is listening any more
        with contextlib.suppress(RuntimeError):
            schedule(self._on_loop_wake)

    def _on_loop_wake(self) -> None:
        with self._lock:
            self._wake_pending = False
        self._event.set()

    # ----------------------------------------------------------------- consumer side

    @property
    def error(self) -> str | None:
        return self._error

    def drain(self) -> list[T]:
        """Everything queued right now (never waits)."""
        items: list[T] = []
        while True:
            try:
                items.append(self._queue.get_nowait())
            except queue.Empty:
                return items

    async def get_batch(self) -> list[T]:
        """Wait until items are queued or the producer finished; return what is queued.

        An empty list means the producer finished and everything was delivered.
        """
        while True:
            items = self.drain()
            if items:
                return items
            if self._finished:
                return self.drain()
            await self._event.wait()
            self._event = anyio.Event()
