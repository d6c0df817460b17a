"""``--record-dir``: every received frame written losslessly to a per-source WAV file.

Files are named ``<session>-<connection>-<source>.wav`` (the session id reduced to safe
characters), 16 kHz mono s16le, and closed on every exit path.

No file I/O runs on the event loop: :meth:`SessionRecorder.write` only queues the frame;
:meth:`SessionRecorder.run` (one task per session) writes the queued frames in arrival order
in a worker thread, and :meth:`SessionRecorder.aclose` writes what is still queued and
closes the files, also in a thread. The queue is bounded (``max_pending_bytes``): when the
disk is slower than the audio, ``write`` waits (the reader slows down) instead of dropping
audio or growing memory. A failing disk stops the recording (``error``), never the session.
"""

from __future__ import annotations

import collections
import logging
import re
import wave
from pathlib import Path

import anyio
import anyio.to_thread

from echopanel.protocol import SAMPLE_RATE, Source

__all__ = ["SessionRecorder"]

log = logging.getLogger("echopanel.server")

_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")
_MAX_PENDING_BYTES = 10 * 2 * SAMPLE_RATE  # 10 s of audio


class SessionRecorder:
    """Per-source WAV writers of one session. ``aclose`` is idempotent."""

    def __init__(
        self,
        directory: Path,
        session_id: str,
        connection_id: str,
        *,
        max_pending_bytes: int = _MAX_PENDING_BYTES,
    ) -> None:
        self.directory = directory
        safe = _UNSAFE.sub("_", session_id).strip("._")[:64] or "session"
        self._stem = f"{safe}-{_UNSAFE.sub('_', connection_id)[:40]}"
        self._writers: dict[Source, wave.Wave_write] = {}
        self.paths: dict[Source, Path] = {}
        self.max_pending_bytes = max_pending_bytes
        self.error: str | None = None
        self._pending: collections.deque[tuple[Source, bytes]] = collections.deque()
        self._pending_bytes = 0
        self._wakeup: anyio.Event | None = None
        self._room: anyio.Event | None = None
        self._lock = anyio.Lock()  # one batch at a time, in order
        self._closed = False

    # ------------------------------------------------------------------ event loop side

    async def write(self, source: Source, pcm: bytes) -> None:
        """Queue ``pcm`` for ``source``'s file; waits only while the queue is full."""
        while (
            self._pending_bytes >= self.max_pending_bytes
            and self.error is None
            and not self._closed
        ):
            if self._room is None:
                self._room = anyio.Event()
            await self._room.wait()
        if self.error is not None or self._closed or not pcm:
            return
        self._pending.append((source, pcm))
        self._pending_bytes += len(pcm)
        if self._wakeup is not None:
            self._wakeup.set()

    async def run(self) -> None:
        """Write queued frames until cancelled; returns if the disk fails (see ``error``)."""
        while self.error is None:
            while not self._pending:
                self._wakeup = anyio.Event()
                await self._wakeup.wait()
            await self._write_pending()

    async def drain(self) -> None:
        """Write everything queued so far (the files then hold every frame received)."""
        if self.error is None:
            await self._write_pending()

    async def aclose(self) -> None:
        """Write what is still queued, then close the files (in a worker thread)."""
        self._closed = True
        self._wake_writers()
        await self.drain()
        writers, self._writers = self._writers, {}
        if writers:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(_close_all, list(writers.values()))

    async def _write_pending(self) -> None:
        async with self._lock:
            batch = list(self._pending)
            self._pending.clear()
            self._pending_bytes = 0
            self._wake_writers()
            if not batch:
                return
            try:
                # shielded: a batch taken off the queue is always written
                with anyio.CancelScope(shield=True):
                    await anyio.to_thread.run_sync(self._write_blocking, batch)
            except Exception as exc:  # disk full, permissions, a path that is a file...
                self.error = f"{type(exc).__name__}: {exc}"
                log.error("recording stopped: %s", self.error)
                self._wake_writers()

    def _wake_writers(self) -> None:
        if self._room is not None:
            self._room.set()
            self._room = None

    # ------------------------------------------------------------------ worker thread side

    def _write_blocking(self, batch: list[tuple[Source, bytes]]) -> None:
        for source, pcm in batch:
            writer = self._writers.get(source)
            if writer is None:
                self.directory.mkdir(parents=True, exist_ok=True)
                path = self.directory / f"{self._stem}-{source}.wav"
                writer = wave.open(str(path), "wb")  # noqa: SIM115 - closed in aclose()
                writer.setnchannels(1)
                writer.setsampwidth(2)
                writer.setframerate(SAMPLE_RATE)
                self._writers[source] = writer
                self.paths[source] = path
            writer.writeframes(pcm)


def _close_all(writers: list[wave.Wave_write]) -> None:
    for writer in writers:
        try:
            writer.close()
        except OSError as exc:
            log.error("closing a recording failed: %s", exc)
