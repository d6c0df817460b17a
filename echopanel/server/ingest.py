"""Per-source ingest queue: bounded by a time budget, dropping the oldest audio.

The WebSocket reader puts frames in; the source's ASR task takes everything queued in one
batch. When the ASR falls behind, the queue would exceed its budget (seconds of audio): the
oldest frames are dropped (a frame longer than the budget keeps only its newest samples),
counted in ``dropped_frames`` / ``dropped_seconds``. Memory is bounded by the budget.
"""

from __future__ import annotations

import collections

import anyio

from echopanel.protocol import pcm_seconds

__all__ = ["IngestQueue"]

_BYTES_PER_SECOND = 32_000


class IngestQueue:
    """FIFO of PCM chunks holding at most ``budget`` seconds of audio."""

    def __init__(self, budget: float) -> None:
        if budget <= 0:
            raise ValueError("budget must be > 0")
        self._budget = budget
        self._frames: collections.deque[bytes] = collections.deque()
        self._bytes = 0
        self._ready = anyio.Event()
        self._closed = False
        self.received_frames = 0
        self.received_seconds = 0.0
        self.dropped_frames = 0
        self.dropped_seconds = 0.0

    @property
    def budget(self) -> float:
        return self._budget

    @budget.setter
    def budget(self, seconds: float) -> None:
        """Change the budget (the degrade ladder sheds audio by shrinking it)."""
        if seconds <= 0:
            raise ValueError("budget must be > 0")
        self._budget = seconds
        self._trim()

    @property
    def backlog_seconds(self) -> float:
        return self._bytes / _BYTES_PER_SECOND

    @property
    def fill(self) -> float:
        """Backlog as a fraction of the budget (0..1)."""
        return min(1.0, self.backlog_seconds / self._budget)

    @property
    def closed(self) -> bool:
        return self._closed

    def put(self, pcm: bytes) -> int:
        """Queue a chunk; returns how many frames had to be dropped to make room."""
        if self._closed or not pcm:
            return 0
        self.received_frames += 1
        self.received_seconds += pcm_seconds(pcm)
        before = self.dropped_frames
        self._frames.append(pcm)
        self._bytes += len(pcm)
        self._trim()
        self._ready.set()
        return self.dropped_frames - before

    def _trim(self) -> None:
        limit = int(self._budget * _BYTES_PER_SECOND) & ~1
        while self._bytes > limit and self._frames:
            oldest = self._frames[0]
            excess = self._bytes - limit
            if excess >= len(oldest):
                self._frames.popleft()
                excess = len(oldest)
            else:  # keep the newest part of the oldest frame
                self._frames[0] = oldest[excess:]
            self._bytes -= excess
            self.dropped_frames += 1
            self.dropped_seconds += excess / _BYTES_PER_SECOND

    def take_all(self) -> bytes:
        """Everything queued, oldest first, as one chunk (empty if nothing)."""
        data = b"".join(self._frames)
        self._frames.clear()
        self._bytes = 0
        if not self._closed:
            self._ready = anyio.Event()
        return data

    async def get(self) -> bytes:
        """Wait for audio and take it all; ``b""`` once closed and drained."""
        while not self._frames:
            if self._closed:
                return b""
            await self._ready.wait()
        return self.take_all()

    def close(self) -> None:
        """No more audio: ``get`` drains what is left, then returns ``b""``."""
        self._closed = True
        self._ready.set()
